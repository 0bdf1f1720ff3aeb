"""Sealed document update logs in SQLite: one log per (doc tag, device), plus checkpoints per doc.

Implements replication.stores.DocumentLog. Holds only sealed bytes, so the
key-less cloud node keeps and serves the same logs as every device.

Invariants
----------
* A log is gap-free above its base: seq n is stored only if n - 1 is stored
  or n - 1 is the base (the highest seq folded into a checkpoint, 0 if none).
  So "everything after seq N of device D" is a complete answer for N >= base,
  and the head (highest seq held, as an entry or inside a checkpoint) is all
  a peer needs to say what it has.
* Immutable entries: an append of a seq already held succeeds only if the
  bytes are identical (returns False, a duplicate delivered twice); different
  bytes raise LogConflict and the stored update is kept. An append at or below
  the base is a duplicate too (a checkpoint already holds it).
* Checkpoints (``Checkpoint``: sealed state + the seqs it covers) form an
  antichain per doc: one is stored only if no stored one covers at least as
  much, and storing it drops the ones it covers and every entry it covers, in
  the same transaction. A device holding the key merges them into one; a
  key-less node may hold a few until a key holder's merged one replaces them.
* Each append or checkpoint is one SQLite transaction (WAL, synchronous=FULL):
  once it returns, it survives a crash.
"""
from __future__ import annotations

