"""What a broken or hostile peer, or a failure of our own, may cost a socket: a connection at
most, never the socket, and never a credential.

- a frame the client cannot take (over ``max_msg_size``, text that is not UTF-8) fails the
  connection with aiohttp's close code: not a drop, so never a run of "fast 1006s" that
  re-authenticates;
- a frame nested too deep for the JSON parser, or a flood, before ``InitConnection`` is
  answered costs at most that connect;
- a queued message that cannot be written ends that connection, not the socket (and does not
  leave it connected but never open);
- an upgrade or ``InitConnection`` answered 429 waits a second at least and never escalates;
- an upgrade refused with a ``Retry-After`` (a 429, a 503) waits at least what it asked, up to
  the close policy's ceiling, plus a share drawn up to the backoff's jitter (a fleet refused
  together comes back spread), does not escalate, and gives up rather than pause past the
  backoff's deadline; one asking for nothing (0, a past date, a ceiling of 0) changes nothing;
- a close code the caller made final (``ClosePolicy.fail_codes``) stops the socket with
  :class:`~le_transport.errors.SocketRejected`, as a 403 upgrade does, with the code in its
  ``close_code``;
- a final refusal (a 403 upgrade or ``InitConnection`` answer, a close code made final) met by
  the re-login loop's connect stops the socket with ``SocketRejected`` too, not a plain
  ``SocketClosed``;
- a keepalive clock that fails costs the connections it watched (they reconnect), and a clock
  broken for good stops the socket with a typed error: never a keepalive silently gone;
- a bearer the path template puts anywhere never shows in an error, chained ones included.

Against loopback servers (``serve``) and the simulator, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import logging
import os
import random
import socket
import traceback
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.client_reqrep import ConnectionKey

from le_transport import Engine, EventHooks, SocketClosed, SocketRejected, StaticBearer
from le_transport.chaos import Delay, FaultInjector, FaultRule, Status, WsClose, WsRejectHandshake
from le_transport.policies import (
    MESSAGING_AGENT_SDK_GETCLOCK,
    BackoffPolicy,
    ClosePolicy,
    DisconnectKind,
)
from le_transport.providers import ConsumerJwt, StaticDomains
from le_transport.sockets import (
    CONSUMER_SOCKET_QUERY,
    AuthPlacement,
    Connection,
    DialFailed,
    EngineDialer,
    EscalationRequest,
    ResilientSocket,
    SocketOptions,
    consumer_path,
    dial,
)
from le_transport.sockets.dial import (
    _os_detail,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from tests.conftest import ServerFactory
from tests.known_secrets import BEARER
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    quiet_peer,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


def _answer(frame: dict[str, Any], code: int = 200) -> str:
    return json.dumps({"kind": "resp", "reqId": frame["id"], "code": code, "body": {}})


# -- frames the client cannot take ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "why"),
    [
        ("too-big", 1009, "a message over max_msg_size"),
        ("not-utf8", 1007, "a text frame that is not UTF-8"),
    ],
)
async def test_a_frame_the_client_cannot_take_fails_the_connection_without_reauthenticating(
    clock: VirtualClock,
    serve: ServerFactory,
    states: StateLog,
    caplog: pytest.LogCaptureFixture,
    bad: str,
    code: int,
    why: str,
) -> None:
    connects = 0
    enough = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connects += 1
        if connects >= 4:
            enough.set()
        if bad == "too-big":
            await ws.send_str("x" * 4096)
        else:
            await ws.send_frame(b"\xff\xfe not utf-8", WSMsgType.TEXT)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    async with Engine(StaticDomains({"svc": host}), scheme="http", clock=clock) as engine:
        dialer = EngineDialer(engine, "svc", "/ws", max_msg_size=1024)
        hooks = EventHooks(on_state=[states])
        async with ResilientSocket(dialer, clock=clock, hooks=hooks):
            # Three such connections in a row, each ended at once, used to read as the fast
            # 1006 drops of a revoked token: the socket re-authenticated (a fresh login).
            await enough.wait()
    assert "reauthenticating" not in states.names()
    reasons = [event.details["reason"] for event in states.of("lost")]
    assert len(reasons) >= 3
    assert set(reasons) == {f"failed by the client with code {code} ({why})"}
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "le_transport.sockets"
    ]
    assert any(why in message and str(code) in message for message in warned)


# -- before InitConnection's answer -----------------------------------------------------------


def _first_frame_app(before_answer: list[str]) -> tuple[web.Application, list[int]]:
    """A consumer-like socket at /ws: answers InitConnection (sending ``before_answer`` first,
    on the first connect only) and every other request."""
    connects: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connects.append(len(connects) + 1)
        first = len(connects) == 1
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "InitConnection" and first:
                for text in before_answer:
                    await ws.send_str(text)
            if frame.get("kind") == "req":
                await ws.send_str(_answer(frame))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app, connects


def _consumer_engine(host: str, clock: VirtualClock, states: StateLog) -> Engine:
    return Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer(BEARER),
        hooks=EventHooks(on_state=[states]),
    )


async def test_a_frame_nested_too_deep_before_init_connection_is_answered_is_held_as_text(
    clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    deep = "[" * 100_000
    app, connects = _first_frame_app([deep])
    host = await serve(app)
    async with _consumer_engine(host, clock, states) as engine:
        ws = await engine.websocket("svc", "/ws", auth_placement=AuthPlacement.FIRST_FRAME)
        # Its RecursionError used to escape the dial and stop the socket for good.
        await ws.wait_open(timeout=60)
        assert (await ws.request("GetClock"))["code"] == 200
        held = await ws.__anext__()
    assert held == deep
    assert connects == [1]


async def test_a_flood_before_init_connection_is_answered_fails_that_connect_only(
    clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    flood = [json.dumps({"kind": "notification", "n": n}) for n in range(dial.MAX_EARLY_FRAMES + 1)]
    app, connects = _first_frame_app(flood)
    host = await serve(app)
    async with _consumer_engine(host, clock, states) as engine:
        ws = await engine.websocket("svc", "/ws", auth_placement=AuthPlacement.FIRST_FRAME)
        await ws.wait_open(timeout=60)
        assert (await ws.request("GetClock"))["code"] == 200
        # None of the flood was kept: the connect it came on failed.
        assert ws.inbox_size == 0
    assert connects == [1, 2]
    (failed,) = states.of("connect_failed")
    assert "failed by the client with code 1008" in failed.details["reason"]


@pytest.mark.parametrize("max_msg_size", [1024, 0], ids=["past-max_msg_size", "no-size-limit"])
async def test_frames_before_init_connection_are_bounded_in_size_too(
    max_msg_size: int, clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    # 1,200 characters before the answer: past a 1,024 limit the connect fails; with 0,
    # aiohttp's "no limit" (which failed every connect that got an early frame), only the
    # frame count bounds them.
    app, _ = _first_frame_app(["x" * 600] * 2)
    host = await serve(app)
    async with _consumer_engine(host, clock, states) as engine:
        dialer = EngineDialer(
            engine,
            "svc",
            "/ws",
            auth=engine.auth,
            placement=AuthPlacement.FIRST_FRAME,
            max_msg_size=max_msg_size,
        )
        if max_msg_size:
            with pytest.raises(DialFailed) as refused:
                await dialer.dial()
            assert refused.value.disconnect.kind is DisconnectKind.FAILED_BY_CLIENT
            assert refused.value.disconnect.code == 1008
            return
        conn = await dialer.dial()
        try:
            assert len(conn.early_frames) == 2
        finally:
            await conn.close(clock, 0.1)


# -- a queued message that cannot be written --------------------------------------------------


def _poison_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the write of any frame mentioning "poison" fail, and not because the connection
    did: what send() cannot tell in advance."""
    write = Connection.send_text

    async def send_text(conn: Connection, text: str) -> None:
        if "poison" in text:
            raise LookupError("no way to write this frame")
        await write(conn, text)

    monkeypatch.setattr(Connection, "send_text", send_text)


