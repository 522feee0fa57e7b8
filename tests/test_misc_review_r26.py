"""Odd cases of small fixes: an error's text cut while redacted within a bound, ..."""

from __future__ import annotations

import pytest

from le_transport import _redact
from le_transport._shown import SHOWN_LIMIT, error_text


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer " + "A" * (_redact.CUT_MARGIN + 500) + " tail",
        "password=" + "A" * (_redact.CUT_MARGIN + 500) + " and the rest of the message",
    ],
)
def test_an_error_text_cut_before_redaction_is_marked_as_cut(text: str) -> None:
    # Redacted over what is shown plus a margin, a long secret shrank to its marker and the
    # text after the margin was never read: what was shown was short, and came without "…",
    # as if it were the whole text (its tail, which the whole text's redaction showed, gone).
    shown = error_text(RuntimeError(text))
    assert "AAAA" not in shown
    assert len(shown) <= SHOWN_LIMIT + 1
    assert shown.endswith("…")


def test_an_error_text_shown_whole_has_no_mark() -> None:
    assert error_text(RuntimeError("x" * SHOWN_LIMIT)) == "x" * SHOWN_LIMIT
    assert error_text(RuntimeError("x" * (SHOWN_LIMIT + 1))) == "x" * SHOWN_LIMIT + "…"
    text = "password=" + "A" * 100 + " end"
    assert error_text(RuntimeError(text)) == _redact.redact_text(text)
