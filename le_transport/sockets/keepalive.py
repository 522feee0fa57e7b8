"""The keepalive runners: act on the pure :class:`~le_transport.policies.Keepalive` decisions.

Two kinds of action share one policy: a socket request (``GetClock``), sent only when nothing
arrived for a whole interval, whose silence past the timeout means the peer is dead; and an
HTTP call through the engine (Server Chat API "retrieve chat information", Login Service
``refresh``), run every interval. Both sleep on the injected clock; a keepalive never runs on a
socket that is down (LivePerson's SDK crashed the process doing that), because the socket's
owner starts it for each connection and cancels it when the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..clock import Clock, timeout_after
from ..events import EventHooks, StateEvent, emit
from ..policies.keepalive import Keepalive, KeepaliveStep

__all__ = ["KeepaliveTask", "keep_alive_until", "watch_socket"]

_log = logging.getLogger("le_transport.sockets")


async def watch_socket(
    policy: Keepalive,
    *,
    clock: Clock,
    probe: Callable[[], Awaitable[object]],
    last_activity: Callable[[], float],
    last_sent: Callable[[], float] | None = None,
    name: str = "socket",
) -> float:
    """Keep one connection alive until its peer is found dead; returns when the probe sent.

    ``probe`` sends the keepalive request (its answer, like any frame, moves
    ``last_activity``); it runs in its own task so that a slow answer never delays the
    schedule. Cancel the watcher to stop it: the probe in flight is cancelled with it.
    """
    dead_since = await keep_alive_until(
        policy,
        None,
        clock=clock,
        probe=probe,
        last_activity=last_activity,
        last_sent=last_sent,
        name=name,
    )
    assert dead_since is not None
    return dead_since


async def keep_alive_until(
    policy: Keepalive,
    until: asyncio.Future[Any] | None,
    *,
    clock: Clock,
    probe: Callable[[], Awaitable[object]],
    last_activity: Callable[[], float],
    last_sent: Callable[[], float] | None = None,
    name: str = "socket",
) -> float | None:
    """:func:`watch_socket` in the caller's own task, until ``until`` is done.

    Returns None as soon as ``until`` is done (the connection ended otherwise), or when the
    peer was found dead, the time the unanswered probe went out. A socket's owner runs this
    while it waits for its connection to end, so that keepalive costs no task of its own
    (a fleet of 10,000 sockets holds 10,000 fewer tasks, and one coroutine frame per socket
    instead of a chain of them); ``until`` itself is never cancelled. ``until`` None: until
    the peer is dead.
    """
    probe_sent_at: float | None = None
    # Made on the first probe: an idle fleet mostly never probes between two frames.
    probes: set[asyncio.Task[object]] | None = None
    try:
        while until is None or not until.done():
            now = clock.now()
            decision = policy.decide(
                now,
                last_activity=last_activity(),
                probe_sent_at=probe_sent_at,
                last_sent=None if last_sent is None else last_sent(),
            )
            if decision.step is KeepaliveStep.DEAD:
                _log.warning(
                    "%s: peer dead: %s",
                    name,
                    decision.reason,
                    extra={"socket": name, "keepalive": policy.action},
                )
                assert probe_sent_at is not None
                return probe_sent_at
            if decision.step is KeepaliveStep.PROBE:
                probe_sent_at = now
                _log.debug(
                    "%s: keepalive %s (%s)",
                    name,
                    policy.action,
                    decision.reason,
                    extra={"socket": name, "keepalive": policy.action},
                )
                task: asyncio.Task[object] = asyncio.get_running_loop().create_task(_quiet(probe()))
                if probes is None:
                    probes = set()
                probes.add(task)
                task.add_done_callback(probes.discard)
                continue
            if until is None:
                await clock.sleep(decision.at - now)
            else:
                # A fresh future per wait, resolved by `until`: the timeout cancels it, never
                # `until` (cheaper than asyncio.shield, which an idle fleet holds per socket).
                tick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                resolve = functools.partial(_resolve, tick)
                until.add_done_callback(resolve)
                try:
                    async with timeout_after(clock, decision.at - now):
                        await tick
                except TimeoutError:
                    pass
                finally:
                    until.remove_done_callback(resolve)
            if probe_sent_at is not None and last_activity() >= probe_sent_at:
                probe_sent_at = None
        return None
    finally:
        if probes:
            for task in list(probes):
                task.cancel()
            for task in list(probes):
                with contextlib.suppress(BaseException):
                    await task


def _resolve(tick: asyncio.Future[None], _: object) -> None:
    # Called soon after `until` is done: the wait may have timed out meanwhile.
    if not tick.done():
        tick.set_result(None)


async def _quiet(awaitable: Awaitable[object]) -> object:
    # The probe's own failure (timeout, connection lost) is not the watcher's to report: a
    # timeout shows as silence, a loss is seen by the socket's reader.
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc


class KeepaliveTask:
    """Runs an HTTP keepalive action every interval until closed.

    A failed run (after the engine's own retries) is logged and reported as a
    ``keepalive_failed`` state event; the schedule goes on. :attr:`runs` and :attr:`failures`
    count what happened.
    """

    def __init__(
        self,
        policy: Keepalive,
        action: Callable[[], Awaitable[object]],
        *,
        clock: Clock,
        hooks: EventHooks | None = None,
        name: str = "keepalive",
        on_close: Callable[[KeepaliveTask], object] | None = None,
    ) -> None:
        self._policy = policy
        self._action = action
        self._clock = clock
        self._hooks = hooks or EventHooks()
        self._name = name
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.failures = 0

    @property
    def policy(self) -> Keepalive:
        """The keepalive value this task runs."""
        return self._policy

    @property
    def running(self) -> bool:
        """Whether the task is running."""
        return self._task is not None and not self._task.done()

    def start(self) -> KeepaliveTask:
        """Start the schedule; the first run is one interval from now."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"le_transport keepalive {self._name}"
            )
        return self

    async def _run(self) -> None:
        last = self._clock.now()
        while True:
            now = self._clock.now()
            decision = self._policy.decide(now, last_activity=last)
            if decision.step is not KeepaliveStep.PROBE:
                await self._clock.sleep(decision.at - now)
                continue
            last = now
            self.runs += 1
            try:
                async with timeout_after(self._clock, self._policy.timeout):
                    await self._action()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                _log.warning(
                    "%s: keepalive %s failed: %s",
                    self._name,
                    self._policy.action,
                    type(exc).__name__,
                    extra={"keepalive": self._policy.action, "error": type(exc).__name__},
                )
                emit(
                    self._hooks.on_state,
                    StateEvent(
                        "keepalive_failed",
                        self._name,
                        {"action": self._policy.action, "error": type(exc).__name__},
                    ),
                )

    async def close(self) -> None:
        """Stop the schedule (the run in flight is cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)

    async def __aenter__(self) -> KeepaliveTask:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
