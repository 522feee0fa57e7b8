"""The benchmark server: a plain aiohttp app, run in its own process by the benchmarks.

``python -m benchmarks.server`` listens on a free loopback port and prints ``PORT <n>``. Routes:

- ``GET /ok``: a small JSON answer, like a LiveEngage read.
- ``GET /flaky``: 503 with probability ``--flaky-p`` (seeded), else the same answer as ``/ok``.
- ``GET /stats``: requests served so far (``/ok`` and ``/flaky``), sockets open.
- ``GET /ws``: a WebSocket that answers pings and LiveEngage-style requests (``GetClock``)
  and echoes other text; every handshake's arrival and
  completion time (``time.monotonic``, shared by every process on the machine) is recorded.
- ``POST /drop``: abort every open WebSocket at once (a reset, as a server restart does) and
  start a new record of handshakes.
- ``GET /storm``: the handshakes recorded since the last drop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from typing import Any

from aiohttp import web

_BODY = b'{"id":12345,"name":"agent","skills":[1,2,3],"enabled":true,"modified":"2026-01-01"}'


def _answer(text: str) -> str:
    """A LiveEngage-style response to a request frame (``GetClock``); anything else echoed."""
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            frame = json.loads(text)
            if isinstance(frame, dict) and frame.get("kind") == "req":
                return json.dumps(
                    {
                        "kind": "resp",
                        "reqId": frame.get("id"),
                        "code": 200,
                        "type": f"{frame.get('type')}Response",
                        "body": {"currentTime": int(time.time() * 1000)},
                    }
                )
    return text


class _State:
    def __init__(self, seed: int, flaky_p: float) -> None:
        self.rng = random.Random(seed)
        self.flaky_p = flaky_p
        self.requests = 0
        self.sockets: set[asyncio.Transport] = set()
        self.drop_at: float | None = None
        self.arrivals: list[float] = []
        self.opened: list[float] = []


def make_app(seed: int = 1, flaky_p: float = 0.1) -> web.Application:
    """The benchmark app."""
    state = _State(seed, flaky_p)

    async def ok(request: web.Request) -> web.Response:
        state.requests += 1
        return web.Response(body=_BODY, content_type="application/json")

    async def flaky(request: web.Request) -> web.Response:
        state.requests += 1
        if state.rng.random() < state.flaky_p:
            return web.Response(status=503, text="overloaded")
        return web.Response(body=_BODY, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": state.requests, "ws_open": len(state.sockets)})

    async def ws(request: web.Request) -> web.StreamResponse:
        state.arrivals.append(time.monotonic())
        sock = web.WebSocketResponse(heartbeat=None, autoping=True)
        await sock.prepare(request)
        state.opened.append(time.monotonic())
        transport = request.transport
        if transport is None:  # pragma: no cover - closed during the handshake
            return sock
        state.sockets.add(transport)
        try:
            async for msg in sock:
                if msg.type is web.WSMsgType.TEXT:
                    await sock.send_str(_answer(msg.data))
        finally:
            state.sockets.discard(transport)
        return sock

    async def drop(request: web.Request) -> web.Response:
        victims = list(state.sockets)
        state.sockets.clear()
        state.arrivals = []
        state.opened = []
        state.drop_at = time.monotonic()
        for transport in victims:
            transport.abort()
        return web.json_response({"dropped": len(victims), "drop_at": state.drop_at})

    async def storm(request: web.Request) -> web.Response:
        payload: dict[str, Any] = {
            "drop_at": state.drop_at,
            "arrivals": state.arrivals,
            "opened": state.opened,
            "open": len(state.sockets),
        }
        return web.json_response(payload)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/stats", stats)
    app.router.add_get("/ws", ws)
    app.router.add_post("/drop", drop)
    app.router.add_get("/storm", storm)
    return app


async def _serve(port: int, backlog: int, seed: int, flaky_p: float) -> None:
    runner = web.AppRunner(make_app(seed, flaky_p), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=backlog)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Run the server until SIGTERM."""
    import resource

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flaky-p", type=float, default=0.1)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(args.port, args.backlog, args.seed, args.flaky_p))


if __name__ == "__main__":
    main()
