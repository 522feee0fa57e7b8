"""The fault vocabulary: one seeded, serialisable description of what should go wrong, and when.

A :class:`FaultPlan` is a seed and a list of :class:`FaultRule`. Each rule says which traffic it
applies to (:class:`Match`), what one decision is about (its ``unit``: an HTTP request, a
WebSocket session, or one WebSocket message), when it fires (a count window
:class:`Schedule`, or an explicit ``sequence``), with which probability ``p``, and what fault it
injects. The simulator's scripting and the client-side :class:`~le_transport.chaos.FaultInjector`
both consume it, so a plan written for one works with the other; ``to_dict``/``from_dict`` give
its JSON form.

Decisions are reproducible: the draw for a rule's n-th matching unit comes from a stream derived
from ``(seed, rule.id, n)`` alone, so concurrency cannot reorder outcomes and adding a rule never
shifts another rule's draws. A :class:`FaultRun` applies a plan and keeps the decision log: the
newest ``max_records`` decisions (default :data:`DEFAULT_MAX_RECORDS`) in a :class:`RecordLog`,
and exact per-rule totals of what it matched and injected (kept while the rule is in the
plan: :meth:`FaultRun.change_plan` starts a re-added or removed rule over).

Units are explicit in every name: ``delay_ms``, ``after_messages``, ``keep_bytes``; a
``retry_after`` is seconds (a number) or an HTTP-date (a string), as RFC 9110 allows.

Kinds by unit (:data:`UNIT_KINDS`): :data:`HTTP_FAULTS` apply to requests (``slow_body`` and
``quota`` only there), :data:`WS_FAULTS` to sessions, :data:`WS_MESSAGE_FAULTS` to messages from
the client and :data:`WS_OUTBOUND_FAULTS` to messages from the server (``ws_app_error``,
``ws_delay`` and ``ws_drop_message`` only on unit ``ws_message``). A rule that could never fire
is refused when it is made or loaded, with a :class:`~le_transport.errors.ConfigurationError`
naming the kind, the unit and the units the kind works on: a kind on a unit that does not
apply it (a ``WsDrop`` left on the default unit ``request``, a ``Status`` on ``ws_session``), a
``ws_message`` rule that names a ``method`` other than ``WS`` or a ``service`` (messages have
neither), a ``ws_session`` rule whose ``method`` is not ``GET`` (an upgrade is a GET), a
``ws_message`` rule whose ``WsClose``/``WsDrop``/``WsSilence`` has an ``after_messages`` other
than 0 (a message fault strikes on the matched message itself, so the count would be ignored:
to strike after a number of messages, use unit ``ws_session``).

**Rules do not add up: on each unit, the first rule that fires wins.** Rules are consulted in
plan order; once one injects, every later rule due on the same unit is logged ``shadowed`` and
injects nothing: its counter still moves on, so a shadowed turn is lost, not postponed. A
latency rule listed before a burst of 503s on the same route takes the burst's turns whenever
it fires (``Schedule(skip_first=5, fail_next=3)`` may inject one 503, or none): list the rule
that must happen first, or give the two rules routes (or units) of their own.
:meth:`FaultRun.rule_counts` (and ``FaultInjector.rule_counts()``, ``sim.faults.rule_counts()``,
the summary ``le-transport simulate`` prints when it stops) shows, per rule, how often it was
shadowed: a rule that injected nothing while it was due was shadowed for its whole run.
"""

from __future__ import annotations

import collections
import decimal
import fnmatch
import hashlib
import itertools
import json
import logging
import math
import operator
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableSequence, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast, overload

import attrs

from .._checks import require_kind, require_option, utf8_encodable
from .._json import loads_strict
from .._redact import redact_url
from ..errors import ConfigurationError
from ..policies._validate import finite_number
from ..policies.retry_after import MAX_RETRY_AFTER_CHARS

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "HTTP_FAULTS",
    "MAX_COUNT",
    "MAX_SCHEDULE_MS",
    "MAX_SEED",
    "MIN_SEED",
    "MIN_WINDOW_MS",
    "UNITS",
    "UNIT_KINDS",
    "UPGRADE_FAULTS",
    "WS_FAULTS",
    "WS_MESSAGE_FAULTS",
    "WS_OUTBOUND_FAULTS",
    "Delay",
    "EmptyResponse",
    "Fault",
    "FaultDecision",
    "FaultPlan",
    "FaultRule",
    "FaultRun",
    "Hang",
    "Injection",
    "MalformedBody",
    "Match",
    "Quota",
    "RecordLog",
    "Reset",
    "RuleCounts",
    "Schedule",
    "SharedBound",
    "SlowBody",
    "Status",
    "TruncatedBody",
    "WsAppError",
    "WsClose",
    "WsDelay",
    "WsDrop",
    "WsDropMessage",
    "WsRejectHandshake",
    "WsSilence",
    "as_plan",
    "check_close_code",
    "check_max_records",
    "fault_from_dict",
]

#: The range of a :class:`FaultPlan`'s seed: an int of 64 bits, signed or not.
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1

#: How much of a value an error message echoes by default.
_SHOWN_CHARS = 40


def _shown(value: object, limit: int = _SHOWN_CHARS) -> str:
    """``value`` for an error message: its ``repr``, cut to ``limit`` characters ("..." marks
    the cut). A plan file's value reaches a message, a log line or a terminal, so a hostile one
    (a megabyte of id) must not reach it whole; an int too long to write (``repr`` raises
    ``ValueError`` past 4300 digits) is named by its size, so the message itself cannot fail."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container holding such an int
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}..."


Unit = Literal["request", "ws_session", "ws_message"]
#: What one decision is about: an HTTP request (also a WebSocket upgrade seen as a request),
#: a WebSocket session (decided at its handshake), or one message received on a socket.
UNITS: tuple[str, ...] = ("request", "ws_session", "ws_message")


#: The largest count a plan may hold (a :class:`Schedule`'s ``skip_first`` and ``fail_next``,
#: an ``after_messages``): an int of 64 bits, which any JSON reader keeps exact, as the seed.
#: Far past any run; a larger one never fires, and one past 4300 digits made the plan's JSON
#: fail to write (a bare ``ValueError`` from ``json.dumps``).
MAX_COUNT = 2**63 - 1


def _non_negative_int(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise ConfigurationError(
                f"{type(instance).__name__}.{name} must be an int in 0..{MAX_COUNT} (2**63 - "
                f"1), got {_shown(value)}"
            )

    return check


def _non_negative_number(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        # finite_number, not a comparison with inf: an int past float's range (10**400 in a
        # JSON plan) compares below inf, then fails untyped when the fault's arithmetic runs.
        if not finite_number(value) or value < 0:  # type: ignore[operator]
            raise ConfigurationError(
                f"{type(instance).__name__}.{name} must be a finite number >= 0, "
                f"got {_shown(value)}"
            )

    return check


#: The largest body piece a :class:`SlowBody` may name: the engine's default body limit.
MAX_CHUNK_BYTES = 16 * 2**20
#: The most bytes a :class:`TruncatedBody` may keep: 1 TiB, far past any answer a test reads
#: (the engine's default body limit is 16 MiB), and far inside the 64-bit ``Content-Length``
#: every HTTP parser takes (a larger count, which a JSON plan can hold, made the simulator
#: announce a length the client refused, while the injector cut the body as usual).
MAX_KEEP_BYTES = 2**40
#: The longest time any new kind may name: a day, far past any test's horizon. Anything
#: longer is a unit mistake (seconds written as milliseconds times a thousand).
MAX_FAULT_MS = 24 * 3600 * 1000.0
#: The longest ``after_ms`` or ``for_ms`` a :class:`Schedule`'s time window may have: a
#: year, far past any run (a soak of days of virtual time included). Anything later is a unit
#: mistake, and past it float arithmetic would lose the window's microseconds (``1e308``
#: plus an hour is ``1e308``).
MAX_SCHEDULE_MS = 365 * MAX_FAULT_MS
#: The shortest time window a :class:`Schedule` may hold: a microsecond, the resolution of a
#: run's time. A shorter one holds at most one instant of it, or none (a ``for_ms`` of
#: ``1e-7`` rounded to nothing and never fired).
MIN_WINDOW_MS = 0.001
#: The most requests a :class:`Quota` may allow per window.
MAX_QUOTA_LIMIT = 10**6
#: The largest ``body`` a :class:`WsAppError` may carry, as JSON text.
MAX_WS_BODY_CHARS = 64 * 1024


#: The final statuses whose answers have no body on the wire (RFC 9110 6.4.1).
_NO_BODY_CODES = frozenset({204, 304})


def _int_in(name: str, low: int, high: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(
                f"{type(instance).__name__}.{name} must be an int in {low}..{high}, "
                f"got {_shown(value)}"
            )

    return check


def _ms_in(name: str, *, positive: bool) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        # finite_number first: math.isfinite raises OverflowError on an int past float's
        # range, which a JSON plan can hold (10**400).
        if (
            not finite_number(value)
            or value < 0  # type: ignore[operator]
            or (positive and value == 0)
            or value > MAX_FAULT_MS  # type: ignore[operator]
        ):
            floor = "> 0" if positive else ">= 0"
            raise ConfigurationError(
                f"{type(instance).__name__}.{name} must be a finite number of milliseconds "
                f"{floor} and at most {MAX_FAULT_MS:.0f} (a day), got {_shown(value)}"
            )

    return check


def _optional_ms_in(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _ms_in(name, positive=False)(instance, attribute, value)

    return check


def _wire_str(name: str, *, header: bool = False, max_bytes: int | None = None) -> Any:
    """A str that can go on the wire as it is: UTF-8 encodable (a JSON plan may hold a lone
    surrogate, ``"\\ud800"``), at most ``max_bytes`` of it, and with ``header``, free of the
    control characters a header value cannot carry (a tab it can), as :func:`_str_map` checks
    ``headers``: CR, LF and NUL would end the header and start another, and the simulator's
    aiohttp refuses any other where the injector's made-up answer would carry it."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        owner = f"{type(instance).__name__}.{name}"
        if not isinstance(value, str):
            raise ConfigurationError(f"{owner} must be a str, got {type(value).__name__}")
        if not utf8_encodable(value):
            raise ConfigurationError(f"{owner} must be text that UTF-8 can encode")
        if header and _CONTROL.search(value):
            raise ConfigurationError(
                f"{owner} cannot be sent in a header: a value holds no control character "
                "(but a tab)"
            )
        if max_bytes is not None and len(value.encode()) > max_bytes:
            raise ConfigurationError(
                f"{owner} must be at most {max_bytes} bytes of UTF-8, got {len(value.encode())}"
            )

    return check


def _optional_wire_str(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _wire_str(name)(instance, attribute, value)

    return check


#: Headers that say how the answer's body is framed or how the connection goes on: the fault's
#: answer frames its body itself. One of the fault's own would break the answer on one side
#: only (a Content-Length of "abc" failed the simulator's answer and raised a bare ValueError
#: from the injector's; a chunked or gzip claim over a plain body broke it on one side).
_FRAMING_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "connection",
        "upgrade",
        "keep-alive",
        "te",
        "trailer",
    }
)


def _str_map(value: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"headers must be a mapping, got {type(value).__name__}")
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str):
            # str() would send a JSON null as "None", a number as its repr.
            raise ConfigurationError(
                "headers must map str names to str values, got "
                f"{type(name).__name__} -> {type(text).__name__}"
            )
    headers = dict(value)
    for name, text in headers.items():
        if name.lower() in _FRAMING_HEADERS:
            raise ConfigurationError(
                f"header {name[:40]!r} cannot be set by a fault: the answer's framing and "
                "connection are the fault's own (Content-Length, Transfer-Encoding, "
                "Content-Encoding, Connection, Upgrade, Keep-Alive, TE, Trailer)"
            )
        # A header that cannot go on the wire would fail only when the fault fires, mid-run,
        # and on one side only: the simulator's aiohttp refuses a control character in a
        # value (the client saw the connection drop), the client's parser a name that is no
        # token (a 400 of its own), where the injector's made-up answer carried either.
        if not _TOKEN.fullmatch(name) or _CONTROL.search(text) or not utf8_encodable(text):
            raise ConfigurationError(
                f"header {name[:40]!r} cannot be sent: a name is an RFC 9110 token (ASCII "
                "letters, digits and !#$%&'*+-.^_`|~), and a value holds no control character "
                "(but a tab) nor text UTF-8 cannot encode"
            )
    return headers


