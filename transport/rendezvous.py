"""Rendezvous and hole punching: sans-I/O client and server cores.

Theory of operation
-------------------
Client (one per device, ``RendezvousClient``):
  1. HELLO to the server -> CHALLENGE(cookie, observed address). A HELLO to
     the server's second address (if configured) tells whether our NAT keeps
     the same mapping per destination (cone) or not (symmetric).
  2. REGISTER (signed, with the scope proof and our LAN candidates) ->
     REGISTERED(reflexive address). Re-sent every second until answered.
  3. KEEPALIVE every ``keepalive_s`` holds the NAT mapping; the ACK says the
     address the server sees. If that address changes (we moved, the NAT
     rebinds) or the server forgot us (ERROR NOT_REGISTERED), we register
     again. Three unanswered keepalives: registration lost, start over.
  4. ``request_peer(key)`` -> the server sends CANDIDATES to both ends with
     one token; both punch every ``PUNCH_INTERVAL`` to every candidate at once.
     A PUNCH from an expected peer is answered by a PUNCH_ACK to its source;
     a PUNCH_ACK echoing our nonce confirms that address: ``PunchSucceeded``.
     No ack within ``PUNCH_TIMEOUT``: ``PunchFailed``.

Server (``RendezvousServer``; the relay's forwarding lives here too, because a
relay frame is only valid between registrations it holds):
  * Invariant: every registration proved its device key (signature over a
    cookie bound to its source address) and its vault scope (MAC under the
    scope secret); forwarding and candidate exchange happen only between
    registrations of the same scope.
  * Memory is bounded: at most ``max_registrations`` registrations, at most
    ``max_sources`` rate-limit buckets for unregistered sources; no queues
    (a datagram is forwarded at once or dropped).
  * Every reply to an unregistered source is no larger than its request
    (HELLO is padded), so the server amplifies nothing.

Both cores own no socket and read no clock: ``now`` comes in, datagrams come
out through ``datagrams_to_send()`` and events through ``next_event()``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from transport import control as c
from transport.control import Addr, Candidate, CandidateKind
from transport.errors import RemoteProtocolError

REGISTER_RETRY = 1.0        # s between HELLO/REGISTER attempts
KEEPALIVE_DEFAULT = 10      # s; Linux conntrack forgets idle UDP after 30 s
EXPIRY_DEFAULT = 45         # s a registration lives without keepalives
PUNCH_INTERVAL = 0.05       # s between punch rounds
PUNCH_TIMEOUT = 3.0         # s before a punch attempt is declared failed
PEER_REQUEST_RETRY = 0.5    # s
COOKIE_BUCKET = 30          # s; a cookie is valid in its bucket and the next


class Signer(Protocol):
    """A device's Ed25519 key, as the cores need it."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class NaclSigner:
    """Signer over a PyNaCl SigningKey (or a 32-byte seed)."""

    def __init__(self, key: SigningKey | bytes) -> None:
        self._sk = key if isinstance(key, SigningKey) else SigningKey(key)
        self.public_key = bytes(self._sk.verify_key)

    def sign(self, data: bytes) -> bytes:
        return self._sk.sign(data).signature


