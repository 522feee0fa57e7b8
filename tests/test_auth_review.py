"""Regressions from the review of the auth and domain providers, against the simulator.

- No replaced session is logged out (one whose refresh the Login Service refused, one dropped
  after a 401 or a socket's re-authentication, one replaced after a transient refresh failure
  or by the recovery loop's re-login): calls in flight and sockets may still hold it.
  A call to an endpoint that keeps answering 401 costs one re-login, not two.
- The keepalive never retries a refused (401) or blacklisted (451) login on its own, and
  resumes after a caller's successful login.
- The keepalive times its refresh from each new login, also after a tick found no session.
- A login answer's domain map is merged into the cached one; one without a valid host is
  ignored.
- Account ids and path prefixes made of dot segments are refused.
- A Domain API answer with many hostile entries is logged as one summary line, and one with
  an absurd number of entries is malformed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from le_transport import Engine, RetryPolicy
from le_transport.chaos import Delay, Hang, Reset, Status
from le_transport.errors import (
    AuthenticationError,
    ConfigurationError,
    DomainResolutionError,
    HostileHostError,
    RetriesExhausted,
    TransportError,
    UnknownServiceError,
)
from le_transport.events import StateEvent
from le_transport.providers import (
    AppLogin,
    ConsumerJwt,
    CsdsDomains,
    SentinelClientCredentials,
    StaticDomains,
    UserLogin,
)
from le_transport.providers.csds import MAX_BASE_URIS, parse_base_uris
from le_transport.providers.login import LOGOUT_TIMEOUT
from le_transport.sockets import UMS_BRAND_SOCKET_QUERY, ums_brand_path
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    BEARER,
    PASSWORD,
)
from tests.test_providers import (
    ACCOUNT,
    APP_KEY,
    USER,
    csds_for,
    learn_session_secrets,
    make_sim,
    sim,
    sim_engine,
)

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
LOGOUT = f"/api/account/{ACCOUNT}/logout"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"
NO_DOMAINS = StaticDomains({"agentVep": "h.example"})


def user_login(sim: Simulator, **options: Any) -> UserLogin:
    return UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), **options)


def refresh_times(sim: Simulator) -> list[float]:
    return [r.at for r in sim.requests if r.path == REFRESH]


# -- 1. only a session the Login Service refused is logged out; one re-login per call ----------


def bearer_of(creds: Any) -> str:
    assert creds.bearer is not None
    return str(creds.bearer.reveal())


def alive(sim: Simulator, bearer: str) -> bool:
    return sim.tokens.valid_session(bearer, ACCOUNT) is not None


async def test_calls_to_an_endpoint_that_keeps_answering_401_cost_one_relogin_each(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """A healthy session meets an endpoint that answers 401 (a missing permission): each call
    logs in once more, never twice. The sessions dropped after those 401s are not logged out
    (a 401 does not say a session ended, and other calls and sockets may still hold it): they
    expire on their own; the current one is logged out at close."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("GET", USERS, [401] * 10)
        for call in range(1, 6):
            with pytest.raises(AuthenticationError, match="the fresh credentials are kept"):
                await engine.request("GET", "accountConfigReadOnly", USERS)
            learn_session_secrets(auth, secret_values)
            assert sim.count("POST", LOGIN) == 1 + call
            # The fresh session is kept: the next call starts with it.
            assert auth.session is not None
            assert auth.session.generation == 1 + call
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGIN) == 6
    assert sim.count("POST", LOGOUT) == 1  # the close's
    assert len(sim.tokens.live_sessions()) == 5  # the dropped ones, left to expire


async def test_a_second_401_keeps_the_fresh_session_for_the_next_call(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        sim.faults.script("GET", USERS, [401, 401])
        with pytest.raises(AuthenticationError):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        assert kept is not None
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        assert auth.session is kept
        assert sim.count("POST", LOGIN) == 2
    assert sim.count("POST", LOGOUT) == 1
    # The session dropped after the first 401 was not logged out: it expires on its own.
    assert len(sim.tokens.live_sessions()) == 1


async def test_concurrent_calls_meeting_401s_cost_at_most_one_login_each_and_no_logout(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = user_login(sim, keepalive=False)
    calls = 20
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("GET", USERS, [401] * (2 * calls))
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(calls)),
            return_exceptions=True,
        )
        learn_session_secrets(auth, secret_values)
        assert all(isinstance(r, AuthenticationError) for r in results)
        # At most one re-login per call (concurrent 401s of one generation share one).
        assert sim.count("POST", LOGIN) <= 1 + calls
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGOUT) == 1


