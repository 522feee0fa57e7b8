"""The outer loop and overload protection keep their documented growth.

- A call refused by an open circuit waits on the breaker between re-logins; that wait counts
  toward the round's pause, so the re-logins stay the policy's pause apart (2, 4, 8 min), not
  that pause plus the breaker waits before it.
- A re-opened circuit breaker never takes a shorter break than the one before it (jitter at
  the cap drew 144 s, then 96 s).
- BackoffPolicy's un-jittered delays strictly grow until the cap, a floor above ``first``
  included (it gave 15, 15, 15, 15, 16 s).
- A refused certificate says nothing about the service: it never opens the circuit, so it
  surfaces as the final TLS error, never as a retryable ``CircuitOpen``; nor does it close one,
  or count as a success in a closed one: a half-open probe meeting it is released, as a
  cancelled probe is, and the fleet is told nothing.
- The rest of a round's pause after breaker waits keeps the re-login policy's floor, and the
  ``relogin_scheduled`` event says exactly what was waited and what the round sleeps.
- A fleet trip entry with a bad ``break`` is still the fleet's trip: adopted, its break read
  as 0.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import (
    CircuitOpen,
    ConnectionFailed,
    RecoveryFailed,
    RetriesExhausted,
    ServerStatusError,
)
from le_transport.events import StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker, Outcome, OutcomeKind
from le_transport.providers import StaticDomains
from le_transport.recovery import Recovery
from le_transport.state import MemoryStore, state_key
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory
from tests.test_guard_hot_path import _Call
from tests.test_recovery import CountingAuth


def _engine_behind_a_breaker(
    host: str,
    clock: VirtualClock,
    seen: list[tuple[float, StateEvent]],
    *,
    breaks: BackoffPolicy,
    recovery: BackoffPolicy,
) -> Engine:
    """An engine to ``svc`` at ``host`` behind a breaker opening at half of 4 calls with
    ``breaks``, re-logging in on ``recovery``, that logs each event with its time in ``seen``."""
    breaker = CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=4, sampling_window=300.0, breaks=breaks
    )
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    return Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        overload=guard,
        retry=RetryPolicy(attempt_timeout=None),
        recovery=recovery,
        hooks=EventHooks(on_state=(lambda e: seen.append((clock.now(), e)),)),
    )


async def test_breaker_waits_count_toward_the_rounds_pause(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A service down (503) behind a breaker whose breaks stay shorter than the round's pause:
    after each re-login the call waits on the breaker (5 s steps), then starts the next round.
    The re-logins come 120, 240 and 480 s apart, as the policy says: the round sleeps only
    what is left of its pause (its event says how much was ``waited``), not the whole pause
    again (120, 240 + 240, 480 + 480 s before)."""
    backend = Backend(503)
    seen: list[tuple[float, StateEvent]] = []
    host = await serve(backend.app())
    engine = _engine_behind_a_breaker(
        host,
        clock,
        seen,
        breaks=BackoffPolicy(first=5.0, cap=600.0, jitter=0.0, floor=0.0),
        recovery=BackoffPolicy.relogin(jitter=0.0, max_attempts=3),
    )
    async with engine:
        with pytest.raises(RecoveryFailed):
            await engine.request("GET", "svc", "/x", recover=True)
    scheduled = [(at, e.details) for at, e in seen if e.name == "relogin_scheduled"]
    assert [d["pause"] for _, d in scheduled] == [120.0, 240.0, 480.0]
    # When each re-login ran: what the round slept (the rest of its pause) after its event.
    relogins = [at + float(d.get("sleep", d["pause"])) for at, d in scheduled]
    gaps = [b - a for a, b in itertools.pairwise(relogins)]
    # Never shorter than the pause (the calls' own runs between breaker waits only add).
    assert gaps[0] >= 240.0
    assert gaps[1] >= 480.0
    assert gaps == pytest.approx([240.0, 480.0], abs=20)
    # The rounds after the first followed breaker waits: each says how much it counted.
    assert all(d.get("waited", 0.0) > 0 for _, d in scheduled[1:]), scheduled
    (gave_up,) = [e for _, e in seen if e.name == "gave_up"]
    # The request schedule's 30 s, then 120 + 240 + 480 s of re-login pauses and the calls'
    # own short runs in between; the loop gives up at the fourth failure.
    assert gave_up.details["elapsed"] <= 120 + 240 + 480 + 60, gave_up.details


