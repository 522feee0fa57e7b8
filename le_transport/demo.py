"""``le-transport demo``: what the library does under failure, on a timeline, with a verdict.

The demo serves a LiveEngage-like API on loopback, sends an agent's calls through an
:class:`~le_transport.Engine` while the server fails on purpose, prints each thing the library
did (retries with their pauses, a 4xx not retried) as it happens, then a summary. Schedules are
the guide's, multiplied by ``time_scale``. The exit code is 0 only if every invariant held.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

import attrs
from aiohttp import web

from .engine import Engine
from .errors import ClientStatusError
from .events import EventHooks, GiveUpEvent, RetryEvent
from .policies.retry import RetryPolicy

__all__ = ["run_demo"]

ACCOUNT = "12345678"


@attrs.define
class _Timeline:
    out: TextIO
    started: float = attrs.field(factory=time.monotonic)
    retries: int = 0
    giveups: int = 0

    def say(self, what: str, detail: str = "") -> None:
        at = time.monotonic() - self.started
        line = f"[{at:7.3f}s] {what:<10} {detail}".rstrip()
        print(line, file=self.out, flush=True)

    def on_retry(self, ev: RetryEvent) -> None:
        self.retries += 1
        self.say(
            "retry",
            f"{ev.method} {ev.service}: attempt {ev.attempt} got {ev.outcome.describe()}; "
            f"pausing {ev.pause:.3g} s",
        )

    def on_giveup(self, ev: GiveUpEvent) -> None:
        self.giveups += 1
        self.say("give-up", f"{ev.method} {ev.service}: {ev.reason}")


def _app() -> web.Application:
    calls = {"users": 0}

    async def users(request: web.Request) -> web.Response:
        calls["users"] += 1
        if calls["users"] <= 2:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response([{"id": 1, "loginName": "agent1"}])

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such skill"}, status=404)

    app = web.Application()
    app.router.add_get(f"/api/account/{ACCOUNT}/configuration/le-users/users", users)
    app.router.add_get(f"/api/account/{ACCOUNT}/configuration/le-users/skills/999", missing)
    return app


async def _run(time_scale: float, out: TextIO) -> bool:
    timeline = _Timeline(out)
    runner = web.AppRunner(_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    policy = RetryPolicy().scaled(time_scale)
    hooks = EventHooks(on_retry=[timeline.on_retry], on_giveup=[timeline.on_giveup])
    ok = True
    try:
        async with Engine(
            {"accountConfigReadOnly": host}, scheme="http", retry=policy, hooks=hooks
        ) as engine:
            timeline.say("start", f"simulator on {host}; schedules x{time_scale:g}")
            users = await engine.request_json(
                "GET",
                "accountConfigReadOnly",
                f"/api/account/{ACCOUNT}/configuration/le-users/users",
                expect=list,
            )
            timeline.say("ok", f"GET users: {len(users)} user(s) after 503, 503")
            try:
                await engine.request(
                    "GET",
                    "accountConfigReadOnly",
                    f"/api/account/{ACCOUNT}/configuration/le-users/skills/999",
                )
                ok = False
                timeline.say("WRONG", "a 404 succeeded")
            except ClientStatusError as exc:
                timeline.say("4xx", f"GET skill 999: {exc.status}, not retried")
                ok = ok and len(exc.attempts) == 1
    finally:
        await runner.cleanup()
    ok = ok and timeline.retries == 2
    print(file=out)
    print(f"retries {timeline.retries}  give-ups {timeline.giveups}", file=out)
    print("every invariant held" if ok else "AN INVARIANT FAILED", file=out)
    return ok


def run_demo(*, time_scale: float = 0.01, seed: int = 7, out: TextIO | None = None) -> int:
    """Run the demo; return the process exit code (0: every invariant held)."""
    del seed
    return 0 if asyncio.run(_run(time_scale, out or sys.stdout)) else 1
