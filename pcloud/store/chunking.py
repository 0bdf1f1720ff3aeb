"""Content-defined chunking of byte streams (FastCDC, Cython implementation).

Boundaries depend only on the bytes near them, so inserting or deleting bytes
in a file changes only the chunk(s) around the edit; the rest keep their ids
and dedup.

Sizes: min 128 KiB, average 512 KiB, max 2 MiB.
* The bytes a small edit re-stores are about one chunk (the one holding the
  edit; FastCDC resynchronises at the next cut point). The chunk holding a
  random byte is size-biased (larger than the mean), so a 1 MiB average
  re-stores > 1 MiB per 1-byte edit; 512 KiB keeps it well under 1 MiB
  (bench/bench_store.py measures it on 256 MiB).
* Per-chunk costs (an index row, a Python call, a 16-byte tag, a manifest
  entry) stay negligible at ~2000 chunks/GiB; smaller chunks would double them.
* Max 2 MiB keeps a sealed chunk far below the envelope's 8 MiB body limit
  and bounds memory per chunk in flight.

Streaming with bounded memory: we read windows of ``WINDOW`` bytes, cut every
chunk that has at least ``MAX_SIZE`` bytes after its start inside the buffer
(FastCDC looks at most ``MAX_SIZE`` bytes ahead, so those cuts are exactly the
cuts of the whole file), and carry the unfinished tail into the next window.
Memory is O(WINDOW + MAX_SIZE) whatever the file size. A file smaller than
MIN_SIZE is one chunk.
"""
from __future__ import annotations

from typing import BinaryIO, Iterator

from fastcdc import fastcdc_cy

MIN_SIZE = 128 * 1024
AVG_SIZE = 512 * 1024
MAX_SIZE = 2 * 1024 * 1024
WINDOW = 16 * 1024 * 1024

# fastcdc falls back to a pure-Python chunker (~100x slower) if its extension
# failed to build; import the Cython function directly so that fails loudly.
_fastcdc = fastcdc_cy.fastcdc_cy


def _cuts(buf: memoryview, eof: bool) -> Iterator[tuple[int, int]]:
    """(offset, length) of chunks in ``buf`` that are final given ``eof``."""
    n = len(buf)
    for c in _fastcdc(buf, MIN_SIZE, AVG_SIZE, MAX_SIZE):
        if not eof and n - c.offset < MAX_SIZE:
            return  # this cut could move once more bytes arrive
        yield c.offset, c.length


def chunk_stream(f: BinaryIO, window: int = WINDOW) -> Iterator[bytes]:
    """Yield the content-defined chunks of a readable binary stream, in order.

    The concatenation of the chunks is exactly the stream's bytes; an empty
    stream yields nothing. Memory stays O(window + MAX_SIZE).
    """
    if window < MAX_SIZE:
        raise ValueError("window must be at least MAX_SIZE")
    cap = window + MAX_SIZE
    buf = bytearray(cap)
    filled = 0
    eof = False
    readinto = getattr(f, "readinto", None)
    while not eof:
        while filled < cap and not eof:
            if readinto is not None:  # read straight into the window: one copy fewer per byte
                try:
                    with memoryview(buf) as whole, whole[filled:] as free:
                        n = readinto(free)
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
        with memoryview(buf) as whole, whole[:filled] as mv:
            for off, length in _cuts(mv, eof):
                yield bytes(mv[off:off + length])
                consumed = off + length
        # carry the unfinished tail to the front of the window
        buf[:filled - consumed] = buf[consumed:filled]
        filled -= consumed


def chunk_bytes(data: bytes | memoryview) -> Iterator[bytes]:
    """Chunks of an in-memory buffer (same cuts as ``chunk_stream`` over it)."""
    mv = memoryview(data)
    if not len(mv):
        return
    for off, length in _cuts(mv, True):
        yield bytes(mv[off:off + length])


__all__ = ["chunk_stream", "chunk_bytes", "MIN_SIZE", "AVG_SIZE", "MAX_SIZE", "WINDOW"]
