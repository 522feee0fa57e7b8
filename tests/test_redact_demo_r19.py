"""Redaction of authorizations under any scheme and of cookies, however a log or a body writes
them (quoted, JSON arrays, HAR, JSON inside a JSON string, escaped CRLFs, folded cookies); the
demo's retry-schedule verdict; a malformed ``--csds-host`` as a usage error.

The demo runs here on the real clock at a small scale (as ``le-transport demo`` does); nothing
asserts on how fast anything went.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from fuzz import all_targets, hypothesis_runner
from le_transport import demo
from le_transport._redact import body_excerpt, redact_json, redact_text
from le_transport.cli import main
from le_transport.demo import AccountOptionsError, account_from
from le_transport.events import RetryEvent
from le_transport.policies.classify import Outcome, OutcomeKind
from le_transport.policies.retry import RetryPolicy

CRED = "S3CR3Tcredential0123456789"

# -- Authorization under any scheme ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme",
    ["Token", "LivePerson", "Negotiate", "NTLM", "Bearer-Token", "MAC", "Key", "AWS4-HMAC-SHA256"],
)
@pytest.mark.parametrize("header", ["Authorization", "Proxy-Authorization", "authorization"])
def test_an_authorization_under_any_scheme_shows_the_scheme_and_hides_the_credential(
    scheme: str, header: str
) -> None:
    shown = redact_text(f"echo of the request: {header}: {scheme} {CRED}\nAccept: */*")
    assert CRED not in shown, shown
    assert f"{header}: {scheme} ***" in shown, shown
    assert shown.endswith("\nAccept: */*"), "the next header is not part of the credential"


def test_bearer_and_basic_authorizations_are_redacted_as_before() -> None:
    assert redact_text(f"Authorization: Bearer {CRED}") == "Authorization: Bearer ***"
    assert redact_text(f"Authorization: Basic {CRED}==") == "Authorization: Basic ***"
    assert redact_text(f"sent Bearer {CRED}") == "sent Bearer ***"


@pytest.mark.parametrize(
    "credential",
    [
        f'username="bob", realm="r", nonce="n", uri="/a b", response="{CRED}", qop=auth, nc=01',
        f'id="h480", ts="1336363200", nonce="dj83hs9s", mac="{CRED}"',
        f"Credential=AKIA/20260101/us-east-1/s3/aws4_request, Signature={CRED}",
        f'"{CRED} with a space"',
    ],
)
def test_an_authorization_s_parameters_are_hidden_whole(credential: str) -> None:
    """Digest, MAC, AWS and a quoted credential: every parameter up to the value's end."""
    shown = redact_text(f"Authorization: Digest {credential}\nHost: h")
    assert CRED not in shown, shown
    assert shown == "Authorization: Digest ***\nHost: h"


def test_an_authorization_without_a_scheme_is_hidden_whole() -> None:
    assert redact_text(f"Authorization: {CRED}") == "Authorization: ***"
    assert redact_text(f"authorization={CRED}&page=2") == "authorization=***&page=2"


def test_a_5xx_body_echoing_an_authorization_keeps_the_credential_out_of_its_excerpt() -> None:
    """body_excerpt is what ServerStatusError / ClientStatusError messages and logs carry."""
    path = "/api/account/1/configuration/le-users/users"
    text = f"upstream error; request headers: Authorization: Token {CRED}\n".encode()
    assert CRED not in body_excerpt(text, path=path)
    as_json = f'{{"error":"bad gateway","request":"Authorization: Token {CRED}","code":502}}'
    shown = body_excerpt(as_json.encode(), path=path)
    assert shown == '{"error":"bad gateway","request":"Authorization: Token ***","code":502}'


# -- cookies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"Cookie: LE_SESSION={CRED}",
        f"Cookie: theme=dark; LE_SESSION={CRED}",
        f'Cookie: sess="{CRED}"',
        f"Set-Cookie: LPSID={CRED}; Path=/; HttpOnly",
        f"set-cookie: JSESSIONID={CRED}",
        f"cookie={CRED}",
    ],
)
def test_a_cookie_header_in_text_has_its_value_hidden(line: str) -> None:
    shown = redact_text(f"request headers:\n{line}\nHost: h")
    assert CRED not in shown, shown
    assert shown.endswith("\nHost: h"), shown