async def test_breaker_waits_never_shorten_the_pause_below_the_request_schedules(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """However long the call waited on the breaker, the round still sleeps at least the request
    schedule's last pause (15 s) before re-logging in: the guide's floor between a failure and
    its outer retry. Here a re-login policy of 20 s: the call waits up to 20 s on 5 s breaks,
    and the round's sleep is never below 15 s."""
    backend = Backend(503)
    seen: list[tuple[float, StateEvent]] = []
    host = await serve(backend.app())
    engine = _engine_behind_a_breaker(
        host,
        clock,
        seen,
        breaks=BackoffPolicy(first=5.0, factor=1.01, cap=6.0, jitter=0.0, floor=0.0),
        recovery=BackoffPolicy(first=20.0, factor=1.01, cap=21.0, jitter=0.0, max_attempts=3),
    )
    async with engine:
        with pytest.raises(RecoveryFailed):
            await engine.request("GET", "svc", "/x", recover=True)
    scheduled = [e.details for _, e in seen if e.name == "relogin_scheduled"]
    assert len(scheduled) == 3
    for details in scheduled:
        assert float(details.get("sleep", details["pause"])) >= RetryPolicy().last_pause == 15.0
        assert details.get("waited", 0.0) <= details["pause"], scheduled


def _reopens(breaker: CircuitBreaker, draws: list[float]) -> list[float]:
    """The breaks of ``breaker`` opened by one failure, then re-opened by a failed probe at the
    end of each break, with the jitter's ``draws`` in turn."""
    status = breaker.record(breaker.closed(), 0.0, failed=True, rand=draws[0])
    now, breaks = 0.0, [status.open_until]
    for rand in draws[1:]:
        now = status.open_until
        admitted = breaker.admit(status, now)
        assert admitted.probe
        status = breaker.record(admitted.status, now, failed=True, rand=rand, probe=True)
        assert status.open_until - now == pytest.approx(status.last_break)
        breaks.append(status.last_break)
    return breaks


def test_a_reopened_breaker_never_takes_a_shorter_break() -> None:
    """At the cap (120 s ±20%) a re-open's fresh draw could be shorter than the break before:
    144 s, then 96 s. Each re-open's break is at least the last, which the status keeps
    (``last_break``); it grows as documented (5 s doubling) until the cap's draws."""
    breaker = CircuitBreaker(minimum_throughput=1)
    breaks = _reopens(breaker, [0.5] * 5 + [0.999, 0.0, 0.5])
    assert breaks[:5] == pytest.approx([5.0, 10.0, 20.0, 40.0, 80.0])
    top = breaker.breaks.delay(6, 0.999)  # 143.95 s
    assert breaks[5:] == pytest.approx([top, top, top]), "not 96 s after 144 s"


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12))
def test_reopened_breaks_never_shrink_whatever_the_draws(draws: list[float]) -> None:
    """Invariant: the breaks of one escalation never shrink, and stay within longest_break."""
    breaker = CircuitBreaker(minimum_throughput=1)
    breaks = _reopens(breaker, draws)
    assert all(a <= b for a, b in itertools.pairwise(breaks))
    assert max(breaks) <= breaker.longest_break


def test_a_close_starts_the_escalation_over() -> None:
    """A probe's success closes the breaker: its next opening is the first break again."""
    breaker = CircuitBreaker(minimum_throughput=1)
    status = breaker.record(breaker.closed(), 0.0, failed=True, rand=0.999)
    for _ in range(6):
        now = status.open_until
        status = breaker.record(
            breaker.admit(status, now).status, now, failed=True, rand=0.999, probe=True
        )
    now = status.open_until
    closed = breaker.record(breaker.admit(status, now).status, now, failed=False, probe=True)
    assert (closed.opens, closed.last_break) == (0, 0.0)
    reopened = breaker.record(closed, now, failed=True, rand=0.5)
    assert reopened.open_until - now == pytest.approx(5.0)


