"""Raft frames over real QUIC sessions (transport.endpoint): delivery, refusal of malformed bodies."""
from __future__ import annotations

import asyncio

from consensus.commands import SeedSigner
from link_helpers import Sink, wait_until
from consensus.session_link import MSG_TYPE, SessionLink
from transport.endpoint import Endpoint

A, B = SeedSigner(b"\x31" * 32), SeedSigner(b"\x32" * 32)


def test_frames_cross_quic_and_bad_bodies_are_refused():
    async def scenario() -> None:
        allowed = {A.public_key, B.public_key}
        ea = await Endpoint.start("127.0.0.1", 0, b"\x31" * 32, admit=lambda k: k in allowed)
        eb = await Endpoint.start("127.0.0.1", 0, b"\x32" * 32, admit=lambda k: k in allowed)
        la, lb = SessionLink(ea), SessionLink(eb)
        sa, sb = Sink(), Sink()
        la.set_handler(sa)
        lb.set_handler(sb)
        session = await ea.connect(B.public_key, eb.local_address)
        assert await wait_until(lambda: B.public_key in sa.up and A.public_key in sb.up)
        la.send(B.public_key, b"frame-1")
        assert await wait_until(lambda: sb.frames == [(A.public_key, b"frame-1")])
        session.send(MSG_TYPE, {"not": "bytes"})              # a peer's malformed body
        assert await wait_until(lambda: lb.refused == 1)
        assert sb.frames == [(A.public_key, b"frame-1")]
        lb.block(A.public_key)                                # stop forwarding, session stays
        la.send(B.public_key, b"frame-2")
        await asyncio.sleep(0.3)
        assert len(sb.frames) == 1 and A.public_key not in sb.up
        lb.unblock(A.public_key)
        assert A.public_key in sb.up
        la.send(B.public_key, b"frame-3")
        assert await wait_until(lambda: sb.frames[-1] == (A.public_key, b"frame-3"))
        la.send(b"\x00" * 32, b"to nobody")                    # unknown peer: dropped quietly
        await ea.close()
        await eb.close()
    asyncio.run(scenario())
