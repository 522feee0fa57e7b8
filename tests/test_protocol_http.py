"""Protocol compliance of the HTTP keepalives and the credentials they take, against the real
simulator on loopback, on a VirtualClock (protocol.md, "Chat Agent API and Server Chat API").

- The Chat Agent API's keepalive is the Login Service refresh: ``engine.keepalive(
  CHAT_AGENT_API_REFRESH, ...)`` used to POST ``/refresh`` as a plain request (no ``Session_id``
  cookie, no ``csrf``), answered 401 every 5 min, and each 401 cost a login.
- The Server Chat API's chat info takes ``Authorization: LivePerson appKey=<key>``, which no
  provider wrote (:class:`AppKeyAuth` now does); the simulator accepted a bearer there.
- The simulator's ``agentSession`` takes a Login Service bearer only, and its consumer socket's
  ``Authorization: jwt`` header a consumer JWT only (as ``InitConnection`` does).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from le_transport import AppKeyAuth, Engine, StaticBearer, StaticDomains, UserLogin
from le_transport._redact import Secret
from le_transport.errors import AuthenticationError, ConfigurationError, InvalidRequest
from le_transport.policies import CHAT_AGENT_API_REFRESH, SERVER_CHAT_API_CHAT_INFO, Keepalive
from le_transport.providers import OAuth1Signer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_APP_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)

REFRESH = "*/refresh"
CHAT_INFO = "*/chat/*/info"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: the leak check runs before fixtures are torn down, and a pooled
    # connection keeps a server-side handler task alive.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def _user_login(sim: Simulator, *, keepalive: bool) -> tuple[StaticDomains, UserLogin]:
    domains = StaticDomains(sim.domains)
    auth = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=keepalive
    )
    return domains, auth


def _app_key_engine(sim: Simulator, clock: VirtualClock, key: str | Secret) -> Engine:
    return Engine(
        StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, key),
    )


# -- 1. engine.keepalive(CHAT_AGENT_API_REFRESH): the provider's real refresh -----------------


@pytest.mark.parametrize(
    "policy", [CHAT_AGENT_API_REFRESH, CHAT_AGENT_API_REFRESH.scaled(0.5)], ids=["5min", "scaled"]
)
async def test_the_refresh_keepalive_refreshes_the_session_and_never_logs_in_again(
    sim: Simulator, clock: VirtualClock, policy: Keepalive
) -> None:
    assert policy.login_refresh
    domains, auth = _user_login(sim, keepalive=False)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        await engine.login()
        task = engine.keepalive(policy, "agentVep", fields={"account": sim.account.id})
        interval = policy.interval
        await clock.sleep(3 * interval + 1)
        assert task.runs == 3
        assert task.failures == 0
        await task.close()
    # Three refreshes the Login Service accepted (cookie and csrf), one login, no 401.
    assert sim.tokens.refreshes == 3
    assert auth.refreshes == 3
    assert auth.logins == 1
    assert sim.count("POST", "*/login") == 1
    refreshes = [r for r in sim.requests if r.path.endswith("/refresh")]
    assert [r.at for r in refreshes] == pytest.approx([interval * n for n in (1, 2, 3)])
    assert all(r.query.get("v") == "1.3" for r in refreshes)
    assert all(r.fault is None for r in refreshes)


async def test_the_refresh_keepalive_without_a_session_neither_refreshes_nor_logs_in(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains, auth = _user_login(sim, keepalive=False)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        await clock.sleep(301)
        assert (task.runs, task.failures) == (1, 0)
    assert sim.count(None, REFRESH) == 0
    assert auth.logins == 0


async def test_the_refresh_keepalive_beside_the_providers_own_is_refused(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The provider refreshes itself by default: a second schedule would refresh twice."""
    domains, auth = _user_login(sim, keepalive=True)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ConfigurationError, match=r"keepalive=True.*keepalive=False"):
            engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep", fields={"account": "x"})
    assert sim.count(None, REFRESH) == 0


@pytest.mark.parametrize("kind", ["none", "static", "app_key"])
async def test_the_refresh_keepalive_without_a_login_service_provider_is_refused(
    sim: Simulator, clock: VirtualClock, kind: str
) -> None:
    auth = {
        "none": None,
        "static": StaticBearer("a-token-of-mine"),
        "app_key": AppKeyAuth(sim.account.id, DEFAULT_APP_KEY.key),
    }[kind]
    async with Engine(sim.domains, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ConfigurationError, match="Session_id cookie and csrf"):
            engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep", fields={"account": sim.account.id})
        await clock.sleep(301)
    assert sim.count(None, REFRESH) == 0


