"""The keepalive layer, review 23: a clock error whose text cannot be read, a close made from
inside an HTTP keepalive's own run, and the scheduler's bookkeeping across reconnects."""

from __future__ import annotations

import asyncio
import math

import pytest

from le_transport import EventHooks, StateEvent
from le_transport.clock import timeout_after
from le_transport.errors import ConfigurationError
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK, SERVER_CHAT_API_CHAT_INFO
from le_transport.sockets import KeepaliveTask, ResilientSocket, SocketOptions, watch_socket
from le_transport.sockets.keepalive import KeepaliveScheduler
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

GUIDE = MESSAGING_AGENT_SDK_GETCLOCK


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


# -- a socket on the simulator: found dead on every connection, watched once ------------------


async def test_a_socket_is_watched_again_after_each_reconnect_and_only_once(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Each connection's silent peer is found dead in two intervals; across reconnects the
    engine's scheduler watches the socket once (no ticket left behind per reconnect)."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=GUIDE))
        await ws.wait_open()
        scheduler = engine._socket_keepalives
        for n in range(1, 6):
            await clock.sleep(45.0)
            assert scheduler.watched == 1
            sim.sockets.open[0].silence()
            await sim.sockets.wait_accepted(n + 1)
            await ws.wait_open()
            dead = sim.sockets.all[n - 1]
            getclocks = [f for f in dead.received if f.get("type") == GUIDE.action]
            assert len(getclocks) >= 1
        assert scheduler.watched == 1
        assert len(scheduler._heap) <= 2
        lost = states.of("lost")
        assert len(lost) == 5
        assert all(e.details["reason"] == "peer dead: keepalive unanswered" for e in lost)


# -- one bad deadline must not stop every socket's keepalive ----------------------------------


@pytest.mark.parametrize("at", [math.nan, "30", True, None, 10**400])
async def test_a_deadline_that_is_no_time_is_refused_at_the_watch(
    clock: VirtualClock, at: object
) -> None:
    """Before: a NaN deadline reached the task's wait (timeout_after refuses NaN), which took
    it for its clock failing: every socket watched was told and ended its connection, and the
    scheduler stopped; a str broke the heap's order the same way."""
    scheduler = KeepaliveScheduler(clock)
    steady = _Subject()
    scheduler.watch(steady, at=30.0)
    await clock.sleep(1.0)
    with pytest.raises(ConfigurationError, match=r"KeepaliveScheduler\.watch"):
        scheduler.watch(_Subject(), at=at)  # type: ignore[arg-type]
    await clock.sleep(100.0)
    assert steady.asked == [30.0, 60.0, 90.0]
    assert steady.failed == []
    assert scheduler.watched == 1
    assert scheduler.running
    await scheduler.close()


class _Answers(_Subject):
    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer

    def _keepalive_due(self, now: float) -> float | None:
        self.asked.append(now)
        return self.answer  # type: ignore[return-value]


@pytest.mark.parametrize("answer", [math.nan, "later", False, 10**400])
async def test_a_subject_answering_no_time_is_that_subjects_failure_alone(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, answer: object
) -> None:
    """Before: a str answer raised comparing it with the time, outside the guard around the
    subject's check, and was taken for the clock failing (every socket told, the task gone);
    a NaN answer had the subject asked again at every next representable instant."""
    scheduler = KeepaliveScheduler(clock)
    steady, odd = _Subject(), _Answers(answer)
    scheduler.watch(steady, at=30.0)
    scheduler.watch(odd, at=30.5)
    await clock.sleep(100.0)
    assert steady.asked == [30.0, 60.0, 90.0]
    assert steady.failed == []
    assert odd.asked == [30.5]
    assert scheduler.running
    assert any("not a time" in r.getMessage() for r in caplog.records)
    # That subject is forgotten and told, as one whose check raises.
    assert scheduler.watched == 1
    assert len(odd.failed) == 1
    assert isinstance(odd.failed[0], ConfigurationError)
    await scheduler.close()


class _Raises(_Subject):
    def __init__(self, at_ask: int) -> None:
        super().__init__()
        self.at_ask = at_ask

    def _keepalive_due(self, now: float) -> float | None:
        self.asked.append(now)
        if len(self.asked) == self.at_ask:
            raise LookupError("a bug in one socket's check")
        return now + self.every


async def test_a_subject_whose_check_raises_is_forgotten_and_told(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: it stayed watched (counted) but was asked no more, and was not told: its socket
    stayed connected with nothing probing it or finding its peer dead, for as long as the
    connection lasted. Now it is forgotten and told (a socket ends the connection, and its
    owner reconnects and is watched afresh); the others are served as ever."""
    scheduler = KeepaliveScheduler(clock)
    steady, buggy = _Subject(), _Raises(at_ask=2)
    scheduler.watch(steady, at=30.0)
    ticket = scheduler.watch(buggy, at=30.5)
    await clock.sleep(100.0)
    assert steady.asked == [30.0, 60.0, 90.0]
    assert buggy.asked == [30.5, 60.5]
    assert [type(e) for e in buggy.failed] == [LookupError]
    assert steady.failed == []
    assert scheduler.watched == 1
    scheduler.unwatch(ticket)  # the owner's own unwatch afterwards forgets nothing else
    assert scheduler.watched == 1
    assert scheduler.running
    assert any("keepalive check failed" in r.getMessage() for r in caplog.records)
    await scheduler.close()


# -- an HTTP keepalive whose clock fails during a run -----------------------------------------


class _SleepBreaks:
    """The virtual clock until ``fail``: then every sleep raises."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.fail = False

    def now(self) -> float:
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        if self.fail:
            raise OSError("the clock source went away")
        await self._clock.sleep(seconds)


async def test_a_clock_failing_during_a_run_is_the_clocks_failure_not_the_runs(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's timeout sleeps on the clock: when that sleep raised, the clock's error came out
    of the run's block and was counted as the action failing (a WARNING "keepalive ... failed:
    OSError" blaming the service, an event, a failure counted) before the next sleep stopped
    the schedule as the clock's failure. It is the clock's failure at once."""
    events: list[StateEvent] = []
    broken = _SleepBreaks(clock)
    started = asyncio.Event()

    async def action() -> None:
        broken.fail = True  # the clock breaks as the run starts: its timeout cannot be kept
        started.set()
        await asyncio.Event().wait()

    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        action,
        clock=broken,
        hooks=EventHooks(on_state=[events.append]),
    ).start()
    await clock.sleep(31.0)
    assert started.is_set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.running
    assert isinstance(task.error, OSError)
    assert task.failures == 0
    assert [e.details.get("stopped") for e in events] == [True]
    assert not [r for r in caplog.records if "failed: OSError" in r.getMessage()]
    await task.close()


async def test_a_socket_whose_keepalive_check_raises_reconnects_and_is_watched_again(
    clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the connection stayed up, unwatched: a peer that then fell silent was never
    found dead. Now it is ended, and the new connection is probed and watched as usual. (The
    simulator's own idle close, which would end the first connection anyway, is put off.)"""
    original = ResilientSocket._keepalive_due
    raised: list[float] = []

    def once(self: ResilientSocket, now: float) -> float | None:
        if not raised:
            raised.append(now)
            raise LookupError("a bug in the check")
        return original(self, now)

    monkeypatch.setattr(ResilientSocket, "_keepalive_due", once)
    async with (
        Simulator(SimulatorConfig(idle_timeout=3600.0), clock=clock) as sim,
        agent_engine(sim, clock, states) as engine,
    ):
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=GUIDE))
        await ws.wait_open()
        await clock.sleep(31.0)
        assert raised == [30.0]
        sim.sockets.all[0].silence()  # and its peer falls silent
        # Ended when its check failed, not left up with nothing finding its peer dead.
        async with timeout_after(clock, 30.0):
            await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert engine._socket_keepalives.watched == 1
        sim.sockets.open[0].silence()
        await sim.sockets.wait_accepted(3)
        assert states.of("lost")[-1].details["reason"] == "peer dead: keepalive unanswered"


def test_a_watch_refused_for_want_of_a_running_loop_leaves_nothing_watched() -> None:
    """Before: the subject went on the heap and was counted before the task could be made, and
    the RuntimeError left it there with no ticket in its owner's hands to unwatch it with."""
    scheduler = KeepaliveScheduler(VirtualClock())
    with pytest.raises(RuntimeError):
        scheduler.watch(_Subject(), at=30.0)
    assert scheduler.watched == 0
    assert scheduler._heap == []
