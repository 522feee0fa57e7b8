"""A re-login that joins an early fetch kept through an outage is still a re-login."""

from __future__ import annotations

import pytest

from le_transport.chaos import Hang
from le_transport.errors import LoginRejected
from le_transport.events import StateEvent
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_oauth2 import TOKEN, USERS, _early_fetch_done, _inside_the_margin, sentinel
from tests.test_providers import sim, sim_engine

__all__ = ["sim"]


async def test_relogin_joining_an_early_fetch_that_kept_the_token_fetches_a_new_one(
    sim: Simulator, clock: VirtualClock
) -> None:
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        # The early fetch a call starts meets a token service that hangs, then drops it.
        sim.faults.script("POST", TOKEN, [Hang(duration_ms=2000)])
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        early = auth._early
        assert early is not None
        assert not early.done(), "the early fetch is still out"
        assert auth._flight.running
        # The recovery loop's step joins it: the early run keeps the current token through
        # the outage, which is no re-login; a new token is fetched on the whole schedule.
        creds = await auth.relogin()
        await _early_fetch_done(auth)
        assert creds.generation == token.generation + 1
        assert auth.token is not None
        assert auth.token.generation == token.generation + 1
        assert sim.count("POST", TOKEN) == 3  # the login, the early fetch, the re-login's
    kept = [e for e in events if e.name == "refresh_failed"]
    assert [e.details["next"] for e in kept] == ["keep the current token"]


async def test_relogin_refused_after_joining_an_early_fetch_that_kept_the_token_drops_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await _inside_the_margin(engine, auth, clock)
        # The early fetch hangs, then fails (the token kept, as a copy with a later
        # refresh_at); the re-login's own fetch is refused.
        sim.faults.script("POST", TOKEN, [Hang(duration_ms=2000), 401, 401])
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        assert auth._flight.running
        with pytest.raises(LoginRejected, match="refused with 401"):
            await auth.relogin()
        await _early_fetch_done(auth)
        # A refused re-login drops the token it was to replace, kept copy or not.
        assert auth.token is None
