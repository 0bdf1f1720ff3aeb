"""Shared bench plumbing: machine description, timing, table printing, RESULTS.md appending."""
from __future__ import annotations

import datetime
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"load {load:.1f} at start")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def sh(*cmd: str, cwd: str | os.PathLike | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (root only) so reads hit the disk; False if not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (printed to the terminal and appended to RESULTS.md as is)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def append_results(title: str, body: str, notes: Sequence[str] = ()) -> None:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title} — {when}\n\nMachine: {machine()}\n\n{body}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(RESULTS, "a") as f:
        f.write(text)
    print(text)


def make_big(path: Path, mib: int) -> None:
    """A file of `mib` MiB of random bytes (incompressible, no dedup), written in 64 MiB blocks."""
    block = 64 << 20
    with open(path, "wb") as f:
        left = mib << 20
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def make_small(root: Path, n: int, seed: int = 1) -> int:
    """`n` files of 1-64 KiB of random bytes in 100 folders under `root`; returns their total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(n):
        d = root / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1 << 10, 64 << 10)
        (d / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total
