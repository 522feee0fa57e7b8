"""Round 17: the simulator's sockets as LiveEngage's: a consumer that has not logged in is served
by no handler, a handler's failure is a 500 answer (the socket stays), and a consumer JWT sent to
a socket logged in already is still checked."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_USER,
    Account,
    SimSocket,
    Simulator,
    SimulatorConfig,
)


async def _req(
    ws: aiohttp.ClientWebSocketResponse, id_: str, type_: str, body: Any = None, **extra: Any
) -> None:
    frame = {"kind": "req", "id": id_, "type": type_, "body": body or {}, **extra}
    await ws.send_str(json.dumps(frame))


async def _text(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
    answer = json.loads(msg.data)
    assert isinstance(answer, dict)
    return answer


async def test_no_handler_serves_a_consumer_that_has_not_logged_in(clock: VirtualClock) -> None:
    async with Simulator(clock=clock) as sim:

        async def conversation(sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
            return 200, {"conversationId": "c1"}

        sim.sockets.on("cm.ConsumerRequestConversation", conversation)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.consumer_socket_url()) as ws,
        ):
            await _req(ws, "1", "cm.ConsumerRequestConversation")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type is not aiohttp.WSMsgType.TEXT, msg.data
            assert ws.close_code == 4401


async def test_a_handler_that_raises_answers_500_and_the_socket_stays(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with Simulator(clock=clock) as sim:

        async def update(sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
            return 200, {"dialogId": frame["body"]["dialogId"]}  # KeyError on {}

        sim.sockets.on(".ams.cm.UpdateConversationField", update)
        bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(bearer)) as ws,
        ):
            await _req(ws, "1", ".ams.cm.UpdateConversationField", {})
            assert (await _text(ws))["code"] == 500
            await _req(ws, "2", ".GetClock")
            assert (await _text(ws))["code"] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["le_transport.simulator"]
    assert "KeyError" in errors[0].getMessage()


async def test_a_consumer_jwt_sent_again_is_checked(clock: VirtualClock) -> None:
    config = SimulatorConfig(accounts=[Account(), Account(id="99999")])
    async with Simulator(clock=clock, config=config) as sim:
        jwt = sim.tokens.issue_jwt(DEFAULT_ACCOUNT, "consumer", 3600, "consumer").value
        foreign = sim.tokens.issue_jwt("99999", "consumer", 3600, "consumer").value
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                sim.consumer_socket_url(), headers={"Authorization": f"jwt {jwt}"}
            ) as ws,
        ):
            for n, token in enumerate(("forged.jwt.value", foreign)):
                auth = [{"type": ".ams.headers.ConsumerAuthentication", "jwt": token}]
                await _req(ws, str(n), "InitConnection", headers=auth)
                assert (await _text(ws))["code"] == 401
            await _req(ws, "3", "InitConnection")  # no token: logged in already
            assert (await _text(ws))["code"] == 200
            await _req(
                ws,
                "4",
                "InitConnection",
                headers=[{"type": ".ams.headers.ConsumerAuthentication", "jwt": jwt}],
            )
            assert (await _text(ws))["code"] == 200


# -- review of the fixes above ------------------------------------------------------------------


async def _brand(sim: Simulator, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
    return await http.ws_connect(sim.brand_socket_url(bearer))


async def test_a_handler_that_answered_then_raised_gets_no_second_answer(
    clock: VirtualClock,
) -> None:
    async with Simulator(clock=clock) as sim:

        async def answers_then_fails(sock: SimSocket, frame: dict[str, Any]) -> None:
            resp = {"kind": "resp", "reqId": frame["id"], "type": "x", "code": 200, "body": {}}
            await sock.send(resp)
            raise KeyError("audit")  # the test's own bookkeeping, after the answer

        sim.sockets.on(".ams.cm.UpdateConversationField", answers_then_fails)
        async with aiohttp.ClientSession() as http, await _brand(sim, http) as ws:
            await _req(ws, "1", ".ams.cm.UpdateConversationField")
            await _req(ws, "2", ".GetClock")
            answers = [await _text(ws), await _text(ws)]
    assert [(a["reqId"], a["code"]) for a in answers] == [("1", 200), ("2", 200)]


async def test_a_handler_returning_no_code_is_a_500_not_a_dead_socket(clock: VirtualClock) -> None:
    async with Simulator(clock=clock) as sim:

        async def forgot_the_code(sock: SimSocket, frame: dict[str, Any]) -> Any:
            return {"conversationId": "c1"}

        sim.sockets.on(".ams.cm.UpdateConversationField", forgot_the_code)
        async with aiohttp.ClientSession() as http, await _brand(sim, http) as ws:
            await _req(ws, "1", ".ams.cm.UpdateConversationField")
            assert (await _text(ws))["code"] == 500


@pytest.mark.parametrize("then", ["returns", "sends", "sends-then-raises", "sends-then-junk"])
async def test_an_init_connection_handler_saying_yes_logs_the_consumer_in(
    clock: VirtualClock, then: str
) -> None:
    # Its yes returned, or sent by itself (even if it failed after): the consumer is logged in.
    # Not so, its next request met 4401 for ever; a junk return after its own answer was
    # handed on as a second one.
    async with Simulator(clock=clock) as sim:

        async def yes(sock: SimSocket, frame: dict[str, Any]) -> Any:
            if then == "returns":
                return 200, {}
            resp = {"kind": "resp", "reqId": frame["id"], "type": "x", "code": 200, "body": {}}
            await sock.send(resp)
            if then == "sends-then-raises":
                raise KeyError("oops")
            return {"not": "a (code, body)"} if then == "sends-then-junk" else None

        async def conversation(sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
            return 200, {"conversationId": "c1"}

        sim.sockets.on("InitConnection", yes)
        sim.sockets.on("cm.ConsumerRequestConversation", conversation)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.consumer_socket_url()) as ws,
        ):
            await _req(ws, "1", "InitConnection")
            assert (await _text(ws))["code"] == 200
            await _req(ws, "2", "cm.ConsumerRequestConversation")
            answer = await _text(ws)
            assert (answer["reqId"], answer["body"]) == ("2", {"conversationId": "c1"})
