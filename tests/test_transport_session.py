"""Session conformance suite over real QUIC on loopback, run for every engine (qh3, aioquic)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transport_helpers import (ENGINES, close_all, connect_echo, echo, pair, run, run_pair, send_to_sink, sink,
                               wait_for)
from transport.endpoint import Endpoint
from transport.identity import DeviceIdentity
from transport.errors import LocalProtocolError, RequestFailed, RequestTimeout, SessionClosed
from transport.events import PathChanged, PeerDown, PeerUp
from transport.session import STREAM_WINDOW, Session, Stream

REPO = Path(__file__).resolve().parent.parent
engines = pytest.mark.parametrize("engine", ENGINES)
paths = pytest.mark.parametrize("path", ["direct", "relay"])


class _Wire:
    """A fake relay hop: carries QUIC datagrams to another endpoint's virtual address, one loop turn later."""

    def __init__(self, to: Endpoint, as_addr: tuple) -> None:
        self.to, self.as_addr, self.count = to, as_addr, 0

    def transmit(self, datagrams: list[bytes]) -> None:
        self.count += len(datagrams)
        items = [(d, self.as_addr) for d in datagrams]
        asyncio.get_running_loop().call_soon(self.to.inject_datagrams, items)


def wire_relay(a: Endpoint, b: Endpoint, via_a: tuple, via_b: tuple) -> tuple[_Wire, _Wire]:
    """A virtual relay path between a and b: a reaches b at `via_a`, b reaches a at `via_b`."""
    to_b, to_a = _Wire(b, via_b), _Wire(a, via_a)
    a.register_virtual_address(via_a, to_b)
    b.register_virtual_address(via_b, to_a)
    return to_b, to_a


async def dial(a: Endpoint, b: Endpoint, path: str) -> Session:
    """a connects to b directly or through a relay-like virtual path (the transport path conformance axis)."""
    if path == "direct":
        return await a.connect(b.device_id, b.local_address)
    via_a = ("relay", "r", 1, b.device_id.hex())
    wire_relay(a, b, via_a, ("relay", "r", 1, a.device_id.hex()))
    session = await a.connect(b.device_id, via_a, path_kind="relay")
    assert session.info().path == "relay"
    return session


