"""What a review of the socket layer found, each kept fixed:

- a queued request whose caller gave up (a timeout, a cancellation) leaves the queue: it no
  longer counts against ``max_queued``, so an outage full of timed-out requests does not end
  with every send refused;
- a task that an ``on_connect`` callback started sends as any other task once the callbacks are
  done: queued while the connection is ending (never written to a connection already given up
  on, nor refused), while what the callbacks themselves wait for still goes straight out;
- writes waiting on a connection that drops are put back in the order they were sent, not the
  reverse; one that fails only once the next connection is open goes out on it, rather than
  wait in the queue of an open socket (and every send with it);
- ``engine.websocket`` refuses at the call, typed and without showing a value, what an HTTP
  call refuses (a path that is not one, ``params`` or ``headers`` that cannot be sent, a header
  the auth provider's credentials would replace) and what cannot configure a socket (an
  ``auth_placement`` that is not an ``AuthPlacement``, an ``escalate`` that cannot be called);
- a request (or ``wait_open``) an ``on_frame`` handler waits for through another task
  (``gather``, ``create_task`` then ``await``, ``wait_for``, a ``TaskGroup``) raises
  ``SocketDeadlock`` at once, while a task the handler starts and does not wait for requests
  as it likes, whether the handler has returned or still waits for something else.

Against the simulator's UMS socket on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from le_transport import (
    ConfigurationError,
    InvalidRequest,
    SocketDeadlock,
    SocketQueueFull,
    SocketRequestTimeout,
    StaticBearer,
)
from le_transport.chaos import Delay, FaultInjector, FaultRule, Match, Schedule
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.sockets import (
    AuthPlacement,
    Outbox,
    Outgoing,
    ResilientSocket,
    SocketOptions,
    ums_brand_path,
)
from le_transport.sockets._waits import waits_for
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

UPGRADE = "/ws_api/*"
LOGIN = "/api/account/*/login"
MARKER = ".marker"
NOTIFICATION = ".ams.routing.RoutingTaskNotification"


def marker(n: object) -> dict[str, Any]:
    """A request frame sent with ``send`` (nobody waits for its answer), told apart by ``n``."""
    return {"kind": "req", "id": f"m-{n}", "type": MARKER, "body": {"n": n}}


def markers(frames: Iterable[dict[str, Any]]) -> list[object]:
    """The ``n`` of each marker among ``frames``, in order."""
    return [f["body"]["n"] for f in frames if f.get("type") == MARKER]


# -- D1: a withdrawn request leaves the queue --------------------------------------------------


def test_a_withdrawn_request_leaves_the_queue_and_its_place_is_free_again() -> None:
    box = Outbox(3)
    for text, rid in (("a", None), ("b", "1"), ("c", "2")):
        box.put(Outgoing(text, rid))
    with pytest.raises(SocketQueueFull):
        box.put(Outgoing("d"))
    assert box.withdraw("1")
    assert not box.withdraw("1")  # gone, not merely marked
    assert len(box) == 2
    box.put(Outgoing("d"))  # its place is free again
    assert box.texts() == ["a", "c", "d"]
    assert box.withdraw("2")
    assert [item.text for item in box.clear()] == ["a", "d"]
    assert len(box) == 0


async def test_requests_timed_out_while_the_socket_is_down_do_not_fill_its_queue(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The socket cannot connect for a while: every upgrade is refused.
    sim.faults.script("GET", UPGRADE, [503] * 4)
    options = SocketOptions(max_queued=3, escalate_after=0)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        for _ in range(5):  # more than max_queued
            with pytest.raises(SocketRequestTimeout):
                await ws.request(".GetClock", timeout=1)
        cancelled = asyncio.create_task(ws.request(".GetClock"))
        await clock.sleep(1)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert ws.queued == 0
        for n in range(3):
            assert await ws.send(marker(n)) is False
        assert ws.queued == 3
        await ws.wait_open()
        await ws.request(".GetClock")  # answered after the queue went out
    (opened,) = sim.sockets.all
    # The queue went out, and no request whose caller gave up.
    assert markers(opened.received) == [0, 1, 2]
    assert [f.get("type") for f in opened.received].count(".GetClock") == 1


# -- D2: what on_connect started sends as any task, once the callbacks are done ----------------


class _Seen(logging.Handler):
    """Sets ``event`` when a record holding ``words`` is logged."""

    def __init__(self, words: str, event: asyncio.Event) -> None:
        super().__init__(logging.DEBUG)
        self.words = words
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


@pytest.fixture
def peer_dead() -> Iterator[asyncio.Event]:
    """Set when a socket's keepalive declares its peer dead (the connection is ending)."""
    event = asyncio.Event()
    handler = _Seen("peer dead", event)
    logger = logging.getLogger("le_transport.sockets")
    logger.addHandler(handler)
    try:
        yield event
    finally:
        logger.removeHandler(handler)


