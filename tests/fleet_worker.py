"""One process of a fleet, for the fleet tests: the engine against the simulator through Redis.

Run as ``python tests/fleet_worker.py``; its first stdin line is the JSON config (not argv, where
the password would show in the process list). It speaks JSON lines on stdout (one object per
line, ``{"event": ...}``) and reads commands on stdin (``go``, ``stop``), so the test drives the
fleet by events, never by sleeping a guessed time:

- ``ready``: imported, engine started; waits for ``go``.
- mode ``session``: one call after ``go`` (logs in or adopts the fleet's session), then waits for
  ``stop`` while its keepalive refreshes (or adopts the fleet's refresh).
- mode ``outage``: ``calls`` calls after ``go`` against a service answering 503, with the shared
  retry budget; reports how each ended.
- mode ``calls``: calls in a loop from ``go`` until ``stop``; the test kills and restarts
  redis-server meanwhile. On ``stop`` it makes sure a shared write goes through again.
- Every state event (``state_store_fallback``, ``logged_in``, ``refreshed`` ...) is reported as
  ``{"event": "state", "name": ...}``; the last line is ``{"event": "done", ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import TransportError
from le_transport.events import StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import RetryBudget
from le_transport.providers import StaticDomains, UserLogin
from le_transport.state import FallbackStore, RedisStore, SharedSession


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def read_command(reader: asyncio.StreamReader) -> str:
    """The next line on stdin ('' at end of input)."""
    return (await reader.readline()).decode().strip()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config: dict[str, Any] = json.loads(await read_command(reader))

    def on_state(event: StateEvent) -> None:
        say("state", name=event.name)

    hooks = EventHooks(on_state=[on_state])
    store = FallbackStore(
        RedisStore(
            config["redis_url"], prefix=config["prefix"], op_timeout=config.get("op_timeout", 5.0)
        ),
        retry_interval=0.2,
        hooks=hooks,
    )
    account, user = config["account"], config["user"]
    domains = StaticDomains(config["domains"])
    auth = None
    if config["mode"] != "outage":
        auth = UserLogin(
            account,
            user,
            config["password"],
            domains=domains,
            refresh_interval=config.get("refresh_interval", 300.0),
            logout_on_close=False,
            shared=SharedSession(store, account=account, user=user, lock_ttl=10.0),
        )
    guard = OverloadGuard(
        budget=RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=120.0),
        breaker=None,
        store=store,
        account=account,
        hooks=hooks,
        flush_interval=0.1,
    )
    path = f"/api/account/{account}/configuration/le-users/users"
    outcomes: dict[str, int] = {}
    started = ended = 0

    async def call() -> None:
        nonlocal started, ended
        started += 1
        try:
            await engine.request("GET", "accountConfigReadOnly", path)
            kind = "ok"
        except TransportError as exc:
            kind = type(exc).__name__
        except Exception as exc:
            kind = f"UNTYPED:{type(exc).__name__}"
        ended += 1
        outcomes[kind] = outcomes.get(kind, 0) + 1

    engine = Engine(
        domains,
        scheme="http",
        auth=auth,
        hooks=hooks,
        overload=guard,
        retry=RetryPolicy(pauses=(0.05, 0.1, 0.15), attempt_timeout=5.0),
    )
    async with engine:
        say("ready")
        if await read_command(reader) != "go":
            return
        mode = config["mode"]
        if mode == "session":
            await call()
            say("called", outcomes=outcomes)
            await read_command(reader)
        elif mode == "outage":
            await asyncio.gather(*(call() for _ in range(config["calls"])))
        else:
            stop = asyncio.ensure_future(read_command(reader))
            while not stop.done():
                await call()
                await asyncio.sleep(0.02)
            # Sharing must have resumed: a shared write goes through within a few tries.
            for _ in range(100):
                await store.set(f"{account}:alive:{config['index']}", "1", ttl=60)
                if store.sharing:
                    break
                await asyncio.sleep(0.1)
        say(
            "done",
            outcomes=outcomes,
            started=started,
            ended=ended,
            sharing=store.sharing,
            fallbacks=store.fallbacks,
            recoveries=store.recoveries,
            logins=auth.logins if auth is not None else 0,
            refreshes=auth.refreshes if auth is not None else 0,
        )
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
