"""Standing pins on an on-demand device: real `pcloud serve` processes on 127.0.0.1 and the real CLI.

A pinned folder's files arrive whenever main moves, without being opened; an
unpinned file stays metadata-only until it is read; unpin stops the standing fetch.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from pcloud import errors, pins
from pcloud.nodeproc import NodeProc, enroll, wait_for
from node_helpers import start_laptop, start_on_demand_phone
from pcloud.store.trees import lookup
from pcloud.vault import Vault

pytestmark = pytest.mark.timeout(120)


def _cli(vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(vault), "--json", *args],
                          capture_output=True, text=True, timeout=60)


def _content_here(vault_dir: Path, path: str) -> bool | None:
    """True: the file's chunks are all stored; False: metadata only; None: not in main here yet."""
    v = Vault.open(vault_dir)
    try:
        entry = lookup(v.store, v._commit(v.resolve("main")).tree, path)
        if entry is None or not v.store.has(entry.id):
            return None
        return all(v.store.has(c) for c in v.store.refs_of(entry.id))
    finally:
        v.close()


@pytest.mark.slow
def test_pinned_folder_is_kept_and_unpinned_files_stay_metadata_only(tmp_path: Path) -> None:
    nodes, relay = start_laptop(tmp_path)
    try:
        enroll(nodes["laptop"], tmp_path / "phone", "phone", voter=False)
        # pinned before the node ever ran: recorded in pins.json, fetched once the node runs
        r = _cli(tmp_path / "phone", "pin", "music")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["node"] == "not running"
        cfg = tmp_path / "phone.json"
        cfg.write_text(json.dumps({"policy": "on-demand", "relays": [relay]}))
        nodes["phone"] = NodeProc("phone", tmp_path / "phone", ["serve", "--config", str(cfg)], tmp_path).start()

        def write(path: str, n: int) -> str:
            v = Vault.open(tmp_path / "laptop")
            try:
                return v.write(path, os.urandom(n)).commit
            finally:
                v.close()
        head = write("photos/old.jpg", 300_000)
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        assert _content_here(tmp_path / "phone", "photos/old.jpg") is False, "fetched eagerly before any pin"

        # a standing pin through the running node: the existing file is fetched before `pin` returns
        r = _cli(tmp_path / "phone", "pin", "photos")
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["complete"] and answer["pins"] == ["music", "photos"], answer
        assert _content_here(tmp_path / "phone", "photos/old.jpg") is True

        # files added later on the laptop: under the pins they arrive unopened, elsewhere they do not
        write("photos/new.jpg", 500_000)
        write("music/song.ogg", 200_000)
        head = write("docs/report.pdf", 400_000)
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        wait_for("pinned files arrive without being opened",
                 lambda: _content_here(tmp_path / "phone", "photos/new.jpg")
                 and _content_here(tmp_path / "phone", "music/song.ogg"), 20)
        assert _content_here(tmp_path / "phone", "docs/report.pdf") is False

        # unpin: later files under it stay metadata-only until opened, then they are read in full
        r = _cli(tmp_path / "phone", "unpin", "photos")
        assert r.returncode == 0 and json.loads(r.stdout)["pins"] == ["music"], r.stderr
        head = write("photos/later.jpg", 300_000)
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        write("music/next.ogg", 100_000)       # the remaining pin still works after the unpin
        wait_for("music still pinned", lambda: _content_here(tmp_path / "phone", "music/next.ogg"), 20)
        assert _content_here(tmp_path / "phone", "photos/later.jpg") is False
        v = Vault.open(tmp_path / "phone")
        try:
            assert len(v.read("photos/later.jpg")) == 300_000     # fetched on open
        finally:
            v.close()
        r = _cli(tmp_path / "phone", "pins")
        assert json.loads(r.stdout) == ["music"]
        # fsck on the on-demand device: unopened content is expected, not an error
        r = _cli(tmp_path / "phone", "fsck")
        report = json.loads(r.stdout)
        assert r.returncode == 0 and report["ok"] and report["missing_content"] > 0, r.stdout + r.stderr
        nodes["phone"].stop()
        r = _cli(tmp_path / "phone", "fsck")       # no node: the policy it last ran with
        assert r.returncode == 0 and json.loads(r.stdout)["missing_content"] > 0, r.stdout + r.stderr
    finally:
        for n in nodes.values():
            n.stop()
            n.kill()


def test_pin_bad_input_is_refused_with_one_line_and_loses_nothing(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="v").close()
    assert _cli(tmp_path / "v", "pin", "a/b").returncode == 0
    r = _cli(tmp_path / "v", "pin", "../escape")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = _cli(tmp_path / "v", "unpin", "never/pinned")
    assert r.returncode != 0 and "not pinned" in r.stderr, r.stderr
    assert pins.read_pins(tmp_path / "v") == ["a/b"]
    (tmp_path / "v" / pins.PINS_FILE).write_text('{"not": "a list"}')
    with pytest.raises(errors.BadArgument):
        pins.read_pins(tmp_path / "v")
    r = _cli(tmp_path / "v", "pins")
    assert r.returncode != 0 and "must be a JSON list" in r.stderr, r.stderr
    (tmp_path / "v" / pins.PINS_FILE).write_text('["/absolute"]')
    with pytest.raises(errors.BadPath):
        pins.read_pins(tmp_path / "v")


