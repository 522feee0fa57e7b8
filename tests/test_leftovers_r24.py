"""Leftovers of the retry middleware, the fallback store, the overload guard and the keepalive
scheduler:

- The retry middleware's own read of a chunked or compressed body (``iter_any``, to hold
  ``max_body_bytes``) skipped the session's ``on_response_chunk_received`` trace hooks, which
  aiohttp's ``resp.read()`` (and the engine's own read) give the whole body.

Real loopback servers (the conftest's ``serve``), virtual time.
"""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

# -- 1. the retry middleware's read and the session's trace hooks -------------------------------

_BODY = b"z" * 3000


def _body_app() -> web.Application:
    """``/body`` answers 3,000 bytes: with a Content-Length, chunked (``?chunked=1``), or
    gzip-compressed (``?gzip=1``, with a Content-Length of the compressed bytes)."""

    async def body(request: web.Request) -> web.StreamResponse:
        if request.query.get("gzip"):
            return web.Response(body=gzip.compress(_BODY), headers={"Content-Encoding": "gzip"})
        if not request.query.get("chunked"):
            return web.Response(body=_BODY)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for start in range(0, len(_BODY), 500):
            await resp.write(_BODY[start : start + 500])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/body", body)
    return app


@pytest.mark.parametrize(
    "query", [{}, {"chunked": "1"}, {"gzip": "1"}], ids=["length", "chunked", "gzip"]
)
async def test_the_retry_middlewares_read_fires_the_sessions_chunk_trace_hooks_once(
    query: dict[str, str], serve: ServerFactory, clock: VirtualClock
) -> None:
    """A session carrying the engine's stack and a caller's ``TraceConfig``: the body the
    retry middleware reads is given to ``on_response_chunk_received`` once, whole, as
    aiohttp's ``resp.read()`` gives it (a chunked or compressed body was never given); the
    caller's own ``read()`` afterwards fires nothing more."""
    host = await serve(_body_app())
    seen: list[bytes] = []

    async def chunk_received(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        seen.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(chunk_received)
    async with (
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
        aiohttp.ClientSession(
            middlewares=engine.middlewares,
            trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(total=None),
        ) as session,
        session.get(f"http://{host}/body", params=query) as resp,
    ):
        assert await resp.read() == _BODY
    assert seen == [_BODY]
