"""Enrollment over real endpoints and real Raft replicas on 127.0.0.1: invite, join, trust, revoke.

Each device is a real transport Endpoint + SessionLink + RaftNode + Membership
(``membership_helpers.Device``) in one process; the joiner runs the real
``pcloud.membership.join`` with its own endpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from membership_helpers import Device, leader_ready, run, until

from consensus.commands import CasHead, SetTrust
from consensus.errors import PermissionDenied
from pcloud.errors import (InvitationExpired, InvitationLocked, InvitationUsed, NotFound, BadArgument, WrongCode,
                           WrongKey)
from pcloud.identity import DeviceIdentity, short_id_of
from pcloud.invitation import MAX_ATTEMPTS, InviteCode
from pcloud.membership import join
from pcloud.store import sealing
from pcloud.store.objects import Blob, Chunk
from pcloud.vault import Vault
from transport.errors import AuthenticationError

pytestmark = pytest.mark.slow


def wrong(code: str) -> str:
    c = InviteCode.parse(code)
    return str(InviteCode(c.locator, c.invite_id, "A" * 12 if c.secret != "A" * 12 else "B" * 12))


async def owner(tmp: Path, clock=None) -> tuple[Device, Vault]:
    vault = Vault.create(tmp / "a", name="laptop-a")
    dev = Device(tmp / "a", **({"clock": clock} if clock else {}))
    dev.keyring = vault.keyring          # the node and the vault handle share one keyring
    await dev.start()
    await leader_ready(dev)
    return dev, vault


def test_invite_join_trust_and_revoke_across_replicas(tmp_path: Path) -> None:
    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        devices = [a]
        try:
            # --- a member laptop joins (voter), then runs its own replica
            inv = await a.membership.invite("member", "10m")
            assert "█" in inv.qr_text or "▀" in inv.qr_text
            res = await join(inv.code, tmp_path / "b", name="laptop-b", relay=a.address)
            assert (res.trust, res.voter, res.vault_id) == ("member", True, vault_a.vault_id)
            with Vault.open(tmp_path / "b") as vb:
                assert vb.keyring.epochs == vault_a.keyring.epochs and vb.vault_id == vault_a.vault_id
            b = await Device(tmp_path / "b").start()
            devices.append(b)
            await until(lambda: b.raft.state.find_device(b.key) is not None
                        and b.raft.state.digest() == a.raft.state.digest(), what="b to replicate the registry")
            await until(lambda: b.raft.role in ("follower", "leader"), what="b to become a voter")

            # --- a reader phone joins (non-voter by its kind); a storage node joins (never gets the key)
            inv = await a.membership.invite("reader", 600)
            rc = await join(inv.code, tmp_path / "c", name="phone-c", relay=a.address, kind="phone")
            assert (rc.trust, rc.voter) == ("reader", False)
            c = await Device(tmp_path / "c").start()
            devices.append(c)
            inv = await a.membership.invite("storage", 600)
            rs = await join(inv.code, tmp_path / "s", name="cloud", relay=a.address)
            assert (rs.trust, rs.voter) == ("storage", True)
            assert not (tmp_path / "s" / "keyring.sealed").exists()
            with pytest.raises(WrongKey):
                Vault.open(tmp_path / "s")
            for d in (a, b, c):
                await until(lambda d=d: len(d.raft.state.devices) == 4, what="4 devices on every replica")
                st = d.raft.state
                s_key = bytes.fromhex(next(x.key for x in a.membership.devices() if x.name == "cloud"))
                assert st.find_sealed_key(0, s_key) is None                     # storage: never the key
                assert st.find_sealed_key(0, c.key) is not None
                assert st.find_device(c.key).trust == "reader"

            # The joiners can read what the owner sealed.
            oid = vault_a.store.put(Blob(()))
            env = vault_a.store.get_sealed(oid)
            assert sealing.open_verified(c.keyring, env, oid) == Blob(())

            # --- the reader's commands are refused on every replica, with the reason
            with pytest.raises(PermissionDenied, match="reader"):
                await c.raft.execute(CasHead("main", None, b"\x01" * 32))
            with pytest.raises(PermissionDenied):
                await c.raft.execute(SetTrust(c.key, "owner"))
            with pytest.raises(PermissionDenied, match="member device may not SetTrust"):
                await b.membership.set_trust("phone-c", "member")              # members cannot either
            for d in (a, b, c):
                await until(lambda d=d: sum(1 for s, _, code, _ in d.applied if s == c.key and code == "denied") == 2,
                            what="c's commands denied on every replica")

            # --- devices listing and name/prefix resolution
            listing = {x.name: x for x in a.membership.devices()}
            assert set(listing) == {"laptop-a", "laptop-b", "phone-c", "cloud"}
            assert listing["phone-c"].online and not listing["phone-c"].revoked
            assert a.membership.resolve(short_id_of(c.key)[:9]) == c.key
            assert a.membership.resolve(c.key.hex()[:12]) == c.key
            assert a.membership.resolve(short_id_of(c.key)) == c.key
            with pytest.raises(NotFound):
                a.membership.resolve("nobody")

            # --- trust change by the owner, then revoke with key rotation
            info = await a.membership.set_trust("phone-c", "member")
            assert info.trust == "member"
            result = await a.membership.revoke("phone-c")
            assert result.epoch == 1 and result.resealed == 2                    # a and b, not c, not storage
            assert vault_a.keyring.current == 1
            for d in (a, b):
                await until(lambda d=d: d.raft.state.epoch == 1 and d.raft.state.find_device(c.key).revoked,
                            what="revocation on every replica")
            await until(lambda: b.keyring.current == 1, what="b to receive the new epoch")
            assert DeviceIdentity.load(tmp_path / "b").load_keyring(tmp_path / "b" / "keyring.sealed").current == 1
            await until(lambda: c.key not in a.endpoint.sessions and c.key not in b.endpoint.sessions,
                        what="c's sessions dropped")
            # An object sealed with the new epoch opens for b, not for the revoked c.
            secret = Chunk(b"sealed after the revocation")
            oid = vault_a.store.put(secret)
            env = vault_a.store.get_sealed(oid)
            assert sealing.open_verified(b.keyring, env, oid) == secret
            with pytest.raises(WrongKey, match="epoch 1"):
                sealing.open_verified(c.keyring, env, oid)
            # Its new connections are refused, and its commands are refused on every replica.
            c.endpoint.unkeep(a.key)
            await until(lambda: a.key not in c.endpoint.sessions, what="c to see its session closed")
            with pytest.raises(AuthenticationError):
                await c.endpoint.connect(a.key, a.endpoint.local_address, timeout=3)
            before = [sum(1 for s, _, code, reason in d.applied if s == c.key and "revoked" in reason) for d in (a, b)]
            forged = c.raft.sign(CasHead("main", None, b"\x03" * 32))
            with pytest.raises(PermissionDenied, match="revoked"):
                await a.raft.submit(forged)
            for i, d in enumerate((a, b)):
                await until(lambda d=d, i=i: sum(1 for s, _, code, reason in d.applied
                                                 if s == c.key and "revoked" in reason) == before[i] + 1,
                            what="revoked command refused on every replica")
        finally:
            for d in devices:
                await d.stop()
            vault_a.close()

    run(body(), timeout=120)


def test_wrong_expired_reused_and_locked_codes_fail_cleanly(tmp_path: Path) -> None:
    now = [1000.0]

    async def body() -> None:
        a, vault_a = await owner(tmp_path, clock=lambda: now[0])
        try:
            inv = await a.membership.invite("member", 600)
            with pytest.raises(WrongCode):
                await join(wrong(inv.code), tmp_path / "x", name="x", relay=a.address)
            assert not (tmp_path / "x" / "vault.json").exists() and len(a.raft.state.devices) == 1
            res = await join(inv.code, tmp_path / "x", name="x", relay=a.address)   # same dir, same key: fine
            assert res.trust == "member"
            with pytest.raises(InvitationUsed):
                await join(inv.code, tmp_path / "y", name="y", relay=a.address)
            inv = await a.membership.invite("member", 60)
            now[0] += 61
            with pytest.raises(InvitationExpired):
                await join(inv.code, tmp_path / "y", name="y", relay=a.address)
            inv = await a.membership.invite("member", 600)
            for _ in range(MAX_ATTEMPTS):
                with pytest.raises(WrongCode):
                    await join(wrong(inv.code), tmp_path / "y", name="y", relay=a.address)
            with pytest.raises(InvitationLocked):
                await join(inv.code, tmp_path / "y", name="y", relay=a.address)
            assert not (tmp_path / "y" / "vault.json").exists()
            assert len(a.raft.state.devices) == 2
            with pytest.raises(BadArgument):
                await a.membership.invite("admin", 600)
        finally:
            await a.stop()
            vault_a.close()

    run(body())


def test_join_through_a_forwarding_storage_node(tmp_path: Path) -> None:
    """Across NATs the joiner reaches the cloud node, which forwards the handshake to the inviter."""
    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        devices = [a]
        try:
            inv = await a.membership.invite("storage", 600)
            await join(inv.code, tmp_path / "s", name="cloud", relay=a.address)
            s = await Device(tmp_path / "s").start()
            devices.append(s)
            await until(lambda: a.key in s.endpoint.sessions and s.raft.state.find_device(s.key) is not None,
                        what="the cloud node to connect")
            inv = await a.membership.invite("member", 600)
            res = await join(inv.code, tmp_path / "p", name="phone", relay=s.address, kind="phone")
            assert (res.trust, res.voter) == ("member", False)
            with Vault.open(tmp_path / "p") as vp:
                assert vp.keyring.epochs == vault_a.keyring.epochs
            # A wrong code through the relay fails just the same, and the relay learns no key.
            inv = await a.membership.invite("member", 600)
            with pytest.raises(WrongCode):
                await join(wrong(inv.code), tmp_path / "q", name="q", relay=s.address)
        finally:
            for d in devices:
                await d.stop()
            vault_a.close()

    run(body())


def test_only_owners_invite_and_guests_reach_only_join(tmp_path: Path) -> None:
    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        devices = [a]
        try:
            inv = await a.membership.invite("member", 600)
            await join(inv.code, tmp_path / "b", name="b", relay=a.address)
            b = await Device(tmp_path / "b").start()
            devices.append(b)
            await until(lambda: b.raft.state.find_device(b.key) is not None, what="b registered")
            with pytest.raises(PermissionDenied, match="only an owner"):
                await b.membership.invite("member", 600)
            # A stranger gets a guest session while an invitation is pending, and nothing but join.*.
            from transport.endpoint import Endpoint
            from transport.errors import RequestFailed
            await a.membership.invite("member", 600)
            stranger = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: False)
            try:
                session = await stranger.connect_unpinned(a.endpoint.local_address, lambda k: True)
                with pytest.raises(RequestFailed) as exc:
                    await session.request("objects.want", {})
                assert exc.value.code == "forbidden"
                assert stranger.device_id not in a.endpoint.sessions
                assert stranger.device_id not in a.raft._link.connected_peers()
            finally:
                await stranger.close()
        finally:
            for d in devices:
                await d.stop()
            vault_a.close()

    run(body())


def test_join_finds_the_inviter_on_the_lan_by_mdns(tmp_path: Path) -> None:
    """No --relay: the joiner browses mDNS (bound to loopback) for the code's locator."""
    from transport.discovery import Discovery

    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        port = a.endpoint.local_address[1]
        adv = Discovery(a.key, port, vault_a.keyring.vault_tag(), lambda e: None, interfaces=["127.0.0.1"])
        await adv.start()
        try:
            inv = await a.membership.invite("member", 600)
            res = await join(inv.code, tmp_path / "b", name="b", mdns_interfaces=["127.0.0.1"], timeout=10)
            assert res.trust == "member"
            # A code whose locator nobody advertises: a clear "not found" after the timeout.
            from transport.errors import PeerUnreachable
            other = InviteCode.parse(inv.code)
            ghost = str(InviteCode("ZZZZ" if other.locator != "ZZZZ" else "YYYY", other.invite_id, other.secret))
            with pytest.raises(PeerUnreachable, match="--relay"):
                await join(ghost, tmp_path / "c", name="c", mdns_interfaces=["127.0.0.1"], timeout=2)
        finally:
            await adv.close()
            await a.stop()
            vault_a.close()

    run(body())


