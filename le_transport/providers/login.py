"""Login Service auth: user login, application (API key) login and client-credentials login.

The guide's Steps 4 and 5: log in through the Login Service (on the account's ``agentVep``
host) to get a bearer token and a CSRF value, then put ``Authorization: Bearer <token>`` on each
call. One class does the session's whole life, the three login forms differ only in the body:

- :class:`UserLogin` (username, password);
- :class:`AppLogin` (username and the API key's four values);
- :class:`ClientCredentialsLogin` (the OAuth2 client-credentials form that replaced OAuth1 bot
  login: ``appKey`` = client id, ``secret`` = client secret, ``"dummy"`` access-token fields).

Login answers follow their own rules: a 429 ("too many logins") waits at least 5 s
(``LOGIN_RATE_LIMIT_FLOOR``); a 451 (blacklisted) raises :class:`~le_transport.errors.BlockedError`
and any other 4xx :class:`~le_transport.errors.LoginRejected` at once, never retried, but for a
408 or 425 (a load balancer's timeout, "too early": try again as it was), an outage that says
nothing of the credentials (:class:`~le_transport.errors.UnexpectedAnswer`); a 5xx or a
transport failure follows the request schedule, and when that gives up the outer recovery loop
(:mod:`le_transport.recovery`) takes over. A login answer that carries the account's domain map
(``csdsCollectionResponse``) warms the domain cache.

**Keepalive**: after a login a background task refreshes the session (``Session_id`` cookie and
``csrf``) every ``refresh_interval`` seconds (the guide's 5 min for the Chat Agent API), never
later than half the session's TTL, on the injected clock; each login restarts that count, so a
session logged in at any time is refreshed in time. A refresh answered with 401 falls back
to a fresh login and nothing else: no socket is torn down, the new bearer is simply what the
next request or connect gets; so does a refresh answered with anything but a 2xx (a 3xx
included: provider calls never follow redirects). When that login fails after a refused (4xx)
refresh, the session is dropped; after a 3xx, it is kept (it may still serve calls while the
Login Service is down or redirects to a maintenance page) and, if the login met an outage, the
next refresh tries it again. A refused login (a changed password, a blacklisted account) is
never sent again by a refresh, whoever runs it (this keepalive, or the engine's
``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")`` calling
:meth:`LoginServiceAuth.refresh` with ``keepalive=False``, alone or with a ``shared``
session): a dropped session is not refreshed, and the keepalive waits for the next login,
whoever makes it (a caller, :meth:`LoginServiceAuth.relogin`, an adopted fleet session); a
kept one is still refreshed (a 2xx keeps it alive, the Login Service back), but a refresh of
it answered 3xx (or 4xx: then it is dropped) raises that refusal again, its type and status,
with no login request, until a new session replaces it: the provider's
:meth:`~LoginServiceAuth.login` or :meth:`~LoginServiceAuth.relogin` (each sends a login), a
call answered 401 (its replay logs in), a session adopted from the fleet. ``Engine.login()``
lifts nothing: it returns the current session. With a ``shared`` session the refusal is
recorded for the fleet beside the session (:meth:`SharedSession.mark_refused
<le_transport.state.SharedSession.mark_refused>`): no process holding or adopting that session
sends that login again either (one refused login for the fleet, not one a process). That is
said once, as a WARNING. A 408 or 425 answered to the login is no refusal but an outage
(:class:`~le_transport.errors.UnexpectedAnswer`; a 429 follows the schedule): it marks nothing,
and the next refresh tries the login again. A
refresh that failed and kept its session (a 5xx, a
timeout, a 2xx maintenance page: see :meth:`LoginServiceAuth.refresh`; a 3xx, whether its
login met an outage or was refused) is tried again after half the TTL the session has left
since it was last known alive (its login or last refresh), never later than the interval nor
sooner than :data:`MIN_SESSION_REFRESH_INTERVAL`: one outage no longer lets a short-lived
session expire (a whole interval after a refresh that gave up half-way through the TTL was past
it). Nor sooner than the Login Service asked (a 429's or 503's ``Retry-After``, up to the retry
policy's ``retry_after_ceiling``), but never past the session's expiry. Its request says it
handles an outage itself (``ProviderHttp.request(fallback=...)``): the
retry middleware logs its giving up as a WARNING, not an ERROR; so does the login a refresh the
keepalive sent falls back to (after a refused refresh: "the refused session is dropped and the
next call logs in"), unless a caller needing credentials (or a caller's
:meth:`~LoginServiceAuth.refresh` that joined the keepalive's) waits for it as it gives up (that
caller fails with it: an ERROR, as for the keepalive's refresh request a caller's refresh
joined). That login is shared with every caller waiting for credentials: a refresh bounded
by a deadline (the engine's keepalive run's) waits for it no longer than that deadline (a
:class:`~le_transport.errors.DeadlineExceeded`), and the login goes on on its own policy's
schedule, its failure dropping (or marking) the session all the same. Logins and refreshes
are single flight: a hundred concurrent callers without a token cause one login.

**A login answered with neither a refusal nor a login** (a 3xx, or a 200 that is not the
login's JSON: a proxy's HTML maintenance page) raises
:class:`~le_transport.errors.UnexpectedAnswer`, an
:class:`~le_transport.errors.AuthenticationError` that is no refusal: ``recover=True`` waits it
out like a 503, and :meth:`LoginServiceAuth.relogin` keeps the session it was to replace (as
after an outage); only a refused login (``LoginRejected``, ``BlockedError``) drops it.

**No replaced session is logged out**: only the current one, on close. Every session that is
replaced or dropped is left to expire on its own at its TTL:

- one whose refresh the Login Service refused (a 4xx, 401 included): LiveEngage wants a
  refresh's 401 met with a new login *without* tearing down a healthy socket, and a UMS socket
  holds its session's bearer in its path. A logout cannot help there: if the session had ended,
  the logout is refused as the refresh was (a csrf the refresh was refused for is refused again
  too); if the refusal came from something in between (a gateway, a proxy, a fault rule) the
  session is alive, and its logout would close every socket on it with 4401.
- one dropped by :meth:`LoginServiceAuth.invalidate`: a 401 answered to one request does not
  say the session ended (a permission the user lacks, a gateway's hiccup are 401s too), and a
  socket invalidates its credentials after a 1011 or a run of fast 1006s as well. Calls still
  in flight (retrying a 5xx, a reset, a timeout, or already replaying after their own 401)
  and sockets still hold that bearer: logged out, each of them would meet a 401 of our making
  (a replay's second 401 is an :class:`~le_transport.errors.AuthenticationError`), and a UMS
  socket connected with it would be closed with 4401 and have to re-authenticate;
- one replaced after a transient failure: a refresh that failed with a 5xx, a timeout or a
  broken connection keeps its session (the next tick tries again), and
  :meth:`LoginServiceAuth.relogin` (the outer recovery loop's step, after 5xx and transport
  failures) never logs out the session it replaces; nor does a refresh answered with a 3xx
  (not a refusal) or a login asked for while a session lives.

(A ``shared`` session is never logged out on close either: one process closing would end the
session of the whole fleet. See :class:`LoginServiceAuth`.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
from yarl import URL

from .._redact import Secret
from .._tasks import stop_task
from ..clock import stall_timeout, timeout_after
from ..errors import (
    AuthenticationError,
    BlockedError,
    ClientStatusError,
    ConfigurationError,
    DeadlineExceeded,
    LoginRejected,
    UnexpectedAnswer,
)
from ..events import StateEvent
from ..middleware.context import rest_asked
from ..policies._validate import finite_number
from ..policies.close_codes import RETRY_HANDSHAKE_STATUSES
from ..policies.retry import LOGIN_RATE_LIMIT_FLOOR, RetryPolicy
from ._flight import SingleFlight
from ._http import (
    ProviderHttp,
    answer_number,
    check_domains_account,
    cookie_safe,
    emit_state,
    header_safe,
    provider_url,
    require_attached,
    require_option,
    require_secret,
    require_text,
    validate_account,
)
from ._refusals import credential_refusals, report_login_failed
from .auth import Credentials, closed_error
from .domains import DomainProvider

if TYPE_CHECKING:
    from ..state.session import SharedSession, SharedToken

__all__ = [
    "AGENT_VEP",
    "DEFAULT_REFRESH_INTERVAL",
    "LOGIN_SERVICE_VERSION",
    "LOGOUT_TIMEOUT",
    "MIN_SESSION_REFRESH_INTERVAL",
    "AppLogin",
    "ClientCredentialsLogin",
    "LoginServiceAuth",
    "LoginSession",
    "UserLogin",
    "login_policy",
]

_log = logging.getLogger("le_transport.auth")

_T = TypeVar("_T")

#: The Domain API service that hosts the Login Service (and the Chat Agent API).
AGENT_VEP = "agentVep"
#: The Login Service API version in LivePerson's docs.
LOGIN_SERVICE_VERSION = "1.3"
#: The guide's Step 3: the Chat Agent API's keepalive is a ``refresh`` "every 5 minutes".
DEFAULT_REFRESH_INTERVAL = 300.0
#: The shortest keepalive interval a login answer's ``sessionTTl`` can lead to. A server that
#: answers a TTL of 1 ms must not make the keepalive refresh in a tight loop; LivePerson's
#: sessions live hours, and the Login Service asks for 5 s between retried logins.
MIN_SESSION_REFRESH_INTERVAL = LOGIN_RATE_LIMIT_FLOOR
#: Seconds a close waits for the logout (resolving the host included) before it gives up on
#: it: the session then expires on its own. A Login Service that never answers must not hold
#: ``Engine.close()`` (and ``async with Engine(...)``) for the attempt timeout, or for ever.
LOGOUT_TIMEOUT = 5.0
#: The access-token fields of the client-credentials login body (LivePerson's documented form).
CLIENT_CREDENTIALS_DUMMY = "dummy"
#: What the keepalive does when its refresh meets an outage, in the retry middleware's give-up
#: line (a WARNING, not an ERROR: nothing failed for a caller): true whatever happens next.
_KEEPALIVE_FALLBACK = "the session is kept and the keepalive tries the refresh again"
#: What the keepalive's fallback login after a refresh the Login Service refused (a 4xx) comes
#: to when it meets an outage, in the retry middleware's give-up line: that session is dropped
#: (the Login Service refused it), and whoever calls next logs in.
_REFUSED_FALLBACK = "the refused session is dropped and the next call logs in"
#: What becomes of a login refused after a redirected refresh, in its WARNING and in the
#: refusal a later refresh raises again: what lifts it is named (``Engine.login()`` does not:
#: it returns the current session).
_WITHHELD = (
    "its refresh sends that login no more; a new session lifts this: the provider's login() or "
    "relogin() (each sends a login), a call answered 401 (its replay logs in), a session "
    "adopted from the fleet (Engine.login() returns the current session and lifts nothing)"
)


def login_policy(base: RetryPolicy) -> RetryPolicy:
    """``base`` with the Login Service's rule: a 429 is never retried sooner than 5 s."""
    return attrs.evolve(base, rate_limit_floor=max(base.rate_limit_floor, LOGIN_RATE_LIMIT_FLOOR))


