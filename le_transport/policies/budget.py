"""The retry budget: retries allowed only as a share of first attempts, as a pure value.

LivePerson's guide warns that retries keep an overloaded service down ("this vicious cycle
reduces its ability to recover"): per call, the 5/10/15 s schedule can send 4x the load to a
service that already fails. A budget caps the retries of a whole service instead of one call:
over a sliding ``window``, retries may not pass ``ratio`` x first attempts, plus a floor of
``min_retries_per_second`` x ``window`` so that a quiet client can still retry. This is the
design of Finagle's ``RetryBudget`` (20% of requests + 10 retries/s over 10 s) and of gRPC's
retry throttling.

:class:`RetryBudget` is the configuration; :class:`BudgetState` the counters, replaced and
never mutated. The window is kept as ``slots`` time buckets (a ring of counts), so memory is
constant at any rate and the same arithmetic runs in a Redis Lua script for a fleet.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..errors import ConfigurationError
from ._validate import fraction, non_negative, positive, shown

__all__ = [
    "BUDGET_MIN_RETRIES_PER_SECOND",
    "BUDGET_RATIO",
    "BUDGET_WINDOW",
    "MIN_SLOT_LENGTH",
    "BudgetState",
    "RetryBudget",
    "check_slot_length",
    "slot_end",
]

#: Finagle allows 20%; with the floor on top, a full outage would then send more than 1.2x
#: the calls. The guide's schedule already gives each failing call three retries; the
#: budget's job is the outage, so we take 10% (the token ratio of gRPC's retry-throttling
#: examples): a full outage costs at most 1.1x plus the floor (1.2x in all at one call per
#: second, less above; benchmarks/overload.py measured 1.11x at 10 calls/s).
BUDGET_RATIO = 0.1
#: The window spans the guide's whole schedule (5 + 10 + 15 s), so a failing call's three
#: retries fall inside the window that counted its first attempt.
BUDGET_WINDOW = 30.0
#: Finagle's floor is 10 retries/s, sized for RPC services at thousands of calls per second. A
#: LiveEngage bot makes a few calls per second; 0.1/s (3 per 30 s window) is one failing call's
#: whole 5/10/15 s schedule at a time, which is what "a quiet client can still retry" needs,
#: and adds little to the share under a fleet-wide outage.
BUDGET_MIN_RETRIES_PER_SECOND = 0.1


#: The shortest slot a sliding window may have, in seconds: a microsecond. A slot's index is
#: ``floor(now / slot length)``; a length near zero (a window of 1e-310 s) makes that infinite,
#: and the policy then raised OverflowError on every call instead of deciding. A microsecond keeps
#: the index a finite int for any clock reading below 1e300 s and, for any Unix time, within the
#: 64-bit integers Redis' budget script formats it as. No real window comes close: the demo's
#: fastest time scale, 0.001, makes the default 30 s window's slots 3 ms long.
MIN_SLOT_LENGTH = 1e-6


def check_slot_length(owner: str, field: str, window: float, slots: int) -> None:
    """A :class:`ConfigurationError` naming ``owner.field`` unless each of the ``slots`` slots of
    a ``window`` seconds long is at least :data:`MIN_SLOT_LENGTH` long."""
    if window / slots < MIN_SLOT_LENGTH:
        raise ConfigurationError(
            f"{owner}.{field} must leave each of its {slots} slots at least "
            f"{MIN_SLOT_LENGTH:g} s long (a window of at least {MIN_SLOT_LENGTH * slots:g} s), "
            f"got {window!r}"
        )


def _slots(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ConfigurationError(
            f"RetryBudget.slots must be an int in [1, 1000], got {shown(value)}"
        )


#: Float rounding forgiven when a retry is held against the allowance (also in RedisStore's
#: budget script).
ALLOWANCE_TOLERANCE = 1e-9


def slot_end(length: float, slot: int) -> float:
    """Where slot ``slot`` of ``length`` seconds ends, or a float or two before (never after).

    Every time ``t`` from one in the slot (``math.floor(t0 / length) == slot``) up to it,
    excluded, is in the slot too: ``math.floor(t / length) == slot``. A keeper of per-slot
    counts can then tell a later time is still in the slot with two comparisons, no division.
    ``-inf`` (nothing is known to be in the slot) where the arithmetic leaves the floats.
    """
    try:
        end = (slot + 1) * length
        if not math.isfinite(end):
            return -math.inf
        # (slot + 1) * length is rounded, and so is each t / length: step back to a float
        # whose predecessor is still in the slot. floor(t / length) never decreases as t
        # grows, so every time between one of the slot and that predecessor is in the slot.
        while math.floor(math.nextafter(end, -math.inf) / length) > slot:
            end = math.nextafter(end, -math.inf)
    except (ArithmeticError, ValueError):
        return -math.inf
    return end


@attrs.frozen
class BudgetState:
    """The budget's counters: per time slot, first attempts and retries.

    ``slot`` is the index (``floor(now / slot_length)``) of the newest slot; ``requests[i]`` and
    ``retries[i]`` count slot ``slot - i``. A fresh state counts nothing.
    """

    slot: int = 0
    requests: tuple[int, ...] = ()
    retries: tuple[int, ...] = ()

    @property
    def total_requests(self) -> int:
        """First attempts counted in the window."""
        return sum(self.requests)

    @property
    def total_retries(self) -> int:
        """Retries counted in the window."""
        return sum(self.retries)


@attrs.frozen
class RetryBudget:
    """A service's retry budget: ``ratio`` x first attempts + ``min_retries_per_second`` x
    ``window`` retries per sliding ``window`` seconds (defaults: 10% + 3 per 30 s).

    - ``ratio`` (default 0.1): the share of first attempts that may be retried, in [0, 1).
    - ``min_retries_per_second`` (default 0.1): the floor, so a quiet client can retry; a
      finite number >= 0 whose :attr:`floor` (``min_retries_per_second * window``) is finite
      too: 1e308 retries/s made the floor infinite, and every allowance with it.
    - ``window`` (default 30 s): how long a first attempt keeps paying for retries; a finite
      number of seconds that leaves each slot at least :data:`MIN_SLOT_LENGTH` long.
    - ``slots`` (default 10): the window's resolution, an int in [1, 1000]; events age out one
      slot at a time.

    :meth:`record_request` counts a first attempt; :meth:`try_retry` takes one retry if the
    budget allows it. Both take the time and return a new :class:`BudgetState`.
    """

    ratio: float = attrs.field(default=BUDGET_RATIO, validator=fraction)
    min_retries_per_second: float = attrs.field(
        default=BUDGET_MIN_RETRIES_PER_SECOND, validator=non_negative
    )
    window: float = attrs.field(default=BUDGET_WINDOW, validator=positive)
    slots: int = attrs.field(default=10, validator=_slots)

    def __attrs_post_init__(self) -> None:
        check_slot_length("RetryBudget", "window", self.window, self.slots)
        # As floats: each is within float's range (its validator), but two ints' product may
        # not be, and math.isfinite would raise OverflowError converting it.
        if not math.isfinite(float(self.min_retries_per_second) * float(self.window)):
            raise ConfigurationError(
                f"RetryBudget.min_retries_per_second times window (the floor of retries per "
                f"window) must be finite, got {self.min_retries_per_second!r} x {self.window!r}"
            )

    @property
    def slot_length(self) -> float:
        """Seconds per slot."""
        return self.window / self.slots

    @property
    def floor(self) -> float:
        """Retries allowed per window with no first attempt at all."""
        return self.min_retries_per_second * self.window

    def slot_of(self, now: float) -> int:
        """The index of the slot holding time ``now``."""
        return math.floor(now / self.slot_length)

    def slot_end(self, slot: int) -> float:
        """When slot ``slot`` ends (:func:`slot_end`): every time from one in the slot up to it
        has :meth:`slot_of` ``slot``."""
        return slot_end(self.slot_length, slot)

    def empty(self) -> BudgetState:
        """A state that counts nothing."""
        return BudgetState(0, (0,) * self.slots, (0,) * self.slots)

    def _at(self, state: BudgetState, now: float) -> BudgetState:
        """``state`` aged to ``now``: slots that left the window are dropped."""
        if len(state.requests) != self.slots:
            state = self.empty()
        slot = self.slot_of(now)
        shift = slot - state.slot
        if shift <= 0:
            # A reading from the past (another clock, a stale caller) counts in the newest slot.
            return state
        if shift >= self.slots:
            return BudgetState(slot, (0,) * self.slots, (0,) * self.slots)
        pad = (0,) * shift
        return BudgetState(
            slot,
            pad + state.requests[: self.slots - shift],
            pad + state.retries[: self.slots - shift],
        )

    def is_idle(self, state: BudgetState, now: float) -> bool:
        """Whether ``state`` counts nothing at ``now`` (every count left the window, or there
        was none): it decides exactly as :meth:`empty` does, so a keeper may forget it."""
        if len(state.requests) != self.slots:
            return True  # aged to an empty state (_at)
        shift = self.slot_of(now) - state.slot
        if shift >= self.slots:
            return True
        keep = self.slots - max(0, shift)
        return not (any(state.requests[:keep]) or any(state.retries[:keep]))

    def allowance(self, requests: int) -> float:
        """Retries allowed in a window that counted ``requests`` first attempts."""
        return self.ratio * requests + self.floor

    def available(self, state: BudgetState, now: float) -> float:
        """How many more retries the budget allows at ``now`` (may be fractional)."""
        aged = self._at(state, now)
        return max(0.0, self.allowance(aged.total_requests) - aged.total_retries)

    def record_request(self, state: BudgetState, now: float, count: int = 1) -> BudgetState:
        """``state`` after ``count`` first attempts at ``now``."""
        aged = self._at(state, now)
        # The constructor, not attrs.evolve: this runs on every first attempt, and evolve's
        # field introspection cost more than the rest of it (benchmarks/README.md).
        return BudgetState(aged.slot, (aged.requests[0] + count, *aged.requests[1:]), aged.retries)

    def try_retry(self, state: BudgetState, now: float) -> tuple[bool, BudgetState]:
        """Take one retry at ``now`` if the budget allows it: (allowed, the new state).

        A refused retry changes nothing: it is not counted against the budget.
        """
        aged = self._at(state, now)
        # With a tolerance for float rounding (0.7 * 90 is 62.99999999999999, not 63): the
        # same one the Redis store's script allows, so both stores grant the same retries.
        if aged.total_retries + 1 > self.allowance(aged.total_requests) + ALLOWANCE_TOLERANCE:
            return False, aged
        return True, attrs.evolve(aged, retries=(aged.retries[0] + 1, *aged.retries[1:]))
