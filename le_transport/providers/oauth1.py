"""OAuth 1.0 HMAC-SHA1 request signing (RFC 5849) with a LiveEngage API key.

The guide's Step 7: the Users API, Engagement History, Messaging Interactions and signed Chat
Agent API requests authorise each request with an ``Authorization: OAuth ...`` header, on one
line, signed with the API key's four values over the final URL, query parameters included. No
login and no bearer are involved.

:func:`signature_base_string` and :func:`hmac_sha1_signature` are RFC 5849 sections 3.4.1 and
3.4.2 as pure functions; :class:`OAuth1Signer` builds the header; :class:`OAuth1Auth` is the
:class:`~le_transport.providers.AuthProvider`.

A form-encoded request body takes part in the signature (RFC 5849 3.4.1.3.1), and LiveEngage's
gateway checks it: :class:`OAuth1Auth` is a :class:`~le_transport.providers.BodySigningAuth`, so
the auth middleware passes such a body's parameters to
:meth:`OAuth1Auth.credentials_for_form`. Any other body (JSON, the usual case for LiveEngage's
OAuth1 APIs) is not signed: the signature covers the method and the URL, query included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import quote

from yarl import URL

from .._checks import utf8_encodable
from .._redact import Secret
from ..errors import ConfigurationError
from ..policies._validate import finite_number
from ._http import ProviderHttp, require_option, require_secret
from .auth import Credentials

__all__ = [
    "OAuth1Auth",
    "OAuth1Signer",
    "hmac_sha1_signature",
    "normalized_parameters",
    "percent_encode",
    "signature_base_string",
]


#: The one parameter RFC 5849 3.4.1.3.1 leaves out of the base string, wherever it is found.
_SIGNATURE_PARAM = "oauth_signature"


def percent_encode(value: str) -> str:
    """RFC 5849 3.6: UTF-8, then every byte but ``A-Z a-z 0-9 - . _ ~`` as ``%XX`` (upper)."""
    return quote(value.encode("utf-8"), safe="-._~")


#: A WebSocket URL's scheme as the HTTP request of its upgrade has it (RFC 6455 3): the
#: gateway verifies the upgrade's signature over the ``http``/``https`` URL it received.
_UPGRADE_SCHEMES = {"ws": "http", "wss": "https"}


def base_string_uri(url: URL) -> str:
    """RFC 5849 3.4.1.2: lower-case scheme and host, the port only if not the default, the path;
    no query, no fragment. An IPv6 literal keeps its brackets (``http://[::1]:8080/x``). A
    WebSocket URL is signed as its upgrade, the GET it is sent as: ``wss://h/x`` as
    ``https://h/x``, ``ws://`` as ``http://``."""
    scheme = (url.scheme or "").lower()
    scheme = _UPGRADE_SCHEMES.get(scheme, scheme)
    host = (url.raw_host or "").lower()
    if ":" in host:
        # yarl's raw_host drops an IPv6 literal's brackets, and the RFC wants the authority as
        # the Host header carries it: "[::1]:8080", never the ambiguous "::1:8080" (a server
        # would compute another signature and refuse every request).
        host = f"[{host}]"
    port = url.explicit_port
    default = {"http": 80, "https": 443}.get(scheme)
    authority = host if port is None or port == default else f"{host}:{port}"
    return f"{scheme}://{authority}{url.raw_path or '/'}"


def normalized_parameters(params: Iterable[tuple[str, str]]) -> str:
    """RFC 5849 3.4.1.3.2: encode names and values, sort by name then value, join."""
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def signature_base_string(method: str, url: URL, params: Iterable[tuple[str, str]]) -> str:
    """RFC 5849 3.4.1: ``METHOD&uri&params``, each part percent-encoded: the method upper-cased
    (3.4.1.1: a custom method "MUST be encoded", ``M!SEARCH`` as ``M%21SEARCH``), the base
    string URI and the normalised parameters.

    ``params`` are the protocol parameters and any form body parameters; the URL's own query
    parameters are added here (decoded first, as the RFC says). A parameter named
    ``oauth_signature``, wherever it is (a caller's query or form field), is left out, as RFC
    5849 3.4.1.3.1 says: the gateway leaves it out of the base string it verifies against.
    """
    collected = [*url.query.items(), *params]
    return "&".join(
        (
            percent_encode(method.upper()),
            percent_encode(base_string_uri(url)),
            percent_encode(
                normalized_parameters(
                    (name, value) for name, value in collected if name != _SIGNATURE_PARAM
                )
            ),
        )
    )


def hmac_sha1_signature(base_string: str, client_secret: str, token_secret: str) -> str:
    """RFC 5849 3.4.2: base64 of HMAC-SHA1 keyed with ``secret&token_secret`` (both encoded)."""
    key = f"{percent_encode(client_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode("ascii"), base_string.encode("ascii"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _require(ok: bool, field: str, what: str, value: object) -> None:
    # Types only: a value handed to the signer may be a credential.
    if not ok:
        got = (
            "a str UTF-8 cannot encode (a lone surrogate)"
            if isinstance(value, str) and not utf8_encodable(value)
            else type(value).__name__
        )
        kind = "a finite number" if field == "wall_clock()" else "a non-empty str"
        raise ConfigurationError(f"OAuth1Signer.{field}: {what} must be {kind}, got {got}")


#: RFC 9110 5.6.2's token: what an HTTP method may be (ASCII only, so upper-casing it is
#: aiohttp's own). Anything else is no request that can be sent, hence none to sign.
_METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_signable(method: object, url: object) -> None:
    _require(
        isinstance(method, str) and bool(method) and utf8_encodable(method),
        "header()",
        "the method",
        method,
    )
    if _METHOD_TOKEN.fullmatch(cast(str, method)) is None:
        raise ConfigurationError(
            "OAuth1Signer.header(): the method must be an HTTP method token (ASCII letters, "
            "digits and !#$%&'*+.^_`|~-, as 'GET'); the value is not shown"
        )
    # A relative URL is allowed: Engine.login() asks for credentials for URL("/").
    if not isinstance(url, URL):
        raise ConfigurationError(
            f"OAuth1Signer.header(): the url must be a yarl.URL, got {type(url).__name__}"
        )


def _pairs(params: object) -> list[tuple[str, str]]:
    # Each must encode as UTF-8 (percent_encode's first step): otherwise signing raises a
    # UnicodeEncodeError whose arguments hold the whole value.
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise ConfigurationError(
            f"OAuth1Signer.header(): body_params must be (name, value) pairs, got "
            f"{type(params).__name__}"
        )
    pairs = list(params)
    for pair in pairs:
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise ConfigurationError(
                "OAuth1Signer.header(): body_params must be pairs of two str, got "
                f"{type(pair).__name__}"
            )
        if not (utf8_encodable(pair[0]) and utf8_encodable(pair[1])):
            raise ConfigurationError(
                "OAuth1Signer.header(): body_params hold a str UTF-8 cannot encode (a lone "
                "surrogate); the value is not shown"
            )
    return pairs


class OAuth1Signer:
    """Signs requests with an API key's app key, secret, access token and access token secret.

    ``wall_clock`` gives epoch seconds for ``oauth_timestamp`` (the server checks it against its
    own clock, so this is wall time, not the engine's clock); ``nonce`` makes ``oauth_nonce``.
    Both are injectable so that a signature can be reproduced.
    """

    __slots__ = ("_access_token", "_app_key", "_nonce", "_secret", "_token_secret", "_wall_clock")

    def __init__(
        self,
        app_key: str | Secret,
        secret: str | Secret,
        access_token: str | Secret,
        access_token_secret: str | Secret,
        *,
        wall_clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._app_key = require_secret(app_key, owner="OAuth1Signer", field="app_key")
        self._secret = require_secret(secret, owner="OAuth1Signer", field="secret")
        self._access_token = require_secret(
            access_token, owner="OAuth1Signer", field="access_token"
        )
        self._token_secret = require_secret(
            access_token_secret, owner="OAuth1Signer", field="access_token_secret"
        )
        for field, value in (("wall_clock", wall_clock), ("nonce", nonce)):
            require_option(
                callable(value), value, owner="OAuth1Signer", field=field, wants="a callable"
            )
        self._wall_clock = wall_clock
        self._nonce = nonce

    def protocol_params(self, *, nonce: str, timestamp: str) -> list[tuple[str, str]]:
        """The ``oauth_*`` parameters, without the signature."""
        return [
            ("oauth_consumer_key", self._app_key.reveal()),
            ("oauth_nonce", nonce),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", timestamp),
            ("oauth_token", self._access_token.reveal()),
            ("oauth_version", "1.0"),
        ]

    def signature(
        self,
        method: str,
        url: URL,
        *,
        nonce: str,
        timestamp: str,
        body_params: Iterable[tuple[str, str]] = (),
    ) -> str:
        """The HMAC-SHA1 signature of ``method url`` for the given nonce and timestamp.

        Arguments it cannot sign raise :class:`ConfigurationError` naming their type, as
        :meth:`header`'s do (never a ``UnicodeEncodeError`` quoting the value)."""
        return self._signed("signature()", method, url, nonce, timestamp, body_params)

    def _signed(
        self,
        caller: str,
        method: str,
        url: URL,
        nonce: str,
        timestamp: str,
        body_params: Iterable[tuple[str, str]],
    ) -> str:
        # Checked here for both public ways in, each error named by the method called.
        _check_signable(method, url)
        body_params = _pairs(body_params)
        _require(isinstance(nonce, str) and utf8_encodable(nonce), caller, "nonce", nonce)
        _require(
            isinstance(timestamp, str) and utf8_encodable(timestamp), caller, "timestamp", timestamp
        )
        base = signature_base_string(
            method, url, [*self.protocol_params(nonce=nonce, timestamp=timestamp), *body_params]
        )
        return hmac_sha1_signature(base, self._secret.reveal(), self._token_secret.reveal())

    def header(
        self,
        method: str,
        url: URL,
        *,
        nonce: str | None = None,
        timestamp: str | None = None,
        body_params: Iterable[tuple[str, str]] = (),
    ) -> str:
        """The ``Authorization`` header value, on one line (the guide's Step 7 form).

        Arguments it cannot sign (a method that is not a str or not an HTTP method token, a
        URL that is not a :class:`~yarl.URL`, pairs that are not two str), and a wall clock
        that gives no positive epoch second, raise :class:`ConfigurationError`.
        """
        _check_signable(method, url)  # before a nonce is made for it
        if nonce is None:
            nonce = self._nonce()
            _require(isinstance(nonce, str) and bool(nonce), "nonce()", "what it returned", nonce)
        if timestamp is None:
            now = self._wall_clock()
            _require(finite_number(now), "wall_clock()", "what it returned", now)
            if int(now) < 1:
                # RFC 5849 3.3: a positive integer of seconds since 1970. Signed as it was, the
                # server refused it (a 401, then an AuthenticationError blaming credentials).
                raise ConfigurationError(
                    f"OAuth1Signer.wall_clock returned {float(now):.6g}, not epoch seconds: "
                    "oauth_timestamp must be a positive number of seconds since 1970 (RFC 5849 "
                    "3.3); give the signer a wall clock (time.time)"
                )
            timestamp = str(int(now))
        signature = self._signed("header()", method, url, nonce, timestamp, body_params)
        params = [
            *self.protocol_params(nonce=nonce, timestamp=timestamp),
            ("oauth_signature", signature),
        ]
        return "OAuth " + ", ".join(
            f'{percent_encode(k)}="{percent_encode(v)}"' for k, v in sorted(params)
        )

    def __repr__(self) -> str:
        return "OAuth1Signer(app_key=***, secret=***, access_token=***, access_token_secret=***)"


class OAuth1Auth:
    """An :class:`~le_transport.providers.AuthProvider` that signs each request (RFC 5849).

    There is no session: each request gets a fresh nonce and timestamp, and so does each retry
    of it (``signs_each_request``). A 401 therefore has nothing to invalidate; the auth
    middleware's single replay is simply signed anew (over the same form, if the request has
    one). It is a :class:`~le_transport.providers.BodySigningAuth`:
    a form-encoded body's parameters are signed with the URL's.

    ``wall_clock`` dates ``oauth_timestamp`` (epoch seconds). Default (None): the wall clock of
    the engine it was last attached to (:attr:`Engine.wall_clock
    <le_transport.Engine.wall_clock>`: on a :class:`~le_transport.testing.VirtualClock`, its
    virtual date, which a :class:`~le_transport.testing.Simulator` on that clock checks
    timestamps against), and :func:`time.time` until then. One given is always used.

    It holds no session: :meth:`close` ends nothing, and one instance may serve several
    engines, one after another or at once (each closes its auth provider as it closes).
    """

    __slots__ = ("_own_wall", "_signer")

    #: Every request gets its own nonce and timestamp, each retry included: the auth middleware
    #: has the retry loop sign every attempt anew (a gateway refuses a nonce it has seen).
    signs_each_request: ClassVar[bool] = True
    #: The header its credentials set (see :class:`~le_transport.providers.AuthProvider`).
    credential_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    def __init__(
        self,
        app_key: str | Secret,
        secret: str | Secret,
        access_token: str | Secret,
        access_token_secret: str | Secret,
        *,
        wall_clock: Callable[[], float] | None = None,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        # Only those given: the signer's defaults (time.time, a random nonce) otherwise.
        options: dict[str, Callable[[], Any]] = {}
        if wall_clock is not None:
            options["wall_clock"] = wall_clock
        if nonce is not None:
            options["nonce"] = nonce
        self._signer = OAuth1Signer(app_key, secret, access_token, access_token_secret, **options)
        self._own_wall = wall_clock is not None

    def attach(self, http: ProviderHttp) -> None:
        """Called by the engine on start: without a ``wall_clock`` of its own, date
        ``oauth_timestamp`` on the engine's wall clock (``http.wall_clock``) from now on.
        Nothing else is sent through the engine: every request is signed here."""
        if not self._own_wall:
            self._signer._wall_clock = http.wall_clock

    @property
    def signer(self) -> OAuth1Signer:
        """The signer."""
        return self._signer

    async def credentials(self, method: str, url: URL) -> Credentials:
        """``Authorization: OAuth ...`` signed over ``method`` and the final ``url``."""
        return Credentials(headers={"Authorization": self._signer.header(method, url)})

    async def credentials_for_form(
        self, method: str, url: URL, form: Sequence[tuple[str, str]]
    ) -> Credentials:
        """``Authorization: OAuth ...`` signed over ``method``, ``url`` and the form body's
        decoded parameters ``form`` (RFC 5849 3.4.1.3.1)."""
        return Credentials(
            headers={"Authorization": self._signer.header(method, url, body_params=form)}
        )

    async def invalidate(self, rejected: Credentials) -> None:
        """Nothing to drop: every request is signed anew."""

    async def close(self) -> None:
        """Nothing to close."""

    def __repr__(self) -> str:
        return "OAuth1Auth(***)"
