"""More of the library's own texts read whole through redaction: a log line or a shown error
runs them through :func:`redact_text`, which reads ``auth=...``, ``auth_placement: ...``,
``Authorization: ...``, ``password=;`` or ``token: ...`` as a credential and hides what
follows it (an unquoted value runs past its blanks, to the end of the sentence). Each text
below lost words a reader needs; now nothing but a ``<key>`` placeholder is hidden."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine
from le_transport._redact import redact_text
from le_transport.chaos import Status
from le_transport.errors import (
    ConfigurationError,
    InvalidRequest,
    UnexpectedAnswer,
    UnknownServiceError,
)
from le_transport.providers import AppKeyAuth, OAuth1Signer, StaticBearer, UserLogin
from le_transport.providers._http import ProviderResponse
from le_transport.providers.domains import StaticDomains
from le_transport.providers.oauth2 import SentinelClientCredentials
from le_transport.sockets import AuthPlacement, EngineDialer, init_connection_frame
from le_transport.state.redis_store import RedisStore
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.test_login import LOGIN, user_login
from tests.test_providers import sim, sim_engine

__all__ = ["sim"]  # the simulator fixture


def _reads_whole(text: str) -> None:
    assert redact_text(text) == text, text


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("LivePerson appKey=k1", "pass the key alone"),
        ("Bearer k1", "pass the key alone"),
    ],
)
def test_an_app_key_refusal_loses_only_the_key_placeholder(key: str, words: str) -> None:
    """It read "... (AppKeyAuth writes 'Authorization: ***" and "... sent as
    'Authorization: ***": how to pass the key was hidden."""
    with pytest.raises(ConfigurationError) as info:
        AppKeyAuth("123", key)
    text = str(info.value)
    assert words in text
    assert text.endswith("LivePerson appKey=<key>"), text
    _reads_whole(text.removesuffix("<key>"))
    assert redact_text(text) == text.removesuffix("<key>") + "***"


def test_a_bearer_given_with_its_scheme_is_refused_in_words_that_read_whole() -> None:
    """It read "(StaticBearer writes 'Authorization: *** <token>***"."""
    with pytest.raises(ConfigurationError) as info:
        StaticBearer("Bearer k1")
    text = str(info.value)
    assert "pass the token alone" in text
    _reads_whole(text)


async def test_login_without_an_auth_provider_reads_whole(clock: VirtualClock) -> None:
    """It read "(auth=***"."""
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(ConfigurationError) as info:
            await engine.login()
    text = str(info.value)
    assert "has no auth provider" in text
    _reads_whole(text)


async def test_a_header_the_provider_owns_is_refused_in_words_that_read_whole(
    clock: VirtualClock,
) -> None:
    """It read "... place the credentials elsewhere (auth_placement: ***"."""
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as info:
            EngineDialer(
                engine, "svc", "/ws", auth=StaticBearer("t"), headers={"Authorization": "x"}
            )
    text = str(info.value)
    assert "would be replaced by the credentials" in text
    assert "PATH, FIRST_FRAME, or NONE" in text
    _reads_whole(text)


def _login() -> UserLogin:
    return UserLogin("123", "u", "pw", domains=StaticDomains({"agentVep": "127.0.0.1:9"}))


@pytest.mark.parametrize("policy_name", ["SERVER_CHAT_API_CHAT_INFO", "CHAT_AGENT_API_REFRESH"])
async def test_a_keepalive_on_the_wrong_auth_is_refused_in_words_that_read_whole(
    clock: VirtualClock, policy_name: str
) -> None:
    """They read "wants Authorization: LivePerson ***" (what to do instead was hidden) and
    "(auth=***, AppLogin or ClientCredentialsLogin)"."""
    from le_transport import policies

    policy = getattr(policies, policy_name)
    hosts = {"agentVep": "127.0.0.1:9"}
    auth = StaticBearer("tok-1") if policy is policies.CHAT_AGENT_API_REFRESH else _login()
    async with Engine(hosts, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ConfigurationError) as info:
            engine.keepalive(policy, "agentVep", fields={"account": "123", "chat_id": "c1"})
    text = str(info.value)
    assert "AppKeyAuth" in text or "ClientCredentialsLogin" in text, text
    _reads_whole(text)


def test_a_token_endpoints_odd_answer_reads_whole() -> None:
    """It read "(neither a refusal nor a token: ***"."""
    auth = SentinelClientCredentials(
        "123", "id", "secret", domains=StaticDomains({"sentinel": "h:9"})
    )
    with pytest.raises(UnexpectedAnswer) as info:
        auth._parse(ProviderResponse(status=302, body=b""), "token")
    text = str(info.value)
    assert "a redirect or a maintenance page" in text
    _reads_whole(text)


