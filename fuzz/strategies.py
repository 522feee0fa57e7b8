"""Hypothesis strategies for hostile input: secrets, hosts, dates, JSON and near-JSON.

Shared by the fuzz targets. Each strategy mixes plain noise with inputs that are almost valid,
because parsers break at the edges of what they accept, not in the middle of random bytes.
"""

from __future__ import annotations

import email.utils
import functools
import html
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = [
    "AUTH_SCHEMES",
    "HOSTILE_HOST_CHARS",
    "SECRET_KEYS",
    "credential_headers",
    "echoed_credentials",
    "hostile_host",
    "http_dates",
    "json_values",
    "near_json_bytes",
    "retry_after_values",
    "secret_values",
    "valid_hosts",
]

#: Characters that a token, a password or a bearer is made of in practice: a token68's, and
#: "=" (padding, or anywhere in a password) and a backslash (a Windows path, a password).
_SECRET_ALPHABET = string.ascii_letters + string.digits + "-._~=\\"

#: JSON keys and parameter names that hold credentials, as LiveEngage and OAuth spell them.
SECRET_KEYS = (
    "password",
    "Password",
    "PASSWORD",
    "secret",
    "appSecret",
    "client_secret",
    "accessToken",
    "access_token",
    "accessTokenSecret",
    "refresh_token",
    "bearer",
    "csrf",
    "jwt",
    "authCode",
    "apiKey",
    "session_id",
    "wsuk",
    "token",
)


def secret_values() -> st.SearchStrategy[str]:
    """A credential: distinctive, so that finding it in output is never a coincidence."""
    return st.text(alphabet=_SECRET_ALPHABET, min_size=6, max_size=40).map(lambda s: f"S3CR3T{s}")


#: Authorization schemes a request (or a server's echo of one) may carry: the standard ones and
#: the kinds of name a vendor's or a proxy's scheme has.
AUTH_SCHEMES = (
    "Bearer",
    "bearer",
    "Basic",
    "Token",
    "LivePerson",
    "Negotiate",
    "NTLM",
    "MAC",
    "Key",
    "Bearer-Token",
    "OAuth",
    "Hawk",
    "AWS4-HMAC-SHA256",
)

#: The names a session cookie goes by.
_COOKIE_NAMES = ("LE_SESSION", "LPSID", "sess", "JSESSIONID", "session-id", "a")


def credential_headers() -> st.SearchStrategy[str]:
    """A request header line carrying a credential, as a log or a 5xx body echoes one: a
    template with ``{s}`` where the credential goes. Authorization and Proxy-Authorization
    under any scheme (a token, Digest's and MAC's parameters, no scheme at all), Cookie and
    Set-Cookie with the session among other cookies and attributes."""
    authorization = st.sampled_from(
        ["Authorization", "authorization", "AUTHORIZATION", "Proxy-Authorization"]
    )
    scheme = st.one_of(st.sampled_from(AUTH_SCHEMES), st.from_regex(r"\A[A-Za-z][A-Za-z-]{0,15}\Z"))
    credential = st.sampled_from(
        [
            "{s}",
            '{s}, realm="r"',
            'username="bob", realm="r", nonce="n", uri="/x", response="{s}", qop=auth',
            'id="h480djs93hd8", ts="1336363200", nonce="dj83hs9s", mac="{s}"',
            'oauth_consumer_key="k", oauth_nonce="n", oauth_signature="{s}"',
            "Credential=AKIA/20260101/us-east-1/s3/aws4_request, Signature={s}",
            "token={s}",
            # A token68 with its padding, which a quote may follow ('"Basic dXNl...Q="').
            "{s}=",
            "{s}==",
        ]
    )
    with_scheme = st.tuples(authorization, scheme, credential).map(
        lambda t: f"{t[0]}: {t[1]} {t[2]}"
    )
    bare = authorization.map(lambda name: f"{name}: {{s}}")
    cookie = st.tuples(
        st.sampled_from(["Cookie", "cookie", "Set-Cookie", "set-cookie"]),
        st.sampled_from(_COOKIE_NAMES),
        st.sampled_from(
            [
                "{n}={{s}}",
                "theme=dark; {n}={{s}}",
                '{n}="{{s}}"',
                "{n}={{s}}; Path=/; HttpOnly",
                # Cookies joined otherwise: a folded Set-Cookie (", "), an Expires date's
                # comma, " ;".
                "theme=dark; Path=/, {n}={{s}}; HttpOnly",
                "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT, {n}={{s}}",
                "theme=dark, {n}={{s}}",
                "theme=dark ;{n}={{s}}",
                # A value in single quotes (a cookie-octet may be one; SimpleCookie's repr).
                "{n}='{{s}}'",
                "theme='dark'; {n}='{{s}}'",
            ]
        ),
    ).map(lambda t: f"{t[0]}: " + t[2].format(n=t[1]))
    return st.one_of(with_scheme, bare, cookie, st.just("cookie={s}"))


