"""LiveDocument: a CRDT document open for editing through `Vault.doc()`.

Invariants
----------
* ``save()`` commits the document's full state at its path (one commit; a
  no-op when the state is the one last saved).
* With a live link (a node runs: `pcloud.doclive.DocFeed`) every local edit is
  handed to the link as it happens, and remote updates are applied only on the
  thread that uses the document (pycrdt documents belong to one thread): on
  each read or edit through this class, `refresh()`, or `wait_remote()`.
* A live link that breaks never fails an edit; `live` turns False and the next
  `save()` carries the change.
"""
from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING, Any, Callable

from . import errors
from .records import CommitInfo
from .store import paths
from .store.documents import Document
from .store.objects import EntryKind, ObjectId, TreeEntry

if TYPE_CHECKING:
    from .vault import Vault

log = logging.getLogger("pcloud.vault")


class LiveDocument:
    """A CRDT document open for editing; `save()` commits its state at its path.

    With a live link (a node runs; see `Vault.doc`) local edits are published
    as they happen and remote ones are applied on this thread whenever the
    document is read through these methods, or by `refresh()` / `wait_remote()`.
    """

    def __init__(self, vault: Vault, path: str, document: Document, saved_id: ObjectId | None = None) -> None:
        self.vault = vault
        self.path = path
        self.document = document
        self._saved_id = saved_id
        self._feed: Any = None
        self._unhook: Callable[[], None] | None = None

    def _attach(self, feed: Any) -> None:
        self._feed = feed
        self._unhook = self.document.on_update(self._on_local_update)
        self.refresh()

    def _on_local_update(self, update: bytes, remote: bool) -> None:
        if not remote and self._feed is not None:
            self._feed.publish(update)

    @property
    def live(self) -> bool:
        """Whether edits travel live right now (a node runs and the link has not broken)."""
        return self._feed is not None and not self._feed.broken

    def refresh(self) -> int:
        """Apply the remote updates that arrived since the last read; returns how many."""
        feed = self._feed
        if feed is None:
            return 0
        feed.received.clear()
        n = 0
        while True:
            try:
                update = feed.pending.get_nowait()
            except queue.Empty:
                return n
            try:
                self.document.apply(update)
                n += 1
            except errors.IntegrityError as exc:      # sealed by a key holder yet not a Yjs update
                log.warning("%s: skipping a live update that does not apply: %s", self.path, exc)

    def wait_remote(self, timeout: float) -> int:
        """Block until remote updates arrive (or ``timeout`` seconds pass), apply them; returns how many."""
        if self._feed is None:
            raise errors.NodeNotRunning("this document has no live link (no node runs for the vault)")
        if self._feed.pending.empty():
            self._feed.received.wait(timeout)
        return self.refresh()

    @property
    def doc_id(self) -> str:
        return self.document.doc_id

    def text(self, name: str = "text"):
        self.refresh()
        return self.document.text(name)

    def map(self, name: str = "map"):
        self.refresh()
        return self.document.map(name)

    def insert_text(self, index: int, value: str, name: str = "text") -> None:
        """Insert at a character index (safe for non-ASCII text, unlike raw pycrdt offsets)."""
        self.refresh()
        self.document.insert_text(name, index, value)

    def append_text(self, value: str, name: str = "text") -> None:
        self.refresh()
        self.document.insert_text(name, len(str(self.document.text(name))), value)

    def delete_text(self, index: int, length: int, name: str = "text") -> None:
        self.refresh()
        self.document.delete_text(name, index, length)

    def to_json(self) -> dict:
        self.refresh()
        return self.document.to_json()

    def save(self, message: str | None = None) -> CommitInfo | None:
        """Commit the document's current state (a no-op when unchanged)."""
        self.refresh()
        obj = self.document.to_object()
        with self.vault.store.transaction():
            oid = self.vault.store.put(obj)
        if oid == self._saved_id:
            return None
        entry = TreeEntry(paths.basename(self.path), EntryKind.DOC, oid, 0o644, len(obj.update), time.time_ns())
        with self.vault._single(message or f"edit document {self.path}") as tx:
            tx.set_entry(self.path, entry)
        self._saved_id = oid
        return tx.result

    def close(self) -> None:
        """End the live link (the document stays usable, without live updates)."""
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        if self._feed is not None:
            self.refresh()
            self._feed.close()
            self._feed = None
            if self in self.vault._live_docs:
                self.vault._live_docs.remove(self)

    def __enter__(self) -> "LiveDocument":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.save()
        finally:
            self.close()
