"""The engine's request path and a final 1xx answer.

- A caller's ``Upgrade`` header (``Upgrade: h2c``), or a ``Connection`` header naming
  ``upgrade``, went out through ``Engine.request``: a server that agreed answered 101, which
  the engine, unable to use a switched connection, retried and reported as the server's
  protocol error (``InterimStatusError``), though the caller asked for it. Such headers are an
  ``InvalidRequest`` now, before anything is sent; the engine's own WebSocket upgrade
  (``Engine.websocket``) is not refused.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest, RetryPolicy
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

#: One attempt, no pause: a failed answer is final at once.
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)


def _recording_app(seen: list[dict[str, str]]) -> web.Application:
    """Answers 200 to anything, noting each request's headers."""

    async def answer(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.fixture
async def recorded(serve: ServerFactory) -> tuple[str, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []
    return await serve(_recording_app(seen)), seen


# -- 1. a caller's protocol upgrade is refused before anything is sent ------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"},
        {"upgrade": "websocket"},
        {"UPGRADE": "secret-token-x"},
        {"Connection": "Upgrade"},
        {"connection": "keep-alive, upgrade"},
        {"Connection": "HTTP2-Settings ,\tUPGRADE"},
    ],
    ids=["h2c", "websocket", "any-upgrade", "connection", "connection-list", "connection-odd"],
)
async def test_a_protocol_upgrade_asked_through_request_is_refused_unsent(
    recorded: tuple[str, list[dict[str, str]]], clock: VirtualClock, headers: dict[str, str]
) -> None:
    host, seen = recorded
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with pytest.raises(InvalidRequest) as info:
            await engine.request("GET", "svc", "/x", headers=headers)
    text = str(info.value)
    named = next(k for k in headers if k.lower() in ("upgrade", "connection"))
    assert repr(named) in text
    assert "Engine.websocket" in text
    assert "secret-token-x" not in text
    assert "AAMAAABkAARAAAAAAAIAAAAA" not in text
    assert seen == []


async def test_a_connection_header_without_upgrade_is_sent(
    recorded: tuple[str, list[dict[str, str]]], clock: VirtualClock
) -> None:
    host, seen = recorded
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        answer = await engine.request(
            "GET", "svc", "/x", headers={"Connection": "close", "X-Upgrade-Note": "upgrade"}
        )
    assert answer.status == 200
    [got] = seen
    assert got["Connection"] == "close"
    assert got["X-Upgrade-Note"] == "upgrade"


async def test_the_engines_own_websocket_upgrade_is_not_refused(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """``Engine.websocket`` upgrades through aiohttp's own ``Upgrade: websocket``; a caller's
    ``Upgrade`` on it would replace aiohttp's, and is refused as on a request."""
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest, match="'Upgrade'"):
            await brand_socket(engine, sim, headers={"Upgrade": "h2c"})
        ws = await brand_socket(engine, sim, headers={"X-Note": "a"})
        await ws.wait_open()
        await ws.close()
