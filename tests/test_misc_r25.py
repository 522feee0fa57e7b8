"""Small defects: backoff attempt numbers and factors near 1, error attributes' docs, the app
key's refusal of a bearer, read-only state event details, and the demo with no stdout."""

from __future__ import annotations

import copy
import io
import json
import pickle
import sys
from collections.abc import Callable
from typing import Any

import pytest

from le_transport import Secret, demo
from le_transport.errors import ConfigurationError, RecoveryFailed, RetryBudgetExhausted
from le_transport.events import StateEvent, emit
from le_transport.policies import Action, BackoffPolicy, Outcome, RetryPolicy
from le_transport.providers import AppKeyAuth

# -- what ``last`` holds -----------------------------------------------------------------------


def test_retry_budget_exhausted_says_its_last_is_the_error_not_an_outcome() -> None:
    doc = RetryBudgetExhausted.__doc__ or ""
    assert "``last`` is the outcome" not in doc
    assert "RequestError" in doc
    assert "__cause__" in doc


def test_recovery_failed_says_what_its_last_may_be() -> None:
    doc = RecoveryFailed.__doc__ or ""
    assert "re-login" in doc
    assert "None" in doc


# -- AppKeyAuth: a bearer given as the app key ---------------------------------------------------


@pytest.mark.parametrize("key", ["Bearer zqx", "bearer zqx", Secret("Bearer zqx")])
def test_app_key_that_is_a_bearer_is_refused_naming_app_key_auth_not_static_bearer(
    key: Any,
) -> None:
    with pytest.raises(ConfigurationError, match=r"AppKeyAuth\.app_key") as info:
        AppKeyAuth("123", key)
    message = str(info.value)
    assert "zqx" not in message
    assert "StaticBearer writes" not in message  # AppKeyAuth writes its own header
    assert "LivePerson appKey=<key>" in message
    assert "bearer" in message.lower()


# -- attempt numbers: any integer type -----------------------------------------------------------


