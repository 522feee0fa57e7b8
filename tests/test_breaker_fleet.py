"""Breaker trips and the retry budget shared by the engines of a fleet, through one store.

Two engines stand for two processes; they share a store (a MemoryStore here, Redis in
production: the same protocol) and a loopback service, on virtual time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from le_transport import Engine, RetryPolicy
from le_transport.errors import (
    CircuitOpen,
    DeadlineExceeded,
    RetriesExhausted,
    RetryBudgetExhausted,
)
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    RetryBudget,
)
from le_transport.state import Entry, MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.test_guard_hot_path import _Call, _done

ServerFactory = Callable[[web.Application], Awaitable[str]]
POLICY = RetryPolicy(attempt_timeout=None)


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(
        minimum_throughput=4,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=20.0, cap=600.0, jitter=0.0, floor=0.0),
    )


async def test_a_break_opened_by_one_process_is_adopted_by_the_others(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = _fleet(clock, store, 2, _breaker())
    async with (
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[0], retry=POLICY) as a,
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[1], retry=POLICY) as b,
    ):
        with pytest.raises(RetriesExhausted):
            await a.request("GET", "svc", "/x")
        hits = backend.hits
        with pytest.raises(CircuitOpen) as info:
            await b.request("GET", "svc", "/x")
        assert backend.hits == hits, "the other process sent nothing during the break"
        assert info.value.retry_at == pytest.approx(clock.now() + 20.0)


async def test_in_half_open_one_probe_goes_for_the_whole_fleet(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = _fleet(clock, store, 3, _breaker())
    engines = [
        Engine({"svc": host}, scheme="http", clock=clock, overload=g, retry=POLICY) for g in guards
    ]
    for e in engines:
        await e.start()
    try:
        with pytest.raises(RetriesExhausted):
            await engines[0].request("GET", "svc", "/x")
        for e in engines[1:]:
            with pytest.raises(CircuitOpen):
                await e.request("GET", "svc", "/x")
        await clock.sleep(20.0)
        backend.status = 200
        backend.gate = asyncio.Event()
        backend.arrived.clear()
        hits = backend.hits
        once = RetryPolicy(pauses=(), attempt_timeout=None)
        calls = [asyncio.ensure_future(e.request("GET", "svc", "/x", retry=once)) for e in engines]
        await backend.arrived.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert backend.hits == hits + 1, "one probe for three processes"
        assert sum(1 for r in results if isinstance(r, CircuitOpen)) == 2
    finally:
        for e in engines:
            await e.close()


async def test_the_fleets_retries_share_one_budget(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=300.0)
    guards = [
        OverloadGuard(budget=budget, breaker=None, store=store, account="1", clock=clock)
        for _ in range(4)
    ]
    engines = [
        Engine({"svc": host}, scheme="http", clock=clock, overload=g, retry=POLICY) for g in guards
    ]
    for e in engines:
        await e.start()
    try:
        results = await asyncio.gather(
            *(e.request("GET", "svc", "/x") for e in engines for _ in range(10)),
            return_exceptions=True,
        )
    finally:
        for e in engines:
            await e.close()
    assert all(isinstance(r, (RetryBudgetExhausted, RetriesExhausted)) for r in results)
    assert backend.hits - 40 <= 0.2 * 40, "four processes, one budget"


# -- the trip marker and the probe lock, process by process -----------------------------------
#
# Guards stand for processes here, driven attempt by attempt (as the retry loop drives its gate)
# on a clock moved by hand.

BREAKER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
HOST = "127.0.0.1:8080"
DOWN = Outcome.response(503)
OK = Outcome.response(200)


def _fleet(
    clock: VirtualClock, store: MemoryStore, n: int = 2, breaker: CircuitBreaker = BREAKER
) -> list[OverloadGuard]:
    return [
        OverloadGuard(budget=None, breaker=breaker, store=store, account="1", clock=clock)
        for _ in range(n)
    ]


async def _trip(guard: OverloadGuard) -> None:
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN


def _probe_key() -> str:
    return state_key("1", "breaker-probe", "svc", HOST)


def _trip_key() -> str:
    return state_key("1", "breaker", "svc", HOST)


async def test_after_a_failed_probe_the_next_holder_of_the_lock_finds_the_new_break() -> None:
    """A's probe fails: A re-opens for a longer break, publishes it, frees the probe lock. B,
    which read the trip less than sync_interval ago and still sees half-open, takes the lock:
    it reads the trip again before probing, and sends nothing until the new break ends."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _fleet(clock, store)
    await _trip(a)
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen)  # B adopts the break
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen), "A's probe is out"
    clock.advance(0.2)
    await a.settle(probe, 1, DOWN)
    assert await store.get(_probe_key()) is None, "A freed its lock"
    clock.advance(0.1)  # B synced 0.3 s ago: its own view is half-open, the lock is free
    refused = await b.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen), "no second probe to a service that just failed one"
    assert refused.retry_at == pytest.approx(115.2)
    assert await store.get(_probe_key()) is None, "B let go of the lock it took"
    assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    clock.advance(10.0)
    assert await b.admit(_Call("svc", HOST), 1) is None, "after the new break: B's probe"


