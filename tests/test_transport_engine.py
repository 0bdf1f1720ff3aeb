"""The QUIC engine adapter, two real cores wired together in memory (no socket), for each engine.

quic_engine reaches into a few engine internals (TLS key schedule, peer certificate, RTT
estimator, native core); these tests pin each of those assumptions so an engine upgrade
that breaks one fails here, by name.
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest

from transport.identity import DeviceIdentity
from transport.quic_engine import ENGINES, Engine, HandshakeDone, StreamData, get_engine, parse_dcid

CLIENT_ADDR = ("127.0.0.1", 1000)
SERVER_ADDR = ("127.0.0.1", 2000)


class Pair:
    """A client and a server connection exchanging datagrams through lists."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.client_id = DeviceIdentity.from_seed(os.urandom(32))
        self.server_id = DeviceIdentity.from_seed(os.urandom(32))
        self.client = engine.client(self.client_id)
        self.server: Any = None
        self.client.connect(SERVER_ADDR, time.monotonic())

    def pump(self) -> tuple[list[Any], list[Any]]:
        moved = True
        while moved:
            moved = False
            for _, run in self.engine.datagrams_to_send(self.client, time.monotonic()):
                for data in run:
                    moved = True
                    if self.server is None:
                        parsed = parse_dcid(data)
                        assert parsed is not None and parsed[2], "first client datagram is a v1 Initial"
                        self.server = self.engine.server(self.server_id, parsed[0])
                    self.server.receive_datagram(data, CLIENT_ADDR, time.monotonic())
            if self.server is not None:
                for _, run in self.engine.datagrams_to_send(self.server, time.monotonic()):
                    moved = True
                    self.engine.receive_many(self.client, run, SERVER_ADDR, time.monotonic())
        server_events = list(self.engine.events(self.server)) if self.server is not None else []
        return list(self.engine.events(self.client)), server_events


@pytest.fixture(params=ENGINES)
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(get_engine(request.param))


def test_handshake_pins_keys_and_derives_the_same_binding(pair: Pair) -> None:
    client_events, server_events = pair.pump()
    assert any(isinstance(e, HandshakeDone) and e.alpn == "pcloud/1" for e in client_events)
    assert any(isinstance(e, HandshakeDone) for e in server_events)
    assert pair.engine.peer_public_key(pair.client) == pair.server_id.public_key
    binding = pair.engine.exporter(pair.client, b"label")
    assert binding == pair.engine.exporter(pair.server, b"label") and len(binding) >= 32
    assert binding != pair.engine.exporter(pair.client, b"other label")
    assert pair.engine.smoothed_rtt(pair.client) is not None
    assert pair.engine.peer_address(pair.server) == CLIENT_ADDR
    assert pair.engine.peer_address(pair.client) == SERVER_ADDR


def test_stream_data_stream_credit_and_authenticated_receive(pair: Pair) -> None:
    pair.pump()
    assert pair.engine.can_open_stream(pair.client)
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"hello", end_stream=True)
    _, server_events = pair.pump()
    data = b"".join(e.data for e in server_events if isinstance(e, StreamData) and e.stream_id == sid)
    assert data == b"hello" and any(isinstance(e, StreamData) and e.end_stream for e in server_events)
    pair.server.send_stream_data(sid, b"back", end_stream=False)
    runs = pair.engine.datagrams_to_send(pair.server, time.monotonic())
    datagrams = [d for _, run in runs for d in run]
    assert pair.engine.receive_authenticated(pair.client, datagrams, SERVER_ADDR, time.monotonic())
    forged = bytes([0x40]) + pair.client.host_cid + os.urandom(60)
    assert not pair.engine.receive_authenticated(pair.client, [forged], SERVER_ADDR, time.monotonic())


def test_send_buffer_size_counts_unsent_bytes(pair: Pair) -> None:
    pair.pump()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"x" * 100_000)
    assert pair.engine.send_buffer_size(pair.client, sid) >= 50_000
    # aioquic paces: a pump right after the handshake may find its pacer holding every packet back
    # (seen once in CI under load), so pump until some bytes left, within a bound.
    deadline = time.monotonic() + 5.0
    pair.pump()
    while pair.engine.send_buffer_size(pair.client, sid) >= 100_000 and time.monotonic() < deadline:
        time.sleep(0.01)
        pair.pump()
    assert pair.engine.send_buffer_size(pair.client, sid) < 100_000


def test_parse_dcid_rejects_what_cannot_be_quic() -> None:
    assert parse_dcid(b"\x40") is None
    assert parse_dcid(b"\xc0\x00\x00\x00\x01\x30" + b"x" * 10) is None  # DCID longer than 20
    dcid, is_long, is_initial = parse_dcid(b"\x41" + b"12345678" + b"payload")  # type: ignore[misc]
    assert (dcid, is_long, is_initial) == (b"12345678", False, False)
