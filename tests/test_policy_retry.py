"""RetryPolicy and Classifier: the guide's request schedule, proved as pure decisions.

Each property drives :meth:`RetryPolicy.decide` the way the middleware does (attempt after
attempt until it stops) over hypothesis-generated outcomes, with no I/O and no clock.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport.errors import ConfigurationError
from le_transport.policies import (
    GUIDE_5XX_PAUSES,
    Action,
    Classifier,
    Decision,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    Verdict,
)

FAILURE_KINDS = [k for k in OutcomeKind if k is not OutcomeKind.RESPONSE]

statuses = st.integers(min_value=100, max_value=599)
failures = st.builds(
    Outcome.failure, st.sampled_from(FAILURE_KINDS), st.sampled_from(["OSError", "Reset"])
)
outcomes = st.one_of(st.builds(Outcome.response, statuses), failures)
retry_afters = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6))


@attrs.frozen
class Run:
    """What a policy did over a sequence of outcomes: the decisions and the pauses taken."""

    decisions: tuple[Decision, ...]

    @property
    def attempts(self) -> int:
        return len(self.decisions)

    @property
    def pauses(self) -> tuple[float, ...]:
        return tuple(d.pause for d in self.decisions if d.action is Action.RETRY)

    @property
    def last(self) -> Decision:
        return self.decisions[-1]


def drive(
    policy: RetryPolicy,
    outcomes: list[Outcome],
    *,
    idempotent: bool = True,
    rands: list[float] | None = None,
) -> Run:
    """Ask ``policy`` after each outcome, as the middleware does, until it stops retrying.

    When the outcomes run out the server answers 200.
    """
    decisions: list[Decision] = []
    elapsed = 0.0
    attempt = 0
    while True:
        attempt += 1
        outcome = outcomes[attempt - 1] if attempt <= len(outcomes) else Outcome.response(200)
        rand = rands[(attempt - 1) % len(rands)] if rands else 0.5
        decision = policy.decide(
            attempt, outcome, idempotent=idempotent, elapsed=elapsed, rand=rand
        )
        decisions.append(decision)
        if decision.action is not Action.RETRY:
            return Run(tuple(decisions))
        elapsed += decision.pause


# -- the guide's schedule ------------------------------------------------------------------


@given(st.lists(outcomes, max_size=8), st.booleans())
def test_pauses_are_always_a_prefix_of_5_10_15(seq: list[Outcome], idempotent: bool) -> None:
    """Invariant: under the defaults, the pauses taken are exactly a prefix of (5, 10, 15)
    (no Retry-After in play; 429s pause at least 1 s, which the schedule already exceeds)."""
    run = drive(RetryPolicy(), seq, idempotent=idempotent)
    assert run.pauses == GUIDE_5XX_PAUSES[: len(run.pauses)]


@given(st.lists(outcomes, max_size=8), st.booleans())
def test_at_most_four_attempts_are_ever_made(seq: list[Outcome], idempotent: bool) -> None:
    """Invariant: the default schedule makes at most 1 + 3 attempts, whatever happens."""
    run = drive(RetryPolicy(), seq, idempotent=idempotent)
    assert 1 <= run.attempts <= 4
    if run.attempts == 4:
        assert run.last.action in (Action.SUCCEED, Action.FAIL, Action.GIVE_UP)


@given(st.integers(400, 499).filter(lambda s: s != 429), st.lists(outcomes, max_size=4))
def test_a_4xx_yields_exactly_one_attempt(status: int, rest: list[Outcome]) -> None:
    """Invariant: a 4xx other than 429 fails at once: one attempt, no pause, for any method."""
    for idempotent in (True, False):
        run = drive(RetryPolicy(), [Outcome.response(status), *rest], idempotent=idempotent)
        assert run.attempts == 1
        assert run.last.action is Action.FAIL
        assert run.pauses == ()


@given(st.integers(200, 399), st.lists(outcomes, max_size=4), st.booleans())
def test_a_success_stops_at_once(status: int, rest: list[Outcome], idempotent: bool) -> None:
    """Invariant: a 2xx/3xx answer ends the call on that attempt."""
    run = drive(RetryPolicy(), [Outcome.response(status), *rest], idempotent=idempotent)
    assert run.attempts == 1
    assert run.last.action is Action.SUCCEED


@given(st.lists(st.integers(500, 599), min_size=4, max_size=8))
def test_5xx_retried_three_times_after_5_10_15_seconds_then_gives_up(codes: list[int]) -> None:
    """Invariant: four 5xx in a row on an idempotent request: pauses 5, 10, 15, then give up."""
    run = drive(RetryPolicy(), [Outcome.response(c) for c in codes])
    assert run.pauses == (5.0, 10.0, 15.0)
    assert run.attempts == 4
    assert run.last.action is Action.GIVE_UP


def test_451_is_final() -> None:
    decision = RetryPolicy().decide(1, Outcome.response(451), idempotent=True)
    assert decision.action is Action.FAIL


@given(
    st.sampled_from([Outcome.response(503), Outcome.response(500)])
    | st.builds(
        Outcome.failure,
        st.sampled_from([OutcomeKind.CONNECTION_LOST, OutcomeKind.TIMEOUT]),
        st.just("E"),
    )
)
def test_a_post_that_may_have_reached_the_server_is_not_retried(outcome: Outcome) -> None:
    """Invariant: a non-idempotent request is not repeated after a 5xx, a reset or a timeout."""
    decision = RetryPolicy().decide(1, outcome, idempotent=False)
    assert decision.action is Action.FAIL
    assert "not idempotent" in decision.reason


@pytest.mark.parametrize(
    "outcome",
    [Outcome.failure(OutcomeKind.CONNECT_FAILED, "ClientConnectorError"), Outcome.response(429)],
    ids=["connect-failed", "429"],
)
def test_a_post_is_retried_when_the_server_cannot_have_acted(outcome: Outcome) -> None:
    decision = RetryPolicy().decide(1, outcome, idempotent=False)
    assert decision.action is Action.RETRY


def test_tls_rejection_is_never_retried() -> None:
    outcome = Outcome.failure(OutcomeKind.TLS_REJECTED, "ClientConnectorCertificateError")
    assert RetryPolicy().decide(1, outcome, idempotent=True).action is Action.FAIL


# -- 429 floor and Retry-After -------------------------------------------------------------


@given(st.integers(1, 3), st.floats(0, 1), st.floats(0.001, 0.9))
def test_429_never_pauses_under_its_floor(attempt: int, rand: float, scale: float) -> None:
    """Invariant: a 429 pause is never shorter than ``rate_limit_floor``, however scaled."""
    for floor in (1.0, 5.0):
        policy = RetryPolicy(pauses=(scale, scale, scale), jitter=0.5, rate_limit_floor=floor)
        pause = policy.pause_for(attempt, Outcome.response(429), rand)
        assert pause >= floor


@given(
    st.integers(1, 3),
    st.sampled_from([429, 500, 502, 503, 504]),
    st.floats(0, 1e6),
    st.floats(0, 120),
    st.floats(0, 0.99),
    st.floats(0, 1),
)
def test_retry_after_never_shortens_a_pause_and_never_passes_the_ceiling(
    attempt: int, status: int, retry_after: float, ceiling: float, jitter: float, rand: float
) -> None:
    """Invariant: with Retry-After the pause is never shorter than without it nor than the
    (capped) ask, and Retry-After alone never pushes it past the ceiling by more than the
    jitter's share: the pause is the scheduled one, or the capped ask spread by the jitter."""
    policy = RetryPolicy(retry_after_ceiling=ceiling, jitter=jitter)
    without = policy.pause_for(attempt, Outcome.response(status), rand)
    with_ra = policy.pause_for(attempt, Outcome.response(status, retry_after), rand)
    asked = min(retry_after, ceiling)
    assert with_ra >= without
    assert with_ra >= asked
    assert with_ra <= max(without, ceiling * (1 + jitter))
    if asked > without:
        assert with_ra == asked * (1 + jitter * rand)
    else:
        assert with_ra == without


