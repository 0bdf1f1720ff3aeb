"""Every error pcloud raises, in one tree.

    PcloudError
    ├── UsageError              the caller asked for something invalid (a library user's or CLI user's mistake)
    │   ├── BadPath             a vault path is absolute, escapes the root, or has empty/odd parts
    │   └── BadArgument         any other invalid argument (unknown trust level, bad duration, ...)
    ├── NotFound                no such path, object, branch, document or device
    ├── VaultError              the vault directory itself
    │   ├── NotAVault           the directory holds no vault
    │   ├── VaultExists         `init` on a directory that already holds one
    │   ├── WrongKey            the vault key is missing or does not open this vault
    │   │   └── InsecureKeyFile a key file is readable by group or others (message says how to fix)
    │   └── StorageFull         the disk is full; nothing was half-written
    ├── IntegrityError          stored or received bytes failed verification
    │   └── CorruptObject       one object; `.object_id` names it
    ├── ConflictError           a branch moved under us (compare-and-swap lost)
    ├── NotYetAvailable         a feature whose issue is not built yet; the message says which
    ├── NodeNotRunning          the command needs this vault's running node (`pcloud serve`) and none runs
    ├── InvitationError         joining with an invitation code failed; `.code` is the wire code
    │   ├── WrongCode           the code does not match (PAKE confirmation failed); nothing was learnt
    │   ├── UnknownInvitation   the inviter has no such invitation (typo, or its node restarted)
    │   ├── InvitationExpired   past its expiry
    │   ├── InvitationUsed      already redeemed (codes work once)
    │   ├── InvitationLocked    too many wrong attempts
    │   └── WrongLevel          the invitation offers another trust level than the joiner requires
    ├── WatcherError            the kernel file watcher (inotify) cannot start for a folder
    │   └── MalformedEvents     an inotify read buffer is truncated or malformed
    └── (re-exported) TransportError, ConsensusError, ReplicationError from the lower layers

Expected outcomes are values, not exceptions: a merge with conflicts returns a
`MergeResult` listing them; only a lost compare-and-swap that the caller asked
to be strict about raises `ConflictError`.
"""
from __future__ import annotations

from consensus.errors import ConsensusError, NoQuorum, CommandRejected, PermissionDenied
from replication.errors import ReplicationError, MalformedEnvelope
from transport.errors import TransportError, AuthenticationError, PeerUnreachable


class PcloudError(Exception):
    """Base class of every error pcloud raises itself."""


class UsageError(PcloudError):
    """The caller asked for something invalid."""


class BadPath(UsageError):
    """A vault path is absolute, escapes the vault root, or has empty parts."""


class BadArgument(UsageError):
    """An argument has an invalid value."""


class NotFound(PcloudError):
    """No such path, object, branch, document or device."""


class VaultError(PcloudError):
    """A problem with the vault directory itself."""


class NotAVault(VaultError):
    """The directory holds no pcloud vault."""


class VaultExists(VaultError):
    """The directory already holds a vault."""


class WrongKey(VaultError):
    """The vault key is missing, or is not the key this vault was sealed with."""


class InsecureKeyFile(WrongKey):
    """A private key file is accessible by group or others; it is refused until chmod 600."""


class StorageFull(VaultError):
    """The disk is full; the operation was rolled back and nothing was lost."""


class IntegrityError(PcloudError):
    """Stored or received bytes failed verification."""


class CorruptObject(IntegrityError):
    """One object failed verification; `object_id` (hex) names it."""

    def __init__(self, object_id: str, reason: str) -> None:
        super().__init__(f"object {object_id} is corrupt: {reason}")
        self.object_id = object_id
        self.reason = reason


class ConflictError(PcloudError):
    """A branch moved under us: its compare-and-swap was lost."""


class NotYetAvailable(PcloudError):
    """The feature exists in the design but its issue is not built yet."""



class NodeNotRunning(PcloudError):
    """The command needs this vault's running node and none answers on its control socket."""


class InvitationError(PcloudError):
    """Joining with an invitation failed; ``code`` is the short wire code."""

    code = "invitation_error"


class WrongCode(InvitationError):
    """The invitation code does not match: the PAKE confirmation failed on one side."""

    code = "wrong_code"


class UnknownInvitation(InvitationError):
    """The inviter holds no such invitation."""

    code = "unknown_invitation"


class InvitationExpired(InvitationError):
    """The invitation is past its expiry."""

    code = "expired"


class InvitationUsed(InvitationError):
    """The invitation was already redeemed."""

    code = "used"


class InvitationLocked(InvitationError):
    """The invitation is locked after too many failed attempts."""

    code = "locked"



class WrongLevel(InvitationError):
    """The invitation offers a different trust level than the joiner requires (nothing was admitted)."""

    code = "wrong_level"


class WatcherError(PcloudError):
    """The kernel file watcher (inotify) cannot be started for a folder (the caller may fall back)."""


class MalformedEvents(WatcherError):
    """An inotify read buffer is truncated or malformed (a partial event, or a name longer than allowed)."""


__all__ = [
    "PcloudError", "UsageError", "BadPath", "BadArgument", "NotFound", "VaultError",
    "NotAVault", "VaultExists", "WrongKey", "InsecureKeyFile", "StorageFull", "IntegrityError", "CorruptObject",
    "ConflictError", "NotYetAvailable", "NodeNotRunning", "InvitationError", "WrongCode", "UnknownInvitation",
    "InvitationExpired", "InvitationUsed", "InvitationLocked", "WrongLevel", "WatcherError", "MalformedEvents",
    "TransportError", "AuthenticationError", "PeerUnreachable",
    "ConsensusError", "NoQuorum", "CommandRejected", "PermissionDenied",
    "ReplicationError", "MalformedEnvelope",
]
