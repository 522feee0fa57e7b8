"""The outer loop: ``recover=True`` re-sends only what the request schedule would
have retried, and a call's deadline (its own, or its policy's) bounds the whole call, the
recovery loop's pauses and re-runs included. Real loopback servers, virtual time."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, ConsumerJwt, Engine, EventHooks, RetryPolicy, StateEvent
from le_transport.errors import (
    AttemptRecord,
    AttemptTimeout,
    AuthenticationError,
    BlockedError,
    CircuitOpen,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    LoginRejected,
    RecoveryFailed,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
)
from le_transport.middleware import RetryMiddleware
from le_transport.middleware.auth import AuthMiddleware
from le_transport.middleware.context import (
    _CALL_LEDGER,
    CallContext,
    close_ledger,
    open_ledger,
    record_call,
)
from le_transport.policies import Classifier, Outcome, OutcomeKind
from le_transport.providers import Credentials, OAuth1Auth, StaticBearer, StaticDomains
from le_transport.recovery import Recovery, _outage, is_recoverable
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: The guide's schedule (5, 10, 15 s), 30 s in all.
GUIDE = RetryPolicy()
#: An outer loop without jitter: its pauses are exact (never under the schedule's last, 15 s).
RELOGIN = BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15)


def _app(method: str, path: str, handler: Callable[[web.Request], object]) -> web.Application:
    app = web.Application()
    app.router.add_route(method, path, handler)  # type: ignore[arg-type]
    return app


def _engine(
    host: str, clock: VirtualClock, events: list[StateEvent] | None = None, **options: object
) -> Engine:
    hooks = EventHooks(on_state=(events.append,) if events is not None else ())
    return Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        hooks=hooks,
        recovery=options.pop("recovery", RELOGIN),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def _attempt(outcome: Outcome) -> tuple[AttemptRecord, ...]:
    return (AttemptRecord(1, outcome, None, 0.0),)


# -- recover=True re-sends only what the schedule would have retried ---------------------------


async def test_recover_does_not_send_again_a_post_answered_500(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The schedule does not repeat a POST answered 500 (the server may have acted on it):
    neither does the outer loop. It sent the order a second time after a re-login."""
    posts: list[bytes] = []

    async def orders(request: web.Request) -> web.Response:
        posts.append(await request.read())
        return web.Response(status=500 if len(posts) == 1 else 201)

    events: list[StateEvent] = []
    host = await serve(_app("POST", "/orders", orders))
    async with _engine(host, clock, events) as engine:
        with pytest.raises(ServerStatusError) as info:
            await engine.request("POST", "svc", "/orders", json={"amount": 100}, recover=True)
    assert info.value.status == 500
    assert len(posts) == 1
    assert clock.now() == 0.0
    assert engine.recovery.relogins == 0
    assert "relogin_scheduled" not in [e.name for e in events]


async def test_recover_does_not_send_again_a_post_reset_after_the_server_read_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    posts: list[bytes] = []

    async def orders(request: web.Request) -> web.Response:
        posts.append(await request.read())
        if len(posts) == 1:
            assert request.transport is not None
            request.transport.abort()  # processed; the answer is lost
        return web.Response(status=201)

    host = await serve(_app("POST", "/orders", orders))
    async with _engine(host, clock) as engine:
        with pytest.raises(ConnectionFailed) as info:
            await engine.request("POST", "svc", "/orders", json={"amount": 100}, recover=True)
    assert not info.value.never_sent
    assert len(posts) == 1
    assert engine.recovery.relogins == 0