@pytest.mark.parametrize("with_on_connect", [False, True], ids=["plain", "with-on-connect"])
async def test_a_queued_message_that_cannot_be_written_costs_a_connection_not_the_socket(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    with_on_connect: bool,
) -> None:
    _poison_writes(monkeypatch)

    async def resubscribe(ws: ResilientSocket) -> None:
        await ws.request(".GetClock")

    on_connect = [resubscribe] if with_on_connect else []
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=on_connect)
        assert await ws.send({"kind": "req", "id": "a", "type": "first"}) is False
        assert await ws.send({"kind": "req", "id": "b", "type": "poison"}) is False
        poisoned = asyncio.ensure_future(ws.request("poison-request"))
        await asyncio.sleep(0)  # queued behind the others
        assert await ws.send({"kind": "req", "id": "c", "type": "last"}) is False
        # It used to stop the socket for good, or (with on_connect) leave it connected and
        # never open.
        await ws.wait_open(timeout=60)
        with pytest.raises(SocketClosed):
            await poisoned
        assert (await ws.request(".GetClock"))["code"] == 200
        assert not ws.closed
        assert ws.error is None
        assert ws.connects == 3
    sent = [[f.get("type") for f in sock.received] for sock in sim.sockets.all]
    resubscribed = [".GetClock"] if with_on_connect else []
    assert sent == [
        [*resubscribed, "first"],
        resubscribed,
        [*resubscribed, "last", ".GetClock"],
    ]
    # The peer heard that the client failed the connection (1011), not a normal close.
    assert [sock.ended for sock in sim.sockets.all[:2]] == [("client", 1011)] * 2
    reasons = [event.details["reason"] for event in states.of("lost")]
    assert (
        reasons
        == ["failed by the client with code 1011 (LookupError making the connection ready)"] * 2
    )
    assert "reauthenticating" not in states.names()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("could not be made ready" in r.getMessage() for r in errors)
    assert any("dropped" in r.getMessage() for r in errors)


