"""WebSocket scale: many idle sockets with keepalive in one process, memory and CPU per socket.

Each client kind runs in a fresh child process (``python -m benchmarks.ws_scale --client ...``)
so that its resident memory is its own: the child imports what it needs and opens one socket,
opens half the fleet, settles, reads its RSS, opens the other half, settles again, and reports
the second half's difference per socket: a slope between two fleet sizes. (The difference over
a baseline read before the whole fleet came out low on small fleets: the first sockets reuse
memory the process freed but kept while it warmed up. It is kept in the JSON as
``bytes_per_socket_from_baseline``.) Below :data:`MEMORY_MIN_SOCKETS` the figure is noise
either way, and the table says so. Every socket has
a consumer (a task reading its messages, as an application has), the same unlimited connector
where the client uses aiohttp, and keepalive on. The server runs in its own process.

Two runs per kind:

- **idle**: keepalive armed but an hour away, so that no probe falls in the window however long
  the fleet took to open: the CPU the process burns holding the fleet (timers armed, sockets
  open, consumers waiting).
- **keepalive**: a fleet of at most 2,000 sockets with keepalive at an interval that makes it
  send 1,000 probes a second (every 2 s), measured over one interval: CPU per probe sent (a
  ping and its pong, or our keepalive's request and answer), the cost of the keepalive itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._common import (
    cpu_seconds,
    missing_peer,
    raise_fd_limit,
    run_child,
    server,
    settle_memory,
    table,
)

__all__ = ["KINDS", "run"]

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"sockets": 20, "idle": 0.2},
    "quick": {"sockets": 1000, "idle": 2.0},
    "full": {"sockets": 10_000, "idle": 5.0},
}
#: Keepalive probes per second across the fleet in the keepalive run: each socket's interval is
#: fleet size / this. A one-second interval on 10,000 sockets would ask more CPU than a core
#: has, for any client.
PROBES_PER_SECOND = 1000.0
#: Sockets in the keepalive run: a probe costs the same in a smaller fleet, which opens faster.
KEEPALIVE_FLEET = 2000
#: The keepalive interval of the idle run: longer than opening the fleet and the window.
IDLE_INTERVAL = 3600.0
#: The production keepalive interval (aiohttp's usual heartbeat; LiveEngage's GetClock): the
#: steady CPU of a fleet at it is derived as idle + fleet / interval x cost per probe.
PRODUCTION_INTERVAL = 30.0
#: Handshakes in flight at once while opening the fleet.
OPENING_CONCURRENCY = 200
#: Fewer sockets than this make the memory per socket noise (a few hundred KiB of the
#: allocator's own slack against the fleet's whole cost): the table says so under it.
MEMORY_MIN_SOCKETS = 1000

Opener = Callable[[str, float], Awaitable[Callable[[], int]]]


_SESSION: list[Any] = []
#: Every socket's consumer task, kept alive until the child process exits.
_TASKS: list[asyncio.Task[None]] = []


def _unlimited_session() -> Any:
    """The child's one aiohttp session (made by the warm-up socket, so that neither half of
    the fleet pays for it)."""
    import aiohttp

    if not _SESSION:
        _SESSION.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    return _SESSION[0]


async def _fleet(n: int, connect_one: Callable[[], Awaitable[Any]], consume: Any) -> list[Any]:
    """Open ``n`` sockets, each with its consumer task; return the sockets once all are open."""
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    opened: list[Any] = []
    failed: list[BaseException] = []
    done = asyncio.Event()

    async def one() -> None:
        try:
            async with gate:
                sock = await connect_one()
        except Exception as exc:
            failed.append(exc)
            if len(opened) + len(failed) == n:
                done.set()
            return
        opened.append(sock)
        if len(opened) + len(failed) == n:
            done.set()
        await consume(sock)

    _TASKS.extend(asyncio.create_task(one()) for _ in range(n))
    await done.wait()
    if failed:
        sys.stderr.write(f"{len(failed)} sockets failed to open, e.g. {failed[0]!r}\n")
    return opened


async def open_aiohttp(url: str, n: int, interval: float) -> int:
    """Raw aiohttp sockets, ``heartbeat=interval`` (aiohttp's own ping/pong keepalive)."""
    session = _unlimited_session()

    async def consume(ws: Any) -> None:
        async for _ in ws:
            pass

    socks = await _fleet(n, lambda: session.ws_connect(url, heartbeat=interval), consume)
    return len(socks)


def _open_websockets(compression: str | None) -> Callable[[str, int, float], Awaitable[int]]:
    async def opener(url: str, n: int, interval: float) -> int:
        from websockets.asyncio.client import connect

        async def consume(ws: Any) -> None:
            try:
                async for _ in ws:
                    pass
            except Exception:
                return

        async def connect_one() -> Any:
            return await connect(
                url,
                compression=compression,
                ping_interval=interval,
                ping_timeout=interval,
                open_timeout=60,
            )

        return len(await _fleet(n, connect_one, consume))

    return opener


async def open_le_transport(url: str, n: int, interval: float) -> int:
    """Our resilient sockets, from ``engine.websocket(...)``, keepalive every ``interval``."""
    from . import _ours

    return await _ours.open_fleet(url, n, interval, _fleet)


#: Client kinds in table order; the first is the baseline.
KINDS: dict[str, Callable[[str, int, float], Awaitable[int]]] = {
    "raw aiohttp": open_aiohttp,
    "websockets (no compression)": _open_websockets(None),
    "websockets (deflate)": _open_websockets("deflate"),
    "le_transport": open_le_transport,
}


async def _child(kind: str, url: str, n: int, interval: float, window: float) -> dict[str, Any]:
    opener = KINDS[kind]
    # Everything the client needs is imported and warmed by one socket before the baseline,
    # so that the delta is the sockets', not the modules'.
    await opener(url, 1, interval)
    base = settle_memory()
    # Memory per socket is the slope between half the fleet and the whole: the first half
    # uses up what the allocator still held from the warm-up, which a delta over the
    # baseline counted as free (a fleet of 20 came out at 0.6 KiB a socket).
    first_n = n // 2
    t0 = time.perf_counter()
    first = await opener(url, first_n, interval) if first_n else 0
    connect_seconds = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    half = settle_memory()
    t1 = time.perf_counter()
    second = await opener(url, n - first_n, interval)
    connect_seconds += time.perf_counter() - t1
    await asyncio.sleep(0.2)
    rss = settle_memory()
    opened = first + second
    # A slope over a second half that mostly failed to open is no figure (20 failed connects'
    # leftovers divided by 1 read as 200 KiB a socket): none, and said why.
    measured = second >= max(1, (n - first_n) // 2)
    cpu0, w0 = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(window)
    cpu1, w1 = cpu_seconds(), time.perf_counter()
    return {
        "kind": kind,
        "sockets": opened,
        "asked": n,
        "interval": interval,
        "connect_seconds": connect_seconds,
        "bytes_per_socket": (rss - half) / second if measured else None,
        "bytes_per_socket_from_baseline": (rss - base) / max(1, opened),
        "memory_method": f"slope: second {second:,} sockets after {first:,}"
        + ("" if measured else f" (of {n - first_n:,} asked: not measured)"),
        "memory_noise": second < MEMORY_MIN_SOCKETS // 2,
        "cpu_share": (cpu1 - cpu0) / (w1 - w0),
        "window": w1 - w0,
    }


def _spawn(kind: str, port: int, n: int, interval: float, window: float) -> dict[str, Any]:
    args = ["--client", kind, "--url", f"ws://127.0.0.1:{port}/ws", "--sockets", str(n)]
    result = run_child(
        "benchmarks.ws_scale", [*args, "--interval", str(interval), "--window", str(window)]
    )
    result.setdefault("kind", kind)
    return result


#: The kinds that need a peer library (the bench extra), and the module each imports.
PEERS = {
    "websockets (no compression)": "websockets",
    "websockets (deflate)": "websockets",
}


def available_kinds() -> list[str]:
    """The kinds that can run here: ours only once ``Engine.websocket`` exists."""
    from . import _ours

    return [k for k in KINDS if k != "le_transport" or _ours.available()]


def run(size_name: str, sockets: int | None = None) -> dict[str, Any]:
    """Run every kind twice (idle, keepalive) against one server; return tables and data."""
    size = SIZES[size_name]
    n = sockets or size["sockets"]
    busy_n = min(n, KEEPALIVE_FLEET)
    interval = max(0.2, busy_n / PROBES_PER_SECOND)
    results: dict[str, Any] = {}
    kinds = available_kinds()
    with server() as srv:
        for kind in kinds:
            why = missing_peer(PEERS[kind]) if kind in PEERS else None
            if why is not None:
                # Not installed: no child to spawn; recorded as the error a child's would be.
                results[kind] = {
                    "idle": {"kind": kind, "error": why},
                    "keepalive": {"kind": kind, "error": why},
                }
                continue
            idle = _spawn(kind, srv.port, n, IDLE_INTERVAL, size["idle"])
            # One whole interval: in the steady state every socket probes once in it.
            busy = _spawn(kind, srv.port, busy_n, interval, interval)
            entry: dict[str, Any] = {"idle": idle, "keepalive": busy}
            if "error" not in idle and "error" not in busy:
                probes = busy["sockets"] * busy["window"] / busy["interval"]
                # Less the idle cost of a fleet that size (idle CPU grows with the fleet).
                idle_share = idle["cpu_share"] * busy["sockets"] / max(1, idle["sockets"])
                extra_cpu = max(0.0, busy["cpu_share"] - idle_share) * busy["window"]
                entry["us_per_probe"] = extra_cpu / probes * 1e6 if probes else float("nan")
                entry["steady_cpu_share"] = (
                    idle["cpu_share"]
                    + idle["sockets"] / PRODUCTION_INTERVAL * entry["us_per_probe"] / 1e6
                )
            results[kind] = entry
    base = results.get("raw aiohttp", {}).get("idle", {}).get("bytes_per_socket")
    rows: list[list[object]] = []
    notes: list[str] = []
    for kind, entry in results.items():
        idle, busy = entry["idle"], entry["keepalive"]
        if "error" in idle or "error" in busy:
            # Under the table, not in a figure's column.
            why = idle.get("error") or busy["error"]
            notes.append(f"{kind}: {str(why)[:200]}; not measured")
            continue
        per = idle["bytes_per_socket"]
        if per is None:
            notes.append(f"{kind}: {idle['memory_method']}: no KiB/socket")
        rows.append(
            [
                kind,
                f"{idle['sockets']:,}",
                "-" if per is None else f"{per / 1024:.1f}",
                f"{per / base:.2f}x" if base and per is not None else "-",
                f"{idle['connect_seconds']:.1f}",
                f"{idle['cpu_share']:.1%}",
                f"{busy['cpu_share']:.0%}",
                f"{entry['us_per_probe']:.0f}",
                f"{entry['steady_cpu_share']:.1%}",
            ]
        )
    if "le_transport" not in kinds:
        notes.append("le_transport: Engine.websocket not available; not measured")
    noisy = n < MEMORY_MIN_SOCKETS or any(
        entry["idle"].get("memory_noise") for entry in results.values()
    )
    if noisy:
        notes.append(
            f"KiB/socket from {n:,} sockets is noise (the allocator's slack is a few hundred "
            f"KiB): quote it from {MEMORY_MIN_SOCKETS:,} sockets or more (--quick, full)"
        )
    head = [
        "client",
        "sockets",
        "KiB/socket",
        "vs raw",
        "open s",
        "idle CPU",
        f"CPU, {busy_n:,} sockets, keepalive {interval:g} s",
        "CPU us/probe",
        f"CPU at {PRODUCTION_INTERVAL:g} s keepalive",
    ]
    text = (
        f"WebSocket scale ({n:,} sockets, each with a consumer task; CPU is a share of one "
        f"core; the last column is idle + {n:,} / {PRODUCTION_INTERVAL:g} s x cost per probe)"
        "\n\n" + table(head, rows) + "".join(f"\n{note}" for note in notes)
    )
    data = {
        "size": size,
        "sockets": n,
        "keepalive_sockets": busy_n,
        "keepalive_interval": interval,
        "kinds": results,
    }
    return {"text": text, "data": data}


def main(argv: list[str] | None = None) -> None:
    """The child: open the fleet, measure, print one JSON line, exit without tidying up."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, choices=list(KINDS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--window", type=float, required=True)
    args = parser.parse_args(argv)
    raise_fd_limit(args.sockets * 2 + 256)
    logging.disable(logging.WARNING)  # the same quiet console for every client kind

    async def measure_and_exit() -> None:
        result = await _child(args.client, args.url, args.sockets, args.interval, args.window)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        # Closing thousands of sockets politely measures nothing; the server sees them reset.
        os._exit(0)

    asyncio.run(measure_and_exit())


if __name__ == "__main__":
    main()
