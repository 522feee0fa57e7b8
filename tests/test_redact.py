"""Redaction: no secret reaches a log record, an exception's str/repr, or a Response's repr.

Unit tests of :mod:`le_transport._redact`, then end-to-end calls that put credentials in every
place LiveEngage puts them (Authorization and Cookie headers, token-like query parameters, the
UMS socket's ``/brand/<bearer>`` path, auth endpoints' bodies, JWTs in text) and scan every
record, its args and its ``extra`` fields, and every error, for the values.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from le_transport import Engine, EventHooks, RetryPolicy, TransportError
from le_transport._redact import (
    REDACTED,
    Secret,
    body_excerpt,
    is_auth_path,
    is_secret_name,
    redact_headers,
    redact_json,
    redact_path,
    redact_text,
    redact_url,
)
from le_transport.testing import VirtualClock
from tests.bounded_work import assert_bounded_work
from tests.conftest import ServerFactory

BEARER = "brr-7f3a9c21d4e8b6f0"
TOKEN = "tok-19e2c8a7f6d5b4a3"
COOKIE = "sess-5c4b3a2918273645"
PASSWORD = "pw-hunter2-0a1b2c3d"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNlY3JldA"
SECRETS = (BEARER, TOKEN, COOKIE, PASSWORD, JWT)
FAST = RetryPolicy(pauses=(0.05, 0.1, 0.15))


# -- unit ---------------------------------------------------------------------------------


def test_secret_repr_and_str_hide_the_value() -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in repr(secret)
    assert PASSWORD not in str(secret)
    assert PASSWORD not in f"{secret}"
    assert PASSWORD not in repr([secret, {"p": secret}])
    assert secret.reveal() == PASSWORD
    assert Secret(secret) == secret


def test_secret_refuses_pickling_and_non_strings() -> None:
    import pickle

    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(Secret(PASSWORD))
    with pytest.raises(TypeError, match="must be a str"):
        Secret(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "authorization",
        "Cookie",
        "Set-Cookie",
        "X-CSRF-Token",
        # A custom endpoint's own credential headers, known by their names.
        "X-Auth-Token",
        "X-Access-Token",
        "X-Session-Id",
        "X-Partner-Key",
        "X-Client-Secret",
    ],
)
def test_credential_headers_are_redacted(name: str) -> None:
    assert redact_headers({name: TOKEN, "Accept": "application/json"}) == {
        name: REDACTED,
        "Accept": "application/json",
    }
    assert redact_headers([(name, TOKEN)]) == {name: REDACTED}


@pytest.mark.parametrize(
    "name",
    [
        # What a log needs to say why a credential was refused, or how an answer was made.
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Content-Type",
        "Retry-After",
        "Keep-Alive",
        "Accept-Encoding",
        "X-Request-Id",
    ],
)
def test_other_headers_are_shown(name: str) -> None:
    assert redact_headers({name: "Bearer error=invalid_token"}) == {
        name: "Bearer error=invalid_token"
    }


@pytest.mark.parametrize(
    "param",
    ["access_token", "token", "password", "client_secret", "csrf", "jwt", "sessionId", "appKey"],
)
def test_token_like_query_params_are_redacted(param: str) -> None:
    url = redact_url(f"https://va.liveperson.net/api/x?{param}={TOKEN}&v=2")
    assert TOKEN not in url
    assert url == f"https://va.liveperson.net/api/x?{param}={REDACTED}&v=2"


@pytest.mark.parametrize(
    "value",
    [
        f"https://cb.example/done?access_token={TOKEN}",  # another URL nested in a value
        f"https://cb.example/done?x=1&token={TOKEN}",
        JWT,  # a token sent under a plain name
        f"Bearer {TOKEN}",  # an auth scheme and its credential
        "Basic dXNlcjpodW50ZXIyMA",  # unpadded base64 (no '=')
        f"access_token:{TOKEN}",  # a name that says secret, then its value
        f"user:alice,access_token:{TOKEN}",  # ... in any pair of the value
        f"status:open password:{TOKEN}",
        f"Bearer\t{TOKEN}",  # any whitespace after the scheme
        "Bearer abcdefghijklmnopqrstuvwxyzABCDEF",  # no digit in it
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyzABCDEF",  # the scheme too
        "user:alice authorization:SSWS abcdefghijklmnopqrstuvwxyzABCDEF",
    ],
)
def test_a_credential_nested_in_a_plain_query_value_is_redacted(value: str) -> None:
    url = redact_url(URL("https://h.example/x").with_query({"redirect_uri": value, "v": "2"}))
    assert TOKEN not in url
    assert JWT not in url
    assert "dXNlcjpodW50ZXIyMA" not in url
    assert "abcdefghijklmnopqrstuvwxyzABCDEF" not in url
    assert url.startswith("https://h.example/x?redirect_uri=")
    assert url.endswith("&v=2")


@pytest.mark.parametrize(
    "value",
    [
        "token-" * 2000 + " x:",
        "a-" * 50_000 + ":",
        "a-" * 50_000 + "=",
        "authorization" * 8000 + ":",
        "a." * 50_000 + "@",
        "bearer " * 20_000,
        "eyJ-" * 25_000,
        "token=" * 16_000,
    ],
    ids=[
        "token-runs",
        "dash-run-colon",
        "dash-run-equals",
        "authorization-run",
        "dots",
        "bearers",
        "jwt-starts",
        "fields-in-a-hidden-value",
    ],
)
def test_redaction_of_a_hostile_value_costs_one_pass(value: str) -> None:
    """Patterns that backtracked into long runs took seconds a value (8 KB: 7 s; 100 KB:
    minutes), on the loop, for every log line or error of a call carrying it. Counted in
    regex steps' stead by what a linear pass allows: well under a second for 100 KB on any
    machine (a quadratic one took 27 s)."""

    def work() -> None:
        redact_url(URL("https://h.example/x").with_query({"q": value}))
        redact_text(value)

    assert_bounded_work(work)


@pytest.mark.parametrize(
    "value",
    [
        "key:asc",
        "author:smith",
        "Basic plan",
        "2.1",
        "a,b~c",
        "sort:desc",
        "token abc",
        "token authentication_failures",  # a word after a scheme's name, no credential
    ],
)
def test_a_plain_query_value_is_shown_as_it_is(value: str) -> None:
    # Scrubbed as free text, "sort=key:asc" showed as "key:***", "q=Basic plan" as "Basic ***".
    url = redact_url(URL("https://h.example/x").with_query({"q": value}))
    assert url == f"https://h.example/x?q={value}"


async def test_a_token_nested_in_a_query_value_reaches_no_log_nor_error(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/x", fail)
    host = await serve(app)
    caplog.set_level(logging.DEBUG, logger="le_transport")
    params = {"redirect_uri": f"https://cb.example/done?access_token={TOKEN}"}
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(TransportError) as info:
            await engine.request("GET", "svc", "/x", params=params)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("le_transport")]
    assert logged
    assert not [m for m in logged if TOKEN in m]
    assert TOKEN not in "".join(traceback.format_exception(info.value))
    assert TOKEN not in str(getattr(info.value, "url", ""))


def test_userinfo_and_brand_bearer_are_removed_from_urls() -> None:
    url = redact_url(
        f"wss://me:{PASSWORD}@va.v.liveperson.net/ws_api/account/1/messaging/brand/{BEARER}?v=3"
    )
    assert PASSWORD not in url
    assert BEARER not in url
    assert url.endswith(f"/messaging/brand/{REDACTED}?v=3")
    assert redact_path(f"/brand/{BEARER}/x") == f"/brand/{REDACTED}/x"
    assert redact_url("http://[::1") == "<unparseable url>"


@pytest.mark.parametrize(
    "path",
    [
        "/api/account/1/login",
        "/api/account/1/refresh",
        "/sentinel/api/account/1/app/token",
        "/oauth2/token",
    ],
)
def test_auth_endpoint_bodies_are_never_shown(path: str) -> None:
    assert is_auth_path(path)
    excerpt = body_excerpt(b'{"bearer": "%s", "csrf": "x"}' % BEARER.encode(), path=path)
    assert BEARER not in excerpt
    assert "auth endpoint" in excerpt


def test_json_bodies_have_credential_keys_replaced() -> None:
    body = b'{"error": "bad", "nested": {"access_token": "%s"}, "list": [{"password": "%s"}]}' % (
        TOKEN.encode(),
        PASSWORD.encode(),
    )
    excerpt = body_excerpt(body, path="/api/x")
    assert "bad" in excerpt
    assert TOKEN not in excerpt
    assert PASSWORD not in excerpt
    assert redact_json({"apiKey": 1, "ok": [2]}) == {"apiKey": REDACTED, "ok": [2]}


def test_free_text_is_scrubbed_of_bearers_jwts_and_key_values() -> None:
    text = (
        f"Authorization: Bearer {BEARER}; token={TOKEN}; got {JWT} and "
        f'password: "{PASSWORD}" at /brand/{BEARER}'
    )
    scrubbed = redact_text(text)
    for secret in SECRETS:
        assert secret not in scrubbed
    assert "Authorization: Bearer ***" in scrubbed


@pytest.mark.parametrize("depth", [10, 900, 5000, 100_000])
def test_deeply_nested_json_gives_an_excerpt_not_an_exception(depth: int) -> None:
    body = b"[" * depth + b'{"token": "%s"}' % TOKEN.encode() + b"]" * depth
    excerpt = body_excerpt(body, path="/api/x", limit=len(body))
    assert TOKEN not in excerpt
    assert excerpt.startswith("[[")


@pytest.mark.parametrize(
    "form",
    [
        "{k}={s}",
        "{k}: {s}",
        "{k} = {s}",
        '"{k}": "{s}"',
        '"{k}":"{s}"',
        "'{k}': '{s}'",  # a Python dict's repr, as logging a dict with %r shows it
        "https://h.example/x?{k}={s}&v=1",
    ],
)
@pytest.mark.parametrize("key", ["password", "access_token", "csrf", "jwt", "client_secret"])
def test_key_value_credentials_are_scrubbed_in_every_quoting(form: str, key: str) -> None:
    text = "before " + form.format(k=key, s=PASSWORD) + " after"
    assert PASSWORD not in redact_text(text)


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", max_size=6),
    st.sampled_from(
        [
            "password",
            "passwd",
            "secret",
            "token",
            "signature",
            "apikey",
            "api_key",
            "key",
            "auth",
            "assertion",
            "sessionid",
            "wsuk",
            "X-Amz-Signature",
            "appKey",
        ]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=6),
    st.sampled_from(["https://h.example/x?{k}={s}&v=1", "url='http://h/x?{k}={s}'", "{k}: {s}"]),
)
def test_what_a_url_hides_free_text_hides(before: str, name: str, after: str, form: str) -> None:
    """Invariant: a value under any name that is_secret_name() hides in a URL is hidden in
    free text too (aiohttp's error messages and text bodies repeat request URLs)."""
    key = before + name + after
    assert is_secret_name(key)
    assert PASSWORD not in redact_url(f"https://h.example/x?{key}={PASSWORD}")
    assert PASSWORD not in redact_text("got " + form.format(k=key, s=PASSWORD) + " back")


def test_long_bodies_are_cut() -> None:
    excerpt = body_excerpt(b"x" * 10_000, limit=50)
    assert len(excerpt) == 51
    assert excerpt.endswith("…")


@given(st.sampled_from(SECRETS), st.text(max_size=40), st.text(max_size=40))
def test_a_jwt_or_bearer_in_any_text_is_scrubbed(secret: str, before: str, after: str) -> None:
    """Invariant: ``Bearer <x>`` and any JWT never survive redact_text, whatever surrounds
    them."""
    scrubbed = redact_text(f"{before} Bearer {secret} {after} {JWT}.")
    assert f"Bearer {secret}" not in scrubbed
    assert JWT not in scrubbed


def test_secret_names_are_matched_loosely() -> None:
    assert is_secret_name("X-Auth-Token")
    assert is_secret_name("oauth_signature")
    assert not is_secret_name("v")
    assert not is_secret_name("skill")


# -- end to end ---------------------------------------------------------------------------


def leaks_in_records(records: list[logging.LogRecord]) -> list[str]:
    """Every place a known secret shows up in the records: message, args, extra, traceback."""
    found: list[str] = []
    for record in records:
        places: dict[str, Any] = dict(vars(record))
        places["message"] = record.getMessage()
        if record.exc_info:
            places["exc_text"] = "".join(traceback.format_exception(*record.exc_info))
        for key, value in places.items():
            text = repr(value) + str(value)
            found.extend(f"{record.name}.{key}: {s}" for s in SECRETS if s in text)
    return found


def leaks_in_error(err: BaseException) -> list[str]:
    """Secrets in the error's traceback, str, repr and attributes, its ``last`` and causes."""
    text = "".join(traceback.format_exception(err))
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        text += repr(e) + str(e) + repr(vars(e))
        text += "".join(repr(a) for a in getattr(e, "attempts", ()))
        todo.extend(x for x in (getattr(e, "last", None), e.__cause__, e.__context__) if x)
    return [s for s in SECRETS if s in text]


async def test_credentials_in_every_place_reach_no_log_error_or_repr(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events: list[Any] = []

    async def flaky(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": f"session {JWT} expired", "jwt": JWT, "detail": f"Bearer {BEARER}"},
            status=503,
            headers={"Set-Cookie": f"session={COOKIE}"},
        )

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"bearer": BEARER, "csrf": TOKEN}, status=401)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"bearer": BEARER}, headers={"Set-Cookie": f"s={COOKIE}"})

    app = web.Application()
    app.router.add_get("/ws_api/account/1/messaging/brand/{bearer}", flaky)
    app.router.add_post("/api/account/1/login", login)
    app.router.add_get("/ok", ok)
    host = await serve(app)
    hooks = EventHooks(on_retry=[events.append], on_giveup=[events.append])
    errors: list[BaseException] = []
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST, hooks=hooks) as engine:
        headers = {"Authorization": f"Bearer {BEARER}", "Cookie": f"session={COOKIE}"}
        with pytest.raises(TransportError) as first:
            await engine.request(
                "GET",
                "svc",
                f"/ws_api/account/1/messaging/brand/{BEARER}",
                params={"access_token": TOKEN, "v": "3"},
                headers=headers,
            )
        errors.append(first.value)
        with pytest.raises(TransportError) as second:
            await engine.request(
                "POST", "svc", "/api/account/1/login", json={"username": "a", "password": PASSWORD}
            )
        errors.append(second.value)
        resp = await engine.request("GET", "svc", "/ok", headers=headers)
        assert BEARER in resp.body.decode()  # the caller gets the real body...
        assert BEARER not in repr(resp)  # ...but its repr does not show it
        assert COOKIE not in repr(resp)
    assert len(caplog.records) >= 4
    assert leaks_in_records(caplog.records) == []
    assert caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text
    for err in errors:
        assert leaks_in_error(err) == []
    assert events
    for event in events:
        assert not [s for s in SECRETS if s in repr(event)]


