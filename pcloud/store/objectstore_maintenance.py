"""Checking and collecting an object store: fsck and gc (mark, sweep, compact packs).

Both run through ``ObjectStore.fsck`` / ``ObjectStore.gc``; the functions here
take the store (for verified reads) and its ``Writes`` (index connection,
lock, writer).

Invariants
----------
* fsck reads every object the way a normal read does (fully verified with a
  key; framing, id and recorded digest sealed-only) and never changes anything.
* gc marks under the writer lock, with every local ref added to the roots, so
  objects another process commits meanwhile wait for the sweep instead of
  being swept; objects younger than ``grace_s`` are kept (git's prune expiry).
* Crash-safe compaction, in durability order: live envelopes of a mostly-dead
  pack are copied into a new pack, which is fsynced; *then* the index is
  switched in one transaction; *then* the old file is unlinked. A crash
  leaves either the old rows (and an orphan new pack, removed by the next
  writer) or the new rows (and an orphan old pack, likewise).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from replication import envelope as env
from pcloud.errors import CorruptObject, UsageError, WrongKey
from pcloud.store import sealing
from pcloud.store.objects import ObjectId
from pcloud.store.packs import PackWriter, fsync_dir, pack_name

if TYPE_CHECKING:
    from pcloud.store.objectstore import ObjectStore
    from pcloud.store.objectstore_writes import Writes


@dataclass(frozen=True)
class FsckReport:
    """Result of ``ObjectStore.fsck``."""

    ok: bool
    """True when no object or pack failed a check."""
    objects: int
    """Objects examined."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(object id hex or "pack N", reason) for each failure."""


@dataclass(frozen=True)
class GcReport:
    """Result of ``ObjectStore.gc``."""

    kept: int
    """Objects reachable from the roots."""
    removed: int
    """Unreachable objects deleted from the index."""
    bytes_reclaimed: int
    """Pack bytes returned to the filesystem by rewriting packs."""


def fsck(store: ObjectStore, ws: Writes, check_refs: bool = True) -> FsckReport:
    """Verify every object of ``store``; see ``ObjectStore.fsck``."""
    store.flush()
    errors: list[tuple[str, str]] = []
    with ws.lock, ws.guard():
        packs = dict(ws.conn.execute("SELECT pack, size FROM packs").fetchall())
    for pack, size in packs.items():
        f = ws.packs_dir / pack_name(pack)
        actual = f.stat().st_size if f.exists() else -1
        if actual < size:
            errors.append((f"pack {pack}", f"pack file is {max(actual, 0)} bytes, index says {size}"))
    count = 0
    last = (-1, -1)
    while True:
        with ws.lock, ws.guard():
            rows = ws.conn.execute(
                "SELECT id, pack, offset FROM objects WHERE (pack, offset) > (?, ?) "
                "ORDER BY pack, offset LIMIT 1000", last).fetchall()
        if not rows:
            break
        last = (rows[-1][1], rows[-1][2])
        for oid, _, _ in rows:
            oid = bytes(oid)
            count += 1
            try:
                if store.keyring is not None:
                    obj = store.get(oid)
                    refs = sealing.canonical_refs(obj.refs())
                else:
                    env.decode(store.get_sealed(oid))
                    refs = store.refs_of(oid)
            except (CorruptObject, WrongKey) as exc:
                errors.append((oid.hex(), str(exc)))
                continue
            if check_refs:
                for r in refs:
                    if not store.has(r):
                        errors.append((oid.hex(), f"references missing object {r.hex()}"))
    return FsckReport(not errors, count, errors)


@contextlib.contextmanager
def _maintenance(store: ObjectStore, ws: Writes, what: str) -> Iterator[PackWriter]:
    """The store's writer, exclusively, outside any transaction; index changes made inside roll back on error."""
    store.flush()
    with ws.lock:
        if ws.depth:
            raise UsageError(f"{what} cannot run inside a transaction")
        w = ws.begin()
        try:
            with ws.guard():
                yield w
        except BaseException:
            if ws.conn.in_transaction:
                ws.conn.execute("ROLLBACK")
            ws.abort()
            raise
        ws.end()


