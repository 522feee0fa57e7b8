"""The resilient WebSocket: one owner task drives each socket's whole life.

:class:`ResilientSocket` connects through a :class:`~le_transport.sockets.dial.Dialer`, and when
the connection ends asks the pure :class:`~le_transport.policies.ClosePolicy` what it means:
reconnect, re-authenticate first, stop, or fail for good. Between connects it waits out the
:class:`~le_transport.policies.BackoffPolicy` (reset only after a connection stayed healthy:
it became ready, ``on_connect`` done, and stayed open ``healthy_after`` seconds; one whose
peer the keepalive found dead counts as open until the last frame it heard) and
the process's :class:`~le_transport.sockets.pacing.ReconnectPacer`. Everything that happens to a
socket happens in its owner task, in this order, so there is never more than one connect in
flight and a superseded connection cannot act:

1. ``CONNECTING``: dial (resolve the host, get credentials, upgrade, first-frame auth).
2. ``OPEN``: run the ``on_connect`` callbacks (their sends go straight out) and flush the queue
   in order, in a short-lived task while the owner reads (the owner itself makes the
   connection ready when there are neither callbacks nor a queue); from then on sends go
   straight out, and the engine's
   :class:`~le_transport.sockets.keepalive.KeepaliveScheduler` watches the connection (when
   the socket has a keepalive: by default, a LiveEngage messaging socket does).
   The owner reads the connection itself until it ends, pausing while the ``async for``
   consumer leaves ``max_inbox`` frames (or ``max_inbox_bytes`` of them) unread
   (backpressure on the peer).
3. When the connection ends (close frame, drop, dead peer, ``on_connect`` failure, the
   caller's close), fail the requests in flight on it with
   :class:`~le_transport.errors.SocketClosed`, close it, and go to ``RECONNECTING``. The
   ``on_connect`` task and keepalive probes it cancels are waited for
   :data:`~le_transport.sockets.keepalive.TIDY_UP_GRACE` at most: one that outlives its
   cancellation is logged (WARNING) and left to run, never holding up the reconnect; it
   calls no further ``on_connect`` callback.
4. ``CLOSING`` → ``CLOSED`` on :meth:`ResilientSocket.close` or a final failure.

aiohttp's ``receive()`` must not be cancelled (it marks the connection abnormally closed), so
whatever ends a connection from outside the owner (the caller's close, a dead peer, a failed
write, a failed ``on_connect``) records why, and closes the aiohttp connection in a short-lived
task: that makes the owner's ``receive()`` return.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import math
import random
import weakref
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import attrs

from .._checks import is_async_callable
from .._shown import error_text, redacted_exc_info
from ..clock import Clock, RealClock, next_turn, stall_timeout, timeout_after
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    EngineClosed,
    InvalidMessage,
    SocketAuthFailed,
    SocketClosed,
    SocketDeadlock,
    SocketError,
    SocketRejected,
    SocketRequestError,
    SocketRequestTimeout,
    TransportError,
)
from ..events import EventHooks, StateEvent, check_hooks, emit
from ..policies.close_codes import CloseAction, Disconnect, DisconnectKind
from ..policies.keepalive import Keepalive, KeepaliveStep
from ..recovery import is_setup_error
from .correlation import PendingRequests, failure_code
from .dial import Connection, Dialer, DialFailed, read_error_disconnect, write_never_began
from .keepalive import KeepaliveScheduler, wait_tidy_up
from .lifecycle import Lifecycle, SocketState
from .options import KEEPALIVE_BY_PATH, SocketOptions
from .outbox import Outbox, Outgoing
from .pacing import ReconnectPacer

__all__ = [
    "HANDLER_EXCUSE",
    "EscalationRequest",
    "FrameHandler",
    "OnConnect",
    "ReloginEscalation",
    "ResilientSocket",
    "check_on_connect",
    "is_async_callable",
]

_log = logging.getLogger("le_transport.sockets")

#: How long a running ``on_frame`` handler excuses the peer's silence (nothing is read while it
#: runs, so a keepalive probe's answer waits unread): a handler riding out a request's whole
#: 5/10/15 s schedule with its timeouts fits; past it, the keepalive judges the peer as usual,
#: so a peer that died during a handler that hangs is still found.
HANDLER_EXCUSE = 300.0

#: Called after every (re)connect, before queued messages go out: re-subscribe here.
OnConnect = Callable[["ResilientSocket"], Awaitable[object]]
#: Receives every unsolicited frame (parsed JSON, or the text when it is not JSON).
FrameHandler = Callable[[Any], "Awaitable[object] | object"]

_WARNING_STATES = frozenset({"lost", "connect_failed", "escalating", "reauthenticating"})

# The failed connect's facts (``Disconnect.error``) when the auth provider's ``credentials()``
# raised EngineClosed: the dialer names the step and the error's type, never its text.
_CLOSED_CREDENTIALS = f"credentials: {EngineClosed.__name__}"

# Set inside the on_connect callbacks' task: (socket id, epoch). Their sends bypass the queue,
# which must wait until they are done.
_ON_CONNECT: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "le_transport_on_connect", default=None
)


#: What the socket answered an ``on_connect`` callback (a refusal, no answer, a lost
#: connection): logged in its own words, without a traceback. Anything else is a bug in the
#: callback, logged with its traceback.
_SOCKET_OUTCOMES = (SocketRequestError, SocketRequestTimeout, SocketClosed)


def _callable_name(callback: object) -> str:
    """How a callback is named in an error: its qualified name, or its type's (never its repr,
    which may show anything)."""
    target = callback
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__qualname__", None)
    if not isinstance(name, str):
        name = f"a {builtins.type(target).__name__} object"
    return name if target is callback else f"functools.partial({name})"


def _cancels() -> int:
    """The running task's count of cancellation requests, taken before a callback runs: a
    cancellation the callback meets is its task's only if the count grew meanwhile (else the
    callback awaited something another task cancelled: its failure, not the socket's end).
    Compared, not read as is: Python 3.11's TaskGroup can leave a count of 1 behind after a
    child's failure, which made every later foreign cancellation look like the socket's."""
    task = asyncio.current_task()
    return -1 if task is None else task.cancelling()


def _cancelled_since(before: int) -> bool:
    """Whether the running task was asked to cancel since :func:`_cancels` gave ``before``."""
    task = asyncio.current_task()
    return task is None or before < 0 or task.cancelling() > before


class _WriteCancelledElsewhere(ConnectionError):
    """A write ended by a cancellation that was not its own task's: something else cancelled
    what it waited on. Its frame may have gone out (in doubt, never sent again), and the
    connection's writer cannot be trusted: the connection is failed (1011), and the socket
    reconnects. Never seen by a caller: a request fails with :class:`SocketClosed`."""


async def _go_on_sparing_waits(step: Generator[Any, None, None], waits_on: Any) -> None:
    """Go on with a write whose first step (``step.send(None)``, taken by the caller) yielded
    ``waits_on``, as the task's ``await`` would, but for one thing: when the running task is
    cancelled, what the write waits on is not cancelled with it; the cancellation is thrown
    into the write where it waits, and ends it there.

    aiohttp's WebSocket writer makes every write that waits for the transport to drain await
    one future, the protocol's, shared by them all. A plain ``await`` that is cancelled (a
    request's timeout, a caller's cancellation) cancels that future, and so ends every other
    write waiting on it with a CancelledError that is not theirs (the flush of the queue
    among them: a connection left up and never ready); and every later write on that
    connection meets the cancelled future again until the buffer drains. Here a caller's
    cancellation ends its own write only.
    """
    throw: BaseException | None = None
    cancelled: asyncio.CancelledError | None = None
    before = _cancels()
    try:
        while True:
            waited: asyncio.Future[Any] | None = None
            try:
                if waits_on is None:
                    # A bare yield (what asyncio.sleep(0) yields): a turn of the loop.
                    await next_turn()
                elif asyncio.isfuture(waits_on) and waits_on._asyncio_future_blocking:
                    # What a task does with a future its coroutine yields; then waited for
                    # without being cancelled when this task is (asyncio.wait leaves it be).
                    waits_on._asyncio_future_blocking = False
                    waited = waits_on
                    await asyncio.wait((waited,))
                else:
                    throw = RuntimeError(f"a write yielded {builtins.type(waits_on).__name__}")
            except asyncio.CancelledError as exc:
                throw = cancelled = exc
                if waited is not None:
                    # Left waiting: when it fails (the drain's "Connection lost"), this write
                    # is no longer there to take the error, and asyncio would log it.
                    if waited.done():
                        _retrieve(waited)
                    else:
                        waited.add_done_callback(_retrieve)
            try:
                waits_on = step.send(None) if throw is None else step.throw(throw)
            except StopIteration:
                break
            throw = None
    finally:
        step.close()
    if cancelled is not None and _cancelled_since(before):
        # The write returned although its task was cancelled: the cancellation still stands.
        # (A write that handled its own timeout, asyncio.timeout, uncancelled it: it ended.)
        raise cancelled


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def check_on_connect(on_connect: object) -> tuple[OnConnect, ...]:
    """``on_connect`` as a tuple of callbacks, or :class:`~le_transport.errors.ConfigurationError`
    saying what was expected: a sequence (a list, a tuple) of callables, each taking the socket
    and returning an awaitable (an ``async def``, a :func:`functools.partial` of one, an object
    with an async ``__call__``, or a plain function or lambda that returns one, such as
    ``lambda ws: ws.request(...)``). A single callback given bare, or something in the
    sequence that cannot be called, is refused here. Whether a callable returns an awaitable
    shows only when it is called: one that does not (a plain ``def`` returning None) stops the
    socket at its first connect, typed, rather than failing every connect."""
    if callable(on_connect):
        raise ConfigurationError(
            "on_connect takes a sequence of async callbacks, got the single callback "
            f"{_callable_name(on_connect)}: wrap it in a list (on_connect=[callback])"
        )
    if isinstance(on_connect, str | bytes | Mapping) or not isinstance(on_connect, Iterable):
        raise ConfigurationError(
            "on_connect takes a sequence of async callbacks (e.g. on_connect=[resubscribe]), "
            f"got a {builtins.type(on_connect).__name__}"
        )
    callbacks = tuple(on_connect)
    for callback in callbacks:
        if not callable(callback):
            raise ConfigurationError(
                "on_connect takes async callbacks, got a "
                f"{builtins.type(callback).__name__} in the sequence"
            )
    return callbacks


def _chosen_keepalive(options: SocketOptions, dialer: Dialer) -> Keepalive | None:
    """The keepalive a socket runs: its options' own, or, left to the default, the one its
    dialer knows for its path (an :class:`~le_transport.sockets.EngineDialer`'s
    ``default_keepalive``; a dialer without one: none)."""
    chosen = options.keepalive
    if chosen is not KEEPALIVE_BY_PATH:
        return chosen
    by_path = getattr(dialer, "default_keepalive", None)
    return by_path if isinstance(by_path, Keepalive) else None


@attrs.frozen
class EscalationRequest:
    """What a socket tells the re-login loop when it escalates: which socket, how many
    reconnects in a row failed, and how the last one ended."""

    subject: str
    failures: int
    last: Disconnect


class ReloginEscalation(Protocol):
    """The outer re-login loop, as a socket sees it.

    Called after ``escalate_after`` consecutive failed reconnects (once the socket has waited
    out its own backoff pause for the last of them) with the facts and ``connect``, one connect
    attempt, which first waits for a slot of the socket's
    :class:`~le_transport.sockets.pacing.ReconnectPacer` as every reconnect does: call it as
    often as the loop needs, and sockets released together connect at the pacer's rate.
    Return a connection made with ``connect`` (the socket
    serves it at once), or None to go on with the socket's own schedule (``connect`` raises
    :class:`~le_transport.errors.SocketClosed` once the socket is closing); raise to make the
    socket stop: it closes with :class:`~le_transport.errors.SocketClosed` whose
    ``__cause__`` is what was raised (unless the socket was closed meanwhile, from the
    escalation itself or elsewhere: it then ends as closed by its caller, without an error,
    whatever the escalation returned or raised). A :class:`~le_transport.sockets.DialFailed` from
    ``connect`` that the socket's close policy makes final (an upgrade refused with 403, a
    close code in ``fail_codes``), raised as is or as the ``__cause__`` of what was raised,
    stops it with :class:`~le_transport.errors.SocketRejected`, as when the socket met it
    dialing by itself.
    """

    async def __call__(
        self, request: EscalationRequest, connect: Callable[[], Awaitable[Connection]]
    ) -> Connection | None:
        """Recover the session (re-resolve domains, re-login) for ``request.subject``."""
        ...


def _dumps(value: Any, what: str) -> str:
    """``value`` as JSON text, or :class:`InvalidMessage` (NaN and infinity are not JSON)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        # Not chained, and the value not shown: it may carry a credential.
        raise InvalidMessage(f"{what} is not JSON ({builtins.type(exc).__name__})") from None


