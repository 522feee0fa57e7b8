"""Engine.request's form bodies, the attempt records and a body read on a caller's session:

- An int too long for Python to write as text (``sys.get_int_max_str_digits()``) in a form
  field, alone or in a list, escaped as an ``OverflowError`` from the engine's own check (a
  list) or aiohttp's ``ValueError`` said as "data must be bytes, str, a form mapping...";
  an :class:`InvalidRequest` naming the field, never its value, before anything is sent.
- :class:`AttemptRecord` compared and hashed by identity: two records of the same attempt
  were unequal (so were two Responses or errors carrying them, a copy and its original).
- A multipart form (a mapping or pairs holding a file) with an int or float beside the file
  was refused by aiohttp ("Can not serialize value type"), said as a wrong body type; numbers
  are sent as their text, as in a url-encoded form.
- A body over ``max_body_bytes`` read by the engine on a caller's session (no retry loop)
  raised :class:`BodyTooLarge` with no attempt record of the answer; and the engine's read
  skipped the session's ``on_response_chunk_received`` trace hooks.

Real loopback servers (the conftest's ``serve``), virtual time.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest, RetryPolicy
from le_transport.engine import _multipart_as_sent
from le_transport.errors import AttemptRecord, BodyTooLarge, RetriesExhausted
from le_transport.policies.classify import Outcome, OutcomeKind
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: One attempt, no pause: a failed answer is final at once.
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)

#: An int of 5,001 digits: more than Python writes as text by default (4,300).
HUGE = 10**5000


def _recording_app(bodies: list[tuple[str, bytes]]) -> web.Application:
    """Records each request's Content-Type and body; answers 200."""

    async def record(request: web.Request) -> web.Response:
        bodies.append((request.headers.get("Content-Type", ""), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


# -- 1. an int too long to write as text in a form field ---------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"n": [HUGE]},
        [("n", [HUGE])],
        {"n": ["a", 3, HUGE]},
        {"n": HUGE},
        [("note", "x"), ("n", HUGE)],
        {"f": io.BytesIO(b"abc"), "n": HUGE},
    ],
    ids=["list", "pairs-list", "list-third", "single", "pairs-single", "multipart"],
)
@pytest.mark.parametrize("recover", [False, True], ids=["plain", "recover"])
async def test_an_int_too_long_to_write_as_text_is_refused_naming_its_field(
    data: Any, recover: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """``str()`` of an int past ``sys.get_int_max_str_digits()`` raises ValueError: a list
    holding one escaped the engine's own check as an ``OverflowError`` (``math.isfinite``
    of it); a single one was aiohttp's ValueError, said as "data must be bytes, str...".
    """
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest, match=r"data\['n'\] (is|holds) an int") as caught:
            await engine.request("POST", "svc", "/form", data=data, recover=recover)
    assert "digits" in str(caught.value)
    assert "00000" not in str(caught.value)
    assert bodies == []


