"""A corpus of the forms a secret takes in a log line or a body, each with secrets of the shapes
they have in practice ("=" inside or as padding, "_", "-", backslashes), through redact_text and
body_excerpt, plain and inside a JSON string: none may survive.
"""

from __future__ import annotations

import json

import pytest

from le_transport._redact import body_excerpt, redact_text

PROBE = "S3CR3Tprobe\\back\\slash"

#: Credentials of the shapes a secret has in practice: "=" inside or as padding, "_", "-",
#: backslashes (a Windows path, a password).
CORPUS_SECRETS = [
    "S3CR3Tplain0123456789",
    "S3CR3T_under_score",
    "S3CR3T=eq=inside",
    "S3CR3Tpadded==",
    "S3CR3T-dash-y",
    "S3CR3T\\back\\slash",
]

#: Every form: ``{s}`` is where the secret goes.
CORPUS = [
    # Request headers, as a log or an echo writes them.
    "Authorization: Bearer {s}",
    "authorization: bearer {s}",
    "Proxy-Authorization: Basic {s}",
    "Authorization: Token {s}",
    "Authorization: LivePerson {s}",
    "Authorization: {s}",
    'Authorization: Bearer Token="{s}"',
    "X-Api-Key: {s}",
    "X-Auth-Token: {s}",
    "X-CSRF-Token: {s}",
    # A scheme's credential in free text.
    "request failed: Bearer {s}",
    'header value "Bearer {s}" rejected',
    "refused 'Bearer {s}'",
    'request failed: Bearer Token="{s}"',
    'jwt Token="{s}"',
    "jwt {s}",
    "Basic {s}",
    "Bearer abc={s}",
    "Bearer a_b={s}",
    "Bearer {s}=abc",
    "Bearer {s} =",
    'Bearer {s}, realm="r"',
    # Query strings and fragments.
    "GET /x?access_token={s}&a=1",
    "https://h/cb#access_token={s}&token_type=bearer",
    "GET /oauth?refresh_token={s}",
    "redirect_uri=https://cb/?access_token={s}",
    "X-Amz-Signature={s}",
    # Forms.
    "username=bob&password={s}&grant_type=password",
    "password={s}",
    "pw={s}",
    "sig={s}",
    "client_secret={s}",
    "session_id={s}",
    "api_key={s};password=x",
    'password="{s}"',
    "password: {s}",
    # JSON, HAR, header lists.
    '{{"password": "{s}"}}',
    '{{"access_token":"{s}","expires_in":3600}}',
    '{{"Authorization": "Bearer {s}"}}',
    '{{"headers": {{"Cookie": "LPSESSION={s}"}}}}',
    '{{"name": "Authorization", "value": "Bearer {s}"}}',
    '{{"value": "Token {s}", "name": "Authorization"}}',
    '[("Accept", "*/*"), ("Authorization", "Token {s}")]',
    '["Cookie", "LPSESSION={s}"]',
    '( "Authorization", "Bearer {s}")',
    '[ "Cookie", "a={s}"]',
    '["Accept", "*/*", "Authorization", "Token {s}"]',
    '{{"Set-Cookie":["theme=dark; Path=/","LPSESSION={s}; HttpOnly"]}}',
    # OAuth 1.0a.
    'Authorization: OAuth oauth_consumer_key="k", oauth_token="{s}", oauth_signature="{s}"',
    'signed with OAuth oauth_nonce="n", oauth_signature="{s}"',
    # Cookies.
    "Cookie: theme=dark; LPSESSION={s}",
    "Set-Cookie: LPSESSION={s}; Path=/; HttpOnly",
    "Set-Cookie: theme=dark; Path=/, LPSESSION={s}; HttpOnly",
    "cookie=LPSESSION={s}",
    # A URL's userinfo, the UMS socket's path.
    "https://bob:{s}@example.com/x",
    "amqp://user:{s}@mq.local/vhost",
    "wss://h/ws_api/account/123/messaging/brand/{s}?v=3",
    # Digest, AWS Signature 4.
    'Authorization: Digest username="bob", realm="r", nonce="n", uri="/x", response="{s}"',
    "Authorization: AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature={s}",
    # XML.
    "<password>{s}</password>",
    '<Authorization type="x">Token {s}</Authorization>',
    "<password><![CDATA[{s}]]></password>",
    # Backslashes in plain text.
    "password=C:\\new\\{s}",
    "token=ab\\n{s}",
    "Cookie: a=x\\n{s}",
    "Authorization: Token abc\\n{s}",
]


def _escaped(secret: str) -> str:
    """The secret as a JSON string writes it (its backslashes doubled)."""
    return json.dumps(secret)[1:-1]


def _fragments(secret: str) -> list[str]:
    """What of a secret must not be shown: itself, as a JSON string writes it, and (a secret
    with a backslash or an "=" in it) its tail after the last of them: a value cut at its
    backslash or its "=" shows that tail."""
    found = [secret, _escaped(secret)]
    for sep in ("\\", "="):
        tail = secret.rstrip("=").rpartition(sep)[2]
        if sep in secret.rstrip("=") and len(tail) >= 4:
            found.append(tail)
    return found


