"""A clock whose ``sleep`` fails: what it guards ends with the clock's error, at once.

A clock other than :class:`~le_transport.RealClock` keeps a timeout with a watchdog task that
sleeps on it. When that sleep raised, the error waited unread in the watchdog and the block ran
with no limit (a request to a server that never answers: for ever).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from le_transport import Engine, RealClock, RetryPolicy
from le_transport.clock import _SWEEP_AT, _wheel_of, stall_timeout, timeout_after
from le_transport.sockets.keepalive import KeepaliveScheduler
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory, serve_silent


class _BrokenClock:
    """A clock that tells the time but cannot sleep (as VirtualClock's autojump on a loop it
    cannot read)."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise RuntimeError("this clock cannot sleep")

    def __repr__(self) -> str:
        return "_BrokenClock()"


@pytest.fixture
async def unretrieved() -> AsyncIterator[list[dict[str, Any]]]:
    """What the loop's exception handler was given ("Task exception was never retrieved")."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    yield seen
    loop.set_exception_handler(None)


def _clock_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "le_transport.clock"]


async def test_the_block_ends_at_once_with_the_clocks_error_and_one_log_line(
    caplog: pytest.LogCaptureFixture, unretrieved: list[dict[str, Any]]
) -> None:
    caplog.set_level(logging.ERROR, logger="le_transport.clock")
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="this clock cannot sleep"):
        async with timeout_after(_BrokenClock(), 5):
            await never  # before: waited for ever
    assert never.cancelled()
    [message] = _clock_errors(caplog)
    assert message.startswith("_BrokenClock.sleep(5) failed (RuntimeError:")
    assert "cannot be kept" in message
    gc.collect()
    await asyncio.sleep(0)
    assert unretrieved == []


async def test_an_outside_cancellation_stays_the_callers_when_the_clock_fails() -> None:
    """The block's own caller cancelled it first: the cancellation propagates as it is."""
    task = asyncio.current_task()
    assert task is not None

    async def body() -> None:
        async with timeout_after(_BrokenClock(), 5):
            task.cancel()
            await asyncio.sleep(1)

    with pytest.raises(asyncio.CancelledError):
        await body()
    task.uncancel()


async def test_an_engine_call_on_a_clock_that_cannot_sleep_fails_with_its_error(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that never answers: the attempt's timeout cannot be kept, so the call fails
    with the clock's error instead of waiting for ever (or being retried as a timeout)."""
    caplog.set_level(logging.ERROR, logger="le_transport.clock")
    host, hold = await serve_silent(serve, "/silent")
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=_BrokenClock(),
        retry=RetryPolicy(attempt_timeout=5.0),
    ) as engine:
        with pytest.raises(RuntimeError, match="this clock cannot sleep"):
            await engine.request("GET", "svc", "/silent")
    hold.set()
    assert len(_clock_errors(caplog)) == 1


async def test_the_keepalive_scheduler_stops_on_such_a_clock_rather_than_spin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its wait between deadlines is a clock timeout: one error, and the task ends with it,
    instead of a timeout that fires at once and is waited for again, in a loop."""
    caplog.set_level(logging.ERROR, logger="le_transport.clock")

    class Subject:
        def _keepalive_due(self, now: float) -> float | None:
            return now + 30

    scheduler = KeepaliveScheduler(_BrokenClock())
    scheduler.watch(Subject(), at=30.0)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not scheduler.running
    task = scheduler._task
    assert task is not None
    assert task.done()
    assert isinstance(task.exception(), RuntimeError)
    assert len(_clock_errors(caplog)) == 1
    await scheduler.close()


@pytest.mark.parametrize("seconds", [1e12, 1e307, sys.float_info.max])
async def test_a_real_clock_timeout_far_beyond_any_run_is_no_limit(seconds: float) -> None:
    # "No limit" written as a number: the real clock's wheel overflowed on the largest floats
    # (an OverflowError out of the request) instead of arming a timer that never fires.
    async with timeout_after(RealClock(), seconds):
        await asyncio.sleep(0)
    app = web.Application()
    app.router.add_get("/x", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        retry = RetryPolicy(attempt_timeout=seconds, deadline=seconds)
        async with Engine({"svc": host}, scheme="http", retry=retry) as engine:
            assert (await engine.request("GET", "svc", "/x")).status == 200
    finally:
        await runner.cleanup()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize("kind", ["real", "virtual"])
async def test_an_infinite_timeout_is_none_and_a_nan_one_is_refused_on_every_clock(
    kind: str,
) -> None:
    clock = RealClock() if kind == "real" else VirtualClock()
    # NaN timed out at once on the real clock (max(0.0, nan) is 0.0) and failed the block
    # after an ERROR log on the virtual one; infinity armed a watchdog that waited for ever.
    async with timeout_after(clock, math.inf) as limit:
        await asyncio.sleep(0)
    assert not limit.expired
    with pytest.raises(ValueError, match="NaN"):
        timeout_after(clock, math.nan)
    with pytest.raises(ValueError, match="NaN"):
        await clock.sleep(math.nan)  # on the real clock it returned at once


class _ChattyClock(_BrokenClock):
    """A clock whose error's text carries what a log must never show."""

    def __repr__(self) -> str:
        return "_ChattyClock(password=hunter2-repr)"

    async def sleep(self, seconds: float) -> None:
        raise RuntimeError("cannot reach time server https://u:hunter2-url@ntp?token=hunter2-q")