def test_on_demand_fsck_accepts_absent_content_and_still_reports_absent_metadata(tmp_path: Path) -> None:
    with Vault.create(tmp_path / "v", name="v") as v:
        v.write("a/one.bin", os.urandom(200_000))
        v.write("b/two.bin", os.urandom(200_000))
        tree = v._commit(v.resolve("main")).tree
        blob = lookup(v.store, tree, "a/one.bin").id
        chunks = v.store.refs_of(blob)
        sub = lookup(v.store, tree, "b").id
    db = tmp_path / "v" / "store" / "index.sqlite"

    def drop(ids: list[bytes]) -> None:
        with sqlite3.connect(db) as conn:
            conn.executemany("DELETE FROM objects WHERE id = ?", [(i,) for i in ids])
    drop(list(chunks))                          # what an on-demand device that never opened a/one.bin holds
    with Vault.open(tmp_path / "v") as v:
        lazy = v.fsck(on_demand=True)
        assert lazy.ok and lazy.missing_content == len(chunks), lazy
        strict = v.fsck(on_demand=False)
        assert not strict.ok and {r for _, r in strict.errors} == {f"references missing object {c.hex()}"
                                                                   for c in chunks}
    drop([sub])                                 # metadata must be there even on an on-demand device
    with Vault.open(tmp_path / "v") as v:
        lazy = v.fsck(on_demand=True)
        assert not lazy.ok and any(sub.hex() in r for _, r in lazy.errors), lazy


@pytest.mark.slow
def test_policy_set_through_the_cli_is_kept_in_the_registry_and_survives_a_restart(tmp_path: Path) -> None:
    nodes, relay = start_laptop(tmp_path)
    try:
        enroll(nodes["laptop"], tmp_path / "phone", "phone", voter=False)
        nodes["phone"] = NodeProc("phone", tmp_path / "phone", ["serve", "--relay", relay], tmp_path).start()
        wait_for("phone connected", lambda: nodes["phone"].status()["raft"]["leader"] is not None, 30)
        assert nodes["phone"].status()["policy"] == "full"
        r = _cli(tmp_path / "phone", "policy", "on-demand")
        assert r.returncode == 0 and json.loads(r.stdout)["effective"] == "on-demand", r.stdout + r.stderr
        phone_key = json.loads(_cli(tmp_path / "phone", "status").stdout)["device_id"]
        wait_for("the registry says so everywhere", lambda: any(
            d["device_id"] == phone_key and d["policy"] == "on-demand"
            for d in nodes["laptop"].call("devices")["devices"]), 10)

        def write(path: str) -> str:
            with Vault.open(tmp_path / "laptop") as v:
                return v.write(path, os.urandom(300_000)).commit
        # after a restart the node follows the registry, not its start-up default
        nodes["phone"].stop()
        nodes["phone"].start()
        wait_for("phone back on-demand", lambda: nodes["phone"].status()["policy"] == "on-demand", 30)
        head = write("x/lazy.bin")
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        time.sleep(0.5)
        assert _content_here(tmp_path / "phone", "x/lazy.bin") is False
        # back to full: what was stored metadata-only is fetched without being opened
        r = _cli(tmp_path / "phone", "policy", "full")
        assert r.returncode == 0, r.stderr
        wait_for("content fetched after the switch", lambda: _content_here(tmp_path / "phone", "x/lazy.bin"), 20)
        assert _cli(tmp_path / "phone", "policy", "sometimes").returncode != 0
    finally:
        for n in nodes.values():
            n.stop()
            n.kill()


@pytest.mark.slow
def test_a_phone_joins_on_demand_by_default(tmp_path: Path) -> None:
    from pcloud.nodeproc import invite
    Vault.create(tmp_path / "laptop", name="laptop").close()
    laptop = NodeProc("laptop", tmp_path / "laptop", ["serve"], tmp_path).start()
    phone = None
    try:
        wait_for("leader", lambda: laptop.status()["raft"]["role"] == "leader")
        code = invite(laptop, voter=None)
        r = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(tmp_path / "phone"), "--json", "join", code,
                            "--name", "phone", "--kind", "phone", "--relay", laptop.status()["address"]],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        listing = {d["name"]: d for d in laptop.call("devices")["devices"]}
        assert listing["phone"]["policy"] == "on-demand" and listing["laptop"]["policy"] == "full"
        phone = NodeProc("phone", tmp_path / "phone", ["serve"], tmp_path).start()
        wait_for("the phone runs on-demand", lambda: phone.status()["policy"] == "on-demand", 30)
    finally:
        for n in (laptop, phone):
            if n is not None:
                n.stop()
                n.kill()


