"""Sockets, recovery and CSDS: cases the fixes for one probe of a connection at a time, the
outer pause under a call's own ceiling and an invalidate during a refresh left open.

- ``ResilientSocket``'s keepalive waited only for the probe it cancelled itself: a probe
  cancelled while it still waited for the one before it ended at once, and the next probe went
  out while that earlier one was still tidying up (two probes of one connection at once).

The real simulator on loopback, virtual time.
"""

from __future__ import annotations

import asyncio

import pytest

from le_transport.policies import Keepalive
from le_transport.sockets import SocketOptions
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
from tests.test_sockets_r25 import _Wrapper

__all__ = ["no_open_connections", "sim", "states"]


# -- 1. ResilientSocket: every probe still tidying up, not only the last one cancelled -------


@pytest.mark.usefixtures("no_open_connections")
async def test_a_probe_cancelled_while_it_waited_holds_up_the_next_one_too(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """While an ``on_frame`` handler runs, an ``outbound_idle`` keepalive probes once a timeout
    for the client's own silence (its probes' writes never end): each probe cancels the one
    before it, some while that one still waits for its own predecessor to tidy up. The next
    probe waits for every one still tidying, not only the one it cancelled: one probe of the
    connection at a time; and the connection's end waits for them all, not only the last."""
    policy = Keepalive(
        product="test", action=".GetClock", interval=10.0, timeout=5.0, outbound_idle=True
    )
    wrapper = _Wrapper(clock, policy.action, 8.0)
    release = asyncio.Event()
    handling = asyncio.Event()

    async def handler(frame: object) -> None:
        handling.set()
        await release.wait()

    async with agent_engine(sim, clock, states, wire_middlewares=[wrapper]) as engine:
        ws = await brand_socket(
            engine, sim, options=SocketOptions(keepalive=policy), on_frame=handler
        )
        await ws.wait_open()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
        await handling.wait()
        await clock.sleep(60.0)
        (wire,) = wrapper.sockets
        assert wire.started > 3  # probes went out all along
        assert wire.most == 1, f"{wire.most} probes of one connection at once"
        release.set()
        await ws.close()
        # The connection's end cancelled every probe, and waited for each to end.
        assert wire.in_flight == 0, f"{wire.in_flight} probes still tidying up after close"
