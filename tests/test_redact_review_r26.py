"""Redaction: a header object's value stays hidden wherever it was hidden before its keys
could be unquoted: a "value" word inside another field's string between the header's name
and its value (a description, a hint) bounds no object, and an element's own name
(``<Cookie name="session" value="..."/>``) still names its value when an attribute gives
another, non-secret name.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import json

import pytest

from le_transport._redact import body_excerpt, redact_text
from tests.known_secrets import BEARER

# -- a "value" in a string between a header's name and its value ---------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # A tool's description of the header (Postman, an API spec), or a hint, between.
        f'{{"name": "Authorization", "comment": "value: none", "value": "Token {BEARER}"}}',
        f'{{"key": "Authorization", "type": "text", "description": "value: the bearer", '
        f'"value": "Token {BEARER}"}}',
        f'{{"name": "X-Api-Key", "hint": "value=1", "value": "{BEARER}"}}',
        # The name after the value, the word between.
        f'{{"value": "Token {BEARER}", "comment": "a value: b", "name": "Authorization"}}',
        f'{{"value": "{BEARER}", "hint": "value=1", "name": "X-Api-Key"}}',
        # In a JSON string (a structured log's message).
        json.dumps({"e": json.dumps({"name": "Cookie", "c": "value: x", "value": BEARER})}),
    ],
)
def test_a_value_word_in_a_string_between_name_and_value_bounds_no_object(text: str) -> None:
    # The word was read as another object's "value" key: the window the name was looked for
    # in ended there, and the value was shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_a_value_word_in_a_string_is_hidden_in_a_body_too_long_to_parse() -> None:
    # An excerpt of a body cut before its end is read as free text.
    har = {"name": "Authorization", "comment": "value: see docs", "value": f"Token {BEARER}"}
    body = json.dumps({"entries": [har], "pad": "x" * 5000}).encode()
    shown = body_excerpt(body, path="/api/x", limit=300)
    assert BEARER not in shown, shown


# -- an element's name with another name attribute --------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'<Cookie name="session" value="{BEARER}"/>',
        f'<Authorization key="primary" value="Token {BEARER}"/>',
        f'<X-Api-Key field="k" value="{BEARER}"/>',
        f'<request><Cookie name="s" value="{BEARER}"/><Host>h</Host></request>',
        # A name shaped like a cookie header's that names no credential.
        f'<Cookie name="My-Cookie" value="{BEARER}"/>',
    ],
)
def test_an_elements_secret_name_names_its_value_beside_another_name(text: str) -> None:
    # The attribute's name ("session") was read as the value's, and the element's own
    # ("Cookie") no longer looked at.
    shown = redact_text(text)
    assert BEARER not in shown, shown


# -- a plain name before the value, the header's own after it ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"{{ name='Accept' 'value': 'sess={BEARER}', 'name': 'Cookie'}}",
        f'{{headers: name=Accept "value": "Token {BEARER}", "name": "Authorization"}}',
        f'{{"c": "{{", name=Accept, "value": "{BEARER}", "name": "X-Api-Key"}}',
    ],
)
def test_a_plain_name_before_the_value_leaves_the_quoted_name_after_it_read(text: str) -> None:
    # An unquoted name before the value, in the object's brace, was taken as its only name:
    # the quoted one after the value, which named it, was no longer read.
    shown = redact_text(text)
    assert BEARER not in shown, shown


# -- a header's name beside another secret name ---------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'[{{"field": "password", "key": "Authorization", value: Token {BEARER}}}]',
        f"- field: password\n  header: Authorization\n  value: Token {BEARER}\n",
        f"Header(field='password', name='Cookie', value=theme=dark; sess={BEARER})",
        f'{{"field": "api_key", "name": "Set-Cookie", value: a=1, sess={BEARER}}}',
    ],
)
def test_a_headers_name_reads_its_value_beside_another_secret_name(text: str) -> None:
    # The first secret name was taken ("password"): its value read as a plain field's, its
    # first word only, and the credential after the scheme or the first cookie shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        f'"field": "password"\n<Cookie\nvalue: Token {BEARER}',
        f'<Cookie field="password" value: a=1; sess={BEARER}',
    ],
)
def test_an_elements_header_name_reads_its_value_beside_another_secret_name(text: str) -> None:
    shown = redact_text(text)
    assert BEARER not in shown, shown


# -- a CDATA section's close inside a credential's parameter ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Basic x={BEARER[:6]}]]>{BEARER[6:]}",
        f"Authorization: Basic realm={BEARER[:6]}]]>{BEARER[6:]}, status=401",
    ],
)
def test_a_cdata_close_inside_a_parameter_ends_it_only_before_a_tag(text: str) -> None:
    # "]]>" ended the parameter wherever it stood: the credential's text after it was shown.
    shown = redact_text(text)
    assert BEARER[6:] not in shown, shown


def test_a_cdata_close_before_a_tag_still_ends_the_parameter() -> None:
    text = f"<r><Authorization><![CDATA[Basic x={BEARER}]]></Authorization><Host>h</Host></r>"
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "<Host>h</Host>" in shown, shown
