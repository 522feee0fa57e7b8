"""Login Service auth against the simulator: every login form, keepalive refresh, logout, the
login's own answer rules (429 ≥ 5 s, 451, other 4xx at once, 5xx on the schedule), and single
flight under a hundred concurrent callers."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, RetryPolicy
from le_transport.chaos import Delay, FaultRule, Hang, Match, Reset, Status
from le_transport.errors import (
    AuthenticationError,
    BlockedError,
    EngineClosed,
    LoginRejected,
    RetriesExhausted,
)
from le_transport.events import StateEvent
from le_transport.providers import AppLogin, ClientCredentialsLogin, StaticDomains, UserLogin
from le_transport.providers.login import LOGOUT_TIMEOUT, LoginServiceAuth
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory, serve_hanging
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    CLIENT_SECRET,
    PASSWORD,
)
from tests.test_providers import (
    ACCOUNT,
    APP_KEY,
    CLIENT_ID,
    USER,
    csds_for,
    learn_session_secrets,
    sim,
    sim_engine,
)

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
LOGOUT = f"/api/account/{ACCOUNT}/logout"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


def user_login(sim: Simulator, password: str = PASSWORD, **options: Any) -> UserLogin:
    return UserLogin(ACCOUNT, USER, password, domains=csds_for(sim), **options)


LOGINS: dict[str, Callable[[Simulator], LoginServiceAuth]] = {
    "user": lambda sim: UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim)),
    "app": lambda sim: AppLogin(
        ACCOUNT, USER, APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET,
        domains=csds_for(sim),
    ),
    "client_credentials": lambda sim: ClientCredentialsLogin(
        ACCOUNT, USER, CLIENT_ID, CLIENT_SECRET, domains=csds_for(sim)
    ),
}  # fmt: skip


@pytest.mark.parametrize(("kind", "expected"), [("user", "user"), ("app", "app"),
                                                ("client_credentials", "oauth2")])  # fmt: skip
async def test_every_login_form_yields_a_bearer_the_users_api_accepts_and_logs_out_on_close(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], kind: str, expected: str
) -> None:
    events: list[StateEvent] = []
    auth: LoginServiceAuth = LOGINS[kind](sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        users = await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
        learn_session_secrets(auth, secret_values)
        assert users[0]["loginName"] == USER
        session = auth.session
        assert session is not None
        assert session.csrf is not None
        assert session.session_id
        assert session.ttl == sim.config.session_ttl
        live = sim.tokens.live_sessions()
        assert [s.kind for s in live] == [expected]
    assert sim.count("POST", LOGIN) == 1
    assert sim.count("POST", LOGOUT) == 1
    assert sim.tokens.live_sessions() == []
    assert [e.name for e in events] == ["logged_in", "logged_out"]


async def test_keepalive_refreshes_every_five_minutes_with_cookie_and_csrf(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        start = clock.now()
        await clock.sleep(3 * 300 + 1)
        assert sim.tokens.refreshes == 3
        refreshed = [r.at - start for r in sim.requests if r.path == REFRESH]
        assert refreshed == [300.0, 600.0, 900.0]
        assert auth.refreshes == 3
    assert [e.name for e in events] == ["logged_in", "refreshed", "refreshed", "refreshed",
                                        "logged_out"]  # fmt: skip


async def test_keepalive_interval_is_configurable_and_bounded_by_the_session_ttl(
    clock: VirtualClock,
) -> None:
    from tests.test_providers import make_sim

    async with make_sim(clock, session_ttl=100.0) as sim:
        auth = user_login(sim, refresh_interval=300)
        async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
            await engine.login()
            await clock.sleep(151)
            # Half of the 100 s session TTL, not 300 s: the session never lapses.
            assert sim.tokens.refreshes == 3
            resp = await engine.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
            assert sim.count("POST", LOGIN) == 1


async def test_a_refresh_401_falls_back_to_one_fresh_login_and_the_next_call_uses_it(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.tokens.revoke()  # the server forgets the session: refresh answers 401
        await clock.sleep(301)
        learn_session_secrets(auth, secret_values)
        assert sim.count("POST", REFRESH) == 1
        assert sim.count("POST", LOGIN) == 2
        second = await engine.login()
        assert second.generation == first.generation + 1
        assert second.bearer != first.bearer
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        assert sim.count("POST", LOGIN) == 2
    names = [e.name for e in events]
    assert names[:3] == ["logged_in", "refresh_failed", "logged_in"]
    failed = events[1]
    assert failed.details["status"] == 401
    assert failed.details["next"] == "login"


async def test_a_refresh_that_fails_transiently_is_retried_on_the_next_tick(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        sim.faults.script("POST", REFRESH, [503])
        await clock.sleep(601)
        assert sim.count("POST", REFRESH) == 2
        assert sim.tokens.refreshes == 1
        assert sim.count("POST", LOGIN) == 1
    assert [e.name for e in events][:3] == ["logged_in", "refresh_failed", "refreshed"]


async def test_a_hundred_concurrent_calls_without_a_token_cause_one_login(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(100))
        )
        assert {r.status for r in results} == {200}
        assert sim.count("POST", LOGIN) == 1
        assert auth.logins == 1


async def test_bad_credentials_fail_fast_with_one_login_request_and_a_clear_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim, password=PASSWORD + "-wrong", keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, LoginRejected) and r.status == 401 for r in results)
        with pytest.raises(LoginRejected, match="refused the credentials with 401"):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("POST", LOGIN) == 2  # one shared by the twenty, one for the last call
    assert clock.now() == 0  # nothing waited
    assert sim.count("POST", LOGOUT) == 0
    assert {e.name for e in events} == {"login_failed"}


async def test_a_login_429_waits_at_least_five_seconds_then_logs_in(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [429])
    auth = user_login(sim, keepalive=False, retry=RetryPolicy(pauses=(0.5, 1.0, 1.5)))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
    logins = [r.at for r in sim.requests if r.path == LOGIN]
    assert len(logins) == 2
    assert logins[1] - logins[0] >= 5.0


async def test_a_login_451_is_a_blocked_error_and_never_retried(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [451, 451])
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(BlockedError, match="blacklisted"):
            await engine.login()
        with pytest.raises(BlockedError):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("POST", LOGIN) == 2
    assert clock.now() == 0


async def test_a_login_5xx_follows_the_request_schedule(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [503, Reset(), 500])
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
    logins = [r.at for r in sim.requests if r.path == LOGIN]
    assert [b - a for a, b in itertools.pairwise(logins)] == [5.0, 10.0, 15.0]


async def test_a_login_that_outlives_the_schedule_raises_retries_exhausted(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [503] * 4)
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.login()
    assert auth.logins == 0


async def test_the_login_service_client_credentials_body_uses_dummy_access_token_fields(
    sim: Simulator,
) -> None:
    auth = ClientCredentialsLogin(ACCOUNT, USER, CLIENT_ID, CLIENT_SECRET, domains=csds_for(sim))
    assert auth._body() == {
        "username": USER,
        "appKey": CLIENT_ID,
        "secret": CLIENT_SECRET,
        "accessToken": "dummy",
        "accessTokenSecret": "dummy",
    }


async def test_close_without_a_login_sends_nothing_and_a_failed_logout_does_not_raise(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = user_login(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        pass
    assert sim.count("POST") == 0
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        sim.faults.script("POST", LOGOUT, [Status(503)])
    assert sim.count("POST", LOGOUT) == 1  # one attempt: closing does not sit through 5/10/15


async def test_a_login_may_resolve_through_its_own_domain_provider(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The engine attaches the login's Domain API provider even when it routes with another."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
    assert sim.count("GET", f"/api/account/{ACCOUNT}/service/baseURI.json") == 1
    assert sim.count("POST", LOGIN) == 1


async def test_an_absurdly_nested_login_answer_is_an_authentication_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [Status(200, body="[" * 100_000 + "]" * 100_000)])
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="without a bearer"):
            await engine.login()


@pytest.mark.parametrize("bearer", ["x\r\nX-Injected: 1", "two words", "tab\there", "é"])
async def test_a_bearer_a_header_cannot_carry_is_refused(
    sim: Simulator, clock: VirtualClock, bearer: str
) -> None:
    body = json.dumps({"bearer": bearer, "csrf": "c"})
    sim.faults.script("POST", LOGIN, [Status(200, body=body)])
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="header cannot carry"):
            await engine.login()


async def test_a_hundred_concurrent_refreshes_send_one(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        results = await asyncio.gather(*(auth.refresh() for _ in range(100)))
        assert results == [True] * 100
    assert sim.count("POST", REFRESH) == 1


@pytest.mark.parametrize("status", [302, 307, 304])
async def test_a_refresh_answered_with_a_redirect_is_not_a_refresh_and_falls_back_to_a_login(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], status: int
) -> None:
    """Provider calls never follow redirects: a 3xx to the refresh did not refresh the session
    (counted as one, the session would lapse under a keepalive that thinks it works). It is
    handled as a refused refresh (a 401) is: one fresh login."""
    events: list[StateEvent] = []
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script(
            "POST", REFRESH, [Status(status, headers={"Location": "http://elsewhere.invalid/"})]
        )
        assert await auth.refresh() is False
        learn_session_secrets(auth, secret_values)
        assert auth.refreshes == 0
        assert sim.tokens.refreshes == 0
        assert sim.count("POST", LOGIN) == 2
        assert (await engine.login()).generation == first.generation + 1
    names = [e.name for e in events]
    assert names[:3] == ["logged_in", "refresh_failed", "logged_in"]
    assert "refreshed" not in names
    assert events[1].details["status"] == status
    assert events[1].details["next"] == "login"


async def test_a_logout_answered_with_a_redirect_is_logged_as_failed(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", LOGOUT, [302])
    assert "logout failed (answered 302)" in caplog.text
    assert "logged_out" not in [e.name for e in events]


@pytest.mark.parametrize("attempt_timeout", [30.0, None])
async def test_a_logout_never_answered_holds_the_close_for_logout_timeout_only(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    attempt_timeout: float | None,
) -> None:
    """The logout took the request policy's attempt timeout: a Login Service that accepted
    the logout and never answered held Engine.close() (and the end of ``async with``) 30 s,
    and for ever with attempt_timeout=None."""
    auth = user_login(sim, keepalive=False)
    retry = RetryPolicy(pauses=(0.05,), attempt_timeout=attempt_timeout)
    engine = sim_engine(sim, clock, domains=auth._domains, auth=auth, retry=retry)
    await engine.start()
    await engine.login()
    learn_session_secrets(auth, secret_values)
    sim.faults.add(FaultRule("hung-logout", Hang(), match=Match("POST", LOGOUT)))
    started = clock.now()
    await asyncio.wait_for(engine.close(), 10)  # real seconds: only against a hang
    assert clock.now() - started == LOGOUT_TIMEOUT
    assert sim.count("POST", LOGOUT) == 1
    assert "logout failed (TimeoutError); the session will expire on its own" in caplog.text


async def test_a_logout_that_fails_on_its_own_during_close_is_said_as_it_failed(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A close sets the engine's shutdown before it logs out: 93473a2 read any failure of an
    attempt after that as the engine closing, and the logout's own reset was logged as
    'logout failed (EngineClosed)'."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.add(FaultRule("reset-logout", Reset(), match=Match("POST", LOGOUT)))
    assert "logout failed (RetriesExhausted)" in caplog.text
    assert "EngineClosed" not in caplog.text
    assert "the engine was closed" not in caplog.text


# -- a login in flight when the engine closes --------------------------------------------------


@pytest.mark.parametrize("recover", [False, True], ids=["fail-fast", "recover"])
async def test_a_call_waiting_for_the_login_when_the_engine_closes_gets_engine_closed(
    serve: ServerFactory, clock: VirtualClock, recover: bool
) -> None:
    """Closing cancels the shared login; the calls waiting for it were not cancelled, and end
    typed, as any call in progress at close does: never with a bare CancelledError."""
    host, arrived, never = await serve_hanging(serve, "/api/account/{account}/login", "POST")
    domains = StaticDomains({"agentVep": host})
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, logout_on_close=False)
    engine = Engine(domains, auth=auth, scheme="http", clock=clock)
    await engine.start()
    calls = [
        asyncio.ensure_future(engine.request("GET", "agentVep", "/x", recover=recover))
        for _ in range(3)
    ]
    await arrived.wait()
    await engine.close()
    never.set()
    for call in calls:
        with pytest.raises(EngineClosed, match=r"user_login\[\d+\]: the login in progress"):
            await call
        assert not call.cancelled()


async def test_a_call_cancelled_while_waiting_for_the_login_is_still_cancelled(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def login(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"bearer": "zqx-bearer"})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/account/{account}/login", login)
    app.router.add_get("/x", ok)
    host = await serve(app)
    domains = StaticDomains({"agentVep": host})
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, logout_on_close=False)
    async with Engine(domains, auth=auth, scheme="http", clock=clock) as engine:
        cancelled = asyncio.ensure_future(engine.request("GET", "agentVep", "/x"))
        other = asyncio.ensure_future(engine.request("GET", "agentVep", "/x"))
        await arrived.wait()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        release.set()
        assert (await other).status == 200


async def test_a_fleets_refresh_answered_with_a_redirect_becomes_one_fresh_login(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The shared-session path counts a 3xx as the single-process one does: not a refresh."""
    events: list[StateEvent] = []
    store = MemoryStore(clock)
    auth = user_login(
        sim,
        keepalive=False,
        logout_on_close=False,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        # The fleet takes a session stored within most of an interval instead of refreshing.
        await clock.sleep(auth.refresh_interval_for(auth.session))
        sim.faults.script("POST", REFRESH, [302])
        assert await auth.refresh() is False
        learn_session_secrets(auth, secret_values)
        assert sim.count("POST", REFRESH) == 1
        assert auth.refreshes == 0
        assert sim.tokens.refreshes == 0
        assert sim.tokens.logins == 2
        assert (await engine.login()).generation > first.generation
    failed = [e for e in events if e.name == "refresh_failed"]
    assert [(e.details["status"], e.details["next"]) for e in failed] == [(302, "login")]


async def test_a_close_cancelled_during_its_logout_is_finished_by_the_next_close(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    # The caller's cancellation reaches it (it used to be swallowed on the way), and the
    # session is not forgotten before its logout: the next close logs it out instead of
    # leaving it alive at the server until its TTL.
    auth = user_login(sim)
    engine = sim_engine(sim, clock, domains=auth._domains, auth=auth)
    await engine.start()
    await engine.login()
    learn_session_secrets(auth, secret_values)
    sim.faults.add(FaultRule("slow-logout", Delay(5_000), match=Match("POST", LOGOUT)))
    closing = asyncio.ensure_future(engine.close())
    for _ in range(1_000):
        if sim.count("POST", LOGOUT):
            break
        await asyncio.sleep(0)
    assert sim.count("POST", LOGOUT) == 1, "the logout is in flight"
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    sim.faults.clear()
    await engine.close()
    assert sim.count("POST", LOGOUT) == 2
    assert auth.session is None


# -- a closed login is a closed engine, not bad credentials -------------------------------------


async def test_login_after_the_engine_closed_is_engine_closed_not_an_authentication_error(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """It said ``AuthenticationError: ... the auth provider is closed``: bad credentials, to
    anyone catching it."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
    with pytest.raises(EngineClosed) as info:
        await engine.login()
    assert not isinstance(info.value, AuthenticationError)
    # The provider itself, asked after its close (a call in progress when the engine closed).
    with pytest.raises(EngineClosed, match=r"user_login\[\d+\]: the auth provider is closed"):
        await auth.login()
    with pytest.raises(EngineClosed):
        await auth.credentials("GET")
    assert sim.count("POST", LOGIN) == 1


async def test_an_engine_never_closed_warns_that_its_login_session_is_left_logged_in(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """Collected unclosed, it never logs out (no I/O in __del__): the ResourceWarning names
    the session left alive, without any of its secrets."""
    auth = user_login(sim, keepalive=False)
    async with aiohttp.ClientSession() as session:
        engine = Engine(auth._domains, auth=auth, scheme="http", clock=clock, session=session)
        await engine.start()
        await engine.login()
        learn_session_secrets(auth, secret_values)
        # The provider holds the engine's HTTP path (and so the engine) while it is kept.
        with pytest.warns(ResourceWarning) as warned:  # noqa: PT031 - the collection is the act
            del engine, auth
            gc.collect()
    [message] = [str(w.message) for w in warned if "Engine" in str(w.message)]
    assert f"a Login Service session still logged in (user_login[{ACCOUNT}]" in message
    assert not any(secret in message for secret in secret_values)
    assert sim.count("POST", LOGOUT) == 0
