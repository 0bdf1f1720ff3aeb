"""The one module that knows which QUIC library drives our connections.

Two engines share aioquic's sans-I/O `QuicConnection` shape: `qh3` (a maintained fork
with a Rust packet core, much faster) and `aioquic` itself. Everything above this module
speaks only `EngineConnection` and the engine-neutral events below, so the two are
interchangeable (`PCLOUD_QUIC_ENGINE=qh3|aioquic`; default chosen by bench/bench_transport.py).

Invariants:
- TLS certificate *chains* are never checked (verify_mode CERT_NONE): keys are pinned by
  the caller. TLS still checks CertificateVerify, so `peer_public_key` is a key the
  peer proved it holds.
- `now` always comes from the caller (time.monotonic(): with uvloop, aioquic's pacer
  spins on the loop clock).
- Engine exceptions never escape as foreign types: protocol failures come back as a
  `Terminated` event, API misuse as transport.errors.LocalProtocolError.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from transport.errors import AuthenticationError, LocalProtocolError
from transport.identity import DeviceIdentity, peer_key_from_cert

ALPN = "pcloud/1"
CONNECTION_ID_LENGTH = 8
ENGINES = ("qh3", "aioquic")
DEFAULT_ENGINE = "qh3"
QUIC_VERSION_1 = 0x00000001


# --- engine-neutral events -------------------------------------------------------------
@dataclass(frozen=True)
class HandshakeDone:
    """TLS completed; the peer proved possession of its certificate key."""

    alpn: str | None
    "the negotiated application protocol"


@dataclass(frozen=True)
class StreamData:
    """Bytes arrived on a stream."""

    stream_id: int
    "QUIC stream id"
    data: bytes
    "the bytes, in order"
    end_stream: bool
    "the peer finished its side of the stream"


@dataclass(frozen=True)
class StreamReset:
    """The peer abandoned its sending side of a stream."""

    stream_id: int
    "QUIC stream id"
    error_code: int
    "application error code"


@dataclass(frozen=True)
class StopSending:
    """The peer will not read any more of a stream we send on."""

    stream_id: int
    "QUIC stream id"
    error_code: int
    "application error code"


@dataclass(frozen=True)
class PingAcked:
    """A PING we sent was acknowledged."""

    uid: int
    "the uid given to send_ping"


@dataclass(frozen=True)
class CidIssued:
    """We issued a new connection id the peer may address us with."""

    cid: bytes
    "the connection id"


@dataclass(frozen=True)
class CidRetired:
    """A connection id of ours was retired."""

    cid: bytes
    "the connection id"


@dataclass(frozen=True)
class Terminated:
    """The connection is over (closed by either side, idle, or a protocol error)."""

    error_code: int
    "QUIC (or application) error code"
    reason: str
    "reason phrase sent or received"


EngineEvent = HandshakeDone | StreamData | StreamReset | StopSending | PingAcked | CidIssued | CidRetired | Terminated


class EngineConnection(Protocol):
    """What the endpoint needs from one QUIC connection, whatever the engine."""

    host_cid: bytes

    def connect(self, addr: Any, now: float) -> None: ...
    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...
    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int: ...
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int) -> None: ...
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...
    def send_ping(self, uid: int) -> None: ...
    def close(self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = "") -> None: ...


class Engine:
    """One QUIC library behind a common face. Build with `get_engine(name)`."""

    name: str

    def __init__(self, name: str, max_datagram_size: int = 1200, idle_timeout: float = 30.0) -> None:
        if name not in ENGINES:
            raise LocalProtocolError(f"unknown QUIC engine {name!r}; choose one of {', '.join(ENGINES)}")
        self.name = name
        self.max_datagram_size = max_datagram_size
        self.idle_timeout = idle_timeout
        if name == "qh3":
            import qh3.quic.configuration as qconf
            import qh3.quic.connection as qconn
            import qh3.quic.events as qevents
            import qh3.tls as qtls
            _warm_qh3()
        else:
            import aioquic.quic.configuration as qconf  # type: ignore[no-redef]
            import aioquic.quic.connection as qconn  # type: ignore[no-redef]
            import aioquic.quic.events as qevents  # type: ignore[no-redef]
            import aioquic.tls as qtls  # type: ignore[no-redef]
        self._conf = qconf
        self._conn = qconn
        self.errors: tuple[type[Exception], ...] = (qconn.QuicConnectionError, ValueError)
        "what the engine raises when asked to act on a closed or broken connection/stream"
        self._ev = qevents
        self._tls = qtls
        self._configs: dict[tuple[bytes, bool], Any] = {}

    # --- configurations -------------------------------------------------------------
    def _configuration(self, identity: DeviceIdentity, is_client: bool) -> Any:
        # Engines only read their configuration: build it once per identity and role
        # (parsing the certificate and key per connection cost milliseconds of setup).
        key = (identity.public_key, is_client)
        cached = self._configs.get(key)
        if cached is None:
            cached = self._configs[key] = self._build_configuration(identity, is_client)
        return cached

    def _build_configuration(self, identity: DeviceIdentity, is_client: bool) -> Any:
        conf = self._conf.QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.idle_timeout,
            max_datagram_size=self.max_datagram_size,
            connection_id_length=CONNECTION_ID_LENGTH,
            verify_mode=ssl.CERT_NONE,
            # Windows big enough for ~100 MB/s at LAN RTTs; the session layer bounds what
            # the application may queue, so these are not memory risks.
            max_data=32 * 1024 * 1024,
            max_stream_data=16 * 1024 * 1024,
        )
        if self.name == "qh3":
            from qh3._hazmat import Certificate as QCertificate
            from qh3._hazmat import Ed25519PrivateKey as QEd25519

            conf.certificate = QCertificate(identity.cert_der)
            conf.private_key = QEd25519(_pem_to_pkcs8(identity.key_pem))
            # qh3's default list omits EdDSA; our device keys are Ed25519 only.
            conf.signature_algorithms = [self._tls.SignatureAlgorithm.ED25519]
            # DPLPMTUD off: datagrams stay at the configured size, so the bytes relay
            # framing adds never push one past the path MTU.
            conf.probe_datagram_size = False
        else:
            conf.certificate = identity.certificate()
            conf.private_key = identity.private_key()
        conf.server_name = "pcloud"
        return conf

    def client(self, identity: DeviceIdentity) -> EngineConnection:
        """A new client connection (call `.connect(addr, now)` next)."""
        return self._conn.QuicConnection(configuration=self._configuration(identity, True))

    def server(self, identity: DeviceIdentity, original_dcid: bytes) -> EngineConnection:
        """A new server connection for an Initial packet addressed to `original_dcid`."""
        return self._conn.QuicConnection(
            configuration=self._configuration(identity, False),
            original_destination_connection_id=original_dcid,
        )

    # --- inspection ----------------------------------------------------------------------
    def peer_public_key(self, conn: Any) -> bytes:
        """The Ed25519 key the peer's TLS certificate carries (after HandshakeDone)."""
        tls = conn.tls
        attr = "peer_certificate" if self.name == "qh3" else "_peer_certificate"
        cert = getattr(tls, attr, None) if tls is not None else None
        if cert is None:
            raise AuthenticationError("peer presented no certificate")
        der = cert.public_bytes() if self.name == "qh3" else _der_of(cert)
        return peer_key_from_cert(der)

    def exporter(self, conn: Any, label: bytes) -> bytes:
        """A secret both ends derive from this TLS session (channel binding).

        Derived from the master secret over the full handshake transcript, so it is
        unique to this connection and unknown to anyone relaying it.
        """
        tls = conn.tls
        if tls is None or tls.key_schedule is None:
            raise LocalProtocolError("no TLS session to bind to yet")
        return bytes(tls.key_schedule.derive_secret(label))

    def smoothed_rtt(self, conn: Any) -> float | None:
        """The engine's smoothed RTT estimate in seconds (None before any sample)."""
        if self.name == "qh3":
            core = conn._core
            return None if core is None else core.smoothed_rtt
        loss = conn._loss
        return loss._rtt_smoothed if loss._rtt_initialized else None

    def peer_address(self, conn: Any) -> Any:
        """The address the connection currently sends to (changes when the peer migrates)."""
        if self.name == "qh3":
            core = conn._core
            return None if core is None else _norm(core.active_path[2])
        paths = conn._network_paths
        return paths[0].addr if paths else None

    def receive_many(self, conn: Any, datagrams: list[bytes], addr: Any, now: float) -> None:
        """Feed a batch of datagrams from one address (qh3 processes them in one native call)."""
        if self.name == "qh3":
            if conn._handshake_complete and conn._quic_logger is None:
                # Skip the wrapper's per-datagram logging hooks (same calls it makes itself).
                conn._call_core(conn._core.receive_many_datagrams, datagrams, addr, now)
                conn._drain_core()
            elif len(datagrams) == 1:
                conn.receive_datagram(datagrams[0], addr, now)
            else:
                conn.receive_many_datagrams(datagrams, addr, now)
        else:
            for data in datagrams:
                conn.receive_datagram(data, addr, now)

    def can_open_stream(self, conn: Any) -> bool:
        """True when the peer's MAX_STREAMS credit allows one more bidirectional stream now."""
        index = conn.get_next_available_stream_id(False) // 4
        if self.name == "qh3":
            core = conn._core
            return core is not None and index < core.stream_limits[0]
        return index < conn._remote_max_streams_bidi

    def datagrams_to_send(self, conn: Any, now: float) -> list[tuple[Any, list[bytes]]]:
        """What the connection wants sent now, as runs of datagrams per destination, in order."""
        groups: list[tuple[Any, list[bytes]]] = []
        last: Any = None
        run: list[bytes] = []
        if self.name == "qh3" and conn._core is not None and conn._quic_logger is None:
            # Straight to the native core: qh3's wrapper re-parses every packet header for
            # its (disabled) logger, ~30% of the sender's CPU at 100 MB/s.
            poll = conn._core.poll_transmit
            while True:
                try:
                    transmit = poll(now)
                except RuntimeError as exc:
                    raise self._conn.QuicConnectionError(0x1, None, str(exc)) from exc
                if transmit is None:
                    return groups
                addr = transmit[1]
                if addr != last:
                    run = []
                    groups.append((addr, run))
                    last = addr
                run.append(transmit[0])
        if self.name == "aioquic" and not conn._network_paths:
            return groups  # aioquic indexes its first path unconditionally
        for data, addr in conn.datagrams_to_send(now):
            if addr != last:
                run = []
                groups.append((addr, run))
                last = addr
            run.append(data)
        return groups

    def receive_authenticated(self, conn: Any, datagrams: list[bytes], addr: Any, now: float) -> bool:
        """Feed datagrams; True when at least one carried a packet that decrypted (not spoofable)."""
        if self.name == "qh3":
            core = conn._core
            if core is None or not conn._handshake_complete:
                self.receive_many(conn, datagrams, addr, now)
                return False
            # The native report's third field counts packets that passed decryption.
            report = conn._call_core(core.receive_many_datagrams, datagrams, addr, now)
            conn._drain_core()
            return bool(report[2])
        space = conn._spaces.get(self._tls.Epoch.ONE_RTT)
        before = space.largest_received_packet if space is not None else -1
        for data in datagrams:
            conn.receive_datagram(data, addr, now)
        return space is not None and space.largest_received_packet > before

    def events(self, conn: Any) -> Iterator[EngineEvent]:
        """Drain the connection's queued events, translated to engine-neutral ones."""
        ev = self._ev
        while True:
            event = conn.next_event()
            if event is None:
                return
            if isinstance(event, ev.StreamDataReceived):
                yield StreamData(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, ev.HandshakeCompleted):
                yield HandshakeDone(event.alpn_protocol)
            elif isinstance(event, ev.StreamReset):
                yield StreamReset(event.stream_id, event.error_code)
            elif isinstance(event, ev.StopSendingReceived):
                yield StopSending(event.stream_id, event.error_code)
            elif isinstance(event, ev.PingAcknowledged):
                yield PingAcked(event.uid)
            elif isinstance(event, ev.ConnectionIdIssued):
                yield CidIssued(event.connection_id)
            elif isinstance(event, ev.ConnectionIdRetired):
                yield CidRetired(event.connection_id)
            elif isinstance(event, ev.ConnectionTerminated):
                yield Terminated(event.error_code, event.reason_phrase or "")
            # ProtocolNegotiated, DatagramFrameReceived: not used by pcloud.

    def send_buffer_size(self, conn: Any, stream_id: int) -> int:
        """Bytes queued on `stream_id` and not yet sent (flow control, congestion, pacing)."""
        if self.name == "qh3":
            return conn.get_send_buffer_size(stream_id)
        stream = conn._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start if hasattr(sender, "_buffer_stop") else 0


