"""Close-code classification: what a dropped WebSocket means, as a pure decision.

The socket layer turns whatever ended a connection (a close frame, an abrupt drop, a refused
upgrade, a keepalive that got no answer, the caller's own ``close()``) into a
:class:`Disconnect` value; :meth:`ClosePolicy.classify` answers what to do next: stop, reconnect,
re-authenticate first, or fail for good. LiveEngage's UMS socket closes with 4401 (token missing
or expired) and 4407 (identity needs extending) when the caller must re-authenticate; LivePerson's
own SDK treats 1011 the same, and an HTTP 401 on the upgrade means the same thing. Revocation is
also known to arrive as a plain 1006, so a run of *fast* 1006 drops escalates to
re-authentication too. A connection the client failed itself (a frame it could not take) is no
drop: it never counts towards that run.

Every other close code reconnects by default, as LiveEngage's guide asks of a socket closed by an
error (and its protocol notes say of other codes: "wait, reconnect"); no code is documented as
final. A caller whose server does close for good with some code (a policy violation, 1008, that
reconnecting unchanged would only repeat) names it in :attr:`ClosePolicy.fail_codes`: the socket
then stops with :class:`~le_transport.errors.SocketRejected`, as after a 403 upgrade. A refused
upgrade's ``Retry-After`` is honoured: the reconnect waits at least what the server asked, up to
:attr:`ClosePolicy.retry_after_ceiling`, plus a random share of it (:meth:`CloseVerdict.pause`),
so that a fleet refused together does not come back at one instant.
"""

from __future__ import annotations

import enum

import attrs

from ..errors import ConfigurationError
from ._validate import (
    CLOSE_CODES,
    HTTP_STATUSES,
    clamp_draw,
    flag,
    int_codes,
    non_negative,
    positive,
    shown,
)
from .retry import DEFAULT_RETRY_AFTER_CEILING

__all__ = [
    "ABNORMAL_CLOSURE",
    "FAST_DROP_RUN",
    "FAST_DROP_WITHIN",
    "INTERNAL_ERROR",
    "NORMAL_CLOSURE",
    "RATE_LIMIT_PAUSE",
    "REAUTH_CLOSE_CODES",
    "REAUTH_HANDSHAKE_STATUSES",
    "RETRY_HANDSHAKE_STATUSES",
    "CloseAction",
    "ClosePolicy",
    "CloseVerdict",
    "Disconnect",
    "DisconnectKind",
]

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
ABNORMAL_CLOSURE = 1006
#: UMS: 4401 token missing/expired, 4407 identity needs extending; LivePerson's SDK adds 1011.
REAUTH_CLOSE_CODES = frozenset({4401, 4407, 1011})
#: The server's internal error (RFC 6455). LivePerson's SDK logs in afresh on it, so the socket
#: does, once in a run of failures; it says nothing of the credentials, so a run of them is
#: an outage waited out on the backoff, never "credentials refused" (SocketAuthFailed).
INTERNAL_ERROR = 1011
#: An upgrade refused with 401: the bearer (or JWT) is no longer good.
REAUTH_HANDSHAKE_STATUSES = frozenset({401})
#: Upgrade statuses that are worth another try as they are (rate limit, timeout, server side).
RETRY_HANDSHAKE_STATUSES = frozenset({408, 425, 429})
#: A 1006 that ends a connection younger than this counts towards a "fast drop" run.
FAST_DROP_WITHIN = 10.0
#: This many fast 1006 drops in a row are treated as a revoked token: re-authenticate.
FAST_DROP_RUN = 3
#: LiveEngage: after a 429, wait at least a second before trying again.
RATE_LIMIT_PAUSE = 1.0


