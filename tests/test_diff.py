"""Tree diffs: added/removed/modified/renamed, unchanged subtrees skipped (run on every store backend)."""
from __future__ import annotations

from pcloud.store.diff import ADDED, MODIFIED, REMOVED, RENAMED, Change, diff_trees
from pcloud.store.objects import Blob, Chunk, ChunkRef, Tree
from pcloud.store.trees import TreeEditor, lookup

from store_backends import store  # noqa: F401  (fixture)


def blob(store, data: bytes):
    return store.put(Blob((ChunkRef(store.put(Chunk(data)), len(data)),)))


def build(store, files, root=None, remove=()):
    ed = TreeEditor(store, root)
    for p in remove:
        ed.remove(p)
    for p, data in files.items():
        if isinstance(data, tuple):
            data, mode = data
        else:
            mode = 0o644
        ed.set(p, kind="file", id=blob(store, data), size=len(data), mode=mode)
    return ed.commit()


def summary(changes: list[Change]):
    return [(c.kind, c.path, c.old_path) for c in changes]


def test_identical_trees_no_changes(store):
    r = build(store, {"a": b"1", "d/b": b"2"})
    assert diff_trees(store, r, r) == []
    assert diff_trees(store, None, None) == []


def test_add_remove_modify(store):
    old = build(store, {"keep": b"k", "gone": b"g", "edit": b"e1", "d/x": b"x"})
    new = build(store, {"edit": b"e2", "new": b"n", "d/y": b"y"}, old, remove=["gone", "d/x"])
    assert summary(diff_trees(store, old, new)) == [
        (REMOVED, "d/x", "d/x"), (ADDED, "d/y", None), (MODIFIED, "edit", "edit"),
        (REMOVED, "gone", "gone"), (ADDED, "new", None),
    ]
    mod = [c for c in diff_trees(store, old, new) if c.kind == MODIFIED][0]
    assert mod.old_entry.id == lookup(store, old, "edit").id and mod.new_entry.id == lookup(store, new, "edit").id


def test_from_and_to_empty(store):
    r = build(store, {"a": b"1", "d/e/f": b"2"})
    assert summary(diff_trees(store, None, r)) == [(ADDED, "a", None), (ADDED, "d/e/f", None)]
    assert summary(diff_trees(store, r, None)) == [(REMOVED, "a", "a"), (REMOVED, "d/e/f", "d/e/f")]


def test_rename_by_content_id(store):
    old = build(store, {"docs/report.pdf": b"PDF", "other": b"o"})
    ed = TreeEditor(store, old)
    ed.move("docs/report.pdf", "archive/2026/report.pdf")
    new = ed.commit()
    changes = diff_trees(store, old, new)
    assert summary(changes) == [(RENAMED, "archive/2026/report.pdf", "docs/report.pdf")]
    assert changes[0].old_entry.id == changes[0].new_entry.id
    assert summary(diff_trees(store, old, new, detect_renames=False)) == [
        (ADDED, "archive/2026/report.pdf", None), (REMOVED, "docs/report.pdf", "docs/report.pdf"),
    ]


def test_rename_pairs_one_to_one(store):
    old = build(store, {"a": b"same", "b": b"same"})
    new = build(store, {"x": b"same", "y": b"same", "z": b"same"}, old, remove=["a", "b"])
    assert summary(diff_trees(store, old, new)) == [
        (RENAMED, "x", "a"), (RENAMED, "y", "b"), (ADDED, "z", None),
    ]


def test_rename_and_edit_is_remove_plus_add(store):
    old = build(store, {"a": b"v1"})
    new = build(store, {"b": b"v2"}, old, remove=["a"])
    assert summary(diff_trees(store, old, new)) == [(REMOVED, "a", "a"), (ADDED, "b", None)]


def test_dir_replaced_by_file_and_back(store):
    old = build(store, {"p/q": b"1", "p/r/s": b"2"})
    new = build(store, {"p": b"file"}, old, remove=["p"])
    assert summary(diff_trees(store, old, new)) == [
        (ADDED, "p", None), (REMOVED, "p/q", "p/q"), (REMOVED, "p/r/s", "p/r/s"),
    ]
    assert summary(diff_trees(store, new, old)) == [
        (REMOVED, "p", "p"), (ADDED, "p/q", None), (ADDED, "p/r/s", None),
    ]


def test_mode_change_is_modified_mtime_only_is_not(store):
    old = build(store, {"run.sh": (b"#!", 0o644), "t": b"x"})
    ed = TreeEditor(store, old)
    e = lookup(store, old, "run.sh")
    ed.set("run.sh", kind="file", id=e.id, mode=0o755, size=e.size)
    t = lookup(store, old, "t")
    ed.set("t", kind="file", id=t.id, size=t.size, mtime_ns=12345)
    new = ed.commit()
    assert summary(diff_trees(store, old, new)) == [(MODIFIED, "run.sh", "run.sh")]


class CountingReader:
    """Counts tree reads, to check that unchanged subtrees are never opened."""

    def __init__(self, store):
        self.store, self.reads = store, 0

    def get(self, oid):
        self.reads += 1
        return self.store.get(oid)

    def has(self, oid):
        return self.store.has(oid)


def test_unchanged_subtrees_are_skipped(store):
    files = {f"big/{i // 10}/f{i}": bytes([i % 256]) for i in range(300)}
    files["small/x"] = b"1"
    old = build(store, files)
    new = build(store, {"small/x": b"2"}, old)
    reader = CountingReader(store)
    assert summary(diff_trees(reader, old, new)) == [(MODIFIED, "small/x", "small/x")]
    assert reader.reads == 4  # two roots, two 'small' dirs; 'big' never opened


def _consistent(files):
    out = {}
    for p in sorted(files, key=lambda p: (p.count("/"), p)):
        parts = p.split("/")
        if any("/".join(parts[:i]) in out for i in range(1, len(parts))) or any(k.startswith(p + "/") for k in out):
            continue
        out[p] = files[p]
    return out


from hypothesis import given, settings, strategies as st  # noqa: E402

from pcloud.store.crypto import Keyring  # noqa: E402
from pcloud.store.memory import MemoryObjectStore  # noqa: E402
from pcloud.store.trees import walk  # noqa: E402

_tree = st.dictionaries(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join),
    st.sampled_from([b"1", b"2", b"3"]), max_size=8,
).map(_consistent)


@settings(max_examples=150, deadline=None)
@given(_tree, _tree)
def test_applying_the_diff_rebuilds_the_new_tree(old_files, new_files):
    store = MemoryObjectStore(Keyring.generate())
    old, new = build(store, old_files), build(store, new_files)
    state = {p: e.id for p, e in walk(store, old)}
    for c in diff_trees(store, old, new):
        if c.kind in (REMOVED, RENAMED):
            del state[c.old_path]
    for c in diff_trees(store, old, new):
        if c.kind in (ADDED, MODIFIED, RENAMED):
            state[c.path] = c.new_entry.id
    assert state == {p: e.id for p, e in walk(store, new)}
    paths_seen = [c.path for c in diff_trees(store, old, new)]
    assert paths_seen == sorted(paths_seen)
