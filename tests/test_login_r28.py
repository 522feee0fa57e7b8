"""The Login Service session's refresh, its fallback login, and the deadlines that bound them.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine, RetryPolicy, SentinelClientCredentials, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Hang, Match, Status
from le_transport.errors import DeadlineExceeded
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.providers._token import MIN_TOKEN_REFRESH
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import CLIENT_SECRET, PASSWORD
from tests.test_providers import ACCOUNT, CLIENT_ID, USER, csds_for, jwt_with, make_sim

REFRESH = Match(method="POST", path="*/refresh")
LOGIN = Match(method="POST", path="*/login")
INTERVAL = CHAT_AGENT_API_REFRESH.interval
TIMEOUT = CHAT_AGENT_API_REFRESH.timeout


# -- the fallback login after a refused refresh ---------------------------------------------------


async def test_the_fallback_login_of_a_refused_refresh_is_waited_for_within_the_runs_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The refresh at 300 s is answered 401; its fallback login 503 with ``Retry-After: 20``
    (attempts at 300, 320, 340, 360 s). The keepalive's run waits for it no longer than its
    own 30 s deadline: it fails at 330 s with a typed :class:`DeadlineExceeded`, not cut by
    the run's backstop as a bare ``TimeoutError``. The login goes on on its own schedule (it
    is shared: a caller may be waiting for it), gives up as an outage the keepalive handles (a
    WARNING, no ERROR), and the session the Login Service refused is dropped then."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            await clock.sleep(INTERVAL + TIMEOUT - 0.5)  # 329.5 s
            assert task.failures == 0
            await clock.sleep(1)  # 330.5 s: the run's deadline passed, its backstop not yet
            assert task.failures == 1
            assert sim.count("POST", "*/login") == 3  # and 300, 320 s: the login goes on
            assert auth.session is session  # kept while its login is out
            await clock.sleep(40)  # 370.5 s
            assert sim.count("POST", "*/login") == 5
            assert auth.session is None  # refused, and its login failed: dropped
            assert task.running
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR], messages
    run = [m for m in messages if "keepalive" in m and "refresh" in m and "failed" in m]
    assert any("DeadlineExceeded" in m for m in run), messages
    assert not [m for m in messages if "TimeoutError" in m], messages
    gave_up = [
        r for r in caplog.records if "POST" in r.getMessage() and "failed after" in r.getMessage()
    ]
    assert gave_up, messages
    for text in messages:
        assert PASSWORD not in text
        assert session.bearer.reveal() not in text


async def test_a_caller_waiting_for_the_fallback_login_gets_it_after_the_run_gave_up(
    clock: VirtualClock,
) -> None:
    """The login the keepalive's refresh falls back to is shared: a caller's login meanwhile
    joins it, and the keepalive's run giving up at its deadline (330 s) does not stop it.
    Answered at 340 s, it is the caller's, and the session the next refresh keeps alive."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            busy = Status(503, retry_after=20)
            sim.faults.add(FaultRule("busy", sequence=(busy, busy), match=LOGIN))
            await clock.sleep(INTERVAL + 10)  # 310 s
            call = asyncio.ensure_future(auth.login())  # joins the login out
            await clock.sleep(TIMEOUT - 9.5)  # 330.5 s
            assert task.failures == 1
            assert not call.done()
            await clock.sleep(10)  # 340.5 s
            assert call.done()
            new = call.result()
            assert new is auth.session
            assert new is not session
            assert sim.count("POST", "*/login") == 4  # 0, 300, 320, 340 s
            sim.faults.clear()
            await clock.sleep(INTERVAL)
            assert task.failures == 1
            assert auth.session is new
            await task.close()


