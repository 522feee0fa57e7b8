"""The default keepalive: a LiveEngage messaging socket (the UMS agent socket, the consumer
socket), recognised by its path, sends the guide's ``GetClock`` after 30 s without a frame
either way, so that the server's idle close (about 60 s; the simulator's too) never strikes it;
``keepalive=None`` still means none, and a path the library does not know gets none."""

from __future__ import annotations

import logging

import pytest

from le_transport import ConfigurationError, Engine, EventHooks, StateEvent
from le_transport.policies import (
    CHAT_AGENT_API_REFRESH,
    MESSAGING_AGENT_SDK_GETCLOCK,
    MESSAGING_WINDOW_API_GETCLOCK,
)
from le_transport.providers import ConsumerJwt, Credentials, StaticDomains
from le_transport.sockets import (
    CONSUMER_SOCKET_QUERY,
    HANDLER_EXCUSE,
    KEEPALIVE_BY_PATH,
    MESSAGING_AGENT_KEEPALIVE,
    MESSAGING_CONSUMER_KEEPALIVE,
    Connection,
    ResilientSocket,
    SocketOptions,
    consumer_path,
    keepalive_for_path,
    ums_brand_path,
)
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

NOTIFICATION = ".ams.ms.MessagingEventNotification"


# -- the choice ---------------------------------------------------------------------------------


def test_the_messaging_defaults_are_the_guides_getclock_with_outbound_idle() -> None:
    assert SocketOptions().keepalive is KEEPALIVE_BY_PATH
    assert MESSAGING_AGENT_KEEPALIVE.action == MESSAGING_AGENT_SDK_GETCLOCK.action == ".GetClock"
    assert MESSAGING_CONSUMER_KEEPALIVE.action == MESSAGING_WINDOW_API_GETCLOCK.action
    for chosen, guide in (
        (MESSAGING_AGENT_KEEPALIVE, MESSAGING_AGENT_SDK_GETCLOCK),
        (MESSAGING_CONSUMER_KEEPALIVE, MESSAGING_WINDOW_API_GETCLOCK),
    ):
        assert (chosen.interval, chosen.timeout) == (guide.interval, guide.timeout) == (30.0, 10.0)
        assert chosen.outbound_idle
        assert chosen.only_when_idle


@pytest.mark.parametrize(
    ("path", "chosen"),
    [
        (ums_brand_path("12345678"), MESSAGING_AGENT_KEEPALIVE),
        ("/ws_api/account/12345678/messaging/brand/eyJhbGciOi.x.y", MESSAGING_AGENT_KEEPALIVE),
        (consumer_path("12345678"), MESSAGING_CONSUMER_KEEPALIVE),
        (consumer_path("12345678") + "/", MESSAGING_CONSUMER_KEEPALIVE),
        ("/ws_api/account/12345678/messaging/brand", None),
        ("/ws_api/account/12345678/messaging/consumer/extra", None),
        ("/ws_api/account/a/b/messaging/consumer", None),
        ("/bench/ws", None),
        ("ws_api/account/12345678/messaging/consumer", None),
        ("", None),
    ],
)
def test_only_the_messaging_paths_are_recognised(path: str, chosen: object) -> None:
    assert keepalive_for_path(path) is chosen


class _Dialer:
    """A dialer that is never dialed (the socket is made, not started)."""

    name = "stub"

    def __init__(self, default_keepalive: object = None) -> None:
        self.default_keepalive = default_keepalive

    async def dial(self) -> Connection:
        raise AssertionError("not dialed")

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        return None

    async def refresh(self) -> None:
        return None


def test_an_explicit_choice_wins_and_none_still_means_no_keepalive() -> None:
    by_path = _Dialer(MESSAGING_AGENT_KEEPALIVE)
    assert ResilientSocket(by_path).keepalive is MESSAGING_AGENT_KEEPALIVE
    assert ResilientSocket(by_path, options=SocketOptions(keepalive=None)).keepalive is None
    explicit = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)
    assert ResilientSocket(by_path, options=explicit).keepalive is MESSAGING_AGENT_SDK_GETCLOCK
    # A dialer that knows no default (a caller's own): none, as before.
    assert ResilientSocket(_Dialer()).keepalive is None
    assert ResilientSocket(_Dialer("not a keepalive")).keepalive is None


