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
4. Only a process's own write was protected from being counted twice: with a provider TTL
   shorter than the shared one, a process re-reading a PEER's entry counted its answer again
   (a service it left out dropped after one provider TTL, where the writer kept it until the
   entry expired), and lost what a login answer had said since. The last shared entry counted
   (written or adopted) is now recognised, and re-reading it keeps the process's map.
5. ``RedisStore.get`` read PTTL 0 (a key in its last millisecond) as 0, "no expiry": the
   shared domain map read then was served for a whole TTL more, and not recognised as the
   entry counted. It reads as a little more than 0, as a MemoryStore tells a live key's life.
6. A writer that kept its own host for a service the answer named with a refused host wrote
   that kept host for the fleet as if the Domain API had named it: a peer whose login answer
   had moved the service took the writer's older host. The service is written as refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

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
    """The host ``domains`` resolves ``service`` to once the refresh an expired map starts has
    landed (the expired map is served meanwhile: stale-while-revalidate), or None if it is
    unknown."""
    with contextlib.suppress(UnknownServiceError, HostileHostError):
        await domains.resolve(service)
    await domains.wait_refresh()
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


@contextlib.asynccontextmanager
async def _two_processes(
    sim: Simulator, clock: VirtualClock, store: Any, ttl: float
) -> AsyncIterator[tuple[CsdsDomains, CsdsDomains]]:
    """Two processes' CsdsDomains (provider ttl 60 s) sharing one map on ``store`` (its
    ``ttl``), each attached to an engine of its own."""

    def shared() -> SharedDomainMap:
        return SharedDomainMap(store, account=ACCOUNT, ttl=ttl, clock=clock)

    a = csds_for(sim, ttl=60, shared=shared())
    b = csds_for(sim, ttl=60, shared=shared())
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        yield a, b


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
    async with _two_processes(sim, clock, MemoryStore(clock), 180) as (a, b):
        assert await a.resolve("agentVep") == sim.host  # A's write ends at +180 s
        await clock.sleep(0.5)
        await b.invalidate()
        script(sim, answer(agentVep="moved.example", idp=sim.host))
        assert await b.resolve("agentVep") == "moved.example"  # B's write ends at +180.5 s
        await clock.sleep(61)
        assert await served(a, "agentVep") == "moved.example"
        assert a.fetches == 1


async def test_a_peers_partial_write_ending_within_a_second_of_its_own_keeps_the_service_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    """d9bfe96 took any shared entry ending within a second of this process's last write for
    that write, and rebuilt its map from the entry and the services it carried: a peer's
    answer written then, leaving agentVep out, dropped agentVep at once, where adopting a
    peer's answer (or fetching it) keeps it once."""
    async with _two_processes(sim, clock, MemoryStore(clock), 180) as (a, b):
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


# -- 4. re-reading a peer's shared write ---------------------------------------------------------


async def test_re_reading_a_peers_partial_write_does_not_count_its_answer_twice(
    sim: Simulator, clock: VirtualClock
) -> None:
    """One Domain API answer left agentVep out (B fetched it, for the fleet). A adopts it at
    +66 s (agentVep kept once) and reads it again at +127 s: the SAME answer, counted a second
    time, dropped agentVep, where A's own fetch of it keeps it until the next answer (and B,
    the writer, keeps it until the entry expires). The next answer leaving it out drops it."""
    async with _two_processes(sim, clock, MemoryStore(clock), 180) as (a, b):
        assert await a.resolve("agentVep") == sim.host  # A's write ends at +180 s
        assert await b.resolve("agentVep") == sim.host  # adopted
        await clock.sleep(5)
        await b.invalidate()
        script(sim, answer(idp=sim.host))
        assert await b.resolve("idp") == sim.host  # B's partial write, ends at +185 s
        await clock.sleep(61)
        assert await served(a, "agentVep") == sim.host  # adopted once: kept once
        await clock.sleep(61)
        assert await served(a, "agentVep") == sim.host, (
            "one answer leaving agentVep out dropped it (read again, a peer's entry was "
            "counted twice)"
        )
        assert await served(b, "agentVep") == sim.host  # the writer keeps it too
        assert a.fetches == 1
        await clock.sleep(60)  # B's entry has expired: A asks the Domain API itself
        script(sim, answer(idp=sim.host))
        assert await served(a, "agentVep") is None  # a second answer leaving it out
        assert a.fetches == 2


