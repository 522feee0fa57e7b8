"""The resilient socket's dial: the path it sends, what ``connect_timeout`` and
``prepare_timeout`` bound, ``max_msg_size``, and a close while dialing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from le_transport import ConfigurationError, Engine, EventHooks, SocketClosed
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.sockets import AuthPlacement, SocketOptions, SocketState
from le_transport.sockets.options import PREPARE_TIMEOUT
from le_transport.testing import VirtualClock
from tests.conftest import serve_hanging
from tests.test_socket_support import StateLog, no_open_connections, states

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


def _ws_app(seen: list[str]) -> web.Application:
    """Accepts any upgrade, recording the path as it came on the request line."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


async def _dialed_path(
    serve: Any, states: StateLog, path: str, placement: AuthPlacement, bearer: str = "tok123"
) -> str:
    """The raw path one socket to ``path`` dials, after it opened."""
    seen: list[str] = []
    host = await serve(_ws_app(seen))
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        auth=StaticBearer(bearer),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", path, auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        try:
            await ws.wait_open(timeout=5)
        except SocketClosed as exc:
            pytest.fail(f"socket to {path!r} refused: {exc!r}; events {states.names()}")
        finally:
            await ws.close()
    assert len(seen) == 1, seen
    return seen[0]


@pytest.mark.parametrize(
    ("segment", "encoded"),
    [
        ("caf\u00e9", "caf%C3%A9"),
        ("\u65e5\u672c", "%E6%97%A5%E6%9C%AC"),
        ("50%off", "50%25off"),  # a literal '%', as a request's path takes it
        ("a%20b", "a%2520b"),  # text, not an escape: the API takes paths unencoded
        ("a+b;c=d@e:f", "a+b;c=d@e:f"),  # reserved characters kept, as yarl keeps them
    ],
)
async def test_bearer_in_path_dials_the_path_encoded_as_a_header_placed_socket_does(
    serve: Any, states: StateLog, segment: str, encoded: str
) -> None:
    """The template around ``{bearer}`` is percent-encoded exactly as url_for encodes it for a
    socket with its bearer in the headers: a non-ASCII character went on the request line as
    raw UTF-8, which the server refused with a 400 (final: the socket stopped)."""
    in_header = await _dialed_path(serve, states, f"/ws/{segment}/x", AuthPlacement.HEADER)
    in_path = await _dialed_path(serve, states, f"/ws/{segment}/{{bearer}}", AuthPlacement.PATH)
    assert in_header == f"/ws/{encoded}/x"
    assert in_path == f"/ws/{encoded}/tok123"


async def test_bearer_in_path_is_quoted_whole_and_the_word_bearer_elsewhere_stays(
    serve: Any, states: StateLog
) -> None:
    """A bearer's '/', '+' and '=' are quoted (no new segment), and only the ``{bearer}``
    place takes it: a literal segment named "bearer" in the template is left as it is."""
    path = await _dialed_path(
        serve, states, "/bearer/caf\u00e9/{bearer}/tail", AuthPlacement.PATH, bearer="a/b+c="
    )
    assert path == "/bearer/caf%C3%A9/a%2Fb%2Bc%3D/tail"


class _SlowAuth(StaticBearer):
    """A provider whose credentials() takes ``delay`` seconds of ``clock`` (None: never
    returns, as a vault that hangs)."""

    def __init__(self, clock: VirtualClock, delay: float | None) -> None:
        super().__init__("tok123")
        self._clock = clock
        self._delay = delay
        self.asked = 0

    async def credentials(self, method: str, url: Any) -> Any:
        self.asked += 1
        if self._delay is None:
            await asyncio.Event().wait()
        else:
            await self._clock.sleep(self._delay)
        return await super().credentials(method, url)


