"""The resilient socket against the simulator's UMS agent socket: connect, request/response,
notifications, drops, close codes, a silent peer, restarts, auth rejection, nothing lost."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

import attrs
import pytest

from le_transport import (
    ConfigurationError,
    Engine,
    SocketAuthFailed,
    SocketClosed,
    SocketQueueFull,
    SocketRejected,
    SocketRequestError,
    SocketRequestTimeout,
)
from le_transport.chaos import Delay, Hang, WsDrop, WsRejectHandshake
from le_transport.policies import MESSAGING_AGENT_SDK_GETCLOCK, BackoffPolicy
from le_transport.providers import UserLogin
from le_transport.sockets import (
    Connection,
    EscalationRequest,
    ResilientSocket,
    SocketOptions,
    SocketState,
    ums_brand_path,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import SimSocket, Simulator, SimulatorConfig
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    publish,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")

SUBSCRIBE = ".ams.aam.SubscribeExConversations"
PUBLISH = ".ams.ms.PublishEvent"
KEEPALIVE = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)


async def resubscribe(ws: ResilientSocket) -> None:
    await ws.request(SUBSCRIBE, {"convState": ["OPEN"]})


async def next_state(ws_states: Any, name: str) -> None:
    async for event in ws_states:
        if event.name == name:
            return


def logins(sim: Simulator) -> int:
    return sim.count("POST", "/api/account/*/login")


async def test_getclock_request_resolves_with_the_matching_resp(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        answer = await ws.request(".GetClock", {})
    assert answer["kind"] == "resp"
    assert answer["code"] == 200
    assert isinstance(answer["body"]["currentTime"], int)
    assert ws.state is SocketState.CLOSED
    assert states.names("facadeMsg") == ["connecting", "open", "ready", "closed"]


async def test_notifications_reach_async_iteration_and_a_handler(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    handled: list[Any] = []
    async with agent_engine(sim, clock, states) as engine:
        iterated = await brand_socket(engine, sim)
        handler = await brand_socket(engine, sim, on_frame=handled.append)
        await iterated.wait_open()
        await handler.wait_open()
        await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {"n": 1}, to_all=True)
        frame = await iterated.__anext__()
        await clock.sleep(0.1)
    assert frame["type"] == ".ams.routing.RoutingTaskNotification"
    assert frame["body"] == {"n": 1}
    assert [f["body"] for f in handled] == [{"n": 1}]
    # The iteration ends when the socket is closed.
    assert [f async for f in iterated] == []


async def test_abrupt_drop_reconnects_after_about_a_second_and_runs_on_connect_again(
    sim: Simulator, clock: VirtualClock, states: StateLog, secret_values: set[str]
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        auth = engine.auth
        assert isinstance(auth, UserLogin)
        assert auth.session is not None
        secret_values.add(auth.session.bearer.reveal())
        (first,) = sim.sockets.open
        first.drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        second = sim.sockets.open[0]
        assert second is not first
        assert first.subscription_types == [SUBSCRIBE]
        assert second.subscription_types == [SUBSCRIBE]
        assert (await ws.request(".GetClock"))["code"] == 200
    (reconnecting,) = states.of("reconnecting")
    low, high = BackoffPolicy.reconnect().bounds(1)
    assert low <= reconnecting.details["in_seconds"] <= high
    assert states.names("facadeMsg") == [
        "connecting",
        "open",
        "ready",
        "lost",
        "reconnecting",
        "connecting",
        "open",
        "ready",
        "closed",
    ]
    assert ws.connects == 2
    assert logins(sim) == 1


@pytest.mark.parametrize("code", [4401, 4407, 1011])
async def test_close_codes_4401_4407_1011_reauthenticate_before_reconnecting(
    sim: Simulator, clock: VirtualClock, states: StateLog, code: int
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.open[0].close(code)
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    assert "reauthenticating" in states.names("facadeMsg")
    assert logins(sim) == 2


# 1003 and 1008 too: LiveEngage documents no code as final (ClosePolicy.fail_codes is empty).
@pytest.mark.parametrize("code", [1001, 1003, 1008, 1012, 1013])
async def test_other_close_codes_reconnect_with_the_same_credentials(
    sim: Simulator, clock: VirtualClock, states: StateLog, code: int
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.open[0].close(code)
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    assert "reauthenticating" not in states.names("facadeMsg")
    assert states.of("lost")[0].details["reason"] == f"closed by the server with code {code}"
    assert logins(sim) == 1


async def test_a_close_by_the_caller_does_not_reconnect(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await ws.close()
        await clock.sleep(300)
        assert len(sim.sockets.all) == 1
        assert sim.sockets.all[0].ended == ("client", 1000)
        with pytest.raises(SocketClosed):
            await ws.send({"kind": "req"})
    assert "reconnecting" not in states.names("facadeMsg")


async def test_a_silent_peer_is_detected_within_two_keepalive_intervals(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=KEEPALIVE)
        await ws.wait_open()
        lost = ws.states()
        await clock.sleep(45)  # a keepalive at 30 s was answered
        sim.sockets.open[0].silence()
        await next_state(lost, "lost")
        detected = clock.now()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    getclocks = [f for f in sim.sockets.all[0].received if f.get("type") == ".GetClock"]
    # Last frame from the peer: the answer at 30 s. Probe at 60, unanswered, dead at 70.
    assert detected <= 30 + 2 * MESSAGING_AGENT_SDK_GETCLOCK.interval
    assert detected == pytest.approx(70.0)
    assert len(getclocks) == 2
    assert states.of("lost")[0].details["reason"] == "peer dead: keepalive unanswered"


async def test_keepalive_is_not_sent_while_frames_keep_arriving(
    clock: VirtualClock, states: StateLog
) -> None:
    # The simulator's own idle close (it counts only client frames) is pushed out of the way.
    config = SimulatorConfig(idle_timeout=3600.0)
    async with (
        Simulator(config, clock=clock) as quiet,
        agent_engine(quiet, clock, states) as engine,
    ):
        ws = await brand_socket(engine, quiet, options=KEEPALIVE, on_frame=lambda f: None)
        await ws.wait_open()
        for _ in range(10):
            await clock.sleep(20)
            await quiet.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
        await clock.sleep(31)
    assert len(quiet.sockets.all) == 1
    types = [f.get("type") for f in quiet.sockets.all[0].received]
    # 200 s of traffic every 20 s: no probe; then one once the socket was idle for 30 s.
    assert types == [".GetClock"]


async def test_server_restart_on_the_same_port_reconnects_with_growing_pauses(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    port = sim.port
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        await sim.restart(down_for=10.0)
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert sim.port == port
        assert (await ws.request(".GetClock"))["code"] == 200
        assert sim.sockets.open[0].subscription_types == [SUBSCRIBE]
    pauses = [e.details["in_seconds"] for e in states.of("reconnecting")]
    assert len(pauses) >= 3
    policy = BackoffPolicy.reconnect()
    for attempt, pause in enumerate(pauses, start=1):
        low, high = policy.bounds(attempt)
        assert low <= pause <= high
    assert len(states.of("connect_failed")) == len(pauses) - 1


async def test_repeated_auth_rejection_stops_with_a_typed_error(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(status=401)] * 50, unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_auth_failures=3))
        with pytest.raises(SocketAuthFailed):
            await ws.wait_open()
        assert ws.closed
        with pytest.raises(SocketClosed):
            await ws.request(".GetClock")
    assert len(states.of("reauthenticating")) == 3
    assert sim.sockets.rejected == [401] * 4
    # One login, and a fresh one after each rejection.
    assert logins(sim) == 4


async def test_an_expired_token_reauthenticates_and_the_socket_comes_back(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.expire_tokens()  # closes the socket with 4401
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert (await ws.request(".GetClock"))["code"] == 200
    assert logins(sim) == 2


async def test_upgrade_refused_with_403_fails_for_good(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", "/ws_api/*", [WsRejectHandshake(status=403)], unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        with pytest.raises(SocketRejected) as info:
            await ws.wait_open()
    assert info.value.status == 403
    # An answer with a status, not a close code: a caller branches on close_code alone.
    assert info.value.close_code is None
    assert len(sim.sockets.rejected) == 1


async def test_a_run_of_fast_1006_drops_escalates_to_reauthentication(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script("GET", "/ws_api/*", [WsDrop()] * 3, unit="ws_session")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await sim.sockets.wait_accepted(4)
        await ws.wait_open()
    names = [n for n in states.names("facadeMsg") if n in ("lost", "reauthenticating")]
    assert names == ["lost", "lost", "lost", "reauthenticating"]
    assert logins(sim) == 2


async def test_backoff_resets_only_after_a_connection_stayed_healthy(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # Connect-then-drop three times: the pauses grow although each handshake succeeded.
    sim.faults.script("GET", "/ws_api/*", [WsDrop()] * 3, unit="ws_session")
    options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK, healthy_after=30.0)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options)
        await sim.sockets.wait_accepted(4)
        await ws.wait_open()
        await clock.sleep(40)  # healthy
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(5)
        await ws.wait_open()
    pauses = [e.details["in_seconds"] for e in states.of("reconnecting")]
    policy = BackoffPolicy.reconnect()
    assert len(pauses) == 4
    for attempt, pause in zip([1, 2, 3, 1], pauses, strict=True):
        low, high = policy.bounds(attempt)
        assert low <= pause <= high


async def test_consecutive_failed_reconnects_escalate_to_the_relogin_loop(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    escalations: list[EscalationRequest] = []

    async def relogin(request: EscalationRequest, connect: Any) -> Connection:
        escalations.append(request)
        await sim.start()
        connection: Connection = await connect()
        return connection

    options = SocketOptions(escalate_after=3)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options, escalate=relogin)
        await ws.wait_open()
        await sim.stop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    assert len(escalations) == 1
    assert escalations[0].failures == 3
    assert len(states.of("connect_failed")) == 2


async def test_the_engines_relogin_loop_takes_over_after_failed_reconnects(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    options = SocketOptions(escalate_after=2)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options)
        await ws.wait_open()
        await sim.stop()
        await next_state(ws.states(), "escalating")
        await sim.start()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
    names = states.names()
    assert "escalating" in names
    assert logins(sim) >= 2  # the loop logged in afresh


async def test_messages_sent_while_down_are_queued_and_sent_in_order_after_on_connect(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        lost = ws.states()
        await sim.stop()
        await next_state(lost, "lost")
        for i in range(5):
            frame = {"kind": "req", "id": f"q{i}", "type": PUBLISH, "body": publish(f"q{i}")}
            assert await ws.send(frame) is False
        assert ws.queued == 5
        await sim.start()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await clock.sleep(0.1)
    second = sim.sockets.all[1]
    assert [f["type"] for f in second.received] == [SUBSCRIBE] + [PUBLISH] * 5
    assert [f["id"] for f in second.received[1:]] == [f"q{i}" for i in range(5)]
    assert [m.text for m in sim.sockets.published] == [f"q{i}" for i in range(5)]


async def test_a_full_queue_refuses_with_a_typed_error_and_close_returns_the_unsent(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_queued=2))
        await ws.wait_open()
        lost = ws.states()
        await sim.stop()
        await next_state(lost, "lost")
        await ws.send({"n": 1})
        await ws.send({"n": 2})
        with pytest.raises(SocketQueueFull):
            await ws.send({"n": 3})
        unsent = await ws.close()
    assert unsent == ['{"n": 1}', '{"n": 2}']


async def test_request_timeout_is_a_typed_error(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    sim.faults.script(None, SUBSCRIBE, [Hang()], unit="ws_message")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        started = clock.now()
        with pytest.raises(SocketRequestTimeout):
            await ws.request(SUBSCRIBE, {}, timeout=5)
        assert clock.now() - started == pytest.approx(5.0)
        # The late request does not disturb the next one.
        assert (await ws.request(SUBSCRIBE, {}))["code"] == 200


async def test_a_late_answer_to_a_timed_out_request_is_dropped_not_handed_to_the_consumer(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer comes after its caller gave up: it is nobody's, and above all not a frame
    the server sent on its own. A resp the socket never asked for still reaches the consumer."""
    caplog.set_level(logging.DEBUG, logger="le_transport.sockets")
    sim.faults.script(None, SUBSCRIBE, [Delay(delay_ms=8000)], unit="ws_message")
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestTimeout):
            await ws.request(SUBSCRIBE, {}, timeout=5)
        await clock.sleep(5)  # the answer arrives at 8 s
        assert any("late answer" in r.getMessage() for r in caplog.records)
        assert ws.inbox_size == 0
        foreign = {"kind": "resp", "reqId": "not-ours-1", "code": 200, "body": {}}
        await sim.sockets.open[0].send(foreign)
        assert await anext(aiter(ws)) == foreign
        # Ids the socket has not handed out yet are not taken for late answers either.
        ahead = {"kind": "resp", "reqId": "99", "code": 200, "body": {}}
        await sim.sockets.open[0].send(ahead)
        assert await anext(aiter(ws)) == ahead


