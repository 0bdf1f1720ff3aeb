"""The Linux inotify watcher: the byte parser and WatchTree on hand-built events (and fuzzed), then the
real watcher on tmp dirs with real threads, and FolderSync with both watchers (inotify and watchdog)."""
from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings, strategies as st

import pcloud
from pcloud.folders import FolderSync
from pcloud import errors
from pcloud.ignore import TEMP_SUFFIX
from pcloud.inotify import (IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_ISDIR,
                            IN_MODIFY, IN_MOVE_SELF, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, IN_UNMOUNT,
                            MAX_NAME, InotifyWatcher, RawEvent, WatchTree, parse_events)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")

TEMP = TEMP_SUFFIX.encode()


def raw(wd: int, mask: int, cookie: int = 0, name: bytes = b"") -> bytes:
    """One struct inotify_event as the kernel lays it out: the name NUL-padded to a multiple of 16."""
    padded = name + b"\0" * (-(len(name) + 1) % 16 + 1) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


def ev(wd: int, mask: int, name: str = "", cookie: int = 0) -> RawEvent:
    return RawEvent(wd, mask, cookie, os.fsencode(name))


# ------------------------------------------------------------------------------------------ parse_events
def test_parse_events_reads_headers_and_strips_padding() -> None:
    buf = raw(1, IN_CREATE, 0, b"a.txt") + raw(-1, IN_Q_OVERFLOW) + raw(7, IN_MOVED_TO | IN_ISDIR, 42, b"x" * 16)
    assert parse_events(buf) == [RawEvent(1, IN_CREATE, 0, b"a.txt"), RawEvent(-1, IN_Q_OVERFLOW, 0, b""),
                                 RawEvent(7, IN_MOVED_TO | IN_ISDIR, 42, b"x" * 16)]
    assert parse_events(b"") == []


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, 31])
def test_parse_events_refuses_a_truncated_buffer(cut: int) -> None:
    buf = raw(1, IN_CREATE, 0, b"name")  # 16-byte header + 16-byte name
    with pytest.raises(errors.MalformedEvents, match="ends inside"):
        parse_events(buf[:cut])
    with pytest.raises(errors.MalformedEvents):
        parse_events(raw(2, IN_DELETE) + buf[:cut])


def test_parse_events_refuses_oversized_names_and_buffers() -> None:
    with pytest.raises(errors.MalformedEvents, match="name field"):
        parse_events(struct.pack("iIII", 1, IN_CREATE, 0, MAX_NAME + 1) + b"a" * (MAX_NAME + 1))
    with pytest.raises(errors.MalformedEvents, match="limit"):
        parse_events(raw(1, IN_CREATE) * ((1 << 20) // 16 + 1))
    assert issubclass(errors.MalformedEvents, errors.PcloudError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_events_fuzz_random_bytes(buf: bytes) -> None:
    try:
        events = parse_events(buf)
    except errors.MalformedEvents:
        return
    assert all(b"\0" not in e.name for e in events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 50), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"_"))), max_size=20))
def test_parse_events_round_trips_well_formed_buffers(items) -> None:
    buf = b"".join(raw(wd, mask, cookie, name) for wd, mask, cookie, name in items)
    assert parse_events(buf) == [RawEvent(*i) for i in items]


# ---------------------------------------------------------------------------------------------- WatchTree
def tree_with(**dirs: int) -> WatchTree:
    t = WatchTree()
    t.add(1, "")
    for rel, wd in dirs.items():
        t.add(wd, rel.replace("__", "/"))
    return t


def test_tree_file_create_modify_attrib_delete_are_touched_once_each() -> None:
    t = tree_with(docs=2)
    out = t.feed([ev(1, IN_CREATE, "a"), ev(1, IN_MODIFY, "a"), ev(1, IN_CLOSE_WRITE, "a"), ev(2, IN_ATTRIB, "b"),
                  ev(2, IN_DELETE, "c")])
    assert out.touched == ("a", "docs/b", "docs/c")
    assert (out.new_dirs, out.drop_wds, out.rescan) == ((), (), False)


