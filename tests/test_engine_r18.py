"""Review round 18, the request path: what the engine refuses before anything is sent, and a
body that fails while it is sent.

- A header value holding a control character other than CR, LF or NUL (a vertical tab, an
  escape) passed the engine's check and escaped from ``Engine.request`` as aiohttp's bare
  ``ValueError``, after the host was resolved; ``websocket()`` and ``keepalive()`` took it and
  failed at the first connect. Every control character but tab is refused up front now.
- A body of the caller's that failed while aiohttp sent it (a file that cannot be read, an
  async iterable that raised) was taken for a lost connection: retried on the schedule,
  counted against the host's circuit breaker, and said as ``ConnectionFailed`` whose message
  repeated the caller's exception. It is a final ``RequestBodyError`` naming the type only.
- ``request()`` took any Unicode letter for a method (``'po\\u017ft'`` went out as POST), and
  did not check its service as ``websocket()`` does: a list was the domain provider's bug
  (``ProviderError``), after a Domain API fetch.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import (
    ConnectionFailed,
    Engine,
    InvalidRequest,
    RetriesExhausted,
    RetryPolicy,
)
from le_transport.clock import RealClock
from le_transport.errors import Repeat, RequestBodyError
from le_transport.middleware.overload import OverloadGuard
from le_transport.middleware.retry import _body_failure
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Keepalive,
    KeepaliveTransport,
)
from le_transport.providers import CsdsDomains
from le_transport.providers.auth import Credentials, InvalidCredentials
from le_transport.recovery import repeat_of
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import BEARER

ACCOUNT = "12345678"

#: A keepalive of the engine's own HTTP kind, on a path of the test server.
PING = Keepalive(
    product="test",
    action="ping",
    interval=30.0,
    timeout=10.0,
    transport=KeepaliveTransport.HTTP,
    only_when_idle=False,
    method="GET",
    path="/x",
)


def _recording_app(seen: list[tuple[str, str, dict[str, str]]]) -> web.Application:
    """Answers 200 to any method and path, noting method, path and headers."""

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, dict(request.headers)))
        try:
            await request.read()
        except ConnectionError:  # a body the client stopped sending
            return web.Response(status=400)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _breaker() -> CircuitBreaker:
    """A breaker that opens on the first failure it is told of."""
    return CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput=1,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=60.0, cap=600.0, jitter=0.0, floor=0.0),
    )


# -- 1. control characters in a header value ---------------------------------------------------


@pytest.mark.parametrize("control", ["\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f"])
async def test_a_header_value_with_any_control_character_but_tab_is_refused_unsent(
    serve: ServerFactory, clock: VirtualClock, control: str
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    headers = {"X-Conversation-Id": f"{BEARER}{control}def"}
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="control character") as info:
            await engine.request("GET", "svc", "/x", headers=headers)
        # The socket and the keepalive refuse it at the call, not at their first connect.
        with pytest.raises(InvalidRequest, match="control character"):
            await engine.websocket("svc", "/ws", headers=headers)
        with pytest.raises(InvalidRequest, match="control character"):
            engine.keepalive(PING, "svc", headers=headers)
    assert f"U+{ord(control):04X}" in str(info.value)
    assert BEARER not in str(info.value)
    assert "def" not in str(info.value)
    assert seen == []


async def test_a_tab_in_a_header_value_is_sent(serve: ServerFactory, clock: VirtualClock) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        answer = await engine.request("GET", "svc", "/x", headers={"X-Note": "a\tb"})
    assert answer.status == 200
    [(_, _, got)] = seen
    assert got["X-Note"] == "a\tb"


@pytest.mark.parametrize("name", ["X-A\x0bB", "X-A\x7f", "X-A\tB", "X-\u00e9"])
async def test_a_header_name_with_a_control_or_non_ascii_character_is_refused_unsent(
    serve: ServerFactory, clock: VirtualClock, name: str
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="header name"):
            await engine.request("GET", "svc", "/x", headers={name: "v"})
    assert seen == []


# -- 2. a body that fails while it is sent -----------------------------------------------------


async def test_an_async_iterable_body_that_raises_is_a_final_request_body_error(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a lost connection: not retried, not the host's failure for its breaker, and the
    caller's exception (its text may be anything of theirs) is named by its type only."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    guard = OverloadGuard(budget=None, breaker=_breaker(), clock=clock)

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise KeyError(BEARER)

    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),  # so that clock.sleeps holds the pauses only
    ) as engine:
        with pytest.raises(RequestBodyError) as info:
            await engine.request("PUT", "svc", "/x", data=body())
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED
        # The engine and the host are fine: the next call goes out.
        assert (await engine.request("GET", "svc", "/y")).status == 200
    err = info.value
    assert "the request body failed while it was sent: KeyError" in str(err)
    assert BEARER not in str(err)
    assert isinstance(err.__cause__, KeyError)
    assert err.__cause__.args == (BEARER,)
    assert len(err.attempts) == 1
    assert clock.sleeps == []
    assert repeat_of(err) is Repeat.FINAL
    assert err.repeat is Repeat.FINAL
    assert not isinstance(err, ConnectionFailed)
    [final] = [r for r in caplog.records if r.name == "le_transport.retry"]
    assert final.levelno == logging.ERROR
    assert "the request body failed while it was sent: KeyError" in final.getMessage()
    assert BEARER not in final.getMessage()


class _Unreadable(io.RawIOBase):
    """A file on a mount that went away: every read fails with EIO."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0

    def seek(self, *args: Any) -> int:
        return 0

    def readinto(self, buffer: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")


async def test_a_file_body_that_cannot_be_read_is_not_retried_against_a_healthy_server(
    serve: ServerFactory,
) -> None:
    """aiohttp reads a file in a thread, which a VirtualClock does not see: the real clock,
    on the guide's schedule scaled to 50/100/150 ms (so that a retry, were there one, ends
    soon), and a bound on the whole call that only a hang would reach."""
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    clock = RealClock()
    guard = OverloadGuard(budget=None, breaker=_breaker(), clock=clock)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=RetryPolicy().scaled(0.01),
        overload=guard,
    ) as engine:
        with pytest.raises(RequestBodyError) as info:
            async with asyncio.timeout(60):
                await engine.request("PUT", "svc", "/x", data=io.BufferedReader(_Unreadable()))
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED
    err = info.value
    assert "the request body failed while it was sent: OSError" in str(err)
    assert isinstance(err.__cause__, OSError)
    assert err.__cause__.errno == errno.EIO
    assert len(err.attempts) == 1
    assert err.attempts[0].outcome.error == "RequestBodyError"
    assert seen == []


