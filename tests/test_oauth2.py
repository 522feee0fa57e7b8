"""OAuth2 client credentials (Sentinel) and the consumer JWT (idp) against the simulator:
fetched once, reused, fetched anew before the JWT's ``exp`` with a margin, single flight."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence

import pytest
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.chaos import Hang, Reset, Status
from le_transport.errors import (
    DomainResolutionError,
    EngineClosed,
    LoginRejected,
    RetriesExhausted,
)
from le_transport.events import GiveUpEvent, StateEvent
from le_transport.providers import (
    ConsumerJwt,
    CsdsDomains,
    ProviderHttp,
    ProviderResponse,
    SentinelClientCredentials,
    StaticDomains,
    jwt_expiry,
)
from le_transport.providers._token import (
    _EARLY_FALLBACK,
    MIN_TOKEN_LIFE,
    MIN_TOKEN_REFRESH,
    Token,
    TokenProvider,
)
from le_transport.providers.jwt import jwt_times
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Simulator
from tests.conftest import ServerFactory, serve_hanging
from tests.known_secrets import CLIENT_SECRET
from tests.test_providers import (
    ACCOUNT,
    CLIENT_ID,
    csds_for,
    jwt_with,
    learn_session_secrets,
    sim,
    sim_config,
    sim_engine,
)

__all__ = ["sim"]

TOKEN = f"/sentinel/api/account/{ACCOUNT}/app/token"
CSDS = f"/api/account/{ACCOUNT}/service/baseURI.json"
SIGNUP = f"/api/account/{ACCOUNT}/signup"
AUTHENTICATE = f"/api/account/{ACCOUNT}/authenticate"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
ANY_URL = URL("http://127.0.0.1/")


def sentinel(
    sim: Simulator, secret: str = CLIENT_SECRET, margin: float = 60
) -> SentinelClientCredentials:
    return SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        secret,
        domains=csds_for(sim),
        margin=margin,
        wall_clock=sim.tokens.epoch_now,
    )


async def test_sentinel_token_is_fetched_once_and_accepted_by_the_users_api(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        for _ in range(3):
            users = await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
            assert isinstance(users, list)
        learn_session_secrets(auth, secret_values)
        creds = await engine.login()
        assert creds.headers["Authorization"].startswith("Bearer ey")
    assert sim.count("POST", TOKEN) == 1
    assert [e.name for e in events] == ["logged_in"]


async def test_sentinel_token_is_refreshed_a_margin_before_the_jwt_expires(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        assert first.bearer is not None
        exp = jwt_expiry(first.bearer.reveal())
        assert exp is not None
        # exp is whole seconds: the token lives a fraction under the configured hour.
        assert sim.config.jwt_ttl - 1 < exp - sim.tokens.epoch_now() <= sim.config.jwt_ttl
        await clock.sleep(sim.config.jwt_ttl - 61)
        assert (await engine.login()).generation == first.generation
        await clock.sleep(2)  # now inside the margin: a new token, the old one still valid
        # Sent at once while it is valid (the login does not wait for the token service):
        # the new one is fetched meanwhile.
        assert (await engine.login()).generation == first.generation
        await _early_fetch_done(auth)
        second = await engine.login()
        assert second.generation == first.generation + 1
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
    assert sim.count("POST", TOKEN) == 2


async def test_expires_in_is_used_when_the_token_carries_no_exp(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script(
        "POST",
        TOKEN,
        [Status(200, body=json.dumps({"access_token": "opaque-token", "expires_in": 100}))],
    )
    auth = sentinel(sim, margin=10)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        await auth.credentials("GET", ANY_URL)
        token = auth.token
        assert token is not None
        assert token.refresh_at == pytest.approx(clock.now() + 90)


async def test_a_token_shorter_than_the_margin_is_refreshed_half_way() -> None:
    """A JWT that lives 30 s with a 60 s margin is fetched anew after 15 s, not at once."""
    assert jwt_expiry(jwt_with({"exp": 130})) == 130.0
    clock = VirtualClock()
    async with Simulator(clock=clock) as s:
        s.faults.script(
            "POST",
            f"/sentinel/api/account/{s.account.id}/app/token",
            [Status(200, body=json.dumps({"access_token": jwt_with({"exp": 130})}))],
        )
        auth = SentinelClientCredentials(
            s.account.id,
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            domains=CsdsDomains(s.account.id, csds_host=s.host, scheme="http"),
            margin=60,
            wall_clock=lambda: 100.0,
        )
        async with sim_engine(s, clock, domains=auth._domains, auth=auth):
            await auth.credentials("GET", ANY_URL)
            token = auth.token
            assert token is not None
            assert token.refresh_at == pytest.approx(clock.now() + 15)


async def test_a_hundred_concurrent_callers_share_one_token_request(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(100))
        )
        assert {r.status for r in results} == {200}
    assert sim.count("POST", TOKEN) == 1


async def test_a_wrong_client_secret_is_rejected_at_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = sentinel(sim, secret=CLIENT_SECRET + "-wrong")
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(LoginRejected, match="refused with 401"):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("POST", TOKEN) == 1
    assert clock.now() == 0


async def test_a_consumer_signs_up_for_a_jwt_sent_as_authorization_jwt(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), wall_clock=sim.tokens.epoch_now)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        creds = await engine.login()
        learn_session_secrets(auth, secret_values)
        assert creds.bearer is not None
        assert creds.headers == {"Authorization": f"jwt {creds.bearer.reveal()}"}
        assert sim.tokens.valid_jwt(creds.bearer.reveal(), ACCOUNT, "consumer") is not None
        # Rejected (a 4401 on the socket, say): the next call signs up once more.
        await auth.invalidate(creds)
        await asyncio.gather(*(engine.login() for _ in range(10)))
    assert sim.count("POST", SIGNUP) == 2


async def test_an_authenticated_consumer_exchanges_a_fresh_auth_code_each_time(
    sim: Simulator, clock: VirtualClock
) -> None:
    codes = iter(["code-one-xyz", "code-two-xyz"])

    async def next_code() -> str:
        return next(codes)

    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), auth_code=next_code)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        first = await auth.relogin()
        second = await auth.relogin()
        assert first.generation + 1 == second.generation
    assert sim.count("POST", AUTHENTICATE) == 2
    assert sim.count("POST", SIGNUP) == 0


# -- the early fetch meets an outage: the token still valid is used, and fetched again later ----


async def _early_fetch_done(auth: TokenProvider) -> None:
    """Wait for the early fetch a call inside the margin started in the background (the call
    itself went on with the current token): it ends on its own, here it is only awaited."""
    early = auth._early
    if early is not None:
        await asyncio.wait({early})


async def _inside_the_margin(
    engine: Engine, auth: SentinelClientCredentials, clock: VirtualClock
) -> Token:
    """Log in, then sleep to a second past the token's refresh time (59 s before it expires)."""
    await engine.login()
    token = auth.token
    assert token is not None
    assert token.refresh_at is not None
    await clock.sleep(token.refresh_at + 1 - clock.now())
    return token


