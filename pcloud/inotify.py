"""A lean Linux inotify watcher for watched folders: which relative paths were touched, nothing more.

Why it exists
-------------
Writing 1,000 remote small files into a watched folder makes ~11,000 inotify
events. watchdog turns each into a Python event object and moves it through
three threads, queues and a DelayedQueue: that added ~0.4 s to a 0.33-0.41 s
apply (0.68-1.12 s with watchdog running, measured in-process). `FolderSync`
only needs the set of relative paths that changed, so this module reads the
kernel buffer itself, parses it with `struct`, drops our own temp files by a
bytes comparison and hands one list of paths per read to the caller.

Shape
-----
* Sans-I/O core: `parse_events` (bytes -> `RawEvent`s; a truncated or
  malformed buffer raises `errors.MalformedEvents`) and `WatchTree` (wd ->
  relative directory; a batch of events -> a `WatchOutcome`: touched paths,
  directories to watch, wds to drop, rescan or not). No system calls there.
* Glue: `InotifyWatcher` owns the inotify fd, one daemon thread and a
  self-pipe to stop it; it applies each outcome (add/remove watches), then
  calls ``on_touched`` once per read and ``on_rescan`` when asked to.

Invariants
----------
* Every change under the root leads to a touched path or a rescan:
  - a directory created or moved in is reported itself (the scanner walks it,
    so files made in it before its watch existed are seen) and is then walked
    to watch it and every directory below it, *before* ``on_touched`` runs;
  - a directory renamed inside the tree keeps its watches, with the paths of
    its whole subtree rewritten, and is walked again (a subdirectory created
    while the rename was in flight may have missed its watch);
  - a queue overflow, the root deleted or moved, an unmount, running out of
    watches (ENOSPC), or any failure in the thread asks for a rescan;
  - a root deleted, moved away or replaced loses every watch (a moved root
    would go on reporting its events under our paths); the thread looks for a
    directory at the root's path every ROOT_POLL s, watches it again and asks
    for a rescan.
* Our own temp files (names ending in `pcloud.ignore.TEMP_SUFFIX`) are never
  reported; the rename that places one is reported under its final name.
* A directory moved out of the tree is unwatched at once: inotify would keep
  following it, and its later events would carry paths that no longer exist.
* A rename whose MOVED_FROM and MOVED_TO land in two different reads is
  handled as "moved out" then "moved in": more work, same result.
* Directory MODIFY/ATTRIB are not reported (a directory's mtime moves with
  every file in it; the file events say which).

Limits
------
* Linux only (inotify). `FolderSync` falls back to watchdog elsewhere.
* One watch per directory, counted against /proc/sys/fs/inotify/max_user_watches;
  when it runs out a warning says so once and the folder relies on rescans.
* Paths are decoded with `os.fsdecode` (undecodable bytes become surrogates).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import errors
from .ignore import TEMP_SUFFIX

log = logging.getLogger("pcloud.inotify")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
"""The mask every directory is watched with: no open/access/close-without-write events (our own scans
read every file they hash, and each would cost an event)."""

_FILE_CHANGES = IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
_DIR_CHANGES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO  # not MODIFY/ATTRIB: see the module doc

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name
MAX_NAME = 4096
"""Longest name field accepted (NAME_MAX is 255; the kernel pads to a multiple of the header size)."""
MAX_BUFFER = 1 << 20
"""Largest buffer `parse_events` accepts (the watcher reads at most `READ_SIZE`)."""
READ_SIZE = 256 * 1024
COALESCE = 0.005
"""Seconds the reader waits after each read so events pile up: one wake-up and one callback per burst
instead of one per event while a writer is busy (the syncer debounces for far longer anyway)."""
_TEMP = os.fsencode(TEMP_SUFFIX)
SETTLE_AGE_NS = 500_000_000
"""A file found while walking a directory new to the tree counts as finished once unmodified for this long
(it arrived before its directory was watched, so no event of its own will say it was closed)."""
ROOT_POLL = 1.0
"""Seconds between looks for a watched root that was deleted or moved away, until it is back."""


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One `struct inotify_event` as the kernel wrote it."""

    wd: int
    """Watch descriptor (-1 for IN_Q_OVERFLOW)."""
    mask: int
    """IN_* bits."""
    cookie: int
    """Pairs an IN_MOVED_FROM with its IN_MOVED_TO (0 otherwise)."""
    name: bytes
    """Entry name inside the watched directory, NUL padding removed (b'' for events on the directory itself)."""


