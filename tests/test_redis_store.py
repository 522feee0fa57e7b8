"""The Redis store against a real redis-server: atomic operations, Lua scripts, fallback, secrets.

These run on the real clock: Redis lives in another process, which a virtual clock cannot see.
Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import SSLConnection

from le_transport.clock import RealClock
from le_transport.errors import ConfigurationError, StateStoreError
from le_transport.events import EventHooks, StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    RetryBudget,
    TokenBucket,
)
from le_transport.state import (
    FallbackStore,
    MemoryStore,
    RedisStore,
    SharedSession,
    StateStore,
    state_key,
)
from le_transport.state.store import MAX_TTL

from .certs import self_signed_loopback
from .redis_server import RedisServer, close_client, redis_server, require_redis_server
from .test_breaker_fleet import (
    HOST,
    a_longer_break_published_between_the_read_and_the_write,
    escalated_break_meets_an_unaware_opening,
    newer_break_during_a_probe,
    newer_break_during_a_tail_rewrite,
)

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


async def test_closing_the_store_closes_its_connections(redis_server: RedisServer) -> None:
    # On redis-py 5.0.0 (the extra's floor) the client has close() but no aclose(): the store
    # took the AttributeError for a failed close and left its pool open.
    admin = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    # Named, so that only this store's connections are counted (the server is shared by the
    # tests of this worker, whose clients may still be listed).
    name = f"closing-{os.getpid()}-{id(admin)}"

    async def listed() -> list[object]:
        return [c for c in await admin.client_list() if c.get("name") == name]

    try:
        store = RedisStore(
            redis_server.url, prefix="test", op_timeout=OP, client_options={"client_name": name}
        )
        await asyncio.gather(*(store.set(f"k{i}", "v", ttl=30) for i in range(3)))
        assert await listed(), "the store's own connections are listed"
        await store.close()
        for _ in range(500):  # the server drops a closed connection from its list at once
            left = await listed()
            if not left:
                break
            await asyncio.sleep(0.01)
        assert left == []
    finally:
        await close_client(admin)


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


@pytest.mark.parametrize("policy", ["x", None, TokenBucket(rate=1.0, burst=1.0)], ids=repr)
async def test_a_budget_or_bucket_of_the_wrong_kind_is_refused_alike_before_anything_is_sent(
    policy: object,
) -> None:
    """RedisStore.budget(policy="x") raised AttributeError ('str' object has no attribute
    'ratio'): not the ConfigurationError of a caller's mistake, nor what the memory store
    raised."""
    unreachable = RedisStore("redis://127.0.0.1:1/0", op_timeout=OP)
    try:
        for op, kind in (("budget", "RetryBudget"), ("reserve", "TokenBucket")):
            if op == "reserve" and isinstance(policy, TokenBucket):
                continue
            refusals = []
            for one in (MemoryStore(RealClock()), unreachable, FallbackStore(unreachable)):
                with pytest.raises(ConfigurationError, match=f"needs a {kind}") as info:
                    await getattr(one, op)("k", policy)
                refusals.append(str(info.value))
            assert len(set(refusals)) == 1, refusals
    finally:
        await unreachable.close()


async def test_a_condition_that_is_no_str_is_refused_alike_before_anything_is_sent() -> None:
    unreachable = RedisStore("redis://127.0.0.1:1/0", op_timeout=OP)
    try:
        for only_if in (5, b"v"):
            refusals = []
            for one in (MemoryStore(RealClock()), unreachable, FallbackStore(unreachable)):
                with pytest.raises(ConfigurationError, match="only_if") as info:
                    await one.set("k", "v", ttl=10, only_if=only_if)  # type: ignore[arg-type]
                refusals.append(str(info.value))
                with pytest.raises(ConfigurationError, match="only_if"):
                    await one.delete("k", only_if=only_if)  # type: ignore[arg-type]
            assert len(set(refusals)) == 1, refusals
    finally:
        await unreachable.close()


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
    ttl = await store._client.pttl(store._budget_key(f"huge{window:g}", budget))
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
        # Tried again every retry_interval until a write reaches Redis; the bound is real
        # seconds against a hang, never a speed.
        async with asyncio.timeout(120):
            while not store.sharing:
                await asyncio.sleep(0.05)
                await store.set("k2", "v2", ttl=60)
        # It fell back, and each fallback ended in a recovery (a restarting server may fail a
        # try it first accepted: another fallback, and another recovery).
        assert store.fallbacks >= 1
        assert store.recoveries == store.fallbacks
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
    connection in step: it catches the cancellation and returns its answer. (It has every
    command the store sends: a client without them is refused when the store is made.)"""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def set(self, *args: object, **kwargs: object) -> bool:
        return True

    async def delete(self, *keys: str) -> int:
        return 0

    async def ping(self) -> bool:
        return True

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


