"""The overload guard's cheap happy path: what it counts per slot decides as the pure policies do.

A success in a closed breaker and a first attempt on a process's own budget are counted in a
small tally and recorded per slot (``CircuitBreaker.record_successes``,
``MemoryStore.deposit``); these tests hold that shortcut to the per-call algorithm it replaced,
written here with the pure policies alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from yarl import URL

from le_transport.errors import CircuitOpen, RequestError, RetryBudgetExhausted
from le_transport.middleware.overload import DEFAULT_MAX_BREAKERS, OverloadGuard
from le_transport.policies import (
    BackoffPolicy,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    Outcome,
    OutcomeKind,
    RetryBudget,
)
from le_transport.policies.budget import BudgetState, slot_end
from le_transport.state.memory import MemoryStore
from le_transport.testing import VirtualClock
from tests.doubles import CountingRandom

if TYPE_CHECKING:
    from aiohttp import ClientRequest

T = TypeVar("T")

#: Small enough that a few dozen steps open, half-open and close the breaker and spend the budget.
BREAKER = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=3,
    sampling_window=3.0,
    slots=3,
    breaks=BackoffPolicy(first=1.0, factor=2.0, cap=8.0, jitter=0.2, floor=0.0),
    probe_lease=2.0,
)
BUDGET = RetryBudget(ratio=0.5, min_retries_per_second=0.2, window=3.0, slots=3)

OUTCOMES = [
    Outcome.response(200),
    Outcome.response(404),
    Outcome.response(503),
    Outcome.response(429),
    Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout"),
    # No verdict: recorded neither way; a probe meeting one is released.
    Outcome.failure(OutcomeKind.TLS_REJECTED, "ClientConnectorCertificateError"),
]
SERVICES = ["msgHist", "agentVep"]
HOSTS = ["127.0.0.1:8080", "127.0.0.2:8443"]


def _done(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must finish without suspending (the in-memory guard never waits)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise AssertionError("the in-memory guard suspended")


class _FixedRandom(random.Random):
    """The same draw every time: the per-call reference and the guard then see equal breaks."""

    def random(self) -> float:
        return 0.37


class _Call:
    """A call in progress as the retry loop shows it to its gate (to ``url`` if given: the
    engine reuses the URL it built for a host and path, whatever the service)."""

    def __init__(self, service: str, host: str, url: URL | None = None) -> None:
        self.service = service
        self.method = "GET"
        self.url = f"http://{host}/x"
        self.request = cast("ClientRequest", SimpleNamespace(url=url or URL(self.url)))
        #: When the gate asked the attempt to be cut (limit_attempt: a fleet's probe), if it did.
        self.until: float | None = None

    def limit_attempt(self, until: float) -> None:
        """What the retry loop's call does: cut the attempt at ``until`` (here only noted; a
        test that runs attempts honours it)."""
        self.until = until


def _host(call: _Call) -> str:
    url = call.request.url
    return f"{url.host}:{url.port}"


class _PerCallGuard:
    """The guard's decisions as it made them before the shortcut: every success and every first
    attempt recorded at once through the pure policies, a random draw per settled attempt, and
    each outcome recorded as the probe's only if that attempt was admitted as the probe (known by
    the lease end it was admitted with: a probe a newer one replaced decides nothing)."""

    def __init__(self, clock: VirtualClock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.status: dict[tuple[str, str], BreakerStatus] = {}
        self.budgets: dict[str, BudgetState] = {}
        self.probes: dict[tuple[int, int], float | None] = {}
        # When each granted retry was paid for, until its attempt is admitted: one the breaker
        # refuses is given back (one off the slot it was counted in, while in the window).
        self.granted: dict[tuple[int, int], float] = {}

    def admit(self, call: _Call, attempt: int) -> tuple[type, float | None] | None:
        key = (call.service, _host(call))
        now = self.clock.now()
        admission = BREAKER.admit(self.status.get(key) or BREAKER.closed(), now)
        paid_at = self.granted.pop((id(call), attempt), None)
        if not admission.allowed:
            if paid_at is not None:
                self._refund(call.service, paid_at)
            return CircuitOpen, admission.retry_at
        self.status[key] = admission.status
        if admission.probe:
            self.probes[(id(call), attempt)] = admission.status.probe_until
        if attempt == 1:
            held = self.budgets.get(call.service) or BUDGET.empty()
            self.budgets[call.service] = BUDGET.record_request(held, now)
        return None

    def _refund(self, service: str, paid_at: float) -> None:
        held = self.budgets.get(service)
        if held is None:
            return
        state = BUDGET.record_request(held, self.clock.now(), 0)
        index = state.slot - BUDGET.slot_of(paid_at)
        if 0 <= index < BUDGET.slots and state.retries[index] >= 1:
            retries = list(state.retries)
            retries[index] -= 1
            self.budgets[service] = attrs.evolve(state, retries=tuple(retries))

    def settle(self, call: _Call, attempt: int, outcome: Outcome) -> None:
        key = (call.service, _host(call))
        probe = (id(call), attempt) in self.probes
        probe_until = self.probes.pop((id(call), attempt), None)
        before = self.status.get(key) or BREAKER.closed()
        if BREAKER.gives_no_verdict(outcome):
            if probe:
                self.status[key] = BREAKER.release(
                    before, self.clock.now(), probe_until=probe_until
                )
            return
        failed = BREAKER.counts_as_failure(outcome)
        rand = self.rng.random()
        self.status[key] = BREAKER.record(
            before,
            self.clock.now(),
            failed=failed,
            rand=rand,
            probe=probe,
            probe_until=probe_until,
        )

    def abandon(self, call: _Call, attempt: int) -> None:
        if (id(call), attempt) not in self.probes:
            return
        probe_until = self.probes.pop((id(call), attempt))
        key = (call.service, _host(call))
        if key in self.status:
            self.status[key] = BREAKER.release(
                self.status[key], self.clock.now(), probe_until=probe_until
            )

    def before_retry(
        self, call: _Call, pause: float, call_attempt: int
    ) -> tuple[type, float | None] | None:
        key = (call.service, _host(call))
        now = self.clock.now()
        status = self.status.get(key)
        if status is not None:
            retry_at = BREAKER.retry_at(status, now)
            if (
                BREAKER.state_at(status, now) is BreakerState.OPEN
                and retry_at is not None
                and retry_at > now + pause
            ):
                return CircuitOpen, retry_at
        held = self.budgets.get(call.service) or BUDGET.empty()
        allowed, self.budgets[call.service] = BUDGET.try_retry(held, now)
        if allowed:
            self.granted[(id(call), call_attempt + 1)] = now
        return None if allowed else (RetryBudgetExhausted, None)

    def state(self, service: str, host: str) -> BreakerState:
        status = self.status.get((service, host))
        return BreakerState.CLOSED if status is None else BREAKER.state_at(status, self.clock.now())


def _answer(refused: RequestError | None) -> tuple[type, float | None] | None:
    if refused is None:
        return None
    return type(refused), refused.retry_at if isinstance(refused, CircuitOpen) else None


class GuardAgreesWithThePerCallAlgorithm(RuleBasedStateMachine):
    """For any interleaving of calls, outcomes, cancellations, retries and time, the guard that
    counts successes and first attempts per slot refuses exactly the attempts and retries the
    per-call algorithm refuses, with the same ``retry_at``, and reports the same breaker state
    and status."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(start=100.0)
        self.guard = OverloadGuard(
            budget=BUDGET, breaker=BREAKER, clock=self.clock, rng=_FixedRandom()
        )
        self.reference = _PerCallGuard(self.clock, _FixedRandom())
        self.in_flight: list[tuple[_Call, int]] = []
        self.retrying: list[tuple[_Call, int]] = []
        # One URL object per host, shared by both services' calls there, as the engine may.
        self.urls = {host: URL(f"http://{host}/x") for host in HOSTS}

    def _call(self, service: str, host: str, shared_url: bool) -> _Call:
        return _Call(service, host, self.urls[host] if shared_url else None)

    def _admit(self, call: _Call, attempt: int) -> None:
        got = _answer(_done(self.guard.admit(call, attempt)))
        assert got == self.reference.admit(call, attempt)
        if got is None:
            self.in_flight.append((call, attempt))

    @rule(dt=st.sampled_from([0.0, 0.01, 0.4, 0.99, 1.0, 1.7, 3.0, 9.0]))
    def time_passes(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(service=st.sampled_from(SERVICES), host=st.sampled_from(HOSTS), shared=st.booleans())
    def a_call_starts(self, service: str, host: str, shared: bool) -> None:
        self._admit(self._call(service, host, shared), 1)

    @rule(pick=st.integers(0, 50), outcome=st.sampled_from(OUTCOMES))
    def an_attempt_ends(self, pick: int, outcome: Outcome) -> None:
        if not self.in_flight:
            return
        call, attempt = self.in_flight.pop(pick % len(self.in_flight))
        _done(self.guard.settle(call, attempt, outcome))
        self.reference.settle(call, attempt, outcome)
        if BREAKER.counts_as_failure(outcome):
            self.retrying.append((call, attempt))

    @rule(
        service=st.sampled_from(SERVICES),
        host=st.sampled_from(HOSTS),
        answers=st.lists(st.sampled_from(OUTCOMES[:2]), min_size=1, max_size=8),
        shared=st.booleans(),
    )
    def calls_succeed_one_after_another(
        self, service: str, host: str, answers: list[Outcome], shared: bool
    ) -> None:
        for outcome in answers:
            call = self._call(service, host, shared)
            self._admit(call, 1)
            if self.in_flight and self.in_flight[-1][0] is call:
                self.in_flight.pop()
                _done(self.guard.settle(call, 1, outcome))
                self.reference.settle(call, 1, outcome)

    @rule(pick=st.integers(0, 50))
    def an_attempt_is_cancelled(self, pick: int) -> None:
        if not self.in_flight:
            return
        call, attempt = self.in_flight.pop(pick % len(self.in_flight))
        self.guard.abandon(call, attempt)
        self.reference.abandon(call, attempt)

    @rule(pick=st.integers(0, 50), pause=st.sampled_from([0.5, 1.0, 5.0]))
    def a_failed_call_retries(self, pick: int, pause: float) -> None:
        if not self.retrying:
            return
        call, attempt = self.retrying.pop(pick % len(self.retrying))
        last = RequestError("503")
        got = _answer(
            _done(self.guard.before_retry(call, attempt, Outcome.response(503), pause, last))
        )
        assert got == self.reference.before_retry(call, pause, attempt)
        if got is None:
            self._admit(call, attempt + 1)

    @rule(service=st.sampled_from(SERVICES), host=st.sampled_from(HOSTS))
    def the_status_is_read(self, service: str, host: str) -> None:
        # A rule, not an invariant: successes pile up in the guard's tally between reads.
        assert self.guard._status_of((service, host)) == self.reference.status.get((service, host))

    @invariant()
    def the_last_key_is_only_marked_admitting_on_a_closed_status(self) -> None:
        # What lets admit skip reading the status of the last key it asked.
        if self.guard._last_admits:
            assert self.guard._status[self.guard._last_key].state is BreakerState.CLOSED

    @invariant()
    def a_tally_is_only_held_on_a_closed_status(self) -> None:
        # What lets a success in the tally's slot skip reading the status.
        for key in self.guard._successes:
            assert self.guard._status[key].state is BreakerState.CLOSED

    @invariant()
    def the_breakers_are_in_the_same_state(self) -> None:
        for service in SERVICES:
            for host in HOSTS:
                assert self.guard.breaker_state(service, host) is self.reference.state(
                    service, host
                )


GuardAgreesWithThePerCallAlgorithm.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
test_guard_agrees_with_the_per_call_algorithm = GuardAgreesWithThePerCallAlgorithm.TestCase


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[float, bool]]:
    times = draw(st.lists(st.floats(0, 20, allow_nan=False), min_size=0, max_size=40))
    return [(t, draw(st.booleans())) for t in sorted(times)]


