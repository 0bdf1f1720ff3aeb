"""The control-socket face of a running node: the ops the CLI and the API call, and `status`.

`NodeOps` is mixed into `pcloud.node.Node` (it uses the node's raft, endpoint,
replicator, store, reach, folders and config); every op takes the decoded JSON
request and returns a JSON-ready dict, raising the layer's named errors (the
control server turns them into error answers). Ops: ``ping``, ``status``,
``cas_main`` (move main through Raft, see pcloud.node), ``fetch`` (on-demand
content), ``admit`` (enroll a key handed over locally; invitations are the
membership service's), ``revoke``/``trust`` (replaced by the membership
service's when it is attached), ``devices``, ``stop``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from consensus.commands import AdmitDevice, PutSealedKey, Revoke, SetTrust

from . import errors
from .identity import seal_keyring_for, short_id_of

log = logging.getLogger("pcloud.node")

MAIN = "main"


class NodeOps:
    """Control ops and status of `pcloud.node.Node` (a mixin: the attributes are the node's)."""

    raft: Any
    endpoint: Any
    replicator: Any
    docs: Any
    reach: Any
    store: Any
    keyring: Any
    config: Any
    boot: dict[str, Any]
    genesis: Any
    key: bytes
    short: str
    folders: list[Any]
    notices: list[str]
    local_branch: str


    async def _op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"device_id": self.short}

    async def _op_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(lambda: self._spawn_stop())
        return {}

    def _spawn_stop(self) -> None:
        asyncio.get_running_loop().create_task(self.stop())

    async def _op_cas_main(self, req: dict[str, Any]) -> dict[str, Any]:
        expected = bytes.fromhex(req["expected"]) if req.get("expected") else None
        new = bytes.fromhex(req["new"])
        if len(new) != 32 or (expected is not None and len(expected) != 32):
            raise ValueError("heads are 32-byte ids")
        if not self.store.has(new):
            raise errors.NotFound(f"commit {new.hex()[:12]} is not in the store (write it before moving main)")
        return await self.cas_main(expected, new, divert=bool(req.get("divert", True)))

    async def _op_fetch(self, req: dict[str, Any]) -> dict[str, Any]:
        """Fetch objects and everything below them now, first in line (on-demand reads)."""
        ids = [bytes.fromhex(i) for i in req["ids"]]
        if not ids or len(ids) > 1024 or any(len(i) != 32 for i in ids):
            raise ValueError("ids: 1 to 1024 object ids of 32 bytes")
        result = await self.replicator.fetch_now(ids)
        if not result.complete:
            raise errors.NotFound(f"not available from the connected devices: {result.reason}")
        return {"stored": result.stored}

    async def _op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _op_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        online = set(self.endpoint.sessions) | {self.key}
        return {"devices": [
            {"device_id": short_id_of(k), "key": k.hex(), "name": r.name, "trust": r.trust, "voter": r.voter,
             "online": k in online and r.active, "revoked": r.revoked, "policy": r.policy}
            for k, r in sorted(self.raft.state.devices.items(), key=lambda kv: kv[1].admitted_at_ms)]}

    async def _op_admit(self, req: dict[str, Any]) -> dict[str, Any]:
        """Enroll a device whose key the caller holds (demo / local enrollment; invitations use membership)."""
        device = bytes.fromhex(req["device"])
        name, trust, voter = str(req["name"]), str(req.get("trust", "member")), bool(req.get("voter", True))
        voters_before = [k.hex() for k in self.raft.state.voters()]
        # Enrolled as a non-voter first: a voter added before it runs and has caught up would
        # make the cluster wait for it (2 voters need both). It is promoted once connected.
        result = await self.raft.execute(AdmitDevice(device, name, trust, False), timeout=self.config.quorum_timeout)
        if not result.accepted:
            raise errors.ConflictError(f"admission refused: {result.code} {result.reason}")
        sealed = None
        if trust != "storage" and self.keyring is not None:
            sealed = seal_keyring_for(device, self.keyring)
            epoch = self.raft.state.epoch
            if len(sealed) <= 4096:
                await self.raft.execute(PutSealedKey(epoch, device, sealed), timeout=self.config.quorum_timeout)
        if voter:
            self.membership.promote_when_connected(device)
        tag = self.keyring.vault_tag() if self.keyring is not None else bytes.fromhex(self.boot["vault_tag"])
        return {"genesis": self.genesis.encode().hex(), "voters": voters_before,
                "peers": sorted({k.hex() for k in self._peer_keys()} | {self.key.hex()}),
                "sealed_keyring": sealed.hex() if sealed else None, "vault_tag": tag.hex(),
                "address": "%s:%d" % self.endpoint.local_address, "relays": list(self.config.relays)}

    async def _op_revoke(self, req: dict[str, Any]) -> dict[str, Any]:
        result = await self.raft.execute(Revoke(bytes.fromhex(req["device"])), timeout=self.config.quorum_timeout)
        return {"code": result.code, "reason": result.reason}

    async def _op_trust(self, req: dict[str, Any]) -> dict[str, Any]:
        result = await self.raft.execute(SetTrust(bytes.fromhex(req["device"]), str(req["trust"])),
                                         timeout=self.config.quorum_timeout)
        return {"code": result.code, "reason": result.reason}

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The `pcloud status --json` document (CLI.md fields plus details)."""
        assert self.raft is not None and self.replicator is not None and self.reach is not None
        peers = []
        for ps in self.reach.status():
            if ps.path is None:
                continue
            peers.append({"device_id": short_id_of(ps.id), "name": self._name_of(ps.id), "path": ps.path,
                          "addr": ps.addr, "rtt_ms": None if ps.rtt_ms is None else round(ps.rtt_ms, 2)})
        leader = self.raft.leader
        prog = self.replicator.progress()
        main = self._mirror()
        raft_main = self.raft.state.find_head(MAIN)
        rs = self.raft.status()
        return {
            "device_id": self.short, "name": self._name_of(self.key), "node": "running",
            "address": "%s:%d" % self.endpoint.local_address,
            "peers": peers,
            "raft": {"role": self.raft.role, "leader": short_id_of(leader) if leader else None,
                     "has_quorum": self.raft.has_quorum, "main": raft_main.hex() if raft_main else None,
                     "term": rs["term"], "commit_index": rs["commit_index"], "last_applied": rs["last_applied"],
                     "log_len": rs["log_len"], "voters": [short_id_of(bytes.fromhex(k)) for k in rs["cluster"]],
                     "connected": [short_id_of(bytes.fromhex(k)) for k in rs["connected"]]},
            "main": main.hex() if main else None,
            "local_branch": self.local_branch if self.store.refs.get(self.local_branch) else None,
            "sync": {"wanted_objects": prog.wanted_objects, "wanted_bytes": prog.wanted_bytes,
                     "stored_objects": prog.stored_objects, "running": prog.running,
                     "peers": {short_id_of(k): vars(c) for k, c in prog.peers.items()}},
            "policy": self.replicator.policy.mode.value,
            "docs": None if self.docs is None else {
                "merges": "state vectors and compaction" if self.docs.merger else "logs only (no key)",
                **vars(self.docs.stats)},
            "folders": [fs.summary() for fs in self.folders],
            "notices": list(self.notices),
        }
