"""A service that accepts connections and never answers trips the breaker even when every
caller's deadline is shorter than the attempt timeout (``CircuitBreaker.slow_call``).

Such an attempt is cut by its call's deadline, not by its attempt timeout. Abandoned (no
verdict), it left the breaker as it was: every caller sat out its whole deadline, for ever, and
a half-open probe cut so only freed its slot for the next one. Now an attempt cut by the
deadline after running at least ``slow_call`` seconds with no answer is a TIMEOUT failure, as
an attempt timeout is; a shorter cut still gives no verdict. Real loopback servers, virtual
time.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
from aiohttp import web

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import CircuitOpen, ConfigurationError, DeadlineExceeded
from le_transport.events import StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, OutcomeKind
from le_transport.policies.breaker import BREAKER_SLOW_CALL
from le_transport.state import MemoryStore, state_key
from le_transport.testing import VirtualClock

ServerFactory = Callable[[web.Application], Awaitable[str]]

#: Opens at half of 4 attempts; a first break of 5 s, then 10 s (no jitter: exact times).
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_window=300.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
#: The guide's 30 s attempt timeout, no retries: each call is one attempt, cut by its deadline.
POLICY = RetryPolicy(pauses=())


class Hanging:
    """A loopback route that accepts the request and never answers (until the test ends)."""

    def __init__(self) -> None:
        self.hits = 0
        self.active = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        async def hang(request: web.Request) -> web.Response:
            self.hits += 1
            self.active += 1
            try:
                await self.release.wait()
            finally:
                self.active -= 1
            return web.Response()

        app = web.Application()
        app.router.add_get("/x", hang)
        return app


@pytest.fixture
async def hanging(serve: ServerFactory) -> AsyncIterator[tuple[Hanging, str]]:
    backend = Hanging()
    host = await serve(backend.app())
    yield backend, host
    backend.release.set()


async def _ended(backend: Hanging) -> None:
    """Let the server's handlers end (they are cut as their clients go): none left running."""
    backend.release.set()
    for _ in range(100):
        if not backend.active:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("a handler still runs")
    for _ in range(5):
        await asyncio.sleep(0)  # aiohttp's own task around each handler ends too


def _engine(host: str, clock: VirtualClock, guard: OverloadGuard) -> Engine:
    return Engine({"svc": host}, scheme="http", clock=clock, overload=guard, retry=POLICY)


async def _cut(engine: Engine, deadline: float) -> DeadlineExceeded:
    with pytest.raises(DeadlineExceeded) as info:
        await engine.request("GET", "svc", "/x", deadline=deadline)
    return info.value


def test_the_default_is_the_guides_first_pause() -> None:
    assert BREAKER_SLOW_CALL == 5.0
    assert CircuitBreaker().slow_call == 5.0
    assert CircuitBreaker().scaled(0.5).slow_call == 2.5
    assert CircuitBreaker(slow_call=None).scaled(0.5).slow_call is None


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "5", 10**400])
def test_a_slow_call_that_is_no_positive_finite_number_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="slow_call"):
        CircuitBreaker(slow_call=bad)  # type: ignore[arg-type]


