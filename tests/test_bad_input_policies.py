"""Bad input to the policies' constructors: every wrong value is a ConfigurationError naming
its field, raised at construction (never an untyped error, never a value accepted and
misread later)."""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import attrs
import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from le_transport.errors import ConfigurationError
from le_transport.policies import (
    BackoffPolicy,
    CircuitBreaker,
    Classifier,
    ClosePolicy,
    Keepalive,
    KeepaliveTransport,
    Outcome,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
)
from le_transport.policies.pacing import MAX_QUEUE
from le_transport.providers import StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock

NOT_A_STATUS_SET = [None, 429, 42.0, "429", b"429", {"429"}, {True}, {429.0}, object()]


def _value_id(value: object) -> str:
    # A plain object's repr carries its address: the same on every run of the collection.
    return "object()" if type(value) is object else repr(value)


@pytest.mark.parametrize("field", ["retry_statuses", "final_statuses"])
@pytest.mark.parametrize("value", NOT_A_STATUS_SET, ids=_value_id)
def test_classifier_status_sets_hold_only_int_statuses(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"Classifier.{field}"):
        Classifier(**{field: value})


@pytest.mark.parametrize("field", ["reauth_codes", "reauth_statuses"])
@pytest.mark.parametrize("value", NOT_A_STATUS_SET, ids=_value_id)
def test_close_policy_code_sets_hold_only_ints(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"ClosePolicy.{field}"):
        ClosePolicy(**{field: value})


def test_status_sets_still_take_any_iterable_of_ints() -> None:
    assert Classifier(retry_statuses=[429, 409]).retry_statuses == {429, 409}
    assert ClosePolicy(reauth_codes=(4401,)).reauth_codes == {4401}


@pytest.mark.parametrize("value", [None, "Classifier", Classifier, {"retry_statuses": {429}}])
def test_retry_policy_classifier_must_be_a_classifier(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.classifier"):
        RetryPolicy(classifier=value)


@pytest.mark.parametrize("value", [None, 5.0, RetryPolicy(), BackoffPolicy])
def test_breaker_breaks_must_be_a_backoff_policy(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.breaks"):
        CircuitBreaker(breaks=value)


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (RetryPolicy, "deadline"),
        (RetryPolicy, "attempt_timeout"),
        (RetryPolicy, "rate_limit_floor"),
        (BackoffPolicy, "cap"),
        (RetryBudget, "window"),
        (TokenBucket, "rate"),
        (CircuitBreaker, "sampling_window"),
    ],
)
def test_an_int_too_large_for_a_float_is_a_configuration_error(cls: Any, field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{cls.__name__}.{field}"):
        cls(**{field: 10**400})


@pytest.mark.parametrize("value", [float("inf"), 10**400])
def test_backoff_factor_must_be_finite(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"BackoffPolicy\.factor"):
        BackoffPolicy(factor=value)


def _keepalive(**overrides: Any) -> Keepalive:
    kwargs: dict[str, Any] = {"product": "p", "action": ".GetClock", "interval": 30, "timeout": 10}
    kwargs.update(overrides)
    return Keepalive(**kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("product", None),
        ("product", b"p"),
        ("action", None),
        ("action", ""),
        ("action", 7),
        ("transport", "http"),
        ("transport", None),
        ("method", b"GET"),
        ("path", 5),
        ("params", None),
        ("params", 5),
        ("params", "a=b"),
        ("params", [("a",)]),
        ("params", [1]),
        ("params", {"a": None}),
        ("params", {b"a": "b"}),
        ("only_when_idle", "no"),
        ("outbound_idle", 1),
    ],
)
def test_keepalive_fields_are_checked(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"Keepalive.{field}"):
        _keepalive(**{field: value})


def test_keepalive_params_take_a_mapping_or_pairs() -> None:
    assert _keepalive(params={"v": "1"}).params == (("v", "1"),)
    assert _keepalive(params=[("v", 1)]).params == (("v", "1"),)
    http = _keepalive(transport=KeepaliveTransport.HTTP, method="GET", path="/x")
    assert http.transport is KeepaliveTransport.HTTP


@pytest.mark.parametrize("value", [True, False, 1])
def test_close_policy_reconnect_flag_must_be_a_bool(value: Any) -> None:
    if isinstance(value, bool):
        assert ClosePolicy(reconnect_on_server_close=value).reconnect_on_server_close is value
    else:
        with pytest.raises(ConfigurationError, match=r"ClosePolicy\.reconnect_on_server_close"):
            ClosePolicy(reconnect_on_server_close=value)


