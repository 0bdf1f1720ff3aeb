"""Standing pins: vault paths whose file content an on-demand device keeps, whatever main becomes.

    pcloud pin photos/2026        # kept from now on, also files added there later by other devices
    pcloud unpin photos/2026      # back to fetch-on-open
    pcloud pins                   # the list

Invariants
----------
* The pins of a device are kept in ``<vault>/pins.json`` (a JSON list of
  normalized vault paths, "" = the whole vault), written atomically. They are
  this device's own caching choice, like its watched folders: the registry
  (Raft) holds the device's policy mode, not its pins, so pinning works while
  the device is alone and costs the cluster nothing.
* While a node runs, every time its mirror of ``main`` moves (and when a pin is
  added) the keeper resolves each pinned path in the new head and fetches the
  entry and everything below it (``Replicator.fetch_now``: a deep walk, chunks
  included). A file added later under a pinned folder therefore arrives without
  being opened. A pinned path absent from ``main`` is kept as a pin and fetched
  once it appears.
* Under the ``full`` and ``archive`` policies everything is fetched anyway; the
  keeper then only records pins.
* A watched folder (``pcloud serve --folder DIR=PATH``) on an on-demand
  device is kept like a pin of PATH: its files must be on disk, so their
  content is fetched as main moves (and the folder told at once), and gc never
  evicts it. Such implicit pins are not written to ``pins.json`` and are not
  listed by ``pcloud pins`` (they end with the folder).
* Pinned content is never dropped. ``gc`` on an on-demand device with a running
  node also evicts (control op ``evict``) the content of unpinned files of
  main, but only chunks a connected full or archive replica confirms it holds
  and no pinned file or other branch uses; reading such a file fetches it again.

Without a node the CLI edits ``pins.json`` directly; the next node start fetches them.
The keeper also records the node's policy mode in ``policy.json``, so commands
run while no node runs (``Vault.fsck``) know whether absent file content is
expected (on-demand) or an error.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from . import errors
from .jsonlist import read_string_list, write_string_list
from .store import paths, trees

log = logging.getLogger("pcloud.pins")

PINS_FILE = "pins.json"
POLICY_FILE = "policy.json"
"""The policy mode this device's node last ran with, for commands run while no node runs (fsck)."""
MAX_PINS = 10_000
MAX_PINS_FILE = 1 << 20
POLL_S = 0.2
"""How often the keeper looks at the mirror of main (one ref read) besides the wake-ups."""


def read_pins(vault_dir: str | os.PathLike[str]) -> list[str]:
    """The pinned paths ([] when none); BadArgument if ``pins.json`` is not a list of vault paths."""
    return [paths.normalize(s) for s in read_string_list(Path(vault_dir) / PINS_FILE, MAX_PINS_FILE, "vault paths")]


def write_pins(vault_dir: str | os.PathLike[str], pins: list[str]) -> None:
    if len(pins) > MAX_PINS:
        raise errors.BadArgument(f"at most {MAX_PINS} pinned paths")
    write_string_list(Path(vault_dir) / PINS_FILE, sorted(set(pins)))


def add_pin(vault_dir: str | os.PathLike[str], path: str) -> list[str]:
    """Pin ``path`` in ``pins.json`` (idempotent); returns the new list."""
    path = paths.normalize(path)
    pins = read_pins(vault_dir)
    if path not in pins:
        write_pins(vault_dir, pins + [path])
    return read_pins(vault_dir)


def remove_pin(vault_dir: str | os.PathLike[str], path: str) -> list[str]:
    """Unpin ``path``; NotFound if it was not pinned. Returns the new list."""
    path = paths.normalize(path)
    pins = read_pins(vault_dir)
    if path not in pins:
        raise errors.NotFound(f"{path or '/'} is not pinned (pinned: {', '.join(p or '/' for p in pins) or 'nothing'})")
    pins.remove(path)
    write_pins(vault_dir, pins)
    return pins


def record_policy(vault_dir: str | os.PathLike[str], mode: str) -> None:
    d = Path(vault_dir)
    tmp = d / (POLICY_FILE + ".tmp")
    tmp.write_text(json.dumps({"policy": mode}))
    os.replace(tmp, d / POLICY_FILE)


