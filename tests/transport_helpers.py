"""Shared helpers for the transport conformance suite (run once per QUIC engine)."""
from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any, Awaitable, Callable, TypeVar

from transport.endpoint import Endpoint
from transport.session import Session, Stream

ENGINES = ["qh3", "aioquic"]
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async test body with a hard deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def pair(engine: str, admit_a: Callable[[bytes], bool] | None = None,
               admit_b: Callable[[bytes], bool] | None = None, **kw: Any) -> tuple[Endpoint, Endpoint]:
    """Two endpoints on 127.0.0.1 that admit each other (unless told otherwise)."""
    seed_a, seed_b = os.urandom(32), os.urandom(32)
    keys: dict[str, bytes] = {}
    a = await Endpoint.start("127.0.0.1", 0, seed_a, admit=admit_a or (lambda k: k == keys["b"]), engine=engine, **kw)
    b = await Endpoint.start("127.0.0.1", 0, seed_b, admit=admit_b or (lambda k: k == keys["a"]), engine=engine, **kw)
    keys["a"], keys["b"] = a.device_id, b.device_id
    return a, b


async def echo(session: Session, body: object) -> dict:
    """The request handler most tests serve as "echo": answers ``{"echo": body}``."""
    return {"echo": body}


async def connect_echo(a: Endpoint, b: Endpoint) -> Session:
    """b serves "echo"; returns a's session to b on b's direct address."""
    b.on_request("echo", echo)
    return await a.connect(b.device_id, b.local_address)


def run_pair(engine: str, body: Callable[[Endpoint, Endpoint], Awaitable[None]], timeout: float = 60.0,
             **kw: Any) -> None:
    """Run `body(a, b)` on a fresh pair() (``kw`` go to Endpoint.start) with a hard deadline;
    both endpoints are closed however the body ends."""
    async def main() -> None:
        a, b = await pair(engine, **kw)
        try:
            await body(a, b)
        finally:
            await close_all(a, b)

    run(main(), timeout)


async def close_all(*endpoints: Endpoint | None) -> None:
    """Close each endpoint (None skipped; closing twice is harmless)."""
    for ep in endpoints:
        if ep is not None:
            await ep.close()


def sink(ep: Endpoint) -> dict[str, object]:
    """Serve a "sink" stream on `ep`; the dict gets the digest, size and meta of what arrives."""
    received: dict[str, object] = {}

    async def handler(s: Session, stream: Stream) -> None:
        digest, total = hashlib.sha256(), 0
        async for chunk in stream:
            digest.update(chunk)
            total += len(chunk)
        received["digest"], received["size"], received["meta"] = digest.hexdigest(), total, stream.meta

    ep.on_stream("sink", handler)
    return received


async def send_to_sink(session: Session, received: dict[str, object], size: int, timeout: float,
                       meta: dict[str, Any] | None = None, chunk: int | None = None) -> None:
    """Stream `size` random bytes to the peer's sink (in `chunk`-sized writes if given) and
    fail the test unless exactly those bytes arrive within `timeout`."""
    data = os.urandom(size)
    stream = await session.open_stream("sink", meta)
    step = chunk or len(data)
    for i in range(0, len(data), step):
        await stream.write(data[i : i + step])
    stream.close()
    await wait_for(lambda: "digest" in received, timeout=timeout)
    assert (received["digest"], received["size"]) == (hashlib.sha256(data).hexdigest(), len(data))


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until true or fail the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
