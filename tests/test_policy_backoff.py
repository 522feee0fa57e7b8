"""BackoffPolicy: the outer recovery schedule (re-login, reconnect), proved as pure values."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from le_transport.errors import ConfigurationError
from le_transport.policies import GUIDE_5XX_PAUSES, BackoffPolicy, RetryPolicy


@st.composite
def policies(draw: st.DrawFn) -> BackoffPolicy:
    first = draw(st.floats(0.001, 1000))
    cap = draw(st.floats(first, first * 1000))
    factor = draw(st.floats(1.01, 10))
    jitter = draw(st.floats(0, 0.99))
    floor = draw(st.floats(0, cap))
    return BackoffPolicy(first=first, cap=cap, factor=factor, jitter=jitter, floor=floor)


attempts = st.integers(1, 200)


@given(policies(), attempts)
def test_unjittered_delays_never_shrink_and_never_exceed_the_cap(
    policy: BackoffPolicy, n: int
) -> None:
    """Invariant: base_delay(n) <= base_delay(n + 1) <= cap."""
    assert policy.base_delay(n) <= policy.base_delay(n + 1) <= policy.cap


@given(policies(), attempts)
def test_unjittered_delays_strictly_grow_until_the_cap(policy: BackoffPolicy, n: int) -> None:
    """Invariant: base_delay strictly grows until it reaches the cap, then stays there; a
    floor above ``first`` is where it starts growing from."""
    now, nxt = policy.base_delay(n), policy.base_delay(n + 1)
    if now < policy.cap:
        assert nxt > now
    else:
        assert nxt == now == policy.cap


@given(policies(), attempts, st.floats(0, 1))
def test_jittered_delays_stay_inside_their_bounds_and_above_the_floor(
    policy: BackoffPolicy, n: int, rand: float
) -> None:
    """Invariant: delay(n, rand) lies within bounds(n), which lie within base * (1 ± jitter)
    and never under the floor."""
    low, high = policy.bounds(n)
    delay = policy.delay(n, rand)
    base = policy.base_delay(n)
    assert low <= delay <= high
    assert delay >= policy.floor
    assert low >= min(base * (1 - policy.jitter), base) - 1e-9 or low == policy.floor
    assert high <= max(base * (1 + policy.jitter), policy.floor) + 1e-9


@given(attempts, st.floats(0, 1))
def test_relogin_never_waits_less_than_the_request_schedules_last_pause(
    n: int, rand: float
) -> None:
    """Invariant: the guide's rule: an outer retry is always longer than the last request
    pause (15 s), jitter included."""
    assert BackoffPolicy.relogin().delay(n, rand) >= RetryPolicy().last_pause == 15.0


def test_relogin_defaults_are_2_4_8_16_minutes_capped() -> None:
    policy = BackoffPolicy.relogin()
    assert [policy.base_delay(n) for n in range(1, 7)] == [120, 240, 480, 960, 960, 960]
    assert policy.jitter == 0.2
    assert policy.floor == GUIDE_5XX_PAUSES[-1]
    assert policy.bounds(1) == pytest.approx((96.0, 144.0))


def test_reconnect_starts_at_about_a_second_and_caps_at_two_minutes() -> None:
    policy = BackoffPolicy.reconnect(max_attempts=10)
    assert [policy.base_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 64, 120, 120]
    assert policy.next_delay(10, elapsed=0) is not None
    assert policy.next_delay(11, elapsed=0) is None


@given(st.integers(1, 50), attempts)
def test_max_attempts_ends_next_delay(max_attempts: int, n: int) -> None:
    """Invariant: next_delay is None exactly for attempts past max_attempts."""
    policy = BackoffPolicy(max_attempts=max_attempts)
    assert (policy.next_delay(n, elapsed=0.0) is None) == (n > max_attempts)


@given(st.floats(1, 1e5), st.floats(0, 1e5), attempts, st.floats(0, 1))
def test_deadline_ends_next_delay(deadline: float, elapsed: float, n: int, rand: float) -> None:
    """Invariant: next_delay never returns a delay that would end past the deadline, and
    returns one whenever it would not."""
    policy = BackoffPolicy(deadline=deadline)
    delay = policy.next_delay(n, elapsed=elapsed, rand=rand)
    if delay is None:
        assert elapsed + policy.delay(n, rand) > deadline
    else:
        assert elapsed + delay <= deadline


def test_unlimited_by_default() -> None:
    policy = BackoffPolicy()
    assert policy.max_attempts is None
    assert policy.deadline is None
    assert policy.next_delay(10_000, elapsed=1e9) == 960.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert BackoffPolicy(factor=10).base_delay(10**6) == BackoffPolicy().cap


@given(st.floats(0.001, 10))
def test_scaled_keeps_the_shape(factor: float) -> None:
    """Invariant: scaling multiplies every un-jittered delay by the factor."""
    policy = BackoffPolicy.relogin()
    scaled = policy.scaled(factor)
    for n in range(1, 8):
        assert scaled.base_delay(n) == pytest.approx(policy.base_delay(n) * factor)


def test_delay_with_a_draw_outside_0_1_stays_in_bounds() -> None:
    policy = BackoffPolicy.relogin()
    low, high = policy.bounds(1)
    assert low <= policy.delay(1, rand=-5) <= high
    assert low <= policy.delay(1, rand=7) <= high


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"first": 0}, "first"),
        ({"factor": 1}, "factor"),
        ({"factor": True}, "factor"),
        ({"cap": 1, "first": 2}, "cap"),
        ({"jitter": 1.5}, "jitter"),
        ({"floor": -1}, "floor"),
        ({"floor": 2000}, "floor"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"deadline": -1}, "deadline"),
    ],
)
def test_invalid_backoff_is_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cap", "jitter"), [(1.7e308, 0.2), (sys.float_info.max, 0.01)])
def test_a_cap_whose_jittered_delay_passes_float_range_is_refused(
    cap: float, jitter: float
) -> None:
    """BackoffPolicy(cap=1.7e308) was taken, and a draw near 1 made the delay
    1.7e308 * 1.2: infinity, which the recovery loop would sleep."""
    with pytest.raises(ConfigurationError, match=r"BackoffPolicy\.cap .*finite"):
        BackoffPolicy(first=1.0, cap=cap, jitter=jitter, floor=0.0)


def test_a_huge_cap_that_jitter_cannot_push_past_float_range_is_still_valid() -> None:
    policy = BackoffPolicy(first=1.0, cap=sys.float_info.max, jitter=0.0, floor=0.0)
    assert math.isfinite(policy.delay(3000, 1.0))
    policy = BackoffPolicy(first=1.0, cap=1.4e308, jitter=0.2, floor=0.0)
    assert all(math.isfinite(d) for d in policy.bounds(3000))


def test_base_delay_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        BackoffPolicy().base_delay(0)


@given(policies())
def test_policies_are_frozen_values(policy: BackoffPolicy) -> None:
    """Invariant: a policy is an immutable value equal to its copy."""
    assume(policy.first > 0)
    with pytest.raises(AttributeError):
        policy.first = 1.0  # type: ignore[misc]
    assert policy == BackoffPolicy(
        first=policy.first,
        cap=policy.cap,
        factor=policy.factor,
        jitter=policy.jitter,
        floor=policy.floor,
    )
