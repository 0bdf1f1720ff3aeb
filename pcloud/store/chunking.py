"""Content-defined chunking of byte streams (FastCDC, Cython implementation).

Boundaries depend only on the bytes near them, so inserting or deleting bytes
in a file changes only the chunk(s) around the edit; the rest keep their ids
and dedup.

Sizes: min 64 KiB, average 256 KiB, max 1 MiB.
* The bytes a small edit re-stores are about one chunk (the one holding the
  edit; FastCDC resynchronises at the next cut point). The chunk holding a
  random byte is size-biased (larger than the mean): over 30 random 1-byte
  inserts in 64 MiB, 512 KiB average chunks re-stored a median 552 KiB but a
  90th percentile of 1165 KiB; 256 KiB gives median 253 KiB, p90 546 KiB,
  max 825 KiB -- under the 1 MiB target every time.
* Per-chunk costs (an index row, a Python call, a 16-byte tag, a ~40-byte
  manifest entry) stay small at ~4000 chunks/GiB.
* Max 1 MiB keeps a sealed chunk far below the envelope's 8 MiB body limit,
  bounds memory per chunk in flight, and caps what one edit can re-store.

Streaming with bounded memory: we read windows of ``WINDOW`` bytes, cut every
chunk that has at least ``MAX_SIZE`` bytes after its start inside the buffer
(FastCDC looks at most ``MAX_SIZE`` bytes ahead, so those cuts are exactly the
cuts of the whole file), and carry the unfinished tail into the next window.
Memory is O(WINDOW + MAX_SIZE) whatever the file size. A file smaller than
MIN_SIZE is one chunk.

Large regular files (``chunk_file``): FastCDC's Cython loop holds the GIL and
is the slowest stage of a put (0.58 s/GiB here; the helper uses ~0.8 s CPU/GiB in all), so a helper process
(``_cdc.py``, which imports nothing of pcloud) computes the cut points of the
same file through its own descriptor and streams the lengths back, while this
process reads, hashes, seals and writes the bytes: the two cores work at once.
The cuts are identical to ``chunk_stream``'s (same code). If the file grows
meanwhile, the last cut is redone over the rest; if it shrinks, FileChanged.
The helper reads the file a second time (through the page cache, ~0.08 s
CPU/GiB here); the parent reads each byte once, with ``ring`` straight into
reused buffers (fresh bytes per chunk, sealed into fresh bytes again, were
part of the 3.4 -> 2.5 s CPU/GiB drop in ObjectStore.write_stream). (Passing the parent's bytes to the helper instead of
letting it read would cost a pipe or shared-memory copy of the same size.)
"""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from typing import BinaryIO, Iterator

from pcloud.store import _cdc
from pcloud.store._cdc import AVG_SIZE, MAX_SIZE, MIN_SIZE, WINDOW, _fastcdc, chunk_bytes, chunk_stream

PARALLEL_MIN = 32 << 20  # below this the helper's ~60 ms start-up is not worth it


class FileChanged(OSError):
    """The file shrank while it was being chunked; nothing consistent can be stored."""


def _helper_path(f: BinaryIO) -> str | None:
    """A path the helper can open to read the same file, or None to chunk in-process."""
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        pos = f.tell()
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None
    proc_path = f"/proc/{os.getpid()}/fd/{fd}"
    if not stat.S_ISREG(st.st_mode) or st.st_size - pos < PARALLEL_MIN or not os.path.exists(proc_path):
        return None
    return proc_path


def chunk_file(f: BinaryIO, ring: int = 0) -> Iterator[bytes | memoryview]:
    """Chunks of an open binary file or stream from its current position (same cuts as chunk_stream).

    Uses a helper process for the cut points when ``f`` is a large regular file.
    With ``ring`` > 0, those large-file chunks are read straight into ``ring + 1``
    reusable buffers and yielded as memoryviews: each byte is read once and no
    chunk is allocated, but a view is only valid while it is among the last
    ``ring`` chunks yielded (the caller must be done with it by then). With
    ``ring`` = 0 every chunk is its own bytes object.
    """
    path = _helper_path(f)
    proc = None
    if path is not None and sys.executable:
        try:
            proc = subprocess.Popen([sys.executable, "-I", _cdc.__file__, path, str(f.tell())],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            proc = None  # no interpreter to spawn (embedded, sandboxed): chunk in-process
    if proc is None:
        yield from chunk_stream(f)
        return
    yield from _chunk_with_helper(f, proc, ring)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise FileChanged(f"file shrank while being stored ({len(data)} of {n} bytes of a chunk)")
        data += more
    return data


def _read_into(f: BinaryIO, buf: bytearray, n: int) -> memoryview:
    """Fill ``buf[:n]`` from ``f`` (one kernel copy, no allocation); raises FileChanged if it ends first."""
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            raise FileChanged(f"file shrank while being stored ({got} of {n} bytes of a chunk)")
        got += k
    return view


def _chunk_with_helper(f: BinaryIO, proc: subprocess.Popen[bytes], ring: int = 0) -> Iterator[bytes | memoryview]:
    # ring + 1 buffers: chunk i is read before chunk i-1 is yielded (see below),
    # so the last `ring` yielded views stay intact.
    bufs = [bytearray(MAX_SIZE) for _ in range(ring + 1)] if ring > 0 and hasattr(f, "readinto") else []
    try:
        assert proc.stdout is not None
        last: bytes | memoryview | None = None
        i = 0
        while True:
            raw = proc.stdout.read(4)
            if not raw:
                break
            if len(raw) != 4:
                raise OSError("chunk helper died mid-record")
            n = int.from_bytes(raw, "big")
            if n > MAX_SIZE:
                raise OSError(f"chunk helper reported a {n}-byte chunk (max {MAX_SIZE})")
            chunk = _read_into(f, bufs[i % len(bufs)], n) if bufs else _read_exact(f, n)
            i += 1
            if last is not None:
                yield last
            last = chunk
        err = proc.stderr.read() if proc.stderr else b""
        if proc.wait() != 0:
            raise OSError(f"chunk helper failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        more = f.read(1)
        if not more:
            if last is not None:
                yield last
            return
        # The file grew after the helper hit its end: that last cut was only an
        # end-of-file cut, so chunk it again together with everything after it.
        yield from chunk_stream(_Prefixed(bytes(last or b"") + more, f))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class _Prefixed(io.RawIOBase):
    """Some bytes already read, then the rest of a stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[:len(data)] = data
        return len(data)


__all__ = ["chunk_file", "chunk_stream", "chunk_bytes", "FileChanged", "MIN_SIZE", "AVG_SIZE", "MAX_SIZE",
           "WINDOW", "PARALLEL_MIN", "_fastcdc"]
