"""Reconnect pacing for a fleet: one token bucket shared by every process.

After a mass socket drop (a LiveEngage deploy, a network blip) every socket of every process wants
to reconnect at once. The socket layer's :class:`~le_transport.sockets.ReconnectPacer` bounds one
process; :class:`FleetPacer` is a drop-in replacement that keeps the bucket in the store, so the
fleet as a whole comes back at ``rate`` per second after ``burst``: give it to
``Engine(pacer=FleetPacer(store, account=...))``. Jittered backoff still applies on top.
"""

from __future__ import annotations

import logging

from ..clock import Clock, RealClock
from ..policies.pacing import TokenBucket
from ..sockets.pacing import ReconnectPacer
from .fallback import FallbackStore
from .memory import MemoryStore
from .store import StateStore, state_key

__all__ = ["FleetPacer"]

_log = logging.getLogger("le_transport.sockets")


class FleetPacer(ReconnectPacer):
    """A :class:`ReconnectPacer` whose bucket ``name`` of ``account`` lives in ``store``.

    With a :class:`~le_transport.state.FallbackStore`, a process whose Redis is out paces
    itself on a local bucket of the same rate and burst.
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
        super().__init__(clock or RealClock(), bucket)
        # A store that can fail (Redis) is wrapped so that a failure falls back, never raises.
        self._store: StateStore = (
            store
            if isinstance(store, (MemoryStore, FallbackStore))
            else FallbackStore(store, clock=self._clock)
        )
        self._key = state_key(account, "pace", name)

    async def reserve_shared(self) -> float:
        """Take a turn in the fleet's bucket: seconds to wait before using it."""
        return await self._store.reserve(self._key, self.bucket)

    async def acquire(self) -> float:
        """Take a turn in the fleet's bucket and wait for it on the clock; returns the time
        waited. As the per-process pacer does, a process that wakes more than the bucket's
        ``grace`` after its turn (a busy loop) forfeits it and takes a new one: the turns a
        stalled loop wakes together would otherwise connect together, past the fleet's bound.
        """
        started = self._clock.now()
        while True:
            wait = await self.reserve_shared()
            # The turn is at ``wait`` after the store answered (its clock and ours agree to
            # within a round trip, which the grace covers).
            now = self._clock.now()
            if wait <= 0:
                return now - started
            turn = now + wait
            await self._clock.sleep(wait)
            now = self._clock.now()
            if not self.bucket.missed(turn, now):
                return now - started
            self.missed += 1
            _log.debug(
                "fleet reconnect turn missed by %.3f s; taking a new one",
                now - turn,
                extra={"late": round(now - turn, 3)},
            )

    def __repr__(self) -> str:
        return f"FleetPacer(key={self._key!r}, rate={self.bucket.rate}, burst={self.bucket.burst})"
