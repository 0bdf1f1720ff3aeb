"""Watched folders added and removed while the node runs: `pcloud folders` over the control ops, kept across restarts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcloud.folders_live import FOLDERS_FILE, read_added
from pcloud import errors
from pcloud.nodeproc import NodeProc, wait_for
from pcloud.vault import Vault

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent


def pcloud(vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(vault), *args], capture_output=True,
                          text=True, cwd=str(REPO), timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_add_list_remove_restart_and_refusals(tmp_path: Path) -> None:
    vault, a, conf = tmp_path / "v", tmp_path / "a", tmp_path / "conf"
    with Vault.create(vault, name="laptop") as v:
        v.write("docs/x.txt", b"in the vault")
    node = NodeProc("laptop", vault, ["serve", "--folder", f"{conf}=cfg"], tmp_path).start()
    try:
        p = pcloud(vault, "folders", "add", f"{a}=docs", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["vault_path"] == "docs"
        wait_for("x.txt on disk", lambda: (a / "x.txt").exists(), 20)
        (a / "new.txt").write_text("from the folder")
        wait_for("the commit", lambda: Vault.open(vault).read("docs/new.txt") == b"from the folder", 20)
        listing = json.loads(pcloud(vault, "folders", "--json").stdout)
        assert {(f["dir"], f["from_config"]) for f in listing} == {(str(a.resolve()), False),
                                                                   (str(conf.resolve()), True)}
        assert all(f["watcher"] == "inotify" and f["error"] is None for f in listing), listing
        wait_for("both folders in sync", lambda: all(
            f["scanned"] and f["pending"] == 0 for f in json.loads(pcloud(vault, "folders", "--json").stdout)), 20)
        human = pcloud(vault, "folders").stdout
        assert human.count("in sync") == 2, human
        # refusals: twice the same folder, a folder from --folder, an unknown folder, no argument
        p = pcloud(vault, "folders", "add", str(a))
        assert p.returncode == 1 and "already a watched folder" in p.stderr
        p = pcloud(vault, "folders", "remove", str(conf))
        assert p.returncode == 1 and "restart the node without it" in p.stderr
        p = pcloud(vault, "folders", "remove", str(tmp_path / "nope"))
        assert p.returncode == 1 and "not a watched folder" in p.stderr
        assert pcloud(vault, "folders", "add").returncode == 2
        # kept across a restart
        node.stop()
        assert read_added(vault) == [f"{a.resolve()}=docs"]
        node = NodeProc("laptop", vault, ["serve"], tmp_path).start()
        wait_for("the saved folder", lambda: [f["dir"] for f in node.call("folders")["folders"]]
                 == [str(a.resolve())], 20)
        p = pcloud(vault, "folders", "remove", str(a))
        assert p.returncode == 0, p.stderr
        assert node.call("folders")["folders"] == [] and read_added(vault) == []
        assert (a / "x.txt").exists()                 # files stay where they are
    finally:
        node.stop()


def test_a_bad_folders_file_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / FOLDERS_FILE).write_text('{"not": "a list"}')
    with pytest.raises(errors.BadArgument, match="JSON list"):
        read_added(tmp_path)
    (tmp_path / FOLDERS_FILE).write_text("[1, 2")
    with pytest.raises(errors.BadArgument, match="not JSON"):
        read_added(tmp_path)
    (tmp_path / FOLDERS_FILE).write_bytes(b"[" + b" " * (1 << 20) + b"]")
    with pytest.raises(errors.BadArgument, match="larger"):
        read_added(tmp_path)