#: An RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The control characters a header value cannot carry (a horizontal tab it can).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _delta_seconds(seconds: float) -> str:
    """``seconds`` (finite, >= 0) as a ``Retry-After`` value: plain ASCII digits, with a decimal
    fraction when not whole, the shortest that reads back as the same float. Never an exponent
    (``f"{1e6:g}"`` is '1e+06'): RFC 9110's delta-seconds is digits only."""
    if isinstance(seconds, int) or seconds.is_integer():
        return str(int(seconds))
    # repr is the shortest text that reads back as this float; Decimal writes it without
    # an exponent ('1e-05' -> '0.00001').
    return format(decimal.Decimal(repr(seconds)), "f")


def _key_names(keys: Iterable[object]) -> str:
    """Unknown keys for a message, sorted and short whatever their type (an int too long to
    write is named by its size: :func:`_shown`)."""
    return ", ".join(sorted(_shown(k) for k in keys))


# -- fault kinds ---------------------------------------------------------------------------------


@attrs.frozen
class Status:
    """Answer with ``code`` instead of the real response (nothing reaches the real handler).

    ``retry_after`` (a finite number of seconds >= 0, or an HTTP-date string without a control
    character but a tab, as a value in ``headers``) becomes a ``Retry-After`` header: a number
    written as plain digits, with a decimal fraction when it is not whole (``1000000``,
    ``0.00001``; never an exponent, which RFC 9110's delta-seconds does not allow and the
    client's parser refuses), and refused if that takes
    more than :data:`~le_transport.policies.retry_after.MAX_RETRY_AFTER_CHARS` characters (no
    client reads it: pass a string to send such a header on purpose); a string is sent as is.
    ``body`` (a str) is sent as is (a short JSON error by default). ``headers`` (str to str)
    go out with it; one that frames the body or the connection (``Content-Length``,
    ``Transfer-Encoding``, ``Content-Encoding``, ``Connection``, ``Upgrade``, ``Keep-Alive``,
    ``TE``, ``Trailer``) is a :class:`~le_transport.errors.ConfigurationError`: the fault's
    answer frames its body itself. On a WebSocket message unit
    it becomes a ``resp`` frame with this ``code`` and :meth:`socket_body` as its ``body``, on
    the simulator's side and the injector's alike; a frame has no headers, so a rule on that
    unit with ``retry_after`` or ``headers`` is refused.

    ``code`` is 200..599: a 1xx is not a final answer (the client would wait on for one).
    """

    kind: ClassVar[str] = "status"
    code: int = attrs.field()
    retry_after: float | str | None = attrs.field(default=None)
    body: str | None = attrs.field(default=None, validator=_optional_wire_str("body"))
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map, hash=False)

    @code.validator
    def _check_code(self, attribute: attrs.Attribute[int], value: int) -> None:
        # From 200: a 1xx is not a final answer, so the client would wait for one.
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
            raise ConfigurationError(
                f"Status.code must be an int in 200..599 (a 1xx is not a final answer), "
                f"got {_shown(value)}"
            )

    @retry_after.validator
    def _check_retry_after(
        self, attribute: attrs.Attribute[float | str | None], value: object
    ) -> None:
        # Checked here, not when the fault fires: a list or a huge int would fail formatting
        # the header mid-run, a CR/LF would smuggle a header of its own into the answer, and
        # any other control character fails the simulator's answer but not the injector's.
        if value is None or isinstance(value, str):
            if value is not None:
                _wire_str("retry_after", header=True)(self, attribute, value)
            return
        if not finite_number(value) or value < 0:  # type: ignore[operator]
            raise ConfigurationError(
                "Status.retry_after must be None, a finite number of seconds >= 0 or an "
                f"HTTP-date str, got {_shown(value)}"
            )
        written = _delta_seconds(value)  # type: ignore[arg-type]
        if len(written) > MAX_RETRY_AFTER_CHARS:
            raise ConfigurationError(
                f"Status.retry_after {_shown(value)} takes {len(written)} characters as plain "
                f"digits, and no client reads a Retry-After over {MAX_RETRY_AFTER_CHARS}: pass "
                "the header's text as a str to send it on purpose"
            )

    def response_headers(self) -> dict[str, str]:
        """The headers to send, ``Retry-After`` included."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            # Header names are case-insensitive: ``retry_after`` replaces a "retry-after"
            # given in ``headers`` rather than going out beside it.
            headers = {k: v for k, v in headers.items() if k.lower() != "retry-after"}
            ra = self.retry_after
            headers["Retry-After"] = ra if isinstance(ra, str) else _delta_seconds(ra)
        return headers

    def has_header(self, name: str) -> bool:
        """Whether ``headers`` names ``name``, in any case (header names are case-insensitive:
        ``content-type`` is ``Content-Type``)."""
        wanted = name.lower()
        return any(k.lower() == wanted for k in self.headers)

    def response_body(self) -> bytes:
        """The body to send."""
        if self.body is not None:
            return self.body.encode()
        return b'{"error": {"message": "injected fault", "status": %d}}' % self.code

    def socket_body(self) -> Any:
        """The ``body`` of the ``resp`` frame that answers a socket request (unit
        ``ws_message``): ``body`` read as JSON (as it is, if it is not JSON), by default
        ``{"msg": "injected fault"}``. Read strictly: ``NaN``, ``Infinity`` or a number past
        a float's range is not JSON (no frame could carry it), so such a body goes out as
        the string it is."""
        if self.body is not None:
            try:
                return loads_strict(self.body)
            except (ValueError, RecursionError):
                return self.body
        return {"msg": "injected fault"}


@attrs.frozen
class Delay:
    """Wait ``delay_ms`` (plus up to ``jitter_ms``, drawn from the rule's stream), then proceed.

    On a socket request (unit ``ws_message``) it holds the frames the client sends after it
    too, on either side, as one TCP stream does: the simulator reads nothing more until it is
    done with the delayed one, and the client-side wrapper sends nothing more until it has
    gone. It is latency on a frame already written: the frame goes out late (the simulator
    processes it late) even if its sender stopped waiting for its answer.

    On a request (and an upgrade), it is an answer that late, under the call's aiohttp
    ``ClientTimeout`` on either side: ``total`` and ``sock_read`` strike the wait (aiohttp's
    ``SocketTimeoutError`` for the latter, as a server that slow raises it), and a request
    its caller gave up on meanwhile is not processed (the client-side injector had not sent
    it yet; the simulator's handler is cancelled before it runs). aiohttp's timeouts run on
    the loop's time, which a wait on a :class:`~le_transport.testing.VirtualClock` does not
    move: there, the engine's attempt timeout, on that clock, is the one a wait meets."""

    kind: ClassVar[str] = "delay"
    delay_ms: float = attrs.field(validator=_ms_in("delay_ms", positive=False))
    jitter_ms: float = attrs.field(default=0.0, validator=_ms_in("jitter_ms", positive=False))


@attrs.frozen
class Reset:
    """Reset the connection before any answer: the simulator sends a TCP reset (an RST, not
    the FIN of a close), and the client sees what a reset by the peer raises, aiohttp's
    ``ClientOSError`` with ``ECONNRESET``, on either side. Like a real reset, it does not tell
    the client whether the request was processed: a non-idempotent one is not sent again on
    its account."""

    kind: ClassVar[str] = "reset"


@attrs.frozen
class Hang:
    """Send nothing: for ``duration_ms`` then close, or (None) until the client gives up.

    On unit ``ws_message`` the matched message is lost and nothing answers it (the caller
    waits out its own timeout): a ``duration_ms`` is refused there, since no close follows.
    On a request, the call's aiohttp ``ClientTimeout`` strikes the wait as a :class:`Delay`'s
    (``sock_read`` and ``total``, on the loop's time), on either side."""

    kind: ClassVar[str] = "hang"
    duration_ms: float | None = attrs.field(default=None, validator=_optional_ms_in("duration_ms"))


@attrs.frozen
class TruncatedBody:
    """Send the request, then announce the real answer's whole body length (the client-side
    injector, which reads no more of a compressed or chunked answer than it keeps, announces
    one byte more than it keeps when no ``Content-Length`` tells the whole) and send only
    ``keep_bytes`` of it (its status, headers and cookies as they were), then close: a reader
    gets those bytes, then the payload error of a body cut short. On both sides the request
    is processed: its side effects happen. ``keep_bytes`` is an int in
    0..``MAX_KEEP_BYTES`` (1 TiB). An answer its simulator handler compresses
    (``enable_compression()``, for a client that accepts the coding) goes out compressed, as
    it would without the fault: a body held whole (``web.Response(body=b"...")``) is cut in
    its compressed bytes, ``keep_bytes`` of them; a body compressed as it is written (a
    payload's, a streamed answer's) after ``keep_bytes`` of the handler's bytes, all of them
    flushed out of the compressor, as the client-side injector, which reads the answer
    decoded, keeps decoded bytes."""

    kind: ClassVar[str] = "truncated_body"
    keep_bytes: int = attrs.field(default=0, validator=_int_in("keep_bytes", 0, MAX_KEEP_BYTES))


@attrs.frozen
class MalformedBody:
    """Replace the real answer with ``code`` (200..599: a 1xx is not a final answer; not 204
    or 304, which carry no body, so nothing malformed would reach the client), a JSON content
    type and ``body`` (a str), which is not valid JSON.

    The request is sent and processed first, on either side (its side effects happen, as with
    :class:`TruncatedBody` and :class:`SlowBody`): the simulator runs its handler and throws
    its answer away, the client-side injector sends it and reads the real answer before handing
    back this one. Only the status and the body (with ``Content-Type: application/json``) are
    the fault's: the real answer's headers and cookies are not kept. A WebSocket upgrade, whose
    real answer would be a socket, is answered with it without being sent, on both sides.

    On the simulator, an answer a custom route's handler streams itself (prepares) is on its
    way before the handler returns and cannot be replaced: it is cut instead, its status and
    headers, then every byte the handler writes, short of what they announce, then the
    connection closed (the client meets a payload error, not this body). To an HTTP/1.0
    client such an answer of unknown length has no framing to show the cut, and is cut before
    its headers: the client sees the connection closed with no answer, as with
    :class:`EmptyResponse`."""

    kind: ClassVar[str] = "malformed_body"
    code: int = attrs.field(default=200)
    body: str = attrs.field(default='{"baseURIs": [{"service": ', validator=_wire_str("body"))

    @code.validator
    def _check_code(self, attribute: attrs.Attribute[int], value: object) -> None:
        _int_in("code", 200, 599)(self, attribute, value)
        if value in _NO_BODY_CODES:
            # On the wire the answer has no body (aiohttp drops it on the simulator): the
            # fault, counted injected, would reach the client as a well-formed empty answer.
            raise ConfigurationError(
                f"MalformedBody.code must be a status that carries a body (200..599 but 204 "
                f"and 304), got {_shown(value)}"
            )


@attrs.frozen
class EmptyResponse:
    """Close the connection before the status line."""

    kind: ClassVar[str] = "empty_response"


@attrs.frozen
class WsRejectHandshake:
    """Refuse the WebSocket upgrade with an HTTP ``status`` (200..599; LiveEngage: 401, 502,
    503) and ``body`` (a str)."""

    kind: ClassVar[str] = "ws_reject_handshake"
    # From 200: a 1xx answer does not refuse an upgrade (a 101 is its success).
    status: int = attrs.field(default=503, validator=_int_in("status", 200, 599))
    body: str = attrs.field(default="", validator=_wire_str("body"))


@attrs.frozen
class WsClose:
    """Close the socket with ``code`` (4401, 4407, 1011, 1001, ...) and ``reason`` (at most 123
    bytes of UTF-8, what a close frame holds).

    On unit ``ws_session`` it strikes as the client's ``after_messages``-th message arrives:
    that message is never answered (a request the client has in flight when the connection
    goes), the ``after_messages - 1`` before it are; 0: as soon as the socket opens. On unit
    ``ws_message`` it strikes instead of answering the matched message, so ``after_messages``
    must be 0 there: a rule on ``ws_message`` with another value is refused (to strike after a
    number of messages, put the rule on unit ``ws_session``). The simulator and the
    client-side injector count alike.
    """

    kind: ClassVar[str] = "ws_close"
    code: int = attrs.field(default=1011)
    # A close frame's payload is at most 125 bytes, 2 of them the code (RFC 6455 §5.5).
    reason: str = attrs.field(default="", validator=_wire_str("reason", max_bytes=123))
    after_messages: int = attrs.field(default=0, validator=_non_negative_int("after_messages"))

    @code.validator
    def _check_code(self, attribute: attrs.Attribute[int], value: int) -> None:
        check_close_code(value, owner="WsClose", field="code")


#: The close codes below 3000 a peer accepts in a close frame: those RFC 6455 §7.4.1 and the
#: IANA registry define for sending, the set aiohttp's reader checks against (its
#: ``WSCloseCode`` members) without 1006, which is never sent. 1004 is reserved (no meaning
#: yet) and 1005/1006/1015 are never sent: aiohttp fails a frame carrying one as a protocol
#: error (1002), so the simulator's close would reach the client as 1002 while the client-side
#: injector's reached it as the code itself. Codes 3000..4999 are for libraries and
#: applications.
_SENDABLE_CLOSE_CODES: frozenset[int] = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def check_close_code(value: object, *, owner: str, field: str) -> None:
    """``value`` must be a close code a server or client may send and its peer accepts: an int
    in 1000..1003, 1007..1014 or 3000..4999; not 1004 (reserved), 1005, 1006 or 1015 (never
    sent on the wire, RFC 6455 §7.4.1), which aiohttp's reader refuses as a protocol error;
    else a :class:`~le_transport.errors.ConfigurationError` naming ``owner.field``."""
    wants = "1000..1003, 1007..1014 or 3000..4999"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{owner}.{field} must be a sendable close code ({wants}), got {_shown(value)}"
        )
    if value in (1004, 1005, 1006, 1015):
        raise ConfigurationError(
            f"{owner}.{field} must be a sendable close code ({wants}), got {value}: it is "
            "reserved by RFC 6455 and never sent in a close frame (a peer such as aiohttp "
            "fails the connection with a protocol error, 1002, instead)"
        )
    if not (value in _SENDABLE_CLOSE_CODES or 3000 <= value <= 4999):
        raise ConfigurationError(
            f"{owner}.{field} must be a valid close code ({wants}), got {_shown(value)}"
        )


@attrs.frozen
class WsDrop:
    """Drop the connection abruptly (no close frame; the client sees 1006).

    On unit ``ws_session`` it strikes as the client's ``after_messages``-th message arrives:
    that message is never answered (a request in flight when the connection drops), the
    ``after_messages - 1`` before it are; 0: as soon as the socket opens. On unit
    ``ws_message`` it strikes instead of answering the matched message, so ``after_messages``
    must be 0 there: a rule on ``ws_message`` with another value is refused (to strike after a
    number of messages, put the rule on unit ``ws_session``). The simulator and the
    client-side injector count alike.
    """

    kind: ClassVar[str] = "ws_drop"
    after_messages: int = attrs.field(default=0, validator=_non_negative_int("after_messages"))


@attrs.frozen
class WsSilence:
    """Stop answering, for good, while the connection stays open (a half-open socket): no
    ``resp`` frames, no notifications, no pongs.

    On unit ``ws_session`` it strikes as the client's ``after_messages``-th message arrives,
    as :class:`WsDrop` and :class:`WsClose` do: that message is the first one never answered,
    the ``after_messages - 1`` before it are answered (``WsSilence(after_messages=2)``: one
    answer, then silence); 0: silent from the start. On unit ``ws_message`` the matched
    message is the first one never answered, so ``after_messages`` must be 0 there: a rule on
    ``ws_message`` with another value is refused (to fall silent after a number of messages,
    put the rule on unit ``ws_session``). The simulator and the client-side injector count
    alike.
    """

    kind: ClassVar[str] = "ws_silence"
    after_messages: int = attrs.field(default=0, validator=_non_negative_int("after_messages"))


@attrs.frozen
class SlowBody:
    """Send the real answer's status and headers at once, then its body in ``chunk_bytes``
    pieces with ``chunk_delay_ms`` between them (MockServer's dribble, WireMock's
    ``chunkedDribbleDelay``, Envoy's response rate limit).

    The ``Content-Length`` announces the whole body and the whole body arrives, only slowly:
    ``ceil(len / chunk_bytes) - 1`` pauses, on the clock of whoever applies it, so an attempt
    timeout on a virtual clock fires mid-body without real waiting. Unit ``request`` only.
    """

    kind: ClassVar[str] = "slow_body"
    chunk_bytes: int = attrs.field(validator=_int_in("chunk_bytes", 1, MAX_CHUNK_BYTES))
    chunk_delay_ms: float = attrs.field(validator=_ms_in("chunk_delay_ms", positive=False))

    def pieces(self, body: bytes) -> list[bytes]:
        """``body`` cut into the pieces to send, in order (one empty piece for no body)."""
        n = self.chunk_bytes
        return [body[i : i + n] for i in range(0, len(body), n)] or [b""]


@attrs.frozen
class Quota:
    """At most ``limit`` requests per ``window_ms`` on the matched route (MockServer's quota):
    the rest are answered ``status`` (429) with ``Retry-After``, the whole seconds until the
    window frees a slot, rounded up.

    The window slides on the clock of whoever applies it: a request is admitted when fewer
    than ``limit`` were admitted in the ``window_ms`` before it. Refused requests take no slot.
    The rule's schedule and ``p`` say when the quota is in force; an admitted request is
    logged as ``admitted``, a refused one as ``inject``. Unit ``request`` only.
    """

    kind: ClassVar[str] = "quota"
    limit: int = attrs.field(validator=_int_in("limit", 1, MAX_QUOTA_LIMIT))
    window_ms: float = attrs.field(validator=_ms_in("window_ms", positive=True))
    status: int = attrs.field(default=429, validator=_int_in("status", 400, 599))

    def response_body(self) -> bytes:
        """The body of a refusal."""
        return b'{"error": {"message": "quota exceeded", "status": %d}}' % self.status


def _json_body(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


#: LiveEngage's socket errors carry a short message in ``body.msg``, as the simulator's own do.
_WS_ERROR_MESSAGES = {429: "too many requests", 500: "internal server error"}


@attrs.frozen
class WsAppError:
    """Answer a matched socket request (by ``type``) with a ``resp`` frame carrying ``code``
    instead of the real answer: LiveEngage's rate limit (429) or server error (500) over the
    socket, with the connection staying open.

    The frame is ``{"kind": "resp", "reqId": <the request's id>, "code": code, "body": body,
    "type": "<type>$Response"}``; ``body`` (any JSON value; default ``{"msg": "too many
    requests"}`` for 429, ``{"msg": "internal server error"}`` for 500) is sent as is. Unit
    ``ws_message`` only.
    """

    kind: ClassVar[str] = "ws_app_error"
    code: int = attrs.field(default=429, validator=_int_in("code", 400, 599))
    body: Any = attrs.field(default=None, converter=_json_body, hash=False)

    @body.validator
    def _check_body(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            # RecursionError: nested deeper than JSON can be written here.
            raise ConfigurationError(
                f"WsAppError.body must be a JSON value, got {type(value).__name__}"
            ) from None
        if len(text) > MAX_WS_BODY_CHARS:
            raise ConfigurationError(
                f"WsAppError.body must be at most {MAX_WS_BODY_CHARS} characters of JSON, "
                f"got {len(text)}"
            )

    def response_body(self) -> Any:
        """The ``body`` of the ``resp`` frame."""
        if self.body is not None:
            return self.body
        return {"msg": _WS_ERROR_MESSAGES.get(self.code, "injected error")}


@attrs.frozen
class WsDelay:
    """Hold each matched server→client message ``delay_ms`` ± ``jitter_ms`` (drawn from the
    rule's stream, uniformly) before it goes out: latency on the socket's way back.

    Latency, not a slower stream: each message is due ``delay_ms`` after it was sent (or, on
    the client side, taken off the connection), so messages sent together arrive together.
    They keep their order, as on one TCP stream: a later message, matched or not, never
    overtakes a held one (it is due at the later of its own time and the held one's). Matched
    on the message's ``type`` (a ``resp`` is ``<request type>$Response``). Unit
    ``ws_message`` only.
    """

    kind: ClassVar[str] = "ws_delay"
    delay_ms: float = attrs.field(validator=_ms_in("delay_ms", positive=False))
    jitter_ms: float = attrs.field(default=0.0, validator=_ms_in("jitter_ms", positive=False))

    def __attrs_post_init__(self) -> None:
        if self.jitter_ms > self.delay_ms:
            raise ConfigurationError(
                f"WsDelay.jitter_ms ({_shown(self.jitter_ms)}) must not exceed delay_ms "
                f"({_shown(self.delay_ms)}): a message cannot leave before it was sent"
            )


@attrs.frozen
class WsDropMessage:
    """Never deliver a matched server→client message (an answer or a notification lost on
    the way): the client finds a lost answer only by its request timeout.

    With the rule's ``p``, each matched message is dropped with that probability, drawn from
    the rule's own stream (seeded). Matched on the message's ``type`` (a ``resp`` is
    ``<request type>$Response``). Unit ``ws_message`` only.
    """

    kind: ClassVar[str] = "ws_drop_message"


#: Any fault a rule can carry: the HTTP kinds (unit ``request``) and the socket kinds (units
#: ``ws_session`` and ``ws_message``); see the README's table for which unit takes which.
Fault = (
    Status
    | Delay
    | Reset
    | Hang
    | TruncatedBody
    | MalformedBody
    | EmptyResponse
    | WsRejectHandshake
    | WsClose
    | WsDrop
    | WsSilence
    | SlowBody
    | Quota
    | WsAppError
    | WsDelay
    | WsDropMessage
)

_KINDS: dict[str, type[Any]] = {
    cls.kind: cls
    for cls in (
        Status,
        Delay,
        Reset,
        Hang,
        TruncatedBody,
        MalformedBody,
        EmptyResponse,
        WsRejectHandshake,
        WsClose,
        WsDrop,
        WsSilence,
        SlowBody,
        Quota,
        WsAppError,
        WsDelay,
        WsDropMessage,
    )
}
#: Kinds that apply to an HTTP request (and to a WebSocket upgrade seen as one).
HTTP_FAULTS = frozenset(
    {
        "status",
        "delay",
        "reset",
        "hang",
        "truncated_body",
        "malformed_body",
        "empty_response",
        "slow_body",
        "quota",
    }
)
#: The ``request`` kinds that strike a WebSocket upgrade, on either side (the simulator's
#: middleware, the client-side injector): not those that cut or pace a body, which an upgrade
#: does not have (the socket would be served in full while the fault was counted as
#: injected). A ``request`` rule of another kind does not match an upgrade (not counted, not
#: logged), so its turn goes to the next request it can strike.
UPGRADE_FAULTS = HTTP_FAULTS - {"truncated_body", "slow_body"}
#: Kinds that apply to a WebSocket session.
WS_FAULTS = frozenset({"ws_reject_handshake", "ws_close", "ws_drop", "ws_silence", "delay"})
#: Kinds that apply to one message a socket received (matched on its ``type``).
WS_MESSAGE_FAULTS = frozenset(
    {"status", "delay", "hang", "ws_close", "ws_drop", "ws_silence", "ws_app_error"}
)
#: Kinds that apply to one message a socket *sends* (the simulator) or that the client
#: received (the injector's hook): server→client, matched on its ``type``.
WS_OUTBOUND_FAULTS = frozenset({"ws_delay", "ws_drop_message"})
#: The kinds each unit applies, as the simulator and the injector ask for them: a rule that
#: puts a kind on a unit whose set lacks it could never fire, and is refused.
UNIT_KINDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "request": HTTP_FAULTS,
        "ws_session": WS_FAULTS,
        "ws_message": WS_MESSAGE_FAULTS | WS_OUTBOUND_FAULTS,
    }
)


def _units_of(kind: str) -> list[str]:
    """The units that apply ``kind``, in :data:`UNITS` order."""
    return [unit for unit in UNITS if kind in UNIT_KINDS[unit]]


def _quoted(names: Iterable[str]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    items = [repr(n) for n in names]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


#: The method a socket unit is decided with, by the simulator and the injector alike (a
#: request's is its own).
_UNIT_METHOD: Mapping[str, str] = MappingProxyType({"ws_session": "GET", "ws_message": "WS"})


def fault_to_dict(fault: Fault) -> dict[str, Any]:
    """The JSON form of a fault: ``{"kind": ..., <params>}``. Anything but a fault (None, a
    bare status code: :func:`fault_from_dict`'s shorthands) is a
    :class:`~le_transport.errors.ConfigurationError`."""
    if type(fault) not in _KINDS.values():
        raise ConfigurationError(
            f"fault_to_dict takes a fault (Status, Delay, WsClose ...), got {type(fault).__name__}"
        )
    out: dict[str, Any] = {"kind": fault.kind}
    for field in attrs.fields(type(fault)):
        out[field.name] = _json_value(getattr(fault, field.name))
    return out


def fault_from_dict(data: Mapping[str, Any] | int | None) -> Fault | None:
    """A fault from its JSON form. An int is shorthand: below 300 means pass (None), else
    :class:`Status` with that code. None means pass."""
    if data is None:
        return None
    if isinstance(data, bool):
        raise ConfigurationError(
            f"a fault must be a mapping, a status code or null, not {_shown(data)}"
        )
    if isinstance(data, int):
        if not 100 <= data <= 599:
            raise ConfigurationError(
                f"a status code shorthand must be in 100..599, got {_shown(data)}"
            )
        return None if data < 300 else Status(data)
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"a fault must be a mapping with a 'kind', got {_shown(data, 80)}")
    params = dict(data)
    kind = params.pop("kind", None)
    # Not str(kind): an int past 4300 digits cannot be written (a bare ValueError).
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigurationError(
            f"unknown fault kind {_shown(kind)}; known kinds: {', '.join(sorted(_KINDS))}"
        )
    names = {f.name for f in attrs.fields(cls)}
    unknown = set(params) - names
    if unknown:
        raise ConfigurationError(
            f"fault kind {_shown(kind)} has no parameter(s) [{_key_names(unknown)}]; "
            f"it takes {sorted(names)}"
        )
    try:
        fault: Fault = cls(**params)
    except TypeError as exc:
        raise ConfigurationError(f"fault kind {_shown(kind)}: {exc}") from None
    return fault


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _as_fault(value: Fault | Mapping[str, Any] | int | None) -> Fault | None:
    if value is None or isinstance(value, (int, Mapping)):
        return fault_from_dict(value)
    if type(value) in _KINDS.values():
        return value
    raise ConfigurationError(f"not a fault: {_shown(value, 80)}")


# -- rules ---------------------------------------------------------------------------------------


#: One HTTP method: an RFC 9110 token (as SimRoute's in the simulator).
_METHOD_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _method_or_none(value: object) -> str | None:
    """None or ``*`` (any method), or one method, upper-cased. Anything else (an empty or
    padded str, a list ``GET,POST``, a number) is refused: such a rule would never fire."""
    if value is None or value == "*":
        return None
    if not isinstance(value, str) or not _METHOD_TOKEN.fullmatch(value):
        raise ConfigurationError(
            "Match.method must be one HTTP method, like 'GET' or 'POST' (None or '*': any "
            f"method; one rule per method), got {_shown(value)}"
        )
    return value.upper()


def _glob_or_any(value: object) -> Any:
    """A Match path: None (a plan's ``"path": null``) matches anything, as ``*`` does."""
    return "*" if value is None else value


@attrs.frozen
class Match:
    """Which traffic a rule applies to. Every given field must match; None matches anything.

    - ``method``: ``GET``, ``POST``... (WebSocket upgrades are ``GET``), one method, any case;
      None or ``*``: any. Anything else (``""``, ``" get"``, ``"GET,POST"``, a number) is a
      :class:`~le_transport.errors.ConfigurationError`: it would never match.
    - ``path``: a glob (``fnmatch``; ``*`` also crosses ``/``) on the URL path, without the
      query; None is ``*``. For a ``ws_message`` unit it is matched against the message
      ``type`` instead.
    - ``service``: the LiveEngage service name (``agentVep``, ``accountConfigReadOnly``...),
      when the caller knows it.
    """

    method: str | None = attrs.field(default=None, converter=_method_or_none)
    path: str = attrs.field(default="*", converter=_glob_or_any)
    service: str | None = attrs.field(default=None)

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: object) -> None:
        # Checked here: matching a glob that is not a str fails only when traffic arrives.
        if not isinstance(value, str):
            raise ConfigurationError(f"Match.path must be a str glob, got {type(value).__name__}")

    @service.validator
    def _check_service(self, attribute: attrs.Attribute[str | None], value: object) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(
                f"Match.service must be a str or None, got {type(value).__name__}"
            )

    def matches(self, method: str, path: str, service: str | None = None) -> bool:
        """Whether a unit with these facts is matched."""
        if self.method is not None and method.upper() != self.method:
            return False
        if self.service is not None and service != self.service:
            return False
        return fnmatch.fnmatchcase(path, self.path)


