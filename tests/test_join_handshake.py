"""The join handshake without sockets: codes, the invitation book, SPAKE2 + confirmation, binding, fuzzing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcloud.errors import (BadArgument, InvitationExpired, InvitationLocked, InvitationUsed, UnknownInvitation,
                           WrongCode)
from pcloud.identity import DeviceIdentity
from pcloud.invitation import MAX_ATTEMPTS, InvitationBook, InviteCode, locator_of, parse_duration
from pcloud.join_handshake import (JOIN_FINISH, JOIN_START, Grant, InviterHandshake, MalformedJoin, drive,
                                   joiner_flow, parse_start)

INVITER = DeviceIdentity.generate()
JOINER = DeviceIdentity.generate()


def grant_for(name: str = "phone") -> Grant:
    return Grant(b"genesis", "member", True, name, [INVITER.public_key], [INVITER.public_key],
                 {INVITER.public_key: ("127.0.0.1", 4433)}, b"sealed-keyring", b"t" * 16)


class Inviter:
    """An inviter answering requests in memory: what Membership does, minus Raft and sockets."""

    def __init__(self, book: InvitationBook, identity: DeviceIdentity, now: float = 0.0) -> None:
        self.book, self.identity, self.now = book, identity, now
        self.handshakes: dict[tuple[str, bytes], InviterHandshake] = {}
        self.granted: list[bytes] = []
        self.seen: list[object] = []

    def answer(self, joiner: bytes, msg_type: str, body: dict) -> dict:
        self.seen.append(body)
        if msg_type == JOIN_START:
            _, inv_id, msg_a = parse_start(body)
            inv = self.book.begin(inv_id, joiner, self.now)
            hs = InviterHandshake(inv.password, inv_id, self.identity.public_key, joiner)
            self.handshakes[(inv_id, joiner)] = hs
            return hs.start(msg_a)
        hs = self.handshakes.pop((body["inv"], joiner))
        try:
            proof = hs.finish(body)
        except WrongCode:
            self.book.fail(body["inv"], joiner)
            raise
        self.book.consume(body["inv"], joiner, self.now)
        self.granted.append(proof.joiner)
        return {"grant": hs.seal_grant(grant_for(proof.name))}


def make(trust: str = "member", ttl: float = 600.0) -> tuple[Inviter, InviteCode]:
    book = InvitationBook(INVITER.public_key)
    _, code = book.create(trust, ttl, now=0.0)
    return Inviter(book, INVITER), code


def run_join(inviter: Inviter, code: InviteCode, joiner: DeviceIdentity = JOINER,
             server_key: bytes | None = INVITER.public_key) -> Grant:
    flow = joiner_flow(code, joiner, "phone", "phone", server_key)
    return drive(flow, lambda req: inviter.answer(joiner.public_key, req.msg_type, req.body))


def test_code_format_and_parsing() -> None:
    inviter, code = make()
    text = str(code)
    assert len(text) == 22 and text.count("-") == 4 and text.startswith(locator_of(INVITER.public_key))
    assert InviteCode.parse(text.lower().replace("-", " ")) == code
    assert InviteCode.parse(text.replace("O", "0").replace("I", "1")) == code     # lookalike digits
    for bad in ["", "ABCD", text + "A", text[:-1] + "!", "9" * 18]:
        with pytest.raises(BadArgument):
            InviteCode.parse(bad)
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("2h") == 7200
    for bad in ["", "10x", "-5m", "0s", "9d"]:
        with pytest.raises(BadArgument):
            parse_duration(bad)


def test_right_code_succeeds_and_the_secret_never_travels() -> None:
    inviter, code = make()
    grant = run_join(inviter, code)
    assert grant == grant_for("phone") and inviter.granted == [JOINER.public_key]
    wire = repr(inviter.seen).encode()
    assert code.secret.encode() not in wire and code.pake_password not in wire
    assert inviter.book.get(code.invite_id).used


def test_wrong_code_fails_on_both_sides_and_leaks_nothing() -> None:
    inviter, code = make()
    wrong = InviteCode(code.locator, code.invite_id, "A" * 12)
    with pytest.raises(WrongCode):
        run_join(inviter, wrong)
    assert inviter.granted == [] and not inviter.book.get(code.invite_id).used
    # The joiner stopped before join.finish: nothing but the PAKE message went out.
    assert len(inviter.seen) == 1 and set(inviter.seen[0]) == {"v", "loc", "inv", "pake"}
    # An attacker that skips its own check and sends join.finish anyway is refused by the inviter.
    book = inviter.book

    flow = joiner_flow(wrong, JOINER, "x", None, INVITER.public_key)
    req = next(flow)
    reply = inviter.answer(JOINER.public_key, req.msg_type, req.body)
    hs_key = (code.invite_id, JOINER.public_key)
    assert hs_key in inviter.handshakes and "pake" in reply
    forged = {"v": 1, "loc": code.locator, "inv": code.invite_id, "confirm": b"\0" * 32, "sig": b"\0" * 64,
              "name": "x", "kind": None}
    with pytest.raises(WrongCode):
        inviter.answer(JOINER.public_key, JOIN_FINISH, forged)
    assert inviter.granted == [] and not book.get(code.invite_id).used


def test_man_in_the_middle_relaying_between_two_sessions_fails() -> None:
    """M grinds a key with the inviter's locator, accepts the joiner's session and relays to the inviter."""
    inviter, code = make()
    mitm = DeviceIdentity.generate()
    # 1) The joiner sees M's TLS key (direct mode, M's key matches the locator in this scenario);
    #    the inviter sees M's session key as the joiner. T differs on the two sides.
    flow = joiner_flow(code, JOINER, "phone", None, server_key=INVITER.public_key)
    req = next(flow)
    reply = inviter.answer(mitm.public_key, req.msg_type, req.body)       # relayed by M
    with pytest.raises(WrongCode):
        flow.send(reply)
    # 2) M pretends to be the inviter (its own TLS key): the inviter's stated key is not M's.
    inviter2, code2 = make()
    flow = joiner_flow(code2, JOINER, "phone", None, server_key=mitm.public_key)
    req = next(flow)
    reply = inviter2.answer(JOINER.public_key, req.msg_type, req.body)
    reply_from_m = dict(reply, inviter=mitm.public_key)
    with pytest.raises(WrongCode):
        flow.send(reply_from_m)
    assert inviter.granted == [] and inviter2.granted == []


def test_relayed_join_checks_the_locator_and_the_grant_key() -> None:
    inviter, code = make()
    relay = DeviceIdentity.generate()
    grant = run_join(inviter, code, server_key=relay.public_key)   # relay's TLS key: relayed mode
    assert grant.name == "phone"
    # An inviter whose key does not match the locator is refused even with valid MACs.
    other = DeviceIdentity.generate()
    book = InvitationBook(other.public_key)
    _, code3 = book.create("member", 600, 0.0)
    spoof = InviteCode(locator_of(INVITER.public_key), code3.invite_id, code3.secret)
    with pytest.raises(WrongCode, match="locator"):
        run_join(Inviter(book, other), spoof, server_key=relay.public_key)


def test_joiner_must_hold_its_key() -> None:
    inviter, code = make()
    impostor = DeviceIdentity.generate()
    flow = joiner_flow(code, impostor, "x", None, INVITER.public_key)
    req = next(flow)
    # The inviter attributes the session to JOINER (e.g. a forwarding member said so) but the signer is impostor.
    reply = inviter.answer(JOINER.public_key, req.msg_type, req.body)
    with pytest.raises(WrongCode):
        flow.send(reply)            # T names JOINER on one side, impostor on the other


def test_expired_used_locked_and_unknown_invitations() -> None:
    inviter, code = make(ttl=60)
    inviter.now = 61
    with pytest.raises(InvitationExpired):
        run_join(inviter, code)
    inviter, code = make()
    run_join(inviter, code)
    with pytest.raises(InvitationUsed):
        run_join(inviter, code, joiner=DeviceIdentity.generate())
    inviter, code = make()
    wrong = InviteCode(code.locator, code.invite_id, "B" * 12)
    for _ in range(MAX_ATTEMPTS):
        with pytest.raises(WrongCode):
            run_join(inviter, wrong)
    with pytest.raises(InvitationLocked):
        run_join(inviter, code)                                # even the right code: locked for good
    assert not inviter.book.live(0.0)
    with pytest.raises(UnknownInvitation):
        run_join(inviter, InviteCode(code.locator, "ZZ" if code.invite_id != "ZZ" else "YY", code.secret))


def test_grant_roundtrip_and_refuses_junk() -> None:
    g = grant_for()
    assert Grant.decode(g.encode()) == g
    for junk in [b"", b"\x91\x01", g.encode()[:-1], g.encode() + b"\0"]:
        with pytest.raises(MalformedJoin):
            Grant.decode(junk)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "loc", "inv", "pake", "confirm", "sig", "name", "kind", "x"]),
                       st.one_of(st.none(), st.integers(), st.binary(max_size=80), st.text(max_size=80),
                                 st.booleans())))
def test_inviter_refuses_malformed_messages_with_named_errors(body: dict) -> None:
    book = InvitationBook(INVITER.public_key)
    inv, code = book.create("member", 600, 0.0)
    try:
        _, inv_id, msg_a = parse_start(body)
        hs = InviterHandshake(inv.password, code.invite_id, INVITER.public_key, JOINER.public_key)
        hs.start(msg_a)
        hs.finish(body)
    except (MalformedJoin, WrongCode):
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_grant_decoder_fuzz(data: bytes) -> None:
    try:
        Grant.decode(data)
    except MalformedJoin:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_code_parser_fuzz(text: str) -> None:
    try:
        code = InviteCode.parse(text)
    except BadArgument:
        return
    assert InviteCode.parse(str(code)) == code
