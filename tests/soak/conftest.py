"""Soak configuration: the short run (CI) or the long run (``--soak-long`` or ``LE_SOAK=long``).

``pytest tests/soak --soak-long`` (or ``LE_SOAK=long pytest tests/soak``) runs the issue's
figures: 10,000 HTTP calls and 1,000 WebSocket drops across 50 sockets. Without it the same
tests run a short version sized for CI. Each run's table of faults injected and survived is
printed at the end of the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.soak._report import REPORTS, SoakSize

SHORT_TIMEOUT = 900
LONG_TIMEOUT = 4 * 3600


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak-long``: the full-size soak runs."""
    parser.addoption(
        "--soak-long",
        action="store_true",
        default=False,
        help="run the long chaos soak (10,000 HTTP calls, 1,000 socket drops); also LE_SOAK=long",
    )


def _size(config: pytest.Config) -> SoakSize:
    try:
        flag = bool(config.getoption("--soak-long"))
    except ValueError:  # the option is registered only when this directory is collected first
        flag = False
    long = flag or os.environ.get("LE_SOAK", "").lower() == "long"
    return SoakSize.LONG if long else SoakSize.SHORT


@pytest.fixture
def soak_size(request: pytest.FixtureRequest) -> SoakSize:
    """How big the soak runs are: long with ``--soak-long`` or ``LE_SOAK=long``, else short."""
    return _size(request.config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs get a hang timeout of their own: the suite's 180 s would cut a long run (tens
    of minutes on a shared machine) and, on a loaded one, even a short run. Each run bounds
    its own calls on the virtual clock; this only catches a run that stops moving."""
    here = Path(__file__).parent
    limit = LONG_TIMEOUT if _size(config) is SoakSize.LONG else SHORT_TIMEOUT
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.timeout(limit))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every soak run's table of faults injected and survived."""
    for title, table in REPORTS:
        terminalreporter.write_sep("=", title)
        terminalreporter.write_line(table)