async def test_an_early_fetch_meeting_an_outage_is_logged_as_a_warning_never_an_error(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The early fetch's one attempt fails, but the token still works and no call fails: the
    retry middleware's give-up line is a WARNING (saying what Sentinel answered, and what the
    provider falls back on), followed by the provider's own refresh_failed; the on_giveup hook
    is told the caller handles it. Once the token has expired, the fetch's failure is the
    call's again, and an ERROR, whose give-up event says nothing is handled."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, giveups=giveups) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        assert token.expires_at is not None
        sim.faults.script("POST", TOKEN, [503] * 10)
        caplog.clear()
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        await _early_fetch_done(auth)
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING,
            logging.WARNING,
        ]
        gave_up, kept = (r for r in caplog.records if r.levelno >= logging.WARNING)
        assert gave_up.name == "le_transport.retry"
        assert gave_up.status == 503  # type: ignore[attr-defined]
        assert gave_up.service == "sentinel"  # type: ignore[attr-defined]
        assert gave_up.attempt == 1  # type: ignore[attr-defined]
        assert gave_up.getMessage().endswith(f"last outcome 503; handled: {_EARLY_FALLBACK}")
        assert kept.name == "le_transport.auth"
        assert kept.event == "refresh_failed"  # type: ignore[attr-defined]
        assert [(g.service, g.attempts, g.handled_by_caller) for g in giveups] == [
            ("sentinel", 1, True)
        ]
        # The token expires and the outage goes on: the call fails, and that is an ERROR.
        await clock.sleep(token.expires_at - clock.now())
        caplog.clear()
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert error.name == "le_transport.retry"
        assert error.attempt == 4  # type: ignore[attr-defined]
        assert "handle" not in error.getMessage()
        assert [(g.attempts, g.handled_by_caller) for g in giveups[1:]] == [(4, False)]


