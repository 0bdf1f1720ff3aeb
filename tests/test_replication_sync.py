"""Object replication over real QUIC sessions on 127.0.0.1, between real ObjectStores with real keys."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from replication import protocol as p
from replication.fetcher import Replicator
from replication.policy import Policy
from transport.endpoint import Endpoint
from transport.session import Session, Stream
from pcloud.errors import IntegrityError
from pcloud.store import history, sealing, trees
from pcloud.store.crypto import Keyring
from pcloud.store.objectstore import ObjectStore

from replication_helpers import content, make_vault, random_files, reachable
from replication_peer import save_keyring
from transport_helpers import run, wait_for

PEER_SCRIPT = Path(__file__).resolve().parent / "replication_peer.py"


def keyed(ep: Endpoint, store: ObjectStore, keyring: Keyring | None, policy: Policy | None = None) -> Replicator:
    verify = None if keyring is None else (lambda oid, data: sealing.open_verified(keyring, data, oid))
    return Replicator(ep, store, policy or Policy.full(), verify=verify, invalid_errors=(IntegrityError,))


async def endpoints(n: int) -> list[Endpoint]:
    return [await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True) for _ in range(n)]


def envelope_bytes(store: ObjectStore, head: bytes) -> int:
    return sum(len(store.get_sealed(o)) for o in reachable(store, [head]))


@pytest.fixture
def vault_a(tmp_path: Path):
    files = random_files(60, 1, 200_000, seed=5)
    files["big/file.bin"] = os.urandom(3_000_000)
    vault, _ = make_vault(tmp_path / "a", files, commits=3)
    d = vault.doc("notes/todo")
    d.text("body").insert(0, "buy milk")
    d.save()
    head = vault.store.refs.get("main")
    yield vault, head
    vault.close()


def test_device_b_fetches_everything_from_a(tmp_path: Path, vault_a) -> None:
    vault, head = vault_a

    async def body() -> None:
        a, b = await endpoints(2)
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_a = keyed(a, vault.store, vault.keyring)
        rep_a.serve()
        rep_b = keyed(b, store_b, vault.keyring)
        session = await b.connect(a.device_id, a.local_address, path_kind="lan")
        result = await rep_b.sync([head])
        assert result.complete and result.missing == 0
        assert result.stored == len(reachable(vault.store, [head]))
        prog = rep_b.progress()
        assert prog.wanted_objects == 0 and prog.wanted_bytes == 0 and not prog.running
        assert prog.peers[session.peer_id].bytes == envelope_bytes(vault.store, head) == rep_a.served_bytes
        assert json.dumps(prog.as_json())
        assert store_b.fsck().ok
        assert content(store_b, head) == content(vault.store, head)
        again = await rep_b.sync([head])
        assert again.complete and again.stored == 0
        await a.close()
        await b.close()

    run(body())


def test_cloud_archives_without_key_and_serves_a_third_device(tmp_path: Path, vault_a) -> None:
    vault, head = vault_a
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    with vault.commit("marker") as tx:
        tx.write("secret.txt", marker * 50)
    head = vault.store.refs.get("main")

    async def body() -> None:
        a, cloud, c = await endpoints(3)
        archive = ObjectStore.create(tmp_path / "cloud", None)
        keyed(a, vault.store, vault.keyring).serve()
        rep_cloud = keyed(cloud, archive, None, Policy.archive())
        rep_cloud.serve()
        await cloud.connect(a.device_id, a.local_address)
        result = await rep_cloud.sync([head])
        assert result.complete
        assert archive.fsck().ok  # framing, digests and closure, without the key
        await a.close()  # the laptop goes away; the cloud node alone serves
        store_c = ObjectStore.create(tmp_path / "c", vault.keyring)
        rep_c = keyed(c, store_c, vault.keyring)
        await c.connect(cloud.device_id, cloud.local_address)
        result = await rep_c.sync([head])
        assert result.complete
        assert content(store_c, head) == content(vault.store, head)
        assert store_c.fsck().ok
        await cloud.close()
        await c.close()

    run(body())
    for f in (tmp_path / "cloud").rglob("*"):
        if f.is_file():
            assert marker not in f.read_bytes(), f"plaintext in {f}"


def test_on_demand_fetches_metadata_then_a_file_on_request(tmp_path: Path, vault_a) -> None:
    vault, head = vault_a

    async def body() -> None:
        a, b = await endpoints(2)
        keyed(a, vault.store, vault.keyring).serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring, Policy.on_demand())
        await b.connect(a.device_id, a.local_address)
        result = await rep_b.sync([head])
        assert result.complete
        tree = history.get_commit(store_b, head).tree
        entries = dict(trees.walk(store_b, tree))  # names, sizes, manifests: all here
        assert "big/file.bin" in entries and "notes/todo" in entries
        blob = entries["big/file.bin"].id
        assert not any(store_b.has(c) for c in store_b.refs_of(blob))
        meta_bytes = rep_b.progress().peers[a.device_id].bytes
        assert meta_bytes < 200_000  # no chunk travelled
        result = await rep_b.fetch_now([blob])
        assert result.complete
        assert b"".join(store_b.read_stream(blob)) == b"".join(vault.store.read_stream(blob))
        other = entries["d0/f0000.bin"].id
        assert not all(store_b.has(c) for c in store_b.refs_of(other))
        await a.close()
        await b.close()

    run(body())


# ---- a misbehaving peer ------------------------------------------------------------------------

def bad_server(store: ObjectStore, mode: str) -> Callable[[Session, Stream], Any]:
    """A repl.get handler that answers with wrong bytes: another object's envelope, garbage, or a
    right header over a flipped body."""

    async def handler(session: Session, stream: Stream) -> None:
        ids = p.decode_get_meta(stream.meta)
        everything = list(store.iter_ids())
        for oid in ids:
            data = store.get_sealed(oid)
            if mode == "swap":
                data = store.get_sealed(next(o for o in everything if o != oid))
            elif mode == "garbage":
                data = os.urandom(len(data))
            elif mode == "tamper":
                data = data[:-1] + bytes([data[-1] ^ 0x40])
            await stream.write(struct.pack(">BI", p.ST_OK, len(data)) + data)

    return handler


@pytest.mark.parametrize("mode", ["swap", "garbage", "tamper"])
def test_malicious_peer_is_rejected_and_nothing_bad_is_stored(tmp_path: Path, vault_a, mode: str) -> None:
    vault, head = vault_a

    async def body() -> None:
        evil, good, b = await endpoints(3)
        evil.on_stream(p.GET, bad_server(vault.store, mode))
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring)
        s_evil = await b.connect(evil.device_id, evil.local_address, path_kind="lan")
        result = await rep_b.sync([head], peers=[s_evil])
        assert not result.complete
        assert rep_b.progress().peers[evil.device_id].rejected >= 1
        assert list(store_b.iter_ids()) == []  # nothing it sent was stored
        # an honest peer (ranked lower: relay) then completes the sync; the evil one stays connected
        keyed(good, vault.store, vault.keyring).serve()
        s_good = await b.connect(good.device_id, good.local_address, path_kind="relay")
        result = await rep_b.sync([head], peers=[s_evil, s_good])
        assert result.complete
        assert store_b.fsck().ok and content(store_b, head) == content(vault.store, head)
        for ep in (evil, good, b):
            await ep.close()

    run(body())


def test_key_less_archive_cannot_detect_a_tampered_body_but_the_reader_can(tmp_path: Path, vault_a) -> None:
    """Documented limit: the cloud node checks framing and ids only. A key-holding device fetching from
    it detects the tampering and takes the object from another peer."""
    vault, head = vault_a

    async def body() -> None:
        evil, cloud, good, c = await endpoints(4)
        evil.on_stream(p.GET, bad_server(vault.store, "tamper"))
        archive = ObjectStore.create(tmp_path / "cloud", None)
        rep_cloud = keyed(cloud, archive, None, Policy.archive())
        rep_cloud.serve()
        s = await cloud.connect(evil.device_id, evil.local_address)
        assert (await rep_cloud.sync([head], peers=[s])).complete  # accepted: it cannot tell
        keyed(good, vault.store, vault.keyring).serve()
        store_c = ObjectStore.create(tmp_path / "c", vault.keyring)
        rep_c = keyed(c, store_c, vault.keyring)
        s_cloud = await c.connect(cloud.device_id, cloud.local_address, path_kind="lan")
        assert not (await rep_c.sync([head], peers=[s_cloud])).complete
        assert list(store_c.iter_ids()) == []
        s_good = await c.connect(good.device_id, good.local_address, path_kind="relay")
        assert (await rep_c.sync([head], peers=[s_cloud, s_good])).complete
        assert content(store_c, head) == content(vault.store, head)
        for ep in (evil, cloud, good, c):
            await ep.close()

    run(body())


# ---- interruptions -----------------------------------------------------------------------------

def big_vault(path: Path, mib: int) -> tuple[Any, bytes, bytes]:
    data = os.urandom(mib << 20)
    vault, head = make_vault(path, {"big.bin": data, "small.txt": b"hello"})
    return vault, head, data


def test_dropped_session_resumes_without_refetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # QUIC only: the cut at 40% expects the sizer (100 ms poll) to have answered by then; over the
    # TCP bulk lane (transport.lane) 24 MiB can arrive faster than that, and the check below races.
    monkeypatch.setenv("PCLOUD_TCP_LANE", "0")
    vault, head, data = big_vault(tmp_path / "a", 24)
    total = envelope_bytes(vault.store, head)

    async def body() -> None:
        a, b = await endpoints(2)
        rep_a = keyed(a, vault.store, vault.keyring)
        rep_a.serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring)
        session = await b.connect(a.device_id, a.local_address)

        async def cut() -> None:
            def received() -> int:
                c = rep_b.progress().peers.get(a.device_id)
                return c.bytes if c else 0

            # cut once 40% arrived AND the sizer has reported the rest (it polls every 100 ms; on a loaded
            # CI machine 40% can arrive first, and the wanted_bytes check below needs known sizes)
            await wait_for(lambda: received() > total * 0.4 and rep_b.progress().wanted_bytes > 0, timeout=30)
            session.close("cable pulled")

        cutter = asyncio.get_running_loop().create_task(cut())
        result = await rep_b.sync([head])
        await cutter
        assert not result.complete and result.missing > 0
        stored = sum(len(store_b.get_sealed(o)) for o in store_b.iter_ids())
        assert stored > total * 0.2
        prog = rep_b.progress()  # what `pcloud status` shows while the peer is away
        assert prog.wanted_objects == result.missing
        assert total - stored - 64 * 1024 <= prog.wanted_bytes <= total - stored, (prog, total, stored)
        first_served = rep_a.served_bytes
        await b.connect(a.device_id, a.local_address)
        result = await rep_b.sync([head])
        assert result.complete
        second = rep_a.served_bytes - first_served
        assert second <= total - stored + 64 * 1024, (second, total, stored)
        assert b"".join(store_b.read_stream(next(iter(dict(trees.walk(store_b, history.get_commit(store_b, head).tree)).values())).id)) == data
        assert store_b.fsck().ok
        await a.close()
        await b.close()

    run(body())


@pytest.mark.slow
def _packed(store_dir: Path) -> int:
    """Bytes in a store's pack files (committed or not) as another process writes them."""
    return sum(p.stat().st_size for p in (store_dir / "packs").glob("*.pack")) if (store_dir / "packs").exists() else 0


