"""The pure state machine: trust rules (table-driven), CAS, replay, snapshots, hostile bytes."""
from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.commands import (MAX_COMMAND_BYTES, AdmitDevice, CasHead, Genesis, PutSealedKey, Revoke,
                                RotateEpoch, SeedSigner, SetPolicy, SetTrust, SetVoter, SignedCommand)
from consensus.errors import CommandRejected, SnapshotCorrupt
from consensus.state import PREVERIFIED_MAX, REPLAY_WINDOW, VaultState

VAULT = b"V" * 16
_seq = itertools.count(1)


def signer(n: int) -> SeedSigner:
    return SeedSigner(bytes([n]) * 32)


OWNER, MEMBER, READER, STORAGE, REVOKED, OUTSIDER, OWNER2 = (signer(i) for i in range(1, 8))


def cmd(who: SeedSigner, command, seq: int | None = None, vault: bytes = VAULT) -> bytes:
    return SignedCommand.create(who, vault, next(_seq) if seq is None else seq, 1000, command).encode()


def fresh() -> VaultState:
    """The same starting state every time (fixed sequence numbers, far above the tests' own)."""
    state = VaultState(Genesis.create(OWNER, VAULT, "laptop", 1))
    base = 10**12
    for i, (dev, trust) in enumerate(((MEMBER, "member"), (READER, "reader"), (STORAGE, "storage"),
                                      (REVOKED, "member"))):
        data = cmd(OWNER, AdmitDevice(dev.public_key, trust, trust, trust != "reader"), seq=base + i)
        assert state.apply(data).accepted
    assert state.apply(cmd(OWNER, Revoke(REVOKED.public_key), seq=base + 10)).accepted
    return state


NEW = signer(40).public_key
# (signer, command, expected code): the trust table exercised for every level.
TABLE = [
    (OWNER, AdmitDevice(NEW, "phone", "member", False), "ok"),
    (MEMBER, AdmitDevice(NEW, "phone", "member", False), "denied"),
    (READER, AdmitDevice(NEW, "phone", "member", False), "denied"),
    (STORAGE, AdmitDevice(NEW, "phone", "member", False), "denied"),
    (REVOKED, AdmitDevice(NEW, "phone", "member", False), "denied"),
    (OUTSIDER, AdmitDevice(NEW, "phone", "member", False), "denied"),
    (OWNER, SetTrust(MEMBER.public_key, "reader"), "ok"),
    (MEMBER, SetTrust(MEMBER.public_key, "owner"), "denied"),
    (READER, SetTrust(READER.public_key, "owner"), "denied"),
    (OWNER, SetVoter(READER.public_key, True), "ok"),
    (MEMBER, SetVoter(MEMBER.public_key, False), "denied"),
    (OWNER, Revoke(MEMBER.public_key), "ok"),
    (MEMBER, Revoke(OWNER.public_key), "denied"),
    (STORAGE, Revoke(MEMBER.public_key), "denied"),
    (OWNER, SetPolicy(MEMBER.public_key, "on-demand"), "ok"),
    (MEMBER, SetPolicy(MEMBER.public_key, "on-demand"), "ok"),        # a device sets its own policy
    (MEMBER, SetPolicy(READER.public_key, "on-demand"), "denied"),
    (OWNER, PutSealedKey(0, MEMBER.public_key, b"sealed"), "ok"),
    (OWNER, PutSealedKey(0, READER.public_key, b"sealed"), "ok"),
    (OWNER, PutSealedKey(0, STORAGE.public_key, b"sealed"), "invalid"),  # storage never gets the key
    (OWNER, PutSealedKey(0, REVOKED.public_key, b"sealed"), "invalid"),
    (OWNER, PutSealedKey(3, MEMBER.public_key, b"sealed"), "invalid"),   # epoch not started
    (MEMBER, PutSealedKey(0, MEMBER.public_key, b"sealed"), "denied"),
    (OWNER, RotateEpoch(1), "ok"),
    (OWNER, RotateEpoch(2), "invalid"),
    (MEMBER, RotateEpoch(1), "denied"),
    (OWNER, CasHead("main", None, b"h1"), "ok"),
    (MEMBER, CasHead("main", None, b"h1"), "ok"),
    (READER, CasHead("main", None, b"h1"), "denied"),
    (STORAGE, CasHead("main", None, b"h1"), "denied"),
    (REVOKED, CasHead("main", None, b"h1"), "denied"),
    (OUTSIDER, CasHead("main", None, b"h1"), "denied"),
    (OWNER, Revoke(OWNER.public_key), "invalid"),                       # never the last owner
    (OWNER, SetTrust(OWNER.public_key, "member"), "invalid"),
    (OWNER, AdmitDevice(REVOKED.public_key, "again", "member", True), "invalid"),  # revoked stays revoked
    (OWNER, SetTrust(REVOKED.public_key, "owner"), "invalid"),
]


