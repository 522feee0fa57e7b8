"""Classification: what an outcome of one attempt means, as a pure decision.

The I/O layer turns a response or an exception into an :class:`Outcome` (a plain value); a
:class:`Classifier` answers whether it is a success, worth retrying, or final. LivePerson's guide:
4xx is the caller's bug (never retried), 5xx is retried. Its retry page adds two exceptions:
429 is retried (never sooner than a floor), 451 ("blacklisted") is final. A final 1xx (an
interim status given as the answer: aiohttp hands back a 101 to a request that asked no
upgrade) is a protocol error of the server's, retried as a 5xx is.
"""

from __future__ import annotations

import enum
import math

import attrs

from ..errors import ConfigurationError, Repeat
from ._validate import HTTP_STATUSES, finite_number, int_codes, shown

__all__ = [
    "IDEMPOTENT_METHODS",
    "Classifier",
    "Outcome",
    "OutcomeKind",
    "Verdict",
    "repeat_verdict",
    "unprocessed",
]

#: Methods that RFC 9110 defines as idempotent: repeating them has the effect of doing them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class OutcomeKind(enum.Enum):
    """What kind of thing one attempt ended with."""

    #: An answer with a status (any status, success or not).
    RESPONSE = "response"
    #: The connection could not be made (refused, DNS, TLS): the request never left.
    CONNECT_FAILED = "connect_failed"
    #: The connection broke after the request may have been sent (reset, server disconnected,
    #: body cut short).
    CONNECTION_LOST = "connection_lost"
    #: The attempt ran past its per-attempt timeout and was cancelled.
    TIMEOUT = "timeout"
    #: TLS verification failed: the peer is not who it claims to be. Retrying cannot fix that.
    TLS_REJECTED = "tls_rejected"


class Verdict(enum.Enum):
    """The classifier's answer."""

    SUCCESS = "success"
    RETRY = "retry"
    FAIL = "fail"


@attrs.frozen
class Outcome:
    """The facts of one attempt: a status, or a transport failure (by exception type name).

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent a valid one.

    Checked when made: ``kind`` an :class:`OutcomeKind`, ``status`` None or an int from 0 to
    999 (what a status line can say: a misbehaving proxy's ``000`` is an answer too),
    ``error`` None or a str, ``retry_after`` None or a finite number of seconds >= 0; anything
    else is a :class:`~le_transport.errors.ConfigurationError` naming the
    field (a status given as ``"503"`` failed only in the classifier, with a TypeError, and a
    NaN ``retry_after`` was silently taken for none).
    """

    kind: OutcomeKind
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        # Made per failed attempt (the answers under 400 are shared, made once): the usual
        # values pass on identity and type tests alone; the rest is told apart off that path.
        status = self.status
        after = self.retry_after
        error = self.error
        if (
            (status is None or (type(status) is int and 0 <= status <= 999))
            and (after is None or (type(after) is float and 0.0 <= after < _INF))
            and (error is None or type(error) is str)
            and type(self.kind) is OutcomeKind
        ):
            return
        _check_outcome(self)

    @classmethod
    def response(cls, status: int, retry_after: float | None = None) -> Outcome:
        """An answer with ``status``."""
        return cls(OutcomeKind.RESPONSE, status=status, retry_after=retry_after)

    @classmethod
    def failure(cls, kind: OutcomeKind, error: str) -> Outcome:
        """A transport failure of ``kind``; ``error`` names the exception type."""
        if kind is OutcomeKind.RESPONSE:
            raise ConfigurationError("a failure cannot be of kind RESPONSE")
        return cls(kind, error=error)

    def describe(self) -> str:
        """A short human form: ``503`` or ``connection_lost (ServerDisconnectedError)``."""
        if self.kind is OutcomeKind.RESPONSE:
            return str(self.status)
        return f"{self.kind.value} ({self.error})" if self.error else self.kind.value


_INF = math.inf


