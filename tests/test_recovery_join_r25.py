"""A call that joins a re-login round with an own ask its deadline cannot wait out gives up as
it joins.

- A call joining a round in progress waits, once the round is through, what is left of its own
  ``Retry-After`` counted from its failure. When that already ends at or past its deadline as
  it joins, it is doomed whatever the round does: it waited through the round all the same and
  only then gave up, and if the round's starter was cancelled meanwhile, the doomed call kept
  the round alive for a re-login nobody used. It now gives up at once with the same
  ``RecoveryFailed`` (its own wait, not a pause before a re-login), keeping no round for it.
- A joiner whose own ask ends just before its deadline still joins and waits it out.

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


async def _serve_b_asking_50(
    serve: ServerFactory, clock: VirtualClock, hits: dict[str, list[float]]
) -> str:
    """``/a`` and ``/b`` answer a first 503 (``/b``'s asking ``Retry-After: 50``), then 200."""

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits.setdefault(name, []).append(clock.now())
        if len(hits[name]) == 1:
            headers = {"Retry-After": "50"} if name == "b" else {}
            return web.Response(status=503, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    return await serve(app)


def _engine(host: str, clock: VirtualClock, auth: CountingAuth) -> Engine:
    return Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )


async def test_a_doomed_joiner_gives_up_as_it_joins_and_keeps_no_round_for_itself(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A starts a round (2 s pause); B fails at 1 s on a 503 asking 50 s, 20 s deadline, and
    would join it; A is cancelled at 1.5 s. B gives up at 1 s, saying its own ask would pass
    its deadline; the round, its last waiter gone with A, stops: no re-login at 2 s."""
    hits: dict[str, list[float]] = {}
    host = await _serve_b_asking_50(serve, clock, hits)
    auth = CountingAuth()
    async with _engine(host, clock, auth) as engine:
        a = asyncio.create_task(engine.request("GET", "svc", "/a", recover=True))

        async def b() -> tuple[float, RecoveryFailed]:
            await clock.sleep(1.0)
            with pytest.raises(RecoveryFailed) as info:
                await engine.request("GET", "svc", "/b", recover=True, deadline=20.0)
            return clock.now(), info.value

        async def cancel_a() -> None:
            await clock.sleep(1.5)
            a.cancel()

        (gave_up_at, err), _ = await asyncio.gather(b(), cancel_a())
        with pytest.raises(asyncio.CancelledError):
            await a
        await clock.sleep(10.0)  # past the round's 2 s pause: no re-login comes
        relogins = engine.recovery.relogins
    assert gave_up_at == 1.0
    message = str(err)
    assert "wait its own answers still ask for after the re-login" in message
    assert "50 s" in message
    assert "20 s left" in message
    assert "before the next re-login" not in message
    assert auth.logins == 0
    assert relogins == 0
    assert hits == {"a": [0.0], "b": [1.0]}


async def test_a_doomed_joiner_does_not_hold_up_the_round_it_would_join(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The same without the cancellation: B gives up at 1 s, A recovers at 2 s, one
    re-login."""
    hits: dict[str, list[float]] = {}
    host = await _serve_b_asking_50(serve, clock, hits)
    auth = CountingAuth()
    async with _engine(host, clock, auth) as engine:

        async def b() -> float:
            await clock.sleep(1.0)
            with pytest.raises(RecoveryFailed, match="still ask for after the re-login"):
                await engine.request("GET", "svc", "/b", recover=True, deadline=20.0)
            return clock.now()

        first, gave_up_at = await asyncio.gather(
            engine.request("GET", "svc", "/a", recover=True), b()
        )
    assert first.status == 200
    assert gave_up_at == 1.0
    assert auth.logins == 1
    assert hits == {"a": [0.0, 2.0], "b": [1.0]}


@pytest.mark.parametrize(("deadline", "resent"), [(50.0, False), (50.5, True)])
async def test_a_joiner_gives_up_at_once_only_when_its_own_ask_reaches_its_deadline(
    serve: ServerFactory, clock: VirtualClock, deadline: float, resent: bool
) -> None:
    """B's own ask ends at 51 s: with a deadline ending at 51 s it gives up as it joins (a wait
    ending at the deadline is past it, as everywhere in the loop); ending at 51.5 s it joins,
    waits the round and its own ask out, and is re-sent at 51 s."""
    hits: dict[str, list[float]] = {}
    host = await _serve_b_asking_50(serve, clock, hits)
    auth = CountingAuth()
    async with _engine(host, clock, auth) as engine:

        async def b() -> float:
            await clock.sleep(1.0)
            if resent:
                response = await engine.request("GET", "svc", "/b", recover=True, deadline=deadline)
                assert response.status == 200
            else:
                with pytest.raises(RecoveryFailed, match="still ask for after the re-login"):
                    await engine.request("GET", "svc", "/b", recover=True, deadline=deadline)
            return clock.now()

        first, done_at = await asyncio.gather(engine.request("GET", "svc", "/a", recover=True), b())
    assert first.status == 200
    assert auth.logins == 1
    if resent:
        assert done_at == 51.0
        assert hits == {"a": [0.0, 2.0], "b": [1.0, 51.0]}
    else:
        assert done_at == 1.0
        assert hits == {"a": [0.0, 2.0], "b": [1.0]}