def test_tree_drops_our_temp_files_but_reports_where_they_are_placed() -> None:
    t = tree_with()
    tmp = "f" + TEMP_SUFFIX
    out = t.feed([ev(1, IN_CREATE, tmp), ev(1, IN_MODIFY, tmp), ev(1, IN_CLOSE_WRITE, tmp),
                  ev(1, IN_MOVED_FROM, tmp, cookie=5), ev(1, IN_MOVED_TO, "f", cookie=5)])
    assert out.touched == ("f",)


def test_tree_new_directory_is_touched_and_to_be_watched_and_its_mtime_is_not() -> None:
    t = tree_with()
    out = t.feed([ev(1, IN_CREATE | IN_ISDIR, "d"), ev(1, IN_ATTRIB | IN_ISDIR, "d"),
                  ev(1, IN_MODIFY | IN_ISDIR, "e")])
    assert (out.touched, out.new_dirs) == (("d",), ("d",))
    t.add(9, "d")  # the glue watched it; files made before that are found by scanning "d"
    assert t.feed([ev(9, IN_CREATE, "inside")]).touched == ("d/inside",)


def test_tree_dir_renamed_within_tree_then_edit_inside_reports_the_new_path() -> None:
    t = tree_with(a=2, a__b=3, a__b__c=4, ab=5)
    out = t.feed([ev(1, IN_MOVED_FROM | IN_ISDIR, "a", cookie=9), ev(1, IN_MOVED_TO | IN_ISDIR, "z", cookie=9),
                  ev(4, IN_MODIFY, "f")])
    assert out.touched == ("a", "z", "z/b/c/f")
    assert out.new_dirs == ("z",) and out.drop_wds == ()
    assert t.find_path(3) == "z/b" and t.find_wd("z/b/c") == 4 and t.find_wd("a/b") is None
    assert t.find_path(5) == "ab"  # a sibling sharing the prefix is untouched
    assert t.feed([ev(3, IN_CREATE, "g")]).touched == ("z/b/g",)


def test_tree_dir_moved_out_then_edits_inside_report_nothing() -> None:
    t = tree_with(a=2, a__b=3)
    out = t.feed([ev(1, IN_MOVED_FROM | IN_ISDIR, "a", cookie=9)])
    assert out.touched == ("a",) and sorted(out.drop_wds) == [2, 3]
    assert t.find_path(2) is None and t.find_path(3) is None
    assert t.feed([ev(2, IN_CREATE, "x"), ev(3, IN_MODIFY, "y"), ev(3, IN_IGNORED)]).touched == ()


def test_tree_dir_rename_split_across_two_reads_is_moved_out_then_moved_in() -> None:
    t = tree_with(a=2, a__b=3)
    first = t.feed([ev(1, IN_MOVED_FROM | IN_ISDIR, "a", cookie=9)])
    assert sorted(first.drop_wds) == [2, 3] and len(t) == 1  # the glue unwatches them
    second = t.feed([ev(1, IN_MOVED_TO | IN_ISDIR, "z", cookie=9)])
    assert (second.touched, second.new_dirs) == (("z",), ("z",))  # and watches the new place afresh


def test_tree_dir_moved_in_is_watched() -> None:
    t = tree_with()
    out = t.feed([ev(1, IN_MOVED_TO | IN_ISDIR, "in", cookie=4)])
    assert (out.touched, out.new_dirs) == (("in",), ("in",))


def test_tree_new_dir_then_parent_renamed_in_the_same_batch_watches_the_new_place() -> None:
    t = tree_with(a=2)
    out = t.feed([ev(2, IN_CREATE | IN_ISDIR, "b"), ev(1, IN_MOVED_FROM | IN_ISDIR, "a", cookie=3),
                  ev(1, IN_MOVED_TO | IN_ISDIR, "c", cookie=3)])
    assert out.new_dirs == ("c",)  # "c" is walked whole, so "c/b" is watched too


@pytest.mark.parametrize("events", [
    [ev(-1, IN_Q_OVERFLOW)],
    [ev(1, IN_DELETE_SELF), ev(1, IN_IGNORED)],
    [ev(1, IN_MOVE_SELF)],
    [ev(1, IN_UNMOUNT)],
], ids=["overflow", "root-deleted", "root-moved", "unmount"])
def test_tree_asks_for_a_rescan_when_events_were_lost_or_the_root_changed(events: list[RawEvent]) -> None:
    assert tree_with().feed(events).rescan


