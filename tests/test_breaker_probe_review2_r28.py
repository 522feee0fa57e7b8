"""A fleet's half-open probe bounded by its lock: a verdict published after the lock's lease
ended, and the property test's power to find a probe that outlives its lock.

Guards stand for processes sharing a store, on virtual time.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import RetriesExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
)
from le_transport.state import FallbackStore, MemoryStore, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_breaker_fleet import _Plan, run_interleaved
from tests.test_guard_hot_path import _Call

#: Four failures in five open it for 5 s, then 10 s; the default 30 s probe lease.
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=300.0,
    breaks=BackoffPolicy(first=5.0, cap=120.0, jitter=0.0, floor=0.0),
)
LEASE = BREAKER.probe_lease
MARGIN = 3.0
HOST = "127.0.0.1:8080"
DOWN = Outcome.response(503)
OK = Outcome.response(200)
#: What the retry loop's cut of a probe at its gate's bound (limit_attempt) ends with.
CUT = Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout")
TRIP = state_key("1", "breaker", "svc", HOST)
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)
BOUNDED = RetryPolicy(pauses=(), attempt_timeout=60.0)


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class HeldReads(MemoryStore):
    """A shared store whose next read of the trip can be held (a slow store) until let go."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hold_next = False
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    async def get(self, key: str) -> Entry | None:
        if self.hold_next and key == TRIP:
            self.hold_next = False
            self.holding.set()
            await self.go.wait()
        return await super().get(key)


async def test_a_probes_late_failure_verdict_does_not_overwrite_a_newer_probes_close() -> None:
    # A's probe is cut (a timeout) a margin before its lock's lease ends; its verdict is due
    # then, but the store answers its publish slowly, past the lease. Meanwhile B, half-open,
    # takes the freed lock, probes, and its success publishes the fleet's closed mark. A's late
    # failure, older than B's success, must not write its break over that close: it did (the
    # "still the fleet's probe?" check runs only when the settle starts past the lease), and
    # the whole fleet was refused for a break over a service B had just found well.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = HeldReads(clock)
    store = FallbackStore(inner, clock=clock, op_timeout=1000.0)
    a, b = (
        OverloadGuard(
            budget=None, breaker=BREAKER, store=store, account="1", clock=clock, sync_interval=0.0
        )
        for _ in range(2)
    )
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    assert await b.admit(_Call("svc", HOST), 1) is not None, "B adopts A's break"
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    assert probe.until is not None
    assert await b.admit(_Call("svc", HOST), 1) is not None, "A's probe holds the lock"
    clock.advance(probe.until - clock.now())
    inner.hold_next = True
    verdict = asyncio.ensure_future(a.settle(probe, 1, CUT))
    await inner.holding.wait()
    clock.advance(MARGIN + 1.0)  # the lock's lease is over; A's publish still out
    other = _Call("svc", HOST)
    assert await b.admit(other, 1) is None, "B probes once A's lock is gone"
    await b.settle(other, 1, OK)
    assert b.breaker_state("svc", HOST) is BreakerState.CLOSED
    closed = inner._values.get(TRIP)
    assert closed is not None
    assert "closed" in json.loads(closed[0])
    inner.go.set()
    await verdict
    await _settle_loop()
    held = inner._values.get(TRIP)
    assert held is not None
    assert "closed" in json.loads(held[0]), "B's newer close stands, not A's older break"
    # A learns the fleet's verdict rather than refusing every call for its own break.
    assert a.breaker_state("svc", HOST) is not BreakerState.OPEN
    await a.drain()
    await b.drain()


def _plan(**drawn: object) -> _Plan:
    """The property test's plan of the four processes, given rather than drawn."""
    plan = object.__new__(_Plan)
    plan.__dict__.update(
        {
            "a_fails_after": 0.0,
            "a_reopens": 0,
            "a_probe_lasts": 20.0,
            "b_fails_after": 0.0,
            "c_calls_every": 1.0,
            "d_every": 11.0,
            "d_fails_after": 0.0,
            "back": True,
        }
        | drawn
    )
    return plan


