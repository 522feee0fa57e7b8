"""Leftovers of the retry middleware, the fallback store, the overload guard and the keepalive
scheduler:

- The retry middleware's own read of a chunked or compressed body (``iter_any``, to hold
  ``max_body_bytes``) skipped the session's ``on_response_chunk_received`` trace hooks, which
  aiohttp's ``resp.read()`` (and the engine's own read) give the whole body.
- ``FallbackStore``'s own ``op_timeout`` cut of its primary, turned by the store's client into
  an error of its own (a connection dropped on cancellation), was logged as an ERROR "it may be
  a bug in the store", with its traceback, rather than as the outage it is.
- ``OverloadGuard`` kept one abandoned probe's fleet lock per breaker awaiting its release:
  a second release at the same key, its store failing, overwrote the first, whose lock was
  then never freed by this process and kept it (and the fleet) from probing until its lease
  ended.
- ``KeepaliveScheduler``'s task cancelled from outside (not by its ``close()``) left every
  socket watched by a task that was gone: never probed, never found dead, until the next
  ``watch()``. Each is now forgotten and told, as on a failed clock, so that it reconnects.
- ``watch_socket`` started the next probe while the one it cancelled was still tidying up: two
  probes of one connection at once.

Real loopback servers (the conftest's ``serve``), virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.errors import CircuitOpen
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Keepalive, Outcome
from le_transport.sockets import watch_socket
from le_transport.sockets.keepalive import KeepaliveScheduler
from le_transport.state import Entry, FallbackStore, MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_guard_hot_path import _Call

# -- 1. the retry middleware's read and the session's trace hooks -------------------------------

_BODY = b"z" * 3000


def _body_app() -> web.Application:
    """``/body`` answers 3,000 bytes: with a Content-Length, chunked (``?chunked=1``), or
    gzip-compressed (``?gzip=1``, with a Content-Length of the compressed bytes)."""

    async def body(request: web.Request) -> web.StreamResponse:
        if request.query.get("gzip"):
            return web.Response(body=gzip.compress(_BODY), headers={"Content-Encoding": "gzip"})
        if not request.query.get("chunked"):
            return web.Response(body=_BODY)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for start in range(0, len(_BODY), 500):
            await resp.write(_BODY[start : start + 500])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/body", body)
    return app


@pytest.mark.parametrize(
    "query", [{}, {"chunked": "1"}, {"gzip": "1"}], ids=["length", "chunked", "gzip"]
)
async def test_the_retry_middlewares_read_fires_the_sessions_chunk_trace_hooks_once(
    query: dict[str, str], serve: ServerFactory, clock: VirtualClock
) -> None:
    """A session carrying the engine's stack and a caller's ``TraceConfig``: the body the
    retry middleware reads is given to ``on_response_chunk_received`` once, whole, as
    aiohttp's ``resp.read()`` gives it (a chunked or compressed body was never given); the
    caller's own ``read()`` afterwards fires nothing more."""
    host = await serve(_body_app())
    seen: list[bytes] = []

    async def chunk_received(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        seen.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(chunk_received)
    async with (
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
        aiohttp.ClientSession(
            middlewares=engine.middlewares,
            trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(total=None),
        ) as session,
        session.get(f"http://{host}/body", params=query) as resp,
    ):
        assert await resp.read() == _BODY
    assert seen == [_BODY]


# -- 2. FallbackStore's own cut, turned into the store's error --------------------------------


class _DropsWhenCancelled(MemoryStore):
    """A caller's store whose client hangs, and turns a cancellation into its own error (as a
    Redis client may, dropping the connection it was cancelled on); or, with ``swallow``,
    takes the cancellation for nothing and then fails with an error of its own (a bug, which
    no cancellation caused)."""

    def __init__(self, clock: VirtualClock, *, swallow: bool = False) -> None:
        super().__init__(clock)
        self.swallow = swallow

    async def get(self, key: str) -> Entry | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not self.swallow:
                raise ConnectionError("connection dropped") from None
        raise KeyError("a bug in the store")


def _state_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "le_transport.state"]


