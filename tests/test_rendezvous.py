"""Rendezvous/punch/relay cores wired together in memory, through simulated NATs (no sockets)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from transport import control as c
from transport import rendezvous as rv
from transport.errors import RemoteProtocolError

SERVER = ("198.18.0.10", 3478)
SERVER2 = ("198.18.0.11", 3478)
SECRET = b"s" * 32


@dataclass
class Nat:
    """Port-restricted cone (Linux MASQUERADE) or symmetric (--random-fully) NAT."""

    public_ip: str
    symmetric: bool = False
    out: dict[tuple, tuple] = field(default_factory=dict)    # (private, dest or None) -> public
    back: dict[tuple, tuple] = field(default_factory=dict)   # public -> private
    allowed: set[tuple] = field(default_factory=set)         # (public, remote) pairs opened by traffic
    next_port: int = 20000

    def outbound(self, private: tuple, dest: tuple) -> tuple:
        k = (private, dest if self.symmetric else None)
        if k not in self.out:
            self.next_port += 1
            pub = (self.public_ip, self.next_port if self.symmetric else private[1])
            self.out[k] = pub
            self.back[pub] = private
        pub = self.out[k]
        self.allowed.add((pub, dest))
        return pub

    def inbound(self, public: tuple, src: tuple) -> tuple | None:
        if (public, src) not in self.allowed:
            return None  # unsolicited: dropped like a home router does
        return self.back.get(public)


class World:
    def __init__(self, server: rv.RendezvousServer) -> None:
        self.server = server
        self.clients: dict[tuple, tuple[rv.RendezvousClient, Nat | None]] = {}
        self.now = 0.0
        self.events: dict[tuple, list] = {}
        self.direct_delivered = 0

    def add(self, private: tuple, client: rv.RendezvousClient, nat: Nat | None) -> None:
        self.clients[private] = (client, nat)
        self.events[private] = []

    def deliver(self, data: bytes, src_private: tuple | None, src_public: tuple, dst: tuple) -> None:
        if dst in (SERVER, SERVER2):
            try:
                self.server.receive(data, src_public, 0 if dst == SERVER else 1, self.now)
            except RemoteProtocolError:
                raise AssertionError("the server must never raise on peer input")
            return
        # to a client: find the NAT owning the public address
        for private, (cl, nat) in self.clients.items():
            if nat is not None and dst[0] == nat.public_ip:
                target = nat.inbound(dst, src_public)
                if target != private:
                    continue
            elif dst != private:
                continue
            if src_public[0] not in (SERVER[0], SERVER2[0]):
                self.direct_delivered += 1
            try:
                cl.receive(data, src_public, self.now)
            except RemoteProtocolError as exc:
                self.events[private].append(exc)
            return

    def pump(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            for _ in range(20):
                moved = False
                for private, (cl, nat) in self.clients.items():
                    for data, dst in cl.datagrams_to_send():
                        moved = True
                        pub = nat.outbound(private, dst) if nat else private
                        self.deliver(data, private, pub, dst)
                    while (ev := cl.next_event()) is not None:
                        self.events[private].append(ev)
                for data, dst, via in self.server.datagrams_to_send():
                    moved = True
                    self.deliver(data, None, SERVER if via == 0 else SERVER2, dst)
                if not moved:
                    break
            self.now += step
            for cl, _ in self.clients.values():
                t = cl.get_timer()
                if t is not None and t <= self.now:
                    cl.handle_timer(self.now)
            t = self.server.get_timer()
            if t is not None and t <= self.now:
                self.server.handle_timer(self.now)

    def of(self, private: tuple, kind: type) -> list:
        return [e for e in self.events[private] if isinstance(e, kind)]


A_PRIV, B_PRIV = ("10.77.1.10", 4433), ("10.77.2.10", 4433)


def make(symmetric_b: bool = False, scope_b: bytes = SECRET, devices=None, **server_kw):
    server = rv.RendezvousServer([rv.Scope(SECRET, devices), rv.Scope(b"o" * 32)], **server_kw)
    w = World(server)
    ka, kb = rv.NaclSigner(os.urandom(32)), rv.NaclSigner(os.urandom(32))
    peers_a, peers_b = {kb.public_key}, {ka.public_key}
    a = rv.RendezvousClient(ka, SECRET, [SERVER, SERVER2], peers_a, [A_PRIV])
    b = rv.RendezvousClient(kb, scope_b, [SERVER, SERVER2], peers_b, [B_PRIV])
    w.add(A_PRIV, a, Nat("198.18.0.101"))
    w.add(B_PRIV, b, Nat("198.18.0.102", symmetric=symmetric_b))
    a.start(w.now)
    b.start(w.now)
    return w, a, b


def test_register_learn_reflexive_and_nat_type() -> None:
    w, a, b = make(symmetric_b=True)
    w.pump(0.2)
    assert a.registered and b.registered
    assert w.of(A_PRIV, rv.Registered)[0].reflexive == ("198.18.0.101", 4433)
    assert a.symmetric_nat is False and b.symmetric_nat is True
    assert len(w.server.registrations()) == 2


def test_cone_nats_punch_through() -> None:
    w, a, b = make()
    w.pump(0.2)
    a.request_peer(b.key, w.now)
    w.pump(1.0)
    [sa] = w.of(A_PRIV, rv.PunchSucceeded)
    [sb] = w.of(B_PRIV, rv.PunchSucceeded)
    assert sa.peer == b.key and sa.addr == ("198.18.0.102", 4433)
    assert sb.peer == a.key and sb.addr == ("198.18.0.101", 4433)
    assert not w.of(A_PRIV, rv.PunchFailed) and not a.punching(b.key)


def test_symmetric_nat_punch_fails_and_relay_carries_data() -> None:
    w, a, b = make(symmetric_b=True)
    w.pump(0.2)
    a.request_peer(b.key, w.now)
    w.pump(rv.PUNCH_TIMEOUT + 0.5)
    assert w.of(A_PRIV, rv.PunchFailed) and w.of(B_PRIV, rv.PunchFailed)
    assert not w.of(A_PRIV, rv.PunchSucceeded)
    frame = a.relay_frame(b.short, b"\xc0quic-ciphertext")
    w.deliver(frame, A_PRIV, w.clients[A_PRIV][1].outbound(A_PRIV, SERVER), SERVER)
    w.pump(0.05)
    [got] = w.of(B_PRIV, rv.RelayedDatagram)
    assert got.peer_short == a.short and got.payload == b"\xc0quic-ciphertext"
    assert w.server.stats.relayed_packets == 1


def test_wrong_scope_bad_signature_and_unadmitted_device_are_refused() -> None:
    w, a, b = make(scope_b=b"x" * 32)
    w.pump(0.3)
    assert a.registered and not b.registered
    assert any(e.code == c.ErrorCode.UNKNOWN_SCOPE for e in w.of(B_PRIV, rv.ServerError))
    # impostor: claims a's key but signs with another
    w2, a2, b2 = make()
    imp = rv.RendezvousClient(rv.NaclSigner(os.urandom(32)), SECRET, [SERVER], set(), [])
    imp.key = a2.key  # claims another device's key
    w2.add(("10.9.9.9", 1), imp, None)
    imp.start(w2.now)
    w2.pump(0.3)
    assert not imp.registered
    assert any(e.code == c.ErrorCode.AUTH_FAILED for e in w2.of(("10.9.9.9", 1), rv.ServerError))
    # allow-list: only a is admitted
    k_ok = rv.NaclSigner(os.urandom(32))
    w3, _, _ = make(devices=frozenset({k_ok.public_key}))
    ok = rv.RendezvousClient(k_ok, SECRET, [SERVER], set(), [])
    w3.add(("10.5.5.5", 2), ok, None)
    ok.start(w3.now)
    w3.pump(0.3)
    assert ok.registered
    assert len(w3.server.registrations()) == 1  # the two make() clients are not in the allow-list


def test_register_replayed_from_another_address_fails() -> None:
    server = rv.RendezvousServer([rv.Scope(SECRET)])
    k = rv.NaclSigner(os.urandom(32))
    cl = rv.RendezvousClient(k, SECRET, [SERVER], set(), [])
    cl.start(0.0)
    server.receive(cl.datagrams_to_send()[0][0], ("1.1.1.1", 1), 0, 0.0)
    [(chal, _, _)] = server.datagrams_to_send()
    cl.receive(chal, SERVER, 0.0)
    [(reg, _)] = cl.datagrams_to_send()
    server.receive(reg, ("6.6.6.6", 6), 0, 0.1)  # attacker's address
    [(err, _, _)] = server.datagrams_to_send()
    assert c.decode(err).code == c.ErrorCode.AUTH_FAILED
    server.receive(reg, ("1.1.1.1", 1), 0, 0.1)
    assert isinstance(c.decode(server.datagrams_to_send()[0][0]), c.Registered)
    # cookies expire after two buckets
    server.receive(reg, ("1.1.1.1", 1), 0, 2 * rv.COOKIE_BUCKET + 1)
    assert c.decode(server.datagrams_to_send()[0][0]).code == c.ErrorCode.AUTH_FAILED


def test_scopes_are_isolated() -> None:
    server = rv.RendezvousServer([rv.Scope(SECRET), rv.Scope(b"o" * 32)])
    w = World(server)
    ka, kb = rv.NaclSigner(os.urandom(32)), rv.NaclSigner(os.urandom(32))
    a = rv.RendezvousClient(ka, SECRET, [SERVER], {kb.public_key}, [])
    b = rv.RendezvousClient(kb, b"o" * 32, [SERVER], {ka.public_key}, [])
    w.add(A_PRIV, a, None)
    w.add(B_PRIV, b, None)
    a.start(0)
    b.start(0)
    w.pump(0.2)
    assert a.registered and b.registered
    a.request_peer(kb.public_key, w.now)
    w.pump(0.2)
    assert w.of(A_PRIV, rv.PeerUnknown) and not w.of(B_PRIV, rv.CandidatesReceived)
    w.deliver(a.relay_frame(b.short, b"\xc0x"), A_PRIV, A_PRIV, SERVER)
    w.pump(0.05)
    assert not w.of(B_PRIV, rv.RelayedDatagram) and server.stats.relayed_packets == 0


def test_relay_rate_limit_drops_excess() -> None:
    w, a, b = make(relay_rate=10_000, relay_burst=5_000)
    w.pump(0.2)
    pub = w.clients[A_PRIV][1].outbound(A_PRIV, SERVER)
    for _ in range(20):
        w.deliver(a.relay_frame(b.short, bytes([0xc0]) + bytes(999)), A_PRIV, pub, SERVER)
    w.pump(0.02)
    got = len(w.of(B_PRIV, rv.RelayedDatagram))
    assert 3 <= got <= 6  # the 5 kB burst, not 20 kB
    assert w.server.stats.rate_limited >= 14


def test_forged_and_stranger_punches_are_rejected() -> None:
    w, a, b = make()
    w.pump(0.2)
    stranger = rv.NaclSigner(os.urandom(32))
    tok, nonce = os.urandom(16), os.urandom(16)
    sig = stranger.sign(c.punch_signed_bytes(c.MsgType.PUNCH, stranger.public_key, a.key, tok, nonce))
    with pytest.raises(RemoteProtocolError, match="do not know"):
        a.receive(c.encode(c.Punch(stranger.public_key, a.key, tok, nonce, sig)), ("6.6.6.6", 1), w.now)
    # claims to be b, signed by the stranger
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        a.receive(c.encode(c.Punch(b.key, a.key, tok, nonce, sig)), ("6.6.6.6", 1), w.now)
    assert a.datagrams_to_send() == []  # nothing answered to a forger
    # an ack that does not echo our nonce plants no path
    a.request_peer(b.key, w.now)
    w.pump(0.02)
    ack_sig = stranger.sign(b"x")
    a.receive(c.encode(c.PunchAck(b.key, a.key, tok, nonce, ack_sig)), ("6.6.6.6", 1), w.now)
    assert not w.of(A_PRIV, rv.PunchSucceeded) or w.of(A_PRIV, rv.PunchSucceeded)[0].addr != ("6.6.6.6", 1)


def test_address_change_reregisters_and_expiry_forgets() -> None:
    w, a, b = make()
    w.pump(0.2)
    # the NAT rebinds a's mapping (or a moved): the keepalive ack reports a new address
    nat = w.clients[A_PRIV][1]
    nat.out.clear()
    nat.next_port = 30000
    nat.public_ip = "198.18.0.102"
    w.pump(rv.KEEPALIVE_DEFAULT + 1)
    assert w.of(A_PRIV, rv.RegistrationLost)
    assert a.registered and a.reflexive == ("198.18.0.102", 4433)
    regs = {r.key: r.addr for r in w.server.registrations()}
    assert regs[a.key] == ("198.18.0.102", 4433)
    # b goes silent: the server forgets it after expiry
    del w.clients[B_PRIV]
    w.pump(rv.EXPIRY_DEFAULT + 1, step=0.5)
    assert b.key not in {r.key for r in w.server.registrations()}


def test_server_survives_garbage_and_does_not_amplify() -> None:
    server = rv.RendezvousServer([rv.Scope(SECRET)], control_burst=1000)
    rnd = os.urandom
    for i in range(2000):
        data = rnd(i % 300)
        if i % 3 == 0 and data:
            data = bytes([data[0] % 0x40, c.VERSION]) + data[2:]
        server.receive(data, ("6.6.6.6", i), 0, i * 0.001)
        for out, _, _ in server.datagrams_to_send():
            assert len(out) <= max(len(data), 4)
    assert server.stats.malformed > 1000
    assert server.registrations() == []


def test_client_core_fuzzed_input_only_raises_protocol_errors() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    k = rv.NaclSigner(os.urandom(32))
    peer = rv.NaclSigner(os.urandom(32))
    cl = rv.RendezvousClient(k, SECRET, [SERVER, SERVER2], {peer.public_key}, [A_PRIV])
    cl.start(0.0)

    @settings(max_examples=1500, deadline=None)
    @given(st.binary(max_size=400), st.sampled_from([SERVER, SERVER2, ("6.6.6.6", 1)]), st.integers(0, 0x3F))
    def feed(data: bytes, src: tuple, t: int) -> None:
        data = bytes([t, c.VERSION]) + data if len(data) % 2 else data
        try:
            cl.receive(data, src, 1.0)
        except RemoteProtocolError:
            pass
        cl.handle_timer(2.0)
        cl.datagrams_to_send()
        while cl.next_event() is not None:
            pass

    feed()