@st.composite
def _history(draw: st.DrawFn) -> tuple[BreakerStatus, float]:
    status = BREAKER.closed()
    now = 0.0
    for step, failed in draw(_records()):
        now = step
        status = BREAKER.record(status, now, failed=failed, rand=0.5)
    return status, now


@given(
    history=_history(),
    later=st.floats(0, 5, allow_nan=False),
    offsets=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_record_successes_equals_recording_each_success_of_the_slot_in_turn(
    history: tuple[BreakerStatus, float], later: float, offsets: list[float]
) -> None:
    """For any closed status and any successes at times within one slot, recording them
    together at the first one's time gives the same status as recording each at its own time;
    for any other status, the same as recording each at that time (what the guard relies on:
    it only counts successes on a closed status)."""
    status, now = history
    first = now + later
    slot = BREAKER.slot_of(first)
    times = [first] + [first + o for o in sorted(offsets)]
    times = [t for t in times if BREAKER.slot_of(t) == slot]
    if status.state is not BreakerState.CLOSED:
        times = [first] * len(times)
    one_by_one = status
    for t in times:
        one_by_one = BREAKER.record(one_by_one, t, failed=False, rand=0.5)
    assert BREAKER.record_successes(status, first, len(times)) == one_by_one


_budget_steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.7, 1.0, 2.5, 4.0])),
        st.tuples(st.just("deposit"), st.integers(1, 3)),
        st.tuples(st.just("withdraw"), st.just(0)),
    ),
    max_size=80,
)


