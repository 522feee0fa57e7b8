"""A socket ``delay`` is latency on a frame already on the wire, on either side of the plan.

What a review of the injector's late writes (a ``Delay`` on unit ``ws_message`` sent by a task
the :class:`~le_transport.chaos.ws.FaultySocket` owns) found, each kept fixed:

- a delayed frame whose sender still waits kept its task running after a server drop:
  ``FaultySocket.closed`` counted only the frames whose senders gave up, so it read True, the
  owner's ``Connection.close`` skipped ``FaultySocket.close()`` (the only thing that ends the
  task), and the task and the sender's ``request()`` ran on for the rest of the delay, past the
  engine's close;
- that frame, its connection dropped during the delay, was written at the end of it, refused by
  aiohttp ("Cannot write to closing transport", read as never written) and sent again on the
  next connection: published, while its caller had got ``SocketClosed``. The simulator, given
  the same plan, loses it with its connection. A delayed frame (and one queued behind it) is on
  the wire now: lost with its connection, in doubt, never sent again by the library;
- ``clear()`` forgets the removed rules' totals, and its docs say so (``report()`` keeps their
  decisions).

Against the simulator's UMS socket on loopback, and a recording peer, on the virtual clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import SocketClosed
from le_transport.chaos import Delay, FaultInjector, FaultRule, Match, Schedule, Status
from le_transport.chaos.ws import FaultySocket
from le_transport.clock import RealClock
from le_transport.sockets.dial import write_never_began
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_chaos_r17 import _on_side, _req
from tests.test_chaos_r17 import _Peer as _RecordingPeer
from tests.test_chaos_r17 import _wrapped as _wrapped_over
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    publish,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

PUBLISH = ".ams.ms.PublishEvent"


def _slow(ms: float) -> FaultRule:
    return FaultRule(
        "slow",
        Delay(ms),
        unit="ws_message",
        match=Match(path=PUBLISH),
        schedule=Schedule(fail_next=1),
    )


def _chaos_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("le_transport.chaos") and not t.done()
    ]


# -- 1. the owner's close reaches a delayed send whose sender still waits ----------------------


async def test_engine_close_ends_a_delayed_send_whose_connection_dropped(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Before: the chaos send task and the request ran on 58 s past the engine's close.
    injector = FaultInjector.seeded(1, _slow(60_000), clock=clock)
    async with agent_engine(sim, clock, states, wire_middlewares=[injector]) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        req = asyncio.create_task(ws.request(PUBLISH, publish("one"), timeout=120))
        await clock.sleep(1)
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    closed_at = clock.now()
    left = _chaos_tasks()
    with pytest.raises(SocketClosed):
        await req
    assert left == [], f"chaos tasks alive after the engine closed: {left}"
    assert clock.now() - closed_at < 1
    assert sim.sockets.published == []


class _Peer(_RecordingPeer):
    """test_chaos_r17's recording peer, counting its closes (a test sets ``closed`` for a
    connection whose end was read: a server drop)."""

    def __init__(self) -> None:
        super().__init__()
        self.close_calls = 0

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.close_calls += 1
        return await super().close(code=code, message=message)


def _wrapped(clock: VirtualClock) -> tuple[FaultySocket, _Peer]:
    peer = _Peer()
    sock, _ = _wrapped_over(clock, peer)
    return sock, peer


async def test_a_socket_is_not_closed_while_a_delayed_frame_its_sender_awaits_is_on_its_way(
    clock: VirtualClock,
) -> None:
    sock, peer = _wrapped(clock)
    waiting = asyncio.create_task(sock.send_str(_req("a", ".Slow")))
    await clock.sleep(1)
    peer.closed = True  # the connection's end was read (a server drop)
    # Before: True, so the owner skipped close() and the task slept out the delay.
    assert not sock.closed
    await sock.close()
    assert sock.closed
    assert clock.now() == pytest.approx(1.0)
    with pytest.raises(aiohttp.ClientConnectionResetError) as lost:
        await waiting
    assert not write_never_began(lost.value)
    assert not sock._sends


# -- 2. a delayed frame lost with its connection is in doubt, on either side --------------------


async def _drop_during_delay(
    side: str, sim: Simulator, clock: VirtualClock, states: StateLog
) -> tuple[str, list[str]]:
    kwargs = _on_side(side, sim, clock, _slow(5000))
    async with agent_engine(sim, clock, states, **kwargs) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        req = asyncio.create_task(ws.request(PUBLISH, publish("one"), timeout=30))
        await clock.sleep(1)
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        try:
            await req
            outcome = "answered"
        except SocketClosed:
            outcome = "SocketClosed"
        await clock.sleep(10)
        # The socket still works: a request made now is published.
        await ws.request(PUBLISH, publish("two"), timeout=30)
    return outcome, [m.text for m in sim.sockets.published]


@pytest.mark.parametrize("side", ["simulator", "injector"])
async def test_a_waited_delayed_request_lost_with_its_connection_is_not_processed(
    side: str, sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Before, on the injector's side: ("SocketClosed", ["one", "two"]): failed to its caller,
    # then sent again on the next connection and published (a caller retrying: twice).
    assert await _drop_during_delay(side, sim, clock, states) == ("SocketClosed", ["two"])


async def test_a_delay_ending_after_its_connection_ended_fails_in_doubt_unwritten(
    clock: VirtualClock,
) -> None:
    sock, peer = _wrapped(clock)
    slow = asyncio.create_task(sock.send_str(_req("a", ".Slow")))
    behind = asyncio.create_task(sock.send_str(_req("b", ".Fast")))
    await clock.sleep(1)
    peer.closed = True  # gone, and the owner has not closed the wrapper yet
    await clock.sleep(10)
    for task in (slow, behind):
        # Before: aiohttp's refusal, read as never written, so the frame was sent again.
        with pytest.raises(aiohttp.ClientConnectionResetError) as lost:
            await task
        assert not write_never_began(lost.value), lost.value
    assert peer.sent == []
    assert not sock._sends
    await sock.close()


async def test_a_frame_sent_once_the_connection_is_gone_is_refused_at_once_as_unwritten(
    clock: VirtualClock,
) -> None:
    sock, peer = _wrapped(clock)
    slow = asyncio.create_task(sock.send_str(_req("a", ".Slow")))
    await clock.sleep(1)
    peer.closed = True
    # Not on the wire (the connection was gone when it was sent): refused now, by aiohttp, as
    # never written, not queued behind the delayed one and then lost in doubt with it.
    with pytest.raises(aiohttp.ClientConnectionResetError) as refused:
        await sock.send_str(_req("b", ".Fast"))
    assert write_never_began(refused.value)
    assert clock.now() == pytest.approx(1.0)
    await sock.close()
    with pytest.raises(aiohttp.ClientConnectionResetError):
        await slow


async def test_our_own_close_loses_a_delayed_frame_in_doubt_as_the_simulator_does(
    clock: VirtualClock,
) -> None:
    # The connection is up when the owner closes (for good, or to reconnect): the frames on the
    # wire are in doubt all the same (at the simulator, the close waits for the server's sleep
    # and the frame is processed first). Before: "never written", so sent again.
    sock, peer = _wrapped(clock)
    slow = asyncio.create_task(sock.send_str(_req("a", ".Slow")))
    behind = asyncio.create_task(sock.send_str(_req("b", ".Fast")))
    await clock.sleep(1)
    await sock.close()
    assert clock.now() == pytest.approx(1.0)
    for task in (slow, behind):
        with pytest.raises(aiohttp.ClientConnectionResetError) as lost:
            await task
        assert not write_never_began(lost.value)
    await clock.sleep(10)
    assert peer.sent == []
    assert peer.close_calls == 1


@pytest.mark.parametrize("side", ["simulator", "injector"])
async def test_a_request_in_a_delay_when_the_socket_is_closed_fails_in_doubt_on_either_side(
    side: str, sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    kwargs = _on_side(side, sim, clock, _slow(5000))
    async with agent_engine(sim, clock, states, **kwargs) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        req = asyncio.create_task(ws.request(PUBLISH, publish("one"), timeout=30))
        await clock.sleep(1)
        await ws.close()
        with pytest.raises(SocketClosed, match="may or may not have been processed"):
            await req
    assert _chaos_tasks() == []


# -- 3. clear() forgets the removed rules' totals; report() keeps their decisions -------------


def test_clear_forgets_the_totals_of_the_rules_it_removes_and_report_keeps_them() -> None:
    clock = VirtualClock()
    rule = FaultRule("outage", Status(503), match=Match(path="/api/*"))
    injector = FaultInjector.seeded(1, rule, clock=clock)
    assert injector._run.decide("request", method="GET", path="/api/x", at=0.0) is not None
    assert injector.injected_counts() == {"outage": 1}
    injector.clear()
    assert [d["rule_id"] for d in injector.report()] == ["outage"]
    assert injector.injected_counts() == {}
    assert injector.rule_counts() == {}
    for doc in (
        FaultInjector.injected_counts.__doc__,
        FaultInjector.rule_counts.__doc__,
        FaultInjector.clear.__doc__,
    ):
        # Before: "over the injector's whole life", which clear() no longer keeps.
        assert doc is not None
        assert "forget" in doc
        assert "exact over the injector's whole life" not in doc


# -- the owner busy (not reading) when the connection drops -------------------------------------


@pytest.mark.parametrize("behind", [False, True], ids=["delayed", "and-one-behind-it"])
@pytest.mark.parametrize("side", ["simulator", "injector"])
async def test_delayed_frames_dropped_while_the_owner_is_in_on_frame_are_not_resent(
    side: str, behind: bool, sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # aiohttp marks the connection closed only once its end is read, which the owner does not
    # do while a slow on_frame runs: the late write was refused as never begun and sent again
    # on the next connection (published), where the simulator loses it with the connection.
    kwargs = _on_side(side, sim, clock, _slow(5000))

    async def on_frame(frame: Any) -> None:
        await clock.sleep(8)  # a slow handler: the owner reads nothing meanwhile

    async with agent_engine(sim, clock, states, **kwargs) as engine:
        ws = await brand_socket(engine, sim, on_frame=on_frame)
        await ws.wait_open()
        calls = [asyncio.create_task(ws.request(PUBLISH, publish("one"), timeout=60))]
        await clock.sleep(0.1)
        if behind:
            calls.append(asyncio.create_task(ws.request(PUBLISH, publish("two"), timeout=60)))
        await clock.sleep(0.4)
        await sim.sockets.open[0].notify(".Busy", {})  # the owner goes into on_frame
        await clock.sleep(0.5)
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await clock.sleep(10)
    assert all(isinstance(o, SocketClosed) for o in outcomes), outcomes
    assert [m.text for m in sim.sockets.published] == []


# -- a frame taken once the connection has died is never begun, delayed or queued or not --------


async def _dies_at_once(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await asyncio.sleep(0.2)
    assert request.transport is not None
    request.transport.abort()
    return ws


@pytest.mark.parametrize("case", ["alone", "behind-a-delayed-one", "delayed-itself"])
async def test_a_frame_sent_once_the_connection_died_is_never_begun(case: str) -> None:
    # aiohttp's closed turns only once the owner reads the end; the transport closes first.
    # Taken then, a frame was queued behind a delayed one (or delayed itself) and its refusal
    # called in doubt: the socket layer failed the request instead of sending it again.
    app = web.Application()
    app.router.add_get("/ws", _dies_at_once)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rule = FaultRule("slow", Delay(1000), unit="ws_message", match=Match(path=".Slow"))
    injector = FaultInjector.seeded(1, rule, clock=RealClock())
    try:
        async with aiohttp.ClientSession() as http:
            raw = await http.ws_connect(f"http://127.0.0.1:{runner.addresses[0][1]}/ws")
            sock = FaultySocket(raw, injector, None, name="t")
            ahead = (
                asyncio.create_task(sock.send_str(_req("a", ".Slow")))
                if case == "behind-a-delayed-one"
                else None
            )
            await asyncio.sleep(0.6)  # the transport closed, its end not read
            with pytest.raises(aiohttp.ClientConnectionResetError) as refused:
                await sock.send_str(_req("c", ".Slow" if case == "delayed-itself" else ".Fast"))
            assert write_never_began(refused.value), refused.value
            if ahead is not None:
                with pytest.raises(aiohttp.ClientConnectionResetError) as lost:
                    await ahead
                assert not write_never_began(lost.value), "taken while up: in doubt"
            await sock.close()
    finally:
        await runner.cleanup()
