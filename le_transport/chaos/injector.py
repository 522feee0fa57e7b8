"""The client-side fault injector: an aiohttp client middleware that applies a :class:`FaultPlan`.

Put it among the engine's wire middlewares (``Engine(wire_middlewares=[injector])``), so that it
runs once per attempt, inside the retry loop, exactly where a real network fault would strike.
The engine's providers send their own calls (login, refresh, logout, the Domain API, Sentinel
and IdP tokens) through its wire middlewares too, inside the same retry middleware: a rule
matching the login strikes it here as the simulator's plan strikes it there, and a ``Status``
on it makes the login's retry schedule run.
Made without ``clock=``, it takes that engine's clock (:meth:`FaultInjector.bind_clock`).
For each request it asks the plan (unit ``request``) and, when a rule fires:

- ``status``: answers with that status (and ``Retry-After``, body) **without sending** the
  request: the server never saw it. As from the simulator, a 204 or 304 comes without a body
  (or ``Content-Length``), and the answer to a HEAD announces its body's length without it;
- ``delay``: waits on the injected clock, then sends. The call's aiohttp ``ClientTimeout``
  strikes the wait as it strikes a server slow to answer (the simulator's ``delay``):
  ``total``, and ``sock_read``, which fails it with aiohttp's ``SocketTimeoutError`` (both on
  the loop's time, as aiohttp's own; the ``sock_read`` is the call's ``timeout=`` or the
  session's, read from aiohttp's handler chain before anything is sent). Nothing is sent
  when the caller gives up meanwhile, as the simulator cancels its handler unrun;
- ``reset``: raises :class:`aiohttp.ClientOSError` (``ECONNRESET``, "Connection reset by
  peer") without sending, as a connection the peer reset (the simulator sends an RST) fails;
- ``empty_response``: raises :class:`aiohttp.ServerDisconnectedError` without sending, as a
  connection the peer closed before answering fails;
- ``hang``: waits on the clock for ``duration_ms`` and then fails as a connection closed
  without an answer (``ServerDisconnectedError``), or (no duration) until the caller's attempt
  timeout cancels it; the call's ``sock_read`` and ``total`` strike it as a ``delay``'s;
- ``truncated_body``: sends, then hands back the real answer (status, headers, cookies) cut
  after ``keep_bytes``: a reader gets those bytes, then the payload error aiohttp raises for a
  short body, as from the simulator. Only the kept bytes are read, and one more (never more
  than the call's limit and one): the whole body's length is announced when a
  ``Content-Length`` of the body as it is read tells it, else one byte more than is kept;
- ``malformed_body``: sends (the server processes it), reads the real answer (and drops it,
  chunk by chunk; past the call's limit, the connection), then hands back ``code`` with a
  body that is not valid JSON instead;
- ``quota``: keeps the sliding window on the injector's clock; a request over the limit is
  answered ``status`` (429) with ``Retry-After`` **without sending** it;
- ``slow_body``: sends, then hands the real answer back with its status and headers
  (repeated ones and cookies included) at once and its body in ``chunk_bytes`` pieces,
  ``chunk_delay_ms`` apart on the injector's clock. The caller's read (and its attempt
  timeout) sees exactly a slow server, and so do the aiohttp timeouts of its call
  (``ClientTimeout``): ``total`` runs until the body's end, as over a real body (it strikes
  the caller's read, the one waiting or the next, never its own work between reads, and ends
  the feeding, a body its reader holds back included), and
  ``sock_read`` (that of the connection the answer came on) is rearmed by each piece, as by
  each read from a socket, and stopped while the caller holds back unread what it was handed:
  a pause longer than it fails the read with aiohttp's ``SocketTimeoutError``. (They run on
  the loop's time, as aiohttp's own do, not on the injector's clock.) Under a retry middleware
  that buffers bodies (the
  engine's), the real answer is read first, as the engine reads one (the retry middleware's
  own read), and the real connection, read at full speed, is already back in the pool: one
  over the call's ``max_body_bytes`` is handed on at once, its head with a ``Content-Length``
  past the limit, for the caller's retry loop to refuse as it would the real one
  (:class:`~le_transport.errors.BodyTooLarge`, or a failed answer's excerpt). Where the
  caller's stack holds a body to no limit (a streaming ``RetryMiddleware(buffer_body=False)``,
  none at all), neither does the fault: the body is paced as it is read from the real
  connection, a piece at a time (what the caller has not read holds the connection back, as
  a slow reader holds a server back). Its head is handed on at once, before any of its body is
  read (a stream the server holds open, a long poll, gets it as it would without the fault),
  announced by the body's length when its headers tell it (a ``Content-Length``, and no
  ``Content-Encoding`` aiohttp decodes), else by none; a failure of the real body reaches
  the reader after every byte that came before it. The real connection is held until the body
  ends (then back to the pool) or the answer is closed, released or dropped unreleased (then
  closed). An answer with no body (to a HEAD, a 204 or 304) is handed on as it came, as
  without the fault (and as from the simulator).

An answer a middleware inside the injector has read already (the engine's retry middleware
when the injector is among ``outer_middlewares``; a caller's middleware that logs bodies) is
worked on as it was read: ``slow_body`` dribbles that body, ``truncated_body`` cuts it. Else
what it reads of a real answer to hold it is bounded by the call's limit: the
``max_body_bytes`` of the retry middleware the call runs in (found among the session's
middlewares; without one, the default,
:data:`~le_transport.middleware.retry.DEFAULT_MAX_BODY_BYTES`), counted as decoded, so a small
compressed body that inflates to gigabytes is never held whole. Its waits (``delay``,
``hang``, ``slow_body``'s pauses, a delayed upgrade) end when the engine's close begins: the
call then fails as one whose answer the close cut on the wire
(:class:`~le_transport.middleware.retry.ClosedInFlight`, which the retry loop makes
:class:`~le_transport.errors.EngineClosed`). A wait that begins once the close has begun (the
close's own calls: its logout) is waited out, as on the wire. Without an engine, the session's
close ends a ``slow_body`` still being fed (one its reader holds back too, seen within a tenth
of a second): its reader's next read fails with ``ClosedInFlight`` saying the session was
closed.

The answers ``truncated_body`` and ``slow_body`` hand back carry the real answer's headers as
they came (a :class:`~multidict.CIMultiDict`: a repeated ``Set-Cookie`` or ``Link`` stays
repeated), its raw headers and its cookies (``resp.cookies``, what a session's cookie jar
takes), but ``Content-Length``, ``Transfer-Encoding`` and ``Content-Encoding``, which described
the body on the wire: the body handed back is the one aiohttp would hand on (decoded), announced
by a ``Content-Length`` of its own (none for a ``slow_body`` paced from the connection whose
decoded length is not known). A body aiohttp hands on as it came on the wire (the call made
with ``auto_decompress=False``; an encoding aiohttp does not decode) keeps its
``Content-Encoding``, for the caller to decode it by, and is announced by its length on the
wire.

WebSocket upgrades pass through the middleware too. As on the simulator, an upgrade is a
request first: a ``request`` rule that matches it strikes it, with the kinds an upgrade can meet
(:data:`~le_transport.chaos.plan.UPGRADE_FAULTS`, the set the simulator uses: every request kind
but ``truncated_body`` and ``slow_body``), so one plan refuses (``Status(503)``), delays or drops
the same upgrades on either side. Then an engine socket's session is decided there once (unit
``ws_session``, every session kind, as the simulator decides it at its handshake): a
``ws_reject_handshake`` answers the upgrade with its status, any other session fault is applied
to the socket the upgrade opens. So a ``ws_session`` sequence that mixes a refusal with drops,
closes or silences (or a refusal rule beside such a rule) fires the same faults in the same
order on either side. (A plain ``session.ws_connect`` is wrapped by nothing:
only refusals are decided for it.) Faults on an open socket (``ws_close``,
``ws_drop``, ``ws_silence``, ``ws_app_error``, ``ws_delay``, ``ws_drop_message``; unit
``ws_session`` or ``ws_message``) strike the open socket: an engine whose middlewares include an
active injector has each of its sockets, as it opens, wrapped by
:meth:`FaultInjector.wrap_socket` (:class:`~le_transport.chaos.ws.FaultySocket`; once for each
injector among them, the one nearest the wire innermost), which asks
:meth:`FaultInjector.socket_opened` once and :meth:`FaultInjector.message_sent` /
:meth:`FaultInjector.message_arriving` for each request sent and each frame received, and
acts on the answers as the simulator does on its side. A socket that opened while the
injector had no socket rule is not wrapped: a socket rule added later strikes only the sockets
opened from then on (reconnects included), so add socket rules before the sockets open.

Same seed and plan, same faults: each rule draws from its own stream keyed by the n-th unit it
matched. :meth:`FaultInjector.report` says what was injected. With no rules, a call costs one
attribute check.

Its records are bounded, so a long run does not grow its memory: :attr:`FaultInjector.log` and
:meth:`FaultInjector.report` keep the newest ``max_records`` entries each (default
:data:`~le_transport.chaos.plan.DEFAULT_MAX_RECORDS`, 100,000; None keeps all), and
:meth:`FaultInjector.injected_counts` keeps exact totals per rule of the plan (a rule removed by
:meth:`FaultInjector.clear` takes its totals with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import sys
import types
import warnings
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import aiohttp
import attrs
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_reqrep import ClientResponse as _ClientResponse
from aiohttp.connector import Connection
from aiohttp.helpers import BaseTimerContext, TimerNoop
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.typedefs import RawHeaders
from multidict import CIMultiDict, CIMultiDictProxy

from .._checks import require_kind
from ..clock import Clock, RealClock
from ..errors import BodyTooLarge, ConfigurationError
from ..middleware.context import CallContext, current_call
from ..middleware.retry import (
    _CUT_SHORT,
    ClosedInFlight,
    RetryMiddleware,
    _Call,
    is_websocket_upgrade,
)
from ..sockets.wrapping import UPGRADE_PATH, UPGRADE_SERVICE
from .plan import (
    DEFAULT_MAX_RECORDS,
    HTTP_FAULTS,
    UPGRADE_FAULTS,
    WS_FAULTS,
    WS_MESSAGE_FAULTS,
    WS_OUTBOUND_FAULTS,
    Delay,
    EmptyResponse,
    FaultDecision,
    FaultPlan,
    FaultRule,
    FaultRun,
    Hang,
    Injection,
    MalformedBody,
    Quota,
    RecordLog,
    Reset,
    RuleCounts,
    SlowBody,
    Status,
    TruncatedBody,
    WsRejectHandshake,
    as_plan,
    check_max_records,
)
from .ws import FaultySocket

__all__ = ["UPGRADE_PATH", "UPGRADE_SERVICE", "FaultInjector"]

_log = logging.getLogger("le_transport.chaos")

# UPGRADE_PATH and UPGRADE_SERVICE live beside the dialer that sets them (the library never
# imports chaos); named here too, where the injector's users found them.


@attrs.frozen(eq=False)
class _SessionDecided:
    """The ``ws_session`` decision an injector made at a resilient socket's upgrade, waiting
    for :meth:`FaultInjector.wrap_socket` to apply it to the socket that upgrade opened."""

    injector: FaultInjector
    path: str
    injection: Injection | None


#: Set by the middleware when a resilient socket's upgrade succeeded (101), in the dialing
#: task's context (the middleware runs in that task, inside its ``ws_connect``), and taken by
#: :meth:`FaultInjector.wrap_socket` right after: one decision per session and injector, as
#: the simulator makes it. One per injector the upgrade passed through, the one nearest the
#: wire first (the dialer asks only the first active one to wrap the socket: it wraps it for
#: each of them).
_SESSION_DECIDED: contextvars.ContextVar[tuple[_SessionDecided, ...]] = contextvars.ContextVar(
    "le_transport_session_decided", default=()
)

_SOCKET_KINDS = frozenset({"ws_close", "ws_drop", "ws_silence", "delay"})
#: What a plain ``ws_connect`` (no resilient socket, nothing wraps it) can be struck with.
_HANDSHAKE_KINDS = frozenset({"ws_reject_handshake"})
#: The units whose rules make a socket worth wrapping.
_SOCKET_UNITS = frozenset({"ws_session", "ws_message"})
# The hook is asked about messages the client received: those from the server, which the
# outbound kinds (delay, drop) are about too.
_MESSAGE_KINDS = WS_MESSAGE_FAULTS | WS_OUTBOUND_FAULTS


class _DefaultClock(RealClock):
    """The real clock an injector runs on when it was given none (so that it can tell)."""

    __slots__ = ()


def _plan_arg(value: FaultPlan | Sequence[FaultRule]) -> FaultPlan:
    return as_plan(value, owner="FaultInjector")


def require_clock(value: object, *, owner: str) -> Clock:
    """``value`` as a :class:`~le_transport.clock.Clock` instance, else a
    :class:`~le_transport.errors.ConfigurationError` naming ``owner.clock``: a clock's class
    given for an instance (``VirtualClock``, not ``VirtualClock()``) is told apart, since the
    protocol check alone takes a class (its methods are there, unbound), and so is a function
    (``time.monotonic``) or anything else without the protocol's ``now`` and ``sleep``."""
    if isinstance(value, type):
        # VirtualClock, not VirtualClock(): a class has the protocol's methods, unbound.
        raise ConfigurationError(
            f"{owner}.clock must be a Clock, got the class {value.__name__}: pass one "
            f"({value.__name__}())"
        )
    require_kind(value, Clock, owner=owner, field="clock", optional=False)
    return cast(Clock, value)


