"""What every benchmark shares: the server subprocess, statistics, the machine, and tables.

The server always runs in its own process, so that the client under test has a core of its own
and its figures are not the server's; :func:`cpu_seconds` reads both processes' CPU time from
``/proc`` so a table can show when the server, not the client, was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_EXTRA_HINT",
    "RESULTS_DIR",
    "PeerMissing",
    "ServerProcess",
    "Spread",
    "cpu_seconds",
    "drive",
    "machine",
    "missing_peer",
    "not_measured",
    "percentile",
    "raise_fd_limit",
    "rss_bytes",
    "server",
    "settle_memory",
    "spread",
    "table",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


class Spread(dict[str, float]):
    """Median, min and max of repeated measurements (a dict, so it goes to JSON as is)."""

    @property
    def median(self) -> float:
        """The median of the rounds."""
        return self["median"]

    def describe(self, fmt: str = "{:,.0f}") -> str:
        """``median (min-max)``, or just the median for a single round."""
        if self["min"] == self["max"]:
            return fmt.format(self["median"])
        low, high = fmt.format(self["min"]), fmt.format(self["max"])
        return f"{fmt.format(self['median'])} ({low}-{high})"


def spread(values: Sequence[float]) -> Spread:
    """The median and range of ``values`` (one value per round)."""
    if not values:
        return Spread(median=float("nan"), min=float("nan"), max=float("nan"), n=0)
    return Spread(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (this process when None)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # Fields after the command name (which may hold spaces) start past the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def drive(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> None:
    """Make ``calls`` calls of ``call`` from ``concurrency`` workers, each taking the next call
    as soon as its last one ends."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def rss_bytes() -> int:
    """This process's resident set size now (not the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle_memory() -> int:
    """Collect garbage, then return the RSS: the figure memory-per-socket deltas are built on."""
    for _ in range(3):
        gc.collect()
    return rss_bytes()


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file limit towards ``want`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class ServerProcess:
    """A benchmark server (``python -m benchmarks.server``) on a free loopback port."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def url(self, path: str, scheme: str = "http") -> str:
        """An absolute URL on the server."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float:
        """The server's CPU seconds so far."""
        return cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def server(*args: str) -> Iterator[ServerProcess]:
    """Start the benchmark server in a subprocess; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        yield ServerProcess(proc, int(line.split()[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run_child(module: str, args: Sequence[str], *, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m module args`` from the repository root and return the last JSON line it
    printed, or ``{"error": ...}`` (its last stderr line, or that it timed out).

    Each measurement that needs a process of its own (memory, a storm) runs through here, so
    that every child starts the same way and fails the same way.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip()[-500:]
    return result


#: How to install the peer libraries the benchmarks compare against (the bench extra).
BENCH_EXTRA_HINT = "pip install -e '.[bench]'"


class PeerMissing(RuntimeError):
    """A peer library a measurement needs is not installed (the bench extra)."""


def missing_peer(module: str) -> str | None:
    """None if ``module`` (a peer library: tenacity, websockets...) imports here, else why not
    (``"not installed (pip install -e '.[bench]')"``): a part measures what it can without it,
    and says what it left out, instead of dying half-way with no JSON written."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        name = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if name is not None and name.split(".")[0] == module.split(".")[0]:
            return f"not installed ({BENCH_EXTRA_HINT})"
        return f"does not import ({type(exc).__name__}: {str(exc)[:80]})"
    return None


def not_measured(results: dict[str, Any], key: str = "error") -> str:
    """The lines under a table naming what was not measured and why: ``"<name>: <why>; not
    measured"`` for each entry of ``results`` whose ``key`` says what went wrong (an error
    row in the table's own columns would put a sentence under a figure's heading)."""
    lines = []
    for name, entry in results.items():
        why = entry.get(key) if isinstance(entry, dict) else None
        if why:
            lines.append(f"{name}: {str(why)[:200]}; not measured")
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: cores, memory, CPU, Python, versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_bytes": mem_total,
        "load_average_at_start": load,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "le_transport",
                "aiohttp",
                "yarl",
                "multidict",
                "attrs",
                "tenacity",
                "backoff",
                "stamina",
                "aiohttp-retry",
                "websockets",
            )
        },
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned numbers, for the terminal and the README."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("| " + " | ".join(parts) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path
