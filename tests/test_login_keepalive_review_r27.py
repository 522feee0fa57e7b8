"""The engine's Login Service refresh keepalive, its run's deadline, and the refreshes it shares.

``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")`` gives the refresh's request the run's
timeout as its deadline (``LoginServiceAuth._refresh(deadline=...)``). What that deadline
governs besides the run itself:

- a Login Service that does not answer: the refresh ends at the run's deadline, where its
  schedule used to go on in the background (the refresh is a shared run, which the run's
  timeout does not cancel) long after the run had failed;
- a caller's ``refresh()`` that joins the keepalive's refresh shares its one schedule (no
  second one is sent beside it) and its outcome;
- with a session shared by a fleet, a refresh that waited for another process's past its
  deadline sends nothing, and lets the fleet's lock go.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from le_transport import Engine, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Hang, Match, Status
from le_transport.errors import DeadlineExceeded, RetriesExhausted
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, make_sim

REFRESH = Match(method="POST", path="*/refresh")
INTERVAL = CHAT_AGENT_API_REFRESH.interval
TIMEOUT = CHAT_AGENT_API_REFRESH.timeout


async def test_a_silent_login_service_is_not_refreshed_past_the_runs_deadline(
    clock: VirtualClock,
) -> None:
    """The refresh hangs: the run ends at its 30 s timeout, and so does the refresh. Before,
    the shared refresh went on after the run with its whole schedule (a second attempt at
    65 s, a third...), a refresh the keepalive no longer waited for."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("silent", Hang(), match=REFRESH))
            await clock.sleep(INTERVAL + TIMEOUT + 1)
            assert task.failures == 1
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(INTERVAL - TIMEOUT - 10)
            assert sim.count("POST", "*/refresh") == 1, "nothing sent between the runs"
            assert task.running
            await task.close()


async def test_a_callers_refresh_joining_the_keepalives_shares_its_one_schedule(
    clock: VirtualClock,
) -> None:
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("down", Status(503), match=REFRESH))
            await clock.sleep(INTERVAL + 1)
            assert sim.count("POST", "*/refresh") == 1
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(TIMEOUT)
            assert caller.done()
            # The keepalive's run: attempts at 0, 5 and 15 s, within its 30 s; the caller gets
            # its outcome, an outage (the session kept), and no schedule of its own was sent.
            error = caller.exception()
            assert isinstance(error, RetriesExhausted)
            assert error.status == 503
            assert len(error.attempts) == 3
            assert sim.count("POST", "*/refresh") == 3
            assert task.failures == 1
            assert auth.session is not None
            await task.close()


def _fleet_member(sim: Simulator, clock: VirtualClock, store: MemoryStore) -> Engine:
    domains = csds_for(sim)
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=domains,
        keepalive=False,
        logout_on_close=False,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
    )
    return Engine(domains, scheme="http", clock=clock, auth=auth)


async def test_a_fleet_refresh_that_waited_past_its_deadline_sends_nothing_and_frees_the_lock(
    clock: VirtualClock,
) -> None:
    """Process A's own refresh holds the fleet's lock from 299 s to 359 s (503, Retry-After
    20 s, at every attempt). Process B's keepalive run at 300 s waits for it: its deadline
    (330 s) passes meanwhile, so once the lock is free its refresh sends nothing (A was just
    answered 503), and lets the lock go: B's next refresh is sent, and refreshes."""
    async with make_sim(clock) as sim, AsyncExitStack() as stack:
        store = MemoryStore(clock)
        a = await stack.enter_async_context(_fleet_member(sim, clock, store))
        b = await stack.enter_async_context(_fleet_member(sim, clock, store))
        await a.login()
        await b.login()
        assert sim.tokens.logins == 1
        a_auth, b_auth = a.auth, b.auth
        assert isinstance(a_auth, UserLogin)
        assert isinstance(b_auth, UserLogin)
        task = b.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        sim.faults.add(FaultRule("busy", Status(503, retry_after=20), match=REFRESH))
        await clock.sleep(INTERVAL - 1)
        a_refresh = asyncio.ensure_future(a_auth.refresh())
        await clock.sleep(62)  # 361 s
        assert a_refresh.done()
        assert isinstance(a_refresh.exception(), RetriesExhausted)
        # A's 4 attempts (299, 319, 339, 359 s); none of B's.
        assert sim.count("POST", "*/refresh") == 4
        assert task.failures == 1
        sim.faults.clear()
        assert await b_auth.refresh() is True
        assert sim.count("POST", "*/refresh") == 5
        await task.close()


class _SlowDomains(StaticDomains):
    """A static map whose resolve takes ``slow`` (a clock, seconds) once set."""

    slow: tuple[VirtualClock, float] | None = None

    async def resolve(self, service: str) -> str:
        if self.slow is not None:
            clock, seconds = self.slow
            await clock.sleep(seconds)
        return await super().resolve(service)


async def test_a_refresh_whose_deadline_passed_before_it_was_sent_says_so(
    clock: VirtualClock,
) -> None:
    """``_refresh(deadline=...)`` run out while the host is resolved: nothing is sent, a
    :class:`DeadlineExceeded` (an outage: the session kept), naming no secret."""
    async with make_sim(clock) as sim:
        domains = _SlowDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            domains.slow = (clock, 10.0)
            try:
                await auth._refresh(deadline=5.0)
            except DeadlineExceeded as exc:
                error = exc
            else:
                raise AssertionError("no DeadlineExceeded")
            assert sim.count("POST", "*/refresh") == 0
            assert auth.session is session
            text = str(error)
            assert "deadline passed before it was sent" in text
            for secret in (PASSWORD, session.bearer.reveal()):
                assert secret not in text