def _clock_arg(value: Clock | None) -> Clock:
    if value is None:
        return _DefaultClock()
    return require_clock(value, owner="FaultInjector")


#: The clocks that read the same time (``time.monotonic``, sleeping on the loop): an injector
#: may move from one to another without its plan's time windows noticing.
_REAL_CLOCKS = (RealClock, _DefaultClock)


def _same_time(a: Clock, b: Clock) -> bool:
    """Whether ``a`` and ``b`` keep the same time: one clock, or both the real one."""
    return a is b or (type(a) in _REAL_CLOCKS and type(b) in _REAL_CLOCKS)


@attrs.frozen(eq=False)
class FaultInjector:
    """Injects the faults of ``plan`` into requests, on ``clock``.

    ``FaultInjector(FaultPlan(seed=7, rules=[...]), clock=clock)``,
    ``FaultInjector([rule, ...], clock=clock)`` (seed 0), or
    ``FaultInjector.seeded(7, rule, ..., clock=clock)``. Hashable by identity, as aiohttp's
    middleware chain cache needs; its plan can grow with :meth:`add`. Anything else as
    ``plan`` (a single rule, a plan's JSON dict: load it with ``FaultPlan.from_dict``), or a
    ``clock`` that is not a :class:`~le_transport.clock.Clock`, is a
    :class:`~le_transport.errors.ConfigurationError`.

    **Its clock.** Its delays, hangs, slow bodies, socket delays, quota windows and the plan's
    time windows run on :attr:`clock`. Given ``clock=``, it keeps that one, whatever engine it
    is attached to (``clock=RealClock()`` says that real time is meant). Given none, it takes
    the clock of the engine it is attached to: the engine calls :meth:`bind_clock` when it is
    made, so beside an engine on a :class:`~le_transport.testing.VirtualClock` a
    ``Delay(3000)`` is waited on virtual time, as the engine's timeouts are. An injector given
    no clock and used without an engine (a middleware on a plain ``aiohttp.ClientSession``)
    runs on the real clock, and logs one WARNING on ``le_transport.chaos`` when it first meets
    a :class:`~le_transport.testing.VirtualClock` in use on its event loop: its real waits
    would meet virtual timeouts, which jump ahead while nothing else runs.

    ``max_records`` (keyword only): how many decisions :attr:`log` keeps, and how many
    injections :meth:`report` lists, the newest ones (default
    :data:`~le_transport.chaos.plan.DEFAULT_MAX_RECORDS`, 100,000; None: no bound). An int
    >= 1 or None, else a :class:`~le_transport.errors.ConfigurationError`.
    """

    #: It sees the engine's provider calls (login, refresh, logout, the Domain API, tokens)
    #: too, as the simulator's plan does: an engine passes those calls only to the wire
    #: middlewares that say so (they carry credentials). It never logs a body or a header.
    sees_provider_calls: ClassVar[bool] = True

    plan: FaultPlan = attrs.field(factory=FaultPlan, converter=_plan_arg)
    clock: Clock = attrs.field(default=None, converter=_clock_arg)
    max_records: int | None = attrs.field(default=DEFAULT_MAX_RECORDS, kw_only=True)
    _run: FaultRun = attrs.field(init=False)
    #: Whether ``clock=`` was given (then no engine's clock replaces it).
    _clock_given: bool = attrs.field(init=False, default=False)
    #: Whether :attr:`clock` is an engine's, taken by :meth:`bind_clock`.
    _clock_bound: bool = attrs.field(init=False, default=False)
    #: Whether the clock needs no more checking: given, an engine's, or the warning about it
    #: was logged.
    _clock_checked: bool = attrs.field(init=False, default=False)
    #: Whether it was found around an engine's retry loop (an outer middleware), and said so.
    _outer_told: bool = attrs.field(init=False, default=False)

    @max_records.validator
    def _check_max_records(self, attribute: attrs.Attribute[int | None], value: object) -> None:
        check_max_records(value, owner="FaultInjector")

    def __attrs_post_init__(self) -> None:
        # Time windows in the plan count from the injector's creation (or, for one that takes
        # its engine's clock, from the engine's: see bind_clock).
        run = FaultRun(self.plan, origin=self.clock.now(), max_records=self.max_records)
        object.__setattr__(self, "_run", run)
        given = type(self.clock) is not _DefaultClock
        object.__setattr__(self, "_clock_given", given)
        object.__setattr__(self, "_clock_checked", given)

    @classmethod
    def seeded(
        cls,
        seed: int,
        *rules: FaultRule | Sequence[FaultRule],
        clock: Clock | None = None,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> FaultInjector:
        """An injector for ``FaultPlan(seed, rules)``: ``seeded(7, rule_a, rule_b)``, or the
        rules in one list, ``seeded(7, [rule_a, rule_b])``. Without ``clock``, it takes the
        clock of the engine it is attached to (see the class)."""
        flat: tuple[Any, ...] = rules
        if len(rules) == 1 and isinstance(rules[0], (list, tuple)):
            flat = tuple(rules[0])
        return cls(FaultPlan(seed=seed, rules=flat), clock=clock, max_records=max_records)

    # -- the plan --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether any rule is configured."""
        return bool(self._run.plan.rules)

    @property
    def current_plan(self) -> FaultPlan:
        """The plan in force (``plan`` plus rules added since)."""
        return self._run.plan

    def add(self, rule: FaultRule) -> FaultRule:
        """Add a rule (its counter starts at 0, even under the id of a rule removed by
        :meth:`clear`: nothing of that rule's is carried over). A socket rule (unit
        ``ws_session`` or ``ws_message``) strikes the engine sockets opened from then on, not
        one already open that this injector left unwrapped, having no socket rule when it
        opened."""
        self._run.change_plan(self._run.plan.with_rule(rule))
        return rule

    def extend(self, rules: Iterable[FaultRule]) -> None:
        """Add several rules (a list of :class:`FaultRule`; anything else is a
        :class:`~le_transport.errors.ConfigurationError`, and then no rule is added)."""
        if isinstance(rules, (str, bytes, Mapping, FaultRule)) or not isinstance(rules, Iterable):
            hint = " (one rule: use add)" if isinstance(rules, FaultRule) else ""
            raise ConfigurationError(
                f"FaultInjector.extend takes a list of FaultRule, got {type(rules).__name__}{hint}"
            )
        # All or nothing: checked as a plan first, so that a bad rule halfway adds none.
        self._run.change_plan(
            FaultPlan(seed=self._run.plan.seed, rules=(*self._run.plan.rules, *rules))
        )

    def clear(self) -> None:
        """Remove every rule, and forget their counters and totals: :meth:`injected_counts`
        and :meth:`rule_counts` no longer list them (a rule added again under one of their ids
        starts from 0). The log and :meth:`report` keep their decisions."""
        self._run.change_plan(FaultPlan(seed=self._run.plan.seed))

    @property
    def log(self) -> RecordLog[FaultDecision]:
        """The decisions made, in order: the newest ``max_records`` of them (reads as a list;
        ``log.dropped`` says how many older ones were dropped)."""
        return self._run.log

    def report(self) -> list[dict[str, Any]]:
        """What was injected, in order: one dict per fault (rule id, unit index, kind,
        method, redacted path, clock time). Two runs of the same plan (same seed) over the same
        traffic inject the same faults at the same unit indices; their ``at`` is the time on
        the injector's clock when each was decided (``time.monotonic()`` on the real clock), so
        the times match only on virtual clocks started at the same time.

        It lists the newest ``max_records`` injections: :attr:`records_dropped` says how many
        older ones it no longer lists, and :meth:`injected_counts` has exact totals (of the
        rules still in the plan: :meth:`clear` forgets those of the rules it removes)."""
        return [d.to_dict() for d in self._run.injected()]

    @property
    def records_dropped(self) -> int:
        """How many injections :meth:`report` no longer lists, to keep its bound (0 until
        more than ``max_records`` faults were injected)."""
        return self._run.injections_dropped

    def injected_counts(self) -> dict[str, int]:
        """``{rule id: faults injected}`` (forced ones included) for each rule of the plan
        that injected, since it was added: exact however many records were dropped. Not over
        the injector's whole life: :meth:`clear` forgets the totals of the rules it removes
        (:meth:`report` still lists their newest injections). One entry per rule, so it stays
        as small as the plan."""
        return self._run.injected_counts()

    def rule_counts(self) -> dict[str, RuleCounts]:
        """``{rule id: RuleCounts}`` for every rule of the plan (matched, injected, shadowed,
        skipped ...), exact since the rule was added: a rule that injected nothing shows why
        (its ``shadowed`` count: an earlier rule fired first on the same unit). :meth:`clear`
        forgets the counts of the rules it removes, which are not listed then (:meth:`report`
        keeps their decisions)."""
        return self._run.rule_counts()

    # -- the clock ------------------------------------------------------------------------

    def bind_clock(self, clock: Clock) -> None:
        """Take ``clock``, the clock of the engine this injector is attached to, unless
        ``clock=`` was given (that one wins: nothing changes).

        An :class:`~le_transport.engine.Engine` calls it once, when it is made, for each of
        its wire and outer middlewares that has it; a request pays nothing for it. When the
        injector has decided nothing yet, the plan's time windows are measured from now on
        ``clock`` (from the engine's construction) instead of from the injector's creation on
        the real clock. Refused, with a :class:`~le_transport.errors.ConfigurationError` that
        says why, and the injector left as it was:

        - when it already runs on another engine's clock that keeps other time (two engines
          on two ``VirtualClock``, or one virtual and one real): one injector cannot wait on
          both. Give each engine its own injector, or give it ``clock=``. Engines that share
          one clock, or all run on real time, share an injector freely;
        - when it has already decided on the real clock (used before any engine took it) and
          ``clock`` keeps other time: its time windows and quota windows are counted in
          real time. Make the engine first, or give it ``clock=``.
        """
        clock = require_clock(clock, owner="FaultInjector.bind_clock")
        if self._clock_given:
            return
        if _same_time(self.clock, clock):
            if not self._clock_bound and self._run.log.total == 0:
                self._run.origin = clock.now()
        elif self._clock_bound:
            raise ConfigurationError(
                f"FaultInjector already runs on the clock of the engine it was first attached "
                f"to ({self.clock!r}), and this engine's clock ({clock!r}) keeps other time: "
                "one injector cannot wait on both. Give each engine its own FaultInjector, or "
                "give this one clock= to say which time it keeps"
            )
        elif self._run.log.total:
            raise ConfigurationError(
                f"FaultInjector has already made {self._run.log.total} decision(s) on the real "
                f"clock (it was given no clock= and used before an engine took it), and this "
                f"engine's clock ({clock!r}) keeps other time: its time windows and quota "
                "windows cannot move to it. Make the engine before using the injector, or give "
                "it clock="
            )
        else:
            self._run.origin = clock.now()
        object.__setattr__(self, "clock", clock)
        object.__setattr__(self, "_clock_bound", True)
        object.__setattr__(self, "_clock_checked", True)

    def _check_clock(self) -> None:
        """Warn, once, when this injector runs on the real clock only because it was given
        none and no engine gave it its own, while a VirtualClock keeps this loop's time (see
        the class)."""
        virtual = sys.modules.get("le_transport.testing.clock")
        if virtual is None or virtual.virtual_clock_in_use() is None:
            return
        object.__setattr__(self, "_clock_checked", True)
        _log.warning(
            "FaultInjector was given no clock= and no engine gave it its own, so it runs its "
            "delays, hangs, slow bodies and time windows on the real clock, while a "
            "VirtualClock keeps this event loop's time: injected latency becomes real waits "
            "that virtual timeouts cut short. Pass the VirtualClock (FaultInjector(plan, "
            "clock=clock), FaultInjector.seeded(seed, ..., clock=clock)), attach the injector "
            "to an Engine on it (Engine(..., clock=clock, wire_middlewares=[injector]) gives "
            "it the engine's clock), or pass clock=RealClock() if real time is meant"
        )

    # -- the middleware --------------------------------------------------------------------

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if not self._run.plan.rules:
            return await handler(request)
        if not self._clock_checked:
            self._check_clock()
        ctx = current_call()
        service = ctx.service if ctx is not None else None
        path = request.url.path
        if is_websocket_upgrade(request):
            return await self._upgrade(request, handler, service or UPGRADE_SERVICE.get())
        if (
            ctx is not None
            and not ctx.active
            and not self._outer_told
            and any(rule.unit == "request" for rule in self._run.plan.rules)
        ):
            object.__setattr__(self, "_outer_told", True)
            _log.warning(
                "a FaultInjector runs outside an engine's retry loop (in outer_middlewares, or "
                "on a session without the engine's middlewares): its faults strike once per "
                "call and reach the caller unretried; put it in the engine's wire_middlewares "
                "(a session of your own takes them from engine.middlewares) to test the "
                "policies against them"
            )
        injection = self._run.decide(
            "request",
            method=request.method,
            path=path,
            service=service,
            at=self.clock.now(),
            kinds=HTTP_FAULTS,
        )
        if injection is None:
            return await handler(request)
        return await self._apply(injection, request, handler)

    async def _upgrade(
        self, request: ClientRequest, handler: ClientHandlerType, service: str | None
    ) -> ClientResponse:
        """A WebSocket upgrade: asked about as a request first, then its session decided here,
        once (unit ``ws_session``).

        As the simulator does at its end, a ``request`` rule matching the upgrade (method,
        path, service) strikes it first, with the kinds an upgrade can meet
        (:data:`~le_transport.chaos.plan.UPGRADE_FAULTS`: not ``truncated_body`` or
        ``slow_body``): a ``status``, ``quota`` or ``malformed_body`` answers it with that
        status without sending it, a ``reset``, ``empty_response`` or ``hang`` fails it as a
        dropped connection, a ``delay`` sends it late; the session is decided only for an
        upgrade that went on.

        A resilient socket's upgrade (its dialer names the path template and the service) is
        decided with every session kind once the server accepted it (101), as the simulator
        decides its handshake once its own checks passed; an upgrade the server refused spends
        no session turn. A ``ws_reject_handshake`` then refuses it here (the accepted
        connection closed unused); any other (``ws_close``, ``ws_drop``, ``ws_silence``,
        ``delay``) is handed to :meth:`wrap_socket` for the socket it opened.
        So a rule whose sequence mixes a refusal with drops (or a refusal rule beside a drop
        rule) fires in the order the simulator fires it, each session counted once. A plain
        ``ws_connect`` is wrapped by nothing: only a refusal is asked about for it.
        """
        # Cleared for this upgrade (an injector nearer the wire, which runs inside this one,
        # adds its own decision after this).
        _SESSION_DECIDED.set(())
        # A socket's path may carry its bearer where only its template says (a {bearer}
        # anywhere): what is recorded and logged is the template's path, as for the socket's
        # own faults.
        template = UPGRADE_PATH.get()
        # First as a request (unit ``request``), as the simulator's middleware sees every
        # request, an upgrade too: with the kinds an upgrade can meet (UPGRADE_FAULTS, the
        # simulator's set), matched on the request's own path, as the simulator matches it
        # (shown by its template). Only then, if it goes on, as a session.
        asked = self._run.decide(
            "request",
            method=request.method,
            path=request.url.path,
            service=service,
            at=self.clock.now(),
            kinds=UPGRADE_FAULTS,
            shown=template,
        )
        if asked is not None:
            struck = asked.fault
            if isinstance(struck, Delay):
                await self._wait(request, asked.delay_s, read_timeout=_sock_read_of(handler))
            elif isinstance(struck, MalformedBody):
                # The simulator answers the upgrade with it, the socket never served: so here,
                # without sending the upgrade.
                return _made_up(request, struck.code, {}, struck.body.encode(), json=True)
            else:
                # status, quota: answered here; reset, empty_response, hang: a dropped
                # connection. None of them sends the upgrade.
                assert isinstance(struck, (Status, Quota, Reset, EmptyResponse, Hang))
                return await self._apply(asked, request, handler)
        # The session is matched and recorded on the template's path, as the socket's own
        # faults are.
        path = template or request.url.path
        resp = await handler(request)
        if resp.status != 101:
            # Refused by the server itself (an expired bearer, its own 503): no session to
            # decide, as on the simulator, which decides only once its own checks passed. A
            # decision here would spend the rule's turn (a drop counted as injected, never
            # struck).
            return resp
        injection = self._run.decide(
            "ws_session",
            method=request.method,
            path=path,
            service=service,
            at=self.clock.now(),
            kinds=_HANDSHAKE_KINDS if template is None else WS_FAULTS,
        )
        if injection is not None and isinstance(injection.fault, WsRejectHandshake):
            # The server accepted it; the client is told it refused. The real connection is
            # closed unused.
            resp.close()
            fault = injection.fault
            return _made_up(request, fault.status, {}, fault.body.encode())
        if template is not None:
            _SESSION_DECIDED.set((*_SESSION_DECIDED.get(), _SessionDecided(self, path, injection)))
        return resp

    async def _apply(
        self, injection: Injection, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        fault = injection.fault
        if isinstance(fault, Status):
            return _made_up(
                request, fault.code, fault.response_headers(), fault.response_body(), json=True
            )
        if isinstance(fault, Quota):
            assert injection.retry_after is not None
            headers = {"Retry-After": str(injection.retry_after)}
            return _made_up(request, fault.status, headers, fault.response_body(), json=True)
        if isinstance(fault, Delay):
            # The call's sock_read runs over the wait, as over a server slow to answer.
            await self._wait(request, injection.delay_s, read_timeout=_sock_read_of(handler))
            return await handler(request)
        if isinstance(fault, SlowBody):
            return await self._dribble(request, handler, fault)
        if isinstance(fault, Reset):
            # What a reset by the peer raises (the simulator's Reset sends one: an RST, not a
            # FIN): aiohttp's ClientOSError with ECONNRESET, as the connection's loss raises it.
            raise aiohttp.ClientOSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        if isinstance(fault, EmptyResponse):
            # The connection closed (a FIN) before the status line.
            raise aiohttp.ServerDisconnectedError()
        if isinstance(fault, Hang):
            # Forever (no duration): only the caller's attempt timeout or deadline ends it, or
            # the engine's close.
            await self._wait(
                request,
                None if fault.duration_ms is None else fault.duration_ms / 1000.0,
                read_timeout=_sock_read_of(handler),
            )
            raise aiohttp.ServerDisconnectedError()
        if isinstance(fault, TruncatedBody):
            real = await handler(request)
            if _bodiless(request.method, real.status):
                # No body on the wire (a HEAD, a 1xx, 204 or 304): nothing to cut after the
                # headers, so the answer is cut before them, as the simulator cuts it (the
                # connection closed, as for an EmptyResponse). Still injected, on both sides.
                real.close()
                raise aiohttp.ServerDisconnectedError()
            if real._body is not None:
                # Read already, by a middleware inside this one (the engine's retry middleware,
                # the injector among the outer middlewares; a caller's that logs bodies): its
                # stream is spent, its body held. The cut is made in it.
                real.release()
                data = real._body
            else:
                # Only what is kept is read, and one byte more to know whether there was
                # more: never more than the call's limit and one byte (a gzip bomb is not
                # inflated).
                limit = _retry_of(request).max_body_bytes
                data = await _read_start(real, min(fault.keep_bytes, limit) + 1)
            cut = data[: fault.keep_bytes]
            # The whole body's length is announced, as the simulator announces it, when it is
            # known (held whole, or a Content-Length of the body as it is read tells it);
            # else one byte more than is kept, at least: the rest was not read.
            whole = len(data)
            told = _told_length(real)
            if told is not None:
                whole = max(whole, told)
            kept, raw = _kept_headers(real, max(whole, len(cut) + 1))
            return _synthetic(
                request,
                real.status,
                kept,
                cut,
                raw_headers=raw,
                reason=real.reason,
                cut_short=aiohttp.ClientPayloadError(
                    "Response payload is not completed (injected truncation)"
                ),
            )
        if isinstance(fault, MalformedBody):
            # Sent and processed, as on the simulator (which runs its handler): only the
            # answer is replaced.
            real = await handler(request)
            if real._body is not None:
                # Read already, by a middleware inside this one: nothing left to drain (its
                # stream is spent; aiohttp's reader of it would raise once released).
                real.release()
            else:
                # Read (and dropped) as it comes, up to the call's limit: past it the
                # connection is dropped rather than read on (a gzip bomb is not inflated).
                await _drain(real, _retry_of(request).max_body_bytes)
            # A HEAD's answer has no body on the wire (the simulator's is dropped by aiohttp):
            # its Content-Length says what a GET would get (_made_up). Its code can carry a
            # body: MalformedBody refuses 204 and 304.
            return _made_up(request, fault.code, {}, fault.body.encode(), json=True)
        raise AssertionError(f"unhandled fault {fault!r}")  # pragma: no cover

    async def _dribble(
        self, request: ClientRequest, handler: ClientHandlerType, fault: SlowBody
    ) -> ClientResponse:
        real = await handler(request)
        if _bodiless(request.method, real.status):
            # No body on the wire (to a HEAD, a 204 or 304): nothing to dribble. Handed on as
            # it came, as without the fault (and as the simulator hands it on): a HEAD's
            # answer with the Content-Length a GET would get, a 204 or 304 with none.
            return real
        mw = _retry_of(request)
        # The call's read timeout (ClientTimeout.sock_read, that of the connection the answer
        # came on): the paced body keeps it, as a slow server's does.
        read_timeout = _read_timeout_of(real)
        if real._body is not None:
            # Read already, by a middleware inside this one (the engine's retry middleware,
            # the injector among the outer middlewares; a caller's that logs bodies): its
            # stream is spent, its body held. That body is dribbled.
            real.release()
            body = real._body
            if real in _CUT_SHORT:
                # A failed answer its limit cut to an excerpt, as below.
                return _over_limit(request, real, mw.max_body_bytes, body)
        elif mw is _UNBOUND or not mw.buffer_body:
            # The caller's stack holds no body to a limit (no retry middleware; one that
            # streams): nor does the fault, which would fail an answer the server sent whole.
            return self._dribble_live(request, real, fault, read_timeout)
        else:
            # Read as the engine reads an answer (the retry middleware's own read): within
            # the call's max_body_bytes, a compressed body held to it as it is decoded, a
            # failed answer over it cut to its excerpt.
            reader = _reader(request, handler)
            try:
                await reader._buffer(real)
            except BodyTooLarge:
                # More than the call takes (the connection dropped): handed on unread, so
                # that the caller's limit refuses it as it refuses the real answer.
                return _over_limit(request, real, mw.max_body_bytes, b"")
            finally:
                real.release()
            body = real._body if real._body is not None else b""
            if real in _CUT_SHORT:
                # A failed answer over the limit, cut to its excerpt: handed on at once,
                # announced as large as it was, for the caller's limit to cut it alike.
                return _over_limit(request, real, mw.max_body_bytes, body)
        return self._dribbled(request, real, fault, body, read_timeout)

    def _dribbled(
        self,
        request: ClientRequest,
        real: ClientResponse,
        fault: SlowBody,
        body: bytes,
        read_timeout: float | None,
    ) -> ClientResponse:
        """``real``'s status and headers at once, and ``body``, its body read whole, fed in
        pieces on the clock."""
        # The body handed back is the one read, whole: its length is the one to announce.
        headers, raw = _kept_headers(real, len(body))
        pieces = fault.pieces(body)
        resp = _synthetic(
            request,
            real.status,
            headers,
            pieces[0],
            eof=len(pieces) == 1,
            raw_headers=raw,
            reason=real.reason,
            read_timeout=read_timeout,
        )
        if len(pieces) > 1:
            assert isinstance(resp, _DribbledResponse)
            feeding = resp.feeding
            feeding.start(
                self._feed(request, feeding, pieces[1:], fault.chunk_delay_ms / 1000.0),
                _shutdown_of(request),
            )
        return resp

    def _dribble_live(
        self,
        request: ClientRequest,
        real: ClientResponse,
        fault: SlowBody,
        read_timeout: float | None,
    ) -> ClientResponse:
        """``real``'s status and headers at once, its body paced as it is read from the real
        connection, held to no limit: ``chunk_bytes`` read, handed on, ``chunk_delay_ms``
        before the next piece. What waits is a piece, and what the caller has not read yet
        (past aiohttp's high-water mark, no more is read from the real connection, as a slow
        reader holds a server back); the real connection is held until the body ends (then
        back to the pool) or the answer is closed, released or dropped (then closed).

        Nothing of the body is read before the head is handed on (an endless stream, a long
        poll, gets its head at once, as from the simulator): a body whose headers tell the
        length of what the caller reads (a ``Content-Length``, and no ``Content-Encoding``
        aiohttp decodes) is announced with it, another with no length."""
        headers, raw = _kept_headers(real, _told_length(real))
        resp = _synthetic(
            request,
            real.status,
            headers,
            b"",
            eof=False,
            content_length=False,
            raw_headers=raw,
            reason=real.reason,
            read_timeout=read_timeout,
        )
        assert isinstance(resp, _DribbledResponse)
        feeding = resp.feeding
        feeding.source = real
        # Only the caller's read runs under the call's total timer (the paced body's stream
        # carries it): aiohttp's TimerContext keeps the tasks in it as a stack, so a second
        # task reading under it (the feeder, reading the real connection) crossed their
        # exits, and the timeout then cancelled the caller wherever it was, its own work
        # between reads too. The feeder sees the timeout at its own steps (_cut) instead.
        # (aiohttp's empty body, a shared reader, uses no timer: left alone.)
        if real.content is not EMPTY_PAYLOAD:
            real.content._timer = TimerNoop()
        feeding.start(self._feed_live(request, real, feeding, fault), _shutdown_of(request))
        return resp

    async def _feed_live(
        self, request: ClientRequest, real: ClientResponse, feeding: _Feeding, fault: SlowBody
    ) -> None:
        """Feed ``feeding``'s body from ``real``'s, a piece at a time. (It holds no reference
        to the answer it feeds: see :class:`_Feeding`.)"""
        size = fault.chunk_bytes
        pause = fault.chunk_delay_ms / 1000.0
        first = True
        while True:
            # Only once the caller has read what it was handed (below aiohttp's low-water
            # mark): the real connection waits meanwhile, its own flow control pausing it.
            if not await _until_flowing(request, feeding):
                return
            piece, error = await _read_piece(real.content, size)
            if piece and not first:
                await self.clock.sleep(pause)
            if _cut(request, feeding):
                # As in _feed: the session closed (the rest never comes), or the call's
                # total timeout struck.
                return
            if piece:
                first = False
                feeding.put(piece)
            if error is not None:
                # The real body failed (cut short, timed out): the caller's read fails alike,
                # after what came before it (the bytes of this piece too), as aiohttp hands
                # on what arrived before a cut.
                feeding.fail(error, after_fed=True)
                return
            if len(piece) < size or real.content.at_eof():
                # Its end (a short piece is read only there): the connection goes back to
                # the pool now, as aiohttp's goes once the body has come whole.
                real.release()
                feeding.finish()
                return

    async def _feed(
        self,
        request: ClientRequest,
        feeding: _Feeding,
        pieces: list[bytes],
        pause: float,
    ) -> None:
        for piece in pieces:
            await self.clock.sleep(pause)
            if _cut(request, feeding):
                # Closed under the answer while it came (a close the feeding did not see
                # begin): the rest never comes, as on a connection the close cut. (Or the
                # call's total timeout struck: the body ends there.)
                return
            feeding.put(piece)
        feeding.finish()

    async def _wait(
        self, request: ClientRequest, seconds: float | None, *, read_timeout: float | None = None
    ) -> None:
        """Wait ``seconds`` on the clock (None: until cancelled), as for an answer that takes
        that long, unless the engine closes first: then :class:`ClosedInFlight`, as an answer
        being waited for fails when the engine closes the session under it (the retry loop
        stops the call with :class:`~le_transport.errors.EngineClosed`).

        Cut when the engine's close begins (its retry middleware's ``shutdown``), as the retry
        loop's own pauses are; a wait that began once the close had begun (the close's own
        calls: the logout) is waited out, as on the wire, and fails only if the session is
        closed by its end. Without an engine's retry middleware, the session's close fails it
        (seen within a tenth of a second).

        ``read_timeout``: the call's ``ClientTimeout.sock_read`` (None or 0: none), which
        fails the wait with aiohttp's :class:`aiohttp.SocketTimeoutError` once that long has
        passed on the loop's time, as aiohttp's own timer fails a call whose answer is that
        late (a ``Delay`` or a ``Hang`` on the simulator meets it so)."""
        shutdown = _shutdown_of(request)
        cut_by_close = shutdown is None or not shutdown.is_set()
        if not cut_by_close and not read_timeout:
            if seconds is None:
                await asyncio.get_running_loop().create_future()
            else:
                await self.clock.sleep(seconds)
        else:
            # Two tasks per wait, as the retry loop's pause: only a fault's wait pays them. With
            # no engine's close to watch, the session's own close ends the wait (looked at every
            # tenth of a second of loop time: aiohttp tells no one), as it ends a request a real
            # server holds: a Hang() waited on a session closed under it for ever.
            loop = asyncio.get_running_loop()
            waits: set[asyncio.Future[Any]] = set()
            closed: asyncio.Task[Any] | None = None
            if cut_by_close:
                closed = loop.create_task(
                    _session_closed(request) if shutdown is None else shutdown.wait(),
                    name="le_transport.chaos.closing",
                )
                waits.add(closed)
            waited: asyncio.Task[None] | None = None
            if seconds is not None:
                waited = loop.create_task(self.clock.sleep(seconds), name="le_transport.chaos.wait")
                waits.add(waited)
            # aiohttp's read timer, on the loop's time as aiohttp's own (not the clock's).
            late: asyncio.Future[None] | None = None
            timer: asyncio.TimerHandle | None = None
            if read_timeout:
                late = loop.create_future()
                timer = loop.call_later(read_timeout, _settle, late)
                waits.add(late)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if timer is not None:
                    timer.cancel()
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            if closed is not None and not closed.cancelled():
                raise _closed_in_flight(request)
            if late is not None and not late.cancelled() and (waited is None or waited.cancelled()):
                # As aiohttp's protocol fails a call whose answer is late for sock_read.
                raise aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        if request.session.closed:
            raise _closed_in_flight(request)

    # -- the hook for the socket layer -----------------------------------------------------

    def socket_opened(self, path: str, *, service: str | None = None) -> Injection | None:
        """Ask the plan about a socket that just opened (unit ``ws_session``), whose upgrade
        this injector did not decide on (:meth:`wrap_socket` asks it then).

        The answer's fault is ``WsClose``/``WsDrop``/``WsSilence`` (apply it after
        ``fault.after_messages`` received messages) or ``Delay``; None means no fault. A
        ``ws_reject_handshake`` cannot strike a socket already open: a rule holding one is
        not asked here (it is decided at the upgrade, when the upgrade passes through this
        injector).
        """
        if not self._run.plan.rules:
            return None
        return self._run.decide(
            "ws_session",
            method="GET",
            path=path,
            service=service,
            at=self.clock.now(),
            kinds=_SOCKET_KINDS,
        )

    async def wrap_socket(
        self, ws: aiohttp.ClientWebSocketResponse, path: str, *, service: str | None = None
    ) -> aiohttp.ClientWebSocketResponse | FaultySocket:
        """``ws``, just opened on ``path``, with the plan's socket faults applied to it.

        The session's fault is the one decided at its upgrade, when the upgrade passed
        through this injector (an engine's socket: see the middleware), else asked of
        :meth:`socket_opened` now: a ``delay`` is waited here (the open is that much slower);
        a ``ws_close``/``ws_drop``/``ws_silence`` strikes once the client has sent
        ``after_messages`` frames. Each request the client sends and each frame the server
        sends is then asked about as well (:mod:`le_transport.chaos.ws`). With no rule for a
        socket unit (``ws_session``, ``ws_message``), ``ws`` is returned as it is.

        The dialer asks the first active injector among the engine's middlewares: it wraps
        the socket for every other injector the upgrade passed through too (each with the
        session it decided), the one nearest the wire innermost, so that the socket rules of
        each injector strike it, whichever is listed first.
        """
        decisions = [d for d in _SESSION_DECIDED.get() if d.path == path]
        _SESSION_DECIDED.set(())
        # The dialer asks only the first active injector among the engine's middlewares: each
        # other injector the upgrade passed through (and decided its session) wraps the socket
        # too, the one nearest the wire innermost, as their middlewares nest. Else a second
        # injector's socket rules were decided at the upgrade (counted as injected) and never
        # applied, or never asked at all.
        wire: aiohttp.ClientWebSocketResponse | FaultySocket = ws
        for decided in decisions:
            wire = await decided.injector._wrap(wire, path, service, decided)
        if any(decided.injector is self for decided in decisions):
            return wire
        return await self._wrap(wire, path, service, None)

    async def _wrap(
        self,
        ws: aiohttp.ClientWebSocketResponse | FaultySocket,
        path: str,
        service: str | None,
        decided: _SessionDecided | None,
    ) -> aiohttp.ClientWebSocketResponse | FaultySocket:
        """``ws`` with this injector's socket faults applied: the session's fault ``decided``
        at the upgrade, else (None) asked of :meth:`socket_opened` now."""
        if not any(rule.unit in _SOCKET_UNITS for rule in self._run.plan.rules):
            return ws
        if not self._clock_checked:
            self._check_clock()
        if decided is not None:
            session = decided.injection
        else:
            session = self.socket_opened(path, service=service)
        if session is not None and isinstance(session.fault, Delay):
            await self.clock.sleep(session.delay_s)
            session = None
        wrapped = FaultySocket(ws, self, session, name=path)
        wrapped.strike_if_due()
        return wrapped

    def message_sent(self, type: str) -> Injection | None:
        """Ask the plan about a request the client is sending, matched on its ``type`` (unit
        ``ws_message``, the kinds a server applies to what it receives: ``status`` and
        ``ws_app_error`` answer it without sending it, ``hang`` loses it, ``delay`` sends it
        late, ``ws_close``/``ws_drop``/``ws_silence`` strike the connection instead)."""
        if not self._run.plan.rules:
            return None
        return self._run.decide(
            "ws_message", method="WS", path=type, at=self.clock.now(), kinds=WS_MESSAGE_FAULTS
        )

    def message_arriving(self, type: str) -> Injection | None:
        """Ask the plan about a frame the server sent, matched on its ``type`` (a ``resp`` is
        ``<request type>$Response``; unit ``ws_message``, the outbound kinds:
        ``ws_drop_message`` loses it, ``ws_delay`` holds it, ``delay_s`` with jitter drawn)."""
        if not self._run.plan.rules:
            return None
        return self._run.decide(
            "ws_message", method="WS", path=type, at=self.clock.now(), kinds=WS_OUTBOUND_FAULTS
        )

    def message_received(self, type: str) -> Injection | None:
        """Ask the plan about one received message, matched on its ``type`` (unit
        ``ws_message``): drop the connection or the message (``ws_drop_message``), close,
        silence, delay (``delay``, ``ws_delay``: ``delay_s`` has the jitter drawn), or a
        ``status`` or ``ws_app_error`` to treat it as (a ``resp`` with that code)."""
        if not self._run.plan.rules:
            return None
        return self._run.decide(
            "ws_message", method="WS", path=type, at=self.clock.now(), kinds=_MESSAGE_KINDS
        )


class _NoWriter:
    """Stands in for the stream writer of a request that was never sent."""

    output_size = 0


class _LocalProtocol(BaseProtocol):
    """The protocol behind a locally built body: no socket to pause, and "connected" for as
    long as the body is being fed (aiohttp's reader refuses to wait on a closed connection).
    Its reader's flow control (more held than its high-water mark: paused; read down below its
    low-water mark: resumed) is kept in :attr:`flowing`, which what feeds the body from a live
    connection waits for (:meth:`FaultInjector._feed_live`), and told to :attr:`feeding` (its
    read timeout stops while the reader holds back, as aiohttp's own protocol stops it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        #: Set while the reader takes more (cleared while it holds past its high-water mark).
        self.flowing = asyncio.Event()
        self.flowing.set()
        #: What feeds the body, for one still arriving.
        self.feeding: _Feeding | None = None

    @property
    def connected(self) -> bool:
        return True

    def pause_reading(self) -> None:
        # Nothing to pause but the feeding of a live body: one fed from memory ignores it.
        self.flowing.clear()
        if self.feeding is not None:
            self.feeding.paused()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # (aiohttp's reader calls it after each read below its low-water mark, paused or not.)
        if self.flowing.is_set():
            return
        self.flowing.set()
        if self.feeding is not None:
            self.feeding.resumed()


class _Feeding:
    """What feeds the body of a :class:`_DribbledResponse` still arriving: the task that feeds
    it (:attr:`feeder`), the one that waits for the engine's close (:attr:`watcher`), the real
    answer it is read from (:attr:`source`, None: fed from memory), its read timeout, and what
    waits for its end.

    Nothing here refers to the answer it feeds, so that an answer the caller drops unread and
    unreleased is collected at once, and its collection stops the feeding (the real connection
    closed): a task holding the answer waited for ever, on a connection never given back, and
    was destroyed pending once a cyclic collection came.

    Its end (the body whole, failed, or the answer closed, released or dropped) is what
    aiohttp's session waits for through the answer's connection (:meth:`add_callback`): the
    call's ``ClientTimeout.total`` runs until then, as it runs until a real body has come.
    Its read timeout is the call's ``ClientTimeout.sock_read`` (None: none), kept as aiohttp's
    own protocol keeps it: armed as the head is handed on, rearmed by each piece fed, stopped
    while the reader holds past its high-water mark (the reader's pause, not the server's) and
    at the body's end. When it fires, the body fails with aiohttp's
    :class:`~aiohttp.SocketTimeoutError` and the feeding stops."""

    def __init__(
        self,
        content: _FedStream,
        protocol: _LocalProtocol,
        read_timeout: float | None,
        loop: asyncio.AbstractEventLoop,
        *,
        timer: BaseTimerContext | None = None,
    ) -> None:
        self.content = content
        content.feeding = self
        self.flowing = protocol.flowing
        protocol.feeding = self
        #: The call's total timer (the one the caller's read runs under), which the feeding
        #: does not enter: it asks it whether it struck (:attr:`struck`).
        self.timer: BaseTimerContext = timer if timer is not None else TimerNoop()
        self.read_timeout = read_timeout or None  # (0 is none, as for aiohttp)
        self.feeder: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[bool] | None = None
        self.source: ClientResponse | None = None
        self._loop = loop
        self._read_timer: asyncio.TimerHandle | None = None
        #: Called at its end; None once it ended.
        self._at_end: list[Callable[[], None]] | None = []

    @property
    def ended(self) -> bool:
        return self._at_end is None

    @property
    def struck(self) -> bool:
        """Whether the call's total timeout has struck (its reads fail with TimeoutError)."""
        try:
            self.timer.assert_timeout()
        except TimeoutError:
            return True
        return False

    def start(self, feeding: Coroutine[Any, Any, None], shutdown: asyncio.Event | None) -> None:
        """Feed the body with ``feeding``, in a task of its own; when ``shutdown`` is set
        before it is done (the engine closes), it stops and a reader meets
        :class:`ClosedInFlight`, as the reader of a body the close cut does. A close already
        begun (the close's own call: its logout) does not stop it."""
        self.feeder = self._loop.create_task(feeding, name="le_transport.chaos.slow_body")
        # However the feeding ends (its body's end, a failure, cancelled: even before it
        # began), what it holds is let go.
        self.feeder.add_done_callback(self._fed)
        self._rearm()
        if shutdown is None or shutdown.is_set():
            return
        self.watcher = self._loop.create_task(shutdown.wait(), name="le_transport.chaos.closing")
        self.watcher.add_done_callback(self._cut_by_close)

    def put(self, piece: bytes) -> None:
        """Hand ``piece`` on to the reader."""
        self.content.feed_data(piece)
        self._rearm()

    def finish(self) -> None:
        """The body has come whole: its end."""
        self.content.feed_eof()
        self.stop()

    def fail(self, exc: BaseException, *, after_fed: bool = False) -> None:
        """The body ends with ``exc``: at once (a reader's next read meets it, as aiohttp's
        meets a timeout or a close), or with ``after_fed``, once what was handed on is read
        (the real body's failure, after its last bytes). Its end."""
        if after_fed:
            self.content.end_with(exc)
        else:
            self.content.set_exception(exc)
        self.stop()

    def paused(self) -> None:
        self._disarm()

    def resumed(self) -> None:
        if not self.ended:
            self._rearm()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the body's end (at once, when it has ended)."""
        if self._at_end is None:
            callback()
        else:
            self._at_end.append(callback)

    def stop(self) -> None:
        """The body's end: stop feeding (nothing more is handed on), close the real answer (its
        connection dropped; nothing to do once it went back to the pool at its body's end),
        and call what waits for the end."""
        current = asyncio.current_task(self._loop)
        for task in (self.feeder, self.watcher):
            # (The feeder ending the body itself returns at once.)
            if task is not None and task is not current and not task.done():
                task.cancel()
        self._disarm()
        source, self.source = self.source, None
        if source is not None:
            source.close()
        at_end, self._at_end = self._at_end, None
        for callback in at_end or ():
            try:
                callback()
            except Exception:  # pragma: no cover - aiohttp's own callbacks do not raise
                _log.exception("a callback at the end of a slow body failed")

    def abandon(self) -> None:
        """The answer was dropped, unreleased: stop, if its loop still runs (as aiohttp
        closes the connection of an answer dropped unread)."""
        if not self.ended and not self._loop.is_closed():
            self.stop()

    def _fed(self, feeder: asyncio.Task[None]) -> None:
        content = self.content
        if not self.ended and not content.is_eof() and content.exception() is None:
            # Ended without ending the body (cancelled from outside: the loop's shutdown; or
            # failed on a bug): the caller's read must end too, not wait for ever.
            error = None if feeder.cancelled() else feeder.exception()
            if error is None:
                error = (
                    TimeoutError()
                    if self.struck
                    else aiohttp.ClientConnectionError(
                        "the feeding of the paced body was cancelled"
                    )
                )
            content.set_exception(error)
        self.stop()

    def _cut_by_close(self, watcher: asyncio.Task[bool]) -> None:
        feeder = self.feeder
        if watcher.cancelled() or feeder is None or feeder.done():
            return  # the body came whole, or the answer was closed or released
        self.fail(_closed_in_flight(None))

    def _rearm(self) -> None:
        self._disarm()
        if self.read_timeout is not None and self.flowing.is_set():
            # (Not while the reader holds back: a piece that filled its buffer paused it.)
            self._read_timer = self._loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        # As aiohttp's protocol fails the body of a connection silent for sock_read.
        self._read_timer = None
        if not self.ended:
            self.fail(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))


class _FedConnection:
    """What a :class:`_DribbledResponse` says is its connection while its body is still being
    fed. Once its middlewares have returned an answer, aiohttp's session hands its connection
    the end of the call's ``ClientTimeout.total`` (:meth:`add_callback`, called when the
    connection is released: at the body's end), and ends the timeout at once for an answer
    with none: so the total keeps running over a paced body, as over a slow server's. No
    socket is behind it (its protocol and transport are None)."""

    __slots__ = ("_feeding",)

    protocol = None
    transport = None

    def __init__(self, feeding: _Feeding) -> None:
        self._feeding = feeding

    @property
    def closed(self) -> bool:
        return self._feeding.ended

    def add_callback(self, callback: Callable[[], None] | None) -> None:
        if callback is not None:
            self._feeding.add_callback(callback)


class _DribbledResponse(_ClientResponse):
    """A locally built response whose body is still arriving, fed by its :attr:`feeding`:
    closing or releasing it stops the feeding, so an abandoned slow body leaves nothing
    running (and a real answer it is fed from is closed: its connection dropped, unless its
    body was read to its end and it went back to the pool); so does dropping it unreleased.
    Its :attr:`connection` stands for the one the body comes on until the body's end
    (:class:`_FedConnection`)."""

    feeding: _Feeding

    @property
    def feeder(self) -> asyncio.Task[None] | None:
        """The task feeding the body."""
        return self.feeding.feeder

    @property
    def source(self) -> ClientResponse | None:
        """The real answer the body is read from as it is fed (None: fed from memory, or
        let go)."""
        return self.feeding.source

    @property
    def connection(self) -> Connection | None:
        if self.feeding.ended:
            return None
        return cast("Connection", _FedConnection(self.feeding))

    def close(self) -> None:
        self.feeding.stop()
        super().close()

    def release(self) -> Any:
        self.feeding.stop()
        return super().release()

    def __del__(self, _warnings: Any = warnings) -> None:
        # Dropped unreleased (read or not): what feeds it stops, its real connection closed,
        # as aiohttp lets go of the connection of an answer dropped unread.
        feeding = self.__dict__.get("feeding")
        if feeding is not None:
            feeding.abandon()
        super().__del__(_warnings)


class _FedStream(aiohttp.StreamReader):
    """The body of a :class:`_DribbledResponse`, fed as it comes. A failure of the real body it
    is fed from reaches its reader after what was fed before it (:meth:`end_with`): as from a
    server that sent those bytes and then cut the connection, they are read first (aiohttp's
    reads raise a stream's error before returning what it holds, and a piece and the failure
    after it come together here)."""

    def __init__(
        self,
        protocol: BaseProtocol,
        limit: int,
        *,
        timer: BaseTimerContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(protocol, limit, timer=timer, loop=loop)
        #: The error the body ends with once what it holds is read.
        self._ending: BaseException | None = None
        #: What feeds it (set by the :class:`_Feeding`).
        self.feeding: _Feeding | None = None

    def end_with(self, exc: BaseException) -> None:
        """End the body with ``exc`` once what it holds is read: at once if it holds none, or
        if a reader waits for more already (one that wants a whole line, say: it meets the
        error at once from aiohttp's reader too)."""
        if self._buffer and self._waiter is None and self._eof_waiter is None:
            self._ending = exc
        else:
            self.set_exception(exc)

    def _end(self) -> None:
        exc, self._ending = self._ending, None
        if exc is not None and self.exception() is None:
            self.set_exception(exc)

    async def _wait(self, func_name: str) -> None:
        # Every read waits here once what the stream holds is drained and it wants more: no
        # more will come.
        if self._ending is not None:
            self._end()
            raise cast(BaseException, self.exception())
        try:
            await super()._wait(func_name)
        except TimeoutError:
            self._struck()
            raise

    async def wait_eof(self) -> None:
        if self._ending is not None:
            self._end()
            raise cast(BaseException, self.exception())
        await super().wait_eof()

    def read_nowait(self, n: int = -1) -> bytes:
        if self._ending is not None and not self._buffer:
            self._end()
        return super().read_nowait(n)

    def _read_nowait(self, n: int) -> bytes:
        try:
            return super()._read_nowait(n)
        except TimeoutError:
            self._struck()
            raise

    def _struck(self) -> None:
        # A read met the call's total timeout (aiohttp's timer: the read that waits when it
        # strikes, or any after it): the body ends there, and its feeding with it.
        feeding = self.feeding
        if feeding is not None and not feeding.ended:
            feeding.fail(TimeoutError())


class _CutShortStream(aiohttp.StreamReader):
    """A body cut short: the bytes fed to it are read as they are, then a reader that wants
    more meets ``error``, as a reader of a connection closed mid-body does (the bytes that
    arrived first, then the payload error). The error is set only then, not when the bytes are
    fed: aiohttp's reads raise a stream's error before returning what it holds."""

    def __init__(
        self,
        protocol: BaseProtocol,
        limit: int,
        *,
        loop: asyncio.AbstractEventLoop,
        error: BaseException,
    ) -> None:
        super().__init__(protocol, limit, loop=loop)
        self._cut_error = error

    async def _wait(self, func_name: str) -> None:
        # Called by every read (read, readany, readchunk, readexactly, readuntil, the
        # iterators) once what was fed is drained and more is wanted: no more will come.
        self.set_exception(self._cut_error)
        raise self._cut_error

    async def wait_eof(self) -> None:
        # No more will come: the cut ends the wait, as a connection's close ends it on a real
        # one (aiohttp's waited for an end of body that never came: for ever).
        if self._eof:
            return
        self.set_exception(self._cut_error)
        raise self._cut_error

    def read_nowait(self, n: int = -1) -> bytes:
        # Drained: the next read meets the cut, as on a connection whose close has arrived
        # (aiohttp's would return b"" while the connection is still open).
        if self.exception() is None and not self._buffer:
            self.set_exception(self._cut_error)
        return super().read_nowait(n)

    def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
        # The answer's connection ended with the cut already: releasing or closing the answer
        # (aiohttp's "Connection closed") leaves the cut as the error a later read meets.
        super().set_exception(self._cut_error, *args, **kwargs)


#: The headers that described the body on the wire: a body handed back (whole, or cut) is
#: announced by a Content-Length of its own, and one handed back decoded by no Content-Encoding.
_WIRE_BODY_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding"})
#: Those of them a body handed back as it came on the wire (not decoded) keeps.
_UNDECODED_KEEPS = frozenset({"content-encoding"})


def _decoded(real: ClientResponse) -> bool:
    """Whether the body aiohttp hands on of ``real`` is not the wire's but decoded from it: a
    ``Content-Encoding`` aiohttp inflates (gzip, deflate, br, zstd), read with
    ``auto_decompress`` (the session's, or the request's). Else (no encoding, one aiohttp does
    not decode, a caller that decodes the body itself) its reader gets the wire's bytes, which
    its ``Content-Length`` and ``Content-Encoding`` describe.

    aiohttp's parser counts the wire's bytes of a body it decodes, and only of one
    (``StreamReader.total_compressed_bytes``: None for a body it does not decode)."""
    return hdrs.CONTENT_ENCODING in real.headers and real.content.total_compressed_bytes is not None


def _told_length(real: ClientResponse) -> int | None:
    """The length of ``real``'s body as its reader gets it, when its headers tell it: its
    ``Content-Length``, unless aiohttp decodes the body (None: not told)."""
    return None if _decoded(real) else real.content_length


def _read_timeout_of(real: ClientResponse) -> float | None:
    """The read timeout (``ClientTimeout.sock_read``) ``real`` was read under: that of the
    connection it came on (which aiohttp's answer keeps once it has let the connection go: a
    short body came whole with its head), None for none (or an answer that came on none)."""
    protocol = real._protocol
    return protocol.read_timeout if protocol is not None else None


def _kept_headers(real: ClientResponse, length: int | None) -> tuple[CIMultiDict[str], RawHeaders]:
    """``real``'s headers and raw headers, every one kept as it came (a repeated ``Set-Cookie``
    or ``Link`` too) but those of :data:`_WIRE_BODY_HEADERS`, with ``Content-Length:
    length`` in their place (None: the length is not known, and none is said). A body aiohttp
    does not decode (no encoding it knows; a caller with ``auto_decompress=False``) is handed
    on as it came, still encoded: its ``Content-Encoding`` is kept, for the caller to decode
    it by."""
    dropped = _WIRE_BODY_HEADERS if _decoded(real) else _WIRE_BODY_HEADERS - _UNDECODED_KEEPS
    headers = CIMultiDict(
        (name, value) for name, value in real.headers.items() if name.lower() not in dropped
    )
    raw = tuple(
        (name, value)
        for name, value in real.raw_headers
        if name.decode("latin-1").lower() not in dropped
    )
    if length is None:
        return headers, raw
    headers["Content-Length"] = str(length)
    return headers, (*raw, (b"Content-Length", str(length).encode()))


#: The limit an injector without an engine's retry middleware reads a real answer through (that
#: of a RetryMiddleware made with none given: DEFAULT_MAX_BODY_BYTES), and how it reads it.
_UNBOUND = RetryMiddleware()


def _retry_of(request: ClientRequest) -> RetryMiddleware:
    """The retry middleware ``request``'s call runs in: the first of its session's middlewares
    that is one (an engine's session holds the engine's; a provider's call goes on that
    session), else :data:`_UNBOUND`. Its ``max_body_bytes`` bounds what the injector reads of
    a real answer, its ``shutdown`` cuts the injector's waits; asked only by a fault that reads
    or waits."""
    for middleware in getattr(request.session, "_middlewares", None) or ():
        if isinstance(middleware, RetryMiddleware):
            return middleware
    return _UNBOUND


def _settle(future: asyncio.Future[None]) -> None:
    """Set ``future``'s result, unless it is done already (cancelled)."""
    if not future.done():
        future.set_result(None)


#: How many of aiohttp's middleware wrappers :func:`_sock_read_of` follows: far more than any
#: session has middlewares.
_MAX_HANDLER_CHAIN = 256

#: What :func:`_sock_read_of` reads in a function of aiohttp's module: a middleware's wrapper
#: (its next handler), or the handler that connects and sends (the call's timeout).
_AIOHTTP_CHAIN = {"aiohttp.client_middlewares": "next_h", "aiohttp.client": "real_timeout"}


def _sock_read_of(handler: ClientHandlerType) -> float | None:
    """The ``ClientTimeout.sock_read`` of the call ``handler`` sends (None: none, or not
    found), before anything is sent: aiohttp hands it to the connection only as it sends.

    Read from aiohttp's handler chain, as :func:`build_client_middlewares` makes it: each
    middleware's wrapper holds the next handler (``next_h``), and the last, the one that
    connects and sends, the call's timeout (``real_timeout``, a per-call ``timeout=`` or the
    session's). Only aiohttp's own functions are read (a caller's closure holding a
    ``real_timeout`` or a ``next_h`` of its own is no part of the call's chain, and a mock
    handler has no closure to read); a chain of another shape (another aiohttp, a handler a
    caller made) gives None: no read timeout is applied to a fault's wait, as before. Never
    raises."""
    fn: object = handler
    for _ in range(_MAX_HANDLER_CHAIN):
        if not isinstance(fn, types.FunctionType):
            return None
        wants = _AIOHTTP_CHAIN.get(fn.__module__)
        cells = fn.__closure__
        if wants is None or not cells:
            return None
        free = dict(zip(fn.__code__.co_freevars, cells, strict=False))
        cell = free.get(wants)
        if cell is None:
            return None
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            return None
        if wants == "next_h":
            fn = value
            continue
        if isinstance(value, aiohttp.ClientTimeout):
            sock_read = value.sock_read
            return sock_read if isinstance(sock_read, (int, float)) else None
        return None
    return None


def _shutdown_of(request: ClientRequest) -> asyncio.Event | None:
    """The event set when the engine running ``request``'s call closes (None: no engine)."""
    return _retry_of(request).shutdown


def _closed_in_flight(request: ClientRequest | None) -> ClosedInFlight:
    """What an answer being waited for or read fails with when the engine closes under it,
    as the engine fails those on its connections (the retry loop makes it EngineClosed); or,
    the session closed by its owner without an engine's close (``request``'s call runs under
    no engine's retry middleware, or its close has not begun): said so, not as an engine's
    close, and still typed (an :class:`aiohttp.ClientConnectionError`; aiohttp's own reader of
    a body the session's close cut meets a bare ``RuntimeError``). None: the engine's
    close."""
    shutdown = None if request is None else _shutdown_of(request)
    if request is None or (shutdown is not None and shutdown.is_set()):
        return ClosedInFlight("the engine was closed with the call in flight")
    return ClosedInFlight("the session was closed with the call in flight")


#: How often a feeding the reader holds back looks whether the session closed meanwhile (on
#: the loop's time): aiohttp tells nothing else of a plain session's close.
_HELD_BACK_CHECK_S = 0.1


def _cut(request: ClientRequest, feeding: _Feeding) -> bool:
    """Whether the body ``feeding`` feeds ends here, not fed on (then failed): the session
    was closed (:class:`ClosedInFlight`: the rest never comes, as on a connection the close
    cut), or the call's total timeout struck (``TimeoutError``, as aiohttp's reads meet it
    once it has struck)."""
    if request.session.closed:
        feeding.fail(_closed_in_flight(request))
        return True
    if feeding.struck:
        feeding.fail(TimeoutError())
        return True
    return False


async def _session_closed(request: ClientRequest) -> None:
    """Return once ``request``'s session is closed (looked at every tenth of a second)."""
    session = request.session
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    while not session.closed:
        await asyncio.wait({never}, timeout=_HELD_BACK_CHECK_S)


async def _until_flowing(request: ClientRequest, feeding: _Feeding) -> bool:
    """Wait until the reader takes more (below its low-water mark); False if the body ended
    meanwhile (:func:`_cut`): a reader holding back must not keep the feeding, the real answer
    and what it holds alive past the session's close or the call's total timeout."""
    flowing = feeding.flowing
    while not flowing.is_set():
        if _cut(request, feeding):
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_HELD_BACK_CHECK_S):
                await flowing.wait()
    return True


def _reader(request: ClientRequest, handler: ClientHandlerType) -> _Call:
    """The retry middleware's reading of an answer to ``request`` (its limit, its excerpt of a
    failed answer over it, its BodyTooLarge), for the call in progress: the injector reads a
    real answer it holds whole as the engine reads it, not on its own terms."""
    mw = _retry_of(request)
    ctx = current_call()
    if ctx is None:
        ctx = CallContext()  # as the retry middleware makes one for a call without a context
    return _Call(mw, ctx, ctx.retry or mw.policy, request, handler)


async def _read_piece(stream: aiohttp.StreamReader, size: int) -> tuple[bytes, Exception | None]:
    """The next ``size`` bytes of ``stream`` (fewer at its end; none: it has ended), and the
    error it failed with before they all came (None: it did not): what came before the error
    is returned with it, not lost."""
    chunks: list[bytes] = []
    got = 0
    error: Exception | None = None
    while got < size:
        try:
            chunk = await stream.read(size - got)
        except Exception as exc:
            error = exc
            break
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), error


