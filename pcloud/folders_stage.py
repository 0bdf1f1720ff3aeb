"""Staging big incoming files while their chunks are being fetched, so a folder's write is a rename.

Without it a remote 256 MiB file reaches a watched folder in series: fetch
every chunk (each opened and verified as it is stored), move ``main``, then
read every chunk back, open it again and write the file. With it:

* the node announces each big blob manifest as the fetcher verifies it
  (manifests arrive before their chunks: the chunk ids come from them), and
  the `Stager` opens a staging file for it;
* the replicator stores chunks through `StagingStore`, whose ``put_sealed``
  hands the plaintext its own check just opened to `Stager.offer`, which
  writes it at the chunk's offset(s) in every staging file that wants it: no
  second read, open or hash of the same bytes;
* one stager thread fills what the hand-off cannot (chunks this device held
  before the announce, or stored in the instant before it) by reading them
  through the store's verified ``get_chunk``, and fsyncs each completed file;
* when the folder's cycle wants that blob it takes the finished file and
  renames it into place (`folders_apply.write_staged`), guarded exactly like
  any other write.

Before the manifest: the writing device offers a big file's chunks while it
is still hashing it (replication.offer; its `Publisher` is the node's), with a
hint (`encode_hint`: a per-file token and each chunk's offset and size). The
receiving node calls `Stager.expect`, which opens a *provisional* staging for
that token and writes each offered chunk's plaintext at its offset as it is
stored. When the manifest is announced, a provisional staging whose every
(chunk id, offset, size) is the manifest's own is adopted as that blob's
staging (the chunks not offered are then filled as usual); one that differs
in anything is abandoned, and the blob is staged from scratch. A provisional
staging no manifest adopts within ``idle_timeout`` of its last progress is
abandoned.

Invariants:
* A staged file holds exactly the blob's bytes: the manifest was verified
  against its id by the fetcher, every chunk written into it was verified
  against its own id (by ``put_sealed`` or ``get_chunk``) and checked against
  the manifest's size, and a file is handed out only once every chunk is in
  it and it is fsynced.
* Staging never blocks or fails a sync: the hand-off never raises into the
  replicator; a blob with no progress for ``idle_timeout``, a read error or a
  full disk abandons that staging (the folder then reads the blob from the
  store as before); it is logged.
* A hint only says where to put bytes that are verified anyway: a staging is
  handed out only after adoption checked every hinted position against the
  verified manifest, so a wrong or hostile hint costs a discarded staging,
  never a wrong file.
* Staging files live in ``<vault>/staging`` (wiped at start); one not taken
  within ``keep`` seconds of being finished is deleted (a blob this device
  fetched for no folder, or a path whose write was overtaken by a local edit).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from replication import envelope as env

from . import errors
from .store import pagecache
from .store.chunking import MAX_SIZE as MAX_CHUNK
from .store.objects import Blob, Chunk, ObjectId

log = logging.getLogger("pcloud.folders")

STAGE_MIN = 4 << 20
"""Blobs at least this big are staged (below it, reading from the store at apply time is as quick)."""
POLL = 0.01
"""How often the stager thread wakes while stagings are being filled."""
PROBE_EVERY = 0.1
"""After a look in the store found a staging's next chunk missing, the next look waits this long (one
SQLite read per staging per look: with many stagings, polling each every POLL would cost a core's share)."""
MAX_FILLING = 32
"""Stagings filled at once (each holds a file descriptor); blobs announced beyond it are not staged (their
folder write reads the store, as without a stager), so a sync of thousands of big files cannot run the
process out of descriptors."""
MAX_HINT = 64 * 1024
"""Bytes of an encoded hint (replication.offer's tag limit)."""
_MAX_OFFSET = 1 << 50

Publisher = Callable[[bytes, list[tuple[ObjectId, int, int]]], None]
"""``publisher(token, [(chunk id, offset, size), ...])``: chunks of the file read under ``token`` (16 random
bytes per file read) are stored and committed; the node offers them to its full-replica peers."""


