"""A resilient socket's sends and requests around the flush of its queue and a request's
timeout: a task an ``on_connect`` callback started queues once the callbacks are done, also
on a connection lost mid-flush (no send stalls behind it); an answer read while the
request's own write still waited on the drain is returned, not lost to the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest

from le_transport.sockets import SocketOptions
from le_transport.sockets.dial import Connection
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_correlation_r20 import SharedDrain, turns
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


def _msgs(frames: Iterable[dict[str, Any]]) -> list[Any]:
    return [frame.get("n") for frame in frames if frame.get("kind") == "msg"]


async def test_a_send_queued_by_an_on_connect_task_on_a_connection_lost_mid_flush_goes_out_next(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first connection's flush: queued-0 goes out, then (a few turns later, in which the
    # task a callback started sends) queued-1 is refused before any of it is written, as a
    # closing transport refuses it. What the task sent waits behind queued-1 and queued-2 for
    # the next connection, and nothing stalls there: the queue goes out in order and the
    # socket becomes ready, its sends going straight out again.
    flushing = asyncio.Event()
    real = Connection.send_text
    first: list[Connection] = []

    async def send_text(conn: Connection, text: str) -> None:
        if not first:
            first.append(conn)
        if conn is first[0] and '"queued-1"' in text:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await real(conn, text)
        if '"queued-0"' in text and not flushing.is_set():
            flushing.set()
            for _ in range(5):
                await asyncio.sleep(0)

    monkeypatch.setattr(Connection, "send_text", send_text)
    outcome: list[bool] = []
    tasks: list[asyncio.Task[None]] = []

    async def background(sock: Any) -> None:
        await flushing.wait()
        outcome.append(await sock.send({"kind": "msg", "n": "background"}))

    async def on_connect(sock: Any) -> None:
        if not tasks:
            tasks.append(asyncio.create_task(background(sock)))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None), on_connect=[on_connect])
        for n in range(3):
            assert await ws.send({"kind": "msg", "n": f"queued-{n}"}) is False
        await asyncio.gather(*tasks)
        await ws.wait_open(timeout=60)
        assert ws.connects == 2
        assert await ws.send({"kind": "msg", "n": "after"}) is True  # straight out: no stall
        await ws.request(".GetClock")
        first_seen, second_seen = (_msgs(s.received) for s in sim.sockets.all)
        await ws.close()
    assert outcome == [False]
    assert first_seen == ["queued-0"]
    assert second_seen == ["queued-1", "queued-2", "background", "after"]


async def test_an_answer_read_while_the_requests_write_waited_on_the_drain_is_returned(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request's frame is handed to the transport, then its write waits on a drain that
    # does not resume within the request's timeout; the answer is read meanwhile. It is the
    # caller's: the request was sent and answered in time. The write beside it goes on.
    drain = SharedDrain(monkeypatch, '"first"')
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        sent = asyncio.create_task(ws.send({"kind": "msg", "n": "first"}))
        await turns()
        assert drain.paused
        try:
            answer = await ws.request(".GetClock", timeout=1)
            assert clock.now() >= 1  # it did wait on the drain until its timeout
            await turns()
            assert not sent.done()
        finally:
            drain.resume()
        assert await sent is True
        assert ws.is_open
        assert len(ws._pending) == 0
        assert ws.queued == 0
        await ws.close()
    assert answer["code"] == 200
    assert "currentTime" in answer["body"]