@pytest.mark.slow
def test_gc_evicts_unpinned_content_another_replica_holds_and_keeps_pinned(tmp_path: Path) -> None:
    nodes, relay = start_laptop(tmp_path)
    try:
        start_on_demand_phone(tmp_path, nodes, relay)
        photo, report = os.urandom(400_000), os.urandom(300_000)
        with Vault.open(tmp_path / "laptop") as v:
            with v.commit("two files") as tx:
                tx.write("photos/a.jpg", photo)
                tx.write("docs/b.pdf", report)
            head = v.resolve("main").hex()
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        assert _cli(tmp_path / "phone", "pin", "photos").returncode == 0
        with Vault.open(tmp_path / "phone") as v:
            assert v.read("docs/b.pdf") == report               # fetched on open: now stored here
        assert _content_here(tmp_path / "phone", "docs/b.pdf") is True

        # with no full replica connected nothing is evicted: the phone may hold the only copy
        nodes["laptop"].stop()
        r = _cli(tmp_path / "phone", "gc")
        assert r.returncode == 0 and json.loads(r.stdout)["evicted"] == 0, r.stdout + r.stderr
        assert _content_here(tmp_path / "phone", "docs/b.pdf") is True
        nodes["laptop"].start()
        wait_for("laptop connected", lambda: len(nodes["phone"].status()["peers"]) == 1, 30)

        r = _cli(tmp_path / "phone", "gc")
        assert r.returncode == 0 and json.loads(r.stdout)["evicted"] > 0, r.stdout + r.stderr
        assert _content_here(tmp_path / "phone", "docs/b.pdf") is False     # unpinned: dropped
        assert _content_here(tmp_path / "phone", "photos/a.jpg") is True    # pinned: kept through gc
        r = _cli(tmp_path / "phone", "fsck")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout

        assert _cli(tmp_path / "phone", "unpin", "photos").returncode == 0
        r = _cli(tmp_path / "phone", "gc")
        assert r.returncode == 0 and json.loads(r.stdout)["evicted"] > 0, r.stdout + r.stderr
        assert _content_here(tmp_path / "phone", "photos/a.jpg") is False   # unpinned: gc may drop it now
        with Vault.open(tmp_path / "phone") as v:
            assert v.read("photos/a.jpg") == photo and v.read("docs/b.pdf") == report   # fetched again
        assert _cli(tmp_path / "laptop", "gc").returncode == 0                # a full device: plain gc
        with Vault.open(tmp_path / "laptop") as v:
            assert v.read("photos/a.jpg") == photo
    finally:
        for n in nodes.values():
            n.stop()
            n.kill()


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                     st.lists(st.text(max_size=40), max_size=8).map(lambda xs: json.dumps(xs).encode())))
def test_pins_file_decoder_returns_paths_or_a_usage_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    d = tmp_path_factory.mktemp("pins")
    (d / pins.PINS_FILE).write_bytes(raw)
    try:
        got = pins.read_pins(d)
    except errors.UsageError:
        return
    assert all(isinstance(p, str) and not p.startswith("/") for p in got)


def test_pins_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / pins.PINS_FILE).write_bytes(b"[" + b'"a",' * (pins.MAX_PINS_FILE // 4) + b'"a"]')
    with pytest.raises(errors.BadArgument, match="larger than"):
        pins.read_pins(tmp_path)


@pytest.mark.slow
def test_a_watched_folder_on_an_on_demand_device_gets_its_files_and_nothing_else(tmp_path: Path) -> None:
    """The phone watches photos/: its files land on disk (content fetched, as a pin), other paths stay lazy."""
    nodes, relay = start_laptop(tmp_path)
    try:
        enroll(nodes["laptop"], tmp_path / "phone", "phone", voter=False)
        folder = tmp_path / "Phone Photos"
        cfg = tmp_path / "phone.json"
        cfg.write_text(json.dumps({"policy": "on-demand", "relays": [relay], "folders": [f"{folder}=photos"]}))
        nodes["phone"] = NodeProc("phone", tmp_path / "phone", ["serve", "--config", str(cfg)], tmp_path).start()
        shot, report = os.urandom(700_000), os.urandom(400_000)
        v = Vault.open(tmp_path / "laptop")
        try:
            v.write("photos/2026/shot.jpg", shot)
            head = v.write("docs/report.pdf", report).commit
        finally:
            v.close()
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        wait_for("the watched folder's file on the phone's disk",
                 lambda: (folder / "2026" / "shot.jpg").exists()
                 and (folder / "2026" / "shot.jpg").read_bytes() == shot, 30)
        assert _content_here(tmp_path / "phone", "docs/report.pdf") is False   # not watched, not pinned: lazy
        r = _cli(tmp_path / "phone", "pins")
        assert json.loads(r.stdout) == []          # the folder is an implicit pin, not written to pins.json
        # a photo taken on the phone still goes up as usual
        (folder / "2026" / "new.jpg").write_bytes(b"from the phone")
        wait_for("the phone's photo on the laptop", lambda: _read(tmp_path / "laptop", "photos/2026/new.jpg")
                 == b"from the phone", 30)
    finally:
        for n in nodes.values():
            n.stop()
            n.kill()


def _read(vault_dir: Path, path: str) -> bytes | None:
    v = Vault.open(vault_dir)
    try:
        return v.read(path)
    except errors.NotFound:
        return None
    finally:
        v.close()
