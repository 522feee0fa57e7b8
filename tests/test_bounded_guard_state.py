"""The overload guard and the in-memory store keep bounded state however many keys they see.

A caller (or a hostile domain source) may send calls to ever new hosts and services. The guard
keeps at most ``max_breakers`` breakers, forgetting idle ones (closed, no recent failure) first
and only then the least recently used, with a warning; the store sweeps out what has expired.
These tests drive both with tens of thousands of distinct keys on virtual time and hold them to
what they must never forget: an open breaker, recent failures, a spent budget, a queue of
reservations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from le_transport import Engine, RetryPolicy
from le_transport.errors import CircuitOpen, ConfigurationError, RetriesExhausted
from le_transport.middleware.overload import DEFAULT_MAX_BREAKERS, OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Outcome,
    RetryBudget,
)
from le_transport.policies.budget import BudgetState
from le_transport.policies.pacing import TokenBucket
from le_transport.state.memory import SWEEP_AFTER, MemoryStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.test_guard_hot_path import _Call, _done

T = TypeVar("T")
ServerFactory = Callable[[web.Application], Awaitable[str]]

BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=10.0,
    slots=5,
    breaks=BackoffPolicy(first=60.0, factor=2.0, cap=600.0, jitter=0.0, floor=0.0),
    probe_lease=5.0,
)
BUDGET = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0, slots=5)
OK = Outcome.response(200)
DOWN = Outcome.response(503)


def _host(n: int) -> str:
    """The n-th of many distinct hosts (host:port, as the guard keys them)."""
    return f"h{n}.example.test:{1000 + n % 50000}"


def _attempt(guard: OverloadGuard, service: str, host: str, outcome: Outcome) -> bool:
    """One first attempt through the gate; False if the breaker refused it."""
    call = _Call(service, host)
    refused = _done(guard.admit(call, 1))
    if refused is not None:
        assert isinstance(refused, CircuitOpen)
        return False
    _done(guard.settle(call, 1, outcome))
    return True


def _open(guard: OverloadGuard, service: str, host: str) -> None:
    for _ in range(BREAKER.minimum_throughput):
        _attempt(guard, service, host, DOWN)
    assert guard.breaker_state(service, host) is BreakerState.OPEN


def _assert_bounded(guard: OverloadGuard, cap: int) -> None:
    assert len(guard._status) <= cap
    assert set(guard._successes) <= set(guard._status), "a tally never outlives its breaker"
    assert len(guard._synced_at) <= cap + 1
    assert len(guard._pending) <= cap
    assert len(guard._stale_locks) <= cap
    assert len(guard._damaged) <= cap


# -- the options ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", None])
def test_max_breakers_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"OverloadGuard\.max_breakers"):
        OverloadGuard(max_breakers=bad)


def test_the_default_cap_is_documented_and_used() -> None:
    guard = OverloadGuard()
    assert guard._max_breakers == DEFAULT_MAX_BREAKERS == 4096


# -- the guard: bounded, idle breakers first -------------------------------------------------


def test_ten_thousand_hosts_keep_the_breakers_at_the_default_cap(clock: VirtualClock) -> None:
    guard = OverloadGuard(budget=BUDGET, breaker=BREAKER, clock=clock)
    for n in range(12_000):
        assert _attempt(guard, "msgHist", _host(n), OK)
        clock.advance(0.001)
    _assert_bounded(guard, DEFAULT_MAX_BREAKERS)
    assert len(guard._keys) <= DEFAULT_MAX_BREAKERS


def test_an_open_breaker_survives_a_flood_of_successes_to_other_hosts(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=64)
    _open(guard, "msgHist", "down.example.test:443")
    for n in range(10_000):
        assert _attempt(guard, "msgHist", _host(n), OK)
        clock.advance(0.001)  # 10 s: the flood spans the whole sampling window
        _assert_bounded(guard, 64)
    assert guard.breaker_state("msgHist", "down.example.test:443") is BreakerState.OPEN
    assert not _attempt(guard, "msgHist", "down.example.test:443", OK), "still refused"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "forgot" in r.msg]


def test_recent_failures_survive_a_flood_of_successes_to_other_hosts(clock: VirtualClock) -> None:
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=16)
    host = "flaky.example.test:443"
    for _ in range(BREAKER.minimum_throughput - 1):
        _attempt(guard, "msgHist", host, DOWN)
    for n in range(5_000):
        _attempt(guard, "msgHist", _host(n), OK)
    _assert_bounded(guard, 16)
    # The failures were kept: one more opens it, as it would have without the flood.
    _attempt(guard, "msgHist", host, DOWN)
    assert guard.breaker_state("msgHist", host) is BreakerState.OPEN


def _states(guard: OverloadGuard, clock: VirtualClock, host: str) -> list[object]:
    """What the guard answers for ``host`` along a fixed script of outcomes and time."""
    seen: list[object] = []
    for outcome, dt in [(DOWN, 0.5)] * 3 + [(OK, 0.5), (DOWN, 0.5), (DOWN, 61.0), (OK, 1.0)]:
        seen.append(_attempt(guard, "msgHist", host, outcome))
        seen.append(guard.breaker_state("msgHist", host))
        clock.advance(dt)
    return seen


def test_a_breaker_forgotten_while_closed_acts_as_a_fresh_one() -> None:
    clock = VirtualClock(start=100.0)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=16)
    host = "quiet.example.test:443"
    for _ in range(10):
        _attempt(guard, "msgHist", host, OK)
    for n in range(200):
        _attempt(guard, "msgHist", _host(n), OK)
    assert ("msgHist", host) not in guard._status, "the idle breaker was forgotten"

    fresh_clock = VirtualClock(start=clock.now())
    fresh = OverloadGuard(budget=None, breaker=BREAKER, clock=fresh_clock)
    assert _states(guard, clock, host) == _states(fresh, fresh_clock, host)


def test_an_idle_breaker_goes_before_any_that_holds_state(clock: VirtualClock) -> None:
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=8)
    _attempt(guard, "msgHist", "idle.example.test:443", OK)  # the least recently used
    for n in range(7):
        _attempt(guard, "msgHist", _host(n), DOWN)  # recent failures: state to keep
    _attempt(guard, "msgHist", "new.example.test:443", OK)
    assert ("msgHist", "idle.example.test:443") not in guard._status
    assert all(("msgHist", _host(n)) in guard._status for n in range(7))


def test_when_every_breaker_holds_state_the_least_recently_used_goes_with_a_warning(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport.overload")
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=8)
    for n in range(8):
        _open(guard, "msgHist", _host(n))
        clock.advance(1.0)
    # A refused call is a use too: host 0 is now the most recently used.
    assert not _attempt(guard, "msgHist", _host(0), OK)
    caplog.clear()

    _attempt(guard, "msgHist", "new.example.test:443", OK)

    _assert_bounded(guard, 8)
    assert guard.breaker_state("msgHist", _host(1)) is BreakerState.CLOSED, "forgotten"
    for n in [0, *range(2, 8)]:
        assert guard.breaker_state("msgHist", _host(n)) is BreakerState.OPEN
    [record] = [r for r in caplog.records if "forgot" in r.msg]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"msgHist@{_host(1)}" in message
    assert "http" not in message, "hosts only, no URL"
    assert record.__dict__["forgotten"] == 1
    assert record.__dict__["tripped"] == 1


def test_closed_breakers_with_failures_go_before_older_open_ones(clock: VirtualClock) -> None:
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=8)
    for n in range(4):
        _open(guard, "msgHist", _host(n))  # the least recently used
    for n in range(4, 8):
        _attempt(guard, "msgHist", _host(n), DOWN)  # one failure each: closed, not idle
    _attempt(guard, "msgHist", "new.example.test:443", OK)
    assert ("msgHist", _host(4)) not in guard._status, "the oldest closed one went"
    for n in range(4):
        assert guard.breaker_state("msgHist", _host(n)) is BreakerState.OPEN


def test_a_full_guard_forgets_in_batches_so_each_new_host_costs_o1(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 64
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=cap)
    rooms = 0
    make_room = guard._make_room

    def counted(adding: tuple[str, str]) -> None:
        nonlocal rooms
        rooms += 1
        make_room(adding)

    monkeypatch.setattr(guard, "_make_room", counted)
    hosts = 10_000
    for n in range(hosts):
        # Every host opens: nothing is ever idle, the worst case for the sweep.
        _open(guard, "msgHist", _host(n))
        _assert_bounded(guard, cap)
    assert rooms <= hosts // (cap // 8) + 1


def test_the_happy_path_writes_no_breaker_per_call(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = OverloadGuard(budget=BUDGET, breaker=BREAKER, clock=clock)
    host = "busy.example.test:443"
    _attempt(guard, "msgHist", host, OK)
    writes = 0
    put = guard._put

    def counted(key: tuple[str, str], status: BreakerStatus) -> None:
        nonlocal writes
        writes += 1
        put(key, status)

    monkeypatch.setattr(guard, "_put", counted)
    slot = BREAKER.sampling_window / BREAKER.slots
    for _ in range(1000):
        assert _attempt(guard, "msgHist", host, OK)
        clock.advance(slot / 100)  # 10 slots in all
    assert writes <= 11, "one write per slot of the window, not one per call"


def test_a_fleet_guard_keeps_its_per_service_counts_bounded_and_rereads_forgotten_trips(
    clock: VirtualClock,
) -> None:
    store = MemoryStore(clock)
    cap = 32
    guard = OverloadGuard(
        budget=BUDGET, breaker=BREAKER, store=store, clock=clock, max_breakers=cap, account="1"
    )
    _open(guard, "down", "down.example.test:443")
    # A foreign session names the service by its host: every call a new service, twice over
    # within the flush interval so that some counts are pending.
    for n in range(2_500):
        _attempt(guard, _host(n), _host(n), OK)
        _attempt(guard, _host(n), _host(n), OK)
        clock.advance(0.02)  # 50 s in all: within the 60 s break
        _assert_bounded(guard, cap)
    # A flood of hosts that all fail pushes the open breaker out...
    for n in range(cap):
        _open(guard, "down", _host(n))
    assert ("down", "down.example.test:443") not in guard._status
    # ...and the fleet's trip marker, still in the store, brings it back at the next call.
    assert not _attempt(guard, "down", "down.example.test:443", OK)
    assert guard.breaker_state("down", "down.example.test:443") is BreakerState.OPEN
    # The store holds the budgets of the last window (10 s: 500 services), not all 2,500.
    assert len(store._budgets) <= 2 * SWEEP_AFTER


async def test_an_engine_with_a_small_cap_still_fails_fast_on_the_down_service(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Real parts: an engine over two loopback servers, one down, and many services."""
    down, up = Backend(503), Backend(200)
    down_host, up_host = await serve(down.app()), await serve(up.app())
    services = {f"svc{n}": up_host for n in range(40)}
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, max_breakers=8)
    policy = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine(
        {"down": down_host, **services}, scheme="http", clock=clock, overload=guard, retry=policy
    ) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "down", "/x")
        for name in services:
            assert (await engine.request("GET", name, "/x")).status == 200
        assert len(guard._status) <= 8
        sent = down.hits
        with pytest.raises(CircuitOpen):
            await engine.request("GET", "down", "/x")
        assert down.hits == sent, "the open breaker was kept: nothing was sent"


