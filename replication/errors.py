"""Errors raised by the replication layer.

    ReplicationError
    ├── MalformedEnvelope   a sealed object's framing is broken (truncated, bad lengths, bad version)
    └── TransferFailed      an object could not be fetched from any peer
"""
from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every replication failure."""


class MalformedEnvelope(ReplicationError):
    """A sealed envelope's framing is broken; it is never passed on as data."""


class TransferFailed(ReplicationError):
    """An object could not be fetched from any peer."""
