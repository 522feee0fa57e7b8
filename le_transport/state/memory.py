"""The in-memory state store: the default, for one process, on the injected clock.

Its maps are keyed by what callers store (sessions, breaker trips, one budget per service, one
bucket per pace), and a long-lived process may name ever new keys. What it holds therefore
expires: a value at its TTL, a budget once its window counts nothing, a token bucket once it is
full again (each then decides exactly as a missing key does). Expired entries are swept out when
a new key would take a map past :data:`SWEEP_AFTER` entries, or past twice what the previous
sweep kept: O(1) amortised per write, and memory bounded by what is live, never by history.
"""

from __future__ import annotations

import math
from collections.abc import Sized

import attrs

from ..clock import Clock, RealClock
from ..errors import ConfigurationError
from ..policies.budget import BudgetState, RetryBudget
from ..policies.pacing import TokenBucket
from .store import (
    Entry,
    check_bucket,
    check_budget,
    check_deposits,
    check_key,
    check_only_if,
    check_seconds,
    check_ttl,
    check_value,
    closed_error,
)

__all__ = ["SWEEP_AFTER", "MemoryStore"]

#: How many entries a map of a :class:`MemoryStore` holds before a new key first sweeps out the
#: expired ones. Small enough that a few thousand dead keys never linger; after a sweep, the next
#: waits until a map holds twice what was left, so the sweeps cost O(1) per write, amortised.
SWEEP_AFTER = 1024


class _Deposits:
    """First attempts counted in one slot of a budget's window, not yet in the budget's state."""

    __slots__ = ("at", "count", "policy", "slot", "until")

    def __init__(self, policy: RetryBudget, slot: int, at: float, count: int) -> None:
        self.policy = policy
        self.slot = slot
        self.at = at
        #: Every time from ``at`` up to this one is in ``slot`` (RetryBudget.slot_end).
        self.until = policy.slot_end(slot)
        self.count = count


def _same_window(one: RetryBudget, other: RetryBudget) -> bool:
    """Whether two budgets count in the same slots: as many, as long (their ratio and floor
    may differ: each holds the same counts to its own allowance)."""
    return one is other or (one.slots == other.slots and one.slot_length == other.slot_length)


