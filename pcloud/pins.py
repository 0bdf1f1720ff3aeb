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
* ``gc`` keeps whatever a branch reaches, so pinned content is never dropped;
  dropping the content of unpinned files on an on-demand device (eviction) is
  not implemented (``unpin`` only stops the standing fetch).

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
    p = Path(vault_dir) / PINS_FILE
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return []
    if len(raw) > MAX_PINS_FILE:
        raise errors.BadArgument(f"{p} is larger than {MAX_PINS_FILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise errors.BadArgument(f"{p} is not JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise errors.BadArgument(f"{p} must be a JSON list of vault paths")
    return [paths.normalize(s) for s in data]


def write_pins(vault_dir: str | os.PathLike[str], pins: list[str]) -> None:
    if len(pins) > MAX_PINS:
        raise errors.BadArgument(f"at most {MAX_PINS} pinned paths")
    d = Path(vault_dir)
    tmp = d / (PINS_FILE + ".tmp")
    tmp.write_text(json.dumps(sorted(set(pins)), indent=1))
    os.replace(tmp, d / PINS_FILE)


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
            await self._follow_registry()
            if self._deep_pending:
                await self._deep_fetch()
            head = self.node._mirror()
            if head is None or not self._lazy():
                continue
            try:
                pins = read_pins(self.dir)
            except errors.PcloudError as exc:
                self.last_error = str(exc)
                log.error("pins: %s", exc)
                continue
            if seen == (head, pins):
                continue
            done = True
            for path in pins:
                try:
                    complete, stored, reason = await self._keep(path)
                except errors.PcloudError as exc:
                    complete, stored, reason = False, 0, str(exc)
                if not complete:
                    done = False
                    self.last_error = f"{path or '/'}: {reason}"
                    log.info("pinned %s not complete yet: %s", path or "/", reason)
                elif stored:
                    log.info("pinned %s: %d objects fetched", path or "/", stored)
            if done:
                seen = (head, pins)
                self.last_error = None
            else:
                await asyncio.sleep(1.0)     # peers may come back; do not spin on an unavailable pin


def attach(node: Any) -> PinKeeper | None:
    """Install the pin ops and the standing fetch on a started node (devices with the vault key only)."""
    if node.keyring is None:
        return None
    keeper = PinKeeper(node)
    keeper.install()
    return keeper


__all__ = ["PinKeeper", "attach", "read_pins", "write_pins", "add_pin", "remove_pin", "record_policy",
           "recorded_policy", "PINS_FILE", "POLICY_FILE"]
