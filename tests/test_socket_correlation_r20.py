"""Request/response over a resilient socket: a request failed with its connection is not sent
later, one caller's cancellation ends only its own write, requests failed together each get
an exception of their own, only ids the socket handed out are late answers, and an error code
is an error whichever JSON number spells it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from le_transport import SocketClosed
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


# -- 1: a request already failed with SocketClosed is still sent, on the next connection -------


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


# -- 4: every request failed together shares one exception object --------------------------------


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


# -- 5: a reqId the socket never handed out is dropped as a "late answer" -----------------------


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


# -- 6: an error code written as a JSON number with a fraction part is taken for a success ------


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
    from le_transport.sockets.socket import _failure_code

    got = _failure_code(code)
    assert got == error, (code, got)
    assert type(got) is type(error), (code, got)
