"""The replicated command set: frozen dataclasses, canonical msgpack, Ed25519-signed.

Wire form of a signed command (``SignedCommand.encode``)::

    msgpack [ body: bin, signature: bin(64) ]
    body = msgpack [ FORMAT, vault_id: bin, signer: bin(32), seq: int, issued_at_ms: int,
                     tag: str, fields: array ]

Invariants
----------
* The signature covers ``_SIGN_CONTEXT || body``; the body names the vault, so a
  command signed for one vault cannot be replayed into another.
* ``seq`` is chosen by the issuing device and is unique per device; the state
  machine refuses a sequence number it has seen (or one older than its replay
  window), so a captured command cannot be applied twice.
* Decoding is strict: every field is type- and size-checked, unknown tags and
  trailing bytes are refused with ``CommandRejected`` (never a crash), and the
  whole encoding is bounded by ``MAX_COMMAND_BYTES``.
* The genesis record (``Genesis``) is self-signed by the first owner and
  created once by ``pcloud init``; every replica is configured with the same one.

This module knows keys and bytes only: signing is done by a ``Signer`` the
caller provides (``SeedSigner`` wraps a raw Ed25519 seed).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from consensus.errors import CommandRejected

FORMAT = 1
KEY_BYTES = 32
SIG_BYTES = 64
MAX_COMMAND_BYTES = 16 * 1024
MAX_NAME = 64
MAX_BRANCH = 128
MAX_HEAD = 64
MAX_SEALED = 4096
MAX_VAULT_ID = 32

TRUST_LEVELS = ("owner", "member", "reader", "storage")
POLICIES = ("full", "on-demand", "archive")

_SIGN_CONTEXT = b"pcloud raft command v1\x00"
_GENESIS_CONTEXT = b"pcloud vault genesis v1\x00"


class Signer(Protocol):
    """Whatever holds a device's Ed25519 key (``pcloud.identity`` implements it)."""

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key: the device id."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``message``."""
        ...


class SeedSigner:
    """A ``Signer`` over a raw 32-byte Ed25519 seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class AdmitDevice:
    """Enroll a device: its key, a display name, a trust level, voter or not."""

    TAG: ClassVar[str] = "admit"
    device: bytes
    name: str
    trust: str
    voter: bool


@dataclass(frozen=True)
class SetTrust:
    """Change an enrolled device's trust level."""

    TAG: ClassVar[str] = "trust"
    device: bytes
    trust: str


@dataclass(frozen=True)
class SetVoter:
    """Make an enrolled device a Raft voter or a non-voting replica."""

    TAG: ClassVar[str] = "voter"
    device: bytes
    voter: bool


@dataclass(frozen=True)
class Revoke:
    """Revoke a device for good: it can do nothing more and leaves the Raft cluster."""

    TAG: ClassVar[str] = "revoke"
    device: bytes


@dataclass(frozen=True)
class SetPolicy:
    """Set a device's replication policy ('full' | 'on-demand' | 'archive')."""

    TAG: ClassVar[str] = "policy"
    device: bytes
    policy: str


@dataclass(frozen=True)
class PutSealedKey:
    """Store the vault key of ``epoch`` sealed to ``device`` (opaque bytes)."""

    TAG: ClassVar[str] = "sealkey"
    epoch: int
    device: bytes
    sealed: bytes


@dataclass(frozen=True)
class RotateEpoch:
    """Start vault-key epoch ``epoch`` (must be the current epoch + 1)."""

    TAG: ClassVar[str] = "rotate"
    epoch: int


@dataclass(frozen=True)
class CasHead:
    """Move ``branch`` from ``expected`` (None: branch absent) to ``new``."""

    TAG: ClassVar[str] = "cas"
    branch: str
    expected: bytes | None
    new: bytes


Command = AdmitDevice | SetTrust | SetVoter | Revoke | SetPolicy | PutSealedKey | RotateEpoch | CasHead
COMMAND_TYPES: tuple[type, ...] = (AdmitDevice, SetTrust, SetVoter, Revoke, SetPolicy, PutSealedKey, RotateEpoch, CasHead)
_BY_TAG: dict[str, type] = {cls.TAG: cls for cls in COMMAND_TYPES}


