"""Round 16: a provider's own failure inside a recovery round's re-login is typed as on the
call path (an outage is waited out, anything else is a final ProviderError), and a read racing
this process's own write in flight does not replace that write in the local copy."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.errors import (
    ProviderError,
    RetriesExhausted,
    ServerStatusError,
    StateStoreError,
)
from le_transport.providers import Credentials, StaticDomains
from le_transport.recovery import Recovery
from le_transport.state import FallbackStore, MemoryStore, RedisStore
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


def _spent() -> RetriesExhausted:
    return RetriesExhausted("spent", last=ServerStatusError("503", status=503))


# -- the round's re-login: provider failures typed -------------------------------------------


class VaultAuth:
    """Credentials from a vault; its re-login fetches a new token there."""

    credential_headers = frozenset({"authorization"})

    def __init__(self) -> None:
        self.vault_down = False
        self.relogins = 0

    def _fetch(self) -> None:
        if self.vault_down:
            raise aiohttp.ClientConnectionError("vault unreachable")

    async def credentials(self, method: str, url: URL) -> Credentials:
        self._fetch()
        return Credentials(headers={"Authorization": "Bearer t"})

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> None:
        self.relogins += 1
        self._fetch()

    async def close(self) -> None:
        return None


async def test_a_provider_outage_in_the_calls_credentials_is_waited_out(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(200)
    host = await serve(backend.app())
    auth = VaultAuth()
    auth.vault_down = True
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy(attempt_timeout=None),
        rng=random.Random(1),
    )
    async with engine:

        async def heal() -> None:
            await clock.sleep(60)
            auth.vault_down = False

        healer = asyncio.ensure_future(heal())
        resp = await engine.request("GET", "svc", "/x", recover=True)
        await healer
    assert resp.status == 200


async def test_a_provider_outage_in_the_rounds_relogin_is_waited_out_too(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    backend = Backend(503)
    host = await serve(backend.app())
    auth = VaultAuth()
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy(attempt_timeout=None),
        rng=random.Random(1),
    )
    async with engine:

        async def outage() -> None:
            await clock.sleep(31)  # the schedule is spent; the round pauses ~2 min
            auth.vault_down = True  # the vault blips just as the round re-logs in
            backend.status = 200
            while auth.relogins == 0:
                await clock.sleep(1)
            auth.vault_down = False  # back a second later

        blip = asyncio.ensure_future(outage())
        try:
            resp = await engine.request("GET", "svc", "/x", recover=True)
        finally:
            await blip
    assert resp.status == 200
    assert auth.relogins >= 2


class RegistryDomains:
    """A custom domain provider that fetches its map from a service registry."""

    def __init__(self, fails: BaseException | None = None) -> None:
        self.fails = fails
        self.refreshes = 0

    async def resolve(self, service: str) -> str:
        return "example.com"

    async def invalidate(self) -> None:
        return None

    async def refresh(self) -> None:
        self.refreshes += 1
        fails, self.fails = self.fails, None  # a one-off failure
        if fails is not None:
            raise fails


def _recovery(domains: Any, auth: Any = None, first: float = 100) -> Recovery:
    return Recovery(
        domains=domains,
        auth=auth,
        clock=VirtualClock(),
        policy=BackoffPolicy(first=first, factor=2, cap=10_000, jitter=0, floor=0),
        request_policy=RetryPolicy(pauses=()),
    )


async def test_a_domain_providers_own_timeout_in_a_round_is_waited_out() -> None:
    domains = RegistryDomains(TimeoutError("registry timed out"))
    recovery = _recovery(domains)
    runs = 0

    async def call() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise _spent()
        return "ok"

    assert await recovery.run(call) == "ok"
    assert domains.refreshes == 2  # the failed refresh, then the round after it


async def test_a_domain_providers_bug_in_a_round_is_a_final_provider_error() -> None:
    bug = KeyError("services")
    recovery = _recovery(RegistryDomains(bug))

    async def call() -> str:
        raise _spent()

    with pytest.raises(ProviderError) as raised:
        await recovery.run(call)
    assert raised.value.role == "domain"
    assert raised.value.operation == "refresh"
    assert raised.value.__cause__ is bug


class BuggyAuth(VaultAuth):
    async def relogin(self) -> None:
        self.relogins += 1
        raise ValueError("a bug")


async def test_an_auth_providers_bug_in_a_rounds_relogin_is_a_final_provider_error() -> None:
    auth = BuggyAuth()
    recovery = _recovery(StaticDomains({"svc": "example.com"}), auth)

    async def call() -> str:
        raise _spent()

    with pytest.raises(ProviderError) as raised:
        await recovery.run(call)
    assert raised.value.role == "auth"
    assert raised.value.operation == "relogin"
    assert isinstance(raised.value.__cause__, ValueError)
    assert auth.relogins == 1  # final: no further round


# -- the fallback store's mirror: a write in flight is seen ----------------------------------


class GatedWrites(MemoryStore):
    """A primary whose SET lands only when ``landed`` is set (a slow link); can go down."""

    down = False

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.landed = asyncio.Event()
        self.landed.set()

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        if self.down:
            raise StateStoreError("down")
        await self.landed.wait()
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def get(self, key: str) -> Any:
        if self.down:
            raise StateStoreError("down")
        return await super().get(key)


async def test_a_read_racing_an_own_write_does_not_replace_it_locally() -> None:
    clock = VirtualClock()
    primary = GatedWrites(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("acct:session:u", "v1", ttl=600)
    primary.landed.clear()
    write = asyncio.ensure_future(store.set("acct:session:u", "v2", ttl=600))
    await asyncio.sleep(0)  # the write has begun (local copy v2, primary SET on its way)
    read = await store.get("acct:session:u")
    assert read is not None
    assert read.value == "v1"
    primary.landed.set()
    await write
    primary.down = True  # Redis goes away
    got = await store.get("acct:session:u")
    assert got is not None
    assert got.value == "v2", (read, got)


async def test_a_read_after_the_write_ended_is_mirrored_again() -> None:
    clock = VirtualClock()
    primary = GatedWrites(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("acct:session:u", "v1", ttl=600)
    await MemoryStore.set(primary, "acct:session:u", "fleet", ttl=600)  # another process
    got = await store.get("acct:session:u")
    assert got is not None
    assert got.value == "fleet"
    primary.down = True
    got = await store.get("acct:session:u")
    assert got is not None
    assert got.value == "fleet"


class LaggingSet:
    """A RedisStore whose SET reaches the server only when ``landed`` is set."""

    def __init__(self, inner: RedisStore) -> None:
        self._inner = inner
        self.landed = asyncio.Event()
        self.landed.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, key: str) -> Any:
        return await self._inner.get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self.landed.wait()
        return await self._inner.set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        return await self._inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        return await self._inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: Any, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        return await self._inner.budget(key, policy, deposits=deposits, withdraw=withdraw)

    async def reserve(self, key: str, bucket: Any) -> Any:
        return await self._inner.reserve(key, bucket)

    async def close(self) -> None:
        await self._inner.close()


async def test_a_read_racing_an_own_write_with_a_real_redis(redis_server: RedisServer) -> None:
    inner = RedisStore(redis_server.url, prefix="rw", op_timeout=0.2)
    primary = LaggingSet(inner)
    store = FallbackStore(primary, retry_interval=30.0)
    try:
        await store.set("acct:session:u", "v1", ttl=600)
        primary.landed.clear()
        write = asyncio.ensure_future(store.set("acct:session:u", "v2", ttl=600))
        await asyncio.sleep(0)
        read = await store.get("acct:session:u")  # Redis still holds v1
        assert read is not None
        assert read.value == "v1"
        primary.landed.set()
        await write
        stored = await inner.get("acct:session:u")
        assert stored is not None
        assert stored.value == "v2"
        redis_server.kill()
        got = await store.get("acct:session:u")
        assert not store.sharing
        assert got is not None
        assert got.value == "v2", got
    finally:
        await store.close()
