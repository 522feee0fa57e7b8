"""Small defects: backoff attempt numbers and factors near 1, error attributes' docs, the app
key's refusal of a bearer, read-only state event details, and the demo with no stdout."""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- BackoffPolicy: a factor a hair above 1 ------------------------------------------------------


class _CountingFactor(float):
    """A factor that counts the delays multiplied by it (``delay * factor`` asks the subclass
    first) and refuses to be multiplied more than ``limit`` times: a base delay's cost."""

    limit = 1_000
    used = 0

    def __rmul__(self, other: object) -> float:
        type(self).used += 1
        if type(self).used > self.limit:
            raise AssertionError(f"more than {self.limit} multiplications for one base delay")
        return float(self) * float(other)  # type: ignore[arg-type]


def _stepped(policy: BackoffPolicy, attempt: int) -> float:
    """The base delay multiplied step by step, as it always was (the reference)."""
    delay = max(policy.first, policy.floor)
    for _ in range(attempt - 1):
        grown = delay * policy.factor
        delay = grown if grown > delay else math.nextafter(delay, math.inf)
        if delay >= policy.cap:
            return policy.cap
    return min(delay, policy.cap)


@pytest.mark.parametrize("factor", [1.0000001, 1 + 1e-12, 1 + 2**-52])
@pytest.mark.parametrize("attempt", [10**6, 10**9, 10**18, 10**40])
def test_a_factor_a_hair_above_1_gives_a_base_delay_in_a_bounded_number_of_steps(
    factor: float, attempt: int
) -> None:
    # Step by step, 1.0000001 took ~2 * 10**7 multiplications from 120 s to the 960 s cap,
    # and 1 + 2**-52 about 10**16: a recovery loop asking for its next delay hung.
    _CountingFactor.used = 0
    policy = BackoffPolicy(factor=_CountingFactor(factor), jitter=0)
    delay = policy.base_delay(attempt)
    assert 120.0 <= delay <= 960.0
    assert _CountingFactor.used <= 100
    assert policy.next_delay(attempt, 0.0) == delay


def test_a_factor_a_hair_above_1_reaches_the_cap_where_the_formula_says() -> None:
    policy = BackoffPolicy(factor=1.0000001, jitter=0)
    steps = math.log(960 / 120) / math.log(1.0000001)  # ~2.08 * 10**7
    below, past = policy.base_delay(int(steps * 0.999)), policy.base_delay(int(steps * 1.001))
    assert below == pytest.approx(120 * 1.0000001 ** int(steps * 0.999 - 1), rel=1e-9)
    assert below < 960.0
    assert past == 960.0


@pytest.mark.parametrize("first", [0.001, 1.0, 15.0, 120.0, 5e-324, 1e-310])
@pytest.mark.parametrize("factor", [1.01, 1.2, 1.5, 2.0, 3.0, 10.0])
def test_the_base_delays_of_the_first_attempts_are_the_step_by_step_products(
    first: float, factor: float
) -> None:
    policy = BackoffPolicy(first=first, factor=factor, cap=1e6, jitter=0, floor=0)
    for attempt in range(1, 66):
        assert policy.base_delay(attempt) == _stepped(policy, attempt)
    for attempt in range(66, 3000, 7):
        assert policy.base_delay(attempt) == pytest.approx(_stepped(policy, attempt), rel=1e-12)


_NEAR_ONE = st.one_of(
    st.integers(1, 2**20).map(lambda m: 1 + m * 2**-52),
    st.floats(1 + 2**-40, 1.001),
    st.floats(1.001, 1e3),
)


@settings(max_examples=400, deadline=None)
@given(
    first=st.floats(min_value=5e-324, max_value=1e6),
    factor=_NEAR_ONE,
    cap=st.floats(min_value=1e-300, max_value=1e300),
    floor=st.floats(min_value=0.0, max_value=1e6),
    attempt=st.one_of(st.integers(1, 200), st.integers(1, 10**40)),
    later=st.one_of(st.integers(1, 3), st.integers(1, 10**40)),
)
def test_base_delays_stay_finite_capped_and_monotone_for_any_factor_and_attempt(
    first: float, factor: float, cap: float, floor: float, attempt: int, later: int
) -> None:
    try:
        policy = BackoffPolicy(first=first, factor=factor, cap=cap, jitter=0.2, floor=floor)
    except ConfigurationError:
        return
    now, then = policy.base_delay(attempt), policy.base_delay(attempt + later)
    assert math.isfinite(now)
    assert 0.0 < now <= policy.cap
    assert now <= then <= policy.cap
    if factor >= 1 + 2**-51:  # grows by more than float's rounding at every attempt
        following = policy.base_delay(attempt + 1)
        assert now < following or now == following == policy.cap
    low, high = policy.bounds(attempt)
    assert math.isfinite(high)
    assert low <= policy.delay(attempt, 0.0) <= policy.delay(attempt, 0.999) <= high
