"""The simulator's messaging sockets: the UMS agent socket and the consumer socket.

Each accepted socket is a :class:`SimSocket`; :class:`SocketHub` (``sim.sockets``) holds them
all and is what a test talks to:

- ``await sim.sockets.wait_open(n)``: until ``n`` sockets are open.
- ``sim.sockets.open``: the open ones; ``sim.sockets.all``: the sockets accepted, in order.
- ``await sim.sockets.notify(type, body)``: push a ``notification`` frame to every open socket
  that would get it on LiveEngage: a type a subscription brings (:data:`SUBSCRIBED_NOTIFICATIONS`:
  ``.ams.routing.RoutingTaskNotification``, the ``ExConversationChangeNotification`` of each
  socket kind) only to the sockets holding that subscription (never to a socket of the other
  kind, which cannot subscribe to it), any other type to every open socket; ``to_all=True`` to
  every open socket, subscribed or not. Subscriptions live only as long as their socket
  (protocol.md): a client that does not subscribe again after a reconnect gets none of them, as
  on LiveEngage. A subscription holds once a 2xx answer to it is sent, whoever sends it (the
  simulator, an ``on()`` handler's return or its own ``socket.send``), and ends with a 2xx
  answer to its unsubscribe request (:attr:`SimSocket.subscribed`).
- ``sim.sockets.published``: the messages the server received (``PublishEvent``), with the
  client's request id, so a test can prove nothing was lost.
- ``sim.sockets.on(type, handler)``: answer a request type your own way.
- On one socket: ``await s.close(4401)`` (its close frame behind the frames a ``ws_delay``
  still holds), ``s.drop()`` (abrupt, no close frame: the client sees 1006; held frames are
  lost), ``s.silence()`` (no more answers and no pongs), ``s.subscriptions``, ``s.subscribed``,
  ``s.received``, ``await s.notify(type, body)`` (to that socket, subscribed or not).

Frames follow LiveEngage: a ``{"kind": "req", "id", "type", "body"}`` is answered with
``{"kind": "resp", "reqId", "code", "body", "type": "<type>$Response"}``. Each kind of socket
answers its own product's request types (:data:`TYPES_BY_KIND`): the UMS agent (brand) socket
the Messaging Agent SDK's (``.ams.*``) and ``.GetClock``; the consumer socket the Messaging
Window API's (``cm.*``, ``cqm.*``, ``ms.PublishEvent``, ``InitConnection``) and ``GetClock``
with or without the leading dot. Both GetClocks answer ``{"currentTime": <epoch ms>}`` from the
simulator's clock; a type the socket does not know (the other product's included) is answered
``code`` 400, ``{"msg": "unknown request type ..."}``, and a request without a usable ``id``
(missing, null, empty, not a str or an int) ``code`` 400 as malformed, with ``reqId`` null (or
the scalar that came), before any fault or ``on()`` handler sees it. A frame is read as JSON
strictly (:func:`~le_transport._json.loads_strict`): one holding ``NaN``, ``Infinity`` or a
number too large for a float is not JSON (LiveEngage's Java side refuses it), kept in
``received`` as ``{"raw": ...}`` as any other invalid JSON is, and, if it is a request, answered
``code`` 400 as malformed with ``reqId`` null (nothing of it was read); every frame the
simulator sends is strict JSON too (a ``NaN`` in a notification's body is a ``ValueError`` to
whoever sends it; an ``on()`` handler's answer holding one is logged at ERROR, by its request
type, and answered ``code`` 500 instead, the socket kept open).

Faults from the plan apply per session (unit ``ws_session``, decided at the handshake) and per
message (unit ``ws_message``, matched on the frame's ``type``): a ``ws_app_error`` answers the
request with a ``resp`` frame carrying its ``code`` (429, 500) instead of the real answer.
Every frame the server sends (answers, notifications; a ``resp`` is typed ``<type>$Response``) is a
``ws_message`` for the outbound kinds: ``ws_drop_message`` never sends it (``s.dropped`` keeps
it), ``ws_delay`` holds it on the clock, later frames queueing behind it in order (each due at
its own delay after it was sent, and never before the one ahead of it: latency), and so does
a close the server sends (:meth:`SimSocket.close`); a fault that ends or silences the socket
loses the frames still held, as the client-side injector's does.

Every record here (``all``, ``published``, ``rejected``; on a socket ``received``,
``subscriptions``, ``dropped``) is a :class:`~le_transport.chaos.plan.RecordLog` that keeps the
newest ``config.max_records`` entries (default 100,000) and reads as a list; its ``dropped``
counts the older entries dropped and its ``total`` every entry. A socket's three records are
bounded across all the sockets together too (a :class:`~le_transport.chaos.plan.SharedBound`
per kind): the newest ``config.max_records`` frames received by all sockets, not that many per
socket, so a fleet's records do not grow with its size (``sim.sockets.received_bound.dropped``
and the others count what went). Open sockets are always in ``open``, however many sockets were
accepted since. A socket that has ended stays in ``all`` as a record only: its connection
(``s.ws``) is released, so the sockets kept there cost their records, not their connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard

import attrs
from aiohttp import WSMsgType, web

from ..._checks import require_kind
from ..._json import loads_strict
from ..._shown import redacted_exc_info
from ...chaos.plan import (
    DEFAULT_MAX_RECORDS,
    WS_MESSAGE_FAULTS,
    WS_OUTBOUND_FAULTS,
    Delay,
    Hang,
    RecordLog,
    SharedBound,
    Status,
    WsAppError,
    WsClose,
    WsDelay,
    WsDrop,
    WsDropMessage,
    WsSilence,
    _printable,
)

if TYPE_CHECKING:
    from .auth import LoginSession, Token
    from .server import Simulator

__all__ = ["PublishedMessage", "SimSocket", "SocketHub"]

_log = logging.getLogger("le_transport.simulator")

#: A custom request handler: ``(socket, frame) -> (code, body)``, or None when the handler
#: answers by itself (later, out of order, or never) with ``socket.send``.
RequestHandler = Callable[["SimSocket", dict[str, Any]], Awaitable[tuple[int, Any] | None]]

# The request types each kind of socket answers (protocol.md): the UMS agent (brand) socket
# speaks the Messaging Agent SDK's types and its keepalive is ``.GetClock``; the consumer socket
# speaks the Messaging Window API's, whose ``GetClock`` is documented with and without the
# leading dot. A type of the other product is answered as an unknown type is (400).
BRAND_GET_CLOCK_TYPES = frozenset({".GetClock"})
CONSUMER_GET_CLOCK_TYPES = frozenset({".GetClock", "GetClock"})
BRAND_SUBSCRIBE_TYPES = frozenset(
    {
        ".ams.aam.SubscribeExConversations",
        ".ams.routing.SubscribeRoutingTasks",
        ".ams.ms.SubscribeMessagingEvents",
        ".ams.aam.SubscribeAgentsState",
    }
)
CONSUMER_SUBSCRIBE_TYPES = frozenset({"cqm.SubscribeExConversations"})
# The notifications a subscription brings, by the subscription: LiveEngage sends them only to a
# socket that subscribed (protocol.md: subscriptions live only as long as the socket and are
# re-issued after every reconnect), so SocketHub.notify sends them only there. The messaging
# events (.ams.ms.MessagingEventNotification) are not gated: the echo of a published message
# comes without a subscription, and a test's unknown types reach every socket as they did.
BRAND_SUBSCRIBED_NOTIFICATIONS: Mapping[str, str] = MappingProxyType(
    {
        ".ams.routing.RoutingTaskNotification": ".ams.routing.SubscribeRoutingTasks",
        ".ams.cm.ExConversationChangeNotification": ".ams.aam.SubscribeExConversations",
    }
)
CONSUMER_SUBSCRIBED_NOTIFICATIONS: Mapping[str, str] = MappingProxyType(
    {"cqm.ExConversationChangeNotification": "cqm.SubscribeExConversations"}
)
# The requests that end a subscription, by the subscription they end. The consumer socket has
# none: protocol.md documents no unsubscribe for the Messaging Window API, and the simulator
# answers none there (a type it does not know, 400).
BRAND_UNSUBSCRIBE_TYPES: Mapping[str, str] = MappingProxyType(
    {".ams.aam.UnsubscribeExConversations": ".ams.aam.SubscribeExConversations"}
)
CONSUMER_UNSUBSCRIBE_TYPES: Mapping[str, str] = MappingProxyType({})
BRAND_PUBLISH_TYPES = frozenset({".ams.ms.PublishEvent"})
CONSUMER_PUBLISH_TYPES = frozenset({"ms.PublishEvent"})
# Requests the simulator accepts with a plain 200 (state changes it does not model).
BRAND_ACCEPTED_TYPES = frozenset(
    {
        ".ams.aam.UnsubscribeExConversations",
        ".ams.routing.UpdateRoutingTaskRingState",
        ".ams.cm.UpdateConversationField",
        ".ams.cm.AgentRequestConversation",
        ".ams.routing.SetAgentState",
        ".ams.AgentRequestConversation",
    }
)
CONSUMER_ACCEPTED_TYPES = frozenset(
    {
        "cm.ConsumerRequestConversation",
        "cm.UpdateConversationField",
    }
)


@attrs.frozen
class SocketTypes:
    """The request types one kind of socket answers, by what it does with them."""

    get_clock: frozenset[str]
    subscribe: frozenset[str]
    publish: frozenset[str]
    accepted: frozenset[str]
    #: Whether ``InitConnection`` (the consumer socket's first-frame authentication) is known.
    init_connection: bool
    #: The ``type`` of the notification that echoes a published message back
    #: (``config.echo_published``): the UMS agent socket's ``.ams.ms.MessagingEventNotification``,
    #: the Messaging Window API's ``ms.MessagingEventNotification``.
    messaging_event: str
    #: ``{notification type: the subscription request type that brings it}``: the notifications
    #: :meth:`SocketHub.notify` sends only to a socket holding that subscription.
    subscribed_notifications: Mapping[str, str]
    #: ``{unsubscribe request type: the subscription request type it ends}``.
    unsubscribe: Mapping[str, str] = MappingProxyType({})


#: The request types each socket kind (``SimSocket.kind``) answers.
TYPES_BY_KIND: dict[str, SocketTypes] = {
    "brand": SocketTypes(
        get_clock=BRAND_GET_CLOCK_TYPES,
        subscribe=BRAND_SUBSCRIBE_TYPES,
        publish=BRAND_PUBLISH_TYPES,
        accepted=BRAND_ACCEPTED_TYPES,
        init_connection=False,
        messaging_event=".ams.ms.MessagingEventNotification",
        subscribed_notifications=BRAND_SUBSCRIBED_NOTIFICATIONS,
        unsubscribe=BRAND_UNSUBSCRIBE_TYPES,
    ),
    "consumer": SocketTypes(
        get_clock=CONSUMER_GET_CLOCK_TYPES,
        subscribe=CONSUMER_SUBSCRIBE_TYPES,
        publish=CONSUMER_PUBLISH_TYPES,
        accepted=CONSUMER_ACCEPTED_TYPES,
        init_connection=True,
        messaging_event="ms.MessagingEventNotification",
        subscribed_notifications=CONSUMER_SUBSCRIBED_NOTIFICATIONS,
        unsubscribe=CONSUMER_UNSUBSCRIBE_TYPES,
    ),
}

# Every type either kind answers (what the module offered before the sets were split by kind).
GET_CLOCK_TYPES = BRAND_GET_CLOCK_TYPES | CONSUMER_GET_CLOCK_TYPES
SUBSCRIBE_TYPES = BRAND_SUBSCRIBE_TYPES | CONSUMER_SUBSCRIBE_TYPES
PUBLISH_TYPES = BRAND_PUBLISH_TYPES | CONSUMER_PUBLISH_TYPES
ACCEPTED_TYPES = BRAND_ACCEPTED_TYPES | CONSUMER_ACCEPTED_TYPES
#: Every notification type a subscription brings (either kind's), with that subscription's type.
SUBSCRIBED_NOTIFICATIONS: Mapping[str, str] = MappingProxyType(
    {**BRAND_SUBSCRIBED_NOTIFICATIONS, **CONSUMER_SUBSCRIBED_NOTIFICATIONS}
)
#: How many subscribe and unsubscribe requests a socket keeps waiting for their answer (to learn
#: from it whether the subscription holds): only an ``on()`` handler that answers late or never
#: leaves any waiting, and past this many the oldest is forgotten (its answer, if it ever comes,
#: then changes nothing).
MAX_AWAITED_SUBSCRIPTION_ANSWERS = 1024


@attrs.frozen
class PublishedMessage:
    """A message a client published: which socket, its request id, and what it said."""

    socket_id: int
    req_id: str
    dialog_id: str | None
    text: Any
    sequence: int
    at: float


@attrs.define(eq=False, repr=False)
class SimSocket:
    """One accepted messaging socket, server side."""

    id: int
    kind: str
    account: str
    # The connection, while the socket is served (``ws``); released when the socket ends.
    _ws: web.WebSocketResponse | None
    hub: SocketHub
    opened_at: float
    authenticated: bool = True
    #: The frames received from the client, parsed (invalid JSON is kept as ``{"raw": ...}``):
    #: the newest ``config.max_records``.
    received: RecordLog[dict[str, Any]] = attrs.field(
        factory=lambda: RecordLog(DEFAULT_MAX_RECORDS, name="simulator socket frames received")
    )
    #: The subscription request frames, in order (the newest ``config.max_records``).
    subscriptions: RecordLog[dict[str, Any]] = attrs.field(
        factory=lambda: RecordLog(DEFAULT_MAX_RECORDS, name="simulator socket subscriptions")
    )
    #: The subscription types that hold on this socket: each subscription request of its kind
    #: once a 2xx answer to it is sent (matched on its ``reqId``), whoever sends it: the
    #: simulator, an ``on()`` handler's return, or a handler's (or a test's) own :meth:`send`;
    #: not a fault answering in its place. A 2xx answer to an unsubscribe request
    #: (``.ams.aam.UnsubscribeExConversations``; the consumer socket has none) takes its type
    #: out again. One subscription per type per socket: subscribing twice is still one,
    #: and an unsubscribe ends it whatever ``subscriptionId`` it names (LiveEngage tells its
    #: subscriptions apart by id; no test here needs two of one type). What
    #: :meth:`SocketHub.notify` delivers by. A set of its own, not read from ``subscriptions``,
    #: whose bound, shared by every socket, may have dropped a live socket's old frames.
    subscribed: set[str] = attrs.field(factory=set)
    last_activity: float = 0.0
    silent: bool = False
    closed: bool = False
    #: How the socket ended: ``("close", code)``, ``("drop", None)``, ``("client", code)``.
    ended: tuple[str, int | None] | None = None
    session_fault: WsClose | WsDrop | WsSilence | None = None
    #: While an ``on()`` handler runs, the ``reqId`` and ``code`` of every answer sent (by the
    #: handler's own :meth:`send` too): a handler that answered and then raised gets no second
    #: answer, and an InitConnection handler's own 2xx logs the consumer in. None otherwise.
    _answering: dict[Any, Any] | None = attrs.field(default=None, init=False, repr=False)
    transport: asyncio.Transport | None = None
    #: Frames to send right after the current ``resp`` (the echo of a published message).
    after_resp: list[dict[str, Any]] = attrs.field(factory=list)
    #: Frames a ``ws_drop_message`` fault kept from the client, in order (the newest
    #: ``config.max_records``).
    dropped: RecordLog[dict[str, Any]] = attrs.field(
        factory=lambda: RecordLog(DEFAULT_MAX_RECORDS, name="simulator socket frames dropped")
    )
    #: Frames held by a ``ws_delay`` fault (or queued behind one): (clock time due, text).
    held: collections.deque[tuple[float, str]] = attrs.field(factory=collections.deque)
    writer: asyncio.Task[None] | None = None
    #: Whether a close is waiting for the held frames to go out before its close frame (no
    #: frame is sent after it).
    closing: bool = False
    #: Set when no close is waiting for held frames (a second close waits for it, then looks
    #: again: the socket closed, or that close cut short and this one closes it).
    _flush_ended: asyncio.Event = attrs.field(factory=asyncio.Event, init=False, repr=False)
    # The last send taken in turn (_take_turn): done once it has written its frame (or given
    # up). Each send waits for the one before it, so frames go out in the order their sends
    # were called, also when SocketHub.notify sends from tasks of its own.
    _last_send: asyncio.Future[None] | None = attrs.field(default=None, init=False, repr=False)
    #: The brand socket's Login Service session (the one whose bearer is in its path), or None
    #: (a consumer socket). With ``config.close_ended_sessions`` the socket is closed with 4401
    #: at its first frame after the session ended (logged out, revoked, expired).
    session: LoginSession | None = None
    #: The consumer JWT a consumer socket logged in with (at the upgrade, or its last
    #: ``InitConnection`` that the built-in check accepted), or None (a brand socket, one not
    #: logged in, or one an ``on()`` handler logged in). With ``config.close_ended_sessions``
    #: the socket is closed with 4401 at its first frame after that JWT expired or was revoked.
    consumer_token: Token | None = None
    # The subscribe and unsubscribe requests waiting for their answer: {request id: type}, in
    # the order they came, at most MAX_AWAITED_SUBSCRIPTION_ANSWERS of them.
    _awaited: dict[str | int, str] = attrs.field(factory=dict, init=False, repr=False)

    def __repr__(self) -> str:
        return f"SimSocket(id={self.id}, kind={self.kind!r}, account={self.account!r})"

    @property
    def ws(self) -> web.WebSocketResponse:
        """The server side of the connection, while the socket is served.

        Once the socket has ended its connection is released (:meth:`SocketHub.serve` lets
        go of it), so that the ended sockets :attr:`SocketHub.all` keeps are records (what the
        client sent, how it ended), not connections: ``ws`` then raises ``RuntimeError``."""
        ws = self._ws
        if ws is None:
            raise RuntimeError(f"socket {self.id} has ended: its connection was released")
        return ws

    def _release(self) -> None:
        """Let go of the connection and what was waiting to be sent on it (the socket ended)."""
        self._ws = None
        self.transport = None
        self.writer = None
        self.held.clear()
        self.after_resp.clear()
        self._awaited.clear()

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame (unless the socket is closed, closing or silent, or a fault drops or
        holds it)."""
        ws = self._ws
        if self.closed or self.closing or self.silent or ws is None or ws.closed:
            return
        await self._send_text(frame, _encode_sent(frame))

    def _take_turn(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """This send's place in the socket's order, taken now (synchronously): the send
        before it, to wait for, and this one's, to end (:meth:`_sent_in_turn`)."""
        before = self._last_send
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_send = mine
        return (None if before is None or before.done() else before), mine

    async def _send_text(self, frame: dict[str, Any], text: str) -> None:
        """Send ``frame``, already encoded as ``text`` (strict JSON), after the sends called
        before it."""
        before, mine = self._take_turn()
        await self._sent_in_turn(before, mine, frame, text)

    async def _sent_in_turn(
        self,
        before: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
        frame: dict[str, Any],
        text: str,
    ) -> None:
        """Send ``frame`` once the send before it is done, then let the next one go."""
        try:
            if before is not None:
                # (Waited, not awaited: a cancelled caller must not cancel the one before.)
                await asyncio.wait({before})
            await self._send_now(frame, text)
        finally:
            _pass_turn(before, mine)

    async def _send_now(self, frame: dict[str, Any], text: str) -> None:
        ws = self._ws
        if self.closed or self.closing or self.silent or ws is None or ws.closed:
            return
        # Sent by the server (a fault may still lose or hold it on its way): an answer to a
        # subscription holds it from now on, whoever answered.
        self._answer_sent(frame)
        if self._answering is not None and frame.get("kind") == "resp":
            req_id = frame.get("reqId")
            if isinstance(req_id, (str, int)):  # (a test may send any reqId: a list too)
                self._answering[req_id] = frame.get("code")
        hold = self.hub._outbound(self, frame)
        if hold is None:
            self.dropped.append(frame)
            return
        if hold <= 0 and not self.held:
            await _write(ws, text)
            return
        clock = self.hub._sim.clock
        due = clock.now() + max(0.0, hold)
        if self.held:
            # One stream: nothing overtakes a frame still held.
            due = max(due, self.held[-1][0])
        self.held.append((due, text))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(
                self._send_held(), name=f"le_transport.simulator socket {self.id} held frames"
            )

    async def _send_held(self) -> None:
        clock = self.hub._sim.clock
        while self.held:
            due, text = self.held[0]
            wait = due - clock.now()
            if wait > 0:
                await clock.sleep(wait)
            ws = self._ws
            if self.closed or self.silent or ws is None or ws.closed:
                self.held.clear()
                return
            await _write(ws, text)
            # Popped only once sent, so a frame sent meanwhile queues behind this one.
            self.held.popleft()

    async def stop_sending_held(self) -> None:
        """Forget held frames and stop the task sending them (the socket ended)."""
        self.held.clear()
        writer, self.writer = self.writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def notify(self, type: str, body: Any) -> None:
        """Push a ``notification`` frame to this socket, whatever it subscribed to (a push a
        test aims at one socket; :meth:`SocketHub.notify` is the one that delivers by
        subscription)."""
        await self.send({"kind": "notification", "type": type, "body": body})

    async def close(self, code: int = 1000, reason: str = "", *, flush: bool = True) -> None:
        """Close with ``code`` (a close frame is sent: 4401, 4407, 1011, 1001...).

        The frames a ``ws_delay`` holds are on their way (latency): the close frame follows
        them on the one stream, once the last is sent, when it is due (a delay is not a drop),
        and nothing sent meanwhile goes out. ``flush=False`` (a fault ending the socket, as
        the client-side injector's ``ws_close`` does) forgets them and closes at once, also
        over a close still waiting for them; a second close that would wait returns once the
        socket is closed."""
        while flush and self.closing and not self.closed:
            await self._flush_ended.wait()
        if self.closed:
            return
        writer = self.writer
        if self.closing:
            # A fault's close over one still waiting for its held frames: now, with its code;
            # the frames are lost, and the waiting close, finding the socket closed, returns.
            self.held.clear()
            if writer is not None and not writer.done():
                writer.cancel()
        elif flush and writer is not None and not writer.done():
            self.closing = True
            self._flush_ended.clear()
            try:
                # Not awaited as such: the writer stopped (the socket ending under it) is not
                # this close's failure.
                await asyncio.wait({writer})
            finally:
                # Cut short too (a caller's timeout): a close waiting on this one goes on.
                self.closing = False
                self._flush_ended.set()
            if self.closed:
                return  # ended meanwhile (dropped, its client left, a fault's close)
        self.closed = True
        self.ended = ("close", code)
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=code, message=reason.encode())

    def drop(self) -> None:
        """Drop the connection without a close frame: the client sees an abnormal closure."""
        if self.closed:
            return
        self.closed = True
        self.ended = ("drop", None)
        if self.transport is not None:
            self.transport.abort()

    def silence(self) -> None:
        """Stop answering anything (requests and pings); the connection stays open."""
        self.silent = True

    def _await_answer(self, req_id: str | int, type_: str) -> None:
        """Wait for the answer to a request about to be served, if it is a subscribe or an
        unsubscribe request of this socket's kind (:meth:`_answer_sent` reads it)."""
        types = TYPES_BY_KIND[self.kind]
        if type_ not in types.subscribe and type_ not in types.unsubscribe:
            return
        awaited = self._awaited
        awaited.pop(req_id, None)  # an id used again: the newest request is the one answered
        awaited[req_id] = type_
        while len(awaited) > MAX_AWAITED_SUBSCRIPTION_ANSWERS:
            del awaited[next(iter(awaited))]

    def _answer_sent(self, frame: dict[str, Any]) -> None:
        """Keep :attr:`subscribed` by a frame being sent: a 2xx answer to a subscribe request
        waiting for it adds its type, to an unsubscribe request takes out the type it ends;
        any answer ends the wait."""
        if not self._awaited or frame.get("kind") != "resp":
            return
        req_id = frame.get("reqId")
        if not _valid_request_id(req_id):
            return  # no request's id (and a list or a dict could not be looked up)
        type_ = self._awaited.pop(req_id, None)
        code = frame.get("code")
        if type_ is None or not _status_2xx(code):
            return
        types = TYPES_BY_KIND[self.kind]
        ended = types.unsubscribe.get(type_)
        if ended is None:
            self.subscribed.add(type_)
        else:
            self.subscribed.discard(ended)

    @property
    def subscription_types(self) -> list[str]:
        """The ``type`` of each subscription request, in order."""
        return [str(s.get("type")) for s in self.subscriptions]


