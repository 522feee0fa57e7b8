"""FallbackStore bounds each operation of its primary: a store that hangs is an outage."""

from __future__ import annotations

import asyncio
import logging

import pytest

from le_transport.errors import ConfigurationError
from le_transport.state import (
    DEFAULT_PRIMARY_TIMEOUT,
    Entry,
    FallbackStore,
    MemoryStore,
    RedisStore,
    SharedDomainMap,
)
from le_transport.testing import VirtualClock


class _Hanging(MemoryStore):
    """A caller's store whose client has no timeout: its get and set never answer while
    ``hang`` is set; it notes every operation that was cancelled."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hang = True
        self.cancelled = 0
        self.calls = 0

    async def _wait(self) -> None:
        self.calls += 1
        if not self.hang:
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def get(self, key: str) -> Entry | None:
        await self._wait()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await self._wait()
        return await super().set(key, value, ttl=ttl, only_if=only_if)


async def test_a_primary_that_hangs_is_cut_at_op_timeout_and_state_goes_local(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    primary = _Hanging(clock)
    store = FallbackStore(primary, clock=clock, retry_interval=10.0)
    assert store.op_timeout == DEFAULT_PRIMARY_TIMEOUT
    started = clock.now()
    with caplog.at_level(logging.WARNING, "le_transport.state"):
        assert await store.set("1:k", "v", ttl=60) is True  # answered locally
    assert clock.now() - started == pytest.approx(DEFAULT_PRIMARY_TIMEOUT)
    assert primary.cancelled == 1
    assert not store.sharing
    assert store.fallbacks == 1
    assert (await store.get("1:k")) is not None  # local, without asking the primary
    assert primary.calls == 1
    (line,) = [r for r in caplog.records if r.name == "le_transport.state"]
    assert line.levelno == logging.WARNING  # an outage, not "may be a bug in the store"
    assert "_Hanging.set did not answer within 2 s (FallbackStore.op_timeout)" in line.getMessage()
    # After retry_interval the primary is tried again; answering, sharing resumes.
    primary.hang = False
    await clock.sleep(10.0)
    assert await store.set("1:k", "w", ttl=60) is True
    assert store.sharing
    assert store.recoveries == 1
    entry = await primary.get("1:k")
    assert entry is not None
    assert entry.value == "w"


async def test_op_timeout_given_bounds_each_operation() -> None:
    clock = VirtualClock()
    primary = _Hanging(clock)
    store = FallbackStore(primary, clock=clock, op_timeout=0.5)
    started = clock.now()
    assert await store.get("1:k") is None
    assert clock.now() - started == pytest.approx(0.5)
    assert primary.cancelled == 1


async def test_a_fast_primary_is_not_cut_and_a_caller_s_cancel_is_its_own() -> None:
    clock = VirtualClock()
    primary = _Hanging(clock)
    primary.hang = False
    store = FallbackStore(primary, clock=clock, op_timeout=0.5)
    assert await store.set("1:k", "v", ttl=60) is True
    assert store.sharing
    primary.hang = True
    task = asyncio.ensure_future(store.get("1:k"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.sharing  # the caller's cancellation is no outage


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_bad_op_timeout_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"FallbackStore\.op_timeout must be"):
        FallbackStore(MemoryStore(), op_timeout=bad)  # type: ignore[arg-type]


def test_a_huge_op_timeout_is_capped() -> None:
    assert FallbackStore(MemoryStore(), op_timeout=1e300).op_timeout == 1e12


def test_a_redis_primary_is_bounded_past_its_own_op_timeout() -> None:
    redis = RedisStore("redis://127.0.0.1:1/0", op_timeout=0.75)
    assert redis.op_timeout == 0.75
    assert FallbackStore(redis).op_timeout == pytest.approx(1.75)
    assert FallbackStore(redis, op_timeout=0.1).op_timeout == 0.1


class _Foreign:
    """A caller's own store (no MemoryStore): every operation forwarded to ``inner``."""

    def __init__(self, inner: _Hanging) -> None:
        self.inner = inner
        self.get = inner.get
        self.set = inner.set
        self.add = inner.add
        self.delete = inner.delete
        self.budget = inner.budget
        self.refund = inner.refund
        self.reserve = inner.reserve
        self.close = inner.close


async def test_a_shared_domain_map_on_a_hanging_store_answers_none() -> None:
    # A caller's store that hangs in read: the map answers "none shared" once cut, so the
    # Domain API is asked instead of the resolve waiting for ever.
    clock = VirtualClock()
    primary = _Hanging(clock)
    shared = SharedDomainMap(_Foreign(primary), account="123", clock=clock)
    started = clock.now()
    assert await shared.get() is None
    assert clock.now() - started == pytest.approx(DEFAULT_PRIMARY_TIMEOUT)
    assert primary.cancelled == 1


class _FailsWhenCancelled(MemoryStore):
    """A caller's store whose client turns a cancellation into its own error (as a Redis
    client may, dropping the connection it was cancelled on)."""

    async def get(self, key: str) -> Entry | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("connection dropped") from None
        return None  # pragma: no cover


@pytest.mark.parametrize("clock", [None, VirtualClock()], ids=["real", "virtual"])
async def test_a_caller_s_cancel_the_store_turns_into_its_error_is_no_outage(
    clock: VirtualClock | None,
) -> None:
    primary = _FailsWhenCancelled(clock)
    store = FallbackStore(primary, clock=clock, op_timeout=60.0)
    task = asyncio.ensure_future(store.get("1:k"))
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    # The caller's cancellation stands: not answered locally as if the store were out.
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.sharing
    assert store.fallbacks == 0
