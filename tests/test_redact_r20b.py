"""Redaction: escapes after a scheme's credential and in OAuth 1 values (the next header's name
is never taken with the credential), CDATA after a blank, HAR and Postman objects whose name is
not next to the value, pairs with other blanks, pairs and flat lists of any credential header,
short names after Go's "\\u0026", bytes pairs, lists of words after a credential header's name,
self-closing elements, and redact_url's cost for query values holding "=".

The secret in each is "S3CR3T".
"""

from __future__ import annotations

import json

import pytest
from yarl import URL

from le_transport import _redact
from le_transport._redact import body_excerpt, redact_text, redact_url
from tests.bounded_work import assert_bounded_work

SECRET = "S3CR3T"

# -- a scheme's credential never takes the next header's name -----------------------------------
#
# The credential after Bearer/jwt/Basic and an oauth_* value are hidden by a substitution before
# the fields' pass: a run taking an escaped tab, a literal backslash or a line break escaped
# twice (JSON in a JSON string: "\\\\r\\\\n") took the next header's name ("Cookie:") with it,
# and that header's value was then shown.


def _request_dump(*headers: str) -> str:
    return "GET / HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\nHost: h"


@pytest.mark.parametrize(
    "text",
    [
        # A request dump in JSON held in a JSON string (its line breaks written "\\\\r\\\\n").
        json.dumps(
            json.dumps(
                {"request": _request_dump("Authorization: Bearer abc", f"Cookie: sess={SECRET}")}
            )
        ),
        json.dumps(
            json.dumps(
                {"request": _request_dump("Authorization: Basic dXNlcjpw", f"X-Api-Key: {SECRET}")}
            )
        ),
        json.dumps(
            json.dumps(
                {
                    "r": _request_dump(
                        "Authorization: Bearer abc", f"Proxy-Authorization: Token {SECRET}"
                    )
                }
            )
        ),
        # The same as Python's repr of the JSON text writes it (an exception's message).
        repr(
            json.dumps(
                {"request": _request_dump("Authorization: Bearer abc", f"Cookie: sess={SECRET}")}
            )
        ),
        # Headers joined by a tab, in a JSON string.
        json.dumps({"headers": f"Authorization: Bearer abc\tCookie: sess={SECRET}"}),
        json.dumps({"headers": f"Authorization: jwt abcd\tX-Api-Key: {SECRET}"}),
        # A literal backslash between two headers in plain text.
        f"Authorization: Bearer abc\\Cookie: sess={SECRET}",
        # The OAuth 1 pass, the same way.
        json.dumps({"e": f"Authorization: OAuth oauth_token=abc\tCookie: sess={SECRET}"}),
    ],
)
def test_a_scheme_credential_does_not_take_the_next_header_name(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


def test_a_truncated_json_body_with_a_request_dump_hides_the_next_header_value() -> None:
    """The same through body_excerpt: a body cut at limit*4 bytes is not JSON, and goes to
    redact_text as it is (a JSON field holding a JSON string: depth 2)."""
    inner = json.dumps(
        {"request": _request_dump("Authorization: Bearer abc", f"Cookie: sess={SECRET}")}
    )
    body = ('{"detail": ' + json.dumps(inner) + ', "pad": "' + "x" * 1300 + '"}').encode()
    shown = body_excerpt(body)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        # One credential per line of a JSON string: the first one's run must stop at the escaped
        # line break, so that the next line's scheme is seen at its start.
        json.dumps({"e": f"tried Bearer abcd\nBearer {SECRET}abc"}),
        json.dumps({"e": f"tried Bearer abcd\nBasic {SECRET}abc"}),
        json.dumps({"e": f"Bearer abcd\r\njwt {SECRET}abc"}),
    ],
)
def test_a_scheme_at_an_escaped_line_start_after_a_credential_line_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


# -- a backslash pair before a deeper escaped quote is the quote's ------------------------------
#
# A run taking the escaped backslash of a JSON-in-JSON quote ("\\\\\\"") turned the deeper quote
# into a shallower one: a quoted value around it (password=\\"...\\") ended there, early, and the
# rest of it was shown.


