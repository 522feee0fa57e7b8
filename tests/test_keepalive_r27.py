"""Keepalive and token freshness: what still went wrong.

- A token answer that gives both a JWT ``exp`` and an ``expires_in`` (Sentinel's does) was
  timed by the ``exp`` alone, read against our wall clock: with that clock ahead of the
  issuer's by more than a token's life and no ``iat`` to tell the skew, every token looked
  dead on arrival and was fetched anew every 5 s, each call past it waiting for the fetch,
  though the answer said, on no wall clock at all, that it lived an hour; with our clock
  behind, each token looked to outlive its real expiry and was sent expired (a 401 and a
  replay for every token). The ``expires_in`` now bounds the life read from ``exp``, and
  stands for it when ``exp`` reads as dead.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import json

import pytest

from le_transport.chaos import Status
from le_transport.providers import SentinelClientCredentials
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import CLIENT_SECRET
from tests.test_providers import ACCOUNT, CLIENT_ID, csds_for, jwt_with, sim, sim_engine

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
