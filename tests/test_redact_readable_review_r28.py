"""Redaction after a label before ": ": a URL path's last segment that says secret is read as
a field's name whose value's first word is hidden (``https://h/x/token: s3cret``: nothing can
tell a message's first word from a credential there), and a provider's subject labels its
message only when what its brackets hold is no secret's name (``consumer_jwt[password]: x``
is a form's field).

The credentials are those of ``tests/known_secrets.py``, or passphrases of plain words.
"""

from __future__ import annotations

import pytest

from le_transport._redact import REDACTED, redact_cut, redact_text
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import PASSWORD


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"https://h/token: {PASSWORD}", f"https://h/token: {REDACTED}"),
        (
            f"https://h/token: {PASSWORD} horse battery",
            f"https://h/token: {REDACTED} horse battery",
        ),
        (f"POST https://h/x/token: {PASSWORD}", f"POST https://h/x/token: {REDACTED}"),
        (f"url=https://h/x/token: {PASSWORD}", f"url=https://h/x/token: {REDACTED}"),
        (f"see https://h/a/secret: {PASSWORD} now", f"see https://h/a/secret: {REDACTED} now"),
        (f"GET https://h/x/api_key:\t{PASSWORD}", f"GET https://h/x/api_key:\t{REDACTED}"),
        (
            f"GET https://h/x/access_token: {PASSWORD}, 2",
            f"GET https://h/x/access_token: {REDACTED}, 2",
        ),
        (f"HTTPS://H/X/TOKEN: {PASSWORD}\nnext", f"HTTPS://H/X/TOKEN: {REDACTED}\nnext"),
        (
            f'{{"msg": "POST https://h/x/secret: {PASSWORD} horse"}}',
            f'{{"msg": "POST https://h/x/secret: {REDACTED} horse"}}',
        ),
        (
            "POST https://h.example/api/account/1/authenticate: attempt 1 got 503; pausing 5 s",
            f"POST https://h.example/api/account/1/authenticate: {REDACTED} 1 got 503; pausing 5 s",
        ),
    ],
)
def test_url_label_hides_its_first_word(text: str, shown: str) -> None:
    assert redact_text(text) == shown
    assert redact_cut(text, 500) == shown


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
        "GET https://h/" + "a/" * 400 + "token: x y z " * 20_000,
        ("GET https://h/" + "b" * 3000 + "/token: x y ") * 40,
        "consumer_jwt[" + "p" * 100_000 + "]: x",
        ("consumer_jwt[password]: " + "token: x ") * 10_000,
    ],
)
def test_labels_are_read_in_one_pass(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
