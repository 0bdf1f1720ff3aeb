"""A 3-voter Raft cluster of real node processes, and its leader failover, for tests and benches.

tests/test_raft_lane_failover.py and bench/bench_consensus.py run the same sequence (boot,
load, SIGKILL the leader, CAS on the survivors until one commits, restart, wait until the
mesh is whole again); it is written once here so the test keeps checking what the bench
measures. Benches import this module with tests/ on ``sys.path``.

Invariants: every node is its own process (``raft_node_proc``) on loopback; node 0 owns the
genesis and admits the other two as voters; a failover attempt always uses a fresh branch.
"""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from raft_node_proc import NodeClient, cluster_configs


def free_ports(n: int, kind: int = socket.SOCK_DGRAM) -> list[int]:
    """`n` distinct loopback ports free right now (all bound at once, so no two are the same)."""
    socks = [socket.socket(socket.AF_INET, kind) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def start_three(base: Path, link: str, raft: dict[str, Any], env: dict[str, str] | None = None,
                      timeout: float = 60.0) -> list[NodeClient]:
    """Three voter processes (node 0 leads, admits 1 and 2); returns once all three see one leader."""
    base.mkdir(parents=True, exist_ok=True)
    kind = socket.SOCK_DGRAM if link == "quic" else socket.SOCK_STREAM
    cfgs = cluster_configs(base, 3, [0], link, free_ports(3, kind), raft)
    nodes = [NodeClient(c, base / f"node{i}.log", env=env) for i, c in enumerate(cfgs)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        deadline = time.monotonic() + timeout
        while (await nodes[0].call("status"))["role"] != "leader":
            if time.monotonic() > deadline:
                raise TimeoutError(f"node 0 did not lead within {timeout:.0f} s")
            await asyncio.sleep(0.05)
        for i in (1, 2):
            r = await nodes[0].call("exec", cmd={"type": "admit", "device": cfgs[i]["keys"][i], "name": f"n{i}",
                                                 "trust": "member", "voter": True})
            if r.get("code") != "ok":
                raise RuntimeError(f"admitting node {i} failed: {r}")
        while True:
            st = [await n.call("status") for n in nodes]
            if all(len(s["cluster"]) == 3 for s in st) and sorted(s["role"] for s in st) == ["follower", "follower",
                                                                                              "leader"]:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not formed within {timeout:.0f} s: {st}")
            await asyncio.sleep(0.05)
    except BaseException:
        # Whatever failed, no node process outlives the attempt.
        await asyncio.gather(*(n.kill() for n in nodes))
        raise


async def leader_index(nodes: list[NodeClient], timeout: float = 10.0) -> int:
    """The live node that leads with a quorum; waits for one (a rejoined node may cause an election)."""
    deadline = time.monotonic() + timeout
    while True:
        for i, node in enumerate(nodes):
            if node.alive():
                s = await node.call("status")
                if s["role"] == "leader" and s["has_quorum"]:
                    return i
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader with a quorum within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def kill_leader_until_commit(nodes: list[NodeClient], lead: int, trial: int, limit: float,
                                   rpc_timeout: float = 60.0) -> float:
    """SIGKILL node `lead`, then ask each survivor in turn for a CAS (0.3 s timeout) until one
    commits; returns the seconds from the kill to that commit (TimeoutError after `limit`)."""
    await nodes[lead].kill()
    t0 = time.perf_counter()
    survivors = [i for i in range(len(nodes)) if i != lead]
    attempt = 0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > limit:
            raise TimeoutError(f"no commit {elapsed:.1f} s after killing leader {lead}")
        for i in survivors:
            # A fresh branch per attempt: an attempt answered NoQuorum at 0.3 s may still commit
            # later, and then a retry on the SAME branch (expected None) is refused as a conflict
            # forever. That, not the TCP lane, was the "no commit in 30 s" of bench_consensus at
            # 02:11 (reproduced at 03:55 with the lane off).
            attempt += 1
            r = await nodes[i].call("exec", cmd={"type": "cas", "branch": f"fo{trial}-{attempt}",
                                                 "expected": None, "new": "01"},
                                    timeout=0.3, rpc_timeout=rpc_timeout)
            if r.get("code") == "ok":
                return time.perf_counter() - t0


async def wait_healthy(nodes: list[NodeClient], timeout: float = 30.0) -> float:
    """Wait until every node is leader or follower AND holds a session to both others; return
    the seconds it took. A failover is measured from a healthy cluster: a kill while the last
    restarted node is still without one of its sessions is two faults at once (the two survivors
    cannot reach each other), which is what made 2 of 9 kills take 2.5-2.8 s at 03:25 UTC."""
    t0 = time.perf_counter()
    while True:
        st = [await n.call("status") for n in nodes]
        if all(s["role"] in ("leader", "follower") and len(s["connected"]) == len(nodes) - 1 for s in st):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"cluster not healthy {timeout:.0f} s after a restart: {st}")
        await asyncio.sleep(0.05)
