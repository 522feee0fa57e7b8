"""Reading a JWT's expiry without verifying it, to refresh a token before it lapses.

The client does not hold the key that signed the token and does not need to: the server checks
the signature. The client only reads ``exp`` to know when to fetch a new token.
"""

from __future__ import annotations

import base64
import binascii
import json

from ..policies._validate import finite_number

__all__ = ["jwt_expiry"]


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, or None if it has none or is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    segment = parts[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        claims = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    # finite_number, not math.isfinite: a JSON int past float's range (a hostile or broken
    # token) makes math.isfinite raise OverflowError; such an exp is no expiry at all.
    if not finite_number(exp):
        return None
    assert isinstance(exp, (int, float))
    return float(exp)