@pytest.mark.parametrize("who,command,code", TABLE, ids=lambda v: getattr(v, "TAG", None) or str(v)[:12])
def test_trust_rules(who, command, code):
    state = fresh()
    before = state.snapshot()
    result = state.apply(cmd(who, command))
    assert result.code == code, result.reason
    if code != "ok":
        assert result.reason
        # A refused command changes nothing but the signer's replay window and the apply counter.
        a, b = msgpack.unpackb(before), msgpack.unpackb(state.snapshot())
        assert a[4:7] == b[4:7] and a[2] == b[2]


def test_cannot_make_key_holder_storage():
    state = fresh()
    assert state.apply(cmd(OWNER, PutSealedKey(0, MEMBER.public_key, b"s"))).accepted
    result = state.apply(cmd(OWNER, SetTrust(MEMBER.public_key, "storage")))
    assert result.code == "invalid" and "vault key" in result.reason


def test_second_owner_can_then_be_demoted_and_revoke_drops_keys():
    state = fresh()
    assert state.apply(cmd(OWNER, AdmitDevice(OWNER2.public_key, "desk", "owner", True))).accepted
    assert state.apply(cmd(OWNER2, PutSealedKey(0, MEMBER.public_key, b"s"))).accepted
    assert state.apply(cmd(OWNER2, SetTrust(OWNER.public_key, "member"))).accepted
    assert state.apply(cmd(OWNER2, Revoke(MEMBER.public_key))).accepted
    assert state.find_sealed_key(0, MEMBER.public_key) is None
    assert MEMBER.public_key not in state.voters()
    assert state.apply(cmd(MEMBER, CasHead("main", None, b"x"))).code == "denied"


def test_cas_exactly_one_wins():
    state = fresh()
    assert state.apply(cmd(OWNER, CasHead("main", None, b"a"))).head == b"a"
    results = [state.apply(cmd(who, CasHead("main", b"a", bytes([i + 1]) * 4)))
               for i, who in enumerate((OWNER, MEMBER, OWNER))]
    assert [r.code for r in results] == ["ok", "conflict", "conflict"]
    assert results[1].head == b"\x01" * 4 and state.find_head("main") == b"\x01" * 4


def test_replay_refused_and_retry_idempotent():
    state = fresh()
    data = cmd(MEMBER, CasHead("main", None, b"a"), seq=10)
    first = state.apply(data)
    assert first.accepted
    assert state.apply(data) == first                  # same bytes: same answer, no second effect
    other = cmd(MEMBER, CasHead("main", b"a", b"b"), seq=10)
    assert state.apply(other).code == "replay"
    assert state.find_head("main") == b"a"
    assert state.next_seq(MEMBER.public_key) == 11
    for s in range(100, 100 + REPLAY_WINDOW + 5):
        state.apply(cmd(MEMBER, SetPolicy(MEMBER.public_key, "full"), seq=s))
    assert state.apply(cmd(MEMBER, SetPolicy(MEMBER.public_key, "full"), seq=11)).code == "replay"


def test_wrong_vault_and_bad_signature():
    state = fresh()
    assert state.apply(cmd(OWNER, CasHead("main", None, b"a"), vault=b"other")).code == "invalid"
    body, sig = msgpack.unpackb(cmd(OWNER, CasHead("main", None, b"a")))
    forged = msgpack.packb([body, bytes(64)])
    result = state.apply(forged)
    assert result.code == "invalid" and "signature" in result.reason
    assert state.find_head("main") is None


def test_preverify_takes_the_check_off_apply_but_never_admits_a_forgery():
    state, ref = fresh(), fresh()
    good = cmd(MEMBER, CasHead("main", None, b"a"))
    body, _sig = msgpack.unpackb(cmd(OWNER, CasHead("main", None, b"b")))
    forged = msgpack.packb([body, bytes(64)])
    for data in (good, forged):
        state.preverify(data)
        state.preverify(data)                          # twice: still one entry, still harmless
    assert forged not in state._preverified and good in state._preverified
    assert state.apply(forged) == ref.apply(forged)    # a forgery is judged at apply, as ever
    assert ref.apply(forged).code == "invalid"
    state.apply(forged)
    assert state.apply(good) == ref.apply(good)        # same decision as decoding at apply time
    assert good not in state._preverified              # used once, then gone
    assert state.digest() == ref.digest()
    for i in range(PREVERIFIED_MAX + 10):              # bounded: the oldest go first
        state.preverify(cmd(MEMBER, SetPolicy(MEMBER.public_key, "full"), seq=10**6 + i))
    assert len(state._preverified) == PREVERIFIED_MAX


def test_snapshot_round_trip():
    state = fresh()
    state.apply(cmd(OWNER, CasHead("main", None, b"a"), seq=5000))
    state.apply(cmd(OWNER, PutSealedKey(0, READER.public_key, b"s")))
    state.apply(cmd(OWNER, RotateEpoch(1)))
    copy = VaultState.restore(state.snapshot(), state.genesis)
    assert copy.snapshot() == state.snapshot() and copy.digest() == state.digest()
    assert copy.find_head("main") == b"a" and copy.epoch == 1
    # Replay protection survives the snapshot.
    assert copy.apply(cmd(OWNER, CasHead("x", None, b"b"), seq=5000)).code == "replay"
    other = Genesis.create(OWNER2, b"other", "x", 1)
    with pytest.raises(SnapshotCorrupt):
        VaultState.restore(state.snapshot(), other)
    with pytest.raises(SnapshotCorrupt):
        VaultState.restore(state.snapshot()[:-3])
    with pytest.raises(SnapshotCorrupt):
        VaultState.restore(b"\x93\x01\x02\x03")


