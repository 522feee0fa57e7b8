"""Texts the library shows cut short are redacted within a bound, never whole: a caller's
exception text or a store's error of a megabyte cost seconds of the loop's CPU a line."""

from __future__ import annotations

from typing import Any

import pytest

from le_transport import _redact
from le_transport._shown import SHOWN_LIMIT, error_text, redacted_exc_info
from le_transport.middleware import retry
from tests.known_secrets import BEARER

_HUGE = 1_000_000


@pytest.fixture
def redacted_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text given to redact_text from here on."""
    seen: list[int] = []
    real = _redact.redact_text

    def recording(text: str) -> str:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(_redact, "redact_text", recording)
    return seen


def test_an_error_text_of_a_megabyte_is_redacted_within_a_bound(
    redacted_lengths: list[int],
) -> None:
    shown = error_text(RuntimeError(f"Authorization: Bearer {BEARER} " + "x" * _HUGE))
    assert BEARER not in shown
    assert len(shown) <= SHOWN_LIMIT + 1  # and its "…"
    assert redacted_lengths
    # One character past the limit is read, to tell whether the "…" is due.
    assert max(redacted_lengths) <= SHOWN_LIMIT + 1 + _redact.CUT_MARGIN


def test_a_name_after_its_value_within_the_margin_still_hides_it() -> None:
    # HAR's value first, its name after: the name is looked for past the shown part.
    text = '{"value": "Token ' + BEARER + '", ' + '"x": 1, ' * 20 + '"name": "Authorization"}'
    assert BEARER not in error_text(ValueError(text + " " + "y" * _HUGE))


def test_notes_of_a_megabyte_are_redacted_within_a_bound(redacted_lengths: list[int]) -> None:
    error = RuntimeError("failed")
    error.add_note(f"password={BEARER} " + "z" * _HUGE)
    stand_in = redacted_exc_info(error)[1]
    assert BEARER not in "".join(stand_in.__notes__)
    assert max(redacted_lengths) <= SHOWN_LIMIT + _redact.CUT_MARGIN


def test_an_aiohttp_message_of_a_megabyte_is_redacted_within_a_bound(
    redacted_lengths: list[int],
) -> None:
    shown: Any = retry._safe_message(OSError(f"cookie: sess={BEARER} " + "w" * _HUGE))
    assert BEARER not in shown
    assert max(redacted_lengths) <= 300 + _redact.CUT_MARGIN


def test_a_url_password_longer_than_any_header_line_is_still_hidden() -> None:
    # A URL's userinfo is known by its "@": a password past the margin left its "@" unread,
    # and its first characters were shown. The margin is past any line a server takes (8 KB).
    password = "P" * 17_000
    shown = error_text(ValueError(f"https://user:{password}@host.example/x"))
    assert "PPPP" not in shown
