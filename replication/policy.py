"""Per-device replication policies: what a device keeps, and in which order it fetches.

A policy is data the replicator consumes; the device's choice is kept in the
vault registry (pcloud/consensus), not here.

* ``full``      every object reachable from the roots (a laptop).
* ``on-demand`` commits, trees, blob manifests and documents always; the
                chunks under a blob only when asked (`Replicator.fetch_now`,
                pinned paths resolved by pcloud to blob/tree ids).
* ``archive``   every object, stored sealed-only (the cloud node: no key).

Object kinds are numbers owned by pcloud.store.objects; this layer only needs
to know which kinds are *manifests of bulk* (blob = 2: its refs are chunks),
which it is told, defaulting to pcloud's numbering.

Fetch order (EdgeCloud: small and urgent first): objects asked for by
`fetch_now` first, then roots and everything referenced by metadata objects
(commits, trees), then bulk (refs of manifests), and among bulk the chunks of
small files (manifests with few refs) first, in file order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

KIND_BLOB = 2
"""pcloud.store.objects.Kind.BLOB: a file manifest, whose refs are its chunks."""

URGENT, METADATA, BULK = 0, 1, 2
"""Priority classes, lowest first."""


class Mode(str, Enum):
    FULL = "full"
    ON_DEMAND = "on-demand"
    ARCHIVE = "archive"


@dataclass(frozen=True)
class Policy:
    """What a device fetches. Build with `Policy.full()`, `Policy.on_demand()`, `Policy.archive()`."""

    mode: Mode
    """The named policy."""
    bulk_kinds: frozenset[int] = field(default_factory=lambda: frozenset({KIND_BLOB}))
    """Kinds whose refs are bulk data (fetched last; not at all under on-demand)."""

    @classmethod
    def full(cls) -> "Policy":
        return cls(Mode.FULL)

    @classmethod
    def on_demand(cls) -> "Policy":
        return cls(Mode.ON_DEMAND)

    @classmethod
    def archive(cls) -> "Policy":
        return cls(Mode.ARCHIVE)

    @classmethod
    def named(cls, name: str) -> "Policy":
        """The policy called ``name`` ('full', 'on-demand', 'archive'); ValueError otherwise."""
        return cls(Mode(name))

    def follows(self, parent_kind: int, deep: bool) -> bool:
        """Whether a walk fetches the refs of an object of ``parent_kind``.

        ``deep`` walks (fetch_now, pins, a switch to full) follow everything.
        """
        return deep or self.mode is not Mode.ON_DEMAND or parent_kind not in self.bulk_kinds

    def priority_class(self, parent_kind: int) -> int:
        """Priority class of the refs of an object of ``parent_kind``."""
        return BULK if parent_kind in self.bulk_kinds else METADATA


__all__ = ["Policy", "Mode", "KIND_BLOB", "URGENT", "METADATA", "BULK"]
