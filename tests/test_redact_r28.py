"""Redaction: an unquoted secret value with blanks in it (a passphrase), an authorization's
first word that is no known scheme, a form's quoted bracket keys, double-encoded brackets,
and dotted form names.

The credentials are those of ``tests/known_secrets.py``, or passphrases of plain words.
"""

from __future__ import annotations

import pytest

from le_transport._redact import REDACTED, redact_cut, redact_text, redact_url
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, PASSWORD

# -- an unquoted value with blanks in it ------------------------------------------------------

PHRASE = "correcthorse batterystaple tromboneglue"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"password: {PHRASE}", "password: "),
        (f"password={PHRASE}", "password="),
        (f"login failed: password={PHRASE}", "login failed: password="),
        (f"config\npassphrase: {PHRASE}\nuser: bob", "user: bob"),
        (f"password: {PHRASE}, code=401", ", code=401"),
        (f"password={PHRASE} user=bob", " user=bob"),
        (f"password: {PHRASE}\tstatus: 401", "status: 401"),
        (f"api_key: {PHRASE}; retry=2", "retry=2"),
        (f"X-Api-Key: {PHRASE}\r\nHost: h", "\r\nHost: h"),
        (f"Authorization: Bearer {PHRASE}\r\nHost: h", "Authorization: Bearer "),
    ],
)
def test_an_unquoted_secret_value_runs_past_its_blanks(text: str, kept: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        for word in PHRASE.split():
            assert word not in shown, shown
        assert kept in shown, shown
        assert REDACTED in shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A query's value ends at its blank: what follows is the log line's.
        (
            f"GET https://h/x?page=2&password={PASSWORD} returned 401",
            f"GET https://h/x?page=2&password={REDACTED} returned 401",
        ),
        (f"/x?password={PASSWORD} took 3 ms", f"/x?password={REDACTED} took 3 ms"),
        ("password=x&user=bob", f"password={REDACTED}&user=bob"),
        ("Authorization: Token abc123, status=401", f"Authorization: Token {REDACTED}, status=401"),
        ("password: abc user: bob", f"password: {REDACTED} user: bob"),
    ],
)
def test_a_value_s_blanks_end_it_where_the_text_says_so(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_long_run_of_blank_separated_words_is_read_once() -> None:
    text = "password: " + "ab " * 40_000
    assert_bounded_work(lambda: redact_text(text))
    assert redact_text(text) == f"password: {REDACTED} "


@pytest.mark.parametrize(
    "text",
    [
        "password=a " * 10_000,
        "password: a b: " * 7_000,
        "password=a " + "b\t" * 30_000 + "c=",
        "Authorization: Opensesame " + "x " * 40_000,
        "password: a" + " " * 100_000 + "b",
        "pw=a, " * 15_000,
    ],
)
def test_hostile_blank_separated_values_are_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- an authorization's first word -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Opensesame status=401",
        "Authorization: Opensesame x",
        "Authorization: correcthorse batterystaple\r\nHost: h",
        "authorization=Opensesame status=401",
        "Proxy-Authorization: Opensesame realm=x",
        '{"name": "Authorization", "value": Opensesame status=401}',
    ],
)
def test_an_unknown_first_word_of_an_authorization_is_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        for word in ("Opensesame", "correcthorse", "batterystaple"):
            assert word not in shown, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {BEARER}", f"Authorization: Bearer {REDACTED}"),
        ('Authorization: Digest username="bob", response="x"', f"Authorization: Digest {REDACTED}"),
        ("Authorization: LivePerson appKey=x", f"Authorization: LivePerson {REDACTED}"),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=x",
            f"Authorization: AWS4-HMAC-SHA256 {REDACTED}",
        ),
        ("Authorization: OAuth oauth_token=x", f"Authorization: OAuth {REDACTED}"),
    ],
)
def test_a_known_scheme_is_still_shown(text: str, expected: str) -> None:
    assert redact_text(text) == expected


