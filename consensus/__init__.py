"""consensus — the vault's small, precious metadata, strongly consistent via Raft.

A pysyncobj state machine holds the device registry (keys, names, trust
levels, voters, revocations), the vault key sealed per device and epoch, and
branch heads that move only by compare-and-swap. Every command is signed and
checked against the signer's trust level on every replica. Raft messages ride
on authenticated transport sessions; nothing from the network reaches an
unrestricted unpickler.

Imports `transport` only; what it needs from the vault it declares as
`typing.Protocol`s that `pcloud` implements (``Signer``; ``RaftLink`` for the
wire, which ``SessionLink`` implements over ``transport.endpoint.Endpoint``).

Modules: ``commands`` (signed command set, genesis), ``state`` (pure state
machine, rules as data), ``raft`` (``RaftNode``: pysyncobj driven from
asyncio), ``raft_journal`` (journal durability), ``raft_transport``
(pickle-free wire format, pysyncobj Transport), ``session_link`` (Raft over
QUIC sessions), ``tcp_link`` (authenticated TCP loopback link for tests and
benchmarks), ``safe_pickle`` (restricted unpickler installed into pysyncobj),
``node_proc`` (one node per process, for cluster tests and benchmarks),
``errors``.
"""
from consensus.commands import (AdmitDevice, CasHead, Command, Genesis, PutSealedKey, Revoke, RotateEpoch,
                                SeedSigner, SetPolicy, SetTrust, SetVoter, SignedCommand, Signer)
from consensus.errors import (CommandRejected, ConsensusError, NoQuorum, PermissionDenied, RaftClosed,
                              SnapshotCorrupt, UnsafePayload)
from consensus.raft import RaftConfig, RaftNode
from consensus.raft_transport import LinkHandler, RaftLink
from consensus.session_link import SessionLink
from consensus.state import DeviceRecord, Result, VaultState

__all__ = [
    "AdmitDevice", "CasHead", "Command", "CommandRejected", "ConsensusError", "DeviceRecord", "Genesis",
    "LinkHandler", "NoQuorum", "PermissionDenied", "PutSealedKey", "RaftClosed", "RaftConfig", "RaftLink",
    "RaftNode", "Result", "Revoke", "RotateEpoch", "SeedSigner", "SessionLink", "SetPolicy", "SetTrust",
    "SetVoter", "SignedCommand", "Signer", "SnapshotCorrupt", "UnsafePayload", "VaultState",
]
