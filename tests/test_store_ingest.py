"""The large-file put path: chunks read into reused buffers, envelopes sealed in place, one write each."""
from __future__ import annotations

import io

import blake3
import pytest

from pcloud.store import sealing
from pcloud.store.chunking import RING_MIN, chunk_bytes, chunk_file
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Chunk, Kind
from pcloud.store.objectstore import ObjectStore


def _data(n: int, seed: bytes = b"ingest") -> bytes:
    return blake3.blake3(seed).digest(n)


@pytest.fixture
def big_file(tmp_path):
    data = _data(4 * RING_MIN + (3 << 20))
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    return p, data


@pytest.mark.parametrize("ring", [1, 3])
def test_ring_views_stay_valid_for_ring_chunks(big_file, ring):
    p, data = big_file
    expected = list(chunk_bytes(data))
    got: list[memoryview | bytes] = []
    with open(p, "rb") as f:
        for view in chunk_file(f, ring):
            got.append(view)
            for back, old in enumerate(reversed(got[-ring:])):  # the last `ring` views are intact
                assert bytes(old) == expected[len(got) - 1 - back]
    assert len(got) == len(expected)
    assert isinstance(got[0], memoryview)  # the reused-buffer path really ran


def test_ring_views_when_the_file_grows(big_file):
    p, data = big_file
    extra = _data(2 << 20, b"extra")
    with open(p, "rb") as f:
        gen = chunk_file(f, 2)
        first = bytes(next(gen))
        with open(p, "ab") as w:
            w.write(extra)
        chunks = [first, *(bytes(c) for c in gen)]
    assert chunks == list(chunk_bytes(data + extra))


def test_seal_chunk_into_is_byte_identical_to_seal():
    keyring = Keyring.generate()
    plain = _data(300_000)
    oid = keyring.object_id(Kind.CHUNK, plain)
    out = bytearray(sealing.chunk_envelope_size(1 << 20))
    view = sealing.seal_chunk_into(keyring, memoryview(plain), oid, out)
    assert bytes(view) == sealing.seal(keyring, Chunk(plain))[1]
    assert len(view) == sealing.chunk_envelope_size(len(plain))
    assert sealing.open_verified(keyring, bytes(view), oid) == Chunk(plain)


def test_large_put_matches_stream_put_and_dedups(tmp_path, big_file):
    p, data = big_file
    store = ObjectStore.create(tmp_path / "store", Keyring.generate())
    with open(p, "rb") as f:
        big_id, size = store.write_stream(f)  # helper + reused buffers
    assert size == len(data)
    assert b"".join(store.read_stream(big_id)) == data
    packs = sum(f.stat().st_size for f in (tmp_path / "store" / "packs").iterdir())
    same_id, _ = store.write_stream(io.BytesIO(data))  # in-process chunking, bytes chunks
    assert same_id == big_id
    with open(p, "rb") as f:
        again, _ = store.write_stream(f)
    assert again == big_id
    assert sum(f.stat().st_size for f in (tmp_path / "store" / "packs").iterdir()) < packs + 4096
    assert store.fsck().ok
    store.close()


def test_large_put_with_repeated_chunks_stores_each_once(tmp_path):
    block = _data(1 << 20, b"block")  # content repeats: the same chunks arrive while in flight
    p = tmp_path / "rep.bin"
    p.write_bytes(block * 40)
    store = ObjectStore.create(tmp_path / "store", Keyring.generate())
    with open(p, "rb") as f, store.transaction():
        blob_id, _ = store.write_stream(f)
    assert b"".join(store.read_stream(blob_id)) == block * 40
    assert sum(f.stat().st_size for f in (tmp_path / "store" / "packs").iterdir()) < 3 << 20
    store.close()


def test_small_envelopes_gathered_are_readable_durable_and_rolled_back(tmp_path, monkeypatch):
    from pcloud.store import objectstore_writes, packs
    monkeypatch.setattr(packs, "PACK_TARGET", 200_000)  # small objects cross pack boundaries too
    monkeypatch.setattr(objectstore_writes, "PACK_TARGET", 200_000)
    store = ObjectStore.create(tmp_path / "store", Keyring.generate())
    datas = [_data(1000 + 37 * i, b"small%d" % i) for i in range(300)]
    with store.transaction():
        ids = [store.put(Chunk(d)) for d in datas]
        assert [store.get_chunk(i) for i in ids] == datas  # gathered bytes are written before a read
    store.close()
    store = ObjectStore.open(tmp_path / "store", store.keyring)
    assert [store.get_chunk(i) for i in ids] == datas
    on_disk = sum(f.stat().st_size for f in (tmp_path / "store" / "packs").iterdir())
    extra = [_data(500, b"gone%d" % i) for i in range(50)]
    with pytest.raises(RuntimeError), store.transaction():
        gone = [store.put(Chunk(d)) for d in extra]
        raise RuntimeError("abandon")
    assert not any(store.has(g) for g in gone)
    assert sum(f.stat().st_size for f in (tmp_path / "store" / "packs").iterdir()) == on_disk
    assert store.fsck().ok
    store.close()


def test_put_sealed_refuses_wrong_lengths_and_stores_nothing(tmp_path):
    from replication.errors import MalformedEnvelope
    keyring = Keyring.generate()
    store = ObjectStore.create(tmp_path / "store", keyring)
    oid, sealed = sealing.seal(keyring, Chunk(_data(5000)))
    for bad in (sealed[:-1], sealed + b"\0", sealed[:60]):
        with pytest.raises(MalformedEnvelope):
            store.put_sealed(bad)
        assert not store.has(oid)
    assert store.put_sealed(sealed) == oid
    assert store.get_chunk(oid) == _data(5000)
    store.close()
