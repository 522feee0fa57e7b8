"""Parsing ``Retry-After`` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date."""

from __future__ import annotations

import datetime
import email.utils
import re

from ..errors import InvalidRetryAfter

__all__ = ["MAX_RETRY_AFTER_CHARS", "parse_retry_after"]

#: Longer values are refused unread: no legitimate Retry-After is longer than an HTTP-date.
MAX_RETRY_AFTER_CHARS = 64

# RFC 9110's delta-seconds is 1*DIGIT (ASCII); a fraction is tolerated, as some servers send
# one. Nothing else Python's float() takes is seconds: "1_000", "1e3", "+5", "٣" (an
# Arabic-Indic three) are not.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str, *, now_epoch: float) -> float:
    """Seconds to wait, from a ``Retry-After`` value; never negative.

    ``now_epoch`` is the reference time for an HTTP-date (the response's ``Date`` header when it
    has one, as RFC 9110 suggests, else the wall clock). Raises :class:`InvalidRetryAfter` for
    anything else: empty, negative, non-finite, too long, or not a date.
    """
    text = value.strip()
    if not text or len(text) > MAX_RETRY_AFTER_CHARS:
        raise InvalidRetryAfter(f"Retry-After must be seconds or an HTTP-date, got {value[:64]!r}")
    if _SECONDS.fullmatch(text):
        return float(text)  # at most 64 characters: always finite
    try:
        float(text)
    except ValueError:
        pass
    else:
        # A number, but not delta-seconds: negative, signed, an exponent, underscores,
        # non-ASCII digits, nan, inf.
        raise InvalidRetryAfter(
            f"Retry-After must be seconds as plain digits (>= 0) or an HTTP-date, "
            f"got {value[:64]!r}"
        )
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
