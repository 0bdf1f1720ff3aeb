"""Device key material for TLS: an Ed25519 seed becomes a pinned self-signed certificate.

Invariants:
- A device id is the raw 32-byte Ed25519 public key; nothing else names a device here.
- The certificate carries no authority: it only lets TLS prove possession of the
  device key (TLS 1.3 CertificateVerify). Who the key belongs to is decided by the
  caller's `admit` callable, never by certificate fields or dates.
- The seed never leaves this process; only signatures and the public key do.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from transport.errors import AuthenticationError, LocalProtocolError

KEY_SIZE = 32
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)  # RFC 5280: no expiry
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's Ed25519 key pair plus its self-signed certificate (DER and PEM forms)."""

    seed: bytes = field(repr=False)
    "the 32-byte Ed25519 private seed"
    public_key: bytes
    "the raw 32-byte public key: the device id"
    cert_der: bytes = field(repr=False)
    "self-signed X.509 certificate over `public_key`, DER"
    key_pem: bytes = field(repr=False)
    "the private key as unencrypted PKCS#8 PEM, for engines that load PEM"

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceIdentity:
        """Build the identity (and a fresh certificate) from a raw 32-byte seed."""
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != KEY_SIZE:
            raise LocalProtocolError("an Ed25519 device seed is exactly 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pcloud-" + public.hex()[:16])])
        # Validity is irrelevant to us (keys are pinned). Fixed dates make the certificate a
        # pure function of the seed (Ed25519 signs deterministically), so anyone holding the
        # seed rebuilds the very same bytes and a whole-certificate pin stays valid.
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private.public_key())
            .serial_number(int.from_bytes(public[:8], "big") >> 1 or 1)
            .not_valid_before(_NOT_BEFORE)
            .not_valid_after(_NOT_AFTER)
            .sign(private, None)
        )
        key_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(bytes(seed), public, cert.public_bytes(serialization.Encoding.DER), key_pem)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of `message`."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def certificate(self) -> x509.Certificate:
        """The certificate as a cryptography object (aioquic's form)."""
        return x509.load_der_x509_certificate(self.cert_der)

    def private_key(self) -> Ed25519PrivateKey:
        """The private key as a cryptography object (aioquic's form)."""
        return Ed25519PrivateKey.from_private_bytes(self.seed)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`."""
    if len(public_key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    except ValueError:  # not a valid curve point
        return False
    return True


def peer_key_from_cert(cert_der: bytes) -> bytes:
    """Return the raw Ed25519 public key a DER certificate carries.

    Raises AuthenticationError when the certificate does not parse or holds another key type.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        key = cert.public_key()
    except ValueError as exc:
        raise AuthenticationError(f"peer certificate does not parse: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuthenticationError(f"peer certificate holds a {type(key).__name__}, not an Ed25519 device key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def short_id(public_key: bytes) -> str:
    """A short printable form of a device id for logs (first 8 bytes hex)."""
    return public_key[:8].hex()


__all__ = ["DeviceIdentity", "KEY_SIZE", "SIGNATURE_SIZE", "peer_key_from_cert", "short_id", "verify_signature"]
