"""Policies: an HTTP-date's two-digit year read by RFC 9110's 50-year rule."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport.policies import parse_retry_after

_UTC = datetime.UTC
_YEAR = 365.2425 * 86400


def _epoch(year: int, month: int, day: int) -> float:
    return datetime.datetime(year, month, day, tzinfo=_UTC).timestamp()


# --- Retry-After: a two-digit year is dated by the reference time, never by a fixed cutoff ---


@pytest.mark.parametrize(
    ("value", "now", "meant"),
    [
        # Python's email.utils reads 69-99 as 19xx and 00-68 as 20xx whatever the date; RFC
        # 9110 5.6.7: a year more than 50 years ahead of now is the most recent past one.
        ("Monday, 01-Jan-70 00:00:00 GMT", (2026, 11, 29), (2070, 1, 1)),
        ("Sunday, 01-Jan-50 00:00:00 GMT", (1990, 1, 1), (1950, 1, 1)),
        ("Monday, 01-Jan-05 00:00:00 GMT", (2080, 1, 1), (2105, 1, 1)),
        # The obsolete RFC 822 form with a two-digit year is dated alike.
        ("Tue, 01 Jan 70 00:00:00 GMT", (2026, 11, 29), (2070, 1, 1)),
        # Fifty years ahead exactly is not "more than" 50: kept.
        ("Sunday, 29-Nov-76 00:00:00 GMT", (2026, 11, 29), (2076, 11, 29)),
    ],
)
def test_two_digit_year_is_read_by_the_50_year_rule_against_now(
    value: str, now: tuple[int, int, int], meant: tuple[int, int, int]
) -> None:
    now_epoch = _epoch(*now)
    assert parse_retry_after(value, now_epoch=now_epoch) == max(0.0, _epoch(*meant) - now_epoch)


def test_two_digit_year_more_than_50_years_ahead_is_the_most_recent_past_one() -> None:
    now_epoch = _epoch(2026, 11, 29)
    # 2077 is more than 50 years ahead: 1977, long past, so no wait at all.
    assert parse_retry_after("Saturday, 01-Jan-77 00:00:00 GMT", now_epoch=now_epoch) == 0.0
    # A day past the 50 years: past too.
    assert parse_retry_after("Monday, 30-Nov-76 00:00:00 GMT", now_epoch=now_epoch) == 0.0


def test_four_digit_years_are_read_as_written() -> None:
    now_epoch = _epoch(1990, 1, 1)
    # More than 50 years ahead, but written in full: meant as written.
    assert parse_retry_after("Sat, 01 Jan 2050 00:00:00 GMT", now_epoch=now_epoch) == (
        _epoch(2050, 1, 1) - now_epoch
    )
    assert parse_retry_after("Saturday, 01-Jan-2050 00:00:00 GMT", now_epoch=now_epoch) == (
        _epoch(2050, 1, 1) - now_epoch
    )


@given(
    st.integers(0, 99),
    st.floats(_epoch(1901, 1, 1), _epoch(9800, 1, 1)),
)
def test_a_two_digit_year_is_never_more_than_50_years_ahead(yy: int, now_epoch: float) -> None:
    """Invariant: whatever the reference time, a two-digit year's date is at most 50 years
    (and a day or so of calendar slack) ahead of it."""
    value = f"Monday, 01-Jan-{yy:02d} 00:00:00 GMT"
    assert parse_retry_after(value, now_epoch=now_epoch) <= 50 * _YEAR + 2 * 86400


@pytest.mark.parametrize("now_epoch", [1e300, -1e300])
def test_two_digit_year_with_a_reference_beyond_any_calendar_is_still_read(
    now_epoch: float,
) -> None:
    # A reference time no datetime holds: the date is read as email.utils reads it, and the
    # answer is still a number of seconds (0, or a very long wait the ceiling cuts).
    assert parse_retry_after("Monday, 01-Jan-70 00:00:00 GMT", now_epoch=now_epoch) >= 0.0