@attrs.frozen(repr=False)
class LoginSession:
    """One successful login: the bearer, CSRF value and ``Session_id`` cookie (all secrets),
    the session TTL in seconds (if the answer gave one), the user id, and its generation."""

    bearer: Secret
    csrf: Secret | None
    session_id: Secret | None
    ttl: float | None
    user_id: str | None
    generation: int
    logged_in_at: float

    def __repr__(self) -> str:
        return (
            f"LoginSession(generation={self.generation}, user_id={self.user_id!r}, "
            f"ttl={self.ttl!r}, bearer={self.bearer!r})"
        )


def _user_id(value: object) -> str | None:
    """The login answer's ``config.userId`` as text: a str, or an int written out; anything
    else (a bool, which is an int to Python, a float, a list) is no user id."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _ttl_seconds(value: object) -> float | None:
    """``sessionTTl`` (milliseconds, as a string or a number) in seconds, if it is one.

    An unusable value (a bool, NaN, infinite, <= 0, an int past float's range) is no TTL.
    """
    ms = answer_number(value)
    return None if ms is None else ms / 1000.0


class _PastDeadline(Exception):
    """A refresh's wait cut at its deadline (said as a DeadlineExceeded by its caller)."""


class _NotAccepted(UnexpectedAnswer):
    """The Login Service answered a refresh or logout with neither a 2xx nor a 4xx (a 3xx:
    provider calls never follow redirects). A refresh so answered falls back to a fresh login,
    as a refused one (a 401) does, but keeps its session if that login fails. ``status`` is
    the answer's status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, status=status)


class LoginServiceAuth:
    """An :class:`~le_transport.providers.AuthProvider` backed by the Login Service.

    Use a subclass (:class:`UserLogin`, :class:`AppLogin`, :class:`ClientCredentialsLogin`).
    Common parameters:

    - ``account``: the LiveEngage account id.
    - ``domains``: where the ``agentVep`` host comes from (a :class:`CsdsDomains` is warmed by
      the login answer).
    - ``service``: the Domain API service of the Login Service (``agentVep``).
    - ``version``: the Login Service API version, sent as ``?v=`` on login, refresh and logout
      (:data:`LOGIN_SERVICE_VERSION`, ``1.3``).
    - ``refresh_interval``: seconds between keepalive refreshes (300); ``keepalive=False``
      turns the background refresh off.
    - ``retry``: the login's request policy; default: the engine's, with 429 floored at 5 s.
    - ``logout_on_close``: True: log out when closed: one attempt, within
      :data:`LOGOUT_TIMEOUT` seconds, after which the session is left to expire on its own.
      A session replaced before (its refresh refused, a re-login) is never logged out: it
      expires on its own (see the module). False leaves the last one to expire on its own
      too. None (the default): True without ``shared``, False with it.
    - ``shared``: a :class:`~le_transport.state.SharedSession` (over a Redis store): the fleet
      logs in once per account and user and refreshes once per interval; the other processes
      adopt the stored session. Its session is never logged out on close: one process closing
      (a rolling deploy) must not end the session of the whole fleet, which would then meet
      401s; ``logout_on_close=True`` with it is a
      :class:`~le_transport.errors.ConfigurationError`. A process whose
      refresh meets the fleet's newer session refreshes and uses that one; a session the Login
      Service refused to refresh (a 4xx) is taken out of the store, so that the fleet logs in
      once, anew. It must be the session of this account and of the user this provider logs
      in as (:attr:`SharedSession.account <le_transport.state.SharedSession.account>`,
      :attr:`~le_transport.state.SharedSession.user`): another one is a
      :class:`~le_transport.errors.ConfigurationError`, which names neither user (a login
      given it would adopt that session and act as its user). A subclass of its own that
      logs in as a user checks it with ``_check_shared_user(username)``; without that, only
      the account is checked.
    """

    #: The header its credentials set (see :class:`~le_transport.providers.AuthProvider`).
    credential_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    _kind = "login"

    def __init__(
        self,
        account: str,
        *,
        domains: DomainProvider,
        service: str = AGENT_VEP,
        version: str = LOGIN_SERVICE_VERSION,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        keepalive: bool = True,
        retry: RetryPolicy | None = None,
        logout_on_close: bool | None = None,
        shared: SharedSession | None = None,
    ) -> None:
        owner = type(self).__name__
        self._account = validate_account(account, owner=owner)
        if not isinstance(domains, DomainProvider):
            raise ConfigurationError(
                f"{owner}.domains must be a DomainProvider, got {type(domains).__name__}"
            )
        if not (finite_number(refresh_interval) and refresh_interval > 0):
            raise ConfigurationError(
                f"{owner}.refresh_interval must be a finite number of seconds > 0, "
                f"got {refresh_interval!r:.40}"
            )
        for field, value in (("service", service), ("version", version)):
            require_option(
                isinstance(value, str) and bool(value),
                value,
                owner=owner,
                field=field,
                wants="a non-empty str",
            )
        require_option(
            isinstance(keepalive, bool), keepalive, owner=owner, field="keepalive", wants="a bool"
        )
        require_option(
            logout_on_close is None or isinstance(logout_on_close, bool),
            logout_on_close,
            owner=owner,
            field="logout_on_close",
            wants="None or a bool",
        )
        require_option(
            retry is None or isinstance(retry, RetryPolicy),
            retry,
            owner=owner,
            field="retry",
            wants="None or a RetryPolicy",
        )
        check_domains_account(owner, domains, self._account)
        self._domains = domains
        self._service = service
        self._version = version
        self._refresh_interval = float(refresh_interval)
        self._keepalive_on = keepalive
        self._retry = retry
        self._http: ProviderHttp | None = None
        self._session: LoginSession | None = None
        #: The last session's credentials, built once per session: every call asks for them.
        self._creds: tuple[LoginSession, Credentials] | None = None
        self._generation = 0
        self._flight: SingleFlight[LoginSession] = SingleFlight(
            f"le_transport.login[{self._account}]", f"{self.subject}: the login"
        )
        self._refresh_flight: SingleFlight[bool] = SingleFlight(
            f"le_transport.refresh[{self._account}]", f"{self.subject}: the session refresh"
        )
        # The login a refresh the Login Service did not accept falls back to, with what its
        # failure does to that session (dropped, or marked): one shared run, which goes on
        # when the refresh that started it gives up at its deadline (see _fall_back).
        # Callers of login() and refresh() waiting (see _handled_login, _handled_refresh).
        self._callers = 0
        self._fallback_flight: SingleFlight[None] = SingleFlight(
            f"le_transport.fallback_login[{self._account}]",
            f"{self.subject}: the login after a refresh it did not accept",
        )
        # The session a refresh the Login Service refused (a 4xx) while that login was out
        # belongs to: the run drops it if the login fails, though a redirected refresh (which
        # keeps its session) started it (see _fall_back).
        self._refused_session: LoginSession | None = None
        self._keepalive: asyncio.Task[None] | None = None
        # Set by every login (and adopted session): wakes the keepalive, to time its next
        # refresh from the new session (see _keepalive_loop).
        self._logged_in = asyncio.Event()
        # The session kept after a refresh answered 3xx whose fallback login was refused (its
        # generation: a refresh adopted from the fleet keeps it), with that refusal's status:
        # its refresh never falls back to a login again (see _refusal_again). Cleared by every
        # new session (a login, an adopted fleet session).
        self._login_refused: tuple[int, int] | None = None
        self._closed = False
        # Held by the close in progress: a concurrent close waits for it (one logout per
        # session), and one cancelled part-way lets the next finish it.
        self._closing = asyncio.Lock()
        # Imported here: the state package builds on the providers.
        from ..state.session import SharedSession

        require_option(
            shared is None or isinstance(shared, SharedSession),
            shared,
            owner=owner,
            field="shared",
            wants="None or a SharedSession",
        )
        if shared is not None and logout_on_close:
            # One process closing (a rolling deploy) logged out the fleet's session, and left
            # it in the store: every other process, and every new one adopting it, met 401s.
            raise ConfigurationError(
                f"{owner}.logout_on_close=True cannot go with shared=...: one process's close "
                "would log out the session every process of the fleet shares; leave it out "
                "(None: a shared session is not logged out on close) or pass False"
            )
        if shared is not None and shared.account != self._account:
            # Its entry is keyed by its own account: this login would adopt that account's
            # session (acting as its user) and send its bearer to this account's hosts.
            raise ConfigurationError(
                f"{owner} of account {self._account!r} was given the SharedSession of "
                f"{_shown_account(shared.account)}: it would adopt that account's session; give "
                "each account and user a SharedSession of its own"
            )
        # None: log out on close unless the session is shared by a fleet.
        self._logout_on_close = shared is None if logout_on_close is None else logout_on_close
        self._shared = shared
        self._shared_token: SharedToken | None = None
        #: Successful logins, refreshes, and logins attempted (each one answer or give-up).
        self.logins = 0
        self.refreshes = 0
        self.login_attempts = 0

    def _check_shared_user(self, user: str) -> None:
        """A :class:`~le_transport.errors.ConfigurationError` if the ``shared`` session given
        is not ``user``'s (the username this provider logs in as): it would adopt that user's
        session, and act as that user. Neither name is shown (a password given in the
        username's place must not show). The subclasses call it once their username is set."""
        shared = self._shared
        if shared is not None and shared.user != user:
            owner = type(self).__name__
            raise ConfigurationError(
                f"{owner} of account {self._account!r} was given the SharedSession of another "
                "user than the one it logs in as (neither name is shown): it would adopt that "
                "user's session and act as that user; give each user a SharedSession of its own"
            )

    # -- what the subclasses say ------------------------------------------------------------

    def _body(self) -> dict[str, str]:
        raise NotImplementedError

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, http: ProviderHttp) -> None:
        """Use the engine's HTTP path (called by the engine on start), and attach the domain
        provider this one resolves its host with, in case the engine does not own it."""
        self._http = http
        attach_domains = getattr(self._domains, "attach", None)
        if callable(attach_domains):
            attach_domains(http)

    @property
    def account(self) -> str:
        """The account id."""
        return self._account

    @property
    def session(self) -> LoginSession | None:
        """The current login session, if logged in."""
        return self._session

    @property
    def service(self) -> str:
        """The Domain API service of its Login Service (``agentVep`` by default)."""
        return self._service

    @property
    def refreshes_itself(self) -> bool:
        """Whether it runs its own refresh keepalive (``keepalive=True``)."""
        return self._keepalive_on

    @property
    def subject(self) -> str:
        """How events and logs name this session."""
        return f"{self._kind}[{self._account}]"

    @property
    def generation(self) -> int:
        """How many logins have succeeded (or sessions were adopted) so far."""
        return self._generation

    def refresh_interval_for(self, session: LoginSession | None) -> float:
        """The keepalive interval: ``refresh_interval``, never more than half the session TTL,
        and never less than :data:`MIN_SESSION_REFRESH_INTERVAL` because of that TTL (the
        answer's TTL comes from the server; ``refresh_interval`` is the caller's own)."""
        if session is not None and session.ttl is not None:
            by_ttl = max(session.ttl / 2.0, MIN_SESSION_REFRESH_INTERVAL)
            return min(self._refresh_interval, by_ttl)
        return self._refresh_interval

    # -- AuthProvider -----------------------------------------------------------------------

    async def credentials(self, method: str = "GET", url: URL | None = None) -> Credentials:
        """``Authorization: Bearer <token>``, logging in first if there is no session.
        :class:`~le_transport.errors.EngineClosed` once the provider is closed (or closing),
        even while it still holds a session a cancelled close left for the next to log out."""
        self._check_open()
        session = self._session
        if session is None:
            session = await self.login()
        return self._credentials(session)

    async def invalidate(self, rejected: Credentials) -> None:
        """Drop the session if ``rejected`` came from it: the next call logs in (once).

        The dropped session is not logged out: a 401 does not prove it ended (a missing
        permission is answered 401 too; a socket invalidates after a 1011 or fast 1006s as
        well), and calls in flight and sockets may still hold its bearer (a call replaying
        after its own 401 among them, which a logout would fail). It is left to expire at the
        Login Service on its own (see the module)."""
        session = self._session
        if self._closed:
            return  # the close logs out what is current
        if session is not None and session.generation == rejected.generation:
            _log.info(
                "%s: credentials of generation %d rejected; the next call logs in again",
                self.subject,
                rejected.generation,
                extra={"subject": self.subject, "generation": rejected.generation},
            )
            self._drop(session)

    async def close(self) -> None:
        """Stop the keepalive and log out (if logged in and ``logout_on_close``: by default, not
        a session shared by a fleet; one attempt, within :data:`LOGOUT_TIMEOUT`). Idempotent;
        a close that was cancelled part-way is finished by the next one (the logout
        included); concurrent closes share one (one logout), each returning once it is done.
        Closed is final: no session, no login, refresh or event from then on
        (:meth:`credentials`, :meth:`login`, :meth:`relogin` and :meth:`refresh` raise
        :class:`~le_transport.errors.EngineClosed`). A login in progress is stopped: one
        whose answer was read is recorded (nothing awaits between the two), and logged out
        here; one stopped before leaves a session at the Login Service whose bearer, csrf and
        cookie nobody read, which expires at its TTL."""
        self._closed = True  # no new login from here on
        async with self._closing:
            task, self._keepalive = self._keepalive, None
            if task is not None and not task.done():
                await stop_task(task)
            await self._refresh_flight.cancel()
            await self._fallback_flight.cancel()
            await self._flight.cancel()
            session = self._session
            if session is not None and self._logout_on_close and self._http is not None:
                await self._logout(self._http, session)
            # Forgotten only once logged out (or not to be): a cancelled close leaves it for
            # the next close to log out, instead of leaving it alive until its TTL.
            self._session = None
            self._creds = None

    # -- login, refresh, logout -------------------------------------------------------------

    async def login(self) -> LoginSession:
        """Log in now, or join the login in progress (single flight).

        A login is sent whatever the current session (with a ``shared`` session: unless the
        fleet already holds a newer session than this process's, which is adopted), so it
        lifts a refused login withheld after a redirected refresh (see :meth:`refresh`).
        :class:`~le_transport.errors.EngineClosed` once the provider is closed."""
        self._check_open()
        # Counted while it waits: a keepalive's fallback login it joins is no longer handled.
        self._callers += 1
        try:
            if self._shared is not None:
                return await self._flight.run(self._shared_login)
            return await self._flight.run(self._login)
        finally:
            self._callers -= 1

    def _check_open(self) -> None:
        """:class:`~le_transport.errors.EngineClosed` once the provider is closed."""
        if self._closed:
            raise closed_error(self.subject)

    async def relogin(self) -> Credentials:
        """A fresh login, whatever the current session (the outer recovery loop's step).

        Calls keep using the current session until the new one is installed. If the login is
        refused (:class:`~le_transport.errors.LoginRejected`,
        :class:`~le_transport.errors.BlockedError`: a changed password, a blacklisted
        account), the current session is dropped (the next call logs in, and is refused too).
        Any other failure says nothing of it, and it is kept: the Login Service down (a 5xx, a
        reset, a timeout, a 408 or 425 from something in between), or answering neither a
        refusal nor a login
        (:class:`~le_transport.errors.UnexpectedAnswer`: a redirect, a maintenance page), or
        the Domain API down; calls go on with it until its TTL, or a 401 says it ended. The
        session it replaces is never logged out: the recovery loop re-logs in after 5xx and
        transport failures, which say nothing of the session, and calls in flight and sockets
        may still hold it. It is left to expire on its own (see the module)."""
        replaced = self._session
        try:
            session = await self.login()
        except (LoginRejected, BlockedError):
            self._drop(replaced)
            raise
        return self._credentials(session)

    async def refresh(self) -> bool:
        """Refresh the session now (the keepalive's step); a refresh refused (a 4xx such as
        401) or not accepted (any other answer but a 2xx, a 3xx included) falls back to a fresh
        login, which replaces the session. The session replaced is never logged out (sockets
        hold its bearer: see the module): it expires on its own.

        Returns whether the session was refreshed (False: there was none, or a new login
        replaced it). :class:`~le_transport.errors.EngineClosed` once the provider is closed
        (or closing), as :meth:`login`. Raises what the fallback login raises; after a
        refused refresh the session is then dropped: the next call logs in,
        and the keepalive waits for a successful login (it never retries a refused login on
        its own). After a 3xx it is kept (calls go on with it, later refreshes keep it alive);
        if its login was refused (:class:`~le_transport.errors.LoginRejected`,
        :class:`~le_transport.errors.BlockedError`), no later refresh of that session sends
        the login again: one answered 3xx (or 4xx, which drops it) raises that refusal again,
        with no login request, until a new session replaces it (:meth:`login` or
        :meth:`relogin`, which send a login; a call answered 401, whose replay logs in; a
        session adopted from the fleet; not ``Engine.login()``, which returns the current
        session). With a ``shared`` session the fleet withholds it so: a process whose
        refresh of that session is answered 3xx finds the refusal in the store and sends no
        login either. A caller refreshing on a
        schedule (``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")``) so sends no
        refused login in the background either. A refresh answered 2xx with a
        body that is neither empty nor JSON (a proxy's HTML maintenance page) refreshed
        nothing: it is an :class:`~le_transport.errors.UnexpectedAnswer`, an outage, the
        session kept, as after a 5xx. A transient refresh failure (a 5xx, a timeout, a
        broken connection) is raised as is, the session kept and never logged out (the
        keepalive logs it and tries again sooner than an interval while the session lives: see
        the module).
        Concurrent callers share one refresh, its schedule and outcome included: one joined
        while ``Engine.keepalive(CHAT_AGENT_API_REFRESH, ...)`` runs its refresh ends with
        that run's, whose request has the run's timeout as its deadline (a 503 is tried at 0,
        5 and 15 s, not also at 30 s), rather than sending a schedule of its own beside it.
        The other way round, that run joining a refresh a caller started waits for it no
        longer than its own timeout (a :class:`~le_transport.errors.DeadlineExceeded`), and
        the caller's refresh goes on. A keepalive's refresh (or its fallback login) that gives
        up on an outage while a caller's refresh waits for it fails that caller: its give-up
        is then an ERROR, as for the caller's own, not the keepalive's handled WARNING.
        """
        # Counted while it waits: a keepalive's refresh, or fallback login, it joins is no
        # longer handled (see _handled_refresh, _handled_login).
        self._callers += 1
        try:
            return await self._refresh()
        finally:
            self._callers -= 1

    async def _refresh(self, fallback: str | None = None, *, deadline: float | None = None) -> bool:
        """:meth:`refresh`; ``fallback``: what the caller does when the refresh meets an
        outage (the keepalive's :data:`_KEEPALIVE_FALLBACK`), for the retry middleware's
        give-up line (see :meth:`ProviderHttp.request`). ``deadline``: seconds from now
        within which the refresh's request gives up (the engine's keepalive run's timeout):
        its schedule then ends with the Login Service's own answer (a 503, and the
        ``Retry-After`` it asked for) rather than being cut in a pause as a bare
        ``TimeoutError``; never longer than the policy's own deadline. The login a refresh
        the Login Service did not accept falls back to is waited for within it too: that
        login is shared (a caller needing credentials joins it), so the deadline passing
        ends only this wait, a :class:`~le_transport.errors.DeadlineExceeded`; the login goes
        on on its own policy's schedule and deadline, and its failure still drops the refused
        session (or marks one a 3xx kept: see :meth:`refresh`). With ``fallback``, that login
        says it is handled too (its give-up a WARNING: after a refused refresh, "the refused
        session is dropped and the next call logs in"). A refresh already in flight (another
        caller's) is joined as it is, its schedule and outcome, but waited for no longer than
        ``deadline`` either: then (at once, for a deadline already passed) a
        :class:`~le_transport.errors.DeadlineExceeded`, the refresh going on for its caller.
        With a ``shared`` session, the fleet's lock another process holds (its login or
        refresh) is waited for no longer than ``deadline`` either (a
        :class:`~le_transport.errors.DeadlineExceeded`; the next refresh tries again)."""
        http = require_attached(self._http, self)
        # Closed is final: a refresh asked for while the close logs out (or after) would send
        # a refresh beside the logout, or say False as if there were merely no session.
        self._check_open()
        if self._session is None:
            return False
        now = http.clock.now()
        until = None if deadline is None else now + deadline
        flight = self._refresh_flight
        if until is not None and flight.running:
            # Another caller's refresh is out, on its own schedule and deadline (none, for a
            # caller's refresh()): joined, but waited for no longer than this deadline, at
            # once if it has passed; it goes on for the others.
            return await self._wait_within(
                http,
                flight,
                lambda: self._refresh_once(fallback, until, now),
                now,
                until,
                "the refresh in progress it joined",
            )
        return await flight.run(lambda: self._refresh_once(fallback, until, now))

    async def _wait_within(
        self,
        http: ProviderHttp,
        flight: SingleFlight[_T],
        fn: Callable[[], Awaitable[_T]],
        started: float,
        until: float | None,
        doing: str,
    ) -> _T:
        """The outcome of ``flight``'s run (of ``fn`` if none is out), waited for until the
        clock time ``until`` at most (None: no bound): then, or at once if it has passed, a
        :class:`~le_transport.errors.DeadlineExceeded` (``elapsed`` counted from
        ``started``). The run is shared: only this caller stops waiting, it goes on (started
        all the same) for the others, bounded by its own limits."""
        if until is None:
            return await flight.run(fn)
        if until - http.clock.now() > 0:
            try:
                return await self._within(http, lambda: flight.run(fn), until)
            except _PastDeadline:
                pass
        else:
            flight.start(fn)
        raise self._deadline_passed(http, started, f"{doing} (it goes on on its own)")

    @staticmethod
    async def _within(
        http: ProviderHttp,
        fn: Callable[[], Awaitable[_T]],
        until: float | None,
        progress: Callable[[], float] | None = None,
    ) -> _T:
        """``fn()``, cut at the clock time ``until`` (None: not cut): then
        :class:`_PastDeadline` (at once if it has passed). With ``progress`` (the clock time
        of its last progress, see :func:`~le_transport.clock.stall_timeout`), not while it
        answers the present: a part of ``fn`` bounded by ``until`` on its own (a request, whose
        give-up says the service's own answer) is not cut here."""
        if until is None:
            return await fn()
        left = until - http.clock.now()
        if left > 0:
            timeout = (
                timeout_after(http.clock, left)
                if progress is None
                else stall_timeout(http.clock, left, progress)
            )
            try:
                async with timeout:
                    return await fn()
            except TimeoutError:
                if not timeout.expired:
                    raise
        raise _PastDeadline

    def _deadline_passed(self, http: ProviderHttp, started: float, doing: str) -> DeadlineExceeded:
        """The :class:`~le_transport.errors.DeadlineExceeded` of a refresh (begun at the clock
        time ``started``) whose deadline passed while it was ``doing`` something."""
        return DeadlineExceeded(
            f"{self.subject}: the refresh's deadline passed while waiting for {doing}",
            elapsed=http.clock.now() - started,
            service=self._service,
            method="POST",
        )

    async def _refresh_once(
        self, fallback: str | None = None, until: float | None = None, started: float = 0.0
    ) -> bool:
        http = require_attached(self._http, self)
        session = self._session
        if session is None:
            return False
        if self._shared is not None and self._shared_token is not None:
            return await self._shared_refresh(
                http, session, self._shared_token, fallback, until=until, started=started
            )
        try:
            await self._post_session(
                http,
                session,
                "refresh",
                self._policy(http),
                fallback=self._handled_refresh(fallback),
                until=until,
            )
        except (ClientStatusError, _NotAccepted) as exc:
            transient = _try_again(exc)
            self._refresh_failed(http, session, exc, transient, generation=True)
            if transient:
                # A proxy's "try again" (408, 425): no verdict on the session, which is kept,
                # nor a reason to log in; the refresh is tried again later, as after a 5xx.
                raise
            # A 4xx: the Login Service refused the refresh. A 3xx says nothing of the session:
            # it may still serve calls in flight and sockets.
            refused = isinstance(exc, ClientStatusError)
            if self._session is session:
                if self._login_refused_for(session):
                    # Its fallback login was refused already: never sent again for it, by
                    # whatever refreshes it (the keepalive, the engine's, a caller).
                    if refused:
                        self._drop(session)
                    raise self._refusal_again(exc.status) from exc
                # No socket or request is torn down, the session replaced not logged out (see
                # the module): the new bearer is simply what the next request or connect gets.
                self._check_open()
                handled = self._handled_login(fallback, session, refused)

                def login() -> Awaitable[LoginSession]:
                    if self._shared is not None:
                        return self._flight.run(lambda: self._shared_login(handled=handled))
                    return self._flight.run(lambda: self._login(handled))

                await self._fall_back(http, session, refused, login, started, until)
            return False
        self.refreshes += 1
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent("refreshed", self.subject, {"generation": session.generation}),
        )
        return True

    def _refresh_failed(
        self,
        http: ProviderHttp,
        session: LoginSession,
        exc: ClientStatusError | _NotAccepted,
        transient: bool,
        *,
        generation: bool,
    ) -> None:
        """Report a refresh of ``session`` that was not accepted (``refresh_failed``): its
        status and what follows it (with ``generation``, the session's too)."""
        details: dict[str, object] = {
            "status": exc.status,
            "next": _KEEPALIVE_FALLBACK if transient else self._next_after_refresh(session),
        }
        if generation:
            details["generation"] = session.generation
        emit_state(
            http.hooks, _log, logging.WARNING, StateEvent("refresh_failed", self.subject, details)
        )

    def _handled_refresh(self, fallback: str | None) -> Callable[[], str | None] | None:
        """What a refresh's request says it comes to when it meets an outage, for the retry
        middleware's give-up line: None for a refresh a caller waits for; for a keepalive's,
        ``fallback`` (see :meth:`_refresh`), unless a caller's :meth:`refresh` joined it and
        waits for it as it gives up: that caller fails with it (an ERROR, as its own)."""
        if fallback is None:
            return None
        return lambda: None if self._callers else fallback

    def _handled_login(
        self, fallback: str | None, session: LoginSession, refused: bool
    ) -> Callable[[], str | None] | None:
        """What a refresh's fallback login says it comes to when it meets an outage, for the
        retry middleware's give-up line: None for a refresh a caller waits for
        (:meth:`refresh`: its failure is the caller's); for a keepalive's, the refused session
        dropped, or (after a 3xx) kept and refreshed again. Asked as the login gives up: None
        then too if a caller (:meth:`login`, :meth:`credentials`, :meth:`relogin`, or a
        :meth:`refresh` that joined it) waits for it, since it fails with it (an ERROR, as any
        login a caller waits for); and ``session`` dropped, not kept, if a refused refresh of
        it joined the login a redirected one started (see :meth:`_fall_back`)."""
        if fallback is None:
            return None

        def handled() -> str | None:
            if self._callers:
                return None
            if refused or self._refused_session is session:
                return _REFUSED_FALLBACK
            return _KEEPALIVE_FALLBACK

        return handled

    async def _fall_back(
        self,
        http: ProviderHttp,
        session: LoginSession,
        refused: bool,
        login: Callable[[], Awaitable[object]],
        started: float,
        until: float | None,
    ) -> None:
        """Log in after a refresh of ``session`` that was not accepted (``refused``: a 4xx;
        else a 3xx): ``login()`` joins or starts the login flight. If it fails, a refused
        session is dropped all the same: were the login refused (a changed password, a
        blacklisted account), the dead session must not be refreshed, and the login tried
        again, at every tick. One a 3xx left alone is kept: it still serves calls while the
        Login Service is down or redirects to a maintenance page, and is still refreshed; but
        a refused login is not sent again for it (:meth:`_mark_login_refused`). After an
        outage the next refresh tries the login again.

        The login and that outcome are one shared run (``_fallback_flight``), waited for no
        longer than ``until`` (the refresh's deadline): the login is shared by every caller
        waiting for credentials, so a refresh that gives up at its deadline only stops
        waiting (a :class:`~le_transport.errors.DeadlineExceeded`); the login goes on on its
        own schedule (its policy's pauses and deadline), and its outcome still drops or marks
        the session. A refused refresh that joins the run a redirected one started (its
        deadline passed, a second refresh went out) has the session dropped if the login
        fails, as a refused refresh that started it would: the Login Service said it ended."""
        if refused:
            self._refused_session = session

        async def run() -> None:
            try:
                await login()
            except Exception as login_exc:
                if refused or self._refused_session is session:
                    self._drop(session)
                else:
                    self._mark_login_refused(session, login_exc)
                raise
            finally:
                if self._refused_session is session:
                    self._refused_session = None

        await self._wait_within(
            http, self._fallback_flight, run, started, until, "the login it falls back to"
        )

    def _login_refused_for(self, session: LoginSession) -> bool:
        """Whether ``session`` was kept after a refresh answered 3xx whose fallback login was
        refused: its refresh then falls back to no login (:meth:`_refusal_again`)."""
        mark = self._login_refused
        return mark is not None and mark[0] == session.generation

    def _next_after_refresh(self, session: LoginSession) -> str:
        """What follows a refresh of ``session`` that was not accepted, in its event."""
        return "no login: refused for this session" if self._login_refused_for(session) else "login"

    def _mark_login_refused(self, session: LoginSession, exc: BaseException) -> None:
        """After a refresh answered 3xx kept ``session``: if its fallback login was refused
        (``exc`` a :class:`LoginRejected` or :class:`BlockedError`; with a ``shared`` session,
        maybe by another process, recorded in the store), no refresh of it sends that login
        again, whoever asks for it (the keepalive, the engine's, a caller): at every tick it
        would be a refused login (12 an hour: an account lockout, a blacklisted account
        hammered). Said once, as a WARNING (the refusal itself was an ERROR,
        ``login_failed``), which names what lifts it. The session is still refreshed: a 2xx
        keeps it alive. (An :class:`UnexpectedAnswer`, a 408 or a 425 among them, is an outage
        and marks nothing: the next refresh tries the login again.)"""
        if not isinstance(exc, (LoginRejected, BlockedError)) or self._session is not session:
            return
        if self._login_refused_for(session):
            return
        self._login_refused = (session.generation, exc.status)
        _log.warning(
            "%s: the login was refused (%d)%s after a refresh answered with a redirect; the "
            "session is kept and still refreshed, but %s",
            self.subject,
            exc.status,
            " for the fleet's session" if self._shared is not None else "",
            _WITHHELD,
            extra={
                "subject": self.subject,
                "status": exc.status,
                "generation": session.generation,
            },
        )

    def _refusal_again(self, status: int) -> LoginRejected | BlockedError:
        """What a refresh of a session whose fallback login was refused raises when it is not
        accepted again (``status``, a 3xx or a 4xx): the refusal's type and status, with no
        login request made."""
        mark = self._login_refused
        assert mark is not None
        return self._withheld(
            f"{self.subject}: the Login Service answered {status} to refresh; the login it "
            f"falls back to was refused with {mark[1]} for this session: {_WITHHELD} (check "
            "the credentials)",
            mark[1],
        )

    def _withheld(self, message: str, refused: int) -> LoginRejected | BlockedError:
        """The refusal (its status ``refused``) raised again, with no login request made."""
        if refused == 451:
            return BlockedError(message, status=451, service=self._service)
        return LoginRejected(message, status=refused)

    # -- a session shared by a fleet (state.SharedSession) ----------------------------------

    async def _shared_login(
        self,
        stale: str | None = None,
        fallback_of: str | None = None,
        *,
        handled: Callable[[], str | None] | None = None,
    ) -> LoginSession:
        """The fleet's session, logging in for the fleet if there is none but ``stale``
        (default: the login of the session this process holds, refreshes of it included: see
        :meth:`SharedSession.login <le_transport.state.SharedSession.login>`).

        ``fallback_of``: the login (:attr:`SharedToken.login`) of the session whose refresh
        was answered 3xx, when this is its fallback login. Under the fleet's lock, before it is
        sent, the store is asked whether that login was refused for that session (by any
        process): then none is sent, and the refusal is raised again; refused here, it is
        recorded there before the lock is let go (:meth:`SharedSession.mark_refused
        <le_transport.state.SharedSession.mark_refused>`). A store that fails answers no
        mark (each process goes on on its own, as without a fleet). ``handled``: see
        :meth:`_login`."""
        shared = self._shared
        assert shared is not None
        own: list[LoginSession] = []

        async def fleet_login() -> tuple[str, float | None]:
            if fallback_of is not None:
                status = await shared.refused(fallback_of)
                if status is not None:
                    raise self._withheld(
                        f"{self.subject}: the Login Service answered a redirect to refresh; "
                        f"the login it falls back to was refused with {status} for the "
                        f"fleet's session: {_WITHHELD} (check the credentials)",
                        status,
                    )
            try:
                session = await self._login(handled)
            except (LoginRejected, BlockedError) as exc:
                if fallback_of is not None:
                    # Before the lock is let go: the next process to take it reads it.
                    await shared.mark_refused(fallback_of, exc.status)
                raise
            own.append(session)
            return _dump_session(session), session.ttl

        # A session we held and lost (a 401, a re-login) is stale: only another login will do.
        # Its login, not its version: a refresh elsewhere stores the same bearer under a new
        # version, and adopting that met the same 401 again (the call failed).
        if stale is None and self._shared_token is not None:
            stale = self._shared_token.login
        token = await shared.login(fleet_login, stale=stale)
        if not own and self._unreadable(token):
            # Damaged, or written by something else: as stale as a rejected one. Without this
            # every process of the fleet failed every call until the entry's TTL ran out.
            await shared.forget(token.version)
            token = await shared.login(fleet_login, stale=token.version)
        self._shared_token = token
        return own[0] if own else self._adopt(token)

    def _unreadable(self, token: SharedToken) -> bool:
        """Whether the fleet's stored session cannot be read (logged: the fleet logs in anew)."""
        try:
            _load_session(token.value, 0, 0.0)
        except AuthenticationError:
            _log.warning(
                "%s: ignoring an unreadable shared session; logging in instead",
                self.subject,
                extra={"subject": self.subject},
            )
            return True
        return False

    def _adopt(self, token: SharedToken) -> LoginSession:
        """Take the session another process stored (AuthenticationError if unreadable)."""
        http = require_attached(self._http, self)
        current = self._session
        # Timed from when it was stored (its login or last refresh), not from now: an adopted
        # session timed from its adoption was refreshed, and a failed refresh tried again,
        # after it had expired.
        loaded = _load_session(token.value, self._generation + 1, http.clock.now() - token.age)
        if current is not None and current.bearer == loaded.bearer:
            # A refresh elsewhere: same bearer, so the same generation (a login refused for it
            # stays so).
            loaded = attrs.evolve(loaded, generation=current.generation)
        else:
            self._generation += 1
            self._login_refused = None
        self._session = loaded
        self._logged_in.set()
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent("session_adopted", self.subject, {"generation": loaded.generation}),
        )
        self._start_keepalive(http)
        return loaded

    async def _shared_refresh(
        self,
        http: ProviderHttp,
        session: LoginSession,
        held: SharedToken,
        fallback: str | None = None,
        *,
        until: float | None = None,
        started: float = 0.0,
    ) -> bool:
        assert self._shared is not None
        done: list[bool] = []
        # The fleet's session this refresh posts (the stored one if newer than ``held``): the
        # token, and the session itself.
        posted: list[tuple[SharedToken, LoginSession]] = []

        async def fleet_refresh(
            newest: SharedToken,
        ) -> tuple[str, float | None, SharedToken]:
            base, token = session, held
            if newest.version != held.version and not self._unreadable(newest):
                base = _load_session(
                    newest.value, session.generation, http.clock.now() - newest.age
                )
                token = newest
            posted.append((token, base))
            await self._post_session(
                http,
                base,
                "refresh",
                self._policy(http),
                fallback=self._handled_refresh(fallback),
                until=until,
            )
            done.append(True)
            # The token refreshed: ``held`` when the newest entry could not be read as a
            # session (its login is not the one refreshed).
            return _dump_session(base), base.ttl, token

        shared = self._shared

        def progress() -> float:
            # Our own refresh is out: its request gives up within the deadline on its own,
            # with the Login Service's answer; only the wait before it is cut here.
            return http.clock.now() if posted else -math.inf

        try:
            # Refreshed by any process within most of an interval: take that, do not repeat it.
            # Within the deadline: another process may hold the fleet's lock (its login or
            # refresh, on its own schedule) for up to the lock's TTL; a run waiting for it was
            # cut by the engine's backstop as a bare TimeoutError.
            token = await self._within(
                http,
                lambda: shared.refresh(
                    fleet_refresh, held, min_interval=0.9 * self.refresh_interval_for(session)
                ),
                until,
                progress,
            )
        except _PastDeadline:
            raise self._deadline_passed(
                http, started, "the fleet's session (another process holding its lock)"
            ) from None
        except (ClientStatusError, _NotAccepted) as exc:
            transient = _try_again(exc)
            self._refresh_failed(http, session, exc, transient, generation=False)
            if transient:
                # As alone: kept, in the store too (not forgotten), tried again later.
                raise
            await self._shared_refresh_failed(
                http,
                session,
                posted[0][0] if posted else held,
                exc,
                posted[0][1] if posted else session,
                fallback=fallback,
                started=started,
                until=until,
            )
            return False
        if token.version != held.version and not done:
            if self._unreadable(token):
                # Another process stored it within the interval, so we did not refresh: keep
                # ours (it still lives); with the damaged entry gone, the next tick refreshes.
                await self._shared.forget(token.version)
                return False
            self._adopt(token)
        self._shared_token = token
        if not done:
            return False
        refreshed = session
        if posted[0][1] is not session and (self._session is session or self._session is None):
            # The fleet's newer session was refreshed (another process logged in since ours):
            # use it. Ours is older, most likely dead: kept, each call would meet a 401, and
            # the login after it replace the session just refreshed, for the whole fleet.
            refreshed = self._adopt(token)
        self.refreshes += 1
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent("refreshed", self.subject, {"generation": refreshed.generation}),
        )
        return True

    async def _shared_refresh_failed(
        self,
        http: ProviderHttp,
        session: LoginSession,
        token: SharedToken,
        exc: ClientStatusError | _NotAccepted,
        posted: LoginSession,
        *,
        fallback: str | None = None,
        started: float = 0.0,
        until: float | None = None,
    ) -> None:
        """The fleet's session ``token`` (``posted``) was not refreshed (a 4xx or a 3xx):
        log in anew, for the fleet, unless another process already did. Refused (a 4xx), that
        session is taken out of the store first (no process may adopt it again: nor any
        refresh of its login, the same bearer), and the session held dropped if the login
        fails; after a 3xx, it is kept until a login replaces it (as without a shared session:
        see the module), and a refresh of it another process stored since is taken (a 3xx
        says nothing of the session). Its login is waited for within ``until``, as without a
        fleet (see :meth:`_fall_back`)."""
        assert self._shared is not None
        refused = isinstance(exc, ClientStatusError)
        version = token.login if refused else token.version
        if refused:
            await self._shared.forget(version)
        current = self._session
        if current is not session:
            # Replaced meanwhile (a login, an adopted session) or dropped: nothing to do,
            # unless what replaced it is the session just refused (adopted from the store while
            # its refresh was on the wire): that one goes as the held one would.
            if not (refused and current is not None and current.bearer == posted.bearer):
                return
            session = current
        if self._login_refused_for(session):
            # Its fallback login was refused already: not sent again (see _refresh_once).
            if refused:
                self._drop(session)
            raise self._refusal_again(exc.status) from exc
        # After a 3xx the session lives on: a refusal of its login is the fleet's to know (one
        # refused login for the fleet, not one a process, nor one more for every process that
        # adopts the session later). A 4xx took it out of the store: its processes drop it.
        fallback_of = None if refused else token.login
        handled = self._handled_login(fallback, session, refused)
        self._check_open()

        def login() -> Awaitable[LoginSession]:
            return self._flight.run(
                lambda: self._shared_login(stale=version, fallback_of=fallback_of, handled=handled)
            )

        await self._fall_back(http, session, refused, login, started, until)

    def _policy(self, http: ProviderHttp) -> RetryPolicy:
        return login_policy(self._retry or http.policy)

    def _url(self, http: ProviderHttp, host: str, action: str) -> URL:
        return provider_url(
            http.scheme, host, f"/api/account/{self._account}/{action}", {"v": self._version}
        )

    async def _login(self, handled: Callable[[], str | None] | None = None) -> LoginSession:
        """Send a login and install its session. ``handled``: asked as it gives up on an
        outage, what the caller does then (a keepalive's fallback login after a refresh), for
        the retry middleware's give-up line: a WARNING ending with those words, not an ERROR;
        None: not handled (see :meth:`_handled_login`)."""
        http = require_attached(self._http, self)
        host = await self._domains.resolve(self._service)
        self.login_attempts += 1
        with credential_refusals(
            http,
            self.subject,
            blocked=(
                f"{self.subject}: the Login Service answered 451: the account or user is "
                "blacklisted; not retried, contact LivePerson"
            ),
            refused=lambda status: (
                f"{self.subject}: the Login Service refused the credentials with {status}; "
                "check them (a rejected login is never retried)"
            ),
        ):
            resp = await http.request(
                "POST",
                self._url(http, host, "login"),
                service=self._service,
                json=self._body(),
                retry=self._policy(http),
                # Logging in twice is harmless: a 5xx is retried on the schedule like a GET.
                idempotent=True,
                fallback=handled,
            )
        if resp.status != 200:
            # Neither a refusal (a 4xx is LoginRejected above) nor a login: a redirect to a
            # maintenance page, most likely. Nothing is wrong with the credentials.
            err = UnexpectedAnswer(
                f"{self.subject}: the Login Service answered {resp.status} instead of 200 "
                "(neither a refusal nor a login: a redirect or a maintenance page?)",
                status=resp.status,
                service=self._service,
            )
            report_login_failed(http, self.subject, err, resp.status)
            raise err
        session = self._parse(http, resp.body, resp.cookies.get("Session_id"))
        # The session this replaces, if any, is not logged out here: a login asked for while
        # a session lived (relogin(), login() called directly) says nothing of that session,
        # which calls in flight and sockets may still hold (see the module).
        self._session = session
        self._login_refused = None
        self._logged_in.set()
        self.logins += 1
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent(
                "logged_in",
                self.subject,
                {"generation": session.generation, "user_id": session.user_id},
            ),
        )
        self._start_keepalive(http)
        return session

    def _parse(self, http: ProviderHttp, body: bytes, session_id: str | None) -> LoginSession:
        try:
            payload: Any = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            payload = None
        bearer = payload.get("bearer") if isinstance(payload, dict) else None
        if not isinstance(bearer, str) or not bearer:
            # Not the login answer (a proxy's HTML maintenance page, say): no refusal either.
            err = UnexpectedAnswer(
                f"{self.subject}: the Login Service answered 200 without a bearer (not the "
                "login answer: a maintenance page?)",
                status=200,
                service=self._service,
            )
            report_login_failed(http, self.subject, err, 200)
            raise err
        if not header_safe(bearer):
            err = UnexpectedAnswer(
                f"{self.subject}: the bearer the Login Service answered has characters a "
                "header cannot carry (whitespace or control characters); refused",
                status=200,
                service=self._service,
            )
            report_login_failed(http, self.subject, err, 200)
            raise err
        assert isinstance(payload, dict)
        csrf = payload.get("csrf")
        if session_id is not None and not cookie_safe(session_id):
            _log.warning(
                "%s: ignoring a Session_id cookie that cannot be sent back as is; "
                "refresh will fall back to a fresh login",
                self.subject,
                extra={"subject": self.subject},
            )
            session_id = None
        config = payload.get("config")
        user_id = config.get("userId") if isinstance(config, dict) else None
        collection = payload.get("csdsCollectionResponse")
        warm = getattr(self._domains, "warm", None)
        if collection is not None and callable(warm):
            warm(collection)
        self._generation += 1
        return LoginSession(
            bearer=Secret(bearer),
            csrf=Secret(csrf) if isinstance(csrf, str) and csrf else None,
            session_id=Secret(session_id) if session_id else None,
            ttl=_ttl_seconds(payload.get("sessionTTl")),
            user_id=_user_id(user_id),
            generation=self._generation,
            logged_in_at=http.clock.now(),
        )

    async def _post_session(
        self,
        http: ProviderHttp,
        session: LoginSession,
        action: str,
        policy: RetryPolicy,
        *,
        fallback: str | Callable[[], str | None] | None = None,
        until: float | None = None,
    ) -> None:
        """POST ``action`` (refresh, logout) with the session's cookie and csrf; an answer
        other than 2xx is a :class:`_NotAccepted` (a 4xx: the retry middleware's
        :class:`ClientStatusError`), a refresh's 2xx whose body is neither empty nor JSON an
        :class:`UnexpectedAnswer` (an outage). ``fallback``: see :meth:`ProviderHttp.request`.
        ``until``: the clock time by which the request gives up (what is left of it once the
        host is resolved is the request's deadline, never longer than ``policy``'s own); past
        it already, a :class:`~le_transport.errors.DeadlineExceeded` and nothing sent; so too
        when it passes while the host is resolved (a Domain API refetched on its schedule):
        the engine's keepalive run was cut there by its backstop as a bare ``TimeoutError``."""
        begun = http.clock.now()
        try:
            host = await self._within(http, lambda: self._domains.resolve(self._service), until)
        except _PastDeadline:
            raise DeadlineExceeded(
                f"{self.subject}: the {action}'s deadline passed before it was sent (while "
                f"resolving the host of {self._service!r})",
                elapsed=http.clock.now() - begun,
                service=self._service,
                method="POST",
            ) from None
        if until is not None:
            left = until - http.clock.now()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{self.subject}: the {action}'s deadline passed before it was sent",
                    elapsed=0.0,
                    service=self._service,
                    method="POST",
                )
            if policy.deadline is None or left < policy.deadline:
                policy = attrs.evolve(policy, deadline=left)
        headers = {}
        if session.session_id is not None:
            headers["Cookie"] = f"Session_id={session.session_id.reveal()}"
        body = {"csrf": session.csrf.reveal()} if session.csrf is not None else {}
        resp = await http.request(
            "POST",
            self._url(http, host, action),
            service=self._service,
            json=body,
            headers=headers,
            retry=policy,
            idempotent=True,
            fallback=fallback,
        )
        if not 200 <= resp.status < 300:
            # Provider calls never follow redirects: a 3xx (or a stray 1xx) did not refresh
            # nor end the session, whatever it says, and must not be counted as if it had.
            raise _NotAccepted(
                f"{self.subject}: the Login Service answered {resp.status} to {action} "
                "instead of 2xx",
                status=resp.status,
            )
        if action == "refresh" and not _empty_or_json(resp.body):
            # The Login Service answers a refresh 200 with an empty body: a page (a proxy's
            # HTML maintenance page) refreshed nothing, and is no refusal either. An outage, as
            # the login takes it (UnexpectedAnswer): the session is kept, tried again sooner.
            raise UnexpectedAnswer(
                f"{self.subject}: the Login Service answered {resp.status} to refresh with a "
                "body that is not JSON (not its answer: a maintenance page?)",
                status=resp.status,
                service=self._service,
            )

    async def _logout(self, http: ProviderHttp, session: LoginSession) -> None:
        """Log ``session`` out: one attempt within :data:`LOGOUT_TIMEOUT`; a failure is
        logged as a WARNING (by the error's type or the answer's status, never a secret) and
        swallowed."""
        # One attempt: closing must not sit through the 5/10/15 s schedule.
        policy = attrs.evolve(self._policy(http), pauses=())
        try:
            async with timeout_after(http.clock, LOGOUT_TIMEOUT):
                await self._post_session(http, session, "logout", policy)
        except Exception as exc:  # the session expires on its own; closing must go on
            error = (
                f"answered {exc.status}"
                if isinstance(exc, (_NotAccepted, ClientStatusError))
                else type(exc).__name__
            )
            _log.warning(
                "%s: logout failed (%s); the session will expire on its own",
                self.subject,
                error,
                extra={
                    "subject": self.subject,
                    "error": type(exc).__name__,
                    "generation": session.generation,
                },
            )
            return
        emit_state(
            http.hooks,
            _log,
            logging.INFO,
            StateEvent("logged_out", self.subject, {"generation": session.generation}),
        )

    def _drop(self, session: LoginSession | None) -> None:
        """Forget ``session`` if it is still the current one; it is not logged out (calls in
        flight and sockets may still hold it: see the module). Never once closing: the close
        logs out what is current, and a session dropped under it would be left logged in."""
        if session is None or self._session is not session or self._closed:
            return
        self._session = None

    # -- keepalive --------------------------------------------------------------------------

    def _start_keepalive(self, http: ProviderHttp) -> None:
        if not self._keepalive_on or self._closed:
            return
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.get_running_loop().create_task(
                self._keepalive_loop(http), name=f"le_transport.keepalive[{self._account}]"
            )

    async def _keepalive_loop(self, http: ProviderHttp) -> None:
        """Refresh the session every :meth:`refresh_interval_for` it, timed from its login (or
        last refresh). Without a session (dropped after a 401, or after a refused login) it
        waits for the next login, whoever makes it, and times the refresh from that: never
        an interval measured from a session that is gone. A session kept after a refresh
        that failed (an outage, or a 3xx, whether its fallback login met an outage or was
        refused) is refreshed again sooner: :meth:`_retry_in`. A refused fallback login is
        never sent again for that session (the refresh raises the refusal without it: see
        :meth:`_mark_login_refused`), so the keepalive needs no rule of its own for it, and
        the session is kept alive once the Login Service answers its refresh again."""
        # The session last known alive (logged in, adopted or refreshed), and since when.
        alive: tuple[LoginSession, float] | None = None
        failed = False
        # After a failed refresh: the clock time before which the Login Service asked for no
        # other (its 429's or 503's Retry-After, cut to the policy's ceiling).
        rest_until = 0.0
        while True:
            # Cleared before the session is read: a login from here on wakes the wait below
            # (one that landed before is read here).
            self._logged_in.clear()
            session = self._session
            if session is None:
                await self._logged_in.wait()
                continue
            if alive is None or alive[0] is not session:
                alive, failed = (session, session.logged_in_at), False
            now = http.clock.now()
            wait = (
                self._retry_in(session, alive[1], now, rest_until=rest_until)
                if failed
                else max(0.0, alive[1] + self.refresh_interval_for(session) - now)
            )
            try:
                async with timeout_after(http.clock, wait):
                    await self._logged_in.wait()
            except TimeoutError:
                pass  # the interval ran out: refresh
            else:
                continue  # a login replaced the session: time the refresh from it
            try:
                await self._refresh(_KEEPALIVE_FALLBACK)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return  # closing stops this task: nothing to report of a closed provider
                failed = True
                rest_until = http.clock.now() + rest_asked(
                    exc, self._policy(http).retry_after_ceiling
                )
                # The keepalive never dies: the next tick tries the refresh again (sooner
                # than an interval, while the session lives), or, the session being gone,
                # the next request's login starts it over; the outer recovery loop handles a
                # lasting outage. A refused fallback login (LoginRejected, BlockedError: the
                # password changed, or the account is blacklisted) is never tried again by
                # it: a dropped session waits for a login, whoever makes it; a kept one (a
                # 3xx) is still refreshed, and its refresh sends no login any more.
                details: dict[str, object] = {"error": type(exc).__name__}
                current = self._session
                refused = False
                if isinstance(exc, (LoginRejected, BlockedError)):
                    refused = True
                    details["status"] = exc.status
                    details["login"] = (
                        "refused: not sent again by a refresh of this session (the provider's "
                        "login() or relogin() sends one)"
                    )
                if current is not None:
                    details["next"] = "retry on the next tick"
                    if current is session:
                        details["retry_in"] = round(
                            self._retry_in(
                                session, alive[1], http.clock.now(), rest_until=rest_until
                            ),
                            3,
                        )
                elif refused:
                    details["next"] = "none: the keepalive waits for a successful login"
                else:
                    details["next"] = "the next call logs in"
                emit_state(
                    http.hooks,
                    _log,
                    logging.WARNING,
                    StateEvent("refresh_failed", self.subject, details),
                )
            else:
                failed = False
                if self._session is session:
                    # Refreshed (by this process, or by the fleet within the interval): alive
                    # as of now. A login that replaced it is timed from its own login.
                    alive = (session, http.clock.now())

    def _retry_in(
        self, session: LoginSession, alive_at: float, now: float, *, rest_until: float = 0.0
    ) -> float:
        """How long the keepalive waits before trying again a refresh that failed and kept
        ``session`` (last known alive at ``alive_at``): half the TTL it has left, so that a
        few tries fit before it expires, never more than :meth:`refresh_interval_for` it nor
        less than :data:`MIN_SESSION_REFRESH_INTERVAL` (no tight loop against a Login Service
        that is down). A whole interval when its TTL is unknown, or already over (a refresh
        can no longer save it: the next one meets a 401 and logs in). Never sooner than
        ``rest_until``, the clock time before which the Login Service asked for no other
        request (a 429's or 503's ``Retry-After``, cut to the policy's
        ``retry_after_ceiling``), but never past the session's expiry either: a refresh then
        can no longer keep it, and its 401 logs in."""
        interval = self.refresh_interval_for(session)
        rest = max(0.0, rest_until - now)
        if session.ttl is None:
            return max(interval, rest)
        left = alive_at + session.ttl - now
        if left <= 0:
            return interval
        wait = min(interval, max(MIN_SESSION_REFRESH_INTERVAL, left / 2.0))
        return max(wait, min(rest, left))

    def _credentials(self, session: LoginSession) -> Credentials:
        cached = self._creds
        if cached is not None and cached[0] is session:
            return cached[1]
        creds = Credentials(
            headers={"Authorization": f"Bearer {session.bearer.reveal()}"},
            bearer=session.bearer,
            generation=session.generation,
        )
        self._creds = (session, creds)
        return creds

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account={self._account!r}, service={self._service!r}, "
            f"logged_in={self._session is not None})"
        )


