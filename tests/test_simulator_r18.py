"""Round 18: the simulator's notifications and consumer logins as LiveEngage's: a client that
stops reading holds back only its own socket, a notification can be aimed at one account, and
with ``close_ended_sessions`` a consumer socket ends with its consumer JWT, as a brand socket
ends with its Login Service session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from typing import Any

import aiohttp
import pytest

from le_transport.chaos import FaultRule, Schedule, WsAppError
from le_transport.clock import timeout_after
from le_transport.errors import ConfigurationError
from le_transport.sockets import CONSUMER_SOCKET_QUERY, consumer_path
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Account,
    Simulator,
    SimulatorConfig,
)
from tests.test_simulator_sockets_r17 import _req, _text
from tests.test_socket_consumer import consumer_engine
from tests.test_socket_support import StateLog, no_open_connections, states

__all__ = ["no_open_connections", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

NOTIFICATION = ".my.OwnNotification"
OTHER_ACCOUNT = "22334455"
#: The default account and another, whose users are the default account's.
TWO_ACCOUNTS = SimulatorConfig(
    accounts=(Account(), Account(id=OTHER_ACCOUNT, users={DEFAULT_USER: DEFAULT_PASSWORD}))
)


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return ws.close_code


def _jwt_header(sim: Simulator, ttl: float = 600.0) -> dict[str, str]:
    jwt = sim.tokens.issue_jwt(DEFAULT_ACCOUNT, "consumer", ttl, "consumer").value
    return {"Authorization": f"jwt {jwt}"}


def _init(sim: Simulator, ttl: float = 600.0) -> dict[str, Any]:
    jwt = sim.tokens.issue_jwt(DEFAULT_ACCOUNT, "consumer", ttl, "consumer").value
    return {"headers": [{"type": ".ams.headers.ConsumerAuthentication", "jwt": jwt}]}


# -- notifications --------------------------------------------------------------------------


async def test_a_client_that_stops_reading_holds_back_only_its_own_socket() -> None:
    # Time stands still: the waits here are the sockets' own (a send waiting for a client to
    # read), on which a jumping clock would run the idle timeout out.
    clock = VirtualClock(autojump=False)
    # Random (base64): the connection's compression cannot shrink it to nothing.
    payload = base64.b64encode(os.urandom(3 << 18)).decode()
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        session = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        url = sim.brand_socket_url(session.bearer)
        async with http.ws_connect(url) as stalled, http.ws_connect(url) as reader:
            first, second = await sim.sockets.wait_open(2)
            assert first.opened_at <= second.opened_at

            # Aimed at the first socket alone, whose client reads nothing: once its buffers
            # and the kernel's are full, the simulator's send to it waits.
            filler = await _stalled(first, payload)
            pushing = asyncio.get_running_loop().create_task(
                sim.sockets.notify(NOTIFICATION, {"n": 1, "payload": payload})
            )
            try:
                # The reading client gets it, while the call still waits on the stalled one.
                got = await _text(reader)
                assert (got["type"], got["body"]["n"]) == (NOTIFICATION, 1)
                assert not pushing.done()
                # Given up on (cancelled), it holds up no later send to the reading socket.
                pushing.cancel()
                await asyncio.gather(pushing, return_exceptions=True)
                await second.notify(NOTIFICATION, {"n": 2})
                assert (await _text(reader))["body"] == {"n": 2}
            finally:
                for task in (filler, pushing):
                    task.cancel()
                await asyncio.gather(filler, pushing, return_exceptions=True)
                await stalled.close()


async def test_a_notification_can_be_aimed_at_one_account(clock: VirtualClock) -> None:
    async with Simulator(TWO_ACCOUNTS, clock=clock) as sim, aiohttp.ClientSession() as http:
        mine = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        theirs = sim.tokens.login(OTHER_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        async with (
            http.ws_connect(sim.brand_socket_url(mine.bearer)) as ws,
            http.ws_connect(sim.brand_socket_url(theirs.bearer, OTHER_ACCOUNT)) as other,
        ):
            await sim.sockets.wait_open(2)
            assert await sim.sockets.notify(NOTIFICATION, {"n": 1}, account=OTHER_ACCOUNT) == 1
            assert (await _text(other))["body"] == {"n": 1}
            # Every account's, without one.
            assert await sim.sockets.notify(NOTIFICATION, {"n": 2}) == 2
            assert (await _text(ws))["body"] == {"n": 2}
            assert (await _text(other))["body"] == {"n": 2}
            assert await sim.sockets.notify(NOTIFICATION, {}, account="99999999") == 0
            with pytest.raises(ConfigurationError, match="account"):
                await sim.sockets.notify(NOTIFICATION, {}, account=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("second", ["to one account", "to one socket"])
async def test_sends_reach_a_socket_in_the_order_they_were_called(
    clock: VirtualClock, second: str
) -> None:
    # A notify to several sockets sends from tasks of its own: a send called after it (from
    # another task) still goes out after it on the socket both reach.
    async with Simulator(TWO_ACCOUNTS, clock=clock) as sim, aiohttp.ClientSession() as http:
        mine = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        theirs = sim.tokens.login(OTHER_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        async with (
            http.ws_connect(sim.brand_socket_url(mine.bearer)) as ws,
            http.ws_connect(sim.brand_socket_url(theirs.bearer, OTHER_ACCOUNT)),
        ):
            first, _ = await sim.sockets.wait_open(2)
            assert first.account == DEFAULT_ACCOUNT
            then = (
                sim.sockets.notify(NOTIFICATION, {"n": 2}, account=DEFAULT_ACCOUNT)
                if second == "to one account"
                else first.notify(NOTIFICATION, {"n": 2})
            )
            await asyncio.gather(sim.sockets.notify(NOTIFICATION, {"n": 1}), then)
            assert [(await _text(ws))["body"]["n"] for _ in range(2)] == [1, 2]


async def test_a_send_given_up_on_lets_no_later_send_overtake_the_ones_before_it() -> None:
    # Notifies called in order from tasks of their own, one cancelled (a test's timeout, a
    # pusher torn down): it passed its turn on at once, and a later send overtook earlier
    # notifies still waiting for theirs.
    async with (
        Simulator(clock=VirtualClock(autojump=False)) as sim,
        aiohttp.ClientSession() as http,
    ):
        session = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        url = sim.brand_socket_url(session.bearer)
        async with http.ws_connect(url) as ws, http.ws_connect(url):
            first, _ = await sim.sockets.wait_open(2)
            spawn = asyncio.get_running_loop().create_task
            earlier = [spawn(sim.sockets.notify(NOTIFICATION, {"n": k})) for k in range(5)]
            given_up = spawn(sim.sockets.notify(NOTIFICATION, {"n": "x"}))
            later = spawn(first.notify(NOTIFICATION, {"n": 5}))
            await asyncio.sleep(0)  # every one has taken its turn
            given_up.cancel()
            await asyncio.gather(*earlier, later, given_up, return_exceptions=True)
            got = [(await _text(ws))["body"]["n"] for _ in range(6)]
            assert [n for n in got if n != "x"][:5] == [0, 1, 2, 3, 4]
            assert got[-1] == 5 or got[-2] == 5


@pytest.mark.parametrize("then", ["notify", "request"])
async def test_a_send_given_up_on_while_the_client_lags_breaks_no_later_send(then: str) -> None:
    # aiohttp's writers waiting for a slow client share one drain future: the cancelled send
    # cancelled it for all, and the socket's next send raised CancelledError in a task nobody
    # cancelled (a test's notify; the serving loop answering a request, which ended the
    # socket as if its client had left).
    payload = base64.b64encode(os.urandom(3 << 18)).decode()
    async with (
        Simulator(clock=VirtualClock(autojump=False)) as sim,
        aiohttp.ClientSession() as http,
    ):
        session = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        async with http.ws_connect(sim.brand_socket_url(session.bearer), max_msg_size=0) as ws:
            (sock,) = await sim.sockets.wait_open(1)
            filler = await _stalled(sock, payload)
            filler.cancel()  # the send waiting for the client, given up on
            await asyncio.gather(filler, return_exceptions=True)
            if then == "notify":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sock.notify(NOTIFICATION, {"p": payload}), 1)
            else:
                message = {"type": "ContentEvent", "message": payload[:300_000]}
                await _req(ws, "1", ".ams.ms.PublishEvent", {"dialogId": "d", "event": message})
                deadline = time.monotonic() + 30
                while sim.sockets.published.total == 0:
                    assert time.monotonic() < deadline, "the request was never served"
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
            assert not sock.closed, sock.ended


async def _stalled(sock: Any, payload: str) -> asyncio.Task[None]:
    """A task sending ``payload`` to ``sock`` (whose client reads nothing) until a send waits
    for the client: returned still waiting. Stalled: nothing more taken for a second of the
    loop's turns (the kernel takes what it can between them), with a frame waiting in the
    socket's buffer."""
    sent = 0

    async def fill() -> None:
        nonlocal sent
        while True:
            await sock.notify(".Fill", {"payload": payload})
            sent += 1

    filler = asyncio.get_running_loop().create_task(fill())
    transport = sock.transport
    assert transport is not None
    deadline = time.monotonic() + 60
    seen, still = (-1, -1), 0
    while still < 10:
        assert not filler.done()
        assert time.monotonic() < deadline, "the socket's sends never stalled"
        await asyncio.sleep(0.1)
        now = (sent, transport.get_write_buffer_size())
        still = still + 1 if now == seen and now[1] > (64 << 10) else 0
        seen = now
    return filler


