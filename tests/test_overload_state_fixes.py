"""Regressions of a review of the overload guard and the shared state stores, each on real parts.

1. A cancellation while the fleet's probe lock or a shared session's login lock was taken (the
   store had stored it, its reply not yet back), or while the probe lock was freed, left the
   lock held for its whole lease, with nobody probing or logging in.
2. RedisStore.add was a plain SET NX: a client that sends a command again after losing its
   reply (redis-py's Retry) found its own value and answered False (its own lock taken for
   another holder's).
3. A data error on one key (WRONGTYPE, a budget field that is no number) was a store-wide
   outage for a FallbackStore: every key of every account went local.
4. The Redis budget counted slots ahead of the server's clock, and any field as a retry.
5. A fleet trip entry with a long TTL held every process's breaker open for that long.
6. A retry the budget granted before its pause stayed charged when the caller was cancelled in
   the pause.
7. SharedDomainMap's fallback ran on the real clock, whatever clock the store was given.
8. OverloadGuard(store=...) defaulted account to "local": every brand sharing a store shared
   one breaker per service and host.

The guards run on virtual time; the Redis tests talk to a real redis-server (tests/redis_server.py)
and, as tests/test_redis_store.py, assert no duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from le_transport import Engine, RetryPolicy
from le_transport.clock import Clock, timeout_after
from le_transport.errors import (
    CircuitOpen,
    ConfigurationError,
    EngineClosed,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
    StateDataError,
    StateStoreError,
    TransportError,
)
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, CircuitBreaker, Outcome, RetryBudget
from le_transport.state import (
    Entry,
    FallbackStore,
    MemoryStore,
    RedisStore,
    SharedDomainMap,
    SharedSession,
    state_key,
)
from le_transport.state.redis_store import _is_data_error
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.redis_server import RedisServer, close_client, redis_server
from tests.test_guard_hot_path import _Call

__all__ = ["redis_server"]

HOST = "127.0.0.1:8080"
KEY = ("svc", HOST)
DOWN = Outcome.response(503)
#: Four failures open it for 5 s; the probe's lease is 30 s.
BREAKER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
#: Generous, as in tests/test_redis_store.py: about what the store does, not how fast.
OP = 5.0


def _probe_key() -> str:
    return state_key("1", "breaker-probe", *KEY)


def _trip_key() -> str:
    return state_key("1", "breaker", *KEY)


async def _settle_loop() -> None:
    """Let tasks the guard started (a lock's release) run."""
    for _ in range(20):
        await asyncio.sleep(0)


class _SlowAck(MemoryStore):
    """The store applies ``add`` at once, but its answer never comes back (a Redis round trip
    cut short by a cancellation); ``delete`` is cancelled before it reaches the store. Each
    stalls once, on a key holding ``marker``, when armed (``stall`` the operation's name)."""

    def __init__(self, clock: Clock, marker: str) -> None:
        super().__init__(clock)
        self.marker = marker
        self.stall: str | None = None
        self.stalled = asyncio.Event()

    async def _answer(self, op: str, key: str) -> None:
        if self.stall == op and self.marker in key:
            self.stall = None
            self.stalled.set()
            await asyncio.Event().wait()

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        stored = await super().add(key, value, ttl=ttl)
        await self._answer("add", key)
        return stored

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await self._answer("delete", key)
        return await super().delete(key, only_if=only_if)


async def _cancel_when_stalled(store: _SlowAck, job: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(job)
    await store.stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- 1. a cancellation while a lock is taken or freed ----------------------------------------------


async def _open_and_wait_out(guard: OverloadGuard, clock: VirtualClock) -> None:
    for _ in range(4):
        call = _Call(*KEY)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, DOWN)
    clock.advance(6.0)  # the 5 s break is over: half-open


async def test_a_probe_cancelled_while_the_fleets_lock_is_taken_frees_the_lock() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = _SlowAck(clock, "breaker-probe")
    a, b = (
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
        for _ in range(2)
    )
    await _open_and_wait_out(a, clock)
    store.stall = "add"
    await _cancel_when_stalled(store, a.admit(_Call(*KEY), 1))
    await _settle_loop()
    assert await MemoryStore.get(store, _probe_key()) is None, "the lock was freed"
    clock.advance(1.0)
    # No probe is out: the next caller of the fleet probes, it is not refused for 30 s.
    assert await b.admit(_Call(*KEY), 1) is None
    await a.drain()
    await b.drain()


async def test_a_probe_cancelled_while_the_fleets_lock_is_freed_frees_it_still() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = _SlowAck(clock, "breaker-probe")
    a, b = (
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
        for _ in range(2)
    )
    await _open_and_wait_out(a, clock)
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    store.stall = "delete"
    await _cancel_when_stalled(store, a.settle(probe, 1, DOWN))  # the probe failed
    await _settle_loop()
    assert await MemoryStore.get(store, _probe_key()) is None, "the lock was freed"
    clock.advance(10.5)  # the re-opened 10 s break is over
    assert await b.admit(_Call(*KEY), 1) is None, "B probes: no lock left behind"
    await a.drain()
    await b.drain()


async def _login() -> tuple[str, float | None]:
    return '{"bearer":"x"}', 3600.0


async def test_a_login_cancelled_while_its_lock_is_taken_frees_the_lock() -> None:
    clock = VirtualClock()
    store = _SlowAck(clock, "session-lock")
    a = SharedSession(store, account="1", user="bot", clock=clock)
    b = SharedSession(store, account="1", user="bot", clock=clock)
    store.stall = "add"
    await _cancel_when_stalled(store, a.login(_login))
    assert await MemoryStore.get(store, state_key("1", "session-lock", "bot")) is None
    start = clock.now()
    await b.login(_login)
    assert clock.now() - start < 1.0, "B did not wait out A's lock (60 s)"
    assert b.logins == 1


class _StallingRedis(RedisStore):
    """A RedisStore whose ``add`` runs on the server, then never answers (when armed)."""

    stall = False
    stalled: asyncio.Event

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        stored = await super().add(key, value, ttl=ttl)
        if self.stall:
            self.stall = False
            self.stalled.set()
            await asyncio.Event().wait()
        return stored


async def test_a_login_cancelled_after_redis_took_its_lock_frees_it_on_redis(
    redis_server: RedisServer,
) -> None:
    store = _StallingRedis(redis_server.url, prefix="fix-login", op_timeout=OP)
    store.stalled = asyncio.Event()
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    lock = store.key(state_key("1", "session-lock", "bot"))
    try:
        session = SharedSession(store, account="1", user="bot", clock=VirtualClock())
        store.stall = True
        task = asyncio.ensure_future(session.login(_login))
        await store.stalled.wait()
        assert await raw.get(lock) is not None, "Redis holds the lock"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await raw.get(lock) is None, "freed, not left for lock_ttl"
    finally:
        await close_client(raw)
        await store.close()


async def test_each_login_attempt_takes_the_lock_with_a_value_of_its_own() -> None:
    """A late release of an earlier attempt's lock never frees a later one's."""
    clock = VirtualClock()
    values: list[str] = []

    class Recording(MemoryStore):
        async def add(self, key: str, value: str, *, ttl: float) -> bool:
            values.append(value)
            return await super().add(key, value, ttl=ttl)

    session = SharedSession(Recording(clock), account="1", user="bot", clock=clock)
    first = await session.login(_login)
    await session.login(_login, stale=first.version)
    assert session.logins == 2
    assert len(values) == 2
    assert values[0] != values[1]


# -- 2. add is idempotent: a replayed add finds its own value -------------------------------------


async def test_an_add_sent_again_finds_its_own_value_on_every_store(
    redis_server: RedisServer,
) -> None:
    redis = RedisStore(redis_server.url, prefix="fix-add", op_timeout=OP)
    try:
        for store in (MemoryStore(VirtualClock()), redis, FallbackStore(redis)):
            assert await store.add("lock", "mine:1", ttl=30)
            assert await store.add("lock", "mine:1", ttl=30), "its own value: taken"
            assert not await store.add("lock", "theirs:1", ttl=30), "another holder's"
            assert await store.delete("lock", only_if="mine:1")
    finally:
        await redis.close()


class _CutOnce:
    """A TCP proxy to Redis that drops the client's connection at the first reply to a command
    holding ``marker``: the server ran the command, its reply is lost (a connection reset)."""

    def __init__(self, target: int, marker: bytes) -> None:
        self.target = target
        self.marker = marker
        self.cut = False
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _CutOnce:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Their connections cut, the handlers end on their own (a handler of start_server
        # that is cancelled instead is logged as an error by asyncio).
        for transport in self._transports:
            transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        self._transports.add(cw.transport)
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        self._transports.add(sw.transport)
        armed = False

        async def up() -> None:
            nonlocal armed
            while data := await cr.read(65536):
                if not self.cut and self.marker in data:
                    armed = True
                sw.write(data)
                await sw.drain()

        async def down() -> None:
            while data := await sr.read(65536):
                if armed and not self.cut:
                    self.cut = True
                    cw.transport.abort()
                    return
                cw.write(data)
                await cw.drain()

        pipes = {asyncio.ensure_future(up()), asyncio.ensure_future(down())}
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            cw.transport.abort()
            sw.transport.abort()
            self._handlers.discard(me)


async def test_a_lock_whose_reply_a_retrying_client_lost_is_its_own(
    redis_server: RedisServer,
) -> None:
    """A client of the caller's with redis-py's Retry (its default since redis-py 6) sends the
    add again after the connection reset: a plain SET NX answered False for its own lock."""
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with _CutOnce(redis_server.port, b"lock-value-7f3a") as proxy:
        client = aioredis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            retry=Retry(NoBackoff(), 3),
            retry_on_error=[RedisConnectionError],
        )
        store = RedisStore(client=client, prefix="fix-replay", op_timeout=OP)
        try:
            assert await store.add("lock", "lock-value-7f3a", ttl=30)
            assert proxy.cut, "the reply of the first send was lost"
            assert await raw.get(store.key("lock")) == "lock-value-7f3a"
        finally:
            await store.close()
            await close_client(client)
            await close_client(raw)


# -- 3. one key's data error is that key's damage, not an outage -----------------------------------


async def test_a_key_of_the_wrong_type_is_that_keys_damage_not_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    redis = RedisStore(redis_server.url, prefix="fix-wrongtype", op_timeout=OP)
    fallback = FallbackStore(redis)
    poisoned = state_key("evil", "breaker", "x", "h")
    session = state_key("good", "session", "bob")
    try:
        await raw.lpush(redis.key(poisoned), "junk")
        with pytest.raises(StateDataError) as raised:
            await redis.get(poisoned)
        assert raised.value.key == poisoned
        assert isinstance(raised.value, StateStoreError), "still a StateStoreError"
        with caplog.at_level(logging.WARNING, logger="le_transport.state"):
            assert await fallback.get(poisoned) is None
            assert await fallback.get(poisoned) is None
            assert not await fallback.set(poisoned, "v", ttl=30, only_if="w")
            assert not await fallback.add(poisoned, "v", ttl=30)
            assert await fallback.budget(poisoned, RetryBudget(), withdraw=True), "locally"
        assert fallback.sharing
        assert fallback.fallbacks == 0
        await fallback.set(session, '{"v":2}', ttl=60)
        assert await raw.get(redis.key(session)) == '{"v":2}', "other keys still shared"
        warned = [r for r in caplog.records if poisoned in r.getMessage()]
        assert len(warned) == 1, "one warning for the key, not one per read"
        assert "junk" not in warned[0].getMessage()
        # Repaired (written over), it is shared again.
        await raw.delete(redis.key(poisoned))
        await fallback.set(poisoned, "fresh", ttl=30)
        entry = await fallback.get(poisoned)
        assert entry is not None
        assert entry.value == "fresh"
    finally:
        await close_client(raw)
        await fallback.close()


async def test_a_damaged_keys_error_names_the_key_redis_holds(redis_server: RedisServer) -> None:
    # The message named the store's key ("evil:breaker:x:h"): neither the prefix nor, for a
    # budget, the window's hash ("...:10x3.0s"), the key an operator has to inspect or delete.
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    redis = RedisStore(redis_server.url, prefix="fix-named", op_timeout=OP)
    policy = RetryBudget()
    plain = state_key("evil", "breaker", "x", "h")
    budget = state_key("evil", "budget", "svc")
    window = redis._budget_key(budget, policy)
    try:
        await raw.lpush(redis.key(plain), "junk")
        await raw.lpush(window, "junk")
        with pytest.raises(StateDataError) as raised:
            await redis.get(plain)
        assert raised.value.key == plain
        assert repr(redis.key(plain)) in str(raised.value)
        for op in (
            redis.budget(budget, policy, deposits=1),
            redis.refund(budget, policy, age=0.0),
        ):
            with pytest.raises(StateDataError) as raised:
                await op
            assert raised.value.key == budget, "the store's key, which the fallback tracks"
            assert repr(window) in str(raised.value)
    finally:
        await close_client(raw)
        await redis.close()


async def test_a_budget_field_that_is_no_number_is_dropped_not_an_outage(
    redis_server: RedisServer,
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    redis = RedisStore(redis_server.url, prefix="fix-garbage", op_timeout=OP)
    fallback = FallbackStore(redis)
    policy = RetryBudget()
    key = state_key("1", "budget", "svc")
    rkey = redis._budget_key(key, policy)  # the hash of the policy's window
    try:
        cur = await _server_slot(raw, policy)
        await raw.hset(rkey, mapping={f"q:{cur}": "garbage", f"r:{cur}": "1.5"})
        assert await fallback.budget(key, policy, deposits=1, withdraw=True)
        assert fallback.sharing
        assert fallback.fallbacks == 0
        held = await raw.hgetall(rkey)
        assert held.get(f"q:{cur}") == "1" or held.get(f"q:{cur + 1}") == "1"
        assert "garbage" not in held.values()
        assert "1.5" not in held.values()
    finally:
        await close_client(raw)
        await fallback.close()


@pytest.mark.parametrize(
    ("error", "data"),
    [
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), True),
        (ResponseError("user_script:17: attempt to perform arithmetic on a nil value"), True),
        (ResponseError("hash value is not an integer"), True),
        (ReadOnlyError("You can't write against a read only replica."), False),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), False),
        (ResponseError("user_script:2: -OOM command not allowed"), False),
        (ResponseError("BUSY Redis is busy running a script"), False),
        (RedisConnectionError("Connection reset by peer"), False),
    ],
    ids=repr,
)
def test_only_an_error_about_a_keys_data_is_that_keys_damage(error: Exception, data: bool) -> None:
    """The server's own conditions (a replica, memory, a busy script) stay outages."""
    assert _is_data_error(error) is data


