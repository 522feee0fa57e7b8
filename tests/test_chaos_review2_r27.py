"""The simulator's body faults on an answer a handler returns as a ``web.FileResponse``: what
reaches the wire is what the fault's name says (aiohttp sends such a file past ``write``)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import payload, web, web_fileresponse

from le_transport.chaos import FaultRule, SlowBody, TruncatedBody
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator

BODY = b"0123456789" * 3
PATH = f"/api/account/{DEFAULT_ACCOUNT}/thing"


def _file_simulator(clock: VirtualClock, path: Path) -> Simulator:
    async def answers_a_file(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/thing", answers_a_file, service="x")
    return sim


@pytest.fixture
def answer_file(tmp_path: Path) -> Path:
    path = tmp_path / "answer.json"
    path.write_bytes(BODY)
    return path


async def _raw_get(sim: Simulator, extra: str = "") -> tuple[list[bytes], bytes]:
    """The head lines and body of a GET of PATH, read raw to the connection's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n{extra}\r\n".encode())
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _without_dates(head: list[bytes]) -> list[bytes]:
    return [line for line in head if not line.startswith((b"Date:", b"Server:"))]


async def _files_closed() -> None:
    """Wait for the file closes aiohttp scheduled in its executor (not awaited by it): a
    payload's, and a FileResponse's (its own set of them)."""
    await asyncio.gather(*list(payload._CLOSE_FUTURES), *list(web_fileresponse._CLOSE_FUTURES))


async def test_a_slow_body_paces_a_file_response(clock: VirtualClock, answer_file: Path) -> None:
    """A web.FileResponse is sent by aiohttp's sendfile, past write: it went out at full speed
    while the SlowBody counted injected."""
    sim = _file_simulator(clock, answer_file)
    async with sim:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        start = clock.now()
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            got = await resp.read()
        took = clock.now() - start
        counts = sim.faults.rule_counts()["s"]
        await _files_closed()
    assert (resp.status, resp.content_type, got) == (200, "application/json", BODY)
    assert counts.injected == 1
    assert took == pytest.approx(2.0)  # three pieces, two pauses


async def test_a_truncated_body_keeps_its_bytes_of_a_file_response(
    clock: VirtualClock, answer_file: Path
) -> None:
    """A web.FileResponse was taken for an answer without a body: sent with none of its
    keep_bytes, a Content-Length of 1, and none of its headers (its Content-Type, ETag)."""
    sim = _file_simulator(clock, answer_file)
    async with sim:
        plain, whole = await _raw_get(sim)
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=15))])
        head, got = await _raw_get(sim)
        counts = sim.faults.rule_counts()["t"]
        await _files_closed()
    assert whole == BODY
    assert _without_dates(head) == _without_dates(plain)  # Content-Length: 30, as it was
    assert got == BODY[:15]
    assert counts.injected == 1


async def test_a_truncated_body_cuts_a_file_responses_range_after_its_bytes(
    clock: VirtualClock, answer_file: Path
) -> None:
    sim = _file_simulator(clock, answer_file)
    async with sim:
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=4))])
        head, got = await _raw_get(sim, "Range: bytes=10-19\r\n")
        await _files_closed()
    assert head[0] == b"HTTP/1.1 206 Partial Content"
    assert b"Content-Range: bytes 10-19/30" in head
    assert b"Content-Length: 10" in head
    assert got == b"0123"


async def test_a_truncated_body_cuts_a_file_responses_304_before_its_headers(
    clock: VirtualClock, answer_file: Path
) -> None:
    """A 304 has no body to cut after its headers: it is cut before them, as any answer
    without a body (the connection closed, nothing sent)."""
    sim = _file_simulator(clock, answer_file)
    async with sim:
        plain, _ = await _raw_get(sim)
        etag = next(line for line in plain if line.startswith(b"Etag:")).split(b": ", 1)[1]
        sim.faults.load([FaultRule("t", TruncatedBody(keep_bytes=4))])
        head, got = await _raw_get(sim, f"If-None-Match: {etag.decode()}\r\n")
        counts = sim.faults.rule_counts()["t"]
    assert (head, got) == ([b""], b"")
    assert counts.injected == 1


async def test_a_slow_file_response_cut_by_the_simulators_stop_reads_as_cut(
    clock: VirtualClock, answer_file: Path
) -> None:
    sim = _file_simulator(clock, answer_file)
    await sim.start()
    try:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            assert await resp.content.readexactly(10) == BODY[:10]
            stopping = asyncio.ensure_future(sim.stop())
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            await stopping
        await _files_closed()
    finally:
        await sim.stop()


def _closing_answer(kind: str) -> Any:
    """A handler whose answer asks for its connection to be closed after it
    (``force_close``): its body bytes or a payload (a file object)."""

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=BODY if kind == "bytes" else io.BytesIO(BODY))
        resp.force_close()
        return resp

    return handler


async def _two_pipelined(sim: Simulator) -> bytes:
    """What a connection carries back for two GETs of PATH sent at once, the second asking
    for the connection to be closed after it: one answer if the first closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        first = f"GET {PATH} HTTP/1.1\r\nHost: sim\r\n\r\n"
        writer.write((first + first.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")).encode())
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("kind", ["bytes", "payload"])
async def test_a_slow_body_keeps_an_answers_connection_close(
    kind: str, clock: VirtualClock
) -> None:
    """A paced answer whose handler asked for its connection to be closed after it went out
    without its ``Connection: close``, and the connection stayed open, where the fault keeps
    an answer's status and headers."""
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/thing", _closing_answer(kind), service="x")
    async with sim:
        plain = await _two_pipelined(sim)
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=10, chunk_delay_ms=1000))])
        shaped = await _two_pipelined(sim)
        counts = sim.faults.rule_counts()["s"]
    for raw in (plain, shaped):
        assert raw.count(b"HTTP/1.1 200 OK") == 1
        assert b"\r\nConnection: close\r\n" in raw
        assert raw.endswith(BODY)
    assert counts.injected == 1


LARGE = bytes(range(250)) * 2400  # 600000 bytes: more than aiohttp reads of a file at once


@pytest.mark.parametrize("kind", ["file-object", "file-response"])
async def test_a_slow_body_over_a_large_file_pauses_as_its_contract_says(
    kind: str, clock: VirtualClock, tmp_path: Path
) -> None:
    """A SlowBody makes ceil(len / chunk_bytes) - 1 pauses: a file's body, written in the
    pieces aiohttp (or the simulator) reads it in, was cut into chunk_bytes pieces read by
    read, each read's last piece short, one pause more for each read."""
    path = tmp_path / "large.bin"
    path.write_bytes(LARGE)

    async def answers(request: web.Request) -> web.StreamResponse:
        if kind == "file-response":
            return web.FileResponse(path)
        return web.Response(body=path.open("rb"))

    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/thing", answers, service="x")
    async with sim:
        sim.faults.load([FaultRule("s", SlowBody(chunk_bytes=100_000, chunk_delay_ms=1000))])
        start = clock.now()
        async with aiohttp.ClientSession() as session, session.get(sim.url + PATH) as resp:
            got = await resp.read()
        took = clock.now() - start
        await _files_closed()
    assert got == LARGE
    assert took == pytest.approx(5.0)  # ceil(600000 / 100000) - 1
