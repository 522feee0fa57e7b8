"""The overload guard and the in-memory store keep bounded state however many keys they see.

A caller (or a hostile domain source) may send calls to ever new hosts and services. The guard
keeps at most ``max_breakers`` breakers, forgetting idle ones (closed, no recent failure) first
and only then the least recently used, with a warning; the store sweeps out what has expired.
These tests drive both with tens of thousands of distinct keys on virtual time and hold them to
what they must never forget: an open breaker, recent failures, a spent budget, a queue of
reservations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from le_transport.errors import CircuitOpen
from le_transport.middleware.overload import OverloadGuard
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

if TYPE_CHECKING:
    from aiohttp import ClientRequest

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


def _done(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must finish without suspending (the in-memory guard never waits)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise AssertionError("the in-memory guard suspended")


class _Call:
    """A call in progress as the retry loop shows it to its gate."""

    def __init__(self, service: str, host: str) -> None:
        self.service = service
        self.method = "GET"
        self.url = f"http://{host}/x"
        self.request = cast("ClientRequest", SimpleNamespace(url=URL(self.url)))


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
    assert set(guard._flushed_at) <= set(guard._pending)


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
            status = BREAKER.record(admission.status, now, failed=failed, rand=0.5)
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
