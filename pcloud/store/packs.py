"""Append-only pack files: where sealed envelopes rest on disk.

A pack is a plain concatenation of envelopes (``packs/00000001.pack``). The
SQLite index (objectstore.py) holds, per pack, its *committed size*, and per
object its (pack, offset, length). Invariants:

* Bytes below a pack's committed size never change, except when gc rewrites
  a whole pack into a new one and deletes the old file.
* Bytes at or above the committed size are garbage from a transaction that
  never committed (torn by a crash or rolled back). The writer truncates them
  before appending (``PackWriter.begin``), holding the store's writer lock.
* A pack file with no row in the index is garbage from a crash (a new pack
  never committed, or a compacted pack whose deletion was cut short) and is
  removed under the writer lock.
* Index rows are committed only after the pack bytes they point to are
  fsynced, so every committed row points at durable bytes.
* An appended envelope may still be in memory (a batch of small ones) or
  queued (a large one) until ``PackWriter.drain``; ``sync`` drains first, and
  the store drains before reading an object of the open transaction.
"""
from __future__ import annotations

import errno
import fcntl
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pcloud.store import pagecache

PACK_TARGET = 512 << 20  # roll to a new pack past this size: bounds gc's rewrite work per pack
ASYNC_MIN = 64 << 10  # envelopes this big are written by a background thread (overlaps chunking/sealing)
SMALL_BATCH = 1 << 20  # smaller envelopes are gathered into writes of about this size
_QUEUE_DEPTH = 4  # bounded: at most this many envelopes (<= 4 x 2 MiB chunks) wait in memory
_SUFFIX = ".pack"


def pack_name(number: int) -> str:
    return f"{number:08d}{_SUFFIX}"


def list_pack_files(directory: Path) -> dict[int, Path]:
    """Pack number -> path of every pack file in ``directory``."""
    out: dict[int, Path] = {}
    for p in directory.iterdir():
        if p.suffix == _SUFFIX and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new or removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PackReader:
    """Positioned reads from pack files through cached read-only descriptors."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[int, int] = {}

    def read(self, pack: int, offset: int, length: int) -> bytes:
        """The bytes at [offset, offset+length) of a pack; short if the file is short.

        Raises FileNotFoundError if the pack file is gone.
        """
        fd = self._fds.get(pack)
        if fd is None:
            fd = os.open(self.directory / pack_name(pack), os.O_RDONLY)
            self._fds[pack] = fd
        return os.pread(fd, length, offset)

    def forget(self, pack: int) -> None:
        fd = self._fds.pop(pack, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for pack in list(self._fds):
            self.forget(pack)


@dataclass
class _Open:
    fd: int
    committed: int
    """Size recorded in the index when the transaction began (0 for a new pack)."""
    size: int
    """Bytes written so far, including this transaction's."""
    new: bool
    """Created by this transaction (not yet in the index)."""
    writeback: int = -1
    """Offset up to which disk writing was started (-1: from ``committed``)."""
    bulk: list[tuple[int, int]] = field(default_factory=list)
    """(offset, length) of big envelopes written by this transaction whose pages are still cached."""