async def _read_start(real: ClientResponse, size: int) -> bytes:
    """The first ``size`` bytes of ``real``'s body (as read; fewer if it is shorter), the
    rest not read: the connection goes back to the pool when the body ended, else is dropped."""
    try:
        data, error = await _read_piece(real.content, size)
    except BaseException:
        real.close()
        raise
    if error is not None:
        real.close()
        raise error
    if real.content.at_eof():
        real.release()
    else:
        real.close()
    return data


async def _drain(real: ClientResponse, limit: int) -> None:
    """Read ``real``'s body to its end and drop it, chunk by chunk (nothing held), so that its
    connection goes back to the pool; past ``limit`` bytes (as decoded) the connection is
    dropped instead."""
    read = 0
    try:
        async for chunk in real.content.iter_any():
            read += len(chunk)
            if read > limit:
                real.close()
                return
    except BaseException:
        real.close()
        raise
    real.release()


def _over_limit(
    request: ClientRequest, real: ClientResponse, limit: int, kept: bytes
) -> ClientResponse:
    """``real``'s head, its body passing ``limit``, handed on with ``kept`` (its excerpt, or
    nothing) and a ``Content-Length`` past the limit (its own, when it told the body's length),
    then cut: the caller's retry middleware refuses it (BodyTooLarge) or keeps its excerpt (a
    failed answer) as it would the real answer, and records its status."""
    length = _told_length(real)
    if length is None or length <= limit:
        length = limit + 1
    headers, raw = _kept_headers(real, max(length, len(kept) + 1))
    return _synthetic(
        request,
        real.status,
        headers,
        kept,
        raw_headers=raw,
        reason=real.reason,
        cut_short=aiohttp.ClientPayloadError(
            "Response payload is not completed (the body passed the call's limit)"
        ),
    )


