"""Sockets: what a connection's end waits for is bounded.

- ``ResilientSocket``: when a connection ended, the owner waited with no limit for its
  ``on_connect`` task and its keepalive probes (cancelled) to end. One that never ends even
  when cancelled (a callback that catches the cancellation, a middleware's write that swallows
  it) stopped the socket from ever reconnecting, and its close() from returning. The wait is
  now bounded (``TIDY_UP_GRACE`` of the clock): what did not end is logged (its task's name)
  and left to run, and the owner goes on.
- ``watch_socket``: its wait for its probe when it is cancelled had no limit either: a probe
  that never ends kept the watcher (and whoever waits for it) for ever. Bounded alike.
- ``KeepaliveScheduler``: a program whose ``asyncio.run()`` ended without closing its engine
  got an ERROR at exit, "socket keepalives stopped ... ended so that their sockets reconnect",
  though nothing could reconnect: ``asyncio.run()`` cancels every task, the sockets' own
  among them. When every socket watched has its own task ending too, the scheduler forgets
  them quietly (DEBUG).

The real simulator on loopback, virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from le_transport.policies import Keepalive
from le_transport.sockets import ResilientSocket, SocketOptions, watch_socket
from le_transport.sockets.keepalive import TIDY_UP_GRACE, wait_tidy_up
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_keepalive import _FailingClock
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]


async def _never_ends_until(release: asyncio.Event) -> None:
    """Wait for ``release``, swallowing every cancellation meanwhile."""
    while not release.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()


def _left_running(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "did not end within" in r.getMessage()]


# -- 1. an on_connect callback that outlives its cancellation ---------------------------------


@pytest.mark.usefixtures("no_open_connections")
async def test_an_on_connect_that_outlives_its_cancellation_holds_up_no_reconnect(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The first connection's callback hangs and catches its cancellation: the connection
    ends (its ready_timeout ends it when the time is up, whatever the callback does with its
    cancellation: tests/test_sockets_r26.py), the callback's task is left behind once the
    grace is out, and the socket reconnects; the callback, let go later, makes no old
    connection ready."""
    release = asyncio.Event()
    calls = 0

    async def stubborn(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await _never_ends_until(release)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine,
            sim,
            options=SocketOptions(ready_timeout=10.0, keepalive=None),
            on_connect=[stubborn],
        )
        try:
            started = clock.now()
            await ws.wait_open(timeout=600.0)
            assert ws.connects == 2
            assert ws.epoch == 2
            assert clock.now() - started >= 10.0 + TIDY_UP_GRACE
            [line] = _left_running(caplog)
            assert line.levelno == logging.WARNING
            assert "on_connect" in line.getMessage()
        finally:
            release.set()
        await clock.sleep(1.0)
        # Let go, the old callback's task went on to the queue and the ready step: neither
        # is the old connection's any more.
        assert [e.details["epoch"] for e in states.of("ready")] == [2]
        assert ws.is_open
        await ws.close()


# -- 2. a keepalive probe whose write outlives its cancellation ------------------------------


class _StuckSocket:
    """An open WebSocket whose keepalive writes go out (the peer answers) but then never
    return, whatever cancels them, until ``release`` is set."""

    def __init__(self, ws: Any, action: str, release: asyncio.Event, *, stubborn: bool) -> None:
        self.wrapped = ws
        self._action = action
        self._release = release
        self._stubborn = stubborn
        self.stuck = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    async def send_str(self, data: str, compress: int | None = None) -> None:
        await self.wrapped.send_str(data, compress)
        if self._stubborn and self._action in data:
            self.stuck += 1
            try:
                await _never_ends_until(self._release)
            finally:
                self.stuck -= 1


class _StuckWrapper:
    """A wire middleware that wraps each socket as a :class:`_StuckSocket`, stubborn on the
    first connection only."""

    active = True

    def __init__(self, action: str, release: asyncio.Event) -> None:
        self._action = action
        self._release = release
        self.sockets: list[_StuckSocket] = []

    async def __call__(self, request: Any, handler: Any) -> Any:
        return await handler(request)

    async def wrap_socket(self, ws: Any, path: str, *, service: str | None = None) -> Any:
        wrapped = _StuckSocket(ws, self._action, self._release, stubborn=not self.sockets)
        self.sockets.append(wrapped)
        return wrapped


@pytest.mark.usefixtures("no_open_connections")
async def test_a_probe_that_outlives_its_cancellation_holds_up_no_reconnect(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=5.0)
    release = asyncio.Event()
    wrapper = _StuckWrapper(policy.action, release)
    async with agent_engine(sim, clock, states, wire_middlewares=[wrapper]) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
        try:
            await ws.wait_open()
            await clock.sleep(12.0)
            first = wrapper.sockets[0]
            assert first.stuck == 1  # a probe went out, and its write never returns
            await sim.sockets.drop_all()
            await clock.sleep(TIDY_UP_GRACE + 30.0)
            assert ws.connects == 2, "the socket never reconnected"
            assert ws.is_open
            lines = _left_running(caplog)
            assert lines
            assert all(line.levelno == logging.WARNING for line in lines)
            assert "keepalive probe" in lines[0].getMessage()
        finally:
            release.set()
        await clock.sleep(1.0)
        assert first.stuck == 0
        await ws.close()


