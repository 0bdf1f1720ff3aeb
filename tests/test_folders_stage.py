"""Staging big incoming files while their chunks arrive (pcloud.folders_stage) and writing them into a folder.

Real stores, real files: a source vault holds the blob; the destination store
receives its chunks one by one (put_sealed, as the fetcher stores them) while
the stager follows it.
"""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

import pcloud
from pcloud.folders import FolderSync
from pcloud.folders_apply import LocalChanged, write_staged
from pcloud.errors import CorruptObject
from pcloud.folders_stage import Stager, StagingStore
from pcloud.store.objects import Blob
from pcloud.store.objectstore import ObjectStore

SIZE = 3 << 20


@pytest.fixture
def src(tmp_path: Path):
    v = pcloud.Vault.create(tmp_path / "vault", name="laptop")
    yield v
    v.close()


def _blob(v: pcloud.Vault, data: bytes) -> tuple[bytes, Blob]:
    with v.store.transaction():
        oid, _ = v.store.write_stream(io.BytesIO(data))
    blob = v.store.get(oid)
    assert isinstance(blob, Blob) and len(blob.chunks) > 1
    return oid, blob


def test_stager_writes_a_blob_as_its_chunks_arrive(tmp_path: Path, src: pcloud.Vault) -> None:
    data = os.urandom(SIZE)
    oid, blob = _blob(src, data)
    dst_path = tmp_path / "dst"
    ObjectStore.create(dst_path, src.keyring).close()
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(dst_path, src.keyring), min_size=1 << 20)
    try:
        stager.announce(oid, blob)           # announced before any chunk is here, as the fetcher does

        def deliver() -> None:               # chunks land one by one, in another handle (the fetcher's)
            dst = ObjectStore.open(dst_path, src.keyring)
            try:
                for ref in reversed(blob.chunks):   # any order: the stager writes in file order
                    with dst.transaction():
                        dst.put_sealed(src.store.get_sealed(ref.id))
                    time.sleep(0.02)
            finally:
                dst.close()
        t = threading.Thread(target=deliver)
        t.start()
        staged = stager.take(oid, wait=20)
        t.join()
        assert staged is not None
        assert Path(staged).read_bytes() == data
        assert stager.take(oid, wait=0) is None        # handed out once
    finally:
        stager.close()
    assert not (tmp_path / "staging").exists()


def test_chunks_stored_through_the_staging_store_are_handed_over_not_read_back(
        tmp_path: Path, src: pcloud.Vault) -> None:
    """The replicator's puts give the stager the plaintext their check opened; nothing is read twice."""
    data = os.urandom(SIZE)
    oid, blob = _blob(src, data)
    dst = ObjectStore.create(tmp_path / "dst", src.keyring)
    reads: list[bytes] = []

    class Counting:  # the stager's own handle, counting the chunks it has to read back
        def __init__(self) -> None:
            self.s = ObjectStore.open(tmp_path / "dst", src.keyring)
            self.has = self.s.has
            self.close = self.s.close

        def get_chunk(self, cid: bytes) -> bytes:
            reads.append(cid)
            return self.s.get_chunk(cid)

    stager = Stager(tmp_path / "staging", Counting, min_size=1 << 20)
    store = StagingStore(dst, stager)
    try:
        stager.announce(oid, blob)
        envelopes = [src.store.get_sealed(ref.id) for ref in blob.chunks]
        bad = bytearray(envelopes[0])
        bad[-1] ^= 1                                        # a damaged copy: refused, never handed over
        with pytest.raises(CorruptObject):
            with store.transaction():
                store.put_sealed(bytes(bad))
        with store.transaction():
            for e in reversed(envelopes):                     # any order: written at each chunk's offset
                store.put_sealed(e)
        staged = stager.take(oid, wait=20)
        assert staged is not None and Path(staged).read_bytes() == data
        assert stager.handed_off == len(set(r.id for r in blob.chunks))
        assert reads == []                                  # every chunk came by hand-off
        assert store.has(blob.chunks[0].id) and store.sealed_size(blob.chunks[0].id) == len(envelopes[0])
    finally:
        stager.close()
        dst.close()