async def test_a_consumer_jwt_fetched_early_says_too_that_it_handles_an_outage(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    auth = ConsumerJwt(ACCOUNT, domains=csds_for(sim), wall_clock=sim.tokens.epoch_now)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        token = auth.token
        assert token is not None
        assert token.refresh_at is not None
        await clock.sleep(token.refresh_at + 1 - clock.now())
        sim.faults.script("POST", SIGNUP, [503])
        caplog.clear()
        assert (await engine.login()).generation == first.generation
        await _early_fetch_done(auth)
    assert sim.count("POST", SIGNUP) == 2
    [gave_up] = [r for r in caplog.records if r.name == "le_transport.retry"]
    assert gave_up.levelno == logging.WARNING
    assert gave_up.getMessage().endswith(f"; handled: {_EARLY_FALLBACK}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_early_fetch_meeting_an_outage_keeps_the_valid_token_and_tries_again_later(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """Sentinel answers 503 once the token is due: the calls go out with the token, which lives
    another 59 s, instead of failing (after 30 s of schedule) while holding a valid one."""
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [503, 503, 503])
        started = clock.now()
        # Ten calls at once share one attempt, no pause: none waits through the schedule.
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(10))
        )
        assert {r.status for r in results} == {200}
        assert clock.now() == started
        await _early_fetch_done(auth)
        assert sim.count("POST", TOKEN) == 2
        assert (await engine.login()).generation == token.generation
        # Not asked again on every call: after the schedule's pauses, 5, 10, 15 s.
        for pause, asked in ((4.9, 2), (0.1, 3), (10, 4), (15, 5)):
            await clock.sleep(pause)
            resp = await engine.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
            await _early_fetch_done(auth)
            assert sim.count("POST", TOKEN) == asked
        # The outage is over: the fifth token request got a new token.
        assert (await engine.login()).generation == token.generation + 1
    failed = [e for e in events if e.name == "refresh_failed"]
    assert [e.details["retry_in"] for e in failed] == [5.0, 10.0, 15.0]
    assert all(e.details["next"] == "keep the current token" for e in failed)
    assert [e.details["expires_in"] for e in failed] == pytest.approx([59, 54, 44], abs=1)
    # The token failed nothing: no login_failed (the recovery loop's cue) was reported.
    assert [e.name for e in events if e.name != "refresh_failed"] == ["logged_in", "logged_in"]


async def test_an_outage_that_outlasts_the_token_fails_the_first_call_after_its_expiry(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        assert token.expires_at is not None
        assert token.refresh_at is not None
        assert token.expires_at - token.refresh_at == pytest.approx(60)
        sim.faults.script("POST", TOKEN, [503] * 20)
        for _ in range(5):  # at +0, 5, 15, 30 and 45 s; then it is the token's expiry
            resp = await engine.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
            await _early_fetch_done(auth)
            retry_at = auth.token.refresh_at if auth.token is not None else None
            assert retry_at is not None
            assert retry_at <= token.expires_at
            await clock.sleep(retry_at - clock.now())
        assert clock.now() == pytest.approx(token.expires_at)
        asked = sim.count("POST", TOKEN)
        assert asked == 1 + 5
        # Expired: the token request follows the whole schedule, and its failure is the call's.
        started = clock.now()
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        assert clock.now() - started == pytest.approx(30)
        assert sim.count("POST", TOKEN) == asked + 4
    names = [e.name for e in events]
    assert names.count("refresh_failed") == 5
    assert names[-1] == "login_failed"


async def test_an_early_fetch_refused_with_a_4xx_fails_the_next_call_at_once(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call that started the early fetch went on with its valid token (the fetch runs in
    the background); the refusal drops the token, and the next call fails with it at once.
    Neither give-up line nor the on_giveup hook says the failure is handled (alerting built
    on the hook must see it)."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, giveups=giveups) as engine:
        await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [401, 401])
        started = clock.now()
        caplog.clear()
        assert (await engine.request("GET", "accountConfigReadOnly", USERS)).status == 200
        await _early_fetch_done(auth)
        assert auth.token is None
        with pytest.raises(LoginRejected, match="refused with 401"):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        assert clock.now() == started
        assert sim.count("POST", TOKEN) == 3
    lines = [r for r in caplog.records if r.name == "le_transport.retry"]
    assert [r.status for r in lines] == [401, 401]  # type: ignore[attr-defined]
    assert not [r for r in lines if "handle" in r.getMessage()]
    assert [(g.outcome and g.outcome.status, g.handled_by_caller) for g in giveups] == [
        (401, False),
        (401, False),
    ]


class _FailingDomains:
    """A domain provider that fails with ``error`` once told to, as a Domain API down would."""

    def __init__(self, inner: CsdsDomains) -> None:
        self.inner = inner
        self.error: Exception | None = None

    def attach(self, http: ProviderHttp) -> None:
        self.inner.attach(http)

    async def resolve(self, service: str) -> str:
        if self.error is not None:
            raise self.error
        return await self.inner.resolve(service)

    async def invalidate(self) -> None:
        await self.inner.invalidate()


@pytest.mark.parametrize("down", ["csds-503", "csds-reset", "resolve-raises"])
async def test_an_early_fetch_that_cannot_resolve_its_host_keeps_the_token_and_logs_no_error(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    down: str,
) -> None:
    """The Domain API is down when the token is due. With the map cached, its one attempt
    gives up with a WARNING that says the last good map is served (not an ERROR: no caller
    failed), and the token is fetched on it; a domain provider that fails outright is an
    outage like any other, and the valid token is kept."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    events: list[StateEvent] = []
    giveups: list[GiveUpEvent] = []
    domains = _FailingDomains(csds_for(sim))
    auth = SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        CLIENT_SECRET,
        domains=domains,
        margin=60,
        wall_clock=sim.tokens.epoch_now,
    )
    # The engine's own calls resolve without the Domain API: only the early fetch meets it.
    static = StaticDomains({"accountConfigReadOnly": sim.host})
    async with sim_engine(
        sim, clock, domains=static, auth=auth, events=events, giveups=giveups
    ) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        if down == "resolve-raises":
            domains.error = DomainResolutionError("the Domain API is down", account=ACCOUNT)
        else:
            sim.faults.script("GET", CSDS, [503 if down == "csds-503" else Reset()] * 4)
        caplog.clear()
        events.clear()
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        await _early_fetch_done(auth)
        # The map's refresh runs in the background, the token fetched on the last good map.
        await domains.inner.wait_refresh()
        learn_session_secrets(auth, secret_values)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        if down == "resolve-raises":
            assert (await engine.login()).generation == token.generation
            assert [e.name for e in events] == ["refresh_failed"]
            assert events[0].details["next"] == "keep the current token"
            assert giveups == []
        else:
            # The last good map served the token service's host: a new token.
            assert (await engine.login()).generation == token.generation + 1
            assert sorted(e.name for e in events) == ["domains_stale", "logged_in"]
            [gave_up] = [r for r in caplog.records if r.name == "le_transport.retry"]
            assert gave_up.levelno == logging.WARNING
            assert gave_up.getMessage().endswith("; handled: the last good map is served")
            assert [(g.service, g.handled_by_caller) for g in giveups] == [("csds", True)]


# -- the token expires while an early fetch is out: the whole schedule, one fetch for all -------


async def _expired_during_the_early_fetch(
    engine: Engine,
    auth: SentinelClientCredentials,
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    then: Sequence[int],
    late_callers: int = 10,
) -> tuple[list[asyncio.Future[object]], float]:
    """A call starts the early fetch 2 s before the token expires (and goes on with the token,
    still valid); Sentinel holds it 3 s and drops the connection, then answers ``then``.
    Halfway, with the token expired, ``late_callers`` calls arrive and join the fetch in flight.
    Returns every call (the early one first), and when the early fetch failed."""
    token = await _inside_the_margin(engine, auth, clock)
    learn_session_secrets(auth, secret_values)
    assert token.expires_at is not None
    await clock.sleep(token.expires_at - 2 - clock.now())
    sim.faults.script("POST", TOKEN, [Hang(duration_ms=3000), *then])
    calls: list[asyncio.Future[object]] = [
        asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
    ]
    await clock.sleep(2.5)
    assert token.expired(clock.now())
    calls += [
        asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
        for _ in range(late_callers)
    ]
    return calls, token.expires_at + 1


async def test_callers_whose_token_expired_during_a_failing_early_fetch_get_the_whole_schedule(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """They joined a fetch of one attempt, which failed: they have no token to fall back on, so
    they get what a caller without one gets, 5 and 10 s of pauses to the token, not the one
    attempt's failure. Eleven callers, one fetch."""
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        calls, failed_at = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503, 503]
        )
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [getattr(r, "status", r) for r in results] == [200] * 11
        assert clock.now() == pytest.approx(failed_at + 5 + 10)
        # The first token, the early attempt, then the whole schedule's three: one fetch for
        # the eleven callers.
        assert sim.count("POST", TOKEN) == 1 + 1 + 3
        learn_session_secrets(auth, secret_values)
    assert [e.name for e in events] == ["logged_in", "logged_in"]