class DisconnectKind(enum.Enum):
    """How a connection (or an attempt at one) ended."""

    #: The caller called ``close()``: the socket must stay closed.
    BY_CALLER = "by_caller"
    #: The server sent a close frame with ``code``.
    CLOSE_FRAME = "close_frame"
    #: The connection dropped without a close frame (1006): reset, EOF, protocol error.
    ABNORMAL = "abnormal"
    #: The keepalive got no answer in time: the peer is dead or the path half-open.
    DEAD_PEER = "dead_peer"
    #: The TCP/TLS connection or the upgrade did not complete (refused, DNS, timeout).
    CONNECT_FAILED = "connect_failed"
    #: The server answered the upgrade with an HTTP ``status`` instead of 101.
    HANDSHAKE_REJECTED = "handshake_rejected"
    #: The connection opened but an ``on_connect`` callback failed (a resubscribe answered with
    #: an error ``code``, or an exception): the socket dropped it to start again.
    SETUP_FAILED = "setup_failed"
    #: The client failed the connection itself with close ``code`` (RFC 6455 7.1.7): the server
    #: sent what it cannot take (1009: a message over ``max_msg_size``; 1007: text that is not
    #: UTF-8; 1002: a protocol error; 1008: a flood before ``InitConnection``'s answer), or the
    #: client could not go on (1011: an unexpected error while sending). The server did not drop
    #: it: no sign of a revoked token.
    FAILED_BY_CLIENT = "failed_by_client"


@attrs.frozen
class Disconnect:
    """The facts of one ended connection or failed connect.

    ``code`` is the close code (close frames; 1006 for abnormal drops), ``status`` the HTTP
    status of a refused upgrade, ``lifetime`` how long the connection had been open (None when
    it never opened), ``error`` a short description (an exception's type name; never a secret).
    """

    kind: DisconnectKind
    code: int | None = None
    status: int | None = None
    lifetime: float | None = None
    error: str | None = None
    #: A refused upgrade's ``Retry-After``, in seconds (parsed; None when the server sent none,
    #: or one that is not delta-seconds nor an HTTP-date).
    retry_after: float | None = None

    @classmethod
    def by_caller(cls) -> Disconnect:
        """The caller closed the socket."""
        return cls(DisconnectKind.BY_CALLER, code=NORMAL_CLOSURE)

    @classmethod
    def close_frame(cls, code: int, lifetime: float | None = None) -> Disconnect:
        """The server closed with ``code`` (1006 is an abnormal drop: no frame was sent)."""
        if code == ABNORMAL_CLOSURE:
            return cls(DisconnectKind.ABNORMAL, code=code, lifetime=lifetime)
        return cls(DisconnectKind.CLOSE_FRAME, code=code, lifetime=lifetime)

    @classmethod
    def abnormal(cls, lifetime: float | None = None, error: str | None = None) -> Disconnect:
        """The connection dropped without a close frame."""
        return cls(DisconnectKind.ABNORMAL, code=ABNORMAL_CLOSURE, lifetime=lifetime, error=error)

    @classmethod
    def dead_peer(
        cls, lifetime: float | None = None, error: str = "keepalive unanswered"
    ) -> Disconnect:
        """The peer was taken for dead: its keepalive went unanswered, or (``error`` says so)
        the connection did not become ready in time."""
        return cls(
            DisconnectKind.DEAD_PEER,
            code=ABNORMAL_CLOSURE,
            lifetime=lifetime,
            error=error,
        )

    @classmethod
    def connect_failed(cls, error: str | None = None) -> Disconnect:
        """The connection or upgrade could not be made."""
        return cls(DisconnectKind.CONNECT_FAILED, error=error)

    @classmethod
    def handshake_rejected(cls, status: int, retry_after: float | None = None) -> Disconnect:
        """The upgrade was answered with HTTP ``status`` (and a ``Retry-After`` of
        ``retry_after`` seconds, if it had a valid one)."""
        return cls(DisconnectKind.HANDSHAKE_REJECTED, status=status, retry_after=retry_after)

    @classmethod
    def setup_failed(
        cls, error: str, *, code: int | None = None, lifetime: float | None = None
    ) -> Disconnect:
        """An ``on_connect`` callback failed with ``error``; ``code`` is the error code the
        server answered one of its requests with, if that was the failure."""
        return cls(DisconnectKind.SETUP_FAILED, code=code, lifetime=lifetime, error=error)

    @classmethod
    def failed_by_client(cls, code: int, error: str, lifetime: float | None = None) -> Disconnect:
        """The client failed the connection with close ``code`` because of ``error`` (what it
        could not take or do, e.g. "a message over max_msg_size"; never the frame itself)."""
        return cls(DisconnectKind.FAILED_BY_CLIENT, code=code, lifetime=lifetime, error=error)

    def describe(self) -> str:
        """A short human description, for logs and events."""
        if self.kind is DisconnectKind.HANDSHAKE_REJECTED:
            if self.retry_after is not None:
                return (
                    f"upgrade refused with HTTP {self.status} (Retry-After: {self.retry_after:g} s)"
                )
            return f"upgrade refused with HTTP {self.status}"
        if self.kind is DisconnectKind.CLOSE_FRAME:
            return f"closed by the server with code {self.code}"
        if self.kind is DisconnectKind.ABNORMAL:
            return f"dropped abnormally (1006{', ' + self.error if self.error else ''})"
        if self.kind is DisconnectKind.DEAD_PEER:
            return f"peer dead: {self.error or 'keepalive unanswered'}"
        if self.kind is DisconnectKind.CONNECT_FAILED:
            return f"connect failed{' (' + self.error + ')' if self.error else ''}"
        if self.kind is DisconnectKind.SETUP_FAILED:
            answered = f", answered {self.code}" if self.code is not None else ""
            return f"on_connect failed ({self.error}{answered})"
        if self.kind is DisconnectKind.FAILED_BY_CLIENT:
            return f"failed by the client with code {self.code} ({self.error})"
        return "closed by the caller"


