"""Sends over a resilient socket around a reconnect: a task an ``on_connect`` callback started
sends as any other once the callbacks are done, behind the queue still being flushed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.sockets.dial import Connection
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

pytestmark = pytest.mark.usefixtures("no_open_connections")


async def test_a_task_started_by_on_connect_sends_behind_the_queue_once_the_callbacks_are_done(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first queued frame's write waits a few turns after it went out (as aiohttp's drain
    # does for a peer slow to read), while the rest of the queue waits to be flushed.
    flushing = asyncio.Event()
    real = Connection.send_text

    async def send_text(conn: Connection, text: str) -> None:
        await real(conn, text)
        if '"queued-0"' in text and not flushing.is_set():
            flushing.set()
            for _ in range(5):
                await asyncio.sleep(0)

    monkeypatch.setattr(Connection, "send_text", send_text)
    outcome: list[bool] = []

    async def background(sock: Any) -> None:
        await flushing.wait()  # the callbacks are done: the queue is being flushed
        outcome.append(await sock.send({"kind": "msg", "n": "background"}))

    tasks: list[asyncio.Task[None]] = []

    async def on_connect(sock: Any) -> None:
        tasks.append(asyncio.create_task(background(sock)))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None), on_connect=[on_connect])
        for n in range(3):  # sent before the socket is open: queued, in this order
            assert await ws.send({"kind": "msg", "n": f"queued-{n}"}) is False
        await ws.wait_open()
        await asyncio.gather(*tasks)
        await ws.request(".GetClock")  # every frame before it has reached the server
        received = [
            frame.get("n") for frame in sim.sockets.open[0].received if frame.get("kind") == "msg"
        ]
        await ws.close()
    # Sent after the three queued ones, it goes out after them, never in the middle.
    assert received == ["queued-0", "queued-1", "queued-2", "background"]
    assert outcome == [False]  # queued behind the flush, as any send before the socket is ready


# -- an answer read in the same turn as the request's timeout fires is the caller's -------------


async def test_an_answer_read_as_the_timeout_fires_is_returned_not_lost(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer is read exactly at the deadline, just before the timeout fires in the same turn
    # of the loop: the request was answered within its timeout, and the answer, taken off the
    # pending requests, must reach its caller (a timeout then, and the caller of a
    # non-idempotent request sends it again, though it was done and answered).
    real = ResilientSocket._dispatch
    held: list[tuple[str, int]] = []

    async def dispatch(self: ResilientSocket, text: str, epoch: int) -> None:
        if '"reqId"' in text and "GetClock" in text:
            held.append((text, epoch))  # read; handed over at the deadline, below
            return
        await real(self, text, epoch)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        monkeypatch.setattr(ResilientSocket, "_dispatch", dispatch)

        async def at_the_deadline() -> None:
            # Its sleep is queued before the request's timeout, for the same instant: woken
            # first, it hands the answer over in the turn the timeout fires.
            await clock.sleep(5)
            assert held, "the answer did not come before the deadline"
            text, epoch = held.pop()
            await real(ws, text, epoch)

        deliver = asyncio.create_task(at_the_deadline())
        try:
            answer = await ws.request(".GetClock", timeout=5)
        finally:
            await deliver
            await ws.close()
    assert answer["code"] == 200
    assert "currentTime" in answer["body"]
