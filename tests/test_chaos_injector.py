"""The client-side FaultInjector: what it injects through the engine, and that it reproduces."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, RealClock, RetryPolicy
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Hang,
    MalformedBody,
    Match,
    Quota,
    Reset,
    Schedule,
    SlowBody,
    Status,
    TruncatedBody,
    WsDrop,
    WsRejectHandshake,
)
from le_transport.errors import (
    AttemptTimeout,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    ResponseDecodeError,
    RetriesExhausted,
)
from le_transport.providers import StaticBearer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator
from tests.conftest import ServerFactory
from tests.test_socket_support import quiet_peer

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


def _engine(sim: Simulator, clock: VirtualClock, injector: FaultInjector, **kw: Any) -> Engine:
    return Engine(sim.domains, scheme="http", clock=clock, wire_middlewares=[injector], **kw)


async def test_an_injected_status_is_answered_without_sending_the_request(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1, FaultRule("s", Status(503), schedule=Schedule(fail_next=2)), clock=clock
    )
    async with _engine(sim, clock, injector) as engine:
        body = await engine.request_json("GET", "agentVep", CSDS, expect=dict)
    assert "baseURIs" in body
    assert sim.count("GET") == 1  # the two 503s never reached the server
    assert sim.requests[0].at == 15.0  # after the guide's 5 and 10 s pauses
    assert [r["kind"] for r in injector.report()] == ["status", "status"]


async def test_an_injected_4xx_is_not_retried_and_retry_after_is_honoured(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1,
        FaultRule(
            "rl", Status(429, retry_after=20), match=Match(path="*/a"), schedule=Schedule(0, 1)
        ),
        FaultRule("nf", Status(404), match=Match(path="*/baseURI.json")),
        clock=clock,
    )
    async with _engine(sim, clock, injector) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "agentVep", CSDS)
        assert info.value.status == 404
        assert len(info.value.attempts) == 1
        with pytest.raises(ClientStatusError):
            await engine.request("GET", "agentVep", "/api/a")
    assert clock.now() == 20.0  # the 429's Retry-After, not the schedule's 5 s


@pytest.mark.parametrize("where", ["injector", "simulator"])
@pytest.mark.parametrize(("retry_after", "pause"), [(1e6, 60.0), (10**7, 60.0), (1e-05, 5.0)])
async def test_a_scripted_retry_after_of_any_size_is_honoured_not_refused(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    where: str,
    retry_after: float,
    pause: float,
) -> None:
    # Before: written f"{ra:g}" ('1e+06', '1e-05'), which the client's parser refuses as no
    # delta-seconds: the retry ignored the Retry-After the test scripted.
    caplog.set_level(logging.WARNING, logger="le_transport")
    fault = Status(503, retry_after=retry_after)
    rules = [FaultRule("ra", fault, schedule=Schedule(0, 1))] if where == "injector" else []
    if where == "simulator":
        sim.faults.script("GET", CSDS, [fault])
    injector = FaultInjector.seeded(1, *rules, clock=clock)
    async with _engine(sim, clock, injector) as engine:
        resp = await engine.request("GET", "agentVep", CSDS)
    assert resp.status == 200
    # Up to the 60 s ceiling (or the schedule's 5 s when it asks for less).
    assert clock.now() == pytest.approx(pause)
    assert not [r for r in caplog.records if "invalid Retry-After" in r.getMessage()]


async def test_latency_is_spent_on_the_injected_clock(sim: Simulator, clock: VirtualClock) -> None:
    injector = FaultInjector.seeded(1, FaultRule("d", Delay(1500)), clock=clock)
    async with _engine(sim, clock, injector) as engine:
        await engine.request("GET", "agentVep", CSDS)
    assert clock.now() == pytest.approx(1.5)
    assert sim.requests[0].at == pytest.approx(1.5)


@pytest.mark.parametrize("fault", [Reset(), TruncatedBody(keep_bytes=4)], ids=lambda f: f.kind)
async def test_resets_and_truncations_are_connection_failures(
    sim: Simulator, clock: VirtualClock, fault: Reset | TruncatedBody
) -> None:
    injector = FaultInjector.seeded(1, FaultRule("f", fault), clock=clock)
    policy = RetryPolicy(pauses=(1.0,))
    async with _engine(sim, clock, injector, retry=policy) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "agentVep", CSDS)
    assert isinstance(info.value.last, ConnectionFailed)
    assert len(injector.report()) == 2


async def test_a_hang_ends_when_the_attempt_timeout_cancels_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(1, FaultRule("h", Hang(), schedule=Schedule(0, 1)), clock=clock)
    policy = RetryPolicy(pauses=(2.0,), attempt_timeout=10)
    async with _engine(sim, clock, injector, retry=policy) as engine:
        resp = await engine.request("GET", "agentVep", CSDS)
    assert resp.status == 200
    assert clock.now() == pytest.approx(12.0)
    assert resp.attempts[0].outcome.kind.value == "timeout"


async def test_a_hang_without_retries_raises_attempt_timeout(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(1, FaultRule("h", Hang()), clock=clock)
    async with _engine(sim, clock, injector, retry=RetryPolicy(pauses=(), attempt_timeout=3)) as e:
        with pytest.raises((AttemptTimeout, RetriesExhausted)):
            await e.request("GET", "agentVep", CSDS)


async def test_a_malformed_body_reaches_the_caller_as_a_decode_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(1, FaultRule("m", MalformedBody()), clock=clock)
    async with _engine(sim, clock, injector) as engine:
        with pytest.raises(ResponseDecodeError):
            await engine.request_json("GET", "agentVep", CSDS)
    assert sim.count("GET") == 1  # sent; the answer was corrupted on the way back


async def test_same_seed_same_faults_different_seed_different_faults(
    sim: Simulator, clock: VirtualClock
) -> None:
    async def run(seed: int) -> list[dict[str, Any]]:
        injector = FaultInjector.seeded(
            seed, FaultRule("coin", Status(503), p=0.5), clock=VirtualClock()
        )
        policy = RetryPolicy(pauses=(0.0,) * 5)
        async with _engine(sim, clock, injector, retry=policy) as engine:
            for _ in range(12):
                with contextlib.suppress(RetriesExhausted):
                    await engine.request("GET", "agentVep", CSDS)
        return [{k: v for k, v in r.items() if k != "at"} for r in injector.report()]

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first != other
    assert first


async def test_with_no_rules_requests_pass_straight_through(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector(clock=clock)
    assert not injector.active
    async with _engine(sim, clock, injector) as engine:
        await engine.request("GET", "agentVep", CSDS)
    assert injector.log == []
    # Hashable by identity (aiohttp caches middleware chains by them): two injectors alike
    # are two keys, each finding itself.
    twin = FaultInjector(clock=clock)
    assert injector != twin
    assert len({injector, twin, injector}) == 2
    assert {injector: "first", twin: "twin"}[injector] == "first"


async def test_a_websocket_handshake_can_be_rejected_through_the_session(
    sim: Simulator, clock: VirtualClock
) -> None:
    bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
    injector = FaultInjector.seeded(
        1,
        FaultRule("rej", WsRejectHandshake(502), unit="ws_session", schedule=Schedule(fail_next=1)),
        clock=clock,
    )
    async with _engine(sim, clock, injector) as engine:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await engine.session.ws_connect(sim.brand_socket_url(bearer))
        assert info.value.status == 502
        async with engine.session.ws_connect(sim.brand_socket_url(bearer)) as ws:
            await ws.send_json({"kind": "req", "id": "1", "type": ".GetClock", "body": {}})
            assert (await ws.receive_json())["code"] == 200
    # Refused on the client side, once the server had accepted the upgrade (so that an upgrade
    # the server refuses spends no session turn, as on the simulator): the server saw both
    # sockets, the first closed unused.
    assert sim.sockets.rejected == []
    assert len(sim.sockets.all) == 2


def test_the_socket_hook_answers_session_and_message_faults() -> None:
    injector = FaultInjector.seeded(
        3,
        FaultRule("drop", WsDrop(after_messages=5), unit="ws_session"),
        FaultRule("rl", Status(429), unit="ws_message", match=Match(path=".GetClock")),
    )
    opened = injector.socket_opened("/ws_api/account/1/messaging/brand/x")
    assert opened is not None
    assert opened.fault == WsDrop(after_messages=5)
    assert injector.message_received(".ams.aam.SubscribeExConversations") is None
    message = injector.message_received(".GetClock")
    assert message is not None
    assert message.fault == Status(429)


# -- slow bodies and quotas, client side ----------------------------------------------------------


async def test_an_injected_slow_body_arrives_whole_chunk_delay_apart_on_the_injectors_clock(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1, FaultRule("slow", SlowBody(chunk_bytes=200, chunk_delay_ms=750)), clock=clock
    )
    async with (
        aiohttp.ClientSession(middlewares=(injector,)) as http,
        http.get(sim.url + CSDS) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert clock.now() == 0.0
        pieces = [(clock.now(), chunk) async for chunk in resp.content.iter_any()]
    body = b"".join(chunk for _, chunk in pieces)
    assert resp.content_length == len(body)
    assert "baseURIs" in json.loads(body)
    assert [len(chunk) for _, chunk in pieces[:-1]] == [200] * (len(pieces) - 1)
    assert [t for t, _ in pieces] == [pytest.approx(0.75 * i) for i in range(len(pieces))]
    assert len(pieces) == (len(body) + 199) // 200 > 2
    assert [r["kind"] for r in injector.report()] == ["slow_body"]


async def test_an_injected_slow_body_past_the_attempt_timeout_is_retried(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1,
        FaultRule(
            "slow", SlowBody(chunk_bytes=100, chunk_delay_ms=4000), schedule=Schedule(fail_next=1)
        ),
        clock=clock,
    )
    policy = RetryPolicy(pauses=(2.0,), attempt_timeout=10)
    async with _engine(sim, clock, injector, retry=policy) as engine:
        resp = await engine.request("GET", "agentVep", CSDS)
    assert "baseURIs" in resp.json(dict)
    assert [a.outcome.kind.value for a in resp.attempts] == ["timeout", "response"]
    assert [r.at for r in sim.requests] == [0.0, 12.0]  # the server answered both at once


async def test_an_abandoned_slow_body_leaves_no_task_feeding_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1, FaultRule("slow", SlowBody(chunk_bytes=10, chunk_delay_ms=60_000)), clock=clock
    )
    async with aiohttp.ClientSession(middlewares=(injector,)) as http:
        async with http.get(sim.url + CSDS) as resp:
            assert len(await resp.content.read(10)) == 10
        # Left early: the response was released, its feeder stopped (the leak check agrees).
        with pytest.raises(aiohttp.ClientConnectionError):
            await resp.content.read(10)
    assert clock.now() == 0.0


async def test_an_injected_quota_refuses_without_sending_and_its_retry_after_is_honoured(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1,
        FaultRule("q", Quota(limit=2, window_ms=20_000), match=Match("GET", "*/baseURI.json")),
        clock=clock,
    )
    async with _engine(sim, clock, injector) as engine:
        for _ in range(3):
            await engine.request("GET", "agentVep", CSDS)
            await clock.sleep(1.5)
    # The third call was refused at 3 s (Retry-After: 17) and got in at 20 s.
    assert [r.at for r in sim.requests] == [0.0, 1.5, 20.0]
    assert [d.outcome for d in injector.log] == ["admitted", "admitted", "inject", "admitted"]
    (refusal,) = injector.report()
    assert (refusal["kind"], refusal["at"]) == ("quota", 3.0)


async def test_an_injected_quota_answer_carries_its_status_and_whole_seconds_retry_after(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1, FaultRule("q", Quota(limit=1, window_ms=1_250, status=503)), clock=clock
    )
    async with aiohttp.ClientSession(middlewares=(injector,)) as http:
        for expected in ((200, None), (503, "2")):
            async with http.get(sim.url + CSDS) as resp:
                await resp.read()
                assert (resp.status, resp.headers.get("Retry-After")) == expected
    assert sim.count("GET") == 1


# -- bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [sys.maxsize + 1, 2**63, 10**30])
def test_a_record_bound_past_sys_maxsize_is_refused_when_the_injector_is_made(bound: int) -> None:
    # A deque that long cannot exist: accepted, the bound failed with OverflowError at the
    # first request the injector saw.
    with pytest.raises(ConfigurationError, match=r"FaultInjector\.max_records .*sys\.maxsize"):
        FaultInjector(max_records=bound)
    with pytest.raises(ConfigurationError, match=r"FaultInjector\.max_records .*sys\.maxsize"):
        FaultInjector.seeded(1, FaultRule("r", Reset()), max_records=bound)


async def test_an_injector_bounded_at_sys_maxsize_records_what_it_injects(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1,
        FaultRule("s", Status(503), schedule=Schedule(fail_next=1)),
        clock=clock,
        max_records=sys.maxsize,
    )
    async with _engine(sim, clock, injector) as engine:
        await engine.request("GET", "agentVep", CSDS)
    assert [r["kind"] for r in injector.report()] == ["status"]


async def test_a_socket_path_template_keeps_its_bearer_out_of_the_injectors_records(
    serve: ServerFactory, clock: VirtualClock, secret_values: set[str]
) -> None:
    # A {bearer} anywhere but after /brand/: the upgrade's real path shows it, and the
    # injector matched and recorded that path (its report, its log line). The server accepts
    # the upgrade: a session is decided only for an upgrade the server accepted.
    bearer = "custom-path-bearer-5d1e"
    secret_values.add(bearer)

    app = web.Application()
    app.router.add_get("/ws/{bearer}/events", quiet_peer)
    host = await serve(app)
    injector = FaultInjector.seeded(
        1,
        FaultRule(
            "rej",
            WsRejectHandshake(502),
            unit="ws_session",
            match=Match(path="/ws/bearer/events"),
        ),
        clock=clock,
    )
    async with Engine(
        {"agentVep": host},
        scheme="http",
        clock=clock,
        wire_middlewares=[injector],
        auth=StaticBearer(bearer),
    ) as engine:
        ws = await engine.websocket("agentVep", "/ws/{bearer}/events")
        for _ in range(20):
            if injector.log:
                break
            await clock.sleep(0.5)
        await ws.close()
    assert injector.log, "the upgrade was decided on"
    decision = injector.log[0]
    assert decision.outcome == "inject"
    assert decision.path == "/ws/bearer/events"
    assert bearer not in json.dumps(injector.report())


# -- what the constructor takes -------------------------------------------------------------------


async def test_an_injector_given_a_list_of_rules_applies_them_as_a_plan(
    sim: Simulator, clock: VirtualClock
) -> None:
    # Before: accepted as is, and the first request failed with "AttributeError: 'list'
    # object has no attribute 'rules'".
    injector = FaultInjector(
        [FaultRule("s", Status(503), schedule=Schedule(fail_next=1))], clock=clock
    )
    assert injector.plan == FaultPlan(seed=0, rules=(injector.plan.rules[0],))
    async with _engine(sim, clock, injector) as engine:
        resp = await engine.request("GET", "agentVep", CSDS)
    assert resp.status == 200
    assert injector.injected_counts() == {"s": 1}
    # And with seeded, the rules in one list as well as one by one.
    rules = [FaultRule("a", Reset()), FaultRule("b", Status(500))]
    assert FaultInjector.seeded(4, rules).plan == FaultInjector.seeded(4, *rules).plan


@pytest.mark.parametrize(
    ("plan", "said"),
    [
        (FaultRule("r", Reset()), r"got FaultRule \(one rule: put it in a list\)"),
        (
            {"seed": 1, "rules": []},
            r"got dict \(a plan's JSON form: load it with FaultPlan\.from_dict\)",
        ),
        ([FaultRule("r", Reset()), "503"], "got a list holding a str"),
        ("plan.json", "got str"),
    ],
    ids=["a-rule", "json-dict", "list-with-a-str", "a-path"],
)
def test_an_injector_refuses_a_plan_that_is_not_one_saying_what_it_takes(
    plan: object, said: str
) -> None:
    wants = r"FaultInjector\.plan must be a FaultPlan or a list of FaultRule, "
    with pytest.raises(ConfigurationError, match=wants + said):
        FaultInjector(plan)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("clock", "said"),
    [
        ("virtual", "Clock, got str"),
        (5, "Clock, got int"),
        (VirtualClock, "Clock, got the class VirtualClock"),
    ],
    ids=["str", "int", "a-class"],
)
def test_an_injector_refuses_a_clock_that_is_not_one(clock: object, said: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"FaultInjector\.clock must be (a )?{said}"):
        FaultInjector(clock=clock)  # type: ignore[arg-type]


def test_a_plan_given_its_rules_in_the_seeds_place_is_refused() -> None:
    # FaultPlan([rule]) made a plan with no rules, whose injector injected nothing.
    with pytest.raises(
        ConfigurationError, match=r"FaultPlan\.seed must be an int, got list \(rules go in rules="
    ):
        FaultPlan([FaultRule("r", Reset())])  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match=r"FaultPlan\.rules must be a list of FaultRule, got FaultRule"
    ):
        FaultPlan(rules=FaultRule("r", Reset()))  # type: ignore[arg-type]


async def test_a_simulator_takes_a_list_of_rules_as_its_plan_and_refuses_anything_else(
    clock: VirtualClock,
) -> None:
    rule = FaultRule("r", Status(503))
    async with Simulator(clock=clock, plan=[rule]) as s:
        assert s.faults.plan == FaultPlan(rules=(rule,))
        s.faults.load([FaultRule("q", Reset())])
        assert [r.id for r in s.faults.plan.rules] == ["q"]
        with pytest.raises(ConfigurationError, match=r"SimFaults\.load\.plan must be a FaultPlan"):
            s.faults.load(rule)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Simulator\.plan must be a FaultPlan"):
        Simulator(clock=clock, plan=rule)  # type: ignore[arg-type]


# -- the clock ------------------------------------------------------------------------------------

_NO_CLOCK = "FaultInjector was given no clock="


async def test_an_injector_without_a_clock_takes_its_engines_virtual_clock(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the injector kept the real clock and waited 3 real seconds, while the engine's
    # 10 s attempt timeout jumped ahead on virtual time: an AttemptTimeout (and a warning).
    injector = FaultInjector.seeded(1, FaultRule("d", Delay(3000), schedule=Schedule(0, 1)))
    policy = RetryPolicy(pauses=(), attempt_timeout=10)
    with caplog.at_level(logging.WARNING, logger="le_transport.chaos"):
        async with _engine(sim, clock, injector, retry=policy) as engine:
            resp = await engine.request("GET", "agentVep", CSDS)
    assert injector.clock is clock
    assert resp.status == 200
    assert len(resp.attempts) == 1
    # The delay was slept on the virtual clock: 3 virtual seconds, then the request was sent.
    assert 3.0 in clock.sleeps
    assert clock.now() == pytest.approx(3.0)
    assert sim.requests[0].at == pytest.approx(3.0)
    assert [(r["kind"], r["at"]) for r in injector.report()] == [("delay", 0.0)]
    assert not [r for r in caplog.records if r.getMessage().startswith(_NO_CLOCK)]


async def test_an_injector_taking_its_engines_clock_counts_time_windows_from_the_engine(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector([FaultRule("late", Status(404), schedule=Schedule(after_ms=2000))])
    await clock.sleep(50.0)  # the injector was made at real time, the engine at virtual 50 s
    async with _engine(sim, clock, injector) as engine:
        await engine.request("GET", "agentVep", CSDS)  # virtual 50 s: not yet in the window
        await clock.sleep(3.0)
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "agentVep", CSDS)  # 53 s: 3 s into the plan's run
    assert info.value.status == 404
    assert injector.injected_counts() == {"late": 1}


async def test_an_injector_given_a_clock_keeps_it_beside_an_engine_on_another(
    sim: Simulator, clock: VirtualClock
) -> None:
    own = VirtualClock(start=100.0)
    injector = FaultInjector.seeded(
        1, FaultRule("s", Status(503), schedule=Schedule(fail_next=1)), clock=own
    )
    async with _engine(sim, clock, injector) as engine:
        assert injector.clock is own
        await engine.request("GET", "agentVep", CSDS)
    assert [r["at"] for r in injector.report()] == [100.0]  # decided on its own clock


@pytest.mark.parametrize("given", ["the-engines", "real"])
async def test_an_injector_given_a_clock_does_not_warn(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, given: str
) -> None:
    chosen = clock if given == "the-engines" else RealClock()
    injector = FaultInjector.seeded(
        1, FaultRule("s", Status(503), schedule=Schedule(fail_next=1)), clock=chosen
    )
    with caplog.at_level(logging.WARNING, logger="le_transport.chaos"):
        async with _engine(sim, clock, injector) as engine:
            assert injector.clock is chosen
            await engine.request("GET", "agentVep", CSDS)
    assert not [r for r in caplog.records if r.getMessage().startswith(_NO_CLOCK)]


async def test_an_injector_without_a_clock_on_a_plain_session_beside_a_virtual_clock_warns_once(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # No engine gives it its clock: it runs on real time, and says so once.
    injector = FaultInjector([FaultRule("s", Status(503), schedule=Schedule(fail_next=2))])
    clock.now()  # the simulator's VirtualClock, read on this loop: in use here
    with caplog.at_level(logging.WARNING, logger="le_transport.chaos"):
        async with aiohttp.ClientSession(middlewares=(injector,)) as session:
            for _ in range(3):
                async with session.get(f"{sim.url}{CSDS}") as resp:
                    await resp.read()
    assert injector.injected_counts() == {"s": 2}
    assert injector.clock is not clock
    warned = [r for r in caplog.records if r.getMessage().startswith(_NO_CLOCK)]
    assert len(warned) == 1
    assert warned[0].levelno == logging.WARNING
    assert "clock=clock" in warned[0].getMessage()


async def test_an_injector_without_a_clock_on_real_time_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    injector = FaultInjector([FaultRule("s", Status(503), schedule=Schedule(fail_next=1))])
    with caplog.at_level(logging.WARNING, logger="le_transport.chaos"):
        async with (
            Simulator() as s,
            Engine(s.domains, scheme="http", wire_middlewares=[injector]) as engine,
        ):
            await engine.request("GET", "agentVep", CSDS)
    assert injector.injected_counts() == {"s": 1}
    assert not [r for r in caplog.records if r.getMessage().startswith(_NO_CLOCK)]


def test_an_injector_shares_one_engines_time_and_refuses_another() -> None:
    domains = {"svc": "127.0.0.1:1"}
    first = VirtualClock()
    injector = FaultInjector([FaultRule("s", Status(503))])
    Engine(domains, clock=first, wire_middlewares=[injector])
    Engine(domains, clock=first, outer_middlewares=[injector])  # the same time: shared
    for other in (VirtualClock(), None):  # another virtual clock; the real one
        with pytest.raises(ConfigurationError, match=r"keeps other time.*its own FaultInjector"):
            Engine(domains, clock=other, wire_middlewares=[injector])
    assert injector.clock is first
    # Engines on real time keep the same time: they share an injector freely.
    real = FaultInjector([FaultRule("s", Status(503))])
    Engine(domains, wire_middlewares=[real])
    Engine(domains, clock=RealClock(), wire_middlewares=[real])
    # An explicit clock wins over every engine's, and is never refused.
    given = FaultInjector([FaultRule("s", Status(503))], clock=first)
    for other in (VirtualClock(), None):
        Engine(domains, clock=other, wire_middlewares=[given])
    assert given.clock is first


def test_an_injector_that_decided_on_real_time_refuses_a_virtual_engine() -> None:
    domains = {"svc": "127.0.0.1:1"}
    injector = FaultInjector([FaultRule("m", Status(503), unit="ws_message")])
    assert injector.message_sent("ping") is not None  # decided on the real clock
    with pytest.raises(ConfigurationError, match=r"already made 1 decision.*Make the engine"):
        Engine(domains, clock=VirtualClock(), wire_middlewares=[injector])
    assert type(injector.clock) is not VirtualClock
    Engine(domains, wire_middlewares=[injector])  # real time still: taken, nothing moves
    with pytest.raises(ConfigurationError, match=r"bind_clock\.clock must be a Clock"):
        injector.bind_clock(VirtualClock)  # type: ignore[arg-type]


async def test_the_injector_and_the_simulator_report_a_rule_shadowed_by_an_earlier_one(
    sim: Simulator, clock: VirtualClock
) -> None:
    rules = [
        FaultRule(
            "reset-first", Reset(), match=Match(path="*/baseURI.json"), schedule=Schedule(0, 1)
        ),
        FaultRule("503s", Status(503), match=Match(path="*/baseURI.json"), schedule=Schedule(0, 1)),
    ]
    sim.faults.load(rules)
    injector = FaultInjector(rules, clock=clock)
    async with _engine(sim, clock, injector) as engine:
        await engine.request("GET", "agentVep", CSDS)
    for counts in (injector.rule_counts(), sim.faults.rule_counts()):
        assert counts["503s"].always_shadowed
        assert (counts["503s"].shadowed, counts["reset-first"].injected) == (1, 1)
