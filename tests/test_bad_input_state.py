"""Bad input to the state stores and what is built on them: wrong types, numbers past float's
range, hostile account and service names in keys. Each is a ConfigurationError naming what was
wrong (and never showing a value that could be a credential), or a key that stays in its
namespace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from le_transport._redact import Secret
from le_transport.errors import ConfigurationError
from le_transport.state import (
    FallbackStore,
    FleetPacer,
    MemoryStore,
    RedisStore,
    SharedDomainMap,
    SharedSession,
)
from le_transport.state.store import state_key
from le_transport.testing import VirtualClock
from tests.known_secrets import PASSWORD

HUGE = 10**400  # an int past float's range: float() and math.isfinite raise OverflowError

# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [("1", None), ("1", "session", 5), ("1", b"session"), ("1", "session", None), (5, "session")],
)
def test_a_key_part_that_is_not_a_str_is_a_configuration_error(parts: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigurationError, match="state key"):
        state_key(*parts)


@pytest.mark.parametrize("account", [PASSWORD.encode(), ""])
def test_a_bad_account_in_a_key_is_not_shown(account: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        state_key(account, "session")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("1:session", "domains"), ("1", "session:domains")),
        (("1", "session", "u:x"), ("1", "session:u", "x")),
        (("1%3A", "s"), ("1:", "s")),
        (("{1}", "s"), ("1", "s")),
        (("1\r\n", "s"), ("1", "s")),
    ],
)
def test_hostile_names_never_make_two_keys_collide(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert state_key(*a) != state_key(*b)
    # Redis Cluster's hash tag is the text between braces: a name must not choose the slot.
    assert not {"{", "}"} & set(state_key(*a))


# -- stores and what is built on them -------------------------------------------------------


async def test_memory_store_refuses_a_ttl_past_floats_range() -> None:
    store = MemoryStore(VirtualClock())
    with pytest.raises(ConfigurationError, match="TTL"):
        await store.set("k", "v", ttl=HUGE)
    with pytest.raises(ConfigurationError, match="TTL"):
        await store.add("k", "v", ttl=HUGE)


@pytest.mark.parametrize("value", [5, b"v", None])
async def test_memory_store_holds_only_str_values(value: Any) -> None:
    # A Redis store would hand back str(value): the two stores must not disagree.
    store = MemoryStore(VirtualClock())
    with pytest.raises(ConfigurationError, match="value"):
        await store.set("k", value, ttl=1)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: MemoryStore(clock="now"), "clock"),  # type: ignore[arg-type]
        (lambda: RedisStore(5), "url"),  # type: ignore[arg-type]
        (lambda: RedisStore(password=5), "password"),  # type: ignore[arg-type]
        (lambda: RedisStore(password=b"pw"), "password"),  # type: ignore[arg-type]
        (lambda: RedisStore(op_timeout=HUGE), "op_timeout"),
        (lambda: RedisStore(op_timeout=True), "op_timeout"),
        (lambda: RedisStore(prefix="a\x00b"), "prefix"),
        (lambda: RedisStore(client_options=[("username", "u")]), "client_options"),  # type: ignore[arg-type]
        (lambda: SharedSession(None, account="1", user="u"), "store"),  # type: ignore[arg-type]
        (lambda: SharedSession(MemoryStore(), account="1", user="u", lock_ttl=HUGE), "lock_ttl"),
        (lambda: SharedSession(MemoryStore(), account="1", user="u", poll=float("inf")), "poll"),
        (lambda: SharedSession(MemoryStore(), account="1", user="u", safety_margin=float("nan")),
         "safety_margin"),
        (lambda: SharedSession(MemoryStore(), account="1", user="u", safety_margin=-1),
         "safety_margin"),
        (lambda: SharedDomainMap(None, account="1"), "store"),  # type: ignore[arg-type]
        (lambda: SharedDomainMap(MemoryStore(), account="1", ttl=HUGE), "ttl"),
        (lambda: SharedDomainMap(MemoryStore(), account="1", ttl=float("inf")), "ttl"),
        (lambda: FleetPacer("redis://x", account="1"), "store"),  # type: ignore[arg-type]
        (lambda: FleetPacer(MemoryStore(), account="1", name=5), "state key"),  # type: ignore[arg-type]
        (lambda: FallbackStore(None), "primary"),  # type: ignore[arg-type]
        (lambda: FallbackStore(MemoryStore(), retry_interval=-1), "retry_interval"),
        (lambda: FallbackStore(MemoryStore(), retry_interval=HUGE), "retry_interval"),
    ],
)  # fmt: skip
def test_state_constructors_refuse_bad_values(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field) as info:
        build()
    assert "pw" not in str(info.value).replace("password", "")


def test_redis_store_password_as_secret_or_str_is_fine() -> None:
    RedisStore(password=Secret(PASSWORD))
    RedisStore(password=PASSWORD)


# -- what another process (or anyone with write access) left in the store ------------------------

DAMAGED_SESSIONS = [
    '{"value": "v", "version": "1", "life": ' + "9" * 400 + "}",
    '{"value": "v", "version": "1", "life": NaN}',
    '{"value": "v", "version": "1", "life": Infinity}',
    "[" * 100_000,
    '{"value": {"a": 1}, "version": "1", "life": 10}',
]


@pytest.mark.parametrize("payload", DAMAGED_SESSIONS, ids=["huge", "nan", "inf", "deep", "dict"])
async def test_a_damaged_shared_session_entry_reads_as_absent(payload: str) -> None:
    store = MemoryStore(VirtualClock())
    shared = SharedSession(store, account="1", user="u")
    await store.set(state_key("1", "session", "u"), payload, ttl=60)
    assert await shared.current() is None


@pytest.mark.parametrize(
    "payload", ["[" * 100_000, '{"agentVep": ' + "9" * 400 + "}"], ids=["deep", "huge"]
)
async def test_a_damaged_shared_domain_map_reads_as_absent(payload: str) -> None:
    store = MemoryStore(VirtualClock())
    shared = SharedDomainMap(store, account="1")
    await store.set(state_key("1", "domains"), payload, ttl=60)
    assert await shared.get() is None
