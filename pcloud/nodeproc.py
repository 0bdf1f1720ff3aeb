"""Run pcloud nodes as child processes on this machine (the demo and the end-to-end tests).

Each node is a real ``python -m pcloud serve`` / ``pcloud relay`` process with
its own vault directory, talking QUIC over 127.0.0.1; the parent talks to it
only as a user would: through the control socket (``status``, ``invite``) and
by opening the vault directory with the public API (whose ``main`` moves go
through the node). Devices enroll with invitation codes (``invite`` then a
real ``pcloud join`` / ``pcloud relay --join`` process: SPAKE2 over QUIC);
``enroll`` (the owner node admitting a key handed to it locally) is kept for
tests that need no invitation.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from consensus.commands import Genesis

from . import control, errors
from .identity import DeviceIdentity, open_keyring
from .node import GENESIS_FILE, write_bootstrap
from .store.objectstore import ObjectStore


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NodeProc:
    """One node process: ``start()``, ``status()``, ``kill()`` (SIGKILL), ``stop()`` (SIGTERM)."""

    def __init__(self, name: str, vault_dir: Path, argv: list[str], log_dir: Path,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.dir = Path(vault_dir)
        self.argv = argv
        self.prefix = prefix or []
        "e.g. ['netlab', 'exec', 'home1-laptop'] to run inside a lab host (it must exec the command)"
        self.extra_env = env or {}
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 30.0) -> "NodeProc":
        repo = Path(__file__).resolve().parent.parent
        env = dict(os.environ) | self.extra_env
        env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "pcloud", "--vault", str(self.dir), "--json", *self.argv],
                                     stdout=subprocess.PIPE, stderr=log, env=env, cwd=str(repo))
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        buf = b""
        while b"\n" not in buf:
            if self.proc.poll() is not None:
                raise errors.PcloudError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                         + self.log_path.read_text()[-2000:])
            if time.monotonic() > deadline:
                self.kill()
                raise errors.PcloudError(f"{self.name} did not start within {timeout}s; see {self.log_path}")
            chunk = self.proc.stdout.read()
            if chunk:
                buf += chunk
            else:
                time.sleep(0.02)
        self.info = json.loads(buf.split(b"\n", 1)[0])
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def device_id(self) -> str:
        return self.info.get("device_id", "")

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        client = control.ControlClient(control.socket_path(self.dir), timeout).connect()
        try:
            return client.call(op, **args)
        finally:
            client.close()

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def kill(self) -> None:
        """SIGKILL: nothing of the node's shutdown code runs."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def invite(owner: NodeProc, trust: str = "member", voter: bool | None = True) -> str:
    """Ask ``owner``'s node for a one-time invitation code (the membership service's ``invite``)."""
    return owner.call("invite", trust=trust, ttl=120, voter=voter)["code"]


def join(code: str, target: Path, name: str, via: str, log_dir: Path) -> dict[str, Any]:
    """``pcloud join CODE --relay VIA`` as a user would type it (a real process); its JSON answer."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(target), "join", code, "--name", name,
                        "--relay", via, "--json"], capture_output=True, text=True, timeout=60, env=env, cwd=str(repo))
    (Path(log_dir) / f"{name}-join.log").write_text(p.stderr)
    if p.returncode != 0:
        raise errors.PcloudError(f"pcloud join failed for {name}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout)


def enroll(owner: NodeProc, target: Path, name: str, trust: str = "member", voter: bool = True) -> dict[str, Any]:
    """Admit a new device directory through ``owner``'s node (Raft ``AdmitDevice``) and set it up."""
    target.mkdir(parents=True, exist_ok=True)
    ident = DeviceIdentity.load_or_create(target)
    answer = owner.call("admit", device=ident.public_key.hex(), name=name, trust=trust, voter=voter)
    enroll_directory(target, answer, name, trust)
    return answer


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy; PcloudError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (errors.PcloudError, OSError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise errors.PcloudError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                                if last_exc else ""))


def enroll_directory(target: str | os.PathLike[str], answer: dict[str, Any], name: str, trust: str) -> None:
    """Finish a device directory after an owner's node admitted its key (``admit`` answer).

    ``target`` must already hold the device key (``DeviceIdentity.create``).
    Writes the genesis, the bootstrap file, and for devices that read the vault
    the sealed keyring, ``vault.json`` and an empty store; for ``storage``
    devices a sealed-only store and the vault tag (never the key).
    """
    import secrets
    import time
    from .vault import META_FILE, VAULT_FORMAT
    p = Path(target)
    identity = DeviceIdentity.load(p)
    genesis = Genesis.decode(bytes.fromhex(answer["genesis"]))
    (p / GENESIS_FILE).write_bytes(genesis.encode())
    boot = {"voters": answer["voters"], "peers": answer["peers"]}
    if trust == "storage":
        boot["vault_tag"] = answer["vault_tag"]
        ObjectStore.create(p / "store", None).close()
        write_bootstrap(p, boot)
        return
    sealed = bytes.fromhex(answer["sealed_keyring"])
    keyring = open_keyring(identity, sealed)
    old = os.umask(0o077)
    try:
        (p / "keyring.sealed").write_bytes(sealed)
    finally:
        os.umask(old)
    ObjectStore.create(p / "store", keyring).close()
    write_bootstrap(p, boot)
    meta = {"format": VAULT_FORMAT, "vault_id": genesis.vault_id.hex(), "device_name": name,
            "created_ns": time.time_ns(), "enrolled": secrets.token_hex(4)}
    (p / META_FILE).write_text(json.dumps(meta, indent=2))
