"""Event hooks: an ``async def`` with ``yield`` given as a hook.

Its call returns an async generator that nothing iterates, so its body never ran and nothing
said so: refused when the hooks are made, like an ``async def``; one that only a call shows
(a lambda around it) is logged by ``emit``, like an awaitable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

import pytest

from le_transport.errors import ConfigurationError
from le_transport.events import EventHooks, StateEvent, emit


async def _agen_hook(event: StateEvent) -> AsyncIterator[None]:
    yield None


class _AgenCall:
    async def __call__(self, event: StateEvent) -> AsyncIterator[None]:
        yield None


@pytest.mark.parametrize(
    "hook",
    [_agen_hook, functools.partial(_agen_hook), _AgenCall()],
    ids=["function", "partial", "instance"],
)
def test_an_async_generator_hook_is_refused_when_the_hooks_are_made(hook: object) -> None:
    with pytest.raises(ConfigurationError, match="called synchronously"):
        EventHooks(on_state=hook)  # type: ignore[arg-type]


def test_an_async_generator_a_hook_returns_is_logged_and_the_next_hook_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    event = StateEvent("reconnecting", "svc")
    with caplog.at_level(logging.WARNING, logger="le_transport"):
        emit([lambda e: _agen_hook(e), lambda e: seen.append(e.name)], event)
    assert seen == ["reconnecting"]
    assert "returned an async generator, which nothing iterates" in caplog.text


def test_a_plain_generator_hook_is_still_taken() -> None:
    def gen(event: StateEvent) -> object:
        yield event

    assert EventHooks(on_state=gen).on_state == (gen,)
