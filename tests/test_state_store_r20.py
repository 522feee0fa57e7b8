"""The state layer: a late reply mirrored over a newer one. On the virtual clock."""

from __future__ import annotations

import asyncio
import json

from le_transport.errors import StateStoreError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import FallbackStore, MemoryStore, SharedSession, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock

# -- 1. FallbackStore: two reads answered out of order mirror the older one ----------------


class _GatedPrimary:
    """A shared store (a Redis stand-in): a get's answer can be held back on the wire (the
    server read the key already) until its gate opens; ``down`` fails every call."""

    def __init__(self, clock: VirtualClock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False
        self.gates: list[asyncio.Event] = []
        self.set_gate: asyncio.Event | None = None

    def _check(self) -> None:
        if self.down:
            raise StateStoreError("redis on redis://127.0.0.1:1/0 failed: ConnectionError")

    async def get(self, key: str) -> Entry | None:
        self._check()
        entry = await self.inner.get(key)
        if self.gates:
            await self.gates.pop(0).wait()
        return entry

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        self._check()
        stored = await self.inner.set(key, value, ttl=ttl, only_if=only_if)
        if self.set_gate is not None:
            await self.set_gate.wait()
        return stored

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        self._check()
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        self._check()
        return await self.inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        self._check()
        return await self.inner.budget(key, policy, deposits=deposits, withdraw=withdraw)

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        self._check()
        return await self.inner.reserve(key, bucket)

    async def close(self) -> None:
        pass


def _session_entry(version: str, bearer: str) -> str:
    return json.dumps(
        {
            "value": json.dumps({"bearer": bearer}),
            "version": version,
            "life": 3000.0,
            "login": version,
        }
    )


async def test_reads_answered_out_of_order_do_not_mirror_the_older_session() -> None:
    """Two reads of the fleet's session by one process (two engines, or a refresh and a
    login) are answered out of order: the first read's answer (session T1) is still on the
    wire when the fleet replaces T1 with T2 (another process's login after a 401) and the
    second read answers T2, which is mirrored. Then the first answer lands and is mirrored
    over it: no write of this process intervened, so _writes did not move. During the next
    outage the process reads T1, the session the fleet dropped, though the newest value it
    saw was T2 (FallbackStore: "the fleet's value as this process last knew it")."""
    clock = VirtualClock()
    primary = _GatedPrimary(clock)
    store = FallbackStore(primary, clock=clock)
    key = state_key("1", "session", "bot")
    await primary.inner.set(key, _session_entry("t1", "old"), ttl=3000)
    shared = SharedSession(store, account="1", user="bot", clock=clock)

    gate = asyncio.Event()
    primary.gates.append(gate)
    first = asyncio.ensure_future(shared.current())
    await asyncio.sleep(0)  # the server answered T1; the reply is on its way
    # Another process of the fleet replaces T1 (its 401) with T2.
    await primary.inner.set(key, _session_entry("t2", "new"), ttl=3000)
    second = await shared.current()
    assert second is not None
    assert second.version == "t2"
    gate.set()
    late = await first
    assert late is not None
    assert late.version == "t1"

    primary.down = True  # an outage: the local copy answers
    during = await shared.current()
    assert during is not None
    assert during.version == "t2", (
        f"during the outage the process reads {during.version!r}, the older session a late "
        "reply mirrored over the newer one it had read since"
    )


async def test_a_read_during_a_write_of_another_key_still_replaces_an_older_local_copy() -> None:
    """The same staleness through the other guard of the mirror: a read that begins while a
    write of ANY key is on its way is not mirrored ("any key: counted cheaply"). A process
    whose breaker or domain map write is out while it reads the fleet's new session (T2)
    keeps its older local copy (T1, still within its TTL), and reads T1 during the next
    outage: a session older than the newest it saw, which no write of its own replaced."""
    clock = VirtualClock()
    primary = _GatedPrimary(clock)
    store = FallbackStore(primary, clock=clock)
    key = state_key("1", "session", "bot")
    await primary.inner.set(key, _session_entry("t1", "old"), ttl=3000)
    shared = SharedSession(store, account="1", user="bot", clock=clock)
    assert (await shared.current()).version == "t1"  # type: ignore[union-attr]  # mirrored

    await primary.inner.set(key, _session_entry("t2", "new"), ttl=3000)  # another process
    primary.set_gate = asyncio.Event()
    other = asyncio.ensure_future(store.set(state_key("1", "domains"), "{}", ttl=600))
    await asyncio.sleep(0)  # an unrelated write is on its way
    seen = await shared.current()
    assert seen is not None
    assert seen.version == "t2"
    primary.set_gate.set()
    await other
    primary.set_gate = None

    primary.down = True
    during = await shared.current()
    assert during is not None
    assert during.version == "t2", (
        f"during the outage the process reads {during.version!r}: its read of t2 was not "
        "mirrored because a write of another key was out"
    )
