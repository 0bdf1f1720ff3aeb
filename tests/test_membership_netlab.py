"""Joining across NATs through the cloud node (netlab): the joiner behind one NAT, the inviter behind another.

The storage node is enrolled first on loopback, then runs on the lab's public
``relay`` host; the owner runs on ``home1-laptop`` (behind NAT) and dials out
to it. A new device on ``home2-laptop`` (behind the other NAT) runs the real
``pcloud join CODE --relay RELAY:PORT``: the cloud node forwards the handshake
over the owner's session, learns no key, and the owner admits the device.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from membership_helpers import Device, leader_ready, run

from pcloud.membership import join
from pcloud.vault import Vault

pytestmark = [pytest.mark.netlab, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
S_PORT, A_PORT = 4751, 4752


class Peer:
    def __init__(self, lab: Any, host: str, vault_dir: Path, ip: str, port: int, log: Path) -> None:
        self.proc = lab.popen(host, sys.executable, str(REPO / "tests" / "membership_peer.py"), str(vault_dir), ip,
                              str(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"),
                              text=True, cwd=str(REPO))
        line = self.proc.stdout.readline()
        assert line.startswith('{"ready"'), f"peer on {host} did not start (see {log})"
        self.info = json.loads(line)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op} | kw) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        assert "error" not in out, out
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_join_across_nats_through_the_cloud_node(netlab, tmp_path: Path) -> None:
    a_dir, s_dir, j_dir = tmp_path / "a", tmp_path / "s", tmp_path / "j"
    vault = Vault.create(a_dir, name="laptop-a")
    vault.close()

    async def enroll_cloud() -> None:             # set up once on loopback, before going out into the world
        a = await Device(a_dir).start()
        try:
            await leader_ready(a)
            inv = await a.membership.invite("storage", 600)
            await join(inv.code, s_dir, name="cloud", relay=a.address)
        finally:
            await a.stop()
    run(enroll_cloud())

    relay_ip = netlab.ip["NETLAB_RELAY_IP"]
    cloud = Peer(netlab, "relay", s_dir, relay_ip, S_PORT, tmp_path / "cloud.log")
    owner = Peer(netlab, "home1-laptop", a_dir, netlab.ip["NETLAB_HOME1_LAPTOP_IP"], A_PORT, tmp_path / "owner.log")
    try:
        owner.call("keep", key=cloud.info["key"], addr=f"{relay_ip}:{S_PORT}")
        wait(lambda: owner.info["key"] in cloud.call("sessions")["sessions"], what="the owner to reach the cloud node")
        code = owner.call("invite", trust="member")["code"]
        bad = code[:-1] + ("A" if code[-1] != "A" else "B")
        p = netlab.exec("home2-laptop", sys.executable, "-m", "pcloud", "join", bad, "--relay", f"{relay_ip}:{S_PORT}",
                        "--vault", str(j_dir), "--json", cwd=str(REPO), timeout=60)
        assert p.returncode == 1 and "wrong" in p.stderr.lower(), p.stderr
        p = netlab.exec("home2-laptop", sys.executable, "-m", "pcloud", "join", code, "--relay", f"{relay_ip}:{S_PORT}",
                        "--vault", str(j_dir), "--name", "laptop-j", "--json", cwd=str(REPO), timeout=60)
        assert p.returncode == 0, p.stderr
        joined = json.loads(p.stdout)
        assert joined["trust"] == "member"
        with Vault.open(j_dir) as vj:
            assert vj.keyring.epochs               # the key arrived, sealed to the joiner, through the cloud node
        for peer in (owner, cloud):
            wait(lambda peer=peer: any(d["name"] == "laptop-j" for d in peer.call("devices")["devices"]),
                 what="the new device in every replica's registry")
        assert not (s_dir / "keyring.sealed").exists()
        blob = b"".join(f.read_bytes() for f in s_dir.rglob("*") if f.is_file())
        assert Vault.open(j_dir).keyring.epochs[0] not in blob     # the cloud node's files never hold the key
    finally:
        owner.stop()
        cloud.stop()
