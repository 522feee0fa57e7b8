"""Event hooks: callbacks a caller registers to count and trace what the transport does.

Hooks are plain callables in a frozen :class:`EventHooks` value, called synchronously, where
the event happens. A hook that raises is logged and ignored: instrumentation must never break
the transport. An ``async def`` hook is refused when the hooks are made: its coroutine would
never run (a hook that must do I/O starts a task of its own).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import attrs

from ._checks import is_async_callable
from ._shown import error_text, redacted_exc_info
from .errors import ConfigurationError
from .policies.classify import Outcome

__all__ = ["EventHooks", "GiveUpEvent", "RetryEvent", "StateEvent", "check_hooks", "emit"]

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


class _Details(dict[str, Any]):
    """A :class:`StateEvent`'s details: a dict that cannot be changed (every hook is handed
    the same one, so one hook's change was what the next hook saw). Read as a dict (``get``,
    ``items``, ``json.dumps``, a log record's ``extra``); copy it (``dict(event.details)``) to
    change it."""

    # Set once it is filled: dict's own __init__, called again on it, filled it past every
    # method refused below.
    __slots__ = ("_filled",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_filled", False):
            self._refuse()
        super().__init__(*args, **kwargs)
        self._filled = True

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            "a StateEvent's details are read-only (every hook sees the same): copy them, "
            "dict(event.details), to change them"
        )

    __setitem__ = _refuse
    __delitem__ = _refuse
    __ior__ = _refuse
    clear = _refuse
    pop = _refuse
    popitem = _refuse
    setdefault = _refuse
    update = _refuse

    def __reduce__(self) -> tuple[type[_Details], tuple[dict[str, Any]]]:
        # Not dict's: a copy or an unpickling would fill the new one item by item, refused.
        return (type(self), (dict(self),))


def _details(value: object) -> _Details:
    """``value`` (a mapping) as read-only details, copied: the caller's dict may change after."""
    if isinstance(value, _Details):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"StateEvent.details must be a mapping, got {type(value).__name__}"
        )
    return _Details(value)


@attrs.frozen
class StateEvent:
    """A state change of a session or socket: ``name`` (e.g. ``relogin_scheduled``,
    ``reconnecting``), the subject (service or socket), and details (no secrets).

    ``details`` is a read-only copy of the mapping given (a dict that refuses every change
    with a :class:`TypeError`): every hook is handed the same event, so a hook that changed
    it changed what the next hook saw. The copy is shallow: a list among its values is the
    one given. A mapping it must be, else a :class:`~le_transport.errors.ConfigurationError`.
    The event hashes (equal events alike) on its name and subject: details may hold a value
    that does not hash (a list), so they count only for equality.
    """

    name: str
    subject: str
    details: Mapping[str, Any] = attrs.field(factory=_Details, converter=_details, hash=False)


def check_hooks(value: object, *, owner: str = "EventHooks") -> tuple[Callable[[Any], object], ...]:
    """``value`` (one callable, or a sequence of them) as a tuple of hooks, or a
    :class:`~le_transport.errors.ConfigurationError` naming ``owner``: something that cannot be
    called, or an async one (an ``async def``, a partial of one, an object with an async
    ``__call__``), whose coroutine nothing would ever await: hooks are called synchronously."""
    if callable(value):
        hooks: tuple[object, ...] = (value,)  # one, as EventHooks(on_state=handler) reads
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):
        hooks = (value,)  # refused below
    else:
        hooks = tuple(value)
    refused = [hook for hook in hooks if not callable(hook)]
    if refused:
        # Found here, not by the first event: emit() would log the TypeError and go on.
        # Named by its type only: a value given in the wrong place may be a credential.
        got = type(value).__name__
        if refused[0] is not value:
            got += f" holding a {type(refused[0]).__name__}"
        raise ConfigurationError(f"{owner} take a callable or a sequence of callables, got {got}")
    for hook in hooks:
        # Not through functools.wraps: a plain wrapper of an async function may start a task
        # for it and return (a fire-and-forget decorator), which is what a hook should do.
        if is_async_callable(hook, follow_wrapped=False) or _is_async_generator_function(hook):
            raise ConfigurationError(
                f"{owner} are called synchronously, where the event happens: "
                f"{getattr(hook, '__qualname__', type(hook).__name__)!s:.60} is async, and its "
                "coroutine would never run. Make it a plain function; one that must do I/O "
                "can start a task of its own (asyncio.get_running_loop().create_task(...))"
            )
    return hooks  # type: ignore[return-value]


def _is_async_generator_function(hook: object) -> bool:
    """An ``async def`` with ``yield`` (or a partial of one): its call returns an async
    generator that nothing would iterate, so its body would never run."""
    while isinstance(hook, functools.partial):
        hook = hook.func
    return inspect.isasyncgenfunction(hook) or inspect.isasyncgenfunction(
        getattr(hook, "__call__", None)  # noqa: B004 - the method itself is wanted
    )


def _callables(
    value: Sequence[Callable[[Any], object]] | Callable[[Any], object],
) -> tuple[Callable[[Any], object], ...]:
    return check_hooks(value)


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


def _hook_name(hook: object) -> str:
    """A hook as a log line names it: its qualified name, not its ``repr`` (a
    ``functools.partial(send, api_key=...)`` repeats its arguments, a credential among them)."""
    # Never fails: it names a hook that just failed (a weakref.proxy whose object is gone
    # raises ReferenceError on every attribute; a __getattr__ may raise anything).
    try:
        func = hook.func if isinstance(hook, functools.partial) else hook
        name = getattr(func, "__qualname__", None)
        module = getattr(func, "__module__", None)
    except Exception:
        func, name, module = hook, None, None
    if not isinstance(name, str):
        name = type(func).__qualname__  # type() reads no attribute: it cannot fail
    return f"{module}.{name}" if isinstance(module, str) else name


def emit(hooks: Sequence[Callable[[E], object]], event: E) -> None:
    """Call each hook with ``event``; a hook that raises is logged, not propagated. One that
    returns an awaitable (a lambda around an async function: not refused when it was given,
    since only a call shows it) has its coroutine closed and is logged: nothing awaits it."""
    for hook in hooks:
        try:
            result = hook(event)
        except (Exception, asyncio.CancelledError) as exc:
            # A CancelledError too: a plain function cannot be the target of its task's
            # cancellation (that lands at an await), so one it raises is its own error.
            # Its text and traceback redacted: a hook's error may quote what it was handling.
            _log.error(
                "event hook %s raised; ignored: %s",
                _hook_name(hook),
                error_text(exc),
                exc_info=redacted_exc_info(exc),
            )
            continue
        if result is None or asyncio.isfuture(result):
            continue  # a Task or Future the hook started is scheduled already
        if inspect.isasyncgen(result):
            _log.warning(
                "event hook %s returned an async generator, which nothing iterates: hooks are "
                "called synchronously; start a task in the hook if it must do I/O",
                _hook_name(hook),
            )
            continue
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # no "never awaited" warning on top of this line
            _log.warning(
                "event hook %s returned an awaitable, which nothing awaits: hooks are called "
                "synchronously; start a task in the hook if it must do I/O",
                _hook_name(hook),
            )
