"""Regressions of a review: a caller's StateStore whose ``get`` answers an Entry holding no str.

A caller's store on a Redis client without ``decode_responses`` answers bytes; a buggy one may
answer an int, None or a list. The FallbackStore checked only that the answer was an Entry, so:

1. the overload guard failed every call with a raw TypeError (``len()``, a slice, ``hash()`` of
   the value while warning of a damaged trip; a bytes value through ``redact_text``);
2. bytes parsed as JSON, and were reused as the ``only_if`` of a compare-and-set: the fleet's
   first half-open probe (and a break published over an ended one) failed with a
   ConfigurationError ("a store's only_if must be None or a str, got bytes");
3. SharedDomainMap raised the TypeError of ``json.loads`` out of ``get``;
4. SharedSession.forget reused bytes as its compare-and-delete's ``only_if``: refused.

Now str is the contract at the FallbackStore boundary (bytes decoded as UTF-8; anything else,
or bytes that are no UTF-8, read as damaged: None, warned of once by the key's kind and the
value's type, never the value), and the readers a caller's MemoryStore reaches unwrapped
(SharedDomainMap, SharedSession) take values the same way.
"""

from __future__ import annotations

import json
import logging

import pytest

from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Outcome
from le_transport.state import (
    Entry,
    FallbackStore,
    MemoryStore,
    SharedDomainMap,
    SharedSession,
    state_key,
)
from le_transport.testing import VirtualClock
from tests.test_guard_hot_path import _Call

HOST = "127.0.0.1:8080"
KEY = ("svc", HOST)
DOWN = Outcome.response(503)
OK = Outcome.response(200)
#: Four failures open it for 5 s; the probe's lease is the default.
BREAKER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
#: Stands for a credential in a stored value: it must reach no log record.
LEAKY = "leaky-value-7f3e"

#: Values no reader can take: each is damaged, never a raw TypeError.
GARBAGE: list[object] = [
    5,
    None,
    [LEAKY],
    {"value": LEAKY},
    b"\xff\xfe " + LEAKY.encode(),
    bytearray(b"\xff" + LEAKY.encode()),
    3.5,
]


def _ids(value: object) -> str:
    return type(value).__name__


class _Garbage(MemoryStore):
    """A caller's store whose ``get`` answers an Entry holding ``value`` for every key."""

    def __init__(self, clock: VirtualClock, value: object) -> None:
        super().__init__(clock)
        self.value = value

    async def get(self, key: str) -> Entry | None:
        return Entry(self.value, 5.0)  # type: ignore[arg-type]


class _Bytes(MemoryStore):
    """A caller's store on a Redis client without ``decode_responses``: it answers every value
    as bytes (UTF-8). What it is sent is held to the protocol, as MemoryStore holds it: an
    ``only_if`` that is no str (the bytes it answered, reused) is a ConfigurationError."""

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        if entry is None:
            return None
        return Entry(entry.value.encode(), entry.ttl)  # type: ignore[arg-type]


