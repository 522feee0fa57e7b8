"""Bad input to the policies' constructors: every wrong value is a ConfigurationError naming
its field, raised at construction (never an untyped error, never a value accepted and
misread later)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

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
