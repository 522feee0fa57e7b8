"""The size of the outgoing queue (``max_queued_bytes``) on the socket's own paths: a queued
request whose caller gave up no longer counts, and close() returns what the queue held."""

from __future__ import annotations

import pytest

from le_transport import SocketQueueFull, SocketRequestTimeout
from le_transport.sockets import SocketOptions
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


@pytest.mark.usefixtures("no_open_connections")
async def test_a_withdrawn_request_frees_its_size_and_close_returns_the_rest(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    pad = "p" * 6000
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_queued_bytes=10_000))
        await ws.wait_open()
        await down_with_sim(ws, sim)
        with pytest.raises(SocketRequestTimeout):
            await ws.request(".Slow", {"pad": pad}, timeout=1.0)
        assert ws.queued == 0
        assert ws.queued_bytes == 0
        # The request left the queue, and its size with it: a message as large fits.
        assert await ws.send({"n": 1, "pad": pad}) is False
        # The socket says how much it holds, as it says its inbox's (inbox_bytes).
        assert 6000 < ws.queued_bytes < 10_000
        with pytest.raises(SocketQueueFull, match="max_queued_bytes") as info:
            await ws.send({"n": 2, "pad": pad})
        assert pad not in str(info.value)
        unsent = await ws.close()
    assert len(unsent) == 1
    assert '"n": 1' in unsent[0] or '"n":1' in unsent[0]
