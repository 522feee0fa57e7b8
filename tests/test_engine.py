"""The engine as a front door: call validation, per-call overrides, Response, and its stack on a
foreign session. Real loopback servers, virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from le_transport import (
    BackoffPolicy,
    Classifier,
    ConfigurationError,
    Engine,
    EventHooks,
    InvalidRequest,
    Outcome,
    RequestError,
    ResponseDecodeError,
    RetriesExhausted,
    RetryMiddleware,
    RetryPolicy,
    StateEvent,
    TransportError,
)
from le_transport.engine import Response, _decode_reason
from le_transport.policies import Action
from le_transport.providers import StaticDomains
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import exception_messages
from tests.test_retry_middleware import Script

FAST = RetryPolicy(pauses=(0.05, 0.1, 0.15))


async def test_request_json_returns_the_parsed_body_checked_for_type(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def users(request: web.Request) -> web.Response:
        return web.json_response([{"id": 1, "v": request.query["v"]}])

    app = web.Application()
    app.router.add_get("/api/account/123/configuration/le-users/users", users)
    host = await serve(app)
    async with Engine({"accountConfigReadOnly": host}, scheme="http", clock=clock) as engine:
        result = await engine.request_json(
            "GET",
            "accountConfigReadOnly",
            "/api/account/123/configuration/le-users/users",
            params={"v": "6.0"},
            expect=list,
        )
    assert result == [{"id": 1, "v": "6.0"}]


async def test_request_json_of_a_204_is_none_not_a_decode_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A DELETE answered 204 No Content raised ResponseDecodeError ("expected a JSON body,
    got an empty body") after it had succeeded: a caller could take it for a failure and
    send it again. A 200 with an empty body is still the server's mistake."""
    deleted: list[str] = []

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.path)
        return web.Response(status=204)

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_delete("/x", delete)
    app.router.add_get("/empty", empty)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        assert await engine.request_json("DELETE", "svc", "/x") is None
        with pytest.raises(ResponseDecodeError, match="empty body"):
            await engine.request_json("DELETE", "svc", "/x", expect=dict)
        with pytest.raises(ResponseDecodeError, match="empty body; status 200"):
            await engine.request_json("GET", "svc", "/empty")
    assert deleted == ["/x", "/x"]


async def test_post_json_body_reaches_the_server_on_every_attempt(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503, 503, 200)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        resp = await engine.request("POST", "svc", "/x", json={"a": 1}, idempotent=True)
    assert resp.status == 200
    assert [json.loads(b) for b in script.bodies] == [{"a": 1}] * 3


async def test_per_call_retry_deadline_and_attempt_timeout_override_the_engine_policy(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x", retry=RetryPolicy(pauses=(1.0,)))
        assert script.hits == 2
        assert clock.now() == 1.0
    assert engine.retry == RetryPolicy()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("deadline", -1),
        ("deadline", 0),
        ("deadline", float("nan")),
        ("deadline", "30"),
        ("attempt_timeout", -1),
        ("attempt_timeout", float("inf")),
        ("attempt_timeout", True),
    ],
)
async def test_a_bad_per_call_deadline_or_attempt_timeout_is_the_calls_argument_named(
    clock: VirtualClock, option: str, value: object
) -> None:
    """It was a ConfigurationError about 'RetryPolicy.deadline', a field the caller never
    touched; the call's other bad arguments are InvalidRequests naming the argument."""
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=f"^{option} must be") as info:
            await engine.request("GET", "svc", "/x", **{option: value})  # type: ignore[arg-type]
    assert "RetryPolicy" not in str(info.value)


@pytest.mark.parametrize(
    ("method", "path", "match"),
    [
        ("GET", "x", "absolute path"),
        ("GET", "//evil.example/x", "absolute path"),
        ("GET", "/x?token=1", "query parameters"),
        ("GET", "/x y", "whitespace"),
        ("G E T", "/x", "method"),
        ("", "/x", "method"),
    ],
)
async def test_malformed_calls_raise_invalid_request_before_anything_is_sent(
    method: str, path: str, match: str, serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(200)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=match):
            await engine.request(method, "svc", path)
    assert script.hits == 0


