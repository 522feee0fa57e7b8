"""Review round 14: one fault plan means the same whichever side applies it (the simulator, or
the client-side :class:`~le_transport.chaos.FaultInjector` and its
:class:`~le_transport.chaos.ws.FaultySocket`), and the plan refuses what no side can inject.

- ``WsDelay`` is latency on either side: frames sent together arrive together, each at
  ``max(sent + delay, the frame before it)``; before, the client-side wrapper read one frame at
  a time and held each from the moment it read it, so five frames with 1 s of latency arrived at
  1, 2, 3, 4 and 5 s. A close behind held frames comes after them on either side (before, the
  simulator dropped them), and a made-up answer waits behind them too.
- A ``Delay`` on a request the client sends holds the requests sent after it on either side
  (one stream, as the simulator's receive loop); before, a later request overtook it on the
  client side.
- The consumer socket echoes a publish as ``ms.MessagingEventNotification``.
- ``Status(204)``/``Status(304)`` and a HEAD's made-up answer carry no body on either side;
  ``MalformedBody`` refuses 204 and 304, ``TruncatedBody.keep_bytes`` values past its cap.
- ``X-LE-Fault`` naming no rule is logged.
- ``Reset`` is a reset on either side: ``ClientOSError`` (ECONNRESET), and a POST is still not
  sent again.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from le_transport import Engine
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultPlan,
    FaultRule,
    MalformedBody,
    Match,
    Reset,
    Schedule,
    Status,
    TruncatedBody,
    WsAppError,
    WsClose,
    WsDelay,
    WsDropMessage,
    WsSilence,
)
from le_transport.chaos.plan import MAX_KEEP_BYTES, fault_from_dict
from le_transport.chaos.ws import FaultySocket
from le_transport.clock import timeout_after
from le_transport.errors import (
    ConfigurationError,
    ConnectionFailed,
    SocketRequestError,
    SocketRequestTimeout,
)
from le_transport.sockets import ums_brand_path
from le_transport.sockets.dial import UMS_BRAND_SOCKET_QUERY, Connection, EngineDialer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_USER,
    Simulator,
    SimulatorConfig,
)
from le_transport.testing.simulator.sockets import TYPES_BY_KIND
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

SIDES = ("simulator", "injector")
NOTIFICATION = ".ams.routing.RoutingTaskNotification"
SUBSCRIBE = ".ams.aam.SubscribeExConversations"
GETCLOCK = ".GetClock"
CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"
THINGS = f"/api/account/{DEFAULT_ACCOUNT}/things"


def _injector(side: str, sim: Simulator, clock: VirtualClock, *rules: FaultRule) -> FaultInjector:
    """The rules given to the side under test: the injector (empty on the simulator's side)."""
    if side == "simulator":
        for rule in rules:
            sim.faults.add(rule)
        return FaultInjector(clock=clock)
    return FaultInjector.seeded(0, *rules, clock=clock)


async def _dial(engine: Engine, sim: Simulator) -> Connection:
    """A connection of the brand socket with no owner: the test reads it by hand (through the
    fault wrapper when the engine's injector has socket rules)."""
    dialer = EngineDialer(
        engine,
        "facadeMsg",
        ums_brand_path(sim.account.id),
        params=UMS_BRAND_SOCKET_QUERY,
        auth=engine.auth,
    )
    conn = await dialer.dial()
    await sim.sockets.wait_open(1)
    return conn


def _chaos_tasks() -> list[asyncio.Task[Any]]:
    """The fault wrapper's tasks still running (reads, held frames, strikes)."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("le_transport.chaos") and not t.done()
    ]


def _request(req_id: str, type_: str) -> str:
    return json.dumps({"kind": "req", "id": req_id, "type": type_, "body": {}})


# -- 1. ws_delay is latency, on either side -----------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
async def test_ws_delay_is_latency_frames_sent_together_arrive_together(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rule = FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = _injector(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.wait_open(1)
        t0 = clock.now()
        for n in range(5):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        seen: list[tuple[int, float]] = []
        async for frame in ws:
            seen.append((frame["body"]["n"], round(clock.now() - t0, 3)))
            if len(seen) == 5:
                break
    # Before, on the injector's side: (0, 1.0), (1, 2.0), ... (4, 5.0).
    assert seen == [(n, 1.0) for n in range(5)]


@pytest.mark.parametrize("side", SIDES)
async def test_a_frame_with_a_shorter_delay_waits_behind_the_one_before_it_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    # Each frame is due at max(sent + its delay, the frame before it): nothing overtakes a held
    # frame, and none waits a turn of its own behind it.
    rule = FaultRule(
        "late",
        sequence=[WsDelay(2000), WsDelay(500), None, None],
        unit="ws_message",
        match=Match(path=NOTIFICATION),
    )
    injector = _injector(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.wait_open(1)
        t0 = clock.now()
        for n in range(3):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        seen: list[tuple[int, float]] = []
        async for frame in ws:
            seen.append((frame["body"]["n"], round(clock.now() - t0, 3)))
            if len(seen) == 3:
                # Sent once the line is empty: no delay of its own, none behind anything.
                await clock.sleep(t0 + 3.0 - clock.now())
                await sim.sockets.notify(NOTIFICATION, {"n": 3}, to_all=True)
            if len(seen) == 4:
                break
    # Before, on the injector's side: 2.0, 2.5, 2.5, 3.0.
    assert seen == [(0, 2.0), (1, 2.0), (2, 2.0), (3, 3.0)]


@pytest.mark.parametrize("side", SIDES)
async def test_a_server_close_comes_after_the_frames_still_held_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rule = FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = _injector(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        assert isinstance(conn.ws, FaultySocket) == (side == "injector")
        try:
            t0 = clock.now()
            for n in range(3):
                await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
            # The server closes after sending them: its close frame follows them.
            closing = asyncio.get_running_loop().create_task(sim.sockets.open[0].close(4001))
            got: list[tuple[WSMsgType, object, float]] = []
            while True:
                msg = await conn.ws.receive()
                at = round(clock.now() - t0, 3)
                if msg.type is WSMsgType.TEXT:
                    got.append((msg.type, json.loads(msg.data)["body"]["n"], at))
                    continue
                got.append((msg.type, msg.data, at))
                break
            await closing
        finally:
            await conn.close(clock, 5.0)
    # Before: the simulator lost the held frames ([(CLOSE, 4001, 0.0)]); the injector handed
    # them over 1 s apart, the close after the last (at 3.0).
    assert got == [
        (WSMsgType.TEXT, 0, 1.0),
        (WSMsgType.TEXT, 1, 1.0),
        (WSMsgType.TEXT, 2, 1.0),
        (WSMsgType.CLOSE, 4001, 1.0),
    ]
    assert sim.sockets.all[0].ended == ("close", 4001)


@pytest.mark.parametrize("side", SIDES)
async def test_a_fault_ending_the_socket_loses_the_frames_still_held_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    # A fault's close is not the server's own: what is held is lost with it, on both sides.
    rules = (
        FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION)),
        FaultRule("close", WsClose(4000), unit="ws_message", match=Match(path=GETCLOCK)),
    )
    injector = _injector(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        try:
            t0 = clock.now()
            for n in range(3):
                await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
            await conn.ws.send_str(_request("c1", GETCLOCK))
            msg = await conn.ws.receive()
            got = (msg.type, msg.data, round(clock.now() - t0, 3))
        finally:
            await conn.close(clock, 5.0)
    assert got == (WSMsgType.CLOSE, 4000, 0.0)


@pytest.mark.parametrize("side", SIDES)
async def test_a_silence_loses_the_frames_still_held_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rules = (
        FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION)),
        FaultRule("hush", WsSilence(), unit="ws_message", match=Match(path=GETCLOCK)),
    )
    injector = _injector(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        try:
            for n in range(3):
                await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
            await clock.sleep(0.1)  # held by now, on either side
            await conn.ws.send_str(_request("s1", GETCLOCK))
            with pytest.raises(TimeoutError):
                async with timeout_after(clock, 5.0):
                    await conn.ws.receive()
        finally:
            await conn.close(clock, 5.0)


@pytest.mark.parametrize("side", SIDES)
async def test_a_made_up_answer_waits_behind_the_frames_held_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rules = (
        FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION)),
        FaultRule("busy", WsAppError(429), unit="ws_message", match=Match(path=SUBSCRIBE)),
    )
    injector = _injector(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.wait_open(1)
        t0 = clock.now()
        await sim.sockets.notify(NOTIFICATION, {"n": 0}, to_all=True)
        # The notification reaches the client (loopback; the virtual clock waits for it), and
        # is held there, or at the server.
        await clock.sleep(0.1)
        with pytest.raises(SocketRequestError) as refused:
            await ws.request(SUBSCRIBE, {}, timeout=30)
        answered = round(clock.now() - t0, 3)
        frame = await anext(aiter(ws))
    assert refused.value.code == 429
    # Before, on the injector's side: at once (0.0), ahead of the held notification.
    assert answered == 1.0
    assert frame["body"] == {"n": 0}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("outbound", ["delay", "drop"])
async def test_a_made_up_answer_meets_the_outbound_rules_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str, outbound: str
) -> None:
    """The simulator sends a ws_app_error's answer as any frame, through the outbound rules;
    the injector handed its made-up answer over at once: a rule delaying or dropping the
    answers to a type did nothing to a refused request on the client side."""
    answers = Match(path=f"{SUBSCRIBE}$Response")
    later = WsDelay(2000) if outbound == "delay" else WsDropMessage()
    rules = (
        FaultRule("busy", WsAppError(429), unit="ws_message", match=Match(path=SUBSCRIBE)),
        FaultRule("answers", later, unit="ws_message", match=answers),
    )
    injector = _injector(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.wait_open(1)
        t0 = clock.now()
        if outbound == "drop":
            with pytest.raises(SocketRequestTimeout):
                await ws.request(SUBSCRIBE, {}, timeout=5)
            return
        with pytest.raises(SocketRequestError) as refused:
            await ws.request(SUBSCRIBE, {}, timeout=30)
        answered = round(clock.now() - t0, 3)
    assert refused.value.code == 429
    assert answered == 2.0  # before, on the injector's side: at once


async def test_the_frames_behind_a_held_one_are_read_up_to_the_bound_and_stamped_when_read(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past MAX_READ_AHEAD the wrapper reads nothing more: what follows waits in aiohttp's
    # buffer, and its delay counts from when it is read. Every frame comes exactly once, in
    # order.
    monkeypatch.setattr(FaultySocket, "MAX_READ_AHEAD", 4)
    rule = FaultRule("late", WsDelay(1000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        wrapper = conn.ws
        assert isinstance(wrapper, FaultySocket)
        try:
            t0 = clock.now()
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            for n in range(10):
                await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
            seen: list[tuple[int, float]] = []
            most = 0
            msg = await waiting
            while True:
                most = max(most, wrapper.read_ahead)
                seen.append((json.loads(msg.data)["body"]["n"], round(clock.now() - t0, 3)))
                if len(seen) == 10:
                    break
                msg = await wrapper.receive()
        finally:
            await conn.close(clock, 5.0)
    assert most <= 4
    assert seen == [(n, 1.0 + n // 4) for n in range(10)]


async def test_close_while_frames_are_held_ends_every_task_of_the_wrapper(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule("late", WsDelay(600_000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        wrapper = conn.ws
        assert isinstance(wrapper, FaultySocket)
        waiting = asyncio.get_running_loop().create_task(wrapper.receive())
        for n in range(3):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        for _ in range(100):
            if wrapper.read_ahead == 3:
                break
            await clock.sleep(0.01)
        assert wrapper.read_ahead == 3
        # Reading on behind the held frames, and their hand-over waiting for its time.
        names = {t.get_name().split(" ")[1] for t in _chaos_tasks()}
        assert {"reader", "held"} <= names
        asked = clock.now()
        await conn.close(clock, 5.0)
        assert clock.now() - asked < 5.0
        assert (await waiting).type is WSMsgType.CLOSING
        assert (await wrapper.receive()).type is WSMsgType.CLOSED
        assert _chaos_tasks() == []
        assert wrapper.read_ahead == 0


# -- 2. a delayed request holds the requests sent after it, on either side ----------------------


@pytest.mark.parametrize("side", SIDES)
async def test_a_delayed_request_holds_the_requests_sent_after_it_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rule = FaultRule(
        "slow",
        Delay(5000),
        unit="ws_message",
        match=Match(path=GETCLOCK),
        schedule=Schedule(fail_next=1),
    )
    injector = _injector(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        t0 = clock.now()
        done: dict[str, float] = {}

        async def ask(type_: str) -> None:
            await ws.request(type_, {}, timeout=30)
            done[type_] = round(clock.now() - t0, 3)

        first = asyncio.get_running_loop().create_task(ask(GETCLOCK))
        await asyncio.sleep(0)
        await ask(SUBSCRIBE)
        await first
    # Before, on the injector's side, the subscription overtook the delayed request (0.0).
    assert done == {GETCLOCK: 5.0, SUBSCRIBE: 5.0}
    received = [f.get("type") for f in sim.sockets.all[0].received if f.get("kind") == "req"]
    assert received[-2:] == [GETCLOCK, SUBSCRIBE]


async def test_a_send_waiting_behind_a_delayed_one_on_a_closed_connection_is_not_decided(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule("slow", Delay(5000), unit="ws_message", match=Match(path=GETCLOCK))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        wrapper = conn.ws
        assert isinstance(wrapper, FaultySocket)
        loop = asyncio.get_running_loop()
        first = loop.create_task(wrapper.send_str(_request("g1", GETCLOCK)))
        await asyncio.sleep(0)
        second = loop.create_task(wrapper.send_str(_request("g2", GETCLOCK)))
        await clock.sleep(1)
        # The second waits its turn: not yet counted, not yet put to the plan.
        assert not second.done()
        assert injector.rule_counts()["slow"].matched == 1
        await conn.close(clock, 5.0)
        for send in (first, second):
            with pytest.raises(aiohttp.ClientConnectionResetError):
                await send
    # The second reached no server: it was never decided (before: decided at once, matched 2).
    assert injector.rule_counts()["slow"].matched == 1
    assert [f.get("id") for f in sim.sockets.all[0].received] == []


# -- 3. the consumer socket's echo ----------------------------------------------------------------


async def test_the_consumer_socket_echoes_a_publish_as_the_messaging_window_apis_notification(
    clock: VirtualClock,
) -> None:
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        async with http.post(sim.url + f"/api/account/{sim.account.id}/signup") as resp:
            jwt = (await resp.json())["jwt"]
        headers = {"Authorization": f"jwt {jwt}"}
        async with http.ws_connect(sim.consumer_socket_url(), headers=headers) as ws:
            body = {"dialogId": "d1", "event": {"type": "ContentEvent", "message": "hi"}}
            await ws.send_str(
                json.dumps({"kind": "req", "id": "1", "type": "ms.PublishEvent", "body": body})
            )
            assert json.loads(await ws.receive_str())["code"] == 200
            echo = json.loads(await ws.receive_str())
    # Before: ".ams.ms.MessagingEventNotification", the agent (UMS brand) socket's type.
    assert echo["type"] == "ms.MessagingEventNotification"
    assert echo["body"]["changes"][0]["event"]["message"] == "hi"
    assert TYPES_BY_KIND["brand"].messaging_event == ".ams.ms.MessagingEventNotification"
    assert TYPES_BY_KIND["consumer"].messaging_event == "ms.MessagingEventNotification"


# -- 4. answers without a body ------------------------------------------------------------------


async def _answer(
    sim: Simulator, injector: FaultInjector | None, method: str
) -> tuple[int, str | None, bytes]:
    middlewares = () if injector is None else (injector,)
    async with (
        aiohttp.ClientSession(middlewares=middlewares) as http,
        http.request(method, sim.url + CSDS) as resp,
    ):
        return resp.status, resp.headers.get("Content-Length"), await resp.read()


@pytest.mark.parametrize(
    ("method", "fault"),
    [
        ("GET", Status(204)),
        ("GET", Status(304)),
        ("HEAD", Status(204)),
        ("HEAD", Status(503)),
        ("HEAD", Status(429, retry_after=3)),
        # An empty body: announced by nothing (aiohttp's server sends no Content-Length).
        ("HEAD", Status(503, body="")),
    ],
    ids=["get-204", "get-304", "head-204", "head-503", "head-429", "head-503-empty"],
)
async def test_an_answer_that_cannot_carry_a_body_has_none_on_either_side(
    clock: VirtualClock, method: str, fault: Status
) -> None:
    async with Simulator(clock=clock) as sim:
        sim.faults.add(FaultRule("sim", fault, schedule=Schedule(fail_next=1)))
        served = await _answer(sim, None, method)
        injector = FaultInjector.seeded(
            0, FaultRule("inj", fault, schedule=Schedule(fail_next=1)), clock=clock
        )
        injected = await _answer(sim, injector, method)
    # Before, the injector attached its body (and a Content-Length) to each of these.
    assert injected == served
    assert served[2] == b""
    if method == "HEAD" and fault.code not in (204, 304) and fault.response_body():
        # A HEAD's answer announces the body a GET would get.
        assert served[1] == str(len(fault.response_body()))
    else:
        assert served[1] is None


@pytest.mark.parametrize("code", [204, 304])
def test_a_malformed_body_refuses_a_status_without_a_body(code: int) -> None:
    # Before: accepted, counted injected, and nothing malformed reached the client.
    with pytest.raises(ConfigurationError, match=r"MalformedBody\.code .*carries a body"):
        MalformedBody(code=code)
    data = {"kind": "malformed_body", "code": code}
    with pytest.raises(ConfigurationError, match=r"MalformedBody\.code"):
        fault_from_dict(data)
    with pytest.raises(ConfigurationError, match=r"MalformedBody\.code"):
        FaultPlan.from_dict({"seed": 1, "rules": [{"id": "m", "fault": data}]})
    assert MalformedBody(code=code + 1).code == code + 1


def test_a_truncated_body_keeps_at_most_max_keep_bytes() -> None:
    # Before: 2**64 was accepted, then the simulator announced a length the client refused
    # while the injector cut the body as usual.
    for keep in (MAX_KEEP_BYTES + 1, 2**64, 10**400):
        with pytest.raises(ConfigurationError, match=r"TruncatedBody\.keep_bytes"):
            TruncatedBody(keep_bytes=keep)
        with pytest.raises(ConfigurationError, match=r"TruncatedBody\.keep_bytes"):
            fault_from_dict({"kind": "truncated_body", "keep_bytes": keep})
    assert TruncatedBody(keep_bytes=MAX_KEEP_BYTES).keep_bytes == MAX_KEEP_BYTES
    assert TruncatedBody().keep_bytes == 0


# -- 5. the report's times ----------------------------------------------------------------------


def test_the_same_plan_reports_the_same_faults_and_the_clocks_own_times() -> None:
    rule = FaultRule(
        "s", Status(503), unit="ws_message", match=Match(path=".x"), schedule=Schedule(1, 2)
    )
    reports = []
    for start in (0.0, 0.0, 100.0):
        injector = FaultInjector.seeded(3, rule, clock=VirtualClock(start=start))
        for _ in range(4):
            injector.message_sent(".x")
        reports.append(injector.report())
    without_times = [[{k: v for k, v in d.items() if k != "at"} for d in r] for r in reports]
    assert without_times[0] == without_times[1] == without_times[2]
    assert reports[0] == reports[1]
    assert reports[0] != reports[2]
    doc = FaultInjector.report.__doc__ or ""
    # Before, it promised the same report from two runs with the same seed.
    assert "give the same report" not in doc
    assert "virtual clocks started at the same time" in doc


# -- 6. X-LE-Fault naming no rule ---------------------------------------------------------------


async def test_a_fault_header_naming_no_rule_is_logged_and_forces_nothing(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport.simulator")
    rule = FaultRule("teapot", Status(418), match=Match(path="/nowhere"))
    long_value = "no-such-rule-" + "x" * 100
    config = SimulatorConfig(fault_header=True)
    async with Simulator(config, clock=clock) as sim, aiohttp.ClientSession() as http:
        sim.faults.add(rule)
        async with http.get(sim.url + CSDS, headers={"X-LE-Fault": "teapot"}) as resp:
            assert resp.status == 418
        assert caplog.records == []
        for value in ("no-such-rule", long_value):
            async with http.get(sim.url + CSDS, headers={"X-LE-Fault": value}) as resp:
                assert resp.status == 200
        assert [d.outcome for d in sim.faults.log] == ["forced"]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Before: nothing was logged.
    assert len(messages) == 2
    assert "X-LE-Fault header names no rule" in messages[0]
    assert "'no-such-rule'" in messages[0]
    assert repr(long_value[:64]) + "..." in messages[1]
    assert "x" * 60 not in messages[1].replace(long_value[:64], "")


# -- 7. a reset is a reset ----------------------------------------------------------------------


async def _thing(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def things_sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    s = Simulator(clock=clock)
    s.add_route("GET", "/api/account/{account}/things", _thing, service="things")
    s.add_route("POST", "/api/account/{account}/things", _thing, service="things")
    async with s:
        yield s


@pytest.mark.parametrize("side", SIDES)
async def test_a_reset_fails_as_a_reset_by_the_peer_on_either_side(
    things_sim: Simulator, clock: VirtualClock, side: str
) -> None:
    injector = _injector(side, things_sim, clock, FaultRule("rst", Reset(), match=Match("GET")))
    async with aiohttp.ClientSession(middlewares=(injector,)) as http:
        with pytest.raises(aiohttp.ClientOSError) as reset:
            async with http.get(things_sim.url + THINGS):
                pass
    # Before: ServerDisconnectedError on both sides (the simulator sent a FIN).
    assert reset.value.errno == errno.ECONNRESET
    assert not isinstance(reset.value, aiohttp.ServerDisconnectedError)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("method", "sent"), [("POST", 1), ("GET", 2)])
async def test_a_reset_is_retried_for_a_get_and_never_resends_a_post_on_either_side(
    things_sim: Simulator, clock: VirtualClock, side: str, method: str, sent: int
) -> None:
    rule = FaultRule("rst", Reset(), match=Match(method), schedule=Schedule(fail_next=1))
    injector = _injector(side, things_sim, clock, rule)
    faults = things_sim.faults if side == "simulator" else injector
    async with Engine(
        things_sim.domains, scheme="http", clock=clock, wire_middlewares=[injector]
    ) as engine:
        if method == "POST":
            with pytest.raises(ConnectionFailed) as failed:
                await engine.request("POST", "things", THINGS, json={})
            assert "ClientOSError" in str(failed.value)
        else:
            assert await engine.request_json("GET", "things", THINGS, expect=dict) == {"ok": True}
    counts = faults.rule_counts()["rst"]
    assert (counts.matched, counts.injected) == (sent, 1)


# -- review of the batch ---------------------------------------------------------------------


async def test_a_close_after_the_servers_end_read_behind_a_held_frame_is_prompt(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The wrapper read the server's close behind a held frame, and said it was closed: the
    socket layer's close then skipped it, and the owner waited out the delay (10 min here)."""
    rule = FaultRule("late", WsDelay(600_000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        (sock,) = await sim.sockets.wait_open(1)
        await sock.notify(NOTIFICATION, {"n": 0})
        await sock.close(4001)  # the server ends it behind the held frame
        await clock.sleep(0.5)
        started = clock.now()
        await ws.close()
        assert clock.now() - started < 10.0


async def test_the_frames_read_ahead_are_bounded_in_size_too(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """64 frames of up to 16 MiB each could be read ahead behind a held one: a chaos run held
    a gigabyte no inbox would."""
    rule = FaultRule("late", WsDelay(10_000), unit="ws_message", match=Match(path=NOTIFICATION))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        wrapper = conn.ws
        assert isinstance(wrapper, FaultySocket)
        (sock,) = await sim.sockets.wait_open(1)
        frame = 2**20
        sending = asyncio.get_running_loop().create_task(_notify_many(sim, sock, 12, "x" * frame))
        try:
            waiting = asyncio.get_running_loop().create_task(wrapper.receive())
            await clock.sleep(1.0)
            # At most the bound and one frame past it (a frame is read whole).
            assert wrapper._read_ahead_bytes() <= FaultySocket.MAX_READ_AHEAD_BYTES + 2 * frame
            assert wrapper.read_ahead < 12
            first = await waiting
            assert json.loads(first.data)["body"]["n"] == 0
        finally:
            sending.cancel()
            await conn.close(clock, 5.0)
            await asyncio.gather(sending, return_exceptions=True)


async def _notify_many(sim: Simulator, sock: Any, count: int, pad: str) -> None:
    for n in range(count):
        await sock.notify(NOTIFICATION, {"n": n, "pad": pad})


async def test_a_frame_nested_too_deep_to_parse_passes_through_as_without_faults(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The wrapper parsed every frame to match it; a RecursionError ended the connection as a
    failed read (the frame lost), or made a send look like a broken connection."""
    rule = FaultRule("never", WsDelay(1000), unit="ws_message", match=Match(path=".Never"))
    injector = FaultInjector.seeded(0, rule, clock=clock)
    deep = "[" * 100_000 + "]" * 100_000
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        conn = await _dial(engine, sim)
        wrapper = conn.ws
        assert isinstance(wrapper, FaultySocket)
        (sock,) = await sim.sockets.wait_open(1)
        try:
            assert sock._ws is not None
            await sock._ws.send_str(deep)  # no frame of the protocol's: sent raw
            msg = await wrapper.receive()
            assert (msg.type, msg.data) == (WSMsgType.TEXT, deep)
            await wrapper.send_str(deep)
        finally:
            await conn.close(clock, 5.0)


def _notifications_held_30s(sim: Simulator) -> str:
    """Hold every notification the simulator sends 30 s (a WsDelay); the default agent's
    bearer, logged in."""
    sim.faults.add(
        FaultRule("late", WsDelay(30_000), unit="ws_message", match=Match(path=NOTIFICATION))
    )
    return sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer


async def test_expired_tokens_close_every_socket_at_once_whatever_one_holds(
    clock: VirtualClock,
) -> None:
    """A simulator's close waits for the frames a delay holds on that socket: closed one after
    another, a socket holding nothing kept serving on expired tokens for the others' delays."""
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        bearer = _notifications_held_30s(sim)
        async with (
            http.ws_connect(sim.brand_socket_url(bearer)),
            http.ws_connect(sim.brand_socket_url(bearer)) as second,
        ):
            first, _ = await sim.sockets.wait_open(2)
            await first.notify(NOTIFICATION, {"n": 0})  # held 30 s on the first only
            started = clock.now()
            expiring = asyncio.get_running_loop().create_task(sim.expire_tokens())
            msg = await second.receive()
            assert clock.now() - started < 1.0
            await expiring
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4401)


async def test_a_faults_close_over_a_close_waiting_for_held_frames_closes_now_with_its_code(
    clock: VirtualClock,
) -> None:
    """A close waiting for the frames a delay holds made every close after it return at once:
    a fault's close (flush=False) had no effect, its code lost; another close returned before
    the socket was closed."""
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        bearer = _notifications_held_30s(sim)
        async with http.ws_connect(sim.brand_socket_url(bearer)) as client:
            (sock,) = await sim.sockets.wait_open(1)
            await sock.notify(NOTIFICATION, {"n": 0})  # held 30 s
            loop = asyncio.get_running_loop()
            flushing = loop.create_task(sock.close(1001))
            await asyncio.sleep(0)
            assert sock.closing
            second = loop.create_task(sock.close(1000))
            await asyncio.sleep(0)
            assert not second.done(), "it waits for the socket to be closed"
            started = clock.now()
            await sock.close(4001, flush=False)
            msg = await client.receive()
            assert clock.now() - started < 1.0
            await asyncio.gather(flushing, second)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4001), "the fault's code, not 1001"
        assert sock.ended == ("close", 4001)


async def test_a_close_waiting_on_a_flushing_close_that_is_cut_short_closes_the_socket(
    clock: VirtualClock,
) -> None:
    """The second close waited for the socket to be closed: the first cut short (a caller's
    timeout around it) closed nothing, and the second waited until the client left."""
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        bearer = _notifications_held_30s(sim)
        async with http.ws_connect(sim.brand_socket_url(bearer)) as client:
            (sock,) = await sim.sockets.wait_open(1)
            await sock.notify(NOTIFICATION, {"n": 0})  # held 30 s
            loop = asyncio.get_running_loop()
            flushing = loop.create_task(sock.close(1001))
            await asyncio.sleep(0)
            assert sock.closing
            second = loop.create_task(sock.close(4401))
            await asyncio.sleep(0)
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)
            await second  # now the closer: it waits for the held frame, then closes
            received = [await client.receive() for _ in range(2)]
        assert received[0].type is WSMsgType.TEXT, "the held frame, first"
        assert (received[1].type, received[1].data) == (WSMsgType.CLOSE, 4401)
