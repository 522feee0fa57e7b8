"""Parsing ``Retry-After`` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date."""

from __future__ import annotations

import datetime
import email.utils
import re

from ..errors import InvalidRetryAfter
from ._validate import finite_number, shown

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
    anything else: empty, negative, non-finite, too long, not a date, not a str (None, a
    number, bytes: a header's value is text), or an HTTP-date with no finite ``now_epoch`` to
    date it by.
    """
    if not isinstance(value, str):
        # Only the type: a value in the wrong place may be anything.
        raise InvalidRetryAfter(
            f"Retry-After must be a str (seconds or an HTTP-date), got {type(value).__name__}"
        )
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
    if not finite_number(now_epoch):
        # Checked only here, where it is read: NaN made every date 0 s away, inf too.
        got = shown(now_epoch) if isinstance(now_epoch, float) else type(now_epoch).__name__
        raise InvalidRetryAfter(
            "Retry-After is an HTTP-date, but now_epoch (what it is dated by) is not a finite "
            f"number of epoch seconds, got {got}"
        )
    if when.tzinfo is None:
        # Every HTTP-date is GMT (RFC 9110 §5.6.7), including the obsolete RFC 850 and asctime
        # forms, which carry no zone; never read one as the machine's local time.
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now_epoch)