# -- the pure policies: what is idle -----------------------------------------------------------


@st.composite
def _breaker_history(draw: st.DrawFn) -> tuple[BreakerStatus, float]:
    status = BREAKER.closed()
    now = 0.0
    for dt, failed in draw(
        st.lists(st.tuples(st.floats(0, 30, allow_nan=False), st.booleans()), max_size=30)
    ):
        now += dt
        admission = BREAKER.admit(status, now)
        if admission.allowed:
            status = BREAKER.record(
                admission.status, now, failed=failed, rand=0.5, probe=admission.probe
            )
        if draw(st.booleans()):
            status = BREAKER.release(status, now)
    return status, now + draw(st.floats(0, 30, allow_nan=False))


@given(history=_breaker_history())
@settings(max_examples=300, deadline=None)
def test_an_idle_breaker_is_closed_without_failures_in_its_window(
    history: tuple[BreakerStatus, float],
) -> None:
    status, now = history
    aged = BREAKER._aged(status, now)
    expected = (
        status.state is BreakerState.CLOSED
        and status.probe_until is None
        and status.opens == 0
        and not any(aged.failures)
    )
    assert BREAKER.is_idle(status, now) is expected
    if expected:
        # It admits as a fresh one does, and one more failure cannot open it sooner.
        assert BREAKER.admit(status, now).allowed
        assert BREAKER.state_at(BREAKER.record(status, now, failed=True), now) is (
            BREAKER.state_at(BREAKER.record(BREAKER.closed(), now, failed=True), now)
        )


