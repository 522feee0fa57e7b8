"""The Login Service session's fallback login after a refused refresh, and a token whose short
life only its JWT ``exp`` tells: what is still to hold around them.

Against the simulator (or a loopback service) on the virtual clock.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiohttp import web

from le_transport import Engine, SentinelClientCredentials, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Hang, Match, Status
from le_transport.errors import DeadlineExceeded, RetriesExhausted
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.providers._token import MIN_TOKEN_REFRESH
from le_transport.providers.login import _KEEPALIVE_FALLBACK
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import CLIENT_SECRET, PASSWORD
from tests.test_providers import ACCOUNT, CLIENT_ID, USER, jwt_with, make_sim

REFRESH = Match(method="POST", path="*/refresh")
LOGIN = Match(method="POST", path="*/login")
INTERVAL = CHAT_AGENT_API_REFRESH.interval
TIMEOUT = CHAT_AGENT_API_REFRESH.timeout

#: The issuer's epoch at engine time 0 (our wall clock in step with it).
_EPOCH = 1_750_000_000.0


async def test_a_token_really_issued_for_2_s_with_only_its_exp_is_replaced_on_its_401(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The token service's JWTs really live 2 s, and only their ``exp`` says so (no ``iat``,
    no ``expires_in``): each is used for ``MIN_TOKEN_REFRESH``, so sent past its expiry. The
    service's 401 then drops it, a new one is fetched at once and the call sent again: every
    call succeeds, and the token service gets one request per token's life, not one a call."""
    fetched: list[float] = []
    refused: list[float] = []

    async def token(request: web.Request) -> web.Response:
        fetched.append(clock.now())
        return web.json_response(
            {"access_token": jwt_with({"exp": _EPOCH + clock.now() + 2.0, "n": len(fetched)})}
        )

    issued: dict[str, float] = {}

    async def api(request: web.Request) -> web.Response:
        value = request.headers.get("Authorization", "").removeprefix("Bearer ")
        born = issued.setdefault(value, clock.now())
        if clock.now() >= born + 2.0:
            refused.append(clock.now())
            return web.Response(status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(f"/sentinel/api/account/{ACCOUNT}/app/token", token)
    app.router.add_get("/api/x", api)
    host = await serve(app)
    domains = StaticDomains({"sentinel": host, "svc": host})
    auth = SentinelClientCredentials(
        ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains, wall_clock=lambda: _EPOCH + clock.now()
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        for _ in range(120):  # a call every 0.5 s for a minute
            resp = await engine.request("GET", "svc", "/api/x")
            assert resp.status == 200
            await clock.sleep(0.5)
    assert refused  # sent expired, as not believed
    # One token a life of 2 s (and the 0.5 s before the next call notices), no more.
    assert len(fetched) <= 60 / 2.0 + 2, fetched
    assert len(fetched) >= 60 / MIN_TOKEN_REFRESH, fetched


# -- the fallback login shared by refreshes that were not all answered alike ----------------------


async def test_a_refused_refresh_joining_a_redirected_ones_fallback_login_drops_its_session(
    clock: VirtualClock,
) -> None:
    """The keepalive run's refresh at 0 s is redirected (302): its fallback login meets a 503
    (``Retry-After: 20``) and the run gives up at its 5 s deadline, the login going on. A
    caller's refresh at 6 s is refused (401): the Login Service says the session is dead. Its
    fallback is the login already out, which then gives up on the outage: the refused session
    is dropped all the same (the next call logs in), not kept as the redirect alone would
    keep it, to be refused again."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            session = auth.session
            assert session is not None
            sim.faults.add(
                FaultRule("moved, then refused", sequence=(Status(302), Status(401)), match=REFRESH)
            )
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            run = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK, deadline=5.0))
            await clock.sleep(5.5)
            assert isinstance(run.exception(), DeadlineExceeded)
            await clock.sleep(0.5)  # 6 s
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(120)
            assert caller.done()
            assert caller.exception() is not None
            assert sim.count("POST", "*/refresh") == 2
            assert auth.session is None  # refused by the Login Service, and no login since


async def test_a_caller_cancelled_while_its_fallback_login_is_out_leaves_no_lost_error(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's refresh is refused (401) and its fallback login meets a 503 (``Retry-After:
    20``); the caller is cancelled at 5 s. The login goes on, gives up at 60 s, and the refused
    session is dropped then; nobody waits for it, yet its failure is taken (no "exception was
    never retrieved" from asyncio) and no secret is logged."""
    caplog.set_level(logging.DEBUG)
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            session = auth.session
            assert session is not None
            sim.faults.add(FaultRule("refused", Status(401), match=REFRESH))
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(5)
            caller.cancel()
            await asyncio.gather(caller, return_exceptions=True)
            assert auth.session is session
            await clock.sleep(120)
            assert sim.count("POST", "*/login") == 1 + 4
            assert auth.session is None
        del caller
        gc.collect()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "never retrieved" in m], messages
    for text in messages:
        assert PASSWORD not in text
        assert session.bearer.reveal() not in text


# -- the fleet's lock, held by another process, waited for within the run's deadline --------------


async def test_the_engines_refresh_run_waits_for_the_fleets_lock_no_longer_than_its_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process of the fleet holds the shared session's lock (a login of its own on a
    slow Login Service) when the keepalive's run refreshes at 300 s: the run waits for it no
    longer than its own 30 s deadline, then fails with a typed :class:`DeadlineExceeded`, not
    cut by its backstop a second later as a bare ``TimeoutError``. Once the lock is free, the
    next run refreshes."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        store = MemoryStore(clock)
        shared = SharedSession(store, account=ACCOUNT, user=USER, clock=clock)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False, shared=shared)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            await clock.sleep(INTERVAL - 1)
            assert await store.add(shared._lock, "another process", ttl=60.0)
            await clock.sleep(1 + TIMEOUT + 0.5)  # 330.5 s
            assert task.failures == 1
            assert sim.count("POST", "*/refresh") == 0
            await clock.sleep(INTERVAL)  # the lock expired at 359 s: refreshed at 600 s
            assert sim.count("POST", "*/refresh") == 1
            assert auth.refreshes == 1
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    run = [m for m in messages if "keepalive refresh failed" in m]
    assert run, messages
    assert "DeadlineExceeded" in run[0], messages
    assert not [m for m in messages if "TimeoutError" in m], messages