def _optional_ms(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        _non_negative_number(name)(instance, attribute, value)
        if value > MAX_SCHEDULE_MS:  # type: ignore[operator]
            raise ConfigurationError(
                f"{type(instance).__name__}.{name} must be at most {MAX_SCHEDULE_MS:.0f} ms "
                f"(a year), got {_shown(value)}"
            )

    return check


@attrs.frozen
class Schedule:
    """When a rule is in force.

    - A window over its matching units (0-based count): skip the first ``skip_first``, then
      fault the next ``fail_next`` (None: every one after), then pass. Each is an int in
      0..:data:`MAX_COUNT` (2**63 - 1).
    - Optionally a window in time, on the run's clock, measured from the run's origin (when
      the simulator or injector was made; for an injector that takes its engine's clock,
      when that engine was made): from ``after_ms`` for ``for_ms`` (None: for ever), to the
      microsecond (a unit exactly ``after_ms`` after the origin is in force, whatever the
      origin; the window starts at the first microsecond at or after ``after_ms``, as the
      run's time counts in microseconds, so a window of at least a microsecond holds at
      least one instant of it and none fires before ``after_ms``). Both
      windows must hold, composed as the fault reference prescribes (match, count window,
      time window, draw; MockServer's ``succeedFirst``/``failRequestCount`` beside its outage
      window): the count window counts every matching unit, in the time window or not, so
      ``fail_next=2, after_ms=10000`` faults the first two units only if they come after
      10 s (a ``sequence`` likewise counts its entries over every matching unit). To fault
      what comes after 10 s, leave ``fail_next`` out and bound the fault in time with
      ``for_ms``, or count from where the units before 10 s end with ``skip_first``.
      ``after_ms`` and ``for_ms`` are each at most
      :data:`MAX_SCHEDULE_MS` (a year); a rule refuses a ``for_ms`` under
      :data:`MIN_WINDOW_MS` (a microsecond, the resolution of the run's time), which would
      never fire, or at most at one instant.
    """

    skip_first: int = attrs.field(default=0, validator=_non_negative_int("skip_first"))
    fail_next: int | None = attrs.field(default=None)
    after_ms: float | None = attrs.field(default=None, validator=_optional_ms("after_ms"))
    for_ms: float | None = attrs.field(default=None, validator=_optional_ms("for_ms"))

    @fail_next.validator
    def _check(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None:
            _non_negative_int("fail_next")(self, attribute, value)

    def covers(self, index: int) -> bool:
        """Whether the unit with this 0-based index is inside the count window."""
        if index < self.skip_first:
            return False
        return self.fail_next is None or index < self.skip_first + self.fail_next

    @property
    def timed(self) -> bool:
        """Whether there is a time window."""
        return self.after_ms is not None or self.for_ms is not None

    @property
    def _start_ms(self) -> float:
        """The start of the time window: the first microsecond at or after ``after_ms``.

        The run's time counts in microseconds (FaultRun.decide): a start between two instants
        is taken up to the next, so that a window of at least a microsecond (MIN_WINDOW_MS)
        holds one instant and nothing fires before the ``after_ms`` written. A start within a
        few units of float rounding of a microsecond is that microsecond (``2.007 * 1000`` is
        ``2007.0000000000002``, not past 2007).
        """
        us = (self.after_ms or 0.0) * 1000.0
        nearest = round(us)
        if math.isclose(us, nearest, rel_tol=4 * sys.float_info.epsilon):
            return nearest / 1000.0
        return math.ceil(us) / 1000.0

    def in_time(self, elapsed_ms: float) -> bool:
        """Whether ``elapsed_ms`` since the run's origin is inside the time window."""
        start = self._start_ms
        if elapsed_ms < start:
            return False
        # Rounded: float noise in the sum (0.1 + 0.2) must not move the end of the window.
        return self.for_ms is None or elapsed_ms < round(start + self.for_ms, 6)


def _may_start_with_slash(glob: str) -> bool:
    """Whether ``glob`` (``fnmatch``) matches some text starting with ``/``: whether its first
    piece matches ``/`` (a ``/``, ``*``, ``?``, or a ``[...]`` class holding it), read as
    ``fnmatch`` reads it (a ``[`` with no ``]`` to close it is a literal ``[``)."""
    if not glob:
        return False
    first = glob[0]
    if first != "[":
        return first in "/*?"
    end = 1
    if end < len(glob) and glob[end] == "!":
        end += 1
    if end < len(glob) and glob[end] == "]":
        end += 1
    end = glob.find("]", end)
    return end != -1 and fnmatch.fnmatchcase("/", glob[: end + 1])


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"FaultRule.p must be a number in [0, 1], got {_shown(value)}")


def _unit(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in UNITS:
        raise ConfigurationError(f"FaultRule.unit must be one of {UNITS}, got {_shown(value)}")


class _BarePass:
    """A bare code below 300 given as a rule's ``fault``: it means pass, which only a sequence
    may hold. Kept by the converter for the rule to refuse, naming itself."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


def _rule_fault(value: Fault | Mapping[str, Any] | int | None) -> Fault | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 300:
        return cast("Fault", _BarePass(value))  # refused by FaultRule.__attrs_post_init__
    return _as_fault(value)


def _sequence(
    value: Iterable[Fault | Mapping[str, Any] | int | None] | None,
) -> tuple[Fault | None, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        # Only the type: a str put here may be anything.
        raise ConfigurationError(
            "FaultRule.sequence must be a list of faults (or null entries to pass), one per "
            f"matching unit, got {type(value).__name__}"
        )
    return tuple(_as_fault(v) for v in value)


def _match(instance: object, attribute: attrs.Attribute[Match], value: object) -> None:
    # Checked here: a rule holding anything else failed only when traffic arrived
    # (AttributeError: no 'matches'), inside the engine's request.
    if not isinstance(value, Match):
        raise ConfigurationError(
            f"FaultRule.match must be a Match (e.g. Match(path='*/users')), got "
            f"{type(value).__name__}"
        )


def _schedule(instance: object, attribute: attrs.Attribute[Schedule], value: object) -> None:
    if not isinstance(value, Schedule):
        raise ConfigurationError(
            f"FaultRule.schedule must be a Schedule (e.g. Schedule(fail_next=2)), got "
            f"{type(value).__name__}"
        )


@attrs.frozen
class FaultRule:
    """One rule: what it matches, what a decision is about, when it fires, and what it does.

    Either ``fault`` with a ``schedule`` (default: every matching unit), or ``sequence``: one
    entry per matching unit in order (a fault, or None to pass), passing after its end; its
    ``schedule`` may hold a time window (``after_ms``/``for_ms``) but no count window (a
    ``skip_first`` or ``fail_next`` beside a sequence is refused: put None entries first to
    skip units). The
    probability ``p`` (default 1.0: a scripted fault fires) is drawn last, per unit, from the
    rule's own stream.

    ``unit`` is ``"request"`` unless given: a socket's fault needs ``unit="ws_session"`` or
    ``"ws_message"``. A rule that could never fire (a kind its unit does not apply, see
    :data:`UNIT_KINDS`; a rule matching a method or service its unit never has; a schedule
    with ``fail_next=0`` or ``for_ms=0``; a sequence without a fault) is a
    :class:`~le_transport.errors.ConfigurationError` naming the kind, the unit and the units
    the kind works on. So is a ``ws_message`` rule whose ``WsClose``/``WsDrop``/``WsSilence``
    has a non-zero ``after_messages``: that count is for unit ``ws_session`` only; a
    ``ws_message`` rule whose ``Hang`` has a ``duration_ms`` or whose ``Status`` has a
    ``retry_after`` or ``headers`` (a message applies neither); and a ``request`` or
    ``ws_session`` rule whose ``Match.path`` matches nothing that starts with ``/`` (empty,
    or starting with a literal other than ``/`` or a ``[...]`` class without it). In a plan,
    the first rule that fires on a unit wins: a later one due on the same unit is
    ``shadowed``.
    """

    id: str = attrs.field()
    fault: Fault | None = attrs.field(default=None, converter=_rule_fault)
    match: Match = attrs.field(factory=Match, validator=_match)
    unit: str = attrs.field(default="request", validator=_unit)
    schedule: Schedule = attrs.field(factory=Schedule, validator=_schedule)
    sequence: tuple[Fault | None, ...] | None = attrs.field(default=None, converter=_sequence)
    p: float = attrs.field(default=1.0, validator=_probability)

    @id.validator
    def _check_id(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"FaultRule.id must be a non-empty string, got {_shown(value)}"
            )

    def __attrs_post_init__(self) -> None:
        # The id as error messages name it: a plan file's id may be a megabyte long.
        named = f"rule {_shown(self.id, 60)}"
        bare: object = self.fault
        if isinstance(bare, _BarePass):
            raise ConfigurationError(
                f"{named}: 'fault' {bare.code} is a bare code below 300, meaning "
                "'pass', which only a 'sequence' may hold: give a fault (a bare code of "
                "300..599 is a Status of that code) or a 'sequence'"
            )
        if (self.fault is None) == (self.sequence is None):
            raise ConfigurationError(
                f"{named}: give exactly one of 'fault' (with a schedule) or 'sequence'"
            )
        schedule = self.schedule
        if self.sequence is not None and (schedule.skip_first or schedule.fail_next is not None):
            # The sequence names each unit's fault itself: the count window was ignored.
            raise ConfigurationError(
                f"{named}: a 'sequence' names the fault of each matching unit, so its "
                f"schedule cannot have a count window (skip_first={schedule.skip_first}, "
                f"fail_next={schedule.fail_next}): put null entries first to skip units, or "
                "give 'fault' with that schedule (a sequence's schedule may hold only "
                "after_ms and for_ms)"
            )
        if self.sequence is not None and all(f is None for f in self.sequence):
            raise ConfigurationError(
                f"{named}: a 'sequence' with no fault in it never fires: give at "
                "least one fault (null entries pass their unit)"
            )
        if schedule.fail_next == 0 or schedule.for_ms == 0:
            # An empty window: the rule would be accepted and inject nothing.
            empty = "fail_next=0" if schedule.fail_next == 0 else "for_ms=0"
            raise ConfigurationError(
                f"{named}: a schedule with {empty} never fires: leave the rule out, "
                "or give it a window that holds something"
            )
        if schedule.for_ms is not None and schedule.for_ms < MIN_WINDOW_MS:
            # As for_ms=0: the window's end, rounded, fell on its start (1e-7), or it held
            # one microsecond of the run's time at most, depending on where it started.
            raise ConfigurationError(
                f"{named}: a schedule with for_ms={_shown(schedule.for_ms)} never fires: "
                f"the run's time counts in microseconds, and a window under {MIN_WINDOW_MS} "
                "ms holds none of them (or one, by chance): leave the rule out, or give it "
                "a window that holds something"
            )
        kinds = _kinds_of(self)
        if kinds & WS_OUTBOUND_FAULTS and kinds - WS_OUTBOUND_FAULTS:
            # Messages from the server and from the client are decided apart: such a rule
            # would match neither.
            raise ConfigurationError(
                f"{named}: {sorted(kinds & WS_OUTBOUND_FAULTS)} are about messages "
                f"the server sends and {sorted(kinds - WS_OUTBOUND_FAULTS)} are not: "
                "put them in two rules"
            )
        unit = self.unit
        for kind in sorted(kinds):
            if kind not in UNIT_KINDS[unit]:
                # It would be accepted and never fire: a chaos test would pass having injected
                # nothing (a WsDrop left on the default unit, a Status on ws_session).
                default = " (the default)" if unit == "request" else ""
                raise ConfigurationError(
                    f"{named}: a {kind!r} fault never fires on unit {unit!r}{default}: "
                    f"it works on unit {_quoted(_units_of(kind))}"
                )
        method = _UNIT_METHOD.get(unit)
        if unit == "request" and self.match.method == _UNIT_METHOD["ws_message"]:
            raise ConfigurationError(
                f"{named}: a rule on unit 'request' never fires with "
                f"Match(method={self.match.method!r}): that is a socket message's method (put "
                "the rule on unit 'ws_message')"
            )
        if method is not None and self.match.method not in (None, method):
            raise ConfigurationError(
                f"{named}: a rule on unit {unit!r} never fires with "
                f"Match(method={_shown(self.match.method)}): its units are decided as {method!r} "
                "(leave method out)"
            )
        if unit == "ws_message":
            counted = [
                f
                for f in ((self.fault,) if self.sequence is None else self.sequence)
                if isinstance(f, (WsClose, WsDrop, WsSilence)) and f.after_messages
            ]
            if counted:
                # A message fault strikes on the matched message itself: a count of messages
                # before it was accepted and silently ignored.
                first = counted[0]
                raise ConfigurationError(
                    f"{named}: {type(first).__name__}(after_messages="
                    f"{first.after_messages}) is not counted on unit 'ws_message', where the "
                    "fault strikes on the matched message itself: to strike after that many "
                    "messages of a socket, put the rule on unit 'ws_session'; on "
                    "'ws_message', leave after_messages out (0)"
                )
            for f in (self.fault,) if self.sequence is None else self.sequence:
                # Accepted before and ignored on both sides (the simulator and the injector):
                # a message hang loses the message and nothing more, and a resp frame has no
                # headers. A chaos test relying on them tested nothing.
                if isinstance(f, Hang) and f.duration_ms is not None:
                    raise ConfigurationError(
                        f"{named}: Hang(duration_ms={f.duration_ms!r}) is not applied "
                        "on unit 'ws_message', where a hang loses the matched message and "
                        "nothing answers it (the connection is not closed after a while): "
                        "leave duration_ms out, or to close the socket use WsClose/WsDrop"
                    )
                if isinstance(f, Status) and (f.retry_after is not None or f.headers):
                    given = "retry_after" if f.retry_after is not None else "headers"
                    raise ConfigurationError(
                        f"{named}: Status({f.code}, {given}=...) on unit "
                        "'ws_message' becomes a resp frame, which carries a code and a body "
                        f"but no headers, so {given} would be dropped: leave it out (put "
                        "what the client should read in body), or use WsAppError"
                    )
        path = self.match.path
        if unit != "ws_message" and not _may_start_with_slash(path):
            # A URL path starts with "/": a glob starting with another literal ("api/*"), a
            # class without "/" ("[a-z]*") or an unclosed "[" (a literal), or an empty one (a
            # URL path is "/" at least), matched nothing, and a chaos test passed having
            # injected nothing.
            raise ConfigurationError(
                f"{named}: a rule on unit {unit!r} never fires with "
                f"Match(path={_shown(path)}): it is matched against the URL path, which "
                f"starts with '/' (write {_shown('/' + path)}, or start the glob with '*')"
            )
        if unit == "ws_message" and self.match.service is not None:
            raise ConfigurationError(
                f"{named}: a rule on unit 'ws_message' never fires with "
                f"Match(service={_shown(self.match.service)}): a message has no service "
                "(match the socket's messages on their type, in Match.path)"
            )

    def scheduled(self, index: int) -> Fault | None:
        """The fault the schedule or sequence names for the ``index``-th matching unit."""
        if self.sequence is not None:
            return self.sequence[index] if index < len(self.sequence) else None
        return self.fault if self.schedule.covers(index) else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {
            "id": self.id,
            "match": {
                "method": self.match.method,
                "path": self.match.path,
                "service": self.match.service,
            },
            "unit": self.unit,
            "p": self.p,
        }
        if self.sequence is not None:
            out["sequence"] = [None if f is None else fault_to_dict(f) for f in self.sequence]
        else:
            assert self.fault is not None
            out["fault"] = fault_to_dict(self.fault)
        if self.sequence is None or self.schedule.timed:
            # A sequence's time window is honoured too: written, so that it reads back.
            out["schedule"] = {
                "skip_first": self.schedule.skip_first,
                "fail_next": self.schedule.fail_next,
                "after_ms": self.schedule.after_ms,
                "for_ms": self.schedule.for_ms,
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """A rule from its JSON form (as :meth:`to_dict` writes it)."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a fault rule must be a mapping, got {_shown(data, 80)}")
        unknown = set(data) - set(_RULE_FIELDS)
        if unknown:
            rule_id = data.get("id")
            named = f" {_shown(rule_id, 60)}" if isinstance(rule_id, str) else ""
            raise ConfigurationError(
                f"fault rule{named} has unknown field(s) [{_key_names(unknown)}]; a rule takes "
                f"{', '.join(repr(f) for f in _RULE_FIELDS)}{_misplaced(unknown)} "
                "(FaultPlan.to_dict() writes the whole form)"
            )
        match = _sub_mapping(data, "match", _MATCH_FIELDS)
        schedule = _sub_mapping(data, "schedule", _SCHEDULE_FIELDS)
        try:
            return cls(
                id=data.get("id", ""),
                fault=data.get("fault"),
                match=Match(**match),
                unit=data.get("unit", "request"),
                schedule=Schedule(**schedule),
                sequence=data.get("sequence"),
                p=data.get("p", 1.0),
            )
        except TypeError as exc:
            raise ConfigurationError(f"fault rule {_shown(data.get('id'), 60)}: {exc}") from None


#: The fields of a rule's JSON form, and of its ``match`` and ``schedule``.
_RULE_FIELDS = ("id", "match", "unit", "p", "fault", "schedule", "sequence")
_MATCH_FIELDS = tuple(f.name for f in attrs.fields(Match))
_SCHEDULE_FIELDS = tuple(f.name for f in attrs.fields(Schedule))


def _misplaced(unknown: set[Any]) -> str:
    """A hint for keys put on a rule that belong to its ``match``, ``fault`` or ``schedule``."""
    hints = []
    if unknown & set(_MATCH_FIELDS):
        hints.append('"method", "path" and "service" go in "match": {"path": "*/users"}')
    fault_params = {f.name for cls in _KINDS.values() for f in attrs.fields(cls)}
    if unknown & ({"kind"} | fault_params):
        hints.append(
            'the fault\'s "kind" and parameters go in "fault": {"kind": "status", "code": 503}'
        )
    if unknown & set(_SCHEDULE_FIELDS):
        hints.append('"skip_first", "fail_next", "after_ms" and "for_ms" go in "schedule"')
    return "".join(f"; {hint}" for hint in hints)


def _sub_mapping(data: Mapping[str, Any], field: str, known: tuple[str, ...]) -> dict[str, Any]:
    """A rule's ``match`` or ``schedule`` (None or left out: empty), its keys checked."""
    value = data.get(field)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"fault rule {_shown(data.get('id'), 60)}: {_shown(field)} must be a mapping of "
            f"{', '.join(repr(k) for k in known)}, got {type(value).__name__}"
        )
    unknown = set(value) - set(known)
    if unknown:
        raise ConfigurationError(
            f"fault rule {_shown(data.get('id'), 60)}: {_shown(field)} has unknown field(s) "
            f"[{_key_names(unknown)}]; it takes {', '.join(repr(k) for k in known)}"
        )
    return dict(value)


