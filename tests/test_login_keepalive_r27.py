"""The Login Service session keepalive through an outage: what still went wrong.

- ``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")`` ran the provider's refresh on the
  request schedule alone, and the run was cut at its 30 s timeout inside that schedule: a
  Login Service answering 503 with ``Retry-After: 12`` (attempts at 0, 12 and 24 s, the next
  pause past 30 s) was logged as a bare ``TimeoutError`` at every run, never as the refresh's
  own give-up naming the 503. The refresh's request now has the run's timeout as its
  deadline: it gives up within the run, with the service's answer, as a WARNING.
- The provider's own keepalive tried a failed refresh again after half the TTL left (at least
  5 s), whatever ``Retry-After`` the Login Service sent with its 429 or 503: it now waits as
  long as asked, up to the policy's ``retry_after_ceiling``, and never past the session's
  expiry.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import logging

import pytest

from le_transport import Engine, RetryPolicy, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Match, Status
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.testing import VirtualClock
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, make_sim

REFRESH = Match(method="POST", path="*/refresh")


# -- the engine's refresh keepalive gives up within its run -------------------------------------


async def test_the_engines_login_refresh_gives_up_within_its_run_with_the_services_answer(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("down", Status(503, retry_after=12), match=REFRESH))
            await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 45)
            assert task.running
            assert task.failures == 1
            # 0, 12, 24 s: a fourth attempt (after a 15 s pause) would pass the run's 30 s.
            assert sim.count("POST", "*/refresh") == 3
            assert auth.session is session  # kept
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    gave_up = [r for r in caplog.records if "failed after 3 attempt(s)" in r.getMessage()]
    assert len(gave_up) == 1, messages
    assert gave_up[0].levelno == logging.WARNING
    assert "503" in gave_up[0].getMessage()
    assert (
        gave_up[0]
        .getMessage()
        .endswith("; handled: the session is kept and the keepalive tries the refresh again")
    )
    assert not [m for m in messages if "TimeoutError" in m]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_engines_login_refresh_keeps_the_engines_shorter_deadline(
    clock: VirtualClock,
) -> None:
    """A 10 s deadline on every call of the engine, shorter than the run's 30 s: the refresh
    gives up after one attempt (the 12 s pause asked for would pass it), as any call does."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        engine = Engine(
            domains, scheme="http", clock=clock, auth=auth, retry=RetryPolicy(deadline=10.0)
        )
        async with engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("down", Status(503, retry_after=12), match=REFRESH))
            await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 45)
            assert task.failures == 1
            assert sim.count("POST", "*/refresh") == 1
            await task.close()


async def test_the_engines_login_refresh_that_succeeds_is_unchanged(clock: VirtualClock) -> None:
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            await clock.sleep(2 * CHAT_AGENT_API_REFRESH.interval + 10)
            assert task.failures == 0
            assert auth.refreshes == 2
            assert auth.session is session
            await task.close()


# -- the provider's own keepalive honours Retry-After -------------------------------------------


def _own_keepalive(sim_domains: object, ceiling: float | None = None) -> UserLogin:
    retry = RetryPolicy(pauses=())
    if ceiling is not None:
        retry = RetryPolicy(pauses=(), retry_after_ceiling=ceiling)
    return UserLogin(ACCOUNT, USER, PASSWORD, domains=sim_domains, retry=retry)  # type: ignore[arg-type]


async def test_the_providers_keepalive_waits_the_retry_after_its_refresh_was_answered(
    clock: VirtualClock,
) -> None:
    """TTL 600 s: refreshed at 300 s, answered 503 with ``Retry-After: 200``. Half the TTL
    left was 150 s: it came back at 450 s, within the rest asked for; now at 500 s."""
    async with make_sim(clock, session_ttl=600.0) as sim:
        domains = StaticDomains(sim.domains)
        auth = _own_keepalive(domains, ceiling=250.0)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            sim.faults.add(FaultRule("busy", Status(503, retry_after=200), match=REFRESH))
            await clock.sleep(301)
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(190)  # 491 s
            assert sim.count("POST", "*/refresh") == 1
            sim.faults.clear()
            await clock.sleep(10)  # 501 s
            assert sim.count("POST", "*/refresh") == 2
            assert auth.refreshes == 1
            assert auth.session is session


async def test_the_providers_keepalive_caps_the_retry_after_by_the_policys_ceiling(
    clock: VirtualClock,
) -> None:
    """``Retry-After: 400`` with a 200 s ceiling: back at 500 s (not 450 s, nor at expiry)."""
    async with make_sim(clock, session_ttl=600.0) as sim:
        domains = StaticDomains(sim.domains)
        auth = _own_keepalive(domains, ceiling=200.0)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            sim.faults.add(FaultRule("busy", Status(503, retry_after=400), match=REFRESH))
            await clock.sleep(491)
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(10)  # 501 s
            assert sim.count("POST", "*/refresh") == 2


async def test_the_providers_keepalive_never_waits_a_retry_after_past_the_sessions_expiry(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """TTL 100 s: refreshed at 50 s, answered 429 with ``Retry-After: 200`` (60 s ceiling):
    half the TTL left was 25 s (back at 75 s); the ceiling's 60 s would pass the session's
    expiry at 100 s, when it comes back."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock, session_ttl=100.0) as sim:
        domains = StaticDomains(sim.domains)
        auth = _own_keepalive(domains)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            sim.faults.add(FaultRule("busy", Status(429, retry_after=200), match=REFRESH))
            await clock.sleep(51)
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(48)  # 99 s
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(2)  # 101 s
            assert sim.count("POST", "*/refresh") == 2
            assert auth.session is session
    [failed] = [r for r in caplog.records if "refresh failed" in r.getMessage()][:1]
    assert "retry_in=50" in failed.getMessage()
    for record in caplog.records:
        text = record.getMessage()
        assert PASSWORD not in text
        assert session.bearer.reveal() not in text
        if session.csrf is not None:
            assert session.csrf.reveal() not in text
        if session.session_id is not None:
            assert session.session_id.reveal() not in text
