"""A fleet probe stuck past its lease, ending while the shared store (a real redis-server) is
down: the reads that tell whether it is still the fleet's probe fall back as every other store
operation of the guard does, neither hanging nor failing the call, and its answer decides."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BreakerState
from le_transport.state import RedisStore
from tests.redis_server import RedisServer, close_client, redis_server
from tests.test_breaker_late_probe import BREAKER, DOWN, HOST
from tests.test_guard_hot_path import _Call

__all__ = ["redis_server"]


async def test_a_late_fleet_probe_ending_in_a_store_outage_still_decides(
    redis_server: RedisServer,
) -> None:
    # Redis' TTLs run on real time: so does the guard here, its breaker scaled down.
    breaker = BREAKER.scaled(0.01)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(client=client, op_timeout=2.0)
    guard = OverloadGuard(budget=None, breaker=breaker, store=store, account="1")
    try:
        for _ in range(breaker.minimum_throughput):
            call = _Call("svc", HOST)
            assert await guard.admit(call, 1) is None
            await guard.settle(call, 1, DOWN)
        await asyncio.sleep(breaker.breaks.first + 0.02)
        stuck = _Call("svc", HOST)
        assert await guard.admit(stuck, 1) is None
        await asyncio.sleep(breaker.probe_lease + 0.05)
        redis_server.kill()
        await asyncio.wait_for(guard.settle(stuck, 1, DOWN), timeout=15.0)
        assert guard.breaker_state("svc", HOST) is BreakerState.OPEN
    finally:
        await close_client(client)