# -- 4. the Redis budget never counts slots ahead of the server's clock ----------------------------


async def _server_slot(raw: Any, policy: RetryBudget) -> int:
    secs, usecs = await raw.time()
    return math.floor((float(secs) + float(usecs) / 1e6) / policy.slot_length)


async def test_the_shared_budget_counts_no_slot_a_window_ahead_and_no_stray_field(
    redis_server: RedisServer,
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(redis_server.url, prefix="fix-ahead", op_timeout=OP)
    policy = RetryBudget(ratio=0.1, min_retries_per_second=0.1, window=30.0)  # 3 s slots
    key = "svc"
    try:
        cur = await _server_slot(raw, policy)
        # Counted on a server whose clock ran an hour ahead; and a field of nobody's.
        rkey = store._budget_key(key, policy)  # the hash of the policy's window
        await raw.hset(rkey, mapping={f"r:{cur + 1200}": 50, f"x:{cur}": 50})
        await store.budget(key, policy, deposits=100)
        assert await store.budget(key, policy, withdraw=True), "10 + 3 retries allowed"
        held = await raw.hgetall(rkey)
        assert f"r:{cur + 1200}" not in held
        assert f"x:{cur}" not in held
    finally:
        await close_client(raw)
        await store.close()


async def test_the_shared_budget_folds_a_slot_less_than_a_window_ahead_into_the_current(
    redis_server: RedisServer,
) -> None:
    """A clock stepped back by a second keeps what it counted (as the pure policy counts a
    reading from the past in its newest slot), and the slot no longer lives on ahead."""
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(redis_server.url, prefix="fix-fold", op_timeout=OP)
    policy = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=30.0)  # 3 retries
    try:
        cur = await _server_slot(raw, policy)
        rkey = store._budget_key("svc", policy)  # the hash of the policy's window
        await raw.hset(rkey, f"r:{cur + 2}", 3)
        assert not await store.budget("svc", policy, withdraw=True), "the 3 are counted"
        fields = await raw.hkeys(rkey)
        assert all(int(f[2:]) <= cur + 1 for f in fields), fields
    finally:
        await close_client(raw)
        await store.close()


