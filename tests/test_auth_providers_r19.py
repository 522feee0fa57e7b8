"""A closed auth provider is final: no token, no session, no event, no request after close.

Token providers (``providers/_token.py``) and Login Service auth (``providers/login.py``)
racing their own close: a fetch answering as the provider closes, two closes at once, a refresh
asked for during or after close, a close cancelled during its logout. The providers without a
session (app key, static bearer, OAuth1) have nothing to close: shared by engines, or reused by
the next, they survive an engine's close. An engine's keepalive whose provider was closed alone
says so. A consumer's auth-code callable is bounded as the token
request's HTTP call is, and no more.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine, SocketClosed
from le_transport.chaos import Delay, FaultRule, Match
from le_transport.clock import timeout_after
from le_transport.errors import DeadlineExceeded, EngineClosed
from le_transport.events import StateEvent
from le_transport.policies import CHAT_AGENT_API_REFRESH, SERVER_CHAT_API_CHAT_INFO
from le_transport.policies.retry import DEFAULT_ATTEMPT_TIMEOUT, RetryPolicy
from le_transport.providers import AppKeyAuth, ConsumerJwt, OAuth1Auth, StaticBearer, StaticDomains
from le_transport.providers._http import ProviderHttp, ProviderResponse
from le_transport.providers._token import TokenProvider
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_login import LOGOUT, REFRESH, user_login
from tests.test_oauth2 import AUTHENTICATE
from tests.test_providers import ACCOUNT, APP_KEY, csds_for, sim, sim_engine

__all__ = ["sim"]

_CHAT_INFO = f"/api/account/{ACCOUNT}/chat/c1/info"


async def _slow_logout_under_way(
    sim: Simulator, close: Callable[[], Awaitable[None]]
) -> asyncio.Future[None]:
    """Slow the logout down, start ``close()``, and hand back its task once the logout is out
    (or after a thousand turns, for the caller to check)."""
    sim.faults.add(FaultRule("slow-logout", Delay(2_000), match=Match("POST", LOGOUT)))
    closing = asyncio.ensure_future(close())
    for _ in range(1_000):
        if sim.count("POST", LOGOUT):
            break
        await asyncio.sleep(0)
    return closing


class _GatedTokens(TokenProvider):
    """A token provider whose token service answers the first request at once and every later
    one when ``gate`` is set."""

    _kind = "gated"

    def __init__(self, *, stubborn: bool = False) -> None:
        super().__init__(margin=60.0)
        self.gate = asyncio.Event()
        self.sent = 0
        #: Whether a later request waits for its answer through a cancellation (a client
        #: that finishes reading an answer already on its way).
        self.stubborn = stubborn
        self.answered = 0

    async def _request_token(
        self, http: ProviderHttp, retry: Any, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        self.sent += 1
        if self.sent > 1:
            while not self.gate.is_set():
                try:
                    await self.gate.wait()
                except asyncio.CancelledError:
                    if not self.stubborn:
                        raise
        self.answered += 1
        body = json.dumps({"access_token": f"tok{self.sent}", "expires_in": 120}).encode()
        return ProviderResponse(status=200, body=body), "access_token"


async def test_a_token_answered_as_the_provider_closes_is_discarded(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The early fetch's answer arrives while close() stops it: close used to stop only the
    background task's wait, so the shared fetch went on, stored the new token after close and
    said ``logged_in``; credentials() then served a live bearer from a closed provider."""
    events: list[StateEvent] = []
    auth = _GatedTokens()
    async with sim_engine(sim, clock, auth=auth, events=events):
        await auth.credentials()  # tok1, due at +60 s
        await clock.sleep(61)
        await auth.credentials()  # due: the early fetch starts in the background
        for _ in range(100):
            if auth.sent == 2:
                break
            await asyncio.sleep(0)
        assert auth.sent == 2, "the early fetch is out"
        auth.gate.set()  # the token service answers ...
        await auth.close()  # ... as the provider closes
        assert auth.token is None
        with pytest.raises(EngineClosed):
            await auth.credentials()
        with pytest.raises(EngineClosed):
            await auth.fetch()
        assert auth.token is None
    assert [e.name for e in events if e.name == "logged_in"] == ["logged_in"], (
        "only the first token is announced; none after close"
    )


