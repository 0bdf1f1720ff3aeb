"""The sealed envelope: how one object travels and rests, readable by every node.

Wire format (all integers big-endian)::

    offset  size        field
    0       4           magic  b"PCE1"
    4       1           format version (1)
    5       1           object kind (1..255; meaning owned by pcloud.store.objects)
    6       4           key epoch the body is sealed under
    10      32          object id (keyed hash of the plaintext; opaque here)
    42      4           n_refs
    46      32*n_refs   ids this object references (graph edges, in object order)
    ..      4           body length
    ..      body_len    AEAD ciphertext (plaintext + 16-byte tag)

Everything before the body is the *header*; ``header_bytes`` is exactly those
bytes, and the sealer passes them to the AEAD as associated data, so a header
swapped onto another body (different id, refs or epoch) fails to open.

Invariants
----------
* One encoding per envelope: decoding then encoding returns the same bytes,
  and ``decode`` accepts nothing else — no trailing bytes, no short fields,
  no unknown version, no counts above the limits below (checked *before*
  anything is allocated, so a hostile length cannot make us reserve memory).
* The header is cleartext on purpose: a key-less node (the cloud node) walks
  commit graphs through ``refs`` and archives bodies it cannot open. It learns
  the graph's shape and sizes, never names or content.
* This module knows bytes only; it never imports pcloud, and never opens a
  body. Verifying a body is the job of whoever holds the key.

Limits: ``MAX_REFS`` (262144 refs: a 64 GiB file at 256 KiB average chunks;
an 8 MiB header) and ``MAX_BODY`` (16 MiB; chunks are at most 1 MiB and the
manifest of MAX_REFS chunks encodes to ~11 MiB).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from replication.errors import MalformedEnvelope

MAGIC = b"PCE1"
VERSION = 1
ID_BYTES = 32
TAG_BYTES = 16
MAX_REFS = 1 << 18
MAX_BODY = 16 << 20

_FIXED = struct.Struct(">4sBBI32sI")  # magic, version, kind, epoch, id, n_refs
_U32 = struct.Struct(">I")
FIXED_BYTES = _FIXED.size  # 46
MIN_ENVELOPE = FIXED_BYTES + 4 + TAG_BYTES


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sealed object: cleartext header fields plus the opaque AEAD body."""

    kind: int
    """Object kind number (chunk, blob, tree, ...), opaque to this layer."""
    object_id: bytes
    """32-byte keyed id of the plaintext."""
    epoch: int
    """Vault-key epoch the body is sealed under."""
    refs: tuple[bytes, ...]
    """Ids of the objects this one references, 32 bytes each."""
    body: bytes
    """AEAD ciphertext including its tag."""

    def __post_init__(self) -> None:
        if not 1 <= self.kind <= 255:
            raise MalformedEnvelope(f"kind {self.kind} out of range 1..255")
        if not 0 <= self.epoch <= 0xFFFFFFFF:
            raise MalformedEnvelope(f"epoch {self.epoch} out of range")
        if len(self.object_id) != ID_BYTES:
            raise MalformedEnvelope("object id must be 32 bytes")
        if len(self.refs) > MAX_REFS:
            raise MalformedEnvelope(f"{len(self.refs)} refs exceed the limit of {MAX_REFS}")
        if any(len(r) != ID_BYTES for r in self.refs):
            raise MalformedEnvelope("every ref must be 32 bytes")
        if not TAG_BYTES <= len(self.body) <= MAX_BODY:
            raise MalformedEnvelope(f"body of {len(self.body)} bytes outside {TAG_BYTES}..{MAX_BODY}")

    @property
    def header_bytes(self) -> bytes:
        """The cleartext header, exactly as on the wire: the AEAD's associated data."""
        return header_bytes(self.kind, self.object_id, self.epoch, self.refs, len(self.body))

    def encode(self) -> bytes:
        return self.header_bytes + self.body


