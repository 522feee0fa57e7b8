"""Fuzz targets for everything in le_transport that parses outside input, and their runner.

``python -m fuzz`` runs every target briefly from a fixed seed (what CI does through
``tests/test_fuzz.py``); ``python -m fuzz --long`` runs them for many more inputs, and under
atheris' coverage-guided engine when it is installed (``pip install -e ".[fuzz]"``).
Invariant everywhere: only the documented exceptions escape, and no call hangs.
"""

from __future__ import annotations

import importlib

from ._harness import FuzzHang, Target, hang_guard, hypothesis_runner

__all__ = ["FuzzHang", "Target", "all_targets", "hang_guard", "hypothesis_runner"]

# Modules of targets, each a ``TARGETS`` tuple. Each covers one layer of the library.
_TARGET_MODULES = ("fuzz.targets_core", "fuzz.targets_providers", "fuzz.targets_sockets")


def all_targets() -> dict[str, Target]:
    """Every target, by name."""
    found: dict[str, Target] = {}
    for name in _TARGET_MODULES:
        module = importlib.import_module(name)
        for target in module.TARGETS:
            if target.name in found:
                raise ValueError(f"two fuzz targets named {target.name!r}")
            found[target.name] = target
    return found
