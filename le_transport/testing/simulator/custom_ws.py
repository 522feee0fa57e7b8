"""The simulator's socket faults on a WebSocket a custom route's handler opened.

A custom route (:meth:`~le_transport.testing.simulator.Simulator.add_route`) whose handler
upgrades (``ws = web.WebSocketResponse(); await ws.prepare(request)``) is struck by the plan's
socket rules as the simulator's own sockets are (:mod:`.sockets`):

- unit ``ws_session``, decided once per upgrade, before the handler runs (matched on ``GET``,
  the path and the route's ``service``): ``ws_reject_handshake`` answers the upgrade with its
  status without calling the handler; ``delay`` calls it that much later on the clock;
  ``ws_close``/``ws_drop``/``ws_silence`` strike the socket once the client has sent
  ``after_messages`` frames (0: as soon as the handler first reads or sends).
- unit ``ws_message`` on a request frame from the client (a JSON object with
  ``"kind": "req"``, matched on its ``type``): ``status``/``ws_app_error`` answer it with a
  ``resp`` frame of that code (the handler never sees it), ``hang`` loses it, ``delay`` hands it
  over late, ``ws_close``/``ws_drop``/``ws_silence`` strike the socket.
- unit ``ws_message`` on each text frame the handler sends (matched on its ``type``, ``""``
  when it is not a JSON object): ``ws_drop_message`` never sends it, ``ws_delay`` holds it on
  the clock, later frames queueing behind it in order.

How a struck socket looks to the handler: after a close or a drop its next ``receive()`` (and
so its ``async for``) ends the socket (a ``CLOSED`` message) and whatever it sends is
discarded; a silenced socket (a half-open one, as :class:`~le_transport.chaos.WsSilence` defines
it) sends nothing back (answers, pushes, pongs) and hands the handler nothing more the client
sends, the frame that met the silence included (its ``receive()`` waits on, for the client's
close or its own timeout), as the simulator's own sockets leave a silenced socket's frames
unprocessed and the client-side injector never sends them. This is done by wrapping the
handler's own :class:`aiohttp.web.WebSocketResponse` (its ``receive``, ``send_str``, ``send_bytes``,
``send_frame``, ``ping``, ``pong`` and ``close``), found through the application's
``on_response_prepare`` signal when the handler prepares it; the handler's code is unchanged.
Binary frames the handler sends are not asked about (LiveEngage frames are text), but wait
behind a held frame as everything it sends does. aiohttp's own ``heartbeat=`` pings do not go
through the wrapper: a silenced route should not set it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from aiohttp.http import WS_CLOSED_MESSAGE, WSMessage

from ..._json import loads_strict
from ...chaos.plan import (
    WS_MESSAGE_FAULTS,
    WS_OUTBOUND_FAULTS,
    Delay,
    Hang,
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
    from .server import Simulator

__all__ = ["CUSTOM_SOCKET_KEY", "CustomSocket"]

_log = logging.getLogger("le_transport.simulator")

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)


class CustomSocket:
    """The plan's socket faults on the WebSocket one custom route's handler opens (one per
    upgrade request; see the module).

    Made by the simulator before the handler runs, with the session's fault already decided
    (``session_fault``: a close, drop or silence to strike after ``after_messages`` frames
    from the client, or None); :meth:`attach` wraps the handler's response when it is
    prepared, and :meth:`finish` stops what is still held once the handler returns."""

    def __init__(
        self,
        sim: Simulator,
        request: web.Request,
        session_fault: WsClose | WsDrop | WsSilence | None,
        *,
        name: str,
    ) -> None:
        self._sim = sim
        self._request = request
        self._name = name
        self.session_fault = session_fault
        #: Data frames received from the client so far (what ``after_messages`` counts).
        self.received = 0
        #: Whether a fault ended the socket (a close or a drop).
        self.ended = False
        #: Whether a fault silenced it (nothing more is sent, nor handed to the handler).
        self.silent = False
        #: Text frames a ``ws_drop_message`` fault kept from the client, in order.
        self.dropped: list[str] = []
        self._ws: web.WebSocketResponse | None = None
        #: Frames waiting behind a held one, in order: (when due, opcode, payload).
        self._held: collections.deque[tuple[float, WSMsgType, str | bytes]] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        #: A frame from the client a ``delay`` holds: (when due on the clock, the frame). It
        #: stays across ``receive()`` calls that time out first, as aiohttp keeps a frame its
        #: ``receive(timeout=...)`` did not wait for.
        self._late: tuple[float, WSMessage] | None = None

    # -- wrapping ------------------------------------------------------------------------------

    def attach(self, ws: web.WebSocketResponse) -> None:
        """Wrap ``ws``, the response the handler is preparing: its reads and sends go through
        the plan from now on (once: a second response of the same request is left alone)."""
        if self._ws is not None:
            return
        self._ws = ws
        # Bound before they are replaced: the wrappers call these.
        self._receive = ws.receive
        self._send_str = ws.send_str
        self._send_bytes = ws.send_bytes
        self._send_frame = ws.send_frame
        self._ping = ws.ping
        self._pong = ws.pong
        self._close = ws.close
        ws.receive = self.receive  # type: ignore[method-assign]
        ws.send_str = self.send_str  # type: ignore[method-assign]
        ws.send_bytes = self.send_bytes  # type: ignore[method-assign]
        ws.send_frame = self.send_frame  # type: ignore[method-assign]
        ws.ping = self.ping  # type: ignore[method-assign]
        ws.pong = self.pong  # type: ignore[method-assign]
        ws.close = self.close  # type: ignore[method-assign]

    async def finish(self, *, flush: bool = True) -> None:
        """The handler ended: send what is still held, when it is due (``flush``: it
        returned; a delay is not a drop), or forget it (it failed or was cancelled: the
        simulator stopping), and stop the task sending it."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            if flush and self._may_still_send():
                await writer
            else:
                self._held.clear()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        self._held.clear()
        self._late = None
        self._ws = None

    def drop(self) -> None:
        """The simulator is stopping: drop the connection without a close frame, as its own
        sockets are dropped, whatever the handler is doing (waiting on a frame, a delay, or
        its own close, which would wait for the client's close frame). The socket is ended
        as by a ``ws_drop`` fault: the handler's next ``receive()`` answers the end, what it
        sends is discarded, and its ``close()`` waits for no held frame."""
        self.ended = True
        self._held.clear()
        self._late = None
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    # -- what the handler reads ----------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The handler's ``ws.receive()``: the client's frames, through the plan.

        ``timeout`` (None: the response's own ``receive_timeout``, as aiohttp reads it)
        bounds the whole call, a ``delay`` on a frame included (on the simulator's clock):
        :class:`TimeoutError` once it has passed with no frame handed over, as aiohttp's own;
        a delayed frame is then handed over by a later call, when due. A silenced socket's
        data frames are not handed over: the call waits on for a control frame (the client's
        close) or its timeout."""
        if not timeout:
            timeout = getattr(self._ws, "_receive_timeout", None)
        clock = self._sim.clock
        deadline = None if not timeout else clock.now() + timeout
        while True:
            if self.ended or await self._strike_session():
                return await self._after_end(timeout)
            if self._late is not None:
                kept = self._late
                due, late = kept
                due_now = await self._wait_late(due, deadline)
                if self._late is not kept:  # closed or dropped meanwhile: the frame is gone
                    return await self._after_end(timeout)
                self._late = None
                if not due_now:  # the simulator is stopping: the connection is dropped
                    return await self._after_end(timeout)
                return late
            left = timeout
            if deadline is not None:
                left = deadline - clock.now()
                if left <= 0:
                    raise TimeoutError  # (0 would be no timeout to aiohttp)
            msg: WSMessage = await self._receive(left)
            if msg.type not in _DATA:
                return msg
            self.received += 1
            if await self._strike_session():
                return await self._after_end(timeout)
            if self.silent:
                continue  # half-open: the frame goes nowhere, the handler never sees it
            frame = _frame(msg.data)
            if frame is None or frame.get("kind") != "req":
                return msg
            answer = await self._request_fault(frame, msg)
            if answer == "end":
                return await self._after_end(timeout)
            if answer == "deliver":
                return msg
            # "answered": the fault took the frame's place, read the next one; "late": a
            # delay holds it, handed over when due.

    async def _wait_late(self, due: float, deadline: float | None) -> bool:
        """Wait on the clock until a delayed frame is ``due``: True then, False if the
        simulator began stopping first; :class:`TimeoutError` if ``deadline`` (the handler's
        ``receive`` timeout) comes first, the frame kept for a later call."""
        clock = self._sim.clock
        until = due if deadline is None else min(due, deadline)
        if not await self._sim._pause(until - clock.now()):
            return False
        if deadline is not None and deadline < due:
            raise TimeoutError
        return True

    async def _request_fault(self, frame: dict[str, Any], msg: WSMessage) -> str:
        """Apply the plan (unit ``ws_message``) to a request frame from the client (``msg``):
        "deliver" it to the handler, "answered" (the fault answered or lost it), "late" (a
        delay holds it: :attr:`_late`), or "end" (the fault ended the socket)."""
        sim = self._sim
        if not sim.faults.run.plan.rules:
            return "deliver"
        type_ = str(frame.get("type", ""))
        injection = sim.faults.run.decide(
            "ws_message", method="WS", path=type_, at=sim.clock.now(), kinds=WS_MESSAGE_FAULTS
        )
        if injection is None:
            return "deliver"
        fault = injection.fault
        # Escaped: the type is the client's text, the rule id a plan file's.
        rule = _printable(injection.rule_id)
        _log.debug(
            "custom socket %s: %s on %s (rule %s)",
            self._name,
            fault.kind,
            _printable(type_[:80]),
            rule,
            extra={"rule": rule, "fault": fault.kind},
        )
        req_id = frame.get("id")
        if isinstance(fault, Status):
            await self._resp(req_id, type_, fault.code, fault.socket_body())
            return "answered"
        if isinstance(fault, WsAppError):
            await self._resp(req_id, type_, fault.code, fault.response_body())
            return "answered"
        if isinstance(fault, Hang):
            return "answered"
        if isinstance(fault, (WsClose, WsDrop)):
            await self._end(fault)
            return "end"
        if isinstance(fault, WsSilence):
            self.silent = True
            return "answered"  # the first frame never answered: not handed over either
        assert isinstance(fault, Delay)
        self._late = (sim.clock.now() + injection.delay_s, msg)
        return "late"

    async def _resp(self, req_id: Any, type_: str, code: int, body: Any) -> None:
        frame = {"kind": "resp", "reqId": req_id, "code": code, "body": body}
        await self.send_str(json.dumps({**frame, "type": f"{type_}$Response"}))

    async def _after_end(self, timeout: float | None) -> WSMessage:
        """What ``receive()`` gives once a fault ended the socket: the end (a close's
        ``CLOSED``; after a drop, the connection's error or end, frames still buffered
        skipped)."""
        ws = self._ws
        if ws is None:
            return WS_CLOSED_MESSAGE
        if ws.closed:
            # aiohttp's own answer on a closed socket: CLOSED, then RuntimeError after a few
            # reads, which ends a handler that loops on receive() without looking (answered
            # here every time without a wait, such a loop held the event loop for ever).
            return await self._receive(timeout)
        while True:
            msg: WSMessage = await self._receive(timeout)
            if msg.type not in _DATA:
                return msg

    # -- the session's fault -------------------------------------------------------------------

    async def _strike_session(self) -> bool:
        """Apply the session's fault if its moment has come; True if it ended the socket."""
        fault = self.session_fault
        if fault is None or self.received < fault.after_messages:
            return False
        self.session_fault = None
        if isinstance(fault, WsSilence):
            self.silent = True
            return False
        await self._end(fault)
        return True

    async def _end(self, fault: WsClose | WsDrop) -> None:
        """Close with the fault's code, or drop the connection without a close frame."""
        self.ended = True
        self._held.clear()
        ws = self._ws
        if isinstance(fault, WsDrop):
            transport = self._request.transport
            if transport is not None:
                transport.abort()
            return
        if ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=fault.code, message=fault.reason.encode())

    # -- what the handler sends ----------------------------------------------------------------

    async def send_str(self, data: str, compress: int | None = None) -> None:
        """The handler's ``ws.send_str()`` (and ``send_json``): sent through the plan, unless
        a fault ended or silenced the socket."""
        if self.ended or await self._strike_session() or self.silent:
            return
        hold = self._outbound(data)
        if hold is None:
            self.dropped.append(data)
            return
        if hold <= 0 and not self._held:
            await self._send_str(data, compress)
            return
        self._hold(max(0.0, hold), WSMsgType.TEXT, data)

    def _hold(self, hold: float, opcode: WSMsgType, data: str | bytes) -> None:
        """Queue a frame ``hold`` seconds from now, behind every frame held before it (one
        stream: nothing overtakes a held frame), and start the task that sends them."""
        due = self._sim.clock.now() + hold
        if self._held:
            due = max(due, self._held[-1][0])
        self._held.append((due, opcode, data))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._send_held(), name=f"le_transport.simulator custom socket {self._name}"
            )

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        """The handler's ``ws.send_bytes()``: sent (behind any held frame), unless a fault
        ended or silenced the socket. Not asked about: LiveEngage frames are text."""
        if self.ended or await self._strike_session() or self.silent:
            return
        if self._held:
            self._hold(0.0, WSMsgType.BINARY, bytes(data))
            return
        await self._send_bytes(data, compress)

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        """The handler's ``ws.send_frame()``: as :meth:`send_bytes` (a text frame is not asked
        about either)."""
        if self.ended or await self._strike_session() or self.silent:
            return
        if self._held:
            self._hold(0.0, opcode, bytes(message))
            return
        await self._send_frame(message, opcode, compress)

    async def ping(self, message: bytes = b"") -> None:
        """The handler's ``ws.ping()``: none once silenced or ended. (aiohttp's own
        ``heartbeat=`` pings do not come through here: a silenced route should not set it.)"""
        if self.ended or await self._strike_session() or self.silent:
            return
        await self._ping(message)

    async def pong(self, message: bytes = b"") -> None:
        """The pong to a client's ping (aiohttp's autoping too): none once silenced."""
        if self.ended or self.silent:
            return
        await self._pong(message)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """The handler's ``ws.close()``: after the frames still held are sent (a delay is not
        a drop). A client frame a ``delay`` still holds is forgotten, as aiohttp's close reads
        away what is buffered: the next ``receive()`` answers ``CLOSED`` at once."""
        writer = self._writer
        if writer is not None and not writer.done() and self._may_still_send():
            await writer
        self._late = None
        return await self._close(code=code, message=message, drain=drain)

    def _may_still_send(self) -> bool:
        """Whether held frames can still go out, so that a close or the handler's return
        should wait for them: not once a fault ended or silenced the socket, nor once the
        client is closing it (aiohttp answers the client's close by calling ``close()``,
        which must not wait for a frame due later, nor hold the client's close)."""
        ws = self._ws
        return not (
            self.ended
            or self.silent
            or ws is None
            or ws.closed
            or getattr(ws, "_closing", False)  # the client's close frame has arrived
        )

    def _outbound(self, data: str) -> float | None:
        """Seconds to hold a frame the handler sends (0: at once), or None to drop it."""
        sim = self._sim
        if not sim.faults.run.plan.rules:
            return 0.0
        frame = _frame(data)
        type_ = "" if frame is None else str(frame.get("type", ""))
        injection = sim.faults.run.decide(
            "ws_message", method="WS", path=type_, at=sim.clock.now(), kinds=WS_OUTBOUND_FAULTS
        )
        if injection is None:
            return 0.0
        fault = injection.fault
        # Escaped: the type is the handler's text, the rule id a plan file's.
        rule = _printable(injection.rule_id)
        _log.debug(
            "custom socket %s: %s on an outgoing %s (rule %s)",
            self._name,
            fault.kind,
            _printable(type_[:80]),
            rule,
            extra={"rule": rule, "fault": fault.kind},
        )
        if isinstance(fault, WsDropMessage):
            return None
        assert isinstance(fault, WsDelay)
        return injection.delay_s

    async def _send_held(self) -> None:
        clock = self._sim.clock
        while self._held:
            due, opcode, data = self._held[0]
            wait = due - clock.now()
            if wait > 0:
                await clock.sleep(wait)
            if self.ended or self.silent or self._ws is None or self._ws.closed:
                self._held.clear()
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                if opcode is WSMsgType.TEXT and isinstance(data, str):
                    await self._send_str(data, None)
                else:
                    payload = data.encode() if isinstance(data, str) else data
                    await self._send_frame(payload, opcode, None)
            # Popped only once sent, so a frame sent meanwhile queues behind this one (unless
            # a drop or a fault emptied the queue while it was being sent).
            if self._held:
                self._held.popleft()


#: Where the simulator keeps a custom route's :class:`CustomSocket` on its upgrade request.
CUSTOM_SOCKET_KEY: web.RequestKey[CustomSocket] = web.RequestKey(
    "le_transport.simulator custom socket", CustomSocket
)


def _frame(data: object) -> dict[str, Any] | None:
    """A text frame's JSON object, or None (not text, not JSON, not an object). Read strictly,
    as the simulator's own sockets read (``NaN`` and ``Infinity`` are not JSON: a plan that
    answered such a frame sent ``"reqId": NaN``, which no client's parser reads)."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", "replace")
    if not isinstance(data, str):
        return None
    try:
        frame = loads_strict(data)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None