def test_the_fleet_property_test_can_find_a_probe_that_outlives_its_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The property test of the fleet's store operations checks that no two probes are out at
    # once; its probes all ended within the lease, so it passed with the probe never cut
    # (limit_attempt ignored): it could not find what it checks. A plan it draws (A's probe
    # lasting 20 s, C calling every second) finds two probes out when the probe is not cut.
    assert run_interleaved(_plan(), []) == [], "cut before its lock's lease ends"
    monkeypatch.setattr(_Call, "limit_attempt", lambda self, until: None)
    assert run_interleaved(_plan(), []) != [], "never cut: a second probe goes while it is out"


async def test_closing_with_a_bounded_fleet_probe_out_leaves_no_task_behind(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # A probe with a 60 s attempt timeout holds its lock 63 s; the engine closes while it is
    # out, and the store's delete of its lock hangs. The release is given the lock's life (more
    # than the lease), but the close waits no longer than its grace: no task of the guard is
    # left running, and the lock is left to its lease.
    backend = Backend(503)

    class HangingDelete(MemoryStore):
        hang = False

        async def delete(self, key: str, *, only_if: str | None = None) -> bool:
            if self.hang:
                await asyncio.Event().wait()
            return await super().delete(key, only_if=only_if)

    inner = HangingDelete(clock)
    store = FallbackStore(inner, clock=clock, op_timeout=1000.0)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    host = await serve(backend.app())
    lock_key = state_key("1", "breaker-probe", "svc", HOST.replace("8080", host.split(":")[1]))
    engine = Engine({"svc": host}, scheme="http", clock=clock, overload=guard)
    async with engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x", retry=ONCE)
        await clock.sleep(6.0)
        backend.gate = asyncio.Event()
        backend.arrived.clear()
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=BOUNDED))
        await backend.arrived.wait()
        held = inner._values.get(lock_key)
        assert held is not None
        assert held[1] == pytest.approx(clock.now() + 60.0 + MARGIN, abs=0.5)
        inner.hang = True
    began = clock.now()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the engine's close cut it
        await probe
    backend.gate.set()
    assert clock.now() - began <= 5.0, "the close waited its grace, not the lock's life"
    assert not guard._releases, "no release task left"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("le_transport")]


async def test_a_probes_failure_verdict_writes_over_an_older_close() -> None:
    # A close that landed as this probe was admitted (a stale probe of another process, its
    # lock's check made before this one took the lock) is older than this probe's 503, which
    # comes later: the break is published over it, not lost to it.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = MemoryStore(clock)
    store = FallbackStore(inner, clock=clock, op_timeout=1000.0)
    a = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    await inner.set(TRIP, json.dumps({"closed": LEASE, "id": "stale"}), ttl=LEASE)
    clock.advance(2.0)
    await a.settle(probe, 1, DOWN)
    held = inner._values.get(TRIP)
    assert held is not None
    assert "opens" in json.loads(held[0]), "the probe's newer 503 is the fleet's break"
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    await a.drain()


async def test_a_probes_late_failure_verdict_is_not_published_while_a_newer_probe_is_out() -> None:
    # As above, but A's late failure reaches the store while B's probe, which took the lock
    # once A's lease ended, is still out: published, A's older break stood against B's success
    # (B's close, a compare-and-set of the entry B was admitted on, found A's break and was
    # dropped), and the fleet waited out a break over a service B had found well. Past its
    # lease, A's verdict reads the lock first, as a late answer's does: another probe holds it,
    # and its verdict decides.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = HeldReads(clock)
    store = FallbackStore(inner, clock=clock, op_timeout=1000.0)
    a, b = (
        OverloadGuard(
            budget=None, breaker=BREAKER, store=store, account="1", clock=clock, sync_interval=0.0
        )
        for _ in range(2)
    )
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert await b.admit(_Call("svc", HOST), 1) is not None, "B adopts A's break"
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    assert probe.until is not None
    clock.advance(probe.until - clock.now())
    inner.hold_next = True
    verdict = asyncio.ensure_future(a.settle(probe, 1, CUT))
    await inner.holding.wait()
    clock.advance(MARGIN + 1.0)  # the lock's lease is over; A's publish still out
    other = _Call("svc", HOST)
    assert await b.admit(other, 1) is None, "B probes once A's lock is gone"
    inner.go.set()
    await verdict  # A's late verdict lands while B's probe is out
    await _settle_loop()
    await b.settle(other, 1, OK)
    held = inner._values.get(TRIP)
    assert held is not None
    assert "closed" in json.loads(held[0]), "B's newer close is the fleet's"
    await a.drain()
    await b.drain()
