"""Overload protection in the retry loop: the retry budget and the circuit breaker, per service.

:class:`OverloadGuard` is the retry middleware's ``gate``: the retry loop asks it before every
attempt (:meth:`~OverloadGuard.admit`: is the breaker for this service and host open?), tells it
how every attempt ended (:meth:`~OverloadGuard.settle`), and asks it before every pause
(:meth:`~OverloadGuard.before_retry`: does the budget allow a retry, and will the breaker let it
through when the pause ends?).

Why inside the retry loop, and in this order (docs/architecture.md has the picture):

- The breaker is asked **per attempt**, inside the call's deadline and before the per-attempt
  timeout starts: a refused attempt sends nothing, costs no timeout and is not an attempt of the
  5/10/15 s schedule; the call fails at once with :class:`~le_transport.errors.CircuitOpen`
  carrying ``retry_at``. A caller's deadline shorter than the break therefore fails fast, it
  does not sit out its deadline.
- Before a pause, a breaker that will still be open when the pause ends refuses the retry now
  (``CircuitOpen``) instead of burning the pause on an attempt that will be refused.
- Then the **budget**: a retry it does not allow fails the call at once with
  :class:`~le_transport.errors.RetryBudgetExhausted` carrying the last error; first attempts
  are what pay for retries, so they are counted as they are admitted. A retry is paid before
  the pause and given back if it is never sent (the caller cancelled in the pause, the call cut
  by its deadline or the engine's close, the breaker refusing it after the pause): to the slot
  of the window it was taken in, only while that slot is in the window and counts one.
- Every attempt's outcome feeds the breaker; only 5xx, 429 and transport failures (timeouts
  included) count as failures. An attempt the call's deadline cuts, with no answer, is a timeout
  too once it ran the breaker's ``slow_call`` (5 s) or longer (:meth:`OverloadGuard.cut`): a
  service that never answers opens the circuit even when every caller's deadline is shorter
  than the attempt timeout. Cut sooner, it gives no verdict (a caller's short deadline says
  nothing of the service). The breaker decides at once; what the fleet's store must hear is
  sent by a task, so the caller's ``DeadlineExceeded`` never waits for it.

Shared through a :class:`~le_transport.state.StateStore` (Redis), a fleet shares the budget (one
window for every process) and the breaker's trips: a process that opens its breaker publishes the
break, the others adopt it at their next sync, and in half-open one probe goes for the whole fleet.
A fleet probe is bounded by its lock (the fleet's probe lock, never renewed): the lock is held
for the probe's own bound (its attempt timeout or deadline) and a margin if that is longer than
the probe lease, at most the longest break; a probe with no bound of its own (or a longer one)
is cut by the retry loop (``limit_attempt``) a margin before the lease ends, a timeout that is
its failure verdict, published before the lock is freed: no second probe goes, in another
process, while it is out.
The trip is kept for the break and then the probe lease, so a process that missed the break (no
call during it, or started after it) goes half-open when it ends, not closed; the process that
takes the fleet's probe lock reads the trip again before probing (a probe that just failed has
published a new break); a probe cancelled, or cut by its caller's deadline before the breaker's
``slow_call``, frees the lock at once (one cut later is a failure verdict, published as a
timed-out probe's, and frees the lock after it; cancelled while the guard still admits it, as
the shared budget answers, too; and cancelled while the lock is taken or freed: the store may
have run the command whose reply never came, so its value is compared-and-deleted, which is
harmless if it never landed). A probe stuck past its
lease, its lock gone with it and a newer probe out, here or in another process, neither frees
the newer one's slot or lock nor decides when it ends at last (its process reads the lock first:
held with another value, it is another process's probe's). A trip entry asking a
longer break than this process's breaker ever takes (:attr:`CircuitBreaker.longest_break` plus
its probe lease) is adopted for that long only, from the first read of that entry. With a store,
``account`` is required: guards of several accounts left on one default shared one breaker per
service and host. A process that has
not read the trip yet may open on its own failures and publish a break of its own meanwhile: the
prober rewrites the trip's half-open tail only if the entry is still the one it read
(compare-and-set: a new break found instead is adopted, no probe goes), and its success replaces
only that entry (compare-and-set), so the fleet's newest break is never lost; each entry carries a
mark of its own, as two breaks may otherwise read alike. What a success writes is the fleet's
closed mark, kept for the probe lease (or ``sync_interval`` if longer): the processes half-open on
the break read it at their next sync and close too, and one that takes the probe lock finds it and
sends an ordinary attempt, not a probe (a deleted entry told them nothing: each sent a probe of its
own, one at a time through the lock, refusing calls meanwhile). A close older than a process's own
break is no verdict on it: that process probes. Nor does a process that has not read the trip
shorten the fleet's break, or start its escalation over, when it publishes its own: it reads the
trip first, takes a break still on there that ends no sooner or counts more openings as its own
(its failures, of attempts admitted before it knew of that break, neither lengthen it nor add an
opening), and otherwise publishes, after the fleet's count of openings if that is higher, only over
the entry it read (compare-and-set, or set-if-absent). Redis stays off the happy path: first
attempts are counted locally and sent in batches every ``flush_interval``, the trip marker is read
at most every ``sync_interval``; what that trades away is that the fleet sees a process's first
attempts (and trips) up to those intervals late. A batch is sent only within the slot of the
budget's window its first attempts were made in (the store counts a deposit in the slot it arrives
in); what is still held when that slot ends is dropped. So, on a store that keeps the guard's clock
(MemoryStore), batching only ever makes the budget stricter, never looser. Redis counts on its own
clock, whose slot boundaries are not the guard's: a batch sent within its slot here may land in the
next slot there, so the fleet's budget may be looser by at most one slot's worth of first attempts
(a tenth of the window by default); sending each first attempt at once (``flush_interval=0``)
removes that, at a Redis round trip per call.

The breakers are kept per service and host, and hosts may come from outside (a domain source, a
caller's input): the guard keeps at most ``max_breakers`` of them (:data:`DEFAULT_MAX_BREAKERS`).
When a new host would pass the cap, it first forgets every idle breaker
(:meth:`CircuitBreaker.is_idle`: closed, no recent failure, no probe out; a fresh breaker decides
as it would); only if that frees less than an eighth of the cap does it forget others, with a
warning: the least recently used closed ones with recent failures, and only then the least
recently used open or half-open ones (one forgotten lets its host be tried early; on a shared
store, the fleet's trip marker brings it back at the next sync). The per-service counts of first
attempts waiting for a batch are bounded by the same cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._checks import require_kind, require_option
from .._redact import redact_text
from ..clock import Clock, RealClock, timeout_after
from ..errors import CircuitOpen, ConfigurationError, RequestError, RetryBudgetExhausted
from ..events import EventHooks, StateEvent, emit
from ..policies._validate import finite_number
from ..policies.breaker import BreakerState, BreakerStatus, CircuitBreaker
from ..policies.budget import RetryBudget
from ..policies.classify import Outcome, OutcomeKind
from ..state.fallback import FallbackStore, guarded
from ..state.memory import MemoryStore
from ..state.store import (
    MAX_TTL,
    Entry,
    StateStore,
    check_seconds,
    check_store_calls,
    state_key,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aiohttp import ClientRequest
    from yarl import URL

__all__ = [
    "DEFAULT_BREAKER",
    "DEFAULT_BUDGET",
    "DEFAULT_MAX_BREAKERS",
    "GatedCall",
    "OverloadGuard",
    "RetryGate",
]

_log = logging.getLogger("le_transport.overload")

#: The defaults, with their reasons in :mod:`le_transport.policies.budget` and ``.breaker``.
DEFAULT_BUDGET = RetryBudget()
DEFAULT_BREAKER = CircuitBreaker()
#: How many (service, host) breakers a guard keeps by default, and how many services' batched
#: first attempts. A bot calls a few dozen LiveEngage hosts; 4,096 leaves room for any real
#: deployment while a flood of made-up hosts costs at most a few MB (a closed breaker's status is
#: two tuples of ``slots`` ints). See the module's description for what is forgotten first.
DEFAULT_MAX_BREAKERS = 4096
#: How many forgotten breakers a warning names (the others are counted).
_EVICTED_NAMED = 5
_CLOSED = BreakerState.CLOSED
#: The most openings a process takes from the fleet's trip entry: a break stops growing long
#: before (2 min after six at the defaults), and a damaged entry's huge count must not make
#: the next break's arithmetic (one step per opening) run for ever.
_MAX_ADOPTED_OPENS = 10_000
#: The namespace of a guard's keys without a shared store (nothing else reads them).
_LOCAL_ACCOUNT = "local"
#: How much of a damaged trip entry a warning shows.
_DAMAGED_SHOWN = 40
#: Near the end of a slot of the budget's window, first attempts held back for the shared
#: budget are sent sooner than every ``flush_interval`` (what is held when the slot ends is
#: dropped, _Batch), but never more often than 16 times as often: at most four more sends per
#: slot (the gaps halve from ``flush_interval`` down to a sixteenth of it).
_FLUSH_STEPS = 16
#: How often a probe about to go reads the fleet's trip: again after a compare-and-set of its
#: half-open tail finds it changed (a new break: adopted at the second read); a trip changing at
#: every read refuses the attempt.
_TRIP_READS = 2

#: The outcome of an attempt cut by its call's deadline after the breaker's ``slow_call``
#: (:meth:`OverloadGuard.cut`): the timeout a per-attempt timeout gives, named for its cause.
_SLOW_CUT = Outcome.failure(OutcomeKind.TIMEOUT, "DeadlineExceeded")

#: Abandoned probes' fleet locks kept per breaker for this process to free (the newest: each
#: one's lease frees it anyway, the oldest's first). More than one: a probe stuck past its
#: lease and the newer one that took its slot may both be abandoned while the store fails.
_STALE_LOCKS_KEPT = 4
#: How often a process that opened its breaker reads the fleet's trip to publish its break: again
#: after the conditional write finds the entry changed since it was read (another process
#: published meanwhile: the next read adopts that break or writes over it, as it decides); a trip
#: changing at every read is left as it is, and the process keeps its own break.
_PUBLISH_READS = 3


class _FleetClosed:
    """What the fleet's trip entry holds once the fleet's probe succeeded (its closed mark):
    the fleet's breaker closed at ``at`` (this process's clock, read from the entry's TTL)."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class _ProbeVerdict:
    """A fleet probe's failure verdict, as its break is published (:meth:`OverloadGuard._publish`):
    the trip entry the probe was admitted on (``seen``), when the verdict was recorded (``at``),
    the probe's lock (``lock``) and the end of its slot's lease (``until``)."""

    __slots__ = ("at", "lock", "seen", "until")

    def __init__(self, seen: str | None, at: float, lock: str, until: float | None) -> None:
        self.seen = seen
        self.at = at
        self.lock = lock
        self.until = until


class _Damaged(ValueError):
    """A trip entry that is not one, with the reason a warning may show (never the entry)."""


class GatedCall(Protocol):
    """What the retry loop tells a gate about the call in progress."""

    @property
    def service(self) -> str:
        """The service name (or the host, on a foreign session)."""
        ...

    @property
    def method(self) -> str:
        """The HTTP method."""
        ...

    @property
    def url(self) -> str:
        """The redacted URL."""
        ...

    @property
    def request(self) -> ClientRequest:
        """The aiohttp request (its URL names the host)."""
        ...


def is_retry_gate(value: object) -> bool:
    """Whether ``value`` answers the retry loop's questions (an :class:`OverloadGuard` does)."""
    return all(
        callable(getattr(value, name, None))
        for name in ("admit", "settle", "abandon", "before_retry")
    )


