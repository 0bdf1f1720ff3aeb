"""The object store's SQLite index: schema, connection settings, format and key check.

Layout of ``index.sqlite`` (WAL, synchronous=FULL)::

    objects(id, kind, pack, offset, length, digest, added_ns)   where each envelope rests
    packs(pack, size)                                           each pack's committed size
    refs(name, id)                                              local branches (refs.py)
    meta(key, value)                                            format, sealed key check

Invariants
----------
* The index is made under a temporary name and renamed into place, so a crash
  during create leaves no half-made store (only a stale ``.new`` file, which
  the next create removes).
* ``synchronous=FULL``: a commit fsyncs the WAL, so a committed row survives
  power loss. Rows are only ever committed after the pack bytes they point at
  are fsynced (objectstore_writes.py), so a row never names lost bytes.
* ``meta.keycheck`` is a known text sealed under the vault key at create time;
  opening with another key fails with WrongKey before any object is touched.
* ``digest`` is set only for envelopes stored sealed-only (no key to
  authenticate the body): a BLAKE3 digest taken on arrival, checked on read.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import blake3
import sqlite_utils

from pcloud.errors import CorruptObject, NotAVault, StorageFull, VaultExists, WrongKey
from pcloud.store import sealing
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Chunk
from pcloud.store.packs import fsync_dir

FORMAT = 1
INDEX = "index.sqlite"
_KEYCHECK_TEXT = b"pcloud object store key check v1"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def digest(data: bytes) -> bytes:
    """The 16-byte BLAKE3 digest recorded for an envelope stored sealed-only."""
    return blake3.blake3(data).digest(16)


def is_full(exc: BaseException) -> bool:
    """True if ``exc`` means the disk (or quota, or file size limit) is full."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def connect(path: Path) -> sqlite3.Connection:
    """Open an index database with the store's settings (autocommit; explicit BEGIN/COMMIT)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit fsyncs the WAL, so a committed transaction survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    # After a checkpoint, give back WAL space beyond 64 MiB (a big gc can grow it far past that).
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A plain read connection to the index in store directory ``path`` (a sealer thread's own)."""
    return sqlite3.connect(path / INDEX, isolation_level=None, check_same_thread=False, timeout=30)


def _keycheck(keyring: Keyring) -> bytes:
    return sealing.seal(keyring, Chunk(_KEYCHECK_TEXT), epoch=0)[1]


def create_index(p: Path, keyring: Keyring | None) -> sqlite3.Connection:
    """Make the directory ``p`` (with ``packs/``) and a new, empty index in it; returns its connection.

    Raises VaultExists if ``p`` already holds a store, StorageFull if the disk fills.
    """
    if (p / INDEX).exists():
        raise VaultExists(f"{p} already holds an object store")
    p.mkdir(parents=True, exist_ok=True)
    (p / "packs").mkdir(exist_ok=True)
    # Build the index under a temporary name and rename it into place, so a
    # crash during create leaves no half-made store (only a stale .new file).
    tmp = p / (INDEX + ".new")
    for stale in p.glob(INDEX + ".new*"):
        stale.unlink()
    try:
        conn = connect(tmp)
        db = sqlite_utils.Database(conn)
        conn.execute("BEGIN")
        db["objects"].create({"id": bytes, "kind": int, "pack": int, "offset": int, "length": int,
                              "digest": bytes, "added_ns": int}, pk="id")
        db["objects"].create_index(["pack", "offset"])
        db["packs"].create({"pack": int, "size": int}, pk="pack")
        db["refs"].create({"name": str, "id": bytes}, pk="name")
        db["meta"].create({"key": str, "value": bytes}, pk="key")
        meta = [("format", str(FORMAT).encode())]
        if keyring is not None:
            meta.append(("keycheck", _keycheck(keyring)))
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta)
        conn.execute("COMMIT")
        conn.close()  # checkpoints and removes the WAL, so the renamed file is complete
        os.replace(tmp, p / INDEX)
        fsync_dir(p)
        return connect(p / INDEX)
    except (OSError, sqlite3.Error) as exc:
        if is_full(exc):
            raise StorageFull(f"disk full while creating the store in {p}") from exc
        raise


def open_index(p: Path, keyring: Keyring | None) -> sqlite3.Connection:
    """Open the index of the store in ``p``, checking its format and (with a keyring) the key.

    Raises NotAVault if there is no store, WrongKey if ``keyring`` does not open it.
    """
    if not (p / INDEX).is_file() or not (p / "packs").is_dir():
        raise NotAVault(f"{p} holds no pcloud object store (missing {INDEX} or packs/)")
    try:
        conn = connect(p / INDEX)
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise NotAVault(f"{p / INDEX} is not a readable pcloud index: {exc}") from exc
    if rows.get("format") != str(FORMAT).encode():
        conn.close()
        raise NotAVault(f"{p} has unsupported store format {rows.get('format')!r}")
    if keyring is not None and "keycheck" in rows:
        try:
            sealing.open_verified(keyring, bytes(rows["keycheck"]), None)
        except (CorruptObject, WrongKey) as exc:
            conn.close()
            raise WrongKey(f"the vault key does not open the store in {p}: "
                           "this key belongs to another vault (key check failed)") from exc
    return conn
