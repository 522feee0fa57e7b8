"""Fuzz targets for the engine core: Retry-After, hosts, redaction and Response.json.

Each check's docstring states its invariant; the check asserts it for one input.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from le_transport._redact import _may_hide, body_excerpt, redact_text, redact_url
from le_transport.engine import Response, split_host
from le_transport.errors import HostileHostError, InvalidRetryAfter, ResponseDecodeError
from le_transport.middleware.retry import parse_retry_after_date
from le_transport.policies.retry_after import parse_retry_after
from le_transport.providers.domains import validate_host

from ._harness import Target
from .strategies import (
    HOSTILE_HOST_CHARS,
    SECRET_KEYS,
    credential_headers,
    echoed_credentials,
    hostile_host,
    near_json_bytes,
    retry_after_values,
    secret_values,
    valid_hosts,
)

__all__ = ["TARGETS"]

# An error message may quote a bounded prefix of hostile input; never all of it.
_MAX_MESSAGE = 600


def _assert_bounded_message(exc: BaseException) -> None:
    message = str(exc)
    assert len(message) <= _MAX_MESSAGE, f"error message of {len(message)} chars"


# -- Retry-After ------------------------------------------------------------------------------


def check_retry_after(case: tuple[str, float]) -> None:
    """parse_retry_after returns a finite number of seconds >= 0, or raises InvalidRetryAfter."""
    value, now = case
    try:
        seconds = parse_retry_after(value, now_epoch=now)
    except InvalidRetryAfter as exc:
        _assert_bounded_message(exc)
        return
    assert isinstance(seconds, float), type(seconds)
    assert math.isfinite(seconds), seconds
    assert seconds >= 0, seconds


def check_date_header(value: str) -> None:
    """The Date header parser returns finite epoch seconds, or raises InvalidRetryAfter."""
    try:
        epoch = parse_retry_after_date(value)
    except InvalidRetryAfter as exc:
        _assert_bounded_message(exc)
        return
    assert isinstance(epoch, float), type(epoch)
    assert math.isfinite(epoch), epoch


# -- hosts from the Domain API ----------------------------------------------------------------

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


def check_validate_host(host: str) -> None:
    """validate_host accepts a host only if a URL built on it points at that host and nowhere
    else (no userinfo, no path, no injected header); anything else is HostileHostError."""
    try:
        accepted = validate_host(host, service="svc")
    except HostileHostError as exc:
        _assert_bounded_message(exc)
        shown = str(exc)
        assert not any(c in shown for c in "\r\n\x00"), "control character echoed"
        return
    assert set(accepted) <= _HOST_CHARS, f"accepted a host with {set(accepted) - _HOST_CHARS}"
    assert 0 < len(accepted) <= 260
    name, port = split_host(accepted)
    # The engine builds its URLs exactly like this: it must work for every accepted host.
    url = URL.build(scheme="https", host=name, port=port, path="/api/x")
    assert url.user is None
    assert url.password is None
    assert url.path == "/api/x"
    reparsed = URL(str(url))
    assert reparsed.host == url.host
    assert reparsed.port == url.port
    assert reparsed.path == "/api/x"


def check_hostile_host_refused(host: str) -> None:
    """A host with a scheme, userinfo, path, whitespace, control character, '@', bad port or
    more than 260 characters is always refused with HostileHostError."""
    try:
        accepted = validate_host(host, service="svc")
    except HostileHostError as exc:
        _assert_bounded_message(exc)
        return
    raise AssertionError(f"accepted the hostile host {accepted!r:.80}")


# -- redaction --------------------------------------------------------------------------------


def _assert_hidden(secret: str, shown: str) -> None:
    """The secret is not shown, as it is or as a JSON string writes it (its backslashes
    doubled: a secret in a JSON body, or in text quoted in one)."""
    for found in {secret, json.dumps(secret)[1:-1]}:
        assert found not in shown, f"{found!r} of {secret!r} survived in {shown!r}"


@st.composite
def _url_with_secret(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(secret_values())
    host = draw(valid_hosts())
    form = draw(st.integers(0, 3))
    if form == 0:
        url = f"https://user:{secret}@{host}/api"
    elif form == 1:
        key = draw(st.sampled_from(SECRET_KEYS))
        url = f"https://{host}/api?v=1&{key}={secret}&x=2"
    elif form == 2:
        url = f"wss://{host}/ws_api/account/123/messaging/brand/{secret}?v=2.1"
    else:
        url = f"https://{secret}@{host}/api#frag"
    return url, secret


def check_redact_url(case: tuple[str, str | None]) -> None:
    """redact_url never raises, and a credential in the userinfo, a credential-named query
    parameter or the UMS socket's bearer path segment never survives it."""
    url, secret = case
    shown = redact_url(url)
    assert isinstance(shown, str)
    if secret is not None:
        _assert_hidden(secret, shown)


