"""The simulator and what a client sends it wrong, and notifications by subscription.

- A request body not in the ``Content-Encoding`` it declares (gzip that is not gzip) made aiohttp
  raise ``RequestPayloadError`` to whichever handler read it: a 500, ERROR tracebacks from
  aiohttp (the handler's, then again from its lingering re-read of the body), and an engine
  retried an idempotent call three times (5, 10, 15 s) as a server fault. Now a 400, as
  LiveEngage answers a request it cannot read, and nothing at ERROR.
- ``sim.sockets.notify`` pushed every notification to every open socket, subscribed or not,
  although subscriptions live only as long as their socket (protocol.md): a client that forgot
  to subscribe again after a reconnect still got its routing tasks, so a chaos test could not
  catch it. Now the types a subscription brings go only to the sockets holding it.
- A frame or an HTTP body with ``NaN``, ``Infinity`` or ``1e400`` (which ``json.loads`` takes)
  was served: a request id NaN answered ``"reqId": NaN``, a published Infinity echoed back,
  neither of which a client's parser reads. Now it is not JSON: a request is answered 400 as
  malformed (``reqId`` null), and the simulator never sends such a frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, StaticDomains, UserLogin
from le_transport._json import loads_strict
from le_transport.chaos import FaultRule, Match, WsAppError
from le_transport.clock import timeout_after
from le_transport.errors import ClientStatusError, ConfigurationError
from le_transport.sockets import ResilientSocket, ums_brand_path
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
    SimulatorConfig,
)
from le_transport.testing.simulator import sockets as sockets_module
from le_transport.testing.simulator.sockets import TYPES_BY_KIND

ACC = DEFAULT_ACCOUNT
SEARCH = f"/interaction_history/api/account/{ACC}/interactions/search"
ROUTING = ".ams.routing.RoutingTaskNotification"
EX_CONVERSATION = ".ams.cm.ExConversationChangeNotification"
CONSUMER_EX_CONVERSATION = "cqm.ExConversationChangeNotification"
#: A JSON body sent as ``Content-Encoding: gzip`` although it is not gzip (a client's bug).
NOT_GZIP = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the Login Service's Session_id cookie comes from 127.0.0.1.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as session:
        yield session


def _bearer(sim: Simulator) -> str:
    return sim.tokens.login(ACC, DEFAULT_USER, 3600, "user").bearer


@contextlib.asynccontextmanager
async def _agent_socket(
    clock: VirtualClock, **options: Any
) -> AsyncIterator[tuple[Simulator, aiohttp.ClientWebSocketResponse]]:
    """A simulator (``options`` its own) and a raw agent (brand) socket to it, logged in."""
    async with (
        Simulator(clock=clock, **options) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        yield sim, ws


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def _req(ws: aiohttp.ClientWebSocketResponse, id: str, type: str, body: Any = None) -> None:
    await ws.send_str(json.dumps({"kind": "req", "id": id, "type": type, "body": body or {}}))


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame = loads_strict(msg.data)  # what a client's parser reads: no NaN, no Infinity
    assert isinstance(frame, dict)
    return frame


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, type_: str) -> None:
    await _req(ws, f"sub-{type_}", type_)
    frame = await _frame(ws)
    assert (frame["reqId"], frame["code"]) == (f"sub-{type_}", 200)


async def _next_is_answer(ws: aiohttp.ClientWebSocketResponse, id: str) -> None:
    """The next frame on ``ws`` is the answer to a ``.GetClock`` sent now: no notification
    came before it (frames keep their order on the one stream)."""
    await _req(ws, id, ".GetClock")
    frame = await _frame(ws)
    assert (frame["kind"], frame["reqId"]) == ("resp", id), frame


# -- a body not in its Content-Encoding -----------------------------------------------------


async def _echo_body(request: web.Request) -> web.Response:
    return web.json_response({"read": len(await request.read())})


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/api/account/{ACC}/login?v=1.3", {}),
        (f"/api/account/{ACC}/refresh?v=1.3", {}),
        (f"/api/account/{ACC}/logout?v=1.3", {}),
        (f"/api/account/{ACC}/authenticate", {}),
        (SEARCH, {}),
        # A custom route's credentials check (auth=True) reads the body, for an OAuth 1.0
        # form; and a custom route's own handler that reads it.
        (f"/api/account/{ACC}/guarded", {"Authorization": "Bearer nope"}),
        (f"/api/account/{ACC}/open", {}),
    ],
    ids=["login", "refresh", "logout", "idp-authenticate", "search", "custom-auth", "custom"],
)
async def test_a_body_not_in_its_content_encoding_is_a_400_with_nothing_at_error(
    path: str,
    headers: dict[str, str],
    clock: VirtualClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: 500 (RequestPayloadError out of the handler) and two ERROR tracebacks."""
    sim = Simulator(clock=clock)
    sim.add_route("POST", "/api/account/{account}/guarded", _echo_body, auth=True)
    sim.add_route("POST", "/api/account/{account}/open", _echo_body)
    with caplog.at_level(logging.DEBUG):
        async with (
            sim,
            http.post(
                sim.url + path, data=b'{"username": "x"}', headers={**NOT_GZIP, **headers}
            ) as resp,
        ):
            status, body = resp.status, await resp.json()
            connection = resp.headers.get("Connection", "")
        # Stopped: aiohttp's handling of the connection (its re-read of the body) is over.
    assert status == 400, body
    assert isinstance(body["error"], str)
    assert "could not be read" in body["error"]
    # aiohttp closes the connection after it; the answer says so.
    assert connection.lower() == "close"
    assert _errors(caplog) == []
    assert sim.count("POST") == 1


