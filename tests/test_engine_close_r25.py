"""Engine.close run from inside a re-login round whose only waiter is a socket.

- An auth provider whose re-login closes the engine from a task of its own (and waits for it),
  while the round's only waiter is a WebSocket escalated to it: the engine closed its sockets
  first, the socket's close ended its wait for the round, and the round, its last waiter gone,
  was stopped, cancelling the re-login and the close inside it (``CancelledError`` before the
  provider's logout, the session left open). The loop the close runs inside is closed before
  the sockets (the round is left to end alone) and a waiter cancelled then no longer stops it:
  the close completes, the socket closes, the round ends closed once its re-login returns,
  nothing is left running. Both the engine's loop and a socket's own provider's loop.
- A close from outside still cancels the round (its re-login with it), as before.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import RecoveryFailed
from le_transport.providers import Credentials
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: The socket escalates after its first failed connect, 0.1 s after it (its backoff pause).
_OPTIONS = SocketOptions(
    backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=1, keepalive=None
)


async def _refusing_server(serve: ServerFactory, clock: VirtualClock, hits: list[float]) -> str:
    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/ws", handler)
    return await serve(app)


class _Auth:
    """No credentials; its close (the logout) and its re-login's teardown are recorded."""

    def __init__(self, closes: list[str], relogin: object = None) -> None:
        self._closes = closes
        self._relogin = relogin

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials()

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> None:
        if callable(self._relogin):
            await self._relogin()

    async def close(self) -> None:
        self._closes.append("logout")


@pytest.mark.parametrize("how", ["await", "gather", "taskgroup"])
@pytest.mark.parametrize("loop", ["engine", "socket provider"])
async def test_a_close_from_a_relogin_only_a_socket_waits_for_completes(
    serve: ServerFactory, clock: VirtualClock, how: str, loop: str
) -> None:
    """The re-login closes the engine in a child task and waits for it, the round's only
    waiter a socket escalated to it: the close runs to its end (the logout, the session
    closed), the socket closes and connects no more, the round ends closed once the re-login
    returns, and the child is not cancelled."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    engine: Engine
    closes: list[str] = []
    children: list[asyncio.Task[None]] = []
    closed_at: list[float] = []

    async def teardown() -> None:
        try:
            await engine.close()
        except BaseException as exc:
            closes.append(f"close raised {type(exc).__name__}")
            raise
        closes.append("close returned")
        closed_at.append(clock.now())

    async def relogin() -> None:
        if how == "await":
            child = asyncio.get_running_loop().create_task(teardown())
            children.append(child)
            await child
        elif how == "gather":
            await asyncio.gather(teardown())
        else:
            async with asyncio.TaskGroup() as group:
                children.append(group.create_task(teardown()))
        closes.append("relogin returned")

    tearing = _Auth(closes, relogin)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=tearing if loop == "engine" else _Auth(closes),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    session = engine.session
    ws = await engine.websocket(
        "svc",
        "/ws",
        auth=None if loop == "engine" else tearing,
        options=_OPTIONS,
        auth_placement=AuthPlacement.NONE,
    )
    if loop == "engine":
        recovery = engine.recovery
    else:
        (held,) = engine._socket_auth.values()
        recovery = held.recovery
    await clock.sleep(30)
    # The close ran to its end. Awaited directly, the round went on as the close task ended,
    # its re-login returned, and it ended closed; else it was stopped then (Recovery.close).
    if how == "await":
        assert closes == ["logout", "close returned", "relogin returned"]
    else:
        assert closes[:2] == ["logout", "close returned"]
    assert closed_at == [2.1]  # the re-login, 2 s after the escalation at 0.1
    assert session.closed
    assert ws.closed
    assert hits == [0.0, 0.1]  # its first connect, then the escalated one: none after the close
    round_ = recovery._round_task
    assert round_ is not None
    assert round_.done()
    if how == "await":
        assert isinstance(round_.exception(), RecoveryFailed)
    else:
        assert round_.cancelled() or isinstance(round_.exception(), RecoveryFailed)
    assert all(child.done() and not child.cancelled() for child in children)
    assert not recovery.recovering
    await engine.close()  # done already: returns at once


async def test_a_close_from_outside_still_cancels_a_sockets_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Closed from outside while the round's re-login runs (a slow one), the socket its only
    waiter: the round is cancelled, its re-login with it, and the close completes."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    closes: list[str] = []
    relogins: list[str] = []

    async def slow_relogin() -> None:
        relogins.append("started")
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            relogins.append("cancelled")
            raise
        relogins.append("returned")

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(closes, slow_relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    session = engine.session
    ws = await engine.websocket("svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE)
    await clock.sleep(10)
    assert relogins == ["started"]
    round_ = engine.recovery._round_task
    assert round_ is not None
    assert not round_.done()
    await engine.close()
    assert relogins == ["started", "cancelled"]
    assert round_.cancelled()
    assert closes == ["logout"]
    assert session.closed
    assert ws.closed
    await clock.sleep(2000)
    assert relogins == ["started", "cancelled"]
    assert hits == [0.0, 0.1]
