"""What a probe of the public API found at the engine's front door, each kept fixed:

1. a lone surrogate in a path or a query value was dropped by yarl: ``/users`` + ``\\ud800``
   went to ``/users`` (another endpoint, with the bearer), ``select=\\ud800`` as ``select=``:
   now an ``InvalidRequest`` naming the argument (a refused path is not kept as checked);
2. ``Credentials`` took anything (an int header value, a CR/LF, a str bearer), which failed
   raw inside a request or stopped a socket on an AttributeError: now refused where they are
   made (``InvalidCredentials``, a ``ConfigurationError``), and made inside a provider's
   ``credentials()`` (or an answer that is no ``Credentials``) a ``ProviderError``;
3. refusals echoed the refused value (a method, a URL given as the path, a deadline, an
   ``accept``): now described by type and length, a number only shown; ``engine.websocket``
   checks its ``service`` at the call;
4. ``engine.websocket(params="x")`` failed raw in the dialer;
5. ``engine.websocket(auth=True)`` was taken, and the socket stopped at its first connect;
6. ``RetryMiddleware(wall_clock=True)`` was taken, and failed raw at an HTTP-date Retry-After;
7. ``Engine(outer_middlewares=None)`` and ``keepalive(fields="x")`` failed raw;
8. a closed socket's ``start()`` and ``add_on_connect`` were silent; ``ws.request`` took
   ``headers=[5]``; ``url_for(scheme="ftp")`` built an ftp URL.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from yarl import URL

from le_transport import (
    ConfigurationError,
    Credentials,
    Engine,
    InvalidRequest,
    ProviderError,
    RetryMiddleware,
    StaticDomains,
    UserLogin,
)
from le_transport.errors import InvalidMessage, SocketClosed, UnknownServiceError
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.providers.auth import InvalidCredentials
from le_transport.sockets import UMS_BRAND_SOCKET_QUERY, ums_brand_path
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

SECRET = "hunter2SECRETxyz"
SERVICE = "accountConfigReadOnly"
LOGIN = "/api/account/*/login"
UPGRADE = "/ws_api/*"


def users_path(sim: Simulator) -> str:
    return f"/api/account/{sim.account.id}/configuration/le-users/users"


class _Provider:
    """An auth provider of the caller's own, whose ``credentials()`` runs ``make``."""

    def __init__(self, make: Any) -> None:
        self.make = make

    async def credentials(self, method: str, url: URL) -> Any:
        return self.make()

    async def invalidate(self, rejected: Credentials) -> None:
        pass

    async def close(self) -> None:
        pass


class _Lookalike:
    """Not Credentials, but shaped like them, with a header that would inject another."""

    headers = {"Authorization": f"Bearer {SECRET}\r\nX-Evil: 1"}
    bearer = None
    generation = 0


