"""Review round 17 of the client-side fault injector's live ``SlowBody`` (a plain
``aiohttp.ClientSession``, or a streaming ``RetryMiddleware(buffer_body=False)``: the body paced
as it is read from the real connection).

1. The paced body's stream and the real connection's, which the feeding task reads, carried the
   same aiohttp request timer (``ClientTimeout.total``). aiohttp's ``TimerContext`` keeps the
   tasks in it as a stack and drops the last one on each exit, so the exits of the two tasks
   crossed: the caller stayed registered between its reads, and the total timeout cancelled its
   own work there (a bare ``CancelledError``), instead of failing its next read with
   ``TimeoutError`` as it does without the fault. Only the caller's read runs under the timer
   now; the feeding sees the timeout at its own steps and ends with it, even while the caller
   holds the body back.
2. Closing the session while the caller held back a paced body left the feeding task waiting
   for ever on the reader's flow control, holding the real answer and what it had read. It ends
   with the session's close now, and the caller's next read fails with a typed
   ``aiohttp.ClientConnectionError`` that says the session (not an engine) was closed.

They run on the real clock (aiohttp's timeouts run on the loop's time), against a loopback
server; every wait for something to happen is bounded generously, as the machine may be slow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import Delay, FaultInjector, FaultRule, Hang, SlowBody
from le_transport.chaos.injector import _DribbledResponse
from le_transport.clock import RealClock
from le_transport.middleware.retry import ClosedInFlight

#: The bound on any wait for something that should happen within a fraction of a second.
PATIENCE_S = 10.0


async def _trickle(request: web.Request) -> web.StreamResponse:
    """A body that comes 10 bytes at a time, 50 ms apart (for far longer than any test)."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(2000):
            await resp.write(b"x" * 10)
            await asyncio.sleep(0.05)
    return resp


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * (4 * 2**20))