@pytest.mark.parametrize("how", ["send", "request"])
async def test_a_message_the_write_refuses_on_an_open_socket_is_typed_and_costs_the_connection(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    # The twin of the queued case: sent at once on an open connection, the write's own error
    # (here a LookupError) escaped send() untyped and the connection stayed in use.
    _poison_writes(monkeypatch)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open(timeout=60)
        poison = (
            ws.send({"kind": "req", "id": "b", "type": "poison"})
            if how == "send"
            else ws.request("poison-request")
        )
        with pytest.raises(SocketClosed, match="could not be written"):
            await poison
        await ws.wait_open(timeout=60)
        assert (await ws.request(".GetClock"))["code"] == 200
        assert ws.connects == 2
        assert ws.error is None
    assert sim.sockets.all[0].ended == ("client", 1011)


# -- rate limited on connect ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["upgrade", "init-connection"])
async def test_a_connect_answered_429_waits_a_second_at_least_and_never_escalates(
    clock: VirtualClock, serve: ServerFactory, states: StateLog, where: str
) -> None:
    attempts = 0

    async def rate_limited(request: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        if where == "upgrade":
            return web.Response(status=429)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frame = json.loads(msg.data)
            await ws.send_str(_answer(frame, 429 if frame.get("type") == "InitConnection" else 200))
        return ws

    app = web.Application()
    app.router.add_get("/ws", rate_limited)
    host = await serve(app)
    # A backoff far under a second, and escalation after two failures: neither may apply to a
    # rate limit.
    options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=2)
    placement = AuthPlacement.NONE if where == "upgrade" else AuthPlacement.FIRST_FRAME
    async with _consumer_engine(host, clock, states) as engine:
        ws = await engine.websocket("svc", "/ws", options=options, auth_placement=placement)
        await clock.sleep(30)
        assert not ws.closed
    assert "escalating" not in states.names()
    assert "reauthenticating" not in states.names()
    pauses = [event.details["in_seconds"] for event in states.of("reconnecting")]
    assert len(pauses) >= 5
    assert min(pauses) >= 1.0
    # Every attempt was followed by a pause (the last one cut short by the close).
    assert attempts == len(pauses)


# -- a refused upgrade's Retry-After ------------------------------------------------------------


def _upgrade_times(sim: Simulator) -> list[float]:
    return [r.at for r in sim.requests if r.path.startswith("/ws_api/")]


@pytest.mark.parametrize(
    ("status", "asked", "pause"),
    [(429, 30, 30.0), (503, 30, 30.0), (503, 7.5, 7.5), (503, 3600, 60.0)],
)
async def test_an_upgrade_refused_with_retry_after_waits_what_the_server_asked(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    status: int,
    asked: float,
    pause: float,
) -> None:
    # Twice refused, then served. The backoff alone would retry in 0.1 s (and after a 429 in
    # 1 s), and escalate to the re-login loop, which dials at once, after the first failure.
    sim.faults.script("GET", "/ws_api/*", [Status(status, retry_after=asked)] * 2)
    options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open(timeout=600)
        assert (await ws.request(".GetClock"))["code"] == 200
    assert [e.details["in_seconds"] for e in states.of("reconnecting")] == [pause, pause]
    # The server's ask, up to the ceiling (60 s: the HTTP retry's own), between the upgrades.
    first, second, third = _upgrade_times(sim)
    assert second - first == pytest.approx(pause, abs=0.05)
    assert third - second == pytest.approx(pause, abs=0.05)
    assert "escalating" not in states.names()
    assert [e.details["reason"] for e in states.of("connect_failed")] == [
        f"upgrade refused with HTTP {status} (Retry-After: {asked:g} s)"
    ] * 2


@pytest.mark.parametrize(("retry_after", "pause"), [("date", 20.0), ("soon", 0.1)])
async def test_a_retry_after_date_is_read_from_the_answers_date_and_a_bad_one_ignored(
    clock: VirtualClock,
    serve: ServerFactory,
    states: StateLog,
    caplog: pytest.LogCaptureFixture,
    retry_after: str,
    pause: float,
) -> None:
    # An HTTP-date, measured from the answer's Date as the HTTP retry measures it (a date
    # years off the wall clock: only the Date header can make it 20 s); or nonsense, logged
    # and ignored (the schedule's 0.1 s).
    date = 1_000_000_000.0
    value = email.utils.formatdate(date + 20, usegmt=True) if retry_after == "date" else "soon"
    attempts = 0

    async def limited(request: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            headers = {"Retry-After": value, "Date": email.utils.formatdate(date, usegmt=True)}
            return web.Response(status=503, headers=headers)
        return await quiet_peer(request)

    app = web.Application()
    app.router.add_get("/ws", limited)
    host = await serve(app)
    options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0))
    async with _consumer_engine(host, clock, states) as engine:
        ws = await engine.websocket(
            "svc", "/ws", options=options, auth_placement=AuthPlacement.NONE
        )
        await ws.wait_open(timeout=60)
    assert [e.details["in_seconds"] for e in states.of("reconnecting")] == [pause]
    ignored = [r for r in caplog.records if "ignoring invalid Retry-After" in r.getMessage()]
    assert len(ignored) == (retry_after == "soon")


