"""The Login Service session's fallback login after a refresh it did not accept: what its
give-up says, whom it fails, and the deadline of the refresh that falls back to it.

Against the simulator on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from le_transport import Engine, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Match, Status
from le_transport.errors import DeadlineExceeded, RetriesExhausted
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.providers.login import _KEEPALIVE_FALLBACK
from le_transport.testing import VirtualClock
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, make_sim

REFRESH = Match(method="POST", path="*/refresh")
LOGIN = Match(method="POST", path="*/login")


def _login_give_ups(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if "/login" in r.getMessage() and "failed after" in r.getMessage()
    ]


async def test_a_redirected_refreshs_fallback_login_says_the_session_is_dropped_once_refused(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The keepalive's refresh at 0 s is redirected (302): its fallback login meets 503s and
    the refresh gives up at its 5 s deadline, the login going on. The keepalive's next refresh,
    at 6 s, is refused (401) and joins that login. When the login gives up, the refused
    session is dropped: its give-up line says so, not that the session is kept and refreshed
    again (the words of the redirected refresh that started it)."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            sim.faults.add(
                FaultRule("moved, then refused", sequence=(Status(302), Status(401)), match=REFRESH)
            )
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            first = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK, deadline=5.0))
            await clock.sleep(6)
            assert isinstance(first.exception(), DeadlineExceeded)
            second = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK, deadline=5.0))
            await clock.sleep(120)
            assert isinstance(second.exception(), DeadlineExceeded)
            assert sim.count("POST", "*/refresh") == 2
            assert auth.session is None
    gave_up = _login_give_ups(caplog)
    assert [r.levelno for r in gave_up] == [logging.WARNING], [r.getMessage() for r in gave_up]
    assert "handled: the refused session is dropped" in gave_up[0].getMessage()
    assert "the session is kept" not in gave_up[0].getMessage()


async def test_a_keepalives_fallback_login_a_callers_refresh_joined_gives_up_as_its_failure(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The keepalive's refresh at 0 s is refused (401): its fallback login meets 503s and the
    refresh gives up at its 5 s deadline, the login going on. A caller's ``refresh()`` at 6 s
    is refused too and joins that login; when it gives up, the caller's refresh fails with
    it: the give-up is an ERROR, once, as for any refresh a caller waits for, not the
    keepalive's handled WARNING."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            run = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK, deadline=5.0))
            await clock.sleep(6)
            assert isinstance(run.exception(), DeadlineExceeded)
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(120)
            assert isinstance(caller.exception(), RetriesExhausted)
            assert sim.count("POST", "*/login") == 1 + 4
            assert auth.session is None
    gave_up = _login_give_ups(caplog)
    assert [r.levelno for r in gave_up] == [logging.ERROR], [r.getMessage() for r in gave_up]
    assert "handled" not in gave_up[0].getMessage()


async def test_a_keepalives_refresh_a_callers_refresh_joined_gives_up_as_its_failure(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The keepalive's refresh at 0 s meets 503s; a caller's ``refresh()`` at 1 s joins it
    (one schedule) and fails with it when it gives up: an ERROR, once, as for the caller's own
    refresh, not the keepalive's handled WARNING. The session is kept."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            session = auth.session
            sim.faults.add(FaultRule("down", Status(503), match=REFRESH))
            run = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK))
            await clock.sleep(1)
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(120)
            assert isinstance(run.exception(), RetriesExhausted)
            assert isinstance(caller.exception(), RetriesExhausted)
            assert sim.count("POST", "*/refresh") == 4
            assert auth.session is session
    gave_up = [
        r
        for r in caplog.records
        if "/refresh" in r.getMessage() and "failed after" in r.getMessage()
    ]
    assert [r.levelno for r in gave_up] == [logging.ERROR], [r.getMessage() for r in gave_up]
    assert "handled" not in gave_up[0].getMessage()


class _SlowDomains(StaticDomains):
    """Static hosts whose answers take ``delay`` seconds of the clock once ``slow`` is set (a
    Domain API refetch on its retry schedule, the map having been invalidated)."""

    def __init__(self, hosts: dict[str, str], clock: VirtualClock) -> None:
        super().__init__(hosts)
        self.clock = clock
        self.delay = 0.0

    async def resolve(self, service: str) -> str:
        if self.delay:
            await self.clock.sleep(self.delay)
        return await super().resolve(service)


async def test_the_engines_refresh_run_resolving_a_slow_host_ends_at_its_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's keepalive refreshes at 300 s, and the Login Service's host takes 100 s to
    resolve (the Domain API refetched on its schedule): the run fails at its 30 s deadline
    with a typed :class:`DeadlineExceeded`, not cut by its backstop a second later as a bare
    ``TimeoutError``; nothing is sent, and the next run refreshes."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = _SlowDomains(sim.domains, clock)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            domains.delay = 100.0
            await clock.sleep(
                CHAT_AGENT_API_REFRESH.interval + CHAT_AGENT_API_REFRESH.timeout + 1.5
            )
            assert task.failures == 1
            assert sim.count("POST", "*/refresh") == 0
            domains.delay = 0.0
            await clock.sleep(CHAT_AGENT_API_REFRESH.interval)
            assert sim.count("POST", "*/refresh") == 1
            assert auth.refreshes == 1
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    run = [m for m in messages if "keepalive refresh failed" in m]
    assert run, messages
    assert "DeadlineExceeded" in run[0], messages
    assert not [m for m in messages if "TimeoutError" in m], messages
