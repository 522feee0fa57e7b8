"""The circuit breaker as a pure state machine: examples, and its rules proved statefully."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from le_transport.errors import ConfigurationError
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
)


def _trip(breaker: CircuitBreaker, status: BreakerStatus, now: float) -> BreakerStatus:
    for _ in range(breaker.minimum_throughput):
        status = breaker.admit(status, now).status
        status = breaker.record(status, now, failed=True)
    return status


def test_only_5xx_429_and_transport_failures_count_never_other_4xx() -> None:
    counts = CircuitBreaker.counts_as_failure
    assert counts(Outcome.response(503))
    assert counts(Outcome.response(500))
    assert counts(Outcome.response(429))
    assert counts(Outcome.failure(OutcomeKind.CONNECTION_LOST, "ServerDisconnectedError"))
    assert counts(Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout"))
    assert counts(Outcome.failure(OutcomeKind.CONNECT_FAILED, "ClientConnectorError"))
    # A refused certificate: final and the caller's, not the service's failure.
    assert not counts(Outcome.failure(OutcomeKind.TLS_REJECTED, "ClientConnectorCertificateError"))
    assert not counts(Outcome.response(404))
    assert not counts(Outcome.response(401))
    assert not counts(Outcome.response(451))
    assert not counts(Outcome.response(200))


def test_opens_at_three_failures_in_four_over_twenty_attempts_and_not_before() -> None:
    breaker = CircuitBreaker()
    status = breaker.closed()
    for i in range(19):
        status = breaker.record(status, 0.0, failed=i % 4 != 0)
    assert breaker.state_at(status, 0.0) is BreakerState.CLOSED
    status = breaker.record(status, 0.0, failed=True)
    assert breaker.state_at(status, 0.0) is BreakerState.OPEN


def test_half_the_attempts_failing_is_the_budgets_not_the_breakers() -> None:
    breaker = CircuitBreaker()
    status = breaker.closed()
    for i in range(100):
        status = breaker.record(status, 0.0, failed=i % 2 == 0)
    assert breaker.state_at(status, 0.0) is BreakerState.CLOSED


def test_open_breaker_refuses_until_its_break_ends_then_lets_one_probe() -> None:
    breaker = CircuitBreaker(breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0))
    status = _trip(breaker, breaker.closed(), 100.0)
    refused = breaker.admit(status, 104.9)
    assert not refused.allowed
    assert refused.retry_at == 105.0
    probe = breaker.admit(status, 105.0)
    assert probe.allowed
    assert probe.probe
    second = breaker.admit(probe.status, 105.1)
    assert not second.allowed


def test_failed_probe_reopens_for_a_longer_break_and_a_success_closes() -> None:
    breaker = CircuitBreaker(breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0))
    status = _trip(breaker, breaker.closed(), 0.0)
    probe = breaker.admit(status, 5.0)
    status = breaker.record(probe.status, 5.5, failed=True, probe=True)
    assert status.open_until == 15.5
    probe = breaker.admit(status, 15.5)
    status = breaker.record(probe.status, 15.6, failed=True, probe=True)
    assert status.open_until == pytest.approx(35.6)
    probe = breaker.admit(status, 36.0)
    status = breaker.record(probe.status, 36.1, failed=False, probe=True)
    assert breaker.state_at(status, 36.1) is BreakerState.CLOSED
    assert status.opens == 0


@pytest.mark.parametrize("failed", [True, False], ids=["failure", "success"])
def test_an_attempt_from_before_the_break_ending_in_half_open_decides_nothing(
    failed: bool,
) -> None:
    """A slow attempt admitted while closed that ends after the break: its outcome is not the
    probe's. It neither re-opens the breaker (a longer break while the probe is out, or with no
    probe at all) nor closes it (no probe sent); the probe's own answer still decides."""
    breaker = CircuitBreaker(breaks=BackoffPolicy(first=5.0, cap=60.0, jitter=0.0, floor=0.0))
    status = _trip(breaker, breaker.closed(), 0.0)
    # No probe sent yet: the break is over, the straggler ends.
    assert breaker.record(status, 5.2, failed=failed) == status
    probe = breaker.admit(status, 5.5)
    assert probe.probe
    after = breaker.record(probe.status, 6.0, failed=failed)
    assert after == probe.status, "the probe is still out, the break unchanged"
    assert breaker.record_successes(probe.status, 6.0, 3) == probe.status
    closed = breaker.record(after, 6.5, failed=False, probe=True)
    assert breaker.state_at(closed, 6.5) is BreakerState.CLOSED
    reopened = breaker.record(after, 6.5, failed=True, probe=True)
    assert (reopened.opens, reopened.open_until) == (2, 16.5)


@pytest.mark.parametrize("window", [1e-310, 5e-324, 1e-9])
def test_a_window_whose_slots_are_shorter_than_a_microsecond_is_refused(window: float) -> None:
    """Such a window made every slot index infinite: OverflowError at the first outcome."""
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.sampling_window"):
        CircuitBreaker(sampling_window=window)
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.sampling_window"):
        CircuitBreaker().scaled(1e-12)
    shortest = CircuitBreaker(sampling_window=1e-5, slots=10)
    status = shortest.record(shortest.closed(), 1e12, failed=True)
    assert sum(status.failures) == 1


