"""Device-key authentication inside a QUIC connection (both engines, both directions).

Why in-connection: qh3's TLS server never requests a client certificate, so the
client proves its key with a signature instead; doing the same for aioquic keeps one
code path. The server's key is proven by TLS itself (CertificateVerify over the
transcript), and the client pins it.

Protocol (stream 0, the first client-initiated bidirectional stream):
  1. TLS completes. Both sides derive `binding` = a TLS exporter-style secret from the
     master secret over the whole handshake transcript (quic_engine.Engine.exporter).
  2. client checks: the server certificate's Ed25519 key == the key it dialled, and
     admit(server key). Otherwise it closes the connection (AUTH_FAILED).
  3. client -> server: AUTH {k: client key, s: sign(client, transcript), n: instance}.
  4. server checks the signature and admit(client key); then AUTH_OK {n: instance}, else
     it closes the connection with AUTH_FAILED and a reason.
`n` is a random per-process id (not authenticated, only compared): it lets an endpoint
tell a restarted peer from a simultaneous second connection of the same process.
transcript = CONTEXT || ALPN || binding || server key || client key.

Invariants: the signature covers `binding`, unique to this TLS session, so it cannot
be replayed on another connection or relayed by a man in the middle (even an admitted
one: it would have to hold the victim's TLS keys). Naming the server key also stops a
peer from forwarding our proof to a third device. No application frame is accepted
before AUTH_OK.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from transport.errors import AuthenticationError
from transport.identity import KEY_SIZE, DeviceIdentity, short_id, verify_signature
from transport.quic_engine import ALPN

CONTEXT = b"pcloud transport auth v1\x00"
EXPORTER_LABEL = b"pcloud auth binding"
log = logging.getLogger("transport.auth")
AUTH_FAILED = 0x1A7  # QUIC application close code for authentication failures

Admit = Callable[[bytes], bool]


@dataclass(frozen=True)
class ClientProof:
    """What the client sends: its key and a signature over the transcript."""

    key: bytes
    "client device key (32 bytes)"
    signature: bytes
    "Ed25519 signature over transcript()"


def admitted(admit: Admit, key: bytes) -> bool:
    """Ask the upper layer; its failure counts as a refusal (logged), never as an admission."""
    try:
        return bool(admit(key))
    except Exception:  # an upper-layer bug must not crash the endpoint nor admit anyone
        log.exception("admit() failed for %s; refusing", short_id(key))
        return False


def transcript(binding: bytes, server_key: bytes, client_key: bytes) -> bytes:
    """The bytes the client signs."""
    return CONTEXT + ALPN.encode() + b"\x00" + binding + server_key + client_key


def make_proof(identity: DeviceIdentity, binding: bytes, server_key: bytes) -> ClientProof:
    """Client side: sign this connection's transcript with our device key."""
    return ClientProof(identity.public_key, identity.sign(transcript(binding, server_key, identity.public_key)))


def check_server(server_key: bytes, expected: bytes, admit: Admit) -> None:
    """Client side: the TLS-proven server key must be the device we dialled and still admitted."""
    if server_key != expected:
        raise AuthenticationError(
            f"impostor: dialled device {short_id(expected)} but the peer proved key {short_id(server_key)}"
        )
    if not admitted(admit, server_key):
        raise AuthenticationError(f"device {short_id(server_key)} is not admitted (unknown or revoked)")


def check_unpinned_server(server_key: bytes, accept: Admit) -> bytes:
    """Client side of Endpoint.connect_unpinned: `accept(server key)` decides; return the key."""
    if len(server_key) != KEY_SIZE or not admitted(accept, server_key):
        raise AuthenticationError(f"device {short_id(server_key)} is not the one we are looking for")
    return server_key


def check_client(proof: ClientProof, binding: bytes, server_key: bytes, admit: Admit) -> bytes:
    """Server side: verify the client's proof and admission; return the client's key."""
    if len(proof.key) != KEY_SIZE:
        raise AuthenticationError("client key is not a 32-byte Ed25519 key")
    if not verify_signature(proof.key, proof.signature, transcript(binding, server_key, proof.key)):
        raise AuthenticationError(f"device {short_id(proof.key)} failed to prove its key (bad signature)")
    if not admitted(admit, proof.key):
        raise AuthenticationError(f"device {short_id(proof.key)} is not admitted (unknown or revoked)")
    return proof.key


__all__ = ["AUTH_FAILED", "Admit", "ClientProof", "EXPORTER_LABEL", "admitted", "check_client", "check_server", "check_unpinned_server", "make_proof", "transcript"]
