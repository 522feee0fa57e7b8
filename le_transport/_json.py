"""Strict JSON reading: what RFC 8259 calls JSON, and numbers a float can hold.

Python's :func:`json.loads` also takes ``NaN``, ``Infinity`` and ``-Infinity`` (which are not
JSON) and reads a number too large for a float (``1e400``) as ``inf``. The engine refuses
non-finite numbers on the way out; an answer's body is read by the same rule, so that a
non-finite value never reaches a caller's arithmetic (or a later request, where it would fail
far from its cause).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads_strict"]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # A JSON number cannot be NaN; one past a float's range reads as an infinity.
        raise ValueError("a number too large for a float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads_strict(text: str) -> Any:
    """``text`` parsed as JSON; :class:`ValueError` for what is not JSON (``NaN``,
    ``Infinity``, leading or trailing garbage) or a number too large for a float.
    (:class:`RecursionError` for absurdly nested arrays or objects, as :func:`json.loads`.)"""
    return _DECODER.decode(text)
