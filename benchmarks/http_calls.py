"""HTTP calls side by side: raw aiohttp, our engine, and aiohttp wrapped in the retry libraries.

Two workloads against the benchmark server in its own process:

- **happy path** (``/ok``): requests per second and p50/p99 latency at concurrency 1 and 64.
- **under faults** (``/flaky``: 10% 503s): the same, plus retry amplification (requests the
  server saw / logical calls) and the share of calls that still failed. Every retrying client
  runs the same schedule, the guide's 5/10/15 s scaled to 5/10/15 ms: 4 attempts at most.

Every client gets the same unlimited connector and reads the whole body. Rounds are
interleaved (each round runs every client once, in a rotated order) so that noise from other
processes on the machine falls on all of them alike; a ratio to raw aiohttp is taken within a
round and the median over rounds is reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from le_transport import Engine, RetryPolicy

from ._common import (
    PeerMissing,
    ServerProcess,
    cpu_seconds,
    missing_peer,
    not_measured,
    percentile,
    server,
    spread,
    table,
)

__all__ = ["CLIENTS", "PEERS", "available_clients", "profile", "run", "unavailable_clients"]

#: The guide's 5/10/15 s schedule, scaled a thousandfold so that a run takes seconds.
PAUSES = (0.005, 0.010, 0.015)
FAULT_RATE = 0.1

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"duration": 0.05, "warmup": 0.02, "rounds": 1, "concurrency": (1, 4)},
    "quick": {"duration": 0.3, "warmup": 0.1, "rounds": 2, "concurrency": (1, 64)},
    "full": {"duration": 1.5, "warmup": 0.5, "rounds": 5, "concurrency": (1, 64)},
}

Call = Callable[[], Awaitable[None]]


class ServerError(Exception):
    """A 5xx answer, raised by the hand-written clients so the retry libraries can see it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"server answered {status}")
        self.status = status


def _session() -> aiohttp.ClientSession:
    # One connector configuration for every client: unlimited, as the engine's with limit 0.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )


def _raw_call(session: aiohttp.ClientSession, url: URL) -> Call:
    async def call() -> None:
        async with session.get(url) as resp:
            await resp.read()
            if resp.status >= 500:
                raise ServerError(resp.status)

    return call


@contextlib.asynccontextmanager
async def raw_aiohttp(url: URL) -> AsyncIterator[Call]:
    """aiohttp alone: no retries (under faults, its failed calls are counted, not retried)."""
    async with _session() as session:
        yield _raw_call(session, url)


@contextlib.asynccontextmanager
async def engine(url: URL) -> AsyncIterator[Call]:
    """Our engine with the whole stack on: retry schedule, attempt timeout, call deadline,
    buffered body with its size limit, typed errors, logging and hooks."""
    policy = RetryPolicy(pauses=PAUSES, attempt_timeout=10.0, deadline=30.0)
    path = url.path
    async with Engine(
        {"bench": f"{url.host}:{url.port}"}, scheme="http", retry=policy, connection_limit=0
    ) as eng:

        async def call() -> None:
            await eng.request("GET", "bench", path)

        yield call


@contextlib.asynccontextmanager
async def engine_guarded(url: URL) -> AsyncIterator[Call]:
    """The same engine with the overload guard on too (retry budget and circuit breaker, in
    this process's memory): every layer the engine has."""
    from le_transport.middleware.overload import OverloadGuard

    policy = RetryPolicy(pauses=PAUSES, attempt_timeout=10.0, deadline=30.0)
    path = url.path
    async with Engine(
        {"bench": f"{url.host}:{url.port}"},
        scheme="http",
        retry=policy,
        connection_limit=0,
        overload=OverloadGuard(),
    ) as eng:

        async def call() -> None:
            await eng.request("GET", "bench", path)

        yield call


