"""Overriding the plugin's ``le_simulator_config`` fixture: this module's own account."""

from __future__ import annotations

import pytest

# See test_users_sdk.py for why mypy is told to skip this import from the repository root.
from users_sdk import UsersSdk  # type: ignore[import-not-found,unused-ignore]

from le_transport import Engine
from le_transport.testing import Simulator, SimulatorConfig
from le_transport.testing.simulator import Account


@pytest.fixture
def le_simulator_config() -> SimulatorConfig:
    """Two agents on account 555 (replaces the plugin's default configuration here)."""
    return SimulatorConfig(accounts=[Account(id="555", users={"alice": "pw-a", "bob": "pw-b"})])


@pytest.mark.asyncio
async def test_the_simulator_serves_this_suites_own_account(
    le_engine: Engine, le_simulator: Simulator
) -> None:
    assert le_simulator.account.id == "555"
    assert await UsersSdk(le_engine, "555").login_names() == ["alice", "bob"]
