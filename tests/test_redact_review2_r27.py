"""Redaction: a credential header's value whose first word reads as a scheme's name though it
is the credential itself (a password or a key of letters only: ``X-Api-Key: Opensesame
status=401``): hidden with what follows it, a known scheme's name alone shown; and in a
query cut short, a header object's values more than its names shown (``value=json&name=Accept&
value=...`` then the cut): one's name may be past the cut; and a cookie line inside a value
hidden before it, not last there (``...=Bearer%20x\\\\tcookie: a=1; sess=...`` in JSON held
in a JSON string).
"""

from __future__ import annotations

import functools
import json

import pytest
from yarl import URL

from le_transport._redact import URL_QUERY_LIMIT, redact_cut, redact_text, redact_url
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, SESSION_ID

#: A credential of letters only: it reads as a scheme's name ("LivePerson", "Bearer-Token").
LETTERS = "Opensesame"

# -- a credential header's first word, no known scheme ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"X-Api-Key: {LETTERS} status=401",
        f"Api-Key: {LETTERS} 401 Unauthorized",
        f"name=password value={LETTERS} status=401",
        f"name=X-Api-Key value={LETTERS} status=401",
        f"- name: X-Api-Key\n  value: {LETTERS} rejected",
        f"X-Auth-Token: {LETTERS}, retry=3",
    ],
)
def test_a_credential_of_letters_before_another_word_is_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert LETTERS not in shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"X-Auth-Token: Token {BEARER}\r\nHost: h", "X-Auth-Token: Token ***\r\nHost: h"),
        (f"X-Api-Key: bearer {BEARER} status=401", "X-Api-Key: bearer *** status=401"),
        (
            f'name=X-Auth-Token value=Digest username="b", response="{BEARER}"',
            "name=X-Auth-Token value=Digest ***",
        ),
        (f"X-Auth-Token: LivePerson {BEARER}", "X-Auth-Token: LivePerson ***"),
    ],
)
def test_a_known_scheme_of_a_credential_header_is_shown(text: str, shown: str) -> None:
    assert redact_text(text) == shown


@pytest.mark.parametrize("scheme", ["Acme", "Vendor-Auth", "Opensesame"])
def test_an_unknown_scheme_and_its_credential_are_hidden(scheme: str) -> None:
    shown = redact_text(f"X-Auth-Token: {scheme} {BEARER}\r\nHost: h")
    assert BEARER not in shown
    assert scheme not in shown
    assert shown.endswith("\r\nHost: h")


def test_credential_headers_of_unknown_schemes_are_read_once() -> None:
    for unit in ("X-Api-Key: Acme ", "name=X-Api-Key value=Acme a=b, ", "X-Api-Key: Bearer "):
        assert_bounded_work(functools.partial(redact_text, unit * (100_000 // len(unit))))


# -- a query cut short: more values than names shown ------------------------------------------


def _cut_query(head: str, tail: str) -> str:
    """A URL whose query is cut right after ``head``'s items, ``tail`` past the cut."""
    sent = len(URL(f"https://h.example/p?p=a&{head}").raw_query_string) - 3  # (as sent)
    query = "p=" + "a" * (URL_QUERY_LIMIT - sent - 2) + "&" + head + "&" + tail
    return f"https://h.example/p?{query}"


@pytest.mark.parametrize(
    "head",
    [
        f"value=json&name=Accept&value={BEARER}",
        f"name=Accept&value=json&value={BEARER}",
        f"h[0][value]=json&h[0][name]=Accept&h[0][value]={BEARER}",
    ],
)
def test_a_cut_query_hides_values_more_than_their_names(head: str) -> None:
    tail = "h[0][name]=Authorization" if head.startswith("h[") else "name=Authorization"
    shown = redact_url(_cut_query(head, tail))
    assert shown.endswith("&…")
    assert BEARER not in shown
    assert "=Accept&" in shown


def test_a_cut_query_shows_each_object_s_value_beside_its_name() -> None:
    head = "name=Accept&value=json&name=Content-Type&value=text"
    shown = redact_url(_cut_query(head, "name=Authorization"))
    assert f"&{head}&…" in shown


# -- a header line inside a value hidden before it --------------------------------------------


@pytest.mark.parametrize("sep", ["\t", "\r\n", "\n"])
@pytest.mark.parametrize(
    "before",
    [f"headers[Authorization]=Bearer%20{BEARER}", f"h[Authorization][0]=Token%20{BEARER}"],
)
def test_a_cookie_line_inside_a_hidden_value_is_read(before: str, sep: str) -> None:
    # JSON held in a JSON string: the escaped break is no blank, and the authorization's
    # value runs into the cookie line, up to its first cookie.
    line = f"{before}{sep}cookie: a=1; sess={SESSION_ID}; b=2{sep}Host: h"
    text = json.dumps(json.dumps(line))
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown
        assert SESSION_ID not in shown


def test_header_lines_inside_hidden_values_are_read_once() -> None:
    for unit in (
        "cookie: a=1 ",
        "password=x Cookie: a; ",
        "headers[Authorization]=Bearer%20x\\\\tcookie: a=1; ",
        "Authorization: Basic x; Cookie: ",
    ):
        assert_bounded_work(functools.partial(redact_text, unit * (100_000 // len(unit))))