async def test_op_timeouts_cut_the_store_turns_into_its_error_is_an_outage(
    caplog: pytest.LogCaptureFixture, clock: VirtualClock
) -> None:
    """The cut is ours: a WARNING that the store did not answer within op_timeout, as for a
    store that simply hangs (the cut's TimeoutError), not an ERROR blaming the store."""
    store = FallbackStore(_DropsWhenCancelled(clock), clock=clock, op_timeout=2.0)
    with caplog.at_level(logging.DEBUG, "le_transport.state"):
        assert await store.get("1:k") is None  # answered locally
    assert clock.now() == 2.0
    assert not store.sharing
    assert store.fallbacks == 1
    (line,) = _state_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "_DropsWhenCancelled.get did not answer within 2 s (FallbackStore.op_timeout)" in (
        line.getMessage()
    )


async def test_an_error_no_cut_caused_is_still_the_stores_own(
    caplog: pytest.LogCaptureFixture, clock: VirtualClock
) -> None:
    """A store that ignores the cut and then fails of its own accord (no cancellation in its
    error's chain): not said to be op_timeout's; the line names its type, as before."""
    store = FallbackStore(_DropsWhenCancelled(clock, swallow=True), clock=clock, op_timeout=2.0)
    with caplog.at_level(logging.DEBUG, "le_transport.state"):
        assert await store.get("1:k") is None
    error, warning = _state_lines(caplog)
    assert error.levelno == logging.ERROR
    assert "failed with KeyError, which is not a StateStoreError" in error.getMessage()
    assert warning.levelno == logging.WARNING
    assert "op_timeout" not in warning.getMessage()


# -- 3. abandoned probes' fleet locks, released back to back on a failing store ----------------

_HOST = "127.0.0.1:8080"
_KEY = ("svc", _HOST)
_PROBE_KEY = state_key("1", "breaker-probe", "svc", _HOST)


class _SlowDeletes(MemoryStore):
    """A caller's store whose deletes hang while ``hang`` is set (cut by the guard's own bound
    on a release, the lock's lease, before the FallbackStore's op_timeout); it notes each
    delete that answered."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hang = True
        self.deleted: list[str | None] = []

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        if self.hang:
            await asyncio.Event().wait()
        self.deleted.append(only_if)
        return await super().delete(key, only_if=only_if)


async def test_two_releases_at_one_key_on_a_failing_store_keep_both_locks() -> None:
    """Both locks stay this process's to free: the next probe here frees each (the earlier,
    still held in the store, no longer keeps this process from probing)."""
    clock = VirtualClock(start=100.0)
    primary = _SlowDeletes(clock)
    breaker = CircuitBreaker(
        minimum_throughput=4,
        breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0),
        probe_lease=1.0,
    )
    guard = OverloadGuard(
        budget=None,
        breaker=breaker,
        store=FallbackStore(primary, clock=clock, op_timeout=10.0),
        account="1",
        clock=clock,
    )
    for _ in range(breaker.minimum_throughput):
        call = _Call("svc", _HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))
    assert guard.breaker_state("svc", _HOST) is BreakerState.OPEN
    # The earlier lock is still held in the store; the later one's add went elsewhere.
    await primary.set(_PROBE_KEY, "lock-a", ttl=3600.0)
    guard._release_lock(_KEY, "lock-a")
    guard._release_lock(_KEY, "lock-b")
    await clock.sleep(1.5)  # both releases cut at the lease
    assert not guard._releases
    assert sorted(guard._stale_locks[_KEY]) == ["lock-a", "lock-b"]
    primary.hang = False
    await clock.sleep(5.0)  # the break is over: half-open
    probe = _Call("svc", _HOST)
    refused = await guard.admit(probe, 1)
    assert not isinstance(refused, CircuitOpen), "this process's own old lock kept it waiting"
    assert refused is None
    assert sorted(primary.deleted[:2], key=str) == ["lock-a", "lock-b"]
    assert _KEY not in guard._stale_locks
    await guard.settle(probe, 1, Outcome.response(200))
    await guard.drain()


async def test_the_locks_kept_per_key_are_bounded() -> None:
    """A store that never answers: the locks kept for one key stay few (each one's lease frees
    it anyway), however many probes are abandoned."""
    clock = VirtualClock(start=100.0)
    primary = _SlowDeletes(clock)
    guard = OverloadGuard(
        budget=None,
        breaker=CircuitBreaker(probe_lease=1.0),
        store=FallbackStore(primary, clock=clock, op_timeout=10.0),
        account="1",
        clock=clock,
    )
    for n in range(100):
        guard._release_lock(_KEY, f"lock-{n}")
    await clock.sleep(1.5)
    kept = guard._stale_locks[_KEY]
    assert 2 <= len(kept) <= 8
    assert kept[-1] == "lock-99", "the newest (whose lease ends last) is kept"


# -- 4. the keepalive scheduler's task cancelled from outside -----------------------------------


class _Subject:
    """Asked at each deadline; answers the next one an interval on, for ever; notes being told
    that it is watched no more (as a socket is, which then ends its connection)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.asked: list[float] = []
        self.failed: list[Exception] = []

    def _keepalive_due(self, now: float) -> float | None:
        self.asked.append(now)
        return now + self.every

    def _keepalive_failed(self, error: Exception) -> None:
        self.failed.append(error)


