"""Socket faults on a custom route's WebSocket: a route of one's own whose handler upgrades is
struck by the plan's ``ws_session`` and ``ws_message`` rules as the simulator's own sockets are,
and as the client-side injector strikes the same socket (the same plan, either side).

Before, such a route got none of them: every socket rule showed matched=0, and a chaos test
against it passed having injected nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from le_transport import Engine, SocketClosed, SocketRequestError, SocketRequestTimeout
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultRule,
    Hang,
    Match,
    Schedule,
    WsAppError,
    WsClose,
    WsDelay,
    WsDrop,
    WsDropMessage,
    WsRejectHandshake,
    WsSilence,
)
from le_transport.sockets import ResilientSocket
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import no_open_connections

__all__ = ["no_open_connections"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

PATH = "/ws/stream"
SERVICE = "myStream"
ECHO = "Echo"


class Stream:
    """A user's own LiveEngage-style socket endpoint: answers each request frame with 200,
    and keeps the request types it was handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.ended: list[WSMsgType] = []

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.seen.append(frame["type"])
            await ws.send_json(
                {
                    "kind": "resp",
                    "reqId": frame["id"],
                    "code": 200,
                    "type": frame["type"] + "$Response",
                    "body": {"n": len(self.seen)},
                }
            )
        return ws


@pytest.fixture
def stream() -> Stream:
    return Stream()


@pytest.fixture
async def sim(clock: VirtualClock, stream: Stream) -> AsyncIterator[Simulator]:
    s = Simulator(clock=clock)
    s.add_route("GET", PATH, stream, service=SERVICE)
    async with s:
        yield s


async def open_stream(engine: Engine) -> ResilientSocket:
    ws = await engine.websocket(SERVICE, PATH)
    await ws.wait_open(timeout=30)
    return ws


async def requests(
    sim: Simulator, clock: VirtualClock, rules: list[FaultRule], side: str, count: int = 4
) -> tuple[list[str], dict[str, int]]:
    """``count`` requests on the custom socket, one by one, ``rules`` applied by the simulator
    (``side`` "server") or by the client's injector: what each met ("ok", or the error's
    name), and how many faults each rule injected."""
    injector = FaultInjector.seeded(5, *rules, clock=clock)
    if side == "server":
        for rule in rules:
            sim.faults.add(rule)
        injector = FaultInjector(clock=clock)
    met: list[str] = []
    async with Engine(sim.domains, scheme="http", clock=clock, wire_middlewares=[injector]) as e:
        ws = await open_stream(e)
        for _ in range(count):
            try:
                answer = await ws.request(ECHO, timeout=2.0)
            except (SocketClosed, SocketRequestTimeout, SocketRequestError) as exc:
                met.append(type(exc).__name__)
                await ws.wait_open(timeout=30)
                continue
            assert answer["code"] == 200
            met.append("ok")
    counts = sim.faults if side == "server" else injector
    return met, counts.injected_counts()


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("fault", "met"),
    [
        # The after_messages-th frame meets the fault (never answered); the ones before it are.
        (WsDrop(after_messages=2), ["ok", "SocketClosed", "ok", "ok"]),
        (WsClose(1011, after_messages=1), ["SocketClosed", "ok", "ok", "ok"]),
        (WsSilence(after_messages=2), ["ok", "SocketRequestTimeout", "SocketRequestTimeout"]),
    ],
    ids=["drop", "close", "silence"],
)
async def test_a_session_fault_strikes_a_custom_socket_as_the_injector_strikes_it(
    sim: Simulator,
    clock: VirtualClock,
    fault: WsDrop | WsClose | WsSilence,
    met: list[str],
    side: str,
) -> None:
    rule = FaultRule(
        "session", fault, unit="ws_session", match=Match(path=PATH), schedule=Schedule(fail_next=1)
    )
    got, injected = await requests(sim, clock, [rule], side, len(met))
    assert got == met
    assert injected == {"session": 1}


@pytest.mark.parametrize(
    "fault",
    [WsDrop(after_messages=2), WsClose(4401, after_messages=2), WsSilence(after_messages=2)],
)
async def test_a_session_fault_matched_by_the_routes_service_keeps_the_frame_from_the_handler(
    sim: Simulator, clock: VirtualClock, stream: Stream, fault: WsDrop | WsClose | WsSilence
) -> None:
    # The reviewer's case: a rule matching the custom route by its service. The frame that met
    # a close or a drop never reaches the handler (the server went before it was processed);
    # a silenced socket neither hands it over nor sends anything back (a half-open socket, as
    # the simulator's own sockets and the client-side injector have it).
    rule = FaultRule(
        "session",
        fault,
        unit="ws_session",
        match=Match(service=SERVICE),
        schedule=Schedule(fail_next=1),
    )
    silent = isinstance(fault, WsSilence)
    got, injected = await requests(sim, clock, [rule], "server", 2 if silent else 3)
    if silent:
        assert got == ["ok", "SocketRequestTimeout"]
        assert stream.seen == [ECHO]
    else:
        assert got == ["ok", "SocketClosed", "ok"]
        assert stream.seen == [ECHO, ECHO]  # the first, and the one after the reconnect
    assert injected == {"session": 1}


