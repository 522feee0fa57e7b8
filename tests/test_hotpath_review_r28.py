"""The happy path's values made in place are, slot for slot, what their constructors make (every
slot of every class in their MRO, with its value), and a request the server answers before its
body was sent whole never leaves its connection in the pool half-sent (benchmarks/README.md,
"What profiling found")."""

from __future__ import annotations

import asyncio
import contextvars
import pickle
import sys
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse, web

from le_transport import Engine, RetryPolicy
from le_transport import engine as engine_module
from le_transport.errors import AttemptRecord, ClientStatusError
from le_transport.middleware.context import _CURRENT, CallContext
from le_transport.middleware.retry import RetryMiddleware, _Call
from le_transport.policies.classify import Outcome
from tests.conftest import ServerFactory

_UNSET = object()


def _slots(obj: object) -> dict[str, object]:
    """Every slot of ``obj``'s class and its bases, by name, with its value (or ``_UNSET``)."""
    names = {name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())}
    return {name: getattr(obj, name, _UNSET) for name in sorted(names)}


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


async def test_a_call_made_in_place_has_every_slot_of_its_mro_as_its_init_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The timer base's slots too: one _Call.__init__ set and the middleware did not would be
    # read unset on the path that needs it, and the guard looking at _Call's own slots alone
    # passed.
    calls: list[_Call] = []

    async def run(self: _Call) -> None:
        calls.append(self)

    monkeypatch.setattr(_Call, "run", run)
    mw = RetryMiddleware()
    request: Any = types.SimpleNamespace(headers={}, method="GET")
    handler: Any = object()
    await mw(request, handler)
    (call,) = calls
    built = _Call(mw, call.ctx, mw.policy, request, handler)
    assert type(call) is _Call
    assert _slots(call) == _slots(built)


class _SeenAtStart:
    """The engine's call-context variable, noting every slot of each context as it is set
    (before anything of the call could change it)."""

    def __init__(self, var: contextvars.ContextVar[CallContext | None]) -> None:
        self.var = var
        self.seen: list[tuple[type[CallContext], dict[str, object]]] = []

    def set(self, ctx: CallContext) -> contextvars.Token[CallContext | None]:
        # (A list copied: the call's attempts are appended to it later.)
        slots = {k: list(v) if type(v) is list else v for k, v in _slots(ctx).items()}
        self.seen.append((type(ctx), slots))
        return self.var.set(ctx)

    def reset(self, token: contextvars.Token[CallContext | None]) -> None:
        self.var.reset(token)


async def test_a_plain_calls_context_has_every_slot_as_its_init_sets_it_and_its_record_is_one(
    serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _SeenAtStart(_CURRENT)
    monkeypatch.setattr(engine_module, "_CURRENT", seen)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/ok", ok)
    host = await serve(app)
    policy = RetryPolicy(attempt_timeout=30.0, deadline=60.0)
    async with Engine({"svc": host}, scheme="http", retry=policy) as engine:
        resp = await engine.request("POST", "svc", "/ok", idempotent=True)
    ((kind, at_start),) = seen.seen
    assert kind is CallContext
    assert at_start == _slots(CallContext("svc", True, policy))
    # The success's record, made with tuple.__new__: the value its constructor makes, every
    # way it is used (a field added to AttemptRecord but not to the loop's tuple: unequal).
    (record,) = resp.attempts
    made = AttemptRecord(1, Outcome.response(200), None, record.started_at)
    assert type(record) is AttemptRecord
    assert len(record) == len(AttemptRecord._fields)
    assert (record, hash(record), repr(record)) == (made, hash(made), repr(made))
    again = pickle.loads(pickle.dumps(record))
    assert (type(again), again) == (AttemptRecord, made)
    assert record._replace(pause=1.0) == made._replace(pause=1.0)
    assert record._asdict() == made._asdict()


# --------------------------------------------------------------------------------------------
# An answer before the request's body was sent whole
# --------------------------------------------------------------------------------------------


class _Upload:
    """A request body streamed as it comes: its first piece at once, the rest only once
    ``more`` is set (an upload the server answers before it ends)."""

    def __init__(self) -> None:
        self.more = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await self.more.wait()
        yield b"y" * 1000


@asynccontextmanager
async def _serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on loopback (its ``host:port``). A connection the client drops while the
    server reads the rest of a body it answered before (aiohttp's lingering read, up to 10 s)
    cancels its handler, which so ends before the test's check for tasks left running."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _early_app(peers: list[object], answer: str) -> web.Application:
    """``POST /up`` answered at once, its body not read: a 413 of known length, a 200 sent
    chunked, or (``expect``) a 417 to its ``Expect: 100-continue`` before any 100; ``GET /ok``
    answered 200. Every request's peer is noted in ``peers``."""

    def note(request: web.Request) -> None:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))

    async def early(request: web.Request) -> web.StreamResponse:
        note(request)
        if answer == "413":
            return web.json_response({"error": "too large"}, status=413)
        resp = web.StreamResponse()  # chunked, no Content-Length
        await resp.prepare(request)
        await resp.write(b'{"ok": ')
        await resp.write(b"true}")
        await resp.write_eof()
        return resp

    async def refuse(request: web.Request) -> web.StreamResponse | None:
        note(request)
        return web.json_response({"error": "no"}, status=417)

    async def ok(request: web.Request) -> web.Response:
        note(request)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/up", early, expect_handler=refuse if answer == "expect" else None)
    app.router.add_get("/ok", ok)
    return app


