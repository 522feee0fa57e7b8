"""The outer retry keeps each call's own asks and ends cleanly when closed from inside a round.

- A call that joins a recovery round in progress is re-sent no sooner than its own answers
  asked (a 503's ``Retry-After``, up to its own ceiling), counted from its failure: only the
  call that started the round set the pause, and a joiner asked to wait 50 s was re-sent
  with the others after 2 s. The other calls of the round are not held up, and there is one
  re-login.
- An auth provider whose re-login closes the engine from a task of its own (and waits for it):
  the close cancelled the round, and with it the re-login's child running the close, cut
  short before its logout and the session's close. A task the round started is inside it as
  the round itself is: the close completes, the callers fail with ``RecoveryFailed`` at once
  (not when the re-login ends: it may go on long after the close), the round ends closed by
  itself, nothing is re-sent, no task is left.
- A task a re-login started that lives on kept the ended round alive (its mark in the
  task's context): a weak mark.
- The ``recovered`` event counted its ``elapsed`` from now when the episode's first failure
  was at the clock's 0.0 (a virtual clock's start): ``elapsed=0`` for a 2 s episode.

Loopback servers on virtual time.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine, EventHooks, RetryPolicy
from le_transport.errors import RecoveryFailed
from le_transport.events import StateEvent
from le_transport.providers import Credentials
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_recovery import CountingAuth


async def _a_and_b(serve: ServerFactory, clock: VirtualClock) -> tuple[str, dict[str, list[float]]]:
    """A loopback server whose ``/a`` and ``/b`` answer their first request 503 (``/b``'s
    asking ``Retry-After: 50``), then 200; its host, and each path's request times."""
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
    return await serve(app), hits


# -- 1. a call joining a round waits what its own answers asked ---------------------------------


