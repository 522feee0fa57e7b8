"""Validators shared by the policies: reject bad values at construction, naming field and value."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..errors import ConfigurationError

__all__ = [
    "CLOSE_CODES",
    "HTTP_STATUSES",
    "MAX_CODES",
    "at_least",
    "attempt_number",
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
    "shown",
]

#: The longest text of a refused value a message quotes; longer is cut, with "...".
SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to :data:`SHOWN_CHARS`. Never raises: an int
    past Python's limit for str conversion (4,300 digits: ``10**5000``) made ``repr`` raise
    ValueError, so the validator meant to refuse it raised an untyped error instead."""
    try:
        text = repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"an int of {value.bit_length()} bits"
        return f"a {type(value).__name__}"
    except Exception:  # a caller's object whose __repr__ fails: its type says enough
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


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
                f"{type(instance).__name__}.{attribute.name} must be {wants}, got {shown(value)}"
            )

    return validator


non_negative = _check(lambda v: v >= 0, "a finite number >= 0")
positive = _check(lambda v: v > 0, "a finite number > 0")
optional_positive = _check(lambda v: v > 0, "None or a finite number > 0")
optional_finite = _check(lambda v: True, "None or a finite number")
fraction = _check(lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def at_least(low: float, wants: str) -> Callable[[Any, Any, Any], None]:
    """A validator: the value must be a finite number >= ``low``, described to the caller as
    ``wants`` (which, starting with "None or", also lets None through). As cheap as
    :data:`positive`: one comparison, for a field checked on every ``attrs.evolve``."""
    return _check(lambda v: v >= low, wants)


def instance_of(cls: type, wants: str) -> Callable[[Any, Any, Any], None]:
    """A validator: the value must be a ``cls`` (described to the caller as ``wants``)."""

    def validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {wants}, "
                f"got {type(value).__name__}"
            )

    return validator


def attempt_number(owner: str, attempt: object) -> int:
    """``attempt`` (an attempt number, given to ``owner``: ``Class.method``) as a plain int.

    An int will do, and so will any integer type (one with ``__index__``: an IntEnum, a
    ``numpy.int64`` read from an array); a bool, a float, a str or None is a
    :class:`ConfigurationError` naming ``owner`` and the type (never the value)."""
    if not isinstance(attempt, bool):  # a bool has __index__, but True is no attempt 1
        try:
            return operator.index(attempt)  # type: ignore[arg-type]  # a TypeError if not
        except Exception:  # no integer type, or one whose __index__ fails: refused below
            pass
    raise ConfigurationError(
        f"{owner}: attempt must be an int (1-based; an integer type such as numpy.int64 will "
        f"do), got {type(attempt).__name__}"
    )


#: A validator: the value must be True or False (a truthy 1 or "no" is refused, not guessed).
flag = instance_of(bool, "a bool")


#: The HTTP statuses (RFC 9110 15: three digits; aiohttp delivers one above 599, which a
#: client treats as a 5xx) and the WebSocket close codes (RFC 6455 7.4: 1000 to 4999) a code set
#: may hold: anything else never matches.
HTTP_STATUSES = (100, 999)
CLOSE_CODES = (1000, 4999)


#: The most codes a status or close code set may be given (each code once or more): more than
#: the HTTP statuses and the close codes there are.
MAX_CODES = 10_000


def int_codes(field: str, value: object, *, bounds: tuple[int, int], kind: str) -> frozenset[int]:
    """``value`` as a frozenset of ints, for the status and close code sets; ``field`` is
    ``Class.name``, for the message. A str, a bare number, a bool or a float in it is refused:
    ``"429"`` would otherwise become the set of its characters and never match a status. So is
    a code outside ``bounds`` (inclusive; :data:`HTTP_STATUSES` or :data:`CLOSE_CODES`, named
    ``kind`` in the message): a typo such as 4510 for a status, or -1, can never match; and so
    are more than :data:`MAX_CODES` items (an endless iterable is read no further)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{field} must be a collection of int codes, got {type(value).__name__}"
        )
    # Read no further than a code set can be long: an endless iterable (itertools.repeat)
    # filled memory, where the request schedule's pauses are refused.
    items = tuple(itertools.islice(value, MAX_CODES + 1))
    if len(items) > MAX_CODES:
        raise ConfigurationError(f"{field} must hold at most {MAX_CODES:,} codes, got more")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigurationError(f"{field} must hold int codes, got {shown(item)}")
    low, high = bounds
    outside = sorted(item for item in set(items) if not low <= item <= high)
    if outside:
        raise ConfigurationError(
            f"{field} must hold {kind} from {low} to {high}, got {shown(outside)}: "
            "such a code can never match"
        )
    return frozenset(items)


def check_scale(factor: object) -> float:
    """``factor`` for a policy's ``scaled()``: a finite number > 0 (not a bool), else a
    :class:`ConfigurationError`. Checked up front: an int past float's range raised
    OverflowError when multiplied, and a str raised TypeError when compared."""
    if not (finite_number(factor) and factor > 0):  # type: ignore[operator]
        raise ConfigurationError(f"scale factor must be a finite number > 0, got {shown(factor)}")
    return float(factor)  # type: ignore[arg-type]


def clamp_draw(rand: float) -> float:
    """A random draw clamped to [0, 1]; NaN (which min and max pass through) is the middle, so
    that no jittered pause can be NaN or escape its bounds."""
    if rand != rand:
        return 0.5
    return min(max(rand, 0.0), 1.0)
