"""The one place that knows what a secret looks like, and how to hide it.

Every URL, header set, body excerpt and log line the library emits goes through these functions.
Redaction is by name (headers, query parameters, JSON keys that look like credentials), by place
(the UMS socket puts the bearer in its path; auth endpoints' bodies are credentials), and by
value (:class:`Secret` wraps a credential so its repr never shows it).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from yarl import URL

__all__ = [
    "REDACTED",
    "Secret",
    "body_excerpt",
    "is_auth_path",
    "is_secret_header",
    "is_secret_name",
    "redact_cut",
    "redact_headers",
    "redact_json",
    "redact_path",
    "redact_text",
    "redact_url",
]

REDACTED = "***"

#: Headers whose values are credentials.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-csrf-token",
        "x-api-key",
    }
)

#: Header names (lower-cased) that a list of names may hold after a credential header's
#: (``["Authorization", "X-Request-Id"]``, ``Vary: ["Cookie", "Accept-Encoding"]``): the
#: registered ones a client or a server commonly sends, and the common unregistered ones. Only
#: these are read as a name where a (name, value) pair's value may be: a value merely shaped
#: like a name ('("Authorization", "Secretword")', a password "Correct-Horse-Battery") stays
#: hidden, and so does a flat list of names and values (Node's rawHeaders: '["Authorization",
#: "Token x", "Host", "h"]') however many items it has.
_HEADER_NAMES = frozenset(
    {
        "a-im",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-allow-origin",
        "access-control-expose-headers",
        "access-control-max-age",
        "access-control-request-headers",
        "access-control-request-method",
        "age",
        "allow",
        "alt-svc",
        "authorization",
        "cache-control",
        "connection",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-range",
        "content-security-policy",
        "content-type",
        "cookie",
        "date",
        "etag",
        "expect",
        "expires",
        "forwarded",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "keep-alive",
        "last-modified",
        "link",
        "location",
        "max-forwards",
        "origin",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "referrer-policy",
        "retry-after",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "server",
        "set-cookie",
        "strict-transport-security",
        "te",
        "trailer",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "x-api-key",
        "x-content-type-options",
        "x-correlation-id",
        "x-csrf-token",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-frame-options",
        "x-real-ip",
        "x-request-id",
        "x-requested-with",
    }
)

# Headers whose names look like credentials' but whose values are a server's challenge: what a
# log needs to say why a credential was refused (the scheme, the realm, the error).
_CHALLENGE_HEADERS = frozenset({"www-authenticate", "proxy-authenticate"})

# Names (query parameters, JSON keys, form fields) that hold credentials. Matched as
# substrings of the lower-cased name with separators removed.
_SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "bearer",
    "csrf",
    "jwt",
    "authcode",
    "apikey",
    "appkey",
    "signature",
    "sessionid",
    "session_id",
    "wsuk",
    "assertion",
    "auth",
    "key",
    "pwd",
    "credential",
    "passphrase",
)

#: The parts that, in "name:value" inside a query value, make the name a secret's: those of
#: is_secret_name but "auth" and "key" alone, which as parts of a word ("author:smith",
#: "key:asc") name a field to sort or search by; "authorization" does. Compared with the
#: name's separators taken out ("api_key", "session-id").
_NAMED_SECRET_PARTS = tuple(
    p.replace("_", "") for p in (*_SECRET_NAME_PARTS, "authorization") if p not in ("auth", "key")
)
#: A "name:value" pair in a query value: the name a whole run (never a part of one: no
#: backtracking into it, so that a long run costs one pass), the value up to a space or a
#: separator. Which names are secret is decided in Python (:func:`_hide_named`).
_PAIR = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]++)(\s*+:\s*+)")
_PAIR_VALUE = re.compile(r"[^\s,;&]++")
#: What ends an "authorization: <scheme> <credential>" pair's value (hidden up to it whole).
_PAIR_END = re.compile(r"[,;&]")

# Short names that hold credentials only as the whole name: as substrings they are in too many
# harmless words ("design", "spin", "passenger"). A signature, a password, a one-time password,
# a PIN, a session id, a ticket. Not "code": LiveEngage's answers and UMS frames carry a status
# "code" that a log must show (an OAuth authorization code is no LiveEngage credential).
_SECRET_NAMES = frozenset({"sig", "pass", "pw", "otp", "pin", "sid", "ticket", "cred"})

# Path segments after which the next segment is a credential (the UMS brand socket puts the
# bearer in the path: /ws_api/account/{id}/messaging/brand/{bearer}).
_SECRET_PATH_AFTER = frozenset({"brand"})

# Auth endpoints: their request and response bodies are credentials as a whole.
_AUTH_PATH = re.compile(
    r"/(login|refresh|logout|signup|authenticate|token|app/token|oauth[^/]*)(/|$|\?)",
    re.IGNORECASE,
)

#: An auth scheme's name and a credential-sized token after it, in a query value; after
#: "token" (a word as often) only one with a digit ("token authentication_failures" is words).
_SCHEME_CREDENTIAL = re.compile(
    r"(?i)\b(bearer|basic|jwt)\s++[A-Za-z0-9._~+/=-]{16,}"
    r"|\b(token)\s++(?=[A-Za-z._~+/=-]*+[0-9])[A-Za-z0-9._~+/=-]{16,}"
)
#: A JWT: three base64url segments, the first starting like a JSON header.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


# key=value and "key": "value" in free text for every name is_secret_name() hides (the same
# list, so an api_key or a signature hidden in a URL is hidden in an error's text as well):
# the name is a whole run (no backtracking into it: a long run costs one pass) and its
# secrecy is decided in Python (_hide_secret_fields); the value is taken only for a secret's
# name. A form's name may be bracketed (PHP's, Rails', qs': ``auth[password]=x``,
# ``headers[Authorization]=Bearer%20x``, percent-encoded ``headers%5BAuthorization%5D=``, in
# quotes as code writes it: ``headers["Authorization"]=``, ``headers['X-Api-Key']:``; encoded
# twice, ``headers%255BAuthorization%255D=``; no name starts at an encoded bracket's
# close, "5D" after its "%", where another bracket follows: read from each, a long run of
# them, "%5Bx%5D%5Bx%5D...", was read again to its end; an encoded bracket starts one, with no
# name before it, ``%5B0%5D%5Bpassword%5D=``, unless it follows a close: a run's brackets
# after its first are never read from): the
# last name in its brackets is the field's (:func:`_bracketed_name`). The quotes around the
# name and the value may be escaped (``{\"password\": \"x\"}``:
# JSON held in a JSON string, as a truncated body shows it), and so may blanks around the
# colon (``{\"password\":\n\"x\"}``; before it, two at most: each escape's letter starts
# a run of its own, and a long run of them is read once). Not an auth scheme's name
# ("Authorization: Bearer x"): the scheme pattern has hidden its credential and keeps the
# scheme readable. An authorization's or a cookie's unquoted value is read by its header's
# grammar (_AUTH_VALUE, _COOKIE_LINE, _COOKIE_VALUE): hidden whole, whatever its scheme or
# its cookies' names.
_FIELD_BRACKET = r"(?:(?:\[|%5b|%255b)(?:\\*+[\"'])?+[a-z0-9_.-]*+(?:\\*+[\"'])?+(?:\]|%5d|%255d))"
_FIELD = re.compile(
    r"(?i)(?<![a-z0-9_.-])(?!(?<=%)(?:25)?5d(?:\[|%5b|%255b))("
    rf"[a-z0-9_.-]++{_FIELD_BRACKET}*+|(?<!\])(?=%5b|%255b){_FIELD_BRACKET}++)"
    r"((?:\\*+[\"'])?\s*+(?:\\++[rnt]\s*+){0,2}+[:=]\s*+"
    r"(?:(?:\s|\\++[rnt])*+(?:\\*+[\"']|(?=\[)))?"
    r"|\\*+[\"'](?:\s|\\++[rnt])*+,(?:\s|\\++[rnt])*+b?\\*+[\"'])"
)
#: Backslashes that are not the escape of a line break or of a quote (``\r``, ``\n``, ``\"``
#: as a JSON string writes them, in an excerpt or a log of one; ``\\\"`` in a JSON string
#: held in another): taken with the character they escape. Those end a value, as the line
#: break or the quote they stand for would. Pairs escape themselves (``\\r`` is a backslash
#: and an "r": taken). An escaped line break ends a value only where a header line follows it
#: (``\r\nHost:``; an escaped tab too, headers joined by tabs: ``\tHost:``): elsewhere
#: (``password=Pa\rS``, a Windows path) it is the value's own text.
#: A run of them is taken or left whole, looked past once (one look per line break made the
#: pattern quadratic: 16 KB of ``\r`` after "password=" took seconds).
_ESCAPED = (
    r"(?:(?:\\\\)++(?:\\[^rnt\"'\s\\])?|\\[^rnt\"'\s\\]"
    r"|(?:\\[rnt])++(?![A-Za-z0-9_-]++:))"
)
#: The same, for a value in quotes: pairs of backslashes before an escaped quote are left to
#: it (``abc\\\"``: the close of a string held in a JSON string), so that the quote is found
#: as it is written.
_ESCAPED_IN_QUOTES = (
    r"(?:(?:\\\\)++(?!\\[\"'])(?:\\[^rn\"'\s\\])?|\\[^rn\"'\s\\]"
    r"|(?:\\[rn])++(?![A-Za-z0-9_-]++:))"
)
_FIELD_VALUE = re.compile(rf"(?i)(?!(?:bearer|jwt|basic)\s)(?:[^\"'&,\s}}\\]|{_ESCAPED})++")
#: A blank between a value's words: a space, a tab, or any other that breaks no line (a
#: no-break space, U+00A0 as a web page or a keyboard's Option-Space gives it, a thin one).
_WORD_BLANK = r"[^\S\n\r\x0b\x0c\x1c-\x1f\x85\u2028\u2029]"
#: What may follow a base64 word's padding: a blank, a separator, another "=", a mark that
#: closes the text around it (``(... ZGVm=)``, ``... ZGVm=.``), a quote that closes its string
#: (``"password: abc ZGVm="``, escaped in a JSON string), or the text's end.
_PADDING_END = r"[=\s,;&)\]}>]|\.(?![A-Za-z0-9_])|\\*+[\"'](?:[\s,;:)\]}>]|\\|\Z)|\Z"
#: A word that starts another field: a name, then a colon, or an "=" with a value after it
#: or a blank before it (``user=bob``, ``user = bob``, ``user="bob"``, ``status: 401``); not
#: a run that ends in "=" (``ZGVm==``, ``ZGVmZ2g= ``, ``ZGVmZ2g=,``, ``ZGVmZ2g=)``,
#: ``ZGVmZ2g="``: a base64 word's padding, the value's).
_NEXT_FIELD = rf"(?![A-Za-z0-9_.\[\]-]++(?:{_WORD_BLANK}*+:|{_WORD_BLANK}++=|=(?!{_PADDING_END})))"
#: The words after an unquoted secret value's first, the blanks between them (a passphrase:
#: ``password: correct horse battery``, ``password=my secret phrase``): taken up to the end of
#: the value's line, a quote or a brace closing the text around it, a form's "&" or a
#: separator, or a word that starts another field (``user=bob``, ``status: 401``: the
#: text's, shown). In a header-like line (``name: value``), words after a comma or a semicolon
#: too (``password: a, b``; not a field's after it: ``Token x, status=401``). One pass: each
#: word is read at most twice (once to see it starts no field).
_VALUE_WORD = rf"(?:[^\"'&,;\s}}\\<]|{_ESCAPED})++"
_VALUE_WORDS = re.compile(rf"(?:{_WORD_BLANK}++{_NEXT_FIELD}{_VALUE_WORD})*+")
_LINE_VALUE_WORDS = re.compile(
    rf"(?:{_WORD_BLANK}*+[,;]?+{_WORD_BLANK}*+{_NEXT_FIELD}{_VALUE_WORD})*+"
)
#: An authorization's value (RFC 9110 credentials): a scheme, then after blanks a credential:
#: either auth-params after commas (``username="bob", realm="r", response="..."``: Digest,
#: OAuth, MAC, AWS; a quoted value taken whole, spaces and commas and all), or one run (a
#: token68, or any run a server's echo may hold; a quoted string in it taken whole where a
#: value starts: first, or after "="), never both: what follows a token68 after a comma is
#: the text around it ("Token x, status=401"). The scheme stays readable when it is a known
#: one (:data:`_SHOWN_SCHEMES`); the credential is hidden to its end.
_QUOTED_STRING = r'"(?:[^"\\\r\n]|\\.)*+"?'
#: A quoted string whose quotes are escaped (``response=\"...\"`` in a JSON string, more
#: backslashes in a JSON string held in another): up to the next escaped quote or line break.
_ESCAPED_QUOTED_STRING = (
    r'\\++"(?:[^\\\r\n]|(?:\\\\)++(?:\\[^"rn\\\r\n])?|\\[^"rn\\\r\n])*+(?:\\++")?'
)
_AUTH_CHAR = rf"(?:[^\s,\"'<>&}}\\]|{_ESCAPED})"
_AUTH_RUN = rf"(?:(?<=[=\s])(?:{_QUOTED_STRING}|{_ESCAPED_QUOTED_STRING})|{_AUTH_CHAR})++"
# A parameter's value is quoted, or a run not starting with "=" (so that a token68's padding,
# "dXNl==", is not read as a parameter).
_AUTH_PARAM = (
    r"[A-Za-z0-9!#$%*+.^_`|~-]++[ \t]*+=[ \t]*+"
    rf"(?:{_QUOTED_STRING}|{_ESCAPED_QUOTED_STRING}|(?!=){_AUTH_CHAR}++)"
)
_AUTH_VALUE = re.compile(
    rf"(?P<scheme>{_AUTH_CHAR}++)"
    rf"(?:(?P<blank>[ \t]++)"
    rf"(?P<credential>{_AUTH_PARAM}(?:[ \t]*+,[ \t]*+{_AUTH_PARAM})*+(?:{_AUTH_RUN})?"
    rf"|{_AUTH_RUN}))?"
)
#: A first word that reads as a scheme's name: a known one, or letters and hyphens
#: ("Bearer-Token"); a run with digits may be a credential given without a scheme. Only a
#: known one is shown (:data:`_SHOWN_SCHEMES`).
_SCHEME_WORD = re.compile(r"[A-Za-z][A-Za-z-]{0,23}")
_KNOWN_SCHEMES = frozenset({"aws4-hmac-sha256", "scram-sha-1", "scram-sha-256"})
#: The schemes shown before a credential (``Authorization: Digest ***``, ``X-Auth-Token: Token
#: ***``): the value's first word may be the credential itself (``Authorization: Opensesame
#: status=401``), and any other is hidden with it.
_SHOWN_SCHEMES = frozenset(
    {
        *_KNOWN_SCHEMES,
        *("apikey", "aws", "basic", "bearer", "bearer-token", "concealed", "digest", "dpop"),
        *("gnap", "hawk", "hmac", "hoba", "jwt", "kerberos", "key", "liveperson", "mac"),
        *("mutual", "negotiate", "ntlm", "oauth", "privatetoken", "sharedkey", "ssws", "token"),
        *("vapid",),
    }
)
#: A cookie header's value ("Cookie: ...", "Set-Cookie: ..."): the rest of its line, up to
#: a line break, a quote closing the text around it, or their escapes (``\r\n`` and ``\"`` as
#: a JSON string writes them): every cookie, however they are joined (``; ``, `` ;``, a
#: folded Set-Cookie's ``, ``), and every attribute (``Expires=Wed, 21 Oct ...``). A quoted
#: cookie value (``sess="..."``, ``sess=\"...\"``, ``sess='...'`` as Python's SimpleCookie
#: prints it: aiohttp's ``response.cookies``) is taken whole; a single quote before a letter
#: or a digit is a value's own (``it's``, a cookie-octet), any other closes the text around.
_SINGLE_QUOTED = r"'(?:[^'\\\r\n]|\\.)*+'?"
_ESCAPED_SINGLE_QUOTED = _ESCAPED_QUOTED_STRING.replace('"', "'")
_COOKIE_LINE = re.compile(
    rf"(?:(?<==)(?:{_QUOTED_STRING}|{_SINGLE_QUOTED}|{_ESCAPED_QUOTED_STRING}"
    rf"|{_ESCAPED_SINGLE_QUOTED})|{_ESCAPED}"
    rf"|'(?=[A-Za-z0-9])|[^\r\n\"'\\}}&])++"
)
#: A cookie given as a name's value ("cookie=..."): ``name=value`` pairs (a value possibly
#: quoted) and attributes ("HttpOnly"), separated by semicolons.
_COOKIE_ITEM = (
    rf"(?:[^=;\s\"',&}}\\]|{_ESCAPED})++"
    rf"(?:=(?:\"[^\"\r\n]*+\"?|'[^'\r\n]*+'?|(?:[^;\s\"',&}}\\]|{_ESCAPED})*+))?+"
)
_COOKIE_VALUE = re.compile(rf"{_COOKIE_ITEM}(?:[ \t]*+;[ \t]*+{_COOKIE_ITEM})*+")
#: A quote with the backslashes before it, for :func:`_quoted_end`.
#: (From a run's first backslash only: one try per run, never one per backslash.)
_QUOTE_RUNS = {'"': re.compile(r'(?<!\\)\\*+"'), "'": re.compile(r"(?<!\\)\\*+'")}
#: A value given as a JSON array (``"Set-Cookie": ["a=b", "c=d"]``, Go's ``http.Header``):
#: hidden up to its closing bracket (brackets in its quoted strings are theirs), to the end
#: of the text when it is cut before it.
_ARRAY = re.compile(r'\[(?:[^\]"\\]|\\.|"(?:[^"\\]|\\.)*+"?)*+\]?')
#: A name given in the object a "value" field is in (HAR's ``{"name": "Authorization", "value":
#: "..."}``, a ``{"key": ..., "value": ...}`` list, in any order and with other fields between:
#: HAR's "comment", Postman's "type"): looked for in a short window before the field and
#: after its value, up to the object's brace, or up to the next object's "value" where no
#: brace bounds it (:func:`_object_names`). Its key may be unquoted (a Python class's repr,
#: ``Header(name='Authorization', value='...')``; Node's ``{ name: 'Authorization', ... }``;
#: YAML's ``- name: Authorization``; ``name=Authorization value=...``), and so may its value
#: then (a whole run). Other keys give a name too (:data:`_NAME_KEYS`: a validation error's
#: ``{"field": "password", "value": "..."}``, ``{"header": "Authorization", ...}``).
_BARE = r"[^\"'\\\s,;:=(){}\[\]<>]"
#: An unquoted name: up to a form's "&" too (``h[0][key]=Cookie&h[0][value]=...``).
_BARE_NAME = r"[^\"'\\\s,;:=(){}\[\]<>&]"
_NAME_FIELD = re.compile(
    r"(?i)(?:(?<![A-Za-z0-9_.-])|(?<=\\[rnt])|(?<=%5b)|(?<=%255b)|(?<=\.))"
    r"(?:name|key|header|field|param(?:eter)?)(?:\\*+[\"']|\]|%5d|%255d)?\s*+[:=]"
    r"(?:\s|\\++[rnt])*+"
    rf"(?:\\*+[\"']([^\"'\\\s]{{1,64}}+)\\*+[\"']|({_BARE_NAME}{{1,64}}+)(?!{_BARE_NAME}))"
)
#: What bounds the object a "value" field is in, around it: a brace (a nested object's, or
#: one in a string, balanced, is passed over), or the next or the previous object's "value"
#: key (as :data:`_FIELD` reads one) outside any nested object; not a "value" word that opens
#: a quoted string with no quote after it (``description: 'value: x'``: a string's text, not a
#: key), nor one inside a string whose value closes it, nor a brace in a string
#: (:func:`_string_bound`). Read backwards in a reversed window, so that one pass finds the
#: nearest before a field.
_OBJECT_BOUND_AFTER = re.compile(
    r"(?i)[{}]|(?:(?<![a-z0-9_.-])|(?<=\\[rnt])|(?<=%5b)|(?<=%255b)|(?<=\.))"
    r"(?:(?<=[\"'])value\\*+[\"']|(?<![\"'])value(?:\\*+[\"']|\]|%5d|%255d)?)\s*+[:=]"
)
_OBJECT_BOUND_BEFORE = re.compile(
    r"(?i)[{}]|[:=]\s*+(?:[\"']\\*+eulav|(?:\]|d5%|d552%)?eulav(?![\"']))"
    r"(?:(?![a-z0-9_.-])|(?=[rnt]\\)|(?=b5%)|(?=b552%)|(?=\.))"
)
#: How many of those are read around a field: past them (a window crowded with braces, a
#: hostile run's), the whole window is read as the object's (more names, never fewer).
_BOUNDS_READ = 8
#: An unquoted value's run, to look for its name after it (``value=x name=X-Api-Key``).
_BARE_VALUE = re.compile(rf"{_BARE}++")
#: The same, up to a form's "&" too, where a header object's value ends to look for its name
#: after it (``h%5B0%5D%5Bvalue%5D=x&h%5B0%5D%5Bname%5D=X-Api-Key``: no bracket ends it).
_BARE_FORM_VALUE = re.compile(rf"{_BARE_NAME}++")
#: A name given under a quoted key (``"name": "Authorization"``), for :func:`_braced_names`.
_QUOTED_NAME_FIELD = re.compile(
    r"(?i)\\*+[\"'](?:name|key|header|field|param(?:eter)?)\\*+[\"']\s*+:"
    r"(?:\s|\\++[rnt])*+\\*+[\"']([^\"'\\\s]{1,64}+)\\*+[\"']"
)
_NAMED_WINDOW = 256
#: How many escapes of a "value" field's quote widen its windows (8 characters each: the keys
#: around it are escaped alike): JSON held in JSON 12 levels deep, 2047 backslashes a quote.
_NAMED_WINDOW_ESCAPES = 2047
#: Which of a value's secret names reads it (:func:`_hide_secret_fields`): a cookie header's
#: grammar takes the most, then an authorization's, then a plain field's.
_NAMED_KIND_ORDER = {"cookie": 0, "authorization": 1, None: 2}
#: The keys that give the name of the object a "value" is in, in parsed JSON (any case).
_NAME_KEYS = frozenset({"name", "key", "header", "field", "param", "parameter"})
#: The name a header object's value cut before its end is read under: a plain credential's.
_UNREAD_NAME = "x-api-key"


def _is_scheme(word: str) -> bool:
    """Whether ``word``, first in a credential header's value, reads as an auth scheme's name
    (shown only when it is a known one)."""
    return _SCHEME_WORD.fullmatch(word) is not None or word.lower() in _KNOWN_SCHEMES


def _header_kind(name: str) -> str | None:
    """ "authorization" or "cookie" when a field called ``name`` (lower-cased) is such a header
    (``Proxy-Authorization``, ``Set-Cookie``), whose value has a grammar of its own."""
    if "authorization" in name:
        return "authorization"
    if name.endswith(("cookie", "cookie2")):
        return "cookie"
    return None


def _object_names(text: str, start: int, end: int) -> list[str]:
    """The names (:data:`_NAME_FIELD`) given in ``text[start:end]``: a window before a
    ``"value"`` key or after its value, cut at its object's brace."""
    return [found.group(1) or found.group(2) for found in _NAME_FIELD.finditer(text, start, end)]