import hashlib
import sqlite3
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from replication.errors import LogConflict, LogGap
from replication.protocol import Checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    doc BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (doc, device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    doc BLOB NOT NULL, id BLOB NOT NULL, covers BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (doc, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bases (
    doc BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (doc, device)
) WITHOUT ROWID;
"""
_SEQ = struct.Struct(">Q")


def checkpoint_id(cp: Checkpoint) -> bytes:
    """A short content id of a checkpoint (covers and bytes), to name it and drop duplicates."""
    return hashlib.blake2b(_pack_covers(cp.covers) + cp.data, digest_size=16).digest()


def _pack_covers(covers: dict[bytes, int]) -> bytes:
    return b"".join(bytes([len(dev)]) + dev + _SEQ.pack(seq) for dev, seq in sorted(covers.items()))


def _unpack_covers(raw: bytes) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    i = 0
    while i < len(raw):
        n = raw[i]
        out[raw[i + 1:i + 1 + n]] = _SEQ.unpack_from(raw, i + 1 + n)[0]
        i += 1 + n + _SEQ.size
    return out


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

    def _head_base(self, doc: bytes, device: bytes) -> tuple[int, int]:
        row = self._conn.execute("SELECT MAX(seq) FROM updates WHERE doc = ? AND device = ?", (doc, device)).fetchone()
        b = self._conn.execute("SELECT seq FROM bases WHERE doc = ? AND device = ?", (doc, device)).fetchone()
        base = b[0] if b else 0
        return max(row[0] or 0, base), base

    def head(self, doc: bytes, device: bytes) -> int:
        """Highest seq held for (doc, device), as an entry or in a checkpoint; 0 if none."""
        with self._lock:
            return self._head_base(doc, device)[0]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed if the block returns, rolled back if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def append(self, doc: bytes, device: bytes, seq: int, update: bytes) -> bool:
        if seq < 1:
            raise LogGap(f"seq {seq} is not a log position (they start at 1)", 0)
        with self._write() as conn:
            head, base = self._head_base(doc, device)
            if seq <= head:
                old = None if seq <= base else conn.execute(
                    "SELECT data FROM updates WHERE doc = ? AND device = ? AND seq = ?", (doc, device, seq)).fetchone()
                if old is not None and bytes(old[0]) != bytes(update):
                    raise LogConflict(f"device {device.hex()[:12]} already has a different update {seq} "
                                      f"for doc {doc.hex()[:12]}")
                return False
            if seq != head + 1:
                raise LogGap(f"update {seq} of device {device.hex()[:12]} for doc {doc.hex()[:12]} "
                             f"arrived before {head + 1}", head)
            conn.execute("INSERT INTO updates(doc, device, seq, data) VALUES (?, ?, ?, ?)",
                         (doc, device, seq, bytes(update)))
            return True

    def heads(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        """(doc, device) -> highest seq held (entries and checkpoints), for one doc or all."""
        out = self.bases(doc)
        with self._lock:
            if doc is None:
                rows = self._conn.execute("SELECT doc, device, MAX(seq) FROM updates GROUP BY doc, device").fetchall()
            else:
                rows = self._conn.execute("SELECT doc, device, MAX(seq) FROM updates WHERE doc = ? GROUP BY device",
                                          (doc,)).fetchall()
        for d, dev, s in rows:
            key = (bytes(d), bytes(dev))
            out[key] = max(out.get(key, 0), s)
        return out

    def bases(self, doc: bytes | None = None) -> dict[tuple[bytes, bytes], int]:
        """(doc, device) -> highest seq folded into checkpoints (compacted logs only)."""
        with self._lock:
            if doc is None:
                rows = self._conn.execute("SELECT doc, device, seq FROM bases").fetchall()
            else:
                rows = self._conn.execute("SELECT doc, device, seq FROM bases WHERE doc = ?", (doc,)).fetchall()
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

    # ---- checkpoints -----------------------------------------------------------------------

    def checkpoints(self, doc: bytes) -> list[Checkpoint]:
        """The stored checkpoints of ``doc`` (none until a device holding the key compacted it)."""
        with self._lock:
            rows = self._conn.execute("SELECT covers, data FROM checkpoints WHERE doc = ? ORDER BY id", (doc,)).fetchall()
        return [Checkpoint(doc, _unpack_covers(bytes(c)), bytes(d)) for c, d in rows]

    def checkpoint(self, doc: bytes, cid: bytes) -> Checkpoint | None:
        """The stored checkpoint of ``doc`` named ``cid`` (`checkpoint_id`), None if it is not (or no longer) here."""
        with self._lock:
            row = self._conn.execute("SELECT covers, data FROM checkpoints WHERE doc = ? AND id = ?", (doc, cid)).fetchone()
        return None if row is None else Checkpoint(doc, _unpack_covers(bytes(row[0])), bytes(row[1]))

    def add_checkpoint(self, cp: Checkpoint) -> bool:
        """Store ``cp`` unless a stored checkpoint covers as much; True if stored.

        Storing it drops the checkpoints and the entries it covers, and raises
        the bases to what it covers (one transaction)."""
        with self._write() as conn:
            stored = [(bytes(i), _unpack_covers(bytes(c))) for i, c in conn.execute(
                "SELECT id, covers FROM checkpoints WHERE doc = ?", (cp.doc,))]
            if any(cp.dominated_by(covers) for _, covers in stored):
                return False
            for cid, covers in stored:
                if Checkpoint(cp.doc, covers, b"").dominated_by(cp.covers):
                    conn.execute("DELETE FROM checkpoints WHERE doc = ? AND id = ?", (cp.doc, cid))
            conn.execute("INSERT INTO checkpoints(doc, id, covers, data) VALUES (?, ?, ?, ?)",
                         (cp.doc, checkpoint_id(cp), _pack_covers(cp.covers), cp.data))
            for dev, seq in cp.covers.items():
                conn.execute("INSERT INTO bases(doc, device, seq) VALUES (?, ?, ?) ON CONFLICT(doc, device) "
                             "DO UPDATE SET seq = MAX(seq, excluded.seq)", (cp.doc, dev, seq))
                conn.execute("DELETE FROM updates WHERE doc = ? AND device = ? AND seq <= ?", (cp.doc, dev, seq))
            return True

    def pieces(self, doc: bytes) -> tuple[dict[bytes, int], list[bytes]]:
        """Everything held for ``doc`` in one read: (what it covers, device -> seq; the sealed
        checkpoints then entries). A key holder merges the pieces into the document's state."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                cps = self._conn.execute("SELECT covers, data FROM checkpoints WHERE doc = ? ORDER BY id", (doc,)).fetchall()
                bases = self._conn.execute("SELECT device, seq FROM bases WHERE doc = ?", (doc,)).fetchall()
                rows = self._conn.execute("SELECT device, seq, data FROM updates WHERE doc = ? ORDER BY device, seq",
                                          (doc,)).fetchall()
            finally:
                self._conn.execute("COMMIT")
        covers = {bytes(dev): s for dev, s in bases}
        for dev, seq, _ in rows:
            covers[bytes(dev)] = max(covers.get(bytes(dev), 0), seq)
        return covers, [bytes(d) for _, d in cps] + [bytes(d) for _, _, d in rows]

    def checkpoint_count(self, doc: bytes) -> int:
        """How many checkpoints ``doc`` has (more than one: a key holder should merge them)."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM checkpoints WHERE doc = ?", (doc,)).fetchone()[0]

    def entry_count(self, doc: bytes) -> int:
        """How many entries (not yet in a checkpoint) ``doc`` has: what compaction would fold."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM updates WHERE doc = ?", (doc,)).fetchone()[0]


__all__ = ["SqliteDocumentLog", "checkpoint_id"]