async def test_a_provider_that_hangs_fails_the_connect_after_prepare_timeout(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """connect_timeout does not bound getting credentials (a login runs its own schedule);
    prepare_timeout does: a credentials() that never returns kept the socket CONNECTING for
    ever, with no connect_failed, no reconnect and no escalation. Now the connect fails
    once prepare_timeout has passed, and the socket reconnects (asking again)."""
    host = await serve(_ws_app([]))
    auth = _SlowAuth(clock, None)
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=auth,
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(keepalive=None, connect_timeout=5.0, prepare_timeout=60.0),
        )
        await clock.sleep(59)  # many connect timeouts, not one prepare_timeout
        before = states.names().count("connect_failed")
        await clock.sleep(2)
        failed = states.of("connect_failed")
        await clock.sleep(30)  # the backoff's first pause (about 1 s), then a new connect
        asked = auth.asked
        state = ws.state
        await ws.close()
    assert before == 0
    assert len(failed) == 1, states.names()
    assert failed[0].details["reason"] == "connect failed (prepare timeout)", failed[0].details
    assert asked == 2
    assert state is SocketState.CONNECTING


async def test_a_slow_login_is_not_cut_by_connect_timeout(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """Credentials that take longer than connect_timeout (a login through its 5/10/15 s
    retries) but less than prepare_timeout open the socket on the first connect."""
    seen: list[str] = []
    host = await serve(_ws_app(seen))
    auth = _SlowAuth(clock, 20.0)
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=auth,
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", options=SocketOptions(keepalive=None, connect_timeout=5.0)
        )
        await ws.wait_open(timeout=60)
        await ws.close()
    assert "connect_failed" not in states.names()
    assert auth.asked == 1
    assert seen == ["/ws"]


def test_prepare_timeout_takes_none_or_a_positive_number() -> None:
    assert SocketOptions().prepare_timeout == PREPARE_TIMEOUT
    assert SocketOptions(prepare_timeout=None).prepare_timeout is None
    for bad in (0, -1.0, float("nan"), "10"):
        with pytest.raises(ConfigurationError, match="prepare_timeout"):
            SocketOptions(prepare_timeout=bad)  # type: ignore[arg-type]


def _big_frame_app(size: int, connects: list[int]) -> web.Application:
    """Sends one text frame of ``size`` characters on each connect, then reads."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connects.append(1)
        await ws.send_str("x" * size)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


@pytest.mark.parametrize("max_msg_size", [2048, 8192])
async def test_max_msg_size_reaches_the_connection(
    serve: Any, clock: VirtualClock, states: StateLog, max_msg_size: int
) -> None:
    """SocketOptions.max_msg_size is the bound aiohttp applies: engine.websocket() left it
    out, so every socket took frames up to 16 MiB whatever it was told. A 4 KiB frame is
    taken under an 8 KiB bound, and ends the connection with 1009 under a 2 KiB one."""
    connects: list[int] = []
    host = await serve(_big_frame_app(4096, connects))
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", options=SocketOptions(keepalive=None, max_msg_size=max_msg_size)
        )
        if max_msg_size > 4096:
            await ws.wait_open(timeout=5)
            frame = await asyncio.wait_for(anext(aiter(ws)), 5)
            assert frame == "x" * 4096
        else:
            for _ in range(60):  # the backoff's first two pauses are about 1 s and 2 s
                if len(states.of("lost")) >= 2:
                    break
                await clock.sleep(1)
        await ws.close()
    reasons = {event.details["reason"] for event in states.of("lost")}
    if max_msg_size > 4096:
        assert reasons == set(), reasons
        assert len(connects) == 1
    else:
        assert reasons == {"failed by the client with code 1009 (a message over max_msg_size)"}
        assert len(connects) >= 2


def test_max_msg_size_takes_a_positive_int() -> None:
    assert SocketOptions().max_msg_size == 16 * 1024 * 1024
    for bad in (0, -1, 1.5, True, "4096"):
        with pytest.raises(ConfigurationError, match="max_msg_size"):
            SocketOptions(max_msg_size=bad)  # type: ignore[arg-type]


def _recording_ws_app(got: list[str]) -> web.Application:
    """A WebSocket at /ws (and /moved) that records the Authorization header, then frames."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        got.append(request.headers.get("Authorization", "-"))
        async for message in ws:
            got.append(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    app.router.add_get("/moved", handler)
    return app


def _redirecting_app(location: str) -> web.Application:
    """Answers the upgrade at /ws with a 302 to ``location``; /page is a plain page."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text="down for maintenance")

    app = web.Application()
    app.router.add_get("/ws", redirect)
    app.router.add_get("/page", page)
    return app


@pytest.mark.parametrize("placement", [AuthPlacement.FIRST_FRAME, AuthPlacement.HEADER])
async def test_an_upgrade_redirected_to_another_host_is_final_and_sends_no_credentials(
    serve: Any, states: StateLog, placement: AuthPlacement
) -> None:
    """aiohttp follows an upgrade's redirects: to another host it drops Authorization (a
    socket opened there, ready, without its credentials) and InitConnection sent the JWT
    there. The socket now closes such a connection before sending anything and stops: its
    credentials go only to its service's host, as over HTTP."""
    elsewhere: list[str] = []
    other = await serve(_recording_ws_app(elsewhere))
    host = await serve(_redirecting_app(f"http://{other}/ws"))
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        auth=StaticBearer("tok123"),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open(timeout=5)
        await ws.close()
    assert "redirected to another host" in str(stopped.value.__cause__)
    assert f"http://{other}" in str(stopped.value.__cause__)
    assert "tok123" not in str(stopped.value.__cause__)
    assert not any("tok123" in item for item in elsewhere), elsewhere
    assert "ready" not in states.names()
    assert "reconnecting" not in states.names()


