"""Live CRDT document updates: an edit in `Vault.doc()` reaches connected devices' open documents at once.

Path of one edit::

    LiveDocument (API process) --pycrdt update--> seal --control op doc_publish--> node
        node: DocSync.publish (its doclog + push to every connected peer, the cloud node keeps it)
    peer node: DocSync log --control op doc_since (long poll)--> peer's DocFeed thread
        --open--> queue --> LiveDocument applies it on its owner's thread (next read, refresh())

On a node holding the key, `DocMerger` is what replication's DocSync calls to
open, merge and seal: state vectors when two such devices meet, checkpoints
when a log is compacted. A reader behind a compacted log gets the checkpoints
first (``doc_checkpoint``, in pages), then the entries after them.

Invariants
----------
* The node and the cloud node only ever hold sealed updates: the doc tag is a
  keyed hash of the document id (``Keyring.object_id``), so a key-less node
  cannot even tell which document a log belongs to; each update is AES-GCM
  sealed with the current epoch key, the tag and epoch bound as associated
  data (an update moved to another document's log fails to open).
* Updates are CRDT deltas: applying one twice, late, or out of order is
  harmless, so a device re-reading the whole log of a document (its own
  updates included) converges. Commits (``LiveDocument.save``) still carry the
  full state; the log is the fast path, not the record.
* pycrdt documents belong to the thread that made them: the feed thread only
  fetches and decrypts; updates are applied by the document's owner, when it
  reads (`LiveDocument.refresh`, implicit in its accessors) or waits
  (`LiveDocument.wait_remote`).
* State vectors are sealed in their own domain (``SV_KIND``, their own
  associated data): one never opens as an update, nor the reverse.
* A failure of the live path (no node, node stopped, an update larger than a
  control frame) never fails an edit: it is logged and the commit carries the
  change. A sealed update that does not open (wrong key, altered bytes) is
  skipped with a warning and loses nothing else.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import socket
import struct
import threading
from typing import Any

import pycrdt

from replication.doclog import checkpoint_id
from replication.errors import CannotMerge
from replication.protocol import MAX_UPDATE, Checkpoint, DocUpdate

from . import control, errors
from .store.crypto import Keyring, OpenFailed

log = logging.getLogger("pcloud.doclive")

TAG_KIND = 0xD0
"""Domain of doc tags in the keyed id hash (object kinds are 1..5)."""
UPDATE_KIND = 0xD1
"""Domain of update ids (the AEAD nonce source)."""
SV_KIND = 0xD2
"""Domain of sealed state vectors (a state vector never opens as an update, nor the reverse)."""
_VERSION = 1
_HEAD = struct.Struct(">BI32s")        # version, epoch, update id
_AAD = b"pcloud 2026-11 doc update v1"
_AAD_SV = b"pcloud 2026-11 doc state vector v1"
MAX_LIVE_UPDATE = 400_000
"""Largest plaintext update sent live: its hex must fit one control frame (the commit carries bigger ones)."""
PAGE_BYTES = 400_000
"""Sealed bytes per ``doc_since`` answer (hex doubles them; a control frame holds 1 MiB)."""
MAX_WAIT_S = 20.0
MAX_CHECKPOINT_RETRIES = 20
"""Checkpoints a reader may find replaced in a row before it gives up the live link."""


def doc_tag(keyring: Keyring, doc_id: str) -> bytes:
    """The opaque 32-byte log tag of document ``doc_id`` (only key holders can compute or link it)."""
    return keyring.object_id(TAG_KIND, doc_id.encode())


def seal_update(keyring: Keyring, tag: bytes, update: bytes, *, _kind: int = UPDATE_KIND, _aad: bytes = _AAD) -> bytes:
    """``update`` sealed for the log of ``tag``: version, epoch, update id, AES-GCM ciphertext."""
    uid = keyring.object_id(_kind, tag + update)
    epoch = keyring.current
    head = _HEAD.pack(_VERSION, epoch, uid)
    return head + keyring.seal(uid, update, _aad + tag + head)


def open_update(keyring: Keyring, tag: bytes, sealed: bytes, *, _kind: int = UPDATE_KIND, _aad: bytes = _AAD) -> bytes:
    """The plaintext of a sealed update; IntegrityError if it is malformed, altered, or not for ``tag``."""
    if len(sealed) < _HEAD.size + 16:
        raise errors.IntegrityError(f"sealed document update of {len(sealed)} bytes is too short")
    version, epoch, uid = _HEAD.unpack_from(sealed)
    if version != _VERSION:
        raise errors.IntegrityError(f"document update format {version} is not supported")
    try:
        plain = keyring.open(uid, sealed[_HEAD.size:], _aad + tag + sealed[:_HEAD.size], epoch)
    except OpenFailed as exc:
        raise errors.IntegrityError(f"document update does not open: {exc}") from None
    if keyring.object_id(_kind, tag + plain) != uid:
        raise errors.IntegrityError("document update id does not match its content")
    return plain


class DocMerger:
    """`replication.stores.DocMerger` for a node holding the vault key: opens a document's sealed
    checkpoints and updates, merges them in a fresh pycrdt document, seals the answer.

    Runs on the node's event-loop thread; each call builds its own pycrdt
    document and drops it (pycrdt documents belong to the thread that made
    them). Any piece that does not open or apply raises CannotMerge, so
    replication keeps the pieces (a newer key epoch must not be compacted away).
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def _state(self, tag: bytes, pieces: list[bytes]) -> pycrdt.Doc:
        ydoc: pycrdt.Doc = pycrdt.Doc()
        for i, piece in enumerate(pieces):
            try:
                ydoc.apply_update(open_update(self.keyring, tag, piece))
            except errors.IntegrityError as exc:
                raise CannotMerge(f"piece {i} of document {tag.hex()[:12]}: {exc}") from None
            except ValueError as exc:       # opened (a key holder sealed it) yet not a Yjs update
                raise CannotMerge(f"piece {i} of document {tag.hex()[:12]} is not a Yjs update: {exc}") from None
        return ydoc

    def _sealed(self, tag: bytes, update: bytes) -> bytes:
        sealed = seal_update(self.keyring, tag, update)
        if len(sealed) > MAX_UPDATE:
            raise CannotMerge(f"document {tag.hex()[:12]}: a merged update of {len(sealed)} bytes is over the "
                              f"{MAX_UPDATE}-byte message limit")
        return sealed

    def state_vector(self, doc: bytes, pieces: list[bytes]) -> bytes:
        return seal_update(self.keyring, doc, self._state(doc, pieces).get_state(), _kind=SV_KIND, _aad=_AAD_SV)

    def missing(self, doc: bytes, pieces: list[bytes], sealed_sv: bytes) -> bytes:
        try:
            sv = open_update(self.keyring, doc, sealed_sv, _kind=SV_KIND, _aad=_AAD_SV)
        except errors.IntegrityError as exc:
            raise CannotMerge(f"state vector for document {doc.hex()[:12]}: {exc}") from None
        try:
            update = self._state(doc, pieces).get_update(sv)
        except ValueError as exc:
            raise CannotMerge(f"malformed state vector for document {doc.hex()[:12]}: {exc}") from None
        return self._sealed(doc, update)

    def merge(self, doc: bytes, pieces: list[bytes]) -> bytes:
        return self._sealed(doc, self._state(doc, pieces).get_update())


