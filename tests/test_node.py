"""The running node end to end: real `pcloud serve` / `pcloud relay` processes on 127.0.0.1.

Covers: three devices syncing files and a document; `pcloud status --json`
fields; the control socket refusing malformed input without dying; SIGTERM
stopping cleanly; kill -9 in the middle of a transfer then resuming without
refetching what arrived; a minority write landing on the local branch and
merging into main after the partition heals.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcloud import control
from pcloud.nodeproc import NodeProc, enroll, free_port, wait_for
from node_helpers import kill_all, start_cluster, start_laptop, start_on_demand_phone
from pcloud.vault import Vault

pytestmark = pytest.mark.timeout(120)


def _open(d: Path, fn):
    v = Vault.open(d)
    try:
        return fn(v)
    finally:
        v.close()


def test_three_nodes_sync_file_and_doc_status_and_sigterm(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    try:
        def write(v: Vault) -> str:
            v.write("a/hello.txt", b"hello from the laptop")
            with v.doc("notes.doc") as d:
                d.insert_text(0, "first line\n")
            return v.resolve("main").hex()
        head = _open(tmp_path / "laptop", write)
        for name in ("phone", "cloud"):
            wait_for(f"{name} main", lambda n=name: nodes[n].status()["main"] == head, 20)
        assert _open(tmp_path / "phone", lambda v: v.read("a/hello.txt")) == b"hello from the laptop"
        assert "first line" in _open(tmp_path / "phone", lambda v: str(v.doc("notes.doc").text()))
        # the phone writes back; the laptop sees it (main moves through Raft from any member)
        head2 = _open(tmp_path / "phone", lambda v: v.write("from-phone.txt", b"pong").commit)
        wait_for("laptop main", lambda: nodes["laptop"].status()["main"] == head2, 20)
        assert _open(tmp_path / "laptop", lambda v: v.read("from-phone.txt")) == b"pong"
        # the cloud node archived ciphertext only
        assert not (tmp_path / "cloud" / "keyring.sealed").exists()
        for p in (tmp_path / "cloud").rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert b"hello from the laptop" not in data and b"first line" not in data, p

        # `pcloud status --json` through the CLI: the CLI.md fields, from the running node
        env = dict(os.environ, PCLOUD_VAULT=str(tmp_path / "phone"))
        out = subprocess.run([sys.executable, "-m", "pcloud", "status", "--json"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        st = json.loads(out)
        assert st["node"] == "running" and st["main"] == head2
        assert set(st) >= {"device_id", "peers", "raft", "main", "sync"}
        assert st["raft"]["role"] in ("leader", "follower") and st["raft"]["leader"]
        assert set(st["sync"]) >= {"wanted_objects", "wanted_bytes"}
        assert {p["name"] for p in st["peers"]} == {"laptop", "cloud"}
        for p in st["peers"]:
            assert set(p) >= {"device_id", "name", "path", "addr", "rtt_ms"} and p["path"] in ("lan", "direct", "relay")

        human = subprocess.run([sys.executable, "-m", "pcloud", "status"], env=dict(env, COLUMNS="200"),
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert "running" in human and "laptop" in human and "fetched from" in human and "objects" in human

        # SIGTERM: clean exit, control socket removed, vault opens without a node afterwards
        for n in nodes.values():
            assert n.stop() == 0, n.log_path.read_text()[-2000:]
            assert not control.socket_path(n.dir).exists()
        v = Vault.open(tmp_path / "phone")
        assert v.node is None and v.read("from-phone.txt") == b"pong"
        v.close()
    finally:
        kill_all(nodes)


def _raw(path: Path, payload: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        part = s.recv(65536)
        if not part:
            break
        data += part
    s.close()
    return data


def _answers(data: bytes) -> list[dict]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(json.loads(data[4:4 + n]))
        data = data[4 + n:]
    return out


def test_control_socket_refuses_malformed_input(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="solo").close()
    node = NodeProc("solo", tmp_path / "v", ["serve"], tmp_path).start()
    try:
        sock = control.socket_path(tmp_path / "v")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        frame = lambda b: struct.pack(">I", len(b)) + b  # noqa: E731
        bad = [b"not json", b"[1, 2]", b'{"op": 5}', b'{"op": "nope"}', b'{"op": "cas_main"}',
               b'{"op": "cas_main", "new": "zz"}', b'{"op": "cas_main", "new": "00"}',
               b'{"op": "admit", "device": "abcd"}', b"\xff\xfe", b'{"op": "cas_main", "new": "' + b"11" * 32 + b'"}']
        answers = _answers(_raw(sock, b"".join(frame(b) for b in bad)))
        assert len(answers) == len(bad)
        assert all(a["ok"] is False and a["error"] and a["message"] for a in answers), answers
        # an oversized frame is answered and the connection closed; a truncated one just closes
        big = _answers(_raw(sock, struct.pack(">I", control.MAX_FRAME + 1) + b"x" * 100))
        assert big and big[0]["ok"] is False
        assert _raw(sock, struct.pack(">I", 100) + b"{") == b""
        # the node is still fine
        assert node.call("ping")["device_id"] == node.device_id
        v = Vault.open(tmp_path / "v")
        assert v.node is not None
        v.write("x.txt", b"still works")
        v.close()
        assert node.status()["main"] == _open(tmp_path / "v", lambda v: v.resolve("main").hex())
    finally:
        assert node.stop() == 0
        node.kill()


@pytest.mark.slow
def test_kill9_mid_transfer_resumes_identical(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, ("laptop", "phone"))
    try:
        size = 128 << 20
        src = tmp_path / "big.bin"
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        head = _open(tmp_path / "laptop", lambda v: v.write("big.bin", src).commit)
        phone = nodes["phone"]

        def mid() -> bool:
            sync = phone.status()["sync"]
            got = sum(c["bytes"] for c in sync["peers"].values())
            # some objects stored (what is stored survives a kill), well before the end
            return sync["stored_objects"] >= 8 and got < size * 3 // 4
        wait_for("the phone mid-transfer", mid, 30, interval=0.01)
        phone.kill()
        before = sum(p.stat().st_size for p in (tmp_path / "phone" / "store").rglob("*") if p.is_file())
        assert before > 0
        phone.start()
        wait_for("the phone to finish", lambda: phone.status()["main"] == head, 60)
        fetched_after = sum(c["bytes"] for c in phone.status()["sync"]["peers"].values())
        assert fetched_after < size, "what was stored before the kill was fetched again"
        out = tmp_path / "out.bin"
        _open(tmp_path / "phone", lambda v: v.export("big.bin", out))
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    finally:
        kill_all(nodes)


def test_minority_write_goes_to_local_branch_and_merges_after_heal(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    try:
        base_head = _open(tmp_path / "laptop", lambda v: v.write("shared.txt", b"v1").commit)
        wait_for("phone synced", lambda: nodes["phone"].status()["main"] == base_head, 20)
        # partition: the laptop alone (the other two voters stop)
        nodes["phone"].stop()
        nodes["cloud"].stop()

        def write(v: Vault) -> list[str]:
            v.write("offline.txt", b"written without a majority")
            return v.take_diverted()
        t0 = time.monotonic()
        diverted = _open(tmp_path / "laptop", write)
        assert time.monotonic() - t0 < 10          # never blocks beyond the quorum timeout
        assert len(diverted) == 1 and diverted[0].startswith("local/")
        st = nodes["laptop"].status()
        assert st["main"] == base_head and st["local_branch"] == diverted[0]
        assert _open(tmp_path / "laptop", lambda v: v.read("offline.txt", ref=diverted[0])) \
            == b"written without a majority"
        # heal: the others come back; the local branch merges into main by itself
        nodes["cloud"].start()
        nodes["phone"].start()

        def merged() -> bool:
            s = nodes["laptop"].status()
            return s["local_branch"] is None and s["main"] != base_head
        wait_for("the local branch merged into main", merged, 40)
        head = nodes["laptop"].status()["main"]
        wait_for("phone gets the merge", lambda: nodes["phone"].status()["main"] == head, 20)
        assert _open(tmp_path / "phone", lambda v: v.read("offline.txt")) == b"written without a majority"
        assert _open(tmp_path / "phone", lambda v: v.read("shared.txt")) == b"v1"
    finally:
        kill_all(nodes)


def test_watched_folders_sync_between_two_nodes(tmp_path: Path) -> None:
    relay = f"127.0.0.1:{free_port()}"
    Vault.create(tmp_path / "laptop", name="laptop").close()
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    nodes = {"laptop": NodeProc("laptop", tmp_path / "laptop", ["serve", "--relay", relay, "--folder",
                                                                 f"{a_dir}=docs"], tmp_path).start()}
    try:
        wait_for("leader", lambda: nodes["laptop"].status()["raft"]["role"] == "leader")
        enroll(nodes["laptop"], tmp_path / "phone", "phone")
        nodes["phone"] = NodeProc("phone", tmp_path / "phone", ["serve", "--relay", relay, "--folder",
                                                                 f"{b_dir}=docs"], tmp_path).start()
        wait_for("both watching", lambda: all(len(n.status()["folders"]) == 1 for n in nodes.values()), 30)
        (a_dir / "sub").mkdir(parents=True, exist_ok=True)
        (a_dir / "sub" / "note.txt").write_bytes(b"from the laptop's folder")
        wait_for("file on the phone's disk", lambda: (b_dir / "sub" / "note.txt").exists()
                 and (b_dir / "sub" / "note.txt").read_bytes() == b"from the laptop's folder", 20)
        (b_dir / "reply.txt").write_bytes(b"from the phone's folder")
        wait_for("reply on the laptop's disk", lambda: (a_dir / "reply.txt").exists()
                 and (a_dir / "reply.txt").read_bytes() == b"from the phone's folder", 20)
        (a_dir / "sub" / "note.txt").unlink()
        wait_for("delete propagates", lambda: not (b_dir / "sub" / "note.txt").exists(), 20)
        # a big file is staged on the phone while its chunks arrive, then renamed into the folder
        big = os.urandom(6 << 20)
        (tmp_path / "big.bin").write_bytes(big)
        os.rename(tmp_path / "big.bin", a_dir / "big.bin")
        wait_for("big file on the phone's disk", lambda: (b_dir / "big.bin").exists()
                 and (b_dir / "big.bin").stat().st_size == len(big), 30)
        assert hashlib.sha256((b_dir / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
        staged = [line for line in nodes["phone"].log_path.read_text().splitlines() if "staged blob" in line]
        handed = re.search(r"(\d+) of \d+ chunks handed over", staged[-1]) if staged else None
        assert handed and int(handed.group(1)) > 0, staged   # chunks came by hand-off, not read back
        assert not [n for n in os.listdir(b_dir) if n.endswith(".pcloud-tmp")]
        assert _open(tmp_path / "phone", lambda v: v.read("docs/reply.txt")) == b"from the phone's folder"
        for n in nodes.values():          # watchers and their vault handles stop cleanly too
            assert n.stop() == 0, n.log_path.read_text()[-2000:]
    finally:
        for n in nodes.values():
            n.kill()


def test_offline_commits_are_proposed_to_raft_when_the_node_starts(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="solo").close()
    node = NodeProc("solo", tmp_path / "v", ["serve"], tmp_path).start()
    try:
        head = _open(tmp_path / "v", lambda v: v.write("online.txt", b"1").commit)
        wait_for("raft main", lambda: node.status()["raft"]["main"] == head)
        assert node.stop() == 0
        # no node: the CLI/API moves the local main itself
        offline = _open(tmp_path / "v", lambda v: (v.node is None, v.write("offline.txt", b"2").commit))
        assert offline[0] is True
        node.start()
        wait_for("offline commit in Raft", lambda: node.status()["raft"]["main"] == offline[1], 20)
        st = node.status()
        assert st["main"] == offline[1] and st["local_branch"] is None
    finally:
        node.stop()
        node.kill()


def test_serve_without_a_vault_fails_in_one_line(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(tmp_path / "none"), "serve"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


def test_on_demand_device_fetches_content_when_a_file_is_opened(tmp_path: Path) -> None:
    nodes, relay = start_laptop(tmp_path)
    try:
        start_on_demand_phone(tmp_path, nodes, relay)
        content = os.urandom(3 << 20)
        head = _open(tmp_path / "laptop", lambda v: v.write("photos/big.jpg", content).commit)
        wait_for("phone main", lambda: nodes["phone"].status()["main"] == head, 20)
        assert nodes["phone"].status()["policy"] == "on-demand"

        def chunks_missing(v: Vault) -> bool:
            blob = v.stat("photos/big.jpg")      # metadata is there
            from pcloud.store.trees import lookup
            entry = lookup(v.store, v._commit(v.resolve("main")).tree, "photos/big.jpg")
            return v.store.has(entry.id) and not all(v.store.has(c) for c in v.store.refs_of(entry.id)) \
                and blob.size == len(content)
        assert _open(tmp_path / "phone", chunks_missing), "an on-demand device fetched file content eagerly"
        assert _open(tmp_path / "phone", lambda v: v.read("photos/big.jpg")) == content
    finally:
        for n in nodes.values():
            n.stop()
            n.kill()


def test_binary_file_changed_on_both_sides_of_a_partition_keeps_both_versions(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    try:
        base = _open(tmp_path / "laptop", lambda v: v.write("photo.raw", b"original").commit)
        wait_for("phone synced", lambda: nodes["phone"].status()["main"] == base, 20)
        # the laptop is cut off: its edit lands on its local branch
        nodes["phone"].stop()
        nodes["cloud"].stop()
        diverted = _open(tmp_path / "laptop", lambda v: (v.write("photo.raw", b"laptop edit"), v.take_diverted())[1])
        assert diverted
        # meanwhile the phone and the cloud node (a majority) change the same file on main
        nodes["laptop"].stop()
        nodes["cloud"].start()
        nodes["phone"].start()
        wait_for("phone leads or follows", lambda: nodes["phone"].status()["raft"]["leader"] is not None, 30)
        theirs = _open(tmp_path / "phone", lambda v: (v.write("photo.raw", b"phone edit"), v.take_diverted()))
        assert theirs[1] == [], "the phone had a majority with the cloud node"
        # the laptop comes back: its local branch merges, the loser is kept as a conflict copy
        nodes["laptop"].start()
        wait_for("merged", lambda: nodes["laptop"].status()["local_branch"] is None
                 and nodes["laptop"].status()["main"] not in (base, theirs[0].commit), 40)
        head = nodes["laptop"].status()["main"]
        wait_for("phone gets the merge", lambda: nodes["phone"].status()["main"] == head, 20)

        def versions(v: Vault) -> set[bytes]:
            return {v.read(e.path) for e in v.ls("", recursive=True) if e.path.startswith("photo")}
        assert _open(tmp_path / "phone", versions) == {b"laptop edit", b"phone edit"}
    finally:
        kill_all(nodes)


@pytest.mark.slow
def test_kill9_while_a_big_file_is_staged_then_restart_puts_it_whole_in_the_folder(tmp_path: Path) -> None:
    """The phone is killed mid-fetch of a 48 MiB file bound for its watched folder; after a restart the file is
    there, byte for byte, with no staging or temp file left behind."""
    relay = f"127.0.0.1:{free_port()}"
    Vault.create(tmp_path / "laptop", name="laptop").close()
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    nodes = {"laptop": NodeProc("laptop", tmp_path / "laptop", ["serve", "--relay", relay, "--folder", str(a_dir)],
                                tmp_path).start()}
    try:
        wait_for("leader", lambda: nodes["laptop"].status()["raft"]["role"] == "leader")
        enroll(nodes["laptop"], tmp_path / "phone", "phone", voter=False)
        phone = nodes["phone"] = NodeProc("phone", tmp_path / "phone", ["serve", "--relay", relay, "--folder",
                                                                         str(b_dir)], tmp_path).start()
        wait_for("both watching", lambda: all(len(n.status()["folders"]) == 1 for n in nodes.values()), 30)
        size = 48 << 20
        big = os.urandom(size)
        (tmp_path / "big.bin").write_bytes(big)
        os.rename(tmp_path / "big.bin", a_dir / "big.bin")

        def mid() -> bool:
            got = sum(c["bytes"] for c in phone.status()["sync"]["peers"].values())
            return (4 << 20) <= got < size * 3 // 4
        wait_for("the phone mid-transfer", mid, 30, interval=0.005)
        phone.kill()
        assert not (b_dir / "big.bin").exists()          # never a partial file at the real name
        phone.start()
        wait_for("the big file in the phone's folder", lambda: (b_dir / "big.bin").exists()
                 and (b_dir / "big.bin").stat().st_size == size, 60)
        assert hashlib.sha256((b_dir / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
        assert not [n for n in os.listdir(b_dir) if n.endswith(".pcloud-tmp")]
        wait_for("staging emptied", lambda: not os.listdir(tmp_path / "phone" / "staging"), 10)
    finally:
        for n in nodes.values():
            n.kill()
