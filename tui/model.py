"""The TUI's model: what the app shows, as plain dataclasses, and the calls it makes — no textual here.

Invariants
----------
* Everything reaches the node through the public API only: the control
  channel (``pcloud.control``: ``status``, ``devices``, ``invite``, ``trust``,
  ``revoke`` — the same ops the CLI uses) and ``pcloud.Vault`` (reads, commits
  that move ``main`` through the node). Nothing here exists only for the TUI.
* Every method blocks (sockets, SQLite): the app calls them from worker
  threads, never from the UI thread.
* `LiveModel.poll` returns one immutable `Snapshot`; the UI replaces what it
  shows with it wholesale, so a slow poll can never mix two states.
* `FixedModel` replays a recorded snapshot (JSON) so screenshots and snapshot
  tests are byte-for-byte stable; its write actions raise ``NotYetAvailable``
  saying it is a recording.

Starting a node
---------------
If no node answers on the vault's socket, `LiveModel.ensure_node` starts
``pcloud serve`` as a detached child (its own session, log in
``<vault>/node.log``) and waits for the socket. Detached rather than
in-process because the node must keep syncing after the app quits, and a
node in its own process cannot be slowed by the UI (or the UI by it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from pcloud import errors
from pcloud.control import ControlError, node_client, socket_path
from pcloud.ignore import IGNORE_FILE
from pcloud.records import Entry
from pcloud.vault import Vault

from .records import (ChangeRow, ConflictRow, DeviceRow, FolderRow, Health, Invitation, PeerTransfer, Snapshot,
                      SyncState, Version, kept_name, parse_conflict)

RECENT_COMMITS = 15
PATHS_PER_COMMIT = 20
"""changed paths listed per commit in the activity log (the rest are counted)"""
NODE_START_TIMEOUT = 30.0


# ------------------------------------------------------------------ the model


class Model(Protocol):
    """What the app needs; `LiveModel` (a real node) and `FixedModel` (a recording) provide it."""

    vault_dir: Path

    def ensure_node(self) -> str | None: ...
    def poll(self) -> Snapshot: ...
    def list_dir(self, path: str, ref: str) -> list[Entry]: ...
    def versions(self, path: str, ref: str) -> list[Version]: ...
    def read(self, path: str, ref: str, limit: int = 65536) -> bytes: ...
    def restore(self, path: str, commit: str) -> str | None: ...
    def export(self, path: str, ref: str, dest: Path) -> Path: ...
    def pin(self, path: str, ref: str = "main") -> str: ...
    def invite(self, trust: str, ttl: float) -> Invitation: ...
    def set_trust(self, key: str, level: str) -> None: ...
    def revoke(self, key: str) -> None: ...
    def resolve_conflict(self, row: ConflictRow, how: str) -> str | None: ...
    def save_ignore(self, folder: FolderRow, text: str) -> None: ...
    def add_folder(self, spec: str) -> None: ...
    def remove_folder(self, folder: FolderRow) -> None: ...


class LiveModel:
    """The model of a vault on this machine and its running node.

        model = LiveModel(Path("~/.local/share/pcloud").expanduser())
        note = model.ensure_node()      # starts `pcloud serve` if none runs; a sentence saying so, or None
        snap = model.poll()             # Snapshot
    """

    def __init__(self, vault_dir: str | os.PathLike[str], *, start_node: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.vault_dir = Path(vault_dir)
        self.start_node = start_node
        self.clock = clock
        self._last_seen: dict[str, float] = {}
        self._last_bytes: dict[str, tuple[float, int]] = {}
        self.started: subprocess.Popen[bytes] | None = None
        self._vault_cache: tuple[Any, tuple[tuple[ChangeRow, ...], tuple[ConflictRow, ...], tuple[str, ...]]] | None = None

    # -------------------------------------------------------------- node

    def ensure_node(self) -> str | None:
        """Make sure a node runs for the vault; say so if this call started one."""
        client = node_client(self.vault_dir, timeout=5.0)
        if client is not None:
            client.close()
            return None
        require_vault(self.vault_dir)
        if not self.start_node:
            raise errors.NodeNotRunning(f"no node is running for {self.vault_dir}; start `pcloud serve`")
        log = open(self.vault_dir / "node.log", "ab")
        # the same pcloud as this process, even when it runs from a checkout rather than an installed package
        import pcloud
        home = str(Path(pcloud.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH")) if p))
        try:
            self.started = subprocess.Popen(
                [sys.executable, "-m", "pcloud", "--vault", str(self.vault_dir), "serve"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                raise errors.NodeNotRunning(f"`pcloud serve` exited with {self.started.returncode}; "
                                            f"see {self.vault_dir / 'node.log'}")
            client = node_client(self.vault_dir, timeout=5.0)
            if client is not None:
                client.close()
                return (f"no node was running: started `pcloud serve` in the background (pid {self.started.pid}, "
                        f"log {self.vault_dir / 'node.log'}); it keeps syncing after you quit")
            time.sleep(0.1)
        raise errors.NodeNotRunning(f"`pcloud serve` did not open {socket_path(self.vault_dir)} "
                                    f"within {NODE_START_TIMEOUT:.0f}s")

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        client = node_client(self.vault_dir, timeout=30.0)
        if client is None:
            raise errors.NodeNotRunning(f"no node is running for {self.vault_dir}")
        try:
            return client.call(op, **args)
        finally:
            client.close()

    def _vault(self) -> Vault:
        return Vault.open(self.vault_dir)

    # -------------------------------------------------------------- polling

    def poll(self) -> Snapshot:
        """One consistent look at the node and ``main`` (blocking; run it on a worker thread)."""
        now = self.clock()
        client = node_client(self.vault_dir, timeout=30.0)
        if client is None:
            return Snapshot(now, str(self.vault_dir), False, error="no node is running for this vault")
        try:
            status = client.call("status")
            listing = client.call("devices")["devices"]
        except ControlError as exc:
            return Snapshot(now, str(self.vault_dir), False, error=str(exc))
        finally:
            client.close()
        peers = {p["device_id"]: p for p in status.get("peers", [])}
        names = {d["device_id"]: d["name"] for d in listing}
        devices = []
        for d in listing:
            me = d["device_id"] == status["device_id"]
            online = bool(d["online"]) and not d["revoked"]
            if online and not me:
                self._last_seen[d["device_id"]] = now
            p = peers.get(d["device_id"], {})
            devices.append(DeviceRow(
                device_id=d["device_id"], key=d["key"], name=d["name"], trust=d["trust"], voter=bool(d["voter"]),
                policy=d.get("policy", ""), online=online, revoked=bool(d["revoked"]), this_device=me,
                path=None if me else p.get("path"), rtt_ms=p.get("rtt_ms"),
                last_seen=now if me else self._last_seen.get(d["device_id"])))
        sync = self._sync(status, names, now)
        raft = status.get("raft", {})
        by_id = {d.device_id: d for d in devices}
        health = Health(
            device_id=status["device_id"], name=str(status.get("name") or ""), role=raft.get("role"),
            leader=raft.get("leader"), leader_name=names.get(raft.get("leader") or ""),
            has_quorum=bool(raft.get("has_quorum")), main=status.get("main"),
            local_branch=status.get("local_branch"), policy=str(status.get("policy", "")),
            address=str(status.get("address", "")),
            cloud=tuple((d.name, d.online, d.path) for d in by_id.values() if d.trust == "storage" and not d.revoked),
            notices=tuple(status.get("notices", ())))
        folders = tuple(FolderRow(dir=f["dir"], vault_path=f["vault_path"], committed=f["committed"],
                                  applied=f["applied"], scanned=bool(f["scanned"]), ignore=_read_ignore(f["dir"]))
                        for f in status.get("folders", []))
        changes: tuple[ChangeRow, ...] = ()
        conflicts: tuple[ConflictRow, ...] = ()
        branches: tuple[str, ...] = ("main",)
        if status.get("main"):
            # history and the conflict scan are read again only when main or the branches moved
            try:
                with self._vault() as v:
                    refs = tuple(sorted(v.branches().items()))
                    if self._vault_cache is None or self._vault_cache[0] != (refs, tuple(sorted(names.items()))):
                        self._vault_cache = ((refs, tuple(sorted(names.items()))),
                                             (_recent_changes(v, names), _conflicts(v), tuple(b for b, _ in refs)))
                    changes, conflicts, branches = self._vault_cache[1]
            except errors.PcloudError as exc:
                return Snapshot(now, str(self.vault_dir), True, tuple(devices), sync, (), health, folders,
                                error=f"reading the vault failed: {exc}")
        return Snapshot(now, str(self.vault_dir), True, tuple(devices), sync, changes, health, folders, conflicts,
                        branches)

    def _sync(self, status: dict[str, Any], names: dict[str, str], now: float) -> SyncState:
        s = status.get("sync", {})
        peers = []
        for dev, c in sorted(s.get("peers", {}).items()):
            prev = self._last_bytes.get(dev)
            rate = 0.0
            if prev is not None and now > prev[0]:
                rate = max(0.0, (c["bytes"] - prev[1]) / (now - prev[0]))
            self._last_bytes[dev] = (now, c["bytes"])
            peers.append(PeerTransfer(dev, names.get(dev, dev), c["objects"], c["bytes"], rate))
        return SyncState(s.get("wanted_objects", 0), s.get("wanted_bytes", 0), s.get("stored_objects", 0),
                         bool(s.get("running")), tuple(peers))

    # -------------------------------------------------------------- files

    def list_dir(self, path: str, ref: str) -> list[Entry]:
        with self._vault() as v:
            return v.ls(path, ref=ref)

    def versions(self, path: str, ref: str) -> list[Version]:
        """Commits of ``ref`` where ``path``'s content changed, newest first."""
        out: list[Version] = []
        with self._vault() as v:
            last_id: str | None = None
            last: Version | None = None
            for c in v.log(200, branch=ref):
                try:
                    e = v.stat(path, ref=c.commit)
                    eid, size = e.id, e.size
                except errors.NotFound:
                    eid, size = "", 0
                if last is not None and eid != last_id:
                    out.append(last)
                last_id, last = eid, (Version(c.commit, c.time_ns, c.device, c.message, size) if eid else None)
            if last is not None:
                out.append(last)
        return out

    def read(self, path: str, ref: str, limit: int = 65536) -> bytes:
        with self._vault() as v:
            return v.read(path, ref=ref)[:limit]

    def restore(self, path: str, commit: str) -> str | None:
        """Write ``path`` as it was at ``commit`` (a new commit on main); its id."""
        with self._vault() as v:
            data = v.read(path, ref=commit)
            return v.write(path, data, message=f"restore {path} from {commit[:12]}").commit

    def export(self, path: str, ref: str, dest: Path) -> Path:
        with self._vault() as v:
            v.export(path, dest, ref=ref)
        return dest

    def pin(self, path: str, ref: str = "main") -> str:
        """Pin ``path`` on this device: its content is fetched now and whenever main changes.

        Uses the node's ``pin`` op (standing pins, ``pcloud.pins``). Pins follow
        main, so ``ref`` only matters for the message.
        """
        a = self._call("pin", path="" if path in ("", "/") else path)
        where = "/" + a["path"]
        if not a.get("complete"):
            return f"{where} pinned; not all of it is here yet ({a.get('reason')}), the node keeps trying"
        return f"{where} pinned: kept on this device ({a.get('stored', 0)} objects fetched now), also later changes"

    # -------------------------------------------------------------- devices

    def invite(self, trust: str, ttl: float) -> Invitation:
        a = self._call("invite", trust=trust, ttl=ttl, voter=None)
        return Invitation(a["code"], float(a["expires_at"]), a["trust"], a.get("qr", ""))

    def set_trust(self, key: str, level: str) -> None:
        self._call("trust", device=key, trust=level, level=level)

    def revoke(self, key: str) -> None:
        self._call("revoke", device=key)

    # -------------------------------------------------------------- conflicts

    def resolve_conflict(self, row: ConflictRow, how: str) -> str | None:
        """``keep-mine`` drops the copy; ``keep-theirs`` puts the copy at the path; ``keep-both`` renames the copy."""
        with self._vault() as v:
            if how == "keep-mine":
                info = v.remove(row.copy_path, message=f"conflict {row.original_path}: kept this side")
            elif how == "keep-theirs":
                data = v.read(row.copy_path)
                with v.commit(f"conflict {row.original_path}: kept {row.copy_device}'s side") as tx:
                    tx.write(row.original_path, data)
                    tx.remove(row.copy_path)
                return v.resolve("main").hex()
            elif how == "keep-both":
                info = v.move(row.copy_path, kept_name(row), message=f"conflict {row.original_path}: kept both")
            else:
                raise errors.BadArgument(f"unknown resolution {how!r} (keep-mine, keep-theirs, keep-both)")
            return info.commit if info else None

    # -------------------------------------------------------------- folders

    def save_ignore(self, folder: FolderRow, text: str) -> None:
        p = Path(folder.dir) / IGNORE_FILE
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)

    def add_folder(self, spec: str) -> None:
        """Watch ``DIR[=VAULTPATH]`` (the node's ``folder_add``: kept across restarts)."""
        local, sep, vpath = spec.strip().partition("=")
        if not local:
            raise errors.BadArgument("give a folder as DIR or DIR=VAULTPATH")
        self._call("folder_add", spec=os.path.abspath(os.path.expanduser(local)) + sep + vpath)

    def remove_folder(self, folder: FolderRow) -> None:
        """Stop watching ``folder`` (files stay on disk and in the vault)."""
        self._call("folder_remove", dir=folder.dir)