@pytest.mark.parametrize("answer", ["413", "expect"])
async def test_a_refusal_before_the_body_was_sent_fails_at_once_and_its_connection_is_not_reused(
    answer: str,
) -> None:
    # With aiohttp 3.14.3 (a 100-continue's writer cancelled while it waited for the 100
    # left its connection pooled, the headers sent and the body not: aiohttp #13579, fixed
    # in 3.14.4), the next call's GET was read as that POST's body: its first attempt hung to
    # its timeout.
    peers: list[object] = []
    upload = _Upload()
    policy = RetryPolicy(attempt_timeout=60.0, deadline=120.0)
    async with (
        _serving(_early_app(peers, answer)) as host,
        Engine({"svc": host}, scheme="http", retry=policy) as engine,
    ):
        await engine.request("GET", "svc", "/ok")  # the pooled connection
        if answer == "expect":
            send: Any = engine.request(
                "POST", "svc", "/up", data=b"z" * 1000, headers={"Expect": "100-continue"}
            )
        else:
            send = engine.request("POST", "svc", "/up", data=upload.body())
        with pytest.raises(ClientStatusError) as caught:
            await send
        assert caught.value.status == (417 if answer == "expect" else 413)
        upload.more.set()
        resp = await engine.request("GET", "svc", "/ok")
    assert resp.status == 200
    assert resp.body == b'{"ok": true}'
    assert len(resp.attempts) == 1  # not sent first on the half-sent connection, and lost
    first, refused, after = peers
    assert refused == first  # sent on the pooled connection
    assert after != refused  # which was then closed, not pooled half-sent


@pytest.mark.parametrize("own_session", [False, True])
async def test_an_answer_read_while_the_body_is_still_sent_closes_its_connection(
    own_session: bool,
) -> None:
    # Engine.request waits for the request's writer only while there is one: here there is
    # (the answer ended before the upload, which aiohttp then cancels), so its connection is
    # closed once the writer stopped, never pooled.
    peers: list[object] = []
    upload = _Upload()
    policy = RetryPolicy(attempt_timeout=60.0, deadline=120.0)
    async with (
        _serving(_early_app(peers, "200")) as host,
        # A caller's session without the stack: the engine reads the answer itself.
        aiohttp.ClientSession() if own_session else _NoSession() as session,
        Engine({"svc": host}, scheme="http", retry=policy, session=session) as engine,
    ):
        await engine.request("GET", "svc", "/ok")
        with python_calls() as seen:
            resp = await engine.request("POST", "svc", "/up", data=upload.body())
        assert resp.status == 200
        assert resp.body == b'{"ok": true}'
        upload.more.set()
        after = await engine.request("GET", "svc", "/ok")
    assert after.status == 200
    assert len(after.attempts) == (0 if own_session else 1)
    first, early, again = peers
    assert early == first
    assert again != early
    # The writer was there to wait for (the case this covers).
    assert ClientResponse.wait_for_close.__code__ in seen


class _NoSession:
    """In place of a caller's session: none (the engine makes its own)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
