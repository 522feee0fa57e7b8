"""Redaction of the library's own messages: a provider's subject (``consumer_jwt[123]:``)
before a colon labels the message, it names no field; the message after it reads whole. A
request's URL (``POST https://h/x/authenticate:``) has its message's first word hidden only
(a credential may stand there), the rest reads. Real credential fields stay hidden.

The credentials are those of ``tests/known_secrets.py``, or passphrases of plain words.
"""

from __future__ import annotations

import pytest

from le_transport._redact import REDACTED, redact_cut, redact_text
from le_transport.providers.auth import AuthProvider
from le_transport.providers.consumer import ConsumerJwt
from le_transport.providers.login import AppLogin, ClientCredentialsLogin, UserLogin
from tests.bounded_work import assert_bounded_work
from tests.known_secrets import BEARER, PASSWORD

PHRASE = "correcthorse batterystaple tromboneglue"

MESSAGES = [
    "client_credentials_login[123]: the token endpoint answered 503; retrying in 5 s",
    "consumer_jwt[123]: the token request failed; retrying in 10 s",
    "consumer_jwt[le12345]: the token request failed",
]

URL_MESSAGES = [
    "POST https://h.example/api/account/123/authenticate: attempt 1 got 503; pausing 5 s",
    "POST https://h.example/sentinel/api/account/123/token: attempt 2 got 502; pausing 10 s",
    "GET https://h.example/api/account/123/secret: attempt 1 got 503; pausing 5 s",
    "GET https://h.example/api/account/123/key: attempt 1 got 503; pausing 5 s",
    "GET https://h.example/a/b/access_token: attempt 3 got 504",
]


@pytest.mark.parametrize("text", MESSAGES)
def test_own_message_reads_whole(text: str) -> None:
    assert redact_text(text) == text
    assert redact_cut(text, 500) == text


@pytest.mark.parametrize("text", URL_MESSAGES)
def test_url_message_hides_its_first_word_only(text: str) -> None:
    shown = text.replace(": attempt ", f": {REDACTED} ")
    assert redact_text(text) == shown
    assert redact_cut(text, 500) == shown


@pytest.mark.parametrize("kind", [ClientCredentialsLogin, ConsumerJwt, UserLogin, AppLogin])
def test_every_provider_subject_labels_its_message(kind: type[AuthProvider]) -> None:
    text = f"{kind._kind}[123]: the token request failed; retrying in 5 s"  # type: ignore[attr-defined]
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A field after the label is read as any field is.
        (f"consumer_jwt[123]: password={PASSWORD}", "consumer_jwt[123]: password="),
        (f"POST https://h/x/token: password: {PHRASE}", "POST https://h/x/token: "),
        (f"client_credentials_login[1]: Authorization: Bearer {BEARER}", "Bearer "),
        # Real fields: indexes, brackets, names alone.
        (f"auth[0]={PASSWORD}", "auth[0]="),
        (f"credentials[password]={PASSWORD}", "credentials[password]="),
        (f"headers[Authorization]: Bearer {BEARER}", "headers[Authorization]: Bearer "),
        (f"password[0]={PASSWORD}", "password[0]="),
        (f"token: {PHRASE}", "token: "),
        (f"token[123]: {PHRASE}", "token[123]: "),
        (f"access_token[0]: {PHRASE}", "access_token[0]: "),
        (f"client_secret[0]: {PHRASE}", "client_secret[0]: "),
        (f"consumer_jwt[123]={PHRASE}", "consumer_jwt[123]="),
        (f'consumer_jwt[123]: "{PASSWORD}"', "consumer_jwt[123]: "),
        # A URL's colon with no blank after it, a quoted value, a credential header's name,
        # a short secret name, a query or a userinfo in the URL: read as a field's.
        (f"GET https://h/x/token:{PASSWORD}", "GET https://h/x/token:"),
        (f'GET https://h/x/token: "{PASSWORD}"', 'GET https://h/x/token: "'),
        (f"GET https://h/x/authorization: {PHRASE}", "GET https://h/x/authorization: "),
        (f"GET https://h/x/cookie: {PHRASE}", "GET https://h/x/cookie: "),
        (f"PUT https://h/users/1/password: {PHRASE}", "PUT https://h/users/1/password: "),
        (f"PUT https://h/users/1/new_passwd: {PHRASE}", "PUT https://h/users/1/new_passwd: "),
        (f"GET https://h/x/x-api-key: {PHRASE}", "GET https://h/x/x-api-key: "),
        (f"GET https://h/x/X-Auth-Token: {PHRASE}", "GET https://h/x/X-Auth-Token: "),
        (f"GET https://h/x/value: {PHRASE}, name: X-Api-Key", "GET https://h/x/value: "),
        (f"GET https://h/x?a=/token: {PHRASE}", "GET https://h/x?a=/token: "),
        (f"see a/token: {PHRASE}", "see a/token: "),
    ],
)
def test_credential_fields_stay_hidden(text: str, kept: str) -> None:
    shown = redact_text(text)
    assert kept in shown
    assert REDACTED in shown
    for secret in (PASSWORD, BEARER, *PHRASE.split()):
        assert secret not in shown
    assert redact_cut(text, 500) == shown


@pytest.mark.parametrize(
    "text",
    [
        "GET https://h/" + "a/" * 400 + "token: x " * 20_000,
        ("b" * 3000 + "/token: x ") * 40,
        "GET https://" + "h/token: x " * 20_000,
        "consumer_jwt[" + "1" * 100_000 + "]: x",
        ("consumer_jwt[1]: " + "token: x ") * 10_000,
    ],
)
def test_labels_are_read_in_one_pass(text: str) -> None:
    assert_bounded_work(lambda: redact_text(text))
