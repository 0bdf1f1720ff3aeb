"""Content-defined chunking: exact cover, stream == whole-buffer cuts, locality of edits."""
from __future__ import annotations

import io
import os

import blake3
import pytest
from hypothesis import given, settings, strategies as st

from pcloud.store import chunking
from pcloud.store.chunking import MAX_SIZE, MIN_SIZE, chunk_bytes, chunk_stream


def _data(n: int, seed: bytes = b"seed") -> bytes:
    return blake3.blake3(seed).digest(n)  # fast deterministic pseudo-random bytes


class Dribble(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._b = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._b.read(min(self._step, n if n >= 0 else self._step))


def test_uses_cython_chunker():
    # pyfastcdc falls back to pure Python (~100x slower) when its extension is missing: that must not pass quietly
    assert type(chunking._chunker()).__module__ == "pyfastcdc.cy.fastcdc"


def test_empty_and_small():
    assert list(chunk_stream(io.BytesIO(b""))) == []
    assert list(chunk_stream(io.BytesIO(b"x"))) == [b"x"]
    small = _data(MIN_SIZE - 1)
    assert list(chunk_stream(io.BytesIO(small))) == [small]


def test_stream_matches_whole_buffer_and_bounds():
    data = _data(40 << 20)
    whole = list(chunk_bytes(data))
    streamed = list(chunk_stream(io.BytesIO(data), window=MAX_SIZE))
    assert streamed == whole
    assert b"".join(streamed) == data
    assert all(len(c) <= MAX_SIZE for c in whole)
    assert all(len(c) >= MIN_SIZE for c in whole[:-1])


def test_short_reads_give_same_cuts():
    data = _data(9 << 20, b"pipe")
    assert list(chunk_stream(Dribble(data, 77_777), window=MAX_SIZE)) == list(chunk_bytes(data))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 6 << 20), st.integers(0, 2**32))
def test_cover_is_exact_for_any_size(n, seed):
    data = _data(n, seed.to_bytes(8, "big"))
    chunks = list(chunk_stream(io.BytesIO(data), window=MAX_SIZE))
    assert b"".join(chunks) == data


def test_window_smaller_than_max_refused():
    with pytest.raises(ValueError):
        list(chunk_stream(io.BytesIO(b"x"), window=MAX_SIZE - 1))


def test_insert_in_middle_of_64mib_changes_under_1mib():
    data = _data(64 << 20, b"edit")
    mid = len(data) // 2 + 12345
    edited = data[:mid] + b"!" + data[mid:]
    before = {blake3.blake3(c).digest() for c in chunk_bytes(data)}
    new = [c for c in chunk_bytes(edited) if blake3.blake3(c).digest() not in before]
    assert 0 < sum(map(len, new)) < 1 << 20


@pytest.mark.parametrize("ring", [0, 3])
def test_chunk_file_matches_stream(tmp_path, ring):
    from pcloud.store.chunking import RING_MIN, chunk_file
    data = _data(4 * RING_MIN + (5 << 20), b"file")
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    with open(p, "rb") as f:
        f.seek(1000)  # from the current position, like any reader
        assert [bytes(c) for c in chunk_file(f, ring)] == list(chunk_bytes(data[1000:]))
    with open(p, "rb") as f:  # a small remainder takes the in-process path
        f.seek(len(data) - 300_000)
        assert b"".join(chunk_file(f)) == data[-300_000:]


@pytest.mark.parametrize("ring", [0, 3])
def test_chunk_file_growing_and_shrinking(tmp_path, ring):
    from pcloud.store.chunking import RING_MIN, FileChanged, chunk_file
    data = _data(8 * RING_MIN + (3 << 20), b"grow")
    extra = _data(3 << 20, b"extra")
    p = tmp_path / "g.bin"
    p.write_bytes(data)
    with open(p, "rb") as f:
        gen = chunk_file(f, ring)
        first = bytes(next(gen))
        with open(p, "ab") as w:
            w.write(extra)
        chunks = [first, *map(bytes, gen)]
    assert chunks == list(chunk_bytes(data + extra))  # appended before the reader got there: included
    p.write_bytes(data)
    with open(p, "rb") as f:
        gen = chunk_file(f, ring)
        next(gen)
        os.truncate(p, 4 << 20)  # below what the first window already read
        with pytest.raises(FileChanged):
            list(gen)


def test_big_streams_get_bigger_chunks_the_same_whichever_way_they_are_read(tmp_path) -> None:
    """At least BIG_FILE bytes of known length: mean ~480 KiB, identical cuts for a regular file, a
    seekable buffer and bytes in memory (so the same content gets the same blob id whichever way it is
    stored); a pipe of unknown length gets the small mean; under BIG_FILE nothing changes."""
    data = _data(chunking.BIG_FILE + 3 * MAX_SIZE)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        from_file = [bytes(c) for c in chunking.chunk_file(f, ring=8)]
    from_buffer = list(chunk_stream(io.BytesIO(data)))
    from_bytes = list(chunk_bytes(data))
    assert from_file == from_buffer == from_bytes and b"".join(from_file) == data
    mean = len(data) / len(from_file)
    assert 400 * 1024 < mean < 600 * 1024, mean
    assert all(MIN_SIZE <= len(c) <= MAX_SIZE for c in from_file[:-1])
    from_pipe = list(chunk_stream(Dribble(data, 1 << 20)))            # not seekable: length unknown
    assert b"".join(from_pipe) == data and len(data) / len(from_pipe) < 300 * 1024
    small = data[:chunking.BIG_FILE - 1]
    assert list(chunk_stream(io.BytesIO(small))) == list(chunk_stream(Dribble(small, 1 << 20)))