@engines
def test_request_response_and_events(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        seen: list[object] = []
        a.subscribe(seen.append)
        b.on_request("echo", echo)
        session = await a.connect(b.device_id, b.local_address, path_kind="lan")
        assert await session.request("echo", {"x": [1, "two", b"3"]}) == {"echo": {"x": [1, "two", b"3"]}}
        assert await session.request("echo", b"raw") == {"echo": b"raw"}
        # the inbound side can request too, with a per-session handler
        await wait_for(lambda: a.device_id in b.sessions)

        async def whoami(s: Session, _: object) -> bytes:
            return s.peer_id

        session.on_request("whoami", whoami)
        assert await b.sessions[a.device_id].request("whoami", {}) == b.device_id
        info = session.info()
        assert info.peer_id == b.device_id and info.path == "lan" and info.addr == b.local_address
        assert info.rtt_ms is not None and 0 < info.rtt_ms < 1000
        assert await a.connect(b.device_id, b.local_address) is session  # reused, not redialled
        async def collect() -> list[object]:
            return [e async for e in b.events()]

        b_events = asyncio.create_task(collect())
        await asyncio.sleep(0)
        up = [e for e in seen if isinstance(e, PeerUp)]
        assert len(up) == 1 and up[0].peer_id == b.device_id and not up[0].inbound
        await b.close()
        assert any(isinstance(e, PeerDown) for e in await asyncio.wait_for(b_events, 5))  # ends at close
        await wait_for(lambda: any(isinstance(e, PeerDown) for e in seen))
        with pytest.raises(SessionClosed):
            await session.request("echo", {})

    run_pair(engine, body)


@engines
def test_unknown_type_handler_errors_and_messages(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        got: list[object] = []

        async def boom(s: Session, _: object) -> dict:
            raise ValueError("bug in handler")

        async def refuse(s: Session, _: object) -> dict:
            raise RequestFailed("not_found", "no such object")

        async def bad_return(s: Session, _: object) -> dict:
            return 42  # type: ignore[return-value]

        async def note(s: Session, body: object) -> None:
            got.append(body)

        b.on_request("boom", boom)
        b.on_request("refuse", refuse)
        b.on_request("bad", bad_return)
        b.on_request("echo", echo)
        b.on_message("note", note)
        s = await a.connect(b.device_id, b.local_address)
        with pytest.raises(RequestFailed) as info:
            await s.request("nope", {})
        assert info.value.code == "unknown_type"
        with pytest.raises(RequestFailed) as info:
            await s.request("boom", {})
        assert info.value.code == "handler_error"
        with pytest.raises(RequestFailed) as info:
            await s.request("refuse", {})
        assert (info.value.code, info.value.message) == ("not_found", "no such object")
        with pytest.raises(RequestFailed):
            await s.request("bad", {})
        s.send("note", {"n": 1})
        s.send("unknown-message", {"n": 2})  # dropped with a log line, never a crash
        s.send("note", {"n": 3})
        await wait_for(lambda: len(got) == 2)
        assert got == [{"n": 1}, {"n": 3}]
        with pytest.raises(LocalProtocolError):
            await s.request("echo", b"x" * (9 * 1024 * 1024))
        assert await s.request("echo", {}) == {"echo": {}}  # session still fine after all that

    run_pair(engine, body)


@paths
@engines
def test_timeout_and_cancellation_reach_the_handler(engine: str, path: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        started, cancelled = asyncio.Event(), []

        async def slow(s: Session, _: object) -> dict:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return {}

        b.on_request("slow", slow)
        b.on_request("echo", echo)
        s = await dial(a, b, path)
        with pytest.raises(RequestTimeout):
            await s.request("slow", {}, timeout=0.3)
        await wait_for(lambda: len(cancelled) == 1)
        started.clear()
        task = asyncio.create_task(s.request("slow", {}))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: len(cancelled) == 2)
        assert await s.request("echo", {"v": 1}) == {"echo": {"v": 1}}

    run_pair(engine, body)


@paths
@engines
@pytest.mark.slow
def test_50mb_stream_intact(engine: str, path: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        received = sink(b)
        s = await dial(a, b, path)
        await send_to_sink(s, received, 50 * 1024 * 1024, timeout=60, meta={"id": "blob1"}, chunk=1_000_003)
        assert received["meta"] == {"id": "blob1"}

    run_pair(engine, body, timeout=120)


@paths
@engines
def test_bidirectional_stream_and_unknown_stream_name(engine: str, path: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        async def upper(s: Session, stream: Stream) -> None:
            async for chunk in stream:
                await stream.write(chunk.upper())

        b.on_stream("upper", upper)
        s = await dial(a, b, path)
        stream = await s.open_stream("upper")
        await stream.write(b"hello ")
        await stream.write(b"world")
        stream.close()
        assert await stream.read_all(limit=100) == b"HELLO WORLD"
        refused = await s.open_stream("no-such-handler")
        with pytest.raises(SessionClosed):
            await refused.read()
        for _ in range(20):  # finished streams are forgotten on both sides (no leak per stream)
            st = await s.open_stream("upper")
            await st.write(b"x")
            st.close()
            assert await st.read_all(limit=10) == b"X"
        await wait_for(lambda: not s._streams and not b.sessions[a.device_id]._streams)

    run_pair(engine, body)


@paths
@engines
def test_backpressure_bounds_memory(engine: str, path: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        holder: dict[str, Stream] = {}
        release = asyncio.Event()

        async def lazy(s: Session, stream: Stream) -> None:
            holder["stream"] = stream
            await release.wait()
            while await stream.read(1 << 20):
                pass

        b.on_stream("lazy", lazy)
        s = await dial(a, b, path)
        stream = await s.open_stream("lazy")
        writer = asyncio.create_task(stream.write(os.urandom(4 * STREAM_WINDOW)))
        await asyncio.sleep(1.0)
        assert not writer.done(), "write must wait while the peer does not read"
        assert stream.unacknowledged <= STREAM_WINDOW
        await wait_for(lambda: "stream" in holder)
        assert holder["stream"].buffered <= STREAM_WINDOW
        release.set()
        await asyncio.wait_for(writer, 30)
        stream.close()
        await stream.drain()

    run_pair(engine, body)


@engines
def test_garbage_datagrams_and_malformed_frames_survived(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        s = await connect_echo(a, b)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for first in (0x00, 0x3F, 0x40, 0x7F, 0xC0, 0xFF):
            for size in (1, 20, 1200, 1400):
                raw.sendto(bytes([first]) + os.urandom(size - 1), b.local_address)
        # a long-header Initial-looking datagram with random content
        raw.sendto(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1300), b.local_address)
        raw.close()
        assert await s.request("echo", {"v": 1}) == {"echo": {"v": 1}}
        # now a malformed frame on the control stream: the peer ends that session only
        down = asyncio.Event()
        s._send_control(b"\x7e\x00\x00\x00\x01x")
        s2_closed = s.wait_closed()
        await asyncio.wait_for(s2_closed, 5)
        assert "unknown frame type" in s.close_reason  # the reason travels to the peer
        down.set()
        s3 = await a.connect(b.device_id, b.local_address)
        # an oversized frame header is refused before its body arrives
        s3._send_control(b"\x10\xff\xff\xff\xff")
        await asyncio.wait_for(s3.wait_closed(), 5)
        s4 = await a.connect(b.device_id, b.local_address)
        assert await s4.request("echo", {"v": 2}) == {"echo": {"v": 2}}

    run_pair(engine, body)


@engines
def test_virtual_relay_path_then_migration_to_direct(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        b.on_request("echo", echo)
        via_a, via_b = ("relay", "198.18.0.10", 7000, b.device_id.hex()), ("relay", "198.18.0.10", 7000, a.device_id.hex())
        to_b, to_a = wire_relay(a, b, via_a, via_b)
        events_b: list[object] = []
        b.subscribe(events_b.append)
        s = await a.connect(b.device_id, via_a, path_kind="relay")
        assert await s.request("echo", b"relayed") == {"echo": b"relayed"}
        assert to_b.count > 0 and to_a.count > 0
        assert s.info().path == "relay" and s.info().addr == via_a
        inbound = b.sessions[a.device_id]
        assert inbound.info().path == "relay" and inbound.info().addr == via_b
        assert s.migrate(b.local_address, "lan")
        assert await s.request("echo", b"direct") == {"echo": b"direct"}
        await wait_for(lambda: inbound.info().path == "lan")
        assert any(isinstance(e, PathChanged) and e.path == "lan" and e.addr == a.local_address for e in events_b)
        before = to_b.count
        for i in range(20):
            assert await s.request("echo", {"i": i}) == {"echo": {"i": i}}
        assert to_b.count - before <= 2  # payload no longer goes through the relay
        assert b.sessions[a.device_id] is inbound  # same session: upper layers noticed nothing

    run_pair(engine, body)


@engines
def test_peer_restart_reconnects(engine: str) -> None:
    async def body() -> None:
        seed_b = os.urandom(32)
        a = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine)
        b = await Endpoint.start("127.0.0.1", 0, seed_b, admit=lambda k: True, engine=engine)
        port = b.local_address[1]
        events: list[object] = []
        a.subscribe(events.append)
        a.keep(b.device_id, [("127.0.0.1", port)])
        await wait_for(lambda: b.device_id in a.sessions)
        first = a.sessions[b.device_id]
        await b.close()
        await wait_for(lambda: first.closed)
        b2 = await Endpoint.start("127.0.0.1", port, seed_b, admit=lambda k: True, engine=engine)
        b2.on_request("echo", echo)
        await wait_for(lambda: b.device_id in a.sessions and a.sessions[b.device_id].state == "up", timeout=10)
        assert await a.sessions[b.device_id].request("echo", b"back") == {"echo": b"back"}
        assert sum(isinstance(e, PeerUp) for e in events) == 2
        await a.close()
        await b2.close()

    run(body())


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from transport.endpoint import Endpoint

    async def main():
        port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
        ep = await Endpoint.start("127.0.0.1", port, bytes.fromhex(sys.argv[1]), admit=lambda k: True, engine=sys.argv[2])
        async def echo(s, body): return {"echo": body}
        async def slow(s, body):
            await asyncio.sleep(30)
            return {}
        ep.on_request("slow", slow)
        async def digest(s, stream):
            h = hashlib.sha256()
            async for c in stream: h.update(c)
            await stream.write(h.hexdigest().encode())
        ep.on_request("echo", echo)
        ep.on_stream("digest", digest)
        print(ep.local_address[1], flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def start_server(seed: bytes, engine: str, port: int = 0) -> tuple[subprocess.Popen, int]:
    """SERVER_SCRIPT as its own process on `port` (0: any); returns it and the port it bound."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, seed.hex(), engine, str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@engines
def test_two_processes(engine: str) -> None:
    seed = os.urandom(32)
    proc, port = start_server(seed, engine)
    try:
        async def body() -> None:
            from transport.identity import DeviceIdentity

            server_key = DeviceIdentity.from_seed(seed).public_key
            a = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: k == server_key, engine=engine)
            s = await a.connect(server_key, ("127.0.0.1", port))
            assert await s.request("echo", {"p": 1}) == {"echo": {"p": 1}}
            data = os.urandom(8 * 1024 * 1024)
            stream = await s.open_stream("digest")
            await stream.write(data)
            stream.close()
            assert (await stream.read_all(limit=100)).decode() == hashlib.sha256(data).hexdigest()
            await a.close()

        run(body())
    finally:
        proc.kill()
        proc.wait()


@engines
def test_device_move_keeps_sessions_both_roles(engine: str) -> None:
    """Our address changes under a running session (client moves, then server moves)."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        a.on_request("echo", echo)
        b.on_request("echo", echo)
        events_a: list[object] = []
        events_b: list[object] = []
        a.subscribe(events_a.append)
        b.subscribe(events_b.append)
        s = await a.connect(b.device_id, b.local_address)
        inbound = b.sessions[a.device_id]
        new_a = await a.rebind()  # the client walks to another network
        assert await s.request("echo", {"n": 1}) == {"echo": {"n": 1}}
        await wait_for(lambda: any(isinstance(e, PathChanged) and e.addr == new_a for e in events_b))
        assert inbound.info().addr == new_a and b.sessions[a.device_id] is inbound
        new_b = await b.rebind()  # now the server moves
        await wait_for(lambda: any(isinstance(e, PathChanged) and e.addr == new_b for e in events_a))
        assert await s.request("echo", {"n": 2}) == {"echo": {"n": 2}}
        assert await inbound.request("echo", {"n": 3}) == {"echo": {"n": 3}}
        assert a.sessions[b.device_id] is s and s.info().addr == new_b
        assert not any(isinstance(e, PeerDown) for e in events_a + events_b)

    run_pair(engine, body)


@engines
def test_idle_timeout_reports_peer_down_and_keepalive_holds(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        s = await connect_echo(a, b)
        events: list[object] = []
        a.subscribe(events.append)
        await asyncio.sleep(2.5)  # idle longer than the timeout: keepalives hold the session
        assert s.state == "up" and await s.request("echo", {}) == {"echo": {}}
        assert b._udp is not None
        b._udp.close()  # b vanishes without a word (power loss, network gone)
        await wait_for(lambda: s.closed, timeout=5)
        assert any(isinstance(e, PeerDown) and e.peer_id == b.device_id for e in events)

    run_pair(engine, body, idle_timeout=1.0)


def test_python_udp_path_with_gso() -> None:
    """The fallback I/O path (recvfrom loop, sendmsg + UDP_SEGMENT) carries a stream intact."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        assert a._udp is not None and a._udp.backend in ("gso", "plain")
        received = sink(b)
        s = await a.connect(b.device_id, b.local_address)
        await send_to_sink(s, received, 5 * 1024 * 1024, timeout=30)

    run_pair("qh3", body, native_udp=False)


@engines
def test_simultaneous_open_converges_on_one_connection(engine: str) -> None:
    async def body(a: Endpoint, b: Endpoint) -> None:
        a.on_request("echo", echo)
        b.on_request("echo", echo)
        sa, sb = await asyncio.gather(a.connect(b.device_id, b.local_address), b.connect(a.device_id, a.local_address))
        await asyncio.sleep(0.3)
        final_a, final_b = a.sessions[b.device_id], b.sessions[a.device_id]
        assert final_a.state == "up" and final_b.state == "up"
        assert final_a.is_client != final_b.is_client  # both ends kept the same connection
        assert await final_a.request("echo", {"from": "a"}) == {"echo": {"from": "a"}}
        assert await final_b.request("echo", {"from": "b"}) == {"echo": {"from": "b"}}

    run_pair(engine, body)


@engines
def test_more_concurrent_streams_than_the_peer_allows_wait_for_credit(engine: str) -> None:
    """300 streams at once (the peer grants 100): open_stream waits for MAX_STREAMS, none fails."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        async def hold(s: Session, stream: Stream) -> None:
            await stream.write(await stream.read_all(limit=100))

        b.on_stream("hold", hold)
        s = await a.connect(b.device_id, b.local_address)

        async def one(i: int) -> bytes:
            stream = await s.open_stream("hold")
            await stream.write(b"%d" % i)
            stream.close()
            return await stream.read_all(limit=10)

        outs = await asyncio.gather(*(one(i) for i in range(300)))
        assert outs == [b"%d" % i for i in range(300)]

    run_pair(engine, body)


@engines
def test_control_buffer_is_bounded_when_peer_stops_reading(engine: str) -> None:
    """A peer that takes nothing (gone silent): send() refuses past the limit instead of buffering forever."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        from transport.errors import SendBufferFull
        from transport.session import CONTROL_BUFFER_LIMIT

        s = await a.connect(b.device_id, b.local_address)
        assert b._udp is not None
        b._udp.close()  # b stops receiving anything
        blob = b"m" * (1024 * 1024)
        with pytest.raises(SendBufferFull):
            for _ in range(2 * CONTROL_BUFFER_LIMIT // len(blob) + 40):
                s.send("note", blob)
        with pytest.raises(RequestTimeout):  # requests wait for room, within their timeout
            await s.request("echo", {}, timeout=0.5)

    run_pair(engine, body)


@engines
def test_spoofed_datagram_does_not_redirect_a_client(engine: str) -> None:
    """A forged short-header packet with our connection id from another address is ignored."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        s = await connect_echo(a, b)
        cid = next(iter(s.cids))
        spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spoofer.bind(("127.0.0.1", 0))
        for _ in range(5):
            spoofer.sendto(bytes([0x40]) + cid + os.urandom(60), a.local_address)
        await asyncio.sleep(0.2)
        assert s.route == b.local_address and s.info().addr == b.local_address
        assert await s.request("echo", {"still": "here"}) == {"echo": {"still": "here"}}
        spoofer.close()

    run_pair(engine, body)


@engines
def test_server_side_migrate_steers_the_client_to_the_direct_path(engine: str) -> None:
    """The side that accepted a relayed session finds the direct path first: the session still moves."""

    async def body(a: Endpoint, b: Endpoint) -> None:
        b.on_request("echo", echo)
        via_a = ("relay", "r", 1, "b")
        to_b, to_a = wire_relay(a, b, via_a, ("relay", "r", 1, "a"))
        s = await a.connect(b.device_id, via_a, path_kind="relay")
        inbound = b.sessions[a.device_id]
        assert inbound.migrate(a.local_address, "lan")  # b is the QUIC server of this connection
        for i in range(5):
            assert await s.request("echo", {"i": i}) == {"echo": {"i": i}}
        await wait_for(lambda: s.info().addr == b.local_address and inbound.info().addr == a.local_address)
        before = to_b.count + to_a.count
        for i in range(20):
            assert await s.request("echo", {"i": i}) == {"echo": {"i": i}}
        assert to_b.count + to_a.count - before <= 2

    run_pair(engine, body)


def test_runs_on_uvloop() -> None:
    """The endpoint keeps `now` on time.monotonic(), so uvloop's coarse clock does not make it spin."""
    uvloop = pytest.importorskip("uvloop")

    async def body() -> None:
        a, b = await pair("qh3")
        s = await connect_echo(a, b)
        received = sink(b)
        assert await s.request("echo", {"loop": "uv"}) == {"echo": {"loop": "uv"}}
        await send_to_sink(s, received, 4 * 1024 * 1024, timeout=20)
        await close_all(a, b)

    uvloop.run(asyncio.wait_for(body(), 60))


@pytest.mark.parametrize("client,server", [("qh3", "aioquic"), ("aioquic", "qh3")])
def test_engines_interoperate(client: str, server: str) -> None:
    """A cross-check between the two QUIC implementations: same wire, same auth, same framing."""

    async def body() -> None:
        seed_a, seed_b = os.urandom(32), os.urandom(32)
        a = await Endpoint.start("127.0.0.1", 0, seed_a, admit=lambda k: True, engine=client)
        b = await Endpoint.start("127.0.0.1", 0, seed_b, admit=lambda k: True, engine=server)
        b.on_request("echo", echo)
        received = sink(b)
        s = await a.connect(b.device_id, b.local_address)
        assert await s.request("echo", {"x": 1}) == {"echo": {"x": 1}}
        await send_to_sink(s, received, 2 * 1024 * 1024, timeout=20)
        await close_all(a, b)

    run(body())


@engines
def test_two_processes_timeout_unknown_type_and_kill9_restart(engine: str) -> None:
    """Across processes: a timeout, an unknown type, then the peer is killed (-9) and restarted."""
    seed = os.urandom(32)
    proc, port = start_server(seed, engine)
    try:
        async def body() -> None:
            nonlocal proc
            from transport.identity import DeviceIdentity

            server_key = DeviceIdentity.from_seed(seed).public_key
            a = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: k == server_key, engine=engine,
                                     idle_timeout=2.0)
            events: list[object] = []
            a.subscribe(events.append)
            a.keep(server_key, [("127.0.0.1", port)])
            await wait_for(lambda: server_key in a.sessions, timeout=10)
            s = a.sessions[server_key]
            with pytest.raises(RequestTimeout):
                await s.request("slow", {}, timeout=0.3)
            with pytest.raises(RequestFailed) as info:
                await s.request("nope", {})
            assert info.value.code == "unknown_type"
            proc.kill()  # no goodbye: our side learns it from the idle timeout
            proc.wait()
            await wait_for(lambda: any(isinstance(e, PeerDown) for e in events), timeout=10)
            proc, _ = start_server(seed, engine, port)
            await wait_for(lambda: server_key in a.sessions and a.sessions[server_key].state == "up", timeout=15)
            assert await a.sessions[server_key].request("echo", {"again": True}) == {"echo": {"again": True}}
            await a.close()

        run(body())
    finally:
        proc.kill()
        proc.wait()


@engines
def test_a_restarted_peer_replaces_its_old_session_at_once(engine: str) -> None:
    """A peer process that restarts within the simultaneous-open window (same key, new instance)
    wins at once, even where the tie-break by key would keep a simultaneous-open duplicate:
    before, the old session to the dead process was kept and the restarted node could not connect."""
    async def body() -> None:
        seeds = sorted((os.urandom(32) for _ in range(2)),
                       key=lambda s: DeviceIdentity.from_seed(s).public_key)
        small, big = seeds                     # the tie-break keeps the session the smaller key dialled
        keys = {DeviceIdentity.from_seed(s).public_key for s in seeds}
        x = await Endpoint.start("127.0.0.1", 0, small, admit=lambda k: k in keys, engine=engine)
        y1 = await Endpoint.start("127.0.0.1", 0, big, admit=lambda k: k in keys, engine=engine)
        y2 = None
        try:
            x.on_request("echo", echo)
            old = await x.connect(y1.device_id, y1.local_address)
            y2 = await Endpoint.start("127.0.0.1", 0, big, admit=lambda k: k in keys, engine=engine)
            assert y2.instance != y1.instance
            new = await asyncio.wait_for(y2.connect(x.device_id, x.local_address), 1.0)
            assert await new.request("echo", {"i": 1}) == {"echo": {"i": 1}}
            assert x.sessions[y2.device_id] is not old and old.state == "closed"
        finally:
            await close_all(x, y1, y2)

    run(body())