async def test_an_upgrade_redirected_on_its_own_host_opens_with_its_credentials(
    serve: Any, states: StateLog
) -> None:
    """A redirect to another path of the service's host is followed, credentials and all,
    as an HTTP call's redirect hops on its own host are."""
    got: list[str] = []
    app = _recording_ws_app(got)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/moved")

    app.router.add_get("/old", redirect)
    host = await serve(app)
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        auth=StaticBearer("tok123"),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket("svc", "/old", options=SocketOptions(keepalive=None))
        await ws.wait_open(timeout=5)
        await ws.close()
    assert got[:1] == ["Bearer tok123"]


async def test_an_upgrade_redirected_to_a_page_is_an_outage_reconnected_into(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """A redirect to a plain page (a maintenance page) is no refusal: the connect fails and
    the socket backs off and reconnects, as the providers treat a redirect."""
    host = await serve(_redirecting_app("/page"))
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer("tok123"),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket("svc", "/ws", options=SocketOptions(keepalive=None))
        for _ in range(60):
            if len(states.of("connect_failed")) >= 2:
                break
            await clock.sleep(1)
        state = ws.state
        await ws.close()
    reasons = {event.details["reason"] for event in states.of("connect_failed")}
    assert reasons == {"upgrade refused with HTTP 200"}, reasons
    assert len(states.of("connect_failed")) >= 2
    assert state is not SocketState.CLOSED


def _silent_ws_app(accepted: asyncio.Event) -> web.Application:
    """Accepts the upgrade and reads, answering nothing (InitConnection never answered)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.set()
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


@pytest.mark.parametrize("where", ["init_connection", "upgrade"])
async def test_close_while_dialing_is_prompt_and_clean(
    serve: Any, clock: VirtualClock, states: StateLog, where: str
) -> None:
    """A close while the upgrade hangs, or while InitConnection waits for its answer, ends
    the dial at once (well under connect_timeout), with nothing left unsent and the socket
    CLOSED."""
    if where == "upgrade":
        host, arrived, release = await serve_hanging(serve, "/ws")
        placement = AuthPlacement.HEADER
    else:
        arrived = asyncio.Event()
        host = await serve(_silent_ws_app(arrived))
        placement = AuthPlacement.FIRST_FRAME
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer("tok123"),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        await arrived.wait()
        started = clock.now()
        unsent = await asyncio.wait_for(ws.close(), 5)
        took = clock.now() - started
        if where == "upgrade":
            release.set()
    assert unsent == []
    assert ws.state is SocketState.CLOSED
    assert took < 1.0, took
