"""Instructions per call, counted by callgrind: what the engine adds to raw aiohttp, without noise.

``python -m benchmarks.instructions [--calls N] [--repeats R] [--peers]`` (needs ``valgrind``).
CPU time on a shared machine moves with whatever else runs; an instruction count does not.
Each variant runs as a child process under ``valgrind --tool=callgrind`` twice, once with no
measured calls and once with ``N`` (both after the same warm-up), and the difference over ``N``
is its count per call, so start-up, imports and the warm-up cancel out:

- **raw aiohttp** and **our engine** (the HTTP table's clients), ``GET /ok`` at concurrency 64
  against the benchmark server on loopback (the server runs natively, outside valgrind); with
  ``--peers``, the table's other clients too (the engine with the overload guard, and the
  retry wrappers: tenacity, backoff, stamina, aiohttp-retry), and raw aiohttp as shipped (its
  default session arms a 5-minute timeout on every request; every other client has it off);
- **our engine on the stub wire** (:mod:`benchmarks.policy_cost`'s stub in place of aiohttp's
  connection), one call at a time, less the cost of the loop turn each call yields (measured
  alone): the engine's own instructions.

The loopback counts vary a little from run to run (how many answers one wake-up of the loop
finds depends on timing), so each is the median of ``R`` repeats; the stub's are exact.
Comparing the stub's count with the engine's extra count on loopback tells whether the engine
does more *work* on a real connection or does the same work more *slowly* (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ._common import drive, machine, server, table, write_json

__all__ = ["collected", "main", "per_call"]

#: Calls made before counting starts in every child (connections opened, caches filled).
WARMUP = 300
#: Raw aiohttp as most code uses it: a default session, whose ClientTimeout arms a 5-minute
#: total timeout on every request (every other client here has it off).
RAW_AS_SHIPPED = "raw aiohttp as shipped (its default 5-min timeout)"
#: The loopback variants, by the name of the HTTP table's client they run. The first two are
#: always counted; ``--peers`` adds the rest.
LOOPBACK = {
    "raw": "raw aiohttp",
    "engine": "le_transport engine",
    "guarded": "le_transport engine + overload guard",
    "tenacity": "tenacity",
    "backoff": "backoff",
    "stamina": "stamina",
    "aiohttp-retry": "aiohttp-retry",
    "raw-shipped": RAW_AS_SHIPPED,
}
CONCURRENCY = 64
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def collected(stderr: str) -> int:
    """The instruction count callgrind reported (its ``Collected :`` line)."""
    found = _COLLECTED.findall(stderr)
    if not found:
        raise RuntimeError(f"callgrind reported no count: {stderr[-300:]!r}")
    return int(found[-1])


def per_call(base: int, measured: int, calls: int) -> float:
    """Instructions per call: what ``calls`` more calls added to the run without them."""
    if calls <= 0:
        raise ValueError("calls must be >= 1")
    return (measured - base) / calls


async def _child(variant: str, port: int, calls: int) -> None:
    """The measured program: a warm-up, then ``calls`` calls of ``variant``."""
    if variant in ("stub", "loop-turn"):
        await _stub_child(variant, calls)
        return
    from .http_calls import CLIENTS

    maker = _raw_as_shipped if variant == "raw-shipped" else CLIENTS[LOOPBACK[variant]]
    async with maker(URL(f"http://127.0.0.1:{port}/ok")) as call:
        await drive(call, WARMUP, CONCURRENCY)
        await drive(call, calls, CONCURRENCY)


@contextlib.asynccontextmanager
async def _raw_as_shipped(url: URL) -> AsyncIterator[Any]:
    from .http_calls import _raw_call

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield _raw_call(session, url)


async def _stub_child(variant: str, calls: int) -> None:
    from le_transport import Engine, RetryPolicy

    from .http_calls import PAUSES
    from .policy_cost import _STUB_URL, _StubSession

    engine = Engine(
        {"svc": "127.0.0.1:8080"},
        scheme="http",
        retry=RetryPolicy(pauses=PAUSES, attempt_timeout=10.0, deadline=30.0),
    )
    engine._session = _StubSession(engine.middlewares[-1])  # type: ignore[assignment]
    path = _STUB_URL.path
    for _ in range(WARMUP):
        await engine.request("GET", "svc", path)
    for _ in range(calls):
        if variant == "stub":
            await engine.request("GET", "svc", path)
        await asyncio.sleep(0)  # each call yields to the loop once, as a real one does


def _count(variant: str, port: int, calls: int) -> int:
    with tempfile.TemporaryDirectory(prefix="le-callgrind-") as tmp:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(tmp) / 'out'}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                variant,
                str(port),
                str(calls),
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=1800,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed under callgrind: {proc.stderr[-500:]}")
    return collected(proc.stderr)


def _median_per_call(variant: str, port: int, calls: int, repeats: int) -> dict[str, Any]:
    counts = [per_call(_count(variant, port, 0), _count(variant, port, calls), calls)]
    for _ in range(repeats - 1):
        counts.append(per_call(_count(variant, port, 0), _count(variant, port, calls), calls))
    return {"per_call": statistics.median(counts), "repeats": counts}


def run(calls: int, repeats: int, peers: bool = False) -> dict[str, Any]:
    """Count every variant (with ``peers``, every client of the HTTP table on loopback);
    ``{"text": table, "data": figures}``."""
    data: dict[str, Any] = {"calls": calls, "repeats": repeats, "concurrency": CONCURRENCY}
    counted = list(LOOPBACK) if peers else ["raw", "engine"]
    with server() as srv:
        for variant in counted:
            data[variant] = _median_per_call(variant, srv.port, calls, repeats)
    data["stub"] = _median_per_call("stub", 0, calls, 1)
    data["loop-turn"] = _median_per_call("loop-turn", 0, calls, 1)
    raw, eng = data["raw"]["per_call"], data["engine"]["per_call"]
    own = data["stub"]["per_call"] - data["loop-turn"]["per_call"]
    data["engine_extra"] = eng - raw
    data["engine_own_on_stub"] = own
    rows = [
        ["raw aiohttp, loopback, concurrency 64", f"{raw:,.0f}", "-"],
        ["our engine, loopback, concurrency 64", f"{eng:,.0f}", f"{eng - raw:+,.0f}"],
    ]
    for variant in counted[2:]:
        count = data[variant]["per_call"]
        rows.append(
            [
                f"{LOOPBACK[variant]}, loopback, concurrency 64",
                f"{count:,.0f}",
                f"{count - raw:+,.0f}",
            ]
        )
    rows.append(["our engine's own work (stub wire, one call at a time)", f"{own:,.0f}", "-"])
    text = (
        f"Instructions per call (callgrind; {calls:,} calls, median of {repeats} on loopback)\n\n"
        + table(["what", "instructions per call", "vs raw"], rows)
        + f"\n\nthe engine's extra on loopback is {(eng - raw) / own:.2f}x its own work on "
        f"the stub wire; raw aiohttp's share of the engine's count: {raw / eng:.1%}"
    )
    return {"text": text, "data": data}


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.instructions``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--calls", type=int, default=3000, help="measured calls (3000)")
    parser.add_argument("--repeats", type=int, default=3, help="loopback repeats (3)")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also count the HTTP table's other clients (the guarded engine and the wrappers)",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "PORT", "CALLS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        variant, port, calls = args.child
        asyncio.run(_child(variant, int(port), int(calls)))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is needed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.calls < 1 or args.repeats < 1:
        print("--calls and --repeats must be >= 1", file=sys.stderr)
        return 2
    result = run(args.calls, args.repeats, peers=args.peers)
    print(result["text"])
    path = write_json("instructions.json", {"machine": machine(), "instructions": result["data"]})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
