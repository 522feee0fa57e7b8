"""WebSocket dialing: the upgrade's headers, whoever builds the dialer.

- ``EngineDialer`` is public, and applied none of ``Engine.websocket``'s header rules: a
  caller's ``Connection``, ``Upgrade``, ``Sec-WebSocket-Version`` or
  ``Sec-WebSocket-Extensions`` (which break the handshake, or every reconnect), a value with a
  CR or LF, a header the credentials replace, all went out (or failed) at the first connect.
  The dialer now applies the same rules, at construction.
- The dialer kept the headers as a ``dict``: a header repeated in a ``CIMultiDict`` lost all
  values but one, on the first connect and every reconnect (and aiohttp kept only the last of
  two spelt differently, "X-Tag" and "x-tag"); and a same-host redirect that changes origin
  (aiohttp drops Cookie and Authorization there) got back the first value of a repeated
  header alone.
- A caller's ``Sec-WebSocket-Protocol`` (or ``Sec-WebSocket-Key``) went out as is: the socket
  negotiates no subprotocol (aiohttp checks the server's choice only against its own
  ``protocols=``, which the socket does not pass), so the server's choice was never checked
  nor told (the simulator, as aiohttp's server, just warned it knows none and opened), and the
  key is aiohttp's own, which replaced the caller's without a word. Both are refused.
- ``ready_timeout`` acted only through the cancellation of the ``on_connect`` task: a callback
  that swallowed it kept the connection open and never ready for as long as the server kept
  it (for ever, on a quiet one), the socket never reconnecting. The connection now ends when
  the time is up, whatever the callback does with its cancellation (named in the log).

Loopback servers (and the simulator's UMS socket), on the virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from le_transport import Engine, InvalidRequest, StaticBearer
from le_transport.clock import stall_timeout
from le_transport.providers import StaticDomains
from le_transport.sockets import (
    AuthPlacement,
    EngineDialer,
    ResilientSocket,
    SocketOptions,
)
from le_transport.sockets.keepalive import TIDY_UP_GRACE
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

pytestmark = pytest.mark.usefixtures("no_open_connections")

#: A value no message may show.
_SECRET = "r26-header-value-7f3a"

#: Headers the upgrade cannot carry, each with a word its refusal says.
_REFUSED = [
    ({"Connection": "keep-alive"}, "upgrade's own"),
    ({"connection": "Upgrade"}, "upgrade's own"),
    ({"Upgrade": "websocket"}, "upgrade's own"),
    ({"Sec-WebSocket-Version": "8"}, "upgrade's own"),
    ({"Sec-WebSocket-Extensions": "permessage-deflate"}, "extension"),
    ({"Sec-WebSocket-Protocol": "chat"}, "subprotocol"),
    ({"sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}, "upgrade's own"),
    ({"X-Trace": f"{_SECRET}\r\nX-Other: 1"}, "CR, LF or NUL"),
    ({"X-Trace": 5}, "str value"),
]


def _engine(host: str, clock: VirtualClock, **kwargs: Any) -> Engine:
    return Engine(StaticDomains({"svc": host}), scheme="http", clock=clock, **kwargs)


def _recording_app(seen: list[list[str]], *, close_first: bool = False) -> web.Application:
    """Accepts any upgrade, recording every ``X-Tag`` value it came with; with
    ``close_first``, closes the first connection at once (going away), so that the socket
    reconnects."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.getall("X-Tag", []))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if close_first and len(seen) == 1:
            await ws.close(code=1001)
            return ws
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


# -- 1. the dialer applies Engine.websocket's header rules, at construction ------------------


@pytest.mark.parametrize(("headers", "says"), _REFUSED, ids=lambda v: repr(v)[:40])
async def test_an_engine_dialer_refuses_a_header_the_upgrade_cannot_carry_at_construction(
    clock: VirtualClock, headers: dict[str, Any], says: str
) -> None:
    async with _engine("127.0.0.1:9", clock) as engine:
        with pytest.raises(InvalidRequest) as refused:
            EngineDialer(engine, "svc", "/ws", headers=headers)
    assert says in str(refused.value)
    assert _SECRET not in str(refused.value)
    assert refused.value.__cause__ is None


async def test_an_engine_dialer_refuses_a_header_its_credentials_would_replace(
    clock: VirtualClock,
) -> None:
    async with _engine("127.0.0.1:9", clock) as engine:
        bearer = StaticBearer("t")
        with pytest.raises(InvalidRequest) as refused:
            EngineDialer(engine, "svc", "/ws", auth=bearer, headers={"authorization": _SECRET})
        # In the path, or nowhere, they replace nothing: the caller's header is kept.
        EngineDialer(engine, "svc", "/ws/{bearer}", auth=bearer, headers={"Authorization": "x"})
        EngineDialer(
            engine,
            "svc",
            "/ws",
            auth=bearer,
            placement=AuthPlacement.NONE,
            headers={"Authorization": "x"},
        )
    assert "would be replaced by the credentials" in str(refused.value)
    assert _SECRET not in str(refused.value)


