"""RaftNode in one process: the async API, errors, listeners, restart from disk."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from consensus import (AdmitDevice, CasHead, CommandRejected, Genesis, NoQuorum, PermissionDenied, RaftClosed,
                       RaftConfig, RaftNode, SeedSigner, SetTrust, SignedCommand)
from consensus.tcp_link import TcpLink

OWNER, OTHER = SeedSigner(b"\x11" * 32), SeedSigner(b"\x12" * 32)
GENESIS = Genesis.create(OWNER, b"vault-node", "laptop", 1)


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _single(directory: Path, voters: list[bytes] | None = None) -> tuple[RaftNode, TcpLink]:
    link = TcpLink(OWNER, "127.0.0.1", _port(), {OTHER.public_key: ("127.0.0.1", _port())})
    await link.start()
    node = RaftNode(link, local=OWNER.public_key, genesis=GENESIS, voters=voters or [OWNER.public_key],
                    directory=directory, config=RaftConfig(fsync=True, election_timeout=(0.2, 0.3)),
                    signer=OWNER)
    await node.start()
    return node, link


async def _until_leader(node: RaftNode) -> None:
    for _ in range(200):
        if node.role == "leader":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("single node did not become leader")


def test_submit_results_errors_and_listener(tmp_path):
    async def scenario() -> None:
        node, link = await _single(tmp_path / "raft")
        seen: list[tuple[str, str]] = []
        node.on_applied(lambda cmd, res: seen.append((type(cmd.command).__name__, res.code)))
        await _until_leader(node)
        assert node.leader == OWNER.public_key
        r = await node.execute(CasHead("main", None, b"h1"))
        assert r.accepted and r.head == b"h1" and node.state.find_head("main") == b"h1"
        lost = await node.execute(CasHead("main", None, b"h2"))          # a lost CAS is a value
        assert lost.code == "conflict" and lost.head == b"h1"
        with pytest.raises(CommandRejected):
            await node.submit(b"not a command")
        signed = node.sign(CasHead("main", b"h1", b"h3"))
        assert (await node.submit(signed)).accepted
        assert (await node.submit(signed)).accepted                     # a retry gets the first answer
        assert node.state.find_head("main") == b"h3"
        outsider = SignedCommand.create(OTHER, GENESIS.vault_id, 1, 1, CasHead("main", b"h3", b"x"))
        with pytest.raises(PermissionDenied):
            await node.submit(outsider)
        with pytest.raises(CommandRejected, match="last owner"):
            await node.execute(SetTrust(OWNER.public_key, "member"))
        assert ("CasHead", "ok") in seen and ("CasHead", "conflict") in seen and ("CasHead", "denied") in seen
        status = node.status()
        assert status["role"] == "leader" and status["cluster"] == [OWNER.public_key.hex()]
        await node.close()
        await link.close()
        with pytest.raises(RaftClosed):
            await node.execute(CasHead("main", b"h3", b"h4"))
    asyncio.run(scenario())


def test_restart_recovers_from_journal(tmp_path):
    async def scenario() -> bytes:
        node, link = await _single(tmp_path / "raft")
        await _until_leader(node)
        head = None
        for i in range(30):
            head = (await node.execute(CasHead("main", head, bytes([i]) * 4))).head
        await node.close()
        await link.close()
        node, link = await _single(tmp_path / "raft")
        await _until_leader(node)
        for _ in range(100):
            if node.state.find_head("main") == head:
                break
            await asyncio.sleep(0.02)
        assert node.state.find_head("main") == head
        await node.close()
        await link.close()
        return head
    asyncio.run(scenario())


def test_no_quorum_when_the_other_voter_is_missing(tmp_path):
    async def scenario() -> None:
        node, link = await _single(tmp_path / "raft", voters=[OWNER.public_key, OTHER.public_key])
        with pytest.raises(NoQuorum):
            await node.execute(CasHead("main", None, b"h1"), timeout=0.5)
        assert node.role in ("follower", "candidate") and not node.has_quorum
        await node.close()
        await link.close()
    asyncio.run(scenario())


def test_admitting_a_voter_changes_the_configuration_only_through_the_registry(tmp_path):
    async def scenario() -> None:
        node, link = await _single(tmp_path / "raft")
        await _until_leader(node)
        assert (await node.execute(AdmitDevice(OTHER.public_key, "desk", "member", voter=False))).accepted
        await asyncio.sleep(0.2)
        assert node.status()["cluster"] == [OWNER.public_key.hex()]     # a non-voter is not added
        await node.close()
        await link.close()
    asyncio.run(scenario())


class _Sink:
    def __init__(self) -> None:
        self.up: set[bytes] = set()

    def link_up(self, peer: bytes) -> None:
        self.up.add(peer)

    def link_down(self, peer: bytes) -> None:
        self.up.discard(peer)

    def link_message(self, peer: bytes, frame: bytes) -> None:
        pass


def test_a_non_voter_cannot_disrupt_elections(tmp_path):
    """A connected device outside the configuration sends a vote request and an append with a huge
    term: both are dropped, the leader keeps its term and keeps committing."""
    from consensus.raft_transport import encode_frame

    async def scenario() -> None:
        p_node, p_other = _port(), _port()
        link = TcpLink(OWNER, "127.0.0.1", p_node, {OTHER.public_key: ("127.0.0.1", p_other)})
        rogue = TcpLink(OTHER, "127.0.0.1", p_other, {OWNER.public_key: ("127.0.0.1", p_node)})
        sink = _Sink()
        rogue.set_handler(sink)
        await link.start()
        await rogue.start()
        node = RaftNode(link, local=OWNER.public_key, genesis=GENESIS, voters=[OWNER.public_key],
                        directory=tmp_path / "raft", config=RaftConfig(fsync=False), signer=OWNER)
        await node.start()
        await _until_leader(node)
        for _ in range(100):
            if OWNER.public_key in sink.up:
                break
            await asyncio.sleep(0.02)
        term = node.status()["term"]
        rogue.send(OWNER.public_key, encode_frame([
            {"type": "request_vote", "term": 10_000, "last_log_index": 10_000, "last_log_term": 10_000},
            {"type": "append_entries", "term": 10_000, "commit_index": 0, "prevLogIdx": 1, "prevLogTerm": 0,
             "entries": []}]))
        for _ in range(100):
            if node.status()["dropped_messages"] >= 2:
                break
            await asyncio.sleep(0.02)
        status = node.status()
        assert status["dropped_messages"] == 2
        assert status["term"] == term and node.role == "leader"
        assert (await node.execute(CasHead("main", None, b"h"))).accepted
        await node.close()
        await rogue.close()
        await link.close()
    asyncio.run(scenario())


def test_follower_resends_a_forwarded_command_lost_on_a_dropped_session(tmp_path):
    """The follower's forwarded write is dropped with its session; with no leader change to
    trigger pysyncobj's own retry, RaftNode resends it and it commits exactly once."""
    async def scenario() -> None:
        pa, pb = _port(), _port()
        la = TcpLink(OWNER, "127.0.0.1", pa, {OTHER.public_key: ("127.0.0.1", pb)})
        lb = TcpLink(OTHER, "127.0.0.1", pb, {OWNER.public_key: ("127.0.0.1", pa)})
        await la.start()
        await lb.start()
        slow = RaftConfig(fsync=False, election_timeout=(1.5, 2.0), leader_fallback=4.0)
        a = RaftNode(la, local=OWNER.public_key, genesis=GENESIS, voters=[OWNER.public_key],
                     directory=tmp_path / "a", config=slow, signer=OWNER)
        b = RaftNode(lb, local=OTHER.public_key, genesis=GENESIS, voters=[OWNER.public_key],
                     directory=tmp_path / "b", config=slow, signer=OTHER)
        await a.start()
        await b.start()
        await _until_leader(a)
        assert (await a.execute(AdmitDevice(OTHER.public_key, "desk", "member", voter=False))).accepted
        for _ in range(200):
            if b.state.find_device(OTHER.public_key) is not None:
                break
            await asyncio.sleep(0.02)
        task = asyncio.ensure_future(b.execute(CasHead("main", None, b"h1"), timeout=6))
        await asyncio.sleep(0)
        lb.block(OWNER.public_key)            # the session drops before the forward leaves
        await asyncio.sleep(0.3)
        lb.unblock(OWNER.public_key)
        result = await task
        assert result.accepted and result.head == b"h1"
        assert a.state.find_head("main") == b"h1"
        assert a.status()["term"] == 1 and a.role == "leader"   # no election rescued it
        for n in (a, b):
            await n.close()
        await la.close()
        await lb.close()
    asyncio.run(scenario())
