"""A big file's chunks offered while its writer is still hashing it: published by write_stream, staged on the
receiver before the manifest exists, adopted by the manifest (pcloud.store.objectstore_streams,
pcloud.folders_stage `Stager.expect`).

Real stores and files; the replication side of offers is tested in test_replication_offer.py.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcloud.errors import BadArgument
from pcloud.folders_stage import Stager, StagingStore, decode_hint, encode_hint
from pcloud.store import objectstore_streams
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Blob
from pcloud.store.objectstore import ObjectStore

SIZE = 6 << 20
STEP = 1 << 20


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(objectstore_streams, "PUBLISH_STEP", STEP)  # several steps in a small file
    keyring = Keyring.generate()
    src = ObjectStore.create(tmp_path / "src", keyring)
    dst = ObjectStore.create(tmp_path / "dst", keyring)
    yield keyring, src, dst
    src.close()
    dst.close()


def _write(src: ObjectStore, data: bytes) -> tuple[bytes, Blob, list[list[tuple[bytes, int, int]]]]:
    steps: list[list[tuple[bytes, int, int]]] = []
    with src.transaction():
        oid, _ = src.write_stream(io.BytesIO(data), publish=steps.append)
    blob = src.get(oid)
    assert isinstance(blob, Blob)
    return oid, blob, steps


# ---- publishing while hashing ------------------------------------------------------------------

def test_write_stream_publishes_committed_chunks_step_by_step(tmp_path: Path, stores) -> None:
    keyring, src, _ = stores
    data = os.urandom(SIZE)
    seen_by_other_handle: list[bool] = []

    def publish(chunks: list[tuple[bytes, int, int]]) -> None:
        other = ObjectStore.open(tmp_path / "src", keyring)  # another process would see exactly this
        try:
            seen_by_other_handle.append(all(other.has(c) for c, _, _ in chunks))
        finally:
            other.close()
        steps.append(chunks)

    steps: list[list[tuple[bytes, int, int]]] = []
    with src.transaction():
        oid, size = src.write_stream(io.BytesIO(data), publish=publish)
    blob = src.get(oid)
    assert isinstance(blob, Blob) and size == SIZE
    assert len(steps) >= 4 and all(seen_by_other_handle)
    flat = [c for s in steps for c in s]
    offset = 0
    for (cid, off, n), ref in zip(flat, blob.chunks, strict=True):  # every chunk once, in file order, tail too
        assert (cid, off, n) == (ref.id, offset, ref.size)
        offset += n
    assert all(sum(n for _, _, n in s) >= STEP for s in steps[:-1])


def test_a_file_under_one_step_is_never_published(stores) -> None:
    _, src, _ = stores
    _, blob, steps = _write(src, os.urandom(STEP // 2 + 300_000))
    assert steps == [] and len(blob.chunks) >= 1


def test_a_failure_after_a_publish_keeps_only_what_was_published(tmp_path: Path, stores) -> None:
    keyring, src, _ = stores
    published: list[tuple[bytes, int, int]] = []

    def publish(chunks: list[tuple[bytes, int, int]]) -> None:
        published.extend(chunks)
        raise OSError("the peer side blew up")  # any failure of the hand-off aborts the file

    with pytest.raises(OSError):
        with src.transaction():
            src.write_stream(io.BytesIO(os.urandom(SIZE)), publish=publish)
    other = ObjectStore.open(tmp_path / "src", keyring)
    try:
        assert published and all(other.has(c) for c, _, _ in published)  # committed before: whole, unreferenced
        assert other.fsck().ok
    finally:
        other.close()


# ---- staging offered chunks --------------------------------------------------------------------

def _stager(tmp_path: Path, keyring: Keyring, **kw: Any) -> Stager:
    return Stager(tmp_path / "staging", lambda: ObjectStore.open(tmp_path / "dst", keyring), min_size=1 << 20, **kw)


def test_offered_chunks_are_staged_before_the_manifest_and_adopted(tmp_path: Path, stores) -> None:
    keyring, src, dst = stores
    data = os.urandom(SIZE)
    oid, blob, steps = _write(src, data)
    stager = _stager(tmp_path, keyring)
    token = os.urandom(16)
    store = StagingStore(dst, stager)
    try:
        half = len(steps) // 2
        for s in steps[:half]:  # offered and fetched while the writer still hashes
            stager.expect(token, s)
            with store.transaction():
                for cid, _, _ in s:
                    store.put_sealed(src.get_sealed(cid))
        assert [n for n in os.listdir(tmp_path / "staging") if n.startswith("offered-")]
        stager.announce(oid, blob)  # the commit arrived: the rest comes with it, unoffered
        with store.transaction():
            for ref in blob.chunks:
                if not dst.has(ref.id):
                    store.put_sealed(src.get_sealed(ref.id))
        path = stager.take(oid, wait=10)
        assert path is not None and Path(path).read_bytes() == data
        assert stager.handed_off == len(blob.chunks)  # every chunk written from the fetch, none read back
        os.unlink(path)
    finally:
        stager.close()


def test_chunks_stored_before_the_manifest_but_not_offered_are_read_from_the_store(tmp_path: Path, stores) -> None:
    keyring, src, dst = stores
    data = os.urandom(SIZE)
    oid, blob, steps = _write(src, data)
    stager = _stager(tmp_path, keyring)
    try:
        stager.expect(os.urandom(16), steps[0])
        with dst.transaction():  # stored by something else (no hand-off): the stager reads them back
            for ref in blob.chunks:
                dst.put_sealed(src.get_sealed(ref.id))
        stager.announce(oid, blob)
        path = stager.take(oid, wait=10)
        assert path is not None and Path(path).read_bytes() == data
    finally:
        stager.close()


@pytest.mark.parametrize("lie", ["swapped", "short", "beyond"])
def test_a_hint_that_disagrees_with_the_manifest_costs_only_the_provisional_staging(
        tmp_path: Path, stores, lie: str) -> None:
    keyring, src, dst = stores
    data = os.urandom(SIZE)
    oid, blob, steps = _write(src, data)
    hint = [c for s in steps for c in s]
    if lie == "swapped":  # ids at each other's places: the bytes written there are wrong
        (a, oa, na), (b, ob, nb) = hint[0], hint[1]
        hint[0], hint[1] = (b, oa, nb), (a, ob, na)
    elif lie == "short":  # the sizes disagree with the chunks: caught when the chunk arrives
        hint[0] = (hint[0][0], 0, hint[0][2] - 1)
    else:  # a chunk placed past the end of the file
        hint.append((hint[-1][0], blob.size + 10, hint[-1][2]))
    stager = _stager(tmp_path, keyring)
    store = StagingStore(dst, stager)
    try:
        stager.expect(os.urandom(16), hint)
        with store.transaction():
            for ref in blob.chunks:
                store.put_sealed(src.get_sealed(ref.id))
        stager.announce(oid, blob)  # not adopted: staged afresh, from the store
        path = stager.take(oid, wait=10)
        assert path is not None and Path(path).read_bytes() == data
        assert not [n for n in os.listdir(tmp_path / "staging") if n.startswith("offered-")]
    finally:
        stager.close()


def test_conflicting_hints_for_one_token_abandon_it(tmp_path: Path, stores) -> None:
    keyring, src, _ = stores
    _, _, steps = _write(src, os.urandom(SIZE))
    stager = _stager(tmp_path, keyring)
    try:
        token = os.urandom(16)
        stager.expect(token, steps[0])
        stager.expect(token, steps[0])  # an offer sent again is harmless
        assert [n for n in os.listdir(tmp_path / "staging") if n.startswith("offered-")]
        cid, off, n = steps[0][0]
        stager.expect(token, [(os.urandom(32), off, n)])  # another chunk at the same place
        assert not os.listdir(tmp_path / "staging")
    finally:
        stager.close()


def test_a_provisional_staging_no_manifest_adopts_expires(tmp_path: Path, stores) -> None:
    keyring, src, _ = stores
    _, _, steps = _write(src, os.urandom(SIZE))
    stager = _stager(tmp_path, keyring, idle_timeout=0.2)
    try:
        stager.expect(os.urandom(16), steps[0])
        assert os.listdir(tmp_path / "staging")
        deadline = time.monotonic() + 5
        while os.listdir(tmp_path / "staging") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.listdir(tmp_path / "staging")
    finally:
        stager.close()


# ---- the hint codec ----------------------------------------------------------------------------

def test_hint_round_trips() -> None:
    chunks = [(os.urandom(32), 0, 1000), (os.urandom(32), 1000, 70_000)]
    token = os.urandom(16)
    assert decode_hint(encode_hint(token, chunks), [c[0] for c in chunks]) == (token, chunks)


IDS = [b"\x01" * 32, b"\x02" * 32]


@pytest.mark.parametrize("tag", [
    b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": b"x" * 16}),
    msgpack.packb({"t": b"x" * 15, "c": [[0, 1], [1, 1]]}), msgpack.packb({"t": b"x" * 16, "c": [[0, 1]]}),
    msgpack.packb({"t": b"x" * 16, "c": [[0, 1], [1, 0]]}), msgpack.packb({"t": b"x" * 16, "c": [[-1, 1], [1, 1]]}),
    msgpack.packb({"t": b"x" * 16, "c": [[0, 1], [1, 1 << 30]]}), msgpack.packb({"t": b"x" * 16, "c": [[0, 1], [True, 1]]}),
    msgpack.packb({"t": b"x" * 16, "c": [[0, 1], [1, 1]], "x": 0}), msgpack.packb({"t": b"x" * 16, "c": [[0, 1], "ab"]}),
    b"\x00" * 70_000,
])
def test_malformed_hints_are_refused(tag: bytes) -> None:
    with pytest.raises(BadArgument):
        decode_hint(tag, IDS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hint_decoder_raises_only_bad_argument(tag: bytes) -> None:
    try:
        decode_hint(tag, IDS)
    except BadArgument:
        pass
