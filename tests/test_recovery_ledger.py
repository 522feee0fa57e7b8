"""What the outer loop sends again: one verdict per failure (``RequestError.repeat``), one
answer per call (``CallContext.may_resend``, collected by the run's ``CallLedger``).

A processed POST is never sent again, whichever request of its call failed (its redirect hop,
the hop's login); a Domain API failure final by nature is not looped on; a POST that provably
was not processed (401) is recovered; a POST gathered with a failing call is not sent twice.
Real loopback servers, virtual time."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from le_transport import (
    BackoffPolicy,
    ConsumerJwt,
    Engine,
    EventHooks,
    Response,
    RetryPolicy,
    StateEvent,
)
from le_transport.errors import (
    AttemptRecord,
    CircuitOpen,
    ClientStatusError,
    ConnectionFailed,
    DomainResolutionError,
    Repeat,
    RequestError,
    RetriesExhausted,
    ServerStatusError,
)
from le_transport.middleware.context import (
    _CALL_LEDGER,
    CallContext,
    close_ledger,
    open_ledger,
    record_call,
)
from le_transport.policies import Classifier, Outcome, OutcomeKind
from le_transport.policies.classify import repeat_verdict, unprocessed
from le_transport.providers import CsdsDomains, StaticDomains
from le_transport.recovery import is_recoverable, repeat_of
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: An outer loop without jitter: its pauses are exact (20, 40, 80 s), three re-logins at most.
RELOGIN = BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, max_attempts=3)
#: A schedule that never retries: the first failure spends it.
NO_RETRY = RetryPolicy(pauses=())


def _jwt() -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': 9999999999})}.sig"


def _hooks(events: list[StateEvent]) -> EventHooks:
    return EventHooks(on_state=(events.append,))


def _relogins(events: list[StateEvent]) -> int:
    return [e.name for e in events].count("relogin_scheduled")


def _orders_app(
    orders: list[bytes], show: Callable[[web.Request], Awaitable[web.Response]]
) -> web.Application:
    """POST /orders creates an order and answers 303 to it; ``show`` answers the GET hop."""

    async def create(request: web.Request) -> web.Response:
        orders.append(await request.read())
        raise web.HTTPSeeOther(location=f"/orders/{len(orders)}")

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/{id}", show)
    return app


# -- D1: a POST answered 303 is not sent again when a later request of its call fails ----------


async def test_a_post_answered_303_is_not_sent_again_when_its_get_hop_spends_its_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The hop's schedule, judged by the hop's own method (a GET), was spent: a plain
    RetriesExhausted, which recover=True took for "send the call again": two orders."""
    orders: list[bytes] = []
    hops: list[float] = []

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        return web.Response(status=503) if len(hops) == 1 else web.json_response({})

    events: list[StateEvent] = []
    host = await serve(_orders_app(orders, show))
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=NO_RETRY,
        recovery=RELOGIN,
        hooks=_hooks(events),
    ) as engine:
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("POST", "svc", "/orders", json={"item": 1}, recover=True)
    assert len(orders) == 1
    assert hops == [0.0]
    assert _relogins(events) == 0
    assert info.value.repeat is Repeat.RETRYABLE  # the failure alone would be repeated


async def test_a_post_answered_303_is_not_sent_again_with_the_default_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The same with the engine's default 5/10/15 s schedule: 30 s later, a second order."""
    orders: list[bytes] = []
    hops: list[float] = []

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        return web.Response(status=503) if len(hops) <= 4 else web.json_response({})

    host = await serve(_orders_app(orders, show))
    async with Engine({"svc": host}, scheme="http", clock=clock, recovery=RELOGIN) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("POST", "svc", "/orders", json={"item": 1}, recover=True)
    assert len(orders) == 1
    assert hops == [0.0, 5.0, 15.0, 30.0]
    assert clock.now() == 30.0


