"""Per-call options and state, passed from the engine to the middlewares.

aiohttp gives a middleware only the request; what the caller said about the call (its service
name, whether it is idempotent, a policy override) travels in a context variable that the
engine sets around ``session.request``. A middleware on a foreign session finds none and uses
its defaults.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, TypeVar

import aiohttp
from yarl import URL

from .._redact import is_secret_header, redact_url
from ..clock import Clock, timeout_after
from ..errors import (
    AttemptRecord,
    ConnectionFailed,
    DeadlineExceeded,
    ProviderError,
    RequestError,
)
from ..policies.classify import IDEMPOTENT_METHODS, unprocessed
from ..policies.retry import RetryPolicy

_log = logging.getLogger("le_transport.retry")
_T = TypeVar("_T")

if TYPE_CHECKING:
    from aiohttp import ClientRequest

#: Puts fresh credentials on a request before it is sent again.
Resign = Callable[["ClientRequest"], Awaitable[object]]

__all__ = [
    "AcceptingCallContext",
    "CallContext",
    "CallLedger",
    "HandledCallContext",
    "call_context",
    "close_ledger",
    "current_call",
    "drop_secret_headers",
    "is_provider_outage",
    "open_ledger",
    "provider_failed",
    "record_call",
    "rest_asked",
    "safe_cause",
    "unsent_request_error",
    "within_deadline",
]


class CallContext:
    """What one logical call is: options set by the caller, and attempts recorded as it runs.

    - ``service``, ``idempotent``, ``retry``: what the caller said about the call (None: the
      middleware's defaults).
    - ``attempts``: filled by the retry middleware, one record per attempt of the call.
    - ``started_at``: when the call's clock started: when it first waited within its deadline
      (resolving its host, getting credentials) or when the retry loop first ran, so that a
      re-run of the chain by aiohttp (redirect hops, its own stale-connection replay) is
      counted against the same call and its deadline.
    - ``active``: True while a retry loop runs this call, False once one has run (or the call
      ended before one could: the auth middleware failed to get its credentials, nothing
      sent), None before any has. A request made from inside a running loop (a middleware
      logging in without a context of its own) is another call, not a hop.
    - ``resign``: set by the auth middleware for a provider that signs each request (OAuth
      1.0): the request it signed, and how to sign it again. The retry loop calls it before
      each further attempt of that same request, so that no attempt repeats a nonce.
    - ``caller_handles_failure``: whether whoever made the call handles an outage of it itself,
      so that the call failing fails nothing yet (see :class:`HandledCallContext`). False here.
    - ``first_url``: the URL of the call's first request as the retry middleware saw it (None
      until then): the origin its redirect hops are held to. A hop to another origin (scheme,
      host or port) is sent without any secret header (:func:`drop_secret_headers`). That
      first request sent again (its :attr:`first_original`, aiohttp's ``original_url``, the
      same: an outer middleware failing over to another gateway) is no hop: where it goes
      then is the call's origin.
    """

    # A plain slotted class: one is made per call, and attrs' generated __init__ with a list
    # factory cost twice as much (benchmarks/README.md).
    # ``first_method`` is set only by the engine, for a call a recovery loop runs (never read
    # unset: see :meth:`may_resend`), so an ordinary call pays nothing for it.
    __slots__ = (
        "active",
        "attempts",
        "first_method",
        "first_original",
        "first_url",
        "idempotent",
        "resign",
        "retry",
        "service",
        "started_at",
    )
    #: The method of the call's first request, before any redirect's hop (set by the engine
    #: for a call a recovery loop runs: :class:`CallLedger`; unset on any other).
    first_method: str
    #: The ``original_url`` aiohttp built the call's first request for (before an outer
    #: middleware's rewrite of its ``url``): set with :attr:`first_url`, unset before. A
    #: redirect hop is built for its ``Location``; that request sent again keeps this one.
    first_original: URL

    #: A class attribute, not a slot: an ordinary call neither sets nor stores it, and only the
    #: retry loop's give-up path reads it.
    caller_handles_failure: ClassVar[bool] = False
    #: The 4xx statuses the caller takes as answers (see :class:`AcceptingCallContext`); none
    #: here, as a class attribute: only a call that gives some stores them, and only a failed
    #: answer's path reads them.
    accept: frozenset[int] = frozenset()

    def __init__(
        self,
        service: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        attempts: list[AttemptRecord] | None = None,
        started_at: float | None = None,
        active: bool | None = None,
    ) -> None:
        self.service = service
        self.idempotent = idempotent
        self.retry = retry
        self.attempts: list[AttemptRecord] = [] if attempts is None else attempts
        self.started_at = started_at
        self.active = active
        self.resign: tuple[ClientRequest, Resign] | None = None
        self.first_url: URL | None = None

    def may_resend(self) -> bool:
        """Whether the whole call may be sent again, by what the engine saw of it (asked by the
        recovery loop, after the callable that made the call failed). Yes when it is
        idempotent: the caller's word (``idempotent``), else by its first request's method
        (:attr:`first_method`: a POST answered 303 goes on as a GET, and is still a POST).
        Yes too when nothing of it can have been acted on: no attempt of any hop is in
        flight, and every one recorded never left or was refused unprocessed
        (:func:`~le_transport.policies.classify.unprocessed`: a connect failure, a refused
        certificate, a 401, a 429). No otherwise: a POST answered (a 303, a 5xx, a 201),
        reset, timed out, or still on the wire."""
        idempotent = self.idempotent
        if idempotent is None:
            idempotent = getattr(self, "first_method", None) in IDEMPOTENT_METHODS
        if idempotent:
            return True
        # A call gathered with the one that failed may still be in its retry loop.
        return self.active is not True and all(unprocessed(a.outcome) for a in self.attempts)

    def __repr__(self) -> str:
        return (
            f"CallContext(service={self.service!r}, idempotent={self.idempotent!r}, "
            f"attempts={len(self.attempts)}, started_at={self.started_at!r}, "
            f"active={self.active!r})"
        )


def _origin(url: URL) -> tuple[str, str, int | None]:
    """``url``'s origin as the wire names it: yarl's ``raw_host`` (lower case, an IDN name in
    its xn-- form, an IPv6 literal compressed) without a trailing dot, which names the same
    host (as the auth middleware's ``same_host`` and a socket's upgrade guard compare it),
    and the port, written or the scheme's default."""
    return url.scheme, (url.raw_host or "").rstrip(".").lower(), url.port