# ---------------------------------------------------------------------- node side


class DocRelay:
    """Control ops ``doc_publish`` and ``doc_since`` on a running node (its ``docs`` is the DocSync)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._waiters: dict[bytes, set[asyncio.Event]] = {}

    def install(self) -> None:
        self.node.docs.subscribe(lambda update, peer: self._wake(update.doc))
        self.node.docs.subscribe_checkpoints(lambda cp, peer: self._wake(cp.doc))
        self.node.add_handler("doc_publish", self._op_publish)
        self.node.add_handler("doc_since", self._op_since)
        self.node.add_handler("doc_checkpoint", self._op_checkpoint)

    def _wake(self, tag: bytes) -> None:
        for ev in self._waiters.pop(tag, ()):
            ev.set()

    async def _op_publish(self, req: dict[str, Any]) -> dict[str, Any]:
        tag, sealed = _tag(req), bytes.fromhex(str(req["update"]))
        if not _HEAD.size + 16 <= len(sealed) <= MAX_LIVE_UPDATE + _HEAD.size + 16:
            raise errors.BadArgument(f"update: a sealed document update of {_HEAD.size + 16}.."
                                     f"{MAX_LIVE_UPDATE + _HEAD.size + 16} bytes, got {len(sealed)}")
        docs = self.node.docs
        seq = docs.next_seq(tag, self.node.key)
        docs.publish(DocUpdate(tag, self.node.key, seq, sealed))     # log + push to every connected peer
        return {"seq": seq}

    async def _op_since(self, req: dict[str, Any]) -> dict[str, Any]:
        tag = _tag(req)
        after_raw = req.get("after") or {}
        if not isinstance(after_raw, dict) or len(after_raw) > 10_000:
            raise errors.BadArgument("after: an object {device hex: seq}")
        after = {bytes.fromhex(k): int(v) for k, v in after_raw.items()}
        wait = min(max(float(req.get("wait", 0)), 0.0), MAX_WAIT_S)
        answer = self._collect(tag, after)
        if not answer["updates"] and not answer["checkpoints"] and wait > 0:
            ev = asyncio.Event()
            self._waiters.setdefault(tag, set()).add(ev)
            try:
                await asyncio.wait_for(ev.wait(), wait)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiters.get(tag, set()).discard(ev)
            answer = self._collect(tag, after)
        return answer

    def _collect(self, tag: bytes, after: dict[bytes, int]) -> dict[str, Any]:
        """What a reader at ``after`` lacks: the checkpoints to fetch first (if the log was compacted
        past ``after``; no entries then, so the reader never skips what only a checkpoint holds), or
        a page of entries."""
        log_ = self.node.docs.log
        bases = {dev: seq for (_, dev), seq in log_.bases(tag).items()}
        if any(after.get(dev, 0) < seq for dev, seq in bases.items()):
            cps = [[checkpoint_id(cp).hex(), {d.hex(): q for d, q in cp.covers.items()}, len(cp.data)]
                   for cp in log_.checkpoints(tag) if not cp.dominated_by(after)]
            return {"updates": [], "checkpoints": cps, "more": True}
        rows: list[list[Any]] = []
        budget = PAGE_BYTES
        for (_, device), head in sorted(log_.heads(tag).items()):
            mine = after.get(device, 0)
            if head <= mine:
                continue
            if budget <= 0:
                return {"updates": rows, "checkpoints": [], "more": True}
            for seq, data in log_.since(tag, device, mine, budget):
                rows.append([device.hex(), seq, data.hex()])
                budget -= len(data)
            if rows and int(rows[-1][1]) < head:
                return {"updates": rows, "checkpoints": [], "more": True}
        return {"updates": rows, "checkpoints": [], "more": False}

    async def _op_checkpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """One page of a checkpoint's sealed bytes: {tag, id, offset} -> {data (hex, null if it is gone), size}."""
        tag, cid, offset = _tag(req), str(req["id"]), int(req.get("offset", 0))
        try:
            cp = self.node.docs.log.checkpoint(tag, bytes.fromhex(cid))   # by its stored id: no re-hashing per page
        except ValueError:
            cp = None                                                      # not an id: no such checkpoint
        if cp is None:
            return {"data": None, "size": 0}     # replaced by a newer checkpoint meanwhile: ask doc_since again
        if not 0 <= offset <= len(cp.data):
            raise errors.BadArgument(f"offset: 0..{len(cp.data)}, got {offset}")
        return {"data": cp.data[offset:offset + PAGE_BYTES].hex(), "size": len(cp.data)}


