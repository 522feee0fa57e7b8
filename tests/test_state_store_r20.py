"""The state layer: a late reply mirrored over a newer one, an option in a Redis URL's
query. Redis tests use a real redis-server (tests/redis_server.py) on
the real clock; the others run on the virtual clock."""

from __future__ import annotations

import asyncio
import json

import pytest

from le_transport.errors import ConfigurationError, StateStoreError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import FallbackStore, MemoryStore, RedisStore, SharedSession, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock

from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


# -- 1. FallbackStore: two reads answered out of order mirror the older one ----------------


class _GatedPrimary:
    """A shared store (a Redis stand-in): a get's answer can be held back on the wire (the
    server read the key already) until its gate opens; ``down`` fails every call."""

    def __init__(self, clock: VirtualClock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False
        self.gates: list[asyncio.Event] = []
        self.set_gate: asyncio.Event | None = None

    def _check(self) -> None:
        if self.down:
            raise StateStoreError("redis on redis://127.0.0.1:1/0 failed: ConnectionError")

    async def get(self, key: str) -> Entry | None:
        self._check()
        entry = await self.inner.get(key)
        if self.gates:
            await self.gates.pop(0).wait()
        return entry

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        self._check()
        stored = await self.inner.set(key, value, ttl=ttl, only_if=only_if)
        if self.set_gate is not None:
            await self.set_gate.wait()
        return stored

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        self._check()
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        self._check()
        return await self.inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        self._check()
        return await self.inner.budget(key, policy, deposits=deposits, withdraw=withdraw)

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        self._check()
        return await self.inner.reserve(key, bucket)

    async def close(self) -> None:
        pass


def _session_entry(version: str, bearer: str) -> str:
    return json.dumps(
        {
            "value": json.dumps({"bearer": bearer}),
            "version": version,
            "life": 3000.0,
            "login": version,
        }
    )


async def test_reads_answered_out_of_order_do_not_mirror_the_older_session() -> None:
    """Two reads of the fleet's session by one process (two engines, or a refresh and a
    login) are answered out of order: the first read's answer (session T1) is still on the
    wire when the fleet replaces T1 with T2 (another process's login after a 401) and the
    second read answers T2, which is mirrored. Then the first answer lands and is mirrored
    over it: no write of this process intervened, so _writes did not move. During the next
    outage the process reads T1, the session the fleet dropped, though the newest value it
    saw was T2 (FallbackStore: "the fleet's value as this process last knew it")."""
    clock = VirtualClock()
    primary = _GatedPrimary(clock)
    store = FallbackStore(primary, clock=clock)
    key = state_key("1", "session", "bot")
    await primary.inner.set(key, _session_entry("t1", "old"), ttl=3000)
    shared = SharedSession(store, account="1", user="bot", clock=clock)

    gate = asyncio.Event()
    primary.gates.append(gate)
    first = asyncio.ensure_future(shared.current())
    await asyncio.sleep(0)  # the server answered T1; the reply is on its way
    # Another process of the fleet replaces T1 (its 401) with T2.
    await primary.inner.set(key, _session_entry("t2", "new"), ttl=3000)
    second = await shared.current()
    assert second is not None
    assert second.version == "t2"
    gate.set()
    late = await first
    assert late is not None
    assert late.version == "t1"

    primary.down = True  # an outage: the local copy answers
    during = await shared.current()
    assert during is not None
    assert during.version == "t2", (
        f"during the outage the process reads {during.version!r}, the older session a late "
        "reply mirrored over the newer one it had read since"
    )


async def test_a_read_during_a_write_of_another_key_still_replaces_an_older_local_copy() -> None:
    """The same staleness through the other guard of the mirror: a read that begins while a
    write of ANY key is on its way is not mirrored ("any key: counted cheaply"). A process
    whose breaker or domain map write is out while it reads the fleet's new session (T2)
    keeps its older local copy (T1, still within its TTL), and reads T1 during the next
    outage: a session older than the newest it saw, which no write of its own replaced."""
    clock = VirtualClock()
    primary = _GatedPrimary(clock)
    store = FallbackStore(primary, clock=clock)
    key = state_key("1", "session", "bot")
    await primary.inner.set(key, _session_entry("t1", "old"), ttl=3000)
    shared = SharedSession(store, account="1", user="bot", clock=clock)
    assert (await shared.current()).version == "t1"  # type: ignore[union-attr]  # mirrored

    await primary.inner.set(key, _session_entry("t2", "new"), ttl=3000)  # another process
    primary.set_gate = asyncio.Event()
    other = asyncio.ensure_future(store.set(state_key("1", "domains"), "{}", ttl=600))
    await asyncio.sleep(0)  # an unrelated write is on its way
    seen = await shared.current()
    assert seen is not None
    assert seen.version == "t2"
    primary.set_gate.set()
    await other
    primary.set_gate = None

    primary.down = True
    during = await shared.current()
    assert during is not None
    assert during.version == "t2", (
        f"during the outage the process reads {during.version!r}: its read of t2 was not "
        "mirrored because a write of another key was out"
    )


# -- 3. RedisStore: an option in the URL's query that a connection refuses is an outage -----


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("socket_timout=1", "socket_timout"),  # a misspelt socket_timeout
        ("protocol=4", "protocol"),  # a value redis-py's connection refuses
        ("db=0&password=hunter2-secret&retry_on_timout=yes", "retry_on_timout"),
    ],
)
async def test_an_option_in_the_url_a_connection_refuses_is_refused_when_the_store_is_made(
    redis_server: RedisServer, query: str, option: str
) -> None:
    """RedisStore refuses, when it is made, client_options= that a connection would not take,
    and its docstring promises that a store that cannot work is a ConfigurationError when it
    is made, never an outage. The same options given in the URL's query (redis-py passes them
    to each connection alike) were not checked: the store was made, and every operation failed
    against a live Redis with a StateStoreError, which a FallbackStore took for an outage, for
    good. Refused now, naming the option, never a value of the URL."""
    url = f"{redis_server.url}?{query}"
    with pytest.raises(ConfigurationError) as refused:
        RedisStore(url, prefix="t", op_timeout=5.0)
    text = str(refused.value)
    assert repr(option) in text
    assert "URL" in text or "url" in text
    assert "hunter2" not in text
    assert "=4" not in text
    assert "=1" not in text


async def test_the_options_redis_py_reads_from_a_url_query_are_taken(
    redis_server: RedisServer,
) -> None:
    """What redis-py does take in a URL's query (a db, timeouts, a client name) still makes a
    store that works."""
    url = f"{redis_server.url}?db=1&socket_timeout=2&client_name=svc@pod&health_check_interval=0"
    store = RedisStore(url, prefix="t", op_timeout=5.0)
    try:
        key = state_key("1", "domains")
        await store.set(key, "{}", ttl=30)
        entry = await store.get(key)
        assert entry is not None
        assert entry.value == "{}"
    finally:
        await store.close()
