"""A fleet of 20 real OS processes sharing one real redis-server, against the simulator.

Each process (tests/fleet_worker.py) runs the engine with the Login Service provider and the
retry budget shared through Redis. The test drives them by events (each reports JSON lines), not
by sleeping a guessed time, and asserts counts, never durations. Processes cannot share a virtual
clock, so these run on real time with scaled schedules.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from le_transport.chaos import FaultRule, Match, Status
from le_transport.clock import RealClock
from le_transport.testing.simulator import Account, Simulator, SimulatorConfig
from tests.known_secrets import PASSWORD

from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

#: Twenty Python processes start on a machine that may have two cores: above the suite's
#: 180 s per test, never a timing the test asserts.
pytestmark = pytest.mark.timeout(600)

FLEET = 20
ACCOUNT = "99887766"
USER = "fleet-bot"
WORKER = Path(__file__).with_name("fleet_worker.py")
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
LOGIN = f"/api/account/{ACCOUNT}/login"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
#: Generous bounds for a slow, shared machine; a healthy run takes a few seconds.
EVENT_TIMEOUT = 120.0
# The workers' Redis op timeout is 5 s (tests/fleet_worker.py), far above a loopback round
# trip even on a loaded machine: a slow answer must not pass for Redis being down. Redis
# killed is a refused connection, noticed at once.


class Worker:
    """One fleet process and the JSON lines it reported."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""

    async def next_event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode(errors="replace")[-2000:]
            raise AssertionError(f"worker exited early: {err}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def wait_for(self, *names: str) -> dict[str, Any]:
        """The next event named one of ``names`` (state events by their name)."""
        while True:
            event = await self.next_event()
            name = event["name"] if event["event"] == "state" else event["event"]
            if name in names:
                return event

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())

    def states(self, name: str) -> int:
        return sum(1 for e in self.events if e["event"] == "state" and e["name"] == name)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        accounts=(Account(id=ACCOUNT, users={USER: PASSWORD}),), session_ttl=3600.0
    )
    async with Simulator(config, clock=RealClock()) as s:
        yield s


