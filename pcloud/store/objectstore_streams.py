"""Storing a file as a stream: chunk, hash and seal in worker threads, append in order.

``StreamWriter`` is the pipeline behind ``ObjectStore.write_stream``. The
pipeline for a large file, and why (1 GiB, 2 cores, measured with other jobs
at load ~4, so CPU seconds are the steadier figure): the calling thread reads
each window of the file once into reused buffers and finds its cut points
there (chunking.chunk_file; pyfastcdc cuts without the GIL), two sealer
threads hash (BLAKE3) and seal (AES-GCM ``encrypt_into`` a reused envelope
buffer; both release the GIL), and the calling thread writes each envelope
with one pwrite. Before: 3.4 s CPU (user 1.2, sys 1.35, a cut-point helper
process 0.9) per GiB, where chunks were read into new bytes objects, sealed
into new ones, concatenated to their header, and every sealer took the store
lock for its dedup SELECT while the writer held it. Then: 2.35-2.5 s CPU (user
0.95, sys 0.6, helper 0.8). With the cuts made in place instead of by the
helper (which read the file a second time and started an interpreter first):
256 MiB in 0.91-0.94 s CPU against 1.02-1.07 s with the helper, same run. The
commit's fsync of 1 GiB fell from 0.43 s to 0.08 s with pack writeback started
every 32 MiB (pagecache.start_writeback). What is left is mostly irreducible
here: BLAKE3, AES-GCM, FastCDC and the kernel copies in and out of the page
cache.

Invariants
----------
* Memory stays bounded whatever the file size: at most ``_SEAL_AHEAD`` chunks
  are in flight, each sealed into one of ``_SEAL_AHEAD + 2`` reused buffers,
  and an envelope is written (``now=True``) before its buffer is reused.
* Chunks are appended in file order by the calling thread only; sealers never
  write, and they never take the store lock (see ``_stored``).
* The whole file is one transaction (joining an open one): its chunks and its
  blob commit together or not at all; after an error, every sealer has
  finished before the rollback runs. Except with ``publish``: then every
  PUBLISH_STEP bytes the transaction is flushed (everything appended so far
  becomes durable and visible to other handles) and the chunks of that step
  are handed to ``publish`` (the node offers them to peers while the rest is
  still being hashed), and so is the tail once a step was; a file under one
  step is never flushed early. Cost measured with 256 MiB: ~20 ms per flush
  (fsync and SQLite commit) on the hashing thread. A failure after a flush rolls back only what followed
  it; the chunks committed before are whole objects nothing references yet,
  which gc reclaims (the store's closure rule holds: chunks have no refs).
"""
from __future__ import annotations

import itertools
import shutil
import sqlite3
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, BinaryIO, Callable

from replication import envelope as env
from pcloud.errors import BadArgument, StorageFull
from pcloud.store import sealing
from pcloud.store.chunking import MAX_SIZE, chunk_file
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Blob, Chunk, ChunkRef, Kind, ObjectId
from pcloud.store.objectstore_index import connect_reader

if TYPE_CHECKING:
    from pcloud.store.objectstore import ObjectStore
    from pcloud.store.objectstore_writes import Writes

_SEALERS = 2  # sealer threads. Under load ~4: 1, 2, 3 alike (1.9-2.6 s/GiB); none (all inline) 2.4-4.3 s
_SEAL_AHEAD = 6  # chunks hashed/sealed ahead of the writer; memory: 2 x (_SEAL_AHEAD + 2) reused 1 MiB buffers
PUBLISH_STEP = 32 << 20
"""With ``publish``: bytes of file between two flushes (each costs one fsync of what the step wrote, whose
writeback was started as it was written, plus one SQLite commit)."""

Publish = Callable[[list[tuple[ObjectId, int, int]]], None]
"""``publish([(chunk id, offset in the file, size), ...])``: those chunks are stored and committed."""