# -- compare-and-set and compare-and-delete: the same answers on every store ----------------------

_KEYS = ["a", "b"]
_VALUES = ["x", "y", "z"]
#: One store operation: (name, key, value, only_if); set and delete with or without a condition.
_OPS = st.tuples(
    st.sampled_from(["get", "set", "add", "delete"]),
    st.sampled_from(_KEYS),
    st.sampled_from(_VALUES),
    st.none() | st.sampled_from(_VALUES),
)
_EXAMPLES = itertools.count()


async def _apply(store: StateStore, space: str, op: tuple[str, str, str, str | None]) -> object:
    name, key, value, only_if = op
    key = f"{space}:{key}"
    if name == "get":
        entry = await store.get(key)
        return None if entry is None else entry.value
    if name == "set":
        return await store.set(key, value, ttl=60, only_if=only_if)
    if name == "add":
        return await store.add(key, value, ttl=60)
    return await store.delete(key, only_if=only_if)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(_OPS, min_size=1, max_size=25))
async def test_conditional_writes_and_deletes_answer_alike_on_every_store(
    store: RedisStore, redis_server: RedisServer, ops: list[tuple[str, str, str, str | None]]
) -> None:
    """A compare-and-set stores only while the key holds exactly the value named, a
    compare-and-delete deletes only then: the same answer from memory, Redis (its Lua script)
    and a FallbackStore over Redis, operation by operation, and the same values after."""
    space = f"cas{next(_EXAMPLES)}"
    fallback = FallbackStore(RedisStore(redis_server.url, prefix="fb", op_timeout=OP))
    stores: list[StateStore] = [MemoryStore(RealClock()), store, fallback]
    try:
        for op in ops:
            answers = [await _apply(one, space, op) for one in stores]
            assert answers[1] == answers[0], (op, answers)
            assert answers[2] == answers[0], (op, answers)
        for key in _KEYS:
            held = [await _apply(one, space, ("get", key, "", None)) for one in stores]
            assert held[1:] == held[:1] * 2, (key, held)
        assert fallback.sharing
    finally:
        await fallback.close()


async def test_a_compare_and_set_keeps_the_new_ttl_and_the_fallback_copies_what_it_stored(
    redis_server: RedisServer,
) -> None:
    primary = RedisStore(redis_server.url, prefix="cas-ttl", op_timeout=OP)
    fallback = FallbackStore(primary)
    try:
        await fallback.set("k", "old", ttl=600)
        assert await fallback.set("k", "new", ttl=30, only_if="old")
        entry = await primary.get("k")
        assert entry is not None
        assert entry.value == "new"
        assert 0 < entry.ttl <= 30
        local = await fallback.local.get("k")
        assert local is not None
        assert local.value == "new", "the local copy follows what the primary stored"
        assert not await fallback.set("k", "newer", ttl=30, only_if="old")
        assert not await primary.set("gone", "v", ttl=30, only_if="old"), "nothing to compare"
        assert await primary.get("gone") is None
    finally:
        await fallback.close()


# -- the fleet's breaker trips on Redis: a newer break is never lost ------------------------------


def _half_open_on_redis(
    store: RedisStore, trip: str, breaker: CircuitBreaker, *, poll: float
) -> Callable[[OverloadGuard], Awaitable[None]]:
    """Waits until A's break is over for A and on Redis' clock too (the trip's TTL below the
    probe lease), polling every ``poll`` s: each step waits for a state, not a time. No trip at
    all is over too: a break shorter than the store's answer (0.01 s, on a loaded machine) is
    over before it could be published, and A publishes nothing (OverloadGuard._publish)."""

    async def past_the_break(a: OverloadGuard) -> None:
        while True:
            entry = await store.get(trip)
            if a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN and (
                entry is None or entry.ttl < breaker.probe_lease - 0.05
            ):
                return
            await asyncio.sleep(poll)

    return past_the_break