def header_bytes(kind: int, object_id: bytes, epoch: int, refs: tuple[bytes, ...] | list[bytes], body_len: int) -> bytes:
    """Build the header for a body of ``body_len`` bytes (call before sealing: it is the AAD)."""
    if len(refs) > MAX_REFS:
        raise MalformedEnvelope(f"{len(refs)} refs exceed the limit of {MAX_REFS}")
    if not TAG_BYTES <= body_len <= MAX_BODY:
        raise MalformedEnvelope(f"body of {body_len} bytes outside {TAG_BYTES}..{MAX_BODY}")
    try:
        fixed = _FIXED.pack(MAGIC, VERSION, kind, epoch, object_id, len(refs))
    except struct.error as exc:
        raise MalformedEnvelope(f"header field out of range: {exc}") from None
    if len(object_id) != ID_BYTES or any(len(r) != ID_BYTES for r in refs):
        raise MalformedEnvelope("ids must be 32 bytes")
    return b"".join((fixed, *refs, _U32.pack(body_len)))


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed header without its body (what a graph walk needs)."""

    kind: int
    object_id: bytes
    epoch: int
    refs: tuple[bytes, ...]
    body_len: int
    header_len: int
    """Bytes the header occupies; the body starts here."""


def header_length(prefix: bytes | memoryview) -> int:
    """Bytes the header occupies, from its first FIXED_BYTES bytes (to know how much more to read)."""
    if len(prefix) < FIXED_BYTES:
        raise MalformedEnvelope(f"envelope truncated: {len(prefix)} bytes is shorter than a header")
    n_refs = _FIXED.unpack_from(prefix, 0)[5]
    if n_refs > MAX_REFS:
        raise MalformedEnvelope(f"{n_refs} refs exceed the limit of {MAX_REFS}")
    return FIXED_BYTES + ID_BYTES * n_refs + 4


def decode_header(data: bytes | memoryview) -> Header:
    """Parse the header at the start of ``data`` (which may hold more bytes after it).

    Raises MalformedEnvelope if the header is truncated or any field is out of
    range; never reads past the header.
    """
    mv = memoryview(data)
    if len(mv) < FIXED_BYTES:
        raise MalformedEnvelope(f"envelope truncated: {len(mv)} bytes is shorter than a header")
    magic, version, kind, epoch, oid, n_refs = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise MalformedEnvelope("not a pcloud envelope (bad magic)")
    if version != VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {version}")
    if kind == 0:
        raise MalformedEnvelope("kind 0 is invalid")
    if n_refs > MAX_REFS:
        raise MalformedEnvelope(f"{n_refs} refs exceed the limit of {MAX_REFS}")
    refs_end = FIXED_BYTES + ID_BYTES * n_refs
    if len(mv) < refs_end + 4:
        raise MalformedEnvelope("envelope truncated inside its refs")
    refs = tuple(bytes(mv[i:i + ID_BYTES]) for i in range(FIXED_BYTES, refs_end, ID_BYTES))
    (body_len,) = _U32.unpack_from(mv, refs_end)
    if not TAG_BYTES <= body_len <= MAX_BODY:
        raise MalformedEnvelope(f"body length {body_len} outside {TAG_BYTES}..{MAX_BODY}")
    return Header(kind, bytes(oid), epoch, refs, body_len, refs_end + 4)


def decode(data: bytes | memoryview) -> Envelope:
    """Parse one whole envelope; raises MalformedEnvelope on anything but an exact encoding."""
    h = decode_header(data)
    total = h.header_len + h.body_len
    if len(data) != total:
        what = "truncated" if len(data) < total else f"followed by {len(data) - total} trailing bytes"
        raise MalformedEnvelope(f"envelope {what} (expected {total} bytes, got {len(data)})")
    return Envelope(h.kind, h.object_id, h.epoch, h.refs, bytes(memoryview(data)[h.header_len:]))


def envelope_length(header: Header) -> int:
    """Total bytes of the envelope whose header this is."""
    return header.header_len + header.body_len


__all__ = [
    "Envelope", "Header", "decode", "decode_header", "header_bytes", "header_length", "envelope_length",
    "MAGIC", "VERSION", "MAX_REFS", "MAX_BODY", "ID_BYTES", "TAG_BYTES", "MIN_ENVELOPE",
]
