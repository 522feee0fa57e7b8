"""The outer retry's pauses keep their jitter when a floor above the drawn pause applies.

- A fleet told ``Retry-After: 100`` by an overloaded service (more than the re-login pause it
  drew) re-logged in at exactly 100 s after its failure, every client at the same instant:
  the floor the ask sets replaced the jittered pause instead of spreading above it, as the
  request schedule spreads a ``Retry-After`` above the ask. The same for the request
  schedule's last pause as a floor.

Loopback servers on virtual time.
"""

from __future__ import annotations

import random

from aiohttp import web

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_recovery import CountingAuth


async def _first_pause(
    serve: ServerFactory, clock: VirtualClock, seed: int, retry_after: str | None
) -> tuple[float, list[float]]:
    """One client: a GET answered 503 (with ``retry_after`` if given) once, then 200; the
    first re-login pause its loop took, and the GET's request times."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        if len(hits) == 1:
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return web.Response(status=503, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=CountingAuth(),
        rng=random.Random(seed),
        retry=RetryPolicy(pauses=(), retry_after_ceiling=300.0),
        recovery=BackoffPolicy(first=20, factor=2, cap=1000, jitter=0.2, floor=0),
    ) as engine:
        started = clock.now()
        resp = await engine.request("GET", "svc", "/x", recover=True)
        assert resp.status == 200
        pauses = list(engine.recovery.pauses)
    assert len(pauses) == 1
    return pauses[0], [t - started for t in hits]


async def test_a_fleet_told_one_retry_after_does_not_relogin_at_one_instant(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Eight clients (eight seeds), each drawing a 16 to 24 s pause, all told
    ``Retry-After: 100``: each waits at least the 100 s asked, spread over up to the policy's
    jitter above it (100 to 120 s), not all exactly 100 s."""
    pauses = []
    for seed in range(8):
        pause, hits = await _first_pause(serve, clock, seed, "100")
        assert 100.0 <= pause <= 120.0
        assert hits[1] - hits[0] >= 100.0
        pauses.append(pause)
    assert len(set(pauses)) == len(pauses)
    assert max(pauses) - min(pauses) > 2.0
