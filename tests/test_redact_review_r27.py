"""Redaction: a credential header's value read through its scheme where the header's name is a
secret's but no authorization's (``X-Auth-Token: Token ...``, HAR's ``name=X-Auth-Token
value=Digest username=..., response=...``).

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import pytest

from le_transport._redact import redact_cut, redact_text
from tests.known_secrets import BEARER


@pytest.mark.parametrize(
    "text",
    [
        f'name=X-Auth-Token value=Digest username="bob", response="{BEARER}"',
        f'name=X-Auth-Token value=Digest username="bob", response="{BEARER}" key[0]=v, '
        f'filter[status]=open&name=Proxy-Authorization value=Token {BEARER} {{"hint": "}}", '
        f'"value": "plain"}}',
        f"name=X-Auth-Token value=Token {BEARER}",
        f"Header(name='X-Api-Key', value='x') Header(name='X-Auth-Token', value=Token {BEARER})",
        f"X-Auth-Token: Token {BEARER}",
        f'X-Auth-Token: Digest username="bob", response="{BEARER}"\r\nHost: h',
    ],
)
def test_a_secret_header_s_scheme_and_credential_are_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown


def test_a_secret_header_s_scheme_is_shown() -> None:
    shown = redact_text(f"X-Auth-Token: Token {BEARER}\r\nHost: h")
    assert shown.startswith("X-Auth-Token: Token ***")
    assert shown.endswith("\r\nHost: h")


def test_a_plain_field_s_next_word_is_kept() -> None:
    # A field named like a secret's, no header's: its value is one word, the next is shown.
    assert redact_text("token=abc123 status=401") == "token=*** status=401"
