"""Bad input to the pure parts of the public API (fault plans, stores, policies, clocks, JWT
reading, the keepalive scheduler): each is the documented, typed error, naming the parameter and
never quoting a value that could be a secret (only its type, or a number), where it used to be
an AttributeError, a TypeError or an OverflowError from deep inside, or was accepted and failed
later, at the first request or the next call on a store's key."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from le_transport import RealClock, timeout_after
from le_transport.chaos import (
    FaultInjector,
    FaultPlan,
    FaultRule,
    FaultRun,
    Match,
    Schedule,
    Status,
    draw,
    fault_to_dict,
)
from le_transport.errors import ConfigurationError, InvalidRetryAfter, StateStoreError
from le_transport.policies import (
    Outcome,
    OutcomeKind,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
    parse_retry_after,
)
from le_transport.providers import jwt_expiry
from le_transport.sockets import KeepaliveScheduler
from le_transport.state import FallbackStore, MemoryStore, RedisStore
from le_transport.testing import VirtualClock
from tests.known_secrets import PASSWORD

HUGE = 10**400  # an int past float's range


def _refused(exc: pytest.ExceptionInfo[BaseException], *names: str) -> None:
    """The error names each of ``names`` and shows no test credential."""
    text = str(exc.value)
    for name in names:
        assert name in text, text
    assert PASSWORD not in text


# -- 1. fault rules, runs and the injector -----------------------------------------------------


@pytest.mark.parametrize("match", ["x", 5, {"path": "*"}])
def test_a_rule_whose_match_is_no_match_is_refused(match: object) -> None:
    """It was accepted, and failed in the engine's request (no 'matches')."""
    with pytest.raises(ConfigurationError) as info:
        FaultRule("r", fault=503, match=match)  # type: ignore[arg-type]
    _refused(info, "FaultRule.match", type(match).__name__)


@pytest.mark.parametrize("schedule", [5, "x", {"fail_next": 1}])
def test_a_rule_whose_schedule_is_no_schedule_is_refused(schedule: object) -> None:
    """It was accepted; the request failed on 'covers', and to_dict on 'skip_first'."""
    with pytest.raises(ConfigurationError) as info:
        FaultRule("r", fault=503, schedule=schedule)  # type: ignore[arg-type]
    _refused(info, "FaultRule.schedule", type(schedule).__name__)


