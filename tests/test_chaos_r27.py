"""Chaos faults on the simulator: what each fault's name says is what reaches the wire."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import FaultRule, Match, SlowBody
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
