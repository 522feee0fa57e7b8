"""Regression tests for a review of the socket layer (F1-F7).

- F1: the re-login escalation's connects go through the reconnect pacer, and a socket waits out
  its own backoff pause before it escalates: a fleet failing together neither escalates nor
  reconnects all at once.
- F2: a frame is sent at most once. A write aiohttp refused before writing anything waits for
  the next connection; one whose frame reached the transport and whose drain failed with the
  connection is in doubt and never sent again (a request fails with ``SocketClosed``, a message
  is logged as in doubt).
- F3: a connection that does not become ready within ``ready_timeout`` (a peer that took the
  upgrade and stopped reading, an ``on_connect`` that hangs) is ended as a dead peer.
- F4: a callback's error reaches the log redacted in its traceback too.
- F5: only consecutive re-authentications count toward ``max_auth_failures``.
- F6: the inbox is bounded in size (``max_inbox_bytes``), not only in frames.
- F7: a binary frame before ``InitConnection``'s answer is held, not taken for a drop.

Against the simulator and loopback aiohttp servers, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import socket as stdlib_socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from le_transport import (
    ConsumerJwt,
    Engine,
    EventHooks,
    RetryPolicy,
    SocketAuthFailed,
    SocketClosed,
    StaticBearer,
)
from le_transport._shown import redacted_exc_info
from le_transport.errors import (
    ConfigurationError,
    ConnectionFailed,
    ServerStatusError,
    SocketError,
)
from le_transport.middleware.context import is_provider_outage
from le_transport.policies import BackoffPolicy, Classifier, Disconnect, TokenBucket
from le_transport.providers import Credentials, StaticDomains
from le_transport.sockets import (
    AuthPlacement,
    Connection,
    DialFailed,
    EngineDialer,
    EscalationRequest,
    ReconnectPacer,
    ResilientSocket,
    SocketOptions,
)
from le_transport.sockets.dial import write_never_began
from le_transport.sockets.options import MAX_INBOX_BYTES, READY_TIMEOUT
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.known_secrets import BEARER, JWT
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

UPGRADE = "/ws_api/*"


async def _until(pred: Callable[[], bool]) -> None:
    """Yield to the loop until ``pred()`` holds: never a wall-clock sleep (the virtual clock
    jumps whenever the loop idles), and loopback I/O is served on each turn."""
    for _ in range(200_000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def _answer(frame: dict[str, Any], code: int = 200) -> str:
    return json.dumps({"kind": "resp", "reqId": frame["id"], "code": code, "body": {}})


class _TimedStates:
    """State events with the virtual time they came at."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._waits: list[tuple[str, int, asyncio.Future[None]]] = []

    def __call__(self, event: Any) -> None:
        self.events.append((self.clock.now(), event.name, dict(event.details)))
        for name, count, fut in self._waits:
            if not fut.done() and len(self.times(name)) >= count:
                fut.set_result(None)

    async def reach(self, name: str, count: int) -> None:
        """Wait (letting the loop idle, so that virtual time passes) until ``count`` events
        called ``name`` came."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits.append((name, count, fut))
        if len(self.times(name)) >= count:
            fut.set_result(None)
        await fut

    def times(self, name: str) -> list[float]:
        return [at for at, n, _ in self.events if n == name]


def _engine_on(host: str, clock: VirtualClock, hook: Any, **kwargs: Any) -> Engine:
    return Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer(BEARER),
        hooks=EventHooks(on_state=[hook]),
        **kwargs,
    )


async def _serve_small_rcvbuf(app: web.Application) -> tuple[str, web.AppRunner]:
    """A loopback server whose accepted sockets have a small receive buffer, so that a peer
    that stops reading pushes back at once."""
    sock = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 65536)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return f"127.0.0.1:{sock.getsockname()[1]}", runner


@pytest.fixture
async def small_rcvbuf() -> AsyncIterator[Callable[[web.Application], Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        host, runner = await _serve_small_rcvbuf(app)
        runners.append(runner)
        return host

    yield start
    for runner in runners:
        await runner.cleanup()


# -- F1: escalated connects are paced, and wait out the socket's own pause first ------------


class _RefusingDialer:
    """Refuses every connect, noting the virtual time of each."""

    name = "test/refusing"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.dials: list[float] = []

    async def dial(self) -> Connection:
        self.dials.append(self.clock.now())
        await asyncio.sleep(0)
        raise DialFailed("refused", disconnect=Disconnect.connect_failed("refused"))

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        return None

    async def refresh(self) -> None:
        return None


class _StopHere(Exception):
    pass


async def test_an_escalation_waits_out_the_backoff_pause_and_its_connects_are_paced(
    clock: VirtualClock,
) -> None:
    dialer = _RefusingDialer(clock)
    escalated_at: list[float] = []

    async def relogin(request: EscalationRequest, connect: Any) -> Connection | None:
        escalated_at.append(clock.now())
        for _ in range(2):  # two connect attempts of the loop, back to back
            with pytest.raises(DialFailed):
                await connect()
        raise _StopHere

    # One slot a second, none in reserve: back-to-back connects are a second apart.
    pacer = ReconnectPacer(clock, TokenBucket(rate=1.0, burst=1))
    options = SocketOptions(
        backoff=BackoffPolicy.reconnect(first=1.0, factor=2.0, jitter=0.0),
        escalate_after=2,
        keepalive=None,
    )
    ws = ResilientSocket(dialer, options=options, clock=clock, pacer=pacer, escalate=relogin)
    ws.start()
    with pytest.raises(SocketClosed) as stopped:
        await ws.wait_open()
    assert isinstance(stopped.value.__cause__, _StopHere)
    # Refused at 0, paused 1 s, refused at 1, paused 2 s, then escalated (at 1, at once, before
    # the fix); the loop's two connects take a slot each (both at 1, before the fix).
    assert escalated_at == [3.0]
    assert dialer.dials == [0.0, 1.0, 3.0, 4.0]


async def test_a_fleet_the_relogin_loop_releases_together_reconnects_at_the_pacers_rate(
    clock: VirtualClock, serve: ServerFactory
) -> None:
    timed = _TimedStates(clock)
    healthy = False
    accepted: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if not healthy:
            return web.Response(status=503)
        accepted.append(clock.now())
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    count = 12
    pacer = ReconnectPacer(clock, TokenBucket(rate=1.0, burst=2))
    options = SocketOptions(keepalive=None)
    async with _engine_on(host, clock, timed, pacer=pacer) as engine:
        sockets = [await engine.websocket("svc", "/ws", options=options) for _ in range(count)]
        # Every socket escalated to the engine's re-login loop, which waits out its pause.
        await timed.reach("escalating", count)
        healthy = True
        await asyncio.gather(*(ws.wait_open() for ws in sockets))
        for ws in sockets:
            await ws.close()
    assert len(accepted) == count
    # The round's pause ended for every socket at once: before the fix all twelve connected
    # at that one instant. Through the pacer: its burst of 2, then one a second.
    per_instant = collections.Counter(accepted)
    assert max(per_instant.values()) <= 2, per_instant
    assert max(accepted) - min(accepted) >= (count - 2) * 1.0 - 0.5
    # And each socket escalated only after its own backoff pause (its event says how long),
    # drawn with the backoff's jitter: a fleet failing together does not escalate together.
    pauses = [d.get("paused") for _, n, d in timed.events if n == "escalating"]
    assert len(pauses) >= count
    assert all(isinstance(p, float) and p > 0 for p in pauses)
    assert len(set(pauses)) > 1


# -- F2: at most once --------------------------------------------------------------------------


async def test_only_a_write_aiohttp_refused_before_writing_counts_as_never_begun(
    serve: ServerFactory,
) -> None:
    # What aiohttp raises before it writes anything (checked against the real thing, so that
    # an aiohttp that changes its words shows here), and what its drain raises after.
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{host}/ws")
        conn = Connection(ws, None)
        assert conn.transport is not None
        conn.transport.abort()
        with pytest.raises(aiohttp.ClientConnectionResetError) as refused:
            await ws.send_str("never written")
        await ws.close()
    assert write_never_began(refused.value)
    assert not write_never_began(ConnectionError("Connection lost"))
    assert not write_never_began(aiohttp.ClientConnectionResetError("Connection lost"))
    assert not write_never_began(aiohttp.ClientOSError(104, "reset"))
    assert not write_never_began(RuntimeError("closed"))


BIG = 24 * 1024 * 1024


@pytest.mark.parametrize("kind", ["message", "request"])
async def test_a_frame_the_peer_read_before_the_connection_reset_is_never_sent_again(
    kind: str, clock: VirtualClock, small_rcvbuf: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The frame's write waits in aiohttp's drain behind a backlog (the peer reads slowly),
    with more written behind it; the peer reads the backlog and the frame in full, then
    resets the connection. The write fails, and it used to go back to the queue: delivered
    twice. The drain's failure leaves it in doubt: never sent again."""
    seen: list[tuple[int, str]] = []
    connections = 0
    go = asyncio.Event()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        me = connections
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        if me == 1:
            transport.pause_reading()
            await go.wait()
            transport.resume_reading()
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            text = msg.data
            is_json = text.startswith("{")
            mark = json.loads(text)["type"] if is_json else text[:1]
            seen.append((me, mark))
            if me == 1 and mark == "A":
                transport.abort()  # a reset, with the frame after A unread
                break
            if is_json:
                await ws.send_str(_answer(json.loads(text)))
            if mark == "Z":
                done.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await small_rcvbuf(app)
    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    async with _engine_on(host, clock, lambda _e: None) as engine:
        ws = await engine.websocket(
            "svc", "/ws", options=SocketOptions(keepalive=None, request_timeout=3600)
        )
        await ws.wait_open()
        backlog = asyncio.create_task(ws.send("F" * BIG))
        await asyncio.sleep(0)
        assert not backlog.done()  # written, waiting in the drain
        if kind == "message":
            frame: asyncio.Task[Any] = asyncio.create_task(ws.send("A" * 300_000))
        else:
            frame = asyncio.create_task(ws.request("A", {"pad": "a" * 300_000}))
        await asyncio.sleep(0)
        behind = asyncio.create_task(ws.send("B" * BIG))
        await asyncio.sleep(0)
        assert not frame.done()
        assert not behind.done()
        go.set()
        outcomes = await asyncio.gather(backlog, frame, behind, return_exceptions=True)
        await ws.wait_open()
        assert await ws.send("Z") is True
        await done.wait()
        await ws.close()
    assert [mark for me, mark in seen if mark == "A"] == ["A"], seen
    assert next(me for me, mark in seen if mark == "A") == 1  # the first connection
    if kind == "message":
        assert list(outcomes) == [True, True, True]
        doubt = [r for r in caplog.records if "may or may not have been delivered" in r.message]
        assert doubt
        assert all(r.levelno == logging.WARNING for r in doubt)
    else:
        assert isinstance(outcomes[1], SocketClosed), outcomes
        assert "may or may not have been processed" in str(outcomes[1])