async def test_a_refused_path_is_described_never_shown(clock: VirtualClock) -> None:
    # The refusal says what was wrong and what was given (its kind and length), never the
    # path itself: a UMS path missing its leading '/' carries the bearer, a URL's path segment
    # may hold a token, a query or a fragment a credential.
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        path = f"ws_api/account/1/messaging/brand/{SECRET_ISH}"
        with pytest.raises(InvalidRequest, match="absolute path") as info:
            await engine.request("GET", "svc", path)
        assert SECRET_ISH not in str(info.value)
        assert f"a str of {len(path)} characters (not shown)" in str(info.value)
        with pytest.raises(InvalidRequest, match="got a NoneType"):
            await engine.request("GET", "svc", None)  # type: ignore[arg-type]
        for path in (f"api/x?access_token={SECRET_ISH}", f"api/x#token={SECRET_ISH}"):
            with pytest.raises(InvalidRequest, match="not shown") as info:
                await engine.request("GET", "svc", path)
            assert SECRET_ISH not in str(info.value)


SECRET_ISH = "s3cr3t-in-a-bad-argument"


def _nested(depth: int) -> list[object]:
    value: list[object] = [SECRET_ISH]
    for _ in range(depth):
        value = [value]
    return value


class _SlowDomains(StaticDomains):
    """A provider the engine cannot know answers at once: a call's deadline bounds its wait."""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"params": {"a": {"nested": SECRET_ISH}}},
        {"params": {"flag": True}},
        {"params": {"access_token": SECRET_ISH.encode()}},
        {"headers": {"X-Token": 12345}},
        {"headers": {1: SECRET_ISH}},
        {"headers": {"X-Token": f"{SECRET_ISH}\r\nInjected: 1"}},
        {"json": {"a": object()}},
        {"json": {"ratio": float("nan")}},
        {"json": _nested(100_000)},
        {"data": 5},
        {"retry": 5},
        {"idempotent": "yes"},
    ],
    ids=[
        "nested-param",
        "bool-param",
        "bytes-param",
        "int-header-value",
        "int-header-name",
        "crlf-header",
        "unserialisable-json",
        "nan-json",
        "json-nested-too-deep",
        "int-data",
        "retry-not-a-policy",
        "idempotent-not-a-bool",
    ],
)
@pytest.mark.parametrize("timed", [False, True], ids=["no-deadline", "deadline"])
async def test_a_bad_argument_is_invalid_request_before_anything_is_sent_and_not_shown(
    kwargs: dict[str, object], timed: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    # With a deadline and a provider that may wait, the call's clock starts before the chain
    # runs: that must not make a refused argument pass for an error from inside the chain.
    script = Script(200)
    host = await serve(script.app())
    domains = _SlowDomains({"svc": host}) if timed else StaticDomains({"svc": host})
    retry = attrs.evolve(FAST, deadline=30.0) if timed else FAST
    async with Engine(domains, scheme="http", clock=clock, retry=retry) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.request("POST", "svc", "/x", **kwargs)  # type: ignore[arg-type]
    assert script.hits == 0
    # The refused value may be a credential: neither the message nor anything chained to it
    # (aiohttp's and yarl's own errors repeat it) shows it.
    assert not any(SECRET_ISH in m for m in exception_messages(refused.value))
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None


def _answer(body: bytes) -> Response:
    return Response(200, CIMultiDictProxy(CIMultiDict()), body, "GET", "http://h/x", "svc")


@pytest.mark.parametrize(
    ("body", "read"),
    [
        (b'{"token": "' + SECRET_ISH.encode() + b'"\xff', lambda r: r.text()),
        (b'{"token": "' + SECRET_ISH.encode() + b'", oops}', lambda r: r.json()),
    ],
    ids=["not-utf-8", "not-json"],
)
def test_an_unreadable_body_is_a_decode_error_with_nothing_of_it_chained(
    body: bytes, read: Callable[[Response], object]
) -> None:
    # The decoder's own error holds the whole body (UnicodeDecodeError.object,
    # JSONDecodeError.doc), which may hold a credential: it is neither cause nor context.
    with pytest.raises(ResponseDecodeError) as info:
        read(_answer(body))
    assert info.value.__context__ is None
    assert not any(SECRET_ISH in m for m in exception_messages(info.value))


def _typed(body: bytes, content_type: str) -> Response:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
    return Response(200, headers, body, "GET", "http://h/x", "svc")


def test_text_reads_the_charset_the_answer_names() -> None:
    """aiohttp's text() honours the charset; ours decoded UTF-8 whatever the answer said, and
    an ISO-8859-1 answer was a ResponseDecodeError."""
    latin = _typed("café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert latin.text() == "café"
    with pytest.raises(ResponseDecodeError, match="not valid utf-8"):
        latin.text("utf-8")  # the caller's choice wins
    quoted = _typed("café".encode("utf-16"), 'text/plain; charset="utf-16"')
    assert quoted.text() == "café"
    assert _typed(b"plain", "text/plain").text() == "plain"  # none named: UTF-8


@pytest.mark.parametrize("charset", ["no-such-codec", "binary", "rot13", "base64", ""])
def test_a_charset_that_is_no_text_encoding_is_read_as_utf_8(charset: str) -> None:
    """As aiohttp does: a charset Python cannot decode text with is the server's slip, and
    the body is most likely UTF-8."""
    assert _typed("Zoë".encode(), f"text/plain; charset={charset}").text() == "Zoë"


@pytest.mark.parametrize(
    ("charset", "says"),
    [
        ("us-ascii", r"not valid us-ascii: ordinal not in range\(128\)"),
        ("undefined", r"not valid undefined \(UnicodeError\)"),
        # A bare UnicodeError up to Python 3.12, a UnicodeDecodeError whose reason quotes a
        # code point of the body ("Invalid extended code point '123'") from 3.13.
        ("punycode", r"not valid punycode \(Unicode(Decode)?Error\);"),
    ],
)
def test_a_body_the_named_charset_cannot_decode_is_a_decode_error(charset: str, says: str) -> None:
    """A bare UnicodeError escaped from some codecs, its text quoting the body; a codec's
    reason is shown only when it is one of the standard codecs' fixed phrases."""
    body = b'{"token": "' + SECRET_ISH.encode() + b'{"}'
    if charset == "us-ascii":
        body += "é".encode()
    answer = _typed(body, f"text/plain; charset={charset}")
    with pytest.raises(ResponseDecodeError, match=says) as info:
        answer.text()
    assert info.value.__context__ is None
    assert not any(SECRET_ISH in m for m in exception_messages(info.value))
    assert "123" not in str(info.value)


def test_a_decode_reason_that_may_quote_the_body_is_said_by_its_type() -> None:
    quoting = UnicodeDecodeError("x-codec", b"\x01secret", 0, 1, "bad byte 's' in 'secret'")
    assert _decode_reason(quoting) == " (UnicodeDecodeError)"
    fixed = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert _decode_reason(fixed) == ": invalid start byte"


@pytest.mark.parametrize(
    "charset", ["iso-8859-1", "latin-1", "us-ascii", "binary", "utf-16", "unicode_escape"]
)
def test_json_is_read_as_utf_8_whatever_charset_the_answer_names(charset: str) -> None:
    """RFC 8259: JSON is UTF-8. Read in the named charset, a latin-1 label over UTF-8 JSON
    turned "Zoë Müller" into "ZoÃ« MÃ¼ller" without an error, and others failed."""
    answer = _typed('{"name": "Zoë Müller"}'.encode(), f"application/json; charset={charset}")
    assert answer.json() == {"name": "Zoë Müller"}


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b"NaN", float),
        (b"-Infinity", float),
        (b'{"rate": Infinity}', dict),
        (b"[1e400]", list),
        (b"1e400", float),
    ],
)
def test_json_refuses_non_finite_numbers_as_not_json(body: bytes, expect: type) -> None:
    """Python's parser takes NaN and Infinity (not JSON) and reads 1e400 as inf: each passed
    ``expect=float`` and reached the caller's arithmetic, though the engine refuses
    non-finite numbers on the way out."""
    with pytest.raises(ResponseDecodeError, match="not valid JSON"):
        _answer(body).json(expect)
    # Numbers a float holds are read as before.
    assert _answer(b'{"rate": 1.5e300, "n": -0.0}').json(dict) == {"rate": 1.5e300, "n": -0.0}


