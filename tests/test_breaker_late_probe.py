"""A half-open probe that ends after its lease passed and a newer probe took the slot.

The breaker lets one probe through in half-open and holds the slot for the probe's lease; a
probe stuck past it no longer holds the slot, and the next attempt goes as the new probe. When
the stuck one ends at last it is no longer the probe: its cancellation (or an outcome with no
verdict) must not free the slot the newer probe holds, and its answer must not decide the
half-open breaker's verdict, which is the newer probe's to give. Each probe is known by the
lease end it was admitted with (its admission's ``status.probe_until``), on the pure policy, the
single-process guard and the guard of a fleet alike.
"""

from __future__ import annotations

from types import SimpleNamespace

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from le_transport.errors import CircuitOpen
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
)
from le_transport.state import MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.test_guard_hot_path import _Call

BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=2,
    sampling_window=10.0,
    slots=5,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=40.0, jitter=0.0, floor=0.0),
    probe_lease=30.0,
)
HOST = "127.0.0.1:8080"
DOWN = Outcome.response(503)
OK = Outcome.response(200)
NO_VERDICT = Outcome.failure(OutcomeKind.TLS_REJECTED, "ClientConnectorCertificateError")


def _half_open() -> tuple[BreakerStatus, float]:
    """A breaker opened at 0 by two failures, half-open from its break's end (5 s)."""
    status = BREAKER.closed()
    for _ in range(BREAKER.minimum_throughput):
        status = BREAKER.record(status, 0.0, failed=True)
    assert BREAKER.state_at(status, 0.0) is BreakerState.OPEN
    return status, status.open_until


def _two_probes() -> tuple[BreakerStatus, float, float, float]:
    """The first probe admitted at the break's end, stuck past its lease; the second admitted
    then: the status, when, and each probe's lease end (its identity)."""
    status, start = _half_open()
    first = BREAKER.admit(status, start)
    assert first.probe
    now = start + BREAKER.probe_lease + 1.0
    second = BREAKER.admit(first.status, now)
    assert second.probe, "the first probe's lease passed: the next attempt probes"
    assert first.status.probe_until is not None
    assert second.status.probe_until is not None
    return second.status, now, first.status.probe_until, second.status.probe_until


# -- the pure policy ---------------------------------------------------------------------------


def test_a_stale_probes_release_leaves_the_newer_probes_slot() -> None:
    status, now, first, second = _two_probes()
    after = BREAKER.release(status, now + 1.0, probe_until=first)
    assert after == status, "the stuck probe freed nothing"
    third = BREAKER.admit(after, now + 1.0)
    assert not third.allowed, "one probe out at a time"
    assert third.retry_at == second
    assert BREAKER.release(status, now + 1.0, probe_until=second).probe_until is None


def test_a_stale_probes_failure_does_not_reopen_the_breaker() -> None:
    status, now, first, second = _two_probes()
    after = BREAKER.record(status, now + 1.0, failed=True, probe=True, probe_until=first)
    assert after == status, "the stuck probe's 503 is no verdict: the newer probe decides"
    closed = BREAKER.record(after, now + 2.0, failed=False, probe=True, probe_until=second)
    assert BREAKER.state_at(closed, now + 2.0) is BreakerState.CLOSED


def test_a_stale_probes_success_does_not_close_the_breaker() -> None:
    status, now, first, second = _two_probes()
    after = BREAKER.record(status, now + 1.0, failed=False, probe=True, probe_until=first)
    assert after == status, "the stuck probe's 200 is no verdict: the newer probe decides"
    assert BREAKER.state_at(after, now + 1.0) is BreakerState.HALF_OPEN
    reopened = BREAKER.record(after, now + 2.0, failed=True, probe=True, probe_until=second)
    assert BREAKER.state_at(reopened, now + 2.0) is BreakerState.OPEN
    assert reopened.opens == status.opens + 1


def test_a_probe_past_its_lease_still_decides_while_no_other_took_its_place() -> None:
    status, start = _half_open()
    probe = BREAKER.admit(status, start)
    late = start + BREAKER.probe_lease + 10.0
    ident = probe.status.probe_until
    closed = BREAKER.record(probe.status, late, failed=False, probe=True, probe_until=ident)
    assert BREAKER.state_at(closed, late) is BreakerState.CLOSED
    reopened = BREAKER.record(probe.status, late, failed=True, probe=True, probe_until=ident)
    assert BREAKER.state_at(reopened, late) is BreakerState.OPEN
    assert BREAKER.release(probe.status, late, probe_until=ident).probe_until is None