def recorded_policy(vault_dir: str | os.PathLike[str]) -> str | None:
    """The mode recorded by the last node run (None: never ran, or the file is unreadable)."""
    try:
        data = json.loads((Path(vault_dir) / POLICY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", POLICY_FILE, exc)
        return None
    mode = data.get("policy") if isinstance(data, dict) else None
    return mode if isinstance(mode, str) else None


class PinKeeper:
    """The node side: control ops ``pins``, ``pin``, ``unpin`` and the standing fetch (see the module docstring)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.dir = Path(node.dir)
        self._wake = asyncio.Event()
        self._kept: dict[str, bytes] = {}
        "pinned path -> the entry id last fetched whole for it (nothing to do until it changes)"
        self.last_error: str | None = None
        self._deep_pending = False

    def install(self) -> None:
        record_policy(self.dir, self.node.replicator.policy.mode.value)
        self.node.add_handler("policy", self._op_policy)
        self.node.add_handler("pins", self._op_pins)
        self.node.add_handler("pin", self._op_pin)
        self.node.add_handler("unpin", self._op_unpin)
        self.node.add_handler("evict", self._op_evict)
        self.node._spawn(self._loop())

    # ------------------------------------------------------------------ ops

    async def _op_pins(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pins": read_pins(self.dir), "policy": self.node.replicator.policy.mode.value}

    async def _op_pin(self, req: dict[str, Any]) -> dict[str, Any]:
        path = paths.normalize(str(req["path"]))
        pins = add_pin(self.dir, path)
        complete, stored, reason = await self._keep(path)
        return {"pins": pins, "path": path, "complete": complete, "stored": stored, "reason": reason,
                "policy": self.node.replicator.policy.mode.value}

    async def _op_unpin(self, req: dict[str, Any]) -> dict[str, Any]:
        pins = remove_pin(self.dir, str(req["path"]))
        self._kept.pop(paths.normalize(str(req["path"])), None)
        return {"pins": pins}

    async def _op_policy(self, req: dict[str, Any]) -> dict[str, Any]:
        """Set a device's policy mode in the registry (Raft ``SetPolicy``; owners, or the device itself)."""
        from consensus.commands import SetPolicy
        from replication.policy import Mode
        mode = str(req["mode"])
        if mode not in {m.value for m in Mode}:
            raise errors.BadArgument(f"policy must be one of {', '.join(m.value for m in Mode)}; got {mode!r}")
        device = bytes.fromhex(req["device"]) if req.get("device") else self.node.key
        result = await self.node.raft.execute(SetPolicy(device, mode), timeout=self.node.config.quorum_timeout)
        if result.accepted and device == self.node.key:
            await self._follow_registry()
        return {"code": result.code, "reason": result.reason, "device": device.hex(), "policy": mode,
                "effective": self.node.replicator.policy.mode.value if device == self.node.key else None}

    # ------------------------------------------------------------------ eviction

    async def _op_evict(self, req: dict[str, Any]) -> dict[str, Any]:
        """Drop the content of unpinned files of main that a full or archive replica confirms it holds.

        Candidates: chunks of the files in main's current tree outside every
        pin, minus chunks any pinned file or any other branch's tree uses (dedup
        shares chunks). Each is dropped only if a connected device whose
        registry policy is ``full`` or ``archive`` answers ``repl.have`` for it,
        so nothing leaves the last device holding it. Reads fetch it again.
        """
        if not self._lazy():
            raise errors.BadArgument(f"only an on-demand device evicts file content (this one is "
                                     f"{self.node.replicator.policy.mode.value})")
        head = self.node._mirror()
        if head is None:
            return {"evicted": 0, "candidates": 0, "unconfirmed": 0}
        pins = self._kept_paths()
        under_pin = lambda path: any(not p or path == p or path.startswith(p + "/") for p in pins)  # noqa: E731
        candidates, keep = self._evictable(head, under_pin)     # the node's store stays on its loop thread
        todo = sorted(c for c in candidates - keep if self.node.store.has(c))
        confirmed = await self._held_elsewhere(todo)
        evicted = self.node.store.evict(confirmed) if confirmed else 0
        self._kept.clear()
        log.info("evicted %d chunks of unpinned files (%d candidates, %d not confirmed elsewhere)",
                 evicted, len(todo), len(todo) - len(confirmed))
        return {"evicted": evicted, "candidates": len(todo), "unconfirmed": len(todo) - len(confirmed)}

    def _evictable(self, head: bytes, under_pin: Any) -> tuple[set[bytes], set[bytes]]:
        from .store.objects import Blob, Commit, EntryKind, Tree
        store = self.node.store

        def files(commit_id: bytes) -> list[tuple[str, bytes]]:
            out: list[tuple[str, bytes]] = []
            commit = store.get(commit_id)
            if not isinstance(commit, Commit):
                return out
            stack = [(commit.tree, "")]
            while stack:
                tid, prefix = stack.pop()
                if not store.has(tid):
                    continue
                tree = store.get(tid)
                if not isinstance(tree, Tree):
                    continue
                for e in tree.entries:
                    path = f"{prefix}{e.name}"
                    if e.kind == EntryKind.DIR:
                        stack.append((e.id, path + "/"))
                    elif e.kind == EntryKind.FILE:
                        out.append((path, e.id))
            return out

        def chunks(blob_id: bytes) -> list[bytes]:
            if not store.has(blob_id):
                return []
            blob = store.get(blob_id)
            return list(blob.refs()) if isinstance(blob, Blob) else []

        candidates: set[bytes] = set()
        keep: set[bytes] = set()
        for path, blob_id in files(head):
            (keep if under_pin(path) else candidates).update(chunks(blob_id))
        for name, other in store.refs.list().items():
            if name != "main" and other != head and store.has(other):
                for _, blob_id in files(other):
                    keep.update(chunks(blob_id))
        return candidates, keep

    async def _held_elsewhere(self, ids: list[bytes]) -> list[bytes]:
        """The subset of ``ids`` a connected full or archive replica answers ``repl.have`` for."""
        from replication import protocol as p
        from transport.errors import TransportError
        node = self.node
        holders = [s for k, s in node.endpoint.sessions.items() if s.state == "up"
                   and (rec := node.raft.state.find_device(k)) is not None and rec.active
                   and rec.policy in ("full", "archive")]
        left = list(ids)
        confirmed: list[bytes] = []
        for session in holders:
            missing: list[bytes] = []
            for i in range(0, len(left), p.MAX_HAVE):
                batch = left[i:i + p.MAX_HAVE]
                try:
                    sizes = p.decode_have_response(
                        await session.request(p.HAVE, p.encode_have_request(batch), timeout=30.0), len(batch))
                except (TransportError, errors.ReplicationError) as exc:
                    log.info("evict: %s could not confirm: %s", session.peer_id.hex()[:12], exc)
                    missing.extend(batch)
                    continue
                for oid, size in zip(batch, sizes):
                    (confirmed if size is not None else missing).append(oid)
            left = missing
            if not left:
                break
        return confirmed

    # ------------------------------------------------------------------ policy mode

    async def _follow_registry(self) -> None:
        """Run with the registry's policy mode for this device (unless the node config overrides it).

        The node reads the registry once at start, when after a restart Raft may
        not have replayed yet; this keeps the replicator on the committed mode.
        Moving to a mode that fetches everything walks main deeply once, since
        files stored metadata-only are complete for an ordinary walk.
        """
        from replication.policy import Mode, Policy
        node = self.node
        if node.config.policy is not None:
            return
        rec = node.raft.state.find_device(node.key)
        if rec is None or rec.policy == node.replicator.policy.mode.value:
            return
        new = Policy.named(rec.policy)
        was_lazy = self._lazy()
        node.replicator.policy = new
        node.replicator.plan.policy = new
        record_policy(self.dir, new.mode.value)
        log.info("policy is now %s (registry)", new.mode.value)
        self._kept.clear()
        self._deep_pending = was_lazy and new.mode is not Mode.ON_DEMAND
        await self._deep_fetch()

    async def _deep_fetch(self) -> None:
        """After a switch away from on-demand: fetch main whole once (retried until complete)."""
        head = self.node._mirror()
        if not self._deep_pending or head is None or self._lazy():
            self._deep_pending = self._deep_pending and not self._lazy()
            return
        result = await self.node.replicator.fetch_now([head])
        self._deep_pending = not result.complete
        if self._deep_pending:
            await asyncio.sleep(1.0)         # peers may come back; do not spin
        log.info("policy %s: fetched %d objects of main (%s)", self.node.replicator.policy.mode.value,
                 result.stored, "complete" if result.complete else result.reason)

    # ------------------------------------------------------------------ standing fetch

    def _lazy(self) -> bool:
        from replication.policy import Mode
        return self.node.replicator.policy.mode is Mode.ON_DEMAND

    def _entry_id(self, head: bytes, path: str) -> bytes | None:
        from .store.objects import Commit
        store = self.node.store
        commit = store.get(head)
        if not isinstance(commit, Commit):
            return None
        if not path:
            return commit.tree
        entry = trees.lookup(store, commit.tree, path)
        return None if entry is None else entry.id

    def _kept_paths(self) -> list[str]:
        """The pins of ``pins.json`` and, implicitly, the vault path of every watched folder."""
        pins = read_pins(self.dir)
        watched = [fs.vault_path for fs in self.node.folders]
        return sorted(set(pins) | set(watched))

    def _wake_folders(self, path: str) -> None:
        """Content under ``path`` just arrived: folders waiting for it write it now, not at their next retry."""
        for fs in self.node.folders:
            vp = fs.vault_path
            if not path or not vp or vp == path or vp.startswith(path + "/") or path.startswith(vp + "/"):
                fs.on_remote_change()  # its cycle retries the pending paths

    async def _keep(self, path: str) -> tuple[bool, int, str | None]:
        """Fetch the pinned ``path`` of the current mirror whole; (complete, objects stored, why not)."""
        head = self.node._mirror()
        if head is None:
            return False, 0, "this device has no main yet"
        oid = self._entry_id(head, path)
        if oid is None:
            return True, 0, f"{path or '/'} is not in main (yet); it is fetched when it appears"
        if not self._lazy() or self._kept.get(path) == oid:
            return True, 0, None
        result = await self.node.replicator.fetch_now([oid])
        if result.complete:
            self._kept[path] = oid
            return True, result.stored, None
        return False, result.stored, result.reason

    async def _loop(self) -> None:
        seen: tuple[bytes, list[str]] | None = None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                seen = await self._pass(seen)
            except (errors.PcloudError, errors.ReplicationError, errors.TransportError) as exc:
                # one bad pass (a peer failing mid-fetch, an unreadable pins.json) never stops the keeper
                if str(exc) != self.last_error:
                    log.warning("pins: %s", exc)
                self.last_error = str(exc)
                await asyncio.sleep(1.0)

    async def _pass(self, seen: tuple[bytes, list[str]] | None) -> tuple[bytes, list[str]] | None:
        """Follow the registry's mode, then fetch every pinned path of a new main; returns what is done."""
        await self._follow_registry()
        if self._deep_pending:
            await self._deep_fetch()
        head = self.node._mirror()
        if head is None or not self._lazy():
            return seen
        pins = self._kept_paths()
        if seen == (head, pins):
            return seen
        done = True
        for path in pins:
            complete, stored, reason = await self._keep(path)
            if not complete:
                done = False
                self.last_error = f"{path or '/'}: {reason}"
                log.info("pinned %s not complete yet: %s", path or "/", reason)
            elif stored:
                log.info("pinned %s: %d objects fetched", path or "/", stored)
                self._wake_folders(path)
        if not done:
            await asyncio.sleep(1.0)     # peers may come back; do not spin on an unavailable pin
            return seen
        self.last_error = None
        return (head, pins)


def attach(node: Any) -> PinKeeper | None:
    """Install the pin ops and the standing fetch on a started node (devices with the vault key only)."""
    if node.keyring is None:
        return None
    keeper = PinKeeper(node)
    keeper.install()
    return keeper


__all__ = ["PinKeeper", "attach", "read_pins", "write_pins", "add_pin", "remove_pin", "record_policy",
           "recorded_policy", "PINS_FILE", "POLICY_FILE"]