class MemoryStore:
    """A :class:`~le_transport.state.StateStore` in this process's memory.

    Values expire on ``clock``; the budget and the token bucket run the pure policies directly.
    Nothing here can fail or block, which is why it is also what a fleet falls back to.
    Entries that expired (a value past its TTL, a budget whose window counts nothing, a full
    token bucket) are swept out as new keys arrive (see the module's description), so a
    long-lived process holds what is live, not every key it ever used.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"MemoryStore.clock must be a Clock (now, sleep), got {type(clock).__name__}"
            )
        self._clock = clock or RealClock()
        self._values: dict[str, tuple[str, float]] = {}
        # Each budget with the policy it last ran on: what tells when it counts nothing.
        self._budgets: dict[str, tuple[BudgetState, RetryBudget]] = {}
        # Per key, one budget per window (slot count and slot length), as RedisStore keeps a
        # hash per window: one state aged by policies of different slot lengths read the
        # other's slots as out of its window and dropped them (or counted them in its newest
        # slot for ever), so two settings on one key (a rolling deploy, two guards sharing a
        # store) wiped each other's counts. _budgets holds the window last used at a key; the
        # others wait here, by key and window, until used again (_budget_at).
        self._parked: dict[tuple[str, int, float], tuple[BudgetState, RetryBudget]] = {}
        self._deposits: dict[str, _Deposits] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = SWEEP_AFTER
        self._closed = False

    def _check_call(self, op: str, key: object) -> None:
        """Before an operation: the store is open and ``key`` a str (else StateStoreError or
        ConfigurationError, as a RedisStore answers)."""
        if self._closed:
            raise closed_error("MemoryStore", op)
        check_key(key)

    @property
    def clock(self) -> Clock:
        """The clock values expire on."""
        return self._clock

    def _grow(self, held: Sized) -> None:
        """A new key goes into ``held``: sweep first if it is full (see the module)."""
        if len(held) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Drop every expired entry (each decides as a missing key does); rebuilt, not deleted
        from, so that the maps' tables shrink too."""
        now = self._clock.now()
        self._values = {k: item for k, item in self._values.items() if item[1] > now}
        self._budgets = {
            k: held for k, held in self._budgets.items() if not held[1].is_idle(held[0], now)
        }
        self._parked = {
            k: held for k, held in self._parked.items() if not held[1].is_idle(held[0], now)
        }
        self._deposits = {
            k: held
            for k, held in self._deposits.items()
            if held.policy.slot_of(now) - held.slot < held.policy.slots
        }
        self._buckets = {
            k: bucket for k, bucket in self._buckets.items() if bucket.available(now) < bucket.burst
        }
        left = max(
            len(self._values),
            len(self._budgets),
            len(self._parked),
            len(self._deposits),
            len(self._buckets),
        )
        self._sweep_at = max(SWEEP_AFTER, 2 * left)

    def _live(self, key: str) -> tuple[str, float] | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= self._clock.now():
            del self._values[key]
            return None
        return item

    async def get(self, key: str) -> Entry | None:
        """The value at ``key`` and its remaining TTL, or None."""
        self._check_call("get", key)
        item = self._live(key)
        return None if item is None else Entry(item[0], item[1] - self._clock.now())

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (capped at :data:`~.store.MAX_TTL`, as Redis
        keeps it); with ``only_if``, only while ``key`` still holds it. Whether it stored."""
        self._check_call("set", key)
        seconds = check_ttl(ttl)
        check_value(value)
        if only_if is not None:
            check_only_if(only_if)
            item = self._live(key)
            if item is None or item[0] != only_if:
                return False
        elif key not in self._values:
            self._grow(self._values)
        self._values[key] = (value, self._clock.now() + seconds)
        return True

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Store ``value`` only if ``key`` holds nothing; True too if it already holds exactly
        ``value`` (its TTL unchanged), as Redis answers a replayed add
        (:meth:`StateStore.add <le_transport.state.StateStore.add>`)."""
        self._check_call("add", key)
        seconds = check_ttl(ttl)
        check_value(value)
        item = self._live(key)
        if item is not None:
            return item[0] == value
        self._grow(self._values)
        self._values[key] = (value, self._clock.now() + seconds)
        return True

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        """Remove ``key`` (only while it holds ``only_if``, if given)."""
        self._check_call("delete", key)
        check_only_if(only_if)
        item = self._live(key)
        if item is None or (only_if is not None and item[0] != only_if):
            return False
        del self._values[key]
        return True

    def deposit(self, key: str, policy: RetryBudget, count: int = 1) -> None:
        """Count ``count`` first attempts now on the budget at ``key``, without a coroutine.

        Counts made within one slot of the budget's window are kept as one number and recorded
        together (:meth:`RetryBudget.record_request` with their count, at the first one's time)
        when the slot changes or before anything reads or changes the budget at ``key``: the
        same state as recording each at once, so every withdrawal sees every deposit made
        before it. It spares the first attempt of every call a new state and two tuples.

        ``policy`` must be a :class:`RetryBudget` and ``count`` an int >= 0, as :meth:`budget`
        checks them, else a :class:`ConfigurationError` before anything is counted (a negative
        count took retries away, and a str policy raised AttributeError).
        """
        self._check_call("deposit", key)
        check_budget(policy)
        self._deposit_unchecked(key, policy, check_deposits(count))

    def _deposit_unchecked(self, key: str, policy: RetryBudget, count: int = 1) -> None:
        """:meth:`deposit` without its checks: the overload guard's hot path (every first
        attempt of a process without a shared store), whose budget was checked when the guard
        was made and whose count is the default one."""
        now = self._clock.now()
        held = self._deposits.get(key)
        # RetryBudget.slot_of's arithmetic, inline: this runs on every first attempt; and only
        # if the time is not between the tally's first and the end of its slot.
        if (
            held is not None
            and held.policy is policy
            and (
                held.at <= now < held.until
                or held.slot == math.floor(now / (policy.window / policy.slots))
            )
        ):
            held.count += count
            return
        slot = math.floor(now / (policy.window / policy.slots))
        if held is not None:
            self._record_deposits(key)
        else:
            self._grow(self._deposits)
        self._deposits[key] = _Deposits(policy, slot, now, count)

    def _record_deposits(self, key: str) -> None:
        """Record the first attempts held for ``key`` (:meth:`deposit`) in its budget. Every
        change of a budget's state does this first: a state aged to now before they are
        recorded would count them in its newest slot (RetryBudget counts a time from the past
        there), where they would pay for retries longer than their own slot does."""
        held = self._deposits.pop(key, None)
        if held is None:
            return
        state = self._budget_of(key, held.policy)
        self._budgets[key] = (held.policy.record_request(state, held.at, held.count), held.policy)

    def _budget_at(self, key: str, policy: RetryBudget) -> tuple[BudgetState, RetryBudget] | None:
        """The budget at ``key`` on ``policy``'s window, made the one ``_budgets`` holds there
        (another window's held there before is parked), or None if there is none (and then
        ``_budgets`` holds nothing at ``key``)."""
        held = self._budgets.get(key)
        if held is not None:
            if _same_window(held[1], policy):
                return held
            # Another window's budget at this key: parked (room made first: a sweep rebuilds
            # the maps), and this window's taken out.
            window = (key, held[1].slots, held[1].slot_length)
            if window not in self._parked:
                self._grow(self._parked)
            self._parked[window] = held
        found = self._parked.pop((key, policy.slots, policy.slot_length), None)
        if found is None:
            self._budgets.pop(key, None)
        else:
            self._budgets[key] = found
        return found

    def _budget_of(self, key: str, policy: RetryBudget) -> BudgetState:
        """The budget's state at ``key`` on ``policy``'s window (empty if none), room made if
        it is a new one; the caller stores the new state at ``_budgets[key]``."""
        held = self._budget_at(key, policy)
        if held is None:
            self._grow(self._budgets)
            return policy.empty()
        return held[0]

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        """Count first attempts and maybe take a retry, on the pure :class:`RetryBudget`."""
        self._check_call("budget", key)
        check_budget(policy)
        deposits = check_deposits(deposits)
        self._record_deposits(key)
        now = self._clock.now()
        state = self._budget_of(key, policy)
        if deposits:
            state = policy.record_request(state, now, deposits)
        taken = False
        if withdraw:
            taken, state = policy.try_retry(state, now)
        self._budgets[key] = (state, policy)
        return taken

    async def refund(self, key: str, policy: RetryBudget, *, age: float) -> bool:
        """Give back one retry :meth:`budget` took ``age`` seconds ago (on this store's clock)
        that was never sent: one off the slot it was counted in. Whether it was given back: a
        slot that left the window, or counts no retry, is left as it is, so the budget never
        goes below zero nor gives back more than it took. ``policy`` must be a
        :class:`RetryBudget` and ``age`` a finite number of seconds >= 0, else a
        :class:`ConfigurationError`."""
        self._check_call("refund", key)
        check_budget(policy)
        age = check_seconds("MemoryStore.refund", "age", age, zero=True)
        return self._refund_unchecked(key, policy, age)

    def _refund_unchecked(self, key: str, policy: RetryBudget, age: float) -> bool:
        """:meth:`refund` without its checks and without a coroutine (the overload guard's own
        store, from a synchronous ``abandon``)."""
        # Before the state is aged to now: first attempts still held from an earlier slot,
        # recorded after it, would land in the newest slot (see _record_deposits).
        self._record_deposits(key)
        held = self._budget_at(key, policy)
        if held is None:
            return False
        now = self._clock.now()
        # Aged to now (nothing counted: record_request with 0), so that index i is slot - i.
        state = policy.record_request(held[0], now, 0)
        index = state.slot - policy.slot_of(now - age)
        if not 0 <= index < policy.slots or state.retries[index] < 1:
            return False
        retries = list(state.retries)
        retries[index] -= 1
        self._budgets[key] = (attrs.evolve(state, retries=tuple(retries)), policy)
        return True

    def note_retry(self, key: str, policy: RetryBudget) -> None:
        """Count a retry granted elsewhere (by the shared store), allowed or not here."""
        self._check_call("note_retry", key)
        check_budget(policy)
        self._record_deposits(key)
        state = self._budget_of(key, policy)
        aged = policy.record_request(state, self._clock.now(), 0)
        self._budgets[key] = (
            attrs.evolve(aged, retries=(aged.retries[0] + 1, *aged.retries[1:])),
            policy,
        )

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        """Take a token on the pure :class:`TokenBucket` kept at ``key``."""
        self._check_call("reserve", key)
        check_bucket(bucket)
        held = self._buckets.get(key)
        if held is None:
            self._grow(self._buckets)
            held = attrs.evolve(bucket, tokens=None, updated_at=None)
        elif (held.rate, held.burst) != (bucket.rate, bucket.burst):
            # Another caller's settings at this key (two pacers sharing a key, a deploy changing
            # them): its queue is carried over, clamped to this burst (as available() clamps
            # it), and refilled at this rate from its last update, as RedisStore's script does.
            # Reset to full, a bucket used by both alternately paced nothing.
            tokens = None if held.tokens is None else min(held.tokens, bucket.burst)
            held = attrs.evolve(bucket, tokens=tokens, updated_at=held.updated_at)
        reservation = held.reserve(self._clock.now())
        self._buckets[key] = reservation.bucket
        return reservation.wait

    async def close(self) -> None:
        """Close the store: what it holds is dropped, and every later operation raises
        :class:`~le_transport.errors.StateStoreError` ("the store is closed"), as a closed
        :class:`~le_transport.state.RedisStore` does (a store used after its close is a bug
        that a store answering on would hide). Idempotent."""
        self._closed = True
        self._values = {}
        self._budgets = {}
        self._parked = {}
        self._deposits = {}
        self._buckets = {}

    def __repr__(self) -> str:
        return f"MemoryStore(keys={len(self._values)})"