def _names_before(text: str, key: int, window: int = _NAMED_WINDOW) -> list[str]:
    """The names an object gives before its ``"value"`` key, which starts at ``key``: up to
    the object's brace, or to the previous object's value where no brace bounds it (the
    names may then be the previous object's, after its value: ``H(value='a',
    name='Accept'), H(value=...``). A nested object between (``"meta": {"a": 1}``), braces
    in a string that balance (``"comment": "{x}"``), and a brace that is a string's whole
    text (``"note": "{"``, :func:`_lone_brace`), are passed over
    (:data:`_OBJECT_BOUND_BEFORE`)."""
    start = max(0, key - window)
    depth = 0
    bounds = (
        bound
        for bound in _OBJECT_BOUND_BEFORE.finditer(text[start:key][::-1])
        if not _string_bound(text, key - bound.start() - 1, "{", key - bound.start())
    )
    for bound in itertools.islice(bounds, _BOUNDS_READ):
        token = bound.group()
        if token == "}":
            depth += 1
        elif token == "{" and depth:
            depth -= 1
        elif token == "{" or not depth:
            # The object's own brace, or the previous object's value: the names after it.
            return _object_names(text, key - bound.start(), key)
    return _object_names(text, start, key)


def _names_after(text: str, close: int, window: int = _NAMED_WINDOW) -> list[str]:
    """The names an object gives after its ``"value"``'s value, which ends at ``close``: up to
    its object's closing brace (a nested object passed over), or the next object's
    ``"value"``."""
    end = min(len(text), close + window)
    depth = 0
    bounds = (
        bound
        for bound in _OBJECT_BOUND_AFTER.finditer(text, close, end)
        if not _string_bound(text, bound.start(), "}", bound.end())
    )
    for bound in itertools.islice(bounds, _BOUNDS_READ):
        token = bound.group()
        if token == "{":
            depth += 1
        elif token == "}" and depth:
            depth -= 1
        elif token == "}" or not depth:
            # The object's own brace, or the next object's value: the names before it.
            return _object_names(text, close, bound.start())
    return _object_names(text, close, end)


