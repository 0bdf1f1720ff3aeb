"""Events the endpoint reports to upper layers and the UI (small frozen records).

Path kinds are 'lan', 'direct' or 'relay' (preference in that order).
Addresses are what the upper layer knows the path by: (host, port) for real paths,
the tuple given to Endpoint.register_virtual_address for relayed ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

PathKind = Literal["lan", "direct", "relay"]
PATH_KINDS: tuple[str, ...] = ("lan", "direct", "relay")


@dataclass(frozen=True)
class PeerInfo:
    """What `pcloud status --json` lists for a connected peer."""

    peer_id: bytes
    "the peer's Ed25519 device key"
    path: str
    "'lan', 'direct' or 'relay'"
    addr: Any
    "the address the session currently uses"
    rtt_ms: float | None
    "smoothed round-trip time from the QUIC RTT estimator (None before a sample)"


@dataclass(frozen=True)
class PeerUp:
    """An authenticated session with a peer opened (inbound or outbound)."""

    peer_id: bytes
    "the peer's device key"
    path: str
    "path kind at start"
    addr: Any
    "address at start"
    rtt_ms: float | None
    "RTT at start (from the handshake)"
    inbound: bool
    "True when the peer dialled us"


@dataclass(frozen=True)
class PeerDown:
    """The session with a peer ended (closed, idle timeout, error)."""

    peer_id: bytes
    "the peer's device key"
    reason: str
    "why, for logs and the UI"


@dataclass(frozen=True)
class PathChanged:
    """A session moved to another path (migration, relay to direct upgrade, device move)."""

    peer_id: bytes
    "the peer's device key"
    path: str
    "new path kind"
    addr: Any
    "new address"
    rtt_ms: float | None
    "RTT when the change was seen"


@dataclass(frozen=True)
class AuthFailed:
    """A connection was refused because a device key did not check out."""

    peer_id: bytes | None
    "the key the peer claimed or proved, when known"
    addr: Any
    "where the connection came from or went to"
    reason: str
    "the clear reason also written to the log"


TransportEvent = PeerUp | PeerDown | PathChanged | AuthFailed

__all__ = ["AuthFailed", "PATH_KINDS", "PathChanged", "PathKind", "PeerDown", "PeerInfo", "PeerUp", "TransportEvent"]