async def test_a_token_answered_after_close_began_is_discarded(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A fetch that close() cannot stop at once (its request reads the answer already on its
    way, whatever cancels it) answers after close began: the provider, closed, keeps no token
    from it and says nothing of it, and the caller waiting for it gets EngineClosed, not a
    live bearer from a closed provider. (Unlike the test above, this does not hang on the
    order in which close stops the fetch and the early task.)"""
    events: list[StateEvent] = []
    auth = _GatedTokens(stubborn=True)
    async with sim_engine(sim, clock, auth=auth, events=events):
        await auth.credentials()  # tok1
        fetching = asyncio.ensure_future(auth.fetch())
        for _ in range(100):
            if auth.sent == 2:
                break
            await asyncio.sleep(0)
        assert auth.sent == 2, "the fetch is out"
        closing = asyncio.ensure_future(auth.close())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not closing.done(), "close waits for the fetch it stopped"
        auth.gate.set()  # the answer arrives, close having begun
        await closing
        assert auth.answered == 2, "the token service did answer"
        with pytest.raises(EngineClosed):
            await fetching
        assert auth.token is None
        assert auth.fetches == 1, "the late answer is not counted as a fetch"
        with pytest.raises(EngineClosed):
            await auth.credentials()
    assert [e.name for e in events if e.name == "logged_in"] == ["logged_in"]


async def test_two_concurrent_closes_log_the_session_out_once(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The second close used to send its own logout of the session the first was logging
    out: answered 401, it logged two WARNINGs after a successful ``logged_out``."""
    events: list[StateEvent] = []
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        with caplog.at_level(logging.WARNING, logger="le_transport"):
            await asyncio.gather(auth.close(), auth.close())
        assert sim.count("POST", LOGOUT) == 1
        assert auth.session is None
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [e.name for e in events] == ["logged_in", "logged_out"]


async def test_a_close_waits_for_the_close_in_progress(sim: Simulator, clock: VirtualClock) -> None:
    """A second close returns only once the first has logged out: closed means done."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        first = await _slow_logout_under_way(sim, auth.close)
        assert sim.count("POST", LOGOUT) == 1, "the first close is logging out"
        second = asyncio.ensure_future(auth.close())
        await asyncio.sleep(0)
        assert not second.done(), "the second close waits for the logout in progress"
        await asyncio.gather(first, second)
        assert sim.count("POST", LOGOUT) == 1
        assert auth.session is None


async def test_a_refresh_during_close_is_engine_closed_and_sends_nothing(
    sim: Simulator, clock: VirtualClock
) -> None:
    """refresh() checked only for a session: asked for while close() logged out, it sent a
    refresh beside the logout, a flight started after close had stopped the last one."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        closing = await _slow_logout_under_way(sim, auth.close)
        assert auth.session is not None, "the close is still logging the session out"
        with pytest.raises(EngineClosed):
            await auth.refresh()
        await closing
        assert sim.count("POST", REFRESH) == 0


async def test_a_refresh_after_close_is_engine_closed(sim: Simulator, clock: VirtualClock) -> None:
    """After close, refresh() said False (as if there were merely no session) where login()
    and the token providers' fetch() say EngineClosed."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        await auth.close()
        with pytest.raises(EngineClosed):
            await auth.refresh()
        with pytest.raises(EngineClosed):
            await auth.credentials()
        assert sim.count("POST", REFRESH) == 0


async def test_a_hung_auth_code_callable_is_cut_at_the_attempt_timeout(
    sim: Simulator, clock: VirtualClock
) -> None:
    """ConsumerJwt awaited its auth-code callable with no bound: one that never answered (an
    identity provider's call without a timeout) held the shared fetch for ever. A call with a
    deadline stopped waiting at it, but every later call joined the same hung fetch, and the
    callable was never asked again; a call without a deadline hung. It is cut at the token
    request's attempt timeout, an outage, and the next fetch asks for a code anew."""
    asked = 0

    async def auth_code() -> str:
        nonlocal asked
        asked += 1
        if asked == 1:
            await asyncio.Event().wait()  # never answers
        return "code-xyz"

    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code=auth_code)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        started = clock.now()
        # A guard only: were the callable not cut, this raises outside pytest.raises.
        async with timeout_after(clock, 10 * DEFAULT_ATTEMPT_TIMEOUT):
            with pytest.raises(TimeoutError, match="auth_code"):
                await auth.fetch()
        assert clock.now() - started == pytest.approx(DEFAULT_ATTEMPT_TIMEOUT)
        assert sim.count("POST", AUTHENTICATE) == 0
        token = await auth.fetch()
        assert token.generation == 1
        assert asked == 2
        assert sim.count("POST", AUTHENTICATE) == 1


@pytest.mark.parametrize(
    "retry",
    [
        RetryPolicy(attempt_timeout=None),
        RetryPolicy(attempt_timeout=None, deadline=120.0),
        RetryPolicy(attempt_timeout=90.0),
    ],
    ids=["no-limit", "deadline-120", "attempt-90"],
)
async def test_a_slow_auth_code_within_the_policy_s_limits_is_waited_for(
    sim: Simulator, clock: VirtualClock, retry: RetryPolicy
) -> None:
    """The callable is given the policy's limits, no others: with ``attempt_timeout=None`` and
    no deadline ("no limit", the token request's HTTP call uncut) it used to be cut at the
    default 30 s all the same, so an identity provider that always takes longer failed every
    fetch."""

    async def auth_code() -> str:
        await clock.sleep(45)
        return "code-xyz"

    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code=auth_code)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, retry=retry):
        async with timeout_after(clock, 1_000):  # a guard only
            token = await auth.fetch()
        assert token.generation == 1
        assert sim.count("POST", AUTHENTICATE) == 1


