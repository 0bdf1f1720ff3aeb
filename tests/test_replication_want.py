"""WantPlanner (sans-I/O): walks, order, closure invariant, resume, on-demand, rejection, stuck graphs.

The "peer" here is another real ObjectStore whose envelopes are handed to the
planner directly (no network), the way aioquic tests wire two cores together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from replication import envelope as env
from replication.errors import WrongObject
from replication.policy import BULK, Policy
from replication.want import State, WantPlanner
from pcloud.errors import CorruptObject
from pcloud.store.objects import Kind
from pcloud.store.objectstore import ObjectStore

from replication_helpers import content, make_vault, random_files, reachable

KINDS = {int(k): k.name.lower() for k in Kind}


def pump(plan: WantPlanner, src: ObjectStore, dst: ObjectStore, peer: bytes = b"p" * 32, *,
         batch: int = 8, stop_after_chunks: int | None = None, log: list[tuple[str, bytes]] | None = None,
         tamper: set[bytes] = frozenset(), metadata_first: bool = True,
         on_claim: "Callable[[WantPlanner], None] | None" = None) -> int:
    """Drive ``plan`` against ``src`` as the peer, storing into ``dst``; returns envelope bytes fetched.

    Checks the closure invariant after every stored object. ``tamper``: ids whose
    first copy is delivered with a flipped body byte (then the good copy from 'q').
    """
    fetched = 0
    chunks = 0
    tampered: set[bytes] = set()
    while True:
        meta_queued = {oid for heap in plan._heaps for prio, oid in heap if prio[0] < BULK and oid in plan.queued()}
        ids = plan.claim(peer, batch, 1 << 30) or plan.claim(b"q" * 32, batch, 1 << 30)
        if not ids:
            break
        if on_claim is not None:
            on_claim(plan)
        kinds = [env.decode_header(src.get_sealed(i)).kind for i in ids]
        if metadata_first and Kind.CHUNK in kinds:  # small and urgent first: no chunk goes while metadata waits
            assert meta_queued <= set(ids)
            assert kinds.index(Kind.CHUNK) >= len([k for k in kinds if k != Kind.CHUNK])
        for oid in ids:
            data = src.get_sealed(oid)
            if oid in tamper and oid not in tampered:
                tampered.add(oid)
                data = data[:-1] + bytes([data[-1] ^ 1])
            fetched += len(data)
            h = env.decode_header(data)
            if log is not None:
                log.append((KINDS[h.kind], oid))
            plan.received(oid, data, h)
        while True:
            ready = plan.take_ready(1 << 20)
            if not ready:
                break
            with dst.transaction():
                for obj in ready:
                    try:
                        dst.put_sealed(obj.data)
                    except CorruptObject:
                        reverted = plan.rejected(obj.oid)
                        # everything after it in this batch that depends on it must not be stored
                        assert all(r.oid in reverted for r in ready if obj.oid in r.refs)
                        break
                    if plan.policy.follows(env.decode_header(obj.data).kind, False):
                        for ref in obj.refs:
                            assert dst.has(ref), "closure invariant: child stored before parent"
                    plan.stored([obj.oid])
                    if env.decode_header(obj.data).kind == Kind.CHUNK:
                        chunks += 1
                plan.retry_write(o.oid for o in ready)
            if stop_after_chunks is not None and chunks >= stop_after_chunks:
                return fetched
    return fetched


@pytest.fixture
def vault_a(tmp_path: Path):
    files = random_files(40, 1, 300_000, seed=3)
    files["big/huge.bin"] = bytes(range(256)) * 12_000  # ~3 MiB, several chunks
    vault, head = make_vault(tmp_path / "a", files, commits=4)
    yield vault, head, files
    vault.close()


def test_full_walk_fetches_exactly_the_closure(tmp_path: Path, vault_a) -> None:
    vault, head, files = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    assert plan.add_roots([head]) == 1
    order: list[tuple[str, bytes]] = []
    fetched = pump(plan, vault.store, dst, log=order)
    assert plan.done and plan.wanted_objects == 0
    want = reachable(vault.store, [head])
    assert {oid for _, oid in order} == want and len(order) == len(want)  # each fetched once
    assert fetched == sum(len(vault.store.get_sealed(o)) for o in want)
    assert dst.fsck().ok
    assert content(dst, head) == content(vault.store, head)
    # and again: the walk stops at once, nothing is wanted
    again = WantPlanner(dst, Policy.full())
    assert again.add_roots([head]) == 0 and again.done


def test_small_files_chunks_before_big_files(tmp_path: Path) -> None:
    files = {"big.bin": os.urandom(5_000_000), "small.bin": b"s" * 5000, "mid.bin": os.urandom(1_200_000)}
    vault, head = make_vault(tmp_path / "a", files)
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    order: list[tuple[str, bytes]] = []
    pump(plan, vault.store, dst, log=order, batch=1)
    from pcloud.store import trees, history
    tree = history.get_commit(vault.store, head).tree
    blobs = {p: e.id for p, e in trees.walk(vault.store, tree)}
    chunk_pos = {oid: i for i, (k, oid) in enumerate(order) if k == "chunk"}
    first = {p: min(chunk_pos[c] for c in vault.store.refs_of(b)) for p, b in blobs.items()}
    assert first["small.bin"] < first["mid.bin"] < first["big.bin"]
    vault.close()


def test_resume_after_interruption_never_refetches_stored_chunks(tmp_path: Path, vault_a) -> None:
    vault, head, _ = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    first = pump(plan, vault.store, dst, stop_after_chunks=15)
    stored_before = set(dst.iter_ids())
    assert any(env.decode_header(dst.get_sealed(o)).kind == Kind.CHUNK for o in stored_before)
    dst.close()
    # "process restart": a fresh store handle and a fresh planner from the same root
    dst = ObjectStore.open(tmp_path / "b", vault.keyring)
    assert dst.fsck().ok  # closure holds: nothing stored references something missing
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    order: list[tuple[str, bytes]] = []
    second = pump(plan, vault.store, dst, log=order)
    assert not ({oid for _, oid in order} & stored_before), "a stored object was fetched again"
    total = sum(len(vault.store.get_sealed(o)) for o in reachable(vault.store, [head]))
    refetched_meta = first + second - total
    assert 0 <= refetched_meta < 64 * 1024  # only held metadata travels twice
    assert content(dst, head) == content(vault.store, head)


def test_on_demand_takes_metadata_then_one_file_on_request(tmp_path: Path, vault_a) -> None:
    vault, head, files = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.on_demand())
    plan.add_roots([head])
    order: list[tuple[str, bytes]] = []
    pump(plan, vault.store, dst, log=order)
    assert plan.done and order and all(k != "chunk" for k, _ in order)
    from pcloud.store import trees, history
    tree = history.get_commit(dst, head).tree
    entries = dict(trees.walk(dst, tree))  # every tree and manifest is here
    assert set(entries) == set(files)
    blob = entries["big/huge.bin"].id
    assert not all(dst.has(c) for c in dst.refs_of(blob))
    # a present blob is complete for a normal walk (on-demand exception), so ask deep + urgent
    assert plan.add_roots([blob]) == 0
    plan.add_roots([blob], urgent=True, deep=True)
    order.clear()
    pump(plan, vault.store, dst, log=order)
    assert {oid for _, oid in order} == set(vault.store.refs_of(blob))
    assert b"".join(dst.read_stream(blob)) == files["big/huge.bin"]
    other = entries["d0/f0000.bin"].id
    assert not all(dst.has(c) for c in dst.refs_of(other))


def test_urgent_request_overtakes_queued_bulk(tmp_path: Path, vault_a) -> None:
    vault, head, files = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    pump(plan, vault.store, dst, stop_after_chunks=1)
    from pcloud.store import trees, history
    tree = history.get_commit(vault.store, head).tree
    blob = dict(trees.walk(vault.store, tree))["big/huge.bin"].id
    assert any(p[0] == BULK for heap in plan._heaps for p, _ in heap)
    plan.add_roots([blob], urgent=True, deep=True)
    missing = {c for c in vault.store.refs_of(blob) if not dst.has(c)}
    claimed = plan.claim(b"p" * 32, len(missing), 1 << 30)
    assert set(claimed) == missing


def test_tampered_chunk_is_rejected_then_refetched_and_parents_wait(tmp_path: Path, vault_a) -> None:
    vault, head, files = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    from pcloud.store import trees, history
    tree = history.get_commit(vault.store, head).tree
    blob = dict(trees.walk(vault.store, tree))["big/huge.bin"].id
    bad = vault.store.refs_of(blob)[0]
    pump(plan, vault.store, dst, tamper={bad})
    assert plan.done
    assert dst.fsck().ok and content(dst, head) == content(vault.store, head)


def test_parent_reverted_by_a_refused_child_waits_behind_its_refetched_copy(tmp_path: Path) -> None:
    # A parent P goes READY with its child C; the writer takes C alone (small batch), the store refuses it,
    # P reverts to HELD. P's old ready-deque entry, ahead of C's refetched copy, must not hand P out first.
    src = ObjectStore.create(tmp_path / "src", None)
    dst = ObjectStore.create(tmp_path / "dst", None)
    c, p = b"C" * 32, b"P" * 32
    src.put_sealed(env.Envelope(Kind.CHUNK, c, 0, (), b"\0" * 20).encode())
    src.put_sealed(env.Envelope(Kind.TREE, p, 0, (c,), b"\0" * 20).encode())
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([p])

    def fetch(peer: bytes) -> None:
        for oid in plan.claim(peer, 10, 1 << 30):
            data = src.get_sealed(oid)
            plan.received(oid, data, env.decode_header(data))

    fetch(b"1" * 32)
    fetch(b"1" * 32)
    assert plan.counts()["ready"] == 2
    assert [o.oid for o in plan.take_ready(1)] == [c]
    assert plan.rejected(c) == {p}
    assert plan.counts() == {"queued": 1, "inflight": 0, "held": 1, "ready": 0, "writing": 0}
    fetch(b"2" * 32)  # a good copy from another peer
    assert plan.ready_bytes == len(src.get_sealed(c)) + len(src.get_sealed(p))
    assert [o.oid for o in plan.take_ready(1)] == [c]  # child first, also in the smallest batches
    assert [o.oid for o in plan.take_ready(1)] == [p]
    assert plan.take_ready(1 << 20) == [] and plan.ready_bytes == 0
    plan.stored([c, p])
    assert plan.done
    src.close()
    dst.close()


def test_wrong_id_and_self_reference_are_refused_without_change(tmp_path: Path, vault_a) -> None:
    vault, head, _ = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    (oid,) = plan.claim(b"p" * 32, 10, 1 << 30)
    tree = vault.store.refs_of(head)[0]
    data = vault.store.get_sealed(tree)
    with pytest.raises(WrongObject):
        plan.received(oid, data, env.decode_header(data))
    assert plan.counts()["inflight"] == 1
    e = env.decode(vault.store.get_sealed(head))
    selfref = env.Envelope(e.kind, e.object_id, e.epoch, (e.object_id,), e.body).encode()
    with pytest.raises(WrongObject):
        plan.received(oid, selfref, env.decode_header(selfref))
    plan.received(oid, vault.store.get_sealed(head), env.decode_header(vault.store.get_sealed(head)))
    assert plan.counts()["held"] == 1
    with pytest.raises(ValueError):
        plan.add_roots([b"short"])


def test_invented_cycle_is_reported_stuck_not_looped(tmp_path: Path) -> None:
    src = ObjectStore.create(tmp_path / "src", None)  # sealed-only: accepts any well-framed envelope
    dst = ObjectStore.create(tmp_path / "dst", None)
    a, b, root = b"A" * 32, b"B" * 32, b"R" * 32
    for oid, refs in ((a, (b,)), (b, (a,)), (root, (a,))):
        src.put_sealed(env.Envelope(3, oid, 0, refs, b"\0" * 20).encode())
    plan = WantPlanner(dst, Policy.archive())
    plan.add_roots([root])
    pump(plan, src, dst)
    assert not plan.done and set(plan.stuck()) == {a, b, root}
    assert not dst.has(root) and not dst.has(a)


def test_absent_ids_go_to_other_peers(tmp_path: Path, vault_a) -> None:
    vault, head, _ = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.full())
    plan.add_roots([head])
    p1, p2 = b"1" * 32, b"2" * 32
    (oid,) = plan.claim(p1, 10, 1 << 30)
    plan.absent(oid, p1)
    assert plan.claim(p1, 10, 1 << 30) == [] and not plan.fetchable_by(p1)
    assert plan.fetchable_by(p2) and plan.claim(p2, 10, 1 << 30) == [oid]
    plan.release([oid])
    assert plan.counts()["queued"] == 1 and plan.inflight == 0
    plan.clear_exclusions()
    assert plan.fetchable_by(p1)
    plan.set_size(oid, 1234)
    assert plan.wanted_bytes == 1234 and plan.unsized(10) == []
    assert State.QUEUED.name == "QUEUED"


def test_package_exports_resolve_lazily() -> None:
    import subprocess
    import sys
    code = ("import sys, replication; assert 'transport.session' not in sys.modules; "
            "assert all(getattr(replication, n) for n in replication.__all__)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- property: random graphs, peers that lack objects or send bad copies, interruptions -----------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[int, list[int], int]]:
    """Nodes 0..n-1 as (kind, refs to lower-numbered nodes, body size); the last node is the root."""
    n = draw(st.integers(1, 25))
    nodes = []
    for i in range(n):
        kind = draw(st.sampled_from([1, 2, 3, 4]))
        refs = sorted(set(draw(st.lists(st.integers(0, i - 1), max_size=4)))) if i and kind != 1 else []
        nodes.append((kind, refs, draw(st.integers(16, 300))))
    return nodes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=dags(), seed=st.integers(0, 10_000), mode=st.sampled_from(["full", "on-demand"]))
def test_property_any_graph_completes_with_closure_despite_faults(tmp_path_factory, graph, seed: int, mode: str) -> None:
    import random
    rng = random.Random(seed)
    base = tmp_path_factory.mktemp("prop")
    src = ObjectStore.create(base / "src", None)
    ids = []
    for i, (kind, refs, size) in enumerate(graph):
        oid = i.to_bytes(32, "big")
        ids.append(oid)
        src.put_sealed(env.Envelope(kind, oid, 0, tuple(ids[r] for r in refs), bytes(size)).encode())
    root = ids[-1]
    policy = Policy.named(mode)
    dst = ObjectStore.create(base / "dst", None)
    plan = WantPlanner(dst, policy)
    plan.add_roots([root])
    peers = [b"p" * 32, b"q" * 32]
    rounds = 0
    while not plan.done and rounds < 500:
        rounds += 1
        peer = rng.choice(peers)
        batch = plan.claim(peer, rng.randint(1, 5), 1 << 30)
        if not batch:
            plan.clear_exclusions()  # a later run: peers may have it now
        for oid in batch:
            roll = rng.random()
            if roll < 0.15:
                plan.absent(oid, peer)
            elif roll < 0.25:
                plan.release([oid])  # the session dropped
            else:
                data = src.get_sealed(oid)
                plan.received(oid, data, env.decode_header(data))
        ready = plan.take_ready(rng.randint(1, 2000))
        stored, bad = [], set()
        reverted: set[bytes] = set()  # over the whole batch: a parent of two refused children is reverted once

        def depends(obj) -> bool:
            # whether obj's closure includes its refs: under on-demand a blob is stored without its
            # chunks (the sanctioned exception), so a refused chunk that a tree also references
            # does not revert it
            return policy.follows(env.decode_header(obj.data).kind, False)

        for obj in ready:
            if bad & set(obj.refs):
                bad.add(obj.oid)
                continue
            if rng.random() < 0.1:  # the store refuses this copy (failed verification)
                bad.add(obj.oid)
                reverted |= plan.rejected(obj.oid)
                assert {r.oid for r in ready if obj.oid in r.refs and depends(r)} <= reverted | bad
                continue
            if depends(obj):  # children before parents: every ref is stored already (or earlier in this batch)
                assert all(dst.has(r) for r in obj.refs), "a parent was handed out before its child"
            dst.put_sealed(obj.data)
            stored.append(obj.oid)
        plan.stored(stored)
        plan.retry_write(o.oid for o in ready)
        # closure invariant after every step (under on-demand, blobs' refs are lazy)
        for oid in dst.iter_ids():
            kind = env.decode_header(dst.get_sealed(oid)).kind
            if policy.follows(kind, False):
                assert all(dst.has(r) for r in dst.refs_of(oid))
    assert plan.done, plan.counts()
    want = {root}
    stack = [root]
    while stack:
        oid = stack.pop()
        kind = env.decode_header(src.get_sealed(oid)).kind
        if policy.follows(kind, False):
            for r in src.refs_of(oid):
                if r not in want:
                    want.add(r)
                    stack.append(r)
    assert set(dst.iter_ids()) == want
    src.close()
    dst.close()


def test_on_demand_pinned_folder_is_kept_whole_by_a_deep_walk(tmp_path: Path, vault_a) -> None:
    vault, head, files = vault_a
    dst = ObjectStore.create(tmp_path / "b", vault.keyring)
    plan = WantPlanner(dst, Policy.on_demand())
    plan.add_roots([head])
    pump(plan, vault.store, dst)
    from pcloud.store import trees, history
    root_tree = history.get_commit(dst, head).tree
    pinned = trees.lookup(dst, root_tree, "d3")
    assert pinned is not None and pinned.kind == "dir"
    plan.add_roots([pinned.id], deep=True)  # what the node does for a pinned path after main moves
    pump(plan, vault.store, dst)
    for path, entry in trees.walk(dst, root_tree):
        complete = all(dst.has(c) for c in dst.refs_of(entry.id))
        assert complete == path.startswith("d3/"), path
    for path, data in files.items():
        if path.startswith("d3/"):
            assert b"".join(dst.read_stream(dict(trees.walk(dst, root_tree))[path].id)) == data



def test_held_metadata_is_bounded_by_claiming_chunks_first_past_held_max(tmp_path: Path) -> None:
    """Many multi-chunk files: past held_max the planner fetches chunks before more file manifests, so the
    manifests waiting in memory for their chunks stay near the bound (directory trees wait for all their
    files whatever the order); everything still arrives, children first."""
    files = random_files(200, 100_000, 200_000, seed=5)
    vault, head = make_vault(tmp_path / "a", files)
    try:
        def held_manifests(plan: WantPlanner) -> int:
            return sum(len(n.data) for n in plan._nodes.values()
                       if n.state is State.HELD and n.data and env.decode_header(n.data).kind == Kind.BLOB)

        def peak_of(held_max: int) -> int:
            dst = ObjectStore.create(tmp_path / f"b{held_max}", vault.keyring)
            plan = WantPlanner(dst, Policy.full(), held_max=held_max)
            plan.add_roots([head])
            peak = [0]
            pump(plan, vault.store, dst, batch=4, metadata_first=False,
                 on_claim=lambda p: peak.__setitem__(0, max(peak[0], held_manifests(p))))
            assert plan.done and plan.held_bytes == 0
            assert content(dst, head) == content(vault.store, head)
            dst.close()
            return peak[0]
        unbounded = peak_of(1 << 40)
        bounded = peak_of(1_000)
        manifest = max(len(vault.store.get_sealed(bytes.fromhex(vault.stat(p).id))) for p in files)
        assert unbounded >= 150 * manifest // 2          # without the bound: (nearly) every manifest at once
        assert bounded < unbounded / 5                   # with it: a few claims' worth
    finally:
        vault.close()
