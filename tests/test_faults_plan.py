"""The fault vocabulary: schedules, sequences, seeded draws, JSON round trip, validation."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport.chaos import (
    HTTP_FAULTS,
    UNIT_KINDS,
    UNITS,
    WS_FAULTS,
    WS_MESSAGE_FAULTS,
    WS_OUTBOUND_FAULTS,
    Delay,
    EmptyResponse,
    Fault,
    FaultPlan,
    FaultRule,
    FaultRun,
    Hang,
    MalformedBody,
    Match,
    Quota,
    Reset,
    RuleCounts,
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
    fault_from_dict,
    fault_to_dict,
)
from le_transport.chaos.injector import _SOCKET_KINDS
from le_transport.chaos.plan import (
    _KINDS,
    MAX_CHUNK_BYTES,
    MAX_FAULT_MS,
    RecordLog,
    SharedBound,
)
from le_transport.errors import ConfigurationError
from le_transport.policies.retry_after import MAX_RETRY_AFTER_CHARS, parse_retry_after
from le_transport.testing import VirtualClock

ALL_KINDS: list[Fault] = [
    Status(503, retry_after=5, body='{"e":1}', headers={"X-Test": "1"}),
    Status(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
    Delay(250, jitter_ms=50),
    Reset(),
    Hang(),
    Hang(duration_ms=1000),
    TruncatedBody(keep_bytes=10),
    MalformedBody(),
    WsRejectHandshake(502, "bad gateway"),
    WsClose(4401, "token expired", after_messages=3),
    WsDrop(after_messages=2),
    WsSilence(after_messages=1),
]


def _unit_of(fault: Fault) -> str:
    """The first unit that applies ``fault``'s kind: a rule on any other could never fire."""
    return next(unit for unit in UNITS if fault.kind in UNIT_KINDS[unit])


def _outcomes(run: FaultRun, n: int, path: str = "/api/x") -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        injection = run.decide("request", method="GET", path=path)
        out.append(None if injection is None else injection.fault.kind)
    return out


def test_skip_first_and_fail_next_make_a_window_over_matching_requests() -> None:
    rule = FaultRule("w", Status(503), schedule=Schedule(skip_first=1, fail_next=2))
    run = FaultRun(FaultPlan(rules=[rule]))
    assert _outcomes(run, 5) == [None, "status", "status", None, None]


def test_a_sequence_names_each_matching_request_then_passes() -> None:
    rule = FaultRule("s", sequence=[503, 503, 200, Reset()])
    run = FaultRun(FaultPlan(rules=[rule]))
    assert _outcomes(run, 6) == ["status", "status", None, "reset", None, None]


def test_match_filters_by_method_path_glob_and_service() -> None:
    m = Match(method="get", path="/api/account/*/users", service="accountConfigReadOnly")
    assert m.matches("GET", "/api/account/1/users", "accountConfigReadOnly")
    assert not m.matches("POST", "/api/account/1/users", "accountConfigReadOnly")
    assert not m.matches("GET", "/api/account/1/skills", "accountConfigReadOnly")
    assert not m.matches("GET", "/api/account/1/users", "agentVep")
    assert Match().matches("DELETE", "/anything/at/all")


def test_only_rules_of_the_asked_unit_and_kinds_are_consulted() -> None:
    plan = FaultPlan(
        rules=[
            FaultRule("ws", WsDrop(), unit="ws_session"),
            FaultRule("http", Reset()),
        ]
    )
    run = FaultRun(plan)
    injection = run.decide("request", method="GET", path="/x", kinds=frozenset({"status"}))
    assert injection is None
    injection = run.decide("ws_session", method="GET", path="/ws_api/x")
    assert injection is not None
    assert injection.rule_id == "ws"


def test_the_decision_log_records_every_matching_rule_and_redacts_bearers() -> None:
    plan = FaultPlan(
        rules=[FaultRule("a", Status(503)), FaultRule("b", Reset(), schedule=Schedule(1))]
    )
    run = FaultRun(plan)
    run.decide("request", method="GET", path="/ws_api/account/1/messaging/brand/SECRETBEARER")
    assert [(d.rule_id, d.outcome) for d in run.log] == [("a", "inject"), ("b", "pass")]
    assert "SECRETBEARER" not in json.dumps([d.to_dict() for d in run.log])


@given(seed=st.integers(0, 2**32), p=st.floats(0.05, 0.95))
def test_same_seed_gives_the_same_decisions(seed: int, p: float) -> None:
    """Invariant: a plan's decisions are a function of the plan alone."""
    plan = FaultPlan(seed=seed, rules=[FaultRule("r", Status(503), p=p)])
    assert _outcomes(FaultRun(plan), 50) == _outcomes(FaultRun(plan), 50)


def test_different_seeds_give_different_decisions() -> None:
    def outcomes(seed: int) -> list[str | None]:
        plan = FaultPlan(seed=seed, rules=[FaultRule("r", Status(503), p=0.5)])
        return _outcomes(FaultRun(plan), 64)

    assert outcomes(1) != outcomes(2)
    assert 10 < outcomes(1).count("status") < 54


@given(seed=st.integers(0, 2**32))
def test_adding_a_rule_never_shifts_another_rules_draws(seed: int) -> None:
    """Invariant: a rule's draws depend on (seed, rule id, its own unit count) only."""
    mine = FaultRule("mine", Status(503), match=Match(path="/a"), p=0.5)
    other = FaultRule("other", Reset(), match=Match(path="/*"), p=0.5)
    alone = FaultRun(FaultPlan(seed=seed, rules=[mine]))
    together = FaultRun(FaultPlan(seed=seed, rules=[other, mine]))
    for path in ("/a", "/b") * 10:
        alone.decide("request", method="GET", path=path)
        together.decide("request", method="GET", path=path)

    def verdicts(run: FaultRun) -> list[tuple[int, bool]]:
        return [(d.index, d.outcome != "skipped") for d in run.log if d.rule_id == "mine"]

    assert verdicts(alone) == verdicts(together)


