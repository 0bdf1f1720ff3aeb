"""One-time invitation codes and the inviter's book of pending invitations (pure: ``now`` is passed in).

A code reads ``LLLL-II-SSSS-SSSS-SSSS`` (base32, case-insensitive; 0/1/8 are
read as O/I/B so a mistyped digit still parses):

* ``LLLL`` locates the inviter: the first 20 bits of its device key in base32
  (``locator_of``). A joiner on the LAN matches it against the device ids that
  mDNS advertises; through a cloud node, the cloud node forwards the join to
  its session with the device whose key has that prefix. 20 bits only *find*
  the inviter: the PAKE authenticates it.
* ``II`` names the invitation among the inviter's pending ones (10 bits).
* ``SSSS-SSSS-SSSS`` is the secret (60 bits). It never crosses the network:
  both sides feed ``pake_password`` (a keyed hash of it and the invitation id)
  to SPAKE2, and the inviter keeps only that hash, never the code.

Invariants of ``InvitationBook``:
* an invitation is used at most once (``consume`` before anything is granted);
* it expires at ``expires`` and is refused after that;
* every handshake started counts as an attempt until it succeeds; after
  ``MAX_ATTEMPTS`` failed attempts the invitation is locked for good. Since
  each SPAKE2 run tests one password guess and no offline test is possible,
  this bounds an attacker to MAX_ATTEMPTS guesses out of 2^60.
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field

import msgpack

from consensus.commands import TRUST_LEVELS

from .errors import (BadArgument, InvitationExpired, InvitationLocked, InvitationUsed, UnknownInvitation)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
LOCATOR_CHARS = 4
ID_CHARS = 2
SECRET_CHARS = 12
MAX_ATTEMPTS = 5
MAX_TTL = 7 * 24 * 3600.0
MAX_PENDING = 64
_BOOK_FORMAT = 1
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B", " ": "", "-": ""})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def locator_of(device_key: bytes) -> str:
    """The 4-character inviter locator a code starts with (first 20 bits of the key)."""
    return base64.b32encode(device_key).decode()[:LOCATOR_CHARS]


def parse_duration(text: str) -> float:
    """'90s', '10m', '2h', '1d' (or plain seconds) -> seconds. BadArgument otherwise."""
    m = _DURATION.match(str(text))
    if not m:
        raise BadArgument(f"bad duration {text!r}: use e.g. 90s, 10m or 2h")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_TTL:
        raise BadArgument(f"duration {text!r} must be more than 0 and at most 7 days")
    return seconds


@dataclass(frozen=True)
class InviteCode:
    """A parsed invitation code (what the joiner types)."""

    locator: str
    "4 base32 characters: the first 20 bits of the inviter's key"
    invite_id: str
    "2 base32 characters naming the invitation at the inviter"
    secret: str
    "12 base32 characters: the PAKE secret (never sent)"

    @classmethod
    def parse(cls, text: str) -> "InviteCode":
        """Read a code as typed (any case, dashes and spaces optional). BadArgument if malformed."""
        s = str(text).upper().translate(_LOOKALIKES)
        want = LOCATOR_CHARS + ID_CHARS + SECRET_CHARS
        if len(s) != want or any(c not in ALPHABET for c in s):
            raise BadArgument(f"{text!r} is not an invitation code (expected LLLL-II-SSSS-SSSS-SSSS, "
                              f"{want} letters and digits 2-7)")
        return cls(s[:LOCATOR_CHARS], s[LOCATOR_CHARS:LOCATOR_CHARS + ID_CHARS], s[LOCATOR_CHARS + ID_CHARS:])

    def __str__(self) -> str:
        sec = self.secret
        return f"{self.locator}-{self.invite_id}-{sec[:4]}-{sec[4:8]}-{sec[8:]}"

    @property
    def pake_password(self) -> bytes:
        return pake_password(self.invite_id, self.secret)

    def matches(self, device_key: bytes) -> bool:
        """True if ``device_key`` is a key this code's locator names."""
        return locator_of(device_key) == self.locator


def pake_password(invite_id: str, secret: str) -> bytes:
    """What both sides give SPAKE2: a keyed hash of the secret (the inviter stores only this)."""
    return hashlib.blake2b(secret.encode(), key=b"pcloud invite v1", person=b"pake-password",
                           salt=invite_id.encode().ljust(16, b"\0")[:16]).digest()


@dataclass
class Invitation:
    """One pending invitation as the inviter keeps it (no code, only its hash)."""

    invite_id: str
    password: bytes
    "pake_password(invite_id, secret): the only trace of the code kept"
    trust: str
    voter: bool | None
    "None: decided at join from the trust level and the joiner's kind"
    expires: float
    "wall-clock seconds"
    attempts: int = 0
    used: bool = False
    used_by: bytes | None = None
    in_flight: set[bytes] = field(default_factory=set)
    "joiner keys with a handshake started and not yet finished"

    @property
    def locked(self) -> bool:
        return self.attempts >= MAX_ATTEMPTS


