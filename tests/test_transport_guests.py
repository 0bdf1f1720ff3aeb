"""Guest sessions and unpinned dials (Endpoint.allow_guests / connect_unpinned), every engine.

A joining device does not know its inviter's full key and is not yet a member:
it dials unpinned (its own `accept_server` decides on the server key), and the
inviter lets it in as a guest that can reach only the whitelisted request types.
"""
from __future__ import annotations

import asyncio
import os

import pytest
from transport_helpers import ENGINES, run

from transport.endpoint import Endpoint
from transport.errors import AuthenticationError, RequestFailed
from transport.events import PeerUp
from transport.session import Session

engines = pytest.mark.parametrize("engine", ENGINES)


async def hello(session: Session, body: object) -> dict:
    return {"hi": session.peer_id, "guest": session.guest}


async def _server(engine: str, members: set[bytes]) -> Endpoint:
    srv = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: k in members, engine=engine)
    srv.on_request("join.hello", hello)
    srv.on_request("secret", hello)
    return srv


@engines
def test_guest_reaches_only_whitelisted_requests(engine: str) -> None:
    async def body() -> None:
        members: set[bytes] = set()
        srv = await _server(engine, members)
        seen_up: list[object] = []
        srv.subscribe(seen_up.append)
        raft_msgs: list[object] = []

        async def on_raft(session: Session, body: object) -> None:
            raft_msgs.append(body)
        srv.on_message("raft", on_raft)
        srv.allow_guests(lambda k: True, frozenset({"join.hello"}))
        cli = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: False, engine=engine)
        prefix = srv.device_id[:4]
        s = await cli.connect_unpinned(srv.local_address, lambda k: k[:4] == prefix)
        assert s.peer_id == srv.device_id                 # the TLS-proven key, learnt on the way
        answer = await s.request("join.hello", {})
        assert answer == {"hi": cli.device_id, "guest": True}
        with pytest.raises(RequestFailed) as exc:
            await s.request("secret", {})
        assert exc.value.code == "forbidden"
        s.send("raft", b"frame")                           # messages from a guest are dropped
        await asyncio.sleep(0.2)
        assert raft_msgs == []
        # Invisible to the upper layers: not in sessions, no PeerUp.
        assert cli.device_id not in srv.sessions
        assert not any(isinstance(e, PeerUp) for e in seen_up)
        for ep in (cli, srv):
            await ep.close()

    run(body())


@engines
def test_member_is_not_a_guest_and_guests_off_refuses(engine: str) -> None:
    async def body() -> None:
        members: set[bytes] = set()
        srv = await _server(engine, members)
        cli = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine)
        # No guest policy: an unknown key is refused as before.
        with pytest.raises(AuthenticationError):
            s = await cli.connect_unpinned(srv.local_address, lambda k: True, timeout=3)
            await s.request("join.hello", {})
        srv.allow_guests(lambda k: k != cli.device_id, frozenset({"join.hello"}))
        with pytest.raises(AuthenticationError):      # refused by the guest policy too
            s = await cli.connect_unpinned(srv.local_address, lambda k: True, timeout=3)
            await s.request("join.hello", {})
        members.add(cli.device_id)                     # now a member: full access, not a guest
        s = await cli.connect(srv.device_id, srv.local_address)
        assert (await s.request("secret", {})) == {"hi": cli.device_id, "guest": False}
        for ep in (cli, srv):
            await ep.close()

    run(body())


@engines
def test_unpinned_dial_refuses_the_wrong_server(engine: str) -> None:
    async def body() -> None:
        srv = await _server(engine, set())
        srv.allow_guests(lambda k: True, frozenset({"join.hello"}))
        cli = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: False, engine=engine)
        with pytest.raises(AuthenticationError, match="not the one"):
            await cli.connect_unpinned(srv.local_address, lambda k: False, timeout=3)
        assert not cli.sessions
        for ep in (cli, srv):
            await ep.close()

    run(body())


@engines
def test_guests_are_capped_and_time_limited(engine: str) -> None:
    async def body() -> None:
        srv = await _server(engine, set())
        srv.allow_guests(lambda k: True, frozenset({"join.hello"}), max_guests=1, lifetime=0.5)
        c1 = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: False, engine=engine)
        c2 = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: False, engine=engine)
        s1 = await c1.connect_unpinned(srv.local_address, lambda k: True)
        with pytest.raises(AuthenticationError):          # the one guest slot is taken
            await c2.connect_unpinned(srv.local_address, lambda k: True, timeout=3)
        await asyncio.wait_for(s1.wait_closed(), 5)        # its lifetime ends
        s2 = await c2.connect_unpinned(srv.local_address, lambda k: True)   # the slot is free again
        assert (await s2.request("join.hello", {}))["guest"] is True
        for ep in (c1, c2, srv):
            await ep.close()

    run(body())
