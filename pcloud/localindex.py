"""This device's private, never-replicated index: vault settings and the stat cache.

The stat cache maps a local file (absolute path) to the (size, mtime_ns,
inode) it had when it was last stored and the blob id it became. A folder
put then re-reads only files whose stat changed, which is what makes
re-putting an unchanged 10,000-file folder take well under a second (git's
index plays the same part).

Watched folders (pcloud.folders) keep their sync state here too, so a
restarted syncer resumes where it stopped: per folder the vault tree it last
synced (``folder_sync``), per file the stat and content it had when last
synced (``folder_files``), and paths whose remote change is not on disk yet
(``folder_pending``). `save_folder` writes all three in one transaction, so a
crash leaves the previous consistent state, never half of a new one.
"""
from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils


@dataclass(frozen=True, slots=True)
class StatKey:
    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "StatKey":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class FolderFile(NamedTuple):
    """A watched-folder file as last synced: its local stat and the content (blob id, mode) it had.

    A NamedTuple, not a dataclass: a folder holds one per file (100,000 and more), and tuples
    are built faster and are smaller.
    """

    size: int
    mtime_ns: int
    ino: int
    mode: int
    blob: bytes

    def same_stat(self, st: os.stat_result) -> bool:
        """True if ``st`` still looks like the synced file (size, mtime, inode and exec bit unchanged)."""
        return (st.st_size == self.size and st.st_mtime_ns == self.mtime_ns and st.st_ino == self.ino
                and (0o755 if st.st_mode & 0o111 else 0o644) == self.mode)


_PACK = struct.Struct("<qqQH")  # size, mtime_ns, inode, mode; the 32-byte blob id follows
_STAT_KEY = 24  # the size, mtime_ns and inode part of a packed record


class FolderRecords(MutableMapping[str, FolderFile]):
    """A folder's records by path, each kept packed in one bytes object (100,000 files: 20 MiB, not 35).

    Reads build the `FolderFile` on the fly; `same_stat` compares packed bytes
    without building one (the hot check of a rescan).
    """

    __slots__ = ("_d",)

    def __init__(self, packed: dict[str, bytes] | None = None) -> None:
        self._d: dict[str, bytes] = packed if packed is not None else {}

    @staticmethod
    def pack(rec: FolderFile) -> bytes:
        return _PACK.pack(rec.size, rec.mtime_ns, rec.ino, rec.mode) + rec.blob

    @staticmethod
    def unpack(b: bytes) -> FolderFile:
        size, mtime_ns, ino, mode = _PACK.unpack_from(b)
        return FolderFile(size, mtime_ns, ino, mode, b[_PACK.size:])

    def __getitem__(self, path: str) -> FolderFile:
        return self.unpack(self._d[path])

    def get(self, path: str, default: FolderFile | None = None) -> FolderFile | None:  # type: ignore[override]
        b = self._d.get(path)
        return default if b is None else self.unpack(b)

    def __setitem__(self, path: str, rec: FolderFile) -> None:
        self._d[path] = self.pack(rec)

    def __delitem__(self, path: str) -> None:
        del self._d[path]

    def pop(self, path: str, *default: object) -> object:  # type: ignore[override]
        b = self._d.pop(path, *default)
        return self.unpack(b) if isinstance(b, bytes) else b

    def __contains__(self, path: object) -> bool:
        return path in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def any_with_stat(self, st: os.stat_result | Any) -> bool:
        """True if some record has ``st``'s size, mtime and inode: the file is a synced one renamed, not new content.

        A scan of every record (~10 ms per 100,000): for the rare big file only.
        """
        key = _PACK.pack(st.st_size, st.st_mtime_ns, st.st_ino, 0)[:_STAT_KEY]
        return any(b[:_STAT_KEY] == key for b in self._d.values())

    def same_stat(self, path: str, st: os.stat_result | Any) -> bool:
        """``self[path].same_stat(st)`` without unpacking; False if there is no record."""
        b = self._d.get(path)
        return b is not None and b[:_PACK.size] == _PACK.pack(
            st.st_size, st.st_mtime_ns, st.st_ino, 0o755 if st.st_mode & 0o111 else 0o644)


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

        if "folder_sync" not in self.db.table_names():
            self.db["folder_sync"].create({"folder": str, "tree": bytes, "commit_id": bytes}, pk="folder")
        if "folder_files" not in self.db.table_names():
            self.db["folder_files"].create(
                {"folder": str, "path": str, "size": int, "mtime_ns": int, "ino": int, "mode": int, "blob": bytes},
                pk=("folder", "path"))
        if "folder_pending" not in self.db.table_names():
            self.db["folder_pending"].create({"folder": str, "path": str}, pk=("folder", "path"))

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

    # -- watched folders -------------------------------------------------------------

    def load_folder(self, folder: str) -> tuple[bytes | None, FolderRecords, set[str]]:
        """A folder's (synced tree id or None, file records by folder-relative path, pending paths)."""
        conn = self.db.conn
        row = conn.execute("SELECT tree FROM folder_sync WHERE folder = ?", [folder]).fetchone()
        tree = bytes(row[0]) if row and row[0] is not None else None
        rows = conn.execute("SELECT path, size, mtime_ns, ino, mode, blob FROM folder_files WHERE folder = ?", [folder])
        pack = _PACK.pack
        files = FolderRecords({path: pack(size, mtime_ns, ino, mode) + blob
                               for path, size, mtime_ns, ino, mode, blob in rows})
        pending = {p for (p,) in conn.execute("SELECT path FROM folder_pending WHERE folder = ?", [folder])}
        return tree, files, pending

    def save_folder(self, folder: str, tree: bytes | None, commit_id: bytes | None,
                    upserts: dict[str, "FolderFile"], deletes: set[str], pending: set[str]) -> None:
        """Record a finished sync cycle in one transaction: the synced tree, changed/removed file records, pending paths."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO folder_sync(folder, tree, commit_id) VALUES (?, ?, ?)",
                         [folder, tree, commit_id])
            conn.executemany("DELETE FROM folder_files WHERE folder = ? AND path = ?", [(folder, p) for p in deletes])
            conn.executemany(
                "INSERT OR REPLACE INTO folder_files(folder, path, size, mtime_ns, ino, mode, blob) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(folder, p, f.size, f.mtime_ns, f.ino, f.mode, f.blob) for p, f in upserts.items()])
            conn.execute("DELETE FROM folder_pending WHERE folder = ?", [folder])
            conn.executemany("INSERT INTO folder_pending(folder, path) VALUES (?, ?)", [(folder, p) for p in pending])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.db.conn.close()
