"""Test doubles shared by several test modules: a late clock and a counting random source."""

from __future__ import annotations

import random

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


class CountingRandom(random.Random):
    """A seeded random source that counts its ``random()`` draws."""

    def __init__(self, seed: int = 7) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()
