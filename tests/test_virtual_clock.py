"""VirtualClock and timeout_after: virtual time that moves only when every task waits."""

from __future__ import annotations

import asyncio
import math
import sys
import threading

import aiohttp
import pytest
from aiohttp import web

from le_transport import Clock, RealClock, timeout_after
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory, serve_silent


def timeout_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "le_transport.timeout_after" and not t.done()
    ]


# -- autojump -----------------------------------------------------------------------------


async def test_time_jumps_to_the_next_deadline_when_everything_waits(clock: VirtualClock) -> None:
    await clock.sleep(5)
    assert clock.now() == 5.0
    await asyncio.gather(clock.sleep(10), clock.sleep(3))
    assert clock.now() == 15.0


async def test_time_does_not_jump_while_another_task_is_runnable(clock: VirtualClock) -> None:
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            seen.append(clock.now())
            await asyncio.sleep(0)

    sleeper = asyncio.ensure_future(clock.sleep(10))
    await busy()
    assert set(seen) == {0.0}
    assert not sleeper.done()
    await sleeper
    assert clock.now() == 10.0


async def test_every_sleep_is_recorded_with_when_it_started(clock: VirtualClock) -> None:
    await clock.sleep(5)
    await clock.sleep(0)
    await clock.sleep(-3)
    await clock.sleep(2.5)
    assert clock.sleeps == [5.0, 0.0, 0.0, 2.5]
    assert clock.history == [(0.0, 5.0), (5.0, 0.0), (5.0, 0.0), (5.0, 2.5)]
    assert clock.now() == 7.5


async def test_a_cancelled_sleep_does_not_stall_or_move_time(clock: VirtualClock) -> None:
    long = asyncio.ensure_future(clock.sleep(100))
    short = asyncio.ensure_future(clock.sleep(1))
    await asyncio.sleep(0)
    long.cancel()
    short.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    with pytest.raises(asyncio.CancelledError):
        await short
    await clock.sleep(5)
    assert clock.now() == 5.0
    assert clock.pending == 0


async def test_many_sleepers_wake_in_deadline_order(clock: VirtualClock) -> None:
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now())

    await asyncio.gather(*(sleeper(s) for s in (7, 1, 4, 4, 2)))
    assert woke == [1.0, 2.0, 4.0, 4.0, 7.0]


async def test_a_real_idle_threshold_still_jumps() -> None:
    clock = VirtualClock(autojump_threshold=0.001)
    await clock.sleep(60)
    assert clock.now() == 60.0


async def test_a_threshold_wait_leaves_the_loops_selector_as_it_was() -> None:
    """The threshold watches the loop's turns at its selector only while it waits."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    clock = VirtualClock(autojump_threshold=0.001)
    await clock.sleep(60)
    assert "select" not in vars(selector)


async def test_a_clock_moved_by_hand_neither_holds_nor_follows_one_that_jumps() -> None:
    manual, auto = VirtualClock(autojump=False), VirtualClock()
    waiting = asyncio.ensure_future(manual.sleep(5))
    await auto.sleep(3)
    assert auto.now() == 3.0
    assert manual.now() == 0.0
    assert not waiting.done()
    manual.advance(5)
    await waiting
    assert (manual.now(), auto.now()) == (5.0, 3.0)


async def test_the_driver_ends_with_the_last_sleep_though_a_job_of_the_pool_runs_on(
    clock: VirtualClock,
) -> None:
    """Time waits for the pool's jobs: the driver waits with it, and must still end once no
    sleep is left (cancelled, or woken by hand), not when the job ends."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    assert clock.now() == 0.0
    job = loop.run_in_executor(None, release.wait, 5)
    try:
        for end in ("cancel", "advance"):
            sleeper = asyncio.ensure_future(clock.sleep(1))
            await asyncio.sleep(0.02)
            assert not sleeper.done()
            (driver,) = [
                t for t in asyncio.all_tasks() if t.get_name() == "le_transport.VirtualClock"
            ]
            if end == "cancel":
                sleeper.cancel()
            else:
                clock.advance(1)
            for _ in range(3):
                await asyncio.sleep(0)
            assert driver.done()
            assert sleeper.done()
    finally:
        release.set()
        await job


async def test_virtual_clock_is_a_clock() -> None:
    clock = VirtualClock(start=100.0)
    assert isinstance(clock, Clock)
    assert isinstance(RealClock(), Clock)
    assert clock.now() == 100.0
    assert repr(clock) == "VirtualClock(now=100.0, pending=0)"


