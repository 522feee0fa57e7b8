"""The outer recovery loop: after the request schedule gives up, re-resolve and re-login, slowly.

The guide's Step 3: "to make sure your application recovers from more than 3 consecutive failed
requests, you must introduce another retry for login ... at a longer interval than the previous
one ... or exponential backoff", never so short that it keeps an overloaded service down.

:class:`Recovery` is that loop, for one session (one engine). ``await recovery.run(call)`` runs
``call``; when it fails in a way the outer loop can help with and running it again sends
nothing twice that may have been acted on (the rule below), it waits the
:class:`~le_transport.policies.BackoffPolicy`'s next pause on the injected clock, re-resolves
the domains, logs in afresh, and runs ``call`` again, until it succeeds, the policy's attempts
or deadline run out (:class:`~le_transport.errors.RecoveryFailed`), the call's own deadline
would pass (``run(call, until=...)``), the caller is cancelled, or the loop is closed (its
engine closed: every call waiting through it fails at once with ``RecoveryFailed``, and no
re-login outlives the logout).

The rule: two facts, each decided once, where it is known.

- The failure's verdict, :func:`repeat_of` (a :class:`~le_transport.errors.Repeat`). ``FINAL``
  is raised at once: every 4xx that failed at once (bad credentials, a blacklisted account, a
  Domain API that refuses the account: :func:`refused_status`), a status the ``Classifier``
  makes final (a 501), a refused certificate, a Domain API failure caused by one of those, an
  unknown service, a malformed call, the call's own deadline, anything not a transport error.
  A 4xx the retry policy retried (its ``Classifier`` takes it for transient) is an outage like
  a 5xx. ``RETRYABLE``: a spent schedule, the retry budget or the breaker refusing, the Domain
  API or a provider's own network call down, a credential service answering neither a refusal
  nor a success (:class:`~le_transport.errors.UnexpectedAnswer`: a redirect or an HTML
  maintenance page where a login's or a token's JSON was expected).
  ``RETRYABLE_IF_IDEMPOTENT``: a 5xx, a reset or a timeout on a request that is not
  idempotent (a POST, an auth-code login).
- What ``call`` sent: a :class:`~le_transport.middleware.context.CallLedger`, open while
  ``call`` runs, shared with the tasks it starts (``gather``, ``TaskGroup``). It sees every
  :meth:`~le_transport.Engine.request` call and every request made through the library's
  ``RetryMiddleware`` with no engine call around it (``engine.session.post``, a caller's
  session with the stack), recorded as each starts (in the ledgers of every enclosing run at
  once) and told when each ends. It keeps the calls that are not idempotent (the caller's
  ``idempotent``, else the first request's method, not a redirect hop's) while unfinished,
  a sticky ``unsafe`` set when one finished and may have been acted on (answered, any status;
  an attempt of any hop not :func:`~le_transport.policies.classify.unprocessed`, a
  cancellation on the wire included; sent on a caller's session without the stack with no
  answer seen), and the last errors that came out of recorded calls. If ``call`` made any,
  it runs again only if nothing is unfinished nor ``unsafe``, and, for a
  ``RETRYABLE_IF_IDEMPOTENT`` failure, only if that error came out of a recorded call. If it
  made none (a direct login, a socket's dial, a callable of the caller's), only
  ``RETRYABLE`` runs again.

So, among the requests the ledger sees, a POST answered (a 201, a 5xx, a 303 whose GET hop or
the hop's login then failed), reset, timed out, cancelled on the wire, or still unfinished when
``call`` failed is never sent again; a POST whose login met an outage before it was sent, or
after a 401, is. The ledger stays open through the pause: just before running ``call`` again
the rule is asked again, and if a call ``call`` left running (``gather`` does not cancel the
others) sent a POST meanwhile, the original failure is raised, with a note (on a copy of the
same type and attributes: the original may be shared by other callers, as one login's failure
is by all its waiters, and is never changed). What the ledger
cannot see (a request on a session without the stack, not made through
:meth:`~le_transport.Engine.request`; a task started outside the run's context; a request a
task left running starts after ``call`` was run again) is judged by the failure alone. Inside
a round, a re-login that fails is tried again after the next pause unless its verdict is
``FINAL``.

A call with a deadline (``until``: the clock time it must end by, fixed once when it starts)
never waits a pause that would end at or past it: it gives up at once with ``RecoveryFailed``,
as the request schedule gives up rather than pause past a deadline (the round goes on for
other calls). When the deadline passes while it waits for a re-login in progress, it stops
waiting with :class:`~le_transport.errors.DeadlineExceeded`.
:func:`is_setup_error` tells which failures are mistakes in what was asked for, which a socket
stops on rather than reconnecting.

A call refused by an open circuit (:class:`~le_transport.errors.CircuitOpen`: nothing was sent)
while no round is in progress waits for the breaker instead, when it lets a call try before the
round's pause would end: until its ``retry_at``, in steps of the request schedule's first pause
(its half-open probe's success closes it long before the probe's lease ends), then runs again;
a re-login cannot close a circuit. A circuit shut longer than that pause, or a call that has
waited so since its last round, gets the round, and what it waited counts toward that round's
pause (the round sleeps the rest, never less than the request schedule's last pause, the
longest pause the failed call took, nor the policy's ``floor``): re-logins stay the policy's
pause apart, 2, 4, 8 min, not the pause plus the breaker waits before it (a floor on the rest,
and the call's own runs between breaker waits, only make them further apart).

The loop is shared by every call of the session: a hundred calls failing together wait for one
recovery round (one login), not a hundred. Its pauses never shrink within an episode (the
policy's jitter cannot make one shorter than the last), and none is shorter than the request
schedule's last pause, nor than the longest pause the failed call actually took (a
``Retry-After`` honoured up to its ceiling, a per-call ``retry=`` schedule), nor than a
``Retry-After`` one of its answers asked for (up to the call's own ceiling, its ``retry=``
policy's when it has one, else the request schedule's; the one that ended the schedule
included, which no pause of the call waited for). Such a floor above the policy's drawn pause
is spread above by up to the policy's jitter, as the request schedule spreads a ``Retry-After``
(a fleet told one ``Retry-After`` does not re-login at one instant). A call that joins a round
in progress (or that a round ended while it failed) was not asked when its pause was planned:
once the round is through, it waits alone what is left of its own longest pause or ask, counted
from its failure, before it runs again (the other calls of the round are not held up, no
re-login is added; past its deadline it gives up at once with ``RecoveryFailed``, as it joins
when its ask already ends at or past the deadline then: it keeps no round alive for a re-login
nobody uses). An episode ends
when a call that went through it succeeds, when the loop gives up, or when the last call that
went through it ends with any other error (a 404 after the re-login, a cancellation): the next
failure starts afresh. A call that succeeds while a later round of the episode is in progress
(another call failed again after the re-login it recovered with) does not end it: the round's
pauses go on growing, and the episode ends with ``recovered`` when the last call through it is
done, however that one ends, unless the loop gives up. Every transition is logged
(``le_transport.recovery``) and emitted to ``EventHooks.on_state``: ``relogin_scheduled`` (with
the ``pause`` planned since the last re-login, or since the failure for the first; after breaker
waits also ``waited``, what the call waited on the open circuit since, and ``sleep``, what the
round sleeps now before the re-login), ``relogin_failed``, ``recovered``, ``gave_up``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import math
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._tasks import stop_task
from .clock import Clock, timeout_after
from .errors import (
    AttemptTimeout,
    CircuitOpen,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    DomainResolutionError,
    HostileHostError,
    InvalidRequest,
    ProviderError,
    RecoveryFailed,
    Repeat,
    RequestError,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
    TransportError,
    UnexpectedAnswer,
    UnknownServiceError,
)
from .events import EventHooks, StateEvent
from .middleware.context import (
    _CALL_LEDGER,
    CallLedger,
    open_ledger,
    provider_failed,
    safe_cause,
)
from .policies._validate import clamp_draw, finite_number, shown
from .policies.backoff import BackoffPolicy
from .policies.retry import RetryPolicy
from .providers._http import emit_state
from .providers.auth import AuthProvider
from .providers.domains import DomainProvider

__all__ = [
    "KEPT_PAUSES",
    "Recovery",
    "is_recoverable",
    "is_setup_error",
    "refused_status",
    "repeat_of",
]

_log = logging.getLogger("le_transport.recovery")

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: How many of its latest pauses a :class:`Recovery` keeps in :attr:`Recovery.pauses`.
KEPT_PAUSES = 1000

#: The re-login running now, or that started the task that runs now (a task copies its
#: creator's context): set by the round's own task around each re-login
#: (:meth:`Recovery._round`), so a task that re-login started (a provider's teardown it waits
#: for) is inside the round as the round itself is, and a close from it does not cancel the
#: round, and itself with it. That re-login only: a task it started that lives on (a watchdog,
#: a token refresher) is outside the round's later re-logins, which do not wait for it, and
#: outside the round's pauses. A weak reference: such a task must not keep the re-login, its
#: round, error and traceback, alive.
_RELOGIN: contextvars.ContextVar[weakref.ref[_Relogin] | None] = contextvars.ContextVar(
    "le_transport_recovery_relogin", default=None
)


class _Relogin:
    """One re-login of a round, in progress: what the tasks it starts carry in their context
    (:data:`_RELOGIN`)."""

    __slots__ = ("__weakref__", "round")

    def __init__(self, round_: asyncio.Task[object] | None) -> None:
        self.round = round_


#: Errors that say the request schedule would have tried again but could not: its attempts
#: were spent (:class:`RetriesExhausted`), or the retry budget or the breaker refused.
_RECOVERABLE = (RetriesExhausted, RetryBudgetExhausted, CircuitOpen)

#: The shortest wait of a call refused by an open circuit before it asks again
#: (:meth:`Recovery._breaker_wait`): a breaker's ``retry_at`` already passed, or a request
#: schedule with a first pause of 0, must not make it ask in a busy loop.
_LEAST_BREAKER_WAIT = 0.05

#: Transient failures: their own ``repeat`` says (``RETRYABLE`` unless a schedule or the
#: engine judged them: a 5xx on a POST, a reset after the server may have read the request, a
#: status its ``Classifier`` makes final, a certificate refused). Unjudged: a provider's own
#: network call down, a socket's dial failing, a GET's 5xx met outside the retry middleware.
_TRANSIENT = (ServerStatusError, ConnectionFailed, AttemptTimeout)


def repeat_of(exc: BaseException) -> Repeat:
    """The verdict the recovery loop reads off a failure: whether what failed may be sent
    again, by the failure alone (whether the *call* may be is the engine's to say:
    :meth:`~le_transport.middleware.context.CallContext.may_resend`).

    - ``RETRYABLE``: :class:`RetriesExhausted`, :class:`RetryBudgetExhausted`,
      :class:`CircuitOpen` (the schedule would have tried again but could not); a
      :class:`DomainResolutionError` but for the cases below (the Domain API down); an
      :class:`UnexpectedAnswer` (a credential service answering neither a refusal nor a
      success: a maintenance page; an :class:`AuthenticationError` that is no refusal).
    - ``FINAL``: an :class:`UnknownServiceError`, a :class:`HostileHostError`; a
      :class:`DomainResolutionError` whose cause chain holds, before any error saying its
      schedule retried it, a 4xx (:func:`refused_status`) or a failure whose own ``repeat`` is
      ``FINAL`` (a refused certificate, a ``Classifier``-final status); every error that is
      not one of these nor a transient failure (a 4xx, a login refused, a malformed call, a
      deadline, a closed engine, a provider's bug, anything not a transport error).
    - A :class:`ServerStatusError`, :class:`ConnectionFailed` or :class:`AttemptTimeout`:
      its own :attr:`~le_transport.errors.RequestError.repeat`."""
    if isinstance(exc, (UnknownServiceError, HostileHostError)):
        return Repeat.FINAL
    if isinstance(exc, UnexpectedAnswer):
        # Neither a refusal nor a success (a redirect, a proxy's maintenance page): says
        # nothing of the credentials, and what failed (a login, a token request) is
        # idempotent by nature; the call it was for sent nothing.
        return Repeat.RETRYABLE
    if isinstance(exc, DomainResolutionError):
        # The Domain API down is an outage; refused (a 4xx at once), or failing final by
        # nature (a refused certificate, a Classifier-final status), it is final.
        return Repeat.FINAL if _final_cause(exc) else Repeat.RETRYABLE
    if isinstance(exc, _RECOVERABLE):
        return Repeat.RETRYABLE
    if isinstance(exc, _TRANSIENT):
        return exc.repeat
    return Repeat.FINAL


def _final_cause(exc: BaseException) -> bool:
    """Whether ``exc``'s cause chain holds a refusal (:func:`refused_status`) or a failure
    final by nature before any error that says its schedule retried it."""
    seen: BaseException | None = exc
    for _ in range(16):  # a cause chain is short; a cycle must not hang the caller
        if seen is None or isinstance(seen, _RETRIED):
            return False
        if isinstance(seen, ClientStatusError):
            return True
        if isinstance(seen, _TRANSIENT) and seen.repeat is Repeat.FINAL:
            return True
        seen = seen.__cause__
    return False


def _outage(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure that is not final by nature (what a login's failure must be
    for a round to wait it out): :func:`_relogin_recoverable`."""
    return repeat_of(exc) is not Repeat.FINAL


#: Errors that say the retry policy took their cause for a transient failure: it retried it
#: until its schedule was spent (:class:`RetriesExhausted`), or would have but for the retry
#: budget (:class:`RetryBudgetExhausted`). A 4xx down the chain past one of these is an
#: outage (a 409 the caller's ``Classifier`` retries), not a refusal.
_RETRIED = (RetriesExhausted, RetryBudgetExhausted)


def refused_status(exc: BaseException) -> int | None:
    """The status of the 4xx answer that refused what ``exc`` asked for, if any: ``exc``
    itself when it is a :class:`ClientStatusError`, else the first one down its ``__cause__``
    chain (where a provider's error carries the answer it failed on, as a
    :class:`DomainResolutionError` carries the Domain API's 400 for an unknown account).

    Only a 4xx that failed at once is a refusal: one the retry policy retried (the chain
    passes through :class:`RetriesExhausted` or :class:`RetryBudgetExhausted` before it,
    as for a 409 that the caller's ``Classifier`` retries) was transient, so None."""
    seen: BaseException | None = exc
    for _ in range(16):  # a cause chain is short; a cycle must not hang the caller
        if seen is None or isinstance(seen, _RETRIED):
            return None
        if isinstance(seen, ClientStatusError):
            return seen.status
        seen = seen.__cause__
    return None


def is_recoverable(exc: BaseException) -> bool:
    """Whether the failure alone lets the outer loop run again what failed:
    ``repeat_of(exc) is Repeat.RETRYABLE`` (see :func:`repeat_of`).

    Yes: a spent schedule (:class:`RetriesExhausted`), a spent retry budget
    (:class:`RetryBudgetExhausted`), an open circuit (:class:`CircuitOpen`), the Domain API
    down (a :class:`DomainResolutionError` that is not final by its cause), a credential
    service's answer that is neither a refusal nor a success (:class:`UnexpectedAnswer`), and a
    :class:`ConnectionFailed`, :class:`ServerStatusError` or :class:`AttemptTimeout` no
    schedule judged (a provider's own network call down, a socket's dial failing, a GET's 5xx
    answered outside the retry middleware). No: ``FINAL`` (every 4xx that failed at once, a
    ``Classifier``-final status, a refused certificate, an unknown service, a malformed call,
    a deadline, anything not a transport error) and ``RETRYABLE_IF_IDEMPOTENT`` (a 5xx, a
    reset or a timeout on a request that is not idempotent: the server may have processed it).

    This is what :meth:`Recovery.run` asks when its callable made no engine call (a direct
    login, a socket's dial). When it made some, a ``RETRYABLE_IF_IDEMPOTENT`` failure that
    came out of one of them is run again too, and ``RETRYABLE`` is not always: it runs again
    iff the verdict is not ``FINAL`` and nothing the ledger saw may have been acted on or is
    still unfinished (the module docstring's rule). A re-login that fails inside a round is
    waited out unless ``FINAL`` (:func:`_relogin_recoverable`).
    """
    return repeat_of(exc) is Repeat.RETRYABLE


def _relogin_recoverable(exc: BaseException) -> bool:
    """Whether a recovery round pauses and tries again after its own re-login failed with
    ``exc``: its verdict (:func:`repeat_of`) is not ``FINAL``. The Login Service or the Domain
    API down (a 5xx, a reset, a timeout: even ``RETRYABLE_IF_IDEMPOTENT``, as a consumer's
    auth-code login, a POST, answered 503 is; the round exists to wait such an outage out),
    or anything :func:`is_recoverable` takes (a maintenance page where the login's JSON was
    expected: :class:`UnexpectedAnswer`). Not a refusal (a 4xx: :class:`LoginRejected`,
    :class:`BlockedError`, :class:`ClientStatusError`, any other
    :class:`AuthenticationError`), nor
    a failure final by nature (a refused TLS certificate, a status the ``Classifier`` makes
    final, a Domain API failure caused by one), nor a mistake in what was asked for: those
    end the round."""
    return repeat_of(exc) is not Repeat.FINAL


def is_setup_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake in what the call asks for, which no retry, reconnect or
    re-login can fix: a malformed call (:class:`InvalidRequest`, a bad path), a
    :class:`ConfigurationError`, an unknown service, a hostile host, a provider's own bug
    (:class:`ProviderError`), or a 4xx answer that failed at once (a
    :class:`DomainResolutionError` caused by one included: the Domain API refused the
    account). A 4xx the retry policy retried (:func:`refused_status`: a 409 the caller's
    ``Classifier`` retries, its schedule spent) is an outage, not a mistake. Over HTTP each
    fails the call at once; a socket that meets one while connecting stops, as the call
    would (an outage of the same providers reconnects)."""
    if isinstance(
        exc,
        (InvalidRequest, ConfigurationError, UnknownServiceError, HostileHostError, ProviderError),
    ):
        return True
    return isinstance(exc, (ClientStatusError, DomainResolutionError)) and (
        refused_status(exc) is not None
    )


class Recovery:
    """The outer loop of one session; see the module docstring.

    - ``policy``: the :class:`BackoffPolicy` (default: :meth:`BackoffPolicy.relogin`, 2, 4, 8 …
      min, ±20%, never under 15 s).
    - ``request_policy``: the request schedule; no recovery pause is shorter than its last.
    - ``domains``, ``auth``: re-resolved and re-logged-in on each round (``auth`` may be None).
    - ``clock``, ``rng``, ``hooks``: the engine's.
    - ``subject``: what is recovering, as its log lines, state events (their ``subject``) and
      errors name it (default ``"session"``; never a secret: it is logged).
    """

    def __init__(
        self,
        *,
        domains: DomainProvider,
        auth: AuthProvider | None,
        clock: Clock,
        policy: BackoffPolicy | None = None,
        request_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        hooks: EventHooks | None = None,
        subject: str = "session",
    ) -> None:
        for field, value, wants, ok in (
            ("policy", policy, "a BackoffPolicy or None", isinstance(policy, BackoffPolicy)),
            (
                "request_policy",
                request_policy,
                "a RetryPolicy or None",
                isinstance(request_policy, RetryPolicy),
            ),
            ("domains", domains, "a DomainProvider", isinstance(domains, DomainProvider)),
            ("auth", auth, "an AuthProvider or None", isinstance(auth, AuthProvider)),
            ("clock", clock, "a Clock", isinstance(clock, Clock)),
            ("rng", rng, "a random.Random or None", isinstance(rng, random.Random)),
            ("hooks", hooks, "EventHooks or None", isinstance(hooks, EventHooks)),
            ("subject", subject, "a str", isinstance(subject, str)),
        ):
            # A wrong value would otherwise surface as an AttributeError in the middle of a
            # recovery round, long after the mistake.
            if not ok and not (value is None and wants.endswith("or None")):
                raise ConfigurationError(
                    f"Recovery.{field} must be {wants}, got {type(value).__name__}"
                )
        self._policy = policy or BackoffPolicy.relogin()
        self._request_policy = request_policy or RetryPolicy()
        self._domains = domains
        self._auth = auth
        self._clock = clock
        self._rng = rng or random.Random()
        self._hooks = hooks or EventHooks()
        self._subject = subject
        # The recovery round in progress, shared by every call waiting for it.
        self._round_task: asyncio.Task[None] | None = None
        # Each finished recovery round bumps the epoch; a call that failed before the bump
        # retries instead of starting a round of its own.
        self._epoch = 0
        self._final: BaseException | None = None
        # Calls in _recover: running a round or waiting for the lock to run one.
        self._recovering_calls = 0
        # Calls that went through the episode and have not ended yet (in _recover, or running
        # again after a round): the episode is theirs, and ends with the last of them. The
        # episode's id moves on at each end (_reset): a call of an ended one no longer counts.
        self._episode_calls = 0
        self._episode = 0
        self._attempt = 0
        self._first_failure: float | None = None
        self._last_pause = 0.0
        # A call through the episode succeeded while a round others wait in went on: the
        # episode ends with "recovered" when the last of them is through (_end_recovered).
        self._succeeded = False
        # When the pause of the round in progress ends (None: no pause under way), and what
        # tells a call with a deadline waiting for the round that a new pause was scheduled.
        self._resume_at: float | None = None
        self._rescheduled: asyncio.Future[None] | None = None
        self._closed = False
        # Resolved by close(): ends the pause the round is waiting out. Made on first use (it
        # needs the running loop).
        self._stop: asyncio.Future[None] | None = None
        # The round close() left to end alone (closed from inside it: its re-login, or a task
        # the re-login started, closed the engine), and what tells the calls waiting for it to
        # stop waiting (made by a waiter, on its loop).
        self._left_alone: asyncio.Task[None] | None = None
        # The re-login of the round running now (None: none runs), which the tasks it starts
        # carry in their context (_RELOGIN): a close from one of them is from inside the round.
        self._relogin_running: _Relogin | None = None
        self._release: asyncio.Future[None] | None = None
        #: The pauses taken, in order, across episodes: the newest :data:`KEPT_PAUSES` (a
        #: client that lives for months recovers now and then; its history stays bounded).
        self.pauses: collections.deque[float] = collections.deque(maxlen=KEPT_PAUSES)
        #: Re-logins made by the loop.
        self.relogins = 0

    @property
    def policy(self) -> BackoffPolicy:
        """The outer backoff policy."""
        return self._policy

    @property
    def recovering(self) -> bool:
        """Whether an episode (a failure not yet followed by a success) is in progress."""
        return self._attempt > 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: no round starts any more."""
        return self._closed

    def close(self) -> None:
        """Stop for good (the engine closing): the pause in progress ends now, a re-login in
        progress is cancelled, none follows, and every call waiting through the loop fails
        with :class:`~le_transport.errors.RecoveryFailed`. Idempotent.

        Called from inside the round (its re-login, or a task that re-login started while it
        runs, which it may be waiting for: an auth provider's teardown closing the engine;
        not a task an earlier re-login of the round started, nor one started during a
        pause, which the round never waits for: from those, the round is cancelled), the
        re-login is not cancelled, which would cancel that close with it: the calls waiting
        for the round fail at once all the same, and the round ends by itself, closed, once
        its re-login returns (nothing is run again), or is cancelled once the task that
        closed (the close in it done) is: the re-login does not outlive it. A waiter cancelled
        then (a socket escalated to the round, closed by that close) does not stop it."""
        if self._closed:
            return
        self._closed = True
        stop = self._stop
        if stop is not None and not stop.done():
            stop.set_result(None)
        round_ = self._round_task
        if round_ is not None and not round_.done():
            if not _inside(round_, self._relogin_running):
                # Its re-login must not outlive the logout that follows, nor its success run
                # the waiting calls again on a closed session: they fail now, as from a pause.
                round_.cancel()
            else:
                # From inside the round (a re-login closing the engine, itself or in a task it
                # started and may wait for): cancelled, the round would cancel that close
                # with it, cut short before its logout. It ends closed by itself once its
                # re-login returns (its outcome read by nobody); the calls waiting for it fail
                # now all the same.
                self._left_alone = round_
                round_.add_done_callback(_outcome_read)
                closing = _running_task()
                if closing is not None and closing is not round_:
                    # A task the re-login started: the round is stopped once that task is
                    # done (its close with it), not left re-logging in after the logout.
                    # Awaited directly, the round has already gone on by then (its wake-up
                    # comes first), and ends closed.
                    closing.add_done_callback(lambda _: _stop_left(round_))
                release = self._release
                if release is not None and not release.done():
                    release.set_result(None)
        if self._attempt:
            attempts = self._attempt
            self._reset()
            self._state(logging.WARNING, "gave_up", {"reason": "closed", "attempts": attempts})

    def _inside_round(self) -> bool:
        """Whether the code running now is inside the round in progress (:func:`_inside`):
        a :meth:`close` from here leaves the round to end alone. The engine closes such a
        loop before its sockets: a socket's close cancels its wait for the round, which, the
        last waiter gone, would otherwise stop the round (and the close inside it)."""
        round_ = self._round_task
        return round_ is not None and not round_.done() and _inside(round_, self._relogin_running)

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        until: float | None = None,
        retry_after_ceiling: float | None = None,
    ) -> T:
        """``await call()``, recovering and calling again while it fails recoverably.

        ``until``: the clock time (the loop's clock's :meth:`~le_transport.clock.Clock.now`)
        by which the whole call must end, fixed once when it starts (an engine call with
        ``deadline=60`` passes ``clock.now() + 60``); None: no bound but the policy's. No
        pause that would end at or past it is waited: the call gives up at once with
        :class:`~le_transport.errors.RecoveryFailed` (a round in progress goes on for the
        other calls); if it passes while a re-login is in progress, the call stops waiting
        with :class:`~le_transport.errors.DeadlineExceeded`. Each run of ``call`` is the
        caller's to bound by the time left.

        ``retry_after_ceiling``: the ceiling of the call's own request schedule (an engine
        call's ``retry=`` policy's), up to which a ``Retry-After`` one of its answers asked for
        counts toward the pause of a round it starts, and, when it joins a round another call
        started, how long after its failure it is run again at the soonest (it waits the rest
        alone once the round is through); None: the loop's ``request_policy``'s. A
        number of seconds >= 0, else a :class:`~le_transport.errors.ConfigurationError`.

        ``call`` is run again only as the module docstring's rule says: its failure is not
        ``FINAL`` (:func:`repeat_of`), and nothing the run's ledger saw may have been acted on
        or is unfinished, asked when it failed and again just before running it again (if it
        made no call the ledger sees: the failure is ``RETRYABLE``). Raises what ``call``
        raises otherwise, and :class:`~le_transport.errors.RecoveryFailed` when the policy
        gives up.
        """
        if not callable(call):
            if inspect.iscoroutine(call):
                call.close()  # it can never run here: no "never awaited" warning on top
            raise ConfigurationError(
                "Recovery.run takes a function returning an awaitable (it is called again on "
                f"each round), got {type(call).__name__}"
            )
        if until is not None and not finite_number(until):
            raise ConfigurationError(
                "Recovery.run until must be a finite clock time (the clock's now() plus the "
                f"call's deadline) or None, got {type(until).__name__}"
            )
        if retry_after_ceiling is None:
            ceiling = self._request_policy.retry_after_ceiling
        elif finite_number(retry_after_ceiling) and retry_after_ceiling >= 0:
            ceiling = float(retry_after_ceiling)
        else:
            raise ConfigurationError(
                "Recovery.run retry_after_ceiling must be None or a finite number of seconds "
                f">= 0, got {shown(retry_after_ceiling)}"
            )
        started = self._clock.now()
        # The episode this call went through (its id, taken as it joined): a call of an
        # episode already ended counts in, and speaks for, no later one.
        counted_in: int | None = None
        # Waited on an open circuit since the last round (_breaker_wait), and the round epoch
        # it was waited in: what a round ends (its re-login) is no longer since the last one.
        breaker_waited = 0.0
        breaker_epoch = self._epoch
        try:
            while True:
                seen = self._epoch
                if seen != breaker_epoch:
                    breaker_waited, breaker_epoch = 0.0, seen
                ledger, token = open_ledger()
                left: BaseException | None = None
                try:
                    try:
                        pending = call()
                        if not inspect.isawaitable(pending):
                            raise ConfigurationError(
                                "Recovery.run takes a function returning an awaitable; it "
                                f"returned {type(pending).__name__}"
                            )
                        result = await pending
                    finally:
                        # No longer current (the round's re-login is none of the callable's),
                        # but still open: a task the callable left running records into it
                        # until the run is run again or over.
                        _CALL_LEDGER.reset(token)
                except Exception as exc:
                    if not _may_repeat(exc, ledger):
                        raise
                    if self._closed:
                        # Its session is going away: waiting for a round that will never
                        # come would hang the caller, and a re-login would outlive the
                        # logout.
                        raise self._closed_error(exc) from exc
                    wait = self._breaker_wait(exc, seen, until, breaker_waited, ceiling)
                    if wait is not None:
                        breaker_waited += wait
                        await self._pause(wait)
                        if self._closed:
                            raise self._closed_error(exc) from exc
                    else:
                        failed_at = self._clock.now()
                        waited, breaker_waited = breaker_waited, 0.0
                        if counted_in != self._episode:
                            counted_in = self._episode
                            self._episode_calls += 1
                        await self._recover(exc, seen, until, started, waited, ceiling)
                        # A round it joined (or one that ended while it failed) was paced by
                        # the call that started it: this call's own answers may have asked
                        # for longer.
                        await self._own_ask(exc, failed_at, until, ceiling)
                    if not ledger.may_resend():
                        # Asked again just before running it again: a call the run left
                        # running (gather does not cancel the others) went on meanwhile.
                        # Raised as a copy with the note: ``exc`` may be shared (a login's
                        # failure is every waiter's), and another caller's error must not
                        # say this.
                        err = _left_running(exc, self._subject)
                        if err is exc:
                            raise
                        # Raised below, outside this clause: raised here, the copy would
                        # get ``exc`` as its context, and its own (the root cause of an
                        # error raised without ``from``) would be lost.
                        left = err
                    else:
                        continue
                finally:
                    ledger.close()
                if left is not None:
                    raise left
                if counted_in == self._episode:
                    self._recovered()
                return result
        except BaseException as exc:
            if counted_in == self._episode and self._episode_calls == 1:
                self._episode_ended(exc)
            raise
        finally:
            if counted_in == self._episode:
                self._episode_calls -= 1

    async def _own_ask(
        self, exc: Exception, failed_at: float, until: float | None, ceiling: float
    ) -> None:
        """After a round, wait until ``failed_at`` (when the call failed with ``exc``) plus the
        longest pause the call took or a ``Retry-After`` one of its answers asked for, up to
        its own ``ceiling`` (:func:`_longest_pause`), if that is still ahead: the round's
        pause was planned by the call that started it, and a call that joined it (or that a
        round ended while it failed) was re-sent sooner than its own server asked. The round
        starter's pause already covers its own ask (nothing left to wait); the other calls of
        the round are not held up, and no re-login is added. A wait that would end at or past
        the call's deadline (``until``) gives up at once with ``RecoveryFailed`` (a joiner
        whose ask already did so as it joined gave up then, :meth:`_recover`); the loop
        closing ends it with ``RecoveryFailed``."""
        rest = failed_at + _longest_pause(exc, ceiling) - self._clock.now()
        if rest <= 0.0:
            return
        if until is not None and self._clock.now() + rest >= until:
            raise self._past_deadline(exc, rest, until, own=True) from exc
        _log.info(
            "%s: re-login done; the call waits %.3g s more, as its own answers asked, "
            "before it is sent again",
            self._subject,
            rest,
            extra={"subject": self._subject, "error": _name(exc), "pause": round(rest, 3)},
        )
        await self._pause(rest)
        if self._closed:
            raise self._closed_error(exc) from exc

    def _breaker_wait(
        self, exc: Exception, seen: int, until: float | None, waited: float, ceiling: float
    ) -> float | None:
        """How long a call refused by an open circuit (``exc``) waits before running again
        with no round, or None: a round (a pause, a re-login) is in order.

        A :class:`~le_transport.errors.CircuitOpen` sent nothing, and a re-login cannot close
        a circuit: the breaker's own break is the backoff, and its half-open probe (often
        already out, its answer a moment away) decides. So, when no round is in progress (a
        call joins the one that is), the call waits on the clock until the circuit's
        ``retry_at``, in steps of the request schedule's first pause (a probe that succeeds
        closes the circuit long before its lease ends), and runs again: each step costs the
        breaker's check, nothing is sent while it refuses. It starts a round instead when the
        circuit stays shut longer than the round's next pause, once it has waited, since its
        last round, as long as that pause, or when its deadline would pass first. What it
        waited (``waited``) counts toward the pause of the round it then starts
        (:meth:`_wait_for`), so an open circuit never delays the outer loop: the re-logins
        stay the policy's pause apart, not that pause plus the breaker waits before it.
        ``ceiling``: the call's own ``Retry-After`` ceiling (:meth:`run`)."""
        if not isinstance(exc, CircuitOpen) or self._epoch != seen:
            return None  # (a round ended while it failed: _recover gives its outcome)
        round_ = self._round_task
        if round_ is not None and not round_.done():
            return None
        now = self._clock.now()
        elapsed = self._elapsed(waited)
        # The shortest the round's pause can be (no draw taken from the rounds' jitter).
        pause = self._next_pause(
            self._attempt + 1,
            elapsed,
            _longest_pause(exc, ceiling),
            rand=0.0,
            waited=waited,
        )
        if pause is None:
            return None
        left = exc.retry_at - now
        if not math.isfinite(left) or left > pause:
            return None  # the circuit stays shut longer than the round's pause: a round
        step = next((p for p in self._request_policy.pauses if p > 0), None)
        if left > 0:
            wait = left if step is None else min(left, step)
        elif step is not None:
            wait = step  # a retry_at already come (a peer's probe lock): the schedule's step
        else:
            return None  # nothing to pace the asking by: a round
        wait = max(wait, _LEAST_BREAKER_WAIT)
        if waited + wait > pause or (until is not None and now + wait >= until):
            return None
        _log.debug(
            "%s: %s; no re-login (it cannot close a circuit): trying again in %.3g s",
            self._subject,
            exc,
            wait,
            extra={"subject": self._subject, "error": _name(exc), "pause": round(wait, 3)},
        )
        return wait

    async def _recover(
        self,
        exc: Exception,
        seen: int,
        until: float | None,
        started: float,
        waited: float = 0.0,
        ceiling: float | None = None,
    ) -> None:
        """Wait for a recovery round: the one in progress, or a new one if none has run since
        this call failed (``seen``). The round is a task of its own that every waiting call
        shares: a waiter that is cancelled, or whose deadline (``until``) the round's pause
        would pass, stops waiting, and the round (its pause already spent) goes on for the
        others; it is cancelled only with its last waiter (not once :meth:`close` left it to end
        alone). ``waited``: how long this call waited on an open circuit since the last round
        (:meth:`_breaker_wait`), which a round it starts counts toward its first pause
        (:meth:`_wait_for`); ``ceiling``: the call's own ``Retry-After`` ceiling (:meth:`run`;
        None: the request schedule's). A call that would join a round in progress whose own
        ask (:meth:`_own_ask`, counted from now, its failure) already ends at or past
        ``until`` gives up at once with the ``RecoveryFailed`` it would raise after the round,
        and does not wait for it."""
        if ceiling is None:
            ceiling = self._request_policy.retry_after_ceiling
        self._recovering_calls += 1
        try:
            if self._closed:
                raise self._closed_error(exc) from exc
            round_ = self._round_task
            if round_ is None or round_.done():
                if self._epoch != seen:
                    # A round finished while this call was failing: retry with its result.
                    if self._final is not None:
                        raise self._final
                    return
                first, elapsed = self._plan(exc, waited, ceiling)
                sleep = (
                    None
                    if first is None
                    else self._wait_for(first, waited, _longest_pause(exc, ceiling))
                )
                if sleep is not None and until is not None and self._clock.now() + sleep >= until:
                    # A pause the call's deadline cannot wait out: no round is started for it.
                    err = self._past_deadline(exc, sleep, until)
                    if self._attempt == 0:
                        # No episode under way, whose end would say it: said here, as a
                        # give-up at a later round is.
                        self._state(
                            logging.WARNING,
                            "gave_up",
                            {"reason": "deadline", "attempts": 0, "error": _name(err)},
                        )
                    raise err from exc
                round_ = self._round_task = asyncio.get_running_loop().create_task(
                    self._shared_round(exc, first, elapsed, waited, ceiling),
                    name="le_transport recovery round",
                )
            else:
                # Joining a round another call started: once it is through, this call waits
                # what is left of its own ask (:meth:`_own_ask`). When that already ends at or
                # past its deadline, it is doomed whatever the round does: it gives up now, as
                # it would then, rather than wait through the round (and, its last waiter,
                # keep it alive for a re-login nobody uses).
                ask = _longest_pause(exc, ceiling)
                if ask > 0.0 and until is not None and self._clock.now() + ask >= until:
                    raise self._past_deadline(exc, ask, until, own=True) from exc
            try:
                if until is None:
                    # asyncio.wait, not a shield: only this caller's own cancellation raises
                    # here (the round goes on for the others); the round's end is read below.
                    await self._await_round(round_)
                else:
                    await self._wait_round(round_, exc, until, started)
            except asyncio.CancelledError:
                # This caller gave up (a cancelled call, a closed socket).
                if self._recovering_calls == 1 and self._left_alone is not round_:
                    # No other call waits: the round and the episode end here. Left open, its
                    # attempts and first failure would count against an unrelated failure
                    # hours later (and a deadline already passed would give that one up at
                    # once). Silently, unless a call recovered in it.
                    if self._succeeded and self._attempt:
                        self._end_recovered()
                    await self._stop_round(round_)
                raise
            if not round_.done():
                # Closed from inside the round, left to end alone: this call fails now.
                raise self._closed_error(exc) from exc
            if round_.cancelled():
                if self._closed:
                    # Stopped under us (the engine closed): said so, typed. (Told from this
                    # caller's own cancellation by where it is raised, not by the task's count
                    # of cancellation requests, which Python 3.11's TaskGroup can leave.)
                    raise self._closed_error(exc) from exc
                # Stopped by its last waiter as this call joined it (that one gave up): this
                # call is tried again, and starts a round of its own if it fails.
                return
            round_.result()  # its failure is this call's
        finally:
            self._recovering_calls -= 1

    async def _wait_round(
        self, round_: asyncio.Task[None], exc: Exception, until: float, started: float
    ) -> None:
        """Wait for ``round_`` as a call that must end by ``until``: it stops waiting as soon
        as the round schedules a pause that would end at or past it (``RecoveryFailed``), or
        when the time is up during a re-login (``DeadlineExceeded``)."""
        loop = asyncio.get_running_loop()
        while True:
            resume_at = self._resume_at
            if resume_at is not None and resume_at >= until:
                await self._leave_round(round_)
                raise self._past_deadline(exc, resume_at - self._clock.now(), until) from exc
            changed = self._rescheduled
            if changed is None or changed.done() or changed.get_loop() is not loop:
                changed = self._rescheduled = loop.create_future()
            timeout = timeout_after(self._clock, max(0.0, until - self._clock.now()))
            try:
                async with timeout:
                    # Neither the round nor the shared future is cancelled with this caller.
                    await self._await_round(round_, changed)
            except TimeoutError:
                if not timeout.expired:
                    raise
                await self._leave_round(round_)
                raise self._deadline_passed(exc, started) from exc
            if round_.done() or self._left_alone is round_:
                return  # its end (or the close) is read by the caller

    async def _await_round(self, round_: asyncio.Task[None], *also: asyncio.Future[None]) -> None:
        """Wait until ``round_`` ends, one of ``also`` is done, or the loop closes from inside
        ``round_`` (:meth:`close`: the round is left to end alone, its waiters stop waiting).
        With :func:`asyncio.wait`, not ``await``: neither the round nor a shared future is
        cancelled with this caller; only its own cancellation raises."""
        loop = asyncio.get_running_loop()
        release = self._release
        if release is None or release.done() or release.get_loop() is not loop:
            release = self._release = loop.create_future()
        if self._left_alone is round_:
            return
        await asyncio.wait({round_, release, *also}, return_when=asyncio.FIRST_COMPLETED)

    async def _leave_round(self, round_: asyncio.Task[None]) -> None:
        """A call stops waiting for ``round_`` (its deadline): with no other call waiting, the
        round stops and the episode ends, as when its last waiter is cancelled."""
        if self._recovering_calls != 1 or round_.done() or self._left_alone is round_:
            return  # (a round left to end alone is stopped by the close's task, not here)
        # Said before the round is stopped: a call failing meanwhile starts an episode of its
        # own, whose events must not come before this one's end. An episode a call recovered
        # in ends as such.
        if self._succeeded:
            self._end_recovered()
        else:
            self._state(
                logging.WARNING, "gave_up", {"reason": "deadline", "attempts": self._attempt}
            )
        await self._stop_round(round_)

    async def _stop_round(self, round_: asyncio.Task[None]) -> None:
        """Stop ``round_`` and end the episode, its last waiter gone. Detached first: a call
        failing while the round stops starts a round (and an episode) of its own, rather than
        joining the dying one (it was told the engine had closed) and having its episode
        wiped by the reset after."""
        if self._round_task is round_:
            self._round_task = None
        self._reset()
        # Not counted as waiting while it waits for the round to stop: a call that fails
        # meanwhile, starts a round and gives up too must know it is that round's last waiter
        # (counted, it left its round running for nobody, re-logging in for ever).
        self._recovering_calls -= 1
        try:
            await stop_task(round_)
        finally:
            self._recovering_calls += 1  # (the caller's own count, taken back in its finally)

    async def _shared_round(
        self, exc: Exception, first: float | None, elapsed: float, waited: float, ceiling: float
    ) -> None:
        """One round, run in a task of its own; its outcome is every waiter's."""
        try:
            await self._round(exc, first, elapsed, waited, ceiling)
        except asyncio.CancelledError:
            raise  # its last waiter gave up: no outcome to share
        except BaseException as final:
            self._final = final
            self._epoch += 1
            raise
        finally:
            if self._round_task in (None, asyncio.current_task()):
                # (Not once detached and replaced: the next round's pause is its own.)
                self._resume_at = None
        self._final = None
        self._epoch += 1

    def _elapsed(self, waited: float = 0.0) -> float:
        """The time since the episode's first failure; with no episode yet, what the failed
        call already ``waited`` on an open circuit (it failed first that long ago)."""
        first_failure = self._first_failure
        return waited if first_failure is None else self._clock.now() - first_failure

    def _plan(
        self, last: Exception, waited: float = 0.0, ceiling: float | None = None
    ) -> tuple[float | None, float]:
        """The pause before the next re-login after ``last`` (None: give up), and the time
        since the episode's first failure. ``waited``: what the call that starts the round
        waited on an open circuit since the last one (counted toward the pause);
        ``ceiling``: up to which a ``Retry-After`` ``last`` was asked counts (None: the
        request schedule's ``retry_after_ceiling``; a call's own, :meth:`run`)."""
        elapsed = self._elapsed(waited)
        if ceiling is None:
            ceiling = self._request_policy.retry_after_ceiling
        pause = self._next_pause(
            self._attempt + 1,
            elapsed,
            _longest_pause(last, ceiling),
            waited=waited,
        )
        return pause, elapsed

    def _wait_for(self, pause: float, waited: float, taken: float) -> float:
        """How long a round sleeps before a re-login planned ``pause`` after the last one (or
        after the failure), when the call that starts it already waited ``waited`` on an open
        circuit since: the rest of the pause, so the re-logins stay ``pause`` apart (the
        breaker waits and this sleep add up to it; the call's own runs in between only add).
        Never less than the request schedule's last pause, nor than ``taken``, the longest
        pause the failed call itself took: the guide's floor between a failure and its outer
        retry; nor than the policy's own ``floor`` (the re-logins' "never under 15 s", which a
        request schedule without pauses no longer kept: the round re-logged in at once after
        the breaker waits). So the re-login may come later than ``pause`` after the last."""
        if waited <= 0.0:
            return pause
        return min(
            pause,
            max(pause - waited, self._request_policy.last_pause, taken, self._policy.floor),
        )

    async def _round(
        self,
        exc: Exception,
        first: float | None,
        elapsed: float,
        waited: float = 0.0,
        ceiling: float | None = None,
    ) -> None:
        """Pause, then re-resolve and re-login, until one re-login succeeds (or give up).
        ``first``: the first pause, planned when the round was started (None: give up);
        ``waited``: what the call that started it already waited on an open circuit, counted
        toward that first pause (:meth:`_wait_for`); ``ceiling``: the ``Retry-After`` ceiling
        of the call that started it (:meth:`run`), for its failure ``exc`` (a re-login's
        failure after it is judged by the request schedule's)."""
        last: Exception = exc
        if ceiling is None:
            ceiling = self._request_policy.retry_after_ceiling
        if self._first_failure is None:
            self._first_failure = self._clock.now() - elapsed
        pause = first
        while True:
            if pause is None:
                self._give_up(last, elapsed)
            assert pause is not None
            self._attempt += 1
            sleep = self._wait_for(pause, waited, _longest_pause(last, ceiling))
            details: dict[str, object] = {
                "attempt": self._attempt,
                "pause": round(pause, 3),
                "error": _name(last),
            }
            if waited > 0.0:
                # Part of the pause already spent waiting on the circuit: the re-login comes
                # after the rest, ``sleep`` (no less than the floors of _wait_for: with one,
                # more than ``pause - waited``).
                details["waited"] = round(waited, 3)
                details["sleep"] = round(sleep, 3)
            self._state(logging.WARNING, "relogin_scheduled", details)
            waited = 0.0  # (only the first pause follows the breaker waits)
            self.pauses.append(pause)
            self._last_pause = pause
            generation = self._auth_generation()
            self._scheduled(sleep)
            try:
                await self._pause(sleep)
            finally:
                self._resume_at = None
            if self._closed:
                raise self._closed_error(last) from last
            # Marked in the round task's own context (a task's copy), for this re-login only:
            # the tasks it starts are inside the round while it runs (close()).
            running = self._relogin_running = _Relogin(asyncio.current_task())
            mark = _RELOGIN.set(weakref.ref(running))
            try:
                try:
                    await self._relogin(skip_login=self._auth_generation() != generation)
                finally:
                    _RELOGIN.reset(mark)
                    if self._relogin_running is running:
                        self._relogin_running = None
            except Exception as err:
                if self._closed:
                    # The session closed under the re-login: what it raised says only that.
                    raise self._closed_error(last) from err
                if not _relogin_recoverable(err):
                    self._reset()
                    self._state(
                        logging.ERROR, "gave_up", {"reason": "not recoverable", "error": _name(err)}
                    )
                    raise
                last = err
                ceiling = self._request_policy.retry_after_ceiling
                self._state(
                    logging.WARNING,
                    "relogin_failed",
                    {"attempt": self._attempt, "error": _name(err)},
                )
                pause, elapsed = self._plan(last)
                continue
            if self._closed:
                # Closed as the re-login ended: no call runs again on the closed session.
                raise self._closed_error(last) from last
            return

    def _scheduled(self, pause: float) -> None:
        """Note that the round waits ``pause`` from now, and tell the calls with a deadline
        waiting for it (they check whether they can wait that long)."""
        self._resume_at = self._clock.now() + pause
        changed = self._rescheduled
        if changed is not None:
            self._rescheduled = None
            if not changed.done():
                changed.set_result(None)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` on the clock, or until :meth:`close`, whichever comes first."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        stop = self._stop
        if stop is None or stop.get_loop() is not loop:
            stop = self._stop = loop.create_future()
        try:
            async with timeout_after(self._clock, seconds):
                # asyncio.wait, not await: the timeout's cancellation must not cancel the
                # future every later pause shares.
                await asyncio.wait({stop})
        except TimeoutError:
            pass

    def _past_deadline(
        self, last: Exception, pause: float, until: float, *, own: bool = False
    ) -> RecoveryFailed:
        """A call gives up because the next pause would end at or past its deadline (as the
        request schedule gives up rather than pause past one): logged, to raise. ``own``: the
        pause is the call's own wait after a round (:meth:`_own_ask`), not one before a
        re-login, and the message says so."""
        left = max(0.0, until - self._clock.now())
        what = (
            "wait its own answers still ask for after the re-login (a Retry-After, or its "
            "longest pause, counted from its failure)"
            if own
            else "pause before the next re-login"
        )
        err = RecoveryFailed(
            f"{self._subject}: gave up recovering: a {pause:.3g} s {what} would pass the "
            f"call's deadline ({left:.3g} s left); last error: {last}",
            last=last,
        )
        _log.warning(
            "%s",
            err,
            extra={"subject": self._subject, "error": _name(last), "pause": round(pause, 3)},
        )
        return err

    def _deadline_passed(self, last: Exception, started: float) -> DeadlineExceeded:
        """A call's deadline passed while it waited for a re-login in progress: logged."""
        where = (
            {"service": last.service, "method": last.method, "url": last.url}
            if isinstance(last, RequestError)
            else {}
        )
        err = DeadlineExceeded(
            f"{self._subject}: the call's deadline passed while it waited for a re-login; "
            f"last error: {last}",
            elapsed=self._clock.now() - started,
            attempts=last.attempts if isinstance(last, RequestError) else (),
            **where,
        )
        _log.warning("%s", err, extra={"subject": self._subject, "error": _name(last)})
        return err

    def _closed_error(self, last: BaseException) -> RecoveryFailed:
        return RecoveryFailed(
            f"{self._subject}: the recovery loop was closed (its engine closed) while the call "
            f"waited to recover; last error: {last}",
            last=last,
        )

    def _next_pause(
        self,
        attempt: int,
        elapsed: float,
        taken: float = 0.0,
        rand: float | None = None,
        waited: float = 0.0,
    ) -> float | None:
        """The pause before re-login ``attempt``; ``taken``: the longest pause the failure it
        follows already waited, or a ``Retry-After`` it was asked (:func:`_longest_pause`);
        ``rand``: the jitter's draw (None: the loop's own);
        ``waited``: how much of it was already spent on an open circuit (the round sleeps only
        the rest, :meth:`_wait_for`: the policy's deadline is checked against the re-login's
        time). None: give up."""
        draw = self._rng.random() if rand is None else rand
        pause = self._policy.next_delay(attempt, max(0.0, elapsed - waited), draw)
        if pause is None:
            return None
        # Jitter must not make a pause shorter than the one before it, and no outer pause is
        # shorter than the request schedule's last (the guide: "a longer interval than the
        # previous one"), nor than what the failed call actually waited: a Retry-After it
        # honoured, or a schedule of its own (retry=) longer than the engine's; nor than the
        # Retry-After of the answer that ended its schedule. Such a floor above the drawn pause
        # is spread above by up to the policy's jitter (the draw's share of it), as the request
        # schedule spreads a Retry-After above the ask: taken as it is, every client of a
        # fleet told the same Retry-After re-logged in at the one instant it named.
        least = max(self._request_policy.last_pause, taken)
        if pause < least:
            spread = least * (1.0 + self._policy.jitter * clamp_draw(draw))
            pause = spread if math.isfinite(spread) else least
        pause = max(pause, self._last_pause)
        deadline = self._policy.deadline
        sleep = self._wait_for(pause, waited, taken)
        if deadline is not None and elapsed + sleep > deadline:
            return None
        return pause

    def _auth_generation(self) -> int | None:
        generation = getattr(self._auth, "generation", None)
        return generation if isinstance(generation, int) else None

    async def _relogin(self, *, skip_login: bool = False) -> None:
        """Re-resolve the domains and log in afresh.

        ``skip_login``: a login already succeeded during the pause (a socket re-authenticating
        after 4401, a 401 replay): its credentials are fresh, so another login would only add
        load; the call is simply tried again with them.
        """

        async def step(role: str, provider: object, operation: str) -> None:
            # Typed as on a call's path: the provider's own outage (its network call failing)
            # is a ConnectionFailed the round waits out; anything else a final ProviderError.
            try:
                await getattr(provider, operation)()
            except TransportError:
                raise
            except Exception as exc:
                raise provider_failed(role, provider, operation, exc) from safe_cause(exc)

        await step("domain", self._domains, "invalidate")
        if callable(getattr(self._domains, "refresh", None)):
            await step("domain", self._domains, "refresh")
        if skip_login:
            _log.info(
                "%s: a login succeeded during the pause; not logging in again",
                self._subject,
                extra={"subject": self._subject},
            )
            return
        if callable(getattr(self._auth, "relogin", None)):
            self.relogins += 1
            await step("auth", self._auth, "relogin")

    def _give_up(self, last: Exception, elapsed: float) -> None:
        attempts = self._attempt
        self._reset()
        self._state(
            logging.ERROR,
            "gave_up",
            {"attempts": attempts, "elapsed": round(elapsed, 3), "error": _name(last)},
        )
        raise RecoveryFailed(
            f"{self._subject}: gave up recovering after {attempts} re-login attempt(s) in "
            f"{elapsed:.0f} s (the outer backoff policy's attempts or deadline ran out); "
            f"last error: {last}",
            last=last,
        ) from last

    def _episode_ended(self, exc: BaseException) -> None:
        """The last call that went through the episode ended with ``exc``, neither a success
        nor the loop giving up (a 404 after the re-login, a cancellation): the episode ends
        with it. Left open, its attempts, first failure and last pause would count against an
        unrelated failure hours later, which would wait longer, or give up at once against a
        deadline long passed."""
        if self._attempt == 0 or self._recovering_calls:
            return  # already ended (gave up, closed, recovered), or another call recovers
        if self._succeeded:
            self._end_recovered()  # a call recovered in it (_recovered)
            return
        attempts = self._attempt
        self._reset()
        if isinstance(exc, Exception):
            # As when a re-login meets an error the loop cannot help with; a cancellation
            # ends the episode silently, as one in the middle of a round does. The call's own
            # deadline (a pause it could not wait, or its time up) is said as such.
            reason = (
                "deadline"
                if isinstance(exc, (RecoveryFailed, DeadlineExceeded))
                else "not recoverable"
            )
            self._state(
                logging.WARNING,
                "gave_up",
                {"reason": reason, "attempts": attempts, "error": _name(exc)},
            )

    def _recovered(self) -> None:
        if self._attempt == 0:
            return
        round_ = self._round_task
        if round_ is not None and not round_.done():
            # Another call waits in a later round of the episode (it failed again after the
            # re-login this one recovered with): the episode goes on, its pauses still
            # growing (planned afresh they would shrink while that call's failure lasts),
            # and ends with "recovered" when the last of them is through, unless the loop
            # gives up.
            self._succeeded = True
            return
        self._end_recovered()

    def _end_recovered(self) -> None:
        """End the episode with "recovered": a call through it succeeded."""
        attempts = self._attempt
        now = self._clock.now()
        first_failure = self._first_failure
        # (0.0 is a time: a virtual clock's start, not "no first failure".)
        elapsed = now - (now if first_failure is None else first_failure)
        self._reset()
        self._state(logging.INFO, "recovered", {"attempts": attempts, "elapsed": round(elapsed, 3)})

    def _state(self, level: int, name: str, details: dict[str, object]) -> None:
        emit_state(self._hooks, _log, level, StateEvent(name, self._subject, details))

    def _reset(self) -> None:
        self._episode += 1
        self._episode_calls = 0
        self._attempt = 0
        self._succeeded = False
        self._first_failure = None
        self._last_pause = 0.0

    def __repr__(self) -> str:
        return f"Recovery(policy={self._policy!r}, attempt={self._attempt})"


def _may_repeat(exc: BaseException, ledger: CallLedger) -> bool:
    """The rule (module docstring): whether :meth:`Recovery.run` may run its callable again
    after it failed with ``exc``, by the failure's verdict and what the run's ``ledger``
    saw."""
    verdict = repeat_of(exc)
    if verdict is Repeat.FINAL:
        return False
    if not ledger.recorded:
        # No call seen (a direct login, a socket's dial, requests the ledger cannot see):
        # the failure alone says.
        return verdict is Repeat.RETRYABLE
    if not ledger.may_resend():
        return False
    # A failure only a request that was not idempotent would not repeat, and that came out
    # of no call the ledger saw (a request on a session it cannot see): nothing says the
    # request was not acted on.
    return verdict is Repeat.RETRYABLE or ledger.vouches(exc)


def _left_running(exc: E, subject: str) -> E:
    """The error to raise after a round, saying why ``exc`` is: a call the run left running,
    not idempotent, was sent (or is still in flight) while the loop paused.

    ``exc`` itself is never changed: the same object may be raised to other callers (a
    :class:`~le_transport.providers._flight.SingleFlight` raises one login's failure to every
    waiter), and a note on it would show on their errors too. The note goes on a copy of the
    same type, with the same attributes, cause and traceback (:func:`_own_copy`); an error
    that cannot be copied is raised as it is, without the note (the WARNING says it)."""
    why = (
        f"{subject}: not run again after the re-login: a call the failed run left running "
        "(not idempotent) was sent meanwhile, or is still in flight, and may have been acted on"
    )
    _log.warning("%s; raising %s", why, _name(exc), extra={"subject": subject})
    copy = _own_copy(exc)
    if copy is None:
        return exc
    copy.add_note(why)
    return copy


def _own_copy(exc: E) -> E | None:
    """A copy of ``exc`` of its own type, made without calling its ``__init__`` (whose
    keyword-only fields ``copy.copy`` cannot pass): the same ``args``, attributes, notes (a
    list of its own), cause, context and traceback. None if the type cannot be made so."""
    cls = type(exc)
    try:
        copy = cls.__new__(cls, *exc.args)
        copy.__dict__.update(vars(exc))
    except Exception:  # a type whose __new__ wants other arguments, or has no __dict__
        return None
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        copy.__notes__ = list(notes)
    copy.__cause__ = exc.__cause__
    copy.__context__ = exc.__context__
    copy.__suppress_context__ = exc.__suppress_context__
    return copy.with_traceback(exc.__traceback__)


def _running_task() -> asyncio.Task[object] | None:
    """The task running now, or None (no loop running: a close from synchronous code)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _inside(round_: asyncio.Task[None], running: _Relogin | None) -> bool:
    """Whether the code running now is inside ``round_``: its own task, or a task its re-login
    in progress (``running``) started (that re-login's mark copied with its context,
    :data:`_RELOGIN`), as a task the re-login waits for. A task an earlier re-login of the
    round started, or one started while the round paused, is not: nothing of the round waits
    for it."""
    if round_ is _running_task():
        return True
    if running is None or running.round is not round_:
        return False
    started_in = _RELOGIN.get()
    return started_in is not None and started_in() is running


def _stop_left(round_: asyncio.Task[None]) -> None:
    """Cancel a round left to end alone (:meth:`Recovery.close` from a task it started) once
    that task is done: its re-login must not outlive the close."""
    if not round_.done():
        round_.cancel()


def _outcome_read(task: asyncio.Task[None]) -> None:
    """Read the outcome of a round no call waits for any more (left to end alone by a close
    from inside it): its closed error is no "exception never retrieved"."""
    if not task.cancelled():
        task.exception()


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _longest_pause(exc: BaseException, ceiling: float) -> float:
    """The longest pause the failed call took between its attempts, or a ``Retry-After`` one
    of its answers asked for (cut to ``ceiling``: the call's own ``retry=`` policy's
    ``retry_after_ceiling`` when it passed one, else the engine's) if longer (0 if none, or
    if it is no request error): what its schedule, or the server, made it wait. The answer
    that ended the schedule is waited for by no pause of its own: its ask (a 503's
    ``Retry-After: 50`` after pauses of 1, 2 and 3 s) was ignored, and the outer retry
    re-sent the call sooner than the server asked."""
    if not isinstance(exc, RequestError):
        return 0.0
    longest = 0.0
    for record in exc.attempts:
        if record.pause is not None and record.pause > longest:
            longest = record.pause
        asked = record.outcome.retry_after
        if asked is not None and min(asked, ceiling) > longest:
            longest = min(asked, ceiling)
    return longest
