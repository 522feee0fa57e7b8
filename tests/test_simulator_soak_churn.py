"""The simulator under a long soak's churn keeps bounded memory: sockets that come and go leave
records behind, not connections, and what is live keeps working."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import FaultRule, Match, WsDelay
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from tests.test_simulator_sockets import _bearer, _frame, _req

CYCLES = 40


async def _until_open(sim: Simulator, count: int, clock: VirtualClock) -> None:
    while len(sim.sockets.open) != count:
        await clock.sleep(0.01)


async def test_ended_sockets_release_their_connections_and_an_open_one_keeps_working(
    clock: VirtualClock,
) -> None:
    config = SimulatorConfig(echo_published=False)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as live,
    ):
        (live_sock,) = await sim.sockets.wait_open(1)
        connections: list[weakref.ref[web.WebSocketResponse]] = []
        for i in range(CYCLES):
            async with http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws:
                await _req(ws, f"c{i}", ".GetClock")
                assert (await _frame(ws))["code"] == 200
                (sock,) = [s for s in sim.sockets.open if s is not live_sock]
                connections.append(weakref.ref(sock.ws))
            await _until_open(sim, 1, clock)
        ended = [s for s in sim.sockets.all if s is not live_sock]
        assert len(ended) == CYCLES
        await clock.sleep(0.01)  # the last connection's server side winds down
        gc.collect()
        # The records stay; the connections went with the sockets.
        assert [ref() for ref in connections] == [None] * CYCLES
        assert all(s.ended == ("client", 1000) and s.transport is None for s in ended)
        assert [s.received[0]["id"] for s in ended] == [f"c{i}" for i in range(CYCLES)]
        with pytest.raises(RuntimeError, match="ended"):
            _ = ended[0].ws
        # Sending to an ended socket is a no-op, as it was.
        await ended[0].notify(".ams.routing.RoutingTaskNotification", {})
        # The socket that stayed open all along still answers and is still reached.
        assert sim.sockets.open == [live_sock]
        await _req(live, "still-here", ".GetClock")
        frame: dict[str, Any] = await _frame(live)
        assert (frame["reqId"], frame["code"]) == ("still-here", 200)
        sent = await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
        assert sent == 1
        assert (await _frame(live))["type"] == ".ams.routing.RoutingTaskNotification"
        assert not live_sock.ws.closed


async def test_every_way_a_socket_ends_releases_its_connection_and_held_frames(
    clock: VirtualClock,
) -> None:
    """Closed by the server, dropped, idle, or left by its client with answers still held by a
    ``ws_delay``: each ended socket keeps its record and lets go of the rest."""
    held = FaultRule(
        "late", WsDelay(60_000), unit="ws_message", match=Match(path=".GetClock$Response")
    )
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        url = sim.brand_socket_url(_bearer(sim))
        connections: list[weakref.ref[web.WebSocketResponse]] = []
        for way in ("close", "drop", "idle", "client leaves, answers held"):
            async with http.ws_connect(url) as ws:
                (sock,) = await sim.sockets.wait_open(1)
                connections.append(weakref.ref(sock.ws))
                if way == "close":
                    await sock.close(4401, "token expired")
                elif way == "drop":
                    sock.drop()
                elif way == "idle":
                    await clock.sleep(61)
                else:
                    sim.faults.add(held)
                    for i in range(3):
                        await _req(ws, f"late{i}", ".GetClock")
                    while len(sock.held) < 3:
                        await clock.sleep(0.01)
                    assert sock.writer is not None
                if way != "client leaves, answers held":
                    await ws.receive()
            await _until_open(sim, 0, clock)
        await clock.sleep(0.01)
        gc.collect()
        assert [ref() for ref in connections] == [None] * 4
        ended = list(sim.sockets.all)
        assert [s.ended for s in ended] == [
            ("close", 4401),
            ("drop", None),
            ("close", 1000),
            ("client", 1000),
        ]
        for s in ended:
            assert s.transport is None
            assert s.writer is None
            assert not s.held
        assert [f["id"] for f in ended[-1].received] == ["late0", "late1", "late2"]


async def test_a_socket_whose_client_leaves_while_it_is_announced_is_not_kept_open(
    clock: VirtualClock,
) -> None:
    async with Simulator(clock=clock) as sim:
        leaving = aiohttp.ClientSession()
        try:
            # The hub is busy (a test waiting on it, say): the new socket waits to be announced.
            async with sim.sockets._changed:
                await leaving.ws_connect(sim.brand_socket_url(_bearer(sim)))
                while sim.sockets.all.total < 1:
                    await clock.sleep(0.01)
                (sock,) = sim.sockets.all
                transport = sock.transport
                assert transport is not None
                # Its client goes away meanwhile: the server cancels the socket's handler.
                await leaving.close()
                while not transport.is_closing():
                    await clock.sleep(0.01)
                await clock.sleep(0.01)
            await clock.sleep(0.01)
        finally:
            await leaving.close()
        assert sim.sockets.open == []
        assert sock.closed
        assert sock.ended is not None
        assert sock.ended[0] == "client"
        sent = await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
        assert sent == 0
        # The next socket is served as usual.
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
        ):
            (served,) = await sim.sockets.wait_open(1)
            assert served is not sock
            await _req(ws, "after", ".GetClock")
            assert (await _frame(ws))["code"] == 200
