"""The fleet's "two probes out at once" that the interleaving property test
(test_breaker_fleet) found in random mode, replayed deterministically.

Its falsifying example (``--hypothesis-seed=8999``): A trips at 100 (a 5 s break, the trip kept
5 s + the 10 s lease); B, C and D adopt it; B's second call becomes the fleet's probe (lock taken
at 106, its lease until 116; the trip's tail rewritten at 108) and lasts 16 s, as B's plan draws;
at 116 the lock expired with B's probe still out, D took it, found the trip gone at 119 and
probed too. A fleet probe is now bounded by its lock: one with no bound of its own is cut (the
retry loop's attempt timeout, limit_attempt) a margin before the lease ends, a timeout that is
its failure verdict, published before the lock goes (docs/architecture.md, the breaker section).
"""

from __future__ import annotations

import logging

import pytest

from tests.test_breaker_fleet import _Plan, run_interleaved


def _seed_8999_plan() -> _Plan:
    """The draws of the falsifying example (in _Plan's order)."""
    plan = _Plan.__new__(_Plan)
    plan.a_fails_after = 0.0
    plan.a_reopens = 0
    plan.a_probe_lasts = 0.0
    plan.b_fails_after = 16.0  # B's attempts, its probe included, outlive the 10 s lease
    plan.c_calls_every = 1.0
    plan.d_every = 0.0
    plan.d_fails_after = 1.0
    plan.back = False
    return plan


SCHEDULE = [0, 0, 0, 0, -1, -1, -1]


def test_at_most_one_probe_is_out_even_past_its_lease() -> None:
    doubles = run_interleaved(_seed_8999_plan(), SCHEDULE)
    assert not doubles, f"two probes out at once: {doubles}"


def test_the_probe_that_would_outlive_its_lease_is_cut_and_reopens_the_fleet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        run_interleaved(_seed_8999_plan(), SCHEDULE)
    opened = [r.getMessage() for r in caplog.records if "after timeout" in r.getMessage()]
    assert opened, "B's probe was cut, a timeout"
    assert "opening 2" in opened[0], "its failure re-opened the fleet's breaker"