async def test_callers_whose_token_expired_during_a_failing_early_fetch_share_its_final_failure(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        calls, failed_at = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503] * 4
        )
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The first call had a valid token: it went on with it, and did not wait.
        assert getattr(results[0], "status", results[0]) == 200
        results = results[1:]
        assert all(isinstance(r, RetriesExhausted) for r in results), results
        # The whole schedule's four attempts, not the early fetch's one.
        assert {len(r.attempts) for r in results if isinstance(r, RetriesExhausted)} == {4}
        assert clock.now() == pytest.approx(failed_at + 30)
        assert sim.count("POST", TOKEN) == 1 + 1 + 4
        learn_session_secrets(auth, secret_values)
    assert [e.name for e in events] == ["logged_in", "login_failed"]


async def test_an_early_fetch_failing_after_the_token_expired_says_a_whole_schedule_fetch_follows(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The early attempt's give-up line is true though the token expired during it: it says
    the current token is kept while valid or, expired meanwhile, that a fetch on the whole
    schedule follows; which it does, and that fetch's failure is an ERROR no one handles."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, giveups=giveups) as engine:
        calls, _ = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503] * 4, late_callers=1
        )
        caplog.clear()
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The first call went on with its token, valid then; the late one shares the failure.
        assert getattr(results[0], "status", results[0]) == 200
        assert isinstance(results[1], RetriesExhausted), results
        learn_session_secrets(auth, secret_values)
    lines = [r for r in caplog.records if r.name == "le_transport.retry"]
    early, *retries, final = lines
    assert early.levelno == logging.WARNING
    assert early.attempt == 1  # type: ignore[attr-defined]
    message = early.getMessage()
    assert message.endswith(f"; handled: {_EARLY_FALLBACK}")
    assert "the current token is kept while it is valid" in message
    assert "if it expired meanwhile, a fetch on the whole schedule follows" in message
    assert [r.attempt for r in retries] == [1, 2, 3]  # type: ignore[attr-defined]
    assert final.levelno == logging.ERROR
    assert "handle" not in final.getMessage()
    assert [(g.attempts, g.handled_by_caller) for g in giveups] == [(1, True), (4, False)]
    # No refresh_failed said the token was kept: it was not.
    assert not [r for r in caplog.records if getattr(r, "event", None) == "refresh_failed"]