async def test_a_fallback_login_refused_after_the_run_gave_up_still_marks_the_session(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The refresh at 300 s is answered with a redirect; its fallback login 503 with
    ``Retry-After: 40``, then refused (401) at 340 s, after the run gave up (330 s). The
    session is kept and marked all the same: the next run's refresh, redirected again, sends
    no login (the refusal is raised again)."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            session = auth.session
            assert session is not None
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("moved", Status(302), match=REFRESH))
            sim.faults.add(
                FaultRule(
                    "busy, then refused",
                    sequence=(Status(503, retry_after=40), Status(401)),
                    match=LOGIN,
                )
            )
            await clock.sleep(INTERVAL + TIMEOUT + 0.5)  # 330.5 s
            assert task.failures == 1
            await clock.sleep(10)  # 340.5 s
            assert sim.count("POST", "*/login") == 3
            assert auth.session is session  # a redirect says nothing of it: kept
            await clock.sleep(INTERVAL)  # 640.5 s: the next run
            assert sim.count("POST", "*/refresh") == 2
            assert sim.count("POST", "*/login") == 3  # withheld
            assert task.failures == 2
            assert auth.session is session
            assert task.running
            await task.close()
    withheld = [r for r in caplog.records if "sends that login no more" in r.getMessage()]
    assert len(withheld) >= 1


async def test_a_fleets_fallback_login_is_waited_for_within_the_runs_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """As alone, with a session shared by a fleet: the fleet's login after the refused
    refresh is waited for until the run's deadline (330 s), then goes on; its give-up is
    handled (no ERROR), and the refused session is dropped."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = csds_for(sim)
        auth = UserLogin(
            ACCOUNT,
            USER,
            PASSWORD,
            domains=domains,
            keepalive=False,
            shared=SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock),
        )
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            await clock.sleep(INTERVAL + TIMEOUT + 0.5)  # 330.5 s
            assert task.failures == 1
            assert auth.session is not None
            await clock.sleep(40)  # 370.5 s
            assert sim.count("POST", "*/login") == 5
            assert auth.session is None
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR], messages
    assert not [m for m in messages if "TimeoutError" in m], messages


async def test_closing_stops_a_fallback_login_nobody_waits_for_any_more(
    clock: VirtualClock,
) -> None:
    """The run gave up at 330 s; its fallback login is still out (503, ``Retry-After: 20``).
    Closing the engine stops it and the shared run around it: no task is left behind."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            await clock.sleep(INTERVAL + TIMEOUT + 1.5)
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert f"le_transport.fallback_login[{ACCOUNT}]" in names
        left = [
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name().startswith("le_transport.") and not t.done()
        ]
        assert left == []
        assert sim.count("POST", "*/login") == 3


# -- a refresh joined under a deadline -------------------------------------------------------------


async def test_a_refresh_joined_within_its_deadline_gets_the_refresh_it_joined(
    clock: VirtualClock,
) -> None:
    """A caller's refresh is out (503 with ``Retry-After: 8``, then refreshed at 8 s); one
    joined at 1 s with a 10 s deadline gets its outcome, True, at 8 s."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            sim.faults.add(FaultRule("busy", sequence=(Status(503, retry_after=8),), match=REFRESH))
            first = asyncio.ensure_future(auth.refresh())
            await clock.sleep(1)
            joined = asyncio.ensure_future(auth._refresh(deadline=10.0))
            await clock.sleep(7.5)
            assert first.done()
            assert joined.done()
            assert joined.result() is True
            assert first.result() is True
            assert sim.count("POST", "*/refresh") == 2


async def test_a_refresh_joined_waits_no_longer_than_its_own_deadline(
    clock: VirtualClock,
) -> None:
    """The refresh it joins takes until 8 s: one joined at 1 s with a 5 s deadline gets a
    :class:`DeadlineExceeded` at 6 s (it waited to 8 s, past its deadline), and the refresh
    goes on for the caller that started it."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            session = auth.session
            assert session is not None
            sim.faults.add(FaultRule("busy", sequence=(Status(503, retry_after=8),), match=REFRESH))
            first = asyncio.ensure_future(auth.refresh())
            await clock.sleep(1)
            joined = asyncio.ensure_future(auth._refresh(deadline=5.0))
            await clock.sleep(4.5)  # 5.5 s
            assert not joined.done()
            await clock.sleep(1)  # 6.5 s
            assert joined.done()
            error = joined.exception()
            assert isinstance(error, DeadlineExceeded)
            assert error.elapsed == pytest.approx(5.0)
            text = str(error)
            assert "deadline passed" in text
            for secret in (PASSWORD, session.bearer.reveal()):
                assert secret not in text
            assert not first.done()
            await clock.sleep(2)  # 8.5 s
            assert first.result() is True
            assert auth.refreshes == 1


