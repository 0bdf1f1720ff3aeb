"""The running node: the only module that knows every layer (transport, consensus, replication, vault).

    node = Node(vault_dir, NodeConfig(listen="127.0.0.1:0", relays=["127.0.0.1:3478"], folders=["~/Docs=docs"]))
    await node.start()          # endpoint, Raft, replication, documents, folders, control socket
    node.status()               # what `pcloud status --json` prints
    await node.stop()

What runs (``start``)
---------------------
* ``transport.Endpoint`` keyed by this device's Ed25519 seed; ``admit(key)``
  = the key is an active device in the Raft registry (or one of the bootstrap
  peers written at enrollment, so a new device can reach the cluster before
  it has the registry).
* ``transport.pathmgr.Reachability`` keeps a session to every other active
  device: LAN (mDNS with the vault tag, on ``mdns_interfaces``), punched, or
  relayed through the cloud node(s) in ``relays``.
* ``consensus.RaftNode`` over a ``SessionLink``: the vault's registry and the
  head of ``main``. A single-device vault is a one-voter cluster (itself).
* ``replication.Replicator`` (policy from the registry: full, on-demand,
  archive) and ``DocSync`` (sealed document update logs).
* The membership service (``pcloud.membership.attach``): invite, join
  handlers for guests, devices, trust, revoke.
* One ``FolderSync`` per ``folders`` entry, each with its own Vault handle,
  started once this device has a ``main``. On a full-policy device the
  fetcher's check of each big file manifest (``_verify_and_stage``) starts a
  ``Stager`` writing that file while its chunks arrive (the replicator stores
  through ``StagingStore``, which hands each chunk's plaintext to it); the
  folder then renames it into place. A folder hashing a big file offers its
  chunks to the full-replica peers every 32 MiB (``_publish``,
  replication.offer), so they fetch and stage them before the commit exists
  (``_on_offer`` -> ``Stager.expect``).
* The control socket (``pcloud.control``) for the CLI and the API: ops
  ``ping``, ``status``, ``cas_main``, ``fetch`` (on-demand reads), ``admit``,
  ``stop`` and the membership ones.

``main`` (invariants)
---------------------
* While a node runs, only the node moves ``main`` in the local ref table,
  and only to a head Raft has committed whose objects are all stored here
  (the *mirror*). A vault opened without a node sees the last known main.
* A write to ``main`` (CLI, API, folders, merges) is a signed Raft
  ``CasHead``. If Raft says no quorum within ``quorum_timeout`` — or Raft's
  main is ahead of what this device has fetched yet — the commit goes to this
  device's local branch ``local/<device short id>`` instead (merged into it
  when it already exists) and the caller is told. When the node has a leader
  again and the mirror is current, it merges the local branch into ``main``
  (3-way merge, ``Vault.merge``) and deletes it. Nothing is lost and nothing
  waits for the network longer than ``quorum_timeout``.
* Watched folders never divert: their commit fails, the change stays on disk
  and is committed when ``main`` can move again (a folder following ``main``
  would otherwise see its own change vanish from ``main``).
* Commits made while no node ran move ``main`` locally; at the next start the
  node proposes them to Raft (fast-forward) or, if Raft moved meanwhile,
  treats them like a diverted local branch.
* When Raft moves ``main`` (our CAS or another device's, seen at apply) or a
  peer comes up, the replicator fetches the head's closure from the peers
  (best paths first); once it is stored the mirror moves and the folders are
  told.

The cloud node (``pcloud relay``) is the same class without a vault key: a
sealed-only store, archive policy, no folders, never diverts (it never
writes), plus ``transport.relay_server.RelayService`` on its public addresses.

Files in the vault directory: ``genesis.bin`` (the vault's signed genesis,
written by ``Vault.create`` or at enrollment), ``node.json`` (bootstrap: Raft
voters at enrollment, bootstrap peers, vault tag for key-less nodes, relays),
``registry.known.json`` (devices last seen admitted/revoked, for ``admit`` before
Raft has replayed after a restart), ``raft/`` (journal, snapshot),
``doclog.sqlite``, ``node.sock`` (control), ``staging/`` (big incoming files
being written while their chunks arrive, `pcloud.folders_stage`; wiped at start).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from consensus.commands import AdmitDevice, CasHead, Genesis, Revoke
from consensus.errors import NoQuorum
from consensus.raft import RaftConfig, RaftNode
from consensus.session_link import SessionLink
from replication.docsync import DocSync
from replication.doclog import SqliteDocumentLog
from replication.fetcher import Replicator, rank_by_path
from replication.policy import Policy
from transport.endpoint import Endpoint
from transport.events import PeerUp
from transport.pathmgr import Reachability

from . import control, errors, malloc_tune
from .doclive import DocMerger
from .identity import DeviceIdentity, open_keyring, short_id_of
from .node_ops import NodeOps
from .store import history
from .store.crypto import Keyring
from .store.objects import ObjectId
from .store.objectstore import ObjectStore

log = logging.getLogger("pcloud.node")

GENESIS_FILE = "genesis.bin"
NODE_FILE = "node.json"
MAIN = "main"


@dataclass
class NodeConfig:
    """How one node runs. Every field has a loopback-safe default."""

    listen: str = "127.0.0.1:0"
    "HOST:PORT of the QUIC endpoint (port 0: any)"
    relays: list[str] = field(default_factory=list)
    "HOST:PORT of cloud nodes' rendezvous/relay services (empty: LAN only)"
    mdns_interfaces: list[str] | str = field(default_factory=lambda: ["127.0.0.1"])
    "addresses mDNS runs on; 'all' only inside a lab host (outside it traffic must stay on loopback)"
    folders: list[str] = field(default_factory=list)
    "watched folders, 'DIR[=VAULTPATH]' (see pcloud.folders.parse_folder_spec)"
    raft: RaftConfig = field(default_factory=RaftConfig)
    quorum_timeout: float = 2.0
    "seconds a write to main waits for a Raft majority before it lands on the local branch"
    merge_interval: float = 1.0
    "how often the node checks whether the local branch can be merged back / main is behind"
    policy: str | None = None
    "override the registry's replication policy ('full', 'on-demand', 'archive')"
    idle_timeout: float = 6.0
    "seconds of silence after which a session is declared dead (keepalives every third of it); a fetch that\n    was streaming from a device that died waits this long before its batches go elsewhere"
    relay_listen: list[str] = field(default_factory=list)
    "cloud node only: HOST:PORT addresses of the rendezvous/relay service it runs"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NodeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise errors.BadArgument(f"unknown node config keys: {', '.join(bad)}")
        data = dict(data)
        if "raft" in data:
            raft = dict(data["raft"])
            if "election_timeout" in raft:
                raft["election_timeout"] = tuple(raft["election_timeout"])
            data["raft"] = RaftConfig(**raft)
        return cls(**data)


def _hostport(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.BadArgument(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def read_bootstrap(vault_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((vault_dir / NODE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise errors.NotAVault(f"{vault_dir / NODE_FILE} is unreadable: {exc}") from exc


def write_bootstrap(vault_dir: Path, data: dict[str, Any]) -> None:
    tmp = vault_dir / (NODE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, vault_dir / NODE_FILE)


class Node(NodeOps):
    """One device (or the key-less cloud node) running: see the module docstring."""

    def __init__(self, vault_dir: str | os.PathLike[str], config: NodeConfig | None = None) -> None:
        self.dir = Path(vault_dir)
        self.config = config or NodeConfig()
        self.identity = DeviceIdentity.load(self.dir)
        self.key = self.identity.public_key
        self.short = short_id_of(self.key)
        self.local_branch = f"local/{self.short.replace('-', '')[:8].lower()}"
        try:
            self.genesis = Genesis.decode((self.dir / GENESIS_FILE).read_bytes())
        except FileNotFoundError:
            raise errors.NotAVault(f"{self.dir} has no {GENESIS_FILE}: not enrolled in a vault (run `pcloud init` "
                                   "or `pcloud join CODE`; a cloud node: `pcloud relay --join CODE`)") from None
        self.boot = read_bootstrap(self.dir)
        # The registry as last applied here. After a restart the Raft state is empty until a leader
        # says what is committed, and a leader needs sessions, which need `admit`: without this
        # memory two restarted voters that were enrolled after each other could refuse each other.
        self._known = self._load_known()
        self.keyring: Keyring | None = None
        sealed = self.dir / "keyring.sealed"
        if sealed.exists():
            self.keyring = open_keyring(self.identity, sealed.read_bytes())
        self.store: ObjectStore | None = None
        self.endpoint: Endpoint | None = None
        self.raft: RaftNode | None = None
        self.reach: Reachability | None = None
        self.replicator: Replicator | None = None
        self.docs: DocSync | None = None
        self.relay_service: Any = None
        self.folders: list[Any] = []
        self._stage_policy = False
        self.stager: Any = None
        "pcloud.folders_stage.Stager when folders are watched: big incoming files are written while fetched"
        self.control: control.ControlServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handlers: dict[str, control.Handler] = {}
        "control ops; the membership service adds its own with `add_handler`"
        self.membership: Any = None
        "pcloud.membership.Membership, attached in start"
        self._vault: Any = None
        self._vault_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-vault")
        self._divert_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-divert")
        self._cas_lock: asyncio.Lock | None = None
        self._follow_wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.stopped: asyncio.Event | None = None
        "set once the node has stopped (created in start: it needs the loop)"
        self.notices: list[str] = []
        "recent user-facing notices (diversions to the local branch, merges back)"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._cas_lock = asyncio.Lock()
        self._follow_wake = asyncio.Event()
        self.stopped = asyncio.Event()
        cfg = self.config
        if self.keyring is not None:
            self.store = ObjectStore.open(self.dir / "store", self.keyring)
        else:
            self.store = ObjectStore.open(self.dir / "store", None)
        tag = self.keyring.vault_tag() if self.keyring is not None else bytes.fromhex(self.boot["vault_tag"])
        if cfg.relay_listen:
            from transport.relay_server import RelayConfig, RelayService
            self.relay_service = RelayService(RelayConfig(listen=list(cfg.relay_listen), scopes=[tag.hex()],
                                                          log_level="warning"))
            await self.relay_service.start()
        host, port = _hostport(cfg.listen)
        # the transport wants the raw seed; DeviceIdentity keeps it private (see report)
        seed = self.identity.seed()
        self.endpoint = await Endpoint.start(host, port, seed, admit=self._admit, idle_timeout=cfg.idle_timeout)
        link = SessionLink(self.endpoint)
        voters = [bytes.fromhex(k) for k in self.boot.get("voters", [])] or [self.key]
        self.raft = RaftNode(link, local=self.key, genesis=self.genesis, voters=voters,
                             directory=self.dir / "raft", config=cfg.raft, signer=self.identity)
        self.raft.on_applied(self._on_applied)
        await self.raft.start()
        policy = cfg.policy or self._registry_policy()
        self._stage_policy = policy == "full"
        verify = None
        if self.keyring is not None:
            verify = self._verify_and_stage
            from .folders_stage import Stager, StagingStore
            keyring = self.keyring
            self.stager = Stager(self.dir / "staging", lambda: ObjectStore.open(self.dir / "store", keyring))
            repl_store = StagingStore(self.store, self.stager)  # chunks' plaintext goes to the stager as stored
        else:
            repl_store = self.store
        self.replicator = Replicator(self.endpoint, repl_store, Policy.named(policy), verify=verify,
                                     invalid_errors=(errors.IntegrityError, errors.WrongKey), peer_rank=self._rank,
                                     on_offer=self._on_offer if self.keyring is not None else None)
        self.replicator.serve()
        # devices holding the key merge documents by state vector and compact their logs; the cloud
        # node (no key) keeps, serves and forwards the sealed logs and checkpoints
        merger = DocMerger(self.keyring) if self.keyring is not None else None
        self.docs = DocSync(self.endpoint, SqliteDocumentLog(self.dir / "doclog.sqlite"), merger=merger)
        self.docs.serve()
        self.endpoint.subscribe(self._on_transport)
        relays = [_hostport(r) for r in cfg.relays] or (
            [_hostport(r) for r in cfg.relay_listen[:1]] if cfg.relay_listen else [])
        self.reach = Reachability(self.endpoint, self._peer_keys(), relay=relays or None,
                                  relay_scope=tag if relays else None, vault_tag=tag,
                                  mdns_interfaces=cfg.mdns_interfaces)
        await self.reach.start()
        self.handlers.update({
            "ping": self._op_ping, "status": self._op_status, "cas_main": self._op_cas_main,
            "devices": self._op_devices, "admit": self._op_admit, "revoke": self._op_revoke,
            "trust": self._op_trust, "stop": self._op_stop, "fetch": self._op_fetch,
        })
        if self.keyring is not None:
            self._vault = await self._in_vault(lambda: self._open_vault(divert=True))
            await self._start_folders()
        from .membership import attach
        self.membership = attach(self)     # invite/join/devices/trust/revoke (control ops + join handlers)
        from .folders_live import attach as attach_folders
        self.live_folders = attach_folders(self)   # folders / folder_add / folder_remove; folders.json
        from .pins import attach as attach_pins
        self.pins = attach_pins(self)      # pins / pin / unpin; pinned paths fetched whenever main moves
        from .doclive import attach as attach_doclive
        self.doclive = attach_doclive(self)   # doc_publish / doc_since: live CRDT updates to and from the API
        self.control = control.ControlServer(self.dir, self.handlers)
        await self.control.start()
        self._spawn(self._follow_loop())
        self._spawn(self._housekeeping_loop())
        self._follow_wake.set()
        log.info("node %s up on %s (%s, policy %s)", self.short, self.endpoint.local_address,
                 "owner vault" if self.keyring else "key-less archive", policy)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self.control is not None:
            await self.control.close()
        if self.membership is not None:
            await self.membership.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fs in self.folders:
            await asyncio.get_running_loop().run_in_executor(None, fs.stop)
        if self.replicator is not None:
            await self.replicator.close()
        if self.stager is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.stager.close)
        if self.reach is not None:
            await self.reach.close()
        if self.raft is not None:
            await self.raft.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.relay_service is not None:
            self.relay_service.close()
        if self._vault is not None:
            await self._in_vault(self._vault.close)
        for fs in self.folders:
            fs.vault.close()
        self._vault_pool.shutdown(wait=False, cancel_futures=True)
        self._divert_pool.shutdown(wait=False, cancel_futures=True)
        if self.docs is not None:
            self.docs.log.close()
        if self.store is not None:
            self.store.close()
        if self.stopped is not None:
            self.stopped.set()
        log.info("node %s stopped", self.short)

    def add_handler(self, op: str, handler: control.Handler) -> None:
        """Register a control op (the membership service uses this for invite/join/...)."""
        self.handlers[op] = handler

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ registry

    def _admit(self, key: bytes) -> bool:
        if self.raft is not None:
            rec = self.raft.state.find_device(key)
            if rec is not None:
                return rec.active
        if self._known.get(key.hex()) is not None:
            return self._known[key.hex()]
        return key.hex() in self.boot.get("peers", []) or key == self.genesis.owner

    def _peer_keys(self) -> list[bytes]:
        keys = {k for k, rec in self.raft.state.devices.items() if rec.active} if self.raft else set()
        keys |= {bytes.fromhex(k) for k in self.boot.get("peers", []) if self._known.get(k, True)}
        keys |= {bytes.fromhex(k) for k, active in self._known.items() if active}
        keys.discard(self.key)
        return sorted(keys)

    _KNOWN_FILE = "registry.known.json"

    def _load_known(self) -> dict[str, bool]:
        try:
            data = json.loads((self.dir / self._KNOWN_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._KNOWN_FILE, exc)
            return {}
        if not isinstance(data, dict) or not all(isinstance(v, bool) for v in data.values()):
            log.warning("ignoring malformed %s", self._KNOWN_FILE)
            return {}
        return data

    def _remember(self, key: bytes, active: bool) -> None:
        if self._known.get(key.hex()) == active:
            return
        self._known[key.hex()] = active
        tmp = self.dir / (self._KNOWN_FILE + ".tmp")
        tmp.write_text(json.dumps(self._known))
        os.replace(tmp, self.dir / self._KNOWN_FILE)

    def _registry_policy(self) -> str:
        rec = self.raft.state.find_device(self.key) if self.raft else None
        if rec is not None:
            return rec.policy
        return "full" if self.keyring is not None else "archive"

    def _verify_and_stage(self, oid: bytes, data: bytes) -> None:
        """The fetcher's check of a metadata envelope; a verified big file manifest starts its staging."""
        from .store import sealing
        from .store.objects import Blob
        assert self.keyring is not None
        obj = sealing.open_verified(self.keyring, data, oid)
        # on-demand devices fetch no chunks with the manifest: nothing to stage there
        if self.stager is not None and self.folders and self._stage_policy and isinstance(obj, Blob):
            self.stager.announce(oid, obj)

    def _publish(self, token: bytes, chunks: list[tuple[ObjectId, int, int]]) -> None:
        """A folder committed chunks of a file it is still hashing (its worker thread): offer them to peers."""
        if self.loop is not None and not self._stopping:
            try:
                self.loop.call_soon_threadsafe(self._send_offers, token, chunks)
            except RuntimeError:
                pass  # the loop closed meanwhile (stopping): offers are an optimisation, the commit carries all

    def _send_offers(self, token: bytes, chunks: list[tuple[ObjectId, int, int]]) -> None:
        from replication.offer import MAX_OFFER_IDS
        from .folders_stage import encode_hint
        if self.endpoint is None or self.replicator is None or self.raft is None:
            return
        for session in list(self.endpoint.sessions.values()):
            rec = self.raft.state.find_device(session.peer_id)
            # only devices that keep everything want the bytes before the commit (the others would refuse),
            # and not through the relay: if the file changes while hashed, the bytes sent were for nothing
            if (session.state != "up" or session.path == "relay" or rec is None or not rec.active
                    or rec.policy != "full"):
                continue
            for i in range(0, len(chunks), MAX_OFFER_IDS):
                part = chunks[i:i + MAX_OFFER_IDS]
                self._spawn(self.replicator.offer(session, [c[0] for c in part], encode_hint(token, part)))

    def _on_offer(self, peer: bytes, ids: list[bytes], tag: bytes) -> None:
        """A peer's offer is about to be fetched: stage the chunks by the hint in its tag (never raises)."""
        if self.stager is None or not self.folders or not self._stage_policy:
            return
        from .folders_stage import decode_hint
        try:
            token, chunks = decode_hint(tag, ids)
        except errors.BadArgument as exc:
            log.info("offer from %s not staged: %s", peer.hex()[:12], exc)
            return
        self.stager.expect(token, chunks)

    def _rank(self, session: Any) -> int:
        rec = self.raft.state.find_device(session.peer_id) if self.raft else None
        # the cloud node serves when nobody closer can (exNode: nearest depot first)
        return rank_by_path(session) + (3 if rec is not None and rec.trust == "storage" else 0)

    def _name_of(self, key: bytes) -> str | None:
        rec = self.raft.state.find_device(key) if self.raft else None
        return rec.name if rec else None

    # ------------------------------------------------------------------ events

    def _on_applied(self, signed: Any, result: Any) -> None:
        cmd = signed.command
        if isinstance(cmd, CasHead) and cmd.branch == MAIN and result.accepted:
            if self._follow_wake is not None:
                self._follow_wake.set()
        elif isinstance(cmd, AdmitDevice) and result.accepted:
            self._remember(cmd.device, True)
            if self.reach is not None and cmd.device != self.key:
                self.reach.add_peer(cmd.device)
        elif isinstance(cmd, Revoke) and result.accepted:
            self._remember(cmd.device, False)
        if isinstance(cmd, Revoke) and result.accepted and self.reach is not None:
            if cmd.device == self.key:
                log.error("this device was revoked from the vault")
            else:
                self.reach.remove_peer(cmd.device)

    def _on_transport(self, event: Any) -> None:
        if isinstance(event, PeerUp) and not self._stopping:
            session = self.endpoint.sessions.get(event.peer_id) if self.endpoint else None
            if session is not None and self.docs is not None:
                self.docs.peer_up(session)
            if session is not None and self.replicator is not None:
                self.replicator.add_peer(session)      # joins a fetch already running, if any
            if self._follow_wake is not None:
                self._follow_wake.set()

    # ------------------------------------------------------------------ main

    def _mirror(self) -> ObjectId | None:
        assert self.store is not None
        return self.store.refs.get(MAIN)

    def _set_mirror(self, head: ObjectId) -> None:
        assert self.store is not None
        for _ in range(100):
            cur = self.store.refs.get(MAIN)
            if cur == head or self.store.refs.cas(MAIN, cur, head):
                return
        raise errors.ConflictError("the local main kept moving under the node (another writer?)")

    def _notify_folders(self, head: ObjectId) -> None:
        for fs in self.folders:
            fs.on_remote_change(head)

    async def cas_main(self, expected: ObjectId | None, new: ObjectId, divert: bool = True) -> dict[str, Any]:
        """Move main from ``expected`` to ``new`` through Raft; see the module docstring."""
        assert self.raft is not None and self._cas_lock is not None and self.store is not None
        if self._stopping:
            raise errors.ConflictError("the node is stopping")
        async with self._cas_lock:
            raft_head = self.raft.state.find_head(MAIN)
            mirror = self._mirror()
            if raft_head is None and mirror is not None and expected == mirror:
                # a vault's first main (made at init, before any node ran) enters Raft here
                try:
                    await self.raft.execute(CasHead(MAIN, None, mirror), timeout=self.config.quorum_timeout)
                except NoQuorum:
                    pass
                raft_head = self.raft.state.find_head(MAIN)
            if expected == mirror and raft_head is not None and raft_head != mirror:
                if not divert:
                    return {"ok": False, "diverted": None}
                return await self._divert(new, "main moved on another device and is still arriving here")
            try:
                result = await self.raft.execute(CasHead(MAIN, expected, new), timeout=self.config.quorum_timeout)
            except NoQuorum:
                if not divert:
                    return {"ok": False, "diverted": None}
                return await self._divert(new, "no Raft quorum")
            if result.accepted:
                self._set_mirror(new)
                self._notify_folders(new)
                return {"ok": True, "diverted": None}
            current = result.head
            if current is not None and self.store.has(current):
                self._set_mirror(current)      # the writer retries on the new head
                return {"ok": False, "diverted": None}
            if not divert:
                return {"ok": False, "diverted": None}
            return await self._divert(new, "main moved on another device and is still arriving here")

    async def _divert(self, new: ObjectId, why: str) -> dict[str, Any]:
        assert self.store is not None
        branch = self.local_branch
        refs = self.store.refs
        cur = refs.get(branch)
        if cur is None or cur == new or history.is_ancestor(self.store, cur, new):
            if cur != new and not refs.cas(branch, cur, new):
                raise errors.ConflictError(f"{branch} moved while diverting a commit to it; try again")
        else:
            def merge() -> None:
                v = self._open_vault(divert=False, forward=False)
                try:
                    v.merge(new.hex(), into=branch, message=f"keep work while offline ({why})")
                finally:
                    v.close()
            await self.loop.run_in_executor(self._divert_pool, merge)
        note = f"{why}: the commit is kept on branch {branch} and will be merged into main when a majority is back"
        log.warning(note)
        self.notices = (self.notices + [note])[-10:]
        return {"ok": True, "diverted": branch, "reason": why}

    def _open_vault(self, divert: bool, forward: bool = True) -> Any:
        """A Vault handle for node-side work (threads only: its main CAS waits on the loop)."""
        from .vault import Vault
        vault = Vault.open(self.dir, _node=True)
        if forward:
            vault.refs = control.ForwardingRefs(vault.store.refs, self._threadsafe_cas(divert), vault.store.flush)
        return vault

    def _threadsafe_cas(self, divert: bool) -> control.CasMain:
        def cas(expected: ObjectId | None, new: ObjectId) -> dict[str, Any]:
            assert self.loop is not None
            fut = asyncio.run_coroutine_threadsafe(self.cas_main(expected, new, divert), self.loop)
            try:
                return fut.result(timeout=self.config.quorum_timeout + 30)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                return {"ok": False, "diverted": None}
        return cas

    async def _in_vault(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._vault_pool, fn)

    async def _follow_loop(self) -> None:
        """Fetch Raft's main and move the mirror to it once it is complete here."""
        assert self._follow_wake is not None and self.raft is not None and self.replicator is not None
        while True:
            try:
                await asyncio.wait_for(self._follow_wake.wait(), self.config.merge_interval)
            except asyncio.TimeoutError:
                pass
            self._follow_wake.clear()
            head = self.raft.state.find_head(MAIN)
            mirror = self._mirror()
            if head is None or head == mirror:
                continue
            if mirror is not None and self.store.has(head) and self.keyring is not None and history.is_ancestor(
                    self.store, head, mirror):
                continue      # offline commits on top of Raft's main: the housekeeping loop proposes them
            t0, fetched = time.perf_counter(), 0.0
            if not self.store.has(head):
                if not self.endpoint.sessions:
                    continue
                result = await self.replicator.sync([head])
                fetched = time.perf_counter() - t0
                if not result.complete:
                    log.info("main %s not complete yet: %s", head.hex()[:12], result.reason)
                    continue
            async with self._cas_lock:
                mirror = self._mirror()
                if self.raft.state.find_head(MAIN) == head and mirror != head:
                    if mirror is not None and self.keyring is not None and not history.is_ancestor(
                            self.store, mirror, head):
                        # Raft's main is a line of commits built on each other, so a mirror that is not
                        # below the new head holds commits made here while no node ran: keep them
                        await self._divert(mirror, "commits made while the node was stopped")
                    self._set_mirror(head)
                    self._notify_folders(head)
                    log.info("main is now %s (fetched in %.3f s)", head.hex()[:12], fetched)

    async def _housekeeping_loop(self) -> None:
        """Propose offline commits, merge the local branch back when a majority is reachable."""
        assert self.raft is not None and self.store is not None
        while True:
            await asyncio.sleep(self.config.merge_interval)
            if self.keyring is None or self.raft.leader is None:
                continue
            raft_head = self.raft.state.find_head(MAIN)
            mirror = self._mirror()
            try:
                if mirror is not None and mirror != raft_head and (
                        raft_head is None or history.is_ancestor(self.store, raft_head, mirror)):
                    # main moved while no node ran (offline CLI writes): propose it
                    result = await self.raft.execute(CasHead(MAIN, raft_head, mirror),
                                                     timeout=self.config.quorum_timeout)
                    log.info("proposed offline main %s: %s", mirror.hex()[:12], result.code)
                    continue
                lb_head = self.store.refs.get(self.local_branch)
                if lb_head is None or raft_head is None or mirror != raft_head:
                    continue
                outcome = await self._in_vault(lambda: self._vault.merge(self.local_branch, into=MAIN))
                if self._mirror() is not None and history.is_ancestor(self.store, lb_head, self._mirror()):
                    self.store.refs.cas(self.local_branch, lb_head, None)
                    note = f"merged {self.local_branch} into main ({outcome.commit[:12]})"
                    log.warning(note)
                    self.notices = (self.notices + [note])[-10:]
            except NoQuorum:
                continue
            except (errors.PcloudError, errors.ConsensusError) as exc:
                log.warning("housekeeping: %s", exc)

    # ------------------------------------------------------------------ folders

    async def _start_folders(self) -> None:
        from .folders import parse_folder_spec
        specs = [parse_folder_spec(spec) for spec in self.config.folders]   # bad specs fail the start
        if specs:
            self._spawn(self._run_folders(specs))

    async def _run_folders(self, specs: list[tuple[str, str]]) -> None:
        """Start the watchers once this device has a main (a device that just joined fetches it first)."""
        from .folders import FolderSync
        while self._mirror() is None:
            await asyncio.sleep(0.1)
        for local, vpath in specs:
            def make(local: str = local, vpath: str = vpath) -> Any:
                vault = self._open_vault(divert=False)
                try:
                    return FolderSync(vault, local, vpath, stager=self.stager, publisher=self._publish).start()
                except BaseException:
                    vault.close()
                    raise
            self.folders.append(await self._in_vault(make))
            log.info("watching %s as %s/", local, vpath)


# ---------------------------------------------------------------------- foreground run


def run_foreground(vault_dir: str | os.PathLike[str], config: NodeConfig,
                   on_ready: Callable[[Node], None] | None = None) -> None:
    """`pcloud serve` / `pcloud relay`: run until SIGTERM/SIGINT, then stop cleanly."""
    malloc_tune.tune()  # before the first chunk buffer: freed ones are then reused, not faulted in anew

    async def main() -> None:
        node = Node(vault_dir, config)
        await node.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            on_ready(node)
        waiter = loop.create_task(node.stopped.wait())
        stopper = loop.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        await node.stop()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
