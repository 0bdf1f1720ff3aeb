"""Tree model costs: batch TreeEditor vs one commit per file; merge/diff skipping unchanged subtrees.

Run: .venv/bin/python bench/bench_trees.py [--files N] [--store memory|disk]
Prints a table and appends a dated section to bench/RESULTS.md. Each row
compares against a baseline measured in the same run on the same data:

* put N files: one `TreeEditor` batch vs one editor+commit per file (what a
  commit-per-write API costs; O(files x depth x siblings)).
* merge / diff of two N-file trees that each changed 10 files: the real
  subtree-skipping code vs a naive path-dict merge/diff that walks all trees.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402
from pcloud.store.crypto import Keyring  # noqa: E402
from pcloud.store.diff import diff_trees  # noqa: E402
from pcloud.store.memory import MemoryObjectStore  # noqa: E402
from pcloud.store.merge import merge_trees  # noqa: E402
from pcloud.store.objects import Blob, Chunk, ChunkRef  # noqa: E402
from pcloud.store.trees import TreeEditor, walk  # noqa: E402


def make_store(kind: str, tmp: str):
    if kind == "memory":
        return MemoryObjectStore(Keyring.generate())
    from pcloud.store.objectstore import ObjectStore

    return ObjectStore.create(Path(tmp) / "objects", Keyring.generate())


def blobs(store, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        data = i.to_bytes(4, "big")
        out.append(store.put(Blob((ChunkRef(store.put(Chunk(data)), 4),))))
    return out


def path_of(i: int) -> str:
    return f"d{i % 10}/e{(i // 10) % 10}/f{i}.txt"  # 100 leaf dirs, 3 levels


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def naive_merge(store, base, ours, theirs):
    """Path-dict 3-way merge over full walks (no subtree skipping), the baseline."""
    b, o, t = ({p: e.id for p, e in walk(store, r)} for r in (base, ours, theirs))
    ed = TreeEditor(store, None)
    for p in sorted(b.keys() | o.keys() | t.keys()):
        ov, tv, bv = o.get(p), t.get(p), b.get(p)
        v = tv if ov == bv else ov
        if v is not None:
            ed.set(p, kind="file", id=v, size=4)
    return ed.commit()


def naive_diff(store, a, b):
    x, y = ({p: e.id for p, e in walk(store, r)} for r in (a, b))
    return [p for p in sorted(x.keys() | y.keys()) if x.get(p) != y.get(p)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--store", choices=["memory", "disk"], default="memory")
    args = ap.parse_args()
    n = args.files
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(args.store, tmp)
        ids = blobs(store, n + 20)

        def batch():
            ed = TreeEditor(store, None)
            for i in range(n):
                ed.set(path_of(i), kind="file", id=ids[i], size=4)
            return ed.commit()

        def per_file():
            root = None
            for i in range(n):
                ed = TreeEditor(store, root)
                ed.set(path_of(i), kind="file", id=ids[i] if i else ids[n + 19], size=4)  # distinct trees
                root = ed.commit()
            return root

        t_base, _ = timed(per_file)
        t_batch, base = timed(batch)
        rows.append((f"put {n} files, one commit", t_batch, "one commit per file", t_base))

        def side(offset: int):
            ed = TreeEditor(store, base)
            for k in range(10):
                ed.set(path_of(k * 997 % n), kind="file", id=ids[n + offset + k], size=4)
            return ed.commit()

        ours, theirs = side(0), side(10)
        t_merge, r = timed(lambda: merge_trees(store, base, ours, theirs, ours_device="A", theirs_device="B", theirs_time=0))
        t_nmerge, _ = timed(lambda: naive_merge(store, base, ours, theirs))
        rows.append((f"merge, 10+10 of {n} changed", t_merge, "path-dict merge (full walks)", t_nmerge))
        t_diff, changes = timed(lambda: diff_trees(store, base, ours))
        t_ndiff, _ = timed(lambda: naive_diff(store, base, ours))
        rows.append((f"diff, 10 of {n} changed", t_diff, "path-dict diff (full walks)", t_ndiff))
        assert len(changes) == 10
        close = getattr(store, "close", None)
        if close:
            close()

    header = f"| operation ({args.store} store) | pcloud s | baseline | baseline s | speed-up |"
    lines = [header, "|---|---:|---|---:|---:|"]
    for name, t, bname, bt in rows:
        lines.append(f"| {name} | {t:.3f} | {bname} | {bt:.3f} | {bt / t:.1f}x |")
    table = "\n".join(lines)
    print(table)
    section = (
        f"\n## bench_trees.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n\n"
        f"Machine: {machine()} (other workers running; noisy)\n\n{table}\n"
    )
    results = Path(__file__).resolve().parent / "RESULTS.md"
    with open(results, "a") as f:
        f.write(section)


if __name__ == "__main__":
    main()
