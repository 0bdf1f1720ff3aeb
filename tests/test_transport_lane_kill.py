"""A lane peer killed mid-transfer costs its own streams only, never the endpoint's other traffic.

The peer is a real process (an Endpoint with the TCP lane on) that we SIGKILL while a
bulk stream to it rides the lane: the kernel resets the TCP connection at once, while
its QUIC session lingers until the idle timeout, and we are the lane's client, so we
also redial it (1 s later) over that dead session. Throughout, requests to another
peer must keep answering quickly and our event loop must keep ticking: that is what a
Raft election between the survivors (bench_consensus) depends on.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from transport_helpers import pair, wait_for
from transport.errors import TransportError
from transport.identity import DeviceIdentity
from transport.session import Session
from transport.stream import Stream

ENGINE = "qh3"
REPO = Path(__file__).resolve().parent.parent
WATCH = 3.5  # seconds after the kill: covers the lane's first redial (1 s) and its 5 s-bounded set-up start
MAX_RTT = 0.5  # a loopback request takes ~1 ms; this leaves room for a loaded CI machine, not for a stall
MAX_LOOP_GAP = 0.3

PEER = """
import asyncio, sys
from transport.endpoint import Endpoint

async def main() -> None:
    allowed = bytes.fromhex(sys.argv[2])
    ep = await Endpoint.start("127.0.0.1", 0, bytes.fromhex(sys.argv[1]), admit=lambda k: k == allowed,
                              engine="qh3", tcp_lane=True)

    async def sink(session, stream) -> None:
        async for _ in stream:
            pass
    ep.on_stream("sink", sink)
    print(ep.local_address[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_killed_lane_peer_does_not_stall_other_sessions_or_the_loop() -> None:
    async def scenario() -> None:
        seed_c = os.urandom(32)
        c_id = DeviceIdentity.from_seed(seed_c).public_key
        allowed: set[bytes] = {c_id}
        a, b = await pair(ENGINE, admit_a=lambda k: k in allowed, tcp_lane=True)
        allowed.add(b.device_id)

        async def echo(session: Session, body: object) -> object:
            return body
        b.on_request("echo", echo)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PEER, seed_c.hex(), a.device_id.hex(), cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            assert proc.stdout is not None
            port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
            to_c = await a.connect(c_id, ("127.0.0.1", port), path_kind="lan")
            to_b = await a.connect(b.device_id, b.local_address, path_kind="lan")
            await wait_for(lambda: to_c.lane is not None and to_b.lane is not None)
            lane_c = to_c.lane
            stream = await to_c.open_stream("sink")
            assert isinstance(stream, Stream) and stream._session is lane_c, "the bulk stream rides the lane"
            write_error: list[BaseException] = []

            async def pump() -> None:
                try:
                    while True:
                        await stream.write(b"x" * 65536)
                except TransportError as exc:
                    write_error.append(exc)
            pumping = asyncio.get_running_loop().create_task(pump())
            assert (await to_b.request("echo", {"n": -1}, timeout=2)) == {"n": -1}
            await asyncio.sleep(0.3)  # the lane is busy carrying bulk data when the peer dies

            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
            ticking = asyncio.get_running_loop().create_task(ticker())
            proc.kill()
            await proc.wait()
            rtts: list[float] = []
            end = time.monotonic() + WATCH
            n = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                assert (await to_b.request("echo", {"n": n}, timeout=2)) == {"n": n}
                rtts.append(time.monotonic() - t0)
                n += 1
                await asyncio.sleep(0.02)
            ticking.cancel()
            await wait_for(lambda: lane_c.closed, timeout=2)
            await asyncio.wait_for(pumping, 2)
            assert write_error, "the stream on the dead lane fails instead of hanging"
            assert to_b.state == "up" and to_b.lane is not None and not to_b.lane.closed, "the other lane is untouched"
            assert max(rtts) < MAX_RTT, f"requests to the live peer stalled: max {max(rtts):.3f} s over {len(rtts)}"
            assert max(gaps) < MAX_LOOP_GAP, f"event loop blocked for {max(gaps):.3f} s"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
