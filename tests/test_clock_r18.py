"""VirtualClock: time waits for the loop's thread pool, the clocks on one loop jump together,
and ``autojump_threshold`` sees a loop woken between its checks.

Before, the clock judged "everything waits" from the loop's ready queue alone: a job in the
thread pool (aiohttp reading a file body, ``recover=True`` reading a file, resolving
``localhost``) left the queue empty, so time jumped to the attempt timeout or the deadline under
a fault-free call; two clocks on one loop never jumped (each driver saw the other's step in the
queue, at 100% CPU); and a threshold clock jumped under a loop woken between its checks.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from le_transport import Engine, RetryPolicy, timeout_after
from le_transport.chaos import Delay
from le_transport.testing import Simulator, VirtualClock
from le_transport.testing.clock import virtual_clock_in_use
from le_transport.testing.simulator import SimRoute, SimulatorConfig
from tests.conftest import ServerFactory

#: Real seconds a test gives the old clock's livelock before it fails (it takes milliseconds).
HUNG = 3.0


async def _sink(request: web.Request) -> web.Response:
    return web.json_response({"n": len(await request.read())})


async def _widgets(request: web.Request) -> web.Response:
    return web.json_response({"widgets": []})


# -- 1. time waits for the loop's thread pool ------------------------------------------------


@pytest.mark.parametrize("how", ["run_in_executor", "to_thread"])
async def test_time_waits_for_a_job_in_the_loops_thread_pool(clock: VirtualClock, how: str) -> None:
    loop = asyncio.get_running_loop()
    async with timeout_after(clock, 10) as limit:
        if how == "to_thread":
            await asyncio.to_thread(time.sleep, 0.05)
        else:
            await loop.run_in_executor(None, time.sleep, 0.05)
    assert not limit.expired
    assert clock.now() == 0.0
    await clock.sleep(1)  # and jumps again once the job is done
    assert clock.now() == 1.0


async def test_a_job_given_up_holds_time_no_longer(clock: VirtualClock) -> None:
    """A job whose future is cancelled (a timeout ended the wait for it) no longer counts,
    though its thread runs on: time is bounded by what the loop still waits for."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    assert clock.now() == 0.0  # read in this loop: the jobs it starts from now on count
    job = loop.run_in_executor(None, release.wait, 5)
    sleeper = asyncio.ensure_future(clock.sleep(1))
    try:
        await asyncio.sleep(0.05)  # the loop is idle but for the job: time must not move
        assert clock.now() == 0.0
        assert not sleeper.done()
        job.cancel()
        await sleeper
        assert clock.now() == 1.0
    finally:
        release.set()


async def test_a_file_upload_on_the_default_policy_takes_no_virtual_time(
    clock: VirtualClock, tmp_path: Path
) -> None:
    """aiohttp reads a file body in the thread pool, chunk by chunk: the clock jumped to the
    attempt timeout under a fault-free loopback upload (the plugin's ``le_engine`` too),
    which was retried, or failed."""
    path = tmp_path / "body.bin"
    path.write_bytes(os.urandom(900 * 1024))
    routes = [SimRoute("PUT", "/api/account/{account}/upload", _sink, service="upload")]
    async with (
        Simulator(SimulatorConfig(), clock=clock, routes=routes) as sim,
        Engine(sim.domains, scheme="http", clock=clock) as engine,
    ):
        upload = f"/api/account/{sim.account.id}/upload"
        for _ in range(3):
            with path.open("rb") as file:
                resp = await engine.request("PUT", "upload", upload, data=file)
            assert resp.json() == {"n": 900 * 1024}
    assert clock.now() == 0.0


class _SlowFile(io.RawIOBase):
    """A file whose content takes 50 real milliseconds to read."""

    def __init__(self, content: bytes) -> None:
        super().__init__()
        self._left = content

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        time.sleep(0.05)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