@pytest.mark.parametrize("value", [False, "by_path", CHAT_AGENT_API_REFRESH])
def test_a_keepalive_that_is_none_of_the_three_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="KEEPALIVE_BY_PATH") as info:
        SocketOptions(keepalive=value)  # type: ignore[arg-type]
    assert "None (no keepalive)" in str(info.value)


# -- on the simulator, whose idle close is LiveEngage's ------------------------------------------


@pytest.mark.parametrize("notifications", [True, False], ids=["receive-only", "silent"])
async def test_a_default_messaging_socket_is_not_closed_as_idle(
    sim: Simulator, clock: VirtualClock, states: StateLog, notifications: bool
) -> None:
    """The simulator closes a socket whose client sent nothing for 60 s, however much it
    received: a default socket used to reconnect every minute, losing what arrived between."""
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim)
        await ws.wait_open()
        await clock.sleep(5)  # off the probes' beat: none falls at the end of the run
        for _ in range(60):  # 10 min
            if notifications:
                await sim.sockets.notify(NOTIFICATION, {"changes": []})
            await clock.sleep(10)
        got = ws.inbox_size
    assert len(sim.sockets.all) == 1
    assert ws.epoch == 1
    assert "lost" not in states.names()
    assert got == (60 if notifications else 0)
    probes = [f.get("type") for f in sim.sockets.all[0].received]
    assert probes == [".GetClock"] * 20  # one every 30 s of client silence
    assert ws.keepalive is MESSAGING_AGENT_KEEPALIVE


async def test_a_socket_whose_caller_asks_for_no_keepalive_is_closed_by_the_idle_server(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=None))
        assert ws.keepalive is None
        await ws.wait_open()
        await sim.sockets.wait_accepted(2)  # the simulator closed the first one after 60 s
        await ws.wait_open()
    (lost,) = states.of("lost")
    assert lost.details["lifetime"] == 60.0
    assert sim.sockets.all[0].received == []


async def test_the_default_consumer_socket_sends_the_window_apis_getclock(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    domains = StaticDomains(sim.domains)
    engine = Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=ConsumerJwt(sim.account.id, domains=domains),
        hooks=EventHooks(on_state=[states]),
    )
    async with engine:
        ws = await engine.websocket(
            "asyncMessagingEnt", consumer_path(sim.account.id), params=CONSUMER_SOCKET_QUERY
        )
        await ws.wait_open()
        await clock.sleep(195)
    assert len(sim.sockets.all) == 1
    assert [f.get("type") for f in sim.sockets.all[0].received] == ["GetClock"] * 6
    assert ws.keepalive is MESSAGING_CONSUMER_KEEPALIVE


async def test_a_socket_to_a_path_the_library_does_not_know_runs_no_keepalive(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        ws = await engine.websocket("facadeMsg", "/some/other/socket")
        assert ws.keepalive is None
        await ws.close()


# -- an on_frame handler that takes a while ------------------------------------------------------


async def _slow_handler_run(
    sim: Simulator,
    clock: VirtualClock,
    states: StateLog,
    *,
    handler_seconds: float,
    silence_at: float | None = None,
    until: float,
) -> tuple[list[float], float | None]:
    """A default messaging socket whose ``on_frame`` handler takes ``handler_seconds`` for a
    notification at t=1 (the reader awaits it: nothing is read meanwhile); the peer falls
    silent at ``silence_at`` if given. Returns when the handler ran, and when (if ever) the
    peer was declared dead."""
    handled: list[float] = []
    dead_at: list[float] = []

    async def on_frame(frame: object) -> None:
        handled.append(clock.now())
        await clock.sleep(handler_seconds)  # e.g. an engine.request riding out 5/10/15 s retries

    def on_state(event: StateEvent) -> None:
        if event.name == "lost" and event.subject.startswith("facadeMsg"):
            dead_at.append(clock.now())

    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, on_frame=on_frame)
        ws.add_on_state(on_state)
        await ws.wait_open()
        await clock.sleep(1)
        await sim.sockets.notify(NOTIFICATION, {"changes": []})
        if silence_at is not None:
            await clock.sleep(silence_at - clock.now())
            sim.sockets.open[0].silence()
        await clock.sleep(until - clock.now())
    return handled, (dead_at[0] if dead_at else None)


