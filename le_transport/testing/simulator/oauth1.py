"""Verifying OAuth 1.0 HMAC-SHA1 request signatures (RFC 5849), as LiveEngage's API gateway does.

An independent implementation of the server side: it rebuilds the signature base string from
what arrived (method, the URL the client reached, query and form parameters, the ``oauth_*``
parameters of the ``Authorization`` header) and compares signatures in constant time. The
base string URI of a received request is built from its ``Host`` as received
(:func:`received_base_string_uri`); the one of a URL (:func:`base_string_uri`, RFC 5849
§3.4.1.2) is the library signer's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from yarl import URL

# RFC 5849 §3.4.1.2's base string URI is the one piece shared with the library's signer: one
# copy, so the two cannot drift (this one wrote an IPv6 literal without its brackets, and every
# correctly signed request to a simulator on [::1] was refused). Everything else here (header
# parsing, parameter normalisation, the signature check) stays independent of the signer.
from ...providers.oauth1 import base_string_uri

__all__ = [
    "OAuth1Error",
    "base_string_uri",
    "parse_oauth_header",
    "percent_encode",
    "received_base_string_uri",
    "sign",
    "signature_base_string",
    "verify",
]

# RFC 5849 §3.6: every byte but ALPHA / DIGIT / "-" / "." / "_" / "~" is percent-encoded.
_UNRESERVED = "-._~"
_PARAM = re.compile(r'\s*([A-Za-z0-9_.~%-]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


class OAuth1Error(ValueError):
    """The ``Authorization`` header is not a well-formed OAuth 1.0 header, or the ``Host`` a
    base string URI is built from is not an authority (:func:`received_base_string_uri`)."""


def percent_encode(value: str) -> str:
    """RFC 5849 §3.6 encoding (RFC 3986 unreserved characters kept, UTF-8 first)."""
    return quote(value.encode("utf-8"), safe=_UNRESERVED)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_oauth_header(header: str) -> dict[str, str]:
    """The decoded parameters of ``Authorization: OAuth k="v", ...`` (``realm`` dropped)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "oauth":
        raise OAuth1Error("not an OAuth Authorization header")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise OAuth1Error("malformed OAuth Authorization header")
        key, value = unquote(m.group(1)), unquote(m.group(2))
        if not (key + value).isascii() and not _utf8(key + value):
            # A raw byte that is no UTF-8 (aiohttp hands header bytes on surrogate-escaped):
            # no client signed that; refused as any malformed header, not a 500.
            raise OAuth1Error("an OAuth parameter that is not UTF-8")
        if key in params:
            raise OAuth1Error(f"OAuth parameter {key!r} given twice")
        params[key] = value
        pos = m.end()
    params.pop("realm", None)
    return params


#: RFC 5849 §3.4.1.2's default ports, whose port the base string URI leaves out.
_DEFAULT_PORTS = {"http": "80", "https": "443"}

#: RFC 3986 §3.2's host [":" port]: an IP literal in brackets (an IPv6 address, its zone
#: (RFC 6874) or an IPvFuture), or a reg-name (an IPv4 address is one); then digits. No "/",
#: "?", "#", "@" nor blank: nothing that could move part of the path into the authority.
_AUTHORITY = re.compile(
    r"(?:\[[A-Za-z0-9._~%!$&'()*+,;=:-]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)"
    r"(?::[0-9]*)?"
)


def received_base_string_uri(scheme: str, authority: str, raw_path: str) -> str:
    """RFC 5849 §3.4.1.2's base string URI of a request received for ``authority`` (its
    ``Host``) under ``scheme``, at ``raw_path`` (as sent, still encoded): scheme and host in
    lower case, the port left out when it is the scheme's default, and otherwise the
    authority as it was received ("The host and port values MUST match the content of the
    HTTP request Host header field"): never normalised, so ``[0:0::1]`` stays as the client
    wrote, and signed, it (yarl's ``[::1]`` was another string, and the request refused).

    :class:`OAuth1Error` if ``authority`` is not one (RFC 3986 §3.2: a host, then an optional
    ``:`` and digits): taken as it is, a ``Host`` of ``h/x`` made a request for ``/y`` verify
    against a signature of ``http://h/x/y``, another request."""
    if _AUTHORITY.fullmatch(authority) is None:
        raise OAuth1Error("the Host the request was sent with is not a host[:port]")
    scheme = scheme.lower()
    authority = authority.lower()
    host, port = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0 and authority[end + 1 : end + 2] == ":":
            host, port = authority[: end + 1], authority[end + 2 :]
    elif ":" in authority:
        host, _, port = authority.rpartition(":")
    # An empty port is the default one (RFC 3986 §6.2.3), as is a written-out default.
    if port and port.lstrip("0") != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{raw_path or '/'}"


def signature_base_string(method: str, url: URL | str, params: Iterable[tuple[str, str]]) -> str:
    """RFC 5849 §3.4.1: ``enc(METHOD)&enc(base URI)&enc(normalised parameters)``.

    ``url``: the URL the request was sent to, or its base string URI already made (a str,
    :func:`received_base_string_uri`). ``params`` holds every query, form-body and
    ``oauth_*`` parameter (decoded), except any named ``oauth_signature`` (:func:`verify`
    leaves them out).
    """
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    normalised = "&".join(f"{k}={v}" for k, v in encoded)
    return "&".join(
        # §3.4.1.1: a custom method "MUST be encoded" too (M!SEARCH as M%21SEARCH).
        (
            percent_encode(method.upper()),
            percent_encode(url if isinstance(url, str) else base_string_uri(url)),
            percent_encode(normalised),
        )
    )


def sign(base_string: str, consumer_secret: str, token_secret: str) -> str:
    """RFC 5849 §3.4.2: base64 of HMAC-SHA1 keyed by ``enc(consumer)&enc(token)``."""
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(
    *,
    method: str,
    url: URL | str,
    oauth: Mapping[str, str],
    extra_params: Iterable[tuple[str, str]],
    consumer_secret: str,
    token_secret: str,
) -> bool:
    """Whether ``oauth["oauth_signature"]`` signs this request with these secrets (``url``:
    as :func:`signature_base_string` takes it).

    ``extra_params`` are the request's query and form parameters; one named
    ``oauth_signature`` there (a client's own) is left out of the base string, as the header's
    is (RFC 5849 §3.4.1.3.1: excluded wherever it is found)."""
    given = oauth.get("oauth_signature", "")
    params = [(k, v) for k, v in oauth.items() if k != "oauth_signature"]
    params.extend((k, v) for k, v in extra_params if k != "oauth_signature")
    expected = sign(signature_base_string(method, url, params), consumer_secret, token_secret)
    return hmac.compare_digest(given.encode(), expected.encode())
