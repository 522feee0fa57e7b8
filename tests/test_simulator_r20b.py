"""Simulator: a spanning route variable, a custom socket's receive timeout, close and drop."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import Delay, FaultRule, Match, WsDelay
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import SimRoute, Simulator


async def _mine(request: web.Request) -> web.Response:
    return web.json_response({"mine": True})


# -- 1. add_route: a spanning variable with a literal prefix no built-in segment has ----------


@pytest.mark.parametrize(
    "path",
    [
        # As tests/test_redaction_r16.py registers it.
        "/api/account/{account}/{rest:gone.*}",
    ],
)
def test_add_route_takes_a_spanning_variable_whose_literal_text_no_built_in_route_has(
    path: str,
) -> None:
    # No built-in GET path has a segment after /api/account/<id>/ that starts with "gone", so
    # no request could reach both routes. (A "{name:.+\.csv}" variable is refused, rightly:
    # GET .../configuration/le-users/users/{user} matches .../users/x.csv.)
    assert Simulator().add_route("GET", path, _mine).path == path


# -- 2. receive() under a delay: aiohttp's receive_timeout is the same timeout ---------------


async def test_a_custom_handlers_receive_timeout_from_the_response_holds_under_a_delay(
    clock: VirtualClock,
) -> None:
    # aiohttp: receive(timeout=None) uses WebSocketResponse(receive_timeout=...); so does the
    # wrapper, a delayed frame included, rather than waiting the whole 3 s delay out.
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


# -- 3. a kept late frame does not outlive the handler's close() ---------------------------


async def test_a_frame_kept_by_a_timed_out_receive_is_not_handed_over_after_close(
    clock: VirtualClock,
) -> None:
    # aiohttp: once the handler closed the socket, receive() answers CLOSED at once (frames
    # still buffered were read away by close()). Waiting for the kept frame (due 3 s later) on
    # the closed socket instead, the handler was cancelled there once close() had closed the
    # transport, rather than seeing CLOSED and returning.
    outcome: dict[str, Any] = {}
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            try:
                await ws.receive(timeout=0.3)  # the delayed frame is kept
            except TimeoutError:
                outcome["timed_out"] = True
            await ws.close()
            started = clock.now()
            msg = await ws.receive()
            outcome["after_close"] = msg.type
            outcome["waited"] = clock.now() - started
        except BaseException as exc:
            outcome["error"] = repr(exc)
            raise
        finally:
            done.set()
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
        await asyncio.wait_for(done.wait(), 10)
    assert outcome.get("timed_out"), outcome
    assert outcome.get("after_close") is aiohttp.WSMsgType.CLOSED, outcome
    assert outcome["waited"] == 0.0


# -- 4. a socket the simulator's stop dropped is ended for the handler ----------------------


async def test_a_custom_socket_dropped_by_stop_is_ended_for_the_handlers_cleanup(
    clock: VirtualClock,
) -> None:
    # stop() aborts the connection under a handler waiting on receive() with a frame held by a
    # ws_delay; aiohttp cancels the handler, whose cleanup still sends, closes and reads. The
    # socket is ended as by a ws_drop: the send is discarded, close() does not wait for the
    # held frame (due 30 s later, then sent on the dropped connection) and receive() answers
    # CLOSED at once, as on a closed aiohttp socket.
    outcome: dict[str, Any] = {}
    waiting = asyncio.Event()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await ws.send_json({"type": "held"})
            waiting.set()
            await ws.receive()
        finally:
            started = clock.now()
            try:
                await ws.send_json({"type": "goodbye"})
                await ws.close()
                outcome["after"] = (await ws.receive()).type
            except BaseException as exc:
                outcome["error"] = repr(exc)
                raise
            finally:
                outcome["waited"] = clock.now() - started
                done.set()
        return ws

    rule = FaultRule("held", WsDelay(delay_ms=30_000), unit="ws_message", match=Match(path="held"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/custom/ws", handler)])
    async with sim, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws")
        await asyncio.wait_for(waiting.wait(), 10)
        await sim.stop()
        await asyncio.wait_for(done.wait(), 10)
        await ws.close()
    assert "error" not in outcome, outcome
    assert outcome["after"] is aiohttp.WSMsgType.CLOSED, outcome
    assert outcome["waited"] == 0.0, outcome