def test_json_ignores_a_leading_byte_order_mark() -> None:
    """RFC 8259 lets a parser ignore a BOM; a body starting with one was a decode error."""
    assert _answer('\ufeff{"name": "Zoë"}'.encode()).json(dict) == {"name": "Zoë"}
    with pytest.raises(ResponseDecodeError):
        _answer('{"a": 1}\ufeff'.encode()).json()  # anywhere else it is no JSON


def test_a_bad_encoding_or_expected_type_is_invalid_request() -> None:
    answer = _answer(b"[]")
    with pytest.raises(InvalidRequest, match="not a text encoding"):
        answer.text("no-such-codec")
    with pytest.raises(InvalidRequest, match="expect must be a type"):
        answer.json("list")  # type: ignore[call-overload]


async def test_request_json_refuses_a_bad_expected_type_before_sending(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(200)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="expect must be a type"):
            await engine.request_json("GET", "svc", "/x", expect="list")  # type: ignore[call-overload]
    assert script.hits == 0


async def test_json_and_data_together_are_refused(clock: VirtualClock) -> None:
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="json= or data="):
            await engine.request("POST", "svc", "/x", json={}, data=b"x")


async def test_an_engine_that_is_not_started_or_closed_says_so(clock: VirtualClock) -> None:
    engine = Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock)
    with pytest.raises(TransportError, match="not started"):
        await engine.request("GET", "svc", "/x")
    async with engine:
        pass
    with pytest.raises(TransportError, match="closed"):
        await engine.start()


