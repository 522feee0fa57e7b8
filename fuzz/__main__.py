"""``python -m fuzz [--long] [--seed N] [--examples N] [--target NAME ...] [--atheris] [--list]``.

Without ``--long`` each target runs 300 inputs from seed 0 (seconds in all); with it, 20,000
each, and then, if atheris is installed, a coverage-guided run of each target in its own
process (``--seconds`` each). ``--examples`` and ``--seconds`` are whole numbers, 1 or more.
The exit code is 0 only if no target found anything. What CI runs, and how to reproduce one of
its findings: see the :mod:`fuzz` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from le_transport._args import positive_int

from . import all_targets, hypothesis_runner

SHORT_EXAMPLES = 300
LONG_EXAMPLES = 20_000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    p.add_argument("--long", action="store_true", help="run many more inputs, then atheris")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument(
        "--examples",
        type=positive_int,
        help=f"inputs per target, 1 or more (overrides --long; default {SHORT_EXAMPLES}, "
        f"{LONG_EXAMPLES} with --long)",
    )
    p.add_argument("--target", action="append", help="run only this target (repeatable)")
    p.add_argument("--atheris", action="store_true", help="coverage-guided run with atheris")
    p.add_argument(
        "--seconds",
        type=positive_int,
        default=60,
        help="atheris time per target, whole seconds, 1 or more (default 60)",
    )
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("--atheris-child", help=argparse.SUPPRESS)
    return p


def _atheris_child(name: str, argv: Sequence[str]) -> None:
    import atheris

    # Every function loaded so far: le_transport is imported by now (this module's own imports
    # bring it), and instrument_imports() instruments only what is imported inside it, which
    # left libFuzzer with no coverage at all (random bytes, "is the code instrumented?").
    atheris.instrument_all()

    target = all_targets()[name]
    run = hypothesis_runner(target, examples=1, seed=None)
    atheris.Setup([sys.argv[0], *argv], run.hypothesis.fuzz_one_input)  # type: ignore[attr-defined]
    atheris.Fuzz()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen targets; print one line per target; 0 if nothing was found."""
    args = _parser().parse_args(argv)
    # The library logs every fault it meets; thousands of them would drown the report.
    logging.getLogger().addHandler(logging.NullHandler())
    if args.atheris_child:
        # Crash inputs go to a temporary directory, not into the working tree.
        artifacts = tempfile.mkdtemp(prefix=f"fuzz-{args.atheris_child}-")
        _atheris_child(
            args.atheris_child,
            [
                f"-max_total_time={args.seconds}",
                "-timeout=10",
                f"-artifact_prefix={artifacts}/",
            ],
        )
        return 0
    targets = all_targets()
    if args.list:
        for t in targets.values():
            print(f"{t.name:16} {t.doc}")
        return 0
    chosen = args.target or list(targets)
    unknown = [n for n in chosen if n not in targets]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    examples = args.examples
    if examples is None:
        examples = LONG_EXAMPLES if args.long else SHORT_EXAMPLES
    failed: list[str] = []
    for name in chosen:
        start = time.monotonic()
        try:
            hypothesis_runner(targets[name], examples=examples, seed=args.seed, print_blob=True)()
        except Exception as exc:  # a finding: report it and go on with the other targets
            failed.append(name)
            print(f"FAIL {name:16} {type(exc).__name__}: {str(exc)[:2000]}")
        else:
            print(f"ok   {name:16} {examples} inputs in {time.monotonic() - start:.1f} s")
    if args.long or args.atheris:
        if importlib.util.find_spec("atheris") is None:
            print("atheris is not installed: hypothesis only (pip install -e '.[fuzz]')")
        else:
            for name in chosen:
                cmd = [sys.executable, "-m", "fuzz", "--atheris-child", name]
                cmd += ["--seconds", str(args.seconds)]
                rc = subprocess.call(cmd)
                print(f"{'ok  ' if rc == 0 else 'FAIL'} {name:16} atheris {args.seconds} s")
                if rc != 0:
                    failed.append(f"{name} (atheris)")
    if failed:
        print(f"findings in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