async def test_recover_does_not_loop_on_a_status_the_classifier_makes_final(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 501 the caller's Classifier makes final was sent 5 times over half an hour."""
    hits: list[str] = []

    async def x(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=501)

    host = await serve(_app("GET", "/x", x))
    final_501 = RetryPolicy(classifier=Classifier(final_statuses={451, 501}))
    async with _engine(host, clock, retry=final_501) as engine:
        with pytest.raises(ServerStatusError) as info:
            await engine.request("GET", "svc", "/x", recover=True)
    assert info.value.status == 501
    assert hits == ["/x"]
    assert clock.now() == 0.0


@pytest.mark.parametrize(("method", "sent"), [("POST", 1), ("GET", 2)])
async def test_recover_through_a_callers_session_sends_again_only_an_idempotent_request(
    serve: ServerFactory, clock: VirtualClock, method: str, sent: int
) -> None:
    """A caller's session without the engine's middlewares: a POST answered 500 raised a
    ServerStatusError without attempts, taken for "no schedule decided", and recover=True
    sent the order a second time after a re-login. A GET's 500 is still waited out."""
    hits: list[bytes] = []

    async def orders(request: web.Request) -> web.Response:
        hits.append(await request.read())
        return web.Response(status=500 if len(hits) == 1 else 201)

    events: list[StateEvent] = []
    host = await serve(_app(method, "/orders", orders))
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, clock, events, session=session) as engine,
    ):
        call = engine.request(method, "svc", "/orders", json={"amount": 100}, recover=True)
        if method == "POST":
            with pytest.raises(ServerStatusError) as info:
                await call
            assert info.value.status == 500
            assert info.value.decided
            assert info.value.repeat_unsafe
        else:
            assert (await call).status == 201
    assert len(hits) == sent
    scheduled = [e for e in events if e.name == "relogin_scheduled"]
    assert len(scheduled) == sent - 1


async def test_recover_through_a_callers_session_decides_by_the_calls_classifier(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Past the retry middleware the engine decided by method alone: a POST answered 429
    (proof it was not processed) was given up at once, and a GET answered 501, which the
    caller's Classifier makes final, was sent 4 times over recovery rounds."""
    posts: list[bytes] = []
    gets: list[bytes] = []

    async def orders(request: web.Request) -> web.Response:
        posts.append(await request.read())
        return web.Response(status=429 if len(posts) == 1 else 201)

    async def feature(request: web.Request) -> web.Response:
        gets.append(await request.read())
        return web.Response(status=501)

    app = _app("POST", "/orders", orders)
    app.router.add_get("/feature", feature)
    host = await serve(app)
    final_501 = RetryPolicy(classifier=Classifier(final_statuses={501}))
    events: list[StateEvent] = []
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, clock, events, session=session, retry=final_501) as engine,
    ):
        resp = await engine.request("POST", "svc", "/orders", json={}, recover=True)
        assert resp.status == 201
        assert len(posts) == 2
        with pytest.raises(ServerStatusError) as info:
            await engine.request("GET", "svc", "/feature", recover=True)
    assert info.value.status == 501
    assert info.value.decided
    assert not info.value.repeat_unsafe
    assert len(gets) == 1
    assert [e.name for e in events].count("relogin_scheduled") == 1  # the 429's only


@pytest.mark.parametrize(
    ("method", "status", "own_session", "repeat_unsafe"),
    [
        ("POST", 500, False, True),
        ("POST", 500, True, True),
        ("GET", 404, False, False),
        ("GET", 404, True, False),
        ("GET", 501, False, False),
        ("GET", 501, True, False),
    ],
)
async def test_a_decided_failure_says_whether_it_was_only_unsafe_to_repeat(
    serve: ServerFactory,
    clock: VirtualClock,
    method: str,
    status: int,
    own_session: bool,
    repeat_unsafe: bool,
) -> None:
    """``decided`` alike by the schedule and past it (a 404 was decided by the one, not the
    other); ``repeat_unsafe`` only for what was retryable but for the method."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status)

    host = await serve(_app(method, "/x", answer))
    final_501 = RetryPolicy(pauses=(), classifier=Classifier(final_statuses={501}))
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, clock, session=session if own_session else None, retry=final_501) as engine,
    ):
        with pytest.raises((ServerStatusError, ClientStatusError)) as info:
            await engine.request(method, "svc", "/x")
    assert info.value.decided
    assert info.value.repeat_unsafe is repeat_unsafe


async def test_recover_still_waits_out_a_spent_schedule_then_succeeds(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """What the schedule retried until it was spent is still the outer loop's to wait out."""
    hits: list[float] = []

    async def x(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503 if len(hits) <= 4 else 200)

    host = await serve(_app("GET", "/x", x))
    async with _engine(host, clock) as engine:
        resp = await engine.request("GET", "svc", "/x", recover=True)
    assert resp.status == 200
    # The schedule (0, 5, 15, 30), then the outer loop's 20 s pause.
    assert hits == [0.0, 5.0, 15.0, 30.0, 50.0]


