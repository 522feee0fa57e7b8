"""An attempt cut by its call's deadline (``CircuitBreaker.slow_call``, ``RetryGate.cut``):
what the caller gets and what the gate is told when the gate misbehaves, and how long a lone
process's half-open probe holds its slot when its call's deadline bounds it. Real loopback
servers, virtual time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from le_transport import RetryMiddleware, RetryPolicy
from le_transport.errors import DeadlineExceeded
from le_transport.testing import VirtualClock

ServerFactory = Callable[[web.Application], Awaitable[str]]


class Hanging:
    """A loopback route that accepts the request and never answers (until the test ends)."""

    def __init__(self) -> None:
        self.hits = 0
        self.active = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        async def hang(request: web.Request) -> web.Response:
            self.hits += 1
            self.active += 1
            try:
                await self.release.wait()
            finally:
                self.active -= 1
            return web.Response()

        app = web.Application()
        app.router.add_get("/x", hang)
        return app


@pytest.fixture
async def hanging(serve: ServerFactory) -> AsyncIterator[tuple[Hanging, str]]:
    backend = Hanging()
    host = await serve(backend.app())
    yield backend, host
    backend.release.set()


async def _ended(backend: Hanging) -> None:
    """Let the server's handlers end (they are cut as their clients go): none left running."""
    backend.release.set()
    for _ in range(100):
        if not backend.active:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("a handler still runs")
    for _ in range(5):
        await asyncio.sleep(0)


class _FailingCutGate:
    """A gate of the caller's own whose ``cut`` raises (a bug of its own)."""

    def __init__(self) -> None:
        self.abandoned: list[int] = []
        self.cuts = 0

    async def admit(self, call: object, attempt: int) -> None:
        return None

    async def settle(self, call: object, attempt: int, outcome: object) -> None:
        raise AssertionError("no attempt here ends with an outcome")

    def abandon(self, call: object, attempt: int) -> None:
        self.abandoned.append(attempt)

    async def before_retry(
        self, call: object, attempt: int, outcome: object, pause: float, last: object
    ) -> None:
        raise AssertionError("no retry here")

    def cut(self, call: object, attempt: int, ran: float) -> None:
        self.cuts += 1
        raise RuntimeError("token=hunter2 in the gate's own error")


async def test_a_gate_whose_cut_raises_still_gives_the_caller_its_deadline_error(
    hanging: tuple[Hanging, str], clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's DeadlineExceeded is what the call owes it: a gate's own error while it is
    told of the cut replaced it (a raw RuntimeError out of engine.request). The attempt is
    abandoned instead (what a gate without ``cut`` is told), and the error logged by its type
    only (its text may quote what the gate handled)."""
    backend, host = hanging
    gate = _FailingCutGate()
    mw = RetryMiddleware(policy=RetryPolicy(pauses=(), deadline=7.0), clock=clock, gate=gate)
    with caplog.at_level(logging.WARNING, logger="le_transport"):
        async with aiohttp.ClientSession(middlewares=[mw]) as session:
            with pytest.raises(DeadlineExceeded, match="7 s deadline passed after 1 attempt"):
                await session.get(f"http://{host}/x")
    assert gate.cuts == 1
    assert gate.abandoned == [1], "abandoned instead, as a gate without cut has it"
    [record] = [r for r in caplog.records if "cut" in r.getMessage()]
    assert "RuntimeError" in record.getMessage()
    assert "hunter2" not in record.getMessage()
    await _ended(backend)
