"""Headers a caller may not set on the engine's calls.

- ``Engine.websocket``: aiohttp sends the handshake's ``Sec-WebSocket-Version: 13`` only where
  the caller's headers hold none (as it does ``Connection: Upgrade``): a caller's version
  replaced it, and a server that speaks 13 only refused every upgrade, the socket blaming
  the path and the credentials. Refused at the call, as ``Connection`` is, its value unshown.
- ``Engine.websocket``: a caller's ``Sec-WebSocket-Extensions`` went out as it was, and a
  server that agreed to compress sent frames the socket failed on. Refused at the call.
- ``Engine.websocket``: a caller's ``Upgrade`` is refused as the upgrade's own header, not
  with ``Engine.request``'s reason.
- ``Engine.request``: a protocol upgrade is refused however the headers are given (a
  multidict holding a second ``Connection``), and one without is sent as it is.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from le_transport import Engine, InvalidRequest, RetryPolicy
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

ONCE = RetryPolicy(pauses=(), attempt_timeout=None)


@pytest.mark.parametrize("name", ["Sec-WebSocket-Version", "sec-websocket-version"])
async def test_a_websocket_version_on_a_socket_is_refused_at_the_call(
    sim: Simulator, clock: VirtualClock, states: StateLog, name: str
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as info:
            await brand_socket(engine, sim, headers={name: "secret-version-12"})
        text = str(info.value)
        assert repr(name) in text
        assert "secret-version-12" not in text
        # Nothing was left behind: a socket without it still opens.
        ws = await brand_socket(engine, sim, headers={"X-Note": "a"})
        await ws.wait_open()
        await ws.close()


async def test_a_second_connection_naming_upgrade_in_a_multidict_is_refused(
    clock: VirtualClock,
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [("Connection", "keep-alive"), ("connection", "close, Upgrade")]
    )
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest, match="'connection'"):
            await engine.request("GET", "svc", "/x", headers=headers)


@pytest.mark.parametrize("name", ["Sec-WebSocket-Extensions", "SEC-WEBSOCKET-EXTENSIONS"])
async def test_a_websocket_extension_on_a_socket_is_refused_at_the_call(
    sim: Simulator, clock: VirtualClock, states: StateLog, name: str
) -> None:
    """The engine's upgrade asks no extension (aiohttp reads frames uncompressed): a caller's
    ``Sec-WebSocket-Extensions: permessage-deflate`` went out as it was, a server that agreed
    compressed its frames, and the socket failed on the first one (reserved bits set) and on
    every reconnect's. Refused at the call, its value unshown."""
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as info:
            await brand_socket(engine, sim, headers={name: "permessage-deflate; secret-x"})
        text = str(info.value)
        assert repr(name) in text
        assert "secret-x" not in text


@pytest.mark.parametrize(
    "headers",
    [{"Upgrade": "websocket"}, {"connection": "keep-alive, Upgrade"}],
    ids=["upgrade", "connection"],
)
async def test_an_upgrade_header_on_a_socket_is_refused_as_the_upgrades_own(
    sim: Simulator, clock: VirtualClock, states: StateLog, headers: dict[str, str]
) -> None:
    """On ``Engine.websocket`` a caller's ``Upgrade`` (or a ``Connection`` naming it) is refused
    as the upgrade's own header, not with ``Engine.request``'s reason (an engine reading HTTP
    answers only, to be told to open its WebSocket with the very call it made)."""
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as info:
            await brand_socket(engine, sim, headers=headers)
    text = str(info.value)
    [name] = headers
    assert repr(name) in text
    assert "WebSocket upgrade's own" in text
    assert "Engine.websocket" not in text
    assert "HTTP answer" not in text


@pytest.mark.parametrize(
    "headers", [{"Upgrade": "h2c"}, {"CONNECTION": "close, upgrade"}], ids=["upgrade", "conn"]
)
async def test_a_keepalive_refuses_a_protocol_upgrade_before_it_starts(
    clock: VirtualClock, headers: dict[str, str]
) -> None:
    """As its docstring says: the request's header rules, the upgrade's refusal included."""
    from le_transport.policies import SERVER_CHAT_API_CHAT_INFO

    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="switch protocols"):
            engine.keepalive(
                SERVER_CHAT_API_CHAT_INFO,
                "svc",
                fields={"account": "1", "chat": "c"},
                headers=headers,
            )