class StreamWriter:
    """Writes files into one ObjectStore; owns its sealer threads and their read connections."""

    def __init__(self, store: ObjectStore, ws: Writes) -> None:
        self._store = store
        self._ws = ws
        self._pool: ThreadPoolExecutor | None = None
        self._tls = threading.local()  # a sealer thread's own read connection (see _stored)
        self._conns: list[sqlite3.Connection] = []

    def close(self) -> None:
        """Stop the sealer threads and close their connections (the store lock is held)."""
        if self._pool is not None:
            self._pool.shutdown()
        for conn in self._conns:
            conn.close()

    def write(self, keyring: Keyring, f: BinaryIO, size_hint: int | None = None,
              publish: Publish | None = None) -> tuple[ObjectId, int]:
        """Chunk ``f``, store its chunks and its blob; returns (blob id, size). See ``ObjectStore.write_stream``."""
        store, ws = self._store, self._ws
        if size_hint is not None:
            free = shutil.disk_usage(store.path).free
            if size_hint > free:
                raise StorageFull(f"{size_hint} bytes will not fit: {free} bytes free under {store.path}")
        refs: list[ChunkRef] = []
        inflight: deque[Future[tuple[ObjectId, int, memoryview | None]]] = deque()
        # Envelopes are built in reused buffers, one per chunk in flight (slot = chunk number % ring).
        ring = _SEAL_AHEAD + 2
        slots: list[bytearray] = []
        step: list[tuple[ObjectId, int, int]] = []  # chunks since the last publish
        offset = 0
        published = False

        def take() -> None:
            nonlocal offset, published
            oid, size, sealed = inflight.popleft().result()
            # The sealer checked the index; an identical chunk may have landed since (same file).
            # A dict lookup, not has(): each SQLite call here would hand the GIL to the sealers and back.
            if sealed is not None and oid not in ws.pending:
                ws.append(oid, Kind.CHUNK, sealed, now=True)  # written now: its slot is reused next
            refs.append(ChunkRef(oid, size))
            if len(refs) > env.MAX_REFS:
                raise BadArgument(f"file too large: more than {env.MAX_REFS} chunks")
            if publish is not None:
                step.append((oid, offset, size))
                if offset + size - step[0][1] >= PUBLISH_STEP:
                    ws.flush()  # committed: other handles (the node's replicator) can serve them now
                    publish(step[:])
                    step.clear()
                    published = True
            offset += size

        with store.transaction():
            if publish is not None:
                ws.begin().keep_cached = True  # its peers read every envelope back within moments
            # chunk_file's views stay valid for `ring` chunks; at most _SEAL_AHEAD + 1 are in flight.
            chunks = chunk_file(f, ring)
            first = next(chunks, None)
            second = next(chunks, None) if first is not None else None
            if second is None:  # one chunk (most files): inline, no thread hand-off
                if first is not None:
                    first = bytes(first)
                    oid = keyring.object_id(Kind.CHUNK, first)
                    if not store.has(oid):
                        ws.append(oid, Kind.CHUNK, sealing.seal(keyring, Chunk(first), plain=first, oid=oid)[1])
                    refs.append(ChunkRef(oid, len(first)))
                blob = Blob(tuple(refs))
                return store.put(blob), blob.size
            slots.extend(bytearray(sealing.chunk_envelope_size(MAX_SIZE)) for _ in range(ring))
            try:
                for i, data in enumerate(itertools.chain((first, second), chunks)):
                    inflight.append(self._sealers().submit(self._seal_chunk, keyring, data, slots[i % ring]))
                    if len(inflight) > _SEAL_AHEAD:
                        take()
                while inflight:
                    take()
                if published and step and publish is not None:
                    # the tail of a file that was offered: the peers fetch it while the commit goes through
                    # Raft (a file smaller than one step is never offered: no extra fsync for it)
                    ws.flush()
                    publish(step[:])
            finally:
                for fut in inflight:  # after an error: let workers finish before the rollback
                    fut.cancel()
                wait(inflight)
            blob = Blob(tuple(refs))
            return store.put(blob), blob.size

    def _seal_chunk(self, keyring: Keyring, data: bytes | memoryview,
                    out: bytearray) -> tuple[ObjectId, int, memoryview | None]:
        """Worker: id of one chunk and its envelope built in ``out`` (None if already stored).

        BLAKE3 and AES-GCM release the GIL on large inputs, so two workers and
        the writing thread run on both cores.
        """
        oid = keyring.object_id(Kind.CHUNK, data)
        if self._stored(oid):
            return oid, len(data), None
        return oid, len(data), sealing.seal_chunk_into(keyring, data, oid, out)

    def _stored(self, oid: ObjectId) -> bool:
        """``has`` for a sealer thread, without the store lock (the writing thread holds it while it writes).

        This transaction's ids are checked in ``pending`` (a dict lookup is
        atomic under the GIL), committed ones through the thread's own read
        connection. A flush between the two moves an id from the first to the
        second (rows commit before ``pending`` is cleared), so a stored chunk is
        missed only when it lands after the check. The writing thread re-checks
        ``pending`` before appending (a repeat within this file); a chunk that a
        flush from another thread committed in between is appended once more,
        its row is ignored (INSERT OR IGNORE keeps the first) and gc reclaims
        the dead copy: never a wrong row, at worst wasted bytes.
        """
        if oid in self._ws.pending:
            return True
        conn: sqlite3.Connection | None = getattr(self._tls, "conn", None)
        if conn is None:
            with self._ws.lock, self._ws.guard():  # the guard refuses a closed store
                conn = connect_reader(self._store.path)
                self._conns.append(conn)
            self._tls.conn = conn
        with self._ws.guard():
            return conn.execute("SELECT 1 FROM objects WHERE id = ?", (oid,)).fetchone() is not None

    def _sealers(self) -> ThreadPoolExecutor:
        with self._ws.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_SEALERS, thread_name_prefix="pcloud-seal")
            return self._pool