def test_killed_process_resumes_without_refetching(tmp_path: Path) -> None:
    vault, head, data = big_vault(tmp_path / "a", 64)
    total = envelope_bytes(vault.store, head)
    keyfile = tmp_path / "keyring.json"
    save_keyring(vault.keyring, keyfile)
    store_dir = tmp_path / "b"

    async def body() -> None:
        (a,) = await endpoints(1)
        rep_a = keyed(a, vault.store, vault.keyring)
        rep_a.serve()
        cmd = [sys.executable, str(PEER_SCRIPT), "fetch", "--store", str(store_dir), "--keyring", str(keyfile),
               "--peer", a.device_id.hex(), "--port", str(a.local_address[1]), "--root", head.hex()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        try:
            # kill once B has written a good part to its packs, not only once A has sent it: under load B's
            # writer can lag a whole receive buffer behind, and a kill then leaves nothing committed
            # (seen once in CI: 70% served, 0 stored). At most one write batch (16 MiB) is uncommitted.
            await wait_for(lambda: rep_a.served_bytes > total * 0.7 and _packed(store_dir) > total * 0.55, timeout=60)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        # let the server drain what the dead client's last credits allowed: those bytes belong to run 1
        await asyncio.sleep(0.5)
        store_b = ObjectStore.open(store_dir, vault.keyring)
        assert store_b.fsck().ok  # a killed fetch leaves a clean store: closure holds
        stored = sum(len(store_b.get_sealed(o)) for o in store_b.iter_ids())
        store_b.close()
        assert stored > total * 0.2
        first_served = rep_a.served_bytes
        out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        result = json.loads(out.stdout)
        assert result["complete"]
        second = rep_a.served_bytes - first_served
        assert second <= total - stored + 64 * 1024, (second, total, stored)
        await a.close()

    run(body(), timeout=240)
    store_b = ObjectStore.open(store_dir, vault.keyring)
    assert store_b.fsck().ok
    assert content(store_b, head) == content(vault.store, head)
    store_b.close()
    vault.close()


def test_two_peers_share_the_work(tmp_path: Path) -> None:
    vault, head, data = big_vault(tmp_path / "a", 16)

    async def body() -> None:
        a1, a2, b = await endpoints(3)
        keyed(a1, vault.store, vault.keyring).serve()
        keyed(a2, vault.store, vault.keyring).serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring)
        await b.connect(a1.device_id, a1.local_address, path_kind="lan")
        await b.connect(a2.device_id, a2.local_address, path_kind="direct")
        result = await rep_b.sync([head])
        assert result.complete
        peers = rep_b.progress().peers
        assert peers[a1.device_id].objects > 0 and peers[a2.device_id].objects > 0
        total = envelope_bytes(vault.store, head)
        # endgame may fetch a few in-flight objects twice (the first copy wins), never more than half again
        assert total <= peers[a1.device_id].bytes + peers[a2.device_id].bytes <= total * 1.5
        assert content(store_b, head) == content(vault.store, head)
        for ep in (a1, a2, b):
            await ep.close()

    run(body())
    vault.close()


