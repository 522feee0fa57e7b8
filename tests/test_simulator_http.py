"""The simulator's HTTP side: Domain API, Login, tokens, OAuth 1.0, REST, scripted faults."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.chaos import (
    EmptyResponse,
    FaultRule,
    Hang,
    MalformedBody,
    Match,
    Quota,
    Reset,
    Schedule,
    SlowBody,
    Status,
    TruncatedBody,
)
from le_transport.clock import timeout_after
from le_transport.errors import (
    AttemptTimeout,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    RetriesExhausted,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
    SimulatorConfig,
    oauth1,
)

ACC = DEFAULT_ACCOUNT
USERS = f"/api/account/{ACC}/configuration/le-users/users"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: the leak check runs before fixtures are torn down, and a pooled
    # connection keeps a server-side handler task alive.
    # unsafe=True: aiohttp's default cookie jar ignores cookies from IP addresses such as
    # 127.0.0.1, and the Login Service's refresh needs the Session_id cookie.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as session:
        yield session


async def _login(http: aiohttp.ClientSession, sim: Simulator) -> dict[str, object]:
    async with http.post(
        f"{sim.url}/api/account/{ACC}/login",
        params={"v": "1.3"},
        json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert isinstance(body, dict)
        return body


async def test_domain_api_points_every_service_at_the_address_the_client_used(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for prefix in ("/api", "/csdr"):
        async with http.get(
            f"{sim.url}{prefix}/account/{ACC}/service/baseURI.json", params={"version": "1.0"}
        ) as resp:
            body = await resp.json()
        services = {u["service"]: u["baseURI"] for u in body["baseURIs"]}
        assert services["agentVep"] == sim.host
        assert services["facadeMsg"] == sim.host
        assert all(u["account"] == ACC for u in body["baseURIs"])
    async with http.get(
        f"{sim.url}/api/account/{ACC}/service/idp/baseURI.json", params={"version": "1.0"}
    ) as resp:
        assert await resp.json() == {"service": "idp", "account": ACC, "baseURI": sim.host}


async def test_domain_api_hands_out_the_configured_public_address(clock: VirtualClock) -> None:
    config = SimulatorConfig(public_address="le.example.test:8443")
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.get(f"{sim.url}/api/account/{ACC}/service/baseURI.json") as resp,
    ):
        body = await resp.json()
    assert {u["baseURI"] for u in body["baseURIs"]} == {"le.example.test:8443"}


async def test_domain_api_answers_400_for_an_unknown_account(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sim.url}/api/account/999/service/baseURI.json") as resp:
        assert resp.status == 400


async def test_user_login_answers_bearer_csrf_wsuk_ttl_user_and_session_cookie(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    body = await _login(http, sim)
    for key in ("bearer", "csrf", "wsuk", "sessionTTl", "config", "csdsCollectionResponse"):
        assert key in body
    assert body["sessionTTl"] == str(8 * 3600 * 1000)
    assert isinstance(body["config"], dict)
    assert body["config"]["userId"]
    assert http.cookie_jar.filter_cookies(URL(sim.url))["Session_id"].value
    assert sim.tokens.logins == 1


async def test_login_with_a_wrong_password_is_401(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sim.url}/api/account/{ACC}/login",
        json={"username": DEFAULT_USER, "password": "wrong"},
    ) as resp:
        assert resp.status == 401


async def test_application_login_accepts_the_api_key_and_the_oauth2_client_form(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    k = DEFAULT_APP_KEY
    for body in (
        {
            "username": "bot",
            "appKey": k.key,
            "secret": k.secret,
            "accessToken": k.access_token,
            "accessTokenSecret": k.access_token_secret,
        },
        {
            "username": "bot",
            "appKey": DEFAULT_CLIENT_ID,
            "secret": DEFAULT_CLIENT_SECRET,
            "accessToken": "dummy",
            "accessTokenSecret": "dummy",
        },
    ):
        async with http.post(f"{sim.url}/api/account/{ACC}/login", json=body) as resp:
            assert resp.status == 200
            assert "bearer" in await resp.json()


async def test_refresh_with_cookie_and_csrf_extends_the_session_and_bad_csrf_is_401(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    body = await _login(http, sim)
    await clock.sleep(8 * 3600 - 10)
    async with http.post(
        f"{sim.url}/api/account/{ACC}/refresh", json={"csrf": body["csrf"]}
    ) as resp:
        assert resp.status == 200
    await clock.sleep(100)  # past the original TTL: the refresh extended it
    headers = {"Authorization": f"Bearer {body['bearer']}"}
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 200
    async with http.post(f"{sim.url}/api/account/{ACC}/refresh", json={"csrf": "nope"}) as resp:
        assert resp.status == 401
        err = await resp.json()
    assert err["error"]["internalCode"] == 10
    assert err["error"]["message"].startswith("CSRF token invalid!")


async def test_bearer_expires_after_the_session_ttl_and_logout_revokes_it(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    body = await _login(http, sim)
    headers = {"Authorization": f"Bearer {body['bearer']}"}
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 200
        users = await resp.json()
    assert users[0]["loginName"] == DEFAULT_USER
    await clock.sleep(8 * 3600)
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 401
    body = await _login(http, sim)
    async with http.post(f"{sim.url}/api/account/{ACC}/logout", json={"csrf": body["csrf"]}) as r:
        assert r.status == 200
    headers = {"Authorization": f"Bearer {body['bearer']}"}
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 401


async def test_rest_resources_refuse_a_missing_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for method, path in (
        ("GET", USERS),
        ("POST", f"/api/account/{ACC}/agentSession"),
        ("GET", f"/api/account/{ACC}/chat/abc/info"),
    ):
        async with http.request(method, f"{sim.url}{path}") as resp:
            assert resp.status == 401, path


async def test_agent_session_is_201_and_chat_info_accepts_the_app_key(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    body = await _login(http, sim)
    async with http.post(
        f"{sim.url}/api/account/{ACC}/agentSession",
        params={"v": "1", "NC": "true"},
        json={"loginData": ""},
        headers={"Authorization": f"Bearer {body['bearer']}"},
    ) as resp:
        assert resp.status == 201
    async with http.get(
        f"{sim.url}/api/account/{ACC}/chat/abc/info",
        headers={"Authorization": f"LivePerson appKey={DEFAULT_APP_KEY.key}"},
    ) as resp:
        assert (await resp.json())["info"]["chatId"] == "abc"


async def test_sentinel_issues_a_jwt_with_exp_that_the_users_api_accepts(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    form = {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "grant_type": "client_credentials",
    }
    async with http.post(f"{sim.url}/sentinel/api/account/{ACC}/app/token", data=form) as resp:
        token = await resp.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600

    payload = token["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 3600
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 200
    await clock.sleep(3600)
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 401
    async with http.post(
        f"{sim.url}/sentinel/api/account/{ACC}/app/token", data={**form, "client_secret": "x"}
    ) as resp:
        assert resp.status == 401


async def test_idp_signup_and_authenticate_answer_a_jwt(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sim.url}/api/account/{ACC}/signup") as resp:
        assert (await resp.json())["jwt"].count(".") == 2
    async with http.post(
        f"{sim.url}/api/account/{ACC}/authenticate", json={"authCode": "code-1"}
    ) as resp:
        assert "jwt" in await resp.json()
    async with http.post(f"{sim.url}/api/account/{ACC}/authenticate", json={}) as resp:
        assert resp.status == 401


# -- OAuth 1.0 ------------------------------------------------------------------------------


def test_oauth1_signature_matches_the_rfc_5849_example() -> None:
    """RFC 5849 §1.2: the photos example, signed with HMAC-SHA1."""
    params = {
        "oauth_consumer_key": "dpf43f3p2l4k3l03",
        "oauth_token": "nnch734d00sl2jdk",
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "1191242096",
        "oauth_nonce": "kllo9940pd9333jh",
        "oauth_version": "1.0",
    }
    base = oauth1.signature_base_string(
        "GET",
        URL("http://photos.example.net/photos"),
        [*params.items(), ("file", "vacation.jpg"), ("size", "original")],
    )
    assert base == (
        "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26"
        "oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3Dkllo9940pd9333jh%26"
        "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1191242096%26"
        "oauth_token%3Dnnch734d00sl2jdk%26oauth_version%3D1.0%26size%3Doriginal"
    )
    assert oauth1.sign(base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00") == (
        "tR3+Ty81lMeYAr/Fid0kMTYa/WM="
    )


def _oauth_header(
    method: str, url: URL, nonce: str, *, tamper: bool = False, timestamp: str = "1700000000"
) -> str:
    k = DEFAULT_APP_KEY
    params = {
        "oauth_consumer_key": k.key,
        "oauth_token": k.access_token,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": timestamp,
        "oauth_nonce": nonce,
        "oauth_version": "1.0",
    }
    base = oauth1.signature_base_string(
        method, url.with_query(None), [*params.items(), *url.query.items()]
    )
    signature = oauth1.sign(base, k.secret, k.access_token_secret)
    if tamper:
        signature = ("B" if signature[0] == "A" else "A") + signature[1:]
    params["oauth_signature"] = signature
    return "OAuth " + ", ".join(f'{k}="{oauth1.percent_encode(v)}"' for k, v in params.items())


async def test_oauth1_signed_request_is_verified_and_a_bad_or_replayed_one_is_401(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{sim.url}{USERS}").with_query({"v": "4.0", "select": "id,loginName"})
    good = _oauth_header("GET", url, "nonce-1")
    async with http.get(url, headers={"Authorization": good}) as resp:
        assert resp.status == 200
    async with http.get(url, headers={"Authorization": good}) as resp:
        assert resp.status == 401  # replayed nonce
    bad = _oauth_header("GET", url, "nonce-2", tamper=True)
    async with http.get(url, headers={"Authorization": bad}) as resp:
        assert resp.status == 401
    other = _oauth_header("GET", url.with_query({"v": "5.0"}), "nonce-3")
    async with http.get(url, headers={"Authorization": other}) as resp:
        assert resp.status == 401  # signed for another query


# -- scripted faults ------------------------------------------------------------------------


async def test_scripted_503_503_200_is_retried_after_5_then_10_seconds(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", "*/le-users/users", [503, 503, 200])
    sim.tokens.login(ACC, DEFAULT_USER, 3600, "user")
    bearer = next(iter(sim.tokens.sessions))
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        users = await engine.request_json(
            "GET",
            "accountConfigReadOnly",
            USERS,
            headers={"Authorization": f"Bearer {bearer}"},
            expect=list,
        )
    assert users
    assert sim.count("GET", "*/users") == 3
    assert [r.fault for r in sim.requests] == ["status", "status", None]
    assert [r.at for r in sim.requests] == [0.0, 5.0, 15.0]
    assert all(r.headers.get("Authorization") == "***" for r in sim.requests)


async def test_a_404_from_the_simulator_is_not_retried(sim: Simulator, clock: VirtualClock) -> None:
    sim.faults.add(FaultRule("nf", Status(404), match=Match("GET", "*/users/*")))
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS + "/1")
    assert info.value.status == 404
    assert sim.count("GET") == 1


async def test_retry_after_from_a_scripted_429_lengthens_the_pause(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule(
            "rl",
            Status(429, retry_after=12),
            match=Match("GET", "*/users"),
            schedule=Schedule(fail_next=1),
        )
    )
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert info.value.status == 401  # no token: the point is the pause before it
    assert [r.at for r in sim.requests] == [0.0, 12.0]


@pytest.mark.parametrize(
    "fault", [Reset(), EmptyResponse(), TruncatedBody(keep_bytes=5)], ids=lambda f: f.kind
)
async def test_connection_faults_are_seen_as_connection_failures_and_retried(
    sim: Simulator, clock: VirtualClock, fault: Reset | EmptyResponse | TruncatedBody
) -> None:
    sim.faults.add(FaultRule("f", fault, match=Match("GET", "*/users")))
    policy = RetryPolicy(pauses=(1.0, 2.0))
    async with Engine(sim.domains, scheme="http", clock=clock, retry=policy) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert isinstance(info.value.last, ConnectionFailed)
    assert len(info.value.attempts) == 3
    assert sim.count("GET", "*/users") == 3


async def test_a_hang_is_cut_by_the_attempt_timeout_on_the_clock(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(FaultRule("h", Hang(), match=Match("GET", "*/users")))
    policy = RetryPolicy(pauses=(), attempt_timeout=30)
    async with Engine(sim.domains, scheme="http", clock=clock, retry=policy) as engine:
        with pytest.raises((AttemptTimeout, RetriesExhausted)):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert clock.now() == pytest.approx(30.0)


async def test_malformed_json_is_served_with_a_json_content_type(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.add(FaultRule("m", MalformedBody(), match=Match("GET", "*/baseURI.json")))
    async with http.get(f"{sim.url}/api/account/{ACC}/service/baseURI.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        with pytest.raises(json.JSONDecodeError):
            await resp.json()


async def test_login_429_and_451_are_scriptable(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.script("POST", "*/login", [429, 451])
    statuses = []
    for _ in range(3):
        async with http.post(
            f"{sim.url}/api/account/{ACC}/login",
            json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
        ) as resp:
            statuses.append(resp.status)
    assert statuses == [429, 451, 200]


async def test_no_secret_reaches_a_log_record(
    sim: Simulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = await _login(http, sim)
    url = URL(f"{sim.url}{USERS}").with_query({"access_token": str(body["bearer"])})
    async with http.get(url, headers={"Authorization": f"Bearer {body['bearer']}"}) as resp:
        assert resp.status == 200
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for secret in (body["bearer"], body["csrf"], DEFAULT_PASSWORD):
        assert str(secret) not in text
    assert str(body["bearer"]) not in repr(sim.requests)


async def test_restart_keeps_the_port_and_the_sessions(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    body = await _login(http, sim)
    port = sim.port
    await sim.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{sim.url}{USERS}"):
            pass
    await sim.start()
    assert sim.port == port
    headers = {"Authorization": f"Bearer {body['bearer']}"}
    async with http.get(f"{sim.url}{USERS}", headers=headers) as resp:
        assert resp.status == 200


async def test_the_fault_header_is_ignored_unless_enabled_then_forces_the_named_rule(
    clock: VirtualClock,
) -> None:
    rule = FaultRule("teapot", Status(418), match=Match(path="/nowhere"))
    headers = {"X-LE-Fault": "teapot"}
    url_path = f"/api/account/{ACC}/service/baseURI.json"
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        sim.faults.add(rule)
        async with http.get(sim.url + url_path, headers=headers) as resp:
            assert resp.status == 200
    config = SimulatorConfig(fault_header=True)
    async with Simulator(config, clock=clock) as sim, aiohttp.ClientSession() as http:
        sim.faults.add(rule)
        async with http.get(sim.url + url_path, headers=headers) as resp:
            assert resp.status == 418
        async with http.get(sim.url + url_path, headers={"X-LE-Fault": "no-such-rule"}) as resp:
            assert resp.status == 200
        assert [d.outcome for d in sim.faults.log] == ["forced"]


# -- slow bodies and quotas -------------------------------------------------------------------

CSDS_ALL = f"/api/account/{ACC}/service/baseURI.json"


async def _csds_body(http: aiohttp.ClientSession, sim: Simulator) -> bytes:
    async with http.get(sim.url + CSDS_ALL) as resp:
        return await resp.read()


async def test_a_slow_body_arrives_whole_in_chunk_bytes_pieces_chunk_delay_apart(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    whole = await _csds_body(http, sim)
    sim.faults.add(
        FaultRule("slow", SlowBody(chunk_bytes=100, chunk_delay_ms=1500), match=Match("GET"))
    )
    async with http.get(sim.url + CSDS_ALL) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.content_length == len(whole)
        assert clock.now() == 0.0  # status and headers at once
        pieces = [(clock.now(), chunk) async for chunk in resp.content.iter_any()]
    assert b"".join(chunk for _, chunk in pieces) == whole
    assert [len(chunk) for _, chunk in pieces[:-1]] == [100] * (len(pieces) - 1)
    expected = (len(whole) + 99) // 100
    assert [t for t, _ in pieces] == [pytest.approx(1.5 * i) for i in range(expected)]
    assert sim.requests[-1].fault == "slow_body"


async def test_a_slow_body_is_cut_mid_body_by_a_read_timeout_on_the_clock(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    sim.faults.add(FaultRule("slow", SlowBody(chunk_bytes=50, chunk_delay_ms=2000)))
    received: list[bytes] = []

    async def read_all(resp: aiohttp.ClientResponse) -> None:
        async for chunk in resp.content.iter_any():
            received.append(chunk)

    async with http.get(sim.url + CSDS_ALL) as resp:
        assert resp.status == 200
        timeout = timeout_after(clock, 5.0)
        with pytest.raises(TimeoutError):
            async with timeout:
                await read_all(resp)
    # Pieces at 0, 2 and 4 s; the fourth was due at 6 s.
    assert [len(chunk) for chunk in received] == [50, 50, 50]
    assert clock.now() == pytest.approx(5.0)
    await sim.stop()  # waits for the handler whose client went away mid-body


async def test_a_slow_body_past_the_attempt_timeout_is_retried_after_the_schedules_pause(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule(
            "slow",
            SlowBody(chunk_bytes=50, chunk_delay_ms=2000),
            match=Match("GET", "*/baseURI.json"),
            schedule=Schedule(fail_next=1),
        )
    )
    policy = RetryPolicy(pauses=(1.0,), attempt_timeout=5)
    async with Engine(sim.domains, scheme="http", clock=clock, retry=policy) as engine:
        resp = await engine.request("GET", "agentVep", CSDS_ALL)
    assert "baseURIs" in resp.json(dict)
    assert [a.outcome.kind.value for a in resp.attempts] == ["timeout", "response"]
    assert [r.at for r in sim.requests] == [0.0, 6.0]
    assert [r.fault for r in sim.requests] == ["slow_body", None]


async def test_a_slow_login_answer_still_sets_the_session_cookie(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule("slow", SlowBody(chunk_bytes=64, chunk_delay_ms=500), match=Match("POST"))
    )
    body = await _login(http, sim)
    assert body["bearer"]
    assert http.cookie_jar.filter_cookies(URL(sim.url))["Session_id"].value
    assert clock.now() > 0.5


async def test_a_quota_of_two_per_10_seconds_answers_429_with_the_seconds_until_a_slot_frees(
    sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule("q", Quota(limit=2, window_ms=10_000), match=Match("GET", "*/baseURI.json"))
    )
    answers: list[tuple[float, int, str | None]] = []
    for pause in (0.0, 3.0, 1.0, 6.0, 0.0):
        await clock.sleep(pause)
        async with http.get(sim.url + CSDS_ALL) as resp:
            answers.append((clock.now(), resp.status, resp.headers.get("Retry-After")))
            if resp.status == 429:
                assert (await resp.json())["error"]["status"] == 429
    assert answers == [
        (0.0, 200, None),
        (3.0, 200, None),
        (4.0, 429, "6"),
        (10.0, 200, None),
        (10.0, 429, "3"),
    ]
    assert [d.outcome for d in sim.faults.log] == [
        "admitted",
        "admitted",
        "inject",
        "admitted",
        "inject",
    ]


async def test_a_quota_applies_to_its_matched_route_only(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.add(
        FaultRule("q", Quota(limit=1, window_ms=60_000, status=503), match=Match(path="*/idp/*"))
    )
    statuses = []
    for _ in range(3):
        statuses.append(await _csds_body_status(http, sim, CSDS_ALL))
        statuses.append(
            await _csds_body_status(http, sim, f"/api/account/{ACC}/service/idp/baseURI.json")
        )
    assert statuses == [200, 200, 200, 503, 200, 503]


async def _csds_body_status(http: aiohttp.ClientSession, sim: Simulator, path: str) -> int:
    async with http.get(sim.url + path) as resp:
        await resp.read()
        return resp.status


async def test_the_engine_honours_a_quotas_retry_after_and_gets_in_when_the_slot_frees(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule("q", Quota(limit=1, window_ms=30_000), match=Match("GET", "*/baseURI.json"))
    )
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        await engine.request("GET", "agentVep", CSDS_ALL)
        await clock.sleep(4.2)
        resp = await engine.request("GET", "agentVep", CSDS_ALL)
    assert resp.status == 200
    # Retry-After: 26, the 25.8 s until the slot frees, rounded up.
    assert [r.at for r in sim.requests] == [0.0, 4.2, 30.2]
    assert [r.fault for r in sim.requests] == [None, "quota", None]


async def test_the_fault_header_forces_a_quota_refusal_asking_for_a_whole_window(
    clock: VirtualClock,
) -> None:
    rule = FaultRule("quota", Quota(limit=100, window_ms=90_500), match=Match(path="/nowhere"))
    async with (
        Simulator(SimulatorConfig(fault_header=True), clock=clock) as sim,
        aiohttp.ClientSession() as http,
    ):
        sim.faults.add(rule)
        async with http.get(sim.url + CSDS_ALL, headers={"X-LE-Fault": "quota"}) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (429, "91")
    assert [d.outcome for d in sim.faults.log] == ["forced"]


# -- hostile input: 4xx, never a 500, an ERROR traceback or a secret in a log --------------------


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The records at ERROR and above (aiohttp logs an unhandled handler error there)."""
    return [
        f"{r.name}: {r.getMessage()} {type(r.exc_info[1]).__name__ if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # None == None: an unknown user with a null password was logged in.
        ({"username": "nobody-at-all", "password": None}, 400),
        ({"username": "nobody-at-all", "password": "anything"}, 401),
        ({"username": DEFAULT_USER, "password": None}, 400),
        ({"username": DEFAULT_USER, "password": [DEFAULT_PASSWORD]}, 400),
        ({"username": DEFAULT_USER, "password": DEFAULT_PASSWORD + "x"}, 401),
        ({"username": DEFAULT_USER, "password": "pässwörd\ud800"}, 401),
    ],
    ids=["unknown-null", "unknown", "null", "list", "wrong", "non-ascii"],
)
async def test_login_needs_a_known_user_and_their_password_as_a_string(
    body: dict[str, object], status: int, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sim.url}/api/account/{ACC}/login", json=body) as resp:
        assert resp.status == status
        assert "bearer" not in await resp.json()
    assert sim.tokens.logins == 0


