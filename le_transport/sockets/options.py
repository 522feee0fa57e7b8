"""What a resilient socket is configured with: one frozen value, validated at construction."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from .._checks import instance_of
from ..errors import ConfigurationError
from ..policies._validate import optional_positive, positive
from ..policies.backoff import BackoffPolicy
from ..policies.close_codes import ClosePolicy
from ..policies.keepalive import (
    MESSAGING_AGENT_SDK_GETCLOCK,
    MESSAGING_WINDOW_API_GETCLOCK,
    Keepalive,
    KeepaliveTransport,
)

__all__ = [
    "CONSUMER_SOCKET_QUERY",
    "HEALTHY_AFTER",
    "KEEPALIVE_BY_PATH",
    "MAX_INBOX_BYTES",
    "MAX_MSG_SIZE",
    "MAX_QUEUED_BYTES",
    "MESSAGING_AGENT_KEEPALIVE",
    "MESSAGING_CONSUMER_KEEPALIVE",
    "PREPARE_TIMEOUT",
    "READY_TIMEOUT",
    "UMS_BRAND_SOCKET_QUERY",
    "KeepaliveByPath",
    "SocketOptions",
    "keepalive_for_path",
    "query_for_path",
]

#: A connection that became ready and stayed open this long counts as healthy: the backoff
#: starts over.
HEALTHY_AFTER = 30.0

#: :attr:`SocketOptions.max_inbox_bytes`'s default: 16 MiB of unread frames (as characters of
#: their wire text) per socket.
MAX_INBOX_BYTES = 16 * 1024 * 1024

#: :attr:`SocketOptions.max_queued_bytes`'s default: 16 MiB of queued messages (as characters
#: of their wire text) per socket.
MAX_QUEUED_BYTES = 16 * 1024 * 1024

#: :attr:`SocketOptions.max_msg_size`'s default: the largest frame a socket takes, 16 MiB.
MAX_MSG_SIZE = 16 * 1024 * 1024

#: :attr:`SocketOptions.ready_timeout`'s default: seconds a new connection may go without
#: progress (no frame read, none written whole) while it runs its ``on_connect`` callbacks and
#: flushes the queue, before it is ended as a dead peer.
READY_TIMEOUT = 60.0

#: :attr:`SocketOptions.prepare_timeout`'s default: 10 min for resolving the host and getting
#: the credentials of one connect, which run on their own schedules.
PREPARE_TIMEOUT = 600.0


class KeepaliveByPath(enum.Enum):
    """The type of :data:`KEEPALIVE_BY_PATH`, :attr:`SocketOptions.keepalive`'s default."""

    #: The keepalive is chosen by the socket's path: see :func:`keepalive_for_path`.
    BY_PATH = "by_path"


#: :attr:`SocketOptions.keepalive`'s default: the guide's ``GetClock`` keepalive for a socket
#: the library recognises as a LiveEngage messaging socket by its path
#: (:func:`keepalive_for_path`), none for any other. Pass None for no keepalive at all.
KEEPALIVE_BY_PATH: Final = KeepaliveByPath.BY_PATH

#: The UMS agent socket's default keepalive: the Messaging Agent SDK's ``.GetClock`` every 30 s
#: of silence (:data:`~le_transport.policies.MESSAGING_AGENT_SDK_GETCLOCK`), with
#: ``outbound_idle``: LiveEngage closes a messaging socket whose client stays quiet for about
#: 60 s, even while notifications arrive, so a socket that only listens probes too.
MESSAGING_AGENT_KEEPALIVE: Final = attrs.evolve(MESSAGING_AGENT_SDK_GETCLOCK, outbound_idle=True)
#: The consumer socket's default keepalive: the Messaging Window API's ``GetClock``
#: (:data:`~le_transport.policies.MESSAGING_WINDOW_API_GETCLOCK`), with ``outbound_idle`` for
#: the same reason.
MESSAGING_CONSUMER_KEEPALIVE: Final = attrs.evolve(
    MESSAGING_WINDOW_API_GETCLOCK, outbound_idle=True
)

# The messaging sockets' paths (protocol.md; dial.ums_brand_path and dial.consumer_path make
# them): the account is one segment, the brand socket's bearer (or its "{bearer}" place) one.
_UMS_BRAND_PATH = re.compile(r"/ws_api/account/[^/]+/messaging/brand/[^/]+/?")
_CONSUMER_PATH = re.compile(r"/ws_api/account/[^/]+/messaging/consumer/?")


