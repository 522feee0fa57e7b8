"""pytest plugin for le_transport users (registered through the ``pytest11`` entry point).

It only defines fixtures, so it changes nothing until a test asks for one:

- ``le_clock``: a fresh :class:`~le_transport.testing.VirtualClock` (pauses cost no time).
- ``le_simulator_config``: the simulator's :class:`~le_transport.testing.simulator.SimulatorConfig`
  (the defaults; override the fixture for other accounts, TTLs or a public address).
- ``le_simulator``: a running :class:`~le_transport.testing.simulator.Simulator` on
  ``le_clock``, stopped after the test.
- ``le_fault_seed``: the seed of ``le_fault_injector`` (0; override the fixture to change it).
- ``le_fault_injector``: a seeded :class:`~le_transport.chaos.FaultInjector` on ``le_clock``,
  with no rules until the test adds some (``le_fault_injector.add(FaultRule(...))``).
- ``le_engine``: an :class:`~le_transport.Engine` pointed at ``le_simulator``, on ``le_clock``,
  logged in (on first use) as the simulator account's first user, with ``le_fault_injector`` as its
  wire middleware. Build your own ``Engine(le_simulator.domains, ...)`` for another setup.

The async fixtures need pytest-asyncio (strict or auto mode).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest

from ..chaos import FaultInjector
from ..engine import Engine
from ..providers import StaticDomains, UserLogin
from .clock import VirtualClock
from .simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator, SimulatorConfig

F = TypeVar("F", bound=Callable[..., Any])

try:
    import pytest_asyncio

    _fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - without pytest-asyncio the async fixtures cannot run
    _fixture = pytest.fixture


def _async_fixture(fn: F) -> F:
    # pytest-asyncio's own decorator, so that the fixtures also work in its strict mode.
    return cast(F, _fixture(fn))


@pytest.fixture
def le_clock() -> VirtualClock:
    """A virtual clock that jumps to the next deadline whenever every task waits."""
    return VirtualClock()


@pytest.fixture
def le_simulator_config() -> SimulatorConfig:
    """The simulator's configuration. Override this fixture to change it."""
    return SimulatorConfig()


@_async_fixture
async def le_simulator(
    le_clock: VirtualClock, le_simulator_config: SimulatorConfig
) -> AsyncIterator[Simulator]:
    """A LiveEngage simulator on loopback, on ``le_clock``; stopped after the test."""
    async with Simulator(le_simulator_config, clock=le_clock) as sim:
        yield sim


@pytest.fixture
def le_fault_seed() -> int:
    """The seed of ``le_fault_injector``. Override this fixture to run with another seed."""
    return 0


@pytest.fixture
def le_fault_injector(le_clock: VirtualClock, le_fault_seed: int) -> FaultInjector:
    """A seeded fault injector on ``le_clock``, with no rules yet."""
    return FaultInjector.seeded(le_fault_seed, clock=le_clock)


@_async_fixture
async def le_engine(
    le_simulator: Simulator, le_clock: VirtualClock, le_fault_injector: FaultInjector
) -> AsyncIterator[Engine]:
    """An engine pointed at ``le_simulator``, logging in as its default agent, with
    ``le_fault_injector`` on the wire."""
    domains = StaticDomains(le_simulator.domains)
    account = le_simulator.account
    user, password = next(iter(account.users.items()), (DEFAULT_USER, DEFAULT_PASSWORD))
    auth = UserLogin(account.id, user, password, domains=domains, keepalive=False)
    async with Engine(
        domains,
        scheme=le_simulator.scheme,
        clock=le_clock,
        auth=auth,
        wire_middlewares=[le_fault_injector],
    ) as engine:
        yield engine
