"""Raft leader failover with the TCP bulk lane on, after load (what bench_consensus does).

Three voters, each its own process (``raft_node_proc``) on loopback, Raft over
QUIC sessions with ``PCLOUD_TCP_LANE=1`` so every session also has a TLS-over-TCP lane.
The leader runs a CAS load (sequential, then 16 in flight), is SIGKILLed, and each
survivor is asked for a CAS with a short timeout until one commits: the lanes to the
dead leader break at once (the kernel resets them) while its QUIC sessions linger, and
none of that may hold up the survivors' election. tests/test_raft_cluster.py covers the
kill with little load; this is the bench's sequence, twice (both run it
from raft_helpers, so the test checks what the bench measures).
"""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from raft_helpers import kill_leader_until_commit, leader_index, start_three, wait_healthy

pytestmark = pytest.mark.slow

RAFT = {"election_timeout": [0.4, 0.9], "leader_fallback": 1.5, "heartbeat": 0.05, "fsync": True}
FAILOVER_LIMIT = 5.0  # seconds; failover takes ~0.5 s with the lane on or off


def _lane_listening(port: int) -> bool:
    """The node's lane listener takes its UDP port number on TCP when that is free."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_leader_kill_after_load_fails_over_with_lane_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        nodes = await start_three(tmp_path, "quic", RAFT, env=dict(os.environ, PCLOUD_TCP_LANE="1"), timeout=20)
        try:
            assert any(_lane_listening(n.cfg["ports"][n.cfg["index"]]) for n in nodes), "no lane listener: lane off?"
            for trial in range(2):
                lead = await leader_index(nodes)
                seq = await nodes[lead].call("cas_loop", n=200, workers=1, prefix=f"seq{trial}")
                conc = await nodes[lead].call("cas_loop", n=20, workers=16, prefix=f"conc{trial}")
                assert seq["errors"] == 0 and conc["errors"] == 0, (seq, conc)
                await kill_leader_until_commit(nodes, lead, trial, FAILOVER_LIMIT, rpc_timeout=5.0)
                await nodes[lead].start()
                await wait_healthy(nodes, timeout=20)
                await asyncio.sleep(1.0)
        finally:
            await asyncio.gather(*(n.kill() for n in nodes))

    asyncio.run(asyncio.wait_for(scenario(), 120))