def _pass_turn(before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """A send is over (sent, or given up): the next may go once the send before it is done
    too. Released at once, a send cancelled while it waited let the next overtake the ones
    still queued before it."""
    if mine.done():
        return
    if before is None or before.done():
        mine.set_result(None)
        return

    def release(_: asyncio.Future[None]) -> None:
        if not mine.done():
            mine.set_result(None)

    before.add_done_callback(release)


async def _write(ws: web.WebSocketResponse, text: str) -> None:
    """``ws.send_str(text)``: a connection that failed under it is the client's leaving (its
    serving loop sees it). A CancelledError this task was not asked for is taken as the frame
    written: aiohttp's writers waiting for a slow client share one drain future, which a
    cancelled send cancels for every one of them (until the client catches up), after each
    wrote its frame; raised, it ended the serving loop (the socket recorded as the client's
    leaving) or failed a test's notify that nobody cancelled."""
    try:
        await ws.send_str(text)
    except (ConnectionError, RuntimeError):
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise


def _encode_sent(frame: dict[str, Any]) -> str:
    """A frame the simulator sends, as strict JSON, before a fault spends a turn on it:
    json.dumps writes NaN and Infinity, which no JSON parser of a client (JSON.parse, Jackson,
    loads_strict) reads."""
    try:
        return json.dumps(frame, allow_nan=False)
    except ValueError as exc:
        what = f"a frame the simulator sends must be JSON ({str(frame.get('type'))[:80]!r})"
        raise ValueError(f"{what}: {exc}") from None


class SocketHub:
    """Every messaging socket of one simulator, and the controls tests use on them."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._ids = itertools.count(1)
        self._sequence = itertools.count(1)
        # Made for the loop that first waits on it, and again for another loop (an asyncio
        # Condition is bound to one): a simulator may be stopped and started again there.
        self._changed_on: tuple[asyncio.AbstractEventLoop, asyncio.Condition] | None = None
        self._handlers: dict[str, RequestHandler] = {}
        bound = sim.config.max_records
        #: The sockets accepted, in order: the newest ``config.max_records`` (``all.total``:
        #: how many were ever accepted).
        self.all: RecordLog[SimSocket] = RecordLog(bound, name="simulator sockets accepted")
        #: The messages published by clients, in order: the newest ``config.max_records``.
        self.published: RecordLog[PublishedMessage] = RecordLog(
            bound, name="simulator messages published"
        )
        #: Handshakes refused (status code per refusal): the newest ``config.max_records``.
        self.rejected: RecordLog[int] = RecordLog(bound, name="simulator handshakes refused")
        #: The bounds over every socket's ``received``, ``subscriptions`` and ``dropped``
        #: records together (None: no bound): the newest ``config.max_records`` of each kind
        #: across the sockets, whichever socket holds them.
        self.received_bound = self._shared_bound("simulator socket frames received")
        self.subscriptions_bound = self._shared_bound("simulator socket subscriptions")
        self.dropped_bound = self._shared_bound("simulator socket frames dropped")
        # The sockets being served, by id, in the order accepted: ``open`` reads them, so an
        # open socket is found even once ``all`` has dropped it.
        self._serving: dict[int, SimSocket] = {}

    @property
    def open(self) -> list[SimSocket]:
        """Sockets that are open now."""
        return [s for s in self._serving.values() if not s.closed]

    def _shared_bound(self, name: str) -> SharedBound | None:
        bound = self._sim.config.max_records
        return None if bound is None else SharedBound(bound, name=name)

    def _new_records(self, shared: SharedBound | None, name: str) -> RecordLog[dict[str, Any]]:
        # No bound of its own: the group's is the only one (a socket alone can fill it).
        return RecordLog(None, name=name, shared=shared)

    def on(self, type: str, handler: RequestHandler) -> None:
        """Answer requests of ``type`` with ``handler(socket, frame) -> (code, body)``; a
        handler that returns None answers by itself (``socket.send``) or not at all. It serves
        only a socket that has logged in (a consumer that has not is closed with 4401, as for
        any request but ``InitConnection``); a handler that raises answers ``code`` 500 (logged
        at ERROR with its traceback), the socket staying up."""
        self._handlers[type] = handler

    async def notify(
        self,
        type: str,
        body: Any,
        *,
        kind: str | None = None,
        account: str | None = None,
        to_all: bool = False,
    ) -> int:
        """Push a notification to the open sockets (of ``kind``: ``brand``/``consumer``) that
        would get it on LiveEngage. Returns how many sockets it was sent to.

        A type a subscription brings (:data:`SUBSCRIBED_NOTIFICATIONS`:
        ``.ams.routing.RoutingTaskNotification`` after ``.ams.routing.SubscribeRoutingTasks``,
        ``.ams.cm.ExConversationChangeNotification`` after
        ``.ams.aam.SubscribeExConversations`` on the agent socket,
        ``cqm.ExConversationChangeNotification`` after ``cqm.SubscribeExConversations`` on the
        consumer socket) goes only to the sockets holding that subscription
        (:attr:`SimSocket.subscribed`): subscriptions live only as long as their socket, so a
        client that forgot to subscribe again after a reconnect gets none, and a chaos test
        catches it. Such a type never goes to a socket of the other kind, which has no
        subscription bringing it (a routing task to a consumer socket, a ``cqm`` change to an
        agent socket), ``kind=`` naming that kind included: ``kind`` only narrows the sockets
        that may get it. Any other type (the messaging events, a type of your own) goes to every
        open socket (of ``kind``). ``to_all=True`` sends any type to every open socket (of
        ``kind``), subscribed or not (a test about something else than subscriptions).
        ``account`` narrows them to that account's sockets (None: every account's).

        It is sent to the sockets at once and returns when every one has taken it: a client
        that stops reading holds up this call (its socket's backpressure), not the frame's
        delivery to the others."""
        require_kind(to_all, bool, owner="SocketHub.notify", field="to_all", optional=False)
        require_kind(account, str, owner="SocketHub.notify", field="account", optional=True)
        targets = [
            s
            for s in self.open
            if (kind is None or s.kind == kind)
            and (account is None or s.account == account)
            and (to_all or _subscribed_to(s, type))
        ]
        frame = {"kind": "notification", "type": type, "body": body}
        text = _encode_sent(frame)
        if len(targets) == 1:
            await targets[0]._send_text(frame, text)
            return 1
        # To every socket at once: a client that stops reading holds back only its own socket
        # (the send waits for its buffer to drain), not the others' notifications. Each
        # socket's turn is taken now, before the sends' tasks start: a send called after this
        # (another notify, a socket's own) goes out after it, as it did when sent in turn.
        turns = [(s, *s._take_turn()) for s in targets]
        try:
            await asyncio.gather(
                *(s._sent_in_turn(before, mine, frame, text) for s, before, mine in turns)
            )
        finally:
            for _, before, mine in turns:
                _pass_turn(before, mine)  # a send cancelled before it started
        return len(targets)

    @property
    def _changed(self) -> asyncio.Condition:
        """The condition the waits for sockets wait on, for the running loop."""
        loop = asyncio.get_running_loop()
        if self._changed_on is None or self._changed_on[0] is not loop:
            self._changed_on = (loop, asyncio.Condition())
        return self._changed_on[1]

    async def wait_open(self, count: int = 1) -> list[SimSocket]:
        """Wait until at least ``count`` sockets are open; returns the open sockets."""
        changed = self._changed
        async with changed:
            await changed.wait_for(lambda: len(self.open) >= count)
        return self.open

    async def wait_accepted(self, count: int) -> list[SimSocket]:
        """Wait until ``count`` sockets have been accepted in all (reconnects included); returns
        the accepted sockets kept in :attr:`all`."""
        changed = self._changed
        async with changed:
            await changed.wait_for(lambda: self.all.total >= count)
        return list(self.all)

    def published_ids(self) -> list[str]:
        """The request ids of the published messages kept in :attr:`published`, in arrival
        order."""
        return [m.req_id for m in self.published]

    async def drop_all(self) -> None:
        """Drop every open socket (as a server crash would), and the connection of a socket
        whose close is under way (its close frame sent, its client's not back yet: aiohttp
        would wait for it up to its close timeout)."""
        for s in list(self._serving.values()):
            if not s.closed:
                s.drop()
            elif s.transport is not None:
                s.transport.abort()
        await self._signal()

    async def close_all(self, code: int = 1001, reason: str = "") -> None:
        """Close every open socket with ``code``, all at once: a socket's close waits for the
        frames a ``ws_delay`` holds on it, which must not keep the others open (serving on
        expired tokens) until they are sent."""
        await asyncio.gather(*(s.close(code, reason) for s in list(self.open)))
        await self._signal()

    async def _signal(self) -> None:
        changed = self._changed
        async with changed:
            changed.notify_all()

    def _outbound(self, sock: SimSocket, frame: dict[str, Any]) -> float | None:
        """Seconds to hold a frame the server sends (0: at once), or None to drop it."""
        run = self._sim.faults.run
        if not run.plan.rules:
            return 0.0
        type_ = str(frame.get("type", ""))
        injection = run.decide(
            "ws_message",
            method="WS",
            path=type_,
            at=self._sim.clock.now(),
            kinds=WS_OUTBOUND_FAULTS,
        )
        if injection is None:
            return 0.0
        fault = injection.fault
        # Escaped: the type is the handler's text, the rule id a plan file's.
        rule = _printable(injection.rule_id)
        _log.debug(
            "socket %d: %s on an outgoing %s (rule %s)",
            sock.id,
            fault.kind,
            _printable(type_[:80]),
            rule,
            extra={"socket": sock.id, "rule": rule, "fault": fault.kind},
        )
        if isinstance(fault, WsDropMessage):
            return None
        assert isinstance(fault, WsDelay)
        return injection.delay_s

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        *,
        kind: str,
        account: str,
        authenticated: bool,
        session_fault: Any,
        consumer_token: Token | None = None,
    ) -> web.StreamResponse:
        """Run one accepted socket until it ends (a consumer socket that logged in at the
        upgrade: with the JWT it gave, ``consumer_token``)."""
        sim = self._sim
        # autoping off: pongs are sent by hand, so a silenced socket can stop answering pings.
        ws = web.WebSocketResponse(autoping=False, heartbeat=None)
        await ws.prepare(request)
        sock = SimSocket(
            id=next(self._ids),
            kind=kind,
            account=account,
            ws=ws,
            hub=self,
            opened_at=sim.clock.now(),
            authenticated=authenticated,
            last_activity=sim.clock.now(),
            session_fault=session_fault,
            session=self._session_of(request, kind, account),
            consumer_token=consumer_token,
            transport=request.transport,
            received=self._new_records(self.received_bound, "simulator socket frames received"),
            subscriptions=self._new_records(
                self.subscriptions_bound, "simulator socket subscriptions"
            ),
            dropped=self._new_records(self.dropped_bound, "simulator socket frames dropped"),
        )
        self.all.append(sock)
        self._serving[sock.id] = sock
        idle: asyncio.Task[None] | None = None
        # Served from here on: whatever ends it (its client leaving while the hub is busy
        # announcing it, too) takes it out of ``_serving``, or it would count as open for ever.
        try:
            await self._signal()
            _log.info(
                "socket %d (%s) opened on account %s",
                sock.id,
                kind,
                account,
                extra={"socket": sock.id, "account": account},
            )
            idle = asyncio.get_running_loop().create_task(self._idle_watch(sock))
            if not await self._apply_session_fault(sock, messages=0):
                await self._receive_loop(sock)
        finally:
            if idle is not None:
                idle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle
            await sock.stop_sending_held()
            if not sock.closed:
                sock.closed = True
                sock.ended = ("client", ws.close_code)
            self._serving.pop(sock.id, None)
            # Kept in ``all`` as a record: without its connection, which would otherwise stay
            # in memory for each of the ``config.max_records`` sockets a long soak keeps there.
            sock._release()
            await self._signal()
            _log.info(
                "socket %d ended: %s",
                sock.id,
                sock.ended,
                extra={"socket": sock.id, "account": account},
            )
        return ws

    def _session_of(self, request: web.Request, kind: str, account: str) -> LoginSession | None:
        """The live Login Service session whose bearer a brand socket's path holds."""
        bearer = request.match_info.get("bearer")
        if kind != "brand" or not bearer:
            return None
        return self._sim.tokens.valid_session(bearer, account)

    async def _close_if_session_ended(self, sock: SimSocket, frame: dict[str, Any]) -> bool:
        """With ``config.close_ended_sessions``: close a brand socket whose session ended
        (logged out, revoked, expired), or a consumer socket whose consumer JWT did (expired,
        revoked), with 4401, LiveEngage's "token missing/expired" (the frame that found it is
        not answered). A consumer's ``InitConnection`` is its login renewed: its own JWT is
        checked by it, not the old one's. True if the socket was closed."""
        if not self._sim.config.close_ended_sessions:
            return False
        tokens = self._sim.tokens
        session, token = sock.session, sock.consumer_token
        if session is not None:
            if tokens.valid_session(session.bearer, sock.account) is not None:
                return False
            what = "its session ended (logged out, revoked or expired)"
        elif token is not None:
            if frame.get("type") == "InitConnection":
                return False
            if tokens.valid_jwt(token.value, sock.account, "consumer") is not None:
                return False
            what = "its consumer JWT ended (expired or revoked)"
        else:
            return False
        _log.info(
            "socket %d: %s: closing with 4401",
            sock.id,
            what,
            extra={"socket": sock.id, "account": sock.account},
        )
        await sock.close(4401, "token expired")
        await self._signal()
        return True

    async def _idle_watch(self, sock: SimSocket) -> None:
        clock = self._sim.clock
        timeout = self._sim.config.idle_timeout
        while not sock.closed:
            remaining = sock.last_activity + timeout - clock.now()
            if remaining <= 0:
                if sock.silent:
                    return  # a half-open socket closes nothing
                _log.info("socket %d idle for %g s: closing", sock.id, timeout)
                await sock.close(self._sim.config.idle_close_code, "idle timeout")
                await self._signal()
                return
            await clock.sleep(remaining)

    async def _apply_session_fault(self, sock: SimSocket, *, messages: int) -> bool:
        """Apply the session's fault if its moment has come; True if the socket is done."""
        fault = sock.session_fault
        if fault is None or messages < fault.after_messages:
            return False
        sock.session_fault = None
        if isinstance(fault, WsClose):
            await sock.close(fault.code, fault.reason, flush=False)
            return True
        if isinstance(fault, WsDrop):
            sock.drop()
            return True
        sock.silence()
        return False

    async def _receive_loop(self, sock: SimSocket) -> None:
        ws = sock.ws
        count = 0
        while not sock.closed:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type is WSMsgType.ERROR:
                return
            if msg.type is WSMsgType.PING:
                if not sock.silent:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                continue
            if msg.type is WSMsgType.PONG:
                continue
            sock.last_activity = self._sim.clock.now()
            data = msg.data if msg.type is WSMsgType.TEXT else msg.data.decode("utf-8", "replace")
            # A request that is not JSON: the type to answer it 400 under, else None.
            not_json: str | None = None
            try:
                # Strict: json.loads takes NaN, Infinity and 1e400 (as inf), which are not JSON;
                # taken, a request id NaN was answered "reqId": NaN, and a published Infinity
                # echoed back, neither of which a client's parser reads.
                frame = loads_strict(data)
            except (ValueError, RecursionError):
                # RecursionError: nested past the parser's limit. Invalid JSON like any other;
                # raised out of this loop it ended the connection (the client saw a 1006).
                frame = {"raw": data[:200]}
                not_json = _request_type(data)
            if not isinstance(frame, dict):
                frame = {"raw": data[:200]}
            sock.received.append(frame)
            count += 1
            if await self._close_if_session_ended(sock, frame):
                return
            if await self._apply_session_fault(sock, messages=count):
                return
            if sock.silent:
                continue
            if not_json is not None:
                # LiveEngage cannot read the frame, so neither its id: reqId null, as for a
                # request without a usable id, and before any fault or on() handler.
                await self._resp(
                    sock,
                    None,
                    not_json,
                    400,
                    {"msg": "malformed request: not JSON (a number not finite, or too large)"},
                )
            elif frame.get("kind") == "req":
                await self._answer(sock, frame)

    async def _answer(self, sock: SimSocket, frame: dict[str, Any]) -> None:
        sim = self._sim
        type_ = str(frame.get("type", ""))
        req_id = frame.get("id")
        if not _valid_request_id(req_id):
            # A request LiveEngage could not answer to: its answer is matched on ``reqId``, and
            # a request without an ``id`` (or with one that is not a str or a number) has
            # none. Refused as malformed (400), before any fault or custom handler sees it, so
            # that it is never served as if it were well formed; ``reqId`` says what came.
            await self._resp(
                sock,
                req_id if _json_scalar(req_id) else None,
                type_,
                400,
                {"msg": "malformed request: 'id' must be a non-empty string or an integer"},
            )
            return
        if not sock.authenticated and not self._is_login(sock, type_):
            # Before any fault as before any handler: LiveEngage refuses a consumer that has
            # not logged in whatever else goes on, and a rule's count (fail_next) is not spent
            # on a frame that was never served.
            await sock.close(4401, "authenticate first (InitConnection)")
            await self._signal()
            return
        injection = sim.faults.run.decide(
            "ws_message",
            method="WS",
            path=type_,
            at=sim.clock.now(),
            kinds=WS_MESSAGE_FAULTS,
        )
        if injection is not None:
            fault = injection.fault
            if isinstance(fault, Status):
                await self._resp(sock, req_id, type_, fault.code, fault.socket_body())
                return
            if isinstance(fault, WsAppError):
                # Escaped: the type is the client's text, the rule id a plan file's.
                rule = _printable(injection.rule_id)
                _log.debug(
                    "socket %d: answering %s with code %d (rule %s)",
                    sock.id,
                    _printable(type_[:80]),
                    fault.code,
                    rule,
                    extra={"socket": sock.id, "rule": rule, "fault": fault.kind},
                )
                await self._resp(sock, req_id, type_, fault.code, fault.response_body())
                return
            if isinstance(fault, Hang):
                return
            if isinstance(fault, WsClose):
                await sock.close(fault.code, fault.reason, flush=False)
                return
            if isinstance(fault, WsDrop):
                sock.drop()
                return
            if isinstance(fault, WsSilence):
                sock.silence()
                return
            if isinstance(fault, Delay) and not await sim._pause(injection.delay_s):
                return  # the simulator is stopping: the socket is being dropped
        # Served, not answered by a fault: a subscription holds once a 2xx answer to it is
        # sent, by whoever sends it (SimSocket._answer_sent), an on() handler's own send too.
        sock._await_answer(req_id, type_)
        answer = await self._handle(sock, frame, type_)
        if answer is None:
            return
        code, body = answer
        resp = _resp_frame(req_id, type_, code, body)
        pending, sock.after_resp = sock.after_resp, []
        try:
            # Checked before anything goes out: raised from sock.send here, it ended the
            # serving loop, so the socket (1006) and aiohttp's ERROR traceback for a NaN an
            # on() handler answered (statistics.mean([]), say).
            texts = [_strict_json(f) for f in (resp, *pending)]
        except (ValueError, TypeError, RecursionError) as exc:
            # Never the body in the log: it is what the client or the test put there.
            _log.error(
                "socket %d: the answer to %s is not JSON (%s: a NaN, an Infinity or a value "
                "JSON cannot hold, from an on() handler?): answered code 500 instead",
                sock.id,
                _printable(type_[:80]),  # the client's text, escaped
                type(exc).__name__,
                extra={"socket": sock.id, "account": sock.account},
            )
            await self._resp(
                sock,
                req_id,
                type_,
                500,
                {
                    "msg": "internal error: the simulator's answer to this request is not JSON"
                    " (a NaN, an Infinity or a value JSON cannot hold); see its log"
                },
            )
            return
        await sock._send_text(resp, texts[0])
        for extra, text in zip(pending, texts[1:], strict=True):
            await sock._send_text(extra, text)

    async def _resp(self, sock: SimSocket, req_id: Any, type_: str, code: int, body: Any) -> None:
        await sock.send(_resp_frame(req_id, type_, code, body))

    @staticmethod
    def _is_login(sock: SimSocket, type_: str) -> bool:
        """Whether ``type_`` is the login request of ``sock``'s product (``InitConnection``
        on the consumer socket)."""
        return type_ == "InitConnection" and TYPES_BY_KIND[sock.kind].init_connection

    async def _handle(
        self, sock: SimSocket, frame: dict[str, Any], type_: str
    ) -> tuple[int, Any] | None:
        sim = self._sim
        types = TYPES_BY_KIND[sock.kind]
        # (A consumer that has not logged in was closed with 4401 before this: _answer.)
        init = self._is_login(sock, type_)
        handler = self._handlers.get(type_)
        if handler is not None:
            answered: dict[Any, Any] = {}
            sock._answering = answered
            answer: tuple[int, Any] | None = None
            try:
                answer = await handler(sock, frame)
                if answer is not None and not (
                    isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], int)
                ):
                    raise TypeError(
                        f"an on() handler returns (code, body) or None, not {type(answer).__name__}"
                    )
            except Exception as exc:
                # A test's handler failing on a frame it did not expect ({} for a body): the
                # service answers a request it fails on, it does not drop the connection. Left
                # to the serving loop, it ended the socket (1006, put on the client) with
                # aiohttp's traceback. Logged with its redacted traceback, never the frame; no
                # second answer if it had answered by itself before it raised.
                already = frame.get("id") in answered
                _log.error(
                    "socket %d: the on() handler for %s raised %s%s",
                    sock.id,
                    _printable(type_[:80]),  # the client's text, escaped
                    type(exc).__name__,
                    " after answering" if already else ": answered code 500",
                    exc_info=redacted_exc_info(exc),
                    extra={"socket": sock.id, "account": sock.account},
                )
                # (A malformed answer it returned is dropped: it answered by itself, or gets 500.)
                answer = None
                if not already:
                    answer = (
                        500,
                        {
                            "msg": "internal error: the simulator's handler raised "
                            + type(exc).__name__
                        },
                    )
            finally:
                sock._answering = None
            code = answer[0] if answer is not None else answered.get(frame.get("id"))
            if init and type(code) is int and 200 <= code < 300:
                # A handler of the login's own that says yes (returned, or sent by itself, even
                # if it raised after) logs the consumer in, as the built-in check does: else its
                # next request met 4401 for ever.
                sock.authenticated = True
                sock.consumer_token = None  # a login of the handler's: no JWT of ours to end
            return answer
        if init:
            return self._init_connection(sock, frame)
        if type_ in types.get_clock:
            return 200, {"currentTime": int(sim.tokens.epoch_now() * 1000)}
        if type_ in types.subscribe:
            sock.subscriptions.append(frame)
            # Subscribed once its 2xx answer is sent (SimSocket._answer_sent): a fault's answer
            # in its place is no subscription.
            return 200, {"subscriptionId": f"sub-{sock.id}-{sock.subscriptions.total}"}
        if type_ in types.publish:
            return await self._publish(sock, frame)
        if type_ in types.accepted:
            return 200, {}
        # Unknown here, or the other product's (a consumer type on the agent socket, the
        # consumer's undotted GetClock on it): LiveEngage knows no such request on this socket.
        return 400, {"msg": f"unknown request type {type_[:80]!r}"}

    def _init_connection(self, sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
        headers = frame.get("headers")
        jwt = None
        if isinstance(headers, list):
            for h in headers:
                if isinstance(h, dict) and h.get("type") == ".ams.headers.ConsumerAuthentication":
                    jwt = h.get("jwt")
        token = (
            self._sim.tokens.valid_jwt(jwt, sock.account, "consumer")
            if isinstance(jwt, str)
            else None
        )
        if token is not None:
            sock.authenticated = True
            sock.consumer_token = token
            return 200, {}
        if sock.authenticated and jwt is None:
            return 200, {}  # logged in already, and no new token to check
        # A token given and not good (forged, expired, another account's) is refused, on a
        # socket logged in already too: told it succeeded, a client renewing its login with a
        # stale token learnt nothing until the socket was closed under it.
        return 401, {"msg": "invalid or expired consumer JWT"}

    async def _publish(self, sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
        body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
        assert isinstance(body, dict)
        event = body.get("event") if isinstance(body.get("event"), dict) else {}
        assert isinstance(event, dict)
        dialog = body.get("dialogId")
        sequence = next(self._sequence)
        self.published.append(
            PublishedMessage(
                socket_id=sock.id,
                req_id=str(frame.get("id")),
                dialog_id=str(dialog) if dialog is not None else None,
                text=event.get("message"),
                sequence=sequence,
                at=self._sim.clock.now(),
            )
        )
        if self._sim.config.echo_published:
            sock.after_resp.append(
                {
                    "kind": "notification",
                    "type": TYPES_BY_KIND[sock.kind].messaging_event,
                    "body": {
                        "dialogId": dialog,
                        "changes": [
                            {
                                "sequence": sequence,
                                "originatorId": f"{sock.account}.{sock.kind}",
                                "serverTimestamp": int(self._sim.tokens.epoch_now() * 1000),
                                "event": event,
                            }
                        ],
                    },
                }
            )
        return 200, {"sequence": sequence}


def _subscribed_to(sock: SimSocket, type_: str) -> bool:
    """Whether ``sock`` gets a notification of ``type_``: it holds the subscription that brings
    it, or the type needs none on any kind. A type a subscription brings on the other kind only
    is not for this one, which can never subscribe to it."""
    needed = TYPES_BY_KIND[sock.kind].subscribed_notifications.get(type_)
    if needed is None:
        return type_ not in SUBSCRIBED_NOTIFICATIONS
    return needed in sock.subscribed


def _resp_frame(req_id: Any, type_: str, code: int, body: Any) -> dict[str, Any]:
    return {
        "kind": "resp",
        "reqId": req_id,
        "code": code,
        "body": body,
        "type": f"{type_}$Response",
    }


def _strict_json(frame: dict[str, Any]) -> str:
    """``frame`` as strict JSON (no NaN, no Infinity): ``ValueError`` or ``TypeError`` if it is
    not JSON, ``RecursionError`` if nested too deep to encode."""
    return json.dumps(frame, allow_nan=False)


def _status_2xx(code: object) -> bool:
    return isinstance(code, int) and not isinstance(code, bool) and 200 <= code < 300


def _request_type(data: str) -> str | None:
    """The ``type`` of a request frame that is not strict JSON but that :func:`json.loads` reads
    (``NaN``, ``Infinity``, ``1e400`` in it), else None: what to answer such a frame under.
    Text that no reading makes a request of is not answered, as before."""
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(frame, dict) or frame.get("kind") != "req":
        return None
    return str(frame.get("type", ""))


def _json_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _valid_request_id(value: object) -> TypeGuard[str | int]:
    """Whether ``value`` can identify a request: a non-empty str (protocol.md's
    ``"id": "<unique>"``), or an int (a number identifies as well, and a lenient reading costs a
    test nothing); not a bool, a float, null, an object or a list."""
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, int) and not isinstance(value, bool)
