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
``errors``. (One node per process, for cluster tests and benchmarks:
tests/raft_node_proc.py.)
"""
from __future__ import annotations

from transport.lazy import lazy_exports

# Lazy re-exports (PEP 562): pcloud.errors imports consensus.errors on every CLI call, and
# must not pay for pysyncobj, the QUIC endpoint and cryptography that the Raft node pulls in.
_EXPORTS = {
    **dict.fromkeys(["AdmitDevice", "CasHead", "Command", "Genesis", "PutSealedKey", "Revoke", "RotateEpoch",
                     "SeedSigner", "SetPolicy", "SetTrust", "SetVoter", "SignedCommand", "Signer"], "commands"),
    **dict.fromkeys(["CommandRejected", "ConsensusError", "NoQuorum", "PermissionDenied", "RaftClosed",
                     "SnapshotCorrupt", "UnsafePayload"], "errors"),
    "RaftConfig": "raft", "RaftNode": "raft", "LinkHandler": "raft_transport", "RaftLink": "raft_transport",
    "SessionLink": "session_link", "DeviceRecord": "state", "Result": "state", "VaultState": "state",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
