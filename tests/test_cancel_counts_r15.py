"""A caller task whose count of cancellation requests a Python 3.11/3.12 TaskGroup left at 1 (a
child failed earlier in it) got a bare CancelledError where the engine's close gives
EngineClosed: the single flight and the recovery round read that count as it was."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from le_transport import Engine, EngineClosed, RetryPolicy
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_socket_core_r15 import _fan_out_with_a_failure


@pytest.mark.parametrize("leak", [False, True])
async def test_a_call_in_flight_when_the_engine_closes_after_a_task_group_failure(
    serve: ServerFactory, clock: VirtualClock, leak: bool
) -> None:
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("GET", "/x", slow)
    host = await serve(app)
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
    from tests.conftest import serve_hanging
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
    from le_transport import BackoffPolicy, TransportError

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
