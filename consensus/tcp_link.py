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
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct

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


class TcpLink:
    """A ``RaftLink`` over TCP on loopback; start with ``await link.start()``."""

    def __init__(self, signer: Signer, host: str, port: int, peers: dict[bytes, tuple[str, int]]) -> None:
        self._signer = signer
        self.key = signer.public_key
        self._host, self._port = host, port
        self._peers = dict(peers)
        self._handler: LinkHandler | None = None
        self._writers: dict[bytes, asyncio.StreamWriter] = {}
        self._blocked: set[bytes] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---------------------------------------------------------- RaftLink
    def set_handler(self, handler: LinkHandler) -> None:
        self._handler = handler
        for peer in self._writers:
            handler.link_up(peer)

    def send(self, peer: bytes, frame: bytes) -> None:
        writer = self._writers.get(peer)
        if writer is None or writer.is_closing():
            return
        writer.write(_HEADER.pack(len(frame)) + frame)

    def connected_peers(self) -> set[bytes]:
        return set(self._writers)

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
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._spawn(self._dial_loop())

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for key in list(self._writers):
            self._drop(key)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------- internals
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, key: bytes) -> None:
        writer = self._writers.pop(key, None)
        if writer is not None:
            writer.close()
            if self._handler is not None:
                self._handler.link_down(key)

    async def _dial_loop(self) -> None:
        while not self._closed:
            for key, (host, port) in list(self._peers.items()):
                if key > self.key and key not in self._writers and key not in self._blocked:
                    self._spawn(self._dial(key, host, port))
            await asyncio.sleep(REDIAL_INTERVAL)

    async def _dial(self, key: bytes, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            return
        await self._run(reader, writer, expected=key)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._run(reader, writer, expected=None)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        nonce = os.urandom(32)
        writer.write(_HEADER.pack(64) + self.key + nonce)
        hello = await _read_frame(reader, 64)
        peer, peer_nonce = hello[:32], hello[32:]
        if len(hello) != 64 or peer not in self._peers or peer in self._blocked or peer == self.key:
            raise _Refused("unknown or blocked device")
        proof = self._signer.sign(_CONTEXT + peer_nonce + self.key + peer)
        writer.write(_HEADER.pack(len(proof)) + proof)
        their_proof = await _read_frame(reader, 64)
        try:
            VerifyKey(peer).verify(_CONTEXT + nonce + peer + self.key, their_proof)
        except BadSignatureError as exc:
            raise _Refused("device failed to prove its key") from exc
        return peer

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expected: bytes | None) -> None:
        peer = None
        try:
            peer = await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_TIMEOUT)
            if (expected is not None and peer != expected) or peer in self._writers or self._closed:
                raise _Refused("duplicate or unexpected connection")
            self._writers[peer] = writer
            if self._handler is not None:
                self._handler.link_up(peer)
            while True:
                frame = await _read_frame(reader, MAX_FRAME)
                if self._handler is not None and self._writers.get(peer) is writer:
                    self._handler.link_message(peer, frame)
        except (_Refused, asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                logger.debug("tcp link to %s ended: %s", peer.hex()[:12] if peer else "?", exc)
        finally:
            if peer is not None and self._writers.get(peer) is writer:
                self._drop(peer)
            else:
                writer.close()


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = _HEADER.unpack(await reader.readexactly(4))
    if size > limit:
        raise ValueError(f"frame of {size} bytes is over {limit}")
    return await reader.readexactly(size)