class _Index:
    """An integer type that is no int subclass (as numpy.int64): it has ``__index__``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class _BadIndex:
    def __index__(self) -> int:
        raise ValueError("no")


def test_backoff_takes_an_attempt_of_any_integer_type() -> None:
    policy = BackoffPolicy(jitter=0)
    assert policy.base_delay(_Index(2)) == 240.0  # type: ignore[arg-type]
    assert policy.delay(_Index(3)) == 480.0  # type: ignore[arg-type]
    assert policy.bounds(_Index(1)) == (120.0, 120.0)  # type: ignore[arg-type]
    assert policy.next_delay(_Index(2), 0.0) == 240.0  # type: ignore[arg-type]
    limited = BackoffPolicy(jitter=0, max_attempts=2)
    assert limited.next_delay(_Index(3), 0.0) is None  # type: ignore[arg-type]


def test_the_request_schedule_takes_an_attempt_of_any_integer_type() -> None:
    policy = RetryPolicy(jitter=0)
    outcome = Outcome.response(503)
    assert policy.pause_for(_Index(2), outcome) == 10.0  # type: ignore[arg-type]
    decision = policy.decide(_Index(1), outcome, idempotent=True)  # type: ignore[arg-type]
    assert decision.action is Action.RETRY
    assert decision.pause == 5.0
    last = policy.decide(_Index(4), outcome, idempotent=True)  # type: ignore[arg-type]
    assert last.action is Action.GIVE_UP
    assert "after 4 attempts" in last.reason


@pytest.mark.parametrize("attempt", [True, 2.0, "2", None, _BadIndex()])
@pytest.mark.parametrize(
    "call",
    [
        lambda a: BackoffPolicy().base_delay(a),
        lambda a: BackoffPolicy().delay(a),
        lambda a: BackoffPolicy().bounds(a),
        lambda a: BackoffPolicy(max_attempts=1).next_delay(a, 0.0),
        lambda a: RetryPolicy().pause_for(a, Outcome.response(503)),
        lambda a: RetryPolicy().decide(a, Outcome.response(503), idempotent=True),
    ],
)
def test_an_attempt_that_is_no_integer_is_still_refused_typed(
    call: Callable[[object], object], attempt: object
) -> None:
    with pytest.raises(ConfigurationError, match="attempt must be an int") as info:
        call(attempt)
    assert type(attempt).__name__ in str(info.value)


# -- StateEvent: details no hook can change -----------------------------------------------------


def test_a_hook_cannot_change_the_details_the_next_hook_sees() -> None:
    seen: list[dict[str, Any]] = []

    def meddler(event: StateEvent) -> None:
        event.details["attempt"] = 99  # type: ignore[index]

    def clearer(event: StateEvent) -> None:
        event.details.clear()  # type: ignore[attr-defined]

    given = {"attempt": 1, "pause": 2.5}
    event = StateEvent("relogin_scheduled", "svc", given)
    emit([meddler, clearer, lambda e: seen.append(dict(e.details))], event)
    assert seen == [{"attempt": 1, "pause": 2.5}]
    given["attempt"] = 7  # nor can the dict it was made from, changed afterwards
    assert event.details == {"attempt": 1, "pause": 2.5}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.__setitem__("a", 2),
        lambda d: d.__delitem__("a"),
        lambda d: d.update(a=2),
        lambda d: d.pop("a"),
        lambda d: d.popitem(),
        lambda d: d.setdefault("b", 1),
        lambda d: d.clear(),
        lambda d: d.__ior__({"a": 2}),
    ],
)
def test_every_way_to_change_the_details_is_refused(change: Callable[[Any], object]) -> None:
    event = StateEvent("open", "socket", {"a": 1})
    with pytest.raises(TypeError, match="read-only"):
        change(event.details)
    assert event.details == {"a": 1}


def test_a_state_event_hashes_equal_events_alike_even_with_unhashable_details() -> None:
    one = StateEvent("lost", "socket", {"codes": [1006], "reason": "x"})
    two = StateEvent("lost", "socket", {"codes": [1006], "reason": "x"})
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two, StateEvent("lost", "socket")}) == 2
    assert one != StateEvent("lost", "socket", {"codes": [1006], "reason": "y"})


def test_state_event_details_still_read_as_a_dict_and_survive_copy_and_pickle() -> None:
    event = StateEvent("open", "socket", {"attempt": 2, "url": "wss://x"})
    assert isinstance(event.details, dict)
    assert json.loads(json.dumps(event.details)) == {"attempt": 2, "url": "wss://x"}
    assert event.details.get("attempt") == 2
    assert (
        repr(event)
        == "StateEvent(name='open', subject='socket', details={'attempt': 2, 'url': 'wss://x'})"
    )
    for again in (copy.copy(event), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
        assert again == event
        with pytest.raises(TypeError, match="read-only"):
            again.details["attempt"] = 3  # type: ignore[index]
    assert StateEvent("x", "y").details == {}


@pytest.mark.parametrize("details", [None, 3, "ab", [1, 2]])
def test_state_event_details_that_are_no_mapping_are_refused_typed(details: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"StateEvent\.details must be a mapping"):
        StateEvent("x", "y", details)


# -- run_demo with no standard output -----------------------------------------------------------


@pytest.mark.parametrize("stderr", [io.StringIO(), None])
def test_run_demo_with_no_stdout_says_so_and_returns_1_without_running(
    monkeypatch: pytest.MonkeyPatch, stderr: io.StringIO | None
) -> None:
    def never(**kwargs: object) -> object:
        raise AssertionError("the demo ran with nowhere to write its timeline")

    monkeypatch.setattr(demo, "_main", never)
    monkeypatch.setattr(sys, "stdout", None)  # pythonw, or a closed stdout
    monkeypatch.setattr(sys, "stderr", stderr)
    assert demo.run_demo(time_scale=0.01, seed=1) == 1
    if stderr is not None:
        assert stderr.getvalue() == (
            "le-transport demo: no standard output to write the timeline to (it is closed)\n"
        )
