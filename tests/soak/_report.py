"""What a soak run measures and prints: sizes, the fault table, leaks of fds, tasks and memory."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import os
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from le_transport.testing import VirtualClock

__all__ = [
    "REPORTS",
    "FaultTally",
    "MemoryProbe",
    "SoakSize",
    "forget_clock_history",
    "leaked_tasks",
    "open_fds",
    "pytest_keeps_no_records",
    "render_table",
    "socket_fds",
]

#: ``(title, table)`` of every soak run of this session, printed at its end.
REPORTS: list[tuple[str, str]] = []


class SoakSize(enum.Enum):
    """The short run (CI) or the long one (the issue's figures)."""

    SHORT = "short"
    LONG = "long"

    @property
    def http_calls(self) -> int:
        """HTTP calls in the HTTP soak."""
        return 10_000 if self is SoakSize.LONG else 500

    @property
    def ws_drops(self) -> int:
        """Forced WebSocket drops in the socket soak."""
        return 1_000 if self is SoakSize.LONG else 50

    @property
    def ws_sockets(self) -> int:
        """Sockets open at once in the socket soak."""
        return 50 if self is SoakSize.LONG else 8


@dataclass
class FaultTally:
    """Per fault kind: how often it was injected, and how the calls it hit ended."""

    injected: Counter[str] = field(default_factory=Counter)
    calls_hit: Counter[str] = field(default_factory=Counter)
    ended_ok: Counter[str] = field(default_factory=Counter)
    ended_typed: Counter[str] = field(default_factory=Counter)
    as_scheduled: Counter[str] = field(default_factory=Counter)

    def rows(self, order: Iterable[str]) -> list[list[str]]:
        """One row per fault kind, in ``order``, then a total."""
        rows = []
        for kind in order:
            rows.append(
                [
                    kind,
                    str(self.injected[kind]),
                    str(self.calls_hit[kind]),
                    str(self.ended_ok[kind]),
                    str(self.ended_typed[kind]),
                    str(self.as_scheduled[kind]),
                ]
            )
        return rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it reads as well in a terminal as in the README)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def socket_fds() -> int:
    """How many of them are sockets."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


# Allocations that count: the library and the client stack it runs on. The simulator (with
# aiohttp's server side under it: it keeps every socket and request it served), the fault
# run's decision log and the test's own records grow on purpose, so they are left out, as is
# logging (pytest keeps every record of a test).
_LIBRARY_PARTS = (
    f"{os.sep}le_transport{os.sep}",
    f"{os.sep}aiohttp{os.sep}",
    f"{os.sep}yarl{os.sep}",
    f"{os.sep}multidict{os.sep}",
    f"{os.sep}asyncio{os.sep}",
)
_EXCLUDED_PARTS = (
    f"{os.sep}le_transport{os.sep}testing{os.sep}",
    f"{os.sep}le_transport{os.sep}chaos{os.sep}",
    f"{os.sep}tests{os.sep}",
    f"{os.sep}_pytest{os.sep}",
    "<attrs generated",
)


_FRAMES = 4


def _counts(trace: tracemalloc.Traceback) -> bool:
    """Whether an allocation is the library's: made in library code, and not on behalf of the
    simulator, the fault injector, the virtual clock or the test (any frame of theirs)."""
    # Frames run from the oldest to the most recent: the last one made the allocation.
    site = trace[-1].filename
    if not any(p in site for p in _LIBRARY_PARTS):
        return False
    if f"{os.sep}aiohttp{os.sep}web" in site:
        return False  # aiohttp's server: the simulator's side of the wire
    return not any(any(p in frame.filename for p in _EXCLUDED_PARTS) for frame in trace)


def _library_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.statistics("traceback") if _counts(stat.traceback))


class MemoryProbe:
    """Memory held by the library's own code, sampled at points of a run with tracemalloc."""

    def __init__(self) -> None:
        self._started_here = False
        self.samples: dict[str, int] = {}
        self.snapshots: dict[str, tracemalloc.Snapshot] = {}

    def __enter__(self) -> MemoryProbe:
        if not tracemalloc.is_tracing():
            tracemalloc.start(_FRAMES)
            self._started_here = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            tracemalloc.stop()

    def sample(self, name: str) -> int:
        """Bytes currently held by library code, after a full collection."""
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        size = _library_bytes(snapshot)
        self.samples[name] = size
        self.snapshots[name] = snapshot
        return size

    def growth(self, first: str, last: str, top: int = 8) -> list[str]:
        """The library lines whose held memory grew most between two samples."""
        diff = self.snapshots[last].compare_to(self.snapshots[first], "traceback")
        lines: list[str] = []
        for d in diff:
            if _counts(d.traceback) and len(lines) < top:
                where = " <- ".join(
                    f"{f.filename.rsplit(os.sep, 1)[-1]}:{f.lineno}" for f in reversed(d.traceback)
                )
                lines.append(f"{d.size_diff:+} B, {d.count_diff:+} blocks: {where}")
        return lines


@contextlib.contextmanager
def pytest_keeps_no_records() -> Iterator[None]:
    """Stop pytest's log capture from keeping records for the duration of a soak run.

    pytest keeps every record of a test for its report; over thousands of calls that is
    memory the run would wrongly charge to the library (a record holds its formatted
    arguments). The test-wide secret check still sees every record: it is not pytest's.
    """
    root = logging.getLogger()
    muted = [(h, h.level) for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler, _ in muted:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in muted:
            handler.setLevel(level)


def forget_clock_history(clock: VirtualClock) -> None:
    """Empty the virtual clock's record of sleeps: it keeps the newest 100,000 (the float the
    library computed included), memory the leak check would charge to the library."""
    clock.sleeps.clear()
    clock.history.clear()


def leaked_tasks(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """Tasks started since ``before`` that are still running."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]