def drop_secret_headers(ctx: CallContext, request: ClientRequest) -> None:
    """Take every secret header off ``request``, a redirect hop of the call ``ctx``, if it goes
    to another origin (scheme, host or effective port) than the call's first request
    (:attr:`CallContext.first_url`; a trailing dot or another case names the same host),
    whoever put the header there: the caller's ``headers`` (``X-Api-Key``, ``X-Auth-Token``,
    any name :func:`~le_transport._redact.is_secret_header` calls a credential's), an outer
    middleware. aiohttp takes off only ``Authorization``,
    ``Cookie`` and ``Proxy-Authorization`` on such a hop, and the auth middleware puts no
    credentials on it. A hop on the call's own origin keeps them all, and a hop back to it
    gets them again, the auth middleware's credentials too; but not a caller's own
    ``Authorization``, ``Cookie`` or ``Proxy-Authorization``, which aiohttp drops for the rest
    of the call at the first change of origin. Logged as a WARNING naming the
    headers, never their values. The retry middleware calls it for a redirect hop only: the
    call's first request sent again by an outer middleware (a failover to another gateway)
    is not one."""
    first = ctx.first_url
    url = request.url
    if first is None or _origin(url) == _origin(first):
        return
    headers = request.headers
    dropped = sorted({name for name in headers if is_secret_header(name)}, key=str.lower)
    if not dropped:
        return
    for name in dropped:
        headers.popall(name, None)
    _log.warning(
        "%s: redirected to another origin than the call's (%s): not sending its %s header%s",
        redact_url(url),
        str(first.origin()),  # an IPv6 host bracketed; no userinfo
        ", ".join(dropped),
        "" if len(dropped) == 1 else "s",
        extra={"service": ctx.service, "dropped": dropped},
    )