def test_peer_that_serves_no_objects_ends_the_run_and_close_stops_a_fetch(tmp_path: Path, vault_a) -> None:
    vault, head = vault_a

    async def body() -> None:
        mute, a, b = await endpoints(3)  # mute runs no Replicator: its streams are refused
        keyed(a, vault.store, vault.keyring).serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring)
        s_mute = await b.connect(mute.device_id, mute.local_address)
        result = await asyncio.wait_for(rep_b.sync([head], peers=[s_mute]), 10)
        assert not result.complete and result.missing == 1
        await b.connect(a.device_id, a.local_address)
        task = asyncio.get_running_loop().create_task(rep_b.sync([head]))
        await wait_for(lambda: rep_b.plan.stored_objects > 0 or task.done(), timeout=10)
        await rep_b.close()
        assert rep_b.plan.counts()["inflight"] == 0  # claimed ids went back to the queue
        result = await rep_b.sync([head])
        assert result.complete and content(store_b, head) == content(vault.store, head)
        task.cancel()
        for ep in (mute, a, b):
            await ep.close()

    run(body())


def test_a_peer_that_comes_up_mid_sync_joins_it(tmp_path: Path) -> None:
    vault, head, data = big_vault(tmp_path / "a", 16)

    async def slow_get(session: Session, stream: Stream) -> None:
        """A real but slow peer (a poor link): 30 ms per object."""
        for oid in p.decode_get_meta(stream.meta):
            envelope = vault.store.get_sealed(oid)
            await asyncio.sleep(0.03)
            await stream.write(p.encode_record(p.ST_OK, envelope))

    async def body() -> None:
        slow, fast, b = await endpoints(3)
        slow.on_stream(p.GET, slow_get)
        keyed(fast, vault.store, vault.keyring).serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring)
        await b.connect(slow.device_id, slow.local_address)
        task = asyncio.get_running_loop().create_task(rep_b.sync([head]))
        await wait_for(lambda: rep_b.plan.stored_objects > 0 or rep_b.plan.ready_bytes > 0, timeout=10)
        s_fast = await b.connect(fast.device_id, fast.local_address)
        assert rep_b.add_peer(s_fast) and not rep_b.add_peer(s_fast)
        result = await task
        assert result.complete
        peers = rep_b.progress().peers
        assert peers[fast.device_id].objects >= 10  # it took over work (queued, and the slow peer's tail)
        assert content(store_b, head) == content(vault.store, head)
        assert not rep_b.add_peer(s_fast)  # nothing running any more
        for ep in (slow, fast, b):
            await ep.close()

    run(body())
    vault.close()


def test_concurrent_syncs_share_one_run_and_all_complete(tmp_path: Path, vault_a) -> None:
    vault, head1 = vault_a
    with vault.commit("more") as tx:
        tx.write("later/x.bin", os.urandom(500_000))
    head2 = vault.store.refs.get("main")

    async def body() -> None:
        a, b = await endpoints(2)
        keyed(a, vault.store, vault.keyring).serve()
        store_b = ObjectStore.create(tmp_path / "b", vault.keyring)
        rep_b = keyed(b, store_b, vault.keyring, Policy.on_demand())
        await b.connect(a.device_id, a.local_address)
        first = asyncio.get_running_loop().create_task(rep_b.sync([head1]))
        await asyncio.sleep(0)
        blob = dict(trees.walk(vault.store, history.get_commit(vault.store, head2).tree))["later/x.bin"].id
        results = await asyncio.gather(first, rep_b.sync([head2]), rep_b.fetch_now([blob]))
        assert all(r.complete for r in results), results
        assert b"".join(store_b.read_stream(blob)) == b"".join(vault.store.read_stream(blob))
        assert store_b.has(head1) and store_b.has(head2)
        await a.close()
        await b.close()

    run(body())
