"""The auth middleware against the simulator: credentials only to the host the domain provider
named, 401 → one re-authentication → one replay, a second 401 is an AuthenticationError, and no
other 4xx is ever replayed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from yarl import URL

from le_transport.chaos import Status
from le_transport.errors import AuthenticationError, ClientStatusError
from le_transport.middleware.auth import AuthMiddleware, same_host
from le_transport.middleware.retry import RetryMiddleware
from le_transport.providers import StaticBearer, StaticDomains, UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import BEARER, PASSWORD
from tests.test_providers import (
    ACCOUNT,
    USER,
    csds_for,
    learn_session_secrets,
    make_sim,
    sim,
    sim_engine,
)

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


def login_for(sim: Simulator) -> UserLogin:
    return UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)


async def test_a_401_invalidates_relogs_in_once_and_replays_the_request_once(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        assert first.bearer is not None
        sim.tokens.revoke(first.bearer.reveal())
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
        assert resp.status == 200
        assert (await engine.login()).generation == first.generation + 1
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("GET", USERS) == 2


async def test_a_hundred_concurrent_401s_cause_one_relogin(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.tokens.revoke()
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(100))
        )
        learn_session_secrets(auth, secret_values)
        assert {r.status for r in results} == {200}
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("GET", USERS) == 200


async def test_a_second_401_is_an_authentication_error_and_not_replayed_again(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", USERS, [401, 401])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="401 again after fresh credentials"):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("GET", USERS) == 2
    assert sim.count("POST", LOGIN) == 2
    assert clock.now() == 0


@pytest.mark.parametrize("status", [400, 403, 404, 409])
async def test_no_other_4xx_is_replayed(sim: Simulator, clock: VirtualClock, status: int) -> None:
    sim.faults.script("GET", USERS, [status])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert info.value.status == status
    assert sim.count("GET", USERS) == 1
    assert sim.count("POST", LOGIN) == 1


async def test_a_post_is_replayed_after_a_401_since_the_server_did_not_act_on_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    search = f"/interaction_history/api/account/{ACCOUNT}/interactions/search"
    sim.faults.script("POST", search, [401])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        found = await engine.request_json("POST", "engHistDomain", search, json={"q": 1})
    assert found["interactionHistoryRecords"] == []
    assert sim.count("POST", search) == 2


async def test_credentials_are_not_sent_to_another_host_after_a_redirect(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with make_sim(clock) as elsewhere:
        sim.faults.script(
            "GET",
            USERS,
            [Status(302, headers={"Location": f"{elsewhere.url}{USERS}"}, body="")],
        )
        async with sim_engine(
            sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(BEARER)
        ) as engine:
            with pytest.raises(ClientStatusError) as info:
                await engine.request("GET", "accountConfigReadOnly", USERS)
        # The other host refused the request for want of credentials: none were sent there.
        assert info.value.status == 401
        assert [r.path for r in elsewhere.requests] == [USERS]
        assert "Authorization" not in elsewhere.requests[0].headers
    assert sim.requests[0].headers.get("Authorization") == "***"


async def test_credentials_follow_a_redirect_that_stays_on_the_named_host(
    sim: Simulator, clock: VirtualClock
) -> None:
    moved = f"/api/account/{ACCOUNT}/configuration/le-users/users/1"
    sim.faults.script("GET", USERS, [Status(302, headers={"Location": moved}, body="")])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        user = await engine.request_json("GET", "accountConfigReadOnly", USERS)
    assert user["loginName"] == USER
    assert [r.headers.get("Authorization") for r in sim.requests if r.method == "GET"][-2:] == [
        "***",
        "***",
    ]


async def test_a_static_bearer_cannot_reauthenticate_so_a_401_fails_after_one_replay(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with sim_engine(
        sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(BEARER)
    ) as engine:
        with pytest.raises(AuthenticationError):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert sim.count("GET", USERS) == 2


async def test_on_a_foreign_session_credentials_go_only_to_allowed_hosts(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    domains = StaticDomains(sim.domains)
    bearer = StaticBearer(issued)
    allowed = AuthMiddleware(auth=bearer, domains=domains, allowed_hosts={sim.host})
    nowhere = AuthMiddleware(auth=bearer, domains=domains)
    connector = aiohttp.TCPConnector(force_close=True)
    retry = RetryMiddleware(clock=clock)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{sim.url}{USERS}", middlewares=(allowed, retry)) as resp:
            assert resp.status == 200
        with pytest.raises(ClientStatusError):
            await session.get(f"{sim.url}{USERS}", middlewares=(nowhere, retry))
    assert [r.headers.get("Authorization") for r in sim.requests] == ["***", None]


async def test_credentials_never_travel_over_a_scheme_other_than_the_engines(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """An https engine redirected down to http on the right host sends no credentials."""
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    https_only = AuthMiddleware(
        auth=StaticBearer(issued),
        domains=StaticDomains(sim.domains),
        allowed_hosts={sim.host},
        scheme="https",
    )
    retry = RetryMiddleware(clock=clock)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        with pytest.raises(ClientStatusError):
            await session.get(f"{sim.url}{USERS}", middlewares=(https_only, retry))
    assert [r.headers.get("Authorization") for r in sim.requests] == [None]


@pytest.mark.parametrize(
    ("host", "url", "same"),
    [
        ("va.example.net", "https://va.example.net/x", True),
        ("va.example.net", "https://VA.example.net:443/x", True),
        ("va.example.net", "https://va.example.net:8443/x", False),
        ("va.example.net:8443", "https://va.example.net:8443/x", True),
        ("va.example.net", "http://va.example.net:443/x", False),
        ("va.example.net", "https://va.example.net.evil.example/x", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8081/x", False),
    ],
)
def test_same_host_compares_name_and_effective_port(host: str, url: str, same: bool) -> None:
    """A bare host means the scheme's default port; names compare case-insensitively."""
    assert same_host(host, URL(url)) is same
