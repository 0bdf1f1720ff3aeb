"""The object model: chunk, blob, tree, commit, doc — immutable, content-addressed.

Every object encodes to one canonical byte string (msgpack arrays, no maps,
so there is exactly one encoding), and its id is the vault's keyed hash of
``kind || encoding`` (see `crypto.Keyring.object_id`). ``refs()`` lists the
ids an object points to; they go in the sealed envelope's cleartext header so
key-less nodes can walk and archive whole commit graphs.

* chunk  raw file bytes, bounded size, content-defined boundaries
* blob   a file's manifest: ordered (chunk id, size)
* tree   entries sorted by name: name -> kind (file|dir|doc), id, mode, size, mtime
* commit tree, parents, device, time, message, signature
* doc    a CRDT document's state at commit time: stable doc id + pycrdt update
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterator, Protocol, Union

import msgpack

ObjectId = bytes  # 32 bytes

MAX_NAME_BYTES = 255


class Kind(IntEnum):
    CHUNK = 1
    BLOB = 2
    TREE = 3
    COMMIT = 4
    DOC = 5


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the claimed object kind."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Raw bytes of part of a file."""

    data: bytes
    kind = Kind.CHUNK

    def encode(self) -> bytes:
        return self.data

    def refs(self) -> list[ObjectId]:
        return []


@dataclass(frozen=True, slots=True)
class ChunkRef:
    id: ObjectId
    size: int


@dataclass(frozen=True, slots=True)
class Blob:
    """A file's manifest: the ordered chunks whose concatenation is the file."""

    chunks: tuple[ChunkRef, ...]
    kind = Kind.BLOB

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    def encode(self) -> bytes:
        return msgpack.packb([[c.id, c.size] for c in self.chunks], use_bin_type=True)

    def refs(self) -> list[ObjectId]:
        return [c.id for c in self.chunks]


class EntryKind:
    FILE = "file"
    DIR = "dir"
    DOC = "doc"
    ALL = ("file", "dir", "doc")


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One name in a directory. ``id`` is a blob (file), tree (dir) or doc object (doc)."""

    name: str
    kind: str
    id: ObjectId
    mode: int = 0o644
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Tree:
    """A directory: entries sorted by name, names unique."""

    entries: tuple[TreeEntry, ...] = ()
    kind = Kind.TREE

    def encode(self) -> bytes:
        return msgpack.packb(
            [[e.name, e.kind, e.id, e.mode, e.size, e.mtime_ns] for e in self.entries],
            use_bin_type=True,
        )

    def refs(self) -> list[ObjectId]:
        return [e.id for e in self.entries]

    def get(self, name: str) -> TreeEntry | None:
        for e in self.entries:
            if e.name == name:
                return e
        return None


@dataclass(frozen=True, slots=True)
class Commit:
    """A snapshot of the whole vault tree plus who made it, when and why."""

    tree: ObjectId
    parents: tuple[ObjectId, ...]
    device: bytes  # the author's Ed25519 public key
    time_ns: int
    message: str
    signature: bytes = b""  # Ed25519 over `signed_bytes()`
    kind = Kind.COMMIT

    def signed_bytes(self) -> bytes:
        return msgpack.packb(
            [self.tree, list(self.parents), self.device, self.time_ns, self.message], use_bin_type=True
        )

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.tree, list(self.parents), self.device, self.time_ns, self.message, self.signature],
            use_bin_type=True,
        )

    def refs(self) -> list[ObjectId]:
        return [self.tree, *self.parents]


@dataclass(frozen=True, slots=True)
class Doc:
    """A CRDT document's full state as a pycrdt update, under its stable id."""

    doc_id: str
    update: bytes
    kind = Kind.DOC

    def encode(self) -> bytes:
        return msgpack.packb([self.doc_id, self.update], use_bin_type=True)

    def refs(self) -> list[ObjectId]:
        return []


Object = Union[Chunk, Blob, Tree, Commit, Doc]


def _unpack_list(data: bytes) -> list:
    try:
        value = msgpack.unpackb(data, use_list=True, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not msgpack: {exc}") from None
    if not isinstance(value, list):
        raise DecodeError("expected an array")
    return value


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(what)


def decode(kind: int, data: bytes) -> Object:
    """Parse an object's canonical encoding; raises DecodeError on anything else."""
    if kind == Kind.CHUNK:
        return Chunk(bytes(data))
    items = _unpack_list(data)
    if kind == Kind.BLOB:
        refs = []
        for it in items:
            _need(isinstance(it, list) and len(it) == 2, "blob entry is [id, size]")
            cid, size = it
            _need(isinstance(cid, bytes) and len(cid) == 32, "chunk id is 32 bytes")
            _need(isinstance(size, int) and size >= 0, "chunk size is a non-negative int")
            refs.append(ChunkRef(cid, size))
        return Blob(tuple(refs))
    if kind == Kind.TREE:
        entries = []
        prev = None
        for it in items:
            _need(isinstance(it, list) and len(it) == 6, "tree entry has 6 fields")
            name, ek, eid, mode, size, mtime = it
            _need(isinstance(name, str) and 0 < len(name.encode()) <= MAX_NAME_BYTES, "bad entry name")
            _need(ek in EntryKind.ALL, "bad entry kind")
            _need(isinstance(eid, bytes) and len(eid) == 32, "entry id is 32 bytes")
            _need(all(isinstance(v, int) for v in (mode, size, mtime)), "mode/size/mtime are ints")
            _need(prev is None or name > prev, "tree entries sorted and unique")
            prev = name
            entries.append(TreeEntry(name, ek, eid, mode, size, mtime))
        return Tree(tuple(entries))
    if kind == Kind.COMMIT:
        _need(len(items) == 6, "commit has 6 fields")
        tree, parents, device, time_ns, message, sig = items
        _need(isinstance(tree, bytes) and len(tree) == 32, "commit tree id")
        _need(isinstance(parents, list) and all(isinstance(p, bytes) and len(p) == 32 for p in parents), "parents")
        _need(isinstance(device, bytes) and isinstance(time_ns, int), "device/time")
        _need(isinstance(message, str) and isinstance(sig, bytes), "message/signature")
        return Commit(tree, tuple(parents), device, time_ns, message, sig)
    if kind == Kind.DOC:
        _need(len(items) == 2 and isinstance(items[0], str) and isinstance(items[1], bytes), "doc is [id, update]")
        return Doc(items[0], items[1])
    raise DecodeError(f"unknown object kind {kind}")


class ObjectReader(Protocol):
    """Read side of an object store (what trees, merges and diffs need)."""

    def get(self, oid: ObjectId) -> Object: ...
    def has(self, oid: ObjectId) -> bool: ...


class ObjectWriter(ObjectReader, Protocol):
    """Write side: store an object and return its id (idempotent)."""

    def put(self, obj: Object) -> ObjectId: ...
