"""Reconnect pacing: the token bucket (pure) and the pacer on virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport import ConfigurationError
from le_transport.policies import TokenBucket
from le_transport.sockets import ReconnectPacer
from le_transport.testing import VirtualClock


def test_a_lone_reconnect_goes_at_once() -> None:
    assert TokenBucket().reserve(100.0).wait == 0.0


def test_ten_thousand_reconnects_at_once_are_spread_over_about_ten_seconds() -> None:
    bucket = TokenBucket()
    waits = []
    for _ in range(10_000):
        reservation = bucket.reserve(50.0)
        bucket = reservation.bucket
        waits.append(reservation.wait)
    assert waits[:100] == [0.0] * 100
    assert waits == sorted(waits)
    assert 9.0 < waits[-1] < 10.0
    # Past the burst, never more than `rate` reconnects in any one second.
    assert sum(1 for w in waits if 2.0 <= w < 3.0) == 1000


def test_the_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    for _ in range(2):
        bucket = bucket.reserve(0.0).bucket
    assert bucket.reserve(0.0).wait == pytest.approx(0.1)
    assert bucket.reserve(0.1).wait == pytest.approx(0.0)
    assert bucket.available(10.0) == 2


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"burst": 0.5}, {"rate": float("inf")}])
def test_invalid_bucket_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        TokenBucket(**kwargs)


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    arrivals=st.lists(st.floats(0, 100), min_size=1, max_size=200),
)
def test_reconnects_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: int, arrivals: list[float]
) -> None:
    """However reconnects arrive, the slots handed out by time T number at most
    ``burst + rate * (T - first)``, and no slot is handed out before it was asked for."""
    bucket = TokenBucket(rate=rate, burst=burst)
    slots = []
    for at in sorted(arrivals):
        reservation = bucket.reserve(at)
        bucket = reservation.bucket
        assert reservation.wait >= 0
        slots.append(at + reservation.wait)
    first = min(arrivals)
    for i, slot in enumerate(sorted(slots)):
        assert i + 1 <= burst + rate * (slot - first) + 1e-6


async def test_the_pacer_waits_on_the_clock(clock: VirtualClock) -> None:
    pacer = ReconnectPacer(clock, TokenBucket(rate=2, burst=1))
    assert await pacer.acquire() == 0.0
    assert await pacer.acquire() == pytest.approx(0.5)
    assert clock.now() == pytest.approx(0.5)
