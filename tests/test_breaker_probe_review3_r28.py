"""A fleet probe's failure verdict written after its lock's lease ended, against another
process's probe admitted meanwhile: the newest probe's verdict is the fleet's.

Guards stand for processes sharing a store, on virtual time.
"""

from __future__ import annotations

import asyncio
import json

from le_transport.errors import StateStoreError
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BreakerState
from le_transport.state import FallbackStore, MemoryStore, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock
from tests.test_breaker_probe_review2_r28 import BREAKER, CUT, DOWN, HOST, MARGIN, OK, TRIP
from tests.test_guard_hot_path import _Call

LOCK = state_key("1", "breaker-probe", "svc", HOST)


async def _settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class Held(MemoryStore):
    """A shared store whose next read, and next write, of the trip can each be held (a slow
    store) until let go."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hold_read = False
        self.hold_write = False
        self.reading = asyncio.Event()
        self.read_go = asyncio.Event()
        self.writing = asyncio.Event()
        self.write_go = asyncio.Event()

    async def get(self, key: str) -> Entry | None:
        if self.hold_read and key == TRIP:
            self.hold_read = False
            self.reading.set()
            await self.read_go.wait()
        return await super().get(key)

    async def _held_write(self, key: str) -> None:
        if self.hold_write and key == TRIP:
            self.hold_write = False
            self.writing.set()
            await self.write_go.wait()

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._held_write(key)
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._held_write(key)
        return await super().add(key, value, ttl=ttl)


def _fleet(clock: VirtualClock, inner: MemoryStore) -> tuple[OverloadGuard, OverloadGuard]:
    store = FallbackStore(inner, clock=clock, op_timeout=1000.0)
    a, b = (
        OverloadGuard(
            budget=None, breaker=BREAKER, store=store, account="1", clock=clock, sync_interval=0.0
        )
        for _ in range(2)
    )
    return a, b


async def _open_and_probe(clock: VirtualClock, a: OverloadGuard, b: OverloadGuard) -> _Call:
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("svc", HOST)
        assert await a.admit(call, 1) is None
        await a.settle(call, 1, DOWN)
    assert await b.admit(_Call("svc", HOST), 1) is not None, "B adopts A's break"
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    assert probe.until is not None
    return probe


def _trip(inner: MemoryStore) -> dict[str, object]:
    held = inner._values.get(TRIP)
    assert held is not None
    data = json.loads(held[0])
    assert isinstance(data, dict)
    return data


async def test_a_late_failure_written_as_a_newer_probe_is_admitted_yields_to_its_verdict() -> None:
    # A's probe is cut; its verdict's publish reaches the store past its lock's lease: it
    # reads the lock (free) and writes its break; between that read and that write, B takes
    # the freed lock and is admitted as the fleet's probe. B succeeds, but its close (a
    # set-if-absent / compare-and-set of the entry it was admitted on) finds A's older break
    # and is dropped: the fleet waited out A's break over a service its newest probe found
    # well. Either B is not admitted while A's late verdict is being written, or B's success
    # is the fleet's.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = Held(clock)
    a, b = _fleet(clock, inner)
    probe = await _open_and_probe(clock, a, b)
    assert probe.until is not None
    clock.advance(probe.until - clock.now())
    inner.hold_read = True
    inner.hold_write = True
    verdict = asyncio.ensure_future(a.settle(probe, 1, CUT))
    await inner.reading.wait()
    clock.advance(MARGIN + 1.0)  # the lock's lease is over; A's publish still out
    inner.read_go.set()
    await inner.writing.wait()  # A read the trip and the lock, and is writing its break
    other = _Call("svc", HOST)
    refused = await b.admit(other, 1)
    inner.write_go.set()
    await verdict
    await _settle_loop()
    if refused is None:
        await b.settle(other, 1, OK)
        assert b.breaker_state("svc", HOST) is BreakerState.CLOSED
        assert "closed" in _trip(inner), "B, the newest probe, succeeded: the fleet is closed"
    else:
        assert "opens" in _trip(inner), "A's verdict, the newest, is the fleet's break"
        assert LOCK not in inner._values, "the lock A took again to publish is freed after it"
        assert await b.admit(_Call("svc", HOST), 1) is not None, "B takes A's break"
        assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    await a.drain()
    await b.drain()


async def _late_verdict(
    clock: VirtualClock, inner: Held, a: OverloadGuard, probe: _Call
) -> asyncio.Future[None]:
    """A's probe cut, its verdict's read of the trip held until past its lock's lease."""
    assert probe.until is not None
    clock.advance(probe.until - clock.now())
    inner.hold_read = True
    verdict = asyncio.ensure_future(a.settle(probe, 1, CUT))
    await inner.reading.wait()
    clock.advance(MARGIN + 1.0)
    return verdict


async def test_a_late_failure_with_no_newer_probe_is_the_fleets_break() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    inner = Held(clock)
    a, b = _fleet(clock, inner)
    probe = await _open_and_probe(clock, a, b)
    verdict = await _late_verdict(clock, inner, a, probe)
    inner.read_go.set()
    await verdict
    await _settle_loop()
    assert _trip(inner)["opens"] == 2, "A's failure, the newest verdict, is published"
    assert LOCK not in inner._values, "the lock taken again to publish it is freed"
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    assert await b.admit(_Call("svc", HOST), 1) is not None, "B takes the fleet's break"
    assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    await a.drain()
    await b.drain()


async def test_a_late_failure_while_a_newer_probe_is_out_leaves_that_probes_failure() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    inner = Held(clock)
    a, b = _fleet(clock, inner)
    probe = await _open_and_probe(clock, a, b)
    verdict = await _late_verdict(clock, inner, a, probe)
    other = _Call("svc", HOST)
    assert await b.admit(other, 1) is None, "B probes once A's lock is gone"
    inner.read_go.set()
    await verdict
    await _settle_loop()
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN, "A keeps its own break"
    await b.settle(other, 1, DOWN)
    assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    assert "opens" in _trip(inner), "B's failure, the newest verdict, is the fleet's break"
    assert LOCK not in inner._values
    # A's own break over, it goes half-open again and probes (nothing left refusing it).
    clock.advance(200.0)
    again = _Call("svc", HOST)
    assert await a.admit(again, 1) is None
    await a.settle(again, 1, OK)
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED
    assert "closed" in _trip(inner)
    await a.drain()
    await b.drain()


class LockAddFails(Held):
    """The primary fails (an outage) on the next set-if-absent of the fleet's probe lock."""

    fail_lock = False

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        if self.fail_lock and key == LOCK:
            self.fail_lock = False
            raise StateStoreError("down")
        return await super().add(key, value, ttl=ttl)


async def test_a_store_outage_as_a_late_failure_takes_the_lock_again_is_no_callers_error() -> None:
    # The lock's set-if-absent fails (the primary is out): the store answers locally, the
    # settle does not raise, and the break is not written into the fleet's store blindly.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = LockAddFails(clock)
    a, b = _fleet(clock, inner)
    probe = await _open_and_probe(clock, a, b)
    verdict = await _late_verdict(clock, inner, a, probe)
    inner.fail_lock = True
    inner.read_go.set()
    await verdict  # no error reaches the caller
    await _settle_loop()
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    assert TRIP not in inner._values, "nothing written to the fleet's store meanwhile"
    await a.drain()
    await b.drain()
