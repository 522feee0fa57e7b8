"""OAuth2 client credentials (Sentinel) and the consumer JWT (idp) against the simulator:
fetched once, reused, fetched anew before the JWT's ``exp`` with a margin, single flight."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import pytest
from yarl import URL

from le_transport import Engine
from le_transport.chaos import Hang, Status
from le_transport.errors import EngineClosed, LoginRejected, RetriesExhausted
from le_transport.events import StateEvent
from le_transport.providers import (
    ConsumerJwt,
    CsdsDomains,
    SentinelClientCredentials,
    StaticDomains,
    jwt_expiry,
)
from le_transport.providers._token import MIN_TOKEN_LIFE, Token
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
    retry middleware's give-up line is a WARNING (saying what Sentinel answered), followed by
    the provider's own refresh_failed. Once the token has expired, the fetch's failure is the
    call's again, and an ERROR."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        assert token.expires_at is not None
        sim.faults.script("POST", TOKEN, [503] * 10)
        caplog.clear()
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING,
            logging.WARNING,
        ]
        gave_up, kept = (r for r in caplog.records if r.levelno >= logging.WARNING)
        assert gave_up.name == "le_transport.retry"
        assert gave_up.status == 503  # type: ignore[attr-defined]
        assert gave_up.service == "sentinel"  # type: ignore[attr-defined]
        assert gave_up.attempt == 1  # type: ignore[attr-defined]
        assert "last outcome 503; its caller handles the failure" in gave_up.getMessage()
        assert kept.name == "le_transport.auth"
        assert kept.event == "refresh_failed"  # type: ignore[attr-defined]
        # The token expires and the outage goes on: the call fails, and that is an ERROR.
        await clock.sleep(token.expires_at - clock.now())
        caplog.clear()
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert error.name == "le_transport.retry"
        assert error.attempt == 4  # type: ignore[attr-defined]
        assert "handles" not in error.getMessage()


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
    assert sim.count("POST", SIGNUP) == 2
    [gave_up] = [r for r in caplog.records if r.name == "le_transport.retry"]
    assert gave_up.levelno == logging.WARNING
    assert "its caller handles the failure" in gave_up.getMessage()
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
        assert sim.count("POST", TOKEN) == 2
        assert (await engine.login()).generation == token.generation
        # Not asked again on every call: after the schedule's pauses, 5, 10, 15 s.
        for pause, asked in ((4.9, 2), (0.1, 3), (10, 4), (15, 5)):
            await clock.sleep(pause)
            resp = await engine.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
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


async def test_an_early_fetch_refused_with_a_4xx_fails_the_call_at_once(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [401])
        started = clock.now()
        with pytest.raises(LoginRejected, match="refused with 401"):
            await engine.request("GET", "accountConfigReadOnly", USERS)
        assert clock.now() == started
        assert sim.count("POST", TOKEN) == 2


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
    """A call starts the early fetch 2 s before the token expires; Sentinel holds it 3 s and
    drops the connection, then answers ``then``. Halfway, with the token expired, ``late_callers``
    calls arrive and join the fetch in flight. Returns every call (the early one first), and
    when the early fetch failed."""
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
        assert all(isinstance(r, RetriesExhausted) for r in results), results
        # The whole schedule's four attempts, not the early fetch's one.
        assert {len(r.attempts) for r in results if isinstance(r, RetriesExhausted)} == {4}
        assert clock.now() == pytest.approx(failed_at + 30)
        assert sim.count("POST", TOKEN) == 1 + 1 + 4
        learn_session_secrets(auth, secret_values)
    assert [e.name for e in events] == ["logged_in", "login_failed"]


async def test_a_cancelled_caller_does_not_stop_the_whole_schedule_fetch_the_others_share(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        calls, _ = await _expired_during_the_early_fetch(
            engine, auth, sim, clock, secret_values, then=[503, 503], late_callers=3
        )
        await clock.sleep(1 + 2.5)  # the early fetch failed; the whole schedule's first pause
        assert not any(call.done() for call in calls)
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
        assert all(isinstance(r, EngineClosed) for r in results), results
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
