"""The simulator's body faults on answers a handler streams or answers with a payload object:
what reaches the wire is what the fault's name says, and what the client-side injector sends."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import pytest
from aiohttp import payload, web

from le_transport.chaos import FaultRule, MalformedBody, SlowBody, TruncatedBody
from le_transport.chaos.plan import MAX_KEEP_BYTES
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator

BODY = b'{"ok": true}'
PATH = f"/api/account/{DEFAULT_ACCOUNT}/thing"


def _simulator(clock: VirtualClock, handler: Any) -> Simulator:
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/thing", handler, service="x")
    return sim


async def _raw_get(sim: Simulator) -> tuple[list[bytes], bytes]:
    """The head lines and body of a GET of PATH, read raw to the connection's end (closed
    after the answer, or by a cut)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


async def _answers_a_file_object(request: web.Request) -> web.Response:
    return web.Response(body=io.BytesIO(BODY), content_type="application/json")


async def _streams_with_a_length(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(BODY)
    await resp.prepare(request)
    await resp.write(BODY)
    await resp.write_eof()
    return resp


async def test_a_truncated_body_keeping_more_than_a_known_length_announces_one_byte_more(
    clock: VirtualClock,
) -> None:
    """A TruncatedBody keeping more than a body whose length is known (a payload's size, a
    streamed answer's Content-Length) announced keep_bytes + 1 (up to a terabyte), where the
    simulator's own answers and the client-side injector announce the body's length + 1."""
    for handler in (_answers_a_file_object, _streams_with_a_length):
        sim = _simulator(clock, handler)
        async with sim:
            sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=MAX_KEEP_BYTES))])
            head, body = await _raw_get(sim)
            counts = sim.faults.rule_counts()["t"]
        assert f"Content-Length: {len(BODY) + 1}".encode() in head, handler.__name__
        assert body == BODY
        assert counts.injected == 1


async def _answers_a_stream_of_told_length(request: web.Request) -> web.Response:
    """A payload of unknown size (an async iterable) whose length the handler announces."""

    async def pieces() -> Any:
        for _ in range(3):
            yield b"0123456789"

    return web.Response(body=pieces(), headers={"Content-Length": "30"})


async def _answers_a_file_object_chunked(request: web.Request) -> web.Response:
    """A payload of known size the handler sends chunked all the same."""
    resp = web.Response(body=io.BytesIO(b"0123456789" * 3))
    resp.enable_chunked_encoding()
    return resp


def _framing(head: list[bytes]) -> list[bytes]:
    return [
        line for line in head if line.split(b":")[0] in (b"Content-Length", b"Transfer-Encoding")
    ]


@pytest.mark.parametrize(
    "handler", [_answers_a_stream_of_told_length, _answers_a_file_object_chunked]
)
@pytest.mark.parametrize(
    "fault", [SlowBody(chunk_bytes=10, chunk_delay_ms=1000), TruncatedBody(keep_bytes=15)]
)
async def test_a_shaped_payload_answer_keeps_the_framing_its_handler_gave_it(
    handler: Any, fault: Any, clock: VirtualClock
) -> None:
    """A payload answer paced or cut was framed by the payload's size alone: a Content-Length
    the handler announced was dropped (the answer sent chunked) and a chunked answer of known
    size went out with a Content-Length, where the fault keeps an answer's headers."""
    sim = _simulator(clock, handler)
    async with sim:
        plain, whole = await _raw_get(sim)
        sim.faults.load([FaultRule("f", fault)])
        shaped, body = await _raw_get(sim)
        counts = sim.faults.rule_counts()["f"]
    assert _framing(shaped) == _framing(plain)
    assert counts.injected == 1
    if isinstance(fault, SlowBody) and handler is _answers_a_stream_of_told_length:
        assert body == whole  # all of it, paced (a chunked one's pieces framed otherwise)


async def _closes_scheduled() -> None:
    """Wait for the file closes aiohttp's payloads scheduled (in its executor): a payload's
    close() hands the file's close() to a thread, not awaited."""
    await asyncio.gather(*list(payload._CLOSE_FUTURES))


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (TruncatedBody(keep_bytes=5), 200),
        (TruncatedBody(keep_bytes=5), 204),  # no body: cut before its headers, thrown away
        (SlowBody(chunk_bytes=5, chunk_delay_ms=1000), 200),
    ],
)
async def test_a_file_answered_under_a_body_fault_is_closed(
    fault: Any, status: int, clock: VirtualClock, tmp_path: Any
) -> None:
    path = tmp_path / "answer.json"
    path.write_bytes(BODY)
    opened: list[Any] = []

    async def answers_a_file(request: web.Request) -> web.Response:
        opened.append(path.open("rb"))
        return web.Response(status=status, body=opened[-1], content_type="application/json")

    sim = _simulator(clock, answers_a_file)
    async with sim:
        sim.faults.load([FaultRule("f", fault)])
        await _raw_get(sim)
        await _closes_scheduled()
        assert len(opened) == 1
        assert opened[0].closed