# -- manual mode --------------------------------------------------------------------------


async def test_advance_moves_time_by_hand_when_autojump_is_off() -> None:
    clock = VirtualClock(autojump=False)
    sleeper = asyncio.ensure_future(clock.sleep(10))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not sleeper.done()
    assert clock.pending == 1
    clock.advance(4)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(6)
    await sleeper
    assert clock.now() == 10.0
    assert clock.pending == 0


async def test_autojump_on_a_loop_it_cannot_inspect_fails_at_once(clock: VirtualClock) -> None:
    loop = asyncio.get_running_loop()
    ready = loop._ready  # type: ignore[attr-defined]
    try:
        del loop._ready  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="standard asyncio event loop"):
            await clock.sleep(1)
    finally:
        loop._ready = ready  # type: ignore[attr-defined]
    assert clock.pending == 0


def test_time_cannot_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        VirtualClock().advance(-1)


# -- with a loopback server ---------------------------------------------------------------


async def test_loopback_io_completes_without_time_jumping_under_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    host = await serve(app)
    pending = asyncio.ensure_future(clock.sleep(1))
    async with aiohttp.ClientSession() as session:
        for n in range(20):
            async with session.post(f"http://{host}/echo", data=b"x" * n * 100) as resp:
                assert len(await resp.read()) == n * 100
    assert clock.now() == 0.0
    await pending
    assert clock.now() == 1.0


# -- timeout_after ------------------------------------------------------------------------


async def test_timeout_after_cancels_the_body_in_flight_and_raises_timeout_error(
    clock: VirtualClock,
) -> None:
    reached_end = False
    limit = timeout_after(clock, 5)

    async def body() -> None:
        nonlocal reached_end
        async with limit:
            await clock.sleep(100)
            reached_end = True

    with pytest.raises(TimeoutError, match="5"):
        await body()
    assert limit.expired
    assert not reached_end
    assert clock.now() == 5.0
    assert timeout_tasks() == []
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_timeout_after_a_body_that_finishes_in_time_leaves_no_task(
    clock: VirtualClock,
) -> None:
    async with timeout_after(clock, 5) as limit:
        await clock.sleep(1)
    assert not limit.expired
    await asyncio.sleep(0)
    assert timeout_tasks() == []
    await clock.sleep(10)
    assert clock.now() == 11.0


async def test_timeout_after_none_never_fires(clock: VirtualClock) -> None:
    async with timeout_after(clock, None) as limit:
        await clock.sleep(1000)
    assert not limit.expired


async def test_timeout_after_stops_a_hanging_server_call(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host, release = await serve_silent(serve, "/hang")
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(TimeoutError):
                async with timeout_after(clock, 30):
                    await session.get(f"http://{host}/hang")
    finally:
        release.set()
        for _ in range(5):
            await asyncio.sleep(0)
    assert clock.now() == 30.0


async def test_an_outside_cancel_is_not_turned_into_a_timeout(clock: VirtualClock) -> None:
    started = asyncio.Event()

    async def guarded() -> None:
        async with timeout_after(clock, 50):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(guarded())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.now() == 0.0
    assert timeout_tasks() == []


async def test_nested_timeouts_expiring_together_raise_once_from_the_outer(
    clock: VirtualClock,
) -> None:
    outer_fired = inner_fired = False
    try:
        async with timeout_after(clock, 3) as outer:
            try:
                async with timeout_after(clock, 3) as inner:
                    await clock.sleep(10)
            except TimeoutError:
                inner_fired = True
    except TimeoutError:
        outer_fired = True
    assert outer.expired
    assert inner.expired
    assert outer_fired
    assert not inner_fired
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_the_inner_of_nested_timeouts_fires_alone_when_it_is_shorter(
    clock: VirtualClock,
) -> None:
    async with timeout_after(clock, 10) as outer:
        with pytest.raises(TimeoutError):
            async with timeout_after(clock, 2):
                await clock.sleep(5)
        await clock.sleep(1)
    assert not outer.expired
    assert clock.now() == 3.0


async def test_real_clock_sleeps_and_reads_monotonic_time() -> None:
    clock = RealClock()
    before = clock.now()
    await clock.sleep(0)
    await clock.sleep(-1)
    assert clock.now() >= before
    assert repr(clock) == "RealClock()"
    with pytest.raises(TimeoutError):
        async with timeout_after(clock, 0):
            await asyncio.Event().wait()


async def test_a_long_run_on_virtual_time_keeps_its_sleep_records_and_queue_bounded() -> None:
    """The newest max_records sleeps are kept; sleeps cancelled before their deadline (a
    timeout that did not fire, the usual case) leave the queue at once, not when time reaches
    them, which on a run where time rarely moves could be never."""
    clock = VirtualClock(max_records=10)

    async def cancelled_sleep() -> None:
        sleeper = asyncio.ensure_future(clock.sleep(30.0))
        await asyncio.sleep(0)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper

    for _ in range(1000):
        await cancelled_sleep()
    assert clock.now() == 0.0
    assert len(clock._sleepers) <= 130
    assert clock.pending == 0
    assert clock.sleeps == [30.0] * 10
    assert clock.sleeps.dropped == 990
    assert len(clock.history) == 10
    await clock.sleep(5.0)
    assert clock.now() == 5.0
    assert clock.sleeps[-1] == 5.0


def test_a_bad_record_bound_for_the_virtual_clock_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"VirtualClock\.max_records"):
        VirtualClock(max_records=0)
    assert VirtualClock(max_records=None).sleeps.maxlen is None


