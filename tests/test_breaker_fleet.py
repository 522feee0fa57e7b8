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
    ConfigurationError,
    DeadlineExceeded,
    RetriesExhausted,
    RetryBudgetExhausted,
)
from le_transport.events import EventHooks, StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
    RetryBudget,
    TokenBucket,
)
from le_transport.state import Entry, FallbackStore, MemoryStore, StateStore, state_key
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


async def _holds_the_fleets_close(store: StateStore) -> None:
    """The trip entry is the fleet's closed mark: a probe's success replaced the trip with it
    (a compare-and-set), so that the processes half-open on that trip close too."""
    entry = await store.get(_trip_key())
    assert entry is not None, "the closed mark is kept for the half-open processes to read"
    data = json.loads(entry.value)
    assert "closed" in data, data
    assert "opens" not in data, "no break in it"


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
    await _holds_the_fleets_close(store)  # the probe's success closed the fleet's breaker
    clock.advance(1.0)  # past the late process's sync_interval
    assert await late.admit(_Call("svc", HOST), 1) is None, "it took the fleet's close"
    assert late.breaker_state("svc", HOST) is BreakerState.CLOSED
    assert not late._probes, "no probe of its own"


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
    await _probe_fails(guard)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN
    assert guard._status[("svc", HOST)].open_until == pytest.approx(clock.now() + 120.0)


# -- a newer break that another process published while this one probed ------------------------
#
# Process B read the store before A's trip was published (its sync_interval is long), so its own
# breaker is closed; its attempts then in flight fail, and it opens and publishes a break of its
# own. Meanwhile A, its break over, takes the fleet's probe. A must not replace B's break with
# the half-open tail of its own trip (a get and then a set), nor delete it (or write the fleet's
# closed mark over it) when its probe succeeds: either way the fleet lost the newest break it
# had. These scenarios run on a MemoryStore here and on a real Redis in tests/test_redis_store.py.

#: B's breaker: a long break, so that it is on whenever the scenario looks.
NEWER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=60.0, jitter=0.0, floor=0.0),
)


async def _probe_fails(guard: OverloadGuard, message: str = "the probe goes") -> None:
    """``guard`` lets one call through as the probe, and that probe fails (a 5xx)."""
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None, message
    await guard.settle(probe, 1, DOWN)