def _rules(value: Iterable[FaultRule]) -> tuple[FaultRule, ...]:
    if isinstance(value, (str, bytes, Mapping, FaultRule)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"FaultPlan.rules must be a list of FaultRule, got {type(value).__name__}"
        )
    rules = tuple(value)
    seen: set[str] = set()
    for rule in rules:
        if not isinstance(rule, FaultRule):
            raise ConfigurationError(
                f"FaultPlan.rules must hold FaultRule values, got {type(rule).__name__}"
            )
        if rule.id in seen:
            raise ConfigurationError(f"FaultPlan has two rules with the id {_shown(rule.id, 60)}")
        seen.add(rule.id)
    return rules


@attrs.frozen
class FaultPlan:
    """A seed and an ordered list of rules: the whole description of a chaos run.

    Rules are consulted in order, and on each unit the first one that fires wins: a later
    rule due on the same unit is ``shadowed`` and injects nothing (see the module's docs).

    ``seed`` is an int of 64 bits, signed or not: :data:`MIN_SEED` (-2**63) to
    :data:`MAX_SEED` (2**64 - 1), which any JSON reader of 64-bit ints keeps exact.
    """

    seed: int = attrs.field(default=0)
    rules: tuple[FaultRule, ...] = attrs.field(default=(), converter=_rules)

    @seed.validator
    def _check_seed(self, attribute: attrs.Attribute[int], value: object) -> None:
        # FaultPlan([rule]) put the rules in the seed's place: a plan with no rules, that a
        # chaos run would apply without injecting anything.
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (rules go in rules=[...])" if isinstance(value, (list, tuple)) else ""
            raise ConfigurationError(
                f"FaultPlan.seed must be an int, got {type(value).__name__}{hint}"
            )
        # Bounded when the plan is made: a seed past 4300 digits was accepted, then the
        # first draw (which writes it) raised a bare ValueError inside a request, and
        # to_dict's JSON could not be written.
        if not MIN_SEED <= value <= MAX_SEED:
            raise ConfigurationError(
                f"FaultPlan.seed must be an int of 64 bits, in {MIN_SEED}..{MAX_SEED}, "
                f"got {_shown(value)}"
            )

    def with_rule(self, rule: FaultRule) -> FaultPlan:
        """This plan with ``rule`` appended."""
        return attrs.evolve(self, rules=(*self.rules, rule))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"seed": ..., "rules": [...]}``."""
        return {"seed": self.seed, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """A plan from its JSON form (as :meth:`to_dict` writes it; ``le-transport simulate
        --plan FILE`` reads a file of it): ``seed`` and ``rules``, nothing else.

        Each rule is ``{"id", "match": {"method", "path", "service"}, "unit", "p", "fault":
        {"kind", ...its parameters}, "schedule": {"skip_first", "fail_next", "after_ms",
        "for_ms"}}``, or ``"sequence": [fault or null, ...]`` in place of ``fault`` (its
        ``schedule``, if any, holding only ``after_ms`` and ``for_ms``); a field left out
        takes its default, and a fault may be a bare status code (``503``; below 300: pass).
        An unknown field anywhere is a
        :class:`~le_transport.errors.ConfigurationError` saying which fields are known."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a fault plan must be a mapping, got {_shown(data, 80)}")
        # As a rule's: a misspelt key ("rule") would otherwise load as a plan with no rules,
        # and a chaos run would silently inject nothing.
        unknown = set(data) - {"seed", "rules"}
        if unknown:
            raise ConfigurationError(
                f"fault plan has unknown field(s) [{_key_names(unknown)}]; "
                "it takes 'seed' and 'rules'"
            )
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"FaultPlan.seed must be an int, got {_shown(seed)}")
        rules = data.get("rules", [])
        if not isinstance(rules, Sequence) or isinstance(rules, (str, bytes)):
            raise ConfigurationError("FaultPlan.rules must be a list")
        return cls(seed=seed, rules=tuple(FaultRule.from_dict(r) for r in rules))


