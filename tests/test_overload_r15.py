"""Regressions of a review of the overload guard and the state stores (round 15).

1. A retry given back to a MemoryStore (a call cancelled in its pause) aged the budget to the
   refund's time past the first attempts the store still held in a batch; recorded later, those
   landed in the refund's slot and paid for retries a whole window longer.
2. Fleet members whose RetryBudget differ in slot length or slots (a rolling deploy, two apps
   sharing a prefix) counted on one Redis hash (and one MemoryStore state), each deleting the
   other's slots as out of its window: the fleet's budget vanished.
3. A break adopted from the fleet (at a sync, or at the probe's re-read of the trip) opened the
   breaker silently: no ``circuit_open`` event, no warning, yet the close was reported.
4. A reconnect bucket on Redis whose ``updated`` was ahead of the server's clock (a failover to
   a replica whose clock is behind, an NTP step) made every reservation wait for the clock to
   catch up.

The guards run on virtual time; the Redis tests talk to a real redis-server
(tests/redis_server.py).
"""

from __future__ import annotations

import logging
import math
import time

import pytest
import redis.asyncio as aioredis

from le_transport import Engine, RetryPolicy
from le_transport.clock import timeout_after
from le_transport.errors import CircuitOpen, RetriesExhausted, RetryBudgetExhausted
from le_transport.events import EventHooks, StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, RetryBudget
from le_transport.policies.classify import Outcome
from le_transport.state import MemoryStore, RedisStore, state_key
from le_transport.state.pacing import FleetPacer
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.redis_server import RedisServer, close_client, redis_server
from tests.test_guard_hot_path import _Call

__all__ = ["redis_server"]

OP = 1.0
HOST = "127.0.0.1:8080"


# -- 1. a refund records the first attempts held in a batch first ----------------------------------


async def test_a_refund_records_the_held_first_attempts_before_it_ages_the_budget() -> None:
    """100 first attempts at t=1 were held in a batch when a refund at t=25 aged the budget
    to slot 8; recorded afterwards, they counted in slot 8 and still paid for 10 retries at
    t=31.5, after their own slot (0) had left the 30 s window."""
    clock = VirtualClock(autojump=False)
    store = MemoryStore(clock)
    policy = RetryBudget()  # 10% + 3 per 30 s, in 3 s slots
    key = state_key("1", "budget", "svc")
    assert await store.budget(key, policy, withdraw=True)  # t=0: a retry is paid
    clock.advance(1.0)
    store.deposit(key, policy, 100)  # t=1: held in a batch (slot 0)
    clock.advance(24.0)
    assert await store.refund(key, policy, age=25.0)  # t=25: the retry was never sent
    clock.advance(6.5)  # t=31.5: slot 0 left the window
    granted = 0
    while await store.budget(key, policy, withdraw=True):
        granted += 1
        assert granted < 50
    assert granted == 3, f"{granted} retries: the floor alone (3 per 30 s) pays now"


async def _spent_after(serve: ServerFactory, cancel: bool) -> int:
    clock = VirtualClock()
    svc, other = Backend(503), Backend(503)
    guard = OverloadGuard(budget=RetryBudget(), breaker=None, clock=clock)
    policy = RetryPolicy(attempt_timeout=None)
    domains = {"svc": await serve(svc.app()), "other": await serve(other.app())}
    async with Engine(domains, scheme="http", clock=clock, overload=guard, retry=policy) as engine:
        if cancel:
            # A caller bounding its call to 1 s: its retry (paid at t=0) is never sent.
            with pytest.raises(TimeoutError):
                async with timeout_after(clock, 1.0):
                    await engine.request("GET", "svc", "/x")
        else:
            await clock.sleep(1.0)  # the same, with no call cut short
        assert clock.now() == 1.0
        svc.status = 200
        once = RetryPolicy(pauses=(), attempt_timeout=None)
        for _ in range(100):  # 100 first attempts that succeed, in slot 0 (t in [1, 3))
            await engine.request("GET", "svc", "/x", retry=once)
        await clock.sleep(25.0 - clock.now())  # t=25: another service retries (the refund)
        with pytest.raises(RetryBudgetExhausted):
            await engine.request(
                "GET",
                "other",
                "/x",
                retry=RetryPolicy(pauses=(0.1,) * 4, attempt_timeout=None),
            )
        await clock.sleep(31.5 - clock.now())  # t=31.5: slot 0 left the window
        svc.status = 503
        before = svc.hits
        with pytest.raises((RetriesExhausted, RetryBudgetExhausted)):
            await engine.request(
                "GET", "svc", "/x", retry=RetryPolicy(pauses=(0.01,) * 20, attempt_timeout=None)
            )
        return svc.hits - before - 1  # the retries sent


