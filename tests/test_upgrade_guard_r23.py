"""A socket's upgrade redirects: a Location carrying a user name or password (in any of the
ways aiohttp follows it) ends the dial as a final ConnectionFailed; only aiohttp's own refusal
to combine credentials is read as that, any other ValueError is no dial failure; a redirect
built for the dialed host before any first hop reached the guard is that first hop."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import ConnectionFailed
from le_transport._redact import redact_text
from le_transport.chaos import FaultInjector, FaultRule, Status
from le_transport.chaos.plan import Match, Schedule
from le_transport.errors import Repeat
from le_transport.providers import StaticBearer
from le_transport.providers.auth import Credentials
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from tests.test_socket_support import StateLog, no_open_connections, states
from tests.test_upgrade_guard_r20 import _engine, _stop_cause

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

#: The Basic credentials aiohttp makes of a Location's ``u:p``, as they would go on the wire.
_BASIC_UP = base64.b64encode(b"u:p").decode()


class _KeyHeaderAuth(StaticBearer):
    """A provider whose credential is a header of its own: the socket sends no Authorization,
    so aiohttp raises nothing and sends a Location's user name and password as Basic."""

    credential_headers = frozenset({"x-api-key"})

    async def credentials(self, method: str, url: Any) -> Credentials:
        return Credentials(headers={"X-Api-Key": "SECRETKEY"})


