"""Round 18 fixes to the state stores (review rw1): each test failed before its fix.

1. A value that is no UTF-8, read by a client with ``decode_responses``, is that key's damage
   (StateDataError), not an outage of every key.
2. A key, value or ``only_if`` holding a lone surrogate is a ConfigurationError on every store.
3. A damaged token bucket in Redis (non-finite fields, a queue deeper than 2**53) reads as full
   and heals, instead of being written back with an expiry of MAX_TTL.
4. MemoryStore carries a bucket's queue over when callers' rates or bursts differ, as Redis does.
5. FallbackStore's compare-and-delete answers what the primary did.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from le_transport.errors import ConfigurationError, StateDataError, StateStoreError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import (
    FallbackStore,
    MemoryStore,
    RedisStore,
    SharedSession,
    StateStore,
    state_key,
)
from le_transport.state.fallback import stored_text
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock

from .redis_server import RedisServer, close_client, redis_server

__all__ = ["redis_server"]

OP = 5.0


# -- 1. a value that is no UTF-8 is that key's damage --------------------------------------


@pytest.mark.parametrize("own_client", [True, False], ids=["own-client", "callers-client"])
async def test_non_utf8_value_is_state_data_error_not_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, own_client: bool
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)  # bytes: another writer's client
    caller = None
    try:
        await raw.set("t:1:breaker:svc:host", b"\xff\xfe{", px=600_000)
        await raw.set("t:1:domains", '{"msgHist": "va.msghist.liveperson.net"}', px=600_000)
        if own_client:
            store = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
        else:
            caller = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            store = RedisStore(prefix="t", op_timeout=OP, client=caller)
        with pytest.raises(StateDataError) as raised:
            await store.get("1:breaker:svc:host")
        assert raised.value.key == "1:breaker:svc:host"
        text = str(raised.value)
        assert "t:1:breaker:svc:host" in text
        assert "0xff" not in text
        assert "\\xff" not in text
        fallback = FallbackStore(store, retry_interval=60.0)
        with caplog.at_level(logging.WARNING, "le_transport.state"):
            assert await fallback.get("1:breaker:svc:host") is None
        assert fallback.sharing, "one damaged key sent every key local"
        entry = await fallback.get("1:domains")
        assert entry is not None
        assert "msgHist" in entry.value
        assert fallback.fallbacks == 0
        # The damaged key is written over as any damaged key is.
        assert await fallback.set("1:breaker:svc:host", "{}", ttl=60)
        assert (await store.get("1:breaker:svc:host")) is not None
        await fallback.close()
    finally:
        await close_client(raw)
        if caller is not None:
            await close_client(caller)


# -- 2. a lone surrogate is refused alike by every store -----------------------------------

_CALLS: list[tuple[str, Callable[[StateStore], Awaitable[Any]], str]] = [
    ("set-value", lambda s: s.set("1:session:u", "tok\ud800", ttl=10), "stored value"),
    ("set-key", lambda s: s.set("1:session:\udcff", "v", ttl=10), "store key"),
    ("set-only-if", lambda s: s.set("1:session:u", "v", ttl=10, only_if="\udcff"), "only_if"),
    ("add-value", lambda s: s.add("1:lock", "\udcff", ttl=10), "stored value"),
    ("add-key", lambda s: s.add("1:lock\ud800", "v", ttl=10), "store key"),
    ("delete-only-if", lambda s: s.delete("1:k", only_if="\ud800"), "only_if"),
    ("delete-key", lambda s: s.delete("1:k\udcff"), "store key"),
    ("get-key", lambda s: s.get("1:k\udcff"), "store key"),
    ("reserve-key", lambda s: s.reserve("1:pace\udcff", TokenBucket()), "store key"),
    ("budget-key", lambda s: s.budget("1:b\udcff", RetryBudget(), deposits=1), "store key"),
]


@pytest.mark.parametrize(
    ("call", "field"), [(c, f) for _, c, f in _CALLS], ids=[i for i, _, _ in _CALLS]
)
async def test_lone_surrogate_is_a_configuration_error_on_every_store(
    redis_server: RedisServer, call: Callable[[StateStore], Awaitable[Any]], field: str
) -> None:
    memory = MemoryStore()
    redis = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
    fallback = FallbackStore(RedisStore(redis_server.url, prefix="t", op_timeout=OP))
    try:
        for store in (memory, redis, fallback):
            with pytest.raises(ConfigurationError) as raised:
                await call(store)
            text = str(raised.value)
            assert field in text
            assert "\ud800" not in text
            assert "\udcff" not in text
            assert "\\ud800" not in text
            assert "\\udcff" not in text
            assert type(raised.value) is ConfigurationError  # never a StateStoreError
        assert fallback.sharing
        assert fallback.fallbacks == 0
        assert memory._values == {}
        assert memory._buckets == {}
        assert memory._budgets == {}
        raw = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await raw.dbsize() == 0  # nothing sent that stored anything
        finally:
            await close_client(raw)
    finally:
        await redis.close()
        await fallback.close()


@pytest.mark.parametrize("text", ["plain", "café", "日本", "emoji \U0001f600", ""])
async def test_text_utf8_can_encode_is_still_taken(text: str) -> None:
    store = MemoryStore()
    assert await store.set(f"1:k{text}", f"v{text}", ttl=10)
    assert await store.set(f"1:k{text}", "w", ttl=10, only_if=f"v{text}")
    assert await store.delete(f"1:k{text}", only_if="w")


# -- 3. a damaged token bucket in Redis heals ------------------------------------------------

_DAMAGED = [
    ("-1e300", None),
    ("inf", None),
    ("-inf", None),
    ("nan", None),
    ("1e400", None),  # tonumber: inf
    (f"{-(2.0**53) - 4096:.6f}", None),  # a queue deeper than any reserve() makes
    ("1e300", None),  # tokens above the burst
    (None, "nan"),
    (None, "inf"),
    (None, "-inf"),
    ("-1e300", "nan"),
]


@pytest.mark.parametrize(("tokens", "updated"), _DAMAGED)
async def test_damaged_redis_bucket_reads_as_full_and_heals(
    redis_server: RedisServer, tokens: str | None, updated: str | None
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    key = "t:1:pace:reconnect"
    bucket = TokenBucket(rate=10.0, burst=5.0)
    try:
        await raw.hset(
            key,
            mapping={
                "tokens": tokens if tokens is not None else "-3",
                "updated": updated if updated is not None else f"{time.time():.6f}",
            },
        )
        await raw.pexpire(key, 60_000)
        store = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
        try:
            wait = await store.reserve("1:pace:reconnect", bucket)
        finally:
            await store.close()
        held = await raw.hget(key, "tokens")
        assert isinstance(held, str)
        stored = float(held)
        ttl_ms = await raw.pttl(key)
    finally:
        await close_client(raw)
    assert wait == 0.0  # a full bucket: the first reservation goes at once
    assert math.isfinite(stored)
    assert stored == pytest.approx(4.0)
    # burst / rate + 1 s: the expiry of a full bucket, never one re-armed to MAX_TTL.
    assert 0 < ttl_ms <= 1500


async def test_a_real_queue_in_redis_is_still_kept(redis_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    key = "t:1:pace:reconnect"
    try:
        await raw.hset(key, mapping={"tokens": "-4", "updated": f"{time.time() + 5:.6f}"})
        store = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
        try:
            wait = await store.reserve("1:pace:reconnect", TokenBucket(rate=1.0, burst=5.0))
        finally:
            await store.close()
    finally:
        await close_client(raw)
    assert wait == pytest.approx(5.0, abs=0.1)  # behind the queue of 4, the updated ahead as now


async def test_memory_buckets_cannot_hold_damage() -> None:
    # The memory store's buckets are TokenBuckets, whose validators refuse such state: the
    # damaged path Redis had is unreachable there.
    for tokens in (-1e300, math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigurationError):
            TokenBucket(tokens=tokens, updated_at=0.0)
    with pytest.raises(ConfigurationError):
        TokenBucket(tokens=0.0, updated_at=math.nan)


# -- 4. MemoryStore keeps a bucket's queue across callers' settings --------------------------


async def test_memory_bucket_carries_its_queue_across_settings() -> None:
    a, b = TokenBucket(rate=1.0, burst=2.0), TokenBucket(rate=1.0, burst=3.0)
    store = MemoryStore(VirtualClock())
    waits = [await store.reserve("1:pace:reconnect", a if i % 2 else b) for i in range(8)]
    assert waits == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


async def test_memory_bucket_carried_over_is_clamped_to_the_new_burst() -> None:
    clock = VirtualClock()
    store = MemoryStore(clock)
    big, small = TokenBucket(rate=1.0, burst=10.0), TokenBucket(rate=2.0, burst=2.0)
    assert await store.reserve("1:p", big) == 0.0  # 9 left, above the small burst
    assert await store.reserve("1:p", small) == 0.0  # clamped to 2: 1 left
    assert await store.reserve("1:p", small) == 0.0
    assert await store.reserve("1:p", small) == 0.5  # the small bucket's rate
    assert await store.reserve("1:p", big) == 2.0  # its queue, carried over: not full again
    clock.advance(10.0)
    assert await store.reserve("1:p", big) == 0.0  # refilled, at the big bucket's rate


async def test_memory_and_redis_pace_alike_across_settings(redis_server: RedisServer) -> None:
    a, b = TokenBucket(rate=1.0, burst=2.0), TokenBucket(rate=1.0, burst=3.0)

    async def waits(store: StateStore) -> list[float]:
        return [
            round(await store.reserve("1:pace:reconnect", a if i % 2 else b), 1) for i in range(8)
        ]

    redis = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
    try:
        shared = await waits(redis)
    finally:
        await redis.close()
    assert await waits(MemoryStore(VirtualClock())) == shared


# -- 5. FallbackStore's compare-and-delete answers what the primary did ----------------------


async def test_fallback_compare_and_delete_answers_the_primary(redis_server: RedisServer) -> None:
    mine = FallbackStore(RedisStore(redis_server.url, prefix="t", op_timeout=OP))
    other = RedisStore(redis_server.url, prefix="t", op_timeout=OP)
    try:
        await mine.set("1:lock", "A", ttl=30)  # copied locally too
        await other.set("1:lock", "B", ttl=30)  # another process's value now
        assert await mine.delete("1:lock", only_if="A") is False
        entry = await other.get("1:lock")
        assert entry is not None
        assert entry.value == "B"
        # Deleted there (and nothing here): True.
        assert await mine.primary.set("1:lock2", "C", ttl=30)
        assert await mine.delete("1:lock2", only_if="C") is True
        assert await other.get("1:lock2") is None
        # Unconditional: whether the primary deleted.
        await mine.set("1:gone", "x", ttl=30)
        await other.delete("1:gone")
        assert await mine.delete("1:gone") is False
    finally:
        await mine.close()
        await other.close()


class _DamagedDelete(MemoryStore):
    """A primary answering that the key's data is damaged on a compare-and-delete."""

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        raise StateDataError("damaged", key=key)