@pytest.mark.parametrize("handler_seconds", [45.0, 100.0])
async def test_a_slow_on_frame_handler_is_not_taken_for_a_dead_peer(
    sim: Simulator, clock: VirtualClock, states: StateLog, handler_seconds: float
) -> None:
    """The reader awaits the handler: the keepalive's answer waits unread meanwhile, which
    used to make the socket declare its live peer dead ("GetClock unanswered for 10 s") and
    reconnect. A handler longer than the server's 60 s idle close keeps the connection too:
    the client's own silence is still broken by a probe."""
    handled, dead_at = await _slow_handler_run(
        sim, clock, states, handler_seconds=handler_seconds, until=handler_seconds + 40
    )
    assert handled == [pytest.approx(1.0)]
    assert dead_at is None
    assert len(sim.sockets.all) == 1
    assert "lost" not in states.names("facadeMsg")
    probes = [f.get("type") for f in sim.sockets.all[0].received]
    assert probes
    assert set(probes) == {".GetClock"}


async def test_a_peer_gone_during_a_slow_handler_is_found_a_timeout_after_it_returns(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """The probe sent at 30 s (the client silent since the open) goes unanswered: not a
    dead peer while the handler runs (to 46 s), but its whole timeout again from there."""
    timeout = MESSAGING_AGENT_KEEPALIVE.timeout
    _, dead_at = await _slow_handler_run(
        sim, clock, states, handler_seconds=45.0, silence_at=20.0, until=90.0
    )
    assert dead_at == pytest.approx(46.0 + timeout)
    assert states.of("lost")[0].details["reason"] == "peer dead: keepalive unanswered"
    assert len(sim.sockets.all) == 2


async def test_a_peer_gone_after_a_slow_handler_returned_is_found_as_usual(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """No handler running: the keepalive finds a silent peer on its usual schedule (the probe
    at 30 s answered once the handler returned at 46 s; the next, at 60 s, unanswered)."""
    keepalive = MESSAGING_AGENT_KEEPALIVE
    _, dead_at = await _slow_handler_run(
        sim, clock, states, handler_seconds=45.0, silence_at=50.0, until=100.0
    )
    assert dead_at == pytest.approx(30.0 + keepalive.interval + keepalive.timeout)
    assert states.of("lost")[0].details["reason"] == "peer dead: keepalive unanswered"


async def test_a_peer_gone_during_a_handler_that_hangs_is_found_once_the_excuse_runs_out(
    sim: Simulator, clock: VirtualClock, states: StateLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A running handler excuses the peer's silence for HANDLER_EXCUSE (300 s) at most: a
    handler that hangs (a deadlock, an await with no deadline) kept a dead connection open for
    as long as it ran: 86,400 s for a day-long handler. Now the connection is ended as a dead
    peer once the excuse has run out and a probe's timeout passed."""
    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    await _slow_handler_run(
        sim, clock, states, handler_seconds=86_400.0, silence_at=20.0, until=400.0
    )
    dead = [r for r in caplog.records if "peer dead" in r.getMessage()]
    assert len(dead) == 1
    assert sim.sockets.open == []  # the dead connection was ended, handler or not
    # (HANDLER_EXCUSE after the handler began, then a probe's interval and timeout at most.)
    assert 1.0 + HANDLER_EXCUSE + MESSAGING_AGENT_KEEPALIVE.interval < 400.0
