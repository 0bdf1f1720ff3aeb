"""The TCP bulk lane (transport.lane, transport.lane_records) under real QUIC sessions on loopback.

Real sockets and real sealed records everywhere: the lane's set-up, refusals and failures
are exercised the way a peer (or an attacker on the LAN) would cause them.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport_helpers import pair, run, wait_for
from transport.endpoint import Endpoint
from transport.errors import RemoteProtocolError, RequestFailed, SessionClosed, TransportError
from transport.lane import LANE_REQUEST, MAX_LANE_STREAMS, Lane, read_record
from transport.lane_records import LaneKeys, RecordOpener, RecordSealer
from transport.lane_framing import (
    HEADER,
    MAX_DATA,
    LaneDecoder,
    LaneFrameType,
    encode_credit,
    encode_empty,
    encode_header,
    encode_open,
    encode_preamble,
)
from transport.session import STREAM_WINDOW, Session, Stream
from transport.stream import WRITE_CHUNK

ENGINE = "qh3"  # the lane sits above the QUIC engine; the engine axis is covered by test_transport_session


@pytest.fixture(autouse=True)
def _lane_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane is opt-in (transport.lane.lane_enabled): these tests are about it, so on."""
    monkeypatch.setenv("PCLOUD_TCP_LANE", "1")


async def _digest_sink(received: dict[str, Any], session: Session, stream: Stream) -> None:
    h, n = hashlib.sha256(), 0
    async for chunk in stream:
        h.update(chunk)
        n += len(chunk)
    received.update(digest=h.hexdigest(), size=n, meta=stream.meta, session=session)
    await stream.write(b"done")


async def _through_sink(s: Session, payload: bytes) -> Stream:
    """Send ``payload`` to the peer's "sink" handler on a new stream and check its "done"; returns the stream."""
    stream = await s.open_stream("sink")
    await stream.write(payload)
    stream.close()
    assert await stream.read_all(limit=10) == b"done"
    return stream


async def _laned_pair(**kw: Any) -> tuple[Endpoint, Endpoint, Session]:
    a, b = await pair(ENGINE, **kw)
    s = await a.connect(b.device_id, b.local_address, path_kind="lan")
    await wait_for(lambda: s.lane is not None and b.sessions.get(a.device_id) is not None
                   and b.sessions[a.device_id].lane is not None)
    return a, b, s


def test_lane_carries_50mb_intact_with_backpressure() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        received: dict[str, Any] = {}
        release = asyncio.Event()
        holder: dict[str, Stream] = {}

        async def lazy_sink(session: Session, stream: Stream) -> None:
            holder["stream"] = stream
            await release.wait()
            await _digest_sink(received, session, stream)

        b.on_stream("sink", lazy_sink)
        data = os.urandom(50 * 1024 * 1024)
        stream = await s.open_stream("sink", {"id": "blob1"})
        assert isinstance(stream._session, Lane), "with a lane up, streams ride it"

        async def send() -> None:
            for i in range(0, len(data), 1_000_003):
                await stream.write(data[i : i + 1_000_003])
            stream.close()

        writer = asyncio.create_task(send())
        await asyncio.sleep(0.5)
        assert not writer.done(), "write must wait while the peer's application does not read"
        assert stream.unacknowledged <= STREAM_WINDOW
        await wait_for(lambda: "stream" in holder)
        assert holder["stream"].buffered <= STREAM_WINDOW + WRITE_CHUNK
        release.set()
        await asyncio.wait_for(writer, 60)
        assert await stream.read_all(limit=10) == b"done"
        assert received["digest"] == hashlib.sha256(data).hexdigest() and received["size"] == len(data)
        assert received["meta"] == {"id": "blob1"}
        assert received["session"] is b.sessions[a.device_id], "handlers get the QUIC session, as on QUIC"
        await stream.drain()
        await wait_for(lambda: not s.lane._streams and not b.sessions[a.device_id].lane._streams)  # finished: forgotten
        await a.close()
        await b.close()

    run(body(), timeout=120)