async def test_a_post_answered_303_is_not_sent_again_when_its_hops_idempotent_login_fails(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The hop met a 401, and its re-login (a consumer signup, whose own request is
    idempotent) a 503: a RetriesExhausted, recoverable whatever the login watch had noted."""
    logins: list[float] = []
    orders: list[bytes] = []
    hops: list[float] = []

    async def signup(request: web.Request) -> web.Response:
        logins.append(clock.now())
        return web.Response(status=503) if len(logins) == 2 else web.json_response({"jwt": _jwt()})

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        return web.Response(status=401) if len(hops) == 1 else web.json_response({})

    app = _orders_app(orders, show)
    app.router.add_post("/api/account/123/signup", signup)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=NO_RETRY,
        auth=ConsumerJwt("123", domains=domains),  # signup: idempotent
        recovery=RELOGIN,
    ) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("POST", "svc", "/orders", json={"item": 1}, recover=True)
    assert len(orders) == 1
    assert len(logins) == 2
    assert hops == [0.0]


async def test_a_recover_call_inside_recovery_run_is_not_sent_again_by_the_outer_loop(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """recover=True inside the caller's own recovery.run: the inner loop refuses to send the
    processed POST again; the outer one, whose ledger the inner loop's calls would not reach,
    must refuse too."""
    orders: list[bytes] = []
    hops: list[float] = []

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        return web.Response(status=503) if len(hops) == 1 else web.json_response({})

    host = await serve(_orders_app(orders, show))
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.recovery.run(
                lambda: engine.request("POST", "svc", "/orders", json={"item": 1}, recover=True)
            )
    assert len(orders) == 1
    assert _CALL_LEDGER.get() is None


# -- D2: a Domain API failure final by nature is not looped on ---------------------------------


async def test_a_domain_api_answer_the_classifier_makes_final_is_not_looped_on(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 501 the Classifier makes final, from the Domain API, became a DomainResolutionError
    that recover=True looped on: 6 fetches in 620 s (for ever with an unlimited policy)."""
    fetches: list[float] = []

    async def csds(request: web.Request) -> web.Response:
        fetches.append(clock.now())
        return web.Response(status=501)

    app = web.Application()
    app.router.add_get("/api/account/123/service/baseURI.json", csds)
    host = await serve(app)
    domains = CsdsDomains("123", csds_host=host, scheme="http")
    final_501 = RetryPolicy(pauses=(), classifier=Classifier(final_statuses={501}))
    events: list[StateEvent] = []
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=final_501,
        hooks=_hooks(events),
        recovery=BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, max_attempts=5),
    ) as engine:
        with pytest.raises(DomainResolutionError) as info:
            await engine.request("GET", "svc", "/x", recover=True)
    assert fetches == [0.0]
    assert _relogins(events) == 0
    assert repeat_of(info.value) is Repeat.FINAL


def _domain_error(cause: BaseException) -> DomainResolutionError:
    error = DomainResolutionError("the Domain API failed", account="123")
    error.__cause__ = cause
    return error


def _judged(error: RequestError, repeat: Repeat) -> RequestError:
    error.repeat = repeat
    return error


@pytest.mark.parametrize(
    ("cause", "repeat"),
    [
        (_judged(ServerStatusError("501", status=501), Repeat.FINAL), Repeat.FINAL),
        (_judged(ConnectionFailed("cert", never_sent=True), Repeat.FINAL), Repeat.FINAL),
        (ClientStatusError("400", status=400), Repeat.FINAL),
        (ServerStatusError("503", status=503), Repeat.RETRYABLE),
        (RetriesExhausted("spent", last=ServerStatusError("503", status=503)), Repeat.RETRYABLE),
        # A 4xx the schedule retried (a 409 the Classifier retries) is an outage.
        (
            _domain_error(RetriesExhausted("spent", last=ClientStatusError("409", status=409))),
            Repeat.RETRYABLE,
        ),
        (ValueError("an answer that makes no sense"), Repeat.RETRYABLE),
    ],
)
def test_a_domain_api_failure_is_final_when_its_cause_is_final_before_any_retry(
    cause: BaseException, repeat: Repeat
) -> None:
    error = _domain_error(cause)
    assert repeat_of(error) is repeat
    assert is_recoverable(error) is (repeat is Repeat.RETRYABLE)


