"""The simulator's messaging sockets: frames, subscriptions, notifications, idle close, faults."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from le_transport.chaos import (
    FaultPlan,
    FaultRule,
    Match,
    Schedule,
    SlowBody,
    Status,
    TruncatedBody,
    WsAppError,
    WsClose,
    WsDelay,
    WsDrop,
    WsDropMessage,
    WsRejectHandshake,
    WsSilence,
)
from le_transport.clock import timeout_after
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_USER,
    Simulator,
    SimulatorConfig,
)

ACC = DEFAULT_ACCOUNT


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


def _bearer(sim: Simulator) -> str:
    return sim.tokens.login(ACC, DEFAULT_USER, 3600, "user").bearer


async def _req(ws: aiohttp.ClientWebSocketResponse, id: str, type: str, body: Any = None) -> None:
    await ws.send_str(json.dumps({"kind": "req", "id": id, "type": type, "body": body or {}}))


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict)
    return frame


async def test_get_clock_is_answered_with_the_simulators_time_in_epoch_ms(
    sim: Simulator, clock: VirtualClock
) -> None:
    # The agent socket's GetClock is ".GetClock"; the consumer socket's is documented both
    # with and without the dot (tests/test_protocol_sockets.py: the other spelling is refused).
    jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as brand,
        http.ws_connect(
            sim.consumer_socket_url(), headers={"Authorization": f"jwt {jwt}"}
        ) as consumer,
    ):
        await clock.sleep(10)
        for ws, type_ in ((brand, ".GetClock"), (consumer, ".GetClock"), (consumer, "GetClock")):
            await _req(ws, "r1", type_)
            frame = await _frame(ws)
            assert frame["kind"] == "resp"
            assert frame["reqId"] == "r1"
            assert frame["code"] == 200
            assert frame["type"] == f"{type_}$Response"
            assert frame["body"]["currentTime"] == int(sim.tokens.epoch_now() * 1000)


async def test_subscriptions_are_recorded_per_connection(sim: Simulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await _req(ws, "s1", ".ams.aam.SubscribeExConversations", {"convState": ["OPEN"]})
        await _req(ws, "s2", ".ams.routing.SubscribeRoutingTasks")
        assert (await _frame(ws))["code"] == 200
        assert (await _frame(ws))["code"] == 200
        (sock,) = sim.sockets.open
        assert sock.subscription_types == [
            ".ams.aam.SubscribeExConversations",
            ".ams.routing.SubscribeRoutingTasks",
        ]


async def test_an_invalid_bearer_is_refused_with_401_on_the_upgrade(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(sim.brand_socket_url("not-a-bearer"))
    assert info.value.status == 401
    assert sim.sockets.rejected == [401]
    assert "not-a-bearer" not in repr(sim.requests)


async def test_notifications_reach_every_subscribed_socket(sim: Simulator) -> None:
    # Routing tasks come to a socket that subscribed to them (tests/test_simulator_input_r15.py:
    # not to one that did not).
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as a,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as b,
    ):
        for ws in (a, b):
            await _req(ws, "s1", ".ams.routing.SubscribeRoutingTasks")
            assert (await _frame(ws))["code"] == 200
        await sim.sockets.wait_open(2)
        sent = await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"changes": []})
        assert sent == 2
        for ws in (a, b):
            frame = await _frame(ws)
            assert frame == {
                "kind": "notification",
                "type": ".ams.routing.RoutingTaskNotification",
                "body": {"changes": []},
            }


async def test_published_messages_are_acknowledged_recorded_and_echoed(sim: Simulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        for i in range(3):
            await _req(
                ws,
                f"m{i}",
                ".ams.ms.PublishEvent",
                {"dialogId": "d1", "event": {"type": "ContentEvent", "message": f"hi {i}"}},
            )
            resp = await _frame(ws)
            assert resp["reqId"] == f"m{i}"
            assert resp["code"] == 200
            echo = await _frame(ws)
            assert echo["type"] == ".ams.ms.MessagingEventNotification"
            assert echo["body"]["changes"][0]["event"]["message"] == f"hi {i}"
    assert sim.sockets.published_ids() == ["m0", "m1", "m2"]


async def test_consumer_socket_accepts_a_jwt_header_or_an_init_connection_frame(
    sim: Simulator,
) -> None:
    jwt = sim.tokens.issue_jwt(ACC, "consumer", 3600, "consumer").value
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            sim.consumer_socket_url(), headers={"Authorization": f"jwt {jwt}"}
        ) as ws:
            await _req(ws, "1", "GetClock")
            assert (await _frame(ws))["code"] == 200
        async with http.ws_connect(sim.consumer_socket_url()) as ws:
            await ws.send_str(
                json.dumps(
                    {
                        "kind": "req",
                        "id": "0",
                        "type": "InitConnection",
                        "headers": [
                            {"type": ".ams.headers.ClientProperties"},
                            {"type": ".ams.headers.ConsumerAuthentication", "jwt": jwt},
                        ],
                    }
                )
            )
            assert (await _frame(ws))["code"] == 200
            await _req(ws, "1", "GetClock")
            assert (await _frame(ws))["code"] == 200
        async with http.ws_connect(sim.consumer_socket_url()) as ws:
            await _req(ws, "1", "GetClock")
            await ws.receive()
            assert ws.close_code == 4401


async def test_an_idle_socket_is_closed_after_60_seconds(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await clock.sleep(30)
        await _req(ws, "k", ".GetClock")
        await _frame(ws)
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert clock.now() == pytest.approx(90.0)


async def test_ws_drop_after_two_messages_ends_without_a_close_frame(sim: Simulator) -> None:
    sim.faults.add(FaultRule("drop", WsDrop(after_messages=2), unit="ws_session"))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await _req(ws, "1", ".GetClock")
        assert (await _frame(ws))["code"] == 200
        await _req(ws, "2", ".GetClock")
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code == 1006
    assert sim.sockets.all[0].ended == ("drop", None)


@pytest.mark.parametrize("code", [4401, 4407, 1011, 1001])
async def test_ws_close_sends_the_scripted_close_code(sim: Simulator, code: int) -> None:
    sim.faults.add(FaultRule("close", WsClose(code), unit="ws_session"))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == code


@pytest.mark.parametrize(("service", "closed"), [("facadeMsg", True), ("agentVep", False)])
async def test_a_session_rule_matches_the_sockets_service_as_the_injector_does(
    sim: Simulator, service: str, closed: bool
) -> None:
    # The simulator decided sessions without their service, so a rule naming one (which the
    # client-side injector matches) never fired here.
    sim.faults.add(
        FaultRule("close", WsClose(4401), unit="ws_session", match=Match(service=service))
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        if closed:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4401
        else:
            await _req(ws, "1", ".GetClock")
            assert (await _frame(ws))["code"] == 200
    assert sim.faults.injected_counts() == ({"close": 1} if closed else {})


async def test_a_silent_socket_answers_neither_requests_nor_pings(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(FaultRule("quiet", WsSilence(after_messages=1), unit="ws_session"))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim)), autoping=False) as ws,
    ):
        await _req(ws, "1", ".GetClock")
        await ws.ping(b"are you there")
        with pytest.raises(TimeoutError):
            async with timeout_after(clock, 120):
                await ws.receive()
        assert sim.sockets.all[0].silent
        sim.sockets.all[0].drop()


async def test_handshake_rejection_and_a_429_resp_are_scriptable(sim: Simulator) -> None:
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(503)], unit="ws_session")
    sim.faults.add(FaultRule("rl", Status(429), match=Match(path=".GetClock"), unit="ws_message"))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(sim.brand_socket_url(_bearer(sim)))
        assert info.value.status == 503
        async with http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws:
            await _req(ws, "1", ".GetClock")
            assert (await _frame(ws))["code"] == 429


async def test_expired_tokens_close_open_sockets_with_4401_and_refuse_new_ones(
    sim: Simulator,
) -> None:
    bearer = _bearer(sim)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sim.brand_socket_url(bearer)) as ws:
            await sim.sockets.wait_open(1)
            await sim.expire_tokens()
            await ws.receive()
            assert ws.close_code == 4401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(sim.brand_socket_url(bearer))


async def test_a_restart_drops_sockets_and_comes_back_on_the_same_port(
    sim: Simulator, clock: VirtualClock
) -> None:
    bearer = _bearer(sim)
    port = sim.port
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sim.brand_socket_url(bearer)) as ws:
            await sim.sockets.wait_open(1)
            await sim.restart(down_for=5)
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert sim.port == port
        assert clock.now() == pytest.approx(5.0)
        async with http.ws_connect(sim.brand_socket_url(bearer)) as ws:
            await _req(ws, "1", ".GetClock")
            assert (await _frame(ws))["code"] == 200
    assert len(sim.sockets.all) == 2


async def test_a_ws_app_error_answers_the_matched_request_with_its_code_and_the_socket_stays_open(
    sim: Simulator,
) -> None:
    sim.faults.add(
        FaultRule(
            "rl",
            WsAppError(429),
            unit="ws_message",
            match=Match(path=".GetClock"),
            schedule=Schedule(fail_next=1),
        )
    )
    sim.faults.add(
        FaultRule(
            "boom",
            WsAppError(500, body="try again later"),
            unit="ws_message",
            match=Match(path=".ams.routing.*"),
        )
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await _req(ws, "1", ".GetClock")
        assert await _frame(ws) == {
            "kind": "resp",
            "reqId": "1",
            "code": 429,
            "body": {"msg": "too many requests"},
            "type": ".GetClock$Response",
        }
        await _req(ws, "2", ".ams.routing.SubscribeRoutingTasks")
        assert await _frame(ws) == {
            "kind": "resp",
            "reqId": "2",
            "code": 500,
            "body": "try again later",
            "type": ".ams.routing.SubscribeRoutingTasks$Response",
        }
        await _req(ws, "3", ".GetClock")
        assert (await _frame(ws))["code"] == 200
    (sock,) = sim.sockets.all
    assert sock.subscriptions == []
    assert sock.ended is not None
    assert sock.ended[0] == "client"
    assert [(d.rule_id, d.kind) for d in sim.faults.injected()] == [
        ("rl", "ws_app_error"),
        ("boom", "ws_app_error"),
    ]


async def test_a_dropped_answer_never_reaches_the_client_and_the_next_one_does(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule(
            "lost",
            WsDropMessage(),
            unit="ws_message",
            match=Match(path=".GetClock$Response"),
            schedule=Schedule(fail_next=1),
        )
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await _req(ws, "1", ".GetClock")
        with pytest.raises(TimeoutError):
            async with timeout_after(clock, 10):
                await ws.receive()
        await _req(ws, "2", ".GetClock")
        assert (await _frame(ws))["reqId"] == "2"
    (sock,) = sim.sockets.all
    assert [f["reqId"] for f in sock.dropped] == ["1"]
    assert [(d.rule_id, d.index, d.outcome) for d in sim.faults.log] == [
        ("lost", 0, "inject"),
        ("lost", 1, "pass"),
    ]


async def test_ws_delay_holds_matched_frames_on_the_clock_and_nothing_overtakes_them(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule("late", WsDelay(2_000), unit="ws_message", match=Match(path=".GetClock$Response"))
    )
    arrivals: list[tuple[float, str]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await _req(ws, "1", ".GetClock")
        await _req(ws, "2", ".ams.routing.SubscribeRoutingTasks")  # not delayed itself
        for _ in range(2):
            frame = await _frame(ws)
            arrivals.append((clock.now(), frame["reqId"]))
        await clock.sleep(1)
        await _req(ws, "3", ".ams.routing.SubscribeRoutingTasks")
        frame = await _frame(ws)
        arrivals.append((clock.now(), frame["reqId"]))
    # The subscription's answer queued behind the held one; once none is held, none waits.
    assert arrivals == [(2.0, "1"), (2.0, "2"), (3.0, "3")]


async def test_ws_delay_jitter_is_seeded_and_each_delay_within_plus_or_minus_jitter() -> None:
    async def arrivals(seed: int) -> list[tuple[float, str]]:
        clock = VirtualClock()
        plan = FaultPlan(
            seed=seed,
            rules=[
                FaultRule(
                    "late",
                    WsDelay(1_000, jitter_ms=800),
                    unit="ws_message",
                    match=Match(path="*$Response"),
                )
            ],
        )
        out: list[tuple[float, str]] = []
        async with (
            Simulator(clock=clock, plan=plan) as sim,
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
        ):
            for i in range(6):
                await _req(ws, str(i), ".GetClock")
                frame = await _frame(ws)
                out.append((clock.now(), str(frame["reqId"])))
        return out

    first = await arrivals(11)
    assert first == await arrivals(11)
    assert first != await arrivals(12)
    assert [r for _, r in first] == ["0", "1", "2", "3", "4", "5"]
    gaps = [b[0] - a[0] for a, b in zip([(0.0, ""), *first], first, strict=False)]
    assert all(0.2 <= g <= 1.8 for g in gaps)


# -- hostile frames and faults that cannot apply to an upgrade ---------------------------------


async def test_a_frame_nested_past_the_parsers_limit_is_kept_raw_and_the_socket_stays_open(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    deep = "[" * 50_000 + "]" * 50_000
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws,
    ):
        await ws.send_str(deep)
        await _req(ws, "r1", ".GetClock")  # still served: the bad frame did not end it
        assert (await _frame(ws))["code"] == 200
    (sock,) = sim.sockets.all
    assert sock.received[0] == {"raw": deep[:200]}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("fault", [TruncatedBody(keep_bytes=10), SlowBody(1, 10)])
async def test_a_body_fault_does_not_apply_to_a_socket_upgrade_nor_count_as_injected(
    fault: TruncatedBody | SlowBody, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # One body fault for everything: the upgrade has no body to cut, so the rule's one turn
    # must go to the HTTP request after it, not be spent (and logged as injected) on the socket.
    sim.faults.add(FaultRule("cut", fault=None, sequence=[fault], match=Match(path="*")))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sim.brand_socket_url(_bearer(sim))) as ws:
            await _req(ws, "r1", ".GetClock")
            assert (await _frame(ws))["code"] == 200
        assert list(sim.faults.log) == []
        async with http.get(f"{sim.url}/api/account/{ACC}/service/baseURI.json") as resp:
            if isinstance(fault, TruncatedBody):
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            else:
                assert "baseURIs" in await resp.json()
    assert [(d.rule_id, d.outcome) for d in sim.faults.log] == [("cut", "inject")]
    assert sim.faults.injected_counts() == {"cut": 1}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_the_fault_header_does_not_force_a_body_fault_onto_a_socket_upgrade(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Simulator(SimulatorConfig(fault_header=True), clock=clock) as sim:
        sim.faults.add(FaultRule("cut", TruncatedBody(keep_bytes=10), match=Match(path="/none")))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                sim.brand_socket_url(_bearer(sim)), headers={"X-LE-Fault": "cut"}
            ) as ws,
        ):
            await _req(ws, "r1", ".GetClock")
            assert (await _frame(ws))["code"] == 200
        assert list(sim.faults.log) == []
        assert sim.requests[-1].fault is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
