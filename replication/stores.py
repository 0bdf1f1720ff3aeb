"""What replication needs from the vault, declared here and implemented above (pcloud).

`SealedObjectStore` is satisfied as is by ``pcloud.store.ObjectStore`` (with a
keyring, or sealed-only with ``keyring=None`` on the cloud node).
`DocumentLog` is satisfied by `replication.doclog.SqliteDocumentLog`, which
this layer ships because a log of sealed bytes needs no key. `DocMerger` is
what only a key holder can do with those bytes (``pcloud.doclive.DocMerger``).

Contract the replicator relies on (and documents for implementers):

* ``put_sealed(data)`` checks the framing, and a key-holding store also opens
  and verifies the body, *before* storing; on failure it raises and stores
  nothing. It is idempotent (an id already present is not rewritten).
* ``has(oid)`` is true for objects stored in an open ``transaction()`` too.
* ``transaction()`` makes all puts inside it durable together (or none).
* Closure invariant (maintained by the replicator, and by pcloud's local
  writes, which store chunks before blobs and children before trees): an
  object is stored only after every object it references, except the refs a
  policy declares lazy (blob chunks on an on-demand device). So ``has(x)``
  means x's whole closure is present, and a graph walk may stop there.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from replication.protocol import Checkpoint


class SealedObjectStore(Protocol):
    """Sealed envelopes by id (opaque bodies; the cleartext header gives kind and refs)."""

    def has(self, oid: bytes) -> bool:
        """True if ``oid`` is stored (including puts of an open transaction)."""
        ...

    def sealed_size(self, oid: bytes) -> int | None:
        """Length of ``oid``'s stored envelope, None if absent (cheap: answers a peer's ``have``)."""
        ...

    def get_sealed(self, oid: bytes) -> bytes:
        """The stored envelope of ``oid``; raises if absent or if the stored bytes are damaged."""
        ...

    def put_sealed(self, data: bytes) -> bytes:
        """Verify (as far as the store can) and store one envelope; returns its id."""
        ...

    def refs_of(self, oid: bytes) -> tuple[bytes, ...]:
        """The ids ``oid``'s header references (``oid`` must be stored)."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A block whose puts become durable together."""
        ...


class DocumentLog(Protocol):
    """Append-only logs of sealed document updates, one per (doc tag, device), seqs 1, 2, 3, ...,
    and per doc the checkpoints that replaced their oldest entries (compaction).

    ``doc`` is an opaque tag (pcloud derives it from the document id and the
    vault key, so a key-less node cannot link it to a name); ``device`` is the
    author device's key; ``update`` is sealed bytes this layer never opens.
    """

    def append(self, doc: bytes, device: bytes, seq: int, update: bytes) -> bool:
        """Store update ``seq``; True if new, False if this exact update was already there
        (or a checkpoint covers it).

        Raises LogGap if ``seq`` is beyond head + 1, LogConflict if another
        update holds ``seq``.
        """
        ...

    def heads(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        """(doc, device) -> highest seq held (entries or checkpoints), for one doc or all."""
        ...

    def bases(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        """(doc, device) -> highest seq folded into checkpoints; entries start after it."""
        ...

    def since(self, doc: bytes, device: bytes, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Entries of (doc, device) with seq > ``after``, in order, at least one, about ``max_bytes`` in all."""
        ...

    def checkpoints(self, doc: bytes) -> list[Checkpoint]:
        """The checkpoints stored for ``doc``."""
        ...

    def add_checkpoint(self, cp: Checkpoint) -> bool:
        """Store ``cp`` (dropping what it covers) unless a stored one covers as much; True if stored."""
        ...

    def pieces(self, doc: bytes) -> tuple[dict[bytes, int], list[bytes]]:
        """(what the log covers, device -> seq; every sealed checkpoint and entry of ``doc``), in one read."""
        ...

    def entry_count(self, doc: bytes) -> int:
        """Entries of ``doc`` not folded into a checkpoint."""
        ...

    def checkpoint_count(self, doc: bytes) -> int:
        """Checkpoints stored for ``doc`` (cheap: compaction checks it on every update)."""
        ...


class DocMerger(Protocol):
    """What a device holding the vault key does with a document's sealed pieces (pcloud implements it).

    ``pieces`` are sealed checkpoints and updates of one doc; the result is
    sealed for that doc's tag. Each method raises CannotMerge if a piece does
    not open (a newer key epoch, damage) or the result would be too large, so
    the caller keeps the pieces and falls back to plain logs.
    """

    def state_vector(self, doc: bytes, pieces: list[bytes]) -> bytes:
        """The sealed state vector of the state the pieces make."""
        ...

    def missing(self, doc: bytes, pieces: list[bytes], sealed_sv: bytes) -> bytes:
        """The sealed update that a state with ``sealed_sv`` lacks from the pieces' state."""
        ...

    def merge(self, doc: bytes, pieces: list[bytes]) -> bytes:
        """The sealed full state the pieces make (a checkpoint's data)."""
        ...


__all__ = ["SealedObjectStore", "DocumentLog", "DocMerger"]
