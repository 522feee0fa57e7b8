"""Domain resolution and the fleet's shared state: defaults and fallbacks that disagreed.

1. ``SharedSession`` ran on the real clock unless told otherwise, where ``SharedDomainMap``
   takes the store's own clock: a ``SharedSession`` on a store running on a ``VirtualClock``
   polled for another process's login on the real clock.
"""

from __future__ import annotations

import asyncio

from le_transport.state import MemoryStore, SharedSession, state_key
from le_transport.testing import VirtualClock
from tests.test_providers import ACCOUNT, USER

# -- 1. SharedSession defaults to the store's clock, as SharedDomainMap does ----------------------


async def test_a_shared_session_without_a_clock_waits_on_the_stores_clock(
    clock: VirtualClock,
) -> None:
    """Another process holds the login lock: the waiter's polls for its token are sleeps on the
    store's (virtual) clock, so the lock's TTL on that store runs out and the waiter logs in."""
    store = MemoryStore(clock)
    session = SharedSession(store, account=ACCOUNT, user=USER, lock_ttl=10.0)
    held = await store.add(state_key(ACCOUNT, "session-lock", USER), "another", ttl=10.0)
    assert held

    async def do_login() -> tuple[str, float | None]:
        return "session", 3600.0

    waiter = asyncio.ensure_future(session.login(do_login))
    try:
        await clock.sleep(11.0)
        # On the real clock its polls recorded no sleep here, and the lock never ran out.
        assert waiter.done()
        token = waiter.result()
    finally:
        waiter.cancel()
    assert token.value == "session"
    assert session.logins == 1
