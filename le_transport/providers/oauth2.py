"""OAuth2 client credentials through Sentinel (service ``sentinel``).

``POST {sentinel}/sentinel/api/account/{id}/app/token?v=1.0`` with the form ``client_id``,
``client_secret``, ``grant_type=client_credentials`` answers ``{"access_token": "<JWT>",
"token_type": "Bearer", "expires_in"?}``. The token is sent as ``Authorization: Bearer <JWT>``
and fetched anew ``margin`` seconds before the JWT's ``exp`` (read without verifying it; the
answer's ``expires_in`` when the token carries no ``exp``; with both, never later than
``expires_in``, which no skew of our wall clock can misread).

The Login Service's own client-credentials form (which yields a Login Service session, with its
keepalive) is :class:`~le_transport.providers.login.ClientCredentialsLogin`.
"""

from __future__ import annotations

from collections.abc import Callable

from .._redact import Secret
from ..policies.retry import RetryPolicy
from ._http import (
    ProviderHttp,
    ProviderResponse,
    provider_url,
    require_option,
    require_secret,
    validate_account,
)
from ._token import DEFAULT_TOKEN_MARGIN, TokenProvider, check_token_options
from .domains import DomainProvider

__all__ = ["SENTINEL", "SentinelClientCredentials"]

#: The Domain API service of LivePerson's OAuth2 token endpoint.
SENTINEL = "sentinel"


class SentinelClientCredentials(TokenProvider):
    """An :class:`~le_transport.providers.AuthProvider`: OAuth2 client credentials via Sentinel.

    - ``account``, ``client_id``, ``client_secret``: the app installation's credentials.
    - ``domains``: where the ``sentinel`` host comes from.
    - ``service``: the Domain API service of the token endpoint (:data:`SENTINEL`,
      ``sentinel``).
    - ``version``: the token endpoint's API version, sent as ``?v=`` (``1.0``).
    - ``margin``: fetch a new token this many seconds before expiry (60).
    - ``wall_clock``: epoch seconds, to read the JWT's ``iat`` and ``exp`` against. Default
      (None): the engine's it is attached to (:attr:`Engine.wall_clock
      <le_transport.Engine.wall_clock>`: a VirtualClock's virtual date, else
      :func:`time.time`).
    """

    _kind = "sentinel"

    def __init__(
        self,
        account: str,
        client_id: str | Secret,
        client_secret: str | Secret,
        *,
        domains: DomainProvider,
        service: str = SENTINEL,
        version: str = "1.0",
        margin: float = DEFAULT_TOKEN_MARGIN,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._account = validate_account(account, owner="SentinelClientCredentials")
        self._client_id = require_secret(
            client_id, owner="SentinelClientCredentials", field="client_id"
        )
        self._client_secret = require_secret(
            client_secret, owner="SentinelClientCredentials", field="client_secret"
        )
        check_token_options("SentinelClientCredentials", domains, service, self._account)
        require_option(
            isinstance(version, str) and bool(version),
            version,
            owner="SentinelClientCredentials",
            field="version",
            wants="a non-empty str",
        )
        self._domains = domains
        self._service = service
        self._version = version
        super().__init__(margin=margin, wall_clock=wall_clock)

    @property
    def account(self) -> str:
        """The account this provider's tokens are for."""
        return self._account

    @property
    def subject(self) -> str:
        """How events and logs name this provider."""
        return f"sentinel[{self._account}]"

    async def _request_token(
        self, http: ProviderHttp, retry: RetryPolicy, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        host = await self._domains.resolve(self._service)
        url = provider_url(
            http.scheme,
            host,
            f"/sentinel/api/account/{self._account}/app/token",
            {"v": self._version},
        )
        resp = await http.request(
            "POST",
            url,
            service=self._service,
            data={
                "client_id": self._client_id.reveal(),
                "client_secret": self._client_secret.reveal(),
                "grant_type": "client_credentials",
            },
            retry=retry,
            fallback=fallback,
            idempotent=True,
        )
        return resp, "access_token"

    def __repr__(self) -> str:
        return f"SentinelClientCredentials(account={self._account!r}, client_id=***)"
