"""Bad input to a socket: a message that cannot be sent (a type that is not a str, a body that
is not JSON, a timeout that is not a positive number) is refused with InvalidMessage before
anything goes out, and the socket carries on; options and callbacks of the wrong kind are
refused when the socket is made."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from le_transport import ConfigurationError, InvalidMessage
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


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda ws: ws.request(5, {}), "non-empty str"),
        (lambda ws: ws.request("", {}), "non-empty str"),
        (lambda ws: ws.request(".GetClock", {"a": object()}), "not JSON"),
        (lambda ws: ws.request(".GetClock", {"ratio": float("nan")}), "not JSON"),
        (lambda ws: ws.request(".GetClock", {}, timeout=-1), "positive number"),
        (lambda ws: ws.request(".GetClock", {}, timeout="5"), "positive number"),
        (lambda ws: ws.request(".GetClock", {}, headers=5), "list of header"),
        (lambda ws: ws.send({"a": object()}), "not JSON"),
        (lambda ws: ws.send({"ratio": float("inf")}), "not JSON"),
    ],
    ids=[
        "int-type",
        "empty-type",
        "object-body",
        "nan-body",
        "negative-timeout",
        "str-timeout",
        "int-headers",
        "object-frame",
        "infinite-frame",
    ],
)
async def test_a_message_that_cannot_be_sent_is_invalid_message_and_the_socket_carries_on(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    call: Callable[[ResilientSocket], Awaitable[object]],
    match: str,
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(InvalidMessage, match=match):
            await call(ws)
        answer = await ws.request(".GetClock", {})
    assert answer["code"] == 200
    # Nothing of the refused message reached the server; only the GetClock did.
    assert [f.get("type") for f in sim.sockets.all[0].received] == [".GetClock"]


@pytest.mark.parametrize(
    "kwargs",
    [{"options": 5}, {"on_connect": [5]}, {"on_frame": "handler"}],
    ids=["options", "on_connect", "on_frame"],
)
async def test_a_socket_with_options_or_callbacks_of_the_wrong_kind_is_refused_at_once(
    sim: Simulator, clock: VirtualClock, states: StateLog, kwargs: dict[str, Any]
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(ConfigurationError):
            await brand_socket(engine, sim, **kwargs)
    assert sim.sockets.all == []
