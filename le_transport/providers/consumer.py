"""The consumer JWT for the Messaging Window API, from the ``idp`` service.

A consumer (the customer side of a conversation) gets its token from the account's ``idp``
host: ``POST /api/account/{id}/signup`` for an unauthenticated consumer, or
``POST /api/account/{id}/authenticate`` with ``{"authCode": ...}`` (from the brand's identity
provider) for an authenticated one; both answer ``{"jwt": "<token>"}``. The consumer socket
sends it as ``Authorization: jwt <token>`` (or in its ``InitConnection`` frame: the socket layer
takes it from ``Credentials.bearer``). A new token is fetched ``margin`` seconds before the
JWT's ``exp`` (in the background: a call or a connect holding the still-valid token never
waits for it; see ``providers/_token.py``), and after the server rejects the current one.
An ``auth_code`` callable is given the token request's attempt timeout or its deadline to
answer, whichever is shorter (the retry policy's: 30 s by default): one that never answers is
cut there, a ``TimeoutError``, an outage like its own network failure, and the next fetch
calls it anew. A policy with neither (``attempt_timeout=None``, no ``deadline``: no limit)
leaves it unbounded, as it leaves the token request's HTTP call. The deadline is the whole
token request's, from its start: the callable's time (and the host's resolution) counts
against it, and the HTTP call is given what is left.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import attrs

from .._redact import Secret
from ..clock import timeout_after
from ..errors import ConfigurationError
from ..policies.retry import RetryPolicy
from ._http import (
    ProviderHttp,
    ProviderResponse,
    provider_url,
    require_secret,
    validate_account,
)
from ._token import DEFAULT_TOKEN_MARGIN, TokenProvider, check_token_options
from .domains import DomainProvider

__all__ = ["IDP", "ConsumerJwt"]

#: The Domain API service that issues consumer tokens.
IDP = "idp"

AuthCode = str | Secret | Callable[[], Awaitable[str | Secret]]


class ConsumerJwt(TokenProvider):
    """An :class:`~le_transport.providers.AuthProvider` for the Messaging Window API's consumer.

    - ``account``: the LiveEngage account id (it goes into the ``idp`` path).
    - ``domains``: where the ``idp`` host comes from.
    - ``auth_code``: None for ``signup`` (unauthenticated consumer); a code, or an async
      callable returning a fresh one (codes are usually single use), for ``authenticate``;
      one that gives no code within the token request's attempt timeout or deadline is cut
      (see the module).
    - ``service``: the Domain API service that issues consumer tokens (:data:`IDP`, ``idp``).
    - ``margin``: fetch a new token this many seconds before the JWT's ``exp`` (60).
    - ``wall_clock``: epoch seconds, to read the JWT's ``iat`` and ``exp`` against; the
      refresh itself is timed on the engine's clock. Default (None): the engine's it is
      attached to (:attr:`Engine.wall_clock <le_transport.Engine.wall_clock>`: a
      VirtualClock's virtual date, else :func:`time.time`).
    """

    _kind = "consumer_jwt"
    _scheme = "jwt"

    def __init__(
        self,
        account: str,
        *,
        domains: DomainProvider,
        auth_code: AuthCode | None = None,
        service: str = IDP,
        margin: float = DEFAULT_TOKEN_MARGIN,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._account = validate_account(account, owner="ConsumerJwt")
        if auth_code is not None and not (
            isinstance(auth_code, (str, Secret)) or callable(auth_code)
        ):
            raise ConfigurationError(
                "ConsumerJwt.auth_code must be None, a str or Secret, or an async callable, "
                f"got {type(auth_code).__name__}"
            )
        if isinstance(auth_code, str):
            auth_code = Secret(auth_code)
        if isinstance(auth_code, Secret):
            # An empty code would be sent to ``authenticate`` and refused there, far from here;
            # one UTF-8 cannot encode would fail there with the code in the error's arguments.
            auth_code = require_secret(auth_code, owner="ConsumerJwt", field="auth_code")
        check_token_options("ConsumerJwt", domains, service, self._account)
        self._auth_code = auth_code
        self._domains = domains
        self._service = service
        super().__init__(margin=margin, wall_clock=wall_clock)

    @property
    def account(self) -> str:
        """The account this provider's tokens are for."""
        return self._account

    @property
    def subject(self) -> str:
        """How events and logs name this provider."""
        return f"consumer_jwt[{self._account}]"

    async def _code(self, http: ProviderHttp, retry: RetryPolicy, left: float | None) -> str | None:
        """The auth code to send (None: sign up). A callable's is awaited for no longer than
        the token request's attempt timeout or deadline, whichever is shorter: else one that
        never answers (an identity provider's call without a timeout of its own) held the
        shared fetch for ever, and every call joining it. Cut, it is a ``TimeoutError``, an
        outage (see ``_token.py``); the next fetch asks anew. A policy with neither limit
        leaves it unbounded, as it leaves the HTTP call: an identity provider that always
        takes longer than 30 s is waited for there, so here too. ``left``: what is left of the
        deadline, which the callable's time counts against."""
        code = self._auth_code
        if code is None:
            return None
        if isinstance(code, Secret):
            return code.reveal()
        pending = code()
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                "ConsumerJwt.auth_code must be an async callable; calling it returned "
                f"{type(pending).__name__}, not an awaitable"
            )
        limits = [t for t in (retry.attempt_timeout, left) if t is not None]
        if not limits:
            # No limit asked for: the token request's HTTP call is not cut either.
            value: object = await pending
        else:
            bound = min(limits)
            timeout = timeout_after(http.clock, bound)
            try:
                async with timeout:
                    value = await pending
            except TimeoutError:
                if not timeout.expired:
                    raise  # the callable's own
                raise TimeoutError(
                    f"{self.subject}: the auth_code callable gave no code within {bound:g} s"
                ) from None
        if isinstance(value, Secret):
            value = value.reveal()
        # None must not fall through to "no code": that would sign up an anonymous consumer in
        # place of the authenticated one the caller asked for.
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                "ConsumerJwt.auth_code must return a non-empty str or Secret, got "
                f"{'an empty str' if value == '' else type(value).__name__}"
            )
        return require_secret(value, owner="ConsumerJwt", field="auth_code (returned)").reveal()

    async def _request_token(
        self, http: ProviderHttp, retry: RetryPolicy, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        # One deadline for the whole token request, taken as it starts: the callable's time
        # counts against it, and the HTTP call gets what is left (a 9 s callable and a 9 s
        # token service under deadline=10 took 18 s).
        started = http.clock.now()
        host = await self._domains.resolve(self._service)
        deadline = retry.deadline
        code = await self._code(http, retry, self._left(http, deadline, started))
        left = self._left(http, deadline, started)
        if left is not None:
            retry = attrs.evolve(retry, deadline=left)
        action = "signup" if code is None else "authenticate"
        url = provider_url(http.scheme, host, f"/api/account/{self._account}/{action}")
        resp = await http.request(
            "POST",
            url,
            service=self._service,
            json={} if code is None else {"authCode": code},
            retry=retry,
            fallback=fallback,
            # A signup repeated after a lost answer only makes another anonymous consumer.
            idempotent=code is None,
        )
        return resp, "jwt"

    def _left(self, http: ProviderHttp, deadline: float | None, started: float) -> float | None:
        """Seconds left of ``deadline`` (None: no deadline) since ``started``; a
        ``TimeoutError`` (an outage, as a callable cut) once none is."""
        if deadline is None:
            return None
        left = deadline - (http.clock.now() - started)
        if left <= 0:
            raise TimeoutError(
                f"{self.subject}: the token request's {deadline:g} s deadline passed before it "
                "was sent"
            )
        return left

    def __repr__(self) -> str:
        mode = "signup" if self._auth_code is None else "authenticate"
        return f"ConsumerJwt(account={self._account!r}, mode={mode!r})"