@pytest.fixture
async def host(no_leaked_tasks: None) -> AsyncIterator[str]:
    """A loopback server: ``/t`` trickles, ``/b`` answers 4 MiB at once. (Inside the leak
    check: its handlers end with it, the trickle's once its client has gone.)"""
    app = web.Application()
    app.router.add_get("/t", _trickle)
    app.router.add_get("/b", _big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _injector(fault: SlowBody | None) -> FaultInjector:
    rules = [FaultRule("r", fault)] if fault is not None else []
    return FaultInjector.seeded(1, *rules, clock=RealClock())


async def _until(condition: Callable[[], bool], *, within: float = PATIENCE_S) -> bool:
    """Wait (looking every 10 ms) until ``condition`` holds; False if it did not within
    ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _chaos_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("le_transport.chaos") and not t.done()
    ]


def _held_back(resp: aiohttp.ClientResponse) -> bool:
    """Whether the reader holds its paced body back (aiohttp's buffer past its high-water
    mark: the feeding waits)."""
    flowing: asyncio.Event = resp.content._protocol.flowing  # type: ignore[attr-defined]
    return not flowing.is_set()


# -- 1. the total timeout strikes the caller's next read, and ends the feeding -------------------


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "slow-body"])
async def test_the_total_timeout_strikes_the_next_read_not_the_callers_own_work(
    host: str, fault: bool
) -> None:
    """Before: under the fault, the total timeout cancelled the caller's own work between its
    reads (a bare ``CancelledError``). Now, as without the fault, its next read raises
    ``TimeoutError``, and the feeding has ended with it."""
    injector = _injector(SlowBody(chunk_bytes=10, chunk_delay_ms=20) if fault else None)
    outcome = None
    feeder: asyncio.Task[None] | None = None
    async with (
        aiohttp.ClientSession(
            middlewares=[injector], timeout=aiohttp.ClientTimeout(total=1.0)
        ) as session,
        session.get(f"http://{host}/t") as resp,
    ):
        if fault:
            assert isinstance(resp, _DribbledResponse)
            feeder = resp.feeder
        for _ in range(1000):  # (1000 reads take 40 s at least: the guard against a hang)
            try:
                chunk = await resp.content.read(10)
            except TimeoutError:
                outcome = "the next read raised TimeoutError"
                break
            assert chunk
            try:
                await asyncio.sleep(0.04)  # the caller's own work between reads
            except asyncio.CancelledError:
                outcome = "the caller's own work was cancelled"
                break
        if feeder is not None:
            # Ended with the read (before the answer is released on leaving the block).
            assert await _until(feeder.done), "the feeding outlived the total timeout"
    assert outcome == "the next read raised TimeoutError"
    assert _chaos_tasks() == []


@pytest.mark.parametrize("fault", [False, True], ids=["no-fault", "slow-body"])
async def test_the_total_timeout_ends_the_feeding_of_a_body_the_caller_holds_back(
    host: str, fault: bool
) -> None:
    """Before: the feeding of a body the caller held back (not reading) waited on the reader's
    flow control through the total timeout, and on. Now the timeout ends it where it strikes,
    the caller not reading; the caller's next read raises ``TimeoutError``, as without the
    fault."""
    injector = _injector(SlowBody(chunk_bytes=2**14, chunk_delay_ms=1) if fault else None)
    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession(
            middlewares=[injector], timeout=aiohttp.ClientTimeout(total=1.0)
        ) as session,
    ):
        started = loop.time()
        async with session.get(f"http://{host}/b") as resp:
            assert await resp.content.read(10) == b"x" * 10
            if fault:
                assert isinstance(resp, _DribbledResponse)
                feeder = resp.feeder
                assert feeder is not None
                assert await _until(lambda: _held_back(resp)), "never held back"
                assert not feeder.done()
                # Ended by the timeout alone: nothing is read, released or closed meanwhile.
                assert await _until(feeder.done, within=1.0 + PATIENCE_S)
                assert loop.time() - started >= 0.9  # (not before the timeout struck)
                assert _chaos_tasks() == []
            else:
                await asyncio.sleep(1.5)
            with pytest.raises(TimeoutError):
                await resp.content.read(10)


async def test_a_feeding_cancelled_from_outside_fails_the_read_as_no_timeout(host: str) -> None:
    """A guard on the net under the feeding (a reader must not wait for ever on a body nothing
    feeds): before, a feeding cancelled from outside (the loop's shutdown, say) failed the
    read with ``TimeoutError``, as the only such cancel was the total timeout's. It is none now:
    the read fails as a connection's."""
    injector = _injector(SlowBody(chunk_bytes=10, chunk_delay_ms=60_000))
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(f"http://{host}/t") as resp,
    ):
        assert isinstance(resp, _DribbledResponse)
        assert await resp.content.read(10) == b"x" * 10  # the first piece, at once
        feeder = resp.feeder
        assert feeder is not None
        feeder.cancel()
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            await asyncio.wait_for(resp.content.read(10), PATIENCE_S)
        assert not isinstance(caught.value, TimeoutError)
        assert "cancelled" in str(caught.value)


# -- 2. the session's close under a body the caller holds back -----------------------------------


async def test_closing_the_session_under_a_held_back_slow_body_ends_its_feeding(
    host: str,
) -> None:
    """Before: the feeding task waited for ever for the reader to take more, holding the real
    answer and what it had read. Now the session's close ends it, and the caller's next read
    fails with ``ClosedInFlight`` (an ``aiohttp.ClientConnectionError``) saying the session, not
    an engine, was closed."""
    injector = _injector(SlowBody(chunk_bytes=2**14, chunk_delay_ms=1))
    session = aiohttp.ClientSession(middlewares=[injector])
    try:
        resp = await session.get(f"http://{host}/b")
        assert isinstance(resp, _DribbledResponse)
        feeder = resp.feeder
        assert feeder is not None
        assert await resp.content.read(10) == b"x" * 10
        assert await _until(lambda: _held_back(resp)), "never held back"
    finally:
        await session.close()
    try:
        assert await _until(feeder.done), f"still running after the close: {_chaos_tasks()}"
        assert _chaos_tasks() == []
        assert resp.source is None  # the real answer let go
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            await asyncio.wait_for(resp.content.read(10), PATIENCE_S)
        assert isinstance(caught.value, ClosedInFlight)
        assert "engine" not in str(caught.value)
        assert "session was closed" in str(caught.value)
    finally:
        resp.release()


@pytest.mark.parametrize("fault", [Hang(), Delay(3_600_000)], ids=["hang", "delay"])
async def test_closing_a_plain_session_ends_a_request_an_injected_wait_holds(
    host: str, fault: Hang | Delay
) -> None:
    """Before: with no engine, an injected Hang (or a long Delay) waited on for ever after the
    session closed under it, where a real server's held request ends at once."""
    injector = FaultInjector.seeded(1, FaultRule("r", fault), clock=RealClock())
    session = aiohttp.ClientSession(
        middlewares=[injector], timeout=aiohttp.ClientTimeout(total=None)
    )
    request = asyncio.ensure_future(session.get(f"http://{host}/b"))
    await asyncio.sleep(0.05)
    await session.close()
    with pytest.raises(ClosedInFlight, match="session was closed"):
        await asyncio.wait_for(request, 10)
