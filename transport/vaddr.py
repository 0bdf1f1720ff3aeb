"""Addresses as the QUIC engines see them: real (ip, port) tuples and virtual paths.

A virtual address is any hashable tuple the path layer invents (e.g. a relay route,
("relay", "198.18.0.10", 7000, peerhex)). The engines only accept real IP tuples, so each
virtual address gets a reserved fake IPv6 tuple (fd70:636c::n, port 1). Datagrams the
engine sends there go to the registered PathTransmitter instead of the socket.

Invariants: the mapping is one-to-one and stable while registered (re-registering keeps
the fake address, so live connections keep their path); a fake address is never sent on
the socket, even after its virtual address was unregistered.
"""
from __future__ import annotations

import ipaddress
import itertools
from typing import Any, Callable, Protocol

from transport.errors import LocalProtocolError

FAKE_PREFIX = "fd70:636c::"
_LAN_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class PathTransmitter(Protocol):
    """Carries QUIC datagrams for a virtual address (e.g. wraps them in relay frames)."""

    def transmit(self, datagrams: list[bytes]) -> None: ...


def default_path_kind(addr: Any) -> str:
    """'lan' for loopback / link-local / RFC 1918 / ULA addresses, else 'direct'."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except (ValueError, TypeError, IndexError):
        return "direct"
    if ip.is_loopback or ip.is_link_local:
        return "lan"
    return "lan" if any(ip in net for net in _LAN_NETS) else "direct"


def check_ip_tuple(addr: Any) -> tuple[str, int]:
    """(host, port) with a literal IP, else LocalProtocolError."""
    try:
        host, port = addr[0], int(addr[1])
        ipaddress.ip_address(host)
    except (ValueError, TypeError, IndexError) as exc:
        raise LocalProtocolError(f"not an (ip, port) address or registered virtual address: {addr!r}") from exc
    return (host, port)


class VirtualAddresses:
    """The registry of virtual paths and the classifier of real ones."""

    def __init__(self, classify: Callable[[Any], str] = default_path_kind) -> None:
        self._classify = classify
        self._by_virtual: dict[Any, tuple[tuple[str, int], PathTransmitter, str]] = {}
        self._by_fake: dict[tuple[str, int], Any] = {}
        self._ids = itertools.count(1)

    def register(self, addr: Any, transmitter: PathTransmitter, kind: str) -> None:
        entry = self._by_virtual.get(addr)
        fake = entry[0] if entry is not None else (f"{FAKE_PREFIX}{next(self._ids):x}", 1)
        self._by_virtual[addr] = (fake, transmitter, kind)
        self._by_fake[fake] = addr

    def unregister(self, addr: Any) -> None:
        entry = self._by_virtual.pop(addr, None)
        if entry is not None:
            self._by_fake.pop(entry[0], None)

    def fake_for(self, addr: Any) -> tuple[str, int] | None:
        """The engine address of a registered virtual address (None if not registered)."""
        entry = self._by_virtual.get(addr)
        return entry[0] if entry is not None else None

    def engine_address(self, addr: Any) -> tuple[str, int]:
        """What the engine should be given for `addr` (virtual or (ip, port))."""
        fake = self.fake_for(addr)
        return fake if fake is not None else check_ip_tuple(addr)

    def public(self, engine_addr: Any) -> Any:
        """The address upper layers know for an engine address."""
        return self._by_fake.get(engine_addr, engine_addr)

    def kind(self, engine_addr: Any) -> str:
        """'lan' / 'direct' for real addresses (classifier), the registered kind for virtual ones."""
        virtual = self._by_fake.get(engine_addr)
        if virtual is not None:
            return self._by_virtual[virtual][2]
        return self._classify(engine_addr)

    def transmitter(self, engine_addr: Any) -> PathTransmitter | None:
        virtual = self._by_fake.get(engine_addr)
        return self._by_virtual[virtual][1] if virtual is not None else None

    @staticmethod
    def is_fake(engine_addr: Any) -> bool:
        return isinstance(engine_addr[0], str) and engine_addr[0].startswith(FAKE_PREFIX)


__all__ = ["FAKE_PREFIX", "PathTransmitter", "VirtualAddresses", "check_ip_tuple", "default_path_kind"]
