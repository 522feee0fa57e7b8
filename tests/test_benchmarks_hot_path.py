"""What the hot-path changes the benchmarks led to must keep: the same behaviour, cheaper.

A timeout on the real clock is a loop timer rather than a watchdog task; the engine keeps the
URLs it has built; a body with a Content-Length is read in one go. Each still does exactly
what the slower form did. (No test here measures speed: that is benchmarks/.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from le_transport import (
    Engine,
    HTTPStatusError,
    InvalidRequest,
    OutcomeKind,
    RealClock,
    RetryPolicy,
    timeout_after,
)
from le_transport.errors import BodyTooLarge
from le_transport.policies import Classifier, Decision, Outcome, Verdict
from tests.doubles import CountingRandom

ServerFactory = Callable[[web.Application], Awaitable[str]]


async def _scripted(serve: ServerFactory, replies: list[int]) -> str:
    """A server whose GET /x answers each request with the next status of ``replies``."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({}, status=replies.pop(0))

    app = web.Application()
    app.router.add_get("/x", answer)
    return await serve(app)


async def test_a_real_clock_timeout_cancels_the_block_in_flight_and_raises_timeout_error() -> None:
    reached_the_end = False

    async def block() -> None:
        nonlocal reached_the_end
        async with timeout_after(RealClock(), 0.01):
            await asyncio.Event().wait()
            reached_the_end = True

    with pytest.raises(TimeoutError):
        await block()
    assert not reached_the_end


async def test_a_real_clock_timeout_that_does_not_fire_is_disarmed_on_exit() -> None:
    from le_transport.clock import _wheel_of

    wheel = _wheel_of(asyncio.get_running_loop())
    async with timeout_after(RealClock(), 60) as limit:
        armed = sum(len(members) for members in wheel._slots.values())
        await asyncio.sleep(0)
    assert armed >= 1
    assert not limit.expired
    assert all(limit not in members for members in wheel._slots.values())


async def test_many_real_clock_timeouts_each_fire_for_their_own_block_only() -> None:
    """Timeouts sharing a slot of the real clock's wheel: the expired ones raise, the rest
    finish."""
    finished: list[int] = []

    async def block(i: int, seconds: float, work: float) -> None:
        async with timeout_after(RealClock(), seconds):
            await asyncio.sleep(work)
            finished.append(i)

    results = await asyncio.gather(
        *(block(i, 0.02, 10.0 if i % 2 else 0.0) for i in range(20)), return_exceptions=True
    )
    assert sorted(finished) == list(range(0, 20, 2))
    assert all(isinstance(r, TimeoutError) for r in results[1::2])


async def test_nested_real_clock_timeouts_raise_once_and_only_from_the_one_that_expired() -> None:
    outer = timeout_after(RealClock(), 60)
    inner = timeout_after(RealClock(), 0.01)

    async def block() -> None:
        async with outer, inner:
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await block()
    assert inner.expired
    assert not outer.expired
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_cancel_from_outside_is_never_turned_into_a_timeout() -> None:
    async def block() -> None:
        async with timeout_after(RealClock(), 60):
            await asyncio.Event().wait()

    task = asyncio.create_task(block())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _MovingDomains:
    """A domain provider whose host can change between calls, as a CSDS refresh does."""

    def __init__(self, host: str) -> None:
        self.host = host

    async def resolve(self, service: str) -> str:
        return self.host

    async def invalidate(self) -> None:
        return None


