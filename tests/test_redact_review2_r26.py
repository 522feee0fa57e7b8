"""Redaction: a header object's value stays hidden wherever it was hidden before the keys that
give a name were widened (``"field"``, ``"header"``, ``"param"``): an object that names a
plain field under one of those before its value and the credential header under ``"name"`` or
``"key"`` after it still has the value read as the header's.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import pytest

from le_transport._redact import redact_text
from tests.known_secrets import BEARER

# -- a plain name under another key before the value, the header's own after it -----------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"field": "email", "value": "{BEARER}", "name": "X-Api-Key"}}',
        f'{{"header": "Accept", "value": "{BEARER}", "name": "Authorization"}}',
        f'{{"param": "q", "value": "Token {BEARER}", "key": "Authorization"}}',
        f'{{"parameter": "p", "value": "{BEARER}", "name": "X-Api-Key"}}',
        f"{{'field': 'email', 'value': '{BEARER}', 'key': 'X-Api-Key'}}",
        f'[{{"field": "email", "value": "sess={BEARER}", "name": "Cookie"}}, {{"name": "Host"}}]',
    ],
)
def test_a_plain_name_under_another_key_leaves_the_headers_name_after_the_value_read(
    text: str,
) -> None:
    # The plain name before the value, in the object's brace, was taken as its only name: the
    # header's name after the value ("name" or "key", read before those keys were widened)
    # was no longer looked for, and the value was shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_a_plain_objects_value_beside_a_secret_objects_stays_readable() -> None:
    text = (
        f'[{{"field": "email", "value": "bob@example.com"}}, '
        f'{{"name": "X-Api-Key", "value": "{BEARER}"}}]'
    )
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "bob@example.com" in shown, shown


# -- a plain name before the value, a "value" word and the header's name after it -----------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"header": "Accept", "value": "{BEARER}", "description": "value: the header", '
        f'"name": "X-Api-Key"}}',
        f'{{"field": "email", "value": "Token {BEARER}", "hint": "value=1", '
        f'"key": "Authorization"}}',
        f"{{'param': 'q', 'value': 'sess={BEARER}', 'comment': 'a value: b', 'name': 'Cookie'}}",
    ],
)
def test_a_plain_name_before_the_value_leaves_the_headers_name_past_a_value_word_read(
    text: str,
) -> None:
    # The "value" word in the string after the value bounded the object's names after it,
    # and the quoted names up to its brace were read after the value only when none was
    # before it: the plain name before was taken as the only one, and the value shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown
