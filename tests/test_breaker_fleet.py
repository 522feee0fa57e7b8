"""Breaker trips and the retry budget shared by the engines of a fleet, through one store.

Two engines stand for two processes; they share a store (a MemoryStore here, Redis in
production: the same protocol) and a loopback service, on virtual time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Generator

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from le_transport import Engine, RetryPolicy
from le_transport.clock import Clock
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
    TokenBucket,
)
from le_transport.state import Entry, MemoryStore, StateStore, state_key
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


class _SlowDeletes(MemoryStore):
    """A shared store whose each delete of a probe lock waits for a gate of its own (a Redis
    round trip that takes its time)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.gates: list[asyncio.Event] = []

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        if ":breaker-probe:" in key:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        return await super().delete(key, only_if=only_if)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(50):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


@pytest.mark.parametrize("closing", ["the guard drains", "the engine closes"])
async def test_draining_waits_for_a_release_started_while_it_drains(closing: str) -> None:
    """A probe abandoned while the guard drains (a call cancelled as the engine closes, or a
    call of another engine sharing the guard) has its lock's release awaited too: drain()
    waited only for the releases there when it began, and returned with the new one pending,
    a task that outlived the engine (under asyncio.run, cancelled at the loop's end with the
    fleet's probe lock still held for its lease)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _SlowDeletes(clock)
    (guard,) = _fleet(clock, store, 1)
    hosts = [HOST, "127.0.0.1:8081"]
    for host in hosts:
        for _ in range(BREAKER.minimum_throughput):
            call = _Call("svc", host)
            assert await guard.admit(call, 1) is None
            await guard.settle(call, 1, DOWN)
    clock.advance(5.0)
    probes = [_Call("svc", host) for host in hosts]
    for probe in probes:
        assert await guard.admit(probe, 1) is None
    engine = Engine({"svc": HOST}, scheme="http", clock=clock, overload=guard)
    guard.abandon(probes[0], 1)
    draining = asyncio.ensure_future(
        guard.drain() if closing == "the guard drains" else engine.close()
    )
    await _until(lambda: len(store.gates) == 1)
    guard.abandon(probes[1], 1)  # while the drain waits for the first release
    await _until(lambda: len(store.gates) == 2)
    store.gates[0].set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not draining.done(), "the second release is still out"
    store.gates[1].set()
    await draining
    assert not guard._releases
    for host in hosts:
        assert await store.get(state_key("1", "breaker-probe", "svc", host)) is None


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

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._maybe_stall("set", key)
        return await super().set(key, value, ttl=ttl, only_if=only_if)


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


# -- a newer break that another process published while this one probed ------------------------
#
# Process B read the store before A's trip was published (its sync_interval is long), so its own
# breaker is closed; its attempts then in flight fail, and it opens and publishes a break of its
# own. Meanwhile A, its break over, takes the fleet's probe. A must not replace B's break with
# the half-open tail of its own trip (a get and then a set), nor delete it when its probe
# succeeds: either way the fleet lost the newest break it had. These scenarios run on a
# MemoryStore here and on a real Redis in tests/test_redis_store.py.

#: B's breaker: a long break, so that it is on whenever the scenario looks.
NEWER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=60.0, jitter=0.0, floor=0.0),
)


class PausingStore:
    """A :class:`StateStore` over ``inner`` whose next write of the breaker trip, once
    ``armed``, waits for ``go``: a process paused between reading the trip and writing it, as a
    round trip to Redis lets another process run in between."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.armed = False
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if self.armed and key == _trip_key():
            self.armed = False
            self.paused.set()
            await self.go.wait()
        if only_if is None:
            return await self.inner.set(key, value, ttl=ttl)
        return await self.inner.set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        return await self.inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        return await self.inner.budget(key, policy, deposits=deposits, withdraw=withdraw)

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        return await self.inner.reserve(key, bucket)

    async def close(self) -> None:
        await self.inner.close()