def test_open_half_open_and_probing_breakers_are_never_idle() -> None:
    opened = BREAKER.record(
        BreakerStatus(
            BreakerState.CLOSED, 0, (0,) * 5, (BREAKER.minimum_throughput - 1, 0, 0, 0, 0)
        ),
        0.0,
        failed=True,
    )
    assert opened.state is BreakerState.OPEN
    assert not BREAKER.is_idle(opened, 0.0)
    assert not BREAKER.is_idle(opened, 1e6), "half-open once the break ended: still state"
    probing = BREAKER.admit(opened, 1e6).status
    assert not BREAKER.is_idle(probing, 1e6)
    assert BREAKER.is_idle(BREAKER.closed(), 0.0)
    assert BREAKER.is_idle(BreakerStatus(), 5.0), "another configuration's status ages to empty"


@st.composite
def _budget_history(draw: st.DrawFn) -> tuple[BudgetState, float]:
    state = BUDGET.empty()
    now = 0.0
    for dt, retry in draw(
        st.lists(st.tuples(st.floats(0, 8, allow_nan=False), st.booleans()), max_size=30)
    ):
        now += dt
        if retry:
            _, state = BUDGET.try_retry(state, now)
        else:
            state = BUDGET.record_request(state, now)
    return state, now + draw(st.floats(0, 20, allow_nan=False))


