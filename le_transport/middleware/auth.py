"""The auth middleware: credentials on each request, to the right hosts only; 401 → one replay.

It sits outside the retry middleware (once per logical call, and once per redirect hop):

- Credentials go only to the host the domain provider named for the call's service. A request
  to any other host, such as a redirect hop to somewhere else, gets none. A foreign session
  without the engine's call context gets none either, unless ``allowed_hosts`` names the host.
- A 401 invalidates the credentials that were sent (the provider re-authenticates once even if
  a hundred calls see the 401 together: credentials carry a generation), fetches fresh ones and
  replays the request once. A second 401 is an :class:`~le_transport.errors.AuthenticationError`.
  This is the only 4xx that leads to a replay: every other 4xx is the caller's to fix.
- WebSocket upgrades pass through untouched: the socket layer puts its own credentials on them
  (the bearer in the UMS path, ``Authorization: jwt`` for the consumer socket) and owns their
  retries.

Providers make their own calls (login, refresh, token) on a path without this middleware
(:class:`~le_transport.providers.ProviderHttp`), so a login never re-enters it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from yarl import URL

from .._redact import redact_url
from ..errors import AuthenticationError, ClientStatusError, TransportError
from ..providers._http import split_host
from ..providers.auth import AuthProvider, Credentials
from ..providers.domains import DomainProvider
from .context import current_call
from .retry import is_websocket_upgrade

__all__ = ["AuthMiddleware", "same_host"]

_log = logging.getLogger("le_transport.auth")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def same_host(host: str, url: URL) -> bool:
    """Whether ``url`` points at ``host`` (``name`` or ``name:port``; default ports match)."""
    name, port = split_host(host)
    url_host = (url.host or "").rstrip(".").lower()
    if url_host != name.rstrip(".").lower():
        return False
    default = _DEFAULT_PORTS.get(url.scheme)
    want = port if port is not None else default
    have = url.explicit_port if url.explicit_port is not None else default
    return want == have


def _host_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen(eq=False)
class AuthMiddleware:
    """Puts ``auth``'s credentials on requests to the hosts ``domains`` names; 401 → one replay.

    - ``auth``: the :class:`~le_transport.providers.AuthProvider`.
    - ``domains``: the :class:`~le_transport.providers.DomainProvider` the engine resolved the
      call's service with; the request's host must be the one it names.
    - ``allowed_hosts``: further hosts (``name`` or ``name:port``) that may receive
      credentials on calls without an engine call context (a foreign session).
    - ``scheme``: the scheme credentials may travel over (the engine's); a redirect from
      ``https`` down to ``http`` on the right host still gets none. None: any.

    Hashable by identity, as aiohttp's chain cache needs.
    """

    auth: AuthProvider
    domains: DomainProvider
    allowed_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_set)
    scheme: str | None = None

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if is_websocket_upgrade(request) or not await self._allowed(request.url):
            return await handler(request)
        method = request.method.upper()
        sent = await self._apply(request)
        resp = await self._send(request, handler)
        if resp is not None:
            return resp
        _log.info(
            "%s %s: 401; invalidating the credentials (generation %d), re-authenticating once "
            "and replaying the request once",
            method,
            redact_url(request.url),
            sent.generation,
            extra={"method": method, "status": 401, "generation": sent.generation},
        )
        await self.auth.invalidate(sent)
        fresh = await self._apply(request)
        resp = await self._send(request, handler)
        if resp is not None:
            return resp
        await self.auth.invalidate(fresh)
        err = AuthenticationError(
            f"{method} {redact_url(request.url)}: rejected with 401 again after fresh "
            "credentials; check the credentials and their permissions (not replayed again)"
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
            host = await self.domains.resolve(ctx.service)
        except TransportError:
            return False
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

    async def _apply(self, request: ClientRequest) -> Credentials:
        creds = await self.auth.credentials(request.method.upper(), request.url)
        for name, value in creds.headers.items():
            request.headers[name] = value
        return creds

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