async def test_a_notification_that_is_no_json_is_refused_before_any_socket_gets_it(
    clock: VirtualClock,
) -> None:
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        session = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600.0, "user")
        async with http.ws_connect(sim.brand_socket_url(session.bearer)) as ws:
            await sim.sockets.wait_open(1)
            with pytest.raises(ValueError, match="must be JSON"):
                await sim.sockets.notify(NOTIFICATION, {"n": float("nan")})
            assert await sim.sockets.notify(NOTIFICATION, {"n": 3}) == 1
            assert (await _text(ws))["body"] == {"n": 3}


# -- a consumer socket ends with its JWT ----------------------------------------------------


@pytest.mark.parametrize("login", ["header", "init"])
@pytest.mark.parametrize("end", ["expire", "revoke"])
async def test_a_consumer_socket_is_closed_with_4401_once_its_jwt_ended(
    clock: VirtualClock, login: str, end: str
) -> None:
    config = SimulatorConfig(close_ended_sessions=True, idle_timeout=3600.0)
    async with Simulator(config, clock=clock) as sim, aiohttp.ClientSession() as http:
        headers = _jwt_header(sim) if login == "header" else {}
        async with (
            http.ws_connect(sim.consumer_socket_url(), headers=headers) as ws,
            http.ws_connect(sim.consumer_socket_url(), headers=_jwt_header(sim, 3600)) as ok,
        ):
            if login == "init":
                await _req(ws, "0", "InitConnection", **_init(sim))
                assert (await _text(ws))["code"] == 200
            await _req(ws, "1", "GetClock")
            assert (await _text(ws))["code"] == 200
            (sock, _) = sim.sockets.open
            assert sock.consumer_token is not None
            if end == "expire":
                await clock.sleep(601)
            else:
                sim.tokens.revoke(sock.consumer_token.value)
            await _req(ws, "2", "GetClock")
            assert await _closed_with(ws) == 4401
            # Another consumer's socket, on a JWT still good, is untouched.
            await _req(ok, "3", "GetClock")
            assert (await _text(ok))["code"] == 200
        assert sim.sockets.all[0].ended == ("close", 4401)