def test_decoder_refuses_bad_fields():
    good = cmd(OWNER, CasHead("main", None, b"a"))
    with pytest.raises(CommandRejected):
        SignedCommand.decode(good + b"\x00")          # trailing bytes
    with pytest.raises(CommandRejected):
        SignedCommand.decode(b"\x00" * (MAX_COMMAND_BYTES + 1))
    with pytest.raises(CommandRejected):
        SignedCommand.create(OWNER, VAULT, 1, 1, AdmitDevice(b"short", "x", "owner", True))
    with pytest.raises(CommandRejected):
        SignedCommand.create(OWNER, VAULT, 1, 1, SetTrust(MEMBER.public_key, "god"))
    with pytest.raises(CommandRejected):
        Genesis.decode(Genesis.create(OWNER, VAULT, "x", 1).encode()[:-1] + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_apply_never_raises(data):
    state = fresh()
    digest_before = state.snapshot()[:-1]
    result = state.apply(data)
    assert result.code == "invalid"
    assert state.find_head("main") is None and len(digest_before) > 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_command(pos, patch):
    good = cmd(MEMBER, CasHead("main", None, b"a"))
    mutated = good[:pos] + patch + good[pos + len(patch):]
    state = fresh()
    result = state.apply(mutated)
    if mutated != good:
        # A changed byte must never be accepted as a command the member did not sign.
        assert result.code != "ok" or SignedCommand.decode(mutated).command == CasHead("main", None, b"a")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_restore_raises_only_snapshot_corrupt(data):
    try:
        VaultState.restore(data)
    except SnapshotCorrupt:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=6))
def test_fuzz_mutated_snapshot(pos, patch):
    state = fresh()
    state.apply(cmd(OWNER, CasHead("main", None, b"a")))
    snap = state.snapshot()
    pos %= len(snap)
    mutated = snap[:pos] + patch + snap[pos + len(patch):]
    try:
        VaultState.restore(mutated, state.genesis)
    except SnapshotCorrupt:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_genesis_decode(data):
    try:
        Genesis.decode(data)
    except CommandRejected:
        pass


_SIGNERS = [OWNER, MEMBER, READER, STORAGE, REVOKED, OUTSIDER, OWNER2]
_DEVICES = [s.public_key for s in _SIGNERS]
_command = st.one_of(
    st.builds(AdmitDevice, st.sampled_from(_DEVICES), st.just("d"), st.sampled_from(["owner", "member", "reader",
                                                                                      "storage"]), st.booleans()),
    st.builds(SetTrust, st.sampled_from(_DEVICES), st.sampled_from(["owner", "member", "reader", "storage"])),
    st.builds(SetVoter, st.sampled_from(_DEVICES), st.booleans()),
    st.builds(Revoke, st.sampled_from(_DEVICES)),
    st.builds(SetPolicy, st.sampled_from(_DEVICES), st.sampled_from(["full", "on-demand", "archive"])),
    st.builds(PutSealedKey, st.integers(0, 2), st.sampled_from(_DEVICES), st.just(b"k")),
    st.builds(RotateEpoch, st.integers(1, 3)),
    st.builds(CasHead, st.sampled_from(["main", "x"]), st.sampled_from([None, b"a", b"b"]), st.sampled_from([b"a",
                                                                                                             b"b"])),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_SIGNERS) - 1), _command, st.integers(0, 40)), max_size=40),
       st.integers(0, 40))
def test_replicas_agree_and_snapshots_resume(ops, cut):
    """Any log applied on two replicas gives the same results and state; a replica restored from a
    snapshot taken anywhere in the log and fed the rest ends in the same state too. Invariants hold."""
    log = [SignedCommand.create(_SIGNERS[who], VAULT, seq, 1, c).encode() for who, c, seq in ops]
    a, b = fresh(), fresh()
    assert [a.apply(e) for e in log] == [b.apply(e) for e in log]
    assert a.digest() == b.digest()
    c = fresh()
    cut = min(cut, len(log))
    for e in log[:cut]:
        c.apply(e)
    c = VaultState.restore(c.snapshot(), c.genesis)
    for e in log[cut:]:
        c.apply(e)
    assert c.digest() == a.digest()
    owners = [d for d in a.devices.values() if d.trust == "owner" and d.active]
    assert owners, "the vault lost its last owner"
    for (epoch, dev) in [(e, d) for e in range(4) for d in _DEVICES if a.find_sealed_key(e, d)]:
        rec = a.find_device(dev)
        assert rec is not None and rec.trust != "storage" and rec.active