def _failure(kind: OutcomeKind) -> Outcome:
    return Outcome.failure(kind, "X")


def _bare(error: ServerStatusError | ConnectionFailed | AttemptTimeout, outcome: Outcome) -> object:
    """As the schedule raises an error it decided final: with its attempts, marked decided."""
    error.attempts = _attempt(outcome)
    error.decided = True
    return error


def _undecided(error: ServerStatusError, outcome: Outcome) -> object:
    """A failure with attempts that no schedule decided on (a GET's 5xx met past the retry
    middleware, after the attempts it recorded)."""
    error.attempts = _attempt(outcome)
    return error


def _decided_by_the_engine(error: ServerStatusError) -> object:
    """A POST's 5xx met past the retry middleware: no attempts, decided by the engine."""
    error.decided = True
    error.repeat_unsafe = True
    return error


def _in_login(error: ServerStatusError | ConnectionFailed, *, repeat_unsafe: bool) -> object:
    """What the auth middleware raises when the call's login failed: decided by the login's
    schedule (only as a POST, or final by nature)."""
    error.decided = True
    error.repeat_unsafe = repeat_unsafe
    return error


@pytest.mark.parametrize(
    ("error", "recoverable"),
    [
        # Raised bare by a schedule, with its attempts: the schedule decided it was final.
        (_bare(ServerStatusError("500", status=500), Outcome.response(500)), False),
        (_bare(ConnectionFailed("reset"), _failure(OutcomeKind.CONNECTION_LOST)), False),
        (
            _bare(ConnectionFailed("cert", never_sent=True), _failure(OutcomeKind.TLS_REJECTED)),
            False,
        ),
        (_bare(AttemptTimeout("slow"), _failure(OutcomeKind.TIMEOUT)), False),
        # No schedule decided on these (a provider's own network call, a socket's dial).
        (ConnectionFailed("vault down", never_sent=True), True),
        (ServerStatusError("503", status=503), True),
        # What is read is the decision, not whether attempts were recorded.
        (_undecided(ServerStatusError("503", status=503), Outcome.response(503)), True),
        (_decided_by_the_engine(ServerStatusError("500", status=500)), False),
        # A login's failure, decided by its own schedule, is no call's to repeat by itself.
        (_in_login(ServerStatusError("503", status=503), repeat_unsafe=True), False),
        # The schedule would have retried, but could not.
        (RetriesExhausted("spent", last=ServerStatusError("503", status=503)), True),
        (RetryBudgetExhausted("budget", last=ServerStatusError("503", status=503)), True),
        (CircuitOpen("open", retry_at=10.0), True),
    ],
)
def test_only_what_the_schedule_would_have_retried_is_recoverable(
    error: BaseException, recoverable: bool
) -> None:
    assert is_recoverable(error) is recoverable


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (_in_login(ServerStatusError("503", status=503), repeat_unsafe=True), True),
        (_in_login(ConnectionFailed("reset"), repeat_unsafe=True), True),
        (ServerStatusError("503", status=503), True),
        (_in_login(ServerStatusError("501", status=501), repeat_unsafe=False), False),
        (_in_login(ConnectionFailed("cert", never_sent=True), repeat_unsafe=False), False),
    ],
)
def test_a_logins_failure_is_an_outage_unless_final_by_nature(
    error: BaseException, outage: bool
) -> None:
    """How a re-login's failure, or a login's before anything of the call was sent, is
    judged: waited out unless final by nature."""
    assert _outage(error) is outage


# -- the deadline bounds the whole call, recovery included --------------------------------------