async def test_with_no_limit_a_slow_token_service_is_waited_for_too(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The HTTP side of the same policy: the token request's answer taking 45 s is waited for
    (``attempt_timeout=None``), as the callable now is."""
    sim.faults.add(FaultRule("slow-idp", Delay(45_000), match=Match("POST", AUTHENTICATE)))
    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code="code-xyz")
    async with sim_engine(
        sim, clock, domains=auth._domains, auth=auth, retry=RetryPolicy(attempt_timeout=None)
    ):
        async with timeout_after(clock, 1_000):  # a guard only
            token = await auth.fetch()
        assert token.generation == 1


@pytest.mark.parametrize(
    ("retry", "bound"),
    [
        (RetryPolicy(deadline=10.0), 10.0),
        (RetryPolicy(attempt_timeout=5.0, deadline=10.0), 5.0),
        (RetryPolicy(attempt_timeout=None, deadline=10.0), 10.0),
    ],
    ids=["deadline-under-default-attempt", "attempt-under-deadline", "deadline-alone"],
)
async def test_a_hung_auth_code_is_cut_at_the_shorter_of_attempt_timeout_and_deadline(
    sim: Simulator, clock: VirtualClock, retry: RetryPolicy, bound: float
) -> None:
    """A deadline of 10 s under the default 30 s attempt timeout: a hung callable used to hold
    the fetch for the attempt timeout, three times the deadline the caller set."""

    async def auth_code() -> str:
        await asyncio.Event().wait()
        return "never"

    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code=auth_code)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, retry=retry):
        started = clock.now()
        async with timeout_after(clock, 1_000):  # a guard only
            with pytest.raises(TimeoutError, match=f"within {bound:g} s"):
                await auth.fetch()
        assert clock.now() - started == pytest.approx(bound)
        assert sim.count("POST", AUTHENTICATE) == 0


# -- providers without a session: shared and reused, never closed --------------------------


def _sessionless(kind: str) -> AppKeyAuth | StaticBearer | OAuth1Auth:
    if kind == "app_key":
        return AppKeyAuth(ACCOUNT, "app-key-under-test")
    if kind == "static_bearer":
        return StaticBearer("bearer-under-test")
    return OAuth1Auth("ck-under-test", "cs-under-test", "tk-under-test", "ts-under-test")


@pytest.mark.parametrize("kind", ["app_key", "static_bearer", "oauth1"])
async def test_a_provider_without_a_session_still_hands_out_credentials_after_close(
    kind: str,
) -> None:
    """The app key, static bearer and OAuth1 providers hold no session: close() ends nothing.
    An engine closes its auth provider as it closes, whoever else uses it, so made final
    they broke every other engine sharing them and could not serve the next engine."""
    auth = _sessionless(kind)
    url = URL("https://example.invalid/x")
    before = (await auth.credentials("GET", url)).headers["Authorization"]
    await auth.close()
    await auth.close()
    after = (await auth.credentials("GET", url)).headers["Authorization"]
    if isinstance(auth, OAuth1Auth):
        assert after.startswith("OAuth "), "still signing"
        form = await auth.credentials_for_form("POST", url, [("a", "b")])
        assert form.headers["Authorization"].startswith("OAuth ")
    else:
        assert after == before


@pytest.mark.parametrize("kind", ["app_key", "static_bearer", "oauth1"])
async def test_a_provider_without_a_session_serves_the_next_engine(
    sim: Simulator, clock: VirtualClock, kind: str
) -> None:
    """Reused by the next ``async with Engine(...)`` after the first one closed it."""
    auth = _sessionless(kind)
    async with sim_engine(sim, clock, auth=auth):
        pass
    async with sim_engine(sim, clock, auth=auth):
        creds = await auth.credentials("GET", URL("https://example.invalid/x"))
        assert creds.headers["Authorization"]


async def test_an_app_key_shared_by_two_engines_survives_one_closing(
    sim: Simulator, clock: VirtualClock
) -> None:
    """One app key for two open engines: closing A (which closes its auth provider) leaves
    B's calls working."""
    auth = AppKeyAuth(ACCOUNT, APP_KEY)
    a = Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth)
    b = Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth)
    async with b:
        async with a:
            await a.request("GET", "agentVep", _CHAT_INFO, params={"v": "1", "NC": "true"})
        resp = await b.request("GET", "agentVep", _CHAT_INFO, params={"v": "1", "NC": "true"})
        assert resp.status == 200