def test_engine_configuration_is_checked_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="scheme"):
        Engine({"svc": "h"}, scheme="ftp")
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        Engine({"svc": "h"}, max_body_bytes=0)


def test_engine_wall_clock_must_be_a_function() -> None:
    with pytest.raises(ConfigurationError, match=r"Engine\.wall_clock must be"):
        Engine({"svc": "h"}, wall_clock=1_000_000_000.0)  # type: ignore[arg-type]
    wall = lambda: 1_000_000_000.0  # noqa: E731
    assert Engine({"svc": "h"}, wall_clock=wall).wall_clock is wall
    assert Engine({"svc": "h"}).wall_clock is time.time


#: The injected wall clock's time, years from the real one: only it can make the date 20 s.
_WALL = 1_000_000_000.0


@contextlib.asynccontextmanager
async def _serve_503_without_date(hits: list[str]) -> AsyncIterator[str]:
    """A loopback server answering every request 503 with a ``Retry-After`` HTTP-date 20 s
    after :data:`_WALL` and no ``Date`` header (aiohttp's server always adds one); yields its
    ``host:port``."""
    retry_at = email.utils.formatdate(_WALL + 20, usegmt=True)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            hits.append(head.split(b" ", 2)[1].decode())
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\n"
                + f"Retry-After: {retry_at}\r\n".encode()
                + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_the_engines_wall_clock_dates_a_retry_after_without_a_date_for_calls_and_sockets(
    clock: VirtualClock,
) -> None:
    # An HTTP-date Retry-After with no Date to measure it from is measured from the wall clock:
    # the engine's, injected like its clock, for its calls (the retry middleware) and for its
    # sockets' upgrades (the dialer) alike. Measured from time.time it would be long past.
    hits: list[str] = []
    states: list[StateEvent] = []
    async with (
        _serve_503_without_date(hits) as host,
        Engine(
            {"svc": host},
            scheme="http",
            clock=clock,
            wall_clock=lambda: _WALL,
            retry=RetryPolicy(pauses=(0.05,)),
            hooks=EventHooks(on_state=[states.append]),
        ) as engine,
    ):
        with pytest.raises(RetriesExhausted) as failed:
            await engine.request("GET", "svc", "/x", idempotent=True)
        assert [a.pause for a in failed.value.attempts] == [20.0, None]
        options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0))
        ws = await engine.websocket("svc", "/ws", options=options)
        with pytest.raises(TimeoutError):
            await ws.wait_open(timeout=1)
        await ws.close()
    reconnecting = [e.details["in_seconds"] for e in states if e.name == "reconnecting"]
    assert reconnecting == [20.0]
    assert hits == ["/x", "/x", "/ws"]