async def test_a_fleet_refused_with_one_retry_after_comes_back_spread_not_at_one_instant(
    sim: Simulator, clock: VirtualClock
) -> None:
    # Before: each socket waited max(jittered backoff, Retry-After), so every one came back at
    # exactly 30 s, the backoff's jitter lost under the server's floor. Now each waits the
    # ask plus its own draw of up to the backoff's jitter (±20%: up to 36 s), never less.
    n = 6
    sim.faults.script("GET", "/ws_api/*", [Status(503, retry_after=30)] * n)
    options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0.2))
    logs = [StateLog() for _ in range(n)]
    # One engine per process, each with its own seeded random source.
    engines = [agent_engine(sim, clock, log, rng=random.Random(i)) for i, log in enumerate(logs)]
    for engine in engines:
        await engine.__aenter__()
    try:
        sockets = [await brand_socket(engine, sim, options) for engine in engines]
        await asyncio.gather(*(ws.wait_open(timeout=600) for ws in sockets))
    finally:
        for engine in engines:
            await engine.__aexit__(None, None, None)
    pauses = [e.details["in_seconds"] for log in logs for e in log.of("reconnecting")]
    assert len(pauses) == n
    assert len(set(pauses)) == n
    assert all(30.0 <= pause <= 36.0 for pause in pauses)
    second = sorted(_upgrade_times(sim))[n:]
    assert len(set(second)) == n
    assert min(second) >= 30.0
    # Still no escalation: the ask lengthened every pause.
    assert not any("escalating" in log.names() for log in logs)