@given(steps=_budget_steps)
@settings(max_examples=300, deadline=None)
def test_batched_deposits_let_every_withdrawal_see_every_deposit_made_before_it(
    steps: list[tuple[str, float]],
) -> None:
    """For any sequence of first attempts, withdrawals and time, a MemoryStore that batches
    deposits per slot grants exactly the retries the pure budget grants when each first attempt
    is recorded at once, and ends with the same retries left."""
    clock = VirtualClock(start=50.0)
    store = MemoryStore(clock)
    reference = BUDGET.empty()
    for op, arg in steps:
        if op == "advance":
            clock.advance(arg)
        elif op == "deposit":
            for _ in range(int(arg)):
                store.deposit("k", BUDGET)
                reference = BUDGET.record_request(reference, clock.now())
        else:
            allowed, reference = BUDGET.try_retry(reference, clock.now())
            assert _done(store.budget("k", BUDGET, withdraw=True)) is allowed
    left = 0
    while _done(store.budget("k", BUDGET, withdraw=True)):
        left += 1
    assert left == int(BUDGET.available(reference, clock.now()))


_fleet_steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.01, 0.3, 0.99, 1.0, 2.5, 9.0])),
        st.tuples(st.just("first"), st.integers(1, 20)),
        st.tuples(st.just("retry"), st.integers(1, 3)),
    ),
    max_size=60,
)


