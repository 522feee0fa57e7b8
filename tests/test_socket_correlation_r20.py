"""Request/response over a resilient socket: a request failed with its connection is not sent
later, one caller's cancellation ends only its own write, requests failed together each get
an exception of their own, only ids the socket handed out are late answers, and an error code
is an error whichever JSON number spells it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from le_transport import SocketClosed, SocketRequestTimeout
from le_transport.clock import timeout_after
from le_transport.sockets import SocketOptions
from le_transport.sockets.dial import Connection
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
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

ORDER = ".ams.ms.PublishEvent"


def slow_first_write(
    monkeypatch: pytest.MonkeyPatch, clock: VirtualClock, type_: str, delay_s: float
) -> None:
    """The first write of a ``type_`` frame waits ``delay_s`` (virtual clock) before anything of
    it is handed to aiohttp (a wrapper's delay, a busy loop): if its connection ended meanwhile,
    aiohttp refuses it with "Cannot write to closing transport" (never written)."""
    left = [1]
    real = Connection.send_text

    async def send_text(self: Connection, text: str) -> None:
        if left[0] and json.loads(text).get("type") == type_:
            left[0] = 0
            await clock.sleep(delay_s)
        await real(self, text)

    monkeypatch.setattr(Connection, "send_text", send_text)


def publish_body(text: str) -> dict[str, Any]:
    return {
        "dialogId": "dialog-1",
        "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text},
    }


# -- a request already failed with SocketClosed is not sent later, on the next connection ----


async def test_request_failed_with_socketclosed_is_not_sent_afterwards(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_first_write(monkeypatch, clock, ORDER, delay_s=5)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        call = asyncio.create_task(ws.request(ORDER, publish_body("pay 100"), timeout=20))
        for _ in range(3):
            await asyncio.sleep(0)
        sim.sockets.open[0].drop()  # the connection is lost with the request in flight
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        with pytest.raises(SocketClosed):
            await call  # "may or may not have been processed: retry if that is safe"
        await ws.request(".GetClock")
    first, second = sim.sockets.all
    published = [f for s in (first, second) for f in s.received if f.get("type") == ORDER]
    # The caller was told the request failed with its connection (and retries it, as told):
    # the library must not have sent it on the next connection behind the caller's back.
    assert published == [], published


# -- one caller's timeout (or cancellation) does not end other callers' writes ----------------


async def test_one_requests_timeout_does_not_cancel_another_callers_request(
    clock: VirtualClock,
) -> None:
    from aiohttp import web

    from le_transport import Engine, SocketError

    release = asyncio.Event()

    async def not_reading(request: web.Request) -> web.StreamResponse:
        # A peer slow to read (busy): it takes the upgrade and reads nothing for now, so the
        # client's writes fill the TCP buffers and aiohttp waits for them to drain.
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await release.wait()
        async for _ in ws:
            pass
        return ws

    simulator = Simulator(clock=clock)
    simulator.add_route("GET", "/slow", not_reading, service="slow")
    big = {"blob": "x" * 1_000_000}
    async with simulator, Engine(simulator.domains, scheme="http", clock=clock) as engine:
        ws = await engine.websocket("slow", "/slow", options=SocketOptions(keepalive=None))
        await ws.wait_open(timeout=30)
        # Fill the buffers until a write waits for the peer (aiohttp's drain). A virtual
        # sleep returns once the loop is quiet (the clock jumps only then): the I/O settled.
        blocked: asyncio.Task[bool] | None = None
        for _ in range(200):
            task = asyncio.create_task(ws.send({"kind": "msg", "n": 0, **big}))
            for _ in range(20):
                await clock.sleep(0.001)
                if task.done():
                    break
            if not task.done():
                blocked = task
                break
        assert blocked is not None, "the peer's buffers never filled"
        patient = asyncio.create_task(ws.request(".patient", big, timeout=600))
        hasty = asyncio.create_task(ws.request(".hasty", big, timeout=1))
        await asyncio.wait({hasty})  # times out (SocketRequestTimeout) after 1 s
        assert isinstance(hasty.exception(), SocketRequestTimeout)
        for _ in range(20):
            await clock.sleep(0.001)
        outcome: BaseException | str | None
        if patient.done():
            outcome = patient.exception() if not patient.cancelled() else "cancelled"
        else:
            outcome = "still waiting"
        release.set()
        blocked_outcome = (
            "cancelled"
            if blocked.cancelled()
            else (blocked.exception() or blocked.result())
            if blocked.done()
            else "still waiting"
        )
        await ws.close()
        for t in (patient, blocked):
            if not t.done():
                t.cancel()
            await asyncio.gather(t, return_exceptions=True)
    # Nobody cancelled the patient request (600 s to go) nor the send: the hasty caller's own
    # timeout must not end them, and certainly not with a bare CancelledError.
    assert outcome == "still waiting" or isinstance(outcome, SocketError), (
        outcome,
        blocked_outcome,
    )
    assert blocked_outcome in ("still waiting", True), blocked_outcome


# -- ... nor the queue's flush beside it: the connection becomes ready -------------------------


async def test_a_timed_out_request_started_by_on_connect_does_not_leave_the_socket_never_ready(
    clock: VirtualClock,
) -> None:
    from aiohttp import web

    from le_transport import Engine

    release = asyncio.Event()
    read: list[int] = []

    async def slow_reader(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await release.wait()  # busy at first, then reads everything
        async for msg in ws:
            read.append(len(msg.data))
        return ws

    async def on_connect(sock: Any) -> None:
        # README: a task an on_connect callback starts and does not wait for "may request as
        # it likes". Its request, a second later (the callbacks done), queues behind the flush.
        async def later() -> Any:
            await clock.sleep(1)
            return await sock.request(".bg", big, timeout=5)

        sock_tasks.append(asyncio.create_task(later()))
        connected.set()

    sock_tasks: list[asyncio.Task[Any]] = []
    connected = asyncio.Event()
    simulator = Simulator(clock=clock)
    simulator.add_route("GET", "/slow", slow_reader, service="slow")
    big = {"blob": "x" * 1_000_000}
    async with simulator, Engine(simulator.domains, scheme="http", clock=clock) as engine:
        ws = await engine.websocket(
            "slow",
            "/slow",
            # A queue of 40 MB: no bound on its size.
            options=SocketOptions(keepalive=None, max_queued_bytes=0),
            on_connect=[on_connect],
        )
        for n in range(40):  # queued: the socket is not open yet
            assert await ws.send({"kind": "msg", "n": n, **big}) is False
        # Let the connect happen and the flush run into the full buffers.
        await connected.wait()
        await asyncio.gather(sock_tasks[0], return_exceptions=True)  # .bg times out (at 6 s)
        release.set()  # the peer reads again: the flush can go on
        try:
            await ws.wait_open(timeout=300)
            opened = True
        except TimeoutError:
            opened = False
        state = (ws.state.value, ws.is_open, ws.queued)
        await ws.close()
        for task in sock_tasks:  # one per connect: a reconnect's is still waiting
            task.cancel()
        await asyncio.gather(*sock_tasks, return_exceptions=True)
    # The connection is up and the peer reads: the queue must go out and the socket open (or
    # at worst the connection end and the socket reconnect), never stay connected-not-ready.
    assert opened, f"never ready after 300 s: state, is_open, queued = {state}"


# -- the same, step by step, on a model of aiohttp's shared drain ------------------------------


class SharedDrain:
    """aiohttp's drain, as its WebSocket writer has it: the frame goes out at once, then every
    write that finds the transport paused awaits one future, the protocol's, which stays as it
    is (a cancelled one too) until the transport resumes writing. Paused after the first write
    of a frame holding ``marker`` (a peer that stopped reading)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        #: Set once a write waits on the drain.
        self.waited = asyncio.Event()
        real = Connection.send_text

        async def send_text(conn: Connection, text: str) -> None:
            await real(conn, text)
            if marker in text and self.waiter is None:
                self.paused = True
            if self.paused:
                if self.waiter is None:
                    self.waiter = asyncio.get_running_loop().create_future()
                self.waited.set()
                await self.waiter

        monkeypatch.setattr(Connection, "send_text", send_text)

    def resume(self) -> None:
        self.paused = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """Something other than the writers cancels the shared future (as aiohttp's close
        cut short by its timeout does); the next connection's transport is a fresh one."""
        assert self.waiter is not None
        self.waiter.cancel()
        self.paused, self.waiter = False, None


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_callers_timeout_ends_its_own_write_only(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = SharedDrain(monkeypatch, '"first"')
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        sent = asyncio.create_task(ws.send({"kind": "msg", "n": "first"}))
        await turns()
        assert drain.paused
        patient = asyncio.create_task(ws.request(".GetClock", timeout=600))

        # Never answered: an answer that came while the write still waited on the drain is
        # the caller's, timeout or not (the frame was out).
        async def unanswered(socket: Any, frame: Any) -> None:
            return None

        sim.sockets.on(".test.Unanswered", unanswered)
        hasty = asyncio.create_task(ws.request(".test.Unanswered", timeout=1))
        with pytest.raises(SocketRequestTimeout):
            await hasty  # its write waited on the drain past its timeout
        await turns()
        assert not sent.done()
        assert not patient.done()
        drain.resume()
        assert await sent is True
        assert (await patient)["code"] == 200
        assert ws.is_open
        assert len(sim.sockets.all) == 1


async def test_a_callers_cancellation_ends_its_own_write_only(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = SharedDrain(monkeypatch, '"first"')
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        sent = asyncio.create_task(ws.send({"kind": "msg", "n": "first"}))
        cancelled = asyncio.create_task(ws.send({"kind": "msg", "n": "second"}))
        await turns()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled  # the caller's own cancellation, as it came
        await turns()
        assert not sent.done()
        drain.resume()
        assert await sent is True
        assert ws.is_open


async def test_a_timed_out_write_beside_the_flush_leaves_the_flush_going(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = SharedDrain(monkeypatch, '"queued-0"')
    started: list[asyncio.Task[Any]] = []
    connected = asyncio.Event()

    async def on_connect(sock: Any) -> None:
        # A task it starts and does not wait for requests beside the flush.
        started.append(asyncio.create_task(sock.request(".GetClock", timeout=1)))
        connected.set()

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None), on_connect=[on_connect])
        for n in range(3):
            assert await ws.send({"kind": "msg", "n": f"queued-{n}"}) is False
        await connected.wait()
        with pytest.raises(SocketRequestTimeout):
            await started[0]
        await turns()
        drain.resume()
        await ws.wait_open(timeout=30)
        assert ws.epoch == 1
        await ws.request(".GetClock")  # the peer has read all that was written before
        (sock,) = sim.sockets.all
        assert [f["n"] for f in sock.received if f.get("kind") == "msg"] == [
            "queued-0",
            "queued-1",
            "queued-2",
        ]


async def test_a_write_cancelled_from_outside_fails_the_connection_typed(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = SharedDrain(monkeypatch, '"first"')

    async def hang(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        await clock.sleep(3600)
        return 200, {}

    sim.sockets.on(".slow", hang)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        sent = asyncio.create_task(ws.send({"kind": "msg", "n": "first"}))
        asked = asyncio.create_task(ws.request(".slow", timeout=600))
        await turns()
        drain.cancel()
        # Not the callers' cancellation: the message is in doubt (sent, never again), the
        # request fails with its connection, which the client failed (1011).
        assert await sent is True
        with pytest.raises(SocketClosed):
            await asked
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert ws.epoch == 2
        assert [e.details.get("reason") for e in states.events if e.name == "lost"] == [
            "failed by the client with code 1011 (a write cancelled from outside its task)"
        ]


async def test_a_flush_write_cancelled_from_outside_fails_the_connection_and_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = SharedDrain(monkeypatch, '"queued-0"')
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        for n in range(3):
            assert await ws.send({"kind": "msg", "n": f"queued-{n}"}) is False
        await drain.waited.wait()
        drain.cancel()
        await ws.wait_open(timeout=60)
        assert ws.epoch == 2
        assert [e.details.get("reason") for e in states.events if e.name == "lost"] == [
            "failed by the client with code 1011 (a write cancelled from outside its task)"
        ]
        await ws.request(".GetClock")  # the peer has read all that was written before
        first, second = sim.sockets.all
        # The frame being written may have gone out: in doubt, never sent again.
        assert [f["n"] for s in (first, second) for f in s.received if f.get("kind") == "msg"] == [
            "queued-0",
            "queued-1",
            "queued-2",
        ]


async def test_a_foreign_cancellation_making_the_connection_ready_fails_it_with_1011(
    sim: Simulator, clock: VirtualClock, states: StateLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from le_transport.sockets import ResilientSocket

    real = ResilientSocket._flush
    left = [1]

    async def flush(self: ResilientSocket, conn: Connection, epoch: int) -> None:
        if left[0]:
            left[0] = 0
            raise asyncio.CancelledError  # not the set-up task's own cancellation
        await real(self, conn, epoch)

    monkeypatch.setattr(ResilientSocket, "_flush", flush)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        assert await ws.send({"kind": "msg", "n": "queued"}) is False
        await ws.wait_open(timeout=60)
        assert ws.epoch == 2
        assert [e.details.get("reason") for e in states.events if e.name == "lost"] == [
            "failed by the client with code 1011 (CancelledError making the connection ready)"
        ]
        await ws.request(".GetClock")
        assert [f["n"] for f in sim.sockets.all[1].received if f.get("kind") == "msg"] == ["queued"]


# -- requests failed together do not share one exception object --------------------------------


async def test_requests_failed_together_do_not_share_one_exception_and_its_context(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def hang(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
        await clock.sleep(3600)
        return 200, {}

    sim.sockets.on(".slow", hang)
    caught: dict[str, BaseException] = {}

    async def caller_a(ws: Any) -> None:
        try:
            raise ValueError("payment card 4111-1111-1111-1111 refused")  # caller A's own error
        except ValueError:
            try:
                await ws.request(".slow", {"who": "a"}, timeout=60)
            except SocketClosed as exc:
                caught["a"] = exc

    async def caller_b(ws: Any) -> None:
        try:
            await ws.request(".slow", {"who": "b"}, timeout=60)
        except SocketClosed as exc:
            caught["b"] = exc

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        tasks = [asyncio.create_task(caller_a(ws)), asyncio.create_task(caller_b(ws))]
        for _ in range(20):
            await asyncio.sleep(0)
        sim.sockets.open[0].drop()
        await asyncio.gather(*tasks)
    a, b = caught["a"], caught["b"]
    # Caller B never handled A's error: its SocketClosed must not say "During handling of the
    # above exception (ValueError: payment card ...)". One shared instance carries whatever
    # context the first caller to raise it gave it to every other caller.
    assert b.__context__ is None, (a is b, repr(b.__context__))


async def test_pending_requests_fail_each_with_an_exception_of_its_own() -> None:
    from le_transport.sockets.correlation import PendingRequests

    pending = PendingRequests()
    futures = []
    for _ in range(2):
        rid, fut = pending.open()
        pending.sent(rid, 1)
        futures.append(fut)
    _, queued = pending.open()
    rid, last = pending.open()
    pending.sent(rid, 2)
    assert pending.fail_epoch(1, lambda: SocketClosed("lost")) == 2
    assert pending.fail_all(lambda: SocketClosed("closed")) == 2
    errors = [f.exception() for f in (*futures, queued, last)]
    assert all(isinstance(e, SocketClosed) for e in errors)
    assert len({id(e) for e in errors}) == 4


# -- a reqId the socket never handed out is no late answer ---------------------------------------


async def test_a_resp_with_an_id_never_handed_out_reaches_async_for(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    from le_transport.sockets.correlation import ID_PREFIX

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        answer = await ws.request(".GetClock")  # the socket's id 1: "<prefix>1"
        assert answer["reqId"] == f"{ID_PREFIX}1"
        # A resp naming "<prefix>01": no request of this socket ever had that id (README: a
        # resp matching no request goes to async for; only a late answer is dropped).
        await sim.sockets.open[0].send(
            {"kind": "resp", "reqId": f"{ID_PREFIX}01", "code": 200, "type": "X", "body": {}}
        )
        got: Any = None
        try:
            async with timeout_after(clock, 5):
                got = await ws.__anext__()
        except TimeoutError:
            pass
    assert got is not None, "dropped as a late answer"
    assert got.get("reqId") == f"{ID_PREFIX}01", got


async def test_only_canonical_ids_handed_out_are_late_answers() -> None:
    from le_transport.sockets.correlation import PendingRequests

    pending = PendingRequests(prefix="p-")
    for _ in range(10):
        pending.discard(pending.open()[0])
    for late in ("p-1", "p-7", "p-10"):
        assert pending.abandoned({"reqId": late}), late
    for never in ("p-01", "p-007", "p-010", "p-0", "p-00", "p-11", "p-+1", "p- 1"):
        assert not pending.abandoned({"reqId": never}), never


# -- an error code written as a JSON float is a SocketRequestError ------------------------------


@pytest.mark.parametrize("code", [500.0, 429.0])
async def test_an_error_code_sent_as_a_json_float_is_a_socket_request_error(
    sim: Simulator, clock: VirtualClock, states: StateLog, code: float
) -> None:
    from le_transport import SocketRequestError

    async def failing(sock: Any, frame: dict[str, Any]) -> None:
        # JSON has one number type: 500.0 is the number 500 (a server that serialises its
        # codes as doubles writes it so).
        await sock.send(
            {"kind": "resp", "reqId": frame["id"], "code": code, "type": "X$Response", "body": {}}
        )

    sim.sockets.on(".ams.ms.PublishEvent", failing)
    outcome: object
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, SocketOptions(keepalive=None))
        await ws.wait_open()
        try:
            outcome = await ws.request(".ams.ms.PublishEvent", publish_body("hi"))
        except SocketRequestError as exc:
            outcome = exc
    # README: "a `code` of 400 or more is a `SocketRequestError`".
    assert isinstance(outcome, SocketRequestError), outcome


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, 400),
        (503.0, 503),
        (429.9, 429),
        (10**30, 10**30),
        (399, None),
        (399.99, None),
        (200.0, None),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        ("500", None),
        (None, None),
    ],
)
def test_which_codes_are_errors(code: object, error: int | None) -> None:
    from le_transport.sockets.correlation import failure_code

    got = failure_code(code)
    assert got == error, (code, got)
    assert type(got) is type(error), (code, got)
