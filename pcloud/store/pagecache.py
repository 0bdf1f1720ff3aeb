"""Keeping bulk writes out of the page cache: start disk writes early, forget pages once they are on disk.

A sync writes every byte of a big file several times on its way (the
sender's packs, the receiver's packs, the receiver's staged copy) and reads
most of them back rarely. Left cached, a 256 MiB sync parks ~0.75 GiB of
pages that push out what the user's programs were using, and each write
into never-used page cache is slow (on the 2-core VM of bench/RESULTS.md
~2 ms/MiB, against ~0.25 ms/MiB into recycled pages). So bulk writers:

* `start_writeback` a range as soon as a step of it is written (the final
  fsync then has little left to do), and
* `settle_and_drop` the range of the previous step (wait until it is on
  disk, then POSIX_FADV_DONTNEED), or `drop` ranges right after an fsync.

A file whose chunks are offered to peers while it is being stored (the
writer's ``publish``) is the exception: every full-replica peer reads each of
its envelopes back within a second or so, and pages dropped before that made
the writer read all 256 MiB of a bench file back from the disk (bench_sync:
"disk read 252 MiB" on A). Its pages are kept while it is written and
`drop_later` forgets them ``KEEP_OFFERED`` seconds after its transaction.

All of it is advice to the kernel: DONTNEED never discards dirty data, and
a platform without sync_file_range just skips the early writeback (the
fsync that makes data durable is always the caller's, never this module's).
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Iterable

WRITEBACK_STEP = 4 << 20
"""Bulk writers start the disk writing every this many bytes and drop what the previous step wrote.

4 MiB, not 32: a receiver commits every 16 MiB batch (one fsync each), which with 32 MiB steps had to write
the whole batch itself, and pages dropped sooner are recycled sooner. 256 MiB two-device sync (bench_sync,
5 alternating rounds): median 1.87 s against 1.89 s alone, 1.72 s against 1.78 s with chunk offers."""
KEEP_OFFERED = 20.0
"""Seconds the pages of an offered file stay cached after its transaction (its peers fetch it meanwhile)."""
_WRITE = 2
_WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on disk when it returns


def _load_sync_file_range() -> "ctypes._CFuncPtr | None":
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range  # CDLL calls release the GIL
    except (OSError, AttributeError):
        return None  # not Linux/glibc
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_fadvise = getattr(os, "posix_fadvise", None)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+length)`` to disk now, without waiting."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _WRITE)


def drop(fd: int, ranges: Iterable[tuple[int, int]]) -> None:
    """Forget the cached pages of ``(offset, length)`` ranges already on disk (clean pages only)."""
    if _fadvise is None:
        return
    for offset, length in ranges:
        try:
            _fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            return  # advisory only


def settle_and_drop(fd: int, ranges: list[tuple[int, int]]) -> None:
    """Wait until the span of ``ranges`` (sorted ``(offset, length)``) is on disk, then forget their pages.

    A no-op without sync_file_range (the caller's fsync is then the only write).
    """
    if _sync_file_range is None or not ranges:
        return
    first, (last, last_len) = ranges[0][0], ranges[-1]
    _sync_file_range(fd, first, last + last_len - first, _WAIT_ALL)
    drop(fd, ranges)


def drop_later(ranges: dict[Path, list[tuple[int, int]]], delay: float | None = None) -> threading.Timer | None:
    """Forget the cached pages of ``{file: [(offset, length), ...]}`` in ``delay`` (default ``KEEP_OFFERED``)
    seconds, on a daemon timer.

    The files are opened again then (a pack removed meanwhile is skipped); by
    that time the data is long durable, so every page is clean.
    """
    if _fadvise is None or not any(ranges.values()):
        return None
    timer = threading.Timer(KEEP_OFFERED if delay is None else delay, _drop_files, args=(ranges,))
    timer.daemon = True
    timer.name = "pcloud-drop-later"
    timer.start()
    return timer


def _drop_files(ranges: dict[Path, list[tuple[int, int]]]) -> None:
    for path, spans in ranges.items():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed (gc) or unreadable: nothing to forget
        try:
            drop(fd, spans)
        finally:
            os.close(fd)


__all__ = ["start_writeback", "drop", "settle_and_drop", "drop_later", "KEEP_OFFERED"]
