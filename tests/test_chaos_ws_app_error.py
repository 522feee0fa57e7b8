"""WsAppError end to end: the simulator answers a socket request with a 429 or 500 ``resp``,
and the resilient socket hands it to its caller as a typed error on a connection that stays up."""

from __future__ import annotations

import pytest

from le_transport import SocketRequestError
from le_transport.chaos import FaultInjector, FaultRule, Match, Schedule, WsAppError
from le_transport.sockets import ResilientSocket
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

SUBSCRIBE = ".ams.aam.SubscribeExConversations"


def _app_error(fault: WsAppError, type: str, *, times: int | None = None) -> FaultRule:
    return FaultRule(
        f"app-error-{fault.code}",
        fault,
        unit="ws_message",
        match=Match(path=type),
        schedule=Schedule(fail_next=times),
    )


@pytest.mark.parametrize(
    ("fault", "body"),
    [
        (WsAppError(429), {"msg": "too many requests"}),
        (WsAppError(500), {"msg": "internal server error"}),
        (WsAppError(500, body={"msg": "UMS unavailable", "internalCode": 7}), None),
    ],
    ids=["429", "500", "500-custom-body"],
)
async def test_a_socket_request_answered_with_an_app_error_raises_socket_request_error(
    sim: Simulator, clock: VirtualClock, states: StateLog, fault: WsAppError, body: object
) -> None:
    sim.faults.add(_app_error(fault, ".GetClock", times=1))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError) as info:
            await ws.request(".GetClock", {})
        # The connection stays up: the very next request is answered on it.
        answer = await ws.request(".GetClock", {})
    assert info.value.code == fault.code
    assert info.value.body == (fault.body if body is None else body)
    assert ".GetClock" in str(info.value)
    assert answer["code"] == 200
    assert len(sim.sockets.all) == 1
    assert "lost" not in states.names()
    assert [d.kind for d in sim.faults.injected()] == ["ws_app_error"]


async def test_an_app_error_hits_only_the_matched_request_type(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_app_error(WsAppError(429), SUBSCRIBE))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        for _ in range(2):
            with pytest.raises(SocketRequestError) as info:
                await ws.request(SUBSCRIBE, {"convState": ["OPEN"]})
            assert info.value.code == 429
            assert (await ws.request(".GetClock", {}))["code"] == 200
    assert sim.sockets.all[0].subscriptions == []  # refused before the real handler saw them


async def test_a_429_on_the_resubscribe_in_on_connect_ends_with_the_socket_ready_and_subscribed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_app_error(WsAppError(429), SUBSCRIBE, times=1))

    async def resubscribe(ws: ResilientSocket) -> None:
        await ws.request(SUBSCRIBE, {"convState": ["OPEN"]})

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        assert (await ws.request(".GetClock", {}))["code"] == 200
    # The socket layer treats a failed on_connect as a lost connection: it reconnected once
    # and subscribed on the new one.
    assert [len(s.subscriptions) for s in sim.sockets.all] == [0, 1]
    assert states.names().count("ready") == 1


async def test_a_resubscribe_rate_limited_again_and_again_backs_off_without_logging_in_again(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_app_error(WsAppError(429), SUBSCRIBE, times=6))

    async def resubscribe(ws: ResilientSocket) -> None:
        await ws.request(SUBSCRIBE, {"convState": ["OPEN"]})

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
    # A rate limit is no revoked token and no outage: no re-authentication, no escalation to
    # a re-login (one login in all), and every pause at least LiveEngage's second.
    assert sim.count("POST", "/api/account/*/login") == 1
    assert "reauthenticating" not in states.names()
    assert "escalating" not in states.names()
    pauses = [e.details["in_seconds"] for e in states.of("reconnecting")]
    assert len(pauses) == 6
    assert min(pauses) >= 1.0
    assert all("answered 429" in e.details["reason"] for e in states.of("reconnecting"))
    assert [len(s.subscriptions) for s in sim.sockets.all] == [0] * 6 + [1]


def test_the_injectors_socket_hook_answers_a_matched_message_with_the_app_error() -> None:
    injector = FaultInjector.seeded(3, _app_error(WsAppError(500), ".GetClock", times=1))
    first = injector.message_received(".GetClock")
    assert first is not None
    assert first.fault == WsAppError(500)
    assert injector.message_received(".GetClock") is None
    assert [r["kind"] for r in injector.report()] == ["ws_app_error"]
