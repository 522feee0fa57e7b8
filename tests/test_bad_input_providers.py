"""Bad input to the providers: wrong types, empty and hostile values at construction, and
hostile answers from a loopback server. Each is a typed error (ConfigurationError at
construction) that never shows a value that could be a credential, or is handled safely."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport._redact import Secret
from le_transport.errors import ConfigurationError
from le_transport.providers import (
    AppLogin,
    ClientCredentialsLogin,
    ConsumerJwt,
    CsdsDomains,
    OAuth1Auth,
    OAuth1Signer,
    SentinelClientCredentials,
    StaticBearer,
    StaticDomains,
    UserLogin,
)
from le_transport.providers._token import MIN_TOKEN_REFRESH
from le_transport.providers.login import (
    MIN_SESSION_REFRESH_INTERVAL,
    LoginSession,
    _load_session,
)
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import PASSWORD, exception_messages

ACCOUNT = "12345678"
NO_DOMAINS = StaticDomains({})

# -- StaticBearer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", [None, b"zqx", 42, "", Secret(""), "zqx\r\nX-Injected: 1", "zqx zqx", "zqxö"]
)
def test_static_bearer_refuses_a_token_a_header_cannot_carry(token: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"StaticBearer\.token") as info:
        StaticBearer(token)
    assert "zqx" not in str(info.value)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("Bearer zqx", r"it starts with 'Bearer ': pass the token alone"),
        (Secret("bearer zqx"), r"it starts with 'Bearer '"),
        ("zqxzqx\n", r"it holds a line break at character 7 of 7 \(strip what was read"),
        ("zqx zqx", r"it holds whitespace at character 4 of 7; the value is not shown"),
        ("zqx\x00", r"it holds a control character at character 4 of 4"),
        ("zqxö", r"it holds a character outside ASCII at character 4 of 4"),
        ("", r"it is empty"),
        (None, r"got NoneType"),
    ],
)
def test_static_bearer_says_what_is_wrong_with_a_token_without_showing_it(
    token: Any, says: str
) -> None:
    """It said "got Secret" for a str with the scheme in front (StaticBearer("Bearer xyz"))."""
    with pytest.raises(ConfigurationError, match=says) as info:
        StaticBearer(token)
    assert "zqx" not in str(info.value)
    assert "got Secret" not in str(info.value)


def test_static_bearer_update_checks_the_new_token_and_keeps_the_old_one() -> None:
    bearer = StaticBearer("good-token")
    with pytest.raises(ConfigurationError, match=r"StaticBearer\.token"):
        bearer.update(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"StaticBearer\.token"):
        bearer.update(Secret("bad\ntoken"))
    bearer.update(Secret("next-token"))


async def test_static_bearer_after_a_refused_update_still_sends_the_old_token() -> None:
    bearer = StaticBearer("good-token")
    with pytest.raises(ConfigurationError):
        bearer.update("")
    creds = await bearer.credentials("GET", URL("https://va.example/x"))
    assert creds.headers["Authorization"] == "Bearer good-token"
    assert creds.generation == 0


# -- the account id never echoes a value that could be a credential ---------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda a: UserLogin(a, "agent", "pw", domains=NO_DOMAINS),
        lambda a: CsdsDomains(a),
        lambda a: ConsumerJwt(a, domains=NO_DOMAINS),
        lambda a: SentinelClientCredentials(a, "id", "secret", domains=NO_DOMAINS),
    ],
)
def test_an_invalid_account_is_refused_without_showing_it(build: Callable[[Any], Any]) -> None:
    # Arguments in the wrong order put the password where the account goes.
    with pytest.raises(ConfigurationError, match=r"\.account must be") as info:
        build(PASSWORD + "!")
    assert PASSWORD[:6] not in str(info.value)
    with pytest.raises(ConfigurationError, match=r"\.account must be .*got int"):
        build(12345678)


# -- durations --------------------------------------------------------------------------------

HUGE = 10**400  # an int past float's range: math.isfinite and float() raise OverflowError


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: CsdsDomains(ACCOUNT, ttl=v), "ttl"),
        (lambda v: CsdsDomains(ACCOUNT, stale_retry=v), "stale_retry"),
        (lambda v: UserLogin(ACCOUNT, "u", "p", domains=NO_DOMAINS, refresh_interval=v),
         "refresh_interval"),
        (lambda v: SentinelClientCredentials(ACCOUNT, "i", "s", domains=NO_DOMAINS, margin=v),
         "margin"),
        (lambda v: ConsumerJwt(ACCOUNT, domains=NO_DOMAINS, margin=v), "margin"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "value",
    [HUGE, float("inf"), float("nan"), -1, True, "60", None],
    ids=["10**400", "inf", "nan", "-1", "True", "'60'", "None"],
)
def test_provider_durations_are_finite_numbers(
    build: Callable[[Any], Any], field: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=rf"\.{field} must be"):
        build(value)


# -- a Login Service answer whose session TTL is absurdly short ---------------------------------


def _session(ttl: float | None) -> LoginSession:
    return LoginSession(Secret("b"), None, None, ttl, None, 1, 0.0)


@pytest.mark.parametrize("ttl", [0.001, 1e-300, 0.5])
def test_a_tiny_session_ttl_does_not_make_the_keepalive_spin(ttl: float) -> None:
    auth = UserLogin(ACCOUNT, "agent", "pw", domains=NO_DOMAINS)
    assert auth.refresh_interval_for(_session(ttl)) >= MIN_SESSION_REFRESH_INTERVAL
    # The caller's own interval still wins when it is shorter (tests, demos).
    short = UserLogin(ACCOUNT, "agent", "pw", domains=NO_DOMAINS, refresh_interval=0.5)
    assert short.refresh_interval_for(_session(ttl)) == 0.5


async def test_login_answering_a_one_millisecond_ttl_refreshes_at_a_bounded_rate(
    serve: ServerFactory,
) -> None:
    asked: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        action = request.path.rsplit("/", 1)[-1]
        asked.append(action)
        if action == "login":
            return web.json_response({"bearer": "zqx-bearer", "sessionTTl": "1"})
        return web.json_response({})

    app = web.Application()
    app.router.add_route("POST", "/api/account/{account}/{action}", handler)
    host = await serve(app)
    clock = VirtualClock()
    domains = StaticDomains({"agentVep": host})
    auth = UserLogin(ACCOUNT, "agent", "pw", domains=domains, logout_on_close=False)
    async with Engine(domains, auth=auth, scheme="http", clock=clock, retry=RetryPolicy()) as e:
        await e.login()
        await clock.sleep(60.0)
    refreshes = asked.count("refresh")
    assert 1 <= refreshes <= 60 / MIN_SESSION_REFRESH_INTERVAL + 1


# -- ConsumerJwt's auth code ---------------------------------------------------------------------


async def _idp(serve: ServerFactory, asked: list[str]) -> str:
    async def handler(request: web.Request) -> web.Response:
        asked.append(request.path.rsplit("/", 1)[-1])
        return web.json_response({"jwt": "zqx-consumer-jwt"})

    app = web.Application()
    app.router.add_route("POST", "/api/account/{account}/{action}", handler)
    return await serve(app)


def test_an_empty_auth_code_is_refused_rather_than_sent() -> None:
    for code in ("", Secret("")):
        with pytest.raises(ConfigurationError, match=r"ConsumerJwt\.auth_code"):
            ConsumerJwt(ACCOUNT, domains=NO_DOMAINS, auth_code=code)


async def _none() -> None:
    return None


async def _number() -> int:
    return 1234


async def _empty() -> str:
    return ""


def _sync() -> str:
    return "zqx-code"


@pytest.mark.parametrize("source", [_none, _number, _empty, _sync], ids=lambda f: f.__name__)
async def test_an_auth_code_source_that_gives_no_code_fails_and_never_signs_up(
    serve: ServerFactory, source: Callable[[], Any]
) -> None:
    asked: list[str] = []
    host = await _idp(serve, asked)
    domains = StaticDomains({"idp": host})
    auth = ConsumerJwt(ACCOUNT, domains=domains, auth_code=source)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()) as engine:
        with pytest.raises(ConfigurationError, match=r"ConsumerJwt\.auth_code") as info:
            await engine.login()
    assert "zqx" not in str(info.value)
    # An authenticated consumer silently turned anonymous (signup) would be worse than failing.
    assert asked == []


async def test_an_auth_code_source_giving_a_secret_authenticates(serve: ServerFactory) -> None:
    asked: list[str] = []
    host = await _idp(serve, asked)
    domains = StaticDomains({"idp": host})

    async def code() -> Secret:
        return Secret("zqx-code")

    auth = ConsumerJwt(ACCOUNT, domains=domains, auth_code=code)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()) as engine:
        await engine.login()
    assert asked == ["authenticate"]


# -- options of the wrong type fail at construction, not at the first request ------------------

D = NO_DOMAINS
Sentinel = SentinelClientCredentials


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: StaticDomains(None), "hosts"),  # type: ignore[arg-type]
        (lambda: StaticDomains([("agentVep", "va.example")]), "hosts"),  # type: ignore[arg-type]
        (lambda: StaticDomains({1: "va.example"}), "hosts"),  # type: ignore[dict-item]
        (lambda: StaticDomains({"": "va.example"}), "hosts"),
        (lambda: CsdsDomains(ACCOUNT, retry=5), "retry"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, retry=5), "retry"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, service=5), "service"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, service=""), "service"),
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, version=None), "version"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, keepalive="no"), "keepalive"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, logout_on_close=0), "logout_on_close"),  # type: ignore[arg-type]
        (lambda: AppLogin(ACCOUNT, "u", "k", "s", "t", "ts", domains=D, retry={}), "retry"),  # type: ignore[arg-type]
        (lambda: SentinelClientCredentials(ACCOUNT, "i", "s", domains=None), "domains"),  # type: ignore[arg-type]
        (lambda: SentinelClientCredentials(ACCOUNT, "i", "s", domains=D, service=None), "service"),  # type: ignore[arg-type]
        (lambda: SentinelClientCredentials(ACCOUNT, "i", "s", domains=D, version=1.0), "version"),  # type: ignore[arg-type]
        (lambda: Sentinel(ACCOUNT, "i", "s", domains=D, wall_clock=5), "wall_clock"),  # type: ignore[arg-type]
        (lambda: ConsumerJwt(ACCOUNT, domains="idp.example"), "domains"),  # type: ignore[arg-type]
        (lambda: ConsumerJwt(ACCOUNT, domains=D, service=b"idp"), "service"),  # type: ignore[arg-type]
        (lambda: OAuth1Auth("k", "s", "t", "ts", wall_clock=5), "wall_clock"),  # type: ignore[arg-type]
        (lambda: OAuth1Auth("k", "s", "t", "ts", nonce="fixed"), "nonce"),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_provider_options_of_the_wrong_type_are_configuration_errors(
    build: Callable[[], Any], field: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"\.{field}\b"):
        build()


# -- a token answer whose expiry is already past, or absurdly close ----------------------------


def _jwt(claims: dict[str, Any]) -> str:
    def seg(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256'})}.{seg(claims)}.c2ln"


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": _jwt({"exp": 1000.0})},  # an hour before the client's wall clock
        {"access_token": "opaque", "expires_in": 1e-300},
        {"access_token": "opaque", "expires_in": "0.001"},
        {"access_token": "opaque", "expires_in": 0.5},  # under MIN_TOKEN_LIFE: not believed
    ],
    ids=["jwt-expired", "expires_in-tiny", "expires_in-1ms", "expires_in-half-second"],
)
async def test_a_token_already_expired_is_not_fetched_again_for_every_call(
    serve: ServerFactory, answer: dict[str, Any]
) -> None:
    asked: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("POST", "/sentinel/api/account/{account}/app/token", handler)
    host = await serve(app)
    domains = StaticDomains({"sentinel": host})
    auth = SentinelClientCredentials(
        ACCOUNT, "client", "zqx-secret", domains=domains, wall_clock=lambda: 4600.0
    )
    clock = VirtualClock()
    async with Engine(domains, auth=auth, scheme="http", clock=clock):
        for _ in range(10):
            await auth.credentials("GET", URL("http://va.example/x"))
        # With a clock skewed past the token's expiry, every call would fetch a token: one
        # Sentinel request per API call. The server's 401 is what says a token is dead.
        assert len(asked) == 1
        await clock.sleep(MIN_TOKEN_REFRESH + 0.1)
        await auth.credentials("GET", URL("http://va.example/x"))
        assert len(asked) == 2


# -- the OAuth1 signer's own arguments -------------------------------------------------------------

SIGNER_URL = URL("https://va.example/api/account/1/x")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((5, SIGNER_URL), {}),
        (("", SIGNER_URL), {}),
        (("GET", "https://va.example/x"), {}),
        (("GET", SIGNER_URL), {"nonce": 5}),
        (("GET", SIGNER_URL), {"timestamp": 1.5}),
        (("GET", SIGNER_URL), {"body_params": 5}),
        (("GET", SIGNER_URL), {"body_params": [("a",)]}),
        (("GET", SIGNER_URL), {"body_params": [("a", 5)]}),
    ],
)
def test_the_oauth1_signer_refuses_arguments_it_cannot_sign(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    signer = OAuth1Signer("k", "zqx-secret", "t", "zqx-token-secret")
    with pytest.raises(ConfigurationError, match=r"OAuth1Signer\.header") as info:
        signer.header(*args, **kwargs)
    assert "zqx" not in str(info.value)


@pytest.mark.parametrize(
    ("wall_clock", "nonce"),
    [(lambda: float("nan"), lambda: "n"), (lambda: "now", lambda: "n"), (lambda: 1.0, lambda: 5)],
)
def test_the_oauth1_signer_refuses_what_its_sources_return(
    wall_clock: Callable[[], Any], nonce: Callable[[], Any]
) -> None:
    signer = OAuth1Signer("k", "s", "t", "u", wall_clock=wall_clock, nonce=nonce)
    with pytest.raises(ConfigurationError, match=r"OAuth1Signer\.(wall_clock|nonce)"):
        signer.header("GET", SIGNER_URL)


# -- a session another process of the fleet stored -------------------------------------------------


@pytest.mark.parametrize(
    "ttl", ["9" * 400, "Infinity", "NaN", "-5", '"300"'], ids=["huge", "inf", "nan", "neg", "str"]
)
def test_a_stored_session_with_a_bad_ttl_is_loaded_without_one(ttl: str) -> None:
    value = '{"bearer": "zqx-bearer", "ttl": ' + ttl + "}"
    session = _load_session(value, 1, 0.0)
    assert session.ttl is None
    assert session.bearer == Secret("zqx-bearer")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: CsdsDomains(ACCOUNT, shared=MemoryStore()), "shared"),  # type: ignore[arg-type]
        (lambda: CsdsDomains(ACCOUNT, shared={"agentVep": "va.example"}), "shared"),  # type: ignore[arg-type]
        (lambda: UserLogin(ACCOUNT, "u", "p", domains=D, shared=MemoryStore()), "shared"),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_a_shared_option_of_the_wrong_type_fails_at_construction(
    build: Callable[[], Any], field: str
) -> None:
    # A store passed where its SharedDomainMap or SharedSession goes failed only at the first
    # resolve or login, with an AttributeError.
    with pytest.raises(ConfigurationError, match=rf"\.{field}\b"):
        build()


# -- a credential UTF-8 cannot encode (os.environ's form of a byte that is not UTF-8) ----------

#: What ``os.environ`` holds for a secret whose bytes are not UTF-8: a lone surrogate.
UNDECODABLE = "zqx-undecodable-" + os.fsdecode(b"\xff")


def _shows(exc: BaseException, value: str) -> bool:
    """Whether ``value`` appears in the text, repr or args of ``exc`` or any exception chained
    to it (a ``UnicodeEncodeError``'s args hold the whole string it could not encode)."""
    shown = exception_messages(exc)
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is not None:
            shown.extend(repr(arg) for arg in e.args)
            shown.extend(str(arg) for arg in e.args)
            todo.extend((e.__cause__, e.__context__))
    return any(value in text or value[:12] in text for text in shown)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: UserLogin(ACCOUNT, "agent", v, domains=D), "password"),
        (lambda v: UserLogin(ACCOUNT, v, "pw", domains=D), "username"),
        (lambda v: AppLogin(ACCOUNT, v, "k", "s", "t", "ts", domains=D), "username"),
        (lambda v: AppLogin(ACCOUNT, "u", v, "s", "t", "ts", domains=D), "app_key"),
        (lambda v: AppLogin(ACCOUNT, "u", "k", v, "t", "ts", domains=D), "secret"),
        (lambda v: AppLogin(ACCOUNT, "u", "k", "s", v, "ts", domains=D), "access_token"),
        (lambda v: AppLogin(ACCOUNT, "u", "k", "s", "t", v, domains=D), "access_token_secret"),
        (lambda v: ClientCredentialsLogin(ACCOUNT, "u", "id", v, domains=D), "secret"),
        (lambda v: OAuth1Auth("k", v, "t", "ts"), "secret"),
        (lambda v: OAuth1Auth(v, "s", "t", "ts"), "app_key"),
        (lambda v: OAuth1Signer("k", "s", "t", v), "access_token_secret"),
        (lambda v: SentinelClientCredentials(ACCOUNT, "id", v, domains=D), "client_secret"),
        (lambda v: SentinelClientCredentials(ACCOUNT, v, "s", domains=D), "client_id"),
        (lambda v: ConsumerJwt(ACCOUNT, domains=D, auth_code=v), "auth_code"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("wrap", [str, Secret], ids=["str", "Secret"])
def test_a_credential_utf8_cannot_encode_is_refused_at_construction_without_showing_it(
    build: Callable[[Any], Any], field: str, wrap: Callable[[str], Any]
) -> None:
    """Accepted, it failed only when first sent: an untyped UnicodeEncodeError (from the
    OAuth1 signature, or aiohttp encoding a form) whose args held the whole secret."""
    value = wrap(UNDECODABLE) if field != "username" else UNDECODABLE
    with pytest.raises(ConfigurationError, match=rf"\.{field} .*UTF-8") as info:
        build(value)
    assert not _shows(info.value, UNDECODABLE)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


async def _surrogate() -> str:
    return UNDECODABLE


async def test_an_auth_code_source_giving_a_code_utf8_cannot_encode_fails_and_sends_nothing(
    serve: ServerFactory,
) -> None:
    asked: list[str] = []
    host = await _idp(serve, asked)
    domains = StaticDomains({"idp": host})
    auth = ConsumerJwt(ACCOUNT, domains=domains, auth_code=_surrogate)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()) as engine:
        with pytest.raises(ConfigurationError, match=r"ConsumerJwt\.auth_code .*UTF-8") as info:
            await engine.login()
    assert not _shows(info.value, UNDECODABLE)
    assert asked == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body_params": [("a", UNDECODABLE)]},
        {"body_params": [(UNDECODABLE, "v")]},
        {"nonce": UNDECODABLE},
        {"timestamp": UNDECODABLE},
    ],
    ids=["form-value", "form-name", "nonce", "timestamp"],
)
def test_the_oauth1_signer_refuses_text_utf8_cannot_encode_without_showing_it(
    kwargs: dict[str, Any],
) -> None:
    signer = OAuth1Signer("k", "s", "t", "ts")
    with pytest.raises(ConfigurationError, match=r"OAuth1Signer\.header") as info:
        signer.header("GET", SIGNER_URL, **kwargs)
    assert not _shows(info.value, UNDECODABLE)
    assert info.value.__context__ is None


