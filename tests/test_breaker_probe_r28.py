"""A fleet's half-open probe is bounded by its lock: it never outlives the lease.

Two engines stand for two processes sharing a store (MemoryStore) and a loopback service, on
virtual time. A fleet probe with no bound of its own (no attempt timeout, no deadline) used to
hold the fleet's probe lock for its lease only: past it, another process took the lock and sent
a second probe while the first was still out. It is now cut (the retry loop's attempt timeout,
told by the guard through ``limit_attempt``) a margin before the lease ends, a TIMEOUT that is
its failure verdict, published before the lock goes. A probe with a bound of its own keeps it,
the lock held until that bound (and the margin) has passed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import AttemptTimeout, CircuitOpen, RetriesExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Outcome
from le_transport.state import MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_guard_hot_path import _Call

#: Four failures in five open it for 5 s, then 10 s; the default 30 s probe lease.
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=300.0,
    breaks=BackoffPolicy(first=5.0, cap=120.0, jitter=0.0, floor=0.0),
)
LEASE = BREAKER.probe_lease
#: A tenth of the lease, at least a second: the probe is cut that long before the lease ends.
MARGIN = 3.0
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)
UNBOUNDED = RetryPolicy(attempt_timeout=None)


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class _Fleet:
    """Two engines (processes) over one store, and the service they call."""

    def __init__(self, clock: VirtualClock, host: str, backend: Backend) -> None:
        self.clock = clock
        self.backend = backend
        self.store = MemoryStore(clock)
        self.guards = [
            OverloadGuard(budget=None, breaker=BREAKER, store=self.store, account="1", clock=clock)
            for _ in range(2)
        ]
        self.engines = [
            Engine({"svc": host}, scheme="http", clock=clock, overload=guard)
            for guard in self.guards
        ]
        self.host = host

    async def __aenter__(self) -> _Fleet:
        for engine in self.engines:
            await engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.backend.gate is not None:
            self.backend.gate.set()
        for engine in self.engines:
            await engine.close()

    async def trip(self) -> None:
        """Open the fleet's breaker (the first engine's failures, published), let the break end,
        and hold every request from now on."""
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await self.engines[0].request("GET", "svc", "/x", retry=ONCE)
        assert self.guards[0].breaker_state("svc", self.host) is BreakerState.OPEN
        await self.clock.sleep(5.0)
        self.backend.gate = asyncio.Event()
        self.backend.arrived.clear()

    def lock(self) -> Any:
        return self.store._values.get(state_key("1", "breaker-probe", "svc", self.host))

    def trip_entry(self) -> dict[str, Any] | None:
        held = self.store._values.get(state_key("1", "breaker", "svc", self.host))
        return None if held is None else json.loads(held[0])


async def test_a_fleet_probe_with_no_bound_is_cut_before_its_lease_ends(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        await fleet.trip()
        a, b = fleet.engines
        hits = backend.hits
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=UNBOUNDED))
        await backend.arrived.wait()
        started = clock.now()
        await clock.sleep(LEASE - MARGIN - 0.5)
        await _settle_loop()
        assert not probe.done(), "not cut before its bound"
        with pytest.raises(CircuitOpen):
            await b.request("GET", "svc", "/x", retry=ONCE)
        await clock.sleep(1.0)
        await _settle_loop()
        assert probe.done(), "cut a margin before the lease ends"
        error = probe.exception()
        # The timeout re-opened the breaker for 10 s: the retry 5 s later would be refused.
        assert isinstance(error, CircuitOpen), error
        assert isinstance(error.__cause__, AttemptTimeout)
        assert "half-open probe" in str(error.__cause__)
        assert [record.outcome.kind.name for record in error.attempts] == ["TIMEOUT"]
        assert error.attempts[0].started_at == pytest.approx(started, abs=0.01)
        assert fleet.guards[0].breaker_state("svc", fleet.host) is BreakerState.OPEN
        entry = fleet.trip_entry()
        assert entry is not None
        assert entry["opens"] == 2, "the failure verdict was published"
        assert fleet.lock() is None, "the lock freed after it"
        # Past the first probe's lease the other process does not probe: the new break is on.
        await clock.sleep(MARGIN + 1.0)
        refused = b.request("GET", "svc", "/x", retry=ONCE)
        with pytest.raises(CircuitOpen):
            await refused
        assert backend.hits == hits + 1, "one probe for the fleet"


async def test_a_slow_probe_that_answers_within_its_bound_closes_the_fleets_breaker(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(200)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        backend.status = 503
        await fleet.trip()
        backend.status = 200
        a, b = fleet.engines
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=UNBOUNDED))
        await backend.arrived.wait()
        await clock.sleep(LEASE - MARGIN - 2.0)
        assert backend.gate is not None
        backend.gate.set()
        response = await probe
        assert response.status == 200
        assert fleet.guards[0].breaker_state("svc", fleet.host) is BreakerState.CLOSED
        entry = fleet.trip_entry()
        assert entry is not None
        assert "closed" in entry, "the fleet's closed mark"
        await clock.sleep(1.0)
        assert (await b.request("GET", "svc", "/x", retry=ONCE)).status == 200


async def test_a_fleet_probe_with_a_shorter_bound_of_its_own_is_unchanged(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        await fleet.trip()
        a = fleet.engines[0]
        own = RetryPolicy(pauses=(), attempt_timeout=10.0)
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=own))
        await backend.arrived.wait()
        lock = fleet.lock()
        assert lock is not None
        assert lock[1] == pytest.approx(clock.now() + LEASE, abs=0.01), "the lease, as before"
        await clock.sleep(10.5)
        await _settle_loop()
        error = probe.exception()
        assert isinstance(error, RetriesExhausted)
        assert isinstance(error.last, AttemptTimeout)
        assert "longer than 10 s" in str(error.last), "its own timeout, said as before"


async def test_a_fleet_probe_with_a_longer_bound_holds_the_lock_until_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # Cut at the lease, a probe with a 60 s attempt timeout to a service slow by design
    # failed every time: the fleet's breaker never closed.
    backend = Backend(503)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        await fleet.trip()
        backend.status = 200
        a, b = fleet.engines
        own = RetryPolicy(pauses=(), attempt_timeout=60.0)
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=own))
        await backend.arrived.wait()
        lock = fleet.lock()
        assert lock is not None
        assert lock[1] == pytest.approx(clock.now() + 60.0 + MARGIN, abs=0.01)
        await clock.sleep(50.0)
        await _settle_loop()
        assert not probe.done()
        with pytest.raises(CircuitOpen):
            await b.request("GET", "svc", "/x", retry=ONCE)
        assert backend.gate is not None
        backend.gate.set()
        assert (await probe).status == 200
        assert fleet.guards[0].breaker_state("svc", fleet.host) is BreakerState.CLOSED


async def test_a_lone_process_probe_is_not_cut(serve: ServerFactory, clock: VirtualClock) -> None:
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    host = await serve(backend.app())
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        for _ in range(BREAKER.minimum_throughput):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x", retry=ONCE)
        await clock.sleep(5.0)
        backend.gate = asyncio.Event()
        backend.arrived.clear()
        backend.status = 200
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=ONCE))
        await backend.arrived.wait()
        await clock.sleep(LEASE + 5.0)
        await _settle_loop()
        assert not probe.done(), "no store, no lock: nothing cuts it"
        backend.gate.set()
        assert (await probe).status == 200


async def test_the_closed_breaker_bounds_no_attempt() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(
        budget=None, breaker=BREAKER, store=MemoryStore(clock), account="1", clock=clock
    )
    call = _Call("svc", "127.0.0.1:8080")
    assert await guard.admit(call, 1) is None
    assert call.until is None
    await guard.settle(call, 1, Outcome.response(200))


async def test_a_probe_the_store_admitted_too_late_to_go_does_not_go() -> None:
    # The store's answers took so long that the probe would be cut before it went: its lock
    # is freed and the call refused, a later one probes.
    clock = VirtualClock(start=100.0, autojump=False)

    class Slow(MemoryStore):
        delay = 0.0

        async def add(self, key: str, value: str, *, ttl: float) -> bool:
            clock.advance(self.delay)
            return await super().add(key, value, ttl=ttl)

    store = Slow(clock)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", "127.0.0.1:8080")
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))
    clock.advance(6.0)
    store.delay = LEASE - MARGIN  # the lock's add answers that late
    late = _Call("svc", "127.0.0.1:8080")
    refused = await guard.admit(late, 1)
    assert isinstance(refused, CircuitOpen)
    assert late.until is None
    assert not guard._probes
    assert store._values.get(state_key("1", "breaker-probe", "svc", "127.0.0.1:8080")) is None
    store.delay = 0.0
    probe = _Call("svc", "127.0.0.1:8080")
    assert await guard.admit(probe, 1) is None
    assert probe.until == pytest.approx(clock.now() + LEASE - MARGIN)


async def test_a_cut_post_probe_fails_with_its_attempt_timeout(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # Not idempotent: no retry, the caller gets the timeout itself (retryable if idempotent).
    backend = Backend(503)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        await fleet.trip()
        probe = asyncio.ensure_future(
            fleet.engines[0].request("POST", "svc", "/x", json={}, retry=UNBOUNDED)
        )
        await backend.arrived.wait()
        await clock.sleep(LEASE - MARGIN + 0.5)
        await _settle_loop()
        error = probe.exception()
        assert isinstance(error, AttemptTimeout), error
        assert error.repeat.name == "RETRYABLE_IF_IDEMPOTENT"
        assert f"longer than {LEASE - MARGIN:g} s" in str(error)
        assert fleet.guards[0].breaker_state("svc", fleet.host) is BreakerState.OPEN


async def test_an_engine_closed_under_a_bounded_fleet_probe_frees_its_lock(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    async with _Fleet(clock, await serve(backend.app()), backend) as fleet:
        await fleet.trip()
        a = fleet.engines[0]
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=UNBOUNDED))
        await backend.arrived.wait()
        assert fleet.lock() is not None
        await a.close()
        await asyncio.gather(probe, return_exceptions=True)
        assert fleet.lock() is None, "freed by the close, not left to its lease"
        assert not fleet.guards[0]._releases, "no task of the guard outlives the close"
        await clock.sleep(LEASE)
        await _settle_loop()
        assert fleet.guards[0].breaker_state("svc", fleet.host) is not BreakerState.OPEN
