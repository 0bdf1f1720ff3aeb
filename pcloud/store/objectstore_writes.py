"""The object store's write path: one open transaction of pack appends and pending index rows.

``Writes`` owns what a write transaction touches: the writer lock (flock on
``<store>/lock``), the PackWriter of the open transaction, the index rows not
yet committed (``pending``), the nesting depth and why a transaction failed.
``ObjectStore`` holds one and reads ``pending`` to see its own uncommitted
objects.

Invariants
----------
* Durability order: ``flush`` fsyncs the pack bytes (PackWriter.sync), *then*
  commits their index rows and pack sizes in one SQLite transaction. A row
  therefore never points at bytes a crash can lose; bytes past a pack's
  committed size belong to no row and are truncated by the next writer
  (``begin``) or by ``recover`` when a store is opened. Refs move after this
  (RefStore flushes before it writes), so a ref never names a lost object.
* One writing process: the writer lock is taken by ``begin`` and held until
  the outermost transaction ends (``end``); orphan pack files (no row in
  ``packs``) are removed only while it is held.
* A transaction is one durable unit: if its block raises, or any append or
  flush fails, everything it appended is truncated and no row is committed
  (``abort``). After such a failure inside a transaction, every further write
  in the same outer transaction raises UsageError, so nothing can commit
  objects that reference the rolled-back ones.
* A full disk (ENOSPC/EDQUOT/EFBIG or SQLite "database or disk is full")
  rolls the transaction back and raises StorageFull (through the guard).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from pcloud.errors import UsageError
from pcloud.store import pagecache
from pcloud.store.objectstore_index import is_full
from pcloud.store.objects import ObjectId
from pcloud.store.packs import PACK_TARGET, PackReader, PackWriter, WriterLock, list_pack_files, pack_name

Location = tuple[int, int, int, int, bytes | None]
"""kind, pack, offset, length, digest (digest only for envelopes stored sealed-only)."""


class Writes:
    """The open write transaction of one ObjectStore (all methods need ``lock`` held or take it)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: threading.RLock, reader: PackReader,
                 guard: Callable[[], ContextManager[None]]) -> None:
        self.conn = conn
        """The index connection (shared with the store and its RefStore)."""
        self.lock = lock
        """The store's lock around ``conn`` and the fields below."""
        self.packs_dir = path / "packs"
        self.reader = reader
        self.guard = guard
        """Translates storage errors (disk full, closed store) at the boundary."""
        self._wlock = WriterLock(path / "lock")
        self.writer: PackWriter | None = None
        """The open transaction's pack writer (None when no write is under way)."""
        self.pending: dict[ObjectId, Location] = {}
        """Objects appended but whose index rows are not committed yet."""
        self.depth = 0
        """Nesting depth of ``transaction`` blocks."""
        self._failed: BaseException | None = None  # why the open transaction was rolled back

    def recover(self) -> None:
        """Cut torn pack tails and drop orphan pack files, if no other process is writing."""
        if not self._wlock.acquire(blocking=False):
            return  # the active writer truncates tails itself when it begins
        try:
            self._clean_orphans()
            for pack, size in self.conn.execute("SELECT pack, size FROM packs").fetchall():
                f = self.packs_dir / pack_name(pack)
                if f.exists() and f.stat().st_size > size:
                    os.truncate(f, size)
        except OSError as exc:
            if not is_full(exc):
                raise
        finally:
            self._wlock.release()

    def _clean_orphans(self) -> None:
        listed = {row[0] for row in self.conn.execute("SELECT pack FROM packs")}
        for number, f in list_pack_files(self.packs_dir).items():
            if number not in listed:
                self.reader.forget(number)
                f.unlink()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Batch appends into one durable unit; see ``ObjectStore.transaction``."""
        with self.lock:
            self.depth += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self.lock:
                self.depth -= 1
                if self.depth == 0:
                    failed, self._failed = self._failed, None
                    if ok and failed is not None:
                        raise UsageError(
                            f"the transaction was rolled back by an earlier error ({failed}); nothing was committed")
                    if ok:
                        self.flush()
                    elif self.writer is not None:
                        self.abort()
                        self._failed = None

    def check_failed(self) -> None:
        """Raise UsageError if the open transaction was already rolled back."""
        if self._failed is not None:
            raise UsageError(f"this transaction was rolled back by an earlier error ({self._failed}); "
                             "leave the `with store.transaction()` block and start a new one")

    def begin(self) -> PackWriter:
        """The open transaction's writer; takes the writer lock and opens one if none is open."""
        self.check_failed()
        if self.writer is not None:
            return self.writer
        with self.guard():
            self._wlock.acquire()
            try:
                self._clean_orphans()
                row = self.conn.execute("SELECT pack, size FROM packs ORDER BY pack DESC LIMIT 1").fetchone()
                if row is None:
                    w = PackWriter(self.packs_dir, 1, 0, True)
                elif row[1] >= PACK_TARGET:
                    w = PackWriter(self.packs_dir, row[0] + 1, 0, True)
                else:
                    w = PackWriter(self.packs_dir, row[0], row[1], False)
                w.begin()
            except BaseException:
                self._wlock.release()
                raise
        self.writer = w
        return w

    def flush(self) -> None:
        """Make every pending object durable now (fsync packs, then commit index rows)."""
        with self.lock:
            self.check_failed()
            w = self.writer
            if w is None:
                return
            try:
                with self.guard():
                    sizes = w.sync()
                    now = time.time_ns()
                    rows = [(oid, *loc, now) for oid, loc in self.pending.items()]
                    self.conn.execute("BEGIN IMMEDIATE")
                    try:
                        self.conn.executemany(
                            "INSERT OR IGNORE INTO objects(id, kind, pack, offset, length, digest, added_ns) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                        self.conn.executemany(
                            "INSERT INTO packs(pack, size) VALUES (?, ?) "
                            "ON CONFLICT(pack) DO UPDATE SET size = excluded.size", list(sizes.items()))
                        self.conn.execute("COMMIT")
                    except BaseException:
                        if self.conn.in_transaction:
                            self.conn.execute("ROLLBACK")
                        raise
            except BaseException as exc:
                self.abort(exc)
                raise
            w.committed()
            self.pending.clear()
            if self.depth == 0:
                self.end()

    def end(self) -> None:
        """Close the writer and release the writer lock (the transaction is committed or undone)."""
        if self.writer is not None:
            kept = {self.packs_dir / pack_name(p): spans for p, spans in self.writer.kept.items()}
            self.writer.close()
            self.writer = None
            pagecache.drop_later(kept)  # offered envelopes: cached while the peers fetch them
        self._wlock.release()

    def abort(self, cause: BaseException | None = None) -> None:
        """Throw away the open transaction: truncate what it appended, forget its rows."""
        w = self.writer
        self.pending.clear()
        if self.depth > 0 and cause is not None:
            self._failed = cause
        if w is None:
            return
        try:
            w.rollback()
        except OSError:
            pass  # the next writer truncates to the committed sizes anyway
        finally:
            self.end()

    def append(self, oid: ObjectId, kind: int, data: bytes | memoryview, digest: bytes | None = None,
               now: bool = False) -> None:
        """Append one envelope to the open transaction (``now``: written before returning, see PackWriter)."""
        with self.lock:
            w = self.begin()
            try:
                with self.guard():
                    pack, offset = w.append(data, now)
            except BaseException as exc:
                self.abort(exc)
                raise
            self.pending[oid] = (kind, pack, offset, len(data), digest)
            if self.depth == 0:
                self.flush()

    def drain_pending(self, oid: ObjectId) -> None:
        """If ``oid`` is in the open transaction, make sure its bytes are written before a read."""
        if oid in self.pending and self.writer is not None:
            with self.guard():
                self.writer.drain()
