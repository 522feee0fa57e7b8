"""Fuzz targets for everything in le_transport that parses outside input, and their runner.

Invariant everywhere: only the documented exceptions escape, and no call hangs.

**What CI runs**: ``tests/test_fuzz.py``, which runs every target for :data:`CI_EXAMPLES`
(150) inputs from hypothesis seed :data:`CI_SEED` (20261126), each target's ``examples``
first, with no example database: the same inputs on every run and every machine. CI does not
run ``python -m fuzz`` itself.

**Reproducing a CI finding**: the failing test's name ends in the target's name
(``test_fuzz_target_keeps_its_invariant_on_every_input[retry_after]``); either run that test
again (``pytest tests/test_fuzz.py -k retry_after``), or run the same seed and count from the
command line, which prints hypothesis' shrunk input and its ``@reproduce_failure`` blob::

    python -m fuzz --target retry_after --seed 20261126 --examples 150

**Beyond CI**: ``python -m fuzz`` runs every target for 300 inputs from seed 0 (other inputs
than CI's); ``python -m fuzz --long`` for 20,000 each, and then under atheris'
coverage-guided engine when it is installed (``pip install -e ".[fuzz]"``), ``--seconds``
(60) per target, crash inputs written to a temporary directory.
"""

from __future__ import annotations

import importlib

from ._harness import FuzzHang, Target, hang_guard, hypothesis_runner

__all__ = [
    "CI_EXAMPLES",
    "CI_SEED",
    "FuzzHang",
    "Target",
    "all_targets",
    "hang_guard",
    "hypothesis_runner",
]

#: The hypothesis seed CI runs every target from (``tests/test_fuzz.py``).
CI_SEED = 20261126
#: The inputs CI runs per target.
CI_EXAMPLES = 150

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
