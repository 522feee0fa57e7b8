"""The outer recovery loop: re-resolve and re-login on the BackoffPolicy after the request
schedule gives up, per call wait-through or fail-fast, bad credentials never looped; with
hypothesis properties on virtual time for its pauses and its number of logins."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport import recovery as recovery_module
from le_transport.chaos import Reset, Status
from le_transport.errors import (
    AttemptRecord,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    DeadlineExceeded,
    DomainResolutionError,
    HostileHostError,
    InvalidRequest,
    LoginRejected,
    RecoveryFailed,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
    UnknownServiceError,
)
from le_transport.events import EventHooks, StateEvent
from le_transport.policies import Classifier, Outcome
from le_transport.providers import Credentials, CsdsDomains, StaticDomains, UserLogin
from le_transport.recovery import Recovery, is_recoverable, is_setup_error, refused_status
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, sim, sim_engine

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
CSDS = f"/api/account/{ACCOUNT}/service/baseURI.json"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
GUIDE = RetryPolicy()


def exhausted() -> RetriesExhausted:
    return RetriesExhausted("gave up", last=ServerStatusError("503", status=503))


# -- what is recoverable ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "recoverable"),
    [
        (exhausted(), True),
        (ServerStatusError("503", status=503), True),
        (DomainResolutionError("csds down", account=ACCOUNT), True),
        (LoginRejected("bad password", status=401), False),
        (ClientStatusError("404", status=404), False),
        (UnknownServiceError("no such", service="x"), False),
        (HostileHostError("evil", account=ACCOUNT), False),
        (DeadlineExceeded("late", elapsed=3.0), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_transient_failures_that_outlived_the_schedule_are_recoverable(
    error: BaseException, recoverable: bool
) -> None:
    assert is_recoverable(error) is recoverable


def _csds_failed(cause: BaseException) -> DomainResolutionError:
    error = DomainResolutionError("the Domain API could not resolve", account=ACCOUNT)
    error.__cause__ = cause
    return error


def _retried(status: int) -> RetriesExhausted:
    """A 4xx the retry policy retried (its Classifier retries ``status``) until its schedule
    was spent, chained as the retry middleware raises it."""
    last = ClientStatusError(str(status), status=status)
    error = RetriesExhausted("gave up after 4 attempt(s)", last=last)
    error.__cause__ = last
    return error


def _budget_spent(status: int) -> RetryBudgetExhausted:
    """A 4xx the retry policy would have retried, but for the spent retry budget."""
    last = ClientStatusError(str(status), status=status)
    error = RetryBudgetExhausted("the retry budget is spent", last=last)
    error.__cause__ = last
    return error


@pytest.mark.parametrize(
    ("error", "recoverable", "setup_error"),
    [
        # The Domain API refused the account (the simulator's 400 for an unknown one): the
        # caller's to fix, never looped.
        (_csds_failed(ClientStatusError("400", status=400)), False, True),
        (_csds_failed(ClientStatusError("404", status=404)), False, True),
        # Down: a 5xx that outlived its schedule, a reset, a 429.
        (_csds_failed(exhausted()), True, False),
        (_csds_failed(ConnectionFailed("reset", never_sent=True)), True, False),
        (_csds_failed(ServerStatusError("429", status=429)), True, False),
        # A 4xx the policy retried (a Classifier retrying 409): an outage, not a refusal.
        (_csds_failed(_retried(409)), True, False),
        (_csds_failed(_budget_spent(409)), True, False),
        (_retried(409), True, False),
        (DomainResolutionError("no baseURIs list", account=ACCOUNT), True, False),
        (InvalidRequest("path must be an absolute path"), False, True),
        (ConfigurationError("bad"), False, True),
        (UnknownServiceError("no such", service="x"), False, True),
        (HostileHostError("evil", account=ACCOUNT), False, True),
        (ClientStatusError("403", status=403), False, True),
        (exhausted(), True, False),
        (DeadlineExceeded("late", elapsed=3.0), False, False),
        (ValueError("a bug"), False, False),
    ],
)
def test_a_domain_api_refusal_is_a_setup_error_and_its_outage_is_recoverable(
    error: BaseException, recoverable: bool, setup_error: bool
) -> None:
    assert is_recoverable(error) is recoverable
    assert is_setup_error(error) is setup_error


def test_a_4xx_the_policy_retried_has_no_refused_status_and_one_that_failed_at_once_has() -> None:
    assert refused_status(_csds_failed(_retried(409))) is None
    assert refused_status(_csds_failed(_budget_spent(409))) is None
    assert refused_status(_retried(409)) is None
    assert refused_status(_csds_failed(ClientStatusError("400", status=400))) == 400
    # A refusal wrapped further up (a provider's error around the domain error) still counts.
    outer = DomainResolutionError("login could not resolve", account=ACCOUNT)
    outer.__cause__ = _csds_failed(ClientStatusError("400", status=400))
    assert refused_status(outer) == 400


def test_a_cause_chain_that_loops_is_read_to_its_bound_not_for_ever() -> None:
    first = DomainResolutionError("a", account=ACCOUNT)
    second = DomainResolutionError("b", account=ACCOUNT)
    first.__cause__, second.__cause__ = second, first
    assert refused_status(first) is None
    assert is_recoverable(first)


async def test_an_account_the_domain_api_refuses_fails_at_once_even_with_recover(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The simulator answers 400 for an unknown account, as LiveEngage does: over HTTP a call
    fails at once, and recover=True does not make it loop (it used to, for 24 hours)."""
    domains = CsdsDomains("999", csds_host=sim.host, scheme="http")
    auth = UserLogin("999", USER, PASSWORD, domains=domains, keepalive=False)
    events: list[StateEvent] = []
    engine = sim_engine(sim, clock, domains=domains, auth=auth, events=events)
    async with engine:
        with pytest.raises(DomainResolutionError) as info:
            await engine.request("GET", "accountConfigReadOnly", "/api/account/999/x", recover=True)
    assert refused_status(info.value) == 400
    assert clock.now() == 0.0
    assert sim.count("GET", "/api/account/999/service/baseURI.json") == 1
    assert engine.recovery.relogins == 0
    assert "relogin_scheduled" not in [e.name for e in events]


