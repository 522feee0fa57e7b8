"""Round 17: a call refused by an open circuit waits for the breaker (its break, its half-open
probe's verdict) rather than for a recovery round and a re-login, which cannot close a circuit;
a circuit shut longer than the round's pause still gets the round."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine, EventHooks, RetryPolicy
from le_transport.errors import (
    CircuitOpen,
    DeadlineExceeded,
    RecoveryFailed,
    RetriesExhausted,
    ServerStatusError,
    UnexpectedAnswer,
)
from le_transport.events import StateEvent
from le_transport.middleware.overload import OverloadGuard
from le_transport.policies import BackoffPolicy, BreakerState, CircuitBreaker
from le_transport.providers import Credentials, StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock
from tests.backends import Backend
from tests.conftest import ServerFactory


class HoldingBackend(Backend):
    """Holds the first request that arrives from ``held_from`` on (clock time) for a few loop
    turns: the half-open breaker's probe, still out while the other calls are admitted."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(503)
        self.clock = clock
        self.held_from = float("inf")
        self.held = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.clock.now() >= self.held_from and not self.held:
            self.held += 1
            for _ in range(50):
                await asyncio.sleep(0)
        return await super().handle(request)


class CountingAuth:
    """Static credentials; counts the recovery loop's re-logins."""

    credential_headers = frozenset({"authorization"})

    def __init__(self) -> None:
        self.relogins = 0

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials(headers={"Authorization": "Bearer t"})

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> None:
        self.relogins += 1

    async def close(self) -> None:
        return None


class Setup:
    def __init__(self, clock: VirtualClock, host: str, backend: HoldingBackend, brk: float):
        self.backend = backend
        self.states: list[StateEvent] = []
        hooks = EventHooks(on_state=[self.states.append])
        breaker = CircuitBreaker(
            failure_ratio=0.5,
            minimum_throughput=4,
            sampling_window=300.0,
            breaks=BackoffPolicy(first=brk, cap=600.0, jitter=0.0, floor=0.0),
        )
        self.guard = OverloadGuard(budget=None, breaker=breaker, clock=clock, hooks=hooks)
        self.auth = CountingAuth()
        self.engine = Engine(
            {"svc": host},
            scheme="http",
            clock=clock,
            auth=self.auth,
            overload=self.guard,
            hooks=hooks,
            retry=RetryPolicy(attempt_timeout=None),
            recovery=BackoffPolicy(first=100.0, cap=3600.0, jitter=0.0, floor=0.0),
        )

    def named(self, name: str) -> list[StateEvent]:
        return [e for e in self.states if e.name == name]


async def _setup(serve: ServerFactory, clock: VirtualClock, brk: float) -> Setup:
    backend = HoldingBackend(clock)
    host = await serve(backend.app())
    setup = Setup(clock, host, backend, brk)
    await setup.engine.start()
    with pytest.raises(RetriesExhausted):
        await setup.engine.request("GET", "svc", "/x")  # four 503s open the circuit
    assert setup.guard.breaker_state("svc", host) is BreakerState.OPEN
    return setup


