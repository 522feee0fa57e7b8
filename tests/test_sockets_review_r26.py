"""The socket's ready_timeout acting at its expiry (``stall_timeout``'s ``on_expiry``), and the
upgrade's headers: what was still wrong.

- ``stall_timeout``'s ``on_expiry`` took anything: an ``async def`` (the natural way to write
  "close the connection" in asyncio) was called and its coroutine dropped, unawaited, so that
  nothing happened at the expiry but a ``RuntimeWarning``; and what is not callable failed
  only when the time was up, logged as the callback's own failure. Refused when the timeout
  is made now, as a bad ``seconds`` or ``clock`` is; an awaitable answered at the expiry (an
  object with an async ``__call__``) is closed and said, not left to warn at collection.

On the virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import warnings
from typing import Any

import pytest

from le_transport import ConfigurationError
from le_transport.clock import stall_timeout
from le_transport.testing import VirtualClock

# -- stall_timeout's on_expiry -----------------------------------------------------------------


async def _on_expiry_async() -> None:
    """What must not be an on_expiry: a coroutine function."""


@pytest.mark.parametrize(
    "on_expiry",
    [_on_expiry_async, functools.partial(_on_expiry_async), 5, "close"],
    ids=["async def", "partial of one", "int", "str"],
)
async def test_stall_timeout_refuses_an_on_expiry_it_cannot_call_when_made(
    clock: VirtualClock, on_expiry: Any
) -> None:
    with pytest.raises(ConfigurationError, match="on_expiry"):
        stall_timeout(clock, 5.0, lambda: 0.0, on_expiry=on_expiry)


async def test_an_on_expiry_answering_an_awaitable_is_said_and_its_coroutine_closed(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An object with an async ``__call__`` passes for a plain callable: what it answers at the
    expiry is closed (no "never awaited" warning), said in the log, and the block is cancelled
    all the same."""

    class Closer:
        async def __call__(self) -> None:
            """Never run."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TimeoutError):
            async with stall_timeout(clock, 5.0, lambda: 0.0, on_expiry=Closer()):
                await clock.sleep(60.0)
        del Closer
        import gc

        gc.collect()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], caught
    [line] = [r for r in caplog.records if "on_expiry" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "awaitable" in line.getMessage()


async def test_a_plain_on_expiry_runs_once_at_the_expiry(clock: VirtualClock) -> None:
    """What the checks leave alone: a plain function, a bound method, a partial of one."""
    fired: list[float] = []

    class Holder:
        def end(self, tag: str = "") -> None:
            fired.append(clock.now())

    for on_expiry in (
        lambda: fired.append(clock.now()),
        Holder().end,
        functools.partial(Holder().end, "x"),
    ):
        with contextlib.suppress(TimeoutError):
            async with stall_timeout(clock, 5.0, lambda: clock.now() - 100, on_expiry=on_expiry):
                await asyncio.Event().wait()
    assert len(fired) == 3
