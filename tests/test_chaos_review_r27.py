"""The simulator's body faults on answers a handler streams or answers with a payload object:
what reaches the wire is what the fault's name says, and what the client-side injector sends."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from aiohttp import web

from le_transport.chaos import FaultRule, TruncatedBody
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
    """The head lines and body of a GET of PATH, read raw to the connection's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
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