def _no_secret(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        assert SECRET not in str(seen)
        assert SECRET not in repr(seen.args)
        seen = seen.__cause__


# -- 1. a lone surrogate is refused, never dropped ---------------------------------------------


async def test_a_lone_surrogate_in_a_path_is_refused_and_never_kept_as_checked(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    path = users_path(sim)
    async with agent_engine(sim, clock, states) as engine:
        for call in (
            lambda p: engine.request("GET", SERVICE, p),
            lambda p: engine.url_for(SERVICE, p),
        ):
            for bad in (path + "\ud800", "/x\udc80y"):
                with pytest.raises(InvalidRequest, match="lone surrogate") as info:
                    await call(bad)
                assert "path" in str(info.value)
                assert bad not in engine._checked_paths
        with pytest.raises(InvalidRequest, match="lone surrogate"):
            await engine.websocket("facadeMsg", ums_brand_path(sim.account.id) + "\ud800")
        # The same path, sent again, is refused again (it was not cached as checked).
        with pytest.raises(InvalidRequest, match="lone surrogate"):
            await engine.request("GET", SERVICE, path + "\ud800")
        assert (await engine.request("GET", SERVICE, path)).status == 200
    assert sim.count("GET", "*/le-users/users") == 1
    assert sim.count("GET", UPGRADE) == 0


@pytest.mark.parametrize(
    "params",
    [
        {"select": "\ud800"},
        {"select": ["ok", "a\udfffb"]},
        [("select", "\ud800")],
        "select=\ud800",
    ],
    ids=["value", "list-item", "pairs", "query-string"],
)
async def test_a_lone_surrogate_in_a_query_value_is_refused_naming_the_parameter(
    sim: Simulator, clock: VirtualClock, states: StateLog, params: Any
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest, match="lone surrogate") as info:
            await engine.request("GET", SERVICE, users_path(sim), params=params)
        assert "params" in str(info.value)
        if isinstance(params, dict):
            assert "params['select']" in str(info.value)
            with pytest.raises(InvalidRequest, match=r"params\['select'\]"):
                await engine.websocket(
                    "facadeMsg", ums_brand_path(sim.account.id), params={"v": "2.1", **params}
                )
    assert sim.count("GET", "*/le-users/users") == 0
    assert sim.count("GET", UPGRADE) == 0


# -- 2. Credentials are checked where they are made --------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"headers": None}, "headers must be a mapping"),
        ({"headers": "x"}, "headers must be a mapping"),
        ({"headers": {"Authorization": 5}}, "'Authorization' has a value of type int"),
        ({"headers": {"Authorization": f"Bearer {SECRET}\r\nX-Evil: 1"}}, "CR, LF or NUL"),
        ({"headers": {"Authorization": f"Bearer {SECRET}\x00"}}, "CR, LF or NUL"),
        ({"headers": {f"Authorization:Bearer {SECRET}": "x"}}, "RFC 9110 token"),
        ({"headers": {5: "x"}}, "header name is a int"),
        ({"headers": {"Authorization": f"{SECRET}\ud800"}}, "UTF-8 cannot encode"),
        ({"bearer": SECRET}, "bearer must be a Secret"),
        ({"generation": "1"}, "generation must be an int"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else "",
)
def test_credentials_that_cannot_be_sent_are_refused_where_they_are_made(
    kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidCredentials) as info:
        Credentials(**kwargs)
    assert isinstance(info.value, ConfigurationError)
    assert says in str(info.value)
    _no_secret(info.value)


def test_good_credentials_are_made_as_before() -> None:
    creds = Credentials(headers={"Authorization": "Bearer x", "X-Org": "é"}, generation=3)
    assert dict(creds.headers) == {"Authorization": "Bearer x", "X-Org": "é"}
    assert creds.bearer is None
    assert creds.generation == 3


def _bad_inside() -> Credentials:
    return Credentials(headers={"Authorization": f"Bearer {SECRET}\r\nX-Evil: 1"})


@pytest.mark.parametrize(
    ("make", "error_type"),
    [
        (_bad_inside, "InvalidCredentials"),
        (lambda: Credentials(headers={"Authorization": 5}), "InvalidCredentials"),
        (lambda: _Lookalike(), "InvalidCredentials"),
        (lambda: "not credentials", "AttributeError"),
    ],
    ids=["crlf", "int-value", "lookalike", "str-answer"],
)
async def test_credentials_a_provider_cannot_send_are_its_provider_error(
    sim: Simulator, clock: VirtualClock, make: Any, error_type: str
) -> None:
    auth = _Provider(make)
    async with Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ProviderError) as info:
            await engine.request("GET", SERVICE, users_path(sim))
        assert info.value.error_type == error_type
        _no_secret(info.value)
        with pytest.raises(ProviderError) as login:
            await engine.login()
        assert login.value.error_type == error_type
        _no_secret(login.value)
        ws = await engine.websocket(
            "facadeMsg", ums_brand_path(sim.account.id), params=UMS_BRAND_SOCKET_QUERY
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open(timeout=60)
        assert isinstance(stopped.value.__cause__, ProviderError)
        assert stopped.value.__cause__.error_type == error_type
        _no_secret(stopped.value)
        await ws.close()
    assert sim.count("GET", "*/le-users/users") == 0
    assert sim.count("GET", UPGRADE) == 0


# -- 3. a refused argument is described, never shown -------------------------------------------


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda e, p: e.request(SECRET, SERVICE, p), "got a str of 16 characters"),
        (lambda e, p: e.request({"k": SECRET}, SERVICE, p), "got a dict"),
        (lambda e, p: e.request([("a", SECRET)], SERVICE, p), "got a list"),
        (lambda e, p: e.request("GET", SERVICE, f"https://evil.example/{SECRET}"), "a URL of"),
        (lambda e, p: e.request("GET", SERVICE, SECRET), "got a str of 16 characters"),
        (lambda e, p: e.url_for(SERVICE, f"//evil.example/{SECRET}"), "a URL of"),
        (lambda e, p: e.request("GET", SERVICE, p, deadline=SECRET), "got a str of"),
        (lambda e, p: e.request("GET", SERVICE, p, deadline={"k": SECRET}), "got a dict"),
        (lambda e, p: e.request("GET", SERVICE, p, attempt_timeout=[SECRET]), "got a list"),
        (lambda e, p: e.request("GET", SERVICE, p, deadline=-1), "got -1"),
        (lambda e, p: e.request("GET", SERVICE, p, accept=[SECRET]), "a list holding a str"),
        (lambda e, p: e.request("GET", SERVICE, p, accept={"k": SECRET}), "holding a str"),
        (lambda e, p: e.request("GET", SERVICE, p, accept=SECRET), "got a str"),
        (lambda e, p: e.request("GET", SERVICE, p, accept={401}), "got [401]"),
    ],
    ids=lambda v: "" if callable(v) else v,
)
async def test_a_refused_argument_is_described_never_shown(
    sim: Simulator, clock: VirtualClock, states: StateLog, call: Any, says: str
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as info:
            await call(engine, users_path(sim))
    assert says in str(info.value)
    _no_secret(info.value)
    assert sim.count("GET", "*/le-users/users") == 0


@pytest.mark.parametrize(
    ("service", "error", "says"),
    [
        (None, InvalidRequest, "service must be a str"),
        ({"k": SECRET}, InvalidRequest, "got a dict"),
        ([("a", SECRET)], InvalidRequest, "got a list"),
        ("", InvalidRequest, "empty"),
        (f"{SECRET}\r\n", InvalidRequest, "whitespace or a control character"),
        ("noSuchService", UnknownServiceError, "noSuchService"),
    ],
    ids=["none", "dict", "list", "empty", "crlf", "unknown"],
)
async def test_websocket_checks_its_service_at_the_call(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    service: Any,
    error: type[Exception],
    says: str,
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(error) as info:
            await engine.websocket(service, ums_brand_path(sim.account.id))
        assert not engine._sockets
    assert says in str(info.value)
    _no_secret(info.value)
    assert sim.count("POST", LOGIN) == 0
    assert states.names() == []


# -- 4, 5. websocket params and auth of the wrong kind -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"params": "x"}, InvalidRequest, "params must be a mapping"),
        ({"params": SECRET}, InvalidRequest, "params must be a mapping"),
        ({"params": [("v", SECRET, 1)]}, InvalidRequest, "params must be a mapping"),
        ({"auth": True}, ConfigurationError, "auth must be an AuthProvider or None, got bool"),
        ({"auth": SECRET}, ConfigurationError, "got str"),
        ({"auth": {"k": SECRET}}, ConfigurationError, "got dict"),
    ],
    ids=["str-params", "secret-params", "triples-params", "bool-auth", "str-auth", "dict-auth"],
)
async def test_websocket_refuses_params_and_auth_of_the_wrong_kind_at_the_call(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    kwargs: dict[str, Any],
    error: type[Exception],
    says: str,
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(error) as info:
            await engine.websocket("facadeMsg", ums_brand_path(sim.account.id), **kwargs)
        assert not engine._sockets
    assert says in str(info.value)
    _no_secret(info.value)
    assert sim.count("POST", LOGIN) == 0
    assert sim.count("GET", UPGRADE) == 0


# -- 6. RetryMiddleware's wall clock -----------------------------------------------------------


@pytest.mark.parametrize("wall_clock", [True, 5, "time", None])
def test_retry_middleware_refuses_a_wall_clock_that_cannot_be_called(wall_clock: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryMiddleware\.wall_clock must be a function"):
        RetryMiddleware(wall_clock=wall_clock)


# -- 7. middleware stacks and keepalive fields -------------------------------------------------


@pytest.mark.parametrize("stack", [None, 0, True, object(), "mw", {"a": 1}])
@pytest.mark.parametrize("name", ["outer_middlewares", "wire_middlewares"])
def test_engine_refuses_a_middleware_stack_that_is_no_sequence(name: str, stack: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"Engine.{name} must be a sequence"):
        Engine({"svc": "127.0.0.1:9"}, **{name: stack})


async def test_a_middleware_stack_given_as_an_iterator_is_used_whole(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    seen: list[str] = []

    async def note(request: Any, handler: Any) -> Any:
        seen.append(request.method)
        return await handler(request)

    stack: Iterator[Any] = iter([note])
    async with agent_engine(sim, clock, states, outer_middlewares=stack) as engine:
        await engine.request("GET", SERVICE, users_path(sim))
    assert seen == ["GET"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ("x", "fields must be a mapping"),
        ([("account", "1")], "fields must be a mapping"),
        ({"account": True, "chat_id": "c"}, "fields['account'] must be a str or an int"),
        ({"account": "1", "chat_id": None}, "fields['chat_id'] must be a str"),
        ({5: "x"}, "fields names must be str"),
        ({"account": "1", "chat_id": "../../x"}, "'.' or '..' segments"),
        ({"account": "1", "chat_id": "c?x=1"}, "'?' or '#'"),
    ],
    ids=["str", "pairs", "bool-value", "none-value", "int-name", "dot-dot", "query"],
)
async def test_keepalive_refuses_fields_that_cannot_fill_its_path(
    sim: Simulator, clock: VirtualClock, states: StateLog, fields: Any, says: str
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest) as info:
            engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=fields)
        assert not engine._keepalives
    assert says in str(info.value)


# -- 8. a closed socket, a request's headers, url_for's scheme ---------------------------------


async def test_a_closed_socket_does_not_start_again_nor_take_callbacks(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def resubscribe(ws: Any) -> None:
        pass

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await ws.close()
        with pytest.raises(SocketClosed):
            ws.start()
        with pytest.raises(SocketClosed):
            ws.add_on_connect(resubscribe)
        with pytest.raises(SocketClosed):
            async with ws:
                pass
    assert sim.count("GET", UPGRADE) == 1


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([5], "headers[0] is a int"),
        ([{"type": ".ams.headers.ClientProperties"}, SECRET], "headers[1] is a str"),
        ([{5: "x", "type": "t"}], "headers[0] has a key that is not a str"),
        ([{"jwt": SECRET}], "headers[0] names no 'type'"),
        ("x", "got str"),
    ],
    ids=["int", "str-item", "int-key", "no-type", "str"],
)
async def test_a_socket_request_refuses_headers_that_are_no_header_objects(
    sim: Simulator, clock: VirtualClock, states: StateLog, headers: Any, says: str
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(InvalidMessage) as info:
            await ws.request(".GetClock", {}, headers=headers)
        answer = await ws.request(
            ".GetClock", {}, headers=[{"type": ".ams.headers.ClientProperties", "os": "x"}]
        )
        await ws.close()
    assert says in str(info.value)
    _no_secret(info.value)
    assert answer["code"] == 200


@pytest.mark.parametrize("scheme", ["ftp", "HTTPS", "", 5, SECRET])
async def test_url_for_refuses_a_scheme_the_engine_would_refuse(
    sim: Simulator, clock: VirtualClock, states: StateLog, scheme: Any
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest, match="url_for scheme must be") as info:
            await engine.url_for(SERVICE, "/x", scheme=scheme)
        _no_secret(info.value)
        for ok in ("https", "http", "wss", "ws", None):
            url = await engine.url_for(SERVICE, "/x", scheme=ok)
            assert url.scheme == (ok or "http")
    with pytest.raises(ConfigurationError):
        Engine({"svc": "127.0.0.1:9"}, scheme="ftp")


async def test_a_login_providers_credentials_are_built_once_per_session_and_read_only(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Credentials now check what they hold when made (~1 µs): the Login Service provider
    hands the same read-only credentials to every call until its session changes."""
    async with agent_engine(sim, clock, states) as engine:
        auth = engine.auth
        assert isinstance(auth, UserLogin)
        url = URL(sim.url)
        first = await auth.credentials("GET", url)
        assert await auth.credentials("GET", url) is first
        with pytest.raises(TypeError):
            first.headers["Authorization"] = "Bearer other"  # type: ignore[index]
        await auth.relogin()
        fresh = await auth.credentials("GET", url)
        assert fresh is not first
        assert fresh.generation != first.generation


# -- the review of these checks: what they must not refuse -----------------------------------


@pytest.mark.parametrize("status", ["099", "000"])
async def test_an_odd_status_line_is_a_malformed_answer_retried_never_a_success(
    clock: VirtualClock, status: str
) -> None:
    """Outcome refused a status outside 100-999, so a proxy's '000' status line (which aiohttp
    parses) raised ConfigurationError from inside the retry middleware: the server's answer
    reported as the caller's mistake; then, accepted, it was a success (under 400), never
    retried and healthy to the breaker. It is a malformed answer: a connection lost after the
    request may have been processed, retried for a GET, and a failure to the breaker."""
    import asyncio

    from le_transport import Classifier, ConnectionFailed, Outcome, RetriesExhausted
    from le_transport.policies import CircuitBreaker, Verdict

    hits = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 {status} Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Engine({"svc": f"127.0.0.1:{port}"}, scheme="http", clock=clock) as e:
        with pytest.raises(RetriesExhausted) as failed:
            await e.request("GET", "svc", "/x")
    assert isinstance(failed.value.last, ConnectionFailed)
    assert "malformed answer" in str(failed.value.last)
    assert hits == 4  # the guide's schedule: retried as a connection lost
    odd = Outcome.response(int(status))
    assert Classifier().classify(odd) is Verdict.RETRY
    assert CircuitBreaker.counts_as_failure(odd)


async def test_a_keepalive_of_ones_own_refresh_path_on_another_service_is_a_plain_request(
    clock: VirtualClock,
) -> None:
    """Any POST to /api/account/{x}/refresh was taken for the Login Service's refresh and
    refused without a Login Service provider, on whatever service it was for."""
    from le_transport import StaticBearer
    from le_transport.policies import Keepalive, KeepaliveTransport

    mine = Keepalive(
        product="My widget API",
        action="refresh",
        interval=60.0,
        timeout=10.0,
        transport=KeepaliveTransport.HTTP,
        only_when_idle=False,
        method="POST",
        path="/api/account/{account}/refresh",
    )
    domains = StaticDomains({"widgets": "127.0.0.1:9"})
    async with Engine(
        domains, scheme="http", clock=clock, auth=StaticBearer("tok-123456")
    ) as engine:
        task = engine.keepalive(mine, "widgets", fields={"account": "123"})
        await task.close()


async def test_websocket_params_as_pairs_and_int_account_ids_still_work(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """A list of (name, value) pairs as websocket params, and an account id given as an int
    (to a path builder, or a keepalive's fields), worked before the new checks refused them."""
    from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
    from le_transport.sockets import consumer_path

    account = int(sim.account.id)
    assert ums_brand_path(account) == ums_brand_path(sim.account.id)  # type: ignore[arg-type]
    assert consumer_path(account) == consumer_path(sim.account.id)  # type: ignore[arg-type]
    async with agent_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "facadeMsg",
            ums_brand_path(sim.account.id),
            params=[("v", "2.1")],
        )
        await ws.wait_open(timeout=60)
        await ws.close()
    from le_transport import AppKeyAuth
    from le_transport.testing.simulator import DEFAULT_APP_KEY

    chat = AppKeyAuth(sim.account.id, DEFAULT_APP_KEY.key)
    async with Engine(StaticDomains(sim.domains), scheme="http", clock=clock, auth=chat) as e:
        task = e.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": account, "chat_id": "c1"}
        )
        await task.close()