# -- numbers past float's range in an answer: no expiry, not an OverflowError --------------------

HUGE_JSON = "9" * 400  # a valid JSON integer; float() of it raises OverflowError


def _raw_jwt(claims_json: str) -> str:
    def seg(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = seg(b'{"alg":"HS256"}')
    return f"{header}.{seg(claims_json.encode())}.c2ln"


async def _answering(serve: ServerFactory, path: str, body: str) -> str:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("POST", path, handler)
    return await serve(app)


@pytest.mark.parametrize(
    "body",
    [
        '{"access_token": "zqx-opaque", "expires_in": ' + HUGE_JSON + "}",
        '{"access_token": "zqx-opaque", "expires_in": "' + HUGE_JSON + '"}',
        '{"access_token": "' + _raw_jwt('{"exp": ' + HUGE_JSON + "}") + '"}',
    ],
    # A negative one that large is a life of 0 or less: the 5 s floor
    # (tests/test_providers_shared_and_hosts.py).
    ids=["expires_in", "expires_in-str", "jwt-exp"],
)
async def test_a_token_answer_with_a_number_past_floats_range_has_no_expiry(
    serve: ServerFactory, body: str
) -> None:
    host = await _answering(serve, "/sentinel/api/account/{account}/app/token", body)
    domains = StaticDomains({"sentinel": host})
    auth = SentinelClientCredentials(ACCOUNT, "client", "zqx-secret", domains=domains)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()):
        creds = await auth.credentials("GET", URL("http://va.example/x"))
        token = auth.token
        assert token is not None
        assert token.refresh_at is None
        assert token.expires_at is None
    assert creds.generation == 1