# -- sleeps that never end, and sleeps that are not a number ----------------------------------


async def test_an_infinite_sleep_stays_pending_and_time_keeps_its_meaning(
    clock: VirtualClock,
) -> None:
    # Jumped to, it made now() inf: every later sleep and timeout fired at once, and every
    # elapsed time was nan.
    forever = asyncio.ensure_future(clock.sleep(math.inf))
    await asyncio.sleep(0.02)  # everything idle (real time): the clock would jump if it could
    assert clock.now() == 0.0
    assert not forever.done()
    assert clock.pending == 1
    with pytest.raises(TimeoutError):
        async with timeout_after(clock, 5):
            await clock.sleep(10)
    assert clock.now() == 5.0
    await clock.sleep(2)
    assert clock.now() == 7.0
    assert not forever.done()
    forever.cancel()  # an infinite sleep ends as asyncio.sleep(inf) does: when cancelled
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert clock.pending == 0
    assert clock.sleeps[0] == math.inf  # recorded as asked


async def test_an_infinite_sleep_alone_waits_until_cancelled() -> None:
    clock = VirtualClock()
    forever = asyncio.ensure_future(clock.sleep(math.inf))
    await asyncio.sleep(0.02)  # idle: nothing to jump to
    assert not forever.done()
    assert clock.now() == 0.0
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    await clock.sleep(1)
    assert clock.now() == 1.0


async def test_a_sleep_whose_deadline_is_past_the_largest_float_is_infinite() -> None:
    clock = VirtualClock(start=sys.float_info.max / 2)
    start = clock.now()
    forever = asyncio.ensure_future(clock.sleep(sys.float_info.max))  # start + it: inf
    await clock.sleep(1)
    await asyncio.sleep(0.02)  # idle, with only the overflowing sleep left
    assert math.isfinite(clock.now())
    assert clock.now() == start + 1
    assert not forever.done()
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever


async def test_timeout_after_infinity_on_the_virtual_clock_is_no_timeout(
    clock: VirtualClock,
) -> None:
    async with timeout_after(clock, math.inf) as limit:
        await clock.sleep(1000)
    assert not limit.expired
    assert clock.now() == 1000.0
    # A body that waits on something other than the clock: with the loop idle, the watchdog's
    # sleep was the one to jump to, and the block timed out "at" inf.
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    async with timeout_after(clock, math.inf) as limit:
        await done.wait()
    assert not limit.expired
    assert clock.now() == 1000.0
    await asyncio.sleep(0)
    assert timeout_tasks() == []
    assert clock.pending == 0


async def test_a_nan_sleep_is_refused(clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="NaN"):
        await clock.sleep(math.nan)
    assert clock.pending == 0
    assert clock.now() == 0.0


@pytest.mark.parametrize("seconds", [math.inf, math.nan])
def test_advance_refuses_a_time_that_is_not_finite(seconds: float) -> None:
    clock = VirtualClock(autojump=False)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(seconds)
    assert clock.now() == 0.0


@pytest.mark.parametrize("start", [math.inf, -math.inf, math.nan])
def test_a_virtual_clock_cannot_start_at_a_time_that_is_not_finite(start: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        VirtualClock(start=start)
