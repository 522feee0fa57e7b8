"""The Redis store against a real redis-server: atomic operations, Lua scripts, fallback, secrets.

These run on the real clock: Redis lives in another process, which a virtual clock cannot see.
Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from le_transport.clock import RealClock
from le_transport.errors import ConfigurationError, StateStoreError
from le_transport.events import EventHooks, StateEvent
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import FallbackStore, MemoryStore, RedisStore, SharedSession, state_key
from le_transport.state.store import MAX_TTL

from .certs import self_signed_loopback
from .redis_server import RedisServer, redis_server, require_redis_server

__all__ = ["redis_server"]

#: Generous: these tests are about what the store does, not how fast, on a machine that may be
#: loaded; a 0.25 s timeout there would turn a slow answer into a fallback.
OP = 5.0


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, prefix="test", op_timeout=OP)
    yield s
    await s.close()


async def test_values_are_stored_under_the_prefix_with_their_ttl(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.set(state_key("1", "domains"), "{}", ttl=30)
    entry = await store.get(state_key("1", "domains"))
    assert entry is not None
    assert entry.value == "{}"
    assert 0 < entry.ttl <= 30
    other = RedisStore(redis_server.url, prefix="other", op_timeout=OP)
    try:
        assert await other.get(state_key("1", "domains")) is None
    finally:
        await other.close()


async def test_lock_and_compare_and_delete_are_atomic(store: RedisStore) -> None:
    results = await asyncio.gather(*(store.add("lock", f"owner{i}", ttl=10) for i in range(20)))
    assert sum(results) == 1
    owner = f"owner{results.index(True)}"
    assert not await store.delete("lock", only_if="someone-else")
    assert await store.delete("lock", only_if=owner)
    assert await store.get("lock") is None


async def test_shared_budget_allows_the_share_of_the_fleets_first_attempts(
    store: RedisStore,
) -> None:
    policy = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=60.0)
    for _ in range(5):
        await store.budget("svc", policy, deposits=10)
    taken = await asyncio.gather(*(store.budget("svc", policy, withdraw=True) for _ in range(30)))
    assert sum(taken) == 10


async def test_shared_budget_floor_lets_a_quiet_fleet_retry(store: RedisStore) -> None:
    policy = RetryBudget(ratio=0.2, min_retries_per_second=0.1, window=30.0)
    taken = [await store.budget("quiet", policy, withdraw=True) for _ in range(5)]
    assert taken == [True, True, True, False, False]


async def test_shared_bucket_queues_turns_past_the_burst(store: RedisStore) -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0)
    waits = [await store.reserve("pace", bucket) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] > 0
    assert waits[4] > waits[3]


#: Values and TTLs no store keeps: on every store, the same ConfigurationError, before anything
#: is sent (Redis would otherwise store str(5), or refuse None or a TTL past its range with a
#: StateStoreError, which a FallbackStore takes for an outage).
BAD_WRITES: list[tuple[object, object]] = [
    (5, 10),
    (None, 10),
    (b"v", 10),
    ("v", 0),
    ("v", -1),
    ("v", float("nan")),
    ("v", float("inf")),
    ("v", 10**400),
    ("v", "10"),
    ("v", True),
]


async def test_a_bad_value_or_ttl_is_refused_as_the_memory_store_refuses_it(
    store: RedisStore,
) -> None:
    memory = MemoryStore(RealClock())
    for value, ttl in BAD_WRITES:
        for op in ("set", "add"):
            refusals = []
            for one in (memory, store):
                with pytest.raises(ConfigurationError) as info:
                    await getattr(one, op)("k", value, ttl=ttl)
                refusals.append(str(info.value))
            assert refusals[0] == refusals[1], (op, value, ttl)
    assert await store.get("k") is None


async def test_a_bad_value_or_ttl_is_refused_before_anything_is_sent() -> None:
    unreachable = RedisStore("redis://127.0.0.1:1/0", op_timeout=OP)
    try:
        for value, ttl in BAD_WRITES:
            with pytest.raises(ConfigurationError):
                await unreachable.set("k", value, ttl=ttl)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError):
                await unreachable.add("k", value, ttl=ttl)  # type: ignore[arg-type]
    finally:
        await unreachable.close()


@pytest.mark.parametrize("deposits", [-100, True, 1.5, "3"])
async def test_a_bad_budget_deposit_is_refused_alike_before_anything_is_sent(
    store: RedisStore, deposits: object
) -> None:
    # A negative deposit took retries away in memory and was ignored by the Redis script.
    budget = RetryBudget()
    refusals = []
    for one in (MemoryStore(RealClock()), store, FallbackStore(store)):
        with pytest.raises(ConfigurationError, match="deposits must be an int >= 0") as info:
            await one.budget("svc", budget, deposits=deposits, withdraw=True)  # type: ignore[arg-type]
        refusals.append(str(info.value))
    assert len(set(refusals)) == 1


async def test_both_stores_grant_a_whole_share_despite_float_rounding(store: RedisStore) -> None:
    # 0.7 * 90 is 62.99999999999999: the memory store granted 62, the Redis script 63.
    budget = RetryBudget(ratio=0.7, min_retries_per_second=0.0)
    granted = []
    for one in (MemoryStore(RealClock()), store):
        await one.budget("svc", budget, deposits=90)
        taken = 0
        while await one.budget("svc", budget, withdraw=True):
            taken += 1
        granted.append(taken)
    assert granted == [63, 63]


async def test_a_huge_but_finite_ttl_is_kept_for_max_ttl_on_both_stores(store: RedisStore) -> None:
    for one in (MemoryStore(RealClock()), store):
        await one.set("long", "v", ttl=1e300)
        assert await one.add("lock", "me", ttl=10**300)
        for key in ("long", "lock"):
            entry = await one.get(key)
            assert entry is not None, (one, key)
            assert MAX_TTL - 60 < entry.ttl <= MAX_TTL, (one, key, entry)


@pytest.mark.parametrize("window", [1e13, 1e16, 1e300])
async def test_a_budget_with_a_huge_window_works_on_redis_as_in_memory(
    store: RedisStore, window: float
) -> None:
    """Its PEXPIRE passed Redis' range (or was written "1e+19"): every budget call failed, and a
    FallbackStore took that for an outage and stayed local."""
    budget = RetryBudget(window=window)
    for one in (MemoryStore(RealClock()), store):
        assert await one.budget(f"huge{window:g}", budget, deposits=1, withdraw=True)
    ttl = await store._client.pttl(store.key(f"huge{window:g}"))
    assert 0 < ttl <= MAX_TTL * 1000


@pytest.mark.parametrize(
    "bucket",
    [TokenBucket(rate=1.0, burst=1e300), TokenBucket(rate=1e-13, burst=1.0)],
    ids=["burst 1e300", "rate 1e-13"],
)
async def test_a_bucket_with_a_huge_refill_works_on_redis_as_in_memory(
    store: RedisStore, bucket: TokenBucket
) -> None:
    for one in (MemoryStore(RealClock()), store):
        assert await one.reserve(f"pace{bucket.rate:g}", bucket) == 0.0
    ttl = await store._client.pttl(store.key(f"pace{bucket.rate:g}"))
    assert 0 < ttl <= MAX_TTL * 1000


async def test_a_huge_budget_window_is_no_redis_outage_for_the_fallback_store(
    redis_server: RedisServer,
) -> None:
    primary = RedisStore(redis_server.url, prefix="test", op_timeout=OP)
    fallback = FallbackStore(primary)
    try:
        assert await fallback.budget("svc", RetryBudget(window=1e16), deposits=1, withdraw=True)
        assert fallback.sharing
        assert fallback.fallbacks == 0
    finally:
        await fallback.close()


async def test_a_bad_write_through_the_fallback_store_is_not_taken_for_a_redis_outage(
    redis_server: RedisServer,
) -> None:
    events: list[StateEvent] = []
    fallback = FallbackStore(
        RedisStore(redis_server.url, op_timeout=OP), hooks=EventHooks(on_state=[events.append])
    )
    try:
        for value, ttl in BAD_WRITES:
            with pytest.raises(ConfigurationError):
                await fallback.add("lock", value, ttl=ttl)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError):
                await fallback.set("k", value, ttl=ttl)  # type: ignore[arg-type]
        assert fallback.sharing
        assert fallback.fallbacks == 0
        assert events == []
        assert await fallback.add("lock", "me", ttl=1e300)
        assert fallback.sharing
    finally:
        await fallback.close()


async def test_unreachable_redis_is_a_typed_error_without_the_password() -> None:
    store = RedisStore("redis://:hunter2-secret@127.0.0.1:1/0", op_timeout=0.5)
    try:
        with pytest.raises(StateStoreError) as info:
            await store.get("k")
        assert "hunter2-secret" not in str(info.value)
        assert "hunter2-secret" not in repr(store)
    finally:
        await store.close()


async def test_password_passes_through_and_never_reaches_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    binary = require_redis_server()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(binary, Path(tmp), password="s3cr3t-pass")
        server.start()
        try:
            caplog.set_level(logging.DEBUG)
            good = RedisStore(server.url, password="s3cr3t-pass", op_timeout=OP)
            await good.set("k", "v", ttl=5)
            assert (await good.get("k")) is not None
            await good.close()
            bad = FallbackStore(RedisStore(server.url, password="wrong-s3cr3t", op_timeout=OP))
            await bad.set("k", "v", ttl=5)
            assert not bad.sharing
            await bad.close()
            in_url = RedisStore(f"redis://:s3cr3t-pass@127.0.0.1:{server.port}/0", op_timeout=OP)
            assert (await in_url.get("k")) is not None
            await in_url.close()
        finally:
            server.stop()
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert "s3cr3t" not in text


async def test_killed_redis_falls_back_and_restarted_redis_resumes_sharing(
    redis_server: RedisServer,
) -> None:
    store = FallbackStore(
        RedisStore(redis_server.url, op_timeout=OP), clock=RealClock(), retry_interval=0.05
    )
    try:
        await store.set("k", "v", ttl=60)
        assert store.sharing
        redis_server.kill()
        assert (await store.get("k")) is not None, "the local copy answers"
        assert await store.add("lock", "me", ttl=5)
        assert not store.sharing
        redis_server.start()
        for _ in range(200):
            await asyncio.sleep(0.05)
            await store.set("k2", "v2", ttl=60)
            if store.sharing:
                break
        assert store.sharing
        assert store.fallbacks == 1
        assert store.recoveries == 1
        direct = RedisStore(redis_server.url, op_timeout=OP)
        assert (await direct.get("k2")) is not None
        await direct.close()
    finally:
        await store.close()


async def test_sessions_in_two_stores_share_one_login(redis_server: RedisServer) -> None:
    logins = 0

    async def do_login() -> tuple[str, float | None]:
        nonlocal logins
        logins += 1
        await asyncio.sleep(0.05)
        return "token", 600.0

    stores = [RedisStore(redis_server.url, op_timeout=OP) for _ in range(5)]
    try:
        sessions = [SharedSession(s, account="1", user="bot", poll=0.01) for s in stores]
        tokens = await asyncio.gather(*(s.login(do_login) for s in sessions))
        assert logins == 1
        assert len({t.version for t in tokens}) == 1
    finally:
        for s in stores:
            await s.close()


class _SwallowingClient:
    """A client whose command finishes even when cancelled, as redis-py's may do to keep its
    connection in step: it catches the cancellation and returns its answer."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def register_script(self, script: str) -> object:
        async def run(keys: list[str], args: list[object] | None = None) -> object:
            self.started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            return False

        return run


