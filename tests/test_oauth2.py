"""OAuth2 client credentials (Sentinel) and the consumer JWT (idp) against the simulator:
fetched once, reused, fetched anew before the JWT's ``exp`` with a margin, single flight."""

from __future__ import annotations

import asyncio
import json

import pytest
from yarl import URL

from le_transport.chaos import Status
from le_transport.errors import LoginRejected
from le_transport.events import StateEvent
from le_transport.providers import ConsumerJwt, CsdsDomains, SentinelClientCredentials, jwt_expiry
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Simulator
from tests.known_secrets import CLIENT_SECRET
from tests.test_providers import (
    ACCOUNT,
    CLIENT_ID,
    csds_for,
    jwt_with,
    learn_session_secrets,
    sim,
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