@pytest.mark.parametrize(
    "scenario", [newer_break_during_a_tail_rewrite, newer_break_during_a_probe]
)
async def test_a_break_published_while_another_process_probes_is_never_lost_on_redis(
    redis_server: RedisServer, scenario: Callable[..., Awaitable[None]]
) -> None:
    """The scenarios of tests/test_breaker_fleet.py on a real Redis (its compare-and-set and
    compare-and-delete scripts, through the guards' FallbackStore), on the real clock: A's
    break is 0.2 s, B's 60 s. Interleaved by pausing A's store, never by timing."""
    store = RedisStore(redis_server.url, prefix="newer", op_timeout=OP)
    breaker = CircuitBreaker(
        minimum_throughput=4,
        sampling_window=30.0,
        breaks=BackoffPolicy(first=0.2, jitter=0.0, floor=0.0),
    )
    trip = state_key("1", "breaker", "svc", HOST)

    past_the_break = _half_open_on_redis(store, trip, breaker, poll=0.02)

    try:
        await scenario(store, RealClock(), breaker, past_the_break)
    finally:
        await store.close()


async def test_an_escalated_break_is_kept_when_an_unaware_process_opens_on_redis(
    redis_server: RedisServer,
) -> None:
    """tests/test_breaker_fleet.py's scenario on a real Redis (through the guards'
    FallbackStore), on the real clock: A's breaks 0.2 s, 1 s, then 5 s after its third
    opening; B's first, 0.2 s, must not replace it. Each step waits for a state, not a time;
    but a break must outlast the store's answers, or it is over before it is published (it
    was 0.01 s: on a loaded machine the test failed now and then)."""
    store = RedisStore(redis_server.url, prefix="escalated", op_timeout=OP)
    breaker = CircuitBreaker(
        minimum_throughput=4,
        sampling_window=30.0,
        breaks=BackoffPolicy(first=0.2, factor=5.0, cap=60.0, jitter=0.0, floor=0.0),
    )
    trip = state_key("1", "breaker", "svc", HOST)

    past_the_break = _half_open_on_redis(store, trip, breaker, poll=0.01)

    try:
        await escalated_break_meets_an_unaware_opening(
            store, RealClock(), breaker, past_the_break, 3
        )
    finally:
        await store.close()


async def test_a_longer_break_published_between_a_read_and_a_write_is_kept_on_redis(
    redis_server: RedisServer,
) -> None:
    """B's set-if-absent of its 0.2 s break, paused after its read found nothing, meets A's
    60 s break published meanwhile: Redis keeps A's, and B takes it."""
    store = RedisStore(redis_server.url, prefix="between", op_timeout=OP)
    short = CircuitBreaker(
        minimum_throughput=4,
        sampling_window=30.0,
        breaks=BackoffPolicy(first=0.2, jitter=0.0, floor=0.0),
    )
    try:
        await a_longer_break_published_between_the_read_and_the_write(store, RealClock(), short)
    finally:
        await store.close()


# -- URLs redis-py reads, with an '@' where no password is -------------------------------------
#
# 2ca9a2c split a URL's userinfo itself (so that a password holding an unencoded '/' is never
# shown) and refused every URL with an '@' after its host: also unix:/path, an '@' in a query
# value (?password=p@ss, ?client_name=svc@pod-7), and a percent-encoded password before a
# socket path holding an '@'. Each worked before; each is taken again, and talks to Redis.

#: The reproducers' password, as a query value or percent-encoded in a userinfo.
AT_PASSWORD = "p@ss"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _redis_on_a_socket(password: str) -> Iterator[tuple[str, int]]:
    """A redis-server requiring ``password`` on a free loopback port and on a unix socket in a
    directory whose name holds an '@' (as ``user@1000``-style paths do): (socket, port).
    (tests/redis_server.py's RedisServer serves no socket.)"""
    binary = require_redis_server()
    with tempfile.TemporaryDirectory(prefix="le_redis_") as tmp:
        sock = Path(tmp) / "svc@host" / "redis.sock"
        sock.parent.mkdir()
        port = _free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock)]
        args += ["--save", "", "--appendonly", "no", "--dir", tmp, "--requirepass", password]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(0.5)
                        s.connect(str(sock))
                        s.sendall(b"PING\r\n")
                        if s.recv(64):  # -NOAUTH: up
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start within 20 s") from None
                    time.sleep(0.05)
            yield str(sock), port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def at_redis() -> Iterator[tuple[str, int]]:
    """One redis-server (password ``p@ss``) for the module's URL tests: (socket, port)."""
    with _redis_on_a_socket(AT_PASSWORD) as server:
        yield server


