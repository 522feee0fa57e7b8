"""The auth middleware: credentials on each request, to the right hosts only; 401 → one replay.

It sits outside the retry middleware (once per logical call, and once per redirect hop):

- Credentials go only to the host the domain provider named for the call's service. A request
  to any other host, such as a redirect hop to somewhere else, gets none, nor does one for a
  service the provider now refuses (:class:`~le_transport.errors.UnknownServiceError`,
  :class:`~le_transport.errors.HostileHostError`). A provider that cannot answer (the Domain
  API down) fails the call with its error, nothing sent: an outage, for the retry and
  recovery policies to judge, not a host to send the call to without credentials. A foreign
  session without the engine's call context gets none either, unless ``allowed_hosts`` names
  the host. A hop to another origin loses the caller's own secret headers too (the retry
  middleware's :func:`~le_transport.middleware.context.drop_secret_headers`).
- A 401 invalidates the credentials that were sent (the provider re-authenticates once even if
  a hundred calls see the 401 together: credentials carry a generation), fetches fresh ones and
  replays the request once. A second 401 is an :class:`~le_transport.errors.AuthenticationError`,
  and the fresh credentials are kept: rejected as soon as they were had, they show that the
  credentials are not what is wrong (a missing permission is answered 401 too), and dropping
  them would only cost another login. So a call to an endpoint that keeps answering 401 costs
  at most one re-authentication.
  This is the only 4xx that leads to a replay: every other 4xx is the caller's to fix.
  A 401 that will be replayed is not the call's end: the retry middleware inside logs no
  failure and fires no give-up for it (:class:`~le_transport.middleware.retry.AuthReplay`).
  The replay's outcome is what is reported, or that 401, once, if fresh credentials cannot
  be had.
- WebSocket upgrades pass through untouched: the socket layer puts its own credentials on them
  (the bearer in the UMS path, ``Authorization: jwt`` for the consumer socket) and owns their
  retries.
- A form-encoded body is signed when the provider is a
  :class:`~le_transport.providers.BodySigningAuth` (OAuth 1.0, RFC 5849 3.4.1.3.1): if the
  ``Content-Type``'s media type is exactly ``application/x-www-form-urlencoded`` and the body is
  in memory, its parameters (decoded in the declared charset, utf-8 by default) go to
  ``credentials_for_form``, on the first attempt and on the replay alike. A stream (which
  reading would consume) or a body that does not decode is refused with
  :class:`~le_transport.errors.UnsignableBody` before anything is sent: a signature over the
  URL alone is certain to be rejected. Any other provider is never asked about bodies, and for
  it the check costs one attribute read.
- A provider that signs each request (``signs_each_request = True``: OAuth 1.0, whose every
  request carries a fresh nonce and timestamp) signs each *attempt*: the middleware hands the
  retry loop, through the call context, a way to sign the same request again over the same
  form, and the loop uses it before every attempt after the first. A retry sent with the first
  attempt's nonce would be refused as a replay by a gateway that already saw it (RFC 5849 3.3).
  A bearer is put on once per call and sent as is on every attempt. Such a provider (and a
  body-signing one) is handed the URL the server rebuilds: a request that carries its own
  ``Host`` header is signed over that host and port (RFC 5849 3.4.1.2), not the URL's; a
  header that is no host and port (userinfo, a path, a port out of range) is not taken, and
  the request's URL is signed.

- A provider that fails with an exception of its own, not a
  :class:`~le_transport.errors.TransportError` (a bug in a provider of the caller's, an answer
  that is not :class:`~le_transport.providers.Credentials`), fails the call with
  :class:`~le_transport.errors.ProviderError`, logged, naming the provider and the
  exception's type, with the exception (and its traceback) as the cause: neither an outage
  nor the caller's arguments. The domain provider asked for the call's host, likewise. A
  provider's own network failure (its call to a vault or a login service refused, reset or
  timed out: an ``OSError``, an aiohttp connection error, a 5xx) is no bug: it fails the call
  with :class:`~le_transport.errors.ConnectionFailed`, logged as a WARNING, recovered like an
  outage (:func:`~le_transport.middleware.context.provider_failed`). A request error the
  provider raises itself (its login answered 503) is raised as it is, unmarked: one login's
  failure is every waiter's. Whether ``recover=True`` may send the call again after it is
  the call's own fact, not the login's (the engine notes each call for the recovery loop
  running it: :meth:`~le_transport.middleware.context.CallContext.may_resend`), so a login
  outage met before anything of the call was acted on is waited out as a re-login's.

Providers make their own calls (login, refresh, token) on a path without this middleware
(:class:`~le_transport.providers.ProviderHttp`), so a login never re-enters it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from typing import cast
from urllib.parse import parse_qsl

import attrs
from aiohttp import BytesPayload, ClientHandlerType, ClientRequest, ClientResponse, hdrs
from yarl import URL

from .._redact import redact_url
from ..clock import Clock, RealClock
from ..errors import (
    AuthenticationError,
    ClientStatusError,
    ConfigurationError,
    HostConfigurationError,
    HostileHostError,
    TransportError,
    UnknownServiceError,
    UnsignableBody,
)
from ..providers._http import split_host
from ..providers.auth import (
    AuthProvider,
    BodySigningAuth,
    Credentials,
    InvalidCredentials,
    as_credentials,
)
from ..providers.domains import DomainProvider, _shown_host, validate_host
from .context import (
    _CALL_LEDGER,
    _CURRENT,
    CallContext,
    CallLedger,
    current_call,
    provider_failed,
    safe_cause,
    within_deadline,
)
from .retry import AUTH_REPLAY, AuthReplay, body_spent, is_websocket_upgrade

__all__ = ["AuthMiddleware", "charset_of", "form_charset", "parse_form", "same_host"]

_log = logging.getLogger("le_transport.auth")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


@functools.lru_cache(maxsize=512)
def _wire_name(name: str) -> str | None:
    """``name`` as a URL built with it writes it on the wire (yarl's ``raw_host``): an IPv6
    literal compressed ([0::1] is ::1), an IDN name in its xn-- form, lower case, without a
    trailing dot; None if no URL can be built with it."""
    try:
        return URL.build(scheme="https", host=name.rstrip(".")).raw_host
    except ValueError:  # UnicodeError included
        return None


def same_host(host: str, url: URL) -> bool:
    """Whether ``url`` points at ``host`` (``name`` or ``name:port``; default ports match).

    Both compared as written on the wire, so that any form of one host matches another: an
    IPv6 literal long or compressed, an IDN name decoded or in xn-- form, any case."""
    name, port = split_host(host)
    want_name = _wire_name(name)
    if want_name is None or (url.raw_host or "").rstrip(".").lower() != want_name:
        return False
    default = _DEFAULT_PORTS.get(url.scheme)
    want = port if port is not None else default
    have = url.explicit_port if url.explicit_port is not None else default
    return want == have


def charset_of(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type value (quotes stripped), or None when it
    names none."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


#: A Host header's value as RFC 9110 7.2 has it: ``uri-host [":" port]``, an IP literal in
#: brackets or a reg-name; no userinfo, path, query, fragment or whitespace.
_HOST_HEADER = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]+)(?::[0-9]*)?")


def _as_host_sees_it(request: ClientRequest) -> URL:
    """``request.url`` with the authority of the request's own ``Host`` header, if it has one
    (the URL's otherwise, or when the header is no host and port: userinfo, a path, a query,
    a port out of range)."""
    url = request.url
    host = request.headers.get(hdrs.HOST)
    if host is None or not url.is_absolute():
        return url
    host = host.strip()
    if _HOST_HEADER.fullmatch(host) is None:
        return url
    try:
        built = URL.build(
            scheme=url.scheme,
            authority=host,
            path=url.raw_path,
            query_string=url.raw_query_string,
            encoded=True,
        )
        built.explicit_port  # noqa: B018 - yarl checks the port only when it is read
    except (ValueError, TypeError):
        return url
    return built


def form_charset(content_type: str) -> str | None:
    """The charset of a form-encoded body (``utf-8`` unless the header names one), or None when
    ``content_type``'s media type is not exactly ``application/x-www-form-urlencoded``."""
    if content_type.partition(";")[0].strip().lower() != _FORM_MEDIA_TYPE:
        return None
    return charset_of(content_type) or "utf-8"


def parse_form(body: bytes, charset: str) -> list[tuple[str, str]]:
    """A form-encoded body's name/value pairs, in order, repeated names and blank values kept.

    Both the raw bytes and the percent-escapes are decoded in ``charset``, strictly: raises
    :class:`UnicodeError` (undecodable) or :class:`LookupError` (unknown, or not a text
    encoding; a :class:`ValueError` if the name holds a NUL)
    """
    return parse_qsl(
        body.decode(charset),
        keep_blank_values=True,
        strict_parsing=False,
        encoding=charset,
        errors="strict",
    )


def _allowed_host(host: str) -> str:
    """``host`` in its wire form (an IDN name as xn--, lower case; an IPv6 literal compressed),
    or HostileHostError for an attack shape (scheme, path, userinfo, whitespace, control
    characters). An underscore is allowed (internal DNS, container service names)."""
    if host.startswith("["):
        return validate_host(host)
    name, sep, port = host.rpartition(":")
    if not (sep and port.isdigit()):
        name, sep, port = host, "", ""
    wire = _wire_name(name) if name else None
    if wire is None:
        raise HostileHostError("refused")
    wire_host = f"{wire}{sep}{port}"
    # The LDH check, an underscore standing for a letter: the shape check stays the same.
    validate_host(wire_host.replace("_", "u"))
    return wire_host


def _host_set(value: Iterable[str]) -> frozenset[str]:
    """``allowed_hosts`` checked: a collection of hosts (``name`` or ``name:port``), each a
    bare host (:func:`~le_transport.providers.domains.validate_host`); a ConfigurationError
    naming the field otherwise, never showing more of a value than its host-like start."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        # A str is an iterable of its characters: "api.example.com" would allow "a", "p"...
        raise ConfigurationError(
            "AuthMiddleware.allowed_hosts must be a collection of hosts (a set or list of "
            f"'name' or 'name:port'), got {type(value).__name__}"
            + (": a single host goes in a set or a list too" if isinstance(value, str) else "")
        )
    hosts = set()
    for host in value:
        if not isinstance(host, str) or not host:
            shown = "an empty str" if isinstance(host, str) else type(host).__name__
            raise ConfigurationError(
                f"AuthMiddleware.allowed_hosts must hold non-empty str hosts, got {shown}"
            )
        try:
            hosts.add(_allowed_host(host))
        except HostileHostError:
            raise HostConfigurationError(
                f"AuthMiddleware.allowed_hosts holds {_shown_host(host)}, which is not a bare "
                "hostname with an optional port (no scheme, path, userinfo, whitespace or "
                "control characters)"
            ) from None
    return frozenset(hosts)


def _unsent(ctx: CallContext | None) -> None:
    """Say on the call's context that nothing of it was sent, if no retry loop ran it yet: so
    that a recovery loop does not take a call on a caller's session (the stack on it) for one
    sent with no schedule judging it (CallLedger.finish's ``unjudged``)."""
    if ctx is not None and ctx.active is None:
        ctx.active = False


def _signs_forms(middleware: AuthMiddleware) -> bool:
    return isinstance(middleware.auth, BodySigningAuth)


def _signs_each_request(middleware: AuthMiddleware) -> bool:
    return getattr(middleware.auth, "signs_each_request", False) is True


@attrs.frozen(eq=False)
class AuthMiddleware:
    """Puts ``auth``'s credentials on requests to the hosts ``domains`` names; 401 → one replay.

    - ``auth``: the :class:`~le_transport.providers.AuthProvider`.
    - ``domains``: the :class:`~le_transport.providers.DomainProvider` the engine resolved the
      call's service with; the request's host must be the one it names.
    - ``allowed_hosts``: further hosts (``name`` or ``name:port``) that may receive
      credentials on calls without an engine call context (a foreign session): a collection
      of them (a set, a list), checked when built. A str alone (which would be taken for its
      characters) or anything but non-empty str hosts is a
      :class:`~le_transport.errors.ConfigurationError`; a host with more than a host in it
      (a scheme, a path, userinfo) a :class:`~le_transport.errors.HostConfigurationError`.
    - ``scheme``: the scheme credentials may travel over (the engine's); a redirect from
      ``https`` down to ``http`` on the right host still gets none. None: any.
    - ``clock``: the engine's clock; getting credentials (which may log in) is bounded by the
      call's deadline on it.

    Hashable by identity, as aiohttp's chain cache needs.
    """

    auth: AuthProvider
    domains: DomainProvider
    allowed_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_set)
    scheme: str | None = None
    clock: Clock = attrs.field(factory=RealClock)
    # Decided once: a runtime protocol check costs microseconds, too much for every call.
    _signs_forms: bool = attrs.field(
        init=False, repr=False, default=attrs.Factory(_signs_forms, takes_self=True)
    )
    _signs_each_request: bool = attrs.field(
        init=False, repr=False, default=attrs.Factory(_signs_each_request, takes_self=True)
    )
    # Whether the first credentials are yet to be looked at (_check_signing): a list, as the
    # middleware is frozen (hashable by identity for aiohttp's chain cache).
    _unchecked: list[bool] = attrs.field(init=False, repr=False, factory=lambda: [True])

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if is_websocket_upgrade(request) or not await self._allowed(request.url):
            return await handler(request)
        method = request.method.upper()
        # Read once: the replay (and, for a per-request signer, every retry) is signed over
        # the same form.
        form = await self._read_form(request, method) if self._signs_forms else None
        if not self._signs_each_request:
            return await self._authorise(request, handler, method, form)
        ctx = current_call()
        token = None
        ledger: CallLedger | None = None
        if ctx is None or ctx.active:
            # A foreign session, or a call made from inside another's retry loop: the retry
            # middleware will run this call under a context of its own, so give it this one.
            if ctx is None:
                # No engine call records it: recorded here, under a recovery loop, as the
                # retry middleware records a request with no context (it takes this one for
                # an engine call's), so that a POST of it that was acted on (a 303 whose GET
                # hop then failed) is never sent again by the loop.
                ledger = _CALL_LEDGER.get()
            ctx = CallContext()
            token = _CURRENT.set(ctx)
            if ledger is not None:
                ledger.record(ctx, method)

        async def resign(again: ClientRequest) -> None:
            await self._apply(again, method, form)

        # Keyed by this request: a redirect hop is a new request, checked and signed by this
        # middleware again (or given no credentials, if it goes to another host).
        ctx.resign = (request, resign)
        try:
            resp = await self._authorise(request, handler, method, form)
        except BaseException as exc:
            if ledger is not None:
                ledger.finish(ctx, exc)
            raise
        finally:
            ctx.resign = None
            if token is not None:
                _CURRENT.reset(token)
        if ledger is not None:
            ledger.finish(ctx)
        return resp

    async def _authorise(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        method: str,
        form: Sequence[tuple[str, str]] | None,
    ) -> ClientResponse:
        """Credentials on ``request``, sent; on a 401, fresh ones and one replay."""
        try:
            sent = await self._apply(request, method, form)
        except BaseException:
            # Nothing of the request was sent: said on the call's context, so that a recovery
            # loop does not take a call on a caller's session (the stack on it) for one sent
            # with no schedule judging it (CallLedger.finish's ``unjudged``).
            _unsent(current_call())
            raise
        # Said to the retry loop inside: a 401 to this request is not the call's end (it logs
        # no failure and fires no give-up for it), the replay below is.
        replay = AuthReplay(request)
        marked = AUTH_REPLAY.set(replay)
        try:
            resp = await self._send(request, handler)
        finally:
            AUTH_REPLAY.reset(marked)
        if resp is not None:
            return resp
        if body_spent(request):
            # A replay would send an empty body (a server that accepts it answers a success
            # for a request that carried nothing). The retry loop, seeing it spent, reported
            # the 401 itself; if it did not, it is reported now.
            replay.report("its body was a stream, already sent")
            await self._invalidate(sent)
            err = AuthenticationError(
                f"{method} {redact_url(request.url)}: rejected with 401; the credentials were "
                "dropped (the next call gets fresh ones), but the request was not replayed: "
                "its body was a stream, already sent, that cannot be sent again"
            )
            _log.warning("%s", err, extra={"method": method, "status": 401})
            raise err
        _log.info(
            "%s %s: 401; invalidating the credentials (generation %d), re-authenticating once "
            "and replaying the request once",
            method,
            redact_url(request.url),
            sent.generation,
            extra={"method": method, "status": 401, "generation": sent.generation},
        )
        try:
            await self._invalidate(sent)
            await self._apply(request, method, form)
        except Exception as exc:
            # The call ends here, on its 401: reported as the retry loop would have.
            replay.report(f"fresh credentials could not be had ({type(exc).__name__})")
            raise
        except BaseException:
            # Cancelled (or interrupted) before the replay: the 401 is still the call's end.
            replay.report("cancelled while fresh credentials were fetched")
            raise
        resp = await self._send(request, handler)
        if resp is not None:
            return resp
        # The fresh credentials are not invalidated: rejected at once, they say the problem is
        # not them (a permission the user lacks); dropped, the next call would log in again,
        # and each call to such an endpoint would cost two logins.
        err = AuthenticationError(
            f"{method} {redact_url(request.url)}: rejected with 401 again after fresh "
            "credentials; check the credentials and their permissions (not replayed again; "
            "the fresh credentials are kept)"
        )
        _log.error("%s", err, extra={"method": method, "status": 401})
        raise err

    async def _allowed(self, url: URL) -> bool:
        if self.scheme is not None and url.scheme != self.scheme:
            _log.warning(
                "%s: not sending credentials over %s (the engine uses %s)",
                redact_url(url),
                url.scheme,
                self.scheme,
                extra={"scheme": url.scheme},
            )
            return False
        ctx = current_call()
        if ctx is None or ctx.service is None:
            return any(same_host(h, url) for h in self.allowed_hosts)
        try:
            step = self.domains.resolve(ctx.service)
            retry = ctx.retry
            if retry is None or retry.deadline is None:
                host = await step
            else:
                # Asked again on every redirect hop, when the domain map may have gone stale
                # and a Domain API fetch run its own attempt timeout: bounded by the call's
                # deadline, as the engine's own lookup is (a 20 s call took 41 s).
                host = await within_deadline(self.clock, ctx, step, "resolving its host", url=url)
        except (HostileHostError, UnknownServiceError) as exc:
            # The provider names no host of ours for the service now (a redirect hop may meet
            # a map that changed): whatever the URL names is not one.
            _log.warning(
                "%s: not sending credentials, as the domain provider has no host for service %r "
                "that may have them (%s)",
                redact_url(url),
                ctx.service,
                type(exc).__name__,
                extra={"service": ctx.service, "error": type(exc).__name__},
            )
            return False
        except TransportError:
            # Not a host to withhold credentials from, but an outage (the Domain API down) or
            # the call over (a closing engine, its deadline): the call fails with it, unsent,
            # for the retry and recovery policies to judge. Sent without credentials, it would
            # only come back a 401 that no one waits out.
            _unsent(ctx)
            raise
        except Exception as exc:
            _unsent(ctx)
            # A bug in the domain provider: neither the caller's arguments nor an outage.
            raise provider_failed(
                "domain", self.domains, "resolve", exc, service=ctx.service
            ) from safe_cause(exc)
        if same_host(host, url):
            return True
        _log.warning(
            "%s: not sending credentials to %s, which is not the host of service %r",
            redact_url(url),
            url.host,
            ctx.service,
            extra={"service": ctx.service},
        )
        return False

    async def _read_form(
        self, request: ClientRequest, method: str
    ) -> Sequence[tuple[str, str]] | None:
        """The form body's parameters, or None when the body is not form-encoded."""
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        if content_type is None:
            return None
        charset = form_charset(content_type)
        if charset is None:
            return None
        body = request.body
        if isinstance(body, BytesPayload):
            # BytesPayload (str, bytes, a dict's urlencoded form) keeps its bytes and can be sent
            # again; reading any other payload would consume it.
            raw = bytes(await body.as_bytes())
        elif isinstance(body, bytes):
            raw = body
        else:
            raise self._unsignable(
                request,
                method,
                "stream",
                f"it is a streaming body ({type(body).__name__}) that cannot be read without "
                "consuming it; pass the form as a dict, str or bytes",
            )
        try:
            return parse_form(raw, charset)
        except UnicodeError:
            reason = (
                "undecodable",
                f"it cannot be decoded as {charset!r:.40} (the charset its Content-Type "
                "declares, utf-8 by default); send it in that charset or declare the right one",
            )
        except (LookupError, ValueError):  # ValueError: a NUL in the name
            reason = (
                "unknown_charset",
                f"its Content-Type declares the charset {charset!r:.40}, which Python does not "
                "know",
            )
        # Raised outside the except clause: the decode error's repr holds the whole body.
        raise self._unsignable(request, method, *reason)

    @staticmethod
    def _unsignable(request: ClientRequest, method: str, kind: str, reason: str) -> UnsignableBody:
        ctx = current_call()
        err = UnsignableBody(
            f"not sent: the form-encoded body must be signed, but {reason}",
            service=ctx.service if ctx is not None else None,
            method=method,
            url=redact_url(request.url),
        )
        _log.warning("%s", err, extra={"method": method, "reason": kind})
        return err

    async def _apply(
        self, request: ClientRequest, method: str, form: Sequence[tuple[str, str]] | None
    ) -> Credentials:
        ctx = current_call()
        try:
            # A signer signs the URL as the server rebuilds it: host and port from the Host
            # header the request carries (RFC 5849 3.4.1.2), the caller's own if it set one.
            url = (
                _as_host_sees_it(request)
                if self._signs_each_request or self._signs_forms
                else request.url
            )
            if form is None:
                step = self.auth.credentials(method, url)
            else:
                signer = cast(BodySigningAuth, self.auth)
                step = signer.credentials_for_form(method, url, form)
            if ctx is None or ctx.retry is None or ctx.retry.deadline is None:
                creds = await step
            else:
                # A login runs on the Login Service's own schedule: the call's deadline bounds
                # the wait.
                creds = await within_deadline(
                    self.clock, ctx, step, "getting credentials", method=method, url=request.url
                )
            if type(creds) is not Credentials:
                # Anything else (a dict, an object of the provider's own) carries headers no
                # one checked: checked now, and the provider's bug when they cannot be sent.
                creds = as_credentials(creds)
            if self._unchecked[0]:
                self._unchecked[0] = False
                self._check_signing(creds)
            for name, value in creds.headers.items():
                request.headers[name] = value
        except InvalidCredentials as exc:
            # Credentials the provider made that cannot be sent (a header with a CR/LF, an int
            # value): a ConfigurationError, but the provider's, not the caller's.
            raise provider_failed(
                "auth",
                self.auth,
                "credentials" if form is None else "credentials_for_form",
                exc,
                service=ctx.service if ctx is not None else None,
            ) from exc
        except TransportError:
            raise  # a login's failure, as it is (the recovery loop asks the call, not it)
        except Exception as exc:
            # The provider's own failure (a bug in a custom provider, an answer that is not
            # Credentials): typed, with its exception as the cause, and never taken for the
            # caller's bad arguments by the engine.
            operation = "credentials" if form is None else "credentials_for_form"
            raise provider_failed(
                "auth",
                self.auth,
                operation,
                exc,
                service=ctx.service if ctx is not None else None,
            ) from safe_cause(exc)
        return creds

    def _check_signing(self, creds: Credentials) -> None:
        """Warn once when ``creds`` carry an OAuth 1.0 signature (a nonce: good for one
        request) from a provider that does not say it signs each request or signs forms: a
        wrapper around :class:`~le_transport.providers.OAuth1Auth` that does not forward
        ``signs_each_request`` and ``credentials_for_form``. Its retries would resend a spent
        nonce (refused by a gateway that remembers them, costing the one 401 replay) and its
        form bodies would go unsigned, with nothing saying why. Never the header's value."""
        if self._signs_each_request and self._signs_forms:
            return
        value = next((v for k, v in creds.headers.items() if k.lower() == "authorization"), None)
        if value is None or value[:6].lower() != "oauth " or "oauth_nonce" not in value:
            return
        missing = [
            name
            for name, has in (
                ("signs_each_request = True", self._signs_each_request),
                ("credentials_for_form", self._signs_forms),
            )
            if not has
        ]
        _log.warning(
            "the auth provider %s gives OAuth 1.0 credentials (a nonce, good for one request) "
            "but has no %s: a provider wrapping OAuth1Auth must forward them, or retries resend "
            "a spent nonce (a gateway refuses the replay) and form bodies go unsigned",
            type(self.auth).__name__,
            " nor ".join(missing),
            extra={"provider": type(self.auth).__name__},
        )

    async def _invalidate(self, rejected: Credentials) -> None:
        """``auth.invalidate(rejected)``; the provider's own failure as a ProviderError."""
        try:
            await self.auth.invalidate(rejected)
        except TransportError:
            raise
        except Exception as exc:
            ctx = current_call()
            raise provider_failed(
                "auth",
                self.auth,
                "invalidate",
                exc,
                service=ctx.service if ctx is not None else None,
            ) from safe_cause(exc)

    @staticmethod
    async def _send(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse | None:
        """The response, or None when it was a 401 (raised or returned)."""
        try:
            resp = await handler(request)
        except ClientStatusError as exc:
            if exc.status == 401:
                return None
            raise
        if resp.status == 401:
            resp.release()
            return None
        return resp
