"""A recording RaftLink handler and a poll helper, for tests of consensus links (QUIC sessions, TCP)."""
from __future__ import annotations

import asyncio
from typing import Callable


class Sink:
    """Records what a link reports: peers up, and (peer, frame) for every frame received."""

    def __init__(self) -> None:
        self.up: set[bytes] = set()
        self.frames: list[tuple[bytes, bytes]] = []

    def link_up(self, peer: bytes) -> None:
        self.up.add(peer)

    def link_down(self, peer: bytes) -> None:
        self.up.discard(peer)

    def link_message(self, peer: bytes, frame: bytes) -> None:
        self.frames.append((peer, frame))


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` every 20 ms; True as soon as it holds, False after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return False
