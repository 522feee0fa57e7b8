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
_DIGITS = re.compile(r"[0-9]+")

#: RFC 9110 §5.6.7: a two-digit year more than this many years ahead is read as in the past.
_TWO_DIGIT_YEAR_HORIZON = 50


def parse_retry_after(value: str, *, now_epoch: float) -> float:
    """Seconds to wait, from a ``Retry-After`` value; never negative.

    ``now_epoch`` is the reference time for an HTTP-date (the response's ``Date`` header when it
    has one, as RFC 9110 suggests, else the wall clock). A two-digit year (the obsolete RFC 850
    form, ``Sunday, 06-Nov-94 08:49:37 GMT``) is dated by it too, as RFC 9110 §5.6.7 asks: the
    year with those last two digits that is at most 50 years after ``now_epoch`` (one more than
    50 years ahead is the most recent past one), never a fixed cutoff nor the machine's clock.
    Raises :class:`InvalidRetryAfter` for
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
    when = dated_two_digit_year(when, text, now_epoch)
    return max(0.0, when.timestamp() - now_epoch)


def dated_two_digit_year(when: datetime.datetime, text: str, now_epoch: float) -> datetime.datetime:
    """``when``, which email.utils read from the HTTP-date ``text``, with a two-digit year
    (RFC 850's) dated by RFC 9110 §5.6.7 against ``now_epoch``: the year with those last two
    digits at most 50 years after it, never email.utils' fixed 1969 cutoff. A year written in
    full, or a ``now_epoch`` no calendar holds (non-finite, beyond year 9999), leaves ``when``
    as it is. Shared by every reader of an HTTP-date (a ``Retry-After``, the ``Date`` it is
    measured against)."""
    if 1969 <= when.year <= 2068 and not _year_in_full(text, when.year):
        return _dated_by_now(when, now_epoch)
    return when


def _year_in_full(text: str, year: int) -> bool:
    """Whether ``text`` writes ``year`` with three digits or more (email.utils has put a
    two-digit one in 1969-2068), and not as a zone offset (``+1994``, `` -1994``)."""
    for digits in _DIGITS.finditer(text):
        start = digits.start()
        if len(digits[0]) < 3 or int(digits[0]) != year:
            continue
        before = text[start - 1] if start else ""
        if before == "+" or (before == "-" and (start < 2 or not text[start - 2].isalpha())):
            continue  # a zone offset; RFC 850's year follows the month ("Nov-1994")
        return True
    return False


def _dated_by_now(when: datetime.datetime, now_epoch: float) -> datetime.datetime:
    """``when``, whose year was written with two digits, in the latest year with those digits
    at most 50 years after ``now_epoch`` (RFC 9110 §5.6.7); as it is when ``now_epoch`` is
    beyond what a datetime holds."""
    try:
        now = datetime.datetime.fromtimestamp(now_epoch, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return when
    try:
        limit: datetime.datetime | None = _years_later(now, _TWO_DIGIT_YEAR_HORIZON)
    except ValueError:
        limit = None  # past year 9999: no year with those digits is too far ahead
    century = now.year - now.year % 100 + when.year % 100
    for year in (century + 100, century, century - 100):
        try:
            candidate = when.replace(year=year)
        except ValueError:
            continue  # outside years 1-9999, or a 29 February that year has not
        if limit is None or candidate <= limit:
            return candidate
    return when


def _years_later(now: datetime.datetime, years: int) -> datetime.datetime:
    """``now`` that many calendar years later (29 February becomes the 28th)."""
    try:
        return now.replace(year=now.year + years)
    except ValueError:
        if now.year + years > datetime.MAXYEAR:
            raise
        return now.replace(year=now.year + years, day=28)
