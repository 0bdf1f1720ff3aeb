"""Finished big files are stored while a burst's debounce window is still open (`SyncEngine.prehash`).

Real folders, the real inotify watcher and real vault handles. A long debounce
makes the window wide enough to look inside it: the file's content must be in
the store (the engine's early table) before the branch moves, and the commit
made when the window closes must hold exactly what is on disk then.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

import pcloud
from pcloud.folders import FolderSync
from pcloud.folders_engine import PREHASH_MIN

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="settled files come from inotify")]

WINDOW = 1.5


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while not (v := cond()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return v


@pytest.fixture
def setup(tmp_path: Path):
    pcloud.Vault.create(tmp_path / "vault", name="laptop").close()
    work, look = pcloud.Vault.open(tmp_path / "vault"), pcloud.Vault.open(tmp_path / "vault")
    folder = tmp_path / "folder"
    fs = FolderSync(work, folder, debounce=WINDOW, max_delay=4 * WINDOW)
    fs.start()
    wait_for(lambda: fs.last_result is not None, what="the first scan")
    try:
        yield fs, folder, look, tmp_path
    finally:
        fs.stop()
        work.close()
        look.close()


def move_in(tmp_path: Path, dest: Path, data: bytes) -> None:
    stage = tmp_path / "stage.bin"
    stage.write_bytes(data)
    os.rename(stage, dest)


def early(fs: FolderSync) -> dict:
    assert fs._engine is not None
    return fs._engine._early


def stored_early(setup, size: int) -> tuple[bytes, bytes]:
    """Move a file of ``size`` random bytes in and wait until it is stored early; (head before, its bytes)."""
    fs, folder, look, tmp_path = setup
    head0, data = look.refs.get("main"), os.urandom(size)
    move_in(tmp_path, folder / "big.bin", data)
    wait_for(lambda: "big.bin" in early(fs), WINDOW, "the file stored early")
    return head0, data


def test_stored_inside_the_window_committed_after_it(setup) -> None:
    fs, folder, look, tmp_path = setup
    head0 = look.refs.get("main")
    data = os.urandom(PREHASH_MIN + 12345)
    t0 = time.monotonic()
    move_in(tmp_path, folder / "big.bin", data)
    wait_for(lambda: "big.bin" in early(fs), WINDOW, "the file stored early")
    assert time.monotonic() - t0 < WINDOW and look.refs.get("main") == head0  # the window is still open
    wait_for(lambda: look.refs.get("main") != head0, 10, "the commit")
    assert look.read("big.bin") == data
    assert early(fs) == {}


def test_a_cycle_for_a_remote_change_inside_the_window_keeps_the_early_copy(setup) -> None:
    fs, folder, look, tmp_path = setup
    head0, data = stored_early(setup, PREHASH_MIN + 3)
    fs.wait_cycle(WINDOW)                   # what the node does when a peer moves main: a cycle at once
    assert look.refs.get("main") == head0 and "big.bin" in early(fs)   # it did not look at big.bin
    wait_for(lambda: look.refs.get("main") != head0, 10, "the commit")
    assert look.read("big.bin") == data and early(fs) == {}


def test_a_file_changed_after_it_was_stored_early_is_read_again(setup) -> None:
    fs, folder, look, tmp_path = setup
    head0, data = stored_early(setup, PREHASH_MIN + 1)
    with open(folder / "big.bin", "r+b") as f:  # kept open: a write the watcher does not see as finished
        f.write(b"edited!")
        f.flush()
        wait_for(lambda: look.refs.get("main") != head0, 10, "the commit")
    assert look.read("big.bin") == b"edited!" + data[7:]  # not the early copy


def test_renamed_and_ignored_files_are_not_read_early(setup) -> None:
    fs, folder, look, tmp_path = setup
    (folder / ".pcloudignore").write_text("*.iso\n")
    data = os.urandom(PREHASH_MIN)
    move_in(tmp_path, folder / "big.bin", data)
    wait_for(lambda: look.exists("big.bin"), 10, "the first commit")
    head1 = look.refs.get("main")
    os.rename(folder / "big.bin", folder / "moved.bin")   # a synced file renamed: the cycle needs no read
    move_in(tmp_path, folder / "disk.iso", os.urandom(PREHASH_MIN))  # ignored
    deadline = time.monotonic() + WINDOW / 2
    while time.monotonic() < deadline:
        assert early(fs) == {}
        time.sleep(0.02)
    wait_for(lambda: look.refs.get("main") != head1, 10, "the rename's commit")
    assert look.read("moved.bin") == data
    assert not look.exists("big.bin") and not look.exists("disk.iso")


def test_hashing_runs_nicer_and_the_thread_gets_its_priority_back() -> None:
    import threading

    from pcloud.folders_engine import HASH_NICE, lowered_priority
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    with lowered_priority():
        inside = os.getpriority(os.PRIO_PROCESS, tid)
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t.start()
        t.join()
    assert inside == min(19, before + HASH_NICE)
    assert seen == [inside]                    # sealer and pack-writer threads started meanwhile inherit it
    assert os.getpriority(os.PRIO_PROCESS, tid) == before


def test_a_finished_file_moved_into_a_new_directory_is_stored_early(setup) -> None:
    """mkdir then mv: the file lands before its directory is watched, so only the walk can see it finished."""
    fs, folder, look, tmp_path = setup
    head0 = look.refs.get("main")
    stage = tmp_path / "old.bin"
    data = os.urandom(PREHASH_MIN)
    stage.write_bytes(data)
    os.utime(stage, (time.time() - 60, time.time() - 60))
    (folder / "new").mkdir()
    os.rename(stage, folder / "new" / "big.bin")
    wait_for(lambda: "new/big.bin" in early(fs), WINDOW, "the file stored early")
    wait_for(lambda: look.refs.get("main") != head0, 10, "the commit")
    assert look.read("new/big.bin") == data
