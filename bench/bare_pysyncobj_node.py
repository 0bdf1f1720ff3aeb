"""Baseline node for bench_consensus.py: bare pysyncobj 0.3.17 with its own TCP transport.

``python bench/bare_pysyncobj_node.py INDEX PORT0,PORT1,PORT2 JOURNAL_DIR``. A SyncObj
with one replicated ``cas(branch, expected, new)`` over a dict, its own tick
thread and TCP transport, journal on disk (pysyncobj's FileJournal, no fsync), the
same append settings as pcloud's node (no batching, 50 ms heartbeat). Commands
on stdin (JSON lines): ``status``; ``bench`` {n, workers}: ``workers`` loops of ``n``
sequential CAS each, all in flight together; answers on stdout.
Nothing of pcloud is imported: this is the ceiling the design is measured against.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated


class Heads(SyncObj):
    def __init__(self, me: str, others: list[str], journal: str) -> None:
        conf = SyncObjConf(appendEntriesUseBatch=False, appendEntriesPeriod=0.05, raftMinTimeout=0.4,
                           raftMaxTimeout=0.9, dynamicMembershipChange=False, useFork=False,
                           journalFile=journal, fullDumpFile=journal + ".dump")
        super().__init__(me, others, conf)
        self.heads: dict[str, bytes] = {}

    @replicated
    def cas(self, branch: str, expected: bytes | None, new: bytes) -> bool:
        if self.heads.get(branch) != expected:
            return False
        self.heads[branch] = new
        return True


def bench(obj: Heads, n: int, workers: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        branch = f"bare-{w}"
        for i in range(n):
            done = threading.Event()
            out: list = []
            t0 = time.perf_counter()

            def cb(res, err, out=out, done=done) -> None:
                out.append((res, err))
                done.set()
            obj.cas(branch, obj.heads.get(branch), i.to_bytes(8, "big"), callback=cb)
            if not done.wait(5.0) or out[0][1] != FAIL_REASON.SUCCESS:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"elapsed": time.perf_counter() - start, "latencies": latencies, "errors": errors[0]}


def main() -> None:
    index = int(sys.argv[1])
    ports = [int(p) for p in sys.argv[2].split(",")]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    os.makedirs(sys.argv[3], exist_ok=True)
    obj = Heads(addrs[index], [a for i, a in enumerate(addrs) if i != index],
                os.path.join(sys.argv[3], f"bare{index}.journal"))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "status":
            st = obj.getStatus()
            out = {"leader": st["state"] == 2}
        elif req["op"] == "bench":
            out = bench(obj, req["n"], req["workers"])
        else:
            out = {"error": "bad op"}
        print(json.dumps(out), flush=True)
    obj.destroy()


if __name__ == "__main__":
    main()
