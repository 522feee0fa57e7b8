"""Where the engine's extra CPU per call goes: the HTTP happy path built up one layer at a time.

``python -m benchmarks run --only http_layers``. Every row is a plain ``aiohttp.ClientSession``
(same unlimited connector, ``GET /ok``, whole body read) with one more layer than the row above:
no middleware at all (and, for reference, the same with aiohttp's default 5-minute total
timeout armed on every request, which the engine and every other row turn off); a middleware
that only calls the handler (what aiohttp's middleware machinery costs by itself: the
per-request chain closure and one coroutine layer); one that also reads the body inside the
chain; our retry middleware without timeouts, without and with body buffering; with the
per-attempt timeout; with the call deadline too; and the whole ``Engine``.
Reported: the client's CPU per call (``process_time``), median and best over rounds taken in a
rotated order, and each row's difference to raw aiohttp. The best of rounds moves least when the
machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from yarl import URL

from le_transport.middleware.retry import RetryMiddleware
from le_transport.policies.retry import RetryPolicy

from ._common import drive, server, table
from .http_calls import PAUSES, Call, _raw_call, engine

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"calls": 40, "warmup": 10, "rounds": 1, "concurrency": 4},
    "quick": {"calls": 1500, "warmup": 200, "rounds": 3, "concurrency": 64},
    "full": {"calls": 3000, "warmup": 300, "rounds": 9, "concurrency": 64},
}


async def _pass_through(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    return await handler(request)


async def _read_inside(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    resp = await handler(request)
    await resp.read()
    return resp


def _session_with(
    middlewares: Callable[[], Sequence[ClientMiddlewareType]],
    *,
    timeout: aiohttp.ClientTimeout = aiohttp.ClientTimeout(total=None),  # noqa: B008 - frozen
) -> Callable[[URL], contextlib.AbstractAsyncContextManager[Call]]:
    @contextlib.asynccontextmanager
    async def client(url: URL) -> AsyncIterator[Call]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=timeout,
            middlewares=tuple(middlewares()),
        ) as session:
            yield _raw_call(session, url)

    return client


def _retry(**policy: Any) -> Callable[[URL], contextlib.AbstractAsyncContextManager[Call]]:
    buffer_body = policy.pop("buffer_body", True)
    return _session_with(
        lambda: (
            RetryMiddleware(policy=RetryPolicy(pauses=PAUSES, **policy), buffer_body=buffer_body),
        )
    )


#: Each layer, in table order; the first is the baseline.
LAYERS: dict[str, Callable[[URL], contextlib.AbstractAsyncContextManager[Call]]] = {
    "raw aiohttp (no middleware)": _session_with(lambda: ()),
    # For reference, not a layer of ours: aiohttp as shipped arms its own 5-minute total
    # timeout on every request. Every other row (and every client of the HTTP table) turns it
    # off, as the engine does: its attempt timeout and deadline run on its own clock instead.
    "raw aiohttp, its default timeout (5 min)": _session_with(
        lambda: (), timeout=aiohttp.client.DEFAULT_TIMEOUT
    ),
    "+ a pass-through middleware": _session_with(lambda: (_pass_through,)),
    "+ body read inside the chain": _session_with(lambda: (_read_inside,)),
    "retry middleware, no timeouts, no buffering": _retry(attempt_timeout=None, buffer_body=False),
    "retry middleware, no timeouts": _retry(attempt_timeout=None),
    "retry middleware, attempt timeout": _retry(attempt_timeout=10.0),
    "retry middleware, attempt timeout + deadline": _retry(attempt_timeout=10.0, deadline=30.0),
    "Engine (the http table's)": engine,
}


async def _cpu_per_call_us(call: Call, concurrency: int, calls: int) -> float:
    start = time.process_time()
    await drive(call, calls, concurrency)
    return (time.process_time() - start) / calls * 1e6


async def _measure(url: URL, size: dict[str, int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in LAYERS}
    names = list(LAYERS)
    for r in range(size["rounds"]):
        # A rotated order per round, so that noise from other processes falls on all alike.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            async with LAYERS[name](url) as call:
                await _cpu_per_call_us(call, size["concurrency"], size["warmup"])
                out[name].append(await _cpu_per_call_us(call, size["concurrency"], size["calls"]))
    return out


def run(size_name: str) -> dict[str, Any]:
    """Measure every layer; ``{"text": table, "data": figures}``."""
    size = SIZES[size_name]
    with server() as srv:
        figures = asyncio.run(_measure(URL(srv.url("/ok")), size))
    base_median = statistics.median(figures[next(iter(LAYERS))])
    base_best = min(figures[next(iter(LAYERS))])
    rows = []
    data: dict[str, Any] = {"size": size, "layers": {}}
    for name, values in figures.items():
        median, best = statistics.median(values), min(values)
        data["layers"][name] = {"cpu_us_per_call": values, "median": median, "best": best}
        rows.append(
            [
                name,
                f"{median:,.1f}",
                f"{best:,.1f}",
                f"{median - base_median:+,.1f}",
                f"{best - base_best:+,.1f}",
            ]
        )
    text = (
        f"Where the engine's CPU goes (GET /ok, concurrency {size['concurrency']}, "
        f"{size['rounds']} rounds of {size['calls']:,} calls; client CPU per call)\n\n"
        + table(
            ["layers", "us/call median", "us/call best", "vs raw (median)", "vs raw (best)"],
            rows,
        )
    )
    return {"text": text, "data": data}
