"""Keepalive: the guide's per-product table, the pure decision, and the runners on virtual time."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from le_transport import ConfigurationError, Engine, EventHooks, StateEvent, TransportError
from le_transport.clock import RealClock
from le_transport.errors import KeepaliveClosed
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
from le_transport.sockets.keepalive import KeepaliveScheduler
from le_transport.sockets.options import MESSAGING_AGENT_KEEPALIVE
from le_transport.testing import VirtualClock
from tests.known_secrets import BEARER

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


async def test_a_failed_http_keepalive_run_is_logged_with_its_redacted_message(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The type alone ("TransportError") cannot tell an engine never started from an outage:
    the WARNING shows the error's text too, redacted and cut short."""
    engine = Engine({"agentVep": "127.0.0.1:9"}, scheme="http", clock=clock)  # never started
    task = engine.keepalive(
        SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": "1", "chat_id": "c"}
    )
    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    await clock.sleep(35)
    await task.close()
    (warning,) = [r for r in caplog.records if "keepalive" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "TransportError: the engine is not started" in warning.getMessage()
    assert warning.exc_info is None


async def test_a_failed_http_keepalive_run_never_logs_a_credential_nor_a_whole_essay(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def action() -> None:
        raise TransportError(f"refused Authorization: Bearer {BEARER} " + "x" * 5000)

    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, action, clock=clock).start()
    await clock.sleep(35)
    await task.close()
    (warning,) = caplog.records
    message = warning.getMessage()
    assert "TransportError: refused Authorization: Bearer ***" in message
    assert BEARER not in message
    assert len(message) < 400


def test_outbound_idle_probes_a_quiet_client_even_while_frames_arrive() -> None:
    guide = MESSAGING_AGENT_SDK_GETCLOCK
    quiet_client = guide.decide(40.0, last_activity=39.0, last_sent=10.0)
    assert quiet_client.step is KeepaliveStep.WAIT  # the guide's rule: frames arrived
    outbound = Keepalive(
        product="x", action=".GetClock", interval=30.0, timeout=10.0, outbound_idle=True
    )
    assert outbound.decide(40.0, last_activity=39.0, last_sent=10.0).step is KeepaliveStep.PROBE
    assert outbound.decide(40.0, last_activity=39.0, last_sent=20.0).at == 50.0


class Subject:
    """A keepalive subject that answers a scripted series of next times, then None."""

    def __init__(self, clock: VirtualClock | RealClock, answers: list[float | None]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.asked: list[float] = []

    def _keepalive_due(self, now: float) -> float | None:
        self.asked.append(now)
        return self.answers.pop(0) if self.answers else None


def _scheduler_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "le_transport socket keepalives" and not t.done()
    ]


async def test_one_scheduler_task_serves_every_socket_and_ends_when_none_is_left(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    subjects = [Subject(clock, [10.0 + i, 40.0 + i, None]) for i in range(50)]
    for i, subject in enumerate(subjects):
        scheduler.watch(subject, at=5.0 + i)
    # Fifty sockets watched, one task: an idle socket costs a heap entry, not a task.
    assert len(_scheduler_tasks()) == 1
    assert scheduler.watched == 50
    await clock.sleep(100)
    for i, subject in enumerate(subjects):
        assert subject.asked == [5.0 + i, 10.0 + i, 40.0 + i]
    # Every subject answered None: nothing is left to serve, and the task has ended.
    assert scheduler.watched == 0
    assert not scheduler.running
    await scheduler.close()


async def test_an_earlier_deadline_wakes_the_scheduler_from_a_later_one(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    late = Subject(clock, [])
    early = Subject(clock, [])
    scheduler.watch(late, at=100.0)
    await clock.sleep(1)  # the task now sleeps until 100
    scheduler.watch(early, at=10.0)
    await clock.sleep(20)
    assert early.asked == [10.0]
    assert late.asked == []
    await clock.sleep(100)
    assert late.asked == [100.0]
    await scheduler.close()


async def test_an_unwatched_socket_is_never_asked_and_the_last_one_ends_the_task(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    kept = Subject(clock, [60.0, None])
    gone = Subject(clock, [60.0])
    scheduler.watch(kept, at=30.0)
    ticket = scheduler.watch(gone, at=30.0)
    scheduler.unwatch(ticket)
    await clock.sleep(100)
    assert gone.asked == []
    assert kept.asked == [30.0, 60.0]
    assert not scheduler.running
    last = scheduler.watch(Subject(clock, [120.0]), at=110.0)
    assert scheduler.running
    scheduler.unwatch(last)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not scheduler.running


async def test_forgotten_sockets_are_not_kept_alive_by_the_heap(clock: VirtualClock) -> None:
    """Entries of connections that ended are dropped from the heap once they outnumber the
    live ones, so a closed socket is not held until its old deadline."""
    scheduler = KeepaliveScheduler(clock)
    keep = [Subject(clock, [1e6]) for _ in range(10)]
    for subject in keep:
        scheduler.watch(subject, at=3600.0)
    refs = []
    for _ in range(200):
        subject = Subject(clock, [1e6])
        refs.append(weakref.ref(subject))
        scheduler.unwatch(scheduler.watch(subject, at=3600.0))
        del subject
    gc.collect()
    # At most the last batch below the rebuild threshold is still held.
    assert sum(ref() is not None for ref in refs) <= 64
    assert scheduler.watched == 10
    await scheduler.close()
    assert not scheduler.running


async def test_closing_the_scheduler_stops_its_task_and_forgets_every_socket(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    subject = Subject(clock, [60.0, 90.0])
    scheduler.watch(subject, at=30.0)
    await clock.sleep(45)
    await scheduler.close()
    assert not scheduler.running
    assert scheduler.watched == 0
    await clock.sleep(100)
    assert subject.asked == [30.0]


async def test_the_scheduler_runs_on_the_real_clock_too() -> None:
    clock = RealClock()
    scheduler = KeepaliveScheduler(clock)
    asked = asyncio.get_running_loop().create_future()

    class Once:
        def _keepalive_due(self, now: float) -> float | None:
            asked.set_result(now)
            return None

    start = clock.now()
    scheduler.watch(Once(), at=start + 0.02)
    # Generous: only proves the wait ends on the loop's own time, not how fast.
    when = await asyncio.wait_for(asked, timeout=30)
    assert when >= start + 0.02
    await scheduler.close()


class _FailingClock:
    """The virtual clock until ``fail`` names what breaks: ``"sleep"`` (every sleep from then
    on raises) or ``"now"`` (every read of the time does)."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.fail: str | None = None

    def now(self) -> float:
        if self.fail == "now":
            raise OSError("the clock source went away")
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        if self.fail == "sleep":
            raise OSError("the clock source went away")
        await self._clock.sleep(seconds)


class _Told(Subject):
    """A subject that wants to hear that its scheduler stopped (as a socket does)."""

    def __init__(self, clock: VirtualClock, answers: list[float | None]) -> None:
        super().__init__(clock, answers)
        self.failed: list[Exception] = []

    def _keepalive_failed(self, error: Exception) -> None:
        self.failed.append(error)


@pytest.mark.parametrize("what", ["sleep", "now"])
async def test_a_failing_clock_ends_the_scheduler_and_every_watched_socket_is_told(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    failing = _FailingClock(clock)
    scheduler = KeepaliveScheduler(failing)
    subjects = [_Told(clock, [1e6]) for _ in range(3)]
    tickets = [scheduler.watch(subject, at=30.0 + i) for i, subject in enumerate(subjects)]
    scheduler.unwatch(tickets[2])  # gone: not told
    await clock.sleep(10)
    task = scheduler._task
    assert task is not None
    failing.fail = what
    await clock.sleep(60)
    # Not a task gone quietly with the sockets still counted as watched: each is told (and
    # ends its connection), the error is logged once, and the task ends with it.
    assert [len(s.failed) for s in subjects] == [1, 1, 0]
    assert all(isinstance(s.failed[0], OSError) for s in subjects[:2])
    assert scheduler.watched == 0
    assert not scheduler.running
    assert isinstance(task.exception(), OSError)
    stopped = [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    assert len(stopped) == 1
    assert stopped[0].levelname == "ERROR"
    assert (
        stopped[0]
        .getMessage()
        .endswith(
            "watched connections forgotten: 2, of which ended so that their sockets reconnect: 2"
        )
    )
    # The clock works again: the next socket watched starts a new task, served as ever.
    failing.fail = None
    again = _Told(clock, [None])
    scheduler.watch(again, at=clock.now() + 5)
    assert scheduler.running
    await clock.sleep(10)
    assert len(again.asked) == 1
    assert not scheduler.running
    await scheduler.close()


async def test_a_subject_that_cannot_be_told_does_not_keep_the_others_from_hearing(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Refuses(_Told):
        def _keepalive_failed(self, error: Exception) -> None:
            raise LookupError("no")

    failing = _FailingClock(clock)
    scheduler = KeepaliveScheduler(failing)
    # The scheduler first sleeps on a working clock (with or without an eager task factory,
    # which starts its task inside watch()); the three subjects, due sooner, wake it, and the
    # sleep it takes for them is the one that fails: each of them is told.
    scheduler.watch(Subject(clock, []), at=100.0)
    await asyncio.sleep(0)
    failing.fail = "sleep"
    refuses, plain, told = Refuses(clock, []), Subject(clock, []), _Told(clock, [])
    for subject in (refuses, plain, told):
        scheduler.watch(subject, at=30.0)
    await clock.sleep(60)
    assert len(told.failed) == 1
    assert any("could not be told" in r.getMessage() for r in caplog.records)
    assert scheduler.watched == 0
    await scheduler.close()


@pytest.mark.parametrize("what", ["sleep", "now"])
async def test_an_owner_unwatching_after_the_clock_failed_never_silences_a_socket_watched_since(
    clock: VirtualClock, what: str
) -> None:
    # Before: the failure zeroed the count, a plain subject's owner unwatched its old ticket
    # (as the contract asks), the count of the socket watched since fell to 0 and the heap
    # was cleared: that socket was never asked again, and nothing said so.
    failing = _FailingClock(clock)
    scheduler = KeepaliveScheduler(failing)
    plain = Subject(clock, [1e6])
    old_ticket = scheduler.watch(plain, at=30.0)
    await clock.sleep(10)
    failing.fail = what
    await clock.sleep(30)
    assert not scheduler.running
    assert scheduler.watched == 0
    failing.fail = None
    since = Subject(clock, [clock.now() + 10.0 * i for i in range(1, 20)])
    scheduler.watch(since, at=clock.now() + 5)
    await clock.sleep(6)
    assert len(since.asked) == 1
    scheduler.unwatch(old_ticket)  # a ticket the failure already forgot: nothing to forget
    scheduler.unwatch(old_ticket)
    assert scheduler.watched == 1
    await clock.sleep(100)
    assert len(since.asked) == 11
    assert scheduler.running
    # Asked at its deadline when only the sleep after it fails; never again in any case.
    assert plain.asked == ([] if what == "now" else [30.0])
    await scheduler.close()


async def test_unwatching_a_ticket_its_subject_or_a_close_forgot_forgets_nothing_else(
    clock: VirtualClock,
) -> None:
    scheduler = KeepaliveScheduler(clock)
    done = Subject(clock, [None])  # answers None at its first deadline: forgotten
    kept = Subject(clock, [clock.now() + 10.0 * i for i in range(2, 30)])
    done_ticket = scheduler.watch(done, at=5.0)
    scheduler.watch(kept, at=10.0)
    await clock.sleep(6)
    assert scheduler.watched == 1
    # Before: this took the count of ``kept`` to 0 and cleared the heap with it.
    scheduler.unwatch(done_ticket)
    assert scheduler.watched == 1
    await clock.sleep(50)
    assert kept.asked == [10.0, 20.0, 30.0, 40.0, 50.0]
    await scheduler.close()
    closed_ticket = scheduler.watch(Subject(clock, [1e6]), at=clock.now() + 100)
    await scheduler.close()
    again = Subject(clock, [None])
    scheduler.watch(again, at=clock.now() + 5)
    scheduler.unwatch(closed_ticket)  # forgotten by the close
    await clock.sleep(10)
    assert len(again.asked) == 1
    await scheduler.close()


async def test_the_failure_line_counts_what_was_watched_and_what_was_ended(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _FailingClock(clock)
    scheduler = KeepaliveScheduler(failing)
    told, plain = _Told(clock, [1e6]), Subject(clock, [1e6])
    scheduler.watch(told, at=30.0)
    scheduler.watch(plain, at=31.0)
    failing.fail = "sleep"
    await clock.sleep(60)
    [line] = [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    # Before: "the 2 connections watched are ended", though the plain one was never told.
    assert line.getMessage().endswith(
        "watched connections forgotten: 2, of which ended so that their sockets reconnect: 1"
    )
    assert (line.watched, line.ended) == (2, 1)  # type: ignore[attr-defined]
    assert len(told.failed) == 1
    await scheduler.close()


async def test_the_failure_line_shows_the_clocks_type_and_its_error_redacted(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Chatty(_BrokenClock):
        def __repr__(self) -> str:
            return "Chatty(password=hunter2-repr)"

    broken = Chatty(clock)
    scheduler = KeepaliveScheduler(broken)
    scheduler.watch(_Told(clock, [1e6]), at=30.0)
    broken.fail = "now"
    await clock.sleep(60)
    [line] = [r for r in caplog.records if "socket keepalives stopped" in r.getMessage()]
    # Before: the clock's repr, and the error's text in full in the traceback.
    assert line.getMessage().startswith("socket keepalives stopped: Chatty failed (OSError: ")
    assert "time.example" in line.getMessage()
    assert "hunter2" not in line.getMessage()
    assert line.exc_info is None
    await scheduler.close()


class _BrokenClock(_FailingClock):
    """A :class:`_FailingClock` whose error says more than a log may (as a real one could)."""

    def now(self) -> float:
        try:
            return super().now()
        except OSError:
            raise OSError("clock source at https://user:hunter2@time.example went away") from None

    async def sleep(self, seconds: float) -> None:
        try:
            await super().sleep(seconds)
        except OSError:
            raise OSError("clock source at https://user:hunter2@time.example went away") from None


@pytest.mark.parametrize("what", ["sleep", "now"])
@pytest.mark.parametrize("runs_first", [0, 2])
async def test_an_http_keepalive_whose_clock_fails_stops_and_says_so_once(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, what: str, runs_first: int
) -> None:
    events: list[StateEvent] = []
    calls: list[float] = []

    async def action() -> None:
        calls.append(clock.now())

    broken = _BrokenClock(clock)
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO, action, clock=broken, hooks=EventHooks(on_state=[events.append])
    )
    if runs_first:
        task.start()
        await clock.sleep(30 * runs_first + 5)  # mid-sleep towards the next run
        broken.fail = what
        await clock.sleep(60)
    else:
        broken.fail = what
        task.start()
        for _ in range(5):
            await asyncio.sleep(0)
    # Not a task gone quietly until close(): stopped, and the owner can tell, and why.
    assert not task.running
    # A sleep already under way when the clock broke ends as it began (the run it was
    # waiting for goes ahead); the next one raises.
    assert task.runs == len(calls) == runs_first + (what == "sleep" and runs_first > 0)
    # The schedule's own runs did not fail: the clock did (a run's failure is counted there).
    assert task.failures == 0
    stopped = [e for e in events if e.details.get("stopped")]
    assert [e.name for e in stopped] == ["keepalive_failed"]
    assert stopped[0].details == {
        "action": SERVER_CHAT_API_CHAT_INFO.action,
        "error": "OSError",
        "clock": "_BrokenClock",
        "stopped": True,
    }
    # Logged once, at ERROR, with the clock's and the error's types and nothing of its text.
    # (Under an eager task factory the run's timeout starts its own sleep at once, and
    # timeout_after says, once, that the clock failed it: the clock's line, not the keepalive's.)
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "le_transport.clock"
    ]
    assert len(errors) == 1
    assert errors[0].name == "le_transport.sockets"
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    message = errors[0].getMessage()
    assert "_BrokenClock" in message
    assert "OSError" in message
    assert errors[0].exc_info is None
    assert "hunter2" not in message
    assert "hunter2" not in repr(stopped[0])
    assert isinstance(task.error, OSError)
    # A close is as quiet as ever, and nothing is left for asyncio to report.
    await task.close()
    await task.close()
    del task
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_an_engines_http_keepalive_with_a_failing_clock_tells_the_engines_hooks(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[StateEvent] = []
    broken = _BrokenClock(clock)
    async with Engine(
        {"agentVep": "127.0.0.1:9"},
        scheme="http",
        clock=broken,
        hooks=EventHooks(on_state=[events.append]),
    ) as engine:
        broken.fail = "sleep"
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": "1", "chat_id": "c"}
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.running
        assert isinstance(task.error, OSError)
        assert [e.name for e in events if e.details.get("stopped")] == ["keepalive_failed"]
        broken.fail = None
    # The engine's close closes it as ever: no task left (the conftest's leak check).
    assert not task.running


@RUNS
@given(
    plans=st.lists(
        st.lists(st.floats(0.5, 120.0, allow_nan=False), min_size=1, max_size=6),
        min_size=1,
        max_size=20,
    ),
    starts=st.lists(st.floats(0.0, 60.0, allow_nan=False), min_size=20, max_size=20),
)
def test_each_socket_is_asked_exactly_at_the_times_it_answered_never_earlier(
    plans: list[list[float]], starts: list[float]
) -> None:
    """Whatever the mix of deadlines, every watched socket is asked at its first deadline
    and then exactly at each time it answered, in order, and nothing is asked after it
    answered None; the scheduler's task ends with the last socket."""

    async def scenario() -> None:
        clock = VirtualClock()
        scheduler = KeepaliveScheduler(clock)
        subjects: list[tuple[Subject, list[float]]] = []
        for plan, start in zip(plans, starts[: len(plans)], strict=True):
            times = [start]
            for gap in plan:
                times.append(times[-1] + gap)
            subject = Subject(clock, [*times[1:], None])
            scheduler.watch(subject, at=start)
            subjects.append((subject, times))
        await clock.sleep(60 + 6 * 120 + 1)
        for subject, times in subjects:
            assert subject.asked == pytest.approx(times)
        assert scheduler.watched == 0
        assert not scheduler.running
        await scheduler.close()

    asyncio.run(scenario())


async def test_the_watcher_yields_after_a_probe_when_a_frame_shares_the_probes_instant() -> None:
    """A frame read at the same clock reading as the check counts as the probe's answer, and
    the probe's task has not sent yet: the watcher decided again at once, probed again, and
    never yielded (the loop spun, a probe task piling up on every pass)."""
    policy = MESSAGING_AGENT_KEEPALIVE  # outbound_idle: the client's own silence counts
    assert policy.outbound_idle
    clock = VirtualClock()
    await clock.sleep(100)
    last_in, last_out = clock.now(), 0.0
    probes: list[float] = []

    async def probe() -> None:
        nonlocal last_out
        probes.append(clock.now())
        last_out = clock.now()

    watcher = asyncio.get_running_loop().create_task(
        watch_socket(
            policy,
            clock=clock,
            probe=probe,
            last_activity=lambda: last_in,
            last_sent=lambda: last_out,
        )
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert probes == [100.0]
    assert not watcher.done()
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher


async def test_a_closed_keepalive_does_not_start_again(clock: VirtualClock) -> None:
    """Started again after its close (``start()``, a second ``async with``), an engine's
    keepalive was no longer the engine's: the engine's close never stopped it, and it failed
    every interval for ever after."""
    async with Engine({"leCdnDomain": "127.0.0.1:9"}, scheme="http", clock=clock) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "leCdnDomain", fields={"account": "1", "chat_id": "c"}
        )
        await task.close()
        with pytest.raises(KeepaliveClosed, match="ask the engine for a new one"):
            task.start()
        with pytest.raises(KeepaliveClosed):
            async with task:
                pass
        closed_by_engine = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "leCdnDomain", fields={"account": "1", "chat_id": "c"}
        )
    with pytest.raises(KeepaliveClosed):
        closed_by_engine.start()
    assert not task.running
    assert not closed_by_engine.running
    await task.close()  # still idempotent


async def test_a_keepalive_whose_engine_closed_under_it_stops_and_says_so_once(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A keepalive running an action on an engine that closed failed every interval, for
    ever, one WARNING each. It ends as a close does: one INFO line, no error (a healthy
    keepalive closed with its engine is no failure)."""
    caplog.set_level(logging.INFO, logger="le_transport")
    events: list[StateEvent] = []
    engine = Engine({"leCdnDomain": "127.0.0.1:9"}, scheme="http", clock=clock)
    await engine.start()
    await engine.close()

    async def action() -> None:
        await engine.request("GET", "leCdnDomain", "/x")

    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO, action, clock=clock, hooks=EventHooks(on_state=[events.append])
    ).start()
    await clock.sleep(300)
    assert (task.runs, task.failures, task.running) == (1, 0, False)
    assert task.error is None
    assert await task.wait() is None
    assert events == []
    lines = [r for r in caplog.records if "keepalive" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    await task.close()
