"""The CLI contract of ../shared/CLI.md, run as a real subprocess and checked through the API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pcloud


def run(vault: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PCLOUD_VAULT=str(vault))
    p = subprocess.run([sys.executable, "-m", "pcloud", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"pcloud {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def j(vault: Path, *args: str):
    return json.loads(run(vault, *args, "--json").stdout)


def test_init_put_get_ls_log_json(tmp_path: Path):
    v = tmp_path / "v"
    info = j(v, "init", "--name", "laptop")
    assert {"device_id", "vault_id"} <= set(info)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A")
    (src / "b.bin").write_bytes(os.urandom(5000))
    put = j(v, "put", str(src), "docs")
    assert put["files"] == 2 and put["bytes"] == 5001 and put["commit"]
    ls = j(v, "ls", "docs")
    assert [(e["path"], e["kind"], e["size"]) for e in ls] == [("docs/a.txt", "file", 1), ("docs/b.bin", "file", 5000)]
    got = j(v, "get", "docs/a.txt", str(tmp_path / "out.txt"))
    assert got == {"files": 1, "bytes": 1} and (tmp_path / "out.txt").read_text() == "A"
    logs = j(v, "log", "-n", "1")
    assert logs[0]["commit"] == put["commit"] and {"message", "device", "time"} <= set(logs[0])
    mv = j(v, "mv", "docs/a.txt", "docs/c.txt")
    rm = j(v, "rm", "docs/b.bin")
    assert mv["commit"] and rm["commit"]
    with pcloud.Vault.open(v) as vault:
        assert [e.path for e in vault.ls("docs")] == ["docs/c.txt"]
    fsck = j(v, "fsck")
    assert fsck["ok"] is True and fsck["objects"] > 0 and fsck["errors"] == []
    st = j(v, "status")
    assert st["device_id"] == info["device_id"] and st["peers"] == [] and "raft" in st and "sync" in st


def test_global_options_before_command(tmp_path: Path):
    v = tmp_path / "v"
    p = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(v), "--json", "init"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "vault_id" in json.loads(p.stdout)


def test_errors_are_one_line(tmp_path: Path):
    v = tmp_path / "v"
    p = run(v, "ls", check=False)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "not a pcloud vault" in p.stderr
    run(v, "init")
    p = run(v, "put", str(tmp_path / "missing"), check=False)
    assert p.returncode != 0 and "no such file" in p.stderr and "Traceback" not in p.stderr
    p = run(v, "get", "../etc/passwd", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    p = run(v, "serve", "--listen", "nowhere", check=False)    # a node's bad setting: one line too
    assert p.returncode != 0 and "HOST:PORT" in p.stderr and p.stderr.count("\n") == 1


def test_branch_merge_doc_diff(tmp_path: Path):
    v = tmp_path / "v"
    run(v, "init")
    f = tmp_path / "f.txt"
    f.write_text("base")
    run(v, "put", str(f))
    run(v, "branch", "side")
    f.write_text("ours")
    run(v, "put", str(f))
    run(v, "branch", "side", "--switch")
    f.write_text("theirs!")
    run(v, "put", str(f))
    run(v, "doc", "list.doc", "append", "milk")
    run(v, "branch", "main", "--switch")
    m = j(v, "merge", "side")
    assert len(m["conflicts"]) == 1
    d = j(v, "doc", "list.doc")
    assert "milk" in json.dumps(d)
    diff = j(v, "diff")
    assert any(c["kind"] == "added" for c in diff)
    br = j(v, "branch")
    assert br["current"] == "main" and set(br["branches"]) == {"main", "side"}


def test_demo_runs():
    p = subprocess.run([sys.executable, "-m", "pcloud", "demo"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "demo finished" in p.stdout and "ok=True" in p.stdout


def test_serve_flags_reach_the_node_config():
    from pcloud.cli import _node_config
    cfg = _node_config("0.0.0.0:4433", ("relay.example:7000",), ("/tmp/x=docs",), None, mdns_interfaces="all")
    assert (cfg.listen, cfg.relays, cfg.folders, cfg.mdns_interfaces) == (
        "0.0.0.0:4433", ["relay.example:7000"], ["/tmp/x=docs"], "all")
    assert _node_config(None, (), (), None, mdns_interfaces=None).mdns_interfaces == ["127.0.0.1"]
