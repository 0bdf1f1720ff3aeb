"""Bulk byte streams inside a session: both directions, credit-based backpressure.

Invariants (Rule 2 of transport.session):
- A writer never has more than STREAM_WINDOW bytes the peer's application has not read:
  `write` waits for CREDIT frames, which the reader sends as its application consumes.
- A reader never buffers more than STREAM_WINDOW + WRITE_CHUNK bytes; a peer sending past
  its credit is a protocol violation (RemoteProtocolError).
- The session forgets a stream once both directions are over and the peer has credited
  everything we sent, so finished transfers cost no memory.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

from transport.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError, SessionClosed, TransportError

if TYPE_CHECKING:
    from transport.lane import Lane
    from transport.session import Session

STREAM_WINDOW = 8 * 1024 * 1024
WRITE_CHUNK = 256 * 1024
CREDIT_DELAY = 0.005


class Stream:
    """A bulk byte stream inside a session, both directions, with backpressure.

    Use `await write(data)` (waits while the peer's application is not reading),
    `await read(n)` / `async for chunk in stream` (b"" / end of iteration at the peer's
    end), `close()` to finish our side, `abort()` to reset it.
    """

    def __init__(self, session: Session | Lane, stream_id: int, name: str, meta: dict[str, Any]) -> None:
        # `session` is whatever carries the bytes: the QUIC Session, or a TCP Lane offering the
        # same hooks (_send_stream, _send_credit, _abort_stream, _streams, closed).
        self._session = session
        self.stream_id = stream_id
        "QUIC stream id, or the lane stream id when the stream rides the TCP bulk lane (transport.lane)"
        self.name = name
        "the handler name given by the opener"
        self.meta = meta
        "the opener's metadata map"
        self._rx: deque[bytes] = deque()
        self._rx_bytes = 0
        self._rx_eof = False
        self._rx_error: TransportError | None = None
        self._rx_event = asyncio.Event()
        self._consumed = 0
        self._credited = 0
        self._credit_timer = False
        self._sent = 0
        self._peer_consumed = 0
        self._tx_closed = False
        self._tx_error: TransportError | None = None
        self._credit_event = asyncio.Event()

    # --- writing --------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Send `data`, waiting whenever STREAM_WINDOW bytes are unread by the peer."""
        view = memoryview(data)
        while view:
            self._check_writable()
            while self._sent - self._peer_consumed >= STREAM_WINDOW:
                self._credit_event.clear()
                await self._credit_event.wait()
                self._check_writable()
            room = STREAM_WINDOW - (self._sent - self._peer_consumed)
            chunk = view[: min(room, WRITE_CHUNK)]
            self._session._send_stream(self.stream_id, chunk, False)
            self._sent += len(chunk)
            view = view[len(chunk) :]

    def _check_writable(self) -> None:
        if self._tx_error is not None:
            raise self._tx_error
        if self._tx_closed:
            raise LocalProtocolError("write after close() on this stream")

    def close(self) -> None:
        """Finish our sending side (the peer reads end-of-stream after the data)."""
        if not self._tx_closed and self._tx_error is None and not self._session.closed:
            self._tx_closed = True
            try:
                self._session._send_stream(self.stream_id, b"", True)
            except SessionClosed as exc:
                self._fail(exc)
        self._maybe_done()

    def _maybe_done(self) -> None:
        # Both directions over: the session forgets the stream (the caller may still read its buffer).
        tx_done = self._tx_error is not None or (self._tx_closed and self._peer_consumed >= self._sent)
        if (self._rx_eof or self._rx_error is not None) and tx_done:
            self._session._streams.pop(self.stream_id, None)

    def abort(self) -> None:
        """Reset both directions: the peer's reads and writes fail."""
        self._tx_closed = True
        self._session._abort_stream(self.stream_id)
        self._fail(SessionClosed("stream aborted locally"))

    async def drain(self) -> None:
        """Wait until the peer's application consumed everything written so far."""
        while self._peer_consumed < self._sent:
            self._check_alive()
            self._credit_event.clear()
            await self._credit_event.wait()

    def _check_alive(self) -> None:
        if self._tx_error is not None:
            raise self._tx_error

    # --- reading --------------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (any amount if n < 0); b"" once the peer finished its side."""
        while not self._rx:
            if self._rx_error is not None:
                raise self._rx_error
            if self._rx_eof:
                self._send_credit()  # the tail, now: a writer may be waiting in drain()
                return b""
            self._rx_event.clear()
            await self._rx_event.wait()
        first = self._rx[0]
        if 0 <= n < len(first):
            out = first[:n]
            self._rx[0] = first[n:]
        else:
            out = self._rx.popleft()
        self._rx_bytes -= len(out)
        self._consume(len(out))
        return out

    async def read_exactly(self, n: int) -> bytes:
        """Exactly `n` bytes; RemoteProtocolError if the stream ends first."""
        parts = []
        while n:
            part = await self.read(n)
            if not part:
                raise RemoteProtocolError("stream ended before the expected bytes")
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    async def read_all(self, limit: int) -> bytes:
        """Everything until the peer's end; MessageTooLarge past `limit` bytes."""
        parts, total = [], 0
        async for chunk in self:
            total += len(chunk)
            if total > limit:
                self.abort()
                raise MessageTooLarge(f"stream longer than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read()
            if not chunk:
                return
            yield chunk

    def _consume(self, n: int) -> None:
        self._consumed += n
        if self._consumed - self._credited >= STREAM_WINDOW // 4:
            self._send_credit()
        elif not self._rx and not self._credit_timer:
            # The reader caught up: return the remainder soon (not per packet), so a
            # writer waiting in drain() finishes even for a small tail.
            self._credit_timer = True
            asyncio.get_running_loop().call_later(CREDIT_DELAY, self._send_credit)

    def _send_credit(self) -> None:
        self._credit_timer = False
        if self._consumed > self._credited:
            self._credited = self._consumed
            self._session._send_credit(self.stream_id, self._consumed)

    # --- fed by the session ---------------------------------------------------------------
    def _receive(self, data: bytes, end: bool) -> None:
        if data:
            self._rx.append(data)
            self._rx_bytes += len(data)
            if self._rx_bytes > STREAM_WINDOW + WRITE_CHUNK:
                raise RemoteProtocolError(f"peer sent {self._rx_bytes} unread bytes on stream {self.stream_id}, past its credit")
        if end:
            self._rx_eof = True
            self._maybe_done()
        self._rx_event.set()

    def _credit(self, consumed: int) -> None:
        if consumed > self._sent:
            raise RemoteProtocolError("peer credited bytes we never sent")
        if consumed > self._peer_consumed:
            self._peer_consumed = consumed
            self._credit_event.set()
            self._maybe_done()

    def _fail(self, error: TransportError) -> None:
        if self._rx_error is None and not self._rx_eof:
            self._rx_error = error
        if self._tx_error is None:
            self._tx_error = error
        self._rx_event.set()
        self._credit_event.set()

    @property
    def buffered(self) -> int:
        """Received bytes not yet read by the application."""
        return self._rx_bytes

    @property
    def unacknowledged(self) -> int:
        """Written bytes the peer's application has not consumed yet (<= STREAM_WINDOW)."""
        return self._sent - self._peer_consumed


__all__ = ["CREDIT_DELAY", "STREAM_WINDOW", "Stream", "WRITE_CHUNK"]