def _bodiless(method: str, status: int) -> bool:
    """Whether an answer to ``method`` with ``status`` has no body on the wire (RFC 9112 6.3),
    as the simulator's :func:`~le_transport.testing.simulator.body_cut.bodiless` says."""
    return method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304)


def _made_up(
    request: ClientRequest,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    json: bool = False,
) -> ClientResponse:
    """An answer the injector makes up (a ``Status``, a quota's refusal, a malformed body, a
    refused upgrade: no real answer behind it), as the simulator's aiohttp sends the same one
    (RFC 9110 6.4.1, 8.6): a status that cannot carry a body (a 1xx, 204 or 304) comes with
    neither a body nor a ``Content-Length``; the answer to a HEAD announces the body's length
    (an empty one, none) and carries none; any other carries ``body``."""
    if _bodiless("GET", status):
        kept = CIMultiDict((k, v) for k, v in headers.items() if k.lower() != "content-length")
        return _synthetic(request, status, kept, b"", json=json, content_length=False)
    if request.method.upper() == "HEAD":
        announced = CIMultiDict(headers)
        if "Content-Length" not in announced and body:
            # (An empty body is announced by nothing, as aiohttp's server does.)
            announced["Content-Length"] = str(len(body))
        return _synthetic(request, status, announced, b"", json=json, content_length=False)
    return _synthetic(request, status, headers, body, json=json)


