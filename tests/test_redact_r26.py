"""Redaction: a cookie's value in single quotes (``<SimpleCookie: sess='...'>``, as aiohttp's
``response.cookies`` prints), a header given as an object whose keys are not quoted (a Python
class's repr ``Header(name='Authorization', value='...')``, Node's ``{ name: 'Authorization',
value: '...' }``, YAML), and one whose name and value have a nested object or a brace in a
string between them.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest

from le_transport._redact import body_excerpt, redact_text
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, SESSION_ID

# -- a cookie's value in single quotes ----------------------------------------------------------


def _simple_cookie(**cookies: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    for name, value in cookies.items():
        jar[name] = value
    return repr(jar)


@pytest.mark.parametrize(
    "text",
    [
        # aiohttp's response.cookies (and a cookie jar's) as a log line's %r prints it.
        _simple_cookie(sess=SESSION_ID),
        _simple_cookie(theme="dark", sess=SESSION_ID),
        f"Cookie: sess='{SESSION_ID}'",
        f"Set-Cookie: sess='{SESSION_ID}'; Path=/; HttpOnly",
        f"Cookie: a=1; sess='{SESSION_ID}'",
        # A single quote inside a cookie's value (a cookie-octet): no end of the header.
        f"Cookie: sess=it's{SESSION_ID}",
        f"cookie=sess='{SESSION_ID}'",
    ],
)
def test_a_cookie_value_in_single_quotes_is_hidden(text: str) -> None:
    # The cookie line stopped at the first single quote: "<SimpleCookie: ***'s3cr3t...'>".
    shown = redact_text(text)
    assert SESSION_ID not in shown, shown


def test_a_cookie_line_in_a_single_quoted_string_still_ends_at_its_quote() -> None:
    # Python's repr of a list of header lines: the quote after the value closes the string.
    assert redact_text("['Cookie: a=b', 'Host: h']") == "['Cookie: ***', 'Host: h']"


# -- a header as an object whose keys are not quoted ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # A Python class's repr (attrs, a dataclass, a NamedTuple), the name first or last.
        f"Header(name='Authorization', value='Token {BEARER}')",
        f'Header(name="Authorization", value="Token {BEARER}")',
        f"Header(value='Token {BEARER}', name='Authorization')",
        f"Param(key='X-Api-Key', value='{BEARER}')",
        f"[Header(name='Accept', value='*/*'), Header(name='Cookie', value='sess={BEARER}')]",
        # Node's util.inspect of a HAR header.
        f"{{ name: 'Authorization', value: 'Bearer {BEARER}' }}",
        f"{{ value: '{BEARER}', name: 'X-Api-Key' }}",
        # YAML, a list of headers.
        f"headers:\n- name: Accept\n  value: '*/*'\n- name: Authorization\n  value: Token {BEARER}",
        f"- name: X-Api-Key\n  value: {BEARER}\n",
        f"- value: Token {BEARER}\n  name: Authorization\n",
        # key=value text (logfmt).
        f"header name=Authorization value={BEARER} rejected",
        f"header value={BEARER} name=X-Api-Key rejected",
    ],
)
def test_a_header_object_with_unquoted_keys_hides_its_value(text: str) -> None:
    # Only quoted keys ('"name": ...') were read as the object's name: the value was shown.
    shown = redact_text(text)
    assert BEARER not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        # The next object's value is no credential's: its own name says so.
        "[Header(name='Authorization', value='***'), Header(name='Accept', value='text/plain')]",
        "[Header(value='text/plain', name='Accept'), Header(value='***', name='Authorization')]",
        "- name: Authorization\n  value: '***'\n- name: Accept\n  value: text/plain\n",
        '[{"name": "Authorization", "value": "***"}, {"name": "Accept", "value": "text/plain"}]',
    ],
)
def test_a_value_is_read_with_its_own_objects_name_only(text: str) -> None:
    assert "text/plain" in redact_text(text)


@pytest.mark.parametrize(
    "run",
    [
        "name=Authorization value=",
        "value=x name=Accept ",
        "value: ",
        "{ name: 'X-Api-Key', value: '",
        "H(value='a', name='Authorization'), ",
        "name: " + "a" * 70 + " value: ",
    ],
)
def test_a_long_run_of_unquoted_objects_is_read_in_bounded_work(run: str) -> None:
    """Each value's name is looked for in a bounded window on either side: a long run of them
    costs a pass per window, never one over the whole text per value (CPU time, not the
    wall clock's: a quadratic read of 100 KB takes minutes)."""
    assert_bounded_work(lambda: redact_text(run * (100_000 // len(run))))


# -- a nested object, or a brace in a string, between a header's name and its value --------------


@pytest.mark.parametrize(
    "text",
    [
        # Postman's description as an object; HAR's or a tool's own fields.
        f'{{"key": "X-Api-Key", "description": {{"content": "k", "type": "text/plain"}}, '
        f'"value": "{BEARER}"}}',
        f'{{"name": "Authorization", "meta": {{"a": 1}}, "value": "Token {BEARER}"}}',
        f'{{"value": "Token {BEARER}", "meta": {{"a": {{"b": 1}}}}, "name": "Authorization"}}',
        f'{{"name": "Authorization", "meta": {{"value": 1}}, "value": "Token {BEARER}"}}',
        f"Header(name='Authorization', meta={{'value': 1}}, value='Token {BEARER}')",
        # Braces in a string between them.
        f'{{"name": "Cookie", "comment": "{{x}}", "value": "sess={BEARER}"}}',
        f'{{"value": "Token {BEARER}", "comment": "{{x}}", "name": "Authorization"}}',
        f'{{"name": "Authorization", "comment": "}}", "value": "Token {BEARER}"}}',
        f'{{"value": "Token {BEARER}", "comment": "{{", "name": "Authorization"}}',
    ],
)
def test_a_header_object_with_an_object_or_braces_between_hides_its_value(text: str) -> None:
    # The window the name was looked for in was cut at the nearest brace: the nested object's.
    shown = redact_text(text)
    assert BEARER not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        '[{"name": "Authorization", "value": "***"}, {"meta": {"a": 1}, "value": "text/plain"}]',
        '[{"value": "text/plain", "meta": {"a": 1}}, {"value": "***", "name": "Authorization"}]',
    ],
)
def test_an_objects_brace_still_bounds_its_names(text: str) -> None:
    assert "text/plain" in redact_text(text)


@pytest.mark.parametrize(
    "run", ['{"value": "a", ', '}, "value": "a", ', '{"x": {"value": ', "{}" * 8]
)
def test_a_long_run_of_nested_objects_is_read_in_bounded_work(run: str) -> None:
    # The braces around each value are counted in a bounded window, never the whole text.
    assert_bounded_work(
        lambda: redact_text('"name": "Authorization", ' + run * (100_000 // len(run)))
    )


def test_a_cookie_value_in_escaped_single_quotes_is_hidden() -> None:
    # A request dump in JSON, as Python's repr of that text writes it: the quotes "\\'".
    import json

    text = repr(json.dumps({"request": f"GET / HTTP/1.1\r\nCookie: sess='{SESSION_ID}'"}))
    shown = redact_text(text)
    assert SESSION_ID not in shown, shown


# -- the fuzz target's findings ------------------------------------------------------------------


def test_a_value_attribute_ending_in_a_backslash_is_hidden() -> None:
    # An XML attribute's backslash escapes nothing: its closing quote was read as escaped, the
    # value as running to the text's end, and the name after it was never looked for.
    text = f'<header value="{BEARER}\\" name="Authorization"/>'
    shown = redact_text(text)
    assert BEARER not in shown, shown


def test_a_credential_in_a_cdata_section_leaves_the_next_element_readable() -> None:
    text = (
        "<request><Authorization><![CDATA[Basic Credential=AKIA/x, Signature="
        f"{BEARER}]]></Authorization><Host>h</Host></request>"
    )
    shown = redact_text(text)
    assert BEARER not in shown, shown
    assert "<Host>h</Host>" in shown, shown


def test_a_cookie_header_objects_value_is_read_as_the_header_line() -> None:
    # "value=" read as a cookie parameter's value: its cookies end at a comma, and a folded
    # Set-Cookie's next cookie was shown.
    text = (
        "refused header name=Set-Cookie value=a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT, "
        f"sess={SESSION_ID}"
    )
    shown = redact_text(text)
    assert SESSION_ID not in shown, shown


# -- escaped blanks around a pair's or a field's punctuation, in a JSON string -------------------


def _in_json_string(text: str) -> str:
    import json

    return json.dumps({"e": text})


@pytest.mark.parametrize(
    "text",
    [
        # A blank after the colon, before the value's quote; before the colon.
        f'{{"password":\n"{BEARER}"}}',
        f'{{"password":\t"{BEARER}"}}',
        f'{{"X-Api-Key"\n: "{BEARER}"}}',
        f'{{"name": "Authorization",\n"value":\r\n"Token {BEARER}"}}',
        f"{{'password':\n'{BEARER}'}}",
        # A bare key after a line break or a tab: a pretty-printed repr, key=value lines.
        f"Header(\nname='Authorization',\nvalue='Token {BEARER}')",
        f"Header(name='X-Api-Key',\tvalue='{BEARER}')",
        f"name=Authorization\nvalue=Token {BEARER}",
        f"value={BEARER}\nname=X-Api-Key",
        # A bytes pair after a line break (aiohttp's raw_headers, pretty-printed).
        f"(\nb'Authorization', b'Token {BEARER}')",
        f"[\n\tb'X-Api-Key',\n\tb'{BEARER}']",
    ],
)
def test_a_field_with_escaped_blanks_in_a_json_string_is_hidden(text: str) -> None:
    # A blank in a JSON string is escaped ("\\n", "\\t"): the field's punctuation read only
    # real blanks, and a bare "value" after "\\n" was read as a field called "nvalue".
    shown = redact_text(_in_json_string(text))
    assert BEARER not in shown, shown


def test_an_escaped_line_break_after_an_empty_value_keeps_the_next_header() -> None:
    shown = redact_text(_in_json_string("password=\r\nHost: h\r\nX-Request-Id: rid-7"))
    assert "Host: h" in shown, shown
    assert "rid-7" in shown, shown


@pytest.mark.parametrize("prefix", ["", "password", "value", '"password":', "name=Authorization "])
@pytest.mark.parametrize("run", ["\\t", "\\n", "\\r\\n", "\\\\n", "\\t=", ":\\t"])
def test_a_long_run_of_escaped_blanks_around_punctuation_is_read_once(
    prefix: str, run: str
) -> None:
    # Each escaped blank's letter starts a name run: a punctuation taking any number of them
    # read the rest of the run again from each (50,000 of "\\t" after "Bearer abcd": minutes).
    assert_bounded_work(lambda: redact_text(prefix + run * (100_000 // len(run))))


@pytest.mark.parametrize(
    "text",
    [
        # An escaped blank after a name key's colon or "=", before the name.
        f'{{"key":\n"X-Api-Key", "value": "{BEARER}"}}',
        f"H(name=\n'Authorization', value='Token {BEARER}')",
        f'<header name=\n"Authorization" value="Token {BEARER}"/>',
        # An array after an escaped blank.
        f'{{"Cookie":\n["sess={BEARER}"]}}',
        f'{{"Set-Cookie":\r\n\t["a=1", "sess={BEARER}"]}}',
    ],
)
def test_a_name_or_an_array_after_an_escaped_blank_is_read(text: str) -> None:
    shown = redact_text(_in_json_string(text))
    assert BEARER not in shown, shown


# -- a header or a field named by another key, or capitalised, in a parsed body ------------------


@pytest.mark.parametrize(
    "body",
    [
        # .NET's KeyValuePair, as ASP.NET writes a list of headers.
        {"headers": [{"Key": "X-Api-Key", "Value": BEARER}]},
        {"Headers": [{"Key": "Authorization", "Value": f"Token {BEARER}"}]},
        {"NAME": "Authorization", "VALUE": f"Token {BEARER}"},
        # A validation error echoing the value it refused; a header named by "header".
        {"errors": [{"field": "password", "message": "too short", "value": BEARER}]},
        {"header": "Authorization", "value": f"Token {BEARER}"},
        {"param": "client_secret", "value": BEARER},
    ],
)
def test_a_parsed_bodys_named_value_is_hidden(body: object) -> None:
    import json

    shown = body_excerpt(json.dumps(body).encode(), path="/api/x", limit=1000)
    assert BEARER not in shown, shown
    # The same as free text (a body too long to parse, an error's message).
    shown = redact_text(json.dumps(body))
    assert BEARER not in shown, shown
