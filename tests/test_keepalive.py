"""Keepalive: the guide's per-product table, the pure decision, and the runners on virtual time."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from le_transport import ConfigurationError
from le_transport.policies import (
    CHAT_AGENT_API_REFRESH,
    GUIDE_KEEPALIVES,
    MESSAGING_AGENT_SDK_GETCLOCK,
    MESSAGING_WINDOW_API_GETCLOCK,
    SERVER_CHAT_API_CHAT_INFO,
    Keepalive,
    KeepaliveStep,
    KeepaliveTransport,
)
from le_transport.sockets import KeepaliveTask, watch_socket
from le_transport.sockets.keepalive import keep_alive_until
from le_transport.testing import VirtualClock

RUNS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKET_KEEPALIVES = [MESSAGING_AGENT_SDK_GETCLOCK, MESSAGING_WINDOW_API_GETCLOCK]


def test_the_guides_table_ships_as_named_values() -> None:
    assert CHAT_AGENT_API_REFRESH.interval == 300.0
    assert CHAT_AGENT_API_REFRESH.action == "refresh"
    assert CHAT_AGENT_API_REFRESH.transport is KeepaliveTransport.HTTP
    assert MESSAGING_AGENT_SDK_GETCLOCK.interval == 30.0
    assert MESSAGING_AGENT_SDK_GETCLOCK.action == ".GetClock"
    assert MESSAGING_WINDOW_API_GETCLOCK.interval == 30.0
    assert MESSAGING_WINDOW_API_GETCLOCK.action == "GetClock"
    assert SERVER_CHAT_API_CHAT_INFO.interval == 30.0
    assert SERVER_CHAT_API_CHAT_INFO.transport is KeepaliveTransport.HTTP
    assert SERVER_CHAT_API_CHAT_INFO.method == "GET"
    assert set(GUIDE_KEEPALIVES) == {
        "Chat Agent API",
        "Messaging Agent SDK",
        "Messaging Window API",
        "Server Chat API",
    }


def test_the_consumer_getclock_can_take_the_dotted_form() -> None:
    assert MESSAGING_WINDOW_API_GETCLOCK.with_action(".GetClock").action == ".GetClock"


def test_a_socket_idle_for_an_interval_is_probed() -> None:
    ka = MESSAGING_AGENT_SDK_GETCLOCK
    assert ka.decide(29.9, last_activity=0.0).step is KeepaliveStep.WAIT
    assert ka.decide(29.9, last_activity=0.0).at == 30.0
    assert ka.decide(30.0, last_activity=0.0).step is KeepaliveStep.PROBE


def test_an_unanswered_probe_means_a_dead_peer_after_its_timeout() -> None:
    ka = MESSAGING_AGENT_SDK_GETCLOCK
    waiting = ka.decide(35.0, last_activity=0.0, probe_sent_at=30.0)
    assert (waiting.step, waiting.at) == (KeepaliveStep.WAIT, 40.0)
    assert ka.decide(40.0, last_activity=0.0, probe_sent_at=30.0).step is KeepaliveStep.DEAD
    # Any frame since the probe answers it.
    assert ka.decide(40.0, last_activity=31.0, probe_sent_at=30.0).step is KeepaliveStep.WAIT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 30.0, "timeout": 31.0},
        {"interval": 0.0, "timeout": 0.0},
        {"interval": 30.0, "timeout": 10.0, "transport": KeepaliveTransport.HTTP},
    ],
)
def test_invalid_keepalives_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Keepalive(product="x", action="x", **kwargs)  # type: ignore[arg-type]


async def _watch(
    policy: Keepalive, gaps: list[float], answer_delay: float
) -> tuple[list[float], list[float], float]:
    """Run the socket watcher against a peer that sends frames after ``gaps`` and answers
    probes after ``answer_delay`` while it is alive, then falls silent. Returns the frame
    times, the probe times and when the peer was declared dead."""
    clock = VirtualClock()
    frames: list[float] = [0.0]
    probes: list[float] = []
    alive = True

    async def peer() -> None:
        nonlocal alive
        for gap in gaps:
            await clock.sleep(gap)
            frames.append(clock.now())
        alive = False

    async def probe() -> None:
        probes.append(clock.now())
        if alive:
            await clock.sleep(answer_delay)
            if alive:
                frames.append(clock.now())

    peer_task = asyncio.get_running_loop().create_task(peer())
    await watch_socket(policy, clock=clock, probe=probe, last_activity=lambda: frames[-1])
    dead_at = clock.now()
    await peer_task
    return frames, probes, dead_at


@RUNS
@given(
    policy=st.sampled_from(SOCKET_KEEPALIVES),
    gaps=st.lists(st.integers(1, 90).map(float), max_size=12),
    answer_fraction=st.floats(0.0, 0.99),
)
def test_keepalive_fires_only_after_a_whole_idle_interval_and_a_dead_peer_is_found_in_two(
    policy: Keepalive, gaps: list[float], answer_fraction: float
) -> None:
    """Every probe is sent exactly one product interval after the last frame, with no frame
    in between; a peer that falls silent is declared dead no later than two intervals after
    its last frame, and a peer that answers is never declared dead."""
    answer_delay = policy.timeout * answer_fraction
    frames, probes, dead_at = asyncio.run(_watch(policy, gaps, answer_delay))
    for p in probes:
        # A frame at the very instant of the probe is a tie the probe may win.
        before = [f for f in frames if f < p - 1e-9]
        assert p - max(before) == pytest.approx(policy.interval)
    last = max(frames)
    assert dead_at <= last + 2 * policy.interval
    assert dead_at == pytest.approx(last + policy.interval + policy.timeout)
    # The peer went silent only after its last scripted frame.
    assert last >= sum(gaps) - 1e-9


async def test_http_keepalive_runs_every_interval_and_survives_a_failure(
    clock: VirtualClock,
) -> None:
    calls: list[float] = []

    async def action() -> None:
        calls.append(clock.now())
        if len(calls) == 2:
            raise ConnectionError("simulated")

    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, action, clock=clock).start()
    await clock.sleep(100)
    await task.close()
    assert calls == [30.0, 60.0, 90.0]
    assert (task.runs, task.failures) == (3, 1)
    assert not task.running


def test_outbound_idle_probes_a_quiet_client_even_while_frames_arrive() -> None:
    guide = MESSAGING_AGENT_SDK_GETCLOCK
    quiet_client = guide.decide(40.0, last_activity=39.0, last_sent=10.0)
    assert quiet_client.step is KeepaliveStep.WAIT  # the guide's rule: frames arrived
    outbound = Keepalive(
        product="x", action=".GetClock", interval=30.0, timeout=10.0, outbound_idle=True
    )
    assert outbound.decide(40.0, last_activity=39.0, last_sent=10.0).step is KeepaliveStep.PROBE
    assert outbound.decide(40.0, last_activity=39.0, last_sent=20.0).at == 50.0


async def test_the_owners_keepalive_returns_as_soon_as_the_connection_ends_and_leaves_its_outcome(
    clock: VirtualClock,
) -> None:
    policy = MESSAGING_AGENT_SDK_GETCLOCK
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    probes: list[float] = []

    async def probe() -> None:
        probes.append(clock.now())

    async def end_later() -> None:
        await clock.sleep(policy.interval + policy.timeout / 2)
        ended.set_result("lost")

    ender = asyncio.get_running_loop().create_task(end_later())
    # The peer answers nothing, but the connection ends before the probe's timeout.
    result = await keep_alive_until(
        policy, ended, clock=clock, probe=probe, last_activity=lambda: 0.0
    )
    await ender
    assert result is None
    assert clock.now() == pytest.approx(policy.interval + policy.timeout / 2)
    assert probes == [pytest.approx(policy.interval)]
    # Many timed-out waits on the outcome never cancelled it: it holds what the reader set.
    assert ended.result() == "lost"


async def test_the_owners_keepalive_reports_a_silent_peer_dead_when_its_probe_was_sent(
    clock: VirtualClock,
) -> None:
    policy = MESSAGING_AGENT_SDK_GETCLOCK
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def probe() -> None:
        return None

    dead_since = await keep_alive_until(
        policy, never, clock=clock, probe=probe, last_activity=lambda: 0.0
    )
    assert dead_since == pytest.approx(policy.interval)
    assert clock.now() == pytest.approx(policy.interval + policy.timeout)
    assert not never.done()
    never.cancel()
