"""A clock for pacing tests: the virtual clock, with sleeps that end late as on a busy loop."""

from __future__ import annotations

from le_transport.testing import VirtualClock


class LateClock:
    """The virtual clock, except that each sleep ends the next of ``late`` seconds late."""

    def __init__(self, clock: VirtualClock, late: list[float]) -> None:
        self._clock = clock
        self._late = late

    def now(self) -> float:
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds + (self._late.pop(0) if self._late else 0.0))