async def test_the_engines_stack_works_on_a_foreign_session(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503, 200)
    host = await serve(script.app())
    engine = Engine({"svc": host}, scheme="http", clock=clock)
    async with (
        aiohttp.ClientSession(
            middlewares=engine.middlewares, timeout=aiohttp.ClientTimeout(total=None)
        ) as session,
        session.get(f"http://{host}/x") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["hit"] == 2
    assert clock.now() == 5.0
    assert any(isinstance(mw, RetryMiddleware) for mw in engine.middlewares)


async def test_a_response_is_complete_and_its_repr_is_safe(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"Set-Cookie": "s=cookie-VALUE-42"})

    host = await serve(Script(answer).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.ok
    assert resp.text() == '{"ok": true}'
    assert resp.json(dict) == {"ok": True}
    assert resp.service == "svc"
    assert resp.method == "GET"
    assert "cookie-VALUE-42" not in repr(resp)
    assert repr(resp).startswith("Response(status=200, method='GET'")


async def test_the_demo_shapes_hold_503_twice_then_ok_and_404_once(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """What the README promises a user reads: two retry warnings, then a 404 warning."""
    caplog.set_level(logging.INFO, logger="le_transport")
    flaky = Script(503, 503, 200)
    missing = Script(404)
    app = web.Application()
    app.router.add_get("/flaky", flaky.handle)
    app.router.add_get("/missing", missing.handle)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        assert (await engine.request("GET", "svc", "/flaky")).status == 200
        with pytest.raises(TransportError):
            await engine.request("GET", "svc", "/missing")
    messages = [r.getMessage() for r in caplog.records if r.name == "le_transport.retry"]
    assert len(messages) == 3
    assert "attempt 1/4 failed with 503; retrying in 0.05 s" in messages[0]
    assert "attempt 2/4 failed with 503; retrying in 0.1 s" in messages[1]
    assert "404 is not retryable" in messages[2]


def test_readme_policy_examples_hold() -> None:
    assert RetryPolicy().pauses == (5.0, 10.0, 15.0)
    assert RetryPolicy(pauses=(0.05, 0.1, 0.15)).max_attempts == 4
    policy = RetryPolicy(jitter=0.1, retry_after_ceiling=30, attempt_timeout=10, deadline=60)
    assert policy.deadline == 60
    custom = RetryPolicy(
        classifier=Classifier(retry_statuses={429, 409}, final_statuses={451, 501})
    )
    assert custom.decide(1, Outcome.response(409), idempotent=True).action is Action.RETRY
    relogin = BackoffPolicy.relogin()
    assert [relogin.base_delay(n) / 60 for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 16, 16]
    assert relogin.bounds(1) == pytest.approx((96.0, 144.0))
    assert min(relogin.delay(n, 0.0) for n in range(1, 10)) >= 15.0
    reconnect = BackoffPolicy.reconnect(max_attempts=10)
    assert reconnect.base_delay(1) == 1.0
    assert reconnect.base_delay(20) == 120.0


@pytest.mark.parametrize(
    ("location", "says"),
    [("/loop", "redirects in a loop"), ("ftp://elsewhere.example/x", "cannot be followed")],
    ids=["loop", "not-http"],
)
async def test_a_redirect_that_cannot_be_followed_is_logged_and_shows_no_query_secret(
    location: str,
    says: str,
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp follows redirects after the middleware chain, so these failures reached the
    # caller unlogged, as "the request could not be made", chained to aiohttp's error whose
    # text is the whole URL, api_key included.
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)

    app = web.Application()
    app.router.add_get("/loop", redirect)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with (
            caplog.at_level(logging.WARNING, logger="le_transport"),
            pytest.raises(RequestError, match=says) as info,
        ):
            await engine.request("GET", "svc", "/loop", params={"api_key": SECRET_ISH})
    assert not any(SECRET_ISH in m for m in exception_messages(info.value))
    assert any(says in r.getMessage() for r in caplog.records)
    assert info.value.attempts, "the hops that were made are recorded"
