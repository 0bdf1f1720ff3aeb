"""Fire-and-forget message delivery: plain handlers run inline, coroutine handlers as tasks.

Raft rides on plain handlers (``consensus.session_link``): a message must reach them in the
datagram callback itself, in order, and whatever they send must leave without waiting for
another loop turn. A plain handler that raises is logged and the session goes on.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from transport_helpers import ENGINES, pair, run, wait_for
from transport.session import Session

engines = pytest.mark.parametrize("engine", ENGINES)


@engines
def test_plain_handler_runs_inline_in_order_and_may_answer_at_once(engine: str) -> None:
    async def body() -> None:
        a, b = await pair(engine)
        got: list[tuple[object, bool]] = []
        answers: list[object] = []

        def ping(s: Session, payload: object) -> None:
            # Inside the datagram callback there is no current task; a spawned handler has one.
            got.append((payload, asyncio.current_task() is None))
            s.send("pong", payload)              # answered from inside the callback

        async def pong(s: Session, payload: object) -> None:
            answers.append(payload)

        b.on_message("ping", ping)
        a.on_message("pong", pong)                 # coroutine handlers still work
        s = await a.connect(b.device_id, b.local_address)
        for i in range(50):
            s.send("ping", {"i": i})
        await wait_for(lambda: len(answers) == 50)
        assert [p for p, _ in got] == [{"i": i} for i in range(50)]
        assert all(inline for _, inline in got)
        assert answers == [{"i": i} for i in range(50)]
        await a.close()
        await b.close()

    run(body())


@engines
def test_plain_handler_that_raises_is_logged_and_the_session_goes_on(engine: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        a, b = await pair(engine)
        got: list[object] = []

        def fragile(s: Session, payload: object) -> None:
            if payload == b"bad":
                raise ValueError("handler bug")
            got.append(payload)

        b.on_message("m", fragile)
        s = await a.connect(b.device_id, b.local_address)
        with caplog.at_level(logging.ERROR, logger="transport.session"):
            s.send("m", b"one")
            s.send("m", b"bad")
            s.send("m", b"two")
            await wait_for(lambda: got == [b"one", b"two"])
        assert any("message handler for 'm' failed" in r.getMessage() for r in caplog.records)
        assert s.state == "up"
        await a.close()
        await b.close()

    run(body())
