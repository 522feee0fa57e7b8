"""No credential of any login method reaches a log record, an exception's text or a repr, on
the happy path or on any failure path (rejected login, 401 replay, refresh fallback, recovery)."""

from __future__ import annotations

import logging

import pytest

from le_transport import BackoffPolicy
from le_transport.errors import TransportError
from le_transport.providers import (
    AppLogin,
    AuthProvider,
    ClientCredentialsLogin,
    ConsumerJwt,
    OAuth1Auth,
    SentinelClientCredentials,
    StaticDomains,
    UserLogin,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    CLIENT_SECRET,
    PASSWORD,
    exception_messages,
    find_secrets,
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
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
TOKEN = f"/sentinel/api/account/{ACCOUNT}/app/token"


async def test_no_log_exception_or_repr_shows_a_credential_across_every_login_path(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    secret_values: set[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[BaseException] = []
    shown: list[str] = []
    domains = csds_for(sim)
    providers: list[AuthProvider] = [
        UserLogin(ACCOUNT, USER, PASSWORD, domains=domains),
        AppLogin(ACCOUNT, USER, APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET,
                 domains=domains),
        ClientCredentialsLogin(ACCOUNT, USER, CLIENT_ID, CLIENT_SECRET, domains=domains),
        SentinelClientCredentials(ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains),
        ConsumerJwt(ACCOUNT, domains=domains, auth_code=PASSWORD),
        OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET),
    ]  # fmt: skip
    for auth in providers:
        engine_domains = StaticDomains(sim.domains) if isinstance(auth, OAuth1Auth) else domains
        engine = sim_engine(
            sim,
            clock,
            domains=engine_domains,
            auth=auth,
            recovery=BackoffPolicy.relogin(max_attempts=1),
        )
        async with engine:
            try:
                await engine.request("GET", "accountConfigReadOnly", USERS)
                learn_session_secrets(auth, secret_values)
                creds = await engine.login()
                learn_session_secrets(auth, secret_values)
                shown += [repr(creds), str(creds), repr(auth), repr(engine)]
                # The server forgets every token: a 401, a re-login, a replay.
                sim.tokens.revoke()
                await engine.request("GET", "accountConfigReadOnly", USERS)
                learn_session_secrets(auth, secret_values)
                # The keepalive's refresh fails with 401 and falls back to a login.
                sim.tokens.revoke()
                await clock.sleep(301)
                learn_session_secrets(auth, secret_values)
                # A login that outlives the schedule and the one recovery round allowed.
                sim.tokens.revoke()
                await auth.invalidate(await engine.login())
                sim.faults.script("POST", LOGIN, [503] * 8)
                sim.faults.script("POST", TOKEN, [503] * 8)
                await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
            except TransportError as exc:
                raised.append(exc)
            sim.faults.clear()
    # The failure paths did run: the four logins gave up recovering, the consumer JWT (which
    # the Users API does not accept) failed its replay.
    assert [type(e).__name__ for e in raised] == ["RecoveryFailed"] * 4 + ["AuthenticationError"]
    everything = [r.getMessage() for r in caplog.records]
    everything += [str(r.__dict__) for r in caplog.records]
    for error in raised:
        everything += exception_messages(error)
    everything += shown
    secrets = {s for s in secret_values if len(s) >= 8}
    leaks = {s[:6] for text in everything for s in find_secrets(text, secrets)}
    assert not leaks, f"credentials starting with {sorted(leaks)} were shown"


async def test_a_rejected_login_names_the_status_and_account_but_not_the_password(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = UserLogin(ACCOUNT, USER, PASSWORD + "x", domains=csds_for(sim))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(TransportError) as info:
            await engine.login()
    text = "\n".join(exception_messages(info.value))
    assert "401" in text
    assert ACCOUNT in text
    assert PASSWORD not in text
