"""Lifecycle races: cancellation and close meeting work in flight, on the socket, the engine and
the recovery loop, against the simulator on the virtual clock. Each test ends with no task,
connection or pending request left behind (the conftest and ``no_open_connections`` check)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest
from aiohttp import web

from le_transport import (
    BackoffPolicy,
    Engine,
    RecoveryFailed,
    RetriesExhausted,
    ServerStatusError,
    SocketClosed,
    SocketDeadlock,
    TransportError,
)
from le_transport._tasks import stop_task
from le_transport.chaos import FaultInjector, FaultRule, Match, Schedule, WsDrop
from le_transport.chaos.ws import FaultySocket
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.providers import StaticDomains
from le_transport.recovery import Recovery
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import SimSocket, Simulator
from tests.conftest import ServerFactory
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


def users_path(sim: Simulator) -> str:
    return f"/api/account/{sim.account.id}/configuration/le-users/users"


def requests_to(sim: Simulator, suffix: str) -> list[float]:
    """When the simulator received each POST whose path ends with ``suffix``."""
    return [r.at for r in sim.requests if r.method == "POST" and r.path.endswith(suffix)]


# -- the engine's close ----------------------------------------------------------------------


async def test_a_call_waiting_through_recovery_fails_at_once_when_the_engine_closes(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", users_path(sim), [503] * 8)
    engine = agent_engine(sim, clock, states)
    await engine.start()
    call = asyncio.ensure_future(
        engine.request("GET", "accountConfigReadOnly", users_path(sim), recover=True)
    )
    await clock.sleep(60)  # the schedule (5, 10, 15 s) is spent: inside the outer pause
    assert engine.recovery.recovering
    await engine.close()
    closed_at = clock.now()
    with pytest.raises(RecoveryFailed) as info:
        await call
    # At once, not after the pause; typed, with the failure that sent the call to recover.
    assert clock.now() == closed_at
    assert "closed" in str(info.value)
    assert type(info.value.last).__name__ == "RetriesExhausted"
    # No re-login outlived the logout.
    assert engine.recovery.relogins == 0
    (logout,) = requests_to(sim, "/logout")
    assert all(at <= logout for at in requests_to(sim, "/login"))
    assert states.of("gave_up")[-1].details["reason"] == "closed"


async def test_a_call_that_fails_after_the_engine_closed_does_not_wait_to_recover(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    engine = agent_engine(sim, clock, states)
    async with engine:
        pass
    with pytest.raises(TransportError, match="closed"):
        await engine.request("GET", "accountConfigReadOnly", users_path(sim), recover=True)
    assert clock.now() == 0


async def test_two_tasks_closing_the_engine_both_return_after_the_logout(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    engine = agent_engine(sim, clock, states)
    await engine.start()
    ws = await brand_socket(engine, sim)
    await ws.wait_open()
    first = asyncio.ensure_future(engine.close())
    await asyncio.sleep(0)  # the first close is under way
    await engine.close()
    # The second returned only once the first was done: the session outlived the logout.
    assert first.done()
    await first
    assert len(requests_to(sim, "/logout")) == 1
    assert "logged_out" in states.names()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ws.closed


async def test_a_close_cancelled_half_way_is_finished_by_the_next_close_logout_included(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    engine = agent_engine(sim, clock, states)
    await engine.start()
    ws = await brand_socket(engine, sim)
    await ws.wait_open()
    first = asyncio.ensure_future(engine.close())
    await asyncio.sleep(0)  # inside the socket's close
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert requests_to(sim, "/logout") == []
    await engine.close()
    assert len(requests_to(sim, "/logout")) == 1
    assert ws.closed


async def test_closing_the_engine_from_an_on_frame_handler_while_it_is_closing_does_not_deadlock(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    engine = agent_engine(sim, clock, states)
    await engine.start()
    closing = asyncio.Event()

    async def on_frame(frame: Any) -> None:
        closing.set()
        await clock.sleep(1)  # the engine's close starts meanwhile, and waits for this socket
        await engine.close()

    ws = await brand_socket(engine, sim, on_frame=on_frame)
    await ws.wait_open()
    await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
    await closing.wait()
    await engine.close()
    assert ws.closed
    assert len(requests_to(sim, "/logout")) == 1


async def test_closing_the_engine_from_an_on_connect_callback_completes_the_close(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    engine = agent_engine(sim, clock, states)
    await engine.start()

    async def give_up(ws: ResilientSocket) -> None:
        await engine.close()

    ws = await brand_socket(engine, sim, on_connect=[give_up])
    async for event in ws.states():
        if event.name == "closed":
            break
    # Nobody closes the engine again: the close begun in the callback finishes by itself.
    while "logged_out" not in states.names() and clock.now() < 60:
        await clock.sleep(1)
    assert engine.session.closed
    assert len(requests_to(sim, "/logout")) == 1


# -- callbacks that hang or raise ------------------------------------------------------------


async def test_close_cancels_an_on_frame_handler_that_never_returns_after_close_timeout(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    entered = asyncio.Event()
    cancelled: list[bool] = []

    async def hangs(frame: Any) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(close_timeout=2), on_frame=hangs)
        await ws.wait_open()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        await entered.wait()
        started = clock.now()
        assert await ws.close() == []
        assert clock.now() - started == 2
    assert cancelled == [True]
    assert ws.closed
    assert ws.error is None
    assert sim.sockets.all[0].ended == ("client", 1000)


async def test_a_request_awaited_in_an_on_frame_handler_fails_at_once_and_the_socket_goes_on(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    outcomes: list[Any] = []
    spawned: list[asyncio.Task[dict[str, Any]]] = []

    async def on_frame(frame: Any) -> None:
        try:
            await holder[0].request(".GetClock")
        except SocketDeadlock as exc:
            outcomes.append((exc, clock.now()))
        # The way that works: the request in a task of its own, not awaited here.
        spawned.append(asyncio.create_task(holder[0].request(".GetClock")))

    async with agent_engine(sim, clock, states) as engine:
        holder = [ws := await brand_socket(engine, sim, on_frame=on_frame)]
        await ws.wait_open()
        notified_at = clock.now()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        while not spawned:
            await clock.sleep(0.1)
        answered = await spawned[0]
        answer = await ws.request(".GetClock")
        assert ws.connects == 1
    ((error, failed_at),) = outcomes
    # At once (not after the 30 s request timeout), and nothing was sent for it.
    assert failed_at - notified_at < 1
    assert "on_frame" in str(error)
    getclocks = [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]
    assert len(getclocks) == 2
    assert answered["code"] == 200
    assert answer["code"] == 200
    assert "lost" not in states.names()


async def test_wait_open_inside_on_connect_fails_at_once_instead_of_waiting_for_itself(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    errors: list[BaseException] = []

    async def waits_for_itself(ws: ResilientSocket) -> None:
        try:
            await ws.wait_open()
        except SocketDeadlock as exc:
            errors.append(exc)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[waits_for_itself])
        await ws.wait_open()
        assert clock.now() == 0
    assert len(errors) == 1
    assert "on_connect" in str(errors[0])


async def test_an_on_frame_handler_that_raises_loses_that_frame_only_and_the_socket_reads_on(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def on_frame(frame: Any) -> None:
        seen.append(frame["body"]["n"])
        if frame["body"]["n"] == 1:
            raise ValueError("a bug in the handler")

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=on_frame)
        await ws.wait_open()
        for n in range(3):
            await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": n}, to_all=True)
        assert (await ws.request(".GetClock"))["code"] == 200  # read after the three
        assert ws.is_open
        assert ws.connects == 1
    assert seen == [0, 1, 2]
    (record,) = [r for r in caplog.records if "on_frame handler raised" in r.getMessage()]
    assert record.exc_info is not None


async def test_close_from_an_on_connect_callback_returns_the_queue_and_the_socket_never_opens(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    returned: list[list[str]] = []

    async def refuse(ws: ResilientSocket) -> None:
        assert await ws.send({"kind": "req", "id": "q", "type": ".GetClock"}) is True
        returned.append(await ws.close())

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[refuse])
        assert await ws.send({"kind": "req", "id": "queued", "type": ".GetClock"}) is False
        with pytest.raises(SocketClosed):
            await ws.wait_open()
    assert len(returned) == 1
    assert [json.loads(text)["id"] for text in returned[0]] == ["queued"]
    assert ws.closed
    assert ws.error is None
    assert "ready" not in states.names("facadeMsg")
    assert sim.sockets.all[0].ended == ("client", 1000)


# -- cancellation meeting work in flight -----------------------------------------------------


async def test_a_request_cancelled_in_flight_leaves_nothing_pending_and_its_late_answer_is_dropped(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    held: list[tuple[SimSocket, dict[str, Any]]] = []

    async def hold(sock: SimSocket, frame: dict[str, Any]) -> None:
        held.append((sock, frame))

    sim.sockets.on(".ams.custom.Slow", hold)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        call = asyncio.ensure_future(ws.request(".ams.custom.Slow"))
        while not held:
            await clock.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert len(ws._pending) == 0
        sock, frame = held[0]
        await sock.send({"kind": "resp", "reqId": frame["id"], "code": 200, "body": {}})
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        # The next frame the consumer sees is the notification, not the late answer.
        assert (await ws.__anext__())["type"] == ".ams.routing.RoutingTaskNotification"
        assert (await ws.request(".GetClock"))["code"] == 200
        assert ws.connects == 1


async def test_a_queued_request_cancelled_while_the_socket_is_down_is_never_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        events = ws.states()
        sim.sockets.open[0].drop()
        async for event in events:
            if event.name == "lost":
                break
        call = asyncio.ensure_future(ws.request(".ams.custom.Withdrawn"))
        kept = asyncio.ensure_future(ws.request(".GetClock"))
        await asyncio.sleep(0)
        assert ws.queued == 2
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await kept)["code"] == 200
        assert len(ws._pending) == 0
    sent = [f.get("type") for s in sim.sockets.all for f in s.received]
    assert ".ams.custom.Withdrawn" not in sent
    assert sent.count(".GetClock") == 1


async def test_wait_open_cancelled_during_a_reconnect_pause_leaves_no_waiter_behind(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        events = ws.states()
        sim.sockets.open[0].drop()
        async for event in events:
            if event.name == "reconnecting":
                break
        waiting = asyncio.ensure_future(ws.wait_open())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not ws._waiters
        # Others still see the socket come back.
        await ws.wait_open()
        assert ws.connects == 2


async def test_two_consumers_iterating_share_the_frames_and_both_end_when_the_socket_closes(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def consume(ws: ResilientSocket) -> list[int]:
        return [frame["body"]["n"] async for frame in ws]

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        consumers = [asyncio.ensure_future(consume(ws)) for _ in range(2)]
        for n in range(10):
            await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": n}, to_all=True)
        await ws.request(".GetClock")  # answered after the ten: they were all read
        while ws.inbox_size:
            await clock.sleep(0.01)
        await ws.close()
        first, second = await asyncio.gather(*consumers)
    # Every frame once, to one of them, each in order.
    assert sorted(first + second) == list(range(10))
    assert first == sorted(first)
    assert second == sorted(second)


async def test_two_tasks_closing_one_socket_both_get_the_unsent_queue(
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
        first, second = await asyncio.gather(ws.close(), ws.close())
    assert first == second
    assert len(first) == 1
    assert sim.sockets.all[0].ended == ("client", 1000)


async def test_close_while_a_keepalive_probe_is_in_flight_cancels_the_probe(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options)
        await ws.wait_open()
        sim.sockets.open[0].silence()
        while not [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]:
            await clock.sleep(1)
        assert ws._probe is not None
        probe = ws._probe
        await ws.close()
        assert probe.done()
        assert len(ws._pending) == 0
    assert ws.connects == 1


# -- the server closing with work in flight --------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 4000, 4401, 4407])
async def test_a_server_close_fails_the_request_in_flight_and_the_queue_waits_for_a_ready_one(
    sim: Simulator, clock: VirtualClock, states: StateLog, code: int
) -> None:
    held: list[SimSocket] = []

    async def hold(sock: SimSocket, frame: dict[str, Any]) -> None:
        held.append(sock)

    async def end(sock: SimSocket) -> None:
        if code == 1006:
            sock.drop()  # no close frame at all
        else:
            await sock.close(code)

    async def slow_second_setup(ws: ResilientSocket) -> None:
        if ws.connects == 2:
            await ws.request(".ams.custom.Hold")

    sim.sockets.on(".ams.custom.Hold", hold)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[slow_second_setup])
        await ws.wait_open()
        in_flight = asyncio.ensure_future(ws.request(".ams.custom.Hold"))
        while not held:
            await clock.sleep(0.1)
        await end(held[0])
        with pytest.raises(SocketClosed):
            await in_flight
        # Down now: these wait in the queue.
        assert await ws.send({"kind": "req", "id": "B", "type": ".GetClock"}) is False
        assert await ws.send({"kind": "req", "id": "C", "type": ".GetClock"}) is False
        while len(held) < 2:  # the second connection's on_connect is held by the server
            await clock.sleep(0.1)
        assert ws.queued == 2
        await end(held[1])
        await ws.wait_open()
        assert len(ws._pending) == 0
    first, second, third = sim.sockets.all
    ids = [
        [f.get("id") for f in s.received if f.get("id") in ("B", "C")]
        for s in (first, second, third)
    ]
    # Nothing sent on a connection that ended before the queue's turn; then each once, in order.
    assert ids == [[], [], ["B", "C"]]
    assert ws.error is None


# -- the recovery loop -----------------------------------------------------------------------


def exhausted() -> RetriesExhausted:
    return RetriesExhausted("gave up", last=ServerStatusError("503", status=503))


async def test_a_recovery_round_cancelled_with_nobody_else_waiting_ends_its_episode(
    clock: VirtualClock,
) -> None:
    recovery = Recovery(
        domains=StaticDomains({"svc": "127.0.0.1:1"}),
        auth=None,
        clock=clock,
        policy=BackoffPolicy.relogin(deadline=600),
        rng=random.Random(3),
    )

    async def failing() -> str:
        raise exhausted()

    waiting = asyncio.ensure_future(recovery.run(failing))
    await clock.sleep(60)  # inside the first pause (2 min ± 20%)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not recovery.recovering
    await clock.sleep(3600)  # far past the policy's deadline, counted from that failure
    outcomes: list[BaseException | str] = [exhausted(), "ok"]

    async def fails_once() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # A new episode: its own first pause, not a give-up for the old episode's deadline.
    assert await recovery.run(fails_once) == "ok"
    assert 96 <= recovery.pauses[-1] <= 144


async def test_a_cancelled_round_leaves_the_episode_to_the_calls_still_waiting(
    clock: VirtualClock,
) -> None:
    recovery = Recovery(
        domains=StaticDomains({"svc": "127.0.0.1:1"}),
        auth=None,
        clock=clock,
        policy=BackoffPolicy.relogin(jitter=0),
    )
    healthy_at = 500.0

    async def failing_until_healthy() -> str:
        if clock.now() < healthy_at:
            raise exhausted()
        return "ok"

    first = asyncio.ensure_future(recovery.run(failing_until_healthy))
    second = asyncio.ensure_future(recovery.run(failing_until_healthy))
    await clock.sleep(60)  # both wait: the first in its round's pause, the second for the lock
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert recovery.recovering
    assert await second == "ok"
    # The second's round went on with the episode: its pause did not shrink back to 2 min.
    assert list(recovery.pauses) == [120.0, 240.0, 480.0]


# -- closing many sockets --------------------------------------------------------------------


class DeafServer:
    """A WebSocket server that reads nothing, so never answers a close frame (each close waits
    its timeout), until :meth:`release`."""

    def __init__(self) -> None:
        self._release = asyncio.Event()
        self._serving = 0
        self._idle = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/ws", self._handler)

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        self._serving += 1
        self._idle.clear()
        try:
            ws = web.WebSocketResponse(autoping=False)
            await ws.prepare(request)
            await self._release.wait()
            # Cut, not closed: a close would first read through what the client had sent.
            if request.transport is not None:
                request.transport.abort()
            return ws
        finally:
            self._serving -= 1
            if not self._serving:
                self._idle.set()

    async def release(self) -> None:
        """Let every handler end, and wait until they did."""
        self._release.set()
        if self._serving:
            await self._idle.wait()
        for _ in range(5):  # the server's protocol tasks end just after their handler
            await asyncio.sleep(0)


async def test_closing_the_engine_closes_its_sockets_together_not_one_after_another(
    clock: VirtualClock, serve: ServerFactory
) -> None:
    deaf = DeafServer()
    host = await serve(deaf.app)
    options = SocketOptions(close_timeout=5)
    try:
        async with Engine(StaticDomains({"svc": host}), scheme="http", clock=clock) as engine:
            fleet = [await engine.websocket("svc", "/ws", options=options) for _ in range(4)]
            for ws in fleet:
                await ws.wait_open()
            started = clock.now()
    finally:
        await deaf.release()
    # Each close handshake went unanswered for its 5 s, all at the same time.
    assert clock.now() - started == 5
    assert all(ws.closed for ws in fleet)


@pytest.mark.parametrize("chaos", [False, True], ids=["plain", "under-a-fault-plan"])
async def test_a_send_blocked_on_a_peer_that_stopped_reading_ends_with_the_close(
    clock: VirtualClock, serve: ServerFactory, chaos: bool
) -> None:
    deaf = DeafServer()
    host = await serve(deaf.app)
    options = SocketOptions(close_timeout=5)
    big = "x" * (1 << 20)
    # A plan with a socket rule that never strikes: the engine wraps the socket in the fault
    # injector's FaultySocket, under which the connection's transport must still be found.
    never = FaultRule(
        "never", WsDrop(), unit="ws_session", match=Match(path="/nowhere"), schedule=Schedule()
    )
    middlewares = [FaultInjector.seeded(0, never, clock=clock)] if chaos else []
    try:
        async with Engine(
            StaticDomains({"svc": host}), scheme="http", clock=clock, wire_middlewares=middlewares
        ) as engine:
            ws = await engine.websocket("svc", "/ws", options=options)
            await ws.wait_open()
            if chaos:
                conn = ws._conn  # the connection under the socket, to check what it wraps
                assert conn is not None
                assert isinstance(conn.ws, FaultySocket)
                assert conn.transport is not None
            blocked = None
            for _ in range(256):  # until the kernel's and the transport's buffers are full
                send = asyncio.ensure_future(ws.send(big))
                for _ in range(10):  # loop rounds, for a write the kernel can still take
                    await asyncio.sleep(0)
                if not send.done():
                    blocked = send
                    break
                assert send.result() is True
            assert blocked is not None
            started = clock.now()
            await ws.close()
            # The write waiting on the deaf peer ends with the socket, typed: it was not
            # queued for a connection that will never come.
            with pytest.raises(SocketClosed):
                await blocked
            assert clock.now() - started == 5
            assert ws.queued == 0
    finally:
        await deaf.release()


async def test_stopping_a_task_lets_the_callers_own_cancellation_through() -> None:
    # cancel() then `await task` inside suppress(CancelledError) ate a cancellation aimed at
    # the caller while it waited: Engine.close() and the keepalives' close() went on and
    # returned normally, their task left with a pending cancel.
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # winding down takes a while

    task = asyncio.ensure_future(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.ensure_future(stop_task(task))
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task  # the stopped task still ends, cancelled

    # And a task that ends with an error when stopped is read, not reported as never retrieved.
    async def fails_when_stopped() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("winding down failed")

    failing = asyncio.ensure_future(fails_when_stopped())
    await asyncio.sleep(0)
    await stop_task(failing)
    assert isinstance(failing.exception(), RuntimeError)
