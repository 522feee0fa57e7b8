"""Fuzz targets for the providers: Domain API, login, refresh and token answers, JWTs, OAuth1.

The answer targets run end to end: a real aiohttp server on loopback answers with the fuzzed
status, headers and body, and the real engine and provider read it, so the parsers are fuzzed
exactly where outside input reaches them (on virtual time: retries of a 5xx cost nothing).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from hypothesis import strategies as st
from yarl import URL

from le_transport import Engine
from le_transport._redact import Secret
from le_transport.errors import DomainResolutionError, HostileHostError, TransportError
from le_transport.policies.retry import RetryPolicy
from le_transport.providers import (
    ConsumerJwt,
    CsdsDomains,
    OAuth1Signer,
    SentinelClientCredentials,
    StaticDomains,
    UserLogin,
    jwt_expiry,
    validate_host,
)
from le_transport.providers.csds import parse_base_uris
from le_transport.testing import VirtualClock

from ._harness import Target, run_async
from .strategies import hostile_host, json_values, near_json_bytes, secret_values, valid_hosts

__all__ = ["TARGETS"]

ACCOUNT = "12345678"
# Generous: the whole exchange (server start, schedule, teardown) takes milliseconds.
_BOUND = 10.0

_CONTROL = frozenset(chr(c) for c in range(0x20)) | {"\x7f"}

Answer = tuple[int, dict[str, str], bytes]


# -- a scripted loopback server ---------------------------------------------------------------


async def _with_server(
    answers: dict[str, Answer], body: Callable[[str], Awaitable[None]]
) -> list[str]:
    """Serve ``answers`` (by the last path segment) on loopback; run ``body(host)``.

    Returns the paths the server was asked for. Anything unscripted gets a 404.
    """
    asked: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        status, headers, payload = answers.get(request.path.rsplit("/", 1)[-1], (404, {}, b""))
        return web.Response(status=status, headers=headers, body=payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await body(f"127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()
    return asked


def _engine(domains: Any, auth: Any = None) -> Engine:
    return Engine(
        domains,
        scheme="http",
        clock=VirtualClock(),
        auth=auth,
        retry=RetryPolicy(),
    )


def _headers(value: Any) -> dict[str, str]:
    return {k: v for k, v in value if not (set(k) | set(v)) & _CONTROL and k.isascii()}


_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["Retry-After", "Set-Cookie", "Content-Type", "X-Junk"]),
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["1", "0", "Session_id=abc; Path=/", "application/json"]),
        ),
    ),
    max_size=3,
).map(_headers)
_STATUS = st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 403, 404, 429, 451, 500, 503])


def _assert_credentials_sane(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        bad = (set(name) | set(value)) & _CONTROL
        assert not bad, f"header {name!r} carries control characters from the server's answer"


# -- the Domain API ---------------------------------------------------------------------------


def _base_uri_entries() -> st.SearchStrategy[Any]:
    host = st.one_of(valid_hosts(), hostile_host(), json_values())
    service = st.one_of(st.sampled_from(["agentVep", "facadeMsg", "idp"]), json_values())
    entry = st.fixed_dictionaries(
        {"service": service, "baseURI": host}, optional={"account": st.text(max_size=8)}
    )
    return st.one_of(st.lists(st.one_of(entry, json_values()), max_size=6), json_values())


def _csds_payloads() -> st.SearchStrategy[Any]:
    return st.one_of(st.fixed_dictionaries({"baseURIs": _base_uri_entries()}), json_values())


def check_csds_parse(payload: Any) -> None:
    """parse_base_uris maps each service to a host that validate_host accepts unchanged, or to
    the HostileHostError to raise for it; or it raises DomainResolutionError."""
    try:
        entries = parse_base_uris(payload, account=ACCOUNT)
    except DomainResolutionError:
        return
    for service, entry in entries.items():
        assert isinstance(service, str)
        if isinstance(entry, HostileHostError):
            continue
        assert validate_host(entry, service=service) == entry


def check_csds_answer(answer: Answer) -> None:
    """Whatever the Domain API answers, resolve() returns a valid host or raises a
    TransportError (DomainResolutionError, UnknownServiceError, HostileHostError), and the
    engine sends nothing to a host the answer named unless it is valid."""

    async def run() -> None:
        async def body(host: str) -> None:
            domains = CsdsDomains(ACCOUNT, csds_host=host, scheme="http")
            async with _engine(domains):
                try:
                    resolved = await domains.resolve("agentVep")
                except TransportError:
                    return
                assert validate_host(resolved) == resolved

        await _with_server({"baseURI.json": answer}, body)

    run_async(run, _BOUND)


@st.composite
def _csds_answers(draw: st.DrawFn) -> Answer:
    status = draw(_STATUS)
    if draw(st.booleans()):
        body = json.dumps(draw(_csds_payloads())).encode()
    else:
        body = draw(near_json_bytes())
    return status, draw(_HEADERS), body


# -- login and refresh ------------------------------------------------------------------------

_SESSION_TTL = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["28800000", "-1", "1e999", "0"]),
    json_values(),
)


@st.composite
def _login_payloads(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(near_json_bytes())
    fields: dict[str, st.SearchStrategy[Any]] = {
        "bearer": st.one_of(st.text(max_size=40), secret_values(), json_values()),
        "csrf": st.one_of(st.text(max_size=20), json_values()),
        "wsuk": st.text(max_size=20),
        "sessionTTl": _SESSION_TTL,
        "config": st.one_of(
            st.fixed_dictionaries({"userId": st.one_of(st.text(), st.integers(), json_values())}),
            json_values(),
        ),
        "csdsCollectionResponse": _csds_payloads(),
    }
    payload = {k: draw(s) for k, s in fields.items() if draw(st.booleans())}
    # NaN and Infinity are what a sloppy server emits; json.loads accepts them.
    return json.dumps(payload).encode()


@st.composite
def _login_answers(draw: st.DrawFn) -> Answer:
    return draw(_STATUS), draw(_HEADERS), draw(_login_payloads())


_GOOD_LOGIN: Answer = (
    200,
    {"Set-Cookie": "Session_id=fuzz-session; Path=/"},
    json.dumps({"bearer": "fuzz-bearer", "csrf": "fuzz-csrf", "sessionTTl": "28800000"}).encode(),
)


def _login_check(answers: dict[str, Answer], *, refresh: bool) -> None:
    async def run() -> None:
        async def body(host: str) -> None:
            domains = StaticDomains({"agentVep": host})
            auth = UserLogin(
                ACCOUNT,
                "agent",
                "fuzz-password",
                domains=domains,
                keepalive=False,
                logout_on_close=False,
            )
            async with _engine(domains, auth) as engine:
                try:
                    creds = await engine.login()
                    if refresh:
                        assert isinstance(await auth.refresh(), bool)
                        creds = await engine.login()
                except TransportError:
                    return
                _assert_credentials_sane(dict(creds.headers))

        await _with_server(answers, body)

    run_async(run, _BOUND)


def check_login_answer(answer: Answer) -> None:
    """Whatever the Login Service answers to a login, the provider yields credentials whose
    headers carry no control character, or raises a TransportError; nothing hangs."""
    _login_check({"login": answer}, refresh=False)


def check_refresh_answer(answer: Answer) -> None:
    """Whatever the Login Service answers to a refresh, refresh() returns a bool (falling back
    to a login on a 401) or raises a TransportError; nothing hangs."""
    _login_check({"login": _GOOD_LOGIN, "refresh": answer}, refresh=True)


# -- OAuth2 and consumer tokens ---------------------------------------------------------------


def _jwt_with(claims: Any) -> str:
    def seg(v: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.c2ln"


def _jwts() -> st.SearchStrategy[str]:
    exp = st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        st.booleans(),
        st.none(),
    )
    claims = st.one_of(st.fixed_dictionaries({"exp": exp}), json_values())
    return st.one_of(
        claims.map(_jwt_with),
        st.text(max_size=80),
        st.lists(st.text(alphabet="ABCab012-_=", max_size=20), min_size=1, max_size=4).map(
            ".".join
        ),
    )


@st.composite
def _token_answers(draw: st.DrawFn) -> tuple[str, Answer]:
    kind = draw(st.sampled_from(["sentinel", "consumer"]))
    field = "access_token" if kind == "sentinel" else "jwt"
    if draw(st.integers(0, 2)) == 0:
        body = draw(near_json_bytes())
    else:
        payload: dict[str, Any] = {}
        if draw(st.booleans()):
            payload[field] = draw(st.one_of(_jwts(), json_values()))
        if draw(st.booleans()):
            payload["expires_in"] = draw(_SESSION_TTL)
        body = json.dumps(payload).encode()
    return kind, (draw(_STATUS), draw(_HEADERS), body)


def check_token_answer(case: tuple[str, Answer]) -> None:
    """Whatever Sentinel or the consumer IdP answers, the provider yields credentials whose
    headers carry no control character, or raises a TransportError; nothing hangs."""
    kind, answer = case

    async def run() -> None:
        async def body(host: str) -> None:
            domains = StaticDomains({"sentinel": host, "idp": host})
            auth: Any = (
                SentinelClientCredentials(ACCOUNT, "client", "fuzz-secret", domains=domains)
                if kind == "sentinel"
                else ConsumerJwt(ACCOUNT, domains=domains)
            )
            async with _engine(domains, auth) as engine:
                try:
                    creds = await engine.login()
                except TransportError:
                    return
                _assert_credentials_sane(dict(creds.headers))

        await _with_server({"token": answer, "signup": answer}, body)

    run_async(run, _BOUND)


def check_jwt_expiry(token: str) -> None:
    """jwt_expiry returns a finite number or None for any string; it never raises."""
    exp = jwt_expiry(token)
    assert exp is None or (isinstance(exp, float) and exp == exp and abs(exp) != float("inf"))


# -- the OAuth1 signer ------------------------------------------------------------------------

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%")


@st.composite
def _signer_inputs(draw: st.DrawFn) -> tuple[tuple[str, str, str, str], str, URL, str, str]:
    keys = (
        draw(st.text(min_size=1, max_size=30)),
        draw(secret_values()),
        draw(st.text(min_size=1, max_size=30)),
        draw(secret_values()),
    )
    method = draw(st.sampled_from(["GET", "POST", "put", "DELETE", "PATCH"]))
    path = "/" + "/".join(draw(st.lists(st.text(max_size=10), max_size=4)))
    query = draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4))
    url = URL.build(
        scheme=draw(st.sampled_from(["http", "https"])),
        host=draw(st.sampled_from(["va.example", "127.0.0.1", "Va.Example"])),
        port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        path=path,
    ).with_query(query)
    nonce = draw(st.text(max_size=40))
    timestamp = draw(st.one_of(st.integers(0, 2**40).map(str), st.text(max_size=12)))
    return keys, method, url, nonce, timestamp


def check_oauth1_signer(case: tuple[tuple[str, str, str, str], str, URL, str, str]) -> None:
    """For any key, URL, nonce and timestamp the signer returns one header line whose values
    are all percent-encoded (no header injection), deterministic for a given nonce and
    timestamp, carrying neither secret; its repr shows none of the four values."""
    (app_key, secret, token, token_secret), method, url, nonce, timestamp = case
    signer = OAuth1Signer(app_key, Secret(secret), token, Secret(token_secret))
    header = signer.header(method, url, nonce=nonce, timestamp=timestamp)
    assert header == signer.header(method, url, nonce=nonce, timestamp=timestamp)
    assert header.startswith("OAuth ")
    assert not set(header) & _CONTROL
    params = dict(p.split("=", 1) for p in header[len("OAuth ") :].split(", "))
    assert sorted(params) == [
        "oauth_consumer_key",
        "oauth_nonce",
        "oauth_signature",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_token",
        "oauth_version",
    ]
    for value in params.values():
        assert value.startswith('"')
        assert value.endswith('"')
        assert set(value[1:-1]) <= _UNRESERVED, value
    assert secret not in header
    assert token_secret not in header
    # The repr must not depend on the four values at all. A substring check flagged values
    # that happen to occur in the repr's fixed text ("acce" in "access_token=***").
    assert repr(signer) == repr(OAuth1Signer("k-1", Secret("s-2"), "t-3", Secret("u-4")))


# -- the registry -----------------------------------------------------------------------------

TARGETS: tuple[Target, ...] = (
    Target(
        "csds_parse",
        _csds_payloads(),
        check_csds_parse,
        examples=({"baseURIs": [{"service": "agentVep", "baseURI": "example.com\n"}]},),
    ),
    Target(
        "csds_answer",
        _csds_answers(),
        check_csds_answer,
        bound=_BOUND + 5,
        examples=((200, {}, b"[" * 100_000), (200, {}, b'{"baseURIs": 1}')),
    ),
    Target(
        "login_answer",
        _login_answers(),
        check_login_answer,
        bound=_BOUND + 5,
        examples=(
            (200, {}, b"[" * 100_000),
            (200, {}, json.dumps({"bearer": "x\r\nX-Injected: 1"}).encode()),
            (200, {}, json.dumps({"bearer": "ok", "sessionTTl": "NaN"}).encode()),
        ),
    ),
    Target(
        "refresh_answer",
        _login_answers(),
        check_refresh_answer,
        bound=_BOUND + 5,
        examples=((401, {}, b""), (200, {}, b"[" * 100_000)),
    ),
    Target(
        "token_answer",
        _token_answers(),
        check_token_answer,
        bound=_BOUND + 5,
        examples=(
            ("sentinel", (200, {}, b"[" * 100_000)),
            ("consumer", (200, {}, json.dumps({"jwt": "a\nb"}).encode())),
        ),
    ),
    Target("jwt_expiry", _jwts(), check_jwt_expiry, examples=(_jwt_with({"exp": 1e308 * 10}),)),
    Target("oauth1_signer", _signer_inputs(), check_oauth1_signer),
)
