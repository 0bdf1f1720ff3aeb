"""`pcloud demo` end to end: three real node processes on loopback, every narrated milestone reached."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

MILESTONES = [
    "new vault, its node runs",
    "laptop invites the cloud node: code",
    "joined as storage (no vault key)",
    "phone joined with code",
    "three devices connected; Raft has three voters",
    "laptop committed 3 files and a document",
    "plan.txt and packing.doc read back on the phone",
    "files containing the marker: 0; it holds a vault key: False",
    "both devices hold the merged document",
    "the leader",
    "elected",
    "to main through Raft (2 of 3 voters)",
    "restarted and caught up",
    "ok=True",
    "stopped by SIGTERM (exit 0)",
    "demo finished",
]


@pytest.mark.timeout(150)
def test_demo_three_devices_reaches_every_milestone() -> None:
    env = dict(os.environ, COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "pcloud", "demo"], capture_output=True, text=True, timeout=140, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    pos = 0
    for m in MILESTONES:
        at = p.stdout.find(m, pos)
        assert at >= 0, f"milestone {m!r} missing after position {pos}:\n{p.stdout}"
        pos = at
    merged = p.stdout[p.stdout.find("both devices hold the merged document"):p.stdout.find("5. Kill")]
    assert "sunscreen" in merged and "charger" in merged and "passport" in merged   # CRDT order may vary
    # nothing left behind: the demo's temporary directories are gone
    assert "kept the demo" not in p.stdout


def test_demo_local_tour_still_runs() -> None:
    p = subprocess.run([sys.executable, "-m", "pcloud", "demo", "--local"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "demo finished" in p.stdout and "ok=True" in p.stdout
