"""Object replication over transport sessions: serve objects to peers, fetch missing ones from them.

`Replicator` is the asyncio glue around `WantPlanner` (what to fetch and when
to store) and `protocol` (how it travels). It owns no policy decision the
planner could make; it moves bytes, verifies, stores, counts.

Theory of operation:
- ``sync(roots)`` adds roots to the one planner of this device and runs the
  fetch until nothing more can be fetched from the peers at hand. Per peer
  (best rank first: lan < direct < relay < cloud by default) it runs
  ``streams_per_peer`` workers; each claims a batch (<= MAX_GET ids, ~8 MiB),
  opens one ``repl.get`` bulk stream for it and reads the records as they
  come (transport backpressure applies), so bulk moves at stream speed and
  not one request per chunk. Faster peers claim more batches (work
  stealing); an id a peer lacks is left for the others.
- A "sizer" asks the best peer ``repl.have`` for the sizes of queued ids, so
  ``progress().wanted_bytes`` is known before the bytes arrive.
- Every record is checked before the planner sees it: exact envelope framing,
  the id in its header equal to the id asked at that position, and, for
  objects with refs (metadata), the ``verify`` callback a key-holding device
  provides. Chunks are verified by the store itself in ``put_sealed``. A peer
  that sends a wrong object is dropped from this run (its other ids go to
  other peers) and nothing it sent wrongly is stored.
- One writer task stores READY envelopes in batches (~16 MiB, one
  ``transaction()`` each) in a worker thread, children before parents; an
  envelope the store rejects is fetched again elsewhere (planner.rejected).
  Workers pause while more than ``max_buffer`` bytes wait for the writer.
- Offers (replication.offer): ``offer(session, ids, tag)`` tells a peer
  about objects just stored here. A full replica takes them as optional
  wants (bulk priority; dropped at the end of a run if nobody supplies them,
  so an offer never makes a sync incomplete) and fetches them at once, in
  the background, through the same path; ``on_offer(peer, ids, tag)`` lets
  the application see the tag first. Any other policy answers "not taken".
  At most ``max_offered`` optional ids are tracked; past it offers are
  refused (the ids come with the commit that names them instead).
- Resume: what is stored is stored (closure invariant, replication.want);
  a dropped session releases its in-flight ids to the queue, and a later
  ``sync`` (or a restarted process walking from the same roots) fetches only
  what is still missing.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from transport.endpoint import Endpoint
from transport.errors import RequestFailed, TransportError
from transport.session import Session, Stream

from replication import envelope as env
from replication import offer as o
from replication import protocol as p
from replication.errors import MalformedEnvelope, ProtocolViolation, TransferFailed, WrongObject
from replication.policy import Mode, Policy
from replication.stores import SealedObjectStore
from replication.want import ReadyObject, WantPlanner

log = logging.getLogger("replication.fetcher")

PATH_RANK = {"lan": 0, "direct": 1, "relay": 2}
SIZER_PERIOD = 0.1
Verify = Callable[[bytes, bytes], None]
"""``verify(oid, envelope)`` raises one of ``invalid_errors`` if the envelope is not oid's (key holders only)."""
OnOffer = Callable[[bytes, list[bytes], bytes], None]
"""``on_offer(peer, ids, tag)``: a peer's offer is about to be fetched (called on the event loop; never raises)."""
MAX_OFFERED = 8192
"""Optional (offered) ids tracked at once: ~2 GiB of average chunks; past it offers are refused."""


def rank_by_path(session: Session) -> int:
    """Default peer preference: LAN, then direct, then relay (lower is better)."""
    return PATH_RANK.get(session.path, len(PATH_RANK))


@dataclass
class PeerCounters:
    """Per-peer transfer counters since the Replicator started."""

    objects: int = 0
    "envelopes received from the peer"
    bytes: int = 0
    "envelope bytes received from the peer"
    absent: int = 0
    "ids the peer did not have"
    rejected: int = 0
    "envelopes from the peer that failed verification"


@dataclass(frozen=True)
class Progress:
    """Sync progress, as ``pcloud status`` shows it."""

    wanted_objects: int
    "objects known to be missing and not yet stored"
    wanted_bytes: int
    "known bytes still to fetch"
    stored_objects: int
    "objects stored by replication since start"
    running: bool
    "a fetch is in progress"
    peers: dict[bytes, PeerCounters] = field(default_factory=dict)
    "per peer key"

    def as_json(self) -> dict[str, Any]:
        return {"wanted_objects": self.wanted_objects, "wanted_bytes": self.wanted_bytes,
                "stored_objects": self.stored_objects, "running": self.running,
                "peers": {k.hex(): vars(c).copy() for k, c in self.peers.items()}}


