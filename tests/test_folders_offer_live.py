"""Two `pcloud serve --folder` processes: a big file's chunks reach the other device while it is still being
hashed (chunk offers, replication.offer) and its staging is adopted when the commit's manifest arrives."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from pcloud.nodeproc import NodeProc, enroll, free_port, wait_for
from pcloud.store.objectstore_streams import PUBLISH_STEP
from pcloud.vault import Vault


@pytest.mark.slow
def test_a_big_file_is_offered_while_hashed_and_arrives_whole(tmp_path: Path) -> None:
    relay = f"127.0.0.1:{free_port()}"
    Vault.create(tmp_path / "a", name="a").close()
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    nodes = {"a": NodeProc("a", tmp_path / "a", ["serve", "--relay", relay, "--folder", str(a_dir)], tmp_path).start()}
    try:
        wait_for("leader", lambda: nodes["a"].status()["raft"]["role"] == "leader")
        enroll(nodes["a"], tmp_path / "b", "b")
        nodes["b"] = NodeProc("b", tmp_path / "b", ["serve", "--relay", relay, "--folder", str(b_dir)],
                              tmp_path).start()
        wait_for("both watching", lambda: all(len(n.status()["folders"]) == 1 for n in nodes.values()), 30)
        size = PUBLISH_STEP + (8 << 20)  # one step offered while hashing, then the tail
        big = os.urandom(size)
        (tmp_path / "big.bin").write_bytes(big)
        os.rename(tmp_path / "big.bin", a_dir / "big.bin")
        wait_for("the big file on B", lambda: (b_dir / "big.bin").exists()
                 and (b_dir / "big.bin").stat().st_size == size, 60)
        assert hashlib.sha256((b_dir / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
        log_b = nodes["b"].log_path.read_text()
        adopted = re.search(r"staging of blob \w+ adopted (\d+) offered chunks", log_b)
        assert adopted and int(adopted.group(1)) > 0, "B staged nothing from the offers"
        assert "abandoned" not in log_b
        wait_for("staging emptied", lambda: not os.listdir(tmp_path / "b" / "staging"), 10)
    finally:
        for n in nodes.values():
            n.kill()