@given(history=_budget_history())
@settings(max_examples=300, deadline=None)
def test_an_idle_budget_counts_nothing_and_decides_as_an_empty_one(
    history: tuple[BudgetState, float],
) -> None:
    state, now = history
    aged = BUDGET._at(state, now)
    idle = BUDGET.is_idle(state, now)
    assert idle is (aged.total_requests == 0 and aged.total_retries == 0)
    if idle:
        assert BUDGET.available(state, now) == BUDGET.available(BUDGET.empty(), now)
        assert BUDGET.try_retry(state, now)[0] is BUDGET.try_retry(BUDGET.empty(), now)[0]


# -- the store: what expired is swept out ----------------------------------------------------


def test_expired_values_are_swept_and_live_ones_kept(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    _done(store.set("session", "kept", ttl=1e6))
    for n in range(20_000):
        _done(store.set(f"trip:{n}", "{}", ttl=1.0))
        clock.advance(0.01)
    assert len(store._values) <= 2 * SWEEP_AFTER
    entry = _done(store.get("session"))
    assert entry is not None
    assert entry.value == "kept"
    assert _done(store.add("trip:19999", "x", ttl=1.0)) is False, "a live value stays"


def test_budgets_that_count_nothing_are_swept_and_a_spent_one_kept(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    spent = RetryBudget(ratio=0.0, min_retries_per_second=1e-4, window=1e5, slots=5)
    while _done(store.budget("spent", spent, withdraw=True)):
        pass
    for n in range(20_000):
        store.deposit(f"budget:{n}", BUDGET)
        if n % 2:
            _done(store.budget(f"budget:{n}", BUDGET, withdraw=True))
        clock.advance(0.05)  # 1,000 s in all: 200 budgets in each 10 s window
    assert len(store._budgets) <= 2 * SWEEP_AFTER
    assert len(store._deposits) <= 2 * SWEEP_AFTER
    assert _done(store.budget("spent", spent, withdraw=True)) is False, "still spent"


def test_full_token_buckets_are_swept_and_a_queue_kept(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    bucket = TokenBucket(rate=0.001, burst=1.0)
    _done(store.reserve("queue", bucket))
    wait = _done(store.reserve("queue", bucket))
    assert wait > 0
    fast = TokenBucket(rate=10.0, burst=1.0)
    for n in range(20_000):
        _done(store.reserve(f"pace:{n}", fast))
        clock.advance(0.01)
    assert len(store._buckets) <= 2 * SWEEP_AFTER
    # 200 s later the queue is 0.8 token short, plus this one: 1,800 s (a fresh bucket: 0).
    assert _done(store.reserve("queue", bucket)) == pytest.approx(1800.0)


def test_sweeps_are_amortised_while_every_key_stays_live(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore(clock)
    sweeps = 0
    sweep = store._sweep

    def counted() -> None:
        nonlocal sweeps
        sweeps += 1
        sweep()

    monkeypatch.setattr(store, "_sweep", counted)
    for n in range(SWEEP_AFTER * 16):
        _done(store.set(f"k{n}", "v", ttl=1e6))
    assert len(store._values) == SWEEP_AFTER * 16, "nothing live is dropped"
    assert sweeps <= 5, "the threshold doubles with what is live: log2(16) + 1 sweeps"