def test_a_plan_survives_a_json_round_trip() -> None:
    plan = FaultPlan(
        seed=42,
        rules=[
            *(
                FaultRule(
                    f"r{i}",
                    fault,
                    match=Match("GET", "/api/*", "agentVep"),
                    unit=_unit_of(fault),
                    p=0.25,
                )
                for i, fault in enumerate(ALL_KINDS)
            ),
            FaultRule("seq", sequence=[Status(503), None, Reset()], unit="request"),
            FaultRule("win", WsClose(4407), unit="ws_session", schedule=Schedule(2, 3)),
        ],
    )
    text = json.dumps(plan.to_dict())
    assert FaultPlan.from_dict(json.loads(text)) == plan


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (1e6, "1000000"),  # before: '1e+06', which the client's parser refuses
        (10**7, "10000000"),
        (1e22, "10000000000000000000000"),
        (1e-05, "0.00001"),  # before: '1e-05'
        (2.5, "2.5"),
        (30, "30"),
        (0, "0"),
        (0.0, "0"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ],
)
def test_a_status_writes_its_retry_after_as_plain_digits(
    retry_after: float | str, header: str
) -> None:
    assert Status(503, retry_after=retry_after).response_headers()["Retry-After"] == header


@given(
    st.one_of(
        st.floats(min_value=0, max_value=1e70, allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=10**70),
    )
)
def test_a_numeric_retry_after_is_sent_as_delta_seconds_that_read_back_as_itself(
    retry_after: float,
) -> None:
    refused = ""
    try:
        status = Status(503, retry_after=retry_after)
    except ConfigurationError as exc:
        refused = str(exc)
    if refused:
        # Only a value no client would read: longer than the parser takes, as plain digits.
        assert f"over {MAX_RETRY_AFTER_CHARS}" in refused
        # (Anything from 1e-30 to 1e63 fits: 17 significant digits at most, 63 whole ones.)
        assert retry_after >= 1e63 or 0 < retry_after < 1e-30
        return
    header = status.response_headers()["Retry-After"]
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", header)
    assert parse_retry_after(header, now_epoch=0.0) == float(retry_after)


def test_status_shorthand_in_json_means_a_status_or_a_pass() -> None:
    assert fault_from_dict(503) == Status(503)
    assert fault_from_dict(200) is None
    assert fault_from_dict(None) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "explode"}, "unknown fault kind"),
        ({"kind": "status", "code": 99}, "Status.code"),
        ({"kind": "status", "code": 503, "colour": "red"}, "no parameter"),
        ({"kind": "ws_close", "code": 1006}, "sendable"),
        ({"kind": "delay", "delay_ms": -1}, "delay_ms"),
    ],
)
def test_invalid_faults_are_refused_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        fault_from_dict(data)  # type: ignore[arg-type]


def test_invalid_rules_and_plans_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        FaultRule("x")
    with pytest.raises(ConfigurationError, match="p must be"):
        FaultRule("x", Reset(), p=1.5)
    with pytest.raises(ConfigurationError, match="unit"):
        FaultRule("x", Reset(), unit="packet")
    with pytest.raises(ConfigurationError, match="two rules"):
        FaultPlan(rules=[FaultRule("x", Reset()), FaultRule("x", Reset())])
    with pytest.raises(ConfigurationError, match="unknown field"):
        FaultRule.from_dict({"id": "x", "fault": 503, "when": "now"})


_faults = st.one_of(
    st.builds(
        Status,
        code=st.integers(200, 599),
        retry_after=st.one_of(st.none(), st.integers(0, 3600)),
        body=st.one_of(st.none(), st.text(max_size=20)),
    ),
    st.builds(Delay, delay_ms=st.integers(0, 10**6), jitter_ms=st.integers(0, 1000)),
    st.just(Reset()),
    st.builds(Hang, duration_ms=st.one_of(st.none(), st.integers(0, 10**6))),
    st.builds(TruncatedBody, keep_bytes=st.integers(0, 10**6)),
    st.builds(
        WsClose, code=st.sampled_from([1000, 1001, 1011, 4401, 4407]), reason=st.text(max_size=10)
    ),
    st.builds(WsDrop, after_messages=st.integers(0, 100)),
    st.builds(WsSilence, after_messages=st.integers(0, 100)),
)


@given(
    seed=st.integers(0, 2**63),
    faults=st.lists(_faults, max_size=6),
    p=st.floats(0, 1),
    skip=st.integers(0, 10),
    # for_ms from 1: an empty window never fires, and is refused.
    window=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.integers(1, 10**6))),
)
def test_every_plan_survives_a_json_round_trip(
    seed: int, faults: list[Fault], p: float, skip: int, window: tuple[int, int] | None
) -> None:
    """Invariant: from_dict(json(to_dict(plan))) == plan, for every plan."""
    plan = FaultPlan(
        seed=seed,
        rules=[
            FaultRule(
                f"r{i}",
                f,
                unit=_unit_of(f),
                p=p,
                schedule=Schedule(
                    skip_first=skip,
                    after_ms=None if window is None else window[0],
                    for_ms=None if window is None else window[1],
                ),
            )
            for i, f in enumerate(faults)
        ],
    )
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_time_window_puts_a_rule_in_force_only_between_after_and_after_plus_for() -> None:
    rule = FaultRule("outage", Status(503), schedule=Schedule(after_ms=10_000, for_ms=60_000))
    run = FaultRun(FaultPlan(rules=[rule]), origin=100.0)

    def at(t: float) -> str | None:
        injection = run.decide("request", method="GET", path="/x", at=t)
        return None if injection is None else injection.fault.kind

    assert [at(100.0), at(109.9), at(110.0), at(169.9), at(170.0)] == [
        None,
        None,
        "status",
        "status",
        None,
    ]


