"""A caller task whose count of cancellation requests a Python 3.11/3.12 TaskGroup left at 1 (a
child failed earlier in it) got a bare CancelledError where the engine's close gives
EngineClosed: the single flight and the recovery round read that count as it was."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from le_transport import BackoffPolicy, Engine, EngineClosed, RetryPolicy
from le_transport.errors import DomainResolutionError
from le_transport.providers import StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory, serve_hanging
from tests.test_socket_core_r15 import _fan_out_with_a_failure


@pytest.mark.parametrize("leak", [False, True])
async def test_a_call_in_flight_when_the_engine_closes_after_a_task_group_failure(
    serve: ServerFactory, clock: VirtualClock, leak: bool
) -> None:
    host, arrived, never = await serve_hanging(serve, "/x")
    engine = Engine({"svc": host}, scheme="http", clock=clock, retry=RetryPolicy(pauses=(5.0,)))
    await engine.start()

    async def worker() -> object:
        if leak:
            await _fan_out_with_a_failure()  # e.g. a fan-out earlier in the same worker
        try:
            return await engine.request("GET", "svc", "/x")
        except BaseException as exc:
            return exc

    call = asyncio.ensure_future(worker())
    await arrived.wait()
    await engine.close()
    outcome = await call
    never.set()
    assert isinstance(outcome, EngineClosed), repr(outcome)


@pytest.mark.parametrize("leak", [False, True])
async def test_single_flight_cancel_after_a_task_group_failure_in_the_caller(
    clock: VirtualClock, leak: bool
) -> None:
    from le_transport.providers._flight import SingleFlight

    async def forever() -> str:
        await clock.sleep(10_000)
        return "never"

    flight: SingleFlight[str] = SingleFlight("test", "login[1]: the login")

    async def caller() -> object:
        if leak:
            await _fan_out_with_a_failure()
        try:
            return await flight.run(forever)
        except BaseException as exc:
            return exc

    waiter = asyncio.ensure_future(caller())
    await clock.sleep(1)
    await flight.cancel()
    outcome = await waiter
    assert isinstance(outcome, EngineClosed), repr(outcome)


@pytest.mark.parametrize("recover", [False, True], ids=["fail-fast", "recover"])
async def test_engine_close_during_login_after_a_task_group_failure_in_the_caller(
    serve: ServerFactory, clock: VirtualClock, recover: bool
) -> None:
    """As tests/test_login.py's test_a_call_waiting_for_the_login_when_the_engine_closes_gets_
    engine_closed, but the calling task earlier ran a TaskGroup whose child failed."""
    from le_transport.providers import StaticDomains, UserLogin
    from tests.known_secrets import PASSWORD
    from tests.test_providers import ACCOUNT, USER

    host, arrived, never = await serve_hanging(serve, "/api/account/{account}/login", "POST")
    domains = StaticDomains({"agentVep": host})
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, logout_on_close=False)
    engine = Engine(domains, auth=auth, scheme="http", clock=clock)
    await engine.start()

    async def worker() -> object:
        await _fan_out_with_a_failure()
        try:
            return await engine.request("GET", "agentVep", "/x", recover=recover)
        except BaseException as exc:
            return exc

    call = asyncio.ensure_future(worker())
    await arrived.wait()
    await engine.close()
    never.set()
    outcome = await call
    assert isinstance(outcome, EngineClosed), repr(outcome)


@pytest.mark.parametrize("leak", [False, True])
async def test_a_call_waiting_on_a_recovery_round_when_the_engine_closes_gets_a_typed_error(
    serve: ServerFactory, clock: VirtualClock, leak: bool
) -> None:
    """The recovery round's waiter tells a round stopped under it from its own cancellation
    by where the CancelledError is raised, not by that count (a guard: the engine's close
    ends a round without cancelling it)."""
    from le_transport import TransportError

    app = web.Application()
    app.router.add_route("GET", "/x", _unavailable)
    host = await serve(app)
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=()),
        recovery=BackoffPolicy(first=60.0, cap=60.0, floor=60.0, jitter=0.0),
    )
    await engine.start()

    async def worker() -> object:
        if leak:
            await _fan_out_with_a_failure()
        try:
            return await engine.request("GET", "svc", "/x", recover=True)
        except BaseException as exc:
            return exc

    call = asyncio.ensure_future(worker())
    await clock.sleep(10)  # the call failed, and waits out the round's pause
    assert not call.done()
    await engine.close()
    outcome = await call
    assert isinstance(outcome, TransportError), repr(outcome)


async def _unavailable(request: web.Request) -> web.Response:
    return web.Response(status=503)


@pytest.mark.parametrize("attempt_timeout", [30.0, None])
@pytest.mark.parametrize("leak", [False, True])
async def test_a_call_waiting_for_a_pooled_connection_when_the_engine_closes(
    serve: ServerFactory, clock: VirtualClock, leak: bool, attempt_timeout: float | None
) -> None:
    """The connector cancels the waits for a pooled connection as the engine closes: the
    retry layer told that from the caller's own cancellation by a count of 0, and a caller
    with a TaskGroup's leftover count got a bare CancelledError."""
    host, arrived, never = await serve_hanging(serve, "/x")
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        retry=RetryPolicy(pauses=(5.0,), attempt_timeout=attempt_timeout),
        connection_limit=1,
    )
    await engine.start()

    async def worker() -> object:
        if leak:
            await _fan_out_with_a_failure()
        try:
            return await engine.request("GET", "svc", "/x")
        except BaseException as exc:
            return exc

    first = asyncio.ensure_future(worker())
    await arrived.wait()
    second = asyncio.ensure_future(worker())  # waits for the one pooled connection
    for _ in range(20):
        await asyncio.sleep(0)
    await engine.close()
    outcomes = [await first, await second]
    never.set()
    assert all(isinstance(o, EngineClosed) for o in outcomes), [repr(o) for o in outcomes]


