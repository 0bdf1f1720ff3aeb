"""Shared helpers for the replication tests: real vaults with real keys, content snapshots, stores."""
from __future__ import annotations

import os
import random
from pathlib import Path

from pcloud import Vault
from pcloud.store import history, trees
from pcloud.store.objects import Doc, EntryKind
from pcloud.store.objectstore import ObjectStore


def make_vault(path: Path, files: dict[str, bytes], commits: int = 1) -> tuple[Vault, bytes]:
    """A vault at ``path`` whose main holds ``files`` written over ``commits`` commits; returns (vault, head)."""
    vault = Vault.create(path, name="a")
    items = sorted(files.items())
    per = max(1, -(-len(items) // commits))
    for i in range(0, len(items), per):
        with vault.commit(f"batch {i}") as tx:
            for name, data in items[i:i + per]:
                tx.write(name, data)
    return vault, vault.store.refs.get("main")


def random_files(n: int, lo: int, hi: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 7}/f{i:04d}.bin": os.urandom(rng.randint(lo, hi)) for i in range(n)}


def content(store: ObjectStore, head: bytes) -> dict[str, bytes]:
    """path -> bytes of every file (and doc state) in the commit ``head``, read and verified from ``store``."""
    out: dict[str, bytes] = {}
    tree = history.get_commit(store, head).tree
    for path, entry in trees.walk(store, tree):
        if entry.kind == EntryKind.DOC:
            obj = store.get(entry.id)
            assert isinstance(obj, Doc)
            out[path] = obj.update
        else:
            out[path] = b"".join(store.read_stream(entry.id))
    return out


def reachable(store: ObjectStore, roots: list[bytes]) -> set[bytes]:
    seen: set[bytes] = set()
    stack = list(roots)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        stack.extend(store.refs_of(oid))
    return seen
