"""This device's private, never-replicated index: vault settings and the stat cache.

The stat cache maps a local file (absolute path) to the (size, mtime_ns,
inode) it had when it was last stored and the blob id it became. A folder
put then re-reads only files whose stat changed, which is what makes
re-putting an unchanged 10,000-file folder take well under a second (git's
index plays the same part).
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils


@dataclass(frozen=True, slots=True)
class StatKey:
    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "StatKey":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class LocalIndex:
    """SQLite file `index.db` in the vault directory."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(conn)
        if "config" not in self.db.table_names():
            self.db["config"].create({"key": str, "value": str}, pk="key")
        if "stat_cache" not in self.db.table_names():
            self.db["stat_cache"].create(
                {"local_path": str, "size": int, "mtime_ns": int, "ino": int, "blob": bytes}, pk="local_path"
            )

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM config WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        self.db["config"].upsert({"key": key, "value": value}, pk="key")

    def cached_blobs(self, prefix: str) -> dict[str, tuple[StatKey, bytes]]:
        """Every cached file under the local directory `prefix` (one query, not one per file)."""
        like = prefix.rstrip(os.sep) + os.sep + "%"
        rows = self.db.execute(
            "SELECT local_path, size, mtime_ns, ino, blob FROM stat_cache WHERE local_path LIKE ? OR local_path = ?",
            [like, prefix],
        )
        return {p: (StatKey(s, m, i), b) for p, s, m, i, b in rows}

    def remember(self, rows: list[tuple[str, StatKey, bytes]]) -> None:
        if not rows:
            return
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO stat_cache(local_path, size, mtime_ns, ino, blob) VALUES (?, ?, ?, ?, ?)",
                [(p, k.size, k.mtime_ns, k.ino, b) for p, k, b in rows],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.db.conn.close()
