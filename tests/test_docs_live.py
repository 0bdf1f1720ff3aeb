"""Live CRDT document updates between real `pcloud serve` / `pcloud relay` processes on 127.0.0.1.

An edit through `Vault.doc()` on one device appears in the open document of a
connected device within a fraction of a second, without a commit; the cloud
node keeps the sealed updates and serves them to a device that comes back
later; malformed requests and sealed bytes are refused without harm.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from pcloud import control, errors
from pcloud.doclive import doc_tag, open_update, seal_update
from pcloud.nodeproc import NodeProc, wait_for
from node_helpers import start_cluster
from pcloud.store.crypto import Keyring
from pcloud.vault import Vault

pytestmark = pytest.mark.timeout(150)


def _shared_doc(base: Path, nodes: dict[str, NodeProc], path: str) -> None:
    """Create the document on the first device and wait until every device's main has it."""
    first = next(iter(nodes))
    v = Vault.open(base / first)
    try:
        with v.doc(path) as d:
            d.insert_text(0, "start\n")
        head = v.resolve("main").hex()
    finally:
        v.close()
    for name, n in nodes.items():
        wait_for(f"{name} has the document", lambda n=n: n.status()["main"] == head, 20)


def _doc_text(vault_dir: Path, path: str) -> str:
    """The text a document shows when opened now on that device (live link included)."""
    with Vault.open(vault_dir) as v:
        doc = v.doc(path)
        try:
            return str(doc.text())
        finally:
            doc.close()


def test_an_edit_reaches_the_peers_open_document_in_well_under_a_second(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, ("laptop", "desktop"))
    try:
        _shared_doc(tmp_path, nodes, "notes.doc")
        a, b = Vault.open(tmp_path / "laptop"), Vault.open(tmp_path / "desktop")
        try:
            da, db = a.doc("notes.doc"), b.doc("notes.doc")
            assert da.live and db.live and da.doc_id == db.doc_id
            heads = (nodes["laptop"].status()["main"], nodes["desktop"].status()["main"])
            latencies = []
            for i in range(20):
                word = f"w{i}-{os.urandom(3).hex()} "
                t0 = time.perf_counter()
                da.append_text(word)
                while word not in str(db.text()):
                    assert time.perf_counter() - t0 < 5.0, f"edit {i} did not arrive live"
                    db.wait_remote(0.05)
                latencies.append(time.perf_counter() - t0)
            # and back the other way, concurrently edited: both converge
            db.insert_text(0, "from desktop ")
            da.insert_text(0, "from laptop ")
            wait_for("converged", lambda: (da.refresh(), db.refresh()) and str(da.text()) == str(db.text())
                     and "from desktop" in str(da.text()) and "from laptop" in str(db.text()), 5)
            # nothing was committed: the edits travelled as live updates only
            assert (nodes["laptop"].status()["main"], nodes["desktop"].status()["main"]) == heads
            p50, worst = statistics.median(latencies), max(latencies)
            print(f"\nlive doc edit A->B over loopback: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms (n=20)")
            assert worst < 1.0, latencies
            da.close()
            db.close()
        finally:
            a.close()
            b.close()
    finally:
        for n in nodes.values():
            n.kill()


def test_the_cloud_node_serves_live_updates_to_a_device_that_comes_back(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, ("laptop", "phone", "cloud"))
    try:
        _shared_doc(tmp_path, nodes, "plan.doc")
        nodes["phone"].stop()
        v = Vault.open(tmp_path / "laptop")
        try:
            d = v.doc("plan.doc")
            d.append_text("written while the phone was away")
            d.close()                       # no save: only the live log carries this edit
        finally:
            v.close()
        time.sleep(0.5)                     # let the push reach the cloud node
        nodes["laptop"].stop()              # the phone can only learn it from the cloud node
        nodes["phone"].start()
        wait_for("phone catches up from the cloud node",
                 lambda: "written while the phone was away" in _doc_text(tmp_path / "phone", "plan.doc"), 30)
        # the cloud node's log holds sealed bytes only
        raw = (tmp_path / "cloud" / "doclog.sqlite").read_bytes()
        wal = tmp_path / "cloud" / "doclog.sqlite-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert b"while the phone was away" not in raw and b"plan.doc" not in raw
    finally:
        for n in nodes.values():
            n.kill()


