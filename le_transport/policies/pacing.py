"""Reconnect pacing: a token bucket that spreads a mass reconnect over time, as a pure value.

When a server restarts, every socket of a process drops at once. Jittered backoff spreads them
over a fraction of a second; a per-process token bucket bounds the rate on top of that: a lone
socket finds a full bucket and goes at once, while 10,000 sockets dropped together come back at
``rate`` per second after the first ``burst``. :class:`TokenBucket` holds its own state and is
replaced, never mutated: :meth:`TokenBucket.reserve` takes the time and returns the wait and the
new bucket.
"""

from __future__ import annotations

import attrs

from ..errors import ConfigurationError
from ._validate import positive

__all__ = ["RECONNECT_BURST", "RECONNECT_RATE", "Reservation", "TokenBucket"]

#: Reconnects let through at once before pacing starts.
RECONNECT_BURST = 100.0
#: Reconnects per second past the burst: 10,000 dropped sockets come back over about 10 s.
RECONNECT_RATE = 1000.0


@attrs.frozen
class Reservation:
    """One token taken: wait ``wait`` seconds before using it; ``bucket`` is the new state."""

    wait: float
    bucket: TokenBucket


@attrs.frozen
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``tokens`` and ``updated_at`` are the
    state (``updated_at`` None: full, never used).

    A reservation may drive ``tokens`` below zero: that is a queue of reservations, each told
    to wait until its token will have accrued, so waits are first come, first served.
    """

    rate: float = attrs.field(default=RECONNECT_RATE, validator=positive)
    burst: float = attrs.field(default=RECONNECT_BURST, validator=positive)
    tokens: float | None = None
    updated_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.burst < 1:
            raise ConfigurationError(f"TokenBucket.burst must be >= 1, got {self.burst!r}")

    def available(self, now: float) -> float:
        """Tokens available at ``now`` (negative: reservations are queued)."""
        if self.tokens is None or self.updated_at is None:
            return self.burst
        return min(self.burst, self.tokens + max(0.0, now - self.updated_at) * self.rate)

    def reserve(self, now: float) -> Reservation:
        """Take one token at ``now``: how long to wait for it, and the bucket after."""
        # Time never runs backwards for the bucket: a caller with a stale reading is treated
        # as arriving at the bucket's last update.
        at = now if self.updated_at is None else max(now, self.updated_at)
        tokens = self.available(at) - 1.0
        wait = 0.0 if tokens >= 0 else -tokens / self.rate
        return Reservation(wait + (at - now), attrs.evolve(self, tokens=tokens, updated_at=at))