def test_tree_ignored_drops_the_watch_and_later_events() -> None:
    t = tree_with(d=2)
    out = t.feed([ev(1, IN_DELETE | IN_ISDIR, "d"), ev(2, IN_DELETE_SELF), ev(2, IN_IGNORED), ev(2, IN_CREATE, "x")])
    assert out.touched == ("d",) and not out.rescan
    assert t.find_path(2) is None and len(t) == 1


_NAMES = st.sampled_from([b"a", b"b", b"c", b"a" + TEMP, b"\xff", b""])
_MASKS = st.sampled_from([IN_CREATE, IN_DELETE, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO,
                          IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED, IN_Q_OVERFLOW, IN_UNMOUNT])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.builds(RawEvent, st.integers(-1, 8),
                                   st.tuples(_MASKS, st.booleans()).map(lambda m: m[0] | (IN_ISDIR if m[1] else 0)),
                                   st.integers(0, 3), _NAMES), max_size=12), max_size=6))
def test_tree_fuzz_random_event_sequences(batches: list[list[RawEvent]]) -> None:
    t = tree_with(a=2, a__b=3, c=4)
    next_wd = 10
    for batch in batches:
        out = t.feed(batch)
        assert not any(p.endswith(TEMP_SUFFIX) for p in out.touched)
        assert all(isinstance(p, str) and not p.startswith("/") for p in out.touched + out.new_dirs)
        assert all(t.find_path(wd) is None for wd in out.drop_wds)
        for rel in out.new_dirs:  # the glue watches them
            t.add(next_wd, rel)
            next_wd += 1
        for wd in list(range(-1, next_wd)):  # wd <-> path stays a bijection
            p = t.find_path(wd)
            if p is not None:
                assert t.find_wd(p) == wd


# ------------------------------------------------------------------------------- InotifyWatcher, for real
class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.touched: list[str] = []
        self.batches: list[list[str]] = []
        self.rescans = 0

    def on_touched(self, rels: list[str]) -> None:
        assert isinstance(rels, list)
        with self.lock:
            self.batches.append(rels)
            self.touched.extend(rels)

    def on_rescan(self) -> None:
        with self.lock:
            self.rescans += 1

    def wait(self, cond: Callable[[set[str]], bool], what: str, timeout: float = 5.0) -> set[str]:
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                seen = set(self.touched)
            if cond(seen):
                return seen
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; saw {sorted(seen)}")
            time.sleep(0.01)

    def clear(self) -> None:
        with self.lock:
            self.touched.clear()


@pytest.fixture
def watched(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "old").mkdir()
    (root / "old" / "deep").mkdir()
    rec = Recorder()
    w = InotifyWatcher(root, rec.on_touched, rec.on_rescan).start()
    yield root, rec, w
    w.stop()


def test_watcher_sees_file_create_modify_chmod_delete_rename(watched) -> None:
    root, rec, w = watched
    assert w.watched() == 3  # the root and both existing directories, before start returned
    (root / "f").write_bytes(b"1")
    rec.wait(lambda s: "f" in s, "create")
    for change, act in [("modify", lambda: (root / "old" / "deep" / "g").write_bytes(b"2")),
                        ("chmod", lambda: os.chmod(root / "f", 0o700)),
                        ("rename", lambda: os.rename(root / "f", root / "old" / "f2")),
                        ("delete", lambda: os.unlink(root / "old" / "f2"))]:
        rec.clear()
        act()
        expect = {"modify": {"old/deep/g"}, "chmod": {"f"}, "rename": {"f", "old/f2"}, "delete": {"old/f2"}}[change]
        rec.wait(lambda s: expect <= s, change)
    assert rec.rescans == 0


def test_watcher_never_reports_temp_files(watched) -> None:
    root, rec, w = watched
    tmp = root / ("x" + TEMP_SUFFIX)
    tmp.write_bytes(b"data")
    os.chmod(tmp, 0o644)
    os.rename(tmp, root / "x")
    (root / "y" ).write_bytes(b"marker")
    seen = rec.wait(lambda s: "y" in s and "x" in s, "the placed file and a marker")
    assert not any(p.endswith(TEMP_SUFFIX) for p in seen)


