"""Branch heads: names -> commit ids, moved only by compare-and-swap.

``Refs`` is the one small interface every branch table implements. The local
one (`RefStore`) lives in the object store's SQLite index; the Raft-backed one
for ``main`` (consensus issue) implements the same Protocol, so callers never
care which they hold.

Invariants of RefStore:
* ``cas`` is atomic (one SQLite write transaction, BEGIN IMMEDIATE) and
  durable when it returns True (WAL, synchronous=FULL).
* Before a ref moves, the object store's pending transaction is made durable
  (``flush``), so a ref never points at objects a crash could lose.
* A lost race is a value (False), not an exception.
"""
from __future__ import annotations

import sqlite3
import threading
from typing import Callable, Protocol

from pcloud.errors import BadArgument
from pcloud.store.objects import ObjectId

MAX_REF_NAME = 255


class Refs(Protocol):
    """A branch table: read heads, move them by compare-and-swap."""

    def get(self, name: str) -> ObjectId | None:
        """The id ``name`` points to, or None if there is no such ref."""
        ...

    def list(self) -> dict[str, ObjectId]:
        """Every ref and where it points."""
        ...

    def cas(self, name: str, expected: ObjectId | None, new: ObjectId | None) -> bool:
        """Set ``name`` to ``new`` iff it currently is ``expected`` (None = absent / delete)."""
        ...


def check_ref_name(name: str) -> None:
    """Refuse names that cannot be a branch: empty, too long, control chars, '..' parts."""
    if not isinstance(name, str) or not name:
        raise BadArgument("a ref name is a non-empty string")
    if len(name.encode()) > MAX_REF_NAME:
        raise BadArgument(f"ref name longer than {MAX_REF_NAME} bytes")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise BadArgument(f"ref name {name!r} contains control characters")
    if name.startswith("/") or name.endswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise BadArgument(f"ref name {name!r} has empty, '.' or '..' parts")


def _check_id(oid: ObjectId | None) -> None:
    if oid is not None and (not isinstance(oid, bytes) or len(oid) != 32):
        raise BadArgument("a ref target is a 32-byte object id or None")


class RefStore:
    """The local branch table in the store's SQLite index (table ``refs``).

    Obtain it from ``ObjectStore.refs``; it shares the store's connection and lock.

        >>> store.refs.cas("main", None, commit_id)
        True
        >>> store.refs.get("main") == commit_id
        True
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, flush: Callable[[], None],
                 guard: Callable[[], object]) -> None:
        self._conn = conn
        self._lock = lock
        self._flush = flush
        self._guard = guard  # a context manager translating sqlite errors (disk full, closed)

    def get(self, name: str) -> ObjectId | None:
        check_ref_name(name)
        with self._lock, self._guard():
            row = self._conn.execute("SELECT id FROM refs WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def list(self) -> dict[str, ObjectId]:
        with self._lock, self._guard():
            rows = self._conn.execute("SELECT name, id FROM refs ORDER BY name").fetchall()
        return {name: bytes(oid) for name, oid in rows}

    def cas(self, name: str, expected: ObjectId | None, new: ObjectId | None) -> bool:
        check_ref_name(name)
        _check_id(expected)
        _check_id(new)
        with self._lock:
            self._flush()
            with self._guard():
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    row = self._conn.execute("SELECT id FROM refs WHERE name = ?", (name,)).fetchone()
                    current = None if row is None else bytes(row[0])
                    if current != expected:
                        self._conn.execute("ROLLBACK")
                        return False
                    if new is None:
                        self._conn.execute("DELETE FROM refs WHERE name = ?", (name,))
                    else:
                        self._conn.execute(
                            "INSERT INTO refs(name, id) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET id = excluded.id", (name, new))
                    self._conn.execute("COMMIT")
                    return True
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise


__all__ = ["Refs", "RefStore", "check_ref_name", "MAX_REF_NAME"]