class CloseAction(enum.Enum):
    """What to do after a disconnect."""

    #: Stay closed (the caller asked for it).
    STOP = "stop"
    #: Wait (backoff, pacing), then reconnect with the same credentials.
    RECONNECT = "reconnect"
    #: Invalidate the credentials, get fresh ones, then reconnect.
    REAUTHENTICATE = "reauthenticate"
    #: Stop for good with an error: reconnecting unchanged cannot help (a 403, a 404, a close
    #: code among :attr:`ClosePolicy.fail_codes`).
    FAIL = "fail"


@attrs.frozen
class CloseVerdict:
    """The policy's answer: an ``action``, why, and the updated run of fast 1006 drops.

    ``min_pause``: the reconnect waits at least this long, whatever the backoff says (a rate
    limit, a ``Retry-After`` asks for it); :meth:`pause` spreads it. ``escalates``: whether this
    failure counts towards escalating to a re-login (a rate limit does not: logging in again
    only adds load). ``refused``: for ``REAUTHENTICATE``, whether the server refused the
    credentials (4401, 4407, a 401 upgrade: counted towards the socket's
    ``max_auth_failures``) or failed on its side (a 1011 close: re-authenticated once in a run
    of failures, then reconnected on the backoff like any outage).
    """

    action: CloseAction
    reason: str
    fast_drops: int = 0
    min_pause: float = 0.0
    escalates: bool = True
    refused: bool = True

    def pause(self, delay: float, *, jitter: float, rand: float = 0.5) -> float:
        """The reconnect's pause: the backoff's (jittered) ``delay``, or, when ``min_pause`` is
        longer, ``min_pause`` plus a random share of it, up to ``jitter`` (the backoff's
        fraction; ``rand`` is a uniform draw in [0, 1)).

        Never shorter than ``min_pause``: the server asked for it. Never exactly it either
        (unless ``jitter`` is 0): every socket a server refused at once with the same
        ``Retry-After`` would otherwise come back at the same instant, and the backoff's jitter,
        there to spread a fleet, would be lost under the floor.
        """
        floor = self.min_pause
        if floor <= 0.0:
            return delay
        return max(delay, floor * (1.0 + jitter * clamp_draw(rand)))