@pytest.mark.parametrize(
    ("asked", "upgrades"),
    [(60, [0.0]), (4, [0.0, 4.0, 8.0])],
)
async def test_a_retry_after_pause_past_the_backoffs_deadline_gives_up(
    sim: Simulator, clock: VirtualClock, states: StateLog, asked: int, upgrades: list[float]
) -> None:
    # Before: the Retry-After pause overrode the deadline: it slept 60 s past a 10 s deadline
    # and dialled again, as often as the server refused.
    sim.faults.script("GET", "/ws_api/*", [Status(503, retry_after=asked)] * 50)
    options = SocketOptions(
        backoff=BackoffPolicy.reconnect(first=0.1, jitter=0, deadline=10.0), escalate_after=0
    )
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        with pytest.raises(SocketClosed, match="past the reconnect deadline of 10 s") as stopped:
            await ws.wait_open(timeout=600)
        # It gives up when the refusal comes, not after a pause it would not finish.
        assert clock.now() == pytest.approx(upgrades[-1], abs=0.05)
    assert _upgrade_times(sim) == pytest.approx(upgrades, abs=0.05)
    assert f"Retry-After {asked} s" in str(stopped.value)
    assert [e.details["in_seconds"] for e in states.of("reconnecting")] == [float(asked)] * (
        len(upgrades) - 1
    )


@pytest.mark.parametrize(
    ("retry_after", "policy"),
    [
        (0, ClosePolicy()),
        ("Thu, 01 Jan 1970 00:00:00 GMT", ClosePolicy()),  # a date already past
        (30, ClosePolicy(retry_after_ceiling=0)),  # the caller ignores Retry-After
    ],
)
async def test_a_retry_after_asking_for_nothing_leaves_the_escalation_as_it_was(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    retry_after: int | str,
    policy: ClosePolicy,
) -> None:
    # Before: any Retry-After stopped the escalation to a re-login and showed in the reason
    # ("Retry-After 30 s" with a ceiling of 0, which ignored it), however little it asked.
    sim.faults.script("GET", "/ws_api/*", [Status(503, retry_after=retry_after)] * 3)
    options = SocketOptions(
        backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=2, close_policy=policy
    )
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open(timeout=600)
    assert "escalating" in states.names()
    reasons = [e.details["reason"] for e in states.of("reconnecting")]
    assert reasons
    assert not any("Retry-After" in reason for reason in reasons)
    # The backoff's own pause: nothing was asked for.
    assert states.of("reconnecting")[0].details["in_seconds"] == 0.1


# -- a close code made final -----------------------------------------------------------------


async def test_a_close_code_made_final_stops_the_socket_as_a_refused_upgrade_does(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    options = SocketOptions(close_policy=ClosePolicy(fail_codes={1008}))
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open()
        await sim.sockets.open[0].close(1008)
        # The same typed error as after a 403 upgrade, wherever the socket's user looks.
        with pytest.raises(SocketRejected) as stopped:
            async for _ in ws:
                pass
        await clock.sleep(300)
        assert ws.closed
        assert ws.error is stopped.value
        with pytest.raises(SocketRejected):
            await ws.wait_open()
        with pytest.raises(SocketRejected):
            await ws.send({"kind": "req", "id": "x", "type": ".GetClock", "body": {}})
    # No HTTP status: the close code says what refused it (and the message why it is final).
    assert stopped.value.status == 0
    assert stopped.value.close_code == 1008
    assert "closed by the server with code 1008" in str(stopped.value)
    assert "fail_codes" in str(stopped.value)
    assert len(sim.sockets.all) == 1
    assert "reconnecting" not in states.names("facadeMsg")
    assert states.of("closed")[-1].details["error"] == "SocketRejected"


# -- a final refusal met inside the re-login loop ----------------------------------------------


def _consumer_socket_engine(sim: Simulator, clock: VirtualClock, states: StateLog) -> Engine:
    domains = StaticDomains(sim.domains)
    return Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=ConsumerJwt(sim.account.id, domains=domains),
        hooks=EventHooks(on_state=[states]),
    )


