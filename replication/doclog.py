"""Sealed document update logs in SQLite: one append-only log per (doc tag, device).

Implements replication.stores.DocumentLog. Holds only sealed bytes, so the
key-less cloud node keeps and serves the same logs as every device.

Invariants
----------
* A log is gap-free: seq n is stored only if n == 1 or n - 1 is stored, so
  "everything after seq N of device D" is a complete answer, and the highest
  seq per (doc, device) is all a peer needs to say what it has.
* Immutable: an append of a seq already held succeeds only if the bytes are
  identical (returns False, a duplicate delivered twice); different bytes
  raise LogConflict and the stored update is kept.
* Each append is one SQLite transaction (WAL, synchronous=FULL): once it
  returns, the update survives a crash.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from replication.errors import LogConflict, LogGap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    doc BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (doc, device, seq)
) WITHOUT ROWID;
"""


class SqliteDocumentLog:
    """Document update logs in one SQLite file. ``SqliteDocumentLog(path)``; ``":memory:"`` for tests only."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def head(self, doc: bytes, device: bytes) -> int:
        """Highest seq held for (doc, device); 0 if none."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(seq) FROM updates WHERE doc = ? AND device = ?", (doc, device)).fetchone()
        return row[0] or 0

    def append(self, doc: bytes, device: bytes, seq: int, update: bytes) -> bool:
        if seq < 1:
            raise LogGap(f"seq {seq} is not a log position (they start at 1)", 0)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("SELECT MAX(seq) FROM updates WHERE doc = ? AND device = ?",
                                         (doc, device)).fetchone()
                head = row[0] or 0
                if seq <= head:
                    (old,) = self._conn.execute("SELECT data FROM updates WHERE doc = ? AND device = ? AND seq = ?",
                                                (doc, device, seq)).fetchone()
                    self._conn.execute("ROLLBACK")
                    if bytes(old) != bytes(update):
                        raise LogConflict(f"device {device.hex()[:12]} already has a different update {seq} "
                                          f"for doc {doc.hex()[:12]}")
                    return False
                if seq != head + 1:
                    self._conn.execute("ROLLBACK")
                    raise LogGap(f"update {seq} of device {device.hex()[:12]} for doc {doc.hex()[:12]} "
                                 f"arrived before {head + 1}", head)
                self._conn.execute("INSERT INTO updates(doc, device, seq, data) VALUES (?, ?, ?, ?)",
                                   (doc, device, seq, bytes(update)))
                self._conn.execute("COMMIT")
                return True
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def heads(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        with self._lock:
            if doc is None:
                rows = self._conn.execute("SELECT doc, device, MAX(seq) FROM updates GROUP BY doc, device").fetchall()
            else:
                rows = self._conn.execute("SELECT doc, device, MAX(seq) FROM updates WHERE doc = ? GROUP BY device",
                                          (doc,)).fetchall()
        return {(bytes(d), bytes(dev)): s for d, dev, s in rows}

    def since(self, doc: bytes, device: bytes, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        total = 0
        with self._lock:
            cur = self._conn.execute("SELECT seq, data FROM updates WHERE doc = ? AND device = ? AND seq > ? ORDER BY seq",
                                     (doc, device, after))
            for seq, data in cur:
                if out and total + len(data) > max_bytes:
                    break
                out.append((seq, bytes(data)))
                total += len(data)
        return out


__all__ = ["SqliteDocumentLog"]
