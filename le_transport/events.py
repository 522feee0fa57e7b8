"""Event hooks: callbacks a caller registers to count and trace what the transport does.

Hooks are plain callables in a frozen :class:`EventHooks` value. A hook that raises is logged
and ignored: instrumentation must never break the transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from .errors import ConfigurationError
from .policies.classify import Outcome

__all__ = ["EventHooks", "GiveUpEvent", "RetryEvent", "StateEvent", "emit"]

_log = logging.getLogger("le_transport.events")


@attrs.frozen
class RetryEvent:
    """An attempt failed and another will follow after ``pause`` seconds."""

    service: str
    method: str
    url: str
    attempt: int
    outcome: Outcome
    pause: float
    elapsed: float


@attrs.frozen
class GiveUpEvent:
    """A call failed for good: ``reason`` says why (not retryable, schedule spent, deadline).

    ``handled_by_caller`` is True when whoever made the call handles that failure itself, so
    that it has failed nothing yet for any caller: a token fetched early, while the current
    token still works (kept, or fetched on the whole schedule if it expired meanwhile), or a
    Domain API refresh with a map cached (the last good map is served). The log line then is
    a WARNING that says what the maker falls back on, and the maker reports the fallback
    itself (``refresh_failed``, ``domains_stale``). Alerting on give-ups should skip these or
    count them apart; a token fetch that has no token left to fall back on gives up without
    it. Never True for a refusal (a 4xx) or a closing engine, nor for a caller's own call.
    """

    service: str
    method: str
    url: str
    attempts: int
    outcome: Outcome | None
    reason: str
    elapsed: float
    handled_by_caller: bool = False


@attrs.frozen
class StateEvent:
    """A state change of a session or socket: ``name`` (e.g. ``relogin_scheduled``,
    ``reconnecting``), the subject (service or socket), and details (no secrets)."""

    name: str
    subject: str
    details: dict[str, Any] = attrs.field(factory=dict)


def _callables(
    value: Sequence[Callable[[Any], object]] | Callable[[Any], object],
) -> tuple[Callable[[Any], object], ...]:
    if callable(value):
        return (value,)  # one hook, as EventHooks(on_state=handler) reads naturally
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Iterable)
        or not all(callable(hook) for hook in value)
    ):
        # Found here, not by the first event: emit() would log the TypeError and go on.
        raise ConfigurationError(
            f"EventHooks take a callable or a sequence of callables, got {value!r:.60}"
        )
    return tuple(value)


@attrs.frozen
class EventHooks:
    """Callbacks for the engine's events; each field is a tuple of callables (one callable
    given alone is taken as a tuple of one)."""

    on_retry: tuple[Callable[[RetryEvent], object], ...] = attrs.field(
        default=(), converter=_callables
    )
    on_giveup: tuple[Callable[[GiveUpEvent], object], ...] = attrs.field(
        default=(), converter=_callables
    )
    on_state: tuple[Callable[[StateEvent], object], ...] = attrs.field(
        default=(), converter=_callables
    )


E = TypeVar("E")


def emit(hooks: Sequence[Callable[[E], object]], event: E) -> None:
    """Call each hook with ``event``; a hook that raises is logged, not propagated."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _log.exception("event hook %r raised; ignored", hook)