async def test_sentinel_refuses_an_unknown_client_that_sends_no_secret(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    # The same None == None: an unknown client_id without client_secret was issued a JWT.
    for form in (
        {"grant_type": "client_credentials", "client_id": "nobody"},
        {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID},
    ):
        async with http.post(f"{sim.url}/sentinel/api/account/{ACC}/app/token", data=form) as r:
            assert r.status == 401
    assert sim.tokens.jwts_issued == 0


_MULTIPART_NO_BLANK_LINE = (
    # The blank line after the secret part's headers is missing (hand-rolled multipart often
    # is): aiohttp reads the secret as a header line and its error quotes it.
    "--xx\r\n"
    'Content-Disposition: form-data; name="grant_type"\r\n\r\nclient_credentials\r\n'
    "--xx\r\n"
    f'Content-Disposition: form-data; name="client_id"\r\n\r\n{DEFAULT_CLIENT_ID}\r\n'
    "--xx\r\n"
    f'Content-Disposition: form-data; name="client_secret"\r\n{DEFAULT_CLIENT_SECRET}\r\n'
    "--xx--\r\n"
).encode()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xx", _MULTIPART_NO_BLANK_LINE),
        ("multipart/form-data", b"--xx\r\ngarbage"),  # no boundary
        ("application/x-www-form-urlencoded", b"\xff\xfe=\xff"),  # not UTF-8
        ("application/x-www-form-urlencoded; charset=bogus", b"grant_type=client_credentials"),
    ],
    ids=["malformed-multipart", "no-boundary", "not-utf8", "unknown-charset"],
)
async def test_sentinel_answers_400_to_a_form_it_cannot_read_and_logs_none_of_it(
    content_type: str,
    body: bytes,
    sim: Simulator,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with http.post(
        f"{sim.url}/sentinel/api/account/{ACC}/app/token",
        data=body,
        headers={"Content-Type": content_type},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    assert _errors(caplog) == []
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert DEFAULT_CLIENT_SECRET not in logged
    assert sim.tokens.jwts_issued == 0


_DEEP_JSON = "[" * 50_000 + "]" * 50_000  # past the parser's recursion limit, under 1 MiB


@pytest.mark.parametrize("endpoint", ["login", "refresh", "logout", "authenticate"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json; charset=bogus", '{"username": "agent1"}'),
        ("application/json", _DEEP_JSON),
    ],
    ids=["unknown-charset", "deeply-nested"],
)
async def test_json_endpoints_answer_4xx_to_a_body_they_cannot_read(
    endpoint: str,
    content_type: str,
    body: str,
    sim: Simulator,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with http.post(
        f"{sim.url}/api/account/{ACC}/{endpoint}",
        data=body.encode(),
        headers={"Content-Type": content_type},
    ) as resp:
        # login: 400 (not a JSON object); the others refuse first what they refuse anyway
        # (no session cookie, no authCode: 401).
        assert 400 <= resp.status < 500
    assert _errors(caplog) == []


# -- OAuth 1.0 timestamps -------------------------------------------------------------------------

_NOW = 1_700_000_000


@pytest.fixture
async def strict_sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    """A simulator refusing OAuth 1.0 timestamps more than 300 s from its time (_NOW)."""
    config = SimulatorConfig(oauth1_timestamp_window=300)
    async with Simulator(config, clock=clock, epoch=_NOW) as s:
        yield s


@pytest.mark.parametrize(
    ("offset", "status"),
    [(0, 200), (-300, 200), (300, 200), (-301, 401), (301, 401), (-36_000, 401)],
)
async def test_the_oauth1_timestamp_window_refuses_stamps_too_far_from_the_simulators_time(
    offset: int, status: int, strict_sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{strict_sim.url}{USERS}").with_query({"v": "4.0"})
    header = _oauth_header("GET", url, f"n{offset}", timestamp=str(_NOW + offset))
    async with http.get(url, headers={"Authorization": header}) as resp:
        assert resp.status == status


async def test_the_oauth1_timestamp_window_moves_with_the_simulators_clock(
    strict_sim: Simulator, http: aiohttp.ClientSession, clock: VirtualClock
) -> None:
    url = URL(f"{strict_sim.url}{USERS}").with_query({"v": "4.0"})
    await clock.sleep(3600)
    header = _oauth_header("GET", url, "old", timestamp=str(_NOW))
    async with http.get(url, headers={"Authorization": header}) as resp:
        assert resp.status == 401
    header = _oauth_header("GET", url, "new", timestamp=str(_NOW + 3600))
    async with http.get(url, headers={"Authorization": header}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "stamp",
    [
        "nan",  # float("nan") is in every window: abs(nan - now) > window is False
        "NaN",
        "-nan",
        "inf",
        f"{_NOW}.0",
        f"{_NOW:e}",
        f" {_NOW}",
        f"+{_NOW}",
        "1_700_000_000",  # int() takes underscores too
        "\u0661\u0667" + "\u0660" * 8,  # Arabic-Indic digits: int() takes them, RFC 5849 not
        "",
        "9" * 5000,  # more digits than int() converts
    ],
)
async def test_an_oauth1_timestamp_that_is_not_a_decimal_integer_is_401(
    stamp: str, strict_sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{strict_sim.url}{USERS}").with_query({"v": "4.0"})
    header = _oauth_header("GET", url, "n-" + str(hash(stamp)), timestamp=stamp)
    async with http.get(url, headers={"Authorization": header}) as resp:
        assert resp.status == 401


def test_the_oauth1_timestamp_window_must_be_a_number_of_seconds() -> None:
    for window in (float("nan"), -1, "300", True):
        with pytest.raises(ConfigurationError, match="oauth1_timestamp_window"):
            SimulatorConfig(oauth1_timestamp_window=window)  # type: ignore[arg-type]
    assert SimulatorConfig(oauth1_timestamp_window=0).oauth1_timestamp_window == 0


# -- IPv6 ---------------------------------------------------------------------------------------


def test_an_ipv6_literal_is_bracketed_in_the_host_and_every_url() -> None:
    for given in ("::1", "[::1]"):
        sim = Simulator(host=given, port=8080)  # not started: the port is the one given
        assert sim.host == "[::1]:8080"
        assert sim.url == "http://[::1]:8080"
        assert sim.domains["agentVep"] == "[::1]:8080"
        assert sim.brand_socket_url("b").startswith("ws://[::1]:8080/ws_api/")
        assert sim.consumer_socket_url().startswith("ws://[::1]:8080/ws_api/")
    assert Simulator(host="127.0.0.1", port=8080).url == "http://127.0.0.1:8080"
    assert Simulator(host="localhost", port=8080).host == "localhost:8080"


async def test_an_engine_reaches_a_simulator_on_ipv6_loopback(clock: VirtualClock) -> None:
    sim = Simulator(clock=clock, host="::1")
    try:
        await sim.start()
    except OSError as exc:
        pytest.skip(f"IPv6 loopback is not available here: {exc}")
    try:
        async with Engine(sim.domains, scheme="http", clock=clock) as engine:
            body = await engine.request_json("GET", "agentVep", CSDS_ALL, expect=dict)
        assert {u["baseURI"] for u in body["baseURIs"]} == {sim.host}
        bearer = sim.tokens.login(ACC, DEFAULT_USER, 3600, "user").bearer
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(bearer)) as ws,
        ):
            await ws.send_str(json.dumps({"kind": "req", "id": "1", "type": ".GetClock"}))
            assert (await ws.receive_json())["code"] == 200
    finally:
        await sim.stop()


# -- what the constructor takes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        # Before: accepted, then "AttributeError: 'builtin_function_or_method' object has no
        # attribute 'now'" from inside the constructor's SimFaults, or later at the first token.
        ({"clock": time.monotonic}, "Simulator.clock must be Clock"),
        ({"clock": VirtualClock}, r"Simulator.clock must be a Clock, got the class VirtualClock"),
        ({"clock": "virtual"}, "Simulator.clock must be Clock, got str"),
        ({"config": {"accounts": []}}, "Simulator.config must be SimulatorConfig or None"),
        ({"host": ""}, "Simulator.host must be a non-empty str"),
        ({"host": 127001}, "Simulator.host must be a non-empty str"),
        ({"host": "localhost:8080"}, "holds a ':' but is not an IPv6 address.*port="),
        ({"host": "http://127.0.0.1"}, "holds a ':'"),
        ({"host": "my host"}, "Simulator.host must be a host alone"),
        ({"port": -1}, r"Simulator.port must be an int in 0..65535"),
        ({"port": 70000}, r"Simulator.port must be an int in 0..65535"),
        ({"port": "8080"}, r"Simulator.port must be an int"),
        ({"port": True}, r"Simulator.port must be an int"),
        ({"ssl": True}, "Simulator.ssl must be SSLContext or None"),
        ({"epoch": float("nan")}, "Simulator.epoch must be None or a finite number"),
        ({"epoch": "1700000000"}, "Simulator.epoch must be None or a finite number"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else "",
)
def test_a_bad_constructor_argument_is_refused_naming_it(
    kwargs: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigurationError, match=said):
        Simulator(**kwargs)  # type: ignore[arg-type]


def test_the_arguments_a_simulator_takes_are_still_taken() -> None:
    clock = VirtualClock()
    sim = Simulator(SimulatorConfig(), clock=clock, host="[::1]", port=65535, epoch=1_700_000_000)
    assert sim.clock is clock
    assert sim.host == "[::1]:65535"
    assert sim.tokens.epoch_now() == 1_700_000_000
    assert Simulator(host="localhost", port=0, epoch=0.5).clock is not None