def _check_key(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise CommandRejected(f"{what} must be a {KEY_BYTES}-byte device key")
    return value


def _check_str(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise CommandRejected(f"{what} must be a non-empty string of at most {limit} characters")
    return value


def _check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        raise CommandRejected(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise CommandRejected(f"{what} must be a non-negative 64-bit integer")
    return value


def _check_bytes(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= limit:
        raise CommandRejected(f"{what} must be 1..{limit} bytes")
    return value


def validate_command(cmd: Command) -> Command:
    """Check every field's type and bounds; raise ``CommandRejected`` or return ``cmd``."""
    if isinstance(cmd, AdmitDevice):
        _check_key(cmd.device, "device")
        _check_str(cmd.name, "name", MAX_NAME)
        _check_choice(cmd.trust, "trust", TRUST_LEVELS)
        if not isinstance(cmd.voter, bool):
            raise CommandRejected("voter must be a boolean")
    elif isinstance(cmd, SetTrust):
        _check_key(cmd.device, "device")
        _check_choice(cmd.trust, "trust", TRUST_LEVELS)
    elif isinstance(cmd, SetVoter):
        _check_key(cmd.device, "device")
        if not isinstance(cmd.voter, bool):
            raise CommandRejected("voter must be a boolean")
    elif isinstance(cmd, Revoke):
        _check_key(cmd.device, "device")
    elif isinstance(cmd, SetPolicy):
        _check_key(cmd.device, "device")
        _check_choice(cmd.policy, "policy", POLICIES)
    elif isinstance(cmd, PutSealedKey):
        _check_int(cmd.epoch, "epoch")
        _check_key(cmd.device, "device")
        _check_bytes(cmd.sealed, "sealed key", MAX_SEALED)
    elif isinstance(cmd, RotateEpoch):
        _check_int(cmd.epoch, "epoch")
    elif isinstance(cmd, CasHead):
        _check_str(cmd.branch, "branch", MAX_BRANCH)
        if cmd.expected is not None:
            _check_bytes(cmd.expected, "expected head", MAX_HEAD)
        _check_bytes(cmd.new, "new head", MAX_HEAD)
    else:
        raise CommandRejected(f"unknown command type {type(cmd).__name__}")
    return cmd


def _fields(cmd: Command) -> list[Any]:
    return [getattr(cmd, f.name) for f in dataclasses.fields(cmd)]


def _unpack(data: bytes) -> Any:
    if not isinstance(data, bytes) or len(data) > MAX_COMMAND_BYTES:
        raise CommandRejected(f"encoded command must be bytes of at most {MAX_COMMAND_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=MAX_COMMAND_BYTES, max_str_len=MAX_COMMAND_BYTES,
                               max_array_len=64, max_map_len=0, max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CommandRejected(f"malformed command encoding: {exc}") from exc


# ---------------------------------------------------------------- signed envelope


@dataclass(frozen=True)
class SignedCommand:
    """A command plus who issued it, for which vault, its sequence number and signature."""

    vault_id: bytes
    signer: bytes
    seq: int
    issued_at_ms: int
    command: Command
    signature: bytes
    body: bytes = dataclasses.field(repr=False, compare=False, default=b"")

    @classmethod
    def create(cls, signer: Signer, vault_id: bytes, seq: int, issued_at_ms: int,
               command: Command) -> SignedCommand:
        """Validate ``command``, encode the body canonically and sign it with ``signer``."""
        validate_command(command)
        _check_bytes(vault_id, "vault id", MAX_VAULT_ID)
        _check_int(seq, "seq")
        _check_int(issued_at_ms, "issued_at_ms")
        body = msgpack.packb([FORMAT, vault_id, signer.public_key, seq, issued_at_ms,
                              command.TAG, _fields(command)], use_bin_type=True)
        signature = signer.sign(_SIGN_CONTEXT + body)
        return cls(vault_id, signer.public_key, seq, issued_at_ms, command, signature, body)

    def encode(self) -> bytes:
        """The bytes that go into the Raft log."""
        return msgpack.packb([self.body, self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> SignedCommand:
        """Parse and verify; raise ``CommandRejected`` on any malformed input or bad signature."""
        outer = _unpack(data)
        if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
                and isinstance(outer[1], bytes)):
            raise CommandRejected("a signed command is [body, signature]")
        body, signature = outer
        if len(signature) != SIG_BYTES:
            raise CommandRejected("signature must be 64 bytes")
        inner = _unpack(body)
        if not (isinstance(inner, list) and len(inner) == 7):
            raise CommandRejected("command body must have 7 fields")
        fmt, vault_id, signer, seq, issued_at_ms, tag, fields = inner
        if fmt != FORMAT:
            raise CommandRejected(f"unsupported command format {fmt!r}")
        _check_bytes(vault_id, "vault id", MAX_VAULT_ID)
        _check_key(signer, "signer")
        _check_int(seq, "seq")
        _check_int(issued_at_ms, "issued_at_ms")
        kind = _BY_TAG.get(tag) if isinstance(tag, str) else None
        if kind is None:
            raise CommandRejected(f"unknown command tag {tag!r}")
        if not isinstance(fields, list) or len(fields) != len(dataclasses.fields(kind)):
            raise CommandRejected(f"{tag} takes {len(dataclasses.fields(kind))} fields")
        command = validate_command(kind(*fields))
        if msgpack.packb(inner, use_bin_type=True) != body:
            # Non-canonical encodings would give one command several ids.
            raise CommandRejected("command body is not canonically encoded")
        try:
            VerifyKey(signer).verify(_SIGN_CONTEXT + body, signature)
        except BadSignatureError as exc:
            raise CommandRejected("bad signature") from exc
        return cls(vault_id, signer, seq, issued_at_ms, command, signature, body)


# ---------------------------------------------------------------- genesis


@dataclass(frozen=True)
class Genesis:
    """The vault's birth certificate: its id and first owner, self-signed by that owner."""

    vault_id: bytes
    owner: bytes
    owner_name: str
    created_at_ms: int
    signature: bytes

    @classmethod
    def create(cls, signer: Signer, vault_id: bytes, owner_name: str, created_at_ms: int) -> Genesis:
        _check_bytes(vault_id, "vault id", MAX_VAULT_ID)
        _check_str(owner_name, "owner name", MAX_NAME)
        body = cls._body(vault_id, signer.public_key, owner_name, created_at_ms)
        return cls(vault_id, signer.public_key, owner_name, created_at_ms, signer.sign(body))

    @staticmethod
    def _body(vault_id: bytes, owner: bytes, name: str, created: int) -> bytes:
        return _GENESIS_CONTEXT + msgpack.packb([FORMAT, vault_id, owner, name, created], use_bin_type=True)

    def encode(self) -> bytes:
        return msgpack.packb([FORMAT, self.vault_id, self.owner, self.owner_name, self.created_at_ms,
                              self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Genesis:
        """Parse and verify the self-signature; raise ``CommandRejected`` if anything is off."""
        items = _unpack(data)
        if not (isinstance(items, list) and len(items) == 6 and items[0] == FORMAT):
            raise CommandRejected("malformed genesis record")
        _, vault_id, owner, name, created, signature = items
        _check_bytes(vault_id, "vault id", MAX_VAULT_ID)
        _check_key(owner, "genesis owner")
        _check_str(name, "owner name", MAX_NAME)
        _check_int(created, "created_at_ms")
        if not isinstance(signature, bytes) or len(signature) != SIG_BYTES:
            raise CommandRejected("genesis signature must be 64 bytes")
        try:
            VerifyKey(owner).verify(cls._body(vault_id, owner, name, created), signature)
        except BadSignatureError as exc:
            raise CommandRejected("genesis record has a bad signature") from exc
        return cls(vault_id, owner, name, created, signature)
