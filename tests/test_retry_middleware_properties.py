"""Properties of the real stack: hypothesis-generated status sequences from a loopback server.

Each example starts a fresh event loop, a loopback aiohttp server scripted with the generated
statuses, and an :class:`Engine` on a :class:`VirtualClock`, then checks the attempts the server
saw, the virtual time spent and the error raised against the guide's rules, stated here as a
small independent model.
"""

from __future__ import annotations

import asyncio

import attrs
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from le_transport import (
    BlockedError,
    ClientStatusError,
    ConnectionFailed,
    Engine,
    RetriesExhausted,
    RetryPolicy,
    ServerStatusError,
    TransportError,
)
from le_transport.testing import VirtualClock

STATUSES = [200, 201, 400, 401, 404, 429, 451, 500, 502, 503, 504]
#: A connection reset before any answer, in a scripted sequence.
RESET = -1
GUIDE = (5.0, 10.0, 15.0)

sequences = st.lists(st.sampled_from(STATUSES), min_size=1, max_size=6)
methods = st.sampled_from(["GET", "PUT", "POST"])
RUNS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@attrs.frozen
class Expected:
    """What the guide says a call makes of a status sequence."""

    attempts: int
    pauses: tuple[float, ...]
    error: type[BaseException] | None


def guide(statuses: list[int], method: str, pauses: tuple[float, ...] = GUIDE) -> Expected:
    """The rules, written out independently of the policy code."""
    taken: list[float] = []
    for n in range(1, len(pauses) + 2):
        status = statuses[n - 1] if n <= len(statuses) else 200
        if status == RESET:
            if method == "POST":
                return Expected(n, tuple(taken), ConnectionFailed)
            if n == len(pauses) + 1:
                return Expected(n, tuple(taken), RetriesExhausted)
            taken.append(pauses[n - 1])
            continue
        if status < 400:
            return Expected(n, tuple(taken), None)
        if status == 451:
            return Expected(n, tuple(taken), BlockedError)
        if 400 <= status < 500 and status != 429:
            return Expected(n, tuple(taken), ClientStatusError)
        if method == "POST" and status != 429:
            return Expected(n, tuple(taken), ServerStatusError)
        if n == len(pauses) + 1:
            return Expected(n, tuple(taken), RetriesExhausted)
        pause = pauses[n - 1]
        taken.append(max(pause, 1.0) if status == 429 else pause)
    raise AssertionError("unreachable")


@attrs.define
class Observed:
    hits: int
    elapsed: float
    error: BaseException | None
    pauses: tuple[float | None, ...]


