"""Stopping a task of our own without taking the caller's cancellation for the task's."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end; its own outcome is read and dropped.

    ``task.cancel()`` then ``await task`` inside ``suppress(CancelledError)`` swallowed a
    cancellation aimed at the *caller* while it waited (the cancel reaches the awaited task,
    whose CancelledError the suppress then eats): a cancelled ``Engine.close()`` went on and
    returned normally, its task left with a pending cancel. :func:`asyncio.wait` never
    cancels what it waits for, and lets the caller's own cancellation through.
    """
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # read, so that asyncio does not report it as never retrieved
