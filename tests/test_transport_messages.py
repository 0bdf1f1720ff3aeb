"""Frame codec: round trips, size limits, malformed input, fuzzing (whole / byte-at-a-time / trailing)."""
from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from transport.messages import Frame, FrameDecoder, FrameType, decode, encode, max_size

SIMPLE_CASES: list[tuple[FrameType, dict]] = [
    (FrameType.AUTH, {"k": b"k" * 32, "s": b"s" * 64}),
    (FrameType.AUTH_OK, {}),
    (FrameType.REQUEST, {"i": 1, "t": "raft.append", "b": {"term": 3, "entries": [b"x", "y"]}}),
    (FrameType.REQUEST, {"i": 2**40, "t": "get", "b": b"\x00\xff"}),
    (FrameType.RESPONSE, {"i": 1, "ok": True, "b": {}}),
    (FrameType.RESPONSE, {"i": 7, "ok": False, "e": "unknown_type", "m": "no handler"}),
    (FrameType.CANCEL, {"i": 9}),
    (FrameType.MESSAGE, {"t": "doc.update", "b": b"u" * 1000}),
    (FrameType.CREDIT, {"s": 4, "n": 2**33}),
    (FrameType.STREAM_OPEN, {"n": "objects.put", "m": {"id": "ab"}}),
]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


@pytest.mark.parametrize("frame_type,body", SIMPLE_CASES)
def test_round_trip_whole_and_byte_at_a_time(frame_type: FrameType, body: dict) -> None:
    wire = encode(frame_type, body)
    assert decode(wire) == Frame(frame_type, body)
    assert feed_all(FrameDecoder(), [wire]) == [Frame(frame_type, body)]
    decoder = FrameDecoder()
    assert feed_all(decoder, [wire[i : i + 1] for i in range(len(wire))]) == [Frame(frame_type, body)]
    assert decoder.at_boundary()


def test_concatenated_frames_and_trailing_partial() -> None:
    wire = b"".join(encode(t, b) for t, b in SIMPLE_CASES)
    decoder = FrameDecoder()
    assert [f.type for f in feed_all(decoder, [wire + wire[:3]])] == [t for t, _ in SIMPLE_CASES]
    assert decoder.buffered == 3 and not decoder.at_boundary()


def test_decode_rejects_trailing_bytes() -> None:
    wire = encode(FrameType.CANCEL, {"i": 1})
    with pytest.raises(RemoteProtocolError):
        decode(wire + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode(wire[:-1])


def test_oversized_frame_rejected_from_header_alone() -> None:
    decoder = FrameDecoder()
    header = struct.pack(">BI", FrameType.REQUEST, max_size(FrameType.REQUEST) + 1)
    with pytest.raises(MessageTooLarge):
        list(decoder.feed(header))
    assert decoder.buffered <= 5  # nothing of the body was held
    with pytest.raises(MessageTooLarge):  # a broken decoder stays broken
        list(decoder.feed(b"more"))


def test_unknown_type_and_disallowed_type() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        list(FrameDecoder().feed(b"\x7f\x00\x00\x00\x00"))
    decoder = FrameDecoder(frozenset({FrameType.AUTH}))
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        list(decoder.feed(encode(FrameType.REQUEST, {"i": 1, "t": "x", "b": {}})))


@pytest.mark.parametrize(
    "frame_type,body",
    [
        (FrameType.REQUEST, {"i": 1, "t": "x"}),  # missing body
        (FrameType.REQUEST, {"i": "1", "t": "x", "b": {}}),  # wrong type
        (FrameType.REQUEST, {"i": True, "t": "x", "b": {}}),  # bool is not an id
        (FrameType.REQUEST, {"i": -1, "t": "x", "b": {}}),  # out of range
        (FrameType.RESPONSE, {"i": 1, "ok": False}),  # error without code
        (FrameType.RESPONSE, {"i": 1, "ok": True}),  # success without body
        (FrameType.CREDIT, {"s": 1}),
        (FrameType.REQUEST, {"i": 1, "t": "x" * 200, "b": {}}),  # type name too long
    ],
)
def test_malformed_bodies_are_remote_errors_and_refused_locally(frame_type: FrameType, body: dict) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    wire = struct.pack(">BI", frame_type, len(payload)) + payload
    with pytest.raises(RemoteProtocolError):
        decode(wire)
    with pytest.raises(LocalProtocolError):
        encode(frame_type, body)


@pytest.mark.parametrize("payload", [b"\xc1", b"\x92\x01", b"\x81\x01\x02", b"\xd4\x01\x00", b"\x80\x80"])
def test_invalid_msgpack(payload: bytes) -> None:
    wire = struct.pack(">BI", FrameType.CANCEL, len(payload)) + payload
    with pytest.raises(RemoteProtocolError):
        decode(wire)


def test_encode_refuses_oversized_and_unencodable() -> None:
    with pytest.raises(LocalProtocolError, match="use a stream"):
        encode(FrameType.MESSAGE, {"t": "x", "b": b"\x00" * (max_size(FrameType.MESSAGE) + 1)})
    with pytest.raises(LocalProtocolError):
        encode(FrameType.MESSAGE, {"t": "x", "b": {"v": object()}})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = FrameDecoder()
        try:
            feed_all(decoder, chunks)
        except RemoteProtocolError:
            pass  # the only acceptable failure
    try:
        decode(data)
    except RemoteProtocolError:
        pass


bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), bodies, max_size=5),
    st.integers(0, 2**62 - 1),
    st.text(min_size=1, max_size=40),
    st.binary(max_size=30),
)
def test_fuzz_round_trip_with_trailing_garbage(body: dict, request_id: int, msg_type: str, garbage: bytes) -> None:
    frame = {"i": request_id, "t": msg_type, "b": body}
    wire = encode(FrameType.REQUEST, frame)
    expected = Frame(FrameType.REQUEST, frame)
    assert decode(wire) == expected
    decoder = FrameDecoder()
    assert feed_all(decoder, [wire[i : i + 7] for i in range(0, len(wire), 7)]) == [expected]
    try:
        list(decoder.feed(garbage))
    except RemoteProtocolError:
        pass  # trailing garbage may be rejected, never misread as the frame before it
