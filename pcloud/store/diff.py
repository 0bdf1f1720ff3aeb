"""Tree-level diff between two vault snapshots, with renames by content id.

`diff_trees` compares two root trees entry by entry and descends only into
directories whose ids differ, so an unchanged subtree costs one comparison
however large it is. Changes are reported for files and documents (leaves);
directories appear only through their contents.

* ``added`` / ``removed``: a leaf exists on one side only. A path that
  changes between directory and leaf shows as the leaves removed and added.
* ``modified``: a leaf at the same path whose kind, content id or mode
  changed. A change of mtime or size alone (same content) is not a
  modification: the bytes are the same.
* ``renamed``: a removed leaf and an added leaf with the same content id are
  paired into one change (``old_path`` -> ``path``). Pairing is one-to-one,
  deterministic (sorted by path), so copies beyond the first stay ``added``.
  A file renamed *and* edited shows as removed + added.

Result order: by ``path`` (the new path for renames).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from pcloud.store import paths
from pcloud.store.objects import EntryKind, ObjectId, ObjectReader, TreeEntry
from pcloud.store.trees import get_tree, walk

ADDED = "added"
REMOVED = "removed"
MODIFIED = "modified"
RENAMED = "renamed"


@dataclass(frozen=True, slots=True)
class Change:
    """One changed leaf between two trees."""

    kind: str
    """``added``, ``removed``, ``modified`` or ``renamed``."""
    path: str
    """The path in the new tree (in the old tree for ``removed``)."""
    old_path: str | None
    """The path in the old tree: set for ``renamed``, ``modified`` and ``removed``."""
    old_entry: TreeEntry | None
    """The entry in the old tree (None for ``added``)."""
    new_entry: TreeEntry | None
    """The entry in the new tree (None for ``removed``)."""


def _leaves(store: ObjectReader, entry: TreeEntry, path: str) -> Iterator[tuple[str, TreeEntry]]:
    if entry.kind == EntryKind.DIR:
        yield from walk(store, entry.id, path)
    else:
        yield path, entry


def _raw_changes(
    store: ObjectReader, old: ObjectId | None, new: ObjectId | None, prefix: str
) -> Iterator[Change]:
    if old == new:
        return
    old_entries = {e.name: e for e in get_tree(store, old).entries} if old is not None else {}
    new_entries = {e.name: e for e in get_tree(store, new).entries} if new is not None else {}
    for name in sorted(old_entries.keys() | new_entries.keys()):
        o, n = old_entries.get(name), new_entries.get(name)
        path = paths.join(prefix, name)
        if o is not None and n is not None:
            if o.kind == EntryKind.DIR and n.kind == EntryKind.DIR:
                yield from _raw_changes(store, o.id, n.id, path)
                continue
            if o.kind != EntryKind.DIR and n.kind != EntryKind.DIR:
                if o.kind != n.kind or o.id != n.id or o.mode != n.mode:
                    yield Change(MODIFIED, path, path, o, n)
                continue
        if o is not None:
            for p, e in _leaves(store, o, path):
                yield Change(REMOVED, p, p, e, None)
        if n is not None:
            for p, e in _leaves(store, n, path):
                yield Change(ADDED, p, None, None, e)


def diff_trees(
    store: ObjectReader, old: ObjectId | None, new: ObjectId | None, *, detect_renames: bool = True
) -> list[Change]:
    """The leaf changes that turn root tree ``old`` into ``new`` (None: an empty tree)."""
    changes = list(_raw_changes(store, old, new, ""))
    if detect_renames:
        changes = _pair_renames(changes)
    changes.sort(key=lambda c: (c.path, c.kind))
    return changes


def _pair_renames(changes: list[Change]) -> list[Change]:
    removed_by_id: dict[tuple[str, ObjectId], list[Change]] = {}
    for c in changes:
        if c.kind == REMOVED:
            assert c.old_entry is not None
            removed_by_id.setdefault((c.old_entry.kind, c.old_entry.id), []).append(c)
    if not removed_by_id:
        return changes
    for group in removed_by_id.values():
        group.sort(key=lambda c: c.path, reverse=True)  # pop() takes the smallest path
    paired: set[str] = set()
    out: list[Change] = []
    for c in sorted(changes, key=lambda c: c.path):
        if c.kind != ADDED:
            continue
        assert c.new_entry is not None
        group = removed_by_id.get((c.new_entry.kind, c.new_entry.id))
        if group:
            gone = group.pop()
            paired.add(gone.path)
            out.append(Change(RENAMED, c.path, gone.path, gone.old_entry, c.new_entry))
        else:
            out.append(c)
    out.extend(c for c in changes if c.kind != ADDED and not (c.kind == REMOVED and c.path in paired))
    return out