async def test_websocket_pairs_with_a_repeated_name_and_odd_int_accounts_are_refused(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Pairs with a repeated name were collapsed to the last value (a request sends them
    all); a negative int made account '-5', a huge one a raw ValueError (int to str)."""
    from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
    from le_transport.sockets import consumer_path

    for bad in (-5, 10**5000, True):
        with pytest.raises(ConfigurationError, match="account must be a LiveEngage account id"):
            ums_brand_path(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="account must be a LiveEngage account id"):
            consumer_path(bad)  # type: ignore[arg-type]
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(InvalidRequest, match="repeats a name"):
            await engine.websocket(
                "facadeMsg", ums_brand_path(sim.account.id), params=[("tag", "a"), ("tag", "b")]
            )
        for bad_account in (-5, 10**5000):
            with pytest.raises(InvalidRequest, match="from 0 to 64 digits"):
                engine.keepalive(
                    SERVER_CHAT_API_CHAT_INFO,
                    "agentVep",
                    fields={"account": bad_account, "chat_id": "c1"},
                )


def test_a_shared_refresh_returning_something_else_is_refused_typed() -> None:
    from le_transport.state.session import _refreshed

    for bad in (("v", 1.0, None), ("v", 1.0, "login-id"), ("v", 1.0, None, None), "v", None):
        with pytest.raises(ConfigurationError, match="do_refresh must return"):
            _refreshed(bad)
    assert _refreshed(("v", 1.0)) == ("v", 1.0)