async def test_the_refresh_keepalive_refuses_what_the_providers_refresh_cannot_honour(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains, auth = _user_login(sim, keepalive=False)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ConfigurationError, match="another account"):
            engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep", fields={"account": "999"})
        with pytest.raises(ConfigurationError, match="own Login Service"):
            engine.keepalive(CHAT_AGENT_API_REFRESH, "facadeMsg")
        with pytest.raises(ConfigurationError, match="leave headers out"):
            engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep", headers={"X-Trace": "1"})


def test_only_the_login_services_refresh_is_a_login_refresh() -> None:
    assert CHAT_AGENT_API_REFRESH.with_action("keepalive").login_refresh
    assert not SERVER_CHAT_API_CHAT_INFO.login_refresh


# -- 2. AppKeyAuth and the Server Chat API's chat info -----------------------------------------


async def test_the_chat_info_keepalive_runs_every_30_s_with_the_app_key(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with _app_key_engine(sim, clock, DEFAULT_APP_KEY.key) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "chat-1"},
        )
        await clock.sleep(95)
        assert (task.runs, task.failures) == (3, 0)
    infos = [r for r in sim.requests if r.path.endswith("/chat/chat-1/info")]
    assert [r.at for r in infos] == pytest.approx([30.0, 60.0, 90.0])
    assert all(dict(r.query) == {"v": "1", "NC": "true"} for r in infos)
    # No login of any kind.
    assert sim.tokens.logins == 0


async def test_app_key_auth_writes_the_liveperson_app_key_header() -> None:
    auth = AppKeyAuth("123", Secret("k-1"))
    creds = await auth.credentials("GET", URL("https://h/api/account/123/chat/c/info"))
    assert creds.headers == {"Authorization": "LivePerson appKey=k-1"}
    assert creds.bearer is None
    auth.update("k-2")
    again = await auth.credentials("GET", URL("https://h/x"))
    assert again.headers["Authorization"] == "LivePerson appKey=k-2"
    assert again.generation == creds.generation + 1
    await auth.invalidate(again)
    assert (await auth.credentials("GET", URL("https://h/x"))).headers == again.headers
    await auth.close()
    assert auth.credential_headers == frozenset({"authorization"})


def test_the_app_key_is_never_shown() -> None:
    key = "my-app-key-4711"
    auth = AppKeyAuth("123", key)
    assert key not in repr(auth)
    assert key not in str(auth)
    assert "123" in repr(auth)
    for bad in (f"{key}\n", f"LivePerson appKey={key}", f"appKey={key}", f" {key}"):
        with pytest.raises(ConfigurationError) as refused:
            AppKeyAuth("123", bad)
        assert key not in str(refused.value)
    with pytest.raises(ConfigurationError, match="pass the key alone"):
        AppKeyAuth("123", f"LivePerson appKey={key}")
    for wrong in ("", None, b"k", 5):
        with pytest.raises(ConfigurationError):
            AppKeyAuth("123", wrong)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        AppKeyAuth("../x", key)
    with pytest.raises(ConfigurationError):
        auth.update("has space")
    assert auth.account == "123"


async def test_a_refused_app_key_is_an_authentication_error_after_one_replay(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, secret_values: set[str]
) -> None:
    """No login can cure it: the replay sends the same key, the second 401 ends the call."""
    secret_values.add("not-the-apps-key")  # the leak check fails the test if a log shows it
    caplog.set_level(logging.DEBUG)
    async with _app_key_engine(sim, clock, "not-the-apps-key") as engine:
        with pytest.raises(AuthenticationError):
            await engine.request("GET", "agentVep", f"/api/account/{sim.account.id}/chat/c1/info")
    assert sim.count("GET", CHAT_INFO) == 2
    assert sim.tokens.logins == 0


