"""Shared machinery of token providers: fetch once, reuse, refresh before expiry, single flight.

A token provider (OAuth2 client credentials, the consumer JWT) holds one token. It fetches it on
first use, reuses it until ``margin`` seconds before it expires (the JWT's ``exp``, else the
answer's ``expires_in``), then fetches a new one. Concurrent callers share one fetch. Expiry is
kept on the engine's clock: the token's remaining lifetime is read once, against the wall clock,
when the token arrives.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

import attrs
from yarl import URL

from .._redact import Secret
from ..errors import AuthenticationError, ConfigurationError
from ..events import StateEvent
from ..policies._validate import finite_number
from ._flight import SingleFlight
from ._http import (
    ProviderHttp,
    ProviderResponse,
    emit_state,
    header_safe,
    require_attached,
    require_option,
)
from ._refusals import credential_refusals
from .auth import Credentials
from .domains import DomainProvider
from .jwt import jwt_expiry

__all__ = ["DEFAULT_TOKEN_MARGIN", "MIN_TOKEN_REFRESH", "Token", "TokenProvider"]

_log = logging.getLogger("le_transport.auth")

#: Fetch a new token this many seconds before the old one expires.
DEFAULT_TOKEN_MARGIN = 60.0
#: The soonest a token is fetched anew on its own, whatever its answer says about its expiry.
MIN_TOKEN_REFRESH = 5.0


@attrs.frozen(repr=False)
class Token:
    """A token, when to fetch the next one (engine clock; None: never on its own), and its
    generation."""

    value: Secret
    refresh_at: float | None
    generation: int

    def __repr__(self) -> str:
        return f"Token(generation={self.generation}, refresh_at={self.refresh_at!r})"


def check_token_options(owner: str, domains: object, service: object) -> None:
    """The options every token provider shares: a domain provider and a service name."""
    require_option(
        isinstance(domains, DomainProvider),
        domains,
        owner=owner,
        field="domains",
        wants="a DomainProvider",
    )
    require_option(
        isinstance(service, str) and bool(service),
        service,
        owner=owner,
        field="service",
        wants="a non-empty str",
    )


class TokenProvider:
    """Base of the token providers; subclasses implement :meth:`_request_token`."""

    _kind = "token"
    #: The ``Authorization`` scheme the token is sent with.
    _scheme = "Bearer"

    def __init__(
        self,
        *,
        margin: float = DEFAULT_TOKEN_MARGIN,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not (finite_number(margin) and margin >= 0):
            raise ConfigurationError(
                f"{type(self).__name__}.margin must be a finite number of seconds >= 0, "
                f"got {margin!r:.40}"
            )
        require_option(
            callable(wall_clock),
            wall_clock,
            owner=type(self).__name__,
            field="wall_clock",
            wants="a callable returning epoch seconds",
        )
        self._margin = float(margin)
        self._wall_clock = wall_clock
        self._http: ProviderHttp | None = None
        self._token: Token | None = None
        self._generation = 0
        self._flight: SingleFlight[Token] = SingleFlight(f"le_transport.{self._kind}")
        self._closed = False
        #: Tokens fetched successfully.
        self.fetches = 0

    # -- subclass hook ----------------------------------------------------------------------

    async def _request_token(self, http: ProviderHttp) -> tuple[ProviderResponse, str]:
        """Send the token request; return the answer and the JSON field holding the token."""
        raise NotImplementedError

    @property
    def subject(self) -> str:
        """How events and logs name this provider."""
        return self._kind

    @property
    def generation(self) -> int:
        """How many tokens have been obtained so far."""
        return self._generation

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, http: ProviderHttp) -> None:
        """Use the engine's HTTP path (called by the engine on start), and attach the domain
        provider this one resolves its host with, in case the engine does not own it."""
        self._http = http
        attach_domains = getattr(getattr(self, "_domains", None), "attach", None)
        if callable(attach_domains):
            attach_domains(http)

    @property
    def token(self) -> Token | None:
        """The current token, if any."""
        return self._token

    # -- AuthProvider -----------------------------------------------------------------------

    async def credentials(self, method: str = "GET", url: URL | None = None) -> Credentials:
        """``Authorization: <scheme> <token>``, fetching a token first if it is missing or due."""
        http = require_attached(self._http, self)
        token = self._token
        if token is None or (token.refresh_at is not None and http.clock.now() >= token.refresh_at):
            token = await self.fetch()
        return Credentials(
            headers={"Authorization": f"{self._scheme} {token.value.reveal()}"},
            bearer=token.value,
            generation=token.generation,
        )

    async def invalidate(self, rejected: Credentials) -> None:
        """Drop the token if ``rejected`` carried it: the next call fetches a new one (once)."""
        if self._token is not None and self._token.generation == rejected.generation:
            self._token = None

    async def relogin(self) -> Credentials:
        """Fetch a new token whatever the current one (the outer recovery loop's step)."""
        self._token = None
        return await self.credentials()

    async def fetch(self) -> Token:
        """Fetch a token now, or join the fetch in progress (single flight)."""
        if self._closed:
            raise AuthenticationError(f"{self.subject}: the auth provider is closed")
        return await self._flight.run(self._fetch)

    async def close(self) -> None:
        """Stop a fetch in progress. Idempotent."""
        self._closed = True
        self._token = None
        await self._flight.cancel()

    # -- internals --------------------------------------------------------------------------

    async def _fetch(self) -> Token:
        http = require_attached(self._http, self)
        with credential_refusals(
            http,
            self.subject,
            blocked=f"{self.subject}: answered 451: the account is blacklisted; not retried",
            refused=lambda status: (
                f"{self.subject}: the token request was refused with {status}; check the "
                "credentials (a rejected token request is never retried)"
            ),
            keep_attempts=False,
        ):
            resp, field = await self._request_token(http)
        value, expires_in = self._parse(resp, field)
        now = http.clock.now()
        lifetime = expires_in
        exp = jwt_expiry(value)
        if exp is not None:
            lifetime = exp - self._wall_clock()
        refresh_at = None
        if lifetime is not None:
            # A token that lives shorter than the margin is refreshed half-way through instead.
            refresh_in = lifetime - min(self._margin, max(lifetime, 0.0) / 2.0)
            # A JWT already past its exp by our wall clock (a skewed clock, a server's bad
            # answer) would otherwise be fetched anew for every call: one token request per
            # API call. It is used until the floor; a 401 says sooner if it is really dead.
            refresh_at = now + max(refresh_in, MIN_TOKEN_REFRESH)
        self._generation += 1
        token = Token(Secret(value), refresh_at, self._generation)
        self._token = token
        self.fetches += 1
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent(
                "logged_in",
                self.subject,
                {
                    "generation": token.generation,
                    "refresh_in": None if refresh_at is None else round(refresh_at - now, 3),
                },
            ),
        )
        return token

    def _parse(self, resp: ProviderResponse, field: str) -> tuple[str, float | None]:
        if resp.status not in (200, 201):
            raise AuthenticationError(f"{self.subject}: answered {resp.status} instead of 200")
        try:
            payload = json.loads(resp.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            payload = None
        value = payload.get(field) if isinstance(payload, dict) else None
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"{self.subject}: the answer has no {field!r}")
        if not header_safe(value):
            raise AuthenticationError(
                f"{self.subject}: the answer's {field!r} has characters a header cannot carry "
                "(whitespace or control characters); refused"
            )
        assert isinstance(payload, dict)
        expires_in = payload.get("expires_in")
        seconds: float | None = None
        if isinstance(expires_in, (int, float, str)) and not isinstance(expires_in, bool):
            try:
                seconds = float(expires_in)
            except ValueError:
                seconds = None
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                seconds = None
        return value, seconds
