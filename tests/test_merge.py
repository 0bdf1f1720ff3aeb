"""3-way tree merge: per-entry rules, conflict copies, CRDT documents, and "never lose a byte"."""
from __future__ import annotations

import calendar

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pcloud.errors import BadArgument
from pcloud.store.crypto import Keyring
from pcloud.store.documents import Document
from pcloud.store.history import log, make_commit, merge_base
from pcloud.store.memory import MemoryObjectStore
from pcloud.store.merge import (
    ADD_ADD, BOTH_MODIFIED, DELETE_EDIT, DIR_FILE, MODE, conflict_name, merge_trees,
)
from pcloud.store.objects import Blob, Chunk, ChunkRef, EntryKind
from pcloud.store.trees import TreeEditor, lookup, walk

from store_backends import store  # noqa: F401  (fixture)

T = calendar.timegm((2026, 11, 22, 10, 15, 0)) * 1_000_000_000  # 2026-11-22 10:15:00 UTC
STAMP = "20261122-101500"


def blob(store, data: bytes):
    return store.put(Blob((ChunkRef(store.put(Chunk(data)), len(data)),)))


def read(store, e) -> bytes:
    return b"".join(store.get(c.id).data for c in store.get(e.id).chunks)


def build(store, files, root=None, remove=()):
    ed = TreeEditor(store, root)
    for p in remove:
        ed.remove(p)
    for p, data in files.items():
        ed.set(p, kind="file", id=blob(store, data), size=len(data))
    return ed.commit()


def files_of(store, root) -> dict[str, bytes]:
    return {p: read(store, e) for p, e in walk(store, root)}


def merge(store, base, ours, theirs, **kw):
    kw.setdefault("ours_device", "OURS")
    kw.setdefault("theirs_device", "THRS")
    kw.setdefault("theirs_time", T)
    return merge_trees(store, base, ours, theirs, **kw)


def test_conflict_names():
    assert conflict_name("report.pdf", "ABCD", T) == f"report.conflict-ABCD-{STAMP}.pdf"
    assert conflict_name("Makefile", "ABCD", T) == f"Makefile.conflict-ABCD-{STAMP}"
    assert conflict_name(".bashrc", "ABCD", T) == f".bashrc.conflict-ABCD-{STAMP}"
    assert conflict_name("a.tar.gz", "ABCD", T) == f"a.tar.conflict-ABCD-{STAMP}.gz"
    taken = {f"r.conflict-ABCD-{STAMP}.txt", f"r.conflict-ABCD-{STAMP}-1.txt"}
    assert conflict_name("r.txt", "ABCD", T, taken) == f"r.conflict-ABCD-{STAMP}-2.txt"
    long = "é" * 127 + ".txt"  # 258 bytes: the stem is shortened on a character boundary
    name = conflict_name(long, "ABCD", T)
    assert len(name.encode()) <= 255 and name.endswith(f".conflict-ABCD-{STAMP}.txt")
    with pytest.raises(BadArgument):
        conflict_name("x", "D" * 300, T)


def test_one_side_changes_are_taken(store):
    base = build(store, {"a": b"1", "b": b"2", "d/c": b"3"})
    ours = build(store, {"a": b"1-ours", "new-ours": b"n"}, base)
    theirs = build(store, {"d/c": b"3-theirs"}, base, remove=["b"])
    r = merge(store, base, ours, theirs)
    assert r.clean and r.conflicts == []
    assert files_of(store, r.tree) == {"a": b"1-ours", "new-ours": b"n", "d/c": b"3-theirs"}


def test_trivial_merges_reuse_ids(store):
    base = build(store, {"a": b"1"})
    ours = build(store, {"a": b"2"}, base)
    assert merge(store, base, ours, base).tree == ours
    assert merge(store, base, base, ours).tree == ours
    assert merge(store, base, ours, ours).tree == ours


def test_identical_changes_are_not_conflicts(store):
    base = build(store, {"a": b"1"})
    ours = build(store, {"a": b"same", "n": b"new"}, base)
    theirs = build(store, {"a": b"same", "n": b"new"}, base)
    r = merge(store, base, ours, theirs)
    assert r.clean and files_of(store, r.tree) == {"a": b"same", "n": b"new"}


