"""Round 18: a socket paused for a slow consumer still speaks for its own silence: the
messaging keepalives' ``outbound_idle`` probe goes out while reading is paused, so LiveEngage
does not close the socket as idle (60 s without a client frame) while the consumer catches up."""

from __future__ import annotations

import pytest

from le_transport.clock import timeout_after
from le_transport.sockets import MESSAGING_AGENT_KEEPALIVE, SocketOptions
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

NOTIFICATION = ".ams.ms.MessagingEventNotification"


@pytest.mark.parametrize(("start", "busy"), [(0.0, 150.0), (28.0, 4.0)])
async def test_a_paused_messaging_socket_is_not_closed_as_idle(
    sim: Simulator, clock: VirtualClock, states: StateLog, start: float, busy: float
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=4))
        await ws.wait_open()
        await clock.sleep(start)
        for _ in range(6):  # a burst fills the inbox: reading pauses
            await sim.sockets.notify(NOTIFICATION, {"changes": []})
        await clock.sleep(0.5)
        assert ws.paused
        await clock.sleep(busy)  # the consumer is busy, then catches up
        (sock,) = sim.sockets.all
        assert not sock.closed, f"closed while paused: {sock.ended}"
        assert ".GetClock" in [f.get("type") for f in sock.received]
        for _ in range(6):
            await anext(ws)
        assert not ws.paused
        await clock.sleep(60)
        assert len(sim.sockets.all) == 1, f"closed as idle: {sim.sockets.all[0].ended}"
        assert "lost" not in states.names()


async def test_a_peer_silent_while_the_socket_was_paused_is_found_dead_once_it_reads(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    keepalive = MESSAGING_AGENT_KEEPALIVE
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=4))
        await ws.wait_open()
        for _ in range(6):
            await sim.sockets.notify(NOTIFICATION, {"changes": []})
        await clock.sleep(0.5)
        assert ws.paused
        (sock,) = sim.sockets.open
        sock.silence()  # the peer answers nothing more (half-open)
        await clock.sleep(100)  # the probes it sent meanwhile are not held against it
        assert "lost" not in states.names()
        assert ".GetClock" in [f.get("type") for f in sock.received]
        for _ in range(6):
            await anext(ws)
        resumed = clock.now()
        # Found as on any connection once reading resumes: the frames read then (sent long
        # before) answer nothing new, so within an interval and a timeout, no sooner than
        # the timeout.
        async with timeout_after(clock, keepalive.interval + keepalive.timeout + 1):
            await sim.sockets.wait_accepted(2)
        assert clock.now() - resumed >= keepalive.timeout
        assert "lost" in states.names()