FLEET_BREAKER = CircuitBreaker(
    minimum_throughput=4,
    sampling_window=30.0,
    breaks=BackoffPolicy(first=5.0, factor=2.0, cap=120.0, jitter=0.0, floor=0.0),
)
HOST = "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("published", "expected"),
    [
        # The fleet's last break was 100 s: this process's failed probe re-opens for no less.
        ({"opens": 1, "half_open": 30.0, "break": 100.0}, 100.0),
        # An entry written before the break was published in it: read, the schedule's 10 s.
        ({"opens": 1, "half_open": 30.0}, 10.0),
    ],
)
async def test_a_fleet_probe_reopens_for_no_shorter_a_break_than_the_fleets(
    published: dict[str, float], expected: float
) -> None:
    """The trip entry the fleet shares carries the break's length (``break``): a process that
    adopted the fleet's break and whose probe fails re-opens for at least that long, as the
    process that opened it would. An entry without it (an older process's) is still read."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    guard = OverloadGuard(budget=None, breaker=FLEET_BREAKER, store=store, account="1", clock=clock)
    trip_key = state_key("1", "breaker", "svc", HOST)
    # A break that has just ended: the entry outlives it by its half-open tail.
    await store.set(trip_key, json.dumps({**published, "id": "other:1"}), ttl=30.0)
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None, "half-open on the fleet's trip: the probe goes"
    await guard.settle(probe, 1, Outcome.response(503))
    refused = await guard.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at - clock.now() == pytest.approx(expected)
    entry = await store.get(trip_key)
    assert entry is not None
    data = json.loads(entry.value)
    assert data["opens"] == 2
    assert data["break"] == pytest.approx(expected), "published for the fleet's next re-open"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (BackoffPolicy(first=1.0, factor=2.0, cap=120.0, floor=15.0), [15, 30, 60, 120, 120]),
        (BackoffPolicy.relogin(first=5.0), [15, 30, 60, 120, 240]),
        (BackoffPolicy.relogin(), [120, 240, 480, 960, 960]),
    ],
)
def test_backoff_base_delays_grow_from_the_floor(
    policy: BackoffPolicy, expected: list[float]
) -> None:
    """A floor above ``first`` is where the growth starts, not a plateau: the un-jittered delays
    strictly grow until the cap (the documented relogin schedule is unchanged)."""
    delays = [policy.base_delay(n) for n in range(1, 6)]
    assert delays == expected
    below_cap = [d for d in delays if d < policy.cap]
    assert all(a < b for a, b in itertools.pairwise(below_cap))


async def test_a_refused_certificate_never_opens_the_circuit(
    tmp_path: Path, clock: VirtualClock
) -> None:
    """A refused certificate is final and the caller's to fix (a wrong CA, a host that is not
    who it claims): it must surface as itself, never looped. Counted as a breaker failure, a
    few of them opened the circuit, and the next calls failed with ``CircuitOpen`` (retryable:
    ``recover=True`` then waited through re-login rounds) instead of the TLS error."""
    from le_transport.testing.simulator.serve import self_signed_certificate, server_tls_context

    cert, key = self_signed_certificate(tmp_path)
    backend = Backend(200)
    runner = web.AppRunner(backend.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls_context(cert, key))
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_throughput=2)
    guard = OverloadGuard(budget=None, breaker=breaker, clock=clock)
    try:
        async with Engine({"svc": host}, clock=clock, overload=guard) as engine:
            for recover in (False, False, False, True, True):
                with pytest.raises(ConnectionFailed) as info:
                    await engine.request("GET", "svc", "/x", recover=recover)
                kinds = [a.outcome.kind for a in info.value.attempts]
                assert kinds == [OutcomeKind.TLS_REJECTED]
            assert guard.breaker_state("svc", host) is BreakerState.CLOSED
    finally:
        await runner.cleanup()
    assert backend.hits == 0
    assert clock.now() == 0.0, "no pause, no round: the refusal is final"


# -- A refused certificate gives no verdict ----------------------------------------------------

CERT_REFUSED = Outcome.failure(OutcomeKind.TLS_REJECTED, "ClientConnectorCertificateError")


def test_a_refused_certificate_is_neither_a_failure_nor_a_success() -> None:
    """The breaker's three results: a failure (5xx, 429, transport), a success (any other
    answer) and no verdict (a refused certificate, recorded neither way)."""
    assert CircuitBreaker.gives_no_verdict(CERT_REFUSED)
    assert not CircuitBreaker.counts_as_failure(CERT_REFUSED)
    for outcome in (
        Outcome.response(503),
        Outcome.response(404),
        Outcome.response(200),
        Outcome.failure(OutcomeKind.CONNECT_FAILED, "ClientConnectorSSLError"),
        Outcome.failure(OutcomeKind.TIMEOUT, "AttemptTimeout"),
    ):
        assert not CircuitBreaker.gives_no_verdict(outcome), outcome


async def _open_breaker(guard: OverloadGuard, failures: int) -> None:
    for _ in range(failures):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, Outcome.response(503))


async def test_a_fleet_probe_meeting_a_refused_certificate_leaves_the_circuit_half_open() -> None:
    """Process A sees the service down (503s) and opens the fleet's breaker. Process B (a wrong
    CA bundle) takes the fleet's half-open probe and meets a certificate refusal: that says
    nothing about the service behind the TLS terminator. Recorded as the probe's success, it
    closed B's breaker and published the fleet's closed mark, A closed too and sent everything
    at the service that had just failed. The probe is released instead, as a cancelled one is:
    both stay half-open, the trip entry stays the fleet's trip (no closed mark), and A takes
    the next probe at once (the fleet's probe lock is freed)."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)

    def guard() -> OverloadGuard:
        return OverloadGuard(
            budget=None,
            breaker=FLEET_BREAKER,
            store=store,
            account="1",
            clock=clock,
            sync_interval=0.0,
        )

    a, b = guard(), guard()
    await _open_breaker(a, 4)
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    trip_key = state_key("1", "breaker", "svc", HOST)
    trip = await store.get(trip_key)
    assert trip is not None
    assert "opens" in json.loads(trip.value)
    clock.advance(6.0)  # the 5 s break is over: half-open
    probe = _Call("svc", HOST)
    assert await b.admit(probe, 1) is None, "B takes the fleet's probe"
    await b.settle(probe, 1, CERT_REFUSED)
    assert b.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    after = await store.get(trip_key)
    assert after is not None
    assert "closed" not in json.loads(after.value), "no closed mark published"
    assert json.loads(after.value)["opens"] == 1
    assert await store.get(state_key("1", "breaker-probe", "svc", HOST)) is None, "lock freed"
    # A reads the fleet's entry: still half-open, and its call is the next probe, not an
    # ordinary attempt on a closed breaker. Its 503 re-opens the fleet's breaker, longer.
    second = _Call("svc", HOST)
    assert await a.admit(second, 1) is None
    assert a.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    await a.settle(second, 1, Outcome.response(503))
    assert a.breaker_state("svc", HOST) is BreakerState.OPEN
    refused = await a.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at - clock.now() == pytest.approx(10.0), "the second break"


async def test_a_local_probe_meeting_a_refused_certificate_frees_the_half_open_slot() -> None:
    """Without a fleet: the probe meeting a refused certificate neither closes nor re-opens the
    breaker; the half-open slot is free, so the next call is the probe (not refused for the
    probe's lease), and its answer decides."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=FLEET_BREAKER, clock=clock)
    await _open_breaker(guard, 4)
    clock.advance(6.0)
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None
    await guard.settle(probe, 1, CERT_REFUSED)
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN
    second = _Call("svc", HOST)
    assert await guard.admit(second, 1) is None, "the slot is free: the next call probes"
    assert isinstance(await guard.admit(_Call("svc", HOST), 1), CircuitOpen), "one probe out"
    await guard.settle(second, 1, Outcome.response(200))
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED


async def test_refused_certificates_do_not_dilute_a_closed_breakers_failures() -> None:
    """In a closed breaker a refused certificate is not counted at all: taken for a success,
    refusals in the window kept a down service's failure ratio under the threshold."""
    clock = VirtualClock(start=100.0, autojump=False)
    guard = OverloadGuard(budget=None, breaker=FLEET_BREAKER, clock=clock)
    await _open_breaker(guard, 3)
    for _ in range(10):
        call = _Call("svc", HOST)
        assert await guard.admit(call, 1) is None
        await guard.settle(call, 1, CERT_REFUSED)
    assert guard.breaker_state("svc", HOST) is BreakerState.CLOSED, "3 attempts of 4 needed"
    await _open_breaker(guard, 1)
    assert guard.breaker_state("svc", HOST) is BreakerState.OPEN, "4 failures in 4"


# -- The rest of a pause after breaker waits ---------------------------------------------------


class TimedAuth(CountingAuth):
    """Counts re-logins, and keeps when each ran."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[float] = []

    async def relogin(self):  # type: ignore[no-untyped-def]
        self.at.append(self.clock.now())
        return await super().relogin()


async def test_the_rest_of_a_pause_after_breaker_waits_keeps_the_policys_floor() -> None:
    """A request schedule without pauses (``RetryPolicy(pauses=())``): the call waits on the
    breaker (50 + 50 s) up to the round's whole pause (100 s), and the round slept 0 s,
    re-logging in at once, below the re-login policy's floor (15 s, "never under 15 s"). The
    event says what the call waited (100 s) and what the round sleeps (15 s)."""
    clock = VirtualClock()
    auth = TimedAuth(clock)
    events: list[tuple[float, StateEvent]] = []
    recovery = Recovery(
        domains=StaticDomains({}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy(first=100.0, cap=1000.0, jitter=0.0, floor=15.0, max_attempts=1),
        request_policy=RetryPolicy(pauses=()),
        hooks=EventHooks(on_state=(lambda e: events.append((clock.now(), e)),)),
    )
    runs = 0

    async def call() -> str:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise CircuitOpen("open", retry_at=clock.now() + 50.0)
        if runs == 3:
            raise CircuitOpen("open", retry_at=clock.now() + 500.0)
        return "ok"

    assert await recovery.run(call) == "ok"
    ((at, details),) = [(at, e.details) for at, e in events if e.name == "relogin_scheduled"]
    assert details["pause"] == 100.0
    assert details["waited"] == 100.0, "what the call really waited on the circuit"
    assert details["sleep"] == 15.0
    assert auth.at == [at + 15.0]


step = st.tuples(
    st.floats(0.0, 20.0),  # the call's own run time
    st.sampled_from(["open", "open", "open", "exhausted", "ok"]),
    st.floats(-5.0, 400.0),  # retry_at - now
)


@settings(max_examples=150, deadline=None)
@given(
    first=st.floats(15.0, 200.0),
    jitter=st.floats(0.0, 0.3),
    pauses=st.lists(st.floats(0.0, 30.0), max_size=3),
    scripts=st.lists(st.lists(step, min_size=1, max_size=12), min_size=1, max_size=4),
    cancels=st.lists(st.one_of(st.none(), st.floats(0.0, 2000.0)), min_size=4, max_size=4),
    deadlines=st.lists(st.one_of(st.none(), st.floats(1.0, 3000.0)), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_relogins_are_never_closer_than_their_pause(
    first: float,
    jitter: float,
    pauses: list[float],
    scripts: list[list[tuple[float, str, float]]],
    cancels: list[float | None],
    deadlines: list[float | None],
    seed: int,
) -> None:
    """Invariant, whatever the calls (refused by an open circuit, failing, succeeding, cancelled,
    with deadlines): each re-login runs what its event says after it (``sleep``, else the whole
    ``pause``), never sooner than the request schedule's last pause and the policy's floor
    after breaker waits, and within an episode no sooner than ``pause`` after the last."""
    clock = VirtualClock()
    auth = TimedAuth(clock)
    events: list[tuple[float, StateEvent]] = []
    request_policy = RetryPolicy(pauses=tuple(sorted(pauses)))
    policy = BackoffPolicy(first=first, cap=2000.0, jitter=jitter, floor=15.0)

    async def scenario() -> None:
        recovery = Recovery(
            domains=StaticDomains({}),
            auth=auth,
            clock=clock,
            policy=policy,
            request_policy=request_policy,
            rng=random.Random(seed),
            hooks=EventHooks(on_state=(lambda e: events.append((clock.now(), e)),)),
        )

        def caller(script: list[tuple[float, str, float]]):  # type: ignore[no-untyped-def]
            it = iter(script)

            async def call() -> str:
                run, kind, retry_in = next(it, (1.0, "ok", 0.0))
                await clock.sleep(run)
                if kind == "open":
                    raise CircuitOpen("open", retry_at=clock.now() + retry_in)
                if kind == "exhausted":
                    raise RetriesExhausted("gave up", last=ServerStatusError("503", status=503))
                return "ok"

            return call

        tasks = [
            asyncio.ensure_future(
                recovery.run(caller(s), until=None if d is None else clock.now() + d)
            )
            for s, d in zip(scripts, deadlines, strict=False)
        ]

        async def cancel_later(task: asyncio.Task[str], at: float) -> None:
            await clock.sleep(at)
            task.cancel()

        killers = [
            asyncio.ensure_future(cancel_later(t, c))
            for t, c in zip(tasks, cancels, strict=False)
            if c is not None
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        for k in killers:
            k.cancel()
        await asyncio.gather(*killers, return_exceptions=True)

    asyncio.run(scenario())
    used: set[float] = set()
    last_relogin: float | None = None
    for at, e in events:
        if e.name in ("recovered", "gave_up"):
            last_relogin = None
        if e.name != "relogin_scheduled":
            continue
        pause = float(e.details["pause"])
        sleep = float(e.details.get("sleep", pause))
        assert 0.0 <= sleep <= pause, e.details
        if "waited" in e.details:
            # (What the call really waited: more than the pause when its waits were measured
            # against a later round's longer pause, the episode having ended meanwhile.)
            assert float(e.details["waited"]) > 0.0, e.details
            assert sleep >= max(request_policy.last_pause, policy.floor) - 1e-3, e.details
        # The re-login of this scheduling, if it ran (a cancelled round's never does).
        match = [t for t in auth.at if abs(t - (at + sleep)) <= 1e-6 and t not in used]
        if not match:
            continue
        used.add(match[0])
        if last_relogin is not None:
            assert match[0] - last_relogin >= pause - 1e-3, (last_relogin, match[0], e.details)
        last_relogin = match[0]


# -- A fleet trip entry's bad "break" ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "read_as"),
    [
        ("NaN", 0.0),
        ("Infinity", 0.0),
        ("-Infinity", 0.0),
        ("1e999", 0.0),  # inf to json
        ("1" + "0" * 400, 0.0),  # an int past float's range
        ("-1", 0.0),
        ("true", 0.0),
        ('"10"', 0.0),
        ("null", 0.0),
        ("[]", 0.0),
        ("{}", 0.0),
        ("-0.0", 0.0),
        ("100", 100.0),
        ("1e308", FLEET_BREAKER.longest_break),  # longer than this breaker ever takes
    ],
)
async def test_a_trip_with_a_bad_break_is_still_adopted(raw: str, read_as: float) -> None:
    """A trip entry whose ``break`` is not a finite number >= 0 is still the fleet's trip: this
    process adopts it (half-open on it: the probe goes, and its failure re-opens the breaker
    for the fleet's second break), the bad break read as 0, as in an entry without one. Taken
    for a damaged entry, the live trip was ignored entirely, and a probe's 503 opened nothing.
    A good break still sets the floor of the re-open, at most this breaker's longest break."""
    clock = VirtualClock(start=100.0, autojump=False)
    store = MemoryStore(clock)
    guard = OverloadGuard(budget=None, breaker=FLEET_BREAKER, store=store, account="1", clock=clock)
    trip_key = state_key("1", "breaker", "svc", HOST)
    await store.set(
        trip_key, f'{{"opens": 1, "half_open": 30.0, "break": {raw}, "id": "o:1"}}', ttl=30.0
    )
    probe = _Call("svc", HOST)
    assert await guard.admit(probe, 1) is None
    assert guard.breaker_state("svc", HOST) is BreakerState.HALF_OPEN, "the trip is adopted"
    await guard.settle(probe, 1, Outcome.response(503))
    refused = await guard.admit(_Call("svc", HOST), 1)
    assert isinstance(refused, CircuitOpen)
    assert refused.retry_at - clock.now() == pytest.approx(max(10.0, read_as))
    entry = await store.get(trip_key)
    assert entry is not None
    data = json.loads(entry.value)
    assert data["opens"] == 2
    assert data["break"] == pytest.approx(max(10.0, read_as))