@pytest.mark.parametrize("lane", [True, False])
def test_same_upper_layer_code_with_and_without_lane(lane: bool) -> None:
    async def body() -> None:
        a, b = await pair(ENGINE, tcp_lane=lane)

        async def upper(session: Session, stream: Stream) -> None:
            async for chunk in stream:
                await stream.write(chunk.upper())

        b.on_stream("upper", upper)
        s = await a.connect(b.device_id, b.local_address, path_kind="lan")
        if lane:
            await wait_for(lambda: s.lane is not None)
        else:
            await asyncio.sleep(0.3)
            assert s.lane is None and a.lane_port is None
        for _ in range(10):
            stream = await s.open_stream("upper", {"k": 1})
            await stream.write(b"hello ")
            await stream.write(b"world")
            stream.close()
            assert await stream.read_all(limit=100) == b"HELLO WORLD"
        refused = await s.open_stream("no-such-handler")
        with pytest.raises(SessionClosed):
            await refused.read()
        # The server side opens streams too (both directions ride the lane).
        a.on_stream("upper", upper)
        back = await b.sessions[a.device_id].open_stream("upper")
        await back.write(b"back")
        back.close()
        assert await back.read_all(limit=10) == b"BACK"
        assert (isinstance(stream._session, Lane) and isinstance(back._session, Lane)) == lane
        await a.close()
        await b.close()

    run(body())


def test_lane_refused_for_unbound_id_wrong_secret_and_reused_id() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        port = b.lane_port
        assert port is not None
        service = b._lane
        assert service is not None
        hello = encode_empty(LaneFrameType.HELLO, 0)

        async def attempt(lane_id: bytes, secret: bytes) -> bytes:
            """Claim ``lane_id`` with records sealed under ``secret``; the server's HELLO if accepted."""
            keys = LaneKeys.derive(secret, is_client=True)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.writelines([encode_preamble(lane_id), *RecordSealer(keys.send).seal(hello)])
                return await asyncio.wait_for(read_record(reader, RecordOpener(keys.receive)), 5)
            finally:
                writer.close()

        # An id nobody handed out: closed at the preamble.
        before = service.refused
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await attempt(os.urandom(16), os.urandom(32))
        await wait_for(lambda: service.refused == before + 1)

        # A real offer's id, claimed by someone who saw it on the wire but lacks the secret
        # (it only travelled inside the session): the first record does not open, refused.
        offer = await s.request(LANE_REQUEST, {"v": 2})
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await attempt(offer["l"], os.urandom(32))
        await wait_for(lambda: service.refused == before + 2)
        # The id was used up by that attempt: the rightful device cannot reuse it either.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await attempt(offer["l"], offer["k"])
        await wait_for(lambda: service.refused == before + 3)

        # The client checks the server too: a server without the secret cannot produce a HELLO that opens.
        offer = await s.request(LANE_REQUEST, {"v": 2})
        impostor_keys = LaneKeys.derive(os.urandom(32), is_client=False)
        forged = b"".join(RecordSealer(impostor_keys.send).seal(hello))
        r = asyncio.StreamReader()
        r.feed_data(forged)
        with pytest.raises(RemoteProtocolError, match="authentication"):
            await read_record(r, RecordOpener(LaneKeys.derive(offer["k"], is_client=True).receive))

        # A request in the old form (v1: TLS with certificates) gets a clear refusal over the session.
        with pytest.raises(RequestFailed) as refused:
            await s.request(LANE_REQUEST, {"c": a.identity.cert_der})
        assert refused.value.code == "bad_request" and "v2" in refused.value.message

        # Nothing of this touched the session or its lane.
        b.on_request("ping", _pong)
        assert await s.request("ping", {}) == {"pong": True}
        assert s.lane is not None and not s.lane.closed

        # With the secret it works (this is what the real client does): the server answers HELLO.
        assert await attempt(offer["l"], offer["k"]) == hello
        assert await s.request("ping", {}) == {"pong": True}
        await a.close()
        await b.close()

    run(body())


