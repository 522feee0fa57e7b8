"""Redaction after a label before ": ": a provider's subject labels its message only when what
its brackets hold is no secret's name (``consumer_jwt[password]: x`` is a form's field).

The credentials are those of ``tests/known_secrets.py``, or passphrases of plain words.
"""

from __future__ import annotations

import pytest

from le_transport._redact import REDACTED, redact_cut, redact_text
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import PASSWORD


@pytest.mark.parametrize(
    "text",
    [
        f"consumer_jwt[password]: {PASSWORD}",
        f"consumer_jwt[token]: {PASSWORD}",
        f"client_credentials_login[client_secret]: {PASSWORD}",
        f"consumer_jwt[pw]: {PASSWORD}",
        f"consumer_jwt[x-api-key]: {PASSWORD}",
        f"consumer_jwt[authorization]: {PASSWORD}",
    ],
)
def test_subject_with_a_secret_name_in_its_brackets_is_a_field(text: str) -> None:
    shown = redact_text(text)
    assert PASSWORD not in shown
    assert REDACTED in shown
    assert redact_cut(text, 500) == shown


@pytest.mark.parametrize(
    "text",
    [
        "consumer_jwt[123]: the token request failed; retrying in 10 s",
        "consumer_jwt[le12345]: the token request failed",
        "client_credentials_login[a.b-c_1]: the token endpoint answered 503",
    ],
)
def test_subject_with_an_account_labels_its_message(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "consumer_jwt[" + "p" * 100_000 + "]: x",
        ("consumer_jwt[password]: " + "token: x ") * 10_000,
    ],
)
def test_labels_are_read_in_one_pass(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
