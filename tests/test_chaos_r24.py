"""The fault vocabulary and the client-side injector: plans that could never fire are refused,
and faults do what their docs say."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from le_transport import Engine, SocketRequestError
from le_transport.chaos import (
    FaultInjector,
    FaultPlan,
    FaultRule,
    Match,
    Quota,
    Schedule,
    Status,
    WsAppError,
    WsClose,
    WsDrop,
    fault_from_dict,
)
from le_transport.chaos.plan import FaultRun
from le_transport.chaos.ws import FaultySocket
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    publish,
    states,
)

__all__ = ["no_open_connections", "states"]

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


# -- a path glob no URL path can match ----------------------------------------------------------


@pytest.mark.parametrize("unit", ["request", "ws_session"])
def test_an_empty_path_glob_is_refused_on_a_unit_matched_on_the_url_path(unit: str) -> None:
    # Before: accepted, and never fired (a URL path is at least "/"): a chaos test passed
    # having injected nothing.
    fault = Status(503) if unit == "request" else WsClose(4401)
    with pytest.raises(ConfigurationError, match=r"Match\(path=''\).*starts with '/'"):
        FaultRule("r", fault, unit=unit, match=Match(path=""))
    given: object = 503 if unit == "request" else {"kind": "ws_close", "code": 4401}
    plan = {"rules": [{"id": "r", "unit": unit, "match": {"path": ""}, "fault": given}]}
    with pytest.raises(ConfigurationError, match=r"Match\(path=''\)"):
        FaultPlan.from_dict(plan)
    # A message is matched on its type, which may be empty.
    FaultRule("r", Status(503), unit="ws_message", match=Match(path=""))


# -- a quota's window, to the microsecond ------------------------------------------------------


@pytest.mark.parametrize("start", [0.1, 0.3, 1.1, 0.7])
def test_a_request_one_quota_window_after_the_admitted_one_takes_its_slot(start: float) -> None:
    # Before: admitted at 0.1 s, a request at 0.1 + 5 s was refused (5.1 - 5.0 is
    # 0.09999999999999964, before 0.1): with a Retry-After of 1, a second more.
    run = FaultRun(FaultPlan(rules=[FaultRule("q", Quota(limit=1, window_ms=5000))]), origin=0.0)
    assert run.decide("request", method="GET", path="/x", at=start) is None
    refused = run.decide("request", method="GET", path="/x", at=start + 1)
    assert refused is not None
    assert refused.retry_after == 4
    assert run.decide("request", method="GET", path="/x", at=start + 1 + 4) is None
    assert [d.outcome for d in run.log] == ["admitted", "inject", "admitted"]


async def test_a_client_honouring_an_injected_quotas_retry_after_gets_in_at_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1, FaultRule("q", Quota(limit=1, window_ms=10_000), match=Match("GET", CSDS)), clock=clock
    )
    async with Engine(
        sim.domains, scheme="http", clock=clock, wire_middlewares=[injector]
    ) as engine:
        await clock.sleep(0.1)
        await engine.request("GET", "agentVep", CSDS)
        await clock.sleep(1)
        # Refused at 1.1 s with Retry-After: 9; the retry at 10.1 s is one window after 0.1 s.
        await engine.request("GET", "agentVep", CSDS)
    assert [r.at for r in sim.requests] == [pytest.approx(0.1), pytest.approx(10.1)]
    assert [d.outcome for d in injector.log] == ["admitted", "inject", "admitted"]


# -- a plan made in Python with an int too long to write ---------------------------------------

_BIG = 10**5000
#: Keys a plan made in Python may hold (its type says str; a caller's dict need not).
_BIG_KEY: Any = _BIG


@pytest.mark.parametrize(
    ("make", "wants"),
    [
        (lambda: fault_from_dict({"kind": _BIG}), "unknown fault kind an int of 16610 bits"),
        (lambda: fault_from_dict({"kind": "status", "code": 503, _BIG_KEY: 1}), "no parameter"),
        (lambda: FaultRule.from_dict({"id": "a", "fault": 503, _BIG_KEY: 1}), "unknown field"),
        (lambda: FaultPlan.from_dict({_BIG_KEY: 1}), "unknown field"),
        (
            lambda: FaultRule.from_dict({"id": "a", "fault": 503, "match": {_BIG_KEY: 1}}),
            "unknown field",
        ),
    ],
    ids=["kind", "fault-key", "rule-key", "plan-key", "match-key"],
)
def test_an_int_too_long_to_write_as_a_kind_or_a_key_is_refused_by_its_size(
    make: Callable[[], object], wants: str
) -> None:
    # Before: str() or repr() of it raised a bare ValueError (past 4300 digits) while the
    # error message was being written.
    with pytest.raises(ConfigurationError, match=wants) as info:
        make()
    assert "an int of 16610 bits" in str(info.value)


# -- several injectors among an engine's middlewares --------------------------------------------

PUBLISH = ".ams.ms.PublishEvent"


def _http_only(clock: VirtualClock) -> FaultInjector:
    return FaultInjector.seeded(
        1, FaultRule("h", Status(503), match=Match(path="/nowhere")), clock=clock
    )


def _app_error(rule_id: str, code: int, type_: str, clock: VirtualClock) -> FaultInjector:
    rule = FaultRule(rule_id, WsAppError(code), unit="ws_message", match=Match(path=type_))
    return FaultInjector.seeded(1, rule, clock=clock)


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize("order", ["http-first", "socket-first"])
async def test_a_second_injectors_message_rules_strike_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog, order: str
) -> None:
    # Before: the dialer had the first active injector wrap the socket; listed first, one with
    # HTTP rules only left it unwrapped, and the socket injector's rules were never asked.
    http, sock = _http_only(clock), _app_error("m", 500, ".GetClock", clock)
    middlewares = [http, sock] if order == "http-first" else [sock, http]
    async with agent_engine(sim, clock, states, wire_middlewares=middlewares) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError, match="code 500"):
            await ws.request(".GetClock", {})
    assert sock.injected_counts() == {"m": 1}


@pytest.mark.usefixtures("no_open_connections")
async def test_a_second_injectors_session_fault_decided_at_the_upgrade_is_applied(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Before: the outer injector's decision (none) took the place of the inner one's: its drop
    # was counted as injected and never struck.
    drop = FaultInjector.seeded(
        1,
        FaultRule("d", WsDrop(), unit="ws_session", schedule=Schedule(fail_next=1)),
        clock=clock,
    )
    async with agent_engine(
        sim, clock, states, wire_middlewares=[_http_only(clock), drop]
    ) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await ws.request(".GetClock", {})
    assert drop.injected_counts() == {"d": 1}
    assert len(sim.sockets.all) == 2  # dropped as it opened, then opened again


@pytest.mark.usefixtures("no_open_connections")
async def test_two_injectors_with_socket_rules_both_strike_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    outer = _app_error("clock", 500, ".GetClock", clock)
    inner = _app_error("publish", 429, PUBLISH, clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[outer, inner]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError, match="code 500"):
            await ws.request(".GetClock", {})
        with pytest.raises(SocketRequestError, match="code 429"):
            await ws.request(PUBLISH, publish("one"))
        # The socket layer still reads the TCP transport under both wrappers.
        wire = ws._conn.ws if ws._conn is not None else None
        assert isinstance(wire, FaultySocket)
        assert isinstance(wire.wrapped, aiohttp.ClientWebSocketResponse)
    assert outer.injected_counts() == {"clock": 1}
    assert inner.injected_counts() == {"publish": 1}