def keepalive_for_path(path: str) -> Keepalive | None:
    """The keepalive a socket to ``path`` runs by default (:data:`KEEPALIVE_BY_PATH`).

    The UMS agent socket (``/ws_api/account/{id}/messaging/brand/{bearer}``):
    :data:`MESSAGING_AGENT_KEEPALIVE`; the Messaging Window API consumer socket
    (``/ws_api/account/{id}/messaging/consumer``): :data:`MESSAGING_CONSUMER_KEEPALIVE`; a path
    the library does not recognise: None (no keepalive: what such a server answers to, and
    when it closes quiet clients, is not known; set :attr:`SocketOptions.keepalive`).
    """
    if not isinstance(path, str):
        return None
    if _UMS_BRAND_PATH.fullmatch(path):
        return MESSAGING_AGENT_KEEPALIVE
    if _CONSUMER_PATH.fullmatch(path):
        return MESSAGING_CONSUMER_KEEPALIVE
    return None


#: The UMS agent socket's query (the docs show v=2; LivePerson's SDKs use 2.1).
UMS_BRAND_SOCKET_QUERY: Mapping[str, str] = {"v": "2.1"}
#: The consumer socket's query.
CONSUMER_SOCKET_QUERY: Mapping[str, str] = {"v": "3"}


def query_for_path(path: str) -> dict[str, str]:
    """The query a socket to ``path`` is dialed with by default: the protocol's version.

    The UMS agent socket: :data:`UMS_BRAND_SOCKET_QUERY` (``v=2.1``); the consumer socket:
    :data:`CONSUMER_SOCKET_QUERY` (``v=3``); a path the library does not recognise (as
    :func:`keepalive_for_path` recognises them): none. A new dict on each call. The caller's
    ``params`` are laid over it (:class:`~le_transport.sockets.EngineDialer`): theirs win,
    name by name, so ``params={"v": "2"}`` dials the docs' ``v=2``, and params without ``v``
    keep the default ``v``.
    """
    if not isinstance(path, str):
        return {}
    if _UMS_BRAND_PATH.fullmatch(path):
        return dict(UMS_BRAND_SOCKET_QUERY)
    if _CONSUMER_PATH.fullmatch(path):
        return dict(CONSUMER_SOCKET_QUERY)
    return {}