class _Foreign:
    """A caller's store that is no MemoryStore (so every reader wraps it in a FallbackStore),
    answering ``get`` through ``inner``."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        return await self.inner.set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        return await self.inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: object, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        return await self.inner.budget(key, policy, deposits=deposits, withdraw=withdraw)  # type: ignore[arg-type]

    async def reserve(self, key: str, bucket: object) -> float:
        return await self.inner.reserve(key, bucket)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.inner.close()


def _messages(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if part in r.getMessage()]


# -- FallbackStore: str is the contract of what get answers ----------------------------------


@pytest.mark.parametrize("value", GARBAGE, ids=_ids)
async def test_a_value_that_is_no_str_reads_as_damaged_and_is_warned_of_once_by_type(
    value: object, caplog: pytest.LogCaptureFixture, secret_values: set[str]
) -> None:
    secret_values.add(LEAKY)
    clock = VirtualClock(start=100.0, autojump=False)
    store = FallbackStore(_Garbage(clock, value), clock=clock)
    key = state_key("1", "session", "bot")
    await store.local.set(key, "an older local copy", ttl=60.0)
    with caplog.at_level(logging.WARNING, logger="le_transport.state"):
        assert await store.get(key) is None
        assert await store.get(key) is None
    assert await store.local.get(key) is None, "no older local copy is served for it later"
    assert store.sharing, "the store answered: no outage"
    warnings = _messages(caplog, "not a str")
    assert len(warnings) == 1, "once per key"
    assert "'session'" in warnings[0], "the key's kind is named"
    assert type(value).__name__ in warnings[0], "the value's type is named"
    assert LEAKY not in warnings[0]
    assert "bot" not in warnings[0], "nor the rest of the key"


@pytest.mark.parametrize("raw", [b'{"a": "h\xc3\xa9llo"}', bytearray(b'{"a": "h\xc3\xa9llo"}')])
async def test_utf8_bytes_are_read_as_the_str_they_were_written_as(raw: bytes) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    primary = _Garbage(clock, raw)
    store = FallbackStore(primary, clock=clock)
    entry = await store.get("k")
    assert entry is not None
    assert entry.value == '{"a": "héllo"}'
    assert type(entry.value) is str
    # Mirrored as a str too: what a later outage answers from.
    local = await store.local.get("k")
    assert local is not None
    assert local.value == '{"a": "héllo"}'


async def test_a_local_store_of_the_callers_answering_no_str_reads_as_damaged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the local store answers while the primary is out is held to the contract too."""
    clock = VirtualClock(start=100.0, autojump=False)

    class Down(MemoryStore):
        async def get(self, key: str) -> Entry | None:
            raise OSError("down")

    store = FallbackStore(Down(clock), local=_Garbage(clock, 7), clock=clock)
    with caplog.at_level(logging.WARNING, logger="le_transport.state"):
        assert await store.get(state_key("1", "domains")) is None
    assert not store.sharing
    assert any("'domains'" in m and "int" in m for m in _messages(caplog, "not a str"))


# -- the overload guard ----------------------------------------------------------------------


@pytest.mark.parametrize("value", GARBAGE, ids=_ids)
async def test_the_guard_admits_calls_over_a_store_answering_no_str(
    value: object, secret_values: set[str]
) -> None:
    """Every call failed with a raw TypeError (len(), a slice, hash() of the value)."""
    secret_values.add(LEAKY)
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(
        budget=None, breaker=BREAKER, store=_Garbage(clock, value), account="1", clock=clock
    )
    for _ in range(3):
        call = _Call(*KEY)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, OK)
        clock.advance(2.0)
    assert guard.breaker_state(*KEY) is BreakerState.CLOSED


@pytest.mark.parametrize("value", GARBAGE, ids=_ids)
def test_a_damaged_trip_that_is_no_str_is_described_by_its_type(
    value: object, caplog: pytest.LogCaptureFixture, secret_values: set[str]
) -> None:
    """_damaged_trip itself, for a store the guard holds unwrapped: len(), a slice, hash() or
    redact_text() of the value raised TypeError."""
    secret_values.add(LEAKY)
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    entry = Entry(value, 5.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        guard._damaged_trip(KEY, entry, TypeError("not a str"))
        guard._damaged_trip(KEY, entry, TypeError("not a str"))
    warnings = _messages(caplog, "damaged circuit breaker trip")
    assert len(warnings) == 1, "once per entry"
    assert f"a {type(value).__name__}, not a str" in warnings[0]
    assert LEAKY not in warnings[0]


def test_a_damaged_trip_that_is_a_str_is_still_shown_by_its_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    with caplog.at_level(logging.WARNING, logger="le_transport.overload"):
        guard._damaged_trip(KEY, Entry("x" * 100, 5.0), ValueError("bad"))
    (warning,) = _messages(caplog, "damaged circuit breaker trip")
    assert f"100 characters, starting {'x' * 40!r}" in warning


def _fleet(clock: VirtualClock, store: MemoryStore) -> tuple[OverloadGuard, OverloadGuard]:
    a, b = (
        OverloadGuard(
            budget=None, breaker=BREAKER, store=store, account="1", clock=clock, sync_interval=0
        )
        for _ in range(2)
    )
    return a, b


async def _fail(guard: OverloadGuard) -> None:
    for _ in range(BREAKER.minimum_throughput):
        call = _Call(*KEY)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, DOWN)


