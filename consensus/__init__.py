"""consensus — the vault's small, precious metadata, strongly consistent via Raft.

A pysyncobj state machine holds the device registry (keys, names, trust
levels, voters, revocations), the vault key sealed per device and epoch, and
branch heads that move only by compare-and-swap. Every command is signed and
checked against the signer's trust level on every replica. Raft messages ride
on authenticated transport sessions; nothing from the network reaches an
unrestricted unpickler.

Imports `transport` only; what it needs from the vault it declares as
`typing.Protocol`s that `pcloud` implements.
"""
