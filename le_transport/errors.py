"""The one exception hierarchy of le_transport.

Every error the library raises on purpose is a :class:`TransportError`. Each class says what
happened and what the caller can do about it, and carries the facts (status, service, method,
attempts, elapsed time) as attributes. No message or attribute ever holds a secret: URLs are
redacted before they are stored, and response bodies are cut to a short, scrubbed excerpt.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .policies.classify import Outcome

__all__ = [
    "AttemptRecord",
    "AttemptTimeout",
    "AuthenticationError",
    "BlockedError",
    "BodyTooLarge",
    "CircuitOpen",
    "ClientStatusError",
    "ConfigurationError",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DomainResolutionError",
    "EngineClosed",
    "HTTPStatusError",
    "HostConfigurationError",
    "HostileHostError",
    "InterimStatusError",
    "InvalidMessage",
    "InvalidRequest",
    "InvalidRetryAfter",
    "InvalidSocketTransition",
    "KeepaliveClosed",
    "LoginRejected",
    "ProviderError",
    "RecoveryFailed",
    "Repeat",
    "RequestBodyError",
    "RequestError",
    "ResponseDecodeError",
    "RetriesExhausted",
    "RetryBudgetExhausted",
    "ServerStatusError",
    "SocketAuthFailed",
    "SocketClosed",
    "SocketDeadlock",
    "SocketError",
    "SocketQueueFull",
    "SocketRejected",
    "SocketRequestError",
    "SocketRequestTimeout",
    "StateDataError",
    "StateStoreError",
    "TransportError",
    "UnexpectedAnswer",
    "UnknownServiceError",
    "UnsignableBody",
    "WrongEventLoop",
]


def _rebuilt(cls: type[TransportError], args: tuple[object, ...]) -> TransportError:
    """An error of ``cls`` made again from a copy or a pickle, without its ``__init__`` (whose
    keyword-only facts are in the state that is restored after)."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class TransportError(Exception):
    """Root of every error le_transport raises on purpose.

    Catch this to handle any failure of the transport; catch a subclass to react to one cause.
    Every one can be copied and pickled with its attributes (an error raised in a worker
    process reaches its parent typed), but for one that holds credentials (a socket's
    ``DialFailed``): a :class:`~le_transport.Secret` refuses to be pickled.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Most subclasses take keyword-only facts (status=, elapsed=, last=) that are not in
        # ``args``: Exception's own reduce calls ``cls(*args)``, which fails when the copy or
        # the unpickling is made (in a process pool, in the parent: a broken pool).
        return (_rebuilt, (type(self), self.args), self.__dict__)


class ConfigurationError(TransportError, ValueError):
    """A policy, provider or engine was built with an invalid value.

    Raised once, at construction, naming the field and the value. Fix the configuration.
    """


# --------------------------------------------------------------------------------------------
# HTTP requests
# --------------------------------------------------------------------------------------------


class AttemptRecord(NamedTuple):
    """What one attempt of a call ended with, and the pause taken after it (if any).

    A value: frozen, and two records of the same attempt, outcome, pause and start compare
    and hash equal (an error's ``attempts`` can be compared with, or looked up by, another's
    records; a copy or an unpickled error's records equal the original's).

    A named tuple (fields by name, or unpacked as ``attempt, outcome, pause, started_at``):
    every attempt of every call makes one, and a tuple is made in a third of the time a
    frozen attrs class takes (the retry loop's hot path)."""

    attempt: int
    outcome: Outcome
    pause: float | None
    started_at: float


class Repeat(enum.Enum):
    """Whether a request that failed may be sent again, judged by the failure alone: the one
    verdict every :class:`RequestError` carries (:attr:`RequestError.repeat`), decided once,
    where it is known. The request schedule sets it when it raises a failure as final (by its
    ``Classifier`` and the request's idempotency); the engine, for a failed answer met past
    the schedule (a caller's session, an outer middleware); what no schedule judged keeps
    ``RETRYABLE`` (a provider's own network call down, a socket's dial).

    The recovery loop (``recover=True``) reads it together with whether the *call* may be sent
    again (:meth:`~le_transport.middleware.context.CallContext.may_resend`); see
    :func:`~le_transport.recovery.repeat_of`, which extends it to the other errors."""

    #: Transient, and sending this request again is safe: what the schedule would have
    #: retried, or what no schedule judged.
    RETRYABLE = "retryable"
    #: Transient, but the request is not idempotent and the server may have acted on it (a
    #: POST's 5xx, reset or timeout): sent again only as part of a call that may be
    #: (:meth:`~le_transport.middleware.context.CallContext.may_resend`).
    RETRYABLE_IF_IDEMPOTENT = "retryable_if_idempotent"
    #: No repeat can help: a 4xx, a status the ``Classifier`` makes final (a 501), a refused
    #: TLS certificate.
    FINAL = "final"


class _RequestContext(TypedDict, total=False):
    """The keyword arguments every :class:`RequestError` takes: where the failed call went.

    Subclasses take these as ``**context`` and add only their own field, so the four stay
    spelled (and defaulted) once, in :class:`RequestError`.
    """

    service: str | None
    method: str | None
    url: str | None
    attempts: Sequence[AttemptRecord]


class RequestError(TransportError):
    """A request to a LiveEngage service failed.

    Attributes: ``service`` (the service name, or the host for foreign sessions), ``method``,
    ``url`` (redacted: no query secrets, no credentials in the path), ``attempts`` (one
    :class:`AttemptRecord` per attempt made, in order), and ``repeat``, the verdict the
    recovery loop (``recover=True``, :func:`~le_transport.recovery.repeat_of`) reads:

    - ``repeat``: a :class:`Repeat`. ``RETRYABLE`` unless a schedule or the engine judged the
      failure: ``FINAL`` for what no repeat can help (a 4xx, a status the ``Classifier``
      makes final, a refused TLS certificate), ``RETRYABLE_IF_IDEMPOTENT`` for a failure the
      schedule would have retried but for the request not being idempotent (a 5xx, a reset
      or a timeout on a POST: the server may have processed it). The engine judges a failed
      answer that came from outside the retry middleware (a caller's session, an outer
      middleware) alike, by the call's ``Classifier`` and idempotency. An error raised by the
      schedule's retries running out is a :class:`RetriesExhausted`, and stays ``RETRYABLE``.
    - ``decided``, ``repeat_unsafe``: compatibility flags, each read back as set, in any
      order, with their meaning before ``repeat``: the recovery loop repeated a failure iff
      it was not ``decided``, and ``repeat_unsafe`` said only, of a decided one, that only
      the request not being idempotent stopped it. ``repeat`` is made of them
      (``RETRYABLE`` unless ``decided``, then ``RETRYABLE_IF_IDEMPOTENT`` if
      ``repeat_unsafe``, else ``FINAL``), and setting ``repeat`` sets both. New code reads
      and sets ``repeat``.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        method: str | None = None,
        url: str | None = None,
        attempts: Sequence[AttemptRecord] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.method = method
        self.url = url
        self.attempts: tuple[AttemptRecord, ...] = tuple(attempts)
        # What ``repeat`` is made of: the two compatibility flags, each set on its own.
        self._decided = False
        self._repeat_unsafe = False

    @property
    def repeat(self) -> Repeat:
        """See :class:`Repeat`: ``RETRYABLE`` unless ``decided``; then
        ``RETRYABLE_IF_IDEMPOTENT`` if ``repeat_unsafe``, else ``FINAL``."""
        if not self._decided:
            return Repeat.RETRYABLE
        return Repeat.RETRYABLE_IF_IDEMPOTENT if self._repeat_unsafe else Repeat.FINAL

    @repeat.setter
    def repeat(self, value: Repeat) -> None:
        self._decided = value is not Repeat.RETRYABLE
        self._repeat_unsafe = value is Repeat.RETRYABLE_IF_IDEMPOTENT

    @property
    def decided(self) -> bool:
        """Compatibility alias: whether a schedule or the engine judged the failure (so
        ``repeat`` is not ``RETRYABLE``)."""
        return self._decided

    @decided.setter
    def decided(self, value: bool) -> None:
        self._decided = bool(value)

    @property
    def repeat_unsafe(self) -> bool:
        """Compatibility alias: whether the failure was judged only for the request not being
        idempotent (``repeat`` is ``RETRYABLE_IF_IDEMPOTENT`` once ``decided``)."""
        return self._repeat_unsafe

    @repeat_unsafe.setter
    def repeat_unsafe(self, value: bool) -> None:
        self._repeat_unsafe = bool(value)

    def __str__(self) -> str:
        where = " ".join(p for p in (self.method, self.url) if p)
        return f"{self.message} [{where}]" if where else self.message


class InvalidRequest(RequestError, ValueError):
    """The call itself is malformed (a path that is not a path, a bad method, a header or a
    body that cannot be sent). Fix the call: it was not sent, and retrying cannot help."""


class HTTPStatusError(RequestError):
    """The service answered with a status that is not a success.

    ``status`` is the HTTP status; ``body_excerpt`` the first few hundred characters of the
    body, scrubbed of anything that looks like a credential.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body_excerpt: str = "",
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.status = status
        self.body_excerpt = body_excerpt


class ClientStatusError(HTTPStatusError):
    """A 4xx answer: the request itself is wrong, so it was not retried.

    Fix the request (path, body, credentials, permissions); retrying it unchanged cannot help.
    """


class BlockedError(ClientStatusError):
    """451: LiveEngage has blacklisted the account or user. Never retried; contact LivePerson."""


class ServerStatusError(HTTPStatusError):
    """A 5xx (or 429) answer that was final: not retryable for this request, or retries ran out.

    Usually wrapped in :class:`RetriesExhausted`; raised bare when the request was not safe to
    retry (a non-idempotent POST). Mark the request ``idempotent=True`` if repeating it is safe.
    """


class InterimStatusError(ServerStatusError):
    """A final 1xx answer: the server gave an interim status (RFC 9110 15.2), a 101 Switching
    Protocols to a request that asked no upgrade, say, as the answer. A protocol error of the
    server's, not a success: retried as a 5xx is (only an idempotent request), and raised, as
    a :class:`ServerStatusError`, once final (usually wrapped in :class:`RetriesExhausted`).
    """


def status_error(
    status: int,
    reason: str,
    excerpt: str,
    *,
    tries: int,
    note: str = "",
    **context: Unpack[_RequestContext],
) -> HTTPStatusError:
    """The error a final answer of ``status`` (400 or more, or a 1xx) raises:
    :class:`BlockedError` for a 451, :class:`ClientStatusError` for another 4xx but 429,
    :class:`InterimStatusError` for a 1xx, else :class:`ServerStatusError`.
    ``tries`` is how many attempts the call made (a 4xx sent more than once was retried by
    the caller's own classifier); ``excerpt`` is already scrubbed; ``note``, if given, ends
    the message (said of a 4xx instead of whether it was retried)."""
    if status == 451:
        return BlockedError(
            "451: LiveEngage has blacklisted this account or user; not retried",
            status=status,
            body_excerpt=excerpt,
            **context,
        )
    head = f"{status} {reason}".strip()
    if 400 <= status < 500 and status != 429:
        return ClientStatusError(
            f"{head}: the request was refused as invalid; "
            + (
                note
                if note
                else "not retried (a 4xx is the caller's to fix)"
                if tries <= 1
                # A 4xx the caller's classifier retries (a 409, say): it was.
                else f"still refused after {tries} attempts"
            ),
            status=status,
            body_excerpt=excerpt,
            **context,
        )
    if 100 <= status < 200:
        head = f"{head}: an interim status given as the final answer (the server's protocol error)"
        return InterimStatusError(
            f"{head}; {note}" if note else head, status=status, body_excerpt=excerpt, **context
        )
    return ServerStatusError(
        f"{head}; {note}" if note else head, status=status, body_excerpt=excerpt, **context
    )


class ConnectionFailed(RequestError):
    """The connection failed: refused, reset, closed mid-body, or DNS/TLS failure.

    ``never_sent`` is true when the failure proves the request never reached the server (a
    connect failure), which is what makes retrying a POST safe.
    """

    def __init__(
        self,
        message: str,
        *,
        never_sent: bool = False,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.never_sent = never_sent


class AttemptTimeout(RequestError):
    """One attempt took longer than the per-attempt timeout and was cancelled; or, a fleet's
    half-open circuit breaker probe, longer than its probe lock's lease allows (its message
    says so: see :class:`~le_transport.middleware.overload.OverloadGuard`)."""


class DeadlineExceeded(RequestError):
    """The call's overall deadline passed; the attempt in flight was cancelled.

    ``elapsed`` is the time spent, by the engine's clock. Retry later or raise the deadline.
    """

    def __init__(
        self,
        message: str,
        *,
        elapsed: float,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.elapsed = elapsed


class EngineClosed(RequestError):
    """The engine was closed: a call made after it, or one in progress when it happened (that
    call stops before its next attempt or during its pause, instead of retrying against a
    session that is gone). ``attempts`` has the attempts it made; ``__cause__`` the last
    attempt's error, if there was one.

    Every entry point of a closed engine raises it: :meth:`~le_transport.Engine.request`,
    ``request_json``, ``websocket``, ``keepalive``, ``login``, ``url_for`` and ``start``; so
    does an auth provider the engine closed, asked for credentials afterwards. Make a new
    engine: a closed one does not start again."""


class KeepaliveClosed(TransportError, RuntimeError):
    """:meth:`~le_transport.sockets.KeepaliveTask.start` on a keepalive that was closed (by
    its own ``close()``, or by its engine's). A closed keepalive does not start again: it
    would run untracked, never stopped by its engine's close. Ask the engine for a new one
    (:meth:`~le_transport.Engine.keepalive`)."""


class WrongEventLoop(TransportError, RuntimeError):
    """The engine was used from another event loop than the one it started on.

    An engine belongs to the loop it started on: its aiohttp session, connections, tasks and
    timers live there, and a second ``asyncio.run`` (a new loop each time) cannot use them.
    Make one engine per loop (``async with Engine(...)`` inside the coroutine that
    ``asyncio.run`` runs), or run every call on the loop that started it. Also a
    :class:`RuntimeError`, which is what such a use raised before."""


class RetriesExhausted(RequestError):
    """Every retry of the request schedule failed.

    ``last`` is the error of the final attempt (also the ``__cause__``); ``attempts`` has every
    attempt's outcome and pause. The outer recovery loop (re-login, reconnect) may take over.
    """

    def __init__(
        self,
        message: str,
        *,
        last: RequestError,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.last = last

    @property
    def status(self) -> int | None:
        """The status of the last attempt, if it got an answer."""
        return self.last.status if isinstance(self.last, HTTPStatusError) else None


class ResponseDecodeError(RequestError):
    """The body was not what was expected: malformed JSON, wrong type, or wrong encoding."""


class BodyTooLarge(RequestError):
    """The response body passed the configured size limit and was not read further."""

    def __init__(
        self,
        message: str,
        *,
        limit: int,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.limit = limit


class RequestBodyError(RequestError):
    """The request's own body failed while it was being sent: a file that could not be read
    (an ``OSError`` such as EIO, or ETIMEDOUT on a soft mount), an async iterable of the
    caller's that raised (anything, its upstream's reset or its own timeout included: told by
    where it was raised, not by its class) or yielded a chunk that is not bytes (a str, an int:
    aiohttp's writer raises a ``TypeError`` for it). Neither the connection's failure nor the
    service's: the call is not retried, and the overload guard (the circuit breaker, the retry
    budget) does not count it against the service. The message names the exception's type
    only (its text may be the caller's data); the exception itself is the ``__cause__``.
    ``repeat`` is ``FINAL``: the same body would fail again."""


class UnsignableBody(RequestError, ValueError):
    """A form-encoded body that the auth provider must sign (OAuth 1.0) could not be read as a
    form: a stream, which reading would consume, or bytes that do not decode in the charset
    they declare. Nothing was sent. Pass the form as a dict, ``str`` or ``bytes`` in its
    charset. The message never shows the body.
    """


class InvalidRetryAfter(TransportError, ValueError):
    """A ``Retry-After`` header that is neither delta-seconds nor an HTTP-date.

    The retry middleware ignores such a header (and logs it), falling back to its schedule.
    """


class RetryBudgetExhausted(RequestError):
    """The service's retry budget is spent: the call failed at once instead of retrying.

    ``last`` is the :class:`RequestError` of the attempt that would have been retried (an
    :class:`HTTPStatusError` for a status, a :class:`ConnectionFailed` or an
    :class:`AttemptTimeout` for no answer); it is also the ``__cause__``. ``attempts`` has
    every attempt's outcome.
    """

    def __init__(
        self,
        message: str,
        *,
        last: RequestError,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.last = last


class CircuitOpen(RequestError):
    """The circuit breaker for this service is open: nothing was sent. (Or, refusing a call's
    retry, the retry was not sent: the attempts before it were, as its ``attempts`` show, and
    its message says so.)

    ``retry_at`` is the clock time at which a probe will be let through.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_at: float,
        **context: Unpack[_RequestContext],
    ) -> None:
        super().__init__(message, **context)
        self.retry_at = retry_at


class StateStoreError(TransportError):
    """The shared state store (Redis) failed, refused or was too slow for one operation.

    Raised by :class:`le_transport.state.RedisStore`; the engine never lets it reach a call:
    :class:`le_transport.state.FallbackStore` turns it into a switch to local state. The message
    never holds the store's password.
    """


class StateDataError(StateStoreError):
    """One key of the shared state store holds data the operation cannot work on: the store
    answered, so it is up, but refused that key (on Redis, a ``ResponseError`` about the key's
    data: ``WRONGTYPE``, a field a script cannot count, a number that is not one; or a value
    that is no UTF-8, read on a client with ``decode_responses``).

    Not an outage: :class:`le_transport.state.FallbackStore` treats it as that key's damage
    (a read answers None, a conditional write or delete does not store, a budget or a pace
    runs locally for that key), logs a warning naming the key, and keeps sharing every other
    key. ``key`` is the store key (as the caller named it, without the store's prefix); the
    message never holds a stored value nor the store's password.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------
# Providers: domains and auth
# --------------------------------------------------------------------------------------------


class DomainResolutionError(TransportError):
    """The Domain API (CSDS) could not be reached or answered nonsense, and no cached map
    exists for the account. ``account`` names the account."""

    def __init__(self, message: str, *, account: str | None = None) -> None:
        super().__init__(message)
        self.account = account


class UnknownServiceError(DomainResolutionError):
    """The account has no such service. ``known`` lists the services it has (names are case
    sensitive)."""

    def __init__(
        self, message: str, *, service: str, known: Sequence[str] = (), account: str | None = None
    ) -> None:
        super().__init__(message, account=account)
        self.service = service
        self.known = tuple(known)


class HostileHostError(DomainResolutionError):
    """A host from the Domain API is not a bare hostname (scheme, path, userinfo, whitespace or
    control characters). It is refused and no credential is sent to it."""


class HostConfigurationError(HostileHostError, ConfigurationError):
    """A host given when something was built (a :class:`~le_transport.providers.StaticDomains`
    map, ``Engine({service: host})``) is not a bare hostname with an optional port: a
    ``https://`` or a path left in it, say. A :class:`ConfigurationError`, raised once at
    construction, and a :class:`HostileHostError`, as the same host refused at run time is."""


class AuthenticationError(TransportError):
    """Authentication failed: bad credentials, a second 401 after a fresh login, or a token
    that could not be obtained. Check the credentials; retrying unchanged will not help.

    Except for :class:`UnexpectedAnswer`, the credential service answering neither a refusal
    nor a success (a maintenance page): that one is transient."""


class LoginRejected(AuthenticationError):
    """The Login Service refused the credentials with a 4xx. ``status`` is the answer's status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnexpectedAnswer(AuthenticationError):
    """A credential service (the Login Service, Sentinel, ``idp``) answered with something
    that is neither a refusal nor a success: a redirect (a 3xx; provider calls never follow
    one), a 200 whose body is not the JSON expected (a proxy's HTML maintenance page, an
    answer without the bearer or the token, one that no header can carry), a 408 or 425 (a
    proxy's "try again": no verdict on the credentials), or another status that is no 4xx
    nor 5xx. It says nothing of the credentials: most likely the service is in maintenance
    behind its proxy, an outage by another name.

    An :class:`AuthenticationError`, so that code catching that still catches it; but unlike
    a refusal (:class:`LoginRejected`, :class:`BlockedError`) it is not final: its verdict
    (:func:`~le_transport.recovery.repeat_of`) is ``RETRYABLE``, so ``recover=True`` waits it
    out as it waits out a 503, a session or token that still lives is kept, and a token
    fetched early keeps the current one while it is valid. ``status`` is the answer's status;
    ``service`` the Domain API service that answered, if known. Its message never shows the
    body."""

    def __init__(self, message: str, *, status: int, service: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.service = service


class ProviderError(TransportError):
    """A provider (an :class:`~le_transport.providers.AuthProvider` or a
    :class:`~le_transport.providers.DomainProvider`, the library's or one of your own) failed
    with an exception that is not a :class:`TransportError`: most likely a bug in it. Nothing
    was sent for the call; retrying cannot help.

    The provider's exception is the ``__cause__``, with its traceback (a provider of your own
    is your code: its error is yours to see); the message names only its type, never its
    text, which may hold a credential.

    - ``provider``: the provider's class name; ``role``: ``"auth"`` or ``"domain"``.
    - ``operation``: what it was asked (``"credentials"``, ``"resolve"``, ``"invalidate"``...).
    - ``error_type``: the name of the exception's type; ``service``: the call's service, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        role: str,
        operation: str,
        error_type: str,
        service: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.role = role
        self.operation = operation
        self.error_type = error_type
        self.service = service


class RecoveryFailed(TransportError):
    """The outer recovery loop (re-resolve domains, re-login) ran out of attempts or time.

    ``last`` is the failure it ends on. When the loop gives up (its attempts or deadline
    spent), the last re-login's failure, or the call's own failure when no re-login failed.
    When the call's own deadline stops it waiting on a round that goes on for other calls (the
    round's next pause would end past it), the call's own failure, whatever the round's
    re-logins failed with. None when not given.
    """

    def __init__(self, message: str, *, last: BaseException | None = None) -> None:
        super().__init__(message)
        self.last = last


# --------------------------------------------------------------------------------------------
# WebSockets
# --------------------------------------------------------------------------------------------


class SocketError(TransportError):
    """A resilient WebSocket failed."""


class SocketClosed(SocketError):
    """The socket is closed (by the caller, or for good after repeated auth failures), or it
    dropped while a request was in flight. Requests that failed this way can be retried."""


class SocketQueueFull(SocketError):
    """The socket is down and its outgoing queue is full (``SocketOptions.max_queued`` messages,
    or ``max_queued_bytes`` of their text, which a message larger than it passes on its own):
    the message was refused, not lost."""


class SocketRequestTimeout(SocketError):
    """No ``resp`` frame matched the request id within the timeout, and the connection the
    request went out on was not lost by then (a lost one fails it with :class:`SocketClosed`).

    - ``sent``: False when the request was still queued, never written (the socket was not
      open the whole time): it was withdrawn, and sending it again cannot do it twice. True
      when it went out: it may or may not have been processed.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class SocketDeadlock(SocketError):
    """A wait that only the socket's own task could end, made from inside that task: a
    ``request()`` awaited in an ``on_frame`` handler (the handler runs in the reader, so its
    answer could never be read), or ``wait_open()`` in an ``on_frame`` handler or ``on_connect``
    callback before the socket is open. Raised at once rather than waiting out a timeout (or
    for ever); run such a call in a task of its own."""


class InvalidMessage(SocketError, ValueError):
    """A socket message that cannot be sent as given: a request ``type`` that is not a
    non-empty str, a body or frame that is not JSON (an object, NaN), a str frame that is not
    valid text (a lone surrogate), a timeout (for ``request`` and ``wait_open``) that is not a
    positive number. Raised before anything is sent or queued; the message never shows the
    value."""


class SocketRequestError(SocketError):
    """The server answered a socket request with an error ``code`` (4xx/5xx)."""

    def __init__(self, message: str, *, code: int, body: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


class SocketAuthFailed(SocketClosed, AuthenticationError):
    """The socket stopped for good: re-authenticating did not get it accepted again (repeated
    4401/4407/1011 closes or 401 upgrades), or fresh credentials could not be obtained
    (``__cause__`` says why). Check the credentials; then open a new socket."""


class SocketRejected(SocketClosed):
    """The socket stopped for good: the server refused it in a way that reconnecting unchanged
    cannot fix, whether the socket met the refusal dialing by itself or inside the re-login loop.

    - ``status``: the HTTP status the upgrade was refused with (a 403, a 404), or the code an
      ``InitConnection`` was answered with; 0 when there was no such answer (a close code).
      Check the path, account and permissions.
    - ``close_code``: the close code the server closed the connection with, when the socket's
      :attr:`ClosePolicy.fail_codes <le_transport.policies.ClosePolicy.fail_codes>` makes it
      final (e.g. 1008); None when the refusal was an answer with a ``status``.

    Exactly one of the two says what happened: branch on ``close_code is None``, not on the
    message.
    """

    def __init__(self, message: str, *, status: int = 0, close_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class InvalidSocketTransition(SocketError):
    """A socket's lifecycle was asked to make a transition its state machine forbids.

    A bug in the socket layer, never the caller's: please report it with the log.
    """

    def __init__(self, message: str, *, current: str, target: str) -> None:
        super().__init__(message)
        self.current = current
        self.target = target