class _BackgroundWrites:
    """One thread doing positioned writes in order; the first error is kept and re-raised.

    pwrite releases the GIL, so the kernel copy of chunk N overlaps the
    chunking and sealing of chunk N+1 on the other core.
    """

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[int, bytes, int] | None] = queue.Queue(_QUEUE_DEPTH)
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="pcloud-pack-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    fd, data, offset = item
                    try:
                        _pwrite_all(fd, data, offset)
                    except OSError as exc:
                        self.error = exc
            finally:
                self._q.task_done()

    def submit(self, fd: int, data: bytes, offset: int) -> None:
        self.check()
        self._q.put((fd, data, offset))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every submitted write has landed; raise the first failure."""
        self._q.join()
        self.check()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.ENOSPC, "short write to pack file")
        offset += n
        view = view[n:]


@dataclass
class PackWriter:
    """Appends envelopes for one transaction; durable only after ``sync``.

    Created under the store's writer lock with the index's committed sizes.
    ``rollback`` truncates everything written since ``begin``.
    """

    directory: Path
    current: int
    """Pack being appended to."""
    committed_size: int
    """Its committed size in the index (0 and not yet listed for a new pack)."""
    is_new: bool
    target: int = PACK_TARGET
    _open: dict[int, _Open] = field(default_factory=dict)
    _bg: _BackgroundWrites | None = None
    _small: bytearray = field(default_factory=bytearray)
    """Small envelopes appended but not yet written (contiguous, from ``_small_off`` in ``_small_fd``)."""
    _small_fd: int = -1
    _small_off: int = 0
    keep_cached: bool = False
    """Big envelopes stay in the page cache (peers are about to read them: see ``pagecache``); their
    ranges collect in ``kept`` for the caller to drop later."""
    kept: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """pack -> (offset, length) of big envelopes written while ``keep_cached``."""

    def begin(self) -> None:
        """Open the current pack and cut any torn tail beyond its committed size."""
        fd = os.open(self.directory / pack_name(self.current), os.O_RDWR | os.O_CREAT, 0o600)
        # A crash (or rollback) can leave bytes past the committed size; they belong to no row.
        if os.fstat(fd).st_size != self.committed_size:
            os.ftruncate(fd, self.committed_size)
        self._open[self.current] = _Open(fd, self.committed_size, self.committed_size, self.is_new)

    def roll(self) -> None:
        """Continue in a fresh pack (so gc can rewrite the one that was current)."""
        self.current += 1
        fd = os.open(self.directory / pack_name(self.current), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._open[self.current] = _Open(fd, 0, 0, True)

    def append(self, data: bytes | memoryview, now: bool = False) -> tuple[int, int]:
        """Write one envelope; returns (pack, offset). May roll to a new pack first.

        Envelopes under ASYNC_MIN are copied into a batch written at
        SMALL_BATCH bytes or at ``drain``/``sync``. ``now``: the caller reuses
        ``data``'s buffer, so a larger envelope is written before returning;
        otherwise it may be written by the background thread.
        """
        cur = self._open[self.current]
        if cur.size > 0 and cur.size + len(data) > self.target:
            self.roll()
            cur = self._open[self.current]
        offset = cur.size
        if len(data) < ASYNC_MIN:
            # Small envelopes are gathered and written together: putting 10k small
            # files made 20k pwrites (a chunk and a blob each), now ~300.
            if self._small and (self._small_fd != cur.fd or self._small_off + len(self._small) != offset):
                self._write_small()
            if not self._small:
                self._small_fd, self._small_off = cur.fd, offset
            self._small += data
            if len(self._small) >= SMALL_BATCH:
                self._write_small()
        elif not now:
            if self._bg is None:
                self._bg = _BackgroundWrites()
            self._bg.submit(cur.fd, data, offset)
        else:
            if self._bg is not None:
                self._bg.check()
            _pwrite_all(cur.fd, data, offset)
        if len(data) >= ASYNC_MIN and self.keep_cached:
            self.kept.setdefault(self.current, []).append((offset, len(data)))
        elif len(data) >= ASYNC_MIN:
            # forgotten once on disk (`pagecache`): a bulk sync is written once and read back rarely;
            # smaller envelopes (metadata, small files: read again soon by tree walks and folder applies)
            # stay cached
            cur.bulk.append((offset, len(data)))
        cur.size += len(data)
        start = cur.committed if cur.writeback < 0 else cur.writeback
        if cur.size - start >= pagecache.WRITEBACK_STEP:
            # the previous step's writeback has had a step's time: wait for it, then forget those pages
            settled = [r for r in cur.bulk if r[0] + r[1] <= start]
            if settled:
                pagecache.settle_and_drop(cur.fd, settled)
                cur.bulk = cur.bulk[len(settled):]
            # a head start for the fsync in ``sync``, which remains what makes bytes durable: with 24 GB
            # of RAM the kernel would otherwise keep a whole 1 GiB put dirty until that fsync (measured:
            # the final fsync of 1 GiB took 0.33 s; with writeback started every 32 MiB the disk works
            # during chunking and sealing instead; the step is pagecache.WRITEBACK_STEP)
            pagecache.start_writeback(cur.fd, start, cur.size - start)
            cur.writeback = cur.size
        return self.current, offset

    def _write_small(self) -> None:
        batch, self._small = self._small, bytearray()
        if batch:
            _pwrite_all(self._small_fd, batch, self._small_off)

    def drain(self) -> None:
        """Write gathered envelopes and wait for background writes: reads of this transaction's objects see their bytes."""
        self._write_small()
        if self._bg is not None:
            self._bg.drain()

    @property
    def dirty(self) -> bool:
        return any(o.size != o.committed for o in self._open.values())

    def sync(self) -> dict[int, int]:
        """fsync every pack written; returns pack -> new size for the index."""
        self.drain()
        created = False
        for o in self._open.values():
            if o.size != o.committed or o.new:
                os.fsync(o.fd)
                created |= o.new
        if created:
            fsync_dir(self.directory)
        for o in self._open.values():
            if o.bulk:
                pagecache.drop(o.fd, o.bulk)  # durable now: every page of them is clean
                o.bulk = []
        return {p: o.size for p, o in self._open.items() if o.size != o.committed or o.new}

    def committed(self) -> None:
        """The index now records the synced sizes: they are the new baseline."""
        for o in self._open.values():
            o.committed = o.size
            o.new = False

    def rollback(self) -> None:
        """Drop everything written since begin/committed (best effort on a full disk)."""
        self._small = bytearray()
        if self._bg is not None:
            try:
                self._bg.drain()
            except OSError:
                pass  # the write that failed is being undone right here
            self._bg.stop()
            self._bg = None
        for p, o in list(self._open.items()):
            try:
                if o.new and o.committed == 0:
                    os.unlink(self.directory / pack_name(p))
                else:
                    os.ftruncate(o.fd, o.committed)
            except FileNotFoundError:
                pass
            o.size = o.committed
            o.writeback = -1
            o.bulk = []

    def close(self) -> None:
        if self._bg is not None:
            self._bg.stop()
            self._bg = None
        for o in self._open.values():
            os.close(o.fd)
        self._open.clear()


class WriterLock:
    """An exclusive flock on ``<store>/lock``: one writing process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
