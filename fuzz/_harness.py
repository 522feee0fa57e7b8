"""The fuzzing harness: what a target is, how one call is bounded, and how a target is run.

A :class:`Target` pairs a hypothesis strategy (the shape of hostile input, from raw bytes to
near-valid protocol answers) with a ``check`` that feeds one input to the code under test and
asserts the invariant: only the documented exceptions escape, and the answer, when there is
one, is sane. Every call runs under :func:`hang_guard`, so a hang is a failure, not a stuck run.

The same target runs three ways: briefly with a fixed seed in CI (``tests/test_fuzz.py``),
long from the command line (``python -m fuzz --long``), and under atheris' coverage-guided
engine when it is installed (hypothesis' ``fuzz_one_input`` turns atheris' bytes into the
strategy's values, so both explore the same input space).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

__all__ = ["FuzzHang", "Target", "hang_guard", "hypothesis_runner", "run_async"]


class FuzzHang(AssertionError):
    """A single fuzz call ran longer than its bound: the code under test hangs or is slow
    enough on some input to be a denial of service."""


@attrs.frozen
class Target:
    """One thing that parses outside input, and the invariant it must keep.

    - ``name``: what ``python -m fuzz --target`` and the CI test call it.
    - ``strategy``: inputs, from raw noise to almost-valid answers.
    - ``check``: feeds one input to the code under test and asserts the invariant; raises
      ``AssertionError`` (or lets an undocumented exception escape) on a finding.
    - ``examples``: inputs tried first on every run (edge cases, past findings).
    - ``bound``: real seconds one call may take before it counts as a hang. Generous (the
      calls take microseconds): it detects hangs, it does not measure speed.
    """

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    bound: float = 5.0
    #: Inputs always tried first, whatever the seed: known edge cases and past findings.
    examples: tuple[Any, ...] = ()

    @property
    def doc(self) -> str:
        """The first line of the check's docstring: the invariant, in words."""
        return (self.check.__doc__ or self.name).strip().splitlines()[0]


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Fail with :class:`FuzzHang` when the body runs longer than ``seconds``.

    In the main thread a real-time timer interrupts Python code that loops; C code that never
    returns to the interpreter (a regex backtracking) cannot be interrupted, so the elapsed
    time is also checked afterwards, turning a slow-but-finite call into a finding too.
    """
    start = time.monotonic()
    armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    previous: Any = None

    def _alarm(signum: int, frame: object) -> None:
        raise FuzzHang(f"a single call ran longer than {seconds} s")

    # The handler and timer found are given back: in an atheris child they are libFuzzer's
    # -timeout (a periodic timer), which bounds a hang in C code (zeroed here, such a hang
    # stalled the child for ever). Not armed over a handler installed outside Python (None),
    # which signal.signal could not put back.
    armed = armed and signal.getsignal(signal.SIGALRM) is not None
    timer: tuple[float, float] = (0.0, 0.0)
    if armed:
        previous = signal.signal(signal.SIGALRM, _alarm)
        timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if timer[0] > 0 or timer[1] > 0:
                left = timer[0] - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), timer[1])
    elapsed = time.monotonic() - start
    if elapsed > seconds:
        raise FuzzHang(f"a single call took {elapsed:.1f} s (bound {seconds} s)")


def run_async(coro_fn: Callable[[], Awaitable[Any]], seconds: float) -> Any:
    """Run an async check in a fresh loop, bounded by ``seconds`` of real time."""

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(coro_fn(), seconds)
        except TimeoutError:
            raise FuzzHang(f"an async call ran longer than {seconds} s") from None

    return asyncio.run(bounded())


def hypothesis_runner(
    target: Target, *, examples: int, seed: int | None, print_blob: bool = False
) -> Callable[[], None]:
    """A hypothesis test running ``target`` for ``examples`` inputs from ``seed``.

    No example database (runs are reproducible from the seed alone) and no deadline (the hang
    guard bounds each call instead, with a margin that does not depend on machine speed).
    """

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=print_blob,
    )
    @given(target.strategy)
    def run(value: Any) -> None:
        with hang_guard(target.bound):
            target.check(value)

    for value in reversed(target.examples):
        run = hypothesis.example(value)(run)

    run.__name__ = f"fuzz_{target.name}"
    run.__doc__ = target.doc
    if seed is not None:
        run = hypothesis.seed(seed)(run)
    return run
