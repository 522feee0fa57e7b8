"""A call's deadline covers the whole call: the host's resolution and the credentials too.

Both run before the retry loop (which enforces the deadline on attempts and pauses), each on
its provider's own schedule: a Domain API or Login Service answering 503 took the guide's whole
5/10/15 s schedule, so a call with ``deadline=2`` waited 30 s. Now the call stops waiting at its
deadline with DeadlineExceeded; a single-flight fetch it shared keeps running for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from le_transport import DeadlineExceeded, RetriesExhausted
from le_transport.providers import UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, make_sim, sim_engine

USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"
LOGIN = f"/api/account/{ACCOUNT}/login"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with make_sim(clock) as s:
        yield s


async def test_the_deadline_bounds_a_domain_api_fetch(sim: Simulator, clock: VirtualClock) -> None:
    sim.faults.script("GET", CSDS_PATH, [503, 503, 503, 503])
    async with sim_engine(sim, clock) as engine:
        started = clock.now()
        with pytest.raises(DeadlineExceeded, match="2 s deadline passed while resolving"):
            await engine.request("GET", "accountConfigReadOnly", USERS, deadline=2)
        assert clock.now() - started == pytest.approx(2.0, abs=0.05)


async def test_the_deadline_bounds_a_login_and_the_login_goes_on_for_the_others(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", LOGIN, [503, 503])
    domains = csds_for(sim)
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
    async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
        await domains.resolve("agentVep")
        started = clock.now()
        hurried = asyncio.ensure_future(
            engine.request("GET", "accountConfigReadOnly", USERS, deadline=2)
        )
        patient = asyncio.ensure_future(engine.request("GET", "accountConfigReadOnly", USERS))
        with pytest.raises(DeadlineExceeded, match="while getting credentials") as info:
            await hurried
        assert info.value.elapsed == pytest.approx(2.0, abs=0.05)
        # The shared login was not cancelled with the hurried call: after its two 5xx and
        # their 5 and 10 s pauses it succeeds, and the patient call goes through.
        assert (await patient).status == 200
        assert clock.now() - started == pytest.approx(15.0, abs=0.1)
    assert sim.count("POST", LOGIN) == 3


async def test_time_spent_getting_credentials_counts_against_the_deadline(
    sim: Simulator, clock: VirtualClock
) -> None:
    # The login takes 5 s (one 503, one 5 s pause). The call's first attempt then answers 503:
    # with 1 s of its 6 s deadline left, a 5 s pause does not fit, so the call gives up
    # instead of retrying as if the 6 s had only begun.
    sim.faults.script("POST", LOGIN, [503])
    domains = csds_for(sim)
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
    async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
        await domains.resolve("agentVep")
        sim.faults.script("GET", USERS, [503])
        with pytest.raises(RetriesExhausted, match="deadline"):
            await engine.request("GET", "accountConfigReadOnly", USERS, deadline=6)
    assert sim.count("GET", USERS) == 1
