"""EngineDialer checks what it will send when it is built, as Engine.websocket does: its
query and the consumer socket's client properties, not only its headers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from le_transport import Engine, StaticDomains
from le_transport.errors import ConfigurationError, InvalidRequest
from le_transport.sockets import EngineDialer
from le_transport.testing import VirtualClock

_SECRET = "r26-dialer-value-51c2"


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"params": {"a": None}}, "params['a']"),
        ({"params": {"a": True}}, "params['a']"),
        ({"params": "a=1"}, "params must be a mapping"),
        ({"params": [("a", "1"), ("a", "2")]}, "repeats a name"),
        ({"params": {"a": f"{_SECRET}\udcff"}}, "params['a']"),
        ({"client_properties": "x"}, "client_properties must be a mapping"),
        ({"client_properties": {"n": math.nan, "s": _SECRET}}, "client_properties"),
    ],
)
async def test_a_dialer_refuses_what_it_cannot_send_when_built(
    clock: VirtualClock, kwargs: dict[str, Any], said: str
) -> None:
    # A dialer built by hand took them, and failed at its first connect (a query value that
    # is no str, a NaN in InitConnection's properties), where Engine.websocket refused them.
    async with Engine(StaticDomains({"svc": "127.0.0.1:1"}), scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as info:
            EngineDialer(engine, "svc", "/ws", **kwargs)
    assert said in str(info.value)
    assert _SECRET not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connect_timeout": 0},
        {"connect_timeout": math.nan},
        {"connect_timeout": "30"},
        {"prepare_timeout": -1.0},
        {"max_msg_size": -1},
        {"max_msg_size": 1.5},
    ],
)
async def test_a_dialer_refuses_bad_timeouts_and_sizes_when_built(
    clock: VirtualClock, kwargs: dict[str, Any]
) -> None:
    async with Engine(StaticDomains({"svc": "127.0.0.1:1"}), scheme="http", clock=clock) as engine:
        with pytest.raises(ConfigurationError) as info:
            EngineDialer(engine, "svc", "/ws", **kwargs)
    assert next(iter(kwargs)) in str(info.value)


async def test_a_dialer_keeps_a_good_query_over_the_path_s_version(clock: VirtualClock) -> None:
    async with Engine(StaticDomains({"svc": "127.0.0.1:1"}), scheme="http", clock=clock) as engine:
        dialer = EngineDialer(engine, "svc", "/ws", params=[("a", "1"), ("b", 2)])  # type: ignore[arg-type]
        assert dialer._params == {"a": "1", "b": 2}
