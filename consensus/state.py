"""The vault's replicated state machine: pure, deterministic, no I/O.

``VaultState.apply(encoded_signed_command) -> Result`` is the only way state
changes. Every replica applies the same log in the same order and reaches the
same state, because ``apply`` depends only on the state and the command bytes
(never on a clock, a random source or the local device).

Rules are data
--------------
``REQUIRED_TRUST`` maps each command type to the signer trust levels allowed to
issue it (``SELF`` means "the device the command is about"); ``_CHECKS`` maps it
to a function returning a refusal reason or None; ``_EFFECTS`` to the function
that changes the state. The fixed order of checks is:

1. the bytes decode and the signature verifies (else ``invalid``);
2. the command names this vault (else ``invalid``);
3. the signer is enrolled (else ``denied``) and not revoked (else ``denied``);
4. the sequence number is fresh (else ``replay``; a retry of the very same
   command returns the result it had the first time, so retries are idempotent);
5. the signer's trust level may issue this command (else ``denied``);
6. the command-specific check (``invalid``, or ``conflict`` for a lost CAS).

Invariants: there is always at least one active owner; a revoked device stays
revoked; a ``storage`` device never has a sealed vault key (and a device that
holds one cannot become ``storage``); a branch head moves only by CAS.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from consensus.commands import (POLICIES, TRUST_LEVELS, AdmitDevice, CasHead, Genesis, PutSealedKey, Revoke,
                                RotateEpoch, SetPolicy, SetTrust, SetVoter, SignedCommand)
from consensus.errors import CommandRejected, SnapshotCorrupt

REPLAY_WINDOW = 128
PREVERIFIED_MAX = 1024
"""Commands decoded ahead of ``apply`` kept at most (oldest dropped first)."""
SNAPSHOT_FORMAT = 1
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
SELF = "self"
OWNERS = frozenset({"owner"})

REQUIRED_TRUST: dict[type, frozenset[str]] = {
    AdmitDevice: OWNERS,
    SetTrust: OWNERS,
    SetVoter: OWNERS,
    Revoke: OWNERS,
    SetPolicy: OWNERS | {SELF},
    PutSealedKey: OWNERS,
    RotateEpoch: OWNERS,
    CasHead: frozenset({"owner", "member"}),
}


@dataclass(frozen=True)
class Result:
    """What applying one command did.

    ``code`` is one of: ``ok``; ``conflict`` (a CAS lost: ``head`` is the
    current head); ``denied`` (the signer may not do this); ``invalid``
    (malformed, wrong vault, or the command makes no sense in this state);
    ``replay`` (sequence number already used or too old).
    """

    code: str
    reason: str = ""
    head: bytes | None = None

    @property
    def accepted(self) -> bool:
        return self.code == "ok"

    def to_list(self) -> list[Any]:
        return [self.code, self.reason, self.head]

    @classmethod
    def from_list(cls, items: Any) -> Result:
        if not (isinstance(items, list) and len(items) == 3 and isinstance(items[0], str)
                and isinstance(items[1], str) and (items[2] is None or isinstance(items[2], bytes))):
            raise SnapshotCorrupt("malformed result record")
        return cls(items[0], items[1], items[2])


@dataclass(frozen=True)
class DeviceRecord:
    """One enrolled device as the registry knows it."""

    key: bytes
    name: str
    trust: str
    voter: bool
    admitted_by: bytes
    admitted_at_ms: int
    revoked: bool = False
    revoked_at_ms: int | None = None
    policy: str = "full"

    @property
    def active(self) -> bool:
        return not self.revoked


@dataclass
class _Replay:
    """Per-device replay window: sequence numbers seen recently and their results."""

    floor: int = -1                      # every seq <= floor is refused
    recent: dict[int, tuple[bytes, Result]] = dataclasses.field(default_factory=dict)


class VaultState:
    """The registry, sealed vault keys, branch heads and replay windows of one vault.

    Example::

        state = VaultState(genesis)
        result = state.apply(SignedCommand.create(owner, genesis.vault_id, 1, now_ms,
                                                  CasHead("main", None, head)).encode())
        assert result.accepted and state.find_head("main") == head
    """

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.epoch = 0
        self.applied = 0
        self._devices: dict[bytes, DeviceRecord] = {
            genesis.owner: DeviceRecord(genesis.owner, genesis.owner_name, "owner", True,
                                        genesis.owner, genesis.created_at_ms)}
        self._sealed: dict[tuple[int, bytes], bytes] = {}
        self._heads: dict[str, bytes] = {}
        self._replay: dict[bytes, _Replay] = {}
        self.last_command: SignedCommand | None = None
        """The command the last ``apply`` decoded (None if it did not decode); not part of the state."""
        self._preverified: dict[bytes, SignedCommand] = {}
        """Bytes -> their successful ``SignedCommand.decode``, made ahead of ``apply`` (not state)."""

    # ------------------------------------------------------------ reads

    @property
    def vault_id(self) -> bytes:
        return self.genesis.vault_id

    @property
    def devices(self) -> dict[bytes, DeviceRecord]:
        """Every device ever enrolled (revoked ones included), by key."""
        return dict(self._devices)

    def find_device(self, key: bytes) -> DeviceRecord | None:
        return self._devices.get(key)

    def voters(self) -> list[bytes]:
        """Keys of active voting devices, sorted: the Raft cluster this state asks for."""
        return sorted(d.key for d in self._devices.values() if d.voter and d.active)

    def find_head(self, branch: str) -> bytes | None:
        return self._heads.get(branch)

    @property
    def heads(self) -> dict[str, bytes]:
        return dict(self._heads)

    def find_sealed_key(self, epoch: int, device: bytes) -> bytes | None:
        return self._sealed.get((epoch, device))

    def next_seq(self, device: bytes) -> int:
        """The smallest sequence number ``device`` can still use."""
        window = self._replay.get(device)
        if window is None:
            return 0
        return max([window.floor, *window.recent]) + 1

    def digest(self) -> bytes:
        """A hash of the whole state; equal on replicas that applied the same log."""
        return hashlib.blake2b(self.snapshot(), digest_size=32).digest()

    # ------------------------------------------------------------ apply

    def preverify(self, data: bytes) -> None:
        """Decode and verify ``data`` now, so that ``apply`` of the same bytes need not.

        The leader calls it while its own command is being replicated, taking the
        signature check off the commit path. Only a successful ``SignedCommand.decode``
        is remembered, keyed by the exact bytes; decode is a pure function of them, so
        ``apply`` decides exactly as if it had decoded itself.
        """
        if data in self._preverified:
            return
        try:
            signed = SignedCommand.decode(data)
        except CommandRejected:
            return                                   # apply will refuse it, with the reason
        if len(self._preverified) >= PREVERIFIED_MAX:
            del self._preverified[next(iter(self._preverified))]
        self._preverified[data] = signed

    def apply(self, data: bytes) -> Result:
        """Check and apply one encoded ``SignedCommand``; never raises for bad input."""
        self.applied += 1
        self.last_command = None
        signed = self._preverified.pop(data, None)
        if signed is None:
            try:
                signed = SignedCommand.decode(data)
            except CommandRejected as exc:
                return Result("invalid", str(exc))
        self.last_command = signed
        if signed.vault_id != self.genesis.vault_id:
            return Result("invalid", "command was signed for another vault")
        signer = self._devices.get(signed.signer)
        if signer is None:
            return Result("denied", "signer is not an enrolled device")
        if signer.revoked:
            return Result("denied", "signer has been revoked")
        window = self._replay.setdefault(signed.signer, _Replay())
        cmd_id = hashlib.blake2b(data, digest_size=16).digest()
        seen = window.recent.get(signed.seq)
        if seen is not None:
            if seen[0] == cmd_id:
                return seen[1]           # the same command retried: same answer
            return Result("replay", f"sequence number {signed.seq} was already used")
        if signed.seq <= window.floor:
            return Result("replay", f"sequence number {signed.seq} is older than the replay window")
        result = self._decide(signer, signed)
        window.recent[signed.seq] = (cmd_id, result)
        if len(window.recent) > REPLAY_WINDOW:
            oldest = min(window.recent)
            del window.recent[oldest]
            window.floor = max(window.floor, oldest)
        return result

    def _decide(self, signer: DeviceRecord, signed: SignedCommand) -> Result:
        cmd = signed.command
        allowed = REQUIRED_TRUST[type(cmd)]
        is_self = getattr(cmd, "device", None) == signer.key
        if signer.trust not in allowed and not (SELF in allowed and is_self):
            return Result("denied", f"a {signer.trust} device may not {type(cmd).__name__}")
        refusal = _CHECKS[type(cmd)](self, cmd)
        if refusal is not None:
            return refusal
        return _EFFECTS[type(cmd)](self, signed, cmd)

    # ------------------------------------------------------------ helpers for rules

    def _active_owners(self) -> int:
        return sum(1 for d in self._devices.values() if d.trust == "owner" and d.active)

    def _target(self, key: bytes) -> Result | DeviceRecord:
        record = self._devices.get(key)
        if record is None:
            return Result("invalid", "no such device")
        if record.revoked:
            return Result("invalid", "device is revoked")
        return record

    def _holds_key(self, key: bytes) -> bool:
        return any(dev == key for (_, dev) in self._sealed)

    def _replace(self, key: bytes, **changes: Any) -> None:
        self._devices[key] = dataclasses.replace(self._devices[key], **changes)

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """The whole state as canonical msgpack bytes (sorted, no pickle)."""
        devices = [[d.key, d.name, d.trust, d.voter, d.admitted_by, d.admitted_at_ms, d.revoked,
                    d.revoked_at_ms, d.policy] for _, d in sorted(self._devices.items())]
        sealed = [[e, dev, blob] for (e, dev), blob in sorted(self._sealed.items())]
        heads = [[b, h] for b, h in sorted(self._heads.items())]
        replay = [[dev, w.floor, [[s, cid, r.to_list()] for s, (cid, r) in sorted(w.recent.items())]]
                  for dev, w in sorted(self._replay.items())]
        return msgpack.packb([SNAPSHOT_FORMAT, self.genesis.encode(), self.epoch, self.applied,
                              devices, sealed, heads, replay], use_bin_type=True)

    @classmethod
    def restore(cls, data: bytes, genesis: Genesis | None = None) -> VaultState:
        """Rebuild a state from ``snapshot()`` bytes; raise ``SnapshotCorrupt`` if they are not one.

        With ``genesis`` given, the snapshot must belong to that vault.
        """
        if not isinstance(data, bytes) or len(data) > MAX_SNAPSHOT_BYTES:
            raise SnapshotCorrupt("snapshot too large or not bytes")
        try:
            items = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=0, max_ext_len=0)
            fmt, gen_bytes, epoch, applied, devices, sealed, heads, replay = items
            if fmt != SNAPSHOT_FORMAT:
                raise SnapshotCorrupt(f"unknown snapshot format {fmt!r}")
            snap_genesis = Genesis.decode(gen_bytes)
            if genesis is not None and snap_genesis != genesis:
                raise SnapshotCorrupt("snapshot belongs to another vault")
            state = cls(snap_genesis)
            state.epoch, state.applied = _int(epoch), _int(applied)
            state._devices = {}
            for row in devices:
                rec = DeviceRecord(*row)
                if not (isinstance(rec.key, bytes) and len(rec.key) == 32 and isinstance(rec.name, str)
                        and rec.trust in TRUST_LEVELS and isinstance(rec.voter, bool)
                        and isinstance(rec.admitted_by, bytes) and isinstance(rec.admitted_at_ms, int)
                        and isinstance(rec.revoked, bool) and rec.policy in POLICIES
                        and (rec.revoked_at_ms is None or isinstance(rec.revoked_at_ms, int))):
                    raise SnapshotCorrupt("malformed device record")
                state._devices[rec.key] = rec
            state._sealed = {(_int(e), _bytes(dev)): _bytes(blob) for e, dev, blob in sealed}
            state._heads = {_str(b): _bytes(h) for b, h in heads}
            state._replay = {}
            for dev, floor, recent in replay:
                if not isinstance(floor, int):
                    raise SnapshotCorrupt("malformed replay floor")
                state._replay[_bytes(dev)] = _Replay(
                    floor, {_int(s): (_bytes(cid), Result.from_list(r)) for s, cid, r in recent})
        except SnapshotCorrupt:
            raise
        except (ValueError, TypeError, CommandRejected, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            raise SnapshotCorrupt(f"snapshot does not decode: {exc}") from exc
        return state


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise SnapshotCorrupt("expected an integer")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise SnapshotCorrupt("expected bytes")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise SnapshotCorrupt("expected a string")
    return v


# ---------------------------------------------------------------- per-command checks


def _check_admit(st: VaultState, cmd: AdmitDevice) -> Result | None:
    if cmd.device in st._devices:
        return Result("invalid", "device is already enrolled (or was revoked)")
    return None


def _check_trust(st: VaultState, cmd: SetTrust) -> Result | None:
    target = st._target(cmd.device)
    if isinstance(target, Result):
        return target
    if target.trust == "owner" and cmd.trust != "owner" and st._active_owners() <= 1:
        return Result("invalid", "cannot demote the last owner")
    if cmd.trust == "storage" and st._holds_key(cmd.device):
        return Result("invalid", "device holds the vault key; a storage device never may (revoke it instead)")
    return None


def _check_target_only(st: VaultState, cmd: SetVoter | SetPolicy) -> Result | None:
    target = st._target(cmd.device)
    return target if isinstance(target, Result) else None


def _check_revoke(st: VaultState, cmd: Revoke) -> Result | None:
    target = st._target(cmd.device)
    if isinstance(target, Result):
        return target
    if target.trust == "owner" and st._active_owners() <= 1:
        return Result("invalid", "cannot revoke the last owner")
    return None


def _check_sealed(st: VaultState, cmd: PutSealedKey) -> Result | None:
    target = st._target(cmd.device)
    if isinstance(target, Result):
        return target
    if target.trust == "storage":
        return Result("invalid", "a storage device never receives the vault key")
    if cmd.epoch > st.epoch:
        return Result("invalid", f"epoch {cmd.epoch} has not started (current {st.epoch})")
    if (cmd.epoch, cmd.device) in st._sealed:
        return Result("invalid", f"device already has the key of epoch {cmd.epoch}")
    return None


def _check_rotate(st: VaultState, cmd: RotateEpoch) -> Result | None:
    if cmd.epoch != st.epoch + 1:
        return Result("invalid", f"next epoch is {st.epoch + 1}, not {cmd.epoch}")
    return None


def _check_cas(st: VaultState, cmd: CasHead) -> Result | None:
    current = st._heads.get(cmd.branch)
    if current != cmd.expected:
        return Result("conflict", f"branch {cmd.branch!r} has moved", current)
    return None


_CHECKS: dict[type, Callable[[VaultState, Any], Result | None]] = {
    AdmitDevice: _check_admit, SetTrust: _check_trust, SetVoter: _check_target_only, Revoke: _check_revoke,
    SetPolicy: _check_target_only, PutSealedKey: _check_sealed, RotateEpoch: _check_rotate, CasHead: _check_cas,
}


# ---------------------------------------------------------------- effects


def _do_admit(st: VaultState, s: SignedCommand, cmd: AdmitDevice) -> Result:
    st._devices[cmd.device] = DeviceRecord(cmd.device, cmd.name, cmd.trust, cmd.voter, s.signer, s.issued_at_ms,
                                           policy="archive" if cmd.trust == "storage" else "full")
    return Result("ok")


def _do_trust(st: VaultState, s: SignedCommand, cmd: SetTrust) -> Result:
    st._replace(cmd.device, trust=cmd.trust)
    return Result("ok")


def _do_voter(st: VaultState, s: SignedCommand, cmd: SetVoter) -> Result:
    st._replace(cmd.device, voter=cmd.voter)
    return Result("ok")


def _do_revoke(st: VaultState, s: SignedCommand, cmd: Revoke) -> Result:
    st._replace(cmd.device, revoked=True, revoked_at_ms=s.issued_at_ms)
    # Its sealed keys are useless to everyone else; drop them from the state.
    st._sealed = {k: v for k, v in st._sealed.items() if k[1] != cmd.device}
    return Result("ok")


def _do_policy(st: VaultState, s: SignedCommand, cmd: SetPolicy) -> Result:
    st._replace(cmd.device, policy=cmd.policy)
    return Result("ok")


def _do_sealed(st: VaultState, s: SignedCommand, cmd: PutSealedKey) -> Result:
    st._sealed[(cmd.epoch, cmd.device)] = cmd.sealed
    return Result("ok")


def _do_rotate(st: VaultState, s: SignedCommand, cmd: RotateEpoch) -> Result:
    st.epoch = cmd.epoch
    return Result("ok")


def _do_cas(st: VaultState, s: SignedCommand, cmd: CasHead) -> Result:
    st._heads[cmd.branch] = cmd.new
    return Result("ok", head=cmd.new)


_EFFECTS: dict[type, Callable[[VaultState, SignedCommand, Any], Result]] = {
    AdmitDevice: _do_admit, SetTrust: _do_trust, SetVoter: _do_voter, Revoke: _do_revoke,
    SetPolicy: _do_policy, PutSealedKey: _do_sealed, RotateEpoch: _do_rotate, CasHead: _do_cas,
}

assert set(_CHECKS) == set(_EFFECTS) == set(REQUIRED_TRUST), "every command needs a rule, a check and an effect"