@pytest.mark.parametrize(("headers", "says"), _REFUSED, ids=lambda v: repr(v)[:40])
async def test_engine_websocket_refuses_the_same_headers_at_the_call(
    sim: Simulator, clock: VirtualClock, states: StateLog, headers: dict[str, Any], says: str
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await brand_socket(engine, sim, headers=headers)
    assert says in str(refused.value)
    assert _SECRET not in str(refused.value)
    assert states.names() == []
    assert sim.count("GET", "*") == 0


# -- 2. a repeated header keeps every value, on every connect --------------------------------


@pytest.mark.parametrize("spelt", ["X-Tag", "x-tag"])
@pytest.mark.parametrize("through", ["engine", "dialer"])
async def test_a_repeated_header_keeps_every_value_on_the_first_connect_and_a_reconnect(
    serve: ServerFactory, clock: VirtualClock, through: str, spelt: str
) -> None:
    seen: list[list[str]] = []
    host = await serve(_recording_app(seen, close_first=True))
    headers = CIMultiDict([("X-Tag", "a"), (spelt, "b")])
    opts = SocketOptions(keepalive=None)
    async with _engine(host, clock) as engine:
        if through == "engine":
            ws = await engine.websocket("svc", "/ws", headers=headers, options=opts)
        else:
            dialer = EngineDialer(engine, "svc", "/ws", headers=headers)
            ws = ResilientSocket(dialer, options=opts, clock=engine.clock).start()
        try:
            for _ in range(200):
                if len(seen) >= 2 and ws.is_open:
                    break
                await clock.sleep(0.5)
        finally:
            await ws.close()
    assert seen[:2] == [["a", "b"], ["a", "b"]]


# -- 4. ready_timeout ends a connection whose on_connect swallows its cancellation -----------


async def _swallows_cancellation_until(release: asyncio.Event) -> None:
    """Wait for ``release``, swallowing every cancellation meanwhile."""
    while not release.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()


async def test_ready_timeout_ends_a_connection_whose_on_connect_swallows_its_cancellation(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A quiet server never ends the first connection itself: only ready_timeout can, and its
    cancellation of the callback is swallowed. The connection ends at the expiry all the same
    (the server sees it closed), the socket reconnects once the tidy-up grace is out, and the
    callback is named in the log."""
    seen: list[list[str]] = []
    ended: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append([])
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        ended.append(len(seen))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    release = asyncio.Event()
    calls = 0

    async def stubborn_subscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await _swallows_cancellation_until(release)

    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    async with _engine(host, clock) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(ready_timeout=10.0, keepalive=None),
            on_connect=[stubborn_subscribe],
        )
        try:
            started = clock.now()
            await ws.wait_open(timeout=10.0 + TIDY_UP_GRACE + 60.0)
            assert ws.epoch == 2
            assert clock.now() - started >= 10.0
            # The server saw the first connection end.
            assert ended[:1] == [1]
            named = [r.getMessage() for r in caplog.records if "ready_timeout" in r.getMessage()]
            assert named, caplog.text
            assert "stubborn_subscribe" in named[0]
        finally:
            release.set()
        await clock.sleep(1.0)
        assert ws.is_open
        await ws.close()


async def test_stall_timeouts_on_expiry_runs_when_the_time_is_up_though_the_block_swallows(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_expiry`` runs at the expiry, before the cancellation, whatever the block does with
    it; one that raises is logged, by type, and the block is cancelled all the same."""
    release = asyncio.Event()
    fired: list[float] = []

    async def block(on_expiry: Any) -> bool:
        timeout = stall_timeout(clock, 5.0, lambda: 0.0, on_expiry=on_expiry)
        with contextlib.suppress(TimeoutError):
            async with timeout:
                await _swallows_cancellation_until(release)
        return timeout.expired

    task = asyncio.create_task(block(lambda: fired.append(clock.now())))
    await clock.sleep(6.0)
    assert fired == [5.0]
    assert not task.done()  # the block swallowed its cancellation, and runs on
    release.set()
    assert await task

    def fails() -> None:
        raise RuntimeError(_SECRET)

    release.clear()
    task = asyncio.create_task(block(fails))
    await clock.sleep(6.0)
    release.set()
    assert await task
    [line] = [r for r in caplog.records if "on_expiry failed" in r.getMessage()]
    assert "RuntimeError" in line.getMessage()
    assert _SECRET not in caplog.text


# -- 2b. a same-host redirect puts back every value aiohttp dropped --------------------------


async def test_a_same_host_redirect_puts_back_every_value_of_a_repeated_dropped_header(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """An absolute Location on the socket's own host is another origin to aiohttp than the
    ``ws://`` URL dialed: it drops Cookie (and Authorization), which the upgrade's guard puts
    back; a repeated one came back with its first value alone."""
    seen: list[list[str]] = []
    app = web.Application()

    async def moved(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.getall("Cookie", []))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    location: list[str] = []

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location[0])

    app.router.add_get("/old", redirect)
    app.router.add_get("/moved", moved)
    host = await serve(app)
    location.append(f"http://{host}/moved")
    headers = CIMultiDict([("Cookie", "a=1"), ("Cookie", "b=2")])
    async with _engine(host, clock) as engine:
        ws = await engine.websocket(
            "svc", "/old", headers=headers, options=SocketOptions(keepalive=None)
        )
        try:
            await ws.wait_open(timeout=60.0)
        finally:
            await ws.close()
    assert seen[:1] == [["a=1", "b=2"]]


async def test_ready_timeout_says_nothing_of_a_connection_that_ended_otherwise(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The server ends the first connection once its callback runs, which then hangs
    swallowing its cancellation: the ready_timeout that runs out later (the callback still
    running in the tidy-up grace) has no connection to end, and says nothing of one."""
    started = asyncio.Event()
    release = asyncio.Event()
    upgrades = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal upgrades
        upgrades += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if upgrades == 1:
            await started.wait()
            await ws.close(code=1001)
            return ws
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    calls = 0

    async def stubborn_subscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await _swallows_cancellation_until(release)

    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    async with _engine(host, clock) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(ready_timeout=10.0, keepalive=None),
            on_connect=[stubborn_subscribe],
        )
        try:
            await ws.wait_open(timeout=TIDY_UP_GRACE + 60.0)
            assert ws.epoch == 2
            assert calls == 2
        finally:
            release.set()
        await ws.close()
    assert not [r for r in caplog.records if "ready_timeout" in r.getMessage()], caplog.text
