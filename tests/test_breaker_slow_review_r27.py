"""An attempt cut by its call's deadline (``CircuitBreaker.slow_call``, ``RetryGate.cut``):
what the caller gets and what the gate is told when the gate misbehaves, and how long a lone
process's half-open probe holds its slot when its call's deadline bounds it. Real loopback
servers, virtual time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import aiohttp
import attrs
import pytest
from aiohttp import web

from le_transport import RetryMiddleware, RetryPolicy
from le_transport.errors import CircuitOpen, DeadlineExceeded
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BreakerState
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from tests.test_breaker_late_probe import (
    BREAKER,
    DOWN,
    HOST,
    OK,
    _probe_key,
    _trip_key,
    _tripped,
)
from tests.test_breaker_slow_r27 import Hanging, _ended, hanging
from tests.test_guard_hot_path import _Call

ServerFactory = Callable[[web.Application], Awaitable[str]]

__all__ = ["hanging"]  # the fixture, used by name


class _FailingCutGate:
    """A gate of the caller's own whose ``cut`` raises (a bug of its own)."""

    def __init__(self) -> None:
        self.abandoned: list[int] = []
        self.cuts = 0

    async def admit(self, call: object, attempt: int) -> None:
        return None

    async def settle(self, call: object, attempt: int, outcome: object) -> None:
        raise AssertionError("no attempt here ends with an outcome")

    def abandon(self, call: object, attempt: int) -> None:
        self.abandoned.append(attempt)

    async def before_retry(
        self, call: object, attempt: int, outcome: object, pause: float, last: object
    ) -> None:
        raise AssertionError("no retry here")

    def cut(self, call: object, attempt: int, ran: float) -> None:
        self.cuts += 1
        raise RuntimeError("token=hunter2 in the gate's own error")


async def test_a_gate_whose_cut_raises_still_gives_the_caller_its_deadline_error(
    hanging: tuple[Hanging, str], clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's DeadlineExceeded is what the call owes it: a gate's own error while it is
    told of the cut replaced it (a raw RuntimeError out of engine.request). The attempt is
    abandoned instead (what a gate without ``cut`` is told), and the error logged by its type
    only (its text may quote what the gate handled)."""
    backend, host = hanging
    gate = _FailingCutGate()
    mw = RetryMiddleware(policy=RetryPolicy(pauses=(), deadline=7.0), clock=clock, gate=gate)
    with caplog.at_level(logging.WARNING, logger="le_transport"):
        async with aiohttp.ClientSession(middlewares=[mw]) as session:
            with pytest.raises(DeadlineExceeded, match="7 s deadline passed after 1 attempt"):
                await session.get(f"http://{host}/x")
    assert gate.cuts == 1
    assert gate.abandoned == [1], "abandoned instead, as a gate without cut has it"
    [record] = [r for r in caplog.records if "cut" in r.getMessage()]
    assert "RuntimeError" in record.getMessage()
    assert "hunter2" not in record.getMessage()
    await _ended(backend)


class _BoundCall(_Call):
    """A call whose retry policy bounds its attempts by a timeout and the call by a deadline
    (what the guard's probe hold reads)."""

    def __init__(self, *, attempt_timeout: float | None, deadline: float | None) -> None:
        super().__init__("svc", HOST)
        self.policy = SimpleNamespace(attempt_timeout=attempt_timeout, deadline=deadline)


@pytest.mark.parametrize(
    ("attempt_timeout", "deadline"), [(60.0, 10.0), (60.0, 25.0), (None, 10.0), (60.0, None)]
)
async def test_a_lone_probe_is_held_no_longer_than_its_calls_deadline_bounds_it(
    attempt_timeout: float | None, deadline: float | None
) -> None:
    """Without a fleet store the slot is held past the lease for a probe whose attempt has a
    longer bound of its own; its call's deadline bounds it too (the retry loop cuts the attempt
    there and tells the gate: cut or abandon). Read from the attempt timeout alone, a probe with
    a 60 s attempt timeout and a 10 s deadline held the slot 61 s: every other caller was told
    to come back a minute later (CircuitOpen.retry_at), and a probe that never reported kept
    the host shut twice the lease."""
    clock = VirtualClock(start=100.0, autojump=False)
    breaker = attrs.evolve(BREAKER, probe_lease=5.0)  # (its longest break: 40 s)
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    await _tripped(guard, clock)
    probe = _BoundCall(attempt_timeout=attempt_timeout, deadline=deadline)
    assert await guard.admit(probe, 1) is None
    now = clock.now()
    refused = await guard.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen), "one probe at a time"
    bounds = [b for b in (attempt_timeout, deadline) if b is not None]
    bound = min(bounds)
    margin = max(breaker.probe_lease / 30, 0.05)
    held = max(breaker.probe_lease, min(bound + margin, breaker.longest_break))
    assert refused.retry_at == pytest.approx(now + held)
    clock.advance(held)
    assert await guard.admit(_Call("svc", HOST), 1) is None, "the slot freed at its hold's end"


# -- a fleet probe cut past its lease: the store decides whether it still answers -------------


async def _told(guard: OverloadGuard) -> None:
    """Let the guard's tasks tell the fleet's store (the caller's error never waits for it)."""
    for _ in range(50):
        if not guard._releases:
            return
        await asyncio.sleep(0)
    raise AssertionError("the store was never told")


async def _a_stuck_past_its_lease(
    clock: VirtualClock, store: MemoryStore
) -> tuple[OverloadGuard, OverloadGuard, _Call]:
    """A opens the fleet's breaker; B adopts it; A's probe goes at the break's end and is still
    out past its lease (its lock gone with it). Returns A, B and A's probe."""
    a, b = (
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
        for _ in range(2)
    )
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen), "B adopts the break"
    clock.advance(BREAKER.breaks.first)
    stuck = _Call("svc", HOST)
    assert await a.admit(stuck, 1) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    return a, b, stuck