def parse_events(buf: bytes) -> list[RawEvent]:
    """Split one inotify read into events. Raises `errors.MalformedEvents` if ``buf`` is not whole events."""
    n = len(buf)
    if n > MAX_BUFFER:
        raise errors.MalformedEvents(f"inotify buffer of {n} bytes is over the {MAX_BUFFER}-byte limit")
    out: list[RawEvent] = []
    unpack = _HEADER.unpack_from
    hsize = _HEADER.size
    pos = 0
    while pos < n:
        if n - pos < hsize:
            raise errors.MalformedEvents(f"inotify buffer ends inside an event header at byte {pos} of {n}")
        wd, mask, cookie, length = unpack(buf, pos)
        pos += hsize
        if length > MAX_NAME:
            raise errors.MalformedEvents(f"inotify event at byte {pos - hsize} has a {length}-byte name field "
                                         f"(limit {MAX_NAME})")
        if length > n - pos:
            raise errors.MalformedEvents(f"inotify buffer ends inside an event name at byte {pos} of {n} "
                                         f"({length} bytes announced)")
        name = bytes(buf[pos:pos + length]).split(b"\0", 1)[0] if length else b""
        pos += length
        out.append(RawEvent(wd, mask, cookie, name))
    return out


@dataclass(frozen=True, slots=True)
class WatchOutcome:
    """What one batch of events means for the watcher's caller and for its watches."""

    touched: tuple[str, ...] = ()
    """Relative paths that changed ('/'-separated, '' = the root), each once, in first-seen order."""
    new_dirs: tuple[str, ...] = ()
    """Relative directories to watch, with everything below them (created, moved in, or renamed)."""
    drop_wds: tuple[int, ...] = ()
    """Watches to remove: directories moved out of the tree (already forgotten by the `WatchTree`)."""
    rescan: bool = False
    """Events were lost or the root itself changed: the caller must rescan everything."""
    settled: tuple[str, ...] = ()
    """Files among ``touched`` whose last event was IN_CLOSE_WRITE or IN_MOVED_TO: a writer closed them, or
    they were renamed in whole, so their content is probably final (a later event unsettles them again)."""


@dataclass(slots=True)
class _Batch:
    touched: dict[str, None] = field(default_factory=dict)
    settled: dict[str, None] = field(default_factory=dict)
    new_dirs: list[str] = field(default_factory=list)
    drop_wds: list[int] = field(default_factory=list)
    rescan: bool = False
    moved_from: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # cookie -> (old rel, its wds)


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _under(rel: str, prefix: str) -> bool:
    return rel == prefix or rel.startswith(prefix + "/")