# -- 5. an over-long fleet break is clamped -------------------------------------------------------


async def test_a_fleet_break_longer_than_the_breaker_ever_takes_is_clamped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    breaker = CircuitBreaker()
    guard = OverloadGuard(budget=None, breaker=breaker, store=store, account="1", clock=clock)
    value = json.dumps({"opens": 1, "half_open": 30})
    await store.set(_trip_key(), value, ttl=30 * 86400.0)  # a 30-day "break"
    longest = breaker.longest_break + breaker.probe_lease
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        refused = await guard.admit(_Call(*KEY), 1)
        assert isinstance(refused, CircuitOpen)
        assert refused.retry_at - clock.now() <= longest
        clock.advance(longest / 2)
        again = await guard.admit(_Call(*KEY), 1)
        assert isinstance(again, CircuitOpen)
        assert again.retry_at == refused.retry_at, "reading it again does not start it over"
        clock.advance(longest / 2)
        assert await guard.admit(_Call(*KEY), 1) is None, "half-open: the fleet's probe goes"
    warned = [r for r in caplog.records if "longer than this process's breaker" in r.message]
    assert len(warned) == 1


async def test_a_break_the_breaker_could_take_is_adopted_as_it_is() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    breaker = CircuitBreaker()
    guard = OverloadGuard(budget=None, breaker=breaker, store=store, account="1", clock=clock)
    brk = breaker.breaks.cap * (1 + breaker.breaks.jitter)  # the longest it ever takes
    await store.set(_trip_key(), json.dumps({"opens": 6, "half_open": 30}), ttl=brk + 30)
    refused = await guard.admit(_Call(*KEY), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at == pytest.approx(clock.now() + brk)


# -- 6. a retry never sent is given back -----------------------------------------------------------


async def test_retries_of_calls_cancelled_in_their_pause_are_given_back(
    serve: ServerFactory,
) -> None:
    clock = VirtualClock()
    backend = Backend(503)
    host = await serve(backend.app())
    guard = OverloadGuard(budget=RetryBudget(), breaker=None, clock=clock)  # 10% + 3 per 30 s
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),
    ) as engine:
        # 20 callers bounding their calls to 1 s, shorter than the first pause (5 s).
        for _ in range(20):
            with pytest.raises(TimeoutError):
                async with timeout_after(clock, 1.0):
                    await engine.request("GET", "svc", "/x")
        assert backend.hits == 20, "no retry was ever sent"
        # A patient caller's retries are not refused for the retries nobody made.
        before = backend.hits
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        assert backend.hits - before == 4


