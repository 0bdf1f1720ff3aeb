"""Document update logs between devices: state-vector exchange, catch-up by seq, live push, compaction.

Every document update is sealed by pcloud and arrives here as opaque bytes
with (doc tag, author device, seq). `DocSync` keeps them in a DocumentLog
(replication.stores) and moves them:

* state vectors (``repl.doc.sv``), between devices holding the vault key:
  when peers meet and the peer's heads show it holds updates we lack, we send
  the sealed state vector of our state of that document; the peer answers
  with the sealed update we lack (one compact Yjs diff, not its whole log)
  and what its state covers. We merge it and store the result as a
  checkpoint covering both sides (the ``DocMerger`` does the opening and
  merging: this layer never sees plaintext). A key-less peer answers
  ``unsupported`` and we fall back to the logs.
* catch-up by seq (``pull``), against any node, the key-less cloud node
  included: compare heads (highest seq per (doc, device)), fetch the peer's
  checkpoints if it compacted past what we hold, then page through
  ``repl.doc.since`` for every log where the peer is ahead. It only compares
  numbers.
* live (``publish`` / ``repl.doc.push``): a new update is sent at once to
  every connected peer; a receiver appends it, tells its subscribers and
  forwards it to its other peers (so the cloud node relays between devices
  that cannot see each other). Duplicates stop the flood: an update already
  in the log is neither announced nor forwarded again. A push that arrives
  before earlier updates of its log (LogGap) triggers a pull from the sender.
* compaction, on devices holding the key: once a document has
  ``compact_after`` entries (or more than one checkpoint), they are merged
  into one checkpoint that replaces them, and it is pushed to peers
  (``repl.doc.cp``) so the cloud node can drop the same entries. A piece that
  does not open (a newer key epoch) stops compaction of that document; its
  log stays whole.

Subscribers are called as ``callback(update, from_peer)`` (``from_peer`` None
for local publishes) in the event loop; they must not block or raise. Checkpoint
subscribers likewise get ``callback(checkpoint, from_peer)``.

Cost note: with ``forward`` on (the default), updates learnt by a pull are
also pushed to the device's other sessions; receivers drop the duplicates
(the log says "already have it"), so a catch-up costs at most one extra
message per update per neighbour. The cloud node wants ``forward``; a device
with many neighbours may turn it off and rely on pulls when peers meet.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from transport.endpoint import Endpoint
from transport.errors import RequestFailed, TransportError
from transport.session import Session

from replication import protocol as p
from replication.errors import CannotMerge, LogConflict, LogGap, ProtocolViolation
from replication.protocol import Checkpoint, DocUpdate
from replication.stores import DocMerger, DocumentLog

log = logging.getLogger("replication.docsync")

Subscriber = Callable[[DocUpdate, "bytes | None"], None]
CheckpointSubscriber = Callable[[Checkpoint, "bytes | None"], None]
MAX_CHECKPOINT_ROUNDS = 16
"""Checkpoints fetched from one peer for one document in one pull (each must add coverage)."""
PULL_ATTEMPTS = 4
PULL_RETRY_S = 1.0
"""Back-off before the second attempt of a failed pull (doubling after)."""
COMPACT_DELAY = 0.05
"""Seconds between the update that crosses ``compact_after`` and the compaction (a burst lands first)."""


@dataclass
class DocStats:
    """What document sync did since start (``pcloud status`` and tests read it)."""

    sv_exchanges: int = 0
    "catch-ups done by state vector (one per document per meeting)"
    sv_fallbacks: int = 0
    "catch-ups that fell back to the logs (key-less peer, a piece that does not open)"
    updates_pulled: int = 0
    "log entries fetched by seq"
    checkpoints_made: int = 0
    checkpoints_stored: int = 0
    "checkpoints received and kept (from pulls and pushes)"
    bytes_received: int = 0
    "sealed document bytes received: updates, checkpoints, state-vector answers"


class DocSync:
    """Moves sealed document updates between this device's log and its peers.

        docs = DocSync(endpoint, SqliteDocumentLog(path), merger=None)   # a DocMerger on key holders
        docs.serve()
        unsubscribe = docs.subscribe(lambda u, peer: app.apply_sealed(u))
        docs.publish(DocUpdate(tag, my_key, seq, sealed))     # local edit -> log + live push
        await docs.pull(session)                                # catch up from a peer
    """

    def __init__(self, endpoint: Endpoint, doclog: DocumentLog, *, merger: DocMerger | None = None,
                 forward: bool = True, page_bytes: int = 1 << 20, compact_after: int = 64) -> None:
        self.endpoint = endpoint
        self.log = doclog
        self.merger = merger
        self.stats = DocStats()
        self._forward = forward
        self._page = page_bytes
        self._compact_after = compact_after
        self._subscribers: list[Subscriber] = []
        self._cp_subscribers: list[CheckpointSubscriber] = []
        self._pulls: dict[bytes, asyncio.Task[int]] = {}
        self._no_sv: set[bytes] = set()        # peers that answered "unsupported" (no key) this session
        self._compact_soon: set[bytes] = set()
        self._merge_failed: dict[bytes, int] = {}   # doc -> entry count when a merge last failed

    def serve(self) -> None:
        """Register the document handlers on the endpoint."""
        self.endpoint.on_request(p.DOC_HEADS, self._on_heads)
        self.endpoint.on_request(p.DOC_SINCE, self._on_since)
        self.endpoint.on_request(p.DOC_SV, self._on_sv)
        self.endpoint.on_request(p.DOC_CHECKPOINT, self._on_checkpoint)
        self.endpoint.on_message(p.DOC_PUSH, self._on_push)
        self.endpoint.on_message(p.DOC_CP_PUSH, self._on_cp_push)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(update, from_peer)`` for each update new to this log; returns an unsubscriber."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def subscribe_checkpoints(self, callback: CheckpointSubscriber) -> Callable[[], None]:
        """Call ``callback(checkpoint, from_peer)`` for each checkpoint stored here; returns an unsubscriber."""
        self._cp_subscribers.append(callback)
        return lambda: self._cp_subscribers.remove(callback)

    def next_seq(self, doc: bytes, device: bytes) -> int:
        """The seq a new update by ``device`` to ``doc`` must carry (pcloud seals it with this)."""
        return max(self.log.heads(doc).get((doc, device), 0), 0) + 1

    def publish(self, update: DocUpdate) -> bool:
        """Append a local update and push it to every connected peer; False if it was already logged.

        Raises LogGap / LogConflict (nothing stored, nothing sent) if ``update.seq`` is wrong, and
        ProtocolViolation if a field is outside the wire limits (tag <= 64 bytes, update <= 4 MiB).
        """
        p.encode_push(update)  # checks sizes before anything is stored
        if not self.log.append(update.doc, update.device, update.seq, update.update):
            return False
        self._announce(update, None)
        return True

    def _announce(self, update: DocUpdate, source: Session | None) -> None:
        for cb in list(self._subscribers):
            cb(update, None if source is None else source.peer_id)
        self._maybe_compact(update.doc)
        if source is not None and not self._forward:
            return
        self._send_all(p.DOC_PUSH, p.encode_push(update), source)

    def _announce_cp(self, cp: Checkpoint, source: Session | None) -> None:
        for cb in list(self._cp_subscribers):
            cb(cp, None if source is None else source.peer_id)
        if self.log.checkpoint_count(cp.doc) > 1:
            self._maybe_compact(cp.doc)
        if source is not None and not self._forward:
            return
        self._send_all(p.DOC_CP_PUSH, p.encode_cp_push(cp), source)

    def _send_all(self, kind: str, body: dict[str, Any], source: Session | None) -> None:
        for session in list(self.endpoint.sessions.values()):
            if session is source or session.state != "up":
                continue
            try:
                session.send(kind, body)
            except TransportError as exc:  # closed between the check and the send: it catches up later
                log.debug("%s to %s skipped: %s", kind, session.peer_id.hex()[:12], exc)

    # ---- compaction (devices holding the key) -----------------------------------------------

    def _maybe_compact(self, doc: bytes) -> None:
        if self.merger is None or doc in self._compact_soon:
            return
        count = self.log.entry_count(doc)
        failed = self._merge_failed.get(doc)
        if failed is not None and count < failed + self._compact_after:
            return  # the last merge failed: try again only once as many entries came in again
        if count < self._compact_after and self.log.checkpoint_count(doc) <= 1:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next update schedules it
        self._compact_soon.add(doc)
        loop.call_later(COMPACT_DELAY, self._compact_later, doc)

    def _compact_later(self, doc: bytes) -> None:
        self._compact_soon.discard(doc)
        self.compact(doc)

    def compact(self, doc: bytes) -> bool:
        """Fold everything held for ``doc`` into one checkpoint and push it to peers; True if one was stored.

        Needs a merger (the key). A piece that does not open leaves the log as it is (logged, False)."""
        if self.merger is None:
            raise CannotMerge("this device holds no key: it cannot merge document updates")
        covers, pieces = self.log.pieces(doc)
        if len(pieces) <= 1 or not covers:
            return False
        try:
            state = self.merger.merge(doc, pieces)
        except CannotMerge as exc:
            self._merge_failed[doc] = self.log.entry_count(doc)
            log.warning("document %s not compacted: %s", doc.hex()[:12], exc)
            return False
        self._merge_failed.pop(doc, None)
        cp = Checkpoint(doc, covers, state)
        if not self.log.add_checkpoint(cp):
            return False
        self.stats.checkpoints_made += 1
        log.debug("document %s: %d pieces folded into a %d-byte checkpoint", doc.hex()[:12], len(pieces), len(state))
        self._announce_cp(cp, None)
        return True

    # ---- handlers ----------------------------------------------------------------------------

    async def _on_push(self, session: Session, body: Any) -> None:
        try:
            update = p.decode_push(body)
        except ProtocolViolation as exc:
            log.warning("bad doc push from %s: %s", session.peer_id.hex()[:12], exc)
            return
        self.stats.bytes_received += len(update.update)
        try:
            new = self.log.append(update.doc, update.device, update.seq, update.update)
        except LogGap:
            self.pull_soon(session, [update.doc])
            return
        except LogConflict as exc:
            log.warning("doc push from %s refused: %s", session.peer_id.hex()[:12], exc)
            return
        if new:
            self._announce(update, session)

    async def _on_cp_push(self, session: Session, body: Any) -> None:
        try:
            cp = p.decode_cp_push(body)
        except ProtocolViolation as exc:
            log.warning("bad checkpoint push from %s: %s", session.peer_id.hex()[:12], exc)
            return
        self.stats.bytes_received += len(cp.data)
        if self.log.add_checkpoint(cp):
            self.stats.checkpoints_stored += 1
            self._announce_cp(cp, session)

    async def _on_heads(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            docs = p.decode_heads_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        heads: dict[tuple[bytes, bytes], int] = {}
        bases: dict[tuple[bytes, bytes], int] = {}
        for d in docs or [None]:
            heads.update(self.log.heads(d))
            bases.update(self.log.bases(d))
        if len(heads) > p.MAX_HEADS:
            raise RequestFailed("too_large", f"{len(heads)} logs; ask per document")
        return p.encode_heads_response(heads, bases)

    async def _on_since(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            doc, device, after, max_bytes = p.decode_since_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        base = self.log.bases(doc).get((doc, device), 0)
        if after < base:
            raise RequestFailed("compacted", f"updates up to {base} are in a checkpoint now; fetch it first")
        rows = self.log.since(doc, device, after, max_bytes)
        more = bool(rows) and bool(self.log.since(doc, device, rows[-1][0], 1))
        return p.encode_since_response(rows, more)

    async def _on_checkpoint(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            doc, covers = p.decode_checkpoint_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        useful = [cp for cp in self.log.checkpoints(doc) if not cp.dominated_by(covers)]
        return p.encode_checkpoint_response(useful[0] if useful else None)

    async def _on_sv(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            doc, sv = p.decode_sv_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        if self.merger is None:
            raise RequestFailed("unsupported", "this device does not exchange state vectors (no key)")
        covers, pieces = self.log.pieces(doc)
        try:
            update = self.merger.missing(doc, pieces, sv)
        except CannotMerge as exc:
            raise RequestFailed("cannot_merge", str(exc)) from None
        return p.encode_sv_response(update, covers)

    # ---- client side -------------------------------------------------------------------------

    def pull_soon(self, session: Session, docs: list[bytes] | None = None) -> asyncio.Task[int]:
        """Start (or join) a pull from ``session``; one pull per peer at a time."""
        task = self._pulls.get(session.peer_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._pull_logged(session, docs))
            self._pulls[session.peer_id] = task
        return task

    async def _pull_logged(self, session: Session, docs: list[bytes] | None) -> int:
        """``pull``, logged, retried with back-off while the session stays up (a request that timed out
        under load must not leave the device behind until the next meeting); a misbehaving peer is not
        retried."""
        for attempt in range(PULL_ATTEMPTS):
            try:
                new = await self.pull(session, docs)
                if new:
                    log.info("documents: %d updates from %s (state vectors so far %d, fallbacks %d)", new,
                             session.peer_id.hex()[:12], self.stats.sv_exchanges, self.stats.sv_fallbacks)
                return new
            except ProtocolViolation as exc:
                log.warning("doc pull from %s stopped: %s", session.peer_id.hex()[:12], exc)
                return 0
            except TransportError as exc:
                if attempt + 1 == PULL_ATTEMPTS or session.state != "up":
                    log.info("doc pull from %s stopped: %s", session.peer_id.hex()[:12], exc)
                    return 0
                log.info("doc pull from %s failed (%s); again in %.0f s", session.peer_id.hex()[:12], exc,
                         PULL_RETRY_S * 2 ** attempt)
                await asyncio.sleep(PULL_RETRY_S * 2 ** attempt)
        return 0

    async def pull(self, session: Session, docs: list[bytes] | None = None) -> int:
        """Catch up with ``session``'s peer on ``docs`` (or all): by state vector when both hold the key,
        else by its checkpoints and logs. Returns how many updates are newly held here. Raises
        TransportError / ProtocolViolation if the peer fails or misbehaves (what arrived stays stored)."""
        heads, bases = p.decode_heads_response(await session.request(p.DOC_HEADS, p.encode_heads_request(docs or [])))
        mine: dict[tuple[bytes, bytes], int] = {}
        for d in docs or [None]:
            mine.update(self.log.heads(d))
        behind = sorted({doc for (doc, dev), head in heads.items() if head > mine.get((doc, dev), 0)})
        new = 0
        for doc in behind:
            if self.merger is not None and session.peer_id not in self._no_sv:
                try:
                    new += await self._sv_catch_up(session, doc)
                    continue
                except RequestFailed as exc:
                    if exc.code == "unsupported":
                        self._no_sv.add(session.peer_id)
                    else:
                        log.info("state vector exchange with %s failed (%s); using its logs",
                                 session.peer_id.hex()[:12], exc)
                except CannotMerge as exc:
                    log.warning("document %s: %s; using logs", doc.hex()[:12], exc)
                self.stats.sv_fallbacks += 1
            new += await self._log_catch_up(session, doc, heads, bases)
        return new

    async def _sv_catch_up(self, session: Session, doc: bytes) -> int:
        assert self.merger is not None
        _, pieces = self.log.pieces(doc)
        sv = self.merger.state_vector(doc, pieces)
        update, theirs = p.decode_sv_response(await session.request(p.DOC_SV, p.encode_sv_request(doc, sv)))
        self.stats.bytes_received += len(update)
        covers, pieces = self.log.pieces(doc)      # again: updates may have landed while we waited
        merged = {dev: max(covers.get(dev, 0), theirs.get(dev, 0)) for dev in covers.keys() | theirs.keys()}
        gained = sum(seq - covers.get(dev, 0) for dev, seq in merged.items())
        if gained:
            cp = Checkpoint(doc, merged, self.merger.merge(doc, pieces + [update]))   # CannotMerge: caller falls back
            if self.log.add_checkpoint(cp):
                self._announce_cp(cp, session)
        self.stats.sv_exchanges += 1      # counted once it succeeded: a failed merge counts as a fallback only
        return gained

    async def _log_catch_up(self, session: Session, doc: bytes, heads: dict[tuple[bytes, bytes], int],
                            bases: dict[tuple[bytes, bytes], int]) -> int:
        new = 0
        mine = self.log.heads(doc)
        if any(base > mine.get(key, 0) for key, base in bases.items() if key[0] == doc):
            new += await self._fetch_checkpoints(session, doc)
            mine = self.log.heads(doc)
        for (d, device), head in heads.items():
            if d != doc:
                continue
            after = mine.get((doc, device), 0)
            while after < head:
                try:
                    body = await session.request(p.DOC_SINCE, p.encode_since_request(doc, device, after, self._page))
                except RequestFailed as exc:
                    if exc.code != "compacted":
                        raise
                    log.info("doc %s: %s compacted its log meanwhile; next pull", doc.hex()[:12],
                             session.peer_id.hex()[:12])
                    break
                entries, more = p.decode_since_response(body, after)
                self.stats.bytes_received += sum(len(data) for _, data in entries)
                if not entries:
                    break  # the peer's log shrank under us (cannot happen with an honest peer): stop
                for seq, data in entries:
                    try:
                        fresh = self.log.append(doc, device, seq, data)
                    except LogConflict as exc:
                        raise ProtocolViolation(f"peer {session.peer_id.hex()[:12]} serves a conflicting update: {exc}") from None
                    except LogGap:
                        # a concurrent pull or push appended meanwhile; resume from our new head
                        fresh = False
                    if fresh:
                        new += 1
                        self.stats.updates_pulled += 1
                        self._announce(DocUpdate(doc, device, seq, data), session)
                after = entries[-1][0]
                if not more:
                    break
        return new

    async def _fetch_checkpoints(self, session: Session, doc: bytes) -> int:
        """Fetch the peer's checkpoints of ``doc`` that cover more than we hold; returns updates gained."""
        gained = 0
        for _ in range(MAX_CHECKPOINT_ROUNDS):
            covers = {dev: seq for (_, dev), seq in self.log.heads(doc).items()}
            body = await session.request(p.DOC_CHECKPOINT, p.encode_checkpoint_request(doc, covers))
            cp = p.decode_checkpoint_response(body, doc)
            if cp is None:
                break
            self.stats.bytes_received += len(cp.data)
            if cp.dominated_by(covers):
                raise ProtocolViolation(f"peer {session.peer_id.hex()[:12]} sent a checkpoint that adds nothing")
            if not self.log.add_checkpoint(cp):
                break
            gained += sum(max(0, seq - covers.get(dev, 0)) for dev, seq in cp.covers.items())
            self.stats.checkpoints_stored += 1
            self._announce_cp(cp, session)
        return gained

    def peer_up(self, session: Session) -> asyncio.Task[int]:
        """Call when a session comes up: catch up on every document from that peer."""
        self._no_sv.discard(session.peer_id)   # it may hold the key by now
        return self.pull_soon(session)


__all__ = ["DocSync", "DocStats", "Subscriber", "CheckpointSubscriber"]