def _prepares_a_response(body: Any, *, write_eof: bool) -> Any:
    """A handler that prepares a ``web.Response`` itself (and ends it, if ``write_eof``):
    aiohttp's Response.write_eof writes its body straight to the connection."""

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=body() if callable(body) else body)
        await resp.prepare(request)
        if write_eof:
            await resp.write_eof()
        return resp

    return handler


def _thirty_bytes_iterable() -> Any:
    async def pieces() -> Any:
        for _ in range(3):
            yield b"0123456789"

    return pieces()


_PREPARED_BODIES = [
    pytest.param(b"0123456789" * 3, id="bytes"),
    pytest.param(lambda: io.BytesIO(b"0123456789" * 3), id="file-object"),
    pytest.param(_thirty_bytes_iterable, id="async-iterable"),
]


@pytest.mark.parametrize("write_eof", [False, True])
@pytest.mark.parametrize("body", _PREPARED_BODIES)
async def test_a_slow_body_paces_a_response_its_handler_prepared(
    body: Any, write_eof: bool, clock: VirtualClock
) -> None:
    """A web.Response its handler prepared itself went out at full speed while the SlowBody
    counted injected: its body is written by Response.write_eof, not through write."""
    sim = _simulator(clock, _prepares_a_response(body, write_eof=write_eof))
    async with sim:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        start = clock.now()
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            got = await resp.read()
        took = clock.now() - start
        counts = sim.faults.rule_counts()["s"]
    assert (resp.status, got) == (200, b"0123456789" * 3)
    assert counts.injected == 1
    assert took == pytest.approx(2.0)  # three pieces, two pauses


@pytest.mark.parametrize("write_eof", [False, True])
@pytest.mark.parametrize("body", _PREPARED_BODIES)
async def test_a_truncated_body_cuts_a_response_its_handler_prepared_after_its_bytes(
    body: Any, write_eof: bool, clock: VirtualClock
) -> None:
    """A web.Response its handler prepared itself was closed before anything was sent, its
    status and headers included (a disconnect, as an EmptyResponse), not cut after
    keep_bytes: its body is written by Response.write_eof, which the cut never let run."""
    sim = _simulator(clock, _prepares_a_response(body, write_eof=write_eof))
    async with sim:
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=15))])
        head, got = await _raw_get(sim)
        counts = sim.faults.rule_counts()["t"]
    assert head[0] == b"HTTP/1.1 200 OK"
    if b"Transfer-Encoding: chunked" in head:
        assert got == b"a\r\n0123456789\r\n5\r\n01234\r\n"  # no chunked end
    else:
        assert b"Content-Length: 30" in head
        assert got == b"012345678901234"
    assert counts.injected == 1


@pytest.mark.parametrize("write_eof", [False, True])
async def test_a_malformed_body_cuts_a_response_its_handler_prepared_after_its_headers(
    write_eof: bool, clock: VirtualClock
) -> None:
    """As a TruncatedBody's: a web.Response its handler prepared was closed before its
    status and headers went out, where the fault cuts an answer it cannot replace (a payload
    error, not a connection closed before any answer)."""
    body = b"0123456789" * 3
    sim = _simulator(clock, _prepares_a_response(body, write_eof=write_eof))
    async with sim:
        sim.faults.load([FaultRule("m", MalformedBody())])
        head, got = await _raw_get(sim)
    assert head[0] == b"HTTP/1.1 200 OK"
    assert f"Content-Length: {len(body) + 1}".encode() in head
    assert got == body


async def test_a_slow_body_over_a_prepared_response_cut_by_the_stop_reads_as_cut(
    clock: VirtualClock,
) -> None:
    """The stop cuts a paced web.Response its handler prepared as any paced answer: the
    connection closed without the chunked body's end, the payload closed."""
    sim = _simulator(clock, _prepares_a_response(_thirty_bytes_iterable, write_eof=False))
    await sim.start()
    try:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert await resp.content.readexactly(10) == b"0123456789"
            stopping = asyncio.ensure_future(sim.stop())
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            await stopping
    finally:
        await sim.stop()