def _try_again(exc: BaseException) -> bool:
    """Whether a refresh's failed answer is a "try again" (408, 425): a proxy's timeout, no
    refusal of the session (a refresh answered so dropped a valid session, and in a fleet
    took it out of the store)."""
    return isinstance(exc, ClientStatusError) and exc.status in RETRY_HANDSHAKE_STATUSES


def _empty_or_json(body: bytes) -> bool:
    """Whether a refresh's 2xx body can be the Login Service's: empty (or only whitespace), as
    it answers, or JSON."""
    if not body.strip():
        return True
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return False
    return True


def _shown_account(account: str) -> str:
    """How an error names a shared session's ``account``: its id if it is one, else not at all
    (a value given in the wrong place may be a credential)."""
    try:
        validate_account(account, owner="SharedSession")
    except ConfigurationError:
        return "another account (not shown: it is no account id)"
    return f"account {account!r}"


def _dump_session(session: LoginSession) -> str:
    """A session as a fleet stores it (in a store whose readers can read the bearer)."""
    return json.dumps(
        {
            "bearer": session.bearer.reveal(),
            "csrf": session.csrf.reveal() if session.csrf is not None else None,
            "session_id": session.session_id.reveal() if session.session_id is not None else None,
            "ttl": session.ttl,
            "user_id": session.user_id,
        }
    )