def test_clients_refused_with_one_retry_after_come_back_spread_when_jitter_is_on() -> None:
    """Without the spread, every client told "Retry-After: 30" retried at the same instant,
    whatever its jitter: the herd the server asked to be spared."""
    jittered = RetryPolicy(jitter=0.2)
    outcome = Outcome.response(503, retry_after=30.0)
    pauses = {jittered.pause_for(1, outcome, rand) for rand in (0.0, 0.25, 0.5, 0.75, 0.99)}
    assert len(pauses) == 5
    assert min(pauses) == 30.0
    assert max(pauses) <= 36.0
    # Jitter off (the default, the guide's exact schedule): exactly what the server asked.
    assert RetryPolicy().pause_for(1, outcome, 0.9) == 30.0


def test_retry_after_longer_than_the_schedule_lengthens_the_pause() -> None:
    policy = RetryPolicy()
    assert policy.pause_for(1, Outcome.response(503, retry_after=42.0)) == 42.0
    assert policy.pause_for(1, Outcome.response(503, retry_after=600.0)) == 60.0
    assert policy.pause_for(3, Outcome.response(503, retry_after=2.0)) == 15.0


# -- jitter, deadline, configurability ----------------------------------------------------


@given(
    st.lists(st.floats(0, 1e4), min_size=1, max_size=6),
    st.floats(0, 0.99),
    st.floats(0, 1),
    st.data(),
)
def test_jittered_pause_stays_within_its_bounds(
    pauses: list[float], jitter: float, rand: float, data: st.DataObject
) -> None:
    """Invariant: a jittered 5xx pause lies within ``pause * (1 ± jitter)``."""
    policy = RetryPolicy(pauses=pauses, jitter=jitter)
    attempt = data.draw(st.integers(1, len(pauses)))
    base = pauses[attempt - 1]
    pause = policy.pause_for(attempt, Outcome.response(503), rand)
    assert base * (1 - jitter) - 1e-9 <= pause <= base * (1 + jitter) + 1e-9