# -- C1: a POST answered 401 was not processed ------------------------------------------------


async def test_a_post_answered_401_whose_relogin_meets_an_outage_is_recovered(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 401 proves the POST was not processed (the auth middleware replays it for that very
    reason), but "an attempt was made" ended the call when the re-login met a 503."""
    logins: list[float] = []
    posts: list[float] = []

    async def authenticate(request: web.Request) -> web.Response:
        logins.append(clock.now())
        return web.Response(status=503) if len(logins) == 2 else web.json_response({"jwt": _jwt()})

    async def create(request: web.Request) -> web.Response:
        posts.append(clock.now())
        return web.Response(status=401) if len(posts) == 1 else web.json_response({}, status=201)

    app = web.Application()
    app.router.add_post("/api/account/123/authenticate", authenticate)
    app.router.add_post("/orders", create)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=NO_RETRY,
        auth=ConsumerJwt("123", domains=domains, auth_code="code-1"),
        recovery=RELOGIN,
    ) as engine:
        resp = await engine.request("POST", "svc", "/orders", json={}, recover=True)
    assert resp.status == 201
    assert posts == [0.0, 20.0]
    assert logins == [0.0, 0.0, 20.0]


# -- C2: calls gathered in one recovery callable -----------------------------------------------


async def test_a_gathered_post_that_succeeded_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """recovery.run(lambda: gather(POST, GET)): the GET's spent schedule ran the callable
    again, and the POST, which had succeeded, was sent a second time."""
    posts: list[float] = []
    gets: list[float] = []

    async def create(request: web.Request) -> web.Response:
        posts.append(clock.now())
        return web.json_response({}, status=201)

    async def show(request: web.Request) -> web.Response:
        gets.append(clock.now())
        return web.Response(status=503) if len(gets) == 1 else web.json_response({})

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/x", show)
    host = await serve(app)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.recovery.run(
                lambda: asyncio.gather(
                    engine.request("POST", "svc", "/orders", json={}),
                    engine.request("GET", "svc", "/x"),
                )
            )
    assert posts == [0.0]
    assert gets == [0.0]


async def test_gathered_calls_that_may_all_be_sent_again_are_recovered(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The ledger refuses only what may have been acted on: a PUT and a GET, gathered, are
    run again after the GET's spent schedule."""
    puts: list[float] = []
    gets: list[float] = []

    async def put(request: web.Request) -> web.Response:
        puts.append(clock.now())
        return web.json_response({})

    async def show(request: web.Request) -> web.Response:
        gets.append(clock.now())
        return web.Response(status=503) if len(gets) == 1 else web.json_response({})

    app = web.Application()
    app.router.add_put("/orders/1", put)
    app.router.add_get("/x", show)
    host = await serve(app)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:
        answers = await engine.recovery.run(
            lambda: asyncio.gather(
                engine.request("PUT", "svc", "/orders/1", json={}),
                engine.request("GET", "svc", "/x"),
            )
        )
    assert [a.status for a in answers] == [200, 200]
    assert puts == [0.0, 20.0]
    assert gets == [0.0, 20.0]


async def test_a_gathered_post_still_in_flight_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """gather does not wait for the others once one call failed: a POST still on the wire
    has recorded no attempt yet, and must not count as "nothing of it sent"."""
    posts: list[float] = []
    gets: list[float] = []
    arrived, release = asyncio.Event(), asyncio.Event()

    async def create(request: web.Request) -> web.Response:
        posts.append(clock.now())
        if len(posts) == 1:
            arrived.set()
            await release.wait()
        return web.json_response({}, status=201)

    async def show(request: web.Request) -> web.Response:
        gets.append(clock.now())
        if len(gets) == 1:
            await arrived.wait()  # the POST is on the wire when the GET fails
            return web.Response(status=503)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/x", show)
    host = await serve(app)
    started: list[asyncio.Task[Response]] = []
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:

        def call() -> Awaitable[tuple[Response, Response]]:
            post = asyncio.ensure_future(engine.request("POST", "svc", "/orders", json={}))
            started.append(post)
            return asyncio.gather(post, engine.request("GET", "svc", "/x"))

        try:
            with pytest.raises(RetriesExhausted):
                await engine.recovery.run(call)
        finally:
            release.set()
            await asyncio.gather(*started, return_exceptions=True)
    assert len(posts) == 1
    assert gets == [0.0]


# -- what the engine records, what the errors say ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "retry_after", "repeat"),
    [
        ("POST", 500, None, Repeat.RETRYABLE_IF_IDEMPOTENT),
        ("GET", 503, None, Repeat.RETRYABLE),
        ("POST", 429, "30", Repeat.RETRYABLE),
        ("GET", 404, None, Repeat.FINAL),
    ],
)
async def test_an_answer_met_past_the_schedule_leaves_its_attempt_record(
    serve: ServerFactory,
    clock: VirtualClock,
    method: str,
    status: int,
    retry_after: str | None,
    repeat: Repeat,
) -> None:
    """Through a caller's session (no retry middleware) the failed answer left no attempt
    record unless it carried a Retry-After: the call looked as if nothing of it was sent."""

    async def answer(request: web.Request) -> web.Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_route(method, "/x", answer)
    host = await serve(app)
    async with (
        aiohttp.ClientSession() as session,
        Engine({"svc": host}, scheme="http", clock=clock, session=session) as engine,
    ):
        with pytest.raises((ServerStatusError, ClientStatusError)) as info:
            await engine.request(method, "svc", "/x")
    error = info.value
    [record] = error.attempts
    assert record.attempt == 1
    assert record.outcome.kind is OutcomeKind.RESPONSE
    assert record.outcome.status == status
    assert record.pause == (None if retry_after is None else 30.0)
    assert error.repeat is repeat


