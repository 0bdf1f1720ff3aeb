"""Watched folders: real directories, the real watcher (inotify on Linux; PCLOUD_WATCHER=watchdog for
watchdog), real vaults in tmp dirs.

Two `Vault` handles opened on one vault directory stand for two devices on
one vault (each FolderSync uses its own handle from its own worker thread);
a third handle is used by the test itself to look at the vault.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import pcloud
from pcloud import errors
from pcloud.folders import Committed, ConflictKept, FolderSync, SyncProblem, parse_folder_spec
from pcloud.ignore import IgnoreRules
from pcloud.inotify import IN_Q_OVERFLOW

REPO = Path(__file__).resolve().parent.parent


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def vdir(tmp_path: Path) -> Path:
    v = pcloud.Vault.create(tmp_path / "vault", name="laptop")
    v.close()
    return tmp_path / "vault"


@pytest.fixture
def handles(vdir: Path):
    opened: list[pcloud.Vault] = []

    def open_one() -> pcloud.Vault:
        v = pcloud.Vault.open(vdir)
        opened.append(v)
        return v

    yield open_one
    for v in opened:
        v.close()


def files_of(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def vault_files(v: pcloud.Vault, prefix: str) -> dict[str, bytes]:
    head = v.refs.get("main").hex()  # one snapshot: a syncer may commit while we read
    try:
        entries = v.ls(prefix, recursive=True, ref=head)
    except errors.NotFound:
        return {}
    cut = len(prefix) + 1 if prefix else 0
    return {e.path[cut:]: v.read(e.path, ref=head) for e in entries if e.kind == "file"}


# ------------------------------------------------------------------------- ignore rules

def test_ignore_rules_gitignore_subset() -> None:
    r = IgnoreRules.parse("# comment\n*.log\n!keep.log\nbuild/\n/top.txt\ndocs/*.tmp\n**/cache\nlogs/**\n\\#hash\n")
    assert r.ignored("a.log") and r.ignored("deep/down/a.log")
    assert not r.ignored("keep.log")
    assert r.ignored("build", is_dir=True) and r.ignored("build/x.c") and r.ignored("src/build/x.c")
    assert not r.ignored("build")  # 'build/' matches directories only; a file named build syncs
    assert r.ignored("top.txt") and not r.ignored("sub/top.txt")  # leading '/' anchors
    assert r.ignored("docs/a.tmp") and not r.ignored("x/docs/a.tmp")
    assert r.ignored("a/b/cache", is_dir=True) and r.ignored("cache/f")
    assert r.ignored("logs/a/b") and not r.ignored("logs", is_dir=False)
    assert r.ignored("#hash") and not r.ignored("comment")
    # built-ins: editor temp files and our own temp names; .pcloudignore is never ignored
    for name in (".a.txt.swp", "a.txt~", ".#a.txt", "4913", ".x.1234.pcloud-tmp", "sub/.y.pcloud-tmp"):
        assert r.ignored(name), name
    assert not IgnoreRules.parse("*\n").ignored(".pcloudignore")
    assert not IgnoreRules.parse("!*.swp\n").ignored(".a.swp")  # a user may re-include a built-in
    assert IgnoreRules.parse("!*.pcloud-tmp\n").ignored(".a.pcloud-tmp")  # but never our temp files


from hypothesis import given, settings, strategies as st  # noqa: E402

_NAMES = st.sampled_from(["a", "b.log", "build", "x.tmp", "keep.log", ".c.swp", "d~", "cache", "ab"])
_PATTERNS = st.sampled_from(["*.log", "!keep.log", "build/", "/a", "a/b.log", "**/cache", "cache/**", "x.*",
                             "?b", "[ab]", "!a", "d*", "**", "b*/", "!build/", "a/**/b.log"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERNS, max_size=6), st.lists(_NAMES, min_size=1, max_size=4), st.booleans())
def test_ignore_prefilter_agrees_with_rule_by_rule_matching(patterns, names, is_dir) -> None:
    rules = IgnoreRules.parse("\n".join(patterns))
    path = "/".join(names)

    def slow(p: str, d: bool) -> bool:  # last match wins, every rule tried
        out = False
        for r in rules.rules:
            if (d or not r.dir_only) and r.regex.match(p):
                out = not r.negate
        return out

    parts = path.split("/")
    want = any(slow("/".join(parts[:k]), True) for k in range(1, len(parts))) or slow(path, is_dir)
    if path.endswith(".pcloud-tmp"):
        want = True
    assert rules.ignored(path, is_dir) == want


# ---------------------------------------------------------------------- vault.commit_at

def test_commit_at_refuses_a_moved_head(handles) -> None:
    v = handles()
    head = v.refs.get("main")
    v.write("a.txt", b"1")
    with pytest.raises(errors.ConflictError):
        with v.commit_at(head, "stale") as tx:
            tx.write("b.txt", b"2")
    assert not v.exists("b.txt")
    with v.commit_at(v.refs.get("main"), "fresh") as tx:
        tx.write("b.txt", b"2")
        tx.remove_entry("a.txt")
    assert [e.path for e in v.ls()] == ["b.txt"]


# ------------------------------------------------------------------ sync_once, no watcher

def test_two_folders_converge_with_sync_once(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    (a / "x.txt").write_bytes(b"hello")
    (a / "sub").mkdir()
    (a / "sub" / "y.bin").write_bytes(os.urandom(100_000))
    os.chmod(a / "sub" / "y.bin", 0o755)
    fa, fb = FolderSync(handles(), a, "docs"), FolderSync(handles(), b, "docs")
    r = fa.sync_once()
    assert r.local_changes == 2 and r.committed
    r = fb.sync_once()
    assert r.applied == 2 and r.committed is None
    assert files_of(a) == files_of(b)
    assert os.stat(b / "sub" / "y.bin").st_mode & 0o111
    assert os.stat(b / "x.txt").st_mtime_ns == os.stat(a / "x.txt").st_mtime_ns
    # a second pass on each side changes nothing (no echo)
    assert fa.sync_once().committed is None and fb.sync_once().committed is None
    # modify, delete, rename a directory in B; A follows
    (b / "x.txt").write_bytes(b"hello again")
    os.rename(b / "sub", b / "moved")
    (b / "new.txt").write_bytes(b"n")
    r = fb.sync_once()
    assert r.local_changes == 4  # x modified, sub/y removed, moved/y added, new added
    log = handles().diff()
    assert any(c.kind == "renamed" and c.path == "docs/moved/y.bin" for c in log)
    fa.sync_once()
    assert files_of(a) == files_of(b)
    assert not (a / "sub").exists()  # the emptied directory went too
    (a / "new.txt").unlink()
    fa.sync_once()
    fb.sync_once()
    assert not (b / "new.txt").exists()
    assert files_of(a) == files_of(b)


def test_edit_vs_edit_keeps_both_and_loses_no_byte(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    fa, fb = FolderSync(handles(), a), FolderSync(handles(), b)
    (a / "report.txt").write_bytes(b"base")
    fa.sync_once()
    fb.sync_once()
    (a / "report.txt").write_bytes(b"edited on A")
    (b / "report.txt").write_bytes(b"edited on B, longer")
    fa.sync_once()
    events: list = []
    fb._on_event = events.append
    r = fb.sync_once()
    assert len(r.conflicts) == 1
    c = r.conflicts[0]
    assert c.path == "report.txt" and c.copy_path.startswith("report.conflict-") and c.copy_path.endswith(".txt")
    assert any(isinstance(e, ConflictKept) for e in events)
    fa.sync_once()
    for side in (a, b):
        assert (side / "report.txt").read_bytes() == b"edited on B, longer"  # the local edit stays in place
        assert (side / c.copy_path).read_bytes() == b"edited on A"      # the remote one is the copy
    assert files_of(a) == files_of(b)


def test_delete_vs_edit_keeps_the_edit_both_ways(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    fa, fb = FolderSync(handles(), a), FolderSync(handles(), b)
    (a / "one.txt").write_bytes(b"1")
    (a / "two.txt").write_bytes(b"2")
    fa.sync_once()
    fb.sync_once()
    # remote delete vs local edit
    (a / "one.txt").unlink()
    (b / "one.txt").write_bytes(b"1 edited on B")
    # local delete vs remote edit
    (a / "two.txt").write_bytes(b"2 edited on A")
    (b / "two.txt").unlink()
    fa.sync_once()
    r = fb.sync_once()
    assert {c.path for c in r.conflicts} == {"one.txt", "two.txt"}
    fa.sync_once()
    for side in (a, b):
        assert (side / "one.txt").read_bytes() == b"1 edited on B"
        assert (side / "two.txt").read_bytes() == b"2 edited on A"
    assert files_of(a) == files_of(b) and len(files_of(a)) == 2


def test_head_moving_during_commit_is_reconciled_not_replayed(tmp_path: Path, handles) -> None:
    """The vault-side race: B's cycle read head H, then A committed the same path before B's commit."""
    a, b = tmp_path / "A", tmp_path / "B"
    va, vb = handles(), handles()
    fa, fb = FolderSync(va, a), FolderSync(vb, b)
    (a / "f.txt").write_bytes(b"base")
    fa.sync_once()
    fb.sync_once()
    (b / "f.txt").write_bytes(b"B's edit")
    real_commit_at = vb.commit_at
    raced = []

    def commit_at_after_a_race(head, message, **kw):
        if not raced:  # A's edit lands between B reading the head and B committing on it
            raced.append(1)
            (a / "f.txt").write_bytes(b"A's edit")
            fa.sync_once()
        return real_commit_at(head, message, **kw)

    vb.commit_at = commit_at_after_a_race  # type: ignore[method-assign]
    r = fb.sync_once()
    assert raced and len(r.conflicts) == 1
    fa.sync_once()
    for side in (a, b):
        assert (side / "f.txt").read_bytes() == b"B's edit"
        assert (side / r.conflicts[0].copy_path).read_bytes() == b"A's edit"


def test_pcloudignore_is_honoured_and_syncs(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    (a / ".pcloudignore").write_text("# build output\n*.log\n!keep.log\nbuild/\n")
    for name in ("a.txt", "x.log", "keep.log", "build/out.o", "src/build/deep.o", ".a.txt.swp", "a.txt~"):
        (a / name).parent.mkdir(parents=True, exist_ok=True)
        (a / name).write_bytes(name.encode())
    fa, fb = FolderSync(handles(), a, "p"), FolderSync(handles(), b, "p")
    fa.sync_once()
    viewer = handles()
    assert sorted(vault_files(viewer, "p")) == [".pcloudignore", "a.txt", "keep.log"]
    fb.sync_once()
    assert sorted(files_of(b)) == [".pcloudignore", "a.txt", "keep.log"]
    # B's rules came with the file: B's own log files stay local
    (b / "debug.log").write_bytes(b"noise")
    assert fb.sync_once().committed is None
    # an ignored path written into the vault by someone else is not put on disk
    viewer.write("p/remote.log", b"r")
    fb.sync_once()
    assert not (b / "debug.log").read_bytes() == b"" and not (b / "remote.log").exists()
    # changing the rules re-includes files that were already there
    (b / ".pcloudignore").write_text("build/\n")
    fb.sync_once()
    assert "debug.log" in vault_files(viewer, "p")
    fa.sync_once()
    assert (a / "remote.log").read_bytes() == b"r" and (a / "debug.log").read_bytes() == b"noise"
    assert (a / "x.log").exists()  # A's local x.log is now committed too
    assert "x.log" in vault_files(viewer, "p")
    # a synced file that becomes ignored is not deleted from the vault
    (a / ".pcloudignore").write_text("build/\na.txt\n")
    fa.sync_once()
    assert "a.txt" in vault_files(viewer, "p") and (a / "a.txt").exists()


def test_symlinks_and_fifos_are_skipped_with_a_report(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    a.mkdir()
    (a / "real.txt").write_bytes(b"r")
    os.symlink("real.txt", a / "link.txt")
    os.mkfifo(a / "pipe")
    events: list = []
    fa = FolderSync(handles(), a, on_event=events.append)
    fa.sync_once()
    assert sorted(vault_files(handles(), "")) == ["real.txt"]
    skipped = {e.path for e in events if isinstance(e, SyncProblem)}
    assert skipped == {"link.txt", "pipe"}
    fa.sync_once()
    assert len([e for e in events if isinstance(e, SyncProblem)]) == 2  # reported once, not every cycle


def test_unwritable_directory_is_retried_not_fatal(tmp_path: Path, handles) -> None:
    if not shutil.which("chattr"):
        pytest.skip("needs chattr (e2fsprogs) to make a directory unwritable even for root")
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "d").mkdir(parents=True)
    (a / "d" / "one.txt").write_bytes(b"1")
    fa, fb = FolderSync(handles(), a), FolderSync(handles(), b)
    fa.sync_once()
    fb.sync_once()
    (a / "d" / "two.txt").write_bytes(b"2")
    fa.sync_once()
    if subprocess.run(["chattr", "+i", str(b / "d")], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        events: list = []
        fb._on_event = events.append
        r = fb.sync_once()
        assert r.pending == 1 and any(isinstance(e, SyncProblem) and e.path == "d/two.txt" for e in events)
        assert not (b / "d" / "two.txt").exists()
    finally:
        subprocess.run(["chattr", "-i", str(b / "d")], check=True)
    r = fb.sync_once()
    assert r.pending == 0 and (b / "d" / "two.txt").read_bytes() == b"2"


def test_restart_resumes_from_saved_state(tmp_path: Path, vdir: Path) -> None:
    a = tmp_path / "A"
    a.mkdir()
    for i in range(50):
        (a / f"f{i}.txt").write_bytes(b"x" * i)
    with pcloud.Vault.open(vdir) as v:
        FolderSync(v, a).sync_once()
    (a / "f3.txt").write_bytes(b"changed while stopped")
    (a / "f4.txt").unlink()
    with pcloud.Vault.open(vdir) as v:
        before = len(v.log())
        r = FolderSync(v, a).sync_once()
        assert r.local_changes == 2 and r.applied == 0
        assert len(v.log()) == before + 1
        assert v.read("f3.txt") == b"changed while stopped"


# -------------------------------------------------------------------- with the watcher

def test_watcher_local_changes_become_commits_one_per_burst(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    a.mkdir()
    viewer = handles()
    commits: list[Committed] = []
    # a generous debounce: on a loaded CI machine the 30 writes themselves may take a while
    with FolderSync(handles(), a, "w", debounce=0.5, max_delay=5.0,
                    on_event=lambda e: isinstance(e, Committed) and commits.append(e)) as fs:
        fs.wait_cycle()
        n0 = len(viewer.log())
        for i in range(30):
            (a / f"burst{i}.txt").write_bytes(b"%d" % i)
        wait_for(lambda: len(vault_files(viewer, "w")) == 30, what="the burst committed")
        time.sleep(0.4)
        assert len(viewer.log()) == n0 + 1, [(c.message, c.time_ns) for c in viewer.log()]
        (a / "burst1.txt").write_bytes(b"modified")
        wait_for(lambda: vault_files(viewer, "w").get("burst1.txt") == b"modified", what="modify")
        (a / "burst2.txt").unlink()
        wait_for(lambda: "burst2.txt" not in vault_files(viewer, "w"), what="delete")
        os.rename(a / "burst3.txt", a / "renamed.txt")
        wait_for(lambda: "renamed.txt" in vault_files(viewer, "w"), what="rename")
        assert "burst3.txt" not in vault_files(viewer, "w")
        assert any(c.kind == "renamed" and c.old_path == "w/burst3.txt" for c in viewer.diff())
        (a / "dir").mkdir()
        (a / "dir" / "in.txt").write_bytes(b"i")
        os.rename(a / "dir", a / "dir2")  # a directory moved: its files move in the vault
        wait_for(lambda: "dir2/in.txt" in vault_files(viewer, "w") and "dir/in.txt" not in vault_files(viewer, "w"),
                 what="directory rename")
    assert len(commits) >= 5


def test_watchers_on_two_folders_converge(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    b_commits: list[Committed] = []
    with FolderSync(handles(), a, "s"), \
            FolderSync(handles(), b, "s", on_event=lambda e: isinstance(e, Committed) and b_commits.append(e)):
        (a / "from_a.txt").write_bytes(b"a")
        wait_for(lambda: (b / "from_a.txt").exists(), what="A -> B")
        time.sleep(0.5)
        assert b_commits == [], "B's own write of A's file came back as a local change (echo)"
        (b / "sub").mkdir()
        (b / "sub" / "from_b.txt").write_bytes(b"b")
        wait_for(lambda: (a / "sub" / "from_b.txt").exists(), what="B -> A")
        (a / "from_a.txt").write_bytes(b"a2")
        wait_for(lambda: (b / "from_a.txt").read_bytes() == b"a2", what="modify A -> B")
        os.rename(b / "sub", b / "sub2")
        wait_for(lambda: (a / "sub2" / "from_b.txt").exists() and not (a / "sub").exists(), what="rename B -> A")
        (a / "from_a.txt").unlink()
        wait_for(lambda: not (b / "from_a.txt").exists(), what="delete A -> B")
        time.sleep(0.5)  # let any echo show itself
        assert files_of(a) == files_of(b) == {"sub2/from_b.txt": b"b"}


def test_remote_change_is_written_atomically(tmp_path: Path, handles) -> None:
    """A reader polling the final path only ever sees nothing or the complete file."""
    b = tmp_path / "B"
    b.mkdir()
    viewer = handles()
    big = os.urandom(24 << 20)
    digest = hashlib.sha256(big).digest()
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        target = b / "big.bin"
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            seen.append(len(data))
            assert hashlib.sha256(data).digest() == digest, f"partial file of {len(data)} bytes seen"

    with FolderSync(handles(), b) as fs:
        fs.wait_cycle()
        t = threading.Thread(target=reader)
        t.start()
        try:
            viewer.write("big.bin", big)
            fs.on_remote_change()
            wait_for(lambda: seen, timeout=30, what="the file to appear")
        finally:
            stop.set()
            t.join()
    assert set(seen) == {len(big)}
    assert not [p for p in b.iterdir() if p.name.endswith(".pcloud-tmp")]


def test_local_write_committed_quickly(tmp_path: Path, handles) -> None:
    """Loose latency check (the bench measures it precisely): a 1 KiB file is committed well within 2 s."""
    a = tmp_path / "A"
    a.mkdir()
    viewer = handles()
    lat = []
    with FolderSync(handles(), a) as fs:
        fs.wait_cycle()
        for i in range(5):
            head = viewer.refs.get("main")
            t = time.monotonic()
            (a / f"l{i}.bin").write_bytes(os.urandom(1024))
            wait_for(lambda: viewer.refs.get("main") != head, what="commit")
            lat.append(time.monotonic() - t)
    lat.sort()
    assert lat[2] < 2.0, lat


def test_file_being_written_is_committed_once_stable(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    a.mkdir()
    viewer = handles()
    with FolderSync(handles(), a, debounce=0.05) as fs:
        fs.wait_cycle()
        with open(a / "growing.bin", "wb") as f:
            for _ in range(20):
                f.write(os.urandom(64 << 10))
                f.flush()
                time.sleep(0.03)
        final = (a / "growing.bin").read_bytes()
        wait_for(lambda: vault_files(viewer, "").get("growing.bin") == final, what="the final content")


CHILD = r"""
import sys, pcloud
from pcloud.folders import FolderSync
v = pcloud.Vault.open(sys.argv[1])
print("ready", flush=True)
FolderSync(v, sys.argv[2]).sync_once()
print("done", flush=True)
"""


@pytest.mark.slow
def test_sigkill_mid_apply_leaves_no_partial_file(tmp_path: Path, vdir: Path) -> None:
    b = tmp_path / "B"
    expected = {}
    with pcloud.Vault.open(vdir) as v:
        with v.commit("many files") as tx:
            for i in range(60):
                data = os.urandom(256 << 10)
                expected[f"d{i % 4}/f{i}.bin"] = data
                tx.write(f"d{i % 4}/f{i}.bin", data)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(vdir), str(b)], stdout=subprocess.PIPE,
                            cwd=REPO, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # temp files first (a batch is made durable with one syncfs, then renamed into place)
        wait_for(lambda: b.exists() and sum(1 for p in b.rglob("*") if p.is_file()) >= 10, timeout=30,
                 what="apply to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    on_disk = {p.relative_to(b).as_posix(): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    finals = {k: d for k, d in on_disk.items() if not k.endswith(".pcloud-tmp")}
    assert len(finals) < len(expected), "the kill should land mid-apply"
    for k, d in finals.items():
        assert d == expected[k], f"{k} is partial at its final path"
    with pcloud.Vault.open(vdir) as v:
        r = FolderSync(v, b).sync_once()
        assert r.committed is None  # nothing on disk is mistaken for a local edit
    after = files_of(b)
    assert after == expected  # complete, and the stale temp files are gone


def test_rules_edited_while_stopped_take_effect_at_restart(tmp_path: Path, vdir: Path, handles) -> None:
    b = tmp_path / "B"
    b.mkdir()
    (b / ".pcloudignore").write_text("*.log\n")
    viewer = handles()
    viewer.write("r.log", b"remote log")
    with pcloud.Vault.open(vdir) as v:
        FolderSync(v, b).sync_once()
    assert not (b / "r.log").exists()
    (b / ".pcloudignore").write_text("# nothing ignored now\n")
    with pcloud.Vault.open(vdir) as v:
        FolderSync(v, b).sync_once()
    assert (b / "r.log").read_bytes() == b"remote log"


def test_missed_events_are_caught_by_rescans(tmp_path: Path, handles) -> None:
    """With the watch removed (events lost), an overflow report and the periodic rescan still find changes."""
    import logging
    a = tmp_path / "A"
    a.mkdir()
    viewer = handles()
    with FolderSync(handles(), a, rescan_interval=1.5) as fs:
        fs.wait_cycle()
        # from now on no event arrives, as after an inotify overflow
        inotify = fs._inotify
        if inotify is not None:
            inotify.stop()
        else:
            fs._observer.unschedule_all()
        (a / "unseen.txt").write_bytes(b"u")
        time.sleep(0.4)
        assert "unseen.txt" not in vault_files(viewer, "")
        if inotify is not None:  # the kernel's overflow event, through the watcher's own read handler
            inotify._handle(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
        else:  # watchdog's own overflow warning makes every syncer rescan at once
            logging.getLogger("watchdog.observers.inotify_c").warning(
                "Inotify queue overflowed; filesystem events were lost")
        wait_for(lambda: "unseen.txt" in vault_files(viewer, ""), timeout=1.0, what="rescan after overflow")
        (a / "later.txt").write_bytes(b"l")
        wait_for(lambda: "later.txt" in vault_files(viewer, ""), timeout=5, what="periodic rescan")


def test_parse_folder_spec() -> None:
    assert parse_folder_spec("/data/docs=work/docs") == ("/data/docs", "work/docs")
    assert parse_folder_spec("/data/all") == ("/data/all", "")
    with pytest.raises(errors.BadArgument):
        parse_folder_spec("=x")
    with pytest.raises(errors.BadPath):
        parse_folder_spec("/d=../escape")


ROUNDS = int(os.environ.get("PCLOUD_FOLDER_ROUNDS", "12"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_concurrent_edits_converge_and_keep_every_edit(tmp_path: Path, handles, seed: int) -> None:
    """Random creates/edits/deletes/renames on two folders between syncs: both converge to the vault's
    content, and every file created or edited in a round is still there (at its path or as a conflict copy)."""
    import random
    rnd = random.Random(seed)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    fa, fb = FolderSync(handles(), a, "r"), FolderSync(handles(), b, "r")
    viewer = handles()
    pool = ["a.txt", "b.txt", "c", "d/x.txt", "d/y.txt", "d/e/z.bin", "f/w.txt"]
    for rnd_no in range(ROUNDS):
        fresh: set[bytes] = set()
        for side, name in ((a, "A"), (b, "B")):
            for i in range(rnd.randint(0, 4)):
                existing = [p for p in pool if (side / p).is_file()]
                op = rnd.choice(["write", "write", "delete", "rename"])
                if op == "write" or not existing:
                    p = rnd.choice(pool)
                    data = f"{name}{rnd_no}.{i}:".encode() + os.urandom(rnd.randint(0, 3000))
                    (side / p).parent.mkdir(parents=True, exist_ok=True)
                    (side / p).write_bytes(data)
                elif op == "delete":
                    (side / rnd.choice(existing)).unlink()
                else:
                    src, dst = rnd.choice(existing), rnd.choice(pool)
                    if not (side / dst).exists():
                        (side / dst).parent.mkdir(parents=True, exist_ok=True)
                        os.rename(side / src, side / dst)
        for side in (a, b):  # what each side created or edited this round and still has
            fresh.update(d for d in files_of(side).values() if d.startswith((b"A%d." % rnd_no, b"B%d." % rnd_no)))
        order = [fa, fb] if rnd.random() < 0.5 else [fb, fa]
        for fs in order + order:
            fs.sync_once()
        fa_files, fb_files = files_of(a), files_of(b)
        assert fa_files == fb_files, f"round {rnd_no}: folders differ"
        assert vault_files(viewer, "r") == fa_files, f"round {rnd_no}: vault differs"
        survivors = set(fa_files.values())
        lost = [d[:12] for d in fresh if d not in survivors]
        assert not lost, f"round {rnd_no}: edits lost: {lost}"


@pytest.mark.parametrize("seed", [7, 8])
def test_random_edits_with_running_watchers_converge(tmp_path: Path, handles, seed: int) -> None:
    """Both watchers running while both folders are edited at random: after the dust settles the folders
    and the vault are equal and every edit's content survives somewhere."""
    import random
    rnd = random.Random(seed)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    viewer = handles()
    pool = ["a.txt", "b.txt", "d/x.txt", "d/y.txt", "d/e/z.bin"]
    ops: list[tuple[str, bytes | None]] = []  # (path, content written or None for a delete), in order
    with FolderSync(handles(), a, debounce=0.05) as fa, FolderSync(handles(), b, debounce=0.05) as fb:
        fa.wait_cycle()
        fb.wait_cycle()
        for i in range(ROUNDS * 5):
            side, name = rnd.choice(((a, "A"), (b, "B")))
            p = rnd.choice(pool)
            if rnd.random() < 0.8:
                data = f"{name}.{i}:".encode() + os.urandom(rnd.randint(0, 2000))
                (side / p).parent.mkdir(parents=True, exist_ok=True)
                tmp = side / (p + ".tmpw~")  # editors save by rename; '*~' is ignored
                tmp.write_bytes(data)
                os.replace(tmp, side / p)
                ops.append((p, data))
            elif (side / p).exists():
                (side / p).unlink()
                ops.append((p, None))
            time.sleep(rnd.random() * 0.08)

        def settled() -> bool:
            fa.wait_cycle()
            fb.wait_cycle()
            fa.wait_cycle()
            return files_of(a) == files_of(b) == vault_files(viewer, "")

        wait_for(settled, timeout=30, what="convergence")
    final = set(files_of(a).values())
    # the last operation at each path, when a write, must survive (a later delete or write elsewhere may
    # have legitimately replaced earlier ones; concurrent ones are kept as conflict copies)
    last: dict[str, bytes | None] = {}
    for p, data in ops:
        last[p] = data
    missing = [p for p, data in last.items() if data is not None and data not in final]
    assert not missing, missing


