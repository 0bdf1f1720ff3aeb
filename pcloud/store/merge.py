"""3-way tree merge that never loses a byte; conflicts are values.

`merge_trees` merges two root trees (ours, theirs) against their common
ancestor (base) and returns a `MergeResult`: the merged root tree id plus the
`Conflict`s it resolved by keeping both sides. It never raises for a
conflict. Like irmin's ``Merge`` combinators, the tree merge is built from a
per-entry merge (`_merge_entry`) lifted over directories (`_merge_dir`).

Per entry (name in one directory, ``b``/``o``/``t`` the base/ours/theirs
entries, None when absent). "Same" compares kind, id and mode; an mtime-only
touch is not an edit.

1. ``o`` same as ``t`` -> take it (mtime: the later one).
2. only one side differs from ``b`` -> take that side (a delete included).
3. both differ:

   * dir and dir -> merge the directories recursively (base: ``b`` if it is
     a directory, else empty).
   * one side deleted, the other edited -> **keep the edit**. For a
     directory, recurse with the deleting side as empty: edited leaves stay,
     leaves only the deleter touched (i.e. deleted) go. Reported as
     ``delete-edit`` (no copy: the edit sits at its own path).
   * directory vs file/doc -> the directory (merged against the deletion,
     as above) keeps the name; the leaf moves to a conflict copy
     (``dir-file``). If nothing of the directory survives, the leaf keeps
     the name instead and nothing is reported.
   * file vs file (or doc vs doc) -> merged **per field**: content from the
     side that changed it, mode from the side that changed it. Content
     changed on both sides: docs with the same stable id merge as CRDTs
     (``doc_merger``, no conflict); anything else keeps ours at the name and
     theirs at a conflict copy (``both-modified``, or ``add-add`` when the
     base had no leaf there). Mode changed differently on both sides: ours
     wins, reported as ``mode``.

Conflict copies are named ``stem.conflict-<device>-<yyyymmdd-hhmmss>.ext``
(device: the short id of the side whose version the copy holds; time: that
side's commit time in UTC). The extension is the part after the last dot
(none for ``Makefile`` or ``.bashrc``: the suffix goes at the end). A name
already used on either side or in the result gets ``-1``, ``-2``, ... before
the extension. Names over 255 bytes are shortened in the stem.

Never losing a byte: a leaf whose content differs from the base at its path
on one side appears in the result (at its path or at a conflict copy)
unless the other side changed the same leaf too and the two were merged
(docs). tests/test_merge.py checks this by hypothesis over random trees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from pcloud.errors import BadArgument, BadPath, NotFound
from pcloud.store import paths
from pcloud.store.documents import get_doc_object, merge_doc_objects
from pcloud.store.objects import MAX_NAME_BYTES, EntryKind, ObjectId, ObjectWriter, Tree, TreeEntry
from pcloud.store.diff import RENAMED, diff_trees
from pcloud.store.history import get_commit, merge_bases
from pcloud.store.trees import TreeEditor, dir_entry, get_tree

BOTH_MODIFIED = "both-modified"
ADD_ADD = "add-add"
DIR_FILE = "dir-file"
DELETE_EDIT = "delete-edit"
MODE = "mode"

DocMerger = Callable[[ObjectWriter, ObjectId, ObjectId], ObjectId]
"""``doc_merger(store, ours_doc_object, theirs_doc_object) -> merged Doc object id``
(same stable doc id); `merge_doc_objects` is the default."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """A disagreement the merge resolved by keeping both sides."""

    kind: str
    """``both-modified``, ``add-add``, ``dir-file``, ``delete-edit`` or ``mode``."""
    path: str
    """Where the disagreement was; the kept version is here (the edit, ours, or the directory)."""
    copy_path: str | None
    """Where the other version was put, or None when nothing was copied (delete-edit, mode)."""
    ours: TreeEntry | None
    """Our entry at ``path`` before the merge (None: absent or deleted)."""
    theirs: TreeEntry | None
    """Their entry at ``path`` before the merge."""

    @property
    def reason(self) -> str:
        """One human sentence: what happened and where each version went."""
        if self.kind == DELETE_EDIT:
            who = "we" if self.ours is None else "they"
            return f"{self.path}: {who} deleted it, the other side edited it; the edit was kept"
        if self.kind == MODE:
            return f"{self.path}: mode changed differently on both sides; ours was kept"
        if self.kind == DIR_FILE:
            return f"{self.path}: a directory on one side, a file on the other; the file is at {self.copy_path}"
        what = "changed on both sides" if self.kind == BOTH_MODIFIED else "added on both sides"
        return f"{self.path}: {what}; ours kept, theirs saved as {self.copy_path}"


@dataclass(frozen=True)
class MergeResult:
    """The merged root tree and every conflict resolved on the way."""

    tree: ObjectId
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True if both sides' changes combined without any conflict."""
        return not self.conflicts