async def test_a_granted_retry_abandoned_before_its_attempt_is_given_back_once() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    policy = RetryBudget(ratio=0.0, min_retries_per_second=1 / 30, window=30.0)  # one retry
    guard = OverloadGuard(budget=policy, breaker=None, clock=clock)
    call = _Call("svc", HOST)
    last = ServerStatusError("503", status=503, service="svc", method="GET", url="u")
    assert await guard.admit(call, 1) is None
    assert await guard.before_retry(call, 1, DOWN, 5.0, last) is None
    other = _Call("svc", HOST)
    assert await guard.admit(other, 1) is None
    refused = await guard.before_retry(other, 1, DOWN, 5.0, last)
    assert isinstance(refused, RetryBudgetExhausted), "the one retry is taken"
    guard.abandon(call, 2)  # the pause was cut: attempt 2 never goes
    guard.abandon(call, 2)  # twice: given back once
    assert await guard.before_retry(other, 1, DOWN, 5.0, last) is None, "given back"
    third = _Call("svc", HOST)
    assert await guard.admit(third, 1) is None
    assert isinstance(await guard.before_retry(third, 1, DOWN, 5.0, last), RetryBudgetExhausted)
    # A retry admitted (sent) stays paid for, even if abandoned in flight.
    assert await guard.admit(other, 2) is None
    guard.abandon(other, 2)
    assert isinstance(await guard.before_retry(third, 1, DOWN, 5.0, last), RetryBudgetExhausted)