def _upgrades(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path.startswith("/ws_api/"))


@pytest.mark.parametrize(
    ("refusal", "status", "close_code", "reason"),
    [
        ("upgrade 403", 403, None, "upgrade refused with 403"),
        ("InitConnection answered 403", 403, None, "upgrade refused with 403"),
        ("InitConnection closed 1008", 0, 1008, "closed by the server with code 1008"),
    ],
)
async def test_a_final_refusal_met_by_the_relogin_loops_connect_stops_the_socket_rejected(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    refusal: str,
    status: int,
    close_code: int | None,
    reason: str,
) -> None:
    # The socket's first connect is refused with a 503 (no Retry-After): after one failure it
    # escalates, and the engine's re-login loop connects at once. That connect meets a refusal
    # the close policy makes final, which the loop re-raises: it used to reach the socket as
    # "the re-login loop gave up" (a plain SocketClosed), unlike the same refusal met by the
    # socket's own dial.
    second: WsRejectHandshake | WsClose | None = None
    if refusal == "upgrade 403":
        second = WsRejectHandshake(403)
    elif refusal == "InitConnection closed 1008":
        second = WsClose(1008)
    else:

        async def refuse(sock: object, frame: dict[str, Any]) -> tuple[int, Any]:
            return 403, {"msg": "forbidden"}

        sim.sockets.on("InitConnection", refuse)
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(503), second], unit="ws_session")
    options = SocketOptions(
        backoff=BackoffPolicy.reconnect(first=0.1, jitter=0),
        escalate_after=1,
        close_policy=ClosePolicy(fail_codes={1008}),
    )
    async with _consumer_socket_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "asyncMessagingEnt",
            consumer_path(sim.account.id),
            params=CONSUMER_SOCKET_QUERY,
            auth_placement=AuthPlacement.FIRST_FRAME,
            options=options,
        )
        with pytest.raises(SocketRejected) as stopped:
            await ws.wait_open(timeout=600)
        assert ws.closed
        assert ws.error is stopped.value
    rejected = stopped.value
    # Typed as the socket's own dial types it: a caller branches on the fields, not the text.
    assert (rejected.status, rejected.close_code) == (status, close_code)
    assert reason in str(rejected)
    assert "re-login loop" in str(rejected)
    assert isinstance(rejected.__cause__, DialFailed)
    # Met once, inside the loop, and final: no reconnect after it, no second round.
    assert states.names("asyncMessagingEnt").count("escalating") == 1
    assert len(states.of("reconnecting")) == 0
    assert _upgrades(sim) == 2
    assert states.of("closed")[-1].details["error"] == "SocketRejected"


async def test_a_final_refusal_an_escalation_wrapped_still_stops_the_socket_rejected(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # A caller's own escalation that raises its own error from the connect's DialFailed: the
    # refusal in the chain is what stops the socket, typed.
    async def relogin(request: EscalationRequest, connect: Any) -> Connection:
        try:
            connection: Connection = await connect()
        except DialFailed as exc:
            raise RuntimeError("our re-login gave up") from exc
        return connection

    sim.faults.script(
        "GET", "/ws_api/*", [WsRejectHandshake(503), WsRejectHandshake(404)], unit="ws_session"
    )
    options = SocketOptions(backoff=BackoffPolicy.reconnect(first=0.1, jitter=0), escalate_after=1)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options, escalate=relogin)
        with pytest.raises(SocketRejected) as stopped:
            await ws.wait_open(timeout=600)
    assert (stopped.value.status, stopped.value.close_code) == (404, None)
    assert isinstance(stopped.value.__cause__, RuntimeError)
    assert _upgrades(sim) == 2