@pytest.mark.parametrize(
    ("settings", "repeat"),
    [
        ((), Repeat.RETRYABLE),
        ((("decided", True),), Repeat.FINAL),
        ((("decided", True), ("repeat_unsafe", True)), Repeat.RETRYABLE_IF_IDEMPOTENT),
        ((("repeat_unsafe", True), ("decided", True)), Repeat.RETRYABLE_IF_IDEMPOTENT),
        ((("decided", True), ("repeat_unsafe", False)), Repeat.FINAL),
        ((("repeat_unsafe", False), ("decided", True)), Repeat.FINAL),
        ((("repeat_unsafe", True), ("repeat_unsafe", False)), Repeat.FINAL),
        ((("decided", True), ("decided", False)), Repeat.RETRYABLE),
        ((("repeat_unsafe", True), ("decided", False)), Repeat.RETRYABLE),
    ],
)
def test_decided_and_repeat_unsafe_set_the_one_verdict_in_either_order(
    settings: tuple[tuple[str, bool], ...], repeat: Repeat
) -> None:
    error = ServerStatusError("503", status=503)
    for name, value in settings:
        setattr(error, name, value)
    assert error.repeat is repeat


@pytest.mark.parametrize(
    ("repeat", "decided", "repeat_unsafe"),
    [
        (Repeat.RETRYABLE, False, False),
        (Repeat.RETRYABLE_IF_IDEMPOTENT, True, True),
        (Repeat.FINAL, True, False),
    ],
)
def test_decided_and_repeat_unsafe_read_the_one_verdict(
    repeat: Repeat, decided: bool, repeat_unsafe: bool
) -> None:
    error = ConnectionFailed("reset")
    error.repeat = repeat
    assert error.decided is decided
    assert error.repeat_unsafe is repeat_unsafe


