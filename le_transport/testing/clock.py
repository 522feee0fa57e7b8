"""A virtual clock that jumps to the next deadline whenever every task is waiting.

Modelled on trio's ``MockClock`` with ``autojump_threshold=0``: tests of the guide's 5/10/15 s
schedule through the real middleware stack and a real loopback server take milliseconds of
wall time, with no hand-advancing of time. Every sleep is recorded in :attr:`VirtualClock.sleeps`.

"Every task is waiting" is read off the event loop: when, for ``idle_rounds`` consecutive loop
iterations, no callback other than the clock's own is ready to run (so no task is runnable and
no I/O event arrived) and no job the loop gave its thread pool is still running, time jumps to
the earliest pending sleep. Loopback I/O with a server in the same loop completes within an
iteration, so a test may talk to a real aiohttp server without time jumping under it. Jobs in
the pool are those of ``loop.run_in_executor`` (so of ``asyncio.to_thread``,
``loop.getaddrinfo`` and aiohttp reading a file body) started once a clock was first read or
slept on in the loop: time waits for them, so a job that blocks until time moves waits for
ever (advance such a test by hand), and a job given up (its future cancelled, say by a
timeout) holds time no longer. Work in threads of one's own or in other
processes is invisible to the loop: for such tests set ``autojump_threshold`` (real seconds
the loop must stay quiet before a jump: any I/O event, callback or pool job in them starts
the count again, as in trio), or advance time by hand with :meth:`VirtualClock.advance` and
``autojump=False``. The library's own bounds are pending sleeps too: a socket's
``prepare_timeout`` (10 min) waits while its providers resolve the host and log in, so a
provider that waits on another process (a vault, a Redis) without ``autojump_threshold`` sees
time jump to it, and the connect fail as timed out.

The clocks on one loop jump together: one task drives them all (a driver per clock saw the
other's step ready at every turn, and none ever jumped), moving every clock with ``autojump``
on by the same amount, to the earliest deadline among them. Each keeps its own reading and
date (``epoch + now()``): a server's clock skewed from its client's, or a clock an earlier test
left on a loop shared by a session, stays as far from the others as it was. A clock with
``autojump=False`` moves only by :meth:`~VirtualClock.advance`. A clock read in another loop
(a helper's ``asyncio.run``, a thread's loop) moves to it only when no finite sleep of it
waits to be jumped on its former loop (or that loop is closed); a sleep moves it at once. A
wait for ``autojump_threshold``'s quiet that ends because no sleep is left makes no jump.

Time stays finite: a sleep of ``inf`` seconds (or one whose deadline is past the largest
float) is never jumped to; like ``asyncio.sleep(inf)`` it waits until it is cancelled, so
``timeout_after(clock, inf)`` is no timeout. A NaN sleep is a :class:`ValueError`.

Its date moves with it: :meth:`VirtualClock.wall` is Unix seconds consistent with
:meth:`~VirtualClock.now` (``epoch + now()``). The engine, its token providers and OAuth1
signer, and the simulator read JWT ``iat``/``exp``, ``oauth_timestamp`` and ``Retry-After``
dates against it when they run on this clock, so a test hours of virtual time long sees no
clock skew and no token read against the real date.

A long run on virtual time stays bounded: :attr:`VirtualClock.sleeps` and ``history`` keep the
newest ``max_records`` sleeps (a :class:`~le_transport.chaos.plan.RecordLog`, read as a list),
and sleeps cancelled before their deadline (a timeout that did not fire) leave the queue of
pending sleeps in bulk rather than only when time reaches them.

Requires the standard asyncio event loop (it inspects the loop's ready queue, and wraps the
loop's ``run_in_executor`` to see the jobs in its pool).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import numbers
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._checks import require_kind
from ..chaos.plan import DEFAULT_MAX_RECORDS, RecordLog, check_max_records
from ..errors import ConfigurationError
from ..policies._validate import finite_number, shown

__all__ = ["VirtualClock", "virtual_clock_in_use"]

#: Per event loop, the VirtualClock last slept on (or first read) in it, both held weakly.
_IN_USE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[VirtualClock]] = (
    weakref.WeakKeyDictionary()
)


def virtual_clock_in_use(loop: asyncio.AbstractEventLoop | None = None) -> VirtualClock | None:
    """The :class:`VirtualClock` last slept on (or first read) in ``loop`` (default: the
    running loop), or None: how a :class:`~le_transport.chaos.FaultInjector` made without
    ``clock=`` finds out that it runs beside virtual time."""
    if loop is None:
        loop = asyncio._get_running_loop()
        if loop is None:
            return None
    ref = _IN_USE.get(loop)
    return None if ref is None else ref()


class VirtualClock:
    """A :class:`~le_transport.clock.Clock` whose time moves only when everything waits.

    - ``start``: the initial reading of :meth:`now`: a finite number (not a bool).
    - ``autojump``: jump to the next deadline automatically (default); else use :meth:`advance`.
      A bool (a truthy ``"no"`` from a config file is refused, not guessed).
    - ``idle_rounds``: loop iterations with nothing else ready before a jump: an int >= 1
      (default 3).
    - ``autojump_threshold``: additionally, real seconds the loop must stay quiet (no I/O
      event, no callback, no job in its thread pool: any starts the count again): a finite
      number >= 0 (default 0; ``inf`` would never jump, and every sleep would hang).
    - ``max_records``: how many sleeps :attr:`sleeps` and :attr:`history` keep, the newest
      (default 100,000; None: every one).
    - ``epoch``: the Unix time at virtual time 0, so that :meth:`wall` is ``epoch + now()``:
      a finite number (not a bool), or None (default) for the real time at construction less
      ``start`` (the wall clock then reads the real date when made, and moves with virtual
      time from there).
    """

    def __init__(
        self,
        start: float = 0.0,
        *,
        autojump: bool = True,
        idle_rounds: int = 3,
        autojump_threshold: float = 0.0,
        max_records: int | None = DEFAULT_MAX_RECORDS,
        epoch: float | None = None,
    ) -> None:
        check_max_records(max_records, owner="VirtualClock")
        _check_settings(autojump, idle_rounds, autojump_threshold)
        if not finite_number(start):
            # Before, a bool or a numeric str was taken (True: time 1.0, "5": 5.0), None was a
            # raw TypeError, an int past float's range a raw OverflowError, and NaN or inf a
            # bare ValueError.
            raise ConfigurationError(
                f"VirtualClock.start must be a finite number, got {_number_or_type(start)}"
            )
        if epoch is not None and not finite_number(epoch):
            raise ConfigurationError(
                "VirtualClock.epoch must be None or a finite number of Unix seconds, got "
                f"{_number_or_type(epoch)}"
            )
        self._now = float(start)
        self._epoch = time.time() - self._now if epoch is None else float(epoch)
        if not math.isfinite(self._epoch + self._now):
            raise ConfigurationError(
                f"VirtualClock: epoch {shown(epoch)} + start {shown(start)} is past a float's range"
            )
        self._autojump = autojump
        self._idle_rounds = idle_rounds
        self._threshold = float(autojump_threshold)
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        # Sleeps with no finite deadline: never in _sleepers, so never jumped to.
        self._forever: set[asyncio.Future[None]] = set()
        # Sleeps cancelled while still in _sleepers (they leave it in bulk: _forget_cancelled).
        self._cancelled = 0
        # The loop this clock was last slept on or first read in (weakly), noted in _IN_USE,
        # and the clocks on it, whose one driver jumps them together (None: a loop that is
        # not the standard one).
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._group: _LoopClocks | None = None
        #: Every sleep requested, in seconds, in order (including the watchdog sleeps of
        #: ``timeout_after``: read a call's pauses from its attempt records instead); the
        #: newest ``max_records``.
        self.sleeps: RecordLog[float] = RecordLog(max_records, name="virtual clock sleeps")
        #: (time at which the sleep started, its length), in order; the newest ``max_records``.
        self.history: RecordLog[tuple[float, float]] = RecordLog(
            max_records, name="virtual clock history"
        )

    def now(self) -> float:
        """The virtual time."""
        # Noted on the loop it is read in (a clock reused on a later loop too: a module's
        # clock under per-test loops): a pool job started right after the reading (a
        # timeout_after's body) is then waited for, and virtual_clock_in_use finds it.
        loop = asyncio._get_running_loop()
        if loop is not None:
            seen = self._loop
            if seen is None:
                self._mark(loop)
            elif seen() is not loop:
                self._read_in(loop, seen())
        return self._now

    def _read_in(
        self, loop: asyncio.AbstractEventLoop, before: asyncio.AbstractEventLoop | None
    ) -> None:
        """Read in ``loop``, another than the one it was last on (``before``): moved to it,
        unless sleeps of it still wait on ``before`` (a helper's loop reading it, say): moved
        away, those were never jumped again. The new loop's pool is watched either way."""
        # Only a finite sleep a driver will jump keeps it there (one of inf is never jumped,
        # nor any of a clock without autojump).
        if (
            before is None
            or before.is_closed()
            or not self._autojump
            or self._next_deadline() is None
        ):
            self._mark(loop)
        else:
            _LoopClocks.of(loop)

    #: Its :meth:`wall` is Unix seconds (see :class:`~le_transport.clock.Clock`).
    wall_is_epoch = True

    @property
    def epoch(self) -> float:
        """The Unix time at virtual time 0 (see :meth:`wall`)."""
        return self._epoch

    def wall(self) -> float:
        """Unix seconds on this clock: ``epoch + now()``, moving only as virtual time moves.

        The wall clock that goes with this clock (see :class:`~le_transport.clock.Clock`): an
        :class:`~le_transport.Engine` on this clock reads ``Retry-After`` dates against it, its
        token providers JWT ``iat``/``exp`` and its :class:`~le_transport.providers.OAuth1Auth`
        dates ``oauth_timestamp`` with it, and a
        :class:`~le_transport.testing.Simulator` on it dates its tokens and checks timestamps
        by it, unless given a wall clock or an epoch of their own.
        """
        return self._epoch + self._now

    def _mark(self, loop: asyncio.AbstractEventLoop) -> None:
        """Note this clock as the one in use on ``loop`` (see :func:`virtual_clock_in_use`),
        and as one of the clocks its driver jumps (no longer of the loop it was on before)."""
        self._loop = weakref.ref(loop)
        _IN_USE[loop] = weakref.ref(self)
        group = _LoopClocks.of(loop)
        if self._group is not group:
            if self._group is not None:
                self._group.leave(self)
            if group is not None:
                group.join(self)
        self._group = group

    async def sleep(self, seconds: float) -> None:
        """Wait until the virtual time has moved on by ``seconds``.

        ``inf`` (or a deadline past the largest float) waits until cancelled, as
        ``asyncio.sleep(inf)`` does; NaN is a :class:`ValueError`. What is no real number (a
        str, bytes, a ``Decimal``, None) is a :class:`TypeError`, as on the real clock.
        """
        if not isinstance(seconds, numbers.Real):
            # float() took "5" and Decimal("5"), which the real clock's asyncio.sleep refuses:
            # a test on virtual time passed where production fails.
            raise TypeError(
                f"VirtualClock.sleep: seconds must be a number, got {type(seconds).__name__}"
            )
        seconds = float(seconds)
        if math.isnan(seconds):
            # max(0.0, nan) is 0.0: a NaN would pass for "no wait" and hide the caller's bug.
            raise ValueError("VirtualClock.sleep(NaN): a sleep must be a number of seconds")
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self.history.append((self._now, seconds))
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop() is not loop:
            self._mark(loop)
        if seconds == 0:
            await asyncio.sleep(0)
            return
        deadline = self._now + seconds
        if not math.isfinite(deadline):
            await self._sleep_forever(loop)
            return
        group = self._group
        if self._autojump:
            # Checked here, not in the driver: a driver that died would leave every sleep hung.
            _check_loop(loop)
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        if self._autojump and group is not None:
            group.drive(loop)
        try:
            await fut
        except asyncio.CancelledError:
            if group is not None:
                group.poke()
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._sleepers):
                self._forget_cancelled()
            raise

    async def _sleep_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """A sleep with no finite deadline: it waits until cancelled. Jumping to it would make
        :meth:`now` inf, after which every finite sleep and timeout is due at once and every
        elapsed time is nan; kept out of the queue, it can never be the next deadline."""
        fut: asyncio.Future[None] = loop.create_future()
        self._forever.add(fut)
        try:
            await fut
        finally:
            self._forever.discard(fut)

    def _forget_cancelled(self) -> None:
        """Take the cancelled sleeps out of the queue at once: a run whose timeouts never fire
        (the usual case) would otherwise keep each until time reaches its deadline."""
        self._sleepers = [entry for entry in self._sleepers if not entry[2].done()]
        heapq.heapify(self._sleepers)
        self._cancelled = 0

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` (finite) and wake every sleep that is due. Anything but
        a number (a str, None, a bool), a negative or non-finite one, or an int past float's
        range is a :class:`~le_transport.errors.ConfigurationError` (a :class:`ValueError`)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ConfigurationError(
                "VirtualClock.advance: seconds must be a finite number >= 0, got "
                f"{type(seconds).__name__}"
            )
        if not finite_number(seconds):
            # NaN would be a silent no-op (max(now, nan) is now); inf would break time for
            # good; an int past float's range raised OverflowError.
            raise ConfigurationError(
                f"VirtualClock.advance({shown(seconds)}): time must stay finite"
            )
        if seconds < 0:
            raise ConfigurationError("time cannot go backwards")
        when = self._now + seconds
        if not math.isfinite(when):
            raise ConfigurationError(f"VirtualClock.advance({seconds!r}): time must stay finite")
        self._jump_to(when)
        if self._group is not None:
            self._group.poke()

    @property
    def pending(self) -> int:
        """How many sleeps are waiting (infinite ones included)."""
        return sum(1 for _, _, f in self._sleepers if not f.done()) + len(self._forever)

    def _jump_to(self, when: float) -> None:
        self._now = max(self._now, when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def _next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled sleeps
        return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r}, pending={self.pending})"


def _check_settings(autojump: object, idle_rounds: object, threshold: object) -> None:
    """A :class:`ConfigurationError` naming the field unless ``autojump`` is a bool,
    ``idle_rounds`` an int >= 1 (not a bool) and ``threshold`` a finite number >= 0 (not a
    bool). Before, a truthy ``"no"`` turned autojump on, ``inf`` hung every sleep, a negative
    number was taken silently and a str raised a raw TypeError."""
    require_kind(autojump, bool, owner="VirtualClock", field="autojump", optional=False)
    rounds_ok = type(idle_rounds) is not bool and isinstance(idle_rounds, int) and idle_rounds >= 1
    if not rounds_ok:
        raise ConfigurationError(
            f"VirtualClock.idle_rounds must be an int >= 1, got {_number_or_type(idle_rounds)}"
        )
    if not (finite_number(threshold) and threshold >= 0):  # type: ignore[operator]
        raise ConfigurationError(
            "VirtualClock.autojump_threshold must be a finite number of seconds >= 0, got "
            f"{_number_or_type(threshold)}"
        )


def _number_or_type(value: object) -> str:
    """A number as it is, anything else only by its type (a misplaced option may be a secret)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return shown(value)
    return type(value).__name__


def _check_loop(loop: asyncio.AbstractEventLoop) -> None:
    if getattr(loop, "_ready", None) is None:
        raise RuntimeError("VirtualClock autojump needs the standard asyncio event loop")


#: The attribute of a loop holding its :class:`_LoopClocks` (it lives and dies with the loop).
_GROUP_ATTR = "_le_transport_virtual_clocks"


class _LoopClocks:
    """The VirtualClocks on one event loop, the one task that jumps them, and the jobs the
    loop gave its thread pool that are still running.

    One driver per loop: each clock's own driver, spinning on ``sleep(0)``, always saw the
    other's step in the loop's ready queue, so two clocks on a loop never jumped (a livelock).
    """

    __slots__ = ("clocks", "jobs", "task", "waiter")

    def __init__(self) -> None:
        # Held weakly; a list, not a WeakSet: the driver reads it at every turn of the loop.
        self.clocks: list[weakref.ref[VirtualClock]] = []
        # Futures of loop.run_in_executor not done yet: work the ready queue does not show.
        self.jobs: set[asyncio.Future[Any]] = set()
        self.task: asyncio.Task[None] | None = None
        # Set while the driver waits for the pool: a sleep that ends without it wakes it.
        self.waiter: asyncio.Future[None] | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _LoopClocks | None:
        """The loop's clocks, made (and its ``run_in_executor`` wrapped) on the first call;
        None for a loop that is not the standard one (autojump refuses it)."""
        group: _LoopClocks | None = getattr(loop, _GROUP_ATTR, None)
        if group is not None:
            return group
        if getattr(loop, "_ready", None) is None:
            return None
        group = cls()
        jobs = group.jobs
        original = loop.run_in_executor

        def finished(fut: asyncio.Future[Any]) -> None:
            jobs.discard(fut)
            group.poke()

        @functools.wraps(original)
        def run_in_executor(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            fut = original(executor, func, *args)
            jobs.add(fut)
            fut.add_done_callback(finished)
            return fut

        try:
            setattr(loop, _GROUP_ATTR, group)
            loop.run_in_executor = run_in_executor  # type: ignore[method-assign,assignment]
        except AttributeError:  # pragma: no cover - a loop without instance attributes
            return None
        return group

    def join(self, clock: VirtualClock) -> None:
        self.clocks = [ref for ref in self.clocks if ref() is not None]
        self.clocks.append(weakref.ref(clock))

    def leave(self, clock: VirtualClock) -> None:
        self.clocks = [ref for ref in self.clocks if ref() not in (None, clock)]

    def driven(self) -> list[VirtualClock]:
        """The clocks with autojump on."""
        return [c for c in (ref() for ref in self.clocks) if c is not None and c._autojump]

    def pending(self) -> bool:
        """Whether a clock with autojump on has a finite sleep pending."""
        for ref in self.clocks:
            clock = ref()
            if clock is not None and clock._autojump and clock._next_deadline() is not None:
                return True
        return False

    def poke(self) -> None:
        """A job of the pool ended, or a sleep ended without the driver (cancelled, or time
        advanced by hand): the driver, if it waits for the pool, looks again (else it would
        outlive the sleeps it jumps)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the loop's driver unless it is running."""
        if self.task is None or self.task.done():
            self.task = loop.create_task(_drive(self, loop), name="le_transport.VirtualClock")

    def plan(self) -> tuple[int, float]:
        """The idle rounds and real seconds of quiet a jump waits for: the most any clock
        with autojump on and a sleep pending asks for (an idle clock's threshold slowed every
        jump of the others)."""
        rounds, threshold = 1, 0.0
        for clock in self.driven():
            if clock._next_deadline() is None:
                continue
            rounds = max(rounds, clock._idle_rounds)
            threshold = max(threshold, clock._threshold)
        return rounds, threshold

    def jump(self) -> None:
        """Move every clock with autojump on by the same amount: to the earliest deadline
        among them (each clock whose deadline that is lands on it exactly)."""
        clocks = self.driven()
        step: float | None = None
        for clock in clocks:
            deadline = clock._next_deadline()
            if deadline is not None and (step is None or deadline - clock._now < step):
                step = deadline - clock._now
        if step is None:
            return
        for clock in clocks:
            deadline = clock._next_deadline()
            if deadline is not None and deadline - clock._now <= step:
                clock._jump_to(deadline)
            elif math.isfinite(clock._now + step):
                clock._jump_to(clock._now + step)


async def _drive(group: _LoopClocks, loop: asyncio.AbstractEventLoop) -> None:
    """Jump the loop's clocks whenever the loop is idle; return once no clock with autojump
    on has a finite sleep pending."""
    ready: Any = loop._ready  # type: ignore[attr-defined]  # checked by the first sleep
    jobs = group.jobs
    idle, rounds, threshold = 0, 1, 0.0
    while True:
        await asyncio.sleep(0)
        if not group.pending():
            return
        if ready:  # something else to run
            idle = 0
            continue
        if jobs:
            # Wait for the pool without spinning (time cannot move while a job runs).
            idle = 0
            group.waiter = waiter = loop.create_future()
            try:
                await waiter  # a job ended, or a sleep without the driver
            finally:
                group.waiter = None
            if not group.pending():
                return
            continue
        idle += 1
        if idle == 1:
            rounds, threshold = group.plan()
        if idle < rounds:
            continue
        idle = 0
        if threshold and (not await _quiet_for(loop, group, threshold) or ready or jobs):
            # Not quiet for long enough (or no sleep left, and a new one may have come since):
            # asked again from the top, the new sleep's plan included.
            continue
        group.jump()


async def _quiet_for(loop: asyncio.AbstractEventLoop, group: _LoopClocks, seconds: float) -> bool:
    """Return True once the loop has been quiet for ``seconds`` of real time, False once no
    sleep is left to jump to (its last ended without the driver): no I/O event (a
    thread's ``call_soon_threadsafe`` is one), no callback ready at a turn of the loop, no job
    running in its pool. Each starts the count again, as trio's ``autojump_threshold`` does;
    before, activity between two checks 10 ms apart went unseen."""
    ready: Any = loop._ready  # type: ignore[attr-defined]
    last = time.monotonic()

    def woke() -> None:
        nonlocal last
        last = time.monotonic()

    # The loop's turns, seen at its selector (only while this waits: no cost otherwise).
    selector: Any = getattr(loop, "_selector", None)
    own = getattr(selector, "__dict__", {}).get("select")
    original = getattr(selector, "select", None)
    hooked = False
    if original is not None:

        def select(timeout: float | None = None) -> Any:
            if ready:  # a callback ran and scheduled another (this wait's checks do not)
                woke()
            events = original(timeout)
            if events:
                woke()
            return events

        try:
            selector.select = select
            hooked = True
        except AttributeError:  # pragma: no cover - a selector without instance attributes
            pass
    done: asyncio.Future[bool] = loop.create_future()
    slice_ = min(seconds / 4, 0.01)
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        if not group.pending():
            # The last sleep ended without the driver (cancelled, advanced by hand): the
            # driver ends with it, not a threshold later (or never, on a busy loop).
            if not done.done():
                done.set_result(False)
            return
        now = time.monotonic()
        if ready or group.jobs:
            woke()
            now = last
        quiet = now - last
        if quiet >= seconds:
            if not done.done():
                done.set_result(True)
            return
        handle = loop.call_later(min(slice_, seconds - quiet), check)

    handle = loop.call_later(slice_, check)
    try:
        return await done
    finally:
        if handle is not None:
            handle.cancel()
        if hooked:
            if own is None:
                del selector.select
            else:
                selector.select = own
