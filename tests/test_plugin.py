"""The pytest plugin, used by another package with its own layout (examples/sdk_suite).

The suite is copied to a temporary directory and run by a separate pytest process, in
pytest-asyncio's strict mode, with only what installing le_transport provides: the plugin
arrives through its entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "sdk_suite"


def _run_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "sdk_suite"
    shutil.copytree(SUITE, project, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_another_package_uses_the_fixtures_with_injected_faults(tmp_path: Path) -> None:
    result = _run_suite(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


OWN_ROUTES_SUITE = """
import pytest
from aiohttp import web

from le_transport.errors import ConfigurationError
from le_transport.testing.simulator import SimRoute


async def widgets(request):
    return web.json_response({"account": request.match_info["account"], "widgets": [1, 2]})


@pytest.fixture
def le_simulator_routes():
    return [SimRoute("GET", "/api/account/{account}/widgets", widgets, service="widgets")]


@pytest.mark.asyncio
async def test_le_engine_reaches_a_route_of_the_modules_own(le_simulator, le_engine):
    le_simulator.faults.script("GET", "/api/*/widgets", [503])
    path = f"/api/account/{le_simulator.account.id}/widgets"
    body = await le_engine.request_json("GET", "widgets", path)
    assert body == {"account": le_simulator.account.id, "widgets": [1, 2]}
    assert [r.service for r in le_simulator.requests if r.path.endswith("/widgets")] == [
        "widgets",
        "widgets",
    ]


@pytest.mark.asyncio
async def test_adding_a_route_to_the_running_fixture_points_at_the_fixture(le_simulator):
    with pytest.raises(ConfigurationError, match="le_simulator_routes"):
        le_simulator.add_route("GET", "/api/account/{account}/gadgets", widgets)
"""

DEFAULT_ROUTES_SUITE = """
import pytest


@pytest.mark.asyncio
async def test_no_routes_of_ones_own_by_default(le_simulator, le_simulator_routes):
    assert list(le_simulator_routes) == []
    assert le_simulator.routes == ()
"""


def test_a_module_serves_routes_of_its_own_by_overriding_le_simulator_routes(
    tmp_path: Path,
) -> None:
    # Before, the plugin's fixtures could not serve a route of one's own: le_simulator.add_route
    # was refused (the simulator was running), and restarting it left le_engine on the old
    # domain map (UnknownServiceError for the route's service).
    project = tmp_path / "own_routes"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "addopts = -p no:cacheprovider\n"
    )
    (project / "test_own_routes.py").write_text(OWN_ROUTES_SUITE)
    (project / "test_default_routes.py").write_text(DEFAULT_ROUTES_SUITE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
