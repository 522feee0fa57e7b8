"""The resilient socket's contracts at its edges: what close() hands back, what a request
whose connection was lost as its time ran out says, how soon requests fail with their
connection, and close() from the re-login escalation (its connects, the connection it
returns)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import pytest

from le_transport import SocketClosed, SocketRequestTimeout
from le_transport.sockets import EscalationRequest, ResilientSocket, SocketOptions
from le_transport.sockets.dial import Connection
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_lifecycle import RefusingDialer
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    down_with_sim,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

NO_KEEPALIVE = SocketOptions(keepalive=None)


async def _never_answered(sock: Any, frame: dict[str, Any]) -> None:
    """A simulator handler that answers nothing."""
    return None


# -- close() returns only what nobody was told about -----------------------------------------


async def test_close_returns_queued_messages_but_not_queued_requests_whose_callers_failed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # A request queued while the socket is down fails with SocketClosed when the socket
    # closes: its caller was told. Returned by close() as well, an application that re-sends
    # what close() returned and retries its failed requests sent it twice.
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        await down_with_sim(ws, sim)
        assert await ws.send({"kind": "msg", "n": "before"}) is False
        requested = asyncio.create_task(ws.request(".Anything", {"n": "req"}, timeout=60))
        await asyncio.sleep(0)
        assert ws.queued == 2
        assert await ws.send({"kind": "msg", "n": "after"}) is False
        unsent = await ws.close()
        # Its caller is told it was never sent: safe to send again.
        with pytest.raises(SocketClosed, match="still queued, never sent"):
            await requested
    assert len(unsent) == 2
    assert '"before"' in unsent[0]
    assert '"after"' in unsent[1]
    assert not any('"req"' in text for text in unsent)
    assert ws.queued == 0
    assert ws.queued_bytes == 0


async def test_close_from_on_connect_returns_queued_messages_but_not_queued_requests(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # close() called by an on_connect callback returns at once with the queue as it stands:
    # the same contract, the queued request left out (its caller fails with SocketClosed).
    entered = asyncio.Event()
    returned: list[list[str]] = []

    async def closes(sock: ResilientSocket) -> None:
        entered.set()
        await clock.sleep(10)
        returned.append(await sock.close())
        await clock.sleep(10)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE, on_connect=[closes])
        await entered.wait()
        assert await ws.send({"kind": "msg", "n": "plain"}) is False
        requested = asyncio.create_task(ws.request(".Anything", {"n": "req"}, timeout=60))
        await asyncio.sleep(0)
        assert ws.queued == 2
        with pytest.raises(SocketClosed):
            await requested
        assert await ws.close() == returned[0]
    assert len(returned[0]) == 1
    assert '"plain"' in returned[0][0]


# -- a request whose connection was lost as its time ran out ----------------------------------


async def test_a_request_failed_with_its_connection_in_the_turn_its_time_ran_out_says_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The owner fails the requests of a lost connection (SocketClosed: "may or may not have
    # been processed") in the turn the request's timeout fires. The loss is what happened:
    # a timeout would say the request went out and was not answered in time.
    sim.sockets.on(".Never", _never_answered)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        epoch = ws.epoch

        async def at_the_deadline() -> None:
            # Queued for the same instant before the request's timeout: woken first, it fails
            # the connection's requests as the owner does when the connection is lost.
            await clock.sleep(5)
            failed = ws._pending.fail_epoch(
                epoch, functools.partial(SocketClosed, "the connection was lost")
            )
            assert failed == 1

        failing = asyncio.create_task(at_the_deadline())
        try:
            with pytest.raises(SocketClosed, match="the connection was lost"):
                await ws.request(".Never", timeout=5)
        finally:
            await failing
            await ws.close()


async def test_a_request_whose_connection_was_given_up_before_its_time_ran_out_says_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write fails with the connection at 1 s: the socket gives the connection up and closes
    # it, which ends the read, and then the requests on it fail. Here the close takes until
    # the request's timeout (5 s). The request was lost with its connection, and no answer
    # could come after: SocketClosed, not a timeout.
    sim.sockets.on(".Never", _never_answered)
    release = asyncio.Event()
    real_close = Connection.close
    real_send = Connection.send_text

    async def slow_close(conn: Connection, *args: Any, **kwargs: Any) -> None:
        await release.wait()
        await real_close(conn, *args, **kwargs)

    async def send_text(conn: Connection, text: str) -> None:
        if '"breaks"' in text:
            raise ConnectionResetError("Connection lost")
        await real_send(conn, text)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        monkeypatch.setattr(Connection, "close", slow_close)
        monkeypatch.setattr(Connection, "send_text", send_text)

        async def breaks() -> None:
            await clock.sleep(1)
            await ws.send({"kind": "msg", "n": "breaks"})

        breaking = asyncio.create_task(breaks())
        try:
            with pytest.raises(SocketClosed, match="lost with the request in flight"):
                await ws.request(".Never", timeout=5)
            assert clock.now() == pytest.approx(5)
        finally:
            release.set()
            await breaking
            await ws.close()


async def test_a_queued_request_that_times_out_says_it_was_never_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Queued while the socket is down and never written: the timeout says so, and that it may
    # be sent again without being done twice.
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        await down_with_sim(ws, sim)
        with pytest.raises(SocketRequestTimeout, match="never sent") as info:
            await ws.request(".Anything", timeout=2)
        assert info.value.sent is False
        await ws.close()


async def test_a_sent_request_that_times_out_says_it_was_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.sockets.on(".Never", _never_answered)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        with pytest.raises(SocketRequestTimeout) as info:
            await ws.request(".Never", timeout=2)
        assert info.value.sent is True
        assert "never sent" not in str(info.value)
        await ws.close()


async def test_a_request_fails_as_soon_as_its_connection_is_lost_not_after_the_close(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once the read has ended, no answer can come: the requests of that connection fail at
    # once, not after the owner has closed the connection and waited for its helper tasks
    # (a close handshake's grace, an on_connect callback that swallows its cancellation:
    # up to TIDY_UP_GRACE), their callers meanwhile left waiting for nothing.
    sim.sockets.on(".Never", _never_answered)
    release = asyncio.Event()
    real_close = Connection.close

    async def slow_close(conn: Connection, *args: Any, **kwargs: Any) -> None:
        await release.wait()
        await real_close(conn, *args, **kwargs)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        monkeypatch.setattr(Connection, "close", slow_close)

        async def drop() -> None:
            await clock.sleep(1)
            sim.sockets.open[0].drop()

        dropping = asyncio.create_task(drop())
        try:
            with pytest.raises(SocketClosed, match="lost with the request in flight"):
                await ws.request(".Never", timeout=60)
            assert clock.now() == pytest.approx(1)
        finally:
            release.set()
            await dropping
            await ws.close()


async def test_a_request_whose_socket_is_closing_when_its_time_runs_out_says_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # close() began at 1 s, and its close handshake is slow: the request's timeout (5 s) fires
    # before the socket has failed its requests. The socket closing is what happened.
    sim.sockets.on(".Never", _never_answered)
    release = asyncio.Event()
    real_close = Connection.close

    async def slow_close(conn: Connection, *args: Any, **kwargs: Any) -> None:
        await release.wait()
        await real_close(conn, *args, **kwargs)

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, NO_KEEPALIVE)
        await ws.wait_open()
        monkeypatch.setattr(Connection, "close", slow_close)

        async def close_later() -> list[str]:
            await clock.sleep(1)
            return await ws.close()

        closing = asyncio.create_task(close_later())
        try:
            with pytest.raises(SocketClosed, match=r"was closed before '\.Never'"):
                await ws.request(".Never", timeout=5)
            assert clock.now() == pytest.approx(5)
        finally:
            release.set()
            assert await closing == []


# -- close() called from the socket's own task between connections ---------------------------


async def test_close_from_the_relogin_escalation_returns_the_queue_and_the_socket_closes(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The escalation runs in the socket's own task, as an on_frame handler does: close()
    # there cannot wait for that task to end. It returns at once with the queue as it stands,
    # and the escalation is cancelled at its next await; before, close() itself raised
    # CancelledError into the escalation and returned nothing.
    returned: list[list[str]] = []
    after: list[str] = []
    holder: list[ResilientSocket] = []

    async def escalate(request: EscalationRequest, connect: Any) -> None:
        returned.append(await holder[0].close())
        try:
            await clock.sleep(60)
        except asyncio.CancelledError:
            after.append("cancelled")
            raise

    options = SocketOptions(keepalive=None, escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options, escalate=escalate)
        holder.append(ws)
        await ws.wait_open()
        await down_with_sim(ws, sim)
        assert await ws.send({"kind": "msg", "n": "queued"}) is False
        async for event in ws.states():
            if event.name == "closed":
                break
        assert ws.closed
        assert ws.error is None
        assert await ws.close() == returned[0]
    assert len(returned[0]) == 1
    assert '"queued"' in returned[0][0]
    assert after == ["cancelled"]


async def test_a_connection_the_escalation_returns_after_closing_the_socket_is_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The escalation connected, then closed the socket, and returns the connection: the
    # socket, closing, serves it no more, and closes it rather than leaving it open.
    returned: list[list[str]] = []
    holder: list[ResilientSocket] = []

    async def escalate(request: EscalationRequest, connect: Any) -> Connection:
        while True:
            try:
                conn: Connection = await connect()
                break
            except Exception:
                await clock.sleep(1)  # until the simulator is back
        returned.append(await holder[0].close())
        return conn

    options = SocketOptions(keepalive=None, escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options, escalate=escalate)
        holder.append(ws)
        await ws.wait_open()
        events = ws.states()
        sim.sockets.open[0].drop()
        async for event in events:
            if event.name == "lost":
                break
        await sim.stop()  # the socket's own reconnect fails: it escalates
        async for event in events:
            if event.name == "escalating":
                break
        await sim.start()
        async for event in events:
            if event.name == "closed":
                break
        assert ws.closed
        assert returned == [[]]
    # no_open_connections: the connection the escalation returned was closed, not left open.


async def test_the_escalations_connect_refuses_once_the_socket_is_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # An escalation may hand its connect to a task of its own: called after the socket
    # closed, it opened a connection nobody would ever serve or close.
    outcome: list[str] = []
    later: list[asyncio.Task[None]] = []

    async def connect_later(connect: Any) -> None:
        await clock.sleep(30)
        try:
            conn = await connect()
        except Exception as exc:
            outcome.append(type(exc).__name__)
        else:
            outcome.append("connected")
            await conn.close(clock, 1.0)

    async def escalate(request: EscalationRequest, connect: Any) -> None:
        if not later:
            later.append(asyncio.create_task(connect_later(connect)))

    options = SocketOptions(keepalive=None, escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options, escalate=escalate)
        await ws.wait_open()
        events = ws.states()
        await sim.stop()
        async for event in events:
            if event.name == "escalating":
                break
        await ws.close()
        await sim.start()
        await later[0]
    assert outcome == ["SocketClosed"]


# -- the on_closed callback ---------------------------------------------------------------------


def _raises_on_closed(ws: ResilientSocket) -> None:
    raise RuntimeError("on_closed failed")


async def test_an_on_closed_callback_that_raises_is_logged_and_the_close_returns(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Called last as the socket closes: raising there, it came out of close() (a socket
    # never started) or ended the owner task with an error nobody retrieved.
    never_started = ResilientSocket(RefusingDialer(), clock=clock, on_closed=_raises_on_closed)
    assert await never_started.close() == []
    ws = ResilientSocket(RefusingDialer(), clock=clock, on_closed=_raises_on_closed).start()
    events = ws.states()
    async for event in events:
        if event.name == "reconnecting":
            break
    owner = ws._owner
    assert await ws.close() == []
    assert owner is not None
    assert owner.done()
    assert not owner.cancelled()
    assert owner.exception() is None
    assert ws.closed
    failed = [r for r in caplog.records if "on_closed" in r.getMessage()]
    assert len(failed) == 2
    assert all(r.levelno == logging.ERROR for r in failed)