# -- F3: a connection that never becomes ready ----------------------------------------------


def test_ready_timeout_is_an_option_with_a_default_above_the_request_timeout() -> None:
    options = SocketOptions()
    assert options.ready_timeout == READY_TIMEOUT == 60.0
    assert options.ready_timeout > options.request_timeout
    with pytest.raises(ConfigurationError):
        SocketOptions(ready_timeout=0)


async def test_a_peer_that_stops_reading_during_the_flush_is_taken_for_dead(
    clock: VirtualClock, small_rcvbuf: Any
) -> None:
    timed = _TimedStates(clock)
    release = asyncio.Event()
    connections = 0

    finished = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        me = connections
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        try:
            if me == 1:
                transport.pause_reading()  # alive, but reads nothing more
                await release.wait()
                transport.resume_reading()  # to learn that the client went away
            async for _ in ws:
                pass
        finally:
            if me == 1:
                finished.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await small_rcvbuf(app)
    async with _engine_on(host, clock, timed) as engine:
        ws = ResilientSocket(
            EngineDialer(engine, "svc", "/ws"),
            clock=clock,
            options=SocketOptions(keepalive=None, ready_timeout=20.0, escalate_after=0),
            hooks=EventHooks(on_state=[timed]),
        )
        for _ in range(400):  # ~16 MB queued before the first connect
            assert await ws.send("m" * 40_000) is False
        ws.start()
        await ws.wait_open(timeout=600)  # before the fix: never (the flush hung for ever)
        await ws.close()
        release.set()
        await finished.wait()
    assert connections == 2
    (lost_at,) = timed.times("lost")
    (opened_at, _) = timed.times("open")
    assert 20.0 <= lost_at - opened_at <= 22.0
    reason = next(d["reason"] for _, n, d in timed.events if n == "lost")
    assert reason == "peer dead: not ready within ready_timeout"