def _process(
    store: StateStore, clock: Clock, breaker: CircuitBreaker, sync: float
) -> OverloadGuard:
    return OverloadGuard(
        budget=None, breaker=breaker, store=store, account="1", clock=clock, sync_interval=sync
    )


async def _unsynced(store: StateStore, clock: Clock) -> tuple[OverloadGuard, list[_Call]]:
    """Process B, with four attempts admitted before any trip was published."""
    b = _process(store, clock, NEWER, sync=3600.0)
    calls = [_Call("svc", HOST) for _ in range(4)]
    for call in calls:
        assert await b.admit(call, 1) is None
    return b, calls


async def _b_opens(b: OverloadGuard, calls: list[_Call], store: StateStore) -> Entry:
    """B's attempts fail: it opens and publishes its break; the entry it published."""
    for call in calls:
        await b.settle(call, 1, DOWN)
    assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    published = await store.get(_trip_key())
    assert published is not None
    return published


async def _the_fleet_keeps(store: StateStore, clock: Clock, published: Entry) -> None:
    """B's break is what the store holds, and what a process reading it now finds."""
    held = await store.get(_trip_key())
    assert held is not None, "the newest break was deleted"
    assert held.value == published.value, "the newest break was overwritten"
    late = _process(store, clock, BREAKER, sync=0.0)
    refused = await late.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert late.breaker_state("svc", HOST) is BreakerState.OPEN
    assert refused.retry_at > clock.now() + 30.0, "B's 60 s break"


async def newer_break_during_a_tail_rewrite(
    store: StateStore,
    clock: Clock,
    breaker: CircuitBreaker,
    past_the_break: Callable[[OverloadGuard], Awaitable[None]],
) -> None:
    """A reads its trip in the half-open tail, and while it rewrites the tail (keeping the trip
    for its probe), B publishes its break: A's write must not replace it, and A must not probe
    while it is on."""
    pausing = PausingStore(store)
    a = _process(pausing, clock, breaker, sync=0.0)
    b, in_flight = await _unsynced(store, clock)
    await _trip(a)
    await past_the_break(a)
    pausing.armed = True
    admitting = asyncio.ensure_future(a.admit(_Call("svc", HOST), 1))
    await pausing.paused.wait()  # A has read the trip, and is about to write its tail
    published = await _b_opens(b, in_flight, store)
    pausing.go.set()
    refused = await admitting
    assert isinstance(refused, CircuitOpen), "a probe went out during the fleet's newest break"
    assert refused.retry_at > clock.now() + 30.0, "A adopted B's break"
    assert await store.get(_probe_key()) is None, "A let go of the probe lock"
    await _the_fleet_keeps(store, clock, published)


async def newer_break_during_a_probe(
    store: StateStore,
    clock: Clock,
    breaker: CircuitBreaker,
    past_the_break: Callable[[OverloadGuard], Awaitable[None]],
) -> None:
    """A's probe is out when B publishes its break; A's probe then succeeds: A's breaker
    closes, and the trip it probed on goes, but B's break stays for the fleet."""
    a = _process(store, clock, breaker, sync=0.0)
    b, in_flight = await _unsynced(store, clock)
    await _trip(a)
    await past_the_break(a)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    published = await _b_opens(b, in_flight, store)
    await a.settle(probe, 1, OK)
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED
    await _the_fleet_keeps(store, clock, published)
    refused = await a.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen), "A adopts B's break at its next read"


@pytest.mark.parametrize(
    "scenario", [newer_break_during_a_tail_rewrite, newer_break_during_a_probe]
)
async def test_a_break_published_while_another_process_probes_is_never_lost(
    scenario: Callable[..., Awaitable[None]],
) -> None:
    clock = VirtualClock(start=100.0, autojump=False)

    async def past_the_break(a: OverloadGuard) -> None:
        clock.advance(6.0)  # A's 5 s break is over; its trip is in the half-open tail

    await scenario(MemoryStore(clock), clock, BREAKER, past_the_break)


