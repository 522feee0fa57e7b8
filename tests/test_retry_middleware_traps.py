"""The seven traps of aiohttp's client middleware contract (STYLE.md), each with our answer.

docs/architecture.md ("The aiohttp middleware contract, and our answers") states the answers;
each test here shows the trap is real where it can, and that our stack avoids it.
"""

from __future__ import annotations

import contextlib

import aiohttp
import attrs
import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web

from le_transport import (
    ConnectionFailed,
    Engine,
    RealClock,
    RetriesExhausted,
    RetryMiddleware,
    RetryPolicy,
)
from le_transport.middleware import CallContext, call_context, current_call
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_retry_middleware import Script, free_port, raw_server, reset_before_headers

NO_PAUSES = RetryPolicy(pauses=(0.0, 0.0, 0.0))


# 1. ClientTimeout.total spans every attempt made inside a middleware ----------------------


async def test_engine_session_has_no_total_timeout_so_pauses_cannot_eat_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host = await serve(Script(503, 503, 503, 200).app())
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        assert engine.session.timeout.total is None
        resp = await engine.request("GET", "svc", "/x")
    assert resp.status == 200
    assert clock.now() == 30.0


async def test_a_foreign_session_total_timeout_spans_every_attempt_and_pause(
    serve: ServerFactory,
) -> None:
    """The trap itself: total=0.2 s cannot fit a schedule whose pauses add up to 0.45 s.

    Real time on purpose (aiohttp's total runs on the loop's clock); the outcome does not
    depend on machine speed, because a slower machine only makes the total run out sooner.
    """
    script = Script(503)
    host = await serve(script.app())
    mw = RetryMiddleware(policy=RetryPolicy(pauses=(0.15, 0.15, 0.15)), clock=RealClock())
    async with aiohttp.ClientSession(
        middlewares=[mw], timeout=aiohttp.ClientTimeout(total=0.2)
    ) as session:
        with pytest.raises(TimeoutError):
            async with session.get(f"http://{host}/x"):
                pass  # pragma: no cover - the total runs out first
    assert script.hits < 4


# 2. The chain runs again on every redirect hop --------------------------------------------


async def test_each_redirect_hop_is_its_own_attempt_loop_on_the_same_call(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hits_a: list[int] = []

    async def to_b(request: web.Request) -> web.Response:
        hits_a.append(1)
        raise web.HTTPFound("/b")

    target = Script(503, 200)
    app = web.Application()
    app.router.add_get("/a", to_b)
    app.router.add_get("/b", target.handle)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/a")
    assert resp.status == 200
    assert resp.url.endswith("/b")
    assert len(hits_a) == 1
    assert target.hits == 2
    assert [(a.attempt, a.outcome.status, a.pause) for a in resp.attempts] == [
        (1, 302, None),
        (1, 503, 5.0),
        (2, 200, None),
    ]
    assert clock.now() == 5.0


# 3. aiohttp's own replay of idempotent requests after a disconnect ------------------------


async def test_aiohttp_alone_replays_a_get_after_a_disconnect() -> None:
    """The trap: with no middleware, one GET reaches a resetting server twice."""
    async with (
        raw_server(reset_before_headers) as (host, hits),
        aiohttp.ClientSession() as session,
    ):
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://{host}/x")
    assert len(hits) == 2


async def test_a_get_with_four_attempts_reaches_a_resetting_server_exactly_four_times(
    clock: VirtualClock,
) -> None:
    async with (
        raw_server(reset_before_headers) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock, retry=NO_PAUSES) as engine,
    ):
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
    assert len(hits) == 4  # not 8: no aiohttp exception leaves the middleware
    assert len(info.value.attempts) == 4


# 4. Connector errors mean the request never left ------------------------------------------


async def test_connector_errors_are_never_sent_and_only_they_let_a_post_retry(
    clock: VirtualClock,
) -> None:
    async with Engine(
        {"svc": f"127.0.0.1:{free_port()}"}, scheme="http", clock=clock, retry=NO_PAUSES
    ) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("POST", "svc", "/x", json={})
    assert isinstance(info.value.last, ConnectionFailed)
    assert info.value.last.never_sent is True
    assert len(info.value.attempts) == 4


# 5. ws_connect sends its upgrade through the session's middlewares ------------------------


