"""A fleet probe's failure verdict written after its lock's lease ended, against another
process's probe admitted meanwhile: the newest probe's verdict is the fleet's.

Guards stand for processes sharing a store, on virtual time.
"""

from __future__ import annotations

import asyncio
import json

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
