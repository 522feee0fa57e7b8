"""Mistakes in how a socket is set up fail it, as they fail an HTTP call, instead of a reconnect
loop that never ends: a service the account does not have, a path that is not an absolute path,
an account the Domain API refuses with a 4xx (an outage of the Domain API, a 4xx the retry
policy retried included, still reconnects); an ``on_connect`` that is not a sequence of
callables is refused where the socket is made, and a callback whose result is not awaitable
stops the socket, typed, at its first connect; a bug in one is logged with its traceback."""

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
from le_transport._checks import is_async_callable
from le_transport.chaos import Reset
from le_transport.errors import (
    ClientStatusError,
    DomainResolutionError,
    InvalidRequest,
    ProviderError,
    UnknownServiceError,
)
from le_transport.policies import Classifier, RetryPolicy
from le_transport.providers import Credentials, CsdsDomains, UserLogin
from le_transport.sockets import (
    UMS_BRAND_SOCKET_QUERY,
    Connection,
    EngineDialer,
    EscalationRequest,
    ResilientSocket,
    SocketOptions,
    SocketState,
    check_on_connect,
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


#: A caller's policy that retries 409 (the Classifier's "an API known to answer it
#: transiently"), and no other 4xx.
_409_RETRIED = RetryPolicy(classifier=Classifier(retry_statuses={409}))


def csds_engine(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    account: str | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> Engine:
    """An engine that finds its hosts through the simulator's Domain API, as a new user's does
    (the socket fixtures' engines are given the hosts)."""
    account = account or sim.account.id
    domains = CsdsDomains(account, csds_host=sim.host, scheme="http")
    auth = UserLogin(account, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False)
    return Engine(
        domains,
        auth=auth,
        scheme="http",
        clock=clock,
        hooks=EventHooks(on_state=[states]),
        retry=retry,
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
        if mistake is _relative_path:
            # engine.websocket refuses it at the call (tests/test_socket_review.py); a dialer
            # of one's own meets it at the first connect.
            dialer = EngineDialer(
                engine, service, path, params=UMS_BRAND_SOCKET_QUERY, auth=engine.auth
            )
            ws = ResilientSocket(dialer, clock=clock, hooks=engine.hooks).start()
        else:
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


async def test_a_domain_api_4xx_the_policy_retries_is_an_outage_that_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The caller's policy retries 409 (an API known to answer it transiently); the Domain
    API answers it for one whole schedule, then recovers. A failed connect the socket
    reconnects after, not a refused account it stops on for good."""
    sim.faults.script("GET", CSDS, [409] * 4)
    async with csds_engine(sim, clock, states, retry=_409_RETRIED) as engine:
        ws = await engine.websocket(
            "facadeMsg", ums_brand_path(sim.account.id), params=UMS_BRAND_SOCKET_QUERY
        )
        await ws.wait_open(timeout=3600)
        assert (await ws.request(".GetClock"))["code"] == 200
    assert ws.error is None
    (failed,) = states.of("connect_failed")
    assert "DomainResolutionError" in failed.details["reason"]
    assert sim.count("GET", CSDS) == 5
    assert ws.reconnects == 1


async def test_an_unknown_account_stays_final_when_the_policy_retries_other_4xx(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with csds_engine(sim, clock, states, "999", retry=_409_RETRIED) as engine:
        ws = await engine.websocket("facadeMsg", ums_brand_path("999"))
        with pytest.raises(SocketClosed, match="reconnecting cannot help") as info:
            await ws.wait_open(timeout=3600)
    assert clock.now() == 0.0
    assert isinstance(info.value.__cause__, DomainResolutionError)
    assert sim.count("GET", CSDS) == 1


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


SUBSCRIBE = ".ams.aam.SubscribeExConversations"


@pytest.mark.parametrize(
    ("callback", "named"),
    [
        (_sync_callback, "_sync_callback"),
        (lambda ws: None, "<lambda>"),
        (functools.partial(_sync_callback), "functools.partial(_sync_callback)"),
        (_SyncCall(), "a _SyncCall object"),
    ],
    ids=["def", "lambda", "partial", "sync-call"],
)
async def test_a_callback_returning_no_awaitable_is_taken_and_stops_the_socket_at_its_first_connect(
    sim: Simulator, clock: VirtualClock, states: StateLog, callback: Any, named: str
) -> None:
    """Any callable is taken where the socket is made (a plain def may return an awaitable);
    one that returns none stops the socket, typed, at its first connect: never a loop."""
    assert not is_async_callable(callback)
    assert check_on_connect([callback]) == (callback,)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[callback])
        with pytest.raises(SocketClosed) as info:
            await ws.wait_open(timeout=3600)
        later = await brand_socket(engine, sim)
        later.add_on_connect(callback)  # taken too; it would stop that socket the same way
        await later.close()
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert "returned NoneType, not an awaitable" in str(info.value)
    assert named in str(info.value)
    assert len(sim.sockets.all) == 1  # one connect: no reconnect into the same mistake
    assert "reconnecting" not in states.names()


def _subscribe(ws: ResilientSocket) -> Awaitable[object]:
    """A plain def returning the request's awaitable, as working code did before."""
    return ws.request(SUBSCRIBE, {"convState": ["OPEN"]})


def _subscribe_with(ws: ResilientSocket, states: list[str]) -> Awaitable[object]:
    return ws.request(SUBSCRIBE, {"convState": states})


@pytest.mark.parametrize(
    "callback",
    [
        lambda ws: ws.request(SUBSCRIBE, {"convState": ["OPEN"]}),
        _subscribe,
        functools.partial(_subscribe_with, states=["OPEN"]),
    ],
    ids=["lambda", "def", "partial-of-def"],
)
async def test_a_callback_returning_an_awaitable_resubscribes_after_every_connect(
    sim: Simulator, clock: VirtualClock, states: StateLog, callback: Any
) -> None:
    """``lambda ws: ws.request(...)`` fits the OnConnect type and worked before callbacks had
    to be async: it works again, on the first connect and after a reconnect."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[callback])
        await ws.wait_open()
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert ws.epoch == 2
        await ws.close()
    assert ws.error is None
    assert [len(sock.subscriptions) for sock in sim.sockets.all] == [1, 1]


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


@pytest.mark.parametrize("answered_after", [0.0, 31.0], ids=["at-once", "past-healthy-after"])
async def test_a_resubscribe_refused_again_and_again_backs_off_and_escalates_as_failed_connects_do(
    sim: Simulator, clock: VirtualClock, states: StateLog, answered_after: float
) -> None:
    """A connection whose on_connect failed never served the caller: however long it stayed
    open first (here past healthy_after, as a request timing out at request_timeout does),
    it is a failed connect, and the pauses grow. It used to count as healthy, so the backoff
    started over: a reconnect every second, for ever, never escalating."""

    async def subscribe(ws: ResilientSocket) -> None:
        await clock.sleep(answered_after)
        await ws.request(".NoSuchRequest")  # answered 400 every time

    options = SocketOptions()
    assert answered_after == 0.0 or answered_after > options.healthy_after
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options, on_connect=[subscribe])
        await clock.sleep(600)
        assert not ws.is_open
        await ws.close()
    lost = states.of("lost")
    assert {e.details["lifetime"] for e in lost} == {answered_after}
    assert all("answered 400" in e.details["reason"] for e in lost)
    pauses = [e.details["in_seconds"] for e in states.of("reconnecting")]
    jitter = options.backoff.jitter
    # About 1, 2, 4, 8 s: the reconnect backoff's own schedule, never started over.
    for attempt, pause in enumerate(pauses[:4]):
        assert pause >= options.backoff.first * 2**attempt * (1 - jitter)
    attempts = [e.details["attempt"] for e in states.of("reconnecting")]
    assert attempts == sorted(set(attempts))  # counted on, never back to 1
    # Escalated to the re-login loop after escalate_after failures in a row, as designed.
    escalations = [e.details["failures"] for e in states.of("escalating")]
    assert escalations[0] == options.escalate_after
    assert len(pauses) < 15


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
        ([_sync_cb], None),
        ([lambda ws: ws.request(SUBSCRIBE, {"convState": ["OPEN"]})], None),
        ("resubscribe", "sequence of async callbacks"),
        ([42], "int in the sequence"),
    ],
    ids=["bare", "sync", "lambda", "str", "not-callable"],
)
async def test_engine_websocket_refuses_a_bad_on_connect_as_the_socket_does(
    sim: Simulator, clock: VirtualClock, states: StateLog, on_connect: Any, says: str | None
) -> None:
    """engine.websocket ran a check of its own first, which let a plain def through (every
    connect then failed) and a bare function to a builtin TypeError. Any callable is taken
    (None: nothing to refuse): a plain def returning None stops the socket, typed, at its
    first connect; a lambda returning the request's awaitable works end to end."""
    async with agent_engine(sim, clock, states) as engine:
        if says is not None:
            with pytest.raises(ConfigurationError, match=says):
                await brand_socket(engine, sim, on_connect=on_connect)
            return
        ws = await brand_socket(engine, sim, on_connect=on_connect)
        if on_connect[0] is _sync_cb:
            with pytest.raises(SocketClosed, match="returned NoneType, not an awaitable") as info:
                await ws.wait_open(timeout=3600)
            assert isinstance(info.value.__cause__, ConfigurationError)
            assert len(sim.sockets.all) == 1
        else:
            await ws.wait_open(timeout=3600)
            await ws.close()
            assert len(sim.sockets.all[0].subscriptions) == 1


class _FlakyAuth:
    """An auth provider of the caller's own that fetches its token from a vault which is down
    for the first ``down`` calls: an outage, not a bug."""

    def __init__(self, inner: Any, down: int) -> None:
        self._inner = inner
        self.down = down
        self.asked = 0

    async def credentials(self, method: str = "GET", url: Any = None) -> Credentials:
        self.asked += 1
        if self.asked <= self.down:
            raise ConnectionResetError("the vault reset the connection")
        result: Credentials = await self._inner.credentials(method, url)
        return result

    async def invalidate(self, rejected: Credentials) -> None:
        await self._inner.invalidate(rejected)

    async def close(self) -> None:
        return None


async def test_an_outage_of_the_sockets_own_auth_provider_reconnects_not_stops(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """A provider's ConnectionResetError is an outage (ConnectionFailed), not a bug: the
    socket retries on its reconnect schedule and opens once the vault is back."""
    async with agent_engine(sim, clock, states) as engine:
        assert engine.auth is not None
        flaky = _FlakyAuth(engine.auth, down=2)
        ws = await brand_socket(engine, sim, auth=flaky)
        await ws.wait_open(timeout=3600)
        assert flaky.asked == 3
        assert ws.state is SocketState.OPEN
        assert clock.now() > 0  # it waited on the reconnect schedule between the tries
        await ws.close()