class RetryGate(Protocol):
    """The retry loop's questions to overload protection (see the module's description).

    A gate may also bound the attempt it admits: its ``admit`` calls the call's
    ``limit_attempt(until)`` (optional: a call without it is not bounded), and the retry loop
    cuts that attempt once the clock reaches ``until``, as an attempt timeout (a TIMEOUT
    outcome, settled as any), unless its own timeout or the call's deadline ends it sooner. The
    overload guard bounds a fleet's half-open probe so, by its probe lock's lease.

    One more is optional: ``cut(call, attempt, ran)``, told (never awaited: the caller's
    error is due now) of an admitted attempt that the call's deadline cut after ``ran``
    seconds with no answer (:meth:`OverloadGuard.cut`); a gate without it has that attempt
    abandoned (:meth:`abandon`), as every such attempt was before, and so does one whose
    ``cut`` raises (logged by the error's type; the caller still gets its DeadlineExceeded)
    or returns a coroutine (an ``async def cut``: nothing awaits it; logged)."""

    async def admit(self, call: GatedCall, attempt: int) -> RequestError | None:
        """Before an attempt: None to let it go, or the error that fails the call now."""
        ...

    async def settle(self, call: GatedCall, attempt: int, outcome: Outcome) -> None:
        """An admitted attempt ended with ``outcome``."""
        ...

    def abandon(self, call: GatedCall, attempt: int) -> None:
        """An admitted attempt ended without an outcome (cancelled): forget it. Or an attempt
        not admitted yet, whose retry :meth:`before_retry` granted, will not be sent (the pause
        was cut): give that retry back."""
        ...

    async def before_retry(
        self, call: GatedCall, attempt: int, outcome: Outcome, pause: float, last: RequestError
    ) -> RequestError | None:
        """Before pausing for a retry: None to go on, or the error that fails the call now."""
        ...


def _host_of(call: GatedCall) -> str:
    url = call.request.url
    return f"{url.host}:{url.port}" if url.port is not None else str(url.host)


#: How many (service, host, port) breaker keys a guard keeps before starting over, at least
#: (never fewer than it keeps breakers: with more hosts in use than keys, every call would
#: format its key anew).
_KEYS_KEPT = 1024


class _Successes:
    """Successes of a closed breaker in one slot of its window, not yet in its status.

    A success in a closed breaker only adds one to the newest slot's count; counting them here
    and recording them together (:meth:`CircuitBreaker.record_successes`) when the slot
    changes or before anything else reads the status spares every successful attempt a new
    :class:`BreakerStatus` and its tuples, with the same status whenever it is read.
    """

    __slots__ = ("at", "count", "slot", "until")

    def __init__(self, slot: int, at: float, until: float) -> None:
        self.slot = slot
        self.at = at
        #: Every time from ``at`` up to this one is in ``slot`` (CircuitBreaker.slot_end).
        self.until = until
        self.count = 1


class _Batch:
    """A service's first attempts held back from the shared budget, and when it last sent some.

    The store counts a deposit in the slot of the budget's window it arrives in, so a count
    sent after its own slot ended would pay for retries one slot or more longer than the first
    attempt it stands for: sent at the next first attempt after a quiet spell, 30 s late, it
    paid for a whole new window. So what is held is in one slot (``slot``, from ``at`` up to
    ``until``) and is sent while that slot lasts; once it has ended, it is dropped. The shared
    budget then counts every first attempt in its own slot or not at all: batching only ever
    makes it stricter than counting each at once. (How much is dropped is kept small by
    sending sooner as the slot's end nears: OverloadGuard._deposit.)
    """

    __slots__ = ("at", "count", "sent_at", "slot", "until")

    def __init__(self) -> None:
        self.count = 0
        self.slot = 0
        self.at = 0.0
        self.until = -math.inf
        self.sent_at = -math.inf

    def held(self, now: float, budget: RetryBudget) -> int:
        """What is held, if its slot still holds ``now``; else nothing (its slot ended: the
        counts are dropped, never counted in a later slot)."""
        if self.count and not (self.at <= now < self.until or self.slot == budget.slot_of(now)):
            self.count = 0
        return self.count

    def start(self, now: float, budget: RetryBudget) -> None:
        """Begin a batch (nothing held) in the slot holding ``now``."""
        self.slot = budget.slot_of(now)
        self.at = now
        self.until = budget.slot_end(self.slot)


class _Grant:
    """A retry the budget granted before its pause (:meth:`OverloadGuard.before_retry`), its
    attempt not yet admitted: the call it is for, the service, when it was taken (the guard's
    clock) and whether the shared store took it (not a FallbackStore's local stand-in)."""

    __slots__ = ("at", "call", "service", "shared")

    def __init__(self, call: GatedCall, service: str, at: float, shared: bool) -> None:
        self.call = call
        self.service = service
        self.at = at
        self.shared = shared


#: What a probe's own bound is taken with, as a share of the lease (a second by default), and
#: at least: its attempt timeout fires, and the probe is settled, a moment after its
#: admission's time plus that bound (the clock's wheel rounds a timer up to its 10 ms slot, and
#: the loop may lag: a short lease's share alone let a second probe through).
_PROBE_HOLD_MARGIN = 1 / 30
_PROBE_HOLD_LEAST_MARGIN = 0.05
#: How long before its lock's lease ends a fleet probe is cut, as a share of the lease, and at
#: least (_fleet_probe_margin).
_FLEET_PROBE_MARGIN = 0.1
_FLEET_PROBE_LEAST_MARGIN = 1.0


def _own_bound(call: GatedCall) -> float | None:
    """The bound of ``call``'s attempt of its own: the shorter of its attempt timeout and its
    call's deadline (the retry loop cuts it at either, and tells the gate); None if it has
    neither (a policy without them, or a call that tells nothing of its policy)."""
    policy = getattr(call, "policy", None)
    bounds = [
        bound
        for bound in (getattr(policy, "attempt_timeout", None), getattr(policy, "deadline", None))
        if isinstance(bound, (int, float)) and finite_number(bound) and bound > 0
    ]
    return float(min(bounds)) if bounds else None


def _fleet_probe_margin(breaker: CircuitBreaker) -> float:
    """How long before its fleet lock's lease ends a fleet probe is cut: a tenth of the lease,
    at least a second (the probe's verdict, a break published, then the lock deleted, must reach
    the store before the lease ends), and at most half the lease (a breaker scaled down for a
    test or a demo)."""
    lease = breaker.probe_lease
    return min(max(lease * _FLEET_PROBE_MARGIN, _FLEET_PROBE_LEAST_MARGIN), lease / 2)


def _fleet_probe_hold(call: GatedCall, breaker: CircuitBreaker) -> tuple[float, float]:
    """How long the fleet's probe lock is taken for ``call``'s probe (its lease), and how long
    after its admission the probe is cut at the latest (the lease less
    :func:`_fleet_probe_margin`): a fleet probe never outlives its lock, so that no second
    probe goes, in another process, while it is out.

    A probe with no bound of its own holds the breaker's ``probe_lease``, and is cut before it
    ends. One with a bound (:func:`_own_bound`) holds the lock until that bound and the margin
    have passed, if that is longer than the lease (its own timeout then ends it first, as
    without a fleet), but never past the longest break (a probe with a longer bound is cut
    before that ends): cut at the lease, a probe with a 60 s attempt timeout to a service slow
    by design failed every time, and the fleet's breaker never closed."""
    lease = breaker.probe_lease
    margin = _fleet_probe_margin(breaker)
    bound = _own_bound(call)
    hold = lease
    if bound is not None:
        hold = max(lease, min(bound + margin, max(lease, breaker.longest_break)))
    return hold, hold - margin


def _probe_hold(call: GatedCall, breaker: CircuitBreaker) -> float:
    """How long the half-open slot is kept for ``call``'s probe: the breaker's lease, or longer
    when the probe's attempt has a bound of its own (the shorter of its attempt timeout and its
    call's deadline: the retry loop cuts it at either, and tells the gate) beyond it, by which
    it will surely have reported; never past the longest break (a stuck probe with a long
    deadline does not shut its host for longer than a break). Read from the attempt timeout
    alone, a probe with a 60 s one and a 10 s deadline held the slot 61 s: every other caller
    was told to come back a minute later (``CircuitOpen.retry_at``)."""
    bound = _own_bound(call)
    lease = breaker.probe_lease
    if bound is None:
        return lease
    margin = max(lease * _PROBE_HOLD_MARGIN, _PROBE_HOLD_LEAST_MARGIN)
    return max(lease, min(float(bound) + margin, breaker.longest_break))


def _has_ended(call: GatedCall) -> bool:
    """Whether the retry loop running ``call`` has ended (its CallContext says so: ``active``
    False once a loop has run it); False when the call tells nothing of it."""
    ctx = getattr(call, "ctx", None)
    return getattr(ctx, "active", None) is False