async def _pong(session: Session, body: Any) -> dict:
    return {"pong": True}


def test_lane_killed_mid_stream_fails_the_stream_and_the_session_survives() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        received: dict[str, Any] = {}
        b.on_stream("sink", lambda session, stream: _digest_sink(received, session, stream))
        b.on_request("ping", _pong)
        stream = await s.open_stream("sink")
        first = s.lane
        assert first is not None
        await stream.write(os.urandom(4 * 1024 * 1024))
        first.kill()
        with pytest.raises(TransportError):
            for _ in range(100):
                await stream.write(os.urandom(1024 * 1024))
        with pytest.raises(SessionClosed):
            await stream.read()
        assert s.state == "up" and await s.request("ping", {}) == {"pong": True}
        # The next stream works at once (QUIC while the lane is down, or a new lane).
        data = os.urandom(3 * 1024 * 1024)
        received.clear()
        again = await s.open_stream("sink")
        await again.write(data)
        again.close()
        assert await again.read_all(limit=10) == b"done"
        assert received["digest"] == hashlib.sha256(data).hexdigest()
        # The client re-opens a lane by itself (after a short backoff) and new streams use it.
        await wait_for(lambda: s.lane is not None and s.lane is not first, timeout=10)
        assert isinstance((await _through_sink(s, b"x"))._session, Lane)
        await a.close()
        await b.close()

    run(body())


def test_garbage_on_the_tcp_port_is_survived() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        port = b.lane_port
        service = b._lane
        assert port is not None and service is not None
        before = service.refused
        payloads = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(5000), b"PCL2", b"PCL2" + b"\0" * 16 + b"junk",
                    b"\x16\x03\x01\x02\x00" + os.urandom(600), b""]
        for payload in payloads:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            if not payload:
                writer.write_eof()
            try:
                await asyncio.wait_for(reader.read(), 10)  # the node hangs up on us
            except ConnectionError:
                pass
            writer.close()
        await wait_for(lambda: service.refused >= before + len(payloads) - 1, timeout=10)
        # The real lane and session are untouched, and a fresh stream rides the lane.
        received: dict[str, Any] = {}
        b.on_stream("sink", lambda session, stream: _digest_sink(received, session, stream))
        stream = await s.open_stream("sink")
        assert isinstance(stream._session, Lane)
        await stream.write(b"still here")
        stream.close()
        assert await stream.read_all(limit=10) == b"done"
        await a.close()
        await b.close()

    run(body())


@pytest.mark.parametrize("damage", ["flipped byte", "forged record", "replayed record", "oversized length"])
def test_a_record_that_does_not_open_ends_only_the_lane(damage: str) -> None:
    """What an attacker on the LAN can inject into the TCP connection: the receiver's lane ends
    (its streams fail), the session and everything after it go on, and a new lane comes up."""
    async def body() -> None:
        a, b, s = await _laned_pair()
        b.on_request("ping", _pong)
        received: dict[str, Any] = {}
        b.on_stream("sink", lambda session, stream: _digest_sink(received, session, stream))
        lane = s.lane
        assert lane is not None
        server_lane = b.sessions[a.device_id].lane
        assert server_lane is not None
        record = b"".join(lane._sealer.seal(encode_credit(0, 0)))  # a valid record ...
        if damage == "flipped byte":
            wire = record[:-1] + bytes([record[-1] ^ 1])
        elif damage == "forged record":
            wire = record[:4] + os.urandom(len(record) - 4)
        elif damage == "replayed record":
            lane._writer.write(record)                               # ... delivered once,
            wire = record                                            # then again: its nonce is used
        else:
            wire = b"\xff\xff\xff\xff" + os.urandom(64)
        lane._writer.write(wire)                                     # raw bytes on the TCP connection
        await wait_for(lambda: server_lane.closed)
        assert "protocol error" in server_lane.close_reason
        await wait_for(lambda: lane.closed)                          # the server aborted the connection
        assert s.state == "up" and await s.request("ping", {}) == {"pong": True}
        await wait_for(lambda: s.lane is not None and not s.lane.closed, timeout=10)  # redialled
        await _through_sink(s, b"after the attack")
        await a.close()
        await b.close()

    run(body())


