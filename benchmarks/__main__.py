"""``python -m benchmarks run [--quick] [--only http,faults,ws,storm,policy]``: one run, one table.

Runs every measurement side by side, prints the tables, and writes everything (with the
machine's facts) as JSON to ``benchmarks/results/`` (git-ignored): a timestamped file and
``latest.json``. ``--quick`` is a small run (about a minute); ``--tiny``, the size CI runs
(tests/test_benchmarks.py), only proves that each part still runs. ``http_layers``,
``overload`` and ``ws_memory`` run only when ``--only`` names them. See benchmarks/README.md
for what each part measures and the figures on record.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from le_transport._args import positive_int

from ._common import PeerMissing, machine, write_json

SECTIONS = ("http", "faults", "ws", "storm", "policy")
#: Parts run only when ``--only`` names them: other modules of benchmarks/ with the same
#: ``run(size_name) -> {"text": ..., "data": ...}`` contract.
EXTRAS = ("http_layers", "overload", "ws_memory")


def _sections(only: tuple[str, ...], size: str, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(name, result) for each section asked for, in a fixed order."""
    out: list[tuple[str, Any]] = []
    raw_call_us: float | None = None
    http_parts = tuple(s for s in ("http", "faults") if s in only)
    if http_parts:
        from . import http_calls

        result = _timed("+".join(http_parts), lambda: http_calls.run(size, http_parts))
        raw_call_us = result.get("raw_call_us")
        out.append(("+".join(http_parts), result))
    if "ws" in only:
        from . import ws_scale

        out.append(("ws", _timed("ws", lambda: ws_scale.run(size, sockets=args.sockets))))
    if "storm" in only:
        from .reconnect_storm import run as run_storm

        out.append(("storm", _timed("storm", lambda: run_storm(size, sockets=args.sockets))))
    if "policy" in only:
        from . import policy_cost

        out.append(("policy", _timed("policy", lambda: policy_cost.run(size, raw_call_us))))
    for extra in only:
        if extra not in SECTIONS:
            # One of EXTRAS: another part of benchmarks/ with the same run(size) contract.
            run_extra: Callable[[str], dict[str, Any]] = importlib.import_module(
                f"benchmarks.{extra}"
            ).run
            out.append((extra, _timed(extra, functools.partial(run_extra, size))))
    return out


def _timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    result = fn()
    result["wall_seconds"] = time.perf_counter() - start
    # Printed as each part ends: a full run is long, and a reader can watch it go.
    print(f"\n== {name} ({result['wall_seconds']:.0f} s)\n\n{result['text']}", flush=True)
    return result


def _parts(text: str) -> tuple[str, ...]:
    """``--only``: comma-separated part names, each one of :data:`SECTIONS` or :data:`EXTRAS`."""
    only = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    valid = ", ".join((*SECTIONS, *EXTRAS))
    if not only:
        raise argparse.ArgumentTypeError(f"name at least one part: {valid}")
    unknown = [part for part in only if part not in SECTIONS and part not in EXTRAS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(repr(u[:40]) for u in unknown)}; the parts are {valid}"
        )
    return only


def _positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print, write JSON.

    Every argument is checked before anything runs or is written (``latest.json`` included):
    a mistake is argparse's usage error, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks")
    sizes = run.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    sizes.add_argument("--tiny", action="store_true", help="smallest sizes: only proves it runs")
    run.add_argument(
        "--only",
        type=_parts,
        default=SECTIONS,
        help=f"comma-separated parts to run (default: all of {','.join(SECTIONS)}; also "
        f"{','.join(EXTRAS)}, run only when named)",
    )
    run.add_argument(
        "--sockets",
        type=positive_int,
        default=None,
        help="sockets for ws and storm, 1 or more (default: by size)",
    )
    run.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    prof = sub.add_parser("profile", help="profile one HTTP client's calls (pyinstrument)")
    prof.add_argument("--client", default="le_transport engine", help="a client of the table")
    prof.add_argument("--concurrency", type=positive_int, default=64)
    prof.add_argument("--seconds", type=_positive_seconds, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "profile":
        from .http_calls import CLIENTS, profile

        if args.client not in CLIENTS:
            prof.error(
                f"argument --client: unknown client {args.client[:60]!r}; the clients are "
                + ", ".join(repr(name) for name in CLIENTS)
            )
        try:
            text = profile(args.client, args.concurrency, args.seconds)
        except PeerMissing as exc:
            # The bench extra is not installed: said in one line, not a traceback.
            print(exc, file=sys.stderr)
            return 1
        print(text)
        return 0
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    only: tuple[str, ...] = args.only
    facts = machine()
    print(
        f"le_transport benchmarks, {size} size, on {facts['cores']} cores ({facts['cpu']}), "
        f"Python {facts['python']}, aiohttp {facts['versions']['aiohttp']}; "
        f"load average {facts['load_average_at_start']}",
        flush=True,
    )
    started = time.perf_counter()
    results = _sections(only, size, args)
    payload = {
        "machine": facts,
        "size": size,
        "wall_seconds": time.perf_counter() - started,
        "results": {name: result["data"] for name, result in results},
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = write_json(args.out or f"bench-{size}-{stamp}.json", payload)
    if args.out is None:
        write_json("latest.json", payload)
    print(f"\nwrote {path} ({payload['wall_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