# -- a bracketed name in quotes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'headers["Authorization"]=Bearer {BEARER}',
        f'headers["Authorization"] = "Token {BEARER}"',
        f"headers['X-Api-Key']: {PASSWORD}",
        f"request.headers['Authorization'] = 'Token {BEARER}'",
        f'opts[\\"headers\\"][\\"X-Api-Key\\"]={PASSWORD}',
        f"os.environ['API_KEY']={PASSWORD}",
        f"config['password']: {PASSWORD}",
    ],
)
def test_a_bracketed_name_in_quotes_has_its_value_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert BEARER not in shown, shown
        assert PASSWORD not in shown, shown


def test_a_plain_bracketed_name_in_quotes_keeps_its_value() -> None:
    text = "headers['Accept']=application/json page['size']: 20"
    assert redact_text(text) == text


def test_a_long_run_of_quoted_brackets_is_read_once() -> None:
    text = "a" + "['x']" * 20_000 + "=b"
    assert_bounded_work(lambda: redact_text(text))
    text = "password" + "[\"'" * 30_000
    assert_bounded_work(lambda: redact_text(text))


# -- brackets percent-encoded twice -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"headers%255BAuthorization%255D=Bearer%2520{BEARER}&page=2",
        f"headers%255bX-Api-Key%255d={PASSWORD}&page=2",
        f"user%255Bpw%255D={PASSWORD}&page=2",
        f"h%255B0%255D%255Bname%255D=Authorization&h%255B0%255D%255Bvalue%255D=Token%2520{BEARER}",
        f"h%255B0%255D%255Bvalue%255D={PASSWORD}&h%255B0%255D%255Bname%255D=X-Api-Key",
    ],
)
def test_brackets_encoded_twice_are_read_as_brackets(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000), redact_url(f"https://h/p?{text}")):
        assert BEARER not in shown, shown
        assert PASSWORD not in shown, shown


def test_a_plain_header_object_encoded_twice_keeps_its_value() -> None:
    text = "h%255B0%255D%255Bname%255D=Accept&h%255B0%255D%255Bvalue%255D=json&page=2"
    assert redact_text(text) == text
    assert "value%5D=json" in redact_url(f"https://h/p?{text}")


def test_a_long_run_of_brackets_encoded_twice_is_read_once() -> None:
    text = "a" + "%255Bx%255D" * 10_000 + "=b"
    assert_bounded_work(lambda: redact_text(text))
    text = "%255Bname%255D=Authorization&" * 4_000 + "%255Bvalue%255D=x&" * 4_000
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_url(f"https://h/p?{text}"))


@pytest.mark.parametrize(
    "query",
    [
        f"user[pw]={PASSWORD}&page=2",
        f"user%5Bpw%5D={PASSWORD}&page=2",
        f"h%5B0%5D%5Bvalue%5D={PASSWORD}&h%5B0%5D%5Bname%5D=X-Api-Key",
    ],
)
def test_a_bracketed_short_name_or_an_object_after_its_value_is_hidden(query: str) -> None:
    for shown in (redact_text(query), redact_url(f"https://h/p?{query}")):
        assert PASSWORD not in shown, shown


# -- dotted form names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"h.0.name=Authorization&h.0.value=Token%20{BEARER}&page=2",
        f"h.0.value={PASSWORD}&h.0.name=X-Api-Key&page=2",
        f"headers.0.key=Cookie&headers.0.value=sess%3D{PASSWORD}",
        f"h.0.name=Accept&h.0.value=json&h.1.name=X-Api-Key&h.1.value={PASSWORD}",
        f"headers.Authorization=Token%20{BEARER}&page=2",
        f"headers.X-Api-Key={PASSWORD}",
        f"user.pw={PASSWORD}&page=2",
    ],
)
def test_a_dotted_form_name_is_read_as_a_bracketed_one(query: str) -> None:
    for shown in (redact_text(query), redact_cut(query, 1000), redact_url(f"https://h/p?{query}")):
        assert BEARER not in shown, shown
        assert PASSWORD not in shown, shown


def test_a_plain_dotted_header_object_keeps_its_value() -> None:
    # (In text, a neighbour's value may be hidden too, as a bracketed form's is: no brace
    # bounds the objects. The URL's items are read by their prefixes.)
    query = "h.0.name=Accept&h.0.value=json&h.1.name=X-Api-Key&h.1.value=x&user.name=bob"
    assert "h.0.value=json" in redact_text("h.0.name=Accept&h.0.value=json&page=2")
    assert "h.0.value=json" in redact_url(f"https://h/p?{query}")
    assert "user.name=bob" in redact_url(f"https://h/p?{query}")


