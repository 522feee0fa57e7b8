"""Regressions from the review of the domain and auth providers: a Domain API refresh keeps
the valid hosts it would lose (refused, or left out once); a SharedDomainMap or CsdsDomains of
another account is refused."""

from __future__ import annotations

import json

import pytest

from le_transport.chaos import Status
from le_transport.errors import ConfigurationError, UnknownServiceError
from le_transport.providers import CsdsDomains
from le_transport.state import MemoryStore, SharedDomainMap
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import ACCOUNT, csds_for, sim, sim_engine

__all__ = ["sim"]

CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"


async def test_a_refresh_with_one_hostile_entry_does_not_replace_a_cached_valid_host(
    sim: Simulator, clock: VirtualClock
) -> None:
    """warm() never lets a hostile entry replace a cached valid host; a refresh does, and the
    service then fails with HostileHostError for a whole TTL although a good host is known."""
    domains = csds_for(sim, ttl=60)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        partly_bad = {
            "baseURIs": [
                {"service": "agentVep", "account": ACCOUNT, "baseURI": "evil.example/steal"},
                {"service": "accountConfigReadOnly", "account": ACCOUNT, "baseURI": sim.host},
            ]
        }
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partly_bad))])
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        # The last good host of agentVep should still be served (as warm() keeps it).
        assert await domains.resolve("agentVep") == sim.host


def test_a_shared_map_of_another_account_is_refused() -> None:
    shared = SharedDomainMap(MemoryStore(), account="99999999")
    try:
        CsdsDomains(ACCOUNT, shared=shared)
    except ConfigurationError:
        return
    raise AssertionError("CsdsDomains accepted a SharedDomainMap of another account")


async def test_a_shared_map_of_another_account_is_never_served_nor_written(
    sim: Simulator,
) -> None:
    """Taken, it served the other account's hosts to this one (its credentials went there)
    and wrote this account's map under the other's key, for that fleet to read."""
    store = MemoryStore()
    other = SharedDomainMap(store, account="99999999")
    await other.put({"agentVep": "other-zone.example"})
    with pytest.raises(ConfigurationError, match="SharedDomainMap of account '99999999'"):
        csds_for(sim, shared=SharedDomainMap(store, account="99999999"))
    assert await other.get() == {"agentVep": "other-zone.example"}


def test_a_provider_of_one_account_refuses_the_domain_map_of_another() -> None:
    from le_transport.providers import ConsumerJwt, SentinelClientCredentials, UserLogin

    other = CsdsDomains("99999999")
    made = []
    for build in (
        lambda: UserLogin(ACCOUNT, "user", "pw", domains=other),
        lambda: SentinelClientCredentials(ACCOUNT, "id", "secret", domains=other),
        lambda: ConsumerJwt(ACCOUNT, domains=other),
    ):
        try:
            build()
        except ConfigurationError:
            continue
        made.append(build)
    assert not made, f"{len(made)} providers accepted another account's CsdsDomains"


async def test_a_refresh_answering_part_of_the_map_keeps_the_services_it_left_out(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))])
        assert await domains.resolve("idp") == sim.host
        assert await domains.resolve("agentVep") == sim.host


async def test_a_service_left_out_of_two_refreshes_in_a_row_is_dropped(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Kept once, a service a refresh left out is not kept for ever (one LiveEngage retired
    would linger)."""
    from le_transport.errors import UnknownServiceError

    domains = csds_for(sim, ttl=60)
    partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))] * 2)
        await clock.sleep(61)
        # Each expired map is refreshed in the background: waited for here.
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        assert await domains.resolve("agentVep") == sim.host  # kept once
        await clock.sleep(61)
        assert await domains.resolve("agentVep") == sim.host  # the expired map, served
        await domains.wait_refresh()
        try:
            await domains.resolve("agentVep")
        except UnknownServiceError:
            return
        raise AssertionError("a service left out of two refreshes in a row was still served")


async def test_a_fleet_peer_keeps_the_host_a_partial_refresh_kept(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The fleet's copy was written from the raw answer: the process that refreshed kept the
    host, the peers adopting the shared map lost it for a whole TTL."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    b = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host  # A fetches, writes the shared map
        await clock.sleep(1)
        assert await b.resolve("agentVep") == sim.host  # B adopts it
        await clock.sleep(60)  # A's map is stale; B's (adopted 1 s later) not yet
        partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))])
        assert await a.resolve("agentVep") == sim.host  # kept by A
        await clock.sleep(1)  # B's map is stale now: it adopts the shared map A just wrote
        assert await b.resolve("agentVep") == sim.host


async def test_an_engine_refuses_auth_of_another_account_than_its_domains(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The engine's calls carried one account's credentials to another account's hosts."""
    from le_transport import Engine
    from le_transport.providers import UserLogin

    other = CsdsDomains("99999999", csds_host=sim.host, scheme="http")
    auth = UserLogin(ACCOUNT, "user", "pw", domains=csds_for(sim))
    with pytest.raises(ConfigurationError, match="CsdsDomains of account '99999999'"):
        Engine(other, scheme="http", clock=clock, auth=auth)


async def test_a_retired_service_is_dropped_in_a_fleet_too(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A service LiveEngage retired is left out of every refresh from now on. One process
    drops it at its second refresh; two processes taking turns to refresh (as a fleet does)
    keep it for ever: the shared map is written with the carried host, a peer adopting it
    sees it as a plain entry (its own _carried reset), and at its own refresh carries it
    again and writes it back."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    b = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host
        await clock.sleep(1)
        assert await b.resolve("agentVep") == sim.host
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))] * 50)
        fetches = 0
        served_after = []
        for turn in range(10):
            first, second = (a, b) if turn % 2 == 0 else (b, a)
            await clock.sleep(60)
            before = a.fetches + b.fetches
            try:
                # Each expired map is refreshed in the background: waited for here.
                await first.resolve("idp")  # refreshes from the Domain API (shared expired)
                await first.wait_refresh()
                await second.resolve("idp")  # adopts the shared map
                await second.wait_refresh()
            finally:
                fetches += a.fetches + b.fetches - before
            for p in (a, b):
                try:
                    await p.resolve("agentVep")
                    served_after.append(turn)
                except UnknownServiceError:
                    pass
        assert fetches >= 4
        assert not any(t >= 2 for t in served_after), (
            f"a service left out of {fetches} refreshes in a row was still served "
            f"(turns {sorted(set(served_after))})"
        )


