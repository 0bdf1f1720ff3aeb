"""SIGKILL at random instants while writing: the store reopens, the last committed head is intact, fsck is clean."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from pcloud.store.crypto import Keyring
from pcloud.store.objects import Commit, Tree
from pcloud.store.objectstore import ObjectStore

REPO = Path(__file__).resolve().parent.parent

# The child writes generation after generation: each is one transaction of
# files plus a tree and a commit, then `main` moves by CAS and the generation
# number is printed. Contents are a function of (generation, file index).
CHILD = r"""
import io, sys, blake3
from pathlib import Path
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Commit, Tree, TreeEntry
from pcloud.store.objectstore import ObjectStore

path, secret, mode = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
kr = Keyring({0: secret})
store = ObjectStore.open(path, kr) if (path / "index.sqlite").exists() else ObjectStore.create(path, kr)
head = store.refs.get("main")
gen = int(store.get(head).message) + 1 if head else 0
while True:
    files, sizes = (1, [48 << 20]) if mode == "stream" else (40, [1000 + 1500 * i for i in range(40)])
    entries = []
    if mode == "gc":  # garbage that gc must drop, and packs it must compact, while we may be killed
        with store.transaction():
            for j in range(8):
                store.write_stream(io.BytesIO(blake3.blake3(b"junk %d/%d" % (gen, j)).digest(300_000)))
    with store.transaction():
        for i in range(files):
            data = blake3.blake3(b"%d/%d" % (gen, i)).digest(sizes[i])
            bid, size = store.write_stream(io.BytesIO(data))
            entries.append(TreeEntry(f"f{i:03d}", "file", bid, 0o644, size, 0))
        tree = store.put(Tree(tuple(entries)))
        commit = store.put(Commit(tree, (head,) if head else (), b"d" * 32, gen, str(gen)))
    assert store.refs.cas("main", head, commit)
    head = commit
    if mode == "gc":
        store.gc([head])
    print(gen, flush=True)
    gen += 1
"""


def _check(path: Path, kr: Keyring, mode: str) -> int:
    if not (path / "index.sqlite").exists():
        return -1  # killed inside create: no store yet (the index appears by atomic rename)
    store = ObjectStore.open(path, kr)
    try:
        rep = store.fsck()
        assert rep.ok, rep.errors[:5]
        head = store.refs.get("main")
        if head is None:
            return -1
        commit = store.get(head)
        assert isinstance(commit, Commit)
        gen = int(commit.message)
        tree = store.get(commit.tree)
        assert isinstance(tree, Tree)
        for i, e in enumerate(tree.entries):
            h = blake3.blake3()
            for chunk in store.read_stream(e.id):
                h.update(chunk)
            size = 48 << 20 if mode == "stream" else 1000 + 1500 * i
            assert h.digest() == blake3.blake3(blake3.blake3(b"%d/%d" % (gen, i)).digest(size)).digest()
        before = sum(1 for _ in store.iter_ids())
        store.gc([head])
        assert store.fsck().ok
        assert sum(1 for _ in store.iter_ids()) <= before
        return gen
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode,kills", [("many", 6), ("stream", 4), ("gc", 5)])
def test_sigkill_at_random_points(tmp_path, mode, kills):
    rnd = random.Random()
    kr = Keyring.generate()
    path = tmp_path / "store"
    last_done = -1
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), kr.epochs[0].hex(), mode],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if rnd.random() < 0.7:
                first = child.stdout.readline()  # let it commit at least once this round
                assert first, child.stderr.read()
                last_done = max(last_done, int(first))
            time.sleep(rnd.uniform(0.0, 1.2))
        finally:
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        printed = [int(x) for x in out.split()]
        if printed:
            last_done = max(last_done, printed[-1])
        recovered = _check(path, kr, mode)
        # everything reported committed survived; at most the in-flight generation is extra
        assert last_done <= recovered <= last_done + 1
        last_done = recovered
