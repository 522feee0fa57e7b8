"""Mistakes in how a socket is set up fail it, as they fail an HTTP call, instead of a reconnect
loop that never ends: a service the account does not have, a path that is not an absolute path,
an account the Domain API refuses with a 4xx (an outage of the Domain API still reconnects); an
``on_connect`` callback that is not async is refused where the socket is made (or stops the
socket, typed, if it only shows when called); a bug in one is logged with its traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import AsyncMock

import pytest

from le_transport import (
    ConfigurationError,
    Engine,
    EventHooks,
    SocketClosed,
    SocketRequestError,
)
from le_transport.chaos import Reset
from le_transport.errors import (
    ClientStatusError,
    DomainResolutionError,
    InvalidRequest,
    ProviderError,
    UnknownServiceError,
)
from le_transport.providers import Credentials, CsdsDomains, UserLogin
from le_transport.sockets import (
    UMS_BRAND_SOCKET_QUERY,
    Connection,
    EscalationRequest,
    ResilientSocket,
    SocketOptions,
    SocketState,
    check_on_connect,
    is_async_callable,
    ums_brand_path,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator
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

CSDS = "/api/account/*/service/baseURI.json"
LOGIN = "/api/account/*/login"


def csds_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog, account: str | None = None
) -> Engine:
    """An engine that finds its hosts through the simulator's Domain API, as a new user's does
    (the socket fixtures' engines are given the hosts)."""
    account = account or sim.account.id
    domains = CsdsDomains(account, csds_host=sim.host, scheme="http")
    auth = UserLogin(account, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False)
    return Engine(
        domains, auth=auth, scheme="http", clock=clock, hooks=EventHooks(on_state=[states])
    )


# -- setup mistakes are final ------------------------------------------------------------------


def _unknown_service(account: str) -> tuple[str, str, str]:
    return account, "facadeMessaging", ums_brand_path(account)


def _relative_path(account: str) -> tuple[str, str, str]:
    return account, "facadeMsg", ums_brand_path(account).lstrip("/")


def _unknown_account(account: str) -> tuple[str, str, str]:
    return "999", "facadeMsg", ums_brand_path("999")


@pytest.mark.parametrize(
    ("mistake", "cause"),
    [
        (_unknown_service, UnknownServiceError),
        (_relative_path, InvalidRequest),
        (_unknown_account, DomainResolutionError),
    ],
    ids=["unknown-service", "relative-path", "unknown-account"],
)
async def test_a_setup_mistake_stops_the_socket_at_once_with_the_error_as_its_cause(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    mistake: Any,
    cause: type[Exception],
) -> None:
    account, service, path = mistake(sim.account.id)
    async with csds_engine(sim, clock, states, account) as engine:
        ws = await engine.websocket(service, path, params=UMS_BRAND_SOCKET_QUERY)
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
        # Every way in says the same, typed.
        with pytest.raises(SocketClosed) as sent:
            await ws.send({"kind": "req", "id": "1", "type": ".GetClock"})
        with pytest.raises(SocketClosed) as read:
            await ws.__anext__()
    assert clock.now() == 0.0  # failed at once, as the same call over HTTP does
    assert ws.state is SocketState.CLOSED
    assert ws.error is info.value
    assert sent.value is info.value
    assert read.value is info.value
    assert isinstance(info.value.__cause__, cause)
    assert "reconnecting cannot help" in str(info.value)
    assert not isinstance(info.value.__cause__, ClientStatusError)
    if cause is DomainResolutionError:
        # The Domain API refused the account: its 400 is what made the error final.
        assert isinstance(info.value.__cause__.__cause__, ClientStatusError)
        assert info.value.__cause__.__cause__.status == 400
    # Never looped: no login, no re-login, no upgrade, the Domain API asked once at most.
    assert sim.count("POST", LOGIN) == 0
    assert sim.count("GET", CSDS) <= 1
    assert sim.sockets.all == []
    assert "reconnecting" not in states.names()
    (closed,) = states.of("closed")
    assert closed.details["error"] == "SocketClosed"


@pytest.mark.parametrize("fault", [503, Reset()], ids=["5xx", "reset"])
async def test_a_domain_api_outage_is_still_a_failed_connect_that_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog, fault: int | Reset
) -> None:
    # One whole schedule of the Domain API (4 attempts) fails: an outage, not a mistake.
    sim.faults.script("GET", CSDS, [fault] * 4)
    async with csds_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "facadeMsg", ums_brand_path(sim.account.id), params=UMS_BRAND_SOCKET_QUERY
        )
        await ws.wait_open(timeout=3600)
        assert (await ws.request(".GetClock"))["code"] == 200
    assert ws.error is None
    (failed,) = states.of("connect_failed")
    assert "DomainResolutionError" in failed.details["reason"]
    assert sim.count("GET", CSDS) == 5


