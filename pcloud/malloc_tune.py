"""Keep glibc from handing bulk buffers back to the kernel between chunks.

A node moves files as chunks of 64 KiB - 1 MiB, and several layers make a
short-lived buffer per chunk: the AEAD's output when a chunk is opened, TLS
records, the bytes a stream read returns. glibc serves allocations above its
mmap threshold (128 KiB at start, raised dynamically only after such a block
is freed) with a fresh ``mmap`` and returns them with ``munmap``, and it trims
freed memory at the top of a heap (per-thread arenas included) once more than
twice that threshold is free. Either way the next chunk's buffer is new
memory, and every 4 KiB page of it costs a page fault with zeroing.

On this project's 2-core VM a fault costs 2-14 us, so that is 0.5-3.5 ms per
MiB. Measured (`bench/bench_malloc.py`, fresh processes): sealing 256 MiB as
256 KiB chunks with glibc's defaults took 0.175 s CPU and 49,596 faults,
tuned 0.072 s and 503; a 256 MiB two-device sync (`bench_sync --big-only`,
same hour) 1.17-1.41 s untuned against 0.99-1.06 s tuned, each node's CPU
~1.0 s against ~0.8 s.

``tune()`` fixes the mmap threshold at 32 MiB (above any chunk, envelope or
read window; far larger allocations still get their own mapping) and the trim
threshold at 64 MiB, so freed chunk buffers stay in the process and are
reused. The cost is that a node keeps up to ~64 MiB of freed heap per arena
instead of returning it; ``M_ARENA_MAX`` is capped at 4 (the default is 8 per
core) so that stays bounded.

Only the long-running node processes (`pcloud serve`, `pcloud relay`) call
it: a short CLI command exits before reuse would pay. Elsewhere than glibc
(musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("pcloud.node")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
ARENA_MAX = 4

_DISABLE = "PCLOUD_MALLOC_TUNE"
"""Set to 0 to leave glibc's defaults (for measuring what the tuning buys)."""


def tune() -> bool:
    """Apply the settings above to this process; True if glibc accepted them all."""
    if os.environ.get(_DISABLE, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.debug("mallopt refused a setting; glibc's defaults stay")
    return ok


__all__ = ["tune"]
