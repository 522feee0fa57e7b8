"""The in-memory store, the fallback wrapper and the shared-state helpers, on virtual time."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from le_transport import Engine
from le_transport.errors import ConfigurationError, HostileHostError, StateStoreError
from le_transport.events import EventHooks, StateEvent
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.state import (
    Entry,
    FallbackStore,
    FleetPacer,
    MemoryStore,
    SharedDomainMap,
    SharedSession,
    StateStore,
    state_key,
)
from le_transport.state.store import MAX_TTL
from le_transport.testing import VirtualClock
from tests.doubles import LateClock


class BrokenStore(MemoryStore):
    """A primary that fails every operation while ``down`` (as a dead Redis does)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StateStoreError("redis get on redis://127.0.0.1:1/0 failed: ConnectionError")

    async def get(self, key: str) -> Entry | None:
        self._check()
        return await super().get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        self._check()
        return await super().set(key, value, ttl=ttl, only_if=only_if)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        self._check()
        return await super().delete(key, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        self._check()
        return await super().add(key, value, ttl=ttl)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        self._check()
        return await super().budget(key, policy, deposits=deposits, withdraw=withdraw)


def test_keys_are_namespaced_per_account_and_escaped() -> None:
    assert state_key("123", "session", "bot") == "123:session:bot"
    assert state_key("1", "session", "a:b") != state_key("1:session", "a", "b")
    assert state_key("1", "session", "a:b") == "1:session:a%3Ab"
    with pytest.raises(ConfigurationError):
        state_key("", "session")


async def test_memory_values_expire_on_the_clock(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    assert isinstance(store, StateStore)
    await store.set("k", "v", ttl=10)
    clock.advance(4)
    entry = await store.get("k")
    assert entry == Entry("v", 6.0)
    clock.advance(6)
    assert await store.get("k") is None


async def test_nothing_is_stored_without_a_finite_ttl(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    for ttl in (0, -1, float("inf")):
        with pytest.raises(ConfigurationError, match="TTL"):
            await store.set("k", "v", ttl=ttl)


async def test_a_huge_but_finite_ttl_is_kept_for_max_ttl_as_redis_keeps_it(
    clock: VirtualClock,
) -> None:
    store = MemoryStore(clock)
    await store.set("k", "v", ttl=1e300)
    assert await store.add("lock", "me", ttl=10**300)
    assert await store.get("k") == Entry("v", MAX_TTL)
    assert await store.get("lock") == Entry("me", MAX_TTL)
    clock.advance(MAX_TTL)
    assert await store.get("k") is None, "nothing is stored forever, however long its TTL"


@pytest.mark.parametrize(
    ("value", "ttl", "message"),
    [
        (5, 10, "must be a str, got int"),
        (None, 10, "must be a str, got NoneType"),
        (b"v", 10, "must be a str, got bytes"),
        ("v", 10**400, "finite TTL"),
        ("v", float("nan"), "finite TTL"),
        ("v", True, "finite TTL"),
        ("v", "s3cr3t-token", "finite TTL > 0, got str$"),
    ],
    ids=["int", "None", "bytes", "huge-ttl", "nan-ttl", "bool-ttl", "str-ttl"],
)
async def test_a_bad_value_or_ttl_is_a_configuration_error_that_shows_no_value(
    clock: VirtualClock, value: object, ttl: object, message: str
) -> None:
    store = MemoryStore(clock)
    for op in (store.set, store.add):
        with pytest.raises(ConfigurationError, match=message):
            await op("k", value, ttl=ttl)  # type: ignore[arg-type]
    assert await store.get("k") is None


class RefusingStore(BrokenStore):
    """A primary that refuses with a StateStoreError whatever it cannot hold, as Redis refuses
    a TTL past its range or a None value."""

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        self.calls += 1
        raise StateStoreError("redis set failed: ResponseError: invalid expire time")

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        self.calls += 1
        raise StateStoreError("redis add failed: DataError: invalid input")


@pytest.mark.parametrize(
    ("value", "ttl"),
    [("v", 10**400), ("v", float("nan")), (None, 10), (5, 10)],
    ids=["huge-ttl", "nan-ttl", "None", "int"],
)
async def test_a_bad_write_through_the_fallback_is_the_callers_error_never_an_outage(
    clock: VirtualClock, value: object, ttl: object
) -> None:
    primary = RefusingStore(clock)
    events: list[StateEvent] = []
    store = FallbackStore(primary, clock=clock, hooks=EventHooks(on_state=[events.append]))
    for op in (store.set, store.add):
        with pytest.raises(ConfigurationError):
            await op("k", value, ttl=ttl)  # type: ignore[arg-type]
    assert primary.calls == 0, "refused before the primary was asked"
    assert store.sharing
    assert store.fallbacks == 0
    assert events == []


async def test_lock_is_taken_once_and_deleted_only_by_its_owner(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    assert await store.add("lock", "me", ttl=5)
    assert not await store.add("lock", "you", ttl=5)
    assert not await store.delete("lock", only_if="you")
    assert await store.delete("lock", only_if="me")
    assert await store.add("lock", "you", ttl=5)
    clock.advance(5)
    assert await store.add("lock", "me", ttl=5), "a crashed holder's lock frees itself"


async def test_a_compare_and_set_stores_only_over_the_value_it_names(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    assert not await store.set("k", "new", ttl=10, only_if="old"), "nothing to compare with"
    assert await store.get("k") is None
    assert await store.set("k", "old", ttl=10)
    assert not await store.set("k", "new", ttl=10, only_if="other")
    assert await store.get("k") == Entry("old", 10.0)
    assert await store.set("k", "new", ttl=5, only_if="old")
    assert await store.get("k") == Entry("new", 5.0), "the new value, for its own TTL"
    clock.advance(5)
    assert not await store.set("k", "newer", ttl=5, only_if="new"), "expired: nothing held"
    assert await store.get("k") is None


async def test_a_fallback_compare_and_set_is_the_primarys_and_local_while_it_is_out(
    clock: VirtualClock,
) -> None:
    primary = BrokenStore(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("k", "v1", ttl=60)
    assert await store.set("k", "v2", ttl=60, only_if="v1")
    assert await MemoryStore.get(primary, "k") == Entry("v2", 60.0)
    assert await store.local.get("k") == Entry("v2", 60.0), "copied locally once stored"
    await MemoryStore.set(primary, "k", "elsewhere", ttl=60)  # another process wrote since
    assert not await store.set("k", "v3", ttl=60, only_if="v2"), "the primary decides"
    assert await MemoryStore.get(primary, "k") == Entry("elsewhere", 60.0)
    primary.down = True
    assert await store.set("k", "v3", ttl=60, only_if="v2"), "local, on its own copy"
    assert not store.sharing
    assert await store.get("k") == Entry("v3", 60.0)


async def test_memory_budget_runs_the_pure_policy(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    policy = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    await store.budget("b", policy, deposits=10)
    taken = [await store.budget("b", policy, withdraw=True) for _ in range(3)]
    assert taken == [True, True, False]


async def test_memory_bucket_paces_past_the_burst(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    bucket = TokenBucket(rate=2.0, burst=2.0)
    waits = [await store.reserve("p", bucket) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.5, 1.0]


async def test_fallback_goes_local_logs_once_and_resumes_when_the_primary_returns(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    primary = BrokenStore(clock)
    events: list[StateEvent] = []
    store = FallbackStore(
        primary, clock=clock, retry_interval=1.0, hooks=EventHooks(on_state=[events.append])
    )
    await store.set("k", "shared", ttl=60)
    primary.down = True
    caplog.set_level(logging.INFO, logger="le_transport.state")
    for _ in range(5):
        assert (await store.get("k")) is not None  # the local copy of what was shared
    assert not store.sharing
    assert store.fallbacks == 1
    calls_while_down = primary.calls
    await store.get("k")
    assert primary.calls == calls_while_down, "a dead primary is not tried on every call"
    primary.down = False
    clock.advance(1.0)
    await store.get("k")
    assert store.sharing
    assert store.recoveries == 1
    assert [e.name for e in events] == ["state_store_fallback", "state_store_resumed"]
    messages = [r.getMessage() for r in caplog.records if r.name == "le_transport.state"]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("resumed" in m for m in messages) == 1


async def test_fallback_budget_is_warm_with_this_processes_first_attempts(
    clock: VirtualClock,
) -> None:
    primary = BrokenStore(clock)
    store = FallbackStore(primary, clock=clock)
    policy = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    await store.budget("b", policy, deposits=10)
    primary.down = True
    assert await store.budget("b", policy, withdraw=True)
    assert await store.budget("b", policy, withdraw=True)
    assert not await store.budget("b", policy, withdraw=True)


async def test_concurrent_logins_through_one_store_log_in_once(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    logins = 0

    async def do_login() -> tuple[str, float | None]:
        nonlocal logins
        logins += 1
        await clock.sleep(2.0)
        return json.dumps({"bearer": "b"}), 3600.0

    sessions = [
        SharedSession(store, account="123", user="bot", clock=clock, safety_margin=60)
        for _ in range(20)
    ]
    tokens = await asyncio.gather(*(s.login(do_login) for s in sessions))
    assert logins == 1
    assert len({t.version for t in tokens}) == 1
    entry = await store.get(state_key("123", "session", "bot"))
    assert entry is not None
    assert entry.ttl <= 3600.0 - 60, "stored no longer than its remaining life minus the margin"


async def test_a_crashed_login_holder_does_not_block_the_fleet(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    await store.add(state_key("123", "session-lock", "bot"), "crashed", ttl=30)
    session = SharedSession(store, account="123", user="bot", clock=clock, lock_ttl=30)

    async def do_login() -> tuple[str, float | None]:
        return "token", 600.0

    token = await session.login(do_login)
    assert session.logins == 1
    assert clock.now() >= 30.0
    assert token.value == "token"


async def test_rejected_token_is_replaced_by_one_new_login(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    logins = 0

    async def do_login() -> tuple[str, float | None]:
        nonlocal logins
        logins += 1
        return f"token{logins}", 600.0

    a = SharedSession(store, account="1", user="u", clock=clock)
    b = SharedSession(store, account="1", user="u", clock=clock)
    first = await a.login(do_login)
    again = await asyncio.gather(
        a.login(do_login, stale=first.version), b.login(do_login, stale=first.version)
    )
    assert logins == 2
    assert {t.value for t in again} == {"token2"}


async def test_fleet_refreshes_once_per_interval(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    refreshed = 0

    async def do_login() -> tuple[str, float | None]:
        return "token", 600.0

    async def do_refresh(token: object) -> tuple[str, float | None]:
        nonlocal refreshed
        refreshed += 1
        return "token", 600.0

    sessions = [SharedSession(store, account="1", user="u", clock=clock) for _ in range(10)]
    held = [await s.login(do_login) for s in sessions]
    clock.advance(300)
    await asyncio.gather(
        *(s.refresh(do_refresh, h, min_interval=60) for s, h in zip(sessions, held, strict=True))
    )
    assert refreshed == 1
    clock.advance(30)
    late = await sessions[0].refresh(do_refresh, held[0], min_interval=60)
    assert refreshed == 1, "a refresh less than an interval old is taken, not repeated"
    assert late.age < 60


async def test_token_too_close_to_its_end_is_not_shared(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    session = SharedSession(store, account="1", user="u", clock=clock, safety_margin=30)

    async def do_login() -> tuple[str, float | None]:
        return "token", 20.0

    token = await session.login(do_login)
    assert token.value == "token"
    assert await session.current() is None


async def test_shared_session_repr_hides_the_token(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    session = SharedSession(store, account="1", user="u", clock=clock)

    async def do_login() -> tuple[str, float | None]:
        return "SECRET-BEARER", 600.0

    token = await session.login(do_login)
    assert "SECRET-BEARER" not in repr(token)


async def test_shared_domain_map_refuses_a_poisoned_host(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    shared = SharedDomainMap(store, account="1")
    await shared.put({"agentVep": "va.agentvep.liveperson.net"})
    assert await shared.get() == {"agentVep": "va.agentvep.liveperson.net"}
    with pytest.raises(HostileHostError):
        await shared.put({"agentVep": "evil.example/path"})
    await store.set(
        state_key("1", "domains"), json.dumps({"agentVep": "user@evil.example"}), ttl=60
    )
    assert await shared.get() is None


async def test_fleet_pacer_spreads_turns_past_the_burst(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    pacers = [
        FleetPacer(store, account="1", bucket=TokenBucket(rate=10.0, burst=5.0), clock=clock)
        for _ in range(3)
    ]
    waits = [await pacers[i % 3].reserve_shared() for i in range(10)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


async def test_a_process_waking_past_its_fleet_turn_takes_a_new_one(clock: VirtualClock) -> None:
    """The fleet's bound holds against a stalled loop, as the per-process pacer's does."""
    store = MemoryStore(clock)
    bucket = TokenBucket(rate=10.0, burst=1.0, grace=0.1)
    late = FleetPacer(store, account="1", bucket=bucket, clock=LateClock(clock, [0.5]))
    on_time = FleetPacer(store, account="1", bucket=bucket, clock=clock)
    assert await late.acquire() == 0.0
    # Its turn was at 0.1; it woke at 0.6, too late: forfeit. By 0.6 the shared bucket has a
    # token again, so the new turn is at once.
    assert await late.acquire() == pytest.approx(0.6)
    assert late.missed == 1
    # The forfeited token is not handed out again: another process waits for a fresh one.
    assert await on_time.acquire() == pytest.approx(0.1)
    assert on_time.missed == 0


async def test_fleet_pacer_is_what_the_engines_sockets_wait_on(clock: VirtualClock) -> None:
    store = MemoryStore(clock)
    bucket = TokenBucket(rate=1.0, burst=1.0)
    pacers = [FleetPacer(store, account="1", bucket=bucket, clock=clock) for _ in range(3)]
    engines = [Engine({"svc": "127.0.0.1:1"}, clock=clock, pacer=p) for p in pacers]
    waits = await asyncio.gather(*(p.acquire() for p in pacers))
    assert sorted(waits) == [0.0, 1.0, 2.0], "three processes dropped at once, one bucket"
    assert clock.now() == pytest.approx(2.0)
    assert all(e is not None for e in engines)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bucket": "x"}, "FleetPacer.bucket"),
        ({"bucket": 0}, "FleetPacer.bucket"),
        ({"clock": "x"}, "FleetPacer.clock"),
        ({"clock": 0}, "FleetPacer.clock"),
    ],
    ids=["bucket str", "bucket 0", "clock str", "clock 0"],
)
def test_a_fleet_pacer_refuses_a_bad_bucket_or_clock_when_it_is_made(
    kwargs: dict[str, object], field: str, clock: VirtualClock
) -> None:
    """Accepted, they failed at the first reconnect (a bucket of 0 became the default one)."""
    with pytest.raises(ConfigurationError, match=field):
        FleetPacer(MemoryStore(clock), account="1", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"local": "x"}, "FallbackStore.local"),
        ({"local": 0}, "FallbackStore.local"),
        ({"local": object()}, "FallbackStore.local"),
        ({"hooks": "x"}, "FallbackStore.hooks"),
        ({"hooks": {"on_state": []}}, "FallbackStore.hooks"),
        ({"clock": "x"}, "FallbackStore.clock"),
    ],
    ids=["local str", "local 0", "local object", "hooks str", "hooks dict", "clock str"],
)
def test_a_fallback_store_refuses_a_bad_local_store_hooks_or_clock_when_it_is_made(
    kwargs: dict[str, object], field: str, clock: VirtualClock
) -> None:
    with pytest.raises(ConfigurationError, match=field):
        FallbackStore(MemoryStore(clock), **kwargs)  # type: ignore[arg-type]


async def test_with_a_hooks_object_an_outage_still_falls_back_and_reports(
    clock: VirtualClock,
) -> None:
    """The hooks are checked when the store is made: an outage then reaches them, and the call
    gets the local answer (wrong hooks used to raise AttributeError from inside the fallback)."""
    events: list[StateEvent] = []
    primary = BrokenStore(clock)
    primary.down = True
    fallback = FallbackStore(primary, clock=clock, hooks=EventHooks(on_state=[events.append]))
    await fallback.set("k", "v", ttl=10)
    entry = await fallback.get("k")
    assert entry is not None
    assert entry.value == "v"
    assert [e.name for e in events] == ["state_store_fallback"]


class OldProtocolStore(MemoryStore):
    """A primary written to the protocol before compare-and-set: ``set(key, value, *, ttl)``."""

    async def set(self, key: str, value: str, *, ttl: float) -> None:  # type: ignore[override]
        await super().set(key, value, ttl=ttl)


async def test_fallback_over_a_primary_without_only_if_serves_plain_writes_and_refuses_cas(
    clock: VirtualClock,
) -> None:
    """Such a primary still serves what never asks for a compare-and-set (a shared session,
    the domain map); a compare-and-set asked of it is a ConfigurationError saying what to
    add, before anything is stored: no raw TypeError, and no switch to local state (which
    would hide it for ever)."""
    primary = OldProtocolStore(clock)
    store = FallbackStore(primary, clock=clock)  # type: ignore[arg-type]
    assert await store.set("k", "v", ttl=10) is True
    assert await primary.get("k") == Entry("v", 10.0)
    with pytest.raises(ConfigurationError, match=r"OldProtocolStore\.set\(\) takes no only_if"):
        await store.set("k", "w", ttl=10, only_if="v")
    assert await primary.get("k") == Entry("v", 10.0)
    assert (await store.local.get("k")) == Entry("v", 10.0)
    assert store.fallbacks == 0
    assert store.sharing


async def test_fallback_raises_a_primarys_type_error_as_a_configuration_error(
    clock: VirtualClock,
) -> None:
    """A primary that cannot take a call as the protocol makes it (here a sync get: nothing to
    await) is a mistake in code, not an outage: typed, never absorbed by going local."""

    class SyncGet(MemoryStore):
        def get(self, key: str) -> Entry | None:  # type: ignore[override]
            return None

    store = FallbackStore(SyncGet(clock), clock=clock)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"SyncGet\.get raised TypeError") as info:
        await store.get("k")
    assert isinstance(info.value.__cause__, TypeError)
    assert store.fallbacks == 0


class NoAnswerStore(MemoryStore):
    """A caller's primary whose calls do their work and answer None (it forgot ``return``)."""

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        await super().set(key, value, ttl=ttl, only_if=only_if)
        return None  # type: ignore[return-value]

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        await super().delete(key, only_if=only_if)
        return None  # type: ignore[return-value]

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        return None if entry is None else entry.value  # type: ignore[return-value]

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        return str(await super().reserve(key, bucket))  # type: ignore[return-value]


async def test_fallback_refuses_a_primarys_answer_outside_the_protocol(
    clock: VirtualClock,
) -> None:
    """A compare-and-set that answered None was read as "changed since it was read" every
    time: the fleet's breaker retried its read and never sent its probe, with nothing logged.
    An answer of the wrong type is the protocol not kept, as a TypeError is: typed, naming
    the call and the type, never absorbed by going local. Where the answer is not read (an
    unconditional set or delete: stores written before only_if answer None), it still fits."""
    store = FallbackStore(NoAnswerStore(clock), clock=clock)
    assert await store.set("k", "v", ttl=10) is True
    with pytest.raises(
        ConfigurationError,
        match=r"NoAnswerStore\.set returned a NoneType, not a bool \(see StateStore\.set\)",
    ):
        await store.set("k", "w", ttl=10, only_if="v")
    with pytest.raises(ConfigurationError, match=r"NoAnswerStore\.get returned a str"):
        await store.get("k")
    with pytest.raises(ConfigurationError, match=r"reserve returned a str, not a number"):
        await store.reserve("p", TokenBucket(rate=10, burst=5))
    with pytest.raises(ConfigurationError, match=r"delete returned a NoneType"):
        await store.delete("k", only_if="w")
    assert await store.delete("k") is True  # the local copy went; the primary's None not read
    assert store.fallbacks == 0
    assert store.sharing


class _ClientError(Exception):
    """What a caller's store may let through: its client's own error (redis-py's
    ConnectionError is neither a StateStoreError nor an OSError)."""


@pytest.mark.parametrize("error", [_ClientError("connection refused"), ConnectionResetError()])
async def test_fallback_takes_a_callers_store_raising_its_clients_error_for_an_outage(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """Before, anything but a StateStoreError went through the fallback raw and failed the
    caller's call; state now goes local, as for any outage, and comes back with the store."""

    class OwnStore(MemoryStore):
        down = False

        async def get(self, key: str) -> Entry | None:
            if self.down:
                raise error
            return await super().get(key)

    primary = OwnStore(clock)
    events: list[StateEvent] = []
    store = FallbackStore(
        primary, clock=clock, retry_interval=1.0, hooks=EventHooks(on_state=[events.append])
    )
    await store.set("k", "shared", ttl=60)
    primary.down = True
    caplog.set_level(logging.WARNING, logger="le_transport.state")
    assert await store.get("k") == Entry("shared", 60.0)  # this process's own copy
    assert not store.sharing
    [line] = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert f"OwnStore.get failed with {type(error).__name__}" in line
    primary.down = False
    clock.advance(1.0)
    await store.get("k")
    assert store.sharing
    assert [e.name for e in events] == ["state_store_fallback", "state_store_resumed"]


async def test_a_bug_in_a_callers_store_is_logged_with_where_it_was_raised_at_every_retry(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken for an outage, but not hidden: an ERROR with the frames it was raised from (never
    its text, which may quote a stored value) when state goes local, and again at each retry
    of the store that meets it. Before, one WARNING named its type, and nothing followed."""

    class BuggyStore(MemoryStore):
        async def get(self, key: str) -> Entry | None:
            return {"s": None}[key]  # KeyError(key): its text is the key asked for

    store = FallbackStore(BuggyStore(clock), clock=clock, retry_interval=1.0)
    caplog.set_level(logging.WARNING, logger="le_transport.state")
    await store.get("session-value-s3cr3t")
    clock.advance(1.0)
    await store.get("session-value-s3cr3t")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("BuggyStore.get failed with KeyError" in m for m in errors)
    assert all("in get" in m for m in errors)  # where: the store's frame
    assert not any("session-value-s3cr3t" in r.getMessage() for r in caplog.records)


class _OddPaceStore(MemoryStore):
    """A caller's own store whose reserve answers something that is no wait."""

    def __init__(self, clock: VirtualClock, answer: float) -> None:
        super().__init__(clock)
        self.answer = answer

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        return self.answer


@pytest.mark.parametrize("answer", [float("inf"), float("nan"), -1.0])
async def test_a_fleet_pace_that_is_no_wait_paces_on_the_processs_own_bucket(
    clock: VirtualClock, answer: float, caplog: pytest.LogCaptureFixture
) -> None:
    # inf slept for ever (a socket never reconnected), NaN stopped the socket with the
    # clock's ValueError: the process paces itself instead, as while the store is out.
    bucket = TokenBucket(rate=10.0, burst=2.0)
    pacer = FleetPacer(_OddPaceStore(clock, answer), account="1", bucket=bucket, clock=clock)
    waited = [await asyncio.wait_for(pacer.acquire(), timeout=5) for _ in range(3)]
    assert waited == pytest.approx([0.0, 0.0, 0.1])
    warnings = [r for r in caplog.records if "not a wait in seconds" in r.getMessage()]
    assert len(warnings) == 1