async def test_a_consumer_jwt_whose_exp_is_past_floats_range_has_no_expiry(
    serve: ServerFactory,
) -> None:
    body = '{"jwt": "' + _raw_jwt('{"exp": ' + HUGE_JSON + "}") + '"}'
    host = await _answering(serve, "/api/account/{account}/signup", body)
    domains = StaticDomains({"idp": host})
    auth = ConsumerJwt(ACCOUNT, domains=domains)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()) as engine:
        await engine.login()
        token = auth.token
        assert token is not None
        assert token.refresh_at is None
        assert token.expires_at is None


@pytest.mark.parametrize(
    "ttl", [HUGE_JSON, "-" + HUGE_JSON, '"' + HUGE_JSON + '"'], ids=["int", "negative", "str"]
)
async def test_a_login_answer_whose_session_ttl_is_past_floats_range_has_no_ttl(
    serve: ServerFactory, ttl: str
) -> None:
    body = '{"bearer": "zqx-bearer", "sessionTTl": ' + ttl + "}"
    host = await _answering(serve, "/api/account/{account}/login", body)
    domains = StaticDomains({"agentVep": host})
    auth = UserLogin(ACCOUNT, "agent", "pw", domains=domains, logout_on_close=False)
    async with Engine(domains, auth=auth, scheme="http", clock=VirtualClock()) as engine:
        await engine.login()
        session = auth.session
        assert session is not None
        assert session.ttl is None
        assert auth.refresh_interval_for(session) == 300.0
