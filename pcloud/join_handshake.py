"""The join handshake, sans-I/O: SPAKE2 on the invitation code, key confirmation, a sealed grant.

Messages (session requests, msgpack maps; every field type- and size-checked)::

    joiner  -> inviter  join.start  {v, loc, inv, pake: msgA}
    inviter -> joiner               {pake: msgB, inviter: I, confirm: MAC(kI, T)}
    joiner  -> inviter  join.finish {v, loc, inv, confirm: MAC(kJ, T), sig: Sign_J(T), name, kind}
    inviter -> joiner               {grant: SecretBox(kG, Grant)}

    T  = BLAKE2b(CONTEXT || inv || J || I || msgA || msgB)
    K  = SPAKE2 shared key (password = pake_password(inv, secret))
    kJ, kI, kG = BLAKE2b(key=K, person=label, T)

Invariants
----------
* The code's secret never travels; the PAKE gives an eavesdropper nothing to
  test guesses against, and an active attacker one guess per run (the
  inviter's ``InvitationBook`` counts runs).
* Both confirmations cover ``T``, which names both device keys as *each side
  sees them*: J is, on the inviter, the TLS-authenticated key of the session
  (or what a member forwarding the join vouches for); I is, on the joiner, the
  TLS-proven key of the server it dialled (direct) or the key the inviter
  states, which must match the code's locator (relayed through a cloud node).
  A man in the middle without the code cannot produce either MAC, and one
  relaying between two sessions makes the two sides compute different T.
* The joiner also signs T with its device key, so the key it is enrolled
  under is one it holds.
* Nothing the inviter grants (genesis, voters, sealed vault key) is sent
  before the joiner's confirmation verifies, and it travels encrypted under
  a key only the two ends have (a relaying cloud node learns nothing).

``joiner_flow`` is a generator in the style of httpx's ``auth_flow``: it
yields ``Request``s and receives the answers (``send``), and returns the
``Grant``; ``drive``/``async_drive`` run it over any transport. The inviter
side is the ``InviterHandshake`` state machine.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Protocol

import msgpack
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from consensus.commands import TRUST_LEVELS

from .errors import InvitationError, WrongCode
from .identity import verify
from .invitation import InviteCode, locator_of

VERSION = 1
JOIN_START = "join.start"
JOIN_FINISH = "join.finish"
JOIN_REQUESTS = frozenset({JOIN_START, JOIN_FINISH})
KINDS = ("desktop", "laptop", "server", "phone")
CONTEXT = b"pcloud join v1\x00"
_ID_JOINER, _ID_INVITER = b"pcloud joiner", b"pcloud inviter"
MAX_PAKE = 64
MAX_NAME = 64
MAX_GRANT = 64 * 1024
MAX_VOTERS = 256


class MalformedJoin(InvitationError):
    """A join message is malformed (wrong types, sizes or fields)."""

    code = "bad_request"


class Signer(Protocol):
    public_key: bytes

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Request:
    """One request the flow wants sent to the inviter."""

    msg_type: str
    "join.start or join.finish"
    body: dict[str, Any]
    "the request body (msgpack-able)"


@dataclass(frozen=True)
class JoinerProof:
    """What the inviter learns from a verified join.finish."""

    joiner: bytes
    "the joiner's device key (bound in T, signature checked)"
    name: str
    "the name the joiner asks to be listed under"
    kind: str | None
    "device class hint: desktop, laptop, server, phone (phones are non-voters)"
    want: str | None = None
    "the trust level the joiner insists on (the cloud node: storage); None: whatever was offered"


@dataclass(frozen=True)
class Grant:
    """What an admitted joiner receives: enough to write its vault directory and find the cluster."""

    genesis: bytes
    "the vault's encoded Genesis"
    trust: str
    "the level it was admitted with"
    voter: bool
    "whether it votes in Raft"
    name: str
    "the name it is listed under (may differ from the one asked: names are unique)"
    voters: list[bytes]
    "Raft voters before this admission (the configuration the joiner starts from)"
    peers: list[bytes]
    "active devices to talk to"
    addresses: dict[bytes, tuple[str, int]]
    "addresses the inviter knows its peers at (hints; discovery finds the rest)"
    sealed_keyring: bytes | None
    "the vault keyring sealed to the joiner, as committed in Raft (None for storage)"
    vault_tag: bytes
    "the vault's discovery/relay tag (lets a key-less storage node find and serve the vault)"

    def encode(self) -> bytes:
        addrs = [[k, h, p] for k, (h, p) in sorted(self.addresses.items())]
        return msgpack.packb([VERSION, self.genesis, self.trust, self.voter, self.name, self.voters, self.peers,
                              addrs, self.sealed_keyring, self.vault_tag], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Grant":
        try:
            items = msgpack.unpackb(data, raw=False, max_bin_len=MAX_GRANT, max_str_len=1024,
                                    max_array_len=4 * MAX_VOTERS, max_map_len=0, max_ext_len=0)
            v, genesis, trust, voter, name, voters, peers, addrs, sealed, tag = items
            ok = (v == VERSION and isinstance(genesis, bytes) and trust in TRUST_LEVELS and isinstance(voter, bool)
                  and isinstance(name, str) and 0 < len(name) <= MAX_NAME
                  and all(isinstance(k, bytes) and len(k) == 32 for k in voters + peers)
                  and (sealed is None or isinstance(sealed, bytes)) and isinstance(tag, bytes)
                  and all(isinstance(a, list) and len(a) == 3 and isinstance(a[0], bytes) and isinstance(a[1], str)
                          and isinstance(a[2], int) for a in addrs))
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise MalformedJoin(f"the inviter's grant does not decode: {exc}") from exc
        if not ok:
            raise MalformedJoin("the inviter's grant is malformed")
        return cls(genesis, trust, voter, name, voters, peers, {k: (h, p) for k, h, p in addrs}, sealed, tag)


# ---------------------------------------------------------------- shared crypto


def transcript(invite_id: str, joiner: bytes, inviter: bytes, msg_a: bytes, msg_b: bytes) -> bytes:
    """T: the hash both confirmations and the joiner's signature cover."""
    h = hashlib.blake2b(CONTEXT, digest_size=32)
    for part in (invite_id.encode(), joiner, inviter, msg_a, msg_b):
        h.update(len(part).to_bytes(2, "big") + part)
    return h.digest()


