"""The retry budget as a pure value: its examples, and its invariant proved by a state machine."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from le_transport.errors import ConfigurationError
from le_transport.policies import RetryBudget


def test_defaults_are_ten_percent_plus_a_tenth_of_a_retry_per_second_over_thirty_seconds() -> None:
    budget = RetryBudget()
    assert (budget.ratio, budget.min_retries_per_second, budget.window) == (0.1, 0.1, 30.0)
    assert budget.floor == pytest.approx(3.0)


def test_quiet_client_can_run_one_calls_whole_schedule_on_the_floor() -> None:
    budget = RetryBudget()
    state = budget.record_request(budget.empty(), 0.0)
    allowed = []
    for at in (5.0, 15.0, 29.0):
        ok, state = budget.try_retry(state, at)
        allowed.append(ok)
    assert allowed == [True, True, True]
    ok, state = budget.try_retry(state, 29.5)
    assert not ok


def test_busy_client_retries_at_most_its_share_of_first_attempts() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    state = budget.record_request(budget.empty(), 1.0, count=100)
    taken = 0
    while True:
        ok, state = budget.try_retry(state, 2.0)
        if not ok:
            break
        taken += 1
    assert taken == 20


@pytest.mark.parametrize(("ratio", "requests"), [(0.7, 90), (0.1, 30), (0.3, 10), (0.9, 70)])
def test_a_whole_share_is_granted_whole_despite_float_rounding(ratio: float, requests: int) -> None:
    # 0.7 * 90 is 62.99999999999999 in floats: the memory store granted 62 retries where the
    # Redis store's script (which forgives rounding) granted 63.
    budget = RetryBudget(ratio=ratio, min_retries_per_second=0.0)
    state = budget.record_request(budget.empty(), 1.0, count=requests)
    taken = 0
    while True:
        ok, state = budget.try_retry(state, 2.0)
        if not ok:
            break
        taken += 1
    assert taken == round(ratio * requests)


def test_first_attempts_stop_paying_for_retries_once_they_leave_the_window() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=10.0, slots=10)
    state = budget.record_request(budget.empty(), 0.0, count=50)
    assert budget.available(state, 9.5) == pytest.approx(10.0)
    assert budget.available(state, 10.0) == 0.0


def test_refused_retry_is_not_counted_against_the_budget() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    state = budget.record_request(budget.empty(), 0.0, count=5)
    ok, state = budget.try_retry(state, 0.0)
    assert ok
    ok, after = budget.try_retry(state, 0.0)
    assert not ok
    assert after.total_retries == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("ratio", -0.1), ("ratio", 1.5), ("min_retries_per_second", -1), ("window", 0), ("slots", 0)],
)
def test_invalid_budget_is_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=field):
        RetryBudget(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate", "window"), [(1e308, 30.0), (1e300, 1e10), (10**300, 1e9), (6e306, 30.0)]
)
def test_a_floor_past_float_range_is_refused(rate: float, window: float) -> None:
    """RetryBudget(min_retries_per_second=1e308) was taken: its floor, rate x window, was
    infinite, and so was every allowance: the budget never bound anything."""
    with pytest.raises(ConfigurationError, match=r"RetryBudget\.min_retries_per_second .*finite"):
        RetryBudget(min_retries_per_second=rate, window=window)


def test_a_huge_but_finite_floor_is_still_a_budget() -> None:
    budget = RetryBudget(min_retries_per_second=5e306, window=30.0)
    assert math.isfinite(budget.floor)
    assert math.isfinite(budget.available(budget.empty(), 0.0))
    allowed, _ = budget.try_retry(budget.empty(), 0.0)
    assert allowed


@pytest.mark.parametrize(("window", "slots"), [(1e-310, 10), (5e-324, 1), (1e-5, 100)])
def test_a_window_whose_slots_are_shorter_than_a_microsecond_is_refused(
    window: float, slots: int
) -> None:
    """Such a window made every slot index infinite: OverflowError at the first call, at run
    time, instead of a ConfigurationError at construction."""
    with pytest.raises(ConfigurationError, match=r"RetryBudget\.window .* at least 1e-06 s"):
        RetryBudget(window=window, slots=slots)


def test_the_shortest_window_allowed_still_decides_at_any_clock_reading() -> None:
    budget = RetryBudget(window=1e-5, slots=10)
    for now in (0.0, 1.7e9, 1e12, 1e300):
        state = budget.record_request(budget.empty(), now, count=10)
        allowed, state = budget.try_retry(state, now)
        assert allowed
        assert not budget.try_retry(state, now)[0]


class BudgetMachine(RuleBasedStateMachine):
    """Whenever a retry is taken, the retries in the window the budget counts never exceed its
    share of that window's first attempts plus its floor; a retry is refused only when taking
    it would pass that limit; and the counters always agree with the events in the window."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = RetryBudget(ratio=0.2, min_retries_per_second=0.1, window=10.0, slots=5)
        self.state = self.budget.empty()
        self.now = 0.0
        self.requests: list[float] = []
        self.retries: list[float] = []

    def _window_start(self) -> float:
        b = self.budget
        return (b.slot_of(self.now) - b.slots + 1) * b.slot_length

    def _counted(self, times: list[float]) -> int:
        start = self._window_start()
        return sum(1 for t in times if t >= start)

    @rule(dt=st.floats(min_value=0.0, max_value=4.0, allow_nan=False))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(count=st.integers(min_value=1, max_value=8))
    def first_attempts(self, count: int) -> None:
        self.state = self.budget.record_request(self.state, self.now, count)
        self.requests.extend([self.now] * count)

    @rule()
    def ask_for_a_retry(self) -> None:
        limit = self.budget.allowance(self._counted(self.requests))
        would_be = self._counted(self.retries) + 1
        ok, self.state = self.budget.try_retry(self.state, self.now)
        if ok:
            self.retries.append(self.now)
            # The invariant, at the moment a retry is taken: with it, the window's retries
            # are still within the share of the window's first attempts plus the floor.
            assert self._counted(self.retries) <= limit + 1e-9
        assert ok == (would_be <= limit + 1e-9), "refused only when the limit would be passed"

    @invariant()
    def counters_match_the_events_in_the_window(self) -> None:
        aged_available = self.budget.available(self.state, self.now)
        expected = max(
            0.0,
            self.budget.allowance(self._counted(self.requests)) - self._counted(self.retries),
        )
        assert math.isclose(aged_available, expected, abs_tol=1e-9)


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_two_huge_ints_whose_product_leaves_floats_range_are_refused_not_overflowed() -> None:
    """Each is a float-sized int, so each passed its validator; their product is not, and the
    finiteness check itself raised OverflowError converting it (found by hypothesis)."""
    with pytest.raises(ConfigurationError, match="must be finite"):
        RetryBudget(min_retries_per_second=10**300, window=10**300)
