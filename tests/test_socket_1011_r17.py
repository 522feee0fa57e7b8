"""Round 17: a run of 1011 closes (the server's internal error) is an outage: the socket logs in
afresh once, as LivePerson's SDK does, then waits it out on the backoff; it never stops for good
with SocketAuthFailed, which stays for credentials refused again and again (4401)."""

from __future__ import annotations

import pytest

from le_transport.chaos import FaultRule, Match, Schedule, WsClose
from le_transport.errors import SocketAuthFailed
from le_transport.policies import CloseAction, ClosePolicy, Disconnect, DisconnectKind
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

LOGIN = "/api/account/*/login"


def _closes(sim: Simulator, code: int, count: int) -> None:
    sim.faults.add(
        FaultRule(
            f"close-{code}",
            WsClose(code, reason="from the test"),
            unit="ws_session",
            match=Match(path="/ws_api/account/*"),
            schedule=Schedule(fail_next=count),
        )
    )


def test_the_verdict_says_whether_the_credentials_were_refused() -> None:
    policy = ClosePolicy()
    for code, refused in ((4401, True), (4407, True), (1011, False)):
        verdict = policy.classify(Disconnect(DisconnectKind.CLOSE_FRAME, code=code))
        assert verdict.action is CloseAction.REAUTHENTICATE
        assert verdict.refused is refused, code


async def test_a_run_of_1011_closes_is_waited_out_with_one_fresh_login(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    _closes(sim, 1011, 6)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open(timeout=600)
        assert ws.error is None
        assert len(sim.sockets.all) == 7
        # The engine's login, then one fresh login after the first 1011: the other five closes
        # were reconnected on the backoff (1, 2, 4 ... s) with the same credentials.
        assert sim.count("POST", LOGIN) == 2
        assert states.names("facadeMsg").count("reauthenticating") == 1


async def test_refused_credentials_still_stop_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    _closes(sim, 4401, 10)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        with pytest.raises(SocketAuthFailed, match="still rejected after 3"):
            await ws.wait_open(timeout=600)


async def test_1011s_between_4401s_break_the_run_of_refusals(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Every re-login works; a UMS flapping 4401 / 1011 is no run of refused credentials, as a
    # gateway flapping 401 / 503 is not.
    sim.faults.add(
        FaultRule(
            "flap",
            unit="ws_session",
            match=Match(path="/ws_api/account/*"),
            sequence=[WsClose(4401, reason="t"), WsClose(1011, reason="t")] * 4,
        )
    )
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open(timeout=600)
        assert ws.error is None