def _text(frame: str) -> str:
    """``frame`` if it can go out as a text frame (UTF-8), or :class:`InvalidMessage`.

    A lone surrogate ("\\ud800") makes a str that UTF-8 cannot encode: refused here, before it
    is queued, rather than failing the write (and the connection) later.
    """
    # ASCII (the common case, and a cheap test) always encodes: only other text is encoded
    # here, and once more by the write.
    if not frame.isascii():
        try:
            frame.encode("utf-8")
        except UnicodeEncodeError:
            # Not chained, and the text not shown: it may carry a credential.
            raise InvalidMessage(
                "the frame is not valid text: it holds a lone surrogate, which UTF-8 cannot encode"
            ) from None
    return frame


def _check_frame_headers(headers: object) -> None:
    """Refuse a request's ``headers`` that are not a list (or tuple) of header objects: each a
    mapping with str keys naming its ``type`` with a non-empty str (as LiveEngage's
    ``{"type": ".ams.headers.ClientProperties", ...}``). Named by index, never shown."""
    problem: str | None = None
    if not isinstance(headers, list | tuple):
        problem = f"got {builtins.type(headers).__name__}"
    else:
        for index, header in enumerate(headers):
            if not isinstance(header, Mapping):
                problem = f"headers[{index}] is a {builtins.type(header).__name__}"
            elif not all(isinstance(key, str) for key in header):
                problem = f"headers[{index}] has a key that is not a str"
            elif not isinstance(header.get("type"), str) or not header["type"]:
                problem = f"headers[{index}] names no 'type' (a non-empty str)"
            if problem is not None:
                break
    if problem is not None:
        raise InvalidMessage(
            "headers must be a list of header objects, each a mapping with str keys naming its "
            f"'type' (as {{'type': '.ams.headers.ClientProperties', ...}}): {problem}; no value "
            "is shown"
        )


