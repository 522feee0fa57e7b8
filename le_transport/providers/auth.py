"""The auth provider protocol: who the caller is, as credentials put on each request or socket.

An :class:`AuthProvider` hands out :class:`Credentials` (headers for a request, and the bearer or
JWT for sockets that carry it elsewhere) and is told when the server rejected them. Credentials
carry a ``generation``: a provider re-authenticates only when the rejected credentials are the
current ones, so a hundred concurrent 401s cause one login, not a hundred.

A provider whose credentials also cover a form-encoded request body (OAuth 1.0 signs its
parameters, RFC 5849 3.4.1.3.1) implements the optional :class:`BodySigningAuth` as well; the
auth middleware then hands it the form's parameters. Providers that only implement
:class:`AuthProvider` keep working unchanged: they are never asked about bodies.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import attrs
from yarl import URL

from .._redact import Secret, redact_headers
from ..errors import ConfigurationError, EngineClosed
from ._http import header_safe

__all__ = ["AuthProvider", "BodySigningAuth", "Credentials", "InvalidCredentials", "StaticBearer"]


class InvalidCredentials(ConfigurationError):
    """:class:`Credentials` that cannot be sent (headers that are not str names, RFC 9110
    tokens, to str values without a control character (tab allowed) or a character UTF-8
    cannot encode; a bearer that is no :class:`~le_transport.Secret`). Raised where they are
    made, naming the field or header and never showing a value. Made inside an auth provider's
    ``credentials()``, the engine, the auth middleware and a socket's dialer turn it into a
    :class:`~le_transport.errors.ProviderError`: the provider's bug, not the caller's."""


#: A header name: an RFC 9110 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What ends a header line: a value holding one would write a header of its own.
_HEADER_BREAKERS = re.compile("[\r\n\x00]")
#: Every other control character but tab (aiohttp's writer refuses them all; RFC 9110 5.5).
_HEADER_CONTROLS = re.compile("[\x01-\x08\x0b-\x1f\x7f]")


def _frozen_headers(value: object) -> Mapping[str, str]:
    """``value`` copied, once each name and value is known to be sendable, read-only: the
    providers hand the same credentials to every call until the session or token changes."""
    if not isinstance(value, Mapping):
        raise InvalidCredentials(
            f"Credentials.headers must be a mapping of str names to str values, got a "
            f"{type(value).__name__}"
        )
    headers = dict(value)
    for name, text in headers.items():
        fault = _credential_header_fault(name, text)
        if fault is not None:
            raise InvalidCredentials(
                f"Credentials.headers has a header that cannot be sent: {fault}; "
                "the value is not shown"
            )
    return types.MappingProxyType(headers)


def _credential_header_fault(name: object, value: object) -> str | None:
    """Why a credential header cannot be sent, or None; never showing its value (nor a name
    that is no name: what follows a ':' in it would be sent as a value)."""
    if type(name) is not str and not isinstance(name, str):
        return f"a header name is a {type(name).__name__}, not a str"
    if _TOKEN.fullmatch(name) is None:
        return "a header name is not an RFC 9110 token (letters, digits, !#$%&'*+-.^_`|~)"
    if type(value) is not str and not isinstance(value, str):
        return f"header {name[:40]!r} has a value of type {type(value).__name__}, not a str"
    if not value.isprintable():
        if _HEADER_BREAKERS.search(value):
            return f"header {name[:40]!r} has a value holding a CR, LF or NUL"
        control = _HEADER_CONTROLS.search(value)
        if control is not None:
            # aiohttp's writer refuses it too, with a bare ValueError mid-call.
            return (
                f"header {name[:40]!r} has a value holding the control character "
                f"U+{ord(control.group()):04X} (tab is the only one a header may hold)"
            )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"header {name[:40]!r} has a value UTF-8 cannot encode (a lone surrogate)"
    return None


def _check_bearer(
    instance: object, attribute: attrs.Attribute[Secret | None], value: Secret | None
) -> None:
    if value is not None and not isinstance(value, Secret):
        raise InvalidCredentials(
            "Credentials.bearer must be a Secret (le_transport.Secret) or None, got "
            f"a {type(value).__name__}"
        )


def _check_generation(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidCredentials(
            f"Credentials.generation must be an int, got a {type(value).__name__}"
        )


@attrs.frozen(repr=False)
class Credentials:
    """What to put on a request: ``headers``; and for sockets, the ``bearer`` (or consumer JWT).

    ``generation`` identifies the login that produced them. The repr never shows a secret.

    ``headers`` map str names (RFC 9110 tokens) to str values without a control character
    (tab allowed) or a character UTF-8 cannot encode (a lone surrogate);
    ``bearer`` is a :class:`~le_transport.Secret` or None; ``generation`` an int. Anything
    else is an :class:`InvalidCredentials` (a
    :class:`~le_transport.errors.ConfigurationError`) here, naming the field or header,
    never showing a value.
    """

    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_headers)
    bearer: Secret | None = attrs.field(default=None, validator=_check_bearer)
    generation: int = attrs.field(default=0, validator=_check_generation)

    def __repr__(self) -> str:
        return (
            f"Credentials(headers={redact_headers(self.headers)!r}, "
            f"bearer={self.bearer!r}, generation={self.generation})"
        )


def as_credentials(answer: object) -> Credentials:
    """``answer``, what an auth provider's ``credentials()`` returned, as checked
    :class:`Credentials`: itself when it is one; else rebuilt from its ``headers``,
    ``bearer`` and ``generation``, so that what no one checked is checked here (an
    :class:`InvalidCredentials`), and what has no ``headers`` (None, a dict, a str) fails as
    an AttributeError: either the provider's bug, which the caller turns into a
    :class:`~le_transport.errors.ProviderError`."""
    if type(answer) is Credentials or isinstance(answer, Credentials):
        return answer
    return Credentials(
        headers=answer.headers,  # type: ignore[attr-defined]
        bearer=getattr(answer, "bearer", None),
        generation=getattr(answer, "generation", 0),
    )


@runtime_checkable
class AuthProvider(Protocol):
    """Puts credentials on requests and reacts when the server rejects them.

    A provider whose credentials are good for one request only (a signature with a nonce, as
    OAuth 1.0's) says so with a class attribute ``signs_each_request = True``: the auth
    middleware then has the retry loop ask it again before every further attempt. Without the
    attribute, credentials are asked once per call and sent on every attempt.

    A provider may name the headers its credentials set, with a class attribute
    ``credential_headers`` (a frozenset of lower-case names; the library's providers say
    ``{"authorization"}``): a call that passes one of them itself is then refused
    (:class:`~le_transport.errors.InvalidRequest`) rather than silently overwritten.

    Optional members the engine looks for (by name) on the provider it is given:
    ``attach(http)`` (the library's providers send their logins through the engine this way),
    ``relogin()`` (the outer recovery loop's re-login), ``generation`` (an int that grows with
    each login: recovery skips its re-login when one happened meanwhile) and ``account``
    (checked against the domain provider's). A provider that wraps another forwards them: the
    engine attaches only the provider it was given, so a library provider inside a wrapper
    without ``attach`` is never attached (README, "Domains and auth"). One wrapping
    :class:`~le_transport.providers.OAuth1Auth` also says ``signs_each_request = True`` and
    forwards ``credentials_for_form`` (:class:`BodySigningAuth`): else its retries resend a
    spent nonce and its form bodies go unsigned (the auth middleware warns once).
    """

    async def credentials(self, method: str, url: URL) -> Credentials:
        """Credentials for ``method url`` (the final URL, query included: OAuth1 signs it).

        May log in first; concurrent callers share one login (single flight).
        """
        ...

    async def invalidate(self, rejected: Credentials) -> None:
        """The server rejected ``rejected`` (a 401, a close code 4401): drop them if they are
        still current, so that the next :meth:`credentials` re-authenticates once."""
        ...

    async def close(self) -> None:
        """End the session (logout) and stop any keepalive. Idempotent."""
        ...


@runtime_checkable
class BodySigningAuth(AuthProvider, Protocol):
    """An :class:`AuthProvider` whose credentials also cover a form-encoded request body.

    Optional: the auth middleware checks for it once, when it is built. For a request whose
    ``Content-Type`` is ``application/x-www-form-urlencoded`` and whose body is in memory, it
    calls :meth:`credentials_for_form` instead of :meth:`~AuthProvider.credentials`, on the
    first attempt and on the 401 replay alike. :class:`~le_transport.providers.OAuth1Auth`
    implements it.
    """

    async def credentials_for_form(
        self, method: str, url: URL, form: Sequence[tuple[str, str]]
    ) -> Credentials:
        """Credentials for ``method url`` carrying a form body whose decoded name/value pairs
        are ``form`` (in body order, repeated names and empty values kept)."""
        ...


def _bearer(token: object) -> Secret:
    """``token`` as a :class:`Secret` that can go in a header; never echoed when refused."""
    if isinstance(token, str):
        token = Secret(token)
    # A CR/LF in the value would write headers of its own; bytes or None would fail (or be
    # sent as "None") only at the first request, far from the mistake.
    if not isinstance(token, Secret):
        problem = f"got {type(token).__name__}"
    elif not header_safe(token.reveal()):
        problem = _unsendable(token.reveal())
    else:
        return token
    raise ConfigurationError(
        "StaticBearer.token must be a non-empty str or Secret of visible ASCII characters "
        f"(no whitespace or control characters): {problem}"
    )


def closed_error(subject: str) -> EngineClosed:
    """What a closed provider's :meth:`~AuthProvider.credentials` raises: closed is final (an
    engine closes its auth provider with it), and nothing is wrong with the credentials, so no
    :class:`~le_transport.errors.AuthenticationError`. ``subject`` names the provider, never
    a secret of it."""
    return EngineClosed(f"{subject}: the auth provider is closed (closing an engine closes it)")


def _unsendable(text: str) -> str:
    """What keeps ``text`` out of a header, said without showing any of it."""
    if not text:
        return "it is empty"
    if text[:7].lower() == "bearer ":
        return (
            "it starts with 'Bearer ': pass the token alone (StaticBearer writes the "
            "'Bearer' scheme of the Authorization header itself)"
        )
    index, char = next((i, c) for i, c in enumerate(text) if not "\x21" <= c <= "\x7e")
    if char in "\r\n":
        kind = "a line break"
    elif char.isspace():
        kind = "whitespace"
    elif not char.isprintable():
        kind = "a control character"
    else:
        kind = "a character outside ASCII"
    edge = char.isspace() and index in (0, len(text) - 1)
    where = f"character {index + 1} of {len(text)}"
    hint = " (strip what was read from a file or the environment)" if edge else ""
    return f"it holds {kind} at {where}{hint}; the value is not shown"


class StaticBearer:
    """A caller-managed bearer token: ``Authorization: Bearer <token>``.

    It cannot re-authenticate: after :meth:`invalidate`, :meth:`credentials` still returns the
    same token (the caller is expected to replace it with :meth:`update`). It holds no session:
    :meth:`close` ends nothing, and one instance may serve several engines, one after another
    or at once (each closes its auth provider as it closes).
    """

    __slots__ = ("_credentials", "_generation", "_token")
    #: The header its credentials set (see :class:`AuthProvider`).
    credential_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    def __init__(self, token: str | Secret) -> None:
        self._token = _bearer(token)
        self._generation = 0
        self._credentials = self._make()

    def update(self, token: str | Secret) -> None:
        """Replace the token (e.g. after the caller refreshed it elsewhere).

        A token that cannot be sent is a :class:`ConfigurationError`; the old one stays.
        """
        self._token = _bearer(token)
        self._generation += 1
        self._credentials = self._make()

    def _make(self) -> Credentials:
        # Made (and checked) once per token, not per call.
        return Credentials(
            headers={"Authorization": f"Bearer {self._token.reveal()}"},
            bearer=self._token,
            generation=self._generation,
        )

    async def credentials(self, method: str, url: URL) -> Credentials:
        """``Authorization: Bearer <token>``."""
        return self._credentials

    async def invalidate(self, rejected: Credentials) -> None:
        """Nothing to do: the caller owns the token."""

    async def close(self) -> None:
        """Nothing to close: no session (the token stays the caller's, usable again)."""

    def __repr__(self) -> str:
        return f"StaticBearer({self._token!r})"
