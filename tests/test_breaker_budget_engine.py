"""The budget and the breaker in the engine's stack, against a real loopback server on virtual time.

The order is deliberate (docs/architecture.md): the breaker is asked before each attempt and
before each pause, so a refused attempt sends nothing and burns no pause of the 5/10/15 s
schedule; the budget is asked before each pause, so a spent budget fails the call at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import (
    CircuitOpen,
    ClientStatusError,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
)
from le_transport.events import GiveUpEvent, StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, RetryBudget
from le_transport.testing import VirtualClock
from tests.backends import Backend

ServerFactory = Callable[[web.Application], Awaitable[str]]

#: The guide's schedule without the per-attempt watchdog, so ``clock.sleeps`` holds the pauses.
POLICY = RetryPolicy(attempt_timeout=None)


def _breaker(min_calls: int = 4, first: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput=min_calls,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=first, cap=600.0, jitter=0.0, floor=0.0),
    )


async def _engine(
    serve: ServerFactory, backend: Backend, clock: VirtualClock, guard: OverloadGuard
) -> Engine:
    host = await serve(backend.app())
    engine = Engine({"svc": host}, scheme="http", clock=clock, overload=guard, retry=POLICY)
    await engine.start()
    return engine


async def test_open_breaker_fails_the_next_call_fast_and_sends_nothing(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=_breaker(), clock=clock)
    async with await _engine(serve, backend, clock, guard) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        assert backend.hits == 4
        assert clock.sleeps == [5.0, 10.0, 15.0]
        opened_at = clock.now()
        with pytest.raises(CircuitOpen) as info:
            await engine.request("GET", "svc", "/x")
        assert backend.hits == 4, "an open breaker sends nothing"
        assert clock.now() == opened_at, "and waits for nothing"
        assert info.value.retry_at == pytest.approx(opened_at + 5.0)
        assert info.value.attempts == ()


async def test_attempt_refused_by_an_open_breaker_is_not_burned_on_the_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=_breaker(min_calls=2, first=60.0), clock=clock)
    async with await _engine(serve, backend, clock, guard) as engine:
        with pytest.raises(CircuitOpen) as info:
            await engine.request("GET", "svc", "/x")
    assert backend.hits == 2
    assert clock.sleeps == [5.0], "the 10 s pause before a refused attempt is not taken"
    assert [a.pause for a in info.value.attempts] == [5.0, None]
    assert isinstance(info.value.__cause__, ServerStatusError)


async def test_callers_deadline_shorter_than_the_break_fails_fast(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    guard = OverloadGuard(budget=None, breaker=_breaker(min_calls=4, first=30.0), clock=clock)
    async with await _engine(serve, backend, clock, guard) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        now = clock.now()
        with pytest.raises(CircuitOpen):
            await engine.request("GET", "svc", "/x", deadline=1.0)
        assert clock.now() == now, "no DeadlineExceeded after sitting out the deadline"


async def test_half_open_lets_exactly_one_probe_and_its_success_closes(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    states: list[StateEvent] = []
    guard = OverloadGuard(
        budget=None,
        breaker=_breaker(),
        clock=clock,
        hooks=EventHooks(on_state=[states.append]),
    )
    async with await _engine(serve, backend, clock, guard) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        await clock.sleep(5.0)
        backend.status = 200
        backend.gate = asyncio.Event()
        hits = backend.hits
        backend.arrived.clear()
        calls = [
            asyncio.ensure_future(
                engine.request(
                    "GET", "svc", "/x", retry=RetryPolicy(pauses=(), attempt_timeout=None)
                )
            )
            for _ in range(5)
        ]
        await backend.arrived.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert backend.hits == hits + 1, "exactly one probe reached the service"
        assert sum(1 for r in results if isinstance(r, CircuitOpen)) == 4
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
        backend.gate = None
        resp = await engine.request("GET", "svc", "/x")
        assert resp.status == 200
    assert [e.name for e in states] == ["circuit_open", "circuit_closed"]


async def test_4xx_answers_never_open_the_breaker(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(404)
    guard = OverloadGuard(budget=None, breaker=_breaker(), clock=clock)
    async with await _engine(serve, backend, clock, guard) as engine:
        for _ in range(30):
            with pytest.raises(ClientStatusError):
                await engine.request("GET", "svc", "/x")
    assert backend.hits == 30
    host = next(iter(guard._status))[1]
    assert guard.breaker_state("svc", host) is BreakerState.CLOSED


async def test_spent_budget_fails_at_once_with_the_last_error_logged_and_hooked(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend(503)
    giveups: list[GiveUpEvent] = []
    states: list[StateEvent] = []
    hooks = EventHooks(on_giveup=[giveups.append], on_state=[states.append])
    guard = OverloadGuard(
        budget=RetryBudget(ratio=0.0, min_retries_per_second=0.0),
        breaker=None,
        clock=clock,
        hooks=hooks,
    )
    host = await serve(backend.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, overload=guard, hooks=hooks, retry=POLICY
    ) as engine:
        with pytest.raises(RetryBudgetExhausted) as info:
            await engine.request("GET", "svc", "/x")
    assert backend.hits == 1
    assert clock.sleeps == []
    assert isinstance(info.value.last, ServerStatusError)
    assert info.value.last.status == 503
    assert [e.name for e in states] == ["retry_budget_exhausted"]
    assert len(giveups) == 1
    assert "retry budget" in giveups[0].reason
    assert any("retry budget" in r.getMessage() for r in caplog.records)


async def test_full_outage_retries_stay_within_the_share_of_first_attempts(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    guard = OverloadGuard(
        budget=RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=300.0),
        breaker=None,
        clock=clock,
    )
    async with await _engine(serve, backend, clock, guard) as engine:
        results = await asyncio.gather(
            *(engine.request("GET", "svc", "/x") for _ in range(50)), return_exceptions=True
        )
    assert all(isinstance(r, (RetryBudgetExhausted, RetriesExhausted)) for r in results)
    assert backend.hits <= 50 * 1.2, "the bare schedule would have sent 200"
    assert backend.hits > 50, "the share is still used"


async def test_healthy_service_with_guard_behaves_as_without(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(200)
    guard = OverloadGuard(clock=clock)
    async with await _engine(serve, backend, clock, guard) as engine:
        for _ in range(10):
            assert (await engine.request("GET", "svc", "/x")).status == 200
    assert backend.hits == 10
    assert clock.sleeps == []


async def test_calls_refused_during_a_break_log_once_at_the_opening_not_once_per_call(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend(503)
    giveups: list[GiveUpEvent] = []
    guard = OverloadGuard(budget=None, breaker=_breaker(first=60.0), clock=clock)
    host = await serve(backend.app())
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=POLICY,
        hooks=EventHooks(on_giveup=[giveups.append]),
    ) as engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "svc", "/x")
        caplog.clear()
        for _ in range(50):
            with pytest.raises(CircuitOpen):
                await engine.request("GET", "svc", "/x")
    assert [r for r in caplog.records if r.levelno >= 20 and "circuit" in r.getMessage()] == []
    assert len(giveups) == 51, "every refused call still reaches the on_giveup hook"


class _TwoPaths:
    """A service where ``/slow`` and ``/probe`` answer only when their event is set (with the
    status set for them), and every other path answers ``status`` at once."""

    def __init__(self) -> None:
        self.status = 503
        self.held = {"/slow": asyncio.Event(), "/probe": asyncio.Event()}
        self.answer = {"/slow": 503, "/probe": 200}
        self.arrived = {path: asyncio.Event() for path in self.held}

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        if path in self.held:
            self.arrived[path].set()
            await self.held[path].wait()
            return web.Response(status=self.answer[path], text="{}")
        return web.Response(status=self.status, text="{}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def test_a_slow_attempt_from_before_the_break_is_not_taken_for_the_probes_verdict(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """An attempt admitted while the breaker was closed times out (here: a 503) after the break,
    while the probe is out: it neither re-opens the breaker for a longer break nor keeps the
    probe's success from closing it."""
    service = _TwoPaths()
    states: list[StateEvent] = []
    guard = OverloadGuard(
        budget=None,
        breaker=_breaker(min_calls=4, first=5.0),
        clock=clock,
        hooks=EventHooks(on_state=[states.append]),
    )
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    host = await serve(service.app())
    async with Engine({"svc": host}, scheme="http", clock=clock, overload=guard) as engine:
        try:
            slow = asyncio.ensure_future(engine.request("GET", "svc", "/slow", retry=once))
            await service.arrived["/slow"].wait()
            for _ in range(4):
                with pytest.raises(RetriesExhausted):
                    await engine.request("GET", "svc", "/x", retry=once)
            assert guard.breaker_state("svc", host) is BreakerState.OPEN
            await clock.sleep(5.0)
            probe = asyncio.ensure_future(engine.request("GET", "svc", "/probe", retry=once))
            await service.arrived["/probe"].wait()
            service.held["/slow"].set()
            with pytest.raises(RetriesExhausted):
                await slow
            assert guard.breaker_state("svc", host) is BreakerState.HALF_OPEN, "not re-opened"
            assert [e.name for e in states] == ["circuit_open"]
            service.held["/probe"].set()
            assert (await probe).status == 200
            assert guard.breaker_state("svc", host) is BreakerState.CLOSED
            service.status = 200
            assert (await engine.request("GET", "svc", "/x", retry=once)).status == 200
        finally:
            for held in service.held.values():  # no handler left waiting, whatever failed
                held.set()
