"""A successful call's per-call values are made without Python-level constructors, and are the
values those constructors make (benchmarks/README.md, "What profiling found")."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web

from le_transport import Engine, RetryPolicy
from le_transport.errors import AttemptRecord
from le_transport.middleware.context import CallContext, current_call
from le_transport.middleware.retry import RetryMiddleware, _Call
from le_transport.policies.classify import Outcome
from tests.conftest import ServerFactory


@contextmanager
def python_calls() -> Iterator[set[types.CodeType]]:
    """The code objects of every Python function called in the block (this thread)."""
    seen: set[types.CodeType] = set()

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            seen.add(frame.f_code)

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def _ok_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    return app


async def test_a_successful_call_runs_no_python_constructor_for_its_per_call_values(
    serve: ServerFactory,
) -> None:
    host = await serve(_ok_app())
    async with Engine(
        {"svc": host}, scheme="http", retry=RetryPolicy(attempt_timeout=10.0, deadline=30.0)
    ) as engine:
        await engine.request("GET", "svc", "/ok")  # the connection, the URL, the path checked
        with python_calls() as seen:
            resp = await engine.request("GET", "svc", "/ok")
    assert resp.status == 200
    constructors = {
        "_Call.__init__": _Call.__init__.__code__,
        "CallContext.__init__": CallContext.__init__.__code__,
        "AttemptRecord.__new__": AttemptRecord.__new__.__code__,
    }
    assert [name for name, code in constructors.items() if code in seen] == []


async def test_the_values_made_in_place_are_those_their_constructors_make(
    serve: ServerFactory,
) -> None:
    contexts: list[CallContext] = []

    async def look(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        ctx = current_call()
        assert ctx is not None
        contexts.append(ctx)
        return await handler(request)

    host = await serve(_ok_app())
    policy = RetryPolicy(attempt_timeout=10.0, deadline=30.0)
    async with Engine(
        {"svc": host}, scheme="http", retry=policy, wire_middlewares=[look]
    ) as engine:
        resp = await engine.request("GET", "svc", "/ok", idempotent=False)
    (ctx,) = contexts
    built = CallContext("svc", False, policy)
    assert type(ctx) is CallContext
    slots = ("service", "idempotent", "retry", "resign")
    assert [getattr(ctx, name) for name in slots] == [getattr(built, name) for name in slots]
    assert ctx.active is False  # the loop ended
    assert ctx.started_at is not None
    assert ctx.attempts is not built.attempts
    # Every slot its __init__ sets is set (first_method, by neither; first_original, by the
    # retry middleware as the call's first request goes, beside first_url).
    set_by_init = {name for name in CallContext.__slots__ if hasattr(built, name)}
    set_now = {name for name in CallContext.__slots__ if hasattr(ctx, name)}
    assert set_now - {"first_original"} == set_by_init
    (record,) = resp.attempts
    assert type(record) is AttemptRecord
    assert record == AttemptRecord(1, Outcome.response(200), None, ctx.started_at)
    assert hash(record) == hash(AttemptRecord(*record))


async def test_the_in_place_call_sets_every_slot_its_init_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _Call's __init__ is still used off the hot path: a slot it sets must be set by
    # RetryMiddleware.__call__ too (one left unset is an AttributeError on a retry's path).
    made: Any = object.__new__(_Call)
    anything: Any = object()
    _Call.__init__(made, anything, anything, anything, anything, anything)
    by_init = {name: getattr(made, name, _UNSET) for name in _Call.__slots__}
    calls: list[_Call] = []

    async def run(self: _Call) -> None:
        calls.append(self)

    monkeypatch.setattr(_Call, "run", run)
    mw = RetryMiddleware()
    request: Any = types.SimpleNamespace(headers={}, method="GET")
    handler: Any = object()
    await mw(request, handler)
    (call,) = calls
    in_place = {name: getattr(call, name, _UNSET) for name in _Call.__slots__}
    assert {n for n, v in in_place.items() if v is _UNSET} == {
        n for n, v in by_init.items() if v is _UNSET
    }
    assert (call.mw, call.request, call.handler, call.policy) == (mw, request, handler, mw.policy)
    assert call.ctx is not None
    assert (call.last_status, call._service, call._idempotent, call._url) == (None,) * 4


_UNSET = object()


async def test_a_read_answer_goes_back_to_the_pool_without_a_wait_for_a_writer_it_no_longer_has(
    serve: ServerFactory,
) -> None:
    peers: list[object] = []

    async def ok(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http") as engine:
        await engine.request("GET", "svc", "/ok")
        with python_calls() as seen:
            resp = await engine.request("GET", "svc", "/ok")
        assert resp.status == 200
        assert resp.body == b'{"ok": true}'
        await engine.request("GET", "svc", "/ok")
    # Released all the same: every call went out on the one pooled connection.
    assert len(peers) == 3
    assert len(set(peers)) == 1
    assert ClientResponse.wait_for_close.__code__ not in seen
