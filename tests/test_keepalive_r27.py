"""Keepalive and token freshness: what still went wrong.

- A token answer that gives both a JWT ``exp`` and an ``expires_in`` (Sentinel's does) was
  timed by the ``exp`` alone, read against our wall clock: with that clock ahead of the
  issuer's by more than a token's life and no ``iat`` to tell the skew, every token looked
  dead on arrival and was fetched anew every 5 s, each call past it waiting for the fetch,
  though the answer said, on no wall clock at all, that it lived an hour; with our clock
  behind, each token looked to outlive its real expiry and was sent expired (a 401 and a
  replay for every token). The ``expires_in`` now bounds the life read from ``exp``, and
  stands for it when ``exp`` reads as dead.
- A token fetched early (in the background, the current one still valid for minutes) whose
  answer asked for rest (a 429 or 503 with ``Retry-After: 45``) was asked again 5, 10 and
  15 s later, the request schedule's pauses: three requests within the rest asked for. It
  now waits at least as long as asked (up to the policy's ``retry_after_ceiling``).
- ``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")`` ran the provider's public
  ``refresh()``, which does not say that an outage is handled: a Login Service answering 503
  made an ERROR every 5 minutes, where the provider's own keepalive logs the same give-up as
  a WARNING ending "handled".
- An HTTP keepalive's run (the Server Chat API's chat info, every 30 s, 10 s to answer) was
  cut at its timeout inside the engine's retry schedule: a 503 then a 10 s pause, a 429 then
  the ``Retry-After`` pause. Its WARNING said ``TimeoutError`` whatever the service answered,
  and a service asking for a minute's rest with 429 and ``Retry-After`` got the keepalive
  again 30 s later, and every 30 s after. A run now gives up within its timeout with the
  service's own answer (a WARNING, handled: the keepalive goes on, no ERROR every 30 s), and
  the next run waits as long as the answer asked (up to the engine's ``retry_after_ceiling``).

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest

from le_transport import (
    AppKeyAuth,
    Engine,
    EventHooks,
    RetryPolicy,
    StateEvent,
    StaticDomains,
    UserLogin,
)
from le_transport.chaos import FaultRule, Match, Status
from le_transport.errors import ConfigurationError
from le_transport.policies import CHAT_AGENT_API_REFRESH, SERVER_CHAT_API_CHAT_INFO
from le_transport.providers import SentinelClientCredentials
from le_transport.sockets import KeepaliveTask
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import CLIENT_SECRET, PASSWORD
from tests.test_providers import (
    ACCOUNT,
    APP_KEY,
    CLIENT_ID,
    USER,
    csds_for,
    jwt_with,
    make_sim,
    sim,
    sim_engine,
)

__all__ = ["sim"]

TOKEN = f"/sentinel/api/account/{ACCOUNT}/app/token"


def _sentinel(sim: Simulator, offset: float, margin: float = 60.0) -> SentinelClientCredentials:
    """A Sentinel provider whose wall clock is ``offset`` seconds off the issuer's."""
    return SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        CLIENT_SECRET,
        domains=csds_for(sim),
        margin=margin,
        wall_clock=lambda: sim.tokens.epoch_now() + offset,
    )


def _answer(sim: Simulator, life: int) -> Status:
    """A token answer: a JWT with an ``exp`` and no ``iat``, and the same life in
    ``expires_in``."""
    token = jwt_with({"exp": int(sim.tokens.epoch_now()) + life})
    body = {"access_token": token, "token_type": "Bearer", "expires_in": life}
    return Status(200, body=json.dumps(body))