@pytest.mark.parametrize("sequence", [5, 1.5, PASSWORD, {"a": 1}])
def test_a_sequence_that_is_no_list_is_refused_saying_what_is_wanted(sequence: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        FaultRule("r", sequence=sequence)  # type: ignore[arg-type]
    _refused(info, "FaultRule.sequence", "list", type(sequence).__name__)
    with pytest.raises(ConfigurationError) as info:
        FaultPlan.from_dict({"rules": [{"id": "a", "sequence": sequence}]})
    _refused(info, "FaultRule.sequence", "list")
    assert "not iterable" not in str(info.value)


def test_a_valid_rule_still_builds_and_round_trips() -> None:
    rule = FaultRule("r", fault=503, match=Match(path="*/x"), schedule=Schedule(fail_next=2))
    assert FaultPlan.from_dict(FaultPlan(rules=[rule]).to_dict()).rules == (rule,)
    assert FaultRule("s", sequence=[None, 503]).sequence == (None, Status(503))


@pytest.mark.parametrize("origin", ["x", None, math.nan, math.inf, HUGE, True])
def test_a_fault_runs_origin_is_none_or_a_finite_time(origin: object) -> None:
    if origin is None:
        FaultRun([], origin=None)
        return
    with pytest.raises(ConfigurationError) as info:
        FaultRun([], origin=origin)  # type: ignore[arg-type]
    _refused(info, "FaultRun.origin")
    run = FaultRun([], origin=1.5)
    with pytest.raises(ConfigurationError):
        run.reset(origin=origin)  # type: ignore[arg-type]
    assert run.origin == 1.5, "a refused reset changes nothing"


@pytest.mark.parametrize("rules", [5, None, "rule", FaultRule("r", fault=503)])
def test_the_injector_extends_only_with_a_list_of_rules(rules: object) -> None:
    injector = FaultInjector()
    with pytest.raises(ConfigurationError) as info:
        injector.extend(rules)  # type: ignore[arg-type]
    _refused(info, "extend")


def test_the_injector_extends_all_or_nothing() -> None:
    injector = FaultInjector()
    with pytest.raises(ConfigurationError):
        injector.extend([FaultRule("a", fault=503), 5])  # type: ignore[list-item]
    assert len(injector.current_plan.rules) == 0
    injector.extend([FaultRule("a", fault=503), FaultRule("b", fault=500)])
    rules: tuple[FaultRule, ...] = injector.current_plan.rules
    assert tuple(rule.id for rule in rules) == ("a", "b")


@pytest.mark.parametrize("fault", [None, 503, {"kind": "status"}, "x"])
def test_fault_to_dict_takes_only_a_fault(fault: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        fault_to_dict(fault)  # type: ignore[arg-type]
    _refused(info, "fault_to_dict", type(fault).__name__)
    assert fault_to_dict(Status(503))["kind"] == "status"


def test_a_draw_for_a_rule_id_with_a_lone_surrogate_is_a_number() -> None:
    """UnicodeEncodeError before; other ids draw exactly as before (the same bytes)."""
    value = draw(0, "\ud800", 1)
    assert 0.0 <= value < 1.0
    assert draw(0, "\ud800", 1) == value
    assert draw(0, "abé", 1) == 0.8561870286879341


# -- 2. a huge budget deposit ------------------------------------------------------------------


async def test_a_huge_deposit_is_refused_before_it_poisons_the_key() -> None:
    """It raised OverflowError, and so did every later call on that key."""
    budget = RetryBudget()
    memory = MemoryStore()
    with pytest.raises(ConfigurationError) as info:
        memory.deposit("k", budget, HUGE)
    _refused(info, "deposits")
    assert isinstance(await memory.budget("k", budget, withdraw=True), bool)
    fallback = FallbackStore(MemoryStore())
    with pytest.raises(ConfigurationError):
        await fallback.budget("k", budget, deposits=HUGE, withdraw=True)
    with pytest.raises(ConfigurationError):
        await fallback.budget("k", budget, deposits=2**53 + 1)
    assert isinstance(await fallback.budget("k", budget, withdraw=True), bool)
    assert isinstance(await fallback.budget("k", budget, deposits=2**53, withdraw=True), bool)


# -- 3. Retry-After, Outcome, RetryPolicy.decide -----------------------------------------------


@pytest.mark.parametrize("value", [None, 5, b"5", 5.0, ["5"]])
def test_parse_retry_after_refuses_what_is_no_str_as_invalid(value: object) -> None:
    with pytest.raises(InvalidRetryAfter) as info:
        parse_retry_after(value, now_epoch=0)  # type: ignore[arg-type]
    _refused(info, "Retry-After", type(value).__name__)


@pytest.mark.parametrize("now", [math.nan, math.inf, None, "0"])
def test_an_http_date_with_no_finite_now_is_invalid(now: object) -> None:
    """NaN made every date 0 s away; None raised TypeError."""
    with pytest.raises(InvalidRetryAfter):
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_epoch=now)  # type: ignore[arg-type]
    assert parse_retry_after("5", now_epoch=now) == 5.0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Outcome.response("503"), "Outcome.status"),  # type: ignore[arg-type]
        (lambda: Outcome.response(HUGE), "Outcome.status"),
        (lambda: Outcome.response(True), "Outcome.status"),
        (lambda: Outcome.response(-1), "Outcome.status"),
        (lambda: Outcome.response(1000), "Outcome.status"),
        (lambda: Outcome.response(429, retry_after=math.nan), "Outcome.retry_after"),
        (lambda: Outcome.response(429, retry_after=math.inf), "Outcome.retry_after"),
        (lambda: Outcome.response(429, retry_after=HUGE), "Outcome.retry_after"),
        (lambda: Outcome.response(429, retry_after=-1.0), "Outcome.retry_after"),
        (lambda: Outcome.response(429, retry_after="5"), "Outcome.retry_after"),  # type: ignore[arg-type]
        (lambda: Outcome("x"), "Outcome.kind"),  # type: ignore[arg-type]
        (lambda: Outcome.failure(OutcomeKind.TIMEOUT, 5), "Outcome.error"),  # type: ignore[arg-type]
    ],
)
def test_an_outcome_is_checked_when_made(make: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    _refused(info, field)


def test_the_usual_outcomes_are_still_made() -> None:
    import http

    assert Outcome.response(http.HTTPStatus.SERVICE_UNAVAILABLE).status == 503
    assert Outcome.response(429, retry_after=2).retry_after == 2
    assert Outcome.response(503, retry_after=0.0).retry_after == 0.0
    assert Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout").error == "AttemptTimeout"
    assert Outcome(OutcomeKind.RESPONSE).status is None


@pytest.mark.parametrize(
    ("attempt", "outcome", "named"),
    [
        (1, None, "outcome"),
        (1, "503", "outcome"),
        (None, Outcome.response(503), "attempt"),
        ("1", Outcome.response(503), "attempt"),
        (True, Outcome.response(503), "attempt"),
        (1.0, Outcome.response(503), "attempt"),
    ],
)
def test_decide_and_pause_for_refuse_a_bad_attempt_or_outcome(
    attempt: object, outcome: object, named: str
) -> None:
    policy = RetryPolicy()
    with pytest.raises(ConfigurationError) as info:
        policy.decide(attempt, outcome, idempotent=True)  # type: ignore[arg-type]
    _refused(info, "RetryPolicy.decide", named)
    with pytest.raises(ConfigurationError) as info:
        policy.pause_for(attempt, outcome)  # type: ignore[arg-type]
    _refused(info, "RetryPolicy.pause_for")


def test_decide_still_answers_as_before() -> None:
    policy = RetryPolicy()
    assert policy.decide(1, Outcome.response(503), idempotent=True).pause == 5.0
    assert policy.decide(4, Outcome.response(503), idempotent=True).action.value == "give_up"
    assert policy.decide(HUGE, Outcome.response(503), idempotent=True).action.value == "give_up"
    with pytest.raises(ConfigurationError, match="has no pause after it"):
        policy.pause_for(0, Outcome.response(503))


# -- 4. timeout_after --------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", ["5", True, b"1", HUGE, math.nan])
def test_timeout_after_refuses_seconds_that_are_no_number(seconds: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        timeout_after(VirtualClock(), seconds)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError), "an except ValueError still catches NaN"
    _refused(info, "timeout_after", "seconds")
    with pytest.raises(ConfigurationError):
        timeout_after(RealClock(), seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("clock", [None, 5, "clock", RealClock])
def test_timeout_after_refuses_a_clock_that_is_no_clock(clock: object) -> None:
    """It was accepted, and failed only when the block was entered."""
    with pytest.raises(ConfigurationError) as info:
        timeout_after(clock, 1.0)  # type: ignore[arg-type]
    _refused(info, "timeout_after", "clock")


async def test_timeout_after_still_times_out_on_any_number() -> None:
    clock = VirtualClock()
    for seconds in (1, 1.0, math.inf, None):
        async with timeout_after(clock, seconds):
            pass
    with pytest.raises(TimeoutError):
        async with timeout_after(clock, 2):
            await clock.sleep(5)


# -- 5. jwt_expiry, VirtualClock.advance, KeepaliveScheduler -----------------------------------


@pytest.mark.parametrize("token", [None, 5, b"a.b.c"])
def test_jwt_expiry_refuses_what_is_no_token(token: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        jwt_expiry(token)  # type: ignore[arg-type]
    _refused(info, "jwt_expiry", type(token).__name__)


def test_jwt_expiry_reads_a_secret_and_a_str_alike() -> None:
    from le_transport._redact import Secret

    token = "e30.eyJleHAiOjE5MDAwMDAwMDB9.x"  # {"exp": 1900000000}
    assert jwt_expiry(token) == jwt_expiry(Secret(token)) == 1_900_000_000.0
    assert jwt_expiry("not a jwt") is None


@pytest.mark.parametrize("seconds", ["1", None, True, HUGE, math.nan, math.inf, -1])
def test_advancing_a_virtual_clock_takes_only_a_finite_number_of_seconds(seconds: object) -> None:
    clock = VirtualClock()
    with pytest.raises(ConfigurationError) as info:
        clock.advance(seconds)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    _refused(info, "advance" if seconds != -1 else "backwards")
    assert clock.now() == 0.0
    clock.advance(1)
    clock.advance(0.5)
    assert clock.now() == 1.5


@pytest.mark.parametrize(
    ("clock", "shared", "field"),
    [(True, True, "clock"), (None, True, "clock"), (VirtualClock(), "x", "shared")],
)
def test_a_keepalive_scheduler_takes_a_clock_and_a_bool(
    clock: object, shared: object, field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeepaliveScheduler(clock, shared=shared)  # type: ignore[arg-type]
    _refused(info, f"KeepaliveScheduler.{field}")
    assert KeepaliveScheduler(VirtualClock(), shared=False).shared is False


# -- 7. closed stores and keys -----------------------------------------------------------------


async def _every_operation(store: Any) -> list[Any]:
    budget, bucket = RetryBudget(), TokenBucket(rate=1.0, burst=1.0)
    return [
        lambda: store.get("k"),
        lambda: store.set("k", "v", ttl=1),
        lambda: store.set("k", "v", ttl=1, only_if="w"),
        lambda: store.add("k", "v", ttl=1),
        lambda: store.delete("k"),
        lambda: store.budget("k", budget, deposits=1, withdraw=True),
        lambda: store.refund("k", budget, age=0.0),
        lambda: store.reserve("k", bucket),
    ]


@pytest.mark.parametrize("make", [MemoryStore, lambda: FallbackStore(MemoryStore())])
async def test_a_closed_store_refuses_every_operation_as_redis_does(make: Any) -> None:
    store = make()
    await store.set("k", "v", ttl=60)
    await store.close()
    for operation in await _every_operation(store):
        with pytest.raises(StateStoreError, match="the store is closed"):
            await operation()
    await store.close()  # idempotent


async def test_a_closed_memory_store_refuses_its_synchronous_counts_too() -> None:
    store = MemoryStore()
    await store.close()
    with pytest.raises(StateStoreError, match="the store is closed"):
        store.deposit("k", RetryBudget())
    with pytest.raises(StateStoreError, match="the store is closed"):
        store.note_retry("k", RetryBudget())


async def test_a_closed_redis_store_says_the_same() -> None:
    store = RedisStore("redis://127.0.0.1:1")
    await store.close()
    with pytest.raises(StateStoreError, match="the store is closed"):
        await store.get("k")


@pytest.mark.parametrize("key", [None, 5, b"k", ("k",)])
@pytest.mark.parametrize(
    "make",
    [MemoryStore, lambda: FallbackStore(MemoryStore()), lambda: RedisStore("redis://127.0.0.1:1")],
)
async def test_a_key_that_is_no_str_is_refused_by_every_store(make: Any, key: object) -> None:
    """MemoryStore kept None as a key; Redis stored under "prefix:None"."""
    store = make()
    try:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.get(key),
            lambda: store.set(key, "v", ttl=1),
            lambda: store.add(key, "v", ttl=1),
            lambda: store.delete(key),
        ]
        for call in calls:
            with pytest.raises(ConfigurationError) as info:
                await call()
            _refused(info, "key", type(key).__name__)
        with pytest.raises(ConfigurationError):
            await store.budget(key, RetryBudget(), deposits=1)
    finally:
        await store.close()


# -- the socket path builders and the first frame (sockets/dial.py) ---------------------------


@pytest.mark.parametrize("account", [None, b"123", "\ud800", "1/2", "..", True, 1.5])
def test_socket_path_builders_refuse_what_is_no_account_id(account: object) -> None:
    """str() of anything made a path: ums_brand_path(None) was
    '/ws_api/account/None/messaging/brand/{bearer}', bytes b%27x%27, a surrogate raised
    UnicodeEncodeError."""
    from le_transport.sockets import consumer_path, ums_brand_path

    for build in (ums_brand_path, consumer_path):
        with pytest.raises(ConfigurationError, match="account must be a LiveEngage account id"):
            build(account)  # type: ignore[arg-type]
    assert ums_brand_path("123") == "/ws_api/account/123/messaging/brand/{bearer}"
    assert consumer_path("123") == "/ws_api/account/123/messaging/consumer"


def test_the_first_frame_takes_a_secret_only() -> None:
    from le_transport._redact import Secret
    from le_transport.sockets import init_connection_frame

    with pytest.raises(ConfigurationError, match="must be a Secret"):
        init_connection_frame("eyJ.plain.jwt")  # type: ignore[arg-type]
    frame = init_connection_frame(Secret("eyJ.a.b"))
    assert frame["id"] == "0"