async def test_a_task_on_connect_started_queues_its_send_once_the_connection_is_ending(
    sim: Simulator, clock: VirtualClock, states: StateLog, peer_dead: asyncio.Event
) -> None:
    results: dict[str, object] = {}

    async def send_when_dead(ws: ResilientSocket, name: str) -> None:
        await peer_dead.wait()
        results[name] = await ws.send(marker(name))

    started: list[asyncio.Task[None]] = []

    async def start_a_publisher(ws: ResilientSocket) -> None:
        if not started:  # a background publisher, started on the first connect
            started.append(asyncio.create_task(send_when_dead(ws, "started-by-on-connect")))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[start_a_publisher])
        plain = asyncio.create_task(send_when_dead(ws, "plain"))
        await ws.wait_open()
        sim.sockets.open[0].silence()  # the keepalive finds the peer dead
        await asyncio.gather(plain, *started)
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")  # behind the queue, on the same connection
    # Both queued for the next connection, and sent there: none written to the one already
    # declared dead (where it was lost while send() said it went out).
    assert results == {"plain": False, "started-by-on-connect": False}
    first, second = sim.sockets.all
    assert markers(first.received) == []
    assert sorted(map(str, markers(second.received))) == ["plain", "started-by-on-connect"]


async def test_what_an_on_connect_callback_waits_for_in_other_tasks_still_goes_straight_out(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    answers: list[Any] = []

    async def resubscribe(ws: ResilientSocket) -> None:
        # Requests in tasks of their own that the callback waits for: the queue goes out only
        # after the callbacks, so these must not wait in it.
        answers.extend(await asyncio.gather(ws.request(".GetClock"), ws.request(".GetClock")))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        assert clock.now() == 0  # no request timed out
    assert [answer["code"] for answer in answers] == [200, 200]
    assert ws.connects == 1


# -- D3: writes a dropped connection failed go out in the order they were sent ----------------


def test_writes_put_back_keep_the_order_they_were_sent_in_ahead_of_the_queue() -> None:
    box = Outbox(10)
    box.put(Outgoing("queued-after"))
    # Five writes of one connection fail, the later ones first.
    for order in (5, 3, 4, 1, 2):
        box.put_back(Outgoing(f"w{order}", order=order))
    assert box.texts() == ["w1", "w2", "w3", "w4", "w5", "queued-after"]
    # The next connection takes the first and fails writing it: it goes back first.
    first = box.take()
    assert first is not None
    box.put_back(first)
    assert box.texts() == ["w1", "w2", "w3", "w4", "w5", "queued-after"]
    # The one after sends the whole queue; then its own writes fail, a withdrawn request
    # among them, and a message is queued meanwhile.
    while box.take() is not None:
        pass
    box.put_back(Outgoing("w8", order=8))
    box.put(Outgoing("queued-later"))
    box.put_back(Outgoing("r7", "7", order=7))
    box.put_back(Outgoing("w6", order=6))
    assert box.withdraw("7")
    box.put_back(Outgoing("w9", order=9))
    box.put_back(Outgoing("w7", order=7))
    assert box.texts() == ["w6", "w7", "w8", "w9", "queued-later"]


async def test_writes_waiting_when_the_connection_drops_go_out_next_in_the_order_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Each marker's write waits 0.3 s (a peer slow to take them), on the first connection.
    slow = FaultRule(
        "slow",
        Delay(delay_ms=300),
        unit="ws_message",
        match=Match(path=MARKER),
        schedule=Schedule(fail_next=5),
    )
    injector = FaultInjector.seeded(1, slow, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        sends = [asyncio.create_task(ws.send(marker(n))) for n in range(5)]
        for _ in range(3):  # each is under way, waiting on its write
            await asyncio.sleep(0)
        assert not any(send.done() for send in sends)
        sim.sockets.open[0].drop()
        # The writes fail with the connection: each waits for the next one.
        assert await asyncio.gather(*sends) == [False] * 5
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
    first, second = sim.sockets.all
    assert markers(first.received) == []
    assert markers(second.received) == [0, 1, 2, 3, 4]


async def test_a_write_failing_after_the_next_connection_opened_goes_out_on_it(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The first marker's write waits 5 s: past the reconnect (about a second).
    slow = FaultRule(
        "slow",
        Delay(delay_ms=5000),
        unit="ws_message",
        match=Match(path=MARKER),
        schedule=Schedule(fail_next=1),
    )
    injector = FaultInjector.seeded(1, slow, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        late = asyncio.create_task(ws.send(marker("late")))
        for _ in range(3):
            await asyncio.sleep(0)
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert not late.done()
        # Nothing stands in the queue of the open socket: sends go straight out...
        assert await ws.send(marker("after")) is True
        # ...and so does the late one, on this connection, once its write failed.
        assert await late is True
        assert ws.queued == 0
        await ws.request(".GetClock")
    first, second = sim.sockets.all
    assert markers(first.received) == []
    assert markers(second.received) == ["after", "late"]


# -- D4, D6, D7: engine.websocket refuses at the call what cannot work ------------------------


WebsocketCall = Callable[..., Awaitable[ResilientSocket]]


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"auth_placement": "path"}, ConfigurationError, "auth_placement must be an AuthPlacement"),
        ({"auth_placement": 1}, ConfigurationError, "got a int"),
        ({"escalate": 5}, ConfigurationError, "escalate takes an async callable"),
        ({"path": None}, InvalidRequest, "path must be an absolute path"),
        ({"path": 123}, InvalidRequest, "path must be an absolute path"),
        ({"path": "ws_api/x/{bearer}"}, InvalidRequest, "path must be an absolute path"),
        ({"path": "/ws api/{bearer}"}, InvalidRequest, "whitespace"),
        ({"params": ["v"]}, InvalidRequest, "params must be a mapping"),
        ({"params": {"v": "2.1", "token": b"s3cr3t-value"}}, InvalidRequest, "params['token']"),
        ({"params": {"v": None}}, InvalidRequest, "params['v'] is None"),
        ({"headers": ["x"]}, InvalidRequest, "headers must be a mapping"),
        ({"headers": {"X-Trace": "a\r\nX-Injected: s3cr3t"}}, InvalidRequest, "CR, LF or NUL"),
        ({"headers": {"X-Key": b"s3cr3t"}}, InvalidRequest, "must have a str value"),
        ({"client_properties": ["DESKTOP"]}, InvalidRequest, "client_properties must be"),
        ({"client_properties": {"os": b"s3cr3t"}}, InvalidRequest, "client_properties['os']"),
    ],
    ids=lambda value: repr(value)[:60] if isinstance(value, dict) else "",
)
async def test_websocket_refuses_what_cannot_work_at_the_call_typed_and_without_values(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    kwargs: dict[str, Any],
    error: type[Exception],
    says: str,
) -> None:
    call: dict[str, Any] = {"path": ums_brand_path(sim.account.id), "params": {"v": "2.1"}}
    call.update(kwargs)
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(error) as refused:
            await engine.websocket("facadeMsg", **call)
    assert says in str(refused.value)
    assert "s3cr3t" not in str(refused.value)
    assert refused.value.__cause__ is None
    # Nothing was made or tried: no login, no upgrade, no socket.
    assert sim.count("POST", LOGIN) == 0
    assert sim.count("GET", UPGRADE) == 0
    assert states.names() == []


