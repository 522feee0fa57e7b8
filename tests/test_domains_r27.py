"""Domain resolution and the fleet's shared state: defaults and fallbacks that disagreed.

1. ``SharedSession`` ran on the real clock unless told otherwise, where ``SharedDomainMap``
   takes the store's own clock: a ``SharedSession`` on a store running on a ``VirtualClock``
   polled for another process's login on the real clock.
2. After ``invalidate()`` a refresh asks the Domain API and skips the fleet's shared map; when
   the Domain API failed with the map past ``max_stale``, resolve raised though the store held
   a live map (a peer's, just fetched) that the same refresh without the invalidate would have
   adopted. The store is read when the Domain API fails: a live map is adopted past the bound,
   and a peer's newer one within it too, rather than serving this process's older map.
3. Whether a Domain API refresh's give-up was "handled" (a WARNING saying the last good map is
   served, ``handled_by_caller``) was decided when the refresh started: one that started
   within ``max_stale`` and gave up past it said the map was served, though resolve failed.
4. An unknown service's ``UnknownServiceError`` said the account has no such service whatever
   map it checked: after a failed refresh that is the last good map, an old one, and the
   Domain API was not heard; it now says so, and why the refresh failed.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from le_transport.chaos import Hang, Status
from le_transport.errors import DomainResolutionError, UnknownServiceError
from le_transport.events import GiveUpEvent
from le_transport.providers import CsdsDomains
from le_transport.state import MemoryStore, SharedDomainMap, SharedSession, state_key
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import ACCOUNT, USER, csds_for, sim, sim_engine
from tests.test_providers_r26 import domain_api_down

__all__ = ["sim"]

CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"

# -- 1. SharedSession defaults to the store's clock, as SharedDomainMap does ----------------------


async def test_a_shared_session_without_a_clock_waits_on_the_stores_clock(
    clock: VirtualClock,
) -> None:
    """Another process holds the login lock: the waiter's polls for its token are sleeps on the
    store's (virtual) clock, so the lock's TTL on that store runs out and the waiter logs in."""
    store = MemoryStore(clock)
    session = SharedSession(store, account=ACCOUNT, user=USER, lock_ttl=10.0)
    held = await store.add(state_key(ACCOUNT, "session-lock", USER), "another", ttl=10.0)
    assert held

    async def do_login() -> tuple[str, float | None]:
        return "session", 3600.0

    waiter = asyncio.ensure_future(session.login(do_login))
    try:
        await clock.sleep(11.0)
        # On the real clock its polls recorded no sleep here, and the lock never ran out.
        assert waiter.done()
        token = waiter.result()
    finally:
        waiter.cancel()
    assert token.value == "session"
    assert session.logins == 1


# -- 3. a refresh's give-up is "handled" only if the map is still served when it ends ----------


@pytest.mark.parametrize(("max_stale", "handled"), [(10.0, False), (100.0, True)])
async def test_a_refresh_giving_up_past_max_stale_is_not_logged_as_handled(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    max_stale: float,
    handled: bool,
) -> None:
    """The map expires at 60 s; a refresh starts at 65 s (within a max_stale of 10 s) and hangs
    until its 30 s attempt timeout, past the bound: nothing is served then, and its give-up
    is reported as any failed call's (with a max_stale of 100 s, the map is still served)."""
    giveups: list[GiveUpEvent] = []
    domains = csds_for(sim, ttl=60, stale_retry=30, max_stale=max_stale)
    async with sim_engine(sim, clock, domains=domains, giveups=giveups):
        assert await domains.resolve("agentVep") == sim.host
        sim.faults.script("GET", CSDS_PATH, [Hang()])
        await clock.sleep(65)
        # Within the bound: served while the refresh runs in the background.
        assert await domains.resolve("agentVep") == sim.host
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            await domains.wait_refresh()
        assert clock.now() >= 60 + 10
        if not handled:
            with pytest.raises(DomainResolutionError):
                await domains.resolve("agentVep")
    assert [g.handled_by_caller for g in giveups] == [handled]
    gave_up = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert len(gave_up) == 1
    assert ("handled: the last good map is served" in gave_up[0].getMessage()) is handled
    assert gave_up[0].levelno == (logging.WARNING if handled else logging.ERROR)


# -- 4. an unknown service's message says which map was checked ---------------------------------


