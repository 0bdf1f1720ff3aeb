"""Document update logs: SQLite log rules, catch-up by seq through a key-less node, live push, gaps,
conflicts, state-vector hook. Real QUIC endpoints on 127.0.0.1, real pycrdt updates sealed with a real key."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from replication import protocol as p
from replication.docsync import DocSync
from replication.doclog import SqliteDocumentLog
from replication.errors import LogConflict, LogGap
from replication.protocol import Checkpoint, DocUpdate
from transport.endpoint import Endpoint
from transport.errors import RequestFailed
from pcloud.doclive import DocMerger, open_update, seal_update
from pcloud.store.crypto import Keyring
from pcloud.store.documents import Document

from transport_helpers import run, wait_for


def test_log_rules_and_persistence(tmp_path: Path) -> None:
    log = SqliteDocumentLog(tmp_path / "docs.sqlite")
    doc, dev = b"doc1", b"d" * 32
    assert log.append(doc, dev, 1, b"one") and log.append(doc, dev, 2, b"two")
    assert not log.append(doc, dev, 1, b"one")  # duplicate delivery
    with pytest.raises(LogConflict):
        log.append(doc, dev, 2, b"other")
    with pytest.raises(LogGap) as gap:
        log.append(doc, dev, 4, b"four")
    assert gap.value.head == 2
    with pytest.raises(LogGap):
        log.append(doc, dev, 0, b"zero")
    log.append(b"doc2", dev, 1, b"x")
    assert log.heads() == {(doc, dev): 2, (b"doc2", dev): 1}
    assert log.heads(doc) == {(doc, dev): 2}
    for i in range(3, 11):
        log.append(doc, dev, i, bytes(100))
    page = log.since(doc, dev, 2, 250)
    assert [s for s, _ in page] == [3, 4]  # about max_bytes, in order
    assert log.since(doc, dev, 10, 1000) == []
    assert [s for s, _ in log.since(doc, dev, 0, 1)] == [1]  # always at least one
    log.close()
    again = SqliteDocumentLog(tmp_path / "docs.sqlite")
    assert again.head(doc, dev) == 10 and again.since(doc, dev, 1, 10) == [(2, b"two")]
    again.close()


class Device:
    """One device's document side: an endpoint, a log, DocSync, and (if trusted) the key and a live doc.

    Updates are sealed and opened with pcloud's real format (``pcloud.doclive``); a device holding
    the key also has pcloud's DocMerger, so it exchanges state vectors and compacts (``sv=False``
    turns that off, to test the log path between key holders)."""

    def __init__(self, ep: Endpoint, log: SqliteDocumentLog, keyring: Keyring | None, tag: bytes,
                 *, sv: bool = True, compact_after: int = 64) -> None:
        self.ep, self.log, self.keyring, self.tag = ep, log, keyring, tag
        self.doc = Document("doc-under-test") if keyring else None
        self.got: list[tuple[DocUpdate, float]] = []
        merger = DocMerger(keyring) if keyring and sv else None
        self.sync = DocSync(ep, log, merger=merger, compact_after=compact_after)
        self.sync.serve()
        self.sync.subscribe(self.on_update)
        self.sync.subscribe_checkpoints(self.on_checkpoint)

    def edit(self, text: str) -> DocUpdate:
        """A local edit: a real Yjs update, sealed, published with the next seq."""
        assert self.doc is not None and self.keyring is not None
        before = self.doc.state_vector()
        self.doc.insert_text("body", len(str(self.doc.text("body"))), text)
        seq = self.sync.next_seq(self.tag, self.ep.device_id)
        u = DocUpdate(self.tag, self.ep.device_id, seq, seal_update(self.keyring, self.tag, self.doc.update_since(before)))
        assert self.sync.publish(u)
        return u

    def on_update(self, u: DocUpdate, peer: bytes | None) -> None:
        self.got.append((u, time.perf_counter()))
        if self.doc is not None and self.keyring is not None and u.device != self.ep.device_id:
            self.doc.apply(open_update(self.keyring, self.tag, u.update))

    def on_checkpoint(self, cp: Checkpoint, peer: bytes | None) -> None:
        if self.doc is not None and self.keyring is not None:
            self.doc.apply(open_update(self.keyring, self.tag, cp.data))

    def text(self) -> str:
        assert self.doc is not None
        return str(self.doc.text("body"))

    def log_text(self) -> str:
        """The text the log alone holds (what a restarted device would rebuild)."""
        assert self.keyring is not None
        _, pieces = self.log.pieces(self.tag)
        doc = Document("rebuilt")
        doc.apply(open_update(self.keyring, self.tag, DocMerger(self.keyring).merge(self.tag, pieces)))
        return str(doc.text("body"))


async def devices(tmp_path: Path, keyring: Keyring, tag: bytes, **kw: object) -> tuple[Device, Device, Device]:
    eps = [await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True) for _ in range(3)]
    laptop = Device(eps[0], SqliteDocumentLog(tmp_path / "laptop.sqlite"), keyring, tag, **kw)  # type: ignore[arg-type]
    cloud = Device(eps[1], SqliteDocumentLog(tmp_path / "cloud.sqlite"), None, tag)
    phone = Device(eps[2], SqliteDocumentLog(tmp_path / "phone.sqlite"), keyring, tag, **kw)  # type: ignore[arg-type]
    return laptop, cloud, phone


def test_catch_up_through_a_key_less_cloud_and_live_push(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    tag = os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag)
        for word in ("alpha ", "beta ", "gamma "):
            laptop.edit(word)
        await laptop.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        await wait_for(lambda: laptop.ep.device_id in cloud.ep.sessions)
        assert await cloud.sync.pull(cloud.ep.sessions[laptop.ep.device_id]) == 3
        assert cloud.log.heads(tag) == {(tag, laptop.ep.device_id): 3}
        await laptop.ep.close()  # the laptop leaves; the phone comes back later
        s_pc = await phone.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        assert await phone.sync.pull(s_pc) == 3
        assert phone.text() == "alpha beta gamma "
        assert await phone.sync.pull(s_pc) == 0  # nothing new: only heads travel
        # live: phone and a new laptop endpoint both connected to the cloud only
        laptop2 = Device(await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True),
                         SqliteDocumentLog(tmp_path / "laptop2.sqlite"), keyring, tag)
        await laptop2.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        assert await laptop2.sync.pull(laptop2.ep.sessions[cloud.ep.device_id]) == 3
        await wait_for(lambda: len(cloud.ep.sessions) == 2)
        delays = []
        for word in ("one ", "two ", "three "):
            n = len(phone.got)
            t0 = time.perf_counter()
            u = laptop2.edit(word)
            await wait_for(lambda: len(phone.got) > n, timeout=2)
            assert phone.got[-1][0] == u
            delays.append(phone.got[-1][1] - t0)
        assert max(delays) < 0.5, delays  # laptop -> cloud -> phone, pushed, not polled
        assert phone.text() == laptop2.text() == "alpha beta gamma one two three "
        # and back: a phone edit reaches the laptop through the cloud
        phone.edit("four")
        await wait_for(lambda: laptop2.text().endswith("four"), timeout=2)
        assert cloud.doc is None and cloud.log.heads(tag)[(tag, phone.ep.device_id)] == 1
        for d in (cloud, phone, laptop2):
            await d.ep.close()

    run(body())


def test_gap_triggers_pull_and_conflicts_and_garbage_are_refused(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    tag = os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag, sv=False)   # the log path
        laptop.edit("a")
        s = await laptop.ep.connect(phone.ep.device_id, phone.ep.local_address)
        await wait_for(lambda: laptop.ep.device_id in phone.ep.sessions)
        assert await phone.sync.peer_up(phone.ep.sessions[laptop.ep.device_id]) == 1  # the node calls this on PeerUp
        assert len(phone.got) == 1
        # updates 2 and 3 are logged on the laptop while no push reaches the phone ...
        phone.sync.endpoint.on_message(p.DOC_PUSH, lambda sess, body: asyncio.sleep(0))
        laptop.edit("b")
        u3 = laptop.edit("c")
        await asyncio.sleep(0.1)
        assert phone.log.head(tag, laptop.ep.device_id) == 1
        # ... then 3 arrives alone: the phone notices the gap and pulls 2 and 3 from the sender
        phone.sync.serve()
        s.send(p.DOC_PUSH, p.encode_push(u3))
        await wait_for(lambda: phone.log.head(tag, laptop.ep.device_id) == 3, timeout=2)
        assert phone.text() == "abc"
        # a different update under an existing seq is refused, the log keeps the first
        forged = DocUpdate(tag, laptop.ep.device_id, 2, b"forged bytes")
        s.send(p.DOC_PUSH, p.encode_push(forged))
        s.send(p.DOC_PUSH, {"doc": "not bytes", "seq": -1})  # malformed: dropped, session kept
        await asyncio.sleep(0.2)
        assert phone.log.since(tag, laptop.ep.device_id, 1, 1 << 20)[0][1] != b"forged bytes"
        assert s.state == "up" and phone.text() == "abc"
        with pytest.raises(LogGap):
            laptop.sync.publish(DocUpdate(tag, laptop.ep.device_id, 9, b"x"))
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())


def test_pull_from_a_lying_peer_stops_and_keeps_what_is_logged(tmp_path: Path) -> None:
    from replication.errors import ProtocolViolation
    tag, dev = os.urandom(16), os.urandom(32)

    async def body() -> None:
        liar = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        me = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True)
        mine = SqliteDocumentLog(tmp_path / "me.sqlite")
        mine.append(tag, dev, 1, b"genuine-1")
        sync = DocSync(me, mine)

        async def heads(session, body):  # noqa: ANN001
            return p.encode_heads_response({(tag, dev): 3})

        answers = {
            "conflict": lambda after: p.encode_since_response([(2, b"two"), (3, b"three")], False),
            "gap": lambda after: {"entries": [[3, b"three"]], "more": False},
        }
        mode = {"now": "gap"}

        async def since(session, body):  # noqa: ANN001
            return answers[mode["now"]](p.decode_since_request(body)[2])

        liar.on_request(p.DOC_HEADS, heads)
        liar.on_request(p.DOC_SINCE, since)
        s = await me.connect(liar.device_id, liar.local_address)
        with pytest.raises(ProtocolViolation):
            await sync.pull(s)  # skips seq 2: refused by the strict decoder
        assert mine.head(tag, dev) == 1
        mode["now"] = "conflict"
        assert await sync.pull(s) == 2  # consistent with our log: accepted
        mine.append(tag, dev, 4, b"four")
        liar.on_request(p.DOC_HEADS, lambda session, body: asyncio.sleep(0, p.encode_heads_response({(tag, dev): 5})))
        answers["conflict"] = lambda after: p.encode_since_response([(4, b"not four"), (5, b"five")], False)
        with pytest.raises(ProtocolViolation):
            await sync.pull(s)  # serves a different update 4 than the one we hold
        assert mine.since(tag, dev, 3, 1 << 20) == [(4, b"four")]
        await liar.close()
        await me.close()

    run(body())
