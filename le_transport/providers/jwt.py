"""Reading a JWT's expiry without verifying it, to refresh a token before it lapses.

The client does not hold the key that signed the token and does not need to: the server checks
the signature. The client only reads ``exp`` to know when to fetch a new token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

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
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)