@pytest.mark.parametrize("secret", CORPUS_SECRETS)
@pytest.mark.parametrize("form", CORPUS)
def test_a_secret_in_any_known_form_never_survives(form: str, secret: str) -> None:
    text = form.format(s=secret)
    for shown in (
        redact_text(text),
        body_excerpt(text.encode()),
        # As a JSON body carries it: in a string, escaped.
        body_excerpt(json.dumps({"error": text}).encode()),
        redact_text(json.dumps({"error": text})),
        # A line of a header block in a JSON string (its line breaks escaped), and JSON held
        # in a JSON string.
        redact_text(json.dumps({"request": f"GET / HTTP/1.1\r\n{text}\r\nHost: h"})),
        redact_text(json.dumps(json.dumps({"error": text}))),
    ):
        for fragment in _fragments(secret):
            assert fragment not in shown, shown


@pytest.mark.parametrize(
    "form",
    [
        "invalid token {jwt}: expired",
        "Authorization: Bearer {jwt}",
        '{{"id_token": "{jwt}"}}',
        "GET /x?jwt={jwt}",
        "consumer jwt={jwt}&x=1",
        '{{"error": "jwt {jwt} refused"}}',
        '{{"error": "{{\\"id_token\\": \\"{jwt}\\"}}"}}',
    ],
)
def test_a_jwt_in_any_known_form_never_survives(form: str) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNlY3JldA"
    text = form.format(jwt=jwt)
    for shown in (redact_text(text), body_excerpt(text.encode())):
        assert "c2lnbmF0dXJlLXNlY3JldA" not in shown, shown
        assert "eyJzdWIiOiJhZ2VudCJ9" not in shown, shown


# -- a backslash is a credential's own after a scheme, in OAuth 1 and in a cookie ----------------


@pytest.mark.parametrize(
    "form",
    [
        "request failed: Bearer {s}",
        "jwt {s}",
        "Basic {s}",
        'header value "Bearer {s}" rejected',
        "Bearer {s}=abc",
        'Bearer {s}, realm="r"',
        "Bearer abc={s}",
        'request failed: Bearer Token="{s}"',
        'signed with OAuth oauth_nonce="n", oauth_signature="{s}"',
        "cookie=LPSESSION={s}",
    ],
)
def test_a_backslash_in_a_credential_does_not_end_it(form: str) -> None:
    """As in any value outside a JSON string's escapes, a backslash after "Bearer", in an
    OAuth 1 parameter or in a cookie given as a name's value is the credential's own text: it
    showed what followed it ('Bearer ***\\back\\slash')."""
    for text in (form.format(s=PROBE), json.dumps({"error": form.format(s=PROBE)})):
        shown = redact_text(text)
        assert "slash" not in shown, shown
        assert "S3CR3T" not in shown, shown


def test_a_credential_s_escaped_end_stays_the_text_s() -> None:
    """In a JSON string the escapes of a quote and of a line break before a header line still
    end a credential after its scheme, so that the text around it stays whole."""
    text = json.dumps({"e": 'refused "Bearer abc\\def" for\r\nHost: h'})
    assert redact_text(text) == '{"e": "refused \\"Bearer ***\\" for\\r\\nHost: h"}'
    text = json.dumps(json.dumps({"e": 'OAuth oauth_token="a\\b", x=1'}))
    shown = redact_text(text)
    assert shown == json.dumps(json.dumps({"e": 'OAuth oauth_token="***", x=1'})), shown


@pytest.mark.parametrize("prefix", ["password=", "Cookie: a", "Authorization: Token a", "pw="])
def test_a_long_run_of_escaped_line_breaks_is_read_once(prefix: str) -> None:
    """Whether an escaped line break ends a value (a header line follows it) was looked for
    again at each of a run of them: quadratic, 16 KB of them took seconds, this one would
    outlast the suite's timeout. A run is now looked past once."""
    text = prefix + "\\r" * 300_000
    shown = redact_text(text)
    assert "\\r" not in shown, shown[:80]


# -- HAR with the value before its name; XML with attributes or CDATA ----------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"value": "Token {PROBE}", "name": "Authorization"}}',
        f'{{"value": "LPSESSION={PROBE}", "name": "Cookie"}}',
        f'[{{"value":"Bearer {PROBE}","name":"authorization"}}]',
        json.dumps(json.dumps({"value": f"Token {PROBE}", "name": "Authorization"})),
    ],
)
def test_a_har_value_named_after_it_is_hidden(text: str) -> None:
    """HAR's writers may put "value" before "name": the value was read as a plain one."""
    shown = redact_text(text)
    assert "S3CR3T" not in shown, shown
    assert "Authorization" in shown or "Cookie" in shown or "authorization" in shown


