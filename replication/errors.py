"""Errors raised by the replication layer.

    ReplicationError
    ├── MalformedEnvelope   a sealed object's framing is broken (truncated, bad lengths, bad version)
    ├── TransferFailed      an object could not be fetched from any peer
    ├── ProtocolViolation   a peer's replication message broke the rules (its transfer is dropped, not the node)
    │   └── WrongObject     a peer sent an envelope other than the one asked for
    ├── LogError            a document update log refused an append
    │   ├── LogGap          the update's seq is past the next expected one (earlier updates are missing)
    │   └── LogConflict     a different update already holds this (doc, device, seq)
    └── CannotMerge         a key holder could not merge a document's sealed pieces (kept as they are)
"""
from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every replication failure."""


class MalformedEnvelope(ReplicationError):
    """A sealed envelope's framing is broken; it is never passed on as data."""


class TransferFailed(ReplicationError):
    """An object could not be fetched from any peer."""


class ProtocolViolation(ReplicationError):
    """A peer's replication message broke the rules; the transfer from that peer is dropped, the node goes on."""


class WrongObject(ProtocolViolation):
    """A peer answered with an envelope whose id is not the one asked for (or it failed verification)."""


class LogError(ReplicationError):
    """A document update log refused an append."""


class LogGap(LogError):
    """The update's seq is past the next expected one: the updates in between must be fetched first.

    ``head`` is the highest seq the log holds for that (doc, device).
    """

    def __init__(self, message: str, head: int) -> None:
        super().__init__(message)
        self.head = head


class LogConflict(LogError):
    """A different update is already stored under this (doc, device, seq): a device reused a seq."""


class CannotMerge(ReplicationError):
    """A device holding the key could not open or merge a document's sealed pieces (a piece of a newer
    key epoch, damaged bytes, a state too large for one message); the pieces stay as they are."""