async def test_a_refund_in_an_engine_does_not_keep_old_first_attempts_paying(
    serve: ServerFactory,
) -> None:
    """The same through an Engine and the guard's own MemoryStore: a caller's cancelled retry,
    given back at the next withdrawal, let 13 retries through at t=31.5 instead of 3."""
    without = await _spent_after(serve, cancel=False)
    with_refund = await _spent_after(serve, cancel=True)
    assert without == 3, without  # the floor: 3 per 30 s
    assert with_refund == without, f"{with_refund} retries allowed after the refund"


# -- 2. each budget setting keeps its own window ---------------------------------------------------

OLD = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=30.0)  # 3 retries / 30 s
NEW = RetryBudget(ratio=0.0, min_retries_per_second=0.05, window=60.0)  # 3 retries / 60 s
# 3 s slots as OLD's, 20 of them: 6 retries / 60 s.
SAME_SLOTS = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=60.0, slots=20)


async def test_two_budget_settings_on_one_redis_key_keep_their_own_windows(
    redis_server: RedisServer,
) -> None:
    """Two processes whose budgets differ in slot length shared one hash: each one's script
    read the other's slots as far outside its window and deleted them, and the fleet retried
    without bound (60 retries granted where 6 were allowed)."""
    a = RedisStore(redis_server.url, prefix="r15-mixed", op_timeout=OP)
    b = RedisStore(redis_server.url, prefix="r15-mixed", op_timeout=OP)
    key = state_key("1", "budget", "svc")
    try:
        granted = 0
        for _ in range(10):  # ten rounds, both processes retrying a failing service
            granted += sum([await a.budget(key, OLD, withdraw=True) for _ in range(5)])
            granted += sum([await b.budget(key, NEW, withdraw=True) for _ in range(5)])
        assert granted == 6, f"{granted} retries granted: 3 for each setting's window"
    finally:
        await a.close()
        await b.close()


async def _server_slot(raw: aioredis.Redis, policy: RetryBudget) -> int:
    secs, usecs = await raw.time()
    return math.floor((float(secs) + float(usecs) / 1e6) / policy.slot_length)


async def test_a_longer_window_of_the_same_slot_length_is_not_cut_short(
    redis_server: RedisServer,
) -> None:
    """Same 3 s slots, 10 against 20 of them: the two counted each other's retries, and the
    30 s setting deleted the slots the 60 s one still counted (older than 30 s)."""
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(redis_server.url, prefix="r15-slots", op_timeout=OP)
    key = state_key("1", "budget", "svc")
    try:
        assert OLD.slot_length == SAME_SLOTS.slot_length
        cur = await _server_slot(raw, SAME_SLOTS)
        # Its 6 retries 45 s ago: in the 60 s window, not in the 30 s one.
        await raw.hset(store._budget_key(key, SAME_SLOTS), f"r:{cur - 15}", 6)
        assert sum([await store.budget(key, OLD, withdraw=True) for _ in range(5)]) == 3
        assert not await store.budget(key, SAME_SLOTS, withdraw=True), "its 6 are still counted"
    finally:
        await close_client(raw)
        await store.close()


async def test_a_refund_gives_back_to_its_own_settings_window(redis_server: RedisServer) -> None:
    """A refund names the same setting as the withdrawal: it gives back to that one only."""
    store = RedisStore(redis_server.url, prefix="r15-refund", op_timeout=OP)
    key = state_key("1", "budget", "svc")
    try:
        assert sum([await store.budget(key, OLD, withdraw=True) for _ in range(4)]) == 3
        assert not await store.refund(key, NEW, age=0.0), "NEW took no retry"
        assert await store.refund(key, OLD, age=0.0)
        assert await store.budget(key, OLD, withdraw=True), "the one given back"
        assert not await store.budget(key, OLD, withdraw=True)
    finally:
        await store.close()