def test_watcher_nested_mkdir_with_files_is_covered(watched) -> None:
    root, rec, w = watched
    deep = root / "n1" / "n2" / "n3"
    deep.mkdir(parents=True)
    (deep / "early").write_bytes(b"made before its directory could be watched")
    rec.wait(lambda s: "n1" in s, "the new directory")
    end = time.monotonic() + 5
    while w.watched() < 6 and time.monotonic() < end:
        time.sleep(0.01)
    assert w.watched() == 6  # root, old, old/deep, n1, n1/n2, n1/n2/n3
    rec.clear()
    (deep / "late").write_bytes(b"after")
    rec.wait(lambda s: "n1/n2/n3/late" in s, "a file in the deepest new directory")


def test_watcher_dir_rename_reports_new_paths_and_moved_out_dirs_go_quiet(watched, tmp_path: Path) -> None:
    root, rec, w = watched
    os.rename(root / "old", root / "new")
    rec.wait(lambda s: {"old", "new"} <= s, "the rename")
    rec.clear()
    (root / "new" / "deep" / "h").write_bytes(b"x")
    rec.wait(lambda s: "new/deep/h" in s, "an edit under the renamed dir")
    assert not any(p.startswith("old") for p in rec.touched)
    os.rename(root / "new", tmp_path / "outside")
    rec.wait(lambda s: "new" in s, "the move out")
    end = time.monotonic() + 5
    while w.watched() != 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert w.watched() == 1
    rec.clear()
    (tmp_path / "outside" / "deep" / "i").write_bytes(b"x")
    (root / "marker").write_bytes(b"x")
    seen = rec.wait(lambda s: "marker" in s, "a marker after the edit outside")
    assert seen == {"marker"}
    assert rec.rescans == 0


def test_watcher_one_callback_per_read_and_stop_is_prompt(tmp_path: Path) -> None:
    rec = Recorder()
    release = threading.Event()

    def held(rels: list[str]) -> None:
        release.wait(10)  # the first read's callback holds the reader until all the files are written
        rec.on_touched(rels)

    w = InotifyWatcher(tmp_path, held, rec.on_rescan).start()
    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(b"x")
    release.set()
    rec.wait(lambda s: len(s) == 200, "200 files")
    assert len(rec.batches) <= 3  # ~800 events: the first read, then everything queued meanwhile in one read
    assert sum(len(b) for b in rec.batches) < 400  # a path once per read, not once per event (~4 each)
    t = time.monotonic()
    w.stop()
    w.stop()  # idempotent
    assert time.monotonic() - t < 1.0
    assert not w.running