def _tag(req: dict[str, Any]) -> bytes:
    tag = bytes.fromhex(str(req["tag"]))
    if len(tag) != 32:
        raise errors.BadArgument("tag: a 32-byte document tag in hex")
    return tag


def attach(node: Any) -> DocRelay | None:
    """Install the live document ops on a started node (every node: the ops only move sealed bytes)."""
    if node.docs is None:
        return None
    relay = DocRelay(node)
    relay.install()
    return relay


# ---------------------------------------------------------------------- API side


class DocFeed:
    """One open document's live link to the node: publishes local updates, receives the others'.

    ``DocFeed(vault_dir, keyring, doc_id)``; ``publish(update)`` from the
    document's thread queues it for a sender thread (sealing and the control
    call happen there, in edit order); ``pending`` is a queue of plaintext
    updates filled by a receiver thread (a long poll on ``doc_since``);
    ``close()`` delivers what is queued, then stops both.
    """

    def __init__(self, vault_dir: Any, keyring: Keyring, doc_id: str, *, timeout: float = 30.0) -> None:
        self.keyring = keyring
        self.tag = doc_tag(keyring, doc_id)
        self.pending: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.received = threading.Event()
        "set whenever updates were queued (cleared by the document when it applies them)"
        self._path = control.socket_path(vault_dir)
        self._pub = control.ControlClient(self._path, timeout)
        self._poll = control.ControlClient(self._path, MAX_WAIT_S + timeout)
        self._after: dict[str, int] = {}
        self._gone = 0                   # checkpoints found replaced in a row (see _fetch)
        self._stop = threading.Event()
        self.broken: str | None = None
        "why the live link stopped, if it did (edits still reach others through commits)"
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._catch_up()
        self._thread = threading.Thread(target=self._run, name="pcloud-docfeed", daemon=True)
        self._thread.start()
        self._sender = threading.Thread(target=self._send, name="pcloud-docfeed-send", daemon=True)
        self._sender.start()

    def publish(self, update: bytes) -> None:
        """Queue a local update for the node (never blocks the editing thread on the node)."""
        if self.broken or self._stop.is_set():
            return
        if len(update) > MAX_LIVE_UPDATE:
            log.info("document update of %d bytes goes by commit only (live limit %d)", len(update), MAX_LIVE_UPDATE)
            return
        self._outbox.put(update)

    def _send(self) -> None:
        """Sender thread: seal and publish queued updates in edit order (the node numbers them as they come)."""
        while True:
            update = self._outbox.get()
            if update is None:
                return
            if self.broken:
                continue
            try:
                self._pub.call("doc_publish", tag=self.tag.hex(),
                               update=seal_update(self.keyring, self.tag, update).hex())
            except control.ControlError as exc:
                self.broken = str(exc)
                log.warning("live document updates stopped (the commit still carries edits): %s", exc)

    def _catch_up(self) -> None:
        """Everything the node's log holds for this document, before the first read."""
        try:
            while self._fetch(0.0):
                pass
        except control.ControlError as exc:
            self.broken = str(exc)
            log.warning("no live document updates: %s", exc)

    def _fetch(self, wait: float) -> bool:
        """One ``doc_since`` call; queue what opens; returns whether the node has more right away."""
        answer = self._poll.call("doc_since", tag=self.tag.hex(), after=self._after, wait=wait)
        queued = False
        for cid, covers, size in answer.get("checkpoints") or []:
            data = self._read_checkpoint(str(cid), int(size))
            if data is None:             # replaced meanwhile: the next doc_since lists its successor
                self._gone += 1
                if self._gone > MAX_CHECKPOINT_RETRIES:
                    raise control.ControlError(f"document checkpoints keep changing under the reader "
                                               f"({self._gone} in a row); live updates stop, commits carry edits")
                return True
            self._gone = 0
            try:
                self.pending.put(open_update(self.keyring, self.tag, data))
                queued = True
            except errors.IntegrityError as exc:
                log.warning("skipping document checkpoint %s: %s", str(cid)[:12], exc)
            for device, seq in covers.items():
                self._after[device] = max(self._after.get(device, 0), int(seq))
        for device, seq, data in answer["updates"]:
            self._after[device] = max(self._after.get(device, 0), int(seq))
            try:
                self.pending.put(open_update(self.keyring, self.tag, bytes.fromhex(data)))
                queued = True
            except errors.IntegrityError as exc:
                log.warning("skipping document update %s#%s: %s", device[:12], seq, exc)
        if queued:
            self.received.set()
        return bool(answer.get("more"))

    def _read_checkpoint(self, cid: str, size: int) -> bytes | None:
        """A checkpoint's sealed bytes, page by page (a control frame holds ~1 MiB); None if it is gone."""
        buf = bytearray()
        while len(buf) < size:
            page = self._poll.call("doc_checkpoint", tag=self.tag.hex(), id=cid, offset=len(buf))
            if page["data"] is None or int(page["size"]) != size or not page["data"]:
                return None
            buf += bytes.fromhex(page["data"])
        return bytes(buf)

    def _run(self) -> None:
        while not self._stop.is_set() and not self.broken:
            try:
                self._fetch(MAX_WAIT_S / 2)
            except control.ControlError as exc:
                if not self._stop.is_set():
                    self.broken = str(exc)
                    log.warning("live document updates stopped: %s", exc)
                return

    def close(self) -> None:
        """Deliver the queued local updates (up to the client timeout), then end both threads."""
        self._outbox.put(None)
        self._sender.join(self._pub.timeout)
        self._stop.set()
        sock = self._poll._sock          # wake the long poll now rather than at its timeout
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._poll.close()
        self._pub.close()


__all__ = ["DocFeed", "DocMerger", "DocRelay", "attach", "doc_tag", "seal_update", "open_update", "MAX_LIVE_UPDATE"]
