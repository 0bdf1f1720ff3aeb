"""One stream's throughput between two processes on loopback: pcloud QUIC and its TCP lane vs TCP vs TLS-over-TCP.

    .venv/bin/python bench/bench_transport.py [--mb 200] [--runs 3] [--quick]

Same bytes for every variant: the sender writes MB mebibytes in 1 MiB slices; the receiver
(another process) hashes what it gets and answers with the byte count, so the timing covers
delivery to the receiving application. Also measures connection setup (handshake + device-key
auth) for QUIC and pinned-certificate TLS. Prints a table and appends it to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import append_results, table  # noqa: E402

from transport.endpoint import Endpoint  # noqa: E402
from transport.identity import DeviceIdentity  # noqa: E402

SLICE = 1024 * 1024


def cpu() -> float:
    """This process's CPU seconds (user + system): a cost measure that load on the machine does not skew."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- receiver side (runs in a child process) ---------------------------------------------
async def serve_quic(seed: bytes, engine: str, mds: int, lane: bool = False) -> None:
    ep = await Endpoint.start("127.0.0.1", 0, seed, admit=lambda k: True, engine=engine, max_datagram_size=mds,
                              tcp_lane=lane)

    async def sink(session, stream) -> None:  # noqa: ANN001
        c0 = cpu()
        digest, total = hashlib.sha256(), 0
        async for chunk in stream:
            digest.update(chunk)
            total += len(chunk)
        await stream.write(f"{total} {digest.hexdigest()} {cpu() - c0}".encode())

    async def ping(session, body):  # noqa: ANN001
        return {}

    ep.on_stream("sink", sink)
    ep.on_request("ping", ping)
    print(ep.local_address[1], ep.device_id.hex(), flush=True)
    await asyncio.Event().wait()


