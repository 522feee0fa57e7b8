"""The circuit breaker: stop sending to a failing service for a while, as a pure state machine.

Per service and host: **closed** lets every attempt through and counts failures over a sliding
``sampling_window``; when at least ``minimum_throughput`` attempts were seen and the share of
failures reaches ``failure_ratio``, it **opens**. Open refuses every attempt until the break
ends (the caller gets ``CircuitOpen`` with the time to try again). Then it is **half-open**:
exactly one probe goes through; a success closes the breaker, a failure opens it again for a
longer break, on a :class:`~le_transport.policies.BackoffPolicy` (never a shorter one than the
last: at the cap, the break's jitter could otherwise draw one shorter). Only the probe's own answer
decides there: an attempt admitted before the break that ends after it is ignored. So is a probe
that outlived its lease and ends after a newer probe took the slot: each probe is known by the
lease end it was admitted with (``probe_until``), and only the one the status still holds decides
or frees the slot.

An outcome is one of three things to the breaker. A failure: 5xx, 429, a final 1xx (the server's
protocol error) and transport failures (:meth:`CircuitBreaker.counts_as_failure`), timeouts
included; and so is an attempt its call's deadline cut with no answer once it ran
``slow_call`` (5 s) or longer (a shorter cut is no verdict: the caller's deadline, not the
service, ended it). A success: any
other answer, 4xx included, proves the service is up. No verdict: a refused certificate
(:meth:`CircuitBreaker.gives_no_verdict`) says nothing about the service behind the TLS terminator
(often one client's wrong CA bundle): it is recorded neither way, so it never opens the circuit (the
refusal is final and the caller's to fix, to surface as itself, never as a retryable
``CircuitOpen``) and never closes it either (a half-open probe meeting one frees the half-open slot,
as a cancelled probe does: :meth:`CircuitBreaker.release`).

:class:`CircuitBreaker` is the configuration; :class:`BreakerStatus` the state, replaced and never
mutated. Time and the random draw for the break's jitter come in as arguments.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from ..errors import ConfigurationError
from ._validate import check_scale, instance_of, optional_positive, positive
from .backoff import BackoffPolicy
from .budget import check_slot_length, slot_end
from .classify import Outcome, OutcomeKind

__all__ = [
    "BREAKER_BREAK",
    "BREAKER_FAILURE_RATIO",
    "BREAKER_MAX_BREAK",
    "BREAKER_MINIMUM_THROUGHPUT",
    "BREAKER_SAMPLING_WINDOW",
    "BREAKER_SLOW_CALL",
    "Admission",
    "BreakerState",
    "BreakerStatus",
    "CircuitBreaker",
]

#: Polly opens at 10% failures. LiveEngage answers the odd 5xx when healthy and the guide
#: retries those; a degraded service (half the attempts failing) is the retry budget's to
#: handle, since most calls still succeed within their schedule (the benchmark: a breaker at
#: 50% cut a 50%-5xx service's successes from 57% to 10%). The breaker is for a service that
#: is down: three attempts in four failing.
BREAKER_FAILURE_RATIO = 0.75
#: Polly wants 100 calls per window; one bot process calls a LiveEngage service a few times a
#: second at most, and often less. 20 attempts is enough to tell an outage from bad luck (the
#: chance of 10 failures in 20 at a 10% background rate is below 1e-5) without waiting for
#: calls a quiet process never makes.
BREAKER_MINIMUM_THROUGHPUT = 20
#: Polly's 30 s: the span of the guide's whole 5/10/15 s schedule.
BREAKER_SAMPLING_WINDOW = 30.0
#: The first break: the guide's first pause (5 s), like Polly's default.
BREAKER_BREAK = 5.0
#: Re-opens double the break up to the guide's outer "every 2 minutes".
BREAKER_MAX_BREAK = 120.0
#: A probe that never reports (its process died, its task was dropped) frees the half-open
#: slot after this long: the default per-attempt timeout.
BREAKER_PROBE_LEASE = 30.0
#: An attempt cut by its call's deadline after this long with no answer is a timeout to the
#: breaker (:attr:`CircuitBreaker.slow_call`): the guide's first pause. A healthy LiveEngage
#: service answers in well under a second, so a caller's sub-second (or few-second) deadline
#: that cuts an attempt says nothing of it; five seconds of silence is what a per-attempt
#: timeout would call a failure anyway, and callers with deadlines of 5 s or more to a service
#: that never answers then open the circuit instead of each sitting out its deadline.
BREAKER_SLOW_CALL = 5.0


class BreakerState(enum.Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class Admission:
    """The breaker's answer to "may this attempt go?": ``allowed``, whether it is the
    half-open ``probe``, ``retry_at`` (when refused: the time to try again), and the new status.

    A probe's ``status.probe_until`` (its lease's end) is its identity: what the caller hands
    back to :meth:`CircuitBreaker.record` and :meth:`CircuitBreaker.release` when it ends, so
    that a probe that outlived its lease, a newer probe out in its place, neither decides nor
    frees the newer one's slot."""

    allowed: bool
    status: BreakerStatus
    probe: bool = False
    retry_at: float | None = None


