"""The Login Service session's fallback login after a refused refresh, and a token whose short
life only its JWT ``exp`` tells: what is still to hold around them.

Against the simulator (or a loopback service) on the virtual clock.
"""

from __future__ import annotations

import asyncio

from le_transport import Engine, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Match, Status
from le_transport.errors import DeadlineExceeded
from le_transport.providers.login import _KEEPALIVE_FALLBACK
from le_transport.testing import VirtualClock
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, make_sim

REFRESH = Match(method="POST", path="*/refresh")
LOGIN = Match(method="POST", path="*/login")

# -- the fallback login shared by refreshes that were not all answered alike ----------------------


async def test_a_refused_refresh_joining_a_redirected_ones_fallback_login_drops_its_session(
    clock: VirtualClock,
) -> None:
    """The keepalive run's refresh at 0 s is redirected (302): its fallback login meets a 503
    (``Retry-After: 20``) and the run gives up at its 5 s deadline, the login going on. A
    caller's refresh at 6 s is refused (401): the Login Service says the session is dead. Its
    fallback is the login already out, which then gives up on the outage: the refused session
    is dropped all the same (the next call logs in), not kept as the redirect alone would
    keep it, to be refused again."""
    async with make_sim(clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with Engine(domains, scheme="http", clock=clock, auth=auth):
            await auth.login()
            session = auth.session
            assert session is not None
            sim.faults.add(
                FaultRule("moved, then refused", sequence=(Status(302), Status(401)), match=REFRESH)
            )
            sim.faults.add(FaultRule("down", Status(503, retry_after=20), match=LOGIN))
            run = asyncio.ensure_future(auth._refresh(_KEEPALIVE_FALLBACK, deadline=5.0))
            await clock.sleep(5.5)
            assert isinstance(run.exception(), DeadlineExceeded)
            await clock.sleep(0.5)  # 6 s
            caller = asyncio.ensure_future(auth.refresh())
            await clock.sleep(120)
            assert caller.done()
            assert caller.exception() is not None
            assert sim.count("POST", "*/refresh") == 2
            assert auth.session is None  # refused by the Login Service, and no login since