def test_cookie_headers_in_a_json_body_are_hidden() -> None:
    """A JSON error body echoing the request's headers: a cookie as the authorization."""
    shown = redact_json(
        {
            "headers": {
                "Cookie": f"sess={CRED}",
                "Set-Cookie": f"LPSID={CRED}; Path=/",
                "Authorization": f"Bearer {CRED}",
                "Accept": "*/*",
            },
            "cookieConsent": True,
        }
    )
    assert CRED not in repr(shown), shown
    assert shown["headers"]["Accept"] == "*/*"
    assert shown["cookieConsent"] is True, "a key merely mentioning cookies is no credential"


# -- however the header is written ------------------------------------------------------------

SECRET = "S3CR3T0123456789abcdef"


def _cut_json_body(obj: dict[str, object]) -> bytes:
    """A JSON body longer than body_excerpt's window (limit * 4 bytes), so that it is scrubbed
    as text rather than parsed: the credential first, padding after it."""
    body = json.dumps({**obj, "padding": "x" * 2000}).encode()
    assert len(body) > 1200
    return body


@pytest.mark.parametrize(
    "text",
    [
        f'["Authorization", "Bearer {SECRET}"]',  # a header pair as JSON, a tuple's repr
        f'{{"name":"Authorization","value":"Bearer {SECRET}"}}',  # HAR
        f'header value "Bearer {SECRET}" rejected',
        f'"Authorization":["Bearer {SECRET}"]',  # Go's http.Header
        f'{{"name":"Authorization","value":"Basic {SECRET}Q="}}',  # padding, then a quote
    ],
)
def test_a_quoted_bearer_or_basic_credential_is_hidden(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown


def test_a_quoted_bearer_in_a_cut_body_excerpt_is_hidden() -> None:
    body = _cut_json_body({"headers": [{"name": "Authorization", "value": f"Bearer {SECRET}"}]})
    shown = body_excerpt(body)
    assert SECRET not in shown, shown


def test_name_value_pairs_after_a_scheme_are_hidden_whole() -> None:
    """What follows 'Bearer' as "name=value" pairs is hidden whole, quoted or not: a credential
    may have that shape ('Bearer Token="x"', 'Bearer x=y'), so a challenge's parameters are
    hidden too (a hidden realm costs less than a leak), and an authorization's with the rest of
    its value; what follows the pairs stays readable."""
    assert redact_text('WWW-Authenticate: Bearer realm="api", error="invalid_token"') == (
        "WWW-Authenticate: Bearer ***"
    )
    for shape in (f'Token="{SECRET}"', f"abc={SECRET}", f"{SECRET}=abc", f"{SECRET} = x"):
        assert redact_text(f"failed: Bearer {shape}; retrying") == "failed: Bearer ***; retrying"
    shown = redact_text(f'Authorization: Bearer realm="r", response="{SECRET}"\nHost: h')
    assert shown == "Authorization: Bearer ***\nHost: h"


@pytest.mark.parametrize(
    "text",
    [
        f'{{"Authorization":["Token {SECRET}"]}}',
        f'{{"Cookie":["LPSESSION={SECRET}"]}}',
        f'{{"Set-Cookie":["theme=dark; Path=/","LPSESSION={SECRET}; HttpOnly"]}}',
        f'[("Accept", "*/*"), ("Authorization", "Token {SECRET}")]',  # headers.items()
        f'["Cookie", "LPSESSION={SECRET}"]',
    ],
)
def test_credential_headers_written_as_lists_are_hidden_in_text(text: str) -> None:
    shown = redact_text(text)
    assert SECRET not in shown, shown
    assert '"Token' not in shown, "the list is hidden whole"
    assert "theme=dark" not in shown, "the list is hidden whole"


def test_a_set_cookie_list_in_a_cut_body_excerpt_is_hidden() -> None:
    body = _cut_json_body(
        {"echo": {"Set-Cookie": ["theme=dark; Path=/", f"LPSESSION={SECRET}; HttpOnly"]}}
    )
    shown = body_excerpt(body)
    assert SECRET not in shown, shown


@pytest.mark.parametrize(
    "line",
    [
        f"Set-Cookie: theme=dark; Path=/, LPSESSION={SECRET}; HttpOnly",
        f"Set-Cookie: a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT, LPSESSION={SECRET}",
        f"Cookie: theme=dark, LPSESSION={SECRET}",
        f"Cookie: theme=dark ;LPSESSION={SECRET}",
    ],
)
def test_every_cookie_of_a_folded_or_comma_joined_header_is_hidden(line: str) -> None:
    shown = redact_text(f"{line}\r\nX-Request-Id: abc-123")
    assert SECRET not in shown, shown
    assert shown.endswith("\r\nX-Request-Id: abc-123"), shown


@pytest.mark.parametrize(
    "inner",
    [
        {"Authorization": f"Token {SECRET}"},
        {"password": SECRET, "user": "bob"},
        {"name": "Cookie", "value": f"LPSESSION={SECRET}"},
    ],
)
def test_a_credential_in_json_held_in_a_json_string_is_hidden(inner: dict[str, str]) -> None:
    """An upstream's error quoted in ours: its quotes are escaped; once in a cut body excerpt,
    once more when that excerpt is itself quoted in JSON."""
    text = json.dumps({"error": f"upstream refused {json.dumps(inner)}"})
    for shown in (
        redact_text(text),
        redact_text(json.dumps(text)),
        body_excerpt(_cut_json_body({"error": f"upstream refused {json.dumps(inner)}"})),
    ):
        assert SECRET not in shown, shown


def test_a_field_after_an_escaped_hidden_one_stays_readable() -> None:
    text = json.dumps({"error": json.dumps({"password": SECRET, "user": "bob"})})
    assert redact_text(text) == '{"error": "{\\"password\\": \\"***\\", \\"user\\": \\"bob\\"}"}'


def test_the_next_header_of_an_echoed_request_stays_readable_in_an_excerpt() -> None:
    """A JSON string writes CRLF as the four characters \\r\\n: they end a credential or a
    cookie as the line break does."""
    echo = f"GET /api HTTP/1.1\r\nAuthorization: Token {SECRET}\r\nHost: z1.acr.example.net\r\n"
    shown = body_excerpt(json.dumps({"error": "bad gateway", "request": echo}).encode())
    assert SECRET not in shown
    assert "Authorization: Token ***\\r\\nHost: z1.acr.example.net" in shown, shown
    echo = "HTTP/1.1 503 Service Unavailable\r\nSet-Cookie: a=b\r\nX-Request-Id: abc-123\r\n"
    shown = body_excerpt(json.dumps({"upstream": echo}).encode())
    assert "Set-Cookie: ***\\r\\nX-Request-Id: abc-123" in shown, shown


def test_diagnostics_after_a_token68_credential_stay_readable() -> None:
    """RFC 9110: a scheme has a token68 or auth-params, never both; what follows a token68
    after a comma is the text around it."""
    text = f"refused: authorization=Token {SECRET}, status=401, host=z1.example.net, code=E401"
    assert redact_text(text) == (
        "refused: authorization=Token ***, status=401, host=z1.example.net, code=E401"
    )
    text = "refused: authorization=Basic dXNlcjpwYXNzd29yZA==, status=401"
    assert redact_text(text) == "refused: authorization=Basic ***, status=401"


def test_a_har_header_object_has_its_value_hidden_in_parsed_json() -> None:
    har = {
        "headers": [
            {"name": "Authorization", "value": f"Token {SECRET}"},
            {"name": "cookie", "value": f"LPSESSION={SECRET}"},
            {"key": "X-Api-Key", "value": SECRET},
            {"name": "Host", "value": "z1.example.net"},
            {"name": "WWW-Authenticate", "value": 'Bearer error="invalid_token"'},
        ]
    }
    shown = redact_json(har)
    assert SECRET not in repr(shown), shown
    assert shown["headers"][3]["value"] == "z1.example.net"
    # A challenge's parameters read as a credential may (see the pairs after a scheme).
    assert shown["headers"][4]["value"] == "Bearer ***"


def test_an_xml_element_named_like_a_credential_has_its_text_hidden() -> None:
    shown = redact_text(f"<request><Authorization>Token {SECRET}</Authorization><Host>h</Host>")
    assert shown == "<request><Authorization>***</Authorization><Host>h</Host>"


def test_an_escaped_oauth_parameter_keeps_the_text_around_it_whole() -> None:
    """Hiding 'oauth_signature=\\"x\\"' keeps its escaped quotes: an unescaped one ended the
    HAR value it is in, and the credential after it was shown."""
    value = f'OAuth oauth_consumer_key="k", oauth_signature="{SECRET}"'
    text = json.dumps(json.dumps({"name": "Authorization", "value": value}))
    shown = redact_text(text)
    assert SECRET not in shown, shown


# -- the fuzz targets generate these forms ---------------------------------------------------


@pytest.mark.parametrize("name", ["redact_text", "redact_echo", "body_excerpt"])
def test_the_redaction_fuzz_targets_pass(name: str) -> None:
    """The targets' inputs include authorizations under other schemes and cookies, echoed as
    header lines, JSON strings, lists, HAR, JSON inside JSON strings and XML (what they found
    on the redaction before these forms were hidden)."""
    hypothesis_runner(all_targets()[name], examples=400, seed=0)()


# -- the demo checks that retries follow the schedule --------------------------------------------


def _retry(attempt: int, pause: float, elapsed: float) -> RetryEvent:
    return RetryEvent(
        service="accountConfigReadOnly",
        method="GET",
        url="https://h/api",
        attempt=attempt,
        outcome=Outcome(OutcomeKind.RESPONSE, status=503),
        pause=pause,
        elapsed=elapsed,
    )


def test_the_schedule_check_wants_the_guide_s_pauses_scaled_and_waited() -> None:
    scale = 0.01
    assert demo._on_schedule([_retry(1, 0.05, 0.01), _retry(2, 0.1, 0.07)], scale)
    # No pause, or another schedule's.
    assert not demo._on_schedule([_retry(1, 0.0, 0.01), _retry(2, 0.0, 0.02)], scale)
    assert not demo._on_schedule([_retry(1, 0.05, 0.01), _retry(2, 0.05, 0.07)], scale)
    # The pause announced, not waited: the next attempt failed before it ended.
    assert not demo._on_schedule([_retry(1, 0.05, 0.01), _retry(2, 0.1, 0.02)], scale)
    # Past the schedule.
    assert not demo._on_schedule([_retry(4, 0.15, 0.01)], scale)


class _NoPauses:
    """A retry policy that ignores the guide's 5/10/15 s schedule: every retry at once."""

    def scaled(self, factor: float) -> RetryPolicy:
        return RetryPolicy(pauses=(0.0, 0.0, 0.0))


def test_the_demo_fails_when_retries_do_not_follow_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Exit 0 only if every invariant held (retries as scheduled, ...)": retries that went
    without their pauses, as many as scheduled, are a failed run."""
    monkeypatch.setattr(demo, "RetryPolicy", _NoPauses)
    out = io.StringIO()
    code = demo.run_demo(time_scale=0.01, seed=7, out=out)
    text = out.getvalue()
    assert "pausing 0 s" in text  # the retries really went without their pauses
    assert code == 1, text[-1500:]
    assert "[FAILED] the Users API call's retries paused the guide's 5 and 10 s (scaled)" in text
    assert "[FAILED] the Domain API's retry paused the guide's 5 s (scaled)" in text


# -- a malformed --csds-host -------------------------------------------------------------------


@pytest.fixture
def no_le_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_le_env")
def test_a_malformed_csds_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 before any run, as every other usage error, not a FAILED run (exit 1)."""
    argv = ["demo", "--account", "1", "--username", "u", "--password", "pw"]
    assert main([*argv, "--csds-host", "a b"]) == 2
    err = capsys.readouterr().err
    assert "--csds-host (or LE_CSDS_HOST)" in err
    assert main([*argv, "--csds-host", f"h.example/?token={CRED}"]) == 2
    assert CRED not in capsys.readouterr().err, "what follows a host is never echoed"


def test_account_from_refuses_a_csds_host_that_is_no_host() -> None:
    given = {"account": "1", "username": "u", "password": "pw"}
    env = {"LE_CSDS_HOST": "https://api.liveperson.net"}
    with pytest.raises(AccountOptionsError, match="LE_CSDS_HOST"):
        account_from(given, env=env)
    account = account_from({**given, "csds_host": "api.liveperson.net:443"}, env={})
    assert account is not None
    assert account.csds_host == "api.liveperson.net:443"


@pytest.mark.parametrize(
    "text",
    [
        f"password=Pa\\r{SECRET}",
        f"password=C:\\new\\{SECRET}",
        f"pw=abc\\{SECRET}",
        f"token=ab\\n{SECRET}",
        f"Cookie: a=x\\n{SECRET}",
        f"Authorization: Token abc\\n{SECRET}",
    ],
)
def test_a_backslash_inside_an_unquoted_value_does_not_end_it(text: str) -> None:
    """An escaped line break ends a value only where a header line follows it ('\\r\\nHost:');
    elsewhere a backslash is the value's own text (a Windows path, a password)."""
    assert SECRET not in redact_text(text)


def test_an_escaped_line_break_before_a_header_line_still_ends_the_value() -> None:
    shown = redact_text(f"Set-Cookie: a={SECRET}\\r\\nX-Request-Id: abc-123")
    assert shown == "Set-Cookie: ***\\r\\nX-Request-Id: abc-123"