def test_chunks_held_before_the_announce_are_read_from_the_store(tmp_path: Path, src: pcloud.Vault) -> None:
    """A resumed fetch: half the chunks were stored earlier; the stager reads those, the rest come by hand-off."""
    data = os.urandom(SIZE)
    oid, blob = _blob(src, data)
    dst = ObjectStore.create(tmp_path / "dst", src.keyring)
    half = len(blob.chunks) // 2
    with dst.transaction():
        for ref in blob.chunks[:half]:
            dst.put_sealed(src.store.get_sealed(ref.id))
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(tmp_path / "dst", src.keyring), min_size=1 << 20)
    store = StagingStore(dst, stager)
    try:
        stager.announce(oid, blob)
        with store.transaction():
            for ref in blob.chunks[half:]:
                store.put_sealed(src.store.get_sealed(ref.id))
        staged = stager.take(oid, wait=20)
        assert staged is not None and Path(staged).read_bytes() == data
        assert 0 < stager.handed_off < len(blob.chunks)
    finally:
        stager.close()
        dst.close()


def test_stager_gives_up_on_a_chunk_that_never_comes(tmp_path: Path, src: pcloud.Vault) -> None:
    oid, blob = _blob(src, os.urandom(SIZE))
    dst_path = tmp_path / "dst"
    ObjectStore.create(dst_path, src.keyring).close()
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(dst_path, src.keyring), idle_timeout=0.3,
                    min_size=1 << 20)
    try:
        stager.announce(oid, blob)
        assert stager.take(oid, wait=10) is None
        assert os.listdir(tmp_path / "staging") == []    # the partial file is gone
    finally:
        stager.close()


def test_small_blobs_are_not_staged(tmp_path: Path, src: pcloud.Vault) -> None:
    oid, blob = _blob(src, os.urandom(SIZE))
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(src.path / "store", src.keyring))
    try:
        stager.announce(oid, blob)                       # 3 MiB < STAGE_MIN
        assert stager.take(oid, wait=0.5) is None
    finally:
        stager.close()


def test_write_staged_never_clobbers_a_file_that_appeared(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    staged = tmp_path / "staged"
    staged.write_bytes(b"remote")
    (root / "f.bin").write_bytes(b"local, unsynced")
    with pytest.raises(LocalChanged):
        write_staged(str(root), "f.bin", str(staged), 0o644, 1_000_000_000, None)
    assert (root / "f.bin").read_bytes() == b"local, unsynced"
    assert sorted(os.listdir(root)) == ["f.bin"]           # no temp file left behind
    assert not staged.exists()                             # consumed either way
    staged.write_bytes(b"remote")
    st = write_staged(str(root), "sub/g.bin", str(staged), 0o755, 1_000_000_000, None)
    assert st is not None and (root / "sub" / "g.bin").read_bytes() == b"remote"
    assert os.stat(root / "sub" / "g.bin").st_mode & 0o777 == 0o755
    assert os.stat(root / "sub" / "g.bin").st_mtime_ns == 1_000_000_000


def test_folder_takes_the_staged_copy_and_keeps_folder_semantics(tmp_path: Path, src: pcloud.Vault) -> None:
    """B's folder writes a big remote file from the staged copy (no second read of the store)."""
    data = os.urandom(SIZE)
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    a_dir.mkdir()
    (a_dir / "big.bin").write_bytes(data)
    FolderSync(src, a_dir).sync_once()
    vb = pcloud.Vault.open(src.path)
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(src.path / "store", src.keyring),
                    min_size=1 << 20)
    try:
        entry = vb.stat("big.bin")
        oid = bytes.fromhex(entry.id)
        blob = vb.store.get(oid)
        stager.announce(oid, blob)
        # wait until staged, without taking it
        deadline = time.monotonic() + 10
        while not os.listdir(tmp_path / "staging") or stager._jobs[oid].state != "done":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # making it differ from the store (a staged copy is trusted once complete)
        marker = Path(stager._jobs[oid].path)
        with open(marker, "r+b") as f:
            f.write(b"STAGED")
        fs = FolderSync(vb, b_dir, stager=stager)
        r = fs.sync_once()
        assert r.applied == 1
        assert (b_dir / "big.bin").read_bytes() == b"STAGED" + data[6:]
        assert os.listdir(tmp_path / "staging") == []
        fs.stop()
    finally:
        stager.close()
        vb.close()


