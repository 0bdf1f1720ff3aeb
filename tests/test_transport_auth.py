"""Device-key authentication: impostors, unknown and revoked keys, forged or relayed proofs (every engine)."""
from __future__ import annotations

import asyncio
import os

import pytest
from transport_helpers import ENGINES, echo, pair, run, wait_for

from transport import auth
from transport.endpoint import Endpoint
from transport.errors import AuthenticationError, PeerUnreachable, SessionClosed
from transport.events import AuthFailed
from transport.identity import DeviceIdentity, peer_key_from_cert
from transport.messages import FrameType, encode
from transport.session import Session

engines = pytest.mark.parametrize("engine", ENGINES)


@engines
def test_impostor_server_is_refused(engine: str) -> None:
    """We dial device B's key at an address where another key answers."""

    async def body() -> None:
        a, b = await pair(engine)
        impostor = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine)
        events: list[object] = []
        a.subscribe(events.append)
        with pytest.raises(AuthenticationError, match="impostor"):
            await a.connect(b.device_id, impostor.local_address)
        assert any(isinstance(e, AuthFailed) and "impostor" in e.reason for e in events)
        assert b.device_id not in a.sessions and not impostor.sessions
        for ep in (a, b, impostor):
            await ep.close()

    run(body())


@engines
def test_impostor_client_claiming_a_known_key_is_refused(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that claims a member's key but cannot sign with it."""

    async def body() -> None:
        a, b = await pair(engine)
        member = a.device_id
        b_events: list[object] = []
        b.subscribe(b_events.append)
        # The attacker holds its own key, and sends the member's key with its own signature.
        attacker = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine)
        real_make_proof = auth.make_proof

        def forged(identity: DeviceIdentity, binding: bytes, server_key: bytes) -> auth.ClientProof:
            proof = real_make_proof(identity, binding, server_key)
            return auth.ClientProof(member if identity.public_key == attacker.device_id else proof.key, proof.signature)

        monkeypatch.setattr(auth, "make_proof", forged)
        with pytest.raises(AuthenticationError, match="refused"):
            await attacker.connect(b.device_id, b.local_address)
        await wait_for(lambda: any(isinstance(e, AuthFailed) for e in b_events))
        failure = next(e for e in b_events if isinstance(e, AuthFailed))
        assert "bad signature" in failure.reason
        assert member not in b.sessions
        for ep in (a, b, attacker):
            await ep.close()

    run(body())


@engines
def test_unknown_client_key_is_refused_with_reason(engine: str) -> None:
    async def body() -> None:
        a, b = await pair(engine, admit_b=lambda k: False)
        with pytest.raises(AuthenticationError, match="not admitted"):
            await a.connect(b.device_id, b.local_address)
        assert not b.sessions
        await a.close()
        await b.close()

    run(body())


@engines
def test_client_refuses_a_server_it_does_not_admit(engine: str) -> None:
    async def body() -> None:
        a, b = await pair(engine, admit_a=lambda k: False)
        with pytest.raises(AuthenticationError, match="not admitted"):
            await a.connect(b.device_id, b.local_address)
        await a.close()
        await b.close()

    run(body())


@engines
def test_revocation_applies_at_once(engine: str) -> None:
    async def body() -> None:
        revoked: set[bytes] = set()
        a, b = await pair(engine)
        keys = {a.device_id}
        b._admit = lambda k: k in keys and k not in revoked
        b.on_request("echo", echo)
        s = await a.connect(b.device_id, b.local_address)
        assert await s.request("echo", {}) == {"echo": {}}
        revoked.add(a.device_id)
        b.drop_peer(a.device_id, "revoked")
        await asyncio.wait_for(s.wait_closed(), 5)
        with pytest.raises(SessionClosed):
            await s.request("echo", {})
        with pytest.raises(AuthenticationError):
            await a.connect(b.device_id, b.local_address)
        await a.close()
        await b.close()

    run(body())


