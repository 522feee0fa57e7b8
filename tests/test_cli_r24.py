"""The CLI and the demo: invariants that cannot pass vacuously, usage errors said plainly."""

from __future__ import annotations

import asyncio
import io
import math

import pytest

from le_transport import demo
from le_transport.clock import RealClock

# -- the demo checks that every retry's pause was waited, the last one too ----------------------


def _skipping(pause: float) -> type[RealClock]:
    """A RealClock whose sleeps of ``pause`` seconds end at once: a retry schedule that
    announces that pause and does not wait it."""

    class Skipping(RealClock):
        async def sleep(self, seconds: float) -> None:
            if math.isclose(seconds, pause, rel_tol=1e-9):
                await asyncio.sleep(0)
                return
            await super().sleep(seconds)

    return Skipping


def test_the_demo_fails_when_the_users_call_s_last_pause_is_not_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Users API call's second pause (10 s scaled: 0.1 s) announced, not waited: only
    the first was checked (the gap to the next retry), the last never was."""
    monkeypatch.setattr(demo, "RealClock", _skipping(10 * 0.01))
    out = io.StringIO()
    code = demo.run_demo(time_scale=0.01, seed=7, out=out)
    text = out.getvalue()
    assert "[FAILED] the Users API call's retries paused the guide's 5 and 10 s (scaled)" in text
    assert code == 1, text[-1500:]


def test_the_demo_fails_when_the_domain_api_s_pause_is_not_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Domain API's one retry: its 5 s (scaled) pause announced, not waited."""
    monkeypatch.setattr(demo, "RealClock", _skipping(5 * 0.01))
    out = io.StringIO()
    code = demo.run_demo(time_scale=0.01, seed=7, out=out)
    text = out.getvalue()
    assert "[FAILED] the Domain API's retry paused the guide's 5 s (scaled)" in text
    assert code == 1, text[-1500:]
