"""Raft over QUIC sessions across NATs in the network lab (netlab namespaces).

Voters: the cloud node (``relay``, public address) and two devices behind the
home1 NAT router (``home1-laptop``, ``home1-phone``). The home devices dial out
through the NAT, the relay answers on those sessions; the two home devices
talk on their LAN. Then the lab cuts links for real (``netlab partition``).
"""
from __future__ import annotations

import asyncio
import time

import pytest
from test_raft_cluster import until

from consensus.node_proc import NodeClient, cluster_configs

pytestmark = [pytest.mark.netlab, pytest.mark.slow]

HOSTS = ["relay", "home1-laptop", "home1-phone"]
PORT = 4433


def test_raft_across_nat_and_real_partitions(netlab, tmp_path):
    from conftest import NETLAB
    ips = [netlab.ip["NETLAB_RELAY_IP"], netlab.ip["NETLAB_HOME1_LAPTOP_IP"], netlab.ip["NETLAB_HOME1_PHONE_IP"]]
    cfgs = cluster_configs(tmp_path, 3, [0], "quic", [PORT] * 3,
                           {"election_timeout": [0.3, 0.6], "leader_fallback": 1.0}, hosts=ips)
    nodes = [NodeClient(c, tmp_path / f"{HOSTS[i]}.log", argv_prefix=[NETLAB, "exec", HOSTS[i]], env=netlab.env)
             for i, c in enumerate(cfgs)]
    keys = [c["keys"][i] for i, c in enumerate(cfgs)]

    async def statuses() -> list[dict]:
        return list(await asyncio.gather(*(n.call("status") for n in nodes)))

    async def scenario() -> None:
        await asyncio.gather(*(n.start() for n in nodes))
        await until(lambda: _role(nodes[0], "leader"), what="the relay (genesis owner) to lead")
        for i in (1, 2):
            r = await nodes[0].call("exec", cmd={"type": "admit", "device": keys[i], "name": HOSTS[i],
                                                 "trust": "member", "voter": True})
            assert r["code"] == "ok", r

        async def formed() -> bool:
            st = await statuses()
            return all(len(s["cluster"]) == 3 for s in st) and sorted(s["role"] for s in st) == [
                "follower", "follower", "leader"]
        await until(formed, timeout=30, what="3 voters across the NAT")
        r = await nodes[2].call("exec", cmd={"type": "cas", "branch": "main", "expected": None, "new": "01"})
        assert r["code"] == "ok", r

        # Cut the relay off the internet: it is the minority now.
        netlab.run("partition", "relay")
        try:
            t0 = time.monotonic()
            r = await nodes[0].call("exec", cmd={"type": "cas", "branch": "main", "expected": "01", "new": "aa"},
                                    timeout=1.5)
            assert r.get("error") == "NoQuorum", r

            async def home_leads() -> bool:
                st = await statuses()
                return any(s["role"] == "leader" and s["has_quorum"] for s in st[1:])
            await until(home_leads, timeout=15, what="a leader on the home LAN")
            failover = time.monotonic() - t0
            r = await nodes[1].call("exec", cmd={"type": "cas", "branch": "main", "expected": "01", "new": "02"},
                                    timeout=5)
            assert r["code"] == "ok", r
            assert failover < 15
        finally:
            netlab.run("heal", "all")

        async def healed() -> bool:
            st = await statuses()
            return all(s["heads"].get("main") == "02" for s in st) and len({s["state_digest"] for s in st}) == 1
        await until(healed, timeout=40, what="the relay to rejoin through the NAT and converge")
        r = await nodes[0].call("exec", cmd={"type": "cas", "branch": "main", "expected": "02", "new": "03"},
                                timeout=5)
        assert r["code"] == "ok", r

    async def main() -> None:
        try:
            await scenario()
        finally:
            await asyncio.gather(*(n.kill() for n in nodes))
    asyncio.run(main())


async def _role(node: NodeClient, role: str) -> bool:
    return (await node.call("status"))["role"] == role