def test_an_engine_refuses_a_consumer_or_sentinel_provider_of_another_account() -> None:
    """5b9896f refuses UserLogin/AppKeyAuth of another account than the engine's CsdsDomains
    (their public ``account``); ConsumerJwt and SentinelClientCredentials have none, so the
    same mistake is taken: the JWT/bearer of account A is sent to account B's hosts."""

    from le_transport import Engine
    from le_transport.errors import ConfigurationError
    from le_transport.providers import ConsumerJwt, CsdsDomains, SentinelClientCredentials

    mine = CsdsDomains(ACCOUNT)
    other = CsdsDomains("99999999")
    accepted = []
    for auth in (
        ConsumerJwt(ACCOUNT, domains=mine),
        SentinelClientCredentials(ACCOUNT, "id", "secret", domains=mine),
    ):
        try:
            Engine(other, auth=auth)
        except ConfigurationError:
            continue
        accepted.append(type(auth).__name__)
    assert not accepted, f"Engine accepted {accepted} of another account than its domains"


async def test_a_retired_service_is_dropped_by_one_process_with_a_longer_shared_ttl(
    sim: Simulator, clock: VirtualClock
) -> None:
    """One process, provider ttl 60, shared ttl 180: it re-adopts its own shared map between
    fetches, which resets its _carried, so every fetch carries the retired service again."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock))
    partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
    async with sim_engine(sim, clock, domains=a):
        assert await a.resolve("agentVep") == sim.host
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))] * 50)
        await clock.sleep(181)
        await a.resolve("idp")  # fetch 2: leaves agentVep out (carried once)
        for _ in range(12):  # 12 minutes: fetches 3..6 all leave it out too
            await clock.sleep(61)
            await a.resolve("idp")
        assert a.fetches >= 4
        try:
            await a.resolve("agentVep")
        except UnknownServiceError:
            return
        raise AssertionError(f"still served after {a.fetches - 1} refreshes leaving it out")


async def test_one_partial_answer_is_not_counted_twice_when_the_shared_map_outlives_the_ttl(
    sim: Simulator, clock: VirtualClock
) -> None:
    """ONE partial answer (agentVep left out once; the next Domain API answer is complete).
    Keep-once promises agentVep its host until the next refresh *from LiveEngage* says
    otherwise. With shared ttl 180 > provider ttl 60, the process re-adopts its own shared
    copy of that same partial answer at +60 s; _keep_known takes it for a second refresh
    leaving agentVep out and drops it: every call to it fails for ~120 s, although
    LiveEngage left it out only once (before 334cfad the shared map carried it)."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock))
    partial = {"baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": sim.host}]}
    async with sim_engine(sim, clock, domains=a):
        assert await a.resolve("agentVep") == sim.host
        await clock.sleep(181)
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(partial))])  # once
        assert await a.resolve("agentVep") == sim.host
        await a.wait_refresh()  # the expired map is refreshed in the background
        assert await a.resolve("agentVep") == sim.host  # fetch 2 (partial): kept once
        assert a.fetches == 2
        await clock.sleep(61)
        # No new answer from the Domain API (the shared copy of fetch 2 is adopted) ...
        assert await a.resolve("agentVep") == sim.host  # the expired map, served
        await a.wait_refresh()
        try:
            host = await a.resolve("agentVep")
        except UnknownServiceError as exc:
            raise AssertionError(
                f"agentVep dropped after {a.fetches} fetches, only one of which left it out "
                "(the same partial answer, re-read from the shared map, counted twice)"
            ) from exc
        assert host == sim.host
