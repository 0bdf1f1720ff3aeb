"""Whole-vault trees: reading by path and editing immutably in batches.

A vault snapshot is one root `Tree`; directories are nested trees, so a
snapshot's identity is its root id and two equal subtrees share one id
(Merkle). Nothing here mutates an object: `TreeEditor` builds new trees.

Decisions (tested in tests/test_trees.py):

* **Empty directories are dropped**, like git: a directory exists while it
  holds a file or document. Removing the last entry of a directory removes
  the directory (recursively up to, not including, the root). So a tree id
  depends only on the files and documents under it, which keeps merges and
  diffs free of "empty dir" noise.
* **Kind clashes are errors, never silent replacement**: setting a file at
  ``a`` where ``a`` is a directory, or at ``a/b`` where ``a`` is a file or a
  document, raises `BadPath`. Replacing a directory by a file must be spelt
  as ``remove`` then ``set``, so no edit deletes a subtree by accident.
* **Directory entries carry no metadata**: mode 0o755, size 0, mtime 0, so
  identical content gives identical tree ids on every device.

Theory of operation of `TreeEditor`: it keeps a mutable mirror (`_Dir`) of
only the directories an edit touched, loading each one once. `commit` writes
the touched directories bottom-up and reuses the ids of everything else, so
putting n files costs O(n + touched directories), not O(n x depth x siblings).
"""
from __future__ import annotations

from typing import Iterator

from pcloud.errors import BadPath, CorruptObject, NotFound
from pcloud.store import paths
from pcloud.store.objects import EntryKind, ObjectId, ObjectReader, ObjectWriter, Tree, TreeEntry

DIR_MODE = 0o755


def get_tree(store: ObjectReader, tree_id: ObjectId) -> Tree:
    """Load tree ``tree_id``; raises NotFound if absent, CorruptObject if it is another kind."""
    obj = store.get(tree_id)
    if not isinstance(obj, Tree):
        raise CorruptObject(tree_id.hex(), f"expected a tree, found a {type(obj).__name__.lower()}")
    return obj


def dir_entry(name: str, tree_id: ObjectId) -> TreeEntry:
    """The canonical entry naming directory ``tree_id`` (metadata-free, see module doc)."""
    return TreeEntry(name, EntryKind.DIR, tree_id, DIR_MODE, 0, 0)


def empty_tree(store: ObjectWriter) -> ObjectId:
    """Store and return the id of the empty tree (an empty vault's root)."""
    return store.put(Tree(()))


def lookup(store: ObjectReader, root_tree_id: ObjectId | None, path: str) -> TreeEntry | None:
    """The entry at ``path`` under root ``root_tree_id``, or None if nothing is there.

    ``path`` is normalised (BadPath if invalid). The root itself is returned
    as a directory entry named ``''``; a None root is an empty vault.
    """
    path = paths.normalize(path)
    if root_tree_id is None:
        return None
    entry = dir_entry("", root_tree_id)
    for name in paths.split(path):
        if entry.kind != EntryKind.DIR:
            return None
        entry = get_tree(store, entry.id).get(name)
        if entry is None:
            return None
    return entry


def list_dir(store: ObjectReader, root_tree_id: ObjectId | None, path: str = "") -> list[TreeEntry]:
    """The entries of directory ``path``, sorted by name.

    Raises NotFound if nothing is at ``path`` (the root of an empty vault is
    an empty directory) and BadPath if ``path`` is a file or a document.
    """
    path = paths.normalize(path)
    if root_tree_id is None and path == paths.ROOT:
        return []
    entry = lookup(store, root_tree_id, path)
    if entry is None:
        raise NotFound(f"no such directory: {path!r}")
    if entry.kind != EntryKind.DIR:
        raise BadPath(f"{path!r} is a {entry.kind}, not a directory")
    return list(get_tree(store, entry.id).entries)


def walk(store: ObjectReader, tree_id: ObjectId | None, prefix: str = "") -> Iterator[tuple[str, TreeEntry]]:
    """Yield ``(path, entry)`` for every file and document under ``tree_id``, depth first in name order.

    Paths are ``prefix`` joined with the names below ``tree_id``; directories
    are descended into, not yielded. Iterative, so depth costs no recursion.
    """
    for path, entry in walk_all(store, tree_id, prefix):
        if entry.kind != EntryKind.DIR:
            yield path, entry


def walk_all(store: ObjectReader, tree_id: ObjectId | None, prefix: str = "") -> Iterator[tuple[str, TreeEntry]]:
    """Like `walk` but also yields each directory entry, just before its contents."""
    if tree_id is None:
        return
    stack: list[tuple[str, Iterator[TreeEntry]]] = [(prefix, iter(get_tree(store, tree_id).entries))]
    while stack:
        base, entries = stack[-1]
        e = next(entries, None)
        if e is None:
            stack.pop()
            continue
        p = paths.join(base, e.name)
        yield p, e
        if e.kind == EntryKind.DIR:
            stack.append((p, iter(get_tree(store, e.id).entries)))


