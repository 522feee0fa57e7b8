"""Checks of a value's kind for constructors, raising the library's ConfigurationError naming
the field (attrs' own validators raise TypeError, which a caller catching the library's errors
would miss). Only the value's type is shown: an option given in the wrong place may be a
credential."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from .errors import ConfigurationError

__all__ = [
    "instance_of",
    "is_async_callable",
    "optional_instance_of",
    "require_kind",
    "require_option",
    "utf8_encodable",
]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def utf8_encodable(text: str) -> bool:
    """Whether UTF-8 can encode ``text``: not if it holds a lone surrogate (what
    ``os.environ``, ``sys.argv`` and ``os.fsdecode`` make of a byte that is no UTF-8, or a
    JSON document's ``\\udcff``), which aiohttp drops from a header, Redis cannot be sent, and
    a ``UnicodeEncodeError`` would show whole. ASCII (the usual text) is told by
    ``isascii()`` alone."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_option(ok: bool, value: object, *, owner: str, field: str, wants: str) -> None:
    """A :class:`ConfigurationError` naming ``owner.field`` unless ``ok``."""
    if not ok:
        raise ConfigurationError(f"{owner}.{field} must be {wants}, got {type(value).__name__}")


def require_kind(
    value: object,
    kind: type | tuple[type, ...],
    *,
    owner: str,
    field: str,
    optional: bool = True,
) -> None:
    """``value`` must be a ``kind`` (or None when ``optional``); a bool is no int."""
    if value is None and optional:
        return
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is int)
    wants = _names(kind) + (" or None" if optional else "")
    require_option(ok, value, owner=owner, field=field, wants=wants)


def instance_of(kind: type | tuple[type, ...]) -> Validator:
    """An attrs validator: the value must be a ``kind``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        require_kind(
            value, kind, owner=type(instance).__name__, field=attribute.name, optional=False
        )

    return check


def optional_instance_of(kind: type | tuple[type, ...]) -> Validator:
    """An attrs validator: the value must be None or a ``kind``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        require_kind(value, kind, owner=type(instance).__name__, field=attribute.name)

    return check


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def is_async_callable(callback: object, *, follow_wrapped: bool = True) -> bool:
    """Whether calling ``callback`` returns an awaitable by construction: a coroutine function
    (an ``async def``, a method of one), a :func:`functools.partial` of one, an object whose
    ``__call__`` is one, or a wrapper of one made with :func:`functools.wraps`. A callable for
    which this is False may still return an awaitable (``lambda ws: ws.request(...)``):
    :func:`check_on_connect` takes any callable, and the socket checks each result when it
    calls it. With ``follow_wrapped=False`` a :func:`functools.wraps` wrapper is taken for
    what it is: a plain function that wraps an async one may well start a task and return (a
    fire-and-forget decorator)."""
    target = callback
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    if follow_wrapped:
        try:
            unwrapped = inspect.unwrap(target)  # type: ignore[arg-type]
        except ValueError:  # a __wrapped__ cycle
            unwrapped = target
        if unwrapped is not target and inspect.iscoroutinefunction(unwrapped):
            return True
    if inspect.isfunction(target) or inspect.ismethod(target) or isinstance(target, type):
        return False
    # An instance: its class's __call__, bound (a plain function's is a method-wrapper).
    call = getattr(target, "__call__", None)  # noqa: B004 - the method itself is wanted
    return inspect.iscoroutinefunction(call)
