"""The Endpoint: one UDP socket per node carrying QUIC (both roles) and pcloud control datagrams.

Theory of operation:
- Demultiplexing by first byte (RFC 9443): 0x00-0x3F are pcloud control datagrams
  (rendezvous / punch / relay, handled by the layer that registered
  `set_control_handler`); 0x40-0xFF are QUIC, routed by destination connection id.
  An Initial packet with an unknown id (>= 1200 bytes, QUIC v1) starts a server
  connection; anything else unroutable is dropped and counted.
- Batching: each socket wake-up drains up to 64 datagrams, feeds them grouped per
  connection, then each touched connection transmits once (GSO trains) and one
  endpoint-wide timer is re-armed for the earliest connection deadline.
- Paths: the engine sends to (host, port) tuples. A *virtual address* (e.g. a relay
  route) is mapped to a reserved fake IPv6 tuple (fd70:636c::/64) the engines accept;
  datagrams the engine sends there go to the registered PathTransmitter, and
  `inject_datagram` feeds unwrapped relayed datagrams back as if from that address.
- Migration: a server-side connection follows the client's new source address after
  QUIC path validation (device moved, relay -> direct by the client). A client-side
  connection keeps one stable engine address for the server and the endpoint routes it
  (`Session.route`): `Session.migrate` moves our traffic, and a server that starts
  answering from a new address is followed.
- `now` is always time.monotonic().
"""
from __future__ import annotations

import asyncio
import os
import logging
import socket
import time
from typing import Any, AsyncIterator, Callable

from transport.errors import (
    AuthenticationError,
    LocalProtocolError,
    PeerUnreachable,
    RemoteProtocolError,
    TransportError,
)
from transport.events import PathChanged, PeerDown, PeerInfo, PeerUp, TransportEvent
from transport.identity import DeviceIdentity, short_id
from transport.lane import LaneService, lane_enabled
from transport.quic_engine import CidIssued, CidRetired, Engine, get_engine, parse_dcid
from transport.session import ERR_SUPERSEDED, MessageHandler, RequestHandler, Session, StreamHandler
from transport.udp import UdpIO
from transport.vaddr import PathTransmitter, VirtualAddresses, check_ip_tuple, default_path_kind

log = logging.getLogger("transport.endpoint")

MAX_HANDSHAKING = 256
KEEPALIVE_INTERVAL = 5.0
SIMULTANEOUS_OPEN_WINDOW = 2.0
INSTANCE_SIZE = 8
EVENT_QUEUE = 1000


