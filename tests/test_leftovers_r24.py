"""Leftovers of the retry middleware, the fallback store, the overload guard and the keepalive
scheduler:

- The retry middleware's own read of a chunked or compressed body (``iter_any``, to hold
  ``max_body_bytes``) skipped the session's ``on_response_chunk_received`` trace hooks, which
  aiohttp's ``resp.read()`` (and the engine's own read) give the whole body.
- ``FallbackStore``'s own ``op_timeout`` cut of its primary, turned by the store's client into
  an error of its own (a connection dropped on cancellation), was logged as an ERROR "it may be
  a bug in the store", with its traceback, rather than as the outage it is.

Real loopback servers (the conftest's ``serve``), virtual time.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.state import Entry, FallbackStore, MemoryStore
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


# -- 2. FallbackStore's own cut, turned into the store's error --------------------------------


class _DropsWhenCancelled(MemoryStore):
    """A caller's store whose client hangs, and turns a cancellation into its own error (as a
    Redis client may, dropping the connection it was cancelled on); or, with ``swallow``,
    takes the cancellation for nothing and then fails with an error of its own (a bug, which
    no cancellation caused)."""

    def __init__(self, clock: VirtualClock, *, swallow: bool = False) -> None:
        super().__init__(clock)
        self.swallow = swallow

    async def get(self, key: str) -> Entry | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not self.swallow:
                raise ConnectionError("connection dropped") from None
        raise KeyError("a bug in the store")


def _state_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "le_transport.state"]


async def test_op_timeouts_cut_the_store_turns_into_its_error_is_an_outage(
    caplog: pytest.LogCaptureFixture, clock: VirtualClock
) -> None:
    """The cut is ours: a WARNING that the store did not answer within op_timeout, as for a
    store that simply hangs (the cut's TimeoutError), not an ERROR blaming the store."""
    store = FallbackStore(_DropsWhenCancelled(clock), clock=clock, op_timeout=2.0)
    with caplog.at_level(logging.DEBUG, "le_transport.state"):
        assert await store.get("1:k") is None  # answered locally
    assert clock.now() == 2.0
    assert not store.sharing
    assert store.fallbacks == 1
    (line,) = _state_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "_DropsWhenCancelled.get did not answer within 2 s (FallbackStore.op_timeout)" in (
        line.getMessage()
    )


async def test_an_error_no_cut_caused_is_still_the_stores_own(
    caplog: pytest.LogCaptureFixture, clock: VirtualClock
) -> None:
    """A store that ignores the cut and then fails of its own accord (no cancellation in its
    error's chain): not said to be op_timeout's; the line names its type, as before."""
    store = FallbackStore(_DropsWhenCancelled(clock, swallow=True), clock=clock, op_timeout=2.0)
    with caplog.at_level(logging.DEBUG, "le_transport.state"):
        assert await store.get("1:k") is None
    error, warning = _state_lines(caplog)
    assert error.levelno == logging.ERROR
    assert "failed with KeyError, which is not a StateStoreError" in error.getMessage()
    assert warning.levelno == logging.WARNING
    assert "op_timeout" not in warning.getMessage()
