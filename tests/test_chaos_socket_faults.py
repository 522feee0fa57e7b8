"""Socket faults injected on the client side: an engine whose FaultInjector has socket rules
wraps each socket it opens, and the plan's session and message kinds strike it as the simulator
would strike it from the server side (drops, close codes, silences, app errors, lost and late
answers), against the simulator's real UMS socket on loopback, on the virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from le_transport import Engine, SocketClosed, SocketRequestError, SocketRequestTimeout
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultRule,
    Hang,
    Match,
    Reset,
    Schedule,
    SlowBody,
    Status,
    TruncatedBody,
    WsAppError,
    WsClose,
    WsDelay,
    WsDrop,
    WsDropMessage,
    WsRejectHandshake,
    WsSilence,
)
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    publish,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

PUBLISH = ".ams.ms.PublishEvent"
GETCLOCK = ".GetClock"
UMS = "/ws_api/account/*"


def engine_with(
    sim: Simulator, clock: VirtualClock, states: StateLog, *rules: FaultRule
) -> tuple[Engine, FaultInjector]:
    injector = FaultInjector.seeded(3, *rules, clock=clock)
    return agent_engine(sim, clock, states, wire_middlewares=[injector]), injector


def logins(sim: Simulator) -> int:
    return sim.count("POST", "/api/account/*/login")


def kinds(injector: FaultInjector) -> list[str]:
    return [entry["kind"] for entry in injector.report()]


async def test_a_drop_after_two_requests_fails_the_one_in_flight_and_the_socket_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "drop",
        WsDrop(after_messages=2),
        unit="ws_session",
        match=Match(path=UMS),
        schedule=Schedule(fail_next=1),
    )
    engine, injector = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        first = await ws.request(GETCLOCK, {})
        with pytest.raises(SocketClosed):
            await ws.request(GETCLOCK, {})
        await ws.wait_open()
        third = await ws.request(GETCLOCK, {})
    assert first["code"] == third["code"] == 200
    assert len(sim.sockets.all) == 2
    assert kinds(injector) == ["ws_drop"]
    assert [e.name for e in states.events].count("lost") == 1


async def test_an_injected_4401_close_makes_the_socket_log_in_again_and_reconnect(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "4401", WsClose(4401), unit="ws_session", match=Match(path=UMS), schedule=Schedule(0, 1)
    )
    engine, injector = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        answer = await ws.request(GETCLOCK, {})
    assert answer["code"] == 200
    # The first connection "closed" 4401 as it opened: fresh credentials for the second.
    assert len(sim.sockets.all) == 2
    assert logins(sim) == 2
    assert kinds(injector) == ["ws_close"]


async def test_an_app_error_answers_the_request_without_sending_it(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "429",
        WsAppError(429),
        unit="ws_message",
        match=Match(path=PUBLISH),
        schedule=Schedule(fail_next=1),
    )
    engine, injector = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError) as refused:
            await ws.request(PUBLISH, publish("first"))
        accepted = await ws.request(PUBLISH, publish("second"))
    assert refused.value.code == 429
    assert accepted["code"] == 200
    # The server never saw the refused one, and the connection stayed up.
    assert [m.text for m in sim.sockets.published] == ["second"]
    assert len(sim.sockets.all) == 1
    assert kinds(injector) == ["ws_app_error"]


async def test_a_status_on_a_request_is_a_resp_with_that_code(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule("500", Status(500), unit="ws_message", match=Match(path=GETCLOCK))
    engine, _ = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError) as failed:
            await ws.request(GETCLOCK, {})
    assert failed.value.code == 500


async def test_a_lost_answer_times_out_although_the_server_processed_the_request(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "lost",
        WsDropMessage(),
        unit="ws_message",
        match=Match(path=f"{PUBLISH}$Response"),
        schedule=Schedule(fail_next=1),
    )
    engine, injector = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestTimeout):
            await ws.request(PUBLISH, publish("lost answer"), timeout=5.0)
        again = await ws.request(PUBLISH, publish("answered"))
    assert again["code"] == 200
    # The dangerous kind of loss: the message was published, only its answer went missing.
    assert [m.text for m in sim.sockets.published] == [
        "lost answer",
        "answered",
    ]
    assert kinds(injector) == ["ws_drop_message"]


async def test_a_held_answer_arrives_exactly_its_delay_later_on_the_clock(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "late", WsDelay(delay_ms=2500), unit="ws_message", match=Match(path=f"{GETCLOCK}$*")
    )
    engine, _ = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        sent_at = clock.now()
        answer = await ws.request(GETCLOCK, {}, timeout=10.0)
        took = clock.now() - sent_at
    assert answer["code"] == 200
    assert took == pytest.approx(2.5)


async def test_a_request_held_before_sending_and_a_hung_one(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rules = (
        FaultRule(
            "slow",
            Delay(delay_ms=1000),
            unit="ws_message",
            match=Match(path=GETCLOCK),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule(
            "hang",
            Hang(),
            unit="ws_message",
            match=Match(path=PUBLISH),
            schedule=Schedule(fail_next=1),
        ),
    )
    engine, _ = engine_with(sim, clock, states, *rules)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        sent_at = clock.now()
        await ws.request(GETCLOCK, {})
        assert clock.now() - sent_at == pytest.approx(1.0)
        with pytest.raises(SocketRequestTimeout):
            await ws.request(PUBLISH, publish("never sent"), timeout=3.0)
    assert sim.sockets.published == []


async def test_a_silent_connection_is_found_by_the_keepalive_and_replaced(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "silent",
        WsSilence(after_messages=1),
        unit="ws_session",
        match=Match(path=UMS),
        schedule=Schedule(fail_next=1),
    )
    engine, injector = engine_with(sim, clock, states, rule)
    options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)
    async with engine:
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open()
        opened_at = clock.now()
        # The first frame sent (the keepalive's probe) is the last the connection answers:
        # nothing arrives any more, the probe times out, the peer is declared dead.
        while len(sim.sockets.all) < 2:
            await clock.sleep(1.0)
        found_after = clock.now() - opened_at
        await ws.wait_open()
        answer = await ws.request(GETCLOCK, {})
    interval = MESSAGING_AGENT_SDK_GETCLOCK.interval
    assert answer["code"] == 200
    assert kinds(injector) == ["ws_silence"]
    # Found within two keepalive intervals (the bound), plus the reconnect's pause.
    assert found_after <= 2 * interval + 5.0


async def test_an_injector_without_socket_rules_leaves_sockets_as_aiohttp_made_them(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    http_only = FaultRule("http", Status(503), match=Match("GET", "/nowhere"))
    for rules in ((), (http_only,)):
        engine, injector = engine_with(sim, clock, states, *rules)
        async with engine:
            ws = await brand_socket(engine, sim)
            await ws.wait_open()
            await ws.request(GETCLOCK, {})
            readers = [t for t in asyncio.all_tasks() if "chaos reader" in t.get_name()]
        assert readers == []
        assert injector.report() == []


async def test_a_made_up_answer_reaches_the_waiting_owner_without_the_connection_moving(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule("429", WsAppError(429), unit="ws_message", match=Match(path=PUBLISH))
    engine, _ = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        asked = clock.now()
        # The owner waits on an idle connection (its read of it under way): the answer the
        # wrapper makes up wins that wait at once, on no clock time.
        with pytest.raises(SocketRequestError) as refused:
            await ws.request(PUBLISH, publish("refused"), timeout=30.0)
        assert clock.now() == asked
        # The read that lost the race was kept: the next frame the server sends still arrives.
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        frame = await anext(ws)
    assert refused.value.code == 429
    assert frame["body"] == {"n": 1}
    assert sim.sockets.published == []


async def test_an_injected_drop_while_the_owner_is_paused_reaches_it_at_its_next_read(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rule = FaultRule(
        "drop",
        WsDrop(),
        unit="ws_message",
        match=Match(path=PUBLISH),
        schedule=Schedule(fail_next=1),
    )
    notification = ".ams.routing.RoutingTaskNotification"
    engine, injector = engine_with(sim, clock, states, rule)
    async with engine:
        ws = await brand_socket(engine, sim, SocketOptions(max_inbox=2))
        await ws.wait_open()
        for n in range(6):
            await sim.sockets.notify(notification, {"n": n}, to_all=True)
        while not ws.paused:
            await clock.sleep(0.1)
        # The wrapper reads only for the owner: the paused owner reads nothing, so, as with a
        # real drop, it learns of this one when it reads again, and the socket stays paused.
        await ws.send({"kind": "req", "id": "p1", "type": PUBLISH, "body": publish("x")})
        await clock.sleep(5)
        assert ws.paused
        assert len(sim.sockets.all) == 1
        # The frames received before the drop are the consumer's; those behind it are lost.
        taken = [(await anext(ws))["body"]["n"] for _ in range(3)]
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await sim.sockets.notify(notification, {"n": 100}, to_all=True)
        after = (await anext(ws))["body"]["n"]
    assert taken == [0, 1, 2]
    assert after == 100
    assert kinds(injector) == ["ws_drop"]
    assert [e.name for e in states.events].count("lost") == 1


async def _answered(
    sim: Simulator, clock: VirtualClock, states: StateLog, rule: FaultRule, side: str
) -> tuple[list[int | str], FaultInjector]:
    """Requests sent one by one on a socket whose first session ``rule`` strikes, applied by
    the simulator (``side`` "server") or by the client's injector: the ordinals of those
    answered, then the error of the first that was not."""
    if side == "server":
        sim.faults.add(rule)
        engine, injector = engine_with(sim, clock, states)
    else:
        engine, injector = engine_with(sim, clock, states, rule)
    answered: list[int | str] = []
    async with engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        for n in range(1, 5):
            try:
                await ws.request(GETCLOCK, {}, timeout=2.0)
            except (SocketClosed, SocketRequestTimeout) as exc:
                answered.append(type(exc).__name__)
                break
            answered.append(n)
    return answered, injector


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("fault", "after"),
    [
        (WsSilence(after_messages=2), [1, "SocketRequestTimeout"]),
        (WsDrop(after_messages=2), [1, "SocketClosed"]),
        (WsClose(1011, after_messages=2), [1, "SocketClosed"]),
        (WsSilence(after_messages=1), ["SocketRequestTimeout"]),
        (WsSilence(after_messages=3), [1, 2, "SocketRequestTimeout"]),
    ],
    ids=lambda v: repr(v) if not isinstance(v, list) else "",
)
async def test_a_session_fault_strikes_as_the_after_messages_th_message_arrives_on_both_sides(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    fault: WsSilence | WsDrop | WsClose,
    after: list[int | str],
    side: str,
) -> None:
    # The review read WsSilence(after_messages=2) as "two answers, then silence", and got one:
    # its docstring said "stop answering after after_messages messages". Every session kind
    # counts alike, on both sides: the after_messages-th message from the client is the one
    # that meets the fault (never answered), the ones before it are answered.
    rule = FaultRule(
        "f", fault, unit="ws_session", match=Match(path=UMS), schedule=Schedule(fail_next=1)
    )
    answered, _ = await _answered(sim, clock, states, rule, side)
    assert answered == after
    if side == "server" and fault.after_messages:
        # The message that met the fault reached the server, which never answered it.
        assert len(sim.sockets.all[0].received) == fault.after_messages


async def _sessions(
    sim: Simulator, clock: VirtualClock, states: StateLog, rules: list[FaultRule], side: str
) -> tuple[list[str], list[int | str], dict[str, int]]:
    """A socket that dials until a request on it is answered, its sessions struck by ``rules``
    applied by the simulator (``side`` "server") or by the client's injector: the kinds
    injected, in order, what each request met, and how many units each rule matched."""
    if side == "server":
        for rule in rules:
            sim.faults.add(rule)
        engine, injector = engine_with(sim, clock, states)
    else:
        engine, injector = engine_with(sim, clock, states, *rules)
    met: list[int | str] = []
    async with engine:
        ws = await brand_socket(engine, sim)
        for _ in range(6):
            await ws.wait_open()
            try:
                answer = await ws.request(GETCLOCK, {}, timeout=2.0)
            except (SocketClosed, SocketRequestTimeout) as exc:
                met.append(type(exc).__name__)
                continue
            met.append(answer["code"])
            break
    if side == "server":
        matched = {rule_id: c.matched for rule_id, c in sim.faults.rule_counts().items()}
        return [d.kind or "" for d in sim.faults.injected()], met, matched
    matched = {rule_id: c.matched for rule_id, c in injector.rule_counts().items()}
    return kinds(injector), met, matched


REJECT_THEN_DROP = [
    FaultRule(
        "mixed",
        sequence=[WsRejectHandshake(503), WsDrop(after_messages=1), WsClose(1011)],
        unit="ws_session",
        match=Match(path=UMS),
    )
]
REJECT_BESIDE_CLOSE = [
    FaultRule("reject", WsRejectHandshake(502), unit="ws_session", schedule=Schedule(fail_next=1)),
    # Its first session is the one the refusal took (shadowed there): it strikes the second.
    FaultRule(
        "close",
        WsClose(1011, after_messages=1),
        unit="ws_session",
        schedule=Schedule(skip_first=1, fail_next=1),
    ),
]


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("rules", "injected", "met"),
    [
        (
            REJECT_THEN_DROP,
            ["ws_reject_handshake", "ws_drop", "ws_close"],
            ["SocketClosed", 200],
        ),
        (REJECT_BESIDE_CLOSE, ["ws_reject_handshake", "ws_close"], ["SocketClosed", 200]),
    ],
    ids=["one-rule-sequence", "two-rules"],
)
async def test_session_faults_mixing_a_refused_handshake_with_ends_fire_alike_on_both_sides(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    rules: list[FaultRule],
    injected: list[str],
    met: list[int | str],
    side: str,
) -> None:
    # Before, the client-side injector decided a session twice, with two kinds each time (the
    # refusal at the upgrade, the rest once open), so a rule mixing them matched neither and
    # never fired, and a refusal rule beside a drop rule did not take the drop rule's turn.
    got_injected, got_met, _ = await _sessions(sim, clock, states, rules, side)
    assert got_injected == injected
    assert got_met == met
    # The refusal is the simulator's (its record of it) or the client's (the server never saw
    # that upgrade); the sessions after it are served the same either way.
    status = 503 if rules is REJECT_THEN_DROP else 502
    assert sim.sockets.rejected == ([status] if side == "server" else [])


# A request rule on the socket's upgrade (method and path, as the simulator's middleware sees
# it), then a session rule: the request is decided first, and a refused upgrade opens no
# session (the session rule's first turn is the next upgrade's).
REFUSED_THEN_DROPPED = [
    FaultRule("refuse", Status(503), match=Match("GET", UMS), schedule=Schedule(fail_next=1)),
    FaultRule("drop", WsDrop(after_messages=1), unit="ws_session", schedule=Schedule(fail_next=1)),
]
RESET_UPGRADE = [FaultRule("reset", Reset(), match=Match(path=UMS), schedule=Schedule(fail_next=1))]
# Kinds that cut or pace a body do not match an upgrade (there is no body): not counted.
BODY_KINDS = [
    FaultRule("cut", TruncatedBody(keep_bytes=1), match=Match(path=UMS)),
    FaultRule("slow", SlowBody(chunk_bytes=1, chunk_delay_ms=10), match=Match(path=UMS)),
]


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("rules", "injected", "met", "matched"),
    [
        (
            REFUSED_THEN_DROPPED,
            ["status", "ws_drop"],
            ["SocketClosed", 200],
            {"refuse": 3, "drop": 2},
        ),
        (RESET_UPGRADE, ["reset"], [200], {"reset": 2}),
        (BODY_KINDS, [], [200], {"cut": 0, "slow": 0}),
    ],
    ids=["status-then-session", "reset", "body-kinds"],
)
async def test_a_request_rule_strikes_a_socket_upgrade_alike_on_both_sides(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    rules: list[FaultRule],
    injected: list[str],
    met: list[int | str],
    matched: dict[str, int],
    side: str,
) -> None:
    # Before, the client-side injector asked only ws_session rules about an upgrade: a
    # Status(503) on GET /ws_api/* refused the simulator's upgrades and never the client's, so
    # one plan tested two different things depending on where it ran.
    got_injected, got_met, got_matched = await _sessions(sim, clock, states, rules, side)
    assert got_injected == injected
    assert got_met == met
    assert got_matched == matched


DROP_ONCE = FaultRule(
    "drop", WsDrop(after_messages=1), unit="ws_session", schedule=Schedule(fail_next=1)
)
DROP_ONCE_BY_SERVICE = FaultRule(
    "drop",
    WsDrop(after_messages=1),
    unit="ws_session",
    match=Match(service="facadeMsg"),
    schedule=Schedule(fail_next=1),
)


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("rule", [DROP_ONCE, DROP_ONCE_BY_SERVICE], ids=["any", "by-service"])
async def test_an_upgrade_the_server_refuses_spends_no_session_turn_on_either_side(
    sim: Simulator, clock: VirtualClock, states: StateLog, rule: FaultRule, side: str
) -> None:
    """The server refuses the first upgrade itself (a 503 of its own). The client-side
    injector decided the session before the server answered, so the drop's one turn went to
    the refused upgrade: counted as injected, never struck. And an engine socket's upgrade ran
    in no call naming its service, so a rule matching the service never matched client-side."""
    sim.faults.add(
        FaultRule(
            "server-503", Status(503), match=Match("GET", UMS), schedule=Schedule(fail_next=1)
        )
    )
    got_injected, got_met, got_matched = await _sessions(sim, clock, states, [rule], side)
    assert got_injected == (["status", "ws_drop"] if side == "server" else ["ws_drop"])
    assert got_met == ["SocketClosed", 200]
    assert got_matched["drop"] == 2  # the two upgrades the server accepted