async def test_a_refused_upgrade_never_reaches_the_handler_and_a_delayed_one_opens_late(
    sim: Simulator, clock: VirtualClock, stream: Stream
) -> None:
    sim.faults.add(
        FaultRule(
            "session",
            sequence=[WsRejectHandshake(503), Delay(4000)],
            unit="ws_session",
            match=Match(service=SERVICE),
        )
    )
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        ws = await open_stream(engine)
        opened_at = clock.now()
        answer = await ws.request(ECHO, timeout=2.0)
    assert answer["body"] == {"n": 1}
    assert sim.sockets.rejected == [503]
    assert opened_at >= 4.0
    assert sim.faults.injected_counts() == {"session": 2}
    assert stream.seen == [ECHO]


@pytest.mark.parametrize("side", ["server", "client"])
async def test_an_app_error_answers_a_custom_request_and_the_handler_never_sees_it(
    sim: Simulator, clock: VirtualClock, stream: Stream, side: str
) -> None:
    rule = FaultRule(
        "app-error",
        WsAppError(500),
        unit="ws_message",
        match=Match(path=ECHO),
        schedule=Schedule(skip_first=1, fail_next=1),
    )
    got, injected = await requests(sim, clock, [rule], side, count=3)
    assert got == ["ok", "SocketRequestError", "ok"]
    assert injected == {"app-error": 1}
    assert stream.seen == [ECHO, ECHO]


async def test_a_hung_request_is_lost_and_a_lost_or_held_answer_is_the_handlers_own(
    sim: Simulator, clock: VirtualClock, stream: Stream
) -> None:
    sim.faults.add(
        FaultRule(
            "hang",
            Hang(),
            unit="ws_message",
            match=Match(path=ECHO),
            schedule=Schedule(fail_next=1),
        )
    )
    sim.faults.add(
        FaultRule(
            "lost",
            WsDropMessage(),
            unit="ws_message",
            match=Match(path=f"{ECHO}$Response"),
            schedule=Schedule(fail_next=1),
        )
    )
    sim.faults.add(
        FaultRule(
            "held",
            WsDelay(1500),
            unit="ws_message",
            match=Match(path=f"{ECHO}$Response"),
            schedule=Schedule(skip_first=1, fail_next=1),
        )
    )
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        ws = await open_stream(engine)
        with pytest.raises(SocketRequestTimeout):
            await ws.request(ECHO, timeout=2.0)  # hung: the handler never sees it
        with pytest.raises(SocketRequestTimeout):
            await ws.request(ECHO, timeout=2.0)  # answered, the answer lost
        sent_at = clock.now()
        held = await ws.request(ECHO, timeout=5.0)
        waited = clock.now() - sent_at
    assert held["body"] == {"n": 2}
    assert waited == pytest.approx(1.5)
    assert stream.seen == [ECHO, ECHO]
    assert sim.faults.injected_counts() == {"hang": 1, "lost": 1, "held": 1}


async def test_a_custom_socket_without_socket_rules_is_served_untouched(
    sim: Simulator, clock: VirtualClock, stream: Stream
) -> None:
    sim.faults.add(FaultRule("other", WsDrop(), unit="ws_session", match=Match(service="other")))
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        ws = await open_stream(engine)
        answers = [await ws.request(ECHO, timeout=2.0) for _ in range(3)]
    assert [a["body"]["n"] for a in answers] == [1, 2, 3]
    assert sim.faults.rule_counts()["other"].matched == 0


# -- what the handler's own code meets -----------------------------------------------------------


