"""Wire framing of the TCP bulk lane (sans-I/O: bytes in, frames out); the bytes are the plaintext of
the lane's sealed records (transport.lane_records).

Invariants:
- Every lane frame is `type:u8 | stream:u32 | length:u32` big-endian, then `length`
  body bytes. The header alone decides whether a frame is acceptable: an unknown type
  or a length over the type's limit is refused before any body byte is buffered, so
  the decoder never holds more than HEADER.size + MAX_DATA bytes.
- OPEN carries a transport.messages STREAM_OPEN frame (handler name + metadata) and is
  checked with the same rules and limits as on QUIC. DATA carries at most MAX_DATA
  bytes (a Stream writes WRITE_CHUNK at a time). CREDIT carries one u64. HELLO, FIN and
  RESET carry nothing.
- After the decoder raised once it keeps raising: the lane must end.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterator

from transport.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from transport.messages import FrameType as MsgType
from transport.messages import decode as decode_message
from transport.messages import encode as encode_message
from transport.messages import max_size as message_max_size
from transport.stream import WRITE_CHUNK

HEADER = struct.Struct(">BII")
CREDIT = struct.Struct(">Q")
MAX_DATA = WRITE_CHUNK
MAX_STREAM_ID = 2**32 - 1
PREAMBLE_MAGIC = b"PCL2"  # v2: sealed records keyed over the session (v1 was TLS)
LANE_ID_SIZE = 16
PREAMBLE_SIZE = len(PREAMBLE_MAGIC) + LANE_ID_SIZE


class LaneFrameType(IntEnum):
    HELLO = 0x00  # each side's first record: it opening proves the sender holds the lane secret
    OPEN = 0x01
    DATA = 0x02
    FIN = 0x03
    RESET = 0x04  # both directions of the stream are over (abort or refusal)
    CREDIT = 0x05


_LIMITS: dict[LaneFrameType, int] = {
    LaneFrameType.HELLO: 0,
    LaneFrameType.OPEN: message_max_size(MsgType.STREAM_OPEN) + 5,
    LaneFrameType.DATA: MAX_DATA,
    LaneFrameType.FIN: 0,
    LaneFrameType.RESET: 0,
    LaneFrameType.CREDIT: CREDIT.size,
}


@dataclass(frozen=True)
class LaneFrame:
    """One decoded lane frame; `name`/`meta` for OPEN, `data` for DATA, `consumed` for CREDIT."""

    type: LaneFrameType
    stream_id: int
    data: bytes = b""
    name: str = ""
    meta: dict[str, Any] | None = None
    consumed: int = 0


def encode_header(frame_type: LaneFrameType, stream_id: int, length: int) -> bytes:
    """The 9-byte header for a frame whose body the caller sends next (DATA avoids a copy)."""
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"lane stream id {stream_id} out of range")
    if length > _LIMITS[frame_type]:
        raise LocalProtocolError(f"{frame_type.name} body of {length} bytes, limit {_LIMITS[frame_type]}")
    return HEADER.pack(frame_type, stream_id, length)


def encode_open(stream_id: int, name: str, meta: dict[str, Any]) -> bytes:
    body = encode_message(MsgType.STREAM_OPEN, {"n": name, "m": meta})
    return encode_header(LaneFrameType.OPEN, stream_id, len(body)) + body


def encode_credit(stream_id: int, consumed: int) -> bytes:
    if not 0 <= consumed < 2**64:
        raise LocalProtocolError("credit out of range")
    return encode_header(LaneFrameType.CREDIT, stream_id, CREDIT.size) + CREDIT.pack(consumed)


def encode_empty(frame_type: LaneFrameType, stream_id: int) -> bytes:
    return encode_header(frame_type, stream_id, 0)


def encode_preamble(lane_id: bytes) -> bytes:
    """The cleartext bytes a lane client sends before its first record: which pending lane it claims."""
    if len(lane_id) != LANE_ID_SIZE:
        raise LocalProtocolError("a lane id is 16 bytes")
    return PREAMBLE_MAGIC + lane_id


def decode_preamble(data: bytes) -> bytes:
    """The lane id from a preamble; RemoteProtocolError for anything else (e.g. a port scanner)."""
    if len(data) != PREAMBLE_SIZE or data[: len(PREAMBLE_MAGIC)] != PREAMBLE_MAGIC:
        raise RemoteProtocolError("not a pcloud lane preamble")
    return bytes(data[len(PREAMBLE_MAGIC) :])


class LaneDecoder:
    """Incremental lane frame decoder: feed bytes, take frames as they complete.

    Each body byte is copied once: a frame wholly inside one `feed` is sliced out of it, and
    a frame split across feeds is joined from the pieces once it is complete.
    """

    def __init__(self) -> None:
        self._parts: deque[bytes | memoryview] = deque()  # unparsed input, oldest first
        self._have = 0
        self._need: tuple[LaneFrameType, int, int] | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return self._have

    def feed(self, data: bytes) -> Iterator[LaneFrame]:
        """Add `data` and yield every frame now complete; RemoteProtocolError on bad input."""
        if self._error is not None:
            raise self._error
        try:
            if self._have or self._need is not None:
                self._parts.append(data)
                self._have += len(data)
                yield from self._drain()
                return
            pos = 0
            try:
                while len(data) - pos >= HEADER.size:
                    frame_type, stream_id, length = _header(data, pos)
                    end = pos + HEADER.size + length
                    if end > len(data):
                        break
                    body = data[pos + HEADER.size:end]
                    pos = end
                    yield _frame(frame_type, stream_id, bytes(body))
            finally:
                if pos < len(data):  # the start of a frame split across feeds (kept without a copy)
                    self._parts.append(memoryview(data)[pos:] if pos else data)
                    self._have += len(data) - pos
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _drain(self) -> Iterator[LaneFrame]:
        while True:
            if self._need is None:
                if self._have < HEADER.size:
                    return
                self._need = _header(self._take(HEADER.size), 0)
            frame_type, stream_id, length = self._need
            if self._have < length:
                return
            body = self._take(length)
            self._need = None
            yield _frame(frame_type, stream_id, body)

    def _take(self, n: int) -> bytes:
        """The next `n` unparsed bytes (n <= _have), copied once."""
        self._have -= n
        pieces: list[bytes | memoryview] = []
        while n:
            first = self._parts[0]
            if len(first) <= n:
                pieces.append(self._parts.popleft())
                n -= len(first)
            else:
                view = memoryview(first)
                pieces.append(view[:n])
                self._parts[0] = view[n:]
                n = 0
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)


def _header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[LaneFrameType, int, int]:
    code, stream_id, length = HEADER.unpack_from(buf, pos)
    try:
        frame_type = LaneFrameType(code)
    except ValueError:
        raise RemoteProtocolError(f"unknown lane frame type 0x{code:02x}") from None
    if length > _LIMITS[frame_type]:
        raise MessageTooLarge(f"lane {frame_type.name} frame of {length} bytes, limit {_LIMITS[frame_type]}")
    return frame_type, stream_id, length


def _frame(frame_type: LaneFrameType, stream_id: int, body: bytes) -> LaneFrame:
    if frame_type is LaneFrameType.DATA:
        return LaneFrame(frame_type, stream_id, data=body)
    if frame_type is LaneFrameType.OPEN:
        message = decode_message(body)
        if message.type is not MsgType.STREAM_OPEN:
            raise RemoteProtocolError(f"lane OPEN carries a {message.type.name} frame")
        return LaneFrame(frame_type, stream_id, name=message.body["n"], meta=message.body["m"])
    if frame_type is LaneFrameType.CREDIT:
        if len(body) != CREDIT.size:
            raise RemoteProtocolError("lane CREDIT body is not 8 bytes")
        return LaneFrame(frame_type, stream_id, consumed=CREDIT.unpack(body)[0])
    return LaneFrame(frame_type, stream_id)


__all__ = [
    "HEADER", "LANE_ID_SIZE", "LaneDecoder", "LaneFrame", "LaneFrameType", "MAX_DATA", "PREAMBLE_SIZE",
    "decode_preamble", "encode_credit", "encode_empty", "encode_header", "encode_open", "encode_preamble",
]