async def test_an_abandoned_probe_frees_the_fleets_lock_at_once() -> None:
    """A cancelled probe (or one cut by its caller's deadline) frees the fleet's probe lock, not
    only this process's slot: left to its 30 s lease, it kept the whole fleet from probing."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _fleet(clock, store)
    await _trip(a)
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    assert await store.get(_probe_key()) is not None
    a.abandon(probe, 1)
    # This process probes again at once, even before the release has run.
    again = _Call("svc", HOST)
    assert await a.admit(again, 1) is None
    a.abandon(again, 1)
    for _ in range(5):
        await asyncio.sleep(0)  # the release task runs
    assert await store.get(_probe_key()) is None
    assert not a._releases
    assert not a._stale_locks
    # ... and so does another process.
    clock.advance(0.1)
    probe_b = _Call("svc", HOST)
    assert await b.admit(probe_b, 1) is None
    await b.settle(probe_b, 1, OK)
    assert b.breaker_state("svc", HOST) is BreakerState.CLOSED


class _HangingDeletes(MemoryStore):
    """A shared store whose deletes never answer (a store that is down, with no fallback)."""

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await asyncio.Event().wait()
        return False


async def test_draining_the_guard_leaves_no_release_behind_even_when_the_store_hangs() -> None:
    # The engine drains its guard as it closes: an abandoned probe's release waits a second
    # of the clock at most, then is cancelled (its lock then frees itself at its lease's end).
    clock = VirtualClock(start=100.0)
    store = _HangingDeletes(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    await clock.sleep(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    a.abandon(probe, 1)
    assert a._releases
    started = clock.now()
    await a.drain()
    assert not a._releases
    assert clock.now() - started == pytest.approx(1.0)


class _StallingStore(MemoryStore):
    """A shared store whose next read, or next write, of a breaker trip waits on ``release``
    (a Redis round trip during which the caller is cancelled)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.stall: str | None = None  # "get" or "set"
        self.skip = 0  # that many such calls go through first
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def _maybe_stall(self, op: str, key: str) -> None:
        if self.stall == op and ":breaker:" in key:
            if self.skip:
                self.skip -= 1
                return
            self.stall = None
            self.stalled.set()
            await self.release.wait()

    async def get(self, key: str) -> Entry | None:
        await self._maybe_stall("get", key)
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        await self._maybe_stall("set", key)
        await super().set(key, value, ttl=ttl)


@pytest.mark.parametrize("where", ["admitting", "publishing its verdict"])
async def test_a_probe_cancelled_inside_the_guards_store_calls_frees_the_fleets_lock(
    where: str,
) -> None:
    # The probe's lock was taken (or its verdict being published) when the caller's task was
    # cancelled, before the guard had recorded the probe (or after it had dropped it): nothing
    # freed the lock, and the whole fleet got CircuitOpen for the 30 s lease with no probe out.
    clock = VirtualClock(start=100.0, autojump=False)
    store = _StallingStore(clock)
    a, b = _fleet(clock, store)
    await _trip(a)
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    if where == "admitting":
        store.stall, store.skip = "get", 1  # not the sync's read: the re-read, lock held
        task = asyncio.ensure_future(a.admit(probe, 1))
    else:
        assert await a.admit(probe, 1) is None
        store.stall = "set"  # the new trip after the probe failed
        task = asyncio.ensure_future(a.settle(probe, 1, DOWN))
    await store.stalled.wait()
    assert await MemoryStore.get(store, _probe_key()) is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):
        await asyncio.sleep(0)  # the release task runs
    assert await store.get(_probe_key()) is None, "the lock went with the cancelled probe"
    if where == "admitting":
        clock.advance(0.1)
        assert await b.admit(_Call("svc", HOST), 1) is None, "another process may probe now"


