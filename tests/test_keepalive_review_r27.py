"""Token lives read from an answer's ``exp`` and ``expires_in``, and an HTTP keepalive's
deadline: what was still wrong.

- An ``exp`` that reads as dead (our wall clock ahead) let the answer's ``expires_in`` stand
  alone, past the life the JWT itself was issued with (``exp - iat``, read on the issuer's
  clock alone): an answer of an hour for a token issued for 10 minutes had it sent expired
  for 50 minutes.
- An ``expires_in`` of 1 s beside a JWT whose ``exp`` says an hour cut its life to 1 s, a token
  request every half second while calls went on, where one of 0 was not believed and the
  ``exp`` stood; it now cuts a life no lower than a token not believed is used for.
- An HTTP keepalive's run took the keepalive's timeout as its request's deadline even when the
  engine's retry policy gave calls a shorter one: its request was retried past the deadline
  every other call of the engine keeps.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import json

import pytest

from le_transport import AppKeyAuth, Engine, RetryPolicy, StaticDomains
from le_transport.chaos import FaultRule, Match, Status
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.providers import SentinelClientCredentials
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import CLIENT_SECRET
from tests.test_providers import (
    ACCOUNT,
    APP_KEY,
    CLIENT_ID,
    csds_for,
    jwt_with,
    sim,
    sim_engine,
)

__all__ = ["sim"]

TOKEN = f"/sentinel/api/account/{ACCOUNT}/app/token"


def _sentinel(sim: Simulator, offset: float) -> SentinelClientCredentials:
    """A Sentinel provider whose wall clock is ``offset`` seconds off the issuer's."""
    return SentinelClientCredentials(
        ACCOUNT,
        CLIENT_ID,
        CLIENT_SECRET,
        domains=csds_for(sim),
        wall_clock=lambda: sim.tokens.epoch_now() + offset,
    )


def _answer(claims: dict[str, int], expires_in: object) -> Status:
    body = {"access_token": jwt_with(claims), "token_type": "Bearer", "expires_in": expires_in}
    return Status(200, body=json.dumps(body))


# -- expires_in standing for a dead exp, past exp - iat ---------------------------------------


async def test_an_expires_in_standing_for_a_dead_exp_never_outlasts_the_jwts_own_life(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Our clock two hours ahead; the JWT was issued for 10 minutes (exp - iat, which no wall
    clock skews), the answer says an hour: it lived an hour, sent expired for 50 minutes."""
    auth = _sentinel(sim, offset=7200.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        issued = int(sim.tokens.epoch_now())
        sim.faults.script("POST", TOKEN, [_answer({"iat": issued, "exp": issued + 600}, 3600)])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at is not None
        assert held.expires_at <= 600.0 + 1


async def test_an_expires_in_standing_for_a_dead_exp_without_iat_still_stands(
    sim: Simulator, clock: VirtualClock
) -> None:
    """No iat: nothing bounds the answer's word; it stands, as it did."""
    auth = _sentinel(sim, offset=7200.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        issued = int(sim.tokens.epoch_now())
        sim.faults.script("POST", TOKEN, [_answer({"exp": issued + 600}, 3600)])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(3600.0, abs=1)


# -- a tiny expires_in beside a long exp ------------------------------------------------------


@pytest.mark.parametrize("expires_in", [1, "1", 2.5, 4])
async def test_a_tiny_expires_in_beside_a_long_exp_fetches_no_sooner_than_the_floor(
    sim: Simulator, clock: VirtualClock, expires_in: object
) -> None:
    """A call every half second for a minute: a token request every half second (120), where
    an expires_in of 0 is not believed at all; now no more than one per 5 s."""
    auth = _sentinel(sim, offset=0.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        answers = [
            _answer({"exp": int(sim.tokens.epoch_now()) + 3600 + 60 * i}, expires_in)
            for i in range(200)
        ]
        sim.faults.script("POST", TOKEN, answers)
        for _ in range(120):
            await auth.credentials()
            await clock.sleep(0.5)
        assert sim.count("POST", TOKEN) <= 13


async def test_a_short_expires_in_beside_a_longer_exp_still_bounds_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Our clock behind: 30 s said by expires_in, 10 minutes read from exp: 30 s it is."""
    auth = _sentinel(sim, offset=0.0)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        sim.faults.script("POST", TOKEN, [_answer({"exp": int(sim.tokens.epoch_now()) + 600}, 30)])
        await auth.credentials()
        held = auth.token
        assert held is not None
        assert held.expires_at == pytest.approx(30.0, abs=1)


# -- an HTTP keepalive's deadline and the engine's ---------------------------------------------


def _chat_info(sim: Simulator) -> str:
    return f"/api/account/{sim.account.id}/chat/c1/info"


async def test_a_keepalive_request_keeps_the_engines_shorter_deadline(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The engine's calls have a 3 s deadline, the chat info keepalive a 10 s timeout: its
    request was given 10 s, a 503 answered again 5 s later, where every call gives up at
    once (a 5 s pause would pass its deadline)."""
    sim.faults.add(FaultRule("down", Status(503), match=Match(method="GET", path=_chat_info(sim))))
    engine = Engine(
        StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, APP_KEY),
        retry=RetryPolicy(deadline=3.0),
    )
    async with engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "c1"},
        )
        await clock.sleep(45)
        assert task.runs == task.failures == 1
        assert sim.count("GET", _chat_info(sim)) == 1
        await task.close()
