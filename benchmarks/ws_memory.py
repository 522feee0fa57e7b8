"""Where an idle socket's memory goes: ``tracemalloc`` on a fleet, ours against raw aiohttp.

The RSS figures of ``ws_scale`` say how much; this says where. Each kind runs in a fresh child
process against the benchmark server (its own process): the child opens one socket to warm up
every module, takes a snapshot, opens the fleet (each socket with a consumer task, keepalive on
and an hour away, as in ``ws_scale``'s idle run), settles, takes a second snapshot, and reports
the traced bytes per socket and the largest differences by source line.

``python -m benchmarks.ws_memory [--sockets 1000] [--top 25]``, or ``--only ws_memory`` in a
``python -m benchmarks run``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tracemalloc
from typing import Any

from ._common import raise_fd_limit, run_child, server, table

__all__ = ["run"]

SIZES: dict[str, int] = {"tiny": 20, "quick": 1000, "full": 1000}
#: The keepalive interval: armed, and never due while the fleet is measured.
IDLE_INTERVAL = 3600.0
KINDS = ("raw aiohttp", "le_transport")


async def _open(kind: str, url: str, n: int) -> int:
    from . import ws_scale

    opener = ws_scale.KINDS[kind]
    return await opener(url, n, IDLE_INTERVAL)


async def _child(kind: str, url: str, n: int, top: int) -> dict[str, Any]:
    await _open(kind, url, 1)
    await asyncio.sleep(0.2)
    tracemalloc.start(1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    opened = await _open(kind, url, n)
    await asyncio.sleep(0.5)
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [
        {
            "where": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            "bytes_per_socket": s.size_diff / max(1, opened),
            "count_per_socket": s.count_diff / max(1, opened),
        }
        for s in stats[:top]
    ]
    return {
        "kind": kind,
        "sockets": opened,
        "bytes_per_socket": total / max(1, opened),
        "top": lines,
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "le_transport/", "lib/python3"):
        at = filename.find(marker)
        if at >= 0:
            return filename[at:]
    return filename


def _spawn(kind: str, port: int, n: int, top: int) -> dict[str, Any]:
    args = ["--child", kind, "--url", f"ws://127.0.0.1:{port}/ws", "--sockets", str(n)]
    result = run_child("benchmarks.ws_memory", [*args, "--top", str(top)])
    result.setdefault("kind", kind)
    return result


def run(size_name: str, sockets: int | None = None, top: int = 15) -> dict[str, Any]:
    """Both kinds against one server: traced KiB per socket, and ours by source line."""
    n = sockets or SIZES[size_name]
    with server() as srv:
        results = {kind: _spawn(kind, srv.port, n, top) for kind in KINDS}
    base = results["raw aiohttp"].get("bytes_per_socket")
    rows: list[list[object]] = []
    for kind, res in results.items():
        if "error" in res:
            rows.append([kind, "-", "-", "-", res["error"]])
            continue
        per = res["bytes_per_socket"]
        ratio = f"{per / base:.2f}x" if base else "-"
        rows.append([kind, f"{res['sockets']:,}", f"{per / 1024:.2f}", ratio])
    text = (
        f"Traced memory per idle socket (tracemalloc, {n:,} sockets, each with a consumer task, "
        "keepalive armed)\n\n" + table(["client", "sockets", "KiB/socket", "vs raw"], rows)
    )
    ours = results["le_transport"]
    if "top" in ours:
        detail = [
            [t["where"], f"{t['bytes_per_socket']:.0f}", f"{t['count_per_socket']:.2f}"]
            for t in ours["top"]
        ]
        text += "\n\nle_transport, largest by line\n\n" + table(
            ["allocated at", "bytes/socket", "blocks/socket"], detail
        )
    return {"text": text, "data": {"sockets": n, "kinds": results}}


def main(argv: list[str] | None = None) -> None:
    """The parent (the table), or with ``--child`` one kind's measurement as a JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=KINDS, default=None)
    parser.add_argument("--url", default=None)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.child is None:
        print(run("quick", args.sockets, args.top)["text"])
        return
    raise_fd_limit(args.sockets * 2 + 256)

    async def measure_and_exit() -> None:
        result = await _child(args.child, args.url, args.sockets, args.top)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)

    asyncio.run(measure_and_exit())


if __name__ == "__main__":
    main()