async def test_a_call_deadline_bounds_a_call_made_with_recover(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """deadline=60 against a 503 ran 1,099 virtual seconds and 16 requests: each round was a
    fresh call with a fresh 60 s. Now the next pause (115 s) cannot fit in the 30 s left."""
    hits: list[float] = []

    async def x(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    events: list[StateEvent] = []
    host = await serve(_app("GET", "/x", x))
    async with _engine(host, clock, events, recovery=BackoffPolicy.relogin(max_attempts=3)) as e:
        with pytest.raises(RecoveryFailed, match="would pass the call's deadline") as info:
            await e.request("GET", "svc", "/x", deadline=60, recover=True)
    assert isinstance(info.value.last, RetriesExhausted)
    assert hits == [0.0, 5.0, 15.0, 30.0]
    assert clock.now() == 30.0
    assert e.recovery.relogins == 0
    assert "relogin_scheduled" not in [ev.name for ev in events]
    # Said as a give-up at a later round is: it emitted no event at all.
    assert [(ev.name, ev.details["reason"]) for ev in events] == [("gave_up", "deadline")]


async def test_the_engine_policy_deadline_bounds_a_call_made_with_recover(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hits: list[float] = []

    async def x(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    host = await serve(_app("GET", "/x", x))
    async with _engine(host, clock, retry=RetryPolicy(deadline=60)) as engine:
        with pytest.raises(RecoveryFailed, match="would pass the call's deadline"):
            await engine.request("GET", "svc", "/x", recover=True)
    # The schedule, the 20 s pause (it fits), and a second run with the 10 s left: its 10 s
    # pause would pass that, and the next re-login's 40 s the 5 s left, at t=55.
    assert hits == [0.0, 5.0, 15.0, 30.0, 50.0, 55.0]
    assert clock.now() == 55.0


async def test_a_round_that_fits_runs_and_the_next_run_gets_only_the_time_left(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """deadline=100: the schedule fails by t=30, the 20 s pause fits (t=50), and the run after
    it has 50 s left, not a fresh 100: its attempts hang, and it ends at t=100 exactly."""
    hits: list[float] = []
    release = asyncio.Event()

    async def x(request: web.Request) -> web.Response:
        hits.append(clock.now())
        if len(hits) > 4:
            await release.wait()  # hangs until the test ends
        return web.Response(status=503)

    host = await serve(_app("GET", "/x", x))
    async with _engine(host, clock) as engine:
        with pytest.raises(DeadlineExceeded, match="50 s deadline passed"):
            await engine.request("GET", "svc", "/x", deadline=100, recover=True)
        assert clock.now() == 100.0
        assert list(engine.recovery.pauses) == [20.0]
        release.set()
    # The run after the pause: attempt 1 at t=50 cut by its 30 s timeout, attempt 2 at t=85
    # cut by what was left of the deadline.
    assert hits == [0.0, 5.0, 15.0, 30.0, 50.0, 85.0]


async def test_recover_refuses_a_deadline_it_cannot_take_before_sending(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    hits: list[str] = []

    async def x(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response()

    host = await serve(_app("GET", "/x", x))
    async with _engine(host, clock) as engine:
        with pytest.raises(Exception, match="deadline must be a finite number"):
            await engine.request("GET", "svc", "/x", deadline=-1, recover=True)
    assert hits == []


# -- Recovery.run(until=...) --------------------------------------------------------------------


class _ReloginOnly:
    """An auth provider of no credentials, for the re-login a recovery round makes."""

    credential_headers = frozenset({"authorization"})

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials(headers={})

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def close(self) -> None:
        return None


class _SlowRelogin(_ReloginOnly):
    """An auth provider whose re-login takes ``seconds`` on the clock."""

    def __init__(self, clock: VirtualClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds

    async def relogin(self) -> None:
        await self._clock.sleep(self._seconds)


def _recovery(clock: VirtualClock, events: list[StateEvent], auth: object = None) -> Recovery:
    return Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=auth,  # type: ignore[arg-type]
        clock=clock,
        policy=BackoffPolicy(first=100, factor=2, cap=1000, jitter=0, floor=0),
        request_policy=RetryPolicy(pauses=()),
        hooks=EventHooks(on_state=(events.append,)),
    )


def _failing_once(result: str) -> Callable[[], asyncio.Future[str]]:
    calls = 0

    def call() -> asyncio.Future[str]:
        nonlocal calls
        calls += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if calls == 1:
            future.set_exception(
                RetriesExhausted("spent", last=ServerStatusError("503", status=503))
            )
        else:
            future.set_result(result)
        return future

    return call


async def test_a_call_joining_a_round_whose_pause_passes_its_deadline_gives_up_at_once(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[StateEvent] = []
    recovery = _recovery(clock, events)
    first = asyncio.create_task(recovery.run(_failing_once("first")))
    for _ in range(10):
        await asyncio.sleep(0)  # the first call's round starts its 100 s pause
    assert recovery.recovering
    with (
        caplog.at_level(logging.WARNING, "le_transport.recovery"),
        pytest.raises(RecoveryFailed, match="100 s pause before the next re-login"),
    ):
        await recovery.run(_failing_once("second"), until=clock.now() + 50)
    assert clock.now() == 0.0
    assert any("would pass the call's deadline" in r.getMessage() for r in caplog.records)
    # The round goes on for the call without a deadline.
    assert await first == "first"
    assert clock.now() == 100.0
    assert [e.name for e in events] == ["relogin_scheduled", "recovered"]


async def test_the_deadline_passing_during_a_relogin_stops_the_call_and_its_round(
    clock: VirtualClock,
) -> None:
    events: list[StateEvent] = []
    recovery = _recovery(clock, events, _SlowRelogin(clock, 1000))
    with pytest.raises(DeadlineExceeded, match="deadline passed while it waited for a re-login"):
        await recovery.run(_failing_once("late"), until=150)
    assert clock.now() == 150.0
    # No other call waited: the round stopped with it, and the episode ended, said as such.
    assert not recovery.recovering
    assert [e.name for e in events] == ["relogin_scheduled", "gave_up"]
    assert events[-1].details["reason"] == "deadline"
    # The next failure starts afresh.
    assert await recovery.run(_failing_once("again")) == "again"


async def test_a_call_within_its_deadline_recovers_as_before(clock: VirtualClock) -> None:
    events: list[StateEvent] = []
    recovery = _recovery(clock, events)
    assert await recovery.run(_failing_once("ok"), until=150) == "ok"
    assert clock.now() == 100.0


@pytest.mark.parametrize("until", ["60", float("nan"), True])
async def test_run_refuses_an_until_that_is_no_clock_time(
    clock: VirtualClock, until: object
) -> None:
    recovery = _recovery(clock, [])
    with pytest.raises(ConfigurationError, match="until must be a finite clock time"):
        await recovery.run(_failing_once("x"), until=until)  # type: ignore[arg-type]


# -- a re-login's own failure inside a round ----------------------------------------------------


class _FlakyLogin(_ReloginOnly):
    """An auth provider whose re-login fails once with ``error``, then succeeds."""

    def __init__(self, error: Exception) -> None:
        self._error: Exception | None = error
        self.relogins = 0

    async def relogin(self) -> None:
        self.relogins += 1
        error, self._error = self._error, None
        if error is not None:
            raise error


def _auth_code_login_503() -> ServerStatusError:
    """What a consumer's auth-code login (a POST, not idempotent) answered 503 raises: bare,
    decided final by its schedule, only because it is not idempotent."""
    error = ServerStatusError("503 Service Unavailable", status=503, method="POST")
    error.repeat_unsafe = True
    return _bare(error, Outcome.response(503))  # type: ignore[return-value]


async def test_a_relogin_the_login_service_fails_once_is_tried_again_after_a_pause(
    clock: VirtualClock,
) -> None:
    """One 503 from the Login Service during a round's re-login gave the whole round up (a
    socket's escalation closed the socket); the round pauses and logs in again, as before."""
    events: list[StateEvent] = []
    auth = _FlakyLogin(_auth_code_login_503())
    recovery = _recovery(clock, events, auth)
    assert await recovery.run(_failing_once("ok")) == "ok"
    assert auth.relogins == 2
    assert list(recovery.pauses) == [100.0, 200.0]
    assert [e.name for e in events] == [
        "relogin_scheduled",
        "relogin_failed",
        "relogin_scheduled",
        "recovered",
    ]


@pytest.mark.parametrize(
    "final",
    [
        LoginRejected("bad password", status=401),
        BlockedError("451", status=451),
        ClientStatusError("403", status=403),
        AuthenticationError("second 401"),
        # Final by nature: a re-login whose TLS certificate was refused paused and logged in
        # again round after round (for ever with the default BackoffPolicy).
        _bare(ConnectionFailed("cert", never_sent=True), _failure(OutcomeKind.TLS_REJECTED)),
        _bare(ServerStatusError("501", status=501), Outcome.response(501)),
    ],
)
async def test_a_relogin_refused_or_failing_final_by_nature_ends_the_round(
    clock: VirtualClock, final: Exception
) -> None:
    """Only a login's outage is waited out."""
    events: list[StateEvent] = []
    auth = _FlakyLogin(final)
    recovery = _recovery(clock, events, auth)
    with pytest.raises(type(final)):
        await recovery.run(_failing_once("never"))
    assert auth.relogins == 1
    assert [(e.name, e.details.get("reason")) for e in events] == [
        ("relogin_scheduled", None),
        ("gave_up", "not recoverable"),
    ]


def _unsigned_jwt() -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': 9999999999})}.sig"


@pytest.mark.parametrize(("login_status", "recovers"), [(503, True), (501, False)])
async def test_a_login_outage_before_the_call_is_sent_is_recovered(
    serve: ServerFactory, clock: VirtualClock, login_status: int, recovers: bool
) -> None:
    """The consumer's auth-code login (a POST) answered 503 while getting a GET's first
    credentials: decided by its schedule (a POST), it ended the recover=True call at once,
    though the GET was never sent. Judged as a re-login's: waited out, unless final by
    nature (a 501 the Classifier makes final)."""
    logins: list[float] = []
    gets: list[float] = []

    async def authenticate(request: web.Request) -> web.Response:
        logins.append(clock.now())
        if len(logins) == 1:
            return web.Response(status=login_status)
        return web.json_response({"jwt": _unsigned_jwt()})

    async def x(request: web.Request) -> web.Response:
        gets.append(clock.now())
        return web.json_response({"ok": True})

    app = _app("POST", "/api/account/123/authenticate", authenticate)
    app.router.add_get("/x", x)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    policy = RetryPolicy(pauses=(), classifier=Classifier(final_statuses={501}))
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=policy,
        auth=ConsumerJwt("123", domains=domains, auth_code="code-1"),
        recovery=RELOGIN,
    ) as engine:
        call = engine.request("GET", "svc", "/x", deadline=1000, recover=True)
        if recovers:
            assert (await call).status == 200
            assert logins == [0.0, 20.0]
            assert gets == [20.0]
        else:
            with pytest.raises(ServerStatusError):
                await call
            assert logins == [0.0]
            assert gets == []


# -- a login's failure is judged for the call that met it, not for every waiter ------------------


async def test_a_post_past_a_redirects_first_hop_is_not_sent_again_when_the_hops_login_fails(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The POST was processed and answered 303; its GET hop met a 401 and the re-login (an
    auth-code POST) a 503. Taken for a login before the call was sent, recover=True waited,
    logged in and sent the POST again: the order was created twice."""
    logins: list[float] = []
    orders: list[bytes] = []
    hops: list[float] = []

    async def authenticate(request: web.Request) -> web.Response:
        logins.append(clock.now())
        if len(logins) == 2:
            return web.Response(status=503)
        return web.json_response({"jwt": _unsigned_jwt()})

    async def create(request: web.Request) -> web.Response:
        orders.append(await request.read())
        raise web.HTTPSeeOther(location=f"/orders/{len(orders)}")

    async def show(request: web.Request) -> web.Response:
        hops.append(clock.now())
        if len(hops) == 1:
            return web.Response(status=401)
        return web.json_response({"id": request.match_info["id"]})

    app = _app("POST", "/api/account/123/authenticate", authenticate)
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/{id}", show)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=()),
        auth=ConsumerJwt("123", domains=domains, auth_code="code-1"),
        recovery=RELOGIN,
    ) as engine:
        with pytest.raises(ServerStatusError):
            await engine.request("POST", "svc", "/orders", json={"item": 1}, recover=True)
    assert len(orders) == 1
    assert len(logins) == 2


async def test_a_logins_failure_shared_with_a_call_leaves_a_direct_login_as_it_was(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """One login's error is every waiter's: marked on the error for the call that shared it, it
    made a direct login's failure recoverable too (recovery.run(engine.login) waited rounds)."""
    logins: list[float] = []

    async def authenticate(request: web.Request) -> web.Response:
        logins.append(clock.now())
        await asyncio.sleep(0)
        return web.Response(status=503)

    async def x(request: web.Request) -> web.Response:
        return web.json_response({})

    app = _app("POST", "/api/account/123/authenticate", authenticate)
    app.router.add_get("/x", x)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=()),
        auth=ConsumerJwt("123", domains=domains, auth_code="code-1"),
        recovery=BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, max_attempts=2),
    ) as engine:
        call = asyncio.get_running_loop().create_task(engine.request("GET", "svc", "/x"))
        await asyncio.sleep(0)  # the call starts the login; the direct one joins it
        with pytest.raises(ServerStatusError) as direct:
            await engine.recovery.run(engine.login)
        with pytest.raises(ServerStatusError) as shared:
            await call
    assert direct.value is shared.value, "one login, one error"
    assert logins == [0.0], "a direct login's 503 (a POST's) is not waited out"


async def test_a_retry_after_from_a_callers_own_session_is_waited_out(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 429 answered past the retry middleware kept no Retry-After: recover=True sent the
    POST again after the re-login pause, before the time the server asked for."""
    posts: list[float] = []

    async def create(request: web.Request) -> web.Response:
        posts.append(clock.now())
        if len(posts) == 1:
            return web.Response(status=429, headers={"Retry-After": "900"})
        return web.Response(status=201)

    host = await serve(_app("POST", "/o", create))
    policy = RetryPolicy(pauses=(), retry_after_ceiling=1000)
    async with (
        aiohttp.ClientSession() as session,
        _engine(host, clock, session=session, retry=policy) as engine,
    ):
        answer = await engine.request("POST", "svc", "/o", json={}, recover=True)
    assert answer.status == 201
    assert posts[0] == 0.0
    assert posts[1] >= 900.0


def _consumer_app(
    clock: VirtualClock, logins: list[float], gets: list[float], *, login_503: int, get_401: int
) -> web.Application:
    """A consumer IdP whose ``login_503``-th authenticate answers 503, and a /x whose
    ``get_401``-th call answers 401 (0: never)."""

    async def authenticate(request: web.Request) -> web.Response:
        logins.append(clock.now())
        if len(logins) == login_503:
            return web.Response(status=503)
        return web.json_response({"jwt": _unsigned_jwt()})

    async def x(request: web.Request) -> web.Response:
        gets.append(clock.now())
        if len(gets) == get_401:
            return web.Response(status=401)
        return web.json_response({"ok": True})

    app = _app("POST", "/api/account/123/authenticate", authenticate)
    app.router.add_get("/x", x)
    return app


def _consumer_engine(host: str, clock: VirtualClock) -> Engine:
    domains = StaticDomains({"idp": host, "svc": host})
    return Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=()),
        auth=ConsumerJwt("123", domains=domains, auth_code="code-1"),
        recovery=RELOGIN,
    )


async def test_a_get_whose_relogin_after_a_401_meets_an_outage_is_recovered(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The GET was sent (401), so 'nothing of it sent' no longer held, and the re-login's 503
    ended the call at once; sending a GET again is safe, and a login outage is what
    recover=True waits out."""
    logins: list[float] = []
    gets: list[float] = []
    host = await serve(_consumer_app(clock, logins, gets, login_503=2, get_401=2))
    async with _consumer_engine(host, clock) as engine:
        await engine.request("GET", "svc", "/x")
        answer = await engine.request("GET", "svc", "/x", deadline=1000, recover=True)
    assert answer.status == 200
    assert len(logins) == 3
    assert len(gets) == 3


@pytest.mark.parametrize("wrap", ["wait_for", "gather"])
async def test_a_login_outage_is_recovered_when_the_call_runs_in_a_task_of_its_own(
    serve: ServerFactory, clock: VirtualClock, wrap: str
) -> None:
    """recovery.run(lambda: asyncio.wait_for(engine.request(...), t)): the call runs in a task
    with a copy of the context, and a note kept in the context never reached the loop."""
    logins: list[float] = []
    gets: list[float] = []
    host = await serve(_consumer_app(clock, logins, gets, login_503=1, get_401=0))
    async with _consumer_engine(host, clock) as engine:

        def call() -> Awaitable[object]:
            request = engine.request("GET", "svc", "/x")
            if wrap == "wait_for":
                return asyncio.wait_for(request, 60)
            return asyncio.gather(request)

        await engine.recovery.run(call)
    assert len(logins) == 2
    assert len(gets) == 1


async def test_a_login_failure_outside_a_recovery_loop_is_not_kept(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A call without recover=True whose login failed left the error (its traceback, the
    request body) in the task's context for the task's whole life."""
    logins: list[float] = []
    gets: list[float] = []
    host = await serve(_consumer_app(clock, logins, gets, login_503=1, get_401=0))
    async with _consumer_engine(host, clock) as engine:
        with pytest.raises(ServerStatusError):
            await engine.request("GET", "svc", "/x")
    assert _CALL_LEDGER.get() is None


def test_a_callable_may_be_run_again_only_if_every_call_it_made_may_be_sent_again() -> None:
    """A GET and a POST past a redirect's first hop, gathered in one recovery callable:
    running it again would send the POST twice. While the POST is unfinished it may be on
    the wire: no; once it ended having sent nothing that was acted on: yes."""
    get, post, redirected = CallContext("svc"), CallContext("svc"), CallContext("svc")
    ledger, token = open_ledger()
    try:
        record_call(get, "GET")
        record_call(post, "POST")
        assert ledger.calls == {post}  # an idempotent call is only counted
        assert ledger.recorded == 2
        assert not ledger.may_resend()  # the POST may be on the wire
        post.attempts.append(AttemptRecord(1, Outcome.response(429), None, 0.0))
        ledger.finish(post, RuntimeError("429"))
        ledger.finish(get)
        assert ledger.may_resend()  # nothing of the POST acted on
        record_call(redirected, "POST")
        redirected.attempts.append(AttemptRecord(1, Outcome.response(303), None, 0.0))
        ledger.finish(redirected, RuntimeError("hop failed"))
        assert not ledger.may_resend()
    finally:
        close_ledger(ledger, token)
    # Closed: a task the call started, holding a copy of the context, keeps nothing.
    record_call(CallContext("svc"), "POST")
    assert ledger.calls == set()
    assert ledger.recorded == 3
    assert _CALL_LEDGER.get() is None


@pytest.mark.parametrize("kind", ["bearer", "oauth1"])
async def test_a_callers_session_post_answered_303_is_never_resent_whatever_signs_it(
    serve: ServerFactory, clock: VirtualClock, kind: str
) -> None:
    """On a caller's session with the stack, a provider that signs each request (OAuth 1.0)
    set a call context of its own for the retry loop to sign each attempt with, which the
    retry middleware took for an engine call's and so never recorded: the loop judged by the
    failure alone and created the order again every round."""
    orders: list[bytes] = []

    async def create(request: web.Request) -> web.Response:
        orders.append(await request.read())
        raise web.HTTPSeeOther(location=f"/orders/{len(orders)}")

    async def show(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/{id}", show)
    host = await serve(app)
    domains = StaticDomains({"svc": host})
    auth: StaticBearer | OAuth1Auth = (
        StaticBearer("tok-123456") if kind == "bearer" else OAuth1Auth("ck", "cs", "tk", "ts")
    )
    policy = RetryPolicy(pauses=())
    stack = (
        AuthMiddleware(auth=auth, domains=domains, allowed_hosts={host}, clock=clock),
        RetryMiddleware(policy=policy, clock=clock),
    )
    relogin = BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, max_attempts=3)
    recovery = Recovery(
        domains=domains, auth=auth, clock=clock, policy=relogin, request_policy=policy
    )
    async with aiohttp.ClientSession(middlewares=stack) as session:

        async def call() -> int:
            async with session.post(f"http://{host}/orders", json={"item": 1}) as resp:
                return resp.status

        with pytest.raises(RetriesExhausted) as failed:
            await recovery.run(call)
    assert [a.outcome.status for a in failed.value.attempts] == [503]
    assert len(orders) == 1
