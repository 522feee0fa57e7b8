"""A socket closed from inside the re-login round it waits for (its auth provider's re-login
closing it), the round's last waiter: the round goes on to the end of its re-login, and so does
its episode.

- The waiter's leaving ended the episode (silently, as a cancelled call's), the round still
  running: ``recovering`` said False during the re-login, and a call that joined the round then
  kept it going in an episode of no attempts and no first failure: its re-logins counted from
  one again (past the policy's ``max_attempts``), its deadline never counted, and its success
  said nothing ("recovered" never emitted). The episode now ends with the round
  (``Recovery._end_orphan``), or goes on for a call that joins it.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import ConnectionFailed, RecoveryFailed
from le_transport.events import EventHooks
from le_transport.providers import Credentials
from le_transport.sockets import AuthPlacement, ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: The socket escalates after its first failed connect, 0.1 s after it (its backoff pause).
_OPTIONS = SocketOptions(
    backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=1, keepalive=None
)


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


async def _server(
    serve: ServerFactory, clock: VirtualClock, ws_hits: list[float], api_hits: list[float], ok: int
) -> str:
    """``/ws`` refuses every upgrade (503); ``/api`` answers 503 until its ``ok``-th call."""

    async def ws_handler(request: web.Request) -> web.Response:
        ws_hits.append(clock.now())
        return web.Response(status=503)

    async def api_handler(request: web.Request) -> web.Response:
        api_hits.append(clock.now())
        return web.Response(status=200 if len(api_hits) >= ok else 503)

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/api", api_handler)
    return await serve(app)


async def test_a_call_joining_a_round_a_socket_left_keeps_its_episodes_attempts(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The re-login (a slow one, failing) closes the socket, the round's last waiter; a call
    joins the round meanwhile: the round goes on in the same episode, its attempts counted
    on (max_attempts=2: two re-logins in all, then the call gives up), ``recovering`` all
    along."""
    ws_hits: list[float] = []
    api_hits: list[float] = []
    relogins: list[float] = []
    ws: ResilientSocket
    host = await _server(serve, clock, ws_hits, api_hits, ok=1000)

    async def relogin() -> None:
        relogins.append(clock.now())
        if not ws.closed:
            await ws.close()
        await clock.sleep(10)
        raise ConnectionFailed("the login service is down", never_sent=True)

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(relogin),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0, max_attempts=2),
    )
    await engine.start()
    try:
        ws = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        await clock.sleep(5)  # the re-login (at 2.1) closed the socket, and goes on
        assert ws.closed
        assert engine.recovery.recovering  # its round's re-login still runs
        with pytest.raises(RecoveryFailed):
            await engine.request("GET", "svc", "/api", recover=True)
        # The first re-login (2.1, failed at 12.1), the second 4 s later (the episode's
        # second attempt), failed at 26.1: max_attempts spent.
        assert relogins == [2.1, 16.1]
        assert api_hits == [5.0]
        assert not engine.recovery.recovering
    finally:
        await engine.close()