async def test_a_scheduler_task_cancelled_from_outside_tells_every_socket(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = KeepaliveScheduler(clock)
    subjects = [_Subject(), _Subject(), _Subject()]
    tickets = [scheduler.watch(subject, at=30.0 + i) for i, subject in enumerate(subjects)]
    scheduler.unwatch(tickets[2])  # gone: not told
    await clock.sleep(40.0)
    task = scheduler._task
    assert task is not None
    task.cancel()  # not by close(): a caller's "cancel every task", say
    await asyncio.wait({task})
    assert task.cancelled()
    # Not left watched by a task that is gone: each told (its socket ends the connection and
    # reconnects, watched afresh), the stop logged once.
    assert [len(s.failed) for s in subjects] == [1, 1, 0]
    assert scheduler.watched == 0
    assert not scheduler.running
    [line] = [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "cancelled" in line.getMessage()
    assert line.getMessage().endswith(
        "watched connections forgotten: 2, of which ended so that their sockets reconnect: 2"
    )
    # The next socket watched starts a new task, served as ever.
    again = _Subject()
    scheduler.watch(again, at=clock.now() + 5.0)
    assert scheduler.running
    await clock.sleep(10.0)
    assert again.asked == [45.0]
    await scheduler.close()


async def test_a_scheduler_closed_tells_no_socket(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own close() (the engine's) forgets them quietly, as before: the sockets are closing
    with their engine."""
    scheduler = KeepaliveScheduler(clock)
    subject = _Subject()
    scheduler.watch(subject, at=30.0)
    await clock.sleep(1.0)
    await scheduler.close()
    # ... and a close with a new watch made while the task it cancelled still ends.
    scheduler.watch(subject, at=60.0)
    closing = asyncio.ensure_future(scheduler.close())
    await asyncio.sleep(0)
    assert not closing.done()
    second = _Subject()
    scheduler.watch(second, at=70.0)
    await closing
    await clock.sleep(80.0)
    assert subject.failed == []
    assert second.failed == []
    assert second.asked == [70.0]
    assert not [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    await scheduler.close()


# -- 5. watch_socket: a cancelled probe still tidying up -----------------------------------------


async def test_watch_socket_starts_no_probe_while_the_last_one_tidies_up(
    clock: VirtualClock,
) -> None:
    """A probe stuck until it is cut (its timeout, or the next probe), whose tidy-up takes a
    moment and cannot be cut short: the next one waits for it, one probe at a time."""
    policy = Keepalive(product="test", action="GetClock", interval=10.0, timeout=10.0)
    frames = [0.0]
    in_flight: set[asyncio.Task[object] | None] = set()
    most = 0
    started = 0

    async def probe() -> None:
        nonlocal started, most
        started += 1
        me = asyncio.current_task()
        in_flight.add(me)
        most = max(most, len(in_flight))
        frames.append(clock.now())  # the peer answers (its frame is read elsewhere)
        try:
            await asyncio.Event().wait()  # but this send never returns
        finally:
            end = clock.now() + 2.0
            while clock.now() < end:
                with contextlib.suppress(asyncio.CancelledError):
                    await clock.sleep(end - clock.now())
            in_flight.discard(me)

    watcher = asyncio.get_running_loop().create_task(
        watch_socket(policy, clock=clock, probe=probe, last_activity=lambda: frames[-1])
    )
    await clock.sleep(600.0)
    try:
        assert not watcher.done()  # the peer was never found dead
        assert started > 10  # probes went out all along
        assert most == 1, f"{most} probes of one connection at once"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert not in_flight
