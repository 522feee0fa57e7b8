"""A fleet's half-open probe bounded by its lock: what the caller is told of a cut probe, and
what an abandoned or late-admitted probe leaves of the lock.

Two engines stand for two processes sharing a store and a loopback service, on virtual time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import AttemptTimeout, CircuitOpen, RetriesExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
    RetryBudget,
)
from le_transport.state import FallbackStore, MemoryStore, state_key
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
#: A tenth of the lease, at least a second: an unbounded probe is cut that long before it ends.
MARGIN = 3.0
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)
UNBOUNDED = RetryPolicy(attempt_timeout=None)
HOST = "127.0.0.1:8080"


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def _lock_key(host: str) -> str:
    return state_key("1", "breaker-probe", "svc", host)


async def _trip(engine: Engine, backend: Backend, clock: VirtualClock) -> None:
    """Open the breaker (published), let the break end, and hold every request from now on."""
    for _ in range(BREAKER.minimum_throughput):
        with pytest.raises(Exception):  # noqa: B017, PT011 - RetriesExhausted, the 503s
            await engine.request("GET", "svc", "/x", retry=ONCE)
    await clock.sleep(5.0)
    backend.gate = asyncio.Event()
    backend.arrived.clear()


async def test_a_cut_probes_refused_retry_does_not_say_nothing_was_sent(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # The probe went (and was cut, a timeout): the CircuitOpen that fails the call refuses
    # its retry, and must not tell the caller that nothing was sent.
    backend = Backend(503)
    store = MemoryStore(clock)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    host = await serve(backend.app())
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        await _trip(engine, backend, clock)
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=UNBOUNDED))
        try:
            await backend.arrived.wait()
            await clock.sleep(LEASE - MARGIN + 0.5)
            await _settle_loop()
        finally:
            assert backend.gate is not None
            backend.gate.set()
        error = probe.exception()
        assert isinstance(error, CircuitOpen), error
        assert isinstance(error.__cause__, AttemptTimeout)
        assert len(error.attempts) == 1, "the probe was sent"
        assert "nothing was sent" not in str(error), str(error)
        assert "the retry was not sent" in str(error), str(error)


async def test_a_probe_whose_budget_deposit_answered_past_its_cut_does_not_go() -> None:
    # The first attempt's deposit to the fleet's budget is the store's last answer before the
    # probe goes: one that came back past the probe's cut left it nothing (an attempt timeout of
    # zero), a TIMEOUT that re-opened the fleet's breaker with no probe of the service made. As
    # a slow lock or trip read does, it does not go: its lock freed, the call refused.
    clock = VirtualClock(start=100.0, autojump=False)

    class Slow(MemoryStore):
        delay = 0.0

        async def budget(self, *args: Any, **kwargs: Any) -> bool:
            clock.advance(self.delay)
            return await super().budget(*args, **kwargs)

    store = Slow(clock)
    guard = OverloadGuard(
        budget=RetryBudget(), breaker=BREAKER, store=store, account="1", clock=clock
    )
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN
    clock.advance(6.0)
    store.delay = LEASE - MARGIN  # the deposit answers that late
    late = _Call("svc", HOST)
    refused = await guard.admit(late, 1)
    assert isinstance(refused, CircuitOpen), "not sent with no time left"
    assert not guard._probes, "no probe out"
    await _settle_loop()
    assert store._values.get(_lock_key(HOST)) is None, "its lock freed"
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN, "no verdict"
    store.delay = 0.0
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None, "the next call probes"
    assert probe.until == pytest.approx(clock.now() + LEASE - MARGIN)


class _Bounded(_Call):
    """A call whose policy bounds its attempts: a 60 s attempt timeout."""

    def __init__(self, service: str, host: str) -> None:
        super().__init__(service, host)
        self.policy = RetryPolicy(pauses=(), attempt_timeout=60.0)


@pytest.mark.parametrize("ended", ["abandoned", "no verdict"])
async def test_a_bounded_probes_lock_is_freed_by_a_delete_slower_than_the_lease(
    clock: VirtualClock, ended: str
) -> None:
    # A probe with a 60 s attempt timeout holds the fleet's lock 63 s, not the 30 s lease. Its
    # release gave the store's delete the lease only: one answering in 40 s was cut, and the
    # lock, still held, refused every process of the fleet until its 63 s were over.
    class SlowDelete(MemoryStore):
        delay = 0.0

        async def delete(self, key: str, *, only_if: str | None = None) -> bool:
            await clock.sleep(self.delay)
            return await super().delete(key, only_if=only_if)

    inner = SlowDelete(clock)
    store = FallbackStore(inner, clock=clock, op_timeout=100.0)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))
    await clock.sleep(6.0)
    probe = _Bounded("svc", HOST)
    assert await guard.admit(probe, 1) is None
    held = inner._values.get(_lock_key(HOST))
    assert held is not None
    assert held[1] == pytest.approx(clock.now() + 60.0 + MARGIN), "held for its own bound"
    inner.delay = LEASE + 10.0
    if ended == "abandoned":
        guard.abandon(probe, 1)
        await clock.sleep(LEASE + 15.0)
        await _settle_loop()
    else:
        # A refused certificate: no verdict, the probe released, its lock's delete awaited.
        await guard.settle(probe, 1, Outcome.failure(OutcomeKind.TLS_REJECTED, "SSLError"))
    assert inner._values.get(_lock_key(HOST)) is None, "freed once the store answered"
    await guard.drain()


async def test_a_bounded_probe_cut_at_its_own_timeout_says_so(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # A probe with a 60 s attempt timeout is cut 60 s after its admission began (the lock is
    # held 63 s from then): that is its own timeout, counted from its admission, and the
    # caller is told so, as without a fleet. Any time the admission took (here the lock's add,
    # 1 s) made the gate's bound the shorter by that much, and the timeout was said to be the
    # half-open probe's most, its lock's lease, which it was not.
    backend = Backend(503)

    class SlowAdd(MemoryStore):
        delay = 0.0

        async def add(self, key: str, value: str, *, ttl: float) -> bool:
            clock.advance(self.delay)
            return await super().add(key, value, ttl=ttl)

    store = SlowAdd(clock)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    host = await serve(backend.app())
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        await _trip(engine, backend, clock)
        store.delay = 1.0
        own = RetryPolicy(pauses=(), attempt_timeout=60.0)
        began = clock.now()
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=own))
        try:
            await backend.arrived.wait()
            await clock.sleep(60.5 - (clock.now() - began))
            await _settle_loop()
        finally:
            assert backend.gate is not None
            backend.gate.set()
        error = probe.exception()
        assert isinstance(error, RetriesExhausted), error
        assert isinstance(error.last, AttemptTimeout)
        assert "longer than 60 s and was cancelled" in str(error.last), str(error.last)
        assert "half-open probe" not in str(error.last)
