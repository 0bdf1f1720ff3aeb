"""The object-store backends every store-model test runs against (a conformance suite, irmin-test style).

Test modules import the ``store`` fixture from here; it is parametrised over
the in-memory store and the on-disk SQLite/pack store, so trees, history,
diff, merge and documents are checked on both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from pcloud.store.crypto import Keyring
from pcloud.store.memory import MemoryObjectStore
from pcloud.store.objects import ObjectWriter
from pcloud.store.objectstore import ObjectStore


def _memory(tmp_path: Path, keyring: Keyring) -> ObjectWriter:
    return MemoryObjectStore(keyring)


def _disk(tmp_path: Path, keyring: Keyring) -> ObjectWriter:
    return ObjectStore.create(tmp_path / "objects", keyring)


BACKENDS: dict[str, Callable[[Path, Keyring], ObjectWriter]] = {"memory": _memory, "disk": _disk}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path):
    s = BACKENDS[request.param](tmp_path, Keyring.generate())
    yield s
    close = getattr(s, "close", None)
    if close is not None:
        close()