async def test_a_call_joining_a_round_is_not_resent_before_its_own_retry_after(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """Call A fails (a 503, no ask) and starts a round whose pause is 2 s; call B fails a
    second later on a 503 asking ``Retry-After: 50`` and joins it. The one re-login runs at
    2 s and A is re-sent then; B is re-sent 50 s after its 503, not with A."""
    host, hits = await _a_and_b(serve, clock)
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


async def test_a_joiner_whose_own_ask_passes_its_deadline_gives_up_as_it_joins(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The same, B with a 20 s deadline: its own ask (50 s) would pass it, so B gives up with
    ``RecoveryFailed`` as it joins (at 1 s), never re-sent; A recovers as before."""
    host, hits = await _a_and_b(serve, clock)
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
    assert gave_up_at == 1.0
    assert hits == {"a": [0.0, 2.0], "b": [1.0]}


async def test_a_joiner_waiting_its_own_ask_fails_at_once_when_the_engine_closes(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """B waits its own ask after the round; the engine closing at 10 s ends the wait with
    ``RecoveryFailed`` then, B never re-sent."""
    host, hits = await _a_and_b(serve, clock)
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


# -- 2. a close from a task the re-login started --------------------------------------------------


@pytest.mark.parametrize("how", ["await", "gather", "taskgroup", "wait_for"])
async def test_a_close_from_a_task_the_relogin_started_completes(
    serve: ServerFactory, clock: VirtualClock, how: str
) -> None:
    """The re-login of a custom auth provider closes the engine in a child task and waits for
    it: the close runs to its end (the provider's logout, the session closed), the round
    ends closed and the waiting call fails with ``RecoveryFailed`` at once, never re-sent;
    nothing is left running."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    engine: Engine
    children: list[asyncio.Task[None]] = []
    closes: list[str] = []

    class TeardownAuth:
        """Its re-login tears the engine down from a task of its own, and waits for it."""

        async def credentials(self, method: str, url: URL) -> Credentials:
            return Credentials()

        async def invalidate(self, rejected: Credentials) -> None:
            return None

        async def relogin(self) -> None:
            async def teardown() -> None:
                await engine.close()
                closes.append("close returned")

            if how == "await":
                child = asyncio.get_running_loop().create_task(teardown())
                children.append(child)
                await child
            elif how == "gather":
                await asyncio.gather(teardown())
            elif how == "taskgroup":
                async with asyncio.TaskGroup() as group:
                    children.append(group.create_task(teardown()))
            else:
                await asyncio.wait_for(teardown(), 1000)
            closes.append("relogin returned")

        async def close(self) -> None:
            closes.append("logout")

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=TeardownAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    async with engine:
        session = engine.session
        with pytest.raises(RecoveryFailed, match="closed"):
            await engine.request("GET", "svc", "/x", recover=True)
        failed_at = clock.now()
        round_ = engine.recovery._round_task
        assert round_ is not None
        await asyncio.wait({round_})
        assert clock.now() == 2.0
        # The close ran to its end. Awaited directly, the round went on as the close task
        # ended, its re-login returned, and it ended closed; else it was stopped then.
        if how in ("await", "wait_for"):
            assert closes == ["logout", "close returned", "relogin returned"]
            assert isinstance(round_.exception(), RecoveryFailed)
        else:
            assert closes[:2] == ["logout", "close returned"]
            assert round_.cancelled() or isinstance(round_.exception(), RecoveryFailed)
        assert session.closed
    assert failed_at == 2.0  # when the re-login ran: at once
    assert hits == [0.0]  # never re-sent on the closed engine
    assert all(child.done() and not child.cancelled() for child in children)
    assert not engine.recovery.recovering


@pytest.mark.parametrize("deadline", [None, 5000.0])
async def test_a_relogin_going_on_after_closing_the_engine_holds_no_caller(
    serve: ServerFactory, clock: VirtualClock, deadline: float | None
) -> None:
    """The re-login starts the engine's close in a task it does not wait for, then goes on
    (a slow call of its own, 1000 s): the close completes, and the waiting call fails with
    ``RecoveryFailed`` as soon as the loop is closed, not when the re-login ends; the round is
    stopped when the close's task is done (its re-login does not outlive the close), nothing
    re-sent."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    engine: Engine
    closes: list[tuple[str, float]] = []
    children: list[asyncio.Task[None]] = []

    class SlowTeardownAuth:
        async def credentials(self, method: str, url: URL) -> Credentials:
            return Credentials()

        async def invalidate(self, rejected: Credentials) -> None:
            return None

        async def relogin(self) -> None:
            async def teardown() -> None:
                await engine.close()
                closes.append(("close returned", clock.now()))

            children.append(asyncio.get_running_loop().create_task(teardown()))
            await clock.sleep(1000.0)
            closes.append(("relogin returned", clock.now()))

        async def close(self) -> None:
            closes.append(("logout", clock.now()))

    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=SlowTeardownAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    )
    async with engine:
        session = engine.session
        with pytest.raises(RecoveryFailed, match="closed"):
            await engine.request("GET", "svc", "/x", recover=True, deadline=deadline)
        assert clock.now() == 2.0  # at the close, not when the re-login ends
        round_ = engine.recovery._round_task
        assert round_ is not None
        await asyncio.wait({round_})
        assert clock.now() == 2.0
    assert closes == [("logout", 2.0), ("close returned", 2.0)]
    assert session.closed
    assert hits == [0.0]
    assert all(child.done() and not child.cancelled() for child in children)
    assert round_.cancelled()


# -- 3. the "recovered" event's elapsed ---------------------------------------------------------


async def test_the_recovered_event_counts_from_a_first_failure_at_clock_zero(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A first failure at the clock's 0.0 (a virtual clock's start) is a time, not "none":
    the ``recovered`` event said ``elapsed=0`` for an episode of 2 s."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503 if len(hits) == 1 else 200)

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    events: list[StateEvent] = []
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=CountingAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
        hooks=EventHooks(on_state=(events.append,)),
    ) as engine:
        assert (await engine.request("GET", "svc", "/x", recover=True)).status == 200
    assert hits == [0.0, 2.0]
    (recovered,) = [e for e in events if e.name == "recovered"]
    assert recovered.details == {"attempts": 1, "elapsed": 2.0}


async def test_a_task_the_relogin_started_does_not_keep_its_round_alive(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A task a re-login starts that lives on (a token refresher) carries the round's mark in
    its context: a weak one, which keeps no ended round (its error, its traceback) alive."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(clock.now())
        return web.Response(status=503 if len(hits) % 2 else 200)

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    forever = asyncio.Event()
    children: list[asyncio.Task[bool]] = []

    class RefresherAuth(CountingAuth):
        async def relogin(self) -> Credentials:
            children.append(asyncio.get_running_loop().create_task(forever.wait()))
            return await super().relogin()

    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=RefresherAuth(),
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    ) as engine:
        assert (await engine.request("GET", "svc", "/x", recover=True)).status == 200
        first = engine.recovery._round_task
        assert first is not None
        assert first.done()
        gone = weakref.ref(first)
        del first
        # A second episode: its round replaces the first as the loop's last.
        assert (await engine.request("GET", "svc", "/x", recover=True)).status == 200
        gc.collect()
        assert gone() is None
        forever.set()
        await asyncio.gather(*children)
