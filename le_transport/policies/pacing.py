"""Reconnect pacing: a token bucket that spreads a mass reconnect over time, as a pure value.

When a server restarts, every socket of a process drops at once. Jittered backoff spreads them
over a fraction of a second; a per-process token bucket bounds the rate on top of that: a lone
socket finds a full bucket and goes at once, while 10,000 sockets dropped together come back at
``rate`` per second after the first ``burst``. :class:`TokenBucket` holds its own state and is
replaced, never mutated: :meth:`TokenBucket.reserve` takes the time and returns the wait and the
new bucket.

A reservation is a slot in time. The bucket guarantees that slots never outrun it (at most
``burst + rate * w`` slots in any window of ``w`` seconds), but a slot only bounds the
connects if the socket connects *at* its slot. On a busy event loop a sleep ends late, and the
sockets whose sleeps ended late together would connect together. So a slot is kept only by a
socket that wakes within ``grace`` of it (:meth:`TokenBucket.missed`); a later waker forfeits
it and takes a new one at the back of the queue. Every connect then happens within ``grace``
after its slot, and the connects in any window of ``w`` seconds number at most
``burst + rate * (w + grace)``.

A socket forfeits at most ``max_misses`` slots in a row; woken late again after that, it keeps
the slot it has. Without that limit a loop that is always late by more than ``grace`` (a
process with long blocking stretches) would have its sockets forfeit slot after slot and never
reconnect: the bound would hold by starving them. Past the limit the bound degrades instead,
to ``burst + rate * (w + lateness)`` for the sockets that woke that late, and every socket gets
back.

Why the defaults (burst 20, 700 a second, grace 0.1 s): the target is that no second of a mass
reconnect holds more than 10% of a 10,000-socket process. The worst second holds at most
``burst + rate * (1 + grace)`` = 20 + 770 = 790 connects (7.9%), which leaves room below
1,000 for what no bucket controls (the measurement's own clock, attempts that fail and come
back). A lone socket still goes at once (the bucket is full), and 10,000 dropped together are
all back within about 10,000 / 700 ≈ 14 s after their backoff.
"""

from __future__ import annotations

import attrs

from ..errors import ConfigurationError
from ._validate import at_least, non_negative, optional_finite, positive, shown

__all__ = [
    "MAX_QUEUE",
    "MIN_RATE",
    "RECONNECT_BURST",
    "RECONNECT_GRACE",
    "RECONNECT_MAX_MISSES",
    "RECONNECT_RATE",
    "Reservation",
    "TokenBucket",
]

#: Reconnects let through at once before pacing starts.
RECONNECT_BURST = 20.0
#: Reconnects per second past the burst: 10,000 dropped sockets come back over about 14 s.
RECONNECT_RATE = 700.0
#: How late after its slot a socket may wake and still use it; later, it takes a new slot.
RECONNECT_GRACE = 0.1
#: Slots a socket may forfeit in a row before it keeps one however late it woke: a loop that
#: stalls now and then costs a socket a slot or two; one that is always late never starves it.
RECONNECT_MAX_MISSES = 3

#: The most reservations a bucket can queue: ``tokens`` never goes below ``-MAX_QUEUE``.
#: :meth:`TokenBucket.reserve` takes one token at a time, and past -2**53 a float no longer
#: counts down by one (-2**53 - 1 rounds back to -2**53), so no run of reservations takes a
#: bucket further; a bucket built with fewer tokens is refused.
MAX_QUEUE = float(2**53)
#: The slowest refill rate, in tokens per second. The longest wait a bucket can give is the
#: one for a full queue, ``MAX_QUEUE / rate``: at this rate about 9e285 s. That is finite, and
#: less than half the gap between the two largest floats (2e292), so adding it to any finite
#: time (the bucket's ``updated_at``, the caller's clock reading) stays finite too. A slower
#: rate made waits infinite: at 1e-320 (a subnormal) even the wait for one token overflowed.
#: It is a bound for finiteness, not a practical minimum: a rate of 1e-13 is still valid.
MIN_RATE = 1e-270


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
    to wait until its token will have accrued, so waits are first come, first served. A
    reservation is good within ``grace`` seconds after its slot (:meth:`missed`).

    - ``rate``: a finite number >= :data:`MIN_RATE` (1e-270) tokens per second, so that every
      wait the bucket gives, up to a full queue's ``MAX_QUEUE / rate``, is finite, and stays
      finite added to any finite time.
    - ``burst``: a finite number >= 1.
    - ``tokens``: None or a finite number >= ``-MAX_QUEUE`` (-2**53), the deepest queue
      :meth:`reserve` can make; a deeper one made the wait for it infinite.
    - ``updated_at``: None or a finite number (a clock reading).
    - ``grace``: a finite number >= 0; ``max_misses``: an int >= 0.
    """

    rate: float = attrs.field(
        default=RECONNECT_RATE,
        validator=at_least(MIN_RATE, f"a finite number >= MIN_RATE ({MIN_RATE:g} tokens/s)"),
    )
    burst: float = attrs.field(default=RECONNECT_BURST, validator=positive)
    tokens: float | None = attrs.field(
        default=None,
        validator=at_least(-MAX_QUEUE, "None or a finite number >= -MAX_QUEUE (-2**53)"),
    )
    updated_at: float | None = attrs.field(default=None, validator=optional_finite)
    grace: float = attrs.field(default=RECONNECT_GRACE, validator=non_negative, kw_only=True)
    max_misses: int = attrs.field(default=RECONNECT_MAX_MISSES, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.burst < 1:
            raise ConfigurationError(f"TokenBucket.burst must be >= 1, got {self.burst!r}")
        if (
            isinstance(self.max_misses, bool)
            or not isinstance(self.max_misses, int)
            or self.max_misses < 0
        ):
            raise ConfigurationError(
                f"TokenBucket.max_misses must be an int >= 0, got {shown(self.max_misses)}"
            )

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

    def missed(self, slot: float, now: float, misses: int = 0) -> bool:
        """Whether a reservation for ``slot``, used at ``now``, came too late to use it, for a
        socket that already forfeited ``misses`` slots in a row.

        The slot's token was counted at ``slot``; used later than ``grace`` after it, it would
        join the connects of later slots and break the bucket's bound, so it is forfeit (the
        bucket stays as it is: a forfeited token is simply lost, which only slows a storm
        down). After ``max_misses`` forfeits in a row the slot is kept however late: the
        socket must get back even on a loop that is always late.
        """
        return misses < self.max_misses and now - slot > self.grace