class _SoftMountFile(_Unreadable):
    """A file on an NFS mount with 'softerr': a read that times out fails with ETIMEDOUT (an
    OSError Python makes a TimeoutError)."""

    def readinto(self, buffer: Any) -> int:
        raise OSError(errno.ETIMEDOUT, "Connection timed out")


async def test_a_file_failing_with_a_timeout_of_its_own_is_still_the_bodys_failure(
    serve: ServerFactory,
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    async with Engine(
        {"svc": host}, scheme="http", clock=RealClock(), retry=RetryPolicy().scaled(0.01)
    ) as engine:
        with pytest.raises(RequestBodyError) as info:
            async with asyncio.timeout(60):
                await engine.request("PUT", "svc", "/x", data=io.BufferedReader(_SoftMountFile()))
    assert isinstance(info.value.__cause__, TimeoutError)
    assert len(info.value.attempts) == 1
    assert seen == []


async def _body_fails_alone(
    serve: ServerFactory, clock: VirtualClock, body: AsyncIterator[Any]
) -> RequestBodyError:
    """PUT ``body`` to a healthy host behind a breaker that opens on one failure: the call
    fails with a RequestBodyError, unretried, the breaker closed and the next call served.
    Returns the error."""
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    guard = OverloadGuard(budget=None, breaker=_breaker(), clock=clock)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),
    ) as engine:
        with pytest.raises(RequestBodyError) as info:
            await engine.request("PUT", "svc", "/x", data=body)
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED
        assert (await engine.request("GET", "svc", "/y")).status == 200
    assert clock.sleeps == []
    return info.value


@pytest.mark.parametrize(
    "raised",
    [
        ConnectionResetError(errno.ECONNRESET, "upstream reset"),
        BrokenPipeError(errno.EPIPE, "upstream gone"),
        TimeoutError(),
    ],
    ids=["reset", "broken-pipe", "timeout"],
)
async def test_an_iterable_failing_with_a_connections_error_of_its_own_is_the_bodys(
    serve: ServerFactory, clock: VirtualClock, raised: Exception
) -> None:
    """A body relayed from another stream fails with that stream's reset, or its own timeout:
    the class of a connection's failure, raised by the body, not by this connection. Taken
    for the connection's, it was retried and opened the breaker for everyone on the host."""

    async def relayed() -> AsyncIterator[bytes]:
        yield b"part"
        raise raised

    err = await _body_fails_alone(serve, clock, relayed())
    assert err.__cause__ is raised
    assert len(err.attempts) == 1


@pytest.mark.parametrize("chunk", ["text", 42, [1, 2]], ids=["str", "int", "list"])
async def test_an_iterable_yielding_a_chunk_that_is_no_bytes_is_the_bodys_failure(
    serve: ServerFactory, clock: VirtualClock, chunk: object
) -> None:
    """aiohttp's writer itself raises the TypeError for a chunk that is no bytes (``yield
    json.dumps(x)``): raised in the connection's writing, but no failure of the connection.
    Taken for one, one caller's mistake opened the host's breaker for everyone."""

    async def body() -> AsyncIterator[Any]:
        yield b"part"
        yield chunk

    err = await _body_fails_alone(serve, clock, body())
    assert isinstance(err.__cause__, TypeError)


