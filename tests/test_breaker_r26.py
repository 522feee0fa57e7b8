"""A fleet probe whose attempt may outlive the probe lease keeps the fleet's probe lock: renewed
on the clock while it is out (a compare-and-set of its own value), never past its own bound, and
no longer once it ends, its lock is lost, or the store fails, hangs or answers locally."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport.errors import (
    CircuitOpen,
    DeadlineExceeded,
    RetriesExhausted,
    StateStoreError,
)
from le_transport.policies import BreakerState, Outcome, OutcomeKind
from le_transport.state import Entry, FallbackStore, MemoryStore, StateStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_breaker_fleet import (
    BREAKER,
    DOWN,
    HOST,
    OK,
    POLICY,
    ForwardingStore,
    _breaker,
    _fleet,
    _holds_the_fleets_close,
    _probe_key,
    _trip,
)
from tests.test_guard_hot_path import _Call

LEASE = BREAKER.probe_lease  # 30 s
TIMEOUT = 60.0  # the probe's attempt timeout: a slow API's, past the lease


def _call(attempt_timeout: float | None = TIMEOUT) -> Any:
    made: Any = _Call("svc", HOST)
    made.policy = RetryPolicy(attempt_timeout=attempt_timeout)
    return made


async def _turns() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _advance(clock: VirtualClock, seconds: float) -> None:
    """Move the clock on a second at a time, letting the loop run in between (a renewal due
    then runs)."""
    steps = round(seconds)
    for _ in range(steps):
        clock.advance(1.0)
        await _turns()
    rest = seconds - steps
    if rest > 0:
        clock.advance(rest)
        await _turns()


def _renewals() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == "le_transport probe lock renewal" and not task.done()
    ]


async def _probing(store: StateStore, clock: VirtualClock, **kw: Any) -> tuple[Any, ...]:
    """A and B share ``store``; A trips, its break ends, and A's probe (a 60 s attempt
    timeout unless told) goes: (a, b, the probe)."""
    a, b = _fleet(clock, store)  # type: ignore[arg-type]
    await _trip(a)
    assert isinstance(await b.admit(_call(), 1), CircuitOpen)
    clock.advance(5.0)
    probe = _call(**kw)
    assert await a.admit(probe, 1) is None
    return a, b, probe


async def test_a_probe_slower_than_the_lease_keeps_the_fleets_lock_until_it_reports() -> None:
    # Its lock taken for the 30 s lease and never renewed, another process's probe went at
    # 30 s while the first, with its 60 s attempt timeout, was still out.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, probe = await _probing(store, clock)
    held = await store.get(_probe_key())
    assert held is not None
    await _advance(clock, 50.0)
    refused = await b.admit(_call(), 1)
    assert isinstance(refused, CircuitOpen), "a second probe went while the first was out"
    entry = await store.get(_probe_key())
    assert entry is not None
    assert entry.value == held.value, "still A's lock"
    assert entry.ttl <= LEASE, "renewed for a lease at a time"
    await a.settle(probe, 1, OK)
    await _turns()
    assert not _renewals(), "the renewal ended with the probe"
    assert not a._renewals
    assert await store.get(_probe_key()) is None
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED


async def test_renewals_stop_at_the_probes_own_bound() -> None:
    # A probe stuck past its attempt's own bound holds the fleet no longer: the lock ends then,
    # and another process probes.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, b, probe = await _probing(store, clock)
    taken = clock.now()
    await _advance(clock, TIMEOUT)
    assert isinstance(await b.admit(_call(), 1), CircuitOpen), "within the probe's bound"
    await _advance(clock, 2.0)  # past the bound (60 s and its margin)
    assert await store.get(_probe_key()) is None, "the lock ended with the probe's bound"
    assert clock.now() - taken < TIMEOUT + LEASE
    assert not _renewals()
    assert not a._renewals, "a renewal that ended by itself is forgotten"
    second = _call()
    assert await b.admit(second, 1) is None, "another process probes"
    await b.settle(second, 1, OK)
    await _turns()
    assert not _renewals()
    a.abandon(probe, 1)
    await _turns()


async def test_a_probe_with_no_bound_of_its_own_keeps_only_the_lease() -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, _, probe = await _probing(store, clock, attempt_timeout=None)
    assert not a._renewals, "nothing to renew"
    await _advance(clock, LEASE + 1.0)
    assert await store.get(_probe_key()) is None
    a.abandon(probe, 1)
    await _turns()


@pytest.mark.parametrize("how", ["abandon", "settle", "no verdict"])
async def test_renewing_stops_at_once_when_the_probe_ends(how: str) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, _, probe = await _probing(store, clock)
    await _advance(clock, LEASE + 5.0)
    (task,) = a._renewals.values()
    if how == "abandon":
        a.abandon(probe, 1)
    elif how == "settle":
        await a.settle(probe, 1, DOWN)
    else:
        await a.settle(probe, 1, Outcome.failure(OutcomeKind.TLS_REJECTED, "refused"))
    await _turns()
    assert task.done()
    assert not a._renewals
    assert not _renewals()
    assert await store.get(_probe_key()) is None


async def test_a_process_that_missed_the_break_finds_the_trip_while_a_slow_probe_is_out() -> None:
    # The trip outlives the break by the lease; kept no longer while a renewed probe was out, a
    # process that missed the break found nothing once it ended, went closed, and sent its
    # calls alongside the probe. It is kept in its tail (the break's end unchanged), and the
    # probe's success still writes the fleet's closed mark over it.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, _, probe = await _probing(store, clock)
    await _advance(clock, 45.0)  # the trip's own TTL (the 5 s break and the lease) is over
    (late,) = _fleet(clock, store, 1)
    refused = await late.admit(_call(), 1)
    assert isinstance(refused, CircuitOpen), "half-open on the fleet's trip, A's probe out"
    assert late.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await a.settle(probe, 1, OK)
    await _turns()
    await _holds_the_fleets_close(store)
    clock.advance(1.0)
    assert await late.admit(_call(), 1) is None, "the fleet's close read"
    assert late.breaker_state("svc", HOST) is BreakerState.CLOSED
    assert not _renewals()


async def test_a_renewed_probe_still_decides_after_its_process_reads_the_kept_trip() -> None:
    # Past the lease, another call of the prober's process syncs and reads the trip its own
    # probe keeps: taken for the fleet's (adopted), it replaced the probe's slot, and the
    # probe's success then closed nothing, nor told the fleet (no closed mark).
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    a, _, probe = await _probing(store, clock)
    await _advance(clock, 45.0)
    assert isinstance(await a.admit(_call(), 1), CircuitOpen), "its own probe is out"
    await a.settle(probe, 1, OK)
    assert a.breaker_state("svc", HOST) is BreakerState.CLOSED, "the probe's verdict"
    await _holds_the_fleets_close(store)
    await _turns()


class _OwnedSession:
    """Stands for the aiohttp session a probe goes through (what the engine's close cuts)."""


async def test_draining_for_a_closed_session_leaves_no_renewal_behind() -> None:
    # The engine drains its guard once its session is closed; a probe of that session not yet
    # abandoned after the grace has its renewal cancelled: no task of the guard outlives the
    # engine, and the lock ends with its lease.
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    (a,) = _fleet(clock, store, 1)
    await _trip(a)
    clock.advance(5.0)
    session = _OwnedSession()
    probe = _call()
    probe.request.__dict__["_session"] = session
    assert await a.admit(probe, 1) is None
    assert a._renewals
    draining = asyncio.ensure_future(a.drain(0.5, probes_of=session))
    await _turns()
    clock.advance(1.0)
    await _turns()
    await draining
    await _turns()
    assert not a._renewals
    assert not _renewals()
    a.abandon(probe, 1)
    await _turns()


def _one_warning(caplog: pytest.LogCaptureFixture, reason: str) -> None:
    found = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    (record,) = found
    assert record.levelno == logging.WARNING
    assert reason in record.getMessage()
    assert "svc" in record.getMessage()
    assert HOST in record.getMessage()
    assert record.__dict__["service"] == "svc"
    assert record.__dict__["host"] == HOST


async def test_a_lock_no_longer_ours_stops_the_renewal_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    caplog.set_level(logging.WARNING, logger="le_transport.overload")
    a, _, probe = await _probing(store, clock)
    await store.set(_probe_key(), "another process's", ttl=3 * LEASE)
    await _advance(clock, LEASE + 10.0)
    assert not a._renewals
    assert not _renewals()
    _one_warning(caplog, "no longer this process's")
    held = await store.get(_probe_key())
    assert held is not None
    assert held.value == "another process's", "never written over"
    a.abandon(probe, 1)
    await _turns()


class _FailingSets(ForwardingStore):
    """A caller's store whose writes of the probe lock fail (``hang``: never answer) once armed."""

    def __init__(self, inner: StateStore, hang: bool) -> None:
        super().__init__(inner)
        self.armed = False
        self.hang = hang

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if self.armed and key == _probe_key():
            if self.hang:
                await asyncio.Event().wait()
            raise ConnectionResetError("down")
        return await super().set(key, value, ttl=ttl, only_if=only_if)


@pytest.mark.parametrize(
    ("hang", "op_timeout", "reason"),
    [
        (False, None, "the shared store is out"),  # the FallbackStore answers locally
        (True, None, "the shared store is out"),  # ... after its op_timeout (2 s)
        (True, 3 * LEASE, "did not answer before its lease would end"),  # past the lease
    ],
)
async def test_a_store_failing_or_hanging_stops_the_renewal_with_one_warning(
    hang: bool, op_timeout: float | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    inner = MemoryStore(clock)
    failing = _FailingSets(inner, hang)
    store = FallbackStore(failing, clock=clock, op_timeout=op_timeout)
    caplog.set_level(logging.WARNING, logger="le_transport.overload")
    (a,) = _fleet(clock, store, 1)  # type: ignore[arg-type]
    await _trip(a)
    clock.advance(5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    failing.armed = True
    await _advance(clock, LEASE + 1.0)
    assert not a._renewals
    assert not _renewals()
    assert await inner.get(_probe_key()) is None, "the lock ended with its lease"
    _one_warning(caplog, reason)
    a.abandon(probe, 1)
    await _turns()
    await a.drain(0.5)
    await store.close()


class _Down(ForwardingStore):
    """A caller's store that is down once ``down`` is set: every call fails."""

    down = False

    async def _check(self) -> None:
        if self.down:
            raise StateStoreError("down")

    async def get(self, key: str) -> Entry | None:
        await self._check()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._check()
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._check()
        return await super().add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await self._check()
        return await super().delete(key, only_if=only_if)


async def test_a_renewal_the_fallback_answered_locally_is_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With its primary out, a FallbackStore's local copy takes the compare-and-set: the shared
    # lock is not renewed, and the renewal stops rather than go on renewing a local copy.
    clock = VirtualClock(start=100.0, autojump=False)
    inner = MemoryStore(clock)
    primary = _Down(inner)
    store = FallbackStore(primary, clock=clock)
    caplog.set_level(logging.WARNING, logger="le_transport.overload")
    (a,) = _fleet(clock, store, 1)  # type: ignore[arg-type]
    await _trip(a)
    clock.advance(5.0)
    probe = _call()
    assert await a.admit(probe, 1) is None
    primary.down = True
    await _advance(clock, LEASE + 1.0)
    assert not a._renewals
    assert not _renewals()
    _one_warning(caplog, "the shared store is out")
    assert await inner.get(_probe_key()) is None, "the shared lock ended with its lease"
    a.abandon(probe, 1)
    await _turns()
    await a.drain(0.5)
    await store.close()


# -- through the engine, on loopback -----------------------------------------------------------


@pytest.mark.parametrize("ends", ["answer", "deadline"])
async def test_an_engines_slow_probe_keeps_the_fleet_out_until_it_ends(
    serve: ServerFactory, clock: VirtualClock, ends: str
) -> None:
    # A's probe (a 60 s attempt timeout) is held by the service past the 30 s lease: B is
    # refused meanwhile, and probes at once when A's ends, by its answer or cut by its
    # caller's deadline (no verdict: the slot and the lock freed, the renewal stopped).
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = _fleet(clock, store, 2, _breaker())
    slow = RetryPolicy(pauses=(), attempt_timeout=60.0)
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    short = RetryPolicy(pauses=(), attempt_timeout=1.0)
    async with (
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[0], retry=POLICY) as a,
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[1], retry=POLICY) as b,
    ):
        with pytest.raises(RetriesExhausted):
            await a.request("GET", "svc", "/x")
        await clock.sleep(20.0)
        hang = backend.gate = asyncio.Event()
        backend.arrived.clear()
        deadline = 45.0 if ends == "deadline" else None
        probe = asyncio.ensure_future(a.request("GET", "svc", "/x", retry=slow, deadline=deadline))
        await backend.arrived.wait()
        started = clock.now()
        await clock.sleep(40.0)  # past the lease
        # (B read no trip before: it finds A's, kept in its tail while A's probe is out.)
        with pytest.raises(CircuitOpen):
            await b.request("GET", "svc", "/x", retry=short)
        assert guards[0]._renewals, "A's probe is out, its lock renewed"
        backend.status = 200
        if ends == "answer":
            hang.set()
            response = await probe
            assert response.status == 200
        else:
            with pytest.raises(DeadlineExceeded):
                await probe
            assert clock.now() - started < 46.0
        await _turns()
        assert not guards[0]._renewals
        assert not _renewals()
        backend.gate = None
        hang.set()
        hits = backend.hits
        response = await b.request("GET", "svc", "/x", retry=once)
        assert response.status == 200
        assert backend.hits == hits + 1
    assert not _renewals()
