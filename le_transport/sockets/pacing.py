"""The per-process reconnect pacer: the pure token bucket, acted on with the injected clock.

Share one :class:`ReconnectPacer` among every socket of a process (an engine makes one for its
sockets; pass the same pacer to several engines to pace them together).
"""

from __future__ import annotations

import logging

from .._checks import require_kind
from ..clock import Clock
from ..policies.pacing import TokenBucket

__all__ = ["ReconnectPacer"]

_log = logging.getLogger("le_transport.sockets")


class ReconnectPacer:
    """Hands out reconnect slots at the bucket's rate; :meth:`acquire` waits for one.

    A socket holds its slot only if it wakes on time for it: one whose sleep ended more than
    the bucket's ``grace`` late (a busy event loop) takes a new slot, so that the sockets a
    stalled loop wakes together do not connect together. :attr:`missed` counts those. A socket
    forfeits at most the bucket's ``max_misses`` slots in a row, so a loop that is always late
    delays its sockets but never starves them.
    """

    __slots__ = ("_bucket", "_clock", "missed")

    def __init__(self, clock: Clock, bucket: TokenBucket | None = None) -> None:
        # Checked here, by name: a wrong kind was taken, and failed only at the first
        # reconnect (AttributeError), long after; a falsy one (0) became the default bucket.
        owner = type(self).__name__
        require_kind(clock, Clock, owner=owner, field="clock", optional=False)
        require_kind(bucket, TokenBucket, owner=owner, field="bucket")
        self._clock = clock
        self._bucket = TokenBucket() if bucket is None else bucket
        #: Slots forfeited because their socket woke too late for them.
        self.missed = 0

    @property
    def bucket(self) -> TokenBucket:
        """The bucket's current state."""
        return self._bucket

    def reserve(self) -> float:
        """Take a slot now; the seconds to wait before using it."""
        reservation = self._bucket.reserve(self._clock.now())
        self._bucket = reservation.bucket
        return reservation.wait

    async def _reserve_turn(self) -> float:
        """Take a slot now; the seconds to wait before using it (a fleet asks its store)."""
        return self.reserve()

    async def acquire(self) -> float:
        """Take a slot and wait for it; returns the time waited. On return, connect at once:
        the slot is now (or less than the bucket's ``grace`` ago)."""
        started = self._clock.now()
        misses = 0
        while True:
            wait = await self._reserve_turn()
            now = self._clock.now()
            if wait <= 0:
                return now - started
            slot = now + wait
            await self._clock.sleep(wait)
            now = self._clock.now()
            if not self._bucket.missed(slot, now, misses):
                return now - started
            misses += 1
            self.missed += 1
            _log.debug(
                "reconnect slot missed by %.3f s; taking a new one",
                now - slot,
                extra={"late": round(now - slot, 3)},
            )

    def __repr__(self) -> str:
        return f"ReconnectPacer(rate={self._bucket.rate}, burst={self._bucket.burst})"
