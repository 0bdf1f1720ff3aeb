"""Document update logs between devices: catch-up by sequence number, live push, state-vector hook.

Every document update is sealed by pcloud and arrives here as opaque bytes
with (doc tag, author device, seq). `DocSync` keeps them in a DocumentLog
(replication.stores) and moves them:

* catch-up (``pull``): ask a peer for its heads (highest seq per (doc,
  device)), then page through ``repl.doc.since`` for every log where the
  peer is ahead. Works against a key-less node: it only compares numbers.
* live (``publish`` / ``repl.doc.push``): a new update is sent at once to
  every connected peer; a receiver appends it, tells its subscribers and
  forwards it to its other peers (so the cloud node relays between devices
  that cannot see each other). Duplicates stop the flood: an update already
  in the log is neither announced nor forwarded again. A push that arrives
  before earlier updates of its log (LogGap) triggers a pull from the sender.
* state vectors (``exchange_state_vector``): trusted devices may trade Yjs
  state vectors directly; both sides' bytes are opaque here (pcloud seals
  them) and the answering side is the app's ``sv_hook``. Without a hook the
  request fails with ``unsupported``. Logs alone already converge; the hook
  is for compacting catch-up between devices holding the key.

Subscribers are called as ``callback(update, from_peer)`` (``from_peer`` None
for local publishes) in the event loop; they must not block or raise.

Cost note: with ``forward`` on (the default), updates learnt by a pull are
also pushed to the device's other sessions; receivers drop the duplicates
(the log says "already have it"), so a catch-up costs at most one extra
message per update per neighbour. The cloud node wants ``forward``; a device
with many neighbours may turn it off and rely on pulls when peers meet.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from transport.endpoint import Endpoint
from transport.errors import RequestFailed, TransportError
from transport.session import Session

from replication import protocol as p
from replication.errors import LogConflict, LogGap, ProtocolViolation
from replication.protocol import DocUpdate
from replication.stores import DocumentLog

log = logging.getLogger("replication.docsync")

Subscriber = Callable[[DocUpdate, "bytes | None"], None]
SvHook = Callable[[bytes, bytes, bytes], Awaitable[bytes]]
"""``await sv_hook(peer_id, doc, sealed_state_vector) -> sealed update`` the peer lacks."""


class DocSync:
    """Moves sealed document updates between this device's log and its peers.

        docs = DocSync(endpoint, SqliteDocumentLog(path), sv_hook=None)
        docs.serve()
        unsubscribe = docs.subscribe(lambda u, peer: app.apply_sealed(u))
        docs.publish(DocUpdate(tag, my_key, seq, sealed))     # local edit -> log + live push
        await docs.pull(session)                                # catch up from a peer
    """

    def __init__(self, endpoint: Endpoint, doclog: DocumentLog, *, sv_hook: SvHook | None = None,
                 forward: bool = True, page_bytes: int = 1 << 20) -> None:
        self.endpoint = endpoint
        self.log = doclog
        self._sv_hook = sv_hook
        self._forward = forward
        self._page = page_bytes
        self._subscribers: list[Subscriber] = []
        self._pulls: dict[bytes, asyncio.Task[int]] = {}

    def serve(self) -> None:
        """Register the document handlers on the endpoint."""
        self.endpoint.on_request(p.DOC_HEADS, self._on_heads)
        self.endpoint.on_request(p.DOC_SINCE, self._on_since)
        self.endpoint.on_request(p.DOC_SV, self._on_sv)
        self.endpoint.on_message(p.DOC_PUSH, self._on_push)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(update, from_peer)`` for each update new to this log; returns an unsubscriber."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

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
        if source is not None and not self._forward:
            return
        body = p.encode_push(update)
        for session in list(self.endpoint.sessions.values()):
            if session is source or session.state != "up":
                continue
            try:
                session.send(p.DOC_PUSH, body)
            except TransportError as exc:  # closed between the check and the send: it catches up later
                log.debug("push to %s skipped: %s", session.peer_id.hex()[:12], exc)

    # ---- handlers ----------------------------------------------------------------------------

    async def _on_push(self, session: Session, body: Any) -> None:
        try:
            update = p.decode_push(body)
        except ProtocolViolation as exc:
            log.warning("bad doc push from %s: %s", session.peer_id.hex()[:12], exc)
            return
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

    async def _on_heads(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            docs = p.decode_heads_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        heads: dict[tuple[bytes, bytes], int] = {}
        if docs:
            for d in docs:
                heads.update(self.log.heads(d))
        else:
            heads = self.log.heads()
        if len(heads) > p.MAX_HEADS:
            raise RequestFailed("too_large", f"{len(heads)} logs; ask per document")
        return p.encode_heads_response(heads)

    async def _on_since(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            doc, device, after, max_bytes = p.decode_since_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        rows = self.log.since(doc, device, after, max_bytes)
        more = bool(rows) and bool(self.log.since(doc, device, rows[-1][0], 1))
        return p.encode_since_response(rows, more)

    async def _on_sv(self, session: Session, body: Any) -> dict[str, Any]:
        try:
            doc, sv = p.decode_sv_request(body)
        except ProtocolViolation as exc:
            raise RequestFailed("bad_request", str(exc)) from None
        if self._sv_hook is None:
            raise RequestFailed("unsupported", "this device does not exchange state vectors (no key)")
        return {"u": await self._sv_hook(session.peer_id, doc, sv)}

    # ---- client side -------------------------------------------------------------------------

    def pull_soon(self, session: Session, docs: list[bytes] | None = None) -> asyncio.Task[int]:
        """Start (or join) a pull from ``session``; one pull per peer at a time."""
        task = self._pulls.get(session.peer_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._pull_logged(session, docs))
            self._pulls[session.peer_id] = task
        return task

    async def _pull_logged(self, session: Session, docs: list[bytes] | None) -> int:
        try:
            return await self.pull(session, docs)
        except (TransportError, ProtocolViolation) as exc:
            log.info("doc pull from %s stopped: %s", session.peer_id.hex()[:12], exc)
            return 0

    async def pull(self, session: Session, docs: list[bytes] | None = None) -> int:
        """Fetch every update ``session``'s peer holds beyond our logs (for ``docs``, or all); returns
        how many were new. Raises TransportError / ProtocolViolation if the peer fails or misbehaves
        (what arrived before stays stored)."""
        theirs = p.decode_heads_response(await session.request(p.DOC_HEADS, p.encode_heads_request(docs or [])))
        mine = self.log.heads() if not docs else {k: v for d in docs for k, v in self.log.heads(d).items()}
        new = 0
        for (doc, device), head in theirs.items():
            after = mine.get((doc, device), 0)
            while after < head:
                body = await session.request(p.DOC_SINCE, p.encode_since_request(doc, device, after, self._page))
                entries, more = p.decode_since_response(body, after)
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
                        self._announce(DocUpdate(doc, device, seq, data), session)
                after = entries[-1][0]
                if not more:
                    break
        return new

    async def exchange_state_vector(self, session: Session, doc: bytes, sealed_sv: bytes) -> bytes:
        """Send our (sealed) state vector of ``doc``; returns the peer's (sealed) update for it.

        Raises RequestFailed('unsupported') if the peer holds no key / no hook.
        """
        body = await session.request(p.DOC_SV, p.encode_sv_request(doc, sealed_sv))
        return p.decode_sv_response(body)

    def peer_up(self, session: Session) -> asyncio.Task[int]:
        """Call when a session comes up: catch up on every document from that peer."""
        return self.pull_soon(session)


__all__ = ["DocSync", "Subscriber", "SvHook"]