async def test_the_fleets_probe_goes_through_a_store_answering_bytes() -> None:
    """The trip read as bytes was the probe's only_if: the fleet's first half-open call failed
    with ConfigurationError, and so did every one after it."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Bytes(clock)
    a, b = _fleet(clock, store)
    await _fail(a)
    assert a.breaker_state(*KEY) is BreakerState.OPEN
    clock.advance(6.0)  # the break is over: B goes half-open and probes
    probe = _Call(*KEY)
    assert await b.admit(probe, 1) is None
    await b.settle(probe, 1, OK)
    assert b.breaker_state(*KEY) is BreakerState.CLOSED
    entry = await MemoryStore.get(store, state_key("1", "breaker", *KEY))
    assert entry is not None
    assert "closed" in json.loads(entry.value), "the fleet's close mark"
    call = _Call(*KEY)
    assert await a.admit(call, 1) is None, "A took the fleet's close"


async def test_a_break_is_published_over_an_ended_one_through_a_store_answering_bytes() -> None:
    """B opened after A's break had ended (its half-open tail still stored): the compare-and-
    set of the trip read as bytes raised ConfigurationError out of B's settle."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = _Bytes(clock)
    a, b = _fleet(clock, store)
    held = []
    for _ in range(BREAKER.minimum_throughput):
        call = _Call(*KEY)
        assert await b.admit(call, 1) is None
        held.append(call)
    await _fail(a)
    clock.advance(6.0)  # A's break ended; its entry is kept for the probe lease
    trip_key = state_key("1", "breaker", *KEY)
    before = await MemoryStore.get(store, trip_key)
    assert before is not None, "A's trip, in its half-open tail"
    for call in held:
        await b.settle(call, 1, DOWN)
    assert b.breaker_state(*KEY) is BreakerState.OPEN
    entry = await MemoryStore.get(store, trip_key)
    assert entry is not None
    assert entry.value != before.value, "B's break replaced the ended one (compare-and-set)"
    assert entry.ttl > before.ttl


# -- SharedDomainMap -------------------------------------------------------------------------


@pytest.mark.parametrize("value", GARBAGE, ids=_ids)
@pytest.mark.parametrize("wrapped", [False, True], ids=["memory-subclass", "foreign"])
async def test_the_domain_map_reads_a_value_that_is_no_str_as_absent(
    value: object, wrapped: bool, secret_values: set[str]
) -> None:
    """It raised the TypeError of json.loads (a caller's MemoryStore is used unwrapped; a
    foreign store's FallbackStore passed the value on)."""
    secret_values.add(LEAKY)
    clock = VirtualClock(start=100.0, autojump=False)
    garbage = _Garbage(clock, value)
    domains = SharedDomainMap(
        _Foreign(garbage) if wrapped else garbage,
        account="1",
        clock=clock,
    )
    assert await domains.get() is None


@pytest.mark.parametrize("wrapped", [False, True], ids=["memory-subclass", "foreign"])
async def test_the_domain_map_reads_utf8_bytes(wrapped: bool) -> None:
    clock = VirtualClock(start=100.0, autojump=False)
    inner = _Bytes(clock)
    domains = SharedDomainMap(
        _Foreign(inner) if wrapped else inner,
        account="1",
        clock=clock,
    )
    await domains.put({"msgHist": "va.msghist.liveperson.net"})
    assert await domains.get() == {"msgHist": "va.msghist.liveperson.net"}


# -- SharedSession ---------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["memory-subclass", "foreign"])
async def test_a_session_read_as_bytes_can_be_forgotten(wrapped: bool) -> None:
    """forget() reused the entry read as bytes as its compare-and-delete's only_if: a
    ConfigurationError, after a 401, instead of dropping the rejected session."""
    clock = VirtualClock(start=100.0, autojump=False)
    inner = _Bytes(clock)
    session = SharedSession(
        _Foreign(inner) if wrapped else inner,
        account="1",
        user="bot",
        clock=clock,
    )

    async def login() -> tuple[str, float | None]:
        return "serialised session", 600.0

    token = await session.login(login)
    current = await session.current()
    assert current is not None
    assert current.version == token.version
    await session.forget(token.version)
    assert await MemoryStore.get(inner, state_key("1", "session", "bot")) is None
    assert await session.current() is None


@pytest.mark.parametrize("value", GARBAGE, ids=_ids)
@pytest.mark.parametrize("wrapped", [False, True], ids=["memory-subclass", "foreign"])
async def test_a_session_that_is_no_str_reads_as_absent(
    value: object, wrapped: bool, secret_values: set[str]
) -> None:
    secret_values.add(LEAKY)
    clock = VirtualClock(start=100.0, autojump=False)
    garbage = _Garbage(clock, value)
    session = SharedSession(
        _Foreign(garbage) if wrapped else garbage,
        account="1",
        user="bot",
        clock=clock,
    )
    assert await session.current() is None
    await session.forget("v1")  # nothing to drop, and no error