class WatchTree:
    """The watched directories of one root (wd <-> relative path) and what a batch of events means.

    Sans-I/O: the glue tells it which watches exist (`add`), feeds it parsed events (`feed`) and
    applies the `WatchOutcome`. The root is the directory added with path ''.
    """

    def __init__(self) -> None:
        self._path: dict[int, str] = {}
        self._wd: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._path)

    def add(self, wd: int, rel: str) -> None:
        """Record that ``rel`` is watched as ``wd`` (the kernel returns the same wd for a known inode)."""
        old = self._path.get(wd)
        if old is not None and self._wd.get(old) == wd:
            del self._wd[old]
        prev = self._wd.get(rel)
        if prev is not None and prev != wd:
            del self._path[prev]  # a directory replaced by another at the same path: the old watch is stale
        self._path[wd] = rel
        self._wd[rel] = wd

    def find_path(self, wd: int) -> str | None:
        """The relative path of ``wd``, or None if it is not (or no longer) watched."""
        return self._path.get(wd)

    def wds(self) -> list[int]:
        """Every wd watched now."""
        return list(self._path)

    def find_wd(self, rel: str) -> int | None:
        """The wd watching ``rel``, or None."""
        return self._wd.get(rel)

    def forget(self, wd: int) -> None:
        """Drop ``wd`` (after IN_IGNORED, or when its directory left the tree)."""
        rel = self._path.pop(wd, None)
        if rel is not None and self._wd.get(rel) == wd:
            del self._wd[rel]

    def _subtree(self, rel: str) -> list[int]:
        return [wd for wd, p in self._path.items() if _under(p, rel)]

    def _rename(self, old: str, new: str, wds: list[int]) -> None:
        moved = [(wd, p) for wd in wds if (p := self._path.get(wd)) is not None and _under(p, old)]
        for wd, p in moved:
            if self._wd.get(p) == wd:
                del self._wd[p]
        for wd, p in moved:
            np = new + p[len(old):]
            prev = self._wd.get(np)
            if prev is not None and prev != wd:
                del self._path[prev]
            self._path[wd] = np
            self._wd[np] = wd

    def feed(self, events: list[RawEvent]) -> WatchOutcome:
        """Apply one read's events; an IN_MOVED_FROM directory unmatched by the batch's end has left the tree."""
        b = _Batch()
        for ev in events:
            self._one(ev, b)
        for _, wds in b.moved_from.values():
            for wd in wds:
                if wd in self._path:
                    self.forget(wd)
                    b.drop_wds.append(wd)
        return WatchOutcome(tuple(b.touched), tuple(dict.fromkeys(b.new_dirs)), tuple(b.drop_wds), b.rescan,
                            tuple(b.settled))

    def _one(self, ev: RawEvent, b: _Batch) -> None:
        mask = ev.mask
        if mask & IN_Q_OVERFLOW:
            b.rescan = True
            return
        base = self._path.get(ev.wd)
        if base is None:
            return  # a watch we already dropped: its events describe paths outside the tree
        if mask & IN_IGNORED:
            self.forget(ev.wd)
            if base == "":
                b.rescan = True  # the root's watch is gone (root deleted, unmounted)
            return
        if mask & IN_UNMOUNT:
            b.rescan = True
            return
        if not ev.name:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base == "":
                b.rescan = True
            return  # other events on a directory itself are reported by its parent, with a name
        if ev.name.endswith(_TEMP):
            return
        rel = _join(base, os.fsdecode(ev.name))
        if not mask & IN_ISDIR:
            if mask & _FILE_CHANGES:
                b.touched[rel] = None
                if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    b.settled[rel] = None
                elif not mask & IN_ATTRIB:  # a chmod or touch after the close leaves the content final
                    b.settled.pop(rel, None)
            return
        if not mask & _DIR_CHANGES:
            return
        b.touched[rel] = None
        if mask & IN_CREATE:
            b.new_dirs.append(rel)
        elif mask & IN_MOVED_FROM:
            # Directories still to be watched below it go: if it comes back (renamed) it is walked whole.
            b.new_dirs[:] = [d for d in b.new_dirs if not _under(d, rel)]
            b.moved_from[ev.cookie] = (rel, self._subtree(rel))
        elif mask & IN_MOVED_TO:
            src = b.moved_from.pop(ev.cookie, None)
            if src is not None:
                self._rename(src[0], rel, src[1])
            b.new_dirs.append(rel)  # moved in, or renamed: walked (again: a subdirectory may have missed its watch)
        # IN_DELETE: the directory's own watch ends with IN_IGNORED


class _Libc:
    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = lib.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = lib.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = lib.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        try:
            _libc = _Libc()
        except (OSError, AttributeError) as exc:
            raise errors.WatcherError(f"inotify is not available here: {exc}") from exc
    return _libc


