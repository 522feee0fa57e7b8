"""The keepalive runners: act on the pure :class:`~le_transport.policies.Keepalive` decisions.

Two kinds of action share one policy: a socket request (``GetClock``), sent only when nothing
arrived for a whole interval, whose silence past the timeout means the peer is dead; and an
HTTP call through the engine (Server Chat API "retrieve chat information", Login Service
``refresh``), run every interval. Both run on the injected clock. An HTTP keepalive goes on
through outages, and stops only once a failure no retry fixes came back on every run for
10 minutes, 3 runs at least (see :class:`KeepaliveTask`).

Socket keepalives are served by a :class:`KeepaliveScheduler`, one per engine: a heap of
(deadline, socket) entries and one task sleeping until the earliest. An idle socket costs a heap
entry, not a task, a coroutine or a timer of its own (a fleet of 10,000 sockets holds one
keepalive task). A keepalive never runs on a socket that is down (LivePerson's SDK crashed the
process doing that): a socket is watched from the moment its connection is ready and forgotten
when the connection ends. A scheduler whose clock fails (its ``now`` or ``sleep`` raises) cannot
keep any socket alive: it logs the error, tells every socket it watched (each ends its
connection, so that its owner reconnects, or stops with the clock's error if that clock is
broken for good), and its task ends with the error; the next watched socket starts a new one.
A scheduler's task cancelled from outside (not by its ``close()``) is taken alike: logged, every
socket told, rather than left watched by a task that is gone.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

from .._checks import require_kind
from .._shown import error_text, redacted_exc_info
from ..clock import Clock, next_turn, timeout_after
from ..errors import (
    AuthenticationError,
    ClientStatusError,
    ConfigurationError,
    EngineClosed,
    KeepaliveClosed,
    Repeat,
)
from ..events import EventHooks, StateEvent, emit
from ..middleware.context import rest_asked
from ..policies._validate import finite_number, shown
from ..policies.close_codes import RETRY_HANDSHAKE_STATUSES
from ..policies.keepalive import Keepalive, KeepaliveStep
from ..policies.retry import DEFAULT_RETRY_AFTER_CEILING
from ..recovery import is_setup_error, refused_status, repeat_of

__all__ = [
    "TIDY_UP_GRACE",
    "KeepaliveFailureSubject",
    "KeepaliveScheduler",
    "KeepaliveSubject",
    "KeepaliveTask",
    "watch_socket",
]

_log = logging.getLogger("le_transport.sockets")

#: Seconds of the clock that the end of a connection waits for the tasks it cancelled (a
#: socket's ``on_connect`` task and keepalive probes, :func:`watch_socket`'s probe) to end: a
#: cancelled write may tidy up for a while (a middleware's socket ends it only then). One that
#: is still running past it (a callback that catches its cancellation, a write that swallows
#: it) is logged (WARNING, its task's name) and left to run, held until it ends, and the socket
#: goes on: it held up the reconnect, and the socket's close, for ever.
TIDY_UP_GRACE = 30.0

# The tasks let go of past TIDY_UP_GRACE, held until they end: the loop holds a task only
# weakly, and one waiting on something only it holds would be collected mid-run.
_LEFT_RUNNING: set[asyncio.Task[Any]] = set()


async def wait_tidy_up(tasks: Iterable[asyncio.Task[Any]], clock: Clock, *, owner: str) -> None:
    """Wait for ``tasks`` (cancelled by ``owner``, a socket's name) to end, for
    :data:`TIDY_UP_GRACE` seconds of ``clock`` at most; those still running then are logged
    (WARNING: their task names, never a value) and left to run, held until they end. Their
    outcomes are read (a task's error was its own to report). A clock that fails cuts the wait
    short (its error is logged where it failed): what is left is let go of alike. A
    cancellation of the caller goes through (the tasks are held all the same)."""
    tasks = list(tasks)
    waited = f"{TIDY_UP_GRACE:g} s"
    try:
        pending = {task for task in tasks if not task.done()}
        if pending:
            async with timeout_after(clock, TIDY_UP_GRACE):
                await asyncio.wait(pending)
    except TimeoutError:
        pass
    except Exception:
        waited = "the wait its clock could keep (the clock failed)"
    finally:
        for task in tasks:
            if task.done():
                _read_any(task)
            elif task not in _LEFT_RUNNING:
                _LEFT_RUNNING.add(task)
                task.add_done_callback(_let_go)
    stuck = [task.get_name() for task in tasks if not task.done()]
    if stuck:
        _log.warning(
            "%s: %d task(s) did not end within %s of their cancellation (%s); left running, "
            "and the socket goes on without them",
            owner,
            len(stuck),
            waited,
            ", ".join(stuck),
            extra={"socket": owner, "tasks": stuck},
        )


def _let_go(task: asyncio.Task[Any]) -> None:
    _LEFT_RUNNING.discard(task)
    _read_any(task)


def _read_any(task: asyncio.Task[Any]) -> None:
    # Read, so that asyncio does not report a task's error as never retrieved.
    if not task.cancelled():
        task.exception()


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

    The single-connection form of what :class:`KeepaliveScheduler` does for a fleet, in the
    caller's task. ``probe`` sends the keepalive request (its answer, like any frame, moves
    ``last_activity``); it runs in its own task so that a slow answer never delays the
    schedule. One probe runs at a time: each is given ``policy.timeout`` (on ``clock``) and
    then cancelled, as is one still running when the next goes out, so that probes stuck on a
    peer whose frames still arrive do not pile up; the next one is sent once the one cancelled
    has ended (a probe may tidy up when cancelled), within its own timeout. Cancel the watcher
    to stop it: the probe in flight is cancelled with it, and waited for, for
    :data:`TIDY_UP_GRACE` seconds of ``clock`` at most (one still running then is logged and
    left to run: a probe that never ends must not keep the watcher from ending); a
    cancellation of the watcher while it waits for it goes through.
    """
    probe_sent_at: float | None = None
    probes: set[asyncio.Task[object]] = set()
    try:
        while True:
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
            at = decision.at
            if decision.step is KeepaliveStep.PROBE:
                probe_sent_at = now
                previous = set(probes)
                for earlier in previous:
                    # Answered long ago by other traffic, and its own timeout not yet seen (or
                    # seen, and still tidying up).
                    earlier.cancel()
                task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
                    _quiet(probe, clock, policy.timeout, after=previous),
                    name=f"le_transport keepalive probe {name}",
                )
                probes.add(task)
                task.add_done_callback(probes.discard)
                # Asked again when the answer is due, as the scheduler does: deciding at once
                # probed again, and again, without yielding (a frame read at the same clock
                # reading counts as the answer, and the probe's task has not sent yet).
                at = now + policy.timeout
            await clock.sleep(at - now)
            if probe_sent_at is not None and last_activity() >= probe_sent_at:
                probe_sent_at = None
    finally:
        if probes:
            for task in probes:
                task.cancel()
            # asyncio.wait, not an await of each under suppress(BaseException): that ate a
            # cancellation of the watcher itself arriving meanwhile (a caller's timeout, a task
            # group shutting down), and the watcher returned as if nobody had cancelled it.
            # Bounded: a probe that never ends (its write swallows the cancellation) kept the
            # watcher, and whoever waits for it, for ever.
            await wait_tidy_up(set(probes), clock, owner=name)


async def _quiet(
    probe: Callable[[], Awaitable[object]],
    clock: Clock,
    timeout: float,
    *,
    after: set[asyncio.Task[object]] | None = None,
) -> object:
    # The probe's own failure (timeout, connection lost) is not the watcher's to report: a
    # timeout shows as silence, a loss is seen by the socket's reader. Past its timeout the
    # answer is too late to count (the peer is found dead, or its other frames answered).
    answer: object = None
    try:
        async with timeout_after(clock, timeout):
            tidying = None if not after else {task for task in after if not task.done()}
            if tidying:
                # One probe at a time: the ones cancelled for this one may still be tidying
                # up (within this one's timeout: one that never ends holds up no other).
                await asyncio.wait(tidying)
            answer = await probe()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    return answer


class KeepaliveSubject(Protocol):
    """What a :class:`KeepaliveScheduler` serves: a socket whose connection is ready."""

    def _keepalive_due(self, now: float) -> float | None:
        """Run the keepalive decision at ``now`` (probe, or declare the peer dead and end the
        connection); return when to be asked next, or None to be watched no longer."""
        ...


@runtime_checkable
class KeepaliveFailureSubject(KeepaliveSubject, Protocol):
    """A subject that wants to know when its scheduler stopped watching it: on a failed clock,
    or because its own check failed (a socket does: it ends the connection, which nothing would
    keep alive or find dead any more)."""

    def _keepalive_failed(self, error: Exception) -> None:
        """The scheduler stopped watching this subject because its clock raised ``error``, or
        its own ``_keepalive_due`` did (or answered no time: a ConfigurationError)."""
        ...


class KeepaliveScheduler:
    """Serves every socket keepalive of an engine with one task on the injected clock.

    :meth:`watch` puts a subject on a heap of deadlines and returns its ticket; one task sleeps
    until the earliest deadline (woken early when an earlier one arrives), asks each due
    subject ``_keepalive_due``, and puts it back at the time it answers.
    Sockets do not touch the heap when frames arrive: a socket whose deadline passed while
    traffic flowed answers a later deadline, so a busy socket costs one heap entry per
    interval. :meth:`unwatch` forgets a ticket (the connection ended); its entry is skipped
    when it comes up, and the heap is rebuilt when forgotten entries outnumber live ones.

    A ticket is good until it is forgotten, whichever way: :meth:`unwatch`, its subject
    answering None, :meth:`close`, a failed clock, or its subject's check failing (raising, or
    answering no time): that subject alone is forgotten, and told
    (:class:`KeepaliveFailureSubject`), so that its socket reconnects rather than stay
    connected with nothing watching it. Forgetting a ticket that is no longer
    good does nothing, so an owner that unwatches after any of these never forgets another
    subject (nor the count of those watched).

    The task starts with the first watched subject and ends when none is left; :meth:`close`
    (the engine's close) stops it at once. If the clock fails (``now`` or ``sleep`` raises),
    the task ends with the clock's error, logged once: every subject watched is forgotten, and
    told (:class:`KeepaliveFailureSubject`), rather than left watched by a task that is gone.
    So is its task cancelled from outside (not by :meth:`close`: a caller cancelling it),
    each subject told with a :class:`~le_transport.errors.KeepaliveClosed`; the next
    watched subject starts a new task. Unless every subject watched says that its own task is
    ending too (a subject's optional ``_keepalive_ending()``: a socket's owner task done or
    asked to cancel): the event loop shutting down (``asyncio.run()`` ending without the
    engine's close cancels every task at once), or a caller cancelling every task. Nothing
    could reconnect then: a turn of the loop later, when each owner has taken its cancellation
    and unwatched, a DEBUG line says so, not an ERROR. A subject still watched then (its owner
    goes on: a task may carry a cancellation request it never acts on, as Python 3.11's
    ``TaskGroup`` leaves behind when a child fails) is told as above, all those left alike.
    """

    __slots__ = (
        "_clock",
        "_heap",
        "_live",
        "_stale",
        "_stopping",
        "_task",
        "_tickets",
        "_wake",
        "_wake_at",
        "shared",
    )

    def __init__(self, clock: Clock, *, shared: bool = True) -> None:
        # Checked here, once: a clock that is no Clock failed only in the scheduler's task,
        # and a truthy "x" for shared was taken for True.
        require_kind(clock, Clock, owner="KeepaliveScheduler", field="clock", optional=False)
        require_kind(shared, bool, owner="KeepaliveScheduler", field="shared", optional=False)
        self._clock = clock
        #: Whether sockets share it (an engine's, closed by the engine); a socket made without
        #: an engine has one of its own and closes it when it closes.
        self.shared = shared
        self._heap: list[tuple[float, int, KeepaliveSubject]] = []
        # The good tickets, each with its subject: what is watched. A heap entry whose ticket
        # is not here is skipped when it comes up.
        self._live: dict[int, KeepaliveSubject] = {}
        # About how many heap entries are of forgotten tickets (at most that many: a subject
        # whose check raised is off the heap already), to know when to rebuild it.
        self._stale = 0
        self._tickets = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        # Tasks a close cancelled that have not ended yet: what every close waits for.
        self._stopping: set[asyncio.Task[None]] = set()
        # The task's wait, and the deadline it waits for: an earlier deadline wakes it.
        self._wake: asyncio.Future[None] | None = None
        self._wake_at = math.inf

    @property
    def watched(self) -> int:
        """How many subjects are watched."""
        return len(self._live)

    @property
    def running(self) -> bool:
        """Whether the scheduler's task is running."""
        return self._task is not None and not self._task.done()

    def watch(self, subject: KeepaliveSubject, at: float) -> int:
        """Ask ``subject`` at ``at`` (clock time), and then when it says; returns its ticket.

        ``at`` that is no time (NaN, not a real number) is a
        :class:`~le_transport.errors.ConfigurationError` here, at the call: on the heap it broke
        the task's wait or the heap's order, which the task took for its clock failing, and
        every socket watched was ended."""
        time = _as_time(at)
        if time is None:
            raise ConfigurationError(
                f"KeepaliveScheduler.watch: at must be a clock time (a real number, not NaN), "
                f"got {_kind_of(at)}"
            )
        at = time
        task = self._task
        # The loop first: without one (called from plain code) the RuntimeError came after the
        # subject was on the heap and counted, with no ticket in its owner's hands to unwatch.
        loop = asyncio.get_running_loop() if task is None or task.done() else None
        ticket = next(self._tickets)
        heapq.heappush(self._heap, (at, ticket, subject))
        self._live[ticket] = subject
        if loop is not None:
            task = self._task = loop.create_task(self._run(), name="le_transport socket keepalives")
            task.add_done_callback(_read_outcome)
        elif at < self._wake_at:
            self._poke()
        return ticket

    def unwatch(self, ticket: int) -> None:
        """Forget ``ticket``: its subject is asked no more. A ticket already forgotten (its
        subject answered None, the scheduler closed, or its clock failed) is left alone."""
        live = self._live
        if live.pop(ticket, None) is None:
            return
        if not live:
            # Nothing left to serve: the task ends now, and forgotten entries go with it.
            self._forget_all()
            self._poke()
            return
        self._stale += 1
        if self._stale > max(64, len(live)):
            # In place: the task may be serving this very list (a subject asked may unwatch).
            heap = self._heap
            heap[:] = [entry for entry in heap if entry[1] in live]
            heapq.heapify(heap)
            self._stale = 0

    async def close(self) -> None:
        """Stop serving: forget every subject and end the task. Idempotent: every close returns
        once the task has ended, a close made while another one stops it included."""
        self._forget_all()
        task, self._task = self._task, None
        stopping = self._stopping
        if task is not None and not task.done():
            task.cancel()
            stopping.add(task)
            task.add_done_callback(stopping.discard)
        if stopping:
            # Kept until they end: a second close found no task, and returned while the one
            # the first close cancelled still ran. (A watch() meanwhile starts a new task.)
            await asyncio.wait(set(stopping))

    def _forget_all(self) -> None:
        self._live.clear()
        self._heap.clear()
        self._stale = 0

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._live and task is not None and self._task is task:
                if all(_ending(subject) for subject in self._live.values()):
                    # Every socket's own task says it is being cancelled too: asyncio.run()
                    # ending a program that did not close its engine (it cancels every task at
                    # once, before any runs), or a caller cancelling every task. Nothing can
                    # reconnect: an ERROR saying the sockets were ended "so that they
                    # reconnect" was false at every such exit. Not taken on its word: an owner
                    # task may carry a cancellation request it never acts on (Python 3.11's
                    # TaskGroup leaves one behind when a child fails in an on_frame handler),
                    # and its socket, forgotten untold, was never probed again. A turn of the
                    # loop later, each owner really cancelled has taken its cancellation and
                    # unwatched; whoever is still watched then is told.
                    asyncio.get_running_loop().call_soon(self._cancelled_with_owners, task)
                    raise
                # Cancelled from outside (close() lets go of its task before cancelling it):
                # a caller's "cancel every task", say. Ended quietly, it left every socket
                # watched by a task that is gone (never probed, never found dead) until the
                # next watch(). Stopped as on a failed clock instead: each told, so that it
                # reconnects, and its new connection's watch() starts a new task.
                self._stop_all(
                    KeepaliveClosed(
                        "the socket keepalive scheduler's task was cancelled, not by its close()"
                    ),
                    "its task was cancelled (not by KeepaliveScheduler.close)",
                )
            raise

    def _cancelled_with_owners(self, task: asyncio.Task[None]) -> None:
        """A turn of the loop after ``task`` was cancelled from outside while every subject
        said that its own task was ending: those still watched (their owner goes on after
        all) are stopped as on any cancellation from outside, told so that they reconnect."""
        if self._task is not task:
            # Closed since, or a watch() started a new task, which serves what is left.
            return
        if not self._live:
            _log.debug(
                "socket keepalives stopped: its task was cancelled with every watched "
                "socket's own task (the event loop shutting down, say)"
            )
            return
        self._stop_all(
            KeepaliveClosed(
                "the socket keepalive scheduler's task was cancelled, not by its close()"
            ),
            "its task was cancelled (not by KeepaliveScheduler.close)",
        )

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock
        # A step of the loop before any subject is asked, no time: under an eager task factory
        # (Python 3.12+) this runs inside watch(), and a subject due at once was asked before
        # its owner held the ticket watch() returns (a socket, asked without one, answers None:
        # its connection was never watched again).
        await next_turn()
        try:
            while self._live:
                now = clock.now()
                self._serve_due(now)
                if not self._heap or not self._live:
                    break
                at = self._heap[0][0]
                wake: asyncio.Future[None] = loop.create_future()
                self._wake, self._wake_at = wake, at
                try:
                    async with timeout_after(clock, at - now):
                        await wake
                except TimeoutError:
                    pass
                finally:
                    if self._wake is wake:
                        # Not a new task's wait (a watch() after a close, which under an eager
                        # task factory runs inside watch() before this one ended).
                        self._wake, self._wake_at = None, math.inf
        except Exception as exc:
            # The clock failed (timeout_after raises the error of a sleep that failed): no
            # deadline can be kept, for any subject. Silently ending here would leave every
            # socket watched by a task that is gone: never probed, never found dead.
            self._clock_failed(exc)
            raise
        if not self._live:
            self._forget_all()

    def _clock_failed(self, error: Exception) -> None:
        """Forget every subject, log once, and tell each that it is no longer watched."""
        # The clock's type, and its error's type and text redacted and cut short: a clock is
        # the caller's object, and its repr or its error's text may carry anything.
        # (error_text, not str(): an error whose __str__ raises made the line raise, after
        # every subject was forgotten and before any was told, each left connected with
        # nothing probing it. It never raises, and redacts before it cuts.)
        self._stop_all(
            error,
            f"{type(self._clock).__name__} failed ({type(error).__name__}: {error_text(error)})",
        )

    def _stop_all(self, error: Exception, why: str) -> None:
        """Forget every subject, log once (``why`` the scheduler stopped), and tell each that
        it is no longer watched, with ``error``."""
        subjects = list(self._live.values())
        self._forget_all()
        told = [s for s in subjects if isinstance(s, KeepaliveFailureSubject)]
        _log.error(
            "socket keepalives stopped: %s; watched connections forgotten: %d, of which ended "
            "so that their sockets reconnect: %d",
            why,
            len(subjects),
            len(told),
            extra={
                "clock": type(self._clock).__name__,
                "error": type(error).__name__,
                "watched": len(subjects),
                "ended": len(told),
            },
        )
        for subject in told:
            _tell(subject, error)

    def _serve_due(self, now: float) -> None:
        heap = self._heap
        live = self._live
        while heap and heap[0][0] <= now:
            _, ticket, subject = heapq.heappop(heap)
            if ticket not in live:
                if self._stale:
                    self._stale -= 1
                continue
            try:
                at = subject._keepalive_due(now)
            except Exception as exc:
                # One subject's failure must not stop every other socket's keepalive.
                _log.error(
                    "a socket keepalive check failed (%s: %s); that connection is no longer "
                    "watched, and is ended so that its socket reconnects",
                    type(exc).__name__,
                    error_text(exc),
                    exc_info=redacted_exc_info(exc),
                    extra={"error": type(exc).__name__},
                )
                self._give_up(ticket, subject, exc)
                continue
            if at is None:
                live.pop(ticket, None)
                continue
            time = _as_time(at)
            if time is None:
                # Compared with the time below, a str raised outside the guard above and was
                # taken for the clock failing (every socket ended); a NaN had the subject asked
                # again at every next representable instant. That subject's failure alone.
                _log.error(
                    "a socket keepalive check answered %s, not a time; that connection is no "
                    "longer watched, and is ended so that its socket reconnects",
                    _kind_of(at),
                    extra={"error": "NotATime"},
                )
                self._give_up(
                    ticket,
                    subject,
                    ConfigurationError(
                        f"a keepalive check answered {_kind_of(at)}, not a clock time or None"
                    ),
                )
                continue
            if ticket not in live:
                # Its owner unwatched it while it was asked.
                continue
            # Never due again at the same instant: that would spin without time passing.
            heapq.heappush(
                heap, (time if time > now else math.nextafter(now, math.inf), ticket, subject)
            )

    def _give_up(self, ticket: int, subject: KeepaliveSubject, error: Exception) -> None:
        """Forget ``ticket``, whose subject's check failed with ``error``, and tell the subject.

        Before, it stayed watched but was asked no more: its socket stayed connected with
        nothing probing it or finding its peer dead, for as long as that connection lasted (a
        half-open path: for ever). Told, a socket ends the connection, and its owner
        reconnects; the new connection is watched afresh."""
        if self._live.pop(ticket, None) is None:
            return  # its owner unwatched it while it was asked
        if isinstance(subject, KeepaliveFailureSubject):
            _tell(subject, error)


def _ending(subject: KeepaliveSubject) -> bool:
    """Whether ``subject`` says that its own task is ending (``_keepalive_ending()``, as a
    socket does: its owner task done, or asked to cancel); a subject that cannot say, or fails
    to, is not."""
    ending = getattr(subject, "_keepalive_ending", None)
    if ending is None:
        return False
    try:
        return ending() is True
    except Exception:
        return False


def _tell(subject: KeepaliveFailureSubject, error: Exception) -> None:
    """Tell ``subject`` that its keepalive stopped on ``error``; a subject that fails to hear
    it is logged (its error redacted), never raised into the scheduler."""
    try:
        subject._keepalive_failed(error)
    except Exception as exc:
        _log.error(
            "a socket could not be told that its keepalive stopped (%s: %s)",
            type(exc).__name__,
            error_text(exc),
            exc_info=redacted_exc_info(exc),
            extra={"error": type(exc).__name__},
        )


def _as_time(at: object) -> float | None:
    """``at`` as a clock time (an int or a float, not a bool, NaN, nor an int past float's
    range), or None when it is none."""
    if isinstance(at, bool) or not isinstance(at, int | float):
        return None
    try:
        time = float(at)
    except OverflowError:
        return None
    return time if time == time else None  # NaN != NaN


def _kind_of(at: object) -> str:
    # The type, and the value of a float only (NaN): never a caller's object's repr.
    return repr(at) if isinstance(at, float) else type(at).__name__


def _read_outcome(task: asyncio.Task[None]) -> None:
    # The scheduler's task may end with its clock's error (logged, and every subject told): read
    # here so that asyncio does not report it again as never retrieved.
    if not task.cancelled():
        task.exception()


#: 4xx answers that say nothing final of a keepalive's own request: the stack handles them
#: (the auth middleware answers a 401 with fresh credentials and one replay, and a second 401
#: is an AuthenticationError; a 407 is the proxy's, its credentials not the call's): met bare,
#: they are logged and the schedule goes on.
_STATUSES_THE_STACK_HANDLES = frozenset({401, 407})


def _final_failure(error: Exception) -> bool:
    """Whether a failed run's ``error`` is judged final: no retry of the same action fixes it,
    so an HTTP keepalive whose every run fails so for long enough stops (see
    :class:`KeepaliveTask`) rather than fail every interval for ever.

    The recovery loop's own taxonomy: a mistake in what was asked for
    (:func:`~le_transport.recovery.is_setup_error`: a malformed call, a
    :class:`~le_transport.errors.ConfigurationError`, an unknown service, a hostile host, a
    provider's bug, a 4xx that failed at once, such as a chat that ended or a blacklisted
    account, or a Domain API refusing the account) but a 401 or 407, which the stack handles;
    or credentials refused (an :class:`~le_transport.errors.AuthenticationError` whose
    :func:`~le_transport.recovery.repeat_of` verdict is ``FINAL``:
    :class:`~le_transport.errors.LoginRejected`, a second 401 after fresh credentials; not an
    :class:`~le_transport.errors.UnexpectedAnswer`, a maintenance page). Not an outage: a 5xx
    or a reset after the engine's retries, a timeout, the Domain API down; nor a 408 or a 425
    (nor a 429) wherever it was answered, the statuses that ask to try again as it was
    (:data:`~le_transport.policies.close_codes.RETRY_HANDSHAKE_STATUSES`, as a socket's
    upgrade treats them)."""
    if isinstance(error, AuthenticationError):
        return repeat_of(error) is Repeat.FINAL
    if refused_status(error) in RETRY_HANDSHAKE_STATUSES:
        return False
    if isinstance(error, ClientStatusError) and error.status in _STATUSES_THE_STACK_HANDLES:
        return False
    return is_setup_error(error)


class KeepaliveTask:
    """Runs an HTTP keepalive action every interval until closed.

    A failed run (after the engine's own retries) is logged as a WARNING (the error's type and
    its text, redacted and cut to 200 characters) and reported as a ``keepalive_failed`` state
    event; the schedule goes on: an outage (a 5xx or a reset after the retries, a timeout, a
    408 or 425, the Domain API down) is waited out. :attr:`runs` and :attr:`failures` count
    what happened. A failed run whose answers asked for rest (a 429 or a 503 with
    ``Retry-After``, cut to ``retry_after_ceiling``: the engine's retry policy's, 60 s by
    default) is followed by none sooner than that rest after it ended, even when an interval
    comes first. A ``retry_after_ceiling`` that is no finite number of seconds >= 0 is a
    :class:`~le_transport.errors.ConfigurationError`.

    A failure judged final (no retry of the run fixes it: a mistake in what was asked for, an
    unknown service, a hostile host, a :class:`~le_transport.errors.ConfigurationError`, a
    provider's bug; a 4xx but 401, 407, 408, 425 or 429, such as a chat that ended, answered
    404 or 410, or a blacklisted account, 451; credentials refused,
    :class:`~le_transport.errors.LoginRejected` or a second 401 after fresh credentials) is
    still only a run that failed, once: an app key's 401 on a run and its replay may be a
    gateway's hiccup, a domain map a provider fetched is cured when its TTL runs out. Its
    WARNING says it was judged final, how many runs in a row failed so, and when the schedule
    stops; its event carries ``final_in_a_row``. The schedule stops only once every run failed
    so for :attr:`STOP_AFTER_SECONDS` (10 minutes, a fetched domain map's default TTL: a map
    cured by then was fetched again within the runs that failed) and
    :attr:`STOP_AFTER_RUNS` runs (3) at least: 21 runs of the Server Chat API's chat info (every
    30 s), 3 of a Login Service refresh (every 5 min). A run that succeeds, or fails otherwise
    (an outage), starts the count again. The stop is logged once at ERROR (the product, the
    task's name, which holds the service, and the last error's type and text, redacted and cut
    short), reported as a ``keepalive_failed`` state event with ``stopped=True``,
    :attr:`running` turns False and :attr:`error` holds the last error; :meth:`wait` returns
    it. ``not_final`` names error types never judged final (the engine's Login Service
    refresh: a refused login after a refused refresh drops the session, and later runs refresh
    nothing until a call logs in again, then keep that session alive; after a refresh answered
    3xx the session is kept and marked, later runs still refresh it, and send no login for it).

    A clock that fails (its ``now`` or ``sleep`` raises) cannot keep the schedule: rather than
    the task ending quietly, it is logged once at ERROR (the clock's and the error's types),
    reported as a ``keepalive_failed`` state event with ``stopped=True``, and the schedule
    stops: :attr:`running` turns False and :attr:`error` holds the clock's error. Nothing
    restarts it; :meth:`close` still returns quietly.

    An action that raises :class:`~le_transport.errors.EngineClosed` (its engine closing: the
    engine's close cuts the run in flight short before it closes its keepalives) ends the
    schedule as a close does, not as a failure: one INFO line, no failure counted, no event,
    :attr:`error` stays None and :meth:`wait` returns None.

    A task that stops by itself, whichever way, leaves its engine at once (``on_close`` is
    called, as by :meth:`close`): an engine serving many chats does not keep the keepalives of
    those that ended, nor count them as left running. Ask the engine for a new one to start
    again; closing a stopped task is quiet.

    :meth:`close` is final: :meth:`start` afterwards raises
    :class:`~le_transport.errors.KeepaliveClosed` (a task started again was no longer its
    engine's, and ran on after the engine closed).
    """

    #: A failure judged final stops the schedule once every run failed so for this many runs
    #: in a row at least ...
    STOP_AFTER_RUNS: ClassVar[int] = 3
    #: ... and for this long at least, from the first of them: the default TTL of a domain map
    #: fetched from the Domain API (``DEFAULT_CSDS_TTL``), so that a bad map such a provider
    #: holds is fetched again before the schedule gives up on it.
    STOP_AFTER_SECONDS: ClassVar[float] = 600.0
    #: How much longer than the keepalive's ``timeout`` a run may take before it is cut: none
    #: here. An action that bounds itself by that timeout (the engine's runs give their
    #: request it as its deadline) is given a moment more (:class:`Engine.keepalive`'s runs:
    #: 1 s), so that its own give-up, which says what the service did, ends the run rather
    #: than this backstop's bare TimeoutError at the same instant.
    RUN_GRACE: ClassVar[float] = 0.0

    def __init__(
        self,
        policy: Keepalive,
        action: Callable[[], Awaitable[object]],
        *,
        clock: Clock,
        hooks: EventHooks | None = None,
        name: str = "keepalive",
        on_close: Callable[[KeepaliveTask], object] | None = None,
        not_final: tuple[type[Exception], ...] = (),
        retry_after_ceiling: float = DEFAULT_RETRY_AFTER_CEILING,
    ) -> None:
        if not (finite_number(retry_after_ceiling) and retry_after_ceiling >= 0):
            raise ConfigurationError(
                "KeepaliveTask.retry_after_ceiling must be a finite number of seconds >= 0, "
                f"got {shown(retry_after_ceiling)}"
            )
        self._policy = policy
        self._not_final = not_final
        self._retry_after_ceiling = float(retry_after_ceiling)
        self._action = action
        self._clock = clock
        self._hooks = hooks or EventHooks()
        self._name = name
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Whether a close has cancelled the task: a second close waits, and cancels no more.
        self._stopping = False
        self._error: Exception | None = None
        # Set when the schedule ends, by itself or closed: what wait() waits for.
        self._ended = asyncio.Event()
        #: Runs of the action so far.
        self.runs = 0
        #: Runs that failed (a clock failure is not one: see :attr:`error`; nor a run cut
        #: short by its engine's close).
        self.failures = 0
        # The runs in a row that failed in a way judged final, when the first of them ran, and
        # how long before the last one.
        self._final_in_a_row = 0
        self._final_since = 0.0
        self._final_span = 0.0

    @property
    def policy(self) -> Keepalive:
        """The keepalive value this task runs."""
        return self._policy

    @property
    def running(self) -> bool:
        """Whether the task is running."""
        return self._task is not None and not self._task.done()

    @property
    def error(self) -> Exception | None:
        """Why the schedule stopped by itself: the last of the runs whose failures, judged
        final, came back on every run for :attr:`STOP_AFTER_SECONDS` and
        :attr:`STOP_AFTER_RUNS` runs, or the error its clock raised. None while it runs, when
        it was closed, and when its engine closed under it."""
        return self._error

    async def wait(self) -> Exception | None:
        """Wait until the schedule ends, by itself or closed; return :attr:`error` (None when
        it was closed while running well, by itself or with its engine). Cancelling the wait
        leaves the schedule running."""
        await self._ended.wait()
        return self._error

    def start(self) -> KeepaliveTask:
        """Start the schedule; the first run is one interval from now. Idempotent while it
        runs; :class:`~le_transport.errors.KeepaliveClosed` once closed."""
        if self._closed:
            raise KeepaliveClosed(
                f"the keepalive {self._name} {self._policy.action} is closed and does not start "
                "again: ask the engine for a new one (Engine.keepalive)"
            )
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"le_transport keepalive {self._name}"
            )
        return self

    async def _run(self) -> None:
        try:
            await self._schedule()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Only the clock's calls can get here (a run's own failure is caught where it
            # runs): with no time to keep, the schedule stops, and says so.
            self._clock_failed(exc)
        finally:
            self._ended.set()
            # Stopped by itself (or cancelled): no longer its engine's, which would otherwise
            # hold it, and count it as running, until the engine closed.
            self._release()

    def _release(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        try:
            on_close(self)
        except Exception as exc:
            # The owner's callback: its failure must not replace why the schedule ended.
            _log.error(
                "%s: keepalive %s: its owner could not be told that it ended (%s: %s)",
                self._name,
                self._policy.action,
                type(exc).__name__,
                error_text(exc),
                exc_info=redacted_exc_info(exc),
                extra={"keepalive": self._policy.action, "error": type(exc).__name__},
            )

    def _failed_for_good(self, error: Exception) -> None:
        self._error = error
        product, action = self._policy.product, self._policy.action
        # The error's type and its text, redacted and cut short, as a failed run's WARNING
        # shows them; no traceback (the caller's own code is not at fault).
        _log.error(
            "%s: keepalive %s (%s) stopped: %s: %s; every run for %.0f s (%d runs in a row) "
            "failed in a way no retry fixes, so it will not run again (fix the cause and ask "
            "the engine for a new keepalive)",
            self._name,
            action,
            product,
            type(error).__name__,
            error_text(error),
            self._final_span,
            self._final_in_a_row,
            extra={
                "keepalive": action,
                "product": product,
                "error": type(error).__name__,
                "final_in_a_row": self._final_in_a_row,
            },
        )
        emit(
            self._hooks.on_state,
            StateEvent(
                "keepalive_failed",
                self._name,
                {"action": action, "error": type(error).__name__, "stopped": True},
            ),
        )

    def _engine_closed(self, error: EngineClosed) -> None:
        # INFO, and no error kept: an engine closing under a run (its close cuts the run short
        # before it closes its keepalives) ends the schedule as that close would have, not as
        # a failure; wait() returns None, as for any keepalive closed while healthy.
        _log.info(
            "%s: keepalive %s stopped: its engine is closed; it will not run again",
            self._name,
            self._policy.action,
            extra={"keepalive": self._policy.action, "error": type(error).__name__},
        )

    def _clock_failed(self, error: Exception) -> None:
        self._error = error
        clock = type(self._clock).__name__
        # Types only: neither the clock's repr nor the error's text, which may hold anything.
        _log.error(
            "%s: keepalive %s stopped: its clock %s failed (%s); it will not run again",
            self._name,
            self._policy.action,
            clock,
            type(error).__name__,
            extra={"keepalive": self._policy.action, "clock": clock, "error": type(error).__name__},
        )
        emit(
            self._hooks.on_state,
            StateEvent(
                "keepalive_failed",
                self._name,
                {
                    "action": self._policy.action,
                    "error": type(error).__name__,
                    "clock": clock,
                    "stopped": True,
                },
            ),
        )

    async def _schedule(self) -> None:
        last = self._clock.now()
        # No run before this: the rest a failed run's answers asked for (Retry-After).
        rested = -math.inf
        while True:
            now = self._clock.now()
            decision = self._policy.decide(now, last_activity=last)
            if decision.step is not KeepaliveStep.PROBE:
                await self._clock.sleep(decision.at - now)
                continue
            if now < rested:
                await self._clock.sleep(rested - now)
                continue
            last = now
            self.runs += 1
            # What the action itself raised: anything else out of the block but the timeout is
            # the clock's (its sleep failed, and the run was cut short for it).
            own: Exception | None = None
            timeout = timeout_after(self._clock, self._policy.timeout + self.RUN_GRACE)
            try:
                async with timeout:
                    try:
                        await self._action()
                    except Exception as exc:
                        own = exc
                        raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if exc is not own and not (timeout.expired and isinstance(exc, TimeoutError)):
                    # The clock failed under the run: the clock's failure (_run stops the
                    # schedule and says so), not a run of the action that failed (a WARNING
                    # blaming the service, an event, a failure counted).
                    raise
                if isinstance(exc, EngineClosed):
                    # Its engine is closing: the schedule ends, as that close would end it.
                    self._engine_closed(exc)
                    return
                self.failures += 1
                if self._judged_final(exc, now):
                    # An unknown service, a chat that ended, credentials refused, on every run
                    # for long enough: every later run would fail alike, 120 WARNINGs an hour
                    # that no caller would see.
                    self._failed_for_good(exc)
                    return
                self._run_failed(exc)
                asked = rest_asked(exc, self._retry_after_ceiling)
                if asked > 0:
                    # A 429 or 503 that asked for a minute's rest: the next run one interval
                    # after this one's start came back sooner than the service asked, and
                    # again at every interval while it asked.
                    rested = self._clock.now() + asked
            else:
                self._final_in_a_row = 0

    def _judged_final(self, error: Exception, now: float) -> bool:
        """Count a failed run that started at ``now``; whether the schedule stops on it."""
        if isinstance(error, self._not_final) or not _final_failure(error):
            # An outage: whatever failed before it is no longer failing alike on every run.
            self._final_in_a_row = 0
            return False
        if self._final_in_a_row == 0:
            self._final_since = now
        self._final_in_a_row += 1
        self._final_span = now - self._final_since
        return (
            self._final_in_a_row >= self.STOP_AFTER_RUNS
            and self._final_span >= self.STOP_AFTER_SECONDS
        )

    def _run_failed(self, error: Exception) -> None:
        action = self._policy.action
        details: dict[str, object] = {"action": action, "error": type(error).__name__}
        in_a_row = self._final_in_a_row
        # The error's type and its text, redacted and cut short: the type alone
        # ("TransportError") cannot tell an engine never started from an outage.
        if in_a_row:
            details["final_in_a_row"] = in_a_row
            _log.warning(
                "%s: keepalive %s failed: %s: %s; judged final (%d run(s) in a row, for %.0f "
                "s): it stops once every run has failed so for %.0f s and %d runs in a row",
                self._name,
                action,
                type(error).__name__,
                error_text(error),
                in_a_row,
                self._final_span,
                self.STOP_AFTER_SECONDS,
                self.STOP_AFTER_RUNS,
                extra={
                    "keepalive": action,
                    "error": type(error).__name__,
                    "final_in_a_row": in_a_row,
                },
            )
        else:
            _log.warning(
                "%s: keepalive %s failed: %s: %s",
                self._name,
                action,
                type(error).__name__,
                error_text(error),
                extra={"keepalive": action, "error": type(error).__name__},
            )
        emit(self._hooks.on_state, StateEvent("keepalive_failed", self._name, details))

    async def close(self) -> None:
        """Stop the schedule (the run in flight is cancelled), for good. Idempotent: every
        close returns once the schedule has ended, a close made while another one stops it
        included (it waits for that one's run to end, and cancels it no second time)."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if not self._stopping:
                self._stopping = True
                task.cancel()
            # The task is kept (start() refuses once closed): a second close, or wait(), made
            # while the run still ends (a run cut short may tidy up: a flush, a logout) found
            # none, and returned before the run had ended.
            await asyncio.wait({task})
        if task is not None and not task.cancelled():
            task.exception()  # read, so that asyncio does not report it as never retrieved
        self._ended.set()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)

    async def __aenter__(self) -> KeepaliveTask:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