class HandledCallContext(CallContext):
    """A call whose maker handles an outage of it itself, and says how: ``fallback``, a few
    words ("the last good map is served"), true whatever the call's outcome; or a callable
    asked for them when the call gives up, which returns None when by then the maker has
    nothing to fall back on (a Domain API refresh that gave up with its map past
    ``max_stale``): the give-up is then reported as any call's, as it is when the callable
    raises or answers anything but a str or None (a WARNING names its failure's type).

    When such a call gives up on an outage (a 5xx, a transport failure, a spent schedule, an
    open breaker), the retry loop logs it as a WARNING, not an ERROR, ending with
    ``handled: <fallback>`` (still with everything it logs for any call), and its
    :class:`~le_transport.events.GiveUpEvent` has ``handled_by_caller``: alerting built on the
    hooks can tell it from a failure a caller met. A refusal (a 4xx) or a closing engine is
    never taken as handled: it is reported as for any call.

    A token fetched before the current token expires is one: when that single attempt fails,
    the provider keeps the token that still works (``refresh_failed``), or fetches on the whole
    schedule if it expired meanwhile. A Domain API refresh with a map cached is another: the
    last good map is served.
    """

    __slots__ = ("fallback",)

    caller_handles_failure: ClassVar[bool] = True

    def __init__(
        self,
        service: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        *,
        fallback: str | Callable[[], str | None],
    ) -> None:
        super().__init__(service, idempotent, retry)
        self.fallback = fallback

    def handled(self) -> str | None:
        """The words of :attr:`fallback` as they stand now (a callable asked), or None if the
        maker no longer handles the outage. A callable that raises, or answers anything but a
        str or None, handles nothing: it is asked while the call gives up, and its failure
        must not replace the call's own error (logged by its type alone, never its text)."""
        fallback = self.fallback
        if not callable(fallback):
            return fallback
        try:
            words: object = fallback()
        except Exception as exc:
            _log.warning(
                "the fallback of a call to %r failed when asked (%s); its give-up is reported "
                "as not handled",
                self.service,
                type(exc).__name__,
            )
            return None
        if words is None or isinstance(words, str):
            return words
        if asyncio.iscoroutine(words):
            # An async callable's coroutine, never awaited: closed, not left to warn.
            words.close()
        _log.warning(
            "the fallback of a call to %r answered a %s, not a str or None; its give-up is "
            "reported as not handled",
            self.service,
            type(words).__name__,
        )
        return None


class AcceptingCallContext(CallContext):
    """A call whose caller takes some 4xx answers as answers, not failures (``accept``: a 404
    for "no such user"): the retry loop returns such an answer at once, as it returns a
    success, with no error, no retry and no give-up line."""

    __slots__ = ("accept",)

    def __init__(
        self,
        service: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        *,
        accept: frozenset[int],
    ) -> None:
        super().__init__(service, idempotent, retry)
        self.accept = accept


#: How many of the latest errors out of its recorded calls a :class:`CallLedger` keeps.
VOUCHED = 32

_CURRENT: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "le_transport_call", default=None
)