async def test_a_request_in_flight_when_the_socket_drops_fails_with_socket_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async def drop(sock: SimSocket, frame: dict[str, Any]) -> None:
        sock.drop()

    sim.sockets.on("test.Drop", drop)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketClosed):
            await ws.request("test.Drop", {})


async def test_a_resp_with_an_error_code_is_a_typed_error(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        with pytest.raises(SocketRequestError) as info:
            await ws.request("no.such.Type", {})
    assert info.value.code == 400


async def test_concurrent_requests_resolve_with_their_own_answers_out_of_order(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    rng = random.Random(7)
    answering: set[asyncio.Task[None]] = set()

    async def echo_later(sock: SimSocket, frame: dict[str, Any]) -> None:
        async def answer() -> None:
            await clock.sleep(rng.uniform(0.1, 5.0))
            await sock.send(
                {"kind": "resp", "reqId": frame["id"], "code": 200, "body": frame["body"]}
            )

        task = asyncio.get_running_loop().create_task(answer())
        answering.add(task)
        task.add_done_callback(answering.discard)

    sim.sockets.on("test.Echo", echo_later)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        answers = await asyncio.gather(*(ws.request("test.Echo", {"n": n}) for n in range(200)))
    assert [a["body"]["n"] for a in answers] == list(range(200))
    arrival = [f["reqId"] for f in answers]
    assert len(set(arrival)) == 200


async def test_a_thousand_messages_across_twenty_forced_reconnects_none_lost_or_duplicated(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    received: Counter[str] = Counter()
    drops = 0

    async def publish_then_maybe_drop(sock: SimSocket, frame: dict[str, Any]) -> tuple[int, Any]:
        nonlocal drops
        received[frame["body"]["event"]["message"]] += 1
        if sum(received.values()) % 50 == 0 and drops < 20:
            drops += 1
            sock.drop()  # the server has it; the client never sees the answer
        return 200, {}

    sim.sockets.on(PUBLISH, publish_then_maybe_drop)
    retried: Counter[str] = Counter()

    async def deliver(worker: int) -> None:
        for i in range(worker, 1000, 10):
            text = f"m{i}"
            while True:
                try:
                    # Connections here never live long enough to count as healthy, so the
                    # reconnect pauses grow to minutes: wait for them.
                    await ws.request(PUBLISH, publish(text), timeout=3600)
                    break
                except SocketClosed:
                    if ws.closed:
                        raise
                    retried[text] += 1  # the caller's choice: the library resends nothing

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_connect=[resubscribe])
        await ws.wait_open()
        await asyncio.gather(*(deliver(w) for w in range(10)))
    assert drops == 20
    assert ws.connects == 21
    assert set(received) == {f"m{i}" for i in range(1000)}
    for text, copies in received.items():
        assert copies <= 1 + retried[text]
    # Every resubscription was made on its own connection, once.
    assert [s.subscription_types for s in sim.sockets.all] == [[SUBSCRIBE]] * 21


async def test_closing_the_engine_closes_every_socket_in_any_state(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        sockets = [await brand_socket(engine, sim, options=KEEPALIVE) for _ in range(3)]
        for ws in sockets:
            await ws.wait_open()
        lost = sockets[0].states()
        sim.sockets.open[0].drop()
        await next_state(lost, "reconnecting")
        queued = engine.websocket  # a socket still connecting when the engine closes
        connecting = await queued("facadeMsg", "/ws_api/account/x/messaging/brand/{bearer}")
    assert all(ws.state is SocketState.CLOSED for ws in [*sockets, connecting])
    assert states.names().count("closed") == 4


async def test_events_from_a_superseded_connection_are_ignored(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        old_epoch = ws.epoch
        sim.sockets.open[0].drop()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        # A frame reported by the first connection's reader after it was superseded.
        await ws._deliver({"kind": "notification", "type": "stale"}, old_epoch)
        await ws._deliver({"kind": "notification", "type": "fresh"}, ws.epoch)
        frame = await ws.__anext__()
    assert frame["type"] == "fresh"
    assert ws.epoch == old_epoch + 1


async def test_a_login_service_outage_during_reconnect_is_retried_not_fatal(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        # Two whole login schedules (4 attempts each) fail with 503.
        sim.faults.script("POST", "/api/account/*/login", [503] * 8)
        await sim.expire_tokens()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        assert (await ws.request(".GetClock"))["code"] == 200
    failed = [e.details["reason"] for e in states.of("connect_failed")]
    assert failed == ["connect failed (credentials: RetriesExhausted)"] * 2
    assert ws.error is None


async def test_a_frame_nested_too_deep_for_the_parser_does_not_stop_the_reader(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await sim.sockets.open[0].ws.send_str("[" * 100_000)
        assert (await ws.request(".GetClock"))["code"] == 200
        deep = await ws.__anext__()
    assert deep == "[" * 100_000


async def test_outbound_idle_keepalive_keeps_a_receive_only_socket_open_on_the_simulator(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The simulator closes a socket whose client stays quiet for 60 s, however much it sends.
    keepalive = attrs.evolve(MESSAGING_AGENT_SDK_GETCLOCK, outbound_idle=True)
    options = SocketOptions(keepalive=keepalive)
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=options, on_frame=lambda f: None)
        await ws.wait_open()
        for _ in range(10):
            await clock.sleep(20)
            await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
    assert len(sim.sockets.all) == 1
    probes = [f.get("type") for f in sim.sockets.all[0].received]
    assert probes == [".GetClock"] * 6  # every 30 s of client silence in 200 s


async def test_a_bearer_in_the_path_without_an_auth_provider_is_a_configuration_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with Engine(sim.domains, scheme="http", clock=clock) as engine:
        with pytest.raises(ConfigurationError):
            await engine.websocket("facadeMsg", ums_brand_path(sim.account.id))