async def test_a_refund_never_takes_the_budget_below_zero_nor_from_an_aged_slot() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    policy = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=30.0)  # 3 retries
    assert await store.budget("k", policy, withdraw=True)
    assert await store.refund("k", policy, age=0.0)
    assert not await store.refund("k", policy, age=0.0), "nothing more to give back"
    assert not await store.refund("other", policy, age=0.0)
    assert await store.budget("k", policy, withdraw=True)
    clock.advance(31.0)
    assert not await store.refund("k", policy, age=31.0), "its slot left the window"
    taken = [await store.budget("k", policy, withdraw=True) for _ in range(4)]
    assert taken == [True, True, True, False], "never more than the budget allows"
    with pytest.raises(ConfigurationError):
        await store.refund("k", policy, age=-1.0)


async def test_a_refund_on_redis_gives_back_one_retry_of_its_slot_only(
    redis_server: RedisServer,
) -> None:
    redis = RedisStore(redis_server.url, prefix="fix-refund", op_timeout=OP)
    fallback = FallbackStore(redis)
    policy = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=30.0)  # 3 retries
    try:
        assert [await redis.budget("k", policy, withdraw=True) for _ in range(4)] == [
            True,
            True,
            True,
            False,
        ]
        assert await redis.refund("k", policy, age=0.0)
        assert await redis.budget("k", policy, withdraw=True), "one given back"
        assert not await redis.refund("k", policy, age=3600.0), "a slot long gone: dropped"
        assert not await redis.refund("none", policy, age=0.0), "never below zero"
        # Through a FallbackStore: the shared budget and the local mirror both give it back.
        assert await fallback.budget("f", policy, withdraw=True)
        assert await fallback.refund("f", policy, age=0.0, shared=True)
        assert not await fallback.refund("f", policy, age=0.0, shared=True), "once"
    finally:
        await fallback.close()