@st.composite
def _text_with_secret(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(secret_values())
    key = draw(st.sampled_from(SECRET_KEYS))
    # A credential under a name or a scheme, or in a request header a log or a 5xx body
    # echoes (an authorization under any scheme, a cookie).
    if draw(st.integers(0, 3)) == 0:
        # A header echoed as a log or a body writes it: quoted, in JSON, in HAR, in XML.
        text, secret, _ = draw(echoed_credentials())
        return text, secret
    form = draw(
        st.one_of(
            credential_headers(),
            st.sampled_from(
                [
                    "Bearer {s}",
                    "bearer {s}",
                    "BEARER {s}",
                    "jwt {s}",
                    "Basic {s}",
                    "Authorization: Bearer {s}",
                    "{k}={s}",
                    "{k}: {s}",
                    "{k} = {s}",
                    '"{k}": "{s}"',
                    '"{k}":"{s}"',
                    # A Python dict's repr: what logging a dict with %r shows.
                    "'{k}': '{s}'",
                    'oauth_signature="{s}"',
                    'oauth_token="{s}"',
                    # aiohttp's response.cookies as a log line's %r prints it.
                    "<SimpleCookie: sess='{s}'>",
                    "https://h.example/x?{k}={s}&v=1",
                ]
            ),
        )
    )
    sep = st.sampled_from([" ", "\n", ", ", "; ", " (", "\t"])
    before = draw(st.text(max_size=30)) + draw(sep)
    after = draw(sep) + draw(st.text(max_size=30))
    return before + form.format(k=key, s=secret) + after, secret


#: Pieces of secrets' names, schemes and the punctuation around them, whose joins may make one
#: (or a text redact_url shows without the passes, :func:`check_redact_text`).
_PIECES = (
    *("pa", "ss", "word", "to", "ken", "sig", "pw", "auth", "Cookie", "value", "Bearer", "eyJ"),
    # A long s and a Kelvin sign: case-folded, an "s" and a "k".
    *("\u017fig", "\u212aEY", "oauth_", "brand", "x", "b", "=", ":", '"', "'", "[", "]", ","),
    *(" ", "\\", "\\n", "\\u0026", "<", ">", "/", "@", "-", ".", "_", "://"),
)


def _near_secret_text() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(_PIECES), max_size=16).map("".join)


def check_redact_text(case: tuple[str, str | None]) -> None:
    """redact_text never raises, and hides a credential written as 'Bearer x', 'jwt x',
    'key=x', 'key: x', '"key": "x"', "'key': 'x'" or an OAuth parameter, whatever surrounds
    it, and a credential header's value however it is echoed (quoted, in a JSON array, in
    HAR, in JSON inside a JSON string, in XML)."""
    text, secret = case
    shown = redact_text(text)
    assert isinstance(shown, str)
    if secret is not None:
        _assert_hidden(secret, shown)
    # What redact_url skips the passes for, they show as it is.
    assert _may_hide(text) or shown == text, f"{text!r} has no trigger but became {shown!r}"


#: What follows a credential header, in an echo's shape, that must stay readable (the next
#: header of an echoed request, the next element).
_ECHO_AFTER = {
    "line": "X-Request-Id: rid-7",
    "json string": "X-Request-Id: rid-7",
    "xml": "<Host>h</Host>",
    "xml attributes": "<Host>h</Host>",
    "xml cdata": "<Host>h</Host>",
    "yaml": "value: rid-7",
}


def check_redact_echo(case: tuple[str, str, str]) -> None:
    """A credential header however a log or a body echoes it (a header line, a JSON string
    with its CRLFs escaped, a pair, HAR in any order, a JSON array, Go's http.Header, JSON
    inside a JSON string, XML, an object with unquoted keys): redact_text hides its value, and
    the header after it stays readable."""
    text, secret, shape = case
    shown = redact_text(text)
    _assert_hidden(secret, shown)
    after = _ECHO_AFTER.get(shape)
    if after is not None:
        assert after in shown, f"{after!r} was hidden in {shown!r}"


@st.composite
def _body_echoing_headers(draw: st.DrawFn) -> tuple[bytes, str, int, str]:
    """A 5xx body echoing the request's headers, a credential among them: as text, as a JSON
    object of headers, or as a JSON message."""
    secret = draw(secret_values())
    line = draw(credential_headers()).format(s=secret)
    name, _, value = line.partition(": ")
    shape = draw(st.sampled_from(["text", "headers", "message", "echo", "echo cut"]))
    if shape in ("echo", "echo cut"):
        # Echoed in any of the ways a body writes a header; "cut": past the excerpt's window,
        # so that it is scrubbed as text rather than parsed.
        echoed, secret, _ = draw(echoed_credentials())
        padding = "x" * 1300 if shape == "echo cut" else ""
        if draw(st.booleans()):
            body = f"{echoed}\n{padding}".encode()
        else:
            body = json.dumps({"error": "bad gateway", "echo": echoed, "pad": padding}).encode()
        return body, "/api/x", draw(st.integers(1, 1000)), secret
    if shape == "text" or not value:
        body = f"upstream error; request headers:\nAccept: */*\n{line}\nHost: h\n".encode()
    elif shape == "headers":
        headers = {"Accept": "*/*", name: value}
        body = json.dumps({"error": "bad gateway", "headers": headers}).encode()
    else:
        body = json.dumps({"message": f"upstream refused {line}", "code": 502}).encode()
    return body, "/api/x", draw(st.integers(1, 1000)), secret


