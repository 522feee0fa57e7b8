"""The ``le-transport`` command: ``demo`` (the main job) and ``simulate`` (a local LiveEngage).

``le-transport demo`` runs an agent-like workload through the engine against the built-in
simulator while faults are injected, prints a timeline and a summary, and exits 0 only when
every invariant held.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="le-transport",
        description="Resilient transport for LivePerson LiveEngage: demo and local simulator.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run an agent-like workload under injected faults and show what the library did",
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=0.01,
        help="multiply every schedule (5/10/15 s pauses, re-login, reconnect) by this "
        "(default 0.01: the guide's minutes become a few seconds)",
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the fault plan (default 7)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``le-transport`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(time_scale=args.time_scale, seed=args.seed)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
