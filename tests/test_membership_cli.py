"""`pcloud invite | join | devices | trust | revoke` through a running node (pcloud.node.Node + membership.attach).

The owner's node runs in a background thread with its own event loop (as
`pcloud serve` would in its own process); the CLI talks to it over the
vault's control socket, and `join` runs the real handshake from the test's
thread against the node's QUIC endpoint on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pcloud.cli import cli
from pcloud.vault import Vault

pytestmark = pytest.mark.slow


class NodeThread:
    def __init__(self, vault_dir: Path) -> None:
        self.dir = vault_dir
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.node: Any = None
        self.membership: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            from consensus.raft import RaftConfig
            from pcloud.membership import attach
            from pcloud.node import Node, NodeConfig
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            raft = RaftConfig(election_timeout=(0.15, 0.3), heartbeat=0.03, fsync=False, submit_timeout=5.0)
            self.node = Node(self.dir, NodeConfig(listen="127.0.0.1:0", raft=raft))
            await self.node.start()
            try:
                self.membership = attach(self.node)
                while self.node.raft.role != "leader":
                    await asyncio.sleep(0.05)
                self.ready.set()
                await self._stop.wait()
            finally:
                await self.membership.close()
                await self.node.stop()
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test thread
            self.error = exc
            self.ready.set()

    def start(self) -> "NodeThread":
        self.thread.start()
        assert self.ready.wait(30), "node did not start"
        if self.error is not None:
            raise self.error
        return self

    @property
    def address(self) -> str:
        return "%s:%d" % self.node.endpoint.local_address

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


def pc(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_cli_invite_join_devices_trust_revoke(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    r = pc("init", "--vault", str(a_dir), "--name", "laptop-a", "--json")
    assert r.exit_code == 0, r.output
    # No node yet: the network commands say so, in one line.
    r = pc("devices", "--vault", str(a_dir))
    assert r.exit_code == 1 and "no node is running" in r.stderr and "pcloud serve" in r.stderr
    node = NodeThread(a_dir).start()
    try:
        r = pc("invite", "--vault", str(a_dir), "--trust", "reader", "--ttl", "5m", "--json")
        assert r.exit_code == 0, r.stderr
        inv = json.loads(r.stdout)
        assert set(inv) >= {"code", "expires"} and len(inv["code"]) == 22
        r = pc("join", inv["code"][:-1] + ("A" if inv["code"][-1] != "A" else "B"), "--vault", str(b_dir),
               "--relay", node.address, "--json")
        assert r.exit_code == 1 and "wrong" in r.stderr.lower()
        r = pc("join", inv["code"], "--vault", str(b_dir), "--name", "phone-b", "--relay", node.address,
               "--kind", "phone", "--json")
        assert r.exit_code == 0, r.stderr
        joined = json.loads(r.stdout)
        assert joined["trust"] == "reader" and set(joined) >= {"device_id", "vault_id", "trust"}
        with Vault.open(b_dir) as vb:
            assert vb.device_id == joined["device_id"]
        r = pc("join", inv["code"], "--vault", str(tmp_path / "c"), "--relay", node.address)
        assert r.exit_code == 1 and "already used" in r.stderr

        r = pc("devices", "--vault", str(a_dir), "--json")
        assert r.exit_code == 0, r.stderr
        listing = json.loads(r.stdout)
        assert [d["name"] for d in listing] == ["laptop-a", "phone-b"]
        assert set(listing[1]) == {"device_id", "name", "trust", "voter", "online", "revoked"}
        assert listing[1]["trust"] == "reader" and listing[1]["voter"] is False
        r = pc("devices", "--vault", str(a_dir))
        assert "phone-b" in r.stdout and "reader" in r.stdout

        r = pc("trust", "phone-b", "member", "--vault", str(a_dir))
        assert r.exit_code == 0, r.stderr
        r = pc("trust", "laptop-a", "reader", "--vault", str(a_dir))             # the last owner
        assert r.exit_code == 1 and "last owner" in r.stderr
        r = pc("trust", "nobody", "reader", "--vault", str(a_dir))
        assert r.exit_code == 1 and "no device" in r.stderr

        r = pc("revoke", joined["device_id"][:9], "--vault", str(a_dir), "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["epoch"] == 1
        listing = json.loads(pc("devices", "--vault", str(a_dir), "--json").stdout)
        assert listing[1]["revoked"] is True
        with Vault.open(a_dir) as va:
            assert va.keyring.current == 1             # the rotated key was saved for the next process too
        assert node.node._vault.keyring.current == 1    # and the node's open handle seals with it now
    finally:
        node.stop()
    assert node.error is None


def test_relay_join_enrolls_a_keyless_storage_node(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    a_dir, s_dir = tmp_path / "a", tmp_path / "s"
    assert pc("init", "--vault", str(a_dir), "--name", "laptop-a").exit_code == 0
    node = NodeThread(a_dir).start()
    proc = None
    try:
        member_inv = json.loads(pc("invite", "--vault", str(a_dir), "--json").stdout)
        r = pc("relay", "--join", member_inv["code"], "--via", node.address, "--vault", str(s_dir))
        assert r.exit_code == 1 and "not storage" in r.stderr       # refused before anything is admitted
        assert not (s_dir / "genesis.bin").exists() and not (s_dir / "keyring.sealed").exists()
        assert len(json.loads(pc("devices", "--vault", str(a_dir), "--json").stdout)) == 1   # nobody admitted
        inv = json.loads(pc("invite", "--vault", str(a_dir), "--trust", "storage", "--json").stdout)
        proc = subprocess.Popen([sys.executable, "-m", "pcloud", "relay", "--join", inv["code"], "--via", node.address,
                                 "--listen", "127.0.0.1:0", "--vault", str(s_dir), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
        ready = json.loads(proc.stdout.readline() or "{}")
        assert "device_id" in ready, proc.stderr.read() if proc.poll() is not None else "no ready line"
        assert (s_dir / "genesis.bin").exists() and not (s_dir / "keyring.sealed").exists()
        listing = json.loads(pc("devices", "--vault", str(a_dir), "--json").stdout)
        cloud = [d for d in listing if d["name"] == "cloud"]
        assert cloud and cloud[0]["trust"] == "storage" and cloud[0]["device_id"] == ready["device_id"]
        state = node.node.raft.state
        key = next(k for k, rec in state.devices.items() if rec.name == "cloud")
        assert all(dev != key for (_, dev) in state._sealed)          # never the vault key, any epoch
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        node.stop()