UNREADABLE_CHILD = r"""
import bisect, json, os, sys
import pcloud
from pcloud.folders import FolderSync, SyncProblem
os.setgid(65534); os.setuid(65534)  # as 'nobody' (after imports: the interpreter lives under /root)
base = sys.argv[1]
v = pcloud.Vault.create(base + "/vault", name="n")
folder = base + "/A"
os.makedirs(folder)
open(folder + "/ok.txt", "w").write("fine")
open(folder + "/secret.txt", "w").write("later")
os.chmod(folder + "/secret.txt", 0)
events = []
fs = FolderSync(v, folder, on_event=events.append)
r1 = fs.sync_once()
after1 = sorted(e.path for e in v.ls())
os.chmod(folder + "/secret.txt", 0o644)
r2 = fs.sync_once()
print(json.dumps({"pending1": r1.pending, "after1": after1, "problems": [e.path for e in events if isinstance(e, SyncProblem)],
                  "pending2": r2.pending, "after2": sorted(e.path for e in v.ls()), "secret": v.read("secret.txt").decode()}))
"""


def test_unreadable_file_is_reported_and_retried(tmp_path: Path) -> None:
    import json
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root to run the syncer as an unprivileged user")
    base = tempfile.mkdtemp(prefix="pcloud-perm-")
    try:
        os.chmod(base, 0o777)
        out = subprocess.run([sys.executable, "-c", UNREADABLE_CHILD, base], capture_output=True, text=True,
                             cwd=REPO, timeout=60, env=dict(os.environ, HOME=base))
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert res["pending1"] == 1 and res["after1"] == ["ok.txt"] and res["problems"] == ["secret.txt"]
    assert res["pending2"] == 0 and res["after2"] == ["ok.txt", "secret.txt"] and res["secret"] == "later"