def _check_outcome(outcome: Outcome) -> None:
    """What :class:`Outcome`'s quick test did not pass, told apart: an int subclass (an
    ``HTTPStatus``) or an int ``retry_after`` is fine; anything else is refused, naming the
    field (only a number, or the type, is shown)."""
    if not isinstance(outcome.kind, OutcomeKind):
        raise ConfigurationError(
            f"Outcome.kind must be an OutcomeKind, got {type(outcome.kind).__name__}"
        )
    status = outcome.status
    if status is not None and not (
        isinstance(status, int) and not isinstance(status, bool) and 0 <= status <= 999
    ):
        got = shown(status) if isinstance(status, int) else type(status).__name__
        raise ConfigurationError(
            f"Outcome.status must be None or an int HTTP status from 0 to 999, got {got}"
        )
    if outcome.error is not None and not isinstance(outcome.error, str):
        raise ConfigurationError(
            f"Outcome.error must be None or a str (the exception's type name), got "
            f"{type(outcome.error).__name__}"
        )
    after = outcome.retry_after
    if after is not None and not (finite_number(after) and after >= 0):
        got = shown(after) if isinstance(after, (int, float)) else type(after).__name__
        raise ConfigurationError(
            f"Outcome.retry_after must be None or a finite number of seconds >= 0, got {got}"
        )


class _LeftOut(frozenset[int]):
    """A default status set: one object per default, known by identity (a set the caller gave,
    even an equal one, is another object), and so kept through attrs.evolve (which passes it
    on), copies and pickling (which give back the same object). Equal to, and shown as, the
    plain frozenset it holds."""

    __slots__ = ("_name",)
    _name: str

    def __new__(cls, name: str, statuses: frozenset[int]) -> _LeftOut:
        made = super().__new__(cls, statuses)
        made._name = name
        return made

    def __reduce__(self) -> str:
        return self._name  # pickled by reference: the module's own object comes back

    def __copy__(self) -> _LeftOut:
        return self

    def __deepcopy__(self, memo: object) -> _LeftOut:
        return self

    def __repr__(self) -> str:
        return repr(frozenset(self))


#: Interim statuses (RFC 9110 15.2): never a success when one is the final answer.
_INTERIM = frozenset(range(100, 200))

_DEFAULT_RETRY = _LeftOut("_DEFAULT_RETRY", frozenset({429}))
_DEFAULT_FINAL = _LeftOut("_DEFAULT_FINAL", frozenset({451}))


# The defaults are these very objects (the converters pass them through as they are), so that a
# set the caller left out is known by identity.
def _retry_statuses(value: object) -> frozenset[int]:
    if value is _DEFAULT_RETRY:
        return _DEFAULT_RETRY
    return int_codes("Classifier.retry_statuses", value, bounds=HTTP_STATUSES, kind="HTTP statuses")


def _final_statuses(value: object) -> frozenset[int]:
    if value is _DEFAULT_FINAL:
        return _DEFAULT_FINAL
    return int_codes("Classifier.final_statuses", value, bounds=HTTP_STATUSES, kind="HTTP statuses")