class CallLedger:
    """What a recovery loop needs to know of the calls its callable made, to tell whether
    running the callable again may send twice a request the server may have acted on.

    Kept in a context variable (:data:`_CALL_LEDGER`), so that a task the callable starts its
    calls in (``asyncio.gather``, ``asyncio.TaskGroup``: a copy of the context) records into
    the run's own ledger. The engine records a call when it starts (:meth:`record`) and tells
    the ledger when it ends (:meth:`finish`): :meth:`~le_transport.Engine.request`, and the
    retry middleware for a request made on a session of the stack without an engine call
    around it (``engine.session.post``). Memory stays bounded however many calls a
    long-lived callable makes:

    - ``recorded``: how many calls were recorded (an idempotent one is only counted);
    - ``calls``: the non-idempotent calls started and not finished yet;
    - ``unsafe``: sticky, set when a non-idempotent call finished and may have been acted on
      (it was answered, or one of its attempts is not :func:`unprocessed`, or no retry
      schedule judged it);
    - ``vouched``: the last :data:`VOUCHED` errors that came out of recorded calls (the loop
      repeats a ``RETRYABLE_IF_IDEMPOTENT`` failure only if it came out of a call it saw).

    A ledger opened inside another's run (a ``recover=True`` call inside ``recovery.run``)
    records each call into every open ledger up the chain at once, and finishes it in each:
    the outer loop knows of a call of the inner one while it is still in flight. Closed once
    its run is over: a task the callable left running records nothing more into it."""

    __slots__ = ("calls", "open", "outer", "recorded", "unsafe", "vouched")

    def __init__(self, outer: CallLedger | None = None) -> None:
        self.open = True
        self.outer = outer
        self.recorded = 0
        self.calls: set[CallContext] = set()
        self.unsafe = False
        self.vouched: collections.deque[BaseException] = collections.deque(maxlen=VOUCHED)

    def record(self, ctx: CallContext, method: str) -> None:
        """Note a call starting with ``method`` (the call's, before any redirect hop), in this
        ledger and every open one it was opened inside."""
        ctx.first_method = method
        idempotent = ctx.idempotent
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        ledger: CallLedger | None = self
        while ledger is not None:
            if ledger.open:
                ledger.recorded += 1
                if not idempotent:
                    ledger.calls.add(ctx)
            ledger = ledger.outer

    def finish(
        self, ctx: CallContext, exc: BaseException | None = None, *, unjudged: bool = False
    ) -> None:
        """Note that a recorded call ended: answered (``exc`` None) or raising ``exc``.
        ``unjudged``: a request of it was made that no retry schedule judged (a caller's
        session without the retry middleware), so it may have been acted on, unseen.
        Idempotent; never raises."""
        processed = (
            unjudged
            or (exc is None and not ctx.attempts)
            or not all(unprocessed(a.outcome) for a in ctx.attempts)
        )
        ledger: CallLedger | None = self
        while ledger is not None:
            if ledger.open:
                if ctx in ledger.calls:
                    ledger.calls.discard(ctx)
                    if processed:
                        ledger.unsafe = True
                if isinstance(exc, Exception):
                    ledger.vouched.append(exc)
            ledger = ledger.outer

    def vouches(self, exc: BaseException) -> bool:
        """Whether ``exc`` came out of a call this ledger recorded (among the last
        :data:`VOUCHED`)."""
        return any(seen is exc for seen in self.vouched)

    def may_resend(self) -> bool:
        """Whether running the callable again sends nothing twice that may have been acted on,
        as far as the recorded calls tell: none that is not idempotent is unfinished, and none
        that finished may have been acted on."""
        return not self.unsafe and not self.calls

    def close(self) -> None:
        """No more calls noted; what it holds is dropped (an outer ledger recorded the same
        calls itself)."""
        self.open = False
        self.calls.clear()
        self.vouched.clear()


#: While a recovery loop runs its callable: the run's :class:`CallLedger`, which the engine
#: adds each call it starts to (one read of this variable per call: nothing else outside a
#: recovery loop).
_CALL_LEDGER: contextvars.ContextVar[CallLedger | None] = contextvars.ContextVar(
    "le_transport_call_ledger", default=None
)


def record_call(ctx: CallContext, method: str) -> None:
    """Note ``ctx``, a call the engine starts with ``method``, for the recovery loop running it
    (if one does: :class:`CallLedger`). :meth:`~le_transport.Engine.request` does the same
    inline."""
    ledger = _CALL_LEDGER.get()
    if ledger is not None:
        ledger.record(ctx, method)


def open_ledger() -> tuple[CallLedger, contextvars.Token[CallLedger | None]]:
    """For a recovery loop about to run its callable: a fresh ledger, current until
    :func:`close_ledger`, and the token to end it with."""
    ledger = CallLedger(_CALL_LEDGER.get())
    return ledger, _CALL_LEDGER.set(ledger)


def close_ledger(ledger: CallLedger, token: contextvars.Token[CallLedger | None]) -> None:
    """End a ledger :func:`open_ledger` began (after the run's failure was judged)."""
    ledger.close()
    _CALL_LEDGER.reset(token)


def current_call() -> CallContext | None:
    """The context of the call in progress, if an engine started one."""
    return _CURRENT.get()


class call_context:
    """Make ``ctx`` the current call for the duration of the block."""

    # A class rather than @contextlib.contextmanager: the generator machinery cost every
    # engine call about a microsecond and a half (benchmarks/README.md).
    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> CallContext:
        self._token = _CURRENT.set(self._ctx)
        return self._ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _CURRENT.reset(self._token)


