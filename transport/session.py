"""Sessions: one authenticated QUIC connection to one peer device, as upper layers see it.

A Session offers request/response (with timeouts and cancellation), fire-and-forget
messages and bulk streams with backpressure. The Endpoint owns the socket and feeds the
session's engine connection; this module reacts to engine events and never touches I/O.

Theory of operation:
- Stream 0 (the first client-initiated bidirectional stream) is the control stream:
  first the auth exchange (transport.auth), then REQUEST / RESPONSE / CANCEL / MESSAGE /
  CREDIT frames. Every other bidirectional stream is a bulk stream that starts with a
  STREAM_OPEN frame naming its handler, then carries raw bytes.
- Rule 1: nothing but the auth frames is accepted before the session is up; any other
  stream data then is a protocol violation that closes the connection.
- Rule 2 (bulk backpressure): a writer may have at most STREAM_WINDOW bytes the peer's
  application has not consumed. The reader returns credit (CREDIT frames) as its
  application reads, so `Stream.write` waits while the peer is not reading, and neither
  side buffers more than STREAM_WINDOW (plus one chunk) per stream. A peer that sends
  past its credit is closed.
- Rule 3: a bad frame from the peer ends this session (RemoteProtocolError logged, the
  connection closed with a reason); it never propagates into the endpoint.
- Rule 4: the control stream never buffers more than CONTROL_BUFFER_LIMIT unsent bytes:
  `send` raises SendBufferFull, `request` waits for room within its timeout; at most
  MAX_INBOUND_REQUESTS handlers run per session (more are answered 'busy').
Streams themselves live in transport.stream.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from transport import auth
from transport.errors import (
    AuthenticationError,
    LocalProtocolError,
    PeerUnreachable,
    RemoteProtocolError,
    RequestFailed,
    RequestTimeout,
    SendBufferFull,
    SessionClosed,
    TransportError,
)
from transport.events import AuthFailed, PeerInfo
from transport.identity import short_id
from transport.messages import Frame, FrameDecoder, FrameType, encode
from transport.quic_engine import (
    HandshakeDone,
    PingAcked,
    StopSending,
    StreamData,
    StreamReset,
    Terminated,
)
from transport.stream import STREAM_WINDOW, Stream

if TYPE_CHECKING:
    from transport.endpoint import Endpoint
    from transport.lane import Lane

log = logging.getLogger("transport.session")

CONTROL_STREAM = 0
MAX_INBOUND_REQUESTS = 256
MAX_HANDLER_TASKS = 1024
STEER_SECONDS = 3.0
CONTROL_BUFFER_LIMIT = 16 * 1024 * 1024  # unsent control bytes before send() refuses
MAX_PENDING_STREAMS = 64
AUTH_TIMEOUT = 10.0
ERR_PROTOCOL = 0x1A8  # QUIC application close code: the peer broke our framing rules
ERR_CLOSED = 0x0  # normal close
ERR_SUPERSEDED = 0x1A9  # another connection between the same two devices won (simultaneous open, restart)
ERR_STREAM_REFUSED = 0x10  # bulk stream reset: nobody handles its name
ERR_STREAM_ABORTED = 0x11  # bulk stream reset by the application

Body = dict | bytes
RequestHandler = Callable[["Session", Any], Awaitable[Body]]
MessageHandler = Callable[["Session", Any], Awaitable[None] | None]
StreamHandler = Callable[["Session", "Stream"], Awaitable[None]]

_AUTH_ONLY_SERVER = frozenset({FrameType.AUTH})
_AUTH_ONLY_CLIENT = frozenset({FrameType.AUTH_OK})
_CONTROL = frozenset({FrameType.REQUEST, FrameType.RESPONSE, FrameType.CANCEL, FrameType.MESSAGE, FrameType.CREDIT})


class Session:
    """An authenticated connection to one peer device. Made by the Endpoint, never directly.

    Example::

        session = await endpoint.connect(peer_key, ("192.168.1.20", 4433))
        reply = await session.request("raft.append", {"term": 3}, timeout=2.0)
        stream = await session.open_stream("objects.put", {"id": "ab12"})
        await stream.write(data); stream.close()
    """

    def __init__(
        self,
        endpoint: Endpoint,
        conn: Any,
        is_client: bool,
        expected_key: bytes | None,
        engine_addr: Any,
    ) -> None:
        self._endpoint = endpoint
        self._engine = endpoint._engine
        self._conn = conn
        self.is_client = is_client
        "True when we dialled"
        self.inbound = not is_client
        "True when the peer dialled us"
        self.peer_id: bytes = expected_key or b""
        "the peer's device key (verified once the session is up)"
        self.state = "handshake"
        "'handshake', 'auth', 'up' or 'closed'"
        self.engine_addr = engine_addr
        "the address the QUIC engine knows the peer by"
        self.route = engine_addr
        "where our datagrams go now (client side: may differ from engine_addr after migration)"
        self.path = "direct"
        "path kind: 'lan', 'direct' or 'relay'"
        self.addr: Any = None
        "the path's address as the upper layer knows it"
        self.cids: set[bytes] = set()
        "our connection ids routing to this session"
        self.steer: tuple[Any, float] | None = None
        self.pinned_until = 0.0
        "client side: until then, stay on the route chosen by migrate()"
        "server side: (engine address, until) our packets go to while the client moves"
        self.created = time.monotonic()
        self.up_since: float | None = None
        self.peer_instance: bytes | None = None
        "the peer process's random instance id from AUTH / AUTH_OK (None if it sent none)"
        self.close_reason = ""
        self.superseded = False
        "closed because another connection with the same peer replaced it"
        self.guest = False
        "server side: admitted by the endpoint's guest policy, not by admit (see Endpoint.allow_guests)"
        self.accept_server: Callable[[bytes], bool] | None = None
        "client side: set by Endpoint.connect_unpinned; decides on the server key instead of a pin"
        self._ready: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._closed_event = asyncio.Event()
        self._binding = b""
        self._early_auth: Frame | None = None
        self._ctl = FrameDecoder(_AUTH_ONLY_CLIENT if is_client else _AUTH_ONLY_SERVER)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._inbound: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[int, Stream] = {}
        self._opening: dict[int, FrameDecoder] = {}
        self._remote_seen: set[int] = set()
        # Remote-initiated bidi ids are 1, 5, 9... (server) or 0, 4, 8... (client; 0 is control).
        self._remote_floor = -3 if is_client else 0
        self._handlers: dict[str, RequestHandler] = {}
        self._message_handlers: dict[str, MessageHandler] = {}
        self._stream_handlers: dict[str, StreamHandler] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ping_ids = itertools.count(1)
        self._progress = asyncio.Event()
        self.lane: Lane | None = None
        "the TCP bulk lane under this session when one is up (transport.lane); new streams prefer it"
        if not is_client:
            self._arm_auth_deadline()

    # --- public API --------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def info(self) -> PeerInfo:
        """Peer id, path kind, address and smoothed RTT (ms) for status displays."""
        rtt = self._engine.smoothed_rtt(self._conn) if self.state != "closed" else None
        return PeerInfo(self.peer_id, self.path, self.addr, None if rtt is None else round(rtt * 1000.0, 3))

    def on_request(self, msg_type: str, handler: RequestHandler) -> None:
        """Answer requests of `msg_type` on this session: `await handler(session, body) -> dict|bytes`.

        Overrides the endpoint-wide handler of the same type. A handler may raise
        RequestFailed(code, message) to send a specific error back.
        """
        self._handlers[msg_type] = handler

    def on_message(self, msg_type: str, handler: MessageHandler) -> None:
        """Receive fire-and-forget messages of `msg_type`: `handler(session, body)`.

        A coroutine handler runs as its own task; a plain function runs synchronously as the
        message is decoded (it must not block; in exchange, no loop iteration is lost per message).
        """
        self._message_handlers[msg_type] = handler

    def on_stream(self, name: str, handler: StreamHandler) -> None:
        """Accept bulk streams opened with `name`: `await handler(session, stream)`."""
        self._stream_handlers[name] = handler

    async def request(self, msg_type: str, body: Body, timeout: float = 10.0) -> Any:
        """Send a request and wait for its response body.

        Raises RequestTimeout after `timeout` seconds, RequestFailed when the peer answered
        with an error (e.g. code 'unknown_type'), SessionClosed if the session ends first,
        LocalProtocolError for a body we may not send. Cancelling the caller cancels the
        peer's handler too.
        """
        self._check_up()
        request_id = next(self._ids)
        frame = encode(FrameType.REQUEST, {"i": request_id, "t": msg_type, "b": body})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._control_room(), timeout)
            self._send_control(frame)
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._cancel_remote(request_id)
            raise RequestTimeout(f"no response to {msg_type!r} from {short_id(self.peer_id)} within {timeout}s") from None
        except asyncio.CancelledError:
            self._cancel_remote(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    def send(self, msg_type: str, body: Body) -> None:
        """Queue a fire-and-forget message (delivered in order with other control frames).

        Raises SendBufferFull when CONTROL_BUFFER_LIMIT bytes already wait for the peer.
        """
        self._check_up()
        frame = encode(FrameType.MESSAGE, {"t": msg_type, "b": body})
        if self._engine.send_buffer_size(self._conn, CONTROL_STREAM) > CONTROL_BUFFER_LIMIT:
            raise SendBufferFull(f"{short_id(self.peer_id)} is not taking messages; {msg_type!r} not sent")
        self._send_control(frame)

    async def _control_room(self) -> None:
        while self._engine.send_buffer_size(self._conn, CONTROL_STREAM) > CONTROL_BUFFER_LIMIT:
            self._progress.clear()
            await self._progress.wait()
            self._check_up()

    async def open_stream(self, name: str, meta: dict[str, Any] | None = None) -> Stream:
        """Open a bulk stream handled on the peer by its `on_stream(name)` handler.

        When a TCP bulk lane is up (LAN/direct paths, see transport.lane) the stream rides
        it; otherwise QUIC. Either way the caller gets the same Stream API.
        """
        self._check_up()
        if self.lane is None and self._endpoint._lane is not None:
            await self._endpoint._lane.wait_briefly(self)  # a lane being set up right now is worth a few ms
            self._check_up()
        if self.lane is not None and self.lane.usable():
            return self.lane.open_stream(name, meta or {})
        # Wait for the peer's stream credit (qh3 refuses past it, aioquic would queue unboundedly).
        while not self._engine.can_open_stream(self._conn):
            self._progress.clear()
            await self._progress.wait()
            self._check_up()
        stream_id = self._conn.get_next_available_stream_id(False)
        header = encode(FrameType.STREAM_OPEN, {"n": name, "m": meta or {}})
        stream = Stream(self, stream_id, name, meta or {})
        self._streams[stream_id] = stream
        self._send_stream(stream_id, header, False)
        return stream

    def close(self, reason: str = "closed by application", _code: int = 0) -> None:
        """Close the connection; pending requests fail with SessionClosed."""
        if self.state == "closed":
            return
        self.superseded = _code == ERR_SUPERSEDED
        self._quiet(self._conn.close, _code or ERR_CLOSED, None, reason)
        self._endpoint._want_flush(self)
        self._terminate(reason, local=True)

    async def wait_closed(self) -> None:
        """Return once the session has ended."""
        await self._closed_event.wait()

    async def wait_ready(self) -> Session:
        """Wait for authentication; returns the session upper layers should use."""
        return await self._ready

    def migrate(self, addr: Any, path: str) -> bool:
        """Move this session to `addr` (QUIC connection migration, RFC 9000 section 9).

        Client side: our packets go to `addr` from now on; the server validates the new
        path and follows. Server side (QUIC servers cannot migrate): for up to STEER_SECONDS
        our packets go to `addr` instead of the current path; the client follows packets
        that decrypt from a new address, then the server engine validates and follows the
        client. If the client never does, traffic returns to the old path after that window
        (QUIC retransmits what was lost). Call it only for a path known to work (punched).
        Returns False when the session is closed.
        """
        if self.state == "closed":
            return False
        target = self._endpoint._engine_address(addr)
        if self.is_client:
            self.route = target
            # Late packets the server still sends on the old path must not pull us back.
            self.pinned_until = time.monotonic() + STEER_SECONDS
            self._endpoint._set_path(self, path, addr)
        else:
            self.steer = (target, time.monotonic() + STEER_SECONDS)
        self._quiet(self._conn.send_ping, next(self._ping_ids))  # traffic on the new path now
        self._endpoint._want_flush(self)
        return True

    # --- sending helpers -----------------------------------------------------------------
    def _check_up(self) -> None:
        if self.state != "up":
            raise SessionClosed(f"session with {short_id(self.peer_id)} is {self.state}: {self.close_reason}")

    def _quiet(self, operation: Callable[..., Any], *args: Any) -> None:
        """Call an engine operation whose failure only means the connection is already gone."""
        try:
            operation(*args)
        except self._engine.errors as exc:
            log.debug("%s on a finished connection: %s", getattr(operation, "__name__", operation), exc)

    def _send_control(self, frame: bytes) -> None:
        self._send_stream(CONTROL_STREAM, frame, False)

    def _send_stream(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        if self.state == "closed":
            raise SessionClosed(f"session closed: {self.close_reason}")
        try:
            self._conn.send_stream_data(stream_id, data, end)
        except self._engine.errors as exc:
            # The engine already considers the connection (or stream) gone; its
            # Terminated event / reset follows. The caller learns it now.
            raise SessionClosed(f"cannot send on stream {stream_id}: {exc}") from exc
        self._endpoint._want_flush(self)

    def _send_credit(self, stream_id: int, consumed: int) -> None:
        if self.state == "up":
            try:
                self._send_control(encode(FrameType.CREDIT, {"s": stream_id, "n": consumed}))
            except SessionClosed:
                pass  # the session is ending; credit no longer matters

    def _abort_stream(self, stream_id: int) -> None:
        if self.state == "closed":
            return
        self._quiet(self._conn.reset_stream, stream_id, ERR_STREAM_ABORTED)
        if not (stream_id & 2):  # bidirectional: also stop the peer's sending side
            self._quiet(self._conn.stop_stream, stream_id, ERR_STREAM_ABORTED)
        self._streams.pop(stream_id, None)
        self._endpoint._want_flush(self)

    def _cancel_remote(self, request_id: int) -> None:
        if self.state == "up":
            try:
                self._send_control(encode(FrameType.CANCEL, {"i": request_id}))
            except SessionClosed:
                pass  # nothing left to cancel on a closed session

    def send_ping(self) -> None:
        """Send a QUIC PING (keepalive; refreshes the RTT estimate)."""
        if self.state in ("auth", "up"):
            self._quiet(self._conn.send_ping, next(self._ping_ids))
            self._endpoint._want_flush(self)

    # --- engine events -------------------------------------------------------------------
    def handle(self, event: Any) -> None:
        """React to one engine event (called by the endpoint, never raises RemoteProtocolError)."""
        try:
            if isinstance(event, StreamData):
                self._on_stream_data(event)
            elif isinstance(event, HandshakeDone):
                self._on_handshake()
            elif isinstance(event, StreamReset):
                self._on_reset(event.stream_id, f"peer reset stream {event.stream_id} (code {event.error_code})")
            elif isinstance(event, StopSending):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._tx_error = SessionClosed(f"peer stopped reading stream {event.stream_id}")
                    stream._credit_event.set()
            elif isinstance(event, PingAcked):
                pass  # the engine's RTT estimator already took the sample
            elif isinstance(event, Terminated):
                self._on_terminated(event)
        except RemoteProtocolError as exc:
            self._protocol_violation(exc)
        except AuthenticationError as exc:
            self._fail_auth(exc)
        except TransportError as exc:  # e.g. no TLS binding available: this connection cannot go on
            self._protocol_violation(RemoteProtocolError(str(exc)))

    def _on_handshake(self) -> None:
        self.state = "auth"
        self._binding = self._engine.exporter(self._conn, auth.EXPORTER_LABEL)
        ep = self._endpoint
        if self.is_client:
            server_key = self._engine.peer_public_key(self._conn)
            if self.accept_server is not None:
                self.peer_id = auth.check_unpinned_server(server_key, self.accept_server)
            else:
                auth.check_server(server_key, self.peer_id, ep._admit)
            proof = auth.make_proof(ep.identity, self._binding, server_key)
            self._send_control(encode(FrameType.AUTH, {"k": proof.key, "s": proof.signature, "n": ep.instance}))
        elif self._early_auth is not None:
            early, self._early_auth = self._early_auth, None
            self._on_control(early)

    def _arm_auth_deadline(self) -> None:
        def expire() -> None:
            if self.state == "handshake":  # garbage Initial or a peer that vanished mid-handshake
                log.debug("handshake from %r never completed; dropped", self.addr)
                self._quiet(self._conn.close, ERR_PROTOCOL, None, "handshake timed out")
                self._terminate("handshake timed out", local=True, error=PeerUnreachable("handshake timed out"))
            elif self.state == "auth":
                self._fail_auth(AuthenticationError("peer did not authenticate within the deadline"))

        asyncio.get_running_loop().call_later(AUTH_TIMEOUT, expire)

    def _on_stream_data(self, event: StreamData) -> None:
        if event.stream_id == CONTROL_STREAM:
            for frame in self._ctl.feed(event.data):
                self._on_control(frame)
            if event.end_stream and self.state != "closed":
                raise RemoteProtocolError("peer ended the control stream")
            return
        if self.state != "up":
            raise RemoteProtocolError("stream data before authentication completed")
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._receive(event.data, event.end_stream)
            return
        if self._is_local(event.stream_id) or self._seen_remote(event.stream_id):
            return  # a stream we already finished or refused: late bytes are harmless
        self._on_opening(event)

    def _seen_remote(self, stream_id: int) -> bool:
        return stream_id <= self._remote_floor or stream_id in self._remote_seen

    def _mark_remote(self, stream_id: int) -> None:
        # Remote bidi stream ids go up by 4; keep a floor below which all were seen, plus a
        # small set above it (streams may open out of order), so memory stays bounded.
        self._remote_seen.add(stream_id)
        while self._remote_floor + 4 in self._remote_seen:
            self._remote_floor += 4
            self._remote_seen.discard(self._remote_floor)

    def _is_local(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self.is_client else 1)

    def _on_opening(self, event: StreamData) -> None:
        if event.stream_id & 2:
            raise RemoteProtocolError("unidirectional streams are not part of this protocol")
        decoder = self._opening.get(event.stream_id)
        if decoder is None:
            if len(self._opening) >= MAX_PENDING_STREAMS:
                raise RemoteProtocolError("too many half-opened streams")
            decoder = self._opening[event.stream_id] = FrameDecoder(frozenset({FrameType.STREAM_OPEN}))
        frames = list(itertools.islice(decoder.feed(event.data), 1))
        if not frames:
            if event.end_stream:
                raise RemoteProtocolError("stream ended before its STREAM_OPEN frame")
            return
        del self._opening[event.stream_id]
        self._mark_remote(event.stream_id)
        rest = decoder.take_rest()
        name, meta = frames[0].body["n"], frames[0].body["m"]
        handler = None if self.guest else (self._stream_handlers.get(name) or self._endpoint._stream_handlers.get(name))
        if handler is None:
            log.warning("peer %s opened a stream for unknown handler %r; refused", short_id(self.peer_id), name)
            self._quiet(self._conn.stop_stream, event.stream_id, ERR_STREAM_REFUSED)
            self._quiet(self._conn.reset_stream, event.stream_id, ERR_STREAM_REFUSED)
            self._endpoint._want_flush(self)
            return
        stream = Stream(self, event.stream_id, name, meta)
        self._streams[event.stream_id] = stream
        stream._receive(rest, event.end_stream)
        self._spawn(self._run_stream_handler(handler, stream))

    async def _run_stream_handler(self, handler: StreamHandler, stream: Stream) -> None:
        try:
            await handler(self, stream)
        except TransportError as exc:
            log.info("stream %r from %s ended: %s", stream.name, short_id(self.peer_id), exc)
            stream.abort()
        except Exception:  # an upper-layer bug must not take the node down; logged with traceback
            log.exception("stream handler %r failed", stream.name)
            stream.abort()
        else:
            stream.close()

    def _on_reset(self, stream_id: int, reason: str) -> None:
        if stream_id == CONTROL_STREAM:
            raise RemoteProtocolError("peer reset the control stream")
        self._opening.pop(stream_id, None)
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream._fail(SessionClosed(reason))

    def _on_control(self, frame: Frame) -> None:
        body = frame.body
        kind = frame.type
        if kind is FrameType.AUTH:
            if self.state == "handshake" and not self.is_client and self._early_auth is None:
                # Reordered delivery: the proof overtook the end of our handshake. Check it
                # once the TLS binding exists (see _on_handshake).
                self._early_auth = frame
                return
            if self.state != "auth":
                raise RemoteProtocolError("AUTH out of place")
            proof = auth.ClientProof(body["k"], body["s"])
            self.peer_id = auth.check_client(proof, self._binding, self._endpoint.identity.public_key, self._admit_client)
            self.peer_instance = _instance(body)
            self._ctl.allowed = _CONTROL
            self._send_control(encode(FrameType.AUTH_OK, {"n": self._endpoint.instance}))
            self._go_up()
        elif kind is FrameType.AUTH_OK:
            if self.state != "auth":
                raise RemoteProtocolError("AUTH_OK before we authenticated")
            self.peer_instance = _instance(body)
            self._ctl.allowed = _CONTROL
            self._go_up()
        elif kind is FrameType.REQUEST:
            self._on_request(body)
        elif kind is FrameType.RESPONSE:
            future = self._pending.get(body["i"])
            if future is None or future.done():
                return  # answered after we gave up (timeout / cancel): drop
            if body["ok"]:
                future.set_result(body["b"])
            else:
                future.set_exception(RequestFailed(body["e"], body["m"]))
        elif kind is FrameType.CANCEL:
            task = self._inbound.get(body["i"])
            if task is not None:
                task.cancel()
        elif kind is FrameType.MESSAGE and self.guest:
            log.info("dropped message %r from guest %s", body["t"], short_id(self.peer_id))
        elif kind is FrameType.MESSAGE:
            handler = self._message_handlers.get(body["t"]) or self._endpoint._message_handlers.get(body["t"])
            if handler is None:
                log.info("dropped message of unknown type %r from %s", body["t"], short_id(self.peer_id))
            elif len(self._tasks) >= MAX_HANDLER_TASKS:
                log.warning("dropped message %r from %s: %d handlers already running", body["t"],
                            short_id(self.peer_id), len(self._tasks))
            else:
                self._deliver_message(handler, body["t"], body["b"])
        elif kind is FrameType.CREDIT:
            stream = self._streams.get(body["s"])
            if stream is not None:
                stream._credit(body["n"])

    def _admit_client(self, key: bytes) -> bool:
        """Server side: a member (admit) or, failing that, a guest (Endpoint.allow_guests)."""
        ep = self._endpoint
        if auth.admitted(ep._admit, key):
            return True
        if ep._guest_admit is not None and len(ep._guests) < ep._max_guests and auth.admitted(ep._guest_admit, key):
            self.guest = True
            return True
        return False

    def _on_request(self, body: dict[str, Any]) -> None:
        request_id, msg_type = body["i"], body["t"]
        if request_id in self._inbound:
            raise RemoteProtocolError(f"request id {request_id} reused while in progress")
        if self.guest and msg_type not in self._endpoint._guest_requests:
            self._respond_error(request_id, "forbidden", f"a guest may not send {msg_type!r} requests")
            return
        handler = self._handlers.get(msg_type) or self._endpoint._request_handlers.get(msg_type)
        if handler is None:
            self._respond_error(request_id, "unknown_type", f"no handler for request type {msg_type!r}")
            return
        if len(self._inbound) >= MAX_INBOUND_REQUESTS:
            self._respond_error(request_id, "busy", "too many requests in progress")
            return
        task = self._spawn(self._run_request_handler(handler, request_id, msg_type, body["b"]))
        self._inbound[request_id] = task

    async def _run_request_handler(self, handler: RequestHandler, request_id: int, msg_type: str, body: Any) -> None:
        try:
            result = await handler(self, body)
        except asyncio.CancelledError:
            return  # the requester cancelled: it expects no answer
        except RequestFailed as exc:
            self._respond_error(request_id, exc.code, exc.message)
        except Exception:  # the handler's bug becomes an error response, logged with traceback
            log.exception("request handler for %r failed", msg_type)
            self._respond_error(request_id, "handler_error", f"handler for {msg_type!r} failed")
        else:
            if not isinstance(result, (dict, bytes)):
                self._respond_error(request_id, "handler_error", f"handler for {msg_type!r} returned {type(result).__name__}")
            elif self.state == "up":
                try:
                    frame = encode(FrameType.RESPONSE, {"i": request_id, "ok": True, "b": result})
                except LocalProtocolError as exc:
                    log.error("response to %r cannot be sent: %s", msg_type, exc)
                    self._respond_error(request_id, "handler_error", str(exc))
                else:
                    self._send_control(frame)
        finally:
            self._inbound.pop(request_id, None)

    def _deliver_message(self, handler: MessageHandler, msg_type: str, body: Any) -> None:
        # A plain (non-async) handler runs right here, in the datagram callback: no task and no
        # extra loop iteration, and whatever it sends leaves in the endpoint's flush of this same
        # batch (Raft's per-hop latency). A coroutine handler gets its own task, as before.
        try:
            outcome = handler(self, body)
        except Exception:  # upper-layer bug: log, keep the session
            log.exception("message handler for %r failed", msg_type)
            return
        if inspect.isawaitable(outcome):
            self._spawn(self._run_message_handler(outcome, msg_type))

    async def _run_message_handler(self, outcome: Awaitable[None], msg_type: str) -> None:
        try:
            await outcome
        except Exception:  # upper-layer bug: log, keep the session
            log.exception("message handler for %r failed", msg_type)

    def _respond_error(self, request_id: int, code: str, message: str) -> None:
        if self.state == "up":
            self._send_control(encode(FrameType.RESPONSE, {"i": request_id, "ok": False, "e": code, "m": message[:1000]}))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- lifecycle -----------------------------------------------------------------------
    def _go_up(self) -> None:
        self.state = "up"
        self.up_since = time.monotonic()
        self._endpoint._session_up(self)

    def _fail_auth(self, exc: AuthenticationError) -> None:
        if self.state == "closed":
            return
        log.warning("authentication failed with %s: %s", self.addr, exc)
        self._endpoint._emit(AuthFailed(self.peer_id or None, self.addr, str(exc)))
        self._quiet(self._conn.close, auth.AUTH_FAILED, None, str(exc)[:200])
        self._endpoint._want_flush(self)
        self._terminate(str(exc), local=True, error=exc)

    def _protocol_violation(self, exc: RemoteProtocolError) -> None:
        if self.state == "closed":
            return
        log.warning("peer %s broke the protocol, closing its session: %s", short_id(self.peer_id), exc)
        self._quiet(self._conn.close, ERR_PROTOCOL, None, str(exc)[:200])
        self._endpoint._want_flush(self)
        self._terminate(f"protocol error: {exc}", local=True)

    def _on_terminated(self, event: Terminated) -> None:
        if self.state == "closed":
            return
        self.superseded = event.error_code == ERR_SUPERSEDED
        if event.error_code == auth.AUTH_FAILED and self.state != "up":
            error: TransportError = AuthenticationError(f"peer refused authentication: {event.reason}")
            log.warning("%s", error)
        elif self.state != "up":
            error = PeerUnreachable(f"connection ended during setup: {event.reason or 'code %d' % event.error_code}")
        else:
            error = SessionClosed(f"session ended: {event.reason or 'code %d' % event.error_code}")
        self._terminate(event.reason or f"code {event.error_code}", local=False, error=error)

    def _terminate(self, reason: str, local: bool, error: TransportError | None = None) -> None:
        was_up = self.state == "up"
        self.state = "closed"
        self.close_reason = reason
        failure = error or SessionClosed(f"session closed: {reason}")
        if not self._ready.done():
            self._ready.set_exception(failure)
            self._ready.exception()  # mark retrieved: nobody may be waiting (inbound)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SessionClosed(f"session closed: {reason}"))
        for stream in self._streams.values():
            stream._fail(SessionClosed(f"session closed: {reason}"))
        if self.lane is not None:  # the lane lives only under its session
            self.lane.fail(f"session closed: {reason}")
        for task in list(self._tasks):
            task.cancel()
        self._progress.set()
        self._closed_event.set()
        self._endpoint._session_closed(self, reason, was_up)


def _instance(body: dict[str, Any]) -> bytes | None:
    """The optional instance id of an AUTH / AUTH_OK body; anything malformed counts as none."""
    value = body.get("n")
    return value if isinstance(value, bytes) and len(value) == 8 else None


__all__ = ["STREAM_WINDOW", "Session", "Stream"]
