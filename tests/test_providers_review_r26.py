"""CsdsDomains ``max_stale``: a map past the bound is never what a resolve answers from.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from le_transport.chaos import FaultRule, Hang, Match
from le_transport.errors import DomainResolutionError, Repeat
from le_transport.events import GiveUpEvent
from le_transport.recovery import repeat_of
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import ACCOUNT, csds_for, sim, sim_engine
from tests.test_providers_r26 import CSDS_PATH, domain_api_down

__all__ = ["sim"]


def _login_answer_naming(host: str, *services: str) -> dict[str, object]:
    """A login answer's ``csdsCollectionResponse`` naming only ``services`` (at ``host``)."""
    return {
        "baseURIs": [
            {"service": service, "account": ACCOUNT, "baseURI": host} for service in services
        ]
    }


async def test_a_partial_login_answer_during_a_refresh_past_max_stale_serves_no_old_host(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A login answer naming some services (merged, the map's age left as it was) landed
    while a refresh past max_stale was on its way: that refresh's failure handed its callers
    the old map, which was no longer the cached one, so its host for a service the login
    answer did not name was served, past the bound."""
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=100)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        # The Domain API hangs: the refresh past the bound ends at its attempt timeout (30 s).
        sim.faults.add(
            FaultRule(id="csds-hangs", fault=Hang(), match=Match(method="GET", path=CSDS_PATH))
        )
        await clock.sleep(200)
        resolving = asyncio.ensure_future(domains.resolve("accountConfigReadOnly"))
        await clock.sleep(10)
        assert not resolving.done()
        # Partial: the map's age is not started over, and the service asked for not named.
        assert domains.warm(_login_answer_naming(sim.host, "agentVep"))
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await resolving
        # And so it stays for every later caller (within stale_retry: nothing asked).
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await domains.resolve("accountConfigReadOnly")


async def test_a_service_waiting_for_a_refresh_that_ends_past_max_stale_gets_the_outage(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A service the expired map has no host for waits for the refresh in the background;
    when that refresh failed past max_stale, the old map answered for it: an
    UnknownServiceError (final: no recovery loop or socket tries again) from a map too old to
    serve, where a caller arriving a moment later gets the outage (DomainResolutionError,
    retryable)."""
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=100)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        sim.faults.add(
            FaultRule(id="csds-hangs", fault=Hang(), match=Match(method="GET", path=CSDS_PATH))
        )
        # Expired, within the bound (160 s): a refresh starts in the background, and hangs
        # up to its attempt timeout (30 s), past the bound.
        await clock.sleep(150)
        with pytest.raises(DomainResolutionError) as info:
            await domains.resolve("newService")
        assert clock.now() == pytest.approx(180)
        assert type(info.value) is DomainResolutionError
        assert "max_stale" in str(info.value)
        assert repeat_of(info.value) is Repeat.RETRYABLE


async def test_max_stale_zero_serves_no_expired_map_even_at_the_instant_it_expires(
    sim: Simulator, clock: VirtualClock
) -> None:
    """``max_stale=0``: an expired map is never served. At the very instant of its expiry
    (expired: a refresh is due, yet no time past its expiry) it was served, the refresh in
    the background, its failure handled as if the map were served."""
    domains = csds_for(sim, ttl=60, max_stale=0)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        sim.faults.add(
            FaultRule(id="csds-down", fault=503, match=Match(method="GET", path=CSDS_PATH))
        )
        await clock.sleep(60)
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await domains.resolve("agentVep")


@pytest.mark.parametrize("max_stale", [None, 86_400])
async def test_an_outage_within_max_stale_or_without_one_logs_no_error(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    max_stale: float | None,
) -> None:
    """Without max_stale (the default), or within it, a refresh that fails is handled (the
    last good map is served): a WARNING each, never an ERROR, and its give-up event says
    so, however long the outage."""
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=max_stale)
    giveups: list[GiveUpEvent] = []
    async with sim_engine(sim, clock, domains=domains, giveups=giveups):
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        with caplog.at_level(logging.DEBUG):
            for _ in range(40):
                await clock.sleep(35)
                assert await domains.resolve("agentVep") == sim.host
                await domains.wait_refresh()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert len(giveups) >= 30
    assert all(giveup.handled_by_caller for giveup in giveups)
    assert "handled: the last good map is served" in caplog.text