@pytest.mark.parametrize("field", ["tokens", "updated_at"])
@pytest.mark.parametrize("value", [True, "5", float("nan"), float("inf"), [1]], ids=repr)
def test_token_bucket_state_must_be_none_or_a_finite_number(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"TokenBucket.{field}"):
        TokenBucket(**{field: value})


def test_token_bucket_state_may_be_negative_tokens() -> None:
    # A queue of reservations drives tokens below zero: that is state, not an error.
    assert TokenBucket(tokens=-3.0, updated_at=0.0).available(0.0) == -3.0


# -- the recovery loop ---------------------------------------------------------------------------


def _recovery(**overrides: Any) -> Recovery:
    kwargs: dict[str, Any] = {"domains": StaticDomains({}), "auth": None, "clock": VirtualClock()}
    kwargs.update(overrides)
    return Recovery(**kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("policy", RetryPolicy()),
        ("policy", 120),
        ("request_policy", BackoffPolicy()),
        ("domains", {"agentVep": "va.example"}),
        ("auth", "bearer"),
        ("clock", 0.0),
        ("rng", 7),
        ("hooks", [print]),
        ("subject", None),
    ],
)
def test_recovery_options_of_the_wrong_type_fail_at_construction(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"Recovery\.{field}"):
        _recovery(**{field: value})


async def test_recovery_run_wants_a_function_not_a_coroutine() -> None:
    recovery = _recovery()

    async def call() -> int:
        return 1

    coroutine = call()
    with pytest.raises(ConfigurationError, match=r"Recovery\.run"):
        await recovery.run(coroutine)  # type: ignore[arg-type]
    # Closed for the caller, so no "never awaited" warning is left behind.
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    with pytest.raises(ConfigurationError, match=r"Recovery\.run"):
        await recovery.run(lambda: 1)  # type: ignore[arg-type, return-value]
    assert await recovery.run(call) == 1


# -- scaled() -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(),
        BackoffPolicy(),
        CircuitBreaker(),
        Keepalive(product="p", action=".GetClock", interval=30, timeout=10),
    ],
    ids=lambda p: type(p).__name__,
)
@pytest.mark.parametrize(
    "factor",
    ["2", None, True, 10**400, float("inf"), float("nan"), 0, -1],
    ids=["'2'", "None", "True", "10**400", "inf", "nan", "0", "-1"],
)
def test_scaled_takes_only_a_finite_positive_factor(policy: Any, factor: Any) -> None:
    with pytest.raises(ConfigurationError, match="scale factor"):
        policy.scaled(factor)


# -- a random draw that is not a number in [0, 1] -------------------------------------------------


@pytest.mark.parametrize("rand", [float("nan"), float("inf"), -float("inf"), 7.0, -3.0])
def test_a_draw_outside_0_1_or_nan_never_makes_a_pause_outside_the_bounds(rand: float) -> None:
    retry = RetryPolicy(jitter=0.1)
    decision = retry.decide(1, Outcome.response(503), idempotent=True, rand=rand)
    assert 4.5 <= decision.pause <= 5.5
    backoff = BackoffPolicy()
    low, high = backoff.bounds(2)
    assert low <= backoff.delay(2, rand) <= high
    next_delay = backoff.next_delay(2, 0.0, rand)
    assert next_delay is not None
    assert low <= next_delay <= high


# -- numbers at and past the edges of float ------------------------------------------------------

#: An int too long for str() (Python's limit is 4,300 digits): repr of it raises ValueError.
HUGE = 10**5000


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (TokenBucket, "rate", HUGE),
        (TokenBucket, "burst", HUGE),
        (TokenBucket, "tokens", -HUGE),
        (TokenBucket, "updated_at", HUGE),
        (TokenBucket, "grace", HUGE),
        (TokenBucket, "max_misses", -HUGE),
        (RetryBudget, "ratio", HUGE),
        (RetryBudget, "min_retries_per_second", HUGE),
        (RetryBudget, "window", HUGE),
        (RetryBudget, "slots", HUGE),
        (BackoffPolicy, "first", HUGE),
        (BackoffPolicy, "factor", HUGE),
        (BackoffPolicy, "cap", HUGE),
        (BackoffPolicy, "jitter", HUGE),
        (BackoffPolicy, "floor", HUGE),
        (BackoffPolicy, "max_attempts", -HUGE),
        (BackoffPolicy, "deadline", HUGE),
        (RetryPolicy, "pauses", (5, HUGE)),
        (RetryPolicy, "pauses", HUGE),
        (RetryPolicy, "jitter", HUGE),
        (RetryPolicy, "rate_limit_floor", HUGE),
        (RetryPolicy, "retry_after_ceiling", HUGE),
        (RetryPolicy, "attempt_timeout", HUGE),
        (RetryPolicy, "deadline", HUGE),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "huge"),
)
def test_an_int_too_long_to_print_is_a_configuration_error(
    cls: Any, field: str, value: Any
) -> None:
    """The validator's own message repr'd the value, and repr raised ValueError: the refusal
    itself failed, untyped. The message now names the field and the int's size."""
    with pytest.raises(ConfigurationError, match=rf"{cls.__name__}\.{field} .*int of 16610 bits"):
        cls(**{field: value})


