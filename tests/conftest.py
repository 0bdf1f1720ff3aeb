"""Shared fixtures: fresh vault directories and the network-namespace lab."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
NETLAB = os.environ.get("NETLAB", str(REPO.parent / "shared" / "netlab" / "netlab"))


class Lab:
    """A running netlab: `ip` is a snapshot of `netlab env`; `run` a subcommand; `popen` a process in a host."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.ip = self.refresh()

    def refresh(self) -> dict[str, str]:
        out = subprocess.run([NETLAB, "env"], env=self.env, capture_output=True, text=True, check=True).stdout
        self.ip = dict(line.split("=", 1) for line in out.split())
        return self.ip

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([NETLAB, *args], env=self.env, check=True, capture_output=True, text=True)

    def popen(self, host: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([NETLAB, "exec", host, *cmd], env=self.env, **kw)

    def exec(self, host: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run([NETLAB, "exec", host, *cmd], env=self.env, **kw)


@pytest.fixture(scope="session")
def netlab(worker_id: str) -> Iterator[Lab]:
    if not Path(NETLAB).exists():
        pytest.skip(f"netlab not found at {NETLAB}")
    if os.geteuid() != 0:
        pytest.skip("netlab needs root (network namespaces)")
    if not shutil.which("iptables"):
        pytest.skip("netlab needs the 'iptables' package (bash .ci/test installs it as root)")
    # One lab per pytest process (and per xdist worker): concurrent runs on one machine must not
    # share namespaces, or one run's teardown kills the other's hosts. netlab allows 12 characters.
    prefix = f"p{os.getpid() % 10**7}" + ("" if worker_id == "master" else worker_id.replace("gw", "w"))
    env = dict(os.environ, LAB_PREFIX=prefix, NETLAB_STATE_DIR=f"/run/netlab-{prefix}")
    chk = subprocess.run([NETLAB, "check"], env=env, capture_output=True, text=True)
    if chk.returncode != 0:
        pytest.skip("netlab unavailable: " + chk.stdout.strip() + chk.stderr.strip())
    subprocess.run([NETLAB, "up"], env=env, check=True, capture_output=True)
    try:
        yield Lab(env)
    finally:
        subprocess.run([NETLAB, "down"], env=env, capture_output=True)


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"
