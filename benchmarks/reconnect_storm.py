"""Reconnect storm: a whole fleet of sockets dropped at once, and how it comes back.

The server (its own process) aborts every open socket in one go (a reset, as a restart does).
The client records, on the machine-wide monotonic clock, when each socket starts a reconnect
attempt (our sockets' ``connecting`` event; python-websockets' ``connect.connect``, or
``connect.create_connection`` before websockets 17); the server records when each handshake
reaches it and when it completes. From those: the attempts in the worst 100 ms and the worst
1 s windows as shares of the fleet (as the client made them), the time until every socket is
back, and, from a run with one socket, a lone socket's time to reconnect. Each variant runs
in a fresh child process against a fresh server.

What the server records is what reached it, at the rate it could answer (given as "server
peak/s"): a server that stalls and then catches up shows bursts the client never made, which
is why the windows are counted at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from ._common import missing_peer, raise_fd_limit, run_child, server, table

__all__ = ["VARIANTS", "counting", "rows_of", "run", "summarise", "worst_window"]

#: ``timeout``: how long the fleet may take to open, and then to come back after the drop,
#: before the run is given up: a guard against a hang, never a speed measured. ``tiny`` runs in
#: the test suite, on machines that may be busy: its guard is loose.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"sockets": 10, "timeout": 120.0},
    "quick": {"sockets": 1000, "timeout": 40.0},
    "full": {"sockets": 10_000, "timeout": 90.0},
}
#: Initial connections in flight at once while the fleet is built (not during the storm).
OPENING_CONCURRENCY = 200

Fleet = Callable[[str, int], Awaitable[None]]


def worst_window(times: Sequence[float], width: float) -> int:
    """The largest number of ``times`` that fall in any window ``width`` seconds long."""
    ordered = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


#: The method of python-websockets' ``connect`` that makes one connection attempt, by version:
#: ``connect`` from 17 (which ``__await__`` calls), ``create_connection`` in 13 to 16 (which
#: ``__await_impl__`` calls). The first that the installed version defines is counted.
ATTEMPT_METHODS = ("connect", "create_connection")


def counting(connect_cls: type[Any]) -> type[Any]:
    """A subclass of python-websockets' ``connect`` that calls :func:`record_attempt` as each
    connection attempt starts, on whichever version is installed (the bench extra allows
    websockets 13 and later). A version with none of :data:`ATTEMPT_METHODS` is refused here:
    counting nothing would show a storm with no attempts in its worst windows."""
    for name in ATTEMPT_METHODS:
        method = getattr(connect_cls, name, None)
        if inspect.iscoroutinefunction(method):
            break
    else:
        raise RuntimeError(
            f"cannot count reconnect attempts: {connect_cls.__module__}.{connect_cls.__name__} "
            f"has none of {', '.join(ATTEMPT_METHODS)} (websockets {_websockets_version()})"
        )

    async def attempt(self: Any, *args: Any, **kwargs: Any) -> Any:
        record_attempt()
        return await method(self, *args, **kwargs)

    attempt.__name__ = name
    return type("counted", (connect_cls,), {name: attempt})


def _websockets_version() -> str:
    try:
        import websockets

        return str(getattr(websockets, "__version__", "?"))
    except ImportError:
        return "not installed"


async def websockets_loop(url: str, n: int) -> None:
    """python-websockets' own reconnect loop: ``async for ws in connect(url)``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    counted = counting(connect)
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)

    async def one() -> None:
        await gate.acquire()
        first = True
        async for ws in counted(url, compression=None, open_timeout=60):
            if first:
                gate.release()
                first = False
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                continue

    _keep(asyncio.create_task(one()) for _ in range(n))


async def ours_defaults(url: str, n: int) -> None:
    """Our resilient sockets with every default (backoff with jitter, reconnect pacing)."""
    from . import _ours

    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    await _ours.storm_fleet(url, n, pacing=True, gate=gate, on_attempt=record_attempt)


