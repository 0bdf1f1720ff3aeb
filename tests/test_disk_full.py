"""A full disk (a real 4 MiB tmpfs) rolls back cleanly with StorageFull and loses nothing committed."""
from __future__ import annotations

import io
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import blake3
import pytest

from pcloud.errors import StorageFull
from pcloud.store.crypto import Keyring
from pcloud.store.objectstore import ObjectStore


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte of the filesystem with one file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _pack_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "packs").iterdir())


def test_stream_too_big_rolls_back(small_fs):
    kr = Keyring.generate()
    store = ObjectStore.create(small_fs / "s", kr)
    try:
        kept = store.put_chunk(b"committed before the disk filled")
        before = _pack_bytes(small_fs / "s")
        with pytest.raises(StorageFull):
            store.write_stream(io.BytesIO(blake3.blake3(b"big").digest(8 << 20)))
        assert _pack_bytes(small_fs / "s") == before  # the torn transaction was truncated away
        assert store.get_chunk(kept) == b"committed before the disk filled"
        assert store.put_chunk(b"still writable") and store.fsck().ok
        with pytest.raises(StorageFull, match="will not fit"):
            store.write_stream(io.BytesIO(b""), size_hint=1 << 40)
    finally:
        store.close()
    again = ObjectStore.open(small_fs / "s", kr)
    try:
        assert again.fsck().ok and again.has(kept)
    finally:
        again.close()


def test_fill_one_put_at_a_time(small_fs):
    kr = Keyring.generate()
    store = ObjectStore.create(small_fs / "s", kr)
    stored: dict[bytes, bytes] = {}
    try:
        with pytest.raises(StorageFull):
            for i in range(1000):
                data = blake3.blake3(i.to_bytes(4, "big")).digest(100_000)
                stored[store.put_chunk(data)] = data
        assert len(stored) > 5
        for oid, data in stored.items():
            assert store.get_chunk(oid) == data
        assert store.fsck().ok
    finally:
        store.close()
    again = ObjectStore.open(small_fs / "s", kr)
    try:
        assert again.fsck().ok and set(again.iter_ids()) == set(stored)
    finally:
        again.close()


def test_sqlite_full_is_storage_full(small_fs):
    kr = Keyring.generate()
    store = ObjectStore.create(small_fs / "s", kr)
    try:
        oid = store.put_chunk(b"x")
        filler = _fill(small_fs)
        done = []
        with pytest.raises(StorageFull) as exc:
            for i in range(20_000):
                name = f"branch-{i:05d}-" + "n" * 200
                assert store.refs.cas(name, None, oid)
                done.append(name)
        assert isinstance(exc.value.__cause__, sqlite3.OperationalError)  # SQLITE_FULL, not a pack write
        filler.unlink()
        assert all(store.refs.get(n) == oid for n in done[-50:])
        assert store.refs.cas("after", None, oid)
        n_refs = len(store.refs.list())
    finally:
        store.close()
    again = ObjectStore.open(small_fs / "s", kr)
    try:
        assert again.fsck().ok and len(again.refs.list()) == n_refs == len(done) + 1
    finally:
        again.close()


def test_failed_transaction_cannot_commit_dangling_refs(small_fs):
    from pcloud.errors import UsageError
    from pcloud.store.objects import Tree, TreeEntry
    kr = Keyring.generate()
    store = ObjectStore.create(small_fs / "s", kr)
    try:
        with pytest.raises(UsageError, match="rolled back"):
            with store.transaction():
                small, _ = store.write_stream(io.BytesIO(b"small file"))
                with pytest.raises(StorageFull):
                    store.write_stream(io.BytesIO(blake3.blake3(b"big").digest(8 << 20)))
                with pytest.raises(UsageError, match="rolled back"):
                    store.put(Tree((TreeEntry("small", "file", small),)))  # would dangle: small is gone
                # a caller that swallows the errors still cannot commit
        assert not store.has(small)
        assert store.refs.cas("main", None, store.put_chunk(b"fresh transaction works"))
        assert store.fsck().ok
    finally:
        store.close()


def test_a_staging_that_fills_its_disk_is_abandoned_and_the_store_still_gets_every_chunk(small_fs, tmp_path):
    """The staging dir on a full 4 MiB disk: the 6 MiB staged copy fails, the replicator's puts do not."""
    from stage_helpers import staged_transfer
    with staged_transfer(tmp_path, small_fs / "staging", 6 << 20) as (stager, dst, oid, blob, data):
        assert stager.take(oid, wait=5) is None                   # abandoned, not a truncated file
        assert os.listdir(small_fs / "staging") == []             # the partial file is gone
        assert b"".join(dst.get_chunk(r.id) for r in blob.chunks) == data   # every chunk stored, intact