async def test_recover_reads_a_file_in_the_pool_without_time_jumping_to_the_deadline(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    app = web.Application()
    app.router.add_put("/f", _sink)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        body = io.BufferedReader(_SlowFile(b"x" * 1000))
        resp = await engine.request("PUT", "svc", "/f", data=body, deadline=600, recover=True)
    assert resp.json() == {"n": 1000}
    assert clock.now() == 0.0


async def test_resolving_a_host_in_the_pool_does_not_move_time(clock: VirtualClock) -> None:
    """``loop.getaddrinfo`` (aiohttp's resolver for a name such as ``localhost``) runs in the
    pool; slowed here, so that the jump it allowed is certain."""
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def slow_getaddrinfo(*args: object, **kwargs: object) -> object:
        await loop.run_in_executor(None, time.sleep, 0.05)
        return await resolve(*args, **kwargs)  # type: ignore[arg-type]

    async with timeout_after(clock, 10) as limit:
        infos = await slow_getaddrinfo("localhost", 80)
    assert infos
    assert not limit.expired
    assert clock.now() == 0.0


# -- 2. the clocks on one loop jump together -------------------------------------------------


async def test_two_clocks_on_one_loop_both_jump() -> None:
    a, b = VirtualClock(), VirtualClock()
    await asyncio.wait_for(asyncio.gather(a.sleep(1), b.sleep(1)), HUNG)
    assert (a.now(), b.now()) == (1.0, 1.0)


async def test_the_clocks_on_a_loop_move_by_the_same_amount_each_on_its_own_reading() -> None:
    server = VirtualClock(start=100.0, epoch=1_700_000_000.0)
    client = VirtualClock()
    woke: list[tuple[str, float, float]] = []

    async def sleeper(name: str, clock: VirtualClock, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, server.now(), client.now()))

    await asyncio.wait_for(
        asyncio.gather(sleeper("server", server, 2), sleeper("client", client, 5)), HUNG
    )
    assert woke == [("server", 102.0, 2.0), ("client", 105.0, 5.0)]
    assert server.wall() == 1_700_000_000.0 + 105.0
    assert client.wall() == client.epoch + 5.0


async def test_a_clock_that_does_not_sleep_moves_with_the_one_that_does() -> None:
    idle, sleeping = VirtualClock(start=10.0), VirtualClock()
    assert idle.now() == 10.0  # read on this loop: one of its clocks
    await asyncio.wait_for(sleeping.sleep(3), HUNG)
    assert sleeping.now() == 3.0
    assert idle.now() == 13.0


async def test_a_clock_an_earlier_test_left_sleeping_does_not_stall_a_new_one() -> None:
    """A loop shared by a session: an earlier test's clock still has a periodic task."""
    earlier = VirtualClock()

    async def heartbeat() -> None:
        while True:
            await earlier.sleep(30)

    beating = asyncio.ensure_future(heartbeat())
    try:
        await asyncio.wait_for(earlier.sleep(1), HUNG)
        clock = VirtualClock()
        await asyncio.wait_for(clock.sleep(1), HUNG)
        assert clock.now() == 1.0
        assert earlier.now() == 2.0
        await asyncio.wait_for(clock.sleep(40), HUNG)  # the heartbeat fires on the way
        assert clock.now() == 41.0
        assert earlier.now() == 42.0
    finally:
        beating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await beating


async def test_an_engine_and_a_simulator_each_on_a_clock_of_its_own() -> None:
    """A server 30 s ahead of its client delays its answer 2 of its seconds."""
    client_clock = VirtualClock()
    server_clock = VirtualClock(epoch=client_clock.epoch + 30)
    routes = [SimRoute("GET", "/api/account/{account}/widgets", _widgets, service="widgets")]
    async with Simulator(SimulatorConfig(), clock=server_clock, routes=routes) as sim:
        sim.faults.script("GET", "/api/*/widgets", [Delay(2000)])
        async with Engine(
            sim.domains,
            scheme="http",
            clock=client_clock,
            retry=RetryPolicy(attempt_timeout=10),
        ) as engine:
            path = f"/api/account/{sim.account.id}/widgets"
            body = await asyncio.wait_for(engine.request_json("GET", "widgets", path), HUNG)
    assert body == {"widgets": []}
    assert (client_clock.now(), server_clock.now()) == (2.0, 2.0)
    assert server_clock.wall() - client_clock.wall() == 30.0


# -- 3. autojump_threshold: a loop woken between two checks is not idle ----------------------


async def test_the_threshold_starts_again_whenever_a_thread_wakes_the_loop() -> None:
    """A thread of the test's own (not the loop's pool) hands the loop work every 5 ms for
    half a second: the loop is never quiet for the 0.25 s threshold, so time must not jump to
    the timeout; it jumps only once the thread has stopped, and not before the threshold.
    Before, it jumped 0.25 s in: the wakes fell between the checks."""
    clock = VirtualClock(autojump_threshold=0.25)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[int] = asyncio.Queue()
    last_wake = 0.0

    def work() -> None:
        nonlocal last_wake
        for n in range(100):
            time.sleep(0.005)
            last_wake = time.monotonic()
            loop.call_soon_threadsafe(got.put_nowait, n)

    thread = threading.Thread(target=work, daemon=True)
    async with timeout_after(clock, 10) as limit:
        thread.start()
        assert [await got.get() for _ in range(100)] == list(range(100))
    assert not limit.expired
    assert clock.now() == 0.0
    thread.join()
    await clock.sleep(1)
    assert clock.now() == 1.0
    assert time.monotonic() - last_wake >= 0.25


# -- the review of the fix: the driver's end, an idle clock's settings, a later loop ----------


def _drivers() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "le_transport.VirtualClock" and not t.done()
    ]