async def test_a_setup_mistake_met_by_the_relogin_loop_stops_the_socket_the_same_way(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    refused = ClientStatusError("400 Bad Request", status=400)

    async def relogin(
        request: EscalationRequest, connect: Callable[[], Awaitable[Connection]]
    ) -> Connection | None:
        # As the re-login loop's re-resolve raises it when the Domain API refuses the account.
        raise DomainResolutionError("the Domain API refused the account") from refused

    options = SocketOptions(escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options, escalate=relogin)
        await ws.wait_open()
        await sim.stop()
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
        await sim.start()
    assert isinstance(info.value.__cause__, DomainResolutionError)
    assert "reconnecting cannot help" in str(info.value)


# -- on_connect callbacks ------------------------------------------------------------------------


async def _async_callback(ws: ResilientSocket) -> None:
    return None


def _sync_callback(ws: ResilientSocket) -> None:
    return None


class _AsyncCall:
    async def __call__(self, ws: ResilientSocket) -> None:
        return None


class _SyncCall:
    def __call__(self, ws: ResilientSocket) -> None:
        return None


class _Bot:
    async def on_connect(self, ws: ResilientSocket) -> None:
        return None


@pytest.mark.parametrize(
    "callback",
    [
        _async_callback,
        functools.partial(_async_callback),
        _AsyncCall(),
        functools.partial(_AsyncCall()),
        _Bot().on_connect,
        AsyncMock(),
    ],
    ids=["async-def", "partial", "async-call", "partial-of-async-call", "method", "async-mock"],
)
def test_async_callbacks_are_accepted(callback: Any) -> None:
    assert is_async_callable(callback)
    assert check_on_connect([callback]) == (callback,)


@pytest.mark.parametrize(
    ("callback", "named"),
    [
        (_sync_callback, "_sync_callback"),
        (lambda ws: None, "<lambda>"),
        (functools.partial(_sync_callback), "functools.partial(_sync_callback)"),
        (_SyncCall(), "a _SyncCall object"),
        (_Bot, "_Bot"),
    ],
    ids=["def", "lambda", "partial", "sync-call", "class"],
)
async def test_a_callback_that_is_not_async_is_refused_where_the_socket_is_made(
    sim: Simulator, clock: VirtualClock, states: StateLog, callback: Any, named: str
) -> None:
    assert not is_async_callable(callback)
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(ConfigurationError, match="is not async") as info:
            await brand_socket(engine, sim, on_connect=[callback])
        ws = await brand_socket(engine, sim)
        with pytest.raises(ConfigurationError, match="is not async"):
            ws.add_on_connect(callback)
        await ws.close()
    assert named in str(info.value)
    assert sim.sockets.all[1:] == []  # nothing dialed for the refused one


class _Dialer:
    """A dialer that is never dialed (the socket is made, not started)."""

    name = "stub"

    async def dial(self) -> Connection:
        raise AssertionError("not dialed")

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        return None

    async def refresh(self) -> None:
        return None


@pytest.mark.parametrize(
    ("on_connect", "said"),
    [
        (_async_callback, "got the single callback _async_callback: wrap it in a list"),
        ("resubscribe", "got a str"),
        (42, "got a int"),
        ({"x": _async_callback}, "got a dict"),
        ([42], "got a int in the sequence"),
    ],
    ids=["bare-callback", "str", "int", "mapping", "not-callable"],
)
def test_on_connect_that_is_not_a_sequence_of_callbacks_is_a_configuration_error(
    on_connect: Any, said: str
) -> None:
    with pytest.raises(ConfigurationError, match="on_connect takes") as info:
        ResilientSocket(_Dialer(), on_connect=on_connect)
    assert said in str(info.value)


async def test_a_callback_that_returns_no_awaitable_stops_the_socket_typed_instead_of_looping(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def resubscribe(ws: ResilientSocket) -> None:
        return None

    calls = 0

    @functools.wraps(resubscribe)
    def traced(ws: ResilientSocket) -> Any:  # a wrapper that forgot to return the coroutine
        nonlocal calls
        calls += 1
        return None

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[traced])
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
    assert calls == 1
    assert len(sim.sockets.all) == 1
    assert ws.error is info.value
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert "returned NoneType, not an awaitable" in str(info.value)
    assert "resubscribe" in str(info.value)


async def test_a_bug_in_on_connect_is_logged_with_its_traceback_and_redacted_words(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def buggy(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("convState; Authorization: Bearer abcd-efgh-ijkl")

    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[buggy])
        await ws.wait_open()
    (record,) = [r for r in caplog.records if "on_connect callback" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.ERROR
    assert "an on_connect callback raised KeyError" in message
    assert "convState" in message
    assert "Bearer ***" in message
    assert "abcd-efgh-ijkl" not in message
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
    assert record.exc_info[2] is not None  # the traceback, down to the callback's frame
    assert calls == 2


async def test_a_refusal_in_on_connect_is_logged_in_its_words_without_a_traceback(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def subscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        await ws.request(".NoSuchRequest" if calls == 1 else ".GetClock")

    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[subscribe])
        await ws.wait_open()
    (record,) = [r for r in caplog.records if "); reconnecting" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert SocketRequestError.__name__ in record.getMessage()
    assert "answered with code 400" in record.getMessage()


# -- a provider's own bug is final too ---------------------------------------------------------


class _BuggyAuth:
    """An auth provider of the caller's own with a bug in it."""

    async def credentials(self, method: str = "GET", url: Any = None) -> Credentials:
        found: dict[str, Credentials] = {}
        return found["token"]  # KeyError: the bug

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def close(self) -> None:
        return None


class _BuggyDomains:
    """A domain provider of the caller's own with a bug in it."""

    def __init__(self, good: Any) -> None:
        self._good = good
        self.asked = 0

    async def resolve(self, service: str) -> str:
        self.asked += 1
        raise TypeError("a bug in the caller's own domain provider")

    async def invalidate(self) -> None:
        return None


async def test_a_bug_in_the_sockets_auth_provider_stops_it_as_a_provider_error(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Before, the provider's KeyError escaped the dialer untyped; it is now a ProviderError
    (its exception the cause), final like the same bug in a request: no reconnect loop."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, auth=_BuggyAuth())
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
    assert clock.now() == 0.0
    cause = info.value.__cause__
    assert isinstance(cause, ProviderError)
    assert (cause.role, cause.operation, cause.error_type) == ("auth", "credentials", "KeyError")
    assert isinstance(cause.__cause__, KeyError)


async def test_a_bug_in_the_domain_provider_is_a_provider_error_for_url_for_and_sockets(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = _BuggyDomains(sim.domains)
    async with Engine(domains, scheme="http", clock=clock) as engine:
        with pytest.raises(ProviderError) as direct:
            await engine.url_for("facadeMsg", "/x")
        assert isinstance(direct.value.__cause__, TypeError)
        ws = await engine.websocket("facadeMsg", "/ws_api/x")
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
    assert isinstance(info.value.__cause__, ProviderError)
    assert clock.now() == 0.0
    assert domains.asked == 2  # once each: the socket did not reconnect into the bug


async def _async_cb(ws: ResilientSocket) -> None:
    return None


def _sync_cb(ws: ResilientSocket) -> None:
    return None


@pytest.mark.parametrize(
    ("on_connect", "says"),
    [
        (_async_cb, "wrap it in a list"),
        ([_sync_cb], "is not async"),
        ([lambda ws: None], "is not async"),
        ("resubscribe", "sequence of async callbacks"),
        ([42], "int in the sequence"),
    ],
    ids=["bare", "sync", "lambda", "str", "not-callable"],
)
async def test_engine_websocket_refuses_a_bad_on_connect_as_the_socket_does(
    sim: Simulator, clock: VirtualClock, states: StateLog, on_connect: Any, says: str
) -> None:
    """engine.websocket ran a check of its own first, which let a plain def through (every
    connect then failed) and a bare function to a builtin TypeError."""
    async with agent_engine(sim, clock, states) as engine:
        with pytest.raises(ConfigurationError, match=says):
            await brand_socket(engine, sim, on_connect=on_connect)