@pytest.mark.parametrize("field", ["interval", "timeout"])
def test_a_keepalive_duration_too_long_to_print_is_a_configuration_error(field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"Keepalive\.{field} .*int of 16610 bits"):
        _keepalive(**{field: HUGE})


def test_a_keepalive_param_too_long_to_write_is_a_configuration_error() -> None:
    """str() of it raised ValueError while the query parameters were read."""
    with pytest.raises(ConfigurationError, match=r"Keepalive\.params .*'v'.*int of 16610 bits"):
        _keepalive(params={"v": HUGE})


def test_scaled_by_an_int_too_long_to_print_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"scale factor .*int of 16610 bits"):
        RetryPolicy().scaled(HUGE)


class _Unprintable(float):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_value_whose_repr_fails_is_still_refused_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"TokenBucket\.rate .*got a _Unprintable"):
        TokenBucket(rate=_Unprintable("nan"))


def test_a_long_refused_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigurationError) as refused:
        RetryPolicy(pauses=[1.0] * 1000 + [-1.0])
    assert len(str(refused.value)) < 300
    assert "..." in str(refused.value)


#: Numbers at and past every edge, each list its own branch so that each comes up often: near
#: float's largest, near zero (subnormals), and the rest (NaN, the infinities, ints past
#: float's range and past str()'s, bools, negatives).
NEAR_TOP: list[Any] = [1e300, 1e307, 1e308, 1.5e308, 1.6e308, 1.7e308, 1.75e308]
NEAR_TOP += [sys.float_info.max, 10**308, 2**1023]
NEAR_ZERO: list[Any] = [5e-324, 1e-320, 1e-300, 1e-290, 1e-270, 1e-13]
ODD: list[Any] = [True, False, 0, -0.0, -1.0, math.nan, math.inf, -math.inf, -1e308]
ODD += [-sys.float_info.max, 2**1024, 10**400, -(10**400), HUGE]
EDGES = st.one_of(
    st.sampled_from(NEAR_TOP),
    st.sampled_from(NEAR_ZERO),
    st.sampled_from(ODD),
    st.floats(),
    st.integers(-(2**1100), 2**1100),
)


def _edges(*fields: str) -> st.SearchStrategy[dict[str, Any]]:
    """One or two of ``fields`` at an edge; the others keep their defaults."""
    return st.dictionaries(st.sampled_from(fields), EDGES, min_size=1, max_size=2)


#: A clock reading, anywhere a float can be.
ANY_TIME = st.floats(allow_nan=False, allow_infinity=False)


def _built(factory: Any, **kwargs: Any) -> Any:
    """The policy, or None when it is refused, as it must be, with a ConfigurationError."""
    try:
        policy = factory(**kwargs)
    except ConfigurationError:
        event("refused")
        return None
    event("accepted")
    return policy


def _retry_policy(**edges: Any) -> RetryPolicy:
    """A retry policy, jittered (a pause is multiplied only with jitter on), whose second pause
    is ``pauses`` when given."""
    if "pauses" in edges:
        edges["pauses"] = (5.0, edges["pauses"])
    return RetryPolicy(**({"jitter": 0.2} | edges))


# Each property test below checks only the policies it could build: an edge of each that is
# accepted runs every time, as an explicit example (test_each_explicit_example_is_accepted
# proves that it is), so that a test refusing every drawn example still checks something.
BUCKET_EDGE = {"rate": sys.float_info.max, "tokens": 5e-324}
BUDGET_EDGE = {"ratio": 5e-324, "window": sys.float_info.max}
BACKOFF_EDGE = {"first": 5e-324, "factor": sys.float_info.max}
RETRY_EDGE = {"pauses": 1e300, "retry_after_ceiling": sys.float_info.max}
KEEPALIVE_EDGE = {"interval": sys.float_info.max, "timeout": 5e-324}