async def test_an_init_connection_with_a_new_jwt_renews_a_consumer_login(
    clock: VirtualClock,
) -> None:
    config = SimulatorConfig(close_ended_sessions=True, idle_timeout=3600.0)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.consumer_socket_url(), headers=_jwt_header(sim)) as ws,
    ):
        await clock.sleep(601)  # the JWT it logged in with has expired
        await _req(ws, "1", "InitConnection", **_init(sim, 600))
        assert (await _text(ws))["code"] == 200
        await clock.sleep(300)
        await _req(ws, "2", "GetClock")
        assert (await _text(ws))["code"] == 200
        # A renewal with a bad JWT is refused; the socket ends at its next frame.
        forged = [{"type": ".ams.headers.ConsumerAuthentication", "jwt": "a.b.c"}]
        await _req(ws, "3", "InitConnection", headers=forged)
        assert (await _text(ws))["code"] == 401
        await clock.sleep(301)
        await _req(ws, "4", "GetClock")
        assert await _closed_with(ws) == 4401


async def test_by_default_a_consumer_socket_outlives_its_jwt(clock: VirtualClock) -> None:
    config = SimulatorConfig(idle_timeout=3600.0)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.consumer_socket_url(), headers=_jwt_header(sim)) as ws,
    ):
        await clock.sleep(601)
        await _req(ws, "1", "GetClock")
        assert (await _text(ws))["code"] == 200