class ForwardingStore:
    """A :class:`StateStore` that hands every call to ``inner``: the tests' stores override
    the calls they are about."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
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


class PausingStore(ForwardingStore):
    """A :class:`StateStore` over ``inner`` whose next write of the breaker trip (a set or a
    set-if-absent), once ``armed``, waits for ``go``: a process paused between reading the trip
    and writing it, as a round trip to Redis lets another process run in between."""

    def __init__(self, inner: StateStore) -> None:
        super().__init__(inner)
        self.armed = False
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def _maybe_pause(self, key: str) -> None:
        if self.armed and key == _trip_key():
            self.armed = False
            self.paused.set()
            await self.go.wait()

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._maybe_pause(key)
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._maybe_pause(key)
        return await super().add(key, value, ttl=ttl)


def _process(
    store: StateStore, clock: Clock, breaker: CircuitBreaker, sync: float
) -> OverloadGuard:
    return OverloadGuard(
        budget=None, breaker=breaker, store=store, account="1", clock=clock, sync_interval=sync
    )


async def _unsynced(
    store: StateStore, clock: Clock, breaker: CircuitBreaker = NEWER
) -> tuple[OverloadGuard, list[_Call]]:
    """Process B, with four attempts admitted before any trip was published (on ``breaker``:
    by default a long first break, 60 s)."""
    b = _process(store, clock, breaker, sync=3600.0)
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


async def test_a_probes_success_still_replaces_the_trip_it_probed_and_its_tail_rewrite() -> None:
    """With no other process in between, the conditional writes go through as before: the
    tail is kept while the probe is out, and the probe's success replaces it with the fleet's
    closed mark."""
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
    await _holds_the_fleets_close(store)


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
    # Within B's sync_interval, B opens on its own, unaware of A's break; its break ends later
    # (as long, opened later): it is published over A's (one that ended no later is adopted).
    clock.advance(0.5)
    await _trip(b)
    second = await store.get(_trip_key())
    assert first is not None
    assert second is not None
    assert json.loads(first.value)["opens"] == json.loads(second.value)["opens"] == 1
    assert first.value != second.value


# -- a break published by a process that had not read the fleet's trip -------------------------
#
# Process B read the store before the fleet's trip was published (up to its sync_interval ago),
# and its attempts then in flight fail: it opens, its first break a short one. The fleet's break
# may be longer, escalated by many openings (a failed probe each): written over it, B's made the
# fleet probe as soon as B's break ended, and the fleet's breaks grow from the first again. So
# publishing a break never shortens or de-escalates the fleet's: B takes a break that is on and
# ends no sooner, or counts more openings, as its own, and publishes nothing. These scenarios
# run on a MemoryStore here and on a real Redis in tests/test_redis_store.py.

KEY = ("svc", HOST)
#: A break's end read back from a store's TTL: Redis keeps whole milliseconds (``PX`` rounded,
#: ``PTTL`` cut), a few of them at most; the real clock's readings agree with its to well under.
TTL_SLACK = 0.01


async def _escalate(
    a: OverloadGuard,
    openings: int,
    past_the_break: Callable[[OverloadGuard], Awaitable[None]],
) -> None:
    """A opens its breaker, and its probe fails after each break until ``openings``."""
    await _trip(a)
    for _ in range(openings - 1):
        await past_the_break(a)
        await _probe_fails(a, "A's probe")
    assert a._status[KEY].opens == openings


async def escalated_break_meets_an_unaware_opening(
    store: StateStore,
    clock: Clock,
    breaker: CircuitBreaker,
    past_the_break: Callable[[OverloadGuard], Awaitable[None]],
    openings: int,
) -> None:
    """A's break after ``openings`` openings (at least 2) is on when B's attempts, admitted
    before any trip, fail: B opens, and takes the fleet's break rather than publish its first
    one over it."""
    a = _process(store, clock, breaker, sync=0.0)
    b, in_flight = await _unsynced(store, clock, breaker)
    await _escalate(a, openings - 1, past_the_break)
    await past_the_break(a)
    # From here A's last opening is published and read back: the round trips that move the
    # break's end as B reads it from the entry's TTL all fall after this reading.
    before = clock.now()
    await _probe_fails(a, "A's probe")
    assert a._status[KEY].opens == openings
    escalated = await store.get(_trip_key())
    assert escalated is not None
    assert json.loads(escalated.value)["opens"] == openings
    until = a._status[KEY].open_until
    for call in in_flight:
        await b.settle(call, 1, DOWN)
    after = clock.now()
    held = await store.get(_trip_key())
    assert held is not None
    assert held.value == escalated.value, "B's first break replaced the fleet's escalated one"
    assert b.breaker_state(*KEY) is BreakerState.OPEN
    assert b._status[KEY].opens == openings, "B counts the fleet's openings"
    # Read from the entry's TTL on Redis: no sooner than A's end (but for the TTL's rounding
    # to a millisecond), later by at most the round trips made since ``before``. B's own first
    # break ended long before A's escalated one.
    assert until - TTL_SLACK <= b._status[KEY].open_until <= until + (after - before) + TTL_SLACK, (
        "B took A's break"
    )
    late = _process(store, clock, breaker, sync=0.0)
    refused = await late.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    latest = clock.now()
    assert until - TTL_SLACK <= refused.retry_at <= until + (latest - before) + TTL_SLACK, (
        "no probe before A's break ends"
    )


async def _settle_all(guard: OverloadGuard, calls: list[_Call], outcome: Outcome) -> None:
    for call in calls:
        await guard.settle(call, 1, outcome)


async def a_longer_break_published_between_the_read_and_the_write(
    store: StateStore, clock: Clock, short: CircuitBreaker
) -> None:
    """B opens (a ``short`` break) and reads the trip: nothing there. Before B's write, A opens
    and publishes its 60 s break: B's set-if-absent finds it, and B takes A's break."""
    a, a_calls = await _unsynced(store, clock)
    pausing = PausingStore(store)
    b, b_calls = await _unsynced(pausing, clock, short)
    pausing.armed = True
    opening = asyncio.ensure_future(_settle_all(b, b_calls, DOWN))
    await pausing.paused.wait()  # B has read the trip (none), and is about to publish its own
    published = await _b_opens(a, a_calls, store)  # A publishes its 60 s break meanwhile
    pausing.go.set()
    await opening
    await _the_fleet_keeps(store, clock, published)
    assert b.breaker_state(*KEY) is BreakerState.OPEN
    assert b._status[KEY].open_until > clock.now() + 30.0, "B took A's 60 s break"


async def test_an_escalated_break_is_kept_when_an_unaware_process_opens() -> None:
    """The fleet's 2 min break after six openings; B opens at its first (5 s): it was
    overwritten by B's, and the fleet probed 5 s later, its escalation started over."""
    clock = VirtualClock(start=100.0, autojump=False)

    async def past_the_break(a: OverloadGuard) -> None:
        clock.advance(a._status[KEY].open_until - clock.now() + 0.01)

    await escalated_break_meets_an_unaware_opening(
        MemoryStore(clock), clock, BREAKER, past_the_break, 6
    )


async def test_a_longer_break_published_between_a_read_and_a_write_is_kept() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    await a_longer_break_published_between_the_read_and_the_write(
        MemoryStore(clock), clock, BREAKER
    )


