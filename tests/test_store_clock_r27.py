"""The shared-state helpers run on the store's clock when given none, as SharedSession and
SharedDomainMap do: a FleetPacer or a FallbackStore over a store on a virtual clock paced,
mirrored and expired on the real clock while the store's TTLs and buckets ran on the store's.
"""

from __future__ import annotations

import asyncio

from le_transport.policies.pacing import TokenBucket
from le_transport.state import FallbackStore, FleetPacer, MemoryStore
from le_transport.testing import VirtualClock


async def test_a_fleet_pacer_waits_its_turn_on_the_stores_clock(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    pacer = FleetPacer(store, account="123", bucket=TokenBucket(rate=0.01, burst=1))
    assert await pacer.acquire() == 0
    # The next turn is 100 s away on the store's bucket: waited on its (virtual) clock, at
    # once in real time; on the real clock this would hang the test.
    waited = await asyncio.wait_for(pacer.acquire(), timeout=5)
    assert 99 <= waited <= 101


async def test_a_fallback_store_mirrors_on_its_primarys_clock(clock: VirtualClock) -> None:
    store = FallbackStore(MemoryStore(clock))
    assert store.clock is clock
    await store.set("k", "v", ttl=10)
    clock.advance(11)
    assert await store.get("k") is None


async def test_an_explicit_clock_still_wins(clock: VirtualClock) -> None:
    other = VirtualClock()
    assert FallbackStore(MemoryStore(clock), clock=other).clock is other