async def test_a_previous_releases_budget_fields_are_harmless(redis_server: RedisServer) -> None:
    """What a previous release wrote at the budget's key (q:/r: fields of whatever slot
    length, or garbage) neither counts, nor fails the script, nor is kept alive by it: it
    expires as it was written."""
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(redis_server.url, prefix="r15-old", op_timeout=OP)
    key = state_key("1", "budget", "svc")
    old_key = store.key(key)
    try:
        secs, usecs = await raw.time()
        cur = math.floor((float(secs) + float(usecs) / 1e6) / OLD.slot_length)
        legacy = {f"r:{cur}": "50", f"q:{cur}": "garbage", f"r:{cur // 2}": "50"}
        for field, value in legacy.items():
            await raw.hset(old_key, field, value)
        await raw.pexpire(old_key, 5000)
        assert sum([await store.budget(key, OLD, withdraw=True) for _ in range(5)]) == 3
        assert await raw.hgetall(old_key) == legacy, "left as it was"
        assert 0 < await raw.pttl(old_key) <= 5000, "expiring as it was written"
    finally:
        await close_client(raw)
        await store.close()


async def test_two_budget_settings_on_one_memory_store_keep_their_own_windows() -> None:
    """The MemoryStore kept one state per key, aged by whichever policy came last: one setting
    wiped the other's counts (or froze them in its newest slot), as on Redis."""
    clock = VirtualClock(start=1000.0, autojump=False)
    store = MemoryStore(clock)
    key = state_key("1", "budget", "svc")
    granted = 0
    for _ in range(10):
        granted += sum([await store.budget(key, OLD, withdraw=True) for _ in range(5)])
        granted += sum([await store.budget(key, NEW, withdraw=True) for _ in range(5)])
        clock.advance(0.1)
    assert granted == 6, f"{granted} retries granted: 3 for each setting's window"
    clock.advance(30.0)  # OLD's window has passed, NEW's not
    assert await store.budget(key, OLD, withdraw=True)
    assert not await store.budget(key, NEW, withdraw=True)
    assert await store.refund(key, OLD, age=0.0)
    assert not await store.refund(key, NEW, age=40.0), "NEW's retries were taken 30 s ago"
    store.note_retry(key, NEW)
    assert not await store.refund(key, OLD, age=0.0), "OLD's one retry was given back"


async def test_a_longer_window_of_the_same_slot_length_is_not_cut_short_in_memory() -> None:
    """Same 3 s slots, 10 against 20 of them on one MemoryStore key: the 30 s setting, 31 s
    after the 60 s one took its retries, found a state of another slot count and started an
    empty one over it; the 60 s setting then did the same, and granted 6 more."""
    clock = VirtualClock(start=1000.0, autojump=False)
    store = MemoryStore(clock)
    key = state_key("1", "budget", "svc")
    assert sum([await store.budget(key, SAME_SLOTS, withdraw=True) for _ in range(9)]) == 6
    clock.advance(31.0)
    assert sum([await store.budget(key, OLD, withdraw=True) for _ in range(5)]) == 3
    assert not await store.budget(key, SAME_SLOTS, withdraw=True), "its 6 are still counted"


# -- 3. a break adopted from the fleet is reported -------------------------------------------------

BREAKER = CircuitBreaker(
    minimum_throughput=4,
    failure_ratio=0.5,
    breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0),
)


def _guard(
    store: MemoryStore, clock: VirtualClock, events: list[StateEvent], sync: float = 0.0
) -> OverloadGuard:
    return OverloadGuard(
        budget=None,
        breaker=BREAKER,
        store=store,
        account="1",
        clock=clock,
        sync_interval=sync,
        hooks=EventHooks(on_state=[events.append]),
    )


async def _trip(guard: OverloadGuard) -> None:
    for _ in range(4):  # four 503s open the breaker, which publishes its break
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))


