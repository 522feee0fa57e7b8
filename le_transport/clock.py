"""Injected time: the :class:`Clock` protocol, the real clock, and clock-driven timeouts.

Nothing in le_transport reads time or sleeps except through a :class:`Clock`, so that tests can
run the guide's 5/10/15 s schedule on :class:`le_transport.testing.VirtualClock` in
microseconds. :func:`timeout_after` is ``asyncio.timeout`` driven by any clock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

from ._shown import error_text
from .errors import ConfigurationError

__all__ = ["Clock", "RealClock", "next_turn", "stall_timeout", "timeout_after", "wall_of"]

_log = logging.getLogger("le_transport.clock")


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time and of sleeping. Seconds, as floats.

    A clock may also give a date (not required, so not part of the protocol's check): a
    ``wall()`` method, Unix seconds that move with :meth:`now`, which the clock's class vouches
    for with a class attribute ``wall_is_epoch = True``. Where a wall clock is needed (a JWT's
    ``iat``/``exp``, an OAuth1 ``oauth_timestamp``, a ``Retry-After`` HTTP-date), the engine,
    its providers and the simulator read it from such a clock (:func:`wall_of`), so that
    everything on one clock agrees on the date: :class:`RealClock`'s is :func:`time.time`,
    :class:`~le_transport.testing.VirtualClock`'s its own virtual date. A ``wall`` that a class
    does not vouch for is not read (it may mean something else: a ``datetime``, milliseconds);
    such a clock's date is :func:`time.time`.
    """

    def now(self) -> float:
        """The current time, in seconds, on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` have passed on this clock."""
        ...


