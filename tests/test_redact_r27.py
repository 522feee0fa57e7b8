"""Redaction: a form's bracketed names (PHP's, Rails', qs': ``headers[Authorization]=...``,
``auth[password]=...``, percent-encoded as ``headers%5BAuthorization%5D=...``), a brace
alone in a string between a header object's name and its value, a header object given as JSON
escaped many times over, and a URL with a huge query.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

import json

import pytest

from le_transport._redact import REDACTED, URL_QUERY_LIMIT, redact_cut, redact_text, redact_url
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, PASSWORD, SESSION_ID

# -- a form's bracketed names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"headers[Authorization]=Bearer%20{BEARER}&page=2",
        f"headers%5BAuthorization%5D=Bearer%20{BEARER}&page=2",
        f"headers%5bauthorization%5d=Token%20{BEARER}",
        f"options[headers][X-Api-Key]={BEARER}&page=2",
        f"auth[password]={PASSWORD}&auth[user]=bob",
        f"user[pw]={PASSWORD}&page=2",
        f"POST /session failed: 422 user[password]={PASSWORD}",
        f"headers[Cookie]=LPSESSION={SESSION_ID}; theme=dark",
        f'{{"headers[Authorization]": "Bearer {BEARER}"}}',
        f"credentials[][password]={PASSWORD}",
    ],
)
def test_a_bracketed_form_name_has_its_value_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown
        assert PASSWORD not in shown
        assert SESSION_ID not in shown
        assert REDACTED in shown


@pytest.mark.parametrize(
    "text",
    ["page[size]=10&page[number]=2", "filter[status]=open", "sort[0]=name", "a[b][c]=d"],
)
def test_a_bracketed_plain_name_keeps_its_value(text: str) -> None:
    assert redact_text(text) == text


def test_a_long_run_of_brackets_is_read_once() -> None:
    text = "a[" * 50_000 + "password]=x" + "[a]" * 20_000 + "=" + "%5Ba" * 20_000
    assert_bounded_work(lambda: redact_text(text))


# -- a brace alone in a string between a header object's name and its value -----------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"name": "Authorization", "note": "{{", "value": "Token {BEARER}"}}',
        f'{{"name": "X-Api-Key", "note": "}}", "value": "{BEARER}"}}',
        f'{{"value": "{BEARER}", "note": "}}", "name": "X-Api-Key"}}',
        f'{{"value": "{BEARER}", "note": "{{", "name": "Authorization"}}',
        f'[{{"name": "Cookie", "note": "{{", "value": "LPSESSION={SESSION_ID}"}}]',
        f"{{ name: 'password', note: '{{', value: '{PASSWORD}' }}",
        f"Header(name='X-Api-Key', note='}}', value='{BEARER}')",
        f'{{\\"name\\": \\"X-Api-Key\\", \\"note\\": \\"{{\\", \\"value\\": \\"{BEARER}\\"}}',
    ],
)
def test_a_lone_brace_in_a_string_does_not_bound_a_header_object(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown
        assert PASSWORD not in shown
        assert SESSION_ID not in shown


def test_a_lone_brace_keeps_a_neighbour_s_plain_value() -> None:
    text = (
        '[{"name": "Authorization", "value": "x"}, '
        '{"name": "Accept", "note": "{", "value": "application/json"}]'
    )
    assert "application/json" in redact_text(text)


def test_many_lone_braces_are_read_once() -> None:
    text = '"value": "x", "n": "{", ' * 5_000
    assert_bounded_work(lambda: redact_text(text))


# -- a URL with a huge query ------------------------------------------------------------------


def test_a_huge_query_is_shown_cut_at_an_item_s_end() -> None:
    items = [f"a{i}=b{i}" for i in range(1_000_000)]
    url = "https://h.example/p?" + "&".join(items)  # ~11 MB
    url += f"&access_token={BEARER}&q=Bearer%20{BEARER}"
    shown: list[str] = []
    assert_bounded_work(lambda: shown.append(redact_url(url)))
    assert len(shown[0]) <= URL_QUERY_LIMIT + 100
    assert shown[0].startswith("https://h.example/p?a0=b0&a1=b1&")
    assert shown[0].endswith("&…")
    assert BEARER not in shown[0]
    # Every item shown is whole: the last before the cut is one of the query's own.
    last = shown[0].removesuffix("&…").rpartition("&")[2]
    assert last in items


@pytest.mark.parametrize(
    "query",
    [
        "q=" + "Bearer%20" + "x" * 50_000 + f"&token={BEARER}",
        f"a=1&q={'x' * (URL_QUERY_LIMIT - 20)}Bearer%20{BEARER}{'y' * 40_000}",
        "p=" + "a" * 100 + f"&password={BEARER}" + "&b=c" * 20_000,
    ],
)
def test_a_huge_query_never_shows_a_credential(query: str) -> None:
    shown = redact_url("https://h.example/p?" + query)
    assert BEARER not in shown
    assert len(shown) <= URL_QUERY_LIMIT + 100


def test_a_query_within_the_limit_is_shown_whole() -> None:
    query = "&".join(f"k{i}=v{i}" for i in range(2_000))
    assert len(query) < URL_QUERY_LIMIT
    assert redact_url(f"https://h.example/p?{query}") == f"https://h.example/p?{query}"


def test_a_huge_single_item_is_not_shown() -> None:
    shown = redact_url("https://h.example/p?q=" + "x" * 100_000)
    assert shown == "https://h.example/p?…"


# -- a header object as JSON escaped many times over ------------------------------------------


def _dumped(value: object, times: int) -> str:
    text = json.dumps(value)
    for _ in range(times - 1):
        text = json.dumps(text)
    return text


@pytest.mark.parametrize("times", range(1, 11))
@pytest.mark.parametrize(
    "value",
    [
        {"Authorization": "Bearer abc"},
        {"Authorization": f"Token {BEARER}"},
        {"password": PASSWORD},
        {"name": "Authorization", "value": f"Token {BEARER}"},
        {"name": "X-Api-Key", "value": BEARER},
        {"value": BEARER, "name": "X-Api-Key"},
        {"name": "Cookie", "comment": "session", "value": f"LPSESSION={SESSION_ID}"},
    ],
)
def test_json_escaped_any_number_of_times_has_its_credential_hidden(
    value: dict[str, str], times: int
) -> None:
    text = _dumped({"log": [value]}, times)
    for shown in (redact_text(text), redact_cut(text, 100_000)):
        assert BEARER not in shown
        assert PASSWORD not in shown
        assert SESSION_ID not in shown
        assert "abc" not in shown


def test_deeply_escaped_value_keys_are_read_once() -> None:
    # (A quote escaped as deep as the windows widen for: each field reads ~16 KB around it.)
    run = "\\" * 2_047
    text = f'{run}"value{run}": {run}"x{run}", ' * 24 + ("\\" * 10 + '"value": "x", ') * 5_000
    assert_bounded_work(lambda: redact_text(text))


# -- a "value" word or a brace in another field's string --------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'Header(name="Authorization", hint="x, value: y", value="Token {BEARER}")',
        f"Header(name='X-Api-Key', hint='x, value: y', value='{BEARER}')",
        f"Header(value='{BEARER}', hint='x, value: y', name='X-Api-Key')",
        f"- name: X-Api-Key\n  hint: 'x, value: y'\n  value: {BEARER}\n",
        f'Header(name="Authorization", hint="value: {{", value="Token {BEARER}")',
        f'{{"name": "X-Api-Key", "hint": "value: {{", "value": "{BEARER}"}}',
        f"{{ name: 'password', hint: 'value: {{', value: '{PASSWORD}' }}",
        f'{{"value": "{BEARER}", "hint": "value: }}", "name": "X-Api-Key"}}',
        f"Header(value='{BEARER}', hint='value: }}', name='X-Api-Key')",
        f'{{"name": "Cookie", "hint": "a {{", "value": "LPSESSION={SESSION_ID}"}}',
    ],
)
def test_a_value_word_or_a_brace_in_a_string_bounds_no_object(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown
        assert PASSWORD not in shown
        assert SESSION_ID not in shown


def test_a_previous_object_s_value_still_bounds_a_plain_one() -> None:
    text = "H(name='Authorization', value='x'), H(name='Accept', value='application/json')"
    assert "application/json" in redact_text(text)


def test_value_words_before_a_long_bare_run_are_read_once() -> None:
    text = '{"value": "x", "h": "value: y", ' * 2_000 + "value: " + "a" * 200_000
    text += ("!value: x!" * 20 + "value: " + "b" * 5_000) * 20
    assert_bounded_work(lambda: redact_text(text))


# -- a header object as a form's bracketed fields ---------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"headers[0][name]=Authorization&headers[0][value]=Token%20{BEARER}&x=1",
        f"headers%5B0%5D%5Bname%5D=X-Api-Key&headers%5B0%5D%5Bvalue%5D={BEARER}&x=1",
        f"headers[0][value]={BEARER}&headers[0][name]=X-Api-Key&x=1",
        f"h[1][key]=Cookie&h[1][value]=LPSESSION%3D{SESSION_ID}",
        f"fields[field]=password&fields[value]={PASSWORD}",
    ],
)
def test_a_header_object_as_bracketed_form_fields_has_its_value_hidden(query: str) -> None:
    for shown in (
        redact_text(query),
        redact_cut(query, 1000),
        redact_url(f"https://h.example/p?{query}"),
    ):
        assert BEARER not in shown
        assert PASSWORD not in shown
        assert SESSION_ID not in shown


def test_a_plain_header_object_as_bracketed_form_fields_keeps_its_value() -> None:
    query = (
        "headers[0][name]=Authorization&headers[0][value]=x"
        "&headers[1][name]=Accept&headers[1][value]=application/json"
    )
    assert "headers[1][value]=application/json" in redact_url(f"https://h.example/p?{query}")
    assert "headers[1][value]=application/json" in redact_text(query)


# -- an escaped tab before the next header's name ---------------------------------------------


@pytest.mark.parametrize(
    "dump",
    [
        f"Authorization: Basic\tAuthorization: Token {BEARER}",
        f"Authorization: none\tCookie: LPSESSION={BEARER}",
        f"Header(name='Authorization', hint='{{', value=none\tAuthorization: Token {BEARER})",
        f"password=x\tAuthorization: Token {BEARER}",
    ],
)
def test_an_escaped_tab_before_a_header_s_name_ends_a_value(dump: str) -> None:
    # (As a JSON string writes a tab, "\\t": the escape a line break has, "\\r\\n".)
    assert BEARER not in redact_text(json.dumps(dump))


def test_an_escaped_tab_inside_a_value_is_its_own() -> None:
    assert redact_text(json.dumps("password=C:\tools\tmy-pass")) == '"password=***"'


def test_a_long_run_of_escaped_tabs_is_read_once() -> None:
    text = ("password=" + "\\t" * 50_000 + "x ") * 2 + "Authorization: " + "\\t" * 50_000
    assert_bounded_work(lambda: redact_text(text))
