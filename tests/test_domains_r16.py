"""Regressions from the review of the domain map's keep-once state (d9bfe96 and before):

1. The fleet's shared map could not say that an answer named a service with a refused host: a
   peer with a valid cached host adopting it kept the service once, then dropped it, where its
   own fetch of the same answer kept its host for ever (and a process with no cached host took
   the service for unknown, where its own fetch raised HostileHostError). Such a service is
   written as a marker, never read as a host.
2. A login answer's map (``warm``) that named a service a refresh had left out (kept once) did
   not reset its keep-once state: the next refresh leaving it out dropped it at once.
3. Re-adopting its own shared write (d9bfe96), a process rebuilt its map from that write and
   the services it carried: a service a login answer had named since was dropped although no
   refresh had left it out. And it took for its own write any entry ending within a second of
   it: a peer's answer written then, leaving a service out, dropped it at once (no keep-once).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from le_transport.chaos import Status
from le_transport.errors import ConfigurationError, HostileHostError, UnknownServiceError
from le_transport.providers import CsdsDomains
from le_transport.state import MemoryStore, RedisStore, SharedDomainMap, state_key
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.redis_server import RedisServer, redis_server
from tests.test_providers import ACCOUNT, csds_for, sim, sim_engine

__all__ = ["redis_server", "sim"]

CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"
OP = 5.0


def answer(**hosts: str) -> str:
    """A Domain API answer naming ``hosts`` (service=host)."""
    return json.dumps(
        {
            "baseURIs": [
                {"service": service, "account": ACCOUNT, "baseURI": host}
                for service, host in hosts.items()
            ]
        }
    )


def collection(**hosts: str) -> object:
    """A login answer's ``csdsCollectionResponse`` naming ``hosts``."""
    parsed: object = json.loads(answer(**hosts))
    return parsed


def script(sim: Simulator, body: str, times: int = 1) -> None:
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=body)] * times)


async def served(domains: CsdsDomains, service: str) -> str | None:
    """The host ``domains`` resolves ``service`` to, or None if it is unknown."""
    try:
        return await domains.resolve(service)
    except UnknownServiceError:
        return None