class RealClock:
    """The event loop's own time: ``time.monotonic`` and ``asyncio.sleep``."""

    __slots__ = ()

    #: Unix seconds (:func:`time.time`): the wall clock that goes with this clock (see
    #: :class:`Clock`).
    wall = staticmethod(time.time)
    wall_is_epoch = True

    def now(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running loop (:class:`ValueError` for NaN, as on the virtual clock: a
        NaN pause would otherwise be no pause at all)."""
        if seconds != seconds:
            raise ValueError("RealClock.sleep: seconds is NaN")
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "RealClock()"


#: Timeouts on the real clock share one loop timer per slot this many seconds long, so a timeout
#: fires at most this late. Arming and cancelling a loop timer per timeout (two per request:
#: attempt timeout and deadline) cost a call more than the rest of the retry middleware on a
#: busy loop, whose timer heap compares its entries in Python (benchmarks/README.md).
_SLOT = 0.01
#: Where a real-clock timeout too long for the wheel's arithmetic is armed (about 31 years).
_NEVER = 1e9


async def next_turn() -> None:
    """Give the event loop one turn and come back: ordering, not time.

    What ``asyncio.sleep(0)`` does, named so that the one place the library yields a bare turn
    is not mistaken for (or grow into) policy timing, which always goes through a
    :class:`Clock`. Virtual time does not move across it.
    """
    await asyncio.sleep(0)


def wall_of(clock: object) -> Callable[[], float]:
    """The wall clock (Unix seconds) that goes with ``clock``: its ``wall`` when its class
    vouches for it (``wall_is_epoch = True``: :class:`RealClock`, the testing ``VirtualClock``),
    else :func:`time.time`."""
    wall = getattr(clock, "wall", None)
    if getattr(type(clock), "wall_is_epoch", False) is True and callable(wall):
        return wall  # type: ignore[no-any-return]
    return time.time


class _WheelTimer:
    """What the real clock's wheel cancels: the task that armed it, when its slot expires.

    A slotted base, armed for one block at a time with :meth:`_arm_real` and disarmed with
    :meth:`_disarm`. :class:`_ClockTimeout` is one; the retry middleware's call is another, so
    that an attempt's timeout on the real clock allocates nothing of its own
    (benchmarks/README.md). Cancellations are counted as ``asyncio.timeout`` counts them: when
    two nested timeouts expire at the same instant only the outer one claims its cancellation,
    and a cancellation from outside is never claimed.
    """

    __slots__ = ("_cancelling", "_expired", "_slot", "_task")

    # Set by the subclass's __init__ (``_slot`` to None, ``_expired`` to False) and by arming.
    _cancelling: int
    _expired: bool
    #: The wheel slot's set this timer is in, while armed.
    _slot: set[_WheelTimer] | None
    _task: asyncio.Task[object] | None

    def _take_task(self) -> asyncio.AbstractEventLoop:
        """Note the current task (the one to cancel) and its cancel count; the running loop."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - only outside a task
            raise RuntimeError("timeout_after must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        return loop

    def _arm_real(self, seconds: float) -> None:
        """Arm on the running loop's wheel: cancel the current task in ``seconds`` (>= 0)."""
        loop = self._take_task()
        last = _LAST_WHEEL
        wheel = last[1] if last is not None and last[0]() is loop else _wheel_of(loop)
        try:
            slot = math.ceil((loop.time() + seconds) / _SLOT)
        except OverflowError:
            # A float near its maximum ("no limit" written as a number) overflows the slot's
            # arithmetic; a timer 31 years away is the same as none. (A try costs nothing
            # until it catches: a comparison would cost every attempt.)
            slot = math.ceil((loop.time() + _NEVER) / _SLOT)
        members = wheel._slots.get(slot)
        if members is None:
            members = wheel._add(loop, slot)
        members.add(self)
        self._slot = members

    def _fire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    def _disarm(self, exc_type: type[BaseException] | None) -> bool:
        """Out of the wheel; whether the block's ``exc_type`` is this timer's cancellation (then
        taken back). Call it once per arming, with what the block ended with."""
        slot = self._slot
        if slot is not None:
            # A slot already expired is out of the wheel: discarding from it is harmless.
            slot.discard(self)
            self._slot = None
        if not self._expired or self._task is None:
            return False
        return self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError


#: Slots a wheel holds before it looks for empty ones to drop. A slot stays until its time comes
#: even when every timer in it ended early (most do: a call succeeds long before its timeout),
#: so that calls a few milliseconds apart share its loop timer rather than each arming and
#: cancelling one; with long timeouts (an hour's deadline) those empty slots would pile up, one
#: per 10 ms, for as long as the timeout. Past this many, the empty ones go with their timers.
_SWEEP_AT = 1024


class _Wheel:
    """One event loop's real-clock timers, grouped by the slot they expire in (one loop timer per
    slot)."""

    __slots__ = ("_handles", "_slots", "_sweep_at")

    def __init__(self) -> None:
        self._slots: dict[int, set[_WheelTimer]] = {}
        #: Each slot's loop timer, to cancel it when the slot is dropped empty, held weakly: a
        #: loop timer holds its loop, and a wheel holding one would keep its loop alive through
        #: ``_WHEELS`` (whose key it is) after the loop closed, one loop and wheel per
        #: ``asyncio.run()``. A loop keeps its pending timers itself, so a live slot's is there
        #: to cancel; a closed loop drops them, and then nothing of the wheel holds the loop.
        self._handles: dict[int, Callable[[], asyncio.TimerHandle | None]] = {}
        #: How many slots make the next new one sweep the empty ones out first.
        self._sweep_at = _SWEEP_AT

    def _add(self, loop: asyncio.AbstractEventLoop, slot: int) -> set[_WheelTimer]:
        """A new slot's set, with its loop timer (a slot not yet in the wheel)."""
        if len(self._slots) >= self._sweep_at:
            self._sweep()
        members: set[_WheelTimer] = set()
        self._slots[slot] = members
        self._handles[slot] = _weakly(loop.call_at(slot * _SLOT, self._expire, slot))
        return members

    def _sweep(self) -> None:
        """Drop the slots whose timers all ended, and cancel their loop timers."""
        empty = [slot for slot, members in self._slots.items() if not members]
        for slot in empty:
            del self._slots[slot]
            handle = self._handles.pop(slot)()
            if handle is not None:
                handle.cancel()
        # Amortised: a wheel of mostly live slots is not walked again at its next new slot.
        self._sweep_at = max(_SWEEP_AT, 2 * len(self._slots))

    def _expire(self, slot: int) -> None:
        self._handles.pop(slot, None)
        for timer in self._slots.pop(slot, ()):
            timer._fire()


def _weakly(handle: asyncio.TimerHandle) -> Callable[[], asyncio.TimerHandle | None]:
    """A weak reference to ``handle``, or, for a loop whose timers take none, a strong one (that
    loop's closed wheels then stay until the process ends, as before)."""
    try:
        return weakref.ref(handle)
    except TypeError:  # pragma: no cover - asyncio's timers take weak references
        return lambda: handle


# Weak keys, and no wheel refers to its loop (its loop timers held weakly): a closed loop and
# its wheel go together.
_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()


#: The last loop asked for (held weakly) and its wheel: a process runs one loop nearly always,
#: and a weak-key lookup per timeout showed in the profile of a call.
_LAST_WHEEL: tuple[weakref.ref[asyncio.AbstractEventLoop], _Wheel] | None = None


def _wheel_of(loop: asyncio.AbstractEventLoop) -> _Wheel:
    global _LAST_WHEEL
    last = _LAST_WHEEL
    if last is not None and last[0]() is loop:
        return last[1]
    wheel = _WHEELS.get(loop)
    if wheel is None:
        wheel = _WHEELS[loop] = _Wheel()
    _LAST_WHEEL = (weakref.ref(loop), wheel)
    return wheel


class _ClockTimeout(_WheelTimer):
    """Cancel the current task if the block runs longer than ``seconds`` on ``clock``.

    On the real clock the timer joins the loop's wheel (no task, no loop timer of its own);
    on any other clock a watchdog task sleeps on the clock and then cancels the owner. The
    cancellation is turned into :class:`TimeoutError` on exit. Unlike a loop that only checks a
    deadline between attempts, this interrupts the attempt in flight.
    """

    __slots__ = ("_clock", "_failure", "_seconds", "_watchdog")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._task = None
        self._watchdog: asyncio.Task[None] | None = None
        #: What the clock's sleep raised, to be raised in the owner in place of a timeout.
        self._failure: Exception | None = None
        self._slot = None
        self._expired = False
        self._cancelling = 0

    @property
    def expired(self) -> bool:
        """Whether the timeout fired."""
        return self._expired

    async def __aenter__(self) -> _ClockTimeout:
        return self.start()

    def start(self) -> _ClockTimeout:
        """Arm the timeout around the code that follows, in the current task.

        ``async with`` calls this; a caller that cannot afford the two coroutines of an
        ``async with`` calls :meth:`start` and :meth:`stop` itself.
        """
        if self._seconds is None:
            return self
        if type(self._clock) is RealClock:
            # The real clock's sleep without a task around it, nor a loop timer of its own: a
            # watchdog task per timeout cost more than the rest of the retry middleware.
            self._arm_real(max(0.0, self._seconds))
            return self
        loop = self._take_task()
        # The time is up ``seconds`` after now, not after the watchdog first runs: on a clock
        # advanced by hand, time may pass before it does.
        self._watchdog = loop.create_task(
            self._watch(self._clock.now() + self._seconds), name="le_transport.timeout_after"
        )
        return self

    async def _wait(self, deadline: float) -> None:
        """Sleep on the clock until the time is up."""
        await self._clock.sleep(max(0.0, deadline - self._clock.now()))

    async def _watch(self, deadline: float) -> None:
        seconds = self._seconds
        try:
            await self._wait(deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A clock that cannot sleep cannot keep the time: the block ends now with the
            # clock's error, rather than running with no limit while the error waits unread
            # in this task (or, were it a timeout, being retried at once, for ever).
            _log.error(
                "%s.sleep(%s) failed (%s: %s): the timeout cannot be kept, so the block it "
                "guards is cancelled now and fails with that error",
                type(self._clock).__name__,
                seconds,
                type(exc).__name__,
                # A clock is the caller's object and its error's text is the caller's too:
                # shown as any other text we log, secret-named values hidden, and cut short;
                # its type's name when its __str__ fails (that killed this watcher, and the
                # block ran on with no limit).
                error_text(exc, 200),
                extra={"clock": type(self._clock).__name__, "error": type(exc).__name__},
            )
            self._failure = exc
        self._fire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self.stop(exc_type):
            raise TimeoutError(f"timed out after {self._seconds} s")
        return False

    def stop(self, exc_type: type[BaseException] | None = None) -> bool:
        """Disarm; whether the block's ``exc_type`` is this timeout's cancellation.

        Call it exactly once after :meth:`start`, with the type of the exception the block
        ended with (None when it ended normally). True means the block was cancelled by this
        timeout and nothing else: the cancellation has been taken back, and the caller should
        treat it as a timeout. A cancellation from outside is never claimed.
        """
        return self._disarm(exc_type)

    def _disarm(self, exc_type: type[BaseException] | None) -> bool:
        # Let go of the watchdog: a timeout object its caller keeps (a socket's ready_timeout,
        # in the frame that then reads for the connection's life) must not keep the finished
        # task, its coroutine and its entry in asyncio's tasks alive with it.
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and not watchdog.done():
            watchdog.cancel()
        claimed = super()._disarm(exc_type)
        failure, self._failure = self._failure, None
        if claimed and failure is not None:
            raise failure
        return claimed


class _StallTimeout(_ClockTimeout):
    """A :class:`_ClockTimeout` whose time starts over at each sign of progress: the block is
    cancelled once ``seconds`` pass with no progress (``progress()`` answers the clock time of
    the last). Always a watchdog task on the clock (it must look at the progress when its time
    is up), so it is for blocks that run once in a while, not per call. ``on_expiry``, if
    given, is called when the time is up, before the block is cancelled (not when the clock
    failed): what must happen then even if the block swallows its cancellation."""

    __slots__ = ("_on_expiry", "_progress")

    def __init__(
        self,
        clock: Clock,
        seconds: float | None,
        progress: Callable[[], float],
        on_expiry: Callable[[], object] | None = None,
    ):
        super().__init__(clock, seconds)
        self._progress = progress
        self._on_expiry = on_expiry

    def _fire(self) -> None:
        on_expiry = self._on_expiry
        try:
            if on_expiry is not None and self._failure is None:
                answered = on_expiry()
                if inspect.isawaitable(answered):
                    # An object with an async __call__ (a coroutine function is refused when
                    # the timeout is made): nothing here can await it. Closed, so that it does
                    # not warn as never awaited, and said: what it was to do was not done.
                    if inspect.iscoroutine(answered):
                        answered.close()
                    _log.error(
                        "stall_timeout: its on_expiry answered an awaitable (%s), which is not "
                        "awaited (on_expiry must do its work when called); the block is "
                        "cancelled all the same",
                        type(answered).__name__,
                        extra={"error": type(answered).__name__},
                    )
        except Exception as exc:
            # Not the block's to meet (it is cancelled all the same, below): said here, by its
            # type alone, since it ran in the watchdog where no one would read it.
            _log.error(
                "stall_timeout: its on_expiry failed (%s); the block is cancelled all the same",
                type(exc).__name__,
                extra={"error": type(exc).__name__},
            )
        finally:
            super()._fire()

    def start(self) -> _ClockTimeout:
        if self._seconds is None:
            return self
        loop = self._take_task()
        self._watchdog = loop.create_task(
            self._watch(self._clock.now() + self._seconds), name="le_transport.stall_timeout"
        )
        return self

    async def _wait(self, deadline: float) -> None:
        seconds = self._seconds
        assert seconds is not None  # start() arms no watchdog without it
        while True:
            await super()._wait(deadline)
            deadline = max(deadline, self._progress() + seconds)
            if self._clock.now() >= deadline:
                return


def stall_timeout(
    clock: Clock,
    seconds: float | None,
    progress: Callable[[], float],
    *,
    on_expiry: Callable[[], object] | None = None,
) -> _ClockTimeout:
    """``async with stall_timeout(clock, 60, progress):`` raises :class:`TimeoutError` once 60 s
    of clock time pass with no progress: ``progress()`` answers the clock time of the last
    (a frame read or written), and each one starts the 60 s over. Otherwise as
    :func:`timeout_after` (``None`` or infinite: none; NaN: a :class:`ValueError`).

    The block is only cancelled, and one that swallows its cancellation runs on: what must
    happen when the time is up all the same (end the connection the block waits on) is
    ``on_expiry``, called then, before the cancellation (an error it raises is logged, by
    type): a plain callable, which does its work when called (the watchdog awaits nothing it
    answers). One that is not callable, or a coroutine function (its coroutine would be
    dropped unawaited, nothing done at the expiry), is a
    :class:`~le_transport.errors.ConfigurationError` here, as a bad ``seconds`` is."""
    if on_expiry is not None and (
        not callable(on_expiry) or inspect.iscoroutinefunction(on_expiry)
    ):
        what = "a coroutine function" if callable(on_expiry) else type(on_expiry).__name__
        raise ConfigurationError(
            f"stall_timeout: on_expiry must be a plain callable, called when the time is up "
            f"(an async one's coroutine would never be awaited), got {what}"
        )
    checked = timeout_after(clock, seconds)
    return _StallTimeout(clock, checked._seconds, progress, on_expiry)


def timeout_after(clock: Clock, seconds: float | None) -> _ClockTimeout:
    """``async with timeout_after(clock, 5):`` raises :class:`TimeoutError` after 5 s of clock time.

    ``None`` means no timeout. The body is cancelled when the time is up, not merely checked
    afterwards. If the clock's ``sleep`` fails, the time cannot be kept: the body is cancelled
    at once and the block raises the clock's error (logged too), rather than running without
    a limit. An infinite timeout is none. A NaN one is a
    :class:`~le_transport.errors.ConfigurationError` (a :class:`ValueError`: it would end the
    block at once on one clock and never on another), and so is a ``seconds`` that is no
    number (a str, a bool; an int past float's range) or a ``clock`` that is no :class:`Clock`.
    """
    if type(clock) is not RealClock and (isinstance(clock, type) or not isinstance(clock, Clock)):
        # A class has now and sleep too, unbound: RealClock for RealClock().
        got = f"the class {clock.__name__}" if isinstance(clock, type) else type(clock).__name__
        raise ConfigurationError(f"timeout_after: clock must be a Clock (now, sleep), got {got}")
    if seconds is not None:
        if type(seconds) is not float:
            _check_seconds(seconds)
        if not seconds < math.inf:
            if seconds != seconds:
                raise ConfigurationError("timeout_after: seconds is NaN")
            seconds = None
    return _ClockTimeout(clock, seconds)


def _check_seconds(seconds: object) -> None:
    """Off the engine's path (a float): an int (not a bool) that a float can hold, or a float
    subclass, will do; anything else is refused, naming its type (a str raised TypeError on a
    comparison, and 10**400 OverflowError once armed)."""
    if isinstance(seconds, float):
        return
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        try:
            float(seconds)
        except OverflowError:
            raise ConfigurationError(
                "timeout_after: seconds must be None or a number of seconds (inf: none), "
                f"got an int of {seconds.bit_length()} bits, past a float's range"
            ) from None
        return
    raise ConfigurationError(
        "timeout_after: seconds must be None or a number of seconds (inf: none), got "
        f"{type(seconds).__name__}"
    )
