"""The retry middleware: the request schedule, timeouts, fault logging and typed errors.

One logical call runs here as a loop of attempts. For each attempt the middleware calls the
next handler under a per-attempt timeout (on the injected clock), reads the body inside the
attempt (so a reset mid-body is an attempt's failure, not the caller's surprise, and the
connection goes back to the pool before any pause), turns what happened into a pure
:class:`~le_transport.policies.Outcome`, asks the :class:`~le_transport.policies.RetryPolicy`
what to do, and acts: return, pause on the clock, or raise a typed error.

How it answers aiohttp's middleware contract (see docs/architecture.md):

- ``ClientTimeout.total`` spans every attempt made here: the engine's session sets no total and
  this middleware enforces the per-attempt timeout and the call's deadline itself, through the
  clock, cancelling the attempt in flight.
- aiohttp re-runs the whole chain once after a ``ServerDisconnectedError``/``ClientOSError`` on
  an idempotent request. No such exception ever leaves this middleware (it ends with a
  :class:`~le_transport.errors.TransportError`), so aiohttp never replays behind our back and the
  attempt count is exact.
- WebSocket upgrades pass straight through: the socket's reconnect policy owns their retries.
  A resilient socket's upgrade hop is first checked against the host its first hop went to
  (after the outer middlewares; :mod:`~le_transport.middleware.upgrade`): a redirect to
  another host is refused before it is sent.
- Redirect hops each run the chain again; each hop is its own attempt loop on the same call.
  A hop of an engine call to another origin (scheme, host or port) than its first request's
  is sent without any secret header (:func:`~le_transport.middleware.context.drop_secret_headers`):
  aiohttp drops only ``Authorization``, ``Cookie`` and ``Proxy-Authorization``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import email.utils
import functools
import logging
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypedDict

import aiohttp
import attrs
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
from aiohttp.payload import Payload

from .._checks import instance_of, optional_instance_of, require_option
from .._redact import body_excerpt, redact_cut, redact_path, redact_url
from ..clock import Clock, RealClock, _ClockTimeout, _WheelTimer, wall_of
from ..errors import (
    AttemptRecord,
    AttemptTimeout,
    BodyTooLarge,
    ClientStatusError,
    ConnectionFailed,
    DeadlineExceeded,
    EngineClosed,
    HTTPStatusError,
    InvalidRetryAfter,
    Repeat,
    RequestBodyError,
    RequestError,
    RetriesExhausted,
    TransportError,
    status_error,
)
from ..events import EventHooks, GiveUpEvent, RetryEvent, emit
from ..policies.classify import (
    IDEMPOTENT_METHODS,
    Classifier,
    Outcome,
    OutcomeKind,
    Verdict,
    repeat_verdict,
)
from ..policies.retry import Action, Decision, RetryPolicy
from ..policies.retry_after import dated_two_digit_year, parse_retry_after
from .context import (
    _CALL_LEDGER,
    _CURRENT,
    CallContext,
    CallLedger,
    HandledCallContext,
    drop_secret_headers,
)
from .upgrade import UPGRADE_GUARD

if TYPE_CHECKING:
    from .overload import RetryGate

__all__ = [
    "AUTH_REPLAY",
    "DEFAULT_MAX_BODY_BYTES",
    "AuthReplay",
    "ClosedInFlight",
    "RetryMiddleware",
    "body_spent",
    "is_websocket_upgrade",
]

_log = logging.getLogger("le_transport.retry")


class ClosedInFlight(aiohttp.ClientConnectionError):
    """What an answer being read (its head or its body) fails with when the session's owner
    (the engine) closes the session under it: the retry loop then stops the call with
    :class:`~le_transport.errors.EngineClosed`."""


#: Responses larger than this are refused (LiveEngage REST answers are kilobytes).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def is_websocket_upgrade(request: ClientRequest) -> bool:
    """Whether ``request`` is a WebSocket handshake."""
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def body_spent(request: ClientRequest) -> bool:
    """Whether ``request``'s body was a stream that went out and cannot be sent again.

    aiohttp marks such a payload (an async iterable, a file that cannot seek back) consumed;
    sending the request again would send an empty body, and a server that accepts it would
    answer a success for a request that carried nothing. Bytes, str and forms are reusable.
    """
    body = request.body
    return isinstance(body, Payload) and body.consumed


def _cancel_count() -> int:
    """The running task's count of cancellation requests (-1 outside a task)."""
    task = asyncio.current_task()
    return -1 if task is None else task.cancelling()


