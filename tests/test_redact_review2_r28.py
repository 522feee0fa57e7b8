"""Redaction: a form's header objects written field by field in any order, in text.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import pytest

from le_transport._redact import redact_cut, redact_text
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import PASSWORD

# -- a form's header object whose own name is not the one beside its value ------------------


@pytest.mark.parametrize(
    "text",
    [
        f"h[0][name]=X-Api-Key&h[1][value]=json&h[1][name]=Accept&h[0][value]={PASSWORD}",
        f"h[0][value]={PASSWORD}&h[1][name]=Accept&h[1][value]=json&h[0][name]=X-Api-Key",
        f"h.0.name=Authorization&h.1.value=json&h.1.name=Accept&h.0.value={PASSWORD}",
        f"h%5B0%5D%5Bkey%5D=Cookie&h%5B1%5D%5Bvalue%5D=json&h%5B1%5D%5Bkey%5D=Accept"
        f"&h%5B0%5D%5Bvalue%5D={PASSWORD}",
        f"h%255B0%255D%255Bname%255D=Authorization&h%255B1%255D%255Bvalue%255D=json"
        f"&h%255B1%255D%255Bname%255D=Accept&h%255B0%255D%255Bvalue%255D={PASSWORD}",
    ],
)
def test_a_form_s_credential_beside_another_object_s_name_is_hidden(text: str) -> None:
    # (No brace bounds a form's objects in text: the plain name beside the value may be
    # another object's; a secret one around it reads it too.)
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert PASSWORD not in shown, shown


def test_a_form_s_plain_header_objects_in_any_order_keep_their_values() -> None:
    text = "h[0][name]=Accept&h[1][value]=example.com&h[1][name]=Host&h[0][value]=json&page=2"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "h[0][name]=X-Api-Key&" + "h[1][name]=Accept&h[0][value]=x&" * 3_000,
        "h[0][name]=Accept&h[1][value]=x&" * 3_000 + "h[1][name]=Authorization",
        "h[0][name]=Accept&" * 3_000 + "h[0][value]=x&h[1][name]=Accept&" * 2_000,
        "h[1][name]=Accept&h[0][value]=x&" * 3_000,
    ],
)
def test_a_long_run_of_form_values_beside_plain_names_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_cut(text, 300))


# -- a passphrase's base64 word before the text's closing punctuation --------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"(password: {PASSWORD} ZGVmZ2g=)",
        f"{{password: {PASSWORD} ZGVmZ2g=}}",
        f"[token={PASSWORD} ZGVmZ2g=]",
        f"<password: {PASSWORD} ZGVmZ2g=>",
        f"password: {PASSWORD} ZGVmZ2g=. Retrying",
        f'{{"error": "password: {PASSWORD} ZGVmZ2g="}}',
        f'{{"error": "password: {PASSWORD} ZGVmZ2g=", "status": 401}}',
        f'{{\\"error\\": \\"password: {PASSWORD} ZGVmZ2g=\\"}}',
        f"error='pw={PASSWORD} ZGVmZ2g='",
    ],
)
def test_a_passphrase_s_padded_word_before_a_closing_mark_is_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert PASSWORD not in shown, shown
        assert "ZGVmZ2g" not in shown, shown


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f'password: {PASSWORD} user="bob"', 'user="bob"'),
        (f"password={PASSWORD} user='bob' status=401", "user='bob' status=401"),
        (f"password: {PASSWORD} ratio=.5", "ratio=.5"),
        (f"(password: {PASSWORD} user=bob)", "user=bob)"),
    ],
)
def test_a_field_after_a_passphrase_is_still_shown(text: str, kept: str) -> None:
    shown = redact_text(text)
    assert PASSWORD not in shown, shown
    assert shown.endswith(kept), shown


@pytest.mark.parametrize(
    "text",
    [
        "password: a" + " b=)" * 25_000,
        "password: a" + ' b="' * 25_000,
        "password: a b=" + "\\" * 100_000,
        "pw=a" + " b=\\'x" * 16_000,
    ],
)
def test_a_long_run_of_padded_words_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- a short name's flag is only a whole value -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"pass": true-horse-battery}',
        "{'pass': True horse battery}",
        '{"otp": null.horse',
        '{"pin": false:horse}',
    ],
)
def test_a_short_name_s_value_that_only_starts_like_a_flag_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert "horse" not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        '{"pass": true}',
        '{"pass": true, "otp": null, "pin": false}',
        "{'pass': True, 'otp': None}",
        '{"pass": false\n}',
        '{"pin": true',
        '{\\"pass\\": true}',
        '{\\"pass\\": true,\\n\\"a\\": 1}',
        "H('pass': True)",
        '["pin", {"otp": null}]',
    ],
)
def test_a_short_name_s_flag_stays_shown(text: str) -> None:
    assert redact_text(text) == text


def test_a_long_run_of_flags_and_blanks_is_read_once() -> None:
    text = '"pin": true' + " " * 50_000 + '"pin": true ' * 4_000
    assert_bounded_work(lambda: redact_text(text))