def test_invitations_survive_a_node_restart_and_stay_locked(tmp_path: Path) -> None:
    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        inv = await a.membership.invite("member", 600)
        locked = await a.membership.invite("member", 600)
        for _ in range(MAX_ATTEMPTS):
            with pytest.raises(WrongCode):
                await join(wrong(locked.code), tmp_path / "x", name="x", relay=a.address)
        await a.stop()
        book = (tmp_path / "a" / "invitations.bin").read_bytes()
        assert InviteCode.parse(inv.code).secret.encode() not in book       # hashes only
        a = Device(tmp_path / "a")
        a.keyring = vault_a.keyring
        await a.start()
        try:
            await leader_ready(a)
            with pytest.raises(InvitationLocked):          # a restart does not unlock it
                await join(locked.code, tmp_path / "x", name="x", relay=a.address)
            res = await join(inv.code, tmp_path / "b", name="b", relay=a.address)
            assert res.trust == "member"
        finally:
            await a.stop()
        (tmp_path / "a" / "invitations.bin").write_bytes(b"\x93garbage")
        a = Device(tmp_path / "a")
        a.keyring = vault_a.keyring
        await a.start()                                    # an unreadable book is logged and forgotten
        try:
            assert not a.membership.book.live(a.clock())
        finally:
            await a.stop()
            vault_a.close()

    run(body())


