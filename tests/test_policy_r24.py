"""Policies and the outer recovery loop: edge cases of the schedules, the Retry-After and the
loop's close, on virtual time."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from collections.abc import Callable

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.errors import (
    ConfigurationError,
    RecoveryFailed,
    RetriesExhausted,
    ServerStatusError,
)
from le_transport.policies import BackoffPolicy, Classifier, ClosePolicy, Keepalive, Outcome
from le_transport.providers import Credentials, StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory


def _exhausted() -> RetriesExhausted:
    return RetriesExhausted("gave up", last=ServerStatusError("503", status=503))


class _BlockingAuth:
    """Static credentials; its re-login waits until ``release`` is set, then succeeds."""

    credential_headers = frozenset({"authorization"})

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.finished = 0

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials(headers={"Authorization": "Bearer t"})

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> None:
        self.started += 1
        await self.release.wait()
        self.finished += 1

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("deadline", [None, 10_000.0])
async def test_close_during_a_relogin_fails_the_waiting_call_and_runs_nothing_again(
    deadline: float | None,
) -> None:
    clock = VirtualClock()
    auth = _BlockingAuth()
    recovery = Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy(first=100, cap=1000, jitter=0, floor=0),
    )
    runs = 0

    async def call() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise _exhausted()
        return "ran again"

    until = None if deadline is None else clock.now() + deadline
    task = asyncio.ensure_future(recovery.run(call, until=until))
    while not auth.started:
        await clock.sleep(1)
    recovery.close()  # the engine closes while the re-login is out
    for _ in range(20):
        await asyncio.sleep(0)
    done_at_close = task.done()
    auth.release.set()
    with pytest.raises(RecoveryFailed, match="closed"):
        await task
    assert runs == 1  # never run again on the closed session
    assert done_at_close  # at once, not when the re-login ends
    assert auth.finished == 0  # the re-login did not outlive the close


# -- BackoffPolicy: the attempt number --------------------------------------------------------


@pytest.mark.parametrize("attempt", ["3", 2.5, None, True, False, 3.0])
@pytest.mark.parametrize("method", ["base_delay", "delay", "bounds", "next_delay"])
def test_a_backoff_attempt_that_is_no_int_is_refused_typed(method: str, attempt: object) -> None:
    policy = BackoffPolicy()
    args: tuple[object, ...] = (attempt, 0.0) if method == "next_delay" else (attempt,)
    with pytest.raises(ConfigurationError, match="attempt must be an int"):
        getattr(policy, method)(*args)


def test_a_backoff_attempt_of_an_int_subclass_is_taken() -> None:
    class Attempt(int):
        pass

    assert BackoffPolicy(jitter=0).delay(Attempt(2)) == 240.0


async def test_a_close_from_inside_the_relogin_is_not_cut_short_and_runs_nothing_again() -> None:
    clock = VirtualClock()
    recovery: Recovery
    closed_through = []

    class ClosingAuth(_BlockingAuth):
        async def relogin(self) -> None:
            # The session closing from inside the re-login (a provider's own teardown).
            recovery.close()
            await asyncio.sleep(0)
            closed_through.append(True)

    recovery = Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=ClosingAuth(),
        clock=clock,
        policy=BackoffPolicy(first=100, cap=1000, jitter=0, floor=0),
    )
    runs = 0

    async def call() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise _exhausted()
        return "ran again"

    with pytest.raises(RecoveryFailed, match="closed"):
        await recovery.run(call)
    assert closed_through == [True]
    assert runs == 1


# -- Recovery: the last answer's Retry-After ---------------------------------------------------


async def test_the_outer_retry_waits_at_least_the_retry_after_of_the_answer_that_ended_the_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # The schedule's last answer (a 503 asking for 50 s) is one it no longer waits for: the
    # outer loop re-sent the call after its own 20 s, 30 s before the server asked.
    arrivals: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(clock.now())
        if len(arrivals) <= 3:
            return web.Response(status=503, text="{}")
        if len(arrivals) == 4:
            return web.Response(status=503, text="{}", headers={"Retry-After": "50"})
        return web.Response(status=200, text="{}")

    app = web.Application()
    app.router.add_route("GET", "/x", handler)
    host = await serve(app)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=(1.0, 2.0, 3.0), attempt_timeout=None),
        recovery=BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=0),
    )
    async with engine:
        resp = await engine.request("GET", "svc", "/x", recover=True)
        assert resp.status == 200
    assert len(arrivals) == 5
    assert arrivals[4] - arrivals[3] >= 50.0
    assert list(engine.recovery.pauses) == [50.0]


# -- RetryPolicy: a Retry-After spread by the jitter ------------------------------------------


@pytest.mark.parametrize("rand", [0.5, 0.99, 1.0])
def test_a_retry_after_near_floats_range_spread_by_the_jitter_stays_finite(rand: float) -> None:
    # An ask within a ceiling that high was spread to an infinite pause.
    policy = RetryPolicy(jitter=0.5, retry_after_ceiling=sys.float_info.max)
    outcome = Outcome.response(503, retry_after=1.7e308)
    pause = policy.pause_for(1, outcome, rand=rand)
    assert math.isfinite(pause)
    assert pause >= 1.7e308
    decision = policy.decide(1, outcome, idempotent=True, rand=rand)
    assert math.isfinite(decision.pause)


@pytest.mark.parametrize("first", [5e-324, 1e-323, 2e-322])
def test_backoff_delays_from_a_subnormal_first_still_grow_to_the_cap(first: float) -> None:
    # 5e-324 * 1.2 rounds back to 5e-324: the delays never grew, at any attempt.
    policy = BackoffPolicy(first=first, factor=1.2, cap=1.0, jitter=0, floor=0)
    delays = [policy.base_delay(n) for n in range(1, 40)]
    assert all(a < b for a, b in itertools.pairwise(delays))
    assert policy.base_delay(10_000) == 1.0


# -- schedule invariants ----------------------------------------------------------------------

_SECONDS = st.floats(min_value=0.0, max_value=1e300)


@settings(max_examples=300, deadline=None)
@given(
    pauses=st.lists(_SECONDS, min_size=1, max_size=5),
    jitter=st.floats(0.0, 0.99),
    floor=_SECONDS,
    ceiling=st.floats(min_value=0.0, max_value=sys.float_info.max),
    status=st.sampled_from([429, 500, 503, 599, 600, 999, 0]),
    retry_after=st.one_of(st.none(), st.floats(min_value=0.0, max_value=sys.float_info.max)),
    rand=st.floats(0.0, 1.0),
)
def test_a_request_pause_stays_within_its_bounds(
    pauses: list[float],
    jitter: float,
    floor: float,
    ceiling: float,
    status: int,
    retry_after: float | None,
    rand: float,
) -> None:
    try:
        policy = RetryPolicy(
            pauses=pauses, jitter=jitter, rate_limit_floor=floor, retry_after_ceiling=ceiling
        )
    except ConfigurationError:
        return  # a jittered pause past float's range
    outcome = Outcome.response(status, retry_after=retry_after)
    for attempt in range(1, len(pauses) + 1):
        pause = policy.pause_for(attempt, outcome, rand)
        scheduled = pauses[attempt - 1]
        asked = 0.0 if retry_after is None else min(retry_after, ceiling)
        least = max(scheduled * (1 - jitter), floor if status == 429 else 0.0, asked)
        most = max(scheduled * (1 + jitter), floor if status == 429 else 0.0, asked * (1 + jitter))
        assert math.isfinite(pause)
        assert least * (1 - 1e-12) <= pause <= min(most * (1 + 1e-12), sys.float_info.max)


@settings(max_examples=300, deadline=None)
@given(
    first=st.floats(min_value=5e-324, max_value=1e6),
    factor=st.floats(min_value=1.01, max_value=1e3),
    cap=st.floats(min_value=1e-300, max_value=1e300),
    jitter=st.floats(0.0, 0.99),
    floor=st.floats(min_value=0.0, max_value=1e6),
    attempt=st.integers(1, 200),
    rand=st.floats(0.0, 1.0),
)
def test_backoff_delays_grow_to_the_cap_and_stay_within_their_bounds(
    first: float, factor: float, cap: float, jitter: float, floor: float, attempt: int, rand: float
) -> None:
    try:
        policy = BackoffPolicy(first=first, factor=factor, cap=cap, jitter=jitter, floor=floor)
    except ConfigurationError:
        return
    now, after = policy.base_delay(attempt), policy.base_delay(attempt + 1)
    assert now < after or now == after == cap
    low, high = policy.bounds(attempt)
    delay = policy.delay(attempt, rand)
    assert low <= delay <= high
    assert delay >= floor
    assert delay <= max(cap * (1 + jitter), floor)


# -- code sets: an endless iterable ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda codes: Classifier(retry_statuses=codes), "retry_statuses"),
        (lambda codes: Classifier(final_statuses=codes), "final_statuses"),
        (lambda codes: ClosePolicy(fail_codes=codes), "fail_codes"),
        (lambda codes: ClosePolicy(reauth_codes=codes), "reauth_codes"),
        (lambda codes: ClosePolicy(reauth_statuses=codes), "reauth_statuses"),
    ],
)
def test_an_endless_code_set_is_refused_not_read_for_ever(
    make: Callable[[object], object], field: str
) -> None:
    # itertools.repeat filled memory: the request schedule's pauses were refused so already.
    code = 403 if "status" in field else 4000
    with pytest.raises(ConfigurationError, match=f"{field} must hold at most"):
        make(itertools.repeat(code))
    make([code] * 10)  # a few repeats are fine


def test_endless_keepalive_params_are_refused_not_read_for_ever() -> None:
    with pytest.raises(ConfigurationError, match=r"Keepalive\.params must hold at most"):
        Keepalive(
            product="p",
            action="a",
            interval=30.0,
            timeout=10.0,
            params=itertools.repeat(("v", "1")),
        )
    kept = Keepalive(product="p", action="a", interval=30.0, timeout=10.0, params=[("v", 1)] * 3)
    assert kept.params == (("v", "1"),) * 3
