"""A pcloud device for the network lab: one Endpoint + Reachability in its own process.

Run inside a lab host (``netlab exec HOST python -m tests.netlab_agent ...``).
Reads JSON commands from stdin, one per line:
    {"cmd": "send", "peer": HEX, "size": N, "seed": S}   stream N pseudo-random bytes to the peer
    {"cmd": "request", "peer": HEX}                       one request/response round trip
Rewrites ``--status FILE`` (JSON) every 0.1 s: peers with path/addr/rtt and the
session object's id (stable across migrations), transport events with
time.monotonic() stamps (comparable between processes on one machine),
received and sent stream results with their BLAKE2b digests.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import sys
import time
from typing import Any

from transport.endpoint import Endpoint
from transport.errors import TransportError
from transport.events import AuthFailed, PathChanged, PeerDown, PeerUp
from transport.pathmgr import Reachability

CHUNK = 256 * 1024


def addr_text(addr: Any) -> Any:
    return list(addr) if isinstance(addr, tuple) else addr


async def main(a: argparse.Namespace) -> None:
    peers = {bytes.fromhex(p) for p in a.peer}
    ep = await Endpoint.start("0.0.0.0", a.port, bytes.fromhex(a.seed), admit=lambda k: k in peers,
                              idle_timeout=a.idle_timeout)
    relay = [(h, int(p)) for h, p in (x.rsplit(":", 1) for x in a.relay)] if a.relay else None
    reach = Reachability(ep, peers, relay=relay, relay_scope=bytes.fromhex(a.scope) if a.scope else None,
                         vault_tag=bytes.fromhex(a.tag) if a.tag else None,
                         mdns_interfaces="all" if a.mdns else ("127.0.0.1",))
    state: dict[str, Any] = {"key": ep.device_id.hex(), "events": [], "received": [], "sent": [],
                             "requests": [], "t_start": time.monotonic()}

    def on_event(ev: Any) -> None:
        rec = {"t": time.monotonic(), "type": type(ev).__name__,
               "peer": ev.peer_id.hex() if getattr(ev, "peer_id", None) else None}
        if isinstance(ev, (PeerUp, PathChanged)):
            rec.update(path=ev.path, addr=addr_text(ev.addr))
        elif isinstance(ev, (PeerDown, AuthFailed)):
            rec.update(reason=ev.reason)
        state["events"].append(rec)

    ep.subscribe(on_event)

    async def on_bulk(session: Any, stream: Any) -> None:
        h = hashlib.blake2b()
        n = 0
        t0 = time.monotonic()
        async for chunk in stream:
            h.update(chunk)
            n += len(chunk)
        state["received"].append({"peer": session.peer_id.hex(), "size": n, "digest": h.hexdigest(),
                                  "seconds": time.monotonic() - t0})

    async def on_echo(session: Any, body: Any) -> Any:
        return body

    ep.on_stream("bulk", on_bulk)
    ep.on_request("echo", on_echo)
    await reach.start()
    state["t_reach_started"] = time.monotonic()

    async def send(cmd: dict[str, Any]) -> None:
        peer = bytes.fromhex(cmd["peer"])
        rng = random.Random(cmd.get("seed", 1))
        h = hashlib.blake2b()
        t0 = time.monotonic()
        rec: dict[str, Any] = {"peer": cmd["peer"], "size": cmd["size"]}
        try:
            session = ep.sessions[peer]
            stream = await session.open_stream("bulk")
            left = cmd["size"]
            while left > 0:
                chunk = rng.randbytes(min(CHUNK, left))
                h.update(chunk)
                await stream.write(chunk)
                left -= len(chunk)
            stream.close()
            await stream.drain()
            rec.update(digest=h.hexdigest(), seconds=time.monotonic() - t0, path=session.path)
        except (TransportError, KeyError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        state["sent"].append(rec)

    async def request(cmd: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            got = await ep.sessions[bytes.fromhex(cmd["peer"])].request("echo", b"hello", timeout=5)
            state["requests"].append({"ok": got == b"hello", "ms": (time.monotonic() - t0) * 1000})
        except (TransportError, KeyError) as exc:
            state["requests"].append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    async def commands() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "send":
                asyncio.ensure_future(send(cmd))
            elif cmd["cmd"] == "request":
                asyncio.ensure_future(request(cmd))
            elif cmd["cmd"] == "quit":
                return

    async def report() -> None:
        while True:
            state["peers"] = []
            for st in reach.status():
                s = ep.sessions.get(st.id)
                state["peers"].append({"id": st.id.hex(), "path": st.path, "addr": st.addr, "rtt_ms": st.rtt_ms,
                                       "session": id(s) if s is not None else None})
            state["registered"] = reach.registered
            state["now"] = time.monotonic()
            tmp = a.status + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(state, fh)
            os.replace(tmp, a.status)
            await asyncio.sleep(0.1)

    reporter = asyncio.ensure_future(report())
    try:
        await commands()
    finally:
        reporter.cancel()
        await reach.close()
        await ep.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--relay", action="append", default=[])
    ap.add_argument("--scope")
    ap.add_argument("--tag")
    ap.add_argument("--port", type=int, default=4433)
    ap.add_argument("--mdns", action="store_true")
    ap.add_argument("--idle-timeout", type=float, default=30.0)
    ap.add_argument("--status", required=True)
    ap.add_argument("--log", default="WARNING")
    args = ap.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log, format="%(relativeCreated)d %(name)s %(message)s")
    asyncio.run(main(args))