async def test_re_reading_a_peers_map_keeps_what_a_login_answer_said_since(
    sim: Simulator, clock: VirtualClock
) -> None:
    """B adopts A's map, then a login answer moves agentVep: the entry it reads again at +61 s
    is older than that answer (nothing newer from the fleet), so B keeps the moved host and the
    service the login answer added, as re-reading its own write does."""
    async with _two_processes(sim, clock, MemoryStore(clock), 180) as (a, b):
        assert await a.resolve("agentVep") == sim.host  # A's write ends at +180 s
        assert await b.resolve("agentVep") == sim.host  # adopted
        await clock.sleep(10)
        assert b.warm(collection(agentVep="moved.example", newService=sim.host))
        await clock.sleep(51)
        assert await b.resolve("agentVep") == "moved.example", (
            "reading again the map it had adopted, B lost the host a login answer named since"
        )
        assert await b.resolve("newService") == sim.host
        assert b.fetches == 0
        # A newer map from the fleet is adopted as ever.
        await a.invalidate()
        script(sim, answer(agentVep="newer.example", idp=sim.host, newService=sim.host))
        assert await a.resolve("agentVep") == "newer.example"
        await clock.sleep(61)
        assert await served(b, "agentVep") == "newer.example"
        assert b.fetches == 0


# -- 5. a Redis key in its last millisecond ------------------------------------------------------


