"""Protocol compliance of the messaging sockets, both ends (protocol.md):

- the client dials a LiveEngage messaging path with the protocol's version by default
  (``v=2.1`` on the UMS agent socket, ``v=3`` on the consumer socket), the caller's params laid
  over it, and never logs the bearer the agent socket's path holds;
- the simulator's agent (brand) socket answers the Messaging Agent SDK's request types and
  ``.GetClock`` only, its consumer socket the Messaging Window API's and ``GetClock`` with or
  without the dot; the other product's types are answered as unknown (400);
- a request frame without a usable ``id`` is refused as malformed (400, ``reqId`` null);
- ``SimulatorConfig(close_ended_sessions=True)`` closes a brand socket whose Login Service
  session ended with 4401, and the client re-authenticates on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from le_transport import Engine, EventHooks
from le_transport.chaos import WsRejectHandshake
from le_transport.clock import timeout_after
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK, MESSAGING_WINDOW_API_GETCLOCK
from le_transport.providers import ConsumerJwt, StaticDomains
from le_transport.sockets import (
    CONSUMER_SOCKET_QUERY,
    MESSAGING_AGENT_KEEPALIVE,
    MESSAGING_CONSUMER_KEEPALIVE,
    UMS_BRAND_SOCKET_QUERY,
    AuthPlacement,
    SocketState,
    consumer_path,
    query_for_path,
    ums_brand_path,
)
from le_transport.sockets.dial import DialFailed, EngineDialer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator, SimulatorConfig
from le_transport.testing.simulator.server import RecordedRequest
from tests.test_socket_support import StateLog, agent_engine, no_open_connections, sim, states

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

ACC = DEFAULT_ACCOUNT

AGENT_TYPES = (
    ".ams.aam.SubscribeExConversations",
    ".ams.routing.SubscribeRoutingTasks",
    ".ams.ms.PublishEvent",
    ".ams.routing.SetAgentState",
    ".ams.cm.UpdateConversationField",
)
CONSUMER_TYPES = (
    "cqm.SubscribeExConversations",
    "ms.PublishEvent",
    "cm.ConsumerRequestConversation",
    "cm.UpdateConversationField",
)


def _upgrades(sim: Simulator, kind: str) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.method == "GET" and f"/messaging/{kind}" in r.path]


def _consumer_engine(sim: Simulator, clock: VirtualClock, states: StateLog) -> Engine:
    domains = StaticDomains(sim.domains)
    return Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=ConsumerJwt(sim.account.id, domains=domains),
        hooks=EventHooks(on_state=[states]),
    )


# -- 1. the client's default query ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (ums_brand_path("12345678"), {"v": "2.1"}),
        ("/ws_api/account/12345678/messaging/brand/eyJhbGciOi.x.y", {"v": "2.1"}),
        (consumer_path("12345678"), {"v": "3"}),
        ("/ws_api/account/12345678/messaging/brand", {}),
        ("/bench/ws", {}),
    ],
)
def test_the_default_query_is_chosen_by_path_as_the_keepalive_is(
    path: str, query: dict[str, str]
) -> None:
    assert query_for_path(path) == query
    # A fresh dict: a caller who changes it changes nothing shared.
    query_for_path(path)["v"] = "changed"
    assert query_for_path(path) == query
    assert dict(UMS_BRAND_SOCKET_QUERY) == {"v": "2.1"}
    assert dict(CONSUMER_SOCKET_QUERY) == {"v": "3"}


async def test_the_agent_socket_dials_v21_without_params_and_logs_no_bearer(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with agent_engine(sim, clock, states) as engine:
        ws = await engine.websocket("facadeMsg", ums_brand_path(sim.account.id))
        await ws.wait_open()
        assert (await ws.request(".GetClock"))["code"] == 200
        (bearer,) = [s.bearer for s in sim.tokens.live_sessions()]
    (upgrade,) = _upgrades(sim, "brand")
    assert dict(upgrade.query) == {"v": "2.1"}
    assert bearer not in upgrade.path
    assert bearer not in caplog.text


async def test_the_consumer_socket_dials_v3_without_params(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    for placement in (AuthPlacement.HEADER, AuthPlacement.FIRST_FRAME):
        async with _consumer_engine(sim, clock, states) as engine:
            ws = await engine.websocket(
                "asyncMessagingEnt", consumer_path(sim.account.id), auth_placement=placement
            )
            await ws.wait_open()
            assert (await ws.request("GetClock"))["code"] == 200
    assert [dict(r.query) for r in _upgrades(sim, "consumer")] == [{"v": "3"}, {"v": "3"}]


@pytest.mark.parametrize(
    ("params", "sent"),
    [
        ({"v": "2"}, {"v": "2"}),  # the docs' version: the caller's wins
        ({"trace": "on"}, {"v": "2.1", "trace": "on"}),  # params without v keep the default v
        (UMS_BRAND_SOCKET_QUERY, {"v": "2.1"}),  # as callers passed it before: unchanged
    ],
)
async def test_the_callers_params_are_laid_over_the_default_query(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    params: dict[str, str],
    sent: dict[str, str],
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await engine.websocket("facadeMsg", ums_brand_path(sim.account.id), params=params)
        await ws.wait_open()
    (upgrade,) = _upgrades(sim, "brand")
    assert dict(upgrade.query) == sent


async def test_a_refused_upgrade_shows_the_default_query_and_never_the_bearer(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(503)], unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        ws = await engine.websocket("facadeMsg", ums_brand_path(sim.account.id))
        await ws.wait_open()
        (bearer,) = [s.bearer for s in sim.tokens.live_sessions()]
    assert sim.sockets.rejected == [503]
    assert [dict(r.query) for r in _upgrades(sim, "brand")] == [{"v": "2.1"}, {"v": "2.1"}]
    assert "/brand/***" in caplog.text
    assert bearer not in caplog.text
    assert all(bearer not in repr(e) for e in states.events)


async def test_the_dialers_refusal_shows_the_default_query_with_the_bearers_place(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(503)], unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        dialer = EngineDialer(engine, "facadeMsg", ums_brand_path(sim.account.id), auth=engine.auth)
        with pytest.raises(DialFailed) as info:
            await dialer.dial()
        (bearer,) = [s.bearer for s in sim.tokens.live_sessions()]
    message = str(info.value)
    assert "upgrade of " in message
    assert "?v=2.1" in message
    assert bearer not in message
    assert bearer not in dialer.name


# -- 2. each socket kind answers its own product's types -----------------------------------------


@pytest.fixture
async def raw_sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(echo_published=False), clock=clock) as s:
        yield s


async def _req(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send_str(json.dumps(frame))
    msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    answer = json.loads(msg.data)
    assert isinstance(answer, dict)
    return answer


def _frame(id: Any, type: str, body: Any = None) -> dict[str, Any]:
    return {"kind": "req", "id": id, "type": type, "body": body or {}}


def _publish_body() -> dict[str, Any]:
    return {"dialogId": "d1", "event": {"type": "ContentEvent", "message": "hi"}}


def _body(type_: str) -> dict[str, Any]:
    return _publish_body() if type_.endswith("PublishEvent") else {}


def _bearer(sim: Simulator) -> str:
    return sim.tokens.login(ACC, DEFAULT_USER, 3600, "user").bearer


async def test_the_agent_socket_answers_agent_types_and_dotted_getclock_only(
    raw_sim: Simulator,
) -> None:
    sim = raw_sim
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        answer = await _req(ws, _frame("c", ".GetClock"))
        assert (answer["code"], answer["reqId"]) == (200, "c")
        assert "currentTime" in answer["body"]
        for type_ in AGENT_TYPES:
            assert (await _req(ws, _frame(type_, type_, _body(type_))))["code"] == 200, type_
        (sock,) = sim.sockets.open
        subscriptions = len(sock.subscriptions)
        published = sim.sockets.published.total
        for type_ in ("GetClock", *CONSUMER_TYPES, "InitConnection"):
            answer = await _req(ws, _frame(f"x-{type_}", type_, _body(type_)))
            assert answer == {
                "kind": "resp",
                "reqId": f"x-{type_}",
                "code": 400,
                "body": {"msg": f"unknown request type {type_!r}"},
                "type": f"{type_}$Response",
            }
        # Refused, not served: nothing subscribed or published by the consumer's types.
        assert len(sock.subscriptions) == subscriptions
        assert sim.sockets.published.total == published
        assert not ws.closed


async def test_the_consumer_socket_answers_consumer_types_and_both_getclocks(
    raw_sim: Simulator,
) -> None:
    sim = raw_sim
    jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.consumer_socket_url(), headers={"Authorization": f"jwt {jwt}"}) as ws,
    ):
        for type_ in ("GetClock", ".GetClock", *CONSUMER_TYPES):
            answer = await _req(ws, _frame(type_, type_, _body(type_)))
            assert (answer["code"], answer["reqId"]) == (200, type_), answer
        (sock,) = sim.sockets.open
        assert sock.subscription_types == ["cqm.SubscribeExConversations"]
        assert sim.sockets.published_ids() == ["ms.PublishEvent"]
        for type_ in AGENT_TYPES:
            answer = await _req(ws, _frame(f"x-{type_}", type_, _body(type_)))
            assert answer["code"] == 400, type_
            assert answer["body"] == {"msg": f"unknown request type {type_!r}"}
        assert sock.subscription_types == ["cqm.SubscribeExConversations"]
        assert sim.sockets.published_ids() == ["ms.PublishEvent"]


async def test_the_clients_default_keepalives_are_what_each_socket_answers(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    assert MESSAGING_AGENT_KEEPALIVE.action == MESSAGING_AGENT_SDK_GETCLOCK.action == ".GetClock"
    assert MESSAGING_CONSUMER_KEEPALIVE.action == MESSAGING_WINDOW_API_GETCLOCK.action
    assert MESSAGING_CONSUMER_KEEPALIVE.action == "GetClock"
    async with (
        agent_engine(sim, clock, states) as agent,
        _consumer_engine(sim, clock, states) as consumer,
    ):
        brand = await agent.websocket("facadeMsg", ums_brand_path(sim.account.id))
        cons = await consumer.websocket("asyncMessagingEnt", consumer_path(sim.account.id))
        await brand.wait_open()
        await cons.wait_open()
        # Four keepalive intervals: every probe answered, so neither socket ever reconnects.
        await clock.sleep(125)
        assert brand.state is SocketState.OPEN
        assert cons.state is SocketState.OPEN
        by_kind = {s.kind: [f.get("type") for f in s.received] for s in sim.sockets.open}
    assert sim.sockets.all.total == 2
    assert by_kind["brand"] == [".GetClock"] * 4
    assert by_kind["consumer"] == ["GetClock"] * 4


# -- 3. a request without an id ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "req_id"),
    [
        ({"kind": "req", "type": ".GetClock", "body": {}}, None),
        (_frame(None, ".GetClock"), None),
        (_frame("", ".GetClock"), ""),
        (_frame(True, ".GetClock"), True),
        (_frame({"a": 1}, ".GetClock"), None),
        (_frame(["1"], ".ams.ms.PublishEvent", _publish_body()), None),
        ({"kind": "req", "type": ".ams.ms.PublishEvent", "body": _publish_body()}, None),
    ],
)
async def test_a_request_without_a_usable_id_is_refused_as_malformed(
    raw_sim: Simulator, frame: dict[str, Any], req_id: Any
) -> None:
    sim = raw_sim
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        answer = await _req(ws, frame)
        assert answer["kind"] == "resp"
        assert answer["code"] == 400
        assert answer["reqId"] == req_id
        assert "malformed request" in answer["body"]["msg"]
        assert answer["type"] == f"{frame['type']}$Response"
        # Nothing served: no message published, and the socket still answers.
        assert sim.sockets.published.total == 0
        answer = await _req(ws, _frame(7, ".GetClock"))
        assert (answer["code"], answer["reqId"]) == (200, 7)


# -- 4. a brand socket closed with 4401 once its session ended -----------------------------------


@pytest.mark.parametrize("end", ["logout", "revoke", "expire"])
async def test_a_brand_socket_is_closed_with_4401_once_its_session_ended(
    clock: VirtualClock, end: str
) -> None:
    config = SimulatorConfig(close_ended_sessions=True, idle_timeout=3600.0)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
    ):
        session = sim.tokens.login(ACC, DEFAULT_USER, 600.0, "user")
        other = sim.tokens.login(ACC, DEFAULT_USER, 3600.0, "user")
        async with (
            http.ws_connect(sim.brand_socket_url(session.bearer)) as ws,
            http.ws_connect(sim.brand_socket_url(other.bearer)) as ok,
        ):
            assert (await _req(ws, _frame("1", ".GetClock")))["code"] == 200
            if end == "logout":
                sim.tokens.logout(session)
            elif end == "revoke":
                sim.tokens.revoke(session.bearer)
            else:
                await clock.sleep(601)
            await ws.send_str(json.dumps(_frame("2", ".GetClock")))
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert ws.close_code == 4401
            # Another session's socket is untouched.
            assert (await _req(ok, _frame("3", ".GetClock")))["code"] == 200
        assert sim.sockets.all[0].ended == ("close", 4401)


async def test_by_default_an_open_socket_outlives_its_session(raw_sim: Simulator) -> None:
    sim = raw_sim
    session = sim.tokens.login(ACC, DEFAULT_USER, 3600, "user")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(session.bearer)) as ws,
    ):
        sim.tokens.logout(session)
        assert (await _req(ws, _frame("1", ".GetClock")))["code"] == 200


async def test_the_client_reauthenticates_when_its_socket_is_closed_on_a_revoked_session(
    clock: VirtualClock, states: StateLog, secret_values: set[str]
) -> None:
    config = SimulatorConfig(close_ended_sessions=True)
    async with Simulator(config, clock=clock) as sim:
        async with agent_engine(sim, clock, states) as engine:
            ws = await engine.websocket("facadeMsg", ums_brand_path(sim.account.id))
            await ws.wait_open()
            sim.tokens.revoke()
            # The next keepalive (30 s of quiet) finds the session ended: 4401, a re-login,
            # and a new socket on the new bearer.
            async with timeout_after(clock, 120):
                await sim.sockets.wait_accepted(2)
            await ws.wait_open()
            assert (await ws.request(".GetClock"))["code"] == 200
        first, second = list(sim.sockets.all)[:2]
        assert first.ended == ("close", 4401)
        assert second.session is not None
        assert "reauthenticating" in states.names("facadeMsg")
        assert sim.tokens.logins == 2
        secret_values.update(s.bearer for s in sim.tokens.sessions.values())
