"""CsdsDomains' domains_stale event says whether the last good map is still served."""

from __future__ import annotations

import pytest

from le_transport.errors import DomainResolutionError
from le_transport.events import StateEvent
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import csds_for, sim, sim_engine
from tests.test_providers_r26 import domain_api_down

__all__ = ["sim"]


async def test_domains_stale_says_whether_the_map_is_served(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Past max_stale the event still came as it did while the map was served: a dashboard
    counting it could not tell an outage the map rides out from one that fails calls."""
    events: list[StateEvent] = []
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=60)
    async with sim_engine(sim, clock, domains=domains, events=events):
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        await clock.sleep(61)
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        await clock.sleep(61)
        with pytest.raises(DomainResolutionError):
            await domains.resolve("agentVep")
    stale = [e for e in events if e.name == "domains_stale"]
    assert [e.details["served"] for e in stale] == [True, False]
