"""Reconnect pacing: the token bucket (pure) and the pacer on virtual time."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport import ConfigurationError
from le_transport.policies import TokenBucket
from le_transport.policies.pacing import MAX_QUEUE, MIN_RATE
from le_transport.sockets import ReconnectPacer
from le_transport.testing import VirtualClock
from tests.doubles import LateClock


def test_a_lone_reconnect_goes_at_once() -> None:
    assert TokenBucket().reserve(100.0).wait == 0.0


def test_ten_thousand_reconnects_at_once_keep_every_second_under_a_tenth_of_them() -> None:
    bucket = TokenBucket()
    waits = []
    for _ in range(10_000):
        reservation = bucket.reserve(50.0)
        bucket = reservation.bucket
        waits.append(reservation.wait)
    assert waits[:20] == [0.0] * 20
    assert waits == sorted(waits)
    assert 14.0 < waits[-1] < 14.3
    # The worst second a late waker can make: burst + rate * (1 + grace) slots, under 10%.
    worst = bucket.burst + bucket.rate * (1 + bucket.grace)
    assert worst <= 1000
    assert max(bisect.bisect_right(waits, w + 1.0) - i for i, w in enumerate(waits)) <= worst


def test_the_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    for _ in range(2):
        bucket = bucket.reserve(0.0).bucket
    assert bucket.reserve(0.0).wait == pytest.approx(0.1)
    assert bucket.reserve(0.1).wait == pytest.approx(0.0)
    assert bucket.available(10.0) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"burst": 0.5},
        {"rate": float("inf")},
        {"max_misses": -1},
        {"max_misses": 1.5},
        {"max_misses": True},
    ],
)
def test_invalid_bucket_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        TokenBucket(**kwargs)


@pytest.mark.parametrize("rate", [1e-320, 5e-324, 1e-300, 1e-290, MIN_RATE / 2])
def test_a_rate_too_slow_for_a_finite_wait_is_refused(rate: float) -> None:
    """TokenBucket(rate=1e-320) was taken, and its second reservation waited 1 / 1e-320 s:
    infinity. At 1e-290 one token's wait was finite but a full queue's, added to the time, was
    not: refused at construction, naming the field and the bound."""
    with pytest.raises(ConfigurationError, match=r"TokenBucket\.rate .*MIN_RATE \(1e-270"):
        TokenBucket(rate=rate)


@pytest.mark.parametrize("tokens", [-1e308, -sys.float_info.max, -2 * MAX_QUEUE, -(10**300)])
def test_a_queue_deeper_than_a_float_can_count_is_refused(tokens: float) -> None:
    """TokenBucket(rate=0.5, tokens=-1e308) waited (1e308 + 1) / 0.5 s: infinity."""
    with pytest.raises(ConfigurationError, match=r"TokenBucket\.tokens .*-MAX_QUEUE"):
        TokenBucket(rate=0.5, tokens=tokens, updated_at=0.0)


def test_the_slowest_rate_and_the_deepest_queue_wait_a_finite_time_from_any_time() -> None:
    top = sys.float_info.max
    bucket = TokenBucket(rate=MIN_RATE, burst=1, tokens=-MAX_QUEUE, updated_at=top)
    reservation = bucket.reserve(0.0)
    assert math.isfinite(reservation.wait)
    assert math.isfinite(0.0 + reservation.wait)  # the pacer's slot
    # reserve() never takes a bucket past the deepest queue: -2**53 - 1 rounds to -2**53.
    assert reservation.bucket.tokens == -MAX_QUEUE
    assert math.isfinite(reservation.bucket.reserve(1.7e9).wait)


@pytest.mark.parametrize("rate", [MIN_RATE, 1e-13, 0.001])
def test_slow_rates_above_the_bound_are_still_valid(rate: float) -> None:
    bucket = TokenBucket(rate=rate, burst=1.0)
    first = bucket.reserve(0.0)
    assert first.wait == 0.0
    assert first.bucket.reserve(0.0).wait == pytest.approx(1 / rate)


def _most_in_a_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_right(times, t + width) - i for i, t in enumerate(times))


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    arrivals=st.lists(st.floats(0, 100), min_size=1, max_size=200),
    width=st.floats(0, 20),
)
def test_slots_in_any_window_never_exceed_burst_plus_rate_times_its_length(
    rate: float, burst: int, arrivals: list[float], width: float
) -> None:
    """However reconnects arrive, the slots handed out in any window of ``width`` seconds
    number at most ``burst + rate * width``, and no slot is handed out before it was asked
    for."""
    bucket = TokenBucket(rate=rate, burst=burst)
    slots = []
    for at in sorted(arrivals):
        reservation = bucket.reserve(at)
        bucket = reservation.bucket
        assert reservation.wait >= 0
        slots.append(at + reservation.wait)
    assert _most_in_a_window(slots, width) <= burst + rate * width + 1e-6


@given(
    rate=st.floats(1, 1000),
    burst=st.integers(1, 50),
    grace=st.floats(0, 0.5),
    max_misses=st.integers(0, 5),
    arrivals=st.lists(st.floats(0, 20), min_size=1, max_size=150),
    lateness=st.lists(st.floats(0, 2), min_size=1, max_size=50),
    width=st.floats(0, 5),
)
def test_connects_of_late_wakers_in_any_window_never_exceed_burst_plus_rate_times_it_and_grace(
    rate: float,
    burst: int,
    grace: float,
    max_misses: int,
    arrivals: list[float],
    lateness: list[float],
    width: float,
) -> None:
    """Sockets wake late by any amount (a busy loop); each connects only when it woke within
    ``grace`` of its slot, else takes a new slot, at most ``max_misses`` times in a row. Then
    every socket connects in the end, however late the loop always is, and the connects in any
    window of ``w`` seconds number at most ``burst + rate * (w + grace)``, counting a socket
    that kept a slot past its forfeits as connecting at its slot plus the lateness it had."""
    bucket = TokenBucket(rate=rate, burst=burst, grace=grace, max_misses=max_misses)
    late = itertools.cycle(lateness)
    # (time the socket asks, its number, slots it forfeited in a row), served in time order.
    asking = sorted((at, i, 0) for i, at in enumerate(arrivals))
    connects: list[float] = []
    # Connects that kept a late slot after max_misses forfeits, shifted back by their lateness
    # beyond the grace: those, with the others, obey the bucket's bound.
    accounted: list[float] = []
    while asking:
        now, i, misses = asking.pop(0)
        reservation = bucket.reserve(now)
        bucket = reservation.bucket
        if reservation.wait <= 0:
            connects.append(now)
            accounted.append(now)
            continue
        slot = now + reservation.wait
        woke = slot + next(late)
        if bucket.missed(slot, woke, misses):
            assert misses < max_misses
            bisect.insort(asking, (woke, i, misses + 1))
        else:
            connects.append(woke)
            accounted.append(min(woke, slot + grace))
    assert len(connects) == len(arrivals)
    assert _most_in_a_window(accounted, width) <= burst + rate * (width + grace) + 1e-6
    # Without a late slot kept past its forfeits, the connects themselves obey the bound.
    if connects == accounted:
        assert _most_in_a_window(connects, width) <= burst + rate * (width + grace) + 1e-6


async def test_a_socket_waking_past_its_slot_takes_a_new_one(clock: VirtualClock) -> None:
    pacer = ReconnectPacer(LateClock(clock, [0.5]), TokenBucket(rate=10, burst=1, grace=0.1))
    assert await pacer.acquire() == 0.0
    # Its slot was at 0.1; it woke at 0.6, too late: forfeit. By 0.6 the bucket has a token
    # again, so the new slot is at once.
    assert await pacer.acquire() == pytest.approx(0.6)
    assert pacer.missed == 1
    # The forfeited token is not handed out again: the next socket waits for a fresh one.
    assert await pacer.acquire() == pytest.approx(0.1)


async def test_a_loop_always_late_delays_its_sockets_but_never_starves_them(
    clock: VirtualClock,
) -> None:
    """Every sleep ends a whole second late, far past the grace, while 30 sockets compete for
    10 slots a second: each forfeits at most ``max_misses`` slots in a row, then keeps the
    next one, and all of them get back. (Without the limit they would forfeit forever.)"""
    bucket = TokenBucket(rate=10, burst=1, grace=0.1, max_misses=3)
    pacer = ReconnectPacer(LateClock(clock, [1.0] * 10_000), bucket)
    waits = await asyncio.gather(*(pacer.acquire() for _ in range(30)))
    assert len(waits) == 30
    assert 0 < pacer.missed <= 3 * 30


async def test_a_socket_waking_within_the_grace_keeps_its_slot(clock: VirtualClock) -> None:
    pacer = ReconnectPacer(LateClock(clock, [0.09]), TokenBucket(rate=10, burst=1))
    assert await pacer.acquire() == 0.0
    assert await pacer.acquire() == pytest.approx(0.19)
    assert pacer.missed == 0


async def test_the_pacer_waits_on_the_clock(clock: VirtualClock) -> None:
    pacer = ReconnectPacer(clock, TokenBucket(rate=2, burst=1))
    assert await pacer.acquire() == 0.0
    assert await pacer.acquire() == pytest.approx(0.5)
    assert clock.now() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda clock: ReconnectPacer(clock, "x"), "ReconnectPacer.bucket"),  # type: ignore[arg-type]
        (lambda clock: ReconnectPacer(clock, 0), "ReconnectPacer.bucket"),  # type: ignore[arg-type]
        (lambda clock: ReconnectPacer(clock, {"rate": 5}), "ReconnectPacer.bucket"),  # type: ignore[arg-type]
        (lambda clock: ReconnectPacer("not a clock"), "ReconnectPacer.clock"),  # type: ignore[arg-type]
        (lambda clock: ReconnectPacer(None), "ReconnectPacer.clock"),  # type: ignore[arg-type]
    ],
    ids=["bucket str", "bucket 0", "bucket dict", "clock str", "clock None"],
)
def test_a_pacer_refuses_a_bad_bucket_or_clock_when_it_is_made(
    make: Any, field: str, clock: VirtualClock
) -> None:
    """Accepted, they failed with AttributeError at the first reconnect (a falsy bucket
    silently became the default one)."""
    with pytest.raises(ConfigurationError, match=field):
        make(clock)