def test_a_long_run_of_dotted_value_names_is_read_once() -> None:
    text = "h.0.name=Authorization&" + "a.value=x&" * 10_000 + "b.name=Cookie&" * 5_000
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_url(f"https://h/p?{text}"))
    text = "a." * 50_000 + "value=x"
    assert_bounded_work(lambda: redact_text(text))


# -- a credential header's name as a form's last name, in a URL -------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"headers[Cookie]=sess%3D{PASSWORD}&page=2",
        f"headers.Cookie=sess%3D{PASSWORD}&page=2",
        f"headers%255BSet-Cookie%255D=sess%253D{PASSWORD}&page=2",
        f"h.0.Cookie=sess%3D{PASSWORD}",
    ],
)
def test_a_cookie_header_as_a_form_s_last_name_is_hidden_in_a_url(query: str) -> None:
    shown = redact_url(f"https://h/p?{query}")
    assert PASSWORD not in shown, shown
    assert "page=2" in shown or "page" not in query


# -- a short name's or a cookie's value with blanks in it -------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"pw={PHRASE}", "pw="),
        (f"login failed: sig={PHRASE} retry=2", " retry=2"),
        (f'pw="{PHRASE}" user=bob', " user=bob"),
        (f"pin={PHRASE}, code=401", ", code=401"),
        (f'headers["Cookie"]=LivePerson {PHRASE}', 'headers["Cookie"]='),
        (f"cookie=sess {PHRASE} theme=dark", " theme=dark"),
    ],
)
def test_a_short_name_s_or_a_cookie_s_value_runs_past_its_blanks(text: str, kept: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        for word in PHRASE.split():
            assert word not in shown, shown
        assert kept in shown, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /x?page=2&sig=abc took 3 ms", f"GET /x?page=2&sig={REDACTED} took 3 ms"),
        ("/x?pw=abc returned 401", f"/x?pw={REDACTED} returned 401"),
        ("pw=abc&user=bob", f"pw={REDACTED}&user=bob"),
    ],
)
def test_a_short_name_s_query_value_ends_at_its_blank(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "pw=a " * 20_000,
        "sig=a " + "b " * 40_000,
        "cookie=a " + "b=c " * 20_000,
        "?pw=a b " * 10_000,
    ],
)
def test_hostile_short_name_values_are_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))


# -- a short name as a quoted key ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'{{"pw": "{PASSWORD}", "user": "bob"}}',
        f'{{\\"sig\\": \\"{PASSWORD}\\", \\"user\\": \\"bob\\"}}',
        f"{{'pin': '{PASSWORD}', 'user': 'bob'}}",
        f'{{"otp":"{PASSWORD}","user":"bob"}}',
        f'{{"user": "bob", "sid": "{PASSWORD}"',
    ],
)
def test_a_short_name_as_a_quoted_key_has_its_quoted_value_hidden(text: str) -> None:
    for shown in (redact_text(text), redact_cut(text, 1000)):
        assert PASSWORD not in shown, shown
        assert "bob" in shown, shown


@pytest.mark.parametrize(
    "text",
    ['{"pass": true, "code": 200}', "pw: see the vault", '"pw" is a label'],
)
def test_a_short_name_s_bare_value_or_label_is_shown(text: str) -> None:
    assert redact_text(text) == text


def test_many_quoted_short_keys_are_read_once() -> None:
    text = '"pw": "' * 30_000
    assert_bounded_work(lambda: redact_text(text))


# -- a long run of encoded brackets with no field after it ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" + "%5Bx%5D" * 15_000,
        "a" + "%255Bx%255D" * 10_000,
        "a" + "%5B'x'%5D" * 10_000,
        "a" + "%5Dx[x]" * 15_000,
        "a" + "%255D%5Bx" * 10_000,
    ],
)
def test_a_long_run_of_encoded_brackets_is_read_once(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
    assert_bounded_work(lambda: redact_cut(text, 300))


def test_a_name_after_an_encoded_bracket_s_close_is_still_read() -> None:
    text = f"x%5Dpassword={PASSWORD}&h%5B0%5D%5Bpassword%5D={PASSWORD}"
    assert PASSWORD not in redact_text(text)
