"""Redaction: shapes of a secret's field that the rules on bracketed names, passphrases and
labels must still read.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import pytest

from le_transport._redact import REDACTED, redact_cut, redact_text
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import PASSWORD

# -- a form's name whose first bracket has no name before it ----------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"?%5B0%5D%5Bpassword%5D={PASSWORD}",
        f"body=%5B0%5D%5Bpassword%5D={PASSWORD}&page=2",
        f"GET https://h/x?a=1&%5B0%5D%5Bpassword%5D={PASSWORD} returned 400",
        f"%255B0%255D%255Bpassword%255D={PASSWORD}",
        f'{{"%5B0%5D%5Bpassword%5D": "{PASSWORD}"}}',
        f"%5Bauth%5D%5Bpassword%5D: {PASSWORD}",
    ],
)
def test_an_encoded_bracketed_name_with_nothing_before_it_is_read(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert PASSWORD not in shown, shown
        assert REDACTED in shown


def test_an_encoded_bracketed_plain_name_keeps_its_value() -> None:
    text = "?%5B0%5D%5Bpage%5D=2&%5Bsort%5D=name"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "=" + "%5Bx%5D" * 15_000,
        "=" + "%5Bx]" * 20_000,
        "=" + "%5B'x%5D'" * 12_000,
        "=" + "%5B'x'%5D" * 12_000,
        " " + "%255Bx%255D" * 10_000,
        "=" + "%5B%5B" * 20_000,
        "=%5B" + "x" * 100_000,
        "=" + "%5Bx%5D " * 12_000,
    ],
)
def test_a_long_run_of_encoded_brackets_with_nothing_before_it_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_cut(text, 300))
