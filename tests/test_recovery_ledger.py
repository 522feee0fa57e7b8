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
from le_transport.middleware import RetryMiddleware
from le_transport.middleware.context import (
    _CALL_LEDGER,
    VOUCHED,
    CallContext,
    CallLedger,
    close_ledger,
    open_ledger,
    record_call,
)
from le_transport.policies import Classifier, Outcome, OutcomeKind
from le_transport.policies.classify import repeat_verdict, unprocessed
from le_transport.providers import CsdsDomains, StaticDomains
from le_transport.recovery import _may_repeat, is_recoverable, repeat_of
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


def _failing_first(
    hops: list[float], clock: VirtualClock
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET hop's handler answering 503 the first time and 200 after, noting when it ran."""

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        return web.Response(status=503) if len(hops) == 1 else web.json_response({})

    return show


# -- D1: a POST answered 303 is not sent again when a later request of its call fails ----------


async def test_a_post_answered_303_is_not_sent_again_when_its_get_hop_spends_its_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The hop's schedule, judged by the hop's own method (a GET), was spent: a plain
    RetriesExhausted, which recover=True took for "send the call again": two orders."""
    orders: list[bytes] = []
    hops: list[float] = []
    events: list[StateEvent] = []
    host = await serve(_orders_app(orders, _failing_first(hops, clock)))
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
    host = await serve(_orders_app(orders, _failing_first(hops, clock)))
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
        ((("repeat_unsafe", True), ("repeat_unsafe", False)), Repeat.RETRYABLE),
        ((("repeat_unsafe", True),), Repeat.RETRYABLE),
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


def test_a_nested_ledger_records_each_call_in_the_outer_one_at_once() -> None:
    """R2: a call recorded inside an inner run is in the outer ledger while it is in flight
    (it reached the outer one only when the inner ledger closed), and its end is told to
    both."""
    outer, outer_token = open_ledger()
    try:
        inner, inner_token = open_ledger()
        post = CallContext("svc")
        try:
            record_call(post, "POST")
            assert inner.calls == {post}
            assert outer.calls == {post}
            assert not outer.may_resend()  # in flight
        finally:
            close_ledger(inner, inner_token)
        assert _CALL_LEDGER.get() is outer
        assert outer.calls == {post}
        assert inner.calls == set()
        post.attempts.append(AttemptRecord(1, Outcome.response(201), None, 0.0))
        inner.finish(post)  # told through the closed inner one: still reaches the outer
        assert outer.calls == set()
        assert outer.unsafe
    finally:
        close_ledger(outer, outer_token)
    assert outer.calls == set()
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


# -- the review of the ledger: requests it did not see, or saw too late ------------------------


def _post_get_app(
    clock: VirtualClock,
    posts: list[float],
    gets: list[float],
    *,
    post_status: int = 201,
    hold_post: asyncio.Event | None = None,
    arrived: asyncio.Event | None = None,
) -> web.Application:
    """POST /orders (answered ``post_status`` the first time, 201 after; held until
    ``hold_post`` is set, ``arrived`` set as it comes in); GET /x answered 503 the first
    time (once ``arrived`` is set, if given), 200 after."""

    async def create(request: web.Request) -> web.Response:
        posts.append(clock.now())
        if len(posts) == 1:
            if arrived is not None:
                arrived.set()
            if hold_post is not None:
                await hold_post.wait()
            return web.json_response({}, status=post_status)
        return web.json_response({}, status=201)

    async def show(request: web.Request) -> web.Response:
        gets.append(clock.now())
        if len(gets) == 1:
            if arrived is not None:
                await arrived.wait()
            return web.Response(status=503)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/x", show)
    app.router.add_get("/me", _ok)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({})


@pytest.mark.parametrize("mine", [False, True], ids=["engine-session", "own-retry-session"])
async def test_a_post_the_ledger_did_not_record_answered_503_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock, mine: bool
) -> None:
    """R7: a recorded GET, then a POST on ``engine.session`` (or a caller's session with the
    RetryMiddleware) answered 503: RETRYABLE_IF_IDEMPOTENT, processed. The loop asked only
    the ledger (the GET may be sent again) and sent the POST a second time."""
    posts: list[float] = []
    gets: list[float] = []
    host = await serve(_post_get_app(clock, posts, gets, post_status=503))
    async with (
        aiohttp.ClientSession(middlewares=(RetryMiddleware(clock=clock),)) as own,
        Engine({"svc": host}, scheme="http", clock=clock, recovery=RELOGIN) as engine,
    ):

        async def call() -> int:
            await engine.request("GET", "svc", "/me")
            session = own if mine else engine.session
            async with session.post(f"http://{host}/orders", json={"item": 1}) as resp:
                return resp.status

        with pytest.raises(ServerStatusError) as info:
            await engine.recovery.run(call)
    assert info.value.repeat is Repeat.RETRYABLE_IF_IDEMPOTENT
    assert posts == [0.0]


def test_a_failure_only_idempotency_stopped_is_repeated_only_out_of_a_recorded_call() -> None:
    """R7, the rule alone: beside a recorded GET that may be sent again, a
    RETRYABLE_IF_IDEMPOTENT failure that came out of no recorded call is raised; the same
    failure out of a recorded call is judged by the ledger."""
    unseen = _judged(ServerStatusError("503", status=503), Repeat.RETRYABLE_IF_IDEMPOTENT)
    seen = _judged(ServerStatusError("503", status=503), Repeat.RETRYABLE_IF_IDEMPOTENT)
    ledger, token = open_ledger()
    try:
        get = CallContext("svc")
        record_call(get, "GET")
        get.attempts.append(AttemptRecord(1, Outcome.response(503), None, 0.0))
        ledger.finish(get, seen)
        assert ledger.may_resend()
        assert not _may_repeat(unseen, ledger)
        assert _may_repeat(seen, ledger)
        assert _may_repeat(RetriesExhausted("spent", last=unseen), ledger)
    finally:
        close_ledger(ledger, token)
    empty = CallLedger()
    assert not _may_repeat(seen, empty)  # no call seen: the failure alone says
    assert _may_repeat(RetriesExhausted("spent", last=seen), empty)


async def test_a_post_in_flight_in_a_nested_recover_call_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """R2: a recover=True POST gathered, in ``recovery.run``, with a GET that fails while
    the POST is on the wire: the POST was in its inner ledger only (handed to the outer one
    when the inner run ended), so the outer loop ran the callable again: two orders."""
    posts: list[float] = []
    gets: list[float] = []
    arrived, release = asyncio.Event(), asyncio.Event()
    host = await serve(_post_get_app(clock, posts, gets, hold_post=release, arrived=arrived))
    started: list[asyncio.Future[Response]] = []
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:

        def call() -> Awaitable[tuple[Response, Response]]:
            post = asyncio.ensure_future(
                engine.request("POST", "svc", "/orders", json={}, recover=True)
            )
            started.append(post)
            return asyncio.gather(post, engine.request("GET", "svc", "/x"))

        try:
            with pytest.raises(RetriesExhausted):
                await engine.recovery.run(call)
        finally:
            release.set()
            await asyncio.gather(*started, return_exceptions=True)
    assert posts == [0.0]
    assert gets == [0.0]


@pytest.mark.parametrize("hop", [False, True], ids=["answered-201", "303-then-429"])
async def test_a_post_through_a_callers_session_that_was_acted_on_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock, hop: bool
) -> None:
    """R1: a caller's session without the stack records no attempt for an answer the engine
    does not take for a failure (a 201, a 303 hop): the POST looked "never sent", and the
    loop sent it again after the GET beside it (or its own hop, answered 429) failed."""
    orders: list[float] = []
    gets: list[float] = []

    async def create(request: web.Request) -> web.Response:
        orders.append(clock.now())
        if hop:
            raise web.HTTPSeeOther(location=f"/orders/{len(orders)}")
        return web.json_response({}, status=201)

    async def show(request: web.Request) -> web.Response:
        gets.append(clock.now())
        if len(gets) == 1:
            return web.Response(status=429 if hop else 503)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/x", show)
    app.router.add_get("/orders/{id}", show)
    host = await serve(app)
    async with (
        aiohttp.ClientSession() as session,
        Engine(
            {"svc": host}, scheme="http", clock=clock, session=session, recovery=RELOGIN
        ) as engine,
    ):

        async def call() -> Response:
            if hop:
                return await engine.request("POST", "svc", "/orders", json={"item": 1})
            await engine.request("POST", "svc", "/orders", json={"item": 1})
            return await engine.request("GET", "svc", "/x")

        with pytest.raises(RequestError):
            await engine.recovery.run(call)
    assert orders == [0.0]
    assert gets == [0.0]


async def test_a_post_cancelled_in_flight_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """R4: a TaskGroup cancels the POST on the wire when the GET beside it fails; the retry
    loop re-raised the cancellation without recording the attempt, so the POST looked
    "never sent" and was sent again."""
    posts: list[float] = []
    gets: list[float] = []
    arrived, release = asyncio.Event(), asyncio.Event()
    host = await serve(_post_get_app(clock, posts, gets, hold_post=release, arrived=arrived))
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:

        async def call() -> tuple[Response, Response]:
            try:
                async with asyncio.TaskGroup() as group:
                    post = group.create_task(engine.request("POST", "svc", "/orders", json={}))
                    get = group.create_task(engine.request("GET", "svc", "/x"))
            except* RequestError as failed:
                first = failed.exceptions[0]
            else:
                return post.result(), get.result()
            raise first

        try:
            with pytest.raises(RetriesExhausted):
                await engine.recovery.run(call)
        finally:
            release.set()
    assert posts == [0.0]
    assert gets == [0.0]


async def test_a_post_on_the_engines_session_answered_303_is_not_sent_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """R6: ``engine.session.post`` answered 303 whose GET hop spends its schedule: the
    ledger never saw the POST (only Engine.request recorded), and the order was created
    twice."""
    orders: list[bytes] = []
    hops: list[float] = []
    host = await serve(_orders_app(orders, _failing_first(hops, clock)))
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=NO_RETRY, recovery=RELOGIN
    ) as engine:

        async def call() -> int:
            url = await engine.url_for("svc", "/orders")
            async with engine.session.post(url, json={"item": 1}) as resp:
                return resp.status

        with pytest.raises(RetriesExhausted):
            await engine.recovery.run(call)
    assert len(orders) == 1
    assert hops == [0.0]


async def test_a_post_a_task_left_running_sends_during_the_pause_is_not_sent_again() -> None:
    """R3: gather does not cancel the others when one fails. A task still on its GET when
    the run was judged POSTs during the pause (201: processed); the loop, which judged
    before, ran the callable again and that user's order was created twice. Now the rule is
    asked again just before running again, and the failure is raised."""
    clock = VirtualClock(autojump_threshold=0.2)  # jumps only once the loopback is idle
    orders: dict[str, list[float]] = {"1": [], "2": []}
    user_gets = {"1": 0, "2": 0}
    judged = asyncio.Event()

    async def user(request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        user_gets[uid] += 1
        if uid == "1" and user_gets[uid] == 1:
            await judged.wait()  # answers once the loop decided to run the callable again
        if uid == "2" and user_gets[uid] == 1:
            return web.Response(status=503)
        return web.json_response({"id": uid})

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        orders[body["user"]].append(clock.now())
        return web.json_response({}, status=201)

    def on_state(event: StateEvent) -> None:
        if event.name == "relogin_scheduled":
            judged.set()

    app = web.Application()
    app.router.add_get("/users/{id}", user)
    app.router.add_post("/orders", create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    tasks: list[asyncio.Task[object] | None] = []
    try:
        async with Engine(
            {"svc": host},
            scheme="http",
            clock=clock,
            retry=NO_RETRY,
            recovery=RELOGIN,
            hooks=EventHooks(on_state=(on_state,)),
        ) as engine:

            async def sync(uid: str) -> Response:
                tasks.append(asyncio.current_task())
                await engine.request("GET", "svc", f"/users/{uid}")
                return await engine.request("POST", "svc", "/orders", json={"user": uid})

            try:
                with pytest.raises(RetriesExhausted) as info:
                    await engine.recovery.run(lambda: asyncio.gather(sync("1"), sync("2")))
            finally:
                await asyncio.gather(*(t for t in tasks if t), return_exceptions=True)
    finally:
        await runner.cleanup()
    assert orders == {"1": [0.0], "2": []}
    assert any("left running" in note for note in getattr(info.value, "__notes__", ()))


async def test_a_long_lived_callable_keeps_no_record_of_calls_that_ended(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """R5: a poller under ``recovery.run`` kept every call's context (with its attempt
    records) until it ended: memory grew with every call. Now an idempotent call is only
    counted, a finished one is dropped, and the errors kept are bounded."""
    flaky: list[float] = []

    async def sometimes(request: web.Request) -> web.Response:
        flaky.append(clock.now())
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/poll", _ok)
    app.router.add_post("/poll", _ok)
    app.router.add_get("/missing", sometimes)
    host = await serve(app)
    seen: dict[str, object] = {}
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:

        async def worker() -> None:
            for _ in range(100):
                await engine.request("GET", "svc", "/poll")
                await engine.request("POST", "svc", "/poll", json={})
                with pytest.raises(ClientStatusError):
                    await engine.request("GET", "svc", "/missing")
            ledger = _CALL_LEDGER.get()
            assert ledger is not None
            seen["calls"] = len(ledger.calls)
            seen["recorded"] = ledger.recorded
            seen["vouched"] = len(ledger.vouched)

        await engine.recovery.run(worker)
    assert seen == {"calls": 0, "recorded": 300, "vouched": VOUCHED}


@pytest.mark.parametrize(
    "settings",
    [
        (("decided", False), ("repeat_unsafe", True)),
        (("repeat_unsafe", True), ("decided", False)),
    ],
)
def test_decided_and_repeat_unsafe_read_back_as_set_in_either_order(
    settings: tuple[tuple[str, bool], ...],
) -> None:
    """R8: ``decided=False`` with ``repeat_unsafe=True`` (the old "undecided" pair, which the
    old loop recovered) gave a verdict by the order they were set, and read ``decided``
    back as True right after it was set False."""
    error = ServerStatusError("503", status=503)
    for name, value in settings:
        setattr(error, name, value)
    assert error.repeat is Repeat.RETRYABLE
    assert error.decided is False
    assert error.repeat_unsafe is True
    error.decided = True
    assert repeat_of(error) is Repeat.RETRYABLE_IF_IDEMPOTENT


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_call_on_a_callers_session_with_the_stack_waiting_out_a_login_outage_is_recovered(
    serve: ServerFactory, clock: VirtualClock, method: str
) -> None:
    """A caller's session carrying the stack, a login down before anything of the call was
    sent: the call was taken for one sent with no schedule judging it (possibly acted on), so
    a POST that never left was not recovered (a GET was)."""
    logins: list[float] = []
    hits: list[float] = []

    async def login(request: web.Request) -> web.Response:
        logins.append(clock.now())
        return web.Response(status=503) if len(logins) == 1 else web.json_response({"jwt": _jwt()})

    async def create(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.json_response({}, status=201)

    app = web.Application()
    app.router.add_post("/api/account/123/signup", login)
    app.router.add_route(method, "/orders", create)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with (
        Engine(
            domains,
            scheme="http",
            clock=clock,
            retry=RetryPolicy(pauses=()),
            auth=ConsumerJwt("123", domains=domains),
        ) as stack,
        aiohttp.ClientSession(
            middlewares=stack.middlewares, timeout=aiohttp.ClientTimeout(total=None)
        ) as session,
        Engine(domains, scheme="http", clock=clock, session=session, recovery=RELOGIN) as engine,
    ):
        resp = await engine.request(method, "svc", "/orders", json={}, recover=True)
    assert resp.status == 201
    assert hits == [20.0]
    assert logins == [0.0, 20.0]
