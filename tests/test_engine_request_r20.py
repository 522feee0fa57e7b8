"""Engine.request and friends, the Response type and URL building: form values, query
values in what is logged, url_for's service check, accept=, max_body_bytes on a caller's
session, copying and hashing a Response, json(expect=) with the numeric ABCs. Real loopback
servers (the conftest's ``serve``), virtual time."""

from __future__ import annotations

import copy
import logging
import numbers
import pickle
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from le_transport import Engine, InvalidRequest, RetryPolicy
from le_transport._redact import Secret, redact_url
from le_transport.engine import Response
from le_transport.errors import (
    BodyTooLarge,
    ResponseDecodeError,
    ServerStatusError,
)
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: One attempt, no pause: a failed answer is final at once.
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)


def _recording_app(bodies: list[bytes], status: int = 200, body: bytes = b"ok") -> web.Application:
    """Records each request's body; answers a POST with ``status``, anything else 200."""

    async def record(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=status if request.method == "POST" else 200, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


# -- 1. a form body's values that are no text are sent as Python's str() of them -------------


@pytest.mark.parametrize(
    "value",
    [None, True, float("nan"), {"nested": "x"}, Secret("hunter2"), object()],
    ids=["none", "bool", "nan", "dict", "secret", "object"],
)
async def test_a_form_value_that_is_no_text_is_refused_not_sent_as_its_str(
    value: object, serve: ServerFactory, clock: VirtualClock
) -> None:
    """``params={"reason": None}`` is an InvalidRequest ("is None, which is no query value:
    leave the parameter out, or pass ''"); the same value in a form body went out as
    ``reason=None`` (a bool as ``True``, NaN as ``nan``, a dict as its keys, a ``Secret`` as
    ``Secret('***')``, any object as its repr), with the service's credentials."""
    bodies: list[bytes] = []
    host = await serve(_recording_app(bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        for data in ({"reason": value}, [("note", "x"), ("reason", value)]):
            with pytest.raises(InvalidRequest, match=r"data\['reason'\]") as caught:
                await engine.request("POST", "svc", "/form", data=data)  # type: ignore[arg-type]
            assert "hunter2" not in str(caught.value)
            assert "no form value" in str(caught.value) or "Secret" in str(caught.value)
    assert bodies == []


async def test_a_url_encoded_form_data_with_a_none_field_is_refused_too(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A url-encoded ``FormData`` is encoded from its fields with ``str()`` as a mapping is."""
    bodies: list[bytes] = []
    host = await serve(_recording_app(bodies))
    form = aiohttp.FormData({"note": "x"})
    form.add_field("reason", None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest, match=r"data\['reason'\] is None"):
            await engine.request("POST", "svc", "/form", data=form)
    assert bodies == []


async def test_form_values_that_are_text_or_numbers_are_sent_as_before(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    bodies: list[bytes] = []
    host = await serve(_recording_app(bodies))
    data: Any = {"q": "café", "n": 2, "f": 1.5, "tags": ["a", 3]}
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        await engine.request("POST", "svc", "/form", data=data)
        await engine.request("POST", "svc", "/form", data=list(data.items()))
    assert bodies == [b"q=caf%C3%A9&n=2&f=1.5&tags=a&tags=3"] * 2


# -- 2. the redacted URL shows a query value's CR/LF raw: forged log lines --------------------


async def test_a_line_break_in_a_query_value_is_never_written_raw_into_a_log_line_or_error(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A search term from an end user (``params={"q": term}``) goes out percent-encoded
    (``q=x%0D%0A...``), but the URL shown in every log line, error and ``Response.url`` is
    decoded: the CR/LF is written as it is, and the term forges a log line of its own."""
    forged = "x\r\n2026-01-01 00:00:00 INFO le_transport: all calls healthy"
    host = await serve(_recording_app([], status=500, body=b"oops"))
    caplog.set_level(logging.WARNING)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(ServerStatusError) as failed:
            await engine.request("POST", "svc", "/search", params={"q": forged})
        ok = await engine.request("GET", "svc", "/search", params={"q": forged})
    message = str(failed.value)
    assert "\n" not in message
    assert "\r" not in message
    assert "q=x%0D%0A2026-01-01" in message
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("le_transport")]
    assert lines, "the failure is logged"
    assert not any("\n" in line or "\r" in line for line in lines), lines
    assert "\n" not in ok.url
    assert "\r" not in ok.url


def test_redact_url_keeps_what_is_not_printable_encoded_and_secrets_hidden() -> None:
    url = URL("https://h/p").with_query(
        {"q": "café x\r\ny", "a\nb": "c", "access_token": "s3cr\r\net", "u": "a\u2028b\x00"}
    )
    shown = redact_url(url)
    assert shown == ("https://h/p?q=café x%0D%0Ay&a%0Ab=c&access_token=***&u=a%E2%80%A8b%00")
    assert "s3cr" not in shown


# -- 3. url_for blames the library's own StaticDomains for a caller's wrong-typed service -----


@pytest.mark.parametrize("service", [["svc"], {"svc": 1}], ids=["list", "dict"])
async def test_url_for_refuses_a_service_of_the_wrong_type_as_request_does(
    service: object, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``request("GET", ["svc"], "/p")`` is an InvalidRequest ("service must be a str naming a
    service"); ``url_for(["svc"], "/p")`` (what every socket's dialer asks) was a
    ProviderError saying the engine's own StaticDomains "failed in resolve() with TypeError
    ... most likely a bug in the provider", logged at ERROR."""
    caplog.set_level(logging.ERROR)
    async with Engine({"svc": "127.0.0.1:1"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="service must be a str"):
            await engine.url_for(service, "/p")  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 4. accept= that is no collection is taken when it is falsy --------------------------------


@pytest.mark.parametrize("accept", [0, False], ids=["zero", "false"])
async def test_an_accept_that_is_no_collection_of_statuses_is_refused(
    accept: object, serve: ServerFactory, clock: VirtualClock
) -> None:
    """The docstring: ``accept`` takes 4xx statuses; "anything else is an InvalidRequest".
    ``accept=True``, ``accept=404`` and ``accept="404"`` are; a falsy non-collection
    (``0``, ``False``) passed ``if not accept`` and the call was sent."""
    bodies: list[bytes] = []
    host = await serve(_recording_app(bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest, match="accept takes the 4xx statuses"):
            await engine.request("GET", "svc", "/x", accept=accept)  # type: ignore[arg-type]
    assert bodies == []


# -- 5. Engine(session=..., max_body_bytes=...) reads any body whole ---------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_max_body_bytes_holds_on_a_session_of_the_callers(
    chunked: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """``max_body_bytes``: "larger responses raise BodyTooLarge". On a session passed in
    (``Engine(session=...)``, the stack not on it) the engine reads the body itself with an
    unbounded ``resp.read()``: 50 KB came back under a 1 KB limit (any size would: memory
    without bound)."""

    async def big(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"x" * 50_000)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b"y" * 1000)
        await resp.write_eof()
        return resp

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 1000)

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    host = await serve(app)
    async with (
        aiohttp.ClientSession() as session,
        Engine(
            {"svc": host}, scheme="http", clock=clock, session=session, max_body_bytes=1000
        ) as engine,
    ):
        with pytest.raises(BodyTooLarge) as caught:
            await engine.request("GET", "svc", "/big")
        # Within the limit, the same session reads a body whole.
        within = await engine.request("GET", "svc", "/small")
    assert caught.value.limit == 1000
    assert within.body == b"z" * 1000


async def test_a_failed_answer_over_max_body_bytes_on_a_callers_session_is_its_status(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """As the retry middleware judges it: the status, with the start of the body."""

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503, body=b"m" * 50_000)

    app = web.Application()
    app.router.add_get("/down", failing)
    host = await serve(app)
    async with (
        aiohttp.ClientSession() as session,
        Engine(
            {"svc": host}, scheme="http", clock=clock, session=session, max_body_bytes=1000
        ) as engine,
    ):
        with pytest.raises(ServerStatusError) as caught:
            await engine.request("GET", "svc", "/down")
    assert caught.value.status == 503


# -- 6. a Response cannot be copied, pickled or hashed -----------------------------------------


def _response() -> Response:
    headers = CIMultiDictProxy(
        CIMultiDict(
            [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        )
    )
    return Response(200, headers, b'{"a": 1}', "GET", "https://h/x", "svc")


def _same_answer(copied: Response, resp: Response) -> None:
    assert copied == resp
    assert isinstance(copied.headers, CIMultiDictProxy)
    assert list(copied.headers.items()) == list(resp.headers.items())
    assert copied.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert copied.json() == {"a": 1}


def test_a_response_can_be_deep_copied() -> None:
    """A frozen value of bytes already read; deepcopy raised "can't pickle
    multidict._multidict.CIMultiDictProxy objects" (its headers)."""
    resp = _response()
    _same_answer(copy.deepcopy(resp), resp)


def test_a_response_can_be_pickled_as_the_errors_can() -> None:
    """Every TransportError pickles ("an error raised in a worker process reaches its parent
    typed"); the answer of the same call did not."""
    resp = _response()
    _same_answer(pickle.loads(pickle.dumps(resp)), resp)


def test_a_frozen_response_is_hashable_or_says_it_is_not() -> None:
    """attrs.frozen makes a __hash__ that hashes the CIMultiDictProxy: ``hash(resp)`` (a set, a
    dict key, functools.cache) raised ``TypeError: unhashable type:
    'multidict._multidict.CIMultiDictProxy'``. Equal responses hash alike."""
    resp = _response()
    copied = copy.deepcopy(resp)
    assert isinstance(hash(resp), int)
    assert hash(copied) == hash(resp)
    assert len({resp, copied}) == 1


# -- 7. json(expect=...) takes a JSON boolean for an integral number ---------------------------


@pytest.mark.parametrize("expect", [numbers.Integral, numbers.Real], ids=["Integral", "Real"])
def test_a_json_boolean_is_never_an_integral_or_real_number(expect: type) -> None:
    """The docstring: "A JSON true or false is a boolean, never an int or a float";
    ``json(int)`` refuses ``true``, but ``json(numbers.Integral)`` returned True (bool is
    registered under the numeric ABCs, and only ``int`` and ``float`` were excluded)."""
    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
    resp = Response(200, headers, b"true", "GET", "https://h/x", "svc")
    with pytest.raises(ResponseDecodeError, match="boolean"):
        resp.json(expect)


# -- request_json: a success without a body ---------------------------------------------------


@pytest.mark.parametrize("status", [201, 202, 204, 205])
async def test_request_json_returns_none_for_a_success_that_needs_no_body(
    status: int, serve: ServerFactory, clock: VirtualClock
) -> None:
    """A POST answered ``201 Created`` or ``202 Accepted`` with no body succeeded: it was a
    ResponseDecodeError ("expected a JSON body, got an empty body"), read as a failure, and a
    caller sending it again would create the resource twice. Only 204 returned None."""
    bodies: list[bytes] = []
    host = await serve(_recording_app(bodies, status=status, body=b""))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        assert await engine.request_json("POST", "svc", "/things", json={"a": 1}) is None
        with pytest.raises(ResponseDecodeError, match="empty body"):
            await engine.request_json("POST", "svc", "/things", json={"a": 1}, expect=dict)
    assert len(bodies) == 2


async def test_request_json_still_refuses_an_empty_200(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 200 is expected to carry the representation: empty, it is still the decode error."""
    host = await serve(_recording_app([], body=b""))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(ResponseDecodeError, match="empty body"):
            await engine.request_json("GET", "svc", "/things")