def _braced_names(text: str, key: int, close: int | None, window: int = _NAMED_WINDOW) -> list[str]:
    """The names keys give between a ``"value"`` key and its object's brace before it,
    and, when none of those names a secret (a plain one may be beside the header's:
    ``"field": "email"``), between its value's end (``close``) and its object's brace after
    it, whatever lies between: a "value" word in another field's string (``"comment":
    "value: none"``) reads as an object's bound to :func:`_names_before` and
    :func:`_names_after`, and the header's name beyond it was not read. A nested object
    between, or braces in a string that balance (``"hint": "{x}"``), are passed over. Within
    the object's brace, unquoted keys give names too (Node's ``{ key: 'X-Api-Key', ... }``);
    where none bounds the window, quoted ones only (YAML's list items are not the object's)."""
    start = max(0, key - window)
    braces = _BRACE.finditer(text[start:key][::-1])
    brace = _object_brace(
        (b for b in braces if not _string_bound(text, key - b.start() - 1, "{", key - b.start())),
        "}",
    )
    if brace is None:
        names = [found.group(1) for found in _QUOTED_NAME_FIELD.finditer(text, start, key)]
    else:
        names = _object_names(text, key - brace, key)
    if close is None or any(is_secret_header(name) for name in names):
        return names
    end = min(len(text), close + window)
    braces = _BRACE.finditer(text, close, end)
    brace = _object_brace(
        (b for b in braces if not _string_bound(text, b.start(), "}", b.end())), "{"
    )
    if brace is None:
        return names + [found.group(1) for found in _QUOTED_NAME_FIELD.finditer(text, close, end)]
    return names + _object_names(text, close, brace)


_BRACE = re.compile(r"[{}]")


#: What follows a string's close in a list of keys and values: a separator, a close, the end.
_AFTER_STRING = re.compile(r"(?:\\*+[\"'])[ \t]*+(?:[,;)\]}\r\n]|\\[rnt]|\Z)")


def _string_bound(text: str, at: int, own: str, end: int) -> bool:
    """Whether the object bound at ``text[at]`` (a brace, or a "value" key whose ":" or "="
    ends before ``end``), read away from a value, is a string's text and bounds no object: a
    lone brace (:func:`_lone_brace`); the brace that would be the value's object's own
    (``own``) closing a string (``hint="a {", ...``); a "value" word whose value, a bare run
    or a brace, closes a string (``hint='x, value: y', ...``, ``"value: {"``)."""
    char = text[at : at + 1]
    if char in ("{", "}"):
        return _lone_brace(text, at) or (
            char == own and _AFTER_STRING.match(text, at + 1) is not None
        )
    after = end
    while text[after : after + 1] in (" ", "\t"):
        after += 1
    if text[after : after + 1] in ("{", "}"):
        after += 1
    elif (bare := _BARE_VALUE.match(text, after, after + _NAMED_WINDOW)) is not None:
        # (Bounded: a run longer than a window is a key's value, its end never read.)
        after = bare.end()
    else:
        return False  # a quoted value, or none: a key's
    return _AFTER_STRING.match(text, after) is not None


def _lone_brace(text: str, at: int) -> bool:
    """Whether the brace at ``text[at]`` (if any: a bound may be a "value" key) is a string's
    whole text (``"note": "{"``, ``'}'``, ``\\"{\\"`` in a JSON string): in quotes alike on
    both sides, as deep (as many backslashes before each), so no object's brace. A few more
    of its kind may be the string's too (``"{{"``, ``"}}"``), and blanks on the side where an
    object's keys would be (``"{ "``, ``" }"``): not on the other (``"x"} "y"`` is an
    object's close between two strings)."""
    brace = text[at : at + 1]
    if brace not in ("{", "}"):
        return False
    inner = (brace, " ", "\t")
    first = at
    while (
        first > 0
        and at - first < _LONE_RUN
        and text[first - 1] in (brace if brace == "{" else inner)
    ):
        first -= 1
    last = at + 1
    while last - at <= _LONE_RUN and text[last : last + 1] in (inner if brace == "{" else (brace,)):
        last += 1
    quote = text[first - 1 : first] if first > 0 else ""
    if quote not in ('"', "'"):
        return False
    after = last
    while text[after : after + 1] == "\\":
        after += 1
    if text[after : after + 1] != quote:
        return False
    before = first - 1
    while before > 0 and text[before - 1] == "\\":
        before -= 1
    return first - 1 - before == after - last


