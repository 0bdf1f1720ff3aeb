"""Reachability benchmark in netlab: connection setup (LAN, hole-punched, relayed) and relay vs direct throughput.

    sudo .venv/bin/python bench/bench_reach.py [--reps 3] [--mb 50]

Brings up its own lab (LAB_PREFIX=pclbench), runs every device as its own process
(tests/netlab_agent.py), prints a table and appends a dated section to bench/RESULTS.md.
Targets (issue 3): hole-punched connection established in < 1 s; relay >= 50 % of direct.
Setup times are measured inside the agents from Reachability.start() (process start-up
and imports excluded) to the session being up on the named path.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import machine  # noqa: E402
from tests.conftest import NETLAB, Lab  # noqa: E402
from tests.test_netlab_transport import Agent, Relay  # noqa: E402
from transport.identity import DeviceIdentity  # noqa: E402


def pair(lab: Lab, tmp: Path, hosts: list[str], relay: Relay | None, scope: bytes, tag: bytes | None,
         mdns: bool) -> list[Agent]:
    seeds = [os.urandom(32) for _ in hosts]
    keys = [DeviceIdentity.from_seed(s).public_key for s in seeds]
    return [Agent(lab, h, tmp, [k for k in keys if k != key], seed=s, relay=relay.addrs if relay else None,
                  scope=scope if relay else None, tag=tag, mdns=mdns)
            for h, s, key in zip(hosts, seeds, keys)]


def t_path(agent: Agent, peer: bytes, paths: tuple[str, ...], timeout: float = 20) -> float:
    """Seconds from Reachability.start to the first PeerUp/PathChanged onto one of `paths`."""
    st = agent.wait(lambda s: any(e["type"] in ("PeerUp", "PathChanged") and e.get("path") in paths
                                  for e in s["events"]), timeout, f"path {paths}")
    t = min(e["t"] for e in st["events"] if e["type"] in ("PeerUp", "PathChanged") and e.get("path") in paths)
    return t - st["t_reach_started"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mb", type=int, default=50)
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("iptables"):
        print("bench_reach needs root and iptables (netlab)")
        return 2
    env = dict(os.environ, LAB_PREFIX="pclbench", NETLAB_STATE_DIR="/run/netlab-pclbench")
    subprocess.run([NETLAB, "up"], env=env, check=True, capture_output=True)
    lab = Lab(env)
    tmp = Path(tempfile.mkdtemp(prefix="bench-reach-"))
    scope, tag = os.urandom(32), os.urandom(32)
    res: dict[str, list[float]] = {"lan": [], "punched": [], "relayed": [], "direct_mbs": [], "relay_mbs": []}
    size = a.mb * 1_000_000
    try:
        for _ in range(a.reps):
            x, y = pair(lab, tmp, ["home1-laptop", "home1-phone"], None, scope, tag, mdns=True)
            try:
                res["lan"].append(max(t_path(x, y.key, ("lan",)), t_path(y, x.key, ("lan",))))
            finally:
                x.stop(), y.stop()
        relay = Relay(lab, tmp, scope)
        try:
            lab.run("nat", "home2", "cone")
            for i in range(a.reps):
                x, y = pair(lab, tmp, ["home1-laptop", "home2-laptop"], relay, scope, None, mdns=False)
                try:
                    res["punched"].append(t_path(x, y.key, ("direct",)))
                    if i == 0:
                        sent, _ = x.send(y, size, 120)
                        res["direct_mbs"].append(size / 1e6 / sent["seconds"])
                        sent, _ = x.send(y, size, 120, seed=9)
                        res["direct_mbs"].append(size / 1e6 / sent["seconds"])
                finally:
                    x.stop(), y.stop()
            lab.run("nat", "home2", "symmetric")
            for i in range(a.reps):
                x, y = pair(lab, tmp, ["home1-laptop", "home2-laptop"], relay, scope, None, mdns=False)
                try:
                    res["relayed"].append(t_path(x, y.key, ("relay",)))
                    if i == 0:
                        x.wait_path(y.key, ("relay",), 10)
                        sent, _ = x.send(y, size, 120)
                        res["relay_mbs"].append(size / 1e6 / sent["seconds"])
                        sent, _ = x.send(y, size, 120, seed=9)
                        res["relay_mbs"].append(size / 1e6 / sent["seconds"])
                finally:
                    x.stop(), y.stop()
        finally:
            lab.run("nat", "home2", "cone")
            relay.stop()
    finally:
        subprocess.run([NETLAB, "down"], env=env, capture_output=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    ratio = med["relay_mbs"] / med["direct_mbs"]
    rows = [
        ("setup, LAN direct via mDNS (s)", med["lan"], "< 2 s", med["lan"] < 2),
        ("setup, hole-punched, cone NATs (s)", med["punched"], "< 1 s", med["punched"] < 1),
        ("setup, relayed, symmetric NAT (s)", med["relayed"], "", True),
        (f"direct {a.mb} MB stream (MB/s)", med["direct_mbs"], "", True),
        (f"relayed {a.mb} MB stream (MB/s)", med["relay_mbs"], "", True),
        ("relay / direct throughput", ratio, ">= 0.50", ratio >= 0.5),
    ]
    table = ["| measure (median) | value | target | met |", "|---|---|---|---|"]
    table += [f"| {n} | {v:.3f} | {t} | {'yes' if ok else 'NO'} |" for n, v, t, ok in rows]
    print("\n".join(table))
    print("raw:", {k: [round(x, 3) for x in v] for k, v in res.items()})
    section = [
        "", f"## bench_reach.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"Machine: {machine()} (2 cores shared with other workers: noisy). netlab, one process per device, QUIC engine default; "
        f"{a.reps} reps for setup times, 2 transfers for throughput. Setup = Reachability.start() to session on that path.",
        "", *table, "",
    ]
    with open(REPO / "bench" / "RESULTS.md", "a") as fh:
        fh.write("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