class _Down(MemoryStore):
    """A primary that is out."""

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        raise StateStoreError("down")


async def test_fallback_compare_and_delete_on_a_damaged_key_deleted_nothing() -> None:
    clock = VirtualClock()
    fallback = FallbackStore(_DamagedDelete(clock), clock=clock)
    await fallback.local.set("1:lock", "A", ttl=30)
    assert await fallback.delete("1:lock", only_if="A") is False
    assert fallback.sharing


async def test_fallback_compare_and_delete_answers_locally_while_out() -> None:
    clock = VirtualClock()
    fallback = FallbackStore(_Down(clock), clock=clock)
    await fallback.local.set("1:lock", "A", ttl=30)
    assert await fallback.delete("1:lock", only_if="B") is False
    assert await fallback.delete("1:lock", only_if="A") is True
    assert not fallback.sharing
    await fallback.local.set("1:lock", "A", ttl=30)
    assert await fallback.delete("1:lock") is True  # while out, the local answer


# -- a lone surrogate answered by a store is damage, not the caller's mistake ------------------


class _SurrogatePrimary(MemoryStore):
    """A caller's store whose text decoding keeps undecodable bytes (surrogateescape)."""

    async def get(self, key: str) -> Entry | None:
        return Entry("\udcff\udcfe{", 30.0)


async def test_a_value_no_store_takes_back_reads_as_damaged_through_the_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fallback = FallbackStore(_SurrogatePrimary())
    try:
        assert await fallback.get("1:breaker:svc:host") is None
        assert fallback.sharing
        assert "damaged" in caplog.text
        assert "\udcff" not in caplog.text
    finally:
        await fallback.close()


async def test_a_shared_session_read_through_surrogateescape_is_damaged_not_refused(
    redis_server: RedisServer,
) -> None:
    # redis-py's encoding_errors="surrogateescape" (a client option RedisStore passes on):
    # another writer's session entry that is no UTF-8 made every read of the session a
    # ConfigurationError (the fallback's mirror refused the value), where an unreadable entry
    # is ignored and overwritten by the next login.
    raw = aioredis.Redis.from_url(redis_server.url)
    store = RedisStore(
        redis_server.url, prefix="t", client_options={"encoding_errors": "surrogateescape"}
    )
    try:
        await raw.set("t:" + state_key("1", "session", "u"), b"\xff\xfe{", px=600_000)
        shared = SharedSession(store, account="1", user="u")
        assert await shared.current() is None
        assert stored_text("\udcff") is None
    finally:
        await close_client(raw)
        await store.close()
