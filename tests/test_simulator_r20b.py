"""Simulator: a spanning route variable, a custom socket's receive timeout, close and drop."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import Delay, FaultRule, Match
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import SimRoute, Simulator


async def _mine(request: web.Request) -> web.Response:
    return web.json_response({"mine": True})


# -- 1. add_route: a spanning variable with a literal prefix no built-in segment has ----------


@pytest.mark.parametrize(
    "path",
    [
        # tests/test_redaction_r16.py uses this one: it now fails at SimRoute registration.
        "/api/account/{account}/{rest:gone.*}",
    ],
)
def test_add_route_takes_a_spanning_variable_whose_literal_text_no_built_in_route_has(
    path: str,
) -> None:
    # No built-in GET path has a segment after /api/account/<id>/ that starts with "gone" (or
    # a last segment ending in ".csv"), so no request could reach both routes; the
    # segment-wise check counts the variable as "any one segment or more" and refuses it.
    assert Simulator().add_route("GET", path, _mine).path == path


# -- 2. receive() under a delay: aiohttp's receive_timeout is the same timeout ---------------


async def test_a_custom_handlers_receive_timeout_from_the_response_holds_under_a_delay(
    clock: VirtualClock,
) -> None:
    # aiohttp: receive(timeout=None) uses WebSocketResponse(receive_timeout=...). The wrapper
    # only bounds the delay by an explicit timeout: here it waits the whole 3 s delay out.
    outcome: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(receive_timeout=0.3)
        await ws.prepare(request)
        started = clock.now()
        try:
            await ws.receive()
            outcome["first"] = "message"
        except TimeoutError:
            outcome["first"] = "timeout"
        outcome["first_at"] = clock.now() - started
        await ws.close()
        return ws

    rule = FaultRule(
        id="late",
        unit="ws_message",
        match=Match(method="WS", path="my.Request"),
        fault=Delay(delay_ms=3000),
    )
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/custom/ws", handler)])
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws") as ws,
    ):
        await ws.send_json({"kind": "req", "id": "1", "type": "my.Request", "body": {}})
        assert (await asyncio.wait_for(ws.receive(), 10)).type is aiohttp.WSMsgType.CLOSE
    assert outcome["first"] == "timeout", outcome
    assert outcome["first_at"] == pytest.approx(0.3)
