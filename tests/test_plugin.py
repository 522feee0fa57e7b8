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
