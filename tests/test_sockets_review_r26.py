"""The socket's ready_timeout acting at its expiry (``stall_timeout``'s ``on_expiry``), and the
upgrade's headers: what was still wrong.

- ``stall_timeout``'s ``on_expiry`` took anything: an ``async def`` (the natural way to write
  "close the connection" in asyncio) was called and its coroutine dropped, unawaited, so that
  nothing happened at the expiry but a ``RuntimeWarning``; and what is not callable failed
  only when the time was up, logged as the callback's own failure. Refused when the timeout
  is made now, as a bad ``seconds`` or ``clock`` is; an awaitable answered at the expiry (an
  object with an async ``__call__``) is closed and said, not left to warn at collection.
- A lost connection's ``lifetime`` (its ``lost`` event, and the close policy's fast-drop
  count) was read once the owner had waited for its ``on_connect`` task to end, up to the
  tidy-up grace: a connection the ready_timeout ended at 10 s, its callback swallowing the
  cancellation, was said to have lived 40 s; and a 1006 drop a second after the upgrade, its
  callback slow to end, was no fast drop (a revoked token's sign), so the socket never
  re-authenticated. It is how long the connection lived, to its end.
- A socket header its credentials would replace was refused with a request's words: "the
  credentials of the engine's auth provider ... make this call through an engine without an
  auth provider", for a socket given a provider of its own (``auth=``, or an
  ``EngineDialer``'s, which has no engine's to speak of), where the way out is the
  credentials' placement. Said in the socket's terms now.

On the virtual clock; loopback servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import warnings
from typing import Any

import pytest
from aiohttp import web

from le_transport import ConfigurationError, Engine, EventHooks, InvalidRequest, StaticBearer
from le_transport.clock import stall_timeout
from le_transport.providers import StaticDomains
from le_transport.sockets import EngineDialer, ResilientSocket, SocketOptions
from le_transport.sockets.keepalive import TIDY_UP_GRACE
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_socket_support import StateLog, no_open_connections, states

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

# -- stall_timeout's on_expiry -----------------------------------------------------------------


async def _on_expiry_async() -> None:
    """What must not be an on_expiry: a coroutine function."""


@pytest.mark.parametrize(
    "on_expiry",
    [_on_expiry_async, functools.partial(_on_expiry_async), 5, "close"],
    ids=["async def", "partial of one", "int", "str"],
)
async def test_stall_timeout_refuses_an_on_expiry_it_cannot_call_when_made(
    clock: VirtualClock, on_expiry: Any
) -> None:
    with pytest.raises(ConfigurationError, match="on_expiry"):
        stall_timeout(clock, 5.0, lambda: 0.0, on_expiry=on_expiry)


async def test_an_on_expiry_answering_an_awaitable_is_said_and_its_coroutine_closed(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An object with an async ``__call__`` passes for a plain callable: what it answers at the
    expiry is closed (no "never awaited" warning), said in the log, and the block is cancelled
    all the same."""

    class Closer:
        async def __call__(self) -> None:
            """Never run."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TimeoutError):
            async with stall_timeout(clock, 5.0, lambda: 0.0, on_expiry=Closer()):
                await clock.sleep(60.0)
        del Closer
        import gc

        gc.collect()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], caught
    [line] = [r for r in caplog.records if "on_expiry" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "awaitable" in line.getMessage()


async def test_a_plain_on_expiry_runs_once_at_the_expiry(clock: VirtualClock) -> None:
    """What the checks leave alone: a plain function, a bound method, a partial of one."""
    fired: list[float] = []

    class Holder:
        def end(self, tag: str = "") -> None:
            fired.append(clock.now())

    for on_expiry in (
        lambda: fired.append(clock.now()),
        Holder().end,
        functools.partial(Holder().end, "x"),
    ):
        with contextlib.suppress(TimeoutError):
            async with stall_timeout(clock, 5.0, lambda: clock.now() - 100, on_expiry=on_expiry):
                await asyncio.Event().wait()
    assert len(fired) == 3


# -- a lost connection's lifetime --------------------------------------------------------------


def _app(on_upgrade: Any) -> web.Application:
    """Accepts every upgrade; ``on_upgrade(n, request, ws)`` acts on the n-th (1-based), then
    the connection is read until it ends."""
    upgrades = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal upgrades
        upgrades += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await on_upgrade(upgrades, request, ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


def _engine(host: str, clock: VirtualClock, states: StateLog) -> Engine:
    return Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        hooks=EventHooks(on_state=[states]),
    )


async def test_a_connection_the_ready_timeout_ends_lived_until_then_not_until_its_callback_let_go(
    serve: ServerFactory, clock: VirtualClock, states: StateLog
) -> None:
    """The callback swallows its cancellation until released, long after the tidy-up grace:
    the connection ended at the ready_timeout's 10 s, and its lost event says so."""

    async def nothing(n: int, request: web.Request, ws: web.WebSocketResponse) -> None:
        return None

    host = await serve(_app(nothing))
    release = asyncio.Event()
    calls = 0

    async def stubborn(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        while calls == 1 and not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async with _engine(host, clock, states) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(ready_timeout=10.0, keepalive=None),
            on_connect=[stubborn],
        )
        try:
            await ws.wait_open(timeout=10.0 + TIDY_UP_GRACE + 60.0)
        finally:
            release.set()
        await ws.close()
    [lost] = states.of("lost")
    assert lost.details["lifetime"] == pytest.approx(10.0, abs=1.0)
    assert "not ready within ready_timeout" in lost.details["reason"]


