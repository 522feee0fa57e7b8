"""Redaction: a credential header's value read through its scheme where the header's name is a
secret's but no authorization's (``X-Auth-Token: Token ...``, HAR's ``name=X-Auth-Token
value=Digest username=..., response=...``), and a field whose value runs past the end of a
value hidden before it.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import functools
import json

import pytest
from yarl import URL

from le_transport._redact import (
    URL_QUERY_LIMIT,
    _form_field,
    redact_cut,
    redact_text,
    redact_url,
)
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, SESSION_ID


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


@pytest.mark.parametrize(
    "text",
    [
        f'value: none; header="Set-Cookie": ["sess={SESSION_ID}"]',
        f'status=401 value: none; header="Set-Cookie": ["sess=Token {SESSION_ID}"]; x=1',
        f"sort=key:asc&Proxy-Authorization: Basic {BEARER}\\back\\slashstatus=401 value: none; "
        f'header="Set-Cookie": ["sess=Token {SESSION_ID}\\\\back"]; Cookie: theme=dark',
    ],
)
def test_a_field_whose_value_runs_past_a_hidden_one_is_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert SESSION_ID not in shown
        assert BEARER not in shown


def test_fields_in_hidden_values_are_read_once() -> None:
    for unit in ('value: none; header="Set-Cookie": [', 'Cookie: a; "Set-Cookie": ["x'):
        assert_bounded_work(functools.partial(redact_text, unit * (100_000 // len(unit))))


def test_secret_headers_given_schemes_are_read_once() -> None:
    for unit in ("X-Auth-Token: Token ", 'name=X-Auth-Token value=Digest username="b", '):
        assert_bounded_work(functools.partial(redact_text, unit * (100_000 // len(unit))))


# -- a form's bracketed name ending in an index -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"password[0]={BEARER}&x=1",
        f"token[1]={BEARER}",
        f"user[password][0]={BEARER}&page=2",
        f"headers[Authorization][0]=Bearer%20{BEARER}&page=2",
        f"headers%5BAuthorization%5D%5B0%5D=Token%20{BEARER}",
    ],
)
def test_a_bracketed_name_s_index_is_no_name(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown


def test_a_plain_bracketed_name_with_an_index_keeps_its_value() -> None:
    assert redact_text("items[0]=open&page[2]=x") == "items[0]=open&page[2]=x"


@pytest.mark.parametrize(
    "query",
    [
        f"h[0][name]=Authorization&h[0][value][]={BEARER}",
        f"h[0][name]=Authorization&h[0][value][0]=Token%20{BEARER}",
        f"h[0][value][1]={BEARER}&h[0][name]=X-Api-Key",
    ],
)
def test_a_header_object_s_indexed_value_field_is_hidden_in_a_url(query: str) -> None:
    shown = redact_url(f"https://h.example/p?{query}")
    assert BEARER not in shown
    assert "Authorization" in shown or "X-Api-Key" in shown


def test_a_url_key_of_many_indexes_is_read_once() -> None:
    for key in ("a" + "[0]" * 10_000 + "x", "a" + "[0]" * 10_000, "[]" * 15_000):
        url = f"https://h.example/p?{key}=1&" * 2
        assert_bounded_work(functools.partial(redact_url, url))
        assert_bounded_work(functools.partial(_form_field, key))


# -- braces and blanks that are a string's whole text ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"name": "X-Api-Key", "note": "{{ ", "value": "{BEARER}"}}',
        f'{{"name": "X-Api-Key", "note": "{{{{", "value": "{BEARER}"}}',
        f'{{"value": "{BEARER}", "note": " }}", "name": "X-Api-Key"}}',
        f'{{"value": "{BEARER}", "note": "}}}}", "name": "X-Api-Key"}}',
        f"{{ name: 'Authorization', note: '{{ ', value: 'Token {BEARER}' }}",
    ],
)
def test_braces_and_blanks_in_a_string_do_not_bound_a_header_object(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown
    assert BEARER not in redact_text(json.dumps(text))


@pytest.mark.parametrize(
    "text",
    [
        '[{"name": "Accept", "note": "{ ", "value": "json"}]',
        '{"name": "Accept", "value": "json"} {"value": "Token x", "name": "Authorization"}',
        '{"name": "Accept", "value": "json"}\t{"note": "{"}\t{"name": "Authorization"}',
        '{"hint": "}", "value": "plain"}\t{"value": "sess=x", "name": "Set-Cookie"}',
        '{"name": "Accept", "value": "json"}\t"{\\"name\\": \\"Set-Cookie\\"}"',
        '{"hint": "}", "value": "plain"} "{"\t{\t- header: Proxy-Authorization',
    ],
)
def test_braces_and_blanks_keep_a_neighbour_s_plain_value(text: str) -> None:
    shown = redact_text(text)
    assert '"value": "json"' in shown or '"value": "plain"' in shown


def test_many_brace_strings_are_read_once() -> None:
    for unit in ('"{{ " ', '"{ {" "value": ', "{" * 7 + '"'):
        assert_bounded_work(functools.partial(redact_text, unit * (100_000 // len(unit))))


# -- a query cut short ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        f"&value={BEARER}&name=Authorization",
        f"&h[0][value]={BEARER}&h[0][name]=X-Api-Key",
        f"&h%5B0%5D%5Bvalue%5D=Token%20{BEARER}&h%5B0%5D%5Bname%5D=Authorization",
    ],
)
def test_a_cut_query_hides_a_value_whose_name_is_past_the_cut(tail: str) -> None:
    head, _, name = tail.rpartition("&")
    sent = len(URL(f"https://h.example/p?p=a{head}").raw_query_string) - 3  # (as sent)
    query = "p=" + "a" * (URL_QUERY_LIMIT - sent - 2) + head + "&" + name
    shown = redact_url(f"https://h.example/p?{query}")
    assert shown.endswith("=***&…")
    assert BEARER not in shown


def test_a_cut_query_shows_a_plain_object_s_value_with_its_name() -> None:
    query = "p=" + "a" * (URL_QUERY_LIMIT - 40) + "&name=Accept&value=json&" + "x=1&" * 20
    shown = redact_url(f"https://h.example/p?{query}")
    assert "&name=Accept&value=json&" in shown
    assert shown.endswith("&…")
