"""Message framing on QUIC streams: typed, length-prefixed, msgpack bodies, bounded.

Wire format of one frame (all integers big-endian):

    +--------+----------------+----------------------+
    | type 1 | length 4 (u32) | body (length bytes)  |
    +--------+----------------+----------------------+

The body is one msgpack map whose keys and value types are fixed per frame type
(FRAME_RULES below, rules as data). Rules:
- Rule 1: an unknown type code, a length above the type's limit, a body that is not
  exactly one msgpack value, or a map with missing / wrongly-typed fields is
  RemoteProtocolError (MessageTooLarge for sizes). The session that sent it ends;
  the node goes on.
- Rule 2: the limit is checked from the 5-byte header, before any body byte is
  buffered, so a peer cannot make us hold more than `max_size(type) + 5` bytes.
- Rule 3: `encode` refuses what `decode` would refuse (LocalProtocolError), so we
  never send a frame our peer must reject.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterator

import msgpack

from transport.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError

HEADER = struct.Struct(">BI")
KiB = 1024
MiB = 1024 * KiB


class FrameType(IntEnum):
    """Frame type codes (one byte on the wire)."""

    AUTH = 0x01  # client -> server on stream 0: key + signature over the TLS exporter
    AUTH_OK = 0x02  # server -> client: the client's key was verified and admitted
    REQUEST = 0x10  # {i: request id, t: message type, b: body}
    RESPONSE = 0x11  # {i, ok: bool, b: body} or {i, ok: False, e: code, m: message}
    CANCEL = 0x12  # {i}: the requester gave up; stop the handler
    MESSAGE = 0x13  # {t, b}: fire-and-forget
    CREDIT = 0x14  # {s: stream id, n: total bytes the reader consumed}: bulk backpressure
    STREAM_OPEN = 0x20  # first frame of a bulk stream: {n: name, m: metadata}


# type -> (max body size, required fields and their allowed types)
_BODY = (bytes, dict)
FRAME_RULES: dict[FrameType, tuple[int, dict[str, tuple[type, ...]]]] = {
    FrameType.AUTH: (1 * KiB, {"k": (bytes,), "s": (bytes,)}),
    FrameType.AUTH_OK: (256, {}),
    FrameType.REQUEST: (8 * MiB, {"i": (int,), "t": (str,), "b": _BODY}),
    FrameType.RESPONSE: (8 * MiB, {"i": (int,), "ok": (bool,)}),
    FrameType.CANCEL: (64, {"i": (int,)}),
    FrameType.MESSAGE: (8 * MiB, {"t": (str,), "b": _BODY}),
    FrameType.CREDIT: (64, {"s": (int,), "n": (int,)}),
    FrameType.STREAM_OPEN: (64 * KiB, {"n": (str,), "m": (dict,)}),
}
MAX_TYPE_NAME = 128


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    type: FrameType
    "what the frame is"
    body: dict[str, Any]
    "its validated fields"


def max_size(frame_type: FrameType) -> int:
    """Largest body allowed for `frame_type`."""
    return FRAME_RULES[frame_type][0]


def _validate(frame_type: FrameType, body: Any, error: type[Exception]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise error(f"{frame_type.name} body must be a map, got {type(body).__name__}")
    for key, types in FRAME_RULES[frame_type][1].items():
        if key not in body:
            raise error(f"{frame_type.name} lacks field {key!r}")
        value = body[key]
        # bool is an int in Python; keep integer fields honest.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise error(f"{frame_type.name} field {key!r} has type {type(value).__name__}")
    if "t" in body and isinstance(body["t"], str) and len(body["t"]) > MAX_TYPE_NAME:
        raise error(f"{frame_type.name} message type name longer than {MAX_TYPE_NAME}")
    for key in ("i", "s", "n"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < 2**62:
            raise error(f"{frame_type.name} field {key!r} out of range")
    if frame_type is FrameType.RESPONSE:
        if body["ok"]:
            if not isinstance(body.get("b"), _BODY):
                raise error("RESPONSE ok=True lacks a body")
        elif not isinstance(body.get("e"), str) or not isinstance(body.get("m"), str):
            raise error("RESPONSE ok=False lacks error code / message")
    return body


def encode(frame_type: FrameType, body: dict[str, Any]) -> bytes:
    """Serialize one frame. Raises LocalProtocolError (or its size twin) on invalid input."""
    frame_type = FrameType(frame_type)
    _validate(frame_type, body, LocalProtocolError)
    try:
        payload = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"{frame_type.name} body cannot be encoded: {exc}") from exc
    if len(payload) > max_size(frame_type):
        raise LocalProtocolError(
            f"{frame_type.name} body is {len(payload)} bytes, limit {max_size(frame_type)}; use a stream for bulk data"
        )
    return HEADER.pack(frame_type, len(payload)) + payload


def _unpack(frame_type: FrameType, payload: bytes) -> dict[str, Any]:
    limit = max_size(frame_type)
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RemoteProtocolError(f"{frame_type.name} body is not valid msgpack: {exc}") from exc
    return _validate(frame_type, body, RemoteProtocolError)


def _header(data: bytes | memoryview) -> tuple[FrameType, int]:
    code, length = HEADER.unpack_from(data)
    try:
        frame_type = FrameType(code)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type 0x{code:02x}") from None
    if length > max_size(frame_type):
        raise MessageTooLarge(f"{frame_type.name} frame of {length} bytes, limit {max_size(frame_type)}")
    return frame_type, length


def decode(data: bytes) -> Frame:
    """Parse exactly one frame from `data` (no more, no less)."""
    if len(data) < HEADER.size:
        raise RemoteProtocolError("truncated frame header")
    frame_type, length = _header(data)
    if len(data) != HEADER.size + length:
        raise RemoteProtocolError(f"frame declares {length} body bytes, got {len(data) - HEADER.size}")
    return Frame(frame_type, _unpack(frame_type, bytes(data[HEADER.size :])))


class FrameDecoder:
    """Incremental decoder: feed byte chunks, take frames as they complete.

    After it raises, the decoder is broken and keeps raising (the stream must end).
    `allowed` restricts which frame types this stream may carry.
    """

    def __init__(self, allowed: frozenset[FrameType] | None = None) -> None:
        self._buffer = bytearray()
        self.allowed = allowed
        "frame types this stream may carry now (None: any); may change between frames"
        self._error: RemoteProtocolError | None = None
        self._need: tuple[FrameType, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (bounded by Rule 2)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add `data` and yield every frame now complete."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            while True:
                if self._need is None:
                    if len(self._buffer) < HEADER.size:
                        return
                    frame_type, length = _header(self._buffer)
                    if self.allowed is not None and frame_type not in self.allowed:
                        raise RemoteProtocolError(f"{frame_type.name} frame not allowed on this stream")
                    self._need = (frame_type, length)
                frame_type, length = self._need
                if len(self._buffer) < HEADER.size + length:
                    return
                payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
                del self._buffer[: HEADER.size + length]
                self._need = None
                yield Frame(frame_type, _unpack(frame_type, payload))
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def take_rest(self) -> bytes:
        """Remove and return the bytes after the last complete frame (raw stream data)."""
        if self._need is not None:
            raise RemoteProtocolError("stream data began inside a frame")
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for the stream to end)."""
        return not self._buffer and self._need is None


__all__ = ["FRAME_RULES", "Frame", "FrameDecoder", "FrameType", "decode", "encode", "max_size"]
