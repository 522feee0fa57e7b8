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