async def run_call(statuses: list[int], method: str, policy: RetryPolicy) -> Observed:
    script = list(statuses)
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        status = script.pop(0) if script else 200
        return web.json_response({"hit": hits}, status=status)

    app = web.Application()
    app.router.add_route("*", "/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    clock = VirtualClock()
    error: BaseException | None = None
    pauses: tuple[float | None, ...] = ()
    try:
        async with Engine({"svc": host}, scheme="http", clock=clock, retry=policy) as engine:
            try:
                resp = await engine.request(method, "svc", "/x", json={"n": 1})
                pauses = tuple(a.pause for a in resp.attempts)
                assert resp.json(dict)["hit"] == hits
            except TransportError as exc:
                error = exc
    finally:
        await runner.cleanup()
    return Observed(hits=hits, elapsed=clock.now(), error=error, pauses=pauses)


@RUNS
@given(sequences, methods)
def test_the_real_stack_makes_exactly_the_attempts_and_pauses_the_guide_prescribes(
    statuses: list[int], method: str
) -> None:
    """Invariant: for any status sequence, the server sees exactly the guide's attempts (at
    most 4; one for a 4xx; the success stops at once), the virtual time spent is the sum of a
    prefix of (5, 10, 15), and the error raised is the guide's."""
    expected = guide(statuses, method)
    observed = asyncio.run(run_call(statuses, method, RetryPolicy()))
    assert observed.hits == expected.attempts <= 4
    assert observed.elapsed == sum(expected.pauses)
    if expected.error is None:
        assert observed.error is None
        assert observed.pauses == (*expected.pauses, None)
    else:
        assert type(observed.error) is expected.error
        assert isinstance(observed.error, TransportError)
        recorded = getattr(observed.error, "attempts", ())
        assert tuple(a.pause for a in recorded) == (*expected.pauses, None)


@RUNS
@given(
    sequences.filter(lambda s: 429 not in s),
    st.lists(st.floats(0, 3600), max_size=5).map(tuple),
)
def test_the_real_stack_follows_configured_pauses_of_any_length(
    statuses: list[int], pauses: tuple[float, ...]
) -> None:
    """Invariant: with ``RetryPolicy(pauses=p)``, attempts are at most ``len(p) + 1`` and the
    virtual time spent is the sum of a prefix of ``p``."""
    expected = guide(statuses, "GET", pauses)
    observed = asyncio.run(run_call(statuses, "GET", RetryPolicy(pauses=pauses)))
    assert observed.hits == expected.attempts <= len(pauses) + 1
    # The clock adds the pauses one after another; sum() of floats (Python >= 3.12) rounds
    # once, at the end, and can differ from that in the last bit.
    elapsed = 0.0
    for pause in expected.pauses:
        elapsed += pause
    assert observed.elapsed == elapsed


async def run_raw_call(script: list[int], method: str) -> Observed:
    """Like :func:`run_call`, on a raw server that can also reset the connection."""
    from tests.test_retry_middleware import raw_server

    replies = list(script)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status = replies.pop(0) if replies else 200
        if status == RESET:
            writer.transport.abort()
            return
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        await writer.drain()

    clock = VirtualClock()
    error: BaseException | None = None
    async with (
        raw_server(answer) as (host, hits),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        try:
            await engine.request(method, "svc", "/x", json={"n": 1})
        except TransportError as exc:
            error = exc
    return Observed(hits=len(hits), elapsed=clock.now(), error=error, pauses=())


@RUNS
@given(st.lists(st.sampled_from([RESET, *STATUSES]), min_size=1, max_size=6), methods)
def test_resets_and_statuses_mixed_follow_the_guide_on_the_real_stack(
    script: list[int], method: str
) -> None:
    """Invariant: with connection resets mixed into any status sequence, a GET or PUT retries a
    reset like a 5xx, a POST fails on it at once, and pauses stay a prefix of (5, 10, 15)."""
    expected = guide(script, method)
    observed = asyncio.run(run_raw_call(script, method))
    assert observed.hits == expected.attempts <= 4
    assert observed.elapsed == sum(expected.pauses)
    if expected.error is None:
        assert observed.error is None
    else:
        assert type(observed.error) is expected.error


# -- the attempt timeout and the deadline, one clock timeout per attempt ---------------------


def timed_model(
    delays: list[float], succeed_at: int | None, timeout: float | None, deadline: float | None
) -> tuple[int, float, str]:
    """(attempts begun, virtual time at the end, outcome) by the guide's rules, for a server
    that answers attempt ``n`` after ``delays[n - 1]`` seconds (503, or 200 at ``succeed_at``).

    An attempt is cut at whichever comes first of ``timeout`` and the deadline; a deadline cut
    ends the call, an attempt-timeout cut is retried like a 503; a pause that would end at or
    past the deadline is not taken (the call gives up).
    """
    t = 0.0
    for n in range(1, len(GUIDE) + 2):
        limit = float("inf") if timeout is None else timeout
        by_deadline = deadline is not None and deadline - t <= limit
        if by_deadline:
            assert deadline is not None
            limit = deadline - t
        delay = delays[n - 1] if n <= len(delays) else 0.5
        if delay > limit:
            if by_deadline:
                return n, t + limit, "DeadlineExceeded"
            t += limit
        else:
            t += delay
            if n == succeed_at:
                return n, t, "ok"
        if n == len(GUIDE) + 1:
            return n, t, "RetriesExhausted"
        pause = GUIDE[n - 1]
        if deadline is not None and t + pause >= deadline:
            return n, t, "RetriesExhausted"
        t += pause
    raise AssertionError("unreachable")


async def run_timed_call(
    delays: list[float], succeed_at: int | None, policy: RetryPolicy
) -> tuple[int, float, str, float | None]:
    clock = VirtualClock()
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        n = hits
        await clock.sleep(delays[n - 1] if n <= len(delays) else 0.5)
        return web.json_response({"hit": n}, status=200 if n == succeed_at else 503)

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    outcome = "ok"
    elapsed: float | None = None
    try:
        async with Engine({"svc": host}, scheme="http", clock=clock, retry=policy) as engine:
            try:
                await engine.request("GET", "svc", "/x")
            except TransportError as exc:
                outcome = type(exc).__name__
                elapsed = getattr(exc, "elapsed", None)
            ended = clock.now()
    finally:
        await runner.cleanup()
    return hits, ended, outcome, elapsed


# Delays end on a half second, timeouts on a whole one and deadlines on a quarter: an answer and
# a timeout never fall on the same virtual instant, whose order would be the loop's to choose.
half_seconds = st.integers(0, 24).map(lambda k: k + 0.5)


@RUNS
@given(
    st.lists(half_seconds, min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(1, 4)),
    st.one_of(st.none(), st.integers(1, 20).map(float)),
    st.one_of(st.none(), st.integers(1, 60).map(lambda k: k + 0.25)),
)
def test_every_attempt_ends_by_its_timeout_and_the_call_by_its_deadline(
    delays: list[float], succeed_at: int | None, timeout: float | None, deadline: float | None
) -> None:
    """Invariant: with one clock timeout per attempt (the nearer of the attempt timeout and the
    deadline), a call never runs past its deadline, an attempt never past its timeout, and the
    attempts, the virtual time and the outcome are those of the guide's rules."""
    policy = RetryPolicy(attempt_timeout=timeout, deadline=deadline)
    attempts, ended, outcome = timed_model(delays, succeed_at, timeout, deadline)
    hits, observed_end, observed, elapsed = asyncio.run(run_timed_call(delays, succeed_at, policy))
    assert (hits, observed_end, observed) == (attempts, ended, outcome)
    if deadline is not None:
        assert observed_end <= deadline
    if observed == "DeadlineExceeded":
        assert elapsed == deadline
