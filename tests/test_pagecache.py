"""Bulk writes leave the page cache once on disk (pcloud.store.pagecache, packs, stager); small objects stay.

Residency is read with mincore(2) on a mapping of the real pack file, so these
tests fail if the pages stay cached (Linux only; skipped elsewhere).
"""
from __future__ import annotations

import ctypes
import io
import mmap
import os
import sys
from pathlib import Path

import pytest

from pcloud.store import pagecache
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Blob, EntryKind, Tree, TreeEntry
from pcloud.store.objectstore import ObjectStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore/fadvise semantics are Linux's")

PAGE = mmap.PAGESIZE


def resident(path: Path, offset: int, length: int, inner: bool = True) -> float:
    """Fraction of the pages of [offset, offset+length) of ``path`` in the page cache.

    ``inner``: only the pages wholly inside the range (dropping advice covers
    those); otherwise every page the range touches.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    if inner:
        first, last = -(-offset // PAGE) * PAGE, (offset + length) // PAGE * PAGE
    else:
        first, last = offset // PAGE * PAGE, -(-(offset + length) // PAGE) * PAGE
    if last <= first:
        return 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, last - first, mmap.PROT_READ, mmap.MAP_SHARED, fd, first)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            pages = (last - first) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), last - first, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(v & 1 for v in vec) / pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), last - first)
    finally:
        os.close(fd)


def test_drop_forgets_written_pages_and_keeps_data(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = os.urandom(4 << 20)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        assert resident(p, 0, len(data)) > 0.9
        pagecache.settle_and_drop(fd, [(0, len(data))])   # waits for the disk, then forgets
        assert resident(p, 0, len(data)) < 0.1
        assert os.pread(fd, len(data), 0) == data         # advice only: nothing lost
    finally:
        os.close(fd)


def test_big_envelopes_leave_the_cache_small_ones_stay(tmp_path: Path) -> None:
    store = ObjectStore.create(tmp_path / "s", Keyring.generate())
    try:
        data = os.urandom(48 << 20)
        with store.transaction():
            blob, _ = store.write_stream(io.BytesIO(data))
            small = store.put(Tree((TreeEntry("a", EntryKind.FILE, blob, 0o644, len(data), 0),)))
        where = {bytes(r[0]): (r[1], r[2], r[3]) for r in store._conn.execute("SELECT id, pack, offset, length FROM objects")}
        manifest = store.get(blob)
        assert isinstance(manifest, Blob)
        pack_file = tmp_path / "s" / "packs" / f"{where[blob][0]:08d}.pack"
        total = sum(where[c.id][2] for c in manifest.chunks)
        cached = sum(resident(pack_file, where[c.id][1], where[c.id][2]) * where[c.id][2] for c in manifest.chunks)
        assert cached / total < 0.1                            # 48 MiB of chunks: out of the cache
        _, off, ln = where[small]
        assert resident(pack_file, off, ln, inner=False) == 1.0   # the tree (metadata) stays cached
        assert b"".join(store.read_stream(blob)) == data        # advice only: every byte reads back
    finally:
        store.close()


def test_a_staged_file_leaves_the_cache_once_fsynced(tmp_path: Path) -> None:
    from stage_helpers import staged_transfer
    with staged_transfer(tmp_path, tmp_path / "staging", 40 << 20) as (stager, _, oid, _, data):
        staged = stager.take(oid, wait=20)
        assert staged is not None
        assert resident(Path(staged), 0, len(data)) < 0.1
        assert Path(staged).read_bytes() == data


def test_an_offered_file_stays_cached_while_peers_fetch_then_leaves(tmp_path: Path, monkeypatch) -> None:
    """With ``publish`` (its chunks offered to peers while it is stored) the envelopes stay cached until
    ``KEEP_OFFERED`` after the transaction: dropped at once, the writer read them all back from the disk."""
    import time
    monkeypatch.setattr(pagecache, "KEEP_OFFERED", 1.0)
    store = ObjectStore.create(tmp_path / "s", Keyring.generate())
    try:
        data = os.urandom(80 << 20)
        offered: list[tuple[bytes, int, int]] = []
        blob, _ = store.write_stream(io.BytesIO(data), publish=offered.extend)
        assert offered                                         # it was published in steps
        where = {bytes(r[0]): (r[1], r[2], r[3]) for r in store._conn.execute("SELECT id, pack, offset, length FROM objects")}
        manifest = store.get(blob)
        assert isinstance(manifest, Blob)

        def cached() -> float:
            total = sum(where[c.id][2] for c in manifest.chunks)
            pack = lambda c: tmp_path / "s" / "packs" / f"{where[c.id][0]:08d}.pack"  # noqa: E731
            return sum(resident(pack(c), where[c.id][1], where[c.id][2]) * where[c.id][2]
                       for c in manifest.chunks) / total

        assert cached() > 0.9                                  # kept for the peers
        deadline = time.monotonic() + 10
        while cached() > 0.1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cached() < 0.1                                  # then forgotten
        assert b"".join(store.read_stream(blob)) == data
    finally:
        store.close()