async def test_an_on_connect_that_hangs_is_cut_at_ready_timeout_and_the_socket_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def resubscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # hangs, on the first connection only

    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(
            engine, sim, SocketOptions(keepalive=None, ready_timeout=45.0), on_connect=[resubscribe]
        )
        await ws.wait_open(timeout=600)
        assert 45.0 <= clock.now() < 50.0
    assert calls == 2
    assert len(sim.sockets.all) == 2
    assert any("made no progress for 45 s" in r.message for r in caplog.records)


# -- F4: tracebacks redacted --------------------------------------------------------------


async def test_a_callbacks_error_is_logged_with_a_traceback_that_shows_no_secret(
    sim: Simulator, clock: VirtualClock, states: StateLog, secret_values: set[str]
) -> None:
    secret_values.add(JWT)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("le_transport.sockets")
    logger.addHandler(handler)
    calls = 0
    handled = asyncio.Event()

    async def resubscribe(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                raise KeyError(f"access_token={JWT}")
            except KeyError as exc:
                raise RuntimeError(f"GET https://idp.example/api?access_token={JWT}") from exc

    async def on_frame(frame: Any) -> None:
        handled.set()
        raise ValueError(f"Authorization: Bearer {JWT}")

    try:
        async with agent_engine(sim, clock, states) as engine:
            ws = await brand_socket(engine, sim, on_connect=[resubscribe], on_frame=on_frame)
            await ws.wait_open()
            await sim.sockets.notify(".ams.ms.TestEvent", {"n": 1})
            await handled.wait()
            await ws.request(".GetClock")  # read after the handler returned
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert JWT not in text
    # The tracebacks are there, down to the callbacks, with their exceptions' words redacted.
    assert text.count("Traceback (most recent call last)") >= 2
    assert "in resubscribe" in text
    assert "in on_frame" in text
    assert "RuntimeError: GET https://idp.example/api?access_token=***" in text
    assert "KeyError: 'access_token=***'" in text
    assert "ValueError: Authorization: Bearer ***" in text


def test_a_redacted_exc_info_keeps_the_class_the_chain_and_the_frames() -> None:
    class Custom(Exception):
        def __init__(self, shown: str, hidden: str) -> None:
            super().__init__(shown)
            self.hidden = hidden

        def __str__(self) -> str:
            return f"{self.args[0]} token={self.hidden}"

    def fail() -> None:
        try:
            raise OSError(f"password={BEARER}")
        except OSError as exc:
            err = Custom("wrapped", BEARER)
            err.add_note(f"secret: {BEARER}")
            raise ExceptionGroup("several", [err, ValueError(JWT)]) from exc

    try:
        fail()
    except ExceptionGroup as exc:
        caught = exc
    info = redacted_exc_info(caught)
    assert info[0] is ExceptionGroup
    assert isinstance(info[1], ExceptionGroup)
    assert info[2] is caught.__traceback__
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, info)
    handler.handle(record)
    text = stream.getvalue()
    assert BEARER not in text
    assert JWT not in text
    for shown in ("in fail", "OSError: password=***", "Custom: wrapped token=***", "ValueError"):
        assert shown in text, text
    assert "direct cause" in text


