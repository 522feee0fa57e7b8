"""Server→client messages delayed (WsDelay) or lost (WsDropMessage), seen through the
resilient socket: a lost or late answer is found by the request's timeout on the clock, and the
connection stays up."""

from __future__ import annotations

import pytest

from le_transport import SocketRequestTimeout
from le_transport.chaos import FaultInjector, FaultRule, Match, Schedule, WsDelay, WsDropMessage
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

NOTIFICATION = ".ams.routing.RoutingTaskNotification"


def _rule(fault: WsDelay | WsDropMessage, type: str, *, times: int | None = None) -> FaultRule:
    return FaultRule(
        fault.kind, fault, unit="ws_message", match=Match(path=type), schedule=Schedule(0, times)
    )


async def test_a_dropped_answer_is_found_by_the_request_timeout_and_the_socket_stays_up(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_rule(WsDropMessage(), ".GetClock$Response", times=1))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        started = clock.now()
        with pytest.raises(SocketRequestTimeout):
            await ws.request(".GetClock", {}, timeout=7)
        assert clock.now() - started == pytest.approx(7.0)
        answer = await ws.request(".GetClock", {}, timeout=7)
    assert answer["code"] == 200
    assert len(sim.sockets.all) == 1
    assert "lost" not in states.names()
    assert [f["type"] for f in sim.sockets.all[0].dropped] == [".GetClock$Response"]


async def test_an_answer_delayed_within_the_timeout_arrives_after_the_delay(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_rule(WsDelay(3_000), ".GetClock$Response"))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        started = clock.now()
        answer = await ws.request(".GetClock", {}, timeout=5)
        took = clock.now() - started
    assert answer["code"] == 200
    assert took == pytest.approx(3.0)


async def test_an_answer_delayed_past_the_timeout_fails_the_request_and_never_answers_another(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_rule(WsDelay(10_000), ".GetClock$Response", times=1))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestTimeout):
            await ws.request(".GetClock", {}, timeout=4)
        await clock.sleep(10)  # the late answer arrives meanwhile
        answer = await ws.request(".GetClock", {}, timeout=4)
    assert answer["code"] == 200
    assert "lost" not in states.names()
    first, second = sim.sockets.all[0].received[-2:]
    assert answer["reqId"] == second["id"] != first["id"]


async def test_a_dropped_notification_never_reaches_the_consumer(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.add(_rule(WsDropMessage(), NOTIFICATION, times=1))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.wait_open(1)
        for n in (1, 2):
            await sim.sockets.notify(NOTIFICATION, {"n": n}, to_all=True)
        frame = await anext(aiter(ws))
    assert frame["body"] == {"n": 2}
    assert [f["body"] for f in sim.sockets.all[0].dropped] == [{"n": 1}]


def test_the_injectors_socket_hook_answers_delays_and_drops_of_received_messages() -> None:
    injector = FaultInjector.seeded(
        5,
        _rule(WsDelay(1_000, jitter_ms=500), ".GetClock$Response"),
        _rule(WsDropMessage(), NOTIFICATION, times=1),
    )
    late = injector.message_received(".GetClock$Response")
    assert late is not None
    assert 0.5 <= late.delay_s <= 1.5
    lost = injector.message_received(NOTIFICATION)
    assert lost is not None
    assert lost.fault == WsDropMessage()
    assert injector.message_received(NOTIFICATION) is None
