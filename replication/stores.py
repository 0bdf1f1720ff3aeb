"""What replication needs from the vault, declared here and implemented above (pcloud).

`SealedObjectStore` is satisfied as is by ``pcloud.store.ObjectStore`` (with a
keyring, or sealed-only with ``keyring=None`` on the cloud node).
`DocumentLog` is satisfied by `replication.doclog.SqliteDocumentLog`, which
this layer ships because a log of sealed bytes needs no key.

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
    """Append-only logs of sealed document updates, one per (doc tag, device), seqs 1, 2, 3, ...

    ``doc`` is an opaque tag (pcloud derives it from the document id and the
    vault key, so a key-less node cannot link it to a name); ``device`` is the
    author device's key; ``update`` is sealed bytes this layer never opens.
    """

    def append(self, doc: bytes, device: bytes, seq: int, update: bytes) -> bool:
        """Store update ``seq``; True if new, False if this exact update was already there.

        Raises LogGap if ``seq`` is beyond head + 1, LogConflict if another
        update holds ``seq``.
        """
        ...

    def heads(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        """(doc, device) -> highest seq held, for one doc or all."""
        ...

    def since(self, doc: bytes, device: bytes, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Updates of (doc, device) with seq > ``after``, in order, at least one, about ``max_bytes`` in all."""
        ...


__all__ = ["SealedObjectStore", "DocumentLog"]