async def test_an_aiohttp_error_message_with_a_url_is_redacted(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_retry_middleware import free_port

    caplog.set_level(logging.DEBUG)
    host = f"127.0.0.1:{free_port()}"
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        with pytest.raises(TransportError) as info:
            await engine.request("GET", "svc", f"/brand/{BEARER}", params={"token": TOKEN})
    assert leaks_in_error(info.value) == []
    assert leaks_in_records(caplog.records) == []


@pytest.mark.parametrize(
    "text",
    [
        "cannot reach https://agent:{s}@h.example/x",
        "redis://:{s}@127.0.0.1:6379/0 refused",
        "ws://user:{s}@h/ws_api 'wss://{s}@h'",
    ],
)
def test_a_urls_userinfo_is_hidden_in_free_text_as_redact_url_drops_it(text: str) -> None:
    scrubbed = redact_text(text.format(s=PASSWORD))
    assert PASSWORD not in scrubbed
    assert "***@" in scrubbed  # the host after it stays readable
    assert redact_text("write to ops@h.example or mailto:ops@h.example") == (
        "write to ops@h.example or mailto:ops@h.example"
    )


@pytest.mark.parametrize(
    "name", ["sig", "pwd", "pass", "credential", "credentials", "otp", "pin", "Sid"]
)
def test_common_short_credential_names_are_hidden_in_urls_and_in_text(name: str) -> None:
    """sig, pwd, pass...: a custom endpoint's credential under a short name reached logs and
    error messages, where only long names were known."""
    assert is_secret_name(name)
    url = f"https://h.example/x?{name}={PASSWORD}&v=1"
    assert PASSWORD not in redact_url(url)
    assert PASSWORD not in redact_text(f"GET {url} failed")
    assert PASSWORD not in redact_text(f"form {name}={PASSWORD}")


def test_short_names_are_secret_only_as_the_whole_name() -> None:
    for harmless in ("design", "encode", "statusCode", "spin", "passenger", "topic"):
        assert not is_secret_name(harmless), harmless
    # A status code is never hidden: LiveEngage's answers and UMS frames carry one.
    assert not is_secret_name("code")
    assert redact_text('status code: 503, {"code": 404}, ?code=7') == (
        'status code: 503, {"code": 404}, ?code=7'
    )


def test_a_json_excerpt_keeps_numbers_and_text_as_the_server_wrote_them() -> None:
    """The excerpt re-serialised the parsed body: 1.10 became 1.1, 1e3 became 1000.0 and é
    became \\u00e9, so an excerpt no longer matched the body it quoted."""
    body = '{"price": 1.10, "n": 1e3, "big": 123456789012345678901234567890, "who": "café"}'
    assert body_excerpt(body.encode()) == (
        '{"price":1.10,"n":1e3,"big":123456789012345678901234567890,"who":"café"}'
    )
    # A credential behind a JSON escape is still hidden: the parsed value is what is scrubbed.
    escaped = body_excerpt(b'{"note": "Bearer\\u0020%s", "x": 2.50}' % BEARER.encode())
    assert BEARER not in escaped
    assert escaped == '{"note":"Bearer ***","x":2.50}'


@pytest.mark.parametrize(
    "text",
    [
        "url='https://h.example/api?v2.api_key={s}'",
        "{{'X-Auth0-Token': '{s}', 'Accept': 'json'}}",
        "client_id=a&s3.secret_key={s}",
        "config: oauth2-token={s} region=us",
        "tried: 1.https://svc:{s}@h.example/x",
        'refused: api_key2=abc;password="{s}"',  # a secret inside another's hidden value
        "token1: abc/password: {s}",
    ],
)
def test_a_secrets_name_with_a_digit_in_it_still_hides_it(text: str) -> None:
    # Names taken as whole runs of letters only: a digit in the run ("oauth2-token",
    # "v2.api_key") let the value through.
    assert TOKEN not in redact_text(text.format(s=TOKEN))
