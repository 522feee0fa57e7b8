"""pytest plugin for le_transport users (registered through the ``pytest11`` entry point).

It only defines fixtures, so it changes nothing until a test asks for one:

- ``le_clock``: a fresh :class:`~le_transport.testing.VirtualClock`.
"""

from __future__ import annotations

import pytest

from .clock import VirtualClock


@pytest.fixture
def le_clock() -> VirtualClock:
    """A virtual clock that jumps to the next deadline whenever every task waits."""
    return VirtualClock()
