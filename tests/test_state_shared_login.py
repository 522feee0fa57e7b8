"""The Login Service provider sharing one session through a store, against the simulator.

Several engines stand for the processes of a fleet (one shared store between them); the fleet
test does the same with real processes and a real Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import attrs
import pytest

from le_transport import Engine
from le_transport.providers import UserLogin
from le_transport.state import MemoryStore, SharedDomainMap, SharedSession, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, make_sim

USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with make_sim(clock) as s:
        yield s


def _fleet_member(sim: Simulator, clock: VirtualClock, store: MemoryStore) -> Engine:
    domains = csds_for(sim)
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=domains,
        logout_on_close=False,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
    )
    return Engine(domains, scheme="http", clock=clock, auth=auth)


async def test_ten_engines_sharing_a_store_log_in_once_and_refresh_once_per_interval(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(_fleet_member(sim, clock, store)) for _ in range(10)
        ]
        answers = await asyncio.gather(
            *(e.request("GET", "accountConfigReadOnly", USERS) for e in engines)
        )
        assert all(a.status == 200 for a in answers)
        assert sim.tokens.logins == 1
        await clock.sleep(301.0)
        assert sim.tokens.refreshes == 1, "one refresh for the fleet, not one per engine"
        await clock.sleep(300.0)
        assert sim.tokens.refreshes == 2
        answers = await asyncio.gather(
            *(e.request("GET", "accountConfigReadOnly", USERS) for e in engines)
        )
        assert all(a.status == 200 for a in answers)
        assert sim.tokens.logins == 1


async def test_a_rejected_shared_session_is_replaced_by_one_login(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(_fleet_member(sim, clock, store)) for _ in range(5)
        ]
        await asyncio.gather(*(e.request("GET", "accountConfigReadOnly", USERS) for e in engines))
        await sim.expire_tokens()
        answers = await asyncio.gather(
            *(e.request("GET", "accountConfigReadOnly", USERS) for e in engines)
        )
        assert all(a.status == 200 for a in answers)
        assert sim.tokens.logins == 2


async def test_a_shared_refresh_refused_by_the_server_becomes_one_fresh_login(
    sim: Simulator, clock: VirtualClock
) -> None:
    # The server forgets the session: the fleet's one refresh answers 401, and the process
    # that made it logs in anew for everyone, instead of each process finding out on a call.
    store = MemoryStore(clock)
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(_fleet_member(sim, clock, store)) for _ in range(3)
        ]
        await asyncio.gather(*(e.request("GET", "accountConfigReadOnly", USERS) for e in engines))
        sim.tokens.revoke()
        await clock.sleep(301.0)
        assert sim.tokens.refreshes == 0
        assert sim.tokens.logins == 2, "one login after the refused refresh, for the fleet"
        answers = await asyncio.gather(
            *(e.request("GET", "accountConfigReadOnly", USERS) for e in engines)
        )
        assert all(a.status == 200 for a in answers)
        assert sim.tokens.logins == 2


#: A stored entry whose envelope is sound but whose session is not (no bearer): written by a
#: damaged or foreign process. Its one field looks like a credential, to show it is never logged.
_DAMAGED = json.dumps({"csrf": "damaged-csrf-value-0f3a"})


async def _store_damaged(store: MemoryStore, version: str) -> None:
    envelope = {"value": _DAMAGED, "version": version, "life": 3000.0}
    await store.set(state_key(ACCOUNT, "session", USER), json.dumps(envelope), ttl=3000.0)


async def test_an_unreadable_shared_session_is_replaced_by_one_login(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Before, every call of every process failed with "the shared session in the store is
    # unreadable" until the entry's TTL (here 50 min) ran out.
    secret_values.add("damaged-csrf-value-0f3a")
    store = MemoryStore(clock)
    await _store_damaged(store, "v-damaged")
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(_fleet_member(sim, clock, store)) for _ in range(3)
        ]
        with caplog.at_level(logging.WARNING, logger="le_transport"):
            answers = await asyncio.gather(
                *(e.request("GET", "accountConfigReadOnly", USERS) for e in engines)
            )
        assert all(a.status == 200 for a in answers)
        assert sim.tokens.logins == 1, "one login replaces the damaged entry, for the fleet"
        assert any("unreadable shared session" in r.getMessage() for r in caplog.records)
        entry = await store.get(state_key(ACCOUNT, "session", USER))
        assert entry is not None
        assert "v-damaged" not in entry.value


async def test_a_damaged_shared_session_never_stops_the_refresh(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    secret_values.add("damaged-csrf-value-0f3a")
    store = MemoryStore(clock)
    async with _fleet_member(sim, clock, store) as engine:
        await engine.request("GET", "accountConfigReadOnly", USERS)
        # Stored just before the refresh is due: fresh enough that the refresh would take it
        # instead of refreshing, so it is skipped once and the next tick refreshes.
        await clock.sleep(299.0)
        await _store_damaged(store, "v-fresh-damaged")
        await clock.sleep(2.0)
        await clock.sleep(300.0)
        assert sim.tokens.refreshes == 1
        # Stored long before the refresh: the refresh starts from our own session instead.
        await _store_damaged(store, "v-old-damaged")
        await clock.sleep(300.0)
        assert sim.tokens.refreshes == 2
        assert sim.tokens.logins == 1
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        assert sim.tokens.logins == 1


async def test_the_shared_session_lives_no_longer_than_the_token(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    async with _fleet_member(sim, clock, store) as engine:
        await engine.request("GET", "accountConfigReadOnly", USERS)
        entry = await store.get(state_key(ACCOUNT, "session", USER))
        assert entry is not None
        assert entry.ttl <= sim.config.session_ttl


async def test_engines_sharing_a_domain_map_ask_the_domain_api_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    store = MemoryStore(clock)
    providers = [csds_for(sim, shared=SharedDomainMap(store, account=ACCOUNT)) for _ in range(5)]
    async with AsyncExitStack() as stack:
        for domains in providers:
            engine = await stack.enter_async_context(Engine(domains, scheme="http", clock=clock))
            assert await engine.domains.resolve("agentVep") == sim.host
        assert sum(p.fetches for p in providers) == 1
        await providers[0].invalidate()
        await providers[0].resolve("agentVep")
        assert sum(p.fetches for p in providers) == 2, "after invalidate the Domain API is asked"


async def test_a_fleet_sharing_a_domain_map_asks_once_per_ttl_and_serves_no_older_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    # The shared map's TTL is CsdsDomains' (600 s), and a process keeps a map it read back no
    # longer than the entry has left: it was kept an hour (3600 s) and each process then served
    # it another 600 s of its own, so a host change reached the fleet up to 70 minutes late.
    store = MemoryStore(clock)
    providers = [csds_for(sim, shared=SharedDomainMap(store, account=ACCOUNT)) for _ in range(3)]
    async with AsyncExitStack() as stack:
        for domains in providers:
            await stack.enter_async_context(Engine(domains, scheme="http", clock=clock))
        # Staggered: the last process reads the shared map 400 s into its life.
        for step in range(30):  # 3,000 virtual seconds, one resolve a 100 s per process
            for domains in providers:
                assert await domains.resolve("agentVep") == sim.host
                # An expired map is served and refreshed in the background: that refresh
                # lands (and is shared) before the next process resolves.
                await domains.wait_refresh()
            await clock.sleep(100)
            del step
        # One fetch per 600 s for the whole fleet (3,000 s: 5, not 1 for an hour's entry, and
        # never one per process).
        assert sum(p.fetches for p in providers) == 5
        # A host change at the Domain API reaches every process within the shared TTL.
        moved = "moved.example.test:8443"
        sim.config = attrs.evolve(sim.config, public_address=moved)
        await clock.sleep(600)
        for domains in providers:
            await domains.resolve("agentVep")  # expired: served, refreshed in the background
            await domains.wait_refresh()
            assert await domains.resolve("agentVep") == moved


async def test_a_redis_store_that_is_down_never_fails_a_login() -> None:
    from le_transport.clock import RealClock
    from le_transport.state import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", op_timeout=0.5)
    session = SharedSession(store, account="1", user="u", clock=RealClock())

    async def do_login() -> tuple[str, float | None]:
        return "token", 600.0

    token = await session.login(do_login)
    assert token.value == "token"
    await store.close()


class _PersistedKeyStore(MemoryStore):
    """A MemoryStore whose entries read as a Redis key without an expiry does (ttl 0.0)."""

    gets = 0

    async def get(self, key: str) -> Entry | None:
        self.gets += 1
        entry = await super().get(key)
        return None if entry is None else Entry(entry.value, 0.0)


async def test_a_shared_map_without_an_expiry_is_served_for_the_providers_ttl(
    sim: Simulator, clock: VirtualClock
) -> None:
    # Redis answers a key set without an expiry with a TTL of 0: taken as "0 s left", the map
    # was read back from the store on every resolve (every request and reconnect).
    store = _PersistedKeyStore(clock)
    writer = csds_for(sim, shared=SharedDomainMap(store, account=ACCOUNT))
    reader = csds_for(sim, shared=SharedDomainMap(store, account=ACCOUNT))
    async with (
        Engine(writer, scheme="http", clock=clock),
        Engine(reader, scheme="http", clock=clock),
    ):
        await writer.resolve("agentVep")
        store.gets = 0
        for _ in range(100):
            assert await reader.resolve("agentVep") == sim.host
        assert store.gets == 1
