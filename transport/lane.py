"""The TCP bulk lane: session streams over one TCP connection when a LAN/direct path allows.

Why: a QUIC stream in Python tops out near 100 MB/s (per-datagram work); one TCP
connection whose records are sealed with a key handed out over the QUIC session
(transport.lane_records) moves several times that. The lane is an accelerator under a
live QUIC session, never a path of its own: upper layers see the same `Stream` objects
from `Session.open_stream` and the same `on_stream` handler calls.

Theory of operation (see SESSION_PROTOCOL.md, "TCP bulk lane"):
- On by default (`tcp_lane=False` or PCLOUD_TCP_LANE=0 turns it off; see lane_enabled).
- Each endpoint with the lane on listens on TCP (the UDP port number when free).
- Once a session is up on a `lan` or `direct` path, its QUIC *client* asks over the
  authenticated session (request LANE_REQUEST). The server answers with its TCP port, a
  fresh one-time 16-byte lane id and a fresh 32-byte lane secret; only the session's
  two devices can read that answer (TLS 1.3 between their pinned device keys).
- The client connects, sends the cleartext preamble `PCL2 || lane id` and its HELLO in
  the first sealed record; the server finds the pending id, opens that record (proof
  that the peer holds the secret, hence is the session's device) and answers with its
  own sealed HELLO, which the client opens in turn. Then both sides attach the lane to
  the session (`Session.lane`). Every byte after the preamble is in AES-256-GCM
  records, one key per direction, numbered nonces (transport.lane_records).
- From then on every new stream of that session (both directions) rides the lane,
  multiplexed by lane stream id (client even, server odd), with the Stream class's own
  credit backpressure (CREDIT frames here instead of on the QUIC control stream).

Invariants:
- Never on a relay path: not set up for one, refused by the server for one, and torn down
  when the session's path changes to relay.
- A lane id and its secret are used once and expire after LANE_ID_TTL; a TCP connection
  that does not present a pending id, or whose first record does not open with that
  id's secret, is closed.
  Garbage on the port costs one short-lived connection, never the node or the session.
- A lane failure (EOF, a record that fails authentication, protocol violation) fails only the streams on it, each
  with SessionClosed, exactly like a QUIC stream reset; the QUIC session goes on and new
  streams use QUIC until the client has set up a new lane (with backoff).
- Bounded memory: the record opener holds at most one unopened record (<= 1 MiB + 20 bytes)
  and the decoder at most one unfinished frame (<= 256 KiB + header) plus the rest of one
  record (the lane reads as the kernel delivers, no StreamReader); each stream
  holds at most STREAM_WINDOW unread bytes (Stream enforces it); we open at most
  MAX_LANE_STREAMS streams on a lane (more go on QUIC) and refuse (RESET) a peer's past
  MAX_REMOTE_STREAMS, so a lane buffers at most ~16 x 8 MiB of unread data.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from transport.errors import (
    RemoteProtocolError,
    RequestFailed,
    SessionClosed,
    TransportError,
)
from transport.events import PathChanged, TransportEvent
from transport.identity import short_id
from transport.lane_framing import (
    LANE_ID_SIZE,
    MAX_STREAM_ID,
    PREAMBLE_SIZE,
    LaneDecoder,
    LaneFrame,
    LaneFrameType,
    decode_preamble,
    encode_credit,
    encode_empty,
    encode_header,
    encode_open,
    encode_preamble,
)
from transport.lane_records import LENGTH, SECRET_SIZE, LaneKeys, RecordOpener, RecordSealer, record_length
from transport.stream import Stream

if TYPE_CHECKING:
    from transport.endpoint import Endpoint
    from transport.session import Session

log = logging.getLogger("transport.lane")

LANE_REQUEST = "transport.lane"
LANE_PATHS = frozenset({"lan", "direct"})
LANE_ID_TTL = 10.0
SETUP_TIMEOUT = 5.0
MAX_PENDING_IDS = 64
MAX_PREAUTH_CONNECTIONS = 64
MAX_LANE_STREAMS = 8  # streams we open on one lane at once (more go on QUIC)
MAX_REMOTE_STREAMS = 2 * MAX_LANE_STREAMS  # slack: the peer may forget a finished stream before we do
DEAD_AFTER = 10.0  # seconds sent data may stay unacknowledged before the kernel ends the lane
LANE_WAIT = 0.5  # how long a new stream may wait for a lane being set up right now
REDIAL_BACKOFF = (1.0, 2.0, 5.0, 15.0, 60.0)  # after the last, the session stays on QUIC


def lane_enabled(flag: bool | None) -> bool:
    """The `tcp_lane` argument, or $PCLOUD_TCP_LANE ('0' / '1') when it is None (default ON).

    It only ever carries streams of sessions on `lan`/`direct` paths whose peer accepts a TCP
    connection; everything else stays on QUIC. It was off for a while because
    bench_consensus --quick twice saw a leader failover "never commit within 30 s" with
    it on: that was the measurement (a CAS answered NoQuorum at 0.3 s committed later, so
    every retry on the same branch was refused as a conflict), reproduced with the lane
    off too; 120+ lane-on kill -9 failovers since all committed within ~3 s.
    """
    if flag is not None:
        return flag
    return os.environ.get("PCLOUD_TCP_LANE", "1") not in ("0", "", "false", "no")


class Lane:
    """One TCP connection of sealed records carrying bulk streams for one session.

    It offers Stream the same four hooks a Session does (`_send_stream`, `_send_credit`,
    `_abort_stream`, `_streams`, `closed`), so lane streams are ordinary `Stream`s.
    """

    def __init__(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 is_client: bool, sealer: RecordSealer, opener: RecordOpener) -> None:
        self.session = session
        self._reader = reader
        self._writer = writer
        self.is_client = is_client
        self._sealer = sealer
        self._opener = opener
        self._decoder = LaneDecoder()
        self._streams: dict[int, Stream] = {}
        self._next_id = 0 if is_client else 1
        self._remote_last = -1
        self._remote_open = 0
        self._closed = False
        self.close_reason = ""
        self.opened = 0
        "streams this side opened on the lane (for tests and status)"
        self.addr = session.addr
        "the session's path address when the lane was set up; another address means the lane may be stale"
        _tune_socket(writer)

    def start(self) -> None:
        """Take the bytes straight from the TCP transport from now on.

        A protocol of our own instead of the StreamReader used for set-up: bytes go from
        the socket to the record opener without the reader's two extra copies and a task
        wake-up per read (the lane's receive side is CPU-bound in bulk transfers).
        """
        reader = self._reader
        leftover = bytes(reader._buffer)  # what arrived behind HELLO, before the switch
        reader._buffer.clear()
        eof, error = reader.at_eof(), reader.exception()
        self._writer.transport.set_protocol(_LaneProtocol(self))
        if leftover:
            self._on_data(leftover)
        if error is not None:
            self.fail(f"TCP connection failed: {error!r}")
        elif eof:
            self.fail("peer closed the TCP connection")

    @property
    def closed(self) -> bool:
        return self._closed

    def usable(self) -> bool:
        """True when a new stream may go on this lane now."""
        return (not self._closed and self.session.path in LANE_PATHS and self.session.addr == self.addr
                and sum(1 for sid in self._streams if not self._is_remote(sid)) < MAX_LANE_STREAMS
                and self._next_id <= MAX_STREAM_ID)

    def open_stream(self, name: str, meta: dict[str, Any]) -> Stream:
        stream_id = self._next_id
        frame = encode_open(stream_id, name, meta)  # LocalProtocolError before anything is registered
        self._next_id += 2
        stream = Stream(self, stream_id, name, meta)
        self._streams[stream_id] = stream
        self._write(frame)
        self.opened += 1
        return stream

    def fail(self, reason: str) -> None:
        """End the lane: its streams fail with SessionClosed, the session goes on without it."""
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._fail(SessionClosed(f"TCP lane lost: {reason}"))
        # Abort, not a graceful close: the streams are gone, and a lane over a dead path would hold
        # a close for as long as TCP retransmits.
        self._writer.transport.abort()
        if self.session.lane is self:
            self.session.lane = None
        log.info("lane with %s closed: %s", short_id(self.session.peer_id), reason)
        service = getattr(self.session._endpoint, "_lane", None)
        if service is not None:
            service._lane_lost(self)

    def kill(self) -> None:
        """Drop the TCP connection abruptly; the peer sees a broken lane. For tests."""
        transport = self._writer.transport
        transport.abort()

    # --- the hooks Stream calls (same names as on Session) -------------------------------
    def _send_stream(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        if self._closed:
            raise SessionClosed(f"TCP lane closed: {self.close_reason}")
        if data:
            fin = (encode_empty(LaneFrameType.FIN, stream_id),) if end else ()
            self._send_records(self._sealer.seal(encode_header(LaneFrameType.DATA, stream_id, len(data)), data, *fin))
        elif end:
            self._write(encode_empty(LaneFrameType.FIN, stream_id))

    def _send_credit(self, stream_id: int, consumed: int) -> None:
        if not self._closed:
            self._write(encode_credit(stream_id, consumed))

    def _abort_stream(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and not self._closed:
            self._write(encode_empty(LaneFrameType.RESET, stream_id))

    def _write(self, data: bytes) -> None:
        self._send_records(self._sealer.seal(data))

    def _send_records(self, records: list[bytearray]) -> None:
        for record in records:  # one write each: writelines would join them into one more copy
            self._writer.write(record)

    # --- reading -------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        """Received bytes handed over as an object (set-up leftovers, tests)."""
        self._take(self._opener.feed, data)

    def _get_buffer(self) -> memoryview:
        return self._opener.get_buffer()

    def _buffer_updated(self, n: int) -> None:
        """``n`` bytes were read into the record opener's buffer (the usual path, see _LaneProtocol)."""
        self._take(self._opener.buffer_updated, n)

    def _take(self, step: Callable[[Any], list[bytes]], arg: Any) -> None:
        if self._closed:
            return
        try:
            plaintexts = step(arg)
        except RemoteProtocolError as exc:
            log.warning("lane peer %s sent a bad record: %s", short_id(self.session.peer_id), exc)
            self.fail(f"protocol error: {exc}")
            return
        self._on_records(plaintexts)

    def _on_records(self, plaintexts: list[bytes]) -> None:
        try:
            for plain in plaintexts:
                for frame in self._decoder.feed(plain):
                    self._on_frame(frame)
                    if self._closed:
                        return
        except RemoteProtocolError as exc:
            log.warning("lane peer %s broke the lane protocol: %s", short_id(self.session.peer_id), exc)
            self.fail(f"protocol error: {exc}")
        except Exception:  # a bug here must end the lane (streams fail), not leave them hanging
            log.exception("lane reader for %s failed", short_id(self.session.peer_id))
            self.fail("internal error in the lane reader")

    def _is_remote(self, stream_id: int) -> bool:
        return (stream_id & 1) == (1 if self.is_client else 0)

    def _on_frame(self, frame: LaneFrame) -> None:
        kind, stream_id = frame.type, frame.stream_id
        if kind is LaneFrameType.OPEN:
            self._on_open(frame)
            return
        if kind is LaneFrameType.HELLO:
            raise RemoteProtocolError("HELLO after the lane was set up")
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_remote(stream_id) and stream_id > self._remote_last:
                raise RemoteProtocolError(f"lane frame for stream {stream_id} that was never opened")
            if not self._is_remote(stream_id) and stream_id >= self._next_id:
                raise RemoteProtocolError(f"lane frame for our stream {stream_id} that we never opened")
            return  # a stream already finished, aborted or refused: late frames are harmless
        if kind is LaneFrameType.DATA:
            stream._receive(frame.data, False)
        elif kind is LaneFrameType.FIN:
            stream._receive(b"", True)
        elif kind is LaneFrameType.CREDIT:
            stream._credit(frame.consumed)
        elif kind is LaneFrameType.RESET:
            self._streams.pop(stream_id, None)
            stream._fail(SessionClosed(f"peer reset lane stream {stream_id}"))

    def _on_open(self, frame: LaneFrame) -> None:
        stream_id = frame.stream_id
        if not self._is_remote(stream_id) or stream_id <= self._remote_last:
            raise RemoteProtocolError(f"lane OPEN with stream id {stream_id} out of order")
        self._remote_last = stream_id
        session = self.session
        handler = None if session.guest else (session._stream_handlers.get(frame.name)
                                              or session._endpoint._stream_handlers.get(frame.name))
        remote_streams = sum(1 for sid in self._streams if self._is_remote(sid))
        if handler is None or remote_streams >= MAX_REMOTE_STREAMS or session.state != "up":
            log.warning("peer %s opened lane stream %r: refused (%s)", short_id(session.peer_id), frame.name,
                        "no handler" if handler is None else "too many streams")
            self._write(encode_empty(LaneFrameType.RESET, stream_id))
            return
        stream = Stream(self, stream_id, frame.name, frame.meta or {})
        self._streams[stream_id] = stream
        session._spawn(session._run_stream_handler(handler, stream))


class _LaneProtocol(asyncio.BufferedProtocol):
    """Feeds a lane from its TCP transport (set by Lane.start): the socket reads straight into the
    record opener's buffer, where records are opened in place (no bytes object per read)."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._lane._get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._lane._buffer_updated(nbytes)

    def eof_received(self) -> bool:
        self._lane.fail("peer closed the TCP connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.fail("TCP connection lost" if exc is None else f"TCP connection failed: {exc!r}")


@dataclass
class _PendingLane:
    session: Session
    secret: bytes
    expires: float


class LaneService:
    """The endpoint's TCP listener plus the per-session lane set-up. Made by Endpoint.start."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._server: asyncio.base_events.Server | None = None
        self._pending: dict[bytes, _PendingLane] = {}
        self._preauth = 0
        self._dialing: set[Session] = set()
        self._dial_started: weakref.WeakKeyDictionary[Session, tuple[float, asyncio.Event]] = weakref.WeakKeyDictionary()
        # Per-session redial counts; weak so finished sessions cost nothing.
        self._failures: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refused = 0
        "TCP connections closed before becoming a lane (bad preamble, unknown id, wrong key)"

    @classmethod
    async def start(cls, endpoint: Endpoint, host: str, port: int) -> LaneService:
        service = cls(endpoint)
        for candidate in (port, 0):  # the UDP port number when free: one number to remember per device
            try:
                service._server = await asyncio.start_server(service._on_connection, host, candidate,
                                                             reuse_address=True)
                break
            except OSError as exc:
                log.debug("TCP port %d not available for the lane: %s", candidate, exc)
        if service._server is None:
            raise TransportError(f"cannot listen on TCP {host} for the bulk lane")
        endpoint.on_request(LANE_REQUEST, service._on_lane_request)
        endpoint.on_session(service._on_session)
        endpoint.subscribe(service._on_event)
        return service

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def drop_all(self, reason: str) -> None:
        """Fail every lane (our own addresses changed: the TCP connections may be dead)."""
        for session in list(self._endpoint.sessions.values()):
            if session.lane is not None:
                session.lane.fail(reason)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        self._pending.clear()

    # --- client side: asking for and opening a lane --------------------------------------
    def _on_session(self, session: Session) -> None:
        self._maybe_dial(session, 0.0)

    def _on_event(self, event: TransportEvent) -> None:
        if not isinstance(event, PathChanged):
            return
        session = self._endpoint.sessions.get(event.peer_id)
        if session is None:
            return
        lane = session.lane
        if lane is not None and (event.path not in LANE_PATHS or event.addr != lane.addr):
            # The peer (or we) moved: the TCP connection runs over the old addresses and may be
            # dead without knowing it. Streams on it fail; new ones use QUIC or a new lane.
            lane.fail(f"path changed to {event.path} {event.addr!r}")
        self._maybe_dial(session, 0.0)

    def _maybe_dial(self, session: Session, delay: float) -> None:
        if (session.is_client and session.state == "up" and not session.guest and session.lane is None
                and session.path in LANE_PATHS and _ip_of(session.addr) is not None and session not in self._dialing):
            self._dialing.add(session)
            if not delay:
                self._dial_started[session] = (time.monotonic(), asyncio.Event())
            self._spawn(self._dial(session, delay))

    async def wait_briefly(self, session: Session) -> None:
        """Let a lane whose set-up began less than LANE_WAIT ago finish before a stream picks QUIC.

        On a LAN the lane is up within ms of the session, and the first bulk transfer of a
        session is often the biggest; where TCP does not get through (NAT) this costs the
        first stream at most LANE_WAIT.
        """
        entry = self._dial_started.get(session)
        if entry is None:
            return
        started, done = entry
        left = started + LANE_WAIT - time.monotonic()
        if left > 0 and not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), left)
            except TimeoutError:
                pass  # still setting up: this stream rides QUIC

    def _lane_lost(self, lane: Lane) -> None:
        session = lane.session
        if not lane.is_client or session.state != "up":
            return
        failures = self._failures.get(session, 0)
        if failures < len(REDIAL_BACKOFF):
            self._failures[session] = failures + 1
            self._maybe_dial(session, REDIAL_BACKOFF[failures])

    async def _dial(self, session: Session, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            if session.state != "up" or session.lane is not None or session.path not in LANE_PATHS:
                return
            await asyncio.wait_for(self._open(session), SETUP_TIMEOUT)
        except RequestFailed as exc:
            log.info("peer %s offers no TCP lane (%s); streams stay on QUIC", short_id(session.peer_id), exc)
        except (TransportError, OSError, EOFError, TimeoutError) as exc:
            log.info("TCP lane to %s not opened: %r; streams stay on QUIC", short_id(session.peer_id), exc)
            if session.state == "up":
                self._lane_lost_during_setup(session)
        finally:
            self._dialing.discard(session)
            entry = self._dial_started.get(session)
            if entry is not None:
                entry[1].set()

    def _lane_lost_during_setup(self, session: Session) -> None:
        failures = self._failures.get(session, 0)
        if failures < len(REDIAL_BACKOFF):
            self._failures[session] = failures + 1
            self._spawn(self._retry_later(session, REDIAL_BACKOFF[failures]))

    async def _retry_later(self, session: Session, delay: float) -> None:
        await asyncio.sleep(0)  # let _dial's finally forget the session first
        self._maybe_dial(session, delay)

    async def _open(self, session: Session) -> None:
        reply = await session.request(LANE_REQUEST, {"v": 2}, timeout=SETUP_TIMEOUT)
        if not (isinstance(reply, dict) and isinstance(reply.get("p"), int) and 0 < reply["p"] < 65536
                and isinstance(reply.get("l"), bytes) and len(reply["l"]) == LANE_ID_SIZE
                and isinstance(reply.get("k"), bytes) and len(reply["k"]) == SECRET_SIZE):
            raise RemoteProtocolError("malformed lane offer (a peer running an older lane protocol?)")
        host = _ip_of(session.addr)
        if host is None or session.path not in LANE_PATHS:
            return
        keys = LaneKeys.derive(reply["k"], is_client=True)
        sealer, opener = RecordSealer(keys.send), RecordOpener(keys.receive)
        reader, writer = await asyncio.open_connection(host, reply["p"])
        try:
            writer.write(encode_preamble(reply["l"]) + b"".join(sealer.seal(encode_empty(LaneFrameType.HELLO, 0))))
            # Only the session's peer holds the secret: its HELLO opening is the server's proof.
            if await read_record(reader, opener) != encode_empty(LaneFrameType.HELLO, 0):
                raise RemoteProtocolError("lane server did not send HELLO")
        except BaseException:
            writer.close()
            raise
        if session.state != "up" or session.lane is not None:
            writer.close()
            return
        self._attach(session, Lane(session, reader, writer, True, sealer, opener))

    # --- server side ----------------------------------------------------------------------
    async def _on_lane_request(self, session: Session, body: Any) -> dict[str, Any]:
        if session.guest or session.path not in LANE_PATHS:
            raise RequestFailed("lane_refused", f"no TCP lane on a {session.path} path")
        if not isinstance(body, dict) or body.get("v") != 2:
            raise RequestFailed("bad_request", "this device speaks lane protocol v2 only (sealed records)")
        now = time.monotonic()
        for lane_id in [k for k, p in self._pending.items() if p.expires < now]:
            del self._pending[lane_id]
        if len(self._pending) >= MAX_PENDING_IDS:
            raise RequestFailed("busy", "too many lanes being set up")
        lane_id, secret = secrets.token_bytes(LANE_ID_SIZE), secrets.token_bytes(SECRET_SIZE)
        self._pending[lane_id] = _PendingLane(session, secret, now + LANE_ID_TTL)
        return {"p": self.port, "l": lane_id, "k": secret}

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._preauth >= MAX_PREAUTH_CONNECTIONS:
            self.refused += 1
            writer.transport.abort()
            return
        self._preauth += 1
        try:
            lane = await asyncio.wait_for(self._accept(reader, writer), SETUP_TIMEOUT)
        except (RemoteProtocolError, OSError, EOFError, TimeoutError) as exc:
            self.refused += 1
            log.info("TCP lane connection from %r refused: %r", writer.get_extra_info("peername"), exc)
            writer.transport.abort()
            return
        finally:
            self._preauth -= 1
        if lane is not None:
            self._attach(lane.session, lane)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Lane | None:
        lane_id = decode_preamble(await reader.readexactly(PREAMBLE_SIZE))
        pending = self._pending.pop(lane_id, None)
        if pending is None or pending.expires < time.monotonic():
            raise RemoteProtocolError("unknown or expired lane id")
        session = pending.session
        if session.state != "up" or session.path not in LANE_PATHS:
            raise RemoteProtocolError(f"lane id for a session that is {session.state} on a {session.path} path")
        keys = LaneKeys.derive(pending.secret, is_client=False)
        sealer, opener = RecordSealer(keys.send), RecordOpener(keys.receive)
        # The client's HELLO opening with the secret sent over the session is its proof of identity.
        if await read_record(reader, opener) != encode_empty(LaneFrameType.HELLO, 0):
            raise RemoteProtocolError("lane client did not send HELLO")
        writer.write(b"".join(sealer.seal(encode_empty(LaneFrameType.HELLO, 0))))
        return Lane(session, reader, writer, False, sealer, opener)

    def _attach(self, session: Session, lane: Lane) -> None:
        if session.state != "up":
            lane.fail("session ended during lane set-up")
            return
        if session.lane is not None:
            session.lane.fail("replaced by a new lane")
        session.lane = lane
        lane.start()
        log.info("TCP lane up with %s (%s)", short_id(session.peer_id), "outbound" if lane.is_client else "inbound")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ip_of(addr: Any) -> str | None:
    """The literal IP of a real (host, port) address; None for virtual (relay) addresses."""
    try:
        return str(ipaddress.ip_address(addr[0]))
    except (ValueError, TypeError, IndexError):
        return None


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    """Make a dead lane fail within seconds instead of TCP's ~15 minutes of retransmissions."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_USER_TIMEOUT", int(DEAD_AFTER * 1000)), ("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2),
                        ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux names; elsewhere the session's path events still end stale lanes
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            log.debug("lane socket option %s not set: %s", option, exc)


async def read_record(reader: asyncio.StreamReader, opener: RecordOpener) -> bytes:
    """The plaintext of the next sealed record on a set-up connection (RemoteProtocolError if it is bad)."""
    header = await reader.readexactly(LENGTH.size)
    plain = opener.feed(header + await reader.readexactly(record_length(header)))
    if len(plain) != 1:
        raise RemoteProtocolError("lane set-up record not whole")  # cannot happen: exactly one record was fed
    return plain[0]


__all__ = ["LANE_REQUEST", "Lane", "LaneService", "MAX_LANE_STREAMS", "lane_enabled"]