def encode_hint(token: bytes, chunks: list[tuple[ObjectId, int, int]]) -> bytes:
    """The offer tag saying where ``chunks`` (id, offset, size) go in the file read under ``token``."""
    return msgpack.packb({"t": token, "c": [[off, size] for _, off, size in chunks]})


def decode_hint(tag: bytes, ids: list[ObjectId]) -> tuple[bytes, list[tuple[ObjectId, int, int]]]:
    """(token, [(id, offset, size)]) of a peer's offer tag for ``ids``; BadArgument if it is malformed."""
    try:
        if len(tag) > MAX_HINT:
            raise ValueError("too long")
        m = msgpack.unpackb(tag, max_bin_len=MAX_HINT, max_array_len=len(ids) + 1, max_map_len=2)
        token, places = m["t"], m["c"]
        if set(m) != {"t", "c"} or not isinstance(token, bytes) or len(token) != 16:
            raise ValueError("no 16-byte token")
        if not isinstance(places, list) or len(places) != len(ids):
            raise ValueError(f"{len(places) if isinstance(places, list) else '?'} places for {len(ids)} ids")
        out = []
        for oid, place in zip(ids, places):
            if (not isinstance(place, list) or len(place) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in place)
                    or not 0 <= place[0] < _MAX_OFFSET or not 0 < place[1] <= MAX_CHUNK):
                raise ValueError(f"bad place {place!r:.40}")
            out.append((oid, place[0], place[1]))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise errors.BadArgument(f"malformed staging hint: {exc}") from None
    return token, out


@dataclass(eq=False)
class _Job:
    blob_id: ObjectId
    """b"" while provisional"""
    blob: Blob | None
    """None while provisional"""
    path: str
    fd: int
    missing: dict[int, tuple[ObjectId, int, int]]
    """offset in the file -> (chunk id, offset, size) still to write"""
    size: int
    """the blob's size (provisional: the end of the furthest chunk hinted so far)"""
    hinted: dict[int, tuple[ObjectId, int]] | None = None
    """provisional only: offset -> (chunk id, size) of every chunk a hint placed (checked at adoption)"""
    state: str = "filling"  # filling -> done | failed
    since_step: int = 0
    """bytes written since the last writeback step"""
    writeback: int = 0
    """disk writing was started for [0, writeback): every chunk below it was filled"""
    dropped: int = 0
    """[0, dropped) is on disk and out of the page cache"""
    handed: int = 0
    """chunks written from the replicator's plaintext (the rest were read from the store)"""
    finished: float = 0.0
    progress: float = field(default_factory=time.monotonic)
    next_probe: float = 0.0
    """when the stager thread may next look in the store for this staging's first missing chunk"""
    done: threading.Event = field(default_factory=threading.Event)