def unsent_request_error(
    exc: BaseException, ctx: CallContext, method: str, url: URL
) -> RequestError:
    """The typed error for an aiohttp or OS failure of a call's ``session.request``, logged.

    For failures the retry middleware did not turn into typed errors itself: raised before the
    chain ran, after it (aiohttp follows redirects outside the chain), or while reading a body
    it did not buffer. The URL is redacted; the attempts are those recorded so far. Chain it
    to :func:`safe_cause` of ``exc``, never to ``exc`` itself.
    """
    name = type(exc).__name__
    if isinstance(exc, aiohttp.TooManyRedirects):
        detail = (
            f"gave up following redirects after {len(exc.history)} hops "
            "(aiohttp's max_redirects); the service redirects in a loop"
        )
    elif isinstance(exc, aiohttp.RedirectClientError):
        detail = "a redirect pointed to a URL that cannot be followed (not http(s), or malformed)"
    elif (hop := _redirect_status(exc, ctx)) is not None:
        # aiohttp keeps the body for a 307/308 (and a 301/302 of a method but POST): one
        # that was a stream, already sent, cannot go with it (the retry loop's body_spent).
        detail = (
            f"the request was sent, and answered {hop}; its body was a stream, already sent, "
            f"which cannot follow the {hop} redirect (pass bytes, or allow_redirects=False to "
            f"get the {hop} answer itself)"
        )
    else:
        detail = "the request could not be made"
    err = RequestError(
        f"{name}: {detail}",
        service=ctx.service,
        method=method,
        url=redact_url(url),
        attempts=ctx.attempts,
    )
    _log.warning(
        "%s",
        err,
        extra={"service": ctx.service, "method": method, "error": name},
    )
    return err


#: Redirects after which aiohttp sends the same body again.
_BODY_REDIRECTS = frozenset({301, 302, 307, 308})


def _redirect_status(exc: BaseException, ctx: CallContext) -> int | None:
    """The status of the redirect that a streamed body, already sent, could not follow, if
    that is what ``exc`` says: aiohttp's ClientPayloadError right after an attempt the loop
    recorded as answered with such a redirect (the hop it would have followed)."""
    if not isinstance(exc, aiohttp.ClientPayloadError) or not ctx.attempts:
        return None
    status = ctx.attempts[-1].outcome.status
    return status if status in _BODY_REDIRECTS else None


def safe_cause(exc: BaseException) -> BaseException | None:
    """``exc`` when it may be chained to a typed error; None when its text shows a URL.

    aiohttp's response and URL errors (a redirect loop, a malformed URL) print the request's
    whole URL, query credentials included; connection and OS errors name only host and port.
    Raise the typed error outside the ``except`` clause so that ``exc`` is not its context
    either.
    """
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.InvalidURL):
        return None
    return exc


#: Where a provider's failure is logged, by its role.
_PROVIDER_LOGGERS = {
    "auth": logging.getLogger("le_transport.auth"),
    "domain": logging.getLogger("le_transport.domains"),
}


#: OSError numbers that say the network, not the program, failed.
_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ENETRESET}
)


def rest_asked(error: BaseException, ceiling: float) -> float:
    """The longest rest the answers to a failed call asked for (``Retry-After``, cut to
    ``ceiling``), in seconds; 0 if none did, or ``error`` is no :class:`RequestError` (which
    carries the call's attempts). What a caller that tries the call again later on a schedule
    of its own (a keepalive, a token fetched early) waits at least: its own schedule came back
    sooner than the service asked."""
    if not isinstance(error, RequestError):
        return 0.0
    longest = 0.0
    for record in error.attempts:
        asked = record.outcome.retry_after
        if asked is not None and min(asked, ceiling) > longest:
            longest = min(asked, ceiling)
    return longest


