"""The cloud node's rendezvous + relay service: asyncio glue around ``RendezvousServer``.

Invariants:
- One UDP socket per configured listen address, each bound explicitly: a reply
  must leave from the address the device sent to, or its NAT drops it (a
  socket on 0.0.0.0 answers from the primary address only).
- All decisions live in the sans-I/O core (``transport.rendezvous``); this
  module only moves datagrams, fires the expiry timer, and reports.
- No queue grows: a datagram is forwarded in the batch that received it or
  dropped; beyond the kernel's socket buffer only UdpIO's bounded send queue
  (4 MB per socket, then drops) holds anything.
- The relay forwards QUIC datagrams it cannot decrypt: it holds no device or
  vault key, only the scope secrets that say whom it serves.

Run ``python -m transport.relay_server --listen HOST:PORT [--listen ...] --scope HEX``
or with ``--config FILE`` (TOML, same keys as the flags: ``listen``, ``scopes``,
``devices``, ``keepalive``, ``expiry``, ``relay_rate``, ``relay_burst``,
``max_registrations``, ``stats_file``, ``log_level``). SIGTERM/SIGINT stop it cleanly.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from transport.control import Addr
from transport.errors import LocalProtocolError
from transport.rendezvous import EXPIRY_DEFAULT, KEEPALIVE_DEFAULT, RendezvousServer, Scope
from transport.udp import UdpIO

log = logging.getLogger("pcloud.relay")


@dataclass
class RelayConfig:
    """Settings of the headless rendezvous/relay service."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:3478"])
    "HOST:PORT addresses to serve on, each bound explicitly ([v6]:port for IPv6)"
    scopes: list[str] = field(default_factory=list)
    "hex scope secrets of the vaults this relay serves; devices must prove one"
    devices: dict[str, list[str]] = field(default_factory=dict)
    "optional allow-list: scope secret hex -> device public keys (hex) admitted; absent = any member"
    keepalive: int = KEEPALIVE_DEFAULT
    "seconds between device keepalives (below the NATs' UDP timeout)"
    expiry: int = EXPIRY_DEFAULT
    "seconds a registration lives without keepalives"
    relay_rate: float = 64e6
    "relayed bytes per second per device (token bucket rate)"
    relay_burst: float = 4e6
    "relayed bytes a device may burst (token bucket depth)"
    max_registrations: int = 4096
    "bound on registered devices (memory)"
    stats_file: Optional[str] = None
    "if set, a JSON snapshot of registrations and counters is rewritten there every second"
    log_level: str = "info"
    "logging level for stdout"

    def addresses(self) -> list[Addr]:
        return [parse_hostport(s) for s in self.listen]

    def build_scopes(self) -> list[Scope]:
        out = []
        for hx in self.scopes:
            secret = _hex(hx, "scope secret")
            allow = self.devices.get(hx)
            out.append(Scope(secret, frozenset(_hex(k, "device key") for k in allow) if allow is not None else None))
        return out

    @classmethod
    def from_toml(cls, path: str | Path) -> RelayConfig:
        """Load a config file; unknown keys are an error (a typo must not silently open the relay)."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        known = {f.name for f in fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise LocalProtocolError(f"{path}: unknown relay config keys: {', '.join(bad)}")
        return cls(**data)


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise LocalProtocolError(f"{what} is not hex: {value!r}") from exc


def parse_hostport(s: str) -> Addr:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise LocalProtocolError(f"listen address must be HOST:PORT, got {s!r}")
    return (host.strip("[]"), int(port))


class RelayService:
    """The running service: sockets, the core, the timer. Use ``serve(config)``."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.core = RendezvousServer(
            config.build_scopes(), keepalive_s=config.keepalive, expiry_s=config.expiry,
            max_registrations=config.max_registrations, relay_rate=config.relay_rate,
            relay_burst=config.relay_burst)
        self.sockets: list[UdpIO] = []
        self.bound: list[Addr] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for via, (host, port) in enumerate(self.config.addresses()):
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                self.close()
                raise
            # batched receive (recvmmsg/GRO when available): the relay is bound by per-datagram
            # event-loop overhead, not by the forwarding logic
            io = UdpIO(loop, sock, lambda batch, v=via: self._on_batch(batch, v))
            self.sockets.append(io)
            self.bound.append(io.local_address())
        log.info("relay listening on %s, serving %d vault scope(s)",
                 ", ".join(f"{h}:{p}" for h, p in self.bound), len(self.core.scopes))

    def _on_batch(self, batch: list[tuple[bytes, Addr]], via: int) -> None:
        now = time.monotonic()
        receive = self.core.receive
        for data, addr in batch:
            receive(data, addr, via, now)
        self.flush()

    def flush(self) -> None:
        out = self.core.datagrams_to_send()
        i, n = 0, len(out)
        while i < n:
            _, addr, via = out[i]
            j = i + 1
            while j < n and out[j][1] == addr and out[j][2] == via:
                j += 1
            # consecutive datagrams to one device leave in one call (a GSO train when possible)
            self.sockets[via].send([d for d, _, _ in out[i:j]], addr)
            i = j

    def snapshot(self) -> dict[str, Any]:
        return {
            "listen": [f"{h}:{p}" for h, p in self.bound],
            "stats": asdict(self.core.stats),
            "registrations": [
                {"key": r.key.hex(), "addr": f"{r.addr[0]}:{r.addr[1]}", "via": r.via,
                 "relayed_in": r.relayed_in, "relayed_out": r.relayed_out, "dropped": r.dropped}
                for r in self.core.registrations()],
        }

    async def run_until(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            self.core.handle_timer(now)
            self.flush()
            if self.config.stats_file:
                tmp = self.config.stats_file + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump(self.snapshot(), fh)
                os.replace(tmp, self.config.stats_file)
            if now - last_log >= 60:
                last_log = now
                s = self.core.stats
                log.info("%d devices registered; relayed %d datagrams / %d bytes; %d rate-limited, "
                         "%d malformed, %d auth failures", len(self.core.registrations()), s.relayed_packets,
                         s.relayed_bytes, s.rate_limited, s.malformed, s.auth_failed)

    def close(self) -> None:
        for io in self.sockets:
            io.close()
        self.sockets.clear()


async def serve(config: RelayConfig, stop: Optional[asyncio.Event] = None) -> None:
    """Run the relay until ``stop`` is set, or SIGTERM/SIGINT when no event is given."""
    service = RelayService(config)
    await service.start()
    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await service.run_until(stop)
    finally:
        service.close()
        log.info("relay stopped")


def run(config: RelayConfig) -> None:
    """Blocking entry point for ``pcloud relay`` and ``python -m transport.relay_server``."""
    logging.basicConfig(stream=sys.stdout, level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.scopes:
        log.warning("no vault scopes configured: every registration will be refused")
    asyncio.run(serve(config))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transport.relay_server",
                                 description="pcloud rendezvous + relay service (the headless cloud node)")
    ap.add_argument("--listen", action="append", help="HOST:PORT to serve on (repeatable; bind each address)")
    ap.add_argument("--config", help="TOML file with the same keys as these flags")
    ap.add_argument("--scope", action="append", help="hex scope secret of a vault to serve (repeatable)")
    ap.add_argument("--keepalive", type=int)
    ap.add_argument("--expiry", type=int)
    ap.add_argument("--relay-rate", type=float, help="bytes/s per device")
    ap.add_argument("--relay-burst", type=float, help="bytes per device burst")
    ap.add_argument("--max-registrations", type=int)
    ap.add_argument("--stats-file")
    ap.add_argument("--log-level")
    a = ap.parse_args(argv)
    try:
        cfg = RelayConfig.from_toml(a.config) if a.config else RelayConfig()
        if a.listen:
            cfg.listen = a.listen
        if a.scope:
            cfg.scopes = cfg.scopes + a.scope
        for name in ("keepalive", "expiry", "relay_rate", "relay_burst", "max_registrations", "stats_file",
                     "log_level"):
            if getattr(a, name) is not None:
                setattr(cfg, name, getattr(a, name))
        cfg.addresses()
        cfg.build_scopes()
    except (LocalProtocolError, OSError, tomllib.TOMLDecodeError, TypeError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