def _load_session(value: str, generation: int, now: float) -> LoginSession:
    """A session another process of the fleet stored; AuthenticationError if unreadable."""
    try:
        data = json.loads(value)
        bearer = data["bearer"]
        if not isinstance(bearer, str) or not bearer:
            raise ValueError("no bearer")
        csrf, session_id, ttl = data.get("csrf"), data.get("session_id"), data.get("ttl")
        user_id = data.get("user_id")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise AuthenticationError("the shared session in the store is unreadable") from None
    return LoginSession(
        bearer=Secret(bearer),
        csrf=Secret(csrf) if isinstance(csrf, str) and csrf else None,
        session_id=Secret(session_id) if isinstance(session_id, str) and session_id else None,
        # finite_number: float() of an int past its range raises, and an infinite TTL is none.
        ttl=float(ttl) if finite_number(ttl) and ttl > 0 else None,
        user_id=user_id if isinstance(user_id, str) else None,
        generation=generation,
        logged_in_at=now,
    )


class UserLogin(LoginServiceAuth):
    """User login: a LiveEngage username and password (the guide's Step 4, "User Login")."""

    _kind = "user_login"

    def __init__(
        self,
        account: str,
        username: str,
        password: str | Secret,
        *,
        domains: DomainProvider,
        service: str = AGENT_VEP,
        version: str = LOGIN_SERVICE_VERSION,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        keepalive: bool = True,
        retry: RetryPolicy | None = None,
        logout_on_close: bool | None = None,
        shared: SharedSession | None = None,
    ) -> None:
        super().__init__(
            account,
            domains=domains,
            service=service,
            version=version,
            refresh_interval=refresh_interval,
            keepalive=keepalive,
            retry=retry,
            logout_on_close=logout_on_close,
            shared=shared,
        )
        self._username = require_text(username, owner="UserLogin", field="username")
        self._password = require_secret(password, owner="UserLogin", field="password")
        self._check_shared_user(self._username)

    def _body(self) -> dict[str, str]:
        return {"username": self._username, "password": self._password.reveal()}