async def test_an_unknown_service_after_a_failed_refresh_says_the_map_is_the_last_good_one(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60, stale_retry=30)
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(UnknownServiceError) as fresh:
            await domains.resolve("noSuchService")
        # Just fetched: the Domain API does not list it.
        assert f"account {ACCOUNT!r} has no service 'noSuchService'" in str(fresh.value)
        domain_api_down(sim)
        await clock.sleep(61)
        # Expired: the caller waits for the refresh, which fails; the old map is checked.
        with pytest.raises(UnknownServiceError) as stale:
            await domains.resolve("noSuchService")
        # Within stale_retry of that failure: the same old map, no refresh tried.
        await clock.sleep(5)
        with pytest.raises(UnknownServiceError) as again:
            await domains.resolve("noSuchService")
        # invalidate(): the refresh awaited fails too.
        await domains.invalidate()
        with pytest.raises(UnknownServiceError) as invalidated:
            await domains.resolve("noSuchService")
    for err in (stale.value, again.value, invalidated.value):
        message = str(err)
        assert not message.startswith("account ")
        assert "last good domain map" in message
        assert "the refresh since failed" in message
        assert "503" in message
        assert "'agentVep'" in message
        assert err.service == "noSuchService"
        assert "agentVep" in err.known
    assert "refreshed 61 s ago" in str(stale.value)
    assert "refreshed 66 s ago" in str(again.value)


# -- 2. after invalidate(), a failed Domain API falls back on the fleet's live map ---------------


def _fleet_member(sim: Simulator, store: MemoryStore, **options: float) -> CsdsDomains:
    shared = SharedDomainMap(store, account=ACCOUNT, ttl=600)
    return csds_for(sim, ttl=60, stale_retry=30, shared=shared, **options)


async def test_past_max_stale_an_invalidated_refresh_adopts_a_peers_fresh_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    a = _fleet_member(sim, store)
    b = _fleet_member(sim, store, max_stale=10)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        assert await b.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 1  # B adopted A's write
        await clock.sleep(100)  # B's map expired at 60 s, past max_stale at 70 s
        # A asks the Domain API again, and shares its answer.
        assert await a.refresh()
        assert sim.count("GET", CSDS_PATH) == 2
        domain_api_down(sim)
        await b.invalidate()
        # The Domain API fails; the fleet's map, fetched just now, serves.
        assert await b.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 3
        # Served from then on without a failure, the Domain API asked again in stale_retry.
        await clock.sleep(20)
        assert await b.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 3
        await clock.sleep(15)
        assert await b.resolve("agentVep") == sim.host
        await b.wait_refresh()
        assert sim.count("GET", CSDS_PATH) == 4
        assert await b.resolve("agentVep") == sim.host


async def test_past_max_stale_an_invalidated_refresh_adopts_the_live_map_it_read_before(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The shared entry is the one B adopted (its own ttl shorter than the entry's): without the
    invalidate, B's refresh past max_stale takes it again; with it, it used to raise."""
    store = MemoryStore(clock)
    a = _fleet_member(sim, store)
    b = _fleet_member(sim, store, max_stale=10)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        assert await b.resolve("agentVep") == sim.host
        domain_api_down(sim)
        await clock.sleep(100)
        await b.invalidate()
        assert await b.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 2  # the Domain API was asked, and failed


async def test_an_invalidated_refresh_without_a_shared_map_still_fails_past_max_stale(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    b = _fleet_member(sim, store, max_stale=10)
    async with sim_engine(sim, clock, domains=b):
        assert await b.resolve("agentVep") == sim.host
        await store.delete(state_key(ACCOUNT, "domains"))
        domain_api_down(sim)
        await clock.sleep(100)
        await b.invalidate()
        with pytest.raises(DomainResolutionError):
            await b.resolve("agentVep")


async def test_within_max_stale_an_invalidated_refresh_prefers_a_peers_newer_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Within the bound B served its own older map after the failed refresh, the very map the
    invalidate meant to drop, though a peer had shared a newer answer."""
    store = MemoryStore(clock)
    a = _fleet_member(sim, store)
    b = _fleet_member(sim, store)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        assert await b.resolve("agentVep") == sim.host
        await clock.sleep(10)
        # The Domain API moves agentVep; A shares the new answer.
        moved = "moved.example.test"
        sim.faults.script(
            "GET",
            CSDS_PATH,
            [
                Status(
                    200,
                    body=json.dumps(
                        {
                            "baseURIs": [
                                {"service": "agentVep", "account": ACCOUNT, "baseURI": moved}
                            ]
                        }
                    ),
                )
            ],
        )
        assert (await a.refresh())["agentVep"] == moved
        domain_api_down(sim)
        await b.invalidate()
        assert await b.resolve("agentVep") == moved
