"""Recovery: what counts as a close from inside a round, and how closing ends it.

- A task a round's re-login starts is inside the round only while that re-login runs: a task
  the first re-login started (a watchdog, a refresher) that closes the engine during a later
  re-login of the same round was taken for one the round waits for; the round was left to
  end alone and its re-login went on long after the close (until the task ended, which a
  task that lives on never does).
- A call that joined a round and gives up because its own ``Retry-After`` would pass its
  deadline said "a 49 s pause before the next re-login": there is none; it is the call's own
  wait after the re-login, as its answers asked.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import ConnectionFailed, RecoveryFailed
from le_transport.providers import Credentials
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_recovery import CountingAuth
from tests.test_recovery_r25 import _a_and_b


async def _always_503(serve: ServerFactory, hits: list[float], clock: VirtualClock) -> str:
    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/x", handler)
    return await serve(app)


async def test_a_task_an_earlier_relogin_started_closing_during_a_later_one_stops_the_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Re-login 1 (at 2 s) starts a watchdog that lives on, and fails (an outage); re-login 2
    (at 6 s) is slow (1000 s). The watchdog closes the engine at 10 s, then lives on: the
    close is from outside re-login 2, which is cancelled with the round then, not left
    re-logging in on the closed engine until 1006 s."""
    hits: list[float] = []
    host = await _always_503(serve, hits, clock)
    engine: Engine
    log: list[tuple[str, float]] = []
    forever = asyncio.Event()
    children: list[asyncio.Task[None]] = []

    class WatchdogAuth:
        relogins = 0

        async def credentials(self, method: str, url: URL) -> Credentials:
            return Credentials()

        async def invalidate(self, rejected: Credentials) -> None:
            return None

        async def relogin(self) -> None:
            self.relogins += 1
            if self.relogins == 1:

                async def watchdog() -> None:
                    await clock.sleep(8.0)
                    await engine.close()
                    log.append(("close returned", clock.now()))
                    await forever.wait()

                children.append(asyncio.get_running_loop().create_task(watchdog()))
                raise ConnectionFailed("login service down")
            await clock.sleep(1000.0)
            log.append(("relogin 2 returned", clock.now()))

        async def close(self) -> None:
            log.append(("logout", clock.now()))

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=WatchdogAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    try:
        async with engine:
            with pytest.raises(RecoveryFailed, match="closed"):
                await engine.request("GET", "svc", "/x", recover=True)
            assert clock.now() == 10.0
            round_ = engine.recovery._round_task
            assert round_ is not None
            await asyncio.wait({round_})
            assert clock.now() == 10.0  # stopped with the close, not at 1006 s
            assert round_.cancelled()
    finally:
        forever.set()
        await asyncio.gather(*children)
    assert log == [("logout", 10.0), ("close returned", 10.0)]
    assert hits == [0.0]


async def test_a_joiner_giving_up_on_its_own_ask_says_so_not_a_relogin_pause(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Call A starts a round (2 s); B fails at 1 s on a 503 asking 50 s, with a 20 s deadline:
    as it joins the round it gives up, and its error says its own ask is what would pass the
    deadline (50 s of it, 20 s to its deadline at 21 s), not a pause before a re-login."""
    host, hits = await _a_and_b(serve, clock)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=CountingAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    ) as engine:

        async def b() -> RecoveryFailed:
            await clock.sleep(1.0)
            with pytest.raises(RecoveryFailed) as info:
                await engine.request("GET", "svc", "/b", recover=True, deadline=20.0)
            return info.value

        first, err = await asyncio.gather(engine.request("GET", "svc", "/a", recover=True), b())
    assert first.status == 200
    message = str(err)
    assert "before the next re-login" not in message
    assert "50 s" in message
    assert "Retry-After" in message
    assert "20 s left" in message
    assert hits == {"a": [0.0, 2.0], "b": [1.0]}
