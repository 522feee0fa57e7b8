"""Shared machinery of token providers: fetch once, reuse, refresh before expiry, single flight.

A token provider (OAuth2 client credentials, the consumer JWT) holds one token. It fetches it on
first use, reuses it until ``margin`` seconds before it expires (the JWT's ``exp``, else the
answer's ``expires_in``; with both, never later than ``expires_in``, which is read on no wall
clock, and by it alone when the ``exp`` reads as dead, never longer than the JWT was issued for,
``exp - iat``, if it has a believable ``iat``; an ``expires_in`` shorter than the ``exp`` says
cuts the life no lower than ``2 * MIN_TOKEN_REFRESH``, so that a broken one, 1 s beside an hour,
makes no fetch sooner than a token not believed), then fetches a new one; a token that
lives less than twice the margin is fetched anew half-way through its life instead, so that it
is never sent past its expiry.
Concurrent callers share one fetch. Expiry is kept on the engine's clock: the token's remaining
lifetime is read once, against the wall clock, when the token arrives. That wall clock is the
provider's ``wall_clock`` if given one, else the engine's it is attached to
(:attr:`Engine.wall_clock <le_transport.Engine.wall_clock>`: on a
:class:`~le_transport.testing.VirtualClock`, its virtual date, which the simulator dates its
tokens by; on the real clock, :func:`time.time`). A token whose answer
gives it under :data:`MIN_TOKEN_LIFE` (a JWT already past its ``exp`` by our wall clock, an
absurd ``expires_in``, 0 or less included) is not believed: it is used for
:data:`MIN_TOKEN_REFRESH` seconds (or half the life the JWT was issued with, ``exp - iat``, if
that is shorter) before it is fetched anew, and the server's 401 says sooner if it is really
dead. Nor is one that only a JWT's ``exp``, read on our wall clock with no believable ``iat``
(nor ``expires_in``) to say it was issued that short, gives under ``2 * MIN_TOKEN_REFRESH``: our
clock ahead of the issuer's by nearly a token's life reads every token so, and each was fetched
anew after a second or less; beside an ``expires_in`` that says longer, such an ``exp`` cuts the
life no lower than ``2 * MIN_TOKEN_REFRESH``. A token really issued that short says so with
its ``iat``, or its ``expires_in`` alone.

A wall clock skewed from the issuer's would misread every JWT's ``exp``: ahead by most of a
token's life, each token seems to live seconds and is fetched anew every second or so; behind,
each seems to outlive its real expiry, and is sent expired. The JWT's ``iat`` (issued at, read
without verifying too) tells the issuer's clock, within the time its answer took: a token
issued in our clock's future tells our clock behind, at once. One issued long ago by our clock
may be a cached token a token service hands out as it ages (whose ``exp - iat`` it no longer
has), so that alone changes nothing; a second, newer token telling the same skew confirms our
clock ahead. From then on a token's life is read against the issuer's clock (``exp`` less our
wall clock, plus the skew), never longer than ``exp - iat``; each bound taken is the one that
makes it the shorter. A skew beyond :data:`CLOCK_SKEW_TOLERANCE` is logged once, as a WARNING
with its amount (a ``clock_skew`` event; back in step, INFO), never with the token.

An ``iat`` is believed only within reason, as a broken or hostile issuer (or one replica of
it) may send anything. One less than ``2 * MIN_TOKEN_LIFE`` before ``exp`` (stamped at
``exp``) or further than :data:`MAX_CLOCK_SKEW` from our wall clock (on another epoch) tells
nothing: the token is read as one without ``iat``, and the latter is logged once, as a WARNING.
A token the skew says is dead on arrival (under :data:`MIN_TOKEN_LIFE`) though our clock says
it lives, its own ``iat`` telling another skew, disproves the skew, which one token from a
replica whose clock is ahead may have told: a token service hands out live tokens. It is read
against our clock, and the skew is dropped (INFO), so that it cannot hold the provider in a
loop of fetches at the floor. So an ``iat``
gets a token fetched no sooner than the life it claims (``exp - iat``, 2 s or more, less
``iat``'s rounding) would, or for a few fetches than a replica's clock told. Beyond reach: an
``iat`` always in the past by less than a day (one stamped in local time) cannot be told from
our clock ahead, and tokens are believed to live that much longer; a 401 then replaces each.

That early fetch runs in the background: the call that finds the token due starts it (one for
every caller, single flight with any other fetch) and goes on with the current token at once,
as every call does while it is out; a slow or hung token service holds no call, up to its
attempt timeout or past its deadline. :meth:`TokenProvider.close` stops it. It is one
attempt, not the request schedule: the current token still works, so a token service outage
(a 5xx, a transport failure; an answer that is neither a refusal nor a
token, :class:`~le_transport.errors.UnexpectedAnswer`: a redirect, a proxy's HTML maintenance
page; a consumer's auth-code callable failing on the network) must not fail calls, nor hold
them through 5/10/15 s of pauses, nor send a token request for each. Its failure is logged as a
WARNING, not an ERROR, by the retry middleware: the fetch says it handles an outage, and how
(the line ends with it, and the give-up event has ``handled_by_caller``). When it fails, the
current token keeps being used (a ``refresh_failed`` event says so) and the fetch is tried
again after a pause that grows like the request schedule (never shorter than the
``Retry-After`` the answer asked for, up to the policy's ``retry_after_ceiling``; a rest that
runs past the token's expiry is cut there: asked sooner, within the rest, the token service
would only answer 429 again, and the calls that need a token after its expiry wait for it
anyway); once the
token has expired, the fetch follows the whole schedule and its failure is the call's. That
includes the callers that join an early fetch that fails after the token expired (or was
dropped after a 401): the same shared
run goes on with a fetch on the whole schedule, as a caller without a token would get, and one
for all of them. A refusal (a 4xx: bad credentials, a blacklisted account) is reported as any
call's (``login_failed``); met by an early fetch, it fails no call holding a valid token, but
drops that token (as :meth:`TokenProvider.relogin` does), so that the next call fetches one
itself and fails with the refusal: it is never asked again in the background. So does any other
failure that is no outage (a mistake: an auth-code callable returning nothing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from typing import ClassVar

import attrs
from yarl import URL

from .._redact import Secret
from .._tasks import stop_task
from ..errors import (
    BlockedError,
    ClientStatusError,
    ConfigurationError,
    DomainResolutionError,
    EngineClosed,
    HostileHostError,
    LoginRejected,
    RequestError,
    UnexpectedAnswer,
    UnknownServiceError,
)
from ..events import StateEvent
from ..middleware.context import is_provider_outage, rest_asked
from ..policies._validate import finite_number
from ..policies.retry import RetryPolicy
from ._flight import SingleFlight
from ._http import (
    ProviderHttp,
    ProviderResponse,
    answer_finite,
    check_domains_account,
    emit_state,
    header_safe,
    require_attached,
    require_option,
)
from ._refusals import credential_refusals
from .auth import Credentials, closed_error
from .domains import DomainProvider
from .jwt import jwt_times
from .login import login_policy

__all__ = [
    "CLOCK_SKEW_TOLERANCE",
    "DEFAULT_TOKEN_MARGIN",
    "MAX_CLOCK_SKEW",
    "MAX_JWT_EXP",
    "MIN_TOKEN_LIFE",
    "MIN_TOKEN_REFRESH",
    "Token",
    "TokenProvider",
]

_log = logging.getLogger("le_transport.auth")

#: Fetch a new token this many seconds before the old one expires.
DEFAULT_TOKEN_MARGIN = 60.0
#: The shortest life a token's answer is believed: one living less (already expired by our
#: wall clock, or an absurd ``expires_in``) is used for :data:`MIN_TOKEN_REFRESH` seconds.
MIN_TOKEN_LIFE = 1.0
#: How long a token whose answer is not believed (see :data:`MIN_TOKEN_LIFE`) is used before it
#: is fetched anew on its own (never longer than half the life a JWT was issued with); also the
#: shortest pause before an early fetch is tried again.
MIN_TOKEN_REFRESH = 5.0
#: How far our wall clock may be from a JWT issuer's, as its ``iat`` tells, before it is taken
#: as skewed (see the module): well beyond the jitter of an answer's transit and of ``iat``'s
#: whole seconds, so that a slow answer is not taken for skew.
CLOCK_SKEW_TOLERANCE = 5.0
#: The farthest a JWT's ``iat`` is believed to tell our wall clock is from its issuer's: a day
#: (a clock set to another time zone is within it; an ``iat`` on another epoch is not). Beyond
#: it, the ``iat`` is ignored.
MAX_CLOCK_SKEW = 86_400.0
#: The latest JWT ``exp`` read as a time (epoch seconds; about the year 5138). RFC 7519's
#: NumericDate is seconds: an ``exp`` beyond is no expiry in seconds (most likely one in
#: milliseconds, which read as seconds lives some 50,000 years, so is never fetched anew), and
#: the token is read as one without ``exp`` (its answer's ``expires_in``, if any; else a 401
#: replaces it), logged once as a WARNING.
MAX_JWT_EXP = 1e11
#: ``iat`` is whole seconds: it may be up to this much before the moment the token was made.
_IAT_RESOLUTION = 1.0
#: What an early fetch does when its one attempt meets an outage, in the retry middleware's
#: give-up line: true whether the token still lives then or expired meanwhile.
_EARLY_FALLBACK = (
    "the current token is kept while it is valid and fetched again later; if it expired "
    "meanwhile, a fetch on the whole schedule follows"
)


@attrs.frozen(repr=False)
class Token:
    """A token, when to fetch the next one (engine clock; None: never on its own), its
    generation, and when it expires (engine clock; None: unknown, or never)."""

    value: Secret
    refresh_at: float | None
    generation: int
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        """Whether the token is past its expiry at ``now`` (engine clock); False if unknown."""
        return self.expires_at is not None and now >= self.expires_at

    def __repr__(self) -> str:
        return (
            f"Token(generation={self.generation}, refresh_at={self.refresh_at!r}, "
            f"expires_at={self.expires_at!r})"
        )


def _transient(exc: Exception) -> bool:
    """Whether a failed token request is an outage that a still-valid token can ride out: a
    5xx or transport failure after its schedule, the Domain API being down, an answer that is
    neither a refusal nor a token (:class:`UnexpectedAnswer`: a redirect, a proxy's HTML
    maintenance page), or the provider's own call failing on the network (an auth-code
    callable raising ``OSError`` or ``TimeoutError``: ``is_provider_outage``). Not a refusal
    (a 4xx arrives as :class:`LoginRejected` or :class:`BlockedError`), a close, an unknown
    service, a hostile host, nor a mistake (a ``ConfigurationError``)."""
    if isinstance(exc, (UnknownServiceError, HostileHostError)):
        return False
    if isinstance(exc, (DomainResolutionError, UnexpectedAnswer)):
        return True
    if isinstance(exc, RequestError):
        return not isinstance(exc, (ClientStatusError, EngineClosed))
    return is_provider_outage(exc)


def check_token_options(owner: str, domains: object, service: object, account: str) -> None:
    """The options every token provider shares: a domain provider (of ``account``, when it
    says whose it is) and a service name."""
    require_option(
        isinstance(domains, DomainProvider),
        domains,
        owner=owner,
        field="domains",
        wants="a DomainProvider",
    )
    check_domains_account(owner, domains, account)
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
    #: The header its credentials set (see :class:`~le_transport.providers.AuthProvider`).
    credential_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    def __init__(
        self,
        *,
        margin: float = DEFAULT_TOKEN_MARGIN,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if not (finite_number(margin) and margin >= 0):
            raise ConfigurationError(
                f"{type(self).__name__}.margin must be a finite number of seconds >= 0, "
                f"got {margin!r:.40}"
            )
        require_option(
            wall_clock is None or callable(wall_clock),
            wall_clock,
            owner=type(self).__name__,
            field="wall_clock",
            wants="a callable returning epoch seconds, or None (the engine's)",
        )
        self._margin = float(margin)
        # None: the wall clock of the engine attached (ProviderHttp.wall_clock), read at each
        # token; its clock's date on a VirtualClock, time.time on the real one.
        self._wall_clock = wall_clock
        self._http: ProviderHttp | None = None
        self._token: Token | None = None
        #: The last token's credentials, built once per token: every call asks for them.
        self._creds: tuple[Token, Credentials] | None = None
        self._generation = 0
        self._flight: SingleFlight[Token] = SingleFlight(
            f"le_transport.{self._kind}", f"{self.subject}: the token request"
        )
        self._closed = False
        # The background task of the early fetch last started (see _renew); stopped on close.
        self._early: asyncio.Task[None] | None = None
        # Early fetches failed in a row while the current token still lived (the pause before
        # the next one grows with it); reset by a token.
        self._early_failures = 0
        # How far our wall clock is ahead of the token issuer's (negative: behind), as JWTs'
        # iat told it; 0 until one tells otherwise (see the module).
        self._skew = 0.0
        # The last JWT that looked issued longer ago than the skew allows (a cached token, or
        # our clock further ahead): its iat and the bounds of the skew it would mean. A second,
        # newer one meaning the same skew confirms it.
        self._older: tuple[float, float, float] | None = None
        # Whether an iat beyond MAX_CLOCK_SKEW has been logged (once is enough).
        self._iat_ignored = False
        # Whether an exp beyond MAX_JWT_EXP has been logged (once is enough).
        self._exp_ignored = False
        #: Tokens fetched successfully.
        self.fetches = 0

    # -- subclass hook ----------------------------------------------------------------------

    async def _request_token(
        self, http: ProviderHttp, retry: RetryPolicy, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        """Send the token request on ``retry``; return the answer and the JSON field holding
        the token. Pass ``fallback`` on to :meth:`ProviderHttp.request`: an early fetch
        handles an outage of its own, and says how."""
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
        provider this one resolves its host with, in case the engine does not own it. Made
        without a ``wall_clock``, it reads token dates on that engine's wall clock from now
        on (a skew learned on another one is forgotten)."""
        old = self._http
        if self._wall_clock is None and old is not None and old.wall_clock != http.wall_clock:
            self._skew, self._older = 0.0, None
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
        """``Authorization: <scheme> <token>``, fetching a token first if it is missing or has
        expired.

        A token that is due but has not expired is sent at once: the call starts the early
        fetch in the background (one for all callers) and does not wait for it, whatever the
        token service does (see the module). That goes for :meth:`Engine.login
        <le_transport.Engine.login>` and a socket's connect too: the token they get is valid.
        To wait for a new token, call :meth:`fetch`. :class:`~le_transport.errors.EngineClosed`
        once the provider is closed.
        """
        http = require_attached(self._http, self)
        self._check_open()
        token = self._token
        if token is None:
            token = await self.fetch()
        elif token.refresh_at is not None and http.clock.now() >= token.refresh_at:
            token = await self._renew(http, token)
        cached = self._creds
        if cached is not None and cached[0] is token:
            return cached[1]
        creds = Credentials(
            headers={"Authorization": f"{self._scheme} {token.value.reveal()}"},
            bearer=token.value,
            generation=token.generation,
        )
        self._creds = (token, creds)
        return creds

    async def invalidate(self, rejected: Credentials) -> None:
        """Drop the token if ``rejected`` carried it: the next call fetches a new one (once)."""
        if self._token is not None and self._token.generation == rejected.generation:
            self._token = None

    async def relogin(self) -> Credentials:
        """Fetch a new token whatever the current one (the outer recovery loop's step).

        Calls keep using the current token while the fetch is out. One that joins an early
        fetch in the background which keeps the current token through an outage fetches
        anew, on the whole schedule: it answers a new token or fails. A refused fetch
        (:class:`~le_transport.errors.LoginRejected`, :class:`~le_transport.errors.BlockedError`)
        drops it; any other failure (the token service or the Domain API down, an answer that
        is neither a refusal nor a token: :class:`~le_transport.errors.UnexpectedAnswer`) says
        nothing of it, and it is kept until it is due (or expires, or a 401 says it ended)."""
        replaced = self._token
        try:
            token = await self.fetch()
            if replaced is not None and token.generation == replaced.generation:
                # Joined an early fetch that kept the current token through an outage: no
                # re-login, and the recovery loop would take it for one. Fetched anew, on the
                # whole schedule: its token, or its failure, is this re-login's. The token it
                # replaces is now the kept copy (a later refresh_at), not the one read above: a
                # refusal must drop that one, or calls went on with a token the service refused.
                replaced = self._token
                token = await self.fetch()
        except (LoginRejected, BlockedError):
            if self._token is replaced:
                self._token = None
            raise
        return Credentials(
            headers={"Authorization": f"{self._scheme} {token.value.reveal()}"},
            bearer=token.value,
            generation=token.generation,
        )

    async def fetch(self) -> Token:
        """Fetch a token now, or join the fetch in progress (single flight).

        :class:`~le_transport.errors.EngineClosed` once the provider is closed."""
        self._check_open()
        return await self._flight.run(self._fetch)

    async def _renew(self, http: ProviderHttp, token: Token) -> Token:
        """The token to send in place of ``token``, which is due: a new one fetched on the
        whole schedule if it has expired; else ``token`` itself, at once, an early fetch
        started in the background if none is out (see the module)."""
        if token.expired(http.clock.now()):
            return await self.fetch()
        self._check_open()
        early = self._early
        if self._flight.running or (early is not None and not early.done()):
            # A fetch is out already (an early one another call started, or a re-login's on
            # its whole schedule): it will replace the token; meanwhile the token still works,
            # and a call that joined the fetch would wait for it (a re-login through an
            # outage: its whole schedule, then its failure), though it had a token to send.
            return token
        # Not awaited: the token still works, and a slow or hung token service must not hold
        # this call (up to its attempt timeout, or past its deadline) any more than the next.
        self._early = asyncio.get_running_loop().create_task(
            self._early_fetch(http, token), name=f"le_transport.early_fetch[{self.subject}]"
        )
        return token

    async def _early_fetch(self, http: ProviderHttp, token: Token) -> None:
        """The background task of an early fetch (single flight with every other fetch): its
        outcome is taken here, never left for asyncio to report. An outage is handled inside
        the shared run (:meth:`_fetch_early`: the token kept, or fetched on the whole schedule
        once expired). Anything else (a refusal, reported already as ``login_failed``; a
        mistake such as an auth-code callable returning nothing) drops the token if it is
        still the one the fetch was to replace: the next call fetches in the foreground and
        meets the failure itself, as a call did before the fetch went to the background;
        nothing is asked again in the background."""
        try:
            await self._flight.run(lambda: self._fetch_early(http, token))
        except Exception as exc:
            if self._closed or _transient(exc):
                # Closed (its EngineClosed), or an outage after the token expired: the next
                # call fetches on the whole schedule (a failure of that fetch is its own).
                return
            current = self._token
            dropped = current is not None and current.generation == token.generation
            if dropped:
                self._token = None
            emit_state(
                http.hooks,
                _log,
                logging.WARNING,
                StateEvent(
                    "refresh_failed",
                    self.subject,
                    {
                        "error": type(exc).__name__,
                        "generation": token.generation,
                        "next": "token dropped: the next call fetches one itself"
                        if dropped
                        else "none: the token was replaced meanwhile",
                    },
                ),
            )

    async def _fetch_early(self, http: ProviderHttp, token: Token) -> Token:
        """The shared run of an early fetch: the new token, or ``token`` kept through an outage,
        or (``token`` expired meanwhile) a new one fetched on the whole schedule.

        Decided here, inside the single flight, so that every caller sharing the fetch gets
        the same answer and a failure is reported once, not once per caller.
        """
        try:
            return await self._fetch(early=True)
        except Exception as exc:
            if self._closed or not _transient(exc):
                raise
            now = http.clock.now()
            if self._token is token and not token.expired(now):
                return self._put_off(http, token, exc, now)
        # Expired while the fetch was out (or dropped after a 401 meanwhile): nothing to fall
        # back to. The callers sharing this run (some may have joined it with the token
        # already expired, or none) get what a caller without a token gets: a fetch on the
        # whole schedule, whose failure is theirs. Run here, in the same shared run, so that
        # however many they are it is one fetch, and a caller that gives up stops only its
        # own wait.
        return await self._fetch()

    def _put_off(self, http: ProviderHttp, token: Token, exc: Exception, now: float) -> Token:
        """Keep ``token`` after a failed early fetch, and fetch again after a pause (never past
        its expiry, when the next call fetches on the whole schedule)."""
        self._early_failures += 1
        pauses = http.policy.pauses
        # The request schedule's pauses, spread over calls instead of held inside one: 5, 10,
        # 15, 15 ... s by default, and never sooner than a token is fetched on its own.
        pause = pauses[min(self._early_failures, len(pauses)) - 1] if pauses else 0.0
        # Never sooner than the token service asked (a 429 or 503 with Retry-After, up to the
        # policy's ceiling): the schedule's 5, 10, 15 s came back three times within a minute
        # it asked for.
        pause = max(pause, MIN_TOKEN_REFRESH, rest_asked(exc, http.policy.retry_after_ceiling))
        retry_at = now + pause
        if token.expires_at is not None:
            retry_at = min(retry_at, token.expires_at)
        kept = attrs.evolve(token, refresh_at=retry_at)
        self._token = kept
        emit_state(
            http.hooks,
            _log,
            logging.WARNING,
            StateEvent(
                "refresh_failed",
                self.subject,
                {
                    "error": type(exc).__name__,
                    "generation": token.generation,
                    "expires_in": None
                    if token.expires_at is None
                    else round(token.expires_at - now, 3),
                    "retry_in": round(retry_at - now, 3),
                    "next": "keep the current token",
                },
            ),
        )
        return kept

    async def close(self) -> None:
        """Stop a fetch in progress (an early one in the background included). Idempotent.

        Closed is final: the provider holds no token from then on, and a fetch whose answer
        arrives as it closes is discarded (no ``logged_in``); :meth:`credentials`,
        :meth:`fetch` and :meth:`relogin` raise :class:`~le_transport.errors.EngineClosed`."""
        self._closed = True
        self._token = None
        self._creds = None
        # The shared fetch first: stopping the early task only stops its wait for the fetch,
        # which would go on and answer meanwhile.
        early, self._early = self._early, None
        await self._flight.cancel()
        if early is not None and not early.done():
            await stop_task(early)
        # Whatever was in hand as they stopped (a fetch ends with no await between its answer
        # and its token) is dropped too.
        self._token = None
        self._creds = None

    def _check_open(self) -> None:
        """:class:`~le_transport.errors.EngineClosed` once the provider is closed."""
        if self._closed:
            raise closed_error(self.subject)

    # -- internals --------------------------------------------------------------------------

    async def _fetch(self, *, early: bool = False) -> Token:
        http = require_attached(self._http, self)
        retry = login_policy(http.policy)
        if early:
            # One attempt: the current token still works, and callers must not wait through
            # the schedule for a new one (the next try comes on a later call).
            retry = attrs.evolve(retry, pauses=())
        sent_at = http.clock.now()
        with credential_refusals(
            http,
            self.subject,
            blocked=f"{self.subject}: answered 451: the account is blacklisted; not retried",
            refused=lambda status: (
                f"{self.subject}: the token request was refused with {status}; check the "
                "credentials (a rejected token request is never retried)"
            ),
            keep_attempts=False,
            # An early fetch reports its own outage: it may be no failure of the call at all.
            report_outages=not early,
        ):
            resp, field = await self._request_token(
                http, retry, fallback=_EARLY_FALLBACK if early else None
            )
        # Closed while the answer was on its way (close() stops the fetch, but an answer in
        # hand as it stops is not lost to a cancellation): a closed provider keeps no token
        # and says nothing of one.
        self._check_open()
        value, expires_in = self._parse(resp, field)
        now = http.clock.now()
        lifetime, floor, believed = self._lifetime(http, value, expires_in, now - sent_at)
        refresh_at = expires_at = None
        if lifetime is not None:
            expires_at = now + lifetime
            # Believed: the margin before its expiry, or half its life if that is shorter:
            # never later than the expiry, so a short-lived token is never sent expired (a
            # 401 and a replay for every token, a streamed body or a socket refused outright).
            # Not believed: a JWT already past its exp by our wall clock (a skewed clock, a
            # server's bad answer), or an expiry closer than a request takes, would otherwise
            # be fetched anew for every call: one token request per API call. It is used
            # until the floor; a 401 says sooner if it is really dead. So is one whose exp
            # alone, read on our wall clock, says it lives less than twice the floor (see
            # _lifetime).
            refresh_in = lifetime - min(self._margin, lifetime / 2.0) if believed else floor
            refresh_at = now + refresh_in
        self._generation += 1
        token = Token(Secret(value), refresh_at, self._generation, expires_at)
        self._token = token
        self._early_failures = 0
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

    def _lifetime(
        self, http: ProviderHttp, value: str, expires_in: float | None, took: float
    ) -> tuple[float | None, float, bool]:
        """How long a token that just arrived lives (None: unknown), how long it is used if
        that is not believed, and whether it is. Not believed: under :data:`MIN_TOKEN_LIFE`,
        or under twice that floor by nothing but a JWT's ``exp`` read on our wall clock (no
        believable ``iat``, no ``expires_in``): a clock ahead of the issuer's by nearly a
        token's life reads each token so, and fetched it anew every second or less, with
        nothing to tell that it is the clock. ``took``: engine-clock seconds from sending its
        request to now, the longest its answer can have been on the way."""
        exp, iat = jwt_times(value)
        if exp is not None and exp >= MAX_JWT_EXP:
            self._ignore_exp(exp)
            exp = None
        if exp is None:
            return (
                expires_in,
                MIN_TOKEN_REFRESH,
                expires_in is None or expires_in >= MIN_TOKEN_LIFE,
            )
        wall = (http.wall_clock if self._wall_clock is None else self._wall_clock)()
        if not finite_number(wall):
            # A wall clock that gives no Unix seconds (a datetime, NaN): said as such, not as
            # a bug of this provider's (a TypeError from the arithmetic below).
            raise ConfigurationError(
                f"{type(self).__name__}: its wall clock returned {wall!r:.40}, not Unix "
                "seconds (pass wall_clock= a function returning time.time()'s kind of number)"
            )
        # Never more than it was issued with (the issuer made it at iat or later), if its iat
        # is believable; else nothing bounds it (see the module).
        bound = math.inf
        # A token not believed is used for MIN_TOKEN_REFRESH s, or half the life it was issued
        # with if that is shorter (never under MIN_TOKEN_LIFE: a believable iat is 2 s before
        # exp or more): a token issued for 4 s, past its exp by a clock ahead of the issuer's,
        # is fetched anew before it expires, and the next one tells the skew.
        floor = MIN_TOKEN_REFRESH
        # Whether this token's own iat tells the skew believed (then it is no evidence against).
        tells = False
        # The life the JWT was issued with (exp - iat, on the issuer's clock alone, which no
        # skew of ours misreads), if its iat is believable: no life it is read to have is longer.
        issued = math.inf
        if iat is not None and self._believable(http, exp, iat, wall):
            issued = exp - iat
            bound = wall - iat
            low = bound - took - _IAT_RESOLUTION
            self._read_skew(http, iat, low, bound)
            tells = low - CLOCK_SKEW_TOLERANCE <= self._skew <= bound + CLOCK_SKEW_TOLERANCE
            floor = min(floor, (exp - iat) / 2.0)
        lifetime = exp - wall + min(self._skew, bound)
        ours = exp - wall + min(0.0, bound)
        if lifetime < MIN_TOKEN_LIFE <= ours and not tells:
            # Dead on arrival by a skew earlier tokens told, alive by our clock, and its own
            # iat does not tell that skew: a token service hands out live tokens, so the skew
            # is wrong (a replica's clock). A clock ahead never gets here: it only lengthens a
            # life.
            self._older = None
            self._set_skew(http, 0.0, "skew dropped: a token dead by it lives by our wall clock")
            lifetime = ours
        # Whether nothing but our wall clock reads the exp: no believable iat on this token.
        alone = issued == math.inf
        if expires_in is None or expires_in < MIN_TOKEN_LIFE:
            # The exp stands alone (an expires_in under MIN_TOKEN_LIFE, 0 or absurd, is not
            # believed). Read under twice the floor on our wall clock alone, it is not believed
            # either (see the docstring): used for the floor, as one under MIN_TOKEN_LIFE is.
            return lifetime, floor, lifetime >= (2.0 * floor if alone else MIN_TOKEN_LIFE)
        # The answer's own word, read on no wall clock: a life read from exp never outlasts
        # it (our clock behind, no iat to tell: each token was sent past its expiry, a 401
        # for every one), and it stands for an exp that reads as dead (our clock ahead by
        # more than a token's life, no iat: a fetch every 5 s, each call past it waiting).
        # One under MIN_TOKEN_LIFE (0, absurd) is not believed, and the exp stands. Standing
        # alone it is still no longer than the JWT was issued for (exp - iat): an answer of
        # an hour for a token issued for 10 minutes had it sent expired for 50. Beside an
        # exp that reads longer, it cuts the life no lower than twice the floor (a token not
        # believed is used that long): an expires_in of 1 s (a broken answer's unit) beside
        # an hour's exp made a token request every half second, where 0 was not believed.
        # The other way round, an exp read shorter than twice the floor on our wall clock
        # alone cuts the life no lower than that either: our clock ahead by nearly a
        # token's life, each read as living a second or two, made a token request every
        # second beside an expires_in of an hour.
        if lifetime < MIN_TOKEN_LIFE:
            lifetime = min(expires_in, issued)
        elif alone and lifetime < 2.0 * floor:
            lifetime = max(lifetime, min(expires_in, 2.0 * floor))
        else:
            lifetime = min(lifetime, max(expires_in, 2.0 * floor))
        return lifetime, floor, True

    def _ignore_exp(self, exp: float) -> None:
        """Say, once, that a JWT's ``exp`` is beyond :data:`MAX_JWT_EXP` and ignored (its
        magnitude only, never the token)."""
        if self._exp_ignored:
            return
        self._exp_ignored = True
        _log.warning(
            "%s: ignoring a JWT exp of about 1e%d, which is no time in seconds (milliseconds?); "
            "the token is read as one without exp (the answer's expires_in, if any; else a 401 "
            "replaces it); logged once",
            self.subject,
            int(math.log10(exp)),
            extra={"subject": self.subject},
        )

    def _believable(self, http: ProviderHttp, exp: float, iat: float, wall: float) -> bool:
        """Whether a JWT's ``iat`` can tell the issuer's clock: issued 2 * MIN_TOKEN_LIFE or
        more before its ``exp``, and within MAX_CLOCK_SKEW of our wall clock (beyond, logged
        once: another epoch, a broken issuer)."""
        if exp - iat < 2.0 * MIN_TOKEN_LIFE:
            return False
        offset = wall - iat
        if abs(offset) <= MAX_CLOCK_SKEW:
            return True
        if not self._iat_ignored:
            self._iat_ignored = True
            emit_state(
                http.hooks,
                _log,
                logging.WARNING,
                StateEvent(
                    "clock_skew",
                    self.subject,
                    {
                        "skew": round(offset, 3),
                        "our_clock": "ahead" if offset > 0 else "behind",
                        "next": (
                            f"iat ignored: a skew beyond {MAX_CLOCK_SKEW:.0f} s is not believed "
                            "(logged once)"
                        ),
                    },
                ),
            )
        return False

    def _read_skew(self, http: ProviderHttp, iat: float, low: float, high: float) -> None:
        """What a JWT just fetched tells of our wall clock's skew from its issuer's.

        Made between our request and its answer, it means a skew between ``low`` (the request's
        time less iat, less iat's rounding) and ``high`` (now less iat), if it was made for this
        request; and at most ``high`` whatever it is, since no issuer dates a token in its own
        future. So a token issued later than the skew believed allows tells our clock behind
        (or less ahead), believed at once: it only shortens lives, and a token it says is dead
        on arrival drops it (see :meth:`_lifetime`). One issued longer ago than it allows may
        be a cached token, handed out as it ages, as well as a sign of our clock ahead: only a
        second, newer one meaning the same skew confirms it. Each bound taken is the lower one,
        which makes a token's life the shorter.
        """
        skew = self._skew
        if high < skew - CLOCK_SKEW_TOLERANCE:
            self._older = None
            self._set_skew(http, low)
        elif low > skew + CLOCK_SKEW_TOLERANCE:
            older = self._older
            if (
                older is not None
                and iat > older[0]
                and low <= older[2] + CLOCK_SKEW_TOLERANCE
                and older[1] <= high + CLOCK_SKEW_TOLERANCE
            ):
                self._older = None
                self._set_skew(http, max(low, older[1]))
            else:
                self._older = (iat, low, high)
        else:
            self._older = None

    def _set_skew(
        self,
        http: ProviderHttp,
        skew: float,
        next_step: str = "token lifetimes read against the issuer's clock (JWT iat)",
    ) -> None:
        """Believe ``skew`` from now on, and say so (the amount, never a token)."""
        self._skew = skew
        in_step = abs(skew) <= CLOCK_SKEW_TOLERANCE
        emit_state(
            http.hooks,
            _log,
            logging.INFO if in_step else logging.WARNING,
            StateEvent(
                "clock_skew",
                self.subject,
                {
                    "skew": round(skew, 3),
                    "our_clock": "in step" if in_step else "ahead" if skew > 0 else "behind",
                    "next": next_step,
                },
            ),
        )

    def _parse(self, resp: ProviderResponse, field: str) -> tuple[str, float | None]:
        """The token and its ``expires_in`` from an answer; :class:`UnexpectedAnswer` for one
        that is neither a refusal (a 4xx never gets here) nor a token: a 3xx, another 2xx than
        200 or 201, a body that is not the token's JSON (a proxy's HTML maintenance page), a
        token no header can carry. Its message never shows the body."""
        # The Domain API service of the token endpoint, as the subclasses keep it.
        named = getattr(self, "_service", None)
        service = named if isinstance(named, str) else None
        if resp.status not in (200, 201):
            raise UnexpectedAnswer(
                f"{self.subject}: answered {resp.status} instead of 200 (neither a refusal "
                "nor a token, but a redirect or a maintenance page?)",
                status=resp.status,
                service=service,
            )
        try:
            payload = json.loads(resp.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            payload = None
        value = payload.get(field) if isinstance(payload, dict) else None
        if not isinstance(value, str) or not value:
            raise UnexpectedAnswer(
                f"{self.subject}: the answer has no {field!r} (not the token's answer: a "
                "maintenance page?)",
                status=resp.status,
                service=service,
            )
        if not header_safe(value):
            raise UnexpectedAnswer(
                f"{self.subject}: the answer's {field!r} has characters a header cannot carry "
                "(whitespace or control characters); refused",
                status=resp.status,
                service=service,
            )
        assert isinstance(payload, dict)
        given = payload.get("expires_in")
        expires_in = answer_finite(given)
        # An expires_in of 0 or less is as absurd as one of 0.5 (under MIN_TOKEN_LIFE): not
        # believed, used for MIN_TOKEN_REFRESH s, never taken for a token without expiry;
        # -inf and a negative past float's range included.
        if expires_in is None:
            return value, 0.0 if _negative(given) else None
        return value, max(expires_in, 0.0)


def _negative(value: object) -> bool:
    """Whether a server's ``expires_in`` is a number below 0 of any size (-inf, "-1e999", an
    int past float's range): a number or a string of one, not a bool or NaN."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return False
    return isinstance(number, (int, float)) and not isinstance(number, bool) and number < 0
