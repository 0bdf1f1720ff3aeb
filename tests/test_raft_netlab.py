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

from raft_node_proc import NodeClient, cluster_configs

pytestmark = [pytest.mark.netlab, pytest.mark.slow]

HOSTS = ["relay", "home1-laptop", "home1-phone"]
PORT = 4731          # not the transport tests' 4433: labs are shared by concurrent sessions


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
            await until(home_leads, timeout=30, what="a leader on the home LAN")
            failover = time.monotonic() - t0
            r = await nodes[1].call("exec", cmd={"type": "cas", "branch": "main", "expected": "01", "new": "02"},
                                    timeout=5)
            assert r["code"] == "ok", r
            assert failover < 30
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


# ---------------------------------------------------------------- through the relay

RELAY_HOSTS = ["relay", "home1-laptop", "home2-laptop", "home1-phone"]


@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_raft_through_punched_and_relayed_paths(netlab, tmp_path, nat):
    """Cloud node + a laptop in each home (voters) + a phone (non-voter); home2 behind a cone NAT
    (punched direct path) or a symmetric one (only the relay joins the homes). Paths come from
    the transport's path manager; then the leader is killed with SIGKILL."""
    import os
    import subprocess
    import sys

    from conftest import NETLAB, REPO
    scope = os.urandom(32)
    ip, ip2 = netlab.ip["NETLAB_RELAY_IP"], netlab.ip["NETLAB_RELAY_IP2"]
    relay_addrs = [f"{ip}:3478", f"{ip2}:3478"]
    relay_log = open(tmp_path / "relay-server.log", "w")
    netlab.run("nat", "home2", nat)
    relay = netlab.popen("relay", sys.executable, "-m", "transport.relay_server", "--listen", relay_addrs[0],
                         "--listen", relay_addrs[1], "--scope", scope.hex(), cwd=REPO, stdout=relay_log,
                         stderr=subprocess.STDOUT)
    cfgs = cluster_configs(tmp_path, 4, [0], "quic", [PORT] * 4,
                           {"election_timeout": [0.4, 0.9], "leader_fallback": 1.5})
    for c in cfgs:
        c["reach"] = {"relay": relay_addrs, "scope": scope.hex()}
    nodes = [NodeClient(c, tmp_path / f"{RELAY_HOSTS[i]}.log", argv_prefix=[NETLAB, "exec", RELAY_HOSTS[i]],
                        env=netlab.env) for i, c in enumerate(cfgs)]
    keys = [c["keys"][i] for i, c in enumerate(cfgs)]

    async def statuses(which=range(4)) -> list[dict]:
        return list(await asyncio.gather(*(nodes[i].call("status") for i in which)))

    async def scenario() -> None:
        await asyncio.gather(*(n.start() for n in nodes))
        await until(lambda: _role(nodes[0], "leader"), what="the cloud node (genesis owner) to lead")
        for i, voter in ((1, True), (2, True), (3, False)):
            r = await nodes[0].call("exec", cmd={"type": "admit", "device": keys[i], "name": RELAY_HOSTS[i],
                                                 "trust": "member", "voter": voter}, timeout=10)
            assert r["code"] == "ok", r

        async def formed() -> bool:
            st = await statuses()
            return (all(len(s["cluster"]) == 3 for s in st[:3]) and st[3]["role"] == "non-voter"
                    and sorted(s["role"] for s in st[:3]) == ["follower", "follower", "leader"]
                    and len(st[2]["connected"]) == 3)
        await until(formed, timeout=60, what="the cluster to form across both NATs")
        paths = dict((await nodes[2].call("paths"))["paths"])
        # home2-laptop <-> home1-laptop: through the relay behind a symmetric NAT; behind a cone
        # NAT the path manager punches a direct path (possibly a moment after the relay one).
        assert paths.get(keys[1]) in (("relay",) if nat == "symmetric" else ("direct", "relay")), paths
        r = await nodes[3].call("exec", cmd={"type": "cas", "branch": "main", "expected": None, "new": "01"},
                                timeout=10)
        assert r["code"] == "ok", r
        r = await nodes[2].call("exec", cmd={"type": "cas", "branch": "main", "expected": "01", "new": "02"},
                                timeout=10)
        assert r["code"] == "ok", r
        # SIGKILL the leader; the other two voters (whichever path joins them) elect a new one.
        lead = next(i for i, s in enumerate(await statuses(range(3))) if s["role"] == "leader")
        await nodes[lead].kill()
        rest = [i for i in range(3) if i != lead]

        async def new_leader() -> bool:
            st = await statuses(rest)
            return any(s["role"] == "leader" and s["has_quorum"] for s in st)
        await until(new_leader, timeout=20, what="a new leader after kill -9")
        r = await nodes[rest[0]].call("exec", cmd={"type": "cas", "branch": "main", "expected": "02",
                                                   "new": "03"}, timeout=10)
        assert r["code"] == "ok", r
        await nodes[lead].start()

        async def converged() -> bool:
            st = await statuses()
            return all(s["heads"].get("main") == "03" for s in st) and len({s["state_digest"] for s in st}) == 1
        await until(converged, timeout=60, what="the restarted node to rejoin and converge")

    async def main() -> None:
        try:
            await scenario()
        finally:
            await asyncio.gather(*(n.kill() for n in nodes))
    try:
        asyncio.run(main())
    finally:
        relay.kill()
        relay.wait()
        relay_log.close()
        netlab.run("nat", "home2", "cone")