async def test_the_fleets_escalation_goes_on_with_the_default_sync_interval() -> None:
    """No process is made stale by hand: A's trip after its 5th opening expired (no call for
    the break and the probe lease); B, new, reads the store (nothing) and admits four attempts;
    A's probe fails 0.2 s later (its 6th opening: 2 min), B's attempts 0.1 s after that. The
    fleet still refuses for A's 2 min, and its next failed probe opens the 7th break, not the
    2nd (5 s, then 10 s, as it did)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a = _process(store, clock, BREAKER, sync=1.0)

    async def past_the_break(a: OverloadGuard) -> None:
        clock.advance(a._status[KEY].open_until - clock.now() + 0.01)

    await _escalate(a, 5, past_the_break)
    clock.advance(a._status[KEY].open_until - clock.now() + BREAKER.probe_lease + 1.0)
    assert await store.get(_trip_key()) is None, "the 5th trip is gone"
    b = _process(store, clock, BREAKER, sync=1.0)
    calls = [_Call("svc", HOST) for _ in range(4)]
    for call in calls:
        assert await b.admit(call, 1) is None
    clock.advance(0.1)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    clock.advance(0.2)
    await a.settle(probe, 1, DOWN)
    until = a._status[KEY].open_until
    assert until == pytest.approx(clock.now() + 120.0)
    clock.advance(0.1)
    await _settle_all(b, calls, DOWN)
    c = _process(store, clock, BREAKER, sync=1.0)
    refused = await c.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at == pytest.approx(until)
    clock.advance(until - clock.now())
    await _probe_fails(c)
    assert c._status[KEY].opens == 7
    assert c._status[KEY].open_until == pytest.approx(clock.now() + 120.0)


async def test_a_break_published_over_the_tail_between_a_read_and_a_write_is_kept() -> None:
    """B reads A's trip in its half-open tail (A's probe out) to publish its own break over it;
    before B's write, A's probe fails and A publishes its second, longer break over its tail:
    B's compare-and-set finds the entry changed, reads it again, and takes A's break."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    pausing = PausingStore(store)
    a = _process(store, clock, BREAKER, sync=0.0)
    b, in_flight = await _unsynced(pausing, clock, BREAKER)
    await _trip(a)
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    pausing.armed = True
    opening = asyncio.ensure_future(_settle_all(b, in_flight, DOWN))
    await pausing.paused.wait()  # B read A's tail and is about to write over it
    await a.settle(probe, 1, DOWN)  # A: its 2nd opening, a 10 s break, published
    published = await store.get(_trip_key())
    assert published is not None
    pausing.go.set()
    await opening
    assert await store.get(_trip_key()) == published, "A's 10 s break stays"
    assert b._status[KEY].opens == 2
    assert b._status[KEY].open_until == pytest.approx(clock.now() + 10.0)


async def test_a_break_over_an_escalated_trips_tail_keeps_the_fleets_count() -> None:
    """A's third break is over and its probe out when B's attempts fail: the fleet is half-open,
    so B publishes its own 5 s break, but after the fleet's three openings, not at one: if A's
    probe succeeds, B's break stays, and the fleet's next failed probe opens its fourth."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a = _process(store, clock, BREAKER, sync=0.0)
    b, in_flight = await _unsynced(store, clock, BREAKER)

    async def past_the_break(a: OverloadGuard) -> None:
        clock.advance(a._status[KEY].open_until - clock.now() + 0.01)

    await _escalate(a, 3, past_the_break)
    await past_the_break(a)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    await _settle_all(b, in_flight, DOWN)
    entry = await store.get(_trip_key())
    assert entry is not None
    assert json.loads(entry.value)["opens"] == 3
    assert b._status[KEY].opens == 3
    assert b._status[KEY].open_until == pytest.approx(clock.now() + 5.0), "B's own break"
    await a.settle(probe, 1, OK)
    assert await store.get(_trip_key()) == entry, "B's break stays for the fleet"
    clock.advance(5.0)
    c = _process(store, clock, BREAKER, sync=0.0)
    await _probe_fails(c)
    assert c._status[KEY].opens == 4
    assert c._status[KEY].open_until == pytest.approx(clock.now() + 40.0)


async def test_a_process_takes_a_fleets_break_with_more_openings_even_if_it_ends_sooner() -> None:
    """B's own failures, from attempts admitted before it read the fleet's break, neither
    lengthen that break nor add an opening to it: B's 60 s first break gives way to the fleet's
    second one, with a second left, and the event says the break is the fleet's."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    events: list[StateEvent] = []
    a = _process(store, clock, BREAKER, sync=0.0)
    b = OverloadGuard(
        budget=None,
        breaker=NEWER,
        store=store,
        account="1",
        clock=clock,
        sync_interval=3600.0,
        hooks=EventHooks(on_state=[events.append]),
    )
    in_flight = [_Call("svc", HOST) for _ in range(4)]
    for call in in_flight:
        assert await b.admit(call, 1) is None

    async def past_the_break(a: OverloadGuard) -> None:
        clock.advance(a._status[KEY].open_until - clock.now() + 0.01)

    await _escalate(a, 2, past_the_break)
    clock.advance(9.0)  # A's 10 s break: one second left
    published = await store.get(_trip_key())
    await _settle_all(b, in_flight, DOWN)
    assert await store.get(_trip_key()) == published
    assert b._status[KEY].opens == 2
    assert b._status[KEY].open_until == pytest.approx(a._status[KEY].open_until)
    (opened,) = [e for e in events if e.name == "circuit_open"]
    assert opened.details["adopted"] is True
    assert opened.details["opens"] == 2
    assert opened.details["retry_in"] == pytest.approx(1.0)


