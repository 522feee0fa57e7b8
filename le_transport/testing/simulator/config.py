"""The simulator's configuration: accounts, their credentials, token lifetimes, addresses.

Defaults are test credentials that work out of the box (:data:`DEFAULT_ACCOUNT`,
:data:`DEFAULT_USER` with :data:`DEFAULT_PASSWORD`, :data:`DEFAULT_APP_KEY`,
:data:`DEFAULT_CLIENT_ID` with :data:`DEFAULT_CLIENT_SECRET`). They are not secrets of any real
system, but the simulator treats them as secrets all the same: none is ever logged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from ...chaos.plan import DEFAULT_MAX_RECORDS, check_close_code, check_max_records
from ...errors import ConfigurationError, HostileHostError
from ...policies._validate import finite_number
from ...providers.domains import validate_host

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


def _kind(value: object) -> str:
    # What a refused field held, by type only: the fields are credentials.
    return type(value).__name__


def _secret_str(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        got = "an empty str" if isinstance(value, str) else _kind(value)
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty str, got {got}"
        )


@attrs.frozen(repr=False)
class AppKey:
    """An OAuth 1.0 API key: consumer key and secret, access token and its secret.

    Each a non-empty str, else a :class:`~le_transport.errors.ConfigurationError` naming the
    field and the type it got (never the value: they are secrets)."""

    key: str = attrs.field(validator=_secret_str)
    secret: str = attrs.field(validator=_secret_str)
    access_token: str = attrs.field(validator=_secret_str)
    access_token_secret: str = attrs.field(validator=_secret_str)

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


def _str_map(value: object, field: str, what: str) -> dict[str, str]:
    # An int password (a PIN written unquoted) was taken, then a 500 at the login comparing it.
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"Account.{field} must be a mapping of str to str ({what}), got {_kind(value)}"
        )
    for name, secret in value.items():
        if not isinstance(name, str) or not isinstance(secret, str):
            bad, part = (name, "key") if not isinstance(name, str) else (secret, "value")
            raise ConfigurationError(
                f"Account.{field} must be a mapping of str to str ({what}), got a {part} of "
                f"type {_kind(bad)}"
            )
    return dict(value)


def _users(value: Mapping[str, str]) -> Mapping[str, str]:
    return _str_map(value, "users", "username: password")


def _clients(value: Mapping[str, str]) -> Mapping[str, str]:
    return _str_map(value, "clients", "client id: client secret")


def _app_keys(value: Iterable[AppKey]) -> tuple[AppKey, ...]:
    if isinstance(value, (str, bytes, Mapping, AppKey)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"Account.app_keys must be a list of AppKey, got {_kind(value)}")
    keys = tuple(value)
    for key in keys:
        if not isinstance(key, AppKey):
            # A bare consumer key where an AppKey belongs: every OAuth 1.0 request a 500.
            raise ConfigurationError(
                f"Account.app_keys must hold AppKey values (AppKey(key, secret, access_token, "
                f"access_token_secret)), got {_kind(key)}"
            )
    return keys


def _account_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    # Account ids are digits, and an int is the natural slip: the routes' ids are str, so no
    # request would ever have reached it.
    if not isinstance(value, str) or not value:
        got = "an empty str" if isinstance(value, str) else _kind(value)
        raise ConfigurationError(f"Account.id must be a non-empty str, got {got}")
    # One path segment, as every route holds it ({account}): with a "/" (or as "." or "..",
    # which a client's URL normalises away) no request could reach the account.
    if "/" in value or value in (".", "..") or not value.isprintable():
        raise ConfigurationError(
            "Account.id must be one path segment (no '/', not '.' or '..', no control character)"
        )


@attrs.frozen(repr=False)
class Account:
    """One LiveEngage account: its users (``{username: password}``), OAuth 1.0 API keys, and
    OAuth2 clients (``{client_id: client_secret}``, for Sentinel and the login's OAuth2 form).

    ``id`` is a non-empty str that is one path segment, as every route holds it (no ``/``, not
    ``.`` or ``..``, no control character), ``users`` and ``clients`` mappings of str to str,
    ``app_keys`` a list of :class:`AppKey`; anything else is a
    :class:`~le_transport.errors.ConfigurationError` naming the field and the type it got
    (never the value: they are secrets)."""

    id: str = attrs.field(default=DEFAULT_ACCOUNT, validator=_account_id)
    users: Mapping[str, str] = attrs.field(
        factory=lambda: {DEFAULT_USER: DEFAULT_PASSWORD}, converter=_users
    )
    app_keys: tuple[AppKey, ...] = attrs.field(
        factory=lambda: (DEFAULT_APP_KEY,), converter=_app_keys
    )
    clients: Mapping[str, str] = attrs.field(
        factory=lambda: {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}, converter=_clients
    )

    def __repr__(self) -> str:
        return (
            f"Account(id={self.id!r}, users={sorted(self.users)!r}, app_keys={len(self.app_keys)})"
        )


def _accounts(value: Iterable[Account]) -> tuple[Account, ...]:
    if isinstance(value, (str, bytes, Mapping, Account)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"SimulatorConfig.accounts must be a list of Account, got {type(value).__name__}"
        )
    accounts = tuple(value)
    if not accounts:
        raise ConfigurationError("SimulatorConfig.accounts must hold at least one Account")
    for account in accounts:
        if not isinstance(account, Account):
            # An account id where an Account belongs: every request to it was a 500.
            raise ConfigurationError(
                "SimulatorConfig.accounts must hold Account values (Account(id=...)), got "
                f"a {type(account).__name__}"
            )
    ids = [account.id for account in accounts]
    if len(set(ids)) != len(ids):
        # config.account() answers the first: the second's credentials would never work.
        raise ConfigurationError(
            "SimulatorConfig.accounts must not hold two Account values with the same id"
        )
    return accounts


#: The longest token lifetime the simulator takes, in seconds: ten years, far past any test's
#: horizon (a JWT's ``exp`` and a session's ``sessionTTl`` are written as ints).
MAX_TTL_S = 10 * 365 * 24 * 3600.0


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"SimulatorConfig.{attribute.name} must be > 0, got {value!r}")


def _ttl(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # inf (or an int past float's range) made every login or JWT a 500: exp is an int.
    if not finite_number(value) or not 0 < value <= MAX_TTL_S:
        raise ConfigurationError(
            f"SimulatorConfig.{attribute.name} must be a finite number of seconds > 0 and at "
            f"most {MAX_TTL_S:.0f} (ten years), got {value!r:.40}"
        )


def _close_code(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    check_close_code(value, owner="SimulatorConfig", field=attribute.name)


def _flag(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"SimulatorConfig.{attribute.name} must be True or False, got {value!r:.40}"
        )


def _address(instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    # What the Domain API hands out must be a host the client takes: the engine's own check
    # (validate_host), so a port out of 1..65535 ("h:99999", "h:-1") or an unbracketed IPv6
    # address ("a:b:c") is refused here, not by every client that resolves a service.
    if value is None:
        return
    try:
        validate_host(value, service="public_address")
    except HostileHostError:
        raise ConfigurationError(
            "SimulatorConfig.public_address must be None or 'host' or 'host:port': a host "
            "name, an IPv4 address or a bracketed IPv6 address ('[::1]:8443'), a port from 1 "
            f"to 65535, no scheme, path or spaces; got {value!r:.60}"
        ) from None


def _scheme(instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and value not in ("http", "https"):
        raise ConfigurationError(
            f"SimulatorConfig.public_scheme must be None, 'http' or 'https', got {value!r:.40}"
        )


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
    - ``jwt_ttl``: seconds a Sentinel or consumer JWT lives. Both TTLs: finite, > 0 and at
      most :data:`MAX_TTL_S` (ten years).
    - ``idle_timeout``: seconds a messaging socket may stay without a data frame from the
      client before the server closes it (LiveEngage: about 60).
    - ``idle_close_code``: the close code it uses then: one a peer accepts (1000..1003,
      1007..1014 or 3000..4999: not the reserved 1004, 1005, 1006, nor 1015).
    - ``public_address``: ``host:port`` the Domain API hands out instead of the address the
      client reached the simulator by (behind a proxy or a TLS front).
    - ``public_scheme``: the scheme clients use to reach it (for OAuth 1.0 base strings and
      the Chat Agent session's link behind a TLS front), ``"http"`` or ``"https"``; default:
      the simulator's own.
    - ``oauth1_timestamp_window``: if set (seconds, >= 0), OAuth 1.0 timestamps further than
      this many seconds from the simulator's time are refused. Off by default: a virtual
      clock's time need not match the client's wall clock. Either way a timestamp must be
      decimal digits (RFC 5849's positive integer), else the request is refused.
    - ``fault_header``: honour ``X-LE-Fault: <rule id>`` on a request: that rule's fault is
      injected whatever its schedule says (Envoy's header faults). A request carrying the header
      is not put to the plan's schedules: a header that names no rule of the plan, or a rule
      whose fault cannot strike that request (a socket kind on an HTTP request, a body kind
      on a WebSocket upgrade, a sequence of no fault), forces nothing, and is logged at
      WARNING on ``le_transport.simulator`` (with the rule and why). Off by default: any
      client could then fail the simulator's answers on purpose.
    - ``echo_published``: after a ``PublishEvent`` the server also sends the message back on the
      same socket, as LiveEngage does for the conversation's subscribers: a
      ``.ams.ms.MessagingEventNotification`` on the UMS agent (brand) socket, a
      ``ms.MessagingEventNotification`` (the Messaging Window API's) on the consumer socket.
    - ``close_ended_sessions``: close a UMS agent (brand) socket with 4401 ("token
      missing/expired") at the first frame its client sends after the Login Service session
      whose bearer is in its path ended (logged out, revoked, expired), and a consumer socket
      at its first frame after the consumer JWT it logged in with (at the upgrade, or in its
      last accepted ``InitConnection``) expired or was revoked (an ``InitConnection`` with a
      new JWT renews the login instead); that frame is not answered. Off by default:
      protocol.md gives 4401's meaning, not when LiveEngage closes an open socket (revocation
      is known to arrive as a 1006 too), so by default an open socket outlives its session, as
      before. ``sim.expire_tokens()`` closes every socket with 4401
      either way.
    - ``max_records``: how many entries each of the simulator's records keeps, the newest ones
      (:data:`DEFAULT_MAX_RECORDS`: 100,000; None: no bound, for short tests only): the
      requests (``sim.requests``), the fault decisions and injections (``sim.faults``), the
      published messages, refused handshakes and accepted sockets (``sim.sockets``), and on
      each socket its received frames, subscriptions and dropped frames; and the OAuth 1.0
      nonces it remembers to refuse a replay (``sim.tokens.nonces``). A simulator serving a
      long soak then keeps bounded memory; each record's ``dropped`` (``sim.records_dropped``
      for the requests) counts what was dropped. An int >= 1 or None.

    Each field is checked here: ``accounts`` not a list of :class:`Account`, a field of the
    wrong type, or a value out of its range is a
    :class:`~le_transport.errors.ConfigurationError` naming the field.
    """

    accounts: tuple[Account, ...] = attrs.field(factory=lambda: (Account(),), converter=_accounts)
    session_ttl: float = attrs.field(default=8 * 3600.0, validator=_ttl)
    jwt_ttl: float = attrs.field(default=3600.0, validator=_ttl)
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    idle_close_code: int = attrs.field(default=1000, validator=_close_code)
    public_address: str | None = attrs.field(default=None, validator=_address)
    public_scheme: str | None = attrs.field(default=None, validator=_scheme)
    oauth1_timestamp_window: float | None = attrs.field(default=None, validator=_window)
    echo_published: bool = attrs.field(default=True, validator=_flag)
    fault_header: bool = attrs.field(default=False, validator=_flag)
    max_records: int | None = attrs.field(default=DEFAULT_MAX_RECORDS)
    close_ended_sessions: bool = attrs.field(default=False, validator=_flag)

    @max_records.validator
    def _check_max_records(self, attribute: attrs.Attribute[int | None], value: object) -> None:
        check_max_records(value, owner="SimulatorConfig")

    def account(self, account_id: str) -> Account | None:
        """The account with this id, if the simulator serves it."""
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None
