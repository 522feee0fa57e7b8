"""A flush cancelled mid-write never sends its message again (a fourth review of 16749a4, whose
put-back sent it twice).

aiohttp's send_frame writes the frame to the transport synchronously and only then awaits the
drain (when the peer reads slowly): a cancellation inside send_str() always arrives after the
frame was handed to the transport. Here the transport's writing is paused (as a slow peer makes
it), so the flush waits in aiohttp's real drain, with its frame already on the wire; the server
then closes (a restart, 1001) and the setup task is cancelled: the message must not be sent
again, a request must fail with SocketClosed, and close() must not report it as unsent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from le_transport import Engine, SocketClosed
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator.sockets import SimSocket
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

UPGRADE = "/ws_api/*"
#: Over the writer limit aiohttp gives the client (256 KiB): the write then awaits the drain.
PAD = "x" * 300_000


def _pause_writing_once() -> tuple[list[int], Any]:
    paused: list[int] = []

    async def on_connect(ws: ResilientSocket) -> None:
        if not paused:
            # As a peer slow to read makes the transport do: writes are buffered, and a
            # writer over its limit waits in the drain.
            ws._conn.ws._writer.protocol.pause_writing()  # type: ignore[union-attr]
            paused.append(1)

    return paused, on_connect


async def _wait_for(pred: Any) -> None:
    # sleep(0), never a real sleep: the virtual clock jumps whenever the loop idles.
    for _ in range(100_000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def _queued_send_in_the_drain(
    engine: Engine, sim: Simulator
) -> tuple[ResilientSocket, SimSocket]:
    """A socket whose first connection's flush waits in aiohttp's drain with the queued message
    ``m-once`` already on the wire (the server received it); the socket and that connection."""
    _, on_connect = _pause_writing_once()
    sim.faults.script("GET", UPGRADE, [503])  # down at first: the message is queued
    ws = await brand_socket(
        engine, sim, SocketOptions(keepalive=None, escalate_after=0), on_connect=[on_connect]
    )
    frame = {"kind": "req", "id": "m-once", "type": ".marker", "body": {"pad": PAD}}
    assert await ws.send(frame) is False
    first = (await sim.sockets.wait_accepted(1))[0]
    await _wait_for(lambda: any(f.get("id") == "m-once" for f in first.received))
    return ws, first


async def test_a_send_already_written_is_not_sent_again_after_the_flush_is_cancelled(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws, first = await _queued_send_in_the_drain(engine, sim)
        assert clock.now() < 5  # no time jumped: nothing timed out
        assert ws.queued == 0  # taken by the flush, which waits in aiohttp's drain
        await first.close(1001)  # the server restarts: the setup task is cancelled
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
    got = [[f.get("id") for f in s.received if f.get("id") == "m-once"] for s in sim.sockets.all]
    # Delivered once, on the first connection; not again on the second.
    assert got == [["m-once"], []]


async def test_a_request_already_written_fails_with_socketclosed_and_is_never_resent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The server takes the request (it is on the wire) and does not answer before it restarts:
    # the caller must get SocketClosed ("may or may not have been processed"), as before the
    # change; the library never resends a request.
    async def no_answer(_s: Any, _f: Any) -> None:
        return None

    sim.sockets.on(".Slow", no_answer)
    _, on_connect = _pause_writing_once()
    async with agent_engine(sim, clock, states) as engine:
        sim.faults.script("GET", UPGRADE, [503])
        ws = await brand_socket(
            engine, sim, SocketOptions(keepalive=None, escalate_after=0), on_connect=[on_connect]
        )
        slow = asyncio.ensure_future(ws.request(".Slow", {"pad": PAD}, timeout=30))
        first = (await sim.sockets.wait_accepted(1))[0]
        await _wait_for(lambda: any(f.get("type") == ".Slow" for f in first.received))
        assert clock.now() < 5
        assert not slow.done()
        await first.close(1001)
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await ws.request(".GetClock")
        outcome = await asyncio.gather(slow, return_exceptions=True)
    sent = [
        [f.get("type") for f in s.received if f.get("type") == ".Slow"] for s in sim.sockets.all
    ]
    assert sent == [[".Slow"], []], sent
    assert isinstance(outcome[0], SocketClosed), outcome


async def test_close_does_not_report_as_unsent_a_message_the_server_received(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws, _ = await _queued_send_in_the_drain(engine, sim)
        assert clock.now() < 5
        unsent = await ws.close()
    received = [f.get("id") for s in sim.sockets.all for f in s.received if f.get("id") == "m-once"]
    assert received == ["m-once"]
    # close() says it was never sent: a caller resending what close() returned sends it twice.
    assert [t for t in unsent if "m-once" in t] == []