# -- 7. SharedDomainMap falls back on the store's clock --------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_shared_domain_maps_fallback_runs_on_the_stores_clock() -> None:
    clock = VirtualClock(autojump=False)
    redis = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0", clock=clock, op_timeout=OP)
    shared = SharedDomainMap(redis, account="1", ttl=600)
    try:
        await shared.put({"svc": "svc.example.com"})  # nothing listens: kept locally
        assert await shared.get() == {"svc": "svc.example.com"}
        clock.advance(3600.0)
        assert await shared.get() is None, "its 600 s passed on the store's clock"
    finally:
        await redis.close()


class _Plain:
    """A store of the caller's that tells no clock: it is always out."""

    async def get(self, key: str) -> Entry | None:
        raise StateStoreError("down")

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        raise StateStoreError("down")

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        raise StateStoreError("down")

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        raise StateStoreError("down")

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        raise StateStoreError("down")

    async def reserve(self, key: str, bucket: Any) -> float:
        raise StateStoreError("down")

    async def close(self) -> None:
        pass


async def test_a_shared_domain_map_takes_the_clock_it_is_given() -> None:
    clock = VirtualClock(autojump=False)
    shared = SharedDomainMap(_Plain(), account="1", ttl=600, clock=clock)
    await shared.put({"svc": "svc.example.com"})
    clock.advance(601.0)
    assert await shared.get() is None
    with pytest.raises(ConfigurationError, match="clock"):
        SharedDomainMap(_Plain(), account="1", clock=VirtualClock)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        SharedDomainMap(_Plain(), account="1", clock="now")  # type: ignore[arg-type]


# -- 8. a guard on a shared store names its account ------------------------------------------------


def test_a_guard_on_a_store_requires_its_account() -> None:
    clock = VirtualClock(autojump=False)
    with pytest.raises(ConfigurationError, match=r"OverloadGuard\.account is required"):
        OverloadGuard(store=MemoryStore(clock), clock=clock)
    OverloadGuard(clock=clock)  # no store: nothing shared, no account needed
    with pytest.raises(ConfigurationError, match="account"):
        OverloadGuard(store=MemoryStore(clock), account="", clock=clock)


async def test_two_accounts_on_one_store_have_breakers_of_their_own() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    shared = MemoryStore(clock)
    a = OverloadGuard(budget=None, breaker=BREAKER, store=shared, account="a", clock=clock)
    b = OverloadGuard(budget=None, breaker=BREAKER, store=shared, account="b", clock=clock)
    for _ in range(8):  # brand A hits its own rate limit
        call = _Call(*KEY)
        await a.admit(call, 1)
        await a.settle(call, 1, Outcome.response(429))
    clock.advance(1.5)
    assert await b.admit(_Call(*KEY), 1) is None, "brand B is not refused for A's 429s"


# -- 7. an engine closed with the fleet's probe in flight ------------------------------------------


class _RoundTrip(MemoryStore):
    """Stands for Redis: a compare-and-delete answers after a network round trip."""

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        for _ in range(100):  # many turns of the loop, none of them idle (virtual time stands)
            await asyncio.sleep(0)
        return await super().delete(key, only_if=only_if)