async def test_the_gateways_signature_check_under_a_5xx_answers_400_for_such_a_body(
    clock: VirtualClock, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the OAuth 1.0 check of a 5xx fault (_gateway_passes) read the body: a 500."""
    with caplog.at_level(logging.DEBUG):
        async with Simulator(clock=clock) as sim:
            sim.faults.script("POST", "*/interactions/search", [503])
            async with http.post(
                sim.url + SEARCH,
                data=b"{}",
                headers={**NOT_GZIP, "Authorization": 'OAuth oauth_consumer_key="k"'},
            ) as resp:
                status = resp.status
    assert status == 400
    assert _errors(caplog) == []


async def test_a_broken_body_the_handler_never_reads_logs_nothing_at_error(
    clock: VirtualClock, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the idp's signup, which does not read its body, answered, then aiohttp's
    lingering re-read of the body logged an ERROR traceback ("Unhandled exception")."""
    with caplog.at_level(logging.DEBUG):
        async with (
            Simulator(clock=clock) as sim,
            http.post(f"{sim.url}/api/account/{ACC}/signup", data=b"{}", headers=NOT_GZIP) as resp,
        ):
            status = resp.status
            await resp.read()
    assert status == 200  # signup takes no body: answered as ever
    assert _errors(caplog) == []


async def test_a_pooled_connection_is_not_reused_after_such_a_body(clock: VirtualClock) -> None:
    """The 400 closes its connection (aiohttp closes it once it meets the error again): the
    next request of a client that pools connections goes out on a new one and is served."""
    async with (
        Simulator(clock=clock) as sim,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        for _ in range(3):
            async with http.post(sim.url + SEARCH, data=b"{}", headers=NOT_GZIP) as resp:
                assert resp.status == 400
            async with http.post(
                f"{sim.url}/api/account/{ACC}/login",
                json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
            ) as resp:
                assert resp.status == 200


async def test_through_the_engine_such_a_body_fails_at_once_and_is_not_retried(
    clock: VirtualClock,
) -> None:
    """Before: a 500, so an idempotent call was retried 3 times (5 + 10 + 15 s) and failed
    with RetriesExhausted: the caller's bug taken for a server fault."""
    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACC, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            start = clock.now()
            with pytest.raises(ClientStatusError) as info:
                await engine.request(
                    "POST",
                    "engHistDomain",
                    SEARCH,
                    data=b'{"start": {"from": 0, "to": 1}}',
                    headers=NOT_GZIP,
                    idempotent=True,
                )
            waited = clock.now() - start
    assert info.value.status == 400
    assert sim.count("POST", "*/interactions/search") == 1
    assert waited < 1


# -- notifications by subscription ----------------------------------------------------------


def test_the_gated_notification_types_are_those_protocol_md_subscribes_to() -> None:
    assert dict(TYPES_BY_KIND["brand"].subscribed_notifications) == {
        ROUTING: ".ams.routing.SubscribeRoutingTasks",
        EX_CONVERSATION: ".ams.aam.SubscribeExConversations",
    }
    assert dict(TYPES_BY_KIND["consumer"].subscribed_notifications) == {
        CONSUMER_EX_CONVERSATION: "cqm.SubscribeExConversations"
    }
    # Each is a subscription its socket answers.
    for types in TYPES_BY_KIND.values():
        assert set(types.subscribed_notifications.values()) <= types.subscribe


async def test_a_routing_task_reaches_only_the_sockets_that_subscribed_to_routing_tasks(
    clock: VirtualClock,
) -> None:
    """Before: both sockets got it (sent == 2), the one that never subscribed too."""
    async with (
        Simulator(clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as subscribed,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as other,
    ):
        await _subscribe(subscribed, ".ams.routing.SubscribeRoutingTasks")
        # Conversations, not routing tasks: no routing task for it either.
        await _subscribe(other, ".ams.aam.SubscribeExConversations")
        await sim.sockets.wait_open(2)
        sent = await sim.sockets.notify(ROUTING, {"changes": []})
        assert sent == 1
        frame = await _frame(subscribed)
        assert (frame["kind"], frame["type"], frame["body"]) == (
            "notification",
            ROUTING,
            {"changes": []},
        )
        await _next_is_answer(other, "after")
        # And the conversation changes go to the other one only.
        assert await sim.sockets.notify(EX_CONVERSATION, {"changes": []}) == 1
        assert (await _frame(other))["type"] == EX_CONVERSATION
        await _next_is_answer(subscribed, "after")
        assert [s.subscribed for s in sim.sockets.open] == [
            {".ams.routing.SubscribeRoutingTasks"},
            {".ams.aam.SubscribeExConversations"},
        ]


async def test_the_consumers_conversation_changes_need_its_subscription(
    clock: VirtualClock,
) -> None:
    """Before: sent to the consumer socket that never subscribed."""
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
        auth = {"Authorization": f"jwt {jwt}"}
        async with http.ws_connect(sim.consumer_socket_url(), headers=auth) as ws:
            await sim.sockets.wait_open(1)
            assert await sim.sockets.notify(CONSUMER_EX_CONVERSATION, {"changes": []}) == 0
            await _next_is_answer(ws, "before")
            await _subscribe(ws, "cqm.SubscribeExConversations")
            assert await sim.sockets.notify(CONSUMER_EX_CONVERSATION, {"changes": []}) == 1
            assert (await _frame(ws))["type"] == CONSUMER_EX_CONVERSATION


async def test_messaging_events_and_other_types_reach_every_socket_and_to_all_any_type(
    clock: VirtualClock,
) -> None:
    """What needs no subscription is not gated; ``to_all=True`` is the escape hatch."""
    async with _agent_socket(clock) as (sim, ws):
        await sim.sockets.wait_open(1)
        for type_ in (".ams.ms.MessagingEventNotification", ".my.OwnNotification"):
            assert await sim.sockets.notify(type_, {}) == 1
            assert (await _frame(ws))["type"] == type_
        assert await sim.sockets.notify(ROUTING, {"n": 1}, to_all=True) == 1
        assert (await _frame(ws))["body"] == {"n": 1}
        # Aimed at one socket: sent, subscribed or not.
        await sim.sockets.open[0].notify(ROUTING, {"n": 2})
        assert (await _frame(ws))["body"] == {"n": 2}
        with pytest.raises(ConfigurationError, match="to_all"):
            await sim.sockets.notify(ROUTING, {}, to_all=1)  # type: ignore[arg-type]


async def test_a_subscription_refused_by_a_fault_brings_nothing_and_an_on_handlers_does(
    clock: VirtualClock,
) -> None:
    """A fault's 429 in place of the answer is no subscription; an ``on()`` handler's 200 is."""
    rule = FaultRule(
        "busy",
        WsAppError(429),
        unit="ws_message",
        match=Match(path=".ams.routing.SubscribeRoutingTasks"),
    )
    async with _agent_socket(clock, plan=[rule]) as (sim, ws):
        await _req(ws, "s1", ".ams.routing.SubscribeRoutingTasks")
        assert (await _frame(ws))["code"] == 429
        assert await sim.sockets.notify(ROUTING, {}) == 0

        async def accept(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
            return 200, {"subscriptionId": "mine"}

        sim.sockets.on(".ams.aam.SubscribeExConversations", accept)
        await _subscribe(ws, ".ams.aam.SubscribeExConversations")
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 1
        assert (await _frame(ws))["type"] == EX_CONVERSATION


async def test_a_subscription_holds_however_many_records_were_dropped(
    clock: VirtualClock,
) -> None:
    """The subscription frames' records are bounded across every socket: what a socket holds
    is kept apart, so an old socket's subscription is not forgotten with its record."""
    async with (
        Simulator(SimulatorConfig(max_records=1), clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as old,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as new,
    ):
        await _subscribe(old, ".ams.routing.SubscribeRoutingTasks")
        await _subscribe(new, ".ams.aam.SubscribeExConversations")
        first = sim.sockets.open[0]
        assert first.subscriptions == []  # its record dropped for the newer socket's
        assert await sim.sockets.notify(ROUTING, {}) == 1
        assert (await _frame(old))["type"] == ROUTING


@pytest.mark.parametrize("every_connect", [False, True])
async def test_a_client_that_does_not_subscribe_again_after_a_drop_gets_no_routing_task(
    every_connect: bool, clock: VirtualClock
) -> None:
    """Before: the client that subscribed on its first connection only still got routing
    tasks after a reconnect, so a chaos test could not catch the bug protocol.md warns of."""
    connects = 0

    async def subscribe(ws: ResilientSocket) -> None:
        # The integration under test: on every connect (right), or on the first only (the bug).
        nonlocal connects
        connects += 1
        if every_connect or connects == 1:
            await ws.request(".ams.routing.SubscribeRoutingTasks", {})

    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACC, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            ws = await engine.websocket("facadeMsg", ums_brand_path(ACC), on_connect=[subscribe])
            await ws.wait_open()
            (first,) = await sim.sockets.wait_open(1)
            assert await sim.sockets.notify(ROUTING, {"n": 1}) == 1
            assert (await ws.__anext__())["body"] == {"n": 1}
            first.drop()
            await sim.sockets.wait_accepted(2)
            await ws.wait_open()
            (second,) = sim.sockets.open
            sent = await sim.sockets.notify(ROUTING, {"n": 2})
            got = None
            try:
                async with timeout_after(clock, 5):
                    got = await ws.__anext__()
            except TimeoutError:
                pass
            await ws.close()
    if every_connect:
        assert second.subscribed == {".ams.routing.SubscribeRoutingTasks"}
        assert (sent, got) == (1, {"kind": "notification", "type": ROUTING, "body": {"n": 2}})
    else:
        assert second.subscribed == set()
        assert (sent, got) == (0, None)


# -- NaN, Infinity, 1e400 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"kind": "req", "id": NaN, "type": ".GetClock", "body": {}}',
        '{"kind": "req", "id": "r1", "type": ".GetClock", "body": {"x": -Infinity}}',
        '{"kind": "req", "id": "p1", "type": ".ams.ms.PublishEvent", "body": {"dialogId": "d1",'
        ' "event": {"type": "ContentEvent", "message": "hi", "x": Infinity}}}',
        '{"kind": "req", "id": "p2", "type": ".ams.ms.PublishEvent", "body": {"dialogId": "d1",'
        ' "event": {"type": "ContentEvent", "message": 1e400}}}',
    ],
    ids=["nan-id", "minus-infinity", "publish-infinity", "publish-1e400"],
)
async def test_a_request_frame_with_a_number_json_has_not_is_refused_as_malformed(
    text: str, clock: VirtualClock
) -> None:
    """Before: served as if JSON: ``"reqId": NaN`` in the answer, a publish accepted and its
    Infinity echoed back; neither a client's parser (JSON.parse, Jackson) reads them."""
    async with _agent_socket(clock) as (sim, ws):
        await ws.send_str(text)
        answer = await _frame(ws)  # strict: a NaN or an Infinity in it fails here
        # No echo behind the answer: the next frame answers the next request.
        await _next_is_answer(ws, "next")
        (sock,) = sim.sockets.open
        received = list(sock.received)
    assert answer["kind"] == "resp"
    assert answer["reqId"] is None  # nothing of the frame was read
    assert answer["code"] == 400
    assert "malformed" in answer["body"]["msg"]
    assert answer["type"].endswith("$Response")
    assert sim.sockets.published == []
    assert received[0] == {"raw": text[:200]}


async def test_the_consumer_socket_refuses_such_a_frame_too(clock: VirtualClock) -> None:
    """Before: ``"reqId": NaN`` on the consumer socket as well."""
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
        auth = {"Authorization": f"jwt {jwt}"}
        async with http.ws_connect(sim.consumer_socket_url(), headers=auth) as ws:
            await ws.send_str('{"kind": "req", "id": NaN, "type": "GetClock", "body": {}}')
            answer = await _frame(ws)
    assert (answer["reqId"], answer["code"], answer["type"]) == (None, 400, "GetClock$Response")


async def test_text_that_is_no_request_at_all_is_still_not_answered(
    clock: VirtualClock,
) -> None:
    """Unchanged: text no reading makes a request of (not JSON, a notification, a list) has
    no answer to get; only a request is refused as malformed."""
    async with _agent_socket(clock) as (_sim, ws):
        for text in ("not json", '{"kind": "notification", "x": NaN}', "[NaN]"):
            await ws.send_str(text)
        await _next_is_answer(ws, "next")


async def test_a_frame_the_simulator_would_send_with_nan_is_a_value_error(
    clock: VirtualClock,
) -> None:
    """Before: sent as ``{"n": NaN}``, which the client could not parse."""
    async with _agent_socket(clock) as (sim, ws):
        await sim.sockets.wait_open(1)
        with pytest.raises(ValueError, match="must be JSON"):
            await sim.sockets.notify(".my.Notification", {"n": float("nan")})
        with pytest.raises(ValueError, match="must be JSON"):
            await sim.sockets.open[0].notify(".my.Notification", {"n": float("inf")})
        await _next_is_answer(ws, "next")  # nothing went out
        assert sim.sockets.open[0].dropped == []


#: A good login body, as text (the cases add a member JSON has not to it).
_LOGIN = json.dumps({"username": DEFAULT_USER, "password": DEFAULT_PASSWORD})


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (f"/api/account/{ACC}/login", _LOGIN[:-1] + ', "x": NaN}'),
        (f"/api/account/{ACC}/login", _LOGIN[:-1] + ', "x": 1e400}'),
        (f"/api/account/{ACC}/authenticate", '{"authCode": "code-1", "x": Infinity}'),
    ],
    ids=["login-nan", "login-1e400", "idp-infinity"],  # not the password
)
async def test_an_http_body_with_a_number_json_has_not_is_refused(
    path: str, text: str, clock: VirtualClock, http: aiohttp.ClientSession
) -> None:
    """Before: read with json.loads, so the login and the idp served it (200)."""
    async with (
        Simulator(clock=clock) as sim,
        http.post(sim.url + path, data=text, headers={"Content-Type": "application/json"}) as resp,
    ):
        status = resp.status
    assert 400 <= status < 500
    assert (sim.tokens.logins, sim.tokens.jwts_issued) == (0, 0)


# -- subscriptions: whoever answers, unsubscribes, the other kind's types (review r15) -------


async def _consumer(sim: Simulator, http: aiohttp.ClientSession) -> Any:
    jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
    return http.ws_connect(sim.consumer_socket_url(), headers={"Authorization": f"jwt {jwt}"})


async def test_a_subscription_an_on_handler_answers_with_its_own_send_holds(
    clock: VirtualClock,
) -> None:
    """Before: only a handler returning ``(code, body)`` subscribed; one answering by itself
    with ``socket.send`` (as RequestHandler documents) got a 200 and no routing task ever."""
    async with _agent_socket(clock) as (sim, ws):

        async def answer_myself(sock: Any, frame: dict[str, Any]) -> None:
            await sock.send(
                {
                    "kind": "resp",
                    "reqId": frame["id"],
                    "code": 200,
                    "body": {"subscriptionId": "mine"},
                    "type": frame["type"] + "$Response",
                }
            )

        sim.sockets.on(".ams.routing.SubscribeRoutingTasks", answer_myself)
        await _subscribe(ws, ".ams.routing.SubscribeRoutingTasks")
        assert await sim.sockets.notify(ROUTING, {"n": 1}) == 1
        assert (await _frame(ws))["body"] == {"n": 1}


async def test_a_subscription_answered_later_holds_from_its_answer_and_a_refusal_is_none(
    clock: VirtualClock,
) -> None:
    """Answered out of order (by the test here, through the socket's ``send``): nothing before
    the 2xx goes out, routing tasks after it; a 4xx sent the same way is no subscription."""
    waiting: list[tuple[Any, dict[str, Any]]] = []

    async def later(sock: Any, frame: dict[str, Any]) -> None:
        waiting.append((sock, frame))

    async with _agent_socket(clock) as (sim, ws):
        sim.sockets.on(".ams.routing.SubscribeRoutingTasks", later)
        sim.sockets.on(".ams.aam.SubscribeExConversations", later)
        await _req(ws, "r", ".ams.routing.SubscribeRoutingTasks")
        await _req(ws, "c", ".ams.aam.SubscribeExConversations")
        await _next_is_answer(ws, "served")  # both handed to the handler, neither answered
        assert await sim.sockets.notify(ROUTING, {}) == 0
        (sock, _), (_, _) = waiting
        # Out of order: the second one first, refused.
        await sock.send({"kind": "resp", "reqId": "c", "code": 403, "body": {}})
        await sock.send({"kind": "resp", "reqId": "r", "code": 200, "body": {}})
        assert [(f["reqId"], f["code"]) for f in (await _frame(ws), await _frame(ws))] == [
            ("c", 403),
            ("r", 200),
        ]
        assert sock.subscribed == {".ams.routing.SubscribeRoutingTasks"}
        assert await sim.sockets.notify(ROUTING, {}) == 1
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 0
        # A second answer to the same request (already answered) changes nothing.
        await sock.send({"kind": "resp", "reqId": "c", "code": 200, "body": {}})
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 0


async def test_the_subscribe_requests_waiting_for_an_answer_are_bounded(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that never answers leaves its requests waiting: only the newest are kept
    (``MAX_AWAITED_SUBSCRIPTION_ANSWERS``); a late answer to a forgotten one changes nothing."""
    monkeypatch.setattr(sockets_module, "MAX_AWAITED_SUBSCRIPTION_ANSWERS", 3)

    async def never(sock: Any, frame: dict[str, Any]) -> None:
        return None

    async with _agent_socket(clock) as (sim, ws):
        sim.sockets.on(".ams.routing.SubscribeRoutingTasks", never)
        for i in range(10):
            await _req(ws, f"s{i}", ".ams.routing.SubscribeRoutingTasks")
        await _next_is_answer(ws, "served")
        (sock,) = sim.sockets.open
        assert list(sock._awaited) == ["s7", "s8", "s9"]
        await sock.send({"kind": "resp", "reqId": "s0", "code": 200, "body": {}})
        assert sock.subscribed == set()
        await sock.send({"kind": "resp", "reqId": "s9", "code": 200, "body": {}})
        assert sock.subscribed == {".ams.routing.SubscribeRoutingTasks"}
        assert list(sock._awaited) == ["s7", "s8"]


async def test_unsubscribing_ends_the_conversation_changes_and_only_them(
    clock: VirtualClock,
) -> None:
    """Before: ``.ams.aam.UnsubscribeExConversations`` was answered 200 and the conversation
    changes kept coming, so a test could not catch a client that relies on unsubscribing."""
    async with _agent_socket(clock) as (sim, ws):
        await _subscribe(ws, ".ams.aam.SubscribeExConversations")
        await _subscribe(ws, ".ams.routing.SubscribeRoutingTasks")
        await _req(ws, "u", ".ams.aam.UnsubscribeExConversations", {"subscriptionId": "x"})
        assert (await _frame(ws))["code"] == 200
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 0
        assert await sim.sockets.notify(ROUTING, {"n": 1}) == 1  # its own subscription holds
        assert (await _frame(ws))["body"] == {"n": 1}
        # Subscribed again: they come again.
        await _subscribe(ws, ".ams.aam.SubscribeExConversations")
        assert await sim.sockets.notify(EX_CONVERSATION, {"n": 2}) == 1
        assert (await _frame(ws))["body"] == {"n": 2}


async def test_an_unsubscribe_refused_keeps_the_subscription_and_an_on_handlers_200_ends_it(
    clock: VirtualClock,
) -> None:
    """A fault's 429 in place of the unsubscribe's answer ends nothing; an ``on()`` handler
    that accepts it (returned or sent by itself) ends it as the simulator's 200 does."""
    unsubscribe = ".ams.aam.UnsubscribeExConversations"
    rule = FaultRule("busy", WsAppError(429), unit="ws_message", match=Match(path=unsubscribe))
    async with _agent_socket(clock, plan=[rule]) as (sim, ws):
        await _subscribe(ws, ".ams.aam.SubscribeExConversations")
        await _req(ws, "u1", unsubscribe)
        assert (await _frame(ws))["code"] == 429
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 1
        assert (await _frame(ws))["type"] == EX_CONVERSATION
        sim.faults.clear()

        async def accept(sock: Any, frame: dict[str, Any]) -> None:
            await sock.send({"kind": "resp", "reqId": frame["id"], "code": 200, "body": {}})

        sim.sockets.on(unsubscribe, accept)
        await _req(ws, "u2", unsubscribe)
        assert (await _frame(ws))["code"] == 200
        assert await sim.sockets.notify(EX_CONVERSATION, {}) == 0


async def test_the_other_kinds_subscribed_types_never_reach_a_socket(
    clock: VirtualClock,
) -> None:
    """Before: gated by the socket's own kind only, so a routing task or an agent's
    conversation change went to every consumer socket (which cannot subscribe to them), and a
    ``cqm`` change to every agent socket. ``kind=`` only narrows; ``to_all=True`` still sends."""
    async with (
        Simulator(clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as agent,
        await _consumer(sim, http) as consumer,
    ):
        await sim.sockets.wait_open(2)
        for type_ in (ROUTING, EX_CONVERSATION, CONSUMER_EX_CONVERSATION):
            assert await sim.sockets.notify(type_, {}) == 0, type_
        assert await sim.sockets.notify(ROUTING, {}, kind="consumer") == 0
        assert await sim.sockets.notify(CONSUMER_EX_CONVERSATION, {}, kind="brand") == 0
        await _subscribe(agent, ".ams.routing.SubscribeRoutingTasks")
        await _subscribe(consumer, "cqm.SubscribeExConversations")
        # Each to its own subscriber only.
        assert await sim.sockets.notify(ROUTING, {"to": "agent"}) == 1
        assert await sim.sockets.notify(CONSUMER_EX_CONVERSATION, {"to": "consumer"}) == 1
        assert (await _frame(agent))["body"] == {"to": "agent"}
        assert (await _frame(consumer))["body"] == {"to": "consumer"}
        await _next_is_answer(agent, "a")
        await _req(consumer, "c", "GetClock")
        assert (await _frame(consumer))["reqId"] == "c"
        # The escape hatch, narrowed by kind.
        assert await sim.sockets.notify(ROUTING, {"n": 1}, kind="consumer", to_all=True) == 1
        assert (await _frame(consumer))["body"] == {"n": 1}


# -- an answer that is not JSON (review r15) -------------------------------------------------


async def test_an_on_handlers_answer_with_nan_is_a_500_and_the_socket_stays_open(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: json.dumps(allow_nan=False) raised in the serving loop: the socket ended (the
    client saw 1006) with aiohttp's ERROR traceback. Now one ERROR, by request type, never
    the body, and a 500 the client can read."""

    async def stats(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        # statistics.mean([]): a test's bug, beside what must stay out of the log.
        return 200, {"avg": float("nan"), "token": "s3cr3t-token"}

    with caplog.at_level(logging.DEBUG):
        async with (
            Simulator(clock=clock) as sim,
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
        ):
            sim.sockets.on(".my.Stats", stats)
            await _req(ws, "1", ".my.Stats")
            answer = await _frame(ws)
            await _next_is_answer(ws, "still-open")
            assert len(sim.sockets.open) == 1
    assert (answer["reqId"], answer["code"], answer["type"]) == ("1", 500, ".my.Stats$Response")
    assert "not JSON" in answer["body"]["msg"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["le_transport.simulator"]
    message = errors[0].getMessage()
    assert ".my.Stats" in message
    assert "s3cr3t" not in message
    assert errors[0].exc_info is None


async def test_a_subscription_answered_with_nan_holds_nothing(clock: VirtualClock) -> None:
    """The 500 in its place is the answer sent: no subscription."""

    async def bad(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"subscriptionId": float("inf")}

    async with _agent_socket(clock) as (sim, ws):
        sim.sockets.on(".ams.routing.SubscribeRoutingTasks", bad)
        await _req(ws, "s", ".ams.routing.SubscribeRoutingTasks")
        assert (await _frame(ws))["code"] == 500
        assert await sim.sockets.notify(ROUTING, {}) == 0
        assert sim.sockets.open[0]._awaited == {}


async def test_an_extra_frame_after_the_answer_with_nan_makes_it_a_500_and_is_not_sent(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``after_resp`` extras are checked with the answer, before anything goes out: a 500
    alone, not a 200 followed by a socket killed on the extra."""

    async def with_extra(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        sock.after_resp.append({"kind": "notification", "type": ".my.Echo", "body": {"x": -1e999}})
        return 200, {}

    with caplog.at_level(logging.DEBUG):
        async with (
            Simulator(clock=clock) as sim,
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
        ):
            sim.sockets.on(".my.Op", with_extra)
            await _req(ws, "1", ".my.Op")
            answer = await _frame(ws)
            await _next_is_answer(ws, "next")  # the extra did not follow
            assert sim.sockets.open[0].after_resp == []
    assert (answer["reqId"], answer["code"]) == ("1", 500)
    assert [r.name for r in caplog.records if r.levelno >= logging.ERROR] == [
        "le_transport.simulator"
    ]
