"""Round 20: the simulator's lifecycle and socket faults. A socket ``Status`` whose body is not
strict JSON answers instead of ending the socket; stop() is prompt during a delay, with a
custom route's WebSocket open, and with a close under way; two start() calls at once make one
listener; a simulator starts again on another event loop; add_route refuses a catch-all path
the built-in routes would answer; the agent session's link uses ``public_scheme``; and a
custom handler's ``receive(timeout=...)`` holds under a ``delay``."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from le_transport.chaos import FaultRule, Match, Status
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


async def _bearer(http: aiohttp.ClientSession, sim: Simulator) -> str:
    async with http.post(
        f"{sim.url}/api/account/{DEFAULT_ACCOUNT}/login?v=1.3",
        json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    return str(body["bearer"])


# -- 1. A socket Status fault whose body is lenient JSON -----------------------------------------


@pytest.mark.parametrize("body", ['{"x": NaN}', "[Infinity]", "1e400"])
def test_a_status_socket_body_that_is_not_strict_json_is_the_string_as_it_is(body: str) -> None:
    # Shared by the simulator and the client-side injector: both send the same frame.
    assert Status(500, body=body).socket_body() == body
    assert Status(500, body='{"x": 1.5}').socket_body() == {"x": 1.5}


async def test_a_ws_message_status_fault_with_a_nan_body_answers_instead_of_killing_the_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Read with json.loads, {"x": NaN} became a float NaN the simulator refused to send: the
    # serving loop raised, the socket ended (1006) and aiohttp logged an ERROR.
    clock = VirtualClock()
    rule = FaultRule(
        id="nan",
        unit="ws_message",
        match=Match(method="WS", path=".GetClock"),
        fault=Status(500, body='{"x": NaN}'),
    )
    async with Simulator(clock=clock, plan=[rule]) as sim, aiohttp.ClientSession() as http:
        bearer = await _bearer(http, sim)
        async with http.ws_connect(sim.brand_socket_url(bearer)) as ws:
            await ws.send_json({"kind": "req", "id": "1", "type": ".GetClock", "body": {}})
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, ws.close_code)
            assert msg.json() == {
                "kind": "resp",
                "reqId": "1",
                "code": 500,
                "body": '{"x": NaN}',
                "type": ".GetClock$Response",
            }
            # Still served.
            await ws.send_json({"kind": "req", "id": "2", "type": ".GetClock", "body": {}})
            assert (await asyncio.wait_for(ws.receive_json(), 10))["code"] == 500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