async def test_under_a_threshold_the_driver_ends_with_the_last_sleep() -> None:
    # A timeout_after whose block finished in time cancels its sleep: the driver waited out
    # its threshold of quiet regardless (the suite's leaked-task check), and for ever on a
    # loop something keeps busy, the selector hooked all along.
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    clock = VirtualClock(autojump_threshold=0.3)

    async def ticker() -> None:  # the loop busy every 0.05 s: never quiet for 0.3 s
        for _ in range(1000):
            await asyncio.sleep(0.05)

    tick = asyncio.ensure_future(ticker())
    try:
        async with timeout_after(clock, 10):
            await asyncio.sleep(0.05)
        assert clock.pending == 0
        await asyncio.sleep(0.2)
        assert _drivers() == []
        assert "select" not in vars(selector)
    finally:
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)


async def test_an_idle_clocks_threshold_does_not_hold_the_others_jumps() -> None:
    from le_transport.testing.clock import _LoopClocks

    idle = VirtualClock(autojump_threshold=0.5, idle_rounds=9)
    assert idle.now() == 0.0  # read on this loop; never sleeps
    fast = VirtualClock()
    assert fast.now() == 0.0
    group = _LoopClocks.of(asyncio.get_running_loop())
    assert group is not None
    sleeping = asyncio.ensure_future(fast.sleep(5))
    await asyncio.sleep(0)
    # Only the clocks with a sleep pending set how long a jump waits.
    assert group.plan() == (3, 0.0)
    await sleeping
    assert fast.now() == 5.0


async def _pool_job_under_a_timeout(clock: VirtualClock) -> None:
    start = clock.now()
    async with timeout_after(clock, 10) as limit:
        await asyncio.to_thread(time.sleep, 0.05)
    assert not limit.expired
    assert clock.now() == start


def test_a_clock_reused_on_a_later_loop_waits_for_its_pool_jobs_there() -> None:
    # A module's clock under per-test loops: read on its second loop, it was not put on it
    # (only a sleep did), so a pool job the timeout's body started was not waited for.
    clock = VirtualClock()
    asyncio.run(_pool_job_under_a_timeout(clock))
    asyncio.run(_pool_job_under_a_timeout(clock))


def test_a_read_in_another_loop_leaves_the_sleeps_pending_on_the_first() -> None:
    # A helper's own loop (asyncio.run) reading the clock moved it off the loop where a sleep
    # of it waited, and that sleep was never jumped again.
    clock = VirtualClock()
    first = asyncio.new_event_loop()
    try:

        async def start() -> asyncio.Future[None]:
            sleeping = asyncio.ensure_future(clock.sleep(5))
            await asyncio.sleep(0)
            return sleeping

        sleeping = first.run_until_complete(start())

        async def helper() -> float:
            return clock.now()

        assert asyncio.run(helper()) == 0.0

        async def finish() -> None:
            async with asyncio.timeout(10):  # real seconds: only a hang reaches it
                await sleeping

        first.run_until_complete(finish())
        assert clock.now() == 5.0
    finally:
        first.close()


async def test_a_sleep_that_follows_a_cancelled_one_still_waits_for_the_quiet() -> None:
    # The driver, waiting for quiet, was told no sleep was left (the last one cancelled) and
    # jumped at once to a sleep begun in the same turn, with no quiet at all.
    clock = VirtualClock(autojump_threshold=0.3)
    watchdog = asyncio.ensure_future(clock.sleep(100))
    await asyncio.sleep(0.05)  # the driver waits for its quiet
    time.sleep(0.03)  # noqa: ASYNC251  # its check falls due in the turn this task runs in
    await asyncio.sleep(0)
    watchdog.cancel()
    await asyncio.sleep(0)
    started = time.monotonic()
    await clock.sleep(5)
    assert clock.now() == 5.0
    # Never sooner than the threshold (a lower bound: no machine makes real time run short).
    assert time.monotonic() - started >= 0.3


def test_a_forever_sleep_on_a_live_loop_does_not_pin_reads_elsewhere() -> None:
    # A sleep of inf is never jumped to: keeping the clock on its loop protects nothing, yet
    # it stops a read on another loop from noting the clock there (virtual_clock_in_use) and
    # from joining that loop's clocks, which then jump without it.
    clock, other = VirtualClock(), VirtualClock()
    first = asyncio.new_event_loop()
    try:

        async def leave() -> asyncio.Future[None]:
            t = asyncio.ensure_future(clock.sleep(math.inf))
            await asyncio.sleep(0)
            return t

        stale = first.run_until_complete(leave())

        async def later() -> tuple[object, float]:
            clock.now()
            found = virtual_clock_in_use()
            await other.sleep(100)
            return found, clock.now()

        found, read = asyncio.run(later())
        assert found is clock
        assert read == 100.0  # moved with the loop's other clock, as on 25b658f~1
    finally:
        stale.cancel()
        first.run_until_complete(asyncio.sleep(0))
        first.close()
