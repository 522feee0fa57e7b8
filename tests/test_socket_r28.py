"""The resilient socket's contracts at its edges: what close() hands back, and what a request
whose connection was lost as its time ran out says."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import SocketClosed
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    down_with_sim,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

NO_KEEPALIVE = SocketOptions(keepalive=None)


async def _never_answered(sock: Any, frame: dict[str, Any]) -> None:
    """A simulator handler that answers nothing."""
    return None


# -- close() returns only what nobody was told about -----------------------------------------


async def test_close_returns_queued_messages_but_not_queued_requests_whose_callers_failed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # A request queued while the socket is down fails with SocketClosed when the socket
    # closes: its caller was told. Returned by close() as well, an application that re-sends
    # what close() returned and retries its failed requests sent it twice.
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        await down_with_sim(ws, sim)
        assert await ws.send({"kind": "msg", "n": "before"}) is False
        requested = asyncio.create_task(ws.request(".Anything", {"n": "req"}, timeout=60))
        await asyncio.sleep(0)
        assert ws.queued == 2
        assert await ws.send({"kind": "msg", "n": "after"}) is False
        unsent = await ws.close()
        with pytest.raises(SocketClosed):
            await requested
    assert len(unsent) == 2
    assert '"before"' in unsent[0]
    assert '"after"' in unsent[1]
    assert not any('"req"' in text for text in unsent)
    assert ws.queued == 0
    assert ws.queued_bytes == 0


async def test_close_from_on_connect_returns_queued_messages_but_not_queued_requests(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # close() called by an on_connect callback returns at once with the queue as it stands:
    # the same contract, the queued request left out (its caller fails with SocketClosed).
    entered = asyncio.Event()
    returned: list[list[str]] = []

    async def closes(sock: ResilientSocket) -> None:
        entered.set()
        await clock.sleep(10)
        returned.append(await sock.close())
        await clock.sleep(10)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE, on_connect=[closes])
        await entered.wait()
        assert await ws.send({"kind": "msg", "n": "plain"}) is False
        requested = asyncio.create_task(ws.request(".Anything", {"n": "req"}, timeout=60))
        await asyncio.sleep(0)
        assert ws.queued == 2
        with pytest.raises(SocketClosed):
            await requested
        assert await ws.close() == returned[0]
    assert len(returned[0]) == 1
    assert '"plain"' in returned[0][0]
