"""Document edit propagation between two `pcloud serve` processes on loopback: live updates vs commits.

    .venv/bin/python bench/bench_docs_live.py [--edits N] [--no-append]

Both devices have the same document open through `Vault.doc()`. An edit on A is
timed until B sees it:

* live: `append_text` only (the sealed update goes A's API -> A's node -> B's
  node -> B's open document); B waits with `wait_remote`;
* commit (the baseline, how documents travelled before live updates):
  `append_text` + `save()` (a commit whose CasHead goes through Raft), then B's
  node fetches the new main and B re-opens the document from it.

Prints a table and appends it to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_results, table  # noqa: E402
from pcloud.nodeproc import NodeProc, enroll, free_port, wait_for  # noqa: E402
from pcloud.vault import Vault  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pcloud-bench-docs-") as tmp:
        base = Path(tmp)
        relay = f"127.0.0.1:{free_port()}"
        Vault.create(base / "a", name="a").close()
        nodes = {"a": NodeProc("a", base / "a", ["serve", "--relay", relay], base).start()}
        try:
            wait_for("leader", lambda: nodes["a"].status()["raft"]["role"] == "leader")
            enroll(nodes["a"], base / "b", "b", voter=True)
            nodes["b"] = NodeProc("b", base / "b", ["serve", "--relay", relay], base).start()
            wait_for("connected", lambda: len(nodes["a"].status()["peers"]) == 1
                     and nodes["b"].status()["raft"]["leader"] is not None, 30)
            va, vb = Vault.open(base / "a"), Vault.open(base / "b")
            try:
                with va.doc("bench.doc") as d:
                    d.insert_text(0, "start\n")
                head = va.resolve("main").hex()
                wait_for("b has the doc", lambda: nodes["b"].status()["main"] == head, 20)
                da, db = va.doc("bench.doc"), vb.doc("bench.doc")
                live: list[float] = []
                for i in range(args.edits):
                    word = f"l{i}-{os.urandom(3).hex()} "
                    t0 = time.perf_counter()
                    da.append_text(word)
                    while word not in str(db.text()):
                        db.wait_remote(0.2)
                        if time.perf_counter() - t0 > 10:
                            raise SystemExit(f"live edit {i} did not arrive in 10 s")
                    live.append(time.perf_counter() - t0)
                db.close()
                commit: list[float] = []
                for i in range(max(5, args.edits // 5)):
                    word = f"c{i}-{os.urandom(3).hex()} "
                    t0 = time.perf_counter()
                    da.append_text(word)
                    info = da.save()
                    assert info is not None
                    while True:
                        if nodes["b"].status()["main"] == info.commit:
                            d2 = vb.doc("bench.doc", live=False)
                            if word in str(d2.text()):
                                break
                        time.sleep(0.005)
                        if time.perf_counter() - t0 > 20:
                            raise SystemExit(f"committed edit {i} did not arrive in 20 s")
                    commit.append(time.perf_counter() - t0)
                da.close()
            finally:
                va.close()
                vb.close()
        finally:
            for n in nodes.values():
                n.stop()
                n.kill()
    ms = lambda x: f"{x * 1000:.1f}"  # noqa: E731
    rows = [
        ["live update (Vault.doc edit)", len(live), ms(statistics.median(live)), ms(_pct(live, 0.95)), ms(max(live)),
         "1.00x"],
        ["commit (save, Raft, fetch; baseline)", len(commit), ms(statistics.median(commit)),
         ms(_pct(commit, 0.95)), ms(max(commit)), f"{statistics.median(commit) / statistics.median(live):.0f}x slower"],
    ]
    body = table(["path A -> B", "edits", "p50 ms", "p95 ms", "max ms", "vs live"], rows)
    notes = ["two `pcloud serve` processes (both Raft voters) on 127.0.0.1, the document open on both through "
             "Vault.doc() in the bench process; the edit is timed until B's open document shows it.",
             "Target (issue 5): live updates reach connected peers within a fraction of a second."]
    if args.no_append:
        print(body)
    else:
        append_results("bench_docs_live: live CRDT document updates vs commits", body, notes)


if __name__ == "__main__":
    main()