def is_provider_outage(exc: BaseException) -> bool:
    """Whether a provider's own exception is a failure of the network it calls (its own HTTP
    call to a login service, a vault, a service registry), not a bug in it.

    Yes: a refused, reset or broken connection (:class:`ConnectionError`), a timeout
    (``TimeoutError``, which ``asyncio.TimeoutError`` is), a name that did not resolve
    (``socket.gaierror``), an aiohttp connection or payload error, and an aiohttp
    ``ClientResponseError`` for a 5xx, 408 or 429 (its service is down or busy). No: any other
    ``ClientResponseError`` (its service refused what it asked, which waiting cannot change),
    a certificate that does not verify (a wrong CA is configuration, however it is reached;
    any other TLS failure, a handshake cut short, is an outage like a reset), aiohttp's
    ``InvalidURL``, every other :class:`OSError` (a token file that is missing or
    unreadable: ``FileNotFoundError``, ``PermissionError``) and every other exception.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status in (408, 429)
    if isinstance(
        exc,
        aiohttp.InvalidURL | aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError,
    ):
        return False
    if isinstance(exc, ssl.SSLError):
        return True  # a handshake cut short, plain HTTP on 443 mid-deploy: passing
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True  # "Network is unreachable" and its kin are plain OSErrors
    return isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | socket.gaierror
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError,
    )


def provider_failed(
    role: str,
    provider: object,
    operation: str,
    exc: BaseException,
    *,
    service: str | None = None,
) -> ProviderError | ConnectionFailed:
    """The typed error for ``exc``, raised by ``provider`` (an auth or domain provider, by
    ``role``) when asked ``operation``, and not a :class:`~le_transport.errors.TransportError`.

    - A failure of the provider's own network call (:func:`is_provider_outage`: a vault or a
      login service it calls cannot be reached) is an outage, not a bug: a
      :class:`~le_transport.errors.ConnectionFailed` (``never_sent``: the call itself went
      nowhere), recovered like any connection failure (``recover=True``, a socket's
      reconnect), logged as a WARNING.
    - Anything else is a bug in the provider, neither the caller's arguments nor an outage: a
      :class:`~le_transport.errors.ProviderError`, logged as an ERROR.

    Either names the provider, the operation and the exception's type, never its text (it may
    hold a credential). Raise it ``from safe_cause(exc)``: the provider's exception, with its
    traceback, is its cause, unless its text shows a URL.
    """
    name = type(provider).__name__
    kind = type(exc).__name__
    logger = _PROVIDER_LOGGERS.get(role, _log)
    if is_provider_outage(exc):
        status = exc.status if isinstance(exc, aiohttp.ClientResponseError) else None
        what = f"answered {status}" if status is not None else f"failed with {kind}"
        outage = ConnectionFailed(
            f"the {role} provider {name} could not reach the service it calls: its "
            f"{operation}() {what}; nothing was sent. An outage, not a bug: a socket "
            "reconnects, a call with recover=True waits it out",
            never_sent=True,
            service=service,
        )
        logger.warning("%s", outage, extra={"service": service, "error": kind, "provider": name})
        return outage
    err = ProviderError(
        f"the {role} provider {name} failed in {operation}() with {kind}, which is not a "
        "TransportError: most likely a bug in the provider; nothing was sent (its exception, "
        "with its traceback, is this error's __cause__)",
        provider=name,
        role=role,
        operation=operation,
        error_type=kind,
        service=service,
    )
    logger.error("%s", err, extra={"service": service, "error": kind, "provider": name})
    return err


async def within_deadline(
    clock: Clock,
    ctx: CallContext | None,
    step: Awaitable[_T],
    doing: str,
    *,
    method: str | None = None,
    url: URL | None = None,
) -> _T:
    """Await ``step`` (resolving a host, getting credentials) within the call's deadline.

    Those steps run before the retry loop, which enforces the deadline on attempts and pauses:
    without this a call with ``deadline=2`` waited out a Login Service's whole 5/10/15 s
    schedule. The call's clock starts here if it has not started yet, so the loop counts the
    time spent. A step shared by several calls (a single-flight login) keeps running for the
    others: only this call stops waiting. :class:`DeadlineExceeded` (logged) when the
    deadline passes; ``step`` as it is when the call has no deadline.
    """
    policy = ctx.retry if ctx is not None else None
    deadline = policy.deadline if policy is not None else None
    if ctx is None or deadline is None:
        return await step
    now = clock.now()
    if ctx.started_at is None:
        ctx.started_at = now
    started = ctx.started_at
    timeout = timeout_after(clock, max(0.0, deadline - (now - started)))
    try:
        async with timeout:
            return await step
    except TimeoutError:
        if not timeout.expired:
            raise
    err = DeadlineExceeded(
        f"the call's {deadline:g} s deadline passed while {doing}",
        elapsed=clock.now() - started,
        service=ctx.service,
        method=method,
        url=None if url is None else redact_url(url),
        attempts=ctx.attempts,
    )
    _log.warning("%s", err, extra={"service": ctx.service, "method": method})
    raise err
