"""Regressions from the review of the resilient socket's core, against the simulator.

- A queue flushed on a socket without ``on_connect`` callbacks runs beside the read: the owner
  flushed it before reading anything, and a peer answering what it read (a ``resp``, a
  publish's echo) filled the client's side, stopped reading, and both waited out
  ``ready_timeout``, the frames written meanwhile lost with the connection.
- A peer the keepalive finds dead counts as alive only until the last frame it sent: one
  silent from the start passed for a healthy connection (40 s open), so the backoff never
  grew and the re-login never came.
- A cancellation a callback meets that is not its task's (it awaited something another task
  cancelled) is the callback's failure: from ``on_frame`` it closed the socket for good,
  saying nothing; from ``on_connect`` it left the connection open and never ready.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from le_transport.chaos import WsSilence
from le_transport.policies import BackoffPolicy
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    publish,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


async def test_a_queue_flushed_without_callbacks_goes_out_beside_the_read(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Measured before: two stalls of ready_timeout, "peer dead", 671 of 1,000 publishes
    delivered, close() returning [] (the rest counted written)."""
    count, size = 1000, 40_000
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(  # no on_connect; a queue of 40 MB: no bound on its size
            engine, sim, options=SocketOptions(max_queued_bytes=0), on_frame=lambda frame: None
        )
        await ws.wait_open()
        await sim.sockets.close_all(1001)
        while not states.of("lost"):
            await clock.sleep(0.01)
        for i in range(count):
            frame = {
                "kind": "req",
                "id": f"m{i}",
                "type": ".ams.ms.PublishEvent",
                "body": publish(f"{i:05d}" + "x" * size),
            }
            assert await ws.send(frame) is False  # queued: the socket is reconnecting
        await ws.wait_open(timeout=600)
        await ws.request(".GetClock", {}, timeout=600)  # answered after every frame before it
        lost = [e.details["reason"] for e in states.of("lost")]
        published = len(sim.sockets.published)
        unsent = await ws.close()
    assert unsent == []
    assert lost == ["closed by the server with code 1001"]
    assert published == count


