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
from tests.test_policies_r25 import _answering
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


# -- 2. a final 1xx's Retry-After is heeded as a 5xx's is --------------------------------------


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "failed",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Retry-After: 12\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 12\r\n\r\n",
    ],
    ids=["101", "503"],
)
async def test_a_final_1xxs_retry_after_sets_the_pause_as_a_5xxs_does(
    clock: VirtualClock, failed: bytes
) -> None:
    """The retry loop retries a final 1xx (aiohttp hands back a 101 only: it waits past any
    other) as a 5xx, the server's protocol error, but read its ``Retry-After`` for 400 and over
    only: the 101 was retried after the schedule's 5 s, the 503 after the 12 s it asked (and
    the engine kept the 101's where no retry loop judged it, a caller's session without the
    stack)."""
    async with (
        _answering(failed, _OK) as (host, heads),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        answer = await engine.request("GET", "svc", "/x")
    assert answer.status == 200
    assert len(heads) == 2
    first = answer.attempts[0]
    assert first.outcome.retry_after == 12.0
    assert first.pause == 12.0
    assert clock.now() == 12.0


# -- 3. a socket's Connection header is the upgrade's own --------------------------------------


@pytest.mark.parametrize("value", ["keep-alive", "close", "Upgrade"])
async def test_a_connection_header_on_a_socket_is_refused_at_the_call(
    sim: Simulator, clock: VirtualClock, states: StateLog, value: str
) -> None:
    """aiohttp sends the handshake's ``Connection: Upgrade`` unless the caller's headers hold a
    ``Connection``: a caller's ``keep-alive`` replaced it, and the server refused every upgrade
    (400), the socket blaming the path and the credentials. Refused at the call now."""
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest, match="'connection'"):
            await brand_socket(engine, sim, headers={"connection": value})
