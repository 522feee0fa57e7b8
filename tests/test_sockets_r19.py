"""The resilient socket's dial: the path it sends, what ``connect_timeout`` and
``prepare_timeout`` bound, ``max_msg_size``, where a redirected upgrade may go, and a close
while dialing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport import ConfigurationError, Engine, EventHooks, SocketClosed
from le_transport.chaos import FaultInjector, FaultRule, Status
from le_transport.chaos.plan import Match, Schedule
from le_transport.middleware.upgrade import UPGRADE_GUARD, UpgradeGuard, same_wire_host
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.providers.auth import Credentials
from le_transport.sockets import AuthPlacement, SocketOptions, SocketState
from le_transport.sockets.dial import _redirected_elsewhere
from le_transport.sockets.options import PREPARE_TIMEOUT
from le_transport.testing import VirtualClock
from tests.conftest import serve_hanging
from tests.test_socket_support import StateLog, no_open_connections, states

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


def _engine(host: str, states: StateLog, **kwargs: Any) -> Engine:
    """An engine over plain HTTP to ``svc`` at ``host``, its socket states logged."""
    return Engine(
        StaticDomains({"svc": host}), scheme="http", hooks=EventHooks(on_state=[states]), **kwargs
    )


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
    async with _engine(host, states, auth=StaticBearer(bearer)) as engine:
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
    async with _engine(host, states, clock=clock, auth=auth) as engine:
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
    async with _engine(host, states, clock=clock, auth=auth) as engine:
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
    async with _engine(host, states, clock=clock) as engine:
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
    async with _engine(host, states, auth=StaticBearer("tok123")) as engine:
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
    async with _engine(host, states, auth=StaticBearer("tok123")) as engine:
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
    async with _engine(host, states, clock=clock, auth=StaticBearer("tok123")) as engine:
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


class _KeyHeaderAuth(StaticBearer):
    """A provider whose credential is a header of its own (``credential_headers`` allows it),
    which aiohttp does not drop on a redirect to another origin as it drops Authorization."""

    credential_headers = frozenset({"x-api-key"})

    async def credentials(self, method: str, url: Any) -> Credentials:
        return Credentials(headers={"X-Api-Key": "SECRETKEY"})


def _anything_app(got: list[str]) -> web.Application:
    """Records every request (path, X-Api-Key, Authorization), then accepts the upgrade, or
    answers a plain page to a request that asks none."""

    async def handler(request: web.Request) -> web.StreamResponse:
        got.append(
            f"{request.raw_path} key={request.headers.get('X-Api-Key', '-')} "
            f"auth={request.headers.get('Authorization', '-')}"
        )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="down for maintenance")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def _path_keeping_redirect(target: str) -> web.Application:
    """Redirects every request to ``target`` with its path (as a DC move keeps it)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{target}{request.raw_path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


@pytest.mark.parametrize(
    ("auth", "path", "placement"),
    [
        (_KeyHeaderAuth("unused"), "/ws", AuthPlacement.HEADER),
        (StaticBearer("SECRETKEY"), "/ws/{bearer}", AuthPlacement.PATH),
        (StaticBearer("SECRETKEY"), "/ws", AuthPlacement.FIRST_FRAME),
    ],
    ids=["own-header", "bearer-in-path", "first-frame"],
)
async def test_a_hop_to_another_host_is_refused_before_it_is_sent(
    serve: Any,
    clock: VirtualClock,
    states: StateLog,
    auth: StaticBearer,
    path: str,
    placement: AuthPlacement,
) -> None:
    """Checked only after aiohttp had followed the redirect, an upgrade sent the other host
    every header but Authorization and Cookie (a provider's own credential header) and a
    path that kept the bearer. The engine's stack now refuses the hop before it is sent:
    the other host sees no request at all, the socket stops (no reconnect resending them),
    and the error names the other origin only."""
    elsewhere: list[str] = []
    other = await serve(_anything_app(elsewhere))
    host = await serve(_path_keeping_redirect(f"http://{other}"))
    async with _engine(host, states, clock=clock, auth=auth) as engine:
        ws = await engine.websocket(
            "svc", path, auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open(timeout=5)
        await clock.sleep(60)  # no reconnect follows
        await ws.close()
    cause = str(stopped.value.__cause__)
    assert elsewhere == []
    assert f"redirected to another host (http://{other})" in cause, cause
    assert "SECRETKEY" not in cause
    assert "reconnecting" not in states.names()
    assert "ready" not in states.names()


async def test_a_redirect_to_a_page_on_another_host_is_final_and_sends_it_nothing(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """A redirect to another host's plain page was an outage reconnected into: each
    reconnect sent the provider's credential header there again. The hop is refused before
    it is sent, as any hop to another host: final, nothing reaches that host."""
    elsewhere: list[str] = []
    other = await serve(_anything_app(elsewhere))
    host = await serve(_redirecting_app(f"http://{other}/page"))
    async with _engine(host, states, clock=clock, auth=_KeyHeaderAuth("unused")) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        with pytest.raises(SocketClosed):
            await ws.wait_open(timeout=5)
        await clock.sleep(60)
        await ws.close()
    assert elsewhere == []
    assert "reconnecting" not in states.names()


@pytest.mark.parametrize("form", ["http://{host}/moved", "HTTP://{host}/moved", "//{host}/moved"])
@pytest.mark.parametrize("key_header", [False, True], ids=["bearer", "key-header"])
async def test_a_same_host_redirect_with_an_absolute_location_keeps_the_credentials(
    serve: Any, states: StateLog, form: str, key_header: bool
) -> None:
    """A server's absolute Location on its own host (``http://host/moved``, as nginx writes
    it) is another origin to aiohttp than the ``ws://`` URL dialed, so it dropped
    Authorization and the socket opened without its credentials. A hop to the dialed host
    gets back the headers the upgrade was sent with."""
    got: list[str] = []
    app = _anything_app(got)
    location: list[str] = []

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location[0])

    app.router.add_get("/old", redirect)
    host = await serve(app)
    location.append(form.format(host=host))
    # A provider of its own per case: an engine's close closes it for good.
    auth = _KeyHeaderAuth("unused") if key_header else StaticBearer("tok123")
    async with _engine(host, states, auth=auth) as engine:
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        await ws.wait_open(timeout=5)
        await ws.close()
    if key_header:
        assert got[:1] == ["/moved key=SECRETKEY auth=-"], got
    else:
        assert got[:1] == ["/moved key=- auth=Bearer tok123"], got


async def test_a_session_without_the_stack_still_stops_a_socket_redirected_elsewhere(
    serve: Any, states: StateLog
) -> None:
    """With a caller's own session that lacks the engine's stack, nothing checks a hop
    before it is sent: the check after the upgrade remains, and closes the socket opened on
    another host before anything more goes there (InitConnection's JWT): final."""
    elsewhere: list[str] = []
    other = await serve(_anything_app(elsewhere))
    host = await serve(_redirecting_app(f"http://{other}/ws"))
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, states, auth=StaticBearer("tok123"), session=session) as engine,
    ):
        ws = await engine.websocket(
            "svc",
            "/ws",
            auth_placement=AuthPlacement.FIRST_FRAME,
            options=SocketOptions(keepalive=None),
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open(timeout=5)
        await ws.close()
    assert "redirected to another host" in str(stopped.value.__cause__)
    assert len(elsewhere) == 1, elsewhere
    assert "tok123" not in elsewhere[0], elsewhere
    assert "ready" not in states.names()


@pytest.mark.parametrize(
    ("dialed", "hop"),
    [
        ("wss://h.example.com/ws", "https://h.example.com./x"),
        ("wss://h.example.com/ws", "wss://H.Example.COM:443/x"),
        ("ws://h.example.com/ws", "http://h.example.com:80/x"),
        ("wss://xn--caf-dma.example/ws", "https://caf\u00e9.example/x"),
        ("wss://[::1]:8443/ws", "https://[0:0::1]:8443/x"),
    ],
)
def test_the_same_host_in_any_wire_form_is_the_same_host(dialed: str, hop: str) -> None:
    """A trailing dot, case, an IDN name decoded, an IPv6 literal long, a default port
    written: the same host on the wire, as ``same_host`` compares an HTTP call's."""
    assert same_wire_host(URL(dialed), URL(hop))


@pytest.mark.parametrize(
    "hop",
    [
        "https://other.example.com/ws",
        "https://h.example.com:8443/ws",
        "http://h.example.com:443/ws",  # TLS to plain text, on the same port
        "https://h.example.com.evil.example/ws",
    ],
)
def test_another_host_port_or_plain_text_is_another_host(hop: str) -> None:
    assert not same_wire_host(URL("wss://h.example.com/ws"), URL(hop))


def test_the_check_after_the_upgrade_fails_closed_on_a_final_url_it_cannot_read() -> None:
    """A redirect (history) whose final URL aiohttp no longer shows is taken as one to
    another host; a trailing dot on the first hop's host is no other host, and that host is
    the first hop's as sent (the session's middlewares may route it), not the one dialed."""

    class _Info:
        def __init__(self, url: object) -> None:
            self.url = url

    class _Hop:
        def __init__(self, url: object) -> None:
            self.request_info = _Info(url)

    class _Response(_Hop):
        def __init__(self, first: object, url: object) -> None:
            super().__init__(url)
            self.history = (_Hop(first),)

    class _Socket:
        def __init__(self, first: object, url: object) -> None:
            self._response = _Response(first, url)

    def moved(first: object, final: object) -> str | None:
        dialed = URL("wss://svc.test/ws")
        return _redirected_elsewhere(_Socket(first, final), dialed)  # type: ignore[arg-type]

    gateway = URL("wss://gw.example.com/ws")
    assert moved(gateway, URL("https://gw.example.com./x")) is None
    assert moved(gateway, URL("https://svc.test/x")) == "https://svc.test"
    assert moved(gateway, None) is not None
    # The first hop not shown: held to the host dialed.
    assert moved(None, URL("https://svc.test./x")) is None
    assert moved(None, URL("https://gw.example.com/x")) is not None


@pytest.mark.parametrize(
    ("hop", "same"),
    [
        ("https://h.example.com/x", True),
        ("wss://h.example.com:443/x", True),
        ("https://h.example.com:8443/x", False),
        ("https://other.example.com/x", False),
    ],
)
def test_plain_text_to_tls_on_the_default_ports_is_the_same_host(hop: str, same: bool) -> None:
    """``ws://h`` to ``https://h`` (a server moving its clients to TLS): port 80 to 443 on
    the same host, the credentials going on encrypted. Another port is another host."""
    assert same_wire_host(URL("ws://h.example.com/ws"), URL(hop)) is same
    assert same_wire_host(URL("ws://h.example.com:80/ws"), URL(hop)) is same
    assert not same_wire_host(URL("ws://h.example.com:8080/ws"), URL(hop))
    # And never back from TLS to plain text.
    assert not same_wire_host(URL(hop), URL("http://h.example.com/x"))


def _gateway_route(real: str) -> Any:
    """An outer middleware routing the service's name, ``svc.test``, to where it is served
    (``real``, a gateway or a sidecar): no redirect, the upgrade goes there as sent."""
    real_host = real.split(":")[0]

    async def route(request: Any, handler: Any) -> Any:
        if request.url.raw_host == "svc.test":
            request.url = request.url.with_host(real_host)
        return await handler(request)

    return route


async def test_an_outer_middleware_routing_the_upgrade_opens_it_with_its_credentials(
    serve: Any, states: StateLog
) -> None:
    """The upgrade's first hop, as the retry middleware sees it, is where the caller's outer
    middlewares sent it: a route to a gateway is no redirect, and not refused as one "to
    another host" (it was, for good). A redirect there to its own host (an absolute
    Location) keeps the credentials."""
    got: list[str] = []
    app = _anything_app(got)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://{real}/moved")

    app.router.add_get("/old", redirect)
    real = await serve(app)
    port = real.split(":")[1]
    async with _engine(
        f"svc.test:{port}",
        states,
        auth=StaticBearer("tok123"),
        outer_middlewares=[_gateway_route(real)],
    ) as engine:
        for path in ("/ws", "/old"):
            ws = await engine.websocket(
                "svc",
                path,
                auth_placement=AuthPlacement.HEADER,
                options=SocketOptions(keepalive=None),
            )
            await ws.wait_open(timeout=5)
            await ws.close()
    assert got == ["/ws key=- auth=Bearer tok123", "/moved key=- auth=Bearer tok123"], got


async def test_a_routed_upgrade_redirected_to_another_host_is_still_refused(
    serve: Any, states: StateLog
) -> None:
    """Routed by an outer middleware, the upgrade is held to the host it was routed to: a
    redirect from there to another host is refused before it is sent, final."""
    elsewhere: list[str] = []
    other = await serve(_anything_app(elsewhere))
    real = await serve(_redirecting_app(f"http://{other}/ws"))
    port = real.split(":")[1]
    async with _engine(
        f"svc.test:{port}",
        states,
        auth=_KeyHeaderAuth("unused"),
        outer_middlewares=[_gateway_route(real)],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open(timeout=5)
        await ws.close()
    assert "redirected to another host" in str(stopped.value.__cause__)
    assert elsewhere == []


async def test_a_session_of_your_own_routing_the_upgrade_is_not_taken_for_a_redirect(
    serve: Any, states: StateLog
) -> None:
    """The check after the upgrade, on a caller's own session, holds the final hop to the
    first as sent: the session's own middleware routing the upgrade to a gateway, which
    redirects it on its own host, opens it (it was closed as "redirected to another host").
    aiohttp dropped Authorization on that hop, and nothing there puts it back (documented:
    only the engine's stack does)."""
    got: list[str] = []
    app = _anything_app(got)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://{real}/moved")

    app.router.add_get("/old", redirect)
    real = await serve(app)
    port = real.split(":")[1]
    async with (
        aiohttp.ClientSession(middlewares=(_gateway_route(real),)) as session,
        _engine(f"svc.test:{port}", states, auth=StaticBearer("tok123"), session=session) as engine,
    ):
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        await ws.wait_open(timeout=5)
        await ws.close()
    assert got == ["/moved key=- auth=-"], got


async def test_a_provider_waiting_on_another_process_opens_under_autojump_threshold(
    serve: Any, states: StateLog
) -> None:
    """prepare_timeout is a pending sleep on a VirtualClock: a provider waiting on work the
    loop does not see leaves it idle, and autojump jumps there (documented). A clock given
    autojump_threshold waits for that much real quiet first: the socket opens."""
    seen: list[str] = []
    host = await serve(_ws_app(seen))

    class _SlowDomains(StaticDomains):
        async def resolve(self, service: str) -> str:
            await asyncio.sleep(0.05)  # real time: another process answering
            return await super().resolve(service)

    clock = VirtualClock(autojump_threshold=1.0)
    async with Engine(
        _SlowDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer("tok123"),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket("svc", "/ws", options=SocketOptions(keepalive=None))
        await ws.wait_open(timeout=30)
        await ws.close()
    for _ in range(500):  # the clock's driver ends with the last sleep, a few turns later
        if not [t for t in asyncio.all_tasks() if t.get_name() == "le_transport.VirtualClock"]:
            break
        await asyncio.sleep(0.01)
    assert "connect_failed" not in states.names()
    assert seen == ["/ws"]


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
    async with _engine(host, states, clock=clock, auth=StaticBearer("tok123")) as engine:
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


@pytest.mark.parametrize("where", ["same", "other"])
async def test_a_redirect_injected_on_the_upgrade_is_checked_as_a_real_one(
    serve: Any, states: StateLog, where: str
) -> None:
    """A fault injector's 302 on the upgrade (a wire middleware, inside the retry middleware)
    is a hop like a server's: to the same host it keeps the credentials, to another it is
    refused before it is sent, final."""
    got: list[str] = []
    elsewhere: list[str] = []
    host = await serve(_anything_app(got))
    other = await serve(_anything_app(elsewhere))
    target = host if where == "same" else other
    clock = VirtualClock()
    rule = FaultRule(
        "redirect",
        Status(302, headers={"Location": f"http://{target}/moved"}),
        match=Match(path="/ws"),
        schedule=Schedule(fail_next=1),
    )
    async with _engine(
        host,
        states,
        clock=clock,
        auth=StaticBearer("tok123"),
        wire_middlewares=[FaultInjector([rule], clock=clock)],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        if where == "same":
            await ws.wait_open(timeout=5)
        else:
            with pytest.raises(SocketClosed) as stopped:
                await ws.wait_open(timeout=5)
            assert "another host" in str(stopped.value.__cause__)
        await ws.close()
    assert elsewhere == []
    if where == "same":
        assert got[:1] == ["/moved key=- auth=Bearer tok123"], got


async def test_an_http_call_never_reads_the_upgrade_guard(serve: Any) -> None:
    """The guard is for an upgrade only: an HTTP call made where one is set (a leak, a task
    spawned while dialing) is neither refused nor given its headers."""
    got: list[str] = []
    host = await serve(_anything_app(got))
    token = UPGRADE_GUARD.set(
        UpgradeGuard(URL("ws://elsewhere.invalid/ws"), {"X-Api-Key": "SECRET"})
    )
    try:
        async with (
            Engine(StaticDomains({"svc": host}), scheme="http", auth=StaticBearer("t")) as engine,
            engine.session.get(f"http://{host}/plain") as resp,
        ):
            assert resp.status == 200
    finally:
        UPGRADE_GUARD.reset(token)
    assert got == ["/plain key=- auth=-"], got


@pytest.mark.parametrize("status", [303, 307, 308])
async def test_a_path_bearer_is_not_carried_into_a_same_host_redirect(
    serve: Any, states: StateLog, status: int
) -> None:
    """A bearer in the path goes on the first hop only; a same-host redirect (any status) is
    followed to its Location, which carries none: the guard restores headers, not paths."""
    got: list[str] = []
    app = _anything_app(got)
    redirected: list[str] = []
    answers = {
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }

    async def redirect(request: web.Request) -> web.StreamResponse:
        redirected.append(request.raw_path)
        raise answers[status](f"http://{host}/moved")

    app.router.add_get("/old/{tail}", redirect)
    host = await serve(app)
    async with _engine(host, states, auth=StaticBearer("SECRETTOK")) as engine:
        ws = await engine.websocket(
            "svc",
            "/old/{bearer}",
            auth_placement=AuthPlacement.PATH,
            options=SocketOptions(keepalive=None),
        )
        await ws.wait_open(timeout=5)
        await ws.close()
    assert redirected == ["/old/SECRETTOK"]
    assert got[:1] == ["/moved key=- auth=-"], got