@pytest.mark.parametrize(
    ("outcome", "idempotent", "repeat"),
    [
        (Outcome.response(503), False, Repeat.RETRYABLE_IF_IDEMPOTENT),
        (
            Outcome.failure(OutcomeKind.CONNECTION_LOST, "reset"),
            False,
            Repeat.RETRYABLE_IF_IDEMPOTENT,
        ),
        (Outcome.failure(OutcomeKind.TIMEOUT, "slow"), False, Repeat.RETRYABLE_IF_IDEMPOTENT),
        (Outcome.response(501), True, Repeat.FINAL),  # the Classifier below makes it final
        (Outcome.response(404), False, Repeat.FINAL),
        (Outcome.failure(OutcomeKind.TLS_REJECTED, "cert"), True, Repeat.FINAL),
    ],
)
def test_the_schedules_verdict_says_whether_only_idempotency_stopped_it(
    outcome: Outcome, idempotent: bool, repeat: Repeat
) -> None:
    classifier = Classifier(final_statuses={501})
    assert repeat_verdict(classifier, outcome, idempotent=idempotent) is repeat


@pytest.mark.parametrize(
    ("outcome", "unacted"),
    [
        (Outcome.failure(OutcomeKind.CONNECT_FAILED, "refused"), True),
        (Outcome.failure(OutcomeKind.TLS_REJECTED, "cert"), True),
        (Outcome.response(401), True),
        (Outcome.response(429), True),
        (Outcome.response(201), False),
        (Outcome.response(303), False),
        (Outcome.response(500), False),
        (Outcome.response(404), False),
        (Outcome.failure(OutcomeKind.CONNECTION_LOST, "reset"), False),
        (Outcome.failure(OutcomeKind.TIMEOUT, "slow"), False),
    ],
)
def test_a_post_may_be_sent_again_only_if_no_attempt_of_it_was_acted_on(
    outcome: Outcome, unacted: bool
) -> None:
    assert unprocessed(outcome) is unacted
    post = CallContext("svc")
    record_call(post, "POST")  # no ledger: nothing noted, nothing set
    assert not hasattr(post, "first_method")
    post.first_method = "POST"
    post.attempts.append(AttemptRecord(1, Outcome.failure(OutcomeKind.CONNECT_FAILED, "x"), 0, 0))
    post.attempts.append(AttemptRecord(2, outcome, None, 5.0))
    assert post.may_resend() is unacted
    # Idempotent by its method, or by the caller's word: always.
    get = CallContext("svc")
    get.first_method = "GET"
    get.attempts.append(AttemptRecord(1, outcome, None, 0.0))
    assert get.may_resend()
    marked = CallContext("svc", idempotent=True)
    marked.first_method = "POST"
    marked.attempts.append(AttemptRecord(1, outcome, None, 0.0))
    assert marked.may_resend()


def test_a_post_still_in_its_retry_loop_may_not_be_sent_again() -> None:
    post = CallContext("svc", active=True)
    post.first_method = "POST"
    assert not post.may_resend()
    post.active = False
    assert post.may_resend()


def test_a_nested_ledger_hands_its_calls_to_the_outer_one_when_it_closes() -> None:
    outer, outer_token = open_ledger()
    try:
        inner, inner_token = open_ledger()
        post = CallContext("svc")
        try:
            record_call(post, "POST")
            assert inner.calls == [post]
            assert outer.calls == []
        finally:
            close_ledger(inner, inner_token)
        assert _CALL_LEDGER.get() is outer
        assert outer.calls == [post]
        assert inner.calls == []
    finally:
        close_ledger(outer, outer_token)
    assert outer.calls == []
    assert _CALL_LEDGER.get() is None


@pytest.mark.parametrize(
    ("error", "repeat"),
    [
        (RetriesExhausted("spent", last=ServerStatusError("503", status=503)), Repeat.RETRYABLE),
        (CircuitOpen("open", retry_at=10.0), Repeat.RETRYABLE),
        (ConnectionFailed("vault down", never_sent=True), Repeat.RETRYABLE),
        (
            _judged(ServerStatusError("503", status=503), Repeat.RETRYABLE_IF_IDEMPOTENT),
            Repeat.RETRYABLE_IF_IDEMPOTENT,
        ),
        (ClientStatusError("404", status=404), Repeat.FINAL),
        (ValueError("not a transport error"), Repeat.FINAL),
    ],
)
def test_the_verdict_of_a_failure_is_read_once(error: BaseException, repeat: Repeat) -> None:
    assert repeat_of(error) is repeat
    assert is_recoverable(error) is (repeat is Repeat.RETRYABLE)
