"""A replication peer in its own process (for kill -9 tests and the replication bench).

    python tests/replication_peer.py serve --store DIR [--keyring FILE]
        prints "<port> <device key hex>" then serves objects until killed
    python tests/replication_peer.py fetch --store DIR [--keyring FILE] --peer HEX --port N --root HEX [--policy P]
        fetches everything below the root from the peer, prints one JSON line with the result

A keyring file is JSON {"current": n, "epochs": {"n": "hex secret"}}; without one the store is
opened sealed-only (the cloud node).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcloud.errors import IntegrityError  # noqa: E402
from pcloud.store import sealing  # noqa: E402
from pcloud.store.crypto import Keyring  # noqa: E402
from pcloud.store.objectstore import ObjectStore  # noqa: E402
from replication.fetcher import Replicator  # noqa: E402
from replication.policy import Policy  # noqa: E402
from transport.endpoint import Endpoint  # noqa: E402


def save_keyring(keyring: Keyring, path: Path) -> None:
    path.write_text(json.dumps({"current": keyring.current,
                                "epochs": {str(e): s.hex() for e, s in keyring.epochs.items()}}))


def load_keyring(path: str | None) -> Keyring | None:
    if path is None:
        return None
    d = json.loads(Path(path).read_text())
    return Keyring({int(e): bytes.fromhex(s) for e, s in d["epochs"].items()}, d["current"])


def open_store(path: str, keyring: Keyring | None) -> ObjectStore:
    p = Path(path)
    return ObjectStore.open(p, keyring) if (p / "index.sqlite").exists() else ObjectStore.create(p, keyring)


def replicator(ep: Endpoint, store: ObjectStore, keyring: Keyring | None, policy: Policy) -> Replicator:
    verify = None if keyring is None else (lambda oid, data: sealing.open_verified(keyring, data, oid) and None)
    return Replicator(ep, store, policy, verify=verify, invalid_errors=(IntegrityError,))


async def serve(args: argparse.Namespace) -> None:
    keyring = load_keyring(args.keyring)
    store = open_store(args.store, keyring)
    ep = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
    replicator(ep, store, keyring, Policy.full()).serve()
    print(ep.local_address[1], ep.device_id.hex(), flush=True)
    await asyncio.Event().wait()


async def fetch(args: argparse.Namespace) -> None:
    keyring = load_keyring(args.keyring)
    store = open_store(args.store, keyring)
    ep = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
    rep = replicator(ep, store, keyring, Policy.named(args.policy))
    t0 = time.perf_counter()
    session = await ep.connect(bytes.fromhex(args.peer), ("127.0.0.1", args.port), path_kind="lan")
    result = await rep.sync([bytes.fromhex(args.root)], peers=[session])
    elapsed = time.perf_counter() - t0
    counters = rep.progress().peers.get(session.peer_id)
    print(json.dumps({"complete": result.complete, "stored": result.stored, "missing": result.missing,
                      "seconds": elapsed, "bytes": counters.bytes if counters else 0}), flush=True)
    await ep.close()
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["serve", "fetch"])
    ap.add_argument("--store", required=True)
    ap.add_argument("--keyring")
    ap.add_argument("--peer")
    ap.add_argument("--port", type=int)
    ap.add_argument("--root")
    ap.add_argument("--policy", default="full")
    args = ap.parse_args()
    asyncio.run(serve(args) if args.command == "serve" else fetch(args))


if __name__ == "__main__":
    main()