@settings(max_examples=300, deadline=None)
@given(_edges("rate", "burst", "tokens", "updated_at", "grace"), ANY_TIME)
@example(BUCKET_EDGE, 1e12)
def test_a_bucket_is_refused_or_every_wait_it_gives_is_finite(
    edges: dict[str, Any], now: float
) -> None:
    bucket = _built(TokenBucket, **edges)
    if bucket is None:
        return
    # Two readings of absurd, opposite signs have no finite difference: no clock gives them.
    assume(bucket.updated_at is None or math.isfinite(bucket.updated_at - now))
    # The deepest queue reserve() can make (a float stops counting there), and the state given.
    for start in (bucket, attrs.evolve(bucket, tokens=-MAX_QUEUE, updated_at=now)):
        for _ in range(3):
            reservation = start.reserve(now)
            assert math.isfinite(reservation.wait)
            assert math.isfinite(now + reservation.wait)  # the pacer's slot
            start = reservation.bucket


@settings(max_examples=300, deadline=None)
@given(_edges("ratio", "min_retries_per_second", "window", "slots"), st.floats(-1e12, 1e12))
@example(BUDGET_EDGE, 1e12)
def test_a_budget_is_refused_or_its_floor_and_allowance_are_finite(
    edges: dict[str, Any], now: float
) -> None:
    budget = _built(RetryBudget, **edges)
    if budget is None:
        return
    assert math.isfinite(budget.floor)
    state = budget.record_request(budget.empty(), now, count=1000)
    assert math.isfinite(budget.allowance(state.total_requests))
    assert math.isfinite(budget.available(state, now))


@settings(max_examples=300, deadline=None)
@given(
    _edges("first", "factor", "cap", "jitter", "floor", "deadline"),
    st.integers(1, 3000),
    st.floats(0, 1),
)
@example(BACKOFF_EDGE, 1, 0.5)
def test_a_backoff_is_refused_or_every_delay_is_finite(
    edges: dict[str, Any], attempt: int, rand: float
) -> None:
    policy = _built(BackoffPolicy, **edges)
    if policy is None:
        return
    for n in (attempt, 3000):  # 3000: past any cap, for a first of at least 5e-324
        assert all(math.isfinite(d) for d in policy.bounds(n))
        for draw in (rand, 1.0):
            assert math.isfinite(policy.delay(n, draw))
            delay = policy.next_delay(n, 0.0, draw)
            assert delay is None or math.isfinite(delay)


@settings(max_examples=300, deadline=None)
@given(
    _edges(
        "pauses", "jitter", "rate_limit_floor", "retry_after_ceiling", "attempt_timeout", "deadline"
    ),
    st.floats(0, 1),
)
@example(RETRY_EDGE, 0.5)
def test_a_retry_policy_is_refused_or_every_pause_is_finite(
    edges: dict[str, Any], rand: float
) -> None:
    policy = _built(_retry_policy, **edges)
    if policy is None:
        return
    for attempt in range(1, policy.max_attempts):
        for outcome in (Outcome.response(503), Outcome.response(429, retry_after=1e308)):
            for draw in (rand, 1.0):
                decision = policy.decide(attempt, outcome, idempotent=True, rand=draw)
                assert math.isfinite(decision.pause)


@settings(max_examples=300, deadline=None)
@given(_edges("interval", "timeout"), st.floats(-1e12, 1e12))
@example(KEEPALIVE_EDGE, 1e12)
def test_a_keepalive_is_refused_or_every_time_it_names_is_finite(
    edges: dict[str, Any], now: float
) -> None:
    keepalive = _built(_keepalive, **edges)
    if keepalive is None:
        return
    for decision in (
        keepalive.decide(now, last_activity=now - 1.0),
        keepalive.decide(now, last_activity=now - 1.0, probe_sent_at=now),
    ):
        assert math.isfinite(decision.at)


@pytest.mark.parametrize(
    ("factory", "edges"),
    [
        (TokenBucket, BUCKET_EDGE),
        (RetryBudget, BUDGET_EDGE),
        (BackoffPolicy, BACKOFF_EDGE),
        (_retry_policy, RETRY_EDGE),
        (_keepalive, KEEPALIVE_EDGE),
    ],
    ids=["bucket", "budget", "backoff", "retry", "keepalive"],
)
def test_each_explicit_example_is_accepted(factory: Any, edges: dict[str, Any]) -> None:
    """The property tests' explicit examples are policies they check, not refusals."""
    assert factory(**edges) is not None