def _check_timeout(timeout: object) -> None:
    """Refuse a timeout that is not None or a positive, finite number of seconds."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        # A number is shown; anything else only by its type (a str passed by mistake could be
        # anything, a token included).
        got = repr(timeout) if isinstance(timeout, int | float) else builtins.type(timeout).__name__
        raise InvalidMessage(f"timeout must be a positive number of seconds, got {got}")


class ResilientSocket:
    """A WebSocket that reconnects by itself, correlates requests, and loses nothing.

    Use :meth:`send` and :meth:`request` at any time: while the socket is down, messages wait in
    a bounded queue (or are refused with :class:`~le_transport.errors.SocketQueueFull`) and go
    out in order after the ``on_connect`` callbacks. Receive unsolicited frames with
    ``async for frame in ws`` or an ``on_frame`` handler; follow the connection with
    :meth:`states` or ``on_state`` hooks. :meth:`close` (or leaving ``async with``) closes it for
    good. Every frame is sent at most once: one refused before any of it was written waits
    for the next connection, one handed to a connection that then failed may have arrived and
    is never sent again (a request fails with :class:`~le_transport.errors.SocketClosed`, a
    message is logged as in doubt). Unread frames wait in an inbox bounded by the options'
    ``max_inbox`` (frames) and ``max_inbox_bytes`` (their size): a consumer that falls that
    far behind makes the socket stop reading, which slows the peer down (:attr:`paused`,
    :attr:`inbox_size`, :attr:`inbox_bytes`). Made by :meth:`le_transport.Engine.websocket`,
    which passes its :class:`~le_transport.sockets.KeepaliveScheduler` as ``keepalives`` (a
    socket made without one gets a scheduler of its own).

    ``on_connect`` is a sequence of callbacks, each called with the socket after every connect
    and its result awaited (:func:`check_on_connect`: anything that is not a sequence of
    callables is a :class:`~le_transport.errors.ConfigurationError` here; a callback whose
    result is not awaitable stops the socket at its first connect). The keepalive it runs is
    :attr:`keepalive`: the options' own, or by default the guide's ``GetClock`` when the
    dialer recognises a LiveEngage messaging path. A mistake no reconnect can fix (an unknown
    service, an account the Domain API refuses) stops it at once: :attr:`error` is a
    :class:`~le_transport.errors.SocketClosed` caused by it. ``on_closed`` (the engine's own
    bookkeeping) is called with the socket once it has closed, last; one that raises is
    logged (ERROR) and the close goes on.
    """

    # A process holds thousands of these: no instance dict, and whatever only some sockets use
    # (the inbox, waiters, state subscribers) is made on first use.
    __slots__ = (
        "__weakref__",
        "_alive_for",
        "_clock",
        "_closer",
        "_closing",
        "_conn",
        "_dialer",
        "_ended",
        "_error",
        "_escalate",
        "_flushing",
        "_handling",
        "_hooks",
        "_inbox",
        "_inbox_bytes",
        "_keepalive",
        "_keepalive_ticket",
        "_keepalives",
        "_last_activity",
        "_last_sent",
        "_life",
        "_name",
        "_on_closed",
        "_on_connect",
        "_on_frame",
        "_on_state",
        "_options",
        "_outbox",
        "_owner",
        "_pacer",
        "_pending",
        "_probe",
        "_probe_sent_at",
        "_probes_ending",
        "_readied",
        "_ready_epoch",
        "_resume",
        "_rng",
        "_sends",
        "_setup",
        "_subscribers",
        "_unsent",
        "_waiters",
        "connects",
        "reconnects",
    )

    def __init__(
        self,
        dialer: Dialer,
        *,
        options: SocketOptions | None = None,
        clock: Clock | None = None,
        hooks: EventHooks | None = None,
        rng: random.Random | None = None,
        pacer: ReconnectPacer | None = None,
        on_connect: Sequence[OnConnect] = (),
        on_frame: FrameHandler | None = None,
        on_state: Sequence[Callable[[StateEvent], object]] = (),
        escalate: ReloginEscalation | None = None,
        on_closed: Callable[[ResilientSocket], object] | None = None,
        keepalives: KeepaliveScheduler | None = None,
    ) -> None:
        self._dialer = dialer
        self._options = options or SocketOptions()
        self._clock = clock or RealClock()
        self._hooks = hooks or EventHooks()
        self._rng = rng or random.Random()
        self._pacer = pacer or ReconnectPacer(self._clock)
        self._on_connect: tuple[OnConnect, ...] = check_on_connect(on_connect)
        self._on_frame = on_frame
        self._on_state: tuple[Callable[[StateEvent], object], ...] = check_hooks(
            on_state, owner="on_state hooks"
        )
        self._escalate = escalate
        self._on_closed = on_closed
        self._name = dialer.name
        self._life = Lifecycle()
        self._pending = PendingRequests()
        self._outbox = Outbox(self._options.max_queued, self._options.max_queued_bytes)
        # Each unread frame with its size on the wire (characters of text, bytes of binary),
        # and the sum of those sizes (max_inbox_bytes).
        self._inbox: deque[tuple[Any, int]] | None = None
        self._inbox_bytes = 0
        # Set only while the owner has stopped reading because the inbox is full: resolved
        # when the consumer catches up, or when the connection ends.
        self._resume: asyncio.Future[None] | None = None
        # Whoever waits for a change (a frame in the inbox, open, closed), woken by _wake.
        self._waiters: list[asyncio.Future[None]] | None = None
        # Weak: an iterator the caller dropped without finishing must not keep collecting.
        self._subscribers: weakref.WeakSet[asyncio.Queue[StateEvent | None]] | None = None
        self._conn: Connection | None = None
        # How the current connection ended, when something outside the owner's read ended it
        # (first one wins), and the task closing it so that the owner's read returns.
        self._ended: Disconnect | None = None
        self._closer: asyncio.Task[None] | None = None
        # When the owner began awaiting an on_frame handler (which close() may have to cancel),
        # or None when it is not awaiting one.
        self._handling: float | None = None
        # The keepalive: the engine's scheduler (or one of the socket's own, made on first
        # use), the ticket of the current connection, and the probe in flight.
        self._keepalives = keepalives
        self._keepalive = _chosen_keepalive(self._options, dialer)
        self._keepalive_ticket: int | None = None
        self._probe: asyncio.Task[None] | None = None
        # The probes cancelled for a newer one and not yet ended (None: none), which the next
        # probe waits for: one probe of a connection at a time.
        self._probes_ending: set[asyncio.Task[None]] | None = None
        self._probe_sent_at: float | None = None
        self._ready_epoch: int | None = None
        # Whether the current (or last) connection became ready: only such a connection can
        # count as healthy (one whose on_connect failed never served the caller).
        self._readied = False
        # Whether the current connection's on_connect callbacks are done and its queue is
        # being flushed (the callbacks' tasks lose their straight-out sends then).
        self._flushing = False
        self._owner: asyncio.Task[None] | None = None
        # The task running the on_connect callbacks of the current connection, if any.
        self._setup: asyncio.Task[None] | None = None
        # Sends made so far, straight out or queued: the number of each (see _send_text).
        self._sends = 0
        self._closing = False
        self._error: SocketClosed | None = None
        self._last_activity = 0.0
        self._last_sent = 0.0
        # How long the last connection's peer was known alive (see _serve).
        self._alive_for = 0.0
        self._unsent: tuple[str, ...] = ()
        #: Connections opened so far (the first one included).
        self.connects = 0
        #: Reconnect attempts made after a loss or a failed connect.
        self.reconnects = 0

    # -- properties -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """What this socket is (service and redacted path)."""
        return self._name

    @property
    def state(self) -> SocketState:
        """The lifecycle state."""
        return self._life.state

    @property
    def epoch(self) -> int:
        """The number of the current (or last) connection."""
        return self._life.epoch

    @property
    def is_open(self) -> bool:
        """Whether sends go straight out now (connected, ``on_connect`` done, queue flushed)."""
        return self._ready_epoch is not None

    @property
    def queued(self) -> int:
        """Messages waiting for the socket to be open."""
        return len(self._outbox)

    @property
    def queued_bytes(self) -> int:
        """The size of the messages waiting for the socket to be open, in characters of their
        wire text: at most the options' ``max_queued_bytes`` (0: no bound), and more only by
        writes a lost connection gave back, which are never refused."""
        return self._outbox.queued_bytes

    @property
    def inbox_size(self) -> int:
        """Unsolicited frames waiting to be taken with ``async for`` (at most the options'
        ``max_inbox``, and one more once the connection ended during a pause)."""
        inbox = self._inbox
        return 0 if inbox is None else len(inbox)

    @property
    def inbox_bytes(self) -> int:
        """The size of the frames in the inbox, as they came on the wire (characters of text,
        bytes of binary frames): at most the options' ``max_inbox_bytes`` and one frame more."""
        return self._inbox_bytes

    @property
    def paused(self) -> bool:
        """Whether the socket has stopped reading because the inbox is full."""
        return self._resume is not None

    @property
    def error(self) -> SocketClosed | None:
        """Why the socket stopped, when it stopped on a failure."""
        return self._error

    @property
    def closed(self) -> bool:
        """Whether the socket is closed for good."""
        return self._life.state is SocketState.CLOSED

    @property
    def options(self) -> SocketOptions:
        """The socket's options."""
        return self._options

    @property
    def keepalive(self) -> Keepalive | None:
        """The keepalive this socket runs (None: none): the options' own, or, when they leave
        it to the default (:data:`~le_transport.sockets.KEEPALIVE_BY_PATH`), the one chosen
        by the socket's path (the guide's ``GetClock`` for a LiveEngage messaging socket)."""
        return self._keepalive

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ResilientSocket:
        """Start the owner task (connects in the background). Idempotent while open.

        A socket that was closed (or stopped) does not start again: :class:`SocketClosed`
        (``ws.error`` when it stopped on one), as from every other entry point."""
        if self._closing or self.closed:
            self._raise_if_closed()
        if self._owner is None:
            self._owner = asyncio.get_running_loop().create_task(
                self._drive(), name=f"le_transport socket {self._name}"
            )
        return self

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until the socket is open (``on_connect`` done, queue flushed).

        Raises the socket's final error if it stops first (:class:`SocketClosed` and
        subclasses), and :class:`TimeoutError` after ``timeout`` seconds of the clock (a
        ``timeout`` that is not a positive number is
        :class:`~le_transport.errors.InvalidMessage`). Called from an ``on_frame`` handler or
        an ``on_connect`` callback while the socket is not open, it raises
        :class:`~le_transport.errors.SocketDeadlock`: the socket opens only after those
        return. Called in another task that one of them waits for (``asyncio.gather``,
        ``create_task`` then ``await``, ``wait_for``, a ``TaskGroup``), it is not told: it
        waits for its ``timeout`` (:class:`TimeoutError`; without one, until the socket
        closes), and the callback with it. Such a task is for the callback to start and not
        wait for (or to wait for only a while: the socket opens once the callback returns).
        """
        # Checked here, not by the clock: each clock would take a bad value its own way.
        _check_timeout(timeout)
        async with timeout_after(self._clock, timeout):
            while self._ready_epoch is None:
                self._raise_if_closed()
                if self._runs_callbacks_in(asyncio.current_task()):
                    raise SocketDeadlock(
                        f"wait_open() of {self._name} called from its own on_frame handler or "
                        "on_connect callback: the socket opens only after they return"
                    )
                waiter = self._waiter()
                try:
                    await waiter
                finally:
                    self._forget(waiter)
        self._raise_if_closed()

    async def close(self) -> list[str]:
        """Close for good: no reconnect. Idempotent.

        Requests still waiting fail with :class:`SocketClosed`. Returns the messages sent with
        :meth:`send` that were still queued (never sent), in order, so that nothing goes
        silently; how many is logged (WARNING), never their text, which may carry a
        credential. A queued :meth:`request` is not among them: its caller is told by its
        ``SocketClosed``, which says it was never sent (so safe to send again), and a frame
        both returned and failed would be sent twice by an application that re-sends the one
        and retries the other.
        Called from an ``on_frame`` handler or the re-login escalation (which the socket's
        own task runs) or an ``on_connect`` callback, it returns at once with the queue as it
        stands, and the socket closes when the handler returns (a callback, or the
        escalation, is cancelled at its next await). A
        handler still running ``close_timeout`` seconds after the connection was closed (one
        that hangs) is cancelled: a close never waits for it for ever; nor for an
        ``on_connect`` callback or a keepalive probe that outlives its cancellation (waited
        for :data:`~le_transport.sockets.keepalive.TIDY_UP_GRACE` at most, then left to run).
        """
        self._closing = True
        owner = self._owner
        if owner is None:
            if self._life.state is SocketState.NEW:
                self._life.to(SocketState.CLOSING)
                await self._finish()
            return list(self._unsent)
        if self._conn is not None:
            # Connected (or cleaning a connection up): the owner is reading, or about to; a
            # read must end by the connection closing, never by a cancellation.
            self._end_connection(Disconnect.by_caller(), self._options.close_timeout)
            if self._runs_callbacks_in(asyncio.current_task()):
                # Called by an on_frame handler, which the owner runs, or an on_connect
                # callback, which the owner cancels as it closes: neither can wait for the
                # owner. The socket closes as soon as the handler returns (the callback is
                # cancelled at its next await).
                return self._outbox.texts(requests=False)
        elif not owner.done():
            # Dialing or waiting out a pause: nothing to tidy up that the owner does not.
            owner.cancel()
            if asyncio.current_task() is owner:
                # Called by the re-login escalation, which the owner runs between connections:
                # it cannot wait for its own task (its await raised the cancellation, and
                # close() returned nothing). As from an on_frame handler: the queue as it
                # stands, and the escalation is cancelled at its next await.
                return self._outbox.texts(requests=False)
        while not owner.done():
            try:
                # Bounded by the closer's own timeout, plus whatever an on_frame handler takes.
                async with timeout_after(self._clock, self._options.close_timeout):
                    await asyncio.wait({owner})
            except TimeoutError:
                if self._handling is not None:
                    # The owner is awaiting a handler that does not return, and the connection
                    # is closed by now: nothing is left to read, so cancelling it is safe.
                    _log.warning(
                        "%s: the on_frame handler was still running %g s after close(); cancelled",
                        self._name,
                        self._options.close_timeout,
                        extra={"socket": self._name},
                    )
                    owner.cancel()
        if self._life.state is not SocketState.CLOSED:
            # The owner was cancelled before it ever ran (closed right after start()): its
            # cleanup never happened, so it happens here.
            await self._finish()
        return list(self._unsent)

    async def __aenter__(self) -> ResilientSocket:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, frame: Any) -> bool:
        """Send ``frame`` (a JSON value, or a ``str`` sent as is).

        Returns True when it went out now, False when it was queued to go out after the next
        connect. A write refused before any of it went out (the connection already closing) is
        queued too, ahead of every message sent after it, queued or not (or sent on the next
        connection at once, True, when that one is open by then). A frame is sent at most once:
        one handed to the connection whose wait for the peer to take it failed with the
        connection may have arrived, so it is not sent again; it is logged as in doubt
        (WARNING) and counts as sent (True), as any frame written just before its connection
        dropped. A caller's timeout or cancellation ends its own write only: the writes that
        wait beside it for the peer to take the buffer (aiohttp's writers share that wait), the
        flush of the queue among them, go on; a write ended by a cancellation that is not its
        caller's fails its connection (1011, and the socket reconnects), the frame in doubt as
        above. Sends made while this connection's ``on_connect``
        callbacks run, by them or by tasks they started, go straight out ahead of the queue
        (lost with the connection: :class:`SocketClosed`, as the callbacks run again on the
        next one); once the callbacks are done, such a task sends as any other (queued behind
        what the flush of the queue has still to send).

        Raises :class:`~le_transport.errors.SocketQueueFull` when the queue is full,
        :class:`SocketClosed` when the socket is closed, and
        :class:`~le_transport.errors.InvalidMessage` before anything is sent or queued when the
        frame cannot be sent (a value that is not JSON, a ``str`` that is not valid text).
        """
        text = _text(frame) if isinstance(frame, str) else _dumps(frame, "the frame")
        return await self._send_text(text, None)

    async def request(
        self,
        type: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        headers: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Send ``{"kind": "req", "id": <fresh>, "type": type, "body": body}``; return the
        matching ``resp`` frame.

        - ``body``: a JSON value (None sends ``{}``).
        - ``headers``: the frame's ``headers`` list, sent as given when not empty: LiveEngage's
          header objects, each a JSON object naming its ``type`` (``{"type":
          ".ams.headers.ClientProperties", ...}``, as ``InitConnection`` carries them). A
          list or a tuple; anything else, or a value that is not JSON, is an
          :class:`~le_transport.errors.InvalidMessage` before anything is sent or queued.
        - ``timeout``: seconds, a positive number (else
          :class:`~le_transport.errors.InvalidMessage`).

        A request whose caller gave up (its timeout, a cancellation) while it was queued
        leaves the queue: it is never sent late, and no longer counts against ``max_queued`` and
        ``max_queued_bytes``.

        Raises :class:`SocketRequestTimeout` when no answer came within ``timeout`` seconds
        (default: the options' ``request_timeout``; the time spent queued counts; an answer
        read by then is returned, even one read in the turn the time ran out, or while the
        request's own write still waited for the peer to take the buffer; its ``sent`` is
        False when the request was still queued, never written, and was withdrawn: safe to
        send again), :class:`SocketClosed` when the connection it went out on was lost (it may
        or may not have been processed: retry if that is safe) or the socket closed, also when
        that happened by the time the timeout fired, though the request's failure had not
        reached it yet (the loss, not a timeout, is what happened), and
        :class:`SocketRequestError` when the answer's ``code`` is a number of 400 or more, an
        int or a float such as ``500.0`` (a 429 asks for at least a second's pause before
        retrying); a ``code`` that is no number (a str, a bool, NaN, an infinity) or is
        missing is no error: the answer is returned as it came.

        Answers arrive in order behind the unsolicited frames: while the socket is paused
        because the ``async for`` consumer left ``max_inbox`` frames unread, the answer waits
        unread too, and the request ends with :class:`SocketRequestTimeout` if the consumer
        does not catch up within ``timeout``.

        An ``on_frame`` handler runs in the task that reads the connection, so it cannot wait
        for an answer: awaited there, this raises
        :class:`~le_transport.errors.SocketDeadlock` at once, before anything is sent. Such a
        handler starts a task for the request and does not wait for it (or uses
        :meth:`send`): that task may request at once, while the handler still runs, and its
        answer is read when the handler returns. A request awaited in another task that the
        handler waits for (``asyncio.gather``, ``create_task`` then ``await``, ``wait_for``,
        ``shield``, a ``TaskGroup``) is not told apart: it is sent, but its answer cannot be
        read before the handler returns, so it fails with :class:`SocketRequestTimeout` after
        its ``timeout``, and the handler waits that long. A handler that waits for it only a
        while (``asyncio.wait`` with a ``timeout``, a ``shield`` under a timeout) gets no
        answer in that time, but the request is answered once the handler has returned.
        """
        if self._owner is not None and asyncio.current_task() is self._owner:
            raise SocketDeadlock(
                f"request {type!r} awaited in an on_frame handler of {self._name}: the handler "
                "runs in the task that reads the answers, so none could arrive; start a task "
                "for the request and do not await it in the handler"
            )
        if not isinstance(type, str) or not type:
            raise InvalidMessage(
                f"a request type must be a non-empty str, got {builtins.type(type).__name__}"
            )
        _check_timeout(timeout)
        if headers is not None:
            _check_frame_headers(headers)
        limit = self._options.request_timeout if timeout is None else timeout
        request_id, fut = self._pending.open()
        frame: dict[str, Any] = {"kind": "req", "id": request_id, "type": type}
        frame["body"] = {} if body is None else body
        if headers:
            frame["headers"] = list(headers)
        answered = False
        try:
            # JSON text escapes whatever is not ASCII: unlike a str given to send(), it always
            # encodes.
            text = _dumps(frame, f"the body of {type!r}")
            async with timeout_after(self._clock, limit):
                await self._send_text(text, request_id)
                answer = await fut
            answered = True
        except TimeoutError:
            if not fut.done() or fut.cancelled():
                timed_out = self._timed_out(type, request_id, limit)
                # The timeout hidden; the cause of a stopped socket's error kept.
                raise timed_out from timed_out.__cause__
            failed = fut.exception()
            if failed is not None:
                # Failed with its connection (or the socket's close) in the turn the time ran
                # out: the loss is what happened, as it would have been a turn earlier. A
                # timeout would say the request went out to a live connection and stayed
                # unanswered.
                # Its cause kept (the socket's final error, for a close), the timeout hidden.
                raise failed from failed.__cause__
            # Answered in the turn the time ran out (read before the timeout fired, its
            # caller not yet woken): the answer came in time and was taken off the pending
            # requests, so it is this caller's. Lost here, the caller of a request that was
            # done (a publish) was told none came, and may send it again.
            answer = fut.result()
            answered = True
        finally:
            if not answered:
                self._pending.discard(request_id)
                self._outbox.withdraw(request_id)
                if fut.done() and not fut.cancelled():
                    # Failed while the caller met another error first (the connection lost
                    # with the write in progress, the socket closing): retrieved here, or
                    # asyncio logs "Future exception was never retrieved".
                    fut.exception()
        code = failure_code(answer.get("code"))
        if code is not None:
            raise SocketRequestError(
                f"{type!r} (id {request_id}) answered with code {code}",
                code=code,
                body=answer.get("body"),
            )
        return answer

    def _timed_out(self, type: str, request_id: str, limit: float) -> SocketError:
        """What a request that got no answer within ``limit`` seconds raises (its future not
        done): :class:`SocketClosed` when the connection it went out on was given up by then
        (its requests not yet failed: the owner fails them once the read ends, which a
        connection ended from outside the read, a failed write or a dead peer, reaches only
        when its close does, up to a close's grace later) or the socket is closing, as it
        would a moment later; else :class:`SocketRequestTimeout`, saying whether it was ever
        written (``sent``)."""
        sent_on = self._pending.sent_on(request_id)
        if self._closing:
            # A socket that stopped on its own says why, as its other requests are told (the
            # final error their cause); one closed by its caller, that it was closed.
            error = self._error
            closed = SocketClosed(
                (
                    f"the socket {self._name} stopped ({error}) before"
                    if error is not None
                    else f"the socket {self._name} was closed before"
                )
                + f" {type!r} (id {request_id}) was "
                + ("answered" if sent_on is not None else "sent: it was still queued, never sent")
            )
            closed.__cause__ = error
            return closed
        if sent_on is not None and (not self._life.is_current(sent_on) or self._ended is not None):
            return SocketClosed(self._lost_in_flight())
        if sent_on is None:
            return SocketRequestTimeout(
                f"no answer to {type!r} (id {request_id}) within {limit:g} s: it was never "
                "sent (queued while the socket was not open) and was withdrawn, so it may be "
                "sent again",
                sent=False,
            )
        return SocketRequestTimeout(f"no answer to {type!r} (id {request_id}) within {limit:g} s")

    def _lost_in_flight(self) -> str:
        """What a request lost with its connection is told."""
        return (
            f"the connection of {self._name} was lost with the request in flight; it may or "
            "may not have been processed: retry if that is safe"
        )

    async def _send_text(self, text: str, request_id: str | None, order: int = 0) -> bool:
        """Write ``text`` now or queue it (see :meth:`send`); ``order``, when the message was
        numbered already (a write that failed and is sent again), keeps its place."""
        if self._closing:
            # Closed, or closing: set whenever the socket is (by close() and by _finish, in the
            # same step as the state), so that an open socket's send reads one field here.
            self._raise_if_closed()
        if not order:
            # Where this send stands among the socket's sends, numbered as it is made (in the
            # same step as the write or the queueing: nothing runs in between): a write that
            # fails with its connection goes back into the queue by it, ahead of whatever was
            # sent after it, in whatever order the failures come.
            order = self._sends = self._sends + 1
        conn = self._conn
        direct = _ON_CONNECT.get()
        if (
            direct is not None
            and direct[0] == id(self)
            and conn is not None
            and self._life.is_current(direct[1])
            and self._setting_up()
        ):
            # An on_connect callback (or a task it started) while the callbacks of this
            # connection run: straight out, ahead of the queue, on this connection only. Once
            # they are done, such a task sends as any other (the context variable lives on in
            # every task a callback started).
            if self._ended is not None:
                # Ending: a write now would go to a connection already given up on. The
                # callbacks run again on the next connection.
                raise SocketClosed("the connection was lost during on_connect")
            if request_id is not None:
                self._pending.sent(request_id, direct[1])
            try:
                await self._write(conn, text)
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._connection_broke(direct[1], exc)
                raise SocketClosed("the connection was lost during on_connect") from None
            except Exception as exc:
                if request_id is not None:
                    self._pending.sent(request_id, None)
                raise self._unwritable(conn, exc) from None
            return True
        epoch = self._ready_epoch
        if epoch is not None and conn is not None and not self._outbox:
            if request_id is not None:
                self._pending.sent(request_id, epoch)
            try:
                await self._write(conn, text)
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._connection_broke(epoch, exc)
                if not write_never_began(exc):
                    # The frame was handed to the transport and the wait for the peer to take
                    # it failed: it may have arrived. Never sent again (at most once).
                    return self._written_in_doubt(request_id)
                if request_id is not None:
                    if not self._pending.waiting(request_id):
                        # Failed meanwhile with the connection it went out on (SocketClosed:
                        # "retry if that is safe"): its caller was told, and decides. Sent
                        # now, on the next connection, it would go out behind its back.
                        return False
                    self._pending.sent(request_id, None)
                if self._closing:
                    # Closed for good while the write waited (a peer that stopped reading):
                    # a queue no connection will take would lose the message silently.
                    raise SocketClosed(
                        f"the socket {self._name} closed while the message was being written; "
                        "it was not sent"
                    ) from None
                if self._ready_epoch is not None:
                    # The write was refused only after a newer connection was made ready (it
                    # waited past the reconnect, in a wrapper's delay): that one's queue went
                    # out already, so this goes out there now. Put back, it would wait for the
                    # connection after it, and every send with it.
                    return await self._send_text(text, request_id, order)
                # Refused before any of it was written (the transport closing): it waits for
                # the next connection, ahead of what was sent after it (the queue, and the
                # writes this connection refused that were made after it).
                self._outbox.put_back(Outgoing(text, request_id, order=order))
                return False
            except Exception as exc:
                if request_id is not None:
                    self._pending.sent(request_id, None)
                raise self._unwritable(conn, exc) from None
            return True
        self._outbox.put(Outgoing(text, request_id, order=order))
        return False

    def _written_in_doubt(self, request_id: str | None) -> bool:
        """A frame sent straight out was handed to the transport, and its connection failed
        while the write waited for the peer to take it: the peer may have it. It is never
        sent again (at most once). A request stays on its connection and fails with it
        (:class:`SocketClosed`: it may or may not have been processed; True here, its caller
        then awaits that). A message counts as sent (True), as any frame written just before
        its connection dropped does, and is logged as in doubt; unless the socket was closed
        for good meanwhile (a close cuts a write waiting on a peer that stopped reading):
        :class:`SocketClosed` then, as for any send that finds the socket closed."""
        if request_id is not None:
            return True
        if self._closing:
            raise SocketClosed(
                f"the socket {self._name} closed while the message was being written; it may "
                "or may not have been delivered, and is not sent again"
            ) from None
        _log.warning(
            "%s: a message was being written when its connection was lost; it may or may not "
            "have been delivered, and is not sent again",
            self._name,
            extra={"socket": self._name},
        )
        return True

    def _unwritable(self, conn: Connection, exc: Exception) -> SocketClosed:
        """A message the write refused, and not because the connection failed: as for a queued
        one (_flush), the connection ends (a frame may be half written; 1011, reconnect) and
        the caller gets a typed error rather than whatever the write raised."""
        _log.error(
            "%s: a message could not be written (%s); ending the connection",
            self._name,
            type(exc).__name__,
            extra={"socket": self._name, "error": type(exc).__name__},
        )
        if self._conn is conn:
            self._end_connection(
                Disconnect.failed_by_client(1011, f"{type(exc).__name__} writing a message"),
                self._lost_peer_grace(),
            )
        return SocketClosed(
            f"the message could not be written ({type(exc).__name__}); it was not sent, and "
            f"the connection of {self._name} was ended"
        )

    async def _write(self, conn: Connection, text: str) -> None:
        """Write ``text`` on ``conn``. The caller's own cancellation ends this write only
        (:func:`_go_on_sparing_waits`), and raises as it came; a cancellation that is not the
        caller's (something else cancelled what the write waited on) is a connection failure,
        :class:`_WriteCancelledElsewhere`, never a bare CancelledError."""
        step = conn.send_text(text).__await__()
        before = _cancels()
        try:
            # The first step at once, as ``await`` takes it: a write that need not wait (the
            # usual case) ends here, written in its caller's step (writes go out in the order
            # they were made), for the cost of a generator step.
            waits_on = step.send(None)
        except StopIteration:
            self._last_sent = self._clock.now()
            return
        except asyncio.CancelledError:
            # Nothing could cancel the task during that step: this is a shared drain future
            # someone else cancelled, met before the write could wait on it.
            if _cancelled_since(before):
                raise
            _log.warning(
                "%s: a write met a wait cancelled by something other than its caller; its "
                "frame may or may not have gone out, and the connection is failed (1011)",
                self._name,
                extra={"socket": self._name},
            )
            raise _WriteCancelledElsewhere("the write was cancelled from outside") from None
        try:
            await _go_on_sparing_waits(step, waits_on)
        except asyncio.CancelledError:
            if _cancelled_since(before):
                raise
            _log.warning(
                "%s: a write was cancelled by something other than its caller; its frame may "
                "or may not have gone out, and the connection is failed (1011)",
                self._name,
                extra={"socket": self._name},
            )
            raise _WriteCancelledElsewhere("the write was cancelled from outside") from None
        self._last_sent = self._clock.now()

    def _connection_broke(self, epoch: int, exc: BaseException) -> None:
        if self._life.is_current(epoch):
            self._end_connection(
                Disconnect.failed_by_client(1011, "a write cancelled from outside its task")
                if isinstance(exc, _WriteCancelledElsewhere)
                else Disconnect.abnormal(error=type(exc).__name__),
                self._lost_peer_grace(),
            )

    def _end_connection(self, disconnect: Disconnect, grace: float) -> None:
        """End the current connection from outside the owner's read: record why (the first
        reason wins) and close it within ``grace`` seconds, which makes the read return."""
        self._unpause()
        conn = self._conn
        if conn is None or self._ended is not None:
            return
        self._ended = disconnect
        self._ready_epoch = None
        # The peer hears why when the client failed the connection itself (1011: an error of
        # ours); otherwise a normal close.
        code = disconnect.code if disconnect.kind is DisconnectKind.FAILED_BY_CLIENT else None
        self._closer = asyncio.get_running_loop().create_task(
            conn.close(self._clock, grace, code=code or 1000),
            name=f"le_transport socket close {self._name}",
        )

    def _lost_peer_grace(self) -> float:
        # A caller's close gets the full handshake; a lost peer is not waited for long.
        return min(1.0, self._options.close_timeout)

    def _raise_if_closed(self) -> None:
        if self._error is not None and (self._closing or self.closed):
            # The same error is raised to every later caller: without its old traceback, so
            # that a caller retrying in a loop does not grow it without bound.
            raise self._error.with_traceback(None)
        if self._closing or self.closed:
            raise SocketClosed(f"the socket {self._name} is closed")

    # -- receiving --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        """The next unsolicited frame; ends when the socket is closed (raises its final error
        if it stopped on one). Taking frames resumes a socket paused on a full inbox once
        half of it is free."""
        while not self._inbox:
            if self._life.state is SocketState.CLOSED:
                if self._error is not None:
                    raise self._error.with_traceback(None)
                raise StopAsyncIteration
            # Awaited here, not in a helper coroutine: an idle fleet holds one such wait per
            # socket, and a coroutine frame per wait.
            waiter = self._waiter()
            try:
                await waiter
            finally:
                self._forget(waiter)
        inbox = self._inbox
        frame, size = inbox.popleft()
        self._inbox_bytes -= size
        # Resumed at half the bounds, not at the first frame taken: a steadily slow consumer
        # pauses the socket once per half an inbox, not once per frame.
        if self._resume is not None and self._inbox_half_free(len(inbox)):
            self._unpause()
        return frame

    def _inbox_half_free(self, unread: int) -> bool:
        """Whether the consumer has taken the inbox down to half of each bound (0: none)."""
        opts = self._options
        return (not opts.max_inbox or unread <= opts.max_inbox // 2) and (
            not opts.max_inbox_bytes or self._inbox_bytes <= opts.max_inbox_bytes // 2
        )

    def _waiter(self) -> asyncio.Future[None]:
        """A future that the next change (a frame in the inbox, open, closed) resolves."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def states(self) -> AsyncIterator[StateEvent]:
        """An async iterator of this socket's state events from now on; ends after ``closed``."""
        queue: asyncio.Queue[StateEvent | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        else:
            if self._subscribers is None:
                self._subscribers = weakref.WeakSet()
            self._subscribers.add(queue)
        return self._state_stream(queue)

    async def _state_stream(
        self, queue: asyncio.Queue[StateEvent | None]
    ) -> AsyncIterator[StateEvent]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            if self._subscribers is not None:
                self._subscribers.discard(queue)

    def _setting_up(self) -> bool:
        """Whether the current connection's ``on_connect`` callbacks are still running: the
        only time their sends go straight out. Not once the queue after them is being
        flushed: a task a callback started then sends as any other, behind the queue (straight
        out, it went out in the middle of what was sent before it)."""
        setup = self._setup
        return setup is not None and not self._flushing and not setup.done()

    def _runs_callbacks_in(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` runs this socket's callbacks (the owner runs ``on_frame``, a task of
        its own ``on_connect``): nothing that waits for the socket to close may wait there."""
        return task is not None and (task is self._owner or task is self._setup)

    def add_on_state(self, callback: Callable[[StateEvent], object]) -> None:
        """Call ``callback`` with every state event of this socket: a plain callable, called
        synchronously (an async one is a :class:`~le_transport.errors.ConfigurationError`: its
        coroutine would never run)."""
        self._on_state = (*self._on_state, *check_hooks(callback, owner="on_state hooks"))

    def add_on_connect(self, callback: OnConnect) -> None:
        """Run ``callback(ws)`` after every connect from the next one on.

        ``callback`` must be callable (else :class:`~le_transport.errors.ConfigurationError`)
        and return an awaitable, as for the constructor's ``on_connect``. A socket that was
        closed (or stopped) never connects again: :class:`SocketClosed`, as from :meth:`start`.
        """
        if self._closing or self.closed:
            self._raise_if_closed()
        self._on_connect = (*self._on_connect, *check_on_connect((callback,)))

    # -- the owner --------------------------------------------------------------------------

    async def _drive(self) -> None:
        # The owner from its first step, even when an eager task factory runs it inside start().
        self._owner = asyncio.current_task()
        opts = self._options
        failures = 0
        fast_drops = 0
        auth_failures = 0
        server_errors = 0  # re-authenticating closes that refused nothing (1011), in a run
        first_failure_at: float | None = None
        # How the owner's end is logged: an ERROR, but for a stop nothing is wrong with.
        stop_level = logging.ERROR
        # A connection the re-login escalation made, for the next turn of the loop to serve.
        handed: Connection | None = None
        try:
            while not self._closing:
                self._life.to(SocketState.CONNECTING)
                self._emit("connecting", attempt=failures + 1)
                conn: Connection | None = None
                try:
                    conn, handed = handed or await self._dialer.dial(), None
                except DialFailed as exc:
                    closed = self._provider_closed(exc)
                    if closed is not None:
                        # Closed is final for a provider: every reconnect would meet it again
                        # (a WARNING at each, for ever). One WARNING, as the engine's keepalive
                        # says of the same.
                        stop_level = logging.WARNING
                        raise SocketClosed(
                            f"{self._name}: cannot connect: its auth provider was closed on its "
                            f"own, not with the socket ({type(closed).__name__}: "
                            f"{error_text(closed)}); reconnecting cannot help"
                        ) from closed
                    disconnect, rejected = exc.disconnect, exc.credentials
                    self._life.to(SocketState.RECONNECTING)
                    self._emit("connect_failed", reason=disconnect.describe())
                except AuthenticationError as exc:
                    raise SocketAuthFailed(
                        f"{self._name}: no credentials for the socket: {exc}"
                    ) from exc
                except TransportError as exc:
                    # Not a failed connect: a mistake no reconnect can fix (an unknown
                    # service, a path that is not a path, an account the Domain API refuses),
                    # final as it is over HTTP.
                    raise self._cannot_connect(exc) from exc
                if conn is not None:
                    rejected = conn.credentials
                    disconnect = await self._serve(conn)
                if disconnect.kind is DisconnectKind.BY_CALLER or self._closing:
                    return
                if self._error is not None:
                    # The connection recorded why the socket must stop (an on_connect
                    # callback that returned no awaitable): reconnecting would meet it again.
                    raise self._error
                if conn is not None and self._readied and self._alive_for >= opts.healthy_after:
                    # Healthy: it became ready (on_connect done, the queue flushed) and stayed
                    # up long enough. A connection whose on_connect failed (or never ended)
                    # is a failed connect like any other, however long it took to fail: else a
                    # resubscribe refused after a slow answer would reconnect every second.
                    failures = fast_drops = auth_failures = server_errors = 0
                    first_failure_at = None
                verdict = opts.close_policy.classify(disconnect, fast_drops)
                fast_drops = verdict.fast_drops
                reauthenticate = verdict.action is CloseAction.REAUTHENTICATE
                if not reauthenticate:
                    # Re-authentications in a row: any other end (a connection the server
                    # accepted, an outage's 503, a drop) breaks the run, so a gateway that
                    # flaps between 401 and 503 while every re-login works is not taken for
                    # credentials that keep being refused.
                    auth_failures = 0
                elif not verdict.refused:
                    # The server failed on its side (1011): a fresh login once in the run (as
                    # LivePerson's SDK does), then an outage like any other, on the backoff:
                    # a login per close would only add load, and a run of them is no refusal
                    # (a backend hiccup must not stop every socket for good). Being no refusal,
                    # it breaks a run of them, as a 503 does.
                    reauthenticate = not server_errors
                    server_errors += 1
                    auth_failures = 0
                if verdict.action is CloseAction.FAIL:
                    raise self._rejected(verdict.reason, disconnect)
                if verdict.action is CloseAction.STOP:
                    self._emit("server_closed", reason=verdict.reason)
                    return
                if reauthenticate:
                    if verdict.refused:
                        auth_failures += 1
                    if auth_failures > opts.max_auth_failures:
                        raise SocketAuthFailed(
                            f"{self._name}: still rejected after {opts.max_auth_failures} "
                            f"re-authentications ({verdict.reason})"
                        )
                    self._emit("reauthenticating", reason=verdict.reason)
                    try:
                        await self._dialer.reauthenticate(rejected)
                    except AuthenticationError as exc:
                        raise SocketAuthFailed(
                            f"{self._name}: re-authentication failed: {exc}"
                        ) from exc
                    except TransportError as exc:
                        _log.warning(
                            "%s: invalidating credentials failed: %s",
                            self._name,
                            type(exc).__name__,
                            extra={"socket": self._name, "error": type(exc).__name__},
                        )
                failures += 1
                now = self._clock.now()
                if first_failure_at is None:
                    first_failure_at = now
                escalating = bool(
                    opts.escalate_after
                    and verdict.escalates
                    and failures % opts.escalate_after == 0
                )
                elapsed = now - first_failure_at
                backoff = opts.backoff
                rand = self._rng.random()
                delay = backoff.next_delay(failures, elapsed, rand)
                gave_up: str | None = None
                if delay is None:
                    gave_up = (
                        f"{self._name}: gave up after {failures} failed reconnects "
                        f"(last: {disconnect.describe()})"
                    )
                else:
                    # The least pause the server asked for (a Retry-After, a 429's second),
                    # spread by the same draw as the backoff's jitter, so that a fleet refused
                    # together does not come back together.
                    delay = verdict.pause(delay, jitter=backoff.jitter, rand=rand)
                    if backoff.deadline is not None and elapsed + delay > backoff.deadline:
                        # The backoff gives up rather than pause past its deadline; so does a
                        # pause the server made longer.
                        gave_up = (
                            f"{self._name}: gave up after {failures} failed reconnects: the "
                            f"{round(delay, 3)} s pause asked for ({verdict.reason}) would end "
                            f"past the reconnect deadline of {backoff.deadline:g} s"
                        )
                if gave_up is not None and not escalating:
                    raise SocketClosed(gave_up)
                if gave_up is None and delay is not None:
                    if not escalating:
                        self._emit(
                            "reconnecting",
                            in_seconds=round(delay, 3),
                            attempt=failures,
                            reason=verdict.reason,
                        )
                    # Before an escalation too (its event says how long the socket paused):
                    # the re-login loop makes its first connect at once, and a fleet failing
                    # together would escalate, and connect, together.
                    await self._clock.sleep(delay)
                if escalating:
                    # Its connects go through the pacer (_paced_dial), as the socket's own do.
                    handed = await self._escalate_to_relogin(
                        failures, disconnect, paused=delay if gave_up is None else None
                    )
                    if self._closing:
                        # Closed from inside the escalation (close() there returns at once):
                        # a stop asked for, not a reconnect that gave up; a connection the
                        # escalation returned is closed on the way out.
                        return
                    if handed is not None:
                        self.reconnects += 1
                        continue
                    if gave_up is not None:
                        # The escalation (its refresh) was the last thing left to try.
                        raise SocketClosed(gave_up)
                await self._pace()
                self.reconnects += 1
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception as exc:
            # Whatever ends the owner, the socket ends closed with a typed error: never a
            # task that died with an exception nobody retrieves.
            if isinstance(exc, SocketClosed):
                self._error = exc
            else:
                self._error = SocketClosed(f"{self._name}: stopped on {type(exc).__name__}")
                self._error.__cause__ = exc
            _log.log(
                stop_level,
                "socket stopped: %s",
                self._error,
                extra={"socket": self._name, "error": type(exc).__name__},
            )
        finally:
            if handed is not None:
                # Made by the escalation, which then closed the socket (close() from inside
                # it) and returned it: never served, and left open it was never closed.
                # Its close meets the owner's cancellation (that close() asked for) and cuts
                # the connection at once: the cancellation is the close's, so it ends here.
                with contextlib.suppress(asyncio.CancelledError):
                    await handed.close(self._clock, self._lost_peer_grace())
            await self._finish()

    def _provider_closed(self, failed: DialFailed) -> EngineClosed | None:
        """The :class:`~le_transport.errors.EngineClosed` the auth provider's ``credentials()``
        raised, when that is why the connect ``failed`` and the socket is not closing: the
        provider was closed on its own (``auth.close()``, or another engine's close of a
        provider they share), its engine and this socket left open. An engine closes its
        sockets before its providers, so its own close never gets here; and an EngineClosed
        from resolving the host (the engine's own, in the instant its close begins and before
        it reaches this socket) is not this one."""
        cause = failed.__cause__
        if (
            isinstance(cause, EngineClosed)
            and failed.disconnect.error == _CLOSED_CREDENTIALS
            and not self._closing
        ):
            return cause
        return None

    async def _escalate_to_relogin(
        self, failures: int, last: Disconnect, *, paused: float | None
    ) -> Connection | None:
        """Hand the reconnect to the re-login loop, ``paused`` seconds (the socket's own
        backoff pause, None when the backoff gave up) after the ``failures``-th failure."""
        if paused is None:
            self._emit("escalating", failures=failures, reason=last.describe())
        else:
            self._emit(
                "escalating", failures=failures, reason=last.describe(), paused=round(paused, 3)
            )
        try:
            if self._escalate is not None:
                return await self._escalate(
                    EscalationRequest(self._name, failures, last), self._paced_dial
                )
            await self._dialer.refresh()
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._closing:
                # The socket was closed while the escalation ran (by the escalation itself,
                # whose connect then refuses with SocketClosed, or from elsewhere): the close
                # is what happened, not a re-login that failed, and the socket ends as closed
                # by its caller, without an error.
                _log.debug(
                    "%s: the re-login escalation raised %s after the socket was closed",
                    self._name,
                    type(exc).__name__,
                    extra={"socket": self._name, "error": type(exc).__name__},
                )
                return None
            if isinstance(exc, AuthenticationError):
                raise SocketAuthFailed(f"{self._name}: re-login failed: {exc}") from exc
            final = self._final_refusal(exc)
            if final is not None:
                # A refusal the close policy makes final (a 403 upgrade, a fail code) is as
                # final when the re-login loop's connect meets it (the loop re-raises it
                # rather than retrying) as when the socket's own dial does.
                reason, disconnect = final
                raise self._rejected(f"{reason} (in the re-login loop)", disconnect) from exc
            if isinstance(exc, TransportError) and is_setup_error(exc):
                # So is a setup mistake (an unknown service, an account the Domain API now
                # refuses) that the loop's connect or re-resolve met.
                raise self._cannot_connect(exc) from exc
            raise SocketClosed(
                f"{self._name}: the re-login loop gave up after {failures} failed reconnects: "
                f"{type(exc).__name__}"
            ) from exc

    async def _pace(self) -> None:
        """Wait for a reconnect slot of the process's pacer (every connect after the first)."""
        paced = await self._pacer.acquire()
        if paced > 0:
            self._emit("paced", waited=round(paced, 3))

    async def _paced_dial(self) -> Connection:
        """One connect attempt for the re-login loop: through the reconnect pacer, as every
        reconnect of the socket's own is, so that the sockets a shared re-login round releases
        together connect at the pacer's rate, not all at once.

        Once the socket is closing it connects no more: :class:`SocketClosed` (an escalation
        may call it from a task of its own, after the socket closed; the connection it made
        was served and closed by nobody), and a connection made while the socket closed is
        closed here, not handed over."""
        self._refuse_connect()
        await self._pace()
        self._refuse_connect()
        conn = await self._dialer.dial()
        if self._closing:
            await conn.close(self._clock, self._lost_peer_grace())
            self._refuse_connect()
        return conn

    def _refuse_connect(self) -> None:
        """Refuse a connect for the re-login escalation once the socket is closing."""
        if self._closing:
            raise SocketClosed(
                f"the socket {self._name} is closed: the re-login loop's connect is refused"
            )

    def _cannot_connect(self, exc: TransportError) -> SocketClosed:
        """The final error of a socket whose connect met ``exc``, a mistake no reconnect can
        fix (its ``__cause__``, set by the caller): said with ``exc``'s own words, which never
        hold a secret."""
        return SocketClosed(
            f"{self._name}: cannot connect, and reconnecting cannot help: "
            f"{type(exc).__name__}: {exc}"
        )

    def _final_refusal(self, exc: BaseException) -> tuple[str, Disconnect] | None:
        """The refusal the close policy makes final (its reason and facts), if ``exc`` is a
        :class:`DialFailed` carrying one, or was raised from one (an escalation may wrap it)."""
        seen: BaseException | None = exc
        for _ in range(16):  # a cause chain is short; a cycle must not hang the owner
            if seen is None:
                return None
            if isinstance(seen, DialFailed):
                verdict = self._options.close_policy.classify(seen.disconnect)
                if verdict.action is CloseAction.FAIL:
                    return verdict.reason, seen.disconnect
            seen = seen.__cause__
        return None

    def _rejected(self, reason: str, disconnect: Disconnect) -> SocketRejected:
        """The final error of a refusal ``disconnect``: its HTTP status (0 for none), and the
        close code when it was a close frame (None for an answer with a status)."""
        close_code = disconnect.code if disconnect.kind is DisconnectKind.CLOSE_FRAME else None
        return SocketRejected(
            f"{self._name}: {reason}", status=disconnect.status or 0, close_code=close_code
        )

    async def _serve(self, conn: Connection) -> Disconnect:
        """Run one connection until it ends; the facts of how it ended.

        The owner reads the connection itself: an idle socket holds no reader task, and what
        ends the connection from elsewhere closes it (:meth:`_end_connection`), which ends
        the read.
        """
        epoch = self._life.to(SocketState.OPEN)
        self.connects += 1
        opened_at = self._clock.now()
        self._last_activity = self._last_sent = opened_at
        self._conn, self._ended = conn, None
        self._readied = self._flushing = False
        self._emit("open", epoch=epoch)
        setup: asyncio.Task[None] | None = None
        read_end: Disconnect | None = None
        try:
            if self._on_connect or self._outbox:
                # The callbacks may wait for answers, which only the owner's read brings in:
                # they (and the queue after them) run beside it, in a task of their own. So
                # does a queue without callbacks: a peer answering what it reads (a resp, a
                # publish's echo) fills our side while we do not read, stops reading itself,
                # and the flush waited on it for ready_timeout, the frames written meanwhile
                # lost with the connection it then ended (hundreds, on a long queue).
                setup = self._setup = asyncio.get_running_loop().create_task(
                    self._set_up(conn, epoch), name=f"le_transport socket on_connect {self._name}"
                )
            else:
                await self._open_up_in_time(conn, epoch)
            # The read, here rather than in a coroutine of its own: one frame less per socket.
            error: str | None = None
            close_code: int | None = None
            refused: Disconnect | None = None
            try:
                for early in conn.early_frames:
                    if isinstance(early, str):
                        await self._dispatch(early, epoch)
                    else:
                        await self._deliver(early, epoch, len(early))
                ws = conn.ws
                # Not once the end is decided: a receive() after our close began would run
                # aiohttp's own close handshake, which waits for the peer without a timeout.
                while self._ended is None:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        self._last_activity = self._clock.now()
                        await self._dispatch(msg.data, epoch)
                    elif msg.type is aiohttp.WSMsgType.BINARY:
                        self._last_activity = self._clock.now()
                        await self._deliver(msg.data, epoch, len(msg.data))
                    elif msg.type is aiohttp.WSMsgType.CLOSE:
                        close_code = int(msg.data)
                        break
                    else:
                        # CLOSED, CLOSING (closed from elsewhere) or ERROR: over.
                        if msg.type is aiohttp.WSMsgType.ERROR:
                            refused = read_error_disconnect(ws, msg.data)
                            if refused.kind is DisconnectKind.FAILED_BY_CLIENT:
                                # A frame aiohttp would not take: the server's doing, not a
                                # drop, and not a sign of a revoked token.
                                _log.warning(
                                    "%s: the server sent %s; the connection was failed with "
                                    "code %d, reconnecting",
                                    self._name,
                                    refused.error,
                                    refused.code,
                                    extra={
                                        "socket": self._name,
                                        "error": refused.error,
                                        "close_code": refused.code,
                                    },
                                )
                        break
            except Exception as exc:
                # Whatever stops the read ends the connection: the owner must always learn
                # that it is over, or it would wait on a dead connection forever.
                error = type(exc).__name__
                if not isinstance(exc, (aiohttp.ClientError, OSError)):
                    # A wrapper's or a clock's error, maybe: its traceback, redacted.
                    _log.error(
                        "%s: reading failed (%s: %s); dropping the connection",
                        self._name,
                        error,
                        error_text(exc),
                        exc_info=redacted_exc_info(exc),
                        extra={"socket": self._name, "error": error},
                    )
            # A close frame is the only way to learn a code; aiohttp reports a bare EOF as
            # 1000, but without a close frame it is an abnormal drop (1006).
            if close_code is not None:
                read_end = Disconnect.close_frame(close_code)
            elif refused is not None:
                read_end = refused
            else:
                read_end = Disconnect.abnormal(error=error)
        finally:
            # The connection's end: its lifetime is counted to here, not to after the waits
            # below (a callback slow to end, up to TIDY_UP_GRACE, made a fast 1006 drop a slow
            # one for the close policy, and a connection the ready_timeout ended live 30 s on).
            ended_at = self._clock.now()
            self._ready_epoch = None
            self._stop_keepalive()
            if self._ended is None:
                # The read ended first (or the owner was cancelled): later reasons are moot.
                self._ended = read_end or Disconnect.abnormal()
            if not self._closing:
                self._life.to(SocketState.RECONNECTING)
            helpers = [task for task in (setup, self._probe) if task is not None]
            if self._probes_ending:
                helpers.extend(self._probes_ending)
            for task in helpers:
                task.cancel()
            lifetime = ended_at - opened_at
            disconnect = attrs.evolve(self._ended, lifetime=lifetime)
            if read_end is not None:
                # The read ended (the owner was not cancelled): the connection is lost, said
                # now, before its requests fail and before the waits below.
                # A peer the keepalive found dead was alive only until the last frame it sent:
                # counted to the end (interval + timeout, 40 s for messaging), a peer silent
                # from the start passed for a healthy connection at every connect, the backoff
                # never grew and the re-login (which re-resolves the host) never came.
                dead = disconnect.kind is DisconnectKind.DEAD_PEER
                self._alive_for = max(0.0, self._last_activity - opened_at) if dead else lifetime
                if disconnect.kind is not DisconnectKind.BY_CALLER:
                    self._emit("lost", reason=disconnect.describe(), lifetime=round(lifetime, 3))
            # Nothing is read from here on, so no answer can come: the requests in flight on
            # the connection fail now, not once it is closed and its helpers have ended (a
            # close handshake's grace, a callback that swallows its cancellation: up to
            # TIDY_UP_GRACE), their callers waiting meanwhile for nothing (or, past their
            # timeout, told that no answer came, where the connection was lost).
            failed = self._pending.fail_epoch(
                epoch, functools.partial(SocketClosed, self._lost_in_flight())
            )
            if failed:
                _log.info(
                    "%s: %d requests in flight failed with the connection",
                    self._name,
                    failed,
                    extra={"socket": self._name, "failed": failed},
                )
            closer = self._closer
            if closer is None:
                await conn.close(self._clock, self._lost_peer_grace())
            else:
                # Bounded by its own grace; its failures are its own (already logged).
                await asyncio.wait({closer})
                if not closer.cancelled():
                    closer.exception()
            if helpers:
                # Bounded (TIDY_UP_GRACE): a callback that catches its cancellation, or a
                # probe's write that a middleware never ends, held up the reconnect (and
                # close()) for ever. What is still running then is logged and left to run; a
                # stale task meets a connection that is no longer current and acts on none.
                await wait_tidy_up(helpers, self._clock, owner=self._name)
            self._probe = self._setup = self._probes_ending = None
            self._conn = self._closer = self._ended = None
        return disconnect

    async def _open_up_in_time(self, conn: Connection, epoch: int) -> None:
        """:meth:`_open_up` in the owner, bounded by ``ready_timeout`` of no progress. A method
        of its own: the timeout (a local of the frame that then reads for the connection's
        life) kept its finished watchdog task alive with it, on every idle socket."""
        # The connection ends when the time is up (on_expiry), not once the cancellation is
        # through: a write that swallowed it held the connection open and never ready.
        timeout = stall_timeout(
            self._clock,
            self._options.ready_timeout,
            functools.partial(self._progressed_at, epoch),
            on_expiry=functools.partial(self._not_ready_in_time, conn),
        )
        try:
            async with timeout:
                await self._open_up(conn, epoch)
        except TimeoutError:
            if not timeout.expired:
                raise

    async def _set_up(self, conn: Connection, epoch: int) -> None:
        """The ``on_connect`` callbacks, then the queue, while the owner reads."""
        # Known as the callbacks' task from its first step: under an eager task factory
        # (Python 3.12+) the callbacks run inside create_task, before it returns the task for
        # the owner to store, and a close() from a callback must know where it runs.
        self._setup = asyncio.current_task()
        _ON_CONNECT.set((id(self), epoch))
        # The callback running (a list of one at most), for the ready_timeout's log to name.
        running: list[OnConnect] = []
        # The connection ends when the time is up (on_expiry), not once the cancellation is
        # through: a callback that caught it held the connection open and never ready for as
        # long as the server kept it (for ever, on a quiet one), the socket never reconnecting.
        timeout = stall_timeout(
            self._clock,
            self._options.ready_timeout,
            functools.partial(self._progressed_at, epoch),
            on_expiry=functools.partial(self._not_ready_in_time, conn, running),
        )
        try:
            async with timeout:
                await self._call_on_connect(conn, epoch, running)
        except TimeoutError:
            if not timeout.expired:
                raise
        except Exception as exc:
            # The clock failed (the timeout could not be kept; logged where it failed): this
            # connection ends, and the owner's own use of the clock decides what follows.
            if self._conn is conn:
                self._end_connection(
                    Disconnect.failed_by_client(
                        1011, f"the ready_timeout's clock failed ({type(exc).__name__})"
                    ),
                    self._lost_peer_grace(),
                )

    def _progressed_at(self, epoch: int) -> float:
        """When connection ``epoch`` last made progress: a frame read, or one written whole;
        now, while a request sent on it waits for its answer (its own timeout bounds that
        wait: a slow answer is no dead peer). A request queued for a later connection is no
        progress of this one (other tasks' polls would keep a stuck set-up alive for ever)."""
        if self._pending.awaits_answer_on(epoch):
            return self._clock.now()
        return max(self._last_activity, self._last_sent)

    def _not_ready_in_time(self, conn: Connection, running: Sequence[OnConnect] = ()) -> None:
        """The connection made no progress for ``ready_timeout`` while becoming ready (its
        ``on_connect`` callbacks and the flush of the queue): a peer that accepted the upgrade
        and stopped reading, or callbacks that hang with nothing read or written. Nothing else
        would end it (the keepalive watches only a ready connection), so it ends as a dead
        peer, and the owner reconnects. Called when the time is up, before the set-up is
        cancelled (which a callback may swallow); ``running``: the callback then running, if
        any, named in the log."""
        if self._conn is not conn or self._ended is not None:
            # Ended already, for another reason (its set-up, cancelled then, swallowed it and
            # ran on into this timeout): nothing to end, and nothing to say.
            return
        during = (
            f"on_connect callback {_callable_name(running[0])} running"
            if running
            else "on_connect and the queue's flush"
        )
        _log.warning(
            "%s: the connection made no progress for %g s while becoming ready (ready_timeout: "
            "%s); taken for a dead peer, reconnecting",
            self._name,
            self._options.ready_timeout,
            during,
            extra={"socket": self._name, "ready_timeout": self._options.ready_timeout},
        )
        self._end_connection(
            Disconnect.dead_peer(error="not ready within ready_timeout"), self._lost_peer_grace()
        )

    async def _call_on_connect(
        self, conn: Connection, epoch: int, running: list[OnConnect] | None = None
    ) -> None:
        """The callbacks one after the other, then the queue; a failure ends the connection.
        ``running`` holds the callback running, while one runs."""
        before = _cancels()
        try:
            for callback in self._on_connect:
                if self._ended is not None or self._conn is not conn:
                    # The connection ended while an earlier callback ran, which returned all
                    # the same (it caught its cancellation): the rest run on the next one. A
                    # task left running past TIDY_UP_GRACE went on to them here, and ran them
                    # again on the connection after (a second subscription, say).
                    return
                pending = callback(self)
                if not inspect.isawaitable(pending):
                    self._not_awaitable(conn, callback, pending)
                    return
                if running is not None:
                    running[:] = (callback,)
                try:
                    await pending
                finally:
                    if running is not None:
                        running.clear()
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_since(before):
                raise
            # A cancellation of the callback's own making (it awaited something another task
            # cancelled) is its failure like any other: it ended this task, the connection
            # stayed open and never ready, and wait_open() waited for ever.
            if self._ended is None and self._conn is conn:
                if isinstance(exc, _SOCKET_OUTCOMES):
                    # What the socket answered the callback: a refusal, no answer, a lost
                    # connection. Its words say it all; a traceback would only be noise.
                    _log.warning(
                        "%s: on_connect failed (%s: %s); reconnecting",
                        self._name,
                        type(exc).__name__,
                        error_text(exc),
                        extra={"socket": self._name, "error": type(exc).__name__},
                    )
                else:
                    # A bug in the callback: where it is takes the traceback to find.
                    _log.error(
                        "%s: an on_connect callback raised %s: %s; reconnecting",
                        self._name,
                        type(exc).__name__,
                        error_text(exc),
                        # Its traceback, with every exception's text redacted as the message's
                        # is: a formatter would print the raw text on its last line.
                        exc_info=redacted_exc_info(exc),
                        extra={"socket": self._name, "error": type(exc).__name__},
                    )
                # Not a drop: the server took the connection and refused (or could not
                # serve) what on_connect asked, e.g. a resubscribe rate-limited with a 429.
                code = exc.code if isinstance(exc, SocketRequestError) else None
                self._end_connection(
                    Disconnect.setup_failed(type(exc).__name__, code=code),
                    self._lost_peer_grace(),
                )
            return
        if self._ended is None and self._conn is conn:
            # Not a connection left behind: callbacks that outlived their cancellation (past
            # TIDY_UP_GRACE) must not flush the queue to it nor make it ready.
            # The callbacks are done: the sends of the tasks they started queue from here on.
            self._flushing = True
            await self._open_up(conn, epoch)

    def _not_awaitable(self, conn: Connection, callback: OnConnect, result: object) -> None:
        """An ``on_connect`` callback returned something that is not awaitable (a plain
        ``def`` returning None): every connect would fail the same way. The socket stops (its
        owner raises the error once this connection ends) instead of reconnecting for ever."""
        cause = ConfigurationError(
            f"the on_connect callback {_callable_name(callback)} returned "
            f"{builtins.type(result).__name__}, not an awaitable: on_connect callbacks must be "
            "async (an async def, a functools.partial of one, an object with an async "
            "__call__, or a function returning an awaitable)"
        )
        error = SocketClosed(f"{self._name}: stopped: {cause}")
        error.__cause__ = cause
        if self._error is None:
            self._error = error
        if self._conn is conn:
            self._end_connection(
                Disconnect.setup_failed("ConfigurationError"), self._lost_peer_grace()
            )

    async def _open_up(self, conn: Connection, epoch: int) -> None:
        """Send the queue, then make the connection ready; on a failure, end the connection.

        Whatever goes wrong here must end this connection (the owner reconnects), never the
        owner (a socket stopped for good) nor the ``on_connect`` task alone (a connection that
        stays up but never becomes ready, with ``wait_open`` waiting for ever). A
        cancellation that is not this task's own (a write's is made a connection failure by
        :meth:`_write` already) is such a failure too; this task's own ends it as asked.
        """
        before = _cancels()
        try:
            # Only while ``conn`` is the current connection: a task left running past its
            # connection's end (TIDY_UP_GRACE) sees a later connection's _ended, None.
            if self._ended is None and self._conn is conn:
                await self._flush(conn, epoch)
            if self._ended is None and self._conn is conn:
                self._ready(epoch)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_since(before):
                raise
            _log.error(
                "%s: the connection could not be made ready (%s: %s); reconnecting",
                self._name,
                type(exc).__name__,
                error_text(exc),
                exc_info=redacted_exc_info(exc),
                extra={"socket": self._name, "error": type(exc).__name__},
            )
            if self._conn is conn:
                self._end_connection(
                    Disconnect.failed_by_client(
                        1011, f"{type(exc).__name__} making the connection ready"
                    ),
                    self._lost_peer_grace(),
                )

    def _ready(self, epoch: int) -> None:
        """Sends go straight out from now on; the keepalive watches the connection."""
        self._ready_epoch = epoch
        self._readied = True
        self._wake()
        self._emit("ready", epoch=epoch)
        policy = self._keepalive
        if policy is None:
            return
        scheduler = self._keepalives
        if scheduler is None:
            # A socket made without an engine has a scheduler of its own, closed with it.
            scheduler = self._keepalives = KeepaliveScheduler(self._clock, shared=False)
        first = policy.decide(
            self._clock.now(), last_activity=self._last_activity, last_sent=self._last_sent
        )
        self._keepalive_ticket = scheduler.watch(self, first.at)

    def _stop_keepalive(self) -> None:
        ticket, self._keepalive_ticket = self._keepalive_ticket, None
        if ticket is not None and self._keepalives is not None:
            self._keepalives.unwatch(ticket)
        self._probe_sent_at = None

    def _keepalive_due(self, now: float) -> float | None:
        """The keepalive check, run by the scheduler when this connection's time comes.

        Probes (in a short-lived task) when the connection was idle an interval; when the
        probe went unanswered past its timeout, ends the connection as a dead peer (the
        owner reconnects) and asks not to be watched any more. While the owner is paused for
        a slow consumer, or awaiting an ``on_frame`` handler, nothing is read: the peer is
        never declared dead (a probe's answer waits unread), and a probe goes out only for
        the client's own silence (``outbound_idle``: the server closes a connection whose
        client stays quiet, paused or not). When reading resumes, a probe still unanswered
        gets its whole timeout again (:meth:`_reading_again`).
        """
        policy = self._keepalive
        if policy is None or self._keepalive_ticket is None or self._ready_epoch is None:
            # The connection is ending: its owner has nothing left to unwatch.
            self._keepalive_ticket = None
            return None
        sent = self._probe_sent_at
        if sent is not None and self._last_activity >= sent:
            sent = self._probe_sent_at = None
        # Paused for a slow consumer (the peer's frames wait unread behind the inbox's), or in
        # a handler. A handler is excused for HANDLER_EXCUSE at most: past it, a peer that died
        # while it ran must not stay undetected for as long as the handler runs (for ever, if
        # it hangs). A pause is not cut short: judging the peer by the frames it could not
        # deliver would drop the connection and what the kernel holds of them; a paused
        # socket's own probes still meet a dead peer as a failed write.
        handling = self._resume is not None or (
            self._handling is not None and now - self._handling < HANDLER_EXCUSE
        )
        decision = policy.decide(
            now,
            # While nothing is read, the peer's silence (an unanswered probe included, whose
            # answer waits unread) proves nothing, so neither is counted. Only the client's
            # own silence may still call for a probe (outbound_idle): put off an interval,
            # a paused socket stayed quiet past the server's idle close (60 s).
            last_activity=now if handling else self._last_activity,
            probe_sent_at=sent,
            last_sent=self._last_sent,
        )
        if decision.step is KeepaliveStep.WAIT and handling:
            # Asked again within a timeout: once reading resumes (and a probe's timeout
            # starts over), a peer really gone is found as soon as it would have been.
            return min(decision.at, now + policy.timeout)
        if decision.step is KeepaliveStep.DEAD:
            _log.warning(
                "%s: peer dead: %s",
                self._name,
                decision.reason,
                extra={"socket": self._name, "keepalive": policy.action},
            )
            self._keepalive_ticket = None
            self._end_connection(Disconnect.dead_peer(), self._lost_peer_grace())
            return None
        if decision.step is KeepaliveStep.PROBE:
            self._probe_sent_at = now
            _log.debug(
                "%s: keepalive %s (%s)",
                self._name,
                policy.action,
                decision.reason,
                extra={"socket": self._name, "keepalive": policy.action},
            )
            previous = self._probe
            ending: set[asyncio.Task[None]] | None = None
            if previous is not None:
                # Answered long ago by other traffic, and its own timeout not yet seen (or
                # seen, and its write still tidying up): the new probe waits for it to end,
                # and for every one cancelled before it that has not ended either (one that
                # was cancelled while it still waited for those ended at once).
                previous.cancel()
                ending = self._probes_ending
                if ending is None:
                    ending = self._probes_ending = set()
                ending.add(previous)
                ending = set(ending)
            probe = asyncio.get_running_loop().create_task(
                self._keepalive_probe(policy, ending),
                name=f"le_transport socket keepalive probe {self._name}",
            )
            probe.add_done_callback(self._probe_done)
            self._probe = probe
            # Next: the probe's answer is due within its timeout.
            return now + policy.timeout
        return decision.at

    def _keepalive_failed(self, error: Exception) -> None:
        """The keepalive scheduler stopped watching this socket on ``error`` (its clock raised,
        or this socket's own check did): nothing would probe this connection or find its peer
        dead any more, so it ends (failed by the client, 1011) and the owner reconnects (its new
        connection is watched again), or stops with the clock's error if the clock is broken
        for good."""
        # The scheduler has forgotten the ticket already: nothing to unwatch.
        self._keepalive_ticket = None
        if self._ready_epoch is None:
            return
        self._end_connection(
            Disconnect.failed_by_client(1011, f"the keepalive stopped ({type(error).__name__})"),
            self._lost_peer_grace(),
        )

    def _keepalive_ending(self) -> bool:
        """Whether this socket's owner task is ending (done, or asked to cancel): its
        keepalive scheduler, cancelled with it (the event loop shutting down), need not end
        its connection so that it reconnects, which it never would. A hint only: the owner
        may carry a cancellation request it never acts on, so the scheduler checks a turn of
        the loop later that the owner did unwatch."""
        owner = self._owner
        return owner is not None and (owner.done() or owner.cancelling() > 0)

    async def _keepalive_probe(
        self, policy: Keepalive, previous: set[asyncio.Task[None]] | None = None
    ) -> None:
        """One probe, within ``policy.timeout``. One probe of a connection at a time: the ones
        cancelled before this one (``previous``) may still be tidying up (a write that a
        middleware's socket ends only after a while), and this one goes out once they have
        all ended, within this one's own timeout (one that never ends holds up no other)."""
        # Its own failure is not the keepalive's to report: a timeout shows as silence (and
        # the peer is declared dead), a loss is seen by the owner's read.
        with contextlib.suppress(Exception):
            tidying = None if not previous else {task for task in previous if not task.done()}
            if not tidying:
                await self.request(policy.action, {}, timeout=policy.timeout)
                return
            async with timeout_after(self._clock, policy.timeout):
                await asyncio.wait(tidying)
                await self.request(policy.action, {}, timeout=policy.timeout)

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        if self._probe is task:
            self._probe = None
            return
        ending = self._probes_ending
        if ending is not None:
            ending.discard(task)
            if not ending:
                self._probes_ending = None

    def _take_back(self, item: Outgoing) -> None:
        """A message the flush took but whose write was refused before any of it went out goes
        back to the queue, unless it is a request whose caller gave up meanwhile (its timeout,
        a cancellation): never sent late."""
        rid = item.request_id
        if rid is not None:
            if not self._pending.waiting(rid):
                return
            self._pending.sent(rid, None)
        self._outbox.put_back(item)

    def _in_doubt(self) -> None:
        _log.warning(
            "%s: a queued message was being written when its connection ended; it may or may "
            "not have been delivered, and is not sent again",
            self._name,
            extra={"socket": self._name},
        )

    async def _flush(self, conn: Connection, epoch: int) -> None:
        sent = 0
        # Not past the connection's end: what is left waits for the next one.
        while self._ended is None and self._conn is conn:
            item = self._outbox.take()
            if item is None:
                break
            if item.request_id is not None:
                self._pending.sent(item.request_id, epoch)
            try:
                await self._write(conn, item.text)
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._connection_broke(epoch, exc)
                if write_never_began(exc):
                    # Refused before any of it was written (the transport closing): it goes
                    # out on the next connection.
                    self._take_back(item)
                elif item.request_id is None:
                    # Handed to the transport, and the drain failed with the connection: it
                    # may have arrived, so it is never sent again (at most once). A request
                    # stays on its connection and fails with it (SocketClosed).
                    self._in_doubt()
                break
            except asyncio.CancelledError:
                # The flush cancelled mid-write (its connection ended, with on_connect callbacks
                # the setup task is cancelled; or the socket closed). aiohttp hands a frame to
                # the transport before its one await (the drain), so the frame may well have
                # gone out: put back, it was delivered twice. Not sent again, then: a request
                # stays on its connection, failed with it (SocketClosed: "may or may not have
                # been processed"); a message is said to be in doubt, not lost without a word.
                if item.request_id is None:
                    self._in_doubt()
                raise
            except Exception:
                # Not the connection failing: the message could not be written at all (send()
                # refuses what it can tell). Not put back, or it would fail every connection
                # from now on; a request fails with the connection, which ends (a frame may be
                # half written).
                if item.request_id is None:
                    _log.error(
                        "%s: a queued message could not be written and was dropped",
                        self._name,
                        extra={"socket": self._name},
                    )
                raise
            sent += 1
        if sent:
            _log.debug(
                "%s: sent %d queued messages",
                self._name,
                sent,
                extra={"socket": self._name, "sent": sent},
            )

    async def _dispatch(self, text: str, epoch: int) -> None:
        try:
            frame: Any = json.loads(text)
        except (ValueError, RecursionError):
            # Not JSON, or nested deeper than the parser goes: handed over as text, and the
            # reader goes on (a hostile frame must not stop it).
            frame = text
        if isinstance(frame, dict) and frame.get("kind") == "resp":
            if self._pending.resolve(frame):
                return
            if self._pending.abandoned(frame):
                # Its caller gave up (a timeout): an answer nobody waits for, not a frame the
                # server sent on its own, so it does not go to the consumer.
                _log.debug(
                    "%s: late answer to request %s dropped (its caller gave up)",
                    self._name,
                    frame.get("reqId"),
                    extra={"socket": self._name, "type": str(frame.get("type", ""))[:100]},
                )
                return
        await self._deliver(frame, epoch, len(text))

    async def _deliver(self, frame: Any, epoch: int, size: int = 0) -> None:
        """Hand ``frame`` (``size`` characters or bytes on the wire) to the ``on_frame``
        handler, or put it in the inbox, pausing first while the inbox is full."""
        if not self._life.is_current(epoch):
            _log.debug("%s: frame from superseded connection %d ignored", self._name, epoch)
            return
        handler = self._on_frame
        if handler is None:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            elif self._ended is None and self._ready_epoch == epoch:
                opts = self._options
                if (
                    0 < opts.max_inbox <= len(inbox)
                    or 0 < opts.max_inbox_bytes <= self._inbox_bytes
                ):
                    # Full by either bound. Not before the connection is ready: on_connect's
                    # answers come in behind the frames, and pausing for them would time the
                    # callbacks out into a reconnect.
                    await self._wait_for_room(len(inbox))
            # The frame in hand joins the inbox even when the pause ended with the
            # connection: it was received, and the inbox stays readable after a close.
            inbox.append((frame, size))
            self._inbox_bytes += size
            self._wake()
            return
        before = _cancels()
        try:
            result = handler(frame)
            if inspect.isawaitable(result):
                self._handling = self._clock.now()
                try:
                    await result
                finally:
                    self._handling = None
                    self._reading_again()
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_since(before):
                raise
            # A bug in the caller's handler: its traceback to find it, with every exception's
            # text redacted (a handler's error may quote the frame, or a token). A
            # cancellation of its own making (it awaited something another task cancelled)
            # too: taken for the owner's, it closed the socket for good, saying nothing.
            _log.error(
                "%s: on_frame handler raised %s: %s; ignored",
                self._name,
                type(exc).__name__,
                error_text(exc),
                exc_info=redacted_exc_info(exc),
                extra={"socket": self._name, "error": type(exc).__name__},
            )

    def _reading_again(self) -> None:
        """The owner reads again after awaiting an ``on_frame`` handler or a pause for a slow
        consumer, during which nothing was read: the peer's silence meanwhile proves nothing.
        A keepalive probe still unanswered gets its whole timeout from now (its answer, if the
        peer lives, is among the frames read next); with none, the idle clock starts over."""
        now = self._clock.now()
        sent = self._probe_sent_at
        if sent is not None and self._last_activity < sent:
            self._probe_sent_at = now
        else:
            self._last_activity = now

    async def _wait_for_room(self, unread: int) -> None:
        """Stop reading until the consumer has taken the inbox down to half its bounds
        (``max_inbox``, ``max_inbox_bytes``), or the connection ends (:meth:`_unpause`).

        Not reading is the backpressure: aiohttp stops reading the TCP socket once its own
        buffer fills, so the peer is slowed down and nothing is dropped.
        """
        resume: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resume = resume
        paused_at = self._clock.now()
        _log.warning(
            "%s: %d unread frames (%d characters) in the inbox (max_inbox %d, max_inbox_bytes "
            "%d); reading paused until the consumer catches up",
            self._name,
            unread,
            self._inbox_bytes,
            self._options.max_inbox,
            self._options.max_inbox_bytes,
            extra={
                "socket": self._name,
                "inbox": unread,
                "inbox_bytes": self._inbox_bytes,
                "max_inbox": self._options.max_inbox,
                "max_inbox_bytes": self._options.max_inbox_bytes,
            },
        )
        try:
            await resume
        finally:
            self._resume = None
            # The peer's silence while we were not reading says nothing about it: the idle
            # clock starts over, or a probe sent meanwhile gets its whole timeout.
            self._reading_again()
        paused = self._clock.now() - paused_at
        if self._ended is None:
            _log.info(
                "%s: reading resumed after %.3f s paused",
                self._name,
                paused,
                extra={"socket": self._name, "paused": round(paused, 3), "inbox": self.inbox_size},
            )
        else:
            _log.info(
                "%s: the connection ended after %.3f s paused for the consumer",
                self._name,
                paused,
                extra={"socket": self._name, "paused": round(paused, 3), "inbox": self.inbox_size},
            )

    def _unpause(self) -> None:
        resume = self._resume
        if resume is not None and not resume.done():
            resume.set_result(None)

    async def _finish(self) -> None:
        if self._life.state is not SocketState.CLOSING:
            self._life.to(SocketState.CLOSING)
        error = self._error
        reason = (
            f"the socket {self._name} stopped: {error}"
            if error is not None
            else f"the socket {self._name} was closed"
        )

        def closed(never_sent: bool = False) -> SocketClosed:
            # One for each request (PendingRequests.fail_all): each caller raises its own. A
            # request still queued is told it was never sent: close() does not return it, so
            # its caller alone decides whether to send it again, and may, safely.
            failed = SocketClosed(
                f"{reason}; the request was still queued, never sent" if never_sent else reason
            )
            if error is not None:
                failed.__cause__ = error
            return failed

        self._pending.fail_all(closed, functools.partial(closed, True))
        self._unpause()
        # The queued requests' callers were just told (SocketClosed): only the messages sent
        # with send(), which nobody else reports, are returned. Returned as well, a request
        # was sent twice by an application that re-sends what close() returned and retries
        # its failed requests.
        unsent = self._outbox.clear()
        self._unsent = tuple(item.text for item in unsent if item.request_id is None)
        if self._unsent:
            _log.warning(
                "%s: closed with %d queued messages never sent (returned by close())",
                self._name,
                len(self._unsent),
                extra={"socket": self._name, "unsent": len(self._unsent)},
            )
        self._life.to(SocketState.CLOSED)
        self._closing = True
        keepalives = self._keepalives
        if keepalives is not None and not keepalives.shared:
            await keepalives.close()
        self._wake()
        details: dict[str, Any] = {}
        if error is not None:
            details["error"] = type(error).__name__
            details["reason"] = str(error)
        self._emit("closed", **details)
        if self._subscribers is not None:
            for queue in list(self._subscribers):
                queue.put_nowait(None)
            self._subscribers.clear()
        if self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            try:
                on_closed(self)
            except Exception as exc:
                # Called last, the socket closed already: raised on, it came out of close()
                # (a socket never started) or ended the owner with an error nobody read.
                _log.error(
                    "%s: the on_closed callback raised %s: %s; ignored",
                    self._name,
                    type(exc).__name__,
                    error_text(exc),
                    exc_info=redacted_exc_info(exc),
                    extra={"socket": self._name, "error": type(exc).__name__},
                )

    def _emit(self, name: str, **details: Any) -> None:
        event = StateEvent(name, self._name, details)
        level = logging.WARNING if name in _WARNING_STATES else logging.INFO
        _log.log(
            level,
            "%s: %s %s",
            self._name,
            name,
            " ".join(f"{k}={v}" for k, v in details.items()),
            extra={"socket": self._name, "state": name, **details},
        )
        emit(self._hooks.on_state, event)
        emit(self._on_state, event)
        if self._subscribers is not None:
            for queue in self._subscribers:
                queue.put_nowait(event)

    def __repr__(self) -> str:
        state = self._life.state.value
        return f"ResilientSocket({self._name!r}, {state}, epoch={self._life.epoch})"