async def test_long_ints_python_writes_as_text_are_sent_as_their_digits(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    # 1,001 digits: within the default limit; math.isfinite() of it in a list overflowed.
    long = 10**1000
    data: Any = {"n": long, "m": [long, -long]}
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        await engine.request("POST", "svc", "/form", data=data)
    assert bodies == [
        (
            "application/x-www-form-urlencoded",
            f"n={long}&m={long}&m=-{long}".encode(),
        )
    ]


# -- 2. AttemptRecord is a value ---------------------------------------------------------------


def _record(status: int = 503, pause: float | None = 1.5) -> AttemptRecord:
    return AttemptRecord(2, Outcome.response(status), pause, 10.0)


def test_attempt_records_of_equal_fields_are_equal_and_hash_equal() -> None:
    assert _record() == _record()
    assert hash(_record()) == hash(_record())
    assert len({_record(), _record()}) == 1
    assert _record() != _record(pause=None)
    assert _record() != _record(status=502)
    cut = Outcome.failure(OutcomeKind.CONNECTION_LOST, "CancelledError")
    assert AttemptRecord(1, cut, None, 0.0) == AttemptRecord(1, cut, None, 0.0)


def test_an_attempt_record_is_frozen_and_survives_a_copy_and_a_pickle() -> None:
    record = _record()
    with pytest.raises(AttributeError):
        record.pause = None  # type: ignore[misc]
    assert copy.deepcopy(record) == record
    assert pickle.loads(pickle.dumps(record)) == record
    assert repr(record) == (
        "AttemptRecord(attempt=2, outcome=Outcome(kind=<OutcomeKind.RESPONSE: 'response'>, "
        "status=503, error=None, retry_after=None), pause=1.5, started_at=10.0)"
    )


async def test_the_attempts_of_a_failed_call_equal_those_of_its_pickled_copy(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/down", down)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(RetriesExhausted) as caught:
            await engine.request("GET", "svc", "/down")
    attempts = caught.value.attempts
    assert len(attempts) == 1
    assert pickle.loads(pickle.dumps(caught.value)).attempts == attempts
    assert attempts[0] == AttemptRecord(1, Outcome.response(503), None, attempts[0].started_at)


# -- 4. a body the engine reads on a caller's session ------------------------------------------


def _bodies_app() -> web.Application:
    """``/big`` 50 KB (chunked with ``?chunked=1``), ``/small`` 1 KB (chunked likewise),
    ``/hop`` redirects to ``/big``."""

    async def sized(request: web.Request, body: bytes) -> web.StreamResponse:
        if not request.query.get("chunked"):
            return web.Response(body=body)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for start in range(0, len(body), 500):
            await resp.write(body[start : start + 500])
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        return await sized(request, b"x" * 50_000)

    async def small(request: web.Request) -> web.StreamResponse:
        return await sized(request, b"z" * 1000)

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.rel_url.with_path("/big"))

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    app.router.add_get("/hop", hop)
    return app


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_too_large_on_a_callers_session_carries_the_answers_attempt_record(
    chunked: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """As the retry middleware's BodyTooLarge carries the attempts it ran (the last one the
    answer too large): on a session without the stack no loop ran, and ``attempts`` was
    empty, as if nothing had been sent."""
    host = await serve(_bodies_app())
    query = {"chunked": "1"} if chunked else None
    async with (
        aiohttp.ClientSession() as session,
        Engine(
            {"svc": host}, scheme="http", clock=clock, session=session, max_body_bytes=1000
        ) as engine,
    ):
        with pytest.raises(BodyTooLarge) as caught:
            await engine.request("GET", "svc", "/big", params=query)
        with pytest.raises(BodyTooLarge) as hopped:
            await engine.request("GET", "svc", "/hop", params=query)
    now = clock.now()
    assert caught.value.attempts == (AttemptRecord(1, Outcome.response(200), None, now),)
    assert hopped.value.attempts == (
        AttemptRecord(1, Outcome.response(302), None, now),
        AttemptRecord(2, Outcome.response(200), None, now),
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_callers_trace_hooks_get_the_body_the_engine_reads(
    chunked: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """``on_response_chunk_received`` is fired by aiohttp's ``resp.read()`` with the whole
    body; the engine's own read (``iter_any``, to hold ``max_body_bytes``) skipped it."""
    host = await serve(_bodies_app())
    seen: list[bytes] = []

    async def chunk_received(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        seen.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(chunk_received)
    query = {"chunked": "1"} if chunked else None
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        Engine(
            {"svc": host}, scheme="http", clock=clock, session=session, max_body_bytes=5000
        ) as engine,
    ):
        resp = await engine.request("GET", "svc", "/small", params=query)
    assert resp.body == b"z" * 1000
    assert b"".join(seen) == b"z" * 1000


# -- 3. numbers beside a file in a multipart form ----------------------------------------------


def _parts(body: bytes) -> list[tuple[str, bytes]]:
    """A multipart body's (name, content) parts, in order."""
    boundary = body.split(b"\r\n", 1)[0]
    parts: list[tuple[str, bytes]] = []
    for chunk in body.split(boundary)[1:-1]:
        head, _, content = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        parts.append((name, content))
    return parts


_NUMBERS_BESIDE_A_FILE: list[Any] = [
    lambda: {"f": io.BytesIO(b"abc"), "n": 3, "x": 1.5, "tags": ["a", 4]},
    lambda: [("f", io.BytesIO(b"abc")), ("n", 3), ("x", 1.5), ("tags", ("a", 4))],
]

#: What the forms above send: each number as its text, a list a part per item.
_SENT = [("f", b"abc"), ("n", b"3"), ("x", b"1.5"), ("tags", b"a"), ("tags", b"4")]


@pytest.mark.parametrize("make", _NUMBERS_BESIDE_A_FILE, ids=["mapping", "pairs"])
async def test_numbers_beside_a_file_are_sent_as_their_text_with_recover(
    make: Any, serve: ServerFactory, clock: VirtualClock
) -> None:
    """The documented form values ("a str, an int or a finite float ... (or a list of them)")
    hold in a multipart form too: aiohttp refused a number in a part ("Can not serialize
    value type: int"), said as "invalid request (TypeError)"."""
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        await engine.request("POST", "svc", "/form", data=make(), recover=True)
    [(content_type, body)] = bodies
    assert content_type.startswith("multipart/form-data")
    assert _parts(body) == _SENT


@pytest.mark.parametrize("make", _NUMBERS_BESIDE_A_FILE, ids=["mapping", "pairs"])
async def test_numbers_beside_a_file_as_sent_by_the_multipart_helper(
    make: Any, serve: ServerFactory, clock: VirtualClock
) -> None:
    """``_multipart_as_sent`` makes such a form one aiohttp sends, numbers as their text; a
    form it need not change is the same object."""
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    plain: Any = {"f": io.BytesIO(b"abc"), "note": "x"}
    assert _multipart_as_sent(plain) is plain
    assert _multipart_as_sent({"n": 3}) == {"n": 3}
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        await engine.request("POST", "svc", "/form", data=_multipart_as_sent(make()))  # type: ignore[arg-type]
    [(content_type, body)] = bodies
    assert content_type.startswith("multipart/form-data")
    assert _parts(body) == _SENT


@pytest.mark.parametrize("make", _NUMBERS_BESIDE_A_FILE, ids=["mapping", "pairs"])
async def test_numbers_beside_a_file_given_as_they_are_are_sent_as_their_text(
    make: Any, serve: ServerFactory, clock: VirtualClock
) -> None:
    """Without recover=True too: aiohttp puts no number in a multipart part (it refused the
    form, and the refusal named no field: "data must be bytes, str, a form mapping or an
    async iterable of bytes, got a dict"); each number goes as its text."""
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        resp = await engine.request("POST", "svc", "/form", data=make())
    assert resp.status == 200
    [(_, body)] = bodies
    assert _parts(body) == _SENT


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"n": 10**5000}, "params['n'] is an int of more digits than Python writes as text"),
        ({"n": [1, 10**5000]}, "params['n'] holds at index 1 an int of more digits"),
    ],
)
async def test_an_int_too_long_for_text_in_the_query_is_refused_naming_the_parameter(
    params: dict[str, object], said: str
) -> None:
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http") as engine:
        with pytest.raises(InvalidRequest) as caught:
            await engine.request("GET", "svc", "/x", params=params)  # type: ignore[arg-type]
    assert said in str(caught.value)
    assert "no query value: pass its digits as a str" in str(caught.value)
    assert "00000" not in str(caught.value)


