"""Round 17: a half-open probe keeps the slot until it has surely reported (its attempt's own
bound), not only for the breaker's lease; a probe with no bound keeps only the lease, and none
keeps it past the longest break (a stuck probe must not shut a recovered host for long)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import CircuitOpen, RetriesExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
)
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_guard_hot_path import _Call

HOST = "127.0.0.1:8080"

#: Four failures in five open it for 5 s; the probe lease is the default 30 s; breaks up to
#: 120 s (the longest break).
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=300.0,
    breaks=BackoffPolicy(first=5.0, cap=120.0, jitter=0.0, floor=0.0),
)


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def _probes_sent(
    serve: ServerFactory, clock: VirtualClock, probe: dict[str, Any], wait: float
) -> tuple[int, list[BaseException | None]]:
    """Open the breaker, let its break end, send a probe (``probe``: its request's keywords)
    that the service holds, then after ``wait`` seconds three more calls: how many requests
    reached the service in half-open, and what the three met."""
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x", retry=once)
        assert guard.breaker_state("svc", host) is BreakerState.OPEN
        await clock.sleep(5.0)
        backend.gate = asyncio.Event()  # the service now holds every request
        backend.arrived.clear()
        hits = backend.hits
        first = asyncio.ensure_future(engine.request("GET", "svc", "/x", **probe))
        await backend.arrived.wait()
        await clock.sleep(wait)
        others = [
            asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=once)) for _ in range(3)
        ]
        await _settle_loop()
        sent = backend.hits - hits
        met = [call.exception() if call.done() else None for call in others]
        backend.gate.set()
        await asyncio.gather(first, *others, return_exceptions=True)
    return sent, met


async def test_a_probe_slower_than_the_lease_keeps_the_slot_until_its_own_timeout(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # A 60 s attempt timeout (a slow API's) and a probe the service holds past the 30 s lease:
    # a second probe went at 30 s, against the service the breaker protects.
    probe = {"retry": RetryPolicy(pauses=(), attempt_timeout=60.0)}
    sent, met = await _probes_sent(serve, clock, probe, wait=31.0)
    assert sent == 1, f"{sent} probes in flight at once in half-open"
    assert all(isinstance(error, CircuitOpen) for error in met), met


async def test_a_probe_with_no_bound_keeps_only_the_lease(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # Nothing says when it will report (no attempt timeout, no deadline: a dead connection, a
    # long export): past the lease another call probes, and a recovered host is not shut.
    probe = {"retry": RetryPolicy(pauses=(), attempt_timeout=None)}
    sent, _ = await _probes_sent(serve, clock, probe, wait=31.0)
    assert sent == 2


async def test_a_probe_with_a_long_deadline_keeps_the_slot_no_longer_than_a_break(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    probe = {"retry": RetryPolicy(pauses=(), attempt_timeout=None), "deadline": 3600.0}
    sent, met = await _probes_sent(serve, clock, probe, wait=61.0)
    assert sent == 1
    assert all(isinstance(error, CircuitOpen) for error in met)
    sent, _ = await _probes_sent(serve, clock, probe, wait=BREAKER.longest_break + 1.0)
    assert sent == 2


async def test_in_a_fleet_a_slow_probe_holds_the_lock_until_its_own_bound() -> None:
    # Held by the lease alone (30 s), a probe with a 60 s attempt timeout let another process
    # send a second probe while it was out. In a fleet the probe's lock is held until its own
    # bound has passed (and a margin, for its verdict to reach the store): the other processes
    # wait for its verdict, which decides for the fleet.
    clock = VirtualClock(start=1000.0)
    store = MemoryStore(clock)
    a, b = (
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
        for _ in range(2)
    )

    def call(attempt_timeout: float | None = None) -> Any:
        made: Any = _Call("svc", HOST)
        made.policy = RetryPolicy(attempt_timeout=attempt_timeout)
        return made

    for _ in range(BREAKER.minimum_throughput):
        opening = call()
        assert await a.admit(opening, 1) is None
        await a.settle(opening, 1, Outcome.response(503))
    assert isinstance(await b.admit(call(), 1), CircuitOpen)
    clock.advance(5.0)
    slow = call(attempt_timeout=60.0)  # a's probe hangs
    assert await a.admit(slow, 1) is None
    clock.advance(31.0)  # past the lease: the lock is still held for a's probe
    assert isinstance(await b.admit(call(), 1), CircuitOpen), "no second probe while it is out"
    clock.advance(29.0)
    await a.settle(slow, 1, Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout"))
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN, "its verdict decided"
    clock.advance(1.0)
    refused = await b.admit(call(), 1)
    assert isinstance(refused, CircuitOpen), "b adopted the break a's probe published"
    assert refused.retry_at == a._status[("svc", HOST)].open_until
