"""Reading a JWT's expiry and issue time without verifying it, to refresh a token before it lapses.

The client does not hold the key that signed the token and does not need to: the server checks
the signature. The client only reads ``exp`` to know when to fetch a new token, and ``iat`` to
tell how far its own wall clock is from the issuer's (see ``providers/_token.py``).
"""

from __future__ import annotations

import base64
import binascii
import json

from .._redact import Secret
from ..errors import ConfigurationError
from ..policies._validate import finite_number

__all__ = ["jwt_expiry", "jwt_times"]


def jwt_expiry(token: str | Secret) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, or None if it has none or is not a JWT.
    ``token`` is a str or a :class:`~le_transport.Secret`; anything else is a
    :class:`~le_transport.errors.ConfigurationError` (see :func:`jwt_times`)."""
    return jwt_times(token)[0]


def jwt_times(token: str | Secret) -> tuple[float | None, float | None]:
    """The ``exp`` and ``iat`` claims (epoch seconds) of a JWT, each None if it is missing or
    not a finite number; both None if ``token`` is not a JWT. Never raises for a str or a
    :class:`~le_transport.Secret`; anything else (None, bytes, a number) is a
    :class:`~le_transport.errors.ConfigurationError` naming its type: no token was given, which
    "no expiry" would hide."""
    if isinstance(token, Secret):
        token = token.reveal()
    elif not isinstance(token, str):
        raise ConfigurationError(
            f"jwt_expiry takes a token (a str or Secret), got {type(token).__name__}"
        )
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None, None
    segment = parts[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        claims = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(claims, dict):
        return None, None
    return _number(claims.get("exp")), _number(claims.get("iat"))


def _number(value: object) -> float | None:
    # finite_number, not math.isfinite: a JSON int past float's range (a hostile or broken
    # token) makes math.isfinite raise OverflowError; such a claim is no time at all.
    if not finite_number(value):
        return None
    assert isinstance(value, (int, float))
    return float(value)