def test_count_and_time_windows_must_both_hold() -> None:
    rule = FaultRule("r", Reset(), schedule=Schedule(skip_first=1, fail_next=1, after_ms=0))
    run = FaultRun(FaultPlan(rules=[rule]))
    kinds = [run.decide("request", method="GET", path="/", at=float(t)) for t in range(3)]
    assert [k is not None for k in kinds] == [False, True, False]


async def test_a_simulated_outage_window_runs_on_the_virtual_clock(clock: VirtualClock) -> None:
    from le_transport import Engine
    from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator

    plan = FaultPlan(
        rules=[FaultRule("down", Status(503), schedule=Schedule(after_ms=0, for_ms=12_000))]
    )
    async with (
        Simulator(clock=clock, plan=plan) as sim,
        Engine(sim.domains, scheme="http", clock=clock) as engine,
    ):
        await engine.request(
            "GET", "agentVep", f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"
        )
    assert [r.fault for r in sim.requests] == ["status", "status", None]
    assert [r.at for r in sim.requests] == [0.0, 5.0, 15.0]


# -- slow bodies, quotas, socket application errors ------------------------------------------

NEW_KINDS: list[tuple[Fault, str]] = [
    (SlowBody(chunk_bytes=64, chunk_delay_ms=1500), "request"),
    (Quota(limit=5, window_ms=10_000), "request"),
    (Quota(limit=1, window_ms=250.5, status=503), "request"),
    (WsAppError(), "ws_message"),
    (WsAppError(500, body={"msg": "boom", "details": [1, 2]}), "ws_message"),
    (WsAppError(429, body="slow down"), "ws_message"),
]


