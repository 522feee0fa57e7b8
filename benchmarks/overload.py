"""Overload protection, measured side by side: retry amplification, fleet logins, Redis cost.

``python -m benchmarks.overload [--quick|--tiny]`` (or ``python -m benchmarks run --only
overload``) prints three tables and writes JSON to ``benchmarks/results/``:

1. **Retry amplification** (requests sent / calls made) under 50% and 100% 5xx, for the
   guide's 5/10/15 s schedule bare, with the retry budget, with budget and breaker, and for
   tenacity and stamina loops doing the same 4 attempts. Calls arrive at a steady rate over
   minutes of virtual time (a real loopback server, in the same loop as a ``VirtualClock``), so
   the budget's window and the breaker's breaks play out as they would in production.
   The issue's target: <= 1.2x with the budget under a full outage, against the schedule's 4x.
2. **Logins per session lifetime** for 1, 10 and 50 real processes, each living two refresh
   intervals, without and with the session shared through a real redis-server. Target: 1.
3. **Cost of the Redis store per call** on loopback (p50/p99 of whole calls through the engine,
   healthy service), with no guard, the guard on local state, the guard on Redis with first
   attempts batched (the default: about one Redis round trip per ``flush_interval``, a few
   more near the end of each budget slot), and unbatched.
   Batching keeps Redis off the happy path; what it trades away is that the fleet sees a
   process's first attempts up to ``flush_interval`` late, which makes the shared budget
   stricter, never looser on a store that keeps the guard's clock (a batch is sent within its
   slot of the window or dropped; on Redis, whose slots follow the server's clock, a batch may
   land one slot late).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from le_transport import Engine, RetryPolicy
from le_transport.clock import RealClock
from le_transport.errors import TransportError
from le_transport.middleware.overload import DEFAULT_BREAKER, OverloadGuard
from le_transport.state import FallbackStore, MemoryStore, RedisStore
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Account, Simulator, SimulatorConfig

from ._common import machine, missing_peer, not_measured, percentile, table, write_json

__all__ = ["SIZES", "main", "run"]

#: ``refresh``: the fleet's session refresh interval; each process lives ``lifetime`` seconds
#: after its call, two intervals and a little (``tiny``, run by the tests, only proves it runs).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "calls": 60,
        "rate": 2.0,
        "fleet": (1, 2),
        "cost_calls": 50,
        "refresh": 1.0,
        "lifetime": 2.3,
    },
    "quick": {
        "calls": 600,
        "rate": 5.0,
        "fleet": (1, 10),
        "cost_calls": 1000,
        "refresh": 2.0,
        "lifetime": 4.5,
    },
    "full": {
        "calls": 2000,
        "rate": 10.0,
        "fleet": (1, 10, 50),
        "cost_calls": 3000,
        "refresh": 2.0,
        "lifetime": 4.5,
    },
}

ACCOUNT = "11223344"
USER = "bench-bot"
PASSWORD = "bench-password"  # the simulator's test credential, not a secret
ROOT = str(Path(__file__).resolve().parents[1])


# -- 1. retry amplification ---------------------------------------------------------------------


class FlakyService:
    """A loopback service answering 503 with probability ``p`` (seeded), counting requests."""

    def __init__(self, p: float, seed: int = 7) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.rng.random() < self.p:
            return web.Response(status=503, text='{"error":"unavailable"}')
        return web.Response(text='{"ok":true}', content_type="application/json")


@contextmanager
def _stamina_testing(variant: str) -> Iterator[None]:
    if variant != "stamina":
        yield  # stamina is a peer library (the bench extra): only its own variant needs it
        return
    import stamina
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([])
    # No waiting (stamina sleeps on the real loop, which a virtual clock cannot drive); the
    # attempt count, which is what amplification measures, stays 4.
    stamina.set_testing(True, attempts=4)
    try:
        yield
    finally:
        stamina.set_testing(False)


class _Retryable(Exception):
    pass


async def _amplification(variant: str, p: float, calls: int, rate: float) -> dict[str, Any]:
    clock = VirtualClock()
    service = FlakyService(p)
    app = web.Application()
    app.router.add_get("/api", service.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    ok = 0
    try:
        call = await _client(variant, host, clock)
        async with call as do_call:

            async def one(i: int) -> None:
                nonlocal ok
                await clock.sleep(i / rate)
                try:
                    if await do_call():
                        ok += 1
                except (TransportError, _Retryable, aiohttp.ClientError):
                    pass
                except Exception as exc:  # tenacity's RetryError and friends
                    if type(exc).__name__ not in ("RetryError",):
                        raise

            with _stamina_testing(variant):
                await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await runner.cleanup()
    return {
        "calls": calls,
        "requests": service.requests,
        "amplification": service.requests / calls,
        "succeeded": ok / calls,
    }


class _Client:
    """An async context manager giving ``() -> awaitable[bool]`` (True: the call succeeded)."""

    def __init__(
        self,
        enter: Callable[[], Awaitable[Callable[[], Awaitable[bool]]]],
        leave: Callable[[], Awaitable[None]],
    ) -> None:
        self._enter, self._leave = enter, leave

    async def __aenter__(self) -> Callable[[], Awaitable[bool]]:
        return await self._enter()

    async def __aexit__(self, *exc: object) -> None:
        await self._leave()


async def _client(variant: str, host: str, clock: VirtualClock) -> _Client:
    url = f"http://{host}/api"
    if variant in ("bare schedule", "+ budget", "+ budget + breaker"):
        guard = None
        if variant != "bare schedule":
            guard = OverloadGuard(
                clock=clock,
                rng=random.Random(1),
                breaker=None if variant == "+ budget" else DEFAULT_BREAKER,
            )
        engine = Engine(
            {"svc": host},
            scheme="http",
            clock=clock,
            overload=guard,
            retry=RetryPolicy(attempt_timeout=None),
        )

        async def enter() -> Callable[[], Awaitable[bool]]:
            await engine.start()

            async def call() -> bool:
                await engine.request("GET", "svc", "/api")
                return True

            return call

        return _Client(enter, engine.close)
    session: aiohttp.ClientSession | None = None

    async def leave() -> None:
        if session is not None:
            await session.close()

    async def get() -> bool:
        assert session is not None
        async with session.get(url) as resp:
            await resp.read()
            if resp.status >= 500:
                raise _Retryable(resp.status)
            return True

    if variant == "tenacity":
        import tenacity

        async def enter_t() -> Callable[[], Awaitable[bool]]:
            nonlocal session
            session = aiohttp.ClientSession()

            async def call() -> bool:
                async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_attempt(4),
                    wait=tenacity.wait_chain(
                        tenacity.wait_fixed(5), tenacity.wait_fixed(10), tenacity.wait_fixed(15)
                    ),
                    retry=tenacity.retry_if_exception_type(_Retryable),
                    sleep=clock.sleep,
                ):
                    with attempt:
                        return await get()
                return False

            return call

        return _Client(enter_t, leave)
    if variant == "stamina":
        import stamina

        async def enter_s() -> Callable[[], Awaitable[bool]]:
            nonlocal session
            session = aiohttp.ClientSession()

            async def call() -> bool:
                async for attempt in stamina.retry_context(
                    on=_Retryable, attempts=4, wait_initial=5.0, wait_max=15.0
                ):
                    with attempt:
                        return await get()
                return False

            return call

        return _Client(enter_s, leave)
    raise ValueError(variant)


AMPLIFICATION_VARIANTS = ("bare schedule", "+ budget", "+ budget + breaker", "tenacity", "stamina")
#: The variants that need a peer library (the bench extra), and the module each imports.
PEERS = {"tenacity": "tenacity", "stamina": "stamina"}


def amplification(size: dict[str, Any]) -> tuple[dict[str, Any], str]:
    data: dict[str, Any] = {}
    rows: list[list[object]] = []
    skipped: dict[str, Any] = {}
    for variant in AMPLIFICATION_VARIANTS:
        why = missing_peer(PEERS[variant]) if variant in PEERS else None
        if why is not None:
            # Not installed: recorded as an error, named under the table, the rest measured.
            data[variant] = skipped[variant] = {"error": why}
            continue
        row: list[object] = [variant]
        for p in (0.5, 1.0):
            r = asyncio.run(_amplification(variant, p, size["calls"], size["rate"]))
            data.setdefault(variant, {})[f"{p:.0%}"] = r
            row += [f"{r['amplification']:.2f}x", f"{r['succeeded']:.0%}"]
        rows.append(row)
    text = table(
        ["client", "50% 5xx: sent/call", "ok", "100% 5xx: sent/call", "ok"],
        rows,
    )
    if skipped:
        text += "\n" + not_measured(skipped)
    return data, (
        f"Retry amplification, {size['calls']} calls at {size['rate']:g}/s on virtual time "
        "(the guide's 5/10/15 s; budget 10% + 0.1/s over 30 s; breaker 75% of 20 over 30 s)\n"
        + text
    )


# -- 2. logins per session lifetime -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A redis-server on a free loopback port (None if it is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="le_bench_redis_") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def _redis(url: str | None) -> Iterator[str | None]:
    """``url`` if one is given (a redis-server of the caller's: the tests'), else a
    redis-server of our own for the duration (None if none is installed)."""
    if url is not None:
        yield url
        return
    with redis_server() as own:
        yield own


async def _fleet_logins(
    processes: int, redis_url: str | None, refresh: float = 2.0, lifetime: float = 4.5
) -> dict[str, Any]:
    config = SimulatorConfig(accounts=(Account(id=ACCOUNT, users={USER: PASSWORD}),))
    async with Simulator(config, clock=RealClock()) as sim:
        worker_config = {
            "account": ACCOUNT,
            "user": USER,
            "password": PASSWORD,
            "domains": sim.domains,
            "redis_url": redis_url,
            "refresh_interval": refresh,
            "lifetime": lifetime,
        }
        procs = []
        for _ in range(processes):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.overload_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=ROOT,
            )
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(worker_config) + "\n").encode())
            procs.append(proc)
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
        finished = sum(1 for out, _ in outputs if out.strip())
        return {
            "processes": processes,
            "finished": finished,
            "logins": sim.tokens.logins,
            "refreshes": sim.tokens.refreshes,
        }


def fleet(size: dict[str, Any], redis_url: str | None = None) -> tuple[dict[str, Any], str]:
    """Logins per session lifetime for each fleet size of ``size``, without Redis and with the
    session shared through ``redis_url`` (default: a redis-server started for the run)."""
    data: dict[str, Any] = {}
    rows: list[list[object]] = []
    refresh, lifetime = size.get("refresh", 2.0), size.get("lifetime", 4.5)
    with _redis(redis_url) as url:
        for n in size["fleet"]:
            alone = asyncio.run(_fleet_logins(n, None, refresh, lifetime))
            shared = asyncio.run(_fleet_logins(n, url, refresh, lifetime)) if url else None
            data[str(n)] = {"without_redis": alone, "with_redis": shared}
            rows.append(
                [
                    n,
                    alone["logins"],
                    alone["refreshes"],
                    shared["logins"] if shared else "n/a",
                    shared["refreshes"] if shared else "n/a",
                ]
            )
    text = table(
        ["processes", "logins alone", "refreshes alone", "logins shared", "refreshes shared"],
        rows,
    )
    return data, (
        f"Logins per session lifetime (each process: one call, two {refresh:g} s refresh "
        "intervals), without and with the session shared through Redis\n" + text
    )


# -- 3. the Redis store's cost per call ---------------------------------------------------------


async def _cost(variant: str, calls: int, redis_url: str | None) -> dict[str, Any] | None:
    if variant.startswith("guard on Redis") and redis_url is None:
        return None
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text='{"ok":true}', content_type="application/json")

    app.router.add_get("/api", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    store = None
    guard = None
    if variant == "guard, local state":
        guard = OverloadGuard(store=MemoryStore(), account="bench")
    elif variant.startswith("guard on Redis"):
        assert redis_url is not None
        store = FallbackStore(RedisStore(redis_url, prefix="bench-cost"))
        batched = variant.endswith("batched")
        guard = OverloadGuard(store=store, account="bench", flush_interval=1.0 if batched else 0.0)
    latencies: list[float] = []
    try:
        async with Engine({"svc": host}, scheme="http", overload=guard) as engine:
            for _ in range(min(50, calls)):
                await engine.request("GET", "svc", "/api")
            for _ in range(calls):
                start = time.perf_counter()
                await engine.request("GET", "svc", "/api")
                latencies.append(time.perf_counter() - start)
    finally:
        if store is not None:
            await store.close()
        await runner.cleanup()
    return {
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "calls": calls,
    }


COST_VARIANTS = (
    "no guard",
    "guard, local state",
    "guard on Redis, batched",
    "guard on Redis, unbatched",
)


def cost(size: dict[str, Any], redis_url: str | None = None) -> tuple[dict[str, Any], str]:
    """Whole engine calls' p50/p99 on loopback for each of :data:`COST_VARIANTS`, the Redis
    ones on ``redis_url`` (default: a redis-server started for the run; none: n/a)."""
    data: dict[str, Any] = {}
    rows: list[list[object]] = []
    with _redis(redis_url) as url:
        for variant in COST_VARIANTS:
            r = asyncio.run(_cost(variant, size["cost_calls"], url))
            data[variant] = r
            if r is None:
                rows.append([variant, "n/a", "n/a"])
            else:
                rows.append([variant, f"{r['p50_us']:,.0f}", f"{r['p99_us']:,.0f}"])
    text = table(["engine call, healthy service", "p50 us", "p99 us"], rows)
    return data, (
        f"Cost per call on loopback ({size['cost_calls']} sequential calls; the budget "
        "and breaker on, every first attempt counted)\n" + text
    )


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the library's logs: an outage logs every retry, which is not what we measure."""
    logger = logging.getLogger("le_transport")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(size_name: str) -> dict[str, Any]:
    """Every part at ``size_name``; ``{"text": tables, "data": figures}``."""
    size = SIZES[size_name]
    with quiet():
        parts = [amplification(size), fleet(size), cost(size)]
    return {
        "data": {
            "amplification": parts[0][0],
            "logins": parts[1][0],
            "redis_cost": parts[2][0],
        },
        "text": "\n\n".join(text for _, text in parts),
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the tables, write ``benchmarks/results/overload-<size>.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true")
    sizes.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    facts = machine()
    print(
        f"overload benchmark, {size} size, {facts['cores']} cores, "
        f"load average {facts['load_average_at_start']}",
        flush=True,
    )
    result = run(size)
    print(result["text"])
    path = write_json(f"overload-{size}.json", {"machine": facts, "size": size, **result})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
