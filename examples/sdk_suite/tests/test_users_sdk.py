"""users_sdk's own tests: the le_transport plugin's fixtures, with faults injected on both sides."""

from __future__ import annotations

import pytest

# From this repository's root, mypy sees src/users_sdk under another module name (it is
# checked there); pytest finds it through pythonpath = src in this suite's pytest.ini.
from users_sdk import UsersSdk  # type: ignore[import-not-found,unused-ignore]

from le_transport import Engine, RetriesExhausted
from le_transport.chaos import FaultInjector, FaultRule, Match, Reset, Schedule, Status
from le_transport.testing import Simulator, VirtualClock

USERS = "*/le-users/users"


@pytest.mark.asyncio
async def test_login_names_survive_two_injected_503s(
    le_engine: Engine, le_simulator: Simulator, le_fault_injector: FaultInjector
) -> None:
    le_fault_injector.add(
        FaultRule("two-503s", Status(503), match=Match("GET", USERS), schedule=Schedule(0, 2))
    )
    sdk = UsersSdk(le_engine, le_simulator.account.id)
    assert await sdk.login_names() == ["agent1"]
    assert [d["kind"] for d in le_fault_injector.report()] == ["status", "status"]
    assert le_simulator.count("GET", USERS) == 1  # injected 503s never reached the server


@pytest.mark.asyncio
async def test_the_guide_schedule_runs_on_the_virtual_clock(
    le_engine: Engine, le_simulator: Simulator, le_clock: VirtualClock
) -> None:
    le_simulator.faults.script("GET", USERS, [503, 503, 503])
    sdk = UsersSdk(le_engine, le_simulator.account.id)
    assert await sdk.login_names() == ["agent1"]
    assert [r.at for r in le_simulator.requests if r.path.endswith("/users")] == [
        0.0,
        5.0,
        15.0,
        30.0,
    ]


@pytest.mark.asyncio
async def test_a_server_that_keeps_resetting_makes_the_sdk_give_up(
    le_engine: Engine, le_simulator: Simulator
) -> None:
    le_simulator.faults.add(FaultRule("down", Reset(), match=Match("GET", USERS)))
    sdk = UsersSdk(le_engine, le_simulator.account.id)
    with pytest.raises(RetriesExhausted):
        await sdk.login_names()


def test_the_plugin_only_adds_fixtures(le_clock: VirtualClock) -> None:
    assert le_clock.now() == 0.0