async def test_calls_turned_away_while_the_probe_is_out_wait_for_its_verdict(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    setup = await _setup(serve, clock, brk=5.0)
    async with setup.engine as engine:
        await clock.sleep(5.0)  # the break ends: half-open
        setup.backend.status = 200
        setup.backend.held_from = clock.now()
        started = clock.now()
        calls = [
            asyncio.ensure_future(engine.request("GET", "svc", "/x", recover=True))
            for _ in range(4)
        ]
        results = await asyncio.gather(*calls)
        assert [r.status for r in results] == [200] * 4
        assert setup.backend.held == 1, "the probe was out while the others were admitted"
        # The three the probe's lease turned away (retry_at 30 s off) asked again after the
        # schedule's first pause and found the circuit closed: no round of 100 s, no re-login.
        assert clock.now() - started == 5.0
        assert setup.auth.relogins == 0
        assert setup.named("relogin_scheduled") == []
        assert [e.name for e in setup.states] == ["circuit_open", "circuit_closed"]


async def test_an_open_break_shorter_than_the_rounds_pause_is_waited_out_in_steps(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    setup = await _setup(serve, clock, brk=12.0)
    async with setup.engine as engine:
        setup.backend.status = 200
        started = clock.now()
        resp = await engine.request("GET", "svc", "/x", recover=True)
        assert resp.status == 200
        assert clock.now() - started == 12.0  # 5, 5, then the 2 s left of the break
        assert setup.auth.relogins == 0
        assert setup.named("relogin_scheduled") == []


async def test_a_circuit_shut_longer_than_the_rounds_pause_gets_the_round(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    setup = await _setup(serve, clock, brk=300.0)
    async with setup.engine as engine:
        setup.backend.status = 200
        started = clock.now()
        call = asyncio.ensure_future(engine.request("GET", "svc", "/x", recover=True))
        await clock.sleep(1.0)
        # At once, as before: a round's pause (100 s) and re-login, not 300 s of waiting.
        assert [e.details["pause"] for e in setup.named("relogin_scheduled")] == [100.0]
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert clock.now() - started == 1.0


async def test_a_deadline_the_wait_would_pass_is_not_waited_for(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    setup = await _setup(serve, clock, brk=12.0)
    async with setup.engine as engine:
        started = clock.now()
        with pytest.raises(RecoveryFailed, match="deadline"):
            await engine.request("GET", "svc", "/x", recover=True, deadline=3.0)
        assert clock.now() - started < 3.0
        assert setup.auth.relogins == 0


# -- one call's success and a later round others wait in ----------------------------------------


class _Relogs:
    """An auth provider whose re-login works, but for the ``failing``-th (the Login Service
    still in trouble then)."""

    credential_headers = frozenset({"authorization"})

    def __init__(self, failing: int = 0) -> None:
        self.relogins = 0
        self.failing = failing

    async def credentials(self, method: str, url: object) -> Credentials:
        raise AssertionError("not asked: Recovery runs its callables only")

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def close(self) -> None:
        return None

    async def relogin(self) -> None:
        self.relogins += 1
        if self.relogins == self.failing:
            raise UnexpectedAnswer("maintenance page", status=200)


def _spent() -> RetriesExhausted:
    return RetriesExhausted("spent", last=ServerStatusError("503", status=503))


def _recovery(clock: VirtualClock, auth: _Relogs) -> tuple[Recovery, list[StateEvent]]:
    """Re-logins after 100, 200, 400 ... s; no request schedule; its events kept."""
    states: list[StateEvent] = []
    recovery = Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy(first=100, factor=2, cap=10_000, jitter=0, floor=0),
        request_policy=RetryPolicy(pauses=()),
        hooks=EventHooks(on_state=[states.append]),
    )
    return recovery, states


def _two_calls(clock: VirtualClock) -> tuple[Recovery, list[StateEvent], Any, Any]:
    """A succeeds after round 1 (a second later); B fails again after it and waits in round 2,
    whose re-login fails once: A's success comes while round 2 is in progress."""
    recovery, states = _recovery(clock, _Relogs(failing=2))
    runs = {"a": 0, "b": 0}

    async def a() -> str:
        runs["a"] += 1
        if runs["a"] == 1:
            raise _spent()
        await clock.sleep(1)
        return "a"

    async def b() -> str:
        runs["b"] += 1
        if runs["b"] <= 2:
            raise _spent()
        return "b"

    return recovery, states, a, b


async def test_one_calls_success_does_not_end_the_episode_others_still_wait_in() -> None:
    # A's success used to reset the episode while B waited in round 2, and round 2's failed
    # re-login planned its next pause from attempt 1: 100, 200, then 100 s, shrinking while the
    # Login Service still failed (and relogin_failed said attempt 0).
    clock = VirtualClock()
    recovery, states, a, b = _two_calls(clock)
    assert list(await asyncio.gather(recovery.run(a), recovery.run(b))) == ["a", "b"]
    assert list(recovery.pauses) == [100, 200, 400]
    assert not recovery.recovering
    assert [(e.name, e.details.get("attempt")) for e in states] == [
        ("relogin_scheduled", 1),
        ("relogin_scheduled", 2),
        ("relogin_failed", 2),
        ("relogin_scheduled", 3),
        ("recovered", None),
    ]
    assert states[-1].details["attempts"] == 3


@pytest.mark.parametrize("end", ["cancelled", "deadline"])
async def test_an_episode_a_call_recovered_in_ends_recovered_however_its_last_call_ends(
    end: str,
) -> None:
    clock = VirtualClock()
    recovery, states, a, b = _two_calls(clock)
    until = None if end == "cancelled" else 500.0  # past round 2's pause, not its next
    call_b = asyncio.ensure_future(recovery.run(b, until=until))
    assert await recovery.run(a) == "a"
    if end == "cancelled":
        await clock.sleep(10)
        call_b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call_b
    else:
        with pytest.raises((RecoveryFailed, DeadlineExceeded)):
            await call_b
    assert not recovery.recovering
    names = [e.name for e in states]
    assert names[-1] == "recovered", names
    assert "gave_up" not in names
    assert names.count("recovered") == 1
    # The next failure starts a new episode from the first pause.
    assert recovery._attempt == 0


@pytest.mark.parametrize("end", ["cancelled", "deadline"])
async def test_a_call_of_an_ended_episode_does_not_speak_for_the_next(end: str) -> None:
    # W and X go through episode 1; W's success ends it. Z fails after that: episode 2, its
    # round in progress, when X (episode 1's) succeeds. X's success is no recovery of episode
    # 2, whose only call then is cancelled (no event) or gives up on its deadline (gave_up).
    clock = VirtualClock()
    recovery, states = _recovery(clock, _Relogs())
    runs = {"w": 0, "x": 0}

    async def w() -> str:
        runs["w"] += 1
        if runs["w"] == 1:
            raise _spent()
        return "w"

    async def x() -> str:
        runs["x"] += 1
        if runs["x"] == 1:
            raise _spent()
        await clock.sleep(60)
        return "x"

    async def z() -> str:
        raise _spent()

    call_x = asyncio.ensure_future(recovery.run(x))
    assert await recovery.run(w) == "w"
    assert [e.name for e in states] == ["relogin_scheduled", "recovered"]
    await clock.sleep(10)
    until = None if end == "cancelled" else clock.now() + 150.0
    call_z = asyncio.ensure_future(recovery.run(z, until=until))
    assert await call_x == "x"
    if end == "cancelled":
        await clock.sleep(10)
        call_z.cancel()
        await asyncio.gather(call_z, return_exceptions=True)
    else:
        with pytest.raises(RecoveryFailed):
            await call_z
    names = [e.name for e in states]
    assert names.count("recovered") == 1, names
    assert names[-1] == ("relogin_scheduled" if end == "cancelled" else "gave_up"), names
    assert not recovery.recovering


# -- the breaker wait: paced by the schedule, never a busy loop ---------------------------------


def _refused_recovery(clock: VirtualClock, pauses: tuple[float, ...]) -> Recovery:
    return Recovery(
        domains=StaticDomains({"svc": "example.com"}),
        auth=None,
        clock=clock,
        policy=BackoffPolicy(first=100, factor=2, cap=10_000, jitter=0, floor=0),
        request_policy=RetryPolicy(pauses=pauses),
    )


@pytest.mark.parametrize("retry_in", [0.0, -1.0, 1.0])
async def test_a_retry_at_already_come_is_asked_again_at_the_schedules_pace(
    retry_in: float,
) -> None:
    # A peer's probe lock (sync_interval 0) or a breaker with no retry_at gives a retry_at of
    # now: the call asked again every 0.05 s for a whole round's pause (~2,000 runs).
    clock = VirtualClock()
    recovery = _refused_recovery(clock, (5, 10, 15))
    runs = 0

    async def call() -> None:
        nonlocal runs
        runs += 1
        raise CircuitOpen("open", retry_at=clock.now() + retry_in)

    task = asyncio.ensure_future(recovery.run(call))
    await clock.sleep(99)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runs <= 99 / 1 + 2 if retry_in == 1.0 else runs <= 99 / 5 + 2, runs


async def test_no_schedule_to_pace_by_goes_to_the_round() -> None:
    clock = VirtualClock()
    recovery = _refused_recovery(clock, ())
    runs = 0

    async def call() -> None:
        nonlocal runs
        runs += 1
        raise CircuitOpen("open", retry_at=clock.now())

    task = asyncio.ensure_future(recovery.run(call))
    await clock.sleep(99)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runs == 1  # in the round's 100 s pause


async def test_close_ends_a_breaker_wait() -> None:
    clock = VirtualClock()
    recovery = _refused_recovery(clock, (5, 10, 15))

    async def call() -> None:
        raise CircuitOpen("open", retry_at=clock.now() + 30)

    task = asyncio.ensure_future(recovery.run(call))
    await clock.sleep(7)
    recovery.close()
    with pytest.raises(RecoveryFailed, match="closed"):
        await task
