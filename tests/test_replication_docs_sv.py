"""Document sync between devices holding the key: state-vector exchange when peers meet, log compaction
into checkpoints, and how the key-less cloud node stores, serves and forwards those checkpoints.
Real QUIC endpoints on 127.0.0.1, real SQLite logs, real pycrdt updates sealed with a real key."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from replication import protocol as p
from replication.doclog import SqliteDocumentLog, checkpoint_id
from replication.errors import CannotMerge, LogConflict, LogGap
from replication.protocol import Checkpoint
from transport.endpoint import Endpoint
from transport.errors import RequestFailed
from pcloud.doclive import DocMerger, seal_update
from pcloud.store.crypto import Keyring

from test_replication_docs import Device, devices
from transport_helpers import run, wait_for


def test_checkpoint_rules_in_the_log(tmp_path: Path) -> None:
    log = SqliteDocumentLog(tmp_path / "docs.sqlite")
    doc, a, b = b"doc", b"a" * 32, b"b" * 32
    for i in range(1, 6):
        log.append(doc, a, i, b"a%d" % i)
    log.append(doc, b, 1, b"b1")
    assert log.add_checkpoint(Checkpoint(doc, {a: 3}, b"cp-a3"))
    assert log.bases(doc) == {(doc, a): 3}
    assert log.heads(doc) == {(doc, a): 5, (doc, b): 1}
    assert [s for s, _ in log.since(doc, a, 0, 1 << 20)] == [4, 5]   # entries 1..3 live in the checkpoint now
    assert not log.append(doc, a, 2, b"anything")                       # covered: a duplicate, nothing stored
    with pytest.raises(LogConflict):
        log.append(doc, a, 4, b"other")                                   # entries above the base stay immutable
    assert not log.add_checkpoint(Checkpoint(doc, {a: 2}, b"older"))     # covers less than a stored one
    assert log.add_checkpoint(Checkpoint(doc, {b: 4}, b"cp-b4"))         # incomparable: both kept (a key-less node)
    assert len(log.checkpoints(doc)) == log.checkpoint_count(doc) == 2
    assert log.heads(doc)[(doc, b)] == 4 and log.entry_count(doc) == 2
    log.append(doc, b, 5, b"b5")                                          # the log goes on after the base
    with pytest.raises(LogGap):
        log.append(doc, b, 7, b"b7")
    assert log.add_checkpoint(Checkpoint(doc, {a: 4, b: 4}, b"merged"))  # covers both: they go
    assert [cp.data for cp in log.checkpoints(doc)] == [b"merged"]
    merged = log.checkpoints(doc)[0]
    assert log.checkpoint(doc, checkpoint_id(merged)) == merged
    assert log.checkpoint(doc, checkpoint_id(Checkpoint(doc, {a: 3}, b"cp-a3"))) is None   # dropped: covered
    covers, pieces = log.pieces(doc)
    assert covers == {a: 5, b: 5} and pieces == [b"merged", b"a5", b"b5"]
    log.close()
    again = SqliteDocumentLog(tmp_path / "docs.sqlite")                 # all of it survives a reopen
    assert again.pieces(doc) == (covers, pieces) and again.bases(doc) == {(doc, a): 4, (doc, b): 4}
    again.close()


def test_key_holders_meet_by_state_vector_and_concurrent_edits_converge(tmp_path: Path) -> None:
    keyring, tag = Keyring.generate(), os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag)
        typed = "written on the laptop, one keystroke per update. "
        for ch in typed:
            laptop.edit(ch)                                # one update per keystroke in the laptop's log
        phone.edit("phone: ")                              # offline, concurrently
        s = await phone.ep.connect(laptop.ep.device_id, laptop.ep.local_address)
        await wait_for(lambda: phone.ep.device_id in laptop.ep.sessions)
        got = await phone.sync.pull(s)                     # the phone catches up ...
        back = await laptop.sync.pull(laptop.ep.sessions[phone.ep.device_id])   # ... and so does the laptop
        assert got == len(typed) and back == 1
        for d in (phone, laptop):
            assert d.sync.stats.sv_exchanges == 1 and d.sync.stats.updates_pulled == 0   # no log paging
        assert phone.text() == laptop.text() and "phone: " in phone.text() and "keystroke" in phone.text()
        assert phone.log_text() == phone.text() == laptop.log_text()    # and it is durable in both logs
        # the phone's log holds the merged state as one checkpoint, not the laptop's entries
        assert phone.log.entry_count(tag) == 0 and len(phone.log.checkpoints(tag)) == 1
        assert phone.log.heads(tag) == laptop.log.heads(tag) == {(tag, laptop.ep.device_id): len(typed),
                                                                 (tag, phone.ep.device_id): 1}
        # live updates still flow after the meeting (seqs continue above the checkpoint's base)
        laptop.edit("!")
        await wait_for(lambda: phone.text().endswith("!") or phone.text().startswith("!"), timeout=2)
        assert phone.log.head(tag, laptop.ep.device_id) == len(typed) + 1
        assert await phone.sync.pull(s) == 0                # nothing new: heads equal, no exchange
        assert phone.sync.stats.sv_exchanges == 1
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())


def test_compaction_reaches_the_key_less_cloud_which_serves_checkpoints_to_newcomers(tmp_path: Path) -> None:
    keyring, tag = Keyring.generate(), os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag, compact_after=16)
        await laptop.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        await wait_for(lambda: laptop.ep.device_id in cloud.ep.sessions)
        for i in range(40):
            laptop.edit(f"{i} ")
            if i % 10 == 9:
                await asyncio.sleep(0.2)                     # let the compaction after update 16 (and 32) run
        await wait_for(lambda: laptop.sync.stats.checkpoints_made >= 2, timeout=5)
        assert laptop.log.entry_count(tag) < 16 and len(laptop.log.checkpoints(tag)) == 1
        assert laptop.log_text() == laptop.text()
        # the cloud got the updates live and then the checkpoints, and dropped what they cover
        await wait_for(lambda: cloud.log.bases(tag) == laptop.log.bases(tag), timeout=5)
        assert cloud.log.heads(tag) == laptop.log.heads(tag) and cloud.log.entry_count(tag) < 16
        assert cloud.sync.stats.checkpoints_made == 0         # it cannot make one: no key
        with pytest.raises(CannotMerge):
            cloud.sync.compact(tag)
        # the phone, back later, only meets the cloud: checkpoint + the entries after it, by seq
        s = await phone.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        assert await phone.sync.pull(s) == 40
        assert phone.sync.stats.sv_fallbacks == 1 and phone.sync.stats.checkpoints_stored == 1
        assert phone.text() == laptop.text() and phone.log.heads(tag) == laptop.log.heads(tag)
        # asking for entries the cloud only holds in a checkpoint is refused with a reason
        with pytest.raises(RequestFailed) as err:
            await s.request(p.DOC_SINCE, p.encode_since_request(tag, laptop.ep.device_id, 0, 1000))
        assert err.value.code == "compacted"
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())


def test_a_key_less_node_keeps_incomparable_checkpoints_until_a_key_holder_merges_them(tmp_path: Path) -> None:
    keyring, tag = Keyring.generate(), os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag, compact_after=4)
        for i in range(5):                                   # both compact offline, independently
            laptop.edit(f"L{i} ")
            phone.edit(f"P{i} ")
        await wait_for(lambda: laptop.sync.stats.checkpoints_made and phone.sync.stats.checkpoints_made, timeout=5)
        s_lc = await laptop.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        s_pc = await phone.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        await wait_for(lambda: len(cloud.ep.sessions) == 2)
        for sess in cloud.ep.sessions.values():                # the cloud pulls from both (what PeerUp does)
            await cloud.sync.pull(sess)
        assert len(cloud.log.checkpoints(tag)) == 2           # neither covers the other
        # a key holder pulls from the cloud, merges, and its one checkpoint replaces both on the cloud
        await laptop.sync.pull(s_lc)
        await wait_for(lambda: len(cloud.log.checkpoints(tag)) == 1 and not cloud.log.entry_count(tag), timeout=5)
        await phone.sync.pull(s_pc)
        await wait_for(lambda: phone.text() == laptop.text(), timeout=5)
        assert all(f"L{i} " in phone.text() and f"P{i} " in phone.text() for i in range(5))
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())


def test_a_device_with_another_key_falls_back_to_logs_and_never_compacts_them_away(tmp_path: Path) -> None:
    tag = os.urandom(16)

    async def body() -> None:
        eps = [await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True) for _ in range(2)]
        laptop = Device(eps[0], SqliteDocumentLog(tmp_path / "laptop.sqlite"), Keyring.generate(), tag, compact_after=4)
        stranger = Device(eps[1], SqliteDocumentLog(tmp_path / "other.sqlite"), Keyring.generate(), tag, compact_after=4)
        stranger.doc = None                                  # it cannot open the laptop's updates: do not apply
        for i in range(3):
            laptop.edit(f"{i}")
        s = await stranger.ep.connect(laptop.ep.device_id, laptop.ep.local_address)
        # its sealed state vector does not open at the laptop (cannot_merge): it takes the laptop's log instead
        assert await stranger.sync.pull(s) == 3
        assert stranger.sync.stats.sv_fallbacks == 1 and stranger.sync.stats.updates_pulled == 3
        # it cannot merge what it cannot open, so it keeps every entry rather than compacting them away
        assert not stranger.sync.compact(tag)
        assert stranger.log.entry_count(tag) == 3 and not stranger.log.checkpoints(tag)
        for d in (laptop, stranger):
            await d.ep.close()

    run(body())


def test_malformed_and_useless_checkpoints_are_refused_and_the_session_lives(tmp_path: Path) -> None:
    keyring, tag = Keyring.generate(), os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag)
        laptop.edit("kept")
        s = await laptop.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        await wait_for(lambda: laptop.ep.device_id in cloud.ep.sessions)
        await cloud.sync.pull(cloud.ep.sessions[laptop.ep.device_id])
        s.send(p.DOC_CP_PUSH, {"doc": tag, "covers": [[b"x", 0]], "data": b"z"})       # seq 0
        s.send(p.DOC_CP_PUSH, {"doc": tag, "covers": [], "data": b"z"})                 # covers nothing
        s.send(p.DOC_CP_PUSH, {"doc": tag})                                              # fields missing
        for bad in ({"doc": tag, "covers": [[b"x", -1]]}, {"doc": tag, "covers": "all"}):
            with pytest.raises(RequestFailed) as err:
                await s.request(p.DOC_CHECKPOINT, bad)
            assert err.value.code == "bad_request"
        with pytest.raises(RequestFailed) as err:
            await s.request(p.DOC_SV, {"doc": tag, "sv": b""})
        assert err.value.code == "bad_request"
        with pytest.raises(RequestFailed) as err:
            await s.request(p.DOC_SV, p.encode_sv_request(tag, b"\x00"))
        assert err.value.code == "unsupported"                  # the cloud holds no key
        # a key holder's sealed state vector must open: garbage is cannot_merge, not a crash
        s_lp = await phone.ep.connect(laptop.ep.device_id, laptop.ep.local_address)
        with pytest.raises(RequestFailed) as err:
            await s_lp.request(p.DOC_SV, p.encode_sv_request(tag, b"not sealed"))
        assert err.value.code == "cannot_merge"
        # a well-formed checkpoint sealed by a key holder is taken; one covering less is not
        good = Checkpoint(tag, {laptop.ep.device_id: 1}, seal_update(keyring, tag, laptop.doc.state_update()))  # type: ignore[union-attr]
        s.send(p.DOC_CP_PUSH, p.encode_cp_push(good))
        await wait_for(lambda: len(cloud.log.checkpoints(tag)) == 1, timeout=2)
        assert s.state == "up" and cloud.log.heads(tag) == {(tag, laptop.ep.device_id): 1}
        assert not cloud.log.add_checkpoint(Checkpoint(tag, {laptop.ep.device_id: 1}, b"another"))
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())


def test_merger_refuses_pieces_that_do_not_open() -> None:
    keyring, tag = Keyring.generate(), os.urandom(16)
    merger = DocMerger(keyring)
    good = seal_update(keyring, tag, b"\x00\x00")
    assert merger.merge(tag, [good])
    for bad in (b"short", seal_update(Keyring.generate(), tag, b"\x00\x00"), seal_update(keyring, os.urandom(16), b"\x00\x00"),
                seal_update(keyring, tag, b"not a yjs update")):
        with pytest.raises(CannotMerge):
            merger.merge(tag, [good, bad])
    sv = merger.state_vector(tag, [good])
    assert merger.missing(tag, [good], sv)
    with pytest.raises(CannotMerge):               # an update is not a state vector (separate seal domains)
        merger.missing(tag, [good], good)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["append", "checkpoint"]), st.integers(0, 2), st.integers(1, 12),
                              st.integers(0, 12)), max_size=40))
def test_log_invariants_hold_under_any_mix_of_appends_and_checkpoints(ops: list[tuple[str, int, int, int]]) -> None:
    """Entries stay gap-free above the base, heads never go back, and a checkpoint covering less than
    what is stored is never taken, whatever order appends and checkpoints arrive in."""
    log = SqliteDocumentLog(":memory:")
    doc, devs = b"doc", [b"a", b"b", b"c"]
    seen_heads: dict[bytes, int] = {}
    for kind, d, x, y in ops:
        dev = devs[d]
        if kind == "append":
            try:
                log.append(doc, dev, x, b"%s%d" % (dev, x))
            except (LogGap, LogConflict):
                pass
        else:
            covers = {dev: x} | ({devs[(d + 1) % 3]: y} if y else {})
            before = log.checkpoints(doc)
            stored = log.add_checkpoint(Checkpoint(doc, covers, b"cp"))
            assert stored == (not any(Checkpoint(doc, covers, b"").dominated_by(c.covers) for c in before))
        heads, bases = log.heads(doc), log.bases(doc)
        for dev in devs:
            head, base = heads.get((doc, dev), 0), bases.get((doc, dev), 0)
            seqs = [s for s, _ in log.since(doc, dev, 0, 1 << 20)]
            assert seqs == list(range(base + 1, head + 1)) or (not seqs and head == base)
            assert head >= seen_heads.get(dev, 0)
            seen_heads[dev] = head
        cps = log.checkpoints(doc)
        assert not any(a is not b and a.dominated_by(b.covers) for a in cps for b in cps)   # an antichain
    log.close()


def test_a_pull_that_fails_is_retried_while_the_session_stays_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import replication.docsync as docsync
    monkeypatch.setattr(docsync, "PULL_RETRY_S", 0.05)
    keyring, tag = Keyring.generate(), os.urandom(16)

    async def body() -> None:
        laptop, cloud, phone = await devices(tmp_path, keyring, tag)
        laptop.edit("kept for later")
        await cloud.sync.pull(await cloud.ep.connect(laptop.ep.device_id, laptop.ep.local_address))
        failures = {"left": 2}
        real = cloud.sync._on_heads

        async def flaky(session, body):  # noqa: ANN001  fails twice, like a request timing out under load
            if failures["left"]:
                failures["left"] -= 1
                raise RequestFailed("internal", "disk busy")
            return await real(session, body)

        cloud.ep.on_request(p.DOC_HEADS, flaky)
        s = await phone.ep.connect(cloud.ep.device_id, cloud.ep.local_address)
        assert await phone.sync.peer_up(s) == 1 and failures["left"] == 0
        assert phone.text() == "kept for later"
        for d in (laptop, cloud, phone):
            await d.ep.close()

    run(body())
