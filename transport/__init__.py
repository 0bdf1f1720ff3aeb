"""transport — bytes between devices.

One UDP socket per node carries QUIC (driven sans-I/O) plus a small
rendezvous / hole-punch / relay protocol; mDNS finds peers on the LAN.
Peers authenticate by Ed25519 device key (no CA, no passwords).
On LAN/direct paths a session's bulk streams ride a TCP lane, its records
sealed with a key handed out over the session, when one opens
(transport.lane); the API is the same either way.

This layer imports nothing else of pcloud's: it is handed a signing key and
the set of peer keys it may talk to. It knows keys and bytes, not vaults.
"""
from __future__ import annotations

from transport.lazy import lazy_exports

# Lazy re-exports (PEP 562): pcloud.errors imports transport.errors on every CLI call, and
# must not pay for the QUIC engine, the endpoint and cryptography.
_EXPORTS = {
    "Endpoint": "endpoint", "PathTransmitter": "endpoint", "default_path_kind": "endpoint",
    **dict.fromkeys(["AuthenticationError", "LocalProtocolError", "MessageTooLarge", "PeerUnreachable",
                     "ProtocolError", "RemoteProtocolError", "RequestFailed", "RequestTimeout", "SendBufferFull",
                     "SessionClosed", "TransportError"], "errors"),
    **dict.fromkeys(["AuthFailed", "PathChanged", "PeerDown", "PeerInfo", "PeerUp", "TransportEvent"], "events"),
    "DeviceIdentity": "identity", "STREAM_WINDOW": "session", "Session": "session", "Stream": "session",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