def test_watcher_real_queue_overflow_asks_for_a_rescan(tmp_path: Path) -> None:
    """Block the reader in its callback while more events than the kernel queues (max_queued_events) happen."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make quickly")
    rec = Recorder()
    release = threading.Event()

    def slow(rels: list[str]) -> None:
        release.wait(10)
        rec.on_touched(rels)

    w = InotifyWatcher(tmp_path, slow, rec.on_rescan).start()
    try:
        f = tmp_path / "f"
        f.write_bytes(b"x")
        fd = os.open(f, os.O_WRONLY)
        try:
            for _ in range(limit + 100):  # one IN_MODIFY each; identical consecutive events are merged,
                os.write(fd, b"y")        # so alternate with an attrib change
                os.fchmod(fd, 0o600)
                os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        release.set()
        end = time.monotonic() + 10
        while rec.rescans == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert rec.rescans >= 1
        (tmp_path / "after").write_bytes(b"x")
        rec.wait(lambda s: "after" in s, "events after the overflow")
    finally:
        release.set()
        w.stop()


def test_watcher_root_deleted_asks_for_a_rescan(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    rec = Recorder()
    w = InotifyWatcher(root, rec.on_touched, rec.on_rescan).start()
    try:
        root.rmdir()
        end = time.monotonic() + 5
        while rec.rescans == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert rec.rescans >= 1
    finally:
        w.stop()


def test_watcher_watches_a_root_that_was_deleted_and_made_again(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    rec = Recorder()
    w = InotifyWatcher(root, rec.on_touched, rec.on_rescan).start()
    try:
        shutil.rmtree(root)
        _wait(lambda: rec.rescans >= 1 and w.watched() == 0, "the root's loss noticed")
        before = rec.rescans
        (root / "new").mkdir(parents=True)                  # back, with a subdirectory: both watched again
        _wait(lambda: w.watched() == 2 and rec.rescans > before, "the root watched again", timeout=5)
        rec.clear()
        (root / "new" / "f").write_bytes(b"after")
        rec.wait(lambda s: "new/f" in s, "a change in the re-made root")
    finally:
        w.stop()


def test_watcher_drops_a_root_moved_away_and_watches_its_replacement(tmp_path: Path) -> None:
    root, away = tmp_path / "r", tmp_path / "away"
    root.mkdir()
    rec = Recorder()
    w = InotifyWatcher(root, rec.on_touched, rec.on_rescan).start()
    try:
        os.rename(root, away)
        _wait(lambda: w.watched() == 0, "the moved root unwatched")
        rec.clear()
        (away / "elsewhere").write_bytes(b"not ours any more")   # inotify would still report it as "elsewhere"
        root.mkdir()
        _wait(lambda: w.watched() == 1, "the new root watched")
        (root / "here").write_bytes(b"ours")
        seen = rec.wait(lambda s: "here" in s, "a change in the new root")
        assert "elsewhere" not in seen
    finally:
        w.stop()


def test_watcher_failing_callback_is_logged_and_turns_into_a_rescan(tmp_path: Path, caplog) -> None:
    rec = Recorder()

    def broken(rels: list[str]) -> None:
        raise RuntimeError("callback bug")

    w = InotifyWatcher(tmp_path, broken, rec.on_rescan).start()
    try:
        (tmp_path / "a").write_bytes(b"x")
        end = time.monotonic() + 5
        while rec.rescans == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert rec.rescans >= 1 and w.running
        assert "inotify watcher failed" in caplog.text
    finally:
        w.stop()


_ENOSPC_SCRIPT = r"""
import json, logging, os, sys, time
from pathlib import Path
Path("/proc/sys/user/max_inotify_watches").write_text("3")  # this user namespace only
from pcloud.inotify import InotifyWatcher
root = Path(sys.argv[1])
for d in ("a/b/c", "x", "y"):
    (root / d).mkdir(parents=True)
logs = []
class Keep(logging.Handler):
    def emit(self, record):
        logs.append(record.getMessage())
logging.getLogger("pcloud.inotify").addHandler(Keep())
rescans = []
touched = []
w = InotifyWatcher(root, touched.extend, lambda: rescans.append(1)).start()
at_start = len(rescans)
(root / "new1").mkdir()
(root / "new2").mkdir()
(root / "f").write_bytes(b"x")
end = time.monotonic() + 5
while "f" not in touched and time.monotonic() < end:
    time.sleep(0.01)
w.stop()
print(json.dumps({"watched": w.watched(), "at_start": at_start, "rescans": len(rescans), "logs": logs,
                  "touched": sorted(set(touched))}))