def _callers_form(value: object) -> aiohttp.FormData:
    """A caller's multipart FormData: a file with its filename and type, then ``value``."""
    form = aiohttp.FormData()
    form.add_field("f", io.BytesIO(b"abc"), filename="a.txt", content_type="text/plain")
    form.add_field("n", value)
    form.add_field("note", "x")
    return form


@pytest.mark.parametrize("recover", [False, True])
async def test_a_callers_multipart_form_data_sends_its_numbers_as_text_either_way(
    recover: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """With recover=True a number in a caller's multipart FormData went as its text; without
    it, the same form was refused as "invalid request (TypeError)", naming nothing. Either
    way now as its text, the caller's FormData left as it was given."""
    bodies: list[tuple[str, bytes]] = []
    host = await serve(_recording_app(bodies))
    form = _callers_form(3)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        resp = await engine.request("POST", "svc", "/form", data=form, recover=recover)
    assert resp.status == 200
    [(content_type, body)] = bodies
    assert content_type.startswith("multipart/form-data")
    assert _parts(body) == [("f", b"abc"), ("n", b"3"), ("note", b"x")]
    assert b'filename="a.txt"' in body
    assert b"Content-Type: text/plain" in body
    assert [field[2] for field in form._fields][1:] == [3, "x"]  # not changed


@pytest.mark.parametrize("recover", [False, True])
async def test_a_nan_in_a_callers_multipart_form_data_is_refused_naming_it(
    recover: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(_recording_app([]))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest, match=r"\['n'\] is a float that is NaN|field 'n'"):
            await engine.request(
                "POST", "svc", "/form", data=_callers_form(float("nan")), recover=recover
            )
