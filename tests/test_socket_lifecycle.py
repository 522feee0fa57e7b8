"""The socket's owner in isolation: its state machine, queue and correlation, and its reconnect
schedule proved on virtual time against an in-memory dialer (no network)."""

from __future__ import annotations

import asyncio
import gc
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from le_transport import InvalidSocketTransition, SocketClosed, SocketQueueFull
from le_transport.policies import BackoffPolicy, Disconnect
from le_transport.providers import Credentials
from le_transport.sockets import (
    Connection,
    DialFailed,
    ResilientSocket,
    SocketOptions,
    SocketState,
)
from le_transport.sockets.correlation import PendingRequests
from le_transport.sockets.lifecycle import Lifecycle
from le_transport.sockets.outbox import Outbox, Outgoing
from le_transport.testing import VirtualClock
from tests.test_jitter_r18 import expected_delay

RUNS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RefusingDialer:
    """A dialer whose every connect is refused; it counts connects in flight."""

    name = "test/refusing"

    def __init__(self) -> None:
        self.dials = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reauthentications = 0
        self.refreshes = 0

    async def dial(self) -> Connection:
        self.dials += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            raise DialFailed("refused", disconnect=Disconnect.connect_failed("refused"))
        finally:
            self.in_flight -= 1

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        self.reauthentications += 1

    async def refresh(self) -> None:
        self.refreshes += 1


def test_the_lifecycle_follows_its_transition_table() -> None:
    life = Lifecycle()
    assert life.to(SocketState.CONNECTING) == 0
    assert life.to(SocketState.OPEN) == 1
    assert life.is_current(1)
    life.to(SocketState.RECONNECTING)
    assert not life.is_current(1)
    life.to(SocketState.CONNECTING)
    assert life.to(SocketState.OPEN) == 2
    life.to(SocketState.CLOSING)
    life.to(SocketState.CLOSED)
    with pytest.raises(InvalidSocketTransition) as info:
        life.to(SocketState.CONNECTING)
    assert (info.value.current, info.value.target) == ("closed", "connecting")


def test_a_socket_cannot_be_open_twice_or_skip_connecting() -> None:
    life = Lifecycle()
    with pytest.raises(InvalidSocketTransition):
        life.to(SocketState.OPEN)
    life.to(SocketState.CONNECTING)
    with pytest.raises(InvalidSocketTransition):
        life.to(SocketState.CONNECTING)


def test_the_outbox_is_bounded_ordered_and_skips_withdrawn_requests() -> None:
    box = Outbox(3)
    for text, rid in (("a", None), ("b", "1"), ("c", None)):
        box.put(Outgoing(text, rid))
    with pytest.raises(SocketQueueFull):
        box.put(Outgoing("d"))
    assert box.withdraw("1")
    first = box.take()
    assert first is not None
    assert first.text == "a"
    box.put_back(first)
    assert [i.text for i in box.clear()] == ["a", "c"]
    assert box.take() is None


async def test_pending_requests_resolve_by_req_id_and_fail_with_their_connection() -> None:
    pending = PendingRequests()
    rid1, fut1 = pending.open()
    rid2, fut2 = pending.open()
    rid3, fut3 = pending.open()
    assert len({rid1, rid2, rid3}) == 3
    pending.sent(rid1, 1)
    pending.sent(rid2, 2)
    assert pending.resolve({"kind": "resp", "reqId": rid2, "code": 200})
    assert not pending.resolve({"kind": "resp", "reqId": "unknown"})
    assert pending.fail_epoch(1, lambda: SocketClosed("lost")) == 1
    with pytest.raises(SocketClosed):
        await fut1
    assert (await fut2)["code"] == 200
    assert not fut3.done()  # queued, not sent: not failed by a lost connection
    pending.fail_all(lambda: SocketClosed("closed"))
    with pytest.raises(SocketClosed):
        await fut3


async def _run_refused(policy: BackoffPolicy, seed: int) -> tuple[list[float], RefusingDialer]:
    clock = VirtualClock()
    dialer = RefusingDialer()
    ws = ResilientSocket(
        dialer,
        options=SocketOptions(backoff=policy, escalate_after=0),
        clock=clock,
        rng=random.Random(seed),
    ).start()
    with pytest.raises(SocketClosed):
        await ws.wait_open()
    return list(clock.sleeps), dialer


@RUNS
@given(
    first=st.floats(0.1, 5.0),
    factor=st.floats(1.5, 3.0),
    cap=st.floats(5.0, 200.0),
    jitter=st.floats(0.0, 0.5),
    attempts=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_reconnect_pauses_follow_the_backoff_policy_and_one_connect_is_in_flight(
    first: float, factor: float, cap: float, jitter: float, attempts: int, seed: int
) -> None:
    """The pauses between failed connects are exactly the BackoffPolicy's jittered delays, in
    order, drawn from the socket's random source; the socket gives up when the policy does;
    and never more than one connect is in flight."""
    policy = BackoffPolicy.reconnect(
        first=first, factor=factor, cap=max(cap, first), jitter=jitter, max_attempts=attempts
    )
    sleeps, dialer = asyncio.run(_run_refused(policy, seed))
    rng = random.Random(seed)
    # The documented formula, not policy.delay itself (which the pauses would then match
    # whatever it computed).
    expected = [expected_delay(policy, n, rng.random()) for n in range(1, attempts + 1)]
    assert sleeps == pytest.approx(expected)
    assert dialer.dials == attempts + 1
    assert dialer.max_in_flight == 1


async def test_a_socket_closed_before_it_started_is_closed_for_good() -> None:
    ws = ResilientSocket(RefusingDialer(), clock=VirtualClock())
    assert await ws.close() == []
    assert ws.state is SocketState.CLOSED
    with pytest.raises(SocketClosed):
        await ws.send("x")


async def test_closing_while_reconnecting_cancels_the_wait(clock: VirtualClock) -> None:
    dialer = RefusingDialer()
    ws = ResilientSocket(dialer, clock=clock).start()
    events = ws.states()
    async for event in events:
        if event.name == "reconnecting":
            break
    await ws.close()
    assert ws.state is SocketState.CLOSED
    assert dialer.dials == 1
    assert [e.name async for e in events] == ["closed"]


async def test_a_socket_closed_right_after_start_ends_closed(clock: VirtualClock) -> None:
    dialer = RefusingDialer()
    ws = ResilientSocket(dialer, clock=clock).start()
    await ws.close()
    assert ws.state is SocketState.CLOSED
    # Under an eager task factory the owner's first dial begins inside start() itself.
    eager = asyncio.get_running_loop().get_task_factory() is not None
    assert dialer.dials == (1 if eager else 0)


async def test_a_state_iterator_dropped_unfinished_stops_collecting(clock: VirtualClock) -> None:
    ws = ResilientSocket(RefusingDialer(), clock=clock)
    abandoned = ws.states()
    del abandoned
    gc.collect()
    ws.start()
    await clock.sleep(5)  # connect failures and reconnect waits emit events meanwhile
    assert ws._subscribers is not None  # made by states() above
    assert len(ws._subscribers) == 0
    await ws.close()
