"""A socket's upgrade redirects: told from a first hop by aiohttp's ``original_url`` (an outer
middleware answering or repeating the first hop), a Location with userinfo, one written
``ws://``/``wss://``."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import ConnectionFailed, Engine, EventHooks, SocketClosed
from le_transport.chaos import FaultInjector, FaultRule, Status
from le_transport.chaos.plan import Match, Schedule
from le_transport.errors import Repeat
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.providers.auth import Credentials
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from tests.test_socket_support import StateLog, no_open_connections, states

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


class _KeyHeaderAuth(StaticBearer):
    """A provider whose credential is a header of its own, which aiohttp keeps on a hop to
    another origin (it drops only Authorization, Cookie, Proxy-Authorization)."""

    credential_headers = frozenset({"x-api-key"})

    async def credentials(self, method: str, url: Any) -> Credentials:
        return Credentials(headers={"X-Api-Key": "SECRETKEY"})


def _anything_app(got: list[str]) -> web.Application:
    """Records every request (path, X-Api-Key, Authorization), then accepts the upgrade."""

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


def _redirecting_app(got: list[str], location: list[str]) -> web.Application:
    """``_anything_app``, but ``/old`` answers a 302 to ``location[0]`` (recorded too)."""
    app = _anything_app(got)

    async def redirect(request: web.Request) -> web.StreamResponse:
        got.append(f"{request.raw_path} -> 302")
        raise web.HTTPFound(location[0])

    app.router.add_get("/old", redirect)
    return app


def _engine(host: str, states: StateLog, **kwargs: Any) -> Engine:
    return Engine(
        StaticDomains({"svc": host}), scheme="http", hooks=EventHooks(on_state=[states]), **kwargs
    )


def _dead_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stop_cause(ws: Any) -> BaseException | None:
    """What stopped ``ws`` (its SocketClosed's cause), None if it opened; ``ws`` closed."""
    try:
        await ws.wait_open(timeout=5)
    except SocketClosed as exc:
        return exc.__cause__
    finally:
        await ws.close()
    return None


def _final_refusal(cause: BaseException | None) -> ConnectionFailed:
    assert isinstance(cause, ConnectionFailed), repr(cause)
    assert cause.repeat is Repeat.FINAL
    return cause


# -- An outer middleware answers the first hop with a redirect -------------------------------


def _frames_app(got: list[str]) -> web.Application:
    """Records every request (path, X-Api-Key) and every frame it is sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        got.append(f"{request.raw_path} key={request.headers.get('X-Api-Key', '-')}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            got.append(f"frame {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def _outer_redirect(location: str, clock: VirtualClock) -> FaultInjector:
    """An outer FaultInjector answering the upgrade's first hop (``/ws``) with a 302."""
    rule = FaultRule(
        "redirect",
        Status(302, headers={"Location": location}),
        match=Match(path="/ws"),
        schedule=Schedule(fail_next=1),
    )
    return FaultInjector([rule], clock=clock)


@pytest.mark.parametrize("placement", [AuthPlacement.HEADER, AuthPlacement.FIRST_FRAME])
async def test_outer_injector_redirect_to_another_host_is_refused(
    serve: Any, states: StateLog, placement: AuthPlacement
) -> None:
    """A FaultInjector in outer_middlewares answers the upgrade's first hop with a 302 to
    another host: that first hop never reaches the retry middleware, so the redirect is the
    first hop the guard sees. It is no first hop (aiohttp built it for the Location, not the
    dialed URL) and is held to the dialed host: refused before it is sent, final. It used to
    be taken as the first hop, and the other host got the provider's credential header (or
    InitConnection's JWT)."""
    got: list[str] = []
    elsewhere: list[str] = []
    host = await serve(_frames_app(got))
    other = await serve(_frames_app(elsewhere))
    clock = VirtualClock()
    auth = (
        _KeyHeaderAuth("unused") if placement is AuthPlacement.HEADER else StaticBearer("SECRETJWT")
    )
    async with _engine(
        host,
        states,
        clock=clock,
        auth=auth,
        outer_middlewares=[_outer_redirect(f"http://{other}/ws", clock)],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert elsewhere == [], f"the other host got the upgrade: {elsewhere}"
    assert got == []
    refused = _final_refusal(cause)
    assert "another host" in str(refused)
    assert f"127.0.0.1:{other.split(':')[1]}" in str(refused)


async def test_outer_injector_redirect_on_the_dialed_host_is_followed(
    serve: Any, states: StateLog
) -> None:
    """The same, to the dialed host: followed, with the socket's own credential header."""
    got: list[str] = []
    host = await serve(_frames_app(got))
    clock = VirtualClock()
    async with _engine(
        host,
        states,
        clock=clock,
        auth=_KeyHeaderAuth("unused"),
        outer_middlewares=[_outer_redirect(f"http://{host}/moved", clock)],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        assert await _stop_cause(ws) is None
    assert got == ["/moved key=SECRETKEY"], got


# -- An outer middleware that fails over sends the first hop again: no redirect --------------


async def test_outer_failover_is_not_taken_for_a_redirect(serve: Any, states: StateLog) -> None:
    """An outer middleware routing the service to a gateway, failing over to a second one
    when the first refuses the connection, sends the first hop again: still a first hop (its
    original URL is the dialed one), the new gateway its host. It was taken for a redirect to
    another host: the socket stopped for good instead of opening on the backup gateway."""
    got: list[str] = []
    backup = await serve(_anything_app(got))
    dead = f"127.0.0.1:{_dead_port()}"

    async def failover(request: Any, handler: Any) -> Any:
        if request.url.raw_host != "svc.test":
            return await handler(request)
        base = request.url
        last: BaseException | None = None
        for gateway in (dead, backup):
            gw_host, gw_port = gateway.split(":")
            request.url = base.with_host(gw_host).with_port(int(gw_port))
            try:
                return await handler(request)
            except aiohttp.ClientConnectorError as exc:
                last = exc
        assert last is not None
        raise last

    async with _engine(
        "svc.test:1",
        states,
        auth=StaticBearer("tok123"),
        outer_middlewares=[failover],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert cause is None, repr(cause)
    assert got == ["/ws key=- auth=Bearer tok123"], got


# -- A same-host redirect whose Location carries userinfo ------------------------------------


async def test_same_host_redirect_with_userinfo_fails_typed(serve: Any, states: StateLog) -> None:
    """A scheme-relative Location with userinfo on the socket's own host (``//u:p@host/x``)
    is the same origin to aiohttp, which then raises a bare ValueError (it cannot combine the
    socket's Authorization header with the Location's credentials) out of ws_connect: the
    socket stopped on that untyped error. Now a final ConnectionFailed, naming no Location."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_redirecting_app(got, location))
    location.append(f"//u:p@{host}/moved")
    async with _engine(host, states, auth=StaticBearer("tok123")) as engine:
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        cause = await _stop_cause(ws)
    refused = _final_refusal(cause)
    assert "user name or password" in str(refused)
    assert "u:p" not in str(refused)
    assert "/moved" not in str(refused)
    assert refused.__cause__ is None
    assert refused.__context__ is None
    assert got == ["/old -> 302"], got


# -- A redirect whose Location is written ws:// or wss:// ------------------------------------


async def test_same_host_redirect_written_with_ws_scheme_is_followed(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """A server answering a ws:// upgrade with ``Location: ws://host/moved`` (its own
    scheme) made aiohttp raise NonHttpUrlRedirectClientError before any middleware ran: the
    socket never opened and reconnected for ever, sending its credentials every time. The
    Location is followed as http://host/moved, with the socket's credentials."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_redirecting_app(got, location))
    location.append(f"ws://{host}/moved")
    async with _engine(host, states, clock=clock, auth=StaticBearer("tok123")) as engine:
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        cause = await _stop_cause(ws)
    assert cause is None, repr(cause)
    assert got == ["/old -> 302", "/moved key=- auth=Bearer tok123"], got


@pytest.mark.parametrize("own_session", [False, True])
async def test_redirect_written_with_ws_scheme_to_another_host_is_final(
    serve: Any, clock: VirtualClock, states: StateLog, own_session: bool
) -> None:
    """``Location: ws://other/ws``: refused before anything is sent there, and final (a
    reconnect meets the same Location), with the engine's stack (the guard) as on a session
    of the caller's own (checked against the dialed host before dialing)."""
    got: list[str] = []
    elsewhere: list[str] = []
    location: list[str] = []
    host = await serve(_redirecting_app(got, location))
    other = await serve(_anything_app(elsewhere))
    location.append(f"ws://{other}/ws")
    async with aiohttp.ClientSession() as session:
        extra: dict[str, Any] = {"session": session} if own_session else {}
        async with _engine(
            host, states, clock=clock, auth=StaticBearer("tok123"), **extra
        ) as engine:
            ws = await engine.websocket(
                "svc",
                "/old",
                auth_placement=AuthPlacement.HEADER,
                options=SocketOptions(keepalive=None),
            )
            cause = await _stop_cause(ws)
    refused = _final_refusal(cause)
    assert "another host" in str(refused)
    assert elsewhere == []
    assert got == ["/old -> 302"], got


async def test_redirect_to_another_scheme_is_final(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """A Location no HTTP or WebSocket URL (``ftp://``) cannot be followed, and a reconnect
    meets it again: final, naming the scheme only."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_redirecting_app(got, location))
    location.append(f"ftp://{host}/SECRETPATH")
    async with _engine(host, states, clock=clock, auth=StaticBearer("tok123")) as engine:
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        cause = await _stop_cause(ws)
    refused = _final_refusal(cause)
    assert "'ftp'" in str(refused)
    assert "SECRETPATH" not in str(refused)
    assert got == ["/old -> 302"], got


async def test_a_loop_of_ws_scheme_redirects_is_bounded(
    serve: Any, clock: VirtualClock, states: StateLog
) -> None:
    """A Location written ws:// that leads back to itself: each connect attempt follows it a
    bounded number of times, then fails as a redirect loop does (and is reconnected later)."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_redirecting_app(got, location))
    location.append(f"ws://{host}/old")
    async with _engine(host, states, clock=clock, auth=StaticBearer("tok123")) as engine:
        ws = await engine.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        with pytest.raises(TimeoutError):
            await ws.wait_open(timeout=1)
        await ws.close()
    reasons = [event.details.get("reason") for event in states.of("connect_failed")]
    assert reasons, "no connect attempt failed"
    assert all("TooManyRedirects" in str(reason) for reason in reasons), reasons
    # 1 dial and 10 follows per attempt.
    assert len(got) == 11 * len(reasons), (len(got), reasons)
