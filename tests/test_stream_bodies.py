"""A streamed request body goes out at most once.

An async iterable is consumed as it is sent: sending the request again would send an empty
body, and a server that accepts it would answer a success for a request that carried nothing.
So neither the retry loop nor the 401 replay sends it twice; both fail with a typed error that
says why, while a bytes body is retried and replayed as usual.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine, RetryPolicy
from le_transport.errors import AuthenticationError, InvalidRequest, ServerStatusError
from le_transport.middleware.auth import AuthMiddleware
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

BODY = b"a record the server must receive whole"


async def _chunks() -> AsyncIterator[bytes]:
    yield BODY[:10]
    yield BODY[10:]


async def _scripted(serve: ServerFactory, statuses: list[int]) -> tuple[str, list[bytes]]:
    """A server answering ``statuses`` in turn (then 200); returns its host and the bodies."""
    bodies: list[bytes] = []
    script = iter(statuses)

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=next(script, 200))

    app = web.Application()
    app.router.add_route("*", "/x", handler)
    return await serve(app), bodies


async def test_a_streamed_body_is_not_retried_once_it_went_out(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    host, bodies = await _scripted(serve, [503])
    retry = RetryPolicy(pauses=(5.0,))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=retry) as engine:
        with (
            caplog.at_level(logging.WARNING, logger="le_transport"),
            pytest.raises(ServerStatusError) as info,
        ):
            await engine.request("PUT", "svc", "/x", data=_chunks())
    assert bodies == [BODY], "sent once, whole; never again empty"
    assert info.value.status == 503
    assert len(info.value.attempts) == 1
    assert info.value.attempts[0].pause is None
    assert any("cannot be sent again" in r.getMessage() for r in caplog.records)


async def test_a_bytes_body_is_still_retried(serve: ServerFactory, clock: VirtualClock) -> None:
    host, bodies = await _scripted(serve, [503])
    retry = RetryPolicy(pauses=(5.0,))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=retry) as engine:
        resp = await engine.request("PUT", "svc", "/x", data=BODY)
    assert resp.status == 200
    assert bodies == [BODY, BODY]


async def test_a_streamed_body_is_not_replayed_after_a_401(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host, bodies = await _scripted(serve, [401])
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=StaticBearer("stream-test-bearer")
    ) as engine:
        with pytest.raises(AuthenticationError, match="not replayed") as info:
            await engine.request("POST", "svc", "/x", data=_chunks())
        assert "stream-test-bearer" not in str(info.value)
    assert bodies == [BODY]


async def test_a_bytes_body_is_still_replayed_after_a_401(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    host, bodies = await _scripted(serve, [401])
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=StaticBearer("stream-test-bearer")
    ) as engine:
        resp = await engine.request("POST", "svc", "/x", data=BODY)
    assert resp.status == 200
    assert bodies == [BODY, BODY]


async def test_on_a_foreign_session_a_streamed_body_is_not_replayed_after_a_401(
    serve: ServerFactory,
) -> None:
    host, bodies = await _scripted(serve, [401])
    auth = AuthMiddleware(
        auth=StaticBearer("stream-test-bearer"), domains=StaticDomains({}), allowed_hosts={host}
    )
    async with aiohttp.ClientSession(middlewares=[auth]) as session:
        with pytest.raises(AuthenticationError, match="not replayed"):
            await session.post(f"http://{host}/x", data=_chunks())
    assert bodies == [BODY]


async def test_a_streamed_body_is_refused_with_recover_before_anything_is_sent(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # The outer loop sends the request again after a re-login: the drained stream went out
    # empty, and the server's 200 came back as the call's answer.
    host, bodies = await _scripted(serve, [])
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="can be sent only once"):
            await engine.request("PUT", "svc", "/x", data=_chunks(), recover=True)
        assert (await engine.request("PUT", "svc", "/x", data=BODY, recover=True)).status == 200
    assert bodies == [BODY]