def _app(got: list[str], location: list[str] | None = None) -> web.Application:
    """Records every request (path, X-Api-Key, Authorization) and accepts the upgrade; with
    ``location``, ``/old`` answers a 302 to ``location[0]`` instead."""

    async def handler(request: web.Request) -> web.StreamResponse:
        got.append(
            f"{request.raw_path} key={request.headers.get('X-Api-Key', '-')} "
            f"auth={request.headers.get('Authorization', '-')}"
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def redirect(request: web.Request) -> web.StreamResponse:
        got.append(f"{request.raw_path} -> 302")
        assert location is not None
        raise web.HTTPFound(location[0])

    app = web.Application()
    if location is not None:
        app.router.add_get("/old", redirect)
        app.router.add_get("/old/{bearer}", redirect)
    app.router.add_get("/{tail:.*}", handler)
    return app


def _credentials_refusal(cause: BaseException | None) -> ConnectionFailed:
    """``cause`` is the final ConnectionFailed of a Location with userinfo, showing none."""
    assert isinstance(cause, ConnectionFailed), repr(cause)
    assert cause.repeat is Repeat.FINAL
    text = str(cause)
    assert "user name or password" in text, text
    # Readable through redaction (a log line's): "password: not followed (...)" read as a
    # credential, and everything after it was hidden.
    assert redact_text(text) == text
    for secret in ("u:p", _BASIC_UP, "/moved", "SECRETKEY", "tok123"):
        assert secret not in text, text
    assert cause.__cause__ is None
    assert cause.__context__ is None
    return cause


def _auth_for(placement: AuthPlacement) -> StaticBearer:
    return _KeyHeaderAuth("unused") if placement is AuthPlacement.HEADER else StaticBearer("tok123")


# -- 1. A Location with a user name or password: a final ConnectionFailed, whatever its form --


@pytest.mark.parametrize(
    ("written", "placement"),
    [
        # Absolute http:// on the socket's host: another origin than ws:// to aiohttp, which
        # drops the socket's Authorization and sends the Location's user name and password.
        ("http://u:p@{host}/moved", AuthPlacement.HEADER),
        ("http://u:p@{host}/moved", AuthPlacement.PATH),
        # Scheme-relative (the same origin): with no Authorization of the socket's own,
        # aiohttp raises nothing and sends them beside the socket's credential.
        ("//u:p@{host}/moved", AuthPlacement.HEADER),
        ("//u:p@{host}/moved", AuthPlacement.PATH),
        # A user name alone is credentials too (aiohttp sends it as Basic "u:").
        ("http://u@{host}/moved", AuthPlacement.HEADER),
    ],
)
async def test_same_host_location_with_userinfo_is_final(
    serve: Any, states: StateLog, written: str, placement: AuthPlacement
) -> None:
    """The hop to the Location went out with the Location's user name and password as Basic
    credentials (beside the socket's own, or in place of its Authorization), and the socket
    opened on them, or was refused by a server that wanted its own and reconnected for ever.
    Now refused before that hop is sent: a final ConnectionFailed that shows neither the user
    name and password nor the Location."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_app(got, location))
    location.append(written.format(host=host))
    path = "/old" if placement is AuthPlacement.HEADER else "/old/{bearer}"
    async with _engine(host, states, auth=_auth_for(placement)) as engine:
        ws = await engine.websocket(
            "svc", path, auth_placement=placement, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    _credentials_refusal(cause)
    assert [line for line in got if not line.endswith("-> 302")] == [], got
    assert not states.of("connect_failed"), "retried as a failed connect"


@pytest.mark.parametrize("own_session", [False, True])
@pytest.mark.parametrize("placement", [AuthPlacement.HEADER, AuthPlacement.PATH])
async def test_ws_scheme_location_with_userinfo_is_final(
    serve: Any, clock: VirtualClock, states: StateLog, own_session: bool, placement: AuthPlacement
) -> None:
    """``Location: ws://u:p@host/moved``, which the dialer follows itself as http://: refused
    before it is dialed, on the engine's stack and on a session of the caller's own (whose
    hops no guard sees)."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_app(got, location))
    location.append(f"ws://u:p@{host}/moved")
    path = "/old" if placement is AuthPlacement.HEADER else "/old/{bearer}"
    async with aiohttp.ClientSession() as session:
        extra: dict[str, Any] = {"session": session} if own_session else {}
        async with _engine(host, states, clock=clock, auth=_auth_for(placement), **extra) as eng:
            ws = await eng.websocket(
                "svc", path, auth_placement=placement, options=SocketOptions(keepalive=None)
            )
            cause = await _stop_cause(ws)
    _credentials_refusal(cause)
    assert [line for line in got if not line.endswith("-> 302")] == [], got


async def test_outer_injector_location_with_userinfo_is_final(serve: Any, states: StateLog) -> None:
    """An outer FaultInjector answering the first hop with a 302 to the dialed host with
    userinfo: the hop aiohttp builds for it carries them, and is refused at the guard."""
    got: list[str] = []
    host = await serve(_app(got))
    clock = VirtualClock()
    rule = FaultRule(
        "redirect",
        Status(302, headers={"Location": f"http://u:p@{host}/moved"}),
        match=Match(path="/ws"),
        schedule=Schedule(fail_next=1),
    )
    async with _engine(
        host,
        states,
        clock=clock,
        auth=_KeyHeaderAuth("unused"),
        outer_middlewares=[FaultInjector([rule], clock=clock)],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    _credentials_refusal(cause)
    assert got == [], got


async def test_own_session_followed_location_with_userinfo_is_closed(
    serve: Any, states: StateLog
) -> None:
    """On a session of the caller's own, no guard sees the hops: aiohttp follows an absolute
    Location with userinfo on the socket's host. The socket it opened there is closed and the
    dial ends as final, as a redirect elsewhere does: nothing more goes on it."""
    got: list[str] = []
    location: list[str] = []
    host = await serve(_app(got, location))
    location.append(f"http://u:p@{host}/moved")
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, states, auth=_KeyHeaderAuth("unused"), session=session) as eng,
    ):
        ws = await eng.websocket(
            "svc",
            "/old",
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        cause = await _stop_cause(ws)
    _credentials_refusal(cause)


# -- 2. Only aiohttp's refusal to combine credentials is read as one -------------------------


async def test_other_value_error_is_not_a_redirect_refusal(serve: Any, states: StateLog) -> None:
    """A ValueError out of the upgrade that is not aiohttp's refusal to combine credentials (a
    bug in a caller's outer middleware here) was taken for a redirect whose Location carries
    a user name or password: a final ConnectionFailed saying so. It is the bug's own error
    now, the cause of the socket's stop."""
    got: list[str] = []
    host = await serve(_app(got))

    async def buggy(request: Any, handler: Any) -> Any:
        raise ValueError("a bug in the caller's middleware")

    async with _engine(host, states, auth=StaticBearer("tok123"), outer_middlewares=[buggy]) as e:
        ws = await e.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert type(cause) is ValueError, repr(cause)
    assert str(cause) == "a bug in the caller's middleware"
    assert got == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # aiohttp 3.14: session auth=
async def test_session_auth_beside_the_socket_header_is_named(serve: Any, states: StateLog) -> None:
    """A caller's session with ``auth=`` of its own: aiohttp refuses to send the socket's
    Authorization header beside it on the very first hop (no redirect at all). Final, as
    before, but said so: it was blamed on a redirect's Location."""
    got: list[str] = []
    host = await serve(_app(got))
    async with (
        aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "SECRETPW")) as session,
        _engine(host, states, auth=StaticBearer("tok123"), session=session) as eng,
    ):
        ws = await eng.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert isinstance(cause, ConnectionFailed), repr(cause)
    assert cause.repeat is Repeat.FINAL
    text = str(cause)
    assert "session's own auth argument" in text, text
    assert redact_text(text) == text  # "auth= cannot be sent..." read as a credential
    assert "Location" not in text, text
    assert "SECRETPW" not in text
    assert "tok123" not in text
    assert cause.__context__ is None
    assert got == []


