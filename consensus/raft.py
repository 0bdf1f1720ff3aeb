"""The vault state machine replicated by pysyncobj, driven from the asyncio loop.

How it runs
-----------
* ``RaftNode`` owns a ``VaultState`` and a pysyncobj ``SyncObj`` with
  ``autoTick=False``. Loop callbacks tick it: as soon as a frame arrives or a
  command is submitted, and every ``tick_interval`` (25 ms by default) for timeouts.
  Every pysyncobj call happens on the loop thread; nothing ever waits with
  ``sync=True`` (that would deadlock the loop), results come back through
  callbacks that resolve futures.
* After each tick: make the journal durable (see below), *then* send the
  messages the tick produced (``LinkTransport.flush``). So no vote or ack
  leaves this node before the state it reflects is on disk. The leader is the
  exception the Raft thesis allows (§10.2.1): it sends appends first and syncs
  right after, counting itself toward a commit only in a later tick.
* The leader sends one append per follower per tick, whenever its log or
  commit index moved (pysyncobj's batch mode would wait for the heartbeat),
  so concurrent commands share frames.
* Log entries are the encoded ``SignedCommand`` bytes; each replica decodes,
  verifies and applies them itself (``VaultState.apply``). A replica checks its
  own pending commands (``VaultState.preverify``) right after the tick that sent
  them, while they travel, so the check is off the commit path but still done here.
* Per-event ticks (frames in, command queued) do the Raft work only; the 10 ms
  timer tick also resends unanswered commands and reconciles membership. The
  leader skips the immediate tick for a frame of bare acks when nothing is
  uncommitted (the second follower's ack in a 3-node cluster).
* Voters run ``SyncObj(self, other_voters)``; non-voters ``SyncObj(None,
  voters)``: they receive the log, and forward their writes to the leader.
* Membership follows the registry: the leader compares ``state.voters()``
  with the Raft configuration and makes one change at a time (add before
  remove); a leader that must leave first transfers leadership. A non-voter
  that finds itself added to the configuration restarts its SyncObj as a voter;
  a voter that finds a committed entry removing it restarts as a non-voter
  (pysyncobj itself ignores such an entry for its own node).

Durability (what survives ``kill -9``)
---------------------------------------
The journal (pysyncobj's mmap'ed ``FileJournal``) lives under ``directory``
with a msgpack snapshot next to it (custom serializer: no pickle, no fork).
With ``RaftConfig.fsync=True`` (default) the journal is msync'ed and the
term/vote file fsync'ed after every tick that changed them and before any
message leaves; so a command acknowledged as committed is on stable storage on
a majority, and survives kill -9 *and* power loss. With ``fsync=False`` writes
still reach the page cache before messages leave: that survives kill -9 of the
process (the kernel keeps the pages), not a power cut. The commit index is
persisted lazily (once a second); a restarted node relearns it from the
leader, and a whole cluster restarted together commits every entry that was
committed before, through the new leader's first entry.

The Raft configuration is kept in ``raft.members`` (msgpack, fsync'ed,
rewritten whenever an append changes it), because pysyncobj only stores it in
snapshots and a node restarted with a stale configuration could elect itself.
Known gap: pysyncobj renames snapshot files without syncing the directory.

A submitted command that times out (``NoQuorum``) may still commit later; a
retry of the same signed bytes is answered with the first result (the state
machine's replay window makes retries idempotent).

Trust model
-----------
No peer can make a replica run code (no pickle crosses the wire, see
``safe_pickle``) or apply a command nobody enrolled signed (every replica
verifies every entry). Raft itself is not Byzantine-tolerant: a compromised
*voter* (e.g. the cloud node) that wins an election can still withhold, delay
or reorder commands, truncate followers' uncommitted logs, or ship a forged
snapshot to a lagging replica (snapshots carry state, not signatures).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import Node

from consensus import raft_journal, safe_pickle
from consensus.commands import Command, Genesis, SignedCommand, Signer
from consensus.append_trim import trim_append
from consensus.errors import (CommandRejected, ConsensusError, NoQuorum, PermissionDenied, RaftClosed,
                              SnapshotCorrupt)
from consensus.raft_journal import SyncedJournal, fsync_dir
from consensus.raft_transport import (LinkTransport, RaftLink, entry_command_to_wire, node_id, node_key,
                                      wire_to_entry_command)
from consensus.state import Result, VaultState
from transport.errors import RemoteProtocolError

logger = logging.getLogger(__name__)

safe_pickle.install()
raft_journal.install()

_SNAPSHOT_FORMAT = 1
RESEND_AFTER = 1.0
MAX_SNAPSHOT_FILE = 80 * 1024 * 1024
"""Seconds after which a non-leader resends a command that got no answer."""
_RETRY_REASONS = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED,
                  FAIL_REASON.QUEUE_FULL, FAIL_REASON.DISCARDED, FAIL_REASON.UNKNOWN_OUTCOME,
                  FAIL_REASON.REQUEST_DENIED}


@dataclass
class RaftConfig:
    """Tuning of one Raft node. Defaults fit a LAN/loopback cluster."""

    tick_interval: float | None = None
    """Seconds between timer ticks when nothing arrives. Default: the smallest of 25 ms, half the
    heartbeat and 1/16 of the shortest election timeout, so timeouts fire within a small fraction of
    themselves (the defaults give 25 ms; a fixed 10 ms made an idle node spend ~2% of a core ticking,
    and a cluster tuned for 150 ms elections needs faster ticks than 25 ms)."""
    heartbeat: float = 0.05
    """pysyncobj appendEntriesPeriod: heartbeat interval of the leader."""
    election_timeout: tuple[float, float] = (0.4, 0.9)
    """Random follower election timeout range, seconds."""
    leader_fallback: float = 1.5
    """A leader that has not heard from a majority for this long steps down."""
    submit_timeout: float = 2.0
    """Default time ``submit`` waits for a majority before raising NoQuorum."""
    fsync: bool = True
    """Make the journal durable against power loss (msync/fsync) before sending."""
    compaction_entries: int = 5000
    """Snapshot and truncate the log after this many entries."""
    compaction_seconds: float = 300.0
    """... or after this long."""

    def __post_init__(self) -> None:
        if self.tick_interval is None:
            self.tick_interval = min(0.025, self.heartbeat / 2, self.election_timeout[0] / 16)


@dataclass
class _Pending:
    future: asyncio.Future
    data: bytes
    deadline: float
    attempts: int = 0
    retry: bool = False
    """pysyncobj answered 'try again' (no leader yet, leader changed, ...)."""
    sent_at: float = 0.0
    preverified: bool = False


# ---------------------------------------------------------------- SyncObj


class _NoPoller:
    """pysyncobj's poller waits on its own sockets at the end of every tick (a select()
    syscall with no descriptors here): our sockets belong to the event loop."""

    def subscribe(self, descr: Any, callback: Any, event_mask: int) -> None:
        raise ConsensusError("pysyncobj asked to poll a descriptor; LinkTransport owns none")

    def unsubscribe(self, descr: Any) -> None:
        raise ConsensusError("pysyncobj asked to poll a descriptor; LinkTransport owns none")

    def poll(self, timeout: float) -> None:
        return None


class _Replica(SyncObj):
    """The pysyncobj object: one replicated method that applies a signed command."""

    def __init__(self, owner: RaftNode, self_node: str | None, others: list[str], conf: SyncObjConf,
                 transport: LinkTransport) -> None:
        self._owner = owner
        super().__init__(self_node, others, conf, transport=transport, nodeClass=Node)
        self._poller = _NoPoller()

    # Name-mangled override: SyncObj registers ``self.__onMessageReceived`` with the transport.
    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "append_entries":
            message = trim_append(self._SyncObj__raftLog, self.raftLastApplied, message)
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    @replicated
    def apply_command(self, data: bytes) -> list[Any]:
        return self._owner._apply(data).to_list()


# ---------------------------------------------------------------- node


class RaftNode:
    """One device's Raft replica of the vault state.

    Example::

        node = RaftNode(link, local=my_key, genesis=genesis, voters=[k1, k2, k3],
                        directory=vault_dir / "raft", signer=my_signer)
        await node.start()
        result = await node.execute(CasHead("main", old, new))   # or submit(signed)
        node.state.find_head("main"); node.role; node.leader; node.status()
        await node.close()

    ``voters`` is the Raft configuration to start from when ``directory`` holds
    none yet (``raft.members``, rewritten whenever the configuration changes):
    at ``pcloud init`` just this device; at join, the current voters *without
    the newcomer*. A device not in ``voters`` runs as a non-voting replica; once
    an owner's ``AdmitDevice(voter=True)`` commits, the leader adds it to the
    configuration and it restarts itself as a voter (never before: an unknown
    voter would disrupt the cluster with elections).
    """

    def __init__(self, link: RaftLink, *, local: bytes, genesis: Genesis, voters: Iterable[bytes],
                 directory: Path, config: RaftConfig | None = None, signer: Signer | None = None) -> None:
        self.local = local
        self.genesis = genesis
        self.config = config or RaftConfig()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._link = link
        self._signer = signer
        self._members_path = self.directory / "raft.members"
        # The Raft configuration as last appended survives restarts here: pysyncobj
        # only keeps it in snapshots, and a node restarted with a stale configuration
        # could elect itself in a cluster that has since grown.
        self._initial_voters = self._load_members() or sorted(set(voters))
        self._persisted_members: list[bytes] = []
        self._members_seen: tuple[bool, frozenset] | None = None
        self.state = VaultState(genesis)
        self._pending: dict[int, _Pending] = {}
        self._listeners: list[Callable[[SignedCommand, Result], None]] = []
        self._next_token = 0
        self._last_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_soon = False
        self._preverify_soon = False
        self._sent_marker: tuple[int, int] = (0, 0)
        self._commit_deferred = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._membership_busy_until = 0.0
        self._transfer_at = 0.0
        self.tick_errors = 0
        self.role_changes = 0
        """Voter <-> non-voter switches in this process (each rebuilds the SyncObj)."""
        self._obj: _Replica | None = None
        self._transport: LinkTransport | None = None
        self._voter = local in self._initial_voters
        self._build(self._voter, self._initial_voters)
        self._persist_members()

    # ------------------------------------------------------------ construction

    def _conf(self) -> SyncObjConf:
        c = self.config
        return SyncObjConf(
            autoTick=False, appendEntriesUseBatch=True, appendEntriesPeriod=c.heartbeat,
            raftMinTimeout=c.election_timeout[0], raftMaxTimeout=c.election_timeout[1],
            leaderFallbackTimeout=c.leader_fallback, dynamicMembershipChange=True, useFork=False,
            journalFile=str(self.directory / "raft.journal"), fullDumpFile=str(self.directory / "raft.snapshot"),
            serializer=self._write_snapshot, deserializer=self._read_snapshot,
            logCompactionMinEntries=c.compaction_entries, logCompactionMinTime=c.compaction_seconds,
            appendEntriesBatchSizeBytes=2**20, commandsWaitLeader=False, pollerType="select",
            connectionTimeout=max(3.5, c.election_timeout[1]))   # unused by our transport; validated

    def _build(self, voter: bool, voters: list[bytes]) -> None:
        self._transport = LinkTransport(self._link, self.local, voters)
        self._transport.on_activity = self._on_frames
        others = [node_id(k) for k in voters if k != self.local]
        self._obj = _Replica(self, node_id(self.local) if voter else None, others, self._conf(), self._transport)
        self._voter = voter
        self._link.set_handler(self._transport)   # replays link_up for peers already connected

    # ------------------------------------------------------------ membership file

    def _load_members(self) -> list[bytes]:
        try:
            data = self._members_path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            members = msgpack.unpackb(data, raw=False, max_ext_len=0)
            if not (isinstance(members, list) and all(isinstance(k, bytes) and len(k) == 32 for k in members)):
                raise ValueError("not a list of device keys")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise SnapshotCorrupt(f"{self._members_path} is corrupt: {exc}") from exc
        return sorted(members)

    def _cluster(self) -> list[bytes]:
        keys = {node_key(n) for n in self._obj.otherNodes}
        if self._voter:
            keys.add(self.local)
        return sorted(keys)

    def _persist_members(self) -> None:
        # Runs before every ack leaves: compare pysyncobj's node set itself (cheap) before
        # building the sorted key list.
        seen = (self._voter, frozenset(self._obj.otherNodes))
        if seen == self._members_seen:
            return
        members = self._cluster()
        if members == self._persisted_members:
            self._members_seen = seen
            return
        tmp = self._members_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(members, use_bin_type=True))
            f.flush()
            if self.config.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self._members_path)
        if self.config.fsync:
            fsync_dir(str(self.directory))
        self._persisted_members = members
        self._members_seen = seen

    # ------------------------------------------------------------ snapshots (msgpack, never pickle)

    def _write_snapshot(self, path: str, data: tuple) -> None:
        last, prev, cluster = data
        ids = sorted(n.id if isinstance(n, Node) else n for n in cluster if n is not None)
        blob = msgpack.packb([_SNAPSHOT_FORMAT, self.state.snapshot(),
                              [entry_command_to_wire(last[0]), last[1], last[2]],
                              [entry_command_to_wire(prev[0]), prev[1], prev[2]], ids], use_bin_type=True)
        with open(path, "wb") as f:
            f.write(blob)
            f.flush()
            if self.config.fsync:
                os.fsync(f.fileno())

    def _read_snapshot(self, path: str) -> tuple:
        with open(path, "rb") as f:
            blob = f.read(MAX_SNAPSHOT_FILE + 1)     # an installed snapshot came from a peer
        try:
            if len(blob) > MAX_SNAPSHOT_FILE:
                raise SnapshotCorrupt(f"snapshot file is over {MAX_SNAPSHOT_FILE} bytes")
            fmt, state_bytes, last, prev, ids = msgpack.unpackb(blob, raw=False, max_ext_len=0)
            if fmt != _SNAPSHOT_FORMAT:
                raise SnapshotCorrupt(f"unknown Raft snapshot format {fmt!r}")
            state = VaultState.restore(state_bytes, self.genesis)
            entries = [(wire_to_entry_command(e[0]), int(e[1]), int(e[2])) for e in (last, prev)]
            # Node objects, not ids: pysyncobj drops itself from this list by Node equality.
            cluster = [Node(str(i)) for i in ids]
        except (ValueError, TypeError, ConsensusError, RemoteProtocolError) as exc:
            logger.error("Raft snapshot %s refused: %s", path, exc)
            raise SnapshotCorrupt(str(exc)) from exc
        self.state = state
        return entries[0], entries[1], cluster

    # ------------------------------------------------------------ apply (called by pysyncobj, loop thread)

    def _apply(self, data: bytes) -> Result:
        result = self.state.apply(data)
        command = self.state.last_command
        if command is not None:
            for listener in list(self._listeners):
                try:
                    listener(command, result)
                except Exception:  # a listener's bug must not stop the replica applying its log
                    logger.exception("on_applied listener failed")
        if result.code == "invalid":
            # Malformed, forged or senseless: worth a trace on every replica (a hostile peer shows here).
            logger.warning("log entry refused: %s", result.reason)
        return result

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start ticking on the running loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._on_timer()

    async def close(self) -> None:
        """Stop ticking, fail outstanding submits with ``RaftClosed``, close the journal."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(RaftClosed("raft node closed"))
        self._pending.clear()
        if self._obj is not None:
            self._obj.destroy()

    # Ticks are plain loop callbacks (no task per tick): one when something
    # happens (``wake``), and a timer every ``tick_interval`` for Raft timeouts.
    def _on_timer(self) -> None:
        if self._closed:
            return
        self._tick(timer=True)
        assert self.config.tick_interval is not None  # set by RaftConfig.__post_init__
        self._timer = self._loop.call_later(self.config.tick_interval, self._on_timer)

    def wake(self) -> None:
        """Tick as soon as the loop is free (frames arrived, a command was queued)."""
        if not self._tick_soon and not self._closed and self._loop is not None:
            self._tick_soon = True
            self._loop.call_soon(self._on_wake)

    def _on_frames(self) -> None:
        """Frames were just handed to pysyncobj: a follower answers at once (acks and votes
        are produced while handling them), after making what they promise durable."""
        obj = self._obj
        if not (self._voter and obj._isLeader()):
            self._sync(obj._SyncObj__raftLog)
            self._transport.flush()
            self.wake()
        elif not self._tick_soon and (not self._transport.last_frame_acks_only
                                      or obj.raftCommitIndex < obj._SyncObj__raftLog[-1][1]):
            # The leader commits as soon as acks are in (no extra loop iteration on the commit path).
            # Acks when everything is committed already (the second follower's, in a 3-node
            # cluster) can move nothing: the next tick takes them in, saving a tick per command.
            self._tick()

    def _on_wake(self) -> None:
        self._tick_soon = False
        if not self._closed:
            self._tick()

    def _tick(self, timer: bool = False) -> None:
        """One pysyncobj tick, then send / sync. ``timer``: the periodic tick, which also
        resends unanswered commands and reconciles membership (both work on a scale of
        tens of milliseconds or more, so the per-event ticks of the commit path skip them)."""
        obj = self._obj
        try:
            obj.doTick(0.0)
        except (ConsensusError, ValueError, KeyError, TypeError, IndexError, OSError) as exc:
            # A bad entry or message must not kill the loop; pysyncobj retries next tick.
            self.tick_errors += 1
            logger.exception("raft tick failed: %s", exc)
        journal = obj._SyncObj__raftLog          # name-mangled: pysyncobj exposes no accessor
        if self._voter and obj._isLeader():
            # Batching: pysyncobj (appendEntriesUseBatch) would wait for the next heartbeat;
            # we send once per tick whenever the log or the commit index moved, so every
            # command that arrived in this tick shares one append per follower.
            last, commit = journal[-1][1], obj.raftCommitIndex
            if last != self._sent_marker[0] or (commit != self._sent_marker[1] and self._commit_deferred):
                self._sent_marker = (last, commit)
                self._commit_deferred = False
                obj._SyncObj__sendAppendEntries()
            elif commit != self._sent_marker[1]:
                # Only the commit index moved: wait one loop iteration, so that the command a
                # client submits on learning its result rides in the same append (one wake-up
                # of each follower per commit instead of two).
                self._commit_deferred = True
                self.wake()
        if self._voter and obj._isLeader():
            # A leader may write its log in parallel with replicating it (Raft §10.2.1):
            # it counts itself toward a commit only in a later tick, after this sync.
            self._transport.flush()
            self._sync(journal)
        else:
            # Acks and votes must not leave before the entries and term they promise are durable.
            self._sync(journal)
            self._transport.flush()
        if timer:
            self._retry_pending()
            self._reconcile_membership()
        if self._pending and not self._preverify_soon and self._loop is not None:
            # Queued after the endpoint's flush of what this tick sent: the signature check of
            # our own commands runs while they travel, not after the acks are back.
            self._preverify_soon = True
            self._loop.call_soon(self._preverify)

    def _preverify(self) -> None:
        self._preverify_soon = False
        if self._closed:
            return
        for pending in list(self._pending.values()):
            if not pending.preverified:
                pending.preverified = True
                self.state.preverify(pending.data)

    def _sync(self, journal: Any) -> None:
        if isinstance(journal, SyncedJournal):
            journal.sync(self.config.fsync)
        self._persist_members()

    # ------------------------------------------------------------ commands

    def on_applied(self, listener: Callable[[SignedCommand, Result], None]) -> None:
        """Call ``listener(command, result)`` for every decodable command this replica applies,
        in log order, on the loop thread. Replays (restart, promotion to voter, snapshot
        install) call it again for commands seen before: listeners must be idempotent.
        pcloud uses it to learn that ``main`` moved or a device was revoked
        (then ``endpoint.drop_peer``). It must not block."""
        self._listeners.append(listener)

    def sign(self, command: Command) -> SignedCommand:
        """Sign ``command`` as this device with a fresh sequence number."""
        if self._signer is None:
            raise ConsensusError("this RaftNode was built without a signer")
        seq = max(self.state.next_seq(self.local), self._last_seq + 1, time.time_ns() // 1000)
        self._last_seq = seq
        return SignedCommand.create(self._signer, self.genesis.vault_id, seq, time.time_ns() // 1_000_000, command)

    async def execute(self, command: Command, timeout: float | None = None) -> Result:
        """Sign ``command`` as this device and ``submit`` it."""
        return await self.submit(self.sign(command), timeout)

    async def submit(self, command: SignedCommand | bytes, timeout: float | None = None) -> Result:
        """Replicate a signed command and return its result once applied here.

        Returns the ``Result`` for accepted commands and for a lost CAS
        (``code == 'conflict'``, ``head`` is the current head). Raises
        ``PermissionDenied`` (the signer may not), ``CommandRejected`` (invalid
        or replayed; ``str()`` says why), ``NoQuorum`` if no majority committed it
        within ``timeout`` (default ``config.submit_timeout``; it may still commit
        later), ``RaftClosed`` if the node closes meanwhile.
        """
        if self._closed:
            raise RaftClosed("raft node closed")
        data = command.encode() if isinstance(command, SignedCommand) else command
        signed = command if isinstance(command, SignedCommand) else SignedCommand.decode(data)  # refuse garbage early
        record = self.state.find_device(signed.signer) if signed.signer == self.local else None
        if record is not None and record.revoked:
            # This device was revoked. Revocation is final, so its own replica's knowledge is never
            # stale: answer at once (its sessions are dropped, so waiting would only end in NoQuorum).
            # Commands signed by others still go through the log, where every replica judges them.
            raise PermissionDenied("signer has been revoked")
        return await self._submit(data, timeout)

    async def _submit(self, data: bytes, timeout: float | None) -> Result:
        loop = asyncio.get_running_loop()
        wait = self.config.submit_timeout if timeout is None else timeout
        token = self._next_token = self._next_token + 1
        pending = _Pending(loop.create_future(), data, loop.time() + wait)
        self._pending[token] = pending

        def expire() -> None:
            if not pending.future.done():
                obj = self._obj
                logger.warning("command unanswered after %.2fs (%d sends): role=%s leader=%s commit=%s applied=%s",
                               wait, pending.attempts, self.role, obj._getLeader(), obj.raftCommitIndex,
                               obj.raftLastApplied)
                pending.future.set_exception(
                    NoQuorum(f"no Raft majority committed the command within {wait:.2f}s"))
        timer = loop.call_later(wait, expire)
        self._send_pending(pending)
        try:
            result_list = await pending.future
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        result = Result(*result_list)
        if result.code == "denied":
            raise PermissionDenied(result.reason)
        if result.code in ("invalid", "replay"):
            raise CommandRejected(result.reason)
        return result

    def _send_pending(self, pending: _Pending) -> None:
        pending.attempts += 1
        pending.retry = False
        pending.sent_at = time.monotonic()

        def done(res: Any, err: int) -> None:
            logger.debug("command answer: err=%s attempt=%d", err, pending.attempts)
            if pending.future.done():
                return
            if err == FAIL_REASON.SUCCESS:
                pending.future.set_result(res)
            elif err in _RETRY_REASONS:
                pending.retry = True
            else:
                pending.future.set_exception(ConsensusError(f"pysyncobj failed the command: {err}"))

        self._obj.apply_command(pending.data, callback=done)
        self.wake()

    def _retry_pending(self) -> None:
        now = time.monotonic()
        obj = self._obj
        for pending in list(self._pending.values()):
            if pending.future.done():
                continue
            if pending.retry:
                # Back off while no leader is known, so a leaderless cluster is not flooded.
                if obj._getLeader() is not None or now - pending.sent_at >= 0.1:
                    self._send_pending(pending)
            elif not obj._isLeader() and now - pending.sent_at >= RESEND_AFTER:
                # A forwarded command, or the leader's answer, is lost if a session drops or is
                # replaced meanwhile, and pysyncobj would wait for a leader change. Resending
                # the same signed bytes is safe: a duplicate is answered with the first result.
                self._send_pending(pending)

    # ------------------------------------------------------------ membership

    def _reconcile_membership(self) -> None:
        obj = self._obj
        now = time.monotonic()
        if not self._voter:
            others = {node_key(n) for n in obj.otherNodes}
            if self.local in others and self.local in self.state.voters() and not self._last_change_removed_me(obj):
                self._promote(sorted(others))
            return
        if not obj._isLeader() and self._removed_me(obj):
            self._demote(sorted(node_key(n) for n in obj.otherNodes))
            return
        if not obj._isLeader() or now < self._membership_busy_until:
            return
        desired = set(self.state.voters())
        actual = {node_key(n) for n in obj.otherNodes} | {self.local}
        if not desired:
            return
        if self.local not in desired:
            if now >= self._transfer_at:
                self._transfer_at = now + 1.0
                obj.transferLeadership()
            return
        change = None
        to_add = sorted(desired - actual)
        to_remove = sorted(actual - desired)
        if to_add:
            change = ("add", to_add[0])
        elif to_remove:
            change = ("rem", to_remove[0])
        if change is None:
            return
        self._membership_busy_until = now + 5.0

        def done(_res: Any, err: int) -> None:
            self._membership_busy_until = 0.0 if err == FAIL_REASON.SUCCESS else time.monotonic() + 0.2
            logger.info("raft membership %s %s: %s", change[0], change[1].hex()[:12], err)

        node = Node(node_id(change[1]))
        if change[0] == "add":
            obj.addNodeToCluster(node, callback=done)
        else:
            obj.removeNodeFromCluster(node, callback=done)

    def _last_change_removed_me(self, obj: _Replica) -> bool:
        """Does the journal's newest membership entry for this device, committed or not, remove it?
        (A replica whose applied state lags its journal must not promote itself on old news.)"""
        journal = obj._SyncObj__raftLog
        mine = [m for m in getattr(journal, "membership", ()) if m[2] == node_id(self.local)]
        return bool(mine) and mine[-1][1] == "rem"

    def _removed_me(self, obj: _Replica) -> bool:
        """Has a committed membership entry removed this voter (and none re-added it since)?"""
        journal = obj._SyncObj__raftLog
        mine = [m for m in getattr(journal, "membership", ()) if m[2] == node_id(self.local)
                and m[0] <= obj.raftLastApplied]
        return bool(mine) and mine[-1][1] == "rem"

    def _demote(self, voters: list[bytes]) -> None:
        """The cluster removed this voter (revoked, or SetVoter False): carry on as a non-voter,
        so it can never start an election on an old configuration, even after a restart."""
        logger.info("removed from the Raft configuration: continuing as a non-voter")
        self._rebuild(False, voters)

    def _promote(self, voters: list[bytes]) -> None:
        """This non-voter was added to the configuration: restart the SyncObj as a voter."""
        logger.info("promoting to Raft voter")
        self._rebuild(True, voters)

    def _rebuild(self, voter: bool, voters: list[bytes]) -> None:
        """Replace the SyncObj (pysyncobj cannot switch a replica between voter and non-voter).

        The new one replays the snapshot and journal up to the journal's stored commit
        index, which pysyncobj only writes once a second: store it first, or the replay
        stops short of entries this replica has already applied (a revoked device, which
        nobody sends entries to any more, would then never see its revocation again)."""
        self.role_changes += 1
        self._transport.flush()
        self._obj._SyncObj__raftLog.onOneSecondTimer()     # stores the meta (commit index) now
        self._obj.destroy()
        self.state = VaultState(self.genesis)   # replayed from the snapshot and journal
        self._build(voter, voters)
        self._persist_members()
        for pending in self._pending.values():
            if not pending.future.done():
                self._send_pending(pending)

    # ------------------------------------------------------------ reads

    @property
    def role(self) -> str:
        """'leader' | 'follower' | 'candidate' | 'non-voter'."""
        if not self._voter:
            return "non-voter"
        st = self._obj.getStatus()["state"]
        return {0: "follower", 1: "candidate", 2: "leader"}[st]

    @property
    def leader(self) -> bytes | None:
        node = self._obj._getLeader()
        return node_key(node) if node is not None else None

    @property
    def has_quorum(self) -> bool:
        return bool(self._obj.hasQuorum)

    def status(self) -> dict[str, Any]:
        """A JSON-friendly summary (keys hex)."""
        s = self._obj.getStatus()
        leader = self.leader
        return {
            "device": self.local.hex(), "role": self.role, "leader": leader.hex() if leader else None,
            "term": s["raft_term"], "commit_index": s["commit_idx"], "last_applied": s["last_applied"],
            "log_len": s["log_len"], "has_quorum": s["has_quorum"],
            "cluster": sorted([node_key(n).hex() for n in self._obj.otherNodes]
                              + ([self.local.hex()] if self._voter else [])),
            "voters_in_state": [k.hex() for k in self.state.voters()],
            "connected": sorted(k.hex() for k in self._link.connected_peers()),
            "state_digest": self.state.digest().hex(), "applied_commands": self.state.applied,
            "dropped_frames": self._transport.dropped_frames,
            "dropped_messages": self._transport.dropped_messages, "tick_errors": self.tick_errors,
            "role_changes": self.role_changes,
        }