# -- 1. a refused host in the fleet's shared map -------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def fleet_store(
    request: pytest.FixtureRequest, clock: VirtualClock
) -> AsyncIterator[MemoryStore | RedisStore]:
    """The fleet's store: a MemoryStore on the test's clock, or a real redis-server."""
    if request.param == "memory":
        yield MemoryStore(clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisStore(server.url, prefix="r16", op_timeout=OP)
    try:
        yield store
    finally:
        await store.close()


async def test_a_peer_adopting_an_answer_with_a_refused_host_keeps_its_host_as_its_own_fetch(
    sim: Simulator, clock: VirtualClock, fleet_store: MemoryStore | RedisStore
) -> None:
    """B holds a valid host for agentVep. The Domain API now answers agentVep with a hostile
    host, and A (no cached host) fetches it for the fleet: the map it wrote left agentVep out,
    so B kept it once and dropped it at the second such answer. Fetched by B itself, the same
    answer keeps B's valid host for ever."""

    def shared() -> SharedDomainMap:
        return SharedDomainMap(fleet_store, account=ACCOUNT, ttl=600, clock=clock)

    a = csds_for(sim, ttl=60, shared=shared())
    b = csds_for(sim, ttl=60, shared=shared())
    partly_bad = answer(agentVep="evil.example/steal", idp=sim.host)
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await b.resolve("agentVep") == sim.host  # B fetches the full map, shares it
        await clock.sleep(5)  # (A's writes end 5 s after B's: never taken for B's own)
        for round_ in range(4):
            await a.invalidate()  # A asks the Domain API itself, and shares its answer
            script(sim, partly_bad)
            with pytest.raises(HostileHostError):
                await a.resolve("agentVep")  # A knows no valid host: as its own fetch says
            await clock.sleep(61)  # B's map is stale: it adopts the map A wrote
            fetches = b.fetches
            host = await served(b, "agentVep")
            assert b.fetches == fetches, "B adopted the shared map"
            assert host == sim.host, (
                f"B dropped its valid host after {round_ + 1} shared answers naming agentVep "
                "with a refused host (its own fetch of them keeps it)"
            )
        assert await b.resolve("idp") == sim.host
        # A process with no map adopting it: a refused host, as its own fetch would say, not
        # an unknown service; never served as a host.
        c = csds_for(sim, ttl=60, shared=shared())
        async with sim_engine(sim, clock, domains=c):
            with pytest.raises(HostileHostError):
                await c.resolve("agentVep")
            assert c.fetches == 0
            assert "agentVep" not in c.hosts
            assert await c.resolve("idp") == sim.host


async def test_a_marker_round_trips_the_redis_store_and_is_never_read_as_a_host(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, prefix="r16", op_timeout=OP)
    try:
        shared = SharedDomainMap(store, account=ACCOUNT, ttl=600)
        await shared.put({"idp": "va.idp.liveperson.net"}, refused=["agentVep"])
        found = await shared.read()
        assert found is not None
        hosts, refused, life = found
        assert hosts == {"idp": "va.idp.liveperson.net"}
        assert refused == frozenset({"agentVep"})
        assert 590 < life <= 600
        # The hosts only, for a reader of hosts.
        assert await shared.get() == {"idp": "va.idp.liveperson.net"}
        with_life = await shared.get_with_life()
        assert with_life is not None
        assert with_life[0] == {"idp": "va.idp.liveperson.net"}
        # As the store keeps it: JSON, the refused service's host null.
        raw = await store.get(state_key(ACCOUNT, "domains"))
        assert raw is not None
        assert json.loads(raw.value) == {"agentVep": None, "idp": "va.idp.liveperson.net"}
    finally:
        await store.close()


async def test_a_service_both_named_with_a_host_and_refused_is_written_with_its_host(
    clock: VirtualClock,
) -> None:
    shared = SharedDomainMap(MemoryStore(clock), account=ACCOUNT)
    await shared.put({"idp": "va.idp.liveperson.net"}, refused={"idp", "agentVep"})
    assert await shared.read() == (
        {"idp": "va.idp.liveperson.net"},
        frozenset({"agentVep"}),
        600.0,
    )
    with pytest.raises(ConfigurationError, match="not a str"):
        await shared.put({"idp": "va.idp.liveperson.net"}, refused="agentVep")


# -- 2. a login answer confirming a service kept once --------------------------------------------


async def test_a_login_answer_naming_a_service_kept_once_resets_its_keep_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=60)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        script(sim, answer(idp=sim.host), times=3)
        await domains.refresh()  # leaves agentVep out: kept once
        assert await served(domains, "agentVep") == sim.host
        assert domains.warm(collection(agentVep=sim.host))  # the login answer names it
        await domains.refresh()  # leaves it out: the first time since it was named
        assert await served(domains, "agentVep") == sim.host, (
            "a service a login answer named was dropped by the first refresh leaving it out"
        )
        await domains.refresh()  # twice in a row: dropped
        assert await served(domains, "agentVep") is None


async def test_a_login_answer_naming_a_service_kept_once_with_a_refused_host_resets_it_too(
    sim: Simulator, clock: VirtualClock
) -> None:
    """As a refresh naming a service with a refused host keeps the cached one (the service is
    there), so does a login answer: it never replaces the cached host, and it resets the
    service's keep-once as a refresh naming it does."""
    domains = csds_for(sim, ttl=60)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        script(sim, answer(idp=sim.host), times=2)
        await domains.refresh()  # leaves agentVep out: kept once
        assert domains.warm(collection(agentVep="evil.example/steal", idp=sim.host))
        assert await served(domains, "agentVep") == sim.host
        await domains.refresh()
        assert await served(domains, "agentVep") == sim.host


# -- 3. re-adopting its own shared write -----------------------------------------------------