async def test_a_cancelled_caller_does_not_stop_the_whole_schedule_fetch_the_others_share(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        calls, _ = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503, 503], late_callers=3
        )
        await clock.sleep(1 + 2.5)  # the early fetch failed; the whole schedule's first pause
        # The first call went on with its token, valid then; the late ones wait.
        assert calls[0].done()
        assert not any(call.done() for call in calls[1:])
        calls[1].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert [getattr(r, "status", r) for i, r in enumerate(results) if i != 1] == [200] * 3
        learn_session_secrets(auth, secret_values)


async def test_closing_the_engine_during_the_whole_schedule_fetch_gives_its_callers_engine_closed(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        calls, _ = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503, 503], late_callers=3
        )
        await clock.sleep(1 + 2.5)  # in the whole schedule's first pause
        await engine.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The first call went on with its token, valid then; the late ones wait for the fetch.
        assert getattr(results[0], "status", results[0]) == 200
        assert all(isinstance(r, EngineClosed) for r in results[1:]), results
        assert not any(call.cancelled() for call in calls)


# -- a token that lives only seconds ----------------------------------------------------------


@pytest.mark.parametrize("lifetime", [MIN_TOKEN_LIFE, 3.0, 4.9, 8.0, 30.0])
async def test_a_short_lived_token_is_fetched_anew_before_it_expires(
    sim: Simulator, clock: VirtualClock, lifetime: float
) -> None:
    """Half-way through its life (the 60 s margin is longer than it), never past its expiry;
    and never at a floor of seconds that a token living less than that would outlive."""
    sim.faults.script(
        "POST",
        TOKEN,
        [Status(200, body=json.dumps({"access_token": "opaque-token", "expires_in": lifetime}))],
    )
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        await auth.credentials("GET", ANY_URL)
        token = auth.token
        assert token is not None
        assert token.expires_at == pytest.approx(clock.now() + lifetime)
        assert token.refresh_at == pytest.approx(clock.now() + lifetime / 2)


async def test_a_token_living_four_seconds_is_never_sent_expired(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """Sentinel's JWTs live 4 s: each is replaced before it expires, so no call is refused with
    a 401 and sent again (nor a streamed body refused outright, nor a socket closed)."""
    # An epoch a quarter past a second: exp is whole seconds, so each JWT lives 3.25 or 3.75 s.
    async with Simulator(sim_config(jwt_ttl=4.0), clock=clock, epoch=1_700_000_000.25) as short:
        auth = sentinel(short, margin=60)
        async with sim_engine(short, clock, domains=auth._domains, auth=auth) as engine:
            for _ in range(40):
                resp = await engine.request("GET", "accountConfigReadOnly", USERS)
                assert resp.status == 200
                learn_session_secrets(auth, secret_values)
                await clock.sleep(0.5)
        # Every call went out once: none met a 401 and a replay.
        assert short.count("GET", USERS) == 40
        # A token every 2 s: due half-way through its life, fetched by the next call.
        assert short.count("POST", TOKEN) == 10


# -- a wall clock skewed from the token issuer's ----------------------------------------------


def skewed_sentinel(sim: Simulator, skew: float, margin: float = 60) -> SentinelClientCredentials:
    """A Sentinel provider whose wall clock is ``skew`` s ahead of the simulator's (behind if
    negative)."""
    return SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        CLIENT_SECRET,
        domains=csds_for(sim),
        margin=margin,
        wall_clock=lambda: sim.tokens.epoch_now() + skew,
    )