@contextlib.asynccontextmanager
async def tenacity_wrapped(url: URL) -> AsyncIterator[Call]:
    """``@tenacity.retry`` around the raw aiohttp call."""
    import tenacity

    async with _session() as session:
        yield tenacity.retry(
            stop=tenacity.stop_after_attempt(len(PAUSES) + 1),
            wait=tenacity.wait_chain(*(tenacity.wait_fixed(p) for p in PAUSES)),
            retry=tenacity.retry_if_exception_type((ServerError, aiohttp.ClientError)),
            reraise=True,
        )(_raw_call(session, url))


@contextlib.asynccontextmanager
async def backoff_wrapped(url: URL) -> AsyncIterator[Call]:
    """``@backoff.on_exception`` around the raw aiohttp call."""
    import backoff

    def schedule() -> Any:
        yield None  # backoff primes the generator with one send(None) before asking
        for pause in PAUSES:  # noqa: UP028 - backoff send()s into it; a tuple iterator cannot
            yield pause

    async with _session() as session:
        yield backoff.on_exception(
            schedule,
            (ServerError, aiohttp.ClientError),
            max_tries=len(PAUSES) + 1,
            jitter=None,
            logger=None,
        )(_raw_call(session, url))


@contextlib.asynccontextmanager
async def stamina_wrapped(url: URL) -> AsyncIterator[Call]:
    """``@stamina.retry`` around the raw aiohttp call (its backoff set to 5, 10, 15 ms)."""
    import stamina

    async with _session() as session:
        yield stamina.retry(
            on=(ServerError, aiohttp.ClientError),
            attempts=len(PAUSES) + 1,
            timeout=None,
            wait_initial=PAUSES[0],
            wait_exp_base=2,
            wait_max=PAUSES[-1],
            wait_jitter=0.0,
        )(_raw_call(session, url))


@contextlib.asynccontextmanager
async def aiohttp_retry_client(url: URL) -> AsyncIterator[Call]:
    """aiohttp-retry's ``RetryClient`` with a ``ListRetry`` of the same schedule."""
    from aiohttp_retry import ListRetry, RetryClient

    # ListRetry reads timeouts[attempt] after attempt 1, 2, 3: index 0 is never used.
    options = ListRetry(timeouts=[0.0, *PAUSES], statuses={503}, exceptions={aiohttp.ClientError})
    async with RetryClient(client_session=_session(), retry_options=options) as client:

        async def call() -> None:
            async with client.get(url) as resp:
                await resp.read()
                if resp.status >= 500:
                    raise ServerError(resp.status)

        yield call


ClientFactory = Callable[[URL], contextlib.AbstractAsyncContextManager[Call]]

#: Every client, in table order. The first is the baseline for ratios.
CLIENTS: dict[str, ClientFactory] = {
    "raw aiohttp": raw_aiohttp,
    "le_transport engine": engine,
    "le_transport engine + overload guard": engine_guarded,
    "tenacity": tenacity_wrapped,
    "backoff": backoff_wrapped,
    "stamina": stamina_wrapped,
    "aiohttp-retry": aiohttp_retry_client,
}

#: The clients that need a peer library (the bench extra), and the module each imports.
PEERS: dict[str, str] = {
    "tenacity": "tenacity",
    "backoff": "backoff",
    "stamina": "stamina",
    "aiohttp-retry": "aiohttp_retry",
}


def unavailable_clients() -> dict[str, str]:
    """Each client of :data:`CLIENTS` that cannot run here, and why (its peer library is not
    installed): the run measures the others and records these as errors."""
    out: dict[str, str] = {}
    for name, module in PEERS.items():
        why = missing_peer(module)
        if why is not None:
            out[name] = why
    return out


def available_clients() -> list[str]:
    """The clients of :data:`CLIENTS` that can run here, in table order."""
    missing = unavailable_clients()
    return [name for name in CLIENTS if name not in missing]