def test_many_small_writes_in_parallel_isolate_a_failing_path(tmp_path: Path, src: pcloud.Vault) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    files = {f"d{i % 7}/f{i:03d}.bin": os.urandom(100 + i * 37) for i in range(300)}
    for rel, data in files.items():
        (a_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (a_dir / rel).write_bytes(data)
    FolderSync(src, a_dir).sync_once()
    b_dir.mkdir()
    (b_dir / "d3").write_bytes(b"a file where the vault has a folder")
    vb = pcloud.Vault.open(src.path)
    try:
        fs = FolderSync(vb, b_dir)
        fs.sync_once()
        got = {p.relative_to(b_dir).as_posix(): p.read_bytes() for p in b_dir.rglob("*") if p.is_file()}
        blocked = {rel for rel in files if rel.startswith("d3/")}
        assert blocked
        assert {rel: files[rel] for rel in files if rel not in blocked} == {k: v for k, v in got.items()
                                                                             if k != "d3"}
        assert not [n for n in os.listdir(b_dir / "d0") if n.endswith(".pcloud-tmp")]
        (b_dir / "d3").unlink()
        fs.sync_once()
        assert (b_dir / "d3" / sorted(blocked)[0].split("/")[1]).read_bytes() == files[sorted(blocked)[0]]
        fs.stop()
    finally:
        vb.close()


def test_stagings_fill_independently(tmp_path: Path, src: pcloud.Vault) -> None:
    """A blob whose chunks are all here is finished at once, even while another still waits for its chunks."""
    first, blob1 = _blob(src, os.urandom(SIZE))
    data2 = os.urandom(SIZE)
    second, blob2 = _blob(src, data2)
    dst = ObjectStore.create(tmp_path / "dst", src.keyring)
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(tmp_path / "dst", src.keyring), idle_timeout=5,
                    min_size=1 << 20)
    store = StagingStore(dst, stager)
    try:
        stager.announce(first, blob1)                         # none of its chunks will come
        stager.announce(second, blob2)
        with store.transaction():
            for ref in blob2.chunks:
                store.put_sealed(src.store.get_sealed(ref.id))
        t0 = time.monotonic()
        staged = stager.take(second, wait=10)
        assert staged is not None and Path(staged).read_bytes() == data2
        assert time.monotonic() - t0 < 1
        assert stager.take(first, wait=0.1) is None           # still incomplete: not handed out
    finally:
        stager.close()
        dst.close()


def test_at_most_max_filling_stagings_hold_a_descriptor(tmp_path: Path, src: pcloud.Vault) -> None:
    """Announcing more big blobs than MAX_FILLING stages the first ones only (each holds an fd until done)."""
    from pcloud import folders_stage
    stager = Stager(tmp_path / "staging", lambda: ObjectStore.open(src.path / "store", src.keyring),
                    min_size=1 << 20)
    try:
        oid, blob = _blob(src, os.urandom(SIZE))
        fake = [(bytes([i]) * 32, blob) for i in range(folders_stage.MAX_FILLING + 5)]  # same chunks, other ids
        for fid, b in fake:
            stager.announce(fid, b)
        assert len(os.listdir(tmp_path / "staging")) == folders_stage.MAX_FILLING
        # the chunks are all in src's store: the stager fills and finishes them, then takes new ones again
        first = stager.take(fake[0][0], wait=20)
        assert first is not None and Path(first).read_bytes() == b"".join(src.store.get_chunk(r.id) for r in blob.chunks)
        deadline = time.monotonic() + 20
        while any(j.state == "filling" for j in stager._jobs.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stager.announce(oid, blob)
        assert stager.take(oid, wait=20) is not None           # room again once the others are done
    finally:
        stager.close()