async def _pings_and_stores(url: str) -> RedisStore:
    """A store on ``url`` that pings and round-trips a value (so it authenticated); closed."""
    store = RedisStore(url, op_timeout=OP)
    try:
        await store.ping()
        assert await store.set("url", "v", ttl=60)
        entry = await store.get("url")
        assert entry is not None
        assert entry.value == "v"
        return store
    finally:
        await store.close()


async def test_a_unix_url_without_an_authority_reaches_its_socket(
    at_redis: tuple[str, int],
) -> None:
    """``unix:/path`` (no ``//``) is a socket path for urllib and redis-py: it was refused as
    "must start with unix://"."""
    sock, _ = at_redis
    store = await _pings_and_stores(f"unix:{sock}?password=p%40ss")
    assert repr(store).startswith(f"RedisStore(url='unix:{sock}?password=***'")
    assert "p%40ss" not in repr(store)


async def test_an_at_in_a_query_password_is_taken_as_written(at_redis: tuple[str, int]) -> None:
    """redis-py reads ``?password=p@ss`` as the password ``p@ss``: refused, its '@' taken for
    a userinfo's end."""
    _, port = at_redis
    store = await _pings_and_stores(f"redis://127.0.0.1:{port}/0?password={AT_PASSWORD}")
    assert repr(store) == f"RedisStore(url='redis://127.0.0.1:{port}/0?password=***', " + (
        "prefix='le_transport')"
    )


async def test_a_client_name_holding_an_at_is_taken_as_written(at_redis: tuple[str, int]) -> None:
    """``?client_name=svc@pod-7`` was refused the same way; Redis gets that name."""
    _, port = at_redis
    url = f"redis://:p%40ss@127.0.0.1:{port}/0?client_name=svc@pod-7"
    store = RedisStore(url, op_timeout=OP)
    try:
        await store.ping()
        assert await store._client.client_getname() == "svc@pod-7"
        assert "client_name=svc@pod-7" in repr(store)
    finally:
        await store.close()


async def test_a_percent_encoded_password_before_a_socket_path_holding_an_at(
    at_redis: tuple[str, int],
) -> None:
    """``unix://:p%40ss@/…/svc@host/redis.sock``: the last '@' is the path's, and all before it
    was taken for the userinfo (the URL refused). A socket path is absolute: the userinfo ends
    at the first '@/'."""
    sock, _ = at_redis
    store = await _pings_and_stores(f"unix://:p%40ss@{sock}")
    assert repr(store) == f"RedisStore(url='unix://{sock}', prefix='le_transport')"


@pytest.mark.parametrize(
    "url",
    [
        "unix:/run/redis/redis.sock",
        "unix:///run/user@1000/redis.sock?db=2",
        "unix://user:s3cr3t%2FPW@/run/user@1000/redis.sock?db=2",
        "unix://:s3cr3t@PW@/run/redis.sock",
        "redis://127.0.0.1:6379?password=s3cr3t@PW",
        "redis://user:s3cr3t%2FPW@127.0.0.1:6379/0?client_name=svc@pod-7&lib_name=a@b",
        "rediss://:s3cr3t@PW@[::1]:6380/0?username=me@example.com",
        "rediss://127.0.0.1:6379/0?ssl_password=s3cr3t%40PW",
    ],
)
def test_urls_redis_py_reads_are_taken_and_their_password_never_shown(url: str) -> None:
    if "ssl_password" in url and "ssl_password" not in _init_parameters(SSLConnection):
        # redis-py before 5.1: its connections do not take ssl_password, so the store is
        # refused (every operation would fail), and the refusal shows no password either.
        with pytest.raises(ConfigurationError, match="'ssl_password'") as refused:
            RedisStore(url)
        shown = str(refused.value)
    else:
        shown = repr(RedisStore(url))
    for part in ("s3cr3t", "PW"):
        assert part not in shown, shown


