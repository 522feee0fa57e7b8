"""Reconnect pacing for a fleet: one token bucket shared by every process.

After a mass socket drop (a LiveEngage deploy, a network blip) every socket of every process wants
to reconnect at once. A per-process :class:`~le_transport.policies.TokenBucket` bounds one
process; :class:`FleetPacer` keeps the bucket in the store, so the fleet as a whole comes back at
``rate`` per second after ``burst``. Jittered backoff still applies on top.
"""

from __future__ import annotations

from ..clock import Clock, RealClock
from ..policies.pacing import TokenBucket
from .store import StateStore, state_key

__all__ = ["FleetPacer"]


class FleetPacer:
    """Waits for a turn in the fleet-wide bucket ``name`` of ``account``.

    The socket layer calls :meth:`wait_turn` before each reconnect attempt.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        account: str,
        bucket: TokenBucket | None = None,
        clock: Clock | None = None,
        name: str = "reconnect",
    ) -> None:
        self._store = store
        self._bucket = bucket or TokenBucket()
        self._clock = clock or RealClock()
        self._key = state_key(account, "pace", name)

    async def reserve(self) -> float:
        """Take a turn: seconds to wait before using it."""
        return await self._store.reserve(self._key, self._bucket)

    async def wait_turn(self) -> float:
        """Take a turn and wait for it on the clock; returns the wait."""
        wait = await self.reserve()
        if wait > 0:
            await self._clock.sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"FleetPacer(key={self._key!r}, bucket={self._bucket!r})"
