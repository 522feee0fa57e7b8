"""The outer loop and overload protection keep their documented growth.

- A call refused by an open circuit waits on the breaker between re-logins; that wait counts
  toward the round's pause, so the re-logins stay the policy's pause apart (2, 4, 8 min), not
  that pause plus the breaker waits before it.
- A re-opened circuit breaker never takes a shorter break than the one before it (jitter at
  the cap drew 144 s, then 96 s).
- BackoffPolicy's un-jittered delays strictly grow until the cap, a floor above ``first``
  included (it gave 15, 15, 15, 15, 16 s).
"""

from __future__ import annotations

import itertools

import pytest

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import RecoveryFailed
from le_transport.events import StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, CircuitBreaker
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory


async def test_breaker_waits_count_toward_the_rounds_pause(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A service down (503) behind a breaker whose breaks stay shorter than the round's pause:
    after each re-login the call waits on the breaker (5 s steps), then starts the next round.
    The re-logins come 120, 240 and 480 s apart, as the policy says: the round sleeps only
    what is left of its pause (its event says how much was ``waited``), not the whole pause
    again (120, 240 + 240, 480 + 480 s before)."""
    backend = Backend(503)
    seen: list[tuple[float, StateEvent]] = []
    breaker = CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput=4,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=5.0, cap=600.0, jitter=0.0, floor=0.0),
    )
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    host = await serve(backend.app())
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),
        recovery=BackoffPolicy.relogin(jitter=0.0, max_attempts=3),
        hooks=EventHooks(on_state=(lambda e: seen.append((clock.now(), e)),)),
    )
    async with engine:
        with pytest.raises(RecoveryFailed):
            await engine.request("GET", "svc", "/x", recover=True)
    scheduled = [(at, e.details) for at, e in seen if e.name == "relogin_scheduled"]
    assert [d["pause"] for _, d in scheduled] == [120.0, 240.0, 480.0]
    # When each re-login ran: the rest of its pause after what the call waited on the breaker.
    relogins = [at + d["pause"] - float(d.get("waited", 0.0)) for at, d in scheduled]
    gaps = [b - a for a, b in itertools.pairwise(relogins)]
    # Never shorter than the pause (the calls' own runs between breaker waits only add).
    assert gaps[0] >= 240.0
    assert gaps[1] >= 480.0
    assert gaps == pytest.approx([240.0, 480.0], abs=20)
    # The rounds after the first followed breaker waits: each says how much it counted.
    assert all(d.get("waited", 0.0) > 0 for _, d in scheduled[1:]), scheduled
    (gave_up,) = [e for _, e in seen if e.name == "gave_up"]
    # The request schedule's 30 s, then 120 + 240 + 480 s of re-login pauses and the calls'
    # own short runs in between; the loop gives up at the fourth failure.
    assert gave_up.details["elapsed"] <= 120 + 240 + 480 + 60, gave_up.details


async def test_breaker_waits_never_shorten_the_pause_below_the_request_schedules(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """However long the call waited on the breaker, the round still sleeps at least the request
    schedule's last pause (15 s) before re-logging in: the guide's floor between a failure and
    its outer retry. Here a re-login policy of 20 s: the call waits up to 20 s on 5 s breaks,
    and the round's sleep is never below 15 s."""
    backend = Backend(503)
    seen: list[tuple[float, StateEvent]] = []
    breaker = CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput=4,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=5.0, factor=1.01, cap=6.0, jitter=0.0, floor=0.0),
    )
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    host = await serve(backend.app())
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),
        recovery=BackoffPolicy(first=20.0, factor=1.01, cap=21.0, jitter=0.0, max_attempts=3),
        hooks=EventHooks(on_state=(lambda e: seen.append((clock.now(), e)),)),
    )
    async with engine:
        with pytest.raises(RecoveryFailed):
            await engine.request("GET", "svc", "/x", recover=True)
    scheduled = [e.details for _, e in seen if e.name == "relogin_scheduled"]
    assert len(scheduled) == 3
    for details in scheduled:
        sleep = float(details["pause"]) - float(details.get("waited", 0.0))
        assert sleep >= RetryPolicy().last_pause == 15.0, scheduled