async def _custom_sim(
    clock: VirtualClock, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Simulator:
    s = Simulator(clock=clock)
    s.add_route("GET", "/raw", handler, service="raw")
    return s


async def test_a_handler_reading_a_socket_a_fault_closed_ends_as_aiohttp_makes_it_end(
    clock: VirtualClock,
) -> None:
    """A loop on receive() that stops only on an error: after a WsClose the wrapper answered
    CLOSED every time without a wait, and the handler held the event loop for ever. aiohttp
    raises after a few reads of a closed socket; so does the wrapper now."""
    ended: list[str] = []
    returned = asyncio.Event()

    async def looping(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.ERROR:
                    break
        except RuntimeError as exc:
            ended.append(str(exc))
        finally:
            returned.set()
        return ws

    sim = await _custom_sim(clock, looping)
    sim.faults.add(FaultRule("close", WsClose(4000, after_messages=1), unit="ws_session"))
    async with sim, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.ws_scheme}://{sim.host}/raw") as ws:
            await ws.send_str("hello")
            msg = await asyncio.wait_for(ws.receive(), 10)  # real seconds: only against a hang
            assert msg.type is WSMsgType.CLOSE
            assert msg.data == 4000
        # Real seconds, as above: a handler holding the loop for ever never gets here.
        await asyncio.wait_for(returned.wait(), 10)
    assert ended == ["WebSocket connection is closed."]


async def test_a_held_frame_is_sent_before_the_handler_closes_and_nothing_overtakes_it(
    clock: VirtualClock,
) -> None:
    """A WsDelay'd frame was dropped when the handler returned (or closed) before it was due,
    though the fault was counted; a binary frame sent after it overtook it."""

    async def pushes(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('{"type": "First"}')
        await ws.send_bytes(b"second")
        await ws.send_frame(b'{"type": "Third"}', WSMsgType.TEXT)
        await ws.close()
        return ws

    sim = await _custom_sim(clock, pushes)
    sim.faults.add(
        FaultRule("held", WsDelay(delay_ms=300), unit="ws_message", match=Match(path="First"))
    )
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/raw") as ws,
    ):
        got = [msg.data async for msg in ws]
    assert got == ['{"type": "First"}', b"second", '{"type": "Third"}']
    assert sim.faults.rule_counts()["held"].injected == 1


async def test_a_silenced_handler_sends_nothing_through_any_of_its_send_calls(
    clock: VirtualClock,
) -> None:
    """send_frame() and ping() went past the silence (only send_str, send_bytes and pong were
    wrapped)."""
    sent = asyncio.Event()

    async def chatty(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        # Silent from its first send (after_messages=0): "go" would never reach it.
        await ws.send_str('{"type": "Str"}')
        await ws.send_bytes(b"bytes")
        await ws.send_frame(b"frame", WSMsgType.TEXT)
        await ws.ping(b"ping")
        sent.set()
        await ws.receive()
        return ws

    sim = await _custom_sim(clock, chatty)
    sim.faults.add(FaultRule("mute", WsSilence(), unit="ws_session"))
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/raw", autoping=False) as ws,
    ):
        await ws.send_str("go")
        await asyncio.wait_for(sent.wait(), 10)  # real seconds: only against a hang
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.2)


async def test_a_client_closing_while_a_frame_is_held_is_answered_at_once() -> None:
    """aiohttp answers the client's close by calling close(), which waited for the held frame
    (30 s here), so the client's own close timed out after 10 s with 1006. On the real clock:
    a virtual one would jump the wait away."""
    answered = asyncio.Event()

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
            answered.set()
        return ws

    sim = Simulator()  # the real clock
    sim.add_route("GET", "/raw", echo, service="raw")
    sim.faults.add(FaultRule("held", WsDelay(delay_ms=30_000), unit="ws_message"))
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/raw") as ws,
    ):
        await ws.send_str('{"type": "Ping"}')
        await asyncio.wait_for(answered.wait(), 10)  # real seconds: only against a hang
        # Bounded below aiohttp's own 10 s close timeout, which the old wait ran into.
        assert await asyncio.wait_for(ws.close(), 5)
        assert ws.close_code == 1000


@pytest.mark.parametrize("call", ["send_frame", "ping"])
async def test_every_send_call_of_the_handler_strikes_the_sessions_fault(
    clock: VirtualClock, call: str
) -> None:
    """With after_messages=0 the session's fault strikes as the handler first sends: it did
    for send_str and send_bytes, not for send_frame or ping, whose frames went out while the
    fault was counted as injected."""

    async def sender(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for n in range(3):
            if call == "ping":
                await ws.ping(b"ping")
            else:
                await ws.send_frame(f"frame{n}".encode(), WSMsgType.BINARY)
        return ws

    sim = await _custom_sim(clock, sender)
    sim.faults.add(FaultRule("close", WsClose(4000), unit="ws_session"))
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/raw", autoping=False) as ws,
    ):
        got = [(msg.type, msg.data) async for msg in ws]
    assert got == []
    assert ws.close_code == 4000


async def test_a_frame_with_nan_is_not_a_request_the_plan_answers(
    sim: Simulator, stream: Stream
) -> None:
    # json.loads takes NaN: the plan answered such a frame "reqId": NaN, which no client's
    # parser reads. Read strictly, as the simulator's own sockets read, it is not a request:
    # the handler gets it, the rule injects nothing.
    sim.faults.add(FaultRule("app-error", WsAppError(500), unit="ws_message"))
    url = f"http://{sim.host}{PATH}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str('{"kind": "req", "id": NaN, "type": "Echo", "body": {}}')
        answer = await ws.receive(timeout=5)
    assert answer.type is WSMsgType.TEXT
    assert "NaN" in answer.data  # the handler's own answer (it reads with json.loads)
    assert sim.faults.injected_counts() == {}
    assert stream.seen == [ECHO]
