"""The keepalive runners: watch_socket's probes, a close made while another one stops the task,
a scheduler task started inside watch(), and Engine.keepalive's refusals at the call."""

from __future__ import annotations

import asyncio

import pytest

from le_transport import AppKeyAuth, Engine, TransportError, WrongEventLoop
from le_transport.errors import ConfigurationError
from le_transport.policies import (
    MESSAGING_AGENT_SDK_GETCLOCK,
    SERVER_CHAT_API_CHAT_INFO,
    Keepalive,
    KeepaliveTransport,
)
from le_transport.sockets import KeepaliveScheduler, KeepaliveTask, watch_socket
from le_transport.testing import VirtualClock

# -- watch_socket: at most one probe in flight ------------------------------------------------


async def test_watch_socket_keeps_at_most_one_probe_in_flight(clock: VirtualClock) -> None:
    """A probe that does not return (a send stuck on a peer that stopped reading while its own
    frames still arrive) is ended at its timeout, or by the next probe: one task per interval
    no longer piles up for as long as the peer lives."""
    frames = [0.0]
    in_flight: set[asyncio.Task[object]] = set()
    most = 0
    started = 0

    async def probe() -> None:
        nonlocal started, most
        started += 1
        me = asyncio.current_task()
        assert me is not None
        in_flight.add(me)
        most = max(most, len(in_flight))
        try:
            await asyncio.Event().wait()  # stuck: never returns
        finally:
            in_flight.discard(me)

    async def peer() -> None:
        while True:
            await clock.sleep(35.0)  # alive: a frame every 35 s answers every probe in time
            frames.append(clock.now())

    loop = asyncio.get_running_loop()
    peer_task = loop.create_task(peer())
    watcher = loop.create_task(
        watch_socket(
            MESSAGING_AGENT_SDK_GETCLOCK, clock=clock, probe=probe, last_activity=lambda: frames[-1]
        )
    )
    await clock.sleep(3600.0)
    try:
        assert not watcher.done()  # the peer was never found dead
        assert started > 10  # probes went out all along
        assert most == 1, f"{most} probe tasks were in flight at once"
        assert len(in_flight) <= 1
    finally:
        watcher.cancel()
        peer_task.cancel()
        await asyncio.gather(watcher, peer_task, return_exceptions=True)
    assert not in_flight  # the probe in flight ended with the watcher


async def test_watch_socket_honours_a_cancellation_while_it_ends_its_probes(
    clock: VirtualClock,
) -> None:
    """Once the peer is found dead, watch_socket cancels its probe and waits for it: a
    cancellation of the watcher arriving then (a caller's timeout, a task group shutting down)
    goes through, rather than being eaten and the watcher returning as if not cancelled."""
    probes: list[asyncio.Task[object] | None] = []

    async def probe() -> None:
        probes.append(asyncio.current_task())
        try:
            await asyncio.Event().wait()  # never answered: the peer is dead
        except asyncio.CancelledError:
            await clock.sleep(1.0)  # tidies up before it ends
            raise

    watcher = asyncio.get_running_loop().create_task(
        watch_socket(
            MESSAGING_AGENT_SDK_GETCLOCK, clock=clock, probe=probe, last_activity=lambda: 0.0
        )
    )
    await clock.sleep(40.5)  # probe at 30, dead at 40; the watcher now waits for its probe
    assert not watcher.done()
    watcher.cancel()
    await asyncio.wait({watcher})
    outcome = "cancelled" if watcher.cancelled() else f"returned {watcher.result()!r}"
    assert watcher.cancelled(), f"the watcher was cancelled but {outcome}"
    # The probe, cancelled already, still ends on its own once it has tidied up.
    await clock.sleep(1.0)
    (ended,) = probes
    assert ended is not None
    assert ended.done()


async def test_watch_socket_returns_once_its_probe_has_ended(clock: VirtualClock) -> None:
    """The peer found dead: watch_socket returns when the probe went out, after the probe it
    cancelled has ended (its tidying up waited for, not left running)."""
    tidied: list[float] = []

    async def probe() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await clock.sleep(1.0)
            tidied.append(clock.now())
            raise

    sent_at = await watch_socket(
        MESSAGING_AGENT_SDK_GETCLOCK, clock=clock, probe=probe, last_activity=lambda: 0.0
    )
    assert sent_at == 30.0
    assert len(tidied) == 1


# -- KeepaliveTask / KeepaliveScheduler: a second close ---------------------------------------


