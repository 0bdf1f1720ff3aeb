"""pcloud control datagrams: rendezvous, hole punching and relay framing.

Wire rules
----------
* A control datagram's first byte is its message type, always in 0x00-0x3F;
  QUIC owns 0x40-0xFF (RFC 9443 demultiplexing), so one UDP socket carries
  both. Byte 1 is the protocol version (``VERSION``); a datagram of another
  version is rejected, never guessed at.
* Every field has a fixed size or a one-byte length with a per-field limit,
  and a datagram is at most ``MAX_DATAGRAM`` bytes. Decoders consume the whole
  datagram: trailing bytes are an error. Anything malformed raises
  ``RemoteProtocolError`` (``MessageTooLarge`` for size limits); the caller
  drops the datagram and the node goes on.
* Devices are named on the wire by their 32-byte Ed25519 public key, or inside
  RELAY_DATA by an 8-byte ``short_id`` (keyed BLAKE2b of the key) to keep the
  per-packet overhead at 10 bytes.

Authentication (what each message proves)
-----------------------------------------
* HELLO -> CHALLENGE: the server answers with a stateless cookie bound to the
  source address and a time bucket, and the address it saw (reflexive).
* REGISTER signs ``cookie || key || scope_id || candidates`` with the device
  key (proves the key and the address) and carries ``scope_proof``, a MAC of
  the cookie and key under the vault scope secret (proves membership without
  sending the secret). Replayed from another address, the cookie fails.
* PUNCH / PUNCH_ACK are signed by the sender over both keys, the rendezvous
  token and the nonce; a path counts only once a PUNCH_ACK echoing our own
  fresh nonce arrives, so a stranger cannot plant a path.
* RELAY_DATA payloads are QUIC datagrams: ciphertext the relay cannot read.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable, Union

from transport.errors import MessageTooLarge, RemoteProtocolError

VERSION = 1
MAX_DATAGRAM = 1600          # relay frame of a full-size QUIC datagram fits
MAX_RELAY_PAYLOAD = MAX_DATAGRAM - 10
MAX_CANDIDATES = 8
MAX_ERROR_TEXT = 200
KEY_BYTES = 32
SIG_BYTES = 64
COOKIE_BYTES = 32
SHORT_ID_BYTES = 8
SCOPE_ID_BYTES = 8
SCOPE_PROOF_BYTES = 16
TOKEN_BYTES = 16
NONCE_BYTES = 16
HELLO_SIZE = 64

Addr = tuple[str, int]


class MsgType(enum.IntEnum):
    HELLO = 0x01
    CHALLENGE = 0x02
    REGISTER = 0x03
    REGISTERED = 0x04
    KEEPALIVE = 0x05
    KEEPALIVE_ACK = 0x06
    PEER_REQUEST = 0x07
    CANDIDATES = 0x08
    PUNCH = 0x09
    PUNCH_ACK = 0x0A
    RELAY_DATA = 0x0B
    ERROR = 0x0C


class ErrorCode(enum.IntEnum):
    """The closed set of error codes on the wire; details stay in local logs."""

    MALFORMED = 1          # the server could not decode our datagram
    NOT_REGISTERED = 2     # register (again) first, e.g. after an address change
    AUTH_FAILED = 3        # bad signature, stale cookie
    UNKNOWN_SCOPE = 4      # the relay does not serve this vault / device
    UNKNOWN_PEER = 5       # the requested peer is not registered in our scope
    RATE_LIMITED = 6       # slow down
    SERVER_FULL = 7        # registration table at its bound


class CandidateKind(enum.IntEnum):
    LAN = 1        # an address of the device's own interfaces
    REFLEXIVE = 2  # the address the rendezvous server saw (outside the NAT)


def is_control(data: bytes) -> bool:
    """True when the datagram belongs to this protocol, not to QUIC (RFC 9443)."""
    return len(data) > 0 and data[0] < 0x40


def short_id(key: bytes) -> bytes:
    """The 8-byte name of a device key inside relay frames."""
    return hashlib.blake2b(key, digest_size=SHORT_ID_BYTES, person=b"pcloud-shortid").digest()


def scope_id(scope_secret: bytes) -> bytes:
    """Public name of a vault scope; the relay config lists the secrets, devices send this id."""
    return hashlib.blake2b(scope_secret, digest_size=SCOPE_ID_BYTES, person=b"pcloud-scopeid").digest()


def scope_proof(scope_secret: bytes, cookie: bytes, key: bytes) -> bytes:
    """MAC proving the device knows the scope secret, bound to this cookie and key."""
    return hmac.new(scope_secret, b"pcloud/scope/v1" + cookie + key, hashlib.sha256).digest()[:SCOPE_PROOF_BYTES]


# ------------------------------------------------------------------ messages
@dataclass(frozen=True)
class Candidate:
    """One address a peer may be reached at."""

    kind: CandidateKind
    addr: Addr


@dataclass(frozen=True)
class Hello:
    """Client asks for a cookie; also a NAT probe (the reply says what address the server saw).

    Padded to ``HELLO_SIZE`` so the CHALLENGE answer is never larger than the
    request: the server cannot be used to amplify a spoofed-source flood.
    """


@dataclass(frozen=True)
class Challenge:
    cookie: bytes
    observed: Addr  # the sender's address as the server saw it


@dataclass(frozen=True)
class Register:
    key: bytes
    scope_id: bytes
    scope_proof: bytes
    cookie: bytes
    candidates: tuple[Candidate, ...]
    signature: bytes

    def signed_bytes(self) -> bytes:
        return register_signed_bytes(self.cookie, self.key, self.scope_id, self.candidates)


@dataclass(frozen=True)
class Registered:
    reflexive: Addr
    keepalive_s: int  # how often the client must send KEEPALIVE
    expiry_s: int     # registration lifetime without keepalives


@dataclass(frozen=True)
class Keepalive:
    short_id: bytes


@dataclass(frozen=True)
class KeepaliveAck:
    observed: Addr


@dataclass(frozen=True)
class PeerRequest:
    peer_key: bytes
    request_id: int


@dataclass(frozen=True)
class Candidates:
    """Sent by the server to both ends of a PEER_REQUEST: the other side's addresses."""

    peer_key: bytes
    request_id: int
    token: bytes      # same random token to both: binds the punches to this exchange
    initiator: bool   # True at the side that asked
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Punch:
    sender: bytes
    receiver: bytes
    token: bytes
    nonce: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        return punch_signed_bytes(MsgType.PUNCH, self.sender, self.receiver, self.token, self.nonce)