#: How many more braces or blanks a lone brace's string may hold on either side.
_LONE_RUN = 8


def _object_brace(braces: Iterable[re.Match[str]], opener: str) -> int | None:
    """Where, among ``braces`` (read away from a value, an ``opener`` opening a nested
    object), the first that is no nested object's is; None past :data:`_BOUNDS_READ` of them
    or when there is none (the whole window is then read: more names, never fewer)."""
    depth = 0
    for brace in itertools.islice(braces, _BOUNDS_READ):
        if brace.group() == opener:
            depth += 1
        elif depth:
            depth -= 1
        else:
            return brace.start()
    return None


def _quote_depth(backslashes: int) -> int:
    """How deep in strings held in strings a quote after ``backslashes`` backslashes closes
    one: none, a string's own; one (``\\"``), a JSON string's in a JSON string; three, one
    more level; an even number escape themselves, and the quote is a string's own."""
    depth = 0
    while backslashes % 2:
        depth += 1
        backslashes //= 2
    return depth


def _quoted_end(text: str, start: int, quote: str, depth: int) -> int:
    """Where a value in quotes starting at ``start`` ends: at the first quote closing a string
    as deep as its own or shallower (an escaped quote inside it is deeper); at the text's end
    when it is cut before its close."""
    for found in _QUOTE_RUNS[quote].finditer(text, start):
        if _quote_depth(found.end() - found.start() - 1) <= depth:
            return found.start()
    return len(text)


#: An element's name, from its tag's "<"; a "name" or "key" attribute's value (or another
#: of the keys that give one, :data:`_NAME_KEYS`).
_TAG_NAME = re.compile(r"<([A-Za-z_][A-Za-z0-9_.:-]{0,63}+)")
_NAME_ATTRIBUTE = re.compile(
    r"(?i)(?<![A-Za-z0-9_.:-])(?:name|key|header|field|param(?:eter)?)\s*+="
    r"(?:\s|\\++[rnt])*+\\*+[\"']([^\"'\\\s]{1,64}+)\\*+[\"']"
)


def _tag_names(text: str, key: int, close: int | None) -> list[str]:
    """When the ``value`` attribute whose name starts at ``key`` is in an element's tag: the
    element's name and its "name" and "key" attributes' (before it, and after its value,
    which ends at ``close``, up to the tag's end); bounded work per field."""
    lt = text.rfind("<", max(0, key - _NAMED_WINDOW), key)
    if lt < 0 or text.find(">", lt, key) >= 0 or (tag := _TAG_NAME.match(text, lt)) is None:
        return []
    names = [tag.group(1).rpartition(":")[2]]
    names.extend(found.group(1) for found in _NAME_ATTRIBUTE.finditer(text, tag.end(), key))
    if close is not None:
        end = min(len(text), close + _NAMED_WINDOW)
        gt = text.find(">", close, end)
        after = _NAME_ATTRIBUTE.finditer(text, close, end if gt < 0 else gt)
        names.extend(found.group(1) for found in after)
    return names


def _value_end(text: str, start: int, punctuation: str) -> int | None:
    """Where a ``"value"`` field's value starting at ``start`` ends, to look for its name
    after it: a quoted one's close, a short array's (``["Token x"]``), an unquoted run's
    (``value: Token x``: its scheme's); None for any other (an object)."""
    opener = punctuation[-1]
    if opener in "\"'":
        escapes = len(punctuation) - len(punctuation[:-1].rstrip("\\")) - 1
        return _quoted_end(text, start, opener, _quote_depth(escapes))
    if text.startswith("[", start):
        # (Bounded: a list cut before its close, "value": [ after "value": [, is not read
        # to the text's end again for each.)
        end = min(len(text), start + 4 * _NAMED_WINDOW)
        if text.find("]", start, end) >= 0:
            found = _ARRAY.match(text, start, end)
            if found is not None and found.group().endswith("]"):
                return found.end()
        return None
    bare = _BARE_FORM_VALUE.match(text, start)
    return None if bare is None else bare.end()


def _opens_pair(text: str, name_start: int) -> bool:
    """Whether the quoted name starting at ``name_start`` is the first of a pair (a list's or
    a tuple's: ``["Authorization", ...]``, ``('Cookie', ...)``, ``[ "Cookie", ...]``, bytes
    as aiohttp's raw_headers print: ``(b'Cookie', ...)``), or an item of a flat list of names
    and values at an even place (Node's rawHeaders: ``["Host", "h", "Cookie", ...]``). Blanks
    may be escaped (``[\\n  \\"Cookie\\"``: a list pretty-printed in a JSON string)."""
    quote = name_start - 1  # the name's quote
    while quote > 0 and text[quote - 1] == "\\":
        quote -= 1
    if text[quote - 1 : quote] == "b" and (
        not _FIELD_NAME_CHAR.match(text[quote - 2 : quote - 1])
        or _ESCAPED_BLANK.fullmatch(text, max(0, quote - 3), quote - 1) is not None
    ):
        quote -= 1  # (a bytes literal's prefix, after a blank, escaped or not)
    at = quote
    while at > 0:
        if text[at - 1] in " \t\r\n":
            at -= 1
        elif at > 1 and text[at - 1] in "rnt" and text[at - 2] == "\\":
            at -= 2
            while at > 0 and text[at - 1] == "\\":
                at -= 1
        else:
            break
    if at == 0 or text[at - 1] not in "[(,":
        return False
    if text[at - 1] != ",":
        return True
    # After a comma: a pair's first only at an even place of a list of strings, counted from
    # its bracket in a bounded window; at an odd place it is an item of a list of names or
    # words ('["Content-Type", "Authorization", "X-LP-Account"]'). A list that cannot be read
    # so (longer than the window, not of plain strings) is taken as pairs: a leak costs more.
    bracket = text.rfind("[", max(0, quote - _LIST_WINDOW), quote)
    return bracket < 0 or _AT_ODD_PLACE.fullmatch(text, bracket, quote) is None


_FIELD_NAME_CHAR = re.compile(r"[A-Za-z0-9_.-]")
_ESCAPED_BLANK = re.compile(r"\\[rnt]")
_LIST_WINDOW = 512
# A list's items so far, an odd number of them: its bracket, then strings (plain, escaped in a
# JSON string, or bytes) each followed by a comma, blanks (escaped or not) anywhere between. A
# string closes with as many backslashes as it opens with: a bracket inside a string
# ('"[\\", "'), found as the list's, then reads as no list at all. Possessive throughout, so one
# pass reads it.
_LIST_BLANKS = r"(?:\s|\\++[rnt])*+"


def _list_item(group: int) -> str:
    return (
        rf"b?(?:(\\*+)\"(?:[^\"\\]|\\++[^\"\\])*+\{group}\""
        rf"|(\\*+)'(?:[^'\\]|\\++[^'\\])*+\{group + 1}')"
        rf"{_LIST_BLANKS},{_LIST_BLANKS}"
    )


_AT_ODD_PLACE = re.compile(rf"\[{_LIST_BLANKS}(?:{_list_item(1)}{_list_item(3)})*+{_list_item(5)}")


#: The last parts of a dotted name read as the field's name (others are read whole, as
#: ``headers.authorization`` is): a header object's value, a short name that says secret.
_DOTTED_LAST = frozenset({"value", *_SECRET_NAMES})

_BRACKET = re.compile(r"\[|\]|%5b|%5d|%255b|%255d")


def _bracketed_name(name: str) -> str:
    """The name a form's bracketed field gives its value (``name`` lower-cased): the last in
    its brackets (``options[headers][x-api-key]``: "x-api-key", as PHP and qs read it; its
    quotes taken off, ``headers["authorization"]``: "authorization"), or
    the name before them when they are empty or an index (``password[]``,
    ``password[0]``, ``user[password][1]``: a list of values, each the name's)."""
    parts = (part.strip("\\\"'") for part in reversed(_BRACKET.split(name)))
    return next((part for part in parts if part and not part.isdigit()), name)


#: A literal that holds no secret, after a short name's quoted key: JSON's (``"pass": true``)
#: or a Python repr's (``'pass': True``, ``'otp': None``), the value whole: up to the end of
#: its object, list or text, a comma, or an escaped line break (not ``"pass": true-horse``,
#: a value that only starts like one).
_JSON_FLAG = re.compile(r"(?:true|false|null|True|False|None)(?=\s*+(?:[,}\])]|\\|\Z))")


#: The library's own providers' subjects whose kind holds a secret name's word in a longer
#: name (:attr:`TokenProvider.subject`'s ``<kind>[<account>]``: "client_credentials_login",
#: "consumer_jwt"): before ": " a message's label (``consumer_jwt[123]: the token request
#: failed``), no field; the message after it is shown. Not "token" alone, a field's name, nor
#: a secret's name in the brackets (``consumer_jwt[password]: ...``, a form's field).
_OWN_SUBJECTS = frozenset({"client_credentials_login", "consumer_jwt"})
_OWN_SUBJECT = re.compile(r"([a-z_]++)\[([a-z0-9_.-]++)\]")
#: A URL up to its path's last "/", the whole run before a name (``POST https://h/x/token:
#: attempt 1 got 503``: the path's last segment, before ": " a message's label or a field's
#: name, its first word after it hidden only, "attempt", the rest shown). No
#: query, fragment, userinfo, quote or escape in it. Read from a blank's end only: one pass.
_URL_PATH_HEAD = re.compile(r"(?<!\S)[A-Za-z][A-Za-z0-9+.-]*+://(?:[^\s?#=&@\"'\\<>\[\]/]*+/)++\Z")
#: A password's name's parts: a URL path's last segment with one is read as a field's name.
_PASSWORD_PARTS = ("pass", "pwd", "credential")
#: How far back a name's URL is looked for (a URL longer than this is read as text is).
_URL_PATH_WINDOW = 2048