@pytest.mark.parametrize("scheme", ["Bearer", "Basic", "jwt"])
def test_a_quoted_value_holding_a_quoted_credential_is_hidden_whole(scheme: str) -> None:
    text = json.dumps({"e": f'password="a \\"{scheme} xyzw\\" b {SECRET}"'})
    shown = redact_text(text)
    assert SECRET not in shown, shown


def test_json_in_json_keeps_its_quote_escapes_after_a_scheme() -> None:
    """Ordinary text stays readable: the structure of JSON held in a JSON string is kept."""
    text = json.dumps(json.dumps({"e": 'refused "Bearer abcd" x'}))
    assert redact_text(text) == json.dumps(json.dumps({"e": 'refused "Bearer ***" x'}))


@pytest.mark.parametrize("prefix", ["Bearer abcd", "Basic a=", "oauth_token=", "Bearer a=b"])
@pytest.mark.parametrize("run", ["\\t", "\\\\", "\\r", '\\\\\\"', "a\\", "\\\\r\\\\n"])
def test_a_long_run_of_escapes_after_a_credential_is_read_once(prefix: str, run: str) -> None:
    """Whether a run of backslashes ends a credential is looked at once per run: a look per
    escape (a header's name after any number of them) is quadratic, and 16 KB of "\\t" took
    seconds. Linear, 100 KB is well under a second on any machine."""
    assert_bounded_work(lambda: redact_text(prefix + run * (100_000 // len(run))))


def test_a_scheme_parameter_in_an_element_ends_at_the_tag() -> None:
    """A parameter's value after a scheme ended at a blank only: in XML it took the closing tag
    and the next element with it."""
    text = "<request><Authorization>Bearer Signature=S3CR3T</Authorization><Host>h</Host></request>"
    shown = redact_text(text)
    assert SECRET not in shown, shown
    assert "<Host>h</Host>" in shown, shown


# -- XML: CDATA after a blank; an empty element --------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # Pretty-printed XML: a blank or a line break before the CDATA section.
        f"<password>\n  <![CDATA[{SECRET}]]>\n</password>",
        f"<password> <![CDATA[{SECRET}]]></password>",
        f'<Authorization type="x">\n  <![CDATA[Token {SECRET}]]>\n</Authorization>',
        f"<password>\n  <![CDATA[a<b {SECRET}]]>\n</password>",
        # In a JSON string, its blanks escaped ("\\n  "), or in JSON held in one.
        json.dumps({"e": f"<password>\n  <![CDATA[{SECRET}]]>\n</password>"}),
        json.dumps(json.dumps({"e": f"<password>\r\n\t<![CDATA[a<b {SECRET}]]></password>"})),
    ],
)
def test_cdata_after_a_blank_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        '<Token type="opaque"/>Request failed for account 123<br/>',
        "<password/>Request failed<br/>",
        '<Token type="opaque" />Request failed',
    ],
)
def test_an_empty_element_named_like_a_secret_keeps_the_text_after_it(text: str) -> None:
    assert redact_text(text) == text


def test_an_element_with_a_slash_in_an_attribute_still_hides_its_text() -> None:
    shown = redact_text(f'<Authorization href="/a/">Token {SECRET}</Authorization>')
    assert SECRET not in shown, shown


