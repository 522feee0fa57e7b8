"""Fault injection's waits and the overload guard's fleet probe locks: the cases their
earlier fixes left out."""

from __future__ import annotations

from le_transport.errors import CircuitOpen, StateStoreError
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Outcome
from le_transport.state import FallbackStore, MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.test_guard_hot_path import _Call

# -- a probe's lock whose final delete a FallbackStore answered locally ----------------------

_HOST = "127.0.0.1:8080"
_PROBE_KEY = state_key("1", "breaker-probe", "svc", _HOST)


class _FailingDeletes(MemoryStore):
    """A shared store whose deletes fail at once while ``fail`` is set."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.fail = False

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        if self.fail:
            raise StateStoreError("connection refused")
        return await super().delete(key, only_if=only_if)


async def test_a_probe_lock_whose_verdicts_delete_was_answered_locally_is_freed_later() -> None:
    """A probe fails (a 503) while the shared store refuses deletes: the breaker re-opens, and
    the lock's delete is answered by the FallbackStore's local stand-in, the shared store still
    holding the lock for its 30 s lease. Before, the lock was taken for freed: once the store
    was back and the new 10 s break over, this process's next probe was refused by its own old
    lock (CircuitOpen) until the lease ended. Now it stays this process's to free."""
    clock = VirtualClock(start=100.0)
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
    await clock.sleep(5.0)
    probe = _Call("svc", _HOST)
    assert await guard.admit(probe, 1) is None
    held = await primary.get(_PROBE_KEY)
    assert held is not None, "the probe holds the fleet's lock"
    primary.fail = True
    await guard.settle(probe, 1, Outcome.response(503))  # the verdict: open again
    assert guard.breaker_state("svc", _HOST) is BreakerState.OPEN
    still = await primary.get(_PROBE_KEY)
    assert still is not None
    assert still.value == held.value, "the shared store still holds it"
    primary.fail = False
    await clock.sleep(11.0)  # past the new break and the FallbackStore's retry_interval
    nxt = _Call("svc", _HOST)
    refused = await guard.admit(nxt, 1)
    assert not isinstance(refused, CircuitOpen), "this process's own old lock kept it waiting"
    assert refused is None
    await guard.settle(nxt, 1, Outcome.response(200))
    assert guard.breaker_state("svc", _HOST) is BreakerState.CLOSED
    await guard.drain()
