"""The request retry schedule: which attempt to retry and how long to pause first.

Default is exactly LivePerson's guide (Step 3): a 5xx is retried 3 times, pausing 5, 10 and 15 s.
:class:`RetryPolicy` is a frozen value; :meth:`RetryPolicy.decide` takes the facts of the attempt
that just ended (and a random draw, for optional jitter) and returns a :class:`Decision`. It does
no I/O and reads no clock: the middleware acts on its answer.
"""

from __future__ import annotations

import enum
import itertools
import math
import sys
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

import attrs

from ..errors import ConfigurationError
from ._validate import (
    attempt_number,
    check_scale,
    clamp_draw,
    finite_number,
    fraction,
    instance_of,
    non_negative,
    optional_positive,
    shown,
)
from .classify import Classifier, Outcome, Verdict

__all__ = [
    "GUIDE_5XX_PAUSES",
    "LOGIN_RATE_LIMIT_FLOOR",
    "RATE_LIMIT_FLOOR",
    "Action",
    "Decision",
    "RetryPolicy",
]

#: The guide's Step 3: "Retry 3 times with 5, 10, 15-second pause between retries".
GUIDE_5XX_PAUSES: tuple[float, ...] = (5.0, 10.0, 15.0)
#: LivePerson's retry page: after a 429, "wait at least 1 s before retrying".
RATE_LIMIT_FLOOR = 1.0
#: The Login Service's 429: "too many logins; retry after 5 s".
LOGIN_RATE_LIMIT_FLOOR = 5.0
#: The longest pause a ``Retry-After`` header may ask for by default.
DEFAULT_RETRY_AFTER_CEILING = 60.0
#: Default per-attempt timeout. LiveEngage REST calls answer in well under a second when healthy.
DEFAULT_ATTEMPT_TIMEOUT = 30.0


class Action(enum.Enum):
    """What to do after an attempt."""

    #: The outcome is a success: return it.
    SUCCEED = "succeed"
    #: Pause, then make another attempt.
    RETRY = "retry"
    #: Retryable, but the schedule (or the deadline) is spent: give up.
    GIVE_UP = "give_up"
    #: Not retryable (4xx, 451, an unsafe repeat): fail at once.
    FAIL = "fail"


@attrs.frozen
class Decision:
    """A :class:`RetryPolicy`'s answer: an action, the pause before the next attempt, and why."""

    action: Action
    pause: float = 0.0
    reason: str = ""


#: The longest pause a Retry-After spread by the jitter may become: the largest finite float.
_LONGEST = sys.float_info.max

#: The most pauses a schedule may hold (a retry after each).
MAX_PAUSES = 10_000


def _pauses(value: object) -> tuple[float, ...]:
    # Any iterable in order (a list, a tuple, a range, a generator, map(float, ...)), not one
    # without an order: a set ({5, 10, 15, 40}) was taken in its hash order (the first retry
    # waited 40 s) and a dict gave its keys. Only a number or the type is shown: a str may be
    # anything.
    if type(value) is not tuple and (
        isinstance(value, (str, bytes, bytearray, AbstractSet, Mapping))
        or not isinstance(value, Iterable)
    ):
        raise ConfigurationError(
            "RetryPolicy.pauses must be seconds in order (a list, a tuple or another ordered "
            "iterable; not a set or a mapping), got "
            f"{shown(value) if isinstance(value, (int, float)) else type(value).__name__}"
        )
    # Read no further than a schedule can be long: an endless iterable (itertools.repeat)
    # filled memory.
    items = tuple(itertools.islice(value, MAX_PAUSES + 1))
    if len(items) > MAX_PAUSES:
        raise ConfigurationError(
            f"RetryPolicy.pauses must hold at most {MAX_PAUSES:,} pauses, got more"
        )
    for p in items:
        # finite_number, not p < inf: an int past float's range (10**400) compares below inf,
        # and float() of it then raised OverflowError.
        if not (finite_number(p) and p >= 0):
            raise ConfigurationError(
                f"RetryPolicy.pauses must hold finite numbers >= 0, "
                f"got {shown(p)} in {shown(items)}"
            )
    return tuple(float(p) for p in items)


