"""Fixtures and helpers for the socket tests: the simulator, engines on it, and a check that
no connection is left open after a test (the conftest leak check covers tasks).

Holds no tests of its own; the socket test modules import its fixtures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, EventHooks, StateEvent
from le_transport.providers import StaticDomains, UserLogin
from le_transport.sockets import ResilientSocket, SocketOptions, ums_brand_path
from le_transport.sockets.dial import UMS_BRAND_SOCKET_QUERY
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator


def _open_transports() -> list[asyncio.Transport]:
    # The selector loop keeps every socket transport it serves in a weak map by file number:
    # what is still there and not closing is open (a leaked one is kept there as long as
    # anything, even a garbage cycle, holds it).
    loop = asyncio.get_running_loop()
    served: Any = getattr(loop, "_transports", {})
    return [t for t in list(served.values()) if not t.is_closing()]


def _track(monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> list[Any]:
    """Every instance of ``cls`` made from now until the test ends, held until then, so that
    one the test dropped without closing is still seen."""
    made: list[Any] = []
    init = cls.__init__

    def tracked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(cls, "__init__", tracked_init)
    return made


@pytest.fixture
async def no_open_connections(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Fail a test that leaves a WebSocket, a client session or a TCP connection open.

    Runs last (it is requested first): by then the test's engines and simulators are closed,
    so every transport of the loop must be closed too. It watches the sessions and sockets
    made during the test and the loop's own table of transports, rather than walking the
    whole heap: that walk cost a third of a second a test once the suite's heap had grown.
    """
    sessions = _track(monkeypatch, aiohttp.ClientSession)
    websockets = _track(monkeypatch, aiohttp.ClientWebSocketResponse)
    yield
    for _ in range(5):
        await asyncio.sleep(0)
    open_ws = [ws for ws in websockets if not ws.closed]
    open_sessions = [session for session in sessions if not session.closed]
    websockets.clear()
    sessions.clear()
    transports = _open_transports()
    for t in transports:
        t.abort()
    assert not open_ws, f"WebSockets left open: {open_ws!r}"
    assert not open_sessions, f"client sessions left open: {open_sessions!r}"
    assert not transports, f"connections left open: {transports!r}"


@pytest.fixture
async def sim(clock: VirtualClock, secret_values: set[str]) -> AsyncIterator[Simulator]:
    """The LiveEngage simulator on the test's virtual clock.

    Every bearer, csrf and JWT it issued is handed to the conftest's secret check, which
    then fails the test if any log record showed one (the UMS URL carries the bearer).
    """
    async with Simulator(clock=clock) as simulator:
        yield simulator
    issued = simulator.tokens
    for session in issued.sessions.values():
        secret_values.update((session.bearer, session.csrf, session.session_id))
    secret_values.update(token.value for token in issued.tokens.values())


class StateLog:
    """Collects state events, for assertions."""

    def __init__(self) -> None:
        self.events: list[StateEvent] = []

    def __call__(self, event: StateEvent) -> None:
        self.events.append(event)

    def names(self, subject_prefix: str = "") -> list[str]:
        """The event names, in order."""
        return [e.name for e in self.events if e.subject.startswith(subject_prefix)]

    def of(self, name: str) -> list[StateEvent]:
        """The events called ``name``."""
        return [e for e in self.events if e.name == name]


@pytest.fixture
def states() -> StateLog:
    """A state-event collector to pass as ``EventHooks(on_state=[states])``."""
    return StateLog()


def agent_engine(sim: Simulator, clock: VirtualClock, states: StateLog, **kwargs: Any) -> Engine:
    """An engine on the simulator, logged in as the default agent."""
    domains = StaticDomains(sim.domains)
    auth = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    return Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=auth,
        hooks=EventHooks(on_state=[states]),
        **kwargs,
    )


async def brand_socket(
    engine: Engine, sim: Simulator, options: SocketOptions | None = None, **kwargs: Any
) -> ResilientSocket:
    """The UMS agent socket of the simulator's default account."""
    return await engine.websocket(
        "facadeMsg",
        ums_brand_path(sim.account.id),
        params=UMS_BRAND_SOCKET_QUERY,
        options=options,
        **kwargs,
    )


async def down_with_sim(ws: ResilientSocket, sim: Simulator) -> None:
    """Stop the simulator under the open socket ``ws`` and wait until ``ws`` says it is lost."""
    lost = ws.states()
    await sim.stop()
    async for event in lost:
        if event.name == "lost":
            break


async def quiet_peer(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket peer that accepts the upgrade and reads until the client closes, answering
    nothing."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


def publish(text: str) -> dict[str, Any]:
    """The body of a ``.ams.ms.PublishEvent`` for a text message."""
    return {
        "dialogId": "dialog-1",
        "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text},
    }


def as_list(values: Iterator[Any]) -> list[Any]:
    """A list (keeps mypy quiet about generator expressions in asserts)."""
    return list(values)
