"""Shared helpers for the transport conformance suite (run once per QUIC engine)."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable, TypeVar

from transport.endpoint import Endpoint

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


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until true or fail the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
