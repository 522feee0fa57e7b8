"""The client-side fault wrapper (``le_transport.chaos.ws.FaultySocket``) reads the connection
only when its owner asks, at most one frame ahead: with a fault plan on, a consumer that falls
behind still pauses the socket and slows the peer down, as without faults, and nothing piles up
in the wrapper. Made-up frames (fault answers, ends) still reach an owner waiting in
``receive()`` at once; a frame read meanwhile is kept and comes next, in order; the frames
behind a held one (``ws_delay``) are read on, up to the read-ahead bound, and wait behind it;
close, cancellation and the connection's end end
every wait, and so does a ``receive(timeout=...)`` on the clock, keeping the read. Against the
simulator's UMS socket on loopback, on the virtual clock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from le_transport import Engine
from le_transport.chaos import (
    FaultInjector,
    FaultRule,
    Match,
    Schedule,
    WsAppError,
    WsDelay,
    WsDrop,
)
from le_transport.chaos.ws import FaultySocket
from le_transport.sockets import ResilientSocket, SocketOptions, ums_brand_path
from le_transport.sockets.dial import UMS_BRAND_SOCKET_QUERY, Connection, EngineDialer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from tests.test_socket_support import StateLog, agent_engine, no_open_connections, states

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

NOTIFICATION = ".ams.routing.RoutingTaskNotification"
PUBLISH = ".ams.ms.PublishEvent"
PAUSED = "reading paused until the consumer catches up"

#: A rule that keeps the wrapper on without striking anything these tests send or receive.
BYSTANDER = FaultRule("bystander", WsAppError(429), unit="ws_message", match=Match(path=".Nope"))


@pytest.fixture
async def sim(clock: VirtualClock, secret_values: set[str]) -> AsyncIterator[Simulator]:
    """The simulator without its idle close: these tests keep the client quiet for minutes
    while its consumer is away (as ``tests/test_socket_inbox.py`` does)."""
    async with Simulator(SimulatorConfig(idle_timeout=3600.0), clock=clock) as simulator:
        yield simulator
    issued = simulator.tokens
    for session in issued.sessions.values():
        secret_values.update((session.bearer, session.csrf, session.session_id))
    secret_values.update(token.value for token in issued.tokens.values())


def chaos_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog, *rules: FaultRule
) -> Engine:
    injector = FaultInjector.seeded(5, *rules, clock=clock)
    return agent_engine(sim, clock, states, wire_middlewares=[injector])


async def brand_socket(engine: Engine, sim: Simulator, max_inbox: int) -> ResilientSocket:
    return await engine.websocket(
        "facadeMsg",
        ums_brand_path(sim.account.id),
        params=UMS_BRAND_SOCKET_QUERY,
        options=SocketOptions(max_inbox=max_inbox),
    )


def wrapper_of(ws: ResilientSocket) -> FaultySocket:
    """The fault wrapper the socket's current connection reads through."""
    conn = ws._conn
    assert conn is not None
    assert isinstance(conn.ws, FaultySocket)
    return conn.ws


async def dial(engine: Engine, sim: Simulator) -> tuple[Connection, FaultySocket]:
    """A connection of the brand socket with no owner: the test reads it by hand."""
    dialer = EngineDialer(
        engine,
        "facadeMsg",
        ums_brand_path(sim.account.id),
        params=UMS_BRAND_SOCKET_QUERY,
        auth=engine.auth,
    )
    conn = await dialer.dial()
    assert isinstance(conn.ws, FaultySocket)
    await sim.sockets.wait_open()
    return conn, conn.ws


def readers() -> list[asyncio.Task[Any]]:
    """The wrapper's reads under way."""
    return [t for t in asyncio.all_tasks() if "chaos reader" in t.get_name() and not t.done()]


async def until(clock: VirtualClock, condition: Callable[[], bool], what: str) -> None:
    """Let loopback frames arrive (virtual time: they come before the clock moves on)."""
    for _ in range(100):
        if condition():
            return
        await clock.sleep(0.1)
    pytest.fail(f"never: {what}")


