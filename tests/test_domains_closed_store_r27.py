"""A fleet's store that fails when read before a Domain API fetch leaves the fetch to answer.

Without an invalidate, CsdsDomains reads the fleet's shared map before it asks the Domain API.
A store that failed there (a closed plain MemoryStore, which is not wrapped in a
FallbackStore) failed the resolve with the store's StateStoreError, though the Domain API
would have answered; and with a map cached, the expired map was not served either. The read
after a failed invalidated fetch already served the last good map in that case.
"""

from __future__ import annotations

import logging

import pytest

from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_domains_r27 import CSDS_PATH, _fleet_member
from tests.test_providers import sim, sim_engine

__all__ = ["sim"]


async def test_a_closed_store_before_the_first_fetch_leaves_the_domain_api_to_answer(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport")
    store = MemoryStore(clock)
    await store.close()
    b = _fleet_member(sim, store)
    async with sim_engine(sim, clock, domains=b):
        assert await b.resolve("agentVep") == sim.host
    assert sim.count("GET", CSDS_PATH) == 1
    [warned] = [r for r in caplog.records if "shared domain map" in r.getMessage()]
    assert "StateStoreError" in warned.getMessage()


async def test_a_closed_store_at_a_refresh_of_an_expired_map_still_refreshes_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    b = _fleet_member(sim, store)
    async with sim_engine(sim, clock, domains=b):
        assert await b.resolve("agentVep") == sim.host
        await store.close()
        await clock.sleep(61)  # the map (ttl 60) expired: the next resolve refreshes it
        assert await b.resolve("agentVep") == sim.host
        await b.wait_refresh()
    assert sim.count("GET", CSDS_PATH) == 2
