"""Staging big incoming files while their chunks are still being fetched, so a folder's write is a rename.

Without it a remote 256 MiB file reaches a watched folder in series: fetch
every chunk (each opened and verified as it is stored), move ``main``, then
read every chunk back, open it again and write the file. With it, the node
announces each big blob manifest as the fetcher verifies it (manifests arrive
before their chunks: the chunk ids come from them), and one stager thread
follows the store: as the chunks are committed it reads them (verified by the
store), in order, into a staging file, then fsyncs it. When the folder's cycle
wants that blob it takes the finished file and renames it into place
(`folders_apply.write_staged`), guarded exactly like any other write.

Measured (bench/RESULTS.md, 2026-11-22 04:1x): with both devices on one
busy 2-core machine this is about neutral (fetch + apply 2.2-2.4 s staged,
1.9-2.7 s not): the stager opens every chunk a second time, as the apply did,
and on saturated cores overlapping buys nothing. On two machines, or once the
store hands over the plaintext its own ``put_sealed`` check already opens,
the 0.5-0.6 s apply of 256 MiB disappears from the critical path.

Invariants:
* A staged file holds exactly the blob's bytes: the manifest was verified
  against its id by the fetcher, every chunk is read through the store's
  verified ``get_chunk`` and checked against the manifest's size, and a file
  is handed out only once every chunk is in it and it is fsynced.
* Staging never blocks or fails a sync: a chunk that does not arrive within
  ``idle_timeout``, a read error or a full disk abandons that staging (the
  folder then reads the blob from the store as before); it is logged.
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
from dataclasses import dataclass, field
from typing import Any, Callable

from . import errors
from .store.objects import Blob, ObjectId

log = logging.getLogger("pcloud.folders")

STAGE_MIN = 4 << 20
"""Blobs at least this big are staged (below it, reading from the store at apply time is as quick)."""
POLL = 0.01


@dataclass
class _Job:
    blob_id: ObjectId
    blob: Blob
    path: str
    state: str = "queued"  # queued -> writing -> done | failed
    finished: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class Stager:
    """One thread writing announced big blobs into ``directory`` as their chunks land in the store.

    ``open_store`` returns a store handle (ObjectStore with the vault key) for
    the stager thread's exclusive use. Thread-safe: ``announce`` from the
    event loop (the fetcher's verify callback), ``take`` from folder workers.
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
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pcloud-stager", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API
    def announce(self, blob_id: ObjectId, blob: Blob) -> None:
        """A verified manifest of a blob being fetched; stage it if it is big enough (cheap, never raises)."""
        if blob.size < self.min_size:
            return
        with self._cond:
            if self._closed or blob_id in self._jobs:
                return
            self._jobs[blob_id] = _Job(blob_id, blob, os.path.join(self.dir, blob_id.hex()))
            self._cond.notify_all()

    def take(self, blob_id: ObjectId, wait: float) -> str | None:
        """The finished staging file of ``blob_id`` (the caller now owns it), or None.

        Waits up to ``wait`` seconds for a staging in progress to finish; one
        not started yet is dropped (None at once).
        """
        with self._cond:
            job = self._jobs.get(blob_id)
            if job is None:
                return None
            if job.state == "queued":
                # not started (behind another blob): the caller reads the store at the same cost, now
                del self._jobs[blob_id]
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
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ worker
    def _next(self) -> _Job | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for bid, job in list(self._jobs.items()):
                    if job.state in ("done", "failed") and now - job.finished > self.keep:
                        del self._jobs[bid]
                        _unlink(job.path)
                for job in self._jobs.values():
                    if job.state == "queued":
                        job.state = "writing"
                        return job
                self._cond.wait(self.keep / 4)
        return None

    def _run(self) -> None:
        store = None
        try:
            while (job := self._next()) is not None:
                t0 = time.perf_counter()
                try:
                    if store is None:
                        store = self._open_store()
                    self._write(store, job)
                    state = "done"
                    log.info("staged blob %s (%d MiB) in %.3f s", job.blob_id.hex()[:12], job.blob.size >> 20,
                             time.perf_counter() - t0)
                except (errors.PcloudError, OSError, _Abandon) as exc:
                    state = "failed"
                    _unlink(job.path)
                    log.info("staging blob %s abandoned: %s", job.blob_id.hex()[:12], exc)
                with self._cond:
                    job.state, job.finished = state, time.monotonic()
                    job.done.set()
        finally:
            if store is not None:
                store.close()

    def _write(self, store: Any, job: _Job) -> None:
        fd = os.open(job.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for ref in job.blob.chunks:
                self._wait_for(store, ref.id)
                data = store.get_chunk(ref.id)
                if len(data) != ref.size:
                    raise errors.CorruptObject(ref.id.hex(), f"chunk is {len(data)} bytes, manifest says {ref.size}")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            # one fsync at the end: syncing every 64 MiB competed with the store's own fsyncs of the
            # same chunks and slowed the fetch (2.2-2.9 s instead of 1.4-2.1 s for 256 MiB, load 2-8)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _wait_for(self, store: Any, oid: ObjectId) -> None:
        last = time.monotonic()
        while not store.has(oid):
            if self._closed:
                raise _Abandon("the node is stopping")
            if time.monotonic() - last > self.idle_timeout:
                raise _Abandon(f"chunk {oid.hex()[:12]} did not arrive within {self.idle_timeout:.0f} s")
            time.sleep(POLL)


class _Abandon(Exception):
    """This staging stops (the chunk did not come, or the node stops); the folder reads the store instead."""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["Stager", "STAGE_MIN"]
