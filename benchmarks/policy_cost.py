"""Policy decision cost: how long one pure decision takes, to show the policy layer is negligible.

Each decision is timed with :mod:`timeit` in a tight loop (best of several repeats, the usual
way to take the machine's noise out of a micro-benchmark) and compared with the cost of one
raw aiohttp call from the HTTP section when that ran in the same process.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

from le_transport.policies import BackoffPolicy, Classifier, Outcome, OutcomeKind, RetryPolicy

from ._common import table

__all__ = ["decisions", "run"]

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"number": 200, "repeat": 1},
    "quick": {"number": 20_000, "repeat": 3},
    "full": {"number": 100_000, "repeat": 5},
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


def run(size_name: str, raw_call_us: float | None = None) -> dict[str, Any]:
    """Time every decision; ``raw_call_us`` (one raw aiohttp call) gives the comparison."""
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
    head = ["decision", "ns per call", "of one raw aiohttp call"]
    text = "Policy decision cost (best of repeats)\n\n" + table(head, rows)
    return {"text": text, "data": {"ns_per_call": data, "raw_call_us": raw_call_us}}