# -- F5: consecutive re-authentications only ------------------------------------------------


async def test_a_gateway_flapping_between_401_and_503_does_not_stop_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    options = SocketOptions(keepalive=None, escalate_after=0, max_auth_failures=3)
    sim.faults.script("GET", UPGRADE, [401, 503] * 6)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        # Before the fix: the fourth 401 (after three 503s in between) stopped it for good.
        await ws.wait_open(timeout=7200)
        assert ws.error is None
    assert len(states.of("reauthenticating")) == 6


async def test_re_authentications_in_a_row_still_stop_the_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    options = SocketOptions(keepalive=None, escalate_after=0, max_auth_failures=3)
    sim.faults.script("GET", UPGRADE, [401] * 4)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        with pytest.raises(SocketAuthFailed):
            await ws.wait_open(timeout=7200)


# -- F6: the inbox bounded in size ------------------------------------------------------------


def test_max_inbox_bytes_has_a_default_and_refuses_what_is_not_a_size() -> None:
    assert SocketOptions().max_inbox_bytes == MAX_INBOX_BYTES == 16 * 1024 * 1024
    assert SocketOptions(max_inbox_bytes=0).max_inbox_bytes == 0
    for bad in (-1, True, 1.5, "1"):
        with pytest.raises(ConfigurationError, match="max_inbox_bytes"):
            SocketOptions(max_inbox_bytes=bad)  # type: ignore[arg-type]