@dataclass(frozen=True)
class PunchAck:
    sender: bytes
    receiver: bytes
    token: bytes
    nonce: bytes  # echo of the PUNCH nonce being acknowledged
    signature: bytes

    def signed_bytes(self) -> bytes:
        return punch_signed_bytes(MsgType.PUNCH_ACK, self.sender, self.receiver, self.token, self.nonce)


@dataclass(frozen=True)
class RelayData:
    """Client->server: ``peer`` is the destination; server->client: the source."""

    peer: bytes  # short id
    payload: bytes


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    text: str = ""


Message = Union[Hello, Challenge, Register, Registered, Keepalive, KeepaliveAck, PeerRequest,
                Candidates, Punch, PunchAck, RelayData, Error]


def register_signed_bytes(cookie: bytes, key: bytes, scope: bytes, candidates: tuple[Candidate, ...]) -> bytes:
    return b"pcloud/register/v1" + cookie + key + scope + _enc_candidates(candidates)


def punch_signed_bytes(kind: int, sender: bytes, receiver: bytes, token: bytes, nonce: bytes) -> bytes:
    return b"pcloud/punch/v1" + bytes([kind]) + sender + receiver + token + nonce


# ------------------------------------------------------------------ encoding
def _enc_addr(addr: Addr) -> bytes:
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError as exc:
        raise ValueError(f"not an IP address: {addr[0]!r}") from exc
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return bytes([ip.version]) + ip.packed + struct.pack("!H", port)


def _enc_candidates(cands: tuple[Candidate, ...]) -> bytes:
    if len(cands) > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates")
    return bytes([len(cands)]) + b"".join(bytes([int(c.kind)]) + _enc_addr(c.addr) for c in cands)


