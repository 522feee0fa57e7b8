"""Soak configuration: the short run (CI) or the long run (``--soak-long`` or ``LE_SOAK=long``).

``pytest tests/soak --soak-long`` (or ``LE_SOAK=long pytest tests/soak``) runs the issue's
figures: 10,000 HTTP calls and 1,000 WebSocket drops across 50 sockets. Without it the same
tests run a short version sized for CI. Each run's table of faults injected and survived is
printed at the end of the session.
"""

from __future__ import annotations

import os

import pytest

from tests.soak._report import REPORTS, SoakSize


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak-long``: the full-size soak runs."""
    parser.addoption(
        "--soak-long",
        action="store_true",
        default=False,
        help="run the long chaos soak (10,000 HTTP calls, 1,000 socket drops); also LE_SOAK=long",
    )


@pytest.fixture
def soak_size(request: pytest.FixtureRequest) -> SoakSize:
    """How big the soak runs are: long with ``--soak-long`` or ``LE_SOAK=long``, else short."""
    try:
        flag = bool(request.config.getoption("--soak-long"))
    except ValueError:  # the option is registered only when this directory is collected first
        flag = False
    long = flag or os.environ.get("LE_SOAK", "").lower() == "long"
    return SoakSize.LONG if long else SoakSize.SHORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every soak run's table of faults injected and survived."""
    for title, table in REPORTS:
        terminalreporter.write_sep("=", title)
        terminalreporter.write_line(table)