def test_lane_frames_that_break_the_rules_end_only_the_lane() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        b.on_request("ping", _pong)
        lane = s.lane
        assert lane is not None
        lane._write(encode_header(LaneFrameType.DATA, 999_999, 4) + b"oops")  # a stream never opened
        await wait_for(lambda: lane.closed)
        assert s.state == "up" and await s.request("ping", {}) == {"pong": True}
        await a.close()
        await b.close()

    run(body())


def test_relay_path_never_uses_the_lane() -> None:
    async def body() -> None:
        a, b = await pair(ENGINE)
        received: dict[str, Any] = {}
        b.on_stream("sink", lambda session, stream: _digest_sink(received, session, stream))
        via_a, via_b = ("relay", "r", 1, b.device_id.hex()), ("relay", "r", 1, a.device_id.hex())

        class Wire:
            def __init__(self, to: Endpoint, as_addr: tuple) -> None:
                self.to, self.as_addr = to, as_addr

            def transmit(self, datagrams: list[bytes]) -> None:
                items = [(d, self.as_addr) for d in datagrams]
                asyncio.get_running_loop().call_soon(self.to.inject_datagrams, items)

        a.register_virtual_address(via_a, Wire(b, via_b))
        b.register_virtual_address(via_b, Wire(a, via_a))
        s = await a.connect(b.device_id, via_a, path_kind="relay")
        await asyncio.sleep(0.5)
        assert s.lane is None and b.sessions[a.device_id].lane is None
        stream = await s.open_stream("sink")
        assert not isinstance(stream._session, Lane)
        await stream.write(b"via relay")
        stream.close()
        assert await stream.read_all(limit=10) == b"done"
        # Even asked explicitly, a server refuses a lane for a relayed session.
        with pytest.raises(RequestFailed) as refused:
            await s.request(LANE_REQUEST, {"v": 2})
        assert refused.value.code == "lane_refused"
        # Once the session moves to a direct path the lane comes up; back on relay it goes.
        assert s.migrate(b.local_address, "lan")
        await wait_for(lambda: s.lane is not None, timeout=10)
        lane = s.lane
        a._set_path(s, "relay", via_a)
        await wait_for(lambda: lane.closed and s.lane is None)
        stream = await s.open_stream("sink")
        assert not isinstance(stream._session, Lane)
        stream.close()
        assert await stream.read_all(limit=10) == b"done"
        await a.close()
        await b.close()

    run(body())


# --- the decoder, sans-I/O ------------------------------------------------------------------