def as_plan(value: object, *, owner: str, field: str = "plan") -> FaultPlan:
    """``value`` as a :class:`FaultPlan`: a plan as it is, a list or tuple of
    :class:`FaultRule` as ``FaultPlan(rules=value)`` (seed 0); anything else a
    :class:`~le_transport.errors.ConfigurationError` naming ``owner.field`` and what it takes
    (a mapping: load it with :meth:`FaultPlan.from_dict`)."""
    if isinstance(value, FaultPlan):
        return value
    got = type(value).__name__
    hint = ""
    if isinstance(value, (list, tuple)):
        stray = next((r for r in value if not isinstance(r, FaultRule)), None)
        if stray is None:
            return FaultPlan(rules=value)
        got = f"a {got} holding a {type(stray).__name__}"
    elif isinstance(value, Mapping):
        hint = " (a plan's JSON form: load it with FaultPlan.from_dict)"
    elif isinstance(value, FaultRule):
        hint = " (one rule: put it in a list)"
    raise ConfigurationError(
        f"{owner}.{field} must be a FaultPlan or a list of FaultRule, got {got}{hint}"
    )


def draw(seed: int, rule_id: str, index: int, stream: str = "p") -> float:
    """A uniform number in [0, 1) that depends only on its arguments.

    The rule's stream for its ``index``-th matching unit: no shared generator, so the order in
    which units arrive, or another rule, cannot change it.
    """
    # surrogatepass: a rule id (or stream) with a lone surrogate, which strict UTF-8 cannot
    # encode, still draws (any other text encodes to the same bytes either way).
    key = f"{seed}\x00{rule_id}\x00{index}\x00{stream}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(key).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# -- bounded records ------------------------------------------------------------------------------

