"""The relay service as a real process on loopback, driven by real client cores over real sockets."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcloud.nodeproc import free_port
from transport import control as c
from transport import rendezvous as rv
from transport.errors import RemoteProtocolError
from transport.relay_server import RelayConfig

REPO = Path(__file__).resolve().parent.parent
SECRET = os.urandom(32)


class Device:
    """A client core on its own UDP socket, pumped synchronously."""

    def __init__(self, server: tuple, secret: bytes = SECRET, peers: set | None = None) -> None:
        self.signer = rv.NaclSigner(os.urandom(32))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.01)
        self.core = rv.RendezvousClient(self.signer, secret, [server], peers if peers is not None else set(),
                                        [self.sock.getsockname()])
        self.events: list = []

    def pump(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for data, addr in self.core.datagrams_to_send():
                self.sock.sendto(data, addr)
            try:
                data, addr = self.sock.recvfrom(4096)
                try:
                    self.core.receive(data, addr, time.monotonic())
                except RemoteProtocolError as exc:
                    self.events.append(exc)
            except socket.timeout:
                pass
            t = self.core.get_timer()
            if t is not None and t <= time.monotonic():
                self.core.handle_timer(time.monotonic())
            while (ev := self.core.next_event()) is not None:
                self.events.append(ev)
            if until is not None and until():
                return

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def relay(tmp_path: Path):
    port = free_port()
    stats = tmp_path / "stats.json"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'listen = ["127.0.0.1:{port}"]\nscopes = ["{SECRET.hex()}"]\nrelay_rate = 200000.0\n'
                   f'relay_burst = 20000.0\nstats_file = "{stats}"\n')
    p = subprocess.Popen([sys.executable, "-m", "transport.relay_server", "--config", str(cfg)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while not stats.exists():
        assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline, "relay did not start"
        time.sleep(0.05)
    try:
        yield ("127.0.0.1", port), p, stats
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_two_devices_relay_through_a_real_server(relay) -> None:
    addr, proc, stats = relay
    a, b = Device(addr), Device(addr)
    a.core.peers.add(b.signer.public_key)
    b.core.peers.add(a.signer.public_key)
    for d in (a, b):
        d.core.start(time.monotonic())
        d.pump(2, until=lambda d=d: d.core.registered)
        assert d.core.registered, d.events
    for i in range(5):
        a.sock.sendto(a.core.relay_frame(b.core.short, b"\xc0packet%d" % i), addr)
    b.pump(1, until=lambda: len(b.of(rv.RelayedDatagram)) == 5)
    got = b.of(rv.RelayedDatagram)
    assert [g.payload for g in got] == [b"\xc0packet%d" % i for i in range(5)]
    assert all(g.peer_short == a.core.short for g in got)
    # candidate exchange through the real server: both get each other's candidates and punch on loopback
    a.core.request_peer(b.signer.public_key, time.monotonic())
    for _ in range(30):
        a.pump(0.05)
        b.pump(0.05)
    assert a.of(rv.PunchSucceeded)[0].addr == b.sock.getsockname()
    time.sleep(1.2)
    snap = json.loads(stats.read_text())
    assert snap["stats"]["relayed_packets"] == 5 and len(snap["registrations"]) == 2


def test_unknown_vault_and_impostor_are_refused(relay) -> None:
    addr, proc, stats = relay
    stranger = Device(addr, secret=os.urandom(32))
    stranger.core.start(time.monotonic())
    stranger.pump(1.5)
    assert not stranger.core.registered
    assert any(e.code == c.ErrorCode.UNKNOWN_SCOPE for e in stranger.of(rv.ServerError))
    victim = Device(addr)
    imp = Device(addr)
    imp.core.key = victim.signer.public_key  # claims the victim's key, cannot sign for it
    imp.core.start(time.monotonic())
    imp.pump(1.5)
    assert not imp.core.registered
    assert any(e.code == c.ErrorCode.AUTH_FAILED for e in imp.of(rv.ServerError))
    # an unregistered device cannot relay
    imp.sock.sendto(imp.core.relay_frame(victim.core.short, b"\xc0x"), addr)
    imp.pump(0.5)
    assert any(e.code == c.ErrorCode.NOT_REGISTERED for e in imp.of(rv.ServerError)) or \
        imp.core.registered is False


def test_rate_limit_and_garbage_survived_then_clean_sigterm(relay) -> None:
    addr, proc, stats = relay
    a, b = Device(addr), Device(addr)
    for d in (a, b):
        d.core.start(time.monotonic())
        d.pump(2, until=lambda d=d: d.core.registered)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3000):  # garbage of every shape, including control-looking bytes
        data = os.urandom(i % 1700)
        if i % 2 and data:
            data = bytes([data[0] % 0x40, c.VERSION]) + data[2:]
        junk.sendto(data, addr)
    # 1 MB blasted in well under a second against a 200 kB/s, 20 kB-burst limit
    for _ in range(1000):
        a.sock.sendto(a.core.relay_frame(b.core.short, b"\xc0" + bytes(1000)), addr)
    b.pump(1.5)
    n = len(b.of(rv.RelayedDatagram))
    assert 5 <= n <= 400, n
    time.sleep(1.2)
    snap = json.loads(stats.read_text())
    assert snap["stats"]["rate_limited"] > 500
    assert snap["stats"]["malformed"] > 0
    # still serving after all that
    late = Device(addr)
    late.core.start(time.monotonic())
    late.pump(2, until=lambda: late.core.registered)
    assert late.core.registered
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "relay stopped" in out and "Traceback" not in out


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = ["127.0.0.1:1"]\nscopez = ["00"]\n')
    p = subprocess.run([sys.executable, "-m", "transport.relay_server", "--config", str(bad)], cwd=REPO,
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "scopez" in p.stderr
    p = subprocess.run([sys.executable, "-m", "transport.relay_server", "--listen", "nohost"], cwd=REPO,
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "HOST:PORT" in p.stderr
    cfg = RelayConfig(listen=["[::1]:5000", "127.0.0.1:5001"], scopes=["ab" * 32],
                      devices={"ab" * 32: ["cd" * 32]})
    assert cfg.addresses() == [("::1", 5000), ("127.0.0.1", 5001)]
    assert cfg.build_scopes()[0].devices == frozenset({bytes.fromhex("cd" * 32)})


def test_serve_in_process_until_stopped() -> None:
    """The integrator's entry point: `await serve(config, stop)` returns once `stop` is set."""
    import asyncio

    from transport.relay_server import serve

    async def main() -> None:
        port = free_port()
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve(RelayConfig(listen=[f"127.0.0.1:{port}"], scopes=[SECRET.hex()]), stop))
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        d = Device(("127.0.0.1", port))
        d.core.start(time.monotonic())
        await loop.run_in_executor(None, lambda: d.pump(2, until=lambda: d.core.registered))
        assert d.core.registered
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