async def test_a_fast_1006_drop_is_fast_however_long_its_callback_takes_to_end(
    serve: ServerFactory, clock: VirtualClock, states: StateLog
) -> None:
    """The server drops each connection (no close frame) once its callback runs, a second
    after the upgrade; the callback takes 20 s to end once cancelled (a clean-up of its own).
    Three such drops in a row are the close policy's fast drops: the socket re-authenticates
    rather than reconnecting on the same credentials for ever."""
    started = asyncio.Event()

    async def drop_once_started(n: int, request: web.Request, ws: web.WebSocketResponse) -> None:
        await started.wait()
        started.clear()
        await clock.sleep(1.0)
        transport = request.transport
        assert transport is not None
        transport.abort()

    host = await serve(_app(drop_once_started))

    async def slow_to_end(ws: ResilientSocket) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await clock.sleep(20.0)  # a clean-up of its own, then the cancellation goes on
            raise

    async with _engine(host, clock, states) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(keepalive=None, escalate_after=100),
            on_connect=[slow_to_end],
        )
        try:
            for _ in range(400):
                if states.of("reauthenticating") or len(states.of("lost")) >= 4:
                    break
                await clock.sleep(1.0)
        finally:
            await ws.close()
    lost = states.of("lost")
    assert lost, states.names()
    assert all(e.details["lifetime"] < 10.0 for e in lost), [e.details for e in lost]
    [reauth] = states.of("reauthenticating")
    assert "fast 1006 drops" in reauth.details["reason"]


# -- a header the socket's credentials would replace ------------------------------------------

#: A value no message may show.
_SECRET = "r26-review-header-value-41c9"


@pytest.mark.parametrize("through", ["engine", "dialer"])
async def test_a_socket_header_its_credentials_replace_is_refused_in_the_sockets_terms(
    clock: VirtualClock, through: str
) -> None:
    bearer = StaticBearer("t")
    headers = {"authorization": _SECRET}
    async with Engine(StaticDomains({"svc": "127.0.0.1:9"}), scheme="http", clock=clock) as engine:
        if through == "engine":
            with pytest.raises(InvalidRequest) as refused:
                await engine.websocket("svc", "/ws", auth=bearer, headers=headers)
        else:
            with pytest.raises(InvalidRequest) as refused:
                EngineDialer(engine, "svc", "/ws", auth=bearer, headers=headers)
    said = str(refused.value)
    assert "would be replaced by the credentials" in said
    assert "StaticBearer" in said
    assert "engine" not in said  # no engine's provider, nor an engine without one, to speak of
    assert "auth_placement" in said
    assert _SECRET not in said