#: How many records a fault run, the simulator (``SimulatorConfig.max_records``) and the fault
#: injector keep by default in each of their logs: generous for any test, and a bound on the
#: memory of a long run (a simulator serving a day-long soak). Older records are dropped.
DEFAULT_MAX_RECORDS = 100_000

_T = TypeVar("_T")

_records_log = logging.getLogger("le_transport.records")


def check_max_records(value: object, *, owner: str, field: str = "max_records") -> None:
    """``value`` must be an int from 1 to ``sys.maxsize``, or None (no bound): else a
    :class:`~le_transport.errors.ConfigurationError` naming ``owner.field``."""
    require_kind(value, int, owner=owner, field=field)
    require_option(
        value is None or (isinstance(value, int) and value >= 1),
        value,
        owner=owner,
        field=field,
        wants="an int >= 1 or None",
    )
    if isinstance(value, int) and value > sys.maxsize:
        # A deque cannot be that long: it would raise OverflowError at the first record,
        # mid-run, instead of here.
        raise ConfigurationError(
            f"{owner}.{field} must be at most sys.maxsize ({sys.maxsize}), or None for no "
            "bound; got a larger int"
        )


def _notice_dropping(name: str, maxlen: int) -> None:
    """The once-only notice of a record (or a group of them) starting to drop: its name and
    bound, never a record (records may be requests)."""
    _records_log.info(
        "%s: keeping the newest %d records, dropping older ones",
        name,
        maxlen,
        extra={"records": name, "max_records": maxlen},
    )


class SharedBound:
    """One bound over several :class:`RecordLog`\\ s: together they keep their newest ``maxlen``
    records, whichever log each is in (the oldest record of all goes first, whatever was
    edited out of which log before).

    For records kept per item of something that comes and goes (the frames of each of the
    simulator's sockets): a bound per log alone multiplies by how many logs are kept. Each log
    still counts its own :attr:`RecordLog.dropped`; :attr:`dropped` counts them all. The first
    drop is logged once for the whole group, at INFO on ``le_transport.records``, with the
    group's ``name`` and bound only.
    """

    def __init__(self, maxlen: int, *, name: str = "records") -> None:
        check_max_records(maxlen, owner="SharedBound", field="maxlen")
        if maxlen is None:
            raise ConfigurationError("SharedBound.maxlen must be an int >= 1, got None")
        self.maxlen = maxlen
        self.name = name
        #: How many records the bound has dropped from its logs so far.
        self.dropped = 0
        # Every record the logs were given gets the next number of the group's order; each
        # log keeps its records' numbers beside them. Two parallel queues, oldest first: the
        # log of each number still counted, and the number. A record removed otherwise (an
        # edit, its log's own bound, a clear) has its number in _gone, taken out when it comes
        # up or when they pile up (_compact): the record dropped for the bound is always the
        # oldest of all, whichever log held it and whatever was removed before.
        self._order_logs: collections.deque[RecordLog[Any]] = collections.deque()
        self._order_seqs: collections.deque[int] = collections.deque()
        self._next = 0
        self._gone: set[int] = set()
        self._live = 0
        self._told = False

    @property
    def kept(self) -> int:
        """How many records the logs hold together."""
        return self._live

    def _numbers(self, log: RecordLog[Any], count: int) -> range:
        """Numbers for ``count`` new records of ``log``, the newest of the group; the log
        keeps them beside its records, then calls :meth:`_enforce`."""
        first = self._next
        self._next += count
        self._order_logs.extend(itertools.repeat(log, count))
        self._order_seqs.extend(range(first, self._next))
        self._live += count
        return range(first, self._next)

    def _enforce(self) -> None:
        """Drop the oldest records of all until the group is within its bound."""
        while self._live > self.maxlen:
            log = self._order_logs.popleft()
            seq = self._order_seqs.popleft()
            if seq in self._gone:
                self._gone.discard(seq)
                continue
            log._drop_number(seq)
            log.dropped += 1
            self.dropped += 1
            self._live -= 1
            if not self._told:
                self._told = True
                _notice_dropping(self.name, self.maxlen)

    def _removed(self, seqs: Iterable[int]) -> None:
        """Records removed from their log otherwise than by the bound."""
        gone = self._gone
        before = len(gone)
        gone.update(seqs)
        self._live -= len(gone) - before
        if len(gone) > self.maxlen:
            self._compact()

    def _compact(self) -> None:
        gone = self._gone
        logs: collections.deque[RecordLog[Any]] = collections.deque()
        seqs: collections.deque[int] = collections.deque()
        for log, seq in zip(self._order_logs, self._order_seqs, strict=True):
            if seq not in gone:
                logs.append(log)
                seqs.append(seq)
        self._order_logs, self._order_seqs = logs, seqs
        gone.clear()


