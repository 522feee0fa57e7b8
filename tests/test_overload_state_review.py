"""Regressions of a review of the overload guard and the state stores, each on real parts.

1. A half-open probe cancelled while the guard still admitted it (the shared budget answering)
   held the breaker and the fleet's probe lock for the whole lease.
2. A Redis URL whose password a parser misreads (an unencoded '/') showed it in the store's
   repr, its errors, the fallback's warning and a ConfigurationError.
3. A redis.asyncio.Redis without decode_responses answered bytes, read as "b'...'": the fleet
   silently stopped sharing its breaker trips.
4. A trip entry with a TTL of inf or NaN kept the breaker open for ever.
5. After the fleet's one probe succeeded, every other process half-open on the break sent a
   probe of its own, one at a time, refusing calls meanwhile.
6. A wrong client or clock given to RedisStore was taken for a Redis outage, silently.
7. MemoryStore.deposit took a negative count, and raised AttributeError for a wrong policy.

The guards run on virtual time; the Redis tests talk to a real redis-server (tests/redis_server.py)
and, as tests/test_redis_store.py, assert no duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis

from le_transport.errors import CircuitOpen, ConfigurationError, StateStoreError
from le_transport.events import EventHooks, StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    RetryBudget,
    TokenBucket,
)
from le_transport.state import (
    Entry,
    FallbackStore,
    MemoryStore,
    RedisStore,
    SharedSession,
    StateStore,
    state_key,
)
from le_transport.state.store import MAX_TTL
from le_transport.testing import VirtualClock
from tests.redis_server import RedisServer, close_client, redis_server, require_redis_server
from tests.test_guard_hot_path import _Call

__all__ = ["redis_server"]

HOST = "127.0.0.1:8080"
KEY = ("svc", HOST)
DOWN = Outcome.response(503)
OK = Outcome.response(200)
#: Four failures open it for 5 s; the probe's lease is 30 s.
BREAKER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
#: Generous, as in tests/test_redis_store.py: about what the store does, not how fast.
OP = 5.0


def _trip_key() -> str:
    return state_key("1", "breaker", *KEY)


def _probe_key() -> str:
    return state_key("1", "breaker-probe", *KEY)


def _guard(store: StateStore, clock: VirtualClock, **options: Any) -> OverloadGuard:
    options.setdefault("budget", None)
    return OverloadGuard(breaker=BREAKER, store=store, account="1", clock=clock, **options)


async def _trip(guard: OverloadGuard) -> None:
    for _ in range(BREAKER.minimum_throughput):
        call = _Call(*KEY)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, DOWN)
    assert guard.breaker_state(*KEY) is BreakerState.OPEN


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(50):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


# -- 1. a probe cancelled while the guard still admits it ------------------------------------------


class _HangingBudget(MemoryStore):
    """A shared store (Redis, say) whose budget round trip, once ``hang`` is set, waits until
    cancelled, or, with ``refuse``, raises TypeError (the protocol not kept: through the guard's
    FallbackStore, a ConfigurationError)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hang = False
        self.refuse = False
        self.asked = asyncio.Event()

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        if self.hang:
            self.asked.set()
            if self.refuse:
                raise TypeError("refused")
            await asyncio.Event().wait()
        return await super().budget(key, policy, deposits=deposits, withdraw=withdraw)


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_a_probe_ended_while_the_shared_budget_answers_frees_its_slot_and_the_fleets_lock(
    ending: str,
) -> None:
    """The attempt was admitted as the probe (its slot and the fleet's lock taken), then the
    guard awaited the shared budget for its first attempt; cancelled there (the caller's own
    timeout), or failed, admit never returned, so the retry loop never abandoned it: the whole
    fleet got CircuitOpen for the 30 s lease with no probe out."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _HangingBudget(clock)
    a, b = (_guard(store, clock, budget=RetryBudget(), flush_interval=0.0) for _ in range(2))
    await _trip(a)
    clock.advance(5.0)  # the break is over: one probe may go
    store.hang = True
    store.refuse = ending == "failed"
    probe = _Call(*KEY)
    admitting = asyncio.ensure_future(a.admit(probe, 1))
    await store.asked.wait()
    if ending == "cancelled":
        assert await MemoryStore.get(store, _probe_key()) is not None, "the probe took the lock"
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
    else:
        with pytest.raises(ConfigurationError):
            await admitting
    store.hang = False
    await _until(lambda: not a._releases)  # the lock's release runs
    assert not a._probes, "no probe is out"
    assert await MemoryStore.get(store, _probe_key()) is None, "the fleet's lock is free"
    assert a._status[KEY].probe_until is None, "this process's half-open slot is free"
    clock.advance(1.0)
    assert await b.admit(_Call(*KEY), 1) is None, "another process probes at once"
    assert b._probes


# -- 2. a Redis URL's password, whatever it holds, is never shown ----------------------------------

#: A password as generated ones are (base64: '/', '+', '='), with an '@' too.
PASSWORD = "4711/Zq8+kLw@x=="
#: What must never be shown: the password, and each part of it a parser could split off.
PASSWORD_PARTS = (PASSWORD, "4711/Zq8", "Zq8+kLw", "kLw@x==")


@pytest.mark.parametrize(
    "url",
    [
        "redis://default:4711/Zq8+kLw@x==@127.0.0.1:1/0",
        "redis://default:4711/Zq8+kLw==@127.0.0.1:1/0",
        "redis://:s3cr3t/PWkLw@127.0.0.1:6379/0",
        "rediss://user:Zq8+kLw?x==@127.0.0.1:6380/0",
        "redis://user:Zq8+kLw#x==@127.0.0.1:6379/0",
        # A '?' in the password, what follows it read as a query: an '@' in a value is taken
        # only for redis-py's text parameters (password=, client_name=, ...).
        "redis://user:4711?x=Zq8@127.0.0.1:6380/0",
        "redis://:Zq8@kLw?4711@127.0.0.1:6379/0",
        "redis://:Zq8@kLw/4711@127.0.0.1:6379/0?password=x",
        "unix://:4711/Zq8+kLw@/run/redis.sock?db=0",
        "unix://:4711?Zq8+kLw@/run/redis.sock",
        # A socket path starts at the first '@/': a password holding one could end at either.
        "unix://:Zq8@/kLw4711@/run/redis.sock",
    ],
)
def test_a_url_whose_password_a_parser_would_misread_is_refused_without_showing_it(
    url: str,
) -> None:
    """An unencoded '/', '?' or '#' ends the authority for every URL parser: 'default:4711'
    read as a host and a port, the rest of the password as the path, shown in the repr, every
    error and the fallback's warning (or, as a port, quoted in a ConfigurationError). Such a
    URL cannot work (redis-py connects to the wrong host): refused, saying how to write it."""
    with pytest.raises(ConfigurationError, match="percent-encoded") as info:
        RedisStore(url)
    text = str(info.value)
    for part in ("4711", "Zq8", "kLw", "s3cr3t", "PW"):
        assert part not in text


@pytest.mark.parametrize("url", ["redis://user:s3cr3tPWkLw", "redis://:Zq8kLw@127.0.0.1:port/0"])
def test_a_url_redis_py_cannot_parse_is_refused_without_its_parsers_message(url: str) -> None:
    """urllib's message names the port it could not read: the password, when the URL holds one
    without its '@'."""
    with pytest.raises(ConfigurationError, match="no URL redis-py can read") as info:
        RedisStore(url)
    assert "s3cr3t" not in str(info.value)
    assert "kLw" not in str(info.value)


async def test_a_password_parsers_read_works_and_is_never_shown(
    secret_values: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A password holding '/', '+', '=' and an '@' (the '/' percent-encoded, as the refusal
    says; an unencoded '@' in the authority is the last '@' that ends the userinfo): Redis
    takes it, and no repr, error or log line shows it, wrong or unreachable."""
    written = PASSWORD.replace("/", "%2F")
    secret_values.update((*PASSWORD_PARTS, written))
    binary = require_redis_server()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(binary, Path(tmp), password=PASSWORD)
        server.start()
        try:
            good = RedisStore(f"redis://default:{written}@127.0.0.1:{server.port}/0", op_timeout=OP)
            try:
                assert await good.set("k", "v", ttl=60)
                entry = await good.get("k")
                assert entry is not None
                assert entry.value == "v", "authenticated with the password"
                shown = [repr(good)]
            finally:
                await good.close()
            wrong_password = "9911/Zq8+kLw@y=="
            secret_values.update((wrong_password, quote(wrong_password, safe="@+=")))
            wrong = f"redis://default:{quote(wrong_password, safe='@+=')}@127.0.0.1"
            for url in (f"{wrong}:{server.port}/0", f"redis://default:{written}@127.0.0.1:1/0"):
                store = RedisStore(url, op_timeout=OP)
                fallback = FallbackStore(store)
                try:
                    assert await fallback.get("k") is None, "answered locally"
                    assert not fallback.sharing
                    with pytest.raises(StateStoreError) as info:
                        await store.get("k")
                    shown += [repr(store), repr(fallback), str(info.value)]
                finally:
                    await fallback.close()
        finally:
            server.stop()
    shown += [record.getMessage() for record in caplog.records]
    assert any("shared state unavailable" in line for line in shown)
    for line in shown:
        for part in (*PASSWORD_PARTS, "9911/Zq8", "%2FZq8"):
            assert part not in line, line


