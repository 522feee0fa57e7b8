"""``Engine.websocket`` refuses the caller's own mistakes before it asks a static map.

The upgrade's headers and the credentials' placement were checked only when the dialer was
built, after a static domain map's host lookup: a socket to a service the map does not hold,
asked with a header the upgrade cannot carry (or a placement of the wrong kind), was an
``UnknownServiceError``, where the same call to a known service was refused for its headers.
Those checks depend on the call alone, not on the map, and now come first, as
``EngineDialer`` makes them at construction.
"""

from __future__ import annotations

from typing import Any

import pytest

from le_transport import ConfigurationError, Engine, InvalidRequest, StaticBearer
from le_transport.errors import UnknownServiceError
from le_transport.providers import StaticDomains
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import sim

__all__ = ["sim"]

_SECRET = "s3cret-header-value"


def _engine(sim: Simulator, clock: VirtualClock) -> Engine:
    return Engine(
        StaticDomains({"svc": sim.host}), scheme="http", clock=clock, auth=StaticBearer("t")
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Upgrade": "h2c"},
        {"X-Trace": f"{_SECRET}\r\nX-Other: 1"},
        {"Authorization": _SECRET},
    ],
    ids=["upgrade", "crlf", "credential"],
)
async def test_bad_headers_to_a_service_the_static_map_lacks_are_refused_as_headers(
    sim: Simulator, clock: VirtualClock, headers: dict[str, str]
) -> None:
    async with _engine(sim, clock) as engine:
        # The same refusal as for a service the map holds.
        with pytest.raises(InvalidRequest):
            await engine.websocket("svc", "/ws", headers=headers)
        with pytest.raises(InvalidRequest) as refused:
            await engine.websocket("nosuch", "/ws", headers=headers)
    assert not isinstance(refused.value, UnknownServiceError)
    assert _SECRET not in str(refused.value)
    assert sim.count("GET", "*") == 0


async def test_a_wrong_placement_to_a_service_the_static_map_lacks_is_refused_as_such(
    sim: Simulator, clock: VirtualClock
) -> None:
    placement: Any = "path"
    async with _engine(sim, clock) as engine:
        with pytest.raises(ConfigurationError) as refused:
            await engine.websocket("nosuch", "/ws", auth_placement=placement)
    assert "auth_placement must be an AuthPlacement" in str(refused.value)


async def test_a_sound_call_to_a_service_the_static_map_lacks_is_still_unknown(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with _engine(sim, clock) as engine:
        with pytest.raises(UnknownServiceError):
            await engine.websocket("nosuch", "/ws", headers={"X-Tag": "a"})
        assert not engine._sockets
