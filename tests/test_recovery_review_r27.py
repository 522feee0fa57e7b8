"""Where the outer retry's spread of a floor meets the loop's other limits.

A floor above the drawn re-login pause (a ``Retry-After``, the request schedule's last pause)
is spread above it by up to the policy's jitter. These pin how that spread keeps the loop's
other rules:

- a ``Retry-After`` above the call's ceiling is cut to it before it is spread;
- the spread is drawn from the loop's own (seeded) random source: one seed, one pause;
- pauses still never shrink within an episode: a spread pause, then a round whose floor is
  lower, waits the last pause again, exactly (the last pause itself is not spread);
- jitter 0 waits the floor exactly;
- a call whose deadline the floor fits, but not the spread pause drawn, gives up at once with
  ``RecoveryFailed`` (no round, no re-login), as the request schedule gives up rather than
  pause past its deadline; it does not sleep to the deadline and fail.

A bare loop on virtual time (nothing is sent).
"""

from __future__ import annotations

import random

import pytest

from le_transport import BackoffPolicy, RetryPolicy
from le_transport.errors import AttemptRecord, RecoveryFailed, RetriesExhausted, ServerStatusError
from le_transport.policies import Outcome
from le_transport.providers import StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock
from tests.test_recovery import CountingAuth


def _asked(seconds: float) -> RetriesExhausted:
    """A call whose one attempt was answered 503 with ``Retry-After: seconds``."""
    return RetriesExhausted(
        "gave up",
        last=ServerStatusError("503", status=503),
        attempts=[AttemptRecord(1, Outcome.response(503, retry_after=seconds), None, 0.0)],
    )


def _recovery(
    clock: VirtualClock, *, seed: int = 1, jitter: float = 0.2, ceiling: float = 300.0
) -> tuple[Recovery, CountingAuth]:
    auth = CountingAuth()
    recovery = Recovery(
        domains=StaticDomains({}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy(first=20, factor=2, cap=1000, jitter=jitter, floor=0),
        request_policy=RetryPolicy(pauses=(), retry_after_ceiling=ceiling),
        rng=random.Random(seed),
    )
    return recovery, auth


async def _pauses(recovery: Recovery, *failures: Exception) -> list[float]:
    left = list(failures)

    async def call() -> str:
        if left:
            raise left.pop(0)
        return "ok"

    assert await recovery.run(call) == "ok"
    return list(recovery.pauses)


async def test_a_retry_after_above_the_ceiling_is_cut_to_it_before_it_is_spread() -> None:
    pauses = []
    for seed in range(6):
        recovery, _ = _recovery(VirtualClock(), seed=seed, ceiling=300.0)
        (pause,) = await _pauses(recovery, _asked(10_000.0))
        assert 300.0 <= pause < 360.0
        pauses.append(pause)
    assert len(set(pauses)) == len(pauses)


async def test_one_seed_draws_one_spread() -> None:
    first, _ = _recovery(VirtualClock(), seed=7)
    again, _ = _recovery(VirtualClock(), seed=7)
    other, _ = _recovery(VirtualClock(), seed=8)
    pause = await _pauses(first, _asked(100.0))
    assert await _pauses(again, _asked(100.0)) == pause
    assert await _pauses(other, _asked(100.0)) != pause


async def test_jitter_zero_waits_the_floor_exactly() -> None:
    recovery, _ = _recovery(VirtualClock(), jitter=0.0)
    assert await _pauses(recovery, _asked(100.0)) == [100.0]


async def test_a_spread_pause_is_not_shrunk_by_the_rounds_after_it() -> None:
    """The first round's pause is spread above 100 s; the call fails again, asking 30 s (under
    the second round's drawn 40 s ± 20%, itself under the last pause): the second round waits
    the first's pause exactly, neither a shorter one nor the last pause spread again."""
    for seed in range(6):
        recovery, _ = _recovery(VirtualClock(), seed=seed)
        first, second = await _pauses(recovery, _asked(100.0), _asked(30.0))
        assert 100.0 < first < 120.0
        assert second == first


@pytest.mark.parametrize("seed", range(6))
async def test_a_deadline_the_spread_would_pass_gives_up_at_once(seed: int) -> None:
    """Told ``Retry-After: 100`` with 110 s left: the floor fits, a pause spread past 110 s
    does not. Such a call gives up at once (no sleep to the deadline, no re-login); one whose
    draw fits waits it and recovers."""
    clock = VirtualClock()
    recovery, auth = _recovery(clock, seed=seed)
    spread = 100.0 * (1.0 + 0.2 * random.Random(seed).random())  # (drawn pause under 100 s)
    left = [_asked(100.0)]

    async def call() -> str:
        if left:
            raise left.pop(0)
        return "ok"

    if spread >= 110.0:
        with pytest.raises(RecoveryFailed, match="would pass the call's deadline"):
            await recovery.run(call, until=clock.now() + 110.0)
        assert clock.now() == 0.0
        assert auth.logins == 0
        assert list(recovery.pauses) == []
    else:
        assert await recovery.run(call, until=clock.now() + 110.0) == "ok"
        assert clock.now() == pytest.approx(spread)
        assert list(recovery.pauses) == [pytest.approx(spread)]
