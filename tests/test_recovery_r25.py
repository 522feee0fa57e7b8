"""The outer retry keeps each call's own asks and ends cleanly when closed from inside a round.

- A call that joins a recovery round in progress is re-sent no sooner than its own answers
  asked (a 503's ``Retry-After``, up to its own ceiling), counted from its failure: only the
  call that started the round set the pause, and a joiner asked to wait 50 s was re-sent
  with the others after 2 s. The other calls of the round are not held up, and there is one
  re-login.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import RecoveryFailed
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_recovery import CountingAuth

# -- 1. a call joining a round waits what its own answers asked ---------------------------------


async def test_a_call_joining_a_round_is_not_resent_before_its_own_retry_after(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Call A fails (a 503, no ask) and starts a round whose pause is 2 s; call B fails a
    second later on a 503 asking ``Retry-After: 50`` and joins it. The one re-login runs at
    2 s and A is re-sent then; B is re-sent 50 s after its 503, not with A."""
    hits: dict[str, list[float]] = {"a": [], "b": []}

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[name].append(clock.now())
        if len(hits[name]) == 1:
            headers = {"Retry-After": "50"} if name == "b" else {}
            return web.Response(status=503, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    host = await serve(app)
    auth = CountingAuth()
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    ) as engine:

        async def b() -> int:
            await clock.sleep(1.0)
            return (await engine.request("GET", "svc", "/b", recover=True)).status

        first, second = await asyncio.gather(engine.request("GET", "svc", "/a", recover=True), b())
    assert (first.status, second) == (200, 200)
    assert hits["a"] == [0.0, 2.0]  # the other caller is not held up
    assert hits["b"] == [1.0, 51.0]
    assert auth.logins == 1
    assert engine.recovery.relogins == 1


async def test_a_joiner_whose_own_ask_passes_its_deadline_gives_up_after_the_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The same, B with a 20 s deadline: its own ask (50 s) would pass it, so B gives up with
    ``RecoveryFailed`` once the round is through, never re-sent; A recovers as before."""
    hits: dict[str, list[float]] = {"a": [], "b": []}

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[name].append(clock.now())
        if len(hits[name]) == 1:
            headers = {"Retry-After": "50"} if name == "b" else {}
            return web.Response(status=503, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    host = await serve(app)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=CountingAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    ) as engine:

        async def b() -> float:
            await clock.sleep(1.0)
            with pytest.raises(RecoveryFailed, match="deadline"):
                await engine.request("GET", "svc", "/b", recover=True, deadline=20.0)
            return clock.now()

        first, gave_up_at = await asyncio.gather(
            engine.request("GET", "svc", "/a", recover=True), b()
        )
    assert first.status == 200
    assert gave_up_at == 2.0
    assert hits == {"a": [0.0, 2.0], "b": [1.0]}


async def test_a_joiner_waiting_its_own_ask_fails_at_once_when_the_engine_closes(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """B waits its own ask after the round; the engine closing at 10 s ends the wait with
    ``RecoveryFailed`` then, B never re-sent."""
    hits: dict[str, list[float]] = {"a": [], "b": []}

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[name].append(clock.now())
        if len(hits[name]) == 1:
            headers = {"Retry-After": "50"} if name == "b" else {}
            return web.Response(status=503, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    host = await serve(app)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=CountingAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    async with engine:

        async def b() -> float:
            await clock.sleep(1.0)
            with pytest.raises(RecoveryFailed, match="closed"):
                await engine.request("GET", "svc", "/b", recover=True)
            return clock.now()

        async def close_later() -> None:
            await clock.sleep(10.0)
            await engine.close()

        first, failed_at, _ = await asyncio.gather(
            engine.request("GET", "svc", "/a", recover=True), b(), close_later()
        )
    assert first.status == 200
    assert failed_at == 10.0
    assert hits == {"a": [0.0, 2.0], "b": [1.0]}