async def test_an_app_key_engine_refuses_an_authorization_header_of_the_callers(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with _app_key_engine(sim, clock, DEFAULT_APP_KEY.key) as engine:
        with pytest.raises(InvalidRequest):
            engine.keepalive(
                SERVER_CHAT_API_CHAT_INFO,
                "agentVep",
                fields={"account": sim.account.id, "chat_id": "c"},
                headers={"Authorization": "LivePerson appKey=other"},
            )


async def test_the_chat_info_keepalive_on_a_login_engine_is_refused_by_the_simulator(
    sim: Simulator, clock: VirtualClock
) -> None:
    """What the README used to show: a bearer on chat info. LiveEngage wants the app key."""
    domains, auth = _user_login(sim, keepalive=False)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(AuthenticationError):
            await engine.request("GET", "agentVep", f"/api/account/{sim.account.id}/chat/c1/info")


# -- 3. The simulator's routes take the credentials protocol.md names, and no other ----------


async def _bearer(http: aiohttp.ClientSession, sim: Simulator) -> str:
    async with http.post(
        f"{sim.url}/api/account/{sim.account.id}/login",
        params={"v": "1.3"},
        json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["bearer"])


async def _sentinel_jwt(http: aiohttp.ClientSession, sim: Simulator) -> str:
    async with http.post(
        f"{sim.url}/sentinel/api/account/{sim.account.id}/app/token",
        params={"v": "1.0"},
        data={
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "grant_type": "client_credentials",
        },
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


async def _consumer_jwt(http: aiohttp.ClientSession, sim: Simulator) -> str:
    async with http.post(f"{sim.url}/api/account/{sim.account.id}/signup") as resp:
        assert resp.status == 200
        return str((await resp.json())["jwt"])


async def _headers(
    http: aiohttp.ClientSession, sim: Simulator, method: str, url: URL
) -> dict[str, dict[str, str]]:
    signer = OAuth1Signer(
        DEFAULT_APP_KEY.key,
        DEFAULT_APP_KEY.secret,
        DEFAULT_APP_KEY.access_token,
        DEFAULT_APP_KEY.access_token_secret,
    )
    return {
        "login bearer": {"Authorization": f"Bearer {await _bearer(http, sim)}"},
        "sentinel jwt": {"Authorization": f"Bearer {await _sentinel_jwt(http, sim)}"},
        "oauth1": {"Authorization": signer.header(method, url)},
        "app key": {"Authorization": f"LivePerson appKey={DEFAULT_APP_KEY.key}"},
        "unknown app key": {"Authorization": "LivePerson appKey=sim-app-key-unknown"},
        "empty app key": {"Authorization": "LivePerson appKey="},
        "none": {},
    }


async def test_chat_info_takes_only_the_accounts_app_key(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{sim.url}/api/account/{sim.account.id}/chat/c1/info").with_query(v="1", NC="true")
    statuses = {}
    for name, headers in (await _headers(http, sim, "GET", url)).items():
        async with http.get(url, headers=headers) as resp:
            statuses[name] = resp.status
    assert statuses == {
        "login bearer": 401,
        "sentinel jwt": 401,
        "oauth1": 401,
        "app key": 200,
        "unknown app key": 401,
        "empty app key": 401,
        "none": 401,
    }


async def test_agent_session_takes_only_a_login_service_bearer(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{sim.url}/api/account/{sim.account.id}/agentSession").with_query(v="1", NC="true")
    statuses = {}
    for name, headers in (await _headers(http, sim, "POST", url)).items():
        async with http.post(url, json={"loginData": ""}, headers=headers) as resp:
            statuses[name] = resp.status
    assert statuses == {
        "login bearer": 201,
        "sentinel jwt": 401,
        "oauth1": 401,
        "app key": 401,
        "unknown app key": 401,
        "empty app key": 401,
        "none": 401,
    }


async def test_the_consumer_sockets_header_takes_a_consumer_jwt_only(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """As InitConnection does: a Sentinel (app) token in ``Authorization: jwt`` is refused."""
    url = f"ws://{sim.domains['asyncMessagingEnt']}/ws_api/account/{sim.account.id}/messaging/consumer"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(
            url,
            params={"v": "3"},
            headers={"Authorization": f"jwt {await _sentinel_jwt(http, sim)}"},
        )
    assert refused.value.status == 401
    ws = await http.ws_connect(
        url, params={"v": "3"}, headers={"Authorization": f"jwt {await _consumer_jwt(http, sim)}"}
    )
    try:
        await ws.send_str(json.dumps({"kind": "req", "id": "1", "type": "GetClock", "body": {}}))
        answer = json.loads((await ws.receive()).data)
        assert answer["code"] == 200
    finally:
        await ws.close()


async def test_the_chat_info_keepalive_is_refused_on_a_login_service_engine(
    clock: VirtualClock,
) -> None:
    """On a UserLogin engine it sent the Login Service bearer, answered 401 at every run (the
    chat info wants an app key), and each 401 made the auth middleware log in again: a login
    every 30 s."""
    from le_transport import ConfigurationError, Engine, UserLogin
    from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
    from le_transport.providers import StaticDomains

    domains = StaticDomains({"agentVep": "127.0.0.1:9"})
    auth = UserLogin("123", "bot", "pw-123456", domains=domains, keepalive=False)
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ConfigurationError, match="AppKeyAuth"):
            engine.keepalive(
                SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": "123", "chat_id": "c1"}
            )
