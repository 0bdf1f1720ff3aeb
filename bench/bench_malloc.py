"""What pcloud.malloc_tune buys: per-chunk buffers with glibc's default malloc vs tuned.

Run: .venv/bin/python bench/bench_malloc.py [--mib 256] [--rounds 3] [--dry]

Each measurement runs in a fresh child process, once with glibc's defaults
(PCLOUD_MALLOC_TUNE=0) and once tuned, alternating which goes first. The
child makes the per-chunk work a node does with a big file, with the store's
real code: seal each ~256 KiB chunk of a random buffer into a new envelope
(``sealing.seal``), open and verify each envelope (``sealing.open_verified``:
AEAD decrypt into a new buffer, keyed BLAKE3), and copy each chunk into new
bytes (what a stream read does). It reports CPU seconds, kernel seconds and
minor page faults of that work alone (the input buffer is made first).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import append_results, table  # noqa: E402

CHUNK = 256 * 1024


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def child(mib: int) -> dict[str, list[float]]:
    from pcloud import malloc_tune
    from pcloud.store import sealing
    from pcloud.store.crypto import Keyring
    from pcloud.store.objects import Chunk, Kind

    tuned = malloc_tune.tune()
    keyring = Keyring.generate()
    data = os.urandom(mib << 20)
    mv = memoryview(data)
    out: dict[str, list[float]] = {"tuned": [float(tuned)]}

    def measure(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        c0, s0, f0 = _usage()
        fn()
        c1, s1, f1 = _usage()
        out[name] = [c1 - c0, s1 - s0, float(f1 - f0)]

    envelopes: list[tuple[bytes, bytes]] = []

    def seal_all() -> None:
        for i in range(0, len(mv), CHUNK):
            plain = bytes(mv[i:i + CHUNK])
            oid = keyring.object_id(Kind.CHUNK, plain)
            _, e = sealing.seal(keyring, Chunk(plain), plain=plain, oid=oid)
            envelopes.append((oid, e[:64]))  # keep ids and headers only: the bodies are freed at once

    def open_all() -> None:
        for i in range(0, len(mv), CHUNK):
            plain = bytes(mv[i:i + CHUNK])
            oid = keyring.object_id(Kind.CHUNK, plain)
            _, e = sealing.seal(keyring, Chunk(plain), plain=plain, oid=oid)
            sealing.open_verified(keyring, e, oid)

    def copy_all() -> None:
        for i in range(0, len(mv), CHUNK):
            bytes(mv[i:i + CHUNK])

    measure("seal", seal_all)
    measure("seal + open_verified", open_all)
    measure("copy into new bytes", copy_all)
    return out


def run_child(mib: int, tuned: bool) -> dict[str, list[float]]:
    env = dict(os.environ, PCLOUD_MALLOC_TUNE="1" if tuned else "0")
    res = subprocess.run([sys.executable, __file__, "--child", str(mib)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dry", action="store_true", help="print, do not append to RESULTS.md")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    runs: dict[bool, list[dict[str, list[float]]]] = {False: [], True: []}
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for tuned in order:
            runs[tuned].append(run_child(args.mib, tuned))
    if not all(run["tuned"][0] for run in runs[True]):
        print("mallopt was refused (not glibc?): nothing to compare", file=sys.stderr)
        sys.exit(1)
    rows = []
    for name in ("seal", "seal + open_verified", "copy into new bytes"):
        d = [statistics.median(run[name][i] for run in runs[False]) for i in range(3)]
        t = [statistics.median(run[name][i] for run in runs[True]) for i in range(3)]
        rows.append([f"{name}, {args.mib} MiB as {CHUNK >> 10} KiB chunks",
                     f"{d[0]:.3f} s ({d[1]:.3f} sys, {d[2]:,.0f} faults)",
                     f"{t[0]:.3f} s ({t[1]:.3f} sys, {t[2]:,.0f} faults)",
                     f"{d[0] / t[0]:.2f}" if t[0] > 0 else "-"])
    body = table(["work (CPU seconds, median of rounds)", "glibc defaults", "pcloud.malloc_tune", "CPU default / tuned"],
                 rows)
    notes = [f"{args.rounds} rounds, each a fresh process per setting, alternating which goes first",
             "tuned: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 64 MiB, M_ARENA_MAX 4 (what `pcloud serve` and "
             "`pcloud relay` set at start)"]
    if args.dry:
        print(body)
        print("\n".join(f"- {n}" for n in notes))
    else:
        append_results("Per-chunk buffers: glibc malloc defaults vs tuned (bench_malloc.py)", body, notes)


if __name__ == "__main__":
    main()