async def test_a_connection_lost_while_the_body_is_sent_is_still_a_transport_failure(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The server drops the connection as the request arrives, a large body still going out:
    the connection's failure, retried on the schedule as before."""
    hits = 0

    async def drop(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0)
        return web.Response()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/x", drop)
    host = await serve(app)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=RetryPolicy(attempt_timeout=None)
    ) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("PUT", "svc", "/x", data=b"x" * (16 * 1024 * 1024))
    assert isinstance(info.value.last, ConnectionFailed)
    assert not isinstance(info.value.last, RequestBodyError)
    assert len(info.value.attempts) == 4
    assert clock.sleeps == [5.0, 10.0, 15.0]
    assert hits == 4


def test_a_connection_lost_under_a_read_is_never_taken_for_a_body_failure() -> None:
    """aiohttp's protocol wraps what lost the connection in the same ClientOSError, an
    ``OSError`` that is no ConnectionError as its cause (a TLS record error, EHOSTUNREACH):
    never raised in the body's writer, it is the transport's."""
    for lost in (ssl.SSLError(1, "record layer failure"), OSError(errno.EHOSTUNREACH, "no")):
        wrapped = aiohttp.ClientOSError(*lost.args)
        wrapped.__cause__ = lost
        assert _body_failure(wrapped) is None
    reset = aiohttp.ClientOSError(None, "Can not write request body for http://h/x")
    reset.__cause__ = ConnectionResetError("Connection lost")
    assert _body_failure(reset) is None


# -- 3. the method and the service of request() ------------------------------------------------


@pytest.mark.parametrize("method", ["po\u017ft", "g\u0435t", "\u0131nfo", "P\u00d6ST"])
async def test_a_method_with_a_letter_that_is_not_ascii_is_refused_unsent(
    serve: ServerFactory, clock: VirtualClock, method: str
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=r"method must be an HTTP method name .*ASCII"):
            await engine.request(method, "svc", "/x")
        # A lower-case ASCII method is still sent upper-case.
        assert (await engine.request("post", "svc", "/x")).status == 200
    assert [(m, p) for m, p, _ in seen] == [("POST", "/x")]


@pytest.mark.parametrize(
    ("service", "said"),
    [
        (["svc"], "service must be a str naming a service, got a list"),
        (("svc",), "service must be a str naming a service, got a tuple"),
        (None, "service must be a str naming a service, got a NoneType"),
        ("", "service must name a service, got an empty str"),
        ("s vc", "service holds whitespace or a control character"),
        ("svc\n", "service holds whitespace or a control character"),
    ],
)
async def test_a_service_that_names_no_service_is_invalid_request_as_for_a_socket(
    serve: ServerFactory, clock: VirtualClock, service: Any, said: str
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    host = await serve(_recording_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=said) as info:
            await engine.request("GET", service, "/x")
        with pytest.raises(InvalidRequest, match=said):
            await engine.request("GET", service, "/x", recover=True)
        with pytest.raises(InvalidRequest, match=said):
            await engine.websocket(service, "/ws")
        assert (await engine.request("GET", "svc", "/x")).status == 200
    assert info.value.__cause__ is None
    assert [(m, p) for m, p, _ in seen] == [("GET", "/x")]


async def test_a_service_that_names_no_service_asks_no_domain_api(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Refused before a provider that may fetch is asked: no Domain API call for it, and no
    ProviderError blaming the provider. A good name is then resolved as before."""
    asked: list[str] = []
    seen: list[tuple[str, str, dict[str, str]]] = []
    service_host = await serve(_recording_app(seen))

    async def base_uris(request: web.Request) -> web.Response:
        asked.append(request.path)
        entry = {"service": "svc", "account": ACCOUNT, "baseURI": service_host}
        return web.json_response({"baseURIs": [entry]})

    app = web.Application()
    app.router.add_get(f"/api/account/{ACCOUNT}/service/baseURI.json", base_uris)
    csds = await serve(app)
    domains = CsdsDomains(ACCOUNT, csds_host=csds, scheme="http")
    async with Engine(domains, scheme="http", clock=clock) as engine:
        bad: tuple[Any, ...] = (["svc"], "", "s vc")
        for service in bad:
            with pytest.raises(InvalidRequest, match="service"):
                await engine.request("GET", service, "/x")
            with pytest.raises(InvalidRequest, match="service"):
                await engine.request("GET", service, "/x", deadline=30.0)
        assert asked == []
        assert (await engine.request("GET", "svc", "/x")).status == 200
        assert (await engine.request("GET", "svc", "/x", deadline=30.0)).status == 200
    assert len(asked) == 1
    assert len(seen) == 2


@pytest.mark.parametrize("control", ["\x01", "\x0b", "\x1b", "\x7f"])
def test_credentials_holding_a_control_character_are_refused_when_made(control: str) -> None:
    # aiohttp's writer refuses them mid-call with a bare ValueError: refused when the provider
    # makes them, as a CR/LF is, the value never shown.
    with pytest.raises(InvalidCredentials, match="U\\+00") as caught:
        Credentials(headers={"Authorization": f"Bearer tok{control}en-secret"})
    assert "secret" not in str(caught.value)
    assert Credentials(headers={"X-Trace": "a\tb"}).headers["X-Trace"] == "a\tb"