def test_both_modified_keeps_both(store):
    base = build(store, {"docs/report.pdf": b"v1", "x": b"x"})
    ours = build(store, {"docs/report.pdf": b"ours"}, base)
    theirs = build(store, {"docs/report.pdf": b"theirs"}, base)
    r = merge(store, base, ours, theirs, theirs_device="ABCD")
    copy = f"docs/report.conflict-ABCD-{STAMP}.pdf"
    assert files_of(store, r.tree) == {"docs/report.pdf": b"ours", copy: b"theirs", "x": b"x"}
    [c] = r.conflicts
    assert (c.kind, c.path, c.copy_path) == (BOTH_MODIFIED, "docs/report.pdf", copy)
    assert not r.clean


def test_conflict_copy_name_collisions(store):
    taken = f"f.conflict-THRS-{STAMP}.txt"
    base = build(store, {"f.txt": b"v1"})
    ours = build(store, {"f.txt": b"ours", taken: b"already ours"}, base)
    theirs = build(store, {"f.txt": b"theirs"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {
        "f.txt": b"ours", taken: b"already ours", f"f.conflict-THRS-{STAMP}-1.txt": b"theirs",
    }


def test_delete_vs_edit_keeps_the_edit(store):
    base = build(store, {"a": b"1", "b": b"2"})
    ours = build(store, {}, base, remove=["a"])
    theirs = build(store, {"a": b"1-edited"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"a": b"1-edited", "b": b"2"}
    assert [(c.kind, c.path, c.copy_path) for c in r.conflicts] == [(DELETE_EDIT, "a", None)]
    # And mirrored: our edit against their delete.
    r2 = merge(store, base, theirs, ours)
    assert files_of(store, r2.tree) == {"a": b"1-edited", "b": b"2"}


def test_deleted_dir_vs_edit_inside_keeps_only_the_edits(store):
    base = build(store, {"d/keep-edit": b"1", "d/untouched": b"2", "d/sub/x": b"3"})
    ours = build(store, {}, base, remove=["d"])
    theirs = build(store, {"d/keep-edit": b"1-edited", "d/sub/new": b"n"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"d/keep-edit": b"1-edited", "d/sub/new": b"n"}
    assert [(c.kind, c.path) for c in r.conflicts] == [(DELETE_EDIT, "d/keep-edit")]


def test_add_add(store):
    base = build(store, {"z": b"z"})
    ours = build(store, {"new.txt": b"mine"}, base)
    theirs = build(store, {"new.txt": b"yours"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"z": b"z", "new.txt": b"mine", f"new.conflict-THRS-{STAMP}.txt": b"yours"}
    assert [c.kind for c in r.conflicts] == [ADD_ADD]


def test_no_base_is_all_adds(store):
    ours = build(store, {"a": b"1", "same": b"s"})
    theirs = build(store, {"a": b"2", "b": b"3", "same": b"s"})
    r = merge(store, None, ours, theirs)
    assert files_of(store, r.tree) == {"a": b"1", f"a.conflict-THRS-{STAMP}": b"2", "b": b"3", "same": b"s"}


def test_dir_vs_file(store):
    base = build(store, {"other": b"o"})
    ours = build(store, {"p/inner.txt": b"in dir"}, base)
    theirs = build(store, {"p": b"a file"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"other": b"o", "p/inner.txt": b"in dir", f"p.conflict-THRS-{STAMP}": b"a file"}
    assert [(c.kind, c.path, c.copy_path) for c in r.conflicts] == [(DIR_FILE, "p", f"p.conflict-THRS-{STAMP}")]
    # Our file against their directory: our file moves, named after our device and time.
    later = T + 3_600_000_000_000
    r2 = merge(store, base, theirs, ours, ours_time=later)
    assert files_of(store, r2.tree) == {"other": b"o", "p/inner.txt": b"in dir", "p.conflict-OURS-20261122-111500": b"a file"}


def test_file_replaced_by_dir_against_file_edit(store):
    base = build(store, {"p": b"v1"})
    ours = build(store, {"p": b"v2"}, base)
    theirs = build(store, {"p/x": b"x"}, base, remove=["p"])
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"p/x": b"x", "p.conflict-OURS-20261122-101500": b"v2"}


def test_mode_merges_per_field(store):
    base = build(store, {"run.sh": b"v1", "m": b"m"})
    b_run = lookup(store, base, "run.sh")
    ed = TreeEditor(store, base)
    ed.set("run.sh", kind="file", id=b_run.id, size=b_run.size, mode=0o755)  # ours: chmod +x only
    ours = ed.commit()
    theirs = build(store, {"run.sh": b"v2"}, base)  # theirs: content only
    r = merge(store, base, ours, theirs)
    e = lookup(store, r.tree, "run.sh")
    assert (read(store, e), e.mode) == (b"v2", 0o755) and r.clean
    # Both change the mode differently: ours wins, reported.
    ed = TreeEditor(store, base)
    ed.set("m", kind="file", id=lookup(store, base, "m").id, mode=0o600, size=1)
    o2 = ed.commit()
    ed = TreeEditor(store, base)
    ed.set("m", kind="file", id=lookup(store, base, "m").id, mode=0o640, size=1)
    r = merge(store, base, o2, ed.commit())
    assert lookup(store, r.tree, "m").mode == 0o600
    assert [c.kind for c in r.conflicts] == [MODE]


def test_mtime_only_touch_is_not_an_edit(store):
    base = build(store, {"a": b"1"})
    e = lookup(store, base, "a")
    ed = TreeEditor(store, base)
    ed.set("a", kind="file", id=e.id, size=e.size, mtime_ns=999)
    ours = ed.commit()
    theirs = build(store, {"a": b"2"}, base)
    r = merge(store, base, ours, theirs)
    assert files_of(store, r.tree) == {"a": b"2"} and r.clean


def doc_entry(ed, path, doc: Document, store):
    ed.set(path, kind=EntryKind.DOC, id=doc.save(store))


def test_docs_changed_on_both_sides_merge_as_crdts(store):
    d = Document("notes")
    d.insert_text("body", 0, "hello")
    ed = TreeEditor(store, None)
    doc_entry(ed, "notes.ydoc", d, store)
    base = ed.commit()
    a = Document.load(store, lookup(store, base, "notes.ydoc").id)
    b = Document.load(store, lookup(store, base, "notes.ydoc").id)
    a.insert_text("body", 0, "A ")
    b.insert_text("body", 5, " B")
    ed = TreeEditor(store, base)
    doc_entry(ed, "notes.ydoc", a, store)
    ours = ed.commit()
    ed = TreeEditor(store, base)
    doc_entry(ed, "notes.ydoc", b, store)
    theirs = ed.commit()
    r1, r2 = merge(store, base, ours, theirs), merge(store, base, theirs, ours)
    assert r1.clean and r2.clean
    assert r1.tree == r2.tree  # CRDT merge is order-free
    merged = Document.load(store, lookup(store, r1.tree, "notes.ydoc").id)
    assert merged.to_json() == {"body": "A hello B"}


def test_two_different_docs_at_one_path_get_a_copy(store):
    x, y = Document("x"), Document("y")
    x.insert_text("t", 0, "x")
    y.insert_text("t", 0, "y")
    base = build(store, {"k": b"k"})
    ed = TreeEditor(store, base)
    doc_entry(ed, "n.ydoc", x, store)
    ours = ed.commit()
    ed = TreeEditor(store, base)
    doc_entry(ed, "n.ydoc", y, store)
    r = merge(store, base, ours, ed.commit())
    assert [c.kind for c in r.conflicts] == [ADD_ADD]
    assert lookup(store, r.tree, f"n.conflict-THRS-{STAMP}.ydoc").kind == EntryKind.DOC


def test_bad_device_names_refused(store):
    with pytest.raises(BadArgument):
        merge(store, None, None, None, theirs_device="a/b")
    with pytest.raises(BadArgument):
        merge(store, None, None, None, ours_device="")


def test_merge_of_branches_with_history(store):
    """Two branches diverge from main with files and a document; merge at the merge base."""
    def sign(data: bytes) -> bytes:
        return b"s" * 64

    d = Document("journal")
    d.map("meta")["title"] = "J"
    ed = TreeEditor(store, None)
    ed.set("a.txt", kind="file", id=blob(store, b"a"))
    doc_entry(ed, "journal", d, store)
    root = make_commit(store, ed.commit(), [], sign, b"dev", "root", T)

    def branch(edit, t, msg):
        tree = store.get(root).tree
        ed = TreeEditor(store, tree)
        edit(ed)
        return make_commit(store, ed.commit(), [root], sign, b"dev", msg, t)

    def laptop(ed):
        ed.set("a.txt", kind="file", id=blob(store, b"a-laptop"))
        j = Document.load(store, ed.find("journal").id)
        j.map("meta")["laptop"] = True
        doc_entry(ed, "journal", j, store)

    def phone(ed):
        ed.set("a.txt", kind="file", id=blob(store, b"a-phone"))
        ed.set("photo.jpg", kind="file", id=blob(store, b"jpeg"))
        j = Document.load(store, ed.find("journal").id)
        j.map("meta")["phone"] = True
        doc_entry(ed, "journal", j, store)

    ours = branch(laptop, T + 1, "laptop")
    theirs = branch(phone, T + 2, "phone")
    base = merge_base(store, ours, theirs)
    assert base == root
    c_ours, c_theirs = store.get(ours), store.get(theirs)
    r = merge_trees(store, store.get(base).tree, c_ours.tree, c_theirs.tree,
                    ours_device="LAPT", theirs_device="PHON", theirs_time=c_theirs.time_ns)
    merged = make_commit(store, r.tree, [ours, theirs], sign, b"dev", "merge", T + 3)
    assert [m for _, m in ((o, c.message) for o, c in log(store, merged))] == ["merge", "phone", "laptop", "root"]
    got = {p: e for p, e in walk(store, r.tree)}
    assert read(store, got["a.txt"]) == b"a-laptop"
    assert read(store, got[f"a.conflict-PHON-{STAMP}.txt"]) == b"a-phone"
    assert read(store, got["photo.jpg"]) == b"jpeg"
    assert Document.load(store, got["journal"].id).to_json() == {
        "meta": {"title": "J", "laptop": True, "phone": True}
    }
    assert [c.kind for c in r.conflicts] == [BOTH_MODIFIED]


# -- never lose a byte ---------------------------------------------------------------

NAMES = ["a", "b", "c.txt"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
CONTENT = st.sampled_from([b"1", b"2", b"3", b"4", b"5", b"6"])


def consistent(files: dict[str, bytes]) -> dict[str, bytes]:
    """Drop paths that clash with a shorter file path (a file cannot also be a directory)."""
    out: dict[str, bytes] = {}
    for p in sorted(files, key=lambda p: (p.count("/"), p)):
        parts = p.split("/")
        if any("/".join(parts[:i]) in out for i in range(1, len(parts))):
            continue
        if any(k.startswith(p + "/") for k in out):
            continue
        out[p] = files[p]
    return out


def side(base: dict[str, bytes]):
    """A side derived from base: some paths deleted, some edited, some added."""
    return st.tuples(
        st.sets(st.sampled_from(sorted(base)) if base else st.nothing(), max_size=len(base)),
        st.dictionaries(PATHS, CONTENT, max_size=5),
    ).map(lambda dt: consistent({**{k: v for k, v in base.items() if k not in dt[0]}, **dt[1]}))


trees = st.dictionaries(PATHS, CONTENT, max_size=6).map(consistent).flatmap(
    lambda base: st.tuples(st.just(base), side(base), side(base))
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_merge_never_loses_a_byte(triple):
    base_files, ours_files, theirs_files = triple
    store = MemoryObjectStore(Keyring.generate())
    base, ours, theirs = (build(store, f) for f in triple)
    r = merge(store, base, ours, theirs)
    merged = files_of(store, r.tree)
    merged_contents = set(merged.values())
    for files, other in ((ours_files, theirs_files), (theirs_files, ours_files)):
        for path, data in files.items():
            if data not in base_files.values():
                # New content on this side: it must survive somewhere.
                assert data in merged_contents, (path, data)
            elif base_files.get(path) != data:
                # Base content moved or copied here: it survives unless the other
                # side edited it at its old place (then that edit follows the move).
                sources = [q for q, v in base_files.items() if v == data]
                if not any(q in other and other[q] != data for q in sources):
                    assert data in merged_contents, (path, data)
            elif other.get(path) == data:
                # Neither side touched it (or both agree): it stays where it was,
                # unless the other side turned a parent into a file (dir-file clash).
                assert merged.get(path) == data or any(
                    "/".join(path.split("/")[:i]) in merged for i in range(1, path.count("/") + 1)
                )
    # Nothing appears from nowhere.
    assert merged_contents <= set(ours_files.values()) | set(theirs_files.values())
    # Every conflict copy is named after a device and the time.
    for c in r.conflicts:
        if c.copy_path is not None:
            assert f".conflict-OURS-{STAMP}" in c.copy_path or f".conflict-THRS-{STAMP}" in c.copy_path
    # Merging with the sides swapped keeps the same set of contents.
    r2 = merge(store, base, theirs, ours)
    assert set(files_of(store, r2.tree).values()) == merged_contents


def test_conflict_reasons_are_sentences(store):
    base = build(store, {"a": b"1", "b": b"1"})
    ours = build(store, {"a": b"2"}, base, remove=["b"])
    theirs = build(store, {"a": b"3", "b": b"edited"}, base)
    r = merge(store, base, ours, theirs)
    reasons = sorted(c.reason for c in r.conflicts)
    assert reasons == [
        f"a: changed on both sides; ours kept, theirs saved as a.conflict-THRS-{STAMP}",
        "b: we deleted it, the other side edited it; the edit was kept",
    ]


def test_custom_doc_merger_is_called_with_the_store(store):
    calls = []

    def merger(s, a, b):
        calls.append((s, a, b))
        return a

    d = Document("d")
    d.insert_text("t", 0, "x")
    ed = TreeEditor(store, None)
    doc_entry(ed, "d", d, store)
    base = ed.commit()
    sides = []
    for text in ("1", "2"):
        c = Document.load(store, lookup(store, base, "d").id)
        c.insert_text("t", 0, text)
        ed = TreeEditor(store, base)
        doc_entry(ed, "d", c, store)
        sides.append(ed.commit())
    r = merge(store, base, *sides, doc_merger=merger)
    assert r.clean and len(calls) == 1 and calls[0][0] is store


def test_rename_on_one_side_carries_the_other_sides_edit(store):
    base = build(store, {"docs/draft.txt": b"v1", "k": b"k"})
    ed = TreeEditor(store, base)
    ed.move("docs/draft.txt", "final/report.txt")
    ours = ed.commit()
    theirs = build(store, {"docs/draft.txt": b"v2 edited"}, base)
    for a, b in ((ours, theirs), (theirs, ours)):
        r = merge(store, base, a, b)
        assert files_of(store, r.tree) == {"final/report.txt": b"v2 edited", "k": b"k"}
        assert r.clean


def test_rename_to_an_occupied_path_falls_back_to_per_path(store):
    base = build(store, {"a": b"v1"})
    ed = TreeEditor(store, base)
    ed.move("a", "b")
    ours = ed.commit()
    theirs = build(store, {"a": b"v2", "b": b"their b"}, base)
    r = merge(store, base, ours, theirs)
    got = files_of(store, r.tree)
    assert got["a"] == b"v2" and got["b"] == b"v1"
    assert b"their b" in got.values()


def test_criss_cross_merges_against_a_virtual_base(store):
    """Both devices merged each other's first change; the virtual base knows both, so no conflict."""
    from pcloud.store.merge import merge_base_tree

    def sign(data: bytes) -> bytes:
        return b"s" * 64

    def commit(tree, parents, t):
        return make_commit(store, tree, parents, sign, b"dev", "c", T + t)

    root_tree = build(store, {"x": b"x0", "y": b"y0"})
    root = commit(root_tree, [], 0)
    a1 = commit(build(store, {"x": b"x1"}, root_tree), [root], 2)
    b1 = commit(build(store, {"y": b"y1"}, root_tree), [root], 1)
    both = build(store, {"x": b"x1", "y": b"y1"}, root_tree)
    a2 = commit(build(store, {"a-only": b"a"}, both), [a1, b1], 3)
    b2 = commit(build(store, {"y": b"y2"}, both), [b1, a1], 4)
    vbase = merge_base_tree(store, a2, b2)
    assert files_of(store, vbase) == {"x": b"x1", "y": b"y1"}
    r = merge(store, vbase, store.get(a2).tree, store.get(b2).tree)
    assert r.clean
    assert files_of(store, r.tree) == {"x": b"x1", "y": b"y2", "a-only": b"a"}
    # The single newest base (a1) would have reported y as changed on both sides.
    single = store.get(merge_base(store, a2, b2)).tree
    assert [c.kind for c in merge(store, single, store.get(a2).tree, store.get(b2).tree).conflicts] == [BOTH_MODIFIED]
    assert merge_base_tree(store, a1, a1) == store.get(a1).tree
    unrelated = commit(build(store, {"z": b"z"}), [], 5)
    assert merge_base_tree(store, a1, unrelated) is None
