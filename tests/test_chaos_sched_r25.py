"""A schedule's count window counts the units inside its time window.

``Schedule(fail_next=2, after_ms=10_000)`` reads "after 10 s, fail the next 2": its count
window was judged on every matching unit, so the units before 10 s spent its two turns and it
never fired. The count window (``skip_first``/``fail_next``), and a sequence's entries, now
start when the time window opens; a unit outside the time window passes without spending a
turn. Checked on :class:`FaultRun`, on the simulator and on the client-side injector, both on
virtual time against the real simulator on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from le_transport import Engine
from le_transport.chaos import (
    FaultInjector,
    FaultPlan,
    FaultRule,
    Match,
    Schedule,
    Status,
)
from le_transport.chaos.plan import FaultRun
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


def _outcomes(run: FaultRun, times: list[float]) -> list[str | None]:
    got = [run.decide("request", method="GET", path="/x", at=t) for t in times]
    return [None if i is None else i.fault.kind for i in got]


def test_after_the_time_window_opens_the_next_n_units_fail() -> None:
    rule = FaultRule("late", Status(503), schedule=Schedule(fail_next=2, after_ms=10_000))
    run = FaultRun([rule], origin=0.0)
    assert _outcomes(run, [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]) == [
        None,
        None,
        None,
        "status",
        "status",
        None,
    ]
    assert [d.outcome for d in run.log] == ["pass"] * 3 + ["inject"] * 2 + ["pass"]
    counts = run.rule_counts()["late"]
    assert (counts.matched, counts.injected, counts.passed) == (6, 2, 4)


def test_skip_first_counts_from_the_time_windows_start() -> None:
    rule = FaultRule(
        "late",
        Status(503),
        schedule=Schedule(skip_first=1, fail_next=1, after_ms=10_000, for_ms=5_000),
    )
    run = FaultRun([rule], origin=0.0)
    assert _outcomes(run, [0.0, 1.0, 10.0, 11.0, 12.0, 16.0]) == [
        None,
        None,
        None,  # the first unit in the window, skipped
        "status",
        None,
        None,
    ]


def test_units_after_the_time_window_closes_spend_no_turn_either() -> None:
    """The count window is over the units inside the time window only."""
    rule = FaultRule(
        "w", Status(503), schedule=Schedule(skip_first=2, fail_next=1, after_ms=0, for_ms=1_000)
    )
    run = FaultRun([rule], origin=0.0)
    # Two units in the window (skipped), the rest after it: nothing ever fires.
    assert _outcomes(run, [0.0, 0.5, 1.0, 2.0, 3.0]) == [None] * 5


def test_a_sequence_with_a_time_window_starts_when_the_window_opens() -> None:
    rule = FaultRule(
        "late",
        sequence=[503, None, 502],
        schedule=Schedule(after_ms=60_000, for_ms=1_000),
        match=Match("GET", "*"),
    )
    run = FaultRun(FaultPlan(seed=4, rules=[rule]), origin=0.0)
    got = [run.decide("request", method="GET", path="/x", at=t) for t in (1.0, 60.0, 60.5, 60.9)]
    codes = [None if i is None else getattr(i.fault, "code", None) for i in got]
    assert codes == [None, 503, None, 502]


def test_the_logged_index_and_the_draws_stay_those_of_the_matching_unit() -> None:
    """Only which units the count window covers changed: the decision's index (and so the
    draw keyed by it) is still the rule's n-th matching unit, so a plan's draws and logs of
    an untimed rule read as before."""
    rule = FaultRule("late", Status(503), schedule=Schedule(fail_next=1, after_ms=1_000))
    run = FaultRun([rule], origin=0.0)
    _outcomes(run, [0.0, 0.5, 1.0])
    assert [(d.index, d.outcome) for d in run.log] == [(0, "pass"), (1, "pass"), (2, "inject")]


def test_a_rule_added_again_starts_its_time_windows_count_over() -> None:
    rule = FaultRule("late", Status(503), schedule=Schedule(fail_next=1, after_ms=1_000))
    run = FaultRun([rule], origin=0.0)
    assert _outcomes(run, [1.0, 1.5]) == ["status", None]
    run.change_plan(FaultPlan())
    run.change_plan(FaultPlan(rules=[rule]))
    assert _outcomes(run, [2.0, 2.5]) == ["status", None]
    run.reset(origin=0.0)
    assert _outcomes(run, [0.5, 1.0, 1.5]) == [None, "status", None]


def test_the_plans_json_form_is_unchanged() -> None:
    rule = FaultRule("late", Status(503), schedule=Schedule(fail_next=2, after_ms=10_000))
    data = FaultPlan(seed=3, rules=[rule]).to_dict()
    assert data["rules"][0]["schedule"] == {
        "skip_first": 0,
        "fail_next": 2,
        "after_ms": 10_000,
        "for_ms": None,
    }
    loaded = FaultPlan.from_dict(json.loads(json.dumps(data)))
    run = FaultRun(loaded, origin=0.0)
    assert _outcomes(run, [0.0, 10.0, 11.0, 12.0]) == [None, "status", "status", None]


async def _requests_at(clock: VirtualClock, engine: Engine, times: list[float]) -> None:
    for t in times:
        await clock.sleep(t - clock.now())
        await engine.request("GET", "agentVep", CSDS)


async def test_the_simulator_fails_the_next_two_requests_after_the_window_opens(
    clock: VirtualClock,
) -> None:
    plan = FaultPlan(
        rules=[FaultRule("late", Status(503), schedule=Schedule(fail_next=2, after_ms=10_000))]
    )
    async with (
        Simulator(clock=clock, plan=plan) as sim,
        Engine(sim.domains, scheme="http", clock=clock) as engine,
    ):
        await _requests_at(clock, engine, [0.0, 1.0, 2.0, 10.0])
    # The request at 10 s is answered 503 twice, then passes after the guide's 5 and 10 s.
    assert [(r.at, r.fault) for r in sim.requests] == [
        (0.0, None),
        (1.0, None),
        (2.0, None),
        (10.0, "status"),
        (15.0, "status"),
        (25.0, None),
    ]
    assert sim.faults.rule_counts()["late"].injected == 2


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


async def test_the_injector_fails_the_next_two_requests_after_the_window_opens(
    sim: Simulator, clock: VirtualClock
) -> None:
    injector = FaultInjector.seeded(
        1,
        FaultRule("late", Status(503), schedule=Schedule(fail_next=2, after_ms=10_000)),
        clock=clock,
    )
    async with Engine(sim.domains, scheme="http", clock=clock, wire_middlewares=[injector]) as e:
        await _requests_at(clock, e, [0.0, 1.0, 2.0, 10.0])
    # The two 503s at 10 and 15 s never reached the server; the retry at 25 s did.
    assert [r.at for r in sim.requests] == [0.0, 1.0, 2.0, 25.0]
    assert [(d["kind"], d["at"]) for d in injector.report()] == [("status", 10.0), ("status", 15.0)]