async def test_a_keepalive_on_a_shared_app_key_goes_on_when_the_other_engine_closes(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """B's keepalive, its engine open, keeps running through engine A's close of the key they
    share: no WARNING, no error."""
    caplog.set_level(logging.INFO, logger="le_transport")
    auth = AppKeyAuth(ACCOUNT, APP_KEY)
    fields = {"account": ACCOUNT, "chat_id": "c1"}
    a = Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth)
    async with Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth) as b:
        task = b.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=fields)
        async with a:
            pass
        await clock.sleep(3 * SERVER_CHAT_API_CHAT_INFO.interval)
        assert task.running
        assert task.error is None
        assert task.runs >= 2
        assert task.failures == 0
    assert _warnings(caplog) == []


# -- Login Service auth: a close cancelled during its logout -----------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ]


async def _close_cancelled_during_logout(sim: Simulator, auth: Any) -> None:
    """Start ``auth.close()`` with a slow logout, and cancel it once the logout is out."""
    first = await _slow_logout_under_way(sim, auth.close)
    assert sim.count("POST", LOGOUT) == 1, "the close is logging out"
    first.cancel()
    await asyncio.wait({first})
    assert first.cancelled()


async def test_a_provider_whose_close_was_cancelled_serves_no_bearer(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The session is kept for the next close to log out, but the provider is closed:
    credentials() used to hand out that session's bearer, where login() and refresh() said
    EngineClosed."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        await _close_cancelled_during_logout(sim, auth)
        assert auth.session is not None, "kept for the next close"
        with pytest.raises(EngineClosed):
            await auth.credentials()
        with pytest.raises(EngineClosed):
            await auth.refresh()
        await auth.close()
        assert auth.session is None
        assert sim.count("POST", LOGOUT) == 2, "the next close logs it out"


async def test_a_close_waiting_for_a_cancelled_one_finishes_its_logout(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A second close waiting for the first, which is then cancelled: the second does the
    logout the first could not finish."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        first = await _slow_logout_under_way(sim, auth.close)
        second = asyncio.ensure_future(auth.close())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait({first})
        assert first.cancelled()
        await second
        assert auth.session is None
        assert sim.count("POST", LOGOUT) == 2


async def test_a_cancelled_waiting_close_leaves_the_logout_to_the_first(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Three closes, the middle one (waiting) cancelled: the first logs out, once, and the
    third returns when it has."""
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        first = await _slow_logout_under_way(sim, auth.close)
        second = asyncio.ensure_future(auth.close())
        third = asyncio.ensure_future(auth.close())
        await asyncio.sleep(0)
        second.cancel()
        async with timeout_after(clock, 100):
            await asyncio.wait({first, second, third})
        assert not first.cancelled()
        assert first.exception() is None
        assert not third.cancelled()
        assert third.exception() is None
        assert auth.session is None
        assert sim.count("POST", LOGOUT) == 1


async def test_an_engine_close_cancelled_during_the_logout_is_finished_by_the_next(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = user_login(sim, keepalive=False)
    engine = sim_engine(sim, clock, domains=auth._domains, auth=auth)
    await engine.start()
    await engine.login()
    first = await _slow_logout_under_way(sim, engine.close)
    first.cancel()
    await asyncio.wait({first})
    assert auth.session is not None
    await engine.close()
    assert auth.session is None
    assert sim.count("POST", LOGOUT) == 2
    assert _warnings(caplog) == []


# -- the engine's keepalive whose provider was closed alone ------------------------------------


async def test_a_refresh_keepalive_whose_provider_was_closed_alone_says_so(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider closed on its own, the engine open: the next run's refresh() raises
    EngineClosed, and the schedule used to end as if its engine had closed (INFO "its engine
    is closed", error None, wait() None): the caller could not tell it had stopped. It stops
    once, with a WARNING naming the closed provider, a stopped ``keepalive_failed`` event,
    and the error kept."""
    events: list[StateEvent] = []
    auth = user_login(sim, keepalive=False)
    caplog.set_level(logging.INFO, logger="le_transport")
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 1)
        assert (task.runs, task.failures) == (1, 0)
        caplog.clear()
        await auth.close()
        await clock.sleep(5 * CHAT_AGENT_API_REFRESH.interval)
        assert not task.running, "stopped at the next run"
        assert task.runs == 2
        assert isinstance(task.error, EngineClosed)
        assert await task.wait() is task.error
        assert task not in engine._keepalives, "it left its engine"
        lines = [r for r in caplog.records if r.name == "le_transport.sockets"]
        assert [r.levelno for r in lines] == [logging.WARNING]
        message = lines[0].getMessage()
        assert "its auth provider UserLogin" in message
        assert "closed on its own, its engine still open" in message
        assert "user_login[" in message, "the error's text names the provider"
        assert not any("its engine is closed" in r.getMessage() for r in caplog.records)
    stopped = [e.details for e in events if e.name == "keepalive_failed"]
    assert stopped == [
        {"action": CHAT_AGENT_API_REFRESH.action, "error": "EngineClosed", "stopped": True}
    ]


async def test_an_engine_close_with_a_refresh_keepalive_is_quiet(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """engine.close() (keepalives first, then the provider's close and logout): no WARNING,
    no ERROR, one logout; the schedule ends closed, no error."""
    auth = user_login(sim, keepalive=False)
    caplog.set_level(logging.INFO, logger="le_transport")
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 1)
        assert task.runs == 1
    assert task.error is None
    assert _warnings(caplog) == []
    assert sim.count("POST", LOGOUT) == 1


async def test_an_engine_close_during_a_refresh_run_is_quiet(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = user_login(sim, keepalive=False)
    caplog.set_level(logging.INFO, logger="le_transport")
    sim.faults.add(FaultRule("slow-refresh", Delay(5_000), match=Match("POST", REFRESH)))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 1)
        assert sim.count("POST", REFRESH) == 1, "a refresh is in flight"
        assert task.running
    assert task.error is None
    assert _warnings(caplog) == []
    assert sim.count("POST", LOGOUT) == 1


# -- a socket whose auth provider was closed alone ----------------------------------------------


def _dropping_app(got: list[str], open_sockets: list[web.WebSocketResponse]) -> web.Application:
    """Accepts every upgrade (recording its Authorization) and keeps it until the test drops
    it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        got.append(request.headers.get("Authorization", "-"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        open_sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


async def test_a_socket_whose_provider_was_closed_alone_stops_instead_of_reconnecting(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider closed on its own, the engine and the socket open: the next connect's
    credentials() raises EngineClosed. The socket took that for a failed connect like an
    outage (a connect_failed WARNING, a backoff pause, escalations) and reconnected for ever.
    Closed is final: it stops at once, with one WARNING and a SocketClosed caused by the
    EngineClosed."""
    caplog.set_level(logging.INFO, logger="le_transport")
    clock = VirtualClock(autojump_threshold=0.05)  # the server's I/O is real
    got: list[str] = []
    server_side: list[web.WebSocketResponse] = []
    host = await serve(_dropping_app(got, server_side))
    auth = _GatedTokens()
    auth.gate.set()
    async with Engine(StaticDomains({"svc": host}), scheme="http", clock=clock, auth=auth) as e:
        ws = await e.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        await ws.wait_open(timeout=30)
        assert got == ["Bearer tok1"]
        await auth.close()  # closed alone
        caplog.clear()
        await server_side[0].close()  # the connection is lost: the socket reconnects
        async with timeout_after(clock, 600):  # reconnecting, it would never close
            while not ws.closed:
                await clock.sleep(0.1)
        with pytest.raises(SocketClosed):
            await ws.wait_open(timeout=1)
        assert ws.error is not None
        assert isinstance(ws.error.__cause__, EngineClosed)
        assert "closed on its own" in str(ws.error)
        assert got == ["Bearer tok1"], "nothing sent without credentials"
        assert ws.reconnects == 1, "the one reconnect that met the closed provider"
    messages = [r.getMessage() for r in caplog.records if r.name == "le_transport.sockets"]
    # The pause after the loss, and no other: the connect after it stops the socket.
    assert len([m for m in messages if m.startswith("svc/ws: reconnecting")]) == 1, messages
    assert not any("connect_failed" in m for m in messages), messages
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The loss itself, then the stop: one WARNING for it, not one per attempt for ever.
    assert [" ".join(r.getMessage().split()[:2]) for r in warnings] == [
        "svc/ws: lost",
        "socket stopped:",
    ]
    assert "closed on its own" in warnings[1].getMessage()
    assert not [r for r in warnings if r.levelno >= logging.ERROR]


async def test_the_auth_code_s_time_counts_against_the_token_request_s_deadline(
    sim: Simulator, clock: VirtualClock
) -> None:
    """deadline=10: a 9 s auth-code callable leaves the token request 1 s. Its HTTP call was
    given a deadline of its own after the callable, and a 9 s token service answered at 18 s."""

    async def auth_code() -> str:
        await clock.sleep(9)
        return "code-xyz"

    sim.faults.add(FaultRule("slow-idp", Delay(9_000), match=Match("POST", AUTHENTICATE)))
    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code=auth_code)
    retry = RetryPolicy(attempt_timeout=None, deadline=10.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, retry=retry):
        started = clock.now()
        async with timeout_after(clock, 1_000):  # a guard only
            with pytest.raises(DeadlineExceeded):
                await auth.fetch()
        assert clock.now() - started == pytest.approx(10.0, abs=0.01)
        assert auth.token is None
