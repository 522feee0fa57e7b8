"""The in-memory state store: the default, for one process, on the injected clock."""

from __future__ import annotations

import math

import attrs

from ..clock import Clock, RealClock
from ..errors import ConfigurationError
from ..policies._validate import finite_number
from ..policies.budget import BudgetState, RetryBudget
from ..policies.pacing import TokenBucket
from .store import Entry

__all__ = ["MemoryStore"]


def _check_ttl(ttl: float) -> None:
    # finite_number: a plain comparison lets an int past float's range through, and adding it
    # to the clock's time then raises OverflowError.
    if not (finite_number(ttl) and ttl > 0):
        raise ConfigurationError(f"a stored value needs a finite TTL > 0, got {ttl!r:.40}")


def _check_value(value: object) -> None:
    # Redis would store str(value) and hand back a str: the two stores must not disagree.
    if not isinstance(value, str):
        raise ConfigurationError(f"a stored value must be a str, got {type(value).__name__}")


class _Deposits:
    """First attempts counted in one slot of a budget's window, not yet in the budget's state."""

    __slots__ = ("at", "count", "policy", "slot")

    def __init__(self, policy: RetryBudget, slot: int, at: float, count: int) -> None:
        self.policy = policy
        self.slot = slot
        self.at = at
        self.count = count


class MemoryStore:
    """A :class:`~le_transport.state.StateStore` in this process's memory.

    Values expire on ``clock``; the budget and the token bucket run the pure policies directly.
    Nothing here can fail or block, which is why it is also what a fleet falls back to.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"MemoryStore.clock must be a Clock (now, sleep), got {type(clock).__name__}"
            )
        self._clock = clock or RealClock()
        self._values: dict[str, tuple[str, float]] = {}
        self._budgets: dict[str, BudgetState] = {}
        self._deposits: dict[str, _Deposits] = {}
        self._buckets: dict[str, TokenBucket] = {}

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
        item = self._live(key)
        return None if item is None else Entry(item[0], item[1] - self._clock.now())

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        _check_ttl(ttl)
        _check_value(value)
        self._values[key] = (value, self._clock.now() + ttl)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Store ``value`` only if ``key`` holds nothing."""
        _check_ttl(ttl)
        _check_value(value)
        if self._live(key) is not None:
            return False
        self._values[key] = (value, self._clock.now() + ttl)
        return True

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        """Remove ``key`` (only while it holds ``only_if``, if given)."""
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
        """
        now = self._clock.now()
        # RetryBudget.slot_of's arithmetic, inline: this runs on every first attempt.
        slot = math.floor(now / (policy.window / policy.slots))
        held = self._deposits.get(key)
        if held is not None:
            if held.slot == slot and held.policy is policy:
                held.count += count
                return
            self._record_deposits(key)
        self._deposits[key] = _Deposits(policy, slot, now, count)

    def _record_deposits(self, key: str) -> None:
        held = self._deposits.pop(key, None)
        if held is None:
            return
        state = self._budgets.get(key) or held.policy.empty()
        self._budgets[key] = held.policy.record_request(state, held.at, held.count)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        """Count first attempts and maybe take a retry, on the pure :class:`RetryBudget`."""
        self._record_deposits(key)
        now = self._clock.now()
        state = self._budgets.get(key) or policy.empty()
        if deposits:
            state = policy.record_request(state, now, deposits)
        taken = False
        if withdraw:
            taken, state = policy.try_retry(state, now)
        self._budgets[key] = state
        return taken

    def note_retry(self, key: str, policy: RetryBudget) -> None:
        """Count a retry granted elsewhere (by the shared store), allowed or not here."""
        self._record_deposits(key)
        state = self._budgets.get(key) or policy.empty()
        aged = policy.record_request(state, self._clock.now(), 0)
        self._budgets[key] = attrs.evolve(aged, retries=(aged.retries[0] + 1, *aged.retries[1:]))

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        """Take a token on the pure :class:`TokenBucket` kept at ``key``."""
        held = self._buckets.get(key)
        if held is None or (held.rate, held.burst) != (bucket.rate, bucket.burst):
            held = attrs.evolve(bucket, tokens=None, updated_at=None)
        reservation = held.reserve(self._clock.now())
        self._buckets[key] = reservation.bucket
        return reservation.wait

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"MemoryStore(keys={len(self._values)})"