def require_vault(vault_dir: Path) -> None:
    """NotAVault, saying what to do, unless ``vault_dir`` is enrolled in a vault (it has the genesis)."""
    if not (Path(vault_dir) / "genesis.bin").exists():
        raise errors.NotAVault(f"{vault_dir} is not a vault: run `pcloud init` (a new vault) or `pcloud join CODE` "
                               "(join one) first, or pass --vault DIR")


def _read_ignore(folder: str) -> str:
    try:
        return (Path(folder) / IGNORE_FILE).read_text(errors="replace")[:8192]
    except OSError:
        return ""


def _recent_changes(v: Vault, names: dict[str, str]) -> tuple[ChangeRow, ...]:
    rows: list[ChangeRow] = []
    for c in v.log(RECENT_COMMITS, branch="main"):
        changes = v.diff(None, c.commit)
        who = names.get(c.device, c.device)
        for ch in changes[:PATHS_PER_COMMIT]:
            rows.append(ChangeRow(c.commit, c.time_ns, c.device, who, ch.kind, ch.path, ch.old_path, c.message))
        if len(changes) > PATHS_PER_COMMIT:
            # a big import would otherwise fill the log with one commit's paths
            rows.append(ChangeRow(c.commit, c.time_ns, c.device, who, "more",
                                  f"… {len(changes) - PATHS_PER_COMMIT} more in this commit ({c.message})", None,
                                  c.message))
    return tuple(rows)