@given(steps=_fleet_steps, flush=st.sampled_from([0.0, 0.4, 1.0, 2.0, 30.0]))
@settings(max_examples=300, deadline=None)
def test_a_fleets_batched_first_attempts_never_grant_a_retry_the_per_call_budget_refuses(
    steps: list[tuple[str, float]], flush: float
) -> None:
    """For any first attempts, retries and time, a guard on a shared store (first attempts held
    back and sent in batches) grants a retry only if the pure budget, with every first attempt
    recorded at once and the same retries granted, grants it too: batching is only stricter.
    (Counts sent after their slot ended were counted in a later one, and paid for retries after
    the first attempts they stood for had left the window.)"""
    clock = VirtualClock(start=100.0)
    guard = OverloadGuard(
        budget=BUDGET,
        breaker=None,
        store=MemoryStore(clock),
        account="1",
        clock=clock,
        flush_interval=flush,
    )
    reference = BUDGET.empty()
    for op, arg in steps:
        if op == "advance":
            clock.advance(arg)
        elif op == "first":
            for _ in range(int(arg)):
                assert _done(guard.admit(_Call("msgHist", HOSTS[0]), 1)) is None
                reference = BUDGET.record_request(reference, clock.now())
        else:
            call = _Call("msgHist", HOSTS[0])
            for attempt in range(1, int(arg) + 1):
                got = _done(
                    guard.before_retry(
                        call, attempt, Outcome.response(503), 0.0, RequestError("503")
                    )
                )
                if got is not None:
                    assert isinstance(got, RetryBudgetExhausted)
                    break
                allowed, reference = BUDGET.try_retry(reference, clock.now())
                assert allowed, "the fleet's budget granted a retry the per-call one refuses"


