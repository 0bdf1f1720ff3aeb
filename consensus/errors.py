"""Errors raised by the consensus layer.

    ConsensusError
    ├── NoQuorum            no majority answered in time: write to the local branch instead
    ├── CommandRejected     the state machine refused a command (reason says why)
    │   └── PermissionDenied    the signer's trust level does not allow it
    ├── UnsafePayload       a peer sent a pickle naming a type we do not admit
    ├── SnapshotCorrupt     a state snapshot does not decode (or belongs to another vault)
    └── RaftClosed          the Raft node was closed while work was outstanding
"""
from __future__ import annotations


class ConsensusError(Exception):
    """Base class of every consensus failure."""


class NoQuorum(ConsensusError):
    """No Raft majority answered within the deadline."""


class CommandRejected(ConsensusError):
    """The replicated state machine refused the command; str() says why."""


class PermissionDenied(CommandRejected):
    """The signing device's trust level does not allow this command."""


class UnsafePayload(ConsensusError):
    """A peer sent serialized data naming a type outside the allow-list."""


class SnapshotCorrupt(ConsensusError):
    """A state snapshot did not decode, or names another vault."""


class RaftClosed(ConsensusError):
    """The Raft node was closed while a command was outstanding."""