def _conflicts(v: Vault) -> tuple[ConflictRow, ...]:
    out = []
    entries = {e.path: e for e in v.ls("", ref="main", recursive=True)}
    for path in sorted(entries):
        parsed = parse_conflict(path)
        if parsed is None:
            continue
        original, device, when = parsed
        exists = original in entries
        dev, t = "", 0
        if exists:
            # the side at the path: the newest commit that touched it
            for c in v.log(50, branch="main"):
                if any(ch.path == original for ch in v.diff(None, c.commit)):
                    dev, t = c.device, c.time_ns
                    break
        out.append(ConflictRow(path, original, device, when, dev, t, exists))
    return tuple(out)


# ------------------------------------------------------------------ recording


class FixedModel:
    """A recorded `Snapshot` (JSON file or object): the same every run, for screenshots and snapshot tests."""

    def __init__(self, snapshot: Snapshot, files: dict[str, list[Entry]] | None = None) -> None:
        self.snapshot = snapshot
        self.vault_dir = Path(snapshot.vault_dir)
        self.files = files or {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "FixedModel":
        try:
            d = json.loads(Path(path).read_text())
            files = {k: [Entry(**e) for e in v] for k, v in d.pop("files", {}).items()}
            return cls(Snapshot.from_json(d), files)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise errors.BadArgument(f"{path} is not a TUI recording (tui.records.Snapshot as JSON): {exc!r}") from exc

    def _readonly(self, *a: Any, **kw: Any) -> Any:
        raise errors.NotYetAvailable("this is a recorded snapshot (FixedModel): nothing can be changed")

    def ensure_node(self) -> str | None:
        return None

    def poll(self) -> Snapshot:
        return self.snapshot

    def list_dir(self, path: str, ref: str) -> list[Entry]:
        return list(self.files.get(path, []))

    def versions(self, path: str, ref: str) -> list[Version]:
        return [Version(c.commit, c.time_ns, c.device, c.message, 0) for c in self.snapshot.changes if c.path == path]

    def read(self, path: str, ref: str, limit: int = 65536) -> bytes:
        return b""

    restore = export = pin = invite = set_trust = revoke = resolve_conflict = _readonly
    save_ignore = add_folder = remove_folder = _readonly


def when(t_s: float | None, now: float) -> str:
    """A short relative time: 'now', '42s ago', '5m ago', '3h ago', or the date."""
    if t_s is None:
        return "—"
    d = now - t_s
    if d < 2:
        return "now"
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.0f}h ago"
    return datetime.fromtimestamp(t_s, timezone.utc).strftime("%Y-%m-%d")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.0f} B"


__all__ = ["LiveModel", "FixedModel", "Model", "Snapshot", "DeviceRow", "PeerTransfer", "SyncState", "ChangeRow",
           "Health", "FolderRow", "ConflictRow", "Version", "Invitation", "parse_conflict", "kept_name", "when",
           "human_bytes"]