async def test_a_break_outlasting_the_fleets_after_as_many_openings_is_published() -> None:
    """The fleet's break (A's first, 5 s, 4 s left) is on, B's first (60 s) outlasts it after
    as many openings: B's is published, by a compare-and-set of A's entry."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a = _process(store, clock, BREAKER, sync=0.0)
    b, in_flight = await _unsynced(store, clock)
    await _trip(a)
    clock.advance(1.0)
    published = await _b_opens(b, in_flight, store)
    assert json.loads(published.value)["opens"] == 1
    await _the_fleet_keeps(store, clock, published)


class _MovingBreak(MemoryStore):
    """A shared store where, just before each write of the trip, another process publishes a
    break of its own that is over at once (a tail: nothing this process would take)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.moves = 0

    async def _move(self, key: str) -> None:
        if key == _trip_key():
            self.moves += 1
            moved = json.dumps({"opens": 1, "half_open": 30.0, "id": f"x:{self.moves}"})
            await super().set(key, moved, ttl=30.0)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._move(key)
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._move(key)
        return await super().add(key, value, ttl=ttl)


async def test_a_trip_that_changes_at_every_read_is_left_and_the_break_kept_locally() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = _MovingBreak(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    assert store.moves == 3, "read three times, then left as the others wrote it"
    entry = await store.get(_trip_key())
    assert entry is not None
    assert json.loads(entry.value)["id"] == "x:3"
    assert a.breaker_state(*KEY) is BreakerState.OPEN
    assert a._status[KEY].open_until == pytest.approx(clock.now() + 5.0), "its own break"


async def test_a_probe_fails_into_the_fleets_next_break_when_its_count_was_behind() -> None:
    """B's own count of openings (one) is behind the fleet's (three: B has not read the trip
    since): the probe it takes reads the trip's tail before it goes, and its failure opens the
    fleet's fourth break (40 s), not B's second (10 s)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    b = _process(store, clock, BREAKER, sync=3600.0)
    await _trip(b)
    await store.set(_trip_key(), json.dumps({"opens": 3, "half_open": 30.0}), ttl=31.0)
    clock.advance(6.0)  # B's break is over; the fleet's third ended a second ago
    await _probe_fails(b)
    assert b._status[KEY].opens == 4
    assert b._status[KEY].open_until == pytest.approx(clock.now() + 40.0)
    entry = await store.get(_trip_key())
    assert entry is not None
    assert json.loads(entry.value)["opens"] == 4


#: What an attempt the retry loop cut at its gate's bound (limit_attempt) ends with.
_CUT = Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout")


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
        if entry is not None and entry != self.trip and "closed" not in json.loads(entry[0]):
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

    def _cut_due(self) -> None:
        """End the attempts the guard bounded (a fleet probe, limit_attempt) whose bound has
        come, as the retry loop cuts them: a timeout."""
        now = self.clock.now()
        for entry in list(self.in_flight):
            process, call, _, _ = entry
            if call.until is not None and call.until <= now:
                self.in_flight.remove(entry)
                _done(self.guards[process].settle(call, 1, _CUT))
                self._after(process)

    @rule(process=st.integers(0, 2))
    def a_call_starts(self, process: int) -> None:
        self._cut_due()
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
            # Every probe is cut before its lock's lease ends (_cut_due): none other is out.
            others = [p for _, _, p, _ in self.in_flight if p]
            assert not others, "two probes out at once"
        elif trip is not None and now < trip[2]:
            assert self.synced_at[process] < trip[0], (
                "an ordinary attempt went through a trip this process could have read"
            )
        self.in_flight.append((process, call, probe, now))

    @rule(pick=st.integers(0, 20), outcome=st.sampled_from([OK, DOWN]))
    def an_attempt_ends(self, pick: int, outcome: Outcome) -> None:
        self._cut_due()
        if not self.in_flight:
            return
        process, call, probe, _ = self.in_flight.pop(pick % len(self.in_flight))
        guard = self.guards[process]
        _done(guard.settle(call, 1, outcome))
        self._after(process)
        if probe and outcome is OK and guard.breaker_state("svc", HOST) is BreakerState.CLOSED:
            # The probe's success closed the fleet's breaker only if its closed mark is what the
            # store holds now: its compare-and-set fails when another process published a newer
            # break while the probe was out, and that break still binds every process.
            entry = self._trip_entry()
            if entry is not None and "closed" in json.loads(entry[0]):
                self.published = None

    @rule(pick=st.integers(0, 20))
    def an_attempt_is_cancelled(self, pick: int) -> None:
        self._cut_due()
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

    Every write that takes effect on the trip is checked against the entry it replaces: a break
    still on may only be replaced by a break that ends no sooner (a process publishing a longer
    one), never by a shorter one, a half-open tail, the fleet's closed mark, or nothing
    (deleted); and while an entry lives, what replaces it never counts fewer openings (the
    fleet's escalation never starts over). ``lost`` names each time it did."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.lost: list[str] = []

    def _held(self, key: str) -> tuple[int, float] | None:
        """The trip entry at ``key`` while it lives: its openings, and when its break ends."""
        item = self._live(key) if key == _trip_key() else None
        if item is None:
            return None
        data = json.loads(item[0])
        if "closed" in data:
            return None  # the fleet's closed mark: no break
        return int(data["opens"]), item[1] - float(data.get("half_open", 0))

    def _check(self, held: tuple[int, float] | None, value: str, ttl: float) -> None:
        if held is None:
            return
        opens, ends = held
        now = self._clock.now()
        data = json.loads(value)
        if "closed" in data:
            if ends > now:
                self.lost.append(f"a break still on until {ends} was closed at {now}")
            return
        new_ends = now + ttl - float(data.get("half_open", 0))
        if ends > now and new_ends < ends - 1e-9:
            self.lost.append(f"a break on until {ends} was cut to {new_ends} at {now}")
        if int(data["opens"]) < opens:
            self.lost.append(f"a trip after {opens} openings became one after {data['opens']}")

    async def get(self, key: str) -> Entry | None:
        await _RoundTrip()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await _RoundTrip()
        held = self._held(key)
        if only_if is None:
            stored = await super().set(key, value, ttl=ttl)
        else:
            stored = await super().set(key, value, ttl=ttl, only_if=only_if)
        if stored is not False:
            self._check(held, value, ttl)
        return stored

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await _RoundTrip()
        return await super().add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await _RoundTrip()
        held = self._held(key)
        deleted = await super().delete(key, only_if=only_if)
        if held is not None and held[1] > self._clock.now() and deleted:
            self.lost.append(f"a break still on was deleted at {self._clock.now()}")
        return deleted


class LockTimes(SteppingStore):
    """A SteppingStore noting when each value of the fleet's probe lock was taken."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.taken: dict[str, float] = {}

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        stored = await super().add(key, value, ttl=ttl)
        if stored and key == _probe_key():
            self.taken.setdefault(value, self._clock.now())
        return stored


async def _waits(clock: VirtualClock, seconds: float) -> None:
    """A process idle for ``seconds`` of the clock (which only the scheduler moves)."""
    until = clock.now() + seconds
    while clock.now() < until:
        await _RoundTrip()


#: What an attempt the retry loop cut at its gate's bound (limit_attempt) ends with.
CUT = Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout")


async def _run(
    guard: OverloadGuard, clock: VirtualClock, calls: list[_Call], lasts: float, ok: bool
) -> None:
    """Attempts admitted now, each ending ``lasts`` seconds later, as the retry loop runs them:
    one the guard bounded (a fleet's probe, limit_attempt) is cut at its bound, a timeout. The
    script goes on ``lasts`` seconds later, whatever was cut or admitted."""
    ends = clock.now() + lasts
    running = list(calls)
    while running:
        now = clock.now()
        for call in list(running):
            cut = call.until is not None and call.until <= now and call.until < ends
            if cut or now >= ends:
                running.remove(call)
                await guard.settle(call, 1, CUT if cut else OK if ok else DOWN)
                break
        else:
            await _RoundTrip()
    await _waits(clock, ends - clock.now())


async def _attempt(guard: OverloadGuard, clock: VirtualClock, lasts: float, ok: bool) -> None:
    """One call's attempt: admitted (or refused), and ending ``lasts`` seconds later (or cut at
    its bound)."""
    call = _Call("svc", HOST)
    if await guard.admit(call, 1) is None:
        await _run(guard, clock, [call], lasts, ok)


class _Plan:
    """When each process acts, drawn: A's first attempts, how many of its probes fail before
    the last (each re-opening it for a longer break) and how long each lasts (some longer than
    the probe lease: cut before its lock's lease ends, or a second probe goes while it is
    out), how long B's
    attempts last (admitted at once: before A's trip is published, if B goes first), when C
    calls, how often D's pairs of attempts go and how long they last, and whether the service
    is back for the last probes."""

    def __init__(self, data: st.DataObject) -> None:
        self.a_fails_after = data.draw(st.sampled_from([0.0, 1.0]))
        self.a_reopens = data.draw(st.integers(0, 2))
        self.a_probe_lasts = data.draw(st.sampled_from([0.0, 1.0, 4.0, 8.0, 12.0, 20.0]))
        self.b_fails_after = data.draw(
            st.sampled_from([0.0, 1.0, 5.0, 6.0, 7.0, 8.0, 10.0, 16.0, 20.0, 30.0])
        )
        self.c_calls_every = data.draw(st.sampled_from([1.0, 3.0, 6.0]))
        self.d_every = data.draw(st.sampled_from([0.0, 2.0, 5.0, 11.0]))
        self.d_fails_after = data.draw(st.sampled_from([0.0, 1.0, 4.0, 12.0]))
        self.back = data.draw(st.booleans())


async def _trips_and_probes(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process A: its attempts fail, it opens and publishes; after each break it probes: the
    first ``a_reopens`` probes fail (its breaks escalate: 5 s, 10 s, 20 s), the last answers as
    the service does."""
    breaker = FleetBreakerMachine.breaker
    for _ in range(breaker.minimum_throughput):
        await _attempt(guard, clock, plan.a_fails_after, ok=False)
    for reopen in range(plan.a_reopens + 1):
        await _waits(clock, breaker.breaks.delay(reopen + 1) + 1.0)  # its break
        last = reopen == plan.a_reopens
        await _attempt(guard, clock, plan.a_probe_lasts, ok=plan.back and last)


async def _fails_unaware(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process B: two attempts admitted at once, which fail later."""
    calls = [_Call("svc", HOST) for _ in range(2)]
    admitted = [call for call in calls if await guard.admit(call, 1) is None]
    await _run(guard, clock, admitted, plan.b_fails_after, ok=False)
    await _waits(clock, 6.0)
    await _attempt(guard, clock, 0.0, ok=plan.back)


async def _calls_now_and_then(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process C: a call every few seconds, whose answer the service's state decides."""
    for _ in range(4):
        await _attempt(guard, clock, 0.0, ok=plan.back)
        await _waits(clock, plan.c_calls_every)


async def _opens_on_its_own(guard: OverloadGuard, clock: VirtualClock, plan: _Plan) -> None:
    """Process D: three times, two attempts admitted together (on what it last read of the
    fleet's trip, up to its sync interval ago), which fail: whenever both went, it opens on its
    own failures, and publishes or takes the fleet's break, whatever the others did meanwhile."""
    for _ in range(3):
        await _waits(clock, plan.d_every)
        calls = [_Call("svc", HOST) for _ in range(2)]
        admitted = [call for call in calls if await guard.admit(call, 1) is None]
        await _run(guard, clock, admitted, plan.d_fails_after, ok=False)


_SCRIPTS = (_trips_and_probes, _fails_unaware, _calls_now_and_then, _opens_on_its_own)


_STEPS = [0, 1, 2, 3, -1]


def run_interleaved(plan: _Plan, schedule: list[int]) -> list[tuple[float, list[float]]]:
    """Run the four processes on ``plan``, their store operations interleaved in the order
    ``schedule`` draws (a process's next step, or -1: a second passes), then in turn to their
    end. Checked after every step: no break lost, and every fleet probe holds the lock.
    Returns, for each step after which more than one probe was out, the time and when each
    one's lock was taken (oldest first)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = LockTimes(clock)
    guards = _fleet(clock, store, len(_SCRIPTS), FleetBreakerMachine.breaker)
    running = [script(guard, clock, plan) for script, guard in zip(_SCRIPTS, guards, strict=True)]
    live = set(range(len(running)))
    # The drawn order, then each live process in turn with a second passing after each round.
    rest = itertools.chain.from_iterable(itertools.repeat(_STEPS, 200))
    doubles: list[tuple[float, list[float]]] = []
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
            locks = [lock for guard in guards for lock, _, _ in guard._probes.values()]
            assert all(lock is not None for lock in locks), "every fleet probe holds the lock"
            if len(locks) > 1:
                taken = sorted(store.taken[lock] for lock in locks if lock is not None)
                doubles.append((clock.now(), taken))
        assert not live, "every process ends"
    finally:
        for coro in running:
            coro.close()
    return doubles


@settings(max_examples=300, deadline=None)
@given(data=st.data(), schedule=st.lists(st.sampled_from(_STEPS[:-1] * 2 + [-1]), max_size=200))
def test_no_break_is_lost_in_any_interleaving_of_the_fleets_store_operations(
    data: st.DataObject, schedule: list[int]
) -> None:
    """Four processes, each a script of calls (A trips and probes after each break, its first
    probes failing, so that its breaks escalate; B's attempts fail unaware of A's trip; C calls
    now and then; D's pairs of attempts fail, opening its breaker on its own whenever they both
    went), run interleaved store operation by store operation in the order ``schedule`` draws.
    Whatever the order: a break the fleet published is never lost nor shortened while it is on
    (no process rewrites it as its own trip's half-open tail, deletes it or writes the fleet's
    closed mark over it when its probe succeeds, or publishes a break of its own over it that
    ends sooner), no trip is replaced by one after fewer openings while it lives, and at most
    one probe is out at a time: a fleet probe with no bound of its own is cut (as the retry
    loop cuts it, limit_attempt) before its lock's lease ends, its timeout the fleet's verdict,
    so that no second probe goes while it is out (test_breaker_r18 replays a case where one
    did, when the probe outlived the lease)."""
    assert run_interleaved(_Plan(data), schedule) == [], "two probes out at once"


# -- a caller's own store, written to the protocol before or after only_if ---------------------


class _DelegatingStore(ForwardingStore):
    """A caller's StateStore (no MemoryStore subclass: wrapped in a FallbackStore by the guard)
    over a MemoryStore, written to the current protocol: its set takes ``only_if``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(MemoryStore(clock))


class _KeywordsStore(_DelegatingStore):
    """Its set takes any keyword (``**kwargs``), only_if among them."""

    async def set(self, key: str, value: str, **options: object) -> bool:
        only_if = options.get("only_if")
        assert only_if is None or isinstance(only_if, str)
        ttl = options["ttl"]
        assert isinstance(ttl, float | int)
        return await self.inner.set(key, value, ttl=ttl, only_if=only_if)


class _OldProtocolStore(_DelegatingStore):
    """Written to the protocol before 6583054: ``set(key, value, *, ttl) -> None``."""

    async def set(self, key: str, value: str, *, ttl: float) -> None:  # type: ignore[override]
        await self.inner.set(key, value, ttl=ttl)


class _OldProtocolMemoryStore(MemoryStore):
    """The same, as a MemoryStore subclass (which the guard uses as it is, not wrapped)."""

    async def set(self, key: str, value: str, *, ttl: float) -> None:  # type: ignore[override]
        await super().set(key, value, ttl=ttl)


def _old_stores(clock: Clock) -> dict[str, object]:
    return {
        "own": _OldProtocolStore(clock),
        "fallback over own": FallbackStore(_OldProtocolStore(clock), clock=clock),  # type: ignore[arg-type]
        "MemoryStore subclass": _OldProtocolMemoryStore(clock),
    }


@pytest.mark.parametrize("kind", ["own", "fallback over own", "MemoryStore subclass"])
def test_a_store_whose_set_takes_no_only_if_is_refused_when_the_guard_is_made(kind: str) -> None:
    """A store written to the protocol before only_if passes check_store (a runtime-checkable
    Protocol checks method names only) and raised a raw TypeError out of the fleet's first
    half-open probe, in a caller's request. It is refused when the guard is made, with what
    to add."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _old_stores(clock)[kind]
    with pytest.raises(ConfigurationError) as info:
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("OverloadGuard.store: ")
    assert "set() takes no only_if" in message
    assert "only_if: str | None = None) -> bool" in message, "says exactly what to add"
    assert "atomically" in message


@pytest.mark.parametrize("kind", ["own", "fallback over own", "MemoryStore subclass"])
async def test_a_store_whose_set_takes_no_only_if_still_shares_a_budget(kind: str) -> None:
    """Without a breaker the guard makes no conditional write: such a store is not refused."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _old_stores(clock)[kind]
    guard = OverloadGuard(budget=RetryBudget(), breaker=None, store=store, account="1", clock=clock)  # type: ignore[arg-type]
    call = _Call("svc", HOST)
    assert await guard.admit(call, 1) is None
    assert await guard.before_retry(call, 1, DOWN, 0.0, CircuitOpen("x", retry_at=0.0)) is None


@pytest.mark.parametrize("store_type", [_DelegatingStore, _KeywordsStore])
async def test_a_callers_store_that_takes_only_if_probes_the_fleets_break(
    store_type: type[_DelegatingStore],
) -> None:
    """The reviewer's reproducer, on a store written to the current protocol: the probe taken
    late in the trip's tail rewrites the tail (a compare-and-set) and goes."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = store_type(clock)
    (a,) = _fleet(clock, store, 1)  # type: ignore[arg-type]
    await _trip(a)
    clock.advance(25.0)  # the 5 s break is over; the tail has less than the lease left
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    held = await store.get(_trip_key())
    assert held is not None
    assert held.ttl == pytest.approx(BREAKER.probe_lease), "the tail rewritten"
    await a.settle(probe, 1, OK)
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED
    await _holds_the_fleets_close(store)


class _MisbehavingStore(_KeywordsStore):
    """Its set takes the protocol's arguments (**kwargs), and fails with a TypeError when
    given only_if: a bug in a caller's store, met at the fleet's first probe."""

    async def set(self, key: str, value: str, **options: object) -> bool:
        if options.get("only_if") is not None:
            raise TypeError(f"cannot store {value!r}")
        return await super().set(key, value, **options)


class _MisbehavingMemoryStore(MemoryStore):
    """The same, as a MemoryStore subclass."""

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if only_if is not None:
            raise TypeError(f"cannot store {value!r}")
        return await super().set(key, value, ttl=ttl)


@pytest.mark.parametrize("kind", ["own", "fallback over own", "MemoryStore subclass"])
async def test_a_type_error_from_a_callers_store_reaches_the_caller_typed(kind: str) -> None:
    """Whatever slips past the check when the guard is made, a TypeError from a caller's
    store reaches the caller as a ConfigurationError (the TypeError its cause; its text,
    which may hold a stored value, not shown), never raw nor absorbed as an outage."""
    clock = VirtualClock(start=100.0, autojump=False)
    store: StateStore
    if kind == "MemoryStore subclass":
        store = _MisbehavingMemoryStore(clock)
    else:
        own = _MisbehavingStore(clock)
        store = FallbackStore(own, clock=clock) if kind == "fallback over own" else own
    (a,) = _fleet(clock, store, 1)  # type: ignore[arg-type]
    await _trip(a)
    clock.advance(25.0)  # the probe rewrites the trip's tail: a compare-and-set
    with pytest.raises(
        ConfigurationError, match=r"_Misbehaving\w*Store\.set raised TypeError"
    ) as e:
        await a.admit(_Call("svc", HOST), 1)
    assert isinstance(e.value.__cause__, TypeError)
    assert "cannot store" not in str(e.value)
    fallback = a.store
    assert isinstance(fallback, FallbackStore)
    assert fallback.fallbacks == 0, "not taken for an outage"
    assert fallback.sharing


def test_a_store_method_the_guard_cannot_call_as_the_protocol_says_is_refused() -> None:
    """Not only set: a budget without ``withdraw`` failed at the first retry."""

    class NoWithdraw(_DelegatingStore):
        async def budget(  # type: ignore[override]
            self, key: str, policy: RetryBudget, *, deposits: int = 0
        ) -> bool:
            return await self.inner.budget(key, policy, deposits=deposits)

    clock = VirtualClock(start=100.0, autojump=False)
    with pytest.raises(ConfigurationError, match=r"NoWithdraw\.budget cannot be called"):
        OverloadGuard(budget=RetryBudget(), breaker=None, store=NoWithdraw(clock), clock=clock)  # type: ignore[arg-type]
    # Without a budget the guard never calls it.
    OverloadGuard(budget=None, breaker=BREAKER, store=NoWithdraw(clock), clock=clock, account="1")  # type: ignore[arg-type]


# -- a break adopted by another call while the prober awaits the store ------------------------


class SlowReply(PausingStore):
    """The ``nth`` read of the trip (once armed) is done at once, its reply held until ``go``:
    a reply that comes late, as another connection's may."""

    nth = 0

    async def get(self, key: str) -> Entry | None:
        entry = await self.inner.get(key)
        if self.armed and key == _trip_key():
            self.nth -= 1
            if self.nth == 0:
                self.armed = False
                self.paused.set()
                await self.go.wait()
        return entry


async def test_no_probe_goes_once_its_own_process_adopted_a_newer_break() -> None:
    """A's prober read its ended trip; before the reply reached it, B published a break and
    another call of A adopted it (and was refused). The prober's status replaced that break,
    and its probe went through it: now it is refused with B's break, and frees the lock."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    slow = SlowReply(store)
    a = _process(slow, clock, BREAKER, sync=0.0)
    b, in_flight = await _unsynced(store, clock)
    await _trip(a)
    clock.advance(5.0)  # A's break is over; its trip's tail is exactly the lease: no rewrite
    slow.armed, slow.nth = True, 2  # 1: A's sync; 2: the prober's read after taking the lock
    probing = asyncio.ensure_future(a.admit(_Call("svc", HOST), 1))
    await slow.paused.wait()  # the prober has read A's ended trip; its reply is late
    await _b_opens(b, in_flight, store)  # B publishes its 60 s break
    other = await a.admit(_Call("svc", HOST), 1)
    assert isinstance(other, CircuitOpen), "A's other call adopted B's break"
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    slow.go.set()
    result = await probing
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN, "B's break, not the probe's status"
    assert isinstance(result, CircuitOpen), "a probe went out after A itself adopted B's break"
    assert result.retry_at > clock.now() + 30.0
    assert await store.get(_probe_key()) is None, "A let go of the probe lock"
