"""The bounded inbox: a consumer that falls behind pauses the socket's read (backpressure on
the peer) instead of growing the process; the pause never hangs a close, a broken connection
or the keepalive — against the simulator on the virtual clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from le_transport import ConfigurationError, SocketRequestTimeout
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import SimSocket, Simulator, SimulatorConfig
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

NOTIFICATION = ".ams.routing.RoutingTaskNotification"
PAUSED = "reading paused until the consumer catches up"
RESUMED = "reading resumed after"


@pytest.fixture
async def sim(clock: VirtualClock, secret_values: set[str]) -> AsyncIterator[Simulator]:
    """The simulator without its idle close: it counts only client frames, and these tests
    keep the client quiet for minutes while its consumer is away."""
    async with Simulator(SimulatorConfig(idle_timeout=3600.0), clock=clock) as simulator:
        yield simulator
    issued = simulator.tokens
    for session in issued.sessions.values():
        secret_values.update((session.bearer, session.csrf, session.session_id))
    secret_values.update(token.value for token in issued.tokens.values())


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The socket layer's log records whose message contains ``text``."""
    return [
        r for r in caplog.records if r.name == "le_transport.sockets" and text in r.getMessage()
    ]


def field(record: logging.LogRecord, name: str) -> Any:
    """A structured field (``extra``) of a log record."""
    return record.__dict__[name]


async def notify(sim: Simulator, count: int, start: int = 0) -> None:
    """Push ``count`` numbered notifications to every open socket."""
    for n in range(start, start + count):
        await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)


async def until_paused(ws: ResilientSocket, clock: VirtualClock) -> None:
    """Let the owner read until it pauses (virtual time: the loopback frames arrive first)."""
    for _ in range(100):
        if ws.paused:
            return
        await clock.sleep(0.1)
    pytest.fail(f"the socket never paused ({ws.inbox_size} frames in the inbox)")


async def take(ws: ResilientSocket, count: int) -> list[Any]:
    """The next ``count`` unsolicited frames."""
    return [await anext(ws) for _ in range(count)]


def numbers(frames: list[Any]) -> list[int]:
    """The ``n`` of each notification among ``frames``."""
    return [f["body"]["n"] for f in frames if f.get("kind") == "notification"]


async def test_a_slow_consumer_gets_every_frame_in_order_and_the_inbox_never_exceeds_max_inbox(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=4))
        await ws.wait_open()
        await notify(sim, 40)
        # The consumer is away for a minute: the owner fills the inbox and stops reading.
        await clock.sleep(60)
        assert ws.paused
        assert ws.inbox_size == 4
        (pause,) = records(caplog, PAUSED)  # one warning for the whole pause, not per frame
        assert pause.levelno == logging.WARNING
        assert field(pause, "socket") == ws.name
        assert field(pause, "inbox") == 4
        seen: list[int] = []
        sizes: list[int] = []
        async for frame in ws:
            seen.append(frame["body"]["n"])
            sizes.append(ws.inbox_size)
            if len(seen) == 40:
                break
            await clock.sleep(1)
        assert not ws.paused
        assert ws.inbox_size == 0
    assert seen == list(range(40))
    assert max(sizes) <= 4
    pauses = records(caplog, PAUSED)
    resumes = records(caplog, RESUMED)
    # Every pause is logged once and ends with one resume, which says how long it lasted on
    # the clock: the first one, the minute the consumer was away and two frames more.
    assert len(pauses) == len(resumes) >= 2
    assert all(r.levelno == logging.INFO for r in resumes)
    assert field(resumes[0], "paused") == pytest.approx(61.0, abs=0.2)
    assert "lost" not in states.names("facadeMsg")


async def test_a_paused_socket_slows_the_peer_down_until_the_consumer_catches_up(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # 64 frames of 1 MiB: more than aiohttp's buffer and both ends' socket buffers can hold
    # (Linux lets them grow to 32 MiB and 4 MiB by default), so once the client stops
    # reading, the simulator's sends must wait.
    payload = "x" * (1 << 20)
    total = 64
    sent = 0

    async def push() -> None:
        nonlocal sent
        for n in range(total):
            await sim.sockets.notify(NOTIFICATION, {"n": n, "payload": payload}, to_all=True)
            sent += 1

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=2))
        await ws.wait_open()
        pusher = asyncio.get_running_loop().create_task(push())
        try:
            await until_paused(ws, clock)
            await clock.sleep(60)
            assert ws.paused
            assert ws.inbox_size == 2
            assert not pusher.done()
            assert sent < total
            seen: list[int] = []
            async for frame in ws:
                seen.append(frame["body"]["n"])
                assert ws.inbox_size <= 2
                if len(seen) == total:
                    break
            await pusher
        finally:
            pusher.cancel()
    assert seen == list(range(total))


async def test_close_while_paused_returns_promptly_and_unread_frames_stay_readable(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = SocketOptions(max_inbox=3)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options)
        await ws.wait_open()
        await notify(sim, 10)
        await until_paused(ws, clock)
        asked = clock.now()
        await ws.close()
        assert clock.now() - asked < options.close_timeout
        assert ws.closed
        assert not ws.paused
        # The frame the owner held when it paused was received: it joins the inbox.
        assert numbers([frame async for frame in ws]) == [0, 1, 2, 3]
    assert sim.sockets.all[0].ended == ("client", 1000)
    assert len(records(caplog, "the connection ended after")) == 1


