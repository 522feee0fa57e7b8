"""Single flight: concurrent callers share one execution of a login, refresh or fetch.

A hundred requests that find no token at once must cause one login, not a hundred; and when
that login fails, all hundred get its error instead of each trying again. When the provider
closes (its engine closes) during the run, every caller waiting for it gets
:class:`~le_transport.errors.EngineClosed`, the error of a call in progress at close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .._tasks import stop_task
from ..errors import EngineClosed

__all__ = ["SingleFlight"]

T = TypeVar("T")


def _consume(task: asyncio.Task[object]) -> None:
    # Every caller may have been cancelled before the result arrived: retrieve the exception
    # so that asyncio does not report it as never retrieved.
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[T]):
    """Runs at most one ``fn()`` at a time; callers arriving meanwhile await the same result.

    The shared run is shielded: a caller that is cancelled stops waiting, the run goes on for
    the others. :meth:`cancel` stops it (on close): a caller that was not cancelled itself then
    gets :class:`~le_transport.errors.EngineClosed` saying what was stopped (``what``, e.g.
    ``"user_login[123]: the login"``), a caller that was cancelled its ``CancelledError``.
    """

    __slots__ = ("_name", "_task", "_what")

    def __init__(self, name: str, what: str | None = None) -> None:
        self._name = name
        self._what = what if what is not None else name
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self._task is not None and not self._task.done()

    def start(self, fn: Callable[[], Awaitable[T]]) -> None:
        """Start a run of ``fn`` if none is in progress, without waiting for it: a caller
        that may not wait (its deadline passed) still gets the run going for the others."""
        self._started(fn)

    def _started(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        task = self._task
        if task is None or task.done():
            task = asyncio.ensure_future(fn())
            task.set_name(self._name)
            task.add_done_callback(_consume)
            self._task = task
        return task

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """The result of the run in progress, or of a new run of ``fn`` if there is none."""
        task = self._started(fn)
        # asyncio.wait, not a shield: it raises only if this caller is cancelled (the run goes
        # on for the others), and the run's own end is read below. A shield re-raised the
        # run's cancellation (on close) here as a CancelledError, which had to be told from the
        # caller's own by the task's count of cancellation requests: a count Python 3.11's
        # TaskGroup can leave behind, and a caller nobody cancelled got a bare CancelledError.
        await asyncio.wait({task})
        if not task.cancelled():
            return task.result()
        # Only the shared run was cancelled (cancel(), on close): a bare CancelledError would
        # escape the typed errors of everything above (Engine.request, the retry loop), and
        # could even be taken for a cancellation of the caller's own task.
        raise EngineClosed(
            f"{self._what} in progress was stopped: its provider was closed (the engine closed)"
        )

    async def cancel(self) -> None:
        """Cancel the run in progress, if any, and wait for it to end."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            await stop_task(task)

    def __repr__(self) -> str:
        return f"SingleFlight({self._name!r}, running={self.running})"
