"""transport — bytes between devices.

One UDP socket per node carries QUIC (driven sans-I/O) plus a small
rendezvous / hole-punch / relay protocol; mDNS finds peers on the LAN.
Peers authenticate by Ed25519 device key (no CA, no passwords).
On LAN/direct paths a session's bulk streams ride a TLS-over-TCP lane with the
same keys when one opens (transport.lane); the API is the same either way.

This layer imports nothing else of pcloud's: it is handed a signing key and
the set of peer keys it may talk to. It knows keys and bytes, not vaults.
"""
from __future__ import annotations

from transport.endpoint import Endpoint, PathTransmitter, default_path_kind
from transport.errors import (
    AuthenticationError,
    LocalProtocolError,
    MessageTooLarge,
    PeerUnreachable,
    ProtocolError,
    RemoteProtocolError,
    RequestFailed,
    RequestTimeout,
    SendBufferFull,
    SessionClosed,
    TransportError,
)
from transport.events import AuthFailed, PathChanged, PeerDown, PeerInfo, PeerUp, TransportEvent
from transport.identity import DeviceIdentity
from transport.session import STREAM_WINDOW, Session, Stream

__all__ = [
    "AuthFailed", "AuthenticationError", "DeviceIdentity", "Endpoint", "LocalProtocolError", "MessageTooLarge",
    "PathChanged", "PathTransmitter", "PeerDown", "PeerInfo", "PeerUnreachable", "PeerUp", "ProtocolError",
    "RemoteProtocolError", "RequestFailed", "RequestTimeout", "STREAM_WINDOW", "SendBufferFull", "Session", "SessionClosed", "Stream",
    "TransportError", "TransportEvent", "default_path_kind",
]