class OverloadGuard:
    """The retry budget per service and the circuit breaker per service and host.

    - ``budget``: a :class:`RetryBudget` (default: 10% + 0.1/s over 30 s; None: no budget).
    - ``breaker``: a :class:`CircuitBreaker` (default: 75% of 20 attempts over 30 s, breaks
      of 5 s doubling to 2 min; None: no breaker).
    - ``store``: where the fleet shares them (a :class:`~le_transport.state.RedisStore`, wrapped
      in a :class:`~le_transport.state.FallbackStore` if it is not one); None: this process only.
      With a breaker, its ``set`` must take ``only_if`` (compare-and-set): a store written to
      the protocol before it (``set(key, value, *, ttl)``) is a
      :class:`~le_transport.errors.ConfigurationError` here, saying what to add, rather than
      a TypeError at the fleet's first probe or a silent return to the race that lost breaks
      (:func:`~le_transport.state.store.check_store_calls` has why). Any store method that
      cannot be called as the protocol says is refused here alike.
    - ``account``: the namespace of the shared keys: the LivePerson account (site) id. Required
      with a ``store`` (a :class:`~le_transport.errors.ConfigurationError` without it): the
      shared budget and breakers are per account, and guards of several accounts (brands)
      left on one default would share one breaker per service and host, one account's 429s
      opening the circuit for the others. Without a store it is not needed.
    - ``clock``, ``rng``: time and the breaks' jitter; ``hooks``: ``on_state`` gets
      ``circuit_open`` (``retry_in``, ``opens``, and ``adopted``: whether the break is the
      fleet's, taken instead of this process's own or read from the fleet's trip at a sync or
      a probe, once per break; a WARNING is logged alike), ``circuit_closed`` (``adopted``: whether
      it is the fleet's close, another process's probe having succeeded) and
      ``retry_budget_exhausted``.
    - ``flush_interval``: seconds between batched sends of first-attempt counts to the store
      (counts still held when their slot of the budget's window ends are dropped, never sent
      late: see the module's description).
    - ``sync_interval``: seconds between reads of the fleet's breaker trips. Both intervals are
      finite numbers >= 0 (an int past float's range included is refused), else
      :class:`~le_transport.errors.ConfigurationError`.
    - ``max_breakers``: how many (service, host) breakers it keeps (default
      :data:`DEFAULT_MAX_BREAKERS`), and how many services' batched first attempts. Idle
      breakers are forgotten first, then the least recently used closed, then open ones (with
      a warning); see the module's description. An int >= 1, else
      :class:`~le_transport.errors.ConfigurationError`.

    One guard serves every call of an engine; give it to ``Engine(overload=...)``.
    """

    def __init__(
        self,
        *,
        budget: RetryBudget | None = DEFAULT_BUDGET,
        breaker: CircuitBreaker | None = DEFAULT_BREAKER,
        store: StateStore | None = None,
        account: str | None = None,
        clock: Clock | None = None,
        hooks: EventHooks | None = None,
        rng: random.Random | None = None,
        flush_interval: float = 1.0,
        sync_interval: float = 1.0,
        max_breakers: int = DEFAULT_MAX_BREAKERS,
    ) -> None:
        # Checked here, by name: a wrong kind would otherwise fail on the first call's attempt.
        for name, value, kind in (
            ("budget", budget, RetryBudget),
            ("breaker", breaker, CircuitBreaker),
            ("store", store, StateStore),
            ("clock", clock, Clock),
            ("hooks", hooks, EventHooks),
            ("rng", rng, random.Random),
        ):
            require_kind(value, kind, owner="OverloadGuard", field=name)
        require_option(
            isinstance(max_breakers, int)
            and not isinstance(max_breakers, bool)
            and max_breakers > 0,
            max_breakers,
            owner="OverloadGuard",
            field="max_breakers",
            wants="an int >= 1",
        )
        if store is not None:
            # A store of the caller's written to an older protocol (set without only_if) is
            # refused here, with what to add, not at the fleet's first probe with a TypeError.
            check_store_calls(
                "OverloadGuard",
                "store",
                store,
                breaker=breaker is not None,
                budget=budget is not None,
            )
        if account is None:
            if store is not None:
                raise ConfigurationError(
                    "OverloadGuard.account is required when a store is given: the budget and "
                    "the breaker trips are shared per account, and every guard left without "
                    "one would share a single breaker per service and host with every other "
                    "account using that store (one brand's 429s opening the circuit for "
                    "another's calls). Pass account= the LivePerson account (site) id"
                )
            account = _LOCAL_ACCOUNT
        require_option(
            isinstance(account, str) and bool(account),
            account,
            owner="OverloadGuard",
            field="account",
            wants="a non-empty str",
        )
        # An int past float's range (10**400) is refused too: it passed ``< math.inf`` and
        # raised OverflowError from the first batched send's arithmetic.
        flush_interval = check_seconds("OverloadGuard", "flush_interval", flush_interval, zero=True)
        sync_interval = check_seconds("OverloadGuard", "sync_interval", sync_interval, zero=True)
        self._budget = budget
        self._breaker = breaker
        self._clock = clock or RealClock()
        self._hooks = hooks or EventHooks()
        self._rng = rng or random.Random()
        self._account = account
        self._max_breakers = max_breakers
        self._keys_kept = max(_KEYS_KEPT, max_breakers)
        self._shared = store is not None
        # A subclass of MemoryStore is the caller's code too: wrapped alike, so that a
        # TypeError from it reaches a call as a ConfigurationError, never raw.
        self._store: StateStore = (
            MemoryStore(self._clock) if store is None else guarded(store, self._clock, self._hooks)
        )
        # A local store costs nothing: count first attempts at once, no batching.
        self._flush_interval = flush_interval if self._shared else 0.0
        self._budget_keys: dict[str, str] = {}
        self._sync_interval = sync_interval
        # Per service: first attempts held back from the shared budget, and the last send.
        self._pending: dict[str, _Batch] = {}
        self._status: dict[tuple[str, str], BreakerStatus] = {}
        self._successes: dict[tuple[str, str], _Successes] = {}
        self._keys: dict[tuple[str, str | None, int | None], tuple[str, str]] = {}
        # The last key asked for, with its URL and service (_key_at).
        self._last_url: URL | None = None
        self._last_service = ""
        self._last_key = ("", "")
        # Whether the breaker at _last_key is closed, as admit last read it, and no status was
        # written since (_put): its next attempt there is admitted without a lookup. Never in a
        # fleet (its admit always asks the store).
        self._last_admits = False
        # A process's own MemoryStore takes first attempts without a coroutine (_deposit_unchecked).
        self._local = (
            self._store if isinstance(self._store, MemoryStore) and not self._shared else None
        )
        self._slot_length = breaker.sampling_window / breaker.slots if breaker is not None else 1.0
        self._synced_at: dict[tuple[str, str], float] = {}
        # The probes out, by (call, attempt): the value of the fleet's probe lock each holds,
        # and the fleet's trip entry as the probe found (or rewrote) it: what its success may
        # delete, and nothing newer (None and None: no fleet). Each lock value and each trip
        # this process publishes is its own (_unique), so that a late release of one never
        # frees another's, and a trip another process published is never taken for ours.
        # Third, the lease end the probe was admitted with (its slot's probe_until, with the
        # hold _admit gave it): its identity. A probe stuck past it may end after a newer probe
        # took the slot, and must then neither decide nor free that one's slot
        # (CircuitBreaker.record, release).
        self._probes: dict[tuple[int, int], tuple[str | None, str | None, float | None]] = {}
        self._owner = uuid.uuid4().hex
        self._serial = 0
        # Fleet probe locks of abandoned probes whose release has not yet been done (by
        # _release_lock's task, or by the next probe here), oldest first (at most
        # _STALE_LOCKS_KEPT a breaker), and those tasks.
        self._stale_locks: dict[tuple[str, str], list[str]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        # Waiting in drain(probes_of=...) for the fleet's probes out to end; and through which
        # session each fleet probe out goes (an engine closing waits for those it cut).
        self._probe_waiters: list[asyncio.Future[None]] = []
        self._probe_owners: dict[tuple[int, int], object] = {}
        # Per breaker key: the damaged trip entry last logged (its hash), so it is logged once.
        self._damaged: dict[tuple[str, str], int] = {}
        # The longest break this process adopts from the fleet's trip entry (_trip), and per
        # breaker key the over-long entry last read (its hash) with when it was first read: its
        # break is over that long after, however often it is read again.
        self._longest_adopted = (
            breaker.longest_break + breaker.probe_lease if breaker is not None else math.inf
        )
        self._overlong: dict[tuple[str, str], tuple[int, float]] = {}
        # Per breaker key: the fleet's trip entry (its hash) whose break this process last
        # reported open (_adopted_open, _publish), so that a break read again (at a sync, its
        # end a millisecond later in Redis' whole-millisecond TTL) is reported once.
        self._reported: dict[tuple[str, str], int] = {}
        # Retries the budget granted before their pause whose attempt is not yet admitted, by
        # (call, attempt): given back if that attempt is never sent (_refund_ended, abandon).
        self._grants: dict[tuple[int, int], _Grant] = {}
        # The last outcome the breaker did not count as a failure: outcomes are immutable and the
        # retry loop hands the same one for the same status, so an identical one needs no asking.
        self._success: Outcome | None = None

    @property
    def store(self) -> StateStore:
        """Where the budget and the breaker trips live."""
        return self._store

    def breaker_state(self, service: str, host: str) -> BreakerState:
        """The breaker's state for ``service`` at ``host`` now."""
        if self._breaker is None:
            return BreakerState.CLOSED
        # The stored status without the successes counted since: they never change the state.
        status = self._status.get((service, host))
        if status is None:
            return BreakerState.CLOSED
        return self._breaker.state_at(status, self._clock.now())

    # -- keys -------------------------------------------------------------------------------

    def _budget_key(self, service: str) -> str:
        # Kept per service: in this process's memory the budget is asked on every first
        # attempt, and escaping the same key again showed in the profile of a call.
        key = self._budget_keys.get(service)
        if key is None:
            if len(self._budget_keys) >= 1024:
                self._budget_keys.clear()
            key = self._budget_keys[service] = state_key(self._account, "budget", service)
        return key

    def _key_of(self, call: GatedCall) -> tuple[str, str]:
        """The breaker's (service, host) key of ``call``."""
        url = call.request.url
        service = call.service
        if url is self._last_url and service == self._last_service:
            return self._last_key
        return self._key_at(call, url, service)

    def _key_at(self, call: GatedCall, url: URL, service: str) -> tuple[str, str]:
        """The breaker's (service, host) key of ``call``, to ``url`` for ``service``.

        Kept per service, host and port: it is asked twice per attempt, and formatting the
        host again each time showed in the profile of a call. The last one is also kept with
        the URL object and service it was asked for: a URL is immutable and the engine reuses
        the one it built for the same host and path (for every service there: the service is
        compared too), so the next attempt or call there needs no host, port or lookup (see
        _key_of, admit, settle).
        """
        found = self._keys.get((service, url.host, url.port))
        if found is None:
            if len(self._keys) >= self._keys_kept:
                self._keys.clear()
            found = self._keys[(service, url.host, url.port)] = (service, _host_of(call))
        self._last_url = url
        self._last_service = service
        self._last_key = found
        self._last_admits = False
        return found

    def _status_of(self, key: tuple[str, str]) -> BreakerStatus | None:
        """The breaker's status at ``key``, with the successes counted since it was stored."""
        held = self._successes.pop(key, None)
        status = self._status.get(key)
        if held is not None:
            assert self._breaker is not None
            status = self._breaker.record_successes(
                status or self._breaker.closed(), held.at, held.count
            )
            self._put(key, status)
        return status

    # -- bounds -----------------------------------------------------------------------------

    def _put(self, key: tuple[str, str], status: BreakerStatus) -> None:
        """Store the breaker's ``status`` at ``key`` as its most recent use.

        ``_status`` is in order of last write (popped and set again), which is what makes the
        least recently used breaker the first one. A write on the happy path happens once per
        slot of the sampling window, not per call (the successes in between are tallied).
        """
        self._last_admits = False
        if self._status.pop(key, None) is None and len(self._status) >= self._max_breakers:
            self._make_room(key)
        self._status[key] = status

    def _make_room(self, adding: tuple[str, str]) -> None:
        """``_status`` is full and ``adding`` comes: forget the idle breakers, and if that frees
        less than an eighth of the cap, more (with a warning): the least recently used closed
        ones with recent failures, then the least recently used open or half-open ones.

        O(cap), once per at least cap / 8 new keys: O(1) amortised. The maps are rebuilt, not
        deleted from, so that their tables shrink too.
        """
        breaker = self._breaker
        assert breaker is not None
        now = self._clock.now()
        kept = {
            key: status for key, status in self._status.items() if not breaker.is_idle(status, now)
        }
        excess = len(kept) - (self._max_breakers - max(1, self._max_breakers // 8))
        forgotten: list[tuple[tuple[str, str], BreakerStatus]] = []
        if excess > 0:
            # Closed ones (recent failures, not yet a break) before open or half-open ones,
            # whose loss lets traffic through to a failing host early; oldest write first.
            closed = [k for k, status in kept.items() if status.state is BreakerState.CLOSED]
            tripped = [k for k, status in kept.items() if status.state is not BreakerState.CLOSED]
            forgotten = [(k, kept[k]) for k in (closed + tripped)[:excess]]
            gone = {k for k, _ in forgotten}
            kept = {k: status for k, status in kept.items() if k not in gone}
        self._status = kept
        self._successes = {k: held for k, held in self._successes.items() if k in kept}
        self._synced_at = {k: at for k, at in self._synced_at.items() if k in kept or k == adding}
        # (A stale lock forgotten here frees itself when its lease ends.)
        self._stale_locks = {k: lock for k, lock in self._stale_locks.items() if k in kept}
        self._damaged = {k: seen for k, seen in self._damaged.items() if k in kept}
        self._overlong = {k: seen for k, seen in self._overlong.items() if k in kept}
        self._reported = {k: seen for k, seen in self._reported.items() if k in kept}
        if forgotten:
            self._forgot(forgotten, now)

    def _forgot(self, forgotten: list[tuple[tuple[str, str], BreakerStatus]], now: float) -> None:
        assert self._breaker is not None
        states = [self._breaker.state_at(status, now) for _, status in forgotten]
        tripped = sum(state is not BreakerState.CLOSED for state in states)
        named = [f"{service}@{host}" for (service, host), _ in forgotten[:_EVICTED_NAMED]]
        more = len(forgotten) - len(named)
        _log.warning(
            "overload guard full (max_breakers=%d): forgot %d least recently used circuit "
            "breakers holding state (%d open or half-open, the rest closed with recent "
            "failures): %s%s; their hosts start again with fresh breakers%s",
            self._max_breakers,
            len(forgotten),
            tripped,
            ", ".join(named),
            f" and {more} more" if more else "",
            " (a fleet's trips are read back from the store)" if self._shared else "",
            extra={
                "max_breakers": self._max_breakers,
                "forgotten": len(forgotten),
                "tripped": tripped,
                "breakers": named,
            },
        )

    def _make_service_room(self) -> None:
        """``_pending`` is full and a new service comes: forget the services with nothing
        pending (their last flush time only spaces out sends: the next one goes at once), and
        if that frees less than an eighth of the cap, the oldest others' pending counts (first
        attempts the fleet then never counts: its budget is only stricter for it)."""
        pending = {service: batch for service, batch in self._pending.items() if batch.count}
        target = self._max_breakers - max(1, self._max_breakers // 8)
        if len(pending) > target:
            oldest = iter(pending.items())
            dropped = sum(
                batch.count for _, batch in (next(oldest) for _ in range(len(pending) - target))
            )
            pending = dict(oldest)
            _log.info(
                "overload guard full (max_breakers=%d): %d first attempts of the least recently "
                "added services were not sent to the shared budget (it is only stricter)",
                self._max_breakers,
                dropped,
                extra={"max_breakers": self._max_breakers, "dropped": dropped},
            )
        self._pending = pending

    def _trip_key(self, key: tuple[str, str]) -> str:
        return state_key(self._account, "breaker", *key)

    def _probe_key(self, key: tuple[str, str]) -> str:
        return state_key(self._account, "breaker-probe", *key)

    # -- RetryGate --------------------------------------------------------------------------

    async def admit(self, call: GatedCall, attempt: int) -> RequestError | None:
        """Refuse the attempt if the breaker is open; count a first attempt for the budget."""
        # The happy path (a closed breaker, a local budget) runs on every call: the last key is
        # checked here (_key_at keeps it) and the budget key read from its cache, no call for
        # either, and a closed breaker at the last key is not read again (_last_admits).
        service = call.service
        if self._breaker is not None:
            url = call.request.url
            if url is not self._last_url or service != self._last_service:
                key = self._key_at(call, url, service)
            elif self._last_admits:
                key = None  # the last key's breaker admits, unchanged: nothing to read
            else:
                key = self._last_key
            if key is not None:
                status = self._status.get(key)
                if status is None or status.state is not _CLOSED or self._shared:
                    refused = await self._admit(call, attempt, key)
                    if refused is not None:
                        if attempt != 1 and self._grants:
                            # The retry the budget granted before the pause is not sent.
                            grant = self._grants.pop((id(call), attempt), None)
                            if grant is not None:
                                await self._refund(grant)
                        return refused
                else:
                    # A closed breaker admits, its status unchanged (CircuitBreaker.admit); and
                    # so it does until a status is written or another key asked (_last_admits).
                    self._last_admits = True
        if attempt != 1:
            if self._grants:
                # The retry granted before the pause goes now: it stays paid for.
                self._grants.pop((id(call), attempt), None)
        elif self._budget is not None:
            if self._local is not None:
                # Unchecked: the budget was checked when the guard was made.
                self._local._deposit_unchecked(
                    self._budget_keys.get(service) or self._budget_key(service), self._budget
                )
            else:
                try:
                    await self._deposit(service)
                except BaseException:
                    # Cancelled (or failed) while the shared budget answered, with this attempt
                    # already admitted as the half-open probe: the retry loop abandons only
                    # attempts whose admit returned, so the probe is freed here (its slot and the
                    # fleet's lock), or every process waited out its lease with no probe out.
                    if self._probes:
                        self.abandon(call, attempt)
                    raise
                if self._probes:
                    return self._deposited_too_late(call, attempt)
        return None

    def _deposited_too_late(self, call: GatedCall, attempt: int) -> CircuitOpen | None:
        """The refusal of attempt ``attempt`` of ``call`` if it is the fleet's probe and the
        shared budget's deposit (its admission's last store answer) came back past its cut
        (_fleet_probe_hold: its slot's lease end less the margin): it does not go, its slot and
        lock freed (:meth:`abandon`), as one whose lock or trip read came back that late
        (_admit). Sent, it had no time left: cut at once, a timeout that re-opened the fleet's
        breaker with no probe of the service made. (The deposit stays counted: a first attempt
        not sent, the budget only a retry more generous.)"""
        held = self._probes.get((id(call), attempt))
        if held is None or held[0] is None or held[2] is None:
            return None
        assert self._breaker is not None
        now = self._clock.now()
        if now < held[2] - _fleet_probe_margin(self._breaker):
            return None
        self.abandon(call, attempt)
        status = self._status_of(self._key_of(call))
        return self._circuit_open(
            call, now + self._sync_interval, now, 0 if status is None else status.opens
        )

    async def settle(self, call: GatedCall, attempt: int, outcome: Outcome) -> None:
        """Feed the attempt's outcome to the breaker: a failure or a success; one that gives
        no verdict (a refused certificate, :meth:`CircuitBreaker.gives_no_verdict`) records
        nothing, and if it was the half-open probe's, frees the probe as :meth:`abandon` does."""
        breaker = self._breaker
        if breaker is None:
            return
        url = call.request.url
        service = call.service
        if url is self._last_url and service == self._last_service:
            key = self._last_key  # _key_of, inline
        else:
            key = self._key_at(call, url, service)
        if self._probes:
            token = (id(call), attempt)
            if token in self._probes:
                lock, seen, probe_until = self._probes.pop(token)
                if lock is not None:
                    self._probe_ended(token)
                if breaker.gives_no_verdict(outcome):
                    # (A refused certificate.) Nothing learnt of the service: the probe is
                    # released as a cancelled one is, the breaker still half-open and the fleet
                    # told nothing. Taken for a success, it closed the breaker, and published
                    # the fleet's closed mark, over a service whose last answers were 5xx.
                    await self._release_probe(key, lock, probe_until)
                    return
                failed = breaker.counts_as_failure(outcome)
                await self._record(
                    call,
                    key,
                    outcome,
                    failed,
                    self._clock.now(),
                    probe=True,
                    lock=lock,
                    seen=seen,
                    probe_until=probe_until,
                )
                return
        if outcome is not self._success:
            # (The same immutable outcome as the last success needs no asking.)
            if breaker.counts_as_failure(outcome):
                await self._record(call, key, outcome, True, self._clock.now())
                return
            if breaker.gives_no_verdict(outcome):
                return  # neither a failure nor a success: nothing recorded
            self._success = outcome
        # A success, not the probe's (in half-open, _record ignores it: only the probe decides).
        now = self._clock.now()
        # A tally is only ever held on a closed status (every change of the status records or
        # drops it first): a success in the tally's slot adds to it, nothing else to read.
        # math.floor(now / slot length) is CircuitBreaker.slot_of, inline, asked only if the
        # time is not between the tally's first and the end of its slot.
        held = self._successes.get(key)
        if held is not None and (
            held.at <= now < held.until or held.slot == math.floor(now / self._slot_length)
        ):
            held.count += 1
            return
        status = self._status.get(key)
        if status is not None and status.state is _CLOSED:
            # A success in a closed breaker: counted now, recorded with its slot's others.
            self._status_of(key)
            slot = math.floor(now / self._slot_length)
            self._successes[key] = _Successes(slot, now, breaker.slot_end(slot))
            return
        await self._record(call, key, outcome, False, now)

    async def _record(
        self,
        call: GatedCall,
        key: tuple[str, str],
        outcome: Outcome,
        failed: bool,
        now: float,
        *,
        probe: bool = False,
        lock: str | None = None,
        seen: str | None = None,
        probe_until: float | None = None,
    ) -> None:
        """Feed an outcome at ``now`` to the breaker at ``key`` (what settle does with all but a
        success counted in a closed breaker's tally); log and publish what it opens or closes.

        ``probe``: the outcome is a half-open probe's, the only one that decides there
        (:meth:`CircuitBreaker.record`) while it is still the probe: ``probe_until``, the lease
        end it was admitted with, is still the slot's (a probe stuck past its lease, a newer one
        out in its place, decides nothing, and publishes nothing); ``lock``: the fleet's probe
        lock it held, freed after the verdict is published (so the next holder finds the new
        trip, _admit; a stale probe's lock went with its lease, and the compare-and-delete of
        its value leaves the newer probe's); ``seen``: the fleet's trip entry the probe was
        admitted on, the only one its success replaces (with the fleet's closed mark).

        In a fleet, a probe that outlived its lease may have been replaced by another
        process's, which took the lock once this one's expired: this process's slot cannot
        tell, so the lock is read (only then: within its lease a probe's lock is its own). Held
        with another value, the lock is a newer probe's, and this answer is no verdict, as a
        stale probe's is in one process; taken for one, a late 503 published a break that the
        newer probe's success could not replace (its compare-and-set found another entry). So
        is it when the trip entry is no longer ``seen``: the newer probe may have ended
        already, its lock freed, its verdict (the closed mark, or a new break) the fleet's
        (:meth:`_still_the_fleets_probe`).
        """
        breaker = self._breaker
        assert breaker is not None
        if probe and lock is not None and probe_until is not None and now >= probe_until:
            try:
                probe = await self._still_the_fleets_probe(key, lock, seen)
            except BaseException:
                self._release_lock(key, lock, probe_until)
                raise
        old_state, after = self._note(key, failed, now, probe=probe, probe_until=probe_until)
        await self._announce(
            call, key, outcome, old_state, after, now, lock, seen, probe_until=probe_until
        )

    def _note(
        self,
        key: tuple[str, str],
        failed: bool,
        now: float,
        *,
        probe: bool,
        probe_until: float | None,
    ) -> tuple[BreakerState, BreakerStatus]:
        """Record an outcome at ``now`` in the breaker at ``key`` (:meth:`CircuitBreaker.record`);
        returns the state before and the status after."""
        breaker = self._breaker
        assert breaker is not None
        before = self._status_of(key) or breaker.closed()
        old_state = breaker.state_at(before, now)
        # The draw only matters to a failure: only a failure opens the breaker.
        after = breaker.record(
            before,
            now,
            failed=failed,
            rand=self._rng.random() if failed else 0.5,
            probe=probe,
            probe_until=probe_until,
        )
        self._put(key, after)
        return old_state, after

    async def _announce(
        self,
        call: GatedCall,
        key: tuple[str, str],
        outcome: Outcome,
        old_state: BreakerState,
        after: BreakerStatus,
        now: float,
        lock: str | None,
        seen: str | None,
        *,
        probe_until: float | None = None,
    ) -> None:
        """Log and publish what an outcome recorded at ``now`` opened or closed (the breaker at
        ``key`` was ``old_state``, is ``after``); then free the fleet's probe lock ``lock`` (of
        the probe whose slot's lease ended at ``probe_until``)."""
        assert self._breaker is not None
        new_state = self._breaker.state_at(after, now)
        try:
            if new_state is BreakerState.OPEN and old_state is not BreakerState.OPEN:
                probe = None if lock is None else _ProbeVerdict(seen, now, lock, probe_until)
                await self._opened(call, key, after, outcome, probe=probe)
            elif new_state is BreakerState.CLOSED and old_state is BreakerState.HALF_OPEN:
                await self._closed(call, key, seen)
            if lock is not None:
                await self._delete_lock(key, lock)
        except BaseException:
            # Cancelled while publishing the verdict, or while freeing the lock (the delete
            # may not have reached the store): the lock must still go, or the fleet would wait
            # out its lease with no probe out. (A compare-and-delete: harmless if it went.)
            if lock is not None:
                self._release_lock(key, lock, probe_until)
            raise

    async def _still_the_fleets_probe(
        self, key: tuple[str, str], lock: str, seen: str | None
    ) -> bool:
        """Whether a probe at ``key`` that outlived its lease (its fleet lock ``lock``, admitted
        on the trip entry ``seen``) still answers for the fleet: no other process's probe holds
        the lock, and the trip entry is still the one it was admitted on (or gone with its
        TTL). Another value there is news newer than this probe's answer: another process's
        probe decided since (its closed mark, or its new break), or a break was published over
        it. Taken for a verdict, a late 503 then re-opened the breaker and published a break
        over the fleet's close that the newer probe's success had just published."""
        held = await self._store.get(self._probe_key(key))
        if held is not None and held.value != lock:
            return False  # another process's probe holds the fleet's slot: it decides
        entry = await self._store.get(self._trip_key(key))
        return entry is None or entry.value == seen

    def abandon(self, call: GatedCall, attempt: int) -> None:
        """Free the half-open slot if the cancelled attempt was the probe, and the fleet's
        probe lock it held: left to its lease, it kept every process of the fleet (this one
        included) from probing for ``probe_lease`` (30 s) with no probe out. (A probe stuck past
        its lease, a newer probe out in its place, frees neither: the slot and the lock are the
        newer one's, :meth:`CircuitBreaker.release` and the lock's compare-and-delete.)

        Also: a retry the budget granted before its pause (:meth:`before_retry`) whose attempt
        ``attempt`` was never admitted is given back (the retry loop tells so of a pause cut
        short: the caller cancelled, the engine closed); a call that ended is also found out at
        the next withdrawal (:meth:`_refund_ended`)."""
        if self._grants:
            grant = self._grants.pop((id(call), attempt), None)
            if grant is not None:
                self._refund_soon(grant)
        if self._breaker is None or (id(call), attempt) not in self._probes:
            return
        lock, _, probe_until = self._probes.pop((id(call), attempt))
        if lock is not None:
            self._probe_ended((id(call), attempt))
        key = self._key_of(call)
        status = self._status_of(key)
        if status is not None:
            self._put(
                key, self._breaker.release(status, self._clock.now(), probe_until=probe_until)
            )
        if lock is not None:
            self._release_lock(key, lock, probe_until)

    def cut(self, call: GatedCall, attempt: int, ran: float) -> None:
        """An admitted attempt was cut by its call's deadline (not by its own attempt timeout:
        the deadline came first) after running ``ran`` seconds, with no answer.

        Cut after the breaker's :attr:`~CircuitBreaker.slow_call` or later, it is a timeout to
        the breaker, as an attempt timeout is (a TIMEOUT failure): counted toward the failure
        ratio, and, the half-open probe's, a failure verdict that re-opens the breaker and, in a
        fleet, is published as a timed-out probe's is (:meth:`settle`). Abandoned, a service
        that accepts connections and never answers never opened the circuit while its callers'
        deadlines were shorter than the attempt timeout: each caller sat out its deadline, for
        ever. Cut sooner (or with no ``slow_call``), it is abandoned (:meth:`abandon`): a
        caller's short deadline says nothing of the service. The budget is told nothing: the
        attempt was paid for when admitted, and no retry follows a deadline.

        Never waits: the breaker decides at once, and what the fleet's store must hear (the
        break, then the probe lock freed) is sent by a task, kept with the locks' releases
        (:meth:`drain` waits for it, then cancels it)."""
        breaker = self._breaker
        slow = None if breaker is None else breaker.slow_call
        if breaker is None or slow is None or not ran >= slow:
            self.abandon(call, attempt)
            return
        token = (id(call), attempt)
        if self._grants:
            grant = self._grants.pop(token, None)
            if grant is not None:
                self._refund_soon(grant)
        key = self._key_of(call)
        now = self._clock.now()
        lock: str | None = None
        seen: str | None = None
        probe_until: float | None = None
        probe = token in self._probes
        if probe:
            lock, seen, probe_until = self._probes.pop(token)
            if lock is not None:
                self._probe_ended(token)
                # This process's to free until its delete answered: a task cancelled before
                # it ran (the guard drained at once) leaves it to the next probe here.
                self._keep_stale(key, lock)
                if probe_until is not None and now >= probe_until:
                    # Past its lease: whether it still answers for the fleet is the store's
                    # to say (_record reads it first), so the whole verdict is the task's.
                    job = self._record(
                        call,
                        key,
                        _SLOW_CUT,
                        True,
                        now,
                        probe=True,
                        lock=lock,
                        seen=seen,
                        probe_until=probe_until,
                    )
                    self._spawn(self._cut_told(job, key, lock), "le_transport slow probe")
                    return
        old_state, after = self._note(key, True, now, probe=probe, probe_until=probe_until)
        opened = (
            old_state is not BreakerState.OPEN and breaker.state_at(after, now) is BreakerState.OPEN
        )
        if not self._shared:
            if opened:
                self._report_open(call, key, after, False, _SLOW_CUT)
            return
        if opened or lock is not None:
            job = self._announce(
                call, key, _SLOW_CUT, old_state, after, now, lock, seen, probe_until=probe_until
            )
            self._spawn(self._cut_told(job, key, lock), "le_transport slow call verdict")

    async def _cut_told(
        self, job: Coroutine[Any, Any, None], key: tuple[str, str], lock: str | None
    ) -> None:
        """Run ``job``, what the fleet's store must hear of an attempt :meth:`cut` counted (its
        break published, its probe lock ``lock`` freed after it). A failure is logged, never
        raised: nobody awaits this task."""
        try:
            await job
        except Exception as exc:
            _log.warning(
                "could not tell the fleet of a call cut by its deadline at %s: %s",
                key[1],
                type(exc).__name__,
                extra={"service": key[0], "host": key[1], "error": type(exc).__name__},
            )
            return
        if lock is not None and self._shared_answered():
            self._drop_stale(key, lock)

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``job`` in a task kept with the locks' releases (:meth:`drain` waits for it, then
        cancels it); with no loop running, not at all."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            job.close()
            return
        task = loop.create_task(job, name=name)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_probe(
        self, key: tuple[str, str], lock: str | None, probe_until: float | None
    ) -> None:
        """Free the half-open slot at ``key`` of a probe that ended without a verdict, and the
        fleet's probe lock ``lock`` it held (what :meth:`abandon` does, the lock's delete
        awaited here: the next prober, in this process or another, may go at once). The slot
        only if the probe admitted with lease end ``probe_until`` still holds it."""
        breaker = self._breaker
        assert breaker is not None
        status = self._status_of(key)
        if status is not None:
            self._put(key, breaker.release(status, self._clock.now(), probe_until=probe_until))
        if lock is None:
            return
        # Kept until the delete answered: a store failing or too slow leaves it to the next
        # probe here (_admit), or to its lease (_lock_left).
        self._keep_stale(key, lock)
        try:
            await self._free_lock(key, lock, self._lock_left(probe_until))
        except BaseException:
            # Cancelled while the store answered: a task frees it (as abandon's does).
            self._release_lock(key, lock, probe_until)
            raise

    def _lock_left(self, probe_until: float | None) -> float:
        """How long the fleet's probe lock of a probe whose slot's lease ends at
        ``probe_until`` may still be held: the probe lease, or what is left of a bounded
        probe's longer hold (_fleet_probe_hold: the lock and the slot are held as long).
        Its release gives the store's delete that long: cut at the lease, the delete of a
        bounded probe's lock left it refusing the fleet until its hold ended."""
        assert self._breaker is not None
        lease = self._breaker.probe_lease
        if probe_until is None:
            return lease
        return max(lease, probe_until - self._clock.now())

    def _release_lock(
        self, key: tuple[str, str], lock: str, probe_until: float | None = None
    ) -> None:
        """Free the fleet's probe lock ``lock`` at ``key`` soon: abandon cannot wait (it runs as
        the attempt is cancelled), so a task does it. The task is kept (a set of them) and
        ends within the lock's lease whatever the store does (:meth:`_lock_left`, of a probe
        whose slot's lease ends at ``probe_until``): past the lease it has nothing left to
        free. Until it is done, the next probe of this process frees the lock itself
        (_admit), so that this process is never kept waiting by its own lock."""
        assert self._breaker is not None
        self._keep_stale(key, lock)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to run it: the next probe here frees it, or its lease does
        task = loop.create_task(
            self._free_lock(key, lock, self._lock_left(probe_until)),
            name="le_transport probe lock release",
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def _keep_stale(self, key: tuple[str, str], lock: str) -> None:
        """Note ``lock`` at ``key`` as this process's to free, beside any other still noted
        there (a second release while the first's store fails must not lose the first: its
        lock, still held, kept this process and the fleet from probing until its lease ended);
        the oldest dropped past :data:`_STALE_LOCKS_KEPT` (its lease ends first)."""
        locks = self._stale_locks.setdefault(key, [])
        if lock in locks:
            return
        if len(locks) >= _STALE_LOCKS_KEPT:
            del locks[0]
        locks.append(lock)

    def _drop_stale(self, key: tuple[str, str], lock: str) -> None:
        """``lock`` at ``key`` freed: no longer this process's to free."""
        locks = self._stale_locks.get(key)
        if locks is not None and lock in locks:
            locks.remove(lock)
            if not locks:
                del self._stale_locks[key]

    def _refund_soon(self, grant: _Grant) -> None:
        """Give back ``grant``'s retry from a synchronous caller (:meth:`abandon`): at once on
        this process's own MemoryStore, else by a task kept with the locks' releases (which
        :meth:`drain` waits for); with no loop running, not at all (it ages out)."""
        store = self._store
        if isinstance(store, MemoryStore):
            assert self._budget is not None
            store._refund_unchecked(
                self._budget_key(grant.service),
                self._budget,
                max(0.0, self._clock.now() - grant.at),
            )
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._refund(grant), name="le_transport retry refund")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _refund(self, grant: _Grant) -> None:
        """Give back the retry of ``grant``, never sent, to the slot of the budget it was
        taken from (dropped if that slot aged out or counts none: the stores' ``refund``). A
        failure is logged, never raised: no call fails for a refund."""
        budget = self._budget
        assert budget is not None
        key = self._budget_key(grant.service)
        age = max(0.0, self._clock.now() - grant.at)
        store = self._store
        try:
            if isinstance(store, FallbackStore):
                await store.refund(key, budget, age=age, shared=grant.shared)
            elif isinstance(store, MemoryStore):
                store._refund_unchecked(key, budget, age)
        except Exception as exc:
            _log.warning(
                "could not give back a retry of %s that was never sent: %s",
                grant.service,
                type(exc).__name__,
                extra={"service": grant.service, "error": type(exc).__name__},
            )

    async def _refund_ended(self, now: float) -> None:
        """Give back the retries granted to calls that ended without sending them (cancelled
        in the pause, cut by their deadline or the engine's close: the retry loop's context
        says the call ended, and its retry's attempt was never admitted); forget those taken a
        window ago or more (their slot has aged out: nothing to give back)."""
        budget = self._budget
        assert budget is not None
        for token, grant in list(self._grants.items()):
            old = now - grant.at >= budget.window
            if not old and not _has_ended(grant.call):
                continue
            if self._grants.get(token) is not grant:
                continue  # taken meanwhile (admitted, or abandoned)
            del self._grants[token]
            if not old:
                await self._refund(grant)

    async def drain(self, grace: float = 1.0, *, probes_of: object = None) -> None:
        """Let the releases of abandoned probes' locks (and the refunds of retries never sent,
        and what the fleet's store is told of attempts a deadline cut, :meth:`cut`) finish (up
        to ``grace`` seconds of the clock), then cancel what is left: its lock then frees
        itself at its lease's end. The engine calls it as it closes, so that no task of
        the guard outlives it.

        It returns only once no release is pending, those started while it waits included (a
        call abandoned as the engine closes, or one of another engine sharing this guard):
        waiting for the ones there when it began left those running past the engine's close,
        and past the loop's end (the lock then held for its lease).

        ``probes_of``: an aiohttp session whose fleet probes out to wait for too (within the
        same ``grace``), and for their locks' releases. The engine passes its own once it has
        closed it, cutting its calls in flight: a probe cut then is abandoned a moment later,
        and its lock's release would otherwise start after the drain, to be cancelled with the
        loop, leaving every process of the fleet refused for the lock's lease. The probes of
        another session (another engine sharing the guard, a caller's own session with the
        engine's middlewares) are not waited for: the close does not cut them."""
        probes = probes_of is not None
        if not self._releases and not (probes and self._fleet_probes_out(probes_of)):
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with timeout_after(self._clock, grace):
                while self._releases or (probes and self._fleet_probes_out(probes_of)):
                    waiter = loop.create_future()
                    self._probe_waiters.append(waiter)
                    try:
                        await asyncio.wait(
                            {waiter, *self._releases}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        with contextlib.suppress(ValueError):
                            self._probe_waiters.remove(waiter)
                        waiter.cancel()
        while self._releases:
            pending = set(self._releases)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _fleet_probes_out(self, owner: object) -> bool:
        """Whether a probe made through ``owner`` (an aiohttp session) holds the fleet's probe
        lock."""
        return any(made_by is owner for made_by in self._probe_owners.values())

    def _probe_ended(self, token: tuple[int, int]) -> None:
        """A fleet probe ended: forget whose it was, and wake drain() to look again."""
        self._probe_owners.pop(token, None)
        for waiter in self._probe_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _free_lock(self, key: tuple[str, str], lock: str, lease: float) -> None:
        try:
            async with timeout_after(self._clock, lease):
                await self._store.delete(self._probe_key(key), only_if=lock)
        except Exception as exc:
            # A store failing (not a FallbackStore) or too slow: the next probe here tries
            # again, and the lease frees the lock anyway.
            _log.debug(
                "could not free an abandoned probe's lock: %s",
                type(exc).__name__,
                extra={"service": key[0], "host": key[1]},
            )
            return
        if self._shared_answered():
            self._drop_stale(key, lock)

    async def _delete_lock(self, key: tuple[str, str], lock: str) -> None:
        """Delete this process's fleet probe lock ``lock`` at ``key`` (a probe's verdict given,
        or an admission given up). One whose delete a FallbackStore answered locally (its
        primary out) is noted as this process's to free, by its next probe here: the shared
        store still holds it, for its lease, against this process's next probe and the
        fleet's (a failed probe's new break is shorter than the lease)."""
        await self._store.delete(self._probe_key(key), only_if=lock)
        if not self._shared_answered():
            self._keep_stale(key, lock)

    def _shared_answered(self) -> bool:
        """Whether the store's last answer was the shared store's, not a FallbackStore's local
        stand-in's (its primary out): a lock's delete answered locally freed nothing in the
        shared store, which still holds the lock (for its lease) against this process's next
        probe and the fleet's, so it stays this process's to free. (The store's last answer:
        another operation may have ended meanwhile; one taken for local only has its lock
        deleted once more, a harmless compare-and-delete.)"""
        store = self._store
        return store.sharing if isinstance(store, FallbackStore) else True

    async def before_retry(
        self, call: GatedCall, attempt: int, outcome: Outcome, pause: float, last: RequestError
    ) -> RequestError | None:
        """Refuse a retry the breaker would refuse after the pause, or the budget cannot pay.

        A retry the budget pays for is noted until attempt ``attempt + 1`` is admitted, and
        given back if it never is (see :meth:`abandon`)."""
        now = self._clock.now()
        if self._breaker is not None:
            # The state, the break and the openings: nothing the counted successes change.
            status = self._status.get(self._key_of(call))
            if status is not None:
                retry_at = self._breaker.retry_at(status, now)
                if (
                    self._breaker.state_at(status, now) is BreakerState.OPEN
                    and retry_at is not None
                    and retry_at > now + pause
                ):
                    return self._circuit_open(call, retry_at, now, status.opens, retry=True)
        if self._budget is None:
            return None
        if not await self._withdraw(call.service):
            emit(
                self._hooks.on_state,
                StateEvent(
                    "retry_budget_exhausted",
                    call.service,
                    {"attempt": attempt, "outcome": outcome.describe()},
                ),
            )
            return RetryBudgetExhausted(
                f"the retry budget of {call.service!r} is spent (at most "
                f"{self._budget.ratio:.0%} of first attempts + {self._budget.floor:g} per "
                f"{self._budget.window:g} s): not retrying {outcome.describe()} after attempt "
                f"{attempt}, so as not to add load to a failing service",
                last=last,
                service=call.service,
                method=call.method,
                url=call.url,
            )
        # Paid before the pause, so that a retry the budget cannot pay fails at once; given
        # back if the retry is never sent (the call cancelled in the pause, the breaker
        # refusing it): a caller bounding its calls itself is charged for no retry it did not
        # make (abandon, _refund_ended, admit).
        store = self._store
        if len(self._grants) >= self._max_breakers:
            # Bounded: the oldest is forgotten, not given back (the budget only stricter).
            del self._grants[next(iter(self._grants))]
        self._grants[(id(call), attempt + 1)] = _Grant(
            call,
            call.service,
            self._clock.now(),
            store.sharing if isinstance(store, FallbackStore) else True,
        )
        return None

    # -- the budget -------------------------------------------------------------------------

    def _batch(self, service: str) -> _Batch:
        """The first attempts of ``service`` held back from the shared budget (room made)."""
        batch = self._pending.get(service)
        if batch is None:
            if len(self._pending) >= self._max_breakers:
                self._make_service_room()
            batch = self._pending[service] = _Batch()
        return batch

    async def _deposit(self, service: str) -> None:
        budget = self._budget
        assert budget is not None
        batch = self._batch(service)
        now = self._clock.now()
        # Only what is still in its own slot is sent (_Batch): the rest is dropped.
        held = batch.held(now, budget)
        if not held:
            batch.start(now, budget)
        since = now - batch.sent_at
        flush = self._flush_interval
        # Every flush_interval; and as the slot's end nears, once the time since the last send
        # is at least the time left (down to a sixteenth of the interval): what a slot's end
        # drops is then the last sliver of the slot, not up to a whole interval of it.
        if since >= flush or since >= max(batch.until - now, flush / _FLUSH_STEPS):
            batch.count = 0
            batch.sent_at = now
            await self._store.budget(self._budget_key(service), budget, deposits=held + 1)
        else:
            batch.count = held + 1

    async def _withdraw(self, service: str) -> bool:
        budget = self._budget
        assert budget is not None
        if self._grants:
            await self._refund_ended(self._clock.now())
        batch = self._batch(service)
        now = self._clock.now()
        count = batch.held(now, budget)
        batch.count = 0
        batch.sent_at = now
        return await self._store.budget(
            self._budget_key(service), budget, deposits=count, withdraw=True
        )

    # -- the breaker ------------------------------------------------------------------------

    async def _admit(
        self, call: GatedCall, attempt: int, key: tuple[str, str]
    ) -> RequestError | None:
        assert self._breaker is not None
        if self._shared:
            await self._sync(key)
        status = self._status_of(key) or self._breaker.closed()
        now = self._clock.now()
        admission = self._breaker.admit(status, now)
        if not admission.allowed:
            assert admission.retry_at is not None
            self._put(key, status)  # a refused host is in use too: the last one to forget
            return self._circuit_open(call, admission.retry_at, now, status.opens)
        lock: str | None = None
        seen: str | None = None
        probing = admission.status
        if admission.probe and not self._shared:
            hold = _probe_hold(call, self._breaker)
            if hold > self._breaker.probe_lease:
                # The slot is kept until this probe has surely reported (its attempt's own
                # bound), not only the lease: a probe with a 60 s attempt timeout let a second
                # one through at 30 s. (In a fleet, below: the lock, and the slot, are held as
                # long, and the probe cut before the lock's lease ends.)
                probing = attrs.evolve(probing, probe_until=now + hold)
        cut_at: float | None = None
        if admission.probe and self._shared:
            # The fleet's probe is bounded by its lock (_fleet_probe_hold): the lock, the trip's
            # half-open tail and this process's slot are held for ``hold`` from now (the lock
            # is taken after now: it lasts at least that long), and the attempt is cut at
            # ``cut_at`` (the retry loop's, told by limit_attempt below), so that its verdict
            # is published and the lock freed before the lease ends: no second probe goes,
            # here or in another process, while it is out.
            hold, cut_after = _fleet_probe_hold(call, self._breaker)
            cut_at = now + cut_after
            if hold != self._breaker.probe_lease:
                probing = attrs.evolve(probing, probe_until=now + hold)
            probe_key = self._probe_key(key)
            stale = self._stale_locks.get(key)
            if stale:
                # This process's own abandoned probes' locks, their release not yet done.
                # Each kept in _stale_locks until its delete answered: cancelled before, it is
                # still this process's to free (its release task, or the next probe here).
                for old in tuple(stale):
                    await self._store.delete(probe_key, only_if=old)
                    if self._shared_answered():
                        self._drop_stale(key, old)
            lock = self._unique()
            try:
                # Taken inside the try: cancelled while the add is out, the store may hold the
                # lock all the same (Redis ran it, its reply had not come back), and nothing
                # else would free it: the whole fleet waited out the lease with no probe out.
                # Its release is a compare-and-delete of this value: harmless if it never
                # landed.
                if not await self._store.add(probe_key, lock, ttl=hold):
                    # Another process of the fleet is probing: wait for its verdict.
                    self._put(key, status)
                    return self._circuit_open(call, now + self._sync_interval, now, status.opens)
                # The lock is ours, but what this process knows of the fleet's trip may be up to
                # sync_interval old: the probe that held the lock before may have failed, and its
                # process re-opened the breaker (publishing the new trip before freeing the lock).
                # A second probe to a service that just failed one must not go: read it now.
                trip_key = self._trip_key(key)
                lease = hold
                fleet_closed = False
                for _ in range(_TRIP_READS):
                    entry = await self._store.get(trip_key)
                    read_at = self._clock.now()
                    found = None if entry is None else self._trip(key, entry, read_at)
                    if isinstance(found, _FleetClosed) and found.at >= status.open_until:
                        # Another process's probe succeeded since this one last read, after
                        # this process's break ended: the fleet's breaker is closed, no probe
                        # goes (a mark older than that break is none of its verdict: it probes).
                        fleet_closed = True
                        break
                    trip = found if isinstance(found, tuple) else None
                    if trip is not None and trip[1] > read_at:
                        await self._delete_lock(key, lock)
                        adopted = self._adopted(status, *trip)
                        self._successes.pop(key, None)  # (as below: the status is replaced whole)
                        self._put(key, adopted)
                        # Half-open here, open now: reported as an open here is.
                        assert entry is not None  # (the trip was read from it)
                        self._adopted_open(key, adopted, read_at, entry)
                        return self._circuit_open(call, adopted.open_until, read_at, adopted.opens)
                    # What the probe answers for: its success replaces this entry (with the
                    # fleet's closed mark), none newer.
                    seen = None if entry is None else entry.value
                    if trip is not None and (
                        trip[0] > probing.opens or trip[2] > probing.last_break
                    ):
                        # The fleet's count of openings and last break, ahead of what this
                        # process read (up to sync_interval ago): a failed probe's break grows
                        # from the fleet's, and is no shorter than its last.
                        probing = BreakerStatus(
                            probing.state,
                            probing.slot,
                            probing.successes,
                            probing.failures,
                            probing.open_until,
                            max(trip[0], probing.opens),
                            probing.probe_until,
                            max(trip[2], probing.last_break),
                        )
                    if trip is None or entry is None or entry.ttl >= lease:
                        break
                    # A probe taken late in the trip's tail: keep the trip while it is out, so
                    # that a process arriving meanwhile still goes half-open (the break's end
                    # unchanged). Only if the entry is still the one read (compare-and-set):
                    # another process whose own attempts failed before it read this trip may
                    # have published a new break since, which a plain write would replace.
                    opens, ended, last = trip
                    tail = self._trip_value(opens, lease + (read_at - ended), last)
                    if await self._store.set(trip_key, tail, ttl=lease, only_if=seen):
                        seen = tail
                        break
                    # Changed since it was read: read it again (a new break on is adopted).
                else:
                    # Changed under this process at every read: the fleet's trip is moving;
                    # this call does not probe, a later one reads it again.
                    await self._delete_lock(key, lock)
                    self._put(key, status)
                    at = self._clock.now()
                    return self._circuit_open(call, at + self._sync_interval, at, status.opens)
                # While the store answered, another call here may have read a break published
                # after this probe's read and adopted it (_sync): this process then knows of a
                # live break, and its probe must not go through it, nor this probe's status
                # replace it.
                current = self._status.get(key)
                at = self._clock.now()
                if (
                    current is not None
                    and current is not status
                    and self._breaker.state_at(current, at) is BreakerState.OPEN
                ):
                    await self._delete_lock(key, lock)
                    retry_at = self._breaker.retry_at(current, at)
                    return self._circuit_open(
                        call, at if retry_at is None else retry_at, at, current.opens
                    )
                if fleet_closed:
                    await self._delete_lock(key, lock)
                    self._successes.pop(key, None)
                    self._put(key, self._breaker.closed())
                    self._adopt_close(key)
                    return None  # an ordinary attempt, on the fleet's closed breaker
                if at >= cut_at:
                    # The store took so long to answer that the probe would be cut before it
                    # went: it does not go (its lock freed), a later call probes.
                    await self._delete_lock(key, lock)
                    self._put(key, status)
                    return self._circuit_open(call, at + self._sync_interval, at, status.opens)
            except BaseException:
                # Cancelled (or failed) with the lock held and no probe recorded: nothing
                # else would free it, and the whole fleet would wait out its lease.
                self._release_lock(key, lock, now + hold)
                raise
            # The status read before those awaits is what gets replaced, whole: successes
            # counted meanwhile go with the status they were counted on.
            self._successes.pop(key, None)
        self._put(key, probing)
        if admission.probe:
            self._probes[(id(call), attempt)] = (lock, seen, probing.probe_until)
            if lock is not None:
                # The session it goes through: what an engine's close cuts (aiohttp's own
                # field; missing, the probe is waited for by no close, as before).
                self._probe_owners[(id(call), attempt)] = getattr(call.request, "_session", None)
            if cut_at is not None:
                # The retry loop cuts the attempt there, as an attempt timeout (a TIMEOUT
                # failure: the probe's failure verdict). A call that cannot be told so (not the
                # retry loop's) is not cut: its probe may outlive the lock, as before.
                limit_attempt = getattr(call, "limit_attempt", None)
                if callable(limit_attempt):
                    limit_attempt(cut_at)
        return None

    async def _sync(self, key: tuple[str, str]) -> None:
        """Adopt a break another process of the fleet published, or the fleet's close (its
        probe succeeded since this process's break ended), at most every interval."""
        assert self._breaker is not None
        now = self._clock.now()
        if now - self._synced_at.get(key, -float("inf")) < self._sync_interval:
            return
        if len(self._synced_at) > self._max_breakers:
            # Only after breakers that were never written (their call failed in between; the
            # others go with their breaker): a sync time only spaces out reads, and a breaker
            # without one syncs at once.
            self._synced_at = {k: at for k, at in self._synced_at.items() if k in self._status}
        self._synced_at[key] = now
        entry = await self._store.get(self._trip_key(key))
        now = self._clock.now()
        status = self._status_of(key) or self._breaker.closed()
        if entry is None or self._breaker.state_at(status, now) is BreakerState.OPEN:
            return
        if status.probe_until is not None and now < status.probe_until:
            return  # our own probe is out; its verdict decides
        trip = self._trip(key, entry, now)
        if isinstance(trip, _FleetClosed):
            # Half-open here, and the fleet's one probe succeeded after this process's break
            # ended: closed, as the prober is. Left half-open, each process sent a probe of its
            # own, one at a time through the fleet's lock, refusing calls meanwhile. (A close
            # before that break ended says nothing of it: this process probes.)
            if status.state is not _CLOSED and trip.at >= status.open_until:
                self._put(key, self._breaker.closed())
                self._adopt_close(key)
            return
        if trip is not None:
            # A break still on is adopted as open; one that has ended (the entry outlives it
            # by the probe lease) as half-open: this process then competes for the fleet's
            # probe lock rather than letting every call through while one probe is out.
            was_closed = status.state is _CLOSED
            adopted = self._adopted(status, *trip)
            self._put(key, adopted)
            if was_closed or self._breaker.state_at(adopted, now) is BreakerState.OPEN:
                # Not open here before (see above): its calls fail fast from now on, which its
                # hooks and logs are told of, as of an open here. So is a break adopted in its
                # tail (half-open: calls refused while the fleet's probe is out elsewhere):
                # else its close was reported for a circuit never reported open.
                self._adopted_open(key, adopted, now, entry)

    def _unique(self) -> str:
        """A value no other lock or trip entry holds: this process's, numbered."""
        self._serial += 1
        return f"{self._owner}:{self._serial}"

    def _trip_value(self, opens: int, half_open: float, last_break: float) -> str:
        """A trip entry: the openings, how long it outlives the break (``half_open``), how
        long the break was (``break``: a re-open's is never shorter, whichever process's
        probe fails), and a mark of its own (``id``): two processes' breaks after as many
        openings would otherwise read alike, and a compare-and-set or compare-and-delete of the
        one read could replace or delete the other (readers ignore it; an entry without one is
        still read)."""
        return json.dumps(
            {"opens": opens, "half_open": half_open, "break": last_break, "id": self._unique()}
        )

    def _adopted(
        self, status: BreakerStatus, opens: int, until: float, last_break: float = 0.0
    ) -> BreakerStatus:
        """``status`` with the fleet's break until ``until`` (after ``opens`` openings, the
        last break ``last_break`` long)."""
        return BreakerStatus(
            BreakerState.OPEN,
            status.slot,
            status.successes,
            status.failures,
            until,
            max(opens, status.opens),
            None,
            max(last_break, status.last_break),
        )

    def _trip(
        self, key: tuple[str, str], entry: Entry, now: float
    ) -> tuple[int, float, float] | _FleetClosed | None:
        """The fleet's trip entry at ``key``, read at ``now``: (openings, when the break ends,
        how long it was: 0 in an entry without it or with one that is not a finite number
        >= 0, and at most this breaker's longest break),
        the fleet's closed mark (:class:`_FleetClosed`: when it closed), or None if it is
        damaged (logged once: a bad entry must not fail every call there).

        The entry holds the openings and how long it outlives the break (``half_open``, the
        publisher's probe lease; 0 in an entry without it), or, once the fleet's probe
        succeeded, ``closed``: how long that mark is kept. Times are read from the entry's TTL,
        not from a time in it, because the processes' clocks need not agree; so a TTL that is
        not a finite number of seconds in [0, MAX_TTL] (a caller's store answering inf for "no
        expiry", or NaN) damages the entry too: taken as a break's end, it kept the breaker
        open for ever, never read again.
        """
        try:
            ttl = entry.ttl
            if not finite_number(ttl) or not 0 <= ttl <= MAX_TTL:
                raise _Damaged("its TTL is not a finite number of seconds in [0, MAX_TTL]")
            data = json.loads(entry.value)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            if "closed" in data:
                kept = data["closed"]
                if not finite_number(kept) or kept < 0:
                    raise _Damaged("closed is not a finite number >= 0")
                if self._damaged:
                    self._damaged.pop(key, None)
                return _FleetClosed(min(now, now + ttl - float(kept)))
            opens = data["opens"]
            tail = data.get("half_open", 0)
            if isinstance(opens, bool) or not isinstance(opens, int) or opens < 1:
                raise _Damaged("opens is not an int >= 1")
            if not finite_number(tail) or tail < 0:
                raise _Damaged("half_open is not a finite number >= 0")
            last = data.get("break", 0)
            if not finite_number(last) or last < 0:
                # Only the floor of a re-open's break: a bad one (null, NaN, a string) reads
                # as none, as in an entry without it. The trip itself is still the fleet's,
                # adopted: taken for damage, a live break was ignored.
                last = 0
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # OverflowError and RecursionError too: a 1e999 or thousands of nested brackets.
            self._damaged_trip(key, entry, exc)
            return None
        if self._damaged:
            self._damaged.pop(key, None)
        until = now + ttl - float(tail)
        if until - now > self._longest_adopted:
            until = self._overlong_trip(key, entry, now, until)
        elif self._overlong:
            self._overlong.pop(key, None)
        longest = self._breaker.longest_break if self._breaker is not None else 0.0
        return min(opens, _MAX_ADOPTED_OPENS), until, min(float(last), longest)

    def _overlong_trip(self, key: tuple[str, str], entry: Entry, now: float, until: float) -> float:
        """The end of the break of a trip entry at ``key`` that asks a longer one (ending at
        ``until``) than this process's breaker ever takes: its longest break plus its probe
        lease, counted from when this process first read that entry (so that reading it again
        does not start it over), logged once per entry.

        Taken as it is, one entry written with a long TTL (a fleet member on another
        configuration, a hand-written key, a restored backup) held every process's breaker open
        for as long as a TTL may be (MAX_TTL: 31,700 years), and only deleting the key
        recovered. Clamped, the processes go half-open when the clamped break ends, and the
        fleet's probe replaces the entry (its success the closed mark, its failure a new break).
        """
        seen = hash(entry.value)
        held = self._overlong.get(key)
        if held is None or held[0] != seen:
            if len(self._overlong) >= self._max_breakers:
                self._overlong.clear()
            held = self._overlong[key] = (seen, now)
            _log.warning(
                "the fleet's circuit breaker trip for %s at %s asks a break of %.3g s, longer "
                "than this process's breaker ever takes (%.3g s with its probe lease): adopted "
                "for that long only",
                key[0],
                key[1],
                until - now,
                self._longest_adopted,
                extra={"service": key[0], "host": key[1], "pause": until - now},
            )
        return min(until, held[1] + self._longest_adopted)

    def _damaged_trip(self, key: tuple[str, str], entry: Entry, exc: BaseException) -> None:
        """Warn of the damaged trip entry at ``key``, once per entry (every sync reads it
        again), showing only its start: it may be large, and it came from outside. A value
        that is no str (a caller's store: an int, None, bytes) is shown by its type alone: its
        len(), slice or hash raised a raw TypeError, failing every call there."""
        value: object = entry.value
        text = value if isinstance(value, str) else None
        seen = hash(("not a str", type(value).__name__) if text is None else text)
        if self._damaged.get(key) == seen:
            return
        if len(self._damaged) >= self._max_breakers:
            self._damaged.clear()
        self._damaged[key] = seen
        if text is None:
            shown = f"a {type(value).__name__}, not a str"
        else:
            shown = f"{len(text)} characters, starting {redact_text(text[:_DAMAGED_SHOWN])!r}"
        _log.warning(
            "ignoring a damaged circuit breaker trip for %s at %s in the shared store (%s; %s)",
            key[0],
            key[1],
            # Only the reasons of the checks here: a parser's message may quote the entry.
            str(exc) if isinstance(exc, _Damaged) else type(exc).__name__,
            shown,
            extra={"service": key[0], "host": key[1], "error": type(exc).__name__},
        )

    async def _opened(
        self,
        call: GatedCall,
        key: tuple[str, str],
        status: BreakerStatus,
        outcome: Outcome,
        *,
        probe: _ProbeVerdict | None = None,
    ) -> None:
        """The breaker at ``key`` opened (``status``): in a fleet, publish the break, or take
        the fleet's own instead (:meth:`_publish`); log it and emit ``circuit_open`` with the
        break this process then keeps. ``probe``: if the opening is a fleet probe's failure
        verdict, what :meth:`_publish` must know of it. If the fleet's close was taken
        instead (a newer probe's), it is reported as adopted."""
        taken, adopted = status, False
        try:
            if self._shared and status.open_until > self._clock.now():
                taken, adopted = await self._publish(key, status, probe=probe)
        finally:
            # Logged even if publishing was cancelled: the breaker opened all the same.
            if taken.state is _CLOSED:
                self._adopt_close(key)
            else:
                self._report_open(call, key, taken, adopted, outcome)

    def _report_open(
        self,
        call: GatedCall,
        key: tuple[str, str],
        taken: BreakerStatus,
        adopted: bool,
        outcome: Outcome,
    ) -> None:
        """Log the breaker at ``key`` open (``taken``: the break this process keeps; ``adopted``:
        the fleet's, taken instead of its own) after ``outcome``, and emit ``circuit_open``."""
        brk = taken.open_until - self._clock.now()
        _log.warning(
            "circuit open for %s at %s after %s: failing calls fast for %.3g s (opening %d%s)",
            call.service,
            key[1],
            outcome.describe(),
            brk,
            taken.opens,
            ", the fleet's break" if adopted else "",
            extra={
                "service": call.service,
                "host": key[1],
                "pause": brk,
                "opens": taken.opens,
                "adopted": adopted,
            },
        )
        emit(
            self._hooks.on_state,
            StateEvent(
                "circuit_open",
                f"{call.service}@{key[1]}",
                {"retry_in": brk, "opens": taken.opens, "adopted": adopted},
            ),
        )

    async def _publish(
        self,
        key: tuple[str, str],
        status: BreakerStatus,
        *,
        probe: _ProbeVerdict | None = None,
    ) -> tuple[BreakerStatus, bool]:
        """Publish the break this process just opened at ``key`` (``status``) to the fleet,
        without ever shortening or de-escalating the one the fleet's trip entry holds. Returns
        the status this process keeps, and whether it is the fleet's break taken instead.

        This process may have opened on attempts it admitted before it read the fleet's trip
        (up to ``sync_interval`` late), unaware of a break another process published meanwhile,
        maybe one escalated by many openings; a plain write replaced it with this process's
        first, short break, and the fleet's escalation started over. So the entry is read
        first:

        - a break still on there that ends no sooner than this one, or after more openings, is
          the fleet's verdict on the same outage: this process takes it as its own (its end; the
          higher count of openings) and publishes nothing. Its own failures came from attempts
          admitted before it knew of that break, and count no more than any attempt's outcome
          during a break other than the probe's (:meth:`CircuitBreaker.record`): they neither
          lengthen the fleet's break nor add an opening to it;
        - otherwise (no entry; one whose break is over, its half-open tail; a damaged one; or a
          break this one outlasts after as many openings or more) the break is published, with
          the higher count of openings (a tail's escalation goes on from there), only if the
          entry is still the one read: a compare-and-set, or set-if-absent when there was none.
          Changed meanwhile (another process published), it is read again, up to
          :data:`_PUBLISH_READS` times; then the fleet's entry is left as the others wrote it,
          and this process keeps its own break.

        Kept for the break and then the probe lease: a process that missed the break (no call
        during it, or started after it) still finds the trip once it has ended, and goes
        half-open (one probe for the fleet) instead of closed (every call).

        ``probe``: the break is a fleet probe's failure verdict, recorded at ``probe.at``, the
        probe admitted on the trip entry ``probe.seen``. The fleet's closed mark found in its
        place (another), written at or after that verdict, is another process's probe's
        success, a probe that took the lock once this one's lease ended while this verdict was
        still on its way to the store (a store slower than the margin the probe is cut by).
        That verdict is newer than this one: it stays, and this process takes the fleet's close
        (the closed status returned, adopted). Written over, the fleet's breaker re-opened, for
        a break, on a service just found well. (A close written before this verdict, a stale
        probe's that landed as this one was admitted, is older: written over, as always.) And
        if the verdict is about to be written once the probe's lease has ended (the lock freed
        by its TTL), the probe takes the lock again first (:meth:`_retake_lock`): another
        probe's value there is a newer probe out, whose verdict decides; this one is not
        published (this process keeps its break). Published, it stood against that probe's
        success, whose compare-and-set found it and was dropped; and taken again, no probe is
        admitted between the lock's check and the write.
        """
        assert self._breaker is not None
        lease = self._breaker.probe_lease
        trip_key = self._trip_key(key)
        for _ in range(_PUBLISH_READS):
            entry = await self._store.get(trip_key)
            now = self._clock.now()
            found = None if entry is None else self._trip(key, entry, now)
            if probe is not None and isinstance(found, _FleetClosed):
                assert entry is not None
                if entry.value != probe.seen and found.at >= probe.at:
                    return self._keep(key, status, self._breaker.closed()), True
            opens = status.opens
            # (The fleet's closed mark, or a damaged entry, holds no break: written over.)
            last = status.last_break
            if isinstance(found, tuple):
                theirs, until, their_break = found
                if until > now and (until >= status.open_until or theirs > opens):
                    # Reported by _opened: reading this entry again reports nothing more.
                    assert entry is not None
                    self._first_report(key, entry.value)
                    kept = self._adopted(status, theirs, until, their_break)
                    return self._keep(key, status, kept), True
                opens = max(opens, theirs)
                last = max(last, their_break)
            brk = status.open_until - now
            if brk <= 0:
                return status, False  # over while the store answered: nothing to publish
            if (
                probe is not None
                and probe.until is not None
                and now >= probe.until
                and not await self._retake_lock(key, probe.lock)
            ):
                return status, False  # another probe holds the fleet's lock: it decides
            value = self._trip_value(opens, lease, last)
            if entry is None:
                stored = await self._store.add(trip_key, value, ttl=brk + lease)
            else:
                stored = await self._store.set(
                    trip_key, value, ttl=brk + lease, only_if=entry.value
                )
            if stored:
                # This process's own break, reported by _opened: read back from the fleet's
                # entry (its end a millisecond later), it is not reported again as adopted.
                self._first_report(key, value)
                if opens == status.opens and last == status.last_break:
                    return status, False
                # The same break, after the fleet's count of openings (and its last break).
                return self._keep(
                    key, status, self._adopted(status, opens, status.open_until, last)
                ), False
        _log.debug(
            "the fleet's circuit breaker trip changed at every read: this break is not published",
            extra={"service": key[0], "host": key[1]},
        )
        return status, False

    async def _retake_lock(self, key: tuple[str, str], lock: str) -> bool:
        """Take the fleet's probe lock at ``key`` again with a probe's own value ``lock``, its
        lease over, for as long as its verdict's publish may take (:func:`_fleet_probe_margin`;
        freed with the lock's compare-and-delete once it is published): whether it is this
        probe's. Set-if-absent, as a probe takes it (:meth:`_admit`): read and then written, a
        probe admitted in between (its lock taken, the entry it would close read) had its
        success's close find this older break, and dropped. Held with another value, another
        probe is out, whose verdict decides."""
        assert self._breaker is not None
        probe_key = self._probe_key(key)
        if await self._store.add(probe_key, lock, ttl=_fleet_probe_margin(self._breaker)):
            return True
        held = await self._store.get(probe_key)
        return held is None or held.value == lock

    def _keep(
        self, key: tuple[str, str], status: BreakerStatus, kept: BreakerStatus
    ) -> BreakerStatus:
        """Replace ``status`` at ``key`` with ``kept`` (what _publish settled on), unless the
        breaker there changed while the store answered (forgotten, or another decision made
        since): that newer status stays."""
        if self._status.get(key) is status:
            self._put(key, kept)
        return kept

    async def _closed(self, call: GatedCall, key: tuple[str, str], seen: str | None) -> None:
        """The probe succeeded: the breaker closed. In a fleet, the trip entry the probe was
        admitted on (``seen``) is replaced by the fleet's closed mark, and only that one: a
        break another process published while the probe was out (its own attempts failed
        before it read this trip) is newer than what the probe answered for, and stays for the
        fleet to adopt (a compare-and-set; set-if-absent when the probe found no entry).

        The mark is what tells the processes that adopted the break, half-open now, that the
        fleet's one probe succeeded (:meth:`_sync`): a deleted entry told them nothing, and
        each sent a probe of its own. It is kept for the probe lease (or ``sync_interval``, if
        longer), the time a process calling now and then takes to read it; one that reads it
        later probes for itself, as before."""
        _log.info(
            "circuit closed for %s at %s: the probe succeeded",
            call.service,
            key[1],
            extra={"service": call.service, "host": key[1]},
        )
        emit(
            self._hooks.on_state,
            StateEvent("circuit_closed", f"{call.service}@{key[1]}", {"adopted": False}),
        )
        if not self._shared:
            return
        assert self._breaker is not None
        kept = max(self._breaker.probe_lease, self._sync_interval)
        mark = json.dumps({"closed": kept, "id": self._unique()})
        if seen is None:
            await self._store.add(self._trip_key(key), mark, ttl=kept)
        else:
            await self._store.set(self._trip_key(key), mark, ttl=kept, only_if=seen)

    def _adopted_open(
        self, key: tuple[str, str], status: BreakerStatus, now: float, entry: Entry
    ) -> None:
        """This process's breaker at ``key``, not open, took the fleet's break (``status``, read
        at ``now`` from the trip ``entry``): log it and emit ``circuit_open`` (``adopted``) with
        the details an open here has (:meth:`_opened`). Once per break: the same entry read
        again (its break's end a millisecond later, as Redis' TTLs are whole milliseconds) is
        adopted again, but not reported again.

        Adopted silently, a process refused every call with CircuitOpen while its hooks and
        logs said nothing of an open circuit, and then reported closing it."""
        if not self._first_report(key, entry.value):
            return
        brk = max(0.0, status.open_until - now)  # 0: adopted in its tail, half-open
        _log.warning(
            "circuit open for %s at %s: the fleet's break, failing calls fast for %.3g s "
            "(opening %d)",
            key[0],
            key[1],
            brk,
            status.opens,
            extra={
                "service": key[0],
                "host": key[1],
                "pause": brk,
                "opens": status.opens,
                "adopted": True,
            },
        )
        emit(
            self._hooks.on_state,
            StateEvent(
                "circuit_open",
                f"{key[0]}@{key[1]}",
                {"retry_in": brk, "opens": status.opens, "adopted": True},
            ),
        )

    def _first_report(self, key: tuple[str, str], value: object) -> bool:
        """Whether the break of trip entry ``value`` at ``key`` is reported open here for the
        first time (noted, so that it is the last time)."""
        seen = hash(value) if isinstance(value, (str, bytes)) else None
        if seen is not None and self._reported.get(key) == seen:
            return False
        if len(self._reported) > self._max_breakers:
            self._reported.clear()  # (bounded by _make_room already: a guard)
        if seen is not None:
            self._reported[key] = seen
        return True

    def _adopt_close(self, key: tuple[str, str]) -> None:
        """This process's breaker at ``key`` took the fleet's close (another process's probe
        succeeded): log it and emit ``circuit_closed`` (``adopted``)."""
        _log.info(
            "circuit closed for %s at %s: the fleet's probe succeeded",
            key[0],
            key[1],
            extra={"service": key[0], "host": key[1], "adopted": True},
        )
        emit(
            self._hooks.on_state,
            StateEvent("circuit_closed", f"{key[0]}@{key[1]}", {"adopted": True}),
        )

    def _circuit_open(
        self, call: GatedCall, retry_at: float, now: float, opens: int, *, retry: bool = False
    ) -> CircuitOpen:
        """The refusal of ``call``'s attempt; ``retry``: of its retry (before_retry), after
        attempts that were sent (in its ``attempts``): "nothing was sent" would say otherwise."""
        refused = "the retry was not sent" if retry else "nothing was sent"
        return CircuitOpen(
            f"the circuit breaker for {call.service!r} at {_host_of(call)} is open: {refused}; "
            f"try again in {max(0.0, retry_at - now):.3g} s",
            retry_at=retry_at,
            service=call.service,
            method=call.method,
            url=call.url,
        )

    def __repr__(self) -> str:
        return (
            f"OverloadGuard(budget={self._budget!r}, breaker={self._breaker!r}, "
            f"store={self._store!r})"
        )
