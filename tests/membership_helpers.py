"""A minimal in-process device for membership tests: Endpoint + SessionLink + RaftNode + Membership on 127.0.0.1.

It is the part of ``pcloud.node.Node`` that enrollment needs (no replication,
folders or control socket), built from a vault directory the same way: the
genesis from ``genesis.bin`` (or made from ``vault.json`` for a vault created
before genesis.bin existed), the Raft voters and peer addresses from
``node.json``. Every replica records what it applied, so tests can check a
command was refused *on every replica*.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from consensus.commands import Genesis
from consensus.raft import RaftConfig, RaftNode
from consensus.session_link import SessionLink
from pcloud.identity import DeviceIdentity
from pcloud.membership import Membership
from transport.endpoint import Endpoint

FAST = RaftConfig(election_timeout=(0.15, 0.3), heartbeat=0.03, leader_fallback=1.0, fsync=False,
                  submit_timeout=5.0)


def genesis_of(vault_dir: Path, identity: DeviceIdentity) -> Genesis:
    path = vault_dir / "genesis.bin"
    if path.exists():
        return Genesis.decode(path.read_bytes())
    meta = json.loads((vault_dir / "vault.json").read_text())
    genesis = Genesis.create(identity, bytes.fromhex(meta["vault_id"]), meta["device_name"][:64],
                             meta["created_ns"] // 1_000_000)
    path.write_bytes(genesis.encode())
    return genesis


class Device:
    """One running device of a vault (see module docstring)."""

    def __init__(self, vault_dir: Path, clock: Callable[[], float] = time.time, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.dir = Path(vault_dir)
        self.host, self.port = host, port
        self.clock = clock
        self.identity = DeviceIdentity.load(self.dir)
        self.key = self.identity.public_key
        self.applied: list[tuple[bytes, str, str, str]] = []
        "(signer, command tag, result code, reason) for every command this replica applied"
        self.keyring = None
        if (self.dir / "keyring.sealed").exists():
            self.keyring = self.identity.load_keyring(self.dir / "keyring.sealed")
        self.membership: Membership | None = None
        self.endpoint: Endpoint | None = None
        self.raft: RaftNode | None = None

    async def start(self) -> "Device":
        genesis = genesis_of(self.dir, self.identity)
        boot = json.loads((self.dir / "node.json").read_text()) if (self.dir / "node.json").exists() else {}
        self.endpoint = await Endpoint.start(self.host, self.port, bytes(self.identity._sk),
                                             admit=lambda key: self.membership is not None
                                             and self.membership.is_member(key))
        link = SessionLink(self.endpoint)
        voters = [bytes.fromhex(k) for k in boot.get("voters", [])] or [self.key]
        self.raft = RaftNode(link, local=self.key, genesis=genesis, voters=voters, directory=self.dir / "raft",
                             config=FAST, signer=self.identity)
        self.raft.on_applied(lambda s, r: self.applied.append((s.signer, s.command.TAG, r.code, r.reason)))
        tag = None if self.keyring is not None else bytes.fromhex(boot["vault_tag"])
        self.membership = Membership(identity=self.identity, keyring=self.keyring, endpoint=self.endpoint,
                                     raft=self.raft, vault_dir=self.dir, clock=self.clock, vault_tag=tag)
        self.membership.install()
        await self.raft.start()
        for key_hex, addr in boot.get("addresses", {}).items():
            host, port = addr.rsplit(":", 1)
            self.endpoint.keep(bytes.fromhex(key_hex), [(host, int(port))])
        return self

    @property
    def address(self) -> str:
        assert self.endpoint is not None
        return "%s:%d" % self.endpoint.local_address

    async def stop(self) -> None:
        if self.raft is not None:
            await self.raft.close()
        if self.endpoint is not None:
            await self.endpoint.close()


async def until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def leader_ready(device: Device) -> None:
    await until(lambda: device.raft.role == "leader", what=f"{device.dir.name} to lead")


def run(coro: Awaitable[Any], timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))
