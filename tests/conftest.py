"""Shared fixtures: the virtual clock, a loopback server factory, and the leak check."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from hypothesis import settings

from le_transport.testing import VirtualClock
from tests import known_secrets

ServerFactory = Callable[[web.Application], Awaitable[str]]

# Property tests explore new inputs on every developer's run (hypothesis's default), which is
# how they find what nobody thought of; CI (.ci/run sets LE_HYPOTHESIS_PROFILE=ci) runs the
# same derandomized examples every time, so that a red CI means a change broke something, not
# that a seed came up. What a developer's run finds becomes a plain regression test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("LE_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def clock() -> VirtualClock:
    """A fresh virtual clock."""
    return VirtualClock()


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start aiohttp apps on free loopback ports; returns ``host:port``. Cleaned up after."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def serve_hanging(
    serve: ServerFactory, path: str, method: str = "GET"
) -> tuple[str, asyncio.Event, asyncio.Event]:
    """A loopback server whose ``method path`` answers only once ``release`` is set (a server
    that hangs); returns its ``host:port``, an event set when a request arrived, and
    ``release``."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route(method, path, hang)
    return await serve(app), arrived, release


async def serve_silent(serve: ServerFactory, path: str) -> tuple[str, asyncio.Event]:
    """A loopback server whose ``GET path`` answers only once the returned event is set (a
    server that hangs); returns its ``host:port`` and the event."""
    host, _, release = await serve_hanging(serve, path)
    return host, release


@pytest.fixture
def secret_values() -> set[str]:
    """Credentials learnt at run time (a bearer the simulator issued): add them here and the
    secret check fails the test if any log record shows them."""
    return set()


@pytest.fixture(autouse=True)
def no_secret_in_logs(secret_values: set[str]) -> Iterator[None]:
    """Fail a test if any log record (any logger, any level) shows a known test credential.

    A handler on the root logger at DEBUG sees every record for the duration of the test;
    see ``tests/known_secrets.py`` for the credentials and what is scanned.
    """
    secret_values.update(known_secrets.ALL, known_secrets.simulator_defaults())
    handler = known_secrets.SecretLeakHandler(secret_values)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    handler.rescan()
    assert not handler.leaks, "a credential reached a log record:\n" + "\n".join(handler.leaks)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test gets the leak check."""
    eager = EAGER_TASKS and hasattr(asyncio, "eager_task_factory")
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.fixturenames.append("no_leaked_tasks")  # type: ignore[attr-defined]
            if eager:
                # First, so that the test's own async fixtures run eagerly too.
                item.fixturenames.insert(0, "eager_tasks")  # type: ignore[attr-defined]


#: ``LE_EAGER_TASKS=1``: run every async test under asyncio's eager task factory (Python 3.12+),
#: as an application may, where create_task runs the coroutine's first steps before it returns.
EAGER_TASKS = os.environ.get("LE_EAGER_TASKS", "") not in ("", "0")


@pytest.fixture
async def eager_tasks() -> None:
    """Install asyncio's eager task factory on the test's loop (``LE_EAGER_TASKS=1``)."""
    factory = getattr(asyncio, "eager_task_factory", None)
    if factory is not None:
        asyncio.get_running_loop().set_task_factory(factory)


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves a task of its own running when it ends."""
    before = set(asyncio.all_tasks())
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    # No gc.collect() here: a pending task that is only garbage is a leak too, and collecting
    # first would hide it (and cost a walk of the whole heap on every test).
    leaked = [
        t
        for t in asyncio.all_tasks()
        if t not in before and t is not asyncio.current_task() and not t.done()
    ]
    for t in leaked:
        t.cancel()
    assert not leaked, f"leaked tasks: {leaked!r}"
