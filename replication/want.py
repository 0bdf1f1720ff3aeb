"""The want-list: which objects a device lacks, in which order to fetch them, when to store each (sans-I/O).

`WantPlanner` is fed root ids, envelopes received and store outcomes, and
hands back batches of ids to ask a peer for and envelopes ready to store. It
reads the local store (``has``/``refs_of``) but does no network I/O and reads
no clock; `replication.fetcher` drives it.

Invariants
----------
* Closure (see replication.stores): an object is stored only after every
  object it references that the policy follows. The planner therefore holds a
  received envelope (state HELD) until each followed ref is stored or READY,
  and emits READY envelopes children first. A walk stops at any object the
  store has, because its closure is present. Consequences:
  - a killed process leaves no object whose closure is partial, and the next
    walk from the same roots finds exactly what is still missing: every
    stored chunk stays stored and is never fetched again; only HELD metadata
    (commits, trees, manifests waiting for their chunks) is fetched again;
  - on an on-demand device blobs are stored without their chunks (the one
    sanctioned exception); `deep` walks (fetch_now, pins, switching a device
    to full) therefore descend through objects the store has.
* Optimistic readiness: a parent becomes READY as soon as its children are
  READY (not yet durable), so a long commit chain is stored in one
  transaction rather than one per level. If a READY child is then rejected by
  the store (its body failed verification), `rejected` puts it back in the
  queue and reverts every READY ancestor to HELD; the writer skips those in
  the batch it is writing (children are written before parents).
* Ready order: `take_ready` hands out children before parents. A READY id
  keeps its place in the ready deque by a ticket: reverting it to HELD (or
  taking it) voids the entry, and readying it again appends a new one behind
  its children. Without the ticket the old entry, still ahead of a refetched
  child, would hand the parent out first and store it before the child.
* Every tracked id is in exactly one state: QUEUED (to ask for), INFLIGHT
  (asked of a peer), HELD (received, children outstanding), READY (may be
  written), WRITING (handed to the writer). Stored ids are forgotten.
* A graph that can never complete (a peer invented a cycle, or refs nobody
  has) leaves HELD ids behind; `stuck` names them and the fetcher reports
  TransferFailed instead of looping.
* Optional wants (``add_roots(optional=True)``: ids a peer offered, see
  replication.offer) are fetched like others but never make a sync
  incomplete: `drop_optional` forgets those no peer could supply, and an
  optional id (with what is tracked below it) becomes an ordinary want as
  soon as an ordinary walk reaches it.

Order: see replication.policy (urgent, then metadata, then bulk, small files
first), except that once ``held_bytes`` (received metadata waiting for its
children) passes ``held_max``, bulk goes before more metadata: the chunks let
the held manifests be stored, so memory stays bounded on a vault of millions of
files instead of holding every manifest before the first chunk. Sizes are
known once a peer answered ``have`` for an id or sent it;
``wanted_bytes`` counts the known sizes of ids not yet received.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable, Protocol

from replication.envelope import Header
from replication.errors import WrongObject
from replication.policy import BULK, METADATA, URGENT, Policy

GUESS_BULK = 256 * 1024
"""Bytes assumed for a bulk object of unknown size when filling a batch (average chunk)."""
GUESS_META = 4 * 1024
HELD_MAX = 64 << 20
"""Bytes of received metadata waiting for its chunks past which chunks are claimed before more metadata
(a vault of millions of files would otherwise hold every manifest in memory before the first chunk)."""


class Presence(Protocol):
    """The part of the store a walk reads."""

    def has(self, oid: bytes) -> bool: ...
    def refs_of(self, oid: bytes) -> tuple[bytes, ...]: ...


class State(IntEnum):
    QUEUED = 0
    INFLIGHT = 1
    HELD = 2
    READY = 3
    WRITING = 4


Priority = tuple[int, int, int]


@dataclass(slots=True)
class _Node:
    oid: bytes
    state: State
    prio: Priority
    deep: bool
    parents: list[bytes] = field(default_factory=list)
    pending: set[bytes] = field(default_factory=set)
    excluded: set[bytes] = field(default_factory=set)
    data: bytes | None = None
    refs: tuple[bytes, ...] = ()
    size: int | None = None
    peer: bytes | None = None
    followed: bool = False
    stolen: bool = False
    optional: bool = False
    """wanted only because a peer offered it (see `drop_optional`)"""
    ticket: int = 0
    """Which ready-deque entry is this node's live one (see the module's "Ready order")."""


@dataclass(frozen=True, slots=True)
class ReadyObject:
    """An envelope the writer may store now (every followed ref is stored or ahead of it)."""

    oid: bytes
    """Its id (checked against the header)."""
    data: bytes
    """The envelope bytes."""
    refs: tuple[bytes, ...]
    """Header refs, so the writer can skip it if a ref is rejected in the same batch."""
    peer: bytes | None
    """The peer it came from (blamed if the store rejects it)."""


class WantPlanner:
    """Plans one device's fetches. Usage (what `Replicator` does)::

        plan = WantPlanner(store, Policy.full())
        plan.add_roots([head])
        ids = plan.claim(peer, 256, 8 << 20)      # ask the peer for these
        plan.received(oid, envelope_bytes, header)  # for each that arrives
        plan.absent(oid, peer)                      # for each the peer lacks
        batch = plan.take_ready(8 << 20)            # store these in order, then
        plan.stored([...]); plan.rejected(oid)      # report what the store did
    """

    def __init__(self, store: Presence, policy: Policy, held_max: int = HELD_MAX) -> None:
        self.store = store
        self.policy = policy
        self._nodes: dict[bytes, _Node] = {}
        self._heaps: tuple[list[tuple[Priority, bytes]], ...] = ([], [], [])
        """queued ids by priority class (URGENT, METADATA, BULK), each a heap"""
        self.held_max = held_max
        self.held_bytes = 0
        "bytes of HELD envelopes (received, waiting for children): past held_max, bulk is claimed first"
        self._ready: deque[tuple[bytes, int]] = deque()  # (id, ticket); stale tickets are skipped
        self._seq = itertools.count()
        self._tickets = itertools.count(1)
        self._inflight: dict[bytes, None] = {}  # ordered: the newest claims are the last to arrive
        self.ready_bytes = 0
        "bytes of READY envelopes not yet taken by the writer (the fetcher's memory bound)"
        self.stored_objects = 0
        "objects reported stored since creation"

    # ---- discovery -------------------------------------------------------------------------

    def add_roots(self, roots: Iterable[bytes], *, urgent: bool = False, deep: bool = False,
                  optional: bool = False) -> int:
        """Want ``roots`` and (per policy) everything below them; returns how many ids were queued.

        A root the store has is complete unless ``deep``: then the walk reads
        its refs and queues whatever is missing below (for on-demand blobs).
        ``optional``: ids a peer offered; queued as bulk, behind metadata, and
        dropped by `drop_optional` if nobody supplies them.
        """
        before = len(self._nodes)
        cls = URGENT if urgent else BULK if optional else METADATA
        for oid in roots:
            self._check_id(oid)
            self._discover(oid, None, (cls, 0, next(self._seq)), deep, optional)
        return len(self._nodes) - before

    def _discover(self, oid: bytes, parent: _Node | None, prio: Priority, deep: bool,
                  optional: bool = False) -> None:
        node = self._nodes.get(oid)
        if node is not None:
            if node.optional and not optional and not (parent is not None and parent.optional):
                self._make_required(node)
            if parent is not None:
                node.parents.append(parent.oid)
                if node.state not in (State.READY, State.WRITING):
                    parent.pending.add(oid)
            if (deep and not node.deep) or prio < node.prio:
                self._promote(node, prio, deep)
            return
        if self.store.has(oid):
            if deep:
                self._walk_present(oid, prio)
            return
        node = _Node(oid, State.QUEUED, prio, deep, optional=optional or (parent is not None and parent.optional))
        self._nodes[oid] = node
        self._push(prio, oid)
        if parent is not None:
            node.parents.append(parent.oid)
            parent.pending.add(oid)

    def _promote(self, node: _Node, prio: Priority, deep: bool) -> None:
        """Raise ``node`` and its tracked descendants to ``prio`` (and ``deep``): an urgent request
        for something already in the plan overtakes the bulk queued below it."""
        stack = [node]
        seen: set[bytes] = set()
        while stack:
            n = stack.pop()
            if n.oid in seen:
                continue
            seen.add(n.oid)
            if prio < n.prio:
                n.prio = prio
                if n.state is State.QUEUED:
                    self._push(prio, n.oid)
            if deep and not n.deep:
                n.deep = True
                if n.state is not State.QUEUED and n.state is not State.INFLIGHT and not n.followed:
                    # received under a lazy policy: its refs were never walked; walk them now
                    n.followed = True
                    parent = n if n.state is State.HELD else None
                    for ref in n.refs:
                        self._discover(ref, parent, (prio[0], 0, next(self._seq)), True)
            for ref in n.refs:
                child = self._nodes.get(ref)
                if child is not None:
                    stack.append(child)

    def _make_required(self, node: _Node) -> None:
        """An ordinary walk reached an offered id: it and its tracked descendants are wanted for real."""
        stack = [node]
        while stack:
            n = stack.pop()
            if not n.optional:
                continue
            n.optional = False
            stack.extend(c for c in map(self._nodes.get, n.refs) if c is not None)

    def drop_optional(self) -> int:
        """Forget optional wants that are not in flight, ready or being written (no peer supplied them);
        returns how many. The fetcher calls it when a run ends, so an offer of ids nobody has never
        leaves a sync incomplete."""
        drop = [n.oid for n in self._nodes.values()
                if n.optional and n.state in (State.QUEUED, State.HELD)]
        for oid in drop:
            node = self._nodes.pop(oid)
            if node.state is State.HELD:
                self.held_bytes -= len(node.data or b"")
        return len(drop)

    @property
    def optional_objects(self) -> int:
        """Tracked ids wanted only because a peer offered them (O(wants))."""
        return sum(1 for n in self._nodes.values() if n.optional)

    def _walk_present(self, root: bytes, prio: Priority) -> None:
        """Deep walk through objects we have, queueing what is missing below them (no parent links:
        a stored object is never rewritten)."""
        seen = {root}
        stack = [root]
        while stack:
            for ref in self.store.refs_of(stack.pop()):
                if ref in seen:
                    continue
                seen.add(ref)
                if ref in self._nodes or not self.store.has(ref):
                    cls = prio[0] if prio[0] == URGENT else BULK
                    self._discover(ref, None, (cls, 0, next(self._seq)), True)
                else:
                    stack.append(ref)

    @staticmethod
    def _check_id(oid: bytes) -> None:
        if not isinstance(oid, bytes) or len(oid) != 32:
            raise ValueError(f"an object id is 32 bytes, got {oid!r:.80}")

    # ---- fetching ----------------------------------------------------------------------------

    def claim(self, peer: bytes, max_objects: int, max_bytes: int) -> list[bytes]:
        """Take up to ``max_objects`` queued ids (about ``max_bytes``) for ``peer``, best first.

        Ids ``peer`` lacks or sent bad data for are skipped (left queued for others).
        """
        out: list[bytes] = []
        skipped: list[tuple[Priority, bytes]] = []
        budget = 0
        # metadata first (small files' trees and manifests reveal the rest), unless received metadata
        # waiting for its chunks already holds held_max bytes: then chunks, which let it be stored
        order = (URGENT, BULK, METADATA) if self.held_bytes > self.held_max else (URGENT, METADATA, BULK)
        for cls in order:
            heap = self._heaps[cls]
            while heap and len(out) < max_objects and budget < max_bytes:
                prio, oid = heapq.heappop(heap)
                node = self._nodes.get(oid)
                if node is None or node.state is not State.QUEUED or node.prio != prio:
                    continue  # stale heap entry
                if peer in node.excluded:
                    skipped.append((prio, oid))
                    continue
                node.state = State.INFLIGHT
                node.peer = peer
                self._inflight[oid] = None
                out.append(oid)
                budget += node.size if node.size is not None else (GUESS_BULK if prio[0] == BULK else GUESS_META)
        for prio, oid in skipped:
            self._push(prio, oid)
        return out

    def _push(self, prio: Priority, oid: bytes) -> None:
        heapq.heappush(self._heaps[prio[0]], (prio, oid))

    def steal(self, peer: bytes, max_objects: int) -> list[bytes]:
        """Endgame: ids in flight from *other* peers that ``peer`` may fetch too (newest claims first,
        each stolen once). Whichever copy arrives first is kept; the other is ignored. Lets a fast
        peer that runs out of work finish a slow peer's batch instead of waiting for it."""
        out: list[bytes] = []
        for oid in reversed(self._inflight):
            node = self._nodes[oid]
            if node.peer != peer and not node.stolen and peer not in node.excluded:
                node.stolen = True
                out.append(oid)
                if len(out) >= max_objects:
                    break
        return out

    def release(self, oids: Iterable[bytes]) -> None:
        """Put INFLIGHT ids back in the queue (the session dropped before they arrived)."""
        for oid in oids:
            node = self._nodes.get(oid)
            if node is not None and node.state is State.INFLIGHT:
                self._requeue(node)

    def absent(self, oid: bytes, peer: bytes) -> None:
        """``peer`` does not have ``oid``: try others."""
        node = self._nodes.get(oid)
        if node is not None:
            node.excluded.add(peer)
            if node.state is State.INFLIGHT:
                self._requeue(node)

    def _requeue(self, node: _Node) -> None:
        self._inflight.pop(node.oid, None)
        node.state = State.QUEUED
        node.peer = None
        node.stolen = False
        self._push(node.prio, node.oid)

    def set_size(self, oid: bytes, size: int) -> None:
        """Record an id's envelope size (from a peer's ``have`` answer) for progress and batching."""
        node = self._nodes.get(oid)
        if node is not None and node.state in (State.QUEUED, State.INFLIGHT):
            node.size = size

    def unsized(self, limit: int, skip: set[bytes] | frozenset[bytes] = frozenset()) -> list[bytes]:
        """Up to ``limit`` queued or in-flight ids whose size is unknown (to ask a peer ``have``). O(wants)."""
        out = []
        for n in self._nodes.values():
            if n.size is None and n.state in (State.QUEUED, State.INFLIGHT) and n.oid not in skip:
                out.append(n.oid)
                if len(out) >= limit:
                    break
        return out

    def received(self, oid: bytes, data: bytes, header: Header) -> None:
        """Take the envelope of ``oid`` (framing already checked, ``header`` parsed from ``data``).

        Raises WrongObject, changing nothing, if the header names another id
        or references ``oid`` itself. An id not in flight (released, or not
        asked for) is ignored.
        """
        if header.object_id != oid:
            raise WrongObject(f"asked for {oid.hex()}, got an envelope for {header.object_id.hex()}")
        refs = tuple(dict.fromkeys(header.refs))
        if oid in refs:
            raise WrongObject(f"envelope {oid.hex()} references itself")
        node = self._nodes.get(oid)
        if node is None or node.state is not State.INFLIGHT:
            return
        self._inflight.pop(oid, None)
        node.data = data
        node.size = len(data)
        node.refs = refs
        node.state = State.HELD
        self.held_bytes += len(data)
        if self.policy.follows(header.kind, node.deep):
            node.followed = True
            if node.prio[0] == URGENT:
                cls, sub = URGENT, 0
            else:
                cls = self.policy.priority_class(header.kind)
                sub = len(refs) if cls == BULK else 0  # small files' chunks first
            for ref in refs:
                self._discover(ref, node, (cls, sub, next(self._seq)), node.deep)
        if not node.pending:
            self._make_ready(node)

    def _make_ready(self, node: _Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.state is State.HELD:
                self.held_bytes -= len(n.data or b"")
            n.state = State.READY
            n.ticket = next(self._tickets)
            self._ready.append((n.oid, n.ticket))
            self.ready_bytes += len(n.data or b"")
            for p in n.parents:
                pn = self._nodes.get(p)
                if pn is None:
                    continue
                pn.pending.discard(n.oid)
                if not pn.pending and pn.state is State.HELD:
                    stack.append(pn)

    # ---- storing -----------------------------------------------------------------------------

    def take_ready(self, max_bytes: int) -> list[ReadyObject]:
        """READY envelopes, children before parents, about ``max_bytes`` (at least one if any)."""
        out: list[ReadyObject] = []
        total = 0
        while self._ready and (not out or total < max_bytes):
            oid, ticket = self._ready.popleft()
            node = self._nodes.get(oid)
            if node is None or node.state is not State.READY or node.ticket != ticket:
                # stored, reverted, taken, or readied again since: its live entry (if any) is behind
                # its children, this stale one may be ahead of them
                continue
            assert node.data is not None
            node.state = State.WRITING
            self.ready_bytes -= len(node.data)
            out.append(ReadyObject(oid, node.data, node.refs, node.peer))
            total += len(node.data)
        return out

    def retry_write(self, oids: Iterable[bytes]) -> None:
        """The writer did not store these (skipped, or its transaction failed): READY again if still WRITING."""
        for oid in reversed(list(oids)):  # appendleft: keep children before parents
            node = self._nodes.get(oid)
            if node is not None and node.state is State.WRITING:
                node.state = State.READY
                node.ticket = next(self._tickets)
                self._ready.appendleft((oid, node.ticket))
                self.ready_bytes += len(node.data or b"")

    def stored(self, oids: Iterable[bytes]) -> None:
        """The writer stored these (durably or in an open transaction): forget them."""
        for oid in oids:
            if self._nodes.pop(oid, None) is not None:
                self.stored_objects += 1

    def rejected(self, oid: bytes) -> set[bytes]:
        """The store refused ``oid`` (failed verification): queue it again, excluding the peer that
        sent it, and revert its READY/WRITING ancestors to HELD. Returns the reverted ids."""
        node = self._nodes.get(oid)
        if node is None:
            return set()
        if node.peer is not None:
            node.excluded.add(node.peer)
        node.data = None
        node.refs = ()
        node.pending.clear()  # its refs are rediscovered from the next copy's header
        self._requeue(node)
        reverted: set[bytes] = set()
        stack = [node]
        while stack:
            child = stack.pop()
            for p in child.parents:
                pn = self._nodes.get(p)
                if pn is None:
                    continue
                pn.pending.add(child.oid)
                if pn.state is State.READY:
                    self.ready_bytes -= len(pn.data or b"")
                if pn.state in (State.READY, State.WRITING):
                    pn.state = State.HELD
                    self.held_bytes += len(pn.data or b"")
                    reverted.add(pn.oid)
                    stack.append(pn)
        return reverted

    # ---- progress ----------------------------------------------------------------------------

    @property
    def wanted_objects(self) -> int:
        """Ids known to be missing and not yet stored."""
        return len(self._nodes)

    @property
    def wanted_bytes(self) -> int:
        """Known sizes of the ids not yet received (QUEUED or INFLIGHT)."""
        return sum(n.size or 0 for n in self._nodes.values() if n.state in (State.QUEUED, State.INFLIGHT))

    @property
    def queued_estimate(self) -> int:
        """Queued ids, over-counted by stale heap entries (cheap; for splitting work)."""
        return sum(len(h) for h in self._heaps)

    @property
    def inflight(self) -> int:
        """Ids asked of some peer and not yet answered."""
        return len(self._inflight)

    @property
    def done(self) -> bool:
        return not self._nodes

    def counts(self) -> dict[str, int]:
        """Ids per state (for status displays and tests)."""
        out = {s.name.lower(): 0 for s in State}
        for n in self._nodes.values():
            out[n.state.name.lower()] += 1
        return out

    def queued(self) -> list[bytes]:
        return [n.oid for n in self._nodes.values() if n.state is State.QUEUED]

    def fetchable_by(self, peer: bytes) -> bool:
        """Whether some queued id may still be asked of ``peer``."""
        return any(n.state is State.QUEUED and peer not in n.excluded for n in self._nodes.values())

    def stuck(self) -> list[bytes]:
        """HELD ids that can no longer complete: nothing is queued, in flight, ready or being written."""
        states = {n.state for n in self._nodes.values()}
        if states & {State.QUEUED, State.INFLIGHT, State.READY, State.WRITING}:
            return []
        return [n.oid for n in self._nodes.values()]

    def clear_exclusions(self) -> None:
        """Forget which peers lacked what (a new run: peers may have fetched it meanwhile)."""
        for n in self._nodes.values():
            n.excluded.clear()

    def forget(self) -> None:
        """Drop every want (e.g. the roots are no longer wanted). Stored objects stay stored."""
        self._nodes.clear()
        for heap in self._heaps:
            heap.clear()
        self._ready.clear()
        self._inflight.clear()
        self.ready_bytes = 0
        self.held_bytes = 0


__all__ = ["WantPlanner", "ReadyObject", "Presence", "State", "GUESS_BULK"]