async def test_large_frames_pause_the_socket_at_max_inbox_bytes_and_nothing_is_lost(
    clock: VirtualClock, serve: ServerFactory
) -> None:
    size = 64 * 1024
    count = 40

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for n in range(count):
            await ws.send_str(f"{n:04d}" + "x" * (size - 4))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    limit = 1024 * 1024
    options = SocketOptions(keepalive=None, max_inbox=10_000, max_inbox_bytes=limit)
    async with _engine_on(host, clock, lambda _e: None) as engine:
        ws = await engine.websocket("svc", "/ws", options=options)
        await _until(lambda: ws.paused)
        # Paused by size, far under the frame bound: 16 frames of 64 KiB, the 17th held.
        assert ws.inbox_size == limit // size
        assert ws.inbox_bytes == limit
        got = []
        async for frame in ws:
            got.append(frame)
            assert ws.inbox_bytes <= limit + size
            if len(got) == count:
                break
        assert not ws.paused
        assert ws.inbox_bytes == 0
        await ws.close()
    assert [frame[:4] for frame in got] == [f"{n:04d}" for n in range(count)]


# -- F7: a binary frame before InitConnection's answer ----------------------------------------


async def test_a_binary_frame_before_init_connection_is_answered_is_held_for_the_consumer(
    clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    connects = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "InitConnection":
                await ws.send_bytes(b"\x00binary hello")
                await ws.send_str('{"kind": "notification", "n": 1}')
            await ws.send_str(_answer(frame))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    async with _engine_on(host, clock, states) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            auth_placement=AuthPlacement.FIRST_FRAME,
            options=SocketOptions(keepalive=None),
        )
        # Before the fix: every connect failed as a 1006 drop (then re-authenticated).
        await ws.wait_open(timeout=60)
        held = [await ws.__anext__(), await ws.__anext__()]
        await ws.close()
    assert held == [b"\x00binary hello", {"kind": "notification", "n": 1}]
    assert connects == 1
    assert states.of("connect_failed") == []
    assert states.of("reauthenticating") == []