def _derive(k: bytes, label: bytes, t: bytes) -> bytes:
    return hashlib.blake2b(t, key=k, person=label, digest_size=32).digest()


def _keys(k: bytes, t: bytes) -> tuple[bytes, bytes, bytes]:
    return _derive(k, b"confirm-joiner", t), _derive(k, b"confirm-inviter", t), _derive(k, b"grant-key", t)


def _mac(key: bytes, t: bytes) -> bytes:
    return hmac.new(key, t, hashlib.sha256).digest()


def _field(body: Any, name: str, kind: type, limit: int | None = None, exact: int | None = None) -> Any:
    if not isinstance(body, dict):
        raise MalformedJoin("a join message is a map")
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise MalformedJoin(f"join message field {name!r} is missing or not {kind.__name__}")
    if exact is not None and len(value) != exact:
        raise MalformedJoin(f"join message field {name!r} must be {exact} long")
    if limit is not None and not 0 < len(value) <= limit:
        raise MalformedJoin(f"join message field {name!r} must be 1..{limit} long")
    return value


def parse_start(body: Any) -> tuple[str, str, bytes]:
    """(locator, invite id, msgA) of a join.start body; MalformedJoin if off."""
    if _field(body, "v", int) != VERSION:
        raise MalformedJoin(f"unsupported join version {body.get('v')!r}")
    return _field(body, "loc", str, 8), _field(body, "inv", str, 8), _field(body, "pake", bytes, MAX_PAKE)


def parse_finish_ids(body: Any) -> tuple[str, str]:
    """(locator, invite id) of a join.finish body."""
    return _field(body, "loc", str, 8), _field(body, "inv", str, 8)


# ---------------------------------------------------------------- joiner (generator)


def joiner_flow(code: InviteCode, me: Signer, name: str, kind: str | None = None,
                server_key: bytes | None = None, want: str | None = None) -> Generator[Request, Any, Grant]:
    """The joiner's side. ``server_key`` is the TLS-proven key of the server dialled.

    If it matches the code's locator, the inviter must be that very key (direct);
    otherwise the server is a cloud node forwarding the join (relayed) and the
    inviter's stated key must match the locator. Raises WrongCode (the code does
    not match, or someone in the middle), MalformedJoin (a bad answer).
    """
    direct = server_key is not None and code.matches(server_key)
    pake = SPAKE2_A(code.pake_password, idA=_ID_JOINER, idB=_ID_INVITER)
    msg_a = pake.start()
    head = {"v": VERSION, "loc": code.locator, "inv": code.invite_id}
    reply = yield Request(JOIN_START, head | {"pake": msg_a})
    msg_b = _field(reply, "pake", bytes, MAX_PAKE)
    inviter = _field(reply, "inviter", bytes, exact=32)
    confirm_i = _field(reply, "confirm", bytes, exact=32)
    if direct and inviter != server_key:
        raise WrongCode("the device answering is not the one that confirmed the code (man in the middle?)")
    if not code.matches(inviter):
        raise WrongCode(f"the inviter's key does not match the code's locator {code.locator}")
    try:
        k = pake.finish(msg_b)
    except (SPAKEError, NotOnCurve, ValueError) as exc:
        raise MalformedJoin(f"the inviter's PAKE message is invalid: {exc}") from exc
    t = transcript(code.invite_id, me.public_key, inviter, msg_a, msg_b)
    k_joiner, k_inviter, k_grant = _keys(k, t)
    if not hmac.compare_digest(confirm_i, _mac(k_inviter, t)):
        raise WrongCode("the invitation code is wrong (or someone is in the middle); nothing was revealed")
    reply = yield Request(JOIN_FINISH, head | {"confirm": _mac(k_joiner, t), "sig": me.sign(CONTEXT + t),
                                               "name": name, "kind": kind, "want": want})
    sealed = _field(reply, "grant", bytes, MAX_GRANT)
    try:
        plain = SecretBox(k_grant).decrypt(sealed)
    except CryptoError as exc:
        raise WrongCode("the inviter's grant does not open with the agreed key") from exc
    grant = Grant.decode(plain)
    return grant


