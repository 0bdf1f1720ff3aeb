"""An authenticated TCP ``RaftLink`` for loopback tests and benchmarks.

Production Raft rides on transport sessions (``consensus.session_link``); this
link exists so the consensus layer can be tested and measured across real
processes on its own. It is still honest about identity: each side proves its
Ed25519 device key by signing the other's fresh nonce, and only keys in the
allow-list may connect.

Wire: ``u32 length || payload``. Handshake payloads: ``hello = key(32) ||
nonce(32)``, then ``proof = sig(CONTEXT || peer_nonce || own_key || peer_key)``.
Then every payload is one Raft frame. The side with the smaller key dials, so
each pair has one connection. ``block(peer)`` cuts a peer off (both
directions, no reconnect) until ``unblock`` — how tests partition processes.

Connections are asyncio Protocols, not streams: a frame reaches the handler in
the ``data_received`` callback itself, so a hop costs no task wake-up (one loop
iteration less per Raft message, which is most of a sequential commit's cost).
Nothing but the two handshake payloads is accepted before the peer proved its key.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from consensus.commands import Signer
from consensus.raft_transport import MAX_FRAME, LinkHandler

logger = logging.getLogger(__name__)

_CONTEXT = b"pcloud raft tcp link v1\x00"
_HEADER = struct.Struct(">I")
HANDSHAKE_TIMEOUT = 2.0
REDIAL_INTERVAL = 0.2


class _Refused(Exception):
    """The other end failed the handshake."""


class _Conn(asyncio.Protocol):
    """One TCP connection: handshake (hello, proof), then length-prefixed Raft frames."""

    def __init__(self, link: TcpLink, expected: bytes | None) -> None:
        self.link = link
        self.expected = expected
        self.transport: asyncio.Transport | None = None
        self.peer: bytes | None = None
        self.state = "hello"                    # -> "proof" -> "up" -> "closed"
        self.ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._nonce = os.urandom(32)
        self._buf = bytearray()
        self._deadline: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(_HEADER.pack(64) + self.link.key + self._nonce)
        self._deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 4 and self.state != "closed":
                (size,) = _HEADER.unpack_from(buf, pos)
                if size > (MAX_FRAME if self.state == "up" else 64):
                    raise _Refused(f"frame of {size} bytes is over the limit")
                if len(buf) - pos - 4 < size:
                    break
                payload = bytes(buf[pos + 4:pos + 4 + size])
                pos += 4 + size
                self._on_payload(payload)
        except _Refused as exc:
            logger.debug("tcp link to %s refused: %s", self.peer.hex()[:12] if self.peer else "?", exc)
            self.close()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    # ---------------------------------------------------------- protocol
    def _on_payload(self, payload: bytes) -> None:
        link = self.link
        if self.state == "up":
            if link._handler is not None and link._conns.get(self.peer) is self:
                link._handler.link_message(self.peer, payload)
        elif self.state == "hello":
            peer, peer_nonce = payload[:32], payload[32:]
            if (len(payload) != 64 or peer not in link._peers or peer in link._blocked or peer == link.key
                    or (self.expected is not None and peer != self.expected)):
                raise _Refused("unknown, blocked or unexpected device")
            self.peer = peer
            self.transport.write(_HEADER.pack(64) + link._signer.sign(_CONTEXT + peer_nonce + link.key + peer))
            self.state = "proof"
        elif self.state == "proof":
            try:
                VerifyKey(self.peer).verify(_CONTEXT + self._nonce + self.peer + link.key, payload)
            except BadSignatureError as exc:
                raise _Refused("device failed to prove its key") from exc
            if self.peer in link._conns or link._closed:
                raise _Refused("duplicate connection")
            self.state = "up"
            if self._deadline is not None:
                self._deadline.cancel()
            link._attach(self.peer, self)
            if not self.ready.done():
                self.ready.set_result(self.peer)

    def _handshake_expired(self) -> None:
        if self.state in ("hello", "proof"):
            logger.debug("tcp link handshake timed out")
            self.close()

    def write(self, frame: bytes) -> None:
        if self.state == "up" and not self.transport.is_closing():
            self.transport.write(_HEADER.pack(len(frame)) + frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        if self.state == "closed":
            return
        was_up, self.state = self.state == "up", "closed"
        if self._deadline is not None:
            self._deadline.cancel()
        if not self.ready.done():
            self.ready.set_exception(_Refused("connection ended during the handshake"))
            self.ready.exception()              # retrieved: a failed dial is routine
        if was_up:
            self.link._detach(self.peer, self)


class TcpLink:
    """A ``RaftLink`` over TCP on loopback; start with ``await link.start()``."""

    def __init__(self, signer: Signer, host: str, port: int, peers: dict[bytes, tuple[str, int]]) -> None:
        self._signer = signer
        self.key = signer.public_key
        self._host, self._port = host, port
        self._peers = dict(peers)
        self._handler: LinkHandler | None = None
        self._conns: dict[bytes, _Conn] = {}
        self._blocked: set[bytes] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---------------------------------------------------------- RaftLink
    def set_handler(self, handler: LinkHandler) -> None:
        self._handler = handler
        for peer in self._conns:
            handler.link_up(peer)

    def send(self, peer: bytes, frame: bytes) -> None:
        conn = self._conns.get(peer)
        if conn is not None:
            conn.write(frame)

    def connected_peers(self) -> set[bytes]:
        return set(self._conns)

    # ---------------------------------------------------------- control
    def add_peer(self, key: bytes, addr: tuple[str, int]) -> None:
        self._peers[key] = addr

    def remove_peer(self, key: bytes) -> None:
        """Forget ``key`` (e.g. revoked): close its connection and refuse it from now on."""
        self._peers.pop(key, None)
        self._drop(key)

    def block(self, key: bytes) -> None:
        self._blocked.add(key)
        self._drop(key)

    def unblock(self, key: bytes) -> None:
        self._blocked.discard(key)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self, None), self._host, self._port)
        self._spawn(self._dial_loop())

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for key in list(self._conns):
            self._drop(key)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------- internals
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _attach(self, peer: bytes, conn: _Conn) -> None:
        self._conns[peer] = conn
        if self._handler is not None:
            self._handler.link_up(peer)

    def _detach(self, peer: bytes, conn: _Conn) -> None:
        if self._conns.get(peer) is conn:
            del self._conns[peer]
            if self._handler is not None:
                self._handler.link_down(peer)

    def _drop(self, key: bytes) -> None:
        conn = self._conns.get(key)
        if conn is not None:
            conn.close()                        # connection_lost / _finish report link_down

    async def _dial_loop(self) -> None:
        while not self._closed:
            for key, (host, port) in list(self._peers.items()):
                if key > self.key and key not in self._conns and key not in self._blocked:
                    self._spawn(self._dial(key, host, port))
            await asyncio.sleep(REDIAL_INTERVAL)

    async def _dial(self, key: bytes, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self, key), host, port), HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            return
        try:
            await conn.ready
        except _Refused:
            return