@pytest.mark.parametrize(
    ("delays", "request_timeout"), [([70.0], 90.0), ([25.0, 25.0, 25.0], 30.0)]
)
async def test_a_slow_but_answering_on_connect_is_never_cut_by_ready_timeout(
    serve: ServerFactory, clock: VirtualClock, delays: list[float], request_timeout: float
) -> None:
    """ready_timeout bounded the whole of on_connect: a subscription answered in 70 s (its
    request_timeout raised to 90 s), or three requests answered in 25 s each, cut every
    connection as a dead peer, for ever. It bounds a stall: nothing read, nothing written
    whole, no request waiting within its own timeout."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frame = json.loads(msg.data)
            await clock.sleep(delays[int(frame["type"][3:])])
            await ws.send_str(json.dumps({"kind": "resp", "reqId": frame["id"], "code": 200}))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    answered: list[float] = []

    async def subscribe(ws: ResilientSocket) -> None:
        for i in range(len(delays)):
            await ws.request(f"sub{i}")
            answered.append(clock.now())

    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(keepalive=None, request_timeout=request_timeout),
            on_connect=[subscribe],
        )
        await ws.wait_open(timeout=600)
        assert ws.connects == 1
        await ws.close()
    assert len(answered) == len(delays)
    assert answered[-1] == pytest.approx(sum(delays))


def test_a_redacted_exc_info_never_subclasses_the_callers_exception_class() -> None:
    """The stand-in subclassed the caller's class: its __init_subclass__ ran (a registry of
    error classes by name was overwritten by the stand-in) and the stand-in stayed among its
    __subclasses__()."""
    registry: dict[str, type[Exception]] = {}

    class Registered(Exception):
        def __init_subclass__(cls, **kwargs: object) -> None:
            super().__init_subclass__()
            registry[cls.__name__] = cls

    class NotFound(Registered):
        pass

    before = dict(registry)
    info = redacted_exc_info(NotFound(f"token={BEARER}"))
    assert registry == before
    assert NotFound.__subclasses__() == []
    assert info[0] is NotFound
    assert type(info[1]).__qualname__ == NotFound.__qualname__
    assert BEARER not in str(info[1])


@pytest.mark.parametrize("final", [True, False])
async def test_a_login_failing_final_by_nature_stops_the_socket_where_an_outage_reconnects(
    serve: ServerFactory, clock: VirtualClock, final: bool
) -> None:
    """The socket wrapped every login failure but a refusal as a failed connect, so a login
    answered with a status the Classifier makes final (501 here; a refused certificate alike) was
    reconnected into for ever, where an HTTP call's recovery loop never repeats it. A login
    outage (503) still reconnects."""
    logins = 0

    async def login(request: web.Request) -> web.Response:
        nonlocal logins
        logins += 1
        return web.Response(status=501 if final else 503)

    async def upgrade(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_post("/api/account/123/signup", login)
    app.router.add_get("/ws", upgrade)
    host = await serve(app)
    domains = StaticDomains({"idp": host, "svc": host})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=(), classifier=Classifier(final_statuses={501})),
        auth=ConsumerJwt("123", domains=domains),
    ) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(
                keepalive=None, backoff=BackoffPolicy.reconnect(first=1, jitter=0)
            ),
        )
        if final:
            with pytest.raises(SocketClosed, match="reconnecting cannot help") as stopped:
                await ws.wait_open(timeout=3_600)
            assert isinstance(stopped.value.__cause__, ServerStatusError)
            assert logins == 1
        else:
            with pytest.raises(TimeoutError):
                await ws.wait_open(timeout=60)
            assert logins > 3
        await ws.close()


async def test_requests_queued_by_other_tasks_do_not_keep_a_stuck_set_up_alive(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A request queued while the connection is not ready counted as one waiting for its
    answer, so two tasks polling the socket kept a hung on_connect alive for ever: only a
    request sent on the connection, answer awaited, is progress."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:  # reads, never answers
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    calls = 0

    async def hang(ws: ResilientSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # hangs, on the first connection only

    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        ws = await engine.websocket(
            "svc",
            "/ws",
            options=SocketOptions(keepalive=None, ready_timeout=20.0, request_timeout=5.0),
            on_connect=[hang],
        )

        async def poll(offset: float) -> None:
            await clock.sleep(offset)
            while True:
                with contextlib.suppress(SocketError):
                    await ws.request("status")
                await clock.sleep(0.5)

        loop = asyncio.get_running_loop()
        pollers = [loop.create_task(poll(0.0)), loop.create_task(poll(2.5))]
        try:
            await ws.wait_open(timeout=600)
            assert calls == 2
            assert 20.0 <= clock.now() < 30.0
        finally:
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            await ws.close()


async def test_a_socket_whose_host_certificate_is_refused_stops_as_an_http_call_fails(
    tmp_path: Path, clock: VirtualClock
) -> None:
    """The upgrade's refused certificate was taken for a failed connect and reconnected into
    for ever, where the same refusal at the socket's login (or on an HTTP call) is final."""
    from le_transport.testing.simulator.serve import self_signed_certificate, server_tls_context

    cert, key = self_signed_certificate(tmp_path)
    upgrades = 0

    async def upgrade(request: web.Request) -> web.WebSocketResponse:
        nonlocal upgrades
        upgrades += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", upgrade)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls_context(cert, key))
    await site.start()
    try:
        host = f"127.0.0.1:{runner.addresses[0][1]}"
        async with Engine(StaticDomains({"svc": host}), scheme="https", clock=clock) as engine:
            ws = await engine.websocket("svc", "/ws", options=SocketOptions(keepalive=None))
            with pytest.raises(SocketClosed, match="certificate was refused") as stopped:
                await ws.wait_open(timeout=3_600)
            assert isinstance(stopped.value.__cause__, ConnectionFailed)
            assert ws.connects == 0
            await ws.close()
    finally:
        await runner.cleanup()
    assert upgrades == 0


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), False),
    ],
)
def test_a_providers_passing_tls_failure_is_an_outage_and_a_refused_certificate_is_not(
    error: ssl.SSLError, outage: bool
) -> None:
    """Every ssl.SSLError of a provider's own network call was final (a ProviderError), so a
    handshake cut short stopped a socket for good; only a refused certificate is."""
    assert is_provider_outage(error) is outage