async def start_fleet(
    sim: Simulator, redis: RedisServer, mode: str, count: int = FLEET, **extra: Any
) -> list[Worker]:
    workers = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for i in range(count):
        config = {
            "mode": mode,
            "index": i,
            "redis_url": redis.url,
            "prefix": "fleet",
            "account": ACCOUNT,
            "user": USER,
            "password": PASSWORD,
            "domains": sim.domains,
            **extra,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = Worker(proc)
        worker.send(json.dumps(config))
        workers.append(worker)
    async with asyncio.timeout(EVENT_TIMEOUT):
        await asyncio.gather(*(w.wait_for("ready") for w in workers))
    return workers


async def finish(workers: list[Worker]) -> list[dict[str, Any]]:
    """Each worker's ``done`` report, after it exited."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        done = await asyncio.gather(*(w.wait_for("done") for w in workers))
        for w in workers:
            assert w.proc.stdin is not None
            w.proc.stdin.close()
            assert w.proc.stderr is not None
            w.stderr = await w.proc.stderr.read()
            await w.proc.wait()
    return list(done)


async def kill_all(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.returncode is None:
            w.proc.kill()
            await w.proc.wait()


def assert_no_secret_in_output(workers: list[Worker]) -> None:
    for w in workers:
        assert PASSWORD.encode() not in w.stderr
        assert all(PASSWORD not in json.dumps(e) for e in w.events)


async def test_twenty_processes_log_in_once_and_refresh_once_per_interval(
    sim: Simulator, redis_server: RedisServer
) -> None:
    """One login for the fleet, and its refreshes at least most of an interval apart (the
    shared session takes a refresh made within 0.9 of an interval): never one per process.
    How many intervals pass before ``stop`` reaches every process depends on the machine's
    speed, so the count is not asserted exactly: the spacing is the rule."""
    interval = 3.0
    workers = await start_fleet(sim, redis_server, "session", refresh_interval=interval)
    try:
        for w in workers:
            w.send("go")
        async with asyncio.timeout(EVENT_TIMEOUT):
            await asyncio.gather(*(w.wait_for("called") for w in workers))
        assert sim.tokens.logins == 1
        # One keepalive tick each: it either refreshes the fleet's session or adopts the
        # refresh another process just made.
        async with asyncio.timeout(EVENT_TIMEOUT):
            await asyncio.gather(*(w.wait_for("refreshed", "session_adopted") for w in workers))
        for w in workers:
            w.send("stop")
        reports = await finish(workers)
    finally:
        await kill_all(workers)
    assert all(r["outcomes"] == {"ok": 1} for r in reports)
    assert sim.tokens.logins == 1, "one login for twenty processes"
    assert sum(r["logins"] for r in reports) == 1
    # When the login and each refresh reached the simulator (on the real clock, as the
    # store's TTLs are). The session is stored once answered, so a process refreshes only
    # after reading it 0.9 of an interval old: at least that long after the login or the
    # refresh before arrived (the slack covers the store's millisecond TTLs). One refresh per
    # process would come within the spread of their adoptions, far closer together. How many
    # intervals pass before every process reads ``stop`` is the machine's speed: not asserted.
    arrived = [r.at for r in sim.requests if r.method == "POST" and r.path in (LOGIN, REFRESH)]
    assert len(arrived) == 1 + sim.tokens.refreshes
    assert sim.tokens.refreshes >= 1, "each process ticked once: the fleet refreshed"
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert all(gap >= 0.9 * interval - 0.05 for gap in gaps), f"login, refreshes {gaps} s apart"
    assert sim.tokens.refreshes < FLEET, "one refresh per interval, not one per process"
    assert sum(r["refreshes"] for r in reports) == sim.tokens.refreshes
    assert sim.count("POST", LOGIN) == 1
    assert_no_secret_in_output(workers)


async def test_full_503_outage_keeps_the_fleets_retries_inside_the_shared_budget(
    sim: Simulator, redis_server: RedisServer
) -> None:
    sim.faults.add(FaultRule(id="outage", fault=Status(503), match=Match(path=USERS)))
    calls = 10
    workers = await start_fleet(sim, redis_server, "outage", calls=calls)
    try:
        for w in workers:
            w.send("go")
        reports = await finish(workers)
    finally:
        await kill_all(workers)
    first_attempts = FLEET * calls
    sent = sim.count("GET", USERS)
    retries = sent - first_attempts
    assert all(r["ended"] == r["started"] == calls for r in reports)
    assert all(not k.startswith("UNTYPED") for r in reports for k in r["outcomes"])
    assert retries <= 0.2 * first_attempts, f"{retries} retries for {first_attempts} calls"
    assert retries > 0, "the budget's share is used"
    assert sum(r["outcomes"].get("RetryBudgetExhausted", 0) for r in reports) > 0
    assert all(r["fallbacks"] == 0 for r in reports)


async def test_redis_killed_mid_run_every_call_ends_and_restarted_redis_is_shared_again(
    sim: Simulator, redis_server: RedisServer
) -> None:
    workers = await start_fleet(sim, redis_server, "calls")
    try:
        for w in workers:
            w.send("go")
        async with asyncio.timeout(EVENT_TIMEOUT):
            await asyncio.gather(*(w.wait_for("logged_in", "session_adopted") for w in workers))
        redis_server.kill()
        async with asyncio.timeout(EVENT_TIMEOUT):
            await asyncio.gather(*(w.wait_for("state_store_fallback") for w in workers))
        redis_server.start()
        async with asyncio.timeout(EVENT_TIMEOUT):
            await asyncio.gather(*(w.wait_for("state_store_resumed") for w in workers))
        for w in workers:
            w.send("stop")
        reports = await finish(workers)
    finally:
        await kill_all(workers)
    for r in reports:
        assert r["started"] == r["ended"], "every call ended"
        assert set(r["outcomes"]) == {"ok"}, "no call failed because Redis failed"
        assert r["sharing"]
        assert r["fallbacks"] == 1, "the switch to local state happened (and was logged) once"
        assert r["recoveries"] == 1
    assert all(w.states("state_store_fallback") == 1 for w in workers)
    assert sim.tokens.logins == 1
    assert_no_secret_in_output(workers)
