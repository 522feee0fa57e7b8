"""Domain and token providers: a bound on a stale domain map's age, and more.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from le_transport import Engine
from le_transport.chaos import FaultRule, Match
from le_transport.errors import ConfigurationError, DomainResolutionError
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.state import MemoryStore, SharedDomainMap, SharedSession
from le_transport.state.fallback import DEFAULT_PRIMARY_TIMEOUT
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, sim, sim_engine

__all__ = ["sim"]

CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"


def domain_api_down(sim: Simulator) -> None:
    """Every Domain API request answers 503 until ``sim.faults.clear()``."""
    sim.faults.add(FaultRule(id="csds-down", fault=503, match=Match(method="GET", path=CSDS_PATH)))


# -- max_stale: a bound on how long an expired map is served through an outage ---------------


async def test_a_map_past_max_stale_is_no_longer_served_and_the_error_says_why(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=300)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        # Expired at 60 s; served stale through the outage up to 60 + 300 s.
        for _ in range(9):
            await clock.sleep(35)
            assert await domains.resolve("agentVep") == sim.host
            await domains.wait_refresh()
        assert clock.now() < 360
        await clock.sleep(361 - clock.now())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="le_transport.domains"):
            with pytest.raises(DomainResolutionError) as info:
                await domains.resolve("agentVep")
            message = str(info.value)
            assert info.value.account == ACCOUNT
            assert "max_stale" in message
            assert "300" in message
            # How old the map is, and why the last refresh failed.
            assert "361 s" in message
            assert "503" in message
            # Still refused (within stale_retry: nothing asked), logged only once.
            asked = sim.count("GET", CSDS_PATH)
            await clock.sleep(1)
            with pytest.raises(DomainResolutionError):
                await domains.resolve("accountConfigReadOnly")
            assert sim.count("GET", CSDS_PATH) == asked
            # After stale_retry, a resolve waits for one refresh, which fails: refused again.
            await clock.sleep(31)
            with pytest.raises(DomainResolutionError):
                await domains.resolve("agentVep")
            assert sim.count("GET", CSDS_PATH) == asked + 1
        # The provider's ERROR once; each failed refresh a WARNING that no longer says the
        # map is served (and the retry middleware's give-up, a failure for a caller now).
        errors = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name == "le_transport.domains"
        ]
        assert len(errors) == 1
        assert "max_stale" in errors[0].getMessage()
        assert "handled: the last good map is served" not in caplog.text
        refreshes = [
            r.getMessage() for r in caplog.records if "refresh for account" in r.getMessage()
        ]
        assert refreshes
        assert all("past max_stale and is not served" in m for m in refreshes)
        # The Domain API is back: the next refresh serves a fresh map, and the bound starts
        # over from it.
        sim.faults.clear()
        await clock.sleep(31)
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        await clock.sleep(61)
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()


async def test_max_stale_none_keeps_serving_the_map_through_any_outage(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60, stale_retry=30)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        await clock.sleep(86_400)
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        assert await domains.resolve("agentVep") == sim.host


async def test_max_stale_zero_waits_for_the_refresh_and_fails_without_serving_the_stale_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60, max_stale=0)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        # Up: the expired map is refreshed before it answers.
        assert await domains.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 2
        domain_api_down(sim)
        await clock.sleep(61)
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await domains.resolve("agentVep")


async def test_invalidate_past_max_stale_with_the_domain_api_down_raises(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60, max_stale=100)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        domain_api_down(sim)
        await clock.sleep(100)
        await domains.invalidate()
        # Within the bound: the failed refresh falls back to the map.
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(100)
        await domains.invalidate()
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await domains.resolve("agentVep")
        with pytest.raises(DomainResolutionError, match="max_stale"):
            await domains.refresh()


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, True, "300", 10**400])
def test_max_stale_must_be_none_or_a_finite_number_at_least_zero(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_stale"):
        CsdsDomains(ACCOUNT, max_stale=bad)  # type: ignore[arg-type]


# -- a caller's domain store that hangs ------------------------------------------------------


class _HangingMemoryStore(MemoryStore):
    """A caller's own store built on MemoryStore whose reads (``hang_get``) or writes
    (``hang_set``) never answer (its client has no timeout)."""

    def __init__(self, clock: VirtualClock, *, hang_get: bool, hang_set: bool) -> None:
        super().__init__(clock)
        self.hang_get = hang_get
        self.hang_set = hang_set

    async def get(self, key: str) -> Entry | None:
        if self.hang_get:
            await asyncio.Event().wait()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if self.hang_set:
            await asyncio.Event().wait()
        return await super().set(key, value, ttl=ttl, only_if=only_if)


@pytest.mark.parametrize(("hang_get", "hang_set"), [(True, False), (False, True)])
async def test_a_caller_s_memory_store_that_hangs_is_cut_and_the_domain_api_answers(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    hang_get: bool,
    hang_set: bool,
) -> None:
    """A MemoryStore subclass was used as it is (no FallbackStore around it, so no bound):
    a read or write that never answered held every resolve, and every reconnect, for ever."""
    store = _HangingMemoryStore(clock, hang_get=hang_get, hang_set=hang_set)
    domains = csds_for(sim, shared=SharedDomainMap(store, account=ACCOUNT, clock=clock))
    async with sim_engine(sim, clock, domains=domains):
        started = clock.now()
        with caplog.at_level(logging.WARNING, logger="le_transport.state"):
            # A real-time guard: without a bound the resolve never ends.
            async with asyncio.timeout(30):
                assert await domains.resolve("agentVep") == sim.host
        assert clock.now() - started == pytest.approx(DEFAULT_PRIMARY_TIMEOUT)
        assert sim.count("GET", CSDS_PATH) == 1
        assert "did not answer within" in caplog.text


class _HangingAddStore(_HangingMemoryStore):
    """As :class:`_HangingMemoryStore`, its ``add`` (a lock's) never answering either."""

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await asyncio.Event().wait()
        return False  # pragma: no cover


async def test_a_caller_s_memory_store_that_hangs_under_a_shared_session_holds_no_login(
    sim: Simulator, clock: VirtualClock
) -> None:
    """SharedSession used a MemoryStore subclass as it is too: a login waited for ever on its
    read of the fleet's session (or its lock)."""
    store = _HangingAddStore(clock, hang_get=True, hang_set=True)
    domains = csds_for(sim)
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=domains,
        logout_on_close=False,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        async with asyncio.timeout(30):
            resp = await engine.request(
                "GET",
                "accountConfigReadOnly",
                f"/api/account/{ACCOUNT}/configuration/le-users/users",
            )
        assert resp.status == 200
        assert sim.count("POST") >= 1