async def ours_no_pacing(url: str, n: int) -> None:
    """Our resilient sockets with the reconnect pacing bucket off (backoff and jitter only)."""
    from . import _ours

    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    await _ours.storm_fleet(url, n, pacing=False, gate=gate, on_attempt=record_attempt)


#: Variants in table order.
VARIANTS: dict[str, Fleet] = {
    "le_transport (defaults)": ours_defaults,
    "le_transport (pacing off)": ours_no_pacing,
    "websockets reconnect loop": websockets_loop,
}

_TASKS: list[asyncio.Task[None]] = []
#: When each reconnect attempt started, as the client saw it (time.monotonic).
ATTEMPTS: list[float] = []


def record_attempt(*_: object) -> None:
    """Note that a connect attempt starts now."""
    ATTEMPTS.append(time.monotonic())


def _keep(tasks: Any) -> None:
    _TASKS.extend(tasks)


async def _open_count(admin: aiohttp.ClientSession, base: str) -> int:
    async with admin.get(f"{base}/stats") as resp:
        return int((await resp.json())["ws_open"])


async def _child(variant: str, base: str, n: int, timeout: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as admin:
        t0 = time.perf_counter()
        await VARIANTS[variant](base.replace("http://", "ws://") + "/ws", n)
        while await _open_count(admin, base) < n:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"only {await _open_count(admin, base)} of {n} sockets opened")
            await asyncio.sleep(0.05)
        opened_in = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # let every socket settle into its idle state
        async with admin.post(f"{base}/drop") as resp:
            drop_at = float((await resp.json())["drop_at"])
        deadline = time.monotonic() + timeout
        storm: dict[str, Any] = {}
        while time.monotonic() < deadline:
            async with admin.get(f"{base}/storm") as resp:
                storm = await resp.json()
            if len(storm["opened"]) >= n:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # count late duplicate attempts too
        async with admin.get(f"{base}/storm") as resp:
            storm = await resp.json()
    return summarise(variant, n, opened_in, drop_at, ATTEMPTS, storm)


#: What a result says when the client counted fewer attempts than sockets came back.
NOT_COUNTED = "attempts not counted"


def summarise(
    variant: str,
    n: int,
    opened_in: float,
    drop_at: float,
    attempt_times: Sequence[float],
    storm: dict[str, Any],
) -> dict[str, Any]:
    """One storm's figures from the client's attempt times and the server's record.

    Every socket that came back made at least one attempt after the drop: fewer attempts than
    sockets back means the client's count missed them (a hook the installed library never
    calls), and the windows built on that count would read as a storm with no burst. Then
    ``attempts_counted`` is false, the windows are None and ``note`` says :data:`NOT_COUNTED`."""
    arrivals = [t - drop_at for t in storm["arrivals"]]
    attempts = [t - drop_at for t in attempt_times if t >= drop_at]
    opened = sorted(t - drop_at for t in storm["opened"])
    back = min(len(opened), n)
    counted = len(attempts) >= back
    return {
        "variant": variant,
        "sockets": n,
        "fleet_opened_seconds": opened_in,
        "attempts": len(attempts),
        "attempts_counted": counted,
        "note": None if counted else f"{NOT_COUNTED} ({len(attempts)} for {back} back)",
        "server_arrivals": len(arrivals),
        "back": back,
        "all_back_seconds": opened[n - 1] if len(opened) >= n else None,
        "first_back_seconds": opened[0] if opened else None,
        "worst_100ms": worst_window(attempts, 0.1) if counted else None,
        "worst_1s": worst_window(attempts, 1.0) if counted else None,
        "server_worst_100ms": worst_window(arrivals, 0.1),
        "server_worst_1s": worst_window(arrivals, 1.0),
        "server_peak_handshakes_per_s": worst_window(storm["opened"], 1.0),
    }


def _spawn(variant: str, port: int, n: int, timeout: float) -> dict[str, Any]:
    args = ["--variant", variant, "--base", f"http://127.0.0.1:{port}", "--sockets", str(n)]
    result = run_child(
        "benchmarks.reconnect_storm", [*args, "--timeout", str(timeout)], timeout=timeout * 3 + 60
    )
    result.setdefault("variant", variant)
    return result