def gc(store: ObjectStore, ws: Writes, roots: Iterable[ObjectId], grace_s: float = 0.0) -> GcReport:
    """Delete every object of ``store`` not reachable from ``roots`` or a local ref; see ``ObjectStore.gc``."""
    roots = list(roots)
    with _maintenance(store, ws, "gc") as w:
        live = _mark(store, [*roots, *store.refs.list().values()])
        cutoff = time.time_ns() - int(grace_s * 1e9)
        dead = [bytes(oid) for oid, added in ws.conn.execute("SELECT id, added_ns FROM objects").fetchall()
                if bytes(oid) not in live and (added or 0) <= cutoff]
        ws.conn.execute("BEGIN IMMEDIATE")
        ws.conn.executemany("DELETE FROM objects WHERE id = ?", ((d,) for d in dead))
        ws.conn.execute("COMMIT")
        reclaimed = _compact(ws, w)
    return GcReport(len(live), len(dead), reclaimed)


def evict(store: ObjectStore, ws: Writes, ids: Iterable[ObjectId]) -> int:
    """Delete the index rows of ``ids`` (those stored); see ``ObjectStore.evict``. Returns how many."""
    ids = [bytes(i) for i in ids]
    with _maintenance(store, ws, "evict"):
        ws.conn.execute("BEGIN IMMEDIATE")
        before = ws.conn.total_changes
        ws.conn.executemany("DELETE FROM objects WHERE id = ?", ((i,) for i in ids))
        removed = ws.conn.total_changes - before
        ws.conn.execute("COMMIT")
    return removed


def _mark(store: ObjectStore, roots: Iterable[ObjectId]) -> set[ObjectId]:
    """Ids reachable from ``roots`` through header refs (ids not stored are skipped)."""
    live: set[ObjectId] = set()
    stack = [r for r in roots if store.has(r)]
    while stack:
        oid = stack.pop()
        if oid in live:
            continue
        live.add(oid)
        stack.extend(r for r in store.refs_of(oid) if r not in live and store.has(r))
    return live


def _compact(ws: Writes, w: PackWriter) -> int:
    """Rewrite packs that are mostly garbage; returns bytes freed. Caller holds the writer."""
    conn = ws.conn
    sizes = dict(conn.execute("SELECT pack, size FROM packs").fetchall())
    used = dict(conn.execute("SELECT pack, SUM(length) FROM objects GROUP BY pack").fetchall())
    victims = [p for p, s in sizes.items() if used.get(p, 0) * 2 <= s and s > 0]
    if not victims:
        return 0
    if w.current in victims:
        w.roll()  # live objects of the current pack move to a fresh one
    moved: list[tuple[int, int, bytes]] = []
    moved_bytes = 0
    for p in victims:
        rows = conn.execute("SELECT id, offset, length FROM objects WHERE pack = ? ORDER BY offset", (p,)).fetchall()
        for oid, offset, length in rows:
            data = ws.reader.read(p, offset, length)
            if len(data) != length:
                raise CorruptObject(bytes(oid).hex(), f"pack {p} is truncated; run fsck before gc")
            new_pack, new_off = w.append(data)
            moved.append((new_pack, new_off, bytes(oid)))
            moved_bytes += length
    new_sizes = w.sync()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("UPDATE objects SET pack = ?, offset = ? WHERE id = ?", moved)
    conn.executemany(
        "INSERT INTO packs(pack, size) VALUES (?, ?) ON CONFLICT(pack) DO UPDATE SET size = excluded.size",
        list(new_sizes.items()))
    conn.executemany("DELETE FROM packs WHERE pack = ?", ((p,) for p in victims))
    conn.execute("COMMIT")
    w.committed()
    freed = 0
    for p in victims:
        ws.reader.forget(p)
        f = ws.packs_dir / pack_name(p)
        freed += f.stat().st_size
        f.unlink()
    fsync_dir(ws.packs_dir)
    return freed - moved_bytes