async def test_a_refresh_joined_with_its_deadline_passed_fails_at_once(
    clock: VirtualClock,
) -> None:
    """A deadline that has passed already (0 s) does not wait for the refresh it joins, which
    goes on."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            sim.faults.add(FaultRule("silent", Hang(), match=REFRESH))
            first = asyncio.ensure_future(auth.refresh())
            await clock.sleep(1)
            joined = asyncio.ensure_future(auth._refresh(deadline=0.0))
            await asyncio.sleep(0)
            for _ in range(5):
                await asyncio.sleep(0)
            assert joined.done()
            assert isinstance(joined.exception(), DeadlineExceeded)
            assert clock.now() == pytest.approx(1.0)
            assert not first.done()
            first.cancel()


async def test_the_engines_refresh_run_joining_a_callers_refresh_ends_at_its_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's ``refresh()`` is out at 299 s against a Login Service that does not answer
    (its schedule runs minutes). The keepalive's run at 300 s joins it: it fails at its own
    30 s deadline with a typed :class:`DeadlineExceeded`, not cut by the run's backstop a
    second later as a bare ``TimeoutError``."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("silent", Hang(), match=REFRESH))
            await clock.sleep(INTERVAL - 1)
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(1 + TIMEOUT + 0.5)  # 330.5 s
            assert task.failures == 1
            assert not caller.done()
            caller.cancel()
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    run = [m for m in messages if "keepalive refresh failed" in m]
    assert run, messages
    assert "DeadlineExceeded" in run[0], messages
    assert not [m for m in run if "TimeoutError" in m], messages


# -- the rest a refresh's answers asked for, cut by the provider's own ceiling --------------------


async def test_the_engines_refresh_keepalive_rests_as_long_as_the_providers_policy_allows(
    clock: VirtualClock,
) -> None:
    """The provider's policy honours a ``Retry-After`` up to 500 s, the engine's up to 60 s.
    The refresh at 300 s is answered 503 with ``Retry-After: 400``: the next run comes no
    sooner than 700 s, as the provider's own keepalive would wait, not at the next interval
    (600 s) under the engine's ceiling. The provider owns its session's schedule."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(
            ACCOUNT,
            USER,
            PASSWORD,
            domains=domains,
            keepalive=False,
            retry=RetryPolicy(retry_after_ceiling=500.0),
        )
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(
                FaultRule("busy", sequence=(Status(503, retry_after=400),), match=REFRESH)
            )
            await clock.sleep(INTERVAL + 1)
            assert sim.count("POST", "*/refresh") == 1
            assert task.failures == 1
            await clock.sleep(INTERVAL + 50)  # 651 s
            assert sim.count("POST", "*/refresh") == 1
            await clock.sleep(50)  # 701 s
            assert sim.count("POST", "*/refresh") == 2
            assert auth.refreshes == 1
            await task.close()