class LateProbes(RuleBasedStateMachine):
    """Any interleaving of admissions, outcomes and cancellations of stale and current probes,
    and of ordinary attempts, over time: at most one probe is out within its lease, and in
    half-open only the current probe's outcome changes the status."""

    def __init__(self) -> None:
        super().__init__()
        self.status, self.now = _half_open()
        # Attempts admitted and not yet ended: the lease end each probe was admitted with
        # (None: an ordinary attempt).
        self.in_flight: list[float | None] = []

    @rule(dt=st.sampled_from([0.0, 0.5, 4.0, 29.0, 30.0, 31.0, 60.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def an_attempt(self) -> None:
        admission = BREAKER.admit(self.status, self.now)
        self.status = admission.status
        if admission.allowed:
            self.in_flight.append(admission.status.probe_until if admission.probe else None)

    @rule(pick=st.integers(0, 20), failed=st.booleans(), rand=st.floats(0.0, 0.999))
    def an_attempt_ends(self, pick: int, failed: bool, rand: float) -> None:
        if not self.in_flight:
            return
        ident = self.in_flight.pop(pick % len(self.in_flight))
        before = self.status
        half_open = BREAKER.state_at(before, self.now) is BreakerState.HALF_OPEN
        current = ident is not None and ident == before.probe_until
        self.status = BREAKER.record(
            before, self.now, failed=failed, rand=rand, probe=ident is not None, probe_until=ident
        )
        if half_open and not current:
            assert self.status == before, "only the current probe decides in half-open"
        if half_open and current:
            expected = BreakerState.OPEN if failed else BreakerState.CLOSED
            assert BREAKER.state_at(self.status, self.now) is expected

    @rule(pick=st.integers(0, 20))
    def an_attempt_is_cancelled(self, pick: int) -> None:
        if not self.in_flight:
            return
        ident = self.in_flight.pop(pick % len(self.in_flight))
        if ident is None:
            return  # (the guard releases only a probe)
        before = self.status
        self.status = BREAKER.release(before, self.now, probe_until=ident)
        if ident != before.probe_until:
            assert self.status == before, "a stale probe's release frees nothing"
        else:
            assert self.status == attrs.evolve(before, probe_until=None)

    @invariant()
    def at_most_one_probe_is_out(self) -> None:
        live = [ident for ident in self.in_flight if ident is not None and self.now < ident]
        assert len(live) <= 1, f"two probes out within their leases: {live}"
        if live:
            assert self.status.probe_until == live[0], "the live probe holds the slot"


TestLateProbes = LateProbes.TestCase
TestLateProbes.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


# -- the guard, one process --------------------------------------------------------------------


async def _tripped(guard: OverloadGuard, clock: VirtualClock) -> None:
    """Open the guard's breaker and wait out its break: half-open."""
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN
    clock.advance(BREAKER.breaks.first)
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN


async def _stuck_then_second(guard: OverloadGuard, clock: VirtualClock) -> tuple[_Call, _Call]:
    """The first probe goes and is stuck past its lease; the second goes then."""
    await _tripped(guard, clock)
    first = _Call("svc", HOST)
    assert await guard.admit(first, 1) is None
    assert isinstance(await guard.admit(_Call("svc", HOST), 1), CircuitOpen), "one probe"
    clock.advance(BREAKER.probe_lease + 1.0)
    second = _Call("svc", HOST)
    assert await guard.admit(second, 1) is None, "the first's lease passed: a new probe goes"
    return first, second


async def _refuses_a_third(guard: OverloadGuard) -> None:
    refused = await guard.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen), "a third probe went while the second is out"


def _guard(clock: VirtualClock, store: MemoryStore | None = None) -> OverloadGuard:
    return OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)


async def test_a_stale_probe_abandoned_keeps_the_newer_probes_slot() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    first, second = await _stuck_then_second(guard, clock)
    guard.abandon(first, 1)
    await _refuses_a_third(guard)
    await guard.settle(second, 1, OK)
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED


async def test_a_stale_probe_with_no_verdict_keeps_the_newer_probes_slot() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    first, _ = await _stuck_then_second(guard, clock)
    await guard.settle(first, 1, NO_VERDICT)
    await _refuses_a_third(guard)


async def test_a_stale_probes_failure_leaves_the_verdict_to_the_newer_probe() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    first, second = await _stuck_then_second(guard, clock)
    await guard.settle(first, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await _refuses_a_third(guard)
    await guard.settle(second, 1, OK)
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED


async def test_a_stale_probes_success_leaves_the_verdict_to_the_newer_probe() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    first, second = await _stuck_then_second(guard, clock)
    await guard.settle(first, 1, OK)
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await _refuses_a_third(guard)
    await guard.settle(second, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN


class _TimedCall(_Call):
    """A call whose retry policy bounds each attempt (what the guard's probe hold reads)."""

    def __init__(self, service: str, host: str, *, attempt_timeout: float) -> None:
        super().__init__(service, host)
        self.policy = SimpleNamespace(attempt_timeout=attempt_timeout)


async def test_a_probe_held_past_the_lease_by_its_attempt_timeout_still_decides() -> None:
    """The guard holds the slot past the lease for a probe whose attempt timeout is longer
    (it rewrites the admitted lease end): that probe is still the one that decides."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    await _tripped(guard, clock)
    probe = _TimedCall("svc", HOST, attempt_timeout=35.0)
    assert await guard.admit(probe, 1) is None
    clock.advance(BREAKER.probe_lease + 3.0)  # its hold: 35 s and a second
    await _refuses_a_third(guard)
    guard.abandon(probe, 1)
    assert await guard.admit(_Call("svc", HOST), 1) is None, "its release freed the slot"


async def test_a_probe_held_past_the_lease_settles_the_breaker() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = _guard(clock)
    await _tripped(guard, clock)
    probe = _TimedCall("svc", HOST, attempt_timeout=35.0)
    assert await guard.admit(probe, 1) is None
    clock.advance(BREAKER.probe_lease + 3.0)
    await guard.settle(probe, 1, OK)
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED


# -- the guard of a fleet ----------------------------------------------------------------------


def _probe_key() -> str:
    return state_key("1", "breaker-probe", "svc", HOST)


def _trip_key() -> str:
    return state_key("1", "breaker", "svc", HOST)


async def test_in_a_fleet_a_stale_probe_neither_decides_nor_frees_the_newer_probes_lock() -> None:
    """The fleet's lock holds a value per probe: the stuck probe's lease passed with its lock's,
    the second took both. The stuck one's late 503 publishes no break and frees neither the
    slot nor the lock; its cancellation neither."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    guard = _guard(clock, store)
    first, second = await _stuck_then_second(guard, clock)
    lock = await store.get(_probe_key())
    assert lock is not None
    trip = await store.get(_trip_key())
    await guard.settle(first, 1, DOWN)
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    assert await store.get(_trip_key()) == trip, "no break published for the stale probe"
    assert await store.get(_probe_key()) == lock, "the second probe's lock is held"
    await _refuses_a_third(guard)
    await guard.settle(second, 1, OK)
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED
    assert await store.get(_probe_key()) is None


async def test_in_a_fleet_a_stale_probe_abandoned_keeps_the_newer_probes_slot() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    guard = _guard(clock, store)
    first, _ = await _stuck_then_second(guard, clock)
    lock = await store.get(_probe_key())
    guard.abandon(first, 1)
    await guard.drain()
    assert await store.get(_probe_key()) == lock, "the second probe's lock is held"
    await _refuses_a_third(guard)


async def test_in_a_fleet_a_probe_another_process_replaced_leaves_the_verdict_to_that_one() -> None:
    """A's probe is stuck past its lease, and with it its lock's: B takes the fleet's lock and
    probes. A's probe is no longer the fleet's: its late 503 publishes no break (which B's
    success could not replace, the fleet left open on a stale answer) and B's answer decides."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _guard(clock, store), _guard(clock, store)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen), "B adopts the break"
    clock.advance(BREAKER.breaks.first)
    stuck = _Call("svc", HOST)
    assert await a.admit(stuck, 1) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None, "A's lock went with its lease: B probes"
    lock = await store.get(_probe_key())
    await a.settle(stuck, 1, DOWN)
    assert a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN, "A's stale 503 decided"
    assert await store.get(_trip_key()) is None, "no break published for the stale probe"
    assert await store.get(_probe_key()) == lock, "B's lock is held"
    await b.settle(probe, 1, OK)
    assert b.breaker_state("svc", HOST) is BreakerState.CLOSED
    clock.advance(1.0)
    assert await a.admit(_Call("svc", HOST), 1) is None
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED, "A took the fleet's close"


async def test_in_a_fleet_a_probe_ending_after_the_newer_ones_verdict_leaves_it() -> None:
    """As above, but A's stuck probe ends after B's probe succeeded: B's lock is gone, and the
    fleet's entry is B's closed mark. A's late 503 is no verdict either: taken for one, it
    re-opened A's breaker and published a break over the fleet's close, on an answer older
    than B's."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _guard(clock, store), _guard(clock, store)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen), "B adopts the break"
    clock.advance(BREAKER.breaks.first)
    stuck = _Call("svc", HOST)
    assert await a.admit(stuck, 1) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None, "A's lock went with its lease: B probes"
    await b.settle(probe, 1, OK)
    assert b.breaker_state("svc", HOST) is BreakerState.CLOSED
    closed = await store.get(_trip_key())
    assert closed is not None
    assert "closed" in closed.value
    await a.settle(stuck, 1, DOWN)
    assert a.breaker_state("svc", HOST) is not BreakerState.OPEN, "A's stale 503 decided"
    after = await store.get(_trip_key())
    assert after is not None
    assert after.value == closed.value, "a break published over the fleet's close"
    assert await b.admit(_Call("svc", HOST), 1) is None


async def test_in_a_fleet_a_probe_past_its_lease_no_other_sent_still_decides() -> None:
    """A probe stuck past its lease, no other process probing nor publishing since: its
    answer is still the fleet's verdict (its trip entry gone with its TTL is no news)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a = _guard(clock, store)
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    clock.advance(BREAKER.breaks.first)
    stuck = _Call("svc", HOST)
    assert await a.admit(stuck, 1) is None
    clock.advance(BREAKER.probe_lease + 1.0)
    await a.settle(stuck, 1, DOWN)
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    assert await store.get(_trip_key()) is not None, "the re-open is published"
