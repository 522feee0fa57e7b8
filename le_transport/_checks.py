"""attrs validators that refuse a value of the wrong kind with a ConfigurationError naming the
field (attrs' own raise TypeError, which a caller catching the library's errors would miss)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import ConfigurationError

__all__ = ["instance_of", "optional_instance_of"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def instance_of(kind: type | tuple[type, ...], what: str | None = None) -> Validator:
    """The value must be a ``kind`` (``what`` describes it in the message)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            shown = what or _names(kind)
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {shown}, "
                f"got {type(value).__name__}"
            )

    return check


def optional_instance_of(kind: type | tuple[type, ...], what: str | None = None) -> Validator:
    """The value must be None or a ``kind``."""
    inner = instance_of(kind, f"{what or _names(kind)} or None")

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(instance, attribute, value)

    return check


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