async def test_the_engine_reuses_a_built_url_but_follows_a_domain_change_at_once(
    serve: ServerFactory,
) -> None:
    def answering(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def which(request: web.Request) -> web.Response:
            return web.Response(text=name)

        return which

    hosts = []
    for name in ("first", "second"):
        app = web.Application()
        app.router.add_get("/api/which", answering(name))
        hosts.append(await serve(app))
    domains = _MovingDomains(hosts[0])
    async with Engine(domains, scheme="http") as engine:
        assert (await engine.request("GET", "svc", "/api/which")).text() == "first"
        again = await engine.request("GET", "svc", "/api/which")
        assert again.text() == "first"
        assert again.url == f"http://{hosts[0]}/api/which"
        domains.host = hosts[1]
        moved = await engine.request("GET", "svc", "/api/which")
        assert moved.text() == "second"
        assert moved.url == f"http://{hosts[1]}/api/which"


async def test_a_path_is_checked_on_every_call_until_it_has_passed_once(
    serve: ServerFactory,
) -> None:
    from le_transport import InvalidRequest

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http") as engine:
        for _ in range(2):
            with pytest.raises(InvalidRequest):
                await engine.request("GET", "svc", "/has space")
        assert (await engine.request("GET", "svc", "/ok")).text() == "ok"


async def test_a_response_with_a_query_or_a_redirect_still_shows_its_own_redacted_url(
    serve: ServerFactory,
) -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/landed")

    async def here(request: web.Request) -> web.Response:
        return web.Response(text="here")

    app = web.Application()
    app.router.add_get("/hop", hop)
    app.router.add_get("/landed", here)
    app.router.add_get("/q", here)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http") as engine:
        landed = await engine.request("GET", "svc", "/hop")
        assert landed.url == f"http://{host}/landed"
        queried = await engine.request("GET", "svc", "/q", params={"access_token": "s3cr3t-x"})
        assert "s3cr3t-x" not in queried.url
        assert queried.url.startswith(f"http://{host}/q?access_token=")


async def test_bodies_with_and_without_a_length_are_read_whole_and_the_limit_holds(
    serve: ServerFactory,
) -> None:
    payload = b"x" * 5000

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(payload), 1000):
            await resp.write(payload[i : i + 1000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/sized", sized)
    app.router.add_get("/streamed", streamed)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", retry=RetryPolicy(pauses=())) as engine:
        assert (await engine.request("GET", "svc", "/sized")).body == payload
        assert (await engine.request("GET", "svc", "/streamed")).body == payload
    async with Engine(
        {"svc": host}, scheme="http", retry=RetryPolicy(pauses=()), max_body_bytes=4096
    ) as small:
        for path in ("/sized", "/streamed"):
            with pytest.raises(BodyTooLarge):
                await small.request("GET", "svc", path)


def test_each_event_loop_gets_its_own_timeout_wheel_though_the_last_one_is_remembered() -> None:
    """The remembered (loop, wheel) pair never hands one loop's wheel to another: a timeout
    armed on a second loop fires there, after the first loop is closed and gone."""
    from le_transport.clock import _wheel_of

    async def wheel_and_a_timeout_that_fires() -> tuple[int, bool]:
        wheel = _wheel_of(asyncio.get_running_loop())
        assert _wheel_of(asyncio.get_running_loop()) is wheel
        with pytest.raises(TimeoutError):
            async with timeout_after(RealClock(), 0.01) as limit:
                await asyncio.Event().wait()
        return id(wheel), limit.expired

    first_loop = asyncio.new_event_loop()
    second_loop = asyncio.new_event_loop()
    try:
        first = first_loop.run_until_complete(wheel_and_a_timeout_that_fires())
        second = second_loop.run_until_complete(wheel_and_a_timeout_that_fires())
        again = first_loop.run_until_complete(wheel_and_a_timeout_that_fires())
    finally:
        first_loop.close()
        second_loop.close()
    assert first[1]
    assert second[1]
    assert again[1]
    assert first[0] != second[0]
    assert again[0] == first[0]


def test_call_context_is_current_inside_its_block_only_and_restored_after_an_error() -> None:
    from le_transport.middleware.context import CallContext, call_context, current_call

    outer, inner = CallContext(service="outer"), CallContext(service="inner")
    assert current_call() is None
    seen_inside: list[CallContext | None] = []

    def fail_inside(ctx: CallContext) -> None:
        with call_context(ctx):
            seen_inside.append(current_call())
            raise RuntimeError("boom")

    with call_context(outer) as entered:
        assert entered is outer
        assert current_call() is outer
        with pytest.raises(RuntimeError):
            fail_inside(inner)
        assert seen_inside == [inner]
        assert current_call() is outer
    assert current_call() is None


def test_the_guard_keeps_each_services_budget_key_equal_to_the_one_it_would_build() -> None:
    """The per-service key cache never hands one service another's key, also once it has
    started over (more services than it keeps)."""
    from le_transport.middleware.overload import OverloadGuard
    from le_transport.state.store import state_key

    guard = OverloadGuard(account="acct")
    services = [f"svc:{i}" for i in range(1500)] + ["svc:0", "a:b", "a%3Ab"]
    for service in services:
        assert guard._budget_key(service) == state_key("acct", "budget", service)
    assert guard._budget_key("a:b") != guard._budget_key("a%3Ab")


def test_budget_and_breaker_records_keep_every_other_field() -> None:
    """Built by their constructors on the hot path: a record changes only its own counter."""
    from le_transport.policies.breaker import BreakerState, BreakerStatus, CircuitBreaker
    from le_transport.policies.budget import BudgetState, RetryBudget

    budget = RetryBudget()
    state = budget.record_request(BudgetState(), now=100.0, count=3)
    assert state.total_requests == 3
    _, spent = budget.try_retry(state, now=100.0)
    after = budget.record_request(spent, now=100.0)
    assert after.total_requests == 4
    assert after.retries == spent.retries
    assert after.slot == spent.slot

    breaker = CircuitBreaker()
    status = BreakerStatus(state=BreakerState.CLOSED, opens=2, open_until=5.0, probe_until=7.0)
    ok = breaker.record(status, 100.0, failed=False)
    assert sum(ok.successes) == 1
    assert sum(ok.failures) == 0
    assert (ok.state, ok.opens, ok.open_until, ok.probe_until) == (
        BreakerState.CLOSED,
        2,
        5.0,
        7.0,
    )


async def test_start_and_stop_claim_only_their_own_timeout_without_an_async_with() -> None:
    """The hot path's form of ``timeout_after``: ``stop`` says True only for its own expiry."""
    task = asyncio.current_task()
    assert task is not None

    expiring = timeout_after(RealClock(), 0.01).start()
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await asyncio.Event().wait()
    assert expiring.stop(type(cancelled.value)) is True
    assert task.cancelling() == 0

    in_time = timeout_after(RealClock(), 60).start()
    await asyncio.sleep(0)
    assert in_time.stop(None) is False
    assert not in_time.expired

    async def cancelled_from_outside() -> bool:
        limit = timeout_after(RealClock(), 60).start()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            return limit.stop(type(exc))
        return limit.stop(None)  # pragma: no cover - the wait never ends

    other = asyncio.create_task(cancelled_from_outside())
    await asyncio.sleep(0)
    other.cancel()
    assert await other is False


async def test_an_attempt_arms_one_timeout_for_whichever_ends_first_of_its_limit_and_the_deadline(
    serve: ServerFactory,
) -> None:
    """One clock timeout per attempt, not one for the attempt and one for the call."""
    from le_transport.clock import _wheel_of

    wheel = _wheel_of(asyncio.get_running_loop())
    armed: list[int] = []

    async def count(request: web.Request) -> web.Response:
        armed.append(sum(len(members) for members in wheel._slots.values()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", count)
    host = await serve(app)
    policy = RetryPolicy(attempt_timeout=10.0, deadline=30.0)
    async with Engine({"svc": host}, scheme="http", retry=policy) as engine:
        await engine.request("GET", "svc", "/x")
        await engine.request("GET", "svc", "/x", deadline=5.0)
    assert armed == [1, 1]
    assert sum(len(members) for members in wheel._slots.values()) == 0


async def test_a_first_attempt_success_draws_no_random_number_and_a_retry_draws_one(
    serve: ServerFactory,
) -> None:
    """A seeded run's jitter depends only on the attempts that failed, not on how many
    calls succeeded before them."""
    replies = [200, 503, 200]
    host = await _scripted(serve, replies)
    rng = CountingRandom()
    policy = RetryPolicy(pauses=(0.001,))
    async with Engine({"svc": host}, scheme="http", retry=policy, rng=rng) as engine:
        first = await engine.request("GET", "svc", "/x")
        assert rng.draws == 0
        second = await engine.request("GET", "svc", "/x")
    assert rng.draws == 1
    assert [len(first.attempts), len(second.attempts)] == [1, 2]
    assert [a.pause for a in second.attempts] == [0.001, None]


@given(
    retry=st.frozensets(st.integers(100, 599), max_size=8),
    final=st.frozensets(st.integers(100, 599), max_size=8),
    status=st.integers(100, 399),
)
def test_the_loops_success_shortcut_agrees_with_the_classifier(
    retry: frozenset[int], final: frozenset[int], status: int
) -> None:
    """Below 400, the retry loop knows a success without calling classify(): by the statuses
    the classifier retries or fails there. Both must always say the same."""
    classifier = Classifier(retry_statuses=retry, final_statuses=final - retry)
    by_classify = classifier.classify(Outcome.response(status)) is Verdict.SUCCESS
    assert by_classify == (status not in classifier._not_success_below_400)
    evolved = attrs.evolve(
        classifier, retry_statuses=retry | {status}, final_statuses=final - retry - {status}
    )
    assert status in evolved._not_success_below_400


async def test_a_status_below_400_the_classifier_retries_or_fails_is_never_a_quick_success(
    serve: ServerFactory,
) -> None:
    """The loop's shortcut for answers below 400 holds only for the classifier's successes: a
    202 it is told to retry is retried, and a 203 it is told is final fails the call."""
    replies = [202, 202, 200, 203]
    host = await _scripted(serve, replies)
    policy = RetryPolicy(
        pauses=(0.001, 0.001), classifier=Classifier(retry_statuses={202}, final_statuses={203})
    )
    async with Engine({"svc": host}, scheme="http", retry=policy) as engine:
        ok = await engine.request("GET", "svc", "/x")
        with pytest.raises(HTTPStatusError) as failed:
            await engine.request("GET", "svc", "/x")
    assert [a.outcome.status for a in ok.attempts] == [202, 202, 200]
    assert failed.value.status == 203
    assert replies == []


async def test_a_classifier_or_policy_of_the_callers_own_kind_is_asked_about_every_answer(
    serve: ServerFactory,
) -> None:
    """The shortcuts are for the library's own Classifier and RetryPolicy: a subclass that
    overrides them decides every answer, successes included."""
    asked: list[int | None] = []

    class Picky(Classifier):
        def classify(self, outcome: Outcome) -> Verdict:
            asked.append(outcome.status)
            return Verdict.RETRY if outcome.status == 201 else super().classify(outcome)

    class Watching(RetryPolicy):
        def decide(self, attempt: int, outcome: Outcome, **kwargs: Any) -> Decision:
            asked.append(-attempt)
            return super().decide(attempt, outcome, **kwargs)

    replies = [201, 200, 200]
    host = await _scripted(serve, replies)
    picky = RetryPolicy(pauses=(0.001,), classifier=Picky())
    async with Engine({"svc": host}, scheme="http", retry=picky) as engine:
        first = await engine.request("GET", "svc", "/x")
        assert 201 in asked
        assert len(first.attempts) == 2
        asked.clear()
        await engine.request("GET", "svc", "/x", retry=Watching(pauses=(0.001,)))
    assert asked == [-1]


async def test_an_attempt_timed_out_on_the_real_clock_is_retried_and_leaves_no_timer_armed(
    serve: ServerFactory,
) -> None:
    """On the real clock the call is its own attempts' timer: the first attempt, stuck, is
    cancelled at its timeout; the second is timed afresh; nothing stays on the wheel."""
    from le_transport.clock import _wheel_of

    wheel = _wheel_of(asyncio.get_running_loop())
    stuck = asyncio.Event()
    hits = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        if hits == 1:
            await stuck.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/x", answer)
    host = await serve(app)
    # Room for a slow machine: should a later attempt also run past its limit, the next one
    # is timed afresh too.
    policy = RetryPolicy(pauses=(0.001,) * 5, attempt_timeout=0.2)
    try:
        async with Engine({"svc": host}, scheme="http", retry=policy) as engine:
            resp = await engine.request("GET", "svc", "/x")
    finally:
        stuck.set()
    kinds = [a.outcome.kind for a in resp.attempts]
    assert len(kinds) >= 2
    assert kinds[-1] is OutcomeKind.RESPONSE
    assert set(kinds[:-1]) == {OutcomeKind.TIMEOUT}
    assert sum(len(members) for members in wheel._slots.values()) == 0


async def test_a_call_cancelled_from_outside_mid_attempt_is_cancelled_not_timed_out(
    serve: ServerFactory,
) -> None:
    """The caller's cancellation of a call whose attempt is armed on the wheel propagates as
    CancelledError, and the call leaves the wheel."""
    from le_transport.clock import _wheel_of

    wheel = _wheel_of(asyncio.get_running_loop())
    arrived = asyncio.Event()
    stuck = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        arrived.set()
        await stuck.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/x", answer)
    host = await serve(app)
    policy = RetryPolicy(attempt_timeout=30.0)
    try:
        async with Engine({"svc": host}, scheme="http", retry=policy) as engine:
            call = asyncio.create_task(engine.request("GET", "svc", "/x"))
            await arrived.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    finally:
        stuck.set()
    assert sum(len(members) for members in wheel._slots.values()) == 0


async def test_a_lower_case_or_unusual_method_is_checked_and_sent_upper_case(
    serve: ServerFactory,
) -> None:
    """Common methods pass as they are; any other name is checked, then upper-cased."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/x", answer)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http") as engine:
        for method in ("get", "Post", "PROPFIND", "GET"):
            resp = await engine.request(method, "svc", "/x")
            assert resp.method == method.upper()
        for bad in ("G ET", "", 7, "GET\r\n"):
            with pytest.raises(InvalidRequest):
                await engine.request(bad, "svc", "/x")  # type: ignore[arg-type]
    assert seen == ["GET", "POST", "PROPFIND", "GET"]