# -- 3. a client without decode_responses ----------------------------------------------------------


async def test_a_client_answering_bytes_reads_values_as_they_were_written(
    redis_server: RedisServer,
) -> None:
    """redis-py's default (decode_responses=False) answers bytes: every value read back was
    "b'...'", so the fleet's trips, sessions and domain map all read as damaged."""
    client = aioredis.Redis.from_url(redis_server.url)  # redis-py's defaults
    store = RedisStore(client=client, op_timeout=OP)
    try:
        for value in ("hello", "héllo ✓", '{"opens": 1}'):
            assert await store.set("k", value, ttl=60)
            entry = await store.get("k")
            assert entry is not None
            assert entry.value == value
        assert await store.set("k", "new", ttl=60, only_if='{"opens": 1}'), "compared as str"
        assert await store.delete("k", only_if="new")
        wait = await store.reserve("pace", TokenBucket(rate=1.0, burst=1.0))
        assert wait == 0.0
        await client.set("test:raw", b"\xff\xfe not utf-8")
        raw = await RedisStore(client=client, prefix="test", op_timeout=OP).get("raw")
        assert raw is not None, "read (as damaged), not a failed operation"
        assert raw.value.endswith(" not utf-8")
    finally:
        await close_client(client)


async def test_a_callers_client_is_named_by_its_own_server_never_the_unused_url(
    redis_server: RedisServer,
) -> None:
    """With client=, the url argument goes unused: errors and the repr named the default
    redis://127.0.0.1:6379/0, pointing whoever reads them at the wrong server."""
    client = aioredis.Redis.from_url(redis_server.url, password=None)
    try:
        store = RedisStore(client=client, op_timeout=OP)
        port = client.connection_pool.connection_kwargs["port"]
        assert f":{port}/" in repr(store)
        assert ":6379" not in repr(store)
    finally:
        await close_client(client)
    secret_client = aioredis.Redis(host="127.0.0.1", port=1, password="s3cr3t-pw")
    try:
        store = RedisStore(client=secret_client, op_timeout=OP)
        assert "s3cr3t" not in repr(store)
        with pytest.raises(StateStoreError) as caught:
            await store.get("k")
        assert "127.0.0.1:1/0" in str(caught.value)
        assert "s3cr3t" not in str(caught.value)
    finally:
        await close_client(secret_client)


