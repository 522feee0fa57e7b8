"""FleetPacer with a caller's own MemoryStore subclass: its reserve is bounded as any
caller's store is (FallbackStore.op_timeout), on the virtual clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from le_transport.policies.pacing import TokenBucket
from le_transport.state import FleetPacer, MemoryStore
from le_transport.state.fallback import DEFAULT_PRIMARY_TIMEOUT
from le_transport.testing import VirtualClock


class _HangingReserveStore(MemoryStore):
    """A caller's store built on MemoryStore whose reserve never answers (its client has no
    timeout)."""

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover


async def test_a_caller_s_memory_store_whose_reserve_hangs_is_cut_and_paced_locally(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A MemoryStore subclass was used as it is: a reserve that never answered held every
    paced reconnect of the process for ever."""
    pacer = FleetPacer(_HangingReserveStore(clock), account="1", clock=clock)
    started = clock.now()
    with caplog.at_level(logging.WARNING, logger="le_transport.state"):
        # A real-time guard: without a bound the turn never comes.
        async with asyncio.timeout(30):
            wait = await pacer.acquire()
    # Cut at the store's bound; the process's own bucket then gives its first turn at once.
    assert clock.now() - started == pytest.approx(wait)
    assert wait == pytest.approx(DEFAULT_PRIMARY_TIMEOUT)
    assert "did not answer within" in caplog.text


async def test_a_plain_memory_store_is_used_as_it_is(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    pacer = FleetPacer(store, account="1", clock=clock)
    assert pacer._store is store