def _failure_outcome(exc: BaseException) -> tuple[Outcome, bool]:
    """The outcome of a transport exception, and whether it proves the request never left."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # The server's certificate refused: final, no repeat makes it valid. Any other TLS
        # failure of the connect (a handshake cut short, plain HTTP on 443 from a proxy in
        # the middle of a deploy, an alert during a certificate rotation) is a failed connect,
        # retried: taken as final, it stopped a socket for good on a passing hiccup.
        return Outcome.failure(OutcomeKind.TLS_REJECTED, name), True
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Outcome.failure(OutcomeKind.CONNECT_FAILED, name), True
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return Outcome.failure(OutcomeKind.TIMEOUT, name), False
    return Outcome.failure(OutcomeKind.CONNECTION_LOST, name), False


#: aiohttp's coroutine that writes a request's body: an exception whose traceback starts in
#: it was raised while the body was sent (read from the traceback of a failure only).
_WRITE_BYTES = getattr(getattr(aiohttp.ClientRequest, "write_bytes", None), "__code__", None)


def _connection_writers() -> frozenset[object]:
    """The code of aiohttp's own connection writing (the request's stream writer and its
    protocol's drain): a failure raised there, under ``write_bytes``, is the connection's."""
    from aiohttp import base_protocol, http_writer

    found = []
    for owner, names in (
        (
            getattr(http_writer, "StreamWriter", None),
            ("_write", "_writelines", "_write_chunked_payload", "write", "write_eof", "drain"),
        ),
        (getattr(base_protocol, "BaseProtocol", None), ("_drain_helper",)),
    ):
        for name in names:
            code = getattr(getattr(owner, name, None), "__code__", None)
            if code is not None:
                found.append(code)
    return frozenset(found)


_CONNECTION_WRITERS = _connection_writers()

#: The files of aiohttp's connection writing: a frame in one is the connection's writing even
#: where a later aiohttp renamed the functions above.
_CONNECTION_FILES = frozenset(
    code.co_filename  # type: ignore[attr-defined]
    for code in _CONNECTION_WRITERS
)


def _body_failure(exc: BaseException) -> BaseException | None:
    """The exception the request's own body raised while aiohttp sent it, if ``exc`` is
    aiohttp's report of one; None for a failure of the connection.

    aiohttp's ``ClientRequest.write_bytes`` reports whatever writing the body raises: an
    ``OSError`` in a ``ClientOSError`` (a ``TimeoutError`` without an errno as it is),
    anything else in a ``ClientConnectionError`` (whose message repeats it), the original as
    ``__cause__``. Told by where the original was raised, never by its class or message:
    under ``write_bytes`` and in aiohttp's connection writing (its stream writer, its
    protocol's drain) it is the connection's; under ``write_bytes`` anywhere else it is the
    body's, whatever its class (a file on a soft mount fails with ETIMEDOUT, one made of a
    socket with ConnectionResetError, an iterable relaying another stream with that stream's
    reset or its own timeout). The same wrappers come from a connection lost under a read (an
    ``SSLError``, ``EHOSTUNREACH``), never raised under ``write_bytes``."""
    if _WRITE_BYTES is None:
        return None
    cause = exc.__cause__
    if isinstance(exc, aiohttp.ClientConnectionError):
        if cause is None:
            return None
    elif isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
        # Reported as it is (no errno): its own traceback says where it was raised.
        cause = exc if cause is None else cause
    else:
        return None
    tb = cause.__traceback__
    under = False
    while tb is not None:
        code = tb.tb_frame.f_code
        if code is _WRITE_BYTES:
            under = True
        elif (
            under
            and (code in _CONNECTION_WRITERS or code.co_filename in _CONNECTION_FILES)
            and isinstance(cause, OSError)
        ):
            # The connection's: what aiohttp's writer raises for it is an OSError (a reset,
            # "Cannot write to closing transport", "Connection lost"). A TypeError or
            # ValueError raised there is a chunk the body yielded that is no bytes (a str, an
            # int, a released memoryview): the body's, or one caller's mistake opened the
            # host's breaker for every caller.
            return None
        tb = tb.tb_next
    if not under:
        return None
    if not _CONNECTION_WRITERS and isinstance(cause, ConnectionError | TimeoutError):
        # (aiohttp's writers not found by name: the class is all there is to go by.)
        return None
    return cause


def _body_limit(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    require_option(
        not isinstance(value, bool) and isinstance(value, int) and value >= 1,
        value,
        owner="RetryMiddleware",
        field="max_body_bytes",
        wants="an int >= 1",
    )


def _gate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # Imported here: the overload module builds on this one.
    from .overload import is_retry_gate

    require_option(
        value is None or is_retry_gate(value),
        value,
        owner="RetryMiddleware",
        field="gate",
        wants="a RetryGate (an OverloadGuard) or None",
    )


@attrs.frozen(eq=False)
class RetryMiddleware:
    """Retries a request on ``policy``, enforcing timeouts and raising typed errors.

    Put it on any ``aiohttp.ClientSession(middlewares=[RetryMiddleware(...)])``; the engine
    builds one for you. Parameters:

    - ``policy``: the default :class:`RetryPolicy` (a call may override it).
    - ``clock``: where pauses and timeouts are measured (``RealClock`` by default).
    - ``hooks``: ``on_retry`` and ``on_giveup`` callbacks.
    - ``rng``: the random source for jitter (seed it for reproducible runs).
    - ``raise_for_status``: raise :class:`ClientStatusError` and friends for final non-2xx
      answers (default). With False, a final answer is returned as is, unretried.
    - ``buffer_body``: read the body inside the attempt (default), so body failures are
      retried and the connection is released before any pause; ``resp.read()``/``json()``
      then return the buffered bytes. The session's ``on_response_chunk_received`` trace
      hooks get the whole body once, as aiohttp's own ``resp.read()`` gives it.
    - ``max_body_bytes``: bodies larger than this raise :class:`BodyTooLarge`.
    - ``wall_clock``: epoch seconds, only to read a ``Retry-After`` HTTP-date when the answer
      has no (valid) ``Date`` header. Default: the date of ``clock``
      (:func:`~le_transport.clock.wall_of`: a :class:`~le_transport.testing.VirtualClock`'s
      virtual date, :func:`time.time` for :class:`RealClock`), as the engine's.
    - ``gate``: overload protection asked before each attempt and each retry (the breaker and
      the retry budget, :class:`~le_transport.middleware.overload.OverloadGuard`); a refusal
      fails the call at once, without pausing.
    - ``shutdown``: set when the owner of the session closes it (the engine does): a call then
      stops with :class:`EngineClosed` in its pause or before its next attempt, instead of
      retrying against a session that is gone.

    Hashable by identity, as aiohttp's chain cache needs.
    """

    # Checked when built: a wrong kind would fail inside the first request, or not at all.
    policy: RetryPolicy = attrs.field(factory=RetryPolicy, validator=instance_of(RetryPolicy))
    clock: Clock = attrs.field(factory=RealClock, validator=instance_of(Clock))
    hooks: EventHooks = attrs.field(factory=EventHooks, validator=instance_of(EventHooks))
    rng: random.Random = attrs.field(factory=random.Random, validator=instance_of(random.Random))
    raise_for_status: bool = attrs.field(default=True, validator=instance_of(bool))
    buffer_body: bool = attrs.field(default=True, validator=instance_of(bool))
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=_body_limit)
    # The date of ``clock`` unless given (a VirtualClock's own, RealClock's time.time), as the
    # engine's and ProviderHttp's: never the machine's behind a virtual clock.
    wall_clock: Callable[[], float] = attrs.field(
        default=attrs.Factory(lambda self: wall_of(self.clock), takes_self=True)
    )
    gate: RetryGate | None = attrs.field(default=None, validator=_gate)
    shutdown: asyncio.Event | None = attrs.field(
        default=None, validator=optional_instance_of(asyncio.Event)
    )

    def __attrs_post_init__(self) -> None:
        # Else a True or a number is taken, and fails as a raw TypeError mid-request, at the
        # first Retry-After given as an HTTP-date on an answer without a Date header.
        require_option(
            callable(self.wall_clock),
            self.wall_clock,
            owner="RetryMiddleware",
            field="wall_clock",
            wants="a function returning epoch seconds (like time.time)",
        )

    def __call__(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> Awaitable[ClientResponse]:
        # A plain function returning the loop's coroutine, which aiohttp awaits: no coroutine
        # layer of its own on every resume of the request (benchmarks/README.md).
        upgrade = request.headers.get(hdrs.UPGRADE)
        if upgrade is not None and upgrade.lower() == "websocket":
            # Not retried here (the socket reconnects), but checked: a resilient socket's
            # upgrade redirect goes to the host its first hop went to, with its credentials,
            # or nowhere.
            guard = UPGRADE_GUARD.get()
            if guard is not None:
                guard.check(request)
            return handler(request)
        ctx = _CURRENT.get()
        if ctx is None:
            # No engine call (a request on ``engine.session``, or a caller's session with the
            # stack): its own call, per request (so per redirect hop). Under a recovery loop
            # it is recorded as an engine call is, so that a POST of it that was acted on (a
            # 303 whose GET hop then failed) is never sent again by the loop.
            ctx = CallContext()
            ledger = _CALL_LEDGER.get()
            if ledger is not None:
                ledger.record(ctx, request.method.upper())
                return _recorded(ledger, ctx, _Call(self, ctx, self.policy, request, handler))
        elif ctx.active:
            # A request made from inside an engine call's retry loop (re-entrant): its own.
            ctx = CallContext()
        elif ctx.first_url is None:
            # The call's first request: the origin its redirect hops are held to.
            ctx.first_url = request.url
            ctx.first_original = request.original_url
        elif request.url is not ctx.first_url:
            if request.original_url == ctx.first_original:
                # The first request sent again, elsewhere (an outer middleware failing over to
                # another gateway: aiohttp built it, for the call's URL; a redirect hop is built
                # for its Location): no hop, and where it goes now is the call's origin.
                ctx.first_url = request.url
            else:
                # A redirect hop: no secret header goes to another origin, the caller's own
                # included.
                drop_secret_headers(ctx, request)
        # The loop notes when the call started (``ctx.started_at``) as it begins. _Call's
        # __init__, inline: a class call with a Python __init__ costs more than the stores.
        call: _Call = _new_call(_Call)
        call.mw = self
        call.ctx = ctx
        call.policy = ctx.retry or self.policy
        call.request = request
        call.handler = handler
        call.last_status = call._service = call._idempotent = call._url = None
        call._gate_until = None
        return call.run()


async def _recorded(ledger: CallLedger, ctx: CallContext, call: _Call) -> ClientResponse:
    """Run ``call``, a request with no engine call around it, recorded in a recovery loop's
    ``ledger``, and tell the ledger how it ended."""
    try:
        resp = await call.run()
    except BaseException as exc:
        ledger.finish(ctx, exc)
        raise
    ledger.finish(ctx)
    return resp


class _Where(TypedDict):
    service: str
    method: str
    url: str


#: Answers that never carry a body, whatever their Content-Length says (RFC 9110 6.4.1).
_NO_BODY_STATUSES = frozenset({*range(100, 200), 204, 304})
#: How much of a failed answer (4xx/5xx) over ``max_body_bytes`` is kept, for its error's
#: excerpt: the status judges the call, the rest of the page is not read.
_FAILED_BODY_KEPT = 64 * 1024
#: The answers whose body was cut so: never returned as an answer.
_CUT_SHORT: weakref.WeakSet[ClientResponse] = weakref.WeakSet()


class AuthReplay:
    """An auth middleware's word, from around the retry middleware, that it sends ``request``
    once more with fresh credentials if it is answered 401 (unless its body was a stream,
    already sent): set in :data:`AUTH_REPLAY` while it first sends it.

    Such a 401 does not end the call, so the retry loop that meets it as its final answer
    logs no failure and fires no give-up for it: it leaves that report here (``deferred``).
    The replay's own outcome is what is reported (by its own retry loop); only when the
    replay cannot be made after all (fresh credentials could not be had) does the auth
    middleware make the report left here (:meth:`report`). Either way the call's end is
    reported once."""

    __slots__ = ("deferred", "request")

    def __init__(self, request: ClientRequest) -> None:
        self.request = request
        #: The report of the 401 the retry loop left, taking why it was not replayed.
        self.deferred: Callable[[str], None] | None = None

    def report(self, why: str) -> None:
        """The 401 was not replayed after all (``why``): report it as the call's end, as the
        retry loop would have (once; nothing if no 401 was left here)."""
        deferred, self.deferred = self.deferred, None
        if deferred is not None:
            deferred(why)


#: The request the auth middleware around the retry middleware replays on a 401
#: (:class:`AuthReplay`), while it is first sent.
AUTH_REPLAY: contextvars.ContextVar[AuthReplay | None] = contextvars.ContextVar(
    "le_transport_auth_replay", default=None
)

#: The outcome of a 2xx or 3xx answer (which never carries a Retry-After for the loop), made
#: once per status: a successful call allocates none. A final 1xx is not here: it is the
#: server's protocol error, retried as a 5xx is, and its Retry-After is read as a 5xx's is.
_ANSWERS: dict[int, Outcome] = {status: Outcome.response(status) for status in range(200, 400)}

#: ``tuple.__new__``, with which a successful attempt's :class:`AttemptRecord` is made as
#: ``_new_record(AttemptRecord, (attempt, outcome, None, started))``: the same value its
#: constructor makes (a named tuple's ``__new__`` is a Python function that calls it), without
#: that function's frame on every call (benchmarks/README.md).
_new_record = tuple.__new__
#: ``object.__new__``: the middleware makes each :class:`_Call` with it and sets its slots in
#: place, as ``_Call.__init__`` does (``tests/test_hotpath_r28.py`` holds the two together).
_new_call = object.__new__


class _Call(_WheelTimer):
    """One logical call's attempt loop (one per middleware invocation).

    A plain slotted class, and what only a retry, a log line or an error needs (the service,
    the idempotency, the redacted URL) is worked out when first asked: a call that succeeds at
    its first attempt pays for none of it (benchmarks/README.md). On the real clock the call
    is itself its attempts' timer (armed on the loop's wheel for one attempt at a time), so an
    attempt's timeout allocates nothing.
    """

    __slots__ = (
        "_gate_until",
        "_idempotent",
        "_service",
        "_url",
        "ctx",
        "handler",
        "last_status",
        "mw",
        "policy",
        "request",
    )

    def __init__(
        self,
        mw: RetryMiddleware,
        ctx: CallContext,
        policy: RetryPolicy,
        request: ClientRequest,
        handler: ClientHandlerType,
    ) -> None:
        self.mw = mw
        self.ctx = ctx
        self.policy = policy
        self.request = request
        self.handler = handler
        #: The status of the latest answer, once its headers arrived.
        self.last_status: int | None = None
        self._service: str | None = None
        self._idempotent: bool | None = None
        self._url: str | None = None
        # When the attempt being admitted must have ended by, as its gate asked
        # (limit_attempt); taken (and cleared) as the attempt starts.
        self._gate_until: float | None = None

    def limit_attempt(self, until: float) -> None:
        """Cut the attempt the gate is admitting once the clock reaches ``until``, if its own
        attempt timeout or the call's deadline does not end it sooner: an attempt timeout
        (``AttemptTimeout``, a TIMEOUT outcome for the gate). The overload guard bounds a
        fleet's half-open probe so, by its probe lock's lease (see
        :class:`~le_transport.middleware.overload.OverloadGuard`). Called from the gate's
        ``admit`` only; it bounds that one attempt. A bound no shorter than the attempt
        timeout counted from the admission's start (a probe whose own timeout the guard bounds
        it by) is said to be that timeout."""
        self._gate_until = until

    @property
    def method(self) -> str:
        """The request's method."""
        return self.request.method.upper()

    @property
    def service(self) -> str:
        """The call's service name, or the host when the call came without one."""
        if self._service is None:
            self._service = self.ctx.service or (self.request.url.host or "?")
        return self._service

    @property
    def idempotent(self) -> bool:
        """Whether repeating the request is safe: the caller's word, else by method."""
        if self._idempotent is None:
            given = self.ctx.idempotent
            self._idempotent = given if given is not None else self.method in IDEMPOTENT_METHODS
        return self._idempotent

    @property
    def url(self) -> str:
        """The request's URL, redacted: only a log line or an error needs it."""
        # Computed on first use: redacting every URL cost a successful call more than the
        # rest of its bookkeeping (benchmarks/README.md).
        if self._url is None:
            self._url = redact_url(self.request.url)
        return self._url

    def _extra(self, **fields: object) -> dict[str, object]:
        return {
            "service": self.service,
            "method": self.method,
            "path": redact_path(self.request.url.path),
            **fields,
        }

    def _where(self) -> _Where:
        return {"service": self.service, "method": self.method, "url": self.url}

    def _elapsed(self) -> float:
        started = self.ctx.started_at
        return 0.0 if started is None else self.mw.clock.now() - started

    def _remaining(self, now: float) -> float | None:
        """Seconds left before the call's deadline at ``now`` (None: no deadline)."""
        deadline = self.policy.deadline
        if deadline is None:
            return None
        started = self.ctx.started_at
        return deadline if started is None else deadline - (now - started)

    async def run(self) -> ClientResponse:
        """Attempt, decide, pause, until the call succeeds or fails with a typed error.

        One clock timeout per attempt, for whichever ends first of the attempt timeout and the
        call's deadline; pauses never cross the deadline (the policy gives up instead of
        sleeping past it). So a call arms one timeout, not two, and a successful first attempt
        makes no decision value (its outcome is classified directly).
        """
        mw = self.mw
        clock = mw.clock
        policy = self.policy
        gate = mw.gate
        ctx = self.ctx
        real = type(clock) is RealClock
        fast = type(policy) is RetryPolicy
        classifier = policy.classifier
        # Every status below 400 but these is a success, known without calling the classifier;
        # None: a policy or a classifier of the caller's own kind, asked every time.
        irregular = (
            classifier._not_success_below_400 if fast and type(classifier) is Classifier else None
        )
        deadline = policy.deadline
        first = clock.now()
        if ctx.started_at is None:
            ctx.started_at = first
        call_started = ctx.started_at
        attempt = 0
        ctx.active = True
        try:
            while True:
                attempt += 1
                if attempt > 1:
                    shutdown = mw.shutdown
                    if shutdown is not None and shutdown.is_set():
                        raise self._engine_closed(attempt)
                    resign = ctx.resign
                    if resign is not None and resign[0] is self.request:
                        # A provider that signs each request (OAuth 1.0): a retry is a new
                        # request, and a nonce the server has seen would be refused as a replay.
                        await resign[1](self.request)
                    started = clock.now()
                else:
                    started = first
                limit = policy.attempt_timeout
                # Whether the gate's bound (limit_attempt) is the attempt's: its timeout then
                # says so.
                by_gate = False
                if gate is not None:
                    refused = await gate.admit(self, attempt)
                    if refused is not None:
                        raise self._refused(refused, attempt)
                    until = self._gate_until
                    if until is None:
                        started = clock.now()
                    else:
                        self._gate_until = None
                        # Said to be the gate's only if shorter than the attempt's own timeout
                        # counted from before the admission (``started`` still), as the gate
                        # counts: else it is that timeout, shortened by the admission's time.
                        by_gate = limit is None or until - started < limit
                        started = clock.now()
                        if limit is None or until - started < limit:
                            limit = max(0.0, until - started)
                by_deadline = False
                if deadline is not None:
                    remaining = deadline - (started - call_started)
                    if remaining <= 0:
                        if gate is not None:
                            gate.abandon(self, attempt)
                        raise self._deadline_passed(None, "before attempt " + str(attempt))
                    if limit is None or remaining <= limit:
                        limit = remaining
                        by_deadline = True
                        by_gate = False
                # On the real clock the call is its own timer, armed on the loop's wheel.
                timer: _WheelTimer | None
                # The task's count of cancellation requests as the attempt starts (a timer
                # notes it as it arms): a CancelledError with the count unchanged is no
                # cancellation of the caller's (see _closed_under_caller).
                cancels = -1
                if limit is None:
                    timer = None
                    cancels = _cancel_count()
                elif real:
                    self._arm_real(limit)
                    timer = self
                else:
                    timer = _ClockTimeout(clock, limit).start()
                resp: ClientResponse | None = None
                error: RequestError | None = None
                try:
                    resp = await self.handler(self.request)
                    self.last_status = resp.status
                    if resp.status < 100:
                        # No HTTP status (a proxy's '000', which aiohttp parses): a malformed
                        # answer, as one aiohttp cannot parse is (below), never a success.
                        resp.close()
                        raise aiohttp.ClientResponseError(
                            resp.request_info,
                            resp.history,
                            status=resp.status,
                            message="a status line without an HTTP status",
                        )
                    if mw.buffer_body:
                        try:
                            length = resp.content_length
                            if (
                                length is not None
                                and length <= mw.max_body_bytes
                                and hdrs.CONTENT_ENCODING not in resp.headers
                            ):
                                # The parser stops at Content-Length, within the limit: aiohttp's
                                # own read() is the cheapest way to the whole body.
                                await resp.read()
                            else:
                                await self._buffer(resp)
                        except BaseException:
                            # A body cut short, a timeout or a cancellation mid-body: the
                            # connection is in an unknown state, so drop it rather than pool it.
                            resp.close()
                            raise
                except BaseException as exc:
                    timed_out = timer is not None and timer._disarm(type(exc))
                    if timed_out and by_deadline:
                        if gate is not None:
                            self._cut_by_deadline(gate, attempt, started)
                        raise self._deadline_passed(
                            (attempt, started), f"attempt {attempt} was cancelled in flight"
                        ) from None
                    if isinstance(exc, BodyTooLarge):
                        if gate is not None:
                            gate.abandon(self, attempt)
                        self._too_large_final(exc, attempt, started)
                        raise
                    if isinstance(exc, ClosedInFlight) or (
                        not timed_out
                        and (
                            self._closed_under_caller(
                                timer._cancelling if timer is not None else cancels
                            )
                            if isinstance(exc, asyncio.CancelledError)
                            else self._closed_session_under(exc)
                        )
                    ):
                        # The engine closed the session under the attempt (a body being read
                        # is failed then; a call waiting for a pooled connection has its wait
                        # cancelled by the connector, though nobody cancelled the call; a wire
                        # middleware that waited sends on the closed session): not the
                        # server's failure, and nothing to retry. Only that: anything else
                        # failing while it closes (a logout reset by the server, before the
                        # session is closed) is still said as it is.
                        if gate is not None:
                            gate.abandon(self, attempt)
                        cut = Outcome.failure(OutcomeKind.CONNECTION_LOST, "EngineClosed")
                        ctx.attempts.append(AttemptRecord(attempt, cut, None, started))
                        raise self._engine_closed(attempt, in_flight=True) from None
                    if not timed_out and isinstance(exc, asyncio.CancelledError):
                        # Cancelled with the attempt in flight (a TaskGroup cancelling its
                        # siblings, a caller's cleanup): it may have reached the server, which
                        # may act on it. Recorded, so that the recovery loop never takes the
                        # call for one that sent nothing (CallContext.may_resend).
                        cut = Outcome.failure(OutcomeKind.CONNECTION_LOST, "CancelledError")
                        ctx.attempts.append(AttemptRecord(attempt, cut, None, started))
                    if not timed_out:
                        spoilt = _body_failure(exc)
                        if spoilt is not None:
                            # The caller's body, not the connection nor the service: final,
                            # and no outcome for the gate (the breaker and the budget).
                            if gate is not None:
                                gate.abandon(self, attempt)
                            raise self._body_failed(spoilt, attempt, started) from spoilt
                    outcome, error = self._failed(
                        attempt, exc, timed_out, gate, limit if by_gate else None
                    )
                    resp = None
                else:
                    if timer is not None:
                        timer._disarm(None)
                    status = resp.status
                    if status < 400:
                        # A 2xx/3xx's outcome is made once; a final 1xx (not in _ANSWERS) is
                        # a failure, whose Retry-After is read as a 5xx's.
                        outcome = _ANSWERS.get(status) or Outcome.response(
                            status, self._retry_after(resp)
                        )
                    else:
                        outcome = Outcome.response(status, self._retry_after(resp))
                if gate is not None:
                    await gate.settle(self, attempt, outcome)
                if resp is not None and (
                    status < 400 and status not in irregular
                    if irregular is not None
                    else fast and classifier.classify(outcome) is Verdict.SUCCESS
                ):
                    # What decide() answers first for a success, without its Decision value.
                    ctx.attempts.append(
                        _new_record(AttemptRecord, (attempt, outcome, None, started))
                    )
                    return resp
                if resp is not None and status in ctx.accept:
                    # An answer the caller expects (a 404 for "no such user"): returned as a
                    # success is, neither retried nor reported as a failure.
                    ctx.attempts.append(AttemptRecord(attempt, outcome, None, started))
                    return resp
                decision = policy.decide(
                    attempt,
                    outcome,
                    idempotent=self.idempotent,
                    elapsed=self._elapsed(),
                    rand=mw.rng.random(),
                )
                if decision.action is Action.RETRY and body_spent(self.request):
                    decision = Decision(
                        Action.FAIL,
                        reason=f"{decision.reason}, but not retried: the request's body was a "
                        "stream, already sent, that cannot be sent again (pass bytes to retry)",
                    )
                pause = decision.pause if decision.action is Action.RETRY else None
                self.ctx.attempts.append(AttemptRecord(attempt, outcome, pause, started))
                if decision.action is Action.SUCCEED:
                    assert resp is not None
                    if resp in _CUT_SHORT:
                        # A policy of the caller's own made a failed answer a success: its
                        # body, cut to an excerpt, would pass for the whole one. Recorded and
                        # logged as any answer too large (its attempt is recorded already).
                        too_large = self._too_large(
                            mw.max_body_bytes, "a failed answer taken as a success"
                        )
                        too_large.attempts = tuple(self.ctx.attempts)
                        self.log_final(too_large, outcome, "the response body is too large")
                        raise too_large
                    return resp
                if resp is not None and (decision.action is Action.RETRY or mw.raise_for_status):
                    # Release before pausing: a retried response must not hold a pooled connection.
                    error = self._status_error(resp)
                    resp.release()
                if decision.action is Action.RETRY:
                    assert error is not None
                    await self._gate_retry(attempt, outcome, decision.pause, error)
                    self._log_retry(attempt, outcome, decision.pause)
                    try:
                        await self._pause(decision.pause)
                    except EngineClosed as closed:
                        raise closed from error
                    continue
                if resp is not None and not mw.raise_for_status:
                    replay = self._replayed_by_auth(outcome)
                    if replay is None:
                        self._log_final_status(outcome, decision.reason)
                    else:
                        replay.deferred = functools.partial(
                            self._unreplayed_status, outcome, decision.reason
                        )
                    return resp
                assert error is not None
                if decision.action is Action.GIVE_UP:
                    exhausted = RetriesExhausted(
                        f"gave up after {attempt} attempt(s): {decision.reason}; "
                        f"last outcome {outcome.describe()}",
                        last=error,
                        service=self.service,
                        method=self.method,
                        url=self.url,
                        attempts=self.ctx.attempts,
                    )
                    self.log_final(exhausted, outcome, decision.reason)
                    raise exhausted from error
                error.attempts = tuple(self.ctx.attempts)
                # The schedule decided not to repeat it: RETRYABLE_IF_IDEMPOTENT when only for
                # not being idempotent (a POST's 5xx, reset or timeout), else FINAL (a 4xx, a
                # status the Classifier makes final, a refused certificate). The recovery loop
                # repeats the former only within a call that may be sent again.
                error.repeat = repeat_verdict(classifier, outcome, idempotent=self.idempotent)
                replay = self._replayed_by_auth(outcome)
                if replay is None:
                    self.log_final(error, outcome, decision.reason)
                else:
                    # Not the call's end: the auth middleware replays it with fresh credentials.
                    replay.deferred = functools.partial(
                        self._unreplayed, error, outcome, decision.reason
                    )
                raise error
        finally:
            self.ctx.active = False

    async def _pause(self, pause: float) -> None:
        """Sleep ``pause`` on the clock; if the deadline comes first, sleep to it and fail."""
        clock = self.mw.clock
        remaining = self._remaining(clock.now())
        if remaining is None or pause < remaining:
            await self._sleep(pause)
            return
        # The policy gives up rather than pause past the deadline; only time spent since its
        # decision (the gate asking a shared store) can bring the deadline inside the pause.
        await self._sleep(max(0.0, remaining))
        raise self._deadline_passed(None, "during a pause")

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the clock, unless the session's owner shuts down first (EngineClosed)."""
        clock = self.mw.clock
        shutdown = self.mw.shutdown
        if shutdown is None:
            await clock.sleep(seconds)
            return
        if shutdown.is_set():
            raise self._engine_closed(None)
        # Two tasks per pause: pauses are rare (a retry), and a closing engine must not leave
        # its calls waiting out 15 s each.
        loop = asyncio.get_running_loop()
        slept = loop.create_task(clock.sleep(seconds), name="le_transport retry pause")
        closed = loop.create_task(shutdown.wait(), name="le_transport retry shutdown")
        try:
            await asyncio.wait({slept, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (slept, closed):
                task.cancel()
            await asyncio.gather(slept, closed, return_exceptions=True)
        if not slept.done() or slept.cancelled():
            raise self._engine_closed(None)

    def _closed_under_caller(self, before: int) -> bool:
        """Whether a CancelledError the attempt raised is the session closing under it (the
        connector cancels the waits for a pooled connection when it closes), not the caller's
        cancellation: the owner shut down, and nobody cancelled this task since the attempt
        began (its count then: ``before``). Compared, not read as 0: Python 3.11 and 3.12's
        TaskGroup can leave a count of 1 behind, and a call the close cut got a bare
        CancelledError."""
        shutdown = self.mw.shutdown
        if shutdown is None or not shutdown.is_set():
            return False
        task = asyncio.current_task()
        return task is not None and before >= 0 and task.cancelling() <= before

    def _closed_session_under(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the attempt, is the session's close showing through: the
        owner shut down and the session is closed (aiohttp's bare AssertionError for a request
        that a wire middleware, having waited, sent on it; the connection's loss). Asked only
        on a failure; a call the owner makes while it closes (its logout) runs before the
        session is closed, and its failures are said as they are, as are typed errors."""
        shutdown = self.mw.shutdown
        return (
            shutdown is not None
            and shutdown.is_set()
            and isinstance(exc, Exception)
            and not isinstance(exc, TransportError)
            and self.request.session.closed
        )

    def _cut_by_deadline(self, gate: RetryGate, attempt: int, started: float) -> None:
        """Tell ``gate`` that attempt ``attempt`` (admitted at ``started``) was cut by the
        call's deadline with no answer: its ``cut`` weighs how long it ran (a breaker counts a
        long one as a timeout, :attr:`~le_transport.policies.CircuitBreaker.slow_call`); a gate
        without one abandons it. Never awaited: the caller's DeadlineExceeded is due now. A
        ``cut`` that raises (a gate's own bug) is logged by its type and the attempt abandoned:
        its error took the place of the caller's DeadlineExceeded. So is one that returns a
        coroutine (an ``async def cut``, as the gate's other methods are): nothing would await
        it, so the gate was told nothing of the attempt."""
        cut = getattr(gate, "cut", None)
        if not callable(cut):
            gate.abandon(self, attempt)
            return
        try:
            told = cut(self, attempt, self.mw.clock.now() - started)
        except Exception as exc:
            # Only its type: its text may quote what the gate was handling.
            _log.warning(
                "%s %s: the retry gate's cut raised %s; the attempt is abandoned instead",
                self.method,
                self.url,
                type(exc).__name__,
                extra=self._extra(attempt=attempt, error=type(exc).__name__),
            )
            gate.abandon(self, attempt)
            return
        if asyncio.iscoroutine(told):
            told.close()  # no "never awaited" warning on top of this one
            _log.warning(
                "%s %s: the retry gate's cut returned a coroutine, which is never awaited (it "
                "is called synchronously: the caller's error is due now); the attempt is "
                "abandoned instead",
                self.method,
                self.url,
                extra=self._extra(attempt=attempt),
            )
            gate.abandon(self, attempt)

    def _engine_closed(self, attempt: int | None, *, in_flight: bool = False) -> EngineClosed:
        """The session's owner closed it during the call: stop, with what was done so far."""
        ctx = self.ctx
        when = (
            "during a pause"
            if attempt is None
            else f"while attempt {attempt} was in flight"
            if in_flight
            else f"before attempt {attempt}"
        )
        err = EngineClosed(
            f"the engine was closed {when}; the call stopped after {len(ctx.attempts)} attempt(s)",
            service=self.service,
            method=self.method,
            url=self.url,
            attempts=ctx.attempts,
        )
        self.log_final(err, None, "the engine was closed")
        return err

    def _deadline_passed(self, in_flight: tuple[int, float] | None, cut: str) -> DeadlineExceeded:
        """The call's deadline passed: record the attempt it cut short (if any) and log."""
        ctx = self.ctx
        cancelled: Outcome | None = None
        if in_flight is not None:
            # The cancelled attempt is an attempt too: the caller sees every one made.
            attempt, started = in_flight
            cancelled = Outcome.failure(OutcomeKind.TIMEOUT, "DeadlineExceeded")
            ctx.attempts.append(AttemptRecord(attempt, cancelled, None, started))
        deadline = self.policy.deadline
        err = DeadlineExceeded(
            f"the call's {deadline:g} s deadline passed after {len(ctx.attempts)} attempt(s); "
            f"{cut}",
            elapsed=self._elapsed(),
            service=self.service,
            method=self.method,
            url=self.url,
            attempts=ctx.attempts,
        )
        self.log_final(err, cancelled, f"deadline of {deadline:g} s passed")
        return err

    def _too_large_final(self, too_large: BodyTooLarge, attempt: int, started: float) -> None:
        """Record and log an answer too large to read: not retried, the same would come again."""
        status = self.last_status if self.last_status is not None else 0
        outcome = Outcome.response(status)
        self.ctx.attempts.append(AttemptRecord(attempt, outcome, None, started))
        too_large.attempts = tuple(self.ctx.attempts)
        self.log_final(too_large, outcome, "the response body is too large")

    def _body_failed(self, cause: BaseException, attempt: int, started: float) -> RequestBodyError:
        """The request's body failed with ``cause`` while attempt ``attempt`` sent it (it
        raised, or yielded a chunk that is not bytes): recorded (the request may have been
        partly sent), logged without ``cause``'s text, and final."""
        ctx = self.ctx
        cut = Outcome.failure(OutcomeKind.CONNECTION_LOST, "RequestBodyError")
        ctx.attempts.append(AttemptRecord(attempt, cut, None, started))
        reason = f"the request body failed while it was sent: {type(cause).__name__}"
        err = RequestBodyError(
            f"attempt {attempt} failed: {reason} (the body's own failure, not the "
            "connection's; not retried)",
            attempts=ctx.attempts,
            **self._where(),
        )
        err.repeat = Repeat.FINAL
        self.log_final(err, None, reason)
        return err

    def _failed(
        self,
        attempt: int,
        exc: BaseException,
        timed_out: bool,
        gate: RetryGate | None,
        gate_limit: float | None = None,
    ) -> tuple[Outcome, RequestError]:
        """The outcome and error of an attempt that raised ``exc``; re-raise what is no fault.

        A cancellation from outside (the caller's), an error of the caller's own making and
        anything unexpected propagate as they are; the gate forgets the attempt first.
        ``gate_limit``: the gate's bound on the attempt (:meth:`limit_attempt`), when that
        bound, not the attempt timeout, was the attempt's.
        """
        if timed_out:
            if gate_limit is not None:
                said = (
                    f"attempt {attempt} took longer than {gate_limit:.4g} s, the most the "
                    "circuit breaker's half-open probe may take (its fleet lock's lease), "
                    "and was cancelled"
                )
            else:
                said = (
                    f"attempt {attempt} took longer than {self.policy.attempt_timeout:g} s "
                    "and was cancelled"
                )
            return Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout"), AttemptTimeout(
                said, **self._where()
            )
        if isinstance(
            exc, TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError
        ):
            # aiohttp's own timeouts (connect, socket read) are TimeoutError subclasses.
            outcome, never_sent = _failure_outcome(exc)
            detail = type(exc).__name__
            if not isinstance(exc, TimeoutError):
                detail = f"{detail}: {_safe_message(exc)}"
            return outcome, ConnectionFailed(
                f"attempt {attempt} failed: {detail}", never_sent=never_sent, **self._where()
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            # Raised inside the chain only when the answer could not be parsed (aiohttp's own
            # raise_for_status runs after the chain): a broken server or connection, which is
            # retried like a connection lost after the request may have been processed.
            return Outcome.failure(OutcomeKind.CONNECTION_LOST, type(exc).__name__), (
                ConnectionFailed(
                    f"attempt {attempt} failed: malformed answer ({_safe_message(exc)})",
                    **self._where(),
                )
            )
        if gate is not None:
            gate.abandon(self, attempt)
        if isinstance(exc, aiohttp.ClientError):
            # Not a transport fault (an invalid URL, too many redirects): the caller's to fix.
            raise RequestError(
                f"{type(exc).__name__}: {_safe_message(exc)}", **self._where()
            ) from exc
        raise exc

    async def _buffer(self, resp: ClientResponse) -> None:
        limit = self.mw.max_body_bytes
        length = resp.content_length
        if hdrs.CONTENT_ENCODING in resp.headers:
            # Content-Length counts the compressed bytes: a few kilobytes of gzip can inflate
            # to gigabytes. The limit is held on what decompresses, chunk by chunk (aiohttp
            # decompresses each chunk to a bounded size).
            length = None
        elif length is not None and length > limit:
            if self.request.method == hdrs.METH_HEAD or resp.status in _NO_BODY_STATUSES:
                # Content-Length names the size of a body that does not follow (RFC 9110
                # 8.6): nothing to hold against the limit.
                await resp.read()
                return
            if self._judged_failed(resp.status):
                # A failed answer's body only feeds its error's excerpt: its start is kept
                # and the status classified as any other (a 503 with a proxy's large
                # maintenance page is retried as a 503, not made a final BodyTooLarge).
                await self._keep_start(resp, min(limit, _FAILED_BODY_KEPT))
                return
            resp.close()
            raise self._too_large(limit, f"Content-Length {length}")
        if length is not None:
            # The parser stops at Content-Length, which is within the limit: aiohttp's own
            # read() is the cheapest way to the whole body and fills the same _body field
            # (chunk by chunk through iter_any cost a successful call several microseconds).
            await resp.read()
            return
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                resp.close()
                if self._judged_failed(resp.status):
                    # As above: the status is what the call is judged by.
                    _CUT_SHORT.add(resp)
                    chunks.append(chunk)
                    resp._body = b"".join(chunks)[: min(limit, _FAILED_BODY_KEPT)]
                    return
                raise self._too_large(limit, f"more than {limit} bytes read")
            chunks.append(chunk)
        # Reading to EOF has already returned the connection to the pool (aiohttp's own
        # end-of-payload hook). read()/text()/json() serve _body once set: the same field its
        # own read() fills. Calling release() here would make a later read() fail.
        body = resp._body = b"".join(chunks)
        # What read() does once it has the body (aiohttp's own, private, list): the session's
        # on_response_chunk_received hooks get it whole, once (a later read() serves _body
        # without firing them again).
        for trace in getattr(resp, "_traces", ()):
            await trace.send_response_chunk_received(resp.method, resp.url, body)

    def _judged_failed(self, status: int) -> bool:
        """Whether an answer of ``status`` is a failure the call is judged by (its body then
        only an error's excerpt): 4xx/5xx, unless the caller accepts it (``accept``) or the
        policy's classifier makes it a success; those are returned whole, or not at all."""
        # A final 1xx is a failure too, but never has a body to hold to the limit (aiohttp
        # reads none for any 1xx, RFC 9112 6.3), so it never gets here: below 400 is a 2xx/3xx.
        if status < 400 or status in self.ctx.accept or not self.mw.raise_for_status:
            # (Without raise_for_status, a failed answer is returned to the caller too.)
            return False
        return self.policy.classifier.classify(Outcome.response(status)) is not Verdict.SUCCESS

    async def _keep_start(self, resp: ClientResponse, size: int) -> None:
        """Keep (at most) the first ``size`` bytes of ``resp``'s body as its body, and drop the
        connection rather than read the rest."""
        _CUT_SHORT.add(resp)
        try:
            resp._body = await resp.content.read(size)
        finally:
            resp.close()

    def _too_large(self, limit: int, detail: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"response body exceeds the {limit}-byte limit ({detail}); not read further",
            limit=limit,
            service=self.service,
            method=self.method,
            url=self.url,
        )

    def _retry_after(self, resp: ClientResponse) -> float | None:
        """The pause ``resp``'s ``Retry-After`` asks, for a failed answer: 400 and over, or a
        final 1xx (the server's protocol error, retried as a 5xx is); None without one, or for
        a 2xx/3xx, whose header asks nothing of the retry loop."""
        if 200 <= resp.status < 400:
            # On a success or a redirect the header asks nothing of the retry loop.
            return None
        value = resp.headers.get(hdrs.RETRY_AFTER)
        if value is None:
            return None
        now_epoch = self.mw.wall_clock()
        date = resp.headers.get(hdrs.DATE)
        if date is not None:
            with contextlib.suppress(InvalidRetryAfter):
                now_epoch = parse_retry_after_date(date, now_epoch=now_epoch)
        try:
            return parse_retry_after(value, now_epoch=now_epoch)
        except InvalidRetryAfter as exc:
            _log.warning(
                "%s %s: ignoring invalid Retry-After (%s); following the schedule",
                self.method,
                self.url,
                exc,
                extra=self._extra(status=resp.status),
            )
            return None

    def _status_error(self, resp: ClientResponse) -> HTTPStatusError:
        body = resp._body if resp._body is not None else b""
        return status_error(
            resp.status,
            resp.reason or "",
            body_excerpt(body, path=self.request.url.path),
            tries=len(self.ctx.attempts),
            **self._where(),
        )

    def _refused(self, refused: RequestError, attempt: int) -> RequestError:
        """The gate's refusal of attempt ``attempt``, logged and reported, to raise."""
        # Nothing was sent: not an attempt of the schedule, and no pause before failing.
        # The breaker logged its opening once; a line per refused call would flood the log
        # for the whole break, so the refusal itself is DEBUG (and the on_giveup hook).
        refused.attempts = tuple(self.ctx.attempts)
        _log.debug(
            "%s %s: %s",
            self.method,
            self.url,
            refused.message,
            extra=self._extra(attempt=attempt, error=type(refused).__name__),
        )
        emit(
            self.mw.hooks.on_giveup,
            GiveUpEvent(
                service=self.service,
                method=self.method,
                url=self.url,
                attempts=len(self.ctx.attempts),
                outcome=None,
                reason=refused.message,
                elapsed=self._elapsed(),
                handled_by_caller=self._fallback(refused) is not None,
            ),
        )
        return refused

    async def _gate_retry(
        self, attempt: int, outcome: Outcome, pause: float, last: RequestError
    ) -> None:
        """Ask the gate before pausing; a refusal fails the call now (the pause not taken)."""
        gate = self.mw.gate
        if gate is None:
            return
        refused = await gate.before_retry(self, attempt, outcome, pause, last)
        if refused is None:
            return
        record = self.ctx.attempts[-1]
        self.ctx.attempts[-1] = AttemptRecord(
            record.attempt, record.outcome, None, record.started_at
        )
        refused.attempts = tuple(self.ctx.attempts)
        self.log_final(refused, outcome, refused.message)
        raise refused from last

    def _log_retry(self, attempt: int, outcome: Outcome, pause: float) -> None:
        elapsed = self._elapsed()
        _log.warning(
            "%s %s: attempt %d/%d failed with %s; retrying in %.3g s",
            self.method,
            self.url,
            attempt,
            self.policy.max_attempts,
            outcome.describe(),
            pause,
            extra=self._extra(
                attempt=attempt,
                status=outcome.status,
                error=outcome.error,
                pause=pause,
                elapsed=elapsed,
            ),
        )
        emit(
            self.mw.hooks.on_retry,
            RetryEvent(
                service=self.service,
                method=self.method,
                url=self.url,
                attempt=attempt,
                outcome=outcome,
                pause=pause,
                elapsed=elapsed,
            ),
        )

    def _log_final_status(self, outcome: Outcome, reason: str) -> None:
        _log.warning(
            "%s %s: %s",
            self.method,
            self.url,
            reason,
            extra=self._extra(attempt=len(self.ctx.attempts), status=outcome.status),
        )

    def _replayed_by_auth(self, outcome: Outcome) -> AuthReplay | None:
        """The auth middleware's word that it replays this final answer, if it is a 401 it
        replays (:class:`AuthReplay`: this very request, its body not a spent stream)."""
        if outcome.status != 401:
            return None
        replay = AUTH_REPLAY.get()
        if replay is None or replay.request is not self.request or body_spent(self.request):
            return None
        return replay

    def _unreplayed(self, err: RequestError, outcome: Outcome, reason: str, why: str) -> None:
        """Report a 401 left to the auth middleware's replay, which was not made (``why``)."""
        self.log_final(err, outcome, f"{reason}; not replayed: {why}")

    def _unreplayed_status(self, outcome: Outcome, reason: str, why: str) -> None:
        """As :meth:`_unreplayed`, for a 401 returned as an answer (``raise_for_status``
        off)."""
        self._log_final_status(outcome, f"{reason}; not replayed: {why}")

    def _fallback(self, err: RequestError) -> str | None:
        """What the call's maker falls back on when it fails with ``err`` (its words), or None
        when it does not handle it: an ordinary call, or a refusal (a 4xx) or a closing engine,
        which no fallback makes good. Read only when a call gives up: a fallback decided then
        (a callable: a Domain API refresh past ``max_stale`` by the time it gives up serves
        nothing)."""
        ctx = self.ctx
        if not isinstance(ctx, HandledCallContext) or isinstance(
            err, (ClientStatusError, EngineClosed)
        ):
            return None
        return ctx.handled()

    def log_final(self, err: RequestError, outcome: Outcome | None, reason: str) -> None:
        elapsed = self._elapsed()
        attempts = len(self.ctx.attempts)
        # A 4xx is the caller's to fix, a call stopped by a closing engine no failure of the
        # service, and an outage its maker handles itself (an early token fetch: the current
        # token still works) has failed nothing yet: none is logged as an error. The last is
        # a WARNING, not INFO: it is the one line that says what the service answered, and an
        # outage of it that outlasts the fallback will fail calls. It says what the maker
        # falls back on, in the maker's words, and so does its GiveUpEvent (handled_by_caller).
        fallback = self._fallback(err)
        level = (
            logging.WARNING
            if fallback is not None or isinstance(err, (ClientStatusError, EngineClosed))
            else logging.ERROR
        )
        # What the last attempt met, unless the reason says it already ("503 is not
        # retryable"): a call given up after one attempt has no retry line that shows it.
        last = outcome.describe() if outcome is not None else None
        _log.log(
            level,
            "%s %s: failed after %d attempt(s) in %.3g s: %s%s%s",
            self.method,
            self.url,
            attempts,
            elapsed,
            reason,
            "" if last is None or reason.startswith(last) else f"; last outcome {last}",
            "" if fallback is None else f"; handled: {fallback}",
            extra=self._extra(
                attempt=attempts,
                status=outcome.status if outcome else None,
                error=outcome.error if outcome and outcome.error else type(err).__name__,
                elapsed=elapsed,
            ),
        )
        emit(
            self.mw.hooks.on_giveup,
            GiveUpEvent(
                service=self.service,
                method=self.method,
                url=self.url,
                attempts=attempts,
                outcome=outcome,
                reason=reason,
                elapsed=elapsed,
                handled_by_caller=fallback is not None,
            ),
        )


def parse_retry_after_date(value: str, *, now_epoch: float | None = None) -> float:
    """Epoch seconds of an HTTP-date (the ``Date`` header), or :class:`InvalidRetryAfter`.

    An HTTP-date is always GMT (RFC 9110 §5.6.7); a date without a zone (or ``-0000``) is read
    as UTC, never as the machine's local time. A two-digit year (the obsolete RFC 850 form)
    is dated by RFC 9110's 50-year rule against ``now_epoch``, the injected wall clock's epoch
    seconds (the retry middleware and the socket dialer pass theirs), as a ``Retry-After``
    date's is (:func:`~le_transport.policies.parse_retry_after`); without one (None) it is
    read by email.utils' fixed cutoff (69-99: 19xx, 00-68: 20xx), never the machine's clock.
    """
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise InvalidRetryAfter(f"not an HTTP-date: {value[:64]!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    if now_epoch is not None:
        when = dated_two_digit_year(when, value, now_epoch)
    return when.timestamp()


def _safe_message(exc: BaseException) -> str:
    """An exception's message with any URL in it redacted (aiohttp puts URLs in messages)."""
    return redact_cut(str(exc), 300)
