"""HTTP calls in progress when the engine closes: they stop at once with EngineClosed.

Closing the engine closes its session. A call then in a retry pause, or with its attempt in
flight, must not wait out the pause and retry against a session that is gone (aiohttp answers
that with an AssertionError); it stops, typed, with the attempts it made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from le_transport import (
    Engine,
    EngineClosed,
    EventHooks,
    RetryPolicy,
    ServerStatusError,
    TransportError,
)
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import BEARER

RETRY = RetryPolicy(pauses=(5.0, 10.0, 15.0))


async def test_a_call_pausing_between_retries_stops_when_the_engine_closes(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/x", unavailable)
    host = await serve(app)
    pausing = asyncio.Event()
    hooks = EventHooks(on_retry=[lambda event: pausing.set()])
    engine = Engine({"svc": host}, scheme="http", clock=clock, retry=RETRY, hooks=hooks)
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
    await pausing.wait()  # the call is about to pause 5 s after the first 503
    started = clock.now()
    await engine.close()
    with pytest.raises(EngineClosed) as stopped:
        await call
    assert clock.now() == started  # no pause waited out
    assert [a.outcome.status for a in stopped.value.attempts] == [503]
    assert isinstance(stopped.value.__cause__, ServerStatusError)
    assert "closed during a pause" in str(stopped.value)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_call_in_flight_when_the_engine_closes_ends_typed_not_with_an_assertion(
    serve: ServerFactory, clock: VirtualClock, method: str
) -> None:
    """Waiting for the head of its answer: a POST got the connection's loss as a
    ConnectionFailed (logged as a failure of a request that is not idempotent), a GET a retry
    scheduled and then EngineClosed 'during a pause'; both stop at once now."""
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route(method, "/x", slow)
    host = await serve(app)
    engine = Engine({"svc": host}, scheme="http", clock=clock, retry=RETRY)
    await engine.start()
    call = asyncio.ensure_future(engine.request(method, "svc", "/x"))
    await arrived.wait()
    await engine.close()
    with pytest.raises(TransportError) as stopped:
        await call
    never.set()
    # The attempt failed with the session; the call stopped instead of retrying on it.
    assert isinstance(stopped.value, EngineClosed)
    assert "while attempt 1 was in flight" in str(stopped.value)
    assert len(stopped.value.attempts) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_call_in_flight_on_a_reused_connection_ends_with_engine_closed(
    serve: ServerFactory, clock: VirtualClock, method: str
) -> None:
    """On a pooled connection the protocol still held the previous answer's body, read whole,
    which was taken for "nothing waits here": the call waiting for its head got the
    connection's loss (a POST's ConnectionFailed; a failure counted by a breaker, a fleet's
    half-open probe's verdict) instead of EngineClosed."""
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def warm(request: web.Request) -> web.Response:
        return web.Response(text="warm")

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/warm", warm)
    app.router.add_route(method, "/x", slow)
    host = await serve(app)
    engine = Engine({"svc": host}, scheme="http", clock=clock, retry=RETRY)
    await engine.start()
    assert (await engine.request("GET", "svc", "/warm")).text() == "warm"
    call = asyncio.ensure_future(engine.request(method, "svc", "/x"))
    await arrived.wait()
    await engine.close()
    with pytest.raises(TransportError) as stopped:
        await call
    never.set()
    assert isinstance(stopped.value, EngineClosed)
    assert "while attempt 1 was in flight" in str(stopped.value)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_call_reading_a_body_when_the_engine_closes_stops_at_once(
    serve: ServerFactory, clock: VirtualClock, length: bool
) -> None:
    """aiohttp closes the connections in use but drops their payload first, so a body being
    read was never told: the call went on waiting after close() had returned, for its
    attempt timeout (30 s by default), or for ever without one (here: none, so that the
    virtual clock, which jumps ahead while the loop is idle, cannot end it first)."""
    reading = asyncio.Event()
    hold = asyncio.Event()

    async def dribble(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if length:
            resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"x")
        reading.set()
        await hold.wait()  # the rest never comes
        return resp

    head = asyncio.Event()

    async def head_arrived(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        response = await handler(request)  # returns once the answer's head is read
        head.set()
        return response

    app = web.Application()
    app.router.add_get("/x", dribble)
    host = await serve(app)
    policy = RetryPolicy(pauses=(5.0,), attempt_timeout=None)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=policy,
        wire_middlewares=[head_arrived],
    )
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
    await reading.wait()
    await head.wait()  # the client has the headers: its body is being read
    started = clock.now()
    await engine.close()
    try:
        done, _ = await asyncio.wait({call}, timeout=5)  # real seconds: a hang, not a speed
        assert done, "the call still waits on its body after close() returned"
        with pytest.raises(EngineClosed, match="while attempt 1 was in flight") as stopped:
            await call
    finally:
        hold.set()
        call.cancel()
    assert clock.now() == started
    assert [a.outcome.kind.value for a in stopped.value.attempts] == ["connection_lost"]