async def test_a_clock_ahead_of_the_issuers_reads_the_answers_expires_in_not_a_dead_exp(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Two hours ahead: the exp read as two hours past, and a token every 5 s."""
    auth = _sentinel(sim, offset=7200.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        sim.faults.script("POST", TOKEN, [_answer(sim, 3600)] * 50)
        for _ in range(20):
            # A call every 30 s for 10 minutes, as a client's requests would ask.
            await auth.credentials()
            await clock.sleep(30)
        assert sim.count("POST", TOKEN) == 1
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(3600.0, abs=1)


async def test_a_clock_behind_the_issuers_never_sends_a_token_past_its_expires_in(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Ten minutes behind: the token looked to live 70 minutes, and was refreshed 9 minutes
    after it had expired."""
    auth = _sentinel(sim, offset=-600.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        sim.faults.script("POST", TOKEN, [_answer(sim, 3600)])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(3600.0, abs=1)
        assert held.refresh_at == pytest.approx(3540.0, abs=1)


async def test_a_shorter_exp_still_wins_over_a_longer_expires_in(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = _sentinel(sim, offset=0.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        token = jwt_with({"exp": int(sim.tokens.epoch_now()) + 600})
        body = {"access_token": token, "expires_in": 3600}
        sim.faults.script("POST", TOKEN, [Status(200, body=json.dumps(body))])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(600.0, abs=1)


async def test_an_absurd_expires_in_beside_a_good_exp_is_not_believed(
    sim: Simulator, clock: VirtualClock
) -> None:
    """An expires_in of 0 (no life at all) beside a JWT that lives an hour: the exp stands,
    rather than a token fetched every 5 s."""
    auth = _sentinel(sim, offset=0.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        token = jwt_with({"exp": int(sim.tokens.epoch_now()) + 3600})
        body = {"access_token": token, "expires_in": 0}
        sim.faults.script("POST", TOKEN, [Status(200, body=json.dumps(body))])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(3600.0, abs=1)


# -- an HTTP keepalive's run cut inside the engine's retry schedule ---------------------------


def _chat_engine(sim: Simulator, clock: VirtualClock) -> Engine:
    return Engine(
        StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, APP_KEY),
    )


def _chat_info(sim: Simulator) -> str:
    return f"/api/account/{sim.account.id}/chat/c1/info"


def _answer_chat_info_with(sim: Simulator, status: Status) -> None:
    sim.faults.add(FaultRule("down", status, match=Match(method="GET", path=_chat_info(sim))))


async def test_a_chat_info_outage_is_logged_as_the_services_answer_and_never_as_an_error(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport")
    _answer_chat_info_with(sim, Status(503))
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "c1"},
        )
        await clock.sleep(101)
        assert (task.runs, task.failures) == (3, 3)
        assert task.running
        await task.close()
    failed = [r.getMessage() for r in caplog.records if r.name == "le_transport.sockets"]
    assert len(failed) == 3
    for message in failed:
        assert "keepalive retrieve chat information failed" in message
        assert "TimeoutError" not in message
        assert "503" in message
    # The keepalive handles the outage: nothing is an ERROR, at every run.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("status", "asked"), [(429, "120"), (503, "45")], ids=["429-120", "503-45"]
)
async def test_a_chat_info_answer_asking_for_rest_is_given_it_before_the_next_run(
    sim: Simulator, clock: VirtualClock, status: int, asked: str
) -> None:
    _answer_chat_info_with(sim, Status(status, headers={"Retry-After": asked}))
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "c1"},
        )
        await clock.sleep(241)
        # Runs at 30 s, then each after the rest asked (120 s capped at the engine's 60 s
        # retry_after_ceiling; 45 s): 30, 90, 150, 210; 30, 75, 120, 165, 210. Before, at every
        # 30 s: 8 runs, a request each.
        wait = min(float(asked), 60.0)
        expected = 1 + int((241 - 30) // wait)
        assert sim.count("GET", _chat_info(sim)) == expected
        assert task.runs == task.failures == expected
        assert task.running
        sim.faults.clear()
        # Back: the schedule goes on as before, every 30 s.
        await clock.sleep(wait + 61)
        assert task.runs - task.failures >= 2
        await task.close()


# -- a token fetched early, answered with a request for rest ----------------------------------


async def _early_fetch_done(auth: SentinelClientCredentials) -> None:
    early = auth._early
    if early is not None:
        await asyncio.wait({early})


@pytest.mark.parametrize("status", [429, 503])
async def test_an_early_fetch_told_to_rest_is_not_tried_again_sooner(
    sim: Simulator, clock: VirtualClock, status: int
) -> None:
    """Sentinel answers the early fetch with Retry-After: 45 while the token lives 10 more
    minutes: it was asked again 5, 10 and 15 s later (the request schedule's pauses), three
    requests within the rest it asked for."""
    events: list[StateEvent] = []
    auth = _sentinel(sim, offset=0.0, margin=900.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events):
        await auth.credentials()
        token = auth.token
        assert token is not None
        assert token.refresh_at is not None
        await clock.sleep(token.refresh_at + 1 - clock.now())
        rest = Status(status, headers={"Retry-After": "45"})
        sim.faults.script("POST", TOKEN, [rest] * 3)
        asked: list[float] = []
        started = clock.now()
        for _ in range(100):
            before = sim.count("POST", TOKEN)
            await auth.credentials()
            await _early_fetch_done(auth)
            if sim.count("POST", TOKEN) > before:
                asked.append(clock.now() - started)
            await clock.sleep(1)
        # At once, then each after the 45 s asked for; before, at 0, 5, 15 and 30 s.
        assert asked == [0.0, 45.0, 90.0]
        assert auth.generation == token.generation
    failed = [e for e in events if e.name == "refresh_failed"]
    assert [e.details["retry_in"] for e in failed] == [45.0, 45.0, 45.0]


async def test_a_call_a_task_started_during_a_keepalive_run_makes_is_not_the_keepalives(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The keepalive's run marks its own request as handled by it; a task started meanwhile (a
    hook's, a provider's) inherits the mark with the run's context, and its own call, giving up
    on an outage, was logged as handled by the keepalive: a WARNING, not the ERROR it is."""
    caplog.set_level(logging.WARNING, logger="le_transport.retry")
    other = f"/api/account/{sim.account.id}/other"
    _answer_chat_info_with(sim, Status(503))
    sim.faults.add(FaultRule("other", Status(503), match=Match(method="GET", path=other)))
    spawned: list[asyncio.Task[object]] = []
    engine = Engine(
        StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, APP_KEY),
        hooks=EventHooks(on_giveup=lambda event: spawned.append(_spawn(engine, other))),
    )

    def _spawn(engine: Engine, path: str) -> asyncio.Task[object]:
        if spawned:
            return spawned[0]
        return asyncio.get_running_loop().create_task(
            engine.request("GET", "agentVep", path, retry=RetryPolicy(pauses=()))
        )

    async with engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "c1"},
        )
        await clock.sleep(36)
        await task.close()
        assert spawned
        await asyncio.wait({spawned[0]})
        assert spawned[0].exception() is not None
    [line] = [
        r for r in caplog.records if other in r.getMessage() and "failed after" in r.getMessage()
    ]
    assert line.levelno == logging.ERROR
    assert "handled" not in line.getMessage()


# -- the engine's Login Service refresh keepalive through an outage --------------------------


async def test_the_engines_login_refresh_keepalive_handles_an_outage_as_the_providers_own_does(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``Engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")`` (a provider built with
    ``keepalive=False``) refreshed without saying that it handles an outage: each refresh
    that gave up on a Login Service answering 503 was an ERROR, every 5 minutes, where the
    provider's own keepalive logs the same give-up as a WARNING ending "handled"."""
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            await engine.login()
            task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            refresh = Match(method="POST", path="*/refresh")
            sim.faults.add(FaultRule("down", Status(503), match=refresh))
            await clock.sleep(2 * CHAT_AGENT_API_REFRESH.interval + 60)
            assert task.running
            assert task.failures == 2
            # 0, 5 and 15 s: the run's 30 s timeout is its refresh's deadline, which the next
            # 15 s pause would reach.
            assert sim.count("POST", "*/refresh") == 6
            await task.close()
    gave_up = [r for r in caplog.records if "failed after 3 attempt(s)" in r.getMessage()]
    assert len(gave_up) == 2
    for record in gave_up:
        assert record.levelno == logging.WARNING
        assert record.getMessage().endswith(
            "; handled: the session is kept and the keepalive tries the refresh again"
        )
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("ceiling", [-1.0, math.nan, math.inf, "60", True])
async def test_a_retry_after_ceiling_that_is_no_time_is_refused(
    clock: VirtualClock, ceiling: object
) -> None:
    async def action() -> None:
        return None

    with pytest.raises(ConfigurationError, match="retry_after_ceiling"):
        KeepaliveTask(
            SERVER_CHAT_API_CHAT_INFO,
            action,
            clock=clock,
            retry_after_ceiling=ceiling,  # type: ignore[arg-type]
        )
