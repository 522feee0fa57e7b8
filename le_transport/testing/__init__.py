"""Test support: the virtual clock, the LiveEngage simulator, and the pytest plugin.

The library never imports this package; tests and users' test suites do.
"""

from .clock import VirtualClock
from .simulator import Simulator, SimulatorConfig

__all__ = ["Simulator", "SimulatorConfig", "VirtualClock"]
