"""Breaker trips and the retry budget shared by the engines of a fleet, through one store.

Two engines stand for two processes; they share a store (a MemoryStore here, Redis in
production: the same protocol) and a loopback service, on virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from le_transport import Engine, RetryPolicy
from le_transport.errors import CircuitOpen, RetriesExhausted, RetryBudgetExhausted
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, CircuitBreaker, RetryBudget
from le_transport.state import MemoryStore
from le_transport.testing import VirtualClock
from tests.backends import Backend

ServerFactory = Callable[[web.Application], Awaitable[str]]
POLICY = RetryPolicy(attempt_timeout=None)


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(
        minimum_throughput=4,
        sampling_window=300.0,
        breaks=BackoffPolicy(first=20.0, cap=600.0, jitter=0.0, floor=0.0),
    )


async def test_a_break_opened_by_one_process_is_adopted_by_the_others(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = [
        OverloadGuard(budget=None, breaker=_breaker(), store=store, account="1", clock=clock)
        for _ in range(2)
    ]
    async with (
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[0], retry=POLICY) as a,
        Engine({"svc": host}, scheme="http", clock=clock, overload=guards[1], retry=POLICY) as b,
    ):
        with pytest.raises(RetriesExhausted):
            await a.request("GET", "svc", "/x")
        hits = backend.hits
        with pytest.raises(CircuitOpen) as info:
            await b.request("GET", "svc", "/x")
        assert backend.hits == hits, "the other process sent nothing during the break"
        assert info.value.retry_at == pytest.approx(clock.now() + 20.0)


async def test_in_half_open_one_probe_goes_for_the_whole_fleet(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    guards = [
        OverloadGuard(budget=None, breaker=_breaker(), store=store, account="1", clock=clock)
        for _ in range(3)
    ]
    engines = [
        Engine({"svc": host}, scheme="http", clock=clock, overload=g, retry=POLICY) for g in guards
    ]
    for e in engines:
        await e.start()
    try:
        with pytest.raises(RetriesExhausted):
            await engines[0].request("GET", "svc", "/x")
        for e in engines[1:]:
            with pytest.raises(CircuitOpen):
                await e.request("GET", "svc", "/x")
        await clock.sleep(20.0)
        backend.status = 200
        backend.gate = asyncio.Event()
        backend.arrived.clear()
        hits = backend.hits
        once = RetryPolicy(pauses=(), attempt_timeout=None)
        calls = [asyncio.ensure_future(e.request("GET", "svc", "/x", retry=once)) for e in engines]
        await backend.arrived.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert backend.hits == hits + 1, "one probe for three processes"
        assert sum(1 for r in results if isinstance(r, CircuitOpen)) == 2
    finally:
        for e in engines:
            await e.close()


async def test_the_fleets_retries_share_one_budget(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend()
    host = await serve(backend.app())
    store = MemoryStore(clock)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=300.0)
    guards = [
        OverloadGuard(budget=budget, breaker=None, store=store, account="1", clock=clock)
        for _ in range(4)
    ]
    engines = [
        Engine({"svc": host}, scheme="http", clock=clock, overload=g, retry=POLICY) for g in guards
    ]
    for e in engines:
        await e.start()
    try:
        results = await asyncio.gather(
            *(e.request("GET", "svc", "/x") for e in engines for _ in range(10)),
            return_exceptions=True,
        )
    finally:
        for e in engines:
            await e.close()
    assert all(isinstance(r, (RetryBudgetExhausted, RetriesExhausted)) for r in results)
    assert backend.hits - 40 <= 0.2 * 40, "four processes, one budget"