async def test_a_401_on_one_call_never_logs_out_the_session_another_call_replays_with(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The HTTP chaos soak's failure: call A met a 401, re-logged in and replays with the fresh
    session, the replay retried after a 503; meanwhile call B met a 401 with that same fresh
    session. Had B's 401 logged the session out, A's retry would meet a 401 of our own making
    and fail ("rejected with 401 again after fresh credentials"): it must succeed."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        # A: 401 (generation 1), replay (generation 2): 503; B (generation 2): 401; A's retry.
        sim.faults.script("GET", USERS, [401, 503, 401])
        call_a = asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
        await clock.sleep(1)  # A waits out its 5 s pause, holding generation 2
        learn_session_secrets(auth, secret_values)
        replaying_with = auth.session
        assert replaying_with is not None
        assert replaying_with.generation == 2
        resp_b = await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
        assert resp_b.status == 200
        assert auth.session is not None
        assert auth.session.generation == 3
        resp_a = await call_a
        assert resp_a.status == 200
        assert sim.count("GET", USERS) == 5  # A: 401, 503, 200; B: 401, 200
        assert alive(sim, replaying_with.bearer.reveal())
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGIN) == 3


@pytest.mark.parametrize(
    "fault",
    [Status(503), Reset(), Hang(duration_ms=60_000)],
    ids=["503", "reset", "timeout"],
)
async def test_a_call_in_flight_survives_a_failed_refresh_and_the_login_that_replaces_its_session(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], fault: Any
) -> None:
    """A call replaying with a fresh session (after its own 401) is still in flight when the
    keepalive's refresh of that session fails transiently, and the recovery loop's re-login
    replaces it: that session is not logged out, and the call succeeds with it."""
    events: list[StateEvent] = []
    auth = user_login(sim, refresh_interval=10, retry=RetryPolicy(pauses=(), attempt_timeout=5))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        # The call's first request meets a 401; its replay (the fresh session, generation 2)
        # is answered only at t=20 (within the call's 30 s attempt timeout).
        sim.faults.script("GET", USERS, [401, Delay(delay_ms=20_000)])
        sim.faults.script("POST", REFRESH, [fault])
        call = asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
        await clock.sleep(16)  # the keepalive's refresh of generation 2 (t=10) failed
        learn_session_secrets(auth, secret_values)
        in_flight = auth.session
        assert in_flight is not None
        assert in_flight.generation == 2
        failed = [e for e in events if e.name == "refresh_failed"]
        assert [e.details["next"] for e in failed] == ["retry on the next tick"]
        await auth.relogin()  # the recovery loop's step, after 5xx and transport failures
        learn_session_secrets(auth, secret_values)
        assert auth.session is not None
        assert auth.session.generation == 3
        resp = await call
        assert resp.status == 200
        assert clock.now() >= 20
        assert sim.count("GET", USERS) == 2
        assert alive(sim, in_flight.bearer.reveal())
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGOUT) == 1  # the close's


