"""Review of the batch "a caller's timeout or cancellation ends its own write only" (7cfa285
back to 8c70ec4): findings, each a failing test."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from le_transport import SocketClosed
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


def _writer(ws: Any) -> Any:
    conn = ws._conn
    real = getattr(conn.ws, "wrapped", conn.ws)
    assert isinstance(real, aiohttp.ClientWebSocketResponse)
    return real._writer


async def test_a_write_meeting_an_already_cancelled_drain_is_no_bare_cancellation(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """aiohttp keeps its protocol's drain future, a cancelled one too, until the transport
    resumes writing. A plain-await writer (aiohttp's own: a pong in receive(), ws.close() cut
    by its timeout, a ping) cancelled while it waits cancels that shared future; every later
    write on the connection then meets it in its FIRST step, which _write runs outside
    _go_on_sparing_waits and outside its `except CancelledError`: the caller, which nobody
    cancelled, gets a bare CancelledError (the docstring: "never a bare CancelledError")."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        writer = _writer(ws)
        protocol = writer.protocol
        # The peer stopped reading: the transport asks aiohttp to pause writing.
        protocol.pause_writing()
        writer._output_size = writer._limit + 1
        # aiohttp's own plain-await write (a ping here; a pong or the close frame alike),
        # waiting on the shared drain future, is cancelled (its task's timeout, say).
        ping = asyncio.create_task(writer.send_frame(b"", aiohttp.WSMsgType.PING))
        for _ in range(3):
            await asyncio.sleep(0)
        assert protocol._drain_waiter is not None
        ping.cancel()
        await asyncio.gather(ping, return_exceptions=True)
        assert protocol._drain_waiter.cancelled()
        # Our task is not cancelled; a big message (past aiohttp's limit) meets the drain.
        outcome: object
        try:
            outcome = await ws.send({"kind": "msg", "blob": "x" * 300_000})
        except asyncio.CancelledError as exc:
            outcome = exc
        except SocketClosed as exc:
            outcome = exc
        finally:
            protocol.resume_writing()
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        assert not isinstance(outcome, asyncio.CancelledError), (
            "send() raised a bare CancelledError in a task nobody cancelled"
        )


async def test_an_init_connection_refused_with_a_json_float_code_reauthenticates(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """ca03995 made 401.0 (a server writing its codes as doubles) the error it is for
    request(), but dial.py's InitConnection answer still takes only an int: 401.0 is taken
    for a welcome, the socket is "open" on a refused login and never re-authenticates."""
    from le_transport.sockets import CONSUMER_SOCKET_QUERY, AuthPlacement, consumer_path
    from tests.test_socket_consumer import consumer_engine

    refused = 0

    async def refuse_once(sock: Any, frame: dict[str, Any]) -> tuple[int, Any] | None:
        nonlocal refused
        refused += 1
        if refused == 1:
            # The refusal of test_a_refused_init_connection_reauthenticates, its code written
            # as a JSON double (the simulator's handler answer takes only ints).
            await sock.send(
                {
                    "kind": "resp",
                    "reqId": frame["id"],
                    "code": 401.0,
                    "type": "GenericSubscribeResponse",
                    "body": {"msg": "expired"},
                }
            )
            return None
        return 200, {}

    sim.sockets.on("InitConnection", refuse_once)
    async with consumer_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "asyncMessagingEnt",
            consumer_path(sim.account.id),
            params=CONSUMER_SOCKET_QUERY,
            auth_placement=AuthPlacement.FIRST_FRAME,
        )
        await ws.wait_open(timeout=60)
    assert refused == 2, refused
    assert "reauthenticating" in states.names("asyncMessagingEnt")


async def test_a_drain_failure_met_with_the_callers_cancellation_is_retrieved(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The drain fails ("Connection lost", as aiohttp's connection_lost sets it) and the
    waiting caller is cancelled (its timeout) before it resumes. A task awaiting the future
    (the old ``await conn.send_text``) retrieves the error as it wakes; _go_on_sparing_waits
    waits through asyncio.wait, which does not, and adds _retrieve only to a future not yet
    done: the error is never retrieved, and asyncio logs "Future exception was never
    retrieved" (ERROR, with the traceback) when the future goes."""
    import gc

    logged: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    try:
        async with agent_engine(sim, clock, states) as engine:
            ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
            await ws.wait_open()
            writer = _writer(ws)
            protocol = writer.protocol
            protocol.pause_writing()
            sent = asyncio.create_task(ws.send({"kind": "msg", "blob": "x" * 300_000}))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not sent.done()
            waiter = protocol._drain_waiter
            assert waiter is not None
            # In one step: the drain fails, and the caller's timeout cancels it.
            waiter.set_exception(ConnectionError("Connection lost"))
            sent.cancel()
            await asyncio.gather(sent, return_exceptions=True)
            assert sent.cancelled()
            protocol.resume_writing()
            retrieved = not waiter._log_traceback
            del waiter, sent
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    never = [c for c in logged if "never retrieved" in str(c.get("message"))]
    assert retrieved
    assert not never, never


@pytest.mark.parametrize("driven", [False, True], ids=["plain await (old _write)", "new _write"])
async def test_a_drain_failure_met_with_a_cancellation_logs_nothing(driven: bool) -> None:
    """The same on _go_on_sparing_waits alone: the old plain await logs nothing; the new
    helper has asyncio log "Future exception was never retrieved" once the future goes."""
    import gc
    import weakref

    from le_transport.sockets.socket import _go_on_sparing_waits

    async def drive(coro: Any) -> None:
        step = coro.__await__()
        await _go_on_sparing_waits(step, step.send(None))

    async def write(fut: asyncio.Future[None]) -> None:
        await fut  # aiohttp's _drain_helper

    loop = asyncio.get_running_loop()
    logged: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(str(context["message"])))
    try:
        box = [loop.create_future()]
        task = asyncio.create_task(drive(write(box[0])) if driven else write(box[0]))
        for _ in range(3):
            await asyncio.sleep(0)
        box[0].set_exception(ConnectionError("Connection lost"))
        task.cancel()  # the caller's timeout, in the same step
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        gone = weakref.ref(box[0])
        box.clear()
        del task
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert gone() is None
    finally:
        loop.set_exception_handler(previous)
    assert logged == [], logged


async def test_a_write_that_bounds_its_own_wait_with_a_timeout_is_no_foreign_cancellation(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write (a SocketWrapper's send_str; Python 3.12's wait_for alike) that bounds a wait
    of its own with a timeout (asyncio.timeout, timeout_after: cancel, then uncancel() and
    TimeoutError), handles the TimeoutError and returns. Awaited plainly, the write is over.
    _go_on_sparing_waits saw a CancelledError go by and raises it again although it was
    consumed (the task's cancelling() is back where it was): _write takes it for a foreign
    cancellation and fails a healthy connection with 1011."""
    from le_transport.clock import timeout_after
    from le_transport.sockets.dial import Connection

    real = Connection.send_text
    never: list[asyncio.Future[None]] = []

    async def send_text(conn: Connection, text: str) -> None:
        await real(conn, text)
        if '"bounded"' in text:
            never.append(asyncio.get_running_loop().create_future())
            try:
                async with timeout_after(clock, 1):
                    await never[-1]  # a wait of the wrapper's own, bounded
            except TimeoutError:
                pass

    monkeypatch.setattr(Connection, "send_text", send_text)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        assert await ws.send({"kind": "msg", "n": "bounded"}) is True
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        await ws.request(".GetClock")
        lost = [e.details.get("reason") for e in states.events if e.name == "lost"]
        assert (ws.epoch, lost) == (1, []), (ws.epoch, lost)
