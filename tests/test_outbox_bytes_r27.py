"""The outgoing queue is bounded by the size of what it holds (``max_queued_bytes``), not
only by the number of messages: a socket that is down cannot hold 1,000 frames of any size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from le_transport import ConfigurationError, SocketQueueFull
from le_transport.sockets import SocketOptions
from le_transport.sockets.options import MAX_QUEUED_BYTES
from le_transport.sockets.outbox import Outbox, Outgoing
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    down_with_sim,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]


def test_the_default_bounds_the_queue_to_16_mib() -> None:
    assert SocketOptions().max_queued_bytes == MAX_QUEUED_BYTES == 16 * 1024 * 1024
    assert SocketOptions(max_queued_bytes=0).max_queued_bytes == 0


@pytest.mark.parametrize("value", [-1, 1.5, "10", True, None])
def test_a_bad_bound_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_queued_bytes must be an int >= 1"):
        SocketOptions(max_queued_bytes=value)  # type: ignore[arg-type]


def test_a_put_past_the_bound_is_refused_naming_the_bound_not_the_text() -> None:
    box = Outbox(1000, 10)
    box.put(Outgoing("secret-abc", order=1))
    assert box.queued_bytes == 10
    with pytest.raises(SocketQueueFull, match="max_queued_bytes") as info:
        box.put(Outgoing("x", order=2))
    assert "secret" not in str(info.value)
    assert "10 characters" in str(info.value)
    assert box.texts() == ["secret-abc"]
    assert box.queued_bytes == 10


def test_a_message_larger_than_the_bound_is_refused_even_into_an_empty_queue() -> None:
    box = Outbox(1000, 4)
    with pytest.raises(SocketQueueFull, match="max_queued_bytes"):
        box.put(Outgoing("hello", order=1))
    assert len(box) == 0
    assert box.queued_bytes == 0
    box.put(Outgoing("four", order=2))
    assert box.texts() == ["four"]


def test_put_back_is_never_refused_but_counts() -> None:
    box = Outbox(1000, 4)
    box.put(Outgoing("abcd", order=2))
    box.put_back(Outgoing("written", order=1))
    assert box.texts() == ["written", "abcd"]
    assert box.queued_bytes == 11
    with pytest.raises(SocketQueueFull):
        box.put(Outgoing("z", order=3))
    assert box.take() is not None
    assert box.queued_bytes == 4


def test_zero_means_no_bound_on_the_size() -> None:
    box = Outbox(1000, 0)
    box.put(Outgoing("x" * 100_000, order=1))
    box.put(Outgoing("y" * 100_000, order=2))
    assert box.queued_bytes == 200_000


class OutboxMachine(RuleBasedStateMachine):
    """The count always equals the sum of the queued texts' lengths, whatever is done."""

    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox(8, 40)
        self.order = 0
        self.ids = 0

    def _next(self, text: str, request: bool) -> Outgoing:
        self.order += 1
        self.ids += 1
        return Outgoing(text, f"r{self.ids}" if request else None, order=self.order)

    @rule(text=st.text(max_size=30), request=st.booleans())
    def put(self, text: str, request: bool) -> None:
        before = self.box.texts()
        fits = len(before) < 8 and sum(map(len, before)) + len(text) <= 40
        try:
            self.box.put(self._next(text, request))
        except SocketQueueFull:
            assert not fits
            assert self.box.texts() == before
        else:
            assert fits

    @rule(text=st.text(max_size=30), order=st.integers(0, 50))
    def put_back(self, text: str, order: int) -> None:
        self.box.put_back(Outgoing(text, order=order))

    @rule()
    def take(self) -> None:
        self.box.take()

    @rule(which=st.integers(1, 60))
    def withdraw(self, which: int) -> None:
        self.box.withdraw(f"r{which}")

    @rule()
    def clear(self) -> None:
        self.box.clear()

    @invariant()
    def counted(self) -> None:
        assert self.box.queued_bytes == sum(map(len, self.box.texts()))
        assert self.box.queued_bytes >= 0


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=30))
def test_taking_everything_leaves_the_count_at_zero(texts: list[str]) -> None:
    box = Outbox(1000, 0)
    for order, text in enumerate(texts, 1):
        box.put(Outgoing(text, order=order))
    assert box.queued_bytes == sum(map(len, texts))
    while box.take() is not None:
        pass
    assert box.queued_bytes == 0


@pytest.mark.usefixtures("no_open_connections")
async def test_a_socket_down_refuses_sends_past_its_byte_bound_and_sends_the_rest_after(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    big = "b" * 4000
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(max_queued_bytes=10_000))
        await ws.wait_open()
        await down_with_sim(ws, sim)
        assert await ws.send({"n": 1, "pad": big}) is False
        assert await ws.send({"n": 2, "pad": big}) is False
        with pytest.raises(SocketQueueFull, match="max_queued_bytes") as info:
            await ws.send({"n": 3, "pad": big})
        assert big not in str(info.value)
        assert ws.queued == 2
        await sim.start()
        await sim.sockets.wait_accepted(2)
        await ws.wait_open()
        await clock.sleep(0.1)
        assert ws.queued == 0
        # Open, the socket sends a message larger than the bound straight out.
        assert await ws.send({"n": 4, "pad": big * 3}) is True
        await clock.sleep(0.1)
    second = sim.sockets.all[1]
    assert [f.get("n") for f in second.received] == [1, 2, 4]