def encode(msg: Message) -> bytes:
    """Serialize a message; raises ValueError for a message we may not send."""
    out: bytes
    if isinstance(msg, Hello):
        out = _hdr(MsgType.HELLO) + bytes(HELLO_SIZE - 2)
    elif isinstance(msg, Challenge):
        out = _hdr(MsgType.CHALLENGE) + _fixed(msg.cookie, COOKIE_BYTES) + _enc_addr(msg.observed)
    elif isinstance(msg, Register):
        out = (_hdr(MsgType.REGISTER) + _fixed(msg.key, KEY_BYTES) + _fixed(msg.scope_id, SCOPE_ID_BYTES)
               + _fixed(msg.scope_proof, SCOPE_PROOF_BYTES) + _fixed(msg.cookie, COOKIE_BYTES)
               + _enc_candidates(msg.candidates) + _fixed(msg.signature, SIG_BYTES))
    elif isinstance(msg, Registered):
        out = _hdr(MsgType.REGISTERED) + _enc_addr(msg.reflexive) + struct.pack("!HH", msg.keepalive_s, msg.expiry_s)
    elif isinstance(msg, Keepalive):
        out = _hdr(MsgType.KEEPALIVE) + _fixed(msg.short_id, SHORT_ID_BYTES)
    elif isinstance(msg, KeepaliveAck):
        out = _hdr(MsgType.KEEPALIVE_ACK) + _enc_addr(msg.observed)
    elif isinstance(msg, PeerRequest):
        out = _hdr(MsgType.PEER_REQUEST) + _fixed(msg.peer_key, KEY_BYTES) + struct.pack("!I", msg.request_id)
    elif isinstance(msg, Candidates):
        out = (_hdr(MsgType.CANDIDATES) + _fixed(msg.peer_key, KEY_BYTES) + struct.pack("!I", msg.request_id)
               + _fixed(msg.token, TOKEN_BYTES) + bytes([1 if msg.initiator else 0])
               + _enc_candidates(msg.candidates))
    elif isinstance(msg, (Punch, PunchAck)):
        kind = MsgType.PUNCH if isinstance(msg, Punch) else MsgType.PUNCH_ACK
        out = (_hdr(kind) + _fixed(msg.sender, KEY_BYTES) + _fixed(msg.receiver, KEY_BYTES)
               + _fixed(msg.token, TOKEN_BYTES) + _fixed(msg.nonce, NONCE_BYTES) + _fixed(msg.signature, SIG_BYTES))
    elif isinstance(msg, RelayData):
        if len(msg.payload) > MAX_RELAY_PAYLOAD:
            raise ValueError(f"relay payload of {len(msg.payload)} bytes > {MAX_RELAY_PAYLOAD}")
        out = _hdr(MsgType.RELAY_DATA) + _fixed(msg.peer, SHORT_ID_BYTES) + msg.payload
    elif isinstance(msg, Error):
        text = msg.text.encode("utf-8")[:MAX_ERROR_TEXT]
        out = _hdr(MsgType.ERROR) + bytes([int(msg.code), len(text)]) + text
    else:
        raise TypeError(f"not a control message: {msg!r}")
    return out


def _hdr(t: MsgType) -> bytes:
    return bytes([int(t), VERSION])


def _fixed(value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"field must be {size} bytes, got {len(value)}")
    return bytes(value)