class Stager:
    """Big blobs being written into ``directory`` as their chunks are stored.

    ``open_store`` returns a store handle (ObjectStore with the vault key) for
    the stager thread's exclusive use. Thread-safe: ``announce`` from the
    event loop (the fetcher's verify callback), ``offer`` from the
    replicator's writer thread, ``take`` from folder workers.
    """

    def __init__(self, directory: str | os.PathLike[str], open_store: Callable[[], Any],
                 idle_timeout: float = 10.0, keep: float = 120.0, min_size: int = STAGE_MIN) -> None:
        self.dir = os.fspath(directory)
        shutil.rmtree(self.dir, ignore_errors=True)  # left by a killed process: never complete or never taken
        os.makedirs(self.dir, exist_ok=True)
        self._open_store = open_store
        self.idle_timeout = idle_timeout
        self.keep = keep
        self.min_size = min_size
        self._jobs: OrderedDict[ObjectId, _Job] = OrderedDict()
        self._provisional: dict[bytes, _Job] = {}
        """hint token -> provisional staging (offered chunks, manifest not seen yet)"""
        self._wanted: dict[ObjectId, list[tuple[_Job, int]]] = {}
        """chunk id -> (job, offset) of every staging still missing it"""
        self._cond = threading.Condition()
        self._closed = False
        self.handed_off = 0
        """chunks written from the replicator's plaintext (for tests and logs)"""
        self._thread = threading.Thread(target=self._run, name="pcloud-stager", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API
    def announce(self, blob_id: ObjectId, blob: Blob) -> None:
        """A verified manifest of a blob being fetched; stage it if it is big enough (cheap, never raises)."""
        if blob.size < self.min_size or not blob.chunks:
            return
        with self._cond:
            if self._closed or blob_id in self._jobs:
                return
            places: dict[int, tuple[ObjectId, int, int]] = {}
            offset = 0
            for ref in blob.chunks:
                places[offset] = (ref.id, offset, ref.size)
                offset += ref.size
            if self._adopt(blob_id, blob, places):
                return
            if self._filling() >= MAX_FILLING:
                log.debug("not staging blob %s: %d stagings under way", blob_id.hex()[:12], MAX_FILLING)
                return
            path = os.path.join(self.dir, blob_id.hex())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.info("staging blob %s not started: %s", blob_id.hex()[:12], exc)
                return
            job = _Job(blob_id, blob, path, fd, places, blob.size)
            self._jobs[blob_id] = job
            for off, (cid, _, _) in places.items():
                self._wanted.setdefault(cid, []).append((job, off))
            self._cond.notify_all()

    def expect(self, token: bytes, chunks: list[tuple[ObjectId, int, int]]) -> None:
        """Offered chunks (id, offset, size) of the file a peer reads under ``token`` are about to be fetched:
        write each where the hint says as it is stored (a provisional staging; see the module doc). Never raises.
        """
        with self._cond:
            if self._closed:
                return
            job = self._provisional.get(token)
            if job is None:
                if self._filling() >= MAX_FILLING:
                    return
                path = os.path.join(self.dir, "offered-" + token.hex())
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    log.info("provisional staging not started: %s", exc)
                    return
                job = _Job(b"", None, path, fd, {}, 0, hinted={})
                self._provisional[token] = job
                self._cond.notify_all()  # the stager thread now wakes to expire it if no manifest comes
            assert job.hinted is not None
            for cid, off, size in chunks:
                known = job.hinted.get(off)
                if known == (cid, size):
                    continue  # offered again (a resent offer)
                if known is not None or len(job.hinted) >= env.MAX_REFS:
                    self._abandon(job, f"the hints for offset {off} disagree")
                    return
                job.hinted[off] = (cid, size)
                job.missing[off] = (cid, off, size)
                job.size = max(job.size, off + size)
                self._wanted.setdefault(cid, []).append((job, off))
            job.progress = time.monotonic()

    def _filling(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state == "filling") + len(self._provisional)

    def _adopt(self, blob_id: ObjectId, blob: Blob, places: dict[int, tuple[ObjectId, int, int]]) -> bool:
        """Make the provisional staging that holds exactly this manifest's chunks the blob's (lock held)."""
        ids = {cid for cid, _, _ in places.values()}
        for token, job in list(self._provisional.items()):
            assert job.hinted is not None
            if not any(cid in ids for cid, _ in job.hinted.values()):
                continue  # another file's
            del self._provisional[token]
            if job.size > blob.size or any(places.get(off, (None, 0, 0))[::2] != hint
                                            for off, hint in job.hinted.items()):
                self._abandon(job, f"the offered chunks are not those of blob {blob_id.hex()[:12]}")
                return False
            hinted = job.hinted
            job.blob_id, job.blob, job.size, job.hinted = blob_id, blob, blob.size, None
            for off, want in places.items():
                if off not in hinted:  # hinted ones are written or still wanted already
                    job.missing[off] = want
                    self._wanted.setdefault(want[0], []).append((job, off))
            job.progress = time.monotonic()
            self._jobs[blob_id] = job
            self._cond.notify_all()
            log.info("staging of blob %s adopted %d offered chunks", blob_id.hex()[:12], len(hinted))
            return True
        return False

    def offer(self, oid: ObjectId, plain: bytes) -> None:
        """Verified plaintext of chunk ``oid`` was just stored: write it where a staging wants it. Never raises."""
        if oid not in self._wanted:  # unlocked peek: the common case (no staging wants it) costs a dict lookup
            return
        with self._cond:
            for job, offset in self._wanted.pop(oid, ()):
                self._fill(job, offset, plain)
                job.handed += 1
                self.handed_off += 1

    def take(self, blob_id: ObjectId, wait: float) -> str | None:
        """The finished staging file of ``blob_id`` (the caller now owns it), or None.

        Waits up to ``wait`` seconds for a staging still being filled.
        """
        with self._cond:
            job = self._jobs.get(blob_id)
            if job is None:
                return None
        job.done.wait(wait)
        with self._cond:
            if job.state != "done" or self._jobs.get(blob_id) is not job:
                return None
            del self._jobs[blob_id]
            return job.path

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(10)
        with self._cond:
            for job in [*self._jobs.values(), *self._provisional.values()]:
                if job.state == "filling":
                    self._abandon(job, "the node is stopping")
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ internals (lock held)
    def _fill(self, job: _Job, at: int, data: bytes) -> None:
        """Write the chunk at offset ``at`` of ``job`` (caller holds the lock, so the fd stays open meanwhile)."""
        want = job.missing.get(at)
        if job.state != "filling" or want is None:
            return
        _, offset, size = want
        if len(data) != size:
            self._abandon(job, f"the chunk at {at} is {len(data)} bytes, the {'hint' if job.blob is None else 'manifest'} "
                               f"says {size}")
            return
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(job.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            self._abandon(job, f"cannot write the staging file: {exc.strerror}")
            return
        del job.missing[at]
        job.progress = time.monotonic()
        job.since_step += size
        if job.since_step >= pagecache.WRITEBACK_STEP:
            self._step(job)
        if not job.missing and job.blob is not None:
            self._cond.notify_all()  # complete: the stager thread fsyncs it

    def _step(self, job: _Job) -> None:
        """Send the filled prefix to disk and drop the part already sent one step ago (lock held)."""
        job.since_step = 0
        filled = min(job.missing) if job.missing else job.size
        if job.writeback > job.dropped:
            pagecache.settle_and_drop(job.fd, [(job.dropped, job.writeback - job.dropped)])
            job.dropped = job.writeback
        pagecache.start_writeback(job.fd, job.writeback, filled - job.writeback)
        job.writeback = filled

    def _abandon(self, job: _Job, why: str) -> None:
        job.state, job.finished = "failed", time.monotonic()
        for cid, _, _ in job.missing.values():
            users = self._wanted.get(cid)
            if users is not None:
                users[:] = [(j, i) for j, i in users if j is not job]
                if not users:
                    del self._wanted[cid]
        job.missing.clear()
        for token, j in list(self._provisional.items()):
            if j is job:
                del self._provisional[token]
        _close(job)
        _unlink(job.path)
        job.done.set()
        log.info("staging %s abandoned: %s", f"blob {job.blob_id.hex()[:12]}" if job.blob else "of offered chunks", why)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        store = None
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    self._expire()
                    now = time.monotonic()
                    filling = [j for j in self._jobs.values() if j.state == "filling"]
                    complete = [j for j in filling if not j.missing]
                    probes = [(j, min(j.missing)) for j in filling if j.missing and now >= j.next_probe]
                    if not complete and not probes:
                        self._cond.wait(POLL if filling else self.idle_timeout if self._provisional else self.keep / 4)
                        continue
                for job in complete:
                    self._finish(job)
                if probes:
                    if store is None:
                        store = self._open_store()
                    for job, at in probes:
                        if not self._probe(store, job, at):
                            job.next_probe = time.monotonic() + PROBE_EVERY
        except (errors.PcloudError, OSError) as exc:
            # the stager's own store handle failed: every staging falls back to the store at apply time
            log.warning("stager stopped: %s", exc)
            with self._cond:
                for job in [*self._jobs.values(), *self._provisional.values()]:
                    if job.state == "filling":
                        self._abandon(job, str(exc))
        finally:
            if store is not None:
                store.close()

    def _probe(self, store: Any, job: _Job, at: int) -> bool:
        """Fill the chunk at offset ``at`` of ``job`` from the store if it is there; True if it was."""
        with self._cond:
            want = job.missing.get(at)
            if job.state != "filling" or want is None:
                return True  # filled meanwhile: progress
            cid = want[0]
            if time.monotonic() - job.progress > self.idle_timeout:
                self._abandon(job, f"chunk {cid.hex()[:12]} did not arrive within {self.idle_timeout:.0f} s")
                return True
        if not store.has(cid):
            return False
        try:
            data = store.get_chunk(cid)
        except errors.PcloudError as exc:
            with self._cond:
                if job.state == "filling":
                    self._abandon(job, f"cannot read chunk {cid.hex()[:12]}: {exc}")
            return True
        with self._cond:
            users = self._wanted.pop(cid, [])
            for j, i in users:
                self._fill(j, i, data)
        return True

    def _finish(self, job: _Job) -> None:
        t0 = time.perf_counter()
        try:
            os.fsync(job.fd)  # one fsync at the end: syncing as it goes competed with the store's own
        except OSError as exc:
            with self._cond:
                if job.state == "filling":
                    self._abandon(job, f"cannot fsync the staging file: {exc.strerror}")
            return
        with self._cond:
            if job.state != "filling":
                return
            pagecache.drop(job.fd, [(job.dropped, job.size - job.dropped)])  # durable: clean pages
            _close(job)
            job.state, job.finished = "done", time.monotonic()
            job.done.set()
        log.info("staged blob %s (%d MiB, %d of %d chunks handed over; fsync %.3f s)", job.blob_id.hex()[:12],
                 job.size >> 20, job.handed, len(job.blob.chunks) if job.blob else 0, time.perf_counter() - t0)

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self._provisional.values()):
            if now - job.progress > self.idle_timeout:
                self._abandon(job, f"no manifest took it within {self.idle_timeout:.0f} s")
        for bid, job in list(self._jobs.items()):
            if job.state in ("done", "failed") and now - job.finished > self.keep:
                del self._jobs[bid]
                _unlink(job.path)


class StagingStore:
    """The replicator's view of the store on a staging device: ``put_sealed`` also hands chunks to the stager.

    Satisfies `replication.stores.SealedObjectStore`; every other call goes to
    the store unchanged.
    """

    def __init__(self, store: Any, stager: Stager) -> None:
        self._store = store
        self._stager = stager

    def put_sealed(self, data: bytes) -> ObjectId:
        oid, obj = self._store.put_sealed_opened(data)
        if isinstance(obj, Chunk):
            self._stager.offer(oid, obj.data)
        return oid

    def has(self, oid: ObjectId) -> bool:
        return self._store.has(oid)

    def sealed_size(self, oid: ObjectId) -> int | None:
        return self._store.sealed_size(oid)

    def get_sealed(self, oid: ObjectId) -> bytes:
        return self._store.get_sealed(oid)

    def refs_of(self, oid: ObjectId) -> tuple[ObjectId, ...]:
        return self._store.refs_of(oid)

    def transaction(self) -> AbstractContextManager[Any]:
        return self._store.transaction()


def _close(job: _Job) -> None:
    if job.fd >= 0:
        try:
            os.close(job.fd)
        except OSError:
            pass  # already unusable; the file is discarded or complete
        job.fd = -1


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
