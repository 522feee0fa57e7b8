"""Policy decision cost, and our own cost per call with the network taken away.

Each decision is timed with :mod:`timeit` in a tight loop (best of several repeats, the usual
way to take the machine's noise out of a micro-benchmark) and compared with the cost of one
raw aiohttp call from the HTTP section when that ran in the same process.

The second table is what the engine adds to a call by itself: ``Engine.request`` and the retry
middleware run against a stub in place of aiohttp's connection (it answers at once with an
84-byte body), CPU time by ``thread_time`` (immune to being descheduled), best of repeats.
It is the figure the hot-path work moved, free of the loopback server's noise.
"""

from __future__ import annotations

import asyncio
import functools
import time
import timeit
from collections.abc import Callable, Generator
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from le_transport import Engine, RetryMiddleware
from le_transport.policies import BackoffPolicy, Classifier, Outcome, OutcomeKind, RetryPolicy

from ._common import table

__all__ = ["decisions", "run"]

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"number": 200, "repeat": 1, "calls": 100},
    "quick": {"number": 20_000, "repeat": 3, "calls": 2_000},
    "full": {"number": 100_000, "repeat": 5, "calls": 5_000},
}


def decisions() -> dict[str, Callable[[], object]]:
    """Every decision the hot paths make, as a zero-argument callable."""
    retry = RetryPolicy()
    jittered = RetryPolicy(jitter=0.1, deadline=60.0)
    backoff = BackoffPolicy.reconnect()
    classifier = Classifier()
    ok = Outcome.response(200)
    unavailable = Outcome.response(503)
    reset = Outcome.failure(OutcomeKind.CONNECTION_LOST, "ServerDisconnectedError")
    found: dict[str, Callable[[], object]] = {
        "RetryPolicy.decide (200: succeed)": lambda: retry.decide(1, ok, idempotent=True),
        "RetryPolicy.decide (503: retry)": lambda: retry.decide(1, unavailable, idempotent=True),
        "RetryPolicy.decide (503, jitter + deadline)": lambda: jittered.decide(
            2, unavailable, idempotent=True, elapsed=5.0, rand=0.3
        ),
        "RetryPolicy.decide (reset, POST: fail)": lambda: retry.decide(1, reset, idempotent=False),
        "RetryPolicy.decide (503, last: give up)": lambda: retry.decide(
            4, unavailable, idempotent=True
        ),
        "Classifier.classify (200)": lambda: classifier.classify(ok),
        "Classifier.classify (503)": lambda: classifier.classify(unavailable),
        "BackoffPolicy.next_delay (attempt 3)": lambda: backoff.next_delay(3, 10.0, 0.4),
        "BackoffPolicy.next_delay (attempt 30, capped)": lambda: backoff.next_delay(30, 10.0, 0.4),
        "Outcome.response (the value a decision takes)": lambda: Outcome.response(200),
    }
    found.update(_socket_decisions())
    return found


def _socket_decisions() -> dict[str, Callable[[], object]]:
    """The socket layer's decisions, timed when that layer's policies are present."""
    found: dict[str, Callable[[], object]] = {}
    try:
        from le_transport.policies.close_codes import ClosePolicy, Disconnect
        from le_transport.policies.keepalive import Keepalive
        from le_transport.policies.pacing import TokenBucket
    except ImportError:  # pragma: no cover - an older tree without the socket policies
        return found
    close = ClosePolicy()
    abnormal = Disconnect.abnormal(lifetime=120.0)
    keepalive = Keepalive(product="bench", action=".GetClock", interval=30.0, timeout=10.0)
    bucket = TokenBucket().reserve(0.0).bucket
    found["ClosePolicy.classify (1006)"] = lambda: close.classify(abnormal)
    found["Keepalive.decide (idle, not due)"] = lambda: keepalive.decide(10.0, last_activity=5.0)
    found["TokenBucket.reserve (pacing a reconnect)"] = lambda: bucket.reserve(0.5)
    return found


_STUB_URL = URL("http://127.0.0.1:8080/api/account/123/configuration/le-users/users")
_STUB_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
_STUB_BODY = b"x" * 84


class _StubResponse:
    """Just enough of ``aiohttp.ClientResponse`` for the retry middleware and the engine."""

    status = 200
    reason = "OK"
    headers = _STUB_HEADERS
    content_length = len(_STUB_BODY)
    #: aiohttp's request writer, gone once the request was sent whole (as on a read answer).
    _writer = None

    def __init__(self, url: URL) -> None:
        # The request's own URL object, as aiohttp's response has it when no redirect happened.
        self.url = url
        self._body: bytes | None = None

    async def read(self) -> bytes:
        if self._body is None:
            self._body = _STUB_BODY
        return self._body

    def release(self) -> None:
        return None

    async def wait_for_close(self) -> None:
        return None

    def close(self) -> None:
        return None