def _pttl_as(store: RedisStore, monkeypatch: pytest.MonkeyPatch, pttl: Any) -> None:
    """Make ``store``'s reads answer their value with the PTTL ``pttl()`` tells, in place of
    Redis' own answer for the key."""
    real = store._get

    async def get(*args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        return [found[0], pttl()] if found else found

    monkeypatch.setattr(store, "_get", get)


async def test_a_redis_key_in_its_last_millisecond_reads_as_alive_not_as_without_expiry(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, clock: VirtualClock
) -> None:
    store = RedisStore(redis_server.url, prefix="r16", op_timeout=OP)
    try:
        await store.set("k", "v", ttl=60)
        answers = [0, -1, 1, 1500, 0]
        _pttl_as(store, monkeypatch, lambda: answers.pop(0))
        last = await store.get("k")
        assert last is not None
        assert 0 < last.ttl <= 0.001, "PTTL 0 (its last millisecond) read as 'no expiry'"
        no_expiry = await store.get("k")
        assert no_expiry is not None
        assert no_expiry.ttl == 0  # PTTL -1: no expiry, as ever
        one = await store.get("k")
        assert one is not None
        assert one.ttl == 0.001
        more = await store.get("k")
        assert more is not None
        assert more.ttl == 1.5
        # A MemoryStore tells a live key's life > 0 to its very end, as Redis' now does.
        memory = MemoryStore(clock)
        await memory.set("k", "v", ttl=1)
        await clock.sleep(0.9999)
        alive = await memory.get("k")
        assert alive is not None
        assert alive.ttl > 0
        # The shared domain map read in its last millisecond lives no longer than that.
        shared = SharedDomainMap(store, account=ACCOUNT, ttl=600)
        await shared.put({"idp": "va.idp.liveperson.net"})
        found = await shared.read()  # PTTL 0
        assert found is not None
        assert 0 < found[2] <= 0.001, f"a map in its last millisecond given {found[2]} s"
    finally:
        await store.close()


async def test_re_reading_its_own_write_in_its_last_millisecond_counts_nothing(
    sim: Simulator,
    clock: VirtualClock,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partial answer left agentVep out (kept once) and was written for the fleet, to end at
    +181 s. A re-reads that write in its last millisecond: read as 'no expiry', it was not
    taken for A's own write (it ended a TTL later), so the answer was counted a second time
    (agentVep dropped), and the map served for a whole provider TTL past the entry's end."""
    store = RedisStore(redis_server.url, prefix="r16", op_timeout=OP)
    ends = [0.0]
    # The PTTL Redis would answer on the test's (virtual) clock: whole milliseconds, cut.
    _pttl_as(store, monkeypatch, lambda: max(0, int((ends[0] - clock.now()) * 1000)))
    try:
        shared = SharedDomainMap(store, account=ACCOUNT, ttl=180, clock=clock)
        a = csds_for(sim, ttl=60, shared=shared)
        async with sim_engine(sim, clock, domains=a):
            start = clock.now()
            ends[0] = start + 180
            assert await a.resolve("agentVep") == sim.host  # fetch 1
            await clock.sleep(1)
            await a.invalidate()
            script(sim, answer(idp=sim.host))
            ends[0] = start + 181
            assert await a.resolve("idp") == sim.host  # fetch 2: agentVep kept once
            await clock.sleep(61)  # its own write, read again: nothing counted
            assert await served(a, "agentVep") == sim.host
            await clock.sleep(181 - 0.0004 - (clock.now() - start))  # its last millisecond
            assert await served(a, "agentVep") == sim.host, (
                "A's own write read in its last millisecond was counted a second time"
            )
            assert a.fetches == 2
            await store.delete(state_key(ACCOUNT, "domains"))  # expired
            await clock.sleep(0.5)
            script(sim, answer(idp=sim.host))
            assert await served(a, "agentVep") is None  # the next answer leaving it out
            assert a.fetches == 3, "the map was served past the shared entry's end"
    finally:
        await store.close()


# -- 6. a writer's kept host for a refused service -----------------------------------------------


async def test_a_writer_shares_a_refused_service_as_refused_even_where_it_kept_its_host(
    sim: Simulator, clock: VirtualClock, fleet_store: MemoryStore | RedisStore
) -> None:
    """The Domain API names agentVep with a refused host. A (cached: the old host) kept it, and
    wrote it for the fleet as if the answer had named it; B, whose login answer had moved
    agentVep to another valid host, adopted A's older one. The fleet's map now says agentVep
    was refused: B keeps its own, as its own fetch of that answer would; A keeps its own too
    (re-reading its write counts nothing); C, with no host, gets HostileHostError."""

    def shared() -> SharedDomainMap:
        return SharedDomainMap(fleet_store, account=ACCOUNT, ttl=600, clock=clock)

    async with _two_processes(sim, clock, fleet_store, 600) as (a, b):
        assert await a.resolve("agentVep") == sim.host
        assert await b.resolve("agentVep") == sim.host  # adopted
        assert b.warm(collection(agentVep="moved.example"))  # B's login answer: moved
        await clock.sleep(5)
        await a.invalidate()
        script(sim, answer(agentVep="evil.example/steal", idp=sim.host))
        assert await a.resolve("idp") == sim.host
        assert await a.resolve("agentVep") == sim.host  # A keeps its own
        found = await shared().read()
        assert found is not None
        assert found[0] == {"idp": sim.host}, "A's kept host was shared as the answer's"
        assert found[1] == frozenset({"agentVep"})
        await clock.sleep(61)
        assert await b.resolve("agentVep") == "moved.example", (
            "B's valid host was replaced by the one A kept"
        )
        assert b.fetches == 0
        assert await a.resolve("agentVep") == sim.host
        assert await a.resolve("idp") == sim.host
        assert a.fetches == 2
        c = csds_for(sim, ttl=60, shared=shared())
        async with sim_engine(sim, clock, domains=c):
            with pytest.raises(HostileHostError):
                await c.resolve("agentVep")
            assert await c.resolve("idp") == sim.host
            assert c.fetches == 0