def available_variants() -> list[str]:
    """The variants that can run here: ours only once ``Engine.websocket`` exists."""
    from . import _ours

    return [v for v in VARIANTS if not v.startswith("le_transport") or _ours.available()]


#: The variants that need a peer library (the bench extra), and the module each imports.
PEERS = {"websockets reconnect loop": "websockets"}


def run(size_name: str, sockets: int | None = None) -> dict[str, Any]:
    """Each variant: the fleet storm, then a lone socket; return tables and data."""
    size = SIZES[size_name]
    n = sockets or size["sockets"]
    results: dict[str, Any] = {}
    variants = available_variants()
    for variant in variants:
        why = missing_peer(PEERS[variant]) if variant in PEERS else None
        if why is not None:
            # Not installed: no child to spawn; recorded as the error a child's would be.
            failed = {"variant": variant, "error": why}
            results[variant] = {"fleet": failed, "lone": dict(failed)}
            continue
        with server() as srv:
            fleet = _spawn(variant, srv.port, n, size["timeout"])
        with server() as srv:
            lone = _spawn(variant, srv.port, 1, size["timeout"])
        results[variant] = {"fleet": fleet, "lone": lone}
    rows, notes = rows_of(results)
    head = [
        "client",
        "sockets",
        "worst 100 ms",
        "worst 1 s",
        "all back s",
        "attempts/socket",
        "lone back s",
        "server peak/s",
    ]
    if not any(v.startswith("le_transport") for v in variants):
        notes.append("le_transport: Engine.websocket not available; not measured")
    text = (
        f"Reconnect storm ({n:,} sockets reset at once; shares are of the fleet)\n\n"
        + table(head, rows)
        + "".join(f"\n{note}" for note in notes)
    )
    return {"text": text, "data": {"size": size, "sockets": n, "variants": results}}


def rows_of(results: dict[str, Any]) -> tuple[list[list[object]], list[str]]:
    """The table's rows, and the notes under it: a variant whose fleet run failed is a note
    (``"<variant>: <error>; not measured"``), not a row with its error under a figure's
    heading; one whose attempts were not counted shows no shares (:func:`summarise`)."""
    rows: list[list[object]] = []
    notes: list[str] = []
    for variant, r in results.items():
        fleet, lone = r["fleet"], r["lone"]
        if "error" in fleet:
            notes.append(f"{variant}: {str(fleet['error'])[:200]}; not measured")
            continue
        n = fleet["sockets"]
        all_back = fleet["all_back_seconds"]
        lone_back = lone.get("first_back_seconds")
        if "error" in lone:
            notes.append(f"{variant}, lone socket: {str(lone['error'])[:200]}; not measured")
        if fleet.get("attempts_counted", True):
            shares = [
                f"{fleet['worst_100ms'] / n:.1%}",
                f"{fleet['worst_1s'] / n:.1%}",
            ]
            per_socket = f"{fleet['attempts'] / n:.2f}"
        else:
            shares, per_socket = [NOT_COUNTED, "-"], "-"
            notes.append(f"{variant}: {fleet.get('note') or NOT_COUNTED}; no shares shown")
        rows.append(
            [
                variant,
                f"{n:,}",
                *shares,
                f"{all_back:.2f}" if all_back is not None else f"{fleet['back']:,} back",
                per_socket,
                f"{lone_back:.2f}" if lone_back is not None else "-",
                f"{fleet['server_peak_handshakes_per_s']:,}",
            ]
        )
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    """The child: build the fleet, drop it, watch it come back, print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--base", required=True)
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    raise_fd_limit(args.sockets * 2 + 256)
    # 10,000 sockets each logging a warning per drop measures the console, not the transport.
    logging.disable(logging.WARNING)

    async def measure_and_exit() -> None:
        result = await _child(args.variant, args.base, args.sockets, args.timeout)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)  # the fleet would reconnect forever; its sockets die with the process

    asyncio.run(measure_and_exit())


if __name__ == "__main__":
    main()