async def test_close_returns_though_a_probe_outlives_its_cancellation(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=5.0)
    release = asyncio.Event()
    wrapper = _StuckWrapper(policy.action, release)
    async with agent_engine(sim, clock, states, wire_middlewares=[wrapper]) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
        try:
            await ws.wait_open()
            await clock.sleep(12.0)
            closing = asyncio.ensure_future(ws.close())
            await clock.sleep(TIDY_UP_GRACE + 10.0)
            assert closing.done(), "close() never returned"
            await closing
        finally:
            release.set()
        await clock.sleep(1.0)


# -- 3. watch_socket cancelled while its probe outlives its cancellation ----------------------


async def test_watch_socket_cancelled_waits_for_a_stuck_probe_for_the_grace_only(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    policy = Keepalive(product="test", action="GetClock", interval=10.0, timeout=5.0)
    release = asyncio.Event()
    frames = [0.0]

    async def probe() -> None:
        frames.append(clock.now())  # the peer answers; the send never returns
        await _never_ends_until(release)

    watcher = asyncio.get_running_loop().create_task(
        watch_socket(policy, clock=clock, probe=probe, last_activity=lambda: frames[-1])
    )
    try:
        await clock.sleep(12.0)
        assert len(frames) == 2
        watcher.cancel()
        await clock.sleep(TIDY_UP_GRACE + 1.0)
        assert watcher.done(), "the watcher never ended"
        assert watcher.cancelled()
        [line] = _left_running(caplog)
        assert line.levelno == logging.WARNING
        assert "keepalive probe" in line.getMessage()
    finally:
        release.set()
        await asyncio.gather(watcher, return_exceptions=True)
    await clock.sleep(1.0)


# -- 4. the keepalive scheduler cancelled with every socket's own task -------------------------


def _scheduler_stopped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]


@pytest.mark.usefixtures("no_open_connections")
async def test_a_scheduler_cancelled_with_every_socket_says_no_error(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``asyncio.run()`` does at its end to a program that did not close its engine: it
    cancels every task, the scheduler's and each socket's own among them, the scheduler's
    first here. Nothing can reconnect then: no ERROR telling that the sockets were ended so
    that they reconnect."""
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=5.0)
    async with agent_engine(sim, clock, states) as engine:
        sockets = [
            await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
            for _ in range(3)
        ]
        for ws in sockets:
            await ws.wait_open()
        await clock.sleep(1.0)
        scheduler = sockets[0]._keepalives
        assert scheduler is not None
        assert scheduler.watched == 3
        task = scheduler._task
        owners = [ws._owner for ws in sockets]
        assert task is not None
        assert all(owner is not None for owner in owners)
        everything = {task, *(owner for owner in owners if owner is not None)}
        for each in (task, *owners):
            assert each is not None
            each.cancel()
        await asyncio.wait(everything)
        assert scheduler.watched == 0
        lines = _scheduler_stopped(caplog)
        assert all(line.levelno < logging.WARNING for line in lines), [
            line.getMessage() for line in lines
        ]
        for ws in sockets:
            await ws.close()


@pytest.mark.usefixtures("no_open_connections")
async def test_a_scheduler_cancelled_alone_still_ends_every_connection(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler's task alone cancelled, the sockets' own tasks running: an ERROR, and each
    connection ends so that its socket reconnects, watched by a new task."""
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=5.0)
    async with agent_engine(sim, clock, states) as engine:
        sockets = [
            await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
            for _ in range(2)
        ]
        for ws in sockets:
            await ws.wait_open()
        await clock.sleep(1.0)
        scheduler = sockets[0]._keepalives
        assert scheduler is not None
        task = scheduler._task
        assert task is not None
        task.cancel()
        await asyncio.wait({task})
        [line] = _scheduler_stopped(caplog)
        assert line.levelno == logging.ERROR
        await clock.sleep(30.0)
        assert [ws.connects for ws in sockets] == [2, 2]
        assert all(ws.is_open for ws in sockets)
        assert scheduler.running
        assert scheduler.watched == 2
        for ws in sockets:
            await ws.close()


# -- 5. the bounded wait on a clock that fails ------------------------------------------------


async def test_the_bounded_wait_lets_go_at_once_when_its_clock_fails(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With no time to keep, the wait neither hangs nor raises: what is still running is let
    go of (held, and logged) at once."""
    failing = _FailingClock(clock)
    failing.fail = "sleep"
    release = asyncio.Event()
    stuck = asyncio.get_running_loop().create_task(
        _never_ends_until(release), name="le_transport test stuck"
    )
    try:
        await asyncio.sleep(0)
        stuck.cancel()
        await wait_tidy_up([stuck], failing, owner="a socket")
        assert not stuck.done()
        [line] = _left_running(caplog)
        assert line.levelno == logging.WARNING
        assert "clock failed" in line.getMessage()
        assert "le_transport test stuck" in line.getMessage()
    finally:
        release.set()
        await asyncio.wait({stuck})
