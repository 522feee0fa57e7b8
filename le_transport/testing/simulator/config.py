"""The simulator's configuration: accounts, their credentials, token lifetimes, addresses.

Defaults are test credentials that work out of the box (:data:`DEFAULT_ACCOUNT`,
:data:`DEFAULT_USER` with :data:`DEFAULT_PASSWORD`, :data:`DEFAULT_APP_KEY`,
:data:`DEFAULT_CLIENT_ID` with :data:`DEFAULT_CLIENT_SECRET`). They are not secrets of any real
system, but the simulator treats them as secrets all the same: none is ever logged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from ...chaos.plan import DEFAULT_MAX_RECORDS, check_max_records
from ...errors import ConfigurationError

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_APP_KEY",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "SERVICES",
    "Account",
    "AppKey",
    "SimulatorConfig",
]

#: The account the simulator serves by default.
DEFAULT_ACCOUNT = "12345678"
#: The Login Service user it knows by default, and that user's password.
DEFAULT_USER = "agent1"
DEFAULT_PASSWORD = "sim-password-1"
#: The Sentinel client (client credentials) it knows by default, and its secret.
DEFAULT_CLIENT_ID = "sim-client-1"
DEFAULT_CLIENT_SECRET = "sim-client-secret-1"

#: Every service name the Domain API answers for; all of them point at the simulator.
SERVICES: tuple[str, ...] = (
    "agentVep",
    "asyncMessagingEnt",
    "facadeMsg",
    "idp",
    "sentinel",
    "accountConfigReadOnly",
    "accountConfigReadWrite",
    "engHistDomain",
    "msgHist",
    "messagingRestApiDomain",
    "leDataReporting",
)


@attrs.frozen(repr=False)
class AppKey:
    """An OAuth 1.0 API key: consumer key and secret, access token and its secret."""

    key: str
    secret: str
    access_token: str
    access_token_secret: str

    def __repr__(self) -> str:
        return "AppKey(key=***, secret=***, access_token=***, access_token_secret=***)"


#: The application key (OAuth 1.0, and the Login Service's application login) it knows by
#: default.
DEFAULT_APP_KEY = AppKey(
    key="sim-app-key-1",
    secret="sim-app-secret-1",
    access_token="sim-access-token-1",
    access_token_secret="sim-access-token-secret-1",
)


def _str_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


def _app_keys(value: Iterable[AppKey]) -> tuple[AppKey, ...]:
    return tuple(value)


@attrs.frozen(repr=False)
class Account:
    """One LiveEngage account: its users (``{username: password}``), OAuth 1.0 API keys, and
    OAuth2 clients (``{client_id: client_secret}``, for Sentinel and the login's OAuth2 form)."""

    id: str = DEFAULT_ACCOUNT
    users: Mapping[str, str] = attrs.field(
        factory=lambda: {DEFAULT_USER: DEFAULT_PASSWORD}, converter=_str_map
    )
    app_keys: tuple[AppKey, ...] = attrs.field(
        factory=lambda: (DEFAULT_APP_KEY,), converter=_app_keys
    )
    clients: Mapping[str, str] = attrs.field(
        factory=lambda: {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}, converter=_str_map
    )

    def __repr__(self) -> str:
        return (
            f"Account(id={self.id!r}, users={sorted(self.users)!r}, app_keys={len(self.app_keys)})"
        )


def _accounts(value: Iterable[Account]) -> tuple[Account, ...]:
    accounts = tuple(value)
    if not accounts:
        raise ConfigurationError("SimulatorConfig.accounts must hold at least one Account")
    return accounts


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"SimulatorConfig.{attribute.name} must be > 0, got {value!r}")


def _window(instance: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    # NaN would refuse nothing (abs(skew) > nan is False), a negative window everything.
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigurationError(
            f"SimulatorConfig.{attribute.name} must be None or a number of seconds >= 0, "
            f"got {value!r}"
        )


@attrs.frozen
class SimulatorConfig:
    """What the simulator knows and how it behaves.

    - ``accounts``: the accounts it serves (one default account).
    - ``session_ttl``: seconds a Login Service bearer lives without a refresh (answered as
      ``sessionTTl`` in milliseconds; LiveEngage: 8 h).
    - ``jwt_ttl``: seconds a Sentinel or consumer JWT lives.
    - ``idle_timeout``: seconds a messaging socket may stay without a data frame from the
      client before the server closes it (LiveEngage: about 60).
    - ``idle_close_code``: the close code it uses then.
    - ``public_address``: ``host:port`` the Domain API hands out instead of the address the
      client reached the simulator by (behind a proxy or a TLS front).
    - ``public_scheme``: the scheme clients use to reach it (for OAuth 1.0 base strings behind
      a TLS front); default: the simulator's own.
    - ``oauth1_timestamp_window``: if set (seconds, >= 0), OAuth 1.0 timestamps further than
      this many seconds from the simulator's time are refused. Off by default: a virtual
      clock's time need not match the client's wall clock. Either way a timestamp must be
      decimal digits (RFC 5849's positive integer), else the request is refused.
    - ``fault_header``: honour ``X-LE-Fault: <rule id>`` on a request: that rule's fault is
      injected whatever its schedule says (Envoy's header faults). Off by default: any client
      could then fail the simulator's answers on purpose.
    - ``echo_published``: after a ``PublishEvent`` the server also sends the message back as a
      ``.ams.ms.MessagingEventNotification`` on the same socket, as LiveEngage does for the
      conversation's subscribers.
    - ``max_records``: how many entries each of the simulator's records keeps, the newest ones
      (:data:`DEFAULT_MAX_RECORDS`: 100,000; None: no bound, for short tests only): the
      requests (``sim.requests``), the fault decisions and injections (``sim.faults``), the
      published messages, refused handshakes and accepted sockets (``sim.sockets``), and on
      each socket its received frames, subscriptions and dropped frames; and the OAuth 1.0
      nonces it remembers to refuse a replay (``sim.tokens.nonces``). A simulator serving a
      long soak then keeps bounded memory; each record's ``dropped`` (``sim.records_dropped``
      for the requests) counts what was dropped. An int >= 1 or None.
    """

    accounts: tuple[Account, ...] = attrs.field(factory=lambda: (Account(),), converter=_accounts)
    session_ttl: float = attrs.field(default=8 * 3600.0, validator=_positive)
    jwt_ttl: float = attrs.field(default=3600.0, validator=_positive)
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    idle_close_code: int = 1000
    public_address: str | None = None
    public_scheme: str | None = None
    oauth1_timestamp_window: float | None = attrs.field(default=None, validator=_window)
    echo_published: bool = True
    fault_header: bool = False
    max_records: int | None = attrs.field(default=DEFAULT_MAX_RECORDS)

    @max_records.validator
    def _check_max_records(self, attribute: attrs.Attribute[int | None], value: object) -> None:
        check_max_records(value, owner="SimulatorConfig")

    def account(self, account_id: str) -> Account | None:
        """The account with this id, if the simulator serves it."""
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None