def test_a_pending_voter_promotion_survives_the_inviters_restart(tmp_path: Path) -> None:
    """The joiner is admitted as a non-voter and promoted once its node connects; if the inviter
    restarts in between, the intent comes back from promote.pending (and bad lines are ignored)."""
    async def body() -> None:
        a, vault_a = await owner(tmp_path)
        inv = await a.membership.invite("member", 600)
        res = await join(inv.code, tmp_path / "b", name="laptop-b", relay=a.address)
        assert res.voter
        port = a.endpoint.local_address[1]
        await a.stop()
        pending = tmp_path / "a" / "promote.pending"
        b_key = DeviceIdentity.load(tmp_path / "b").public_key
        assert pending.read_text().split() == [b_key.hex()]
        pending.write_text(pending.read_text() + "not-a-key\n")
        a = Device(tmp_path / "a", port=port)          # where b's node.json says the inviter is
        a.keyring = vault_a.keyring
        await a.start()
        b = None
        try:
            await leader_ready(a)
            assert not a.raft.state.find_device(b_key).voter
            b = await Device(tmp_path / "b").start()
            await until(lambda: a.raft.state.find_device(b_key).voter, what="b to be promoted after the restart")
            await until(lambda: b.raft.role in ("follower", "leader"), what="b to run as a voter")
            await until(lambda: pending.read_text() == "", what="the promotion to be forgotten once done")
        finally:
            if b is not None:
                await b.stop()
            await a.stop()
            vault_a.close()

    run(body())
