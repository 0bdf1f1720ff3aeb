"""Reachability across a real (namespaced) network: mDNS, hole punching, relay, partitions, loss, mobility.

Every device is its own process (tests/netlab_agent.py) running the real Endpoint + Reachability;
the relay is `python -m transport.relay_server` in the lab's relay host. Tests that change the
lab (NAT mode, netem, partition, move) undo it in `finally`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from transport.identity import DeviceIdentity

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Agent:
    """A device process in a lab host, driven through stdin and read through its status file."""

    def __init__(self, lab: Any, host: str, tmp: Path, peers: list[bytes], seed: Optional[bytes] = None,
                 relay: Optional[list[str]] = None, scope: Optional[bytes] = None, tag: Optional[bytes] = None,
                 mdns: bool = False, idle_timeout: float = 30.0) -> None:
        self.seed = seed or os.urandom(32)
        self.key = DeviceIdentity.from_seed(self.seed).public_key
        self.host = host
        self.status_path = tmp / f"{host}-{self.key[:4].hex()}.json"
        self.log_path = tmp / f"{host}-{self.key[:4].hex()}.log"
        self.peers = peers
        # a random port: a lab shared with other test sessions must not make bind() fail
        self.port = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
        args = ["--seed", self.seed.hex(), "--status", str(self.status_path), "--log", "INFO", "--port", str(self.port),
                "--idle-timeout", str(idle_timeout)]
        for p in peers:
            args += ["--peer", p.hex()]
        for r in relay or []:
            args += ["--relay", r]
        if scope:
            args += ["--scope", scope.hex()]
        if tag:
            args += ["--tag", tag.hex()]
        if mdns:
            args.append("--mdns")
        self._log = open(self.log_path, "w")
        self.p = lab.popen(host, sys.executable, "-m", "tests.netlab_agent", *args, cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, text=True)

    def state(self) -> dict:
        for _ in range(300):  # the first status can take seconds on a loaded machine (imports)
            try:
                return json.loads(self.status_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                assert self.p.poll() is None, f"{self.host} agent died:\n{self.log_path.read_text()[-3000:]}"
                time.sleep(0.05)
        raise AssertionError(f"{self.host}: no status")

    def wait(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        end = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < end:
            st = self.state()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"{self.host}: timed out waiting for {what}; last status peers={st.get('peers')} "
                             f"events={st.get('events', [])[-5:]}\nlog tail:\n{self.log_path.read_text()[-2500:]}")

    def peer(self, st: dict, key: bytes) -> dict:
        return next(p for p in st["peers"] if p["id"] == key.hex())

    def path_to(self, key: bytes) -> Optional[str]:
        return self.peer(self.state(), key)["path"]

    def wait_path(self, key: bytes, paths: tuple[str, ...], timeout: float) -> dict:
        return self.wait(lambda st: self.peer(st, key)["path"] in paths, timeout, f"path in {paths}")

    def cmd(self, **kw: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(kw) + "\n")
        self.p.stdin.flush()

    def send(self, to: "Agent", size: int, timeout: float, seed: int = 7) -> tuple[dict, dict]:
        """Stream `size` bytes to `to`; returns (sent record, received record) after checking they match."""
        n_sent, n_recv = len(self.state()["sent"]), len(to.state()["received"])
        self.cmd(cmd="send", peer=to.key.hex(), size=size, seed=seed)
        sent = self.wait(lambda st: len(st["sent"]) > n_sent, timeout, "send done")["sent"][-1]
        assert "error" not in sent, sent
        got = to.wait(lambda st: len(st["received"]) > n_recv, timeout, "receive done")["received"][-1]
        assert got["size"] == size and got["digest"] == sent["digest"], (sent, got)
        return sent, got

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.cmd(cmd="quit")
                self.p.wait(5)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.p.kill()
                self.p.wait()
        self._log.close()


class Relay:
    def __init__(self, lab: Any, tmp: Path, scope: bytes) -> None:
        self.stats_path = tmp / "relay-stats.json"
        self.log = open(tmp / "relay.log", "w")
        ip, ip2 = lab.ip["NETLAB_RELAY_IP"], lab.ip["NETLAB_RELAY_IP2"]
        port = 3000 + int.from_bytes(os.urandom(2), "big") % 2000
        self.addrs = [f"{ip}:{port}", f"{ip2}:{port}"]
        self.p = lab.popen("relay", sys.executable, "-m", "transport.relay_server", "--listen", self.addrs[0],
                           "--listen", self.addrs[1], "--scope", scope.hex(), "--stats-file", str(self.stats_path),
                           cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        while not self.stats_path.exists():
            assert self.p.poll() is None and time.monotonic() < end, "relay did not start"
            time.sleep(0.05)

    def stats(self) -> dict:
        time.sleep(1.1)  # the stats file is rewritten every second
        return json.loads(self.stats_path.read_text())

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


@pytest.fixture
def world(netlab: Any, tmp_path: Path):
    """Start agents/relay through the returned object; everything is stopped afterwards."""
    class World:
        scope = os.urandom(32)
        tag = os.urandom(32)
        procs: list[Any] = []
        relay: Optional[Relay] = None

        def start_relay(self) -> Relay:
            self.relay = Relay(netlab, tmp_path, self.scope)
            self.procs.append(self.relay)
            return self.relay

        def agents(self, hosts: list[str], relay: bool = True, mdns: bool = False, **kw: Any) -> list[Agent]:
            seeds = [os.urandom(32) for _ in hosts]
            keys = [DeviceIdentity.from_seed(s).public_key for s in seeds]
            out = []
            for host, seed, key in zip(hosts, seeds, keys):
                a = Agent(netlab, host, tmp_path, [k for k in keys if k != key], seed=seed,
                          relay=self.relay.addrs if relay and self.relay else None,
                          scope=self.scope if relay else None, tag=self.tag if mdns else None, mdns=mdns, **kw)
                self.procs.append(a)
                out.append(a)
            return out

    w = World()
    try:
        yield w
    finally:
        for p in reversed(w.procs):
            p.stop()


def test_lan_peers_find_each_other_by_mdns_and_connect_directly(world: Any) -> None:
    laptop, phone = world.agents(["home1-laptop", "home1-phone"], relay=False, mdns=True)
    st = laptop.wait_path(phone.key, ("lan",), 10)
    up = next(e for e in st["events"] if e["type"] == "PeerUp")
    assert up["addr"][0] in ("10.77.1.11", "10.77.1.10")
    st_phone = phone.wait_path(laptop.key, ("lan",), 5)
    # "within 2 s of starting": from Reachability.start to the session being up, on both sides
    for s in (st, st_phone):
        t_up = next(e["t"] for e in s["events"] if e["type"] == "PeerUp")
        assert t_up - s["t_reach_started"] < 2.0, f"LAN connect took {t_up - s['t_reach_started']:.2f}s"
    laptop.send(phone, 2_000_000, 20)


def test_cone_nats_end_up_direct_and_relay_forwards_no_payload_after(world: Any, netlab: Any) -> None:
    netlab.run("nat", "home1", "cone")
    netlab.run("nat", "home2", "cone")
    relay = world.start_relay()
    a, b = world.agents(["home1-laptop", "home2-laptop"])
    st = a.wait_path(b.key, ("direct",), 15)
    b.wait_path(a.key, ("direct",), 5)
    assert a.peer(st, b.key)["addr"].startswith(netlab.ip["NETLAB_HOME2_ROUTER_IP"] + ":")
    time.sleep(0.5)
    before = relay.stats()["stats"]["relayed_bytes"]
    a.send(b, 5_000_000, 30)
    b.send(a, 1_000_000, 30)
    after = relay.stats()["stats"]["relayed_bytes"]
    assert after == before, f"relay forwarded {after - before} bytes after the upgrade to direct"
    assert a.path_to(b.key) == "direct"


def test_symmetric_nat_uses_relay_and_50mb_stream_is_intact(world: Any, netlab: Any) -> None:
    netlab.run("nat", "home2", "symmetric")
    try:
        relay = world.start_relay()
        a, b = world.agents(["home1-laptop", "home2-laptop"])
        a.wait_path(b.key, ("relay",), 15)
        sent, got = a.send(b, 50_000_000, 90)
        assert a.path_to(b.key) == "relay" and b.path_to(a.key) == "relay"
        assert relay.stats()["stats"]["relayed_bytes"] > 50_000_000
        print(f"relay: 50 MB in {sent['seconds']:.1f}s = {50 / sent['seconds']:.1f} MB/s")
    finally:
        netlab.run("nat", "home2", "cone")


def test_five_percent_loss_and_50ms_delay_20mb_intact(world: Any, netlab: Any) -> None:
    world.start_relay()
    a, b = world.agents(["home1-laptop", "home2-laptop"])
    a.wait_path(b.key, ("direct",), 15)
    netlab.run("netem", "home1-laptop", "delay 50ms loss 5%")
    try:
        # 20 MB into the lossy host (its ACKs are delayed and lost) ...
        sent, _ = b.send(a, 20_000_000, 100)
        # ... and 1 MB out of it, every data packet crossing the 5 % loss: slow (loss-based congestion
        # control holds ~0.1-0.2 MB/s at this loss rate) but intact
        out, _ = a.send(b, 1_000_000, 60)
        print(f"lossy: 20 MB in {sent['seconds']:.1f}s, 1 MB through the loss in {out['seconds']:.1f}s "
              f"over {sent['path']}")
    finally:
        netlab.run("netem", "home1-laptop", "off")


def test_partition_then_heal_reconnects_by_itself(world: Any, netlab: Any) -> None:
    world.start_relay()
    a, b = world.agents(["home1-laptop", "home2-laptop"], idle_timeout=6.0)
    a.wait_path(b.key, ("direct",), 15)
    netlab.run("partition", "home1")
    try:
        # the session times out (idle 6 s) while home1 is cut off
        a.wait(lambda st: a.peer(st, b.key)["path"] is None, 20, "session down during the partition")
    finally:
        netlab.run("heal", "home1")
    a.wait_path(b.key, ("direct", "relay"), 25)
    b.wait_path(a.key, ("direct", "relay"), 10)
    a.send(b, 1_000_000, 20)


def test_phone_moves_to_home2_keeps_its_session_and_peer_sees_new_path(world: Any, netlab: Any) -> None:
    world.start_relay()
    laptop, phone = world.agents(["home1-laptop", "home1-phone"], mdns=True)
    st = laptop.wait_path(phone.key, ("lan",), 10)
    phone.wait_path(laptop.key, ("lan",), 5)
    session_laptop = laptop.peer(st, phone.key)["session"]
    session_phone = phone.peer(phone.state(), laptop.key)["session"]
    t_move = time.monotonic()
    netlab.run("move", "home1-phone", "home2")
    try:
        st = laptop.wait(lambda s: laptop.peer(s, phone.key)["path"] in ("direct", "relay"), 10,
                         "laptop sees the phone on a new path")
        seen = next(e["t"] for e in reversed(st["events"])
                    if e["type"] == "PathChanged" and e["peer"] == phone.key.hex())
        assert seen - t_move < 5.0, f"peer saw the new path {seen - t_move:.1f}s after the move"
        # same sessions on both sides: migrated, not re-established
        assert laptop.peer(st, phone.key)["session"] == session_laptop
        assert phone.peer(phone.state(), laptop.key)["session"] == session_phone
        assert not [e for e in st["events"] if e["type"] == "PeerDown"]
        phone.send(laptop, 1_000_000, 20)
    finally:
        netlab.run("move", "home1-phone", "home")


def test_impostor_refused_and_garbage_survived(world: Any, netlab: Any, tmp_path: Path) -> None:
    relay = world.start_relay()
    a, b = world.agents(["home1-laptop", "home2-laptop"])
    a.wait_path(b.key, ("direct", "relay"), 15)
    # an impostor that knows a's key and address but is not one of a's peers
    imp = Agent(netlab, "home1-phone", tmp_path, [a.key], relay=relay.addrs, scope=world.scope)
    world.procs.append(imp)
    # and a stranger to the vault at the relay
    stranger = Agent(netlab, "home2-laptop", tmp_path, [a.key], relay=relay.addrs, scope=os.urandom(32))
    world.procs.append(stranger)
    garbage = ("import os,socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
               "for i in range(3000):\n"
               " d=os.urandom(1+i%1500)\n"
               " d=bytes([d[0]%0x40 if i%2 else 0x40|d[0]])+d[1:]\n"
               " for t in sys.argv[1:]:\n"
               "  h,p=t.rsplit(':',1); s.sendto(d,(h,int(p)))\n")
    r = netlab.exec("home1-phone", sys.executable, "-c", garbage, f"{netlab.ip['NETLAB_HOME1_LAPTOP_IP']}:{a.port}",
                    relay.addrs[0], timeout=60)
    assert r.returncode == 0, r.stderr
    time.sleep(3)
    st_imp = imp.state()
    assert imp.peer(st_imp, a.key)["path"] is None
    assert stranger.state()["registered"] is False
    st_a = a.state()
    assert [e for e in st_a["events"] if e["type"] == "PeerUp" and e["peer"] == imp.key.hex()] == []
    # everyone real is still fine
    a.send(b, 1_000_000, 20)
    assert relay.p.poll() is None and relay.stats()["stats"]["malformed"] > 0
