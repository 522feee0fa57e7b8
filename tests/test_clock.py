"""``timeout_after`` on a clock whose ``sleep`` fails: the block ends, it does not run unbounded."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from le_transport.clock import timeout_after


class _BrokenClock:
    """A clock that tells the time but cannot sleep (as VirtualClock's autojump on a loop it
    cannot read)."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise RuntimeError("this clock cannot sleep")

    def __repr__(self) -> str:
        return "_BrokenClock()"


async def test_a_clock_that_cannot_sleep_ends_the_block_as_timed_out_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="le_transport.clock")
    never = asyncio.get_running_loop().create_future()
    unretrieved: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    with pytest.raises(TimeoutError, match="timed out after 5 s"):
        async with timeout_after(_BrokenClock(), 5):
            await never  # without the fix: waits for ever
    assert never.cancelled()
    [record] = caplog.records
    assert record.getMessage().startswith("_BrokenClock().sleep(5) failed (RuntimeError:")
    assert "cannot be kept" in record.getMessage()
    gc.collect()
    await asyncio.sleep(0)
    assert unretrieved == []  # no "Task exception was never retrieved"


async def test_an_outside_cancellation_is_still_the_callers_when_the_clock_fails() -> None:
    """The block was cancelled by its own caller before the broken clock's watchdog ran: the
    cancellation is not claimed as a timeout."""
    task = asyncio.current_task()
    assert task is not None

    async def body() -> None:
        async with timeout_after(_BrokenClock(), 5):
            task.cancel()
            await asyncio.sleep(1)

    with pytest.raises(asyncio.CancelledError):
        await body()
    task.uncancel()