def test_a_long_edit_history_is_compacted_and_devices_catch_up_by_checkpoint_and_state_vector(tmp_path: Path) -> None:
    """Past 64 updates the laptop's node folds its document log into a checkpoint (bigger than one control
    frame, so the API reads it in pages) and the key-less cloud node drops the same entries; a phone that
    comes back while the laptop is away gets the checkpoint from the cloud; the laptop, back while the
    cloud node is down, meets the phone by state-vector exchange."""
    nodes = start_cluster(tmp_path, ("laptop", "phone", "cloud"))
    try:
        _shared_doc(tmp_path, nodes, "notes.doc")
        nodes["phone"].stop()
        bulk = [os.urandom(60_000).hex() for _ in range(5)]          # 600 KB of text: a multi-page checkpoint
        with Vault.open(tmp_path / "laptop") as v:
            d = v.doc("notes.doc")
            for i, part in enumerate(bulk):
                d.append_text(f"<{i}:{part}>")
            for i in range(70):
                d.append_text(f"line {i}\n")
            expected = str(d.text())
            d.close()                       # no save: only the live logs carry these edits
        wait_for("the laptop compacts", lambda: nodes["laptop"].status()["docs"]["checkpoints_made"] >= 1, 20)
        wait_for("the cloud node takes the checkpoint",
                 lambda: nodes["cloud"].status()["docs"]["checkpoints_stored"] >= 1, 20)
        assert nodes["cloud"].status()["docs"]["merges"] == "logs only (no key)"
        with Vault.open(tmp_path / "laptop") as v:       # a new reader of the laptop's log starts at the checkpoint
            d = v.doc("notes.doc")
            assert str(d.text()) == expected
            d.close()
        nodes["laptop"].stop()
        nodes["phone"].start()
        wait_for("the phone catches up from the cloud node",
                 lambda: _doc_text(tmp_path / "phone", "notes.doc") == expected, 30)
        assert nodes["phone"].status()["docs"]["checkpoints_stored"] >= 1
        with Vault.open(tmp_path / "phone") as pv:         # an edit made while the laptop is away
            doc = pv.doc("notes.doc")
            doc.insert_text(0, "phone was here ")
            doc.close()
        nodes["cloud"].stop()               # else the laptop may learn the phone's edit from the cloud's log first
        nodes["laptop"].start()
        wait_for("laptop and phone meet by state vector",
                 lambda: nodes["laptop"].status()["docs"]["sv_exchanges"] >= 1, 30)
        with Vault.open(tmp_path / "laptop") as v:
            d = v.doc("notes.doc")
            wait_for("the phone's edit on the laptop", lambda: d.refresh() >= 0 and str(d.text()).startswith("phone was"), 20)
            d.close()
        raw = b"".join(p.read_bytes() for p in (tmp_path / "cloud").glob("doclog.sqlite*"))
        assert b"phone was here" not in raw and bulk[0][:64].encode() not in raw and b"line 5" not in raw
    finally:
        for n in nodes.values():
            n.kill()


def test_malformed_live_doc_requests_get_errors_and_the_node_keeps_serving(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="v").close()
    node = NodeProc("v", tmp_path / "v", ["serve"], tmp_path).start()
    try:
        c = control.ControlClient(control.socket_path(tmp_path / "v")).connect()
        bad = [
            ("doc_since", {"tag": "zz"}),
            ("doc_since", {"tag": "00" * 31}),
            ("doc_since", {"tag": "00" * 32, "after": ["not", "a", "map"]}),
            ("doc_since", {"tag": "00" * 32, "after": {"00": "x"}}),
            ("doc_publish", {"tag": "00" * 32}),
            ("doc_publish", {"tag": "00" * 32, "update": "not hex"}),
            ("doc_publish", {"tag": "00" * 32, "update": "ab" * (900_000 // 2)}),
            ("doc_publish", {"tag": "00" * 32, "update": "abcd"}),
        ]
        for op, args in bad:
            with pytest.raises(control.ControlError):
                c.call(op, **args)
        # a sealed update nobody can open is still just bytes to the node; the API skips it
        junk = os.urandom(80).hex()
        c.call("doc_publish", tag="11" * 32, update=junk)
        assert c.call("doc_since", tag="11" * 32)["updates"][0][2] == junk
        # junk in a real document's log: the document opens, its text intact, the junk skipped
        with Vault.open(tmp_path / "v") as v:
            with v.doc("d.doc") as d:
                d.insert_text(0, "kept")
            c.call("doc_publish", tag=doc_tag(v.keyring, d.doc_id).hex(), update=junk)
            d2 = v.doc("d.doc")
            assert d2.live and str(d2.text()) == "kept"
            d2.append_text(" and live")
            d2.close()
        assert c.call("ping")["device_id"]
        c.close()
    finally:
        node.kill()


def test_sealed_updates_open_only_for_their_document_and_key() -> None:
    k = Keyring.generate()
    tag, other = doc_tag(k, "doc-1"), doc_tag(k, "doc-2")
    assert tag != other and len(tag) == 32
    sealed = seal_update(k, tag, b"yjs update bytes")
    assert b"yjs update" not in sealed
    assert open_update(k, tag, sealed) == b"yjs update bytes"
    with pytest.raises(errors.IntegrityError):
        open_update(k, other, sealed)                       # moved to another document's log
    with pytest.raises(errors.IntegrityError):
        open_update(Keyring.generate(), tag, sealed)        # another vault's key
    altered = bytearray(sealed)
    altered[-1] ^= 1
    with pytest.raises(errors.IntegrityError):
        open_update(k, tag, bytes(altered))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_open_update_refuses_arbitrary_bytes_with_integrity_error(data: bytes) -> None:
    k = Keyring({0: b"\x01" * 32})
    with pytest.raises(errors.IntegrityError):
        open_update(k, b"\x02" * 32, data)


def test_edits_keep_working_when_the_node_goes_away(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="v").close()
    node = NodeProc("v", tmp_path / "v", ["serve"], tmp_path).start()
    try:
        with Vault.open(tmp_path / "v") as v:
            d = v.doc("n.doc")
            d.append_text("before ")
            assert d.live
            node.kill()
            d.append_text("after")                  # never fails because the live path is gone
            wait_for("the link notices", lambda: (d.append_text("."), not d.live)[1], 10)
            assert str(d.text()).startswith("before after")
            t0 = time.monotonic()
            d.close()
            assert time.monotonic() - t0 < 5
    finally:
        node.kill()