async def test_a_domain_api_4xx_the_policy_retries_is_waited_out_with_recover(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The engine's policy retries 409 (the Classifier's "an API known to answer it
    transiently"); the Domain API answers it for a whole schedule, then recovers. That is an
    outage, which recover=True waits out, not an account refused for good."""
    sim.faults.script("GET", CSDS, [409] * 4)
    events: list[StateEvent] = []
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)
    engine = sim_engine(
        sim,
        clock,
        domains=auth._domains,
        auth=auth,
        events=events,
        retry=RetryPolicy(classifier=Classifier(retry_statuses={409})),
        rng=random.Random(7),
    )
    async with engine:
        users = await engine.request_json("GET", "accountConfigReadOnly", USERS, recover=True)
    assert [u["loginName"] for u in users] == [USER]
    assert sim.count("GET", CSDS) == 5
    assert engine.recovery.relogins == 1
    names = [e.name for e in events]
    assert "relogin_scheduled" in names
    assert names.count("recovered") == 1


async def test_an_unknown_account_stays_final_even_when_the_policy_retries_other_4xx(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The Domain API's 400 for an unknown account is not retried (only 409 is): final at
    once, recover=True or not."""
    domains = CsdsDomains("999", csds_host=sim.host, scheme="http")
    auth = UserLogin("999", USER, PASSWORD, domains=domains, keepalive=False)
    engine = sim_engine(
        sim,
        clock,
        domains=domains,
        auth=auth,
        retry=RetryPolicy(classifier=Classifier(retry_statuses={409})),
    )
    async with engine:
        with pytest.raises(DomainResolutionError) as info:
            await engine.request("GET", "accountConfigReadOnly", "/api/account/999/x", recover=True)
    assert refused_status(info.value) == 400
    assert is_setup_error(info.value)
    assert clock.now() == 0.0
    assert engine.recovery.relogins == 0


# -- against the simulator --------------------------------------------------------------------


def seeded_engine(
    sim: Simulator,
    clock: VirtualClock,
    events: list[StateEvent],
    *,
    recovery: BackoffPolicy | None = None,
) -> tuple[Engine, UserLogin]:
    """An engine logging in as the test user, with a seeded random source for the jitter."""
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)
    engine = sim_engine(
        sim,
        clock,
        domains=auth._domains,
        auth=auth,
        events=events,
        recovery=recovery,
        rng=random.Random(7),
    )
    return engine, auth