# -- the keepalive's clock fails ---------------------------------------------------------------


class _FailingClock:
    """The virtual clock, except that ``now()`` raises the next ``glitches`` times it is read,
    and every call raises once ``broken``."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.glitches = 0
        self.broken = False

    def now(self) -> float:
        if self.broken or self.glitches:
            self.glitches = max(0, self.glitches - 1)
            raise OSError("the clock source went away")
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        if self.broken:
            raise OSError("the clock source went away")
        await self._clock.sleep(seconds)

    def __repr__(self) -> str:
        return "_FailingClock()"


def _keepalive_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "le_transport.sockets" and r.levelno == logging.ERROR
    ]


async def test_a_keepalive_clock_that_fails_once_costs_the_connection_and_the_socket_reconnects(
    clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _FailingClock(clock)
    options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)
    async with (
        Simulator(SimulatorConfig(idle_timeout=3600.0), clock=clock) as sim,
        agent_engine(sim, failing, states) as engine,  # type: ignore[arg-type]
    ):
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open()
        await clock.sleep(5)
        # Idle: the next to read the clock is the keepalive scheduler, at its 30 s deadline.
        failing.glitches = 1
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        # The new connection is watched again: probed once idle for an interval.
        await clock.sleep(MESSAGING_AGENT_SDK_GETCLOCK.interval + 1)
        assert ws.error is None
        first, second = sim.sockets.all
        assert first.ended == ("client", 1011)
        assert [f.get("type") for f in first.received] == []
        assert [f.get("type") for f in second.received] == [".GetClock"]
    assert [e.details["reason"] for e in states.of("lost")] == [
        "failed by the client with code 1011 (the keepalive stopped (OSError))"
    ]
    [error] = _keepalive_errors(caplog)
    # The clock's type, not its repr (the caller's text); the one socket watched was ended.
    assert error.startswith("socket keepalives stopped: _FailingClock failed (OSError: ")
    assert error.endswith(
        "watched connections forgotten: 1, of which ended so that their sockets reconnect: 1"
    )


async def test_a_clock_broken_for_good_stops_the_socket_with_a_typed_error(
    clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _FailingClock(clock)
    options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)
    async with (
        Simulator(SimulatorConfig(idle_timeout=3600.0), clock=clock) as sim,
        agent_engine(sim, failing, states) as engine,  # type: ignore[arg-type]
    ):
        ws = await brand_socket(engine, sim, options)
        await ws.wait_open()
        await clock.sleep(5)
        failing.broken = True
        # Not a socket left open with a keepalive gone: it stops, and says why.
        with pytest.raises(SocketClosed) as stopped:
            async for _ in ws:
                pass
        assert ws.closed
        assert isinstance(stopped.value.__cause__, OSError)
        failing.broken = False
    assert clock.now() == pytest.approx(30.0, abs=1.0)
    assert "socket keepalives stopped" in _keepalive_errors(caplog)[0]


# -- a bearer anywhere in the path ------------------------------------------------------------


async def test_a_refused_upgrade_never_shows_a_bearer_that_the_path_template_put_anywhere(
    clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/ws/{token}/events", refuse)
    host = await serve(app)
    async with Engine(
        StaticDomains({"svc": host}),
        scheme="http",
        clock=clock,
        auth=StaticBearer(BEARER),
        recovery=BackoffPolicy.relogin(max_attempts=1),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        ws = await engine.websocket(
            "svc", "/ws/{bearer}/events", options=SocketOptions(escalate_after=1)
        )
        with pytest.raises(SocketClosed) as stopped:
            await ws.wait_open()
    # The refused upgrade is in the final error's chain (through the re-login loop), shown
    # from the path template, and the bearer is nowhere in it.
    # Not final (a 503): the loop gave up, which is no refusal.
    assert not isinstance(stopped.value, SocketRejected)
    chain = "".join(traceback.format_exception(stopped.value))
    assert "refused with HTTP 503" in chain
    assert "/ws/bearer/events" in chain
    assert BEARER not in chain


async def test_a_failed_connect_never_shows_a_bearer_that_the_path_template_put_anywhere(
    clock: VirtualClock,
) -> None:
    async with Engine(
        StaticDomains({"svc": "127.0.0.1:1"}), scheme="http", clock=clock, auth=StaticBearer(BEARER)
    ) as engine:
        dialer = EngineDialer(engine, "svc", "/ws/{bearer}/events", auth=engine.auth)
        with pytest.raises(DialFailed) as failed:
            await dialer.dial()
    assert "could not connect to ws://127.0.0.1:1/ws/bearer/events" in str(failed.value)
    # The system's word on it, which tells a refused port from a name that does not resolve.
    assert f"(errno {errno.ECONNREFUSED}: {os.strerror(errno.ECONNREFUSED)})" in str(failed.value)
    assert BEARER not in "".join(traceback.format_exception(failed.value))


@pytest.mark.parametrize(
    ("raised", "shown"),
    [
        (
            aiohttp.ClientConnectorDNSError(
                ConnectionKey("h", 1, False, True, None, None, None),
                socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            ),
            f" (errno {socket.EAI_NONAME}: Name or service not known)",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "peer said: token=abc"),
            f" (errno {errno.ECONNRESET}: {os.strerror(errno.ECONNRESET)})",
        ),
        (aiohttp.ServerDisconnectedError("token=abc"), ""),
        (OSError("token=abc"), ""),
    ],
)
def test_a_failed_connect_tells_the_systems_word_never_the_errors_text(
    raised: BaseException, shown: str
) -> None:
    # Only the errno and the system's message for it: an exception's own text may show a
    # URL, a host or whatever a peer sent.
    assert _os_detail(raised) == shown


async def test_a_session_delay_cut_short_by_the_connect_timeout_closes_the_opened_socket(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A chaos Delay on the session, longer than connect_timeout: the upgrade had succeeded,
    and the socket it opened was dropped unclosed when the timeout cut the delay short (one
    per connect: an 'Unclosed response' at garbage collection, the peer left waiting)."""
    ended: list[int] = []
    two_ended = asyncio.Event()

    async def peer(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        ended.append(ws.close_code or 0)
        if len(ended) >= 2:
            two_ended.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", peer)
    host = await serve(app)
    injector = FaultInjector([FaultRule("slow-open", Delay(delay_ms=5000), unit="ws_session")])
    options = SocketOptions(connect_timeout=0.3, backoff=BackoffPolicy.reconnect().scaled(0.05))
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, wire_middlewares=[injector]
    ) as engine:
        ws = await engine.websocket("svc", "/ws", options=options)
        # Each cut-short connect closes its socket: the peer sees the close. Bounded in real
        # seconds only against a hang (unfixed, the peer waited until garbage collection).
        await asyncio.wait_for(two_ended.wait(), 10)
        assert ended[:2] == [1000, 1000]
        assert ws.connects == 0


async def test_an_init_connection_refused_with_a_float_code_is_a_refusal(
    clock: VirtualClock, serve: ServerFactory, states: StateLog
) -> None:
    # JSON has one kind of number: a server writing its codes as doubles refuses with 401.0,
    # the code 401 (it was taken as an answer and the socket opened unauthenticated).
    connects = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "InitConnection" and connects == 1:
                await ws.send_str(json.dumps({"kind": "resp", "reqId": "0", "code": 401.0}))
            elif frame.get("kind") == "req":
                await ws.send_str(_answer(frame))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    host = await serve(app)
    async with _consumer_engine(host, clock, states) as engine:
        ws = await engine.websocket("svc", "/ws", auth_placement=AuthPlacement.FIRST_FRAME)
        await ws.wait_open(timeout=60)
    assert connects == 2
    assert "reauthenticating" in states.names()
