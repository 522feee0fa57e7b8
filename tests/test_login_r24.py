"""The login answer's ``config.userId``: a bool was taken as the user id ``"True"``.

A bool is an int to Python; it is no user id. A str or an int is kept as text, anything else
is no user id at all (the session's ``user_id`` is None).
"""

from __future__ import annotations

import json

import pytest

from le_transport.chaos import Status
from le_transport.events import StateEvent
from le_transport.providers import UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, sim, sim_engine

__all__ = ["sim"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [(True, None), (False, None), (1.5, None), ([7], None), (7, "7"), ("u-7", "u-7")],
)
async def test_the_user_id_of_a_login_answer_is_a_str_or_an_int_only(
    sim: Simulator, clock: VirtualClock, given: object, kept: str | None
) -> None:
    events: list[StateEvent] = []
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)
    answer = {"bearer": "b3arer-tok", "csrf": "c", "config": {"userId": given}}
    sim.faults.script(
        "POST", f"/api/account/{ACCOUNT}/login", [Status(200, body=json.dumps(answer))]
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events):
        session = await auth.login()
    assert session.user_id == kept