async def test_a_consumer_logged_in_by_an_on_handler_has_no_jwt_to_end(
    clock: VirtualClock,
) -> None:
    config = SimulatorConfig(close_ended_sessions=True, idle_timeout=3600.0)
    async with Simulator(config, clock=clock) as sim, aiohttp.ClientSession() as http:

        async def login(sock: Any, frame: dict[str, Any]) -> tuple[int, Any]:
            return 200, {}

        sim.sockets.on("InitConnection", login)
        async with http.ws_connect(sim.consumer_socket_url(), headers=_jwt_header(sim)) as ws:
            await _req(ws, "1", "InitConnection")
            assert (await _text(ws))["code"] == 200
            assert sim.sockets.open[0].consumer_token is None
            await clock.sleep(601)
            await _req(ws, "2", "GetClock")
            assert (await _text(ws))["code"] == 200


async def test_the_client_logs_in_again_when_its_consumer_socket_ends_with_its_jwt(
    clock: VirtualClock, states: StateLog, secret_values: set[str]
) -> None:
    config = SimulatorConfig(close_ended_sessions=True, jwt_ttl=120.0)
    async with Simulator(config, clock=clock) as sim:
        async with consumer_engine(sim, clock, states) as engine:
            ws = await engine.websocket(
                "asyncMessagingEnt", consumer_path(sim.account.id), params=CONSUMER_SOCKET_QUERY
            )
            await ws.wait_open()
            # Its keepalive, after its JWT's 120 s, finds the login ended: 4401, a new JWT,
            # and a new socket logged in with it.
            async with timeout_after(clock, 300):
                await sim.sockets.wait_accepted(2)
            await ws.wait_open()
            assert (await ws.request("GetClock"))["code"] == 200
        first, second = list(sim.sockets.all)[:2]
        assert first.ended == ("close", 4401)
        assert first.consumer_token is not None
        assert second.consumer_token is not None
        assert second.consumer_token.value != first.consumer_token.value
        assert "reauthenticating" in states.names("asyncMessagingEnt")
        secret_values.update(t.value for t in sim.tokens.tokens.values())


async def test_a_consumer_that_has_not_logged_in_meets_4401_before_any_fault(
    clock: VirtualClock,
) -> None:
    # A rule on every socket request: the frame of a consumer that never logged in is refused
    # (4401) before the rule is asked, so it spends none of the rule's count.
    rule = FaultRule("busy", WsAppError(503), unit="ws_message", schedule=Schedule(fail_next=1))
    async with Simulator(clock=clock) as sim, aiohttp.ClientSession() as http:
        sim.faults.add(rule)
        async with http.ws_connect(sim.consumer_socket_url()) as ws:
            await _req(ws, "1", "GetClock")
            assert await _closed_with(ws) == 4401
        async with http.ws_connect(sim.consumer_socket_url(), headers=_jwt_header(sim)) as ws:
            await _req(ws, "2", "GetClock")
            assert (await _text(ws))["code"] == 503  # the rule's one failure, unspent
            await _req(ws, "3", "GetClock")
            assert (await _text(ws))["code"] == 200


@pytest.mark.parametrize("account", ["123/456", ".", "..", "12\n34", "12\x0034"])
def test_an_account_id_no_route_could_match_is_refused(account: str) -> None:
    with pytest.raises(ConfigurationError, match="one path segment"):
        Account(id=account)


async def test_an_account_id_of_any_one_segment_is_served(clock: VirtualClock) -> None:
    account = "le account-ü"
    config = SimulatorConfig(accounts=(Account(id=account),))
    async with Simulator(config, clock=clock) as sim, aiohttp.ClientSession() as http:
        session = sim.tokens.login(account, DEFAULT_USER, 3600.0, "user")
        async with http.ws_connect(sim.brand_socket_url(session.bearer, account)) as ws:
            await _req(ws, "1", ".GetClock")
            assert (await _text(ws))["code"] == 200
        assert sim.sockets.all[0].account == account