def test_a_har_value_named_after_it_by_a_plain_header_is_shown() -> None:
    text = '[{"value": "gzip", "name": "Accept-Encoding"}, {"value": "h", "name": "Host"}]'
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f'<Authorization type="x">Token {PROBE}</Authorization><Host a="b">h</Host>',
            '<Authorization type="x">***</Authorization><Host a="b">h</Host>',
        ),
        (
            f"<password><![CDATA[{PROBE}]]></password><user>bob</user>",
            "<password>***</password><user>bob</user>",
        ),
        (
            f"<password><![CDATA[a<b>{PROBE}]]></password>",
            "<password>***</password>",
        ),
        (f"<ns:Password\txml:lang='en'><![CDATA[{PROBE}", "<ns:Password\txml:lang='en'>***"),
    ],
)
def test_an_xml_element_with_attributes_or_cdata_has_its_text_hidden(
    text: str, expected: str
) -> None:
    """An element named like a credential was read only bare: with an attribute, or with its
    text in a CDATA section (which starts with "<"), the secret was shown."""
    assert redact_text(text) == expected


# -- a (name, value) pair with a blank after its bracket -----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'( "Authorization", "Token {PROBE}")',
        f'( "Authorization", "Bearer {PROBE}")',
        f'[ "Cookie", "a={PROBE}"]',
        f"[\n  'Cookie',\n  'LPSESSION={PROBE}'\n]",
        json.dumps(f'[ "Cookie", "LPSESSION={PROBE}"]'),
    ],
)
def test_a_pair_with_a_blank_after_its_bracket_has_its_value_hidden(text: str) -> None:
    """A pair was read only with its first quote right after the bracket: a blank (a
    pretty-printed list, a tuple written by hand) showed the credential."""
    shown = redact_text(text)
    assert "S3CR3T" not in shown, shown
    assert "Authorization" in shown or "Cookie" in shown, shown


# -- a list of header names is no (name, value) pair ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"missing": ["Authorization", "X-Request-Id"], "status": 401}',
        'Vary: ["Cookie", "Accept-Encoding"]',
        '["Authorization", "Content-Type", "Host"]',
        "('proxy-authorization', 'user-agent')",
        json.dumps({"error": 'Vary: ["Cookie", "Accept-Encoding"]'}),
    ],
)
def test_a_list_of_header_names_keeps_every_name(text: str) -> None:
    """The name after a credential header's was hidden as its value."""
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        '("Authorization", "Secretword")',
        '["Authorization", "Correct-Horse-Battery"]',
        '["Cookie", "Accept-Encodings"]',
        '["Authorization", "Secretword", "Host", "h"]',  # Node's rawHeaders
        '["Authorization", "Secretword"',  # cut before its close
    ],
)
def test_a_value_shaped_like_a_header_name_stays_hidden(text: str) -> None:
    """Only a known header's name is read as a name where a pair's value may be: a value
    merely shaped like one, or a flat list of names and values, is hidden."""
    shown = redact_text(text)
    for word in ("Secretword", "Correct-Horse-Battery", "Accept-Encodings"):
        assert word not in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        f'["Accept", "*/*", "Authorization", "Token {PROBE}"]',
        f'["Host", "h",\n "Cookie", "a={PROBE}"]',
        json.dumps({"rawHeaders": ["Host", "h", "Proxy-Authorization", f"Basic {PROBE}"]}),
    ],
)
def test_a_flat_list_of_names_and_values_has_the_credential_hidden(text: str) -> None:
    """Node's rawHeaders (names and values in one list): a credential header's name after a
    comma was not read as a pair's, and its value was shown."""
    shown = redact_text(text)
    assert "S3CR3T" not in shown, shown
    assert "h" in shown


# -- a short secret name after an escaped line break ---------------------------------------------


@pytest.mark.parametrize("name", ["pw", "pass", "sig", "otp", "pin", "sid", "ticket"])
def test_a_short_name_after_an_escaped_line_break_has_its_value_hidden(name: str) -> None:
    """In a JSON string a form or a header block writes its line breaks "\\r\\n": the short
    names ("pw", "sig") were read only after a character that is no name's, and the "n" of
    "\\n" is one, so their values were shown."""
    text = json.dumps(
        {"request": f"POST /x\r\n{name}={PROBE}\r\nX: y", "tab": f"a=1\t{name}=x1y2z3"}
    )
    shown = redact_text(text)
    assert "S3CR3T" not in shown, shown
    assert "x1y2z3" not in shown, shown
    assert "\\r\\nX: y" in shown, shown


# -- a scheme or a JWT at the start of an escaped line --------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"Bearer {PROBE}",
        f"jwt {PROBE}",
        f"Basic {PROBE}",
        f"Bearer abc={PROBE}",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.S3CR3Tc2lnbmF0dXJl",
    ],
)
def test_a_credential_at_the_start_of_an_escaped_line_is_hidden(line: str) -> None:
    """A scheme's name and a JWT were looked for at a word's start only, and in a JSON string
    the "n" of an escaped line break ("\\r\\nBearer x") is a word's: the credential showed."""
    for sep in ("\r\n", "\t"):
        shown = redact_text(json.dumps({"request": f"refused:{sep}{line}\r\nHost: h"}))
        assert "S3CR3T" not in shown, shown
        assert "\\r\\nHost: h" in shown, shown
