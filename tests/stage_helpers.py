"""A big blob sent through the node's staging path, for tests: source store -> StagingStore -> Stager."""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pcloud.folders_stage import Stager, StagingStore
from pcloud.store.crypto import Keyring
from pcloud.store.objects import Blob
from pcloud.store.objectstore import ObjectStore


@contextmanager
def staged_transfer(tmp_path: Path, staging_dir: Path, size: int
                    ) -> Iterator[tuple[Stager, ObjectStore, bytes, Blob, bytes]]:
    """(stager, destination store, blob id, manifest, data) after ``size`` random bytes were stored as one blob
    in a source store, announced to a Stager in ``staging_dir`` and every chunk put into the destination through
    `StagingStore` (as the node's replicator does). Everything is closed afterwards."""
    keyring = Keyring.generate()
    src = ObjectStore.create(tmp_path / "src", keyring)
    dst = ObjectStore.create(tmp_path / "dst", keyring)
    stager = Stager(staging_dir, lambda: ObjectStore.open(tmp_path / "dst", keyring), min_size=1 << 20)
    try:
        data = os.urandom(size)
        with src.transaction():
            oid, _ = src.write_stream(io.BytesIO(data))
        blob = src.get(oid)
        assert isinstance(blob, Blob)
        stager.announce(oid, blob)
        store = StagingStore(dst, stager)
        with store.transaction():                 # never raises for the stager's sake: staging is best effort
            for ref in blob.chunks:
                store.put_sealed(src.get_sealed(ref.id))
        yield stager, dst, oid, blob, data
    finally:
        stager.close()
        src.close()
        dst.close()