class RecordLog(MutableSequence[_T], Generic[_T]):
    """A log that keeps its last ``maxlen`` records, the newest unless reordered (every record
    when ``maxlen`` is None).

    It reads as a list does: ``len``, iteration, indexing (``log[-1]``), slicing (a list),
    ``log == [...]`` (equal to any list or tuple holding the same records in the same order),
    ``clear()``, and takes a list's edits (``log[:] = kept``, ``del log[0]``). Appending is
    O(1); ``log[i] = r`` and ``del log[i]`` do not copy the log, other edits do. The log's own
    bound goes by place, as a ``deque(maxlen=...)``'s does: when full, appending a record
    drops the one in the first place (the oldest, unless an edit or :meth:`reverse` put
    another there), and an edit that leaves more than ``maxlen`` drops its first places
    (:meth:`insert` drops the old first record, never the one it inserts).
    :attr:`dropped` counts the records dropped so far and :attr:`total` every record ever
    added (both exact). The first drop is logged once, at INFO on ``le_transport.records``,
    with the log's ``name`` and bound only (never a record: records may be requests).

    ``shared``: a :class:`SharedBound` this log is one of (its records count against the
    group's bound too, and the group's oldest record goes first, from whichever log holds it).
    A record an edit keeps (the same object, as in ``log[:] = [r for r in log if ...]``) keeps
    its age; one it puts in counts as the newest (and in :attr:`total`). An edit by index is
    the slice edit of that place (``log[i] = r`` is ``log[i:i + 1] = [r]``), and
    :meth:`reverse` moves the records with their ages (``log[:] = log[::-1]``).
    """

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(
        self,
        maxlen: int | None = DEFAULT_MAX_RECORDS,
        *,
        name: str = "records",
        shared: SharedBound | None = None,
    ) -> None:
        check_max_records(maxlen, owner="RecordLog", field="maxlen")
        if shared is not None and not isinstance(shared, SharedBound):
            raise ConfigurationError(
                f"RecordLog.shared must be a SharedBound or None, got {type(shared).__name__}"
            )
        self._maxlen = maxlen
        # Made on the first record, and let go of when emptied: an empty deque still holds a
        # block of 64 slots (~0.6 KiB), and the simulator keeps three logs per socket for the
        # newest max_records sockets, most of them with few records or none.
        self._items: collections.deque[_T] | tuple[()] = ()
        # With a shared bound: each record's number in the group's order, beside it.
        self._seqs: collections.deque[int] | tuple[()] = ()
        self.name = name
        #: How many records were dropped to keep the bound (since the last :meth:`clear`).
        self.dropped = 0
        # Every record added since the last clear: an edit that removes some does not lower
        # it (it numbers the simulator's subscriptions, which must not repeat).
        self._added = 0
        self._told = False
        self._shared = shared

    @property
    def maxlen(self) -> int | None:
        """The bound: how many records are kept (None: all of them)."""
        return self._maxlen

    @property
    def total(self) -> int:
        """Every record added since the last :meth:`clear` (appended, or put in by an edit),
        whether it is kept, was dropped for the bound or was removed by an edit since."""
        return self._added

    def append(self, record: _T) -> None:
        """Add ``record`` as the newest, in the last place. If the log is full, the record in
        its first place is dropped (the oldest, unless an edit or :meth:`reverse` put another
        there); with a shared bound, if the group is full, the oldest record of the group."""
        items = self._items
        if type(items) is tuple:
            items = self._items = collections.deque(maxlen=self._maxlen)
        assert isinstance(items, collections.deque)
        self._added += 1
        shared = self._shared
        if items.maxlen is not None and len(items) == items.maxlen:
            self.dropped += 1
            if shared is not None:
                shared._removed((self._seq_deque()[0],))
            if not self._told:
                self._told = True
                _notice_dropping(self.name, items.maxlen)
        items.append(record)
        if shared is not None:
            seqs = self._seq_deque()
            seqs.append(shared._numbers(self, 1)[0])
            shared._enforce()

    def clear(self) -> None:
        """Forget every record, and the counts of dropped and added ones."""
        if self._shared is not None and self._seqs:
            self._shared._removed(self._seqs)
        self._items = ()
        self._seqs = ()
        self.dropped = 0
        self._added = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[_T]:
        return iter(self._items)

    def __reversed__(self) -> Iterator[_T]:
        return reversed(self._items)

    def __contains__(self, value: object) -> bool:
        return value in self._items

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return list(self._items)[index]
        return self._items[index]

    @overload
    def __setitem__(self, index: int, value: _T) -> None: ...

    @overload
    def __setitem__(self, index: slice, value: Iterable[_T]) -> None: ...

    def __setitem__(self, index: int | slice, value: Any) -> None:
        if isinstance(index, slice):
            items = list(self._items)
            items[index] = value
            self._replace(items)
            return
        # As ``log[i:i + 1] = [value]``: the record put in is the newest (and counts in total)
        # unless it is the one in that place, which keeps its age. By place, not through
        # _replace: that pairs records by identity, so with the same object twice in the log
        # an untouched one would take the replaced place's age.
        kept = self._deque(index)
        if kept[index] is value:
            return
        kept[index] = value
        self._added += 1
        shared = self._shared
        if shared is not None:
            seqs = self._seq_deque()
            old = seqs[index]
            seqs[index] = shared._numbers(self, 1)[0]
            shared._removed((old,))
            shared._enforce()

    def __delitem__(self, index: int | slice) -> None:
        if isinstance(index, slice):
            items = list(self._items)
            del items[index]
            self._replace(items)
        else:
            kept = self._deque(index)
            del kept[index]
            if self._shared is not None:
                seqs = self._seq_deque()
                seq = seqs[index]
                del seqs[index]
                self._shared._removed((seq,))
            if not kept:
                self._items = ()
                self._seqs = ()

    def reverse(self) -> None:
        """Reverse the records in place; each keeps its age (as ``log[:] = log[::-1]``).

        The newest is then in the first place, the one the log's own bound drops next when
        a record is appended to it full (a shared bound still drops the oldest of its group).
        """
        if self._items:
            self._items.reverse()
            if self._seqs:
                self._seqs.reverse()

    def insert(self, index: int, value: _T) -> None:
        """Insert ``value`` before ``index``, as a list does. If the log was full, the record
        that was in its first place (the oldest, unless an edit or :meth:`reverse` put another
        there) is dropped to make room, as appending drops it, and counted in :attr:`dropped`:
        never ``value`` itself, wherever it goes (``insert(0, r)`` on a full log keeps ``r``
        first). Unlike ``collections.deque.insert``, which raises ``IndexError`` on a full
        bounded deque, a log makes room: it is the newest record, as an appended one is."""
        items = list(self._items)
        size, maxlen = len(items), self._maxlen
        items.insert(index, value)
        if maxlen is not None and size >= maxlen:
            # The old first record goes: the one after value if list.insert put value first
            # (index 0, or one at or before -size). The bound's cut in _replace, which drops
            # the first places, dropped value itself there.
            at = operator.index(index)
            del items[1 if at == 0 or at <= -size else 0]
            self._dropping(1)
        self._replace(items)

    def _dropping(self, count: int) -> None:
        """``count`` records dropped for the log's own bound: counted, and the first drop told
        (once), whichever edit dropped it."""
        self.dropped += count
        if not self._told:
            self._told = True
            assert self._maxlen is not None
            _notice_dropping(self.name, self._maxlen)

    def _replace(self, items: list[_T]) -> None:
        """Hold ``items``, an edit of the records: those of them that were records before
        (the same objects) keep their place in the group's order, the others are new."""
        shared = self._shared
        # Each old record's number (-1 without a shared bound), by identity: a record the
        # edit kept is the same object, and one held twice keeps its numbers in order.
        by_id: dict[int, collections.deque[int]] = {}
        numbers: Iterable[int] = self._seqs if shared is not None else itertools.repeat(-1)
        for record, seq in zip(self._items, numbers, strict=False):
            by_id.setdefault(id(record), collections.deque()).append(seq)
        seqs: list[int | None] = []  # None: a new record
        for record in items:
            slot = by_id.get(id(record))
            seqs.append(slot.popleft() if slot else None)
        self._added += seqs.count(None)
        # The old records the edit left out, then those the bound cuts.
        gone = [seq for slot in by_id.values() for seq in slot]
        maxlen = self._maxlen
        if maxlen is not None and len(items) > maxlen:
            # The first places go, as appending to a full log drops its first record.
            cut = len(items) - maxlen
            self._dropping(cut)
            gone.extend(seq for seq in seqs[:cut] if seq is not None)
            del items[:cut]
            del seqs[:cut]
        self._items = collections.deque(items, maxlen=maxlen) if items else ()
        if shared is not None:
            shared._removed(gone)
            fresh = iter(shared._numbers(self, seqs.count(None)))
            numbered = [next(fresh) if seq is None else seq for seq in seqs]
            self._seqs = collections.deque(numbered, maxlen=maxlen) if items else ()
            shared._enforce()

    def _deque(self, index: int) -> collections.deque[_T]:
        """The records, for an edit at ``index``: an empty log has no such index."""
        items = self._items
        if type(items) is tuple:
            raise IndexError(f"{self.name}: index {index} out of range (the log is empty)")
        assert isinstance(items, collections.deque)
        return items

    def _seq_deque(self) -> collections.deque[int]:
        """The records' numbers in the shared bound's order (made with the first)."""
        seqs = self._seqs
        if type(seqs) is tuple:
            seqs = self._seqs = collections.deque(maxlen=self._maxlen)
        assert isinstance(seqs, collections.deque)
        return seqs

    def _drop_number(self, seq: int) -> None:
        """Drop the record numbered ``seq`` (the shared bound's doing; the log holds it):
        the oldest, unless an edit put records before it."""
        items = self._deque(0)
        seqs = self._seq_deque()
        if seqs[0] == seq:
            items.popleft()
            seqs.popleft()
        elif seqs[-1] == seq:
            # Reversed (or the oldest put last by an edit): as cheap as the first.
            items.pop()
            seqs.pop()
        else:
            at = seqs.index(seq)
            del items[at]
            del seqs[at]
        if not items:
            self._items = ()
            self._seqs = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (RecordLog, list, tuple, collections.deque)):
            return list(self._items) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"RecordLog({list(self._items)!r}, maxlen={self.maxlen}, dropped={self.dropped})"


# -- applying a plan -----------------------------------------------------------------------------


@attrs.frozen
class Injection:
    """A fault to inject now: which rule, for which of its matching units, and what."""

    rule_id: str
    index: int
    fault: Fault
    #: For :class:`Delay` and :class:`WsDelay`: the delay to apply, jitter drawn, in seconds.
    delay_s: float = 0.0
    #: For :class:`Quota`: the ``Retry-After`` to send, whole seconds until a slot frees.
    retry_after: int | None = None


@attrs.frozen
class FaultDecision:
    """One entry of the decision log: a rule's verdict on one of its matching units.

    ``outcome`` is ``inject``, ``pass`` (outside the window, or a sequence's pass), ``skipped``
    (the draw was above ``p``), ``shadowed`` (an earlier rule injected on the same unit),
    ``admitted`` (a :class:`Quota` in force had a free slot) or ``forced`` (a per-request
    override named the rule; ``index`` is then -1).
    """

    rule_id: str
    unit: str
    index: int
    outcome: str
    kind: str | None
    method: str
    path: str
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return attrs.asdict(self)


@attrs.frozen
class RuleCounts:
    """What one rule did over a run: exact totals of its decisions, by outcome.

    - ``matched``: units it matched (its counter: every decision below but ``forced``).
    - ``injected``: faults it injected, ``forced`` ones included.
    - ``shadowed``: units it was due on, but an earlier rule of the plan had injected on the
      same unit (the first rule that fires wins; the turn is lost, not postponed).
    - ``skipped``: units it was due on, but its draw was above ``p``.
    - ``passed``: units outside its window, or a sequence's pass.
    - ``admitted``: requests a :class:`Quota` in force let through.
    - ``forced``: faults injected by a per-request override (counted in ``injected`` too).
    """

    matched: int = 0
    injected: int = 0
    shadowed: int = 0
    skipped: int = 0
    passed: int = 0
    admitted: int = 0
    forced: int = 0

    @property
    def always_shadowed(self) -> bool:
        """Whether the rule was due but injected nothing: shadowed every time it was due."""
        return self.injected == 0 and self.shadowed > 0

    def to_dict(self) -> dict[str, int]:
        """The JSON form."""
        return attrs.asdict(self)


_faults_log = logging.getLogger("le_transport.chaos.faults")


def _printable(text: str) -> str:
    """``text`` as it is if every character of it prints, else its ``repr`` (quoted, control
    and other non-printable characters escaped): a client's text (a request path as the server
    decoded it, a socket message's ``type``) written to a terminal or a log must not move the
    cursor, erase the screen or start a line of its own."""
    return text if text.isprintable() else repr(text)


def _log_injection(decision: FaultDecision, origin: float | None) -> None:
    """One DEBUG line for an injection: what the decision log holds, nothing more (the path is
    redacted already; a message's type is cut short), every field a client or a plan file
    wrote escaped if it holds a character that does not print (:func:`_printable`), in the
    message and in the record's ``rule`` attribute alike (a handler's format may show it)."""
    at = decision.at
    when = "" if at is None or origin is None else f" at +{at - origin:.3f} s"
    _faults_log.debug(
        "injected %s (rule %s, %s #%d) on %s %.80s%s",
        decision.kind,
        _printable(decision.rule_id),
        decision.unit,
        decision.index,
        _printable(decision.method),
        _printable(decision.path[:80]),
        when,
        # Escaped here too: a handler's format may print %(rule)s.
        extra={"rule": _printable(decision.rule_id), "fault": decision.kind, "unit": decision.unit},
    )


