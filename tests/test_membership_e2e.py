"""The enrollment commands end to end with real processes: `pcloud serve` nodes, the CLI as users type it.

init A, serve A; invite; join B (a separate process, through A's address); serve B;
both nodes list both devices; put on A shows up on B; revoke B from A; B is refused.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def pcloud(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "pcloud", *args], capture_output=True, text=True, env=ENV,
                       cwd=str(REPO), timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"pcloud {' '.join(args)} failed: {p.stderr}")
    return p


def j(*args: str) -> Any:
    return json.loads(pcloud(*args, "--json").stdout)


def serve(vault: Path, log: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "pcloud", "serve", "--vault", str(vault), "--listen",
                             "127.0.0.1:0", "--json"], stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                            env=ENV, cwd=str(REPO))
    line = proc.stdout.readline()
    assert line.startswith("{"), f"serve did not start: {log.read_text()[-2000:]}"
    return proc, json.loads(line)


def wait(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (AssertionError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_invite_join_serve_revoke_with_processes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pcloud("init", "--vault", str(a), "--name", "laptop-a")
    procs: list[subprocess.Popen] = []
    try:
        pa, ready_a = serve(a, tmp_path / "a.log")
        procs.append(pa)
        inv = j("invite", "--vault", str(a), "--trust", "member")
        joined = j("join", inv["code"], "--vault", str(b), "--name", "laptop-b", "--relay", ready_a["address"])
        assert joined["trust"] == "member"
        pb, _ = serve(b, tmp_path / "b.log")
        procs.append(pb)
        wait(lambda: {d["name"] for d in j("devices", "--vault", str(b))} == {"laptop-a", "laptop-b"},
             what="b's replica to hold the registry")
        wait(lambda: all(d["online"] for d in j("devices", "--vault", str(a))), what="both online")
        f = tmp_path / "note.txt"
        f.write_text("written on a")
        pcloud("put", str(f), "note.txt", "--vault", str(a))
        wait(lambda: pcloud("get", "note.txt", str(tmp_path / "got.txt"), "--vault", str(b), check=False).returncode
             == 0 and (tmp_path / "got.txt").read_text() == "written on a", what="the file to reach b")
        # b is a member: it may not revoke or change trust (the state machine's reason reaches the user).
        p = pcloud("trust", "laptop-a", "reader", "--vault", str(b), check=False)
        assert p.returncode == 1 and "may not" in p.stderr, p.stderr
        out = j("revoke", "laptop-b", "--vault", str(a))
        assert out["epoch"] == 1
        wait(lambda: next(d for d in j("devices", "--vault", str(a)) if d["name"] == "laptop-b")["online"] is False,
             what="b's sessions to be dropped")
        listing = j("devices", "--vault", str(a))
        assert next(d for d in listing if d["name"] == "laptop-b")["revoked"] is True
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