def _label(text: str, match: re.Match[str]) -> str | None:
    """What a field's name ``match`` (of :data:`_FIELD`) before ": " is when it may be a
    message's label: "subject", a provider's own (:data:`_OWN_SUBJECTS`), no field; "url", a
    URL path's last segment, whose value's first word only is hidden (it may be a message's
    first word or a credential: nothing tells them apart); else None, a field's name."""
    punctuation = match.group(2)
    if not (punctuation.startswith(":") and punctuation[1:2] in (" ", "\t")):
        return None
    name = match.group(1)
    if punctuation[-1] in "\"'" or text.startswith(('"', "'", "[", "\\"), match.end()):
        return None  # (a quoted value or a list: read as a field's)
    if name.endswith("]"):
        # (Its account in the brackets; a secret's name there is a form's field,
        # "consumer_jwt[password]: ...".)
        subject = _OWN_SUBJECT.fullmatch(name.lower())
        own = (
            subject is not None
            and subject.group(1) in _OWN_SUBJECTS
            and not is_secret_name(subject.group(2))
            and not is_secret_header(subject.group(2))
        )
        return "subject" if own else None
    start = match.start(1)
    if (
        text[start - 1 : start] != "/"
        or name.lower() in _DOTTED_LAST
        or _header_kind(name.lower()) is not None
        or name.lower() in SECRET_HEADERS
        or ("-" in name and is_secret_header(name))
        or any(part in name.lower() for part in _PASSWORD_PARTS)
    ):
        # (A header object's "value", a short secret name, a credential header's name, one
        # with a hyphen, "X-Auth-Token", or a password's: read as a field's, "PUT
        # https://h/users/1/password: <new password>".)
        return None
    found = _URL_PATH_HEAD.search(text, max(0, start - _URL_PATH_WINDOW), start)
    return None if found is None else "url"


def _hide_secret_fields(text: str, cut: bool = False) -> str:
    """``text`` with the value of each field whose name says secret hidden; one pass. When
    ``text`` is ``cut`` short of the text it is shown of (:func:`redact_cut`), a header
    object's value that ends near its end is hidden whatever its names: the name after it
    (``{"value": "...", "name": "Authorization"}``) may be past the cut, unread."""
    out: list[str] = []
    done = 0

    def fields() -> Iterator[re.Match[str]]:
        # A field wholly inside a value hidden already mostly has its value end where that
        # one does, and is passed over (read, a run of them made the pass quadratic); the last
        # of them is read, once that value is hidden, as its own may run past it (a cookie
        # line ends at a quote: 'value: none; header="Set-Cookie": ["sess=..."]', the
        # list's "Set-Cookie" is read then). So is the first header line's among them, before
        # it, whose value runs to its line's end ('...=Bearer%20x\\\\tcookie: a=1; sess=...',
        # a value in JSON held in a JSON string ending at the first cookie): two reads a
        # value hidden, each within it or past it.
        inside = header = None
        for found in _FIELD.finditer(text):
            if found.end() < done:
                if header is None and _header_kind(found.group(1).lower()) is not None:
                    header = found
                inside = found
                continue
            if inside is not None:
                if header is not None and header is not inside:
                    yield header
                yield inside
                inside = header = None
                if found.end() < done:
                    if _header_kind(found.group(1).lower()) is not None:
                        header = found
                    inside = found
                    continue
            yield found
        if header is not None and header is not inside:
            yield header
        if inside is not None:
            yield inside

    for match in fields():
        label = _label(text, match)
        if label == "subject":
            continue
        name = match.group(1).lower()
        punctuation = match.group(2)
        bracketed = name.endswith(("]", "%5d", "%255d"))
        if bracketed:
            name = _bracketed_name(name)
        elif "." in name and (last := name.rpartition(".")[2]) in _DOTTED_LAST:
            # A form's dotted name (``h.0.value=...``, ``user.pw=...``): read by its last part,
            # as a bracketed one is.
            name, bracketed = last, True
        if (
            name[1:] == "value"
            and name[0] in "rnt"
            and text[match.start(1) - 1 : match.start(1)] == "\\"
        ):
            name = "value"  # after an escaped line break or tab ("\\nvalue=": a JSON string's)
        named = name == "value"
        if named:
            # HAR's {"name": "Authorization", "value": "..."}, or the name after the value,
            # other fields between: the value is the header's.
            # (The windows widen with the value's escapes: the keys around it are escaped
            # alike, in JSON held in JSON held in JSON..., 2**depth - 1 backslashes a quote.
            # Bounded: each field's escapes are text it has read.)
            escapes = len(punctuation) - len(punctuation[:-1].rstrip("\\")) - 1
            window = _NAMED_WINDOW + 8 * min(escapes, _NAMED_WINDOW_ESCAPES)
            names = _names_before(text, match.start(1), window)
            close = None
            if not any(is_secret_header(n) for n in names):
                # No name, one that may be the previous object's (no brace between), or a
                # plain one beside the header's ('{"field": "email", "value": "...", "name":
                # "X-Api-Key"}'): the names after the value too, either may be its own.
                close = _value_end(text, match.end(), punctuation)
                names = names if close is None else names + _names_after(text, close, window)
                quoted = close is not None and punctuation[-1] in "\"'"
                raw = text.find(punctuation[-1], match.end(), close) if quoted else -1
                if raw >= 0:
                    # A quote before the close, read as escaped: a backslash may escape
                    # nothing there (an XML attribute's, '<header value="x\\"
                    # name="Authorization"/>'), and the value end at that quote.
                    names += _names_after(text, raw, window)
            if not any(_header_kind(n.lower()) == "cookie" and is_secret_header(n) for n in names):
                # (Past a cookie header's name, no other name reads the value further.)
                if close is None:
                    close = _value_end(text, match.end(), punctuation)
                # An XML element's attribute: '<header name="Authorization" value="..."/>',
                # '<password value="..."/>', the element's own name beside an attribute's
                # ('<Cookie name="session" value="..."/>'). And a "value" word in a string
                # may have cut the windows short: the names the object's quoted keys give
                # up to its braces, whatever lies between, before the value and after it.
                names = (
                    names
                    + _tag_names(text, match.start(1), close)
                    + _braced_names(text, match.start(1), close, window)
                )
            secrets = [n.lower() for n in names if is_secret_header(n)]
            if not names and bracketed:
                # A form's header objects written field by field, their names grouped apart
                # from their values ('h[0][name]=Accept&h[1][name]=X-Api-Key&h[0][value]=...
                # &h[1][value]=...'): no brace bounds a form's objects, and another's "value"
                # ends the windows above before any name. The names all around it read it (a
                # neighbour's value is hidden too; redact_url reads each by its prefix).
                after = match.end() if close is None else close
                around = _object_names(
                    text, max(0, match.start(1) - window), min(len(text), after + window)
                )
                secrets = [n.lower() for n in around if is_secret_header(n)]
            elif not secrets and bracketed:
                # The plain name beside it may be another object's, the form's fields in any
                # order ('h[0][name]=X-Api-Key&h[1][value]=json&h[1][name]=Accept&h[0][value]
                # =...'): its own object's name around it, by their prefix (as redact_url
                # reads it), reads it too.
                after = match.end() if close is None else close
                secrets = _form_object_names(
                    text,
                    match.group(1),
                    max(0, match.start(1) - window),
                    min(len(text), after + window),
                )
            if not secrets:
                if not (cut and close is not None and close + _NAMED_WINDOW > len(text)):
                    continue
                # Its names after it may be past the cut (a value as long as the margin):
                # read as a plain credential's.
                secrets = [_UNREAD_NAME]
            # A header's name with a grammar of its own reads the value whole (a cookie
            # line; an authorization's credential after its scheme): another beside it (a
            # validation error's "field": "password") would take its first word only.
            name = min(secrets, key=lambda n: _NAMED_KIND_ORDER[_header_kind(n)])
        kind = _header_kind(name)
        is_pair = punctuation[-1] not in ":=" and "," in punctuation
        if is_pair:
            # A pair of strings: only a credential header (or parameter) and its value, as a
            # header list writes them ('[("Authorization", "Token x")]', '["Cookie", "a=b"]',
            # '[("X-Api-Key", "x")]', a form's '[("password", "x")]').
            if not is_secret_header(name) or not _opens_pair(text, match.start(1)):
                continue
        elif (
            kind is None
            and not (
                is_secret_name(name)
                if bracketed
                else any(part in name for part in _SECRET_NAME_PARTS)
            )
            and not (
                # A short name as a quoted key with a quoted value ('{"pw": "x"}'), or a
                # number or a list after its colon ('{"pin": 1234', '{"otp": ["x"]': a body
                # cut before its end, hidden as parsed JSON's is; not a flag, '{"pass":
                # true', which holds no secret): a key, no label in a message.
                name in _SECRET_NAMES
                and punctuation[0] in "\"'\\"
                and (
                    punctuation[-1] in "\"'"
                    or (":" in punctuation and _JSON_FLAG.match(text, match.end()) is None)
                )
                and text[match.start(1) - 1 : match.start(1)] in ('"', "'")
            )
        ):
            continue
        opener = punctuation[-1]
        shown = end = match.end()  # what is kept: up to the value, or up to its scheme's end
        value: re.Match[str] | None = None
        if opener in "\"'":
            # A quoted value: hidden up to its closing quote (a backslash escapes one), spaces,
            # commas and all; to the end of the text when it is cut before its close. Its
            # quotes may be escaped (JSON in a JSON string: '{\\"password\\": \\"x\\"}').
            escapes = len(punctuation) - len(punctuation[:-1].rstrip("\\")) - 1
            end = _quoted_end(text, match.end(), opener, _quote_depth(escapes))
            if is_pair and text[match.end() : end].lower() in _HEADER_NAMES:
                # A list of header names ('["Authorization", "X-Request-Id"]', 'Vary:
                # ["Cookie", "Accept-Encoding"]'): the second is a name, no credential.
                continue
        elif text.startswith("[", match.end()):
            # A list of values ("Cookie": ["a=b"]): hidden whole.
            value = _ARRAY.match(text, match.end())
        elif kind == "authorization":
            # "Authorization: <scheme> <credential>", whatever the scheme ("Token", "Digest
            # username=..., response=..."): the credential hidden to its end, the scheme shown
            # when it is a known one (:data:`_SHOWN_SCHEMES`); a lone value (no scheme), or one
            # whose first word is no known scheme's ("Opensesame status=401": a password of
            # letters, or a vendor's scheme) hidden whole.
            value = _AUTH_VALUE.match(text, match.end())
            if (
                value is not None
                and value.group("credential")
                and value["scheme"].lower() in _SHOWN_SCHEMES
            ):
                shown = value.end("blank")
        elif kind == "cookie":
            # A header ("Cookie: ...", or a header object's value: "name=Cookie value=...")
            # to its line's end; a name's value ("cookie=...") by the cookies' grammar.
            grammar = _COOKIE_LINE if ":" in punctuation or named else _COOKIE_VALUE
            value = grammar.match(text, match.end())
        elif (
            (named or (":" in punctuation and "-" in name))
            and is_secret_header(name)
            and (scheme := _AUTH_VALUE.match(text, match.end())) is not None
            and scheme.group("credential")
            and _is_scheme(scheme["scheme"])
        ):
            # Another credential header's value, as a header object's or a header line
            # ("X-Auth-Token: Token x", "name=X-Auth-Token value=Digest username=...,
            # response=..."): a scheme's, read as an authorization's, the scheme shown when
            # it is a known one (:data:`_SHOWN_SCHEMES`). Another first word may be the
            # credential itself (a password of letters: "X-Api-Key: Opensesame status=401")
            # or a vendor's scheme before it: hidden with the rest.
            value = scheme
            if scheme["scheme"].lower() in _SHOWN_SCHEMES:
                shown = scheme.end("blank")
        else:
            value = _FIELD_VALUE.match(text, match.end())
        if value is not None:
            end = value.end()
            if (
                (kind != "cookie" or not (":" in punctuation or named))
                and not text.startswith("[", match.end())
                and (text[match.start() - 1 : match.start()] not in ("?", "&"))
                and label is None
            ):
                # A passphrase's words after its first (a cookie's, given as a name's
                # value, after its cookies: "cookie=sess abc def"; a cookie line is read to
                # its end); not a query's ("?password=x took 3 ms": a URL's value has no
                # blank), nor a URL's label's ("POST https://h/x/token: attempt 1 got 503":
                # its first word only, the rest a message's).
                words = _LINE_VALUE_WORDS if ":" in punctuation else _VALUE_WORDS
                if (more := words.match(text, end)) is not None:
                    end = more.end()
        elif opener not in "\"'":
            continue
        if match.start() < done:
            # Inside a value hidden already ("api_key=abc;password=x"): hidden to its end.
            done = max(done, end)
            continue
        out.append(text[done:shown])
        out.append(REDACTED)
        done = end
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