def test_slow_body_quota_and_ws_app_error_survive_a_json_round_trip() -> None:
    plan = FaultPlan(
        seed=9,
        rules=[
            FaultRule(f"n{i}", fault, unit=unit, match=Match(path="*"), p=0.5)
            for i, (fault, unit) in enumerate(NEW_KINDS)
        ],
    )
    text = json.dumps(plan.to_dict())
    assert FaultPlan.from_dict(json.loads(text)) == plan
    assert json.loads(text)["rules"][1]["fault"] == {
        "kind": "quota",
        "limit": 5,
        "window_ms": 10_000,
        "status": 429,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "slow_body", "chunk_bytes": 0, "chunk_delay_ms": 10}, "chunk_bytes"),
        ({"kind": "slow_body", "chunk_bytes": 2**40, "chunk_delay_ms": 10}, "chunk_bytes"),
        ({"kind": "slow_body", "chunk_bytes": 1.5, "chunk_delay_ms": 10}, "chunk_bytes"),
        ({"kind": "slow_body", "chunk_bytes": True, "chunk_delay_ms": 10}, "chunk_bytes"),
        ({"kind": "slow_body", "chunk_bytes": 8, "chunk_delay_ms": -1}, "chunk_delay_ms"),
        ({"kind": "slow_body", "chunk_bytes": 8, "chunk_delay_ms": float("nan")}, "chunk_delay_ms"),
        ({"kind": "slow_body", "chunk_bytes": 8, "chunk_delay_ms": float("inf")}, "chunk_delay_ms"),
        ({"kind": "slow_body", "chunk_bytes": 8, "chunk_delay_ms": 1e12}, "a day"),
        ({"kind": "slow_body", "chunk_bytes": 8}, "chunk_delay_ms"),
        ({"kind": "quota", "limit": 0, "window_ms": 1000}, "Quota.limit"),
        ({"kind": "quota", "limit": -3, "window_ms": 1000}, "Quota.limit"),
        ({"kind": "quota", "limit": 10**9, "window_ms": 1000}, "Quota.limit"),
        ({"kind": "quota", "limit": 2, "window_ms": 0}, "> 0"),
        ({"kind": "quota", "limit": 2, "window_ms": float("inf")}, "window_ms"),
        ({"kind": "quota", "limit": 2, "window_ms": "10s"}, "window_ms"),
        ({"kind": "quota", "limit": 2, "window_ms": 1000, "status": 200}, "Quota.status"),
        ({"kind": "quota", "limit": 2, "window_ms": 1000, "retry": 5}, "no parameter"),
        ({"kind": "ws_app_error", "code": 200}, "WsAppError.code"),
        ({"kind": "ws_app_error", "code": 600}, "WsAppError.code"),
        ({"kind": "ws_app_error", "code": "429"}, "WsAppError.code"),
        ({"kind": "ws_app_error", "body": "x" * 70_000}, "at most"),
        ({"kind": "ws_app_error", "body": {"n": float("nan")}}, "JSON value"),
    ],
)
def test_invalid_slow_body_quota_and_ws_app_error_params_are_refused_with_a_clear_message(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        fault_from_dict(data)


def test_a_ws_app_error_body_must_be_json() -> None:
    with pytest.raises(ConfigurationError, match="JSON value"):
        WsAppError(body={"when": object()})


@pytest.mark.parametrize(
    ("fault", "unit"),
    [
        (SlowBody(chunk_bytes=1, chunk_delay_ms=1), "ws_message"),
        (Quota(limit=1, window_ms=1), "ws_session"),
        (WsAppError(), "request"),
    ],
    ids=lambda v: getattr(v, "kind", v),
)
def test_a_new_kind_on_a_unit_it_cannot_apply_to_is_refused(fault: Fault, unit: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{fault.kind}.*never fires on unit"):
        FaultRule("r", fault, unit=unit)
    with pytest.raises(ConfigurationError, match="never fires on unit"):
        FaultRule.from_dict({"id": "r", "unit": unit, "sequence": [None, fault_to_dict(fault)]})


#: One fault of every kind, for the kind/unit table.
EVERY_KIND: list[Fault] = [
    Status(503),
    Delay(10),
    Reset(),
    Hang(),
    TruncatedBody(),
    MalformedBody(),
    EmptyResponse(),
    SlowBody(chunk_bytes=1, chunk_delay_ms=1),
    Quota(limit=1, window_ms=1000),
    WsRejectHandshake(503),
    WsClose(4401),
    WsDrop(after_messages=2),
    WsSilence(),
    WsAppError(),
    WsDelay(10),
    WsDropMessage(),
]


def test_the_kind_table_names_every_kind_and_what_each_unit_is_asked_with() -> None:
    assert sorted(f.kind for f in EVERY_KIND) == sorted(_KINDS)
    # What the simulator and the injector ask each unit about (their ``kinds=``): a kind
    # outside these is never applied, whatever the rule says.
    assert UNIT_KINDS["request"] == HTTP_FAULTS
    assert UNIT_KINDS["ws_session"] == WS_FAULTS == {"ws_reject_handshake"} | _SOCKET_KINDS
    assert UNIT_KINDS["ws_message"] == WS_MESSAGE_FAULTS | WS_OUTBOUND_FAULTS


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("fault", EVERY_KIND, ids=lambda f: f.kind)
def test_a_kind_on_a_unit_that_never_applies_it_is_refused_naming_the_units_it_works_on(
    fault: Fault, unit: str
) -> None:
    # Before, only the newer kinds were checked: a WsDrop left on the default unit, a Status
    # on ws_session were accepted and never fired (a chaos test passed, having injected
    # nothing, against the simulator and the injector alike).
    works_on = [u for u in UNITS if fault.kind in UNIT_KINDS[u]]
    if unit == "ws_message" and isinstance(fault, (WsClose, WsDrop, WsSilence)):
        # A count of messages is for ws_session only (tests/test_chaos_plan_refusals.py).
        fault = type(fault)()
    as_json = {"seed": 1, "rules": [{"id": "r", "unit": unit, "fault": fault_to_dict(fault)}]}
    if unit in works_on:
        FaultRule("r", fault, unit=unit)
        FaultPlan.from_dict(as_json)
        return
    words = " or ".join(repr(u) for u in works_on)
    said = f"rule 'r': a '{fault.kind}' fault never fires on unit '{unit}'.*works on unit {words}"
    with pytest.raises(ConfigurationError, match=said):
        FaultRule("r", fault, unit=unit)
    with pytest.raises(ConfigurationError, match=said):
        FaultPlan.from_dict(as_json)
    with pytest.raises(ConfigurationError, match=said):
        FaultRule("r", sequence=[None, fault], unit=unit)


def test_the_review_plans_that_injected_nothing_are_refused_when_made() -> None:
    with pytest.raises(
        ConfigurationError, match=r"'ws_drop' fault never fires on unit 'request' \(the default\)"
    ):
        FaultRule("drops", WsDrop(after_messages=2), match=Match(path="*/messaging/brand/*"))
    with pytest.raises(ConfigurationError, match="'status' fault never fires on unit 'ws_session'"):
        FaultRule("reject", Status(503), unit="ws_session")


@pytest.mark.parametrize(
    ("unit", "match", "said"),
    [
        ("ws_message", Match("GET", ".GetClock"), "Match\\(method='GET'\\).*decided as 'WS'"),
        ("ws_message", Match(path=".GetClock", service="facadeMsg"), "a message has no service"),
        ("ws_session", Match("POST", "/ws_api/*"), "Match\\(method='POST'\\).*decided as 'GET'"),
    ],
)
def test_a_socket_rule_matching_what_its_unit_never_has_is_refused(
    unit: str, match: Match, said: str
) -> None:
    with pytest.raises(ConfigurationError, match=said):
        FaultRule("r", WsDrop(), unit=unit, match=match)
    # What its unit is decided with is accepted.
    method = "WS" if unit == "ws_message" else "GET"
    rule = FaultRule("r", WsDrop(), unit=unit, match=Match(method, match.path))
    run = FaultRun(FaultPlan(rules=[rule]))
    assert run.decide(unit, method=method, path=match.path) is not None


def test_slow_body_cuts_a_body_into_chunk_bytes_pieces_in_order() -> None:
    fault = SlowBody(chunk_bytes=4, chunk_delay_ms=10)
    assert fault.pieces(b"0123456789") == [b"0123", b"4567", b"89"]
    assert fault.pieces(b"") == [b""]


def _quota_run(quota: Quota, **rule: object) -> FaultRun:
    return FaultRun(FaultPlan(rules=[FaultRule("q", quota, **rule)]))  # type: ignore[arg-type]


def test_a_quota_admits_limit_requests_per_window_and_refuses_the_rest_with_retry_after() -> None:
    run = _quota_run(Quota(limit=2, window_ms=10_000))

    def at(t: float) -> int | None:
        injection = run.decide("request", method="GET", path="/x", at=t)
        return None if injection is None else injection.retry_after

    # Admitted at 0 and 3; at 4 the slot of 0 frees at 10; at 10 the slot of 3 frees at 13.
    assert [at(0.0), at(3.0), at(4.0), at(9.5), at(10.0), at(10.0), at(12.2)] == [
        None,
        None,
        6,
        1,
        None,
        3,
        1,
    ]
    assert [d.outcome for d in run.log] == [
        "admitted",
        "admitted",
        "inject",
        "inject",
        "admitted",
        "inject",
        "inject",
    ]
    assert [d.index for d in run.injected()] == [2, 3, 5, 6]


def test_a_client_that_waits_the_quotas_retry_after_is_admitted() -> None:
    run = _quota_run(Quota(limit=1, window_ms=2_500))
    assert run.decide("request", method="GET", path="/x", at=0.1) is None
    refused = run.decide("request", method="GET", path="/x", at=0.1)
    assert refused is not None
    assert refused.retry_after == 3  # 2.5 s rounded up
    assert run.decide("request", method="GET", path="/x", at=0.1 + 2.5) is None


def test_a_quota_is_only_in_force_inside_its_schedule_and_refusals_take_no_slot() -> None:
    run = _quota_run(Quota(limit=1, window_ms=1_000), schedule=Schedule(skip_first=2))
    outcomes = [run.decide("request", method="GET", path="/x", at=0.0) for _ in range(5)]
    assert [o is None for o in outcomes] == [True, True, True, False, False]
    assert [d.outcome for d in run.log] == ["pass", "pass", "admitted", "inject", "inject"]
    run.reset()
    assert run.decide("request", method="GET", path="/x", at=0.0) is None


def test_a_forced_quota_refusal_asks_for_a_whole_window() -> None:
    run = _quota_run(Quota(limit=5, window_ms=1_500))
    forced = run.force("q", unit="request", method="GET", path="/x", at=0.0)
    assert forced is not None
    assert forced.retry_after == 2


_new_faults = st.one_of(
    st.tuples(
        st.builds(
            SlowBody,
            chunk_bytes=st.integers(1, MAX_CHUNK_BYTES),
            chunk_delay_ms=st.one_of(
                st.integers(0, 10**6), st.floats(0, MAX_FAULT_MS, allow_nan=False)
            ),
        ),
        st.just("request"),
    ),
    st.tuples(
        st.builds(
            Quota,
            limit=st.integers(1, 10**6),
            window_ms=st.floats(0.001, MAX_FAULT_MS, allow_nan=False),
            status=st.integers(400, 599),
        ),
        st.just("request"),
    ),
    st.tuples(
        st.builds(
            WsAppError,
            code=st.integers(400, 599),
            body=st.one_of(
                st.none(),
                st.text(max_size=20),
                st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)),
            ),
        ),
        st.just("ws_message"),
    ),
)