async def test_a_probes_success_still_deletes_the_trip_it_probed_and_its_tail_rewrite() -> None:
    """With no other process in between, the conditional writes go through as before: the
    tail is kept while the probe is out, and the probe's success deletes it."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(20.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    entry = await store.get(_trip_key())
    assert entry is not None
    assert entry.ttl == pytest.approx(BREAKER.probe_lease), "the tail was kept for the probe"
    await a.settle(probe, 1, OK)
    assert await store.get(_trip_key()) is None


class _MovingTrip(MemoryStore):
    """A shared store where another process rewrites the trip (its break still over) just
    before each compare-and-set of it: a fleet's trip that changes at every read."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.moves = 0

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        entry = await super().get(key)
        if only_if is not None and entry is not None:
            self.moves += 1
            moved = json.dumps({"opens": 1, "half_open": entry.ttl + 1.0, "id": f"x:{self.moves}"})
            await super().set(key, moved, ttl=entry.ttl)
        return await super().set(key, value, ttl=ttl, only_if=only_if)


async def test_a_trip_that_changes_at_every_read_sends_no_probe_and_frees_the_lock() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = _MovingTrip(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(20.0)  # late in the trip's tail: the probe would keep it
    refused = await a.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at == pytest.approx(clock.now() + 1.0), "tried again after a sync"
    assert store.moves == 2, "read twice, then left to a later call"
    assert await store.get(_probe_key()) is None
    assert a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    assert not a._probes


async def test_two_processes_breaks_after_as_many_openings_are_told_apart() -> None:
    """Each trip entry carries a mark of its own: B's first break and A's read alike otherwise,
    and a compare-and-delete of A's would delete B's."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _fleet(clock, store)
    assert await b.admit(_Call("svc", HOST), 1) is None  # B reads the store: no trip yet
    await _trip(a)
    first = await store.get(_trip_key())
    await _trip(b)  # within B's sync_interval: B opens on its own, unaware of A's break
    second = await store.get(_trip_key())
    assert first is not None
    assert second is not None
    assert json.loads(first.value)["opens"] == json.loads(second.value)["opens"] == 1
    assert first.value != second.value


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


class _RoundTrip:
    """Suspends its awaiter once: a store's round trip, during which other processes run."""

    def __await__(self) -> Generator[None, None, None]:
        yield


class SteppingStore(MemoryStore):
    """A shared MemoryStore whose every operation first suspends once, so that a machine
    driving the guards' coroutines step by step interleaves the processes' store operations
    in any order (each operation itself atomic, as on Redis).

    Every write that takes effect on the trip is checked: an entry whose break is still on may
    only be replaced by another break (a process publishing its own opening), never by a
    half-open tail nor deleted. ``lost`` names each time it was."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.lost: list[str] = []

    def _break_on(self, value: str, ttl: float) -> bool:
        return ttl - float(json.loads(value).get("half_open", 0)) > 0

    def _held_break(self, key: str) -> bool:
        item = self._live(key) if key == _trip_key() else None
        return item is not None and self._break_on(item[0], item[1] - self._clock.now())

    async def get(self, key: str) -> Entry | None:
        await _RoundTrip()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await _RoundTrip()
        held = self._held_break(key)
        if only_if is None:
            stored = await super().set(key, value, ttl=ttl)
        else:
            stored = await super().set(key, value, ttl=ttl, only_if=only_if)
        if held and stored is not False and not self._break_on(value, ttl):
            self.lost.append(f"a break still on was overwritten at {self._clock.now()}")
        return stored

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await _RoundTrip()
        return await super().add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await _RoundTrip()
        held = self._held_break(key)
        deleted = await super().delete(key, only_if=only_if)
        if held and deleted:
            self.lost.append(f"a break still on was deleted at {self._clock.now()}")
        return deleted


async def _waits(clock: VirtualClock, seconds: float) -> None:
    """A process idle for ``seconds`` of the clock (which only the scheduler moves)."""
    until = clock.now() + seconds
    while clock.now() < until:
        await _RoundTrip()


async def _attempt(guard: OverloadGuard, clock: VirtualClock, lasts: float, ok: bool) -> None:
    """One call's attempt: admitted (or refused), and ending ``lasts`` seconds later."""
    call = _Call("svc", HOST)
    if await guard.admit(call, 1) is None:
        await _waits(clock, lasts)
        await guard.settle(call, 1, OK if ok else DOWN)


class _Plan:
    """When each process acts, drawn: A's first attempts, its probe and how long it lasts, how
    long B's attempts last (admitted at once: before A's trip is published, if B goes first),
    when C calls, and whether the service is back for the probes."""

    def __init__(self, data: st.DataObject) -> None:
        self.a_fails_after = data.draw(st.sampled_from([0.0, 1.0]))
        self.a_probe_lasts = data.draw(st.sampled_from([0.0, 1.0, 4.0, 8.0]))
        self.b_fails_after = data.draw(st.sampled_from([0.0, 1.0, 5.0, 6.0, 7.0, 8.0, 10.0]))
        self.c_calls_every = data.draw(st.sampled_from([1.0, 3.0, 6.0]))
        self.back = data.draw(st.booleans())


async def _trips_and_probes(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process A: its attempts fail, it opens and publishes; once its break is over, it probes."""
    for _ in range(FleetBreakerMachine.breaker.minimum_throughput):
        await _attempt(guard, clock, plan.a_fails_after, ok=False)
    await _waits(clock, 6.0)  # its 5 s break
    await _attempt(guard, clock, plan.a_probe_lasts, ok=plan.back)


async def _fails_unaware(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process B: two attempts admitted at once, which fail later."""
    calls = [_Call("svc", HOST) for _ in range(2)]
    admitted = [call for call in calls if await guard.admit(call, 1) is None]
    await _waits(clock, plan.b_fails_after)
    for call in admitted:
        await guard.settle(call, 1, DOWN)
    await _waits(clock, 6.0)
    await _attempt(guard, clock, 0.0, ok=plan.back)


async def _calls_now_and_then(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process C: a call every few seconds, whose answer the service's state decides."""
    for _ in range(4):
        await _attempt(guard, clock, 0.0, ok=plan.back)
        await _waits(clock, plan.c_calls_every)


_SCRIPTS = (_trips_and_probes, _fails_unaware, _calls_now_and_then)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), schedule=st.lists(st.sampled_from([0, 1, 2, 0, 1, 2, -1]), max_size=150))
def test_no_break_is_lost_in_any_interleaving_of_the_fleets_store_operations(
    data: st.DataObject, schedule: list[int]
) -> None:
    """Three processes, each a script of calls (A trips and probes after its break, B's
    attempts fail unaware of A's trip, C calls now and then), run interleaved store operation
    by store operation in the order ``schedule`` draws (a process's next step, or -1: a second
    passes), then in turn to their end. Whatever the order: a break the fleet published is
    never lost while it is on (no process rewrites it as its own trip's half-open tail, nor
    deletes it when its probe succeeds), and at most one probe is out."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = SteppingStore(clock)
    guards = _fleet(clock, store, 3, FleetBreakerMachine.breaker)
    plan = _Plan(data)
    running = [script(guard, clock, plan) for script, guard in zip(_SCRIPTS, guards, strict=True)]
    live = set(range(len(running)))
    # The drawn order, then each live process in turn with a second passing after each round.
    rest = itertools.chain.from_iterable(itertools.repeat([0, 1, 2, -1], 200))
    try:
        for choice in itertools.chain(schedule, rest):
            if not live:
                break
            if choice == -1:
                clock.advance(1.0)
                continue
            if choice not in live:
                continue
            try:
                running[choice].send(None)
            except StopIteration:
                live.discard(choice)
            assert not store.lost, store.lost
            assert sum(len(guard._probes) for guard in guards) <= 1, "two probes out at once"
        assert not live, "every process ends"
    finally:
        for coro in running:
            coro.close()
