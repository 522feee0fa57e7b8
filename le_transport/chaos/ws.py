"""Client-side socket faults: an open WebSocket wrapped so that the plan's socket kinds strike it.

:meth:`FaultInjector.wrap_socket <le_transport.chaos.FaultInjector.wrap_socket>` wraps the
aiohttp socket an engine's socket just opened (the socket layer asks for it when its engine has
an active injector among its middlewares), and the owner of the socket reads and writes through
the wrapper as it would through aiohttp's. It mirrors what the simulator does on the server side
of the same plan, so one plan can be pointed at either:

- **Per session** (unit ``ws_session``, decided once: at the upgrade by the injector's
  middleware, a refusal among the kinds, as the simulator decides at its handshake; else when
  the socket opens): ``delay`` makes the open slower; ``ws_close`` hands the owner a close
  frame with the fault's code, ``ws_drop`` an abrupt end (the owner sees 1006), ``ws_silence``
  swallows every frame from then on (a half-open socket: only the keepalive can find it); each
  strikes as the client sends its ``after_messages``-th frame (0: at once), which is not sent,
  so that it is never answered and the ones before it are, as when the simulator applies the
  same rule.
- **Per request the client sends** (unit ``ws_message``, matched on the frame's ``type``, the
  kinds of :data:`~le_transport.chaos.plan.WS_MESSAGE_FAULTS`): ``status`` and ``ws_app_error``
  answer it with a ``resp`` frame carrying the code, **without sending it** (the server never
  saw it); ``hang`` never sends it and nothing answers; ``delay`` sends it late (and the frames
  sent after it behind it);
  ``ws_close``, ``ws_drop`` and ``ws_silence`` strike the connection instead of sending it.
- **Per frame the server sends** (unit ``ws_message``, matched on its ``type``, e.g.
  ``.ams.ms.PublishEvent$Response``; the kinds of
  :data:`~le_transport.chaos.plan.WS_OUTBOUND_FAULTS`): ``ws_drop_message`` loses it,
  ``ws_delay`` holds it, later frames queueing behind it in order.

A connection fault (either unit) waits for the answers to the requests the client sent before
it, as the simulator, which answers each message before it reads the next, has sent them when
it strikes: frames the connection brings meanwhile are handed over, and the fault strikes as
the last of those answers is handed over (a ``ws_delay`` holding it holds the strike too). It
waits for an answer no longer than :attr:`FaultySocket.STRIKE_WAIT_S` seconds (on the
injector's clock) after its request was sent: a request sent longer ago than that (one the
server is slow to answer or never answers, one the client gave up on) is not waited for, and an
answer later than that is lost with the connection. Frames read before the strike are handed
over before its end (but those a ``ws_delay`` still holds, lost with the connection). Requests
are known by their ``id`` (a str or an int); one without such an id is not waited for. What the
client sends while the fault waits goes nowhere, neither sent nor put to the plan nor counted
(at the simulator the connection ended with the frame that met the fault, and what follows it
never arrives): a request sent then fails with the fault's end. What the client sends to a
silenced socket goes nowhere too and is not put to the plan, as the simulator decides nothing
on a silenced socket, but it counts toward a session fault's ``after_messages``, as there.

The wrapper reads the real socket when its owner asks for the next frame (pull): when the
owner waits in :meth:`~FaultySocket.receive` with nothing to hand it, one read of the
connection starts, and the owner gets whichever comes first, a frame the read brings or a
made-up one (a fault's answer, a close or a drop). A read that lost the race is kept, not
cancelled, and what it brings is handed over next, in the order frames came. A ``ws_delay`` is
latency, as on the simulator: each frame is stamped, on the injector's clock, when it is taken
off the connection, and handed over at ``max(taken + hold, when the frame before it is
handed over)``: frames sent together with 1 s of latency all arrive 1 s later, in order, not one
second after another. So while a frame is held, the wrapper keeps reading the frames that
follow it off the connection (they are on their way too), each waiting its turn behind it; once
none is held, it reads again only for an owner that asks. A made-up answer to a request meets
the rules on incoming frames as a real one would (a ``ws_delay`` or ``ws_drop_message`` on its
``<type>$Response``, as the simulator sends it through its outbound rules), and queues behind
the frames held (on the simulator it is sent on the same stream), and so does
the connection's own end (a close frame, an error) read behind them; an injected end (a
``ws_close``, a ``ws_drop``) loses the frames still held, as the simulator drops what it holds
when a fault ends the socket, and a ``ws_silence`` the data frames among them.

The wrapper holds at most :attr:`FaultySocket.MAX_READ_AHEAD` frames read from the connection
that the owner has not taken, held ones included, and no frame more once those reach
:attr:`FaultySocket.MAX_READ_AHEAD_BYTES` in size: past either, nothing more is read until the
owner takes one. An owner that stops reading (its inbox full, ``SocketOptions.max_inbox``) stops the
reads once no frame is held, aiohttp's buffer fills and the peer is slowed down: a chaos run
exercises the same flow control as a run without faults. Made-up frames wait beside those, in
the order they came: at most one per request the client sent, and an end, so what the server
sends never piles up in the wrapper.

Frames the client sends go out one after another, as on one TCP stream: a request a ``delay``
holds holds every frame sent after it too (each waits until the one before it has gone, and is
only then counted and put to the plan), as the simulator, which sleeps in its receive loop,
reads nothing behind a delayed frame until it is done with it. A ``delay`` is latency on a frame
already written: the delayed frame, and each frame queued behind one, is sent by a task the
wrapper owns, so that a sender that stops waiting (its request timed out) does not unsend it
(it still reaches the server late, as the simulator still processes it late). Such a frame is
on the wire: once the socket accepted it, it is never refused as a frame not written. If its
connection ends before it is through, whoever ended it, it is lost with the connection, in
doubt, as it is at the simulator (there it may yet be processed: a server drop loses it, a
close from the client waits for the server's sleep to end and it is processed first): its
sender, if it still waits, gets an :class:`aiohttp.ClientConnectionResetError` "Connection
lost", the error of a write whose frame may have reached the peer, which the socket layer
never sends again (``write_never_began`` is False: the request fails with its connection, a
:class:`~le_transport.SocketClosed` that says it may have been processed). So
:meth:`~FaultySocket.close` (a drop the owner read, a close of its own, for good or to
reconnect: the same) cancels those tasks and waits for them, and they fail so; a delay that
ends after the connection ended fails so too, without writing; and
:attr:`~FaultySocket.closed` stays False while any of them is under way, whether its sender
still waits or not, so that the owner's close is never skipped and no task of the socket
outlives it. A frame sent once the connection is known to be closing or gone is not on the wire
and queues behind nothing: it is refused at once, as aiohttp refuses it ("Cannot write to
closing transport": never written, sent again on the next connection).

aiohttp's ``receive()`` is not cancelled: :meth:`~FaultySocket.close` lets aiohttp's close end
a read under way and waits for it (the frames still held are let go, and the task that hands
them over when due is cancelled and waited for), so the close handshake is the one a socket
without faults gets; only a close cut short (cancelled, or failing) cancels the read.
Once the owner has an injected end, nothing a read brings reaches it. No read outlives the
close. Nor does ``receive(timeout=...)`` cancel it: the timeout, kept on the injector's clock,
ends the owner's wait only, and what the read brings comes with the next ``receive()``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
from aiohttp import WSMessage, WSMsgType

from ..clock import timeout_after
from .plan import (
    Delay,
    Hang,
    Injection,
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
    from .injector import FaultInjector

__all__ = ["FaultySocket"]

_log = logging.getLogger("le_transport.chaos")

#: Ids of requests whose answers are still awaited, remembered to match a ``resp`` to its
#: request's type. Bounded: a socket that never gets its answers must not grow without end.
_REMEMBERED_IDS = 4096

#: What receive() returns once the socket ended, as aiohttp's does.
_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)

#: The frames that carry data (a silenced socket hands none over).
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)


class _LostInDoubt(aiohttp.ClientConnectionResetError):
    """A frame on the wire (an injected ``delay`` held it, or it queued behind one) lost with its
    connection: it may have reached the server. Its first argument is aiohttp's "Connection
    lost", that of a write whose drain failed, which the socket layer reads as in doubt and
    never sends again (``le_transport.sockets.dial.write_never_began``); ``str()`` says why."""

    def __init__(self, why: str) -> None:
        super().__init__("Connection lost")
        self.why = why

    def __str__(self) -> str:
        return f"Connection lost: {self.why} (it may have reached the server)"


class FaultySocket:
    """An aiohttp client WebSocket with the plan's socket faults applied (see the module).

    It has what the socket layer uses of aiohttp's: :meth:`receive`, :meth:`send_str`,
    :meth:`close`, :attr:`closed` and :attr:`close_code`. It reads the connection when
    :meth:`receive` is called, and while a frame is held (``ws_delay``); it holds at most
    :attr:`MAX_READ_AHEAD` frames read from it that the owner has not taken
    (:attr:`read_ahead`).
    """

    #: The most frames read from the connection that the owner has not taken yet: frames
    #: ``ws_delay`` holds and those behind them (read off the connection as they arrive, so
    #: that each is late by its own delay), and a read that a made-up frame beat to the owner.
    #: Past it, what follows waits in aiohttp's buffer, and is stamped when it is read.
    MAX_READ_AHEAD: ClassVar[int] = 64
    #: The same bound in size (characters of text frames, bytes of binary ones, 4 MiB): no
    #: frame more is read ahead once those not taken reach it (at least one always is), so
    #: that large frames held by a delay never pile up past what an owner's inbox would hold.
    MAX_READ_AHEAD_BYTES: ClassVar[int] = 4 * 2**20
    #: The longest a connection fault waits for the answer to a request sent before it, in
    #: seconds of the injector's clock after that request was sent (see the module). It covers
    #: a server's answer to a request already on its way (a round trip and the handling, well
    #: under a second for the simulator and a healthy server), and no more: a request still
    #: unanswered after that is one the server is slow to answer or never answers, or that the
    #: client gave up on, and the simulator, which ends the connection as the frame meeting the
    #: fault arrives, would not have waited for it. Meanwhile what the client sends goes
    #: nowhere, so the wait must stay short.
    STRIKE_WAIT_S: ClassVar[float] = 1.0

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse | FaultySocket,
        injector: FaultInjector,
        session: Injection | None,
        *,
        name: str,
    ) -> None:
        self._ws = ws
        # The connection's transport (aiohttp shows it only through the response it keeps,
        # while it holds its connection: read now): closing before the owner has read the
        # end, which is when aiohttp's ``closed`` turns. None if it cannot be read.
        connection = getattr(getattr(self.wrapped, "_response", None), "connection", None)
        transport = getattr(connection, "transport", None)
        self._transport: asyncio.BaseTransport | None = (
            transport if isinstance(transport, asyncio.BaseTransport) else None
        )
        self._injector = injector
        self._name = name
        self._session = session
        self._sent = 0
        self._silent = False
        self._closing = False
        #: The end handed to the owner instead of the real one (a close frame or a drop).
        self._end: WSMessage | None = None
        self._close_code: int | None = None
        #: What the owner gets next, in the order it came, each with whether it was read from
        #: the connection or made up (a fault's answer, an end).
        self._ready: collections.deque[tuple[WSMessage, bool]] = collections.deque()
        #: Frames on their way (``ws_delay`` holds them, or they queue behind one), in order,
        #: each with when it is due (on the injector's clock, never earlier than the one
        #: before it) and whether it was read from the connection.
        self._line: collections.deque[tuple[float, WSMessage, bool]] = collections.deque()
        #: The task that hands the frames of ``_line`` over as they fall due.
        self._releasing: asyncio.Task[None] | None = None
        #: The reads of the connection under way (one task at a time; see the module).
        self._reading: asyncio.Task[None] | None = None
        #: The owner waiting in receive(): anything handed over, or the read's end, wakes it.
        self._waiter: asyncio.Future[None] | None = None
        #: The connection's own end was read: there is nothing more to read.
        self._read_end = False
        #: What the read raised, for the owner's next receive() to raise.
        self._failure: BaseException | None = None
        #: The last frame sent or on its way (done: none is): each send waits for the one
        #: before it, so that frames go out in order, one behind another, a delayed one
        #: holding those after it (see the module). A future the caller's own send settles,
        #: or one of the socket's tasks in :attr:`_sends`.
        self._last_send: asyncio.Future[None] | None = None
        #: The sends the socket runs in tasks of its own, so that a frame goes out in its turn
        #: even if its sender stopped waiting: a delayed frame, and those queued behind one;
        #: each with whether its sender still waits for it. close() cancels them (a frame not
        #: written by then is dropped) and waits for them.
        self._sends: dict[asyncio.Task[None], bool] = {}
        #: Ids of the requests sent whose answers have not been read, with their types and
        #: when they were sent (on the injector's clock), oldest first; at most
        #: _REMEMBERED_IDS of them.
        self._types: collections.OrderedDict[str | int, tuple[str, float]] = (
            collections.OrderedDict()
        )
        #: A connection fault waiting for the answers to the requests sent before it, the ids
        #: of those still awaited, and the timer that bounds the wait.
        self._striking: Injection | None = None
        self._awaited: set[str | int] = set()
        self._strike_timer: asyncio.Task[None] | None = None

    # -- what the socket layer uses ---------------------------------------------------------

    @property
    def wrapped(self) -> aiohttp.ClientWebSocketResponse:
        """The aiohttp socket under the faults (the socket layer reads its TCP transport from
        it, to cut a connection whose peer stopped reading): under every wrapper, when this
        one wraps another injector's (each injector among an engine's middlewares wraps the
        socket)."""
        ws = self._ws
        return ws.wrapped if isinstance(ws, FaultySocket) else ws

    @property
    def closed(self) -> bool:
        """Whether the real connection is closed, and nothing is on its way to the owner any
        more: after an injected end it still needs :meth:`close`, as a real drop leaves the
        socket to be closed; and while frames are held (``ws_delay``) with the connection's
        own end read behind them, it is not closed yet (a close must let them go: taken for
        closed, it was skipped, and the owner waited out the delay); nor while a frame is on
        its way out in a task of the socket's (a ``delay`` holds it, or it waits behind one),
        whether its sender still waits or not: only :meth:`close` ends it (its sender gets the
        in-doubt error at once), and taken for closed, the owner skipped the close, and the task
        and its sender outlived the connection, and the engine, by what was left of the
        delay."""
        return self._ws.closed and not self._line and not any(not t.done() for t in self._sends)

    @property
    def close_code(self) -> int | None:
        """The close code: the injected one, if a fault closed the socket."""
        return self._close_code if self._close_code is not None else self._ws.close_code

    @property
    def read_ahead(self) -> int:
        """How many frames read from the connection the owner has not taken yet (held ones
        included): never more than :attr:`MAX_READ_AHEAD`."""
        return sum(1 for _, read in self._ready if read) + sum(
            1 for _, _, read in self._line if read
        )

    @property
    def _holding(self) -> bool:
        """Whether frames are on their way to the owner (held by ``ws_delay``, or behind one)."""
        return bool(self._line)

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The next frame the owner should see: a made-up one, or the next the connection
        brings (read now, or, behind a held frame, when it came), each when it is due. Once
        the socket ended (an injected end handed over, the connection's end read, or
        :meth:`close`), a ``CLOSED`` message.

        ``timeout``, as aiohttp's: seconds to wait for that frame (None or 0: no limit of its
        own; the wrapped socket's receive timeout, if it has one, still bounds each read), on
        the injector's clock. Unlike aiohttp's, a timeout does not cancel the read under way:
        the connection is not marked abnormally closed (:attr:`close_code` is unchanged), and
        the frame that read brings is the next ``receive()``'s, so nothing is lost.

        Raises:
            TimeoutError: nothing came within ``timeout`` seconds (as aiohttp's raises).
            RuntimeError: another ``receive()`` is waiting, as aiohttp's refuses.
        """
        if self._waiter is not None:
            raise RuntimeError("Concurrent call to receive() is not allowed")
        if not timeout:
            return await self._receive()
        async with timeout_after(self._injector.clock, timeout):
            msg = await self._receive()
        return msg

    async def _receive(self) -> WSMessage:
        loop = asyncio.get_running_loop()
        while True:
            ready = self._ready
            if ready:
                msg = ready.popleft()[0]
                # A place freed: the frames behind a held one are read on.
                self._read_more()
                return msg
            if self._end is not None or self._closing:
                return _CLOSED
            if not self._line:
                # What the connection ended with comes after every frame before it.
                failure = self._failure
                if failure is not None:
                    self._failure = None
                    self._read_end = True
                    raise failure
                if self._read_end:
                    return _CLOSED
            waiter = self._waiter = loop.create_future()
            try:
                self._read_more()
                await waiter
            finally:
                self._waiter = None

    async def send_str(self, data: str, compress: int | None = None) -> None:
        """Send ``data``, unless a fault on it or on the session says otherwise. In the order
        the simulator takes a frame: each in its turn, after the frames sent before it have
        gone (a delayed one included), then counted toward the session fault's
        ``after_messages`` (the frame meeting it is not put to the plan), then, unless the
        socket is silenced, decided as a request.

        A frame a ``delay`` holds, and one queued behind it, is sent by a task of the socket's
        own: a caller that stops waiting (cancelled, e.g. by its request's timeout) ends its
        wait only, and the frame still goes out in its turn, as a frame the client wrote
        reaches the simulator applying the same rule late. Those not through when their
        connection ends (:meth:`close`, or a delay ending after the connection did) are lost in
        doubt: their callers get :class:`aiohttp.ClientConnectionResetError` "Connection lost",
        as a write whose frame may have reached the peer does (see the module). A frame sent
        once the connection is closing or gone queues behind none: aiohttp refuses it at
        once."""
        ahead = self._last_send
        if ahead is not None and not ahead.done() and not self._gone():
            # Behind a frame on its way (a delayed one, or one queued behind it).
            task = self._spawn_send(self._send_behind(ahead, data, compress))
            self._last_send = task
            await self._wait_sent(task)
            return
        turn = self._last_send = asyncio.get_running_loop().create_future()
        late: asyncio.Task[None] | None = None
        try:
            held = await self._send(data, compress)
            if held is not None:
                late = self._spawn_send(self._send_late(*held, data, compress))
                # Those behind this frame wait until the delayed write is over.
                late.add_done_callback(lambda _: _settle(turn))
        finally:
            if late is None:
                _settle(turn)
        if late is not None:
            await self._wait_sent(late)

    def _spawn_send(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"le_transport.chaos send {self._name}"
        )
        self._sends[task] = True
        task.add_done_callback(self._send_done)
        return task

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self._sends.pop(task, None)
        if not task.cancelled():
            # Retrieved here: the sender may have stopped waiting (its own failure reaches it
            # through _wait_sent when it did not).
            failure = task.exception()
            if failure is not None:
                _log.debug("%s: a frame sent late failed: %r", self._name, failure)

    async def _wait_sent(self, task: asyncio.Task[None]) -> None:
        """Wait for a send the socket runs: the caller's cancellation ends its wait only
        (asyncio.wait, unlike awaiting the task, does not cancel it)."""
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            if task in self._sends:
                self._sends[task] = False
                if self._gone():
                    # The connection is gone: the frame can never go out, and no one waits.
                    task.cancel()
            raise
        if task.cancelled():
            # close() dropped it before it was through: on the wire, lost with the connection.
            raise _LostInDoubt("the socket closed before the delayed frame was through")
        task.result()

    async def _send_behind(
        self, ahead: asyncio.Future[None], data: str, compress: int | None
    ) -> None:
        await asyncio.wait({ahead})
        if self._gone():
            # Accepted while the connection was up, behind a frame on its way: on the wire
            # too, and lost with it (a frame sent once it was gone queues behind none).
            raise _LostInDoubt("the connection ended while the frame waited behind a delayed one")
        try:
            held = await self._send(data, compress)
        except aiohttp.ClientConnectionResetError as exc:
            if isinstance(exc, _LostInDoubt):
                raise
            # Refused by aiohttp as never begun (its end not read yet), or dropped by a fault:
            # accepted while the connection was up, so lost in doubt, never sent again.
            why = "the connection ended while the frame waited behind a delayed one"
            raise _LostInDoubt(why) from exc
        if held is not None:
            await self._send_late(*held, data, compress)

    async def _send(self, data: str, compress: int | None) -> tuple[float, dict[str, Any]] | None:
        """Send ``data`` now, in its turn; or, when a ``delay`` holds it, say for how long and
        what it holds (the parsed frame), for :meth:`_send_late` to send it."""
        if self._ended():
            return None
        if self._gone():
            # The connection is closing or gone (a send that waited its turn behind a delayed
            # one may find it so): the frame reaches no server, so it is neither counted nor
            # put to the plan, and aiohttp refuses it as it refuses any write on it.
            await self._ws.send_str(data, compress)
            return None
        if self._striking is not None:
            # A fault is ending the connection: what the client writes goes nowhere, and is
            # neither counted nor decided (the simulator never sees it).
            return None
        self._sent += 1
        session = self._session
        if session is not None and self._sent >= _after(session):
            # The after_messages-th frame meets the fault: never sent, so never answered (the
            # simulator strikes as it arrives, without answering it).
            self._session = None
            self._strike_when_answered(session)
            return None
        if self._silent:
            # A half-open socket: what the client writes goes nowhere, and is not put to the
            # plan (the simulator decides nothing on a silenced socket).
            return None
        frame = _parse(data)
        injection = self._decide_sent(frame)
        if injection is not None and frame is not None:
            if isinstance(injection.fault, Delay):
                # In its turn: the frames sent after it wait behind it (send_str).
                return injection.delay_s, frame
            if not self._apply_to_sent(injection, frame):
                return None
        await self._write(frame, data, compress)
        return None

    async def _send_late(
        self, delay_s: float, frame: dict[str, Any], data: str, compress: int | None
    ) -> None:
        """Send a frame a ``delay`` holds, once it is over (in a task of the socket's)."""
        await self._injector.clock.sleep(delay_s)
        if self._gone():
            # The connection ended during the delay: the frame was lost with it, in doubt, not
            # refused as never written (aiohttp's refusal would have it sent again).
            self._forget(frame)
            raise _LostInDoubt("the connection ended while the frame was delayed")
        try:
            await self._write(frame, data, compress)
        except aiohttp.ClientConnectionResetError as exc:
            # Its end not read yet (the owner busy in on_frame, not in receive()): aiohttp
            # refuses the write as never begun, which would have it sent again.
            self._forget(frame)
            if isinstance(exc, _LostInDoubt):
                raise
            raise _LostInDoubt("the connection ended while the frame was delayed") from exc

    async def _write(self, frame: dict[str, Any] | None, data: str, compress: int | None) -> None:
        if self._ended() or self._striking is not None or self._silent:
            # A fault struck while this one was delayed: it goes nowhere.
            self._forget(frame)
            return
        self._mark_sent(frame)
        await self._ws.send_str(data, compress)

    def _gone(self) -> bool:
        """Whether the real connection is closing or gone (:meth:`close` began, its end was
        read, or its transport is closing though the owner has not read the end yet): no frame
        reaches the server on it any more. Asked as a frame is taken: one taken so is refused
        by aiohttp as never begun (sent again on the next connection), never held in doubt."""
        if self._closing or self._ws.closed:
            return True
        transport = self._transport
        return transport is not None and transport.is_closing()

    def _ended(self) -> bool:
        """Whether an injected end makes a frame the client writes go nowhere: after a close
        frame the owner has not read yet, as when a real server closed (the connection is still
        open and the server reads no more). After a drop, the write fails, as on a connection
        that is gone (the socket layer sends the request again on its next connection).

        Raises:
            aiohttp.ClientConnectionResetError: the connection was dropped (injected).
        """
        end = self._end
        if end is None:
            return False
        if end.type is WSMsgType.CLOSE:
            return True
        raise aiohttp.ClientConnectionResetError("the connection was dropped (injected)")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close the real connection; an owner waiting in :meth:`receive` gets ``CLOSING``
        at once. A read under way ends with it; the frames still held are let go."""
        if not self._closing:
            self._closing = True
            # As aiohttp does for a receive() waiting when the socket is closed.
            self._hand_over(WSMessage(WSMsgType.CLOSING, None, None), read=False)
        self._striking = None
        self._line.clear()
        # The frames a delay still holds, and those behind them, are lost with the
        # connection: on the wire, in doubt (their senders get "Connection lost", never a
        # refusal that would have them sent again; see the module).
        sends = [task for task in self._sends if not task.done()]
        for task in sends:
            task.cancel()
        if sends:
            await asyncio.wait(sends)
        for timer in (self._strike_timer, self._releasing):
            if timer is not None:
                timer.cancel()
                await asyncio.wait({timer})
        self._strike_timer = self._releasing = None
        reading = self._reading
        try:
            # A read waiting in aiohttp's receive() is ended by aiohttp's close, which hands
            # it a CLOSING of its own first: the handshake of a socket without faults.
            closed = await self._ws.close(code=code, message=message)
            if reading is not None:
                await asyncio.wait({reading})
        finally:
            # Cut short (cancelled, or aiohttp failed): the read must not outlive the close.
            if reading is not None and not reading.done():
                reading.cancel()
        return closed

    # -- the session's fault ----------------------------------------------------------------

    def strike_if_due(self) -> None:
        """Apply a session fault whose ``after_messages`` is 0: it strikes as the socket opens."""
        session = self._session
        if session is not None and _after(session) == 0:
            self._session = None
            self._strike(session)

    def _strike_when_answered(self, injection: Injection) -> None:
        """A connection-level fault, once the requests sent before it are answered, each
        waited for at most :attr:`STRIKE_WAIT_S` after it was sent (see the module); at once
        if none is awaited."""
        if self._striking is not None:
            # One is ending the connection already: the first fault wins, as at the simulator
            # (send_str decides nothing meanwhile, so this does not happen through it).
            return
        since = self._injector.clock.now() - self.STRIKE_WAIT_S
        awaited = {req_id for req_id, (_, sent) in self._types.items() if sent > since}
        if not awaited or self._silent or self._end is not None or self._closing:
            self._strike(injection)
            return
        # The last of the answers it waits for is due STRIKE_WAIT_S after the last request.
        wait = max(self._types[req_id][1] for req_id in awaited) - since
        self._striking = injection
        self._awaited = awaited
        old = self._strike_timer
        if old is not None:
            old.cancel()
        self._strike_timer = asyncio.get_running_loop().create_task(
            self._strike_later(wait), name=f"le_transport.chaos strike {self._name}"
        )

    async def _strike_later(self, wait: float) -> None:
        await self._injector.clock.sleep(wait)
        if self._strike_timer is not asyncio.current_task():
            return  # replaced (its fault struck, or was given up): not this timer's to strike
        self._strike_timer = None
        self._strike_due()

    def _strike_if_answered(self) -> None:
        """Apply the waiting connection fault if the answers it waited for have all been
        handed over (none awaited, none still held)."""
        if self._striking is not None and not self._awaited and not self._line:
            self._strike_due()

    def _strike_due(self) -> None:
        """Apply the waiting connection fault now."""
        injection, self._striking = self._striking, None
        self._awaited.clear()
        timer, self._strike_timer = self._strike_timer, None
        if timer is not None:
            timer.cancel()
        if injection is not None and self._end is None and not self._closing:
            self._strike(injection)

    def _strike(self, injection: Injection) -> None:
        """A connection-level fault: a close frame, a drop, or silence from now on."""
        fault = injection.fault
        # The rule id is a plan file's text, escaped as the plan's decision log escapes it: it
        # must not start a log line of its own or move a terminal's cursor.
        rule = _printable(injection.rule_id)
        _log.info(
            "%s: injecting %s (rule %s)",
            self._name,
            fault.kind,
            rule,
            extra={"socket": self._name, "rule": rule, "fault": fault.kind},
        )
        if isinstance(fault, WsSilence):
            # The data frames still held are not handed over (_release_due).
            self._silent = True
            return
        if isinstance(fault, WsClose):
            self._close_code = fault.code
            self._finish(WSMessage(WSMsgType.CLOSE, fault.code, fault.reason))
            return
        assert isinstance(fault, WsDrop)
        # What aiohttp reports after an abrupt end, whatever the real close does later.
        self._close_code = aiohttp.WSCloseCode.ABNORMAL_CLOSURE
        self._finish(
            WSMessage(
                WSMsgType.ERROR,
                aiohttp.ClientConnectionResetError("the connection was dropped (injected)"),
                None,
            )
        )

    def _finish(self, end: WSMessage) -> None:
        """Hand the owner ``end`` after what it has not taken yet (frames the server sent
        before the fault struck, and due by now), instead of anything more from the
        connection: the frames still held are lost, as the simulator's are when a fault ends
        its socket."""
        self._move_due()
        self._end = end
        self._line.clear()
        releasing, self._releasing = self._releasing, None
        if releasing is not None:
            releasing.cancel()  # waited for by close()
        # A read waiting for the connection goes on until close(), and what it brings is lost.
        self._hand_over(end, read=False)

    def _hand_over(self, msg: WSMessage, *, read: bool) -> None:
        """Queue ``msg`` for the owner (``read``: it came from the connection) and wake it."""
        self._ready.append((msg, read))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- requests the client sends ----------------------------------------------------------

    def _decide_sent(self, frame: dict[str, Any] | None) -> Injection | None:
        if frame is None or frame.get("kind") != "req":
            return None
        type_ = str(frame.get("type", ""))
        req_id = _frame_id(frame, "id")
        if req_id is not None:
            types = self._types
            # Not sent yet (a Delay may hold it): a strike waits for no answer to it until it
            # goes out (_mark_sent), as the simulator, which has not read it, does not.
            types[req_id] = (type_, -math.inf)
            types.move_to_end(req_id)  # oldest first, an id sent again included
            if len(types) > _REMEMBERED_IDS:
                types.popitem(last=False)
        return self._injector.message_sent(type_)

    def _mark_sent(self, frame: dict[str, Any] | None) -> None:
        """A request going out now: from now on a strike waits for its answer (a while)."""
        req_id = None if frame is None else _frame_id(frame, "id")
        if req_id is not None:
            known = self._types.get(req_id)
            if known is not None:
                self._types[req_id] = (known[0], self._injector.clock.now())

    def _forget(self, frame: dict[str, Any] | None) -> None:
        """A request not sent after all: the connection will bring no answer to it."""
        req_id = None if frame is None else _frame_id(frame, "id")
        if req_id is not None:
            self._types.pop(req_id, None)

    def _apply_to_sent(self, injection: Injection, frame: dict[str, Any]) -> bool:
        """Apply a fault other than a ``delay`` (:meth:`_send` holds the frame then) to a
        request the client is sending; whether to send it after all."""
        fault = injection.fault
        type_ = str(frame.get("type", ""))
        # Not sent: no answer comes from the connection (a strike does not wait for one).
        self._forget(frame)
        if isinstance(fault, (Status, WsAppError)):
            body = fault.response_body() if isinstance(fault, WsAppError) else fault.socket_body()
            answer = {
                "kind": "resp",
                "reqId": frame.get("id"),
                "code": fault.code,
                "body": body,
                "type": f"{type_}$Response",
            }
            if not self._silent and self._striking is None:
                text = json.dumps(answer)
                # Put to the outbound rules (ws_delay, ws_drop_message on "<type>$Response")
                # as the simulator's answer is, then behind the frames on their way, as the
                # simulator sends it on their stream.
                hold = self._hold(text)
                if hold is not None:
                    self._queue(WSMessage(WSMsgType.TEXT, text, None), read=False, hold=hold)
            return False
        if isinstance(fault, Hang):
            return False
        # ws_close, ws_drop, ws_silence: the connection, instead of this request.
        self._strike_when_answered(injection)
        return False

    # -- frames the server sends ------------------------------------------------------------

    def _wants_read(self) -> bool:
        """Whether to read the connection now: while frames are held (those behind them are on
        their way too), or for an owner waiting with nothing to hand it; never past
        :attr:`MAX_READ_AHEAD`, nor once the socket ended or the read failed."""
        if (
            self._end is not None
            or self._closing
            or self._read_end
            or self._failure is not None
            or self.read_ahead >= self.MAX_READ_AHEAD
            or self._read_ahead_bytes() >= self.MAX_READ_AHEAD_BYTES
        ):
            return False
        line = self._line
        if line and line[-1][0] > self._injector.clock.now():
            return True
        return self._waiter is not None and not self._ready and not line

    def _read_ahead_bytes(self) -> int:
        """The size of the frames read from the connection that the owner has not taken yet
        (characters of a text frame, bytes of a binary one)."""
        return sum(_size(msg) for msg, read in self._ready if read) + sum(
            _size(msg) for _, msg, read in self._line if read
        )

    def _read_more(self) -> None:
        """Start reading the connection, if no read is under way and one is wanted."""
        if self._reading is None and self._wants_read():
            reading = self._reading = asyncio.get_running_loop().create_task(
                self._read(), name=f"le_transport.chaos reader {self._name}"
            )
            reading.add_done_callback(self._read_done)

    async def _read(self) -> None:
        """Read the connection, frame by frame, for as long as a read is wanted
        (:meth:`_wants_read`), putting each frame in its place (:meth:`_take`)."""
        ws = self._ws
        while True:
            msg = await ws.receive()
            if not self._take(msg) or not self._wants_read():
                return

    def _take(self, msg: WSMessage) -> bool:
        """A frame read from the connection, stamped now: lost (``ws_drop_message``, a
        silenced socket), handed over, or queued until it is due (``ws_delay``, or behind a
        held frame). False once nothing more is to be read (the connection's end, or the
        owner's)."""
        if self._end is not None or self._closing:
            # The owner has its end already: what came after it is lost, as in a drop.
            return False
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            if self._silent:
                return True
            hold = 0.0
            if msg.type is WSMsgType.TEXT:
                held = self._hold(msg.data)
                if held is None:
                    # Lost: if it was the last answer a fault waited for, it strikes now.
                    self._strike_if_answered()
                    return True
                hold = held
            self._queue(msg, read=True, hold=hold)
            self._strike_if_answered()
            return True
        # The real end (a close frame, an error, closed): the owner's to see, after the frames
        # before it, and a fault waiting to strike has nothing left to strike.
        self._read_end = True
        self._striking = None
        if self._strike_timer is not None:
            self._strike_timer.cancel()
            self._strike_timer = None
        self._queue(msg, read=True)
        return False

    def _queue(self, msg: WSMessage, *, read: bool, hold: float = 0.0) -> None:
        """Hand ``msg`` over ``hold`` seconds from now, and never before the frames queued
        before it (one stream: nothing overtakes a held frame); at once if it is due now and
        none is held."""
        line = self._line
        now = self._injector.clock.now()
        due = now + hold
        if line:
            due = max(due, line[-1][0])
        elif due <= now:
            self._hand_over(msg, read=read)
            return
        line.append((due, msg, read))
        releasing = self._releasing
        if releasing is None or releasing.done():
            self._releasing = asyncio.get_running_loop().create_task(
                self._release(), name=f"le_transport.chaos held frames {self._name}"
            )

    async def _release(self) -> None:
        """Hand the held frames over as they fall due, on the injector's clock."""
        clock = self._injector.clock
        line = self._line
        while line:
            wait = line[0][0] - clock.now()
            if wait > 0:
                await clock.sleep(wait)
            self._release_due()

    def _release_due(self) -> None:
        """Hand over the held frames that are due; a fault that waited for them strikes."""
        self._move_due()
        self._strike_if_answered()

    def _move_due(self) -> None:
        """Move the held frames that are due to the owner's queue, in order (a silenced
        socket's data frames are lost: it hands over nothing more), and wake the owner."""
        line = self._line
        now = self._injector.clock.now()
        popped = False
        while line and line[0][0] <= now:
            _, msg, read = line.popleft()
            popped = True
            if self._silent and msg.type in _DATA:
                continue
            self._ready.append((msg, read))
        if popped:
            # Even if all were lost: the owner may be waiting for the line to empty (the
            # connection's failure comes after it).
            self._wake()

    def _read_done(self, reading: asyncio.Task[None]) -> None:
        """The read ended (nothing more wanted, cancelled or failed): let the owner look."""
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            failure = reading.exception()
            if failure is not None:
                self._failure = failure
        self._wake()

    def _hold(self, text: str) -> float | None:
        """Seconds to hold a frame from the server (0: none), or None to lose it."""
        frame = _parse(text)
        if frame is None:
            return 0.0
        type_ = frame.get("type")
        if not isinstance(type_, str):
            type_ = ""
        req_id = _frame_id(frame, "reqId")
        if frame.get("kind") == "resp" and req_id is not None:
            sent = self._types.pop(req_id, None)
            type_ = type_ or f"{sent[0] if sent is not None else ''}$Response"
            # Answered: a fault waiting for it strikes once it is handed over (_take,
            # _release_due).
            self._awaited.discard(req_id)
        injection = self._injector.message_arriving(type_)
        if injection is None:
            return 0.0
        fault = injection.fault
        # Escaped: the type is the server's text, the rule id a plan file's.
        rule = _printable(injection.rule_id)
        _log.debug(
            "%s: %s on an incoming %s (rule %s)",
            self._name,
            fault.kind,
            _printable(type_[:80]),
            rule,
            extra={"socket": self._name, "rule": rule, "fault": fault.kind},
        )
        if isinstance(fault, WsDropMessage):
            return None
        assert isinstance(fault, WsDelay)
        return injection.delay_s


def _settle(turn: asyncio.Future[None]) -> None:
    """Mark a send the caller made itself as over: the sends behind it may go."""
    if not turn.done():
        turn.set_result(None)


def _after(injection: Injection) -> int:
    fault = injection.fault
    assert isinstance(fault, (WsClose, WsDrop, WsSilence))
    return fault.after_messages


def _frame_id(frame: dict[str, Any], key: str) -> str | int | None:
    """A frame's request id (``id`` or ``reqId``), if it is one a request can be known by: a
    str or an int. Anything else (a list, an object, a bool) is not remembered, and so cannot
    fail a read or a send."""
    value = frame.get(key)
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _size(msg: WSMessage) -> int:
    data = msg.data
    return len(data) if isinstance(data, (str, bytes, bytearray)) else 0


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: nested too deep to parse. Not a request or an answer the plan can
        # match, and passed on as it is, as without faults (raised, it ended the connection
        # as a failed read, or made a send taken for a broken connection).
        return None
    return value if isinstance(value, dict) else None
