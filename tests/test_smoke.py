"""The engine end to end against a loopback server: the guide's schedule on virtual time."""

from __future__ import annotations

import pytest
from aiohttp import web

from le_transport import ClientStatusError, Engine
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory


async def test_503_503_200_pauses_5_then_10_seconds(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    answers = [503, 503, 200]

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"n": len(answers)}, status=answers.pop(0))

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.status == 200
    assert resp.json(dict) == {"n": 1}
    assert [a.pause for a in resp.attempts] == [5.0, 10.0, None]
    assert clock.now() == 15.0


async def test_404_is_not_retried(serve: ServerFactory, clock: VirtualClock) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"error": "no such user"}, status=404)

    app = web.Application()
    app.router.add_get("/users/1", handler)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "svc", "/users/1")
    assert info.value.status == 404
    assert "no such user" in info.value.body_excerpt
    assert calls == 1
    assert clock.now() == 0.0