async def test_a_call_failing_as_the_last_waiter_gives_up_is_not_told_the_engine_closed(
    clock: VirtualClock,
) -> None:
    """The last waiter of a recovery round stops it when it gives up; a call failing just
    then joined the dying round and was told 'the recovery loop was closed (its engine
    closed)', though nothing was (and the reset after wiped the episode it had joined)."""
    from tests.test_recovery import _hour_long_recovery, exhausted

    recovery = _hour_long_recovery(clock, [])
    go = asyncio.Event()
    runs = 0

    async def first() -> str:
        raise exhausted()

    async def second() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            await go.wait()
            raise exhausted()
        return "ok"

    a = asyncio.ensure_future(recovery.run(first))
    b = asyncio.ensure_future(recovery.run(second))
    await clock.sleep(10.0)  # a waits out the 120 s pause; b's call is in flight
    a.cancel()  # a, the last waiter, stops the round
    go.set()  # b's call fails just then
    with contextlib.suppress(asyncio.CancelledError):
        await a
    await clock.sleep(1000.0)
    assert not recovery.closed
    assert await b == "ok"


class _DownDomains(StaticDomains):
    """The Domain API is down: every round's re-resolution fails (recoverably)."""

    refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1
        raise DomainResolutionError("the Domain API is down", account="1")


async def test_a_round_started_while_the_last_waiter_stops_the_old_one_is_not_orphaned(
    clock: VirtualClock,
) -> None:
    """The waiter stopping its round still counted as waiting: a call that failed meanwhile,
    started a round and gave up too took itself for one of two waiters and left its round
    running for nobody, re-logging in every few minutes for ever."""
    from tests.test_recovery import exhausted

    domains = _DownDomains({"svc": "127.0.0.1:1"})
    recovery = Recovery(
        domains=domains, auth=None, clock=clock, policy=BackoffPolicy.relogin(jitter=0)
    )

    async def failing() -> str:
        raise exhausted()

    a = asyncio.ensure_future(recovery.run(failing))
    await clock.sleep(60)  # A waits out the round's first pause, alone
    a.cancel()  # A gives up: its round's last waiter stops it
    b = asyncio.ensure_future(recovery.run(failing))  # B fails meanwhile: a round of its own
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    b.cancel()  # B gives up too, while A still waits for its round to stop
    for task in (a, b):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    before = domains.refreshes
    await clock.sleep(3 * 3600)
    assert domains.refreshes == before
