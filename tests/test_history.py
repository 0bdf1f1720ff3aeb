"""Commit history: signing, log order, ancestry, merge bases (run on every store backend)."""
from __future__ import annotations

import nacl.exceptions
import nacl.signing
import pytest

from pcloud.errors import BadArgument, CorruptObject, IntegrityError, NotFound
from pcloud.store.history import (
    get_commit, is_ancestor, log, make_commit, merge_base, merge_bases, verify_commit_signature,
)
from pcloud.store.objects import Commit, Tree

from store_backends import store  # noqa: F401  (fixture)

KEY = nacl.signing.SigningKey.generate()
DEVICE = bytes(KEY.verify_key)


def sign(data: bytes) -> bytes:
    return KEY.sign(data).signature


def verify(pub: bytes, data: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(pub).verify(data, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


class Graph:
    """Builds commits by name, with explicit times."""

    def __init__(self, store):
        self.store = store
        self.tree = store.put(Tree(()))
        self.ids: dict[str, bytes] = {}
        self.names: dict[bytes, str] = {}

    def c(self, name: str, *parents: str, t: int) -> bytes:
        oid = make_commit(self.store, self.tree, [self.ids[p] for p in parents], sign, DEVICE, name, t)
        self.ids[name] = oid
        self.names[oid] = name
        return oid

    def log(self, head: str, limit=None) -> list[str]:
        return [self.names[oid] for oid, _ in log(self.store, self.ids[head], limit)]


def test_commit_round_trip_and_signature(store):
    g = Graph(store)
    oid = g.c("first", t=5)
    c = get_commit(store, oid)
    assert (c.tree, c.parents, c.device, c.time_ns, c.message) == (g.tree, (), DEVICE, 5, "first")
    verify_commit_signature(c, verify)
    forged = Commit(c.tree, c.parents, c.device, c.time_ns, "changed message", c.signature)
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_commit_signature(forged, verify)
    with pytest.raises(IntegrityError, match="not signed"):
        verify_commit_signature(Commit(c.tree, (), DEVICE, 5, "x"), verify)
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(IntegrityError):
        verify_commit_signature(Commit(c.tree, (), other, 5, "first", c.signature), verify)


def test_make_commit_refuses_missing_and_wrong_objects(store):
    g = Graph(store)
    root = g.c("root", t=1)
    with pytest.raises(NotFound):
        make_commit(store, b"\1" * 32, [], sign, DEVICE, "m", 1)
    with pytest.raises(NotFound):
        make_commit(store, g.tree, [b"\2" * 32], sign, DEVICE, "m", 1)
    with pytest.raises(BadArgument):
        make_commit(store, root, [], sign, DEVICE, "tree id is a commit", 1)
    with pytest.raises(CorruptObject):
        make_commit(store, g.tree, [g.tree], sign, DEVICE, "parent is a tree", 1)
    with pytest.raises(BadArgument):
        make_commit(store, g.tree, [root, root], sign, DEVICE, "dup", 1)
    for bad in (
        dict(device="str-key"), dict(time_ns=1.5), dict(time_ns=2**64), dict(message=b"bytes"),
        dict(message="bad\udcff"), dict(sign=lambda data: "not bytes"), dict(parents=[b"short"]),
    ):
        args = dict(tree=g.tree, parents=[], sign=sign, device=DEVICE, message="m", time_ns=1) | bad
        with pytest.raises(BadArgument):
            make_commit(store, **args)


def test_log_linear_and_limit(store):
    g = Graph(store)
    g.c("a", t=1)
    g.c("b", "a", t=2)
    g.c("c", "b", t=3)
    assert g.log("c") == ["c", "b", "a"]
    assert g.log("c", limit=2) == ["c", "b"]
    assert g.log("c", limit=0) == []
    assert list(log(store, None)) == []


def test_log_topological_despite_clock_skew(store):
    g = Graph(store)
    g.c("a", t=100)
    g.c("b", "a", t=50)  # device with a clock behind: child older than parent
    g.c("c", "b", t=10)
    assert g.log("c") == ["c", "b", "a"]


def test_log_merge_interleaves_by_time(store):
    g = Graph(store)
    g.c("root", t=0)
    g.c("x1", "root", t=10)
    g.c("y1", "root", t=15)
    g.c("x2", "x1", t=20)
    g.c("y2", "y1", t=25)
    g.c("m", "x2", "y2", t=30)
    order = g.log("m")
    assert order == ["m", "y2", "x2", "y1", "x1", "root"]
    assert len(order) == len(set(order))


def test_ancestry_and_merge_base(store):
    g = Graph(store)
    g.c("root", t=0)
    g.c("a1", "root", t=1)
    g.c("b1", "root", t=2)
    g.c("a2", "a1", t=3)
    g.c("m", "a2", "b1", t=4)
    i = g.ids
    assert is_ancestor(store, i["root"], i["m"])
    assert is_ancestor(store, i["b1"], i["m"])
    assert is_ancestor(store, i["m"], i["m"])
    assert not is_ancestor(store, i["m"], i["a2"])
    assert not is_ancestor(store, i["a1"], i["b1"])
    assert merge_base(store, i["a2"], i["b1"]) == i["root"]
    assert merge_base(store, i["m"], i["b1"]) == i["b1"]  # fast-forward case
    assert merge_base(store, i["a2"], i["a2"]) == i["a2"]
    g.c("b2", "b1", t=5)
    assert merge_base(store, i["m"], i["b2"]) == i["b1"]


def test_unrelated_histories_have_no_base(store):
    g = Graph(store)
    g.c("a", t=0)
    g.c("b", t=1)
    assert merge_base(store, g.ids["a"], g.ids["b"]) is None
    assert merge_bases(store, g.ids["a"], g.ids["b"]) == []


def test_criss_cross_has_two_best_bases(store):
    #   root - a1 - a2(a1,b1)
    #        \    X
    #          b1 - b2(b1,a1)
    g = Graph(store)
    g.c("root", t=0)
    g.c("a1", "root", t=1)
    g.c("b1", "root", t=2)
    g.c("a2", "a1", "b1", t=3)
    g.c("b2", "b1", "a1", t=4)
    bases = merge_bases(store, g.ids["a2"], g.ids["b2"])
    assert sorted(g.names[b] for b in bases) == ["a1", "b1"]  # root is dominated
    assert merge_base(store, g.ids["a2"], g.ids["b2"]) == g.ids["b1"]  # newest best base
    assert merge_base(store, g.ids["b2"], g.ids["a2"]) == g.ids["b1"]  # symmetric


def test_missing_parent_is_reported(store):
    g = Graph(store)
    g.c("a", t=0)
    with pytest.raises(NotFound):
        list(log(store, b"\7" * 32))
