"""FastCDC cut points over streams: the chunker core, importable without the pcloud package.

It imports only the standard library and fastcdc's Cython extension, so it
also runs as a small helper process (``python -I _cdc.py FILE OFFSET``) that
prints the chunk lengths of a file while the parent hashes and seals the
bytes (see chunking.chunk_file). Sizes and the windowing are explained in
pcloud.store.chunking.
"""
from __future__ import annotations

import sys
from typing import BinaryIO, Iterator

from fastcdc import fastcdc_cy

MIN_SIZE = 64 * 1024
AVG_SIZE = 256 * 1024
MAX_SIZE = 1024 * 1024
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
    for mv, off, length in _scan(f, window):
        yield bytes(mv[off:off + length])


def cut_lengths(f: BinaryIO, window: int = WINDOW) -> Iterator[int]:
    """The lengths of ``chunk_stream(f)``'s chunks, without copying any chunk.

    The helper process needs only the lengths; copying each chunk out of the
    window just to measure it cost ~0.1 s of its ~0.9 s CPU per GiB.
    """
    for _, _, length in _scan(f, window):
        yield length


def _scan(f: BinaryIO, window: int) -> Iterator[tuple[memoryview, int, int]]:
    """(window view, offset, length) of each chunk; the view is valid only until the next item."""
    if window < MAX_SIZE:
        raise ValueError("window must be at least MAX_SIZE")
    cap = window + MAX_SIZE
    # Start small and grow to `cap`: most files are far smaller than a window,
    # and zeroing 17 MiB per small file would dominate putting 10k of them.
    buf = bytearray(64 * 1024)
    filled = 0
    eof = False
    readinto = getattr(f, "readinto", None)
    while not eof:
        while filled < cap and not eof:
            if filled == len(buf):
                buf += bytes(min(cap, 4 * len(buf)) - len(buf))
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
                yield mv, off, length
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


def cut_lengths_main(argv: list[str]) -> int:
    """Helper-process entry: write the chunk lengths of FILE from OFFSET to stdout (u32 BE each)."""
    path, offset = argv[0], int(argv[1])
    out = sys.stdout.buffer
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        batch = bytearray()
        for length in cut_lengths(f):
            batch += length.to_bytes(4, "big")
            if len(batch) >= 256:
                out.write(batch)
                out.flush()
                batch.clear()
        out.write(batch)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(cut_lengths_main(sys.argv[1:]))