class Endpoint:
    """One UDP socket carrying QUIC sessions to peer devices. Create with `await Endpoint.start(...)`.

    Example::

        ep = await Endpoint.start("0.0.0.0", 4433, seed, admit=lambda key: key in members)
        ep.on_request("ping", handler)             # every session, inbound and outbound
        session = await ep.connect(peer_key, ("192.168.1.20", 4433), path_kind="lan")
        async for event in ep.events(): ...
    """

    def __init__(self, identity: DeviceIdentity, admit: Callable[[bytes], bool], engine: Engine,
                 path_classifier: Callable[[Any], str], keepalive_interval: float) -> None:
        self.identity = identity
        self.instance = os.urandom(INSTANCE_SIZE)
        "random per process: tells a restarted peer from a second connection of the same one"
        "our device key pair and certificate"
        self._admit = admit
        self._engine = engine
        self._paths = VirtualAddresses(path_classifier)
        self._keepalive_interval = keepalive_interval
        self._loop = asyncio.get_running_loop()
        self._udp: UdpIO | None = None
        self.sessions: dict[bytes, Session] = {}
        "authenticated sessions by peer device key"
        self._by_cid: dict[bytes, Session] = {}
        self._all: set[Session] = set()
        self._control_handler: Callable[[bytes, Any], None] | None = None
        self._request_handlers: dict[str, RequestHandler] = {}
        self._message_handlers: dict[str, MessageHandler] = {}
        self._stream_handlers: dict[str, StreamHandler] = {}
        self._session_callbacks: list[Callable[[Session], None]] = []
        self._subscribers: list[Callable[[TransportEvent], None]] = []
        self._queues: list[asyncio.Queue[TransportEvent | None]] = []
        self._deadlines: dict[Session, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._dirty: set[Session] = set()
        self._flush_scheduled = False
        self._connecting: dict[bytes, asyncio.Task[Session]] = {}
        self._kept: dict[bytes, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.dropped = 0
        "QUIC datagrams dropped because no connection matched"
        self._guest_admit: Callable[[bytes], bool] | None = None
        self._guest_requests: frozenset[str] = frozenset()
        self._guests: set[Session] = set()
        self._max_guests = 32
        self._guest_lifetime = 120.0
        self._lane: LaneService | None = None
        "the TCP bulk lane listener (transport.lane), when enabled"

    # --- lifecycle -----------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        signing_key_seed: bytes,
        admit: Callable[[bytes], bool],
        *,
        engine: str | None = None,
        max_datagram_size: int = 1200,
        idle_timeout: float = 30.0,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        path_classifier: Callable[[Any], str] = default_path_kind,
        native_udp: bool = True,
        tcp_lane: bool | None = None,
    ) -> Endpoint:
        """Bind `host:port` (port 0 picks one) and start serving.

        `admit(peer_key) -> bool` is asked on every connection, both directions, so
        revocations apply to the next connection at once (close existing sessions with
        `drop_peer`). `engine` is 'qh3' or 'aioquic' (default: $PCLOUD_QUIC_ENGINE or qh3).
        `tcp_lane` also listens on TCP (same port number when free) so sessions on LAN/direct
        paths carry their streams over the TCP bulk lane (transport.lane); None means
        $PCLOUD_TCP_LANE ('0' turns it off), else ON. Relay paths and peers that TCP cannot
        reach stay on QUIC.
        """
        identity = DeviceIdentity.from_seed(signing_key_seed)
        # Keepalives must beat the idle timeout (and hold NAT mappings open).
        keepalive_interval = min(keepalive_interval, idle_timeout / 3)
        ep = cls(identity, admit, get_engine(engine, max_datagram_size=max_datagram_size, idle_timeout=idle_timeout),
                 path_classifier, keepalive_interval)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot bind UDP {host}:{port}: {exc}") from exc
        ep._udp = UdpIO(ep._loop, sock, ep._on_datagrams, native=native_udp)
        if lane_enabled(tcp_lane):
            try:
                ep._lane = await LaneService.start(ep, host, ep.local_address[1])
            except TransportError:
                ep._udp.close()
                raise
        ep._spawn(ep._keepalive_loop())
        log.info("endpoint %s listening on %s (engine %s, udp %s)", short_id(identity.public_key),
                 ep.local_address, ep._engine.name, ep._udp.backend)
        return ep

    @property
    def device_id(self) -> bytes:
        """Our Ed25519 public key."""
        return self.identity.public_key

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self._udp is not None
        return self._udp.local_address()

    @property
    def lane_port(self) -> int | None:
        """The TCP port of the bulk lane listener, None when the lane is off."""
        return self._lane.port if self._lane is not None else None

    @property
    def engine_name(self) -> str:
        return self._engine.name

    def peers(self) -> list[PeerInfo]:
        """One PeerInfo per session that is up (what `pcloud status --json` lists)."""
        return [s.info() for s in self.sessions.values() if s.state == "up"]

    async def close(self) -> None:
        """Close every session (peers are told), stop reconnecting, release the socket."""
        if self._closed:
            return
        for task in list(self._kept.values()) + list(self._tasks) + list(self._connecting.values()):
            task.cancel()
        for session in list(self._all):
            session.close("endpoint shutting down")
        self._flush()
        self._closed = True
        if self._lane is not None:
            self._lane.close()
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()

    # --- upper-layer registration ----------------------------------------------------------
    def on_session(self, callback: Callable[[Session], None]) -> None:
        """Call `callback(session)` for each session that comes up (inbound and outbound)."""
        self._session_callbacks.append(callback)

    def on_request(self, msg_type: str, handler: RequestHandler) -> None:
        """Answer `msg_type` requests on every session: `await handler(session, body) -> dict|bytes`."""
        self._request_handlers[msg_type] = handler

    def on_message(self, msg_type: str, handler: MessageHandler) -> None:
        """Receive fire-and-forget `msg_type` messages on every session."""
        self._message_handlers[msg_type] = handler

    def on_stream(self, name: str, handler: StreamHandler) -> None:
        """Accept bulk streams named `name` on every session: `await handler(session, stream)`."""
        self._stream_handlers[name] = handler

    def allow_guests(self, admit_guest: Callable[[bytes], bool] | None, requests: frozenset[str] = frozenset(),
                     max_guests: int = 32, lifetime: float = 120.0) -> None:
        """Let devices that `admit` refuses in as *guests* when `admit_guest(key)` says so.

        A guest session (``session.guest``) proves its key like any other, but only
        requests whose type is in `requests` reach a handler (others are answered
        ``forbidden``); its messages and streams are refused. It never enters
        `sessions`, never emits PeerUp/PeerDown and is not passed to `on_session`
        callbacks, so no upper layer (Raft, replication) ever sees it. pcloud uses it
        for a device that is joining with an invitation code. `None` turns guests off.
        At most `max_guests` guest sessions are up at once (more are refused at
        authentication), and each is closed `lifetime` seconds after it came up.
        """
        self._guest_admit = admit_guest
        self._guest_requests = frozenset(requests)
        self._max_guests = max_guests
        self._guest_lifetime = lifetime

    def subscribe(self, callback: Callable[[TransportEvent], None]) -> None:
        """Call `callback(event)` for every PeerUp / PeerDown / PathChanged / AuthFailed."""
        self._subscribers.append(callback)

    async def events(self) -> AsyncIterator[TransportEvent]:
        """Iterate over transport events from now on (the oldest are dropped past 1000 unread).

        The iteration ends when the endpoint closes.
        """
        queue: asyncio.Queue[TransportEvent | None] = asyncio.Queue(EVENT_QUEUE)
        self._queues.append(queue)
        try:
            while not self._closed:
                event = await queue.get()
                if event is None:  # the endpoint closed: iteration ends
                    return
                yield event
        finally:
            self._queues.remove(queue)

    def set_control_handler(self, handler: Callable[[bytes, Any], None] | None) -> None:
        """Route datagrams whose first byte is 0x00-0x3F to `handler(data, addr)`."""
        self._control_handler = handler

    def send_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one raw datagram (a control datagram: first byte must be 0x00-0x3F)."""
        if not data or data[0] >= 0x40:
            raise LocalProtocolError("control datagrams start with a byte in 0x00-0x3F (RFC 9443 demux)")
        assert self._udp is not None
        self._udp.send([data], check_ip_tuple(addr))

    def send_datagrams(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        """Send several control datagrams to one address in one go (GSO when sizes allow)."""
        if any(not d or d[0] >= 0x40 for d in datagrams):
            raise LocalProtocolError("control datagrams start with a byte in 0x00-0x3F (RFC 9443 demux)")
        assert self._udp is not None
        self._udp.send(datagrams, check_ip_tuple(addr))

    def register_virtual_address(self, addr: Any, transmitter: PathTransmitter, path_kind: str = "relay") -> None:
        """Make `addr` (any hashable tuple) reachable through `transmitter` for QUIC."""
        self._paths.register(addr, transmitter, path_kind)

    def unregister_virtual_address(self, addr: Any) -> None:
        """Forget a virtual address; datagrams for it are dropped from now on."""
        self._paths.unregister(addr)

    def inject_datagram(self, data: bytes, addr: Any) -> None:
        """Feed a QUIC datagram that arrived through virtual `addr` (e.g. unwrapped by the relay client)."""
        fake = self._paths.fake_for(addr)
        if fake is None:
            raise LocalProtocolError(f"{addr!r} is not a registered virtual address")
        self._on_datagrams([(data, fake)])

    async def rebind(self, host: str | None = None, port: int = 0) -> tuple[str, int]:
        """Move to a new local socket (our address changed, or to test mobility); sessions stay.

        Every session is pinged at once from the new address, so peers migrate to it
        (RFC 9000 section 9: the server side validates our new path; a client peer follows
        its server's new address) without waiting for the next keepalive.
        """
        assert self._udp is not None
        old = self._udp
        host = host if host is not None else old.local_address()[0]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot bind UDP {host}:{port}: {exc}") from exc
        self._udp = UdpIO(self._loop, sock, self._on_datagrams, native=old.backend == "native")
        old.close()
        self.drop_lanes("endpoint moved to a new socket")
        for session in list(self.sessions.values()):
            session.send_ping()
        log.info("endpoint moved to %s", self.local_address)
        return self.local_address

    def inject_datagrams(self, items: list[tuple[bytes, Any]]) -> None:
        """Batch form of `inject_datagram`: feed all, then transmit once per connection.

        Datagrams for an address no longer registered are dropped (counted in `dropped`):
        the relay may still deliver a few after its path was removed.
        """
        batch = []
        for data, addr in items:
            fake = self._paths.fake_for(addr)
            if fake is None:
                self.dropped += 1
                continue
            batch.append((data, fake))
        if batch:
            self._on_datagrams(batch)

    def drop_lanes(self, reason: str = "our addresses changed") -> None:
        """Close every TCP bulk lane (transport.lane): call when our own addresses change.

        Their TCP connections run over the old addresses and may be dead without knowing it;
        streams on them fail, new streams use QUIC until a lane for the new path is set up.
        """
        if self._lane is not None:
            self._lane.drop_all(reason)

    def drop_peer(self, peer_key: bytes, reason: str = "revoked") -> None:
        """Close the session with `peer_key` now (e.g. after revoking it) and stop keeping it."""
        self.unkeep(peer_key)
        for session in [s for s in self._all if s.peer_id == peer_key]:
            session.close(reason)

    # --- dialling ------------------------------------------------------------------------
    async def connect(self, peer_key: bytes, addr: Any, path_kind: str = "direct", timeout: float = 10.0) -> Session:
        """Open (or reuse) an authenticated session with device `peer_key` at `addr`.

        `addr` is (ip, port) or a registered virtual address. Raises AuthenticationError
        when the peer is not `peer_key` or is not admitted, PeerUnreachable when nothing
        answers within `timeout` seconds.
        """
        existing = self.sessions.get(peer_key)
        if existing is not None and existing.state == "up":
            return existing
        pending = self._connecting.get(peer_key)
        if pending is not None:
            return await asyncio.shield(pending)
        task = self._loop.create_task(self._dial(peer_key, addr, path_kind, timeout))
        self._connecting[peer_key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting.pop(peer_key, None)

    async def connect_unpinned(self, addr: Any, accept_server: Callable[[bytes], bool], path_kind: str = "direct",
                               timeout: float = 10.0) -> Session:
        """Open a new session with whatever device answers at `addr`, if `accept_server(key)` agrees.

        For a device that does not know its peer's key yet and will authenticate it by
        other means (joining with an invitation code: the code names a key prefix, the
        PAKE then proves the rest). `accept_server` replaces both the pin and `admit`
        for this one connection; the server's key is still proven by TLS, and
        ``session.peer_id`` holds it once the session is up. Never reuses a session.
        Raises AuthenticationError when `accept_server` refuses, PeerUnreachable on timeout.
        """
        return await self._dial(None, addr, path_kind, timeout, accept_server)

    async def _dial(self, peer_key: bytes | None, addr: Any, path_kind: str, timeout: float,
                    accept_server: Callable[[bytes], bool] | None = None) -> Session:
        if self._closed:
            raise PeerUnreachable("endpoint is closed")
        engine_addr = self._engine_address(addr)
        conn = self._engine.client(self.identity)
        session = Session(self, conn, True, peer_key, engine_addr)
        session.accept_server = accept_server
        self._set_path(session, path_kind, addr, emit=False)
        self._register(session)
        conn.connect(engine_addr, time.monotonic())
        self._process(session)
        self._flush()
        deadline = time.monotonic() + timeout
        try:
            return await asyncio.wait_for(session.wait_ready(), timeout)
        except TimeoutError:
            session.close("connect timed out")
            who = short_id(peer_key) if peer_key else "a device"
            raise PeerUnreachable(f"no answer from {who} at {addr!r} within {timeout}s") from None
        except TransportError:
            if not session.superseded or peer_key is None:
                raise
            # The peer dialled us at the same time and its connection won: use that one.
            while time.monotonic() < deadline:
                winner = self.sessions.get(peer_key)
                if winner is not None and winner.state == "up":
                    return winner
                await asyncio.sleep(0.02)
            raise
        finally:
            if peer_key is not None:
                self._connecting.pop(peer_key, None)

    def keep(self, peer_key: bytes, addr_candidates: list[tuple[Any, str]] | list[Any]) -> None:
        """Keep a session with `peer_key` open: reconnect with exponential backoff when it drops.

        `addr_candidates` are tried in order: each an address, or (address, path_kind).
        Calling again replaces the candidates.
        """
        candidates = [c if (isinstance(c, tuple) and len(c) == 2 and isinstance(c[1], str) and isinstance(c[0], tuple))
                      else (c, "direct") for c in addr_candidates]
        old = self._kept.pop(peer_key, None)
        if old is not None:
            old.cancel()
        self._kept[peer_key] = self._loop.create_task(self._keep_loop(peer_key, candidates))

    def unkeep(self, peer_key: bytes) -> None:
        """Stop reconnecting to `peer_key` (an open session stays open)."""
        task = self._kept.pop(peer_key, None)
        if task is not None:
            task.cancel()

    async def _keep_loop(self, peer_key: bytes, candidates: list[tuple[Any, str]]) -> None:
        delay = 0.25
        while not self._closed:
            session = self.sessions.get(peer_key)
            if session is not None and session.state == "up":
                delay = 0.25
                await session.wait_closed()
                continue
            for addr, kind in candidates:
                try:
                    await self.connect(peer_key, addr, kind, timeout=3.0)
                    break
                except AuthenticationError as exc:
                    log.warning("keep %s: %s", short_id(peer_key), exc)
                except TransportError as exc:
                    log.debug("keep %s via %r failed: %s", short_id(peer_key), addr, exc)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # --- paths ---------------------------------------------------------------------------
    def _engine_address(self, addr: Any) -> tuple[str, int]:
        return self._paths.engine_address(addr)

    def _public_address(self, engine_addr: Any) -> Any:
        return self._paths.public(engine_addr)

    def _kind_of(self, engine_addr: Any) -> str:
        return self._paths.kind(engine_addr)

    def _set_path(self, session: Session, kind: str, addr: Any, emit: bool = True) -> None:
        if session.path == kind and session.addr == addr:
            return
        session.path, session.addr = kind, addr
        if emit and session.state == "up":
            self._emit(PathChanged(session.peer_id, kind, addr, session.info().rtt_ms))

    # --- datagram path -------------------------------------------------------------------
    def _on_datagrams(self, batch: list[tuple[bytes, Any]]) -> None:
        now = time.monotonic()
        groups: list[tuple[Session, Any, list[bytes]]] = []
        last_cid = b""
        last_addr: Any = None
        for data, addr in batch:
            if not data:
                continue
            first = data[0]
            if first < 0x40:
                self._on_control(data, addr)
                continue
            # Fast path for a train of short-header packets of one connection (bulk transfer).
            if not first & 0x80 and groups and addr == last_addr and data[1:9] == last_cid:
                groups[-1][2].append(data)
                continue
            session = self._route(data, addr, now)
            if session is None:
                self.dropped += 1
                continue
            last_cid, last_addr = (data[1:9], addr) if not first & 0x80 else (b"", None)
            if groups and groups[-1][0] is session and groups[-1][1] == addr:
                groups[-1][2].append(data)
            else:
                groups.append((session, addr, [data]))
        touched: dict[Session, None] = {}
        for session, addr, datagrams in groups:
            self._feed(session, datagrams, addr, now)
            touched[session] = None
        for session in touched:
            self._process(session)
        self._flush()

    def _on_control(self, data: bytes, addr: Any) -> None:
        handler = self._control_handler
        if handler is None:
            return
        try:
            handler(data, self._public_address(addr))
        except TransportError as exc:
            log.info("control datagram from %r rejected: %s", addr, exc)
        except Exception:  # the control layer's bug must not drop the QUIC datagrams of this batch
            log.exception("control handler failed on a datagram from %r", addr)

    def _route(self, data: bytes, addr: Any, now: float) -> Session | None:
        parsed = parse_dcid(data)
        if parsed is None:
            return None
        dcid, is_long, is_initial = parsed
        session = self._by_cid.get(dcid)
        if session is not None:
            return session
        if not is_initial or len(data) < 1200 or self._closed:
            return None
        if sum(1 for s in self._all if s.state in ("handshake", "auth")) >= MAX_HANDSHAKING:
            log.warning("too many handshakes in progress; Initial from %r dropped", addr)
            return None
        conn = self._engine.server(self.identity, dcid)
        session = Session(self, conn, False, None, addr)
        self._set_path(session, self._kind_of(addr), self._public_address(addr), emit=False)
        self._register(session)
        self._by_cid[dcid] = session
        session.cids.add(dcid)
        return session

    def _feed(self, session: Session, datagrams: list[bytes], addr: Any, now: float) -> None:
        try:
            if session.is_client and addr != session.route and now >= session.pinned_until:
                # The server answers from a new address (it moved). Follow it only if what
                # came from there decrypts: a spoofed datagram with our CID cannot redirect us.
                if self._engine.receive_authenticated(session._conn, datagrams, session.engine_addr, now):
                    session.route = addr
                    self._set_path(session, self._kind_of(addr), self._public_address(addr))
                return
            if session.is_client:
                addr = session.engine_addr
            self._engine.receive_many(session._conn, datagrams, addr, now)
        except self._engine.errors as exc:
            # A datagram the engine chokes on is the peer's problem: end that session only.
            log.warning("engine rejected datagrams from %r: %s", addr, exc)
            session._protocol_violation(RemoteProtocolError(f"engine error: {exc}"))

    def _process(self, session: Session) -> None:
        """Drain engine events into the session, then note its timer and path."""
        for event in self._engine.events(session._conn):
            if isinstance(event, CidIssued):
                self._by_cid[event.cid] = session
                session.cids.add(event.cid)
            elif isinstance(event, CidRetired):
                self._by_cid.pop(event.cid, None)
                session.cids.discard(event.cid)
            else:
                session.handle(event)
        session._progress.set()  # MAX_STREAMS or ACKs may have arrived; waiters re-check
        if not session.is_client and session.state != "closed":
            current = self._engine.peer_address(session._conn)
            if current is not None and current != session.engine_addr:
                session.engine_addr = current
                self._set_path(session, self._kind_of(current), self._public_address(current))
        self._dirty.add(session)

    def _want_flush(self, session: Session) -> None:
        self._dirty.add(session)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Transmit for every session with pending output and re-arm the timer."""
        self._flush_scheduled = False
        if self._udp is None or self._closed:
            return
        now = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        for session in dirty:
            self._transmit(session, now)
            timer = session._conn.get_timer()
            if timer is None or session not in self._all:
                self._deadlines.pop(session, None)
            else:
                self._deadlines[session] = timer
        self._rearm()

    def _transmit(self, session: Session, now: float) -> None:
        try:
            datagrams = self._engine.datagrams_to_send(session._conn, now)
        except self._engine.errors as exc:
            log.warning("engine failed to build datagrams for %s: %s", short_id(session.peer_id), exc)
            return
        for dest, payload in datagrams:
            target = session.route if session.is_client else (dest[0], dest[1])  # qh3 may add IPv6 flow/scope
            if session.steer is not None:
                steer, until = session.steer
                if target == steer or now > until:
                    session.steer = None  # the client followed (or never will)
                else:
                    target = steer
            self._send_to(target, payload)

    def _send_to(self, target: Any, payload: list[bytes]) -> None:
        transmitter = self._paths.transmitter(target)
        if transmitter is not None:
            transmitter.transmit(payload)
        elif self._paths.is_fake(target):
            pass  # a virtual address that was unregistered: the path is gone
        else:
            assert self._udp is not None
            self._udp.send(payload, target)

    def _rearm(self) -> None:
        if not self._deadlines:
            return
        earliest = min(self._deadlines.values())
        if self._timer is not None and self._timer_at is not None and self._timer_at <= earliest:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = earliest
        self._timer = self._loop.call_later(max(0.0, earliest - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        for session, deadline in list(self._deadlines.items()):
            if deadline <= now + 0.0005:
                del self._deadlines[session]
                try:
                    session._conn.handle_timer(now)
                except self._engine.errors as exc:
                    session._protocol_violation(RemoteProtocolError(f"engine error on timer: {exc}"))
                self._process(session)
        self._flush()

    # --- session bookkeeping (called by Session) ------------------------------------------
    def _register(self, session: Session) -> None:
        self._all.add(session)
        host_cid = session._conn.host_cid
        self._by_cid[host_cid] = session
        session.cids.add(host_cid)

    def _session_up(self, session: Session) -> None:
        peer = session.peer_id
        if session.guest:
            # Guests stay invisible to the upper layers: only their whitelisted requests run.
            log.info("guest session up with %s via %s %r", short_id(peer), session.path, session.addr)
            self._guests.add(session)
            self._loop.call_later(self._guest_lifetime, session.close, "guest session lifetime over")
            session._ready.set_result(session)
            return
        existing = self.sessions.get(peer)
        if existing is not None and existing is not session and existing.state == "up":
            assert existing.up_since is not None
            # Both dialled at once: keep the one dialled by the smaller key, so both sides agree.
            # Otherwise the newer wins: the old one is likely dead. A peer that restarted (another
            # process instance) always wins at once: its old session is certainly dead, and keeping
            # it would leave the restarted node unable to connect until the window passes.
            restarted = existing.peer_instance != session.peer_instance and None not in (
                existing.peer_instance, session.peer_instance)
            simultaneous = not restarted and time.monotonic() - existing.up_since < SIMULTANEOUS_OPEN_WINDOW
            keep_existing = simultaneous and _client_key(existing, self) < _client_key(session, self)
            if keep_existing:
                session._ready.set_result(existing)
                session.close("duplicate session (simultaneous open)", ERR_SUPERSEDED)
                return
            self.sessions[peer] = session
            existing.close("replaced by a newer session", ERR_SUPERSEDED)
        self.sessions[peer] = session
        log.info("session up with %s via %s %r (%s)", short_id(peer), session.path, session.addr,
                 "inbound" if session.inbound else "outbound")
        session._ready.set_result(session)
        self._emit(PeerUp(peer, session.path, session.addr, session.info().rtt_ms, session.inbound))
        for callback in self._session_callbacks:
            try:
                callback(session)
            except Exception:  # same: the upper layer's bug stays in the upper layer
                log.exception("on_session callback failed")

    def _session_closed(self, session: Session, reason: str, was_up: bool) -> None:
        self._all.discard(session)
        self._guests.discard(session)
        self._deadlines.pop(session, None)
        for cid in session.cids:
            if self._by_cid.get(cid) is session:
                del self._by_cid[cid]
        current = self.sessions.get(session.peer_id) is session
        if current:
            del self.sessions[session.peer_id]
        if was_up and current:
            log.info("session with %s down: %s", short_id(session.peer_id), reason)
            self._emit(PeerDown(session.peer_id, reason))
        # Let the close frame go out (and the engine drain) before forgetting the connection.
        self._transmit_final(session)

    def _transmit_final(self, session: Session) -> None:
        if self._udp is not None and not self._closed:
            self._transmit(session, time.monotonic())

    def _emit(self, event: TransportEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not stop the endpoint's datagram processing
                log.exception("event subscriber failed on %s", type(event).__name__)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_interval)
            for session in list(self.sessions.values()):
                session.send_ping()


def _client_key(session: Session, endpoint: Endpoint) -> bytes:
    return endpoint.device_id if session.is_client else session.peer_id


__all__ = ["Endpoint", "PathTransmitter", "default_path_kind"]  # the last two re-exported from vaddr