async def _measure(call: Call, concurrency: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    errors: collections.Counter[str] = collections.Counter()
    clock = time.perf_counter
    stop_at = clock() + duration

    async def worker() -> None:
        nonlocal failures
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            try:
                await call()
            except Exception as exc:
                failures += 1
                errors[type(exc).__name__] += 1
            latencies.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - start
    return {
        "calls": len(latencies),
        "failures": failures,
        "errors": dict(errors),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def _served(session: aiohttp.ClientSession, srv: ServerProcess) -> int:
    async with session.get(srv.url("/stats")) as resp:
        return int((await resp.json())["requests"])


async def _workload(
    srv: ServerProcess, path: str, size: dict[str, Any], clients: list[str]
) -> dict[str, Any]:
    url = URL(srv.url(path))
    results: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(aiohttp.ClientSession())
        calls = {name: await stack.enter_async_context(CLIENTS[name](url)) for name in clients}
        names = list(calls)
        for concurrency in size["concurrency"]:
            for name in names:
                await _measure(calls[name], concurrency, size["warmup"])
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for r in range(size["rounds"]):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    gc.collect()
                    sent_before = await _served(admin, srv)
                    server_cpu, client_cpu = srv.cpu_seconds(), cpu_seconds()
                    m = await _measure(calls[name], concurrency, size["duration"])
                    m["server_cpu"] = (srv.cpu_seconds() - server_cpu) / m["seconds"]
                    m["client_cpu"] = (cpu_seconds() - client_cpu) / m["seconds"]
                    m["sent"] = await _served(admin, srv) - sent_before
                    rounds[name].append(m)
            results[str(concurrency)] = _summarise(rounds)
    return results


def _summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = rounds["raw aiohttp"]
    out: dict[str, Any] = {}
    for name, ms in rounds.items():
        calls = sum(m["calls"] for m in ms)
        out[name] = {
            "rps": spread([m["rps"] for m in ms]),
            "ratio_to_raw": spread([m["rps"] / b["rps"] for m, b in zip(ms, base, strict=True)]),
            "p50_ms": spread([m["p50_ms"] for m in ms]),
            "p99_ms": spread([m["p99_ms"] for m in ms]),
            "amplification": sum(m["sent"] for m in ms) / calls if calls else float("nan"),
            "failed_share": sum(m["failures"] for m in ms) / calls if calls else float("nan"),
            # Failed calls by exception type: the overload guard's refusals (a spent retry
            # budget, an open breaker) are its design working, not a lost call to explain.
            "errors": dict(
                sum((collections.Counter(m["errors"]) for m in ms), collections.Counter())
            ),
            "server_cpu": spread([m["server_cpu"] for m in ms]),
            "client_cpu": spread([m["client_cpu"] for m in ms]),
            "cpu_us_per_call": spread([m["client_cpu"] * 1e6 / m["rps"] for m in ms]),
            "rounds": ms,
        }
    return out


def _rows(results: dict[str, Any], faults: bool) -> list[list[object]]:
    rows: list[list[object]] = []
    for concurrency, by_client in results.items():
        for name, r in by_client.items():
            if "error" in r:
                continue  # named under the table: "<name>: <why>; not measured"
            row: list[object] = [
                name,
                concurrency,
                r["rps"].describe(),
                f"{r['ratio_to_raw'].median:.1%}",
                f"{r['p50_ms'].median:.2f}",
                f"{r['p99_ms'].median:.2f}",
            ]
            if faults:
                row += [f"{r['amplification']:.3f}", f"{r['failed_share']:.2%}"]
            else:
                row.append(f"{r['cpu_us_per_call'].median:.0f}")
            row += [f"{r['client_cpu'].median:.0%}", f"{r['server_cpu'].median:.0%}"]
            rows.append(row)
    return rows


def run(size_name: str, workloads: tuple[str, ...] = ("http", "faults")) -> dict[str, Any]:
    """Run the happy-path (``http``) and under-faults (``faults``) workloads."""
    size = SIZES[size_name]
    happy: dict[str, Any] | None = None
    faults: dict[str, Any] | None = None
    # A peer library that is not installed (the bench extra) leaves its client out; the rest
    # is measured, and the JSON holds an error entry for it in each table.
    missing = unavailable_clients()
    clients = [name for name in CLIENTS if name not in missing]
    # Every library logs its retries and failures; a benchmark measures the work, not the
    # console (nor how a machine's logging is configured).
    logging.disable(logging.CRITICAL)
    try:
        if "http" in workloads:
            with server() as srv:
                happy = _with_errors(asyncio.run(_workload(srv, "/ok", size, clients)), missing)
        if "faults" in workloads:
            with server("--flaky-p", str(FAULT_RATE)) as srv:
                faults = _with_errors(asyncio.run(_workload(srv, "/flaky", size, clients)), missing)
    finally:
        logging.disable(logging.NOTSET)
    head = ["client", "conc.", "calls/s median (range)", "vs raw", "p50 ms", "p99 ms"]
    cpu = ["client CPU", "server CPU"]
    parts: list[str] = []
    if happy is not None:
        parts += [
            "HTTP happy path (GET /ok, whole body read)",
            table([*head, "CPU us/call", *cpu], _rows(happy, faults=False)),
        ]
    if faults is not None:
        parts += [
            f"HTTP under faults ({FAULT_RATE:.0%} 503s; schedule 5/10/15 ms, 4 attempts at most; "
            "raw aiohttp does not retry)",
            table([*head, "sent/call", "failed", *cpu], _rows(faults, faults=True)),
        ]
    skipped = not_measured({name: {"error": why} for name, why in missing.items()})
    if skipped:
        parts.append(skipped)
    raw_call_us = None
    if happy is not None:
        # CPU, not wall time: the policy table divides CPU times by it (a call's wall time at
        # concurrency 1 includes the server's and the wait, and made the shares look smaller).
        raw_call_us = happy[str(size["concurrency"][0])]["raw aiohttp"]["cpu_us_per_call"].median
    return {
        "text": "\n\n".join(parts),
        "raw_call_us": raw_call_us,
        "data": {
            "size": size,
            "pauses": PAUSES,
            "happy": happy,
            "faults": faults,
            "not_measured": {name: {"error": why} for name, why in missing.items()},
        },
    }


def _with_errors(results: dict[str, Any], missing: dict[str, str]) -> dict[str, Any]:
    """``results`` (by concurrency, then client) with an error entry for each client that was
    not measured, in table order."""
    return {
        concurrency: {
            name: by_client[name] if name in by_client else {"error": missing[name]}
            for name in CLIENTS
            if name in by_client or name in missing
        }
        for concurrency, by_client in results.items()
    }


def profile(client: str, concurrency: int, seconds: float) -> str:
    """A profile of ``client``'s happy-path calls: pyinstrument's tree if it is installed
    (``pip install pyinstrument``), else cProfile's top functions by own time.

    A client whose peer library is not installed is not profiled: :class:`PeerMissing`, with
    ``"<client>: not installed (pip install -e '.[bench]'); not profiled"``."""
    factory = CLIENTS[client]
    why = missing_peer(PEERS[client]) if client in PEERS else None
    if why is not None:
        raise PeerMissing(f"{client}: {why}; not profiled")

    async def calls(srv: ServerProcess) -> str:
        async with factory(URL(srv.url("/ok"))) as call:
            await _measure(call, concurrency, 0.5)
            try:
                from pyinstrument import Profiler
            except ImportError:
                import cProfile
                import io
                import pstats

                cprof = cProfile.Profile()
                cprof.enable()
                await _measure(call, concurrency, seconds)
                cprof.disable()
                out = io.StringIO()
                pstats.Stats(cprof, stream=out).sort_stats("tottime").print_stats(40)
                return out.getvalue()
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            await _measure(call, concurrency, seconds)
            profiler.stop()
            text: str = profiler.output_text(unicode=False, color=False)
            return text

    with server() as srv:
        return asyncio.run(calls(srv))