# -- 3. A redirect built for the dialed host before any first hop is the first hop ----------


async def test_outer_redirect_to_dialed_host_then_routed_is_the_first_hop(
    serve: Any, states: StateLog
) -> None:
    """Outer middlewares: a FaultInjector answering the first hop with a 302 to the dialed
    host, then a router sending the service's name to a gateway. The hop aiohttp builds for
    the Location, built for the dialed host, reaches the guard routed to the gateway before
    any first hop did: it was held to the dialed host's name and refused as a redirect to
    another host, a final stop. It is the first hop: sent to the gateway with the socket's
    credentials, as the first hop would have been."""
    got: list[str] = []
    gateway = await serve(_app(got))
    gw_host, gw_port = gateway.split(":")
    clock = VirtualClock()
    rule = FaultRule(
        "redirect",
        Status(302, headers={"Location": "http://svc.test:1/moved"}),
        match=Match(path="/ws"),
        schedule=Schedule(fail_next=1),
    )

    async def route(request: Any, handler: Any) -> Any:
        if request.url.raw_host == "svc.test":
            request.url = request.url.with_host(gw_host).with_port(int(gw_port))
        return await handler(request)

    async with _engine(
        "svc.test:1",
        states,
        clock=clock,
        auth=StaticBearer("tok123"),
        outer_middlewares=[FaultInjector([rule], clock=clock), route],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert cause is None, repr(cause)
    assert got == ["/moved key=- auth=Bearer tok123"], got


async def test_outer_redirect_elsewhere_then_routed_is_still_refused(
    serve: Any, states: StateLog
) -> None:
    """The same, the Location on another host than the dialed one: no first hop, and refused
    before it is sent, even though the router sends it to the same gateway."""
    got: list[str] = []
    gateway = await serve(_app(got))
    gw_host, gw_port = gateway.split(":")
    clock = VirtualClock()
    rule = FaultRule(
        "redirect",
        Status(302, headers={"Location": "http://other.test:1/moved"}),
        match=Match(path="/ws"),
        schedule=Schedule(fail_next=1),
    )

    async def route(request: Any, handler: Any) -> Any:
        if request.url.raw_host in ("svc.test", "other.test"):
            request.url = request.url.with_host(gw_host).with_port(int(gw_port))
        return await handler(request)

    async with _engine(
        "svc.test:1",
        states,
        clock=clock,
        auth=StaticBearer("tok123"),
        outer_middlewares=[FaultInjector([rule], clock=clock), route],
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert isinstance(cause, ConnectionFailed), repr(cause)
    assert cause.repeat is Repeat.FINAL
    assert "another host" in str(cause)
    assert got == []


# -- 4. A redirect to the dialed URL itself, with a user name and password -----------------


async def test_location_back_to_dialed_url_with_userinfo_is_final(
    serve: Any, states: StateLog
) -> None:
    """``Location: //u:p@host/ws`` on the dialed URL's own path: aiohttp strips the userinfo,
    so the hop it builds is for the dialed URL exactly, which the guard took for the first hop
    sent again, unchecked: it went out with the Location's user name and password as Basic
    credentials. A hop built for the dialed URL after the first one carries no other
    Authorization than the first did: refused, final."""
    got: list[str] = []
    served: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        got.append(f"auth={request.headers.get('Authorization', '-')}")
        if not served:
            served.append(1)
            raise web.HTTPFound(f"//u:p@{request.host}/ws")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    async with _engine(host, states, auth=_KeyHeaderAuth("unused")) as engine:
        ws = await engine.websocket(
            "svc", "/ws", auth_placement=AuthPlacement.HEADER, options=SocketOptions(keepalive=None)
        )
        cause = await _stop_cause(ws)
    assert got == ["auth=-"], got
    _credentials_refusal(cause)
