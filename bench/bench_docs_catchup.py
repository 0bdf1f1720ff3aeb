"""Document catch-up when two devices meet: state-vector exchange vs paging the update log.

    .venv/bin/python bench/bench_docs_catchup.py [--updates 2000 10000] [--no-append]

A laptop types a document one keystroke per update (a real pycrdt update,
sealed with the vault key, published into its DocSync log); then a phone that
has never seen it connects over QUIC on loopback and pulls:

* state vector (what two devices holding the key do now): the phone sends its
  sealed state vector, the laptop answers with the one update it lacks, the
  phone stores the merged state as a checkpoint;
* log paging (the baseline, and what a device does against the key-less cloud
  node before compaction): heads, then every entry of the laptop's log.

Measured in the same run: time from pull to converged, sealed bytes received,
and the phone's log size afterwards. Compaction is off on the laptop so both
paths start from the same full log. Prints a table and appends it to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_results, table  # noqa: E402
from pcloud.doclive import DocMerger, open_update, seal_update  # noqa: E402
from pcloud.store.crypto import Keyring  # noqa: E402
from pcloud.store.documents import Document  # noqa: E402
from replication.doclog import SqliteDocumentLog  # noqa: E402
from replication.docsync import DocSync  # noqa: E402
from replication.protocol import DocUpdate  # noqa: E402
from transport.endpoint import Endpoint  # noqa: E402

NEVER = 1 << 62


async def one(base: Path, n: int, keyring: Keyring, via_sv: bool) -> dict[str, float]:
    tag = os.urandom(32)
    ep_l = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
    ep_p = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
    log_l = SqliteDocumentLog(base / f"laptop-{n}-{via_sv}.sqlite")
    log_p = SqliteDocumentLog(base / f"phone-{n}-{via_sv}.sqlite")
    laptop = DocSync(ep_l, log_l, merger=DocMerger(keyring), compact_after=NEVER)
    phone = DocSync(ep_p, log_p, merger=DocMerger(keyring) if via_sv else None, compact_after=NEVER)
    laptop.serve()
    phone.serve()
    doc = Document("bench")
    text = "the quick brown fox jumps over the lazy dog. "
    for i in range(n):
        before = doc.state_vector()
        doc.insert_text("body", len(str(doc.text("body"))), text[i % len(text)])
        seq = laptop.next_seq(tag, ep_l.device_id)
        laptop.publish(DocUpdate(tag, ep_l.device_id, seq, seal_update(keyring, tag, doc.update_since(before))))
    session = await ep_p.connect(ep_l.device_id, ep_l.local_address)
    t0 = time.perf_counter()
    await phone.pull(session)
    # the phone's state, rebuilt from its log alone (what its node and documents read)
    _, pieces = log_p.pieces(tag)
    got = Document("check")
    for piece in pieces:
        got.apply(open_update(keyring, tag, piece))
    elapsed = time.perf_counter() - t0
    assert str(got.text("body")) == str(doc.text("body")), "the phone did not converge"
    assert (phone.stats.sv_exchanges == 1) == via_sv
    size = sum(len(pc) for pc in pieces)
    out = {"s": elapsed, "bytes": phone.stats.bytes_received, "log_bytes": size, "rows": len(pieces)}
    for ep in (ep_l, ep_p):
        await ep.close()
    log_l.close()
    log_p.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()
    keyring = Keyring.generate()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pcloud-bench-doccatch-") as tmp:
        for n in args.updates:
            logs = asyncio.run(one(Path(tmp), n, keyring, via_sv=False))
            sv = asyncio.run(one(Path(tmp), n, keyring, via_sv=True))
            rows.append([f"{n:,} keystroke updates",
                         f"{sv['s'] * 1000:.0f} ms / {logs['s'] * 1000:.0f} ms",
                         f"{sv['bytes'] / 1024:.1f} KiB / {logs['bytes'] / 1024:.1f} KiB",
                         f"{int(sv['rows'])} row, {sv['log_bytes'] / 1024:.1f} KiB / "
                         f"{int(logs['rows']):,} rows, {logs['log_bytes'] / 1024:.1f} KiB",
                         f"{logs['s'] / sv['s']:.1f}x faster, {logs['bytes'] / max(sv['bytes'], 1):.0f}x fewer bytes"])
    body = table(["document history", "catch-up time: state vector / log paging",
                  "sealed bytes received: sv / log", "phone's log after: sv / log", "state vector vs log"], rows)
    notes = ["two DocSync devices over real QUIC on loopback, one process; updates sealed with AES-GCM as pcloud does",
             "time = pull until the phone's log alone rebuilds the laptop's text (checked)",
             "log paging is what any device does against the key-less cloud node before it holds a checkpoint"]
    print(body)
    if not args.no_append:
        append_results("Document catch-up: state vector vs log paging (bench_docs_catchup.py)", body, notes)


if __name__ == "__main__":
    main()