async def test_a_peer_silent_from_the_start_is_no_healthy_connection(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Every upgrade accepted, then nothing answered (a half-open path, a black-holing
    proxy): each connection lasted the keepalive's 30 + 10 s and passed for healthy. Measured
    before: pauses of about 1 s every time, and no escalation."""
    sim.faults.script("GET", "/ws_api/*", [WsSilence()] * 6, unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)  # defaults: escalate_after=5
        await sim.sockets.wait_accepted(7)
        await ws.wait_open()
    lost = states.of("lost")
    assert lost
    assert all(e.details["reason"] == "peer dead: keepalive unanswered" for e in lost)
    pauses = [e.details["in_seconds"] for e in states.of("reconnecting")]
    policy = BackoffPolicy.reconnect()
    for attempt, pause in enumerate(pauses[:4], 1):
        low, high = policy.bounds(attempt)
        assert low <= pause <= high, (attempt, pauses)
    assert states.of("escalating"), states.names()


async def test_a_peer_heard_for_a_while_then_found_dead_is_a_healthy_connection(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The other side of it: a connection whose peer answered for minutes before going
    silent stayed healthy that long, and the backoff starts over."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await clock.sleep(120)  # the keepalive's GetClocks answered meanwhile
        (sock,) = sim.sockets.open
        sock.silence()
        while not states.of("reconnecting"):
            await clock.sleep(1)
        await ws.wait_open()
    (pause,) = [e.details["in_seconds"] for e in states.of("reconnecting")]
    low, high = BackoffPolicy.reconnect().bounds(1)
    assert low <= pause <= high


async def _cancelled() -> None:
    """What awaiting a future another task cancelled raises in the awaiter."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


async def test_an_on_frame_handler_that_meets_a_cancellation_does_not_close_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []

    async def handler(frame: Any) -> None:
        seen.append(frame)
        if len(seen) == 1:
            await _cancelled()

    notification = ".ams.ms.MessagingEventNotification"
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=handler)
        await ws.wait_open()
        await sim.sockets.notify(notification, {"n": 1})
        await clock.sleep(1)
        closed, error = ws.closed, ws.error
        await sim.sockets.notify(notification, {"n": 2})
        await clock.sleep(1)
    assert (closed, error) == (False, None), states.names()
    assert len(seen) == 2
    [logged] = [r for r in caplog.records if "on_frame handler raised" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "CancelledError" in logged.getMessage()


async def test_an_on_connect_that_meets_a_cancellation_reconnects_and_becomes_ready(
    clock: VirtualClock, states: StateLog
) -> None:
    """Before: the connection stayed open and never ready, with nothing logged and no
    ready_timeout (it died with the set-up task): wait_open() ran out after an hour."""
    calls = 0

    async def resubscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await _cancelled()
        await ws.request(".GetClock", {})

    # A server that does not close quiet clients (the simulator's idle close hid it).
    async with (
        Simulator(SimulatorConfig(idle_timeout=36000.0), clock=clock) as quiet,
        agent_engine(quiet, clock, states) as engine,
    ):
        ws = await brand_socket(engine, quiet, on_connect=[resubscribe])
        await ws.wait_open(timeout=3600)
    assert calls == 2


async def _fan_out_with_a_failure() -> None:
    """Work fanned out with a TaskGroup whose child fails: on Python 3.11 the parent task's
    count of cancellation requests can stay at 1 afterwards."""

    async def store() -> None:
        await asyncio.sleep(0)
        raise OSError("db down")

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(store())
    except* OSError:
        pass


async def test_a_foreign_cancellation_after_a_task_group_failure_does_not_close_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The count a TaskGroup left behind made the next foreign cancellation a handler met
    look like the socket's own: closed for good, saying nothing."""
    seen: list[Any] = []

    async def handler(frame: Any) -> None:
        seen.append(frame)
        if len(seen) == 1:
            await _fan_out_with_a_failure()
        elif len(seen) == 2:
            await _cancelled()

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=handler)
        await ws.wait_open()
        for n in (1, 2, 3):
            await sim.sockets.notify(".ams.ms.MessagingEventNotification", {"n": n})
            await clock.sleep(1)
        closed, error = ws.closed, ws.error
    assert (closed, error) == (False, None), states.names()
    assert len(seen) == 3


async def test_closing_a_socket_while_its_handler_waits_still_closes_it(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The other side: the owner's own cancellation (close() while a handler waits) is never
    taken for the handler's failure, after a TaskGroup's leftover count too."""
    waiting = asyncio.Event()

    async def handler(frame: Any) -> None:
        await _fan_out_with_a_failure()
        waiting.set()
        await asyncio.Event().wait()  # until the close cancels it

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=handler)
        await ws.wait_open()
        await sim.sockets.notify(".ams.ms.MessagingEventNotification", {"n": 1})
        await waiting.wait()
        await ws.close()
        assert ws.closed


async def test_an_open_idle_socket_keeps_no_finished_ready_timeout_alive(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The ready_timeout the owner made the connection ready under stayed referenced by the
    frame that then read for the connection's life: its finished watchdog task, coroutine
    and asyncio's entry for it on every idle socket (benchmarked: 1.28x raw aiohttp's memory
    per socket, where 1.14x was on record)."""
    async with agent_engine(sim, clock, states) as engine:
        sockets = [await brand_socket(engine, sim) for _ in range(5)]
        for ws in sockets:
            await ws.wait_open()
        await clock.sleep(1)  # the watchdogs cancelled as the sockets became ready end
        gc.collect()
        held = [
            o
            for o in gc.get_objects()
            if isinstance(o, asyncio.Task) and o.get_name() == "le_transport.stall_timeout"
        ]
        assert held == []