# ------------------------------------------------------------------ decoding
class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise RemoteProtocolError(f"control datagram truncated in {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("!H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("!I", self.take(4, what))[0]

    def addr(self, what: str) -> Addr:
        family = self.u8(what)
        if family == 4:
            ip = str(ipaddress.IPv4Address(self.take(4, what)))
        elif family == 6:
            ip = str(ipaddress.IPv6Address(self.take(16, what)))
        else:
            raise RemoteProtocolError(f"bad address family {family} in {what}")
        return (ip, self.u16(what))

    def candidates(self) -> tuple[Candidate, ...]:
        n = self.u8("candidate count")
        if n > MAX_CANDIDATES:
            raise MessageTooLarge(f"{n} candidates > {MAX_CANDIDATES}")
        out = []
        for _ in range(n):
            k = self.u8("candidate kind")
            try:
                kind = CandidateKind(k)
            except ValueError as exc:
                raise RemoteProtocolError(f"unknown candidate kind {k}") from exc
            out.append(Candidate(kind, self.addr("candidate")))
        return tuple(out)

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise RemoteProtocolError(f"{len(self.data) - self.pos} trailing bytes in control datagram")


def _d_hello(r: _Reader) -> Message:
    if len(r.data) != HELLO_SIZE:
        raise RemoteProtocolError(f"HELLO must be padded to {HELLO_SIZE} bytes, got {len(r.data)}")
    if any(r.rest()):
        raise RemoteProtocolError("HELLO padding must be zero bytes")
    return Hello()


def _d_challenge(r: _Reader) -> Message:
    return Challenge(r.take(COOKIE_BYTES, "cookie"), r.addr("observed"))


def _d_register(r: _Reader) -> Message:
    return Register(key=r.take(KEY_BYTES, "key"), scope_id=r.take(SCOPE_ID_BYTES, "scope id"),
                    scope_proof=r.take(SCOPE_PROOF_BYTES, "scope proof"), cookie=r.take(COOKIE_BYTES, "cookie"),
                    candidates=r.candidates(), signature=r.take(SIG_BYTES, "signature"))


def _d_registered(r: _Reader) -> Message:
    return Registered(r.addr("reflexive"), r.u16("keepalive"), r.u16("expiry"))


def _d_keepalive(r: _Reader) -> Message:
    return Keepalive(r.take(SHORT_ID_BYTES, "short id"))


def _d_keepalive_ack(r: _Reader) -> Message:
    return KeepaliveAck(r.addr("observed"))


def _d_peer_request(r: _Reader) -> Message:
    return PeerRequest(r.take(KEY_BYTES, "peer key"), r.u32("request id"))


def _d_candidates(r: _Reader) -> Message:
    key = r.take(KEY_BYTES, "peer key")
    rid = r.u32("request id")
    token = r.take(TOKEN_BYTES, "token")
    flag = r.u8("initiator")
    if flag > 1:
        raise RemoteProtocolError(f"bad initiator flag {flag}")
    return Candidates(key, rid, token, bool(flag), r.candidates())


def _d_punch(r: _Reader) -> Message:
    return Punch(r.take(KEY_BYTES, "sender"), r.take(KEY_BYTES, "receiver"), r.take(TOKEN_BYTES, "token"),
                 r.take(NONCE_BYTES, "nonce"), r.take(SIG_BYTES, "signature"))


def _d_punch_ack(r: _Reader) -> Message:
    return PunchAck(r.take(KEY_BYTES, "sender"), r.take(KEY_BYTES, "receiver"), r.take(TOKEN_BYTES, "token"),
                    r.take(NONCE_BYTES, "nonce"), r.take(SIG_BYTES, "signature"))


def _d_relay(r: _Reader) -> Message:
    peer = r.take(SHORT_ID_BYTES, "peer")
    payload = r.rest()
    if not payload:
        raise RemoteProtocolError("empty relay payload")
    return RelayData(peer, payload)


def _d_error(r: _Reader) -> Message:
    c = r.u8("error code")
    try:
        code = ErrorCode(c)
    except ValueError as exc:
        raise RemoteProtocolError(f"unknown error code {c}") from exc
    n = r.u8("error text length")
    if n > MAX_ERROR_TEXT:
        raise MessageTooLarge(f"error text of {n} bytes > {MAX_ERROR_TEXT}")
    raw = r.take(n, "error text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("error text is not UTF-8") from exc
    return Error(code, text)


# Rule as data: message type -> decoder.
_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    MsgType.HELLO: _d_hello, MsgType.CHALLENGE: _d_challenge, MsgType.REGISTER: _d_register,
    MsgType.REGISTERED: _d_registered, MsgType.KEEPALIVE: _d_keepalive, MsgType.KEEPALIVE_ACK: _d_keepalive_ack,
    MsgType.PEER_REQUEST: _d_peer_request, MsgType.CANDIDATES: _d_candidates, MsgType.PUNCH: _d_punch,
    MsgType.PUNCH_ACK: _d_punch_ack, MsgType.RELAY_DATA: _d_relay, MsgType.ERROR: _d_error,
}


def decode(data: bytes) -> Message:
    """Parse one control datagram; raises RemoteProtocolError (or MessageTooLarge) on anything malformed."""
    if len(data) > MAX_DATAGRAM:
        raise MessageTooLarge(f"control datagram of {len(data)} bytes > {MAX_DATAGRAM}")
    if len(data) < 2:
        raise RemoteProtocolError("control datagram shorter than its header")
    if not is_control(data):
        raise RemoteProtocolError(f"type byte 0x{data[0]:02x} is not a control message")
    if data[1] != VERSION:
        raise RemoteProtocolError(f"control protocol version {data[1]} unsupported (we speak {VERSION})")
    dec = _DECODERS.get(data[0])
    if dec is None:
        raise RemoteProtocolError(f"unknown control message type 0x{data[0]:02x}")
    r = _Reader(bytes(data))
    r.pos = 2
    msg = dec(r)
    r.end()
    return msg