async def test_the_engines_refresh_keepalive_rests_no_longer_than_the_providers_policy_allows(
    clock: VirtualClock,
) -> None:
    """The other way round: the provider's policy honours a ``Retry-After`` up to 30 s, the
    engine's up to 600 s. ``Retry-After: 400`` at 300 s: the next run is the next interval's,
    600 s (the provider's own keepalive would not wait 400 s either)."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(
            ACCOUNT,
            USER,
            PASSWORD,
            domains=domains,
            keepalive=False,
            retry=RetryPolicy(retry_after_ceiling=30.0),
        )
        engine = Engine(
            domains,
            scheme="http",
            clock=clock,
            auth=auth,
            retry=RetryPolicy(retry_after_ceiling=600.0),
        )
        async with engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(
                FaultRule("busy", sequence=(Status(503, retry_after=400),), match=REFRESH)
            )
            await clock.sleep(2 * INTERVAL + 31)  # 631 s
            assert task.failures == 1
            assert sim.count("POST", "*/refresh") >= 2
            assert auth.refreshes == 1
            await task.close()


# -- a token read on a wall clock ahead of its issuer's, with nothing to tell it -------------------

#: The issuer's epoch at engine time 0.
_EPOCH = 1_750_000_000.0


async def _token_service(
    serve: ServerFactory, clock: VirtualClock, answer: Callable[[float], dict[str, object]]
) -> tuple[str, list[float]]:
    """A loopback Sentinel token endpoint answering ``answer(issuer's epoch now)``; returns
    its host and the engine times of the requests it got."""
    got: list[float] = []

    async def token(request: web.Request) -> web.Response:
        got.append(clock.now())
        return web.json_response(answer(_EPOCH + clock.now()))

    app = web.Application()
    app.router.add_post(f"/sentinel/api/account/{ACCOUNT}/app/token", token)
    return await serve(app), got


@pytest.mark.parametrize("expires_in", [None, 3600], ids=["exp-only", "with-expires_in"])
async def test_a_wall_clock_ahead_with_no_iat_does_not_fetch_a_token_every_second(
    serve: ServerFactory, clock: VirtualClock, expires_in: int | None
) -> None:
    """Our wall clock is 3598.5 s ahead of the issuer's, whose hour-long JWTs carry no
    ``iat``: each reads as living 1.5 s. Believed, each was fetched anew after 0.75 s, a
    token request for every other call, for ever (``expires_in: 3600`` beside it changed
    nothing). Nothing but our wall clock says they are that short: like a token not
    believed, each is used for ``MIN_TOKEN_REFRESH`` (5 s) at least; a 401 would say sooner
    if one were really dead."""

    def answer(now: float) -> dict[str, object]:
        body: dict[str, object] = {"access_token": jwt_with({"exp": int(now) + 3600})}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return body

    host, got = await _token_service(serve, clock, answer)
    domains = StaticDomains({"sentinel": host})
    auth = SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        CLIENT_SECRET,
        domains=domains,
        wall_clock=lambda: _EPOCH + clock.now() + 3598.5,
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth):
        for _ in range(120):  # a call every 0.5 s for a minute
            await auth.credentials("GET", URL("http://svc/x"))
            await clock.sleep(0.5)
    assert len(got) <= 60 / MIN_TOKEN_REFRESH + 1, got
    gaps = [b - a for a, b in itertools.pairwise(got)]
    assert min(gaps) >= MIN_TOKEN_REFRESH, gaps


async def test_a_jwt_that_reads_short_by_a_clock_in_step_with_its_issuer_still_has_its_iat(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A JWT issued for 4 s (its ``iat`` says so) is still fetched anew before it expires,
    half-way through: the floor is for a life nothing but our wall clock tells."""
    host, _ = await _token_service(
        serve, clock, lambda now: {"access_token": jwt_with({"iat": int(now), "exp": int(now) + 4})}
    )
    domains = StaticDomains({"sentinel": host})
    auth = SentinelClientCredentials(
        ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains, wall_clock=lambda: _EPOCH + clock.now()
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth):
        await auth.credentials("GET", URL("http://svc/x"))
        token = auth.token
        assert token is not None
        assert token.refresh_at == pytest.approx(clock.now() + 2)