def verify(key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(key).verify(data, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class Registered:
    """The server accepted our registration."""

    server: Addr  #: the server address we registered with
    reflexive: Addr  #: our address as the server sees it (outside our NAT)


@dataclass(frozen=True)
class RegistrationLost:
    """Keepalives went unanswered or the server refused us; registering again."""

    reason: str  #: why, for the log


@dataclass(frozen=True)
class NatDetected:
    """Our NAT's mapping behaviour, from the two server addresses."""

    symmetric: bool  #: True: a new port per destination, punching will not work


@dataclass(frozen=True)
class CandidatesReceived:
    """The server gave us a peer's addresses; punching has started."""

    peer: bytes  #: the peer's device key
    candidates: tuple[Candidate, ...]  #: its addresses


@dataclass(frozen=True)
class PunchSucceeded:
    """A direct path to the peer is open (our nonce came back, signed by it)."""

    peer: bytes  #: the peer's device key
    addr: Addr  #: the address that answered


@dataclass(frozen=True)
class PunchFailed:
    """No direct path within the punch timeout."""

    peer: bytes  #: the peer's device key


@dataclass(frozen=True)
class PeerUnknown:
    """The server does not know the peer (not registered, or not in our scope)."""

    peer: bytes  #: the peer's device key


@dataclass(frozen=True)
class RelayedDatagram:
    """A datagram a peer sent us through the relay."""

    peer_short: bytes  #: the sender's short id
    payload: bytes  #: the QUIC datagram


@dataclass(frozen=True)
class ServerError:
    """The server answered with an error we do not handle ourselves."""

    code: c.ErrorCode  #: wire code
    text: str  #: server's explanation


ClientEvent = (Registered | RegistrationLost | NatDetected | CandidatesReceived | PunchSucceeded | PunchFailed
               | PeerUnknown | RelayedDatagram | ServerError)


@dataclass
class _Punch:
    peer: bytes
    token: bytes
    nonce: bytes
    targets: list[Addr]
    deadline: float
    next_send: float
    message: bytes


# ------------------------------------------------------------------ client
class RendezvousClient:
    """Device side: registration, keepalive, candidate exchange and punching.

    ``servers``: the rendezvous address, optionally followed by the same
    server's second address (used only for NAT type detection).
    ``peers``: device keys we accept PUNCHes from (the set is live: the caller
    may add keys later). ``lan``: our own LAN addresses to advertise.
    """

    def __init__(self, signer: Signer, scope_secret: bytes, servers: list[Addr],
                 peers: set[bytes], lan: Iterable[Addr] = ()) -> None:
        if not servers:
            raise ValueError("a rendezvous client needs a server address")
        self.signer = signer
        self.key = signer.public_key
        self.short = c.short_id(self.key)
        self.scope_secret = scope_secret
        self.scope_id = c.scope_id(scope_secret)
        self.server = servers[0]
        self.probe_server = servers[1] if len(servers) > 1 else None
        self.peers = peers
        self.lan = tuple(lan)
        self.reflexive: Optional[Addr] = None
        self.registered = False
        self.symmetric_nat: Optional[bool] = None
        self._keepalive_s = KEEPALIVE_DEFAULT
        self._next_hello: Optional[float] = None
        self._next_keepalive: Optional[float] = None
        self._unanswered = 0
        self._probe_seen: Optional[Addr] = None
        self._main_seen: Optional[Addr] = None
        self._requests: dict[int, tuple[bytes, float, int]] = {}  # rid -> (peer, next retry, tries)
        self._next_rid = 1
        self._punches: dict[bytes, _Punch] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[ClientEvent] = deque()

    # -- API
    def start(self, now: float) -> None:
        """Begin (or restart) registration."""
        self.registered = False
        self._next_keepalive = None
        self._unanswered = 0
        self._send_hello(now)

    def set_lan(self, lan: Iterable[Addr], now: float) -> None:
        """Our LAN addresses changed (e.g. we moved): register again with the new candidates."""
        lan = tuple(lan)
        if lan != self.lan:
            self.lan = lan
            self.start(now)

    def request_peer(self, peer: bytes, now: float) -> None:
        """Ask the server for the peer's candidates; both sides then punch."""
        rid = self._next_rid
        self._next_rid = (self._next_rid % 0xFFFFFFFF) + 1
        self._requests = {r: v for r, v in self._requests.items() if v[0] != peer}
        self._requests[rid] = (peer, now, 0)
        self._flush_requests(now)

    def relay_frame(self, peer_short: bytes, payload: bytes) -> bytes:
        """A RELAY_DATA datagram carrying ``payload`` to the peer; send it to ``self.server``."""
        return c.encode(c.RelayData(peer_short, payload))

    def punching(self, peer: bytes) -> bool:
        return peer in self._punches

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Optional[ClientEvent]:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> Optional[float]:
        times = [t for t in (self._next_hello, self._next_keepalive) if t is not None]
        times += [p.next_send for p in self._punches.values()]
        times += [v[1] for v in self._requests.values()]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._next_hello is not None and now >= self._next_hello:
            self._send_hello(now)
        if self._next_keepalive is not None and now >= self._next_keepalive:
            if self._unanswered >= 3:
                self._events.append(RegistrationLost("3 keepalives unanswered"))
                self.start(now)
            else:
                self._unanswered += 1
                self._out.append((c.encode(c.Keepalive(self.short)), self.server))
                self._next_keepalive = now + self._keepalive_s / 3 if self._unanswered > 1 else \
                    now + self._keepalive_s
        self._flush_requests(now)
        for peer, p in list(self._punches.items()):
            if now >= p.deadline:
                del self._punches[peer]
                self._events.append(PunchFailed(peer))
            elif now >= p.next_send:
                self._out.extend((p.message, t) for t in p.targets)
                p.next_send = now + PUNCH_INTERVAL

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one control datagram. Raises RemoteProtocolError if malformed (caller drops it)."""
        msg = c.decode(data)
        from_server = addr == self.server or addr == self.probe_server
        if isinstance(msg, c.RelayData) and from_server:
            self._events.append(RelayedDatagram(msg.peer, msg.payload))
        elif isinstance(msg, c.Punch):
            self._on_punch(msg, addr)
        elif isinstance(msg, c.PunchAck):
            self._on_punch_ack(msg, addr)
        elif not from_server:
            raise RemoteProtocolError(f"{type(msg).__name__} from {addr}, which is not our rendezvous server")
        elif isinstance(msg, c.Challenge):
            self._on_challenge(msg, addr, now)
        elif isinstance(msg, c.Registered):
            self._on_registered(msg, now)
        elif isinstance(msg, c.KeepaliveAck):
            self._unanswered = 0
            self._next_keepalive = now + self._keepalive_s
            if msg.observed != self.reflexive:
                # our public address changed under us: candidates are stale
                self._events.append(RegistrationLost(f"address changed {self.reflexive} -> {msg.observed}"))
                self.start(now)
        elif isinstance(msg, c.Candidates):
            self._on_candidates(msg, now)
        elif isinstance(msg, c.Error):
            self._on_error(msg, now)
        else:
            raise RemoteProtocolError(f"unexpected {type(msg).__name__} from the server")

    # -- internals
    def _send_hello(self, now: float) -> None:
        hello = c.encode(c.Hello())
        self._out.append((hello, self.server))
        if self.probe_server is not None and self.symmetric_nat is None:
            self._out.append((hello, self.probe_server))
        self._next_hello = now + REGISTER_RETRY

    def _on_challenge(self, msg: c.Challenge, addr: Addr, now: float) -> None:
        if addr == self.probe_server:
            self._probe_seen = msg.observed
        else:
            self._main_seen = msg.observed
            if not self.registered:
                cands = tuple(Candidate(CandidateKind.LAN, a) for a in self.lan[:c.MAX_CANDIDATES - 1])
                sig = self.signer.sign(c.register_signed_bytes(msg.cookie, self.key, self.scope_id, cands))
                reg = c.Register(self.key, self.scope_id, c.scope_proof(self.scope_secret, msg.cookie, self.key),
                                 msg.cookie, cands, sig)
                self._out.append((c.encode(reg), self.server))
        if self.symmetric_nat is None and self._probe_seen and self._main_seen:
            self.symmetric_nat = self._probe_seen != self._main_seen
            self._events.append(NatDetected(self.symmetric_nat))

    def _on_registered(self, msg: c.Registered, now: float) -> None:
        self._next_hello = None
        self._keepalive_s = max(1, msg.keepalive_s)
        self._next_keepalive = now + self._keepalive_s
        self._unanswered = 0
        first = not self.registered or msg.reflexive != self.reflexive
        self.registered = True
        self.reflexive = msg.reflexive
        if first:
            self._events.append(Registered(self.server, msg.reflexive))

    def _on_error(self, msg: c.Error, now: float) -> None:
        if msg.code == c.ErrorCode.NOT_REGISTERED:
            if self.registered:
                self._events.append(RegistrationLost("server: " + (msg.text or "not registered")))
                self.start(now)
        elif msg.code == c.ErrorCode.UNKNOWN_PEER:
            # the text carries no key; every outstanding request for an unknown peer is answered the same way,
            # so the server echoes the key as hex in the text
            try:
                peer = bytes.fromhex(msg.text)
            except ValueError:
                peer = b""
            self._requests = {r: v for r, v in self._requests.items() if v[0] != peer}
            if len(peer) == c.KEY_BYTES:
                self._events.append(PeerUnknown(peer))
        else:
            self._events.append(ServerError(msg.code, msg.text))

    def _flush_requests(self, now: float) -> None:
        if not self.registered:
            return
        for rid, (peer, when, tries) in list(self._requests.items()):
            if now < when:
                continue
            if tries >= 6:
                del self._requests[rid]
                self._events.append(PunchFailed(peer))
                continue
            self._out.append((c.encode(c.PeerRequest(peer, rid)), self.server))
            self._requests[rid] = (peer, now + PEER_REQUEST_RETRY, tries + 1)

    def _on_candidates(self, msg: c.Candidates, now: float) -> None:
        if msg.peer_key not in self.peers:
            return  # the server introduced a device we were not told to talk to
        self._requests = {r: v for r, v in self._requests.items() if v[0] != msg.peer_key}
        old = self._punches.get(msg.peer_key)
        if old is not None and old.token == msg.token:
            return  # duplicate of an exchange already running
        nonce = os.urandom(c.NONCE_BYTES)
        sig = self.signer.sign(c.punch_signed_bytes(c.MsgType.PUNCH, self.key, msg.peer_key, msg.token, nonce))
        wire = c.encode(c.Punch(self.key, msg.peer_key, msg.token, nonce, sig))
        targets = list(dict.fromkeys(cand.addr for cand in msg.candidates))
        self._punches[msg.peer_key] = _Punch(msg.peer_key, msg.token, nonce, targets, now + PUNCH_TIMEOUT, now, wire)
        self._events.append(CandidatesReceived(msg.peer_key, msg.candidates))
        self.handle_timer(now)

    def _on_punch(self, msg: c.Punch, addr: Addr) -> None:
        if msg.receiver != self.key or msg.sender not in self.peers:
            raise RemoteProtocolError(f"PUNCH from {addr} not meant for us or from a device we do not know")
        if not verify(msg.sender, msg.signed_bytes(), msg.signature):
            raise RemoteProtocolError(f"PUNCH from {addr} with a bad signature")
        sig = self.signer.sign(c.punch_signed_bytes(c.MsgType.PUNCH_ACK, self.key, msg.sender, msg.token, msg.nonce))
        self._out.append((c.encode(c.PunchAck(self.key, msg.sender, msg.token, msg.nonce, sig)), addr))

    def _on_punch_ack(self, msg: c.PunchAck, addr: Addr) -> None:
        p = self._punches.get(msg.sender)
        if p is None or msg.receiver != self.key or msg.nonce != p.nonce or msg.token != p.token:
            return  # late or duplicate ack of a finished attempt: harmless
        if not verify(msg.sender, msg.signed_bytes(), msg.signature):
            raise RemoteProtocolError(f"PUNCH_ACK from {addr} with a bad signature")
        del self._punches[msg.sender]
        self._events.append(PunchSucceeded(msg.sender, addr))


# ------------------------------------------------------------------ server
@dataclass
class Scope:
    """A vault the relay serves: its scope secret and, optionally, the only device keys admitted."""

    secret: bytes
    devices: Optional[frozenset[bytes]] = None  # None: any device proving the scope secret


@dataclass
class Registration:
    key: bytes
    short: bytes
    scope: bytes
    addr: Addr
    via: int  # index of the server socket it registered through (replies must leave from it)
    lan: tuple[Candidate, ...]
    expires: float
    tokens: float = 0.0
    token_time: float = 0.0
    relayed_in: int = 0   # bytes this device sent through the relay
    relayed_out: int = 0  # bytes the relay delivered to it
    dropped: int = 0      # relay datagrams dropped by its rate limit


@dataclass
class ServerStats:
    relayed_packets: int = 0
    relayed_bytes: int = 0
    rate_limited: int = 0
    malformed: int = 0
    auth_failed: int = 0


@dataclass
class _Bucket:
    tokens: float
    t: float


class RendezvousServer:
    """Cloud-node side: authenticated registrations, candidate exchange, relay forwarding.

    Datagrams are fed with the index ``via`` of the socket they arrived on and
    come out as (bytes, destination, via) so the glue sends each from the right
    local address.
    """

    def __init__(self, scopes: Iterable[Scope], *, keepalive_s: int = KEEPALIVE_DEFAULT,
                 expiry_s: int = EXPIRY_DEFAULT, max_registrations: int = 4096,
                 relay_rate: float = 64e6, relay_burst: float = 4e6,
                 control_rate: float = 20.0, control_burst: float = 40.0, max_sources: int = 16384) -> None:
        self.scopes = {c.scope_id(s.secret): s for s in scopes}
        self.keepalive_s = keepalive_s
        self.expiry_s = expiry_s
        self.max_registrations = max_registrations
        self.relay_rate, self.relay_burst = relay_rate, relay_burst
        self.control_rate, self.control_burst = control_rate, control_burst
        self.max_sources = max_sources
        self.stats = ServerStats()
        self._secret = os.urandom(32)
        self._by_key: dict[bytes, Registration] = {}
        self._by_addr: dict[tuple[Addr, int], Registration] = {}
        self._by_short: dict[bytes, Registration] = {}
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._out: list[tuple[bytes, Addr, int]] = []

    # -- API
    def registrations(self) -> list[Registration]:
        return list(self._by_key.values())

    def datagrams_to_send(self) -> list[tuple[bytes, Addr, int]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> Optional[float]:
        return min((r.expires for r in self._by_key.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for reg in [r for r in self._by_key.values() if r.expires <= now]:
            self._drop(reg)

    def receive(self, data: bytes, addr: Addr, via: int, now: float) -> None:
        """Feed one datagram from ``addr`` on socket ``via``. Malformed or unauthorised input is dropped
        (answered with an ERROR at most once per rate-limit token); never raises for peer input."""
        reg = self._by_addr.get((addr, via))
        if data and data[0] == c.MsgType.RELAY_DATA and reg is not None:
            # fast path: the bulk of the traffic, checked by registration + rate limit only
            self._relay(reg, data, now)
            return
        if reg is None and not self._allow_source(addr[0], now):
            self.stats.rate_limited += 1
            return
        try:
            msg = c.decode(data)
        except RemoteProtocolError:
            self.stats.malformed += 1
            return  # no answer: never amplify garbage
        if isinstance(msg, c.Hello):
            self._out.append((c.encode(c.Challenge(self._cookie(addr, via, now), addr)), addr, via))
        elif isinstance(msg, c.Register):
            self._on_register(msg, addr, via, now)
        elif reg is None:
            if isinstance(msg, (c.Keepalive, c.PeerRequest, c.RelayData)):
                self._error(c.ErrorCode.NOT_REGISTERED, "", addr, via)
        elif isinstance(msg, c.Keepalive):
            if msg.short_id == reg.short:
                reg.expires = now + self.expiry_s
                self._out.append((c.encode(c.KeepaliveAck(addr)), addr, via))
        elif isinstance(msg, c.PeerRequest):
            self._on_peer_request(reg, msg, now)
        # anything else (CHALLENGE, PUNCH, ...) has no meaning at the server: dropped

    # -- internals
    def _cookie(self, addr: Addr, via: int, now: float, back: int = 0) -> bytes:
        bucket = int(now // COOKIE_BUCKET) - back
        msg = f"{addr[0]}|{addr[1]}|{via}|{bucket}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def _error(self, code: c.ErrorCode, text: str, addr: Addr, via: int) -> None:
        self._out.append((c.encode(c.Error(code, text)), addr, via))

    def _allow_source(self, ip: str, now: float) -> bool:
        b = self._sources.get(ip)
        if b is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)  # oldest source forgotten: bounded memory
            b = self._sources[ip] = _Bucket(self.control_burst, now)
        else:
            self._sources.move_to_end(ip)
        b.tokens = min(self.control_burst, b.tokens + (now - b.t) * self.control_rate)
        b.t = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def _on_register(self, msg: c.Register, addr: Addr, via: int, now: float) -> None:
        if not any(hmac.compare_digest(msg.cookie, self._cookie(addr, via, now, back)) for back in (0, 1)):
            self.stats.auth_failed += 1
            return self._error(c.ErrorCode.AUTH_FAILED, "stale cookie: send HELLO again", addr, via)
        scope = self.scopes.get(msg.scope_id)
        if scope is None or not hmac.compare_digest(
                msg.scope_proof, c.scope_proof(scope.secret, msg.cookie, msg.key)):
            self.stats.auth_failed += 1
            return self._error(c.ErrorCode.UNKNOWN_SCOPE, "this relay does not serve that vault", addr, via)
        if scope.devices is not None and msg.key not in scope.devices:
            self.stats.auth_failed += 1
            return self._error(c.ErrorCode.UNKNOWN_SCOPE, "device not admitted to this vault", addr, via)
        if not verify(msg.key, msg.signed_bytes(), msg.signature):
            self.stats.auth_failed += 1
            return self._error(c.ErrorCode.AUTH_FAILED, "bad signature", addr, via)
        old = self._by_key.get(msg.key)
        if old is None and len(self._by_key) >= self.max_registrations:
            return self._error(c.ErrorCode.SERVER_FULL, "registration table full", addr, via)
        if old is not None:
            self._drop(old)
        other = self._by_addr.get((addr, via))
        if other is not None:
            self._drop(other)  # a new device behind the same mapping replaces the old one
        reg = Registration(msg.key, c.short_id(msg.key), msg.scope_id, addr, via, msg.candidates,
                           now + self.expiry_s, self.relay_burst, now)
        if old is not None:
            reg.relayed_in, reg.relayed_out, reg.dropped = old.relayed_in, old.relayed_out, old.dropped
        self._by_key[reg.key] = reg
        self._by_addr[(addr, via)] = reg
        self._by_short[reg.short] = reg
        self._out.append((c.encode(c.Registered(addr, self.keepalive_s, self.expiry_s)), addr, via))

    def _drop(self, reg: Registration) -> None:
        self._by_key.pop(reg.key, None)
        if self._by_addr.get((reg.addr, reg.via)) is reg:
            del self._by_addr[(reg.addr, reg.via)]
        if self._by_short.get(reg.short) is reg:
            del self._by_short[reg.short]

    def _candidates_of(self, reg: Registration) -> tuple[Candidate, ...]:
        return (Candidate(CandidateKind.REFLEXIVE, reg.addr),) + reg.lan[:c.MAX_CANDIDATES - 1]

    def _on_peer_request(self, reg: Registration, msg: c.PeerRequest, now: float) -> None:
        peer = self._by_key.get(msg.peer_key)
        if peer is None or peer.scope != reg.scope or peer is reg:
            return self._error(c.ErrorCode.UNKNOWN_PEER, msg.peer_key.hex(), reg.addr, reg.via)
        token = os.urandom(c.TOKEN_BYTES)
        self._out.append((c.encode(c.Candidates(peer.key, msg.request_id, token, True,
                                                self._candidates_of(peer))), reg.addr, reg.via))
        self._out.append((c.encode(c.Candidates(reg.key, 0, token, False,
                                                self._candidates_of(reg))), peer.addr, peer.via))

    def _relay(self, reg: Registration, data: bytes, now: float) -> None:
        n = len(data)
        if n <= 2 + c.SHORT_ID_BYTES or n > c.MAX_DATAGRAM or data[1] != c.VERSION:
            self.stats.malformed += 1
            return
        reg.tokens = min(self.relay_burst, reg.tokens + (now - reg.token_time) * self.relay_rate)
        reg.token_time = now
        if reg.tokens < n:
            reg.dropped += 1
            self.stats.rate_limited += 1
            return  # dropped like a congested link would: QUIC's congestion control backs off
        dest = self._by_short.get(data[2:2 + c.SHORT_ID_BYTES])
        if dest is None or dest.scope != reg.scope or dest is reg:
            return
        reg.tokens -= n
        reg.relayed_in += n
        dest.relayed_out += n
        self.stats.relayed_packets += 1
        self.stats.relayed_bytes += n
        # same frame layout both ways: only the short id changes from destination to source
        self._out.append((data[:2] + reg.short + data[2 + c.SHORT_ID_BYTES:], dest.addr, dest.via))