def test_first_attempts_held_back_before_a_quiet_spell_do_not_pay_for_retries_after_it() -> None:
    """100 first attempts in a second, held back by the batching, then 31 s of quiet: the
    per-call budget has aged them out and grants its floor's 3 retries; so does the fleet's
    (it granted 13: the held-back counts went out with the next call, in its slot)."""
    budget = RetryBudget()
    clock = VirtualClock(start=100.0)
    guard = OverloadGuard(
        budget=budget, breaker=None, store=MemoryStore(clock), account="1", clock=clock
    )
    for _ in range(100):
        assert _done(guard.admit(_Call("msgHist", HOSTS[0]), 1)) is None
        clock.advance(0.0099)
    clock.advance(31.0 - 100 * 0.0099)
    call = _Call("msgHist", HOSTS[0])
    assert _done(guard.admit(call, 1)) is None
    granted = 0
    while granted < 50:
        refused = _done(
            guard.before_retry(call, granted + 1, Outcome.response(503), 0.0, RequestError("x"))
        )
        if refused is not None:
            break
        granted += 1
    assert granted == 3


@pytest.mark.parametrize("outcome", [OUTCOMES[4], OUTCOMES[0]], ids=["timeout", "success"])
def test_attempts_from_before_the_break_ending_after_it_neither_reopen_nor_close(
    outcome: Outcome,
) -> None:
    """Slow attempts admitted while the breaker was closed, ending one by one after the break
    with no probe sent: each re-opened it for a doubled break (or a success closed it, "the
    probe succeeded"). They are not the probe: the breaker stays half-open for one."""
    clock = VirtualClock(start=100.0)
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock, rng=_FixedRandom())
    slow = [_Call("msgHist", HOSTS[0]) for _ in range(3)]
    for call in slow:
        assert _done(guard.admit(call, 1)) is None
    for _ in range(BREAKER.minimum_throughput):
        call = _Call("msgHist", HOSTS[0])
        assert _done(guard.admit(call, 1)) is None
        _done(guard.settle(call, 1, OUTCOMES[2]))
    opened = guard._status[("msgHist", HOSTS[0])]
    for call in slow:
        clock.advance(max(0.0, opened.open_until - clock.now()) + 0.01)
        _done(guard.settle(call, 1, outcome))
        assert guard.breaker_state("msgHist", HOSTS[0]) is BreakerState.HALF_OPEN
        assert guard._status_of(("msgHist", HOSTS[0])) == opened


def test_a_successful_call_draws_no_random_number_and_a_failure_draws_one() -> None:
    clock = VirtualClock()
    rng = CountingRandom()
    guard = OverloadGuard(budget=BUDGET, breaker=BREAKER, clock=clock, rng=rng)
    call = _Call("msgHist", HOSTS[0])
    for _ in range(10):
        assert _done(guard.admit(call, 1)) is None
        _done(guard.settle(call, 1, Outcome.response(200)))
    assert rng.draws == 0
    assert _done(guard.admit(call, 1)) is None
    _done(guard.settle(call, 1, Outcome.response(503)))
    assert rng.draws == 1


def test_successes_counted_in_one_slot_still_keep_the_breaker_closed_after_failures() -> None:
    """Seven successes held in the tally outweigh two failures at a 50% threshold: the failures
    see every success counted before them."""
    clock = VirtualClock()
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    call = _Call("msgHist", HOSTS[0])
    for _ in range(7):
        _done(guard.admit(call, 1))
        _done(guard.settle(call, 1, Outcome.response(200)))
    for _ in range(2):
        _done(guard.admit(call, 1))
        _done(guard.settle(call, 1, Outcome.response(503)))
    assert guard.breaker_state("msgHist", HOSTS[0]) is BreakerState.CLOSED
    for _ in range(7):
        _done(guard.admit(call, 1))
        _done(guard.settle(call, 1, Outcome.response(503)))
    assert guard.breaker_state("msgHist", HOSTS[0]) is BreakerState.OPEN


def test_the_breaker_keys_kept_per_host_are_bounded() -> None:
    clock = VirtualClock()
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    for port in range(3000):
        call = _Call("msgHist", f"127.0.0.1:{port + 1}")
        _done(guard.admit(call, 1))
        _done(guard.settle(call, 1, Outcome.response(200)))
    # As many keys as breakers are kept: 3,000 hosts in use keep all of theirs.
    assert len(guard._keys) == 3000
    assert guard.breaker_state("msgHist", "127.0.0.1:3000") is BreakerState.CLOSED
    for port in range(3000, 9000):
        call = _Call("msgHist", f"127.0.0.1:{port + 1}")
        _done(guard.admit(call, 1))
        _done(guard.settle(call, 1, Outcome.response(200)))
    assert len(guard._keys) <= DEFAULT_MAX_BREAKERS


