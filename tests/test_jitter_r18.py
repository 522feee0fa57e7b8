"""Round 18: jitter is tested for what it is for, a spread, not only for its bounds.

A schedule with its jitter dropped (every draw taken as 0.5, the middle of the band) stayed
inside every bound the earlier properties checked, so nothing failed: the outer re-login loop,
the request schedule through the real middleware (a 5xx's pause and a Retry-After's spread)
and ``BackoffPolicy.delay``. Each property here is written from the documented formula, not
from the code under test, and fails on a schedule that does not spread.
"""

from __future__ import annotations

import random

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import RetriesExhausted
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_recovery import GUIDE, run_recovery

SEEDS = range(8)


# -- the formula, written out ----------------------------------------------------------------


def expected_delay(policy: BackoffPolicy, attempt: int, rand: float) -> float:
    """``first * factor ** (attempt - 1)``, capped, spread by ``±jitter``, never under the
    floor: the documented formula, independently of BackoffPolicy's own code."""
    base = min(policy.first * policy.factor ** (attempt - 1), policy.cap)
    base = max(base, policy.floor)
    return max(base * (1.0 + policy.jitter * (2.0 * rand - 1.0)), policy.floor)


@given(
    first=st.floats(0.01, 100.0),
    factor=st.floats(1.1, 4.0),
    cap_over=st.floats(0.0, 1000.0),
    jitter=st.floats(0.0, 0.9),
    attempt=st.integers(1, 30),
    rand=st.floats(0.0, 0.999),
)
def test_a_delay_is_the_documented_formula(
    first: float, factor: float, cap_over: float, jitter: float, attempt: int, rand: float
) -> None:
    policy = BackoffPolicy(first=first, factor=factor, cap=first + cap_over, jitter=jitter, floor=0)
    assert policy.delay(attempt, rand) == pytest.approx(expected_delay(policy, attempt, rand))


@given(attempt=st.integers(1, 8), jitter=st.floats(0.05, 0.9))
def test_a_jittered_delay_spreads_across_its_band(attempt: int, jitter: float) -> None:
    policy = BackoffPolicy.reconnect(jitter=jitter)
    low, high = policy.delay(attempt, 0.0), policy.delay(attempt, 0.99)
    base = policy.base_delay(attempt)
    # The band is 2 * jitter * base wide; the draws 0 and 0.99 reach (nearly) both its ends.
    assert high - low == pytest.approx(2 * jitter * base * 0.99)


# -- the outer re-login loop -----------------------------------------------------------------


def test_the_outer_loops_pauses_spread_with_its_seed() -> None:
    policy = BackoffPolicy.relogin()  # 120 s, ±20%
    firsts = []
    for seed in SEEDS:
        recovery, _, results, _ = run_recovery(policy, GUIDE, 1, 1, seed)
        assert results == ["ok"]
        (pause,) = recovery.pauses
        low, high = policy.bounds(1)
        assert low <= pause <= high
        firsts.append(pause)
    # A fleet dropped at once comes back spread: no two of eight alike, over a fair share of
    # the 96-144 s band.
    assert len(set(firsts)) == len(firsts)
    assert max(firsts) - min(firsts) > 0.2 * (144 - 96)


# -- the request schedule, through the real middleware ---------------------------------------


async def _pauses(
    serve: ServerFactory, policy: RetryPolicy, seed: int, retry_after: str | None = None
) -> list[float]:
    """The pauses a GET always answered 503 (with ``Retry-After``) took, on virtual time."""

    async def unavailable(request: web.Request) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        return web.Response(status=503, headers=headers)

    app = web.Application()
    app.router.add_get("/x", unavailable)
    host = await serve(app)
    clock = VirtualClock()
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=policy, rng=random.Random(seed)
    ) as engine:
        with pytest.raises(RetriesExhausted) as caught:
            await engine.request("GET", "svc", "/x")
    return [a.pause for a in caught.value.attempts if a.pause is not None]


@pytest.mark.parametrize("jitter", [0.1, 0.3, 0.5])
async def test_the_middleware_spreads_each_pause_by_the_policys_jitter(
    serve: ServerFactory, jitter: float
) -> None:
    policy = RetryPolicy(jitter=jitter)
    runs = [await _pauses(serve, policy, seed) for seed in SEEDS]
    for pauses in runs:
        assert len(pauses) == 3
        for pause, base in zip(pauses, (5.0, 10.0, 15.0), strict=True):
            assert base * (1 - jitter) - 1e-9 <= pause <= base * (1 + jitter) + 1e-9
    firsts = [pauses[0] for pauses in runs]
    assert len(set(firsts)) == len(firsts)


async def test_clients_told_one_retry_after_come_back_spread_through_the_middleware(
    serve: ServerFactory,
) -> None:
    policy = RetryPolicy(jitter=0.2)
    firsts = [(await _pauses(serve, policy, seed, retry_after="30"))[0] for seed in SEEDS]
    assert all(30.0 <= p <= 36.0 for p in firsts)
    assert len(set(firsts)) == len(firsts)
    # Jitter off (the default): exactly what the server asked, every time.
    assert {(await _pauses(serve, RetryPolicy(), seed, retry_after="30"))[0] for seed in SEEDS} == {
        30.0
    }