@dataclass(frozen=True)
class SyncResult:
    """Outcome of one fetch run (expected outcomes are values; a storage failure raises)."""

    complete: bool
    "every wanted object is stored"
    stored: int
    "objects stored during this run"
    missing: int
    "objects still wanted (no connected peer had them, or the peers dropped)"
    reason: str = ""
    "why not complete"


class Replicator:
    """Serves this device's objects and fetches missing ones from peers.

        rep = Replicator(endpoint, store, Policy.full(), verify=check, invalid_errors=(IntegrityError,))
        rep.serve()                               # answer repl.have / repl.get from peers
        result = await rep.sync([main_head])      # fetch what main needs, from the sessions that are up
        await rep.fetch_now([blob_id])            # on-demand: one file's chunks, first in line
        rep.progress().as_json()                  # {"wanted_objects": ..., "wanted_bytes": ..., ...}

    Parameters: ``endpoint`` (serves and supplies sessions), ``store`` (a
    SealedObjectStore), ``policy``, ``verify`` (key holders: checks metadata
    envelopes before they are walked), ``invalid_errors`` (what the store's
    ``put_sealed``/``get_sealed`` and ``verify`` raise for bytes that fail
    verification; pcloud passes its IntegrityError), ``peer_rank``
    (session -> int, lower preferred; e.g. make the cloud node 3),
    ``on_offer`` (see `OnOffer`), ``max_offered`` (see `MAX_OFFERED`).
    """

    def __init__(self, endpoint: Endpoint, store: SealedObjectStore, policy: Policy, *,
                 verify: Verify | None = None, invalid_errors: tuple[type[BaseException], ...] = (),
                 peer_rank: Callable[[Session], int] = rank_by_path, streams_per_peer: int = 2,
                 batch_bytes: int = 8 << 20, write_bytes: int = 16 << 20, max_buffer: int = 64 << 20,
                 on_offer: OnOffer | None = None, max_offered: int = MAX_OFFERED) -> None:
        self.endpoint = endpoint
        self.store = store
        self.policy = policy
        self.plan = WantPlanner(store, policy)
        self._verify = verify
        self._invalid = (MalformedEnvelope, *invalid_errors)
        self._rank = peer_rank
        self._streams_per_peer = streams_per_peer
        self._batch_bytes = batch_bytes
        self._write_bytes = write_bytes
        self._max_buffer = max_buffer
        self._peers: dict[bytes, PeerCounters] = {}
        self._task: asyncio.Task[SyncResult] | None = None
        self._workers = 1
        self._round: dict[asyncio.Task[None], bytes] = {}
        self._dropped: set[bytes] = set()
        self._generation = 0  # bumped by every sync/fetch_now call
        self._checked = 0  # the generation a drive last looked for work at
        self._changed = asyncio.Event()
        self._write_wanted = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._on_offer_cb = on_offer
        self._max_offered = max_offered
        self._prefetch: asyncio.Task[SyncResult] | None = None
        self.served_bytes = 0
        "envelope bytes sent to peers (for tests and benches)"
        self.offers_taken = 0
        "peers' offers this device took (for tests and logs)"

    # ---- serving -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Register the object handlers on the endpoint (every session, both directions)."""
        self.endpoint.on_request(p.HAVE, self._on_have)
        self.endpoint.on_stream(p.GET, self._on_get)
        self.endpoint.on_request(o.OFFER, self._on_offer)

    async def _on_have(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            ids = p.decode_have_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        return p.encode_have_response([self.store.sealed_size(oid) for oid in ids])

    async def _on_offer(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            ids, tag = o.decode_offer(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        # only a device that keeps everything takes unasked-for bulk; the bound keeps a peer that offers
        # more than we fetch from growing the plan without limit
        if self.policy.mode is not Mode.FULL or self.plan.optional_objects + len(ids) > self._max_offered:
            return o.encode_offer_response(False)
        if self._on_offer_cb is not None:
            self._on_offer_cb(session.peer_id, ids, tag)
        self.plan.add_roots(ids, optional=True)
        self.offers_taken += 1
        if self._prefetch is None or self._prefetch.done():
            self._prefetch = asyncio.get_running_loop().create_task(self._run(None))
            self._prefetch.add_done_callback(_log_prefetch)
        else:
            self._notify()  # a run is under way: its workers claim the new ids
        return o.encode_offer_response(True)

    async def offer(self, session: Session, ids: Sequence[bytes], tag: bytes = b"") -> bool:
        """Tell ``session``'s peer that ``ids`` are stored here; True if it will fetch them.

        ``tag`` is handed to the peer's ``on_offer`` (application data, at most
        offer.MAX_OFFER_TAG bytes). Up to MAX_OFFER_IDS ids per call
        (ValueError beyond). A peer that refuses, fails or is gone is not an
        error: False.
        """
        body = o.encode_offer(list(ids), tag)
        try:
            return o.decode_offer_response(await session.request(o.OFFER, body, timeout=10.0))
        except (TransportError, ProtocolViolation) as exc:
            log.info("offer to %s failed: %s", session.peer_id.hex()[:12], exc)
            return False

    async def _on_get(self, session: Session, stream: Stream) -> None:
        try:
            ids = p.decode_get_meta(stream.meta)
        except ProtocolViolation as exc:
            log.warning("bad repl.get from %s: %s", session.peer_id.hex()[:12], exc)
            stream.abort()
            return
        for oid in ids:
            status, data = p.ST_ABSENT, b""
            if self.store.sealed_size(oid) is not None:
                try:
                    data = self.store.get_sealed(oid)
                    status = p.ST_OK
                except self._invalid as exc:
                    log.error("not serving damaged object %s: %s", oid.hex(), exc)
                    status = p.ST_UNAVAILABLE
            await stream.write(struct.pack(">BI", status, len(data)) + data)  # one write: fewer credit waits
            self.served_bytes += len(data)

    # ---- fetching ----------------------------------------------------------------------------

    async def sync(self, roots: Iterable[bytes], *, peers: Sequence[Session] | None = None,
                   deep: bool = False) -> SyncResult:
        """Fetch ``roots`` and everything the policy wants below them; returns when no more can be done.

        ``peers`` defaults to every session up on the endpoint. ``deep`` walks
        through objects already stored (use once after switching a device from
        on-demand to full). Raises what the store raises for local failures
        (e.g. StorageFull); a peer's misbehaviour or a dropped session is not
        an error: the result says what is still missing.
        """
        self.plan.add_roots(roots, deep=deep)
        return await self._run(peers)

    async def fetch_now(self, ids: Iterable[bytes], *, peers: Sequence[Session] | None = None) -> SyncResult:
        """Fetch ``ids`` and everything below them (chunks too, whatever the policy), before other wants."""
        self.plan.add_roots(ids, urgent=True, deep=True)
        return await self._run(peers)

    async def _run(self, peers: Sequence[Session] | None) -> SyncResult:
        self._generation += 1
        mine = self._generation
        while True:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._drive(peers))
            self._notify()
            result = await asyncio.shield(self._task)
            # The run we joined may have made its last "anything left?" check before our roots were
            # added (it was flushing its final writes): then run again for them.
            if result.complete or self._checked >= mine:
                return result

    async def close(self) -> None:
        """Stop a running fetch (objects already stored stay stored; the plan is kept for the next sync)."""
        if self._prefetch is not None and not self._prefetch.done():
            self._prefetch.cancel()
            try:
                await self._prefetch
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for

    def progress(self) -> Progress:
        return Progress(self.plan.wanted_objects, self.plan.wanted_bytes, self.plan.stored_objects,
                        self._task is not None and not self._task.done(),
                        {k: PeerCounters(**vars(c)) for k, c in self._peers.items()})

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _counters(self, peer: bytes) -> PeerCounters:
        return self._peers.setdefault(peer, PeerCounters())

    async def _drive(self, peers: Sequence[Session] | None) -> SyncResult:
        start = self.plan.stored_objects
        self.plan.clear_exclusions()
        self._dropped = set()
        writer = asyncio.get_running_loop().create_task(self._writer())
        try:
            while True:
                self._checked = self._generation
                sessions = [s for s in (peers if peers is not None else list(self.endpoint.sessions.values()))
                            if s.state == "up" and s.peer_id not in self._dropped]
                sessions.sort(key=self._rank)
                usable = [s for s in sessions if self.plan.fetchable_by(s.peer_id)]
                if not usable:
                    break
                sizer = asyncio.get_running_loop().create_task(self._sizer(usable[0]))
                self._workers = 0
                self._round = {}
                for s in usable:
                    self._start_workers(s)
                try:
                    while self._round:
                        done, _ = await asyncio.wait(list(self._round), return_when=asyncio.FIRST_COMPLETED)
                        for t in done:
                            del self._round[t]
                            t.result()  # a local failure (e.g. StorageFull) ends the run
                finally:
                    for t in self._round:
                        t.cancel()
                    self._round = {}
                    sizer.cancel()
                await self._flush_writes()
            await self._flush_writes()
        finally:
            writer.cancel()
            self._round = {}
        self.plan.drop_optional()  # offered ids nobody could supply: not wanted after all
        stored = self.plan.stored_objects - start
        if self.plan.done:
            return SyncResult(True, stored, 0)
        stuck = self.plan.stuck()
        reason = (f"{len(stuck)} objects can never complete (their refs are unavailable or cyclic)" if stuck
                  else f"no connected peer has the remaining {self.plan.wanted_objects} objects")
        return SyncResult(False, stored, self.plan.wanted_objects, reason)

    def _start_workers(self, session: Session) -> None:
        self._workers += self._streams_per_peer
        for _ in range(self._streams_per_peer):
            task = asyncio.get_running_loop().create_task(self._worker(session, self._dropped))
            self._round[task] = session.peer_id

    def add_peer(self, session: Session) -> bool:
        """Let a session that came up during a fetch join it now (the node calls this on PeerUp).

        Returns False when no fetch is running (call ``sync`` instead) or the peer already takes part.
        """
        if self._task is None or self._task.done() or not self._round or session.state != "up":
            return False
        if session.peer_id in self._round.values() or session.peer_id in self._dropped:
            return False
        self._start_workers(session)
        self._notify()
        return True

    async def _worker(self, session: Session, dropped: set[bytes]) -> None:
        peer = session.peer_id
        while peer not in dropped and session.state == "up":
            while self.plan.ready_bytes > self._max_buffer:
                self._write_wanted.set()
                await self._changed.wait()
            # a fair share of the queue per worker, so a second peer is not left idle behind the
            # first one's big batches (the faster peer comes back for more sooner: work stealing)
            share = -(-self.plan.queued_estimate // max(1, self._workers))
            ids = self.plan.claim(peer, max(1, min(p.MAX_GET, share)), self._batch_bytes)
            if not ids and self._workers > self._streams_per_peer:
                ids = self.plan.steal(peer, 32)  # endgame: help finish other peers' batches
            if not ids:
                if self.plan.inflight == 0 and not self.plan.ready_bytes:
                    return  # nothing left for this peer, and nothing in flight that could reveal more
                changed = self._changed
                self._write_wanted.set()
                await changed.wait()
                continue
            try:
                await self._fetch_batch(session, ids)
            except ProtocolViolation as exc:
                log.warning("dropping %s from this sync: %s", peer.hex()[:12], exc)
                dropped.add(peer)
                return
            except TransportError as exc:
                log.info("fetch from %s stopped: %s", peer.hex()[:12], exc)
                if session.state == "up":
                    dropped.add(peer)  # the stream failed on a live session (e.g. it serves no objects)
                return
            finally:
                self._notify()

    async def _fetch_batch(self, session: Session, ids: list[bytes]) -> None:
        peer = session.peer_id
        counters = self._counters(peer)
        delivered: set[bytes] = set()
        stream: Stream | None = None
        try:
            stream = await session.open_stream(p.GET, p.encode_get_meta(ids))
            stream.close()  # the request is all in the metadata
            decoder = p.GetReplyDecoder(ids)
            while not decoder.complete:
                chunk = await stream.read()
                if not chunk:
                    decoder.end()
                for rec in decoder.feed(chunk):
                    delivered.add(rec.oid)
                    if rec.status != p.ST_OK:
                        counters.absent += 1
                        self.plan.absent(rec.oid, peer)
                        self._notify()
                        continue
                    try:
                        self._accept(rec.oid, rec.envelope)
                    except ProtocolViolation:
                        counters.rejected += 1
                        self.plan.absent(rec.oid, peer)
                        raise
                    counters.objects += 1
                    counters.bytes += len(rec.envelope)
                    self._notify()  # per record, not per packet: waiting workers may claim what it revealed
                if self.plan.ready_bytes >= self._write_bytes:
                    self._write_wanted.set()
            if await stream.read():
                raise ProtocolViolation("bytes after the last get record")
        except ProtocolViolation:
            if stream is not None:
                stream.abort()
            raise
        finally:
            self.plan.release(i for i in ids if i not in delivered)

    def _accept(self, oid: bytes, data: bytes) -> None:
        """Check one received envelope and hand it to the planner; WrongObject if it is not oid's."""
        try:
            header = env.decode_header(data)
            if env.envelope_length(header) != len(data):
                raise MalformedEnvelope("record length differs from the envelope's")
        except MalformedEnvelope as exc:
            raise WrongObject(f"object {oid.hex()}: {exc}") from None
        if header.object_id != oid:
            raise WrongObject(f"asked for {oid.hex()}, got {header.object_id.hex()}")
        if header.refs and self._verify is not None:
            try:
                self._verify(oid, data)
            except self._invalid as exc:
                raise WrongObject(f"object {oid.hex()} failed verification: {exc}") from None
        self.plan.received(oid, data, header)

    async def _sizer(self, session: Session) -> None:
        asked: set[bytes] = set()
        while session.state == "up":
            ids = self.plan.unsized(p.MAX_HAVE, asked)
            if not ids:
                await asyncio.sleep(SIZER_PERIOD)  # a scan costs O(wants): not once per record
                continue
            asked.update(ids)
            try:
                body = await session.request(p.HAVE, p.encode_have_request(ids), timeout=30.0)
                sizes = p.decode_have_response(body, len(ids))
            except (TransportError, ProtocolViolation) as exc:
                log.info("size query to %s failed: %s", session.peer_id.hex()[:12], exc)
                return
            for oid, size in zip(ids, sizes):
                if size is not None:
                    self.plan.set_size(oid, size)

    # ---- writing -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            await self._flush_writes(partial=True)

    async def _flush_writes(self, partial: bool = False) -> None:
        async with self._write_lock:
            while True:
                if partial and self.plan.ready_bytes < self._write_bytes // 2 and self.plan.inflight:
                    return  # let a bigger batch gather (one fsync per batch)
                batch = self.plan.take_ready(self._write_bytes)
                if not batch:
                    return
                try:
                    stored, rejected = await asyncio.to_thread(self._write_batch, batch)
                except BaseException:
                    self.plan.retry_write(o.oid for o in batch)
                    raise
                for oid, peer in rejected:
                    if peer is not None:
                        self._counters(peer).rejected += 1
                    self.plan.rejected(oid)
                self.plan.stored(stored)
                done = set(stored) | {oid for oid, _ in rejected}
                self.plan.retry_write(o.oid for o in batch if o.oid not in done)
                self._notify()

    def _write_batch(self, batch: list[ReadyObject]) -> tuple[list[bytes], list[tuple[bytes, bytes | None]]]:
        """Store ``batch`` in order in one transaction (worker thread). Returns (stored, rejected)."""
        stored: list[bytes] = []
        rejected: list[tuple[bytes, bytes | None]] = []
        bad: set[bytes] = set()
        with self.store.transaction():
            for obj in batch:
                if bad and any(r in bad for r in obj.refs):
                    bad.add(obj.oid)  # a ref was refused in this batch: the parent waits for a good copy
                    continue
                try:
                    self.store.put_sealed(obj.data)
                except self._invalid as exc:
                    log.warning("store refused object %s from %s: %s", obj.oid.hex(),
                                (obj.peer or b"").hex()[:12], exc)
                    rejected.append((obj.oid, obj.peer))
                    bad.add(obj.oid)
                    continue
                stored.append(obj.oid)
        return stored, rejected


def _log_prefetch(task: "asyncio.Task[SyncResult]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("fetching offered objects failed: %s", task.exception())


def missing_error(result: SyncResult) -> TransferFailed:
    """The error to raise when a caller needs the sync to have completed."""
    return TransferFailed(f"sync incomplete: {result.missing} objects missing ({result.reason})")


__all__ = ["Replicator", "Progress", "PeerCounters", "SyncResult", "rank_by_path", "missing_error", "Verify",
           "OnOffer", "MAX_OFFERED"]