async def serve_tcp(tls: ssl.SSLContext | None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A length prefix, because asyncio TLS streams cannot half-close.
        remaining = int.from_bytes(await reader.readexactly(8), "big")
        c0 = cpu()
        digest, total = hashlib.sha256(), 0
        while remaining:
            chunk = await reader.read(min(SLICE, remaining))
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
            remaining -= len(chunk)
        writer.write(f"{total} {digest.hexdigest()} {cpu() - c0}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    print(server.sockets[0].getsockname()[1], "-", flush=True)
    await asyncio.Event().wait()


def tls_context(server: bool, own: DeviceIdentity, peer: DeviceIdentity, tmp: Path) -> ssl.SSLContext:
    """TLS 1.3, Ed25519 certificates, each side pins the other's self-signed certificate."""
    cert = tmp / f"{own.public_key.hex()[:8]}.pem"
    key = tmp / f"{own.public_key.hex()[:8]}.key"
    peer_cert = tmp / f"{peer.public_key.hex()[:8]}-peer.pem"
    cert.write_text(ssl.DER_cert_to_PEM_cert(own.cert_der))
    key.write_bytes(own.key_pem)
    peer_cert.write_text(ssl.DER_cert_to_PEM_cert(peer.cert_der))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(peer_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    return ctx


# --- sender side -----------------------------------------------------------------------------
def spawn(*args: str) -> tuple[subprocess.Popen, int, bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    port, key = proc.stdout.readline().split()
    return proc, int(port), (bytes.fromhex(key) if key != "-" else b"")


def payload() -> bytes:
    return os.urandom(SLICE)


async def send_quic(engine: str, mds: int, port: int, server_key: bytes, mb: int, data: bytes,
                    lane: bool = False) -> tuple[float, float, float]:
    ep = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine, max_datagram_size=mds,
                              tcp_lane=lane)
    t0 = time.perf_counter()
    session = await ep.connect(server_key, ("127.0.0.1", port), path_kind="lan")
    if lane:  # the TCP bulk lane comes up right after the session (one request + TCP + TLS 1.3)
        while session.lane is None:
            await asyncio.sleep(0.001)
    setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu()
    stream = await session.open_stream("sink")
    for _ in range(mb):
        await stream.write(data)
    stream.close()
    answer = await stream.read_all(limit=200)
    elapsed, spent = time.perf_counter() - t0, cpu() - c0
    assert int(answer.split()[0]) == mb * SLICE, answer
    await ep.close()
    return elapsed, setup, spent + float(answer.split()[2])


async def setup_quic(engine: str, port: int, server_key: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        ep = await Endpoint.start("127.0.0.1", 0, os.urandom(32), admit=lambda k: True, engine=engine, tcp_lane=False)
        t0 = time.perf_counter()
        session = await ep.connect(server_key, ("127.0.0.1", port))
        await session.request("ping", {})
        times.append(time.perf_counter() - t0)
        await ep.close()
    return statistics.median(times)


async def send_tcp(port: int, mb: int, data: bytes, tls: ssl.SSLContext | None) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu()
    writer.write((mb * SLICE).to_bytes(8, "big"))
    for _ in range(mb):
        writer.write(data)
        await writer.drain()
    answer = await reader.read()
    elapsed, spent = time.perf_counter() - t0, cpu() - c0
    assert int(answer.split()[0]) == mb * SLICE, answer
    writer.close()
    return elapsed, setup, spent + float(answer.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of 50 MB, no RESULTS.md entry")
    parser.add_argument("--serve", nargs="*")
    parser.add_argument("--only", default="", help="comma list of variant prefixes to run")
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    args = parser.parse_args()
    if args.uvloop or os.environ.get("BENCH_UVLOOP"):
        import uvloop

        uvloop.install()
        os.environ["BENCH_UVLOOP"] = "1"  # the receiver processes too
    if args.serve is not None:
        kind = args.serve[0]
        if kind == "quic":
            asyncio.run(serve_quic(bytes.fromhex(args.serve[1]), args.serve[2], int(args.serve[3]),
                                   len(args.serve) > 4 and args.serve[4] == "lane"))
        elif kind == "tcp":
            asyncio.run(serve_tcp(None))
        else:
            tmp = Path(args.serve[3])
            own = DeviceIdentity.from_seed(bytes.fromhex(args.serve[1]))
            peer = DeviceIdentity.from_seed(bytes.fromhex(args.serve[2]))
            asyncio.run(serve_tcp(tls_context(True, own, peer, tmp)))
        return
    if args.quick:
        args.mb, args.runs = 50, 1
    data = payload()
    rows = []
    results: dict[str, float] = {}
    variants: list[tuple[str, list[str]]] = [
        ("tcp", ["tcp"]),
        ("tls13-tcp", ["tls"]),
        ("quic qh3 1200", ["quic", "qh3", "1200"]),
        ("quic qh3 1452", ["quic", "qh3", "1452"]),
        ("quic aioquic 1200", ["quic", "aioquic", "1200"]),
        ("quic aioquic 1452", ["quic", "aioquic", "1452"]),
        ("pcloud stream via lane", ["quic", "qh3", "1200", "lane"]),
    ]
    only = [o for o in args.only.split(",") if o]
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, spec in variants:
            if only and not any(name.startswith(o) for o in only):
                continue
            speeds, setups, cpus = [], [], []
            for _ in range(args.runs):
                if spec[0] == "quic":
                    seed = os.urandom(32)
                    lane = spec[3:] == ["lane"]
                    proc, port, key = spawn("quic", seed.hex(), *spec[1:])
                    try:
                        elapsed, setup, spent = asyncio.run(send_quic(spec[1], int(spec[2]), port, key, args.mb, data, lane))
                        if lane:
                            setups.append(setup)  # connect + auth + lane (request, TCP, TLS 1.3)
                        elif not setups:
                            setups.append(asyncio.run(setup_quic(spec[1], port, key, 10)))
                    finally:
                        proc.kill()
                        proc.wait()
                elif spec[0] == "tcp":
                    proc, port, _ = spawn("tcp")
                    try:
                        elapsed, setup, spent = asyncio.run(send_tcp(port, args.mb, data, None))
                        setups.append(setup)
                    finally:
                        proc.kill()
                        proc.wait()
                else:
                    server, client = DeviceIdentity.from_seed(os.urandom(32)), DeviceIdentity.from_seed(os.urandom(32))
                    proc, port, _ = spawn("tls", server.seed.hex(), client.seed.hex(), tmpdir)
                    try:
                        ctx = tls_context(False, client, server, Path(tmpdir))
                        elapsed, setup, spent = asyncio.run(send_tcp(port, args.mb, data, ctx))
                        setups.append(setup)
                    finally:
                        proc.kill()
                        proc.wait()
                speeds.append(args.mb * SLICE / elapsed / 1e6)
                cpus.append(spent / (args.mb * SLICE / 1e9))
            median = statistics.median(speeds)
            results[name] = median
            rows.append([name, f"{median:.0f}", " / ".join(f"{s:.0f}" for s in speeds),
                         f"{statistics.median(setups) * 1000:.1f}" if setups else "-",
                         f"{statistics.median(cpus):.1f}"])
            print(rows[-1], flush=True)
    base = results.get("tcp")
    if base:
        for row in rows:
            row.append(f"{results[row[0]] / base:.2f}")
    headers = ["variant", "MB/s (median)", "runs", "setup ms (median)", "CPU s/GB (both ends)", "vs tcp"][: len(rows[0])]
    out = table(headers, rows)
    print(out)
    if not args.quick:
        append_results(
            f"bench_transport: one {args.mb} MiB stream between two processes on loopback",
            out,
            [
                "MB/s = 10^6 bytes/s delivered to the receiving application (it hashes every byte);",
                "QUIC = pcloud transport (Endpoint/Session/Stream, device-key auth, credit backpressure, batched "
                "receive, GSO/GRO via quinn-udp when available); 'setup' for QUIC = connect + auth + one request "
                "round trip (median of 10), for TCP/TLS = connect (+ TLS 1.3 handshake with pinned Ed25519 certs).",
                "CPU s/GB = user+system CPU seconds of sender + receiver per 10^9 bytes (includes the receiver's "
                "sha256): a cost measure that machine load does not skew, unlike MB/s.",
                "'pcloud stream via lane' = the same Session.open_stream / Stream API riding the TCP bulk lane "
                "(transport/lane.py: AES-256-GCM records keyed over the session, v2) under a qh3 session; its setup = QUIC connect + auth + lane set-up. "
                "QUIC rows run with the lane off.",
                "2-core machine shared with other workers: MB/s numbers are noisy (see the load figure).",
            ],
        )


if __name__ == "__main__":
    main()
