"""Control wire format: round trips, strict decoding, and hypothesis fuzzing."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport import control as c
from transport.errors import MessageTooLarge, RemoteProtocolError

K1, K2 = os.urandom(32), os.urandom(32)
CANDS = (c.Candidate(c.CandidateKind.REFLEXIVE, ("198.18.0.101", 40000)),
         c.Candidate(c.CandidateKind.LAN, ("10.77.1.10", 4433)),
         c.Candidate(c.CandidateKind.LAN, ("fe80::1", 1)))

SAMPLES = [
    c.Hello(),
    c.Challenge(os.urandom(32), ("198.18.0.101", 1234)),
    c.Register(K1, os.urandom(8), os.urandom(16), os.urandom(32), CANDS, os.urandom(64)),
    c.Registered(("::1", 9), 10, 45),
    c.Keepalive(c.short_id(K1)),
    c.KeepaliveAck(("1.2.3.4", 65535)),
    c.PeerRequest(K2, 7),
    c.Candidates(K2, 7, os.urandom(16), True, CANDS),
    c.Punch(K1, K2, os.urandom(16), os.urandom(16), os.urandom(64)),
    c.PunchAck(K2, K1, os.urandom(16), os.urandom(16), os.urandom(64)),
    c.RelayData(c.short_id(K2), b"\xc0" + os.urandom(1199)),
    c.Error(c.ErrorCode.UNKNOWN_PEER, "pas là ✓"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_strictness(msg: c.Message) -> None:
    wire = c.encode(msg)
    assert c.is_control(wire)
    assert c.decode(wire) == msg
    # one byte more or less is always an error (HELLO padding and relay payloads included)
    if not isinstance(msg, c.RelayData):
        with pytest.raises(RemoteProtocolError):
            c.decode(wire + b"\x00")
    with pytest.raises(RemoteProtocolError):
        c.decode(wire[:-1]) if not isinstance(msg, c.RelayData) else c.decode(wire[:10])
    # every truncation is rejected cleanly
    for n in range(len(wire) if not isinstance(msg, c.RelayData) else 11):
        with pytest.raises(RemoteProtocolError):
            c.decode(wire[:n])


def test_rejects_quic_version_and_unknown_types() -> None:
    with pytest.raises(RemoteProtocolError, match="not a control"):
        c.decode(b"\xc3" + bytes(100))
    with pytest.raises(RemoteProtocolError, match="version"):
        c.decode(bytes([c.MsgType.KEEPALIVE, 9]) + bytes(8))
    with pytest.raises(RemoteProtocolError, match="unknown control message type"):
        c.decode(bytes([0x3F, c.VERSION]))
    with pytest.raises(MessageTooLarge):
        c.decode(bytes([c.MsgType.RELAY_DATA, c.VERSION]) + bytes(c.MAX_DATAGRAM))
    with pytest.raises(RemoteProtocolError, match="family"):
        c.decode(bytes([c.MsgType.KEEPALIVE_ACK, c.VERSION, 5]) + bytes(6))
    too_many = bytes([c.MsgType.CANDIDATES, c.VERSION]) + K1 + bytes(4) + bytes(16) + b"\x01" + bytes([200])
    with pytest.raises(MessageTooLarge):
        c.decode(too_many)
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        c.decode(bytes([c.MsgType.ERROR, c.VERSION, 1, 2]) + b"\xff\xfe")


def test_encoder_refuses_invalid_fields() -> None:
    with pytest.raises(ValueError):
        c.encode(c.Keepalive(b"short"))
    with pytest.raises(ValueError):
        c.encode(c.RelayData(bytes(8), bytes(c.MAX_RELAY_PAYLOAD + 1)))
    with pytest.raises(ValueError):
        c.encode(c.KeepaliveAck(("not-an-ip", 1)))


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    try:
        c.decode(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_fuzz_mutated_valid_messages(msg: c.Message, data: st.DataObject) -> None:
    wire = bytearray(c.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    try:
        out = c.decode(bytes(wire[:cut]))
    except RemoteProtocolError:
        return
    # whatever decodes re-encodes to the same bytes: no lenient parsing
    assert c.encode(out) == bytes(wire[:cut])