def _rate_limited(reason: str, fast_drops: int = 0) -> CloseVerdict:
    """Reconnect after a 429: LiveEngage asks for a second at least, and a rate limit never
    escalates to a re-login (logging in again only adds load)."""
    return CloseVerdict(
        CloseAction.RECONNECT, reason, fast_drops, min_pause=RATE_LIMIT_PAUSE, escalates=False
    )


def _reauth_codes(value: object) -> frozenset[int]:
    codes = int_codes(
        "ClosePolicy.reauth_codes", value, bounds=CLOSE_CODES, kind="WebSocket close codes"
    )
    if ABNORMAL_CLOSURE in codes:
        # Dead there: a 1006 always arrives as an abnormal drop, never as a close frame.
        raise ConfigurationError(
            "ClosePolicy.reauth_codes cannot hold 1006: no server sends it (it is how a drop "
            "without a close frame is reported; a run of fast drops re-authenticates, see "
            "fast_drop_run)"
        )
    return codes


def _reauth_statuses(value: object) -> frozenset[int]:
    statuses = int_codes(
        "ClosePolicy.reauth_statuses", value, bounds=HTTP_STATUSES, kind="HTTP statuses"
    )
    not_refusals = sorted(status for status in statuses if not 400 <= status <= 499)
    if not_refusals:
        # A 1xx, 2xx, 3xx or 5xx says nothing of the credentials: in the set, an upgrade
        # answered 200 (or a 503: an outage) threw the credentials away and logged in again.
        # Only a client error (401, 403, ...) can be a refused credential.
        raise ConfigurationError(
            f"ClosePolicy.reauth_statuses must hold only 4xx statuses (an auth failure is a "
            f"client error, as the default 401), got {shown(not_refusals)}"
        )
    if 429 in statuses:
        # It overrode the fixed rule: a rate limit never escalates to a re-login.
        raise ConfigurationError(
            "ClosePolicy.reauth_statuses cannot hold 429: a rate limit reconnects after "
            "RATE_LIMIT_PAUSE at least and never escalates to a re-login (logging in again "
            "only adds load)"
        )
    return statuses


def _fail_codes(value: object) -> frozenset[int]:
    return int_codes(
        "ClosePolicy.fail_codes", value, bounds=CLOSE_CODES, kind="WebSocket close codes"
    )


def _check_fail_codes(
    instance: ClosePolicy, attribute: attrs.Attribute[frozenset[int]], value: frozenset[int]
) -> None:
    both = value & instance.reauth_codes
    if both:
        raise ConfigurationError(
            f"ClosePolicy.fail_codes and reauth_codes share {sorted(both)}: a close code either "
            "re-authenticates or fails for good, not both"
        )
    if ABNORMAL_CLOSURE in value:
        raise ConfigurationError(
            "ClosePolicy.fail_codes cannot hold 1006: no server sends it (it is how a drop "
            "without a close frame is reported, and drops always reconnect)"
        )
    if NORMAL_CLOSURE in value:
        # A normal close is no failure: it reconnects, or stops (without an error) with
        # reconnect_on_server_close=False. In fail_codes, every idle socket LiveEngage closed
        # normally stopped for good with SocketRejected.
        raise ConfigurationError(
            "ClosePolicy.fail_codes cannot hold 1000: a normal close is no failure (to stay "
            "closed after a server's normal close, set reconnect_on_server_close=False)"
        )