class InvitationBook:
    """The inviter's pending invitations. Pure: every method takes ``now``."""

    def __init__(self, inviter_key: bytes) -> None:
        self.inviter_key = inviter_key
        self._items: dict[str, Invitation] = {}

    def create(self, trust: str, ttl: float, now: float, voter: bool | None = None) -> tuple[Invitation, InviteCode]:
        """A new invitation and its code (the code is shown once and not kept)."""
        if trust not in TRUST_LEVELS:
            raise BadArgument(f"unknown trust level {trust!r}: use one of {', '.join(TRUST_LEVELS)}")
        if not 0 < ttl <= MAX_TTL:
            raise BadArgument("an invitation lives more than 0 seconds and at most 7 days")
        self.prune(now)
        if len(self._items) >= MAX_PENDING:
            raise BadArgument(f"{MAX_PENDING} invitations are already pending; let some expire first")
        while True:
            invite_id = "".join(secrets.choice(ALPHABET) for _ in range(ID_CHARS))
            if invite_id not in self._items:
                break
        secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_CHARS))
        code = InviteCode(locator_of(self.inviter_key), invite_id, secret)
        inv = Invitation(invite_id, pake_password(invite_id, secret), trust, voter, now + ttl)
        self._items[invite_id] = inv
        return inv, code

    def prune(self, now: float) -> None:
        """Forget invitations that expired, were used or locked more than an hour ago."""
        for key, inv in list(self._items.items()):
            if now > inv.expires + 3600:
                del self._items[key]

    def live(self, now: float) -> bool:
        """True if some invitation can still be redeemed."""
        return any(not i.used and not i.locked and now <= i.expires for i in self._items.values())

    def answering(self, now: float) -> bool:
        """True while some invitation is remembered (live, or recently used/expired/locked): joiners are
        then let in far enough to be told precisely why their code fails."""
        self.prune(now)
        return bool(self._items)

    def begin(self, invite_id: str, joiner: bytes, now: float) -> Invitation:
        """A handshake starts: check the invitation can be redeemed and count the attempt."""
        inv = self._items.get(invite_id)
        if inv is None:
            raise UnknownInvitation("no such invitation here (mistyped code, or the inviter's node restarted)")
        if inv.used:
            raise InvitationUsed("this invitation code was already used; ask for a new one")
        if now > inv.expires:
            raise InvitationExpired("this invitation code has expired; ask for a new one")
        if inv.locked:
            raise InvitationLocked(f"this invitation is locked after {MAX_ATTEMPTS} failed attempts; ask for a new one")
        inv.attempts += 1
        inv.in_flight.add(joiner)
        return inv

    def consume(self, invite_id: str, joiner: bytes, now: float) -> Invitation:
        """The joiner proved the code: mark the invitation used (before anything is granted)."""
        inv = self._items.get(invite_id)
        if inv is None or joiner not in inv.in_flight:
            raise UnknownInvitation("no handshake in progress for this invitation")
        if inv.used:
            raise InvitationUsed("this invitation code was already used; ask for a new one")
        if now > inv.expires:
            raise InvitationExpired("this invitation code expired during the handshake; ask for a new one")
        inv.in_flight.discard(joiner)
        inv.used, inv.used_by = True, joiner
        inv.attempts -= 1          # a success is not a failed attempt
        return inv

    def release(self, invite_id: str, joiner: bytes) -> None:
        """Granting failed after ``consume`` (e.g. no Raft quorum): the same joiner may retry."""
        inv = self._items.get(invite_id)
        if inv is not None and inv.used_by == joiner:
            inv.used, inv.used_by = False, None

    def fail(self, invite_id: str, joiner: bytes) -> None:
        """The handshake failed (wrong code): the attempt stays counted."""
        inv = self._items.get(invite_id)
        if inv is not None:
            inv.in_flight.discard(joiner)

    def get(self, invite_id: str) -> Invitation | None:
        return self._items.get(invite_id)

    def dump(self) -> bytes:
        """The book as bytes to keep across restarts (hashes only; handshakes in flight are not kept)."""
        return msgpack.packb([_BOOK_FORMAT, [[i.invite_id, i.password, i.trust, i.voter, i.expires, i.attempts,
                                               i.used, i.used_by] for i in self._items.values()]],
                             use_bin_type=True)

    @classmethod
    def load(cls, inviter_key: bytes, data: bytes) -> "InvitationBook":
        """Rebuild a book from ``dump()``; ValueError if the bytes are not one."""
        book = cls(inviter_key)
        try:
            fmt, rows = msgpack.unpackb(data, raw=False, max_bin_len=4096, max_str_len=256,
                                        max_array_len=MAX_PENDING * 8 + 8, max_map_len=0, max_ext_len=0)
            if fmt != _BOOK_FORMAT or not isinstance(rows, list) or len(rows) > MAX_PENDING:
                raise ValueError("not an invitation book")
            for inv_id, pw, trust, voter, expires, attempts, used, used_by in rows:
                ok = (isinstance(inv_id, str) and len(inv_id) == ID_CHARS and isinstance(pw, bytes) and len(pw) == 64
                      and trust in TRUST_LEVELS and voter in (None, True, False)
                      and isinstance(expires, (int, float)) and isinstance(attempts, int) and isinstance(used, bool)
                      and (used_by is None or isinstance(used_by, bytes) and len(used_by) == 32))
                if not ok:
                    raise ValueError("malformed invitation record")
                book._items[inv_id] = Invitation(inv_id, pw, trust, voter, float(expires), attempts, used, used_by)
        except (TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ValueError(f"invitation book does not decode: {exc}") from exc
        return book


__all__ = ["InviteCode", "Invitation", "InvitationBook", "locator_of", "parse_duration", "pake_password",
           "MAX_ATTEMPTS"]