async def test_a_fleet_probe_cut_past_its_lease_after_anothers_close_leaves_the_close() -> None:
    """A's probe outlived its lease; B's probe took the lock and succeeded (the fleet's closed
    mark). A's probe cut by its deadline then, long after slow_call, is no verdict: taken for
    one (decided at once, as a cut within its lease is), it re-opened A's breaker and published
    a break over the fleet's close, on an answer older than B's."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, stuck = await _a_stuck_past_its_lease(clock, store)
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None, "A's lock went with its lease: B probes"
    await b.settle(probe, 1, OK)
    closed = await store.get(_trip_key())
    assert closed is not None
    assert "closed" in closed.value
    a.cut(stuck, 1, BREAKER.probe_lease + 1.0)
    await _told(a)
    assert a.breaker_state("svc", HOST) is not BreakerState.OPEN, "A's stale cut decided"
    assert await store.get(_trip_key()) == closed, "a break published over the fleet's close"
    assert not a._stale_locks
    assert await b.admit(_Call("svc", HOST), 1) is None


async def test_a_fleet_probe_cut_past_its_lease_leaves_the_newer_probe_its_verdict() -> None:
    """As above, with B's probe still out when A's is cut: A's cut publishes nothing, frees
    neither B's lock nor its slot, and B's answer decides (A takes the fleet's close)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, stuck = await _a_stuck_past_its_lease(clock, store)
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None, "A's lock went with its lease: B probes"
    lock = await store.get(_probe_key())
    a.cut(stuck, 1, BREAKER.probe_lease + 1.0)
    await _told(a)
    assert a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN, "A's stale cut decided"
    assert await store.get(_trip_key()) is None, "no break published for the stale probe"
    assert await store.get(_probe_key()) == lock, "B's lock is held"
    await b.settle(probe, 1, OK)
    clock.advance(1.0)
    assert await a.admit(_Call("svc", HOST), 1) is None
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED, "A took the fleet's close"


class _AsyncCutGate(_FailingCutGate):
    """A gate of the caller's own whose ``cut`` is a coroutine function, as its other methods
    are (the retry loop never awaits ``cut``: the caller's error is due now)."""

    async def cut(self, call: object, attempt: int, ran: float) -> None:  # type: ignore[override]
        self.cuts += 1


async def test_a_gate_whose_cut_is_async_has_the_attempt_abandoned_and_is_told_so(
    hanging: tuple[Hanging, str], clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its coroutine never ran: the gate was told nothing of the attempt (a probe's slot of its
    own held until its lease), and Python warned of a coroutine never awaited. The coroutine is
    closed, a warning says why, and the attempt abandoned, as a gate without ``cut`` has it."""
    backend, host = hanging
    gate = _AsyncCutGate()
    mw = RetryMiddleware(policy=RetryPolicy(pauses=(), deadline=7.0), clock=clock, gate=gate)
    with caplog.at_level(logging.WARNING, logger="le_transport"):
        async with aiohttp.ClientSession(middlewares=[mw]) as session:
            with pytest.raises(DeadlineExceeded, match="7 s deadline passed after 1 attempt"):
                await session.get(f"http://{host}/x")
    assert gate.cuts == 0
    assert gate.abandoned == [1], "abandoned instead, as a gate without cut has it"
    assert any("never awaited" in r.getMessage() for r in caplog.records)
    await _ended(backend)