class InotifyWatcher:
    """Watch ``root`` and everything below it; report touched relative paths, or ask for a rescan.

    ``on_touched(rels)`` is called once per kernel read with the paths that changed ('/'-separated,
    '' = the root), then ``on_settled(rels)`` (if given) with those of them that look final (see
    `WatchOutcome.settled`, and ``walk_settle_min``); ``on_rescan()`` when events were lost. All run
    on the watcher's thread: keep them quick and thread-safe. `start` raises `errors.WatcherError`
    if inotify cannot be used (not Linux, or too many inotify instances: EMFILE), so the caller can
    fall back.
    """

    def __init__(self, root: str | os.PathLike[str], on_touched: Callable[[list[str]], None],
                 on_rescan: Callable[[], None], *, coalesce: float = COALESCE,
                 on_settled: Callable[[list[str]], None] | None = None, walk_settle_min: int | None = None) -> None:
        self.root = os.fspath(root)
        self.coalesce = coalesce
        self._on_touched = on_touched
        self._on_settled = on_settled
        self._walk_settle_min = walk_settle_min
        """Files of at least this many bytes found in a directory new to the tree (created or moved in) are
        reported touched and settled if unmodified for SETTLE_AGE_NS (None: not reported; their directory is)."""
        self._on_rescan = on_rescan
        self._tree = WatchTree()
        self._fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._warned_full = False
        self._root_id: tuple[int, int] | None = None
        """(device, inode) of the root directory being watched; None while the root is gone"""
        self.batches = 0
        """Kernel reads handled so far (for tests and benchmarks)."""

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "InotifyWatcher":
        """Watch the whole tree (done before this returns) and start the reader thread; returns self."""
        if self._thread is not None:
            raise errors.UsageError("this InotifyWatcher is already running")
        libc = _get_libc()
        fd = libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise errors.WatcherError(f"inotify_init1 failed: {os.strerror(err)}"
                                      + (" (too many inotify instances: /proc/sys/fs/inotify/max_user_instances)"
                                         if err == errno.EMFILE else ""))
        self._fd = fd
        self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._tree = WatchTree()
        self._root_id = self._current_root_id()
        if self._root_id is None or self._add_tree("") is None:
            self._close_fds()
            raise errors.WatcherError(f"cannot watch {self.root}: it vanished or is not a directory")
        self._thread = threading.Thread(target=self._run, name=f"pcloud-inotify:{os.path.basename(self.root)}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reader thread and close the inotify fd (all watches go with it). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None and self._pipe is not None:
            try:
                os.write(self._pipe[1], b"x")
            except BlockingIOError:
                pass  # the pipe already holds a stop byte
            thread.join(timeout)
            if thread.is_alive():
                log.warning("inotify watcher of %s did not stop within %s s", self.root, timeout)
                return  # leave the fds to the thread rather than close them under it
        self._close_fds()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def watched(self) -> int:
        """How many directories are watched now."""
        return len(self._tree)

    # ------------------------------------------------------------------ watches
    def _close_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._pipe is not None:
            for p in self._pipe:
                os.close(p)
            self._pipe = None

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _add_one(self, rel: str) -> int | None:
        wd = _get_libc().add_watch(self._fd, os.fsencode(self._abs(rel)), WATCH_MASK)
        if wd >= 0:
            self._tree.add(wd, rel)
            return wd
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return None  # it vanished or was replaced meanwhile: its parent's events say so
        if err == errno.ENOSPC:
            if not self._warned_full:
                self._warned_full = True
                log.warning("folder %s: out of inotify watches (raise /proc/sys/fs/inotify/max_user_watches); "
                            "changes below %r are found by periodic rescans only", self.root, rel or ".")
            self._on_rescan()
            return None
        log.warning("folder %s: cannot watch %r: %s; relying on rescans for it", self.root, rel or ".",
                    os.strerror(err))
        self._on_rescan()
        return None

    def _add_tree(self, top: str, found: list[str] | None = None) -> int | None:
        """Watch ``top`` and every directory below it (symlinks not followed); the wd of ``top`` or None.

        ``found``: collects the finished files of at least ``walk_settle_min`` bytes seen on the way.
        """
        first = self._add_one(top)
        if first is None:
            return None
        stack = [top]
        now = time.time_ns()  # mtimes are wall-clock times
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(self._abs(rel)) as it:
                    subdirs = []
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(_join(rel, e.name))
                        elif (found is not None and e.is_file(follow_symlinks=False)
                              and not e.name.endswith(TEMP_SUFFIX) and self._finished(e, now)):
                            found.append(_join(rel, e.name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("folder %s: cannot list %r to watch it: %s", self.root, rel or ".", exc.strerror)
                continue
            for sub in subdirs:
                if self._add_one(sub) is not None:
                    stack.append(sub)
        return first

    def _finished(self, entry: os.DirEntry[str], now_ns: int) -> bool:
        """A file met in a walk: big enough to report, and unmodified for SETTLE_AGE_NS?"""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return False  # gone meanwhile: its directory's events or the scan say so
        return st.st_size >= (self._walk_settle_min or 0) and now_ns - st.st_mtime_ns >= SETTLE_AGE_NS

    def _current_root_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def _lose_root(self) -> None:
        """The root was deleted, moved away or replaced: drop every watch (a moved root would still report
        events, under paths that are no longer ours) until a directory is at the root's path again."""
        libc = _get_libc()
        for wd in self._tree.wds():
            libc.rm_watch(self._fd, wd)
        self._tree = WatchTree()
        self._root_id = None
        log.warning("folder %s: the folder itself was deleted, moved or replaced; watching for it to come back",
                    self.root)

    def _rewatch_root(self) -> None:
        root_id = self._current_root_id()
        if root_id is None:
            return
        self._root_id = root_id
        if self._add_tree("") is None:
            self._root_id = None  # gone again meanwhile
            return
        log.info("folder %s: the folder is back; watching it again", self.root)
        self._on_rescan()

    # ------------------------------------------------------------------- thread
    def _run(self) -> None:
        assert self._pipe is not None
        fd, stop_r = self._fd, self._pipe[0]
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(stop_r, select.POLLIN)
        while True:
            try:
                # while the root is gone, look for it again every ROOT_POLL seconds
                ready = {f for f, _ in poller.poll(None if self._root_id is not None else ROOT_POLL * 1000)}
                if stop_r in ready:
                    return
                if self._root_id is None:
                    self._rewatch_root()
                if fd not in ready:
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                self._handle(data)
                if self.coalesce > 0 and len(data) < READ_SIZE // 2 and self._wait_stop(stop_r, self.coalesce):
                    return
            except Exception:  # noqa: BLE001 - the watcher must survive anything; a rescan covers the loss
                log.exception("folder %s: the inotify watcher failed; rescanning", self.root)
                self._rescan_safely()
                if self._wait_stop(stop_r, 1.0):  # do not spin on a persistent failure
                    return

    @staticmethod
    def _wait_stop(stop_r: int, timeout: float) -> bool:
        return bool(select.select([stop_r], [], [], timeout)[0])

    def _rescan_safely(self) -> None:
        try:
            self._on_rescan()
        except Exception:  # noqa: BLE001 - a broken callback must not end the watcher
            log.exception("folder %s: on_rescan failed", self.root)

    def _handle(self, data: bytes) -> None:
        self.batches += 1
        outcome = self._tree.feed(parse_events(data))
        libc = _get_libc()
        for wd in outcome.drop_wds:
            libc.rm_watch(self._fd, wd)  # EINVAL if the kernel dropped it already: nothing to do
        found: list[str] | None = [] if self._walk_settle_min is not None else None
        for rel in outcome.new_dirs:
            self._add_tree(rel, found)
        if outcome.rescan:
            if self._current_root_id() != self._root_id:
                self._lose_root()
            self._on_rescan()
        touched, settled = list(outcome.touched), list(outcome.settled)
        if found:
            touched += found
            settled += found
        if touched:
            self._on_touched(touched)
        if settled and self._on_settled is not None:
            self._on_settled(settled)


__all__ = ["InotifyWatcher", "WatchTree", "WatchOutcome", "RawEvent", "parse_events", "WATCH_MASK"]