async def test_a_cancellation_redis_py_swallows_still_cancels_the_caller() -> None:
    client = _SwallowingClient()
    store = RedisStore(client=client, op_timeout=3600)
    task = asyncio.ensure_future(store.get("k"))
    await client.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tls_options_pass_through_and_verification_stays_on() -> None:
    binary = require_redis_server()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed_loopback(Path(tmp))
        server = RedisServer(binary, Path(tmp), password="tls-s3cr3t", tls=(cert, key))
        server.start()
        try:
            trusted = RedisStore(
                server.url,
                password="tls-s3cr3t",
                op_timeout=OP,
                client_options={"ssl_ca_certs": str(cert)},
            )
            await trusted.set("k", "over tls", ttl=5)
            entry = await trusted.get("k")
            assert entry is not None
            assert entry.value == "over tls"
            await trusted.close()
            untrusted = RedisStore(server.url, password="tls-s3cr3t", op_timeout=OP)
            with pytest.raises(StateStoreError) as info:
                await untrusted.get("k")
            assert "tls-s3cr3t" not in str(info.value)
            await untrusted.close()
        finally:
            server.stop()


async def test_a_redis_that_hangs_is_left_after_the_op_timeout_and_rejoined_when_it_answers(
    redis_server: RedisServer,
) -> None:
    store = FallbackStore(
        RedisStore(redis_server.url, op_timeout=0.5), clock=RealClock(), retry_interval=0.05
    )
    assert redis_server.proc is not None
    try:
        await store.set("k", "v", ttl=60)
        redis_server.proc.send_signal(signal.SIGSTOP)  # alive, accepting, never answering
        try:
            entry = await store.get("k")
            assert entry is not None, "answered from the local copy"
            assert not store.sharing
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        for _ in range(200):
            await asyncio.sleep(0.05)
            await store.get("k")
            if store.sharing:
                break
        assert store.sharing
        assert store.fallbacks >= 1
        assert store.recoveries == store.fallbacks
    finally:
        await store.close()
