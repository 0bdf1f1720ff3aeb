"""pcloud.malloc_tune: freed chunk buffers are reused instead of faulted in anew (glibc only).

Each case runs in a fresh interpreter (mallopt settings are per process and
must come before the allocations they govern) and counts the minor page
faults of sealing 32 MiB as 256 KiB chunks with the store's own code.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

_CHILD = r"""
import os, resource, sys
from pcloud import malloc_tune
from pcloud.store import sealing
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Chunk, Kind
tuned = malloc_tune.tune()
keyring = Keyring.generate()
data = os.urandom(32 << 20)
mv = memoryview(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(0, len(mv), 256 << 10):
    plain = bytes(mv[i:i + (256 << 10)])
    sealing.seal(keyring, Chunk(plain), plain=plain, oid=keyring.object_id(Kind.CHUNK, plain))
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tune: str) -> tuple[bool, int]:
    env = dict(os.environ, PCLOUD_MALLOC_TUNE=tune, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout.split()
    return out[0] == "1", int(out[1])


def test_tuned_process_reuses_chunk_buffers() -> None:
    tuned, faults_tuned = _faults("1")
    untuned, faults_default = _faults("0")
    assert tuned and not untuned
    # 32 MiB sealed into new envelopes is 8,192 pages: glibc's defaults fault most of them in
    # (an mmap per envelope), the tuned heap reuses the first few envelopes' memory.
    assert faults_default > 4000, faults_default
    assert faults_tuned < faults_default / 4, (faults_tuned, faults_default)