def test_calls_of_two_services_to_one_url_object_keep_their_own_breakers() -> None:
    """The guard keeps the last breaker key with its URL object; another service's call to the
    same URL object still gets its own breaker."""
    clock = VirtualClock()
    guard = OverloadGuard(budget=None, breaker=BREAKER, clock=clock)
    url = URL(f"http://{HOSTS[0]}/x")
    for _ in range(BREAKER.minimum_throughput):
        for service, outcome in (("msgHist", Outcome.response(503)), ("agentVep", OUTCOMES[0])):
            call = _Call(service, HOSTS[0], url)
            assert _done(guard.admit(call, 1)) is None
            _done(guard.settle(call, 1, outcome))
    assert guard.breaker_state("msgHist", HOSTS[0]) is BreakerState.OPEN
    assert guard.breaker_state("agentVep", HOSTS[0]) is BreakerState.CLOSED
    assert isinstance(_done(guard.admit(_Call("msgHist", HOSTS[0], url), 1)), CircuitOpen)
    assert _done(guard.admit(_Call("agentVep", HOSTS[0], url), 1)) is None
    other = URL(f"http://{HOSTS[1]}/x")
    assert _done(guard.admit(_Call("msgHist", HOSTS[1], other), 1)) is None
    assert guard.breaker_state("msgHist", HOSTS[1]) is BreakerState.CLOSED


_LENGTHS = st.one_of(
    st.sampled_from([1.0, 0.1, 1 / 3, 3.0, 2.9, 0.7, 1e-3, 12.5]),
    st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False),
)


@given(
    length=_LENGTHS,
    t0=st.floats(-1e6, 1e12, allow_nan=False),
    fractions=st.lists(st.floats(0, 1, allow_nan=False), max_size=10),
)
@settings(max_examples=500, deadline=None)
def test_every_time_from_one_of_a_slot_up_to_its_end_is_in_the_slot(
    length: float, t0: float, fractions: list[float]
) -> None:
    """What lets a tally compare times with its slot's end instead of dividing: slot_end is
    never past the slot, and at most a float or two short of its end."""
    slot = math.floor(t0 / length)
    end = slot_end(length, slot)
    if end > t0:
        last = math.nextafter(end, -math.inf)
        times = [t0, last] + [min(last, t0 + f * (end - t0)) for f in fractions]
        assert all(math.floor(t / length) == slot for t in times)
    after = math.nextafter(math.nextafter(end, math.inf), math.inf)
    assert math.floor(after / length) > slot


@given(
    edges=st.lists(st.tuples(st.integers(0, 40), st.integers(-2, 2)), min_size=1, max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_successes_and_first_attempts_around_slot_edges_count_as_the_per_call_algorithm(
    edges: list[tuple[int, int]],
) -> None:
    """Slots of a length no float multiplies exactly (1/3 s), times a float or two either side of
    their edges: the guard's tallies (compared with the slot's end) record the same status and
    budget as recording each success and first attempt at once."""
    breaker = CircuitBreaker(minimum_throughput=1000, sampling_window=1.0, slots=3)
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=1.0, slots=3)
    clock = VirtualClock(start=1000.0)
    guard = OverloadGuard(budget=budget, breaker=breaker, clock=clock)
    url = URL(f"http://{HOSTS[0]}/x")
    status = breaker.closed()
    spent = budget.empty()
    now = 1000.0
    for edge, ulps in sorted(edges):
        at = 1000.0 + edge / 3
        for _ in range(abs(ulps)):
            at = math.nextafter(at, math.inf if ulps > 0 else -math.inf)
        now = max(now, at)
        clock.advance(now - clock.now())
        call = _Call("msgHist", HOSTS[0], url)
        assert _done(guard.admit(call, 1)) is None
        _done(guard.settle(call, 1, OUTCOMES[0]))
        status = breaker.record(status, now, failed=False)
        spent = budget.record_request(spent, now)
    assert guard._status_of(("msgHist", HOSTS[0])) == status
    store = guard.store
    assert isinstance(store, MemoryStore)
    key = guard._budget_key("msgHist")
    store._record_deposits(key)
    assert store._budgets[key][0] == spent
