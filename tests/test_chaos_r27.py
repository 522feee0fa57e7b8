"""Chaos faults on the simulator: what each fault's name says is what reaches the wire."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import FaultRule, MalformedBody, Match, SlowBody, TruncatedBody
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator

BODY = b'{"ok": true}'
PATH = f"/api/account/{DEFAULT_ACCOUNT}/thing"


def _simulator(clock: VirtualClock, handler: Any) -> Simulator:
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/thing", handler, service="x")
    return sim


async def _ends_with_write_eof(request: web.Request) -> web.StreamResponse:
    """A handler that streams its answer itself and hands all of it to ``write_eof``."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(BODY)
    await resp.prepare(request)
    await resp.write_eof(BODY)
    return resp


async def _slow_read(sim: Simulator, clock: VirtualClock) -> tuple[bytes, float]:
    start = clock.now()
    async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
        body = await resp.read()
    return body, clock.now() - start


async def test_a_slow_body_paces_what_a_streaming_handler_hands_write_eof(
    clock: VirtualClock,
) -> None:
    """aiohttp's write_eof(data) writes its data straight to the connection: the simulator's
    SlowBody paced only write(), so an answer ended with write_eof(body) went out at once while
    the fault counted injected."""
    sim = _simulator(clock, _ends_with_write_eof)
    rule = FaultRule("s", SlowBody(chunk_bytes=4, chunk_delay_ms=1000), match=Match(path="*/thing"))
    async with sim:
        sim.faults.load([rule])
        body, took = await _slow_read(sim, clock)
        counts = sim.faults.rule_counts()["s"]
    assert body == BODY
    assert (counts.matched, counts.injected) == (1, 1)
    # Twelve bytes, four a piece: three pieces, two pauses between them.
    assert took == pytest.approx(2.0)


async def _answers_a_payload(request: web.Request) -> web.Response:
    """A handler whose answer's body is a payload object (a file-like body), not bytes."""
    return web.Response(body=io.BytesIO(BODY), content_type="application/json")


async def test_a_slow_body_paces_an_answer_whose_body_is_a_payload(clock: VirtualClock) -> None:
    """A web.Response whose body is a payload (a file object, an async iterable) was returned
    as it was, sent at full speed, while the SlowBody counted injected."""
    sim = _simulator(clock, _answers_a_payload)
    rule = FaultRule("s", SlowBody(chunk_bytes=4, chunk_delay_ms=1000), match=Match(path="*/thing"))
    async with sim:
        sim.faults.load([rule])
        body, took = await _slow_read(sim, clock)
        counts = sim.faults.rule_counts()["s"]
    assert body == BODY
    assert (counts.matched, counts.injected) == (1, 1)
    assert took == pytest.approx(2.0)


async def test_a_truncated_body_keeps_its_bytes_of_an_answer_whose_body_is_a_payload(
    clock: VirtualClock,
) -> None:
    """A payload body was taken for no body: the TruncatedBody kept none of its keep_bytes and
    announced a Content-Length of 1, not the whole body's length."""
    sim = _simulator(clock, _answers_a_payload)
    async with sim:
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=5), match=Match(path="*/thing"))])
        # Read raw, to the connection's end: aiohttp hands a read that starts once the close
        # has arrived the payload error before the bytes it holds.
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(f"GET {PATH} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
        counts = sim.faults.rule_counts()["t"]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(BODY)}".encode() in head.split(b"\r\n")
    assert body == BODY[:5]
    assert counts.injected == 1


async def _raises_conflict(request: web.Request) -> web.Response:
    raise web.HTTPConflict(text='{"error": "a conflict"}', content_type="application/json")


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        (PATH, 409, b'{"error": "a conflict"}'),
        ("/no/route/here", 404, b"404: Not Found"),
    ],
)
async def test_a_slow_body_paces_an_answer_raised_as_an_http_exception(
    path: str, status: int, body: bytes, clock: VirtualClock
) -> None:
    """An answer raised (a handler's web.HTTPException, the 404 of a path no route serves)
    went out at full speed while the SlowBody counted injected; the client-side injector
    paces it as any answer."""
    sim = _simulator(clock, _raises_conflict)
    rule = FaultRule("s", SlowBody(chunk_bytes=4, chunk_delay_ms=1000))
    async with sim:
        sim.faults.load([rule])
        start = clock.now()
        async with aiohttp.ClientSession() as session, session.get(sim.url + path) as resp:
            got = await resp.read()
        counts = sim.faults.rule_counts()["s"]
    assert (resp.status, got) == (status, body)
    assert (counts.matched, counts.injected) == (1, 1)
    # ceil(len / 4) pieces, one pause fewer between them.
    assert clock.now() - start == pytest.approx(-(-len(body) // 4) - 1)


async def test_a_slow_body_over_a_raised_answer_without_a_body_sends_it_as_it_is(
    clock: VirtualClock,
) -> None:
    async def no_content(request: web.Request) -> web.Response:
        raise web.HTTPNoContent()

    sim = _simulator(clock, no_content)
    async with sim:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=4, chunk_delay_ms=1000))])
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert (resp.status, await resp.read()) == (204, b"")