async def test_a_late_release_never_frees_the_lock_of_a_later_probe() -> None:
    """Each probe's lock holds a value of its own: the release of an abandoned one, done after
    this process took the lock again, leaves the new lock in place."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(5.0)
    first = _Call("svc", HOST)
    assert await a.admit(first, 1) is None
    a.abandon(first, 1)
    second = _Call("svc", HOST)
    assert await a.admit(second, 1) is None
    held = await store.get(_probe_key())
    for _ in range(5):
        await asyncio.sleep(0)
    assert await store.get(_probe_key()) == held, "the second probe's lock is still held"


async def test_a_probe_cut_by_its_callers_deadline_lets_another_process_probe_at_once(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = _fleet(clock, store, 2, _breaker())
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with (
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[0], retry=POLICY) as a,
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[1], retry=POLICY) as b,
    ):
        with pytest.raises(RetriesExhausted):
            await a.request("GET", "svc", "/x")
        await clock.sleep(20.0)
        hang = backend.gate = asyncio.Event()  # the service hangs: the probe outlives its deadline
        with pytest.raises(DeadlineExceeded):
            await a.request("GET", "svc", "/x", retry=once, deadline=1.0)
        for _ in range(5):
            await asyncio.sleep(0)
        backend.gate = None
        hang.set()
        backend.status = 200
        hits = backend.hits
        started = clock.now()
        response = await b.request("GET", "svc", "/x", retry=once)
        assert response.status == 200
        assert backend.hits == hits + 1
        assert clock.now() - started < BREAKER.probe_lease, "not kept out for the lease"


async def test_a_process_that_missed_the_break_waits_for_the_fleets_one_probe() -> None:
    """The trip stays for the break and then the probe lease: a process that made no call during
    the break, or started after it, finds it and goes half-open rather than closed, so it sends
    nothing while another process's probe is out."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    clock.advance(0.1)
    late = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    refusals = [await late.admit(_Call("svc", HOST), 1) for _ in range(10)]
    assert all(isinstance(r, CircuitOpen) for r in refusals), "A's probe is the fleet's one"
    assert late.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await a.settle(probe, 1, OK)
    assert await store.get(_trip_key()) is None, "the probe's success closed the fleet's breaker"


async def test_a_probe_taken_late_after_the_break_keeps_the_trip_while_it_is_out() -> None:
    """The trip outlives the break by the probe lease; a probe that goes out late in that tail
    (no call came sooner) keeps it for its own lease, so that a process started meanwhile
    still goes half-open."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(20.0)  # the break ended at 105; the trip would go at 135
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    clock.advance(20.0)  # 140: the probe (lease until 150) is still out
    late = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    assert isinstance(await late.admit(_Call("svc", HOST), 1), CircuitOpen)
    assert late.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await a.settle(probe, 1, DOWN)
    clock.advance(1.0)
    refused = await late.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at == pytest.approx(150.0), "the probe's failure: a 10 s break from 140"


async def test_a_trip_without_its_half_open_tail_is_read_as_a_break_of_its_ttl() -> None:
    """An entry as the previous version wrote it (its TTL the break alone) still means open."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await store.set(_trip_key(), json.dumps({"opens": 2}), ttl=8.0)
    refused = await a.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at == pytest.approx(108.0)