@attrs.frozen
class BreakerStatus:
    """The breaker's state.

    - ``state``: closed, open or half-open (read it through :meth:`CircuitBreaker.state_at`,
      since an open breaker whose break has ended is half-open).
    - ``slot``, ``successes``, ``failures``: per time slot counts of the sampling window
      (index 0 is slot ``slot``, the newest).
    - ``open_until``: when the current break ends.
    - ``opens``: how many times it opened since it last closed (the break grows with it).
    - ``probe_until``: while a half-open probe is out, when its lease ends (None: no probe);
      also the probe's identity (each probe admitted gets a later one than the last).
    - ``last_break``: how long the latest break was (0: none since it last closed); a re-open's
      break is never shorter.
    """

    state: BreakerState = BreakerState.CLOSED
    slot: int = 0
    successes: tuple[int, ...] = ()
    failures: tuple[int, ...] = ()
    open_until: float = 0.0
    opens: int = 0
    probe_until: float | None = None
    last_break: float = 0.0


def _min_throughput(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"CircuitBreaker.minimum_throughput must be an int >= 1, got {value!r}"
        )


def _ratio(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= 1
        or not math.isfinite(value)
    ):
        raise ConfigurationError(f"CircuitBreaker.failure_ratio must be in (0, 1], got {value!r}")