class _Dir:
    """A directory being edited: its current entries plus the loaded subdirectories.

    For a name in ``children`` the entry in ``entries`` is stale (its id is
    the tree the child was loaded from); ``children`` wins. ``id`` is the id
    of the current content when known (clean), else None.
    """

    __slots__ = ("entries", "children", "id")

    def __init__(self, entries: dict[str, TreeEntry], tree_id: ObjectId | None) -> None:
        self.entries = entries
        self.children: dict[str, _Dir] = {}
        self.id = tree_id


class TreeEditor:
    """Batch edits against root tree ``root_tree_id`` (None: an empty vault).

    Edits (`set`, `remove`, `move`) apply in order to an in-memory mirror of
    the touched directories; `commit` writes the new trees and returns the new
    root id. The store is written only by `commit` (and by `find`/`list` on a
    directory with pending edits, which write that subtree early; the objects
    are the ones `commit` would write anyway). The editor stays usable after
    `commit`: later edits continue from the committed state.

    >>> ed = TreeEditor(store, None)
    >>> ed.set("docs/a.txt", kind="file", id=blob_id, size=3)
    >>> root = ed.commit()
    """

    def __init__(self, store: ObjectWriter, root_tree_id: ObjectId | None) -> None:
        self.store = store
        self._root = self._load(root_tree_id)

    # -- reading (sees pending edits) -------------------------------------------------

    def find(self, path: str) -> TreeEntry | None:
        """The entry at ``path`` including pending edits, or None. A directory's id is
        computed (its new trees written) on demand."""
        path = paths.normalize(path)
        if path == paths.ROOT:
            return dir_entry("", self._flush(self._root, is_root=True))
        *dirs, name = paths.split(path)
        node = self._descend(dirs, create=False, path=path)
        if node is None:
            return None
        return self._current(node, name)

    def list(self, path: str = "") -> list[TreeEntry]:
        """The entries of directory ``path`` including pending edits (NotFound, BadPath as `list_dir`)."""
        entry = self.find(path)
        if entry is None:
            if paths.normalize(path) == paths.ROOT:
                return []
            raise NotFound(f"no such directory: {path!r}")
        if entry.kind != EntryKind.DIR:
            raise BadPath(f"{path!r} is a {entry.kind}, not a directory")
        return list(get_tree(self.store, entry.id).entries)

    # -- editing --------------------------------------------------------------------

    def set(
        self,
        path: str,
        entry: TreeEntry | None = None,
        *,
        kind: str | None = None,
        id: ObjectId | None = None,  # noqa: A002 - mirrors TreeEntry.id
        mode: int = 0o644,
        size: int = 0,
        mtime_ns: int = 0,
    ) -> None:
        """Put an entry at ``path``, creating intermediate directories.

        Give either ``entry`` (its name is replaced by the last part of
        ``path``) or the fields ``kind`` and ``id`` (plus optional mode, size,
        mtime_ns). A ``dir`` entry grafts an existing tree. Replaces a file or
        document at ``path``, or a directory by a directory; raises BadPath if
        ``path`` is the root, if a parent is a file/document, or if a
        file/document would replace a directory.
        """
        path = paths.normalize(path)
        if entry is None:
            if kind is None or id is None:
                raise BadPath(f"set({path!r}): give an entry, or kind= and id=")
            entry = TreeEntry("", kind, id, mode, size, mtime_ns)
        if entry.kind not in EntryKind.ALL:
            raise BadPath(f"set({path!r}): unknown entry kind {entry.kind!r}")
        if not isinstance(entry.id, bytes) or len(entry.id) != 32:
            raise BadPath(f"set({path!r}): an entry id is 32 bytes")
        # A value msgpack would store but `decode` refuses would make the tree unreadable.
        for field_name, value, low, high in (
            ("mode", entry.mode, 0, 2**32), ("size", entry.size, 0, 2**63), ("mtime_ns", entry.mtime_ns, -(2**63), 2**63),
        ):
            if type(value) is not int or not low <= value < high:
                raise BadPath(f"set({path!r}): {field_name} must be an int in [{low}, {high}), got {value!r}")
        if path == paths.ROOT:
            raise BadPath("cannot set the vault root; set paths below it")
        *dirs, name = paths.split(path)
        node = self._descend(dirs, create=True, path=path)
        assert node is not None  # create=True always yields a directory
        existing = self._current(node, name)
        if existing is not None and (existing.kind == EntryKind.DIR) != (entry.kind == EntryKind.DIR):
            raise BadPath(f"{path!r} is a {existing.kind}; remove it before putting a {entry.kind} there")
        node.children.pop(name, None)
        node.entries[name] = TreeEntry(name, entry.kind, entry.id, entry.mode, entry.size, entry.mtime_ns)

    def remove(self, path: str) -> TreeEntry:
        """Remove the file, document or whole directory at ``path``; returns what was there.

        Raises NotFound if nothing is there and BadPath for the root.
        Directories left empty disappear (see module doc).
        """
        path = paths.normalize(path)
        if path == paths.ROOT:
            raise BadPath("cannot remove the vault root")
        *dirs, name = paths.split(path)
        node = self._descend(dirs, create=False, path=path, for_write=True)
        existing = None if node is None else self._current(node, name)
        if node is None or existing is None:
            raise NotFound(f"nothing at {path!r}")
        node.children.pop(name, None)
        del node.entries[name]
        return existing

    def move(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Move the file, document or directory at ``src`` to ``dst`` (a full new path).

        ``dst`` must not exist, unless ``overwrite`` and both are non-directories.
        Raises NotFound if ``src`` is missing and BadPath for the root, for a
        directory moved into itself, or an occupied ``dst``.
        """
        src, dst = paths.normalize(src), paths.normalize(dst)
        if src == paths.ROOT or dst == paths.ROOT:
            raise BadPath("cannot move the vault root or onto it")
        if src == dst:
            if self.find(src) is None:
                raise NotFound(f"nothing at {src!r}")
            return
        if paths.is_within(dst, src):
            raise BadPath(f"cannot move {src!r} into itself ({dst!r})")
        entry = self.find(src)
        if entry is None:
            raise NotFound(f"nothing at {src!r}")
        target = self.find(dst)
        if target is not None:
            if not overwrite:
                raise BadPath(f"{dst!r} already exists")
            if target.kind == EntryKind.DIR or entry.kind == EntryKind.DIR:
                raise BadPath(f"{dst!r} exists and one of the two is a directory; cannot overwrite")
        # Validate dst's parents before removing src, so a failed move changes nothing.
        self._check_parents(dst)
        self.remove(src)
        self.set(dst, entry)

    def commit(self) -> ObjectId:
        """Write every touched directory and return the new root tree id."""
        return self._flush(self._root, is_root=True)

    # -- internals -------------------------------------------------------------------

    def _load(self, tree_id: ObjectId | None) -> _Dir:
        if tree_id is None:
            return _Dir({}, None)
        return _Dir({e.name: e for e in get_tree(self.store, tree_id).entries}, tree_id)

    def _current(self, node: _Dir, name: str) -> TreeEntry | None:
        """The entry for ``name`` in ``node``, None if absent or an emptied directory.

        A loaded child directory is flushed to learn its id (and whether it
        is empty, i.e. gone under the empty-directory rule).
        """
        child = node.children.get(name)
        if child is None:
            return node.entries.get(name)
        tid = self._flush(child, is_root=False)
        if not child.entries:
            return None
        return dir_entry(name, tid)

    def _check_parents(self, path: str) -> None:
        prefix: list[str] = []
        for name in paths.split(path)[:-1]:
            prefix.append(name)
            e = self.find("/".join(prefix))
            if e is None:
                return
            if e.kind != EntryKind.DIR:
                raise BadPath(f"{'/'.join(prefix)!r} is a {e.kind}, not a directory (in {path!r})")

    def _descend(self, names: list[str], *, create: bool, path: str, for_write: bool | None = None) -> _Dir | None:
        """The `_Dir` at ``names``; loads and (when writing) dirties each directory on the way.

        ``create`` makes missing directories (and implies writing); it raises
        BadPath when a component is a file or document. Without ``create``
        a missing directory or a leaf in the way gives None.
        """
        writing = create if for_write is None else for_write
        node = self._root
        if writing:
            node.id = None
        walked: list[str] = []
        for name in names:
            walked.append(name)
            child = node.children.get(name)
            if child is None:
                entry = node.entries.get(name)
                if entry is None:
                    if not create:
                        return None
                    child = _Dir({}, None)
                    node.entries[name] = dir_entry(name, b"\0" * 32)  # placeholder; children wins
                elif entry.kind != EntryKind.DIR:
                    if not create:
                        return None  # nothing can be under a file or document
                    raise BadPath(f"{'/'.join(walked)!r} is a {entry.kind}, not a directory (in {path!r})")
                else:
                    child = self._load(entry.id)
                node.children[name] = child
            if writing:
                child.id = None
            node = child
        return node

    def _flush(self, node: _Dir, *, is_root: bool) -> ObjectId:
        """Write ``node`` and its dirty descendants; drop emptied subdirectories."""
        if node.id is not None:
            return node.id
        # Iterative post-order: a deep path must not hit the recursion limit.
        order: list[_Dir] = []
        stack = [node]
        while stack:
            d = stack.pop()
            order.append(d)
            stack.extend(c for c in d.children.values() if c.id is None)
        for d in reversed(order):
            for name, child in list(d.children.items()):
                if child.id is None:
                    continue  # not reached: children are flushed before parents
                if not child.entries:
                    del d.entries[name]
                    del d.children[name]
                else:
                    d.entries[name] = dir_entry(name, child.id)
            d.id = self.store.put(Tree(tuple(d.entries[n] for n in sorted(d.entries))))
        assert node.id is not None
        return node.id