async def test_a_socket_reauthenticating_never_logs_out_the_session_calls_in_flight_hold(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """A UMS socket closed with 1011 invalidates its credentials and re-authenticates; a call
    retrying a 503 with the same session must not meet a 401 of our own making."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        ws = await engine.websocket(
            "facadeMsg", ums_brand_path(ACCOUNT), params=UMS_BRAND_SOCKET_QUERY
        )
        await ws.wait_open(timeout=60)
        sim.faults.script("GET", USERS, [503])
        call = asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
        await clock.sleep(1)  # the call waits out its 5 s pause, holding generation 1
        await sim.sockets.close_all(1011, "internal error")
        while sim.count("POST", LOGIN) < 2:  # the socket re-authenticates: a new login
            await clock.sleep(1)
        learn_session_secrets(auth, secret_values)
        resp = await call
        assert resp.status == 200
        assert sim.count("GET", USERS) == 2  # 503, then 200: no 401
        assert alive(sim, bearer_of(first))
        assert sim.count("POST", LOGOUT) == 0
        await ws.close()


async def test_relogin_never_logs_out_the_session_it_replaces(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The recovery loop's re-login follows 5xx and transport failures, which say nothing of
    the session: calls in flight and sockets may still hold it, and it stays usable."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        second = await auth.relogin()
        learn_session_secrets(auth, secret_values)
        assert second.generation == first.generation + 1
        await clock.sleep(LOGOUT_TIMEOUT)
        assert alive(sim, bearer_of(first))
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("POST", LOGOUT) == 1  # the close's: the first is left to expire
    assert [s.bearer for s in sim.tokens.live_sessions()] == [bearer_of(first)]


async def test_a_relogin_meeting_an_outage_keeps_the_session_without_logging_it_out(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """A Login Service outage says nothing of the session the re-login was to replace: it is
    kept (calls to healthy services go on with it), and never logged out."""
    auth = user_login(sim, keepalive=False, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        sim.faults.script("POST", LOGIN, [503])
        with pytest.raises(RetriesExhausted):
            await auth.relogin()
        assert auth.session is kept
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGOUT) == 0
        assert alive(sim, bearer_of(first))


async def test_a_transient_refresh_failure_keeps_the_session_and_logs_nothing_out(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = user_login(sim, keepalive=False, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        sim.faults.script("POST", REFRESH, [503])
        with pytest.raises(RetriesExhausted):
            await auth.refresh()
        assert auth.session is kept
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGIN) == 1
        assert sim.count("POST", LOGOUT) == 0


@pytest.mark.parametrize("status", [401, 403, 400])
async def test_a_refused_refresh_logs_in_again_and_logs_nothing_out(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], status: int
) -> None:
    """The session whose refresh was refused used to be logged out once replaced: alive after
    all (the refusal came from something in between), every socket on it was closed with
    4401; ended, its logout was refused as the refresh was. Nothing is logged out but the
    current session, at close."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", REFRESH, [status])
        assert await auth.refresh() is False
        learn_session_secrets(auth, secret_values)
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("POST", LOGOUT) == 1  # the close's, of the current session
    assert [s.bearer for s in sim.tokens.live_sessions()] == [bearer_of(first)]


