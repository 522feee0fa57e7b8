"""A guard against quadratic redaction, with a margin no machine's speed or load reaches."""

from __future__ import annotations

import time
from collections.abc import Callable

#: CPU seconds a redaction of ~100 KB may take. A linear pass takes well under a second on
#: these machines (0.5 s at worst, on the most hostile runs); a quadratic one takes minutes
#: (27 s was the fastest seen). The bound sits between them, far from both: a loaded shared
#: machine slows a linear pass by a few times, never by 20.
LINEAR_CPU_SECONDS = 10.0


def assert_bounded_work(work: Callable[[], object]) -> None:
    """Run ``work`` and fail if it took the CPU time only a quadratic read takes."""
    started = time.process_time()
    work()
    spent = time.process_time() - started
    assert spent < LINEAR_CPU_SECONDS, f"{spent:.1f} s of CPU: not a linear pass"