def _dump(name: str, value: str, joiner: str) -> str:
    """A request's headers joined by ``joiner``, a scheme's credential first and the header
    ``name: value`` after it."""
    return joiner.join(["GET /a HTTP/1.1", "Authorization: Bearer abcd", f"{name}: {value}"])


#: Ways a header, its name and its value, is written where a log or a 5xx body echoes it:
#: each a function of the name and the value giving the text.
_ECHO_SHAPES: dict[str, Any] = {
    "line": lambda n, v: f"{n}: {v}\nX-Request-Id: rid-7",
    # A JSON string holding the request: its CRLFs written "\\r\\n".
    "json string": lambda n, v: json.dumps(f"GET /a HTTP/1.1\r\n{n}: {v}\r\nX-Request-Id: rid-7"),
    "pair": lambda n, v: json.dumps([n, v]),
    "tuple": lambda n, v: repr((n, v)),
    # aiohttp's raw_headers as repr prints them; Node's rawHeaders; a pretty-printed pair in a
    # JSON string (its blanks escaped).
    "bytes pairs": lambda n, v: repr([(b"Host", b"h"), (n.encode(), v.encode())]),
    "raw headers": lambda n, v: json.dumps(["Host", "h", n, v]),
    "pretty pair": lambda n, v: json.dumps({"e": json.dumps([n, v], indent=2)}),
    "har": lambda n, v: json.dumps({"name": n, "value": v}, separators=(",", ":")),
    "har spaced": lambda n, v: json.dumps({"name": n, "value": v}),
    "postman": lambda n, v: json.dumps({"key": n, "value": v, "type": "text"}),
    "array": lambda n, v: json.dumps({n: [v]}, separators=(",", ":")),
    "array of many": lambda n, v: json.dumps({"Accept": ["*/*"], n: ["theme=dark", v]}),
    "go header": lambda n, v: f"header={json.dumps({n: [v]})[1:-1]}",
    # JSON in a JSON string (an upstream's error quoted in ours): its quotes escaped.
    "escaped json": lambda n, v: json.dumps({"error": f"upstream said {json.dumps({n: v})}"}),
    "escaped har": lambda n, v: json.dumps(json.dumps({"name": n, "value": v})),
    # A request dump in JSON held in a JSON string (its CRLFs written "\\\\r\\\\n"), and as
    # Python's repr of that JSON writes it: another credential's line before the header's, so
    # that a run taking the escapes would take the header's name too.
    "depth 2": lambda n, v: json.dumps(json.dumps({"request": _dump(n, v, "\r\n")})),
    "depth 2 repr": lambda n, v: repr(json.dumps({"request": _dump(n, v, "\r\n")})),
    # Headers joined by a tab (in a JSON string: "\\t"), or by a literal backslash.
    "tab joined": lambda n, v: json.dumps({"headers": _dump(n, v, "\t")}),
    "backslash joined": lambda n, v: _dump(n, v, "\\"),
    "xml": lambda n, v: f"<request><{n}>{v}</{n}><Host>h</Host></request>",
    # An element with attributes, its text in a CDATA section; a header as an element's
    # attributes, the value first.
    "xml attributes": lambda n, v: f'<request><{n} type="x">{v}</{n}><Host>h</Host></request>',
    "xml cdata": lambda n, v: f"<request><{n}>\n  <![CDATA[{v}]]></{n}><Host>h</Host></request>",
    "xml header": lambda n, v: f'<header value="{html.escape(v)}" name="{n}"/>',
    # HAR with the value first, or other fields between (a string with braces in it, a nested
    # object), the name on either side.
    "har value first": lambda n, v: json.dumps({"value": v, "name": n}),
    "har comment": lambda n, v: json.dumps({"name": n, "comment": "see {x}", "value": v}),
    "har nested": lambda n, v: json.dumps({"value": v, "meta": {"a": {"b": 1}}, "name": n}),
    # A "value" word in another field's string between the name and the value (a tool's
    # description), on either side.
    "har described": lambda n, v: json.dumps({"key": n, "description": "value: a", "value": v}),
    "har described after": lambda n, v: json.dumps({"value": v, "hint": "value=1", "name": n}),
    # An element named by the header, a name attribute naming something else; a validation
    # error's field beside the header's name, the value unquoted.
    "xml named element": lambda n, v: f'<{n} name="s" value="{html.escape(v)}"/>',
    "field beside": lambda n, v: f"- field: password\n  header: {n}\n  value: {v}\n",
    # A header as an object whose keys are unquoted: a Python class's repr, Node's inspect,
    # YAML (a list of headers, the next one's value readable), a key=value log line.
    "python repr": lambda n, v: (
        f"[Header(name='Accept', value='*/*'), Header(name={n!r}, value={v!r})]"
    ),
    "python repr value first": lambda n, v: f"Header(value={v!r}, name={n!r})",
    "node inspect": lambda n, v: f"[ {{ name: {n!r}, value: {v!r} }} ]",
    "yaml": lambda n, v: (
        f"headers:\n- name: {n}\n  value: {v}\n- name: X-Request-Id\n  value: rid-7\n"
    ),
    "key=value": lambda n, v: f"refused header name={n} value={v}",
    # .NET's KeyValuePair list; a validation error echoing the value it refused.
    "dotnet pairs": lambda n, v: json.dumps({"Headers": [{"Key": n, "Value": v}]}),
    "validation error": lambda n, v: json.dumps(
        {"errors": [{"field": n, "message": "invalid", "value": v}]}
    ),
    # Pretty-printed in a JSON string (a structured log's message): its blanks escaped.
    "pretty escaped": lambda n, v: json.dumps({"e": json.dumps({n: [v]}, indent="\t")}),
    "pretty escaped har": lambda n, v: json.dumps(
        {"e": json.dumps([{"value": v, "name": n}], indent=1)}
    ),
    "pretty escaped repr": lambda n, v: json.dumps(
        {"e": f"[\n\tHeader(\n\t\tname={n!r},\n\t\tvalue={v!r}\n\t)\n]"}
    ),  # A form's bracketed name (PHP's, Rails', qs'), in a query or a form body, its brackets
    # percent-encoded or not, the value percent-encoded as a form sends it.
    "form brackets": lambda n, v: f"page=2&options[headers][{n}]={quote(v, safe='')}&x=1",
    "form brackets encoded": lambda n, v: f"headers%5B{n}%5D={quote(v, safe='')}&x=1",
    # A brace alone in another field's string, a "value" word inside one, on either side.
    "har lone brace": lambda n, v: json.dumps({"name": n, "note": "{", "value": v}),
    "har lone brace after": lambda n, v: json.dumps({"value": v, "note": "}", "name": n}),
    "python repr hint": lambda n, v: f"Header(name={n!r}, hint='x, value: {{', value={v!r})",
    # HAR held in JSON held in JSON..., 7 levels deep (63 backslashes a quote).
    "har 7 deep": lambda n, v: functools.reduce(
        lambda text, _: json.dumps(text), range(6), json.dumps({"name": n, "value": v})
    ),
}