async def test_a_break_published_through_a_bytes_client_is_adopted_by_the_fleet(
    redis_server: RedisServer,
) -> None:
    """The reviewer's consequence: process B, on a client without decode_responses, took A's
    trip for damaged and kept sending to a service the fleet knew was down."""
    clock = VirtualClock(start=100.0, autojump=False)
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(2)]
    a, b = (
        _guard(RedisStore(client=client, op_timeout=OP), clock, sync_interval=0.0)
        for client in clients
    )
    try:
        await _trip(a)
        refused = await b.admit(_Call(*KEY), 1)
        assert isinstance(refused, CircuitOpen), "B adopted A's break"
        assert b.breaker_state(*KEY) is BreakerState.OPEN
    finally:
        for client in clients:
            await close_client(client)


# -- 4. a trip entry whose TTL is no finite number -------------------------------------------------


class _OddTtlStore(MemoryStore):
    """A caller's store that reports the breaker trip's TTL as ``odd`` (inf for "no expiry",
    a NaN from a bad conversion, ...)."""

    def __init__(self, clock: VirtualClock, odd: object) -> None:
        super().__init__(clock)
        self.odd = odd

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        if entry is not None and ":breaker:" in key:
            return Entry(entry.value, self.odd)  # type: ignore[arg-type]
        return entry


