"""Leftovers of the overload guard's fleet probe locks, the fallback store's op_timeout, the
retry middleware's trace hooks and the socket keepalives:

- ``OverloadGuard`` took an abandoned probe's fleet lock for freed once its delete answered,
  also when a ``FallbackStore`` answered it locally (its primary failing fast): the lock,
  still held by the shared store, kept this process (and the fleet) from probing until its
  lease ended, once the store was back.

Virtual time.
"""

from __future__ import annotations

from le_transport.errors import CircuitOpen, StateStoreError
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Outcome
from le_transport.state import FallbackStore, MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.test_guard_hot_path import _Call

# -- 1. an abandoned probe's lock, its delete answered locally ----------------------------------

_HOST = "127.0.0.1:8080"
_KEY = ("svc", _HOST)
_PROBE_KEY = state_key("1", "breaker-probe", "svc", _HOST)


class _FailingDeletes(MemoryStore):
    """A shared store whose deletes fail at once while ``fail`` is set (a Redis connection
    refused for a moment)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.fail = False

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        if self.fail:
            raise StateStoreError("connection refused")
        return await super().delete(key, only_if=only_if)


async def _guard_half_open(clock: VirtualClock) -> tuple[OverloadGuard, _FailingDeletes]:
    primary = _FailingDeletes(clock)
    breaker = CircuitBreaker(
        minimum_throughput=4,
        breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0),
        probe_lease=30.0,
    )
    guard = OverloadGuard(
        budget=None,
        breaker=breaker,
        store=FallbackStore(primary, clock=clock, retry_interval=1.0),
        account="1",
        clock=clock,
    )
    for _ in range(breaker.minimum_throughput):
        call = _Call("svc", _HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))
    assert guard.breaker_state("svc", _HOST) is BreakerState.OPEN
    await clock.sleep(5.0)  # the break is over: half-open
    return guard, primary


async def test_a_probe_lock_whose_delete_was_answered_locally_is_freed_later() -> None:
    """The probe's lock is in the shared store; its release's delete fails there at once and
    the FallbackStore answers it locally (as it answers the next probe's own delete of it,
    while the store is still out). Still this process's to free: once the store is back, the
    next probe here frees it and goes, rather than being refused by this process's own lock
    for the rest of its 30 s lease."""
    clock = VirtualClock(start=100.0)
    guard, primary = await _guard_half_open(clock)
    probe = _Call("svc", _HOST)
    assert await guard.admit(probe, 1) is None
    held = await primary.get(_PROBE_KEY)
    assert held is not None, "the probe holds the fleet's lock"
    primary.fail = True
    guard.abandon(probe, 1)  # the release's delete: answered locally
    await clock.sleep(0.1)
    assert not guard._releases
    # While the store is out, a probe here goes on the local stand-in (its delete of the
    # stale lock answered locally too), and is abandoned in turn.
    local = _Call("svc", _HOST)
    assert await guard.admit(local, 1) is None
    guard.abandon(local, 1)
    await clock.sleep(0.1)
    still = await primary.get(_PROBE_KEY)
    assert still is not None
    assert still.value == held.value, "the shared store still holds it"
    primary.fail = False
    await clock.sleep(2.0)  # past the FallbackStore's retry_interval: the store is back
    nxt = _Call("svc", _HOST)
    refused = await guard.admit(nxt, 1)
    assert not isinstance(refused, CircuitOpen), "this process's own old lock kept it waiting"
    assert refused is None
    await guard.settle(nxt, 1, Outcome.response(200))
    await guard.drain()