@pytest.mark.parametrize("fails", [False, True])
async def test_a_round_a_socket_left_ends_its_episode_with_it(
    serve: ServerFactory, clock: VirtualClock, fails: bool
) -> None:
    """No call joins: the episode lasts as long as the round's re-login, then ends silently
    (no call recovered in it), the re-login's failure no "gave_up" either."""
    ws_hits: list[float] = []
    api_hits: list[float] = []
    events: list[tuple[float, str]] = []
    ws: ResilientSocket
    host = await _server(serve, clock, ws_hits, api_hits, ok=1)

    async def relogin() -> None:
        await ws.close()
        await clock.sleep(10)
        if fails:
            raise ConnectionFailed("the login service is down", never_sent=True)

    hooks = EventHooks(on_state=lambda event: events.append((clock.now(), event.name)))
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(relogin),
        hooks=hooks,
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
        ws = await engine.websocket(
            "svc", "/ws", options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        await clock.sleep(5)
        assert ws.closed
        assert engine.recovery.recovering
        await clock.sleep(10)
        assert not engine.recovery.recovering  # ended with the re-login, at 12.1
        round_ = engine.recovery._round_task
        assert round_ is None or (round_.done() and not round_.cancelled())
        recovery_events = [
            (at, name)
            for at, name in events
            if name in {"relogin_scheduled", "relogin_failed", "gave_up", "recovered"}
        ]
        assert recovery_events == [(0.1, "relogin_scheduled")]
        # The next failure starts an episode of its own, from the first pause.
        answer = await engine.request("GET", "svc", "/api", recover=True)
        assert answer.status == 200
        await asyncio.sleep(0)
    finally:
        await engine.close()


async def test_a_socket_closed_by_a_task_of_a_relogin_that_then_fails_stops_its_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The re-login starts a task that closes the socket, the round's last waiter, and fails
    before the socket's task has left the round: its re-login over, nothing of the round waits
    for the close, and the round stops with its last waiter, as from outside: no pause and no
    re-login for nobody."""
    ws_hits: list[float] = []
    api_hits: list[float] = []
    relogins: list[float] = []
    closes: list[asyncio.Task[list[str]]] = []
    ws: ResilientSocket
    host = await _server(serve, clock, ws_hits, api_hits, ok=1)

    async def relogin() -> None:
        relogins.append(clock.now())
        if not closes:
            closes.append(asyncio.create_task(ws.close()))
            await asyncio.sleep(0)  # the close starts: the socket's task is cancelled
        raise ConnectionFailed("the login service is down", never_sent=True)

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
        await clock.sleep(3)
        assert ws.closed
        (close,) = closes
        assert close.done()
        close.result()
        round_ = engine.recovery._round_task
        assert round_ is None or round_.done()
        assert not engine.recovery.recovering
        await clock.sleep(100)
        assert relogins == [2.1]
        assert ws_hits == [0.0, 0.1]
    finally:
        await engine.close()


async def test_a_round_a_socket_left_whose_relogin_failed_gives_no_result_to_retry_with(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The re-login closes the socket, the round's last waiter, and fails; a call in flight
    meanwhile fails after the round ended: no login came of that round, so the call is not run
    again at once as after a round that logged in (its 503 re-sent with no pause): it starts a
    round of its own, paused, and its re-login."""
    ws_hits: list[float] = []
    api_hits: list[float] = []
    relogins: list[float] = []
    ws: ResilientSocket

    async def ws_handler(request: web.Request) -> web.Response:
        ws_hits.append(clock.now())
        return web.Response(status=503)

    async def api_handler(request: web.Request) -> web.Response:
        api_hits.append(clock.now())
        if len(api_hits) == 1:
            await clock.sleep(12)  # answered at 15, the round over by then
            return web.Response(status=503)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/api", api_handler)
    host = await serve(app)

    async def relogin() -> None:
        relogins.append(clock.now())
        if len(relogins) == 1:
            await ws.close()
            await clock.sleep(10)
            raise ConnectionFailed("the login service is down", never_sent=True)

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
        await clock.sleep(3)
        assert ws.closed
        answer = await engine.request("GET", "svc", "/api", recover=True)
        assert answer.status == 200
        assert relogins == [2.1, 17.0]  # its own round: 2 s after its failure at 15
        assert api_hits == [3.0, 17.0]
        assert not engine.recovery.recovering
    finally:
        await engine.close()


async def test_a_provider_relogin_closing_its_sockets_closes_the_connected_last(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A socket auth provider of two sockets: one escalated to its re-login loop (the round's
    only waiter), one connected. The re-login closes both, the escalated one first: the
    connected one's end, the provider's last, closes the loop from inside the round as the
    other's did (both closed by the re-login): both closes return, the round is not stopped
    under them."""
    ws_hits: list[float] = []
    events: list[str] = []
    failing: ResilientSocket
    connected: ResilientSocket

    async def refuse(request: web.Request) -> web.Response:
        ws_hits.append(clock.now())
        return web.Response(status=503)

    async def accept(request: web.Request) -> web.WebSocketResponse:
        peer = web.WebSocketResponse()
        await peer.prepare(request)
        async for _ in peer:
            pass
        return peer

    app = web.Application()
    app.router.add_get("/ws", refuse)
    app.router.add_get("/ok", accept)
    host = await serve(app)

    async def relogin() -> None:
        for ws in (failing, connected):
            try:
                await ws.close()
            except BaseException as exc:
                events.append(f"close raised {type(exc).__name__}")
                raise
            events.append("close returned")
        events.append("relogin returned")

    tearing = _Auth(relogin)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=_Auth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    await engine.start()
    try:
        connected = await engine.websocket(
            "svc",
            "/ok",
            auth=tearing,
            options=SocketOptions(keepalive=None),
            auth_placement=AuthPlacement.NONE,
        )
        await connected.wait_open(timeout=10)
        failing = await engine.websocket(
            "svc", "/ws", auth=tearing, options=_OPTIONS, auth_placement=AuthPlacement.NONE
        )
        (held,) = engine._socket_auth.values()
        recovery = held.recovery
        await clock.sleep(1)
        round_ = recovery._round_task
        assert round_ is not None
        await clock.sleep(100)
        assert events == ["close returned", "close returned", "relogin returned"]
        assert failing.closed
        assert connected.closed
        assert recovery.closed
        assert round_.done()
        assert not round_.cancelled()
        round_.exception()  # read (a closed loop's round ends RecoveryFailed)
    finally:
        await engine.close()