def _init_parameters(kind: type) -> set[str]:
    """The names ``kind(...)`` takes."""
    return set(inspect.signature(kind).parameters)


#: A password holding everything a URL gives a meaning to; each part distinctive (a capital
#: letter: temporary directories' names have none), so that none is found by chance.
URL_PASSWORD = "Zq8/kLw+Qv@Hn?Tp#Rm=="
WRONG_URL_PASSWORD = "Yx4/bNc+Dj@Fg?Ks#Wt=="
URL_PASSWORD_PARTS = ("Zq8", "kLw", "Qv", "Hn", "Tp", "Rm", "Yx4", "bNc", "Dj", "Fg", "Ks", "Wt")


def _url_forms(password: str, sock: str, port: int) -> list[str]:
    """The four URL forms above, with ``password`` written as each form takes it."""
    in_query = quote(password, safe="@/?=")  # '+' and '#' encoded: parse_qs reads the rest
    in_userinfo = quote(password, safe="@+=")  # '/', '?', '#' encoded, '@' and '+' as written
    return [
        f"unix:{sock}?password={in_query}",
        f"redis://127.0.0.1:{port}/0?password={in_query}",
        f"unix://:{in_userinfo}@{sock}",
        f"redis://:{in_userinfo}@127.0.0.1:{port}/0?client_name=svc@pod-7",
    ]


async def test_a_password_in_any_url_form_is_never_shown(
    secret_values: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The password works in each form; wrong or on a server that is gone, no repr, error or
    log line shows any part of it, as written or decoded."""
    secret_values.update((URL_PASSWORD, WRONG_URL_PASSWORD, *URL_PASSWORD_PARTS))
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    with _redis_on_a_socket(URL_PASSWORD) as (sock, port):
        for url in _url_forms(URL_PASSWORD, sock, port):
            shown.append(repr(await _pings_and_stores(url)))
        failing = [
            *_url_forms(WRONG_URL_PASSWORD, sock, port),
            *_url_forms(URL_PASSWORD, f"{sock}.gone", 1),
        ]
        for url in failing:
            store = RedisStore(url, op_timeout=OP)
            fallback = FallbackStore(store)
            try:
                assert await fallback.get("k") is None, "answered locally"
                assert not fallback.sharing
                with pytest.raises(StateStoreError) as info:
                    await store.ping()
                shown += [repr(store), repr(fallback), str(info.value)]
            finally:
                await fallback.close()
    shown += [record.getMessage() for record in caplog.records]
    assert any("shared state unavailable" in line for line in shown)
    for line in shown:
        for part in URL_PASSWORD_PARTS:
            assert part not in line, line


# -- a caller's client, named by its server -----------------------------------------------------


async def test_an_ipv6_client_is_named_by_its_server_in_brackets() -> None:
    """f"redis://{host}:{port}/{db}" with host '::1' is no URL: '<unparseable url>' was shown."""
    client = aioredis.Redis(host="::1", port=6390, db=2, password="s3cr3t-PW")
    try:
        shown = repr(RedisStore(client=client))
        assert shown == "RedisStore(url='redis://[::1]:6390/2', prefix='le_transport')"
    finally:
        await close_client(client)


async def test_a_tls_client_is_named_rediss() -> None:
    """A client whose connections are TLS ones (ssl=True, rediss://, or a subclass of
    SSLConnection) was named redis://."""

    class PinnedTLS(SSLConnection):
        pass

    clients = [
        aioredis.Redis(host="10.0.0.5", port=6380, ssl=True),
        aioredis.Redis.from_url("rediss://:s3cr3t-PW@10.0.0.5:6380/0"),
        aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=PinnedTLS, host="10.0.0.5", port=6380
            )
        ),
    ]
    try:
        for client in clients:
            shown = repr(RedisStore(client=client))
            assert shown == "RedisStore(url='rediss://10.0.0.5:6380/0', prefix='le_transport')"
        plain = aioredis.Redis(host="10.0.0.5", port=6379)
        assert "url='redis://10.0.0.5:6379/0'" in repr(RedisStore(client=plain))
        await close_client(plain)
    finally:
        for client in clients:
            await close_client(client)
