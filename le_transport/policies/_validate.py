"""Validators shared by the policies: reject bad values at construction, naming field and value."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import ConfigurationError

__all__ = ["fraction", "non_negative", "optional_positive", "positive"]


def _check(predicate: Callable[[float], bool], wants: str) -> Callable[[Any, Any, Any], None]:
    def validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and wants.startswith("None or"):
            return
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and predicate(value)
        )
        if not ok:
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {wants}, got {value!r}"
            )

    return validator


non_negative = _check(lambda v: v >= 0, "a finite number >= 0")
positive = _check(lambda v: v > 0, "a finite number > 0")
optional_positive = _check(lambda v: v > 0, "None or a finite number > 0")
fraction = _check(lambda v: 0 <= v < 1, "a fraction in [0, 1)")
