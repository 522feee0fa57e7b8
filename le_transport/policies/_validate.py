"""Validators shared by the policies: reject bad values at construction, naming field and value."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..errors import ConfigurationError

__all__ = [
    "check_scale",
    "clamp_draw",
    "finite_number",
    "flag",
    "fraction",
    "instance_of",
    "int_codes",
    "non_negative",
    "optional_finite",
    "optional_positive",
    "positive",
]


def finite_number(value: object) -> bool:
    """Whether ``value`` is an int or float (not a bool) that is neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        # An int past float's range: math.isfinite cannot even convert it.
        return False


def _check(predicate: Callable[[float], bool], wants: str) -> Callable[[Any, Any, Any], None]:
    def validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and wants.startswith("None or"):
            return
        if not (finite_number(value) and predicate(value)):
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {wants}, got {value!r}"
            )

    return validator


non_negative = _check(lambda v: v >= 0, "a finite number >= 0")
positive = _check(lambda v: v > 0, "a finite number > 0")
optional_positive = _check(lambda v: v > 0, "None or a finite number > 0")
optional_finite = _check(lambda v: True, "None or a finite number")
fraction = _check(lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def instance_of(cls: type, wants: str) -> Callable[[Any, Any, Any], None]:
    """A validator: the value must be a ``cls`` (described to the caller as ``wants``)."""

    def validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {wants}, "
                f"got {type(value).__name__}"
            )

    return validator


#: A validator: the value must be True or False (a truthy 1 or "no" is refused, not guessed).
flag = instance_of(bool, "a bool")


def int_codes(field: str, value: object) -> frozenset[int]:
    """``value`` as a frozenset of ints, for the status and close code sets; ``field`` is
    ``Class.name``, for the message. A str, a bare number, a bool or a float in it is refused:
    ``"429"`` would otherwise become the set of its characters and never match a status."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{field} must be a collection of int codes, got {type(value).__name__}"
        )
    items = tuple(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigurationError(f"{field} must hold int codes, got {item!r}")
    return frozenset(items)


def check_scale(factor: object) -> float:
    """``factor`` for a policy's ``scaled()``: a finite number > 0 (not a bool), else a
    :class:`ConfigurationError`. Checked up front: an int past float's range raised
    OverflowError when multiplied, and a str raised TypeError when compared."""
    if not (finite_number(factor) and factor > 0):  # type: ignore[operator]
        raise ConfigurationError(f"scale factor must be a finite number > 0, got {factor!r:.40}")
    return float(factor)  # type: ignore[arg-type]


def clamp_draw(rand: float) -> float:
    """A random draw clamped to [0, 1]; NaN (which min and max pass through) is the middle, so
    that no jittered pause can be NaN or escape its bounds."""
    if rand != rand:
        return 0.5
    return min(max(rand, 0.0), 1.0)