class _StubRequest:
    method = "GET"

    def __init__(self, url: URL) -> None:
        self.url = url
        #: aiohttp's: the URL the request was made for (the retry middleware notes it as the
        #: call's first request's, beside ``url``, for its redirect hops).
        self.original_url = url
        self.headers: CIMultiDict[str] = CIMultiDict()


async def _wire(request: Any) -> Any:
    return _StubResponse(request.url)


class _StubCall:
    def __init__(self, middleware: Any, url: URL) -> None:
        self._middleware = middleware
        self._url = url

    def __await__(self) -> Generator[Any, None, Any]:
        return self._middleware(_StubRequest(self._url), _wire).__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Any:
        return await self._middleware(_StubRequest(self._url), _wire)

    async def __aexit__(self, *exc: object) -> None:
        return None


class _StubSession:
    """Stands in for the engine's ``aiohttp.ClientSession``: the chain, then the stub wire."""

    closed = False

    def __init__(self, middleware: Any) -> None:
        self._middleware = middleware

    def request(self, method: str, url: URL, **kwargs: Any) -> _StubCall:
        return _StubCall(self._middleware, url)

    async def close(self) -> None:
        return None


async def _per_call_us(call: Callable[[], Any], calls: int, repeat: int) -> float:
    for _ in range(min(calls, 200)):
        await call()
    best = float("inf")
    for _ in range(max(repeat, 3)):
        # Each call yields to the loop once, as a real one does (timers are cleaned there);
        # the same yields alone are timed and taken away.
        t0 = time.thread_time()
        for _ in range(calls):
            await call()
            await asyncio.sleep(0)
        t1 = time.thread_time()
        for _ in range(calls):
            await asyncio.sleep(0)
        t2 = time.thread_time()
        best = min(best, ((t1 - t0) - (t2 - t1)) / calls * 1e6)
    return best


async def _own_costs(calls: int, repeat: int) -> dict[str, float]:
    request = _StubRequest(_STUB_URL)
    out: dict[str, float] = {}
    for name, policy in (
        ("retry middleware, default policy (attempt timeout)", RetryPolicy()),
        ("retry middleware, attempt timeout + call deadline", RetryPolicy(deadline=30.0)),
    ):
        middleware = RetryMiddleware(policy=policy)
        call = functools.partial(middleware, request, _wire)  # type: ignore[arg-type]
        out[name] = await _per_call_us(call, calls, repeat)
    engine = Engine(
        {"svc": "127.0.0.1:8080"},
        scheme="http",
        retry=RetryPolicy(attempt_timeout=10.0, deadline=30.0),
    )
    # The engine's own session would reach for the network; the stub keeps its whole stack.
    engine._session = _StubSession(engine.middlewares[-1])  # type: ignore[assignment]
    path = _STUB_URL.path
    out["Engine.request + retry middleware (timeout + deadline)"] = await _per_call_us(
        lambda: engine.request("GET", "svc", path), calls, repeat
    )
    return out


def run(size_name: str, raw_call_us: float | None = None) -> dict[str, Any]:
    """Time every decision; ``raw_call_us`` (the CPU time of one raw aiohttp call, at
    concurrency 1) gives the comparison."""
    size = SIZES[size_name]
    rows: list[list[object]] = []
    data: dict[str, float] = {}
    for name, fn in decisions().items():
        fn()  # a decision that raises should fail here, not inside timeit
        best = min(timeit.repeat(fn, number=size["number"], repeat=size["repeat"]))
        ns = best / size["number"] * 1e9
        data[name] = ns
        share = f"{ns / 1e3 / raw_call_us:.2%}" if raw_call_us else "-"
        rows.append([name, f"{ns:,.0f}", share])
    head = ["decision", "ns per call", "of one raw aiohttp call's CPU"]
    own = asyncio.run(_own_costs(size["calls"], size["repeat"]))
    own_rows = [
        [name, f"{us:.1f}", f"{us / raw_call_us:.1%}" if raw_call_us else "-"]
        for name, us in own.items()
    ]
    text = (
        "Policy decision cost (best of repeats)\n\n"
        + table(head, rows)
        + "\n\nOur own cost per call, the wire stubbed (CPU, best of repeats)\n\n"
        + table(["path", "us per call", "of one raw aiohttp call"], own_rows)
    )
    result = {"ns_per_call": data, "own_us_per_call": own, "raw_call_us": raw_call_us}
    return {"text": text, "data": result}