@st.composite
def echoed_credentials(draw: st.DrawFn) -> tuple[str, str, str]:
    """A credential header echoed in one of the ways a log or a 5xx body writes it
    (:data:`_ECHO_SHAPES`: a header line, a JSON string with its CRLFs escaped, a pair, HAR
    in any order and with fields between, a JSON array, Go's ``http.Header``, JSON inside a
    JSON string, XML with attributes or CDATA, a Python repr, Node's inspect, YAML, key=value):
    the text, the credential, and the shape's name."""
    secret = draw(secret_values())
    if draw(st.integers(0, 4)) == 0:
        # A scheme's credential quoted with no header's name: only the scheme says what it is.
        scheme = draw(st.sampled_from(["Bearer", "bearer", "Basic", "jwt"]))
        padding = draw(st.sampled_from(["", "=", "=="]))
        credential = f"{scheme} {secret}{padding}"
        if draw(st.booleans()):
            return f"header value {json.dumps(credential)} rejected", secret, "quoted"
        # At the start of a line after another credential's, in a JSON string ("\\n"), or
        # in JSON held in one ("\\\\r\\\\n").
        lines = "tried Bearer abcd" + draw(st.sampled_from(["\n", "\r\n"])) + credential
        text = json.dumps({"e": lines})
        return (json.dumps(text) if draw(st.booleans()) else text), secret, "lines"
    line = draw(credential_headers()).format(s=secret)
    name, sep, value = line.partition(": ")
    if not sep:  # ("cookie=..." is no header)
        return line, secret, "bare"
    shape = draw(st.sampled_from(sorted(_ECHO_SHAPES)))
    return _ECHO_SHAPES[shape](name, value), secret, shape


def _label() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?\Z")


