"""Enrolling and removing devices: invitations, the join service, trust changes, revocation with key rotation.

``Membership`` runs inside a node (``pcloud.node.Node`` builds it with what it
has) and ``join`` runs on the new device::

    m = Membership(identity=..., keyring=..., endpoint=ep, raft=raft, vault_dir=dir)   # or attach(node)
    m.install()                                   # join.* handlers, guest policy, Raft listener
    ep_admit = m.is_member                        # what the endpoint's admit() should ask
    inv = await m.invite("member", ttl=600)      # inv.code: 'PB4H-J4-6IYP-F566-PUNM'
    ...
    result = await join(inv.code, new_dir, name="phone", relay="127.0.0.1:4433")   # pcloud.membership_join

Invariants
----------
* Only ``join.start`` / ``join.finish`` are open to devices that are not
  enrolled, and only as *guest* sessions (``Endpoint.allow_guests``): a guest
  never enters ``endpoint.sessions``, so Raft, replication and every other
  handler never see it. Guests are let in while an invitation is live (or, on
  a storage node, to forward joins); enrolled or revoked keys never as guests.
* A device is admitted only after the joiner proved the code (SPAKE2 key
  confirmation, ``pcloud.join_handshake``), and only through Raft
  (``AdmitDevice``); the vault key is sealed to it through Raft
  (``PutSealedKey``) iff its level reads — never for ``storage``.
* Revocation is ``Revoke`` then ``RotateEpoch`` then the new epoch's key
  sealed to every remaining reading device. Every replica drops the revoked
  device's sessions when it applies the ``Revoke``; the node's ``admit``
  (``is_member``) refuses it from then on.
* Every replica that applies a ``PutSealedKey`` for itself merges the epochs it
  lacked into its keyring and rewrites ``keyring.sealed`` (listeners in
  ``on_keyring_changed`` are told, so open vault handles can pick them up).
* Pending invitations are kept as hashes only, with their attempt counts, in
  ``invitations.bin`` (0600), so a node restart neither forgets nor unlocks them.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from consensus.commands import (TRUST_LEVELS, AdmitDevice, PutSealedKey, Revoke, RotateEpoch, SetPolicy, SetTrust,
                               SetVoter)
from consensus.errors import CommandRejected, ConsensusError, NoQuorum, PermissionDenied
from consensus.state import DeviceRecord
from transport.errors import RequestFailed
from transport.events import PeerUp

from . import errors
from .identity import DeviceIdentity, _write_private, read_private, seal_keyring_for, short_id_of
from .invitation import InvitationBook, locator_of, parse_duration
from .join_handshake import (JOIN_FINISH, JOIN_REQUESTS, JOIN_START, Grant, InviterHandshake, parse_finish_ids,
                             parse_start)
from .membership_join import KEYRING_FILE, READS, JoinResult, find_inviter, join, write_enrollment
from .store.crypto import Keyring

log = logging.getLogger("pcloud.membership")

HANDSHAKE_TTL = 60.0
BOOK_FILE = "invitations.bin"
PROMOTE_FILE = "promote.pending"
"device keys (hex lines) admitted as non-voters that become voters once connected"


@dataclass(frozen=True)
class IssuedInvitation:
    """A new invitation as shown to the user (the code is not kept anywhere)."""

    code: str
    "the one-time code, e.g. 'PB4H-J4-6IYP-F566-PUNM'"
    expires: float
    "wall-clock expiry, seconds since the epoch"
    trust: str
    "the level the joiner will get"
    voter: bool | None
    "None: decided from the level and the joiner's kind"
    qr_text: str
    "the code as a terminal QR code (for phones)"

    @property
    def expires_iso(self) -> str:
        return datetime.fromtimestamp(self.expires, timezone.utc).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "expires": self.expires_iso, "expires_at": self.expires, "trust": self.trust,
                "voter": self.voter, "qr": self.qr_text}


@dataclass(frozen=True)
class DeviceInfo:
    """One registry entry as `pcloud devices` shows it."""

    device_id: str
    "short id"
    key: str
    "hex public key"
    name: str
    trust: str
    voter: bool
    online: bool
    revoked: bool
    policy: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RevokeResult:
    """What `revoke` did."""

    device_id: str
    name: str
    epoch: int
    "the vault-key epoch new objects are sealed with from now on"
    resealed: int
    "how many remaining devices received the new epoch's key"


def render_qr(text: str) -> str:
    """``text`` as a compact terminal QR code."""
    import segno
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True)
    return out.getvalue()


class Membership:
    """The enrollment and device-management service of one running node.

    Parameters: ``identity`` (this device), ``keyring`` (None on a key-less
    storage node; the node's instance, mutated in place on rotation),
    ``endpoint`` (transport.Endpoint), ``raft`` (consensus.RaftNode),
    ``vault_dir``, ``clock`` (wall-clock seconds), ``timeout`` (Raft submit
    timeout), ``vault_tag`` (required when ``keyring`` is None),
    ``forward_joins`` (forward joins naming another inviter to its session;
    default: on when this device is a storage node).
    """

    def __init__(self, *, identity: DeviceIdentity, keyring: Keyring | None, endpoint: Any, raft: Any,
                 vault_dir: str | os.PathLike[str], clock: Callable[[], float] = time.time, timeout: float = 5.0,
                 vault_tag: bytes | None = None, forward_joins: bool | None = None) -> None:
        self.identity = identity
        self.me = identity.public_key
        self.keyring = keyring
        self.endpoint = endpoint
        self.raft = raft
        self.dir = Path(vault_dir)
        self.clock = clock
        self.timeout = timeout
        if keyring is None and vault_tag is None:
            raise errors.BadArgument("a key-less node needs its vault tag")
        self.vault_tag = vault_tag if vault_tag is not None else keyring.vault_tag()
        self._forward_joins = forward_joins
        self._book_path = self.dir / BOOK_FILE
        self.book = self._load_book()
        self._handshakes: dict[tuple[str, bytes], tuple[InviterHandshake, float]] = {}
        self.on_keyring_changed: list[Callable[[Keyring], None]] = []
        "called (loop thread) after new epochs were merged into ``keyring`` and saved"
        self._lock = asyncio.Lock()
        self._promote_path = self.dir / PROMOTE_FILE
        self._promote: set[bytes] = self._load_promotions()
        "admitted as non-voters, to become voters once their node is connected (kept on disk)"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._promoting: set[bytes] = set()

    # ------------------------------------------------------------ wiring

    def install(self) -> None:
        """Register the join handlers, the guest policy and the Raft listener."""
        self.endpoint.on_request(JOIN_START, self._on_start)
        self.endpoint.on_request(JOIN_FINISH, self._on_finish)
        self.endpoint.allow_guests(self._guest_ok, JOIN_REQUESTS)
        self.endpoint.subscribe(self._on_transport)
        self.raft.on_applied(self._on_applied)
        for key in sorted(self._promote):      # promotions left pending by a restart
            self._promote_if_up(key)

    async def close(self) -> None:
        """Stop pending promotions; refuse guests from now on."""
        self.endpoint.allow_guests(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def is_member(self, key: bytes) -> bool:
        """True if ``key`` is an enrolled, not revoked device (the node's ``admit``)."""
        rec = self.raft.state.find_device(key)
        return rec is not None and rec.active

    def control_handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        """Control-socket ops (JSON in and out) for the CLI: invite, devices, trust, revoke."""
        return {"invite": self._op_invite, "devices": self._op_devices, "trust": self._op_trust,
                "revoke": self._op_revoke}

    def _guest_ok(self, key: bytes) -> bool:
        if self.raft.state.find_device(key) is not None:
            return False             # members come in through admit; revoked devices not at all
        return self.book.answering(self.clock()) or self._forwarding()

    def _forwarding(self) -> bool:
        if self._forward_joins is not None:
            return self._forward_joins
        rec = self.raft.state.find_device(self.me)
        return rec is not None and rec.trust == "storage"

    def _load_book(self) -> InvitationBook:
        try:
            return InvitationBook.load(self.me, read_private(self._book_path, "the invitation book"))
        except errors.WrongKey:
            return InvitationBook(self.me)            # none yet
        except ValueError as exc:
            log.error("%s is unreadable (%s); pending invitations are forgotten", self._book_path, exc)
            return InvitationBook(self.me)

    def _save_book(self) -> None:
        """Keep pending invitations (hashes only) and their attempt counts across restarts."""
        try:
            _write_private(self._book_path, self.book.dump())
        except OSError as exc:
            log.error("cannot save the invitation book %s: %s", self._book_path, exc)

    # ------------------------------------------------------------ owner operations

    def _require_owner(self, what: str) -> None:
        rec = self.raft.state.find_device(self.me)
        if rec is None or not rec.active or rec.trust != "owner":
            level = rec.trust if rec is not None else "not enrolled"
            raise PermissionDenied(f"only an owner device may {what}; this device is {level}")

    async def invite(self, trust: str = "member", ttl: float | str = 600.0, voter: bool | None = None) -> IssuedInvitation:
        """Create a one-time invitation for a device of level ``trust``; return its code (shown once)."""
        self._require_owner("invite devices")
        seconds = parse_duration(ttl) if isinstance(ttl, str) else float(ttl)
        if trust in READS and self.keyring is None:
            raise errors.BadArgument("a key-less node cannot hand out the vault key")
        inv, code = self.book.create(trust, seconds, self.clock(), voter)
        self._save_book()
        log.info("invitation %s for a %s device, expires in %.0fs", inv.invite_id, trust, seconds)
        return IssuedInvitation(str(code), inv.expires, trust, voter, render_qr(str(code)))

    def devices(self) -> list[DeviceInfo]:
        """The registry, oldest first, with who is online now."""
        online = {k for k, s in self.endpoint.sessions.items() if s.state == "up"} | {self.me}
        recs = sorted(self.raft.state.devices.values(), key=lambda r: (r.admitted_at_ms, r.key))
        return [_info(r, r.key in online and r.active) for r in recs]

    def resolve(self, device: str) -> bytes:
        """A device named by short id, unique short-id or hex-key prefix, or name. NotFound / BadArgument."""
        return resolve_device([(r.key, r.name) for r in self.raft.state.devices.values()], device)

    async def set_trust(self, device: str, level: str) -> DeviceInfo:
        """Change a device's trust level through Raft (the state machine checks the signer is an owner).

        A device raised to a reading level also receives the vault key. Raises
        PermissionDenied / CommandRejected with the state machine's reason.
        """
        if level not in TRUST_LEVELS:
            raise errors.BadArgument(f"unknown trust level {level!r}: use one of {', '.join(TRUST_LEVELS)}")
        key = self.resolve(device)
        await self.raft.execute(SetTrust(key, level), timeout=self.timeout)
        if level in READS and self.keyring is not None:
            await self._seal_to(key, self.raft.state.epoch)
        return self._device(key)

    async def revoke(self, device: str) -> RevokeResult:
        """Revoke a device, rotate the vault key and hand the new epoch to every remaining reader."""
        key = self.resolve(device)
        if key == self.me:
            raise errors.BadArgument("a device cannot revoke itself; revoke it from another owner device")
        async with self._lock:
            await self.raft.execute(Revoke(key), timeout=self.timeout)
            self.endpoint.drop_peer(key, "revoked")
            epoch, resealed = await self._rotate()
        rec = self.raft.state.find_device(key)
        log.info("revoked %s; vault key now at epoch %d", short_id_of(key), epoch)
        return RevokeResult(short_id_of(key), rec.name if rec else "", epoch, resealed)

    async def _rotate(self) -> tuple[int, int]:
        if self.keyring is None:
            raise errors.BadArgument("a key-less node cannot rotate the vault key")
        state = self.raft.state
        epoch = state.epoch + 1
        if max(self.keyring.epochs) >= epoch:
            raise errors.ConflictError(f"this device already holds a key for epoch {epoch} that Raft never started")
        secret = os.urandom(32)
        await self.raft.execute(RotateEpoch(epoch), timeout=self.timeout)
        # Only once Raft has started the epoch does anyone seal with it (a failed rotation leaves nothing behind).
        self.keyring.add_epoch(epoch, secret)
        self._save_keyring()
        resealed = 0
        for rec in list(state.devices.values()):
            if rec.active and rec.trust in READS:
                await self._seal_to(rec.key, epoch)
                resealed += 1
        return epoch, resealed

    async def _seal_to(self, key: bytes, epoch: int) -> bytes | None:
        """Put the keyring sealed to ``key`` for ``epoch`` through Raft unless it is there; return it."""
        assert self.keyring is not None
        have = self.raft.state.find_sealed_key(epoch, key)
        if have is not None:
            return have
        if epoch not in self.keyring.epochs:
            raise errors.WrongKey(f"this device does not hold the key of epoch {epoch} yet; try again shortly")
        await self.raft.execute(PutSealedKey(epoch, key, seal_keyring_for(key, self.keyring)), timeout=self.timeout)
        return self.raft.state.find_sealed_key(epoch, key)

    def _device(self, key: bytes) -> DeviceInfo:
        rec = self.raft.state.find_device(key)
        session = self.endpoint.sessions.get(key)
        return _info(rec, key == self.me or (session is not None and session.state == "up"))

    def _save_keyring(self) -> None:
        assert self.keyring is not None
        self.identity.save_keyring(self.dir / KEYRING_FILE, self.keyring)
        for callback in list(self.on_keyring_changed):
            try:
                callback(self.keyring)
            except Exception:  # a listener's bug must not undo a saved key
                log.exception("on_keyring_changed listener failed")

    # ------------------------------------------------------------ voter promotion (Raft learners first)

    def promote_when_connected(self, key: bytes) -> None:
        """Make the enrolled non-voter ``key`` a Raft voter as soon as its node is connected.

        The intent is kept in ``promote.pending`` so a restart of this node before the
        newcomer connects does not leave it a non-voter for good."""
        if key not in self._promote:
            self._promote.add(key)
            self._save_promotions()
        self._promote_if_up(key)

    def _on_transport(self, event: Any) -> None:
        if isinstance(event, PeerUp) and event.peer_id in self._promote:
            self._promote_if_up(event.peer_id)

    def _promote_if_up(self, key: bytes) -> None:
        session = self.endpoint.sessions.get(key)
        if session is None or session.state != "up" or key in self._promoting:
            return
        self._promoting.add(key)
        task = asyncio.get_running_loop().create_task(self._promote_voter(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._promoting.discard(key))

    def _load_promotions(self) -> set[bytes]:
        try:
            lines = self._promote_path.read_text().split()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            log.error("cannot read %s (%s); pending voter promotions are forgotten", self._promote_path, exc)
            return set()
        keys = set()
        for line in lines:
            try:
                key = bytes.fromhex(line)
            except ValueError:
                key = b""
            if len(key) == 32:
                keys.add(key)
            else:
                log.error("%s: ignoring a line that is not a device key: %.70r", self._promote_path, line)
        return keys

    def _save_promotions(self) -> None:
        try:
            _write_private(self._promote_path, "".join(k.hex() + "\n" for k in sorted(self._promote)).encode())
        except OSError as exc:
            log.error("cannot save pending voter promotions to %s: %s", self._promote_path, exc)

    async def _promote_voter(self, key: bytes) -> None:
        """A device admitted as a future voter is connected: make it a voter now.

        Admitting a voter before its node runs would grow the Raft configuration
        with a silent member (a 1-device vault would lose its quorum), so
        devices join as non-voting replicas and are promoted once connected.
        Retried every second while it stays connected and no majority answers."""
        while True:
            rec = self.raft.state.find_device(key)
            if rec is None or not rec.active or rec.voter:
                break
            try:
                await self.raft.execute(SetVoter(key, True), timeout=self.timeout)
                log.info("%s is now a Raft voter", short_id_of(key))
                break
            except ConsensusError as exc:
                session = self.endpoint.sessions.get(key)
                if session is None or session.state != "up":
                    log.warning("could not make %s a voter yet (retried when it reconnects): %s",
                                short_id_of(key), exc)
                    return
                await asyncio.sleep(1.0)
        self._promote.discard(key)
        self._save_promotions()

    # ------------------------------------------------------------ Raft listener (every replica)

    def _on_applied(self, signed: Any, result: Any) -> None:
        if not result.accepted:
            return
        cmd = signed.command
        if isinstance(cmd, Revoke):
            if cmd.device == self.me:
                log.error("this device was revoked from the vault")
            else:
                self.endpoint.drop_peer(cmd.device, "revoked")
        elif isinstance(cmd, PutSealedKey) and cmd.device == self.me and self.keyring is not None:
            try:
                ring = self.identity.open_keyring(cmd.sealed)
            except errors.WrongKey as exc:
                log.error("a vault key sealed to this device does not open: %s", exc)
                return
            mine = self.keyring.epochs
            new = {e: s for e, s in ring.epochs.items() if e not in mine}
            if new:
                for e, s in sorted(new.items()):
                    self.keyring.add_epoch(e, s)
                self._save_keyring()
                log.info("vault key epochs %s received; sealing with epoch %d", sorted(new), self.keyring.current)

    # ------------------------------------------------------------ join service (inviter side)

    def _joiner_of(self, session: Any, body: Any) -> bytes:
        vouched = body.get("for") if isinstance(body, dict) else None
        if vouched is not None and not session.guest and self.is_member(session.peer_id):
            if not (isinstance(vouched, bytes) and len(vouched) == 32):
                raise RequestFailed("bad_request", "'for' must be a 32-byte device key")
            return vouched           # a member forwarding a join vouches for the joiner's TLS key
        return session.peer_id

    async def _on_start(self, session: Any, body: Any) -> dict[str, Any]:
        try:
            return await self._start(session, body)
        finally:
            self._save_book()

    async def _on_finish(self, session: Any, body: Any) -> dict[str, Any]:
        try:
            return await self._finish(session, body)
        finally:
            self._save_book()

    async def _start(self, session: Any, body: Any) -> dict[str, Any]:
        try:
            loc, inv_id, msg_a = parse_start(body)
            if loc != locator_of(self.me):
                return await self._forward(session, JOIN_START, body, loc)
            joiner = self._joiner_of(session, body)
            self._expire_handshakes()
            inv = self.book.begin(inv_id, joiner, self.clock())
            hs = InviterHandshake(inv.password, inv_id, self.me, joiner)
            answer = hs.start(msg_a)
            self._handshakes[(inv_id, joiner)] = (hs, time.monotonic() + HANDSHAKE_TTL)
            return answer
        except errors.InvitationError as exc:
            raise RequestFailed(exc.code, str(exc)) from exc

    async def _finish(self, session: Any, body: Any) -> dict[str, Any]:
        try:
            loc, inv_id = parse_finish_ids(body)
            if loc != locator_of(self.me):
                return await self._forward(session, JOIN_FINISH, body, loc)
            joiner = self._joiner_of(session, body)
            entry = self._handshakes.pop((inv_id, joiner), None)
            if entry is None:
                raise errors.UnknownInvitation("no join handshake in progress for this invitation and device")
            hs = entry[0]
            try:
                proof = hs.finish(body)
            except errors.InvitationError:
                self.book.fail(inv_id, joiner)
                log.warning("join attempt on invitation %s by %s failed: wrong code", inv_id, short_id_of(joiner))
                raise
            inv = self.book.get(inv_id)
            if inv is not None and proof.want is not None and proof.want != inv.trust:
                self.book.fail(inv_id, joiner)
                raise errors.WrongLevel(f"this invitation enrolls a {inv.trust} device, not {proof.want}; "
                                        f"invite with --trust {proof.want}")
            inv = self.book.consume(inv_id, joiner, self.clock())
            try:
                grant = await self._grant(proof.joiner, proof.name, proof.kind, inv.trust, inv.voter)
            except (ConsensusError, errors.PcloudError) as exc:
                self.book.release(inv_id, joiner)
                code = "no_quorum" if isinstance(exc, NoQuorum) else "refused"
                raise RequestFailed(code, f"the vault did not admit the device: {exc}") from exc
            log.info("admitted %s (%s) as %s", short_id_of(joiner), grant.name, grant.trust)
            return {"grant": hs.seal_grant(grant)}
        except errors.InvitationError as exc:
            raise RequestFailed(exc.code, str(exc)) from exc

    async def _forward(self, session: Any, msg_type: str, body: dict[str, Any], loc: str) -> dict[str, Any]:
        """Pass a join naming another inviter to our session with it (the cloud node's job)."""
        if not self._forwarding():
            raise RequestFailed("unknown_inviter", f"this device is not the inviter {loc} and does not forward joins")
        targets = [s for k, s in self.endpoint.sessions.items()
                   if s.state == "up" and locator_of(k) == loc and self.is_member(k)]
        if len(targets) != 1:
            raise RequestFailed("unknown_inviter", f"inviter {loc} is not connected here (is its node running?)")
        return await targets[0].request(msg_type, dict(body, **{"for": session.peer_id}), timeout=self.timeout + 5)

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        for key, (_, deadline) in list(self._handshakes.items()):
            if now > deadline:
                del self._handshakes[key]
                self.book.fail(*key)

    async def _grant(self, joiner: bytes, name: str, kind: str | None, trust: str, voter: bool | None) -> Grant:
        state = self.raft.state
        if voter is None:
            voter = trust in ("owner", "member", "storage") and kind != "phone"
        voters_before = state.voters()
        rec = state.find_device(joiner)
        if rec is None:
            name = self._unique_name(name)
            # Non-voter first: promoted by _promote_voter once its node is connected.
            await self.raft.execute(AdmitDevice(joiner, name, trust, False), timeout=self.timeout)
            if kind == "phone" and trust != "storage":
                # a phone keeps metadata and documents; file content on open or under its pins
                await self.raft.execute(SetPolicy(joiner, "on-demand"), timeout=self.timeout)
            if voter:
                self.promote_when_connected(joiner)
        elif rec.revoked:
            raise CommandRejected("this device key was revoked; a revoked device cannot rejoin with the same key")
        elif rec.trust != trust:
            raise CommandRejected(f"this device is already enrolled as {rec.name} ({rec.trust}); "
                                  "change its level with `pcloud trust` instead")
        else:
            name = rec.name                                         # a retry after a lost answer
        sealed = None
        if trust in READS:
            sealed = await self._seal_to(joiner, state.epoch)
        peers = sorted(k for k, r in state.devices.items() if r.active and k != joiner)
        addresses = {}
        for k in peers:
            s = self.endpoint.sessions.get(k)
            if s is not None and s.state == "up" and _ip_tuple(s.addr):
                addresses[k] = (str(s.addr[0]), int(s.addr[1]))
        return Grant(state.genesis.encode(), trust, voter, name, voters_before, peers, addresses, sealed,
                     self.vault_tag)

    def _unique_name(self, name: str) -> str:
        taken = {r.name for r in self.raft.state.devices.values()}
        if name not in taken:
            return name
        for i in range(2, 1000):
            candidate = f"{name[:58]}-{i}"
            if candidate not in taken:
                return candidate
        raise errors.BadArgument(f"too many devices named {name!r}")

    # ------------------------------------------------------------ control ops (JSON)

    async def _op_invite(self, req: dict[str, Any]) -> dict[str, Any]:
        voter = req.get("voter")
        inv = await self.invite(str(req.get("trust", "member")), req.get("ttl", 600.0),
                                None if voter is None else bool(voter))
        return inv.to_json()

    async def _op_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"devices": [d.to_json() for d in self.devices()]}

    async def _op_trust(self, req: dict[str, Any]) -> dict[str, Any]:
        info = await self.set_trust(str(req["device"]), str(req.get("level") or req["trust"]))
        return {"device": info.to_json()}

    async def _op_revoke(self, req: dict[str, Any]) -> dict[str, Any]:
        result = await self.revoke(str(req["device"]))
        return asdict(result)


def attach(node: Any) -> Membership:
    """Build, install and register the service on a started ``pcloud.node.Node``; return it.

    Uses the node's identity, keyring (None on the cloud node, whose vault tag
    then comes from its bootstrap file), endpoint, RaftNode and directory, and
    registers the control ops (invite, devices, trust, revoke) with
    ``node.add_handler``. The node's ``admit`` must refuse revoked devices
    (``Membership.is_member`` is the reference).
    """
    existing = getattr(node, "membership", None)
    if existing is not None:
        return existing          # Node.start attaches it already; a second service would double every handler
    tag = None if node.keyring is not None else bytes.fromhex(node.boot["vault_tag"])
    service = Membership(identity=node.identity, keyring=node.keyring, endpoint=node.endpoint, raft=node.raft,
                         vault_dir=node.dir, timeout=max(node.config.quorum_timeout, 5.0), vault_tag=tag)
    service.install()
    for op, handler in service.control_handlers().items():
        node.add_handler(op, handler)

    def refresh_handles(keyring: Keyring) -> None:
        # The node's open vault handles (its own and each watched folder's) loaded their own Keyring
        # from keyring.sealed; without this they would keep sealing new objects with the old epoch
        # (readable by a revoked device) until the node restarts.
        handles = [getattr(node, "_vault", None)] + [getattr(fs, "vault", None) for fs in getattr(node, "folders", [])]
        for vault in handles:
            ring = getattr(vault, "keyring", None)
            if ring is None or ring is keyring:
                continue
            for epoch, secret in sorted(keyring.epochs.items()):
                if epoch not in ring.epochs:
                    ring.add_epoch(epoch, secret)
    service.on_keyring_changed.append(refresh_handles)
    return service


def resolve_device(devices: list[tuple[bytes, str]], text: str) -> bytes:
    """Pick the key ``text`` names among ``(key, name)`` pairs: an exact name, or a unique prefix of a
    short id (dashes and case ignored) or of a hex key (8+ digits). NotFound / BadArgument (ambiguous)."""
    text = str(text).strip()
    if not text:
        raise errors.BadArgument("name a device by its short id, a unique prefix of it, or its name")
    by_name = [k for k, n in devices if n == text]
    if len(by_name) == 1:
        return by_name[0]
    norm = text.upper().replace("-", "").replace(" ", "")
    matches = {k for k, _ in devices if short_id_of(k).replace("-", "").startswith(norm)}
    if len(text) >= 8 and all(c in "0123456789abcdef" for c in text.lower()):
        matches |= {k for k, _ in devices if k.hex().startswith(text.lower())}
    matches |= set(by_name)
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        raise errors.NotFound(f"no device {text!r} in this vault (see `pcloud devices`)")
    names = dict(devices)
    listed = ", ".join(f"{short_id_of(k)} ({names[k]})" for k in sorted(matches))
    raise errors.BadArgument(f"{text!r} is ambiguous: it matches {listed}")


def _info(rec: DeviceRecord, online: bool) -> DeviceInfo:
    return DeviceInfo(short_id_of(rec.key), rec.key.hex(), rec.name, rec.trust, rec.voter, online, rec.revoked,
                      rec.policy)


def _ip_tuple(addr: Any) -> bool:
    return (isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[0], str) and isinstance(addr[1], int)
            and not addr[0].startswith("fd70:636c:"))    # not a transport-internal virtual (relay) address


__all__ = ["attach", "DeviceInfo", "IssuedInvitation", "JoinResult", "Membership", "READS", "RevokeResult", "find_inviter",
           "join", "render_qr", "resolve_device", "write_enrollment"]