@pytest.mark.parametrize(
    "odd", [math.inf, -math.inf, math.nan, -1.0, MAX_TTL * 10, 10**400, "35"], ids=repr
)
async def test_a_trip_entry_whose_ttl_is_no_finite_number_is_damaged_and_ignored(
    odd: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken as is, the break ended at now + inf (or NaN): every call refused for ever, and the
    guard never read the store again while its breaker was open."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _OddTtlStore(clock, odd)
    await store.set(_trip_key(), json.dumps({"opens": 1, "half_open": 30.0}), ttl=35.0)
    guard = _guard(store, clock)
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        for _ in range(3):
            call = _Call(*KEY)
            assert await guard.admit(call, 1) is None
            await guard.settle(call, 1, OK)
            clock.advance(2.0)  # past sync_interval: read again
    assert guard.breaker_state(*KEY) is BreakerState.CLOSED
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1, "logged once"
    assert "TTL" in warnings[0]


async def test_a_shared_session_whose_ttl_is_no_finite_number_is_damaged() -> None:
    """Its age read 0 for ever (life - inf), so no process ever refreshed it."""
    clock = VirtualClock(start=100.0, autojump=False)

    class Store(MemoryStore):
        async def get(self, key: str) -> Entry | None:
            entry = await super().get(key)
            return None if entry is None else Entry(entry.value, math.inf)

    store = Store(clock)
    session = SharedSession(store, account="1", user="bot", clock=clock)
    payload = json.dumps({"value": "v", "version": "1", "life": 600.0})
    await store.set(state_key("1", "session", "bot"), payload, ttl=600.0)
    assert await session.current() is None


# -- 5. the fleet's close --------------------------------------------------------------------------


def _hooked(store: MemoryStore, clock: VirtualClock) -> tuple[OverloadGuard, list[StateEvent]]:
    events: list[StateEvent] = []
    guard = _guard(store, clock, hooks=EventHooks(on_state=events.append))
    return guard, events


async def test_after_the_fleets_probe_succeeds_the_processes_half_open_on_its_break_close() -> None:
    """A trips; B and C adopt the break; after it, A's probe is the fleet's one and succeeds.
    B and C read that at their next sync and close: no probe of their own (each had sent one,
    one at a time through the fleet's lock, and refused calls meanwhile: theirs and the
    others')."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a = _guard(store, clock)
    (b, b_events), (c, c_events) = _hooked(store, clock), _hooked(store, clock)
    await _trip(a)
    clock.advance(1.0)
    for other in (b, c):
        assert isinstance(await other.admit(_Call(*KEY), 1), CircuitOpen), "adopted"
    clock.advance(5.0)  # the break is over
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    assert isinstance(await b.admit(_Call(*KEY), 1), CircuitOpen), "A's probe is the fleet's"
    await a.settle(probe, 1, OK)
    assert a.breaker_state(*KEY) is BreakerState.CLOSED
    clock.advance(1.0)  # past every sync_interval
    for other, events in ((b, b_events), (c, c_events)):
        calls = [_Call(*KEY) for _ in range(3)]
        for call in calls:
            assert await other.admit(call, 1) is None, "the fleet's breaker is closed"
        assert not other._probes, "no probe of its own"
        assert other.breaker_state(*KEY) is BreakerState.CLOSED
        closed = [e for e in events if e.name == "circuit_closed"]
        assert [e.details for e in closed] == [{"adopted": True}]
    assert await store.get(_probe_key()) is None, "nobody took the probe lock"


async def test_the_fleets_close_reaches_the_half_open_processes_on_redis(
    redis_server: RedisServer,
) -> None:
    """The same on a real Redis (its scripts, through the guards' FallbackStores), on the real
    clock: A's break is 0.2 s; each step waits for a state, never a time."""
    store = RedisStore(redis_server.url, prefix="closed", op_timeout=OP)
    breaker = CircuitBreaker(
        minimum_throughput=4,
        sampling_window=30.0,
        breaks=BackoffPolicy(first=0.2, jitter=0.0, floor=0.0),
    )
    a, b, c = (
        OverloadGuard(budget=None, breaker=breaker, store=store, account="1", sync_interval=0.0)
        for _ in range(3)
    )
    try:
        await _trip(a)
        for other in (b, c):
            assert isinstance(await other.admit(_Call(*KEY), 1), CircuitOpen), "adopted"
        while True:  # past the break for A, and on Redis' clock too
            entry = await store.get(_trip_key())
            assert entry is not None
            if (
                a.breaker_state(*KEY) is BreakerState.HALF_OPEN
                and entry.ttl < breaker.probe_lease - 0.05
            ):
                break
            await asyncio.sleep(0.02)
        probe = _Call(*KEY)
        assert await a.admit(probe, 1) is None
        await a.settle(probe, 1, OK)
        for other in (b, c):
            for _ in range(3):
                assert await other.admit(_Call(*KEY), 1) is None
            assert not other._probes, "no probe of its own"
            assert other.breaker_state(*KEY) is BreakerState.CLOSED
    finally:
        await store.close()


async def test_a_process_that_takes_the_lock_after_the_fleet_closed_sends_no_probe() -> None:
    """B read the trip (half-open, A's probe out) less than sync_interval before A's probe
    succeeded: its next call takes the free lock, reads the trip again before probing, finds
    the fleet's close, and goes as an ordinary attempt."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _guard(store, clock), _guard(store, clock)
    await _trip(a)
    clock.advance(5.0)
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    clock.advance(0.1)
    assert isinstance(await b.admit(_Call(*KEY), 1), CircuitOpen), "A's lock: B waits"
    clock.advance(0.1)
    await a.settle(probe, 1, OK)
    clock.advance(0.1)  # B synced 0.2 s ago: it still sees half-open
    assert b.breaker_state(*KEY) is BreakerState.HALF_OPEN
    call = _Call(*KEY)
    assert await b.admit(call, 1) is None
    assert not b._probes, "an ordinary attempt, not a probe"
    assert b.breaker_state(*KEY) is BreakerState.CLOSED
    assert await store.get(_probe_key()) is None, "B let go of the lock"
    await b.settle(call, 1, OK)
    assert b.breaker_state(*KEY) is BreakerState.CLOSED


async def test_the_fleets_close_reaches_a_process_even_after_the_trip_expired() -> None:
    """No call during the break and the lease: the trip expired. A's probe then found no entry;
    its success still tells the fleet (set-if-absent), so B, half-open on the old break, closes
    rather than probing again."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _guard(store, clock), _guard(store, clock)
    await _trip(a)
    clock.advance(1.0)
    assert isinstance(await b.admit(_Call(*KEY), 1), CircuitOpen)
    clock.advance(40.0)  # the break (5 s) and the lease (30 s) are over: the trip is gone
    assert await store.get(_trip_key()) is None
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    assert a._probes, "A's own half-open breaker probes"
    await a.settle(probe, 1, OK)
    clock.advance(1.0)
    assert await b.admit(_Call(*KEY), 1) is None
    assert not b._probes
    assert b.breaker_state(*KEY) is BreakerState.CLOSED


async def test_a_close_older_than_a_processs_own_break_is_no_verdict_on_it() -> None:
    """A close the fleet recorded before this process's break ended says nothing of it (the
    failures that opened it came after): the process probes for itself."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    d = _guard(store, clock)
    await _trip(d)  # its own break, 100 to 105
    clock.advance(6.0)
    # The fleet's close, written 20 s ago (at 86), kept 30 s: 10 s left.
    await store.set(_trip_key(), json.dumps({"closed": 30.0, "id": "x:1"}), ttl=10.0)
    probe = _Call(*KEY)
    assert await d.admit(probe, 1) is None
    assert d._probes, "its own probe"
    assert isinstance(await d.admit(_Call(*KEY), 1), CircuitOpen), "while its probe is out"
    await d.settle(probe, 1, OK)
    entry = await store.get(_trip_key())
    assert entry is not None
    assert json.loads(entry.value)["id"] != "x:1", "its success wrote the fleet's new close"


async def test_a_break_opened_after_the_fleet_closed_is_published_over_the_close() -> None:
    """The closed mark holds no break: a process opening after it publishes over it (a
    compare-and-set), and the fleet adopts that break."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b = _guard(store, clock), _guard(store, clock)
    await _trip(a)
    clock.advance(5.0)
    probe = _Call(*KEY)
    assert await a.admit(probe, 1) is None
    await a.settle(probe, 1, OK)
    clock.advance(1.0)
    await _trip(b)  # the service fails again
    entry = await store.get(_trip_key())
    assert entry is not None
    assert json.loads(entry.value)["opens"] == 1
    clock.advance(1.0)
    assert isinstance(await a.admit(_Call(*KEY), 1), CircuitOpen), "A adopts B's new break"


# -- 6. a wrong client or clock is no outage ------------------------------------------------------


def test_redis_pys_synchronous_client_is_refused_when_the_store_is_made() -> None:
    """Each operation ran on the server (blocking the loop), then failed on its answer: a
    StateStoreError, which the FallbackStore took for an outage (a SET NX lock taken on the
    server and reported as not taken)."""
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    with pytest.raises(ConfigurationError, match=r"client.*synchronous"):
        RedisStore(client=client)
    client.close()


@pytest.mark.parametrize("clock", ["not a clock", object(), 5])
def test_a_redis_store_refuses_a_clock_that_is_not_one(clock: object) -> None:
    with pytest.raises(ConfigurationError, match="clock"):
        RedisStore(clock=clock)  # type: ignore[arg-type]


class _DuckClient:
    """A client of the caller's, not redis-py's: each command as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def register_script(self, script: str) -> object:
        if self.kind == "sync scripts":
            return lambda keys=None, args=None: False

        async def run(keys: list[str] | None = None, args: list[object] | None = None) -> object:
            return False

        return run

    def set(self, *args: object, **kwargs: object) -> object:
        if self.kind == "answers a bool":
            return True  # a synchronous client's answer: nothing to await
        if self.kind == "takes no px":
            raise TypeError("set() got an unexpected keyword argument 'px'")
        return self._reset()

    async def _reset(self) -> bool:
        # What redis-py raises for a connection the server reset while idle (redis-py#4287).
        raise TypeError("'NoneType' object is not callable")

    async def delete(self, *keys: str) -> int:
        return 0

    async def ping(self) -> bool:
        return True


def test_a_client_whose_scripts_are_no_coroutines_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no coroutines"):
        RedisStore(client=_DuckClient("sync scripts"))


def test_a_client_without_the_commands_the_store_sends_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="without register_script, set, delete, ping"):
        RedisStore(client=object())


@pytest.mark.parametrize("kind", ["answers a bool", "takes no px"])
async def test_a_client_that_does_not_keep_redis_pys_api_is_no_outage(kind: str) -> None:
    """Through the FallbackStore the guard wraps it in: a ConfigurationError, and the store
    still shares (it went local for good, one warning, while Redis was up)."""
    fallback = FallbackStore(RedisStore(client=_DuckClient(kind)))
    with pytest.raises(ConfigurationError, match=r"RedisStore\.client"):
        await fallback.set("k", "v", ttl=60)
    assert fallback.sharing


async def test_a_type_error_while_an_answer_is_awaited_is_an_outage() -> None:
    """A TypeError raised inside the command (redis-py's, for a connection reset while idle) is
    the store failing, not the caller's mistake: raised as a ConfigurationError it failed the
    caller's call, where the FallbackStore goes local."""
    store = RedisStore(client=_DuckClient("resets"))
    with pytest.raises(StateStoreError, match="TypeError"):
        await store.set("k", "v", ttl=60)
    fallback = FallbackStore(store)
    assert await fallback.set("k", "v", ttl=60), "answered locally"
    assert not fallback.sharing


# -- 7. MemoryStore.deposit checks what budget() checks --------------------------------------------

POLICY = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=30.0)


@pytest.mark.parametrize("count", [-10, -1, True, 1.0, "1", None], ids=repr)
@pytest.mark.parametrize("tally", ["a new tally", "the slot's tally"])
async def test_a_deposit_count_budget_refuses_is_refused_alike(count: object, tally: str) -> None:
    """A negative count was taken (the budget's first attempts went negative, taking retries
    away), on a new tally and on the one of the slot alike."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    if tally == "the slot's tally":
        store.deposit("k", POLICY, 10)
    with pytest.raises(ConfigurationError, match="deposits") as refused:
        store.deposit("k", POLICY, count)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as by_budget:
        await store.budget("k", POLICY, deposits=count)  # type: ignore[arg-type]
    assert str(refused.value) == str(by_budget.value)
    store.deposit("k", POLICY, 0)
    store.deposit("k", POLICY)
    store.deposit("k", POLICY, 2)
    held = 10 if tally == "the slot's tally" else 0
    allowed = [await store.budget("k", POLICY, withdraw=True) for _ in range(held + 3)]
    assert sum(allowed) == int(POLICY.ratio * (held + 3)), "every valid first attempt counted"


@pytest.mark.parametrize("tally", ["a new tally", "the slot's tally"])
async def test_a_deposit_on_a_policy_that_is_no_budget_is_refused(tally: str) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    if tally == "the slot's tally":
        store.deposit("k", POLICY)
    for policy in ("not a policy", None, BREAKER):
        with pytest.raises(ConfigurationError, match="RetryBudget"):
            store.deposit("k", policy)  # type: ignore[arg-type]
