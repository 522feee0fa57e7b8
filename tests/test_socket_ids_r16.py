"""A socket's request ids and the ids of the frames an application sends itself.

The socket numbered its requests "1", "2"... (its keepalive's ``GetClock`` among them), as an
application sending its own request frames with ``send()`` numbers them (LivePerson's SDKs do):
the answer to the application's frame went to a library request waiting on the same id, or,
that request answered or given up, was dropped as a late answer. The socket's ids now carry a
prefix random to the process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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


async def test_answer_to_a_frame_sent_with_send_reaches_async_for(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        # The library's own request (or a keepalive probe) was id "1".
        assert (await ws.request(".GetClock"))["code"] == 200
        # The caller's own request frame, with the caller's own id: README says send()
        # "sends any JSON value as it is" and every resp matching no request goes to async for.
        await ws.send({"kind": "req", "id": "1", "type": ".GetClock", "body": {}})
        frame = await asyncio.wait_for(ws.__anext__(), 5)
    assert frame["reqId"] == "1"


async def test_answer_to_a_callers_frame_is_not_taken_by_a_pending_request(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def slow_subscribe(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        await clock.sleep(1)
        return 200, {"subscriptionId": "s"}

    sim.sockets.on(".ams.aam.SubscribeExConversations", slow_subscribe)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        # The caller's own request frame, its own id "1" (a counter of its own, as LivePerson's
        # SDK samples use), answered in a second.
        await ws.send(
            {"kind": "req", "id": "1", "type": ".ams.aam.SubscribeExConversations", "body": {}}
        )
        # The library's request gets the id "1" too.
        answer = await ws.request(".GetClock")
    assert answer["type"] == ".GetClock$Response", answer


async def test_a_keepalive_probe_makes_the_callers_own_answer_vanish(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)  # default keepalive: .GetClock after 30 s idle
        await ws.wait_open()
        await clock.sleep(45)  # one keepalive probe went out (the socket's request id "1")
        await ws.send(
            {
                "kind": "req",
                "id": "1",
                "type": ".ams.ms.PublishEvent",
                "body": {
                    "dialogId": "d",
                    "event": {"type": "ContentEvent", "contentType": "text/plain", "message": "hi"},
                },
            }
        )
        got: list[Any] = []

        async def read() -> None:
            async for frame in ws:
                got.append(frame)

        reader = asyncio.ensure_future(read())
        await clock.sleep(5)
        reader.cancel()
    assert [f.get("reqId") for f in got if f.get("kind") == "resp"] == ["1"], got
