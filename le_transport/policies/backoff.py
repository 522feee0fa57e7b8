"""The outer recovery schedule: exponential backoff for re-login and reconnect.

After the request schedule gives up, the guide asks for an outer retry (re-login, re-open the
socket) "at a longer interval than the previous one ... or exponential backoff", never so short
that it keeps an overloaded service down. :class:`BackoffPolicy` is that schedule as a pure
value: :meth:`BackoffPolicy.delay` maps an attempt number and a random draw to a pause, and
:meth:`BackoffPolicy.next_delay` adds the attempt and deadline limits.

The formula is one line (``start * factor ** (n - 1)``, capped, then jittered, where ``start``
is ``first``, or the floor if that is higher), so we write it here rather than take the
``backoff`` package's generators: they are stateful iterators with no floor and no deadline,
and the package is unmaintained.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import attrs

from ..errors import ConfigurationError
from ._validate import (
    attempt_number,
    check_scale,
    clamp_draw,
    finite_number,
    fraction,
    non_negative,
    optional_positive,
    positive,
    shown,
)
from .retry import GUIDE_5XX_PAUSES

__all__ = [
    "RECONNECT_CAP",
    "RECONNECT_FIRST_DELAY",
    "RELOGIN_CAP",
    "RELOGIN_FIRST_DELAY",
    "BackoffPolicy",
]

#: LivePerson's retry page: re-login "every 2 minutes, or exponential 2, 4, 8 ... minutes".
RELOGIN_FIRST_DELAY = 120.0
#: Where the re-login backoff stops growing: 16 minutes.
RELOGIN_CAP = 960.0
#: LivePerson's "wait a short period, then reconnect": about a second.
RECONNECT_FIRST_DELAY = 1.0
#: LivePerson's "every 2 minutes" is the longest a dropped socket waits between tries.
RECONNECT_CAP = 120.0


def _max_attempts(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"BackoffPolicy.max_attempts must be None or an int >= 1, got {shown(value)}"
        )


#: How many growth steps :meth:`BackoffPolicy.base_delay` multiplies one by one; past them,
#: one power covers the rest.
_STEPPED = 64


def _float_bits(value: float) -> int:
    """A positive float's bits as an int: positive floats sort as their bits do, and the
    next float up is one more."""
    bits: int = struct.unpack("<q", struct.pack("<d", value))[0]
    return bits


def _bits_float(bits: int) -> float:
    """The float whose bits are ``bits`` (the inverse of :func:`_float_bits`)."""
    value: float = struct.unpack("<d", struct.pack("<q", bits))[0]
    return value


def _grown(delay: float, factor: float, steps: int, cap: float) -> float:
    """``delay`` grown ``steps`` more times by ``factor``, capped, in O(1): ``delay * factor
    ** steps``, and never fewer than ``steps`` floats above ``delay`` (the step-by-step
    growth's "at least one float up", for delays too small to grow by a factor)."""
    least = _float_bits(delay) + steps
    if least >= _float_bits(cap):
        return cap  # also bounds ``steps`` below 2**63 for the powers below
    growth = steps * math.log2(factor)  # the power's binary exponent
    if growth > math.log2(cap) - math.log2(delay) + 1.0:
        return cap  # past the cap by more than twice over: no rounding brings it back
    # At most 2099 (float spans 2**-1074 to 2**1024): the power in parts of at most 2**1000,
    # so that none overflows where the product does not (a subnormal delay times 1.5**2000).
    # Each part's exponent is cut where float holds it exactly: float ** int converts the
    # int to a float, which past 2**53 lost the low bits (consecutive attempts, one delay).
    grown = delay
    left = steps
    for parts in range(max(1, math.ceil(growth / 1000.0)), 0, -1):
        part = left // parts
        left -= part
        shift = max(0, part.bit_length() - 53)
        high = (part >> shift) << shift
        try:
            grown = grown * factor**high * factor ** (part - high)
        except OverflowError:
            return cap
    if grown >= cap:
        return cap
    return max(grown, _bits_float(least))


@attrs.frozen
class BackoffPolicy:
    """Exponential backoff: ``first``, ``first * factor``, ... up to ``cap``, jittered.

    - Un-jittered delays (:meth:`base_delay`) strictly grow until they reach ``cap``: they
      start from ``max(first, floor)``, ``start * factor ** (n - 1)`` capped, each at least
      one float longer than the one before (a subnormal ``first``). Any attempt number costs
      the same few operations, however close ``factor`` is to 1. The one factor that grows a
      delay by no more than float's rounding, ``1 + 2**-52``, gives delays that never shrink
      but may repeat one.
    - ``first`` and ``cap``: finite numbers of seconds > 0, ``cap >= first``; ``factor``: a
      finite number > 1.
    - ``jitter`` spreads each delay uniformly within ``±jitter`` of its value, so a fleet
      dropped at once does not come back at the same instant (default ±20%); a fraction in
      [0, 1). The longest jittered delay, ``cap * (1 + jitter)``, must be finite: a ``cap``
      within a jitter of float's range (1.7e308) made delays infinite.
    - ``floor``: no delay, jittered or not, is ever shorter. For re-login it is the request
      schedule's last pause (15 s): the guide's rule that each outer retry is longer than the
      one before it. A floor above ``first`` is where the growth starts (``relogin(first=5)``:
      15, 30, 60 s ...), not a plateau the first delays sit on (it gave 15, 15, 20 s: outer
      retries no longer than the one before).
    - ``max_attempts`` (None: unlimited) and ``deadline`` (seconds since the first failure;
      None: none) end the loop: :meth:`next_delay` then returns None.
    """

    first: float = attrs.field(default=RELOGIN_FIRST_DELAY, validator=positive)
    factor: float = attrs.field(default=2.0)
    cap: float = attrs.field(default=RELOGIN_CAP, validator=positive)
    jitter: float = attrs.field(default=0.2, validator=fraction)
    floor: float = attrs.field(default=GUIDE_5XX_PAUSES[-1], validator=non_negative)
    max_attempts: int | None = attrs.field(default=None, validator=_max_attempts)
    deadline: float | None = attrs.field(default=None, validator=optional_positive)

    @factor.validator
    def _check_factor(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not (finite_number(value) and value > 1):
            raise ConfigurationError(
                f"BackoffPolicy.factor must be a finite number > 1 so that delays grow, "
                f"got {shown(value)}"
            )

    def __attrs_post_init__(self) -> None:
        if self.cap < self.first:
            raise ConfigurationError(
                f"BackoffPolicy.cap ({self.cap!r}) must be >= first ({self.first!r})"
            )
        if self.floor > self.cap:
            # Otherwise the floor would silently push every delay past the cap.
            raise ConfigurationError(
                f"BackoffPolicy.floor ({self.floor!r}) must be <= cap ({self.cap!r})"
            )
        if not math.isfinite(self.cap * (1.0 + self.jitter)):
            raise ConfigurationError(
                f"BackoffPolicy.cap ({self.cap!r}) with jitter ({self.jitter!r}) must keep the "
                f"longest delay, cap * (1 + jitter), finite"
            )

    @classmethod
    def relogin(cls, **overrides: object) -> BackoffPolicy:
        """LivePerson's re-login schedule: 2, 4, 8, 16 min (capped), ±20%, never under 15 s
        (a ``first`` below 15 s starts from 15 s and doubles from there)."""
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def reconnect(cls, **overrides: object) -> BackoffPolicy:
        """The socket reconnect schedule: about 1 s first, doubling, capped at 2 min, ±20%."""
        params: dict[str, object] = {
            "first": RECONNECT_FIRST_DELAY,
            "cap": RECONNECT_CAP,
            "floor": 0.0,
        }
        params.update(overrides)
        return cls(**params)  # type: ignore[arg-type]

    def scaled(self, factor: float) -> BackoffPolicy:
        """The same policy with every duration multiplied by ``factor`` (for demos and tests)."""
        factor = check_scale(factor)
        return attrs.evolve(
            self,
            first=self.first * factor,
            cap=self.cap * factor,
            floor=self.floor * factor,
            deadline=None if self.deadline is None else self.deadline * factor,
        )

    def base_delay(self, attempt: int) -> float:
        """The un-jittered delay before outer attempt ``attempt`` (an int, 1-based, or any
        integer type with ``__index__``, such as ``numpy.int64``; a bool, a float, a str or
        None is a :class:`ConfigurationError`, as for :meth:`delay`, :meth:`bounds` and
        :meth:`next_delay`)."""
        if type(attempt) is not int:
            # A str or None failed on the comparison below with a TypeError, a float in range(),
            # and True passed as attempt 1; a numpy.int64 was refused.
            attempt = attempt_number("BackoffPolicy.base_delay", attempt)
        if attempt < 1:
            raise ConfigurationError(f"attempt is 1-based, got {attempt}")
        # Multiply step by step for the first attempts (exactly the products they always
        # were), then in one power from there: stepping all the way, a factor a hair above 1
        # (1.0000001) took ~10**7 steps from 120 s to a 960 s cap, and a huge attempt number
        # with a factor of 1 + 2**-52 never ended. The floor is where the growth starts (it is
        # at most the cap), so each delay below the cap is longer than the one before it.
        delay = max(self.first, self.floor)
        for _ in range(min(attempt - 1, _STEPPED)):
            grown = delay * self.factor
            if grown <= delay:
                # A subnormal delay (5e-324 s) times a factor under 1.5 rounds back to itself:
                # the delays never grew. One float up, until they are long enough to grow.
                grown = math.nextafter(delay, math.inf)
            delay = grown
            if delay >= self.cap:
                return self.cap
        left = attempt - 1 - _STEPPED
        if left <= 0:
            return min(delay, self.cap)
        return _grown(delay, self.factor, left, self.cap)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The lowest and highest delay :meth:`delay` can return for ``attempt``."""
        base = self.base_delay(attempt)
        return (
            max(base * (1.0 - self.jitter), self.floor),
            max(base * (1.0 + self.jitter), self.floor),
        )

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """The jittered delay before outer attempt ``attempt``; ``rand`` is uniform in [0, 1)."""
        base = self.base_delay(attempt)
        rand = clamp_draw(rand)  # a draw outside [0, 1], or NaN, must not escape the bounds
        return max(base * (1.0 + self.jitter * (2.0 * rand - 1.0)), self.floor)

    def next_delay(self, attempt: int, elapsed: float, rand: float = 0.5) -> float | None:
        """The delay before outer attempt ``attempt``, or None when the loop must stop.

        It stops when ``attempt`` passes ``max_attempts`` or when the delay would end past
        ``deadline`` (``elapsed`` is the time since the first failure).
        """
        if type(attempt) is not int:
            # Before the comparison: a str or None failed on it with a TypeError.
            attempt = attempt_number("BackoffPolicy.next_delay", attempt)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        delay = self.delay(attempt, rand)
        if self.deadline is not None and elapsed + delay > self.deadline:
            return None
        return delay
