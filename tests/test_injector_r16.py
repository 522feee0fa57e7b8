"""Review round 16 of the client-side fault injector (:class:`~le_transport.chaos.FaultInjector`).

1. A ``request`` rule striking a socket's upgrade recorded the upgrade's real path, which may
   carry the bearer anywhere its template says (``/ws/{bearer}/events``): in the injector's log,
   its report and the DEBUG line of ``le_transport.chaos.faults``. It records the template now
   (as the ``ws_session`` decision does), and still matches on the real path, as the simulator
   does.
2. Its waits were not cut by ``Engine.close()``: a ``Delay`` ended after the close and sent on
   the closed session (aiohttp's bare ``AssertionError`` reached the caller), a ``Hang`` or a
   ``SlowBody`` kept the call alive after ``close()`` returned, until its attempt timeout (for
   ever without one). They end at once with ``EngineClosed`` now, as on the simulator; a call
   the close makes itself (the logout) still meets its delay and is sent.
3. ``SlowBody``, ``TruncatedBody`` and ``MalformedBody`` read the whole real answer, decoded,
   with no limit: a small gzip bomb held hundreds of MiB. They read through the engine's
   ``max_body_bytes`` now (``TruncatedBody`` only what it keeps, and one byte more).
4. Their review: an answer a middleware inside the injector had read already (the injector among
   ``outer_middlewares``, a caller's body-logging wire middleware) was read again from its spent
   stream: ``SlowBody`` handed back a 200 with an empty body, ``TruncatedBody`` kept nothing,
   and both failed on a released one. ``SlowBody`` held the body to ``max_body_bytes`` where
   the caller's stack holds it to nothing (a streaming ``RetryMiddleware(buffer_body=False)``,
   no retry middleware): an answer that reads whole without the fault failed under it. And a
   ``SlowBody`` on an answer with no body (to a HEAD, a 204) was not what it is without the
   fault: the simulator wrote a body after a HEAD's headers (the client met a bad status
   line), the injector announced ``Content-Length: 0`` for it and added one to a 204.
5. Its live ``SlowBody`` (no retry middleware, or a streaming one): a body whose length its
   headers did not tell was read ahead (up to 16 MiB) before its head was handed on, so a
   stream the server held open never got its head; the paced body carried no timer (the
   caller's ``ClientTimeout`` ``total`` and ``sock_read`` never struck it, where they strike
   the simulator's); with ``auto_decompress=False`` a gzipped body lost its
   ``Content-Encoding`` (``TruncatedBody``'s too); the bytes of a piece were lost when the real
   body failed; and an answer dropped unread and unreleased left its feeding task waiting for
   ever, its connection held.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, EngineClosed, RetryPolicy
from le_transport.chaos import (
    Delay,
    FaultInjector,
    FaultRule,
    Hang,
    MalformedBody,
    Match,
    Schedule,
    SlowBody,
    TruncatedBody,
)
from le_transport.chaos.injector import _DribbledResponse
from le_transport.clock import RealClock, timeout_after
from le_transport.errors import (
    BodyTooLarge,
    ConnectionFailed,
    RequestError,
    RetriesExhausted,
    TransportError,
)
from le_transport.middleware import RetryMiddleware
from le_transport.providers import StaticBearer, StaticDomains, UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)
from tests.conftest import ServerFactory
from tests.test_socket_support import quiet_peer

USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"

# -- 1. the bearer in an upgrade's path -----------------------------------------------------------


async def test_a_request_rule_striking_an_upgrade_records_the_path_template_not_the_bearer(
    serve: ServerFactory,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bearer = "r16-path-bearer-5c1e9a"
    secret_values.add(bearer)  # any log record showing it fails the test
    app = web.Application()
    app.router.add_get("/ws/{bearer}/events", quiet_peer)
    host = await serve(app)
    injector = FaultInjector.seeded(
        1,
        # Latency on every request: the upgrade is one.
        FaultRule("lag", Delay(10)),
        # Matched on the real path, as the simulator matches it (shadowed by the first).
        FaultRule("real", Delay(20), match=Match("GET", "/ws/r16-path-bearer-*/events")),
        # The template's path (the bearer's place named) is what is shown, not what is matched.
        FaultRule("template", Delay(30), match=Match("GET", "/ws/bearer/*")),
        clock=clock,
    )
    caplog.set_level(logging.DEBUG, logger="le_transport.chaos.faults")
    async with Engine(
        {"agentVep": host},
        scheme="http",
        clock=clock,
        wire_middlewares=[injector],
        auth=StaticBearer(bearer),
    ) as engine:
        ws = await engine.websocket("agentVep", "/ws/{bearer}/events")
        for _ in range(20):
            if injector.log:
                break
            await clock.sleep(0.5)
        await ws.close()
    shown = json.dumps(injector.report()) + repr(list(injector.log)) + caplog.text
    assert bearer not in shown, shown
    # Shown as the socket's own records and log lines show its path: the template's, with the
    # bearer's place named.
    template = "/ws/bearer/events"
    upgrade = [d for d in injector.log if d.unit == "request"]
    assert [(d.rule_id, d.outcome, d.path) for d in upgrade] == [
        ("lag", "inject", template),
        ("real", "shadowed", template),
    ]
    assert injector.rule_counts()["template"].matched == 0
    assert f"injected delay (rule lag, request #0) on GET {template} " in caplog.text


# -- 2. the injector's waits and Engine.close() ---------------------------------------------------


def _answering_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"items": list(range(200))})

    app = web.Application()
    app.router.add_get("/x", answer)
    return app


async def _close_mid_fault(
    serve: ServerFactory, fault: Any, wait: float | None, retry: RetryPolicy | None = None
) -> BaseException:
    """Close an engine while its one call is held by the injector's ``fault`` (on a clock that
    moves only when told), in its sleep of ``wait`` seconds (None: a wait off the clock); then
    move the clock past that wait. What the call raised."""
    clock = VirtualClock(autojump=False)
    host = await serve(_answering_app())
    injector = FaultInjector.seeded(1, FaultRule("r", fault, schedule=Schedule(fail_next=1)))
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        wire_middlewares=[injector],
        retry=retry,
    )
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
    try:
        for _ in range(10_000):  # loop turns, until the call is in the fault's wait
            if injector.report() and (wait is None or wait in clock.sleeps):
                break
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert injector.report()
        assert not call.done()
        await engine.close()
        for _ in range(100):  # loop turns, not time: the close's cut reaching the call
            if call.done():
                break
            await asyncio.sleep(0)
        # Time the fault waited for passes: a call not cut by the close would now go on with
        # its delay (and send on the closed session) or its slow body.
        clock.advance(wait or 1.0)
        try:
            # Only a guard against a call left running for ever (the defect): never expected
            # to take long, nothing measured.
            await asyncio.wait_for(asyncio.shield(call), 30.0)
        except BaseException as exc:
            return exc
        raise AssertionError("the call returned")
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await engine.close()


@pytest.mark.parametrize(
    ("fault", "wait", "retry"),
    [
        pytest.param(Delay(delay_ms=2000), 2.0, None, id="delay"),
        pytest.param(Hang(), None, RetryPolicy(attempt_timeout=None), id="hang-for-ever"),
        pytest.param(Hang(duration_ms=60_000), 60.0, None, id="hang-a-minute"),
        pytest.param(SlowBody(chunk_bytes=16, chunk_delay_ms=60_000), 60.0, None, id="slow-body"),
    ],
)
async def test_a_call_held_by_the_injector_ends_with_engine_closed_when_the_engine_closes(
    serve: ServerFactory, fault: Any, wait: float | None, retry: RetryPolicy | None
) -> None:
    err = await _close_mid_fault(serve, fault, wait, retry)
    assert isinstance(err, EngineClosed), repr(err)
    assert "while attempt 1 was in flight" in str(err)
    assert [a.outcome.error for a in err.attempts] == ["EngineClosed"]


async def test_a_logout_the_close_makes_still_meets_its_delay_and_is_sent(
    clock: VirtualClock,
) -> None:
    """The close's own calls (the logout) run after it began: a delay on them is latency the
    call waits out, as on the simulator, not a call to cut."""
    async with Simulator(clock=clock) as sim:
        injector = FaultInjector.seeded(1, FaultRule("lag", Delay(delay_ms=500)), clock=clock)
        domains = StaticDomains(sim.domains)
        auth = UserLogin(
            sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
        )
        async with Engine(
            domains, scheme="http", clock=clock, auth=auth, wire_middlewares=[injector]
        ) as engine:
            await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
        assert sim.tokens.logouts == 1
    logout = injector.report()[-1]
    assert (logout["method"], logout["path"].rsplit("/", 1)[-1]) == ("POST", "logout")


# -- 3. the real answer read through the engine's limit -------------------------------------------

#: 64 MiB of zeros, gzipped: about 64 KB on the wire.
BOMB = gzip.compress(b"\0" * (64 * 2**20), compresslevel=9)
LIMIT = 2**20


async def _bomb_call(serve: ServerFactory, fault: Any) -> tuple[object, int]:
    """One GET of the gzip bomb through an engine limited to 1 MiB (one attempt), ``fault``
    on it: what the call returned or raised, and the peak of memory traced meanwhile."""

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(
            body=BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/big", bomb)
    host = await serve(app)
    middlewares = [] if fault is None else [FaultInjector.seeded(1, FaultRule("r", fault))]
    outcome: object
    tracemalloc.start()
    try:
        async with Engine(
            {"svc": host},
            scheme="http",
            max_body_bytes=LIMIT,
            retry=RetryPolicy(pauses=()),
            wire_middlewares=middlewares,
        ) as engine:
            try:
                outcome = await engine.request("GET", "svc", "/big")
            except TransportError as exc:
                outcome = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, peak


#: Far above what reading through the 1 MiB limit takes, far below the 64 MiB a whole read
#: holds (twice, as bytes joined).
PEAK_BOUND = 24 * 2**20


async def test_without_a_fault_the_bomb_is_refused_within_the_limit(serve: ServerFactory) -> None:
    outcome, peak = await _bomb_call(serve, None)
    assert isinstance(outcome, BodyTooLarge)
    assert peak < PEAK_BOUND


async def test_a_slow_body_reads_the_real_answer_through_the_limit(serve: ServerFactory) -> None:
    outcome, peak = await _bomb_call(serve, SlowBody(chunk_bytes=65536, chunk_delay_ms=0))
    assert peak < PEAK_BOUND, f"{peak / 2**20:.0f} MiB"
    # Refused as the answer without the fault is: the attempt recorded with its status.
    assert isinstance(outcome, BodyTooLarge), repr(outcome)
    assert [a.outcome.status for a in outcome.attempts] == [200]


async def test_a_truncated_body_reads_only_what_it_keeps(serve: ServerFactory) -> None:
    outcome, peak = await _bomb_call(serve, TruncatedBody(keep_bytes=10))
    assert peak < PEAK_BOUND, f"{peak / 2**20:.0f} MiB"
    # The cut reaches the caller: the kept bytes, then the payload error of a body cut short.
    assert isinstance(outcome, (ConnectionFailed, RetriesExhausted)), repr(outcome)
    assert "ClientPayloadError" in str(outcome)


async def test_a_malformed_body_drains_the_real_answer_through_the_limit(
    serve: ServerFactory,
) -> None:
    fault = MalformedBody()
    outcome, peak = await _bomb_call(serve, fault)
    assert peak < PEAK_BOUND, f"{peak / 2**20:.0f} MiB"
    # The real answer is thrown away whatever its size: the fault's answer comes back.
    assert not isinstance(outcome, BaseException), repr(outcome)
    assert outcome.status == 200  # type: ignore[attr-defined]
    assert outcome.body == fault.body.encode()  # type: ignore[attr-defined]


async def test_a_wire_middleware_sending_on_the_closed_session_ends_with_engine_closed(
    serve: ServerFactory,
) -> None:
    """Any wire middleware that waits (a caller's own latency) and then sends on the session the
    close has closed met aiohttp's bare AssertionError, which the retry loop passed on as it
    was: stopped with EngineClosed now, as a call in flight is."""
    clock = VirtualClock(autojump=False)
    host = await serve(_answering_app())
    waiting = asyncio.Event()

    async def lag(request: Any, handler: Any) -> Any:
        waiting.set()
        await clock.sleep(2.0)  # not cut by the close
        return await handler(request)

    engine = Engine({"svc": host}, scheme="http", clock=clock, wire_middlewares=[lag])
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
    try:
        await waiting.wait()
        await engine.close()
        clock.advance(2.0)
        with pytest.raises(EngineClosed) as stopped:
            await asyncio.wait_for(asyncio.shield(call), 30.0)  # a guard: nothing measured
        assert "while attempt 1 was in flight" in str(stopped.value)
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


async def test_a_failure_while_the_owner_closes_with_the_session_open_is_said_as_it_is(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Only a session already closed makes a failure the close's: one met while the owner
    closes, before it closes the session (its logout's), is reported as it is."""
    host = await serve(_answering_app())
    closing = asyncio.Event()
    closing.set()  # the owner's close has begun; the session is still open

    async def broken(request: Any, handler: Any) -> Any:
        raise RuntimeError("a bug of the middleware's own")

    retry = RetryMiddleware(clock=clock, shutdown=closing)
    async with aiohttp.ClientSession(middlewares=[retry, broken]) as session:
        with pytest.raises(RuntimeError, match="a bug of the middleware's own"):
            await session.get(f"http://{host}/x")


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_a_slow_body_over_the_limit_meets_the_callers_limit_as_the_real_answer_does(
    serve: ServerFactory, status: int, encoding: str | None
) -> None:
    """A guard on the hand-on: an answer over the limit, with or without the fault, ends the
    call the same way (a success refused as too large, a 503 judged by its status on its
    excerpt), its attempt recorded with the real status."""
    page = b"x" * (3 * LIMIT)
    body = page if encoding is None else gzip.compress(page)

    async def large(request: web.Request) -> web.Response:
        headers = {} if encoding is None else {"Content-Encoding": encoding}
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/large", large)
    host = await serve(app)

    async def call(fault: Any) -> tuple[str, list[int | None], str]:
        middlewares = [] if fault is None else [FaultInjector.seeded(1, FaultRule("r", fault))]
        async with Engine(
            {"svc": host},
            scheme="http",
            max_body_bytes=LIMIT,
            retry=RetryPolicy(pauses=()),
            wire_middlewares=middlewares,
        ) as engine:
            with pytest.raises(RequestError) as failed:
                await engine.request("GET", "svc", "/large")
        err = failed.value
        excerpt = str(getattr(getattr(err, "last", err), "body_excerpt", ""))[:40]
        return type(err).__name__, [a.outcome.status for a in err.attempts], excerpt

    without = await call(None)
    assert without[1] == [status]
    assert ("x" in without[2]) is (status == 503)
    assert await call(SlowBody(chunk_bytes=4096, chunk_delay_ms=1)) == without


# -- 4. an answer read already, a caller without a limit, answers without a body ------------------

PAYLOAD = json.dumps({"items": list(range(50))}).encode()
#: PAYLOAD as every gzipped answer here sends it: made once, so that a test comparing bytes
#: does not meet a gzip header stamped a second later (its mtime) than the server's.
GZIPPED = gzip.compress(PAYLOAD, mtime=0)


def _payload_app() -> web.Application:
    async def gz(request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(PAYLOAD[:100])
        await resp.write(PAYLOAD[100:])
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        # ?mib=N, ?chunked=1: written a piece at a time, so the server holds no more than one.
        size = int(request.query.get("mib", "3")) * 2**20
        resp = web.StreamResponse()
        if request.query.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = size
        await resp.prepare(request)
        piece = b"x" * 2**16
        for _ in range(size // len(piece)):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/gz", gz)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    return app


async def _read_until_cut(resp: aiohttp.ClientResponse) -> tuple[bytes, str | None]:
    got = b""
    try:
        while chunk := await resp.content.read(4):
            got += chunk
    except aiohttp.ClientPayloadError as exc:
        return got, type(exc).__name__
    return got, None


@pytest.mark.parametrize("path", ["/gz", "/chunked"])
async def test_a_slow_body_outside_the_retry_middleware_dribbles_the_body_it_read(
    serve: ServerFactory, path: str
) -> None:
    """The injector among the outer middlewares: the engine's retry middleware, inside it, has
    read the body. Before: read again from the spent stream, a 200 with an empty body."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(1, FaultRule("r", SlowBody(chunk_bytes=64, chunk_delay_ms=1)))
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=VirtualClock(),
        retry=RetryPolicy(pauses=()),
        outer_middlewares=[injector],
    ) as engine:
        resp = await engine.request("GET", "svc", path)
    assert resp.status == 200
    assert resp.body == PAYLOAD
    assert resp.headers["Content-Length"] == str(len(PAYLOAD))
    assert injector.rule_counts()["r"].injected == 1


def _body_logger(*, release: bool) -> Any:
    """A caller's wire middleware that reads each answer's body (to log it), and then
    ``release``s it or not."""

    async def log_body(request: Any, handler: Any) -> Any:
        resp = await handler(request)
        await resp.read()
        if release:
            resp.release()
        return resp

    return log_body


@pytest.mark.parametrize("release", [False, True], ids=["read", "read-released"])
@pytest.mark.parametrize(
    "fault",
    [SlowBody(chunk_bytes=64, chunk_delay_ms=1), TruncatedBody(keep_bytes=10), MalformedBody()],
    ids=["slow", "truncated", "malformed"],
)
async def test_a_body_fault_beside_a_middleware_that_read_the_body_works_on_that_body(
    serve: ServerFactory, fault: Any, release: bool
) -> None:
    """Before: SlowBody handed back an empty body, TruncatedBody kept nothing; on an answer
    released after its read, each (MalformedBody too) failed with aiohttp's 'Connection
    closed', a failure the server never caused."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(1, FaultRule("r", fault), clock=VirtualClock())
    async with (
        aiohttp.ClientSession(middlewares=[injector, _body_logger(release=release)]) as session,
        session.get(f"http://{host}/gz") as resp,
    ):
        got = await _read_until_cut(resp)
    if isinstance(fault, SlowBody):
        assert got == (PAYLOAD, None)
    elif isinstance(fault, TruncatedBody):
        assert got == (PAYLOAD[:10], "ClientPayloadError")
        assert resp.headers["Content-Length"] == str(len(PAYLOAD))  # the whole body's
    else:
        assert got == (fault.body.encode(), None)


async def test_a_truncated_body_outside_the_retry_middleware_keeps_its_bytes(
    serve: ServerFactory,
) -> None:
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(1, FaultRule("r", TruncatedBody(keep_bytes=10)))
    async with (
        aiohttp.ClientSession(middlewares=[injector, RetryMiddleware()]) as session,
        session.get(f"http://{host}/gz") as resp,
    ):
        # Before: b"", nothing kept.
        assert await _read_until_cut(resp) == (PAYLOAD[:10], "ClientPayloadError")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_slow_body_on_a_streaming_session_is_held_to_no_limit(
    serve: ServerFactory, chunked: bool
) -> None:
    """RetryMiddleware(buffer_body=False) holds no body to its max_body_bytes: the 3 MiB answer
    reads whole without the fault, and under it. Before: a ClientPayloadError (the body passed
    the call's limit), a failure the server never caused."""
    host = await serve(_payload_app())
    url = f"http://{host}/big" + ("?chunked=1" if chunked else "")
    got = []
    for fault in (None, SlowBody(chunk_bytes=2**18, chunk_delay_ms=1)):
        rules = [] if fault is None else [FaultRule("r", fault)]
        injector = FaultInjector.seeded(1, *rules, clock=VirtualClock())
        retry = RetryMiddleware(buffer_body=False, max_body_bytes=2**20)
        async with (
            aiohttp.ClientSession(middlewares=[retry, injector]) as session,
            session.get(url) as resp,
        ):
            got.append((resp.status, len(await resp.read())))
            if fault is not None:
                # Its decoded length is announced when its headers tell it, else none (the
                # body is not held whole to count it).
                expected = None if chunked else str(3 * 2**20)
                assert resp.headers.get("Content-Length") == expected
                assert injector.rule_counts()["r"].injected == 1
    assert got == [(200, 3 * 2**20)] * 2


async def test_a_slow_body_without_a_retry_middleware_paces_the_live_body_in_bounded_memory(
    serve: ServerFactory,
) -> None:
    """No retry middleware: no limit (before, the default 16 MiB one failed this 20 MiB answer
    with a ClientPayloadError), and the body is not held whole: paced as it is read from the
    connection, a piece at a time."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**16, chunk_delay_ms=1)), clock=VirtualClock()
    )
    size = 0
    tracemalloc.start()
    try:
        async with (
            aiohttp.ClientSession(middlewares=[injector]) as session,
            session.get(f"http://{host}/big?mib=20") as resp,
        ):
            assert resp.headers["Content-Length"] == str(20 * 2**20)
            async for chunk in resp.content.iter_chunked(2**16):
                size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == 20 * 2**20
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB"


async def test_a_slow_live_body_the_caller_does_not_read_is_not_read_on(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """What the caller has not read holds the real connection back (aiohttp's flow control),
    as a slow reader holds a server back: before, the whole 4 MiB was fed to it."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**14, chunk_delay_ms=10)), clock=clock
    )
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(f"http://{host}/big?mib=4") as resp,
    ):
        assert await resp.content.read(10) == b"x" * 10
        # Virtual time enough for every piece's pause (400 s for 256 pieces).
        await clock.sleep(3600)
        held = resp.content.total_bytes
        assert held <= 2**18, held  # aiohttp's high-water mark (128 KiB) and a piece or two
        assert len(await resp.read()) == 4 * 2**20 - 10
    assert isinstance(resp, _DribbledResponse)
    assert resp.feeder is not None
    assert resp.feeder.done()


async def test_a_slow_live_body_keeps_its_pace(serve: ServerFactory, clock: VirtualClock) -> None:
    """A guard: paced from the live connection, the pieces still come chunk_delay_ms apart on
    the injector's clock, the first at once."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**18, chunk_delay_ms=500)), clock=clock
    )
    seen: list[tuple[float, int]] = []
    async with aiohttp.ClientSession(middlewares=[injector]) as session:
        started = clock.now()
        async with session.get(f"http://{host}/big?mib=1") as resp:
            async for chunk in resp.content.iter_chunked(2**18):
                seen.append((clock.now() - started, len(chunk)))
    assert seen == [(0.5 * i, 2**18) for i in range(4)]


async def test_a_slow_live_body_released_mid_way_drops_its_connection(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A guard: the caller releasing the answer mid-body stops the feeding (no task left, the
    leak check says) and drops the real connection, whose body was not read to its end."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**16, chunk_delay_ms=1000)), clock=clock
    )
    async with aiohttp.ClientSession(middlewares=[injector]) as session:
        resp = await session.get(f"http://{host}/big?mib=1")
        assert len(await resp.content.read(2**16)) == 2**16
        assert isinstance(resp, _DribbledResponse)
        source = resp.source
        assert source is not None
        assert source.connection is not None
        resp.release()
        await asyncio.sleep(0)
        assert resp.feeder is not None
        assert resp.feeder.cancelled()
        assert source.connection is None
        assert source.closed
        assert resp.source is None


# Both sides, one plan: a SlowBody on an answer with no body is the answer without the fault.

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIPPED,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def _observed(
    sim: Simulator, injector: FaultInjector | None, method: str, path: str, *, retry: bool
) -> tuple[object, ...]:
    middlewares: list[Any] = [RetryMiddleware(buffer_body=True)] if retry else []
    if injector is not None:
        middlewares.append(injector)
    async with aiohttp.ClientSession(middlewares=middlewares) as session:
        try:
            async with session.request(method, sim.url + path) as resp:
                body, error = await _read_until_cut(resp)
                return (
                    resp.status,
                    resp.headers.get("Content-Length"),
                    resp.headers.get("Content-Encoding"),
                    body,
                    error,
                )
        except aiohttp.ClientError as exc:
            return ("raised", type(exc).__name__, str(exc)[:80])


@pytest.mark.parametrize("retry", [False, True], ids=["bare", "retry-middleware"])
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("HEAD", "csds"),
        ("HEAD", "gzip"),
        ("HEAD", "204"),
        ("GET", "204"),
    ],
)
async def test_a_slow_body_on_an_answer_without_a_body_is_that_answer_on_either_side(
    clock: VirtualClock, method: str, route: str, retry: bool
) -> None:
    """Before: the simulator wrote the body after a HEAD's headers (the client met '400 Bad
    status line'); the injector announced 'Content-Length: 0' for a HEAD whose answer says
    929, and added one to a 204. Now both hand on the answer as it is without the fault (its
    headers, a HEAD's Content-Length the body a GET would get, no body; a 204 with no
    Content-Length), and count the fault."""
    sim = Simulator(clock=clock)
    base = f"/api/account/{DEFAULT_ACCOUNT}"
    for name, handler in (("nocontent", _no_content), ("gzipped", _gzipped)):
        for verb in ("GET", "HEAD"):
            sim.add_route(verb, f"{base}/{name}", handler, service="things")
    path = {"csds": CSDS, "gzip": f"{base}/gzipped", "204": f"{base}/nocontent"}[route]
    fault = SlowBody(chunk_bytes=16, chunk_delay_ms=5)
    async with sim:
        without = await _observed(sim, None, method, path, retry=retry)
        sim.faults.load([FaultRule("sim", fault, schedule=Schedule(fail_next=1))])
        served = await _observed(sim, None, method, path, retry=retry)
        assert sim.faults.rule_counts()["sim"].injected == 1
        sim.faults.load([])
        injector = FaultInjector.seeded(
            0, FaultRule("inj", fault, schedule=Schedule(fail_next=1)), clock=clock
        )
        injected = await _observed(sim, injector, method, path, retry=retry)
        assert injector.rule_counts()["inj"].injected == 1
    assert served == without
    assert injected == without
    status, length, _, body, error = without
    assert (body, error) == (b"", None)
    if route == "204":
        assert (status, length) == (204, None)
    else:
        assert status == 200
        assert isinstance(length, str)
        assert int(length) > 0


# -- 5. the live slow body: its head at once, the caller's timeouts, its encoding, its leftovers --


async def _until(condition: Callable[[], bool], *, pause: float = 0.0) -> None:
    """Wait (looping on the event loop, ``pause`` s between looks) until ``condition`` holds;
    the bound on the looks only guards against a hang."""
    for _ in range(10**6):
        if condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError("not reached")


def _streaming_app(more: asyncio.Event, end: asyncio.Event) -> web.Application:
    """``/events``: a chunked NDJSON stream whose server holds it open: line 0, then line 1
    once ``more`` is set, then its end once ``end`` is set (a long poll, an event stream)."""

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"row": 0}\n')
        await more.wait()
        await resp.write(b'{"row": 1}\n')
        await end.wait()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/events", events)
    return app


@pytest.mark.parametrize("retry", [False, True], ids=["bare", "streaming-retry"])
async def test_a_slow_body_on_a_stream_the_server_holds_open_hands_its_head_on_at_once(
    serve: ServerFactory, clock: VirtualClock, retry: bool
) -> None:
    """Before: where the caller's stack holds bodies to no limit, a body whose decoded length
    its headers do not tell (chunked, any Content-Encoding) was read ahead up to
    ``max_body_bytes`` + 1 before its head was handed on: a stream the server holds open never
    got its head (under a streaming retry middleware, its attempt timeout struck instead). As
    from the simulator, the head comes at once and the body is paced, with no length."""
    more, end = asyncio.Event(), asyncio.Event()
    host = await serve(_streaming_app(more, end))
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=11, chunk_delay_ms=10)), clock=clock
    )
    middlewares: list[Any] = [injector]
    if retry:
        policy = RetryPolicy(pauses=(), attempt_timeout=5.0)
        middlewares.insert(0, RetryMiddleware(buffer_body=False, policy=policy, clock=clock))
    try:
        # (A guard on virtual time, which jumps once everything waits: before, the head never
        # came on a bare session.)
        async with (
            timeout_after(clock, 60),
            aiohttp.ClientSession(middlewares=middlewares) as session,
            session.get(f"http://{host}/events") as resp,
        ):
            # The head, while the server still holds the stream open.
            assert not more.is_set()
            assert resp.status == 200
            assert "Content-Length" not in resp.headers
            assert await resp.content.readline() == b'{"row": 0}\n'
            more.set()
            assert await resp.content.readline() == b'{"row": 1}\n'
            end.set()
            assert await resp.read() == b""
    finally:
        more.set()
        end.set()
    assert injector.rule_counts()["r"].injected == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_slow_live_body_cut_on_the_wire_hands_on_what_came_then_the_cut(
    serve: ServerFactory, clock: VirtualClock, chunked: bool
) -> None:
    """Before: the bytes read of a piece when the real body failed were thrown away (the caller
    met the cut without them); a chunked body cut during the read-ahead failed at
    ``session.get()``, with no head. Now the head comes at once, then every byte that came,
    then the cut, as aiohttp hands on what arrived before a cut."""
    close = asyncio.Event()
    sent = b"x" * 1000

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = 2**20
        await resp.prepare(request)
        await resp.write(sent)
        await close.wait()
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get("/cut", cut)
    host = await serve(app)
    # A piece is larger than what comes before the cut: the cut ends it part-way.
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=4096, chunk_delay_ms=10)), clock=clock
    )
    try:
        async with (
            timeout_after(clock, 60),  # (a guard: before, a chunked one's head never came)
            aiohttp.ClientSession(middlewares=[injector]) as session,
        ):
            resp = await session.get(f"http://{host}/cut")
            assert resp.status == 200
            assert isinstance(resp, _DribbledResponse)
            real = resp.source
            assert real is not None
            # The server cuts the connection once the feeding has taken the bytes it sent
            # from the real answer's stream (a bytes held there when the cut arrives are lost
            # to any reader, with or without the fault).
            await _until(lambda: real.content.total_bytes == len(sent) and not real.content._size)
            close.set()
            got, error = await _read_until_cut(resp)
            resp.release()
    finally:
        close.set()
    assert (got, error) == (sent, "ClientPayloadError")


CSDS_BODY_PIECE = 256


async def _read_under_timeout(
    sim: Simulator, injector: FaultInjector, timeout: aiohttp.ClientTimeout
) -> tuple[str, int]:
    """The failure a read of the CSDS answer meets under ``timeout`` on a plain session (or
    ``read whole``), and how many bytes it got before."""
    got = 0
    async with aiohttp.ClientSession(middlewares=[injector], timeout=timeout) as session:
        try:
            async with session.get(sim.url + CSDS) as resp:
                while chunk := await resp.content.read(CSDS_BODY_PIECE):
                    got += len(chunk)
                return "read whole", got
        except Exception as exc:
            return type(exc).__name__, got


@pytest.mark.parametrize(
    "timeout",
    [aiohttp.ClientTimeout(sock_read=0.5), aiohttp.ClientTimeout(total=0.5)],
    ids=["sock_read", "total"],
)
async def test_a_slow_body_meets_the_callers_aiohttp_timeouts_on_either_side(
    timeout: aiohttp.ClientTimeout,
) -> None:
    """Before: the body the injector paced carried no timer, so the caller's
    ``ClientTimeout`` (``sock_read``, ``total``) never struck it, where the simulator's slow
    body met it: the injector's caller read the whole body. Now both meet it, as aiohttp
    raises it (``SocketTimeoutError``, a ``TimeoutError``), before the body's end.

    On the real clock (aiohttp's timeouts run on the loop's time): 0.5 s against 5 s pauses."""
    fault = SlowBody(chunk_bytes=CSDS_BODY_PIECE, chunk_delay_ms=5000)
    real_clock = RealClock()
    async with Simulator(clock=real_clock) as sim:
        sim.faults.load([FaultRule("sim", fault, match=Match("GET", CSDS))])
        served = await _read_under_timeout(sim, FaultInjector(clock=real_clock), timeout)
        sim.faults.load([])
        rule = FaultRule("inj", fault, match=Match("GET", CSDS))
        injected = await _read_under_timeout(sim, FaultInjector([rule], clock=real_clock), timeout)
    expected = "SocketTimeoutError" if timeout.sock_read else "TimeoutError"
    assert served[0] == expected
    assert injected[0] == expected
    # Before the body's end: what came is at most the first piece (the next was 5 s away).
    assert served[1] <= CSDS_BODY_PIECE
    assert injected[1] <= CSDS_BODY_PIECE


async def test_a_slow_body_whose_pieces_come_within_the_read_timeout_reads_whole(
    serve: ServerFactory,
) -> None:
    """A guard: the read timeout is rearmed by each piece, as aiohttp's by each read from the
    socket (3 s against 0.1 s pauses, on the real clock), and ends with the body: a body whose
    pieces come well within it reads whole, and so does a read after its end."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**16, chunk_delay_ms=100)), clock=RealClock()
    )
    timeout = aiohttp.ClientTimeout(sock_read=3, total=60)
    async with aiohttp.ClientSession(middlewares=[injector], timeout=timeout) as session:
        for path in ("/big?mib=1", "/gz"):
            async with session.get(f"http://{host}{path}") as resp:
                body = await resp.read()
                assert resp.connection is None  # its end reached: the timeouts are off
                assert await resp.content.read() == b""
            assert len(body) == (2**20 if path.startswith("/big") else len(PAYLOAD))


async def test_a_slow_body_the_caller_holds_back_meets_no_read_timeout(
    serve: ServerFactory,
) -> None:
    """A guard: as aiohttp's, the read timeout measures the server, not the reader: it stops
    while the reader holds past its high-water mark what it was handed (1.5 s unread against a
    0.5 s ``sock_read``; the pieces 1 ms apart), and the body then reads whole."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**16, chunk_delay_ms=1)), clock=RealClock()
    )
    timeout = aiohttp.ClientTimeout(sock_read=0.5)
    async with (
        aiohttp.ClientSession(middlewares=[injector], timeout=timeout) as session,
        session.get(f"http://{host}/big?mib=1") as resp,
    ):
        flowing = resp.content._protocol.flowing  # type: ignore[attr-defined]
        await _until(lambda: not flowing.is_set(), pause=0.001)  # fed until held back
        await asyncio.sleep(1.5)
        assert len(await resp.read()) == 2**20


@pytest.mark.parametrize(
    ("fault", "retry"),
    [
        (SlowBody(chunk_bytes=16, chunk_delay_ms=5), False),
        (SlowBody(chunk_bytes=16, chunk_delay_ms=5), True),
        (TruncatedBody(keep_bytes=10), False),
    ],
    ids=["slow-live", "slow-retry-middleware", "truncated"],
)
async def test_a_body_fault_keeps_the_encoding_of_a_body_the_caller_decodes_itself(
    serve: ServerFactory, clock: VirtualClock, fault: Any, retry: bool
) -> None:
    """Before: with ``auto_decompress=False`` (the caller decodes the body itself, by its
    ``Content-Encoding``), the body handed on was still gzipped but its ``Content-Encoding``
    was dropped (and a ``SlowBody`` paced live was announced by no length): the caller could
    not tell it had to inflate it. Now the encoding is kept and the wire's length announced,
    as without the fault."""
    host = await serve(_payload_app())
    wire = GZIPPED
    seen = []
    for rules in ([], [FaultRule("r", fault)]):
        injector = FaultInjector.seeded(1, *rules, clock=clock)
        # (A buffering retry middleware reads the body paced from memory, whole.)
        middlewares: list[Any] = [RetryMiddleware(clock=clock)] if retry else []
        middlewares.append(injector)
        async with (
            aiohttp.ClientSession(middlewares=middlewares, auto_decompress=False) as session,
            session.get(f"http://{host}/gz") as resp,
        ):
            got = (await resp.read(), None) if retry else await _read_until_cut(resp)
            seen.append((resp.headers.get("Content-Encoding"), resp.headers.get("Content-Length")))
        if rules:
            assert injector.rule_counts()["r"].injected == 1
            if isinstance(fault, SlowBody):
                assert got == (wire, None)
                assert gzip.decompress(got[0]) == PAYLOAD
            else:
                assert got == (wire[:10], "ClientPayloadError")
    assert seen == [("gzip", str(len(wire)))] * 2


async def test_a_slow_live_body_dropped_unread_and_unreleased_stops_its_feeding(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Before: the task feeding a live body and the answer held each other, so an answer the
    caller dropped unread and unreleased left the task waiting for ever for a reader, holding
    the real connection, until a cyclic collection destroyed it pending ("Task was destroyed
    but it is pending!"). Now nothing holds the answer but its caller: dropped, it is collected
    at once, and the feeding stops, the real answer closed."""
    host = await serve(_payload_app())
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=2**16, chunk_delay_ms=1)), clock=clock
    )
    async with aiohttp.ClientSession(middlewares=[injector]) as session:
        resp = await session.get(f"http://{host}/big?mib=4")
        assert resp.status == 200
        assert isinstance(resp, _DribbledResponse)
        feeder, real = resp.feeder, resp.source
        assert feeder is not None
        assert real is not None
        # Virtual time enough for every piece's pause: fed until the unread body holds the
        # feeding back (aiohttp's high-water mark), where it waits for a reader.
        await clock.sleep(3600)
        assert not resp.content._protocol.flowing.is_set()  # type: ignore[attr-defined]
        assert not feeder.done()
        dropped = weakref.ref(resp)
        del resp
        assert dropped() is None  # collected at once: nothing but the caller held it
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        assert feeder.cancelled()
        assert real.closed
        assert real.connection is None


async def test_a_total_timeout_over_a_paced_live_body_ends_the_read() -> None:
    # The feeder and the caller's read share the request's total timer, which cancels one
    # task: the feeder was cancelled and the caller's read waited for ever.
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                await resp.write(b"x" * 10)
                await asyncio.sleep(0.2)
        return resp

    app = web.Application()
    app.router.add_get("/t", trickle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    injector = FaultInjector.seeded(
        1, FaultRule("r", SlowBody(chunk_bytes=10, chunk_delay_ms=100)), clock=RealClock()
    )
    try:
        async with (
            aiohttp.ClientSession(
                middlewares=[injector], timeout=aiohttp.ClientTimeout(total=1.5)
            ) as session,
            session.get(f"http://127.0.0.1:{port}/t") as resp,
        ):

            async def drain() -> None:
                while await resp.content.read(10):
                    pass

            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(drain(), 20)  # (the guard: a hang ends at 20 s)
            assert loop.time() - started < 15, "the read hung past the 1.5 s total timeout"
    finally:
        await runner.cleanup()