async def test_a_refused_refresh_leaves_the_socket_on_the_session_open(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """LiveEngage: a refresh's 401 is met with a new login *without* tearing down a healthy
    socket. The socket holds the first session's bearer; logging that session out closed it
    with 4401."""
    async with make_sim(clock, close_ended_sessions=True) as sim:
        auth = user_login(sim, keepalive=False)
        async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
            ws = await engine.websocket(
                "facadeMsg", ums_brand_path(ACCOUNT), params=UMS_BRAND_SOCKET_QUERY
            )
            await ws.wait_open()
            learn_session_secrets(auth, secret_values)
            sim.faults.script("POST", REFRESH, [401])
            assert await auth.refresh() is False
            learn_session_secrets(auth, secret_values)
            await clock.sleep(60)
            assert [s.ended for s in sim.sockets.all] == [None]
            assert ws.state.name == "OPEN"


async def test_a_refresh_answered_with_a_redirect_logs_in_but_logs_nothing_out(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """A 3xx is no refusal: the session may still serve calls in flight and sockets."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", REFRESH, [Status(302, headers={"Location": "/x"})])
        assert await auth.refresh() is False
        learn_session_secrets(auth, secret_values)
        await clock.sleep(LOGOUT_TIMEOUT)
        assert sim.count("POST", LOGOUT) == 0
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("POST", LOGOUT) == 1  # the close's
    assert [s.bearer for s in sim.tokens.live_sessions()] == [bearer_of(first)]


@pytest.mark.parametrize("mode", ["logout_on_close=False", "shared"])
async def test_sessions_that_may_live_on_elsewhere_are_not_logged_out_when_refused(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], mode: str
) -> None:
    options: dict[str, Any] = {"keepalive": False, "logout_on_close": False}
    if mode == "shared":
        options["shared"] = SharedSession(
            MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock
        )
    auth = user_login(sim, **options)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        await clock.sleep(300)  # past the fleet's "refreshed recently" window
        sim.faults.script("POST", REFRESH, [401])
        assert await auth.refresh() is False
        learn_session_secrets(auth, secret_values)
        await clock.sleep(LOGOUT_TIMEOUT)
    assert sim.count("POST", REFRESH) == 1
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("POST", LOGOUT) == 0


# -- 2. a refused or blacklisted login is not retried by the keepalive -------------------------


@pytest.mark.parametrize("status", [401, 451])
async def test_the_keepalive_never_retries_a_refused_login_and_resumes_after_a_callers_login(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        # The session is revoked at the server, and the password changed (or the account was
        # blacklisted): every refresh and login is refused.
        sim.faults.script("POST", REFRESH, [401] * 100)
        sim.faults.script("POST", LOGIN, [status] * 100)
        await clock.sleep(3600)
        assert sim.count("POST", REFRESH) == 1
        assert sim.count("POST", LOGIN) == 2  # the first login and the one refused
        assert auth.session is None
        stopped = [e for e in events if str(e.details.get("next")).startswith("none")]
        assert len(stopped) == 1, "said once"
        assert stopped[0].name == "refresh_failed"
        assert stopped[0].details["status"] == status
        # A caller logs in again (the password was fixed): the keepalive resumes from then.
        sim.faults.clear()
        await engine.login()
        learn_session_secrets(auth, secret_values)
        resumed = clock.now()
        await clock.sleep(2 * 300 + 1)
        assert refresh_times(sim)[1:] == [resumed + 300, resumed + 600]
        assert sim.count("POST", LOGIN) == 3
    # The refused session was not logged out (the refusals were the test's: alive at the
    # simulator, it expires at its TTL); the current one was, at close.
    assert [s.bearer for s in sim.tokens.live_sessions()] == [bearer_of(first)]


async def test_a_login_outage_after_a_refused_refresh_leaves_the_next_login_to_the_next_call(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = user_login(sim, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", REFRESH, [401])
        sim.faults.script("POST", LOGIN, [503])
        await clock.sleep(1800)
        assert sim.count("POST", LOGIN) == 2
        assert auth.session is None
        failed = [e for e in events if e.name == "refresh_failed"]
        assert [e.details["next"] for e in failed] == ["login", "the next call logs in"]
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
        assert resp.status == 200
        assert sim.count("POST", LOGIN) == 3


# -- 4. the keepalive times its refresh from each login ---------------------------------------


async def test_a_login_after_a_tick_found_no_session_is_refreshed_within_half_its_ttl(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    async with make_sim(clock, session_ttl=60.0) as sim:
        auth = user_login(sim)
        async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
            first = await engine.login()  # t=0, TTL 60 s: refresh every 30 s
            learn_session_secrets(auth, secret_values)
            await clock.sleep(10)
            await auth.invalidate(first)  # t=10: dropped (a 401 on a streamed body, a 4401)
            await clock.sleep(30)  # t=40: the tick at t=30 found no session
            await engine.login()
            learn_session_secrets(auth, secret_values)
            await clock.sleep(61)  # t=101
            assert refresh_times(sim) == [70.0, 100.0]
            assert sim.tokens.live_sessions() != []
            assert sim.count("POST", LOGIN) == 2


async def test_the_keepalive_does_nothing_without_a_session_and_refreshes_a_login_made_later(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = user_login(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        await auth.invalidate(first)
        await clock.sleep(5000)
        assert sim.count("POST", REFRESH) == 0
        assert sim.count("POST", LOGIN) == 1
        await engine.login()  # t=5000
        learn_session_secrets(auth, secret_values)
        await clock.sleep(301)
        assert refresh_times(sim) == [5300.0]


# -- 3. a login answer's domain map is merged, never installed unusable ------------------------


def _map(*entries: tuple[str, str]) -> dict[str, Any]:
    return {
        "baseURIs": [
            {"service": service, "account": ACCOUNT, "baseURI": host} for service, host in entries
        ]
    }


async def test_a_login_answer_whose_map_has_no_valid_host_keeps_the_good_map(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = _map(
        ("agentVep", "evil.example/x"), ("accountConfigReadOnly", "u:userinfo-pw@evil.example")
    )
    sim.faults.script(
        "POST",
        LOGIN,
        [Status(200, body=json.dumps({"bearer": BEARER, "csdsCollectionResponse": hostile}))],
    )
    domains = csds_for(sim)
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
    async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
        good = dict(await domains.refresh())
        await engine.login()
        assert dict(domains.hosts) == good
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        assert await domains.resolve("agentVep") == sim.host
    assert "none of its 2 entries has a valid host; the cached map is kept" in caplog.text
    assert "userinfo-pw" not in caplog.text  # userinfo is never shown
    assert sim.count("GET", CSDS_PATH) == 1


async def test_a_partial_login_map_is_merged_and_does_not_extend_the_maps_life(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=600)
    async with sim_engine(sim, clock, domains=domains):
        good = dict(await domains.refresh())
        assert len(good) > 2
        await clock.sleep(500)
        assert domains.warm(
            _map(
                ("agentVep", "login.example:8443"),
                # Hostile: never replaces the cached valid entry.
                ("accountConfigReadOnly", "evil.example/x"),
                ("newService", "new.example"),
            )
        )
        hosts = dict(domains.hosts)
        assert hosts["agentVep"] == "login.example:8443"
        assert hosts["accountConfigReadOnly"] == sim.host
        assert hosts["newService"] == "new.example"
        assert {s: h for s, h in hosts.items() if s not in ("agentVep", "newService")} == {
            s: h for s, h in good.items() if s != "agentVep"
        }
        # Not every service was confirmed: the map is fetched at its own expiry, t=600.
        await clock.sleep(100)
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        await domains.wait_refresh()  # the expired map is refreshed in the background
        assert sim.count("GET", CSDS_PATH) == 2


async def test_a_login_map_with_a_hostile_entry_for_an_unknown_service_marks_only_that_one(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        await domains.refresh()
        assert domains.warm(_map(("agentVep", sim.host), ("fresh", "evil.example/x")))
        with pytest.raises(HostileHostError):
            await domains.resolve("fresh")
        assert await domains.resolve("agentVep") == sim.host


# -- 5. dot segments ---------------------------------------------------------------------------


@pytest.mark.parametrize("account", [".", "..", "...", "." * 64])
@pytest.mark.parametrize(
    "build",
    [
        lambda a: UserLogin(a, "agent", "pw", domains=NO_DOMAINS),
        lambda a: AppLogin(
            a, USER, APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, domains=NO_DOMAINS
        ),
        lambda a: CsdsDomains(a),
        lambda a: ConsumerJwt(a, domains=NO_DOMAINS),
        lambda a: SentinelClientCredentials(a, "id", "secret", domains=NO_DOMAINS),
    ],
    ids=["user", "app", "csds", "consumer", "sentinel"],
)
def test_an_account_of_dots_alone_is_refused(build: Any, account: str) -> None:
    with pytest.raises(ConfigurationError, match=r"\.account must be .*not only dots"):
        build(account)


@pytest.mark.parametrize("account", [".a", "a.", "a..b", "1.2", "acme-1_x"])
def test_an_account_with_dots_and_other_characters_is_accepted(account: str) -> None:
    assert CsdsDomains(account).account == account


@pytest.mark.parametrize("prefix", ["/..", "/.", "/api/..", "/../api", "/a/./b", "/..."])
def test_a_path_prefix_with_a_dot_segment_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="none of them only dots"):
        CsdsDomains(ACCOUNT, path_prefix=prefix)


@pytest.mark.parametrize("prefix", ["/api", "/csdr", "/.well-known", "/a.b/c"])
async def test_a_path_prefix_of_ordinary_segments_is_accepted(
    serve: ServerFactory, clock: VirtualClock, prefix: str
) -> None:
    """Kept as given: the Domain API is asked under it, and its map served."""
    asked: list[str] = []

    async def base_uris(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response(_map(("agentVep", "h.example")))

    app = web.Application()
    app.router.add_get(f"{prefix}/account/{ACCOUNT}/service/baseURI.json", base_uris)
    host = await serve(app)
    domains = CsdsDomains(ACCOUNT, csds_host=host, scheme="http", path_prefix=prefix)
    assert f"path_prefix={prefix!r}" in repr(domains)
    async with Engine(domains, scheme="http", clock=clock):
        assert await domains.resolve("agentVep") == "h.example"
    assert asked == [f"{prefix}/account/{ACCOUNT}/service/baseURI.json"]


# -- 6. hostile Domain API answers are bounded in the logs and in size -------------------------


def _hostile_answer(n: int, *valid: tuple[str, str]) -> dict[str, Any]:
    return _map(*valid, *((f"s{i}", f"evil.example/{i}") for i in range(n)))


def test_many_hostile_entries_are_one_warning_naming_the_first_few(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.domains")
    entries = parse_base_uris(_hostile_answer(1_500), account=ACCOUNT)
    assert len(entries) == 1_500
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "1500 service(s) with a refused host" in message
    assert "'s0', 's1', 's2', 's3', 's4' and 1495 more" in message
    assert len(message) < 1_000


def test_parse_base_uris_keeps_at_most_the_cap_and_says_what_it_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.domains")
    entries = parse_base_uris(_hostile_answer(50_000), account=ACCOUNT)
    assert len(entries) == MAX_BASE_URIS
    assert len(caplog.records) == 2
    assert f"{50_000 - MAX_BASE_URIS} entries more than the {MAX_BASE_URIS} read" in caplog.text


async def test_a_domain_api_answer_with_too_many_entries_is_malformed_and_the_good_map_kept(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.domains")
    domains = csds_for(sim)
    huge = json.dumps(_hostile_answer(MAX_BASE_URIS + 1))
    async with sim_engine(sim, clock, domains=domains):
        good = dict(await domains.refresh())
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=huge)])
        caplog.clear()
        assert dict(await domains.refresh()) == good
        assert "refused as malformed" in caplog.text
        assert "serving the last good map" in caplog.text
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 3
        # A login answer carrying such a map is ignored as well.
        assert not domains.warm(json.loads(huge))
        assert dict(domains.hosts) == good


async def test_a_first_fetch_with_too_many_entries_is_a_domain_resolution_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    huge = json.dumps(_hostile_answer(MAX_BASE_URIS, ("agentVep", sim.host)))
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=huge)])
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(DomainResolutionError, match="refused as malformed"):
            await domains.resolve("agentVep")


async def test_a_fetch_with_many_hostile_entries_logs_one_line(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.domains")
    domains = csds_for(sim)
    body = json.dumps(_hostile_answer(1_000, ("agentVep", sim.host)))
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=body)])
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert "1000 service(s) with a refused host" in warnings[0].getMessage()
        # An unknown service's error names a bounded number of the account's services.
        with pytest.raises(UnknownServiceError) as info:
            await domains.resolve("nope")
        assert "and 951 more" in str(info.value)
        assert len(str(info.value)) < 2_000


@pytest.mark.parametrize("login_fault", ["redirect", "503"])
async def test_a_redirected_refresh_and_a_failed_login_keep_the_session_that_still_works(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], login_fault: str
) -> None:
    # A 3xx refresh says nothing of the session. When the login it falls back on failed too (a
    # maintenance redirect, an outage), the session was dropped all the same, and every call
    # had to log in first, failing while the Login Service was down though its bearer worked.
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=csds_for(sim),
        keepalive=False,
        retry=RetryPolicy(pauses=()),
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        redirect = Status(302, headers={"Location": "/maintenance"})
        sim.faults.script("POST", REFRESH, [redirect])
        sim.faults.script("POST", LOGIN, [redirect if login_fault == "redirect" else 503] * 20)
        with pytest.raises(TransportError):
            await auth.refresh()
        assert auth.session is kept
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
