"""Batched UDP I/O for the endpoint's one socket: drain many datagrams per wake-up, send with GSO.

Why: the receiver is CPU-bound on per-datagram event-loop plumbing, so each readiness
callback drains up to `RECV_BATCH` datagrams and each transmit hands the kernel a
whole train of same-sized datagrams in one syscall (UDP_SEGMENT, "GSO").

Two back ends, same behaviour:
- native: qh3's quinn-udp binding (recvmmsg + GRO, sendmsg + GSO in Rust) when present;
- python: recvfrom loop, and sendmsg with a UDP_SEGMENT cmsg when the kernel accepts
  it (probed once), else one sendto per datagram.

Invariants: sending never blocks and never buffers without bound: when the kernel
buffer is full, datagrams wait in a queue of at most `MAX_QUEUED_BYTES`, beyond which
they are dropped (QUIC treats that as loss and slows down). Addresses handed up are
always (host, port) 2-tuples.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections import deque
from typing import Any, Callable

log = logging.getLogger("transport.udp")

RECV_BATCH = 64
MAX_QUEUED_BYTES = 4 * 1024 * 1024
SOCKET_BUFFER = 8 * 1024 * 1024
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_U16 = struct.Struct("=H")
_GSO_OFF_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT})

Addr = tuple[str, int]


def _addr2(addr: Any) -> Addr:
    return (addr[0], addr[1])


def _native_state(sock: socket.socket) -> Any:
    try:
        from qh3._hazmat import UdpSocketState
    except ImportError:
        return None
    try:
        return UdpSocketState(sock.fileno())
    except (NotImplementedError, OSError) as exc:
        log.info("native UDP batching unavailable: %s", exc)
        return None


def _python_gso(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, 1200)
        sock.setsockopt(_SOL_UDP, _UDP_SEGMENT, 0)
    except OSError:
        return False
    return True


class UdpIO:
    """The endpoint's socket with batched receive and GSO send.

    `on_batch(list[(bytes, addr)])` is called once per readiness wake-up.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_batch: Callable[[list[tuple[bytes, Addr]]], None],
        native: bool = True,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._on_batch = on_batch
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass  # the kernel caps it; defaults still work, only slower
        sock.setblocking(False)
        self._v6 = sock.family == socket.AF_INET6
        self._native = _native_state(sock) if native else None
        self._gso = self._native is None and _python_gso(sock)
        self._queue: deque[tuple[list[bytes], Addr]] = deque()
        self._queued_bytes = 0
        self._writer = False
        self._closed = False
        self.dropped = 0
        "datagrams dropped because the send queue was full or the send failed"
        loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def backend(self) -> str:
        """'native' (quinn-udp), 'gso' (python sendmsg + UDP_SEGMENT) or 'plain'."""
        return "native" if self._native is not None else ("gso" if self._gso else "plain")

    def local_address(self) -> Addr:
        return _addr2(self._sock.getsockname())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writer:
            self._loop.remove_writer(self._sock.fileno())
        # quinn-udp keeps its own handle on the socket: drop it or the port stays bound.
        self._native = None
        self._sock.close()

    # --- receive ------------------------------------------------------------------------
    def _on_readable(self) -> None:
        batch: list[tuple[bytes, Addr]] = []
        if self._native is not None:
            recv = self._native.recv
            while len(batch) < RECV_BATCH:
                try:
                    got = recv()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                    log.debug("recv: %s", exc)
                    break
                if not got:
                    break
                if self._v6:
                    batch.extend((data, _addr2(addr)) for data, addr in got)
                else:
                    batch.extend(got)  # IPv4 addresses already come as (host, port)
        else:
            recvfrom = self._sock.recvfrom
            for _ in range(RECV_BATCH):
                try:
                    data, addr = recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("recvfrom: %s", exc)
                    break
                batch.append((data, _addr2(addr)))
        if batch:
            self._on_batch(batch)

    # --- send ---------------------------------------------------------------------------
    def send(self, datagrams: list[bytes], addr: Addr) -> None:
        """Send `datagrams` to `addr` now, or queue them (bounded) if the kernel is full."""
        if self._closed or not datagrams:
            return
        if self._queue:
            self._enqueue(datagrams, addr)
            return
        sent = self._send_now(datagrams, addr)
        if sent < len(datagrams):
            self._enqueue(datagrams[sent:], addr)

    def _send_now(self, datagrams: list[bytes], addr: Addr) -> int:
        """Return how many datagrams left (or were deliberately dropped); the rest must wait."""
        if self._native is not None:
            try:
                return self._native.send(datagrams, addr)
            except (BlockingIOError, InterruptedError) as exc:
                return getattr(exc, "datagrams_sent", 0)
            except OSError as exc:
                sent = getattr(exc, "datagrams_sent", 0)
                if exc.errno in _GSO_OFF_ERRNOS:
                    self._native.disable_gso()
                    return sent + self._send_plain(datagrams[sent:], addr)
                self._drop(exc, len(datagrams) - sent)
                return len(datagrams)
        if self._gso:
            return self._send_gso(datagrams, addr)
        return self._send_plain(datagrams, addr)

    def _send_plain(self, datagrams: list[bytes], addr: Addr) -> int:
        sendto = self._sock.sendto
        for i, data in enumerate(datagrams):
            try:
                sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return i
            except OSError as exc:  # unreachable, too big: that datagram is lost, QUIC recovers
                self._drop(exc, 1)
        return len(datagrams)

    def _send_gso(self, datagrams: list[bytes], addr: Addr) -> int:
        i = 0
        n = len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            # A GSO train: equal-sized segments, the last one may be shorter.
            while j < n and j - i < _GSO_MAX_SEGMENTS and (j - i + 1) * size <= _GSO_MAX_BYTES:
                if len(datagrams[j]) != size:
                    if len(datagrams[j]) < size:
                        j += 1
                    break
                j += 1
            try:
                if j - i == 1:
                    self._sock.sendto(datagrams[i], addr)
                else:
                    self._sock.sendmsg(datagrams[i:j], [(_SOL_UDP, _UDP_SEGMENT, _U16.pack(size))], 0, addr)
            except (BlockingIOError, InterruptedError):
                return i
            except OSError as exc:
                if exc.errno in _GSO_OFF_ERRNOS:
                    self._gso = False
                    return i + self._send_plain(datagrams[i:], addr)
                self._drop(exc, j - i)
            i = j
        return n

    def _drop(self, exc: OSError, count: int) -> None:
        self.dropped += count
        log.debug("send failed, %d datagram(s) dropped: %s", count, exc)

    def _enqueue(self, datagrams: list[bytes], addr: Addr) -> None:
        size = sum(len(d) for d in datagrams)
        if self._queued_bytes + size > MAX_QUEUED_BYTES:
            self.dropped += len(datagrams)
            return
        self._queue.append((datagrams, addr))
        self._queued_bytes += size
        if not self._writer:
            self._writer = True
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        while self._queue:
            datagrams, addr = self._queue[0]
            sent = self._send_now(datagrams, addr)
            self._queued_bytes -= sum(len(d) for d in datagrams[:sent])
            if sent < len(datagrams):
                self._queue[0] = (datagrams[sent:], addr)
                return
            self._queue.popleft()
        self._writer = False
        self._loop.remove_writer(self._sock.fileno())


__all__ = ["Addr", "RECV_BATCH", "UdpIO"]