def _check_outcome_arg(method: str, outcome: object) -> None:
    """``outcome`` must be an :class:`Outcome` (a subclass will do)."""
    if not isinstance(outcome, Outcome):
        raise ConfigurationError(
            f"RetryPolicy.{method}: outcome must be an Outcome (Outcome.response(503), "
            f"Outcome.failure(...)), got {type(outcome).__name__}"
        )


@attrs.frozen
class RetryPolicy:
    """The request retry schedule.

    - ``pauses``: the pause before each retry, in order (a list, a tuple, any ordered
      iterable: a set or a mapping is refused, it has no order); its length is the number of
      retries. Default
      ``(5, 10, 15)``; ``RetryPolicy(pauses=(0.05, 0.1, 0.15))`` is the same schedule scaled.
      Each a finite number of seconds >= 0 (an int past float's range is refused).
    - ``jitter``: a fraction in [0, 1); each pause is drawn uniformly within ``±jitter`` of
      its value. Off (0) by default, so the schedule is exactly the guide's. The longest
      jittered pause, ``max(pauses) * (1 + jitter)``, must be finite: a pause within a jitter
      of float's range (1.7e308) made the pause infinite.
    - ``rate_limit_floor``: a 429 is never retried sooner than this (1 s; 5 s for login).
    - ``retry_after_ceiling``: a ``Retry-After`` longer than the scheduled pause lengthens it,
      up to this ceiling; it never shortens a pause. With ``jitter`` on, such a pause is
      spread above the ask by up to ``jitter`` of it, so that clients told the same
      ``Retry-After`` do not all come back at one instant (never past the largest finite
      float).
    - ``attempt_timeout``: each attempt is cancelled after this many seconds (None: no limit).
    - ``deadline``: the whole call, pauses included, is cancelled after this many seconds.
    - ``classifier``: what is retryable (see :class:`Classifier`).
    """

    pauses: tuple[float, ...] = attrs.field(default=GUIDE_5XX_PAUSES, converter=_pauses)
    jitter: float = attrs.field(default=0.0, validator=fraction)
    rate_limit_floor: float = attrs.field(default=RATE_LIMIT_FLOOR, validator=non_negative)
    retry_after_ceiling: float = attrs.field(
        default=DEFAULT_RETRY_AFTER_CEILING, validator=non_negative
    )
    attempt_timeout: float | None = attrs.field(
        default=DEFAULT_ATTEMPT_TIMEOUT, validator=optional_positive
    )
    deadline: float | None = attrs.field(default=None, validator=optional_positive)
    classifier: Classifier = attrs.field(
        factory=Classifier, validator=instance_of(Classifier, "a Classifier")
    )

    def __attrs_post_init__(self) -> None:
        # Only with jitter on: without it a pause is never multiplied, and the engine evolves
        # a policy per call that overrides its deadline, so the default pays one test. (max()
        # without default=: the keyword alone cost more than the rest of the check.)
        if self.jitter and self.pauses and not math.isfinite(max(self.pauses) * (1 + self.jitter)):
            raise ConfigurationError(
                f"RetryPolicy.pauses with jitter ({self.jitter!r}) must keep the longest "
                f"pause, max(pauses) * (1 + jitter), finite, got {max(self.pauses)!r}"
            )

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per pause."""
        return len(self.pauses) + 1

    @property
    def last_pause(self) -> float:
        """The longest scheduled pause; the outer schedule never pauses less than this."""
        return max(self.pauses, default=0.0)

    def scaled(self, factor: float) -> RetryPolicy:
        """The same policy with every duration multiplied by ``factor`` (for demos and tests)."""
        factor = check_scale(factor)
        return attrs.evolve(
            self,
            pauses=tuple(p * factor for p in self.pauses),
            rate_limit_floor=self.rate_limit_floor * factor,
            retry_after_ceiling=self.retry_after_ceiling * factor,
            attempt_timeout=None if self.attempt_timeout is None else self.attempt_timeout * factor,
            deadline=None if self.deadline is None else self.deadline * factor,
        )

    def pause_for(self, attempt: int, outcome: Outcome, rand: float = 0.5) -> float:
        """The pause after failed attempt number ``attempt`` (1-based), before the next one.

        ``rand`` is a uniform draw in [0, 1) used only when ``jitter`` is on. A ``Retry-After``
        (capped at ``retry_after_ceiling``) longer than the schedule's pause replaces it; with
        ``jitter`` on, lengthened by up to ``jitter`` of itself, never shortened.
        """
        if type(attempt) is not int:
            # Any integer type (an IntEnum, a numpy.int64) will do; a bool, None (which failed
            # on the comparison with a TypeError) or a float will not.
            attempt = attempt_number("RetryPolicy.pause_for", attempt)
        if not 1 <= attempt <= len(self.pauses):
            raise ConfigurationError(
                f"attempt {attempt} has no pause after it: the schedule has {len(self.pauses)}"
            )
        if outcome.__class__ is not Outcome:
            _check_outcome_arg("pause_for", outcome)
        pause = self.pauses[attempt - 1]
        if self.jitter:
            rand = clamp_draw(rand)  # a draw outside [0, 1], or NaN, must not escape the bounds
            pause *= 1.0 + self.jitter * (2.0 * rand - 1.0)
        if outcome.status == 429:
            pause = max(pause, self.rate_limit_floor)
        if outcome.retry_after is not None:
            asked = min(outcome.retry_after, self.retry_after_ceiling)
            if asked > pause:
                # Never sooner than the server asked; with jitter on, later by up to the same
                # share, so that clients refused together with one Retry-After do not all come
                # back at the instant it names (jitter off: exactly the ask, as chosen).
                # (Never past float's range: an ask near it, within a ceiling as high, was
                # spread to an infinite pause.)
                pause = min(asked * (1.0 + self.jitter * rand), _LONGEST) if self.jitter else asked
        return pause

    def decide(
        self,
        attempt: int,
        outcome: Outcome,
        *,
        idempotent: bool,
        elapsed: float = 0.0,
        rand: float = 0.5,
    ) -> Decision:
        """What to do after attempt number ``attempt`` (1-based) ended with ``outcome``.

        ``elapsed`` is the time since the call started; a pause that would end past
        ``deadline`` gives up now instead of sleeping for nothing. ``attempt`` must be an int
        (or any integer type with ``__index__``, such as ``numpy.int64``; not a bool) and
        ``outcome`` an :class:`Outcome`, else a :class:`ConfigurationError`.
        """
        # Two tests on identity and type: this runs once per failed attempt (a success never
        # asks), and anything else is told apart off that path.
        if type(attempt) is not int or outcome.__class__ is not Outcome:
            if type(attempt) is not int:
                attempt = attempt_number("RetryPolicy.decide", attempt)
            _check_outcome_arg("decide", outcome)
        verdict = self.classifier.classify(outcome)
        if verdict is Verdict.SUCCESS:
            return Decision(Action.SUCCEED, reason="success")
        if verdict is Verdict.FAIL:
            return Decision(Action.FAIL, reason=f"{outcome.describe()} is not retryable")
        if not self.classifier.retryable_for(outcome, idempotent=idempotent):
            return Decision(
                Action.FAIL,
                reason=f"{outcome.describe()} on a request that is not idempotent",
            )
        if attempt >= self.max_attempts:
            return Decision(Action.GIVE_UP, reason=f"retries exhausted after {attempt} attempts")
        pause = self.pause_for(attempt, outcome, rand)
        if self.deadline is not None and elapsed + pause >= self.deadline:
            return Decision(
                Action.GIVE_UP,
                pause=pause,
                reason=f"a {pause:g} s pause would pass the {self.deadline:g} s deadline",
            )
        return Decision(Action.RETRY, pause=pause, reason=f"{outcome.describe()} is retryable")