def valid_hosts() -> st.SearchStrategy[str]:
    """Bare hostnames, IPv4 and bracketed IPv6 literals, each with an optional port."""
    name = st.lists(_label(), min_size=1, max_size=4).map(".".join)
    ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
    ipv6 = st.sampled_from(["[::1]", "[fe80::1]", "[2001:db8::8a2e:370:7334]"])
    port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
    return st.tuples(st.one_of(name, ipv4, ipv6), port).map("".join)


#: Characters none of which may ever appear in an accepted host.
HOSTILE_HOST_CHARS = " \t\n\r\x0b\x0c\x00\x01\x1b\x7f\u00a0\u2028\u3000@/\\?#%;,\"'<>`|{}^"


def hostile_host() -> st.SearchStrategy[str]:
    """A valid host made hostile: a scheme, userinfo, path, query, control character,
    whitespace, '@' or a bad port; or simply too long. Every one must be refused."""
    base = valid_hosts()
    prefixed = st.tuples(
        st.sampled_from(
            ["http://", "https://", "//", "user@", "user:pw@", "@", "wss://", "javascript://"]
        ),
        base,
    ).map("".join)
    suffixed = st.tuples(
        base,
        st.sampled_from(
            [
                "/",
                "/path",
                "?q=1",
                "#frag",
                "\\",
                "@evil.example",
                ":",
                ":0",
                ":65536",
                ":99999",
                ":123456",
                " ",
                "\t",
                "\n",
                "\r\nX-Injected: 1",
                "\x00",
                "%2f",
                ":80:80",
            ]
        ),
    ).map("".join)

    @st.composite
    def inserted(draw: st.DrawFn) -> str:
        host = draw(base)
        at = draw(st.integers(0, len(host)))
        bad = draw(st.text(alphabet=HOSTILE_HOST_CHARS, min_size=1, max_size=3))
        return host[:at] + bad + host[at:]

    too_long = st.integers(261, 2000).map(lambda n: ("a" * 60 + ".") * (n // 61 + 1))
    return st.one_of(prefixed, suffixed, inserted(), too_long)


def http_dates() -> st.SearchStrategy[str]:
    """HTTP-dates (IMF-fixdate and the obsolete forms email.utils reads), some in other zones."""
    when = st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5)), timezone(timedelta(hours=-11))]
        ),
    )
    return st.one_of(
        when.map(lambda d: email.utils.format_datetime(d)),
        when.map(lambda d: email.utils.format_datetime(d.astimezone(UTC), usegmt=True)),
        when.map(lambda d: d.strftime("%A, %d-%b-%y %H:%M:%S GMT")),
        when.map(lambda d: d.strftime("%a %b %d %H:%M:%S %Y")),
    )


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    text = draw(base)
    if not text:
        return text
    i = draw(st.integers(0, len(text) - 1))
    return text[:i] + draw(st.characters()) + text[i + 1 :]


def retry_after_values() -> st.SearchStrategy[str]:
    """``Retry-After`` values: seconds, fractions, huge numbers, dates, and garbage."""
    return st.one_of(
        st.integers(0, 10**80).map(str),
        st.integers(-(10**6), -1).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["", " ", "inf", "-inf", "nan", "1e999", "0x10", "1_000", "+5", "٣"]),
        http_dates(),
        _mutated(http_dates()),
        st.tuples(st.sampled_from(["", " ", "\t"]), http_dates(), st.sampled_from(["", " "])).map(
            "".join
        ),
        st.text(max_size=80),
        st.text(min_size=60, max_size=5000),
    )


def json_values() -> st.SearchStrategy[Any]:
    """JSON values with credential keys scattered through them."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    )
    keys = st.one_of(st.sampled_from(SECRET_KEYS), st.text(max_size=10))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=20,
    )


def near_json_bytes() -> st.SearchStrategy[bytes]:
    """Bodies a server might send: JSON, truncated JSON, deep nesting, bad UTF-8, noise."""
    valid = json_values().map(lambda v: json.dumps(v).encode())
    truncated = st.tuples(valid, st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    deep = st.tuples(st.sampled_from(["[", '{"a":']), st.integers(1, 50_000)).map(
        lambda t: (t[0] * t[1]).encode()
    )
    bad_utf8 = st.tuples(valid, st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0][:1] + b"\xff\xfe" + t[1] + t[0][1:]
    )
    return st.one_of(
        valid,
        truncated,
        deep,
        bad_utf8,
        st.binary(max_size=2000),
        st.sampled_from([b"", b" ", b"null", b"NaN", b"1e99999", b"\xef\xbb\xbf{}", b"[]"]),
    )
