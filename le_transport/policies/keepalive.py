"""Keepalive: when to probe an idle connection, and when its silence means the peer is dead.

LiveEngage closes a messaging socket that stays idle for about 60 s, and a half-open TCP path
looks exactly like a quiet one; LivePerson's own SDKs sent pings but never checked the answers.
A :class:`Keepalive` is the guide's per-product keepalive as a pure value: which action, at what
interval, with what timeout. :meth:`Keepalive.decide` takes the facts (now, the last sign of
life, when the outstanding probe was sent) and answers wait, probe, or dead — so that a peer
that falls silent is detected within two intervals (one idle interval, then at most one timeout
no longer than the interval).

The per-product table (LivePerson's retry and keepalive page) ships as named values:
:data:`CHAT_AGENT_API_REFRESH`, :data:`MESSAGING_AGENT_SDK_GETCLOCK`,
:data:`MESSAGING_WINDOW_API_GETCLOCK` and :data:`SERVER_CHAT_API_CHAT_INFO`.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..errors import ConfigurationError
from ._validate import check_scale, flag, instance_of, positive, shown

__all__ = [
    "CHAT_AGENT_API_REFRESH",
    "GUIDE_KEEPALIVES",
    "MESSAGING_AGENT_SDK_GETCLOCK",
    "MESSAGING_WINDOW_API_GETCLOCK",
    "SERVER_CHAT_API_CHAT_INFO",
    "Keepalive",
    "KeepaliveDecision",
    "KeepaliveStep",
    "KeepaliveTransport",
]


#: The Login Service's refresh path, as a template or with the account filled in.
_LOGIN_REFRESH_PATH = re.compile(r"/api/account/[^/?#]+/refresh")


class KeepaliveTransport(enum.Enum):
    """Where the keepalive action goes."""

    #: A ``kind: req`` frame on the socket itself (``GetClock``).
    SOCKET = "socket"
    #: A REST call through the engine (Login Service refresh, Server Chat API chat info).
    HTTP = "http"


class KeepaliveStep(enum.Enum):
    """What the keepalive runner should do now."""

    #: Nothing yet: check again at ``KeepaliveDecision.at``.
    WAIT = "wait"
    #: Send the keepalive action now.
    PROBE = "probe"
    #: The probe went unanswered past its timeout: the peer is dead.
    DEAD = "dead"


@attrs.frozen
class KeepaliveDecision:
    """The answer of :meth:`Keepalive.decide`: a step, the time it refers to, and why."""

    step: KeepaliveStep
    at: float
    reason: str


#: The most query parameters a keepalive may send.
MAX_PARAMS = 1000


def _params(value: object) -> tuple[tuple[str, str], ...]:
    pairs: list[object]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"Keepalive.params must be a mapping or (name, value) pairs, got {type(value).__name__}"
        )
    else:
        # Read no further than a query can be long: an endless iterable (itertools.repeat)
        # filled memory.
        pairs = list(itertools.islice(value, MAX_PARAMS + 1))
        if len(pairs) > MAX_PARAMS:
            raise ConfigurationError(
                f"Keepalive.params must hold at most {MAX_PARAMS:,} pairs, got more"
            )
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigurationError(
                f"Keepalive.params must hold (name, value) pairs, got {type(pair).__name__}"
            )
        name, val = pair
        # A None or bytes value would go out as the text "None" or "b'...'": refused instead.
        if not isinstance(name, str) or isinstance(val, bool) or not isinstance(val, str | int):
            raise ConfigurationError(
                "Keepalive.params must map str names to str or int values, got "
                f"{type(name).__name__}: {type(val).__name__}"
            )
        try:
            text = str(val)
        except ValueError:  # only an int fails: one past Python's str conversion limit
            raise ConfigurationError(
                f"Keepalive.params value for {name!r} is too long to write, got {shown(val)}"
            ) from None
        out.append((name, text))
    return tuple(out)


def _non_empty_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"Keepalive.{attribute.name} must be a non-empty str, got {type(value).__name__}"
        )


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(
            f"Keepalive.{attribute.name} must be None or a str, got {type(value).__name__}"
        )


@attrs.frozen
class Keepalive:
    """Run ``action`` every ``interval`` seconds of idleness; ``timeout`` bounds its answer.

    - ``product``: which LiveEngage product the value is for (documentation and logs).
    - ``action``: the socket request type (``.GetClock``) or, for HTTP, a short name.
    - ``interval``: seconds. With ``only_when_idle`` (sockets), the action is due only when
      nothing arrived for a whole interval: traffic is proof of life enough. Without it (the
      HTTP keepalives), every interval. A socket keepalive must keep it (its default):
      :class:`~le_transport.sockets.SocketOptions` refuses ``only_when_idle=False``, since a
      socket's keepalive is also its dead-peer detector, driven by what arrives; use
      ``outbound_idle`` for a server that wants to hear from the client.
    - ``timeout``: seconds to wait for the answer; no longer than ``interval``, so that a silent
      peer is declared dead within two intervals of its last frame.
    - ``transport``: :class:`KeepaliveTransport`; for HTTP, ``method``, ``path`` (a template
      with ``{account}``-style fields filled in by the caller) and ``params`` (query: str
      names to str or int values, at most :data:`MAX_PARAMS` pairs; an int too long for
      ``str``, past 4,300 digits, is refused).
    - ``outbound_idle``: also probe when the client sent nothing for an interval, even while
      frames arrive (off by default: the guide's rule is "only when nothing arrived"). For a
      server that closes a socket whose client stays quiet, as the simulator does after 60 s.
    """

    product: str = attrs.field(validator=_non_empty_str)
    action: str = attrs.field(validator=_non_empty_str)
    interval: float = attrs.field(validator=positive)
    timeout: float = attrs.field(validator=positive)
    transport: KeepaliveTransport = attrs.field(
        default=KeepaliveTransport.SOCKET,
        validator=instance_of(KeepaliveTransport, "a KeepaliveTransport"),
    )
    only_when_idle: bool = attrs.field(default=True, validator=flag)
    method: str | None = attrs.field(default=None, validator=_optional_str)
    path: str | None = attrs.field(default=None, validator=_optional_str)
    params: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_params)
    outbound_idle: bool = attrs.field(default=False, validator=flag)

    def __attrs_post_init__(self) -> None:
        if self.timeout > self.interval:
            raise ConfigurationError(
                f"Keepalive.timeout ({self.timeout!r}) must be <= interval ({self.interval!r}): "
                "a silent peer must be detected within two intervals"
            )
        if self.transport is KeepaliveTransport.HTTP and not (self.method and self.path):
            raise ConfigurationError(
                f"Keepalive {self.product!r}: an HTTP keepalive needs a method and a path"
            )

    @property
    def login_refresh(self) -> bool:
        """Whether this is the Login Service's session refresh (``POST
        /api/account/{account}/refresh``, as :data:`CHAT_AGENT_API_REFRESH`): no plain request
        can make it (it needs the session's ``Session_id`` cookie and ``csrf``, which only the
        provider holds), so :meth:`~le_transport.Engine.keepalive` runs the engine's
        :class:`~le_transport.providers.LoginServiceAuth` ``refresh()`` for it instead, when
        it is the Chat Agent API's or is sent to the Login Service (``agentVep``, or the
        provider's own service): a keepalive of the caller's own product with the same path on
        a service of its own is a plain request."""
        return (
            self.transport is KeepaliveTransport.HTTP
            and (self.method or "").upper() == "POST"
            and self.path is not None
            and _LOGIN_REFRESH_PATH.fullmatch(self.path) is not None
        )

    def with_action(self, action: str) -> Keepalive:
        """The same keepalive with another request type (``GetClock`` vs ``.GetClock``)."""
        return attrs.evolve(self, action=action)

    def scaled(self, factor: float) -> Keepalive:
        """The same keepalive with interval and timeout multiplied by ``factor``."""
        factor = check_scale(factor)
        return attrs.evolve(self, interval=self.interval * factor, timeout=self.timeout * factor)

    def decide(
        self,
        now: float,
        *,
        last_activity: float,
        probe_sent_at: float | None = None,
        last_sent: float | None = None,
    ) -> KeepaliveDecision:
        """Wait, probe, or declare the peer dead.

        ``last_activity`` is the time of the last sign of life (a frame received; for a
        keepalive that is not idle-driven, the last time the action ran). ``probe_sent_at``
        is when the outstanding probe was sent, if one is; any activity since then answers it.
        ``last_sent`` (used with ``outbound_idle``) is when the client last sent a frame.
        """
        if probe_sent_at is not None and last_activity < probe_sent_at:
            deadline = probe_sent_at + self.timeout
            if now >= deadline:
                return KeepaliveDecision(
                    KeepaliveStep.DEAD,
                    deadline,
                    f"{self.action} unanswered for {self.timeout:g} s",
                )
            return KeepaliveDecision(KeepaliveStep.WAIT, deadline, "waiting for the answer")
        since = last_activity
        if self.outbound_idle and last_sent is not None:
            since = min(last_activity, last_sent)
        due = since + self.interval
        if now >= due:
            idle = "idle" if self.only_when_idle else "due"
            return KeepaliveDecision(KeepaliveStep.PROBE, now, f"{idle} for {now - since:g} s")
        return KeepaliveDecision(KeepaliveStep.WAIT, due, "not idle long enough")


#: Chat Agent API: the Login Service ``refresh`` every 5 minutes (guide; docs say 3-5 min).
#: It needs the session's ``Session_id`` cookie and ``csrf`` (a plain POST is answered 401):
#: :meth:`~le_transport.Engine.keepalive` runs it as the engine's Login Service provider's
#: ``refresh()`` (see :attr:`Keepalive.login_refresh`). That provider refreshes its session
#: on its own by default (``keepalive=True``), which is the usual way.
CHAT_AGENT_API_REFRESH = Keepalive(
    product="Chat Agent API",
    action="refresh",
    interval=300.0,
    timeout=30.0,
    transport=KeepaliveTransport.HTTP,
    only_when_idle=False,
    method="POST",
    path="/api/account/{account}/refresh",
    params={"v": "1.3"},
)
#: Messaging Agent SDK (UMS brand socket): ``.GetClock`` every 30 s.
MESSAGING_AGENT_SDK_GETCLOCK = Keepalive(
    product="Messaging Agent SDK", action=".GetClock", interval=30.0, timeout=10.0
)
#: Messaging Window API (consumer socket): ``GetClock`` every 30 s (documented with and
#: without the leading dot; use :meth:`Keepalive.with_action` for the other form).
MESSAGING_WINDOW_API_GETCLOCK = Keepalive(
    product="Messaging Window API", action="GetClock", interval=30.0, timeout=10.0
)
#: Server Chat API: "Retrieve Chat Information" every 30 s keeps the chat alive (a REST call).
SERVER_CHAT_API_CHAT_INFO = Keepalive(
    product="Server Chat API",
    action="retrieve chat information",
    interval=30.0,
    timeout=10.0,
    transport=KeepaliveTransport.HTTP,
    only_when_idle=False,
    method="GET",
    path="/api/account/{account}/chat/{chat_id}/info",
    params={"v": "1", "NC": "true"},
)

#: The guide's keepalive table, by product.
GUIDE_KEEPALIVES: Mapping[str, Keepalive] = {
    k.product: k
    for k in (
        CHAT_AGENT_API_REFRESH,
        MESSAGING_AGENT_SDK_GETCLOCK,
        MESSAGING_WINDOW_API_GETCLOCK,
        SERVER_CHAT_API_CHAT_INFO,
    )
}