async def test_a_second_close_returns_only_once_the_schedule_has_ended(
    clock: VirtualClock,
) -> None:
    """A second close() made while the first still stops the task (the engine's close beside
    the caller's own), and wait(), return only once the run has ended (here: tidied up after
    its cancellation), and do not cancel the run's tidying up a second time."""
    tidied = False

    async def action() -> None:
        nonlocal tidied
        try:
            await asyncio.Event().wait()
        finally:
            await clock.sleep(5.0)  # a run cut short tidies up (a flush, a logout)
            tidied = True

    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, action, clock=clock).start()
    await clock.sleep(31.0)  # the first run is in flight
    first = asyncio.get_running_loop().create_task(task.close())
    await asyncio.sleep(0)  # the first close has begun
    try:
        await task.close()
        assert tidied, "close() returned while the run was still running"
        assert await task.wait() is None
        assert not task.running
    finally:
        await first
    await task.close()  # and once more, with nothing left to stop


def _scheduler_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "le_transport socket keepalives" and not t.done()
    ]


class _Owner:
    """A subject that, as a socket, knows its ticket only once watch() has returned it, and
    asks not to be watched when asked without one."""

    def __init__(self) -> None:
        self.ticket: int | None = None
        self.asked: list[float] = []
        self.asked_without_ticket = 0

    def _keepalive_due(self, now: float) -> float | None:
        if self.ticket is None:
            self.asked_without_ticket += 1
            return None
        self.asked.append(now)
        return now + 30.0


async def test_a_second_scheduler_close_returns_only_once_its_task_has_ended(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    owner = _Owner()
    owner.ticket = scheduler.watch(owner, at=30.0)
    await asyncio.sleep(0)
    (running,) = _scheduler_tasks()
    first = asyncio.get_running_loop().create_task(scheduler.close())
    await asyncio.sleep(0)  # the first close has cancelled the task
    await scheduler.close()
    assert running.done(), "the second close returned while the task still ran"
    await first


async def test_a_subject_due_at_once_is_asked_only_once_watch_returned_its_ticket(
    clock: VirtualClock,
) -> None:
    """Under an eager task factory (Python 3.12+) the scheduler's task starts inside watch():
    a subject due at once was asked there, before its owner held its ticket (a socket's
    ``_ready`` stores it when watch returns), answered None, and was never watched again."""
    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is None:
        pytest.skip("asyncio.eager_task_factory is Python 3.12+")
    loop = asyncio.get_running_loop()
    loop.set_task_factory(eager)
    scheduler = KeepaliveScheduler(clock)
    owner = _Owner()
    try:
        owner.ticket = scheduler.watch(owner, at=clock.now())
        await clock.sleep(61.0)
        assert owner.asked_without_ticket == 0
        assert owner.asked == [0.0, 30.0, 60.0]
        assert scheduler.watched == 1
    finally:
        await scheduler.close()
        loop.set_task_factory(None)


# -- Engine.keepalive: refused at the call ----------------------------------------------------


def test_keepalive_called_without_a_running_loop_is_refused_cleanly() -> None:
    """Engine.keepalive() is no coroutine, so it can be called from plain code: with no loop
    running it raises the library's WrongEventLoop (a TransportError, and a RuntimeError as
    before), and the engine keeps no task that never ran (``_left_open`` would report it as a
    keepalive running, and warn at collection)."""
    engine = Engine({"agentVep": "127.0.0.1:9"}, scheme="http", auth=AppKeyAuth("1", "k-1"))
    with pytest.raises(WrongEventLoop, match="running event loop") as caught:
        engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": "1", "chat_id": "c"}
        )
    assert isinstance(caught.value, TransportError)
    assert isinstance(caught.value, RuntimeError)
    assert engine._left_open() == []


async def test_a_socket_keepalive_with_a_method_and_path_is_refused(clock: VirtualClock) -> None:
    """A Keepalive whose transport says SOCKET is a socket's, whatever method and path it
    also holds: Engine.keepalive refuses it rather than run it as an HTTP call."""
    on_socket = Keepalive(
        product="test",
        action="ping",
        interval=30.0,
        timeout=10.0,
        transport=KeepaliveTransport.SOCKET,
        method="GET",
        path="/x",
    )
    async with Engine(
        {"agentVep": "127.0.0.1:9"}, scheme="http", clock=clock, auth=AppKeyAuth("1", "k-1")
    ) as engine:
        with pytest.raises(ConfigurationError, match="socket keepalive"):
            engine.keepalive(on_socket, "agentVep")
        assert not any("keepalive" in left for left in engine._left_open())