async def test_a_cancelled_close_while_paused_still_closes_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=2))
        await ws.wait_open()
        await notify(sim, 6)
        await until_paused(ws, clock)
        closing = asyncio.get_running_loop().create_task(ws.close())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        # The pause was released when the close began: the owner finishes on its own.
        await ws.close()
        assert ws.closed
        assert numbers([frame async for frame in ws]) == [0, 1, 2]


async def test_a_failed_write_while_paused_ends_the_pause_and_the_socket_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=2))
        await ws.wait_open()
        await notify(sim, 6)
        await until_paused(ws, clock)
        first = sim.sockets.open[0]
        first.drop()
        # The paused owner does not read, so it cannot see the drop; the next write fails,
        # which ends the connection and the pause. The message waits for the new connection.
        await clock.sleep(1)
        assert not await ws.send({"kind": "req", "id": "after-drop", "type": "x", "body": {}})
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert not ws.paused
        second = sim.sockets.open[0]
        await notify(sim, 2, start=100)
        frames = await take(ws, 5)
    assert numbers(frames) == [0, 1, 2, 100, 101]
    assert [f.get("id") for f in second.received] == ["after-drop"]
    assert "after-drop" not in [f.get("id") for f in first.received]


async def test_the_keepalive_declares_no_dead_peer_while_paused_and_restarts_at_the_resume(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    probes: list[float] = []

    async def get_clock(sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
        probes.append(clock.now())
        return 200, {"currentTime": int(clock.now() * 1000)}

    keepalive = MESSAGING_AGENT_SDK_GETCLOCK
    options = SocketOptions(keepalive=keepalive, max_inbox=2)
    async with agent_engine(sim, clock, states) as engine:
        sim.sockets.on(".GetClock", get_clock)
        ws = await brand_socket(engine, sim, options=options)
        await ws.wait_open()
        await notify(sim, 5)
        await until_paused(ws, clock)
        # Seven keepalive intervals without reading a frame: silence, but not a dead peer.
        await clock.sleep(7 * keepalive.interval)
        assert ws.paused
        assert probes == []
        assert "lost" not in states.names("facadeMsg")
        assert numbers(await take(ws, 5)) == [0, 1, 2, 3, 4]
        resumed = clock.now()
        assert not ws.paused
        await clock.sleep(3 * keepalive.interval + 1)
    assert len(sim.sockets.all) == 1
    assert "lost" not in states.names("facadeMsg")
    # Back to the normal schedule, idle from the resume: a probe every interval, answered.
    assert probes == pytest.approx([resumed + keepalive.interval * k for k in (1, 2, 3)])


async def test_a_request_while_paused_times_out_and_the_socket_serves_it_after_catching_up(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=2))
        await ws.wait_open()
        await notify(sim, 5)
        await until_paused(ws, clock)
        asked = clock.now()
        # The answer is on its way, behind three frames nobody reads.
        with pytest.raises(SocketRequestTimeout):
            await ws.request(".GetClock", timeout=10)
        assert clock.now() - asked == pytest.approx(10.0)
        assert ws.paused
        frames = await take(ws, 5)
        assert numbers(frames) == [0, 1, 2, 3, 4]
        answer = await ws.request(".GetClock", timeout=10)
    assert answer["code"] == 200
    assert "lost" not in states.names("facadeMsg")


async def test_an_on_frame_socket_never_pauses(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    handled: list[int] = []

    async def slow_handler(frame: Any) -> None:
        await clock.sleep(1)
        handled.append(frame["body"]["n"])

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine, sim, options=SocketOptions(max_inbox=1), on_frame=slow_handler
        )
        await ws.wait_open()
        await notify(sim, 10)
        while len(handled) < 10:
            assert not ws.paused
            assert ws.inbox_size == 0
            await clock.sleep(0.5)
    assert handled == list(range(10))


async def test_an_unbounded_inbox_holds_every_frame_without_pausing(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_inbox=0))
        await ws.wait_open()
        await notify(sim, 50)
        await clock.sleep(10)
        assert not ws.paused
        assert ws.inbox_size == 50
        assert numbers(await take(ws, 50)) == list(range(50))


def test_the_default_inbox_holds_ten_thousand_frames() -> None:
    assert SocketOptions().max_inbox == 10_000


@pytest.mark.parametrize("bad", [-1, 2.5, "10", True, None])
def test_max_inbox_must_be_a_whole_number_of_frames_or_zero(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_inbox") as caught:
        SocketOptions(max_inbox=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)


async def test_on_connect_requests_are_answered_though_frames_fill_the_inbox_meanwhile(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """While ``on_connect`` runs, the inbox may pass its bound: the callbacks' answers come in
    behind the frames, and pausing then would time them out and cost a reconnect. The bound
    applies again once the connection is ready."""
    from le_transport.chaos import Delay

    subscribe = ".ams.aam.SubscribeExConversations"
    sim.faults.script(None, subscribe, [Delay(delay_ms=2000)], unit="ws_message")
    answers: list[dict[str, Any]] = []

    async def resubscribe(ws: ResilientSocket) -> None:
        answers.append(await ws.request(subscribe, {}, timeout=10))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine, sim, options=SocketOptions(max_inbox=2), on_connect=[resubscribe]
        )
        await sim.sockets.wait_open()
        await notify(sim, 5)  # while the subscribe answer is still on its way
        await ws.wait_open()
        assert [a["code"] for a in answers] == [200]
        assert ws.inbox_size == 5
        assert not ws.paused
        await notify(sim, 3, start=5)
        await until_paused(ws, clock)
        assert numbers(await take(ws, 8)) == list(range(8))
    assert len(sim.sockets.all) == 1, "no reconnect"