async def test_callers_whose_deadline_cuts_a_hanging_service_open_the_breaker(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    states: list[StateEvent] = []
    guard = OverloadGuard(
        budget=None, breaker=BREAKER, clock=clock, hooks=EventHooks(on_state=[states.append])
    )
    async with _engine(host, clock, guard) as engine:
        for n in range(BREAKER.minimum_throughput):
            started = clock.now()
            err = await _cut(engine, 6.0)
            # The caller's error is what it was: the deadline's, at the deadline.
            assert clock.now() == pytest.approx(started + 6.0)
            assert type(err) is DeadlineExceeded
            assert err.message.startswith(
                "the call's 6 s deadline passed after 1 attempt(s); attempt 1 was cancelled"
            )
            [record] = err.attempts
            assert record.outcome.kind is OutcomeKind.TIMEOUT
            assert record.outcome.error == "DeadlineExceeded"
            if n < BREAKER.minimum_throughput - 1:
                assert guard.breaker_state("svc", host) is BreakerState.CLOSED
        assert guard.breaker_state("svc", host) is BreakerState.OPEN
        assert [e.name for e in states] == ["circuit_open"]
        hits, now = backend.hits, clock.now()
        with pytest.raises(CircuitOpen) as info:
            await engine.request("GET", "svc", "/x", deadline=6.0)
        assert clock.now() == now, "refused at once, not after the caller's deadline"
        assert backend.hits == hits, "nothing sent"
        assert info.value.retry_at == pytest.approx(now + 5.0)
    await _ended(backend)


async def test_a_cut_shorter_than_slow_call_still_gives_no_verdict(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    async with _engine(host, clock, guard) as engine:
        for _ in range(3 * BREAKER.minimum_throughput):
            await _cut(engine, 4.9)  # sub-slow_call deadlines: no verdict on the service
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED
        hits = backend.hits
        await _cut(engine, 4.9)
        assert backend.hits == hits + 1, "still sent"
    await _ended(backend)


async def test_a_breaker_without_slow_call_abandons_every_cut(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    breaker = CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=4, sampling_window=300.0, slow_call=None
    )
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    async with _engine(host, clock, guard) as engine:
        for _ in range(2 * breaker.minimum_throughput):
            await _cut(engine, 20.0)
        assert guard.breaker_state("svc", host) is BreakerState.CLOSED
    await _ended(backend)


async def _open(engine: Engine, guard: OverloadGuard, host: str) -> None:
    for _ in range(BREAKER.minimum_throughput):
        await _cut(engine, 6.0)
    assert guard.breaker_state("svc", host) is BreakerState.OPEN


async def test_a_half_open_probe_cut_after_slow_call_re_opens_the_breaker(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    async with _engine(host, clock, guard) as engine:
        await _open(engine, guard, host)
        await clock.sleep(5.0)
        assert guard.breaker_state("svc", host) is BreakerState.HALF_OPEN
        hits = backend.hits
        await _cut(engine, 6.0)  # the probe, cut by its deadline with no answer
        assert backend.hits == hits + 1
        assert guard.breaker_state("svc", host) is BreakerState.OPEN, "a failure verdict"
        now = clock.now()
        with pytest.raises(CircuitOpen) as info:
            await engine.request("GET", "svc", "/x", deadline=6.0)
        assert info.value.retry_at == pytest.approx(now + 10.0), "the second, longer break"
        assert backend.hits == hits + 1, "no second probe"
    await _ended(backend)


async def test_a_half_open_probe_cut_short_frees_the_slot_as_before(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    async with _engine(host, clock, guard) as engine:
        await _open(engine, guard, host)
        await clock.sleep(5.0)
        hits = backend.hits
        await _cut(engine, 2.0)
        assert guard.breaker_state("svc", host) is BreakerState.HALF_OPEN
        await _cut(engine, 2.0)  # the next probe goes at once
        assert backend.hits == hits + 2
    await _ended(backend)


async def _told(guard: OverloadGuard) -> None:
    """Let the guard's tasks tell the fleet's store (the caller's error never waits for it)."""
    for _ in range(50):
        if not guard._releases:
            return
        await asyncio.sleep(0)
    raise AssertionError("the store was never told")


def _trip_key(host: str) -> str:
    return state_key("1", "breaker", "svc", host)


def _probe_key(host: str) -> str:
    return state_key("1", "breaker-probe", "svc", host)


async def test_in_a_fleet_a_probe_cut_after_slow_call_publishes_the_new_break(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    store = MemoryStore(clock)
    a, b = (
        OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
        for _ in range(2)
    )
    async with _engine(host, clock, a) as ea, _engine(host, clock, b) as eb:
        await _open(ea, a, host)
        await _told(a)
        entry = await store.get(_trip_key(host))
        assert entry is not None
        assert json.loads(entry.value)["opens"] == 1
        await clock.sleep(5.0)
        hits = backend.hits
        await _cut(ea, 6.0)  # A's probe for the fleet, cut by its deadline
        assert backend.hits == hits + 1
        assert a.breaker_state("svc", host) is BreakerState.OPEN
        await _told(a)
        entry = await store.get(_trip_key(host))
        assert entry is not None
        assert json.loads(entry.value)["opens"] == 2, "the re-open published"
        assert await store.get(_probe_key(host)) is None, "the lock freed after the verdict"
        now = clock.now()
        with pytest.raises(CircuitOpen) as info:
            await eb.request("GET", "svc", "/x", deadline=6.0)
        assert info.value.retry_at == pytest.approx(now + 10.0), "B took the fleet's new break"
        assert backend.hits == hits + 1, "no second probe from B"
    await _ended(backend)


class _SlowWrites(MemoryStore):
    """A shared store whose writes of a breaker's trip take ``delay`` seconds of the clock once
    armed (a slow Redis)."""

    def __init__(self, clock: VirtualClock, delay: float) -> None:
        super().__init__(clock)
        self.sleeps_on = clock
        self.delay = delay
        self.armed = False

    async def _slow(self, key: str) -> None:
        if self.armed and ":breaker:" in key:
            await self.sleeps_on.sleep(self.delay)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        await self._slow(key)
        return await super().add(key, value, ttl=ttl)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._slow(key)
        return await super().set(key, value, ttl=ttl, only_if=only_if)


async def test_the_callers_deadline_error_never_waits_for_the_store(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    backend, host = hanging
    store = _SlowWrites(clock, delay=0.5)
    guard = OverloadGuard(budget=None, breaker=BREAKER, store=store, account="1", clock=clock)
    async with _engine(host, clock, guard) as engine:
        for _ in range(BREAKER.minimum_throughput - 1):
            await _cut(engine, 6.0)
        store.armed = True
        started = clock.now()
        await _cut(engine, 6.0)  # opens the breaker: its break's publication is slow
        assert clock.now() == pytest.approx(started + 6.0), "the deadline error at the deadline"
        assert guard.breaker_state("svc", host) is BreakerState.OPEN, "decided at once"
        assert guard._releases, "the publication runs on, kept for drain()"
    await _ended(backend)
    # The engine's close drained it: no task outlives the guard's close.
    assert not guard._releases
    entry = await store.get(_trip_key(host))
    assert entry is not None
    assert json.loads(entry.value)["opens"] == 1


async def test_in_a_fleet_a_probe_cut_past_its_lease_asks_the_store_before_it_decides(
    hanging: tuple[Hanging, str], clock: VirtualClock
) -> None:
    """A fleet probe whose lease (5 s here) ended before its deadline cut it: whether it still
    answers for the fleet is the store's to say (its lock and the trip it was admitted on), read
    in the task; with no other probe out it is still the fleet's, and its failure re-opens."""
    backend, host = hanging
    breaker = attrs.evolve(BREAKER, probe_lease=5.0)
    store = MemoryStore(clock)
    a, b = (
        OverloadGuard(budget=None, breaker=breaker, store=store, account="1", clock=clock)
        for _ in range(2)
    )
    async with _engine(host, clock, a) as ea, _engine(host, clock, b) as eb:
        await _open(ea, a, host)
        await _told(a)
        await clock.sleep(5.0)
        hits = backend.hits
        await _cut(ea, 6.0)  # the probe: its lock's lease ended a second before the cut
        assert backend.hits == hits + 1
        await _told(a)
        assert a.breaker_state("svc", host) is BreakerState.OPEN
        entry = await store.get(_trip_key(host))
        assert entry is not None
        assert json.loads(entry.value)["opens"] == 2, "the re-open published"
        assert not a._stale_locks
        now = clock.now()
        with pytest.raises(CircuitOpen) as info:
            await eb.request("GET", "svc", "/x", deadline=6.0)
        assert info.value.retry_at == pytest.approx(now + 10.0)
        assert backend.hits == hits + 1
    await _ended(backend)


class _OlderGate:
    """A gate of the caller's own, written before ``cut``: told of a cut as an abandon."""

    def __init__(self) -> None:
        self.abandoned: list[int] = []
        self.cut: object = 0.5  # a setting of its own named "cut", not the method

    async def admit(self, call: object, attempt: int) -> None:
        return None

    async def settle(self, call: object, attempt: int, outcome: object) -> None:
        raise AssertionError("no attempt here ends with an outcome")

    def abandon(self, call: object, attempt: int) -> None:
        self.abandoned.append(attempt)

    async def before_retry(
        self, call: object, attempt: int, outcome: object, pause: float, last: object
    ) -> None:
        raise AssertionError("no retry here")


class _CuttingGate(_OlderGate):
    def __init__(self) -> None:
        super().__init__()
        self.cuts: list[tuple[int, float]] = []
        self.cut = lambda call, attempt, ran: self.cuts.append((attempt, ran))


@pytest.mark.parametrize("gate_kind", [_OlderGate, _CuttingGate])
async def test_a_gate_without_cut_has_the_attempt_abandoned_and_one_with_it_is_told_how_long(
    hanging: tuple[Hanging, str], clock: VirtualClock, gate_kind: type[_OlderGate]
) -> None:
    import aiohttp

    from le_transport import RetryMiddleware

    backend, host = hanging
    gate = gate_kind()
    mw = RetryMiddleware(policy=RetryPolicy(pauses=(), deadline=7.0), clock=clock, gate=gate)
    async with aiohttp.ClientSession(middlewares=[mw]) as session:
        with pytest.raises(DeadlineExceeded, match="7 s deadline passed after 1 attempt"):
            await session.get(f"http://{host}/x")
    if isinstance(gate, _CuttingGate):
        [(attempt, ran)] = gate.cuts
        assert attempt == 1
        assert ran == pytest.approx(7.0)
        assert gate.abandoned == []
    else:
        assert gate.abandoned == [1]
    await _ended(backend)
