"""Watched folders: two-way sync between a local directory and a path of the vault.

    >>> import pcloud
    >>> from pcloud.folders import FolderSync
    >>> vault = pcloud.Vault.open("~/.local/share/pcloud/vault")
    >>> with FolderSync(vault, "~/Documents", "docs", on_event=print) as fs:
    ...     ...                     # local edits become commits, vault changes appear on disk
    >>> FolderSync(vault, "~/Photos", "photos").sync_once()   # one pass, no watcher

Theory of operation
-------------------
* What happens in a sync cycle (scan, commit, apply, conflict rules) is
  `pcloud.folders_engine.SyncEngine`; this module decides *when* cycles run.
* ``start()`` starts a watcher on the folder and one worker thread. On Linux
  the watcher is `pcloud.inotify.InotifyWatcher` (raw inotify: ~1-2 us per
  event, where watchdog's threads and event objects added ~0.4 s to applying
  1,000 remote files); elsewhere, or when inotify cannot start (e.g. EMFILE,
  too many inotify instances), a watchdog observer. ``PCLOUD_WATCHER=watchdog``
  forces watchdog (``inotify`` forces inotify; unset = choose).
  The worker is the only thread that touches the vault (a `Vault` is
  single-threaded): give a FolderSync its own `Vault` handle (``Vault.open``
  the same directory again, as the node does per folder), or do not use the
  same handle elsewhere while the syncer runs.
* The watcher only records which paths changed (created/modified/deleted/
  moved/closed-after-write; reads, directory mtime bumps and our own temp
  files are ignored) and wakes the worker. The worker waits until no event has arrived for
  ``debounce`` seconds (at most ``max_delay`` after the first one), then runs
  one cycle over those paths: a burst of changes becomes one commit.
* Remote changes: the worker polls the branch head every ``poll_interval``
  (one SQLite read), and `on_remote_change` wakes it at once (the node calls
  it when replication or Raft moves the head).
* Full rescans: on start (cheap: only files whose stat changed are read),
  when the watcher reports lost events (inotify queue overflow, out of
  watches, the root moved, a watcher failure), every ``rescan_interval``
  as a safety net, and when `.pcloudignore` changes.
* Echo: the syncer records the stat of every file it writes, so the watcher
  events its own writes cause find unchanged files and commit nothing.
* Failures never stop the worker: a path that cannot be read or written is
  reported (`SyncProblem`) and retried every ``retry_interval``; a failed
  cycle is logged and retried.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer

from . import errors
from .inotify import InotifyWatcher
from .folders_engine import PREHASH_MIN, Cancelled, SyncEngine
from .folders_events import Applied, Committed, ConflictKept, CycleResult, FolderEvent, SyncProblem
from .ignore import TEMP_SUFFIX
from .store import paths
from .store.objects import ObjectId
from .vault import Vault

if TYPE_CHECKING:
    from .folders_stage import Publisher, Stager

log = logging.getLogger("pcloud.folders")

_WATCHED_TYPES = frozenset({"created", "modified", "deleted", "moved", "closed"})

# The inotify mask: no open / close-without-write events. Every file our own scans hash and every
# remote file we write would otherwise cost the watcher threads two or more useless events each.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
    DirMovedEvent, FileClosedEvent]

_live: "weakref.WeakSet[FolderSync]" = weakref.WeakSet()


WATCHER_ENV = "PCLOUD_WATCHER"
"""Environment variable choosing the watcher: ``inotify``, ``watchdog``, or unset/empty (inotify on Linux)."""


class _OverflowSpotter(logging.Handler):
    """(watchdog fallback) watchdog reports an inotify overflow only as a log line; turn it into full rescans."""

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for fs in list(_live):
                fs.request_rescan()


_spotter = _OverflowSpotter(logging.WARNING)
logging.getLogger("watchdog.observers.inotify_c").addHandler(_spotter)
logging.getLogger("watchdog.observers.inotify").addHandler(_spotter)


class _Handler(FileSystemEventHandler):
    def __init__(self, owner: "FolderSync") -> None:
        self._owner = owner

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _WATCHED_TYPES:
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            return  # a directory's mtime moves with every file in it; the file events say which
        paths = [event.src_path]
        if event.event_type == "moved":
            paths.append(event.dest_path)
        self._owner._touched([os.fsdecode(p) for p in paths])
        if event.event_type == "closed" or (event.event_type == "moved" and not event.is_directory):
            self._owner._touched([os.fsdecode(paths[-1])], settled=True)


def parse_folder_spec(spec: str) -> tuple[str, str]:
    """``DIR[=VAULTPATH]`` (as in ``pcloud serve --folder``) to (local dir, normalised vault path).

    Without ``=VAULTPATH`` the folder mirrors the whole vault (``''``).
    Raises BadArgument for an empty DIR and BadPath for an invalid VAULTPATH.
    """
    local, sep, vpath = spec.partition("=")
    if not local:
        raise errors.BadArgument(f"--folder {spec!r}: give a local directory, as DIR or DIR=VAULTPATH")
    return os.path.expanduser(local), paths.normalize(vpath if sep else "")


class FolderSync:
    """Keep local directory ``local_dir`` and ``vault_path`` on ``branch`` of ``vault`` in sync, both ways.

    Parameters:
        vault: the vault handle this syncer uses, from its worker thread only (see module doc).
        local_dir: the folder on disk (created if missing).
        vault_path: the folder in the vault ('' = the whole vault).
        branch: the branch to follow and commit to (default: the vault's current branch, `main`).
        debounce: quiet time (s) after the last local event before committing.
        max_delay: longest wait (s) from the first event of a burst to its commit.
        poll_interval: how often (s) the branch head is polled for remote changes (a safety net: the node
            wakes the syncer through ``on_remote_change`` whenever it moves the head).
        retry_interval: how often (s) paths that failed are retried.
        rescan_interval: a full rescan at least this often (s), in case the watcher missed something.
        on_event: called with each `FolderEvent` (Committed, Applied, ConflictKept, SyncProblem)
            on the worker thread; keep it quick and do not use the vault in it.
        stager: a node's `Stager` (big incoming files are written while their chunks arrive).
        publisher: a node's chunk offer (`folders_stage.Publisher`): a big file's chunks are offered
            to peers while it is being hashed.

    Use as a context manager (``start``/``stop``), or call `sync_once` without starting.
    """

    def __init__(self, vault: Vault, local_dir: str | os.PathLike, vault_path: str = "", *,
                 branch: str | None = None, debounce: float = 0.15, max_delay: float = 1.0,
                 poll_interval: float = 0.25, retry_interval: float = 1.0, rescan_interval: float = 300.0,
                 on_event: Callable[[FolderEvent], None] | None = None, stager: "Stager | None" = None,
                 publisher: "Publisher | None" = None) -> None:
        if debounce < 0 or max_delay < debounce or poll_interval <= 0 or retry_interval <= 0:
            raise errors.BadArgument("debounce >= 0, max_delay >= debounce, poll/retry intervals > 0")
        self.vault = vault
        root = os.path.realpath(os.fspath(local_dir))
        os.makedirs(root, exist_ok=True)
        if not os.path.isdir(root):
            raise errors.BadArgument(f"{local_dir} is not a directory")
        self.root = root
        self.vault_path = paths.normalize(vault_path)  # BadPath now, not in the worker later
        self.branch = branch or vault.branch
        if vault.refs.get(self.branch) is None:
            raise errors.NotFound(f"no branch named {self.branch!r}")
        self.debounce = debounce
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.rescan_interval = rescan_interval
        self._on_event = on_event
        self._stager = stager
        self._publisher = publisher
        self._engine: SyncEngine | None = None
        self._cond = threading.Condition()
        self._dirty: set[str] = set()
        self._settled: set[str] = set()
        """Dirty files that look final: hashed while the debounce runs (`SyncEngine.prehash`)."""
        self._first_event = 0.0
        self._last_event = 0.0
        self._full = True
        self._remote_hint = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._inotify: InotifyWatcher | None = None
        self._cycles = 0
        self._in_cycle = False
        self._failures = 0
        self.last_result: CycleResult | None = None
        self.last_error: BaseException | None = None
        self.committed = 0
        """Commits made so far (for status displays)."""
        self.applied = 0
        """Paths written/removed on disk from the vault so far."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FolderSync":
        """Start watching and syncing in the background (a full rescan runs first); returns self."""
        if self._thread is not None:
            raise errors.UsageError("this FolderSync is already running")
        self._stop = False
        self._start_watcher()  # before the first scan, so nothing changed meanwhile goes unseen
        self._thread = threading.Thread(target=self._run, name=f"pcloud-folder:{os.path.basename(self.root)}",
                                        daemon=True)
        _live.add(self)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and syncing; a cycle in progress stops at its next safe point. Idempotent.

        Close the vault only after this returns.
        """
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._inotify is not None:
            self._inotify.stop(timeout)
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._engine is not None:
            self._engine.close()
        _live.discard(self)

    def __enter__(self) -> "FolderSync":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def summary(self) -> dict[str, object]:
        """What `pcloud status` and `pcloud folders` show of this folder (JSON-ready).

        ``pending``: paths the last cycle left for later (a remote file whose content has not arrived,
        a file still being written, a permission problem), None before the first cycle; ``error``:
        why the last cycle failed (it is retried), else None.
        """
        last = self.last_result
        return {"dir": self.root, "vault_path": self.vault_path, "committed": self.committed,
                "applied": self.applied, "scanned": last is not None, "watcher": self.watcher,
                "pending": last.pending if last is not None else None,
                "error": str(self.last_error) if self.last_error is not None else None}

    @property
    def watcher(self) -> str | None:
        """Which watcher runs: ``'inotify'``, ``'watchdog'``, or None when not started."""
        return "inotify" if self._inotify is not None else "watchdog" if self._observer is not None else None

    def _start_watcher(self) -> None:
        choice = os.environ.get(WATCHER_ENV, "").strip().lower()
        if choice not in ("", "inotify", "watchdog"):
            raise errors.BadArgument(f"{WATCHER_ENV}={choice!r}: use 'inotify', 'watchdog' or leave it unset")
        if choice == "inotify" or (not choice and sys.platform.startswith("linux")):
            watcher = InotifyWatcher(self.root, self._touched_rel, self.request_rescan, on_settled=self._settled_rel,
                                     walk_settle_min=PREHASH_MIN)
            try:
                self._inotify = watcher.start()
                return
            except errors.WatcherError as exc:
                if choice == "inotify":
                    raise
                log.warning("folder %s: %s; using watchdog instead", self.root, exc)
        observer = Observer()
        observer.schedule(_Handler(self), self.root, recursive=True, event_filter=_EVENT_FILTER)
        observer.start()
        self._observer = observer

    # --------------------------------------------------------------- requests
    def sync_once(self, timeout: float = 60.0) -> CycleResult:
        """Run one full cycle (scan everything, commit, apply) and return what it did.

        Without `start` it runs on the calling thread; while running, the worker
        runs it and this waits (TimeoutError after ``timeout`` seconds).
        Raises what the cycle raised (PcloudError, OSError) when run inline.
        """
        if self._thread is None:
            result = self._cycle(None)
            for _ in range(3):  # new ignore rules arrived from the vault: apply them now
                if self._engine is None or not self._engine.rerun:
                    break
                result = self._cycle(None)
            return result
        self.request_rescan()
        return self.wait_cycle(timeout)

    def wait_cycle(self, timeout: float = 10.0) -> CycleResult:
        """Wait for the next cycle to finish (requests one); returns its result."""
        with self._cond:
            target = self._cycles + (2 if self._in_cycle else 1)  # a cycle already running predates the request
            self._remote_hint = True
            self._cond.notify_all()
            end = time.monotonic() + timeout
            while self._cycles < target:
                left = end - time.monotonic()
                if left <= 0 or not self.running:
                    raise TimeoutError(f"no sync cycle of {self.root} finished within {timeout} s")
                self._cond.wait(left)
            assert self.last_result is not None or self.last_error is not None
            if self.last_result is None:
                raise TimeoutError(f"the sync cycle of {self.root} failed: {self.last_error}")
            return self.last_result

    def on_remote_change(self, head: ObjectId | str | None = None) -> None:
        """Tell the syncer the branch head moved (``head`` is informational); it syncs at once. Thread-safe."""
        with self._cond:
            self._remote_hint = True
            self._cond.notify_all()

    def request_rescan(self) -> None:
        """Make the next cycle a full rescan, now. Thread-safe."""
        with self._cond:
            self._full = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- internals
    def _emit(self, event: FolderEvent) -> None:
        if isinstance(event, Committed):
            self.committed += 1
        elif isinstance(event, Applied):
            self.applied += event.changes
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a broken UI callback must not stop the sync
                log.exception("folder %s: on_event callback failed for %r", self.root, event)

    def _touched(self, abs_paths: list[str], settled: bool = False) -> None:
        """(watchdog) absolute paths that changed (``settled``: closed after writing, or moved in)."""
        prefix = self.root + os.sep
        rels = []
        for p in abs_paths:
            if p == self.root:
                rels.append("")
            elif p.startswith(prefix):
                rel = p[len(prefix):]
                if rel.endswith(TEMP_SUFFIX):
                    continue  # our own temp files: never a change
                rels.append(rel.replace(os.sep, "/"))
        if settled:
            self._settled_rel(rels)
        else:
            self._touched_rel(rels)

    def _touched_rel(self, rels: list[str]) -> None:
        """Relative '/'-separated paths that changed ('' = the root); called from the watcher's thread."""
        if not rels:
            return
        now = time.monotonic()
        with self._cond:
            if not self._dirty:
                self._first_event = now
            self._last_event = now
            self._dirty.update(rels)
            self._settled.difference_update(rels)  # written again: no longer final (on_settled re-adds)
            if len(self._dirty) > 50_000:
                self._dirty.clear()
                self._full = True  # cheaper to rescan than to look at each path
            self._cond.notify_all()

    def _prehash(self, rels: list[str]) -> None:
        """Store finished files of a burst before its window closes (worker thread; see `SyncEngine.prehash`)."""
        assert self._engine is not None
        try:
            self._engine.prehash(rels)
        except Cancelled:
            return
        except (errors.PcloudError, OSError) as exc:  # e.g. a full disk: the cycle meets it again and reports it
            log.info("folder %s: storing finished files early failed: %s", self.root, exc)

    def _settled_rel(self, rels: list[str]) -> None:
        """Touched files that look final (closed after writing, renamed in); from the watcher's thread."""
        with self._cond:
            self._settled.update(r for r in rels if r in self._dirty)
            self._cond.notify_all()

    def _cycle(self, dirty: set[str] | None) -> CycleResult:
        if self._engine is None:
            self._engine = SyncEngine(self.vault, self.root, self.vault_path, self.branch, self._emit,
                                      cancelled=lambda: self._stop, stager=self._stager, publisher=self._publisher)
        if dirty is not None and "" in dirty:
            dirty = None
        return self._engine.cycle(dirty)

    def _run(self) -> None:
        last_head: ObjectId | None = None
        next_poll = 0.0
        next_retry = float("inf")
        next_rescan = time.monotonic() + self.rescan_interval
        hold_until = 0.0  # after a failed cycle: back off before trying again
        while True:
            early: list[str] = []
            with self._cond:
                while True:
                    if self._stop:
                        return
                    now = time.monotonic()
                    if now < hold_until and not (self._remote_hint or self._full):
                        # backing off after a failure; the head moving (e.g. quorum back) ends it early
                        self._cond.wait(hold_until - now)
                        continue
                    due_local = bool(self._dirty) and (now - self._last_event >= self.debounce
                                                       or now - self._first_event >= self.max_delay)
                    if self._full or due_local or self._remote_hint or now >= next_poll or now >= next_retry \
                            or now >= next_rescan:
                        break
                    if self._settled and self._engine is not None:
                        # the burst's window is still open: hash its finished big files meanwhile
                        early = sorted(self._settled)
                        self._settled.clear()
                        break
                    waits = [next_poll, next_retry, next_rescan]
                    if self._dirty:
                        waits.append(min(self._last_event + self.debounce, self._first_event + self.max_delay))
                    self._cond.wait(max(0.0, min(waits) - now))
                if not early:
                    full = self._full or now >= next_rescan
                    remote_hint = self._remote_hint
                    take_dirty = due_local or full
                    dirty = set(self._dirty) if take_dirty else set()
                    if take_dirty:
                        self._dirty.clear()
                        self._settled.clear()  # the cycle looks at them now
                    self._full = False
                    self._remote_hint = False
                    self._in_cycle = True
            if early:
                self._prehash(early)
                continue
            run = full or due_local or remote_hint or now >= next_retry
            try:
                if not run and now >= next_poll:
                    next_poll = now + self.poll_interval
                    head = self.vault.refs.get(self.branch)
                    run = head != last_head
                if not run:
                    continue
                result = self._cycle(None if full else dirty)
                self.last_result, self.last_error = result, None
                last_head = bytes.fromhex(result.head) if result.head else None
                self._failures = 0
                if full:
                    next_rescan = time.monotonic() + self.rescan_interval
                next_retry = time.monotonic() + self.retry_interval if result.pending else float("inf")
                if self._engine is not None and self._engine.rerun:
                    self.request_rescan()
            except Cancelled:
                log.info("folder %s: stopped in the middle of a cycle", self.root)
                return
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything a cycle throws
                self._failures += 1
                self.last_error = exc
                if isinstance(exc, (errors.PcloudError, OSError)):  # operational: one line, no traceback
                    log.warning("folder %s: sync cycle failed (attempt %d): %s; retrying", self.root,
                                self._failures, exc)
                else:
                    log.exception("folder %s: sync cycle failed (attempt %d); retrying", self.root, self._failures)
                self._emit(SyncProblem("", f"sync cycle failed: {exc}; retrying"))
                with self._cond:
                    self._dirty |= dirty
                hold_until = time.monotonic() + min(30.0, self.retry_interval * self._failures)
                if full:
                    next_rescan = hold_until  # redo the full scan once the back-off ends
                self.last_result = None
            finally:
                with self._cond:
                    self._in_cycle = False
                    if run:
                        self._cycles += 1
                    self._cond.notify_all()


__all__ = ["FolderSync", "parse_folder_spec", "FolderEvent", "Committed", "Applied", "ConflictKept", "SyncProblem",
           "CycleResult"]