async def _fleet_of_two_tripped_by_a() -> tuple[
    VirtualClock,
    MemoryStore,
    tuple[OverloadGuard, list[StateEvent]],
    tuple[OverloadGuard, list[StateEvent]],
]:
    """Two processes' guards (A, B, each with the events it emits) on one store, A's breaker
    opened by four 503s (its break published), on a clock that moves only when told."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a_events: list[StateEvent] = []
    b_events: list[StateEvent] = []
    a, b = _guard(store, clock, a_events), _guard(store, clock, b_events)
    await _trip(a)
    return clock, store, (a, a_events), (b, b_events)


def _adopted_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("circuit open")
    ]


async def test_a_break_adopted_at_sync_is_reported_once_like_one_opened_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B adopted A's break at its sync and refused every call with CircuitOpen, but emitted no
    circuit_open and logged nothing above DEBUG; when the fleet's probe succeeded, it emitted
    circuit_closed (adopted=True) for a circuit it never reported open."""
    clock, _store, (a, a_events), (b, b_events) = await _fleet_of_two_tripped_by_a()
    caplog.set_level(logging.DEBUG, logger="le_transport")
    caplog.clear()
    refused = [await b.admit(_Call("svc", HOST), 1) for _ in range(50)]
    assert all(isinstance(r, CircuitOpen) for r in refused), "B fails every call fast"
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    await a.settle(probe, 1, Outcome.response(200))  # the fleet's probe succeeds
    clock.advance(0.1)
    assert await b.admit(_Call("svc", HOST), 1) is None  # B adopts the close
    assert [e.name for e in b_events] == ["circuit_open", "circuit_closed"]
    opened, closed = b_events
    local = next(e for e in a_events if e.name == "circuit_open")
    assert opened.subject == local.subject == f"svc@{HOST}"
    assert set(opened.details) == set(local.details), "the same details as a local open"
    assert opened.details == {"retry_in": pytest.approx(5.0), "opens": 1, "adopted": True}
    assert closed.details == {"adopted": True}
    (warned,) = _adopted_warnings(caplog)
    assert "the fleet's break" in warned.getMessage()
    assert warned.__dict__["adopted"] is True


async def test_a_break_read_again_with_a_later_end_is_not_reported_again() -> None:
    """Redis' TTLs are whole milliseconds: the same trip entry read again as the adopted break
    ends may end a millisecond later, and is adopted again; it is reported once, not twice."""
    clock, store, (a, a_events), (b, b_events) = await _fleet_of_two_tripped_by_a()
    first = await b.admit(_Call("svc", HOST), 1)
    assert isinstance(first, CircuitOpen)
    clock.advance(first.retry_at - clock.now())  # the adopted break ends here
    assert b.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    trip = state_key("1", "breaker", "svc", HOST)
    entry = await store.get(trip)
    assert entry is not None
    # The same entry, its TTL read two milliseconds longer.
    assert await store.set(trip, entry.value, ttl=entry.ttl + 0.002, only_if=entry.value)
    again = await b.admit(_Call("svc", HOST), 1)
    assert isinstance(again, CircuitOpen), "the entry's break is read as still on"
    assert [e.name for e in b_events] == ["circuit_open"]
    # And the process that published it does not report its own break as adopted.
    clock.advance(0.001)
    assert a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    assert isinstance(await a.admit(_Call("svc", HOST), 1), CircuitOpen)
    assert [e.name for e in a_events] == ["circuit_open"]
    assert a_events[0].details["adopted"] is False


async def test_a_new_fleet_break_after_an_adopted_one_is_reported_again() -> None:
    """Once per break, not once per breaker: the fleet's failed probe opens a new break,
    which B adopts and reports too (after one more opening)."""
    clock, _store, (a, _a_events), (b, b_events) = await _fleet_of_two_tripped_by_a()
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen)
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    await a.settle(probe, 1, Outcome.response(503))  # the fleet's probe fails: a new break
    assert isinstance(await b.admit(_Call("svc", HOST), 1), CircuitOpen)
    opened = [e for e in b_events if e.name == "circuit_open"]
    assert [e.details["opens"] for e in opened] == [1, 2]
    assert all(e.details["adopted"] is True for e in opened)


