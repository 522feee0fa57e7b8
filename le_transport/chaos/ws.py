"""Client-side socket faults: an open WebSocket wrapped so that the plan's socket kinds strike it.

:meth:`FaultInjector.wrap_socket <le_transport.chaos.FaultInjector.wrap_socket>` wraps the
aiohttp socket an engine's socket just opened (the socket layer asks for it when its engine has
an active injector among its middlewares), and the owner of the socket reads and writes through
the wrapper as it would through aiohttp's. It mirrors what the simulator does on the server side
of the same plan, so one plan can be pointed at either:

- **Per session** (unit ``ws_session``, decided when the socket opens): ``delay`` makes the
  open slower; ``ws_close`` hands the owner a close frame with the fault's code, ``ws_drop`` an
  abrupt end (the owner sees 1006), ``ws_silence`` swallows every frame from then on (a
  half-open socket: only the keepalive can find it); each strikes once the client has sent
  ``after_messages`` frames (0: at once).
- **Per request the client sends** (unit ``ws_message``, matched on the frame's ``type``, the
  kinds of :data:`~le_transport.chaos.plan.WS_MESSAGE_FAULTS`): ``status`` and ``ws_app_error``
  answer it with a ``resp`` frame carrying the code, **without sending it** (the server never
  saw it); ``hang`` never sends it and nothing answers; ``delay`` sends it late;
  ``ws_close``, ``ws_drop`` and ``ws_silence`` strike the connection instead of sending it.
- **Per frame the server sends** (unit ``ws_message``, matched on its ``type``, e.g.
  ``.ams.ms.PublishEvent$Response``; the kinds of
  :data:`~le_transport.chaos.plan.WS_OUTBOUND_FAULTS`): ``ws_drop_message`` loses it,
  ``ws_delay`` holds it, later frames queueing behind it in order.

A task reads the real socket into a queue, so that a made-up answer can reach an owner that is
waiting for the next frame; it ends with the connection. While faults are on, that read does not
stop when the owner's inbox is full: a chaos run does not exercise the inbox's flow control.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMessage, WSMsgType

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
)

if TYPE_CHECKING:
    from .injector import FaultInjector

__all__ = ["FaultySocket"]

_log = logging.getLogger("le_transport.chaos")

#: Ids of requests whose answers are still awaited, remembered to match a ``resp`` to its
#: request's type. Bounded: a socket that never gets its answers must not grow without end.
_REMEMBERED_IDS = 4096


class FaultySocket:
    """An aiohttp client WebSocket with the plan's socket faults applied (see the module).

    It has what the socket layer uses of aiohttp's: :meth:`receive`, :meth:`send_str`,
    :meth:`close`, :attr:`closed` and :attr:`close_code`.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        injector: FaultInjector,
        session: Injection | None,
        *,
        name: str,
    ) -> None:
        self._ws = ws
        self._injector = injector
        self._name = name
        self._session = session
        self._sent = 0
        self._silent = False
        self._closing = False
        #: The end handed to the owner instead of the real one (a close frame or a drop).
        self._end: WSMessage | None = None
        self._close_code: int | None = None
        self._frames: asyncio.Queue[WSMessage] = asyncio.Queue()
        self._types: collections.OrderedDict[object, str] = collections.OrderedDict()
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"le_transport.chaos reader {name}"
        )

    # -- what the socket layer uses ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the real connection is closed: after an injected end it still needs
        :meth:`close`, as a real drop leaves the socket to be closed."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code: the injected one, if a fault closed the socket."""
        return self._close_code if self._close_code is not None else self._ws.close_code

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The next frame the owner should see (``timeout`` is not supported: None only)."""
        if timeout is not None:
            raise ValueError("FaultySocket.receive takes no timeout: use the clock's")
        if (self._end is not None or self._closing) and self._frames.empty():
            return WSMessage(WSMsgType.CLOSED, None, None)
        return await self._frames.get()

    async def send_str(self, data: str, compress: int | None = None) -> None:
        """Send ``data``, unless a fault on it or on the session says otherwise."""
        if self._end is not None:
            raise aiohttp.ClientConnectionResetError("the connection was dropped (injected)")
        frame = _parse(data)
        injection = self._decide_sent(frame)
        if (
            injection is not None
            and frame is not None
            and not await self._apply_to_sent(injection, frame)
        ):
            return
        if self._silent:
            # A half-open socket: what the client writes goes nowhere.
            return
        await self._ws.send_str(data, compress)
        self._sent += 1
        session = self._session
        if session is not None and self._sent >= _after(session):
            self._session = None
            self._strike(session)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Stop the reader and close the real connection."""
        self._closing = True
        reader = self._reader
        if not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        # As aiohttp does for a receive() waiting when the socket is closed: it returns CLOSING.
        self._frames.put_nowait(WSMessage(WSMsgType.CLOSING, None, None))
        return await self._ws.close(code=code, message=message)

    # -- the session's fault ----------------------------------------------------------------

    def strike_if_due(self) -> None:
        """Apply a session fault whose ``after_messages`` is 0: it strikes as the socket opens."""
        session = self._session
        if session is not None and _after(session) == 0:
            self._session = None
            self._strike(session)

    def _strike(self, injection: Injection) -> None:
        """A connection-level fault: a close frame, a drop, or silence from now on."""
        fault = injection.fault
        _log.info(
            "%s: injecting %s (rule %s)",
            self._name,
            fault.kind,
            injection.rule_id,
            extra={"socket": self._name, "rule": injection.rule_id, "fault": fault.kind},
        )
        if isinstance(fault, WsSilence):
            self._silent = True
            return
        if isinstance(fault, WsClose):
            self._close_code = fault.code
            self._finish(WSMessage(WSMsgType.CLOSE, fault.code, fault.reason))
            return
        assert isinstance(fault, WsDrop)
        self._finish(
            WSMessage(
                WSMsgType.ERROR,
                aiohttp.ClientConnectionResetError("the connection was dropped (injected)"),
                None,
            )
        )

    def _finish(self, end: WSMessage) -> None:
        """Hand the owner ``end`` next, instead of anything more from the connection."""
        self._end = end
        self._reader.cancel()
        while not self._frames.empty():
            self._frames.get_nowait()
        self._frames.put_nowait(end)

    # -- requests the client sends ----------------------------------------------------------

    def _decide_sent(self, frame: dict[str, Any] | None) -> Injection | None:
        if frame is None or frame.get("kind") != "req":
            return None
        type_ = str(frame.get("type", ""))
        req_id = frame.get("id")
        if req_id is not None:
            self._types[req_id] = type_
            if len(self._types) > _REMEMBERED_IDS:
                self._types.popitem(last=False)
        return self._injector.message_sent(type_)

    async def _apply_to_sent(self, injection: Injection, frame: dict[str, Any]) -> bool:
        """Apply a fault to a request the client is sending; whether to send it after all."""
        fault = injection.fault
        type_ = str(frame.get("type", ""))
        if isinstance(fault, Delay):
            await self._injector.clock.sleep(injection.delay_s)
            return True
        if isinstance(fault, (Status, WsAppError)):
            body = fault.response_body() if isinstance(fault, WsAppError) else _status_body(fault)
            answer = {
                "kind": "resp",
                "reqId": frame.get("id"),
                "code": fault.code,
                "body": body,
                "type": f"{type_}$Response",
            }
            if not self._silent:
                self._frames.put_nowait(WSMessage(WSMsgType.TEXT, json.dumps(answer), None))
            return False
        if isinstance(fault, Hang):
            return False
        # ws_close, ws_drop, ws_silence: the connection, instead of this request.
        self._strike(injection)
        return False

    # -- frames the server sends ------------------------------------------------------------

    async def _read(self) -> None:
        """Read the real connection into the queue, applying the outbound kinds, until it ends."""
        ws = self._ws
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if self._silent:
                    continue
                hold = self._hold(msg.data)
                if hold is None:
                    continue
                if hold > 0:
                    await self._injector.clock.sleep(hold)
                    if self._silent:
                        continue
            elif msg.type is WSMsgType.BINARY:
                if self._silent:
                    continue
            else:
                # The real end (a close frame, an error, closed): the owner's to see.
                self._frames.put_nowait(msg)
                return
            self._frames.put_nowait(msg)

    def _hold(self, text: str) -> float | None:
        """Seconds to hold a frame from the server (0: none), or None to lose it."""
        frame = _parse(text)
        if frame is None:
            return 0.0
        type_ = frame.get("type")
        if not isinstance(type_, str):
            type_ = ""
        req_id = frame.get("reqId")
        if frame.get("kind") == "resp" and req_id is not None:
            type_ = type_ or f"{self._types.get(req_id, '')}$Response"
            self._types.pop(req_id, None)
        injection = self._injector.message_arriving(type_)
        if injection is None:
            return 0.0
        fault = injection.fault
        _log.debug(
            "%s: %s on an incoming %s (rule %s)",
            self._name,
            fault.kind,
            type_[:80],
            injection.rule_id,
            extra={"socket": self._name, "rule": injection.rule_id, "fault": fault.kind},
        )
        if isinstance(fault, WsDropMessage):
            return None
        assert isinstance(fault, WsDelay)
        return injection.delay_s


def _after(injection: Injection) -> int:
    fault = injection.fault
    assert isinstance(fault, (WsClose, WsDrop, WsSilence))
    return fault.after_messages


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _status_body(fault: Status) -> Any:
    if fault.body is not None:
        try:
            return json.loads(fault.body)
        except ValueError:
            return fault.body
    return {"msg": "injected fault"}