#: An element whose name says secret, in XML or HTML (``<Authorization>Token x</...>``,
#: ``<password>x</password>``, ``<Authorization type="x">``, ``<![CDATA[x]]>``): its text
#: hidden, up to the next tag, or a CDATA section whole, blanks before it and all (escaped
#: ones too, in a JSON string; to the text's end when it is cut before its close). An empty
#: element (``<Token type="x"/>``) has no text: what follows it is not its. The name is
#: decided in Python (:func:`_hide_element`); attributes are kept (the fields' pass reads
#: those named like a secret's).
_ELEMENT = re.compile(
    r"<([A-Za-z_][A-Za-z0-9_.:-]{0,63}+)((?:\s[^<>]*+)?+)(?<!/)>"
    r"((?:\s|\\++[rnt])*+<!\[CDATA\[(?:[^\]]|\](?!\]>))*+(?:\]\]>)?|[^<]++)"
)


#: A key element's text, the last in a window before a value element (``<key>Authorization
#: </key><value>...``, .NET's ``<a:Key>...</a:Key><a:Value>``): the value's name.
_KEY_ELEMENT = re.compile(
    r"(?i)<(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}+:)?(?:key|name)>\s*+([^<\s]{1,64}+)\s*+"
    r"</(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}+:)?(?:key|name)>\s*+\Z"
)


def _hide_element(match: re.Match[str], text: str) -> str:
    name = match.group(1).rpartition(":")[2]  # (a namespace's prefix is no part of it)
    if name.lower() == "value":
        # Named by the key element just before it: a dictionary's entry as XML.
        key = _KEY_ELEMENT.search(text[max(0, match.start() - _NAMED_WINDOW) : match.start()])
        name = "" if key is None else key.group(1)
    if not is_secret_header(name):
        return match.group(0)
    return f"<{match.group(1)}{match.group(2)}>{REDACTED}"


# Credential-looking fragments in free text, each with its replacement: "Bearer x", "jwt x",
# OAuth params (then the fields, above), the short names, the UMS path's bearer, a URL's
# userinfo, and a JWT anywhere.
# A run of backslashes in a credential after its scheme or in an OAuth 1 parameter's value:
# the credential's own text only where a credential's character follows the run (``\/``, a
# JSON string's escaped slash), never where the run escapes a line break, a tab or a quote at
# any depth (``\n``, ``\\r\\n``, ``\t``, ``\\\"``), nor before a header's name
# (``abc\Cookie:``). The run is looked at whole and once (a pair of it is never read as an
# escaped backslash with the escape after it as the credential's text, which ate the next
# header's name and showed its value), so that a long run costs one pass.
_B_ESCAPED = r"\\++(?=[A-Za-z0-9._~+/=-])(?![rnt])(?![A-Za-z0-9_-]++:)"
# A character of a credential after its scheme: a token68's, or a backslash run as above.
_B_CHAR = rf"(?:[A-Za-z0-9._~+/-]|{_B_ESCAPED})"
# One "name=value" after a credential's scheme: the value quoted (escaped in a JSON string, or
# not; backslashes inside it taken, but for those escaping its closing quote), or a run. (A
# quote that closes the text around it is not a value: '"Basic dXNl=", ...'. A run ends at a
# tag, as an authorization's does: '<Authorization>Bearer x=y</Authorization><Host>', and at
# a CDATA section's close, "]]>" before a tag, a blank, a quote or the text's end; elsewhere
# it is the run's own text, 'x=ab]]>cd'.)
_B_PARAM = (
    rf"{_B_CHAR}++[ \t]*+=[ \t]*+"
    r"(?:\\*+\"(?=[^\s,\]}:])(?:[^\"\\]|\\++(?!\"))*+(?:\\*+\")?"
    rf"|(?:[^\s\"',;&}}<\\\]]|\](?!\]>(?:[\s<\\\"']|$))|{_B_ESCAPED})*+)"
)
_TEXT_BEFORE_FIELDS: tuple[tuple[re.Pattern[str], str], ...] = (
    # The credential, whatever its shape: "name=value" pairs after the scheme ('Bearer
    # Token="x"', 'Bearer username="bob", response="x"', 'Bearer x = y') hidden whole, else a
    # token68 (padding and all). A quote closing the text around it ('"Bearer x"') stays. A
    # challenge's parameters ('Bearer realm="api", error=...') are hidden too: a leak costs
    # more than a hidden realm.
    (
        re.compile(
            r"(?i)(?:\b|(?<=\\[rnt])|(?<=\\[ux]00[01][0-9a-f])|(?<=\\x[01][0-9a-f]))"
            r"(bearer|jwt|basic)\s+(?:"
            rf"{_B_CHAR}{{4,}}+=++(?=[ \t]*+(?:[,;]|\s|$|\\*+\"(?![A-Za-z0-9])))"
            rf"|{_B_PARAM}(?:[ \t]*+,[ \t]*+{_B_PARAM})*+"
            rf"|{_B_CHAR}{{4,}}+=*+(?:[ \t]*+=)?+)"
        ),
        rf"\1 {REDACTED}",
    ),
    # Quoted as the quotes around it are: escaped ('\\"', '\\\\\\"') in a JSON string.
    (
        re.compile(
            r'(?i)(oauth_(?:signature|token|consumer_key|nonce))=(\\*+"|)'
            rf'(?:[^"\\,\s]|{_B_ESCAPED})*+(?:\2)?'
        ),
        rf"\1=\2{REDACTED}\2",
    ),
)


def _hide_short_value(match: re.Match[str]) -> str:
    """A short name's value hidden, the words after its first too (a passphrase's), but for a
    query's (after "?" or "&": a URL's value has no blank, what follows is the text's)."""
    before = match.string[max(0, match.start(1) - 6) : match.start(1)]
    query = before.endswith(("?", "&", "\\u0026"))
    return f"{match[1]}{match[2]}{REDACTED}{match[4] if query else ''}"


_TEXT_AFTER_FIELDS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # The whole-name ones, only as name=value (a query string, a form): in "name: value" they
    # are as often a field's label in a message. A name may follow an escaped line break or
    # tab ("\\r\\npw=x": a form or a header block in a JSON string), or an escaped "&" as
    # Go's encoding/json writes it ("user=bob\\u0026pw=x", an Azure SAS URL's "\\u0026sig=").
    # The value's words after its first are a passphrase's (:data:`_VALUE_WORDS`).
    (
        re.compile(
            r"(?i)(?:(?<![a-z0-9_.-])|(?<=\\[rnt])|(?<=\\u0026)|(?<=\\[ux]00[01][0-9a-f])"
            r"|(?<=\\x[01][0-9a-f]))("
            + "|".join(sorted(_SECRET_NAMES))
            + rf")(\s*=\s*(?:\\*+[\"'])?)((?:[^\"'&,\s}}\\]|{_ESCAPED})++)"
            + rf"((?:{_WORD_BLANK}++{_NEXT_FIELD}{_VALUE_WORD})*+)"
        ),
        _hide_short_value,
    ),
    (re.compile(r"(/brand/)[^/?#\s\"']+"), rf"\1{REDACTED}"),
    # A URL's userinfo ("https://user:password@host"), which redact_url drops from a URL, up
    # to its last "@" ("https://bob:p@ss@host": a URL's parser reads the host after it, the
    # password "p@ss"). (The scheme is a whole run, never a part of one: a long run costs one
    # pass.)
    (
        re.compile(r"(?i)(?<![a-z0-9+.-])([a-z0-9+.-]++://)(?:[^/?#\s@\"']*+@)++"),
        rf"\1{REDACTED}@",
    ),
)


