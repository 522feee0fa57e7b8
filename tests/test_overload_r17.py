"""Regressions of a review of the overload guard: the half-open probe's lease, and deadlines.

1. A half-open probe still in flight when its ``probe_lease`` (30 s) ended let a second probe
   through: two at once with a 60 s attempt timeout, one more per lease against a hung service
   with none. The lease is for a probe that never reports (its process gone); a process's guard
   learns how each of its own probes ends, and holds the slot until then.
2. Attempts cut by the call's deadline were abandoned, never settled: a hung service never
   opened the breaker for callers bounding calls with ``deadline=`` (20 hung calls, closed).
   They are settled as the timeouts they are; only the half-open probe cut so is still freed
   at once (the caller's bound is no verdict on the service).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import CircuitOpen, DeadlineExceeded, RequestError, RetriesExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
    RetryBudget,
)
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_guard_hot_path import _Call, _done

#: Four failures in five open it for 5 s; the probe lease is the default 30 s.
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=300.0,
    breaks=BackoffPolicy(first=5.0, cap=600.0, jitter=0.0, floor=0.0),
)
HOST = "127.0.0.1:8080"
KEY = ("svc", HOST)
DOWN = Outcome.response(503)
OK = Outcome.response(200)
#: What the retry loop settles for an attempt its call's deadline cut in flight.
DEADLINE_CUT = Outcome.failure(OutcomeKind.TIMEOUT, "DeadlineExceeded")


def _trip(guard: OverloadGuard) -> None:
    for _ in range(BREAKER.minimum_throughput):
        call = _Call(*KEY)
        assert _done(guard.admit(call, 1)) is None
        _done(guard.settle(call, 1, DOWN))
    assert guard.breaker_state(*KEY) is BreakerState.OPEN


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


# -- 1. a probe that outlives its lease ------------------------------------------------------------


async def test_a_probe_slower_than_its_lease_lets_no_second_probe_through(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A 60 s attempt timeout (a slow API's) and a probe the service holds past the 30 s lease:
    the calls made meanwhile are refused (CircuitOpen, retry_at a lease ahead), nothing more is
    sent, and the probe's own answer decides."""
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    slow = RetryPolicy(pauses=(), attempt_timeout=60.0)
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x", retry=slow)
        assert guard.breaker_state("svc", host) is BreakerState.OPEN
        await clock.sleep(5.0)
        backend.gate = asyncio.Event()  # the service now holds every request
        backend.arrived.clear()
        hits = backend.hits
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=slow))
        await backend.arrived.wait()
        await clock.sleep(31.0)  # past the lease; the probe's 60 s timeout is not
        others = [
            asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=slow)) for _ in range(3)
        ]
        await _settle_loop()
        sent = backend.hits - hits
        refused = [call.exception() if call.done() else None for call in others]
        backend.gate.set()
        results = await asyncio.gather(probe, *others, return_exceptions=True)
    assert sent == 1, f"{sent} probes in flight at once in half-open"
    now = clock.now()
    for error in refused:
        assert isinstance(error, CircuitOpen)
        assert error.retry_at is not None
        assert error.retry_at >= now, "retry_at in the past"
    assert isinstance(results[0], RetriesExhausted), "the probe's own 503 decides"
    assert guard.breaker_state("svc", host) is BreakerState.OPEN


async def test_hung_probes_do_not_pile_up_one_per_lease(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """No attempt timeout and a hung service: one call every 31 s sent one more probe each."""
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    policy = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, overload=guard, retry=policy
    ) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x")
        await clock.sleep(5.0)
        backend.gate = asyncio.Event()
        hits = backend.hits
        calls = []
        for _ in range(4):
            calls.append(asyncio.ensure_future(engine.request("GET", "svc", "/x")))
            await _settle_loop()
            await clock.sleep(31.0)
        sent = backend.hits - hits
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert sent == 1, f"{sent} half-open probes in flight at once"
    assert all(isinstance(r, CircuitOpen) for r in results[1:])


@pytest.mark.parametrize("ending", ["settled", "abandoned"])
def test_the_guard_holds_the_slot_past_the_lease_until_its_own_probe_ends(ending: str) -> None:
    """Past the lease the slot stays taken while this process's probe is out (refused with
    retry_at a lease from now); the moment it is settled or abandoned, the next call probes."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    _trip(guard)
    clock.advance(5.0)
    probe = _Call(*KEY)
    assert _done(guard.admit(probe, 1)) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    refused = _done(guard.admit(_Call(*KEY), 1))
    assert isinstance(refused, CircuitOpen), "a second probe went while the first is out"
    assert refused.retry_at == pytest.approx(clock.now() + BREAKER.probe_lease)
    clock.advance(BREAKER.probe_lease * 3)  # however long it takes
    assert isinstance(_done(guard.admit(_Call(*KEY), 1)), CircuitOpen)
    if ending == "settled":
        _done(guard.settle(probe, 1, DOWN))
        assert guard.breaker_state(*KEY) is BreakerState.OPEN, "its failure re-opened"
        clock.advance(10.0)  # the second break
    else:
        guard.abandon(probe, 1)
        assert guard.breaker_state(*KEY) is BreakerState.HALF_OPEN
    nxt = _Call(*KEY)
    assert _done(guard.admit(nxt, 1)) is None, "the next call probes at once"
    assert (id(nxt), 1) in guard._probes
    assert not guard._probes.keys() - {(id(nxt), 1)}
    assert set(guard._probing) == {KEY}


def test_a_probe_whose_loop_ended_unreported_is_left_to_its_lease() -> None:
    """The backstop: a probe whose retry loop ended (its context says so) without settling or
    abandoning it no longer holds the slot past its lease."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    _trip(guard)
    clock.advance(5.0)
    lost: Any = _Call(*KEY)
    lost.ctx = type("Ctx", (), {"active": True})()
    assert _done(guard.admit(lost, 1)) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    assert isinstance(_done(guard.admit(_Call(*KEY), 1)), CircuitOpen)
    lost.ctx.active = False  # its loop is over, and never said how the probe ended
    nxt = _Call(*KEY)
    assert _done(guard.admit(nxt, 1)) is None
    assert set(guard._probes) == {(id(nxt), 1)}


