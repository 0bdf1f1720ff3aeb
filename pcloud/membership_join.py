"""Joining a vault (the new device's side): find the inviter, run the handshake, write the vault directory.

    result = await join("PB4H-J4-6IYP-F566-PUNM", "~/pcloud", name="phone", relay="203.0.113.7:4433")

The inviter is found on the LAN by mDNS (the code's locator against the device
ids advertised) or reached at ``relay`` (the inviter itself, or a cloud node
that forwards the join to it). The handshake itself is
``pcloud.join_handshake.joiner_flow``; this module is its asyncio glue and the
directory writer. The service side is ``pcloud.membership``.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.errors import CommandRejected, NoQuorum
from transport.errors import AuthenticationError, RequestFailed

from . import errors
from .identity import DeviceIdentity, _write_private
from .invitation import InviteCode
from .join_handshake import Grant, MalformedJoin, async_drive, joiner_flow

READS = frozenset({"owner", "member", "reader"})
"trust levels that read the vault (and so receive its key)"
GENESIS_FILE = "genesis.bin"
NODE_FILE = "node.json"
KEYRING_FILE = "keyring.sealed"
META_FILE = "vault.json"
_WIRE_ERRORS: dict[str, type[errors.InvitationError]] = {
    cls.code: cls for cls in (errors.WrongCode, errors.UnknownInvitation, errors.InvitationExpired,
                              errors.InvitationUsed, errors.InvitationLocked, errors.WrongLevel, MalformedJoin)}


@dataclass(frozen=True)
class JoinResult:
    """What `join` made of the new device."""

    device_id: str
    vault_id: str
    trust: str
    voter: bool
    name: str
    vault_dir: str


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise errors.BadArgument(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def find_inviter(code: InviteCode, interfaces: list[str] | str = ("127.0.0.1",),
                       timeout: float = 5.0) -> tuple[str, int]:
    """Browse mDNS for the device whose advertised id matches the code's locator; return its address.

    The advertisement's vault hint cannot be checked (the joiner holds no vault
    tag yet): the PAKE authenticates whoever answers. Raises PeerUnreachable.
    """
    from zeroconf import IPVersion, InterfaceChoice, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    from transport.discovery import SERVICE_TYPE
    from transport.errors import PeerUnreachable

    found: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    azc = AsyncZeroconf(interfaces=InterfaceChoice.All if interfaces == "all" else list(interfaces),
                        ip_version=IPVersion.V4Only)
    tasks: set[asyncio.Task[Any]] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(azc.zeroconf, 1500) or info.port is None:
            return
        try:
            key = bytes.fromhex((info.properties.get(b"id") or b"").decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        addrs = [a for a in info.parsed_addresses(IPVersion.V4Only) if not a.startswith("169.254.")]
        if len(key) == 32 and code.matches(key) and addrs and not found.done():
            found.set_result((addrs[0], info.port))

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            t = asyncio.ensure_future(resolve(name))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        return await asyncio.wait_for(found, timeout)
    except TimeoutError:
        raise PeerUnreachable(f"no device with id {code.locator}… answers on the LAN; is the inviter's node "
                              "running (`pcloud serve`)? Across networks use --relay HOST:PORT") from None
    finally:
        for t in tasks:
            t.cancel()
        await browser.async_cancel()
        await azc.async_close()


async def join(code: str, vault_dir: str | os.PathLike[str], name: str | None = None, relay: str | None = None, *,
               kind: str | None = None, timeout: float = 15.0,
               mdns_interfaces: list[str] | str = ("127.0.0.1",), expect_trust: str | None = None) -> JoinResult:
    """Enroll this device with an invitation code and write its vault directory.

    ``relay`` (HOST:PORT) is where to send the join: the inviter itself, or a
    cloud node that forwards it to the inviter; without it the inviter is found
    on the LAN by mDNS. The device key is created first (and reused by a retry).
    With ``expect_trust`` (the cloud node: 'storage'), an invitation of another
    level is refused by the inviter before anything is admitted (WrongLevel).
    Raises WrongCode, UnknownInvitation, InvitationExpired, InvitationUsed,
    InvitationLocked, VaultExists, PeerUnreachable, or InvitationError.
    """
    parsed = InviteCode.parse(code)
    p = Path(vault_dir)
    if (p / META_FILE).exists():
        raise errors.VaultExists(f"{p} already holds a vault; join into an empty directory")
    p.mkdir(parents=True, exist_ok=True)
    identity = DeviceIdentity.load_or_create(p)
    name = name or os.uname().nodename
    addr = _hostport(relay) if relay else await find_inviter(parsed, mdns_interfaces, timeout=min(timeout, 10.0))
    grant = await _run_join(parsed, identity, name[:64], kind, addr, timeout, expect_trust)
    if expect_trust is not None and grant.trust != expect_trust:       # an inviter that ignored 'want'
        raise errors.WrongLevel(f"the inviter enrolled this device as {grant.trust}, not {expect_trust}; nothing "
                                f"was written here (revoke {identity.short_id} and invite with --trust {expect_trust})")
    vault_id = write_enrollment(p, identity, grant)
    return JoinResult(identity.short_id, vault_id, grant.trust, grant.voter, grant.name, str(p))


async def _run_join(code: InviteCode, identity: DeviceIdentity, name: str, kind: str | None,
                    addr: tuple[str, int], timeout: float, want: str | None = None) -> Grant:
    from transport.endpoint import Endpoint

    host = "127.0.0.1" if addr[0].startswith("127.") else ("::" if ":" in addr[0] else "0.0.0.0")
    endpoint = await Endpoint.start(host, 0, identity.seed(), admit=lambda key: False)
    try:
        # Any server may answer: the PAKE (and the key it confirms) decides, not the address.
        try:
            session = await endpoint.connect_unpinned(addr, lambda key: True, timeout=timeout)
        except AuthenticationError as exc:
            raise errors.InvitationError(f"the device at {addr[0]}:{addr[1]} does not take joins now (no pending "
                                         f"invitation there, or this device was revoked): {exc}") from exc

        async def send(request: Any) -> Any:
            try:
                return await session.request(request.msg_type, request.body, timeout=timeout)
            except RequestFailed as exc:
                raise _wire_error(exc) from exc
        grant = await async_drive(joiner_flow(code, identity, name, kind, session.peer_id, want), send)
        if session.peer_id in grant.peers:
            # The device we dialled (the inviter, or the cloud node that forwarded) is reachable there.
            grant.addresses.setdefault(session.peer_id, addr)
        return grant
    finally:
        await endpoint.close()


def _wire_error(exc: RequestFailed) -> Exception:
    cls = _WIRE_ERRORS.get(exc.code)
    if cls is not None:
        return cls(exc.message)
    if exc.code == "no_quorum":
        return NoQuorum(exc.message)
    if exc.code == "refused":
        return CommandRejected(exc.message)
    if exc.code == "forbidden":
        return errors.InvitationError("the device answering is not accepting joins (no live invitation)")
    return errors.InvitationError(f"the inviter refused: {exc.code}: {exc.message}")


def write_enrollment(vault_dir: Path, identity: DeviceIdentity, grant: Grant) -> str:
    """Write a joined device's directory from its grant; return the vault id (hex).

    Order (crash-safe: ``vault.json`` last, a retry redoes the rest): store,
    ``genesis.bin``, ``node.json`` (bootstrap: voters, peers, addresses, vault
    tag), ``keyring.sealed`` for reading levels only (checked to open with this
    device's key first), ``vault.json``. A storage device gets no keyring.
    """
    from consensus.commands import Genesis

    from .store.objectstore import INDEX, ObjectStore
    from .vault import VAULT_FORMAT

    try:
        genesis = Genesis.decode(grant.genesis)
    except CommandRejected as exc:
        raise MalformedJoin(f"the inviter's genesis record is invalid: {exc}") from exc
    keyring = None
    if grant.trust in READS:
        if grant.sealed_keyring is None:
            raise MalformedJoin(f"a {grant.trust} device must receive the vault key, and none came")
        keyring = identity.open_keyring(grant.sealed_keyring)
    elif grant.sealed_keyring is not None:
        raise MalformedJoin("a storage device must never receive the vault key")
    if not (vault_dir / "store" / INDEX).exists():
        ObjectStore.create(vault_dir / "store", keyring).close()
    _write_private(vault_dir / GENESIS_FILE, genesis.encode())
    boot = {"voters": [k.hex() for k in grant.voters], "peers": [k.hex() for k in grant.peers],
            "addresses": {k.hex(): f"{h}:{p}" for k, (h, p) in grant.addresses.items()},
            "vault_tag": grant.vault_tag.hex()}
    _write_private(vault_dir / NODE_FILE, json.dumps(boot, indent=2).encode())
    if keyring is not None:
        _write_private(vault_dir / KEYRING_FILE, grant.sealed_keyring)
    meta = {"format": VAULT_FORMAT, "vault_id": genesis.vault_id.hex(), "device_name": grant.name,
            "created_ns": time.time_ns(), "trust": grant.trust}
    _write_private(vault_dir / META_FILE, json.dumps(meta, indent=2).encode())
    return genesis.vault_id.hex()


__all__ = ["JoinResult", "READS", "find_inviter", "join", "write_enrollment"]