def is_secret_name(name: str) -> bool:
    """Whether a parameter, key or field called ``name`` holds a credential."""
    key = name.lower().replace("-", "").replace(".", "")
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_NAME_PARTS)


def is_auth_path(path: str) -> bool:
    """Whether ``path`` is an auth endpoint whose bodies are credentials."""
    return bool(_AUTH_PATH.search(path))


def redact_path(path: str) -> str:
    """The path with in-path credentials (the bearer after ``/brand/``) replaced."""
    segments = path.split("/")
    for i in range(1, len(segments)):
        if segments[i - 1] in _SECRET_PATH_AFTER and segments[i]:
            segments[i] = REDACTED
        elif ";" in segments[i]:
            # Matrix parameters (";jsessionid=...", a Java server's URL rewriting).
            head, *params = segments[i].split(";")
            segments[i] = ";".join(
                [head]
                + [
                    f"{p.partition('=')[0]}={REDACTED}"
                    if "=" in p and is_secret_name(unquote(p.partition("=")[0]))
                    else p
                    for p in params
                ]
            )
    return "/".join(segments)


#: How much of a URL's query (as sent, percent-encoded) :func:`redact_url` reads and shows:
#: four times a request line most servers take (8 KB), so that any URL a server answered is
#: shown whole, and one of megabytes (a caller's own) costs what 32 KB does.
URL_QUERY_LIMIT = 32_768


def redact_url(url: URL | str) -> str:
    """The URL with userinfo dropped, secret query values and in-path bearers replaced.

    The query is shown decoded (``q=café``, ``sort=key:asc``), but for a character that is
    not printable (a CR, LF or any other control character, a line or paragraph separator),
    which stays percent-encoded as it was sent (``%0D%0A``): a query value taken from outside
    cannot start a line of its own in a log or an error message. A query longer than
    :data:`URL_QUERY_LIMIT` (as sent) is shown up to the last of its items that ends within
    it, then ``&…``: an item is shown whole or not at all (never half a credential), a
    header object's ``value`` whose name is not among those shown is hidden (its name may be
    past the cut: ``value=...&name=Authorization``), as are its values when they outnumber its
    names shown (``value=json&name=Accept&value=...``), and a URL of any length costs what one
    of that limit does."""
    try:
        u = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        return "<unparseable url>"
    if u.user is not None or u.password is not None:
        u = u.with_user(None)
    path = redact_path(u.raw_path)
    cut = len(u.raw_query_string) > URL_QUERY_LIMIT
    items: Iterable[tuple[str, str]] = ()
    if not cut:
        items = u.query.items()
    elif (end := u.raw_query_string.rfind("&", 0, URL_QUERY_LIMIT + 1)) > 0:
        # Only the items that end within the limit are read (the rest is never decoded).
        raw = u.raw_query_string[:end]
        items = URL.build(query_string=raw, encoded=True).query.items()
    items = list(items)
    # A header object as a form's bracketed fields ("h[0][name]=Authorization&h[0][value]=...",
    # the name under any key that gives one): the value is the named header's.
    # (In a query cut short, a value whose object's name is not among the items shown may
    # have it past the cut, unread: hidden, as a plain credential's; so are an object's
    # values when they outnumber its names shown, "value=json&name=Accept&value=..." then
    # the cut: one of them has its name past it.)
    fields = [_form_field(k) for k, _ in items]
    named = {
        prefix
        for (prefix, last), (_, v) in zip(fields, items, strict=True)
        if last.lower() in _NAME_KEYS and is_secret_header(v)
    }
    unnamed = set()
    if cut:
        unpaired: dict[str, int] = {}
        for prefix, last in fields:
            if last.lower() == "value":
                unpaired[prefix] = unpaired.get(prefix, 0) + 1
            elif last.lower() in _NAME_KEYS:
                unpaired[prefix] = unpaired.get(prefix, 0) - 1
        unnamed = {prefix for prefix, count in unpaired.items() if count > 0}
    # A form's last name reads as a header's too ("headers[Cookie]=...", "headers.Cookie=...").
    query = "&".join(
        f"{_printable(k)}="
        + (
            REDACTED
            if is_secret_name(k)
            or (prefix and is_secret_header(_bracketed_name(last.lower())))
            or (last.lower() == "value" and (prefix in named or prefix in unnamed))
            else _printable(_query_value(v))
        )
        for (k, v), (prefix, last) in zip(items, fields, strict=True)
    )
    if cut:
        query = f"{query}&…" if query else "…"
    origin = f"{u.scheme}://{u.raw_authority}" if u.is_absolute() else ""
    return f"{origin}{path}" + (f"?{query}" if query else "")


#: What each of redact_text's rules needs in the text it hides something of, the text
#: case-folded and "-" and "." taken out (as :func:`is_secret_name` reads a name): a secret
#: name's part or a short one, a header with a grammar of its own, HAR's "value", a scheme,
#: OAuth 1, a tag, a userinfo's "@", the UMS path, a JWT. A new rule adds what it needs here
#: (the redact_text fuzz target checks that text with none of them is shown as it is).
_MAY_HIDE = re.compile(
    "|".join(
        re.escape(word)
        for word in sorted(
            {
                *(part.replace("-", "").replace(".", "") for part in _SECRET_NAME_PARTS),
                *_SECRET_NAMES,
                "cookie",
                "value",
                "bearer",
                "basic",
                "jwt",
                "oauth",
                "<",
                "@",
                "/brand/",
                "eyj",
            }
        )
    )
)
_NO_SEPARATORS = str.maketrans("", "", "-.")


def _may_hide(text: str) -> bool:
    """Whether :func:`redact_text` may hide anything of ``text``: False only when it shows
    ``text`` as it is; one pass."""
    return _MAY_HIDE.search(text.casefold().translate(_NO_SEPARATORS)) is not None


def _form_field(key: str) -> tuple[str, str]:
    """A form's bracketed key as its object's prefix and its last name (``h[0][value]``:
    ``("h[0]", "value")``, ``h[0][value][]`` and ``h[0][value][1]`` alike: a list of
    values, each the name's; its brackets percent-encoded too, as a query encoded twice
    shows them once decoded: ``h%5B0%5D%5Bvalue%5D``); a dotted key's alike (``h.0.value``:
    ``("h.0", "value")``); ``("", key)`` for a key with neither."""
    if "%" in key:
        key = _ENCODED_BRACKET.sub(lambda found: "[" if found.group() in "%5b%5B" else "]", key)
    end = len(key)
    while key.endswith("]", 0, end):
        # (Read from the end, once: a key of many indexes costs one pass.)
        opener = key.rfind("[", 0, end)
        index = key[opener + 1 : end - 1]
        if opener <= 0 or not (index == "" or index.isdigit()):
            break
        end = opener
    key = key[:end]
    if key.endswith("]"):
        prefix, bracket, last = key[:-1].rpartition("[")
        if bracket and "]" not in last:
            return prefix, last
    if "." in key:
        # A dotted name (``h.0.value``: ``("h.0", "value")``).
        prefix, _, last = key.rpartition(".")
        if prefix and last:
            return prefix, last
    return "", key


_ENCODED_BRACKET = re.compile(r"%5[bBdD]")
#: A form's field in text, for :func:`_form_object_names`: a key (bracketed, dotted,
#: percent-encoded) and a short value, a header's name.
_FORM_PAIR = re.compile(
    r"(?<![A-Za-z0-9_.%\[\]-])([A-Za-z0-9_.%\[\]-]++)=([^&\s\"'<>=]{1,64}+)(?![^&\s\"'<>=])"
)


def _form_object_names(text: str, key: str, start: int, end: int) -> list[str]:
    """The secret headers' names (lower-cased) that the form's fields in ``text[start:end]``
    give the object whose value's key is ``key`` (``h[0][value]``: those of ``h[0][name]=``,
    ``h[0][key]=``..., as :func:`redact_url` pairs them by their prefix)."""
    prefix = _form_field(_unquote_brackets(key))[0].lower()
    if not prefix:
        return []
    names = []
    for found in _FORM_PAIR.finditer(text, start, end):
        other, last = _form_field(_unquote_brackets(found.group(1)))
        value = unquote(found.group(2))
        if other.lower() == prefix and last.lower() in _NAME_KEYS and is_secret_header(value):
            names.append(value.lower())
    return names


def _unquote_brackets(key: str) -> str:
    """``key`` with its brackets percent-encoded twice read as encoded once (``%255B``:
    ``%5B``), as :func:`_form_field` reads them."""
    return (
        key.replace("%255B", "%5B")
        .replace("%255b", "%5b")
        .replace("%255D", "%5D")
        .replace("%255d", "%5d")
    )


