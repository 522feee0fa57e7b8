"""A renewed fleet probe against the fleet's other writes (a break another process publishes
over the trip the probe keeps; a failed probe's new break with the renewal's write still on the
wire), its end while the renewal waits on the store, and its process dying."""

from __future__ import annotations

import asyncio
import json

from le_transport.errors import CircuitOpen
from le_transport.policies import BreakerState
from le_transport.state import MemoryStore, StateStore
from le_transport.testing import VirtualClock
from tests.test_breaker_fleet import (
    BREAKER,
    DOWN,
    HOST,
    OK,
    ForwardingStore,
    _fleet,
    _probe_key,
    _trip,
    _trip_key,
)
from tests.test_breaker_r26 import _advance, _call, _turns
from tests.test_breaker_review_r26 import _advance as _advance_late
from tests.test_breaker_review_r26 import _Late, _renewing
from tests.test_guard_hot_path import _Call

LEASE = BREAKER.probe_lease  # 30 s


async def test_a_probe_whose_trip_a_newer_break_replaced_holds_the_fleet_no_longer() -> None:
    # A's probe (a 60 s attempt timeout) goes at 105; C, which missed A's break, had four
    # calls out since before it, which fail at 108: C opens and publishes its own break over
    # the trip A's probe keeps (the fleet's, newer: A's late answer no longer counts). A's
    # renewal found that at 115, and went on renewing the lock until the probe's own bound
    # (166): the fleet, half-open again once C's break ended at 113, refused every call for
    # a probe whose answer would be thrown away, 20 s longer than a lease after it knew.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, c = _fleet(clock, store, 3)
    early = [_Call("svc", HOST) for _ in range(BREAKER.minimum_throughput)]
    for call in early:
        assert await c.admit(call, 1) is None
    await _trip(a)
    await _advance(clock, 5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    assert a._renewals
    await _advance(clock, 3.0)  # 108
    for call in early:
        await c.settle(call, 1, DOWN)
    assert c.breaker_state("svc", HOST) is BreakerState.OPEN
    entry = await store.get(_trip_key())
    assert entry is not None
    newer = entry.value
    await _advance(clock, 8.0)  # 116: A's renewal ran at 115
    found = await store.get(_trip_key())
    assert found is not None
    assert found.value == newer, "C's break stays the fleet's"
    assert not a._renewals, "no longer renewed"
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)  # B adopts it, half-open
    await _advance(clock, 24.0)  # 140: the lock's last renewal (115) holds it for its lease
    assert isinstance(await b.admit(_call(), 1), CircuitOpen), "A's lock, within its lease"
    await _advance(clock, 6.0)  # 146: a lease after A's renewal found C's break
    taken = _call()
    assert await b.admit(taken, 1) is None, "the fleet probes again, A's lock gone"
    held = await store.get(_probe_key())
    assert held is not None
    await b.settle(taken, 1, OK)
    assert b.breaker_state("svc", HOST) is BreakerState.CLOSED
    await a.settle(probe, 1, OK)  # A's late answer: not the fleet's verdict
    entry = await store.get(_trip_key())
    assert entry is not None
    assert "closed" in json.loads(entry.value)
    assert not a._renewals
    await _turns()


class _SlowToCancel(ForwardingStore):
    """A store whose renewals of the probe lock (a compare-and-set of it) hang once armed, and,
    cancelled, take a few turns of the loop to unwind (redis-py gives its connection back to
    the pool, or drops it, before the cancellation goes on)."""

    def __init__(self, inner: StateStore) -> None:
        super().__init__(inner)
        self.armed = False
        self.hanging = 0

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if self.armed and key == _probe_key() and only_if is not None:
            self.hanging += 1
            try:
                await asyncio.Event().wait()
            finally:
                for _ in range(5):
                    await asyncio.sleep(0)
        return await super().set(key, value, ttl=ttl, only_if=only_if)