def drive(flow: Generator[Request, Any, Grant], send: Callable[[Request], Any]) -> Grant:
    """Run a flow with a blocking ``send(request) -> answer``."""
    try:
        request = next(flow)
        while True:
            request = flow.send(send(request))
    except StopIteration as stop:
        return stop.value


async def async_drive(flow: Generator[Request, Any, Grant], send: Callable[[Request], Awaitable[Any]]) -> Grant:
    """Run a flow with an async ``send(request) -> answer``."""
    try:
        request = next(flow)
        while True:
            request = flow.send(await send(request))
    except StopIteration as stop:
        return stop.value


# ---------------------------------------------------------------- inviter (state machine)


class InviterHandshake:
    """The inviter's side of one handshake: ``start`` -> ``finish`` -> ``seal_grant``.

    ``joiner`` is the key the inviter attributes the session to (TLS, or a
    forwarding member's word). Each method may be called once, in order.
    """

    def __init__(self, password: bytes, invite_id: str, inviter: bytes, joiner: bytes) -> None:
        self.invite_id = invite_id
        self.inviter = inviter
        self.joiner = joiner
        self._pake = SPAKE2_B(password, idA=_ID_JOINER, idB=_ID_INVITER)
        self._t = b""
        self._k: tuple[bytes, bytes, bytes] | None = None
        self.state = "new"
        "'new' -> 'started' -> 'confirmed' (or 'failed')"

    def start(self, msg_a: bytes) -> dict[str, Any]:
        """Answer join.start. Raises MalformedJoin on a bad PAKE message."""
        if self.state != "new":
            raise MalformedJoin("join.start sent twice")
        msg_b = self._pake.start()
        try:
            k = self._pake.finish(msg_a)
        except (SPAKEError, NotOnCurve, ValueError) as exc:
            self.state = "failed"
            raise MalformedJoin(f"the joiner's PAKE message is invalid: {exc}") from exc
        self._t = transcript(self.invite_id, self.joiner, self.inviter, msg_a, msg_b)
        self._k = _keys(k, self._t)
        self.state = "started"
        return {"pake": msg_b, "inviter": self.inviter, "confirm": _mac(self._k[1], self._t)}

    def finish(self, body: Any) -> JoinerProof:
        """Check join.finish: the joiner's MAC (it knows the code) and signature (it holds its key).

        Raises WrongCode (wrong code or a different transcript) or MalformedJoin.
        """
        if self.state != "started" or self._k is None:
            raise MalformedJoin("join.finish without a started handshake")
        self.state = "failed"
        confirm = _field(body, "confirm", bytes, exact=32)
        sig = _field(body, "sig", bytes, exact=64)
        name = _field(body, "name", str, MAX_NAME)
        kind = body.get("kind")
        if kind is not None and kind not in KINDS:
            raise MalformedJoin(f"unknown device kind {kind!r}")
        want = body.get("want")
        if want is not None and want not in TRUST_LEVELS:
            raise MalformedJoin(f"unknown trust level {want!r}")
        if not hmac.compare_digest(confirm, _mac(self._k[0], self._t)):
            raise WrongCode("the joiner's confirmation does not verify: wrong invitation code")
        if not verify(self.joiner, CONTEXT + self._t, sig):
            raise WrongCode("the joiner did not sign the handshake with the key it joins under")
        self.state = "confirmed"
        return JoinerProof(self.joiner, name, kind, want)

    def seal_grant(self, grant: Grant) -> bytes:
        """Encrypt the grant for the joiner (only after ``finish`` succeeded)."""
        if self.state != "confirmed" or self._k is None:
            raise MalformedJoin("no grant before the joiner is confirmed")
        return SecretBox(self._k[2]).encrypt(grant.encode())


__all__ = ["Grant", "InviterHandshake", "JOIN_FINISH", "JOIN_REQUESTS", "JOIN_START", "JoinerProof", "KINDS",
           "MalformedJoin", "Request", "async_drive", "drive", "joiner_flow", "parse_finish_ids", "parse_start",
           "transcript", "locator_of"]
