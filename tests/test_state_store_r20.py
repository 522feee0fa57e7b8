"""The state layer: a late reply mirrored over a newer one, a script replayed after a lost reply,
an option in a Redis URL's query. Redis tests use a real redis-server (tests/redis_server.py) on
the real clock; the others run on the virtual clock."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from le_transport.errors import ConfigurationError, StateStoreError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import FallbackStore, MemoryStore, RedisStore, SharedSession, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock

from .redis_server import RedisServer, close_client, redis_server

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


# -- 2. RedisStore: a compare-and-set / compare-and-delete replayed by the client's Retry ---


class _ReplyCutter:
    """A loopback TCP proxy to Redis that, once armed, passes the next EVALSHA to the server
    and then resets the client's connection instead of passing the server's reply back (the
    server ran the script; its reply was lost)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.cuts = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        cut = False

        async def up() -> None:
            nonlocal cut
            try:
                while data := await cr.read(65536):
                    if self.armed and b"EVALSHA" in data.upper():
                        self.armed = False
                        cut = True
                    uw.write(data)
                    await uw.drain()
            except OSError:
                pass
            finally:
                uw.close()

        async def down() -> None:
            try:
                while data := await ur.read(65536):
                    if cut:
                        self.cuts += 1
                        cw.transport.abort()
                        return
                    cw.write(data)
                    await cw.drain()
            except OSError:
                pass
            finally:
                cw.close()

        await asyncio.gather(up(), down())

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("op", ["set", "delete", "budget", "withdraw", "refund", "reserve"])
async def test_a_conditional_write_replayed_after_a_lost_reply_reports_what_it_did(
    redis_server: RedisServer, op: str
) -> None:
    """RedisStore.add was made idempotent because a client's Retry (on by default for a
    redis.asyncio.Redis the caller makes, which RedisStore(client=...) documents) sends a
    command again after a connection reset that lost its reply. set(only_if=...) and
    delete(only_if=...) were not: the replayed script finds the key no longer holding
    ``only_if`` (the first run changed it) and answers 0, so a compare-and-set that stored
    answers False ("another process wrote in between"), and a compare-and-delete that deleted
    answers False. The counters counted twice: deposits and a withdrawal, a refund given back
    twice, a token reserved twice."""
    cutter = _ReplyCutter(redis_server.port)
    port = await cutter.start()
    # Retries asked for (the default since redis-py 6; before, retry_on_error too).
    client = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        retry=Retry(NoBackoff(), 3),
        retry_on_error=[RedisConnectionError],
    )
    store = RedisStore(client=client, prefix="t", op_timeout=5.0)
    key = state_key("1", "breaker", "svc", "host")
    try:
        # Load the scripts first (a NOSCRIPT reply would be cut instead of the real one).
        assert await store.set(key, "x", ttl=60, only_if="absent") is False
        assert await store.delete(key, only_if="absent") is False
        policy = RetryBudget()
        assert await store.budget(key, policy) is False
        assert await store.refund(key, policy, age=0) is False
        bucket = TokenBucket(rate=1.0, burst=5.0)
        assert await store.reserve(state_key("1", "pace", "other"), bucket) == 0
        await store.set(key, "old", ttl=60)
        if op == "refund":
            assert await store.budget(key, policy, deposits=10, withdraw=True) is True
        cutter.armed = True
        if op == "set":
            did = await store.set(key, "new", ttl=60, only_if="old")
            entry = await store.get(key)
            assert cutter.cuts == 1
            assert entry is not None
            assert entry.value == "new"  # it stored
            assert did is True, "set(only_if=...) stored 'new' and answered False"
        elif op == "budget":
            # Five first attempts counted once, replayed: counted twice (a looser budget).
            await store.budget(key, policy, deposits=5)
            assert cutter.cuts == 1
            counted = await _counted(client, store._budget_key(key, policy), "q:")
            assert counted == 5, f"5 first attempts deposited once were counted {counted}"
        elif op == "withdraw":
            # One retry taken, replayed: counted twice (a stricter budget), or refused.
            assert await store.budget(key, policy, withdraw=True) is True
            assert cutter.cuts == 1
            assert await _counted(client, store._budget_key(key, policy), "r:") == 1
        elif op == "refund":
            # Given back once, replayed: the slot counts none, and the refund answers False.
            assert await store.refund(key, policy, age=0) is True
            assert cutter.cuts == 1
            assert await _counted(client, store._budget_key(key, policy), "r:") == 0
        elif op == "reserve":
            # One token from a full bucket (burst 5), replayed: two taken.
            pace = state_key("1", "pace", "svc")
            assert await store.reserve(pace, bucket) == 0
            assert cutter.cuts == 1
            tokens = float(await client.hget(store.key(pace), "tokens"))  # type: ignore[arg-type]
            assert tokens > 3.5, f"one reservation took {5 - tokens:.3f} tokens"
        else:
            did = await store.delete(key, only_if="old")
            assert cutter.cuts == 1
            assert await store.get(key) is None  # it deleted
            assert did is True, "delete(only_if=...) deleted the key and answered False"
    finally:
        await store.close()
        await close_client(client)
        await cutter.close()


async def _counted(client: aioredis.Redis, redis_key: str, kind: str) -> int:
    """What a budget's hash counts of ``kind`` (``q:`` first attempts, ``r:`` retries)."""
    fields = await client.hgetall(redis_key)
    return sum(int(n) for f, n in fields.items() if str(f).startswith(kind))


@pytest.mark.parametrize("prefix", ["t", "app{fleet}", "a{", "a}", "{}"])
def test_an_operation_record_is_in_its_key_s_cluster_slot_under_the_prefix(prefix: str) -> None:
    """A script's keys must share one Redis Cluster slot: the record is named with the key's
    hash tag, under the prefix (what an ACL allowing the prefix's keys allows), or a surrogate
    tag in the same slot (a prefix ``a}``). Where a prefix holding a ``{`` keeps the record's
    name from either tag, the script gets no record."""
    from redis.crc import key_slot

    store = RedisStore("redis://127.0.0.1:1/0", prefix=prefix)
    for redis_key in (store.key(state_key("1", "breaker", "s{v}c", "h")), f"{prefix}:x"):
        keys = store._once_keys(redis_key)
        assert keys[0] == redis_key
        if prefix in ("a{", "{}"):
            assert keys == [redis_key]
            continue
        assert len(keys) == 2
        assert keys[1].startswith(f"{prefix}:op:")
        assert key_slot(keys[1].encode()) == key_slot(redis_key.encode())
        assert store._once_keys(redis_key)[1] != keys[1]  # one per operation


async def test_a_prefix_without_operation_records_still_stores(redis_server: RedisServer) -> None:
    """A store whose scripts get no record (a prefix with a brace) works as before."""
    store = RedisStore(redis_server.url, prefix="a{", op_timeout=5.0)
    key = state_key("1", "breaker", "svc", "host")
    try:
        assert store._once_keys(store.key(key)) == [store.key(key)]
        assert await store.add(key, "old", ttl=60) is True
        assert await store.set(key, "new", ttl=60, only_if="old") is True
        assert await store.set(key, "newer", ttl=60, only_if="old") is False
        assert await store.delete(key, only_if="new") is True
        assert await store.budget(key, RetryBudget(), deposits=3, withdraw=True) is True
    finally:
        await store.close()


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