async def test_a_malformed_body_closes_the_file_of_the_answer_it_replaces(
    clock: VirtualClock, tmp_path: Any
) -> None:
    """The answer MalformedBody throws away was dropped with its payload open: a file a
    handler answered with stayed open (a ResourceWarning, a descriptor held) until collected."""
    path = tmp_path / "answer.json"
    path.write_bytes(BODY)
    opened: list[Any] = []

    async def answers_a_file(request: web.Request) -> web.Response:
        opened.append(path.open("rb"))
        return web.Response(body=opened[-1], content_type="application/json")

    sim = _simulator(clock, answers_a_file)
    rule = FaultRule("m", MalformedBody(code=200, body="{no"), match=Match(path="*/thing"))
    async with sim:
        sim.faults.load([rule])
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert await resp.read() == b"{no"
        # A payload's close() hands the file's close() to aiohttp's executor, not awaited:
        # waited for here, not raced.
        await asyncio.gather(*list(aiohttp.payload._CLOSE_FUTURES))
    assert len(opened) == 1
    assert opened[0].closed


def _long_stream(produced: list[int], chunks: int = 1000) -> Any:
    """A handler answering with an async iterable of ``chunks`` pieces of 10 bytes (a stream
    held open, as far as a test reads), counting in ``produced`` the pieces it has made."""

    async def stream(request: web.Request) -> web.Response:
        async def pieces() -> Any:
            for _ in range(chunks):
                produced[0] += 1
                yield b"0123456789"
                await asyncio.sleep(0)

        return web.Response(body=pieces(), content_type="text/plain")

    return stream


async def test_a_slow_body_paces_a_payload_as_it_comes_not_read_whole_first(
    clock: VirtualClock,
) -> None:
    """A payload body is paced as it is written: read whole first, a stream the server holds
    open (an async iterable that does not end) would never have been answered."""
    produced = [0]
    sim = _simulator(clock, _long_stream(produced))
    async with sim:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=4, chunk_delay_ms=1000))])
        start = clock.now()
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert await resp.content.readexactly(8) == b"01234567"
            took = clock.now() - start
            made = produced[0]
    assert took == pytest.approx(1.0)
    assert made <= 2


async def test_a_truncated_body_cuts_a_payload_as_it_comes_not_read_whole_first(
    clock: VirtualClock,
) -> None:
    produced = [0]
    sim = _simulator(clock, _long_stream(produced))
    async with sim:
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=8))])
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(f"GET {PATH} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head.split(b"\r\n")
    # Its first 8 bytes, then the connection closed without the chunked body's end.
    assert body == b"8\r\n01234567\r\n"
    assert produced[0] == 1


async def _streams_chunked(request: web.Request) -> web.StreamResponse:
    """A handler streaming five pieces of 10 bytes, chunked (no length announced)."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(5):
        await resp.write(b"0123456789")
    await resp.write_eof()
    return resp


async def _answers_an_iterable(request: web.Request) -> web.Response:
    async def pieces() -> Any:
        for _ in range(5):
            yield b"0123456789"

    return web.Response(body=pieces())


@pytest.mark.parametrize("handler", [_streams_chunked, _answers_an_iterable])
async def test_a_slow_chunked_body_cut_by_the_simulators_stop_reads_as_cut_not_whole(
    handler: Any, clock: VirtualClock
) -> None:
    """A SlowBody pacing a chunked body when the simulator stopped sent the chunked body's
    end: the client read the first piece as the whole answer, no error, where the pace says
    the stop cuts the body short. Now the connection is closed without that end."""
    sim = _simulator(clock, handler)
    await sim.start()
    try:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert await resp.content.readexactly(10) == b"0123456789"
            stopping = asyncio.ensure_future(sim.stop())
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            await stopping
    finally:
        await sim.stop()