async def test_re_adopting_its_own_write_keeps_a_service_a_login_answer_named_since(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Provider ttl 60, shared ttl 180: at +60 s the process re-adopts its own write, which
    d9bfe96 took as the map plus the services it carried. A service a login answer named in
    between was dropped, although no refresh had left it out (without a shared map, the
    refresh at +60 s keeps it once)."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock))
    async with sim_engine(sim, clock, domains=a):
        assert await a.resolve("agentVep") == sim.host  # fetch 1, written for the fleet
        await clock.sleep(10)
        assert a.warm(collection(agentVep=sim.host, newService=sim.host))
        await clock.sleep(51)
        assert await served(a, "newService") == sim.host, (
            "re-adopting its own write dropped a service a login answer had named since"
        )
        assert a.fetches == 1


async def test_a_service_confirmed_by_a_login_answer_survives_re_adopting_its_own_write(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Provider ttl 60, shared ttl 180. A partial answer leaves agentVep out (kept once); a
    login answer names it; re-adopting its own write does not count anything; the next answer
    from the Domain API leaving it out keeps it once more, the one after drops it."""
    store = MemoryStore(clock)
    a = csds_for(sim, ttl=60, shared=SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock))
    async with sim_engine(sim, clock, domains=a):
        assert await a.resolve("agentVep") == sim.host
        script(sim, answer(idp=sim.host), times=3)
        await clock.sleep(181)
        assert await served(a, "agentVep") == sim.host  # fetch 2 leaves it out: kept once
        assert a.warm(collection(agentVep=sim.host))
        for _ in range(2):  # its own write re-adopted, twice: nothing counted
            await clock.sleep(61)
            assert await served(a, "agentVep") == sim.host
        assert a.fetches == 2
        await clock.sleep(61)  # fetch 3 leaves it out: the first time since it was named
        assert await served(a, "agentVep") == sim.host
        assert a.fetches == 3
        await clock.sleep(181)  # fetch 4 leaves it out again: dropped
        assert await served(a, "agentVep") is None
        assert a.fetches == 4


async def test_a_peers_write_ending_within_a_second_of_its_own_is_adopted(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A shared entry that ends when this process's last write ends is taken for that write
    only if it holds what was written: a peer's answer written half a second later, naming
    another host, is adopted."""
    store = MemoryStore(clock)

    def shared() -> SharedDomainMap:
        return SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock)

    a = csds_for(sim, ttl=60, shared=shared())
    b = csds_for(sim, ttl=60, shared=shared())
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host  # A's write ends at +180 s
        await clock.sleep(0.5)
        await b.invalidate()
        script(sim, answer(agentVep="moved.example", idp=sim.host))
        assert await b.resolve("agentVep") == "moved.example"  # B's write ends at +180.5 s
        await clock.sleep(61)
        assert await a.resolve("agentVep") == "moved.example"
        assert a.fetches == 1


async def test_a_peers_partial_write_ending_within_a_second_of_its_own_keeps_the_service_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    """d9bfe96 took any shared entry ending within a second of this process's last write for
    that write, and rebuilt its map from the entry and the services it carried: a peer's
    answer written then, leaving agentVep out, dropped agentVep at once, where adopting a
    peer's answer (or fetching it) keeps it once."""
    store = MemoryStore(clock)

    def shared() -> SharedDomainMap:
        return SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock)

    a = csds_for(sim, ttl=60, shared=shared())
    b = csds_for(sim, ttl=60, shared=shared())
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host  # A's write ends at +180 s
        await clock.sleep(0.5)
        await b.invalidate()
        script(sim, answer(idp=sim.host))
        assert await b.resolve("idp") == sim.host  # B's write ends at +180.5 s
        await clock.sleep(61)
        assert await served(a, "agentVep") == sim.host, (
            "a peer's answer leaving agentVep out once dropped it (taken for A's own write)"
        )
        assert await a.resolve("idp") == sim.host
        assert a.fetches == 1