_frames = st.one_of(
    st.builds(lambda sid, data: encode_header(LaneFrameType.DATA, sid, len(data)) + data,
              st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    st.builds(encode_credit, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(lambda t, sid: encode_empty(t, sid), st.sampled_from([LaneFrameType.FIN, LaneFrameType.RESET,
                                                                     LaneFrameType.HELLO]),
              st.integers(0, 2**32 - 1)),
    st.builds(lambda sid, name, meta: encode_open(sid, name, meta), st.integers(0, 2**32 - 1),
              st.text(max_size=50), st.dictionaries(st.text(max_size=8), st.integers(-2**63, 2**63 - 1), max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=20), st.lists(st.integers(1, 64), max_size=50))
def test_decoder_roundtrip_any_split(frames: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frames)
    decoder, out, i = LaneDecoder(), [], 0
    for cut in cuts + [len(wire)]:
        out.extend(decoder.feed(wire[i : i + cut]))
        i += cut
    out.extend(decoder.feed(wire[i:]))
    assert len(out) == len(frames) and decoder.buffered == 0
    for raw, frame in zip(frames, out):
        assert HEADER.unpack_from(raw)[:2] == (frame.type, frame.stream_id)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_decoder_rejects_garbage_cleanly(data: bytes) -> None:
    decoder = LaneDecoder()
    try:
        for frame in decoder.feed(data):
            assert frame.type in LaneFrameType
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # broken for good
            list(decoder.feed(b"\x02" + b"\0" * 8))
    assert decoder.buffered <= HEADER.size + MAX_DATA


def test_decoder_refuses_oversized_frames_from_the_header() -> None:
    decoder = LaneDecoder()
    with pytest.raises(RemoteProtocolError):
        list(decoder.feed(HEADER.pack(LaneFrameType.DATA, 0, MAX_DATA + 1)))
    with pytest.raises(RemoteProtocolError):
        list(LaneDecoder().feed(HEADER.pack(LaneFrameType.CREDIT, 0, 7) + b"\0" * 7))
    with pytest.raises(RemoteProtocolError):
        list(LaneDecoder().feed(HEADER.pack(0x7F, 0, 0)))
    bad_open = HEADER.pack(LaneFrameType.OPEN, 0, 3) + b"\x01\x02\x03"
    with pytest.raises(RemoteProtocolError):
        list(LaneDecoder().feed(bad_open))


def test_address_changes_end_the_lane_and_the_client_reopens_it() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        b.on_request("ping", _pong)
        inbound = b.sessions[a.device_id]
        # Our own addresses changed (pathmgr calls this): every lane goes, the session stays.
        first = inbound.lane
        assert first is not None
        b.drop_lanes("test: addresses changed")
        await wait_for(lambda: first.closed and s.lane is not first, timeout=15)
        assert await s.request("ping", {}) == {"pong": True}
        await wait_for(lambda: s.lane is not None and inbound.lane is not None, timeout=15)  # client re-dials
        # We moved to a new socket: same.
        second = s.lane
        await a.rebind()
        await wait_for(lambda: second.closed, timeout=15)
        await wait_for(lambda: s.lane is not None and not s.lane.closed, timeout=15)
        # The peer's path address changed: a lane over the old one is not used (and is closed).
        third = s.lane
        a._set_path(s, "lan", ("127.0.0.1", 9))
        assert not third.usable()
        await wait_for(lambda: third.closed, timeout=15)
        assert s.state == "up" and await s.request("ping", {}) == {"pong": True}
        await a.close()
        await b.close()

    run(body())


def test_streams_past_the_lane_limit_ride_quic_and_all_complete() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        received: list[bytes] = []

        async def collect(session: Session, stream: Stream) -> None:
            received.append(await stream.read_all(limit=1 << 20))
            await stream.write(b"done")

        b.on_stream("collect", collect)
        streams = [await s.open_stream("collect", {"i": i}) for i in range(MAX_LANE_STREAMS + 4)]
        kinds = [isinstance(st_._session, Lane) for st_ in streams]
        assert kinds == [True] * MAX_LANE_STREAMS + [False] * 4
        for i, stream in enumerate(streams):
            await stream.write(b"%d" % i)
            stream.close()
        for stream in streams:
            assert await stream.read_all(limit=10) == b"done"
        assert sorted(received) == sorted(b"%d" % i for i in range(MAX_LANE_STREAMS + 4))
        await a.close()
        await b.close()

    run(body())


def test_first_stream_right_after_connect_waits_briefly_for_the_lane() -> None:
    async def body() -> None:
        a, b = await pair(ENGINE)
        received: dict[str, Any] = {}
        b.on_stream("sink", lambda session, stream: _digest_sink(received, session, stream))
        s = await a.connect(b.device_id, b.local_address, path_kind="lan")
        stream = await s.open_stream("sink")  # the lane is still being set up at this point
        assert isinstance(stream._session, Lane)
        stream.close()
        assert await stream.read_all(limit=10) == b"done"
        await a.close()
        await b.close()

    run(body())


def test_peer_sending_past_its_credit_loses_the_lane_not_the_session() -> None:
    async def body() -> None:
        a, b, s = await _laned_pair()
        b.on_request("ping", _pong)
        never = asyncio.Event()

        async def idle(session: Session, stream: Stream) -> None:
            await never.wait()  # never reads: credit never comes back

        b.on_stream("idle", idle)
        stream = await s.open_stream("idle")
        lane = s.lane
        assert lane is not None
        inbound_lane = b.sessions[a.device_id].lane
        assert inbound_lane is not None
        chunk = os.urandom(MAX_DATA)
        for _ in range(STREAM_WINDOW // MAX_DATA + 4):  # bypass Stream.write's credit wait
            lane._write(encode_header(LaneFrameType.DATA, stream.stream_id, len(chunk)) + chunk)
        await wait_for(lambda: inbound_lane.closed, timeout=10)
        assert "protocol error" in inbound_lane.close_reason
        assert s.state == "up" and await s.request("ping", {}) == {"pong": True}
        await a.close()
        await b.close()

    run(body())


# --- the record layer (sans-I/O) ------------------------------------------------------------


def _record_pair() -> tuple[RecordSealer, RecordOpener]:
    keys_c, keys_s = LaneKeys.derive(b"s" * 32, is_client=True), LaneKeys.derive(b"s" * 32, is_client=False)
    assert keys_c.send == keys_s.receive and keys_c.receive == keys_s.send and keys_c.send != keys_c.receive
    return RecordSealer(keys_c.send), RecordOpener(keys_s.receive)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=8), st.lists(st.integers(0, 30000), max_size=8))
def test_records_roundtrip_any_split(messages: list[bytes], cuts: list[int]) -> None:
    sealer, opener = _record_pair()
    wire = b"".join(b"".join(sealer.seal(m)) for m in messages)
    plain = b"".join(messages)
    assert len(plain) < 16 or plain[:16] not in wire   # sealed, not cleartext
    out, prev = [], 0
    for cut in sorted(c for c in cuts if c <= len(wire)) + [len(wire)]:
        out += opener.feed(wire[prev:cut])
        prev = cut
    assert out == messages and opener.buffered == 0


def test_records_refuse_tampering_reordering_replay_and_reflection() -> None:
    sealer, opener = _record_pair()
    first, second = b"".join(sealer.seal(b"one")), b"".join(sealer.seal(b"two"))
    flipped = bytearray(first)
    flipped[-1] ^= 1
    for wire in (bytes(flipped), second + first, first + first):
        o = _record_pair()[1]
        with pytest.raises(RemoteProtocolError):
            o.feed(wire)
        with pytest.raises(RemoteProtocolError):   # broken for good: the lane must end
            o.feed(b"")
    # A record sent to the server cannot be played back to the client (one key per direction).
    client_opener = RecordOpener(LaneKeys.derive(b"s" * 32, is_client=True).receive)
    with pytest.raises(RemoteProtocolError):
        client_opener.feed(first)
    assert opener.feed(first + second) == [b"one", b"two"]


def test_record_opener_refuses_oversized_length_before_buffering_it() -> None:
    _, opener = _record_pair()
    with pytest.raises(RemoteProtocolError, match="record of"):
        opener.feed(b"\xff\xff\xff\xff" + b"x" * 100)
    assert opener.buffered == 0
    _, opener = _record_pair()
    with pytest.raises(RemoteProtocolError):
        opener.feed(b"\x00\x00\x00\x05" + b"x" * 5)   # shorter than a tag