def _synthetic(
    request: ClientRequest,
    status: int,
    headers: Mapping[str, str] | CIMultiDict[str],
    body: bytes,
    *,
    json: bool = False,
    content_length: bool = True,
    cut_short: BaseException | None = None,
    eof: bool = True,
    raw_headers: RawHeaders | None = None,
    reason: str | None = None,
    read_timeout: float | None = None,
) -> ClientResponse:
    """A complete :class:`aiohttp.ClientResponse` built locally, as if the server had sent it
    (with ``eof=False``, a :class:`_DribbledResponse`, whose body is still to be fed by its
    :attr:`~_DribbledResponse.feeding`, under the call's timeouts: its ``ClientTimeout.total``
    and ``read_timeout``, its ``sock_read``; with ``cut_short``, one whose body ends after
    ``body`` with that error, once a reader has taken ``body`` and wants more).

    Its cookies (``resp.cookies``, and what the session's cookie jar takes) are read from its
    ``Set-Cookie`` headers, as aiohttp reads a real answer's; ``raw_headers`` are the ones the
    server sent, when the answer is a real one handed back (else made from ``headers``). A
    ``Content-Length`` is added when ``headers`` has none, unless ``content_length`` is False
    (a status that cannot carry a body)."""
    loop = asyncio.get_running_loop()
    resp = (_DribbledResponse if not eof and cut_short is None else _ClientResponse)(
        request.method,
        request.url,
        writer=None,
        continue100=None,
        timer=None,  # type: ignore[arg-type]
        request_info=request.request_info,
        traces=[],
        loop=loop,
        session=request.session,
        stream_writer=_NoWriter(),  # type: ignore[arg-type]
    )
    hdrs = CIMultiDict(headers)
    if json and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    if content_length and "Content-Length" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
        if raw_headers is not None:
            raw_headers = (*raw_headers, (b"Content-Length", str(len(body)).encode()))
    resp.status = status
    resp.reason = reason if reason is not None else _REASONS.get(status, "Injected")
    resp._headers = CIMultiDictProxy(hdrs)
    resp._raw_headers = (
        raw_headers
        if raw_headers is not None
        else tuple(
            (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
            for k, v in hdrs.items()
        )
    )
    # As aiohttp does for a real answer: resp.cookies parses these when first read, and the
    # session's cookie jar takes them once the middlewares have returned the answer.
    set_cookies = hdrs.getall("Set-Cookie", [])
    if set_cookies:
        resp._raw_cookie_headers = tuple(set_cookies)
    protocol = _LocalProtocol(loop)
    content: aiohttp.StreamReader
    if cut_short is not None:
        content = _CutShortStream(protocol, 2**16, loop=loop, error=cut_short)
    elif isinstance(resp, _DribbledResponse):
        # Read under the call's total timeout, as the real answer's body is (the timer
        # aiohttp gave the request and its answer's stream: a reader waiting on the stream
        # when it expires meets TimeoutError, and so does any read after).
        fed = _FedStream(protocol, 2**16, timer=request._timer, loop=loop)
        resp.feeding = _Feeding(fed, protocol, read_timeout, loop, timer=request._timer)
        content = fed
    else:
        content = aiohttp.StreamReader(protocol, 2**16, loop=loop)
    if body:
        content.feed_data(body)
    if cut_short is None and eof:
        content.feed_eof()
    resp.content = content
    return resp


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    451: "Unavailable For Legal Reasons",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
