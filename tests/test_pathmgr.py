"""Path preference and Reachability on loopback: real endpoints, real relay (serve()), real QUIC."""
from __future__ import annotations

import asyncio
import os
import time

import pytest
from transport_helpers import wait_for

from pcloud.nodeproc import free_port
from transport.endpoint import Endpoint
from transport.pathmgr import FAIL_BACKOFF, PathTable, Reachability
from transport.relay_server import RelayConfig, RelayService


def test_path_table_prefers_lan_then_direct_then_relay_and_backs_off_failures() -> None:
    t = PathTable()
    assert t.best(0) is None
    t.add("relay", ("relay", "ab"))
    assert t.best(0) == ("relay", ("relay", "ab"))
    assert t.add("direct", ("198.18.0.102", 1))
    assert not t.add("direct", ("198.18.0.102", 1))  # unchanged: nothing to re-evaluate
    assert t.best(0)[0] == "direct"
    assert t.upgrade_from("relay", 0) == ("direct", ("198.18.0.102", 1))
    assert t.upgrade_from("direct", 0) is None
    t.add("lan", ("10.77.1.11", 1))
    t.fail("lan", 10.0)
    assert t.best(10.5)[0] == "direct"  # failed LAN path skipped for a while
    assert t.best(10.0 + FAIL_BACKOFF)[0] == "lan"  # then tried again
    assert t.best(11, exclude="direct") == ("relay", ("relay", "ab"))
    t.add("lan", ("10.77.2.5", 1))  # a new LAN address clears the failure mark
    assert t.best(10.5)[0] == "lan"
    t.remove("lan")
    assert t.best(10.5)[0] == "direct"
    with pytest.raises(ValueError):
        t.add("carrier-pigeon", ("x", 1))


def test_relay_first_then_upgrade_keeps_the_same_session() -> None:
    async def main() -> None:
        scope = os.urandom(32)
        relay = RelayService(RelayConfig(listen=[f"127.0.0.1:{free_port()}"], scopes=[scope.hex()]))
        await relay.start()
        ea = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        eb = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        ra = Reachability(ea, [eb.device_id], relay=relay.bound, relay_scope=scope, punch=False)
        rb = Reachability(eb, [ea.device_id], relay=relay.bound, relay_scope=scope, punch=False)
        received: list[bytes] = []

        async def on_bulk(session, stream) -> None:
            received.append(await stream.read_all(10_000_000))

        eb.on_stream("bulk", on_bulk)
        try:
            await asyncio.gather(ra.start(), rb.start())
            await wait_for(lambda: ra.path_of(eb.device_id) is not None, 5)
            assert ra.path_of(eb.device_id)[0] == "relay"
            assert ra.status()[0].addr == f"relay {relay.bound[0][0]}:{relay.bound[0][1]}"
            session = ea.sessions[eb.device_id]
            payload = os.urandom(3_000_000)
            st = await session.open_stream("bulk")
            await st.write(payload)
            st.close()
            await wait_for(lambda: received, 20)
            assert received[0] == payload
            relayed = relay.core.stats.relayed_bytes
            assert relayed > 3_000_000
            # a direct path appears (on loopback a punch always lands): the session moves, same object
            ra.punch = rb.punch = True
            await wait_for(lambda: (ra.path_of(eb.device_id) or ("",))[0] == "lan"
                                and (rb.path_of(ea.device_id) or ("",))[0] == "lan", 20)
            assert ea.sessions[eb.device_id] is session and session.state == "up"
            await asyncio.sleep(0.5)
            before = relay.core.stats.relayed_bytes
            st = await session.open_stream("bulk")
            await st.write(payload)
            st.close()
            await wait_for(lambda: len(received) == 2, 20)
            assert received[1] == payload
            assert relay.core.stats.relayed_bytes == before  # nothing through the relay after the upgrade
        finally:
            await asyncio.gather(ra.close(), rb.close())
            await asyncio.gather(ea.close(), eb.close())
            relay.close()

    asyncio.run(main())


def test_lan_only_by_mdns_without_relay_and_remove_peer() -> None:
    async def main() -> None:
        tag = os.urandom(32)
        ea = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        eb = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        ra = Reachability(ea, [eb.device_id], vault_tag=tag)
        rb = Reachability(eb, [ea.device_id], vault_tag=tag)
        try:
            t0 = time.monotonic()
            await asyncio.gather(ra.start(), rb.start())
            await wait_for(lambda: ra.path_of(eb.device_id) is not None, 5)
            assert time.monotonic() - t0 < 2.5
            assert ra.path_of(eb.device_id) == ("lan", ("127.0.0.1", eb.local_address[1]))
            got = await ea.sessions[eb.device_id].request("reach.ping", b"", timeout=2)
            assert got == b""
            ra.remove_peer(eb.device_id)
            await wait_for(lambda: eb.device_id not in ea.sessions, 3)
            assert ra.status() == []
        finally:
            await asyncio.gather(ra.close(), rb.close())
            await asyncio.gather(ea.close(), eb.close())

    asyncio.run(main())


def test_relay_requires_scope() -> None:
    async def main() -> None:
        ea = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        try:
            from transport.errors import TransportError
            with pytest.raises(TransportError, match="scope"):
                Reachability(ea, [], relay=[("127.0.0.1", 1)])
        finally:
            await ea.close()

    asyncio.run(main())
