"""The per-process reconnect pacer: the pure token bucket, acted on with the injected clock.

Share one :class:`ReconnectPacer` among every socket of a process (an engine makes one for its
sockets; pass the same pacer to several engines to pace them together).
"""

from __future__ import annotations

from ..clock import Clock
from ..policies.pacing import TokenBucket

__all__ = ["ReconnectPacer"]


class ReconnectPacer:
    """Hands out reconnect slots at the bucket's rate; :meth:`acquire` waits for one."""

    __slots__ = ("_bucket", "_clock")

    def __init__(self, clock: Clock, bucket: TokenBucket | None = None) -> None:
        self._clock = clock
        self._bucket = bucket or TokenBucket()

    @property
    def bucket(self) -> TokenBucket:
        """The bucket's current state."""
        return self._bucket

    def reserve(self) -> float:
        """Take a slot now; the seconds to wait before using it."""
        reservation = self._bucket.reserve(self._clock.now())
        self._bucket = reservation.bucket
        return reservation.wait

    async def acquire(self) -> float:
        """Take a slot and wait for it; returns the wait."""
        wait = self.reserve()
        if wait > 0:
            await self._clock.sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"ReconnectPacer(rate={self._bucket.rate}, burst={self._bucket.burst})"
