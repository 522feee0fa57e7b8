"""RedisStore's operation records: one mark per process (a forked child makes its own), a record
for every key (one whose hash tag the record's name cannot carry too), and an op_timeout past
MAX_TTL. Redis tests use a real redis-server (tests/redis_server.py) on the real clock."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from le_transport.errors import ConfigurationError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import RedisStore, state_key
from le_transport.state.redis_store import _slot_tag
from le_transport.state.store import MAX_TTL

from .redis_server import RedisServer, close_client, redis_server
from .test_state_store_r20 import _ReplyCutter

__all__ = ["redis_server"]


def _mark(record: str) -> str:
    """The store's mark in an operation record's name (``{prefix}:op:{tag}:<mark>:<n>``)."""
    return record.rsplit(":", 2)[1]


# -- 1. A forked child makes its own mark --------------------------------------------------


def test_a_store_s_mark_is_made_anew_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child of os.fork() (simulated: os.getpid answers another pid) names its records with
    a mark of its own, kept for the rest of its life; the parent's stays as it was."""
    store = RedisStore("redis://127.0.0.1:1/0", prefix="t")
    redis_key = store.key(state_key("1", "breaker", "svc", "host"))
    parent = _mark(store._once_keys(redis_key)[1])
    assert _mark(store._once_keys(redis_key)[1]) == parent  # one mark per process
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)
    child = _mark(store._once_keys(redis_key)[1])
    assert child != parent
    assert _mark(store._once_keys(redis_key)[1]) == child


