"""Lifecycle races: cancellation and close meeting work in flight, on the socket, the engine and
the recovery loop, against the simulator on the virtual clock. Each test ends with no task,
connection or pending request left behind (the conftest and ``no_open_connections`` check)."""

from __future__ import annotations

import asyncio

import pytest

from le_transport import RecoveryFailed, TransportError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


def users_path(sim: Simulator) -> str:
    return f"/api/account/{sim.account.id}/configuration/le-users/users"


def requests_to(sim: Simulator, suffix: str) -> list[float]:
    """When the simulator received each POST whose path ends with ``suffix``."""
    return [r.at for r in sim.requests if r.method == "POST" and r.path.endswith(suffix)]


# -- the engine's close ----------------------------------------------------------------------


async def test_a_call_waiting_through_recovery_fails_at_once_when_the_engine_closes(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", users_path(sim), [503] * 8)
    engine = agent_engine(sim, clock, states)
    await engine.start()
    call = asyncio.ensure_future(
        engine.request("GET", "accountConfigReadOnly", users_path(sim), recover=True)
    )
    await clock.sleep(60)  # the schedule (5, 10, 15 s) is spent: inside the outer pause
    assert engine.recovery.recovering
    await engine.close()
    closed_at = clock.now()
    with pytest.raises(RecoveryFailed) as info:
        await call
    # At once, not after the pause; typed, with the failure that sent the call to recover.
    assert clock.now() == closed_at
    assert "closed" in str(info.value)
    assert type(info.value.last).__name__ == "RetriesExhausted"
    # No re-login outlived the logout.
    assert engine.recovery.relogins == 0
    (logout,) = requests_to(sim, "/logout")
    assert all(at <= logout for at in requests_to(sim, "/login"))
    assert states.of("gave_up")[-1].details["reason"] == "closed"


async def test_a_call_that_fails_after_the_engine_closed_does_not_wait_to_recover(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    engine = agent_engine(sim, clock, states)
    async with engine:
        pass
    with pytest.raises(TransportError, match="closed"):
        await engine.request("GET", "accountConfigReadOnly", users_path(sim), recover=True)
    assert clock.now() == 0
