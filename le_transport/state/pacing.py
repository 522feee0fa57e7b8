"""Reconnect pacing for a fleet: one token bucket shared by every process.

After a mass socket drop (a LiveEngage deploy, a network blip) every socket of every process wants
to reconnect at once. The socket layer's :class:`~le_transport.sockets.ReconnectPacer` bounds one
process; :class:`FleetPacer` is a drop-in replacement that keeps the bucket in the store, so the
fleet as a whole comes back at ``rate`` per second after ``burst``: give it to
``Engine(pacer=FleetPacer(store, account=...))``. Jittered backoff still applies on top.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from .._checks import require_kind
from ..clock import Clock, RealClock
from ..policies._validate import finite_number
from ..policies.pacing import TokenBucket
from ..sockets.pacing import ReconnectPacer
from .fallback import guarded
from .store import StateStore, check_store, state_key, store_clock

__all__ = ["FleetPacer"]

_log = logging.getLogger("le_transport.state")


class FleetPacer(ReconnectPacer):
    """A :class:`ReconnectPacer` whose bucket ``name`` of ``account`` lives in ``store``.

    With a :class:`~le_transport.state.FallbackStore`, a process whose Redis is out paces
    itself on a local bucket of the same rate and burst. Any store but a plain ``MemoryStore``
    or a ``FallbackStore`` (a Redis store, a caller's own, a ``MemoryStore`` subclass) is
    wrapped in one, so a reservation that does not answer within its ``op_timeout`` (2 s for
    a caller's store) is cut, logged, and paced locally. :meth:`acquire` is the per-process
    one, on the fleet's bucket: a process that wakes more than the bucket's ``grace`` after its
    turn (a stalled loop) forfeits it and takes a new one. It waits on ``clock``, by default the
    store's own (its ``clock`` attribute: a ``MemoryStore``'s, a ``RedisStore`` made with
    ``clock=``), else the real clock, as :class:`~le_transport.state.SharedSession` picks it.

    The store's bucket is written by every process of the fleet, so what it answers is not
    trusted blindly: a wait that is no number of seconds >= 0 (inf, NaN, a negative) paces this
    process on its own bucket instead, and a wait longer than :attr:`MAX_SHARED_WAIT` is cut to
    it (with a warning): a damaged or hostile entry must not hold a reconnect for hours.
    """

    #: The longest wait, in seconds, taken from the fleet's store for one turn: 15 minutes. The
    #: default bucket (700 a second) queues a fleet of 600,000 sockets dropped at once within
    #: it, and it is shorter than the longest backoff the library uses (the re-login schedule's
    #: 16 minutes). A longer answer is a damaged entry (its tokens written far below 0) or a
    #: bucket too slow for its fleet: the socket waits this long, then connects.
    MAX_SHARED_WAIT: ClassVar[float] = 900.0

    def __init__(
        self,
        store: StateStore,
        *,
        account: str,
        bucket: TokenBucket | None = None,
        clock: Clock | None = None,
        name: str = "reconnect",
    ) -> None:
        check_store("FleetPacer", "store", store)
        # Checked before the default replaces a missing one: FleetPacer(clock="x") was taken,
        # and failed at the first reconnect.
        require_kind(clock, Clock, owner="FleetPacer", field="clock")
        # By default the store's own clock (a MemoryStore's, a RedisStore made with clock=),
        # as SharedSession and SharedDomainMap pick it: the turns its bucket hands out are
        # on that clock, and waiting for them on another one waited the wrong time.
        super().__init__(clock if clock is not None else store_clock(store) or RealClock(), bucket)
        # Wrapped unless it cannot fail (guarded): a MemoryStore subclass too, as one whose
        # reserve hung held every paced reconnect for ever.
        self._store: StateStore = guarded(store, self._clock)
        self._key = state_key(account, "pace", name)
        # Whether a store's answer that is no wait has been logged (once is enough).
        self._bad_wait_logged = False
        # Whether a wait past MAX_SHARED_WAIT has been logged as a warning (later ones: debug).
        self._long_wait_logged = False

    async def reserve_shared(self) -> float:
        """Take a turn in the fleet's bucket: seconds to wait before using it."""
        return await self._store.reserve(self._key, self.bucket)

    async def _reserve_turn(self) -> float:
        # The turn is at the returned wait after the store answered: the store's clock and
        # ours agree to within a round trip, which the bucket's grace covers. A process that
        # wakes past its turn forfeits it, as in ReconnectPacer.acquire.
        wait = await self.reserve_shared()
        if finite_number(wait) and wait >= 0:
            if wait > self.MAX_SHARED_WAIT:
                return self._cut(wait)
            return wait
        # A caller's own store answering inf (a socket waiting for ever: never reconnected),
        # NaN (a ValueError from the clock, stopping the socket) or a negative: this process
        # paces itself on its own bucket, as while the store is out.
        if not self._bad_wait_logged:
            self._bad_wait_logged = True
            _log.warning(
                "the fleet's reconnect pace %s answered %r, not a wait in seconds: pacing "
                "on this process's own bucket",
                self._key,
                wait,
                extra={"key": self._key},
            )
        return self.reserve()

    def _cut(self, wait: float) -> float:
        """A wait past :attr:`MAX_SHARED_WAIT`, cut to it and logged (a warning the first
        time, then at debug level: every socket of a fleet meets the same damaged entry)."""
        level = logging.DEBUG if self._long_wait_logged else logging.WARNING
        self._long_wait_logged = True
        _log.log(
            level,
            "the fleet's reconnect pace %s answered a wait of %.6g s, past the most a turn may "
            "wait (%g s): waiting that long instead",
            self._key,
            wait,
            self.MAX_SHARED_WAIT,
            extra={"key": self._key},
        )
        return self.MAX_SHARED_WAIT

    def __repr__(self) -> str:
        return f"FleetPacer(key={self._key!r}, rate={self.bucket.rate}, burst={self.bucket.burst})"