async def test_the_drain_waits_for_a_renewal_its_probes_end_cut_in_the_store() -> None:
    # The probe ends (abandoned, as an engine's close cuts it) while its renewal waits on the
    # store: the renewal, told to cancel, was still unwinding its store call when the drain
    # returned, a task of the guard outliving the engine's close (destroyed pending with a
    # loop closed right after).
    clock = VirtualClock(start=100.0, autojump=False)
    store = _SlowToCancel(MemoryStore(clock))
    a, _ = _fleet(clock, store)  # type: ignore[arg-type]
    await _trip(a)
    await _advance(clock, 5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    store.armed = True
    await _advance(clock, 10.0)  # 115: the renewal's compare-and-set hangs
    assert store.hanging == 1
    (renewal,) = a._renewals.values()
    a.abandon(probe, 1)
    await a.drain()
    assert renewal.done(), "a renewal outlived the drain"


async def test_a_failed_probe_with_the_renewals_trip_write_on_the_wire_keeps_its_new_break() -> (
    None
):
    # The renewal's write keeping the trip (sent at 115, landing at 115.5) and the failed
    # probe's new break (115.2; its writes land half a second after they are sent): the
    # write keeping the trip, a compare-and-set of the entry the probe answered for, must not
    # replace the new break (the fleet would lose the re-open and probe again at once).
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Late(MemoryStore(clock), clock)
    a, b, probe = await _renewing(store, clock)
    await _advance_late(clock, 10.2)  # 115.2
    assert store.wire
    assert not store.wire[0].done()
    settling = asyncio.ensure_future(a.settle(probe, 1, DOWN))
    await _advance_late(clock, 6.0)
    await settling
    await asyncio.gather(*store.wire)
    store.armed = False
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    entry = await store.get(_trip_key())
    assert entry is not None
    data = json.loads(entry.value)
    assert data["opens"] == 2, data
    assert entry.ttl > data["half_open"], "the new break is on"
    assert isinstance(await b.admit(_call(), 1), CircuitOpen), "the fleet takes the re-open"
    assert not a._renewals
    await _turns()


async def test_a_renewed_probe_whose_process_died_holds_the_lock_and_trip_a_lease_at_most() -> None:
    # The renewal stops with no word (the process died): the lock and the trip it kept end
    # within a lease of their last write, and another process probes then.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _fleet(clock, store)
    await _trip(a)
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)
    await _advance(clock, 5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    await _advance(clock, 20.5)  # renewed (and the trip kept) at 115 and 125
    (renewal,) = a._renewals.values()
    renewal.cancel()  # dies: nothing more is written
    await _turns()
    lock = await store.get(_probe_key())
    trip = await store.get(_trip_key())
    assert lock is not None
    assert trip is not None
    assert lock.ttl <= LEASE
    assert trip.ttl <= LEASE
    await _advance(clock, LEASE)
    assert await store.get(_probe_key()) is None
    assert await store.get(_trip_key()) is None
    second = _call()
    assert await b.admit(second, 1) is None, "another process probes"
    await b.settle(second, 1, OK)
    a.abandon(probe, 1)
    await _turns()


async def test_a_probe_admitted_on_no_trip_stops_renewing_once_a_break_is_published() -> None:
    # A's trip entry ended at 135 (no call in its tail); A's probe goes at 140 on no entry,
    # with no trip to keep. C's calls, out since before A's trip, fail at 143: C publishes a
    # break, the fleet's news, newer than A's probe, whose late answer then no longer counts.
    # Only a renewal keeping a trip looked: A's lock was renewed until the probe's own bound
    # (202), the fleet waiting on it long after C's break ended (148).
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, c = _fleet(clock, store, 3)
    early = [_Call("svc", HOST) for _ in range(BREAKER.minimum_throughput)]
    for call in early:
        assert await c.admit(call, 1) is None
    await _trip(a)
    await _advance(clock, 40.0)  # 140
    assert await store.get(_trip_key()) is None
    probe = _call()
    assert await a.admit(probe, 1) is None
    assert a._renewals
    await _advance(clock, 3.0)  # 143
    for call in early:
        await c.settle(call, 1, DOWN)
    assert c.breaker_state("svc", HOST) is BreakerState.OPEN
    await _advance(clock, 8.0)  # 151: A's renewal ran at 150
    assert not a._renewals, "no longer renewed"
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)  # B adopts C's break
    await _advance(clock, 28.0)  # 179: the lock's last renewal (150) holds it for its lease
    assert isinstance(await b.admit(_call(), 1), CircuitOpen), "A's lock, within its lease"
    await _advance(clock, 2.0)  # 181
    taken = _call()
    assert await b.admit(taken, 1) is None, "the fleet probes again, A's lock gone"
    await b.settle(taken, 1, OK)
    a.abandon(probe, 1)
    await _turns()


async def test_a_renewed_probe_whose_trip_is_unchanged_renews_to_its_bound() -> None:
    # The look at the trip finds it as the probe left it (its own keep, or none yet): renewed
    # on, and the fleet kept out, until the probe reports.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _fleet(clock, store)
    await _trip(a)
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)  # B adopts A's break
    await _advance(clock, 40.0)  # 140: no entry left
    probe = _call()
    assert await a.admit(probe, 1) is None
    held = await store.get(_probe_key())
    assert held is not None
    await _advance(clock, 55.0)  # 195: within the probe's bound
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)
    now = await store.get(_probe_key())
    assert now is not None
    assert now.value == held.value, "A's lock, renewed"
    await a.settle(probe, 1, OK)
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED
    await _turns()
