"""Whole-vault trees: lookup, walk, list and the batch TreeEditor (run on every store backend)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pcloud.errors import BadPath, NotFound
from pcloud.store.crypto import Keyring
from pcloud.store.memory import MemoryObjectStore
from pcloud.store.objects import Blob, Chunk, ChunkRef, EntryKind, Tree, TreeEntry
from pcloud.store.trees import TreeEditor, empty_tree, get_tree, list_dir, lookup, walk, walk_all

from store_backends import store  # noqa: F401  (fixture)


def blob(store, data: bytes):
    cid = store.put(Chunk(data))
    return store.put(Blob((ChunkRef(cid, len(data)),)))


def build(store, files: dict[str, bytes], root=None):
    ed = TreeEditor(store, root)
    for path, data in files.items():
        ed.set(path, kind="file", id=blob(store, data), size=len(data))
    return ed.commit()


def contents(store, root) -> dict[str, bytes]:
    out = {}
    for path, e in walk(store, root):
        b = store.get(e.id)
        out[path] = b"".join(store.get(c.id).data for c in b.chunks)
    return out


def test_build_lookup_walk(store):
    files = {"a.txt": b"a", "docs/x.md": b"x", "docs/sub/y.md": b"y", "z/1": b"1"}
    root = build(store, files)
    assert contents(store, root) == files
    assert [p for p, _ in walk(store, root)] == sorted(files)
    e = lookup(store, root, "docs/sub/y.md")
    assert e is not None and e.kind == EntryKind.FILE and e.name == "y.md" and e.size == 1
    assert lookup(store, root, "docs").kind == EntryKind.DIR
    assert lookup(store, root, "").id == root
    assert lookup(store, root, "nope") is None
    assert lookup(store, root, "a.txt/under-a-file") is None
    assert lookup(store, None, "a") is None
    assert [e.name for e in list_dir(store, root, "docs")] == ["sub", "x.md"]
    assert [e.name for e in list_dir(store, root)] == ["a.txt", "docs", "z"]
    assert [p for p, _ in walk_all(store, root)] == ["a.txt", "docs", "docs/sub", "docs/sub/y.md", "docs/x.md", "z", "z/1"]
    assert next(walk(store, root, "pre"))[0] == "pre/a.txt"


def test_list_dir_errors(store):
    root = build(store, {"f": b"1"})
    with pytest.raises(NotFound):
        list_dir(store, root, "missing")
    with pytest.raises(BadPath, match="not a directory"):
        list_dir(store, root, "f")
    with pytest.raises(BadPath):
        list_dir(store, root, "../etc")
    assert list_dir(store, None, "") == []


def test_same_content_same_id_any_order(store):
    files = {f"d{i % 3}/f{i}": bytes([i]) for i in range(30)}
    r1 = build(store, files)
    r2 = build(store, dict(reversed(list(files.items()))))
    assert r1 == r2
    # Building incrementally gives the same root as building at once.
    half = dict(list(files.items())[:15])
    r3 = build(store, dict(list(files.items())[15:]), build(store, half))
    assert r3 == r1


def test_unchanged_subtrees_keep_their_ids(store):
    root = build(store, {"a/x": b"1", "b/y": b"2"})
    a_before = lookup(store, root, "a").id
    root2 = build(store, {"b/z": b"3"}, root)
    assert lookup(store, root2, "a").id == a_before
    assert lookup(store, root2, "b").id != lookup(store, root, "b").id


def test_remove_file_and_dir_and_empty_dirs_vanish(store):
    root = build(store, {"a/b/c/f": b"1", "a/g": b"2", "h": b"3"})
    ed = TreeEditor(store, root)
    assert ed.remove("a/b/c/f").kind == EntryKind.FILE
    r = ed.commit()
    assert lookup(store, r, "a/b") is None  # a/b/c emptied, so a/b too: git semantics
    assert sorted(contents(store, r)) == ["a/g", "h"]
    ed = TreeEditor(store, r)
    assert ed.remove("a").kind == EntryKind.DIR
    assert sorted(contents(store, ed.commit())) == ["h"]
    ed.remove("h")
    assert ed.commit() == empty_tree(store)
    with pytest.raises(NotFound):
        ed.remove("h")
    with pytest.raises(BadPath):
        ed.remove("")


def test_file_vs_dir_clashes_raise(store):
    root = build(store, {"a/x": b"1", "f": b"2"})
    bid = blob(store, b"new")
    ed = TreeEditor(store, root)
    with pytest.raises(BadPath, match="is a file"):
        ed.set("f/under", kind="file", id=bid)
    with pytest.raises(BadPath, match="is a dir"):
        ed.set("a", kind="file", id=bid)
    with pytest.raises(BadPath):
        ed.set("f", entry=TreeEntry("", "dir", lookup(store, root, "a").id))
    with pytest.raises(BadPath):
        ed.set("", kind="file", id=bid)
    with pytest.raises(BadPath):
        ed.set("g", kind="weird", id=bid)
    with pytest.raises(BadPath):
        ed.set("g", kind="file", id=b"short")
    with pytest.raises(BadPath):
        ed.set("g")
    for bad in ({"mode": -1}, {"size": 1.5}, {"mtime_ns": 2**64}, {"size": True}):
        with pytest.raises(BadPath):
            ed.set("g", kind="file", id=bid, **bad)
    assert ed.commit() == root  # failed edits changed nothing
    # After removing the directory's last file, a file may take its name.
    ed.remove("a/x")
    ed.set("a", kind="file", id=bid)
    assert lookup(store, ed.commit(), "a").kind == EntryKind.FILE


def test_set_replaces_file_and_keeps_fields(store):
    root = build(store, {"f": b"old"})
    bid = blob(store, b"new")
    ed = TreeEditor(store, root)
    ed.set("f", kind="file", id=bid, mode=0o755, size=3, mtime_ns=99)
    e = lookup(store, ed.commit(), "f")
    assert (e.id, e.mode, e.size, e.mtime_ns) == (bid, 0o755, 3, 99)
    # An entry's own name is ignored in favour of the path's last part.
    ed.set("g/h", TreeEntry("ignored", "file", bid, 0o600, 3, 1))
    assert lookup(store, ed.commit(), "g/h").name == "h"


def test_graft_directory(store):
    src = build(store, {"p/q": b"1", "p/r": b"2"})
    sub = lookup(store, src, "p")
    ed = TreeEditor(store, build(store, {"other": b"3"}))
    ed.set("copy/of/p", sub)
    r = ed.commit()
    assert contents(store, r) == {"copy/of/p/q": b"1", "copy/of/p/r": b"2", "other": b"3"}


def test_move(store):
    root = build(store, {"a/x": b"1", "a/y/z": b"2", "b": b"3", "c": b"4"})
    ed = TreeEditor(store, root)
    ed.move("a", "new/place")
    ed.move("b", "b2")
    r = ed.commit()
    assert contents(store, r) == {"new/place/x": b"1", "new/place/y/z": b"2", "b2": b"3", "c": b"4"}
    with pytest.raises(BadPath, match="into itself"):
        ed.move("new", "new/inner")
    with pytest.raises(BadPath, match="exists"):
        ed.move("b2", "c")
    with pytest.raises(NotFound):
        ed.move("nope", "x")
    with pytest.raises(BadPath):
        ed.move("b2", "c/under")  # c is a file
    assert ed.commit() == r  # failed moves changed nothing
    ed.move("b2", "c", overwrite=True)
    with pytest.raises(BadPath):
        ed.move("c", "new", overwrite=True)  # a directory is never overwritten
    ed.move("c", "c")
    assert contents(store, ed.commit()) == {"new/place/x": b"1", "new/place/y/z": b"2", "c": b"3"}


def test_editor_reads_its_own_edits(store):
    root = build(store, {"a/x": b"1"})
    ed = TreeEditor(store, root)
    bid = blob(store, b"2")
    ed.set("a/y", kind="file", id=bid)
    assert ed.find("a/y").id == bid
    assert [e.name for e in ed.list("a")] == ["x", "y"]
    ed.remove("a/x")
    ed.remove("a/y")
    assert ed.find("a") is None
    assert ed.list("") == []
    with pytest.raises(NotFound):
        ed.list("a")
    assert ed.commit() == empty_tree(store)


def test_editor_usable_after_commit(store):
    ed = TreeEditor(store, None)
    ed.set("a", kind="file", id=blob(store, b"1"))
    r1 = ed.commit()
    ed.set("b", kind="file", id=blob(store, b"2"))
    r2 = ed.commit()
    assert sorted(contents(store, r1)) == ["a"] and sorted(contents(store, r2)) == ["a", "b"]


def test_wrong_object_kind_is_corrupt(store):
    from pcloud.errors import CorruptObject

    bid = blob(store, b"not a tree")
    with pytest.raises(CorruptObject):
        get_tree(store, bid)


def test_deep_path(store):
    deep = "/".join(["d"] * 200) + "/f"
    root = build(store, {deep: b"x"})
    assert lookup(store, root, deep) is not None
    assert [p for p, _ in walk(store, root)] == [deep]


def test_many_files_write_only_touched_dirs():
    """10k files in 100 directories: one tree object per directory, not per file."""
    store = MemoryObjectStore(Keyring.generate())
    bid = blob(store, b"same")
    before = len(store)
    ed = TreeEditor(store, None)
    for i in range(10_000):
        ed.set(f"d{i % 100}/f{i}", kind="file", id=bid, size=4)
    root = ed.commit()
    assert len(store) - before == 101  # 100 directories + the root
    assert sum(1 for _ in walk(store, root)) == 10_000
    # Editing one file rewrites its directory and the root only.
    before = len(store)
    ed = TreeEditor(store, root)
    ed.set("d7/f7", kind="file", id=blob(store, b"changed"), size=7)
    ed.commit()
    assert len(store) - before == 2 + 2  # chunk + blob + d7 + root


files_st = st.dictionaries(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join),
    st.binary(max_size=4),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(files_st, st.lists(st.tuples(st.sampled_from(["set", "rm"]), st.sampled_from(["a", "b", "a/b", "c/a", "b/c/a"]), st.binary(max_size=2)), max_size=10))
def test_editor_matches_a_dict_model(files, ops):
    """Random edits agree with a plain dict of path -> bytes (with git's no-empty-dir rule)."""
    store = MemoryObjectStore(Keyring.generate())
    # Build only a consistent subset (no path both a file and a dir prefix).
    model: dict[str, bytes] = {}
    ed = TreeEditor(store, None)
    for p, data in sorted(files.items()):
        try:
            ed.set(p, kind="file", id=blob(store, data), size=len(data))
            model = {k: v for k, v in model.items() if k != p}
            model[p] = data
        except BadPath:
            assert any(k.startswith(p + "/") for k in model) or any(p.startswith(k + "/") for k in model)
    for op, p, data in ops:
        if op == "set":
            clash = any(k.startswith(p + "/") for k in model) or any(p.startswith(k + "/") for k in model)
            if clash:
                with pytest.raises(BadPath):
                    ed.set(p, kind="file", id=blob(store, data), size=len(data))
            else:
                ed.set(p, kind="file", id=blob(store, data), size=len(data))
                model[p] = data
        else:
            under = [k for k in model if k == p or k.startswith(p + "/")]
            if under:
                ed.remove(p)
                for k in under:
                    del model[k]
            else:
                with pytest.raises((NotFound, BadPath)):
                    ed.remove(p)
    root = ed.commit()
    assert contents(store, root) == model
    assert root == build(store, model)


def test_backends_agree_on_ids(tmp_path):
    """Conformance: the same edits on every backend, under one key, give the same root id."""
    from store_backends import BACKENDS

    assert set(BACKENDS) == {"memory", "disk"}
    keyring = Keyring.generate()
    roots = {}
    for name, make in BACKENDS.items():
        s = make(tmp_path / name, keyring)
        roots[name] = build(s, {"a/b": b"1", "c": b"2", "a/d/e": b"3"})
        assert contents(s, roots[name]) == {"a/b": b"1", "c": b"2", "a/d/e": b"3"}
        close = getattr(s, "close", None)
        if close is not None:
            close()
    assert len(set(roots.values())) == 1