async def test_websocket_refuses_a_header_the_providers_credentials_would_replace(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        # The credentials go in the upgrade's headers (no {bearer} in the path): the caller's
        # own would be replaced without a word, as over HTTP, where it is refused too.
        with pytest.raises(InvalidRequest) as refused:
            await engine.websocket("facadeMsg", "/ws_api/headers", headers={"authorization": "x"})
        with pytest.raises(InvalidRequest):
            await engine.websocket(
                "facadeMsg",
                "/ws_api/headers",
                auth=StaticBearer("t"),
                headers={"Authorization": "x"},
            )
        # In the path, or nowhere, they replace nothing: the caller's header goes as it is.
        ws = await brand_socket(engine, sim, headers={"Authorization": "Bearer mine"})
        await ws.wait_open()
        await ws.close()
        none = await engine.websocket(
            "facadeMsg",
            "/ws_api/nothing",
            auth_placement=AuthPlacement.NONE,
            headers={"Authorization": "Bearer mine"},
        )
        await none.close()
    assert "would be replaced by the credentials" in str(refused.value)
    assert sim.count("GET", UPGRADE) >= 1


async def test_a_keepalive_refuses_headers_that_cannot_be_sent_before_it_starts(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        for headers in ({"X-Trace": "a\nb"}, {"Authorization": "mine"}):
            with pytest.raises(InvalidRequest):
                engine.keepalive(
                    SERVER_CHAT_API_CHAT_INFO,
                    "agentVep",
                    fields={"account": sim.account.id, "chat": "c"},
                    headers=headers,
                )
    assert states.names() == []


# -- D5: what an on_frame handler waits for in another task -----------------------------------


async def _gathered(ws: ResilientSocket) -> object:
    return await asyncio.gather(ws.request(".GetClock"))


async def _awaited_task(ws: ResilientSocket) -> object:
    return await asyncio.create_task(ws.request(".GetClock"))


async def _wait_for(ws: ResilientSocket) -> object:
    return await asyncio.wait_for(ws.request(".GetClock"), 60)


async def _task_group(ws: ResilientSocket) -> object:
    async with asyncio.TaskGroup() as group:
        task = group.create_task(ws.request(".GetClock"))
    return task.result()


async def _shielded(ws: ResilientSocket) -> object:
    return await asyncio.shield(asyncio.ensure_future(ws.request(".GetClock")))


async def _waited(ws: ResilientSocket) -> object:
    task = asyncio.create_task(ws.request(".GetClock"))
    await asyncio.wait({task})
    return task.result()


async def _nested(ws: ResilientSocket) -> object:
    # A helper task of the handler's, which itself gathers the request.
    return await asyncio.create_task(_gathered(ws))


async def _wait_open_gathered(ws: ResilientSocket) -> object:
    # Not open yet (a frame handled while on_connect runs): it could open only after the
    # handler returns.
    return await asyncio.gather(ws.wait_open(timeout=60))


@pytest.mark.parametrize(
    "waits",
    [_gathered, _awaited_task, _wait_for, _task_group, _shielded, _waited, _nested],
    ids=lambda waits: waits.__name__.strip("_"),
)
async def test_a_request_an_on_frame_handler_waits_for_in_another_task_fails_at_once(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    waits: Callable[[ResilientSocket], Awaitable[object]],
) -> None:
    outcomes: list[tuple[BaseException, float]] = []
    holder: list[ResilientSocket] = []

    async def on_frame(frame: Any) -> None:
        try:
            await waits(holder[0])
        except* Exception as group:  # a TaskGroup wraps it
            outcomes.append((group.exceptions[0], clock.now()))

    async with agent_engine(sim, clock, states) as engine:
        holder.append(ws := await brand_socket(engine, sim, on_frame=on_frame))
        await ws.wait_open()
        notified_at = clock.now()
        await sim.sockets.notify(NOTIFICATION, {"n": 1})
        while not outcomes and clock.now() < 60:
            await clock.sleep(0.1)
        # The socket goes on: nothing stalled it.
        answer = await ws.request(".GetClock")
    ((error, failed_at),) = outcomes
    assert isinstance(error, SocketDeadlock)
    assert failed_at == notified_at  # at once, not after the request's 30 s
    assert "on_frame" in str(error)
    # Nothing was sent for the refused request.
    getclocks = [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]
    assert len(getclocks) == 1
    assert answer["code"] == 200
    assert "lost" not in states.names()


async def test_wait_open_in_a_task_a_callback_waits_for_fails_at_once(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    errors: list[BaseException] = []

    async def waits_in_a_task(ws: ResilientSocket) -> None:
        try:
            await asyncio.gather(ws.wait_open(timeout=60))
        except SocketDeadlock as exc:
            errors.append(exc)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[waits_in_a_task])
        await ws.wait_open(timeout=120)
        assert clock.now() == 0
    assert len(errors) == 1
    assert "on_connect" in str(errors[0])


async def test_wait_open_in_a_task_an_on_frame_handler_waits_for_fails_at_once(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    errors: list[BaseException] = []
    holder: list[ResilientSocket] = []
    handled = asyncio.Event()

    async def on_frame(frame: Any) -> None:
        try:
            await _wait_open_gathered(holder[0])
        except SocketDeadlock as exc:
            errors.append(exc)
        finally:
            handled.set()

    async def notified_first(ws: ResilientSocket) -> None:
        # A frame arrives while on_connect still waits for an answer: its handler runs before
        # the socket is open.
        await sim.sockets.notify(NOTIFICATION, {"n": 1})
        await handled.wait()
        await ws.request(".GetClock")

    async with agent_engine(sim, clock, states) as engine:
        holder.append(
            ws := await brand_socket(engine, sim, on_frame=on_frame, on_connect=[notified_first])
        )
        await ws.wait_open(timeout=120)
        assert clock.now() == 0
    assert len(errors) == 1
    assert "on_frame" in str(errors[0])


async def test_a_task_an_on_frame_handler_starts_and_does_not_wait_for_may_request(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    holder: list[ResilientSocket] = []
    started: list[asyncio.Task[dict[str, Any]]] = []
    handler_done: list[float] = []

    async def request_later() -> dict[str, Any]:
        await clock.sleep(1)  # after the handler returned
        return await holder[0].request(".GetClock")

    async def on_frame(frame: Any) -> None:
        n = frame["body"]["n"]
        if n == 1:
            # Requests at once, while the handler still runs (it waits for something else
            # first): its answer is read once the handler returns.
            started.append(asyncio.create_task(holder[0].request(".GetClock")))
            await clock.sleep(0.5)
        else:
            started.append(asyncio.create_task(request_later()))
        handler_done.append(clock.now())

    async with agent_engine(sim, clock, states) as engine:
        holder.append(ws := await brand_socket(engine, sim, on_frame=on_frame))
        await ws.wait_open()
        await sim.sockets.notify(NOTIFICATION, {"n": 1})
        await sim.sockets.notify(NOTIFICATION, {"n": 2})
        while len(started) < 2:
            await clock.sleep(0.1)
        answers = await asyncio.gather(*started)
    assert [answer["code"] for answer in answers] == [200, 200]
    assert len(handler_done) == 2
    assert clock.now() < 5  # no request waited for its timeout


async def test_waits_for_follows_gathers_tasks_and_the_futures_a_task_completes() -> None:
    release = asyncio.Event()

    async def leaf() -> None:
        await release.wait()

    async def outer(waiting_on: Callable[[], Awaitable[object]]) -> None:
        await waiting_on()

    child = asyncio.create_task(leaf())
    other = asyncio.create_task(leaf())
    waiters = {
        "task": asyncio.create_task(outer(lambda: child)),
        "gather": asyncio.create_task(outer(lambda: asyncio.gather(other, child))),
        "shield": asyncio.create_task(outer(lambda: asyncio.shield(child))),
        "wait": asyncio.create_task(outer(lambda: asyncio.wait({child}))),
        "unrelated": asyncio.create_task(outer(lambda: other)),
        "event": asyncio.create_task(outer(release.wait)),
    }
    current = asyncio.current_task()
    assert current is not None
    assert waits_for(current, child) is None  # running: it cannot be told yet
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    found = {name: waits_for(task, child) for name, task in waiters.items()}
    release.set()
    await asyncio.gather(child, other, *waiters.values())
    assert found == {
        "task": True,
        "gather": True,
        "shield": True,
        "wait": True,
        "unrelated": False,
        "event": False,
    }


async def test_waits_for_takes_no_alarm_from_a_callback_that_only_holds_a_future() -> None:
    # A done callback of the caller's own holding the very future the waiter is suspended on
    # (in a closure, a partial or its object's fields) completes nothing: followed, it made a
    # request from an unrelated task fail with SocketDeadlock.
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Tracker:
        def __init__(self) -> None:
            self.pending = gate

        def done(self, _task: object) -> None:
            pass

    async def handler() -> None:
        await gate

    async def requester() -> None:
        await asyncio.sleep(0)

    waiter = asyncio.create_task(handler())
    await asyncio.sleep(0)
    found = {}
    callbacks: dict[str, Callable[[asyncio.Task[None]], object]] = {
        "closure": lambda _task: gate.done(),
        "partial": functools.partial(lambda _fut, _task: None, gate),
        "object": Tracker().done,
    }
    for name, callback in callbacks.items():
        task = asyncio.create_task(requester())
        task.add_done_callback(callback)
        found[name] = waits_for(waiter, task)
        await task
    gate.set_result(None)
    await waiter
    assert found == {"closure": False, "partial": False, "object": False}