class RefusingRefs:
    """A branch table that reads like the real one but refuses every move, as the node's Raft-backed
    refs do without a quorum (a Refs implementation, not a mock of one: it has no expectations)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.tries = 0

    def get(self, name):
        return self.inner.get(name)

    def list(self):
        return self.inner.list()

    def cas(self, name, expected, new) -> bool:
        self.tries += 1
        return False


def test_refused_commit_keeps_changes_on_disk_and_retries(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    a.mkdir()
    v = handles()
    fs = FolderSync(v, a)
    fs.sync_once()
    (a / "offline.txt").write_bytes(b"written without quorum")
    real = v.refs
    v.refs = refusing = RefusingRefs(real)
    with pytest.raises(errors.ConflictError, match="did not move"):
        fs.sync_once()
    assert refusing.tries == 1  # no futile replays while main cannot move
    assert (a / "offline.txt").read_bytes() == b"written without quorum"
    v.refs = real
    r = fs.sync_once()
    assert r.local_changes == 1 and handles().read("offline.txt") == b"written without quorum"


def test_file_vs_directory_clash_loses_nothing_and_is_reported(tmp_path: Path, handles) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    events: list = []
    fa, fb = FolderSync(handles(), a), FolderSync(handles(), b, on_event=events.append)
    fa.sync_once()
    fb.sync_once()
    (a / "x").mkdir()
    (a / "x" / "inner.txt").write_bytes(b"in a directory")
    (b / "x").write_bytes(b"a file")
    fa.sync_once()
    r = fb.sync_once()
    assert r.pending == 2 and {e.path for e in events if isinstance(e, SyncProblem)} == {"x", "x/inner.txt"}
    assert (b / "x").read_bytes() == b"a file" and handles().read("x/inner.txt") == b"in a directory"
    (b / "x").rename(b / "x-file")  # the user resolves it
    fb.sync_once()
    fa.sync_once()
    assert files_of(a) == files_of(b) == {"x/inner.txt": b"in a directory", "x-file": b"a file"}


@pytest.mark.slow
def test_stop_during_a_long_first_import_is_prompt_and_resumable(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    for i in range(1500):  # more than one hashing batch (1000 files): stop lands between batches
        d = a / f"d{i // 500}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(b"%d" % i)
    v = handles()
    fs = FolderSync(v, a).start()
    time.sleep(0.3)
    t = time.monotonic()
    fs.stop()
    assert time.monotonic() - t < 5 and not fs.running
    r = FolderSync(v, a).sync_once()
    assert len(handles().ls(recursive=True)) == 1500 and r.pending == 0


def test_running_syncer_backs_off_when_refused_and_resumes_on_head_news(tmp_path: Path, handles) -> None:
    a = tmp_path / "A"
    a.mkdir()
    v = handles()
    real = v.refs
    problems: list[SyncProblem] = []
    with FolderSync(v, a, retry_interval=5.0,
                    on_event=lambda e: isinstance(e, SyncProblem) and problems.append(e)) as fs:
        fs.wait_cycle()
        v.refs = refusing = RefusingRefs(real)
        (a / "f.txt").write_bytes(b"no quorum yet")
        wait_for(lambda: problems, what="the refused commit to be reported")
        time.sleep(0.5)
        assert refusing.tries == 1  # backing off, not hammering the refs
        v.refs = real
        t = time.monotonic()
        fs.on_remote_change()  # what the node does when main can move again
        wait_for(lambda: handles().exists("f.txt"), timeout=3, what="the commit after the hint")
        assert time.monotonic() - t < 3.0


def test_folder_records_pack_round_trip_and_stat_check(tmp_path: Path) -> None:
    from pcloud.localindex import FolderFile, FolderRecords, LocalIndex
    from pcloud.folders_scan import FileStat
    big_ino = (1 << 64) - 1
    rec = FolderFile(123, -5, big_ino, 0o755, bytes(range(32)))
    recs = FolderRecords()
    recs["a/b.txt"] = rec
    assert recs["a/b.txt"] == rec and recs.get("a/b.txt") == rec and "a/b.txt" in recs and len(recs) == 1
    assert recs.same_stat("a/b.txt", FileStat(123, -5, big_ino, 0o100700))      # any exec bit = 0o755
    assert not recs.same_stat("a/b.txt", FileStat(123, -5, big_ino, 0o100644))  # exec bit dropped
    assert not recs.same_stat("a/b.txt", FileStat(124, -5, big_ino, 0o100755))
    assert not recs.same_stat("missing", FileStat(123, -5, big_ino, 0o100755))
    assert recs.get("missing") is None and recs.pop("missing", None) is None
    rec = rec._replace(ino=(1 << 63) - 1)  # SQLite INTEGER is signed 64-bit
    idx = LocalIndex(tmp_path / "index.db")
    try:
        idx.save_folder("f", b"t" * 32, b"c" * 32, {"a/b.txt": rec, "c": rec._replace(mode=0o644)}, set(), {"p"})
        tree, loaded, pending = idx.load_folder("f")
        assert tree == b"t" * 32 and pending == {"p"} and dict(loaded) == {"a/b.txt": rec, "c": rec._replace(mode=0o644)}
        assert loaded.pop("c") == rec._replace(mode=0o644) and list(loaded) == ["a/b.txt"]
    finally:
        idx.close()
