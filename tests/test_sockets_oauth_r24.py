"""Sockets: credentials are asked for over the URL dialed, its query included."""

from __future__ import annotations

from aiohttp import web

from le_transport.providers import OAuth1Auth, StaticDomains
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET
from tests.test_providers import ACCOUNT, APP_KEY, make_sim, sim, sim_engine

__all__ = ["sim"]


async def test_an_oauth1_signed_websocket_with_a_query_is_signed_over_its_query(
    clock: VirtualClock,
) -> None:
    """The signature was made over the URL without its query, then the URL with its query
    dialed: a gateway checking the signature refused every upgrade with 401."""
    got: list[str] = []

    async def upgrade(request: web.Request) -> web.StreamResponse:
        got.append(request.query.get("v", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    sim = make_sim(clock)
    sim.add_route("GET", "/api/account/{account}/r24wsq", upgrade, auth=True)
    auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim, sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as e:
        ws = await e.websocket(
            "accountConfigReadOnly",
            f"/api/account/{ACCOUNT}/r24wsq",
            params={"v": "1"},
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        await ws.wait_open(timeout=30)
        await ws.close()
    assert got == ["1"]