async def test_a_websocket_upgrade_passes_through_the_retry_middleware_unretried(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(503)
    host = await serve(script.app("/ws"))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await engine.session.ws_connect(f"http://{host}/ws")
    assert info.value.status == 503
    assert script.hits == 1
    assert clock.now() == 0.0


# 6. A middleware that makes its own requests must pass middlewares=() ---------------------


async def test_a_middleware_making_its_own_request_with_no_middlewares_does_not_recurse(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    login = Script(200)
    api = Script(200)
    app = web.Application()
    app.router.add_post("/login", login.handle)
    app.router.add_get("/api", api.handle)
    host = await serve(app)

    @attrs.frozen(eq=False)
    class LogsInFirst:
        session: list[aiohttp.ClientSession]
        calls: list[str] = attrs.field(factory=list)

        async def __call__(
            self, request: ClientRequest, handler: ClientHandlerType
        ) -> ClientResponse:
            self.calls.append(request.url.path)
            async with self.session[0].post(
                f"http://{host}/login", json={"user": "me"}, middlewares=()
            ) as resp:
                request.headers["Authorization"] = f"Bearer {resp.status}"
            return await handler(request)

    holder: list[aiohttp.ClientSession] = []
    auth = LogsInFirst(holder)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, outer_middlewares=[auth]
    ) as engine:
        holder.append(engine.session)
        resp = await engine.request("GET", "svc", "/api")
    assert resp.status == 200
    assert auth.calls == ["/api"]
    assert login.hits == 1
    assert api.hits == 1


@pytest.mark.parametrize(
    ("placement", "own_context"),
    [("outer", True), ("wire", True), ("wire", False)],
    ids=["outer-own-context", "wire-own-context", "wire-no-context"],
)
async def test_a_middleware_logging_in_through_the_retry_middleware_is_a_call_of_its_own(
    placement: str, own_context: bool, serve: ServerFactory, clock: VirtualClock
) -> None:
    """As the providers do: ``middlewares=(retry,)`` under a context of their own. The login
    gets its own schedule and records and never pollutes the outer call's; from inside the
    retry loop (a wire middleware) even a login without a context of its own is its own call."""
    login = Script(429, 200)  # a 429 POST is retried: the server did not process it
    api = Script(200)
    app = web.Application()
    app.router.add_post("/login", login.handle)
    app.router.add_get("/api", api.handle)
    host = await serve(app)
    holder: list[Engine] = []

    @attrs.frozen(eq=False)
    class LogsInFirst:
        async def __call__(
            self, request: ClientRequest, handler: ClientHandlerType
        ) -> ClientResponse:
            engine = holder[0]
            [retry] = [m for m in engine.middlewares if isinstance(m, RetryMiddleware)]
            login_ctx = CallContext(service="login")
            with call_context(login_ctx) if own_context else contextlib.nullcontext():
                async with engine.session.post(
                    f"http://{host}/login", json={}, middlewares=(retry,)
                ) as resp:
                    assert resp.status == 200
            if own_context:
                assert [a.pause for a in login_ctx.attempts] == [5.0, None]
            return await handler(request)

    mw = LogsInFirst()
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        outer_middlewares=[mw] if placement == "outer" else [],
        wire_middlewares=[mw] if placement == "wire" else [],
    )
    holder.append(engine)
    async with engine:
        resp = await engine.request("GET", "svc", "/api", deadline=100.0)
    assert resp.status == 200
    assert [(a.outcome.status, a.pause) for a in resp.attempts] == [(200, None)]
    assert login.hits == 2
    assert api.hits == 1


async def test_the_call_context_is_scoped_to_its_call() -> None:
    assert current_call() is None
    ctx = CallContext(service="svc")
    with call_context(ctx):
        assert current_call() is ctx
        inner = CallContext(service="other")
        with call_context(inner):
            assert current_call() is inner
        assert current_call() is ctx
    assert current_call() is None


# 7. Middlewares must be hashable ----------------------------------------------------------


async def test_every_middleware_of_the_stack_is_hashable_and_the_session_builds_its_chain(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    @attrs.frozen(eq=False)
    class Tag:
        async def __call__(
            self, request: ClientRequest, handler: ClientHandlerType
        ) -> ClientResponse:
            request.headers["X-Tag"] = "1"
            return await handler(request)

    tags: list[str] = []

    async def seen(request: web.Request) -> web.Response:
        tags.append(request.headers.get("X-Tag", ""))
        return web.Response(status=200)

    host = await serve(Script(seen).app())
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        outer_middlewares=[Tag()],
        wire_middlewares=[Tag()],
    )
    for mw in engine.middlewares:
        hash(mw)
    assert len(set(engine.middlewares)) == 3
    async with engine:
        assert (await engine.request("GET", "svc", "/x")).status == 200
        assert (await engine.request("GET", "svc", "/x")).status == 200
    assert tags == ["1", "1"]


def test_a_plain_attrs_define_middleware_would_not_be_hashable() -> None:
    """The trap: ``@attrs.define`` (eq=True) sets ``__hash__ = None``."""

    @attrs.define
    class Plain:
        n: int = 0

    with pytest.raises(TypeError, match="unhashable"):
        hash(Plain())


def test_retry_middleware_instances_hash_by_identity() -> None:
    a, b = RetryMiddleware(), RetryMiddleware()
    assert a != b
    assert len({a, b, a}) == 2
    assert {a: "a", b: "b"}[b] == "b"
