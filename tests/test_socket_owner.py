"""The socket's shape: its owner task reads the connection itself, and one scheduler per engine
serves every socket's keepalive; what ends a connection from elsewhere closes it."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from le_transport import RealClock
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.sockets import ResilientSocket, SocketOptions, SocketState
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

KEEPALIVE = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)


def _socket_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """The names of the socket layer's tasks started since ``before`` and still running
    (the simulator's server-side tasks are not counted)."""
    names = []
    for task in asyncio.all_tasks() - before:
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and "le_transport/sockets/" in code.co_filename:
            names.append(task.get_name())
    return sorted(names)


async def test_an_idle_fleet_holds_one_owner_task_per_socket_and_one_keepalive_task(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        before = set(asyncio.all_tasks())
        fleet = [await brand_socket(engine, sim, options=KEEPALIVE) for _ in range(5)]
        for ws in fleet:
            await ws.wait_open()
        await clock.sleep(45)  # a keepalive round went out and was answered
        tasks = _socket_tasks(before)
        # No reader task, no keepalive watcher per socket: the owners and one scheduler.
        owners = [n for n in tasks if n.startswith("le_transport socket facadeMsg")]
        assert len(owners) == 5
        assert tasks.count("le_transport socket keepalives") == 1
        assert len(tasks) == 6
        assert all(ws.state is SocketState.OPEN for ws in fleet)
    getclocks = [f for s in sim.sockets.all for f in s.received if f.get("type") == ".GetClock"]
    assert len(getclocks) == 5


async def test_keepalive_goes_on_after_a_reconnect_on_the_new_connection_only(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=KEEPALIVE)
        await ws.wait_open()
        await clock.sleep(10)
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        reopened = clock.now()
        await clock.sleep(65)
    first, second = sim.sockets.all
    assert [f for f in first.received if f.get("type") == ".GetClock"] == []
    probes = [f for f in second.received if f.get("type") == ".GetClock"]
    # One probe per idle interval of the new connection, counted from its opening.
    assert len(probes) == 2
    assert reopened + 30 <= clock.now()


async def test_close_from_an_on_frame_handler_closes_the_socket_without_waiting_for_itself(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    returned: list[list[str]] = []
    async with agent_engine(sim, clock, states) as engine:
        holder: list[ResilientSocket] = []

        async def on_frame(frame: Any) -> None:
            returned.append(await holder[0].close())

        ws = await brand_socket(engine, sim, on_frame=on_frame)
        holder.append(ws)
        await ws.wait_open()
        events = ws.states()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        async for event in events:
            if event.name == "closed":
                break
    assert returned == [[]]
    assert ws.closed
    assert ws.error is None
    # The caller's close: the server got a close frame, not a drop.
    assert sim.sockets.all[0].ended == ("client", 1000)
    assert "lost" not in states.names("facadeMsg")


async def test_the_callers_close_ends_the_read_with_a_close_handshake(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=KEEPALIVE)
        await ws.wait_open()
        await clock.sleep(5)
        assert await ws.close() == []
    assert sim.sockets.all[0].ended == ("client", 1000)
    assert states.names("facadeMsg") == ["connecting", "open", "ready", "closed"]


async def test_close_while_on_connect_waits_for_an_answer_ends_both_and_returns_the_queue(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    entered = asyncio.Event()

    async def stuck(ws: ResilientSocket) -> None:
        entered.set()
        await clock.sleep(3600)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[stuck])
        await entered.wait()
        assert await ws.send({"kind": "req", "id": "x", "type": ".GetClock"}) is False
        unsent = await ws.close()
    assert len(unsent) == 1
    assert ws.closed
    assert "ready" not in states.names("facadeMsg")


async def test_a_failing_on_connect_drops_the_connection_and_the_owner_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    calls = 0

    async def flaky(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        await ws.request(".GetClock")  # answered through the owner's read
        if calls == 1:
            raise RuntimeError("subscription refused")

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[flaky])
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    assert calls == 2
    (lost,) = states.of("lost")
    assert "on_connect failed (RuntimeError)" in lost.details["reason"]


async def test_frames_keep_their_order_while_on_connect_runs_beside_the_read(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def subscribe(ws: ResilientSocket) -> None:
        for n in range(3):
            await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": n}, to_all=True)
        await ws.request(".GetClock")

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[subscribe])
        await ws.wait_open()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 3}, to_all=True)
        frames = [await ws.__anext__() for _ in range(4)]
    assert [f["body"]["n"] for f in frames] == [0, 1, 2, 3]


async def test_a_silent_peer_is_found_dead_on_the_real_clock_too(
    states: StateLog, secret_values: set[str]
) -> None:
    clock: Any = RealClock()
    # A probe after 0.5 s of quiet, unanswered for 0.5 s: far above a loaded machine's
    # jitter, so a peer that answers is not found dead, and the silence below comes before the
    # first probe is even due.
    keepalive = attrs.evolve(MESSAGING_AGENT_SDK_GETCLOCK, interval=0.5, timeout=0.5)
    real_sim = Simulator(clock=clock)
    async with real_sim, agent_engine(real_sim, clock, states) as engine:
        ws = await brand_socket(engine, real_sim, options=SocketOptions(keepalive=keepalive))
        await ws.wait_open()
        events = ws.states()
        (peer,) = real_sim.sockets.open
        # Nothing was lost before the peer went silent (checked and silenced in one step of
        # the loop): the loss below is the silence's.
        assert states.of("lost") == []
        peer.silence()
        # Generous bound: this proves the dead peer is found on the loop's own time, not how
        # fast.
        async with asyncio.timeout(60):
            async for event in events:
                if event.name == "lost":
                    break
            await real_sim.sockets.wait_accepted(2)
            await ws.wait_open()
        assert peer not in real_sim.sockets.open, "the silent connection was ended"
    assert states.of("lost")[0].details["reason"] == "peer dead: keepalive unanswered"
    issued = real_sim.tokens
    for session in issued.sessions.values():
        secret_values.update((session.bearer, session.csrf, session.session_id))


async def test_the_keepalive_task_ends_with_the_last_socket_while_the_engine_stays_open(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        before = set(asyncio.all_tasks())
        first = await brand_socket(engine, sim, options=KEEPALIVE)
        second = await brand_socket(engine, sim, options=KEEPALIVE)
        await first.wait_open()
        await second.wait_open()
        assert _socket_tasks(before).count("le_transport socket keepalives") == 1
        await first.close()
        assert _socket_tasks(before).count("le_transport socket keepalives") == 1
        await second.close()
        await clock.sleep(1)
        assert _socket_tasks(before) == []
        # A socket opened later starts it again.
        third = await brand_socket(engine, sim, options=KEEPALIVE)
        await third.wait_open()
        assert _socket_tasks(before).count("le_transport socket keepalives") == 1
    # Closing the engine closed the socket and stopped the scheduler (the leak check agrees).
    assert _socket_tasks(before) == []