async def test_a_login_down_past_the_schedule_is_retried_on_the_relogin_backoff(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    sim.faults.script("POST", LOGIN, [503, 503, Reset(), 503])
    engine, auth = seeded_engine(sim, clock, events)
    async with engine:
        resp = await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
        assert resp.status == 200
        assert auth.logins == 1
    logins = [r.at for r in sim.requests if r.path == LOGIN]
    assert len(logins) == 5
    # The schedule (5, 10, 15 s), then one outer pause: 2 min ± 20%.
    assert logins[3] - logins[0] == 30.0
    outer = logins[4] - logins[3]
    assert 96.0 <= outer <= 144.0
    names = [e.name for e in events]
    assert names == ["login_failed", "relogin_scheduled", "logged_in", "recovered", "logged_out"]
    scheduled = events[1]
    # Event details carry milliseconds.
    assert scheduled.details["pause"] == pytest.approx(outer, abs=0.0005)
    assert scheduled.details["error"] == "RetriesExhausted"


async def test_a_call_that_outlives_the_schedule_re_resolves_and_re_logs_in_then_retries(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    sim.faults.script("GET", USERS, [503] * 4)
    engine, _ = seeded_engine(sim, clock, events)
    async with engine:
        users = await engine.request_json("GET", "accountConfigReadOnly", USERS, recover=True)
        assert [u["loginName"] for u in users] == [USER]
    assert sim.count("GET", USERS) == 5
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("GET", CSDS) == 2  # re-resolved before the re-login
    assert engine.recovery.relogins == 1
    assert [e.name for e in events].count("recovered") == 1


async def test_fail_fast_is_the_default_and_raises_the_typed_error_at_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", USERS, [503] * 4)
    engine, _ = seeded_engine(sim, clock, [])
    async with engine:
        with pytest.raises(RetriesExhausted):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert sim.count("POST", LOGIN) == 1
    assert clock.now() == 30.0  # the request schedule only


async def test_recovery_gives_up_when_the_policy_runs_out(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    sim.faults.script("POST", LOGIN, [503] * 12)
    engine, _ = seeded_engine(sim, clock, events, recovery=BackoffPolicy.relogin(max_attempts=2))
    async with engine:
        with pytest.raises(RecoveryFailed, match="gave up recovering after 2") as info:
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert isinstance(info.value.last, RetriesExhausted)
    assert sim.count("POST", LOGIN) == 12
    names = [e.name for e in events if e.name != "login_failed"]
    assert names == ["relogin_scheduled", "relogin_failed", "relogin_scheduled",
                     "relogin_failed", "gave_up"]  # fmt: skip


async def test_bad_credentials_during_recovery_stop_the_loop_at_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    sim.faults.script("GET", USERS, [503] * 4)
    sim.faults.script("POST", LOGIN, [None, 401])
    engine, _ = seeded_engine(sim, clock, events)
    async with engine:
        with pytest.raises(LoginRejected):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("POST", LOGIN) == 2
    assert [e.name for e in events][-1] == "gave_up"


async def test_the_domain_api_down_during_recovery_serves_the_cached_map(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", USERS, [503] * 4)
    engine, auth = seeded_engine(sim, clock, [])
    async with engine:
        await engine.login()
        sim.faults.script("GET", CSDS, [503] * 10)
        resp = await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
        assert resp.status == 200
    assert auth.logins == 2


async def test_a_caller_waiting_through_recovery_can_cancel(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [503] * 8)
    engine, _ = seeded_engine(sim, clock, [])
    async with engine:
        task = asyncio.ensure_future(
            engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
        )
        await clock.sleep(60)  # inside the first outer pause
        assert engine.recovery.recovering
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sim.count("POST", LOGIN) == 4


async def test_the_outer_pause_is_not_shorter_than_a_retry_after_the_call_honoured(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Every attempt answered 429 with Retry-After: 60: the call waited 60 s three times (the
    ceiling), so the outer loop's first pause (30 s ± 20%) is floored at 60, not at the
    schedule's 15 s: the guide's "a longer interval than the previous one" (spread above 60 s
    by up to the policy's 20% jitter)."""
    events: list[StateEvent] = []
    sim.faults.script("GET", USERS, [Status(429, retry_after=60)] * 4)
    engine, _ = seeded_engine(
        sim, clock, events, recovery=BackoffPolicy.relogin(first=30, max_attempts=3)
    )
    async with engine:
        resp = await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
        assert resp.status == 200
    gets = [r.at for r in sim.requests if r.path == USERS]
    assert [b - a for a, b in itertools.pairwise(gets)][:3] == [60.0, 60.0, 60.0]
    (scheduled,) = [e for e in events if e.name == "relogin_scheduled"]
    assert 60.0 <= scheduled.details["pause"] <= 72.0


async def test_the_outer_pause_is_not_shorter_than_a_per_call_schedules_last_pause(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A call with a schedule of its own (retry=, pauses up to 240 s) is not re-tried by the
    outer loop sooner than that, though the engine's schedule ends at 15 s (spread above it by
    up to the policy's 20% jitter)."""
    events: list[StateEvent] = []
    sim.faults.script("GET", USERS, [503] * 4)
    engine, _ = seeded_engine(sim, clock, events)
    async with engine:
        resp = await engine.request(
            "GET",
            "accountConfigReadOnly",
            USERS,
            recover=True,
            retry=RetryPolicy(pauses=(60, 120, 240)),
        )
        assert resp.status == 200
    (scheduled,) = [e for e in events if e.name == "relogin_scheduled"]
    assert 240.0 <= scheduled.details["pause"] <= 288.0  # not 2 min ± 20%


async def test_the_outer_pause_is_floored_on_the_longest_pause_the_failed_call_took() -> None:
    clock = VirtualClock()
    recovery = Recovery(
        domains=StaticDomains({}),
        auth=CountingAuth(),
        clock=clock,
        policy=BackoffPolicy.relogin(first=30, jitter=0.0),
        request_policy=GUIDE,
    )
    throttled = Outcome.response(429, retry_after=45.0)
    failure = RetriesExhausted(
        "gave up",
        last=ServerStatusError("429", status=429),
        attempts=[
            AttemptRecord(1, throttled, 45.0, 0.0),
            AttemptRecord(2, throttled, 45.0, 45.0),
            AttemptRecord(3, Outcome.response(503), 15.0, 90.0),
            AttemptRecord(4, Outcome.response(503), None, 105.0),
        ],
    )
    failures = [failure]

    async def call() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert await recovery.run(call) == "ok"
    assert list(recovery.pauses) == [45.0]  # not the policy's 30 s, nor the last 15 s


def _scripted(*outcomes: object) -> Callable[[], Awaitable[object]]:
    """A call answering ``outcomes`` in turn: an exception is raised, anything else returned."""
    left = list(outcomes)

    async def call() -> object:
        outcome = left.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call


def _hour_long_recovery(clock: VirtualClock, events: list[StateEvent]) -> Recovery:
    """The guide's outer loop without jitter (120, 240 ... s) and a deadline of an hour."""
    return Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=None,
        clock=clock,
        policy=BackoffPolicy.relogin(jitter=0.0, deadline=3600.0),
        request_policy=GUIDE,
        hooks=EventHooks(on_state=[events.append]),
    )


async def test_an_episode_ended_by_an_error_the_loop_cannot_help_with_is_not_carried_over() -> None:
    """A call that fails with a 404 after its round ends the episode: an unrelated outage two
    hours later starts afresh (its first pause 120 s) instead of giving up at once against the
    old episode's deadline."""
    clock = VirtualClock()
    events: list[StateEvent] = []
    recovery = _hour_long_recovery(clock, events)
    with pytest.raises(ClientStatusError):
        await recovery.run(_scripted(exhausted(), ClientStatusError("404", status=404)))
    assert not recovery.recovering
    assert events[-1].name == "gave_up"
    assert events[-1].details == {
        "reason": "not recoverable",
        "attempts": 1,
        "error": "ClientStatusError",
    }
    await clock.sleep(7200)
    assert await recovery.run(_scripted(exhausted(), "ok")) == "ok"
    assert list(recovery.pauses) == [120.0, 120.0]


async def test_an_episode_ended_by_a_cancellation_after_its_round_is_not_carried_over() -> None:
    clock = VirtualClock()
    recovery = _hour_long_recovery(clock, [])
    running_again = asyncio.Event()
    runs = 0

    async def call() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise exhausted()
        running_again.set()
        await asyncio.Event().wait()  # the retried call hangs until its caller gives up
        return "never"

    task = asyncio.create_task(recovery.run(call))
    await running_again.wait()  # after the 120 s pause, the call runs again, and hangs
    assert recovery.recovering
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not recovery.recovering
    assert await recovery.run(_scripted(exhausted(), "ok")) == "ok"
    assert list(recovery.pauses) == [120.0, 120.0]


async def test_an_episode_stays_open_while_another_call_that_went_through_it_runs() -> None:
    """Two calls recover in one round; one then fails with a 404: the episode is the other's
    too, so its next failure waits the episode's next, longer pause."""
    clock = VirtualClock()
    recovery = _hour_long_recovery(clock, [])
    release = asyncio.Event()
    runs = 0

    async def other() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise exhausted()
        if runs == 2:
            await release.wait()
            raise exhausted()
        return "ok"

    first = asyncio.create_task(
        recovery.run(_scripted(exhausted(), ClientStatusError("404", status=404)))
    )
    second = asyncio.create_task(recovery.run(other))
    with pytest.raises(ClientStatusError):
        await first
    assert recovery.recovering
    release.set()
    assert await second == "ok"
    assert list(recovery.pauses) == [120.0, 240.0]
    assert not recovery.recovering


async def test_twenty_failing_calls_share_each_recovery_round(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [None] + [503] * 4)
    sim.faults.script("GET", USERS, [503] * 80)
    engine, auth = seeded_engine(sim, clock, [])
    async with engine:
        results = await asyncio.gather(
            *(
                engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
                for _ in range(20)
            )
        )
        assert {r.status for r in results} == {200}
    # The first login, one recovery round whose login fails (schedule of 4), one more round.
    assert engine.recovery.relogins == 2
    assert auth.logins == 2


# -- properties on virtual time ---------------------------------------------------------------


class CountingAuth:
    """An auth provider that counts re-logins and always succeeds."""

    def __init__(self) -> None:
        self.logins = 0

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials()

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> Credentials:
        self.logins += 1
        return Credentials(generation=self.logins)

    async def close(self) -> None:
        return None


policies = st.builds(
    BackoffPolicy,
    first=st.floats(min_value=1.0, max_value=300.0),
    factor=st.floats(min_value=1.1, max_value=4.0),
    cap=st.floats(min_value=300.0, max_value=2000.0),
    jitter=st.floats(min_value=0.0, max_value=0.5),
    floor=st.floats(min_value=0.0, max_value=20.0),
    max_attempts=st.one_of(st.none(), st.integers(min_value=1, max_value=12)),
    deadline=st.one_of(st.none(), st.floats(min_value=100.0, max_value=20_000.0)),
)
schedules = st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=0, max_size=4).map(
    lambda pauses: RetryPolicy(pauses=tuple(pauses))
)


def run_recovery(
    policy: BackoffPolicy,
    request_policy: RetryPolicy,
    failures: int,
    callers: int,
    seed: int,
) -> tuple[Recovery, CountingAuth, list[object], float]:
    """Run ``callers`` calls that fail ``failures`` times in all, then succeed, on virtual time."""
    auth = CountingAuth()
    clock = VirtualClock()
    results: list[object] = []

    async def scenario() -> Recovery:
        recovery = Recovery(
            domains=StaticDomains({}),
            auth=auth,
            clock=clock,
            policy=policy,
            request_policy=request_policy,
            rng=random.Random(seed),
            hooks=EventHooks(),
        )
        left = failures

        async def call() -> str:
            nonlocal left
            await clock.sleep(0)
            if left > 0:
                left -= 1
                raise exhausted()
            return "ok"

        results.extend(
            await asyncio.gather(
                *(recovery.run(call) for _ in range(callers)), return_exceptions=True
            )
        )
        return recovery

    recovery = asyncio.run(scenario())
    return recovery, auth, results, clock.now()


@settings(max_examples=60, deadline=None)
@given(
    policy=policies,
    request_policy=schedules,
    failures=st.integers(min_value=1, max_value=15),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_recovery_pauses_never_shrink_start_above_the_schedule_and_respect_cap_and_deadline(
    policy: BackoffPolicy, request_policy: RetryPolicy, failures: int, seed: int
) -> None:
    """Property: within an episode, each outer pause is at least the one before it; the first
    is at least the request schedule's last pause; none exceeds the jittered cap (or the floors);
    the pauses never run past the policy's deadline; there are at most max_attempts of them."""
    recovery, auth, results, elapsed = run_recovery(policy, request_policy, failures, 1, seed)
    pauses = list(recovery.pauses)
    assert pauses == sorted(pauses)
    if pauses:
        assert pauses[0] >= request_policy.last_pause
    ceiling = max(policy.cap * (1 + policy.jitter), policy.floor, request_policy.last_pause)
    assert all(p <= ceiling + 1e-9 for p in pauses)
    if policy.deadline is not None:
        assert sum(pauses) <= policy.deadline + 1e-6
    if policy.max_attempts is not None:
        assert len(pauses) <= policy.max_attempts
    assert elapsed == pytest.approx(sum(pauses))
    # Either it recovered after one pause per failure, or it gave up with RecoveryFailed.
    if results == ["ok"]:
        assert len(pauses) == failures
    else:
        assert len(results) == 1
        assert isinstance(results[0], RecoveryFailed)
    assert auth.logins == len(pauses)


@settings(max_examples=40, deadline=None)
@given(
    policy=policies,
    rounds=st.integers(min_value=1, max_value=8),
    callers=st.integers(min_value=1, max_value=30),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_number_of_logins_is_bounded_by_rounds_not_by_callers(
    policy: BackoffPolicy, rounds: int, callers: int, seed: int
) -> None:
    """Property: when any number of calls fail together, each recovery round logs in once:
    ``callers`` calls that each fail ``rounds`` times cause ``rounds`` logins (never more than
    the policy's max_attempts), not ``callers * rounds``."""
    recovery, auth, results, _ = run_recovery(policy, GUIDE, rounds * callers, callers, seed)
    assert auth.logins == len(recovery.pauses)
    assert auth.logins <= rounds
    if policy.max_attempts is not None:
        assert auth.logins <= policy.max_attempts
    if results == ["ok"] * callers:
        assert auth.logins == rounds
    else:
        assert all(isinstance(r, RecoveryFailed) for r in results)


class GenerationAuth(CountingAuth):
    """A CountingAuth that, like the login providers, exposes how many logins succeeded."""

    @property
    def generation(self) -> int:
        return self.logins


def _relogin_recovery(auth: CountingAuth, clock: VirtualClock) -> Recovery:
    """The guide's outer loop without jitter (its first pause is 120 s) over ``auth``."""
    return Recovery(
        domains=StaticDomains({}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy.relogin(jitter=0.0),
        request_policy=GUIDE,
    )


def _exhausted_once() -> Callable[[], Awaitable[str]]:
    """A call whose first run exhausts the request schedule and whose next runs answer "ok"."""
    failures = 1

    async def call() -> str:
        nonlocal failures
        if failures:
            failures -= 1
            raise exhausted()
        return "ok"

    return call


async def test_a_login_made_elsewhere_during_the_pause_is_not_repeated_by_the_round() -> None:
    """A socket re-authenticating after 4401 while the outer loop waits has already logged in:
    the round retries the call with those credentials instead of logging in once more."""
    auth = GenerationAuth()
    clock = VirtualClock()
    recovery = _relogin_recovery(auth, clock)
    call = _exhausted_once()

    async def socket_reauthenticates() -> None:
        await clock.sleep(30.0)  # during the round's 120 s pause
        await auth.relogin()

    other = asyncio.create_task(socket_reauthenticates())
    assert await recovery.run(call) == "ok"
    await other
    assert auth.logins == 1
    assert recovery.relogins == 0
    assert list(recovery.pauses) == [120.0]


async def test_without_a_login_elsewhere_the_round_logs_in_itself() -> None:
    auth = GenerationAuth()
    clock = VirtualClock()
    recovery = _relogin_recovery(auth, clock)
    call = _exhausted_once()

    assert await recovery.run(call) == "ok"
    assert auth.logins == 1
    assert recovery.relogins == 1


async def test_a_long_lived_recovery_keeps_only_its_latest_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that lives for months recovers now and then: each episode's pauses are noted,
    the newest KEPT_PAUSES of them kept, so the history stays bounded."""
    monkeypatch.setattr(recovery_module, "KEPT_PAUSES", 3)
    auth = GenerationAuth()
    clock = VirtualClock()
    recovery = _relogin_recovery(auth, clock)
    for _ in range(5):
        assert await recovery.run(_exhausted_once()) == "ok"
    assert recovery.relogins == 5
    assert list(recovery.pauses) == [120.0, 120.0, 120.0]
    assert recovery.pauses.maxlen == 3


async def test_a_cancelled_round_owner_leaves_the_round_running_for_the_other_callers() -> None:
    """Two calls wait for one round; the one whose failure started it is cancelled during the
    pause. The round ran in that caller's task, so it died with it: the other started a new
    round at the next attempt, its 240 s pause counted from then, the 100 s already waited
    thrown away. The round is shared now: the other call is retried at 120 s, as planned."""
    clock = VirtualClock()
    events: list[StateEvent] = []
    recovery = _hour_long_recovery(clock, events)
    first = asyncio.ensure_future(recovery.run(_scripted(exhausted(), "never")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(recovery.run(_scripted(exhausted(), "ok")))
    await clock.sleep(100.0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "ok"
    assert clock.now() == pytest.approx(120.0)
    assert list(recovery.pauses) == [120.0]
    assert [e.name for e in events] == ["relogin_scheduled", "recovered"]


async def test_a_round_whose_every_caller_gave_up_is_stopped_and_the_episode_ends() -> None:
    clock = VirtualClock()
    events: list[StateEvent] = []
    recovery = _hour_long_recovery(clock, events)
    callers = [asyncio.ensure_future(recovery.run(_scripted(exhausted()))) for _ in range(2)]
    await clock.sleep(10.0)
    for caller in callers:
        caller.cancel()
    for caller in callers:
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert not recovery.recovering
    await clock.sleep(7200)
    assert await recovery.run(_scripted(exhausted(), "ok")) == "ok"
    assert list(recovery.pauses) == [120.0, 120.0], "a fresh episode, its first pause again"