async def test_a_request_failed_twice_leaves_no_unretrieved_future(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost while a request's write was in progress failed the request's future
    (SocketClosed: lost in flight), and the write then failed too, raising a second
    SocketClosed to the caller: the first was never retrieved, and asyncio logged 'Future
    exception was never retrieved' as an ERROR (found by a chaos soak)."""
    import gc

    from le_transport.sockets import ResilientSocket

    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))

    async def lost_then_refused(
        self: ResilientSocket, text: str, request_id: str | None, order: int = 0
    ) -> bool:
        assert request_id is not None
        self._pending.sent(request_id, 7)
        self._pending.fail_epoch(7, lambda: SocketClosed("lost with the request in flight"))
        raise SocketClosed("closed while the message was being written; it was not sent")

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open(timeout=60)
        monkeypatch.setattr(ResilientSocket, "_send_text", lost_then_refused)
        with pytest.raises(SocketClosed, match="being written"):
            await ws.request(".GetClock")
        monkeypatch.undo()
        await ws.close()
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not [c for c in seen if "never retrieved" in str(c.get("message", ""))]


async def test_a_refused_upgrade_error_holds_no_context_with_the_bearer(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """DialFailed was raised 'from None' inside the except clause: aiohttp's handshake error,
    whose URL holds the bearer in the UMS path, stayed its __context__ (hidden from
    tracebacks, but reachable by an error reporter walking __context__)."""
    from le_transport.providers import StaticBearer
    from le_transport.sockets import EngineDialer, ums_brand_path
    from le_transport.sockets.dial import DialFailed

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403)

    app = web.Application()
    app.router.add_get("/ws_api/account/123/messaging/brand/{bearer}", refuse)
    host = await serve(app)
    async with Engine(
        {"facadeMsg": host}, scheme="http", clock=clock, auth=StaticBearer(BEARER)
    ) as engine:
        dialer = EngineDialer(engine, "facadeMsg", ums_brand_path("123"), auth=engine.auth)
        with pytest.raises(DialFailed) as failed:
            await dialer.dial()
    err: BaseException | None = failed.value
    while err is not None:
        assert BEARER not in repr(err)
        assert BEARER not in str(getattr(err, "request_info", ""))
        err = err.__cause__ or err.__context__
    assert failed.value.__context__ is None