def _printable(text: str) -> str:
    """``text`` with each character that is not printable percent-encoded (in UTF-8), as a
    URL sends it; a printable ``text`` (the usual one) as it is."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in text
    )


def _query_value(value: str) -> str:
    """A query value under a plain name, as it may be shown: one that nests another URL or
    query ("redirect_uri=https://cb/?access_token=...") scrubbed as free text, a JWT hidden;
    any other as it is (free text's rules would garble "sort=key:asc", "q=Basic plan").
    Two substring checks for a plain value: a call with params pays for its URL's display."""
    if "=" in value or "://" in value or "@" in value or '"' in value or "'" in value:
        # A quote too: a JSON value ('{"access_token": "..."}') names its secrets quoted.
        # (Only where free text's rules may hide something: "q=a=b" is shown as it is
        # without a dozen passes for each of a long query's values.)
        return redact_text(value) if _may_hide(value) else value
    if "eyJ" in value:
        value = _hide_jwts(value)
    if not value.isalnum():  # (a word or a number has no scheme, no pair: the common case)
        # An auth scheme and its credential ("Bearer 9f8e...", "Basic dXNl..."): 16 characters
        # or more with a digit, so that words ("Basic plan", "token authentication_failures")
        # stay readable.
        value = _SCHEME_CREDENTIAL.sub(_hide_scheme_credential, value)
        if ":" in value:
            # "access_token:9f8e...", in any pair of the value: a name that says secret.
            value = _hide_named_pairs(value)
    return value


def _hide_scheme_credential(match: re.Match[str]) -> str:
    return f"{match.group(1) or match.group(2)} {REDACTED}"


def _hide_named_pairs(value: str) -> str:
    """``value`` with the value of each "name:value" pair whose name says secret hidden (up to
    a space; an authorization's, "Bearer x" and all, up to a separator). One pass over the
    value, whatever its shape."""
    out: list[str] = []
    done = 0
    for match in _PAIR.finditer(value):
        if match.start() < done:
            continue  # inside an authorization's value, hidden already
        key = match.group(1).lower().replace("_", "").replace("-", "").replace(".", "")
        if "authorization" in key:
            found = _PAIR_END.search(value, match.end())
            end = len(value) if found is None else found.start()
        elif any(part in key for part in _NAMED_SECRET_PARTS):
            taken = _PAIR_VALUE.match(value, match.end())
            if taken is None:
                continue
            end = taken.end()
        else:
            continue
        out.append(value[done : match.end(2)])
        out.append(REDACTED)
        done = end
    if not out:
        return value
    out.append(value[done:])
    return "".join(out)


def is_secret_header(name: str) -> bool:
    """Whether a header called ``name`` holds a credential: the known ones
    (:data:`SECRET_HEADERS`), and any other whose name says so as a parameter's would
    (``X-Auth-Token``, ``X-Session-Id``, a custom endpoint's ``X-Partner-Key``). A server's
    challenge (``WWW-Authenticate``) is not one: it says why a credential was refused."""
    key = name.lower()
    return key in SECRET_HEADERS or (key not in _CHALLENGE_HEADERS and is_secret_name(key))


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """A plain dict of the headers with credential values replaced (:func:`is_secret_header`)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in items}


def redact_json(value: Any) -> Any:
    """A copy of a JSON value with every credential-named key's value replaced, and every
    string scrubbed as free text while its quotes are still quotes: written out, a string
    holding JSON or ``password="..."`` has them escaped (``\\"``), which free text's rules do
    not read as quotes (an echoed ``{"access_token": ...}`` filter was shown whole)."""
    if isinstance(value, dict):
        # A header or a parameter as an object of its own (HAR's {"name": "Authorization",
        # "value": "..."}, a {"key": ..., "value": ...} list): its value is the named one's.
        # (Its name under any of the keys that give one, in any case: .NET's KeyValuePair
        # writes {"Key": ..., "Value": ...}; a validation error, {"field": "password", ...}.)
        named_secret = any(
            isinstance(k, str)
            and k.lower() in _NAME_KEYS
            and isinstance(v, str)
            and is_secret_header(v)
            for k, v in value.items()
        )
        return {
            k: (
                REDACTED
                if isinstance(k, str)
                and (_is_secret_key(k) or (named_secret and k.lower() == "value"))
                else redact_json(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, str) and not isinstance(value, _Number):  # (a number kept as written)
        return redact_text(value)
    return value


def _is_secret_key(key: str) -> bool:
    """Whether a JSON key names a credential: as a parameter's name would, or as a header's
    (a body echoing a request's headers: ``"Cookie"``, ``"Set-Cookie"``)."""
    return is_secret_name(key) or key.lower() in SECRET_HEADERS


def redact_text(text: str) -> str:
    """Free text with credential-looking fragments replaced: a name's value that says secret,
    an ``Authorization`` or ``Proxy-Authorization`` value under any scheme (the scheme shown,
    its credential and parameters hidden), a ``Cookie`` or ``Set-Cookie`` value, a scheme's
    credential ("Bearer x"), OAuth parameters, a URL's userinfo, the UMS path's bearer, a JWT.
    A value is found as JSON writes it too: quoted with escaped quotes (JSON in a JSON
    string), as an array (``"Cookie": ["..."]``), as HAR's ``{"name": "Authorization",
    "value": "..."}`` (the name before or after the value, other fields between, its keys
    quoted or not: ``Header(name='Authorization', value='...')``), and as an
    XML element's text
    (``<Authorization>...</Authorization>``, with attributes, or a CDATA section; a
    ``<value>`` element after a ``<key>`` or ``<name>`` one naming it, a dictionary's entry).
    A value ends where its line does, written ``\\r\\n`` in a JSON string as well; an unquoted
    one runs past its blanks (a passphrase: ``password: my secret phrase``) up to a separator
    or a word that starts another field (``user=bob``, shown), a query's ends at its blank.
    A provider's own subject before ": " names no field (``consumer_jwt[123]: ...``): its
    message is shown whole. A URL path's last segment before ": " may label a message or name
    a field (``POST https://h/x/authenticate: attempt 1 got 503``): the first word after it
    is hidden, the rest shown."""
    cut = isinstance(text, _CutText)  # (redact_cut's: see _hide_secret_fields)
    for pattern, replacement in _TEXT_BEFORE_FIELDS:
        text = pattern.sub(replacement, text)
    if "<" in text:
        text = _ELEMENT.sub(lambda match: _hide_element(match, text), text)
    text = _hide_secret_fields(text, cut)
    for pattern, hide in _TEXT_AFTER_FIELDS:
        text = pattern.sub(hide, text)
    # Three base64url segments, the first starting like a JSON header.
    return _hide_jwts(text)


#: How far past what is shown :func:`redact_cut` reads: a value's name is looked for within
#: a few hundred characters either side of it (a bracket's list within 512), and a credential
#: whose end marks it (a URL's userinfo by its "@") is no longer than a header line a server
#: takes (8 KB by default, aiohttp's and most servers'), so 32 KB more hides what the whole
#: text would, and bounds the work of a text of any length (about 0.5 s of CPU for the most
#: hostile text, a few ms for a plain one).
CUT_MARGIN = 32_768


def redact_cut(text: str, limit: int) -> str:
    """``text`` as shown cut to ``limit`` characters: :func:`redact_text` of its first
    ``limit`` + :data:`CUT_MARGIN` characters (never the whole: a caller's exception text of a
    megabyte took seconds of the loop's CPU a line), then cut, so that the cut never leaves
    half a secret unrecognised. A header object's value that ends near the margin's end, or
    runs past it, is hidden whatever its names: its name may follow it, past what is read
    (``{"value": "<32 KB>", "name": "Authorization"}``)."""
    head = text[: limit + CUT_MARGIN]
    return redact_text(_CutText(head) if len(head) < len(text) else head)[:limit]


class _CutText(str):
    """A text :func:`redact_cut` has cut short of the text it shows a part of."""

    __slots__ = ()


#: Three dot-separated base64url runs, each a whole run (a JWT is looked for in the first).
_DOTTED = re.compile(r"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]++)\.[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+")


def _hide_jwts(text: str) -> str:
    """``text`` with every JWT (what :data:`_JWT` matches) hidden, in one pass: the pattern
    itself, tried at every "eyJ" of a long run, scanned the run again from each (100 KB of
    "eyJ-" took seconds)."""
    if "eyJ" not in text:
        return text
    out: list[str] = []
    done = pos = 0
    while (match := _DOTTED.search(text, pos)) is not None:
        first, start = match.group(1), match.start(1)
        at = first.find("eyJ")
        # At a word's start, as the pattern's \b: not inside a word ("xeyJ..."); after an
        # escaped line break or tab too ("\\r\\neyJ...", in a JSON string).
        while (
            at > 0
            and (first[at - 1].isalnum() or first[at - 1] == "_")
            and not (at == 1 and first[0] in "rnt" and text[start - 1 : start] == "\\")
        ):
            at = first.find("eyJ", at + 1)
        if at < 0 or len(first) - at < 4:
            pos = match.end(1) + 1  # not this one: its second run may start one
            continue
        out.append(text[done : start + at])
        out.append(REDACTED)
        done = pos = match.end()
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


class _Number(str):
    """A JSON number's text as the body had it, for :func:`_compact_json`."""

    __slots__ = ()


def _compact_json(value: Any) -> str:
    """``value`` as one line of compact JSON, its numbers as the body wrote them and its text
    unescaped (an excerpt is read by people)."""
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{_compact_json(k)}:{_compact_json(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(_compact_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def body_excerpt(body: bytes, *, path: str = "", limit: int = 300) -> str:
    """A short, scrubbed excerpt of a response body, for error messages and logs.

    Bodies of auth endpoints are never shown; JSON bodies have credential keys replaced; any
    other text is scrubbed of credential-looking fragments.
    """
    if not body:
        return ""
    if path and is_auth_path(path):
        return f"<{len(body)} bytes of an auth endpoint's body, not shown>"
    head = body[: limit * 4]
    text = head.decode("utf-8", errors="replace")
    try:
        # Numbers are kept as the server wrote them (1.10 stays 1.10, 1e3 stays 1e3).
        parsed = json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_Number)
        # Keys name most credentials; values can still carry one ("Bearer x", a JWT).
        scrubbed = redact_text(_compact_json(redact_json(parsed)))
    except (ValueError, RecursionError):
        # Not JSON, or nested deeper than the parser (or redact_json) can follow: a hostile
        # body must still give an excerpt, never an exception.
        scrubbed = redact_text(text)
    if len(scrubbed) > limit or len(body) > len(head):
        return scrubbed[:limit] + "…"
    return scrubbed


class Secret:
    """A credential that never shows itself in a repr, str, log or exception.

    ``reveal()`` returns the value; use it only where the value is put on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"a secret must be a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret itself."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")
