"""Issue 2 benchmark: `pcloud put/get` through the public Vault API vs `cp` and `git`, same data, same run.

Run: .venv/bin/python bench/bench_vault.py [--big-mib 1024] [--files 10000] [--insert-mib 256]

Rows (each with its baseline measured here, on the same generated data):
* one large file: put / get vs `cp` (page cache, no fsync) and `cp` + sync (durable, like pcloud);
* 10,000 files of 1–64 KiB: put vs `cp -r` and vs `git add -A && git commit`; get vs `cp -r`;
  re-put of the unchanged folder (stat cache);
* a 1-byte insert in the middle of a large file: new bytes stored by the second put.
pcloud's put is durable (packs fsynced before the commit moves the branch); plain `cp` is not,
which is why both `cp` variants are shown. Targets from the issue: large put >= 50% of cp,
10k put faster than git, unchanged re-put < 1 s, 1-byte insert < 1 MiB new.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_results, make_big, make_small, sh, table, timed  # noqa: E402

import pcloud  # noqa: E402


def pack_bytes(vault_dir: Path) -> int:
    return sum(p.stat().st_size for p in (vault_dir / "store" / "packs").glob("*.pack"))


def mbps(nbytes: int, secs: float) -> str:
    return f"{nbytes / secs / 1e6:,.0f} MB/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--insert-mib", type=int, default=256)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir on /work's disk)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pcloud-bench-", dir=args.dir or str(Path(__file__).parent)))
    rows: list[list[object]] = []
    notes: list[str] = []
    try:
        # ---- one large file
        big = scratch / "big.bin"
        make_big(big, args.big_mib)
        size = big.stat().st_size
        os.sync()
        t_cp, _ = timed(lambda: sh("cp", str(big), str(scratch / "big.cp")))
        t_cp_sync, _ = timed(lambda: (sh("cp", str(big), str(scratch / "big.cp2")), os.sync()))
        v = pcloud.Vault.create(scratch / "vault", name="bench")
        t_put, res = timed(lambda: v.import_path(big, "big.bin"))
        t_get, _ = timed(lambda: v.export("big.bin", scratch / "big.out"))
        t_cp_back, _ = timed(lambda: sh("cp", str(scratch / "big.cp"), str(scratch / "big.cp3")))
        assert (scratch / "big.out").stat().st_size == size
        for p in ("big.cp", "big.cp2", "big.cp3", "big.out"):
            (scratch / p).unlink()
        rows += [
            [f"put {args.big_mib} MiB file", f"{t_put:.2f} s", mbps(size, t_put),
             f"cp {mbps(size, t_cp)} / cp+sync {mbps(size, t_cp_sync)}",
             f"{t_cp / t_put:.0%} of cp, {t_cp_sync / t_put:.0%} of cp+sync", ">= 50% of cp"],
            [f"get {args.big_mib} MiB file", f"{t_get:.2f} s", mbps(size, t_get), f"cp {mbps(size, t_cp_back)}",
             f"{t_cp_back / t_get:.0%} of cp", "-"],
        ]

        # ---- 10k small files
        small = scratch / "small"
        total = make_small(small, args.files)
        os.sync()
        t_cpr, _ = timed(lambda: sh("cp", "-r", str(small), str(scratch / "small.cp")))
        gitdir = scratch / "small.git"
        shutil.copytree(small, gitdir)
        os.sync()
        sh("git", "init", "-q", str(gitdir))
        t_git, _ = timed(lambda: (sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "add", "-A", cwd=gitdir),
                                  sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x",
                                     cwd=gitdir)))
        t_sput, r1 = timed(lambda: v.import_path(small, "small"))
        t_reput, r2 = timed(lambda: v.import_path(small, "small"))
        assert r1.files == args.files and r2.commit is None and r2.unchanged == args.files
        t_sget, _ = timed(lambda: v.export("small", scratch / "small.out"))
        t_cpr_back, _ = timed(lambda: sh("cp", "-r", str(scratch / "small.cp"), str(scratch / "small.cp2")))
        rows += [
            [f"put {args.files:,} files ({total / 1e6:.0f} MB)", f"{t_sput:.2f} s", mbps(total, t_sput),
             f"cp -r {t_cpr:.2f} s / git add+commit {t_git:.2f} s",
             f"{t_git / t_sput:.1f}x git's speed", "faster than git"],
            [f"re-put unchanged {args.files:,} files", f"{t_reput:.2f} s", "-", "-", "-", "< 1 s"],
            [f"get {args.files:,} files", f"{t_sget:.2f} s", mbps(total, t_sget), f"cp -r {t_cpr_back:.2f} s",
             f"{t_cpr_back / t_sget:.0%} of cp -r", "-"],
        ]

        # ---- 1-byte insert in the middle of a large file
        ins = scratch / "insert.bin"
        make_big(ins, args.insert_mib)
        v.import_path(ins, "insert.bin")
        before = pack_bytes(v.path)
        data_mid = (args.insert_mib << 20) // 2
        with open(ins, "r+b") as f:
            f.seek(data_mid)
            tail = f.read()
            f.seek(data_mid)
            f.write(b"X" + tail)
        del tail
        t_ins, _ = timed(lambda: v.import_path(ins, "insert.bin"))
        new = pack_bytes(v.path) - before
        rows.append([f"1-byte insert mid {args.insert_mib} MiB file", f"{t_ins:.2f} s", "-",
                     f"{new / 1024:,.0f} KiB new in packs", f"{new / (args.insert_mib << 20):.2%} of the file",
                     "< 1 MiB new"])
        assert v.read("insert.bin")[data_mid] == ord("X")
        notes.append(f"vault fsck after the run: ok={v.fsck().ok}")
        v.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    body = table(["case", "pcloud", "throughput", "baseline (same run)", "ratio", "target"], rows)
    print(body)
    append_results("bench_vault: put/get through the Vault API vs cp and git", body, notes)


if __name__ == "__main__":
    main()
