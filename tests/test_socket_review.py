"""What a review of the socket layer found, each kept fixed:

- a queued request whose caller gave up (a timeout, a cancellation) leaves the queue: it no
  longer counts against ``max_queued``, so an outage full of timed-out requests does not end
  with every send refused;
- a task that an ``on_connect`` callback started sends as any other task once the callbacks are
  done: queued while the connection is ending (never written to a connection already given up
  on, nor refused), while what the callbacks themselves wait for still goes straight out;
- writes waiting on a connection that drops are put back in the order they were sent, not the
  reverse, and ahead of what was sent after them, queued or not (every send is numbered as it
  is made); one that fails only once the next connection is open goes out on it, rather than
  wait in the queue of an open socket (and every send with it);
- ``engine.websocket`` refuses at the call, typed and without showing a value, what an HTTP
  call refuses (a path that is not one, ``params`` or ``headers`` that cannot be sent, a header
  the auth provider's credentials would replace) and what cannot configure a socket (an
  ``auth_placement`` that is not an ``AuthPlacement``, an ``escalate`` that cannot be called);
- a request (or ``wait_open``) that an ``on_frame`` handler or an ``on_connect`` callback
  waits for in another task is sent (or waits) as any other: answered once a handler that
  waits only a while has returned, else timed out (``SocketRequestTimeout``, ``TimeoutError``).
  Telling such waits apart from asyncio's records raised ``SocketDeadlock`` for requests that
  would have been answered, and sent requests out of order: only the callback's own task is
  told (tests/test_lifecycle_races.py). Sends go out in the order they were made.

Against the simulator's UMS socket on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from le_transport import (
    ConfigurationError,
    InvalidRequest,
    SocketQueueFull,
    SocketRequestTimeout,
    StaticBearer,
)
from le_transport.chaos import Delay, FaultInjector, FaultRule, Match, Schedule
from le_transport.clock import timeout_after
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.sockets import (
    AuthPlacement,
    ResilientSocket,
    SocketOptions,
    ums_brand_path,
)
from le_transport.sockets.dial import Connection
from le_transport.sockets.outbox import Outbox, Outgoing
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


def slow_writes(
    clock: VirtualClock, *, delay_ms: int, times: int, path: str = MARKER
) -> FaultInjector:
    """An injector holding the next ``times`` writes of ``path`` frames ``delay_ms`` each (a
    peer slow to take them), client-side, on the virtual clock."""
    slow = FaultRule(
        "slow",
        Delay(delay_ms=delay_ms),
        unit="ws_message",
        match=Match(path=path),
        schedule=Schedule(fail_next=times),
    )
    return FaultInjector.seeded(1, slow, clock=clock)


def slow_failing_writes(
    monkeypatch: pytest.MonkeyPatch,
    clock: VirtualClock,
    *,
    delay_s: float,
    times: int,
    path: str = MARKER,
) -> None:
    """The next ``times`` writes of ``path`` frames each wait ``delay_s`` (on the virtual
    clock) before anything of them is handed to aiohttp: a write slow to begin, which aiohttp
    refuses if the connection ended meanwhile ("Cannot write to closing transport": never
    written, so the socket layer sends it again). Made here, not with the fault plan: an
    injected ``Delay`` is latency on a frame already on the wire, lost in doubt with its
    connection and never sent again (le_transport/chaos/ws.py)."""
    left = [times]
    real = Connection.send_text

    async def send_text(self: Connection, text: str) -> None:
        if left[0] > 0 and json.loads(text).get("type") == path:
            left[0] -= 1
            await clock.sleep(delay_s)
        await real(self, text)

    monkeypatch.setattr(Connection, "send_text", send_text)


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
    # Numbered as the socket numbers its sends: five writes went straight out, then a message
    # was queued (the connection had dropped).
    box.put(Outgoing("queued-after", order=6))
    # The five writes fail with their connection, the later ones first.
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
    box.put_back(Outgoing("w9", order=9))
    box.put(Outgoing("queued-later", order=12))
    box.put_back(Outgoing("r8", "8", order=8))
    box.put_back(Outgoing("w7", order=7))
    assert box.withdraw("8")
    box.put_back(Outgoing("w10", order=10))
    box.put_back(Outgoing("w8", order=8))
    assert box.texts() == ["w7", "w8", "w9", "w10", "queued-later"]


def test_a_write_put_back_after_the_queue_was_taken_from_keeps_its_place() -> None:
    box = Outbox(10)
    # Writes 1 and 2 failed with their connection; 3, sent on it too, still waits.
    box.put_back(Outgoing("w2", order=2))
    box.put_back(Outgoing("w1", order=1))
    box.put(Outgoing("queued", order=4))
    # The next connection takes 1, and fails writing it (it goes back first) ...
    first = box.take()
    assert first is not None
    assert first.text == "w1"
    box.put_back(first)
    # ... then 3 fails, late: behind 2, which was sent before it, ahead of what came after.
    box.put_back(Outgoing("w3", order=3))
    assert box.texts() == ["w1", "w2", "w3", "queued"]
    # A write still waiting on a dropped connection (1) while a message is queued (2), which
    # the next connection takes and fails to write: when 1 fails at last, it goes back ahead
    # of 2, sent after it (not behind it, as the write put back last).
    while box.take() is not None:
        pass
    box.put(Outgoing("q2", order=2))
    taken = box.take()
    assert taken is not None
    box.put(Outgoing("q3", order=3))
    box.put_back(taken)
    box.put_back(Outgoing("w1", order=1))
    assert box.texts() == ["w1", "q2", "q3"]


async def test_writes_waiting_when_the_connection_drops_go_out_next_in_the_order_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each marker's write waits 0.3 s before it begins, on the first connection.
    slow_failing_writes(monkeypatch, clock, delay_s=0.3, times=5)
    async with agent_engine(sim, clock, states) as engine:
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


async def test_a_write_failing_late_goes_back_ahead_of_a_message_sent_after_it(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first marker's write waits 5 s before it begins, on the first connection: past its
    # end, while the socket is still down (the next upgrades are refused for longer than that).
    slow_failing_writes(monkeypatch, clock, delay_s=5, times=1)
    second = {"kind": "req", "id": "m-second", "type": ".second", "body": {}}
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None, escalate_after=0))
        await ws.wait_open()
        first = asyncio.create_task(ws.send(marker("first")))  # straight out, and waits
        for _ in range(3):
            await asyncio.sleep(0)
        assert not first.done()
        sim.faults.script("GET", UPGRADE, [503] * 4)  # down for about 1 + 2 + 4 + 8 s
        sim.sockets.open[0].drop()
        for _ in range(10):  # the drop is read: the socket is down
            if not ws.is_open:
                break
            await asyncio.sleep(0)
        assert not ws.is_open
        assert await ws.send(second) is False  # made after the first: queued
        # The first fails at last, while the socket is down: it goes back ahead of the second.
        assert await first is False
        assert ws.queued == 2
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
    sent = [f for f in sim.sockets.all[-1].received if f.get("type") in (MARKER, ".second")]
    assert [f["type"] for f in sent] == [MARKER, ".second"]


async def test_a_write_failing_after_the_next_connection_opened_goes_out_on_it(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first marker's write waits 5 s before it begins: past the reconnect (about a second).
    slow_failing_writes(monkeypatch, clock, delay_s=5, times=1)
    async with agent_engine(sim, clock, states) as engine:
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


# -- D5, reverted: a request an on_frame handler waits for in another task -------------------
#
# Telling from asyncio's private records whether the handler waits for the task a request runs
# in raised SocketDeadlock for requests that would have been answered (a handler that waits
# only a while), and made every request yield to the loop before it was sent (out of order).
# Only the handler's own task is told; what it waits for in another task is sent, and either
# answered once the handler returns or timed out.


async def _first_completed(ws: ResilientSocket, clock: VirtualClock) -> asyncio.Task[Any]:
    # "Give the answer half a second, else carry on" (the request is not cancelled).
    task = asyncio.create_task(ws.request(".GetClock"))
    tick = asyncio.create_task(clock.sleep(0.5))
    try:
        await asyncio.wait({task, tick}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
    return task


async def _shielded_under_a_timeout(ws: ResilientSocket, clock: VirtualClock) -> asyncio.Task[Any]:
    task = asyncio.create_task(ws.request(".GetClock"))
    with contextlib.suppress(TimeoutError):
        async with timeout_after(clock, 0.5):
            await asyncio.shield(task)
    return task


@pytest.mark.parametrize(
    "waits", [_first_completed, _shielded_under_a_timeout], ids=lambda waits: waits.__name__
)
async def test_a_request_an_on_frame_handler_waits_for_only_a_while_is_answered_once_it_returns(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    waits: Callable[[ResilientSocket, VirtualClock], Awaitable[asyncio.Task[Any]]],
) -> None:
    holder: list[ResilientSocket] = []
    started: list[asyncio.Task[Any]] = []
    returned: list[float] = []

    async def on_frame(frame: Any) -> None:
        started.append(await waits(holder[0], clock))
        returned.append(clock.now())

    async with agent_engine(sim, clock, states) as engine:
        holder.append(ws := await brand_socket(engine, sim, on_frame=on_frame))
        await ws.wait_open()
        notified_at = clock.now()
        await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
        while not started:
            await clock.sleep(0.1)
        answer = await started[0]
        answered_at = clock.now()
    # The handler gave up waiting after half a second; the answer was read once it returned.
    assert returned == [notified_at + 0.5]
    assert answer["code"] == 200
    assert answered_at - notified_at < 1
    getclocks = [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]
    assert len(getclocks) == 1
    assert "lost" not in states.names()


async def test_a_task_an_on_connect_callback_waits_for_only_a_while_may_wait_open(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # A publisher that waits for the socket to open, started by on_connect, which gives it
    # half a second and returns: the socket then opens, and the publisher goes on.
    outcomes: list[object] = []
    tasks: list[asyncio.Task[None]] = []

    async def publisher(ws: ResilientSocket) -> None:
        try:
            await ws.wait_open(timeout=60)
            outcomes.append(("open", clock.now()))
        except Exception as exc:
            outcomes.append(exc)

    async def on_connect(ws: ResilientSocket) -> None:
        if tasks:
            return
        task = asyncio.create_task(publisher(ws))
        tasks.append(task)
        tick = asyncio.create_task(clock.sleep(0.5))
        try:
            await asyncio.wait({task, tick}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[on_connect])
        await ws.wait_open(timeout=60)
        await asyncio.gather(*tasks)
        assert ws.connects == 1
    assert outcomes == [("open", 0.5)]


async def _gathered(ws: ResilientSocket) -> object:
    return await asyncio.gather(ws.request(".GetClock", timeout=2))


async def _awaited_task(ws: ResilientSocket) -> object:
    return await asyncio.create_task(ws.request(".GetClock", timeout=2))


async def _task_group(ws: ResilientSocket) -> object:
    async with asyncio.TaskGroup() as group:
        task = group.create_task(ws.request(".GetClock", timeout=2))
    return task.result()


@pytest.mark.parametrize(
    "waits", [_gathered, _awaited_task, _task_group], ids=lambda waits: waits.__name__.strip("_")
)
async def test_a_request_an_on_frame_handler_waits_for_in_another_task_times_out(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    waits: Callable[[ResilientSocket], Awaitable[object]],
) -> None:
    # What the docs say: not told apart, it is sent, and its answer, unread while the handler
    # waits, comes too late: SocketRequestTimeout after its timeout. The socket goes on.
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
        await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
        while not outcomes and clock.now() < 60:
            await clock.sleep(0.1)
        answer = await ws.request(".GetClock")
        assert ws.connects == 1
    ((error, failed_at),) = outcomes
    assert isinstance(error, SocketRequestTimeout)
    assert failed_at == notified_at + 2
    getclocks = [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]
    assert len(getclocks) == 2
    assert answer["code"] == 200
    assert "lost" not in states.names()


async def test_wait_open_in_a_task_an_on_connect_callback_waits_for_times_out(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    errors: list[tuple[BaseException, float]] = []

    async def waits_in_a_task(ws: ResilientSocket) -> None:
        try:
            await asyncio.gather(ws.wait_open(timeout=2))
        except TimeoutError as exc:
            errors.append((exc, clock.now()))

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[waits_in_a_task])
        await ws.wait_open(timeout=120)
        opened_at = clock.now()
        assert ws.connects == 1
    ((error, failed_at),) = errors
    assert isinstance(error, TimeoutError)
    assert failed_at == opened_at == 2


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
        await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
        await sim.sockets.notify(NOTIFICATION, {"n": 2}, to_all=True)
        while len(started) < 2:
            await clock.sleep(0.1)
        answers = await asyncio.gather(*started)
    assert [answer["code"] for answer in answers] == [200, 200]
    assert len(handler_done) == 2
    assert clock.now() < 5  # no request waited for its timeout


# -- Sends go out in the order they were made ------------------------------------------------


def _types_sent(frames: Iterable[dict[str, Any]]) -> list[object]:
    return [f.get("type") for f in frames if f.get("type") in (".GetClock", MARKER)]


async def test_a_request_made_before_a_send_goes_out_first_while_a_handler_yields(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # A handler working through a batch, yielding between items: a request made meanwhile
    # (by another task) goes out before a send made after it, and is answered once the
    # handler returns.
    busy = asyncio.Event()
    stop = asyncio.Event()

    async def on_frame(frame: Any) -> None:
        busy.set()
        for _ in range(1000):  # items of a batch, yielding in between
            if stop.is_set():
                return
            await asyncio.sleep(0)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=on_frame)
        await ws.wait_open()
        await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
        await busy.wait()
        first = asyncio.create_task(ws.request(".GetClock", timeout=5))
        second = asyncio.create_task(ws.send(marker(1)))
        assert await second is True
        for _ in range(10):
            await asyncio.sleep(0)
        stop.set()
        answer = await first
    assert answer["code"] == 200
    assert _types_sent(sim.sockets.all[0].received) == [".GetClock", MARKER]


async def test_a_request_a_handler_starts_before_a_send_goes_out_first_under_eager_tasks(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Under an eager task factory (Python 3.12+), the request's task runs inside create_task,
    # while the handler has not yet suspended: it is written there and then, before the
    # handler's send.
    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is None:
        pytest.skip("asyncio.eager_task_factory is Python 3.12+")
    asyncio.get_running_loop().set_task_factory(eager)
    holder: list[ResilientSocket] = []
    started: list[asyncio.Task[dict[str, Any]]] = []

    async def on_frame(frame: Any) -> None:
        if started:
            return
        ws = holder[0]
        started.append(asyncio.create_task(ws.request(".GetClock")))
        await ws.send(marker(1))

    async with agent_engine(sim, clock, states) as engine:
        holder.append(ws := await brand_socket(engine, sim, on_frame=on_frame))
        await ws.wait_open()
        await sim.sockets.notify(NOTIFICATION, {"n": 1}, to_all=True)
        while not started:
            await clock.sleep(0.1)
        answer = await started[0]
    assert answer["code"] == 200
    assert _types_sent(sim.sockets.all[0].received) == [".GetClock", MARKER]


# -- a third review: what the flush takes and cannot write --------------------------------------


@pytest.mark.parametrize("with_on_connect", [False, True])
async def test_a_queued_send_cut_while_the_flush_writes_it_is_never_lost_without_a_word(
    sim: Simulator, clock: VirtualClock, states: StateLog, with_on_connect: bool, caplog: Any
) -> None:
    # The flush runs in the setup task (with on_connect callbacks or without: a queue flushed
    # by the owner, which read nothing meanwhile, deadlocked with a peer answering what it
    # read), which the connection's end cancels: the message it had taken was lost without a
    # word, its send() having said "queued, goes out after the next connect". Put back, it
    # was sent twice when aiohttp had already handed the frame to the transport (its one
    # await is the drain after that), so it is logged as in doubt.
    injector = slow_writes(clock, delay_ms=300, times=1)

    async def on_connect(_ws: ResilientSocket) -> None:
        return None

    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        sim.faults.script("GET", UPGRADE, [503])  # down at first
        ws = await brand_socket(
            engine,
            sim,
            SocketOptions(keepalive=None, escalate_after=0),
            on_connect=[on_connect] if with_on_connect else [],
        )
        assert await ws.send(marker("queued")) is False
        await sim.sockets.wait_accepted(1)
        for _ in range(5):  # the flush takes it and waits on its write
            await asyncio.sleep(0)
        assert ws.queued == 0
        sim.sockets.open[-1].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
    got = [markers(s.received) for s in sim.sockets.all]
    doubt = [r for r in caplog.records if "may or may not have been delivered" in r.getMessage()]
    assert got == [[], []], "not sent again"
    assert len(doubt) == 1
    assert doubt[0].levelname == "WARNING"


async def test_a_request_given_up_while_the_flush_writes_it_is_never_sent_late(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    injector = slow_writes(clock, delay_ms=5000, times=1, path=".Late")
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        sim.faults.script("GET", UPGRADE, [503])
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None, escalate_after=0))
        late = asyncio.create_task(ws.request(".Late", timeout=4))
        await sim.sockets.wait_accepted(1)  # the flush takes it: its write waits 5 s
        for _ in range(5):
            await asyncio.sleep(0)
        assert ws.queued == 0
        with pytest.raises(SocketRequestTimeout):
            await late
        sim.sockets.open[-1].drop()  # the write then fails with its connection
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
    sent = [[f["type"] for f in s.received if f.get("type") == ".Late"] for s in sim.sockets.all]
    assert sent == [[], []]


def test_unnumbered_messages_keep_the_outboxs_old_order() -> None:
    # Outbox and Outgoing are public: order=None (the old default spelled out) raised a
    # TypeError in put_back, and a numbered write put back went behind unnumbered messages.
    box = Outbox(10)
    box.put(Outgoing("queued"))
    box.put_back(Outgoing("taken", order=None))
    assert box.texts() == ["taken", "queued"]
    box = Outbox(10)
    box.put(Outgoing("queued-later"))
    box.put_back(Outgoing("written-first", order=1))
    assert box.texts() == ["written-first", "queued-later"]