# -- HAR and Postman: a value whose name is not next to it ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # HAR's header object may carry "comment" (HAR 1.2), between value and name.
        f'{{"value": "Token {SECRET}", "comment": "", "name": "Authorization"}}',
        f'{{"name": "Authorization", "comment": "from the proxy", "value": "Token {SECRET}"}}',
        # A value given as a list, named after it.
        f'{{"value": ["Token {SECRET}"], "name": "Authorization"}}',
        # Postman's header objects written with sorted keys: key, type, value.
        f'{{"key": "Authorization", "type": "text", "value": "Token {SECRET}"}}',
        json.dumps(json.dumps({"key": "Cookie", "type": "text", "value": f"a={SECRET}"})),
        json.dumps({"value": f"Token {SECRET}", "comment": "", "name": "X-Api-Key"}),
    ],
)
def test_a_har_value_with_its_name_not_next_to_it_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        '[{"name": "Authorization", "value": "***"},'
        ' {"value": "h", "comment": "", "name": "Host"}]',
        '[{"value": "gzip", "comment": "", "name": "Accept-Encoding"},'
        ' {"name": "Host", "value": "h"}]',
        '{"value": ["a", "b"], "name": "Accept"}',
    ],
)
def test_a_har_value_named_by_a_plain_header_is_shown(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize("run", ['"value": [', '{"value": "', '"value": "x", "comment": "'])
def test_many_unnamed_values_are_read_once(run: str) -> None:
    """The name after a value is looked for in a bounded window, never to the text's end again
    for each value."""
    assert_bounded_work(lambda: redact_text(run * (100_000 // len(run))))


# -- pairs and flat lists: other blanks, any credential header, bytes, odd places ----------------


@pytest.mark.parametrize(
    "text",
    [
        # A pretty-printed pair or list inside a JSON string: its blanks escaped ("\\n  ").
        json.dumps({"e": f'[\n  "Cookie",\n  "a={SECRET}"\n]'}),
        json.dumps({"e": f'(\t"Authorization",\t"Token {SECRET}")'}),
        json.dumps({"e": f'["Host",\n "h",\n "Cookie",\n "a={SECRET}"]'}),
        # A blank before the comma.
        f'["Authorization" , "Token {SECRET}"]',
        f'( "Authorization" ,"Token {SECRET}" )',
    ],
)
def test_a_pair_with_other_blanks_has_its_value_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        # Node's rawHeaders and header tuples with a credential header that is neither an
        # authorization nor a cookie, and a form's items.
        f'["Host", "h", "X-Api-Key", "{SECRET}"]',
        f'[("Accept", "*/*"), ("X-CSRF-Token", "{SECRET}")]',
        f'[("X-Auth-Token", "{SECRET}")]',
        f"[('username', 'bob'), ('password', '{SECRET}')]",
        json.dumps(json.dumps(["Host", "h", "X-Api-Key", SECRET])),
    ],
)
def test_a_flat_list_or_pair_of_any_credential_header_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        # aiohttp's raw_headers (bytes pairs), as repr writes them.
        f"[(b'Authorization', b'Token {SECRET}'), (b'Host', b'h')]",
        f"((b'Host', b'h'), (b'Cookie', b'a={SECRET}'))",
        f"[b'Host', b'h', b'X-Api-Key', b'{SECRET}']",
    ],
)
def test_a_bytes_pair_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        # A list of names or words where a credential header's name is at an odd place: an
        # item of the list, not a pair's first.
        '{"required": ["Content-Type", "Authorization", "X-LP-Account"]}',
        '{"errors": ["missing", "Cookie", "invalid format"]}',
        'Access-Control-Allow-Headers: ["Accept", "Cookie", "X-Trace"]',
        json.dumps({"e": '["Accept",\n "Cookie",\n "X-Trace"]'}),
    ],
)
def test_a_list_of_words_after_a_credential_header_name_is_shown(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        # Not a list of plain strings (a nested list, a number): read as pairs, hidden.
        f'["Host", ["h"], "Cookie", "a={SECRET}"]',
        f'["Host", 1, "Cookie", "a={SECRET}"]',
        # A bracket inside a string, found as the list's: what follows it is no list.
        f'["X-A", "[\\", ", "Cookie", "a={SECRET}"]',
        f'["X-A", "v", "[\\\\", "Y\\\\", "Cookie", "a={SECRET}"]',
        # Longer than the window it is counted in.
        '["Accept", "' + "x" * 2000 + f'", "Host", "h", "Cookie", "a={SECRET}"]',
    ],
)
def test_a_list_that_cannot_be_counted_is_read_as_pairs(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize("run", ['"Cookie", ', '\\"Cookie\\",\\n ', "b'X-Api-Key', "])
def test_a_long_list_of_credential_header_names_is_read_in_bounded_work(run: str) -> None:
    """Each item's place is counted in a bounded window: a long list costs a pass per window,
    never one per item over the whole list."""
    assert_bounded_work(lambda: redact_text("[" + run * (100_000 // len(run))))


# -- short names after Go's escaped "&" -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # Go's encoding/json writes "&" as "\\u0026" (an Azure SAS URL's "sig", a form's "pw").
        f'{{"url": "https://acct.blob.core.windows.net/c/b?sv=2022-11-02\\u0026sig={SECRET}"}}',
        f'{{"form": "user=bob\\u0026pw={SECRET}"}}',
        json.dumps({"e": f'{{"form": "user=bob\\u0026pin={SECRET}"}}'}),
    ],
)
def test_a_short_name_after_an_escaped_ampersand_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


def test_a_word_ending_like_a_short_name_after_an_escaped_ampersand_is_shown() -> None:
    text = '{"url": "https://h/x?a=1\\u0026design=blue\\u0026spin=2"}'
    assert redact_text(text) == text


# -- redact_url: a query value holding "=" with nothing to hide ---------------------------------


def test_a_query_value_with_nothing_to_hide_skips_the_free_text_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redact_url ran the whole of redact_text (a dozen passes and the fields' loop) for each
    query value holding "=": a 64 KB query of "q=a=bc&" took 9 times the same query of
    "q=abcd&". A value none of whose rules' names or marks it holds is shown as it is."""
    calls: list[str] = []
    real = _redact.redact_text

    def counting(text: str) -> str:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(_redact, "redact_text", counting)
    shown = redact_url("https://h/x?" + "q=a=bc&" * 1000 + "r=x%3D1%26pw%3DS3CR3T")
    assert calls == ["x=1&pw=S3CR3T"]
    assert shown == "https://h/x?" + "q=a=bc&" * 1000 + "r=x=1&pw=***"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=b=c", "a=b=c"),
        ("redirect=https://cb/?access_token=S3CR3T", "redirect=https://cb/?access_token=***"),
        ("f=PASS=S3CR3T", "f=PASS=***"),
        ("x=1\\u0026sig=S3CR3T", "x=1\\u0026sig=***"),
        ("{'PASSWORD': 'S3CR3T'}", "{'PASSWORD': '***'}"),
        ("https://bob:S3CR3T@h/", "https://***@h/"),
    ],
)
def test_a_query_value_holding_a_secret_is_still_scrubbed(value: str, expected: str) -> None:
    shown = redact_url(URL("https://h/x").with_query({"q": value}))
    assert shown == f"https://h/x?q={expected}"


def test_a_query_value_with_a_control_character_stays_percent_encoded() -> None:
    shown = redact_url(URL("https://h/x").with_query({"q": "a=b\r\nX-Injected: 1"}))
    assert shown == "https://h/x?q=a=b%0D%0AX-Injected: 1"


# -- XML and HTML: a value attribute named by its element or its name attribute ----------------


@pytest.mark.parametrize(
    "text",
    [
        f'<header name="Authorization" value="Token {SECRET}"/>',
        f'<header value="Token {SECRET}" name="Authorization"/>',
        f'<password value="{SECRET}"/>',
        f'<ns:Cookie value="a={SECRET}"/>',
        f'<input type="hidden" name="password" value="{SECRET}">',
        json.dumps({"e": f'<header name="X-Api-Key" value="{SECRET}"/>'}),
    ],
)
def test_a_value_attribute_named_like_a_secret_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        '<h name="Host" value="h"/><h value="x" name="Accept"/>',
        '<option value="3">three</option>',
        '<param name="x" value="y"/> password',
    ],
)
def test_a_value_attribute_named_otherwise_is_shown(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize("run", ['<a value="', '<a b="c" value="x"', "< value="])
def test_many_value_attributes_are_read_in_bounded_work(run: str) -> None:
    assert_bounded_work(lambda: redact_text(run * (100_000 // len(run))))


@pytest.mark.parametrize(
    "text",
    [
        # A JSON string's \u escape of a line break or tab before the scheme or the name: its
        # last hex digit ("a") touched the word, which read as no word boundary.
        '{"m": "line\\u000aBearer abcdefghijklmnop"}',
        '{"m": "line\\u000ABearer abcdefghijklmnop"}',
        "headers:\\u000d\\u000aAuthorization: Basic dXNlcjpwYXNzd29yZA==",
        "dump\\x0abearer abcdefghijklmnop",
        '{"form": "user=bob\\u0009password=abcdefghijklmnop"}',
    ],
)
def test_a_credential_after_a_unicode_escaped_line_break_is_hidden(text: str) -> None:
    out = redact_text(text)
    assert "abcdefghijklmnop" not in out
    assert "dXNlcjpwYXNzd29yZA" not in out
    assert "***" in out
