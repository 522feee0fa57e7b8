"""The retry middleware end to end: a real aiohttp server on loopback, pauses on virtual time.

Every test here sends real HTTP through the engine's real middleware stack; the server is a
small aiohttp app (or, for faults aiohttp's server will not commit, a raw asyncio server).
Time is a :class:`VirtualClock`, so the guide's 5/10/15 s schedule costs no wall time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import email.utils
import logging
import pickle
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from yarl import URL

from le_transport import (
    AttemptTimeout,
    BlockedError,
    BodyTooLarge,
    Classifier,
    ClientStatusError,
    ConnectionFailed,
    DeadlineExceeded,
    Engine,
    EventHooks,
    GiveUpEvent,
    OutcomeKind,
    ResponseDecodeError,
    RetriesExhausted,
    RetryEvent,
    RetryPolicy,
    ServerStatusError,
)
from le_transport.errors import CircuitOpen, InvalidRequest, Repeat
from le_transport.middleware import RetryMiddleware
from le_transport.middleware.context import CallContext, HandledCallContext
from le_transport.policies import Outcome
from le_transport.policies.retry import Action, Decision
from le_transport.providers import ProviderHttp
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

RETRY_LOGGER = "le_transport.retry"
FAST = RetryPolicy(pauses=(0.05, 0.1, 0.15))


# -- servers ------------------------------------------------------------------------------


class Script:
    """An aiohttp app that answers each request to ``path`` with the next scripted reply.

    A reply is a status, or a callable making the response. ``hits`` counts requests.
    """

    def __init__(self, *replies: int | Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.replies = list(replies)
        self.hits = 0
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.bodies.append(await request.read())
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if callable(reply):
            return await reply(request)
        return web.json_response({"status": reply, "hit": self.hits}, status=reply)

    def app(self, path: str = "/x") -> web.Application:
        app = web.Application()
        app.router.add_route("*", path, self.handle)
        return app


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw asyncio server on loopback, for faults an aiohttp app will not commit.

    Yields ``host:port`` and a list that gets one entry per request received.
    """
    hits: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                hits.append(len(hits) + 1)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                await handler(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", hits
    finally:
        server.close()
        await server.wait_closed()


async def reset_before_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def close_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    writer.write(b'{"partial": ')
    await writer.drain()
    writer.close()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"this is not HTTP at all\r\n\r\n")
    await writer.drain()
    writer.close()


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def acquired(engine: Engine) -> int:
    """Connections the engine's pool has handed out and not had back."""
    connector = engine.session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


def records(
    caplog: pytest.LogCaptureFixture, logger: str = RETRY_LOGGER
) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


# -- the guide's schedule -----------------------------------------------------------------


async def test_503_503_200_pauses_5_then_10_seconds_and_returns_the_answer(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503, 503, 200)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.status == 200
    assert resp.json(dict) == {"status": 200, "hit": 3}
    assert [a.outcome.status for a in resp.attempts] == [503, 503, 200]
    assert [a.pause for a in resp.attempts] == [5.0, 10.0, None]
    assert [a.started_at for a in resp.attempts] == [0.0, 5.0, 15.0]
    assert script.hits == 3
    assert clock.now() == 15.0