async def test_a_break_found_at_the_probes_reread_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B half-open on an adopted break read the trip again as it took the probe lock, found a
    new break (A's probe had just failed) and went back to open silently."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a_events: list[StateEvent] = []
    b_events: list[StateEvent] = []
    a = _guard(store, clock, a_events)
    b = _guard(store, clock, b_events, sync=60.0)  # B reads the trip only at its probe
    assert await b.admit(_Call("svc", HOST), 1) is None  # B's sync: nothing yet
    await _trip(a)
    await _trip(b)  # B opens on its own failures: it takes A's break, reported (adopted)
    assert [e.details["adopted"] for e in b_events] == [True]
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None
    await a.settle(probe, 1, Outcome.response(503))  # A's probe fails: a new break
    caplog.set_level(logging.DEBUG, logger="le_transport")
    caplog.clear()
    refused = await b.admit(_Call("svc", HOST), 1)  # B's probe reads it as it takes the lock
    assert isinstance(refused, CircuitOpen)
    assert b.breaker_state("svc", HOST) is BreakerState.OPEN
    assert [e.name for e in b_events] == ["circuit_open", "circuit_open"]
    assert b_events[1].details == {"retry_in": pytest.approx(10.0), "opens": 2, "adopted": True}
    assert len(_adopted_warnings(caplog)) == 1


# -- 4. a reconnect bucket ahead of the server's clock ---------------------------------------------


async def test_a_bucket_written_ahead_of_the_servers_clock_holds_no_reconnect(
    redis_server: RedisServer,
) -> None:
    """The bucket's 'updated' ahead of TIME (written by a primary whose clock was 10 minutes
    ahead): every reservation waited for the clock to catch up (up to MAX_SHARED_WAIT, 15 min),
    even with 19 of 20 tokens left, and wrote 'updated' ahead again."""
    store = RedisStore(redis_server.url, prefix="r15-pace", op_timeout=OP)
    pacer = FleetPacer(store, account="1")
    key = store.key(state_key("1", "pace", "reconnect"))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.hset(key, mapping={"tokens": "19.0", "updated": f"{time.time() + 600:.6f}"})
        assert await pacer.reserve_shared() == 0.0, "19 tokens: a lone reconnect goes at once"
        tokens, updated = await client.hmget(key, ["tokens", "updated"])
        assert isinstance(tokens, str)
        assert isinstance(updated, str)
        secs, usecs = await client.time()
        assert float(updated) <= float(secs) + float(usecs) / 1e6, "'updated' is now, not ahead"
        assert float(tokens) == pytest.approx(18.0, abs=0.5), "no refill for the step either"
    finally:
        await close_client(client)
        await store.close()


async def test_a_queue_written_ahead_of_the_servers_clock_keeps_its_order_only(
    redis_server: RedisServer,
) -> None:
    """A queue of reservations (tokens below 0) written ahead of TIME still queues the next
    one behind it (waits are durations), without the clock step on top."""
    store = RedisStore(redis_server.url, prefix="r15-queue", op_timeout=OP)
    pacer = FleetPacer(store, account="1")
    key = store.key(state_key("1", "pace", "reconnect"))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.hset(key, mapping={"tokens": "-69.0", "updated": f"{time.time() + 600:.6f}"})
        wait = await pacer.reserve_shared()
        assert wait == pytest.approx(70 / pacer.bucket.rate, abs=0.01), wait
    finally:
        await close_client(client)
        await store.close()


async def test_refused_by_a_fleet_break_adopted_in_its_tail_then_closed_never_opened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Adopted after its break ended (the trip's half-open tail, the fleet's probe out
    elsewhere), a break refused every call here with nothing reported open, then its close
    was reported."""
    (
        clock,
        _store,
        (a, _a_events),
        (b, b_events),
    ) = (
        await _fleet_of_two_tripped_by_a()
    )  # A opens a 5 s break and publishes it (kept 5 s + the probe lease)
    clock.advance(5.0)
    probe = _Call("svc", HOST)
    assert await a.admit(probe, 1) is None  # A's probe is out: A holds the fleet's lock
    clock.advance(0.5)
    caplog.set_level(logging.DEBUG, logger="le_transport")
    caplog.clear()
    # B's first calls since the break: B adopts the trip (ended: half-open) and fails fast.
    refused = [await b.admit(_Call("svc", HOST), 1) for _ in range(20)]
    assert all(isinstance(r, CircuitOpen) for r in refused)
    assert b.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await a.settle(probe, 1, Outcome.response(200))  # the fleet's probe succeeds
    clock.advance(0.1)
    assert await b.admit(_Call("svc", HOST), 1) is None  # B adopts the fleet's close
    names = [e.name for e in b_events]
    assert names[-1] == "circuit_closed"
    assert "circuit_open" in names, f"20 calls refused with CircuitOpen, events: {names}"
    assert _adopted_warnings(caplog), "no WARNING while failing calls fast"


async def test_own_probe_on_a_break_adopted_in_its_tail_reports_a_close_never_opened() -> None:
    """The same when this process takes the fleet's probe itself."""
    clock, _store, (_a, _a_events), (b, b_events) = await _fleet_of_two_tripped_by_a()
    clock.advance(6.0)  # the break is over; nobody probed yet
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None  # B adopts the tail, half-open: B is the probe
    assert b.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await b.settle(probe, 1, Outcome.response(200))
    names = [e.name for e in b_events]
    assert names == ["circuit_closed"] or "circuit_open" in names, names
    assert "circuit_open" in names, f"a close reported for a circuit never reported open: {names}"
