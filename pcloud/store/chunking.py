"""Content-defined chunking of byte streams (FastCDC 2020, via pyfastcdc's Cython core).

Boundaries depend only on the bytes near them, so inserting or deleting bytes
in a file changes only the chunk(s) around the edit; the rest keep their ids
and dedup.

Sizes: min 64 KiB, max 1 MiB, mean ~240 KiB (FastCDC's ``avg_size`` 192 KiB
plus the skipped minimum; normalised chunking level 2 keeps sizes tight: on
random data p10 168 KiB, p90 336 KiB, largest 727 KiB). A stream of at least
BIG_FILE (64 MiB) bytes, when its length is known up front (a regular file,
anything seekable, an in-memory buffer), is cut with ``avg_size`` 448 KiB
instead (mean ~480 KiB, same min and max), as Syncthing picks bigger blocks
for bigger files: per-chunk work (an index row, a manifest entry, a request,
Python calls on both devices) was ~20% of a 256 MiB sync's CPU, and halving
the chunk count cut it by ~10% (bench_sync --big-only, 2 x 2 rounds each,
alternating: 0.85-1.11 s, mean 0.97, against 1.00-1.12 s, mean 1.06; receiver
CPU 0.64-0.87 s against 0.78-0.88 s). The cost: an edit re-stores ~480 KiB of
such a file instead of ~240 KiB, and a file growing past 64 MiB is cut anew
once (its old chunks no longer dedup). A pipe of unknown length is always cut
with the small mean.
* The bytes a small edit re-stores are about one chunk (the one holding the
  edit; FastCDC resynchronises at the next cut point), and with level-2
  normalisation no chunk is much bigger than the mean.
* Per-chunk costs (an index row, a Python call, a 16-byte tag, a ~40-byte
  manifest entry) stay small at ~4300 chunks/GiB.
* Max 1 MiB keeps a sealed chunk far below the envelope's 8 MiB body limit,
  bounds memory per chunk in flight, and caps what one edit can re-store.

Why pyfastcdc: its gear loop runs without the GIL and cuts 256 MiB in ~0.08 s
here, against ~0.15 s with the GIL held for fastcdc-py's Cython loop. That one
needed a helper process (a second read of the file, ~80 ms of interpreter
start-up before the first cut, ~0.33 s CPU per 256 MiB in all) to keep the
hashing thread's core free; now the calling thread cuts each window in place
while the sealer threads run.

Streaming with bounded memory: we read windows, cut every chunk that has at
least ``MAX_SIZE`` bytes after its start inside the buffer (FastCDC looks at
most ``MAX_SIZE`` bytes ahead, so those cuts are exactly the cuts of the whole
stream), and carry the unfinished tail (< MAX_SIZE) into the next window.
Memory is O(window + MAX_SIZE) whatever the size. A stream smaller than
MIN_SIZE is one chunk.
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO, Iterator

from pyfastcdc import FastCDC

MIN_SIZE = 64 * 1024
AVG_SIZE = 192 * 1024
"""FastCDC's ``avg_size`` parameter; the mean chunk is about AVG_SIZE + MIN_SIZE / 2 (cut-point skipping)."""
AVG_SIZE_BIG = 448 * 1024
"""``avg_size`` for streams of at least BIG_FILE bytes (mean ~480 KiB)."""
BIG_FILE = 64 << 20
MAX_SIZE = 1024 * 1024
NORMALIZATION = 2
WINDOW = 16 * 1024 * 1024
RING_MIN = 4 << 20
"""``chunk_file`` reads regular files at least this big into reused buffers (smaller ones: one bytes per chunk)."""


class FileChanged(OSError):
    """The file shrank while it was being chunked; nothing consistent can be stored."""


def _chunker(avg: int = AVG_SIZE) -> FastCDC:
    return FastCDC(avg, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=NORMALIZATION)


def avg_for(length: int | None) -> int:
    """The ``avg_size`` for a stream of ``length`` bytes (None: unknown)."""
    return AVG_SIZE_BIG if length is not None and length >= BIG_FILE else AVG_SIZE


def _cuts(cdc: FastCDC, buf: memoryview, eof: bool) -> Iterator[tuple[int, int]]:
    """(offset, length) of chunks in ``buf`` that are final given ``eof``."""
    n = len(buf)
    for c in cdc.cut_buf(buf):
        if not eof and n - c.offset < MAX_SIZE:
            return  # this cut could move once more bytes arrive
        yield c.offset, c.length