async def _steady_calls(
    engine: Engine,
    auth: SentinelClientCredentials,
    clock: VirtualClock,
    secret_values: set[str],
    calls: int,
    every: float,
) -> None:
    for _ in range(calls):
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        learn_session_secrets(auth, secret_values)
        await clock.sleep(every)


def _skew_reports(
    events: list[StateEvent], caplog: pytest.LogCaptureFixture
) -> tuple[list[StateEvent], list[logging.LogRecord]]:
    return (
        [e for e in events if e.name == "clock_skew"],
        [r for r in caplog.records if getattr(r, "event", None) == "clock_skew"],
    )


@pytest.mark.parametrize("skew", [3598.0, 3599.5, 5000.0])
async def test_a_clock_ahead_of_the_issuers_by_most_of_a_tokens_life_is_read_from_iat(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    skew: float,
) -> None:
    """Our wall clock is ahead by most of the hour-long JWT's life (or more): by it, each token
    lives seconds (or expired already). The first token is used as our clock says (it may be a
    cached token, aging); the second, issued later and telling the same skew through its iat,
    confirms it: from then on a token lives its hour, and is fetched anew an hour later, not
    every second. Logged once, as a WARNING with the amount."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    events: list[StateEvent] = []
    auth = skewed_sentinel(sim, skew)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await _steady_calls(engine, auth, clock, secret_values, calls=240, every=0.25)
        assert sim.count("POST", TOKEN) <= 3
        token = auth.token
        assert token is not None
        assert token.refresh_at is not None
        assert token.refresh_at - clock.now() > sim.config.jwt_ttl - 60 - 60 - 5
        # Two hours more: a token an hour, each replaced before the issuer's exp.
        await _steady_calls(engine, auth, clock, secret_values, calls=120, every=60)
        assert sim.count("GET", USERS) == 240 + 120  # none refused with a 401 and sent again
        assert sim.count("POST", TOKEN) <= 3 + 2
    [reported], [record] = _skew_reports(events, caplog)
    assert reported.details["our_clock"] == "ahead"
    assert reported.details["skew"] == pytest.approx(skew, abs=1.5)
    assert record.levelno == logging.WARNING
    assert record.name == "le_transport.auth"
    assert "skew=" in record.getMessage()


@pytest.mark.parametrize("skew", [-100.0, -3000.0])
async def test_a_clock_behind_the_issuers_is_read_from_iat_and_no_token_is_sent_expired(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    skew: float,
) -> None:
    """A token issued in our clock's future proves our clock behind, at once: the token lives
    its hour, not an hour plus the skew, and is replaced before the issuer's exp. Before, every
    call between its expiry and our clock's met a 401 and was sent again."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    events: list[StateEvent] = []
    auth = skewed_sentinel(sim, skew)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await engine.login()
        token = auth.token
        assert token is not None
        assert token.expires_at is not None
        assert token.expires_at - clock.now() <= sim.config.jwt_ttl
        await _steady_calls(engine, auth, clock, secret_values, calls=720, every=10)
        assert sim.count("GET", USERS) == 720
        assert sim.count("POST", TOKEN) == 3  # at 0, about 3540 and 7080 s
    [reported], [record] = _skew_reports(events, caplog)
    assert reported.details["our_clock"] == "behind"
    assert reported.details["skew"] == pytest.approx(skew, abs=1.5)
    assert record.levelno == logging.WARNING


@pytest.mark.parametrize("skew", [100.0, -100.0])
async def test_a_token_living_four_seconds_is_never_sent_expired_by_a_skewed_clock(
    clock: VirtualClock, secret_values: set[str], skew: float
) -> None:
    """Ahead, the first token is past its exp by our clock: it is used for half the life it was
    issued with (not the 5 s floor it would outlive), and the next one tells the skew. Behind,
    the first token already tells it."""
    async with Simulator(sim_config(jwt_ttl=4.0), clock=clock, epoch=1_700_000_000.25) as short:
        auth = skewed_sentinel(short, skew)
        async with sim_engine(short, clock, domains=auth._domains, auth=auth) as engine:
            await _steady_calls(engine, auth, clock, secret_values, calls=40, every=0.5)
        assert short.count("GET", USERS) == 40  # none refused with a 401 and sent again
        assert short.count("POST", TOKEN) <= 15


