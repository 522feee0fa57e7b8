"""A renewed fleet probe's end against its renewal's writes still on the wire: the trip entry
the renewal keeps may land after the probe's verdict (or after its process reads it), and the
verdict still reaches the fleet; and no task of a renewal outlives the engine's close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import CircuitOpen, RetriesExhausted
from le_transport.policies import BreakerState
from le_transport.state import Entry, MemoryStore, StateStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_breaker_fleet import (
    HOST,
    OK,
    POLICY,
    ForwardingStore,
    _breaker,
    _fleet,
    _holds_the_fleets_close,
    _trip,
    _trip_key,
    run_interleaved,
)
from tests.test_breaker_r18 import _seed_8999_plan
from tests.test_breaker_r26 import _call, _turns


async def _advance(clock: VirtualClock, seconds: float) -> None:
    """Move the clock on a second at a time (the rest last), letting the loop run in between
    (a renewal due then runs, and a write on the wire lands)."""
    whole = int(seconds)
    for _ in range(whole):
        clock.advance(1.0)
        await _turns()
    if seconds > whole:
        clock.advance(seconds - whole)
        await _turns()


class _Late(ForwardingStore):
    """A store (Redis, seen from a client) whose writes of the trip entry land ``lands`` after
    they are sent, and whose replies come ``replies`` after that, once armed. A write whose
    caller was cancelled still lands: the command was on the wire. ``reads``: its reads of the
    trip entry are answered that late too."""

    def __init__(
        self,
        inner: StateStore,
        clock: VirtualClock,
        lands: float = 0.5,
        replies: float = 0.0,
        reads: float = 0.0,
    ) -> None:
        super().__init__(inner)
        self.clock = clock
        self.lands = lands
        self.replies = replies
        self.reads = reads
        self.armed = False
        self.wire: list[asyncio.Future[bool]] = []

    async def _send(self, key: str, value: str, ttl: float, only_if: str | None) -> bool:
        await self.clock.sleep(self.lands)
        if only_if is None:
            done = await self.inner.set(key, value, ttl=ttl)
        else:
            done = await self.inner.set(key, value, ttl=ttl, only_if=only_if)
        await self.clock.sleep(self.replies)
        return done

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if not (self.armed and key == _trip_key()):
            return await super().set(key, value, ttl=ttl, only_if=only_if)
        sent = asyncio.ensure_future(self._send(key, value, ttl, only_if))
        self.wire.append(sent)
        return await asyncio.shield(sent)

    async def get(self, key: str) -> Entry | None:
        if self.armed and key == _trip_key() and self.reads:
            await self.clock.sleep(self.reads)
        return await super().get(key)


async def _renewing(store: _Late, clock: VirtualClock) -> tuple[Any, Any, Any]:
    """A (and B) on ``store``; A trips, its break ends, A's probe (a 60 s attempt timeout)
    goes at 105 and is renewed from 115, keeping the trip: (a, b, the probe)."""
    a, b = _fleet(clock, store)  # type: ignore[arg-type]
    await _trip(a)
    clock.advance(5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    assert a._renewals
    store.armed = True
    return a, b, probe


async def test_a_renewals_trip_write_landing_after_the_probes_success_leaves_the_close() -> None:
    # At 115 the renewal keeps the trip (a compare-and-set over the entry the probe answers
    # for), landing at 115.5; the probe succeeds at 115.2, and its closed mark, a
    # compare-and-set over that same entry, lands at 115.7, after the renewal's: it found the
    # kept trip instead, and the fleet never learnt of the close (each process probed for
    # itself).
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Late(MemoryStore(clock), clock)
    a, _, probe = await _renewing(store, clock)
    await _advance(clock, 10.2)  # 115.2: the renewal's write of the trip is on the wire
    assert store.wire
    assert not store.wire[0].done()
    settling = asyncio.ensure_future(a.settle(probe, 1, OK))
    await _advance(clock, 6.0)
    await settling
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED
    await asyncio.gather(*store.wire)
    await _holds_the_fleets_close(store)


async def test_a_late_renewed_probe_whose_kept_trip_lands_as_it_reports_still_decides() -> None:
    # Past its lease (135), the probe reports at 145.2, as the renewal's write of the trip
    # sent at 145 is on the wire; the process reads the lock and the trip before a late answer
    # counts (answered at 145.7: the kept trip, landed at 145.5), and took it for news newer than
    # the probe: its success closed nothing, and told the fleet nothing.
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Late(MemoryStore(clock), clock, reads=0.5)
    a, _, probe = await _renewing(store, clock)
    await _advance(clock, 40.2)  # 145.2
    assert store.wire
    assert not store.wire[-1].done()
    settling = asyncio.ensure_future(a.settle(probe, 1, OK))
    await _advance(clock, 6.0)
    await settling
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED, "the probe's verdict"
    await asyncio.gather(*store.wire)
    store.armed = False
    await _holds_the_fleets_close(store)


async def test_a_kept_trip_landed_before_its_reply_is_not_adopted_by_its_own_process() -> None:
    # The renewal's write of the trip, sent at 145, lands at 145.5 and its reply comes at
    # 146.5: another call of the prober's process syncing at 145.7 read the kept trip, not yet
    # the one the probe answers for, adopted it, and so took the probe's slot: its success
    # then decided nothing.
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Late(MemoryStore(clock), clock, replies=1.0)
    a, _, probe = await _renewing(store, clock)
    store.armed = False
    await _advance(clock, 39.0)
    store.armed = True
    await _advance(clock, 1.7)  # 145.7: landed, not yet answered
    assert store.wire
    assert not store.wire[-1].done()
    await a.admit(_call(), 1)  # refused (the fleet's lock is A's probe's), after a sync
    await _advance(clock, 3.0)
    settling = asyncio.ensure_future(a.settle(probe, 1, OK))
    await _advance(clock, 6.0)
    await settling
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED, "the probe's verdict"
    await asyncio.gather(*store.wire)
    store.armed = False
    await _holds_the_fleets_close(store)
    await _turns()


# -- through the engine, on loopback: its close while a renewed probe is out ------------------


async def test_an_engine_closed_while_its_renewed_probe_is_out_leaves_no_renewal_task(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # The engine's close cuts the slow probe (abandoned: its renewal cancelled) and drains the
    # guard; the renewal, only told to cancel, was still pending when the close returned, to
    # be destroyed pending with a loop closed right after.
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    (guard,) = _fleet(clock, store, 1, _breaker())
    slow = RetryPolicy(pauses=(), attempt_timeout=60.0)
    engine = Engine({"svc": host}, scheme="http", clock=clock, overload=guard, retry=POLICY)
    async with engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        await clock.sleep(20.0)
        hang = backend.gate = asyncio.Event()
        backend.arrived.clear()
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x", retry=slow))
        await backend.arrived.wait()
        await clock.sleep(40.0)  # past the lease, renewed
        assert guard._renewals
        tasks = list(guard._renewals.values())
    # (Closed: no turn of the loop since.)
    assert all(task.done() for task in tasks), "a renewal outlived the engine's close"
    hang.set()
    with pytest.raises(BaseException):  # noqa: B017, PT011 (cut by the close, however told)
        await probe


# -- the fleet's interleaving property: B's bounded probe -------------------------------------


def test_a_probe_of_bs_admitted_slowly_in_the_interleaving_keeps_the_lock_for_its_bound() -> None:
    # The fleet's interleaving (B's bounded probe, its attempt timeout 17 s): B's admission
    # began at 106, and its lock's add was answered at 146 (the schedule held B meanwhile).
    # Its lock was renewed until 17 s after 106, so it ended at 156 with the probe just
    # admitted, and C probed at 157 while B's was out within its bound.
    plan = _seed_8999_plan()
    plan.b_bounded = True
    schedule = [0] * 4 + [-1] * 6 + [1] * 2 + [-1] * 40 + [2] * 10
    for now, taken in run_interleaved(plan, schedule):
        assert now >= taken[0] + 17.0, (now, taken)


class _Slow(ForwardingStore):
    """A store whose reads and writes take ``lag`` seconds of the clock once armed (a Redis
    slow to answer, within the FallbackStore's op_timeout)."""

    def __init__(self, inner: StateStore, clock: VirtualClock, lag: float) -> None:
        super().__init__(inner)
        self.clock = clock
        self.lag = lag
        self.armed = False

    async def _lags(self) -> None:
        if self.armed:
            await self.clock.sleep(self.lag)

    async def get(self, key: str) -> Entry | None:
        await self._lags()
        return await super().get(key)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._lags()
        return await super().add(key, value, ttl=ttl)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._lags()
        return await super().set(key, value, ttl=ttl, only_if=only_if)


async def test_a_probe_admitted_slowly_keeps_the_fleets_lock_for_its_whole_bound() -> None:
    # The probe's admission waited on the store (its trip read, its lock taken, the trip read
    # again: 4.5 s), and its attempt's 60 s timeout starts only once it is admitted; the lock
    # was renewed until 61 s after the admission began, so it ended 3.5 s before the probe's
    # own bound, and another process probed while it was out.
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Slow(MemoryStore(clock), clock, lag=1.5)
    a, b = _fleet(clock, store)  # type: ignore[arg-type]
    await _trip(a)
    assert await b.admit(_call(), 1) is not None
    await _advance(clock, 5.0)
    store.armed = True
    probe = _call()
    admitting = asyncio.ensure_future(a.admit(probe, 1))
    while not admitting.done():
        await _advance(clock, 0.5)
    assert admitting.result() is None
    admitted = clock.now()
    assert admitted - 105.0 > 3.0, "a slow admission"
    store.armed = False
    await _advance(clock, 59.5)  # within the probe's own bound (its attempt timeout, 60 s)
    assert isinstance(await b.admit(_call(), 1), CircuitOpen), "a second probe went"
    a.abandon(probe, 1)
    await _turns()