"""


def test_watcher_out_of_watches_warns_once_and_asks_for_rescans(tmp_path: Path) -> None:
    """ENOSPC for real: a user namespace whose own max_inotify_watches is 3 (the host's limit is untouched)."""
    import json
    import shutil
    import subprocess
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(["unshare", "-U", "-r", "sh", "-c", "echo 3 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace with its own inotify limit: {probe.stderr.decode().strip()}")
    out = subprocess.run(["unshare", "-U", "-r", sys.executable, "-c", _ENOSPC_SCRIPT, str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["watched"] == 3
    assert res["at_start"] >= 1 and res["rescans"] > res["at_start"]  # at start, and again for new dirs
    warnings = [m for m in res["logs"] if "max_user_watches" in m]
    assert len(warnings) == 1, res["logs"]
    assert "f" in res["touched"]  # what is watched keeps working


def test_watcher_on_a_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.WatcherError, match="cannot watch"):
        InotifyWatcher(tmp_path / "missing", lambda r: None, lambda: None).start()


# ------------------------------------------------------------------------------- FolderSync, both watchers
@pytest.mark.parametrize("watcher", ["inotify", "watchdog"])
def test_folder_sync_with_each_watcher_commits_local_changes(tmp_path: Path, monkeypatch, watcher: str) -> None:
    monkeypatch.setenv("PCLOUD_WATCHER", watcher)
    vault = pcloud.Vault.create(tmp_path / "v", name="laptop")
    local = tmp_path / "local"
    mine = pcloud.Vault.open(tmp_path / "v")
    try:
        with FolderSync(mine, local, "docs", debounce=0.05, max_delay=0.3) as fs:
            assert fs.watcher == watcher
            fs.wait_cycle()
            (local / "a" / "b").mkdir(parents=True)
            (local / "a" / "b" / "f.txt").write_bytes(b"hello")
            _wait(lambda: _files(vault, "docs") == {"docs/a/b/f.txt": b"hello"}, "the new file committed")
            os.rename(local / "a", local / "z")
            _wait(lambda: _files(vault, "docs") == {"docs/z/b/f.txt": b"hello"}, "the rename committed")
            (local / "z" / "b" / "f.txt").write_bytes(b"edited")
            _wait(lambda: _files(vault, "docs") == {"docs/z/b/f.txt": b"edited"}, "the edit committed")
    finally:
        mine.close()
        vault.close()


def test_folder_sync_refuses_an_unknown_watcher_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PCLOUD_WATCHER", "fsevents")
    with pcloud.Vault.create(tmp_path / "v", name="laptop") as vault:
        fs = FolderSync(vault, tmp_path / "local")
        with pytest.raises(errors.BadArgument, match="PCLOUD_WATCHER"):
            fs.start()
        assert not fs.running


def _files(v: pcloud.Vault, prefix: str) -> dict[str, bytes]:
    head = v.refs.get("main").hex()
    try:
        entries = v.ls(prefix, recursive=True, ref=head)
    except errors.NotFound:
        return {}
    return {e.path: v.read(e.path, ref=head) for e in entries if e.kind == "file"}


def _wait(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_tree_reports_files_closed_or_moved_in_as_settled_until_written_again() -> None:
    t = tree_with(docs=2)
    out = t.feed([ev(1, IN_CREATE, "a"), ev(1, IN_MODIFY, "a"), ev(1, IN_CLOSE_WRITE, "a"), ev(1, IN_ATTRIB, "a"),
                  ev(2, IN_MOVED_TO, "b", cookie=9), ev(1, IN_CLOSE_WRITE, "c"), ev(1, IN_MODIFY, "c"),
                  ev(1, IN_CREATE, "d"), ev(1, IN_CLOSE_WRITE, "e"), ev(1, IN_DELETE, "e")])
    assert out.touched == ("a", "docs/b", "c", "d", "e")
    assert out.settled == ("a", "docs/b")   # c written again, d still open, e gone


def test_finished_files_in_a_directory_new_to_the_tree_are_reported_settled(tmp_path: Path) -> None:
    """They arrived before their directory was watched: no event of theirs will ever say they were closed."""
    import threading as _threading
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "d" / "sub").mkdir(parents=True)
    old = time.time() - 60
    for name, size in (("d/big.bin", 5000), ("d/sub/big2.bin", 6000), ("d/small.bin", 10), ("d/fresh.bin", 7000)):
        (outside / name).write_bytes(b"x" * size)
        if name != "d/fresh.bin":
            os.utime(outside / name, (old, old))
    settled: list[str] = []
    touched: list[str] = []
    seen = _threading.Event()

    def on_settled(rels: list[str]) -> None:
        settled.extend(rels)
        seen.set()

    w = InotifyWatcher(root, touched.extend, lambda: None, on_settled=on_settled, walk_settle_min=1000).start()
    try:
        os.rename(outside / "d", root / "d")  # a directory moved in whole
        assert seen.wait(5)
        time.sleep(0.1)
    finally:
        w.stop()
    assert sorted(settled) == ["d/big.bin", "d/sub/big2.bin"]   # not the small one, not the one just written
    assert {"d", "d/big.bin", "d/sub/big2.bin"} <= set(touched)