def conflict_stamp(time_ns: int) -> str:
    """``yyyymmdd-hhmmss`` in UTC for a commit time in ns since the epoch."""
    return datetime.fromtimestamp(time_ns // 1_000_000_000, tz=timezone.utc).strftime("%Y%m%d-%H%M%S")


def conflict_name(name: str, device: str, time_ns: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The conflict-copy name for ``name`` from ``device`` at ``time_ns``, avoiding ``taken``.

    ``report.pdf`` -> ``report.conflict-ABCD-20261122-101500.pdf``; then
    ``...-101500-1.pdf``, ``-2`` ... if taken.
    """
    dot = name.rfind(".")
    if dot > 0:
        stem, ext = name[:dot], name[dot:]
    else:
        stem, ext = name, ""
    tag = f".conflict-{device}-{conflict_stamp(time_ns)}"
    n = 0
    while True:
        suffix = tag + (f"-{n}" if n else "") + ext
        room = MAX_NAME_BYTES - len(suffix.encode())
        if room < 1:
            raise BadArgument(f"device id {device!r} too long for a conflict name")
        short = stem.encode()[:room].decode("utf-8", errors="ignore")
        candidate = short + suffix
        if candidate not in taken:
            return paths.check_name(candidate)
        n += 1


def _same(a: TreeEntry | None, b: TreeEntry | None) -> bool:
    """Same content: kind, id and mode (mtime/size follow the id)."""
    if a is None or b is None:
        return a is b
    return a.kind == b.kind and a.id == b.id and a.mode == b.mode


def _is_dir(e: TreeEntry | None) -> bool:
    return e is not None and e.kind == EntryKind.DIR


@dataclass
class _Pending:
    """A leaf that needs a conflict-copy name, chosen once the directory's names are known."""

    name: str
    entry: TreeEntry
    device: str
    time_ns: int
    conflict_kind: str
    ours: TreeEntry | None
    theirs: TreeEntry | None


class _Merger:
    def __init__(
        self,
        store: ObjectWriter,
        ours_device: str,
        theirs_device: str,
        ours_time: int,
        theirs_time: int,
        doc_merger: DocMerger,
    ) -> None:
        self.store = store
        self.ours_device = ours_device
        self.theirs_device = theirs_device
        self.ours_time = ours_time
        self.theirs_time = theirs_time
        self.doc_merger = doc_merger
        self.conflicts: list[Conflict] = []

    def merge_dir(self, b: ObjectId | None, o: ObjectId | None, t: ObjectId | None, prefix: str) -> ObjectId | None:
        """Merge three directories (None: empty); returns the merged tree id, None if empty."""
        if o == t:
            return o
        if o == b:
            return t
        if t == b:
            return o
        be = {e.name: e for e in get_tree(self.store, b).entries} if b is not None else {}
        oe = {e.name: e for e in get_tree(self.store, o).entries} if o is not None else {}
        te = {e.name: e for e in get_tree(self.store, t).entries} if t is not None else {}
        result: dict[str, TreeEntry] = {}
        pending: list[_Pending] = []
        for name in sorted(be.keys() | oe.keys() | te.keys()):
            self._merge_entry(name, be.get(name), oe.get(name), te.get(name), prefix, result, pending)
        taken = set(oe) | set(te) | set(result)
        for p in pending:
            copy = conflict_name(p.name, p.device, p.time_ns, taken)
            taken.add(copy)
            result[copy] = TreeEntry(copy, p.entry.kind, p.entry.id, p.entry.mode, p.entry.size, p.entry.mtime_ns)
            path = paths.join(prefix, p.name)
            self.conflicts.append(Conflict(p.conflict_kind, path, paths.join(prefix, copy), p.ours, p.theirs))
        if not result:
            return None
        return self.store.put(Tree(tuple(result[n] for n in sorted(result))))

    def _merge_entry(
        self,
        name: str,
        b: TreeEntry | None,
        o: TreeEntry | None,
        t: TreeEntry | None,
        prefix: str,
        result: dict[str, TreeEntry],
        pending: list[_Pending],
    ) -> None:
        path = paths.join(prefix, name)
        if _same(o, t):
            if o is not None and t is not None:
                result[name] = o if o.mtime_ns >= t.mtime_ns else t
            return
        if _same(o, b):
            if t is not None:
                result[name] = t
            return
        if _same(t, b):
            if o is not None:
                result[name] = o
            return
        # Both sides changed this name, differently.
        base_dir = b.id if _is_dir(b) else None
        if o is None or t is None:
            edit = o if o is not None else t
            assert edit is not None
            if _is_dir(edit) and base_dir is not None:
                merged = self.merge_dir(base_dir, o.id if o else None, t.id if t else None, path)
                if merged is not None:
                    result[name] = dir_entry(name, merged)
                return
            result[name] = edit
            if not _is_dir(edit) and b is not None and not _is_dir(b):
                self.conflicts.append(Conflict(DELETE_EDIT, path, None, o, t))
            return
        if _is_dir(o) or _is_dir(t):
            merged = self.merge_dir(base_dir, o.id if _is_dir(o) else None, t.id if _is_dir(t) else None, path)
            if _is_dir(o) and _is_dir(t):
                if merged is not None:
                    result[name] = dir_entry(name, merged)
                return
            leaf, ours_leaf = (t, False) if _is_dir(o) else (o, True)
            if merged is None:
                result[name] = leaf
                return
            result[name] = dir_entry(name, merged)
            pending.append(self._pending(name, leaf, ours_leaf, DIR_FILE, o, t))
            return
        self._merge_leaves(name, b, o, t, path, result, pending)

    def _merge_leaves(
        self,
        name: str,
        b: TreeEntry | None,
        o: TreeEntry,
        t: TreeEntry,
        path: str,
        result: dict[str, TreeEntry],
        pending: list[_Pending],
    ) -> None:
        base_leaf = b if b is not None and not _is_dir(b) and b.kind == o.kind == t.kind else None
        if o.kind == t.kind and o.id == t.id:
            content: TreeEntry | None = o if o.mtime_ns >= t.mtime_ns else t
        elif base_leaf is not None and o.id == base_leaf.id:
            content = t
        elif base_leaf is not None and t.id == base_leaf.id:
            content = o
        else:
            content = self._merge_docs(o, t)
        if content is not None:
            mode = _merge_field(base_leaf.mode if base_leaf else None, o.mode, t.mode)
            if mode is None:
                mode = o.mode
                self.conflicts.append(Conflict(MODE, path, None, o, t))
            result[name] = TreeEntry(name, content.kind, content.id, mode, content.size, content.mtime_ns)
            return
        result[name] = o
        kind = BOTH_MODIFIED if base_leaf is not None else ADD_ADD
        pending.append(self._pending(name, t, False, kind, o, t))

    def _merge_docs(self, o: TreeEntry, t: TreeEntry) -> TreeEntry | None:
        """The CRDT merge of two doc entries of the same document, else None."""
        if o.kind != EntryKind.DOC or t.kind != EntryKind.DOC:
            return None
        od, td = get_doc_object(self.store, o.id), get_doc_object(self.store, t.id)
        if od.doc_id != td.doc_id:
            return None  # two different documents that happen to share a path
        merged = self.doc_merger(self.store, o.id, t.id)
        size = len(get_doc_object(self.store, merged).update)
        return TreeEntry(o.name, EntryKind.DOC, merged, o.mode, size, max(o.mtime_ns, t.mtime_ns))

    def _pending(
        self, name: str, leaf: TreeEntry, ours_leaf: bool, kind: str, o: TreeEntry | None, t: TreeEntry | None
    ) -> _Pending:
        if ours_leaf:
            return _Pending(name, leaf, self.ours_device, self.ours_time, kind, o, t)
        return _Pending(name, leaf, self.theirs_device, self.theirs_time, kind, o, t)


def _merge_field(base: int | None, ours: int, theirs: int) -> int | None:
    """3-way merge of one value: the side that changed it wins; None if both changed it differently."""
    if ours == theirs:
        return ours
    if base is not None and ours == base:
        return theirs
    if base is not None and theirs == base:
        return ours
    return None


def _align_renames(
    store: ObjectWriter, base: ObjectId, ours: ObjectId | None, theirs: ObjectId | None
) -> tuple[ObjectId, ObjectId | None, ObjectId | None]:
    """Carry one side's renames over to the other side's edits, for the merge only.

    If ours renamed ``old -> new`` (same content id, see `diff`) and theirs
    edited ``old`` (and has nothing at ``new``), then base and theirs are
    looked at with that leaf moved to ``new`` too, so the merge sees "ours
    unchanged, theirs edited" at ``new`` and the edit lands on the renamed
    file instead of resurrecting ``old``. Symmetric for their renames.
    A move that cannot be mirrored (occupied path, file in the way) is
    skipped, leaving the plain per-path merge (which loses nothing either).
    """
    base_ed = TreeEditor(store, base)
    side_eds = {"ours": TreeEditor(store, ours), "theirs": TreeEditor(store, theirs)}
    moved = False
    for renamer, other in (("ours", "theirs"), ("theirs", "ours")):
        renamer_root = ours if renamer == "ours" else theirs
        other_ed = side_eds[other]
        for change in diff_trees(store, base, renamer_root):
            if change.kind != RENAMED or change.old_path is None or change.old_entry is None:
                continue
            old, new = change.old_path, change.path
            edited = other_ed.find(old)
            if (edited is None or edited.kind != change.old_entry.kind
                    or (edited.id == change.old_entry.id and edited.mode == change.old_entry.mode)):
                continue  # the other side did not edit the renamed leaf
            if other_ed.find(new) is not None or base_ed.find(new) is not None:
                continue
            try:
                other_ed.move(old, new)
            except (BadPath, NotFound):
                continue
            try:
                base_ed.move(old, new)
            except (BadPath, NotFound):
                other_ed.move(new, old)  # undo: keep base and side consistent
                continue
            moved = True
    if not moved:
        return base, ours, theirs
    return base_ed.commit(), side_eds["ours"].commit(), side_eds["theirs"].commit()


def merge_trees(
    store: ObjectWriter,
    base: ObjectId | None,
    ours: ObjectId | None,
    theirs: ObjectId | None,
    *,
    ours_device: str,
    theirs_device: str,
    theirs_time: int,
    ours_time: int | None = None,
    doc_merger: DocMerger | None = None,
) -> MergeResult:
    """3-way merge of root trees ``ours`` and ``theirs`` against ``base``; writes the merged trees.

    ``base`` None means no common ancestor (everything is an add). Devices
    are short device ids used in conflict-copy names; times are commit times
    in ns (``ours_time`` defaults to ``theirs_time``; it only names copies of
    our leaves, which happens for a file of ours against their directory).
    ``doc_merger`` defaults to `merge_doc_objects` on ``store``.
    Returns the merged tree (the empty tree if nothing is left) and the
    conflicts; raises only for store errors (NotFound, CorruptObject).
    """
    for dev in (ours_device, theirs_device):
        if not dev or "/" in dev or "\\" in dev or "\x00" in dev:
            raise BadArgument(f"device id {dev!r} cannot be used in a file name")
    merger = _Merger(
        store,
        ours_device,
        theirs_device,
        theirs_time if ours_time is None else ours_time,
        theirs_time,
        doc_merger if doc_merger is not None else merge_doc_objects,
    )
    if base is not None and ours != theirs and base not in (ours, theirs):
        base, ours, theirs = _align_renames(store, base, ours, theirs)
    merged = merger.merge_dir(base, ours, theirs, paths.ROOT)
    if merged is None:
        merged = store.put(Tree(()))
    return MergeResult(merged, merger.conflicts)


def merge_base_tree(store: ObjectWriter, a: ObjectId, b: ObjectId) -> ObjectId | None:
    """The base tree for merging commits ``a`` and ``b``: the merge base's tree, or None if unrelated.

    With criss-cross history (several best common ancestors) the bases are
    merged with each other first, recursively, into a *virtual* base tree,
    as git's "recursive" strategy does; this avoids conflicts that a single
    arbitrary base would report for changes both sides already share.
    Disagreements between bases keep both versions in the virtual base
    (named after device ``base``); they only matter if a side still has them.
    """
    bases = merge_bases(store, a, b)
    if not bases:
        return None
    first = bases[0]
    tree = get_commit(store, first).tree
    for other in bases[1:]:
        inner = merge_base_tree(store, first, other)
        other_commit = get_commit(store, other)
        tree = merge_trees(
            store, inner, tree, other_commit.tree,
            ours_device="base", theirs_device="base", theirs_time=other_commit.time_ns,
        ).tree
    return tree