async def test_a_fleets_refresh_that_hangs_gives_up_with_its_own_request_at_the_deadline(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The fleet's lock is this process's: its own refresh request is out and the Login Service
    does not answer. The wait for the fleet does not cut it: the request gives up at the run's
    deadline with its own account (the refresh's URL, its attempt cancelled in flight), not as
    a wait for another process's lock."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        shared = SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False, shared=shared)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            sim.faults.add(FaultRule("silent", Hang(), match=REFRESH))
            await clock.sleep(INTERVAL + TIMEOUT + 0.5)
            assert task.failures == 1
            await task.close()
    messages = [r.getMessage() for r in caplog.records]
    run = [m for m in messages if "keepalive refresh failed" in m]
    assert run, messages
    assert "DeadlineExceeded" in run[0], messages
    assert "/refresh" in run[0], messages
    assert "lock" not in run[0], messages


# -- the fallback login's give-up: handled only while no caller waits for it ----------------------


async def test_a_fallback_login_a_caller_waits_for_gives_up_as_the_callers_failure(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The keepalive run's refresh at 300 s is refused; its fallback login meets 503s. A
    caller whose session was dropped meanwhile (a 401 on its call) needs credentials at 301 s
    and joins that login. When it gives up at 360 s the caller fails with it: its give-up is
    an ERROR, as any login a caller waits for, not a WARNING saying the keepalive handles it."""
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
            await clock.sleep(INTERVAL + 1)
            await auth.invalidate(auth._credentials(session))
            call = asyncio.ensure_future(auth.credentials())
            await clock.sleep(100)
            assert isinstance(call.exception(), RetriesExhausted)
            assert sim.count("POST", "*/login") == 1 + 4
            await task.close()
    gave_up = [
        r for r in caplog.records if "/login" in r.getMessage() and "failed after" in r.getMessage()
    ]
    assert [r.levelno for r in gave_up] == [logging.ERROR], [r.getMessage() for r in gave_up]
    assert "handled" not in gave_up[0].getMessage()


async def test_a_fallback_login_nobody_waits_for_any_more_gives_up_as_handled(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, but the caller stopped waiting (cancelled) before the login gave up: nothing
    failed for anyone then, and the give-up is the keepalive's handled WARNING."""
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
            await clock.sleep(INTERVAL + 1)
            await auth.invalidate(auth._credentials(session))
            call = asyncio.ensure_future(auth.credentials())
            await clock.sleep(10)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            await clock.sleep(90)
            assert sim.count("POST", "*/login") == 1 + 4
            await task.close()
    gave_up = [
        r for r in caplog.records if "/login" in r.getMessage() and "failed after" in r.getMessage()
    ]
    assert [r.levelno for r in gave_up] == [logging.WARNING], [r.getMessage() for r in gave_up]
    assert "handled: the refused session is dropped" in gave_up[0].getMessage()
