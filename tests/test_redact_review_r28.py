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


# -- a short name as a quoted key, whatever its value -------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('{"pin": 482913, "user": "bob", "note": "a body cut before its end', '"user": "bob"'),
        ('{"otp": 482913}', "}"),
        ("{'sig': 482913, 'page': 2", "'page': 2"),
        ('{\\"pin\\": 482913, \\"page\\": 2', '\\"page\\": 2'),
        ('{"otp": ["482913"], "page": 2', '"page": 2'),
    ],
)
def test_a_short_name_as_a_quoted_key_has_any_value_hidden(text: str, kept: str) -> None:
    # As parsed JSON's is (a body cut before its end is read as text): a PIN or a one-time
    # password is as often a number.
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert "482913" not in shown, shown
        assert kept in shown, shown


@pytest.mark.parametrize(
    "text",
    ["pin: 482913", "pw: 482913 ms", "sig:482913", "step pin: 482913", "{pin: 482913}"],
)
def test_a_short_name_unquoted_before_its_colon_is_still_a_label(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        '{"pass": true, "code": 200}',
        '{"pin": null}',
        "{'sig': false}",
        "{'pass': True, 'code': 200}",
        "{'otp': None}",
    ],
)
def test_a_short_name_s_flag_is_shown(text: str) -> None:
    assert redact_text(text) == text


def test_many_quoted_short_keys_with_bare_values_are_read_once() -> None:
    text = '{"pin": 1, ' * 12_000
    assert_bounded_work(lambda: redact_text(text))
    assert "1" not in redact_text(text)


# -- a passphrase's words joined by a blank other than a space or a tab ------------------------

WORDS = ("correcthorse", "batterystaple", "tromboneglue")


@pytest.mark.parametrize("blank", ["\u00a0", "\u202f", "\u3000", "\u2009", " \u00a0"])
@pytest.mark.parametrize(
    ("template", "kept"),
    [
        ("password: {phrase}", "password: "),
        ("password={phrase} user=bob", " user=bob"),
        ("pw={phrase}\r\nHost: h", "\r\nHost: h"),
        ("X-Api-Key: {phrase}, status=401", ", status=401"),
    ],
)
def test_a_passphrase_s_words_joined_by_any_blank_are_hidden(
    blank: str, template: str, kept: str
) -> None:
    text = template.format(phrase=blank.join(WORDS))
    for shown in (redact_text(text), redact_cut(text, 1000)):
        for word in WORDS:
            assert word not in shown, shown
        assert kept in shown, shown


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\n"])
def test_a_passphrase_ends_at_any_line_break(brk: str) -> None:
    text = f"password: correcthorse{brk}next line"
    assert redact_text(text) == f"password: {REDACTED}{brk}next line"


@pytest.mark.parametrize(
    "text",
    [
        "password: a" + "\u00a0" * 100_000 + "b",
        "password=a" + "\u00a0b" * 50_000,
        "pw=a" + "\u3000b:" * 30_000,
        "password: a" + "\u00a0b\u00a0c=" * 20_000,
    ],
)
def test_hostile_runs_of_unicode_blanks_are_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- a passphrase's word padded as base64 is no field's name -----------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("password: abc123 ZGVmZ2hp==", "password: "),
        ("token=abc123 ZGVmZ2g= user=bob", " user=bob"),
        ("pw=abc123 ZGVmZ2g=", "pw="),
        ("api_key: k1 ZGVmZ2g== status: 401", " status: 401"),
        ("password: abc123 ZGVmZ2g=, retry=2", ", retry=2"),
    ],
)
def test_a_passphrase_s_padded_word_is_hidden(text: str, kept: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert "ZGVmZ2" not in shown, shown
        assert "abc123" not in shown, shown
        assert kept in shown, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=abc user=bob", f"password={REDACTED} user=bob"),
        ("password=abc user = bob", f"password={REDACTED} user = bob"),
        ("password=abc user =bob", f"password={REDACTED} user =bob"),
        ("password: abc user: bob", f"password: {REDACTED} user: bob"),
        ("password: abc status:401", f"password: {REDACTED} status:401"),
    ],
)
def test_a_field_after_a_passphrase_is_still_shown(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    ["password: a" + " b=" * 40_000, "password: a" + " b==" * 30_000 + "c", "pw=a b= " * 15_000],
)
def test_hostile_padded_words_are_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- a URL's userinfo with an "@" of its own ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("InvalidURL: https://bob:hunt@er2@h/x", f"InvalidURL: https://{REDACTED}@h/x"),
        (
            "url=URL('https://bob:p@ss@w@rd@h:8443/x?a=b@c')",
            f"url=URL('https://{REDACTED}@h:8443/x?a=b@c')",
        ),
        ("redis://:pa@ss@cache:6379/0 refused", f"redis://{REDACTED}@cache:6379/0 refused"),
        ("https://h/x?email=a@b.example", "https://h/x?email=a@b.example"),
    ],
)
def test_a_userinfo_is_hidden_up_to_its_last_at_sign(text: str, expected: str) -> None:
    # (A URL's parser reads its host after the last "@": yarl reads "https://bob:hunt@er2@h"
    # as the password "hunt@er2".)
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", ["https://" + "a@" * 50_000, ("x://" + "@" * 20) * 5_000])
def test_a_long_run_of_at_signs_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- a form's header objects with their names and values grouped apart ----------------------


@pytest.mark.parametrize(
    "text",
    [
        f"h[0][name]=Accept&h[1][name]=X-Api-Key&h[0][value]=json&h[1][value]={PASSWORD}",
        f"h[0][value]={PASSWORD}&h[1][value]=json&h[0][name]=X-Api-Key&h[1][name]=Accept",
        f"h.0.value={PASSWORD}&h.1.value=json&h.0.name=Authorization&h.1.name=Accept",
        f"h%5B0%5D%5Bvalue%5D={PASSWORD}&h%5B1%5D%5Bvalue%5D=json&h%5B0%5D%5Bkey%5D=Cookie",
    ],
)
def test_a_form_s_header_objects_grouped_by_field_have_their_credential_hidden(text: str) -> None:
    # (In text no brace bounds a form's objects: a neighbour's value is hidden too. redact_url
    # reads each by its object's prefix.)
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert PASSWORD not in shown, shown


def test_a_form_s_plain_header_objects_grouped_by_field_keep_their_values() -> None:
    text = "h[0][name]=Accept&h[1][name]=Host&h[0][value]=json&h[1][value]=example.com&page=2"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "h[0][name]=Accept&" + "h[0][value]=x&" * 9_000,
        "h.0.value=x&" * 9_000 + "h.0.name=Accept",
        "a%5Bvalue%5D=x&" * 7_000,
        "h[0][name]=X-Api-Key&" + "h[0][value]=x&" * 9_000,
    ],
)
def test_a_long_run_of_form_values_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_cut(text, 300))
