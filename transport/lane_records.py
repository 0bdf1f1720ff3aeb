"""The bulk lane's record protection: AES-256-GCM records keyed through the QUIC session (sans-I/O).

Why not TLS on the TCP connection (as before): the two devices already hold an
authenticated, encrypted QUIC session with pinned device keys; a second
handshake there only re-proves the same identities, and the stdlib ``ssl``
module's OpenSSL (3.0 on Debian 12) and asyncio's ``sslproto`` cost more CPU
than everything else in a bulk transfer but the disk: a 256 MiB two-device
sync spent ~0.27 s of ~2 s CPU in TLS (bench_sync --big-only, lane with TLS
against the lane with no protection at all). The session hands out a fresh
random key instead, as QUIC and WireGuard derive their data-channel keys from
their handshakes, and the records are sealed with the ``cryptography``
package's AES-GCM (~8 GB/s here).

Theory of operation:
- The server makes a fresh 32-byte lane secret per offer and sends it with the
  lane id over the session (`transport.lane`). Nobody else can read it: the
  session is TLS 1.3 between the two pinned device keys. Both sides derive one
  key per direction with HKDF-SHA256 (``LaneKeys``), so a record can never be
  reflected back to its sender.
- A record is ``length:u32 | ciphertext || tag``; the length (of ciphertext and
  tag) is the associated data and the 96-bit nonce is the record's number in
  its direction (0, 1, 2, ...), so a dropped, repeated, reordered, truncated
  or altered record fails authentication and the lane ends.
- The plaintext of the records, concatenated, is the lane's frame stream
  (transport.lane_framing); records and frames are cut independently.
- The first record each way is the HELLO frame. A side attaches the lane only
  after the peer's HELLO opened: it proves the peer holds the secret (the
  server learns the client's identity this way, the client the server's).

Invariants:
- ``RecordOpener`` never holds more than one record (MAX_RECORD + overhead)
  of unopened bytes, in one fixed buffer of ~1.3 MiB; a length over MAX_RECORD
  is refused from the header, before its body is buffered.
- After ``RecordOpener`` raised once it keeps raising: the lane must end.
- A secret is used for one TCP connection only (the lane id is one-time), so a
  nonce never repeats under a key.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from transport.errors import RemoteProtocolError

SECRET_SIZE = 32
TAG_SIZE = 16
LENGTH = struct.Struct(">I")
MAX_RECORD = 1 << 20
"""Largest plaintext of one record (a DATA frame is at most 256 KiB plus its header)."""
_NONCE = struct.Struct(">4xQ")
_MIN_FREE = 256 * 1024
"""Room offered to each socket read (asyncio reads up to 256 KiB at a time)."""
_BUFFER = LENGTH.size + MAX_RECORD + TAG_SIZE + _MIN_FREE
"""Receive buffer: one whole record plus one read always fit."""
_INFO_C2S = b"pcloud lane v2 client to server"
_INFO_S2C = b"pcloud lane v2 server to client"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class LaneKeys:
    """The two direction keys of one lane, seen from one side."""

    send: bytes = field(repr=False)
    receive: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes, is_client: bool) -> LaneKeys:
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"a lane secret is {SECRET_SIZE} bytes")
        c2s, s2c = _derive(secret, _INFO_C2S), _derive(secret, _INFO_S2C)
        return cls(c2s, s2c) if is_client else cls(s2c, c2s)


def record_length(buf: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """Bytes of ciphertext and tag the record whose length field starts at ``pos`` announces;
    RemoteProtocolError past the limit (judged before any of the body is buffered)."""
    (length,) = LENGTH.unpack_from(buf, pos)
    if not TAG_SIZE <= length <= MAX_RECORD + TAG_SIZE:
        raise RemoteProtocolError(f"lane record of {length} bytes (limit {MAX_RECORD + TAG_SIZE})")
    return int(length)


class RecordSealer:
    """Turns plaintext into sealed records for one direction."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._number = 0

    def seal(self, *parts: bytes | memoryview) -> list[bytearray]:
        """Whole records (length, ciphertext and tag in one buffer each, ready to write) carrying ``parts``
        concatenated: one record unless more than MAX_RECORD bytes."""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        out: list[bytearray] = []
        view = memoryview(data)
        for start in range(0, max(len(view), 1), MAX_RECORD):
            piece = view[start:start + MAX_RECORD]
            record = bytearray(LENGTH.size + len(piece) + TAG_SIZE)
            LENGTH.pack_into(record, 0, len(piece) + TAG_SIZE)
            with memoryview(record) as body:
                self._aead.encrypt_into(_NONCE.pack(self._number), piece, body[:LENGTH.size],
                                        body[LENGTH.size:])
            self._number += 1
            out.append(record)
        return out


class RecordOpener:
    """Opens the received byte stream of one direction into the plaintext of whole records.

    Two ways in: ``feed(bytes)``, or ``get_buffer()`` / ``buffer_updated(n)`` for an I/O layer that
    reads straight into the opener's buffer (asyncio.BufferedProtocol): then every received byte is
    copied once, by the kernel, and opened in place.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._number = 0
        self._buf = bytearray(_BUFFER)
        self._start = 0  # unopened bytes are _buf[_start:_end]
        self._end = 0
        self._need = 0  # body bytes of the record whose header was read (0: reading a header)
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet opened (at most one record and its header)."""
        return self._end - self._start

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go (at least _MIN_FREE bytes); call ``buffer_updated`` after."""
        if self._broken is not None:
            raise self._broken
        if len(self._buf) - self._end < _MIN_FREE:
            # Move the unfinished record to the front (< one record: the rest was opened already).
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start:self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, n: int) -> list[bytes]:
        """``n`` bytes were written at ``get_buffer()``: the plaintexts of the records they complete."""
        if self._broken is not None:
            raise self._broken
        self._end += n
        out: list[bytes] = []
        try:
            with memoryview(self._buf) as view:
                self._start = self._open_records(view, self._start, self._end, out)
        except RemoteProtocolError as exc:
            self._broken = exc
            self._start = self._end = 0
            raise
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Plaintexts of the records completed by ``data``, in order; RemoteProtocolError on any bad record."""
        out: list[bytes] = []
        view = memoryview(data)
        while True:
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            room.release()
            out += self.buffer_updated(n)
            view = view[n:]
            if not view:
                return out

    def _open_records(self, view: memoryview, pos: int, end: int, out: list[bytes]) -> int:
        """Open every whole record in ``view[pos:end]``, appending plaintexts to ``out``; returns the new pos."""
        while True:
            if not self._need:
                if end - pos < LENGTH.size:
                    return pos
                self._need = record_length(view, pos)
                pos += LENGTH.size
            if end - pos < self._need:
                return pos
            try:
                out.append(self._aead.decrypt(_NONCE.pack(self._number), view[pos:pos + self._need],
                                              LENGTH.pack(self._need)))
            except InvalidTag:
                raise RemoteProtocolError("lane record failed authentication (wrong key, or altered, "
                                          "dropped or reordered bytes)") from None
            self._number += 1
            pos += self._need
            self._need = 0


__all__ = ["LaneKeys", "RecordSealer", "RecordOpener", "record_length", "SECRET_SIZE", "MAX_RECORD", "TAG_SIZE"]
