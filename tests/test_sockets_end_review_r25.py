"""Sockets: the keepalive scheduler cancelled from outside while the program goes on.

``KeepaliveScheduler`` cancelled from outside (not by its ``close()``) forgets every socket
untold (DEBUG) when each socket says that its own task is ending too (``asyncio.run()``
ending a program that never closed its engine), and else tells each, so that it reconnects
and is watched again. A socket's owner task that carries a cancellation request it is not
acting on (Python 3.11's ``TaskGroup`` leaves one behind in the task that ran it when a child
failed: an ``on_frame`` handler runs in the owner) is not ending: taken for one, the socket
was forgotten untold, its connection never probed again nor found dead.

The real simulator on loopback, virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from le_transport.policies import Keepalive
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.sockets.keepalive import TIDY_UP_GRACE
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]


def _scheduler_stopped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]


async def _fails() -> None:
    raise ValueError("a child's failure")


@pytest.mark.usefixtures("no_open_connections")
async def test_a_socket_whose_owner_carries_a_stale_cancel_request_is_still_told(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``on_frame`` handler ran a ``TaskGroup`` whose child failed: on Python 3.11 the
    owner task keeps a cancellation request it never acts on. The scheduler's task alone
    cancelled then: the socket is still told (ERROR), reconnects, and is watched again."""
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=5.0)
    handled = asyncio.Event()

    async def on_frame(frame: Any) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_fails())
        except* ValueError:
            pass
        handled.set()

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine, sim, options=SocketOptions(keepalive=policy), on_frame=on_frame
        )
        await ws.wait_open()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        await handled.wait()
        await clock.sleep(1.0)
        owner = ws._owner
        assert owner is not None
        assert not owner.done()
        if owner.cancelling() == 0:
            pytest.skip("this interpreter's TaskGroup leaves no cancellation request behind")
        scheduler = ws._keepalives
        assert scheduler is not None
        assert scheduler.watched == 1
        task = scheduler._task
        assert task is not None
        task.cancel()
        await asyncio.wait({task})
        await clock.sleep(30.0)
        assert ws.connects == 2, "the socket was forgotten untold, and never reconnected"
        assert ws.is_open
        assert scheduler.running
        assert scheduler.watched == 1
        [line] = _scheduler_stopped(caplog)
        assert line.levelno == logging.ERROR
        await ws.close()


async def _never_ends_until(release: asyncio.Event) -> None:
    """Wait for ``release``, swallowing every cancellation meanwhile."""
    while not release.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()


@pytest.mark.usefixtures("no_open_connections")
async def test_an_on_connect_task_left_running_calls_no_further_callback(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The first connection's first callback catches its cancellation and outlives the
    grace: the socket reconnects without it, and runs both callbacks on the new connection.
    Let go later, the old task must not go on to the next callback: it ran it again, on the
    new connection (a second subscription, every notification twice)."""
    release = asyncio.Event()
    stubborn_calls = 0
    subscribed: list[int] = []

    async def stubborn(ws: ResilientSocket) -> None:
        nonlocal stubborn_calls
        stubborn_calls += 1
        if stubborn_calls == 1:
            await _never_ends_until(release)

    async def subscribe(ws: ResilientSocket) -> None:
        subscribed.append(ws.epoch)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine, sim, options=SocketOptions(keepalive=None), on_connect=[stubborn, subscribe]
        )
        try:
            await sim.sockets.wait_open()
            await clock.sleep(1.0)
            assert stubborn_calls == 1
            await sim.sockets.drop_all()
            await ws.wait_open(timeout=TIDY_UP_GRACE + 30.0)
            assert ws.connects == 2
            assert subscribed == [2]
        finally:
            release.set()
        await clock.sleep(1.0)
        assert subscribed == [2], "the task left running called the next callback again"
        await ws.close()
