"""parse_retry_after: delta-seconds or an HTTP-date; anything else is InvalidRetryAfter."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport.errors import InvalidRetryAfter
from le_transport.middleware.retry import parse_retry_after_date
from le_transport.policies import parse_retry_after

NOW = 1_700_000_000.0  # a fixed epoch: the parser reads no clock


@given(st.integers(0, 10**9))
def test_delta_seconds_are_read_as_is(seconds: int) -> None:
    """Invariant: any non-negative integer is that many seconds."""
    assert parse_retry_after(str(seconds), now_epoch=NOW) == float(seconds)


@given(st.integers(-(10**6), 10**6))
def test_http_date_is_seconds_from_the_reference_time_never_negative(offset: int) -> None:
    """Invariant: an HTTP-date means max(0, date - now)."""
    value = email.utils.formatdate(NOW + offset, usegmt=True)
    assert parse_retry_after(value, now_epoch=NOW) == max(0.0, float(offset))


def test_obsolete_date_forms_are_read_as_gmt() -> None:
    # asctime form carries no zone; it is GMT by definition, never local time.
    assert parse_retry_after("Tue Nov 14 22:13:30 2023", now_epoch=NOW) == 10.0
    assert parse_retry_after_date("Tue, 14 Nov 2023 22:13:20 -0000") == NOW


def test_fractional_seconds_are_tolerated() -> None:
    assert parse_retry_after(" 1.5 ", now_epoch=NOW) == 1.5


@pytest.mark.parametrize(
    "value",
    ["", "   ", "-1", "soon", "nan", "inf", "1e999", "x" * 65, "Mon, 99 Foo 2023 99:99:99 GMT"],
)
def test_invalid_retry_after_raises_invalid_retry_after(value: str) -> None:
    with pytest.raises(InvalidRetryAfter, match="Retry-After"):
        parse_retry_after(value, now_epoch=NOW)


@given(st.text(max_size=80))
def test_any_text_gives_seconds_or_invalid_retry_after(value: str) -> None:
    """Invariant: the parser never raises anything but InvalidRetryAfter, never returns a
    negative or non-finite value."""
    try:
        seconds = parse_retry_after(value, now_epoch=NOW)
    except InvalidRetryAfter:
        return
    assert 0 <= seconds < float("inf")


def test_invalid_date_header_is_invalid_retry_after() -> None:
    with pytest.raises(InvalidRetryAfter, match="HTTP-date"):
        parse_retry_after_date("yesterday")


@pytest.mark.parametrize("value", ["1_000", "1e3", "+5", "\u0663", "\uff15", "-0", "1."])
def test_only_plain_ascii_digits_are_delta_seconds(value: str) -> None:
    """RFC 9110's delta-seconds is 1*DIGIT: what else Python's float() reads (underscores, an
    exponent, a sign, an Arabic-Indic or full-width digit) is no number of seconds."""
    with pytest.raises(InvalidRetryAfter, match="plain digits"):
        parse_retry_after(value, now_epoch=NOW)


def test_a_date_without_its_day_name_is_still_read() -> None:
    # Not an IMF-fixdate, but what email.utils reads and some servers send: a date, not a number.
    assert parse_retry_after("14 Nov 2023 22:13:30 GMT", now_epoch=NOW) == 10.0