def _count(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(
                f"SocketOptions.{attribute.name} must be an int >= {minimum}, got {value!r}"
            )

    return check


def _inbox_bound(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"SocketOptions.max_inbox must be an int >= 1 (frames), or 0 for an unbounded "
            f"inbox, got {value!r}"
        )


def _inbox_bytes_bound(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            "SocketOptions.max_inbox_bytes must be an int >= 1 (characters of the frames held), "
            f"or 0 for no bound on their size, got {value!r}"
        )


def _queued_bytes_bound(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            "SocketOptions.max_queued_bytes must be an int >= 1 (characters of the messages "
            f"queued), or 0 for no bound on their size, got {value!r}"
        )


def _keepalive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or value is KEEPALIVE_BY_PATH:
        return
    if not isinstance(value, Keepalive) or value.transport is not KeepaliveTransport.SOCKET:
        raise ConfigurationError(
            "SocketOptions.keepalive must be a socket Keepalive (e.g. "
            "MESSAGING_AGENT_SDK_GETCLOCK), KEEPALIVE_BY_PATH (the default: chosen by the "
            f"socket's path) or None (no keepalive), got {value!r}; run HTTP keepalives with "
            "engine.keepalive()"
        )
    if not value.only_when_idle:
        # A socket's keepalive runs on what arrives (it is its dead-peer detector too): a probe
        # every interval whatever the traffic is not something it does, so it is refused here
        # rather than silently run as an idle probe.
        raise ConfigurationError(
            f"SocketOptions.keepalive {value.product!r} has only_when_idle=False, which "
            "sockets do not run: a socket probes when nothing arrived for an interval. To "
            "also probe after an interval without a client frame (for a server that closes "
            "quiet clients), use outbound_idle=True"
        )


@attrs.frozen
class SocketOptions:
    """How a resilient socket behaves; the defaults are LiveEngage's.

    - ``backoff``: pauses between reconnects (about 1 s, doubling, capped at 2 min, ±20%).
      When its ``max_attempts`` or ``deadline`` runs out, or a pause the server asked for (a
      ``Retry-After``) would end past that ``deadline``, the socket stops with
      :class:`~le_transport.errors.SocketClosed`. Its ``jitter`` also spreads such a pause:
      the socket waits what the server asked plus a share of it up to ``jitter``.
    - ``close_policy``: what each close code and upgrade status means.
    - ``keepalive``: the socket keepalive, also the dead-peer detector. It probes when nothing
      arrived for an interval (and, with ``outbound_idle``, when the client sent nothing for
      one); ``only_when_idle=False`` is refused. The default, :data:`KEEPALIVE_BY_PATH`,
      chooses by the socket's path (:func:`keepalive_for_path`): a LiveEngage messaging
      socket (the UMS agent socket, the consumer socket) sends the guide's ``GetClock`` after
      30 s without a frame either way (LiveEngage closes a socket idle for about 60 s), a
      socket to any other path runs none. None: no keepalive on any path.
    - ``healthy_after``: seconds a connection must stay open before the backoff, the
      fast-drop run and the auth-failure count start over; only a connection that became
      ready counts (one whose ``on_connect`` failed is a failed connect, however long it took
      to fail), and one whose peer the keepalive found dead counts as open only until the
      last frame it heard (a peer silent from the start is a failed connect).
    - ``escalate_after``: after this many consecutive failed reconnects, escalate to the
      re-login loop (0: never).
    - ``max_auth_failures``: re-authentications in a row that may fail before the socket stops
      with :class:`~le_transport.errors.SocketAuthFailed` (after refused credentials: 4401,
      4407, a 401 upgrade, a run of fast 1006s; a 1011, the server's own error, re-authenticates
      once in a run of failures and is never counted).
    - ``max_queued``: messages held while the socket is down; past it, sends are refused with
      :class:`~le_transport.errors.SocketQueueFull` (0: refuse every send while down).
    - ``max_queued_bytes``: the size of those messages held (0: no bound), counted as
      ``max_inbox_bytes`` counts: the characters of their wire text. A send that would take
      the queue past it is refused with :class:`~le_transport.errors.SocketQueueFull`, as is
      a message larger than it on its own, even into an empty queue (only while the socket is
      down: an open socket sends it straight out). Writes a failed connection gives back to
      the queue are never refused, but count. The message count alone let a socket that was
      down hold 1,000 frames of up to any size each; the default, 16 MiB
      (:data:`MAX_QUEUED_BYTES`), caps what a socket holds while it is down.
    - ``connect_timeout``: one connect's upgrade and first-frame auth (``InitConnection``
      and its answer).
    - ``prepare_timeout``: resolving the host and getting the credentials before a connect's
      upgrade (None: no bound). They run on their own schedules, which ``connect_timeout``
      does not cut: the library's providers retry on the engine's 5/10/15 s schedule, each
      attempt under its own timeout, and a login through an outage may take minutes. This
      bounds only what no schedule does (an auth or domain provider of the caller's own that
      hangs, a vault that never answers): past it the connect fails (``connect_failed``)
      and the socket backs off, reconnects and escalates as after any failed connect,
      instead of staying CONNECTING for ever. The default, 10 min
      (:data:`PREPARE_TIMEOUT`), covers the engine's default schedule run to its end (four
      attempts of 30 s, its pauses stretched to the 60 s ``Retry-After`` ceiling) for the
      host and then for the credentials. On a :class:`~le_transport.testing.VirtualClock`
      it is a pending sleep like any other: a provider of a test that waits on something
      the loop does not see (another process, a thread of its own) leaves the loop idle,
      and autojump jumps to this deadline (the connect fails as timed out). Give such a
      clock ``autojump_threshold`` (real seconds of quiet before a jump), or None here.
    - ``close_timeout``: how long a close handshake may take before the connection is cut.
    - ``request_timeout``: the default timeout of :meth:`ResilientSocket.request`.
    - ``max_inbox``: unsolicited frames held for a caller that reads with ``async for`` (0:
      no bound). When a frame arrives and the inbox is full, the socket stops reading the
      connection until the consumer has taken the inbox down to half the bound: aiohttp then
      stops reading the TCP socket, so the peer is slowed down, nothing is dropped and memory
      stays bounded. While paused the keepalive never declares the peer dead (the peer's answers
      wait unread), but still probes for the client's own silence (``outbound_idle``: the server
      closes a connection whose client stays quiet, paused or not); when reading resumes, a
      probe still unanswered gets its whole timeout, and with none the idle clock starts over.
      Answers to :meth:`ResilientSocket.request` wait behind the unread frames (a request
      ends with :class:`~le_transport.errors.SocketRequestTimeout` if the consumer never
      catches up). Sockets with an ``on_frame`` handler never pause, and a connection does
      not pause before it is ready: while ``on_connect`` runs, the inbox may pass the bound
      (the callbacks' answers come in behind the frames). The default, 10,000,
      is far above any burst a healthy consumer sees (the conversation notifications a UMS
      subscription replays after a reconnect run to a few thousand frames).
    - ``max_inbox_bytes``: the size of those frames held (0: no bound), counted as they came
      on the wire: the characters of a text frame, the bytes of a binary one. The socket pauses
      as for ``max_inbox`` when a frame arrives and the inbox holds this much already, and
      resumes once the consumer has taken it down to half of both bounds; so the inbox holds at
      most this much plus one frame (at most ``max_msg_size``). The frame count
      alone let a consumer that fell behind hold 10,000 frames of up to 16 MiB each; the
      default, 16 MiB (:data:`MAX_INBOX_BYTES`), caps what a stuck consumer holds per socket
      (parsed JSON takes a few times its text) rather than letting it take the whole process.
    - ``max_msg_size``: the largest frame the socket takes, in bytes as it came on the wire
      (an int >= 1; default 16 MiB, :data:`MAX_MSG_SIZE`). A larger one ends the connection
      with 1009 (aiohttp refuses it unread) and the socket reconnects; it never counts as a
      fast 1006. It also bounds, in all, the frames held while ``InitConnection`` waits for
      its answer.
    - ``ready_timeout``: how long a new connection may go without progress (no frame read,
      none written whole, no request waiting for its answer) while it becomes ready: its
      ``on_connect`` callbacks and the flush of the queue. Each frame starts it over, and a
      request's own timeout bounds its wait, so a slow peer that answers is never cut, however
      long the callbacks take. A peer that accepts the upgrade and then stops reading would
      otherwise hold the socket open but never ready for ever (the keepalive watches only a
      ready connection, and a write waits for the peer to take it). Past it the connection is
      ended as a dead peer and the socket reconnects (a failed connect for the backoff), even
      if a callback swallows its cancellation (it is left to run, and logged). Above
      ``request_timeout`` by default, so that a callback's request gets its own timeout first.
    """

    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy.reconnect, validator=instance_of(BackoffPolicy)
    )
    close_policy: ClosePolicy = attrs.field(factory=ClosePolicy, validator=instance_of(ClosePolicy))
    keepalive: Keepalive | Literal[KeepaliveByPath.BY_PATH] | None = attrs.field(
        default=KEEPALIVE_BY_PATH, validator=_keepalive
    )
    healthy_after: float = attrs.field(default=HEALTHY_AFTER, validator=positive)
    escalate_after: int = attrs.field(default=5, validator=_count(0))
    max_auth_failures: int = attrs.field(default=3, validator=_count(1))
    max_queued: int = attrs.field(default=1000, validator=_count(0))
    connect_timeout: float = attrs.field(default=30.0, validator=positive)
    close_timeout: float = attrs.field(default=5.0, validator=positive)
    request_timeout: float = attrs.field(default=30.0, validator=positive)
    max_inbox: int = attrs.field(default=10_000, validator=_inbox_bound)
    max_inbox_bytes: int = attrs.field(default=MAX_INBOX_BYTES, validator=_inbox_bytes_bound)
    ready_timeout: float = attrs.field(default=READY_TIMEOUT, validator=positive)
    max_msg_size: int = attrs.field(default=MAX_MSG_SIZE, validator=_count(1))
    prepare_timeout: float | None = attrs.field(
        default=PREPARE_TIMEOUT, validator=optional_positive
    )
    max_queued_bytes: int = attrs.field(default=MAX_QUEUED_BYTES, validator=_queued_bytes_bound)
