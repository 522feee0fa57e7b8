"""Round 20: the simulator's lifecycle and socket faults. A socket ``Status`` whose body is not
strict JSON answers instead of ending the socket; stop() is prompt during a delay, with a
custom route's WebSocket open, and with a close under way; two start() calls at once make one
listener; a simulator starts again on another event loop; add_route refuses a catch-all path
the built-in routes would answer; the agent session's link uses ``public_scheme``; and a
custom handler's ``receive(timeout=...)`` holds under a ``delay``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import Delay, FaultRule, Hang, Match, Status
from le_transport.clock import RealClock
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    SimRoute,
    Simulator,
    SimulatorConfig,
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


# -- 2. stop() is prompt: during a delay, with a custom route's socket, with a close under way --
#
# What is measured is real time: aiohttp's shutdown timeout (1 s) is, and a stop that leaves a
# request or a socket to it takes that long.


class _TellingClock(RealClock):
    """The real clock, telling when something first sleeps on it."""

    def __init__(self) -> None:
        self.slept = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.set()
        await super().sleep(seconds)


async def _stop_time_during(fault: Any) -> float:
    rule = FaultRule(id="slow", match=Match(path="/api/account/*/service/*"), fault=fault)
    clock = _TellingClock()
    sim = Simulator(plan=[rule], clock=clock)
    await sim.start()
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.get(f"{sim.url}{CSDS}"))
        await asyncio.wait_for(clock.slept.wait(), 10)  # the fault is waiting
        started = time.monotonic()
        await sim.stop()
        took = time.monotonic() - started
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, 10)  # no answer: its connection closed
    return took


async def test_stop_during_a_delay_fault_is_as_prompt_as_during_a_hang() -> None:
    # A Delay slept on the clock, not on the simulator's closing: left to aiohttp's shutdown.
    hang = await _stop_time_during(Hang(duration_ms=600_000))
    delay = await _stop_time_during(Delay(delay_ms=600_000))
    assert hang < 0.5
    assert delay < 0.5, f"stop() took {delay:.2f} s during a Delay (during a Hang: {hang:.2f} s)"


async def test_stop_during_a_delayed_socket_handshake_is_prompt() -> None:
    rule = FaultRule(
        id="slow", unit="ws_session", match=Match(path="/ws_api/*"), fault=Delay(600_000)
    )
    clock = _TellingClock()
    sim = Simulator(plan=[rule], clock=clock)
    await sim.start()
    async with aiohttp.ClientSession() as http:
        bearer = await _bearer(http, sim)
        pending = asyncio.ensure_future(http.ws_connect(sim.brand_socket_url(bearer)))
        await asyncio.wait_for(clock.slept.wait(), 10)
        started = time.monotonic()
        await sim.stop()
        took = time.monotonic() - started
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, 10)
    assert took < 0.5, f"stop() took {took:.2f} s during a delayed handshake"
    assert not sim.sockets.all


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws


async def test_stop_drops_a_custom_routes_websocket_promptly() -> None:
    # The simulator's own sockets were dropped at once (drop_all), a custom route's was left
    # to aiohttp's shutdown timeout.
    sim = Simulator(routes=[SimRoute("GET", "/custom/ws", _echo, service="echo")])
    await sim.start()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws") as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
        started = time.monotonic()
        await sim.stop()
        took = time.monotonic() - started
        assert (await asyncio.wait_for(ws.receive(), 10)).type in (
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
    assert took < 0.5, f"stop() took {took:.2f} s with a custom route's WebSocket open"


async def _close_at_once(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close(code=1000)  # waits for the client's close frame
    return ws


async def test_stop_drops_a_custom_routes_websocket_whose_close_waits_for_its_client() -> None:
    sim = Simulator(routes=[SimRoute("GET", "/custom/ws", _close_at_once)])
    await sim.start()
    async with (
        aiohttp.ClientSession() as http,
        # autoclose off: the client reads the close frame and answers nothing.
        http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws", autoclose=False) as ws,
    ):
        assert (await asyncio.wait_for(ws.receive(), 10)).type is aiohttp.WSMsgType.CLOSE
        started = time.monotonic()
        await sim.stop()
        took = time.monotonic() - started
    assert took < 0.5, f"stop() took {took:.2f} s over a custom socket's close under way"


async def test_stop_drops_a_simulator_socket_whose_close_waits_for_its_client() -> None:
    # A consumer that has not logged in is closed with 4401 by the socket's own serving loop,
    # which then waits for the client's close frame: closed, it was no longer "open", so
    # drop_all passed it by and stop() waited out aiohttp's shutdown timeout.
    sim = Simulator()
    await sim.start()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.consumer_socket_url(), autoclose=False) as ws,
    ):
        await ws.send_json({"kind": "req", "id": "1", "type": "cm.Anything", "body": {}})
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4401)
        started = time.monotonic()
        await sim.stop()
        took = time.monotonic() - started
    assert took < 0.5, f"stop() took {took:.2f} s over a socket's close under way"


# -- 3. Two concurrent start() calls ------------------------------------------------------------


async def test_concurrent_starts_make_one_listener_and_leave_none_after_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport.simulator")
    sim = Simulator()
    await asyncio.gather(sim.start(), sim.start())
    ports = sorted(
        {r.port for r in caplog.records if r.getMessage().startswith("simulator listening")}  # type: ignore[attr-defined]
    )
    assert sim.starts == 1
    assert ports == [sim.port]
    await sim.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", ports[0])
    assert not sim.running


# -- 4. A simulator stopped and started again on another event loop -----------------------------


def test_a_simulator_restarted_on_a_new_event_loop_still_waits_for_sockets() -> None:
    # SocketHub's Condition was made once and bound to the first loop that waited on it:
    # wait_open() on the second loop raised RuntimeError.
    sim = Simulator()

    async def phase() -> int:
        async with sim, aiohttp.ClientSession() as http:
            bearer = await _bearer(http, sim)
            waiter = asyncio.ensure_future(sim.sockets.wait_open(1))
            async with http.ws_connect(sim.brand_socket_url(bearer)):
                opened = await asyncio.wait_for(waiter, 10)
        return len(opened)

    assert asyncio.run(phase()) == 1
    assert asyncio.run(phase()) == 1
    assert sim.starts == 2


# -- 5. add_route and a path whose variable spans segments --------------------------------------


async def _mine(request: web.Request) -> web.Response:
    return web.json_response({"mine": True})


@pytest.mark.parametrize(
    "path",
    [
        "/api/{rest:.*}",
        "/{rest:.+}",
        "/api/{rest:.*}/login",
        "/api/account/{account}/{rest:[^x]+}",
        r"/api/{rest:\S+}",
    ],
)
def test_add_route_refuses_a_catch_all_path_a_built_in_route_also_matches(path: str) -> None:
    # Counted by segments, a variable matching across '/' slipped through: the route was
    # taken, and POST /api/account/<id>/login never reached it.
    sim = Simulator()
    with pytest.raises(ConfigurationError, match="collides with the built-in route POST"):
        sim.add_route("POST", path, _mine)


@pytest.mark.parametrize(
    "path",
    [
        "/mine/{rest:.*}",
        "/api/account/{account}/widgets/{rest:.*}",
        r"/api/{id:\d+}/login",
        r"/api/account/{account}/widgets/{name:\w+}",
        "/api/account/{account}/{name:[^{}/]+}/x",
    ],
)
def test_add_route_takes_a_variable_path_no_built_in_route_matches(path: str) -> None:
    assert Simulator().add_route("POST", path, _mine).path == path


@pytest.mark.parametrize(
    "path",
    [
        # A spanning variable whose text no built-in path has after /api/account/<id>/.
        "/api/account/{account}/{rest:gone.*}",
        "/api/account/{account}/{r:chat/[0-9]+}/infox",
        "/api/account/{account}/chat/{c}/{i:in[a-z]x}",
        # A '/' inside a variable's regex does not split the path into segments.
        "/api/account/{account}/{r:[a-z]+/[0-9]+}/x",
        # A '?' inside a variable's regex is not a query.
        "/api/account/{account}/widgets/{w:(?:a|b)x?}",
    ],
)
def test_add_route_takes_a_spanning_variable_whose_text_no_built_in_path_has(path: str) -> None:
    # Every spanning variable counted as "any segments": GET .../{rest:gone.*} was refused as
    # colliding with GET .../service/baseURI.json, which no path starting "gone" reaches.
    assert Simulator().add_route("GET", path, _mine).path == path


@pytest.mark.parametrize(
    ("path", "builtin"),
    [
        ("/api/account/{account}/{x:serv.*}", "service/baseURI.json"),
        ("/api/account/{account}/{r:chat/[0-9]+}/info", "chat/{chat}/info"),
        ("/api/account/{account}/chat/{c}/{i:inf.}", "chat/{chat}/info"),
        # users/{user} takes any last segment, x.csv too: the built-in route answers first.
        (r"/api/account/{account}/{name:.+\.csv}", "users/{user}"),
        ("/api/account/{account}/{r:(?:a|service)/.*}", "service/"),
    ],
)
def test_add_route_still_refuses_a_spanning_variable_that_can_match_a_built_in_path(
    path: str, builtin: str
) -> None:
    with pytest.raises(
        ConfigurationError, match=f"collides with the built-in route GET .*{builtin}"
    ):
        Simulator().add_route("GET", path, _mine)


# -- 6. agentSession's Location and public_scheme ------------------------------------------------


async def test_agent_session_location_uses_the_public_scheme_behind_a_tls_front() -> None:
    # It paired the public host with the simulator's own scheme: "http://le.example.test:443/".
    config = SimulatorConfig(public_address="le.example.test:443", public_scheme="https")
    async with Simulator(config, clock=VirtualClock()) as sim, aiohttp.ClientSession() as http:
        bearer = await _bearer(http, sim)
        async with http.post(
            f"{sim.url}/api/account/{DEFAULT_ACCOUNT}/agentSession?v=1&NC=true",
            json={"loginData": ""},
            headers={"Authorization": f"Bearer {bearer}"},
        ) as resp:
            assert resp.status == 201
            location = resp.headers["Location"]
            body = await resp.json()
    expected = f"https://le.example.test:443/api/account/{DEFAULT_ACCOUNT}/agentSession/1"
    assert location == expected
    assert body["agentSessionLocation"]["link"]["@href"] == expected


# -- 7. A custom socket's receive(timeout=...) under a ws_message Delay ---------------------------


async def test_a_custom_handlers_receive_timeout_holds_under_a_delayed_frame(
    clock: VirtualClock,
) -> None:
    # The wrapper slept a delay out inside the handler's receive, once the inner read had
    # returned: receive(timeout=0.3) returned the frame 3 s later. The frame is not lost: the
    # next receive() hands it over when it is due.
    outcome: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        started = clock.now()
        try:
            await ws.receive(timeout=0.3)
            outcome["first"] = "message"
        except TimeoutError:
            outcome["first"] = "timeout"
        outcome["first_at"] = clock.now() - started
        msg = await ws.receive(timeout=10)
        outcome["second"] = msg.json()["id"]
        outcome["second_at"] = clock.now() - started
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
    assert outcome["first"] == "timeout"
    assert outcome["first_at"] == pytest.approx(0.3)
    assert outcome["second"] == "1"
    assert outcome["second_at"] == pytest.approx(3.0)
