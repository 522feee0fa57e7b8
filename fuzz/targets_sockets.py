"""Fuzz targets for the WebSocket layer: frames from the server, close codes, InitConnection.

The frame targets run end to end: a real aiohttp WebSocket server on loopback answers the
client's request with fuzzed frames (noise, near-JSON, deep nesting, ``resp`` frames with odd
ids and codes, binary frames) and may close with any code; the real resilient socket reads
them on virtual time. Invariant: a request ends with its answer or a SocketError, the socket
keeps running or stops with a SocketError, closing it leaves no task behind, nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from hypothesis import strategies as st

from le_transport import Engine
from le_transport.errors import SocketError, SocketRequestTimeout
from le_transport.policies.close_codes import ClosePolicy, Disconnect
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock

from ._harness import Target, run_async
from .strategies import json_values, near_json_bytes

__all__ = ["TARGETS"]

_BOUND = 15.0

# What the server does after it reads the client's request: each step sends one frame, the
# last may close. ("answer", ...) sends a resp frame for the request, with fuzzed fields.
Step = tuple[str, Any]


def _resp_frames() -> st.SearchStrategy[Any]:
    req_id = st.one_of(st.just("<id>"), st.text(max_size=6), st.integers(), st.none())
    code = st.one_of(
        st.sampled_from([200, 202, 400, 401, 429, 500]), st.integers(), st.text(), st.none()
    )
    return st.fixed_dictionaries(
        {"kind": st.just("resp"), "reqId": req_id},
        optional={"code": code, "body": json_values(), "type": st.text(max_size=20)},
    )


def _steps() -> st.SearchStrategy[list[Step]]:
    frame = st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("text"), near_json_bytes().map(lambda b: b.decode("utf-8", "replace"))),
        st.tuples(st.just("json"), json_values()),
        st.tuples(st.just("json"), _resp_frames()),
        st.tuples(
            st.just("json"),
            st.fixed_dictionaries(
                {"kind": st.sampled_from(["notification", "req", "resp", "?"])},
                optional={"type": st.text(max_size=20), "body": json_values()},
            ),
        ),
        st.tuples(st.just("binary"), st.binary(max_size=200)),
    )
    close = st.tuples(
        st.just("close"),
        st.one_of(
            st.sampled_from([1000, 1001, 1006, 1011, 1012, 4401, 4407]),
            st.integers(0, 70_000),
        ),
    )
    end = st.one_of(close, st.tuples(st.just("answer"), st.just(200)), st.just(("stay", None)))
    return st.tuples(st.lists(frame, max_size=6), end).map(lambda t: [*t[0], t[1]])


async def _serve_ws(steps: list[Step]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                req_id = json.loads(msg.data).get("id")
            except (ValueError, AttributeError):
                req_id = None
            for kind, value in steps:
                if ws.closed:
                    break
                if kind == "text":
                    await ws.send_str(value)
                elif kind == "json":
                    text = json.dumps(value)
                    await ws.send_str(text.replace('"<id>"', json.dumps(req_id)))
                elif kind == "binary":
                    await ws.send_bytes(value)
                elif kind == "answer":
                    await ws.send_json({"kind": "resp", "reqId": req_id, "code": value, "body": {}})
                elif kind == "close":
                    # Codes a server may not send are sent anyway, as a hostile peer would.
                    await ws.close(code=value if 0 <= value < 65536 else 4000)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


def check_socket_frames(steps: list[Step]) -> None:
    """Whatever frames the server sends (noise, deep JSON, odd resp frames, binary, any close
    code), a request ends with its own answer or a SocketError (never a timeout when the
    server did answer: the reader must survive every frame), the socket never dies of an
    undocumented exception, and closing it leaves no task running."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        runner, host = await _serve_ws(steps)
        clock = VirtualClock()
        before = asyncio.all_tasks()
        try:
            async with Engine({"msg": host}, scheme="http", clock=clock) as engine:
                ws = await engine.websocket(
                    "msg", "/ws", options=SocketOptions(request_timeout=5.0, connect_timeout=5.0)
                )
                try:
                    await ws.wait_open(timeout=5.0)
                    try:
                        answer = await ws.request("GetClock", timeout=5.0)
                    except SocketRequestTimeout:
                        # The server answered at once: a timeout means the reader stopped
                        # reading (a frame killed it) while the socket still looks open.
                        assert steps[-1][0] != "answer", "the answer was never read"
                    except SocketError:
                        pass
                    else:
                        assert isinstance(answer, dict)
                        assert answer.get("kind") == "resp"
                    # Let the reader take in whatever else was sent.
                    await clock.sleep(1.0)
                    assert ws.error is None or isinstance(ws.error, SocketError)
                finally:
                    await ws.close()
        finally:
            await runner.cleanup()
        for _ in range(3):
            await asyncio.sleep(0)
        left = [
            t
            for t in asyncio.all_tasks()
            if t not in before and t is not asyncio.current_task() and not t.done()
        ]
        for t in left:
            t.cancel()
        assert not left, f"tasks left running: {left!r}"
        errors = [c for c in unhandled if "exception" in c]
        assert not errors, f"unhandled: {[repr(c.get('exception')) for c in errors]}"

    run_async(run, _BOUND)


def check_close_code(case: tuple[int, float | None, int]) -> None:
    """The close policy classifies every close code, lifetime and fast-drop count without
    raising: a server can send any code, and any code must lead to a decision."""
    code, lifetime, fast = case
    verdict = ClosePolicy().classify(Disconnect.close_frame(code, lifetime), fast_drops=fast)
    assert verdict is not None


TARGETS: tuple[Target, ...] = (
    Target(
        "socket_frames",
        _steps(),
        check_socket_frames,
        bound=_BOUND + 5,
        examples=(
            [("text", "[" * 100_000), ("answer", 200)],
            [("json", {"kind": "resp", "reqId": "<id>", "code": "500"}), ("stay", None)],
            [("json", {"kind": "resp", "reqId": ["x"]}), ("answer", 200)],
            [("binary", b"\xff\x00"), ("close", 4401)],
            [("close", 1005)],
        ),
    ),
    Target(
        "close_code",
        st.tuples(
            st.integers(-(2**31), 2**31),
            st.one_of(st.none(), st.floats(0, 1e9)),
            st.integers(0, 1000),
        ),
        check_close_code,
    ),
)