def test_jitter_is_off_by_default() -> None:
    policy = RetryPolicy()
    assert policy.jitter == 0
    assert {policy.pause_for(1, Outcome.response(503), r) for r in (0.0, 0.3, 0.99)} == {5.0}


@given(st.lists(st.floats(0, 100), max_size=10), st.lists(outcomes, max_size=12))
def test_pauses_of_any_length_are_followed_exactly(pauses: list[float], seq: list[Outcome]) -> None:
    """Invariant: for any configured pauses, a run's pauses are a prefix of them and at most
    ``len(pauses) + 1`` attempts are made."""
    policy = RetryPolicy(pauses=pauses)
    run = drive(policy, [o for o in seq if o.status != 429])
    assert run.pauses == tuple(pauses[: len(run.pauses)])
    assert run.attempts <= len(pauses) + 1


def test_scaled_schedule_works() -> None:
    run = drive(RetryPolicy(pauses=(0.05, 0.1, 0.15)), [Outcome.response(503)] * 4)
    assert run.pauses == (0.05, 0.1, 0.15)
    assert RetryPolicy().scaled(0.01).pauses == (0.05, 0.1, 0.15)


@given(st.floats(0.1, 100), st.lists(st.integers(500, 599), min_size=4, max_size=4))
def test_deadline_gives_up_before_a_pause_that_would_pass_it(
    deadline: float, codes: list[int]
) -> None:
    """Invariant: with a deadline, the pauses taken add up to less than the deadline."""
    run = drive(RetryPolicy(deadline=deadline), [Outcome.response(c) for c in codes])
    assert sum(run.pauses) < deadline
    assert run.last.action is Action.GIVE_UP


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pauses": (-1.0,)},
        {"pauses": (float("inf"),)},
        {"pauses": "5"},
        {"pauses": 5},
        {"pauses": (True,)},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"rate_limit_floor": -1},
        {"attempt_timeout": 0},
        {"deadline": float("nan")},
    ],
)
def test_invalid_retry_policy_is_refused_naming_the_field(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pauses", [(10**400,), (5, 10**309), (2**1024,)])
def test_a_pause_too_large_for_a_float_is_a_configuration_error(pauses: tuple[int, ...]) -> None:
    """10**400 < inf is True, so the check let it through and float() of it raised
    OverflowError: an untyped error, not a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.pauses must hold finite"):
        RetryPolicy(pauses=pauses)


def test_a_pause_whose_jitter_passes_float_range_is_refused() -> None:
    """RetryPolicy(pauses=(1.7e308,), jitter=0.2) was taken, and a draw near 1 made the pause
    1.7e308 * 1.2: infinity, which the middleware would sleep."""
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.pauses with jitter"):
        RetryPolicy(pauses=(5.0, 1.7e308), jitter=0.2)
    # Without jitter a pause is never multiplied: the same schedule is valid.
    policy = RetryPolicy(pauses=(5.0, 1.7e308))
    assert policy.pause_for(2, Outcome.response(503), rand=1.0) == 1.7e308
    assert RetryPolicy(pauses=(5.0, 1.4e308), jitter=0.2).pause_for(
        2, Outcome.response(503), rand=1.0
    ) == pytest.approx(1.68e308)


def test_pause_for_an_attempt_outside_the_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="attempt 4"):
        RetryPolicy().pause_for(4, Outcome.response(503))
    with pytest.raises(ValueError, match="attempt 0"):
        RetryPolicy().pause_for(0, Outcome.response(503))


# -- classification ------------------------------------------------------------------------


@given(statuses)
def test_classifier_default_verdicts(status: int) -> None:
    """Invariant: 5xx, 429 and a final 1xx retry; 451 and other 4xx fail; 2xx/3xx succeed."""
    verdict = Classifier().classify(Outcome.response(status))
    if status == 451:
        assert verdict is Verdict.FAIL
    elif status == 429 or status >= 500 or status < 200:
        assert verdict is Verdict.RETRY
    elif status >= 400:
        assert verdict is Verdict.FAIL
    else:
        assert verdict is Verdict.SUCCESS


def test_classifier_is_replaceable() -> None:
    classifier = Classifier(retry_statuses={429, 409}, final_statuses={451, 501})
    policy = RetryPolicy(classifier=classifier)
    assert policy.decide(1, Outcome.response(409), idempotent=True).action is Action.RETRY
    assert policy.decide(1, Outcome.response(501), idempotent=True).action is Action.FAIL


def test_readme_decision_example_holds() -> None:
    decision = RetryPolicy().decide(1, Outcome.response(503), idempotent=True)
    assert decision == Decision(action=Action.RETRY, pause=5.0, reason="503 is retryable")


def test_a_failure_outcome_cannot_be_a_response() -> None:
    with pytest.raises(ValueError, match="RESPONSE"):
        Outcome.failure(OutcomeKind.RESPONSE, "x")