@pytest.mark.parametrize(
    "raw",
    [
        '{"opens": Infinity}',
        '{"opens": 1e999}',
        '{"opens": NaN}',
        '{"opens": "x"}',
        '{"opens": 0}',
        '{"opens": true}',
        '{"opens": 2, "half_open": -Infinity}',
        '{"opens": 2, "half_open": "x"}',
        "[" * 100_000 + "]" * 100_000,
        "[1]",
        "7",
        "not json",
    ],
    ids=lambda raw: raw[:24],
)
async def test_a_damaged_trip_entry_is_logged_once_and_ignored(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It raised OverflowError or RecursionError out of admit: every call to the host failed."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (guard,) = _fleet(clock, store, 1)
    await store.set(_trip_key(), raw, ttl=60.0)
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        for _ in range(3):
            call = _Call("svc", HOST)
            assert await guard.admit(call, 1) is None
            await guard.settle(call, 1, OK)
            clock.advance(2.0)  # past sync_interval: the entry is read again
    warnings = [r for r in caplog.records if "damaged circuit breaker trip" in r.getMessage()]
    assert len(warnings) == 1
    assert len(warnings[0].getMessage()) < 300, "never the entry at length"
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED


async def test_a_huge_number_of_openings_in_a_trip_entry_is_bounded() -> None:
    """A count of openings far past what any break needs is taken as the most a process adopts:
    the next break's arithmetic runs one step per opening."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (guard,) = _fleet(clock, store, 1)
    await store.set(_trip_key(), json.dumps({"opens": 10**4000, "half_open": 30.0}), ttl=40.0)
    assert isinstance(await guard.admit(_Call("svc", HOST), 1), CircuitOpen)
    clock.advance(10.0)
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None
    await guard.settle(probe, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN
    assert guard._status[("svc", HOST)].open_until == pytest.approx(clock.now() + 120.0)


class FleetBreakerMachine(RuleBasedStateMachine):
    """Three processes share one store; calls start, end and are cancelled in any order, on any
    clock. Whatever the interleaving: no probe goes out while a break the fleet published is on
    (a failed probe's new break included); at most one probe is out within its lease across the
    fleet; and until a probe closes the fleet's breaker, or its trip has lasted the break and
    the probe lease with no probe, a process lets an ordinary attempt through only if it has
    not read the store since the trip was published (the sync interval's lateness) - a process
    that missed the break included."""

    breaker = CircuitBreaker(
        minimum_throughput=2,
        sampling_window=30.0,
        breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
        probe_lease=10.0,
    )

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(start=100.0, autojump=False)
        self.store = MemoryStore(self.clock)
        self.guards = _fleet(self.clock, self.store, 3, self.breaker)
        #: Attempts in flight: (process, call, admitted as a probe, admitted at).
        self.in_flight: list[tuple[int, _Call, bool, float]] = []
        self.ops = 0
        self.synced_at = [-1, -1, -1]  # the op at which each process last read the trip
        self.trip = self._trip_entry()
        #: The last trip published: at which op, its break's end, when it may be gone
        #: (the break and then the probe lease, or a late probe's lease); None once closed.
        self.published: tuple[int, float, float] | None = None

    def _trip_entry(self) -> tuple[str, float] | None:
        return self.store._values.get(_trip_key())

    def _after(self, process: int) -> None:
        """Note what process ``process``'s last operation did to the fleet's trip."""
        self.ops += 1
        entry = self._trip_entry()
        guard = self.guards[process]
        now = self.clock.now()
        if entry is not None and entry != self.trip:
            status = guard._status[("svc", HOST)]
            if self.published is not None and status.open_until <= now:
                # A late probe kept the trip for its lease: same trip, later end.
                op, until, gone = self.published
                self.published = (op, until, max(gone, entry[1]))
            else:
                lease = self.breaker.probe_lease
                self.published = (self.ops, status.open_until, status.open_until + lease)
        self.trip = entry

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 12.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(process=st.integers(0, 2))
    def a_call_starts(self, process: int) -> None:
        guard = self.guards[process]
        synced = guard._synced_at.get(("svc", HOST))
        call = _Call("svc", HOST)
        refused = _done(guard.admit(call, 1))
        if guard._synced_at.get(("svc", HOST)) != synced:
            self.synced_at[process] = self.ops + 1
        self._after(process)
        if refused is not None:
            assert isinstance(refused, CircuitOpen)
            return
        now = self.clock.now()
        probe = (id(call), 1) in guard._probes
        trip = self.published
        if probe:
            if trip is not None:
                assert now >= trip[1], "a probe went out during the fleet's break"
            lease = self.breaker.probe_lease
            others = [p for _, _, p, at in self.in_flight if p and now < at + lease]
            assert not others, "two probes out at once"
        elif trip is not None and now < trip[2]:
            assert self.synced_at[process] < trip[0], (
                "an ordinary attempt went through a trip this process could have read"
            )
        self.in_flight.append((process, call, probe, now))

    @rule(pick=st.integers(0, 20), outcome=st.sampled_from([OK, DOWN]))
    def an_attempt_ends(self, pick: int, outcome: Outcome) -> None:
        if not self.in_flight:
            return
        process, call, probe, _ = self.in_flight.pop(pick % len(self.in_flight))
        guard = self.guards[process]
        _done(guard.settle(call, 1, outcome))
        self._after(process)
        if probe and outcome is OK and guard.breaker_state("svc", HOST) is BreakerState.CLOSED:
            self.published = None  # the probe's success closed the fleet's breaker

    @rule(pick=st.integers(0, 20))
    def an_attempt_is_cancelled(self, pick: int) -> None:
        if not self.in_flight:
            return
        process, call, _, _ = self.in_flight.pop(pick % len(self.in_flight))
        self.guards[process].abandon(call, 1)
        self._after(process)


FleetBreakerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
test_the_fleets_breaker_holds_its_rules_in_any_interleaving = FleetBreakerMachine.TestCase
