"""Engine.close from inside a re-login round whose only waiter is a socket: the variants the
round's own tests leave out.

- The re-login closes the engine itself, in the round's own task (no child task): the
  socket's close, its wait for the round the last, stopped the round, which is the task
  running the close (``CancelledError`` before the logout, the session left open). Now the
  close completes, and the round ends closed once the re-login returns. Both the engine's
  loop and a socket's own provider's loop.
- The re-login starts the close in a child it does not wait for, and goes on (a slow
  re-login): the close completes, and the re-login is cancelled by the time that child is
  done: it does not outlive the close.
- With another socket connected, such a close keeps the engine's order: that socket's close
  frame reaches the server before the logout.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import RecoveryFailed
from le_transport.sockets import AuthPlacement
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_engine_close_r25 import _OPTIONS, _Auth, _refusing_server


def _engine(host: str, clock: VirtualClock, auth: _Auth) -> Engine:
    return Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )


@pytest.mark.parametrize("loop", ["engine", "socket provider"])
async def test_a_close_in_the_relogins_own_task_only_a_socket_waits_for_completes(
    serve: ServerFactory, clock: VirtualClock, loop: str
) -> None:
    """The re-login awaits the engine's close itself, the round's only waiter a socket
    escalated to it: the close runs to its end (the logout, the session closed), the
    re-login returns after it, and the round ends closed."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    engine: Engine
    events: list[str] = []

    async def relogin() -> None:
        try:
            await engine.close()
        except BaseException as exc:
            events.append(f"close raised {type(exc).__name__}")
            raise
        events.append(f"close returned at {clock.now():g}")

    tearing = _Auth(events, relogin)
    engine = _engine(host, clock, tearing if loop == "engine" else _Auth(events))
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
    assert events == ["logout", "close returned at 2.1"]
    assert session.closed
    assert ws.closed
    assert ws.error is None
    assert hits == [0.0, 0.1]
    round_ = recovery._round_task
    assert round_ is not None
    assert round_.done()
    assert isinstance(round_.exception(), RecoveryFailed)
    assert not recovery.recovering
    await engine.close()  # done already: returns at once


async def test_a_close_from_a_child_the_relogin_leaves_stops_the_relogin_after_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The re-login starts the close in a child it does not wait for and goes on (slow): the
    close completes (the logout, the session closed), and the re-login is cancelled by the
    time the child is done: it does not go on after the close."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    engine: Engine
    events: list[str] = []
    children: list[asyncio.Task[None]] = []

    async def teardown() -> None:
        await engine.close()
        events.append("close returned")

    async def relogin() -> None:
        children.append(asyncio.get_running_loop().create_task(teardown()))
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            events.append(f"relogin cancelled at {clock.now():g}")
            raise
        events.append("relogin returned")

    engine = _engine(host, clock, _Auth(events, relogin))
    await engine.start()
    session = engine.session
    ws = await engine.websocket("svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE)
    await clock.sleep(30)
    # (The re-login is cancelled at the latest once the child is done: before the logout, or
    # just after the close returned.)
    assert sorted(events) == ["close returned", "logout", "relogin cancelled at 2.1"]
    assert events.index("logout") < events.index("close returned")
    assert session.closed
    assert ws.closed
    assert ws.error is None
    (child,) = children
    assert child.done()
    assert not child.cancelled()
    round_ = engine.recovery._round_task
    assert round_ is None or round_.cancelled()  # (stopped with its last waiter, or after)
    await clock.sleep(2000)
    assert hits == [0.0, 0.1]
    assert events[-1] == "relogin cancelled at 2.1"


@pytest.mark.parametrize("how", ["direct", "child"])
async def test_a_close_from_a_relogin_sends_the_close_frames_before_the_logout(
    serve: ServerFactory, clock: VirtualClock, how: str
) -> None:
    """Closed from inside the round (its only waiter a socket escalated to it), with another
    socket connected: the engine's order holds, the connected socket's close frame reaches
    the server before the logout, and the session is closed after both."""
    order: list[str] = []
    hits: list[float] = []
    engine: Engine

    async def refuse(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    async def accept(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                order.append("close frame")
                await ws.close()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                return ws

    app = web.Application()
    app.router.add_get("/bad", refuse)
    app.router.add_get("/ok", accept)
    host = await serve(app)

    async def relogin() -> None:
        if how == "direct":
            await engine.close()
        else:
            await asyncio.get_running_loop().create_task(engine.close())
        order.append("relogin returned")

    engine = _engine(host, clock, _Auth(order, relogin))
    await engine.start()
    session = engine.session
    connected = await engine.websocket(
        "svc", "/ok", options=_OPTIONS, auth_placement=AuthPlacement.NONE
    )
    await connected.wait_open()
    escalated = await engine.websocket(
        "svc", "/bad", options=_OPTIONS, auth_placement=AuthPlacement.NONE
    )
    await clock.sleep(30)
    assert order == ["close frame", "logout", "relogin returned"]
    assert session.closed
    assert connected.closed
    assert escalated.closed
    assert connected.error is None
    assert escalated.error is None
    assert hits == [0.0, 0.1]
