"""ResilientSocket.close run from inside the re-login round the socket waits for.

- An auth provider whose re-login closes the socket escalated to it (awaiting ``ws.close()``
  directly, or in a task of its own it waits for), the socket the round's only waiter: the
  close cancelled the socket's wait for the round, the last, which stopped the round and
  cancelled the re-login and the close inside it (``CancelledError`` out of ``ws.close()``).
  Such a waiter no longer stops the round: the close returns, the socket is closed, and the
  round ends once its re-login is through (returned or failed: no pause, no re-login after
  it). On the engine's loop, which stays open; on a socket's own provider's loop, closed with
  its last socket, as a close from inside the round leaves it: stopped once the task that
  closed is done.
- A close from outside still cancels the round (its re-login with it), as before.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import ConnectionFailed
from le_transport.providers import Credentials
from le_transport.sockets import AuthPlacement, ResilientSocket, SocketOptions
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
    """No credentials; its re-login runs what it is given."""

    def __init__(self, relogin: object = None) -> None:
        self._relogin = relogin

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials()

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> None:
        if callable(self._relogin):
            await self._relogin()

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("how", ["await", "gather", "taskgroup"])
@pytest.mark.parametrize("loop", ["engine", "socket provider"])
async def test_a_socket_closed_from_its_rounds_relogin_closes(
    serve: ServerFactory, clock: VirtualClock, how: str, loop: str, fails: bool
) -> None:
    """The re-login closes the socket, the round's only waiter: the close returns, the socket
    is closed and connects no more, the round ends with its re-login (which may then fail:
    no pause nor re-login follows) and the episode with it."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    ws: ResilientSocket
    events: list[str] = []
    closed_at: list[float] = []
    children: list[asyncio.Task[None]] = []
    relogins: list[float] = []

    async def teardown() -> None:
        try:
            await ws.close()
        except BaseException as exc:
            events.append(f"close raised {type(exc).__name__}")
            raise
        events.append("close returned")
        closed_at.append(clock.now())

    async def relogin() -> None:
        relogins.append(clock.now())
        if how == "await":
            await teardown()
        elif how == "gather":
            await asyncio.gather(teardown())
        else:
            async with asyncio.TaskGroup() as group:
                children.append(group.create_task(teardown()))
        events.append("relogin returned")
        if fails:
            raise ConnectionFailed("the login service is down", never_sent=True)

    tearing = _Auth(relogin)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=tearing if loop == "engine" else _Auth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
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
        await clock.sleep(1)
        round_ = recovery._round_task
        assert round_ is not None
        await clock.sleep(1000)
        if loop == "socket provider" and how != "await":
            # Its loop closed with its last socket: the round was stopped once the task that
            # closed was done, the re-login waiting for it with it.
            assert events == ["close returned"]
            assert round_.cancelled()
        else:
            assert events == ["close returned", "relogin returned"]
            assert not round_.cancelled()
            round_.exception()  # read (a closed loop's round ends RecoveryFailed)
        assert closed_at == [2.1]  # the re-login, 2 s after the escalation at 0.1
        assert relogins == [2.1]  # and none after it
        assert ws.closed
        assert hits == [0.0, 0.1]  # its first connect, then the escalated one: none after
        assert recovery._round_task is None or recovery._round_task.done()
        assert not recovery.recovering
        assert all(child.done() and not child.cancelled() for child in children)
        assert recovery.closed is (loop == "socket provider")
    finally:
        await engine.close()


async def test_a_socket_closed_from_outside_still_cancels_its_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Closed from outside while the round's re-login runs (a slow one), the socket its only
    waiter: the round is cancelled, its re-login with it, and the close completes."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
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
        auth=_Auth(slow_relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
        ws = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        await clock.sleep(10)
        assert relogins == ["started"]
        round_ = engine.recovery._round_task
        assert round_ is not None
        assert not round_.done()
        await ws.close()
        assert relogins == ["started", "cancelled"]
        assert round_.cancelled()
        assert ws.closed
        assert not engine.recovery.recovering
        await clock.sleep(2000)
        assert relogins == ["started", "cancelled"]
        assert hits == [0.0, 0.1]
    finally:
        await engine.close()


async def test_an_engine_closed_from_outside_still_cancels_a_round_a_socket_left(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The socket closed from inside the re-login, which goes on (a slow one): the engine's
    close from outside cancels the round, its re-login with it, as it cancels any round."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    ws: ResilientSocket
    relogins: list[str] = []

    async def relogin() -> None:
        await ws.close()
        relogins.append("socket closed")
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
        auth=_Auth(relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    ws = await engine.websocket("svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE)
    await clock.sleep(50)
    assert relogins == ["socket closed"]
    assert ws.closed
    round_ = engine.recovery._round_task
    assert round_ is not None
    assert not round_.done()
    await engine.close()
    assert relogins == ["socket closed", "cancelled"]
    assert round_.cancelled()
    await clock.sleep(2000)
    assert relogins == ["socket closed", "cancelled"]
    assert hits == [0.0, 0.1]


async def test_a_round_a_socket_left_goes_on_for_another_socket(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Two sockets wait for the round; its re-login closes one: the round goes on for the
    other (not ended with the re-login), which connects again through it, and a next round
    follows for it."""
    hits: list[float] = []
    host = await _refusing_server(serve, clock, hits)
    closing: list[ResilientSocket] = []
    relogins: list[float] = []

    async def relogin() -> None:
        relogins.append(clock.now())
        if closing:
            await closing.pop().close()

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
        first = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        second = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        closing.append(first)
        await clock.sleep(3)
        assert relogins == [2.1]
        assert first.closed
        assert not second.closed
        assert engine.recovery.recovering  # the episode goes on for the second socket
        await clock.sleep(10)
        assert relogins == [2.1, 6.1]  # the next round's re-login, 4 s later
        assert not second.closed
    finally:
        await engine.close()


async def test_a_call_that_joins_a_round_a_socket_left_keeps_it_going(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The re-login closes the socket, its last waiter, then goes on (a slow one); a call that
    fails meanwhile joins the round: the round no longer ends with the re-login, but runs the
    call again after it, which succeeds."""
    ws_hits: list[float] = []
    api_hits: list[float] = []
    relogins: list[float] = []
    ws: ResilientSocket

    async def ws_handler(request: web.Request) -> web.Response:
        ws_hits.append(clock.now())
        return web.Response(status=503)

    async def api_handler(request: web.Request) -> web.Response:
        api_hits.append(clock.now())
        return web.Response(status=503 if len(api_hits) == 1 else 200)

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/api", api_handler)
    host = await serve(app)

    async def relogin() -> None:
        relogins.append(clock.now())
        await ws.close()
        await clock.sleep(10)

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
        ws = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        await clock.sleep(5)  # the re-login (at 2.1) closed the socket, and goes on
        assert ws.closed
        round_ = engine.recovery._round_task
        assert round_ is not None
        assert not round_.done()
        answer = await engine.request("GET", "svc", "/api", recover=True)
        assert answer.status == 200
        assert api_hits == [5.0, 12.1]  # run again once the re-login was through
        assert relogins == [2.1]
        assert round_.done()
        assert not round_.cancelled()
        assert not engine.recovery.recovering
    finally:
        await engine.close()
