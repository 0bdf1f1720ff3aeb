"""Reaching peers: path candidates, preference LAN > direct > relay, upgrades, mobility.

Theory of operation
-------------------
* ``PathTable`` (sans-I/O, one per peer) holds at most one candidate address per
  kind (``lan`` from mDNS or a punch that landed on a private address, ``direct``
  from a punch, ``relay`` through the cloud node) and when each was last seen to
  fail. ``best(now)`` is the most preferred candidate not in its failure
  back-off. Rule: we never leave a working path for a worse one; we leave a
  failing path for the best other candidate; we move up whenever a better
  candidate appears.
* ``Reachability`` (asyncio glue, one per device) feeds the table from mDNS
  (``transport.discovery``), the rendezvous client (``transport.rendezvous``:
  registration, keepalive, punching) and the relay, and acts on the endpoint:
  it dials the best candidate when no session is up, and moves a session with
  ``Session.migrate`` (QUIC connection migration, RFC 9000 section 9) when a
  better path appears or the current one stops answering. Only the QUIC client
  side can move; the server side follows the client's new address after path
  validation, and both sides run the same logic, so whichever dialled moves.
  Upper layers keep the same Session object throughout.
* Liveness: every ``PROBE_INTERVAL`` each session answers a tiny
  ``reach.ping`` request; ``PROBE_FAILURES`` timeouts in a row mark the path
  failed. Combined with the address monitor (our own address changed: we
  moved) this is what makes a device that walks to another network visible
  on a new path within a few seconds.
* Relay: each peer gets a virtual address ``("relay", short_id_hex)`` on the
  endpoint; datagrams for it are wrapped in RELAY_DATA frames to the relay,
  and relayed frames from the relay are unwrapped and injected back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import psutil

from transport import control as c
from transport import rendezvous as rv
from transport.control import Addr
from transport.endpoint import default_path_kind
from transport.discovery import Discovery, DiscoveryEvent, PeerFound, PeerLost
from transport.errors import RemoteProtocolError, TransportError

log = logging.getLogger("transport.pathmgr")

PATH_ORDER = ("lan", "direct", "relay")
FAIL_BACKOFF = 4.0        # s a failed path is skipped
PROBE_INTERVAL = 0.5      # s between liveness probes of a session
PROBE_TIMEOUT = 1.0       # s
PROBE_FAILURES = 2        # consecutive probe timeouts that mark the path failed
PUNCH_RETRY = 15.0        # s between punch attempts while we have no direct path
PEER_UNKNOWN_RETRY = 1.0  # s before asking again for a peer the rendezvous did not know yet
ADDRESS_POLL = 0.5        # s between checks of our own addresses (mobility)
DIAL_TIMEOUT = 3.0        # s
YIELD_DIAL = 1.0          # s the larger key waits for the smaller to dial


def kind_of_address(addr: Addr) -> str:
    """'lan' for RFC 1918 / ULA / loopback / link-local addresses (same network), else 'direct'.

    The same rule as the endpoint's classifier, so both ends of a session name a path alike.
    (Not ``ipaddress.is_private``: that includes 198.18.0.0/15, the lab's "internet".)
    """
    return default_path_kind(addr)


@dataclass
class PathTable:
    """Candidate paths to one peer and their recent failures (pure, clock passed in)."""

    candidates: dict[str, Any] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, addr: Any) -> bool:
        """Record a candidate; True when it is new or changed (worth re-evaluating)."""
        if kind not in PATH_ORDER:
            raise ValueError(f"unknown path kind {kind!r}")
        changed = self.candidates.get(kind) != addr
        self.candidates[kind] = addr
        if changed:
            self.failed_at.pop(kind, None)
        return changed

    def remove(self, kind: str) -> None:
        self.candidates.pop(kind, None)
        self.failed_at.pop(kind, None)

    def fail(self, kind: str, now: float) -> None:
        self.failed_at[kind] = now

    def usable(self, kind: str, now: float) -> bool:
        t = self.failed_at.get(kind)
        return kind in self.candidates and (t is None or now - t >= FAIL_BACKOFF)

    def best(self, now: float, exclude: Optional[str] = None) -> Optional[tuple[str, Any]]:
        """The most preferred usable candidate (optionally other than ``exclude``)."""
        for kind in PATH_ORDER:
            if kind != exclude and self.usable(kind, now):
                return kind, self.candidates[kind]
        return None

    def upgrade_from(self, current: str, now: float) -> Optional[tuple[str, Any]]:
        """A usable candidate strictly better than ``current``, if any."""
        b = self.best(now)
        if b is not None and PATH_ORDER.index(b[0]) < PATH_ORDER.index(current):
            return b
        return None


@dataclass(frozen=True)
class PeerStatus:
    """One line of ``pcloud status``: where a peer is and how fast."""

    id: bytes  #: peer device key
    path: Optional[str]  #: 'lan', 'direct', 'relay', or None when not connected
    addr: Optional[str]  #: printable address of the current path
    rtt_ms: Optional[float]  #: smoothed RTT


class _RelayTransmitter:
    """Wraps QUIC datagrams for one peer into relay frames (endpoint's PathTransmitter)."""

    def __init__(self, reach: Reachability, peer_short: bytes) -> None:
        self.reach = reach
        self.header = bytes([c.MsgType.RELAY_DATA, c.VERSION]) + peer_short

    def transmit(self, datagrams: list[bytes]) -> None:
        server = self.reach.relay_server
        if server is None or not self.reach.registered:
            return  # no relay right now: lost like on a dead link, QUIC retransmits later
        frames = [self.header + d for d in datagrams]
        batch = self.reach.send_batch
        if batch is not None:
            batch(frames, server)  # one syscall per train (GSO) instead of per datagram
            return
        send = self.reach.endpoint.send_datagram
        for f in frames:
            send(f, server)


@dataclass
class _Peer:
    key: bytes
    short: bytes
    table: PathTable = field(default_factory=PathTable)
    probe_failures: int = 0
    next_punch: float = 0.0
    task: Optional[asyncio.Task] = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Reachability:
    """Keeps a session to each given peer on the best path it can find, across changes.

    ``endpoint``: T1's ``transport.endpoint.Endpoint`` (its ``identity`` signs
    our registrations and punches). ``peers``: device keys to stay connected to
    (``add_peer``/``remove_peer`` later). ``relay``: the cloud node's address,
    optionally followed by its second address (NAT type detection); None for
    LAN-only. ``relay_scope``: the vault's relay scope secret (the relay lists
    it). ``vault_tag``: secret for the mDNS TXT hint; None disables mDNS.
    ``mdns_interfaces``: addresses to run mDNS on (default loopback only) or
    ``"all"`` inside a lab host.

    Example::

        reach = Reachability(ep, peers=[k2], relay=[("198.18.0.10", 3478)],
                             relay_scope=scope, vault_tag=tag, mdns_interfaces="all")
        await reach.start()
        reach.status()   # [PeerStatus(id=..., path='direct', addr='198.18.0.102:4433', rtt_ms=3.1)]
        await reach.close()
    """

    def __init__(self, endpoint: Any, peers: Iterable[bytes] = (), *, relay: Optional[Sequence[Addr]] = None,
                 relay_scope: Optional[bytes] = None, vault_tag: Optional[bytes] = None,
                 mdns_interfaces: Union[Sequence[str], str] = ("127.0.0.1",), punch: bool = True) -> None:
        if relay and not relay_scope:
            raise TransportError("a relay needs the vault's relay scope secret")
        self.endpoint = endpoint
        self.key: bytes = endpoint.device_id
        self.relay_server: Optional[Addr] = tuple(relay[0]) if relay else None  # type: ignore[assignment]
        self.vault_tag = vault_tag
        self.punch = punch
        "try hole punching through the rendezvous (off: relay only, for tests and benchmarks)"
        self.mdns_interfaces = mdns_interfaces
        self._peer_keys: set[bytes] = set()
        self._peers: dict[bytes, _Peer] = {}
        self._by_short: dict[bytes, _Peer] = {}
        self._rdv: Optional[rv.RendezvousClient] = None
        if relay:
            self._rdv = rv.RendezvousClient(endpoint.identity, relay_scope or b"", [tuple(a) for a in relay],
                                            self._peer_keys, [])
        self._discovery: Optional[Discovery] = None
        # Batched relay I/O is what makes the relay path fast (per-datagram processing halves it);
        # an endpoint without the batch methods still works, one datagram at a time.
        self.send_batch = getattr(endpoint, "send_datagrams", None)
        self.inject_batch = getattr(endpoint, "inject_datagrams", None)
        self._timer: Optional[asyncio.TimerHandle] = None
        self._tasks: set[asyncio.Task] = set()
        self._addresses: tuple[str, ...] = ()
        self._closed = False
        self._started = False
        self._inbox: list[tuple[bytes, Any]] = []
        self.events: list[Any] = []  #: recent rendezvous/discovery events, for tests and logs (bounded)
        for k in peers:
            self.add_peer(k)

    @property
    def registered(self) -> bool:
        return self._rdv is not None and self._rdv.registered

    # -- lifecycle
    async def start(self) -> None:
        """Register with the relay, start mDNS, and begin keeping sessions to the peers."""
        self.endpoint.on_request("reach.ping", self._on_ping)
        self.endpoint.set_control_handler(self._on_control)
        self._addresses = self._local_ips()
        if self._rdv is not None:
            self._rdv.lan = tuple(self._lan_candidates())
            self._rdv.start(time.monotonic())
            self._pump_rdv()
        if self.vault_tag is not None:
            self._spawn(self._start_discovery())  # mDNS probing takes ~1 s: the relay need not wait
        self._spawn(self._address_monitor())
        self._started = True
        for p in self._peers.values():
            self._start_peer(p)

    async def close(self) -> None:
        self._closed = True
        for p in self._peers.values():
            if p.task is not None:
                p.task.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._discovery is not None:
            await self._discovery.close()
        self.endpoint.set_control_handler(None)

    def add_peer(self, key: bytes) -> None:
        """Start keeping a session to ``key``."""
        if key in self._peers or key == self.key:
            return
        p = _Peer(key, c.short_id(key))
        self._peers[key] = p
        self._by_short[p.short] = p
        self._peer_keys.add(key)
        if self._rdv is not None:
            vaddr = ("relay", p.short.hex())
            self.endpoint.register_virtual_address(vaddr, _RelayTransmitter(self, p.short), "relay")
            p.table.add("relay", vaddr)
        if self._started and not self._closed:
            self._start_peer(p)

    def remove_peer(self, key: bytes) -> None:
        """Stop keeping ``key`` (its session is closed: e.g. the device was revoked)."""
        p = self._peers.pop(key, None)
        if p is None:
            return
        self._by_short.pop(p.short, None)
        self._peer_keys.discard(key)
        if p.task is not None:
            p.task.cancel()
        self.endpoint.unregister_virtual_address(("relay", p.short.hex()))
        self.endpoint.drop_peer(key, "removed")

    def status(self) -> list[PeerStatus]:
        """Every kept peer with its current path (None when not connected)."""
        out = []
        for key in self._peers:
            s = self.endpoint.sessions.get(key)
            if s is None or s.state != "up":
                out.append(PeerStatus(key, None, None, None))
                continue
            info = s.info()
            addr = info.addr
            text = (f"relay {self.relay_server[0]}:{self.relay_server[1]}" if info.path == "relay"
                    and self.relay_server else f"{addr[0]}:{addr[1]}" if addr else None)
            out.append(PeerStatus(key, info.path, text, info.rtt_ms))
        return out

    def path_of(self, key: bytes) -> Optional[tuple[str, Any]]:
        s = self.endpoint.sessions.get(key)
        return (s.path, s.addr) if s is not None and s.state == "up" else None

    # -- per-peer keeper
    def _start_peer(self, p: _Peer) -> None:
        p.task = asyncio.ensure_future(self._keep(p))

    async def _keep(self, p: _Peer) -> None:
        backoff = 0.25
        if self.key > p.key:
            # Let the smaller key dial first: two sessions opened at once get one of them torn down,
            # and an upper layer may already be using the loser.
            await asyncio.sleep(YIELD_DIAL)
        while not self._closed:
            now = time.monotonic()
            self._maybe_punch(p, now)
            session = self.endpoint.sessions.get(p.key)
            if session is None or session.state != "up":
                choice = p.table.best(now, exclude=None if self.registered else "relay")
                if choice is None:
                    await self._sleep(p, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                kind, addr = choice
                try:
                    await self.endpoint.connect(p.key, addr, kind, timeout=DIAL_TIMEOUT)
                    backoff = 0.25
                    p.probe_failures = 0
                except TransportError as exc:
                    live = self.endpoint.sessions.get(p.key)
                    if live is not None and live.state == "up":
                        continue  # lost a simultaneous open: the peer's session won, the path is fine
                    log.info("dial %s via %s %r failed: %s", p.key[:4].hex(), kind, addr, exc)
                    p.table.fail(kind, time.monotonic())
                    await self._sleep(p, backoff)
                    backoff = min(backoff * 2, 5.0)
                continue
            await self._tend(p, session)
            await self._sleep(p, PROBE_INTERVAL)

    async def _tend(self, p: _Peer, session: Any) -> None:
        """One round on a live session: probe it, move off a failing path, move up to a better one."""
        now = time.monotonic()
        current = session.path if session.path in PATH_ORDER else "direct"
        try:
            await session.request("reach.ping", b"", timeout=PROBE_TIMEOUT)
            p.probe_failures = 0
        except TransportError:
            p.probe_failures += 1
        now = time.monotonic()
        if session.state != "up":
            return
        if p.probe_failures >= PROBE_FAILURES:
            p.table.fail(current, now)
            alt = p.table.best(now, exclude=current)
            if alt is not None and session.migrate(alt[1], alt[0]):
                log.info("%s: path %s failing, moved to %s %r", p.key[:4].hex(), current, *alt)
                p.probe_failures = 0
            if alt is None or not session.is_client:
                p.next_punch = min(p.next_punch, now)  # look for a new direct path
            return
        up = p.table.upgrade_from(current, now)
        if up is not None and session.is_client and up[1] != session.addr:
            if session.migrate(up[1], up[0]):
                log.info("%s: upgraded %s -> %s %r", p.key[:4].hex(), current, *up)

    def _maybe_punch(self, p: _Peer, now: float) -> None:
        if not self.punch or self._rdv is None or not self._rdv.registered or now < p.next_punch:
            return
        if self._rdv.punching(p.key) or p.table.usable("lan", now) or p.table.usable("direct", now):
            p.next_punch = now + PUNCH_RETRY
            return
        # the smaller key asks first; the other side asks too if nothing came (peer started later)
        p.next_punch = now + PUNCH_RETRY
        self._rdv.request_peer(p.key, now)
        self._pump_rdv()

    async def _sleep(self, p: _Peer, seconds: float) -> None:
        p.wake.clear()
        try:
            await asyncio.wait_for(p.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _on_ping(self, session: Any, body: Any) -> bytes:
        return b""

    # -- rendezvous glue
    def _on_control(self, data: bytes, addr: Any) -> None:
        rdv = self._rdv
        if rdv is None:
            return
        if data[0] == c.MsgType.RELAY_DATA and addr == rdv.server and len(data) > 10:
            # fast path: a relayed QUIC datagram, straight to the endpoint
            p = self._by_short.get(data[2:10])
            if p is not None:
                # Batched: the endpoint hands us a whole receive batch one datagram at a time;
                # injecting them together lets QUIC process them and answer once, not per datagram.
                if not self._inbox:
                    asyncio.get_event_loop().call_soon(self._flush_inbox)
                self._inbox.append((data[10:], ("relay", p.short.hex())))
            return
        try:
            rdv.receive(data, (addr[0], addr[1]), time.monotonic())
        except RemoteProtocolError as exc:
            log.debug("control datagram from %r dropped: %s", addr, exc)
        self._pump_rdv()

    def _flush_inbox(self) -> None:
        inbox, self._inbox = self._inbox, []
        batch = self.inject_batch
        if batch is not None:
            batch(inbox)
            return
        for data, vaddr in inbox:
            self.endpoint.inject_datagram(data, vaddr)

    def _pump_rdv(self) -> None:
        rdv = self._rdv
        if rdv is None or self._closed:
            return
        punch_now: list[_Peer] = []
        for data, addr in rdv.datagrams_to_send():
            try:
                self.endpoint.send_datagram(data, addr)
            except OSError as exc:  # e.g. ENETUNREACH while moving between networks
                log.debug("control send to %r failed: %s", addr, exc)
        while (ev := rdv.next_event()) is not None:
            self._note(ev)
            if isinstance(ev, rv.PunchSucceeded):
                p = self._peers.get(ev.peer)
                if p is not None:
                    kind = kind_of_address(ev.addr)
                    p.table.add(kind, ev.addr)
                    p.wake.set()
            elif isinstance(ev, rv.Registered):
                # punch at once (not at the keeper's next round): this is what a punched setup time waits on
                for p in self._peers.values():
                    p.next_punch = 0.0
                    p.wake.set()
                    punch_now.append(p)
            elif isinstance(ev, rv.NatDetected):
                log.info("our NAT is %s", "symmetric: punching will likely fail, the relay carries our traffic"
                         if ev.symmetric else "endpoint-independent (cone): punching can work")
            elif isinstance(ev, rv.RegistrationLost):
                log.info("relay registration lost: %s", ev.reason)
            elif isinstance(ev, rv.PeerUnknown):
                p = self._peers.get(ev.peer)
                if p is not None:
                    p.next_punch = time.monotonic() + PEER_UNKNOWN_RETRY  # it may register any moment
            elif isinstance(ev, rv.RelayedDatagram):
                p = self._by_short.get(ev.peer_short)
                if p is not None:
                    self.endpoint.inject_datagram(ev.payload, ("relay", p.short.hex()))
        now = time.monotonic()
        for p in punch_now:
            self._maybe_punch(p, now)  # re-enters _pump_rdv to send the requests
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = rdv.get_timer()
        if t is not None:
            self._timer = asyncio.get_event_loop().call_later(max(0.0, t - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._rdv is not None:
            self._rdv.handle_timer(time.monotonic())
            self._pump_rdv()

    # -- discovery glue
    async def _start_discovery(self) -> None:
        assert self.vault_tag is not None
        ips = [ip for ip in self._addresses if not ip.startswith("127.")] or list(self._addresses)
        self._discovery = Discovery(self.key, self.endpoint.local_address[1], self.vault_tag, self._on_discovery,
                                    interfaces=self.mdns_interfaces, addresses=ips)
        await self._discovery.start()

    def _on_discovery(self, ev: DiscoveryEvent) -> None:
        self._note(ev)
        p = self._peers.get(ev.peer_id)
        if p is None:
            return
        if isinstance(ev, PeerFound):
            if p.table.add("lan", (ev.addrs[0], ev.port)):
                p.wake.set()
        elif isinstance(ev, PeerLost):
            p.table.remove("lan")

    # -- mobility
    def _local_ips(self) -> tuple[str, ...]:
        host = self.endpoint.local_address[0]
        if host not in ("0.0.0.0", "::"):
            return (host,)
        ips = []
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family.name == "AF_INET" and not a.address.startswith("127."):
                    ips.append(a.address)
        return tuple(sorted(ips))

    def _lan_candidates(self) -> list[Addr]:
        port = self.endpoint.local_address[1]
        return [(ip, port) for ip in self._addresses][:c.MAX_CANDIDATES - 1]

    async def _address_monitor(self) -> None:
        while not self._closed:
            await asyncio.sleep(ADDRESS_POLL)
            ips = self._local_ips()
            if ips == self._addresses:
                continue
            log.info("our addresses changed %s -> %s: re-registering, re-advertising", self._addresses, ips)
            self._addresses = ips
            self.endpoint.drop_lanes("our addresses changed")  # TCP lanes over the old addresses may be dead
            now = time.monotonic()
            for p in self._peers.values():
                # candidates learnt on the old network are no longer reachable from here
                p.table.remove("lan")
                p.table.remove("direct")
                p.next_punch = 0.0
                p.probe_failures = PROBE_FAILURES - 1  # one more missed probe and we move
                p.wake.set()
            if self._rdv is not None:
                self._rdv.set_lan(self._lan_candidates(), now)
                self._rdv.start(now)
                self._pump_rdv()
            if self._discovery is not None:
                ips_adv = [ip for ip in ips if not ip.startswith("127.")] or list(ips)
                try:
                    await self._discovery.restart(addresses=ips_adv)
                except (TransportError, OSError) as exc:
                    log.warning("mDNS restart after address change failed: %s", exc)

    def _note(self, ev: Any) -> None:
        self.events.append(ev)
        if len(self.events) > 256:
            del self.events[:128]

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