async def test_a_call_after_close_is_refused_with_engine_closed(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    app = web.Application()
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        pass
    with pytest.raises(EngineClosed, match="the engine is closed"):
        await engine.request("GET", "svc", "/x")


class _GatedDomains(StaticDomains):
    """Resolves only once ``gate`` is set: a call waiting on the Domain API."""

    def __init__(self, hosts: dict[str, str], gate: asyncio.Event, asked: asyncio.Event) -> None:
        super().__init__(hosts)
        self._gate = gate
        self._asked = asked

    async def resolve(self, service: str) -> str:
        self._asked.set()
        await self._gate.wait()
        return await super().resolve(service)


async def _ok_host(serve: ServerFactory) -> str:
    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/x", ok)
    return await serve(app)


async def test_a_call_resolving_its_host_when_the_engine_closes_ends_with_engine_closed(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # It used to reach aiohttp's closed session and fail with a bare RuntimeError.
    gate, asked = asyncio.Event(), asyncio.Event()
    domains = _GatedDomains({"svc": await _ok_host(serve)}, gate, asked)
    engine = Engine(domains, scheme="http", clock=clock)
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
    await asked.wait()
    await engine.close()
    gate.set()
    with pytest.raises(EngineClosed, match="the engine is closed"):
        await call


async def test_a_call_on_a_session_its_owner_closed_ends_with_engine_closed(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await _ok_host(serve)
    session = aiohttp.ClientSession()
    async with Engine({"svc": host}, scheme="http", clock=clock, session=session) as engine:
        await session.close()
        with pytest.raises(EngineClosed, match="session is closed"):
            await engine.request("GET", "svc", "/x")


def _entry_points(engine: Engine) -> dict[str, Callable[[], object]]:
    """Every public entry point of an engine, called as a user would."""
    return {
        "request": lambda: engine.request("GET", "svc", "/x"),
        "request(recover=True)": lambda: engine.request("GET", "svc", "/x", recover=True),
        "request_json": lambda: engine.request_json("GET", "svc", "/x"),
        "websocket": lambda: engine.websocket("svc", "/x"),
        "login": lambda: engine.login(),
        "url_for": lambda: engine.url_for("svc", "/x"),
        "start": lambda: engine.start(),
        "keepalive": lambda: engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "svc", fields={"account": "1", "chat_id": "c"}
        ),
    }


@pytest.mark.parametrize("entry", list(_entry_points(Engine({}))))
@pytest.mark.parametrize("started", [True, False], ids=["started", "never-started"])
async def test_every_entry_point_of_a_closed_engine_raises_engine_closed(
    clock: VirtualClock, entry: str, started: bool
) -> None:
    """As the README says. They used to raise a bare TransportError (websocket, start,
    keepalive), succeed (url_for, login with a static bearer), or say "not started"."""
    engine = Engine({"svc": "127.0.0.1:9"}, scheme="http", clock=clock, auth=StaticBearer(BEARER))
    if started:
        await engine.start()
    await engine.close()
    with pytest.raises(EngineClosed, match="closed"):
        await _called(_entry_points(engine)[entry])


async def _called(entry: Callable[[], object]) -> object:
    """What ``entry`` returns, awaited if it is a coroutine."""
    result = entry()
    return await result if asyncio.iscoroutine(result) else result
