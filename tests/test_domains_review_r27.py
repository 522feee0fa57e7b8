"""A Domain API refresh's fallback and the fleet's map it adopts after a failed fetch.

1. A call's ``fallback`` may be a callable asked when the call gives up: one that raised (or
   answered no str) turned the give-up into its own exception, escaping the retry middleware
   in place of the call's typed error, with no give-up event; it now counts as not handled.
2. After ``invalidate()``, a Domain API fetch that failed then adopted the fleet's shared map
   built from the map cached when the fetch started: a login answer taken while the fetch ran
   (its hosts merged into the cached map) was lost.
3. With no map cached (a first ``refresh()``, which invalidates), a failed Domain API fetch
   raised though the fleet's store held a live map, and every resolve after it asked the
   Domain API first, and raised, until the Domain API answered.
4. The fleet's store read after an invalidated refresh's failed fetch raised (a closed
   store): the resolve failed with the store's error where the last good map was served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import pytest
from yarl import URL

from le_transport import EventHooks, RetriesExhausted, RetryPolicy
from le_transport.chaos import Hang
from le_transport.events import GiveUpEvent
from le_transport.middleware import RetryMiddleware
from le_transport.providers import ProviderHttp
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.test_domains_r27 import CSDS_PATH, _fleet_member
from tests.test_providers import ACCOUNT, sim, sim_engine
from tests.test_providers_r26 import domain_api_down
from tests.test_retry_middleware import Script

__all__ = ["sim"]

_SECRET = "s3cret-in-a-fallback-error"

# -- 1. a callable fallback that fails never replaces the call's own give-up --------------------


def _raises() -> str | None:
    raise RuntimeError(_SECRET)


def _not_words() -> str | None:
    return 42  # type: ignore[return-value]


@pytest.mark.parametrize("fallback", [_raises, _not_words], ids=["raises", "not-a-str"])
async def test_a_fallback_that_fails_when_asked_leaves_the_give_up_as_any_calls(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    fallback: Callable[[], str | None],
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    host = await serve(Script(503).app())
    mw = RetryMiddleware(clock=clock, hooks=EventHooks(on_giveup=[giveups.append]))
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(session=lambda: session, retry_middleware=mw, clock=clock)
        with pytest.raises(RetriesExhausted):
            await http.request(
                "GET",
                URL(f"http://{host}/x"),
                service="sentinel",
                retry=RetryPolicy(pauses=()),
                fallback=fallback,
            )
    assert [g.handled_by_caller for g in giveups] == [False]
    [final] = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert final.levelno == logging.ERROR
    assert "handled" not in final.getMessage()
    assert all(_SECRET not in r.getMessage() for r in caplog.records)


# -- 2. the fleet's map adopted after a failed fetch keeps what a login answer said meanwhile ---


@pytest.mark.parametrize("peer_wrote", [False, True], ids=["own-entry", "peer-entry"])
async def test_a_login_answer_taken_during_a_failed_fetch_survives_the_fleet_map_adopted(
    sim: Simulator, clock: VirtualClock, peer_wrote: bool
) -> None:
    """B's map is past max_stale; invalidated, its Domain API fetch hangs to its attempt
    timeout, and a login answer naming a new service arrives meanwhile; the fetch fails and
    the fleet's live map (the entry B adopted, or a peer's newer write) is adopted: the login
    answer's service is still there."""
    store = MemoryStore(clock)
    a = _fleet_member(sim, store)
    b = _fleet_member(sim, store, max_stale=10)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        assert await b.resolve("agentVep") == sim.host
        await clock.sleep(100)
        if peer_wrote:
            assert await a.refresh()
        sim.faults.script("GET", CSDS_PATH, [Hang()])
        await b.invalidate()
        waiter = asyncio.ensure_future(b.resolve("agentVep"))
        await clock.sleep(5)
        assert not waiter.done()
        assert b.warm(
            {
                "baseURIs": [
                    {"service": "newService", "account": ACCOUNT, "baseURI": "new.example.test"}
                ]
            }
        )
        domain_api_down(sim)
        assert await waiter == sim.host
        assert await b.resolve("newService") == "new.example.test"
        assert await b.resolve("agentVep") == sim.host


# -- 3. with no map cached yet, an invalidated refresh that fails adopts the fleet's live map ---


async def test_a_first_refresh_that_fails_adopts_the_fleets_live_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    """B's first call is refresh() (an invalidate, then a fetch) while the Domain API is down,
    with a peer's live map in the store: it raised, and, asking the Domain API first from then
    on, every resolve raised too until the Domain API answered, where a resolve without the
    refresh adopted the fleet's map at once."""
    store = MemoryStore(clock)
    a = _fleet_member(sim, store)
    b = _fleet_member(sim, store)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        domain_api_down(sim)
        assert (await b.refresh())["agentVep"] == sim.host
        assert b.fetches == 1  # the Domain API was asked, and failed
        assert await b.resolve("agentVep") == sim.host
        assert b.fetches == 1
        # Served as the fleet's map; the Domain API asked again within stale_retry (30 s).
        sim.faults.clear()
        await clock.sleep(31)
        assert await b.resolve("agentVep") == sim.host
        await b.wait_refresh()
        assert b.fetches == 2


# -- 4. a store that fails when read after the failed fetch leaves the stale map served ---------


async def test_a_closed_store_read_after_a_failed_invalidated_fetch_serves_the_stale_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Within max_stale an invalidated refresh whose Domain API fetch fails served the last
    good map; reading the fleet's store then, one that raised (closed) failed the resolve
    with the store's error instead."""
    store = MemoryStore(clock)
    b = _fleet_member(sim, store)
    async with sim_engine(sim, clock, domains=b):
        assert await b.resolve("agentVep") == sim.host
        await store.close()
        domain_api_down(sim)
        await b.invalidate()
        assert await b.resolve("agentVep") == sim.host
