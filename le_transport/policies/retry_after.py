"""Parsing ``Retry-After`` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date."""

from __future__ import annotations

import datetime
import email.utils
import math

from ..errors import InvalidRetryAfter

__all__ = ["MAX_RETRY_AFTER_CHARS", "parse_retry_after"]

#: Longer values are refused unread: no legitimate Retry-After is longer than an HTTP-date.
MAX_RETRY_AFTER_CHARS = 64


def parse_retry_after(value: str, *, now_epoch: float) -> float:
    """Seconds to wait, from a ``Retry-After`` value; never negative.

    ``now_epoch`` is the reference time for an HTTP-date (the response's ``Date`` header when it
    has one, as RFC 9110 suggests, else the wall clock). Raises :class:`InvalidRetryAfter` for
    anything else: empty, negative, non-finite, too long, or not a date.
    """
    text = value.strip()
    if not text or len(text) > MAX_RETRY_AFTER_CHARS:
        raise InvalidRetryAfter(f"Retry-After must be seconds or an HTTP-date, got {value[:64]!r}")
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    else:
        # Fractions are not in the RFC but some servers send them; negatives are nonsense.
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        raise InvalidRetryAfter(f"Retry-After must be >= 0 seconds, got {value[:64]!r}")
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise InvalidRetryAfter(
            f"Retry-After must be seconds or an HTTP-date, got {value[:64]!r}"
        ) from exc
    if when.tzinfo is None:
        # Every HTTP-date is GMT (RFC 9110 §5.6.7), including the obsolete RFC 850 and asctime
        # forms, which carry no zone; never read one as the machine's local time.
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now_epoch)