def _scan(f: BinaryIO, window: int, nbufs: int = 1, avg: int = AVG_SIZE) -> Iterator[tuple[memoryview, int, int]]:
    """(buffer view, offset, length) of each chunk, reading ``f`` into ``nbufs`` rotating buffers.

    A view stays valid until its buffer is refilled: with one buffer, until the
    next item; with ``nbufs`` > 1, for every chunk of the next ``nbufs - 1``
    windows too.
    """
    if window < MAX_SIZE:
        raise ValueError("window must be at least MAX_SIZE")
    cap = window + MAX_SIZE
    cdc = _chunker(avg)
    readinto = getattr(f, "readinto", None)
    # Start small and grow to `cap`: most streams are far smaller than a window,
    # and zeroing 17 MiB per small file would dominate putting 10k of them.
    bufs = [bytearray(64 * 1024 if nbufs == 1 else cap) for _ in range(nbufs)]
    current = 0
    buf = bufs[0]
    filled = 0
    eof = False
    while not eof:
        while filled < cap and not eof:
            if filled == len(buf):
                buf += bytes(min(cap, 4 * len(buf)) - len(buf))
            if readinto is not None:  # read straight into the window: one copy fewer per byte
                try:
                    n = readinto(memoryview(buf)[filled:])
                except NotImplementedError:  # a RawIOBase that only implements read()
                    readinto = None
                    continue
            else:
                data = f.read(cap - filled)
                n = len(data)
                buf[filled:filled + n] = data
            if not n:
                eof = True
            filled += n or 0
        if not filled:
            return
        consumed = 0
        mv = memoryview(buf)[:filled]
        for off, length in _cuts(cdc, mv, eof):
            yield mv, off, length
            consumed = off + length
        tail = filled - consumed
        if nbufs > 1:
            current = (current + 1) % nbufs
            nxt = bufs[current]
            nxt[:tail] = mv[consumed:filled]  # carry the unfinished tail into the next buffer
            buf = nxt
        else:
            buf[:tail] = buf[consumed:filled]  # carry the unfinished tail to the front of the window
        del mv
        filled = tail


def chunk_stream(f: BinaryIO, window: int = WINDOW, avg: int | None = None) -> Iterator[bytes]:
    """Yield the content-defined chunks of a readable binary stream, in order.

    The concatenation of the chunks is exactly the stream's bytes; an empty
    stream yields nothing. Memory stays O(window + MAX_SIZE). ``avg``: the
    FastCDC mean (default: by the stream's length when it can be known, see
    ``avg_for``).
    """
    for mv, off, length in _scan(f, window, avg=avg_for(_remaining(f)) if avg is None else avg):
        yield bytes(mv[off:off + length])


def chunk_bytes(data: bytes | memoryview) -> Iterator[bytes]:
    """Chunks of an in-memory buffer (same cuts as ``chunk_stream`` over it)."""
    mv = memoryview(data)
    if not len(mv):
        return
    for off, length in _cuts(_chunker(avg_for(mv.nbytes)), mv, True):
        yield bytes(mv[off:off + length])


def chunk_file(f: BinaryIO, ring: int = 0) -> Iterator[bytes | memoryview]:
    """Chunks of an open binary file or stream from its current position (same cuts as chunk_stream).

    With ``ring`` > 0, a regular file of at least RING_MIN bytes is read into
    three reused windows and its chunks are yielded as memoryviews into them:
    each byte is read once and no chunk is allocated, but a view is only valid
    while it is among the last ``ring`` chunks yielded (the caller must be done
    with it by then). Otherwise every chunk is its own bytes object.

    Raises FileChanged if the file turns out shorter than what was read (it
    was truncated meanwhile); bytes appended meanwhile are simply included.
    """
    avg = avg_for(_remaining(f))  # decided once, from the length at the start
    fd = _regular_fd(f)
    if fd is None:
        yield from chunk_stream(f, avg=avg)
        return
    if ring > 0 and hasattr(f, "readinto"):
        # A view of window i stays valid through windows i+1 and i+2 (three buffers), which hold at
        # least (window - MAX_SIZE) / MAX_SIZE chunks each: more than `ring`.
        window = max(RING_MIN, (ring + 2) * MAX_SIZE)
        for mv, off, length in _scan(f, window, nbufs=3, avg=avg):
            yield mv[off:off + length]
    else:
        yield from chunk_stream(f, avg=avg)
    end, size = f.tell(), os.fstat(fd).st_size
    if size < end:
        raise FileChanged(f"file shrank while being stored (read up to byte {end}, it now has {size})")


def _remaining(f: BinaryIO) -> int | None:
    """Bytes from ``f``'s position to its end, if it can say without being read (else None)."""
    try:
        if not f.seekable():
            return None
        pos = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
    except (AttributeError, OSError, ValueError):
        return None
    return end - pos


def _regular_fd(f: BinaryIO) -> int | None:
    """``f``'s descriptor if it is a regular file with at least RING_MIN bytes left, else None."""
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        pos = f.tell()
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size - pos < RING_MIN:
        return None
    return fd


__all__ = ["chunk_file", "chunk_stream", "chunk_bytes", "avg_for", "FileChanged", "MIN_SIZE", "AVG_SIZE",
           "AVG_SIZE_BIG", "BIG_FILE", "MAX_SIZE", "WINDOW", "RING_MIN"]