@st.composite
def _body_with_secret(draw: st.DrawFn) -> tuple[bytes, str, int, str]:
    secret = draw(secret_values())
    key = draw(st.sampled_from(SECRET_KEYS))
    depth = draw(st.integers(0, 4))
    value: Any = {key: secret, "other": draw(st.text(max_size=20))}
    for _ in range(depth):
        value = draw(st.sampled_from([lambda v: [v], lambda v: {"data": v, "n": 1}]))(value)
    import json

    body = json.dumps(value).encode()
    path = draw(st.sampled_from(["/api/x", "/api/account/1/login", "/sentinel/app/token"]))
    limit = draw(st.integers(1, 1000))
    return body, path, limit, secret


def check_body_excerpt(case: tuple[bytes, str, int, str | None]) -> None:
    """body_excerpt never raises for any body, stays within its limit (plus an ellipsis), and
    never shows a credential-keyed JSON value or anything of an auth endpoint's body."""
    body, path, limit, secret = case
    shown = body_excerpt(body, path=path, limit=limit)
    assert isinstance(shown, str)
    if not path or not _is_auth(path):
        assert len(shown) <= limit + 1, f"{len(shown)} chars for limit {limit}"
    if secret is not None:
        _assert_hidden(secret, shown)


def _is_auth(path: str) -> bool:
    from le_transport._redact import is_auth_path

    return is_auth_path(path)


# -- Response.json ----------------------------------------------------------------------------

_EXPECT: list[type[Any] | None] = [None, dict, list, str, int, float, bool]


def check_response_json(case: tuple[bytes, type[Any] | None, str]) -> None:
    """Response.json returns a value of the expected JSON type or raises ResponseDecodeError,
    with a bounded message, for any body."""
    body, expect, path = case
    resp = Response(
        status=200,
        headers=CIMultiDictProxy(CIMultiDict()),
        body=body,
        method="GET",
        url=f"https://127.0.0.1:1{path}",
        service="svc",
    )
    try:
        value = resp.json(expect) if expect is not None else resp.json()
    except ResponseDecodeError as exc:
        _assert_bounded_message(exc)
        return
    if expect is not None:
        assert isinstance(value, expect)


# -- the registry -----------------------------------------------------------------------------

TARGETS: tuple[Target, ...] = (
    Target(
        "retry_after",
        st.tuples(retry_after_values(), st.floats(0, 4e9)),
        check_retry_after,
        examples=(("1e999", 0.0), ("9" * 64, 0.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 0.0)),
    ),
    Target(
        "date_header",
        retry_after_values(),
        check_date_header,
        examples=("Mon, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 +1400"),
    ),
    Target(
        "validate_host",
        st.one_of(
            valid_hosts(),
            hostile_host(),
            st.text(max_size=300),
            st.text(alphabet="[]:.0123456789abcdef", max_size=40),
            st.text(alphabet="a-.:0123456789" + HOSTILE_HOST_CHARS[:8], max_size=80),
        ),
        check_validate_host,
        # A bracketed literal that is not an IPv6 address cannot be put in a URL.
        examples=("[:::::]", "[.]", "127.0.0.1:65535"),
    ),
    Target(
        "hostile_host",
        hostile_host(),
        check_hostile_host_refused,
        # "$" in a regex also matches before a final newline: the classic hole.
        examples=("example.com\n", "va.example.com\r\nX-Injected: 1", "evil@good.example"),
    ),
    Target(
        "redact_url",
        st.one_of(
            _url_with_secret(),
            st.tuples(st.text(max_size=300), st.none()),
        ),
        check_redact_url,
    ),
    Target(
        "redact_text",
        st.one_of(
            _text_with_secret(),
            st.tuples(st.text(max_size=2000), st.none()),
            st.tuples(_near_secret_text(), st.none()),
        ),
        check_redact_text,
        examples=(("body {'password': 'S3CR3Tabcdefgh'}", "S3CR3Tabcdefgh"),),
    ),
    Target(
        "redact_echo",
        echoed_credentials(),
        check_redact_echo,
        examples=(
            ('{"name":"Authorization","value":"Bearer S3CR3Tabcdefgh"}', "S3CR3Tabcdefgh", "har"),
        ),
    ),
    Target(
        "body_excerpt",
        st.one_of(
            _body_with_secret(),
            _body_echoing_headers(),
            st.tuples(
                near_json_bytes(),
                st.sampled_from(["", "/api/x", "/api/account/1/login"]),
                st.integers(1, 1000),
                st.none(),
            ),
        ),
        check_body_excerpt,
        # A deeply nested error body must not crash the error path that quotes it.
        examples=((b"[" * 200_000, "/api/x", 50_000, None),),
    ),
    Target(
        "response_json",
        st.tuples(
            near_json_bytes(),
            st.sampled_from(_EXPECT),
            st.sampled_from(["/api/x", "/api/account/1/login"]),
        ),
        check_response_json,
        examples=((b"[" * 200_000, None, "/api/x"),),
    ),
)