async def test_5xx_retried_three_times_after_5_10_15_seconds_then_retries_exhausted(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
    err = info.value
    assert script.hits == 4
    assert clock.now() == 30.0
    assert err.status == 503
    assert [a.pause for a in err.attempts] == [5.0, 10.0, 15.0, None]
    assert isinstance(err.last, ServerStatusError)
    assert err.__cause__ is err.last


async def test_scaled_schedule_pauses_005_01_015(serve: ServerFactory, clock: VirtualClock) -> None:
    host = await serve(Script(500, 502, 504, 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert [a.pause for a in resp.attempts] == [0.05, 0.1, 0.15, None]
    assert clock.now() == pytest.approx(0.3)


async def test_connection_pool_of_one_survives_four_attempts_and_releases_before_each_pause(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    held_during_pause: list[int] = []
    host = await serve(Script(503, 503, 503, 200).app())
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        connection_limit=1,
        hooks=EventHooks(on_retry=[lambda e: held_during_pause.append(acquired(engine))]),
    )
    async with engine:
        first = await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
        again = await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    assert first.status == 200
    assert again.status == 200
    assert held_during_pause == [0, 0, 0]


# -- 4xx, 451, 429 ------------------------------------------------------------------------


async def test_4xx_is_not_retried_and_raises_client_status_error_with_the_facts(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "no such user", "access_token": "tok-XYZ-123"}, status=404
        )

    script = Script(not_found)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request(
                "GET", "svc", "/x", params={"access_token": "tok-XYZ-123", "v": "2"}
            )
    err = info.value
    assert script.hits == 1
    assert clock.now() == 0.0
    assert err.status == 404
    assert err.method == "GET"
    assert err.url == f"http://{host}/x?access_token=***&v=2"
    assert "no such user" in err.body_excerpt
    assert "tok-XYZ-123" not in err.body_excerpt
    assert "tok-XYZ-123" not in str(err)
    assert len(err.attempts) == 1
    assert err.attempts[0].pause is None


async def test_a_4xx_the_callers_classifier_retries_does_not_say_it_was_not_retried(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 409 retried by a Classifier that retries it, and still refused: the error said "not
    retried (a 4xx is the caller's to fix)" after four attempts."""
    script = Script(409)
    host = await serve(script.app())
    policy = RetryPolicy(pauses=(0.05, 0.1, 0.15), classifier=Classifier(retry_statuses={409}))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=policy) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
    assert script.hits == 4
    last = info.value.last
    assert isinstance(last, ClientStatusError)
    assert "not retried" not in str(last)
    assert "still refused after 4 attempts" in str(last)


async def test_an_accepted_4xx_is_an_answer_returned_with_no_error_and_no_log_line(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """accept={404}: "no such user" is an answer. Before, the only way was to catch
    ClientStatusError, and the retry loop had logged a WARNING for an expected outcome."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    gave_up: list[object] = []
    script = Script(404, 404, 200)
    host = await serve(script.app())
    hooks = EventHooks(on_giveup=[gave_up.append])
    async with Engine({"svc": host}, scheme="http", clock=clock, hooks=hooks) as engine:
        missing = await engine.request("GET", "svc", "/x", accept={404})
        assert missing.status == 404
        assert [a.outcome.status for a in missing.attempts] == [404]
        # For another call (no accept) the same answer is the usual ClientStatusError.
        with pytest.raises(ClientStatusError):
            await engine.request("GET", "svc", "/x")
        found = await engine.request("GET", "svc", "/x", accept=[404])
        assert found.status == 200
    assert script.hits == 3
    assert clock.now() == 0.0
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1  # only the call that did not accept it
    assert len(gave_up) == 1


async def test_an_accepted_answer_can_still_be_raised_as_the_error_the_call_would_have_raised(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Response.raise_for_status(): a caller that accepted a 404 for one branch of its code can
    turn it into the usual ClientStatusError in another, with the same facts and no secret."""
    script = Script(404, 451, 200)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        missing = await engine.request(
            "GET", "svc", "/x", params={"access_token": "tok-XYZ-123"}, accept={404}
        )
        blocked = await engine.request("GET", "svc", "/x", accept={451})
        found = await engine.request("GET", "svc", "/x", accept={404})
    with pytest.raises(ClientStatusError) as info:
        missing.raise_for_status()
    err = info.value
    assert type(err) is ClientStatusError
    assert err.status == 404
    assert err.method == "GET"
    assert err.service == "svc"
    assert err.url == f"http://{host}/x?access_token=***"
    assert err.attempts == missing.attempts
    assert err.body_excerpt == '{"status":404,"hit":1}'
    assert str(err).startswith("404: the request was refused as invalid; not retried")
    assert "tok-XYZ-123" not in str(err)
    with pytest.raises(BlockedError):
        blocked.raise_for_status()
    found.raise_for_status()  # below 400: nothing to raise
    assert script.hits == 3


async def test_accept_takes_precedence_over_a_classifier_that_retries_the_status(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(409)
    host = await serve(script.app())
    policy = RetryPolicy(pauses=(0.05,), classifier=Classifier(retry_statuses={409}))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=policy) as engine:
        resp = await engine.request("GET", "svc", "/x", accept=(409,))
    assert resp.status == 409
    assert script.hits == 1


@pytest.mark.parametrize(
    "accept", [{401}, {407}, {429}, {500}, {200}, {404.0}, {True}, "404", b"404", 404, [[404]]]
)
async def test_accept_refuses_what_is_not_a_4xx_the_call_may_take(
    accept: object, clock: VirtualClock
) -> None:
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="accept takes the 4xx statuses"):
            await engine.request("GET", "svc", "/x", accept=accept)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_every_4xx_but_429_is_one_attempt(
    status: int, serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(status)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("PUT", "svc", "/x", json={"a": 1})
    assert info.value.status == status
    assert script.hits == 1


async def test_451_is_final_and_raises_blocked_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(451)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(BlockedError) as info:
            await engine.request("GET", "svc", "/x")
    assert info.value.status == 451
    assert script.hits == 1


async def test_429_is_retried_no_sooner_than_one_second(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(429, 429, 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert [a.pause for a in resp.attempts] == [1.0, 1.0, None]
    assert clock.now() == 2.0


async def test_429_on_login_waits_at_least_five_seconds_with_a_per_call_policy(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(429, 200)
    host = await serve(script.app())
    login = RetryPolicy(pauses=(0.05, 0.1, 0.15), rate_limit_floor=5.0)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        resp = await engine.request("POST", "svc", "/x", json={"u": "me"}, retry=login)
    assert [a.pause for a in resp.attempts] == [5.0, None]
    assert script.hits == 2  # a 429 POST is retried: the server did not process it
    assert clock.now() == 5.0


# -- Retry-After --------------------------------------------------------------------------


def _reply_with(
    status: int, headers: dict[str, str]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def reply(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers)

    return reply


async def test_retry_after_seconds_lengthens_the_pause(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(_reply_with(503, {"Retry-After": "7"}), 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.attempts[0].outcome.retry_after == 7.0
    assert resp.attempts[0].pause == 7.0
    assert clock.now() == 7.0


async def test_retry_after_shorter_than_the_schedule_does_not_shorten_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(_reply_with(503, {"Retry-After": "1"}), 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.attempts[0].pause == 5.0


async def test_retry_after_http_date_is_read_against_the_servers_date(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    served_at = 1_700_000_000.0
    headers = {
        "Date": email.utils.formatdate(served_at, usegmt=True),
        "Retry-After": email.utils.formatdate(served_at + 20, usegmt=True),
    }
    host = await serve(Script(_reply_with(503, headers), 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.attempts[0].pause == 20.0


async def test_retry_after_http_date_without_a_valid_date_uses_the_wall_clock(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    from le_transport import RetryMiddleware

    wall = 1_700_000_000.0
    headers = {"Date": "not a date", "Retry-After": email.utils.formatdate(wall + 12, usegmt=True)}
    host = await serve(Script(_reply_with(503, headers), 200).app())
    mw = RetryMiddleware(policy=RetryPolicy(), clock=clock, wall_clock=lambda: wall)
    async with (
        aiohttp.ClientSession(middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)) as s,
        s.get(f"http://{host}/x") as resp,
    ):
        assert resp.status == 200
    assert clock.now() == 12.0


async def test_retry_after_is_capped_by_the_ceiling(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(_reply_with(503, {"Retry-After": "3600"}), 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
        assert resp.attempts[0].pause == 60.0
        custom = RetryPolicy(retry_after_ceiling=30)
        resp = await engine.request("GET", "svc", "/x", retry=custom)
    assert resp.status == 200


async def test_invalid_retry_after_is_ignored_with_a_logged_warning(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    host = await serve(Script(_reply_with(503, {"Retry-After": "soon, maybe"}), 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.attempts[0].pause == 5.0
    assert resp.attempts[0].outcome.retry_after is None
    [warning] = [r for r in records(caplog) if "Retry-After" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "soon, maybe" in warning.getMessage()
    assert warning.status == 503  # type: ignore[attr-defined]
    assert warning.service == "svc"  # type: ignore[attr-defined]


# -- transport failures and idempotency ---------------------------------------------------


async def test_reset_before_headers_is_retried_for_get(clock: VirtualClock) -> None:
    async with (
        raw_server(reset_before_headers) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
    assert len(hits) == 4
    assert isinstance(info.value.last, ConnectionFailed)
    assert info.value.last.never_sent is False
    assert {a.outcome.kind for a in info.value.attempts} == {OutcomeKind.CONNECTION_LOST}


async def test_reset_before_headers_is_not_retried_for_post(clock: VirtualClock) -> None:
    async with (
        raw_server(reset_before_headers) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(ConnectionFailed) as info:
            await engine.request("POST", "svc", "/x", json={"create": 1})
    assert len(hits) == 1
    assert info.value.never_sent is False
    assert len(info.value.attempts) == 1


async def test_reset_is_retried_for_a_post_marked_idempotent(clock: VirtualClock) -> None:
    async with (
        raw_server(reset_before_headers) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(RetriesExhausted):
            await engine.request("POST", "svc", "/x", json={"q": 1}, idempotent=True)
    assert len(hits) == 4


async def test_connection_closed_mid_body_is_retried_for_get(clock: VirtualClock) -> None:
    async with (
        raw_server(close_mid_body) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    assert len(hits) == 4
    assert isinstance(info.value.last, ConnectionFailed)
    assert info.value.attempts[0].outcome.error == "ClientPayloadError"


async def test_connection_closed_mid_body_is_not_retried_for_post(clock: VirtualClock) -> None:
    async with (
        raw_server(close_mid_body) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(ConnectionFailed):
            await engine.request("POST", "svc", "/x", data=b"payload")
    assert len(hits) == 1


async def test_a_malformed_answer_is_retried_for_get_like_a_lost_connection(
    clock: VirtualClock,
) -> None:
    async with (
        raw_server(garbage) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
        with pytest.raises(ConnectionFailed, match="malformed answer"):
            await engine.request("POST", "svc", "/x")
    assert len(hits) == 5
    assert info.value.attempts[0].outcome.kind is OutcomeKind.CONNECTION_LOST


async def test_connection_refused_is_retried_even_for_post_because_it_never_left(
    clock: VirtualClock,
) -> None:
    host = f"127.0.0.1:{free_port()}"
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("POST", "svc", "/x", json={"create": 1})
    last = info.value.last
    assert isinstance(last, ConnectionFailed)
    assert last.never_sent is True
    assert [a.outcome.kind for a in info.value.attempts] == [OutcomeKind.CONNECT_FAILED] * 4
    assert [a.pause for a in info.value.attempts] == [5.0, 10.0, 15.0, None]


async def test_a_tls_certificate_rejection_is_final_and_never_retried(
    tmp_path: Path, clock: VirtualClock
) -> None:
    """The peer is not who it claims to be: retrying cannot fix that, for any method."""
    from le_transport.testing.simulator.serve import self_signed_certificate, server_tls_context

    cert, key = self_signed_certificate(tmp_path)
    script = Script(200)
    runner = web.AppRunner(script.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls_context(cert, key))
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with Engine({"svc": host}, clock=clock) as engine:
            with pytest.raises(ConnectionFailed) as info:
                await engine.request("GET", "svc", "/x")
    finally:
        await runner.cleanup()
    assert info.value.never_sent is True
    assert [a.outcome.kind for a in info.value.attempts] == [OutcomeKind.TLS_REJECTED]
    assert script.hits == 0
    assert clock.now() == 0.0


async def test_a_tls_handshake_that_fails_otherwise_is_a_failed_connect_and_retried(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Every TLS failure was taken for a refused certificate, final: a proxy answering plain
    HTTP on 443 during a deploy (WRONG_VERSION_NUMBER), a handshake cut short, an alert during
    a certificate rotation. Only a refused certificate is final; the rest is a failed
    connect, retried on the schedule (and a socket reconnects through it)."""
    script = Script(200)
    host = await serve(script.app())  # plain HTTP where TLS is spoken
    async with Engine({"svc": host}, scheme="https", clock=clock) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
    assert [a.outcome.kind for a in info.value.attempts] == [OutcomeKind.CONNECT_FAILED] * 4
    assert info.value.repeat is Repeat.RETRYABLE
    assert clock.now() == 30.0


# -- timeouts -----------------------------------------------------------------------------


class Hang:
    """A handler that never answers until released (at the end of the test)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.entered = 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.entered += 1
        self.arrived.set()
        await self.release.wait()
        return web.Response(status=200)


@contextlib.asynccontextmanager
async def released(hang: Hang) -> AsyncIterator[Hang]:
    try:
        yield hang
    finally:
        hang.release.set()
        for _ in range(5):
            await asyncio.sleep(0)


async def test_per_attempt_timeout_cancels_a_hanging_call_and_retries(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hang = Hang()
    script = Script(hang, 200)
    host = await serve(script.app())
    async with released(hang), Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x", attempt_timeout=2.0)
        assert acquired(engine) == 0
    assert resp.status == 200
    assert resp.attempts[0].outcome.kind is OutcomeKind.TIMEOUT
    assert [a.pause for a in resp.attempts] == [5.0, None]
    assert clock.now() == 7.0
    assert hang.entered == 1


async def test_attempts_that_all_time_out_end_in_retries_exhausted_with_attempt_timeout(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hang = Hang()
    host = await serve(Script(hang).app())
    async with released(hang), Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x", attempt_timeout=1.0)
        with pytest.raises(AttemptTimeout, match="longer than 1 s"):
            await engine.request("POST", "svc", "/x", attempt_timeout=1.0)
        assert acquired(engine) == 0
    assert isinstance(info.value.last, AttemptTimeout)
    assert hang.entered == 5
    assert [a.started_at for a in info.value.attempts] == [0.0, 6.0, 17.0, 33.0]
    assert clock.now() == 35.0


async def test_deadline_cancels_the_attempt_in_flight(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    hang = Hang()
    script = Script(503, hang)
    host = await serve(script.app())
    async with released(hang), Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(DeadlineExceeded) as info:
            await engine.request("GET", "svc", "/x", deadline=8.0, attempt_timeout=None)
        assert acquired(engine) == 0
    err = info.value
    assert err.elapsed == 8.0
    assert clock.now() == 8.0
    assert hang.entered == 1
    assert [(a.attempt, a.outcome.status, a.pause, a.started_at) for a in err.attempts] == [
        (1, 503, 5.0, 0.0),
        (2, None, None, 5.0),
    ]
    assert err.attempts[1].outcome.kind is OutcomeKind.TIMEOUT
    assert "8 s deadline" in str(err)
    assert "attempt 2 was cancelled in flight" in str(err)
    final = records(caplog)[-1]
    assert final.levelno == logging.ERROR
    assert final.elapsed == 8.0  # type: ignore[attr-defined]
    assert final.error == "DeadlineExceeded"  # type: ignore[attr-defined]


class _SlowRetryGate:
    """An overload gate whose answer before a retry takes ``delay`` seconds (a slow store)."""

    def __init__(self, clock: VirtualClock, delay: float) -> None:
        self.clock = clock
        self.delay = delay
        self.settled: list[int] = []

    async def admit(self, call: Any, attempt: int) -> None:
        return None

    async def settle(self, call: Any, attempt: int, outcome: Any) -> None:
        self.settled.append(attempt)

    def abandon(self, call: Any, attempt: int) -> None:
        raise AssertionError("no attempt here is abandoned")

    async def before_retry(
        self, call: Any, attempt: int, outcome: Any, pause: float, last: Any
    ) -> None:
        await self.clock.sleep(self.delay)


async def test_a_pause_the_deadline_cuts_short_ends_at_the_deadline_with_deadline_exceeded(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The policy never plans a pause past the deadline; when time spent after its decision
    (a slow gate) brings the deadline inside the pause, the call waits only until the deadline
    and fails there, as if the pause had been cancelled."""
    from le_transport import RetryMiddleware

    script = Script(503, 200)
    host = await serve(script.app())
    gate = _SlowRetryGate(clock, delay=4.0)
    policy = RetryPolicy(pauses=(5.0,), deadline=8.0, attempt_timeout=None)
    mw = RetryMiddleware(policy=policy, clock=clock, gate=gate)
    async with aiohttp.ClientSession(
        middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        with pytest.raises(DeadlineExceeded) as info:
            await session.get(f"http://{host}/x")
    assert clock.now() == 8.0
    assert script.hits == 1
    assert gate.settled == [1]
    assert "during a pause" in str(info.value)
    assert [(a.attempt, a.outcome.status) for a in info.value.attempts] == [(1, 503)]


async def test_a_replay_that_starts_after_the_deadline_fails_before_it_is_sent(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """An outer middleware's replay (as auth's after a re-login) runs the retry loop again
    against the same call's deadline: past it, nothing more is sent."""
    script = Script(200)
    host = await serve(script.app())

    async def slow_replay(request: Any, handler: Any) -> Any:
        first = await handler(request)
        first.release()
        await clock.sleep(6.0)  # a re-login that took longer than the call may last
        return await handler(request)

    async with Engine(
        {"svc": host}, scheme="http", clock=clock, outer_middlewares=[slow_replay]
    ) as engine:
        with pytest.raises(DeadlineExceeded) as info:
            await engine.request("GET", "svc", "/x", deadline=5.0)
    assert script.hits == 1
    assert "before attempt 1" in str(info.value)
    assert [(a.attempt, a.outcome.status) for a in info.value.attempts] == [(1, 200)]


async def test_deadline_and_attempt_timeout_expiring_together_raise_deadline_exceeded(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hang = Hang()
    host = await serve(Script(hang).app())
    async with released(hang), Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(DeadlineExceeded) as info:
            await engine.request("GET", "svc", "/x", deadline=3.0, attempt_timeout=3.0)
    assert info.value.elapsed == 3.0
    assert asyncio.current_task() is not None
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_deadline_gives_up_before_a_pause_that_would_pass_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503)
    host = await serve(script.app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted, match="deadline"):
            await engine.request("GET", "svc", "/x", deadline=12.0)
    assert script.hits == 2  # 0 s and 5 s; a 10 s pause would end at 15 s
    assert clock.now() == 5.0


async def test_caller_cancelling_the_call_is_not_turned_into_a_timeout(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hang = Hang()
    host = await serve(Script(hang).app())
    async with released(hang), Engine({"svc": host}, scheme="http", clock=clock) as engine:
        call = asyncio.ensure_future(engine.request("GET", "svc", "/x", deadline=100.0))
        await hang.arrived.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert acquired(engine) == 0


# -- bodies -------------------------------------------------------------------------------


async def test_huge_body_with_content_length_raises_body_too_large(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    host = await serve(Script(huge).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, max_body_bytes=1024) as engine:
        with pytest.raises(BodyTooLarge) as info:
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    assert info.value.limit == 1024
    assert "Content-Length 5000" in str(info.value)
    assert [(a.outcome.status, a.pause) for a in info.value.attempts] == [(200, None)]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_503_whose_error_page_is_over_the_limit_is_retried_as_a_503(
    serve: ServerFactory, clock: VirtualClock, chunked: bool
) -> None:
    """A proxy's large maintenance page: judged by its status (retried), not made a final
    BodyTooLarge after one attempt."""
    page = b"<html>" + b"x" * 200_000 + b"</html>"

    async def maintenance(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(status=503, body=page, content_type="text/html")
        resp = web.StreamResponse(status=503)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, len(page), 8192):
            await resp.write(page[start : start + 8192])
        await resp.write_eof()
        return resp

    script = Script(maintenance, 200)
    host = await serve(script.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=FAST, max_body_bytes=64 * 1024
    ) as engine:
        resp = await engine.request("GET", "svc", "/x")
        assert (resp.status, script.hits) == (200, 2)
        # Each schedule's failure is typed by its status, its excerpt from the page's start.
        script.replies = [maintenance]
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    last = info.value.last
    assert isinstance(last, ServerStatusError)
    assert last.status == 503
    assert "<html>xxx" in (last.body_excerpt or "")
    assert [a.outcome.status for a in info.value.attempts] == [503] * 4


async def test_a_4xx_or_a_post_over_the_limit_is_judged_by_its_status_and_never_resent(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    def big(status: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=status, body=b"y" * 5000)

        return answer

    script = Script(big(404))
    host = await serve(script.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=FAST, max_body_bytes=1024
    ) as engine:
        with pytest.raises(ClientStatusError) as refused:
            await engine.request("GET", "svc", "/x")
        assert (refused.value.status, script.hits) == (404, 1)
        script.replies = [big(503)]
        with pytest.raises(ServerStatusError) as failed:
            await engine.request("POST", "svc", "/x", json={"a": 1})
        # A POST's 503: maybe processed, not resent (as any 503 on a POST).
        assert (failed.value.status, script.hits) == (503, 2)
        assert failed.value.repeat is Repeat.RETRYABLE_IF_IDEMPOTENT
        # A success over the limit is still refused whole, and so is an answer the caller
        # accepts (it would read a cut body as the answer).
        script.replies = [big(200)]
        with pytest.raises(BodyTooLarge):
            await engine.request("GET", "svc", "/x")
        script.replies = [big(404)]
        with pytest.raises(BodyTooLarge):
            await engine.request("GET", "svc", "/x", accept=(404,))
        assert acquired(engine) == 0


async def test_a_head_answer_is_not_held_to_the_limit_of_a_body_it_never_carries(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # Content-Length on a HEAD answer is the size of the GET body (RFC 9110 8.6).
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    app = web.Application()
    app.router.add_get("/x", huge)  # aiohttp answers HEAD for a GET route
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock, max_body_bytes=1024) as engine:
        head = await engine.request("HEAD", "svc", "/x")
        assert head.headers["Content-Length"] == "5000"
        assert head.body == b""
        with pytest.raises(BodyTooLarge):
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0


async def test_a_304_with_a_content_length_is_read_as_the_empty_answer_it_is(
    clock: VirtualClock,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Engine(
            {"svc": f"127.0.0.1:{port}"}, scheme="http", clock=clock, max_body_bytes=1024
        ) as engine:
            for _ in range(2):  # and the connection is fit to use again
                resp = await engine.request("GET", "svc", "/x")
                assert (resp.status, resp.body) == (304, b"")
            assert acquired(engine) == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_huge_chunked_body_raises_body_too_large_logged_once_and_not_retried(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(10):
                await resp.write(b"y" * 512)
            await resp.write_eof()
        return resp

    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    script = Script(chunked)
    host = await serve(script.app())
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        max_body_bytes=1024,
        hooks=EventHooks(on_giveup=[giveups.append]),
    ) as engine:
        with pytest.raises(BodyTooLarge, match="more than 1024 bytes"):
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    assert script.hits == 1
    [final] = records(caplog)
    assert final.levelno == logging.ERROR
    assert final.error == "BodyTooLarge"  # type: ignore[attr-defined]
    assert final.status == 200  # type: ignore[attr-defined]
    assert [g.reason for g in giveups] == ["the response body is too large"]


async def test_non_json_body_raises_response_decode_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    host = await serve(Script(html).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ResponseDecodeError, match="not valid JSON") as info:
            await engine.request_json("GET", "svc", "/x")
    assert "maintenance" in str(info.value)


async def test_absurdly_nested_json_raises_response_decode_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000)

    host = await serve(Script(nested).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ResponseDecodeError, match="not valid JSON"):
            await engine.request_json("GET", "svc", "/x")


async def test_wrong_json_type_raises_response_decode_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ResponseDecodeError, match="expected a JSON array, got a JSON object"):
            await engine.request_json("GET", "svc", "/x", expect=list)


async def test_empty_and_undecodable_bodies_raise_response_decode_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def empty(request: web.Request) -> web.Response:
        # A 200 with nothing in it (a 204 is None: request_json has nothing to read there).
        return web.Response(status=200)

    async def latin(request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xfe{}")

    host = await serve(Script(empty, latin).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ResponseDecodeError, match="empty body"):
            await engine.request_json("GET", "svc", "/x")
        with pytest.raises(ResponseDecodeError, match="utf-8"):
            await engine.request_json("GET", "svc", "/x")


# -- hooks and logs -----------------------------------------------------------------------


async def test_hooks_receive_retry_and_giveup_events(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    retries: list[RetryEvent] = []
    giveups: list[GiveUpEvent] = []
    hooks = EventHooks(on_retry=[retries.append], on_giveup=[giveups.append])
    host = await serve(Script(503).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, hooks=hooks) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x", params={"token": "tok-ABC-987"})
    assert [(e.attempt, e.pause, e.elapsed) for e in retries] == [
        (1, 5.0, 0.0),
        (2, 10.0, 5.0),
        (3, 15.0, 15.0),
    ]
    assert {e.service for e in retries} == {"svc"}
    assert all("tok-ABC-987" not in e.url for e in retries)
    [giveup] = giveups
    assert giveup.attempts == 4
    assert giveup.outcome is not None
    assert giveup.outcome.status == 503
    assert giveup.elapsed == 30.0
    assert "exhausted" in giveup.reason


async def test_a_raising_hook_is_logged_and_ignored(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("hook bug")

    caplog.set_level(logging.DEBUG, logger="le_transport")
    hooks = EventHooks(on_retry=[broken], on_giveup=[broken])
    host = await serve(Script(503, 404).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, hooks=hooks) as engine:
        with pytest.raises(ClientStatusError):
            await engine.request("GET", "svc", "/x")
    hook_errors = records(caplog, "le_transport.events")
    assert len(hook_errors) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in hook_errors)


async def test_every_failed_attempt_pause_and_giveup_is_logged_with_structured_fields(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    host = await serve(Script(503).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
    logged = records(caplog)
    assert len(logged) == 4
    *retries, final = logged
    for n, (record, pause, elapsed) in enumerate(
        zip(retries, (5.0, 10.0, 15.0), (0.0, 5.0, 15.0), strict=True), start=1
    ):
        assert record.levelno == logging.WARNING
        assert record.service == "svc"  # type: ignore[attr-defined]
        assert record.method == "GET"  # type: ignore[attr-defined]
        assert record.path == "/x"  # type: ignore[attr-defined]
        assert record.attempt == n  # type: ignore[attr-defined]
        assert record.status == 503  # type: ignore[attr-defined]
        assert record.pause == pause  # type: ignore[attr-defined]
        assert record.elapsed == elapsed  # type: ignore[attr-defined]
        assert f"attempt {n}/4 failed with 503" in record.getMessage()
    assert final.levelno == logging.ERROR
    assert final.attempt == 4  # type: ignore[attr-defined]
    assert final.status == 503  # type: ignore[attr-defined]
    assert final.elapsed == 30.0  # type: ignore[attr-defined]
    assert "failed after 4 attempt(s)" in final.getMessage()


async def test_transport_failures_are_logged_with_the_error_type(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    async with (
        raw_server(reset_before_headers) as (host, _hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine,
    ):
        with pytest.raises(ConnectionFailed):
            await engine.request("POST", "svc", "/x")
    [final] = records(caplog)
    assert final.error in ("ServerDisconnectedError", "ClientOSError")  # type: ignore[attr-defined]
    assert final.status is None  # type: ignore[attr-defined]
    assert final.attempt == 1  # type: ignore[attr-defined]
    assert "not idempotent" in final.getMessage()


async def test_a_4xx_is_logged_once_as_a_warning(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    host = await serve(Script(404).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError):
            await engine.request("DELETE", "svc", "/x")
    [record] = records(caplog)
    assert record.levelno == logging.WARNING
    assert record.status == 404  # type: ignore[attr-defined]
    assert record.method == "DELETE"  # type: ignore[attr-defined]


FALLBACK = "the last good answer is served"


@pytest.mark.parametrize("handled", [False, True], ids=["failed", "handled-by-caller"])
async def test_a_give_up_its_caller_handles_is_a_warning_that_still_says_what_failed(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    secret_values: set[str],
    handled: bool,
) -> None:
    """A provider call whose outage its maker handles (an early token fetch, with a token that
    still works) gives up with a WARNING, not an ERROR: nothing failed for any caller yet. The
    line still names the call, its attempts and what the service answered, never a credential,
    and ends with what the maker falls back on, in its words; the on_giveup hook is told as for
    any call, with handled_by_caller."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    secret_values.add("s3cr3t-query-token-q7")
    giveups: list[GiveUpEvent] = []
    host = await serve(Script(503).app())
    mw = RetryMiddleware(clock=clock, hooks=EventHooks(on_giveup=[giveups.append]))
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(session=lambda: session, retry_middleware=mw, clock=clock)
        with pytest.raises(RetriesExhausted):
            await http.request(
                "POST",
                URL(f"http://{host}/x").with_query(access_token="s3cr3t-query-token-q7"),
                service="sentinel",
                retry=RetryPolicy(pauses=()),
                idempotent=True,
                fallback=FALLBACK if handled else None,
            )
    [final] = records(caplog)
    assert final.levelno == (logging.WARNING if handled else logging.ERROR)
    assert final.service == "sentinel"  # type: ignore[attr-defined]
    assert final.method == "POST"  # type: ignore[attr-defined]
    assert final.attempt == 1  # type: ignore[attr-defined]
    assert final.status == 503  # type: ignore[attr-defined]
    message = final.getMessage()
    assert f"POST http://{host}/x?access_token=" in message
    assert "failed after 1 attempt(s)" in message
    # One attempt, so no retry line: the give-up line itself says what the service answered.
    assert "last outcome 503" in message
    assert message.endswith(f"; handled: {FALLBACK}") is handled
    assert [(g.service, g.attempts, g.handled_by_caller) for g in giveups] == [
        ("sentinel", 1, handled)
    ]


@pytest.mark.parametrize("status", [401, 404, 451])
async def test_a_refusal_is_never_taken_as_handled_by_the_caller(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A maker handles an outage, not a 4xx (an early token fetch refused fails the call at
    once): the give-up is reported as for any call, without the maker's fallback."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    host = await serve(Script(status).app())
    mw = RetryMiddleware(clock=clock, hooks=EventHooks(on_giveup=[giveups.append]))
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(session=lambda: session, retry_middleware=mw, clock=clock)
        with pytest.raises(ClientStatusError):
            await http.request(
                "POST", URL(f"http://{host}/x"), service="sentinel", fallback=FALLBACK
            )
    [final] = records(caplog)
    assert final.levelno == logging.WARNING
    assert "handled" not in final.getMessage()
    assert [g.handled_by_caller for g in giveups] == [False]


class _OpenBreakerGate:
    """An overload gate whose breaker is open: every call is refused before it is sent."""

    async def admit(self, call: Any, attempt: int) -> CircuitOpen:
        return CircuitOpen("the breaker for sentinel is open", retry_at=30.0)

    async def settle(self, call: Any, attempt: int, outcome: Any) -> None:
        raise AssertionError("nothing is sent")

    def abandon(self, call: Any, attempt: int) -> None:
        raise AssertionError("nothing is sent")

    async def before_retry(
        self, call: Any, attempt: int, outcome: Any, pause: float, last: Any
    ) -> None:
        raise AssertionError("nothing is sent")


@pytest.mark.parametrize("handled", [False, True], ids=["failed", "handled-by-caller"])
async def test_a_refusal_by_an_open_breaker_tells_the_hook_whether_the_caller_handles_it(
    serve: ServerFactory, clock: VirtualClock, handled: bool
) -> None:
    giveups: list[GiveUpEvent] = []
    host = await serve(Script(200).app())
    mw = RetryMiddleware(
        clock=clock, gate=_OpenBreakerGate(), hooks=EventHooks(on_giveup=[giveups.append])
    )
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(session=lambda: session, retry_middleware=mw, clock=clock)
        with pytest.raises(CircuitOpen):
            await http.request(
                "POST",
                URL(f"http://{host}/x"),
                service="sentinel",
                fallback=FALLBACK if handled else None,
            )
    assert [(g.attempts, g.handled_by_caller) for g in giveups] == [(0, handled)]


def test_whether_the_caller_handles_a_failure_costs_an_ordinary_call_nothing() -> None:
    """Read only when a call gives up, and kept on a subclass: an ordinary call neither sets
    nor stores it (the context is made once per call, on the happy path)."""
    assert CallContext.__slots__ == (
        "active",
        "attempts",
        "first_method",
        "first_original",
        "first_url",
        "idempotent",
        "resign",
        "retry",
        "service",
        "started_at",
    )
    assert HandledCallContext.__slots__ == ("fallback",)
    assert CallContext("svc").caller_handles_failure is False
    handled = HandledCallContext("svc", fallback=FALLBACK)
    assert handled.caller_handles_failure is True
    assert handled.fallback == FALLBACK
    # A give-up event says nothing of it unless told.
    event = GiveUpEvent("svc", "GET", "http://h/x", 1, None, "gave up", 0.0)
    assert event.handled_by_caller is False


# -- on a foreign session -----------------------------------------------------------------


async def test_on_a_foreign_session_without_raise_for_status_the_final_answer_is_returned(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    from le_transport import RetryMiddleware

    script = Script(503)
    host = await serve(script.app())
    mw = RetryMiddleware(policy=FAST, clock=clock, raise_for_status=False)
    async with (
        aiohttp.ClientSession(middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)) as s,
        s.get(f"http://{host}/x") as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["hit"] == 4
    assert script.hits == 4


@attrs.frozen
class _ConflictIsFine(RetryPolicy):
    """A caller's policy: a 409 (already exists) is a success of its API."""

    def decide(
        self,
        attempt: int,
        outcome: Outcome,
        *,
        idempotent: bool,
        elapsed: float = 0.0,
        rand: float = 0.5,
    ) -> Decision:
        if outcome.status == 409:
            return Decision(Action.SUCCEED, reason="409 means done")
        return super().decide(attempt, outcome, idempotent=idempotent, elapsed=elapsed, rand=rand)


async def test_a_failed_answer_a_policy_of_ones_own_makes_a_success_is_never_cut(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Cut to its excerpt as a failure, then returned as the answer by the policy's decide():
    64 KiB of it passed for the whole."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(status=409, body=b"z" * 200_000)

    host = await serve(Script(big).app())
    policy = _ConflictIsFine(pauses=(0.05, 0.1, 0.15))
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=policy, max_body_bytes=100_000
    ) as engine:
        with pytest.raises(BodyTooLarge) as info:
            await engine.request("GET", "svc", "/x")
        assert acquired(engine) == 0
    assert [a.outcome.status for a in info.value.attempts] == [409]


async def test_without_raise_for_status_a_failed_answer_over_the_limit_is_never_cut(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The final answer is returned to the caller, as a success is: a cut body would pass for
    the whole one."""
    from le_transport import RetryMiddleware

    async def big(request: web.Request) -> web.Response:
        return web.Response(status=404, body=b"y" * 5000)

    host = await serve(Script(big).app())
    mw = RetryMiddleware(policy=FAST, clock=clock, raise_for_status=False, max_body_bytes=1024)
    async with aiohttp.ClientSession(
        middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)
    ) as s:
        with pytest.raises(BodyTooLarge):
            async with s.get(f"http://{host}/x"):
                pass


async def test_request_json_refuses_accept_whose_error_body_would_pass_for_the_resource(
    clock: VirtualClock,
) -> None:
    async with Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="request_json takes no accept="):
            await engine.request_json("GET", "svc", "/x", accept={404}, expect=dict)  # type: ignore[call-overload]


# -- errors cross process boundaries ------------------------------------------------------


def _fails_in_a_worker() -> None:
    last = ServerStatusError("503", status=503, service="svc", method="GET", url="https://h/x")
    raise RetriesExhausted("gave up", last=last, service="svc", method="GET", url="https://h/x")


async def test_an_error_from_a_call_survives_copy_and_pickle_whole(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Errors take keyword-only facts: Exception's own reduce, ``cls(*args)``, failed on the
    way back (a worker's error broke its process pool)."""
    host = await serve(Script(503).app())
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x", deadline=60.0)
    error = info.value
    for again in (copy.copy(error), copy.deepcopy(error), pickle.loads(pickle.dumps(error))):
        assert type(again) is RetriesExhausted
        assert str(again) == str(error)
        assert again.args == error.args
        assert (again.service, again.method, again.url) == (error.service, "GET", error.url)
        assert [(a.attempt, a.outcome.status, a.pause) for a in again.attempts] == [
            (a.attempt, a.outcome.status, a.pause) for a in error.attempts
        ]
        assert again.repeat is error.repeat
        assert isinstance(again.last, ServerStatusError)
        assert again.last.status == 503
    elapsed = DeadlineExceeded("deadline passed", elapsed=1.5, service="svc")
    assert pickle.loads(pickle.dumps(elapsed)).elapsed == 1.5


def test_an_error_raised_in_a_process_pool_worker_reaches_the_parent_typed() -> None:
    with (
        concurrent.futures.ProcessPoolExecutor(1) as pool,
        pytest.raises(RetriesExhausted) as info,
    ):
        pool.submit(_fails_in_a_worker).result(timeout=60)
    assert isinstance(info.value.last, ServerStatusError)
    assert info.value.last.status == 503
