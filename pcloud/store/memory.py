"""An in-memory object store: a dict from keyed object id to canonical bytes.

A real backend (like irmin-mem), not a mock: ids are the vault's keyed hashes
(`Keyring.object_id` over the canonical encoding), and `get` decodes the
stored bytes and re-checks the id, exactly as the on-disk store verifies on
every read. It satisfies `ObjectWriter`; fast unit tests of trees, merges and
documents run against it, and the conformance tests run the same checks
against the SQLite store.

Invariant: ``self._objects[oid] == (kind, data)`` implies
``keyring.object_id(kind, data) == oid`` (checked again on read, so a test
that corrupts the dict sees `CorruptObject`, not wrong data).
"""
from __future__ import annotations

from typing import Iterator

from pcloud.errors import CorruptObject, NotFound
from pcloud.store.crypto import Keyring
from pcloud.store.objects import DecodeError, Object, ObjectId, decode


class MemoryObjectStore:
    """Dict-backed content-addressed store; ``put`` is idempotent.

    >>> from pcloud.store.objects import Tree
    >>> store = MemoryObjectStore(Keyring.generate())
    >>> oid = store.put(Tree(()))
    >>> store.get(oid) == Tree(())
    True
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._objects: dict[ObjectId, tuple[int, bytes]] = {}

    def put(self, obj: Object) -> ObjectId:
        data = obj.encode()
        oid = self.keyring.object_id(obj.kind, data)
        self._objects.setdefault(oid, (int(obj.kind), data))
        return oid

    def get(self, oid: ObjectId) -> Object:
        try:
            kind, data = self._objects[oid]
        except KeyError:
            raise NotFound(f"no object {oid.hex()}") from None
        if self.keyring.object_id(kind, data) != oid:
            raise CorruptObject(oid.hex(), "content does not match its id")
        try:
            return decode(kind, data)
        except DecodeError as exc:
            raise CorruptObject(oid.hex(), str(exc)) from None

    def has(self, oid: ObjectId) -> bool:
        return oid in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def ids(self) -> Iterator[ObjectId]:
        """Every stored id (a snapshot, safe to iterate while putting)."""
        return iter(list(self._objects))