def _run_length(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"ClosePolicy.{attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen
class ClosePolicy:
    """Classifies disconnects; the defaults are LiveEngage's.

    - ``reauth_codes``: close codes that mean "re-authenticate first" (4401, 4407, 1011);
      WebSocket close codes (1000 to 4999), not 1006 (no server sends it: a drop is
      re-authenticated through ``fast_drop_run``).
    - ``reauth_statuses``: upgrade statuses that mean the same (401); client errors (400 to
      499: no other status is a refused credential), not 429 (a rate limit never escalates to
      a re-login: see the fixed rules).
    - ``fast_drop_within`` / ``fast_drop_run``: ``fast_drop_run`` abnormal drops in a row, each
      of a connection younger than ``fast_drop_within`` seconds, mean re-authenticate.
    - ``reconnect_on_server_close``: whether a server's own 1000/1001 close is reconnected (it
      is by default: LiveEngage closes idle sockets with a normal code, and the caller did not
      ask for the socket to go away).
    - ``fail_codes``: close codes after which the socket stops for good, with
      :class:`~le_transport.errors.SocketRejected` (as after a 403 upgrade; its ``status`` is 0,
      its message names the code), e.g. ``frozenset({1008})`` for a server whose policy
      violation is final. Empty by default: LiveEngage documents every code but the
      re-authentication ones as "wait, reconnect". Only a server's close frame is matched (not
      a code the client failed the connection with itself); a code may not be in both
      ``fail_codes`` and ``reauth_codes``, nor be 1006 (no server sends it) or 1000 (a normal
      close is no failure: ``reconnect_on_server_close=False`` stops on it), nor lie outside
      1000 to 4999. It takes precedence over ``reconnect_on_server_close`` (for 1001).
    - ``retry_after_ceiling``: the longest pause a refused upgrade's ``Retry-After`` may ask
      for (60 s, the HTTP retry's default ceiling); a longer one is cut to it (0: every
      ``Retry-After`` is ignored).

    Fixed rules: a 429 (an upgrade refused with it, ``InitConnection`` or an ``on_connect``
    request answered with it) reconnects after :data:`RATE_LIMIT_PAUSE` at least and never
    escalates to a re-login; an upgrade refused with a ``Retry-After`` (a 429, a 503) and
    reconnected waits at least what it asked (up to ``retry_after_ceiling``) and does not
    escalate either (the re-login loop would dial at once, and logging in again only adds load),
    but only when that ask lengthens the verdict's least pause: a ``Retry-After`` of 0, a date
    already past, one cut to a ceiling of 0, or one under a 429's second changes nothing (nor
    does it show in the reason); a connection the client failed itself
    (:attr:`DisconnectKind.FAILED_BY_CLIENT`) reconnects and is no fast drop. The socket waits
    :meth:`CloseVerdict.pause`, and gives up when that pause would end past its backoff's
    ``deadline``.
    """

    reauth_codes: frozenset[int] = attrs.field(default=REAUTH_CLOSE_CODES, converter=_reauth_codes)
    reauth_statuses: frozenset[int] = attrs.field(
        default=REAUTH_HANDSHAKE_STATUSES, converter=_reauth_statuses
    )
    fast_drop_within: float = attrs.field(default=FAST_DROP_WITHIN, validator=positive)
    fast_drop_run: int = attrs.field(default=FAST_DROP_RUN, validator=_run_length)
    reconnect_on_server_close: bool = attrs.field(default=True, validator=flag)
    fail_codes: frozenset[int] = attrs.field(
        default=frozenset(), converter=_fail_codes, validator=_check_fail_codes
    )
    retry_after_ceiling: float = attrs.field(
        default=DEFAULT_RETRY_AFTER_CEILING, validator=non_negative
    )

    def classify(self, disconnect: Disconnect, fast_drops: int = 0) -> CloseVerdict:
        """What to do after ``disconnect``, given the current run of fast 1006 drops.

        The returned ``fast_drops`` is the new run length: it grows on a fast abnormal drop,
        and goes back to 0 on anything else (and when the run escalates).
        """
        kind = disconnect.kind
        if kind is DisconnectKind.BY_CALLER:
            return CloseVerdict(CloseAction.STOP, "closed by the caller")
        if kind is DisconnectKind.HANDSHAKE_REJECTED:
            status = disconnect.status or 0
            if status in self.reauth_statuses:
                return CloseVerdict(CloseAction.REAUTHENTICATE, f"upgrade refused with {status}")
            if status == 429:
                # Rate limited (the upgrade, or InitConnection's answer): the same rule as a
                # resubscribe answered 429.
                verdict = _rate_limited(f"upgrade refused with {status}")
            elif 400 <= status < 500 and status not in RETRY_HANDSHAKE_STATUSES:
                return CloseVerdict(
                    CloseAction.FAIL,
                    f"upgrade refused with {status}: check the path and the credentials",
                )
            else:
                verdict = CloseVerdict(CloseAction.RECONNECT, f"upgrade refused with {status}")
            # The server's Retry-After, if it sent one, lengthens the pause.
            return self._honour_retry_after(verdict, disconnect.retry_after)
        if kind is DisconnectKind.CLOSE_FRAME:
            code = disconnect.code
            if code in self.reauth_codes:
                return CloseVerdict(
                    CloseAction.REAUTHENTICATE,
                    f"close code {code}",
                    refused=code != INTERNAL_ERROR,
                )
            if code in self.fail_codes:
                return CloseVerdict(
                    CloseAction.FAIL,
                    f"closed by the server with code {code}, which ClosePolicy.fail_codes makes "
                    "final: reconnecting unchanged would be closed the same way",
                )
            if code in (NORMAL_CLOSURE, GOING_AWAY) and not self.reconnect_on_server_close:
                return CloseVerdict(CloseAction.STOP, f"server closed normally ({code})")
            return CloseVerdict(CloseAction.RECONNECT, f"close code {code}")
        if kind is DisconnectKind.ABNORMAL:
            lifetime = disconnect.lifetime
            if lifetime is not None and lifetime < self.fast_drop_within:
                run = fast_drops + 1
                if run >= self.fast_drop_run:
                    return CloseVerdict(
                        CloseAction.REAUTHENTICATE,
                        f"{run} fast 1006 drops in a row (a revoked token looks like this)",
                    )
                return CloseVerdict(CloseAction.RECONNECT, "abnormal drop (1006)", run)
            return CloseVerdict(CloseAction.RECONNECT, "abnormal drop (1006)")
        if kind is DisconnectKind.DEAD_PEER:
            # Why it was taken for dead: its keepalive went unanswered, or (the socket's
            # ready_timeout) it never became ready, which sent no keepalive at all.
            return CloseVerdict(CloseAction.RECONNECT, disconnect.error or "keepalive unanswered")
        if kind is DisconnectKind.SETUP_FAILED:
            # The server accepted the connection: a failed resubscribe says nothing about the
            # transport, so it is no fast drop either way.
            code = disconnect.code
            if code is not None and code in self.reauth_statuses:
                return CloseVerdict(CloseAction.REAUTHENTICATE, disconnect.describe())
            if code == 429:
                return _rate_limited(disconnect.describe(), fast_drops)
            return CloseVerdict(CloseAction.RECONNECT, disconnect.describe(), fast_drops)
        if kind is DisconnectKind.FAILED_BY_CLIENT:
            # The client ended it over a frame it could not take (or its own failure): the
            # server neither dropped it nor refused the token, so the run of fast 1006s neither
            # grows nor resets. Counting it would take an oversized message for a revoked token.
            return CloseVerdict(CloseAction.RECONNECT, disconnect.describe(), fast_drops)
        # A connect that failed keeps the fast-drop run: it says nothing about the token.
        return CloseVerdict(CloseAction.RECONNECT, disconnect.describe(), fast_drops)

    def _honour_retry_after(self, verdict: CloseVerdict, retry_after: float | None) -> CloseVerdict:
        """``verdict`` waiting at least ``retry_after`` seconds (cut to the ceiling), and no
        longer escalating: the re-login loop would dial at once, against the server's ask.

        Only when that lengthens the verdict's least pause: a ``Retry-After`` asking for
        nothing (0, a date already past, or any with a ceiling of 0) or for less than a 429's
        second leaves the verdict as it is, escalation included.
        """
        if retry_after is None or retry_after != retry_after:
            return verdict
        asked = min(max(retry_after, 0.0), self.retry_after_ceiling)
        if asked <= verdict.min_pause:
            return verdict
        cut = f" (cut to {asked:g} s)" if asked < retry_after else ""
        return attrs.evolve(
            verdict,
            reason=f"{verdict.reason}, Retry-After {retry_after:g} s{cut}",
            min_pause=asked,
            escalates=False,
        )
