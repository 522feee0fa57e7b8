"""Review of the chaos layer and the simulator: what a plan says is what both sides do, and bad
input is refused up front with a ConfigurationError naming the field.

- A client-side session fault with requests in flight answered the ones before the
  ``after_messages``-th as the simulator does (it struck as the frame was sent, and lost the
  answers already on their way).
- A frame whose ``id``/``reqId`` is a JSON list or object ended a socket wrapped by any
  injector with a ``ws_message`` rule (unhashable).
- A ``sequence`` rule's count window was ignored, and its time window lost by ``to_dict``.
- ``SimulatorConfig`` took an infinite TTL (every login a 500), ids for accounts, unsendable
  close codes and values of the wrong type.
- ``Match.method`` took values that never match; ``Status``/``MalformedBody`` took a 1xx.
- A ``Status`` on ``ws_message`` answered with a fixed body on the simulator's side.
- ``faults.script(..., 503)`` and ``sim.restart("1")`` failed untyped, the latter with the
  simulator left stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from le_transport import Engine, SocketClosed, SocketRequestError, SocketRequestTimeout
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultPlan,
    FaultRule,
    FaultRun,
    MalformedBody,
    Match,
    Schedule,
    Status,
    WsClose,
    WsDelay,
    WsDrop,
    WsSilence,
)
from le_transport.chaos.ws import FaultySocket
from le_transport.errors import ConfigurationError
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Account, Simulator, SimulatorConfig
from le_transport.testing.simulator.config import MAX_TTL_S
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

GETCLOCK = ".GetClock"
UMS = "/ws_api/account/*"


def _injector(clock: VirtualClock, *rules: FaultRule) -> FaultInjector:
    return FaultInjector.seeded(3, *rules, clock=clock)


def _on_side(side: str, sim: Simulator, clock: VirtualClock, *rules: FaultRule) -> FaultInjector:
    """The client's injector, holding ``rules`` on the "client" side; on the "server" side the
    simulator holds them and the injector none (so both runs go through the same layers)."""
    if side == "server":
        for rule in rules:
            sim.faults.add(rule)
        return _injector(clock)
    return _injector(clock, *rules)


async def _open(engine: Engine, sim: Simulator, **kwargs: Any) -> ResilientSocket:
    ws = await brand_socket(engine, sim, SocketOptions(keepalive=None), **kwargs)
    await ws.wait_open()
    return ws


async def _outcome(ws: ResilientSocket, type_: str, timeout: float) -> int | str:
    try:
        answer = await ws.request(type_, {}, timeout=timeout)
    except (SocketClosed, SocketRequestTimeout) as exc:
        return type(exc).__name__
    code = answer["code"]
    assert isinstance(code, int)
    return code


# -- 1. a session fault with requests in flight ----------------------------------------------


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("fault", "second"),
    [
        (WsDrop(after_messages=2), "SocketClosed"),
        (WsClose(4401, after_messages=2), "SocketClosed"),
        (WsSilence(after_messages=2), "SocketRequestTimeout"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
async def test_requests_in_flight_before_the_after_messages_th_are_answered_on_both_sides(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    fault: WsDrop | WsClose | WsSilence,
    second: str,
    side: str,
) -> None:
    rule = FaultRule(
        "f", fault, unit="ws_session", match=Match(path=UMS), schedule=Schedule(fail_next=1)
    )
    injector = _on_side(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        # Both sent at once: the first one's answer is on its way when the second goes out.
        met = await asyncio.gather(_outcome(ws, GETCLOCK, 20), _outcome(ws, GETCLOCK, 20))
        await ws.close()
    assert list(met) == [200, second]


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_message_fault_that_ends_the_socket_lets_the_answers_in_flight_through(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rule = FaultRule("boom", WsDrop(), unit="ws_message", match=Match(path=".Boom"))
    injector = _on_side(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        met = await asyncio.gather(_outcome(ws, GETCLOCK, 20), _outcome(ws, ".Boom", 20))
        await ws.close()
    assert list(met) == [200, "SocketClosed"]


@pytest.mark.usefixtures("no_open_connections")
async def test_a_client_side_strike_waits_for_an_earlier_answer_no_longer_than_its_bound(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def never(sock: Any, frame: dict[str, Any]) -> None:
        return None  # the server never answers it

    sim.sockets.on("Never", never)
    rule = FaultRule(
        "drop",
        WsDrop(after_messages=2),
        unit="ws_session",
        match=Match(path=UMS),
        schedule=Schedule(fail_next=1),
    )
    async with agent_engine(
        sim, clock, states, wire_middlewares=[_injector(clock, rule)]
    ) as engine:
        ws = await _open(engine, sim)
        started = clock.now()
        met = await asyncio.gather(_outcome(ws, "Never", 60), _outcome(ws, GETCLOCK, 60))
        took = clock.now() - started
        await ws.close()
    assert list(met) == ["SocketClosed", "SocketClosed"]
    assert took == pytest.approx(FaultySocket.STRIKE_WAIT_S)


# -- 2. ids that are not a str or an int ----------------------------------------------------


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("odd_id", [[1], {"n": 1}], ids=["list", "object"])
async def test_a_frame_whose_id_is_not_a_str_or_int_passes_a_wrapped_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog, odd_id: object
) -> None:
    async def odd(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        await sock.send({"kind": "resp", "reqId": odd_id, "code": 200, "body": {}, "type": "x"})
        return 200, {}

    sim.sockets.on("Odd", odd)
    # A rule that never fires on this traffic: only its presence wraps the socket.
    rule = FaultRule("slow", WsDelay(10), unit="ws_message", match=Match(path="never.matches"))
    frames: list[Any] = []
    async with agent_engine(
        sim, clock, states, wire_middlewares=[_injector(clock, rule)]
    ) as engine:
        ws = await _open(engine, sim, on_frame=frames.append)
        answer = await ws.request("Odd", {}, timeout=5)
        sent = await ws.send({"kind": "req", "id": odd_id, "type": GETCLOCK, "body": {}})
        after = await ws.request(GETCLOCK, {}, timeout=5)
        await ws.close()
    assert answer["code"] == after["code"] == 200
    assert sent is True
    assert any(f.get("reqId") == odd_id for f in frames)
    assert len(sim.sockets.all) == 1  # never reconnected


# -- 3. a sequence and its schedule ----------------------------------------------------------


@pytest.mark.parametrize(
    "schedule", [Schedule(skip_first=5), Schedule(fail_next=1), Schedule(2, 1, after_ms=10)]
)
def test_a_count_window_beside_a_sequence_is_refused(schedule: Schedule) -> None:
    with pytest.raises(ConfigurationError, match=r"rule 'burst': a 'sequence'.*count window"):
        FaultRule("burst", sequence=[503, 503], schedule=schedule)
    data = {"id": "burst", "sequence": [503], "schedule": {"skip_first": 5, "fail_next": 1}}
    with pytest.raises(ConfigurationError, match="skip_first=5, fail_next=1"):
        FaultPlan.from_dict({"seed": 1, "rules": [data]})


def test_a_sequences_time_window_survives_the_json_round_trip_and_decides_alike() -> None:
    rule = FaultRule(
        "late",
        sequence=[503, None, 502],
        schedule=Schedule(after_ms=60_000, for_ms=1_000),
        match=Match("GET", "*"),
    )
    plan = FaultPlan(seed=4, rules=[rule])
    loaded = FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert loaded == plan
    runs = [FaultRun(plan, origin=0.0), FaultRun(loaded, origin=0.0)]
    for at in (1.0, 60.0, 60.5, 60.9, 61.0):
        got = [r.decide("request", method="GET", path="/x", at=at) for r in runs]
        assert got[0] == got[1]
    assert [d.outcome for d in runs[1].log] == ["pass", "pass", "inject", "pass", "pass"]
    # A sequence without a time window is written as before: no schedule.
    assert "schedule" not in FaultRule("s", sequence=[503]).to_dict()


# -- 4. SimulatorConfig ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_ttl", math.inf),
        ("session_ttl", 10**400),
        ("session_ttl", MAX_TTL_S * 2),
        ("jwt_ttl", math.inf),
        ("jwt_ttl", math.nan),
        ("jwt_ttl", 0),
        ("accounts", ["12345678"]),
        ("accounts", "12345678"),
        ("accounts", Account()),
        ("idle_close_code", 1006),
        ("idle_close_code", 1005),
        ("idle_close_code", "x"),
        ("idle_close_code", 99999),
        ("idle_close_code", True),
        ("public_address", 123),
        ("public_address", ""),
        ("public_address", "http://le.example.test"),
        ("public_address", "le example"),
        ("public_scheme", 5),
        ("public_scheme", "ftp"),
        ("echo_published", "no"),
        ("fault_header", 1),
    ],
)
def test_a_bad_simulator_config_field_is_refused_naming_it(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ConfigurationError, match=rf"SimulatorConfig\.{field}"):
        SimulatorConfig(**kwargs)


def test_the_edges_of_a_simulator_config_are_accepted() -> None:
    config = SimulatorConfig(
        accounts=[Account()],
        session_ttl=MAX_TTL_S,
        jwt_ttl=0.5,
        idle_close_code=4000,
        public_address="[::1]:8443",
        public_scheme="https",
        echo_published=False,
        fault_header=True,
    )
    assert config.accounts == (Account(),)
    assert (
        SimulatorConfig(idle_close_code=1011, public_address="le.example.test").public_scheme
        is None
    )


# -- 5. Match.method -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["", " get", "GET,POST", "GET POST", 5, ["GET"]])
def test_a_method_that_never_matches_is_refused_when_made_or_loaded(method: object) -> None:
    with pytest.raises(ConfigurationError, match=r"Match\.method must be one HTTP method"):
        Match(method)
    with pytest.raises(ConfigurationError, match=r"Match\.method"):
        FaultRule.from_dict({"id": "r", "match": {"method": method, "path": "*"}, "fault": 503})


def test_any_method_and_one_method_in_any_case_still_match() -> None:
    assert Match(None).method is None
    assert Match("*").method is None
    assert Match("get").method == "GET"
    run = FaultRun([FaultRule("r", Status(503), match=Match("patch", "*"))])
    assert run.decide("request", method="PATCH", path="/a") is not None
    assert run.decide("request", method="GET", path="/a") is None


# -- 6. a Status on a socket request, on every path ------------------------------------------

BUSY = Status(429, body='{"msg": "slow down", "retryAfterMs": 1500}')


async def _echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            frame = json.loads(msg.data)
            await ws.send_json(
                {"kind": "resp", "reqId": frame["id"], "code": 200, "body": {}, "type": "x"}
            )
    return ws


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "custom", "client"])
async def test_a_status_on_a_socket_request_carries_its_body_on_every_path(
    clock: VirtualClock, states: StateLog, side: str
) -> None:
    rule = FaultRule("busy", BUSY, unit="ws_message", match=Match(path="Echo"))
    simulator = Simulator(clock=clock, plan=[rule] if side != "client" else None)
    simulator.add_route("GET", "/ws/echo", _echo, service="myEcho")
    async with simulator:
        injector = _injector(clock, rule) if side == "client" else _injector(clock)
        async with agent_engine(simulator, clock, states, wire_middlewares=[injector]) as engine:
            if side == "custom":
                ws = await engine.websocket(
                    "myEcho", "/ws/echo", options=SocketOptions(keepalive=None)
                )
                await ws.wait_open()
            else:
                ws = await _open(engine, simulator)
            with pytest.raises(SocketRequestError) as caught:
                await ws.request("Echo", {}, timeout=5)
            await ws.close()
    assert caught.value.code == 429
    assert caught.value.body == {"msg": "slow down", "retryAfterMs": 1500}
    assert BUSY.socket_body() == {"msg": "slow down", "retryAfterMs": 1500}
    assert Status(503).socket_body() == {"msg": "injected fault"}
    assert Status(503, body="not json").socket_body() == "not json"


# -- 7. no 1xx as a final answer -------------------------------------------------------------


@pytest.mark.parametrize("code", [100, 101, 199])
def test_a_1xx_status_is_refused(code: int) -> None:
    with pytest.raises(ConfigurationError, match=r"Status\.code must be an int in 200\.\.599"):
        Status(code)
    with pytest.raises(ConfigurationError, match=r"MalformedBody\.code must be an int in 200"):
        MalformedBody(code=code)
    with pytest.raises(ConfigurationError, match=r"Status\.code"):
        FaultRule.from_dict({"id": "r", "fault": {"kind": "status", "code": code}})
    assert Status(200).code == 200
    assert MalformedBody(code=200).code == 200


# -- 8. script and restart check their arguments before acting -------------------------------


@pytest.mark.parametrize("outcomes", [503, None, "503", {"code": 503}])
def test_script_refuses_outcomes_that_are_not_a_list(outcomes: Any) -> None:
    sim = Simulator()
    with pytest.raises(ConfigurationError, match=r"SimFaults\.script outcomes must be a list"):
        sim.faults.script("GET", "*/users", outcomes)
    assert sim.faults.plan.rules == ()
    with pytest.raises(ConfigurationError, match="not a fault"):
        sim.faults.script("GET", "*/users", [503.0])  # type: ignore[list-item]
    assert sim.faults.script("GET", "*/users", (503,)).sequence == (Status(503),)


@pytest.mark.parametrize("down_for", ["1", math.nan, math.inf, -1, None, True])
async def test_restart_refuses_a_bad_down_for_and_leaves_the_simulator_running(
    clock: VirtualClock, down_for: Any
) -> None:
    async with Simulator(clock=clock) as simulator:
        with pytest.raises(ConfigurationError, match=r"Simulator\.restart down_for"):
            await simulator.restart(down_for)
        assert simulator.running
        assert simulator.starts == 1
        await simulator.restart(0.5)
        assert simulator.running
        assert simulator.starts == 2


# -- 9. a client-side strike: what it waits for, and what comes while it waits ---------------


async def _never(sock: Any, frame: dict[str, Any]) -> None:
    return None  # the server never answers it


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_strike_does_not_wait_for_a_request_the_client_gave_up_on(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    sim.sockets.on("Never", _never)
    rule = FaultRule(
        "close",
        WsClose(4000, after_messages=2),
        unit="ws_session",
        match=Match(path=UMS),
        schedule=Schedule(fail_next=1),
    )
    injector = _on_side(side, sim, clock, rule)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        gave_up = await _outcome(ws, "Never", 2 * FaultySocket.STRIKE_WAIT_S)  # frame 1
        started = clock.now()
        # Frame 2 meets the fault; frame 3 follows it: both end with the connection, at once.
        met = await asyncio.gather(
            _outcome(ws, GETCLOCK, 60), _outcome(ws, GETCLOCK, FaultySocket.STRIKE_WAIT_S / 2)
        )
        took = clock.now() - started
        await ws.close()
    assert gave_up == "SocketRequestTimeout"
    assert list(met) == ["SocketClosed", "SocketClosed"]
    assert took == 0


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_strike_waits_for_a_delayed_request_from_when_it_went_out(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    # The client side took the request's send time before its Delay: 1.7 s later it looked
    # too old to wait for, though it had gone out 0.2 s before, and its answer was lost.
    async def slow(sock: Any, frame: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        await clock.sleep(0.5)
        return 200, {}

    sim.sockets.on("Slow", slow)
    rules = [
        FaultRule(
            "close",
            WsClose(4000, after_messages=2),
            unit="ws_session",
            match=Match(path=UMS),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule(
            "slow",
            Delay(1500),
            unit="ws_message",
            match=Match(path="Slow"),
            schedule=Schedule(fail_next=1),
        ),
    ]
    injector = _on_side(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        first = asyncio.get_running_loop().create_task(_outcome(ws, "Slow", 10))  # frame 1
        await clock.sleep(1.7)  # on the wire for 0.2 s (the client side), being answered
        second = await _outcome(ws, GETCLOCK, 10)  # frame 2 meets the session fault
        met = [await first, second]
        await ws.close()
    assert met == [200, "SocketClosed"]


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_message_fault_sent_while_a_strike_waits_is_not_decided(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    answered = asyncio.Event()

    async def slow(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        await answered.wait()  # answered once the later frames went out
        return 200, {}

    sim.sockets.on("Slow", slow)
    rules = [
        FaultRule(
            "close",
            WsClose(4000, after_messages=2),
            unit="ws_session",
            match=Match(path=UMS),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule("boom", WsDrop(), unit="ws_message", match=Match(path="Boom")),
    ]
    injector = _on_side(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        slow_one = asyncio.create_task(_outcome(ws, "Slow", 60))  # frame 1
        struck = asyncio.create_task(_outcome(ws, GETCLOCK, 60))  # frame 2: the strike
        boom = asyncio.create_task(_outcome(ws, "Boom", 60))  # frame 3: goes nowhere
        for _ in range(20):
            await asyncio.sleep(0)
        answered.set()
        met = await asyncio.gather(slow_one, struck, boom)
        lost = [e.details.get("reason", "") for e in states.of("lost")]
        await ws.close()
    strikes = [t for t in asyncio.all_tasks() if "chaos strike" in t.get_name()]
    counts = sim.faults.injected_counts() if side == "server" else injector.injected_counts()
    assert list(met) == [200, "SocketClosed", "SocketClosed"]
    assert counts == {"close": 1}  # the frame meeting "boom" never reached the server
    assert lost
    assert "4000" in lost[0]
    assert strikes == []  # no strike timer outlives the engine


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_silenced_socket_puts_no_request_to_the_plan(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rules = [
        FaultRule(
            "silence",
            WsSilence(after_messages=1),
            unit="ws_session",
            match=Match(path=UMS),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule("stat", Status(503), unit="ws_message", match=Match(path="Stat")),
        FaultRule("boom", WsClose(4002), unit="ws_message", match=Match(path="Boom")),
    ]
    injector = _on_side(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        met = [await _outcome(ws, type_, 1) for type_ in (GETCLOCK, "Stat", "Boom")]
        await ws.close()
    counts = sim.faults.injected_counts() if side == "server" else injector.injected_counts()
    assert met == ["SocketRequestTimeout"] * 3
    assert counts == {"silence": 1}


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("side", ["server", "client"])
async def test_frames_to_a_silenced_socket_count_toward_a_session_fault(
    sim: Simulator, clock: VirtualClock, states: StateLog, side: str
) -> None:
    rules = [
        FaultRule(
            "close",
            WsClose(4000, after_messages=3),
            unit="ws_session",
            match=Match(path=UMS),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule("hush", WsSilence(), unit="ws_message", match=Match(path="Hush")),
    ]
    injector = _on_side(side, sim, clock, *rules)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await _open(engine, sim)
        met = [await _outcome(ws, type_, 1) for type_ in ("Hush", GETCLOCK)]
        met.append(await _outcome(ws, GETCLOCK, 10))  # the third frame: the session's close
        lost = [e.details.get("reason", "") for e in states.of("lost")]
        await ws.close()
    assert met == ["SocketRequestTimeout", "SocketRequestTimeout", "SocketClosed"]
    assert len(lost) == 1
    assert "4000" in lost[0]


def test_a_bare_code_below_300_as_a_rules_fault_is_refused_as_a_pass() -> None:
    for code in (150, 200, 299):
        with pytest.raises(ConfigurationError, match=rf"rule 'a': 'fault' {code} is a bare code"):
            FaultPlan.from_dict({"rules": [{"id": "a", "fault": code}]})
        with pytest.raises(ConfigurationError, match=r"only a 'sequence' may hold"):
            FaultRule("a", fault=code)
    # Still: a pass inside a sequence, a bare code from 300 as a rule's fault.
    assert FaultRule("a", sequence=[200, 503]).sequence == (None, Status(503))
    assert FaultRule.from_dict({"id": "a", "fault": 300}).fault == Status(300)
    with pytest.raises(ConfigurationError, match="give exactly one of 'fault'"):
        FaultRule.from_dict({"id": "a"})
