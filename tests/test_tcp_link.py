"""The authenticated TCP loopback link: only listed devices that prove their key get through."""
from __future__ import annotations

import asyncio
import os
import socket
import struct

from consensus.commands import SeedSigner
from link_helpers import Sink, wait_until
from consensus.tcp_link import TcpLink

A, B, C = SeedSigner(b"\x21" * 32), SeedSigner(b"\x22" * 32), SeedSigner(b"\x23" * 32)


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_listed_peers_connect_and_exchange_frames():
    async def scenario() -> None:
        pa, pb = _port(), _port()
        la = TcpLink(A, "127.0.0.1", pa, {B.public_key: ("127.0.0.1", pb)})
        lb = TcpLink(B, "127.0.0.1", pb, {A.public_key: ("127.0.0.1", pa)})
        sa, sb = Sink(), Sink()
        la.set_handler(sa)
        lb.set_handler(sb)
        await la.start()
        await lb.start()
        assert await wait_until(lambda: B.public_key in sa.up and A.public_key in sb.up)
        la.send(B.public_key, b"hello")
        assert await wait_until(lambda: sb.frames == [(A.public_key, b"hello")])
        lb.block(A.public_key)                              # partition: both sides see it drop
        assert await wait_until(lambda: B.public_key not in sa.up and A.public_key not in sb.up)
        lb.unblock(A.public_key)
        assert await wait_until(lambda: B.public_key in sa.up)
        await la.close()
        await lb.close()
    asyncio.run(scenario())


def test_unlisted_device_and_impostor_are_refused():
    async def scenario() -> None:
        pa = _port()
        la = TcpLink(A, "127.0.0.1", pa, {B.public_key: ("127.0.0.1", _port())})
        sa = Sink()
        la.set_handler(sa)
        await la.start()
        # C is not listed: its proper handshake is refused.
        lc = TcpLink(C, "127.0.0.1", _port(), {A.public_key: ("127.0.0.1", pa)})
        sc = Sink()
        lc.set_handler(sc)
        await lc.start()
        await asyncio.sleep(0.6)
        assert sa.up == set() and sc.up == set()
        await lc.close()
        # An impostor claims B's key but cannot sign for it.
        reader, writer = await asyncio.open_connection("127.0.0.1", pa)
        writer.write(struct.pack(">I", 64) + B.public_key + os.urandom(32))
        hello = await reader.readexactly(4 + 64)
        assert hello[4:36] == A.public_key
        await reader.readexactly(4 + 64)                        # A's proof
        writer.write(struct.pack(">I", 64) + C.sign(b"anything").ljust(64, b"\0"))
        await writer.drain()
        assert await reader.read() == b""                       # A hangs up
        assert sa.up == set()
        writer.close()
        # Garbage: an oversized frame header.
        reader, writer = await asyncio.open_connection("127.0.0.1", pa)
        writer.write(struct.pack(">I", 10**9))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)          # A's hello, then A hangs up
        assert data[:36] == struct.pack(">I", 64) + A.public_key and len(data) == 68
        writer.close()
        assert sa.up == set()
        await la.close()
    asyncio.run(scenario())