class FaultRun:
    """A plan being applied: per-rule counters of matching units, and the decision log.

    ``decide`` is called once per unit (request, session or message) and returns the
    :class:`Injection` to apply, or None. Only rules for that unit are consulted, in plan order;
    the first rule whose schedule and draw say "inject" wins, every later rule due on that unit
    is logged ``shadowed`` (rules do not add up), and every matching rule's counter advances.

    ``max_records`` bounds the records kept (default :data:`DEFAULT_MAX_RECORDS`; None: no
    bound): :attr:`log` keeps the newest decisions and :meth:`injected` the newest injections,
    ``max_records`` of each. :meth:`count`, :meth:`injected_counts` and :meth:`rule_counts`
    stay exact however many records are dropped: they are counters per rule, and a plan has
    few rules (a rule :meth:`change_plan` removes or adds anew starts over).

    Each injection is also logged at DEBUG on ``le_transport.chaos.faults`` (rule, kind, unit,
    method and redacted path: what the decision log holds), which ``le-transport simulate
    --verbose`` shows.

    ``plan``: a :class:`FaultPlan`, or a list of :class:`FaultRule` (a plan with seed 0).
    """

    def __init__(
        self,
        plan: FaultPlan | Sequence[FaultRule],
        *,
        origin: float | None = None,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> None:
        check_max_records(max_records, owner="FaultRun")
        _check_origin(origin, owner="FaultRun")
        self.plan = as_plan(plan, owner="FaultRun")
        #: The clock time time windows are measured from (default: the first decision's).
        self.origin = origin
        self._counts: dict[str, int] = {}
        #: Per rule: how many times it was forced (its forced delays' jitter draws).
        self._forced: dict[str, int] = {}
        #: Per rule: how many faults it injected (forced ones included), over the whole run.
        self._injected_counts: dict[str, int] = {}
        #: Per rule: how many of its decisions had each outcome, over the whole run.
        self._outcomes: dict[str, dict[str, int]] = {}
        #: Per quota rule: the clock times of the requests it admitted, within its window.
        self._admitted: dict[str, collections.deque[float]] = {}
        #: The newest ``max_records`` decisions, in order (``log.dropped``: how many older
        #: ones were dropped).
        self.log: RecordLog[FaultDecision] = RecordLog(max_records, name="fault decision log")
        self._injections: RecordLog[FaultDecision] = RecordLog(
            max_records, name="fault injection log"
        )

    @property
    def max_records(self) -> int | None:
        """How many decisions, and how many injections, are kept (None: all)."""
        return self.log.maxlen

    def _record(self, decision: FaultDecision) -> None:
        self.log.append(decision)
        rule_id = decision.rule_id
        outcome = decision.outcome
        tally = self._outcomes.get(rule_id)
        if tally is None:
            tally = self._outcomes[rule_id] = {}
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome in ("inject", "forced"):
            self._injections.append(decision)
            self._injected_counts[rule_id] = self._injected_counts.get(rule_id, 0) + 1
            if _faults_log.isEnabledFor(logging.DEBUG):
                _log_injection(decision, self.origin)

    def decide(
        self,
        unit: str,
        *,
        method: str,
        path: str,
        service: str | None = None,
        at: float | None = None,
        kinds: frozenset[str] | None = None,
        shown: str | None = None,
    ) -> Injection | None:
        """Decide for one unit. ``kinds`` limits the fault kinds this caller can apply; a rule
        whose fault is of another kind does not match. ``at`` is the clock time, logged.
        ``shown``: the path recorded and logged, when it is not ``path``, the one matched (a
        socket's upgrade is matched on its real path and shown by its template, whose
        ``{bearer}`` the real one fills in)."""
        chosen: Injection | None = None
        if shown is None:
            shown = path
        if self.origin is None and at is not None:
            self.origin = at
        # Rounded to the microsecond, as a quota's wait is rounded: float noise must not put a
        # unit exactly ``after_ms`` after the origin outside the window for some origins and
        # not others (2.3 - 0.3 is 1.9999999999999998), even on a clock with a large origin.
        elapsed_ms = (
            0.0 if at is None or self.origin is None else round((at - self.origin) * 1000.0, 3)
        )
        for rule in self.plan.rules:
            if rule.unit != unit or not rule.match.matches(method, path, service):
                continue
            if kinds is not None and not _kinds_of(rule) <= kinds:
                continue
            index = self._counts.get(rule.id, 0)
            self._counts[rule.id] = index + 1
            fault = rule.scheduled(index)
            if fault is not None and rule.schedule.timed and not rule.schedule.in_time(elapsed_ms):
                fault = None
            if fault is None:
                outcome = "pass"
            elif rule.p < 1.0 and draw(self.plan.seed, rule.id, index) >= rule.p:
                outcome = "skipped"
            elif chosen is not None:
                outcome = "shadowed"
            elif isinstance(fault, Quota):
                wait = self._quota_wait(rule.id, fault, 0.0 if at is None else at)
                if wait is None:
                    outcome = "admitted"
                else:
                    outcome = "inject"
                    chosen = Injection(rule.id, index, fault, retry_after=wait)
            else:
                outcome = "inject"
                delay = 0.0
                if isinstance(fault, Delay):
                    jitter = fault.jitter_ms * draw(self.plan.seed, rule.id, index, "jitter")
                    delay = (fault.delay_ms + jitter) / 1000.0
                elif isinstance(fault, WsDelay):
                    spread = 2.0 * draw(self.plan.seed, rule.id, index, "jitter") - 1.0
                    delay = (fault.delay_ms + fault.jitter_ms * spread) / 1000.0
                chosen = Injection(rule.id, index, fault, delay)
            self._record(
                FaultDecision(
                    rule.id,
                    unit,
                    index,
                    outcome,
                    None if fault is None else fault.kind,
                    method.upper(),
                    redact_url(shown) if unit != "ws_message" else shown,
                    at,
                )
            )
        return chosen

    def _quota_wait(self, rule_id: str, quota: Quota, now: float) -> int | None:
        """Admit a request at ``now`` (None) or say how many whole seconds until a slot frees."""
        window = _whole_us(quota.window_ms * 1000.0)
        admitted = self._admitted.setdefault(rule_id, collections.deque())
        # The window is (now - window, now]: a request exactly one window after the oldest
        # admitted one gets that one's slot, so a client that honours Retry-After gets in.
        # In whole microseconds, the window and the time since each admission alike: float
        # noise on either side must not keep the slot taken (admitted at 0.1 s, 5.1 - 0.1 is
        # 4.999999999999999; a window of 1000.147 ms is 1.0001470000000001 s), which sent a
        # client that waited its Retry-After away again for one more second.
        while admitted and round((now - admitted[0]) * 1e6) >= window:
            admitted.popleft()
        if len(admitted) < quota.limit:
            admitted.append(now)
            return None
        # Whole seconds, rounded up: an exact 5 s is a Retry-After of 5, not 6.
        left = window - round((now - admitted[0]) * 1e6)
        return max(1, -(-left // 1_000_000))

    def force(
        self, rule_id: str, *, unit: str, method: str, path: str, at: float | None = None
    ) -> Injection | None:
        """Inject rule ``rule_id``'s fault now, whatever its schedule and ``p`` say (the
        per-request override a simulator or proxy may allow); None if there is no such rule.
        Logged as ``forced``; the rule's counter does not move. A ``Delay``'s ``jitter_ms``
        (a ``WsDelay``'s spread) is drawn as for a scheduled unit, from a stream of the rule's
        own for its forced units (``"forced-jitter"``, the n-th forcing of the rule): the
        same plan forced the same way waits the same, and a forced delay is not a fixed
        ``delay_ms``."""
        rule = next((r for r in self.plan.rules if r.id == rule_id), None)
        if rule is None:
            return None
        fault = rule.fault
        if fault is None and rule.sequence is not None:
            fault = next((f for f in rule.sequence if f is not None), None)
        if fault is None:
            return None
        delay = 0.0
        if isinstance(fault, (Delay, WsDelay)):
            nth = self._forced.get(rule.id, 0)
            self._forced[rule.id] = nth + 1
            jitter = draw(self.plan.seed, rule.id, nth, "forced-jitter")
            if isinstance(fault, Delay):
                delay = (fault.delay_ms + fault.jitter_ms * jitter) / 1000.0
            else:
                delay = (fault.delay_ms + fault.jitter_ms * (2.0 * jitter - 1.0)) / 1000.0
        # A forced quota refusal takes no slot; its Retry-After is a whole window.
        retry_after = (
            max(1, math.ceil(fault.window_ms / 1000.0)) if isinstance(fault, Quota) else None
        )
        self._record(
            FaultDecision(
                rule.id, unit, -1, "forced", fault.kind, method.upper(), redact_url(path), at
            )
        )
        return Injection(rule.id, -1, fault, delay, retry_after)

    def injected(self) -> list[FaultDecision]:
        """The decisions that injected a fault (forced ones included), in order: the newest
        ``max_records`` of them (:attr:`injections_dropped` says how many older ones were
        dropped; :meth:`injected_counts` has the exact totals)."""
        return list(self._injections)

    @property
    def injections_dropped(self) -> int:
        """How many injections :meth:`injected` no longer lists, to keep its bound."""
        return self._injections.dropped

    def injected_counts(self) -> dict[str, int]:
        """``{rule id: faults injected}`` (forced ones included), exact however many records
        were dropped, since each rule was added (:meth:`change_plan`); rules that injected
        nothing are left out."""
        return dict(self._injected_counts)

    def count(self, rule_id: str) -> int:
        """How many units rule ``rule_id`` has matched since it was added (exact)."""
        return self._counts.get(rule_id, 0)

    def rule_counts(self) -> dict[str, RuleCounts]:
        """``{rule id: RuleCounts}``: what each rule did since it was added (exact, however many
        records were dropped), for every rule of the plan in order, then any rule that had
        decided something and left the plan by an assignment to :attr:`plan` (one removed by
        :meth:`change_plan`, as ``clear()`` does, starts over and is not listed). A rule with
        ``injected == 0`` and ``shadowed > 0`` was due but an earlier rule fired first on every
        one of those units."""
        ids = [rule.id for rule in self.plan.rules]
        known = set(ids)
        ids += [rule_id for rule_id in self._outcomes if rule_id not in known]
        out: dict[str, RuleCounts] = {}
        for rule_id in ids:
            tally = self._outcomes.get(rule_id, {})
            out[rule_id] = RuleCounts(
                matched=self._counts.get(rule_id, 0),
                injected=self._injected_counts.get(rule_id, 0),
                shadowed=tally.get("shadowed", 0),
                skipped=tally.get("skipped", 0),
                passed=tally.get("pass", 0),
                admitted=tally.get("admitted", 0),
                forced=tally.get("forced", 0),
            )
        return out

    def change_plan(self, plan: FaultPlan) -> None:
        """Put ``plan`` in force in place of :attr:`plan`, the run going on (origin, log and
        records kept, as are the counters of the rules in both): each rule it removes and each
        rule it adds under an id the run does not have starts over, so that a rule added after
        ``clear()`` under an id used before starts from 0 (its counter, hence its schedule's
        window and its draws; its quota slots; its totals in :meth:`rule_counts`), as
        ``FaultInjector.add`` and ``SimFaults.add`` say. What the injector's and the
        simulator's ``add``/``clear`` go through."""
        kept = {rule.id for rule in self.plan.rules}
        new = {rule.id for rule in plan.rules}
        self.plan = plan
        for rule_id in kept ^ new:
            self._counts.pop(rule_id, None)
            self._forced.pop(rule_id, None)
            self._injected_counts.pop(rule_id, None)
            self._outcomes.pop(rule_id, None)
            self._admitted.pop(rule_id, None)

    def reset(
        self, plan: FaultPlan | Sequence[FaultRule] | None = None, *, origin: float | None = None
    ) -> None:
        """Start over (with ``plan``, if given): counters, totals and logs cleared, time windows
        measured from ``origin`` (default: the next decision's time)."""
        _check_origin(origin, owner="FaultRun.reset")
        if plan is not None:
            self.plan = as_plan(plan, owner="FaultRun.reset")
        self.origin = origin
        self._counts.clear()
        self._forced.clear()
        self._injected_counts.clear()
        self._outcomes.clear()
        self._admitted.clear()
        self.log.clear()
        self._injections.clear()


def _whole_us(us: float) -> int:
    """``us`` microseconds as a whole number of them: the nearest when ``us`` is one but for
    float noise (``1000.147 * 1000`` is ``1000147.0000000001``), else the next one up, as
    :attr:`Schedule._start_ms` takes a window's start."""
    nearest = round(us)
    if math.isclose(us, nearest, rel_tol=4 * sys.float_info.epsilon):
        return nearest
    return math.ceil(us)


def _check_origin(origin: object, *, owner: str) -> None:
    """``origin`` must be None or a finite clock time: else a ConfigurationError naming it (a
    str failed only at the first decision, on a subtraction)."""
    if origin is not None and not finite_number(origin):
        wants = "None or a finite clock time in seconds"
        shown = repr(origin) if isinstance(origin, float) else type(origin).__name__
        raise ConfigurationError(f"{owner}.origin must be {wants}, got {shown}")


def _kinds_of(rule: FaultRule) -> frozenset[str]:
    if rule.sequence is not None:
        return frozenset(f.kind for f in rule.sequence if f is not None)
    assert rule.fault is not None
    return frozenset({rule.fault.kind})