@attrs.frozen(repr=False)
class Classifier:
    """Decides whether an outcome is a success, retryable, or final; replaceable as a policy.

    Defaults follow the guide and LivePerson's retry page: 2xx/3xx succeed; 5xx, 429 and every
    transport failure are retryable; 451 and every other 4xx are final. A final 1xx is the
    server's protocol error (an interim status is no answer), retryable as a 5xx is, and
    raised as :class:`~le_transport.errors.InterimStatusError` when final. ``retry_statuses`` adds
    statuses to retry (e.g. 409 for an API known to answer it transiently); ``final_statuses``
    removes some (e.g. 501 Not Implemented, which no retry can fix). Each holds HTTP statuses
    (three digits: 100 to 999; a client treats one above 599 as a 5xx, RFC 9110 15), and no
    status may be in both: one left out gives way to the other (``final_statuses={429}`` makes
    429 final, ``retry_statuses={451}`` 451 retried; the fields keep what was given), two given
    that share a status are refused.

    Idempotency (``retryable_for``): a request that is not idempotent (POST, PATCH, unless the
    caller marks it so) is retried only when the failure proves it was not processed: a connect
    failure (it never left) or a 429 (the server refused to process it). A 5xx, a reset or a
    timeout may come after the server acted, so repeating a POST could apply it twice.
    """

    retry_statuses: frozenset[int] = attrs.field(default=_DEFAULT_RETRY, converter=_retry_statuses)
    final_statuses: frozenset[int] = attrs.field(default=_DEFAULT_FINAL, converter=_final_statuses)
    #: The statuses below 400 that are not a success here (retried or final: every 1xx, and
    #: those the sets given name): every other
    #: status below 400 is a success, which the retry loop checks without calling
    #: :meth:`classify` on the path every call takes.
    _not_success_below_400: frozenset[int] = attrs.field(init=False, eq=False, repr=False)
    #: The statuses retried and failed, once a set left out gave way to the one given.
    _retried: frozenset[int] = attrs.field(init=False, eq=False, repr=False)
    _final: frozenset[int] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        retried, final = self.retry_statuses, self.final_statuses
        both = retried & final
        if both:
            # A set left out gives way to the one the caller gave: final 429 makes the default
            # retried 429 final, retried 451 the default final 451 retried.
            if retried is _DEFAULT_RETRY:
                retried = retried - both
            elif final is _DEFAULT_FINAL:
                final = final - both
            else:
                # Final silently won: a status meant to be retried never was.
                raise ConfigurationError(
                    f"Classifier.retry_statuses and final_statuses share {sorted(both)}: a "
                    "status is either retried or final, not both"
                )
        object.__setattr__(self, "_retried", retried)
        object.__setattr__(self, "_final", final)
        irregular = _INTERIM | frozenset(status for status in retried | final if status < 400)
        object.__setattr__(self, "_not_success_below_400", irregular)

    def __repr__(self) -> str:
        # The sets given, not those left out: what was written, and what evaluates again (a
        # default shown beside a set it gave way to would be refused as an overlap).
        given = [
            f"{name}={value!r}"
            for name, value in (
                ("retry_statuses", self.retry_statuses),
                ("final_statuses", self.final_statuses),
            )
            if not isinstance(value, _LeftOut)
        ]
        return f"Classifier({', '.join(given)})"

    def classify(self, outcome: Outcome) -> Verdict:
        """Success, retry, or fail, regardless of the method."""
        if outcome.kind is OutcomeKind.TLS_REJECTED:
            return Verdict.FAIL
        if outcome.kind is not OutcomeKind.RESPONSE:
            return Verdict.RETRY
        status = outcome.status if outcome.status is not None else 0
        if status in self._final:
            return Verdict.FAIL
        # Above 599 too: a client treats a status it does not know as a 5xx (RFC 9110 15).
        if status in self._retried or 500 <= status <= 999 or status < 200:
            # Below 100: no HTTP status at all (a proxy's 000); 1xx: an interim status given
            # as the final answer (RFC 9110 15.2). Each the server's fault, retried as a 5xx is.
            return Verdict.RETRY
        if status < 400:
            return Verdict.SUCCESS
        return Verdict.FAIL

    def retryable_for(self, outcome: Outcome, *, idempotent: bool) -> bool:
        """Whether a retryable outcome may be retried for a request of this idempotency."""
        if self.classify(outcome) is not Verdict.RETRY:
            return False
        if idempotent:
            return True
        return outcome.kind is OutcomeKind.CONNECT_FAILED or outcome.status == 429


def repeat_verdict(classifier: Classifier, outcome: Outcome, *, idempotent: bool) -> Repeat:
    """What a failed request whose last attempt ended with ``outcome`` is, for sending it
    again once its schedule stopped without retrying it: ``RETRYABLE_IF_IDEMPOTENT`` when only
    its idempotency stopped the schedule (a POST's 5xx, reset or timeout), else ``FINAL``."""
    retryable = classifier.classify(outcome) is Verdict.RETRY
    if retryable and not classifier.retryable_for(outcome, idempotent=idempotent):
        return Repeat.RETRYABLE_IF_IDEMPOTENT
    return Repeat.FINAL


#: Answers that prove the server did not act on the request.
_UNPROCESSED_STATUSES = frozenset({401, 429})


def unprocessed(outcome: Outcome) -> bool:
    """Whether ``outcome`` proves its request was not acted on: it never left (a connect
    failure, a refused certificate), or the server refused it before processing (401, 429)."""
    if outcome.kind is OutcomeKind.RESPONSE:
        return outcome.status in _UNPROCESSED_STATUSES
    return outcome.kind in (OutcomeKind.CONNECT_FAILED, OutcomeKind.TLS_REJECTED)
