"""Redaction: a header object's value stays hidden wherever it was hidden before the keys that
give a name were widened (``"field"``, ``"header"``, ``"param"``): an object that names a
plain field under one of those before its value and the credential header under ``"name"`` or
``"key"`` after it still has the value read as the header's.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from le_transport._redact import CUT_MARGIN, redact_cut, redact_text
from tests.bounded_work import assert_bounded_work
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


# -- redact_cut: what is shown of a cut text is what the whole text's redaction shows ------------

#: A credential as the texts redact_cut is given (an exception's text, a note, a store's error)
#: may hold it; ``{s}`` is the credential.
_FORMS = (
    "Authorization: Bearer {s}",
    "Authorization: Token {s}\r\nHost: h",
    "password={s}&user=bob",
    '{{"access_token": "{s}", "n": 1}}',
    '{{"name": "Authorization", "value": "Token {s}"}}',
    '{{"value": "Token {s}", "name": "Authorization"}}',
    "Header(value='{s}', name='X-Api-Key')",
    '<header value="{s}" name="X-Api-Key"/>',
    "Cookie: a=1; sess={s}",
    "<Authorization><![CDATA[Basic {s}]]></Authorization>",
    "https://bob:{s}@h.example/x",
    '[("Authorization", "Token {s}")]',
    "{{'password': '{s}'}}",
)


def _shown_grams(secret: str, shown: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in shown}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.sampled_from(_FORMS),
    limit=st.integers(1, 400),
    near=st.sampled_from(["cut", "margin"]),
    offset=st.integers(-80, 80),
    padding=st.sampled_from(["x", " ", "a=b ", "\n", "value "]),
    value_pad=st.sampled_from([0, 300, CUT_MARGIN, 2 * CUT_MARGIN]),
)
def test_redact_cut_never_shows_what_the_whole_texts_redaction_hides(
    form: str, limit: int, near: str, offset: int, padding: str, value_pad: int
) -> None:
    # The credential near what is shown's end, or near the margin's; a value may be long.
    secret = "s3cr3t" + "Q" * (value_pad if "value" in form else 0) + "-do-not-log"
    at = max(0, (limit if near == "cut" else limit + CUT_MARGIN) + offset)
    before = (padding * (at // len(padding) + 1))[:at]
    text = before + form.format(s=secret) + " tail=1" * 40
    cut = redact_cut(text, limit)
    whole = redact_text(text)[:limit]
    assert len(cut) <= limit
    assert _shown_grams(secret, cut) <= _shown_grams(secret, whole), (cut, whole)


@pytest.mark.parametrize(
    "form",
    [
        '{{"value": "Token {s}", "name": "Authorization"}}',
        "Header(value='{s}', name='X-Api-Key')",
        '<header value="{s}" name="X-Api-Key"/>',
        "value={s} name=X-Api-Key",
    ],
)
def test_a_header_objects_value_past_the_margin_is_hidden_though_its_name_is_unread(
    form: str,
) -> None:
    # The name after a value longer than the margin was past what redact_cut read: the value
    # was taken for a plain one and its start shown, where the whole text's redaction hid it.
    secret = "s3cr3t-" + "Q" * (2 * CUT_MARGIN)
    shown = redact_cut("error: " + form.format(s=secret), 200)
    assert "s3cr3t" not in shown, shown


def test_a_plain_value_cut_by_the_margin_only_is_hidden() -> None:
    # A value that ends before the margin keeps the whole text's reading.
    text = '{"value": "text/html", "name": "Accept"} ' + "x" * (2 * CUT_MARGIN)
    assert redact_cut(text, 60) == redact_text(text)[:60]


# -- a "value" word in a string and braces between a header's name and its value -----------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"name": "X-Api-Key", "description": "value: the key", "hint": "{{x}}", '
        f'"value": "{BEARER}"}}',
        f'{{"key": "Authorization", "meta": {{"a": 1}}, "description": "value: the header", '
        f'"value": "Token {BEARER}"}}',
        f'{{"value": "sess={BEARER}", "description": "value: a cookie", "meta": {{"a": 1}}, '
        f'"name": "Cookie"}}',
        f"{{'Key': 'X-Api-Key', 'meta': {{'a': 1}}, 'description': 'value: x', "
        f"'value': '{BEARER}'}}",
    ],
)
def test_a_value_word_and_a_nested_brace_between_name_and_value_hide_the_value(text: str) -> None:
    # The "value" word bounded the object's names read beside the value, and the quoted names
    # read up to its brace stopped at the nested object's or the string's brace: the header's
    # name beyond both was not read, and the value was shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown


# -- unquoted keys, a "value" word in another field's string between ------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # Node's util.inspect of a Postman header, its description between.
        f"{{ key: 'X-Api-Key', description: 'value: x', value: '{BEARER}' }}",
        f"[ {{ name: 'Authorization', description: 'value: the bearer', type: 'text', "
        f"value: 'Token {BEARER}' }} ]",
        f"{{ value: 'sess={BEARER}', description: 'a value: b', name: 'Cookie' }}",
        f"{{ name: 'Proxy-Authorization', hint: '{{x}}', description: 'value: x', "
        f"value: 'Token {BEARER}' }}",
    ],
)
def test_unquoted_keys_with_a_value_word_between_name_and_value_hide_the_value(
    text: str,
) -> None:
    # The "value" word bounded the names read beside the value, and the names read up to the
    # object's brace were the quoted keys' only: the header's unquoted name was not read.
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_unquoted_keys_of_a_plain_object_beside_a_secret_one_stay_readable() -> None:
    text = (
        f"[ {{ name: 'Authorization', value: 'Token {BEARER}' }}, "
        "{ name: 'Accept', description: 'value: x', value: 'text/html' } ]"
    )
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "text/html" in shown, shown


# -- YAML: a "value" word opening another field's string ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"headers:\n- name: X-Api-Key\n  description: 'value: x'\n  value: '{BEARER}'\n",
        f"- value: 'sess={BEARER}'\n  description: \"value: a cookie\"\n  name: Cookie\n",
        f"- name: Authorization\n  hint: 'value=1'\n  value: Token {BEARER}\n- name: Host\n",
    ],
)
def test_a_value_word_opening_a_string_bounds_no_object(text: str) -> None:
    # The word, first in a quoted string, was read as a "value" key: the previous or the next
    # object's bound, and the header's name beyond it was not read (no brace bounds YAML's).
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_a_yaml_list_of_headers_keeps_its_plain_values_readable() -> None:
    text = (
        f"- name: Authorization\n  value: Token {BEARER}\n"
        "- name: Accept\n  description: 'value: x'\n  value: text/html\n"
    )
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "text/html" in shown, shown


@pytest.mark.parametrize(
    "unit",
    [
        "'value=",
        "{ key: x, value: ",
        '{"value": "a", "hint": "{", ',
        "}value: '",
        "- value: 'v",
        "<key>a</key><value>",
        "<value>x",
    ],
)
def test_a_run_of_header_objects_words_is_read_in_linear_work(unit: str) -> None:
    # Each "value" reads a bounded window around it, whatever bounds it or fails to.
    text = unit * (100_000 // len(unit))
    assert_bounded_work(lambda: redact_text(text))


# -- XML: a key element's name for the value element after it ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"<entry><key>Authorization</key><value>Token {BEARER}</value></entry>",
        # .NET's DataContractSerializer of a Dictionary<string, string>.
        f"<a:KeyValueOfstringstring><a:Key>X-Api-Key</a:Key><a:Value>{BEARER}</a:Value>"
        "</a:KeyValueOfstringstring>",
        f"<header>\n  <name>Cookie</name>\n  <value>sess={BEARER}</value>\n</header>",
    ],
)
def test_a_value_element_named_by_the_key_element_before_it_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_a_value_element_named_by_a_plain_key_stays_readable() -> None:
    text = (
        f"<e><key>Authorization</key><value>Token {BEARER}</value></e>"
        "<e><key>Accept</key><value>text/html</value></e>"
    )
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "text/html" in shown, shown