async def test_in_a_fleet_a_probe_past_its_lease_holds_its_own_process_only() -> None:
    """The fleet's probe lock is not renewed: past the lease another process may probe (the
    lease is the fleet's backstop for a probe whose process died), while the prober's own
    process sends no second one."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = (
        OverloadGuard(
            budget=None, breaker=BREAKER, store=store, account="1", clock=clock, sync_interval=0.0
        )
        for _ in range(2)
    )
    _trip_shared = [_Call(*KEY) for _ in range(BREAKER.minimum_throughput)]
    for call in _trip_shared:
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert isinstance(await b.admit(_Call(*KEY), 1), CircuitOpen), "b adopted the break"
    clock.advance(5.0)
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    assert (id(probe), 1) in a._probes
    assert isinstance(await b.admit(_Call(*KEY), 1), CircuitOpen), "one probe for the fleet"
    clock.advance(BREAKER.probe_lease + 1.0)
    assert isinstance(await a.admit(_Call(*KEY), 1), CircuitOpen), "a's probe is still out"
    other = _Call(*KEY)
    assert await b.admit(other, 1) is None
    assert (id(other), 1) in b._probes, "b probes: a's lock expired with its lease"
    await b.settle(other, 1, OK)
    await a.settle(probe, 1, OK)
    assert a.breaker_state(*KEY) is BreakerState.CLOSED
    assert b.breaker_state(*KEY) is BreakerState.CLOSED
    assert not a._probing
    assert not b._probing


# -- 2. attempts cut by the call's deadline ----------------------------------------------------


@pytest.mark.parametrize("bound", ["attempt_timeout", "deadline"])
async def test_a_hung_service_opens_the_breaker_however_calls_are_bounded(
    serve: ServerFactory, clock: VirtualClock, bound: str
) -> None:
    backend = Backend(200)
    backend.gate = asyncio.Event()  # never set until the end: the service hangs
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    options: dict[str, Any] = (
        {"retry": RetryPolicy(pauses=(), attempt_timeout=2.0)}
        if bound == "attempt_timeout"
        else {"retry": RetryPolicy(pauses=()), "deadline": 2.0}
    )
    try:
        async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
            for _ in range(BREAKER.minimum_throughput):
                with pytest.raises((RetriesExhausted, DeadlineExceeded)):
                    await engine.request("GET", "svc", "/x", **options)
            state = guard.breaker_state("svc", host)
            hits = backend.hits
            with pytest.raises(CircuitOpen):
                await engine.request("GET", "svc", "/x", **options)
            assert backend.hits == hits, "the open breaker sent nothing"
    finally:
        backend.gate.set()
    assert state is BreakerState.OPEN, f"{bound}: {hits} hung calls, breaker {state}"


async def test_a_probe_cut_by_its_callers_deadline_frees_the_slot_at_once(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """In one process too: the cut probe neither re-opens the breaker nor holds the slot."""
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x", retry=once)
        await clock.sleep(5.0)
        hang = backend.gate = asyncio.Event()
        try:
            with pytest.raises(DeadlineExceeded) as info:
                await engine.request("GET", "svc", "/x", retry=once, deadline=1.0)
        finally:
            backend.gate = None
            hang.set()
        assert info.value.attempts[-1].outcome == DEADLINE_CUT
        assert guard.breaker_state("svc", host) is BreakerState.HALF_OPEN, "no verdict"
        assert not guard._probes
        backend.status = 200
        response = await engine.request("GET", "svc", "/x", retry=once)
        assert response.status == 200, "the next call probed at once"
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED


def test_a_retry_cut_by_the_deadline_stays_paid_for_and_counts_as_a_timeout() -> None:
    """The guard's side of a deadline cut: the retry was sent, so the budget keeps it (only a
    retry never sent is given back), and the breaker counts the timeout."""
    clock = VirtualClock(start=100.0, autojump=False)
    budget = RetryBudget(ratio=0.1, min_retries_per_second=1.0, window=30.0)
    guard = OverloadGuard(budget=budget, breaker=BREAKER, clock=clock)
    store = guard.store
    assert isinstance(store, MemoryStore)

    def retries() -> int:
        held = store._budgets.get(guard._budget_key("svc"))
        return 0 if held is None else sum(held[0].retries)

    call = _Call(*KEY)
    assert _done(guard.admit(call, 1)) is None
    _done(guard.settle(call, 1, DOWN))
    last = RequestError("503")
    assert _done(guard.before_retry(call, 1, DOWN, 0.5, last)) is None
    assert retries() == 1
    clock.advance(0.5)
    assert _done(guard.admit(call, 2)) is None
    _done(guard.settle(call, 2, DEADLINE_CUT))
    assert retries() == 1, "a retry that was sent stays paid for"
    status = guard._status_of(KEY)
    assert status is not None
    assert sum(status.failures) == 2, "the cut counted as a failure"
