"""Bad input to a socket: a message that cannot be sent (a type that is not a str, a body that
is not JSON, a str that is not valid text, a timeout that is not a positive number) is refused
with InvalidMessage before anything goes out or is queued, and the socket carries on; options
and callbacks of the wrong kind are refused when the socket is made."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

from le_transport import ConfigurationError, InvalidMessage, RealClock
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.providers import Credentials
from le_transport.sockets import Connection, ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import BEARER
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

#: A str that UTF-8 cannot encode (a lone surrogate), with a credential-like part that no
#: error may show.
UNENCODABLE = f"token={BEARER} \ud800"


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
        (lambda ws: ws.send(UNENCODABLE), "not valid text"),
        (lambda ws: ws.wait_open(timeout="5"), "positive number"),
        (lambda ws: ws.wait_open(timeout=float("nan")), "positive number"),
        (lambda ws: ws.wait_open(timeout=-1), "positive number"),
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
        "lone-surrogate-text",
        "str-wait-open-timeout",
        "nan-wait-open-timeout",
        "negative-wait-open-timeout",
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
        with pytest.raises(InvalidMessage, match=match) as refused:
            await call(ws)
        assert BEARER not in str(refused.value)
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


@pytest.mark.parametrize("on_connect", [False, True], ids=["plain", "with-on-connect"])
async def test_a_str_that_is_not_valid_text_is_refused_before_it_is_queued(
    sim: Simulator, clock: VirtualClock, states: StateLog, on_connect: bool
) -> None:
    async def nothing(ws: ResilientSocket) -> None:
        return None

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[nothing] if on_connect else [])
        assert not ws.is_open
        # Queued, it would fail the write on every connect: the socket would stop for good,
        # or (with on_connect) stay connected and never open.
        with pytest.raises(InvalidMessage, match="not valid text") as refused:
            await ws.send(UNENCODABLE)
        assert ws.queued == 0
        await ws.wait_open(timeout=60)
        answer = await ws.request(".GetClock", {})
    assert answer["code"] == 200
    assert BEARER not in str(refused.value)
    assert refused.value.__cause__ is None
    assert len(sim.sockets.all) == 1
    assert [f.get("type") for f in sim.sockets.all[0].received] == [".GetClock"]


class _NeverDials:
    """A dialer the socket never gets to use (it is not started)."""

    name = "test/never"

    async def dial(self) -> Connection:
        raise AssertionError("not started: nothing dials")

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        return None

    async def refresh(self) -> None:
        return None


@pytest.mark.parametrize("clock_kind", ["real", "virtual"])
async def test_a_timeout_of_the_wrong_type_is_refused_alike_on_every_clock_and_never_shown(
    clock_kind: str,
) -> None:
    clock = RealClock() if clock_kind == "real" else VirtualClock()
    ws = ResilientSocket(_NeverDials(), clock=clock)
    # The real clock used to raise a raw TypeError, the virtual one to take "5" as 5 s.
    with pytest.raises(InvalidMessage, match="got str") as refused:
        await ws.wait_open(timeout=BEARER)  # type: ignore[arg-type]
    assert BEARER not in str(refused.value)
    with pytest.raises(InvalidMessage, match="got str") as refused:
        await ws.request(".GetClock", timeout=BEARER)  # type: ignore[arg-type]
    assert BEARER not in str(refused.value)
    await ws.close()


def test_a_socket_keepalive_that_would_probe_whatever_arrives_is_refused() -> None:
    every_interval = attrs.evolve(MESSAGING_AGENT_SDK_GETCLOCK, only_when_idle=False)
    # Sockets probe when nothing arrived for an interval; outbound_idle is the way to probe a
    # socket that only receives.
    with pytest.raises(ConfigurationError, match="outbound_idle"):
        SocketOptions(keepalive=every_interval)
    outbound = attrs.evolve(MESSAGING_AGENT_SDK_GETCLOCK, outbound_idle=True)
    assert SocketOptions(keepalive=outbound).keepalive is outbound
