"""One bot process for the overload benchmark's "logins per session lifetime" part.

``python -m benchmarks.overload_worker`` reads one JSON line of config on stdin (not argv: the
password would show in the process list), logs in through the Login Service provider (sharing
the session through Redis when ``redis_url`` is set), makes one call, lives ``lifetime`` seconds
while its keepalive refreshes every ``refresh_interval``, and prints one JSON line: its own
logins and refreshes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from le_transport import Engine
from le_transport.providers import StaticDomains, UserLogin
from le_transport.state import FallbackStore, RedisStore, SharedSession, StateStore


async def main() -> None:
    config: dict[str, Any] = json.loads(sys.stdin.readline())
    domains = StaticDomains(config["domains"])
    store: StateStore | None = None
    shared = None
    if config.get("redis_url"):
        store = FallbackStore(RedisStore(config["redis_url"], prefix="bench", op_timeout=5.0))
        shared = SharedSession(store, account=config["account"], user=config["user"])
    auth = UserLogin(
        config["account"],
        config["user"],
        config["password"],
        domains=domains,
        refresh_interval=config["refresh_interval"],
        logout_on_close=False,
        shared=shared,
    )
    async with Engine(domains, scheme="http", auth=auth) as engine:
        path = f"/api/account/{config['account']}/configuration/le-users/users"
        await engine.request("GET", "accountConfigReadOnly", path)
        await asyncio.sleep(config["lifetime"])
    if store is not None:
        await store.close()
    print(json.dumps({"logins": auth.logins, "refreshes": auth.refreshes}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
