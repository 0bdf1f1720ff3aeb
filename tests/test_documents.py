"""CRDT documents: round trips, concurrent edits converging, update hooks, bad bytes (every backend)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pcloud.errors import BadArgument, CorruptObject, IntegrityError
from pcloud.store.crypto import Keyring
from pcloud.store.documents import Document, get_doc_object, merge_doc_objects
from pcloud.store.memory import MemoryObjectStore
from pcloud.store.objects import Doc, Tree

from store_backends import store  # noqa: F401  (fixture)


def test_save_load_round_trip(store):
    d = Document.new()
    assert len(d.doc_id) == 32 and Document.new().doc_id != d.doc_id
    d.text("body").insert(0, "hello")
    d.map("meta")["title"] = "Notes"
    d.array("tags").append("x")
    oid = d.save(store)
    loaded = Document.load(store, oid)
    assert loaded.doc_id == d.doc_id
    assert loaded.to_json() == {"body": "hello", "meta": {"title": "Notes"}, "tags": ["x"]}
    assert loaded.roots() == {"body": "text", "meta": "map", "tags": "array"}
    assert d.save(store) == oid  # same state, same object


def test_diverged_copies_merge_in_both_orders(store):
    base = Document("notes-1")
    base.text("body").insert(0, "hello world")
    base.map("meta")["title"] = "T"
    base_id = base.save(store)

    a = Document.load(store, base_id)
    b = Document.load(store, base_id)
    a.text("body").insert(0, "A: ")
    a.map("meta")["owner"] = "alice"
    a.map("meta")["title"] = "from a"
    b.text("body").insert(11, " (b)")
    b.map("meta")["tags"] = "x"
    b.map("meta")["title"] = "from b"
    a_id, b_id = a.save(store), b.save(store)

    ab = merge_doc_objects(store, a_id, b_id)
    ba = merge_doc_objects(store, b_id, a_id)
    assert ab == ba  # same bytes, same id: merges on two devices converge
    merged = Document.load(store, ab).to_json()
    assert merged["body"] == "A: hello world (b)"
    assert {k: merged["meta"][k] for k in ("owner", "tags")} == {"owner": "alice", "tags": "x"}
    assert merged["meta"]["title"] in ("from a", "from b")  # last-writer-wins register, same on both
    assert merge_doc_objects(store, ab, a_id) == ab  # idempotent
    assert merge_doc_objects(store, a_id, a_id) == a_id


def test_merging_different_documents_is_refused(store):
    x, y = Document("x"), Document("y")
    x.text("t").insert(0, "1")
    y.text("t").insert(0, "2")
    with pytest.raises(BadArgument, match="different documents"):
        merge_doc_objects(store, x.save(store), y.save(store))


def test_incremental_updates_hook_and_replay():
    d = Document("live")
    seen: list[tuple[bytes, bool]] = []
    stop = d.on_update(lambda u, remote: seen.append((u, remote)))
    d.text("t").insert(0, "ab")
    with d.transaction():
        d.text("t").insert(2, "cd")
        d.map("m")["k"] = 1
    assert len(seen) == 3  # recording root "t"'s type, the insert, then one per transaction
    assert all(not remote for _, remote in seen)
    # Replaying the logged increments rebuilds the document anywhere.
    replica = Document("live")
    for u, _ in seen:
        replica.apply(u)
    assert replica.to_json() == d.to_json() == {"t": "abcd", "m": {"k": 1.0}}
    # Remote updates are flagged, and a no-op update does not fire the hook.
    other = Document("live")
    other.text("t").insert(0, "zz")
    d.apply(other.state_update())
    assert seen[-1][1] is True
    n = len(seen)
    d.apply(other.state_update())
    assert len(seen) == n
    stop()
    d.text("t").insert(0, "!")
    assert len(seen) == n


@pytest.mark.parametrize("vector", [b"\xff\xff", b"\x05", b"garbage!"])
def test_malformed_state_vector_refused(vector):
    d = Document("x")
    d.insert_text("t", 0, "a")
    with pytest.raises(IntegrityError, match="state vector"):
        d.update_since(vector)


def test_state_vector_sync():
    a, b = Document("s"), Document("s")
    a.text("t").insert(0, "from a")
    b.apply(a.update_since(b.state_vector()))
    b.text("t").insert(0, "b+")
    a.apply(b.update_since(a.state_vector()))
    assert a.to_json() == b.to_json() == {"t": "b+from a"}


@pytest.mark.parametrize("bad", [b"", b"\xff\xff\x00garbage", b"\x01", b"\x02\x05"])
def test_malformed_update_refused_and_doc_unchanged(bad):
    d = Document("d")
    d.text("t").insert(0, "keep")
    before = d.state_update()
    with pytest.raises(IntegrityError):
        d.apply(bad)
    assert d.state_update() == before
    with pytest.raises(IntegrityError):
        Document.from_object(Doc("d", b"\xff\xff"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_updates_never_corrupt(data):
    """Random bytes either raise IntegrityError or decode as some update; the doc stays usable."""
    d = Document("d")
    d.text("t").insert(0, "keep")
    try:
        d.apply(data)
    except IntegrityError:
        assert d.to_json()["t"] == "keep"
    d.text("t").insert(0, "x")
    assert Document("d", d.state_update()).to_json()["t"].startswith("x")


def test_text_edits_by_character_index_survive_encoding():
    d = Document("u")
    d.insert_text("t", 0, "éé")
    d.insert_text("t", 1, "X")
    d.insert_text("t", 3, "!")
    d.delete_text("t", 0, 1)
    assert d.to_json()["t"] == "Xé!"
    assert Document("u", d.state_update()).to_json()["t"] == "Xé!"
    with pytest.raises(BadArgument):
        d.insert_text("t", 99, "x")
    with pytest.raises(BadArgument):
        d.delete_text("t", 2, 5)


def test_bad_ids_and_roots():
    with pytest.raises(BadArgument):
        Document("")
    with pytest.raises(BadArgument):
        Document("x" * 200)
    d = Document("ok")
    d.text("t")
    with pytest.raises(BadArgument, match="is a text"):
        d.map("t")
    with pytest.raises(BadArgument):
        d.text("_pcloud_types")
    with pytest.raises(BadArgument):
        d.apply("not bytes")  # type: ignore[arg-type]


def test_wrong_object_kind(store):
    with pytest.raises(CorruptObject):
        get_doc_object(store, store.put(Tree(())))


def test_foreign_doc_roots_are_guessed():
    from pycrdt import Doc as YDoc, Map, Text

    y = YDoc()
    y.get("m", type=Map)["k"] = "v"
    y.get("t", type=Text).insert(0, "words")
    d = Document("foreign", y.get_update())
    assert d.to_json() == {"m": {"k": "v"}, "t": "words"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 30), st.text(max_size=3)), max_size=12))
def test_concurrent_text_edits_converge(ops):
    store = MemoryObjectStore(Keyring.generate())
    base = Document("doc")
    base.text("t").insert(0, "base text")
    bid = base.save(store)
    copies = {"a": Document.load(store, bid), "b": Document.load(store, bid)}
    for who, pos, s in ops:
        doc = copies[who]
        doc.insert_text("t", min(pos, len(doc.to_json()["t"])), s)
    a_id, b_id = copies["a"].save(store), copies["b"].save(store)
    ab, ba = merge_doc_objects(store, a_id, b_id), merge_doc_objects(store, b_id, a_id)
    assert ab == ba
    text = Document.load(store, ab).to_json()["t"]
    # Every inserted string survives; the base text's characters all survive in order.
    assert len(text) == len("base text") + sum(len(s) for _, _, s in ops)
