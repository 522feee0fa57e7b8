"""What a resilient socket is configured with: one frozen value, validated at construction."""

from __future__ import annotations

from typing import Any

import attrs

from .._checks import instance_of
from ..errors import ConfigurationError
from ..policies._validate import positive
from ..policies.backoff import BackoffPolicy
from ..policies.close_codes import ClosePolicy
from ..policies.keepalive import Keepalive, KeepaliveTransport

__all__ = ["HEALTHY_AFTER", "SocketOptions"]

#: A connection that stayed open this long counts as healthy: the backoff starts over.
HEALTHY_AFTER = 30.0


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


def _keepalive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Keepalive) or value.transport is not KeepaliveTransport.SOCKET:
        raise ConfigurationError(
            "SocketOptions.keepalive must be None or a socket Keepalive (e.g. "
            f"MESSAGING_AGENT_SDK_GETCLOCK), got {value!r}; run HTTP keepalives with "
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
    - ``keepalive``: the socket keepalive (None: none). Also the dead-peer detector. It probes
      when nothing arrived for an interval (and, with ``outbound_idle``, when the client sent
      nothing for one); ``only_when_idle=False`` is refused.
    - ``healthy_after``: seconds a connection must stay open before the backoff, the
      fast-drop run and the auth-failure count start over.
    - ``escalate_after``: after this many consecutive failed reconnects, escalate to the
      re-login loop (0: never).
    - ``max_auth_failures``: re-authentications in a row that may fail before the socket stops
      with :class:`~le_transport.errors.SocketAuthFailed`.
    - ``max_queued``: messages held while the socket is down; past it, sends are refused with
      :class:`~le_transport.errors.SocketQueueFull` (0: refuse every send while down).
    - ``connect_timeout``: one connect (resolve, credentials, upgrade, first-frame auth).
    - ``close_timeout``: how long a close handshake may take before the connection is cut.
    - ``request_timeout``: the default timeout of :meth:`ResilientSocket.request`.
    - ``max_inbox``: unsolicited frames held for a caller that reads with ``async for`` (0:
      no bound). When a frame arrives and the inbox is full, the socket stops reading the
      connection until the consumer has taken the inbox down to half the bound: aiohttp then
      stops reading the TCP socket, so the peer is slowed down, nothing is dropped and memory
      stays bounded. While paused the keepalive neither probes nor declares the peer dead, and
      answers to :meth:`ResilientSocket.request` wait behind the unread frames (a request
      ends with :class:`~le_transport.errors.SocketRequestTimeout` if the consumer never
      catches up). Sockets with an ``on_frame`` handler never pause, and a connection does
      not pause before it is ready: while ``on_connect`` runs, the inbox may pass the bound
      (the callbacks' answers come in behind the frames). The default, 10,000,
      is far above any burst a healthy consumer sees (the conversation notifications a UMS
      subscription replays after a reconnect run to a few thousand frames) and still caps a
      stuck consumer at tens of megabytes per socket rather than the whole process.
    """

    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy.reconnect, validator=instance_of(BackoffPolicy)
    )
    close_policy: ClosePolicy = attrs.field(factory=ClosePolicy, validator=instance_of(ClosePolicy))
    keepalive: Keepalive | None = attrs.field(default=None, validator=_keepalive)
    healthy_after: float = attrs.field(default=HEALTHY_AFTER, validator=positive)
    escalate_after: int = attrs.field(default=5, validator=_count(0))
    max_auth_failures: int = attrs.field(default=3, validator=_count(1))
    max_queued: int = attrs.field(default=1000, validator=_count(0))
    connect_timeout: float = attrs.field(default=30.0, validator=positive)
    close_timeout: float = attrs.field(default=5.0, validator=positive)
    request_timeout: float = attrs.field(default=30.0, validator=positive)
    max_inbox: int = attrs.field(default=10_000, validator=_inbox_bound)