@given(seed=st.integers(0, 2**63), faults=st.lists(_new_faults, max_size=6), p=st.floats(0, 1))
def test_every_plan_with_slow_bodies_quotas_and_ws_app_errors_survives_a_json_round_trip(
    seed: int, faults: list[tuple[Fault, str]], p: float
) -> None:
    """Invariant: from_dict(json(to_dict(plan))) == plan, for plans of the newer kinds too."""
    plan = FaultPlan(
        seed=seed,
        rules=[FaultRule(f"r{i}", f, unit=unit, p=p) for i, (f, unit) in enumerate(faults)],
    )
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# -- server→client messages: delayed, dropped ------------------------------------------------


def test_ws_delay_and_ws_drop_message_survive_a_json_round_trip() -> None:
    plan = FaultPlan(
        seed=4,
        rules=[
            FaultRule("late", WsDelay(1500, jitter_ms=500), unit="ws_message"),
            FaultRule("lost", WsDropMessage(), unit="ws_message", p=0.1),
            FaultRule("seq", sequence=[None, WsDropMessage(), WsDelay(10)], unit="ws_message"),
        ],
    )
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "ws_delay", "delay_ms": -5}, "WsDelay.delay_ms"),
        ({"kind": "ws_delay", "delay_ms": float("nan")}, "WsDelay.delay_ms"),
        ({"kind": "ws_delay", "delay_ms": 1e10}, "a day"),
        ({"kind": "ws_delay", "delay_ms": 100, "jitter_ms": -1}, "WsDelay.jitter_ms"),
        ({"kind": "ws_delay", "delay_ms": 100, "jitter_ms": 200}, "must not exceed"),
        ({"kind": "ws_drop_message", "p": 0.5}, "no parameter"),
    ],
)
def test_invalid_ws_delay_and_ws_drop_message_params_are_refused(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        fault_from_dict(data)


def test_server_and_client_message_kinds_cannot_share_a_rule() -> None:
    with pytest.raises(ConfigurationError, match="two rules"):
        FaultRule("mixed", sequence=[WsDropMessage(), WsAppError()], unit="ws_message")
    with pytest.raises(ConfigurationError, match="works on unit 'ws_message'"):
        FaultRule("lost", WsDropMessage())


@given(seed=st.integers(0, 2**63))
def test_ws_delay_draws_each_messages_delay_within_plus_or_minus_jitter(seed: int) -> None:
    """Invariant: a WsDelay's delay is delay_ms ± jitter_ms, and the same for the same seed."""
    rule = FaultRule("late", WsDelay(1000, jitter_ms=250), unit="ws_message")

    def delays() -> list[float]:
        run = FaultRun(FaultPlan(seed=seed, rules=[rule]))
        kinds = frozenset({"ws_delay"})
        out = []
        for _ in range(20):
            injection = run.decide("ws_message", method="WS", path="x", kinds=kinds)
            assert injection is not None
            out.append(injection.delay_s)
        return out

    first = delays()
    assert first == delays()
    assert all(0.75 <= d <= 1.25 for d in first)
    assert len(set(first)) > 1


def _plan_of(fault: dict[str, object], unit: str = "request") -> dict[str, object]:
    """A plan's JSON form with one rule injecting ``fault`` on ``unit``."""
    return {"seed": 1, "rules": [{"id": "a", "unit": unit, "fault": fault}]}


#: An int past float's range, as json.loads gives it for a plan holding "1" and 400 zeros.
HUGE = 10**400


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"seed": 1, "rules": [{"id": "a", "sequence": [5]}]}, "100..599"),
        ({"seed": 1, "rules": [{"id": "a", "sequence": [700]}]}, "100..599"),
        (
            {"seed": 1, "rules": [{"id": "a", "fault": 503, "match": {"path": 5}}]},
            "Match.path must be a str",
        ),
        (
            {"seed": 1, "rules": [{"id": "a", "fault": 503, "match": {"service": ["x"]}}]},
            "Match.service",
        ),
        (
            {
                "seed": 1,
                "rules": [
                    {
                        "id": "a",
                        "fault": {"kind": "status", "code": 503, "headers": {"X": "a\r\nB"}},
                    }
                ],
            },
            "cannot be sent",
        ),
        (
            {
                "seed": 1,
                "rules": [
                    {
                        "id": "a",
                        "fault": {"kind": "status", "code": 503, "headers": {"X Y": "1"}},
                    }
                ],
            },
            "cannot be sent",
        ),
        (_plan_of({"kind": "status", "code": 503, "headers": {"X": "\ud800"}}), "cannot be sent"),
        (_plan_of({"kind": "status", "code": 503, "body": 5}), r"Status\.body must be a str"),
        (_plan_of({"kind": "status", "code": 503, "body": "\ud800"}), r"Status\.body .*UTF-8"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": [1]}), "Status.retry_after"),
        (
            _plan_of({"kind": "status", "code": 503, "retry_after": "5\r\nX: y"}),
            "control character",
        ),
        (_plan_of({"kind": "status", "code": 503, "retry_after": float("nan")}), "retry_after"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": -5}), "retry_after"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": HUGE}), "retry_after"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": True}), "retry_after"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": 1e100}), "plain digits"),
        (_plan_of({"kind": "status", "code": 503, "retry_after": 10**70}), "plain digits"),
        (_plan_of({"kind": "malformed_body", "code": "x"}), r"MalformedBody\.code"),
        (_plan_of({"kind": "malformed_body", "code": 9999}), r"MalformedBody\.code"),
        (_plan_of({"kind": "malformed_body", "body": 5}), r"MalformedBody\.body"),
        (_plan_of({"kind": "ws_reject_handshake", "status": 42}, "ws_session"), "200..599"),
        (_plan_of({"kind": "ws_reject_handshake", "status": "x"}, "ws_session"), "200..599"),
        (_plan_of({"kind": "ws_reject_handshake", "status": 101}, "ws_session"), "200..599"),
        (_plan_of({"kind": "ws_reject_handshake", "body": 1}, "ws_session"), "body must be a str"),
        (_plan_of({"kind": "ws_close", "reason": 1}, "ws_session"), r"WsClose\.reason"),
        (_plan_of({"kind": "ws_close", "reason": "é" * 62}, "ws_session"), "123 bytes"),
        (_plan_of({"kind": "delay", "delay_ms": HUGE}), r"Delay\.delay_ms"),
        (_plan_of({"kind": "delay", "delay_ms": 1e300}), "a day"),
        (_plan_of({"kind": "delay", "delay_ms": 1, "jitter_ms": HUGE}), r"Delay\.jitter_ms"),
        (_plan_of({"kind": "hang", "duration_ms": HUGE}), r"Hang\.duration_ms"),
        (_plan_of({"kind": "ws_delay", "delay_ms": HUGE}, "ws_message"), r"WsDelay\.delay_ms"),
        (
            _plan_of({"kind": "slow_body", "chunk_bytes": 8, "chunk_delay_ms": HUGE}),
            r"SlowBody\.chunk_delay_ms",
        ),
        (_plan_of({"kind": "quota", "limit": 1, "window_ms": HUGE}), r"Quota\.window_ms"),
        (
            {"seed": 1, "rules": [{"id": "a", "fault": 503, "schedule": {"after_ms": HUGE}}]},
            r"Schedule\.after_ms",
        ),
    ],
    ids=[
        "tiny-code",
        "huge-code",
        "int-path",
        "list-service",
        "crlf-header",
        "spaced-header",
        "surrogate-header",
        "int-status-body",
        "surrogate-status-body",
        "list-retry-after",
        "crlf-retry-after",
        "nan-retry-after",
        "negative-retry-after",
        "huge-retry-after",
        "bool-retry-after",
        "unreadably-long-retry-after",
        "long-int-retry-after",
        "str-malformed-code",
        "huge-malformed-code",
        "int-malformed-body",
        "tiny-reject-status",
        "str-reject-status",
        "upgrade-reject-status",
        "int-reject-body",
        "int-close-reason",
        "long-close-reason",
        "huge-int-delay",
        "delay-past-a-day",
        "huge-int-jitter",
        "huge-int-hang",
        "huge-int-ws-delay",
        "huge-int-slow-body",
        "huge-int-quota",
        "huge-int-schedule",
    ],
)
def test_a_plan_that_would_fail_only_when_its_fault_fires_is_refused_when_loaded(
    plan: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FaultPlan.from_dict(plan)


def test_the_edges_of_what_a_fault_may_carry_are_accepted_and_survive_a_json_round_trip() -> None:
    faults: list[tuple[Fault, str]] = [
        (Status(503, retry_after=0), "request"),
        (Status(503, retry_after=1.5, body=""), "request"),
        (Status(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", body="é"), "request"),
        (MalformedBody(code=200, body=""), "request"),
        (MalformedBody(code=599), "request"),
        (WsRejectHandshake(200), "ws_session"),
        (WsRejectHandshake(599, body="x" * 1000), "ws_session"),
        (WsClose(4401, "é" * 61 + "x"), "ws_session"),  # 123 bytes: a close frame's whole room
        (Delay(MAX_FAULT_MS, jitter_ms=MAX_FAULT_MS), "request"),
        (Hang(duration_ms=MAX_FAULT_MS), "request"),
    ]
    plan = FaultPlan(
        seed=1, rules=[FaultRule(f"r{i}", f, unit=unit) for i, (f, unit) in enumerate(faults)]
    )
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_fault_built_in_python_is_checked_as_one_loaded_from_json() -> None:
    with pytest.raises(ConfigurationError, match=r"Status\.body"):
        Status(503, body=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"WsRejectHandshake\.status"):
        WsRejectHandshake(True)
    with pytest.raises(ConfigurationError, match=r"Hang\.duration_ms"):
        Hang(duration_ms=float("inf"))


def test_a_ws_app_error_body_nested_deeper_than_json_can_write_is_refused() -> None:
    body: list[object] = []
    for _ in range(100_000):
        body = [body]
    with pytest.raises(ConfigurationError, match="JSON value"):
        WsAppError(body=body)


@pytest.mark.parametrize(
    "plan",
    [
        {"seed": 1, "rule": [{"id": "a", "fault": 503}]},
        {"seed": 1, "rules": [], "extra": 1},
        {"rules": [], 5: "x"},
    ],
    ids=["misspelt-rules", "extra-key", "int-key"],
)
def test_a_plan_with_a_key_other_than_seed_and_rules_is_refused(plan: dict[object, object]) -> None:
    # "rule" for "rules" used to load as a plan with no rules: a chaos run injecting nothing.
    with pytest.raises(ConfigurationError, match=r"unknown field.*'seed' and 'rules'"):
        FaultPlan.from_dict(plan)  # type: ignore[arg-type]


@pytest.mark.parametrize("bound", [sys.maxsize + 1, 2**63, 10**30])
def test_a_record_bound_past_sys_maxsize_is_refused_when_made_not_at_the_first_record(
    bound: int,
) -> None:
    with pytest.raises(ConfigurationError, match=r"RecordLog\.maxlen must be at most sys\.maxsize"):
        RecordLog(bound)
    with pytest.raises(ConfigurationError, match=r"FaultRun\.max_records .*sys\.maxsize"):
        FaultRun(FaultPlan(rules=[FaultRule("r", Reset())]), max_records=bound)
    with pytest.raises(ConfigurationError, match=r"SharedBound\.maxlen"):
        SharedBound(bound)


def test_a_record_bound_of_sys_maxsize_is_as_good_as_none() -> None:
    log: RecordLog[int] = RecordLog(sys.maxsize)
    log.append(1)
    assert log == [1]
    run = FaultRun(FaultPlan(rules=[FaultRule("r", Reset())]), max_records=sys.maxsize)
    assert run.decide("request", method="GET", path="/x") is not None
    assert run.max_records == sys.maxsize


# -- rules do not add up: the first that fires wins ---------------------------------------------


USERS_PATH = "/api/account/1/configuration/le-users/users"


def _latency_then_burst(seed: int = 11) -> FaultPlan:
    """The review's plan: a latency rule listed first, then a burst of 503s on the same route."""
    return FaultPlan(
        seed=seed,
        rules=(
            FaultRule("latency", Delay(800, jitter_ms=400), match=Match("GET", "*/users"), p=0.3),
            FaultRule(
                "burst503",
                Status(503),
                match=Match("GET", "*/users"),
                schedule=Schedule(skip_first=5, fail_next=3),
            ),
        ),
    )


def test_rule_counts_say_how_often_a_later_rule_was_shadowed_by_an_earlier_one() -> None:
    # The review's plan: a third of the burst's turns went to the latency rule, and nothing
    # but the decision log said so (injected_counts() only counts injections).
    run = FaultRun(_latency_then_burst())
    kinds = [_decided(run) for _ in range(10)]
    counts = run.rule_counts()
    assert list(counts) == ["latency", "burst503"]
    burst = counts["burst503"]
    assert burst.matched == 10
    assert burst.injected == kinds.count("status") == 1
    assert burst.shadowed == 2
    assert burst.passed == 7
    assert not burst.always_shadowed
    latency = counts["latency"]
    assert latency.injected == kinds.count("delay")
    assert latency.injected + latency.skipped == 10
    assert latency.shadowed == 0
    # Exact totals: the decision log says the same, outcome by outcome.
    for rule_id, c in counts.items():
        logged = [d.outcome for d in run.log if d.rule_id == rule_id]
        assert (c.shadowed, c.skipped, c.passed) == (
            logged.count("shadowed"),
            logged.count("skipped"),
            logged.count("pass"),
        )
    assert burst.to_dict()["shadowed"] == 2


def _decided(run: FaultRun) -> str | None:
    injection = run.decide("request", method="GET", path=USERS_PATH)
    return None if injection is None else injection.fault.kind


def test_a_rule_shadowed_every_time_it_was_due_is_marked_so() -> None:
    run = FaultRun(
        FaultPlan(
            rules=[
                FaultRule("first", Reset()),
                FaultRule("second", Status(503), schedule=Schedule(fail_next=2)),
                FaultRule("elsewhere", Status(500), match=Match(path="/nowhere")),
            ]
        )
    )
    for _ in range(3):
        _decided(run)
    counts = run.rule_counts()
    assert counts["second"] == RuleCounts(matched=3, injected=0, shadowed=2, passed=1)
    assert counts["second"].always_shadowed
    assert not counts["first"].always_shadowed
    # A rule that matched nothing is listed too, all zeros; a reset starts the counts over.
    assert counts["elsewhere"] == RuleCounts()
    run.reset()
    assert run.rule_counts()["second"] == RuleCounts()


def test_rule_counts_count_forced_and_admitted_decisions() -> None:
    run = FaultRun(
        FaultPlan(rules=[FaultRule("q", Quota(limit=1, window_ms=60_000)), FaultRule("f", Reset())])
    )
    run.decide("request", method="GET", path="/x", at=0.0)
    run.decide("request", method="GET", path="/x", at=1.0)
    run.force("f", unit="request", method="GET", path="/x")
    counts = run.rule_counts()
    assert counts["q"] == RuleCounts(matched=2, injected=1, admitted=1)
    assert counts["f"] == RuleCounts(matched=2, injected=2, shadowed=1, forced=1)


def test_each_injection_is_logged_at_debug_with_its_rule_and_a_redacted_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = FaultRun(FaultPlan(rules=[FaultRule("s", Status(503))]), origin=10.0)
    with caplog.at_level(logging.DEBUG, logger="le_transport.chaos.faults"):
        run.decide(
            "request", method="get", path="/ws_api/account/1/messaging/brand/SECRETB", at=12.5
        )
        run.decide("request", method="GET", path="/x")
    lines = [r.getMessage() for r in caplog.records if r.name == "le_transport.chaos.faults"]
    assert lines[0].startswith("injected status (rule s, request #0) on GET /ws_api/account/1/")
    assert lines[0].endswith(" at +2.500 s")
    assert "SECRETB" not in lines[0]
    assert lines[1] == "injected status (rule s, request #1) on GET /x"


def _readme_plan_example() -> str:
    """The JSON block of the README's "Fault plan files"."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("**Fault plan files.**") :]
    block = section[section.index("```json\n") + len("```json\n") :]
    return block[: block.index("```")]


def test_the_documented_plan_file_loads_and_is_what_to_dict_writes() -> None:
    # Before, the --plan format was documented nowhere, and a natural guess failed.
    path = Path(__file__).resolve().parent.parent / "examples" / "fault_plan.json"
    text = path.read_text()
    plan = FaultPlan.from_dict(json.loads(text))
    assert plan.seed == 7
    assert [(r.id, r.unit) for r in plan.rules] == [
        ("users-503-burst", "request"),
        ("login-flaky", "request"),
        ("ums-drop", "ws_session"),
    ]
    # Exact: the file is to_dict()'s own output, and the README shows the file.
    assert json.loads(text) == plan.to_dict()
    assert json.loads(_readme_plan_example()) == plan.to_dict()


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        (
            {"id": "x", "kind": "status", "code": 503, "path": "*/users"},
            r"fault rule 'x' has unknown field\(s\) \['code', 'kind', 'path'\]; a rule takes "
            r"'id', 'match', 'unit', 'p', 'fault', 'schedule', 'sequence'; \"method\", \"path\" "
            r"and \"service\" go in \"match\".*the fault's \"kind\" and parameters go in "
            r"\"fault\"",
        ),
        ({"id": "x", "fault": 503, "fail_next": 2}, r"\"fail_next\".* go in \"schedule\""),
        (
            {"id": "x", "fault": 503, "match": {"url": "*"}},
            r"fault rule 'x': 'match' has unknown field\(s\) \['url'\]; it takes 'method', "
            r"'path', 'service'",
        ),
        (
            {"id": "x", "fault": 503, "schedule": {"count": 1}},
            r"'schedule' has unknown field\(s\) \['count'\]; it takes 'skip_first', "
            r"'fail_next', 'after_ms', 'for_ms'",
        ),
        ({"id": "x", "fault": 503, "match": "*/users"}, r"'match' must be a mapping"),
        # Falsy, and still no mapping: they loaded as empty.
        ({"id": "x", "fault": 503, "match": []}, r"'match' must be a mapping"),
        ({"id": "x", "fault": 503, "match": 0}, r"'match' must be a mapping"),
        ({"id": "x", "fault": 503, "schedule": ""}, r"'schedule' must be a mapping"),
    ],
    ids=[
        "guessed-flat-rule",
        "flat-schedule",
        "match-key",
        "schedule-key",
        "match-not-mapping",
        "match-empty-list",
        "match-zero",
        "schedule-empty-str",
    ],
)
def test_an_unknown_field_in_a_plan_file_names_the_fields_that_are_known(
    rule: dict[str, object], says: str
) -> None:
    # Before: "fault rule has unknown field(s) ['code', 'kind', 'path']", and nothing about
    # what a rule takes or where those belong.
    with pytest.raises(ConfigurationError, match=says):
        FaultPlan.from_dict({"seed": 1, "rules": [rule]})


@pytest.mark.parametrize(
    "name", ["Content-Length", "transfer-encoding", "CONTENT-ENCODING", "Connection", "Upgrade"]
)
def test_a_status_cannot_set_the_headers_that_frame_its_answer(name: str) -> None:
    """Accepted, a Content-Length of "abc" failed the simulator's answer (a traceback, an
    empty reply, counted injected) and raised a bare ValueError out of the engine through the
    injector; a chunked or gzip claim over the fault's plain body broke it on one side only."""
    with pytest.raises(ConfigurationError, match="framing"):
        Status(503, headers={name: "abc"})
    plan = {
        "rules": [{"id": "x", "fault": {"kind": "status", "code": 503, "headers": {name: "5"}}}]
    }
    with pytest.raises(ConfigurationError, match="framing"):
        FaultPlan.from_dict(plan)


@pytest.mark.parametrize("value", [None, 5, ["a"]])
def test_a_status_header_value_must_be_a_str(value: object) -> None:
    """A JSON null went out as "X-A: None", a number as its repr."""
    with pytest.raises(ConfigurationError, match="str names to str values"):
        Status(503, headers={"X-A": value})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        ({"fault": 503, "schedule": {"fail_next": 0}}, "fail_next=0"),
        ({"fault": 503, "schedule": {"for_ms": 0}}, "for_ms=0"),
        ({"sequence": []}, "no fault"),
        ({"sequence": [None, None]}, "no fault"),
        ({"fault": 503, "match": {"method": "WS"}}, "socket message's method"),
    ],
)
def test_a_rule_that_could_never_fire_is_refused_as_the_docs_say(
    rule: dict[str, object], said: str
) -> None:
    """Each loaded and injected nothing: a chaos test passed having tested nothing."""
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        FaultPlan.from_dict({"rules": [{"id": "never", **rule}]})


def test_a_null_path_matches_anything_as_the_readme_says() -> None:
    plan = FaultPlan.from_dict({"rules": [{"id": "any", "match": {"path": None}, "fault": 503}]})
    assert plan.rules[0].match == Match(path="*")
    assert Match(path=None).matches("GET", "/anything/at/all")