class AppLogin(LoginServiceAuth):
    """Application login with an API key (the guide's Step 4, "Application Login", and Step 7):
    the bot user's username and the key's app key, secret, access token, access token secret."""

    _kind = "app_login"

    def __init__(
        self,
        account: str,
        username: str,
        app_key: str | Secret,
        secret: str | Secret,
        access_token: str | Secret,
        access_token_secret: str | Secret,
        *,
        domains: DomainProvider,
        service: str = AGENT_VEP,
        version: str = LOGIN_SERVICE_VERSION,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        keepalive: bool = True,
        retry: RetryPolicy | None = None,
        logout_on_close: bool | None = None,
        shared: SharedSession | None = None,
    ) -> None:
        super().__init__(
            account,
            domains=domains,
            service=service,
            version=version,
            refresh_interval=refresh_interval,
            keepalive=keepalive,
            retry=retry,
            logout_on_close=logout_on_close,
            shared=shared,
        )
        owner = type(self).__name__
        self._username = require_text(username, owner=owner, field="username")
        self._app_key = require_secret(app_key, owner=owner, field="app_key")
        self._secret = require_secret(secret, owner=owner, field="secret")
        self._access_token = require_secret(access_token, owner=owner, field="access_token")
        self._access_token_secret = require_secret(
            access_token_secret, owner=owner, field="access_token_secret"
        )
        self._check_shared_user(self._username)

    def _body(self) -> dict[str, str]:
        return {
            "username": self._username,
            "appKey": self._app_key.reveal(),
            "secret": self._secret.reveal(),
            "accessToken": self._access_token.reveal(),
            "accessTokenSecret": self._access_token_secret.reveal(),
        }


class ClientCredentialsLogin(AppLogin):
    """The Login Service's OAuth2 client-credentials form (it replaced OAuth1 bot login, which
    is end-of-life since 2026-04-30): ``appKey`` = client id, ``secret`` = client secret, and
    ``"dummy"`` for both access-token fields."""

    _kind = "client_credentials_login"

    def __init__(
        self,
        account: str,
        username: str,
        client_id: str | Secret,
        client_secret: str | Secret,
        *,
        domains: DomainProvider,
        service: str = AGENT_VEP,
        version: str = LOGIN_SERVICE_VERSION,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        keepalive: bool = True,
        retry: RetryPolicy | None = None,
        logout_on_close: bool | None = None,
        shared: SharedSession | None = None,
    ) -> None:
        super().__init__(
            account,
            username,
            client_id,
            client_secret,
            CLIENT_CREDENTIALS_DUMMY,
            CLIENT_CREDENTIALS_DUMMY,
            domains=domains,
            service=service,
            version=version,
            refresh_interval=refresh_interval,
            keepalive=keepalive,
            retry=retry,
            logout_on_close=logout_on_close,
            shared=shared,
        )