@engines
def test_no_application_data_before_auth(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends a REQUEST instead of AUTH gets its connection closed."""

    async def body() -> None:
        a, b = await pair(engine)
        called: list[bool] = []

        async def handler(s: Session, body: object) -> dict:
            called.append(True)
            return {}

        b.on_request("echo", handler)
        real = Session._on_handshake

        def skip_auth(self: Session) -> None:
            if not self.is_client:
                return real(self)
            self.state = "auth"
            self._send_control(encode(FrameType.REQUEST, {"i": 1, "t": "echo", "b": {}}))

        monkeypatch.setattr(Session, "_on_handshake", skip_auth)
        with pytest.raises((AuthenticationError, PeerUnreachable)):
            await a.connect(b.device_id, b.local_address, timeout=5)
        assert not called and not b.sessions
        await a.close()
        await b.close()

    run(body())


def test_proof_is_bound_to_connection_and_server() -> None:
    client = DeviceIdentity.from_seed(os.urandom(32))
    server = DeviceIdentity.from_seed(os.urandom(32))
    other_server = DeviceIdentity.from_seed(os.urandom(32))
    binding = os.urandom(32)
    proof = auth.make_proof(client, binding, server.public_key)
    assert auth.check_client(proof, binding, server.public_key, lambda k: True) == client.public_key
    with pytest.raises(AuthenticationError, match="bad signature"):  # replayed on another connection
        auth.check_client(proof, os.urandom(32), server.public_key, lambda k: True)
    with pytest.raises(AuthenticationError, match="bad signature"):  # relayed to another server
        auth.check_client(proof, binding, other_server.public_key, lambda k: True)
    with pytest.raises(AuthenticationError, match="not admitted"):
        auth.check_client(proof, binding, server.public_key, lambda k: False)
    with pytest.raises(AuthenticationError):
        auth.check_client(auth.ClientProof(b"short", proof.signature), binding, server.public_key, lambda k: True)
    with pytest.raises(AuthenticationError, match="impostor"):
        auth.check_server(other_server.public_key, server.public_key, lambda k: True)


def test_certificate_carries_the_device_key() -> None:
    identity = DeviceIdentity.from_seed(bytes(range(32)))
    assert peer_key_from_cert(identity.cert_der) == identity.public_key
    assert DeviceIdentity.from_seed(bytes(range(32))).cert_der == identity.cert_der  # deterministic
    with pytest.raises(AuthenticationError):
        peer_key_from_cert(b"not a certificate")


@engines
def test_admit_that_raises_refuses_and_the_endpoint_survives(engine: str) -> None:
    async def body() -> None:
        def broken(key: bytes) -> bool:
            raise RuntimeError("bug in the upper layer")

        a, b = await pair(engine, admit_b=broken)
        with pytest.raises(AuthenticationError, match="not admitted"):
            await a.connect(b.device_id, b.local_address)
        b._admit = lambda k: k == a.device_id
        b.on_request("echo", echo)
        s = await a.connect(b.device_id, b.local_address)
        assert await s.request("echo", {}) == {"echo": {}}
        assert [p.peer_id for p in a.peers()] == [b.device_id]
        await a.close()
        await b.close()

    run(body())


def test_auth_frame_overtaking_the_handshake_is_checked_after_it() -> None:
    """Reordering may deliver the client's AUTH before the server's HandshakeDone: it waits, then passes."""

    async def body() -> None:
        a, b = await pair("qh3")
        b.on_request("echo", echo)
        from transport.quic_engine import HandshakeDone

        held: list[tuple[Session, object]] = []
        real_handle = Session.handle

        def reorder(self: Session, event: object) -> None:
            if not self.is_client and isinstance(event, HandshakeDone) and not held:
                held.append((self, event))  # deliver it after the stream data that follows
                asyncio.get_running_loop().call_soon(real_handle, self, event)
                return
            real_handle(self, event)

        Session.handle = reorder  # type: ignore[method-assign]
        try:
            s = await a.connect(b.device_id, b.local_address)
        finally:
            Session.handle = real_handle  # type: ignore[method-assign]
        assert held and await s.request("echo", {}) == {"echo": {}}
        await a.close()
        await b.close()

    run(body())