class _ProbeServer:
    """A service that fails (503) until told to answer, then holds each call until released:
    the fleet's probe stays in flight. The guard and store every engine of a test shares."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.store = _RoundTrip(self.clock)
        self.guard = OverloadGuard(
            budget=None, breaker=BREAKER, store=self.store, account="1", clock=self.clock
        )
        self.arrived = asyncio.Event()
        self.held = asyncio.Event()
        self.status = 503
        self.host = ""

    async def serve(self, serve: ServerFactory) -> _ProbeServer:
        app = web.Application()
        app.router.add_get("/x", self._answer)
        self.host = await serve(app)
        return self

    async def _answer(self, request: web.Request) -> web.Response:
        if self.status == 200:
            self.arrived.set()
            await self.held.wait()
        return web.Response(status=self.status)

    def engine(self) -> Engine:
        return Engine(
            {"svc": self.host},
            scheme="http",
            clock=self.clock,
            overload=self.guard,
            retry=RetryPolicy(pauses=(), attempt_timeout=None),
        )

    @property
    def probe_key(self) -> str:
        return state_key("1", "breaker-probe", "svc", self.host)


async def test_an_engine_closed_with_the_fleets_probe_in_flight_frees_its_lock_before_it_returns(
    serve: ServerFactory,
) -> None:
    """The probe in flight was cut only as the session closed, after the guard's drain: its
    abandon started the lock's release as a task that close() left running (cancelled with
    the loop at a rolling deploy), and every other process was refused for the lock's lease
    (30 s) with no probe out."""
    it = await _ProbeServer().serve(serve)
    engine = it.engine()
    await engine.start()
    try:
        for _ in range(4):
            with pytest.raises(RetriesExhausted):
                await engine.request("GET", "svc", "/x")
        await it.clock.sleep(6.0)  # the break is over: the next call is the fleet's probe
        it.status = 200
        probe = asyncio.ensure_future(engine.request("GET", "svc", "/x"))
        await it.arrived.wait()
        assert await MemoryStore.get(it.store, it.probe_key), "the probe holds the lock"
        await engine.close()
        assert not it.guard._releases, "no task of the guard outlives the engine's close"
        assert await MemoryStore.get(it.store, it.probe_key) is None, "the lock was freed"
        with pytest.raises(EngineClosed):
            await probe
    finally:
        it.held.set()
        await engine.close()


async def test_closing_one_engine_never_waits_for_the_probe_of_another_sharing_its_guard(
    serve: ServerFactory,
) -> None:
    """Its drain waited for every fleet probe of the guard: a probe of another engine, which
    this close does not cut, held it for the whole grace (a second a close at shutdown)."""
    it = await _ProbeServer().serve(serve)
    a, b = it.engine(), it.engine()
    await a.start()
    await b.start()
    try:
        for _ in range(4):
            with pytest.raises(RetriesExhausted):
                await b.request("GET", "svc", "/x")
        await it.clock.sleep(6.0)
        it.status = 200
        probe = asyncio.ensure_future(b.request("GET", "svc", "/x"))
        await it.arrived.wait()
        started = it.clock.now()
        await a.close()
        assert it.clock.now() - started < 0.5, "A's close waited for B's probe"
        assert not probe.done()
        assert await MemoryStore.get(it.store, it.probe_key)
        it.held.set()
        assert (await probe).status == 200
    finally:
        it.held.set()
        await a.close()
        await b.close()


async def test_closing_an_engine_never_waits_for_a_probe_on_a_callers_session(
    serve: ServerFactory,
) -> None:
    """A caller's own session with the engine's middlewares shares its retry middleware, by
    which probes were told apart: its probe, which the close does not cut, held the close for
    the whole grace."""
    it = await _ProbeServer().serve(serve)
    engine = it.engine()
    await engine.start()
    session = aiohttp.ClientSession(middlewares=engine.middlewares)
    probe: asyncio.Future[aiohttp.ClientResponse] | None = None
    try:
        for _ in range(4):
            with pytest.raises(TransportError):
                await session.get(f"http://{it.host}/x")
        await it.clock.sleep(6.0)
        it.status = 200
        probe = asyncio.ensure_future(session.get(f"http://{it.host}/x"))
        await it.arrived.wait()
        started = it.clock.now()
        await engine.close()
        assert it.clock.now() - started < 0.5
        assert not probe.done()
    finally:
        it.held.set()
        await engine.close()
        if probe is not None:
            with contextlib.suppress(Exception):
                (await probe).release()
        await session.close()