@pytest.mark.parametrize("url", ["redis://u:p/w@host/0", "redis://h:notaport/0"])
def test_a_redis_url_refusal_reads_whole(url: str) -> None:
    """It read "... or given as password=*** '@' in a redis:// path" and showed its URL
    forms as "redis://***@]host"."""
    with pytest.raises(ConfigurationError) as info:
        RedisStore(url)
    text = str(info.value)
    assert "p/w" not in text
    assert "notaport" not in text
    assert "[username]:password" in text
    _reads_whole(text)


class _GoneAfterTheFirstLookup:
    """A domain provider whose map loses the service after the request's own lookup: the
    auth middleware's lookup finds no host that may have the credentials."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.asked = 0

    async def resolve(self, service: str) -> str:
        self.asked += 1
        if self.asked > 1:
            raise UnknownServiceError("gone", service=service)
        return self.host

    async def invalidate(self) -> None:
        """Nothing cached."""

    async def close(self) -> None:
        """Nothing to end."""


async def test_the_warning_of_credentials_not_sent_reads_whole(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """It read "...: not sending credentials: ***" (why was hidden)."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/x", ok)
    host = await serve(app)
    domains: Any = _GoneAfterTheFirstLookup(host)
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with Engine(domains, scheme="http", clock=clock, auth=StaticBearer("tok-1")) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.status == 200  # sent without credentials
    lines = [r.getMessage() for r in caplog.records if "not sending credentials" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    for line in lines:
        assert "no host for service" in line
        _reads_whole(line)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"nonce": lambda: 7}, "OAuth1Signer.nonce(): what it returned must be a non-empty str"),
        ({"nonce": lambda: ""}, "OAuth1Signer.nonce(): what it returned must be a non-empty str"),
        (
            {"wall_clock": lambda: "now"},
            "OAuth1Signer.wall_clock(): what it returned must be a finite number, got str",
        ),
        (
            {"wall_clock": lambda: float("nan")},
            "OAuth1Signer.wall_clock(): what it returned must be a finite number, got float",
        ),
    ],
)
def test_a_signers_callable_that_returns_nonsense_is_refused_in_words_that_read_whole(
    kwargs: dict[str, Any], words: str
) -> None:
    """They read "OAuth1Signer.nonce: ***" and "OAuth1Signer.wall_clock: ***" (and the wall
    clock's asked for "a non-empty str or a finite number", where only a number is taken)."""
    signer = OAuth1Signer("app-key", "app-secret", "token", "token-secret", **kwargs)
    with pytest.raises(ConfigurationError) as info:
        signer.header("GET", URL("https://h/x"))
    text = str(info.value)
    assert words in text, text
    _reads_whole(text)


# -- a word read as a bearer's or a JWT's value: "bearer token", "jwt must", "bearer goes" ------


def test_a_first_frames_plain_jwt_is_refused_in_words_that_read_whole() -> None:
    """It read "init_connection_frame.jwt *** be a Secret"."""
    with pytest.raises(ConfigurationError) as info:
        init_connection_frame("eyJ.plain.jwt")  # type: ignore[arg-type]
    text = str(info.value)
    assert "must be a Secret" in text
    _reads_whole(text)


async def test_a_path_placement_without_its_field_is_refused_in_words_that_read_whole(
    clock: VirtualClock,
) -> None:
    """It read "..., where the bearer ***"."""
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(ConfigurationError) as info:
            EngineDialer(engine, "svc", "/ws", auth=StaticBearer("t"), placement=AuthPlacement.PATH)
    text = str(info.value)
    assert "AuthPlacement.PATH needs '{bearer}' in the path" in text
    _reads_whole(text)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"csrf": "c"}', "without a bearer"),
        ('{"bearer": "two words", "csrf": "c"}', "header cannot carry"),
    ],
)
async def test_a_login_answer_with_no_usable_bearer_is_refused_in_words_that_read_whole(
    sim: Simulator, clock: VirtualClock, body: str, words: str
) -> None:
    """They read "... answered 200 without a bearer *** (not the login answer..." and
    "... answered a bearer *** with characters ..."."""
    sim.faults.script("POST", LOGIN, [Status(200, body=body)])
    auth = user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(UnexpectedAnswer) as info:
            await engine.login()
    text = str(info.value)
    assert words in text
    assert "two words" not in text
    _reads_whole(text)
