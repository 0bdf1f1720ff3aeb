"""CRDT documents: pycrdt (Yjs) docs under a stable id, stored as `Doc` objects.

A tree entry of kind ``doc`` names a `Doc` object: the document's stable id
plus its full state as one pycrdt update. Editing a document and committing
stores a new `Doc` object with the same ``doc_id``. Two branches that edited
the same document merge as CRDTs (`merge_doc_objects`): both states are
applied to one fresh doc, whose state is the merge. Yjs merging is
commutative, associative and idempotent, and the encoded state of the
result does not depend on the order of application, so two devices merging
the same pair store the *same* object id and their merges converge.

Root types: a Yjs root has no type until someone reads it as one, and an
update does not record it. A document made here therefore records each
root's type (``text``, ``map`` or ``array``) in a reserved root map
``_pcloud_types`` (itself a CRDT, so it merges too); `to_json` uses it to
render the document. Roots of unknown type (docs from other Yjs programs)
are rendered by a documented guess (see `_guess_type`).

Errors: malformed update bytes raise `IntegrityError` (translated from
pycrdt's ValueError) and leave the document unchanged.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

from pycrdt import Array, Doc as YDoc, Map, Text, TransactionEvent

from pcloud.errors import BadArgument, CorruptObject, IntegrityError
from pcloud.store.objects import Doc, ObjectId, ObjectReader, ObjectWriter

TYPES_ROOT = "_pcloud_types"
MAX_DOC_ID_LEN = 128
_TYPES = {"text": Text, "map": Map, "array": Array}

UpdateCallback = Callable[[bytes, bool], None]
"""``callback(update, remote)``: an incremental update; ``remote`` if it came through `Document.apply`."""


def new_doc_id() -> str:
    """A fresh stable document id (random, 32 hex digits)."""
    return uuid.uuid4().hex


def _check_doc_id(doc_id: str) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOC_ID_LEN or not doc_id.isprintable():
        raise BadArgument(f"a document id is 1..{MAX_DOC_ID_LEN} printable characters, got {doc_id!r}")
    return doc_id


def get_doc_object(store: ObjectReader, oid: ObjectId) -> Doc:
    """Load `Doc` object ``oid``; NotFound if absent, CorruptObject if it is another kind."""
    obj = store.get(oid)
    if not isinstance(obj, Doc):
        raise CorruptObject(oid.hex(), f"expected a doc, found a {type(obj).__name__.lower()}")
    return obj


class Document:
    """A live CRDT document with a stable id.

    >>> d = Document()                      # new document, fresh id
    >>> d.text("body").insert(0, "hello")
    >>> d.map("meta")["title"] = "Notes"
    >>> oid = d.save(store)                 # a Doc object for a tree entry
    >>> Document.load(store, oid).to_json()
    {'body': 'hello', 'meta': {'title': 'Notes'}}

    Parameters: ``doc_id`` (default: a fresh one), ``update`` (a full or
    incremental state to start from), ``client_id`` (the Yjs client id;
    random by default, which is what concurrent writers need).
    """

    def __init__(self, doc_id: str | None = None, update: bytes = b"", *, client_id: int | None = None) -> None:
        self.doc_id = _check_doc_id(doc_id) if doc_id is not None else new_doc_id()
        self.ydoc = YDoc(client_id=client_id)
        self._remote = False
        if update:
            self.apply(update)

    @classmethod
    def new(cls, *, client_id: int | None = None) -> "Document":
        """A new, empty document with a fresh stable id."""
        return cls(None, client_id=client_id)

    @classmethod
    def from_object(cls, obj: Doc, *, client_id: int | None = None) -> "Document":
        """The document stored in `Doc` object ``obj`` (IntegrityError if its update is malformed)."""
        return cls(obj.doc_id, obj.update, client_id=client_id)

    @classmethod
    def load(cls, store: ObjectReader, oid: ObjectId, *, client_id: int | None = None) -> "Document":
        """Load the document stored as object ``oid``."""
        return cls.from_object(get_doc_object(store, oid), client_id=client_id)

    # -- root types -------------------------------------------------------------------

    def _root(self, name: str, type_name: str) -> Any:
        if not isinstance(name, str) or not name or name == TYPES_ROOT:
            raise BadArgument(f"invalid document root name {name!r}")
        types = self.ydoc.get(TYPES_ROOT, type=Map)
        known = types.get(name)
        if known is not None and known != type_name:
            raise BadArgument(f"root {name!r} of document {self.doc_id} is a {known}, not a {type_name}")
        if known is None:
            types[name] = type_name
        return self.ydoc.get(name, type=_TYPES[type_name])

    def text(self, name: str) -> Text:
        """The shared text at root ``name`` (created empty if new)."""
        return self._root(name, "text")

    def map(self, name: str) -> Map:
        """The shared map at root ``name`` (created empty if new)."""
        return self._root(name, "map")

    def array(self, name: str) -> Array:
        """The shared array at root ``name`` (created empty if new)."""
        return self._root(name, "array")

    def insert_text(self, name: str, index: int, value: str) -> None:
        """Insert ``value`` at Python character ``index`` of text root ``name``.

        pycrdt 0.14 indexes text by UTF-8 *bytes*, and an insert at an offset
        inside a multi-byte character shows locally but is silently dropped
        when the state is encoded. Use this (or `delete_text`) rather than
        ``text(name).insert`` when the text may hold non-ASCII characters.
        """
        t = self.text(name)
        current = str(t)
        if not 0 <= index <= len(current):
            raise BadArgument(f"index {index} outside text {name!r} of length {len(current)}")
        t.insert(len(current[:index].encode("utf-8")), value)

    def delete_text(self, name: str, index: int, length: int) -> None:
        """Delete ``length`` characters from Python character ``index`` of text root ``name``."""
        t = self.text(name)
        current = str(t)
        if not (0 <= index and 0 <= length and index + length <= len(current)):
            raise BadArgument(f"range {index}+{length} outside text {name!r} of length {len(current)}")
        start = len(current[:index].encode("utf-8"))
        end = start + len(current[index:index + length].encode("utf-8"))
        del t[start:end]

    def transaction(self, origin: Any = None) -> Any:
        """A pycrdt transaction: edits inside it become one update."""
        return self.ydoc.transaction(origin=origin)

    def roots(self) -> dict[str, str]:
        """Root name -> type (``text``/``map``/``array``), guessing for unrecorded roots."""
        types = self.ydoc.get(TYPES_ROOT, type=Map).to_py() or {}
        out: dict[str, str] = {}
        for name in sorted(self.ydoc.keys()):
            if name == TYPES_ROOT:
                continue
            t = types.get(name)
            out[name] = t if t in _TYPES else self._guess_type(name)
        return out

    def _guess_type(self, name: str) -> str:
        # An untyped root reads as any type; a non-empty map view means a map,
        # otherwise text is the common case for foreign docs. Reading through a
        # scratch copy keeps this doc's roots untyped.
        scratch = YDoc()
        scratch.apply_update(self.ydoc.get_update())
        if scratch.get(name, type=Map).to_py():
            return "map"
        scratch = YDoc()
        scratch.apply_update(self.ydoc.get_update())
        if str(scratch.get(name, type=Text)):
            return "text"
        return "array"

    def to_json(self) -> dict[str, Any]:
        """A plain snapshot for display: root name -> str (text), dict (map) or list (array)."""
        out: dict[str, Any] = {}
        for name, type_name in self.roots().items():
            root = self.ydoc.get(name, type=_TYPES[type_name])
            out[name] = str(root) if type_name == "text" else root.to_py()
        return out

    # -- state and updates ------------------------------------------------------------

    def state_update(self) -> bytes:
        """The full state as one update (what a `Doc` object stores)."""
        return self.ydoc.get_update()

    def state_vector(self) -> bytes:
        """The Yjs state vector: what this copy has seen, per client."""
        return self.ydoc.get_state()

    def update_since(self, state_vector: bytes) -> bytes:
        """The update a peer with ``state_vector`` lacks (IntegrityError if the vector is malformed)."""
        try:
            return self.ydoc.get_update(state_vector)
        except ValueError as exc:
            raise IntegrityError(f"malformed state vector for document {self.doc_id}: {exc}") from exc

    def apply(self, update: bytes) -> None:
        """Merge ``update`` (full or incremental, any order, idempotent) into this document.

        Raises IntegrityError if the bytes are not a Yjs update; the
        document is then unchanged.
        """
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise BadArgument("a document update is bytes")
        if not update:
            raise IntegrityError(f"empty update for document {self.doc_id}")
        self._remote = True
        try:
            self.ydoc.apply_update(bytes(update))
        except ValueError as exc:
            raise IntegrityError(f"malformed update for document {self.doc_id}: {exc}") from exc
        finally:
            self._remote = False

    def on_update(self, callback: UpdateCallback) -> Callable[[], None]:
        """Call ``callback(update, remote)`` after every transaction that changed the document.

        ``update`` is the incremental Yjs update of that transaction (what a
        replication log appends); ``remote`` is True for changes that came
        in through `apply` (so a logger can skip re-logging them). Returns a
        function that removes the hook.
        """

        def handler(event: TransactionEvent) -> None:
            if event.update and event.update != b"\x00\x00":
                callback(event.update, self._remote)

        sub = self.ydoc.observe(handler)
        return lambda: self.ydoc.unobserve(sub)

    # -- objects ----------------------------------------------------------------------

    def to_object(self) -> Doc:
        """The `Doc` object holding this document's full state."""
        return Doc(self.doc_id, self.state_update())

    def save(self, store: ObjectWriter) -> ObjectId:
        """Store the full state as a `Doc` object; returns its id (same state, same id)."""
        return store.put(self.to_object())


def merge_doc_objects(store: ObjectWriter, a_id: ObjectId, b_id: ObjectId) -> ObjectId:
    """Merge two states of one document as CRDTs; returns the merged `Doc` object's id.

    Order does not matter: ``merge(a, b) == merge(b, a)``. Raises BadArgument
    if the two objects are different documents (different ``doc_id``), and
    IntegrityError if either update is malformed.
    """
    if a_id == b_id:
        return a_id
    a, b = get_doc_object(store, a_id), get_doc_object(store, b_id)
    if a.doc_id != b.doc_id:
        raise BadArgument(f"cannot merge different documents {a.doc_id!r} and {b.doc_id!r}")
    merged = Document(a.doc_id, a.update)
    merged.apply(b.update)
    return merged.save(store)