def test_a_forked_child_does_not_take_its_parent_s_record_for_its_own(
    redis_server: RedisServer,
) -> None:
    """A store made before os.fork() (a pre-fork server's worker) went on, in the child, with
    the parent's mark and numbers: the child's first operation on a key was named as the
    parent's first, and found its record. A compare-and-set then answered True (the parent's
    answer) and stored nothing: a lost update. Each process now has a mark of its own."""
    store = RedisStore(redis_server.url, prefix="t", op_timeout=5.0)
    key = state_key("1", "breaker", "svc", "host")
    redis_key = store.key(key)

    async def seed() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await client.set(redis_key, "a", px=60_000)
        finally:
            await close_client(client)

    async def swap(old: str, new: str) -> bool:
        try:
            return await store.set(key, new, ttl=60, only_if=old)
        finally:
            await store.close()

    asyncio.run(seed())
    parent_ran, parent_told = os.pipe()
    child_told, child_tells = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: reports on the pipe, never returns
        code = 1
        try:
            os.close(parent_told)
            os.close(child_told)
            os.read(parent_ran, 1)  # the parent's operation first
            done = asyncio.run(swap("p", "c"))
            mark = _mark(store._once_keys(redis_key)[1])
            os.write(child_tells, json.dumps([done, mark]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(parent_ran)
    os.close(child_tells)
    try:
        assert asyncio.run(swap("a", "p")) is True
        mark = _mark(store._once_keys(redis_key)[1])
    finally:
        os.write(parent_told, b"1")
        os.close(parent_told)
        told = b""
        while chunk := os.read(child_told, 4096):
            told += chunk
        os.close(child_told)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    done, child_mark = json.loads(told)

    async def stored() -> str | None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            value = await client.get(redis_key)
            return None if value is None else str(value)
        finally:
            await close_client(client)

    assert done is True
    assert asyncio.run(stored()) == "c", "the child's compare-and-set answered True, stored none"
    assert child_mark != mark


# -- 2. Every key gets its record, in its own slot -----------------------------------------


def test_every_slot_has_a_surrogate_tag() -> None:
    """The surrogate hash tag solved for a slot hashes into that slot, for each of the 16384,
    and holds no brace (it is a whole hash tag)."""
    from redis.crc import key_slot

    for slot in range(16384):
        tag = _slot_tag(slot)
        assert len(tag) == 4
        assert not set(tag) & set("{}")
        assert key_slot(f"x:{{{tag}}}:y".encode()) == slot


_ODD_KEYS = ["a}b", "}", "{}", "{a}b}", "}{", "x{}y}", "{}}", "{{}}", "a{b}}c", "\u00e9}\u00e8"]


@pytest.mark.parametrize("prefix", ["t", "a}", "app{fleet}"])
@pytest.mark.parametrize("key", _ODD_KEYS)
def test_a_key_holding_a_brace_gets_a_record_in_its_slot(prefix: str, key: str) -> None:
    """A key whose hash tag the record's name could not carry (one holding a '}', or any key
    under a prefix ending in one) got no record: a compare-and-set, a deposit, a token sent
    again by a client's Retry ran twice. Its record now has a surrogate hash tag in the key's
    slot; a budget's window key too."""
    from redis.crc import key_slot

    store = RedisStore("redis://127.0.0.1:1/0", prefix=prefix)
    for redis_key in (store.key(key), store._budget_key(key, RetryBudget())):
        keys = store._once_keys(redis_key)
        assert len(keys) == 2, f"no record for {redis_key!r}"
        assert keys[0] == redis_key
        assert keys[1].startswith(f"{prefix}:op:")
        assert key_slot(keys[1].encode()) == key_slot(redis_key.encode())
        assert store._once_keys(redis_key)[1] != keys[1]  # one per operation


@pytest.mark.parametrize("op", ["set", "budget", "reserve"])
@pytest.mark.parametrize("key", ["a}b", "{}", "{a}b}"])
async def test_a_key_holding_a_brace_is_changed_once_when_its_command_is_sent_again(
    redis_server: RedisServer, op: str, key: str
) -> None:
    """The record of a key holding a brace works: a command whose reply was lost, sent again
    by the client's Retry, is applied once and answers what the first run answered."""
    cutter = _ReplyCutter(redis_server.port)
    port = await cutter.start()
    client = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        retry=Retry(NoBackoff(), 3),
        retry_on_error=[RedisConnectionError],
    )
    store = RedisStore(client=client, prefix="t", op_timeout=5.0)
    policy = RetryBudget()
    bucket = TokenBucket(rate=1.0, burst=5.0)
    try:
        # The scripts loaded first (a NOSCRIPT reply would be cut instead of the real one).
        assert await store.set("other", "x", ttl=60, only_if="absent") is False
        assert await store.budget("other", policy) is False
        assert await store.reserve("other", bucket) == 0
        await store.set(key, "old", ttl=60)
        cutter.armed = True
        if op == "set":
            assert await store.set(key, "new", ttl=60, only_if="old") is True
            entry = await store.get(key)
            assert entry is not None
            assert entry.value == "new"
        elif op == "budget":
            await store.budget(key, policy, deposits=5)
            fields = await client.hgetall(store._budget_key(key, policy))
            counted = sum(int(n) for f, n in fields.items() if str(f).startswith("q:"))
            assert counted == 5, f"5 first attempts deposited once were counted {counted}"
        else:
            pace = f"{key}:pace"
            assert await store.reserve(pace, bucket) == 0
            tokens = float(await client.hget(store.key(pace), "tokens"))  # type: ignore[arg-type]
            assert tokens > 3.5, f"one reservation took {5 - tokens:.3f} tokens"
        assert cutter.cuts == 1
    finally:
        await store.close()
        await close_client(client)
        await cutter.close()


# -- 3. An op_timeout past MAX_TTL ---------------------------------------------------------


@pytest.mark.parametrize("op_timeout", [1e13, 10**20, 1e300, 1e306, sys.float_info.max])
async def test_an_op_timeout_past_max_ttl_is_taken_as_max_ttl(
    redis_server: RedisServer, op_timeout: float
) -> None:
    """A huge op_timeout (a finite number > 0, so accepted) failed to make the store past
    a float's range (the record's lifetime in ms overflowed: OverflowError), and made socket
    timeouts past any clock's. It is taken as MAX_TTL, and so is everything derived from it:
    the store works, its records kept no longer than MAX_TTL."""
    store = RedisStore(redis_server.url, prefix="t", op_timeout=op_timeout)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    key = state_key("1", "breaker", "svc", "host")
    try:
        assert store._op_timeout == MAX_TTL
        assert store._op_kept == round(MAX_TTL * 1000)
        options = store._client.connection_pool.connection_kwargs
        assert options["socket_timeout"] == MAX_TTL
        assert options["socket_connect_timeout"] == MAX_TTL
        await store.set(key, "old", ttl=60)
        assert await store.set(key, "new", ttl=60, only_if="old") is True
        assert await store.budget(key, RetryBudget(), deposits=3, withdraw=True) is True
        records = [k async for k in client.scan_iter(match="t:op:*")]
        assert len(records) == 2
        for record in records:
            assert 0 < await client.pttl(record) <= MAX_TTL * 1000
    finally:
        await store.close()
        await close_client(client)


@pytest.mark.parametrize("op_timeout", [math.inf, -math.inf, math.nan, 0, -1.0, 10**400, "1"])
def test_an_op_timeout_that_is_no_finite_number_above_zero_is_still_refused(
    op_timeout: object,
) -> None:
    """The cap is no license: an infinite, NaN, zero, negative or non-number op_timeout is a
    ConfigurationError, as before."""
    with pytest.raises(ConfigurationError, match="op_timeout"):
        RedisStore("redis://127.0.0.1:1/0", op_timeout=op_timeout)  # type: ignore[arg-type]
