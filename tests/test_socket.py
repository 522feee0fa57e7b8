"""The resilient socket against the simulator's UMS agent socket: connect, request/response,
notifications, drops, close codes, restarts, auth rejection, nothing lost."""

from __future__ import annotations

import pytest

from le_transport.sockets import SocketState
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


async def test_getclock_request_resolves_with_the_matching_resp(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        answer = await ws.request(".GetClock", {})
    assert answer["kind"] == "resp"
    assert answer["code"] == 200
    assert isinstance(answer["body"]["currentTime"], int)
    assert ws.state is SocketState.CLOSED
    assert states.names("facadeMsg")[-1] == "closed"
