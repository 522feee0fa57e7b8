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
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import RetryBudget
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
from tests.test_guard_hot_path import _Call

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


def _connection_settings(store: RedisStore) -> tuple[type, dict[str, Any], int | None]:
    """What the store's client opens each connection with: its class, its keyword arguments,
    and the pool's size."""
    pool = store._client.connection_pool
    return pool.connection_class, dict(pool.connection_kwargs), pool.max_connections


@pytest.mark.parametrize("password", [Secret(PASSWORD), PASSWORD], ids=["secret", "str"])
def test_redis_store_password_as_secret_or_str_is_fine(password: Secret | str) -> None:
    _, settings, _ = _connection_settings(RedisStore(password=password))
    # Compared apart: a failed comparison must not print the password.
    reached = settings.get("password") == PASSWORD
    assert reached, "the password did not reach the client's connections"


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        ("redis://127.0.0.1:1/0", {"socket_keepalvie": True}, "'socket_keepalvie'"),
        # A TLS option on a plain connection fails its connect just the same.
        ("redis://127.0.0.1:1/0", {"ssl_cert_reqs": "none"}, "'ssl_cert_reqs'"),
    ],
)
def test_redis_store_refuses_client_options_its_connections_would_not_take(
    url: str, options: dict[str, object], named: str
) -> None:
    # redis-py hands client_options to each connection it opens: a misspelt one failed the
    # first operation with a TypeError, taken for an outage (the fleet went local, Redis up).
    with pytest.raises(ConfigurationError, match="client_options") as info:
        RedisStore(url, client_options={**options, "password": PASSWORD})
    assert named in str(info.value)
    assert PASSWORD not in str(info.value)


def test_redis_store_names_a_connection_class_given_as_a_partial() -> None:
    import functools

    from redis.asyncio.connection import Connection

    with pytest.raises(ConfigurationError, match="'socket_timout'"):
        RedisStore(
            "redis://127.0.0.1:1/0",
            client_options={
                "connection_class": functools.partial(Connection),
                "socket_timout": 1,
            },
        )


def test_redis_store_takes_pool_and_connection_options() -> None:
    from redis.asyncio.connection import SSLConnection

    store = RedisStore(
        "redis://127.0.0.1:1/0",
        client_options={"socket_keepalive": True, "max_connections": 10, "client_name": "bot"},
    )
    _, settings, size = _connection_settings(store)
    assert size == 10
    assert settings["socket_keepalive"] is True
    assert settings["client_name"] == "bot"
    assert (settings["host"], settings["port"], settings["db"]) == ("127.0.0.1", 1, 0)
    tls = RedisStore("rediss://127.0.0.1:1/0", client_options={"ssl_cert_reqs": "none"})
    kind, settings, _ = _connection_settings(tls)
    assert issubclass(kind, SSLConnection)
    assert settings["ssl_cert_reqs"] == "none"


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


# -- the overload guard's fleet intervals --------------------------------------------------------


@pytest.mark.parametrize("field", ["flush_interval", "sync_interval"])
@pytest.mark.parametrize(
    "value",
    [HUGE, -HUGE, float("nan"), float("inf"), -float("inf"), True, -1, -0.5, "1", None],
    ids=["huge", "-huge", "nan", "inf", "-inf", "bool", "-1", "-0.5", "str", "None"],
)
def test_overload_guard_refuses_an_interval_that_is_no_finite_number_of_seconds(
    field: str, value: object
) -> None:
    """10**400 passed ``< math.inf`` and raised OverflowError from a fleet guard's second first
    attempt (the batched send's arithmetic): refused when the guard is made."""
    with pytest.raises(ConfigurationError, match=rf"OverloadGuard\.{field}"):
        OverloadGuard(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [0, 1.5, True, float("nan"), float("inf"), 1e308, -1, "8"], ids=repr
)
def test_overload_guard_refuses_a_max_breakers_that_is_no_int_of_at_least_one(
    value: object,
) -> None:
    with pytest.raises(ConfigurationError, match=r"OverloadGuard\.max_breakers"):
        OverloadGuard(max_breakers=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, 1e308, 10**300])
async def test_a_fleet_guard_with_extreme_but_finite_intervals_works(seconds: float) -> None:
    """Never flushing early, never syncing again: what a huge interval means, without failing."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(
        store=FallbackStore(MemoryStore(clock), clock=clock),
        account="1",
        clock=clock,
        flush_interval=seconds,
        sync_interval=seconds,
    )
    for _ in range(3):
        assert await guard.admit(_Call("svc", "127.0.0.1:8080"), 1) is None
        clock.advance(0.5)


# -- a store's budget, bucket and conditions of the wrong kind ------------------------------------


def _stores() -> list[Any]:
    clock = VirtualClock()
    return [MemoryStore(clock), FallbackStore(MemoryStore(clock), clock=clock)]


@pytest.mark.parametrize("policy", ["x", None, 0.1, RetryBudget], ids=repr)
async def test_a_stores_budget_refuses_a_policy_that_is_no_retry_budget(policy: Any) -> None:
    """It raised AttributeError ('str' object has no attribute 'empty') from inside the store."""
    for store in _stores():
        for deposits, withdraw in ((0, False), (1, False), (0, True)):
            with pytest.raises(ConfigurationError, match="needs a RetryBudget policy"):
                await store.budget("b", policy, deposits=deposits, withdraw=withdraw)


@pytest.mark.parametrize("bucket", ["x", None, 2.0, RetryBudget()], ids=repr)
async def test_a_stores_reserve_refuses_a_bucket_that_is_no_token_bucket(bucket: Any) -> None:
    for store in _stores():
        with pytest.raises(ConfigurationError, match="needs a TokenBucket"):
            await store.reserve("p", bucket)


@pytest.mark.parametrize("only_if", [5, b"v", ["v"]], ids=repr)
async def test_a_stores_condition_that_is_no_str_is_refused(only_if: Any) -> None:
    """Redis would compare str(only_if), the memory store the object: they would disagree."""
    for store in _stores():
        await store.set("k", "5", ttl=10)
        with pytest.raises(ConfigurationError, match="only_if must be None or a str, got"):
            await store.set("k", "v", ttl=10, only_if=only_if)
        with pytest.raises(ConfigurationError, match="only_if must be None or a str, got"):
            await store.delete("k", only_if=only_if)
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == "5"