async def test_a_clocks_error_text_is_logged_redacted_and_its_repr_not_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="le_transport.clock")
    with pytest.raises(RuntimeError):
        async with timeout_after(_ChattyClock(), 5):
            await asyncio.get_running_loop().create_future()
    [message] = _clock_errors(caplog)
    assert message.startswith("_ChattyClock.sleep(5) failed (RuntimeError: cannot reach")
    assert "hunter2" not in message


async def test_a_virtual_clock_timeout_counts_from_the_block_not_from_its_watchdog() -> None:
    # The watchdog task first runs a loop turn after the block is entered; time advanced by
    # hand in between was not counted, and the timeout fired that much late.
    clock = VirtualClock(autojump=False)
    fired_at: list[float] = []

    async def body() -> None:
        try:
            async with timeout_after(clock, 5):
                await asyncio.Event().wait()
        except TimeoutError:
            fired_at.append(clock.now())

    task = asyncio.get_running_loop().create_task(body())
    await asyncio.sleep(0)  # the block is entered; its watchdog has not run yet
    clock.advance(6)
    for _ in range(10):
        await asyncio.sleep(0)
    assert fired_at == [6.0]
    await task


def _wheel_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    wheel = _wheel_of(loop)
    return [h for h in loop._scheduled if not h.cancelled() and h._callback == wheel._expire]  # type: ignore[attr-defined]


async def test_the_real_clock_wheel_drops_slots_whose_timeouts_all_ended() -> None:
    # A slot stayed, with its loop timer, until its time came, however early its timeouts
    # ended: with long timeouts (an hour's deadline) one per 10 ms piled up for the hour.
    loop = asyncio.get_running_loop()
    clock = RealClock()
    wheel = _wheel_of(loop)
    async with timeout_after(clock, 7200) as outer:  # a live timeout, in its own slot
        live = outer._slot
        assert live
        for i in range(5 * _SWEEP_AT):
            # Each in a slot of its own, as calls 10 ms apart with an hour's timeout are.
            async with timeout_after(clock, 3600 + i * 0.011):
                pass
        assert len(wheel._slots) <= 2 * _SWEEP_AT
        assert len(_wheel_timers(loop)) == len(wheel._slots) == len(wheel._handles)
        # The live timeout's slot and timer were kept.
        assert any(members is live for members in wheel._slots.values())
        # And a timeout armed after the sweeps still fires.
        with pytest.raises(TimeoutError):
            async with timeout_after(clock, 0.02):
                await asyncio.Event().wait()
    for _ in range(2 * _SWEEP_AT):
        async with timeout_after(clock, 1800 + len(wheel._slots) * 0.011):
            pass
    assert len(wheel._slots) <= 2 * _SWEEP_AT


async def test_a_stall_timeout_starts_over_at_each_progress_and_fires_after_a_stall() -> None:
    clock = VirtualClock()
    progress = [0.0]

    async def work() -> None:
        for _ in range(5):  # progress every 40 s: never 60 s without
            await clock.sleep(40)
            progress[0] = clock.now()
        await clock.sleep(1_000)  # then a stall

    with pytest.raises(TimeoutError):
        async with stall_timeout(clock, 60, lambda: progress[0]):
            await work()
    assert clock.now() == pytest.approx(200 + 60)
    with pytest.raises(ValueError, match="NaN"):
        stall_timeout(clock, math.nan, lambda: 0.0)
    async with stall_timeout(clock, None, lambda: 0.0):  # no timeout
        await clock.sleep(10_000)


def test_a_closed_loop_is_freed_with_its_wheel_after_real_clock_timeouts() -> None:
    """The wheel kept each slot's loop timer, and a loop timer holds its loop: the wheel, the
    value of a weak-key map whose key is that loop, kept the key alive, so every
    ``asyncio.run()`` that made a request leaked its loop and wheel (~4 KB) for good."""
    import weakref

    from le_transport.clock import _WHEELS

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_call() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with timeout_after(RealClock(), 30):  # a call's attempt timeout, ended at once
            await asyncio.sleep(0)

    for _ in range(5):
        asyncio.run(one_call())
    gc.collect()
    # The last loop may stay remembered (weakly) as the last one asked for, never more.
    assert sum(ref() is not None for ref in loops) == 0
    assert not any(ref() in _WHEELS for ref in loops if ref() is not None)


class _Unreadable(RuntimeError):
    def __str__(self) -> str:
        raise ValueError("no text")


class _MuteClock(_BrokenClock):
    """A clock whose error cannot be written as text."""

    async def sleep(self, seconds: float) -> None:
        raise _Unreadable


async def test_a_clock_error_whose_text_cannot_be_read_still_ends_the_block(
    caplog: pytest.LogCaptureFixture, unretrieved: list[dict[str, Any]]
) -> None:
    # Reading its text raised inside the watcher: the watcher died, and the block it guards
    # ran on with no limit.
    caplog.set_level(logging.ERROR, logger="le_transport.clock")
    with pytest.raises(_Unreadable):
        async with timeout_after(_MuteClock(), 5):
            await asyncio.wait_for(asyncio.get_running_loop().create_future(), 10)
    [message] = _clock_errors(caplog)
    assert "failed (_Unreadable: _Unreadable)" in message
    assert unretrieved == []