def test_cancelled_probe_frees_the_half_open_slot() -> None:
    breaker = CircuitBreaker()
    status = _trip(breaker, breaker.closed(), 0.0)
    probe = breaker.admit(status, 200.0)
    status = breaker.release(probe.status, 200.5)
    assert breaker.admit(status, 200.5).probe


def test_lost_probe_frees_the_half_open_slot_after_its_lease() -> None:
    breaker = CircuitBreaker(probe_lease=10.0)
    status = _trip(breaker, breaker.closed(), 0.0)
    probe = breaker.admit(status, 200.0)
    assert not breaker.admit(probe.status, 209.0).allowed
    assert breaker.admit(probe.status, 210.0).probe


@pytest.mark.parametrize(
    ("field", "value"),
    [("failure_ratio", 0), ("failure_ratio", 1.5), ("minimum_throughput", 0), ("slots", 0)],
)
def test_invalid_breaker_is_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CircuitBreaker(**{field: value})  # type: ignore[arg-type]


class BreakerMachine(RuleBasedStateMachine):
    """An open breaker sends nothing until its break ends; half-open lets exactly one probe
    through; a success in half-open closes it; a failed probe re-opens it for a break no shorter
    than the last; it opens only at the failure ratio over the minimum throughput."""

    def __init__(self) -> None:
        super().__init__()
        self.breaker = CircuitBreaker(
            failure_ratio=0.5,
            minimum_throughput=4,
            sampling_window=10.0,
            slots=5,
            breaks=BackoffPolicy(first=2.0, factor=2.0, cap=16.0, jitter=0.2, floor=0.0),
            probe_lease=3.0,
        )
        self.status = self.breaker.closed()
        self.now = 0.0
        #: Attempts admitted and not yet ended: was each the probe.
        self.in_flight: list[bool] = []
        #: Outcomes recorded while closed, since the breaker last closed: (time, failed).
        self.closed_outcomes: list[tuple[float, bool]] = []

    @rule(dt=st.floats(min_value=0.0, max_value=6.0, allow_nan=False))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def attempt(self) -> None:
        before = self.breaker.state_at(self.status, self.now)
        probe_out = self.status.probe_until is not None and self.now < self.status.probe_until
        admission = self.breaker.admit(self.status, self.now)
        if before is BreakerState.OPEN:
            assert not admission.allowed, "an open breaker let an attempt through"
            assert admission.retry_at == self.status.open_until
            assert admission.retry_at is not None
            assert admission.retry_at > self.now
        if before is BreakerState.HALF_OPEN:
            assert admission.allowed != probe_out, "half-open must let exactly one probe"
            assert admission.probe == admission.allowed
        if before is BreakerState.CLOSED:
            assert admission.allowed
            assert not admission.probe
        self.status = admission.status
        if admission.allowed:
            self.in_flight.append(admission.probe)

    @rule(data=st.data(), failed=st.booleans(), rand=st.floats(0.0, 0.999))
    def attempt_ends(self, data: st.DataObject, failed: bool, rand: float) -> None:
        if not self.in_flight:
            return
        i = data.draw(st.integers(0, len(self.in_flight) - 1))
        was_probe = self.in_flight.pop(i)
        before = self.breaker.state_at(self.status, self.now)
        opens_before = self.status.opens
        old = self.status
        self.status = self.breaker.record(
            self.status, self.now, failed=failed, rand=rand, probe=was_probe
        )
        after = self.breaker.state_at(self.status, self.now)
        if before is BreakerState.CLOSED:
            self.closed_outcomes.append((self.now, failed))
            failures, total = self._closed_window_counts()
            trips = (
                failed
                and total >= self.breaker.minimum_throughput
                and failures >= self.breaker.failure_ratio * total
            )
            assert (after is BreakerState.OPEN) == trips, "opens exactly at ratio x throughput"
        if after is BreakerState.CLOSED and before is not BreakerState.CLOSED:
            self.closed_outcomes = []
        if before is BreakerState.HALF_OPEN and was_probe:
            assert after is (BreakerState.OPEN if failed else BreakerState.CLOSED)
        if before is not BreakerState.CLOSED and not was_probe:
            assert self.status == old, "out of closed, only the probe's answer decides"
        if after is BreakerState.OPEN and before is not BreakerState.OPEN:
            brk = self.status.open_until - self.now
            low, _ = self.breaker.breaks.bounds(self.status.opens)
            assert brk >= low - 1e-9
            if before is BreakerState.HALF_OPEN:
                assert self.status.opens == opens_before + 1
                base = self.breaker.breaks.base_delay(self.status.opens)
                assert base >= self.breaker.breaks.base_delay(max(1, opens_before))

    @rule()
    def attempt_cancelled(self) -> None:
        if self.in_flight and self.in_flight.pop():
            # The probe was cancelled (as the guard does: only then is the slot freed).
            self.status = self.breaker.release(self.status, self.now)

    @invariant()
    def closed_breaker_never_has_a_probe_out(self) -> None:
        if self.status.state is BreakerState.CLOSED:
            assert self.status.probe_until is None

    def _closed_window_counts(self) -> tuple[int, int]:
        b = self.breaker
        slot_len = b.sampling_window / b.slots
        start = ((self.now // slot_len) - b.slots + 1) * slot_len
        seen = [failed for at, failed in self.closed_outcomes if at >= start]
        return sum(seen), len(seen)


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