def _der_of(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.DER)


def _pem_to_pkcs8(pem: bytes) -> bytes:
    """qh3's key wants PKCS#8 DER; strip the PEM armour."""
    import base64

    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body)


_qh3_warm = False


def _warm_qh3() -> None:
    """Pay qh3's one-time ML-KEM set-up (~60 ms, first X25519ML768 key share) when the engine is built.

    Otherwise each process's first handshake pays it on both sides (seen in profiles of the
    replication bench: ~60 ms of a 1.1 s fetch), e.g. the first LAN connection after start.
    """
    global _qh3_warm
    if not _qh3_warm:
        from qh3._hazmat import X25519ML768KeyExchange
        X25519ML768KeyExchange()
        _qh3_warm = True


def _norm(addr: Any) -> Any:
    return (addr[0], addr[1]) if isinstance(addr, tuple) and len(addr) >= 2 else addr


def get_engine(name: str | None = None, *, max_datagram_size: int = 1200, idle_timeout: float = 30.0) -> Engine:
    """The engine named by `name`, else $PCLOUD_QUIC_ENGINE, else DEFAULT_ENGINE."""
    return Engine(name or os.environ.get("PCLOUD_QUIC_ENGINE") or DEFAULT_ENGINE, max_datagram_size, idle_timeout)


def parse_dcid(data: bytes) -> tuple[bytes, bool, bool] | None:
    """Destination connection id of a QUIC datagram: (dcid, is_long_header, is_v1_initial).

    RFC 9000 section 17: long headers carry the DCID length, short headers use ours
    (fixed CONNECTION_ID_LENGTH). None when the datagram cannot be QUIC.
    """
    if len(data) < 1 + CONNECTION_ID_LENGTH:
        return None
    first = data[0]
    if first & 0x80:
        if len(data) < 7:
            return None
        version = int.from_bytes(data[1:5], "big")
        length = data[5]
        if length > 20 or len(data) < 6 + length:
            return None
        dcid = bytes(data[6 : 6 + length])
        is_initial = version == QUIC_VERSION_1 and (first & 0x30) == 0
        return dcid, True, is_initial
    return bytes(data[1 : 1 + CONNECTION_ID_LENGTH]), False, False


__all__ = [
    "ALPN", "DEFAULT_ENGINE", "ENGINES", "Engine", "EngineConnection", "EngineEvent", "HandshakeDone",
    "StreamData", "StreamReset", "StopSending", "PingAcked", "CidIssued", "CidRetired", "Terminated",
    "get_engine", "parse_dcid",
]