def _slots(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ConfigurationError(f"CircuitBreaker.slots must be an int in [1, 1000], got {value!r}")


def _default_breaks() -> BackoffPolicy:
    return BackoffPolicy(
        first=BREAKER_BREAK, factor=2.0, cap=BREAKER_MAX_BREAK, jitter=0.2, floor=0.0
    )


@attrs.frozen
class CircuitBreaker:
    """A circuit breaker's configuration and transitions (see the module's description).

    - ``failure_ratio`` (0.75), ``minimum_throughput`` (20 attempts) and ``sampling_window``
      (30 s, in ``slots`` buckets): when it opens.
    - ``breaks``: the break after the n-th consecutive opening, ``breaks.delay(n, rand)``:
      5 s, 10 s, 20 s ... up to 2 min, ±20% so that a fleet's probes do not arrive together;
      a re-open's break is never shorter than the one before it (at the cap the jitter's
      draw could make it so: 144 s, then 96 s).
    - ``probe_lease`` (30 s): a probe that never reports frees the half-open slot after this.
      (An :class:`~le_transport.middleware.overload.OverloadGuard` holds its probe's slot
      longer when the probe's attempt has a longer bound of its own, the shorter of its attempt
      timeout and its call's deadline, up to :attr:`longest_break`; with a fleet store, the
      fleet's probe lock as long, and a fleet probe with no bound of its own is cut a tenth of
      the lease, at least a second, before the lease ends, a timeout: its failure verdict.)
    - ``slow_call`` (5 s, :data:`BREAKER_SLOW_CALL`; None: off): an attempt cut by its call's
      deadline (not by its own attempt timeout) after running at least this long with no
      answer is a failure, a TIMEOUT, as an attempt timeout is: counted toward the failure
      ratio, and for the half-open probe a failure verdict (the breaker re-opens). A shorter
      cut gives no verdict (the caller chose a short deadline; it says nothing of the service).
      Without it, a service that accepts connections and never answers never opened the
      circuit while every caller's deadline was shorter than the attempt timeout: each caller
      sat out its whole deadline, for ever. The default, the guide's first pause, is far above
      what a healthy service takes, so callers that give it sub-second deadlines never count
      against it; with None, only attempt timeouts count (callers with short deadlines to a
      hanging service are then never failed fast). A positive finite number or None, else
      :class:`~le_transport.errors.ConfigurationError`.
    """

    failure_ratio: float = attrs.field(default=BREAKER_FAILURE_RATIO, validator=_ratio)
    minimum_throughput: int = attrs.field(
        default=BREAKER_MINIMUM_THROUGHPUT, validator=_min_throughput
    )
    sampling_window: float = attrs.field(default=BREAKER_SAMPLING_WINDOW, validator=positive)
    slots: int = attrs.field(default=10, validator=_slots)
    breaks: BackoffPolicy = attrs.field(
        factory=_default_breaks, validator=instance_of(BackoffPolicy, "a BackoffPolicy")
    )
    probe_lease: float = attrs.field(default=BREAKER_PROBE_LEASE, validator=positive)
    slow_call: float | None = attrs.field(default=BREAKER_SLOW_CALL, validator=optional_positive)

    def __attrs_post_init__(self) -> None:
        check_slot_length("CircuitBreaker", "sampling_window", self.sampling_window, self.slots)

    @property
    def longest_break(self) -> float:
        """The longest break this breaker ever takes, in seconds: ``breaks.cap`` jittered up,
        ``cap * (1 + jitter)`` (never less than ``breaks.floor``, which is at most the cap).
        A fleet's overload guard adopts no longer break from its shared store."""
        return max(self.breaks.cap * (1.0 + self.breaks.jitter), self.breaks.floor)

    @staticmethod
    def counts_as_failure(outcome: Outcome) -> bool:
        """Whether ``outcome`` is a failure for the breaker: a 5xx, a 429, or a transport
        failure (a status below 100 too: no HTTP answer; and a final 1xx, the server's protocol
        error). Any other answer, 4xx included,
        shows the service is up, and is a success, but for a refused certificate, which is
        neither (:meth:`gives_no_verdict`)."""
        if outcome.kind is OutcomeKind.TLS_REJECTED:
            return False
        if outcome.kind is not OutcomeKind.RESPONSE:
            return True
        status = outcome.status or 0
        # Above 599: a 5xx (RFC 9110 15); below 100: no HTTP status at all (a proxy's 000);
        # 1xx: an interim status given as the final answer.
        return status == 429 or status < 200 or 500 <= status <= 999

    @staticmethod
    def gives_no_verdict(outcome: Outcome) -> bool:
        """Whether ``outcome`` says nothing about the service, to be recorded neither as a
        failure nor as a success: a refused certificate (``TLS_REJECTED``). The refusal is the
        client's view of the host's certificate (a wrong CA bundle, a host that is not who it
        claims), final and the caller's to fix. Counted as a failure, a few of them opened the
        circuit, and the calls after failed with ``CircuitOpen``, retryable, instead of the
        final TLS error; counted as a success, a half-open probe meeting one closed the circuit
        of a service whose last answers were 5xx (and, in a fleet, everyone's with it). A probe
        with no verdict frees the half-open slot (:meth:`release`) for the next one."""
        return outcome.kind is OutcomeKind.TLS_REJECTED

    def scaled(self, factor: float) -> CircuitBreaker:
        """The same breaker with every duration multiplied by ``factor`` (tests, demos)."""
        factor = check_scale(factor)
        return attrs.evolve(
            self,
            sampling_window=self.sampling_window * factor,
            breaks=self.breaks.scaled(factor),
            probe_lease=self.probe_lease * factor,
            slow_call=None if self.slow_call is None else self.slow_call * factor,
        )

    def closed(self) -> BreakerStatus:
        """A closed breaker that has seen nothing."""
        return BreakerStatus(
            BreakerState.CLOSED, 0, (0,) * self.slots, (0,) * self.slots, 0.0, 0, None
        )

    def slot_of(self, now: float) -> int:
        """The index of the sampling window's slot holding time ``now``."""
        return math.floor(now / (self.sampling_window / self.slots))

    def slot_end(self, slot: int) -> float:
        """When slot ``slot`` ends (:func:`~le_transport.policies.budget.slot_end`): every time
        from one in the slot up to it has :meth:`slot_of` ``slot``."""
        return slot_end(self.sampling_window / self.slots, slot)

    def _aged(self, status: BreakerStatus, now: float) -> BreakerStatus:
        if len(status.successes) != self.slots:
            status = attrs.evolve(status, successes=(0,) * self.slots, failures=(0,) * self.slots)
        slot = self.slot_of(now)
        shift = slot - status.slot
        if shift <= 0:
            return status
        if shift >= self.slots:
            return attrs.evolve(
                status, slot=slot, successes=(0,) * self.slots, failures=(0,) * self.slots
            )
        pad = (0,) * shift
        keep = self.slots - shift
        return attrs.evolve(
            status,
            slot=slot,
            successes=pad + status.successes[:keep],
            failures=pad + status.failures[:keep],
        )

    def state_at(self, status: BreakerStatus, now: float) -> BreakerState:
        """The state at ``now``: an open breaker whose break has ended is half-open."""
        if status.state is BreakerState.OPEN and now >= status.open_until:
            return BreakerState.HALF_OPEN
        return status.state

    def retry_at(self, status: BreakerStatus, now: float) -> float | None:
        """When an attempt refused at ``now`` may try again; None if one would go now."""
        state = self.state_at(status, now)
        if state is BreakerState.OPEN:
            return status.open_until
        if (
            state is BreakerState.HALF_OPEN
            and status.probe_until is not None
            and now < status.probe_until
        ):
            return status.probe_until
        return None

    def is_idle(self, status: BreakerStatus, now: float) -> bool:
        """Whether ``status`` at ``now`` is a healthy breaker a keeper may forget.

        True for a closed breaker with no failure in its sampling window, no probe out and no
        opening on record: all it holds is recent successes, and a fresh :meth:`closed` breaker
        in its place opens just as a healthy host's should (it needs ``minimum_throughput``
        attempts in the window, the forgotten successes no longer among them). An open or
        half-open breaker, or one with recent failures, holds what protects the host: keep it.
        """
        if status.state is not BreakerState.CLOSED or status.probe_until is not None:
            return False
        if status.opens:
            return False
        if len(status.failures) != self.slots:
            return True  # a status of another configuration is aged to an empty window (_aged)
        shift = self.slot_of(now) - status.slot
        if shift >= self.slots:
            return True
        return not any(status.failures[: self.slots - max(0, shift)])

    def admit(self, status: BreakerStatus, now: float) -> Admission:
        """May an attempt go at ``now``? Closed: yes. Open: no, until ``open_until``.
        Half-open: the first asker becomes the probe; the others are refused while it is out."""
        state = self.state_at(status, now)
        if state is BreakerState.CLOSED:
            return Admission(True, status)
        if state is BreakerState.OPEN:
            return Admission(False, status, retry_at=status.open_until)
        if status.probe_until is not None and now < status.probe_until:
            return Admission(False, status, retry_at=status.probe_until)
        probing = attrs.evolve(
            status, state=BreakerState.HALF_OPEN, probe_until=now + self.probe_lease
        )
        return Admission(True, probing, probe=True)

    def record(
        self,
        status: BreakerStatus,
        now: float,
        *,
        failed: bool,
        rand: float = 0.5,
        probe: bool = False,
        probe_until: float | None = None,
    ) -> BreakerStatus:
        """``status`` after an admitted attempt ended at ``now`` as a failure or a success.

        ``probe``: whether the attempt was the half-open probe (its :class:`Admission` said so);
        ``probe_until``: the lease end it was admitted with (its admission's
        ``status.probe_until``), which tells whether it is still the probe: a probe stuck past
        its lease may end after a newer probe took the slot, and is then one of the "any other
        attempt" below. (None: the caller vouches it is still the probe, as it is when a caller
        never lets a second probe go while one is out.)

        In half-open only the probe's answer decides: a success closes, a failure opens again
        for the next, longer break. Any other attempt ending then was admitted before the break
        began (a slow one, outliving it), or is a probe whose place a newer one took, and is
        ignored, as it would be during the break: its failure is already accounted for, and it
        says nothing the probe's answer will not say better. (Taken as the verdict, it
        re-opened the breaker for a longer break, with the probe out or none sent, or closed it
        with no probe sent, or with the newer probe's answer still to come.) Closed: the
        outcome is counted and the breaker opens if the window's failure ratio reaches the
        threshold at the minimum throughput.
        """
        state = self.state_at(status, now)
        if state is BreakerState.HALF_OPEN:
            if not probe or (probe_until is not None and probe_until != status.probe_until):
                return status
            if failed:
                return self._open(status, now, rand)
            return self.closed()
        if state is BreakerState.OPEN:
            return status
        aged = self._aged(status, now)
        if not failed:
            # The constructor, not attrs.evolve: this runs after every attempt, and evolve's
            # field introspection cost more than the rest of it (benchmarks/README.md).
            return BreakerStatus(
                state=aged.state,
                slot=aged.slot,
                successes=(aged.successes[0] + 1, *aged.successes[1:]),
                failures=aged.failures,
                open_until=aged.open_until,
                opens=aged.opens,
                probe_until=aged.probe_until,
                last_break=aged.last_break,
            )
        aged = attrs.evolve(aged, failures=(aged.failures[0] + 1, *aged.failures[1:]))
        failures = sum(aged.failures)
        total = failures + sum(aged.successes)
        if total >= self.minimum_throughput and failures >= self.failure_ratio * total:
            return self._open(aged, now, rand)
        return aged

    def record_successes(self, status: BreakerStatus, now: float, count: int) -> BreakerStatus:
        """``status`` after ``count`` admitted attempts succeeded at ``now`` in a closed breaker.

        The same as ``count`` calls of :meth:`record` with ``failed=False`` at times in the slot
        of ``now``, while ``status`` is closed (a success neither opens nor ages a closed
        breaker past its slot): what lets a caller count a slot's successes and record them at
        once. In any other state they change nothing, as :meth:`record` ignores every outcome
        but the probe's there (and the probe's is recorded on its own).
        """
        if status.state is not BreakerState.CLOSED:
            return status
        if count <= 0:
            return status
        aged = self._aged(status, now)
        return BreakerStatus(
            state=aged.state,
            slot=aged.slot,
            successes=(aged.successes[0] + count, *aged.successes[1:]),
            failures=aged.failures,
            open_until=aged.open_until,
            opens=aged.opens,
            probe_until=aged.probe_until,
            last_break=aged.last_break,
        )

    def release(
        self, status: BreakerStatus, now: float, *, probe_until: float | None = None
    ) -> BreakerStatus:
        """The probe ended without a verdict (cancelled, or an outcome that
        :meth:`gives_no_verdict`): free the half-open slot, the breaker still half-open.

        ``probe_until``: the lease end the probe was admitted with (its admission's
        ``status.probe_until``). A probe whose lease passed and whose slot a newer probe took
        frees nothing: freed, the slot let a third probe go while the second was out. (None:
        the caller vouches it is the probe the status holds.)"""
        if status.probe_until is None:
            return status
        if probe_until is not None and probe_until != status.probe_until:
            return status
        return attrs.evolve(status, probe_until=None)

    def _open(self, status: BreakerStatus, now: float, rand: float) -> BreakerStatus:
        opens = status.opens + 1
        # A re-open's break is never shorter than the last (the docstring's "longer break"):
        # at the cap, a fresh draw of the jitter was as likely shorter. Still at most
        # longest_break: the last break was drawn, or adopted, within it.
        pause = self.breaks.delay(opens, rand)
        if status.opens:
            pause = max(pause, min(status.last_break, self.longest_break))
        return BreakerStatus(
            BreakerState.OPEN,
            self.slot_of(now),
            (0,) * self.slots,
            (0,) * self.slots,
            now + pause,
            opens,
            None,
            pause,
        )
