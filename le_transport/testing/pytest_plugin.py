"""pytest plugin for le_transport users (registered through the ``pytest11`` entry point).

It only defines fixtures, so it changes nothing until a test asks for one:

- ``le_clock``: a fresh :class:`~le_transport.testing.VirtualClock` (pauses cost no time).
- ``le_simulator_config``: the simulator's :class:`~le_transport.testing.simulator.SimulatorConfig`
  (the defaults; override the fixture for other accounts, TTLs or a public address).
- ``le_simulator_routes``: routes of your own for ``le_simulator`` to serve
  (:class:`~le_transport.testing.simulator.SimRoute`; none by default). Override it in a test
  module or a ``conftest.py`` to return a list of them: they are served from the start, and
  their services are in ``le_simulator.domains``, so ``le_engine`` resolves them.
- ``le_simulator``: a running :class:`~le_transport.testing.simulator.Simulator` on
  ``le_clock``, with ``le_simulator_config`` and ``le_simulator_routes``, stopped after the
  test. (Its routes are set when it starts: ``le_simulator.add_route`` in a test is refused,
  since it is running; override ``le_simulator_routes`` instead.)
- ``le_fault_seed``: the seed of ``le_fault_injector`` (0; override the fixture to change it).
- ``le_fault_injector``: a seeded :class:`~le_transport.chaos.FaultInjector` on ``le_clock``,
  with no rules until the test adds some (``le_fault_injector.add(FaultRule(...))``; a socket
  rule before ``le_engine`` opens the socket it is for: a socket opened while the injector had
  no socket rule is not wrapped, and the rule strikes only sockets opened after it).
- ``le_engine``: an :class:`~le_transport.Engine` pointed at ``le_simulator``, on ``le_clock``,
  logged in (on first use) as the simulator account's first user, with ``le_fault_injector`` as its
  wire middleware. Build your own ``Engine(le_simulator.domains, ...)`` for another setup.

The async fixtures need pytest-asyncio (strict or auto mode).

A route of your own, served beside LiveEngage's (the fault plan, ``le_simulator.requests`` and
``le_engine`` all see it)::

    import pytest
    from aiohttp import web
    from le_transport.testing.simulator import SimRoute

    async def widgets(request: web.Request) -> web.Response:
        return web.json_response({"widgets": []})

    @pytest.fixture
    def le_simulator_routes() -> list[SimRoute]:
        return [SimRoute("GET", "/api/account/{account}/widgets", widgets, service="widgets")]

    async def test_widgets(le_simulator, le_engine):
        path = f"/api/account/{le_simulator.account.id}/widgets"
        assert await le_engine.request_json("GET", "widgets", path) == {"widgets": []}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar, cast

import pytest

from ..chaos import FaultInjector
from ..engine import Engine
from ..providers import StaticDomains, UserLogin
from .clock import VirtualClock
from .simulator import DEFAULT_PASSWORD, DEFAULT_USER, SimRoute, Simulator, SimulatorConfig

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


@pytest.fixture
def le_simulator_routes() -> Sequence[SimRoute]:
    """Routes of your own for ``le_simulator`` to serve (none). Override this fixture to
    return :class:`~le_transport.testing.simulator.SimRoute` values: ``le_simulator`` serves
    them from the start, and ``le_engine`` resolves their services."""
    return []


@_async_fixture
async def le_simulator(
    le_clock: VirtualClock,
    le_simulator_config: SimulatorConfig,
    le_simulator_routes: Sequence[SimRoute],
) -> AsyncIterator[Simulator]:
    """A LiveEngage simulator on loopback, on ``le_clock``, serving ``le_simulator_routes``
    beside LiveEngage's routes; stopped after the test."""
    async with Simulator(le_simulator_config, clock=le_clock, routes=le_simulator_routes) as sim:
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
