"""repl.offer: a peer told "these objects are stored here" fetches them at once if it keeps everything.

Real QUIC sessions on 127.0.0.1 between real ObjectStores; the codec and the planner's optional wants
are also checked on their own (bad bodies, limits, fuzz).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication import offer as o
from replication.errors import ProtocolViolation
from replication.fetcher import Replicator
from replication.policy import Policy
from replication.want import WantPlanner
from transport.errors import RequestFailed
from pcloud.errors import IntegrityError
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Blob
from pcloud.store.objectstore import ObjectStore

from test_replication_sync import endpoints, keyed
from transport_helpers import run, wait_for

ID = b"\x01" * 32


# ---- codec -------------------------------------------------------------------------------------

def test_offer_body_round_trips() -> None:
    ids = [os.urandom(32) for _ in range(3)]
    assert o.decode_offer(o.encode_offer(ids, b"where")) == (ids, b"where")
    assert o.decode_offer(o.encode_offer([ID])) == ([ID], b"")
    assert o.decode_offer_response(o.encode_offer_response(True)) is True
    assert o.decode_offer_response(o.encode_offer_response(False)) is False


@pytest.mark.parametrize("body", [
    None, [], "ids", {"ids": ID}, {"ids": ID, "tag": b"", "x": 1}, {"ids": ID[:31], "tag": b""},
    {"ids": ID + b"\x00", "tag": b""}, {"ids": b"", "tag": b""}, {"ids": ID * (o.MAX_OFFER_IDS + 1), "tag": b""},
    {"ids": ID, "tag": "text"}, {"ids": ID, "tag": b"x" * (o.MAX_OFFER_TAG + 1)}, {"ids": [ID], "tag": b""},
])
def test_malformed_offer_bodies_are_violations(body: Any) -> None:
    with pytest.raises(ProtocolViolation):
        o.decode_offer(body)


@pytest.mark.parametrize("body", [None, {}, {"taken": 1}, {"taken": True, "x": 0}, {"taken": "yes"}])
def test_malformed_offer_responses_are_violations(body: Any) -> None:
    with pytest.raises(ProtocolViolation):
        o.decode_offer_response(body)


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ValueError):
        o.encode_offer([])
    with pytest.raises(ValueError):
        o.encode_offer([ID] * (o.MAX_OFFER_IDS + 1))
    with pytest.raises(ValueError):
        o.encode_offer([ID[:5]])
    with pytest.raises(ValueError):
        o.encode_offer([ID], b"x" * (o.MAX_OFFER_TAG + 1))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=80) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["ids", "tag", "taken", "x"]), inner, max_size=4), max_leaves=12))
def test_offer_decoders_raise_only_protocol_violations(body: Any) -> None:
    for decode in (o.decode_offer, o.decode_offer_response):
        try:
            decode(body)
        except ProtocolViolation:
            pass


# ---- the planner's optional wants --------------------------------------------------------------

class _Empty:
    def has(self, oid: bytes) -> bool:
        return False

    def refs_of(self, oid: bytes) -> tuple[bytes, ...]:
        raise AssertionError("nothing is stored")


def test_optional_wants_nobody_has_are_dropped_and_never_block_done() -> None:
    plan = WantPlanner(_Empty(), Policy.full())
    offered = [os.urandom(32) for _ in range(3)]
    plan.add_roots(offered, optional=True)
    assert plan.optional_objects == 3 and not plan.done
    ids = plan.claim(b"peer", 10, 1 << 30)
    assert sorted(ids) == sorted(offered)
    for oid in ids:
        plan.absent(oid, b"peer")
    assert plan.drop_optional() == 3
    assert plan.done and plan.optional_objects == 0


def test_an_optional_want_an_ordinary_walk_reaches_is_kept() -> None:
    plan = WantPlanner(_Empty(), Policy.full())
    chunk, other = os.urandom(32), os.urandom(32)
    plan.add_roots([chunk, other], optional=True)
    plan.add_roots([chunk])  # e.g. the manifest naming it arrived: now it is wanted for real
    assert plan.optional_objects == 1
    assert plan.drop_optional() == 1  # only `other`
    assert plan.queued() == [chunk] and not plan.done


def test_optional_wants_queue_behind_metadata() -> None:
    plan = WantPlanner(_Empty(), Policy.full())
    offered, head = os.urandom(32), os.urandom(32)
    plan.add_roots([offered], optional=True)
    plan.add_roots([head])
    assert plan.claim(b"peer", 1, 1 << 30) == [head]


# ---- over real sessions ------------------------------------------------------------------------

def _big_file(store: ObjectStore, size: int) -> tuple[bytes, list[bytes]]:
    with store.transaction():
        blob_id, _ = store.write_stream(io.BytesIO(os.urandom(size)))
    blob = store.get(blob_id)
    assert isinstance(blob, Blob)
    return blob_id, [r.id for r in blob.chunks]


StoreFactory = Callable[[str, "Keyring | None"], ObjectStore]


@pytest.fixture
def new_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """``new_store(name, keyring)``: a fresh object store under tmp_path, closed when the test ends."""
    made: list[ObjectStore] = []

    def make(name: str, keyring: Keyring | None) -> ObjectStore:
        made.append(ObjectStore.create(tmp_path / name, keyring))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_full_replica_takes_an_offer_and_fetches_the_chunks_before_any_sync(new_store: StoreFactory) -> None:
    keyring = Keyring.generate()
    store_a = new_store("a", keyring)
    store_b = new_store("b", keyring)
    blob_id, chunks = _big_file(store_a, 3_000_000)
    seen: list[tuple[bytes, list[bytes], bytes]] = []

    async def body() -> None:
        a, b = await endpoints(2)
        rep_a = keyed(a, store_a, keyring)
        rep_a.serve()
        rep_b = Replicator(b, store_b, Policy.full(), invalid_errors=(IntegrityError,),
                           on_offer=lambda peer, ids, tag: seen.append((peer, ids, tag)))
        rep_b.serve()
        session = await a.connect(b.device_id, b.local_address, path_kind="lan")
        assert await rep_a.offer(session, chunks, b"hint") is True
        await wait_for(lambda: all(store_b.has(c) for c in chunks), 15)
        assert seen == [(a.device_id, chunks, b"hint")]
        assert rep_b.offers_taken == 1
        await wait_for(lambda: not rep_b.progress().running, 5)
        assert rep_b.plan.done
        result = await rep_b.sync([blob_id])  # the manifest comes later (with its commit): chunks are there
        assert result.complete and result.stored == 1
        assert b"".join(store_b.read_stream(blob_id)) == b"".join(store_a.read_stream(blob_id))
        await a.close()
        await b.close()

    run(body())


@pytest.mark.parametrize("policy", [Policy.on_demand(), Policy.archive()])
def test_devices_that_do_not_keep_everything_refuse_offers(new_store: StoreFactory, policy: Policy) -> None:
    keyring = Keyring.generate()
    store_a = new_store("a", keyring)
    store_b = new_store("b", keyring if policy.mode.value != "archive" else None)
    _, chunks = _big_file(store_a, 2_000_000)

    async def body() -> None:
        a, b = await endpoints(2)
        keyed(a, store_a, keyring).serve()
        rep_b = keyed(b, store_b, keyring if policy.mode.value != "archive" else None, policy)
        rep_b.serve()
        session = await a.connect(b.device_id, b.local_address)
        assert await keyed(a, store_a, keyring).offer(session, chunks) is False
        assert rep_b.plan.done and not rep_b.progress().running
        assert not any(store_b.has(c) for c in chunks)
        await a.close()
        await b.close()

    run(body())


def test_an_offer_to_a_peer_that_serves_no_objects_is_simply_not_taken(new_store: StoreFactory) -> None:
    keyring = Keyring.generate()
    store_a = new_store("a", keyring)

    async def body() -> None:
        a, b = await endpoints(2)  # b runs no replicator: the request fails on its side
        session = await a.connect(b.device_id, b.local_address)
        assert await keyed(a, store_a, keyring).offer(session, [ID]) is False
        await a.close()
        await b.close()

    run(body())


def test_an_offer_of_ids_the_peer_lacks_is_dropped_and_a_later_sync_completes(new_store: StoreFactory) -> None:
    keyring = Keyring.generate()
    store_a = new_store("a", keyring)
    store_b = new_store("b", keyring)
    blob_id, _ = _big_file(store_a, 1_000_000)
    invented = [os.urandom(32) for _ in range(5)]

    async def body() -> None:
        a, b = await endpoints(2)
        rep_a = keyed(a, store_a, keyring)
        rep_a.serve()
        rep_b = keyed(b, store_b, keyring)
        rep_b.serve()
        session = await a.connect(b.device_id, b.local_address)
        assert await rep_a.offer(session, invented) is True
        await wait_for(lambda: rep_b.offers_taken == 1 and not rep_b.progress().running, 10)
        assert rep_b.plan.done  # dropped: nobody has them
        result = await rep_b.sync([blob_id])
        assert result.complete and result.missing == 0
        await a.close()
        await b.close()

    run(body())


def test_offers_past_the_bound_and_malformed_offers_are_refused(new_store: StoreFactory) -> None:
    keyring = Keyring.generate()
    store_b = new_store("b", keyring)

    async def body() -> None:
        a, b = await endpoints(2)
        rep_b = Replicator(b, store_b, Policy.full(), invalid_errors=(IntegrityError,), max_offered=4)
        rep_b.serve()
        session = await a.connect(b.device_id, b.local_address)
        rep_a = keyed(a, new_store("a", keyring), keyring)
        # nobody serves these (a does not serve): they stay wanted while the run tries, then are dropped
        assert await rep_a.offer(session, [os.urandom(32) for _ in range(5)]) is False
        assert rep_b.plan.done
        with pytest.raises(RequestFailed) as info:
            await session.request(o.OFFER, {"ids": b"\x00" * 31, "tag": b""}, timeout=5)
        assert info.value.code == "bad_request"
        assert rep_b.plan.done and rep_b.offers_taken == 0
        await a.close()
        await b.close()

    run(body())