async def test_a_jwt_without_iat_is_read_against_our_wall_clock(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing tells the issuer's clock: an exp 2 s away by our clock is read so (it expires
    then), but nothing else says the token is that short (no iat, no expires_in): it is used for
    the floor, as a token not believed is, rather than fetched anew after 1 s (a clock ahead
    by nearly a token's life so made a token request every second)."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    now = sim.tokens.epoch_now()
    sim.faults.script(
        "POST",
        TOKEN,
        [Status(200, body=json.dumps({"access_token": jwt_with({"exp": now + 3600})}))],
    )
    auth = skewed_sentinel(sim, 3598.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        await auth.credentials("GET", ANY_URL)
        token = auth.token
        assert token is not None
        assert token.expires_at == pytest.approx(clock.now() + 2)
        assert token.refresh_at == pytest.approx(clock.now() + MIN_TOKEN_REFRESH)
    assert _skew_reports([], caplog) == ([], [])


async def test_a_cached_token_is_read_against_our_wall_clock_never_from_its_iat(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A token service handing out a cached token (issued long ago, expiring soon) looks like
    a clock ahead of the issuer's; exp - iat would make it live an hour it does not have. Our
    clock agrees with the issuer's: each token lives what its exp leaves, whether the same
    token comes again or another cached one of another age."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    now = sim.tokens.epoch_now()
    older = jwt_with({"iat": now - 3500, "exp": now + 100})
    younger = jwt_with({"iat": now - 1000, "exp": now + 2600})
    sim.faults.script(
        "POST",
        TOKEN,
        [Status(200, body=json.dumps({"access_token": t})) for t in (older, older, younger)],
    )
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        lives = []
        for _ in range(3):
            if auth.token is not None:
                assert auth.token.refresh_at is not None
                await clock.sleep(auth.token.refresh_at - clock.now())
            await auth.credentials("GET", ANY_URL)
            await _early_fetch_done(auth)
            token = auth.token
            assert token is not None
            assert token.expires_at is not None
            lives.append(token.expires_at - clock.now())
        # At 0, 50 (half of the 100 s left: the margin is longer) and 75 s.
        assert lives == pytest.approx([100, 50, 2600 - 75])
        assert sim.count("POST", TOKEN) == 3
    assert _skew_reports([], caplog) == ([], [])


# -- an issuer whose iat is broken or hostile -------------------------------------------------

#: The epoch of the scripted issuer's clock at engine time 0; ours and the resource server's are
#: in step with it, so a token really expires at its ``exp`` by our wall clock.
_ISSUER_EPOCH = 1_750_000_000.0


class _ScriptedIssuer(TokenProvider):
    """A token provider whose token service answers the ``n``-th request (from 1) with a JWT
    carrying ``claims(n, wall)``, ``wall`` being the epoch seconds now."""

    _kind = "scripted"

    def __init__(self, clock: VirtualClock, claims: Callable[[int, float], dict[str, int]]) -> None:
        super().__init__(wall_clock=lambda: _ISSUER_EPOCH + clock.now())
        self._clock = clock
        self._claims = claims
        self.requests = 0

    async def _request_token(
        self, http: ProviderHttp, retry: RetryPolicy, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        self.requests += 1
        claims = self._claims(self.requests, _ISSUER_EPOCH + self._clock.now())
        body = json.dumps({"access_token": jwt_with(claims)}).encode()
        return ProviderResponse(200, body), "access_token"


async def _sent_expired(
    auth: _ScriptedIssuer,
    clock: VirtualClock,
    secret_values: set[str],
    *,
    hours: float,
    every: float = 2.0,
) -> int:
    """Ask ``auth`` for credentials every ``every`` s for ``hours``; how many calls would have
    carried a token already past its ``exp`` (the resource server's clock is ours)."""
    expired = 0
    async with Engine(StaticDomains({"svc": "127.0.0.1:9"}), scheme="http", clock=clock, auth=auth):
        for _ in range(int(hours * 3600 / every)):
            creds = await auth.credentials("GET", ANY_URL)
            assert creds.bearer is not None
            value = creds.bearer.reveal()
            secret_values.add(value)
            exp, _ = jwt_times(value)
            assert exp is not None
            if _ISSUER_EPOCH + clock.now() >= exp:
                expired += 1
            await clock.sleep(every)
    return expired


async def test_an_iat_on_another_epoch_is_ignored_and_tokens_are_replaced_before_their_exp(
    clock: VirtualClock, secret_values: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An issuer dating iat in seconds since 2001 (NSDate's epoch), exp right: its tokens tell
    a skew of 31 years, beyond belief. Each tells it, so two used to confirm it, and an hour-long
    token was believed to live 31 years: never replaced, sent expired for hours. The iat is
    ignored (said once, as a WARNING, without the token): a token an hour, none sent expired."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    auth = _ScriptedIssuer(
        clock, lambda n, wall: {"iat": int(wall) - 978_307_200, "exp": int(wall) + 3600}
    )
    assert await _sent_expired(auth, clock, secret_values, hours=3) == 0
    assert auth.fetches <= 4  # at 0, about 3540, 7080 and 10620 s
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "clock_skew"]
    assert record.levelno == logging.WARNING
    assert "iat ignored" in record.getMessage()


@pytest.mark.parametrize("issued_for", [0, 1])
async def test_an_iat_at_or_a_second_before_exp_is_not_taken_for_a_clock_behind(
    clock: VirtualClock, secret_values: set[str], issued_for: int
) -> None:
    """A broken issuer stamping iat at exp (or a second before), clocks in step: each token
    seemed issued an hour in our clock's future, proving it an hour behind, and so to live
    nothing: fetched anew every 5 s (720 an hour), or every half second (one per call). A token
    issued for under 2 s tells nothing of the issuer's clock: it lives its hour."""
    auth = _ScriptedIssuer(
        clock,
        lambda n, wall: {"iat": int(wall) + 3600 - issued_for, "exp": int(wall) + 3600},
    )
    assert await _sent_expired(auth, clock, secret_values, hours=2, every=1) == 0
    assert auth.fetches <= 3  # at 0, about 3540 and 7080 s


@pytest.mark.parametrize(
    ("ahead", "replica_tokens"),
    [(86_400, 1), (7200, 1), (7200, 2)],
    ids=["a-day-ahead", "2h-ahead", "2h-ahead-twice"],
)
async def test_a_replica_ahead_then_an_issuer_caching_tokens_never_pins_a_fetch_loop(
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    ahead: int,
    replica_tokens: int,
) -> None:
    """The first token (or two) comes from a replica whose clock is ahead, its iat in our
    clock's future; then the token service hands out a cached token until it is a minute from
    its exp. The replica's token told our clock behind at once, so every cached token seemed
    dead on arrival, and was fetched anew every 5 s, indefinitely. The first cached token, dead
    by that skew and alive by our clock, disproves it: the skew is dropped (INFO), and a few
    fetches in 3 h, none sent expired."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    cached: dict[str, int] = {}

    def claims(n: int, wall: float) -> dict[str, int]:
        if n <= replica_tokens:
            return {"iat": int(wall) + ahead, "exp": int(wall) + ahead + 3600}
        if not cached or cached["exp"] - wall < 60:
            cached.update(iat=int(wall), exp=int(wall) + 3600)
        return dict(cached)

    auth = _ScriptedIssuer(clock, claims)
    assert await _sent_expired(auth, clock, secret_values, hours=3) == 0
    assert auth.fetches <= 8
    told, dropped = [r for r in caplog.records if getattr(r, "event", None) == "clock_skew"]
    assert told.levelno == logging.WARNING
    assert told.details["our_clock"] == "behind"  # type: ignore[attr-defined]
    assert dropped.levelno == logging.INFO
    assert dropped.details["skew"] == 0  # type: ignore[attr-defined]
    assert "skew dropped" in dropped.getMessage()


# -- a token request in flight when the engine closes -----------------------------------------


@pytest.mark.parametrize("recover", [False, True], ids=["fail-fast", "recover"])
async def test_a_call_waiting_for_a_token_when_the_engine_closes_gets_engine_closed(
    serve: ServerFactory, clock: VirtualClock, recover: bool
) -> None:
    """Closing cancels the shared token request; the call waiting for it was not cancelled
    and must end typed, as any call in progress at close does, never with CancelledError."""
    host, arrived, never = await serve_hanging(
        serve, "/sentinel/api/account/{account}/app/token", "POST"
    )
    domains = StaticDomains({"sentinel": host, "svc": host})
    auth = SentinelClientCredentials(ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains)
    engine = Engine(domains, auth=auth, scheme="http", clock=clock)
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x", recover=recover))
    await arrived.wait()
    await engine.close()
    never.set()
    with pytest.raises(EngineClosed, match=r"sentinel\[\d+\]: the token request in progress"):
        await call
    assert not call.cancelled()