def body(msg: aiohttp.WSMessage) -> Any:
    assert msg.type is WSMsgType.TEXT, msg
    return json.loads(msg.data)


def numbers(frames: list[Any]) -> list[int]:
    return [f["body"]["n"] for f in frames if f.get("kind") == "notification"]


def request(req_id: str, type_: str = PUBLISH) -> str:
    return json.dumps({"kind": "req", "id": req_id, "type": type_, "body": {}})


def pauses(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "le_transport.sockets" and PAUSED in r.getMessage()
    ]


# -- the owner's flow control, with faults on ---------------------------------------------------


async def test_with_faults_on_a_slow_consumer_pauses_the_socket_and_nothing_is_read_ahead(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        ws = await brand_socket(engine, sim, max_inbox=4)
        await ws.wait_open()
        wrapper = wrapper_of(ws)
        for n in range(40):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        # The consumer is away for a minute: the owner fills the inbox and stops reading, and
        # so does the wrapper (it reads only for the owner).
        await clock.sleep(60)
        assert ws.paused
        assert ws.inbox_size == 4
        assert len(pauses(caplog)) == 1
        assert wrapper.read_ahead == 0
        assert len(wrapper._ready) == 0
        assert readers() == []
        seen: list[int] = []
        async for frame in ws:
            seen.append(frame["body"]["n"])
            assert ws.inbox_size <= 4
            assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
            if len(seen) == 40:
                break
            await clock.sleep(1)
    assert seen == list(range(40))
    assert "lost" not in states.names("facadeMsg")


async def test_with_faults_on_a_paused_socket_slows_the_peer_down(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # As tests/test_socket_inbox.py: 64 frames of 1 MiB are more than aiohttp's buffer and
    # both ends' socket buffers hold, so once nothing reads, the simulator's sends must wait.
    payload = "x" * (1 << 20)
    total = 64
    sent = 0

    async def push() -> None:
        nonlocal sent
        for n in range(total):
            await sim.sockets.notify(NOTIFICATION, {"n": n, "payload": payload}, to_all=True)
            sent += 1

    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        ws = await brand_socket(engine, sim, max_inbox=2)
        await ws.wait_open()
        wrapper = wrapper_of(ws)
        pusher = asyncio.get_running_loop().create_task(push())
        try:
            await until(clock, lambda: ws.paused, "the socket paused")
            await clock.sleep(60)
            assert ws.paused
            assert ws.inbox_size == 2
            assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
            # The backpressure reached the peer through the wrapper.
            assert not pusher.done()
            assert sent < total
            seen: list[int] = []
            async for frame in ws:
                seen.append(frame["body"]["n"])
                assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
                if len(seen) == total:
                    break
            await pusher
        finally:
            pusher.cancel()
    assert seen == list(range(total))


async def test_ws_delay_under_a_full_inbox_keeps_every_frame_in_order(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    held = FaultRule(
        "late",
        WsDelay(delay_ms=1500),
        unit="ws_message",
        match=Match(path=NOTIFICATION),
        schedule=Schedule(skip_first=2, fail_next=6),
    )
    async with chaos_engine(sim, clock, states, held) as engine:
        ws = await brand_socket(engine, sim, max_inbox=3)
        await ws.wait_open()
        wrapper = wrapper_of(ws)
        for n in range(20):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        await clock.sleep(60)
        assert ws.paused
        assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
        seen: list[int] = []
        async for frame in ws:
            seen.append(frame["body"]["n"])
            assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
            if len(seen) == 20:
                break
    assert seen == list(range(20))


# -- the wrapper, read by hand ------------------------------------------------------------------


async def test_an_injected_answer_wins_over_an_idle_connection_and_the_read_is_kept(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    refuse = FaultRule("429", WsAppError(429), unit="ws_message", match=Match(path=PUBLISH))
    async with chaos_engine(sim, clock, states, refuse) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await until(clock, lambda: bool(readers()), "a read under way")
            asked = clock.now()
            await wrapper.send_str(request("r1"))
            answer = body(await waiting)
            # At once: the made-up answer did not wait for the idle connection.
            assert clock.now() == asked
            assert (answer["reqId"], answer["code"]) == ("r1", 429)
            # The read that lost the race goes on, alone; what it brings is kept.
            assert len(readers()) == 1
            assert wrapper.read_ahead == 0
            await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
            await until(clock, lambda: wrapper.read_ahead == 1, "the frame read ahead")
            assert readers() == []
            await wrapper.send_str(request("r2"))
            # Nothing more is read while the owner does not ask.
            await sim.sockets.notify(NOTIFICATION, {"n": 2}, to_all=True)
            await sim.sockets.notify(NOTIFICATION, {"n": 3}, to_all=True)
            await clock.sleep(5)
            assert wrapper.read_ahead == 1
            assert readers() == []
            frames = [body(await wrapper.receive()) for _ in range(4)]
            # In the order they came: the frame read ahead, the answer made up after it.
            assert [f.get("reqId") or f["body"]["n"] for f in frames] == [1, "r2", 2, 3]
            assert sim.sockets.published == []
        finally:
            await conn.close(clock, 5.0)


async def test_a_cancelled_receive_loses_no_frame(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await until(clock, lambda: bool(readers()), "a read under way")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await sim.sockets.notify(NOTIFICATION, {"n": 7}, to_all=True)
            await until(clock, lambda: wrapper.read_ahead == 1, "the frame read ahead")
            assert numbers([body(await wrapper.receive())]) == [7]
            assert wrapper.read_ahead == 0
        finally:
            await conn.close(clock, 5.0)


async def test_the_frames_behind_a_held_one_are_read_on_and_wait_their_turn_in_order(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # ws_delay is latency (as on the simulator), not a stalled reader: the frames behind the
    # held one are taken off the connection as they come, and handed over behind it.
    held = FaultRule(
        "late",
        WsDelay(delay_ms=2000),
        unit="ws_message",
        match=Match(path=NOTIFICATION),
        schedule=Schedule(fail_next=1),
    )
    async with chaos_engine(sim, clock, states, held) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            for n in range(5):
                await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
            await until(clock, lambda: wrapper._holding, "the first frame held")
            held_at = clock.now()
            # The held frame and the four behind it, all read, none handed over yet.
            await until(clock, lambda: wrapper.read_ahead == 5, "the frames behind it read")
            assert wrapper.read_ahead <= FaultySocket.MAX_READ_AHEAD
            assert not waiting.done()
            first = body(await waiting)
            assert clock.now() - held_at == pytest.approx(2.0, abs=0.2)
            # Due with it (their own delay is none): none waits a turn of its own.
            rest = [body(await wrapper.receive(timeout=0.01)) for _ in range(4)]
            assert numbers([first, *rest]) == [0, 1, 2, 3, 4]
            assert wrapper.read_ahead == 0
        finally:
            await conn.close(clock, 5.0)


async def test_close_while_a_frame_is_held_returns_promptly_and_ends_the_wait(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    held = FaultRule(
        "late", WsDelay(delay_ms=600_000), unit="ws_message", match=Match(path=NOTIFICATION)
    )
    async with chaos_engine(sim, clock, states, held) as engine:
        conn, wrapper = await dial(engine, sim)
        waiting = asyncio.get_running_loop().create_task(wrapper.receive())
        await sim.sockets.notify(NOTIFICATION, {"n": 0}, to_all=True)
        await until(clock, lambda: wrapper._holding, "the frame held")
        asked = clock.now()
        await conn.close(clock, 5.0)
        assert clock.now() - asked < 5.0
        assert (await waiting).type is WSMsgType.CLOSING
        assert (await wrapper.receive()).type is WSMsgType.CLOSED
        assert readers() == []
        assert wrapper.read_ahead == 0
        assert wrapper.closed
    assert sim.sockets.all[0].ended == ("client", 1000)


async def test_close_while_the_owner_waits_is_the_handshake_of_a_socket_without_faults(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        conn, wrapper = await dial(engine, sim)
        waiting = asyncio.get_running_loop().create_task(wrapper.receive())
        await until(clock, lambda: bool(readers()), "a read under way")
        await conn.close(clock, 5.0)
        assert (await waiting).type is WSMsgType.CLOSING
        assert readers() == []
        # aiohttp's receive() was ended by its close, not cancelled: the peer answered.
        assert wrapper.close_code == 1000
        assert (await wrapper.receive()).type is WSMsgType.CLOSED
    assert sim.sockets.all[0].ended == ("client", 1000)


async def test_the_connection_ending_ends_the_wait_and_every_later_one(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await sim.sockets.open[0].close(4001)
            end = await waiting
            assert (end.type, end.data) == (WSMsgType.CLOSE, 4001)
            assert (await wrapper.receive()).type is WSMsgType.CLOSED
            assert readers() == []
        finally:
            await conn.close(clock, 5.0)


async def test_an_injected_drop_ends_the_wait_and_nothing_read_after_it_reaches_the_owner(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    drop = FaultRule("drop", WsDrop(), unit="ws_message", match=Match(path=PUBLISH))
    async with chaos_engine(sim, clock, states, drop) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await until(clock, lambda: bool(readers()), "a read under way")
            await wrapper.send_str(request("r1"))
            assert (await waiting).type is WSMsgType.ERROR
            await sim.sockets.notify(NOTIFICATION, {"n": 0}, to_all=True)
            await clock.sleep(1)
            assert wrapper.read_ahead == 0
            assert (await wrapper.receive()).type is WSMsgType.CLOSED
            with pytest.raises(aiohttp.ClientConnectionResetError):
                await wrapper.send_str(request("r2"))
        finally:
            await conn.close(clock, 5.0)
        assert readers() == []
        # As after a real abrupt end, though the real connection was then closed cleanly.
        assert wrapper.close_code == 1006


async def test_a_receive_timeout_ends_the_wait_on_the_clock_as_aiohttps_and_loses_nothing(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    refuse = FaultRule("429", WsAppError(429), unit="ws_message", match=Match(path=PUBLISH))
    async with chaos_engine(sim, clock, states, refuse) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            # A silent connection: TimeoutError after the timeout on the injector's clock, as
            # aiohttp's receive(timeout=) raises after it on the loop's.
            asked = clock.now()
            with pytest.raises(TimeoutError):
                await wrapper.receive(timeout=5.0)
            assert clock.now() - asked == pytest.approx(5.0)
            # The read under way was kept, not cancelled: the connection is not marked as
            # abnormally closed, and what it brings comes with the next receive.
            assert wrapper.close_code is None
            assert len(readers()) == 1
            await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
            assert numbers([body(await wrapper.receive(timeout=5.0))]) == [1]
            # A frame that comes within the timeout, read or made up, is returned at once.
            waiting = asyncio.get_running_loop().create_task(wrapper.receive(timeout=30.0))
            await until(clock, lambda: bool(readers()), "a read under way")
            asked = clock.now()
            await wrapper.send_str(request("r1"))
            assert body(await waiting)["code"] == 429
            assert clock.now() == asked
            # 0 and None are aiohttp's "no timeout of its own".
            for no_limit in (None, 0):
                waiting = asyncio.get_running_loop().create_task(wrapper.receive(no_limit))
                await clock.sleep(600)
                assert not waiting.done()
                await sim.sockets.notify(NOTIFICATION, {"n": 2}, to_all=True)
                assert numbers([body(await waiting)]) == [2]
        finally:
            await conn.close(clock, 5.0)
        assert readers() == []


async def test_a_second_concurrent_receive_is_refused(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with chaos_engine(sim, clock, states, BYSTANDER) as engine:
        conn, wrapper = await dial(engine, sim)
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await until(clock, lambda: bool(readers()), "a read under way")
            with pytest.raises(RuntimeError, match="Concurrent"):
                await wrapper.receive()
        finally:
            await conn.close(clock, 5.0)
        assert (await waiting).type is WSMsgType.CLOSING
