"""LAN discovery over mDNS: advertise and browse ``_pcloud._udp.local.``.

Invariants:
- The TXT record never names the vault. It carries the device id, a random
  salt chosen at each start, and ``h = HMAC-SHA256(vault_tag, id || salt)``
  truncated to 16 bytes: a member (holding ``vault_tag``) recognises its vault,
  a stranger sees unlinkable values that change with every restart.
- Only peers whose tag verifies are reported; our own advertisement is ignored.
- Interfaces are always explicit: the default is loopback only. Inside a lab
  host pass its LAN address (or ``"all"`` when the namespace holds only its
  own link); never multicast on every interface of a real machine by default.
- Events (``PeerFound``/``PeerLost``) go to the ``on_event`` callback from the
  event loop; the callback must not block.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from zeroconf import BadTypeInNameException, IPVersion, InterfaceChoice, NonUniqueNameException, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from transport.errors import LocalProtocolError, TransportError

log = logging.getLogger("pcloud.transport.discovery")

SERVICE_TYPE = "_pcloud._udp.local."
TAG_BYTES = 16
SALT_BYTES = 8
RESOLVE_TIMEOUT_MS = 1500


@dataclass(frozen=True)
class PeerFound:
    """A device of our vault advertises itself on the LAN."""

    peer_id: bytes  #: its 32-byte device key
    addrs: tuple[str, ...]  #: its IP addresses on the LAN
    port: int  #: its pcloud UDP port


@dataclass(frozen=True)
class PeerLost:
    """A device's advertisement went away (it stopped, or left the LAN)."""

    peer_id: bytes  #: its 32-byte device key


DiscoveryEvent = Union[PeerFound, PeerLost]


def vault_hint(vault_tag: bytes, device_id: bytes, salt: bytes) -> bytes:
    """The keyed hash a member computes to recognise a device of its vault."""
    return hmac.new(vault_tag, b"pcloud/mdns/v1" + device_id + salt, hashlib.sha256).digest()[:TAG_BYTES]


def parse_txt(props: dict[bytes, Optional[bytes]], vault_tag: bytes) -> Optional[bytes]:
    """The device id in a TXT record if it belongs to our vault, else None (never raises on junk)."""
    try:
        if props.get(b"v") != b"1":
            return None
        dev = bytes.fromhex((props.get(b"id") or b"").decode("ascii"))
        salt = bytes.fromhex((props.get(b"s") or b"").decode("ascii"))
        hint = bytes.fromhex((props.get(b"h") or b"").decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if len(dev) != 32 or len(salt) != SALT_BYTES or len(hint) != TAG_BYTES:
        return None
    if not hmac.compare_digest(hint, vault_hint(vault_tag, dev, salt)):
        return None
    return dev


class Discovery:
    """Advertise this device and report the vault's other devices on the LAN.

    ``interfaces``: addresses to bind mDNS to (default loopback only), or
    ``"all"``. ``addresses``: the addresses to advertise (default: the bound
    interface addresses). ``on_event`` receives PeerFound/PeerLost.

    Example::

        d = Discovery(my_key, 4433, tag, on_event=print, interfaces=["127.0.0.1"])
        await d.start()
        ...
        await d.close()
    """

    def __init__(self, device_id: bytes, port: int, vault_tag: bytes,
                 on_event: Callable[[DiscoveryEvent], None],
                 interfaces: Union[Sequence[str], str] = ("127.0.0.1",),
                 addresses: Optional[Sequence[str]] = None) -> None:
        if len(device_id) != 32:
            raise LocalProtocolError("a device id is a 32-byte key")
        if not vault_tag:
            raise LocalProtocolError("discovery needs a vault tag")
        if isinstance(interfaces, str) and interfaces != "all":
            raise LocalProtocolError('interfaces is a list of addresses or "all"')
        self.device_id = device_id
        self.port = port
        self.vault_tag = vault_tag
        self.on_event = on_event
        self.interfaces = interfaces
        self.addresses = list(addresses) if addresses is not None else (
            list(interfaces) if not isinstance(interfaces, str) else [])
        self._azc: Optional[AsyncZeroconf] = None
        self._browser: Optional[AsyncServiceBrowser] = None
        self._info: Optional[AsyncServiceInfo] = None
        self._names: dict[str, bytes] = {}  # service name -> peer id
        self._tasks: set[asyncio.Task] = set()
        self.name = f"pcloud-{device_id[:8].hex()}.{SERVICE_TYPE}"

    async def start(self) -> None:
        """Join mDNS on the interfaces, advertise, and start browsing."""
        if self._azc is not None:
            raise LocalProtocolError("discovery already started")
        ifaces = InterfaceChoice.All if self.interfaces == "all" else list(self.interfaces)
        self._azc = AsyncZeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        salt = os.urandom(SALT_BYTES)
        props = {"v": "1", "id": self.device_id.hex(), "s": salt.hex(),
                 "h": vault_hint(self.vault_tag, self.device_id, salt).hex()}
        self._info = AsyncServiceInfo(SERVICE_TYPE, self.name, port=self.port, properties=props,
                                      parsed_addresses=self.addresses or None,
                                      server=f"pcloud-{self.device_id[:8].hex()}.local.")
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        try:
            # the call returns the task that probes and announces: wait for it, so errors surface here
            await (await self._azc.async_register_service(self._info, allow_name_change=True))
        except (NonUniqueNameException, BadTypeInNameException) as exc:
            await self.close()
            raise TransportError(f"mDNS advertisement failed: {exc}") from exc

    async def close(self) -> None:
        """Withdraw the advertisement (peers get PeerLost) and leave mDNS."""
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._azc is not None:
            if self._info is not None:
                # wait for the goodbye packets, or peers only notice at TTL expiry
                await (await self._azc.async_unregister_service(self._info))
            await self._azc.async_close()
            self._azc = None

    async def restart(self, addresses: Optional[Sequence[str]] = None,
                      interfaces: Optional[Union[Sequence[str], str]] = None) -> None:
        """Re-advertise after our address changed (a device that moved to another LAN)."""
        await self.close()
        if interfaces is not None:
            self.interfaces = interfaces
        if addresses is not None:
            self.addresses = list(addresses)
        self._names.clear()
        await self.start()

    # -- browsing
    def _on_change(self, zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name == self.name:
            return
        if state_change is ServiceStateChange.Removed:
            peer = self._names.pop(name, None)
            if peer is not None:
                self.on_event(PeerLost(peer))
            return
        t = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._azc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("mDNS: %s did not resolve", name)
            return
        peer = parse_txt(info.properties or {}, self.vault_tag)
        if peer is None or peer == self.device_id or info.port is None:
            return  # another vault's device, junk, or ourselves
        addrs = tuple(a for a in info.parsed_addresses(IPVersion.V4Only) if not a.startswith("169.254."))
        if not addrs:
            return
        self._names[name] = peer
        self.on_event(PeerFound(peer, addrs, info.port))
