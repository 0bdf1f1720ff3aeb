"""Vault-level failures: a killed `pcloud put`, flipped bytes on disk, bad keys — nothing lost, clear errors."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pcloud
from pcloud import errors


def _cli(vault: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(vault), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkilled_folder_put_leaves_a_clean_vault(tmp_path: Path):
    vault = tmp_path / "v"
    with pcloud.Vault.create(vault) as v:
        v.write("keep.txt", b"committed before the crash")
    src = tmp_path / "src"
    rng = random.Random(7)
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(40):
            (src / f"d{d}" / f"{f}.bin").write_bytes(rng.randbytes(rng.randint(1_000, 60_000)))
    (src / "big.bin").write_bytes(os.urandom(40 << 20))
    killed = 0
    for delay in (0.15, 0.3, 0.5, 0.8, 1.2):
        p = subprocess.Popen([sys.executable, "-m", "pcloud", "--vault", str(vault), "put", str(src), "backup"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        with pcloud.Vault.open(vault) as v:
            assert v.read("keep.txt") == b"committed before the crash"
            f = v.fsck()
            assert f.ok, f.errors
            # either the put committed whole or not at all
            if v.exists("backup"):
                assert len(v.ls("backup", recursive=True)) == 20 * 40 + 1
    assert killed >= 2, "the put finished too fast to be interrupted; make the data bigger"
    r = _cli(vault, "--json", "put", str(src), "backup")
    assert r.returncode == 0, r.stderr
    with pcloud.Vault.open(vault) as v:
        assert v.read("backup/big.bin") == (src / "big.bin").read_bytes()
        assert v.fsck().ok
        v.gc()
        assert v.fsck().ok


def test_flipped_byte_is_named_by_read_and_fsck(tmp_path: Path):
    vault = tmp_path / "v"
    with pcloud.Vault.create(vault) as v:
        v.write("a.txt", b"A" * 10_000)
        v.write("b.txt", b"B" * 10_000)
        blob = v.store.get(bytes.fromhex(v.stat("a.txt").id))
        chunk_id = blob.chunks[0].id
    # locate a.txt's chunk in its pack through the store's index and flip one byte of its body
    db = sqlite3.connect(vault / "store" / "index.sqlite")
    pack, offset, length = db.execute("SELECT pack, offset, length FROM objects WHERE id = ?", [chunk_id]).fetchone()
    db.close()
    pack_path = next((vault / "store" / "packs").glob(f"{pack:08d}.pack"))
    with open(pack_path, "r+b") as f:
        f.seek(offset + length - 20)
        byte = f.read(1)
        f.seek(offset + length - 20)
        f.write(bytes([byte[0] ^ 0x01]))
    r = _cli(vault, "--json", "fsck")
    assert r.returncode != 0
    rep = json.loads(r.stdout)
    assert rep["ok"] is False
    assert [e["object"] for e in rep["errors"]] == [chunk_id.hex()]
    with pcloud.Vault.open(vault) as v:
        with pytest.raises(errors.CorruptObject) as info:
            v.read("a.txt")
        assert info.value.object_id == chunk_id.hex()
        assert v.read("b.txt") == b"B" * 10_000
    r = _cli(vault, "get", "a.txt", str(tmp_path / "out.txt"))
    assert r.returncode != 0 and chunk_id.hex() in r.stderr and not (tmp_path / "out.txt").exists()


def test_insecure_key_file_is_refused(tmp_path: Path):
    vault = tmp_path / "v"
    pcloud.Vault.create(vault).close()
    os.chmod(vault / "device.key", 0o644)
    r = _cli(vault, "ls")
    assert r.returncode != 0 and "device.key" in r.stderr and r.stderr.count("\n") == 1
