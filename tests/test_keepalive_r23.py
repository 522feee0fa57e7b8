"""The keepalive layer, review 23: a clock error whose text cannot be read, a close made from
inside an HTTP keepalive's own run, and the scheduler's bookkeeping across reconnects."""

from __future__ import annotations

import asyncio

import pytest

from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK, SERVER_CHAT_API_CHAT_INFO
from le_transport.sockets import KeepaliveTask, watch_socket
from le_transport.sockets.keepalive import KeepaliveScheduler
from le_transport.testing import VirtualClock


class _Subject:
    """Asked at each deadline; answers the next one an interval on, for ever."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.asked: list[float] = []
        self.failed: list[Exception] = []

    def _keepalive_due(self, now: float) -> float | None:
        self.asked.append(now)
        return now + self.every

    def _keepalive_failed(self, error: Exception) -> None:
        self.failed.append(error)


class _Unreadable(OSError):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class _NowFails:
    """The virtual clock until ``fail``: then reading the time raises an unreadable error."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.fail = False

    def now(self) -> float:
        if self.fail:
            raise _Unreadable()
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds)


async def test_a_clock_error_without_readable_text_still_tells_every_socket(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure line read the error's text bare: an error whose ``__str__`` raises made the
    log call raise, after every subject was forgotten and before any was told, so each socket
    stayed connected with nothing probing it or finding its peer dead."""
    failing = _NowFails(clock)
    scheduler = KeepaliveScheduler(failing)
    subjects = [_Subject(), _Subject()]
    for i, subject in enumerate(subjects):
        scheduler.watch(subject, at=30.0 + i)
    await clock.sleep(40.0)
    failing.fail = True
    task = scheduler._task
    assert task is not None
    scheduler.watch(_Subject(), at=45.0)  # wakes the task: its next read of the time fails
    await clock.sleep(10.0)
    assert [len(s.failed) for s in subjects] == [1, 1]
    assert all(isinstance(s.failed[0], _Unreadable) for s in subjects)
    assert task.done()
    assert isinstance(task.exception(), _Unreadable)
    [line] = [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    assert "_Unreadable" in line.getMessage()
    await scheduler.close()


async def test_an_http_keepalive_closed_from_inside_its_own_run_ends(clock: VirtualClock) -> None:
    closed: list[KeepaliveTask] = []
    task: KeepaliveTask | None = None

    async def action() -> None:
        assert task is not None
        await task.close()

    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO, action, clock=clock, on_close=closed.append
    ).start()
    await clock.sleep(31.0)
    assert not task.running
    assert await asyncio.wait_for(task.wait(), 1) is None
    assert closed == [task]
    assert task.failures == 0


async def test_watch_socket_never_probes_while_frames_arrive(clock: VirtualClock) -> None:
    frames = [0.0]
    probes: list[float] = []

    async def probe() -> None:
        probes.append(clock.now())

    async def peer() -> None:
        while True:
            await clock.sleep(29.0)
            frames.append(clock.now())

    loop = asyncio.get_running_loop()
    peer_task = loop.create_task(peer())
    watcher = loop.create_task(
        watch_socket(
            MESSAGING_AGENT_SDK_GETCLOCK, clock=clock, probe=probe, last_activity=lambda: frames[-1]
        )
    )
    await clock.sleep(600.0)
    watcher.cancel()
    peer_task.cancel()
    await asyncio.gather(watcher, peer_task, return_exceptions=True)
    assert probes == []


async def test_the_heap_stays_bounded_across_reconnects(clock: VirtualClock) -> None:
    scheduler = KeepaliveScheduler(clock)
    steady = _Subject()
    scheduler.watch(steady, at=30.0)
    churn = _Subject()
    ticket = scheduler.watch(churn, at=30.0)
    for _ in range(5000):
        scheduler.unwatch(ticket)
        ticket = scheduler.watch(churn, at=clock.now() + 30.0)
        await clock.sleep(0.5)
    assert scheduler.watched == 2
    assert len(scheduler._heap) < 200
    await scheduler.close()
