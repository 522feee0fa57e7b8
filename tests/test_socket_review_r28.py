"""The resilient socket's close() from inside the re-login escalation: the socket ends closed
by its caller (no error, its 'closed' event, its on_closed, its waiters released), whatever
the escalation does after the close: returns, raises, calls its connect (which refuses)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from le_transport import SocketClosed, SocketRequestTimeout
from le_transport.policies.backoff import BackoffPolicy
from le_transport.policies.close_codes import Disconnect
from le_transport.sockets import (
    EngineDialer,
    EscalationRequest,
    ResilientSocket,
    SocketOptions,
    ums_brand_path,
)
from le_transport.sockets.dial import UMS_BRAND_SOCKET_QUERY
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
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


async def _closed_by_the_escalation(
    sim: Simulator, clock: VirtualClock, states: StateLog, then: str
) -> tuple[ResilientSocket, list[str]]:
    """A socket with its keepalive on whose escalation closes it and then, at once, does
    ``then``: returns None, or raises."""
    holder: list[ResilientSocket] = []

    async def escalate(request: EscalationRequest, connect: Any) -> None:
        await holder[0].close()
        if then == "raises":
            raise RuntimeError("the escalation failed after the close")
        if then == "connects":
            await connect()

    seen: list[str] = []
    options = SocketOptions(escalate_after=1)
    if then == "gives_up":
        # The backoff gave up: the escalation was the last thing left to try.
        options = SocketOptions(escalate_after=1, backoff=BackoffPolicy.reconnect(deadline=0.5))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options, escalate=escalate)
        holder.append(ws)
        await ws.wait_open()
        events = ws.states()
        await down_with_sim(ws, sim)
        async with asyncio.timeout(30):  # a hang is the failure; virtual time runs meanwhile
            async for event in events:
                seen.append(event.name)
        owner = ws._owner
        assert owner is not None
        await asyncio.wait({owner})
    return ws, seen


@pytest.mark.parametrize("then", ["returns", "raises", "connects", "gives_up"])
async def test_a_socket_closed_from_its_escalation_ends_without_an_error_whatever_it_does_next(
    sim: Simulator, clock: VirtualClock, states: StateLog, then: str
) -> None:
    # close() from the escalation returns at once. An escalation that then raised (its
    # connect, called after the close, refuses with SocketClosed) stopped the socket with
    # "the re-login loop gave up" (an ERROR) as its error, and one that returned None when
    # the backoff had given up with "gave up after N failed reconnects": the caller's close
    # is what happened, as it is for a close from elsewhere, which cancels the escalation.
    ws, seen = await _closed_by_the_escalation(sim, clock, states, then)
    assert seen[-1] == "closed"
    assert ws.closed
    # The caller closed it: not a re-login that failed.
    assert ws.error is None


@pytest.mark.parametrize("then", ["returns", "raises", "connects"])
async def test_close_from_the_escalation_of_a_socket_with_its_own_keepalive_finishes(
    sim: Simulator, clock: VirtualClock, states: StateLog, then: str
) -> None:
    # A socket made without an engine (its keepalive scheduler its own, closed as it ends):
    # the close runs to its end, its on_closed called, its waiters released, and no error.
    holder: list[ResilientSocket] = []
    closed_with: list[ResilientSocket] = []

    async def escalate(request: EscalationRequest, connect: Any) -> None:
        await holder[0].close()
        if then == "raises":
            raise RuntimeError("the escalation failed after the close")
        if then == "connects":
            await connect()

    options = SocketOptions(escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        dialer = EngineDialer(
            engine,
            "facadeMsg",
            ums_brand_path(sim.account.id),
            params=UMS_BRAND_SOCKET_QUERY,
            auth=engine.auth,
        )
        ws = ResilientSocket(
            dialer,
            options=options,
            clock=engine.clock,
            escalate=escalate,
            on_closed=closed_with.append,
        ).start()
        holder.append(ws)
        await ws.wait_open()
        assert ws.keepalive is not None
        events = ws.states()
        await down_with_sim(ws, sim)
        seen: list[str] = []
        waiting = asyncio.create_task(ws.wait_open())
        async with asyncio.timeout(30):  # a hang is the failure; virtual time runs meanwhile
            async for event in events:
                seen.append(event.name)
            with pytest.raises(SocketClosed):
                await waiting
        owner = ws._owner
        assert owner is not None
        await asyncio.wait({owner})
        assert seen[-1] == "closed"
        assert closed_with == [ws]
        assert ws.error is None
        assert await ws.close() == []


# -- a request whose time ran out in the turn its connection was lost, or its answer came ------


async def _never_answered(sock: Any, frame: dict[str, Any]) -> None:
    """A simulator handler that answers nothing."""
    return None


@pytest.mark.parametrize("then", ["lost", "answered", "closed"])
async def test_a_sent_request_whose_time_ran_out_just_before_its_end_never_says_never_sent(
    sim: Simulator, clock: VirtualClock, states: StateLog, then: str
) -> None:
    # The request's timeout fires first (its future cancelled with its task), and in the same
    # turn, before the request's caller runs again, the owner ends the request: fails it with
    # its lost connection, resolves it with an answer just read, or fails it as the socket
    # stops. The request was written: it must never be reported as never sent, which tells
    # the caller to send it again (done twice, when it was processed, or answered).
    sim.sockets.on(".Never", _never_answered)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        epoch = ws.epoch
        requesting = asyncio.create_task(ws.request(".Never", timeout=5))
        for _ in range(10):  # its write, and its timeout's watchdog armed
            await asyncio.sleep(0)
        pending = ws._pending._pending
        assert pending is not None
        (request_id,) = pending
        assert ws._pending.sent_on(request_id) == epoch

        async def right_after_the_deadline() -> None:
            # Woken at the same instant as the timeout's watchdog, after it: the request's
            # task is cancelled by then, not yet run again.
            await clock.sleep(5)
            if then == "lost":
                # As the owner does as the read ends: the connection's end recorded, then
                # its requests failed.
                ws._end_connection(Disconnect.abnormal(), 1.0)
                ws._pending.fail_epoch(epoch, lambda: SocketClosed("the connection was lost"))
            elif then == "answered":
                ws._pending.resolve({"kind": "resp", "reqId": request_id, "code": 200})
            else:
                ws._pending.fail_all(lambda: SocketClosed("the socket was closed"))

        ending = asyncio.create_task(right_after_the_deadline())
        with pytest.raises((SocketClosed, SocketRequestTimeout)) as info:
            await requesting
        await ending
        assert "never sent" not in str(info.value)
        if isinstance(info.value, SocketRequestTimeout):
            assert info.value.sent is True
        if then == "lost":
            assert isinstance(info.value, SocketClosed)
        assert ws._pending.sent_on(request_id) is None
        assert not ws._pending.waiting(request_id)
        await ws.close()


async def test_a_queued_request_whose_time_ran_out_as_its_socket_stopped_says_why_it_stopped(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The socket stops on its own (its final error recorded, its requests failed with it as
    # their cause) in the turn the request's timeout fired, the request's caller not yet run
    # again: it is told the socket stopped, and why, as the others are, not that it was
    # closed (by its caller, it reads) without a cause.
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        await down_with_sim(ws, sim)
        requesting = asyncio.create_task(ws.request(".Anything", timeout=5))
        for _ in range(10):  # queued, and its timeout's watchdog armed
            await asyncio.sleep(0)
        stopped = SocketClosed("the socket stopped on something final")

        async def right_after_the_deadline() -> None:
            await clock.sleep(5)
            # What the owner's last step does as it stops on ``stopped``.
            ws._error = stopped
            ws._pending.fail_all(lambda: SocketClosed("stopped"))
            ws._closing = True

        ending = asyncio.create_task(right_after_the_deadline())
        with pytest.raises(SocketClosed) as info:
            await requesting
        await ending
        assert "stopped" in str(info.value)
        assert "never sent" in str(info.value)
        assert info.value.__cause__ is stopped
        await ws.close()
