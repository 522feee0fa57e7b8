"""Sockets, recovery and CSDS: one probe of a connection at a time, the outer pause under a
call's own ceiling, an invalidate that a refresh in flight does not undo.

- ``ResilientSocket``'s keepalive (the scheduler's path) started the next probe while the one
  it cancelled (or whose timeout cut it) was still tidying up: two probes of one connection at
  once, as ``watch_socket`` did before it waited for the last one.
- ``recover=True``: the outer pause counted the ``Retry-After`` of the answer that ended the
  call's schedule up to the engine's ``retry_after_ceiling``, not the call's own ``retry=``
  ceiling: a call that allows a longer ask was sent again too soon, one that allows a shorter
  one waited longer than it asked.
- ``CsdsDomains``: an ``invalidate()`` made while a background refresh had already read the
  fleet's shared map was undone by that refresh, which installed the map it read (the very
  entry the invalidate meant to drop) for one more TTL. The refresh now asks the Domain API
  itself when the map was invalidated meanwhile.

The real simulator (or a loopback server) on loopback, virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import web

from le_transport import BackoffPolicy, Engine, RetryPolicy
from le_transport.chaos import Status
from le_transport.errors import ConfigurationError
from le_transport.policies import Keepalive
from le_transport.providers import CsdsDomains, StaticDomains
from le_transport.recovery import Recovery
from le_transport.sockets import SocketOptions
from le_transport.state import Entry, MemoryStore, SharedDomainMap
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.test_providers import sim_engine
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]


# -- 1. ResilientSocket: a cancelled probe still tidying up ------------------------------------


class _TidyingSocket:
    """An open WebSocket whose keepalive writes go out (the peer answers) but never return
    until cut, and then take ``tidy`` seconds of clock time to tidy up, which no further
    cancellation cuts short. Counts the probes writing at once."""

    def __init__(self, ws: Any, clock: VirtualClock, action: str, tidy: float) -> None:
        self.wrapped = ws
        self._clock = clock
        self._action = action
        self._tidy = tidy
        self.in_flight = 0
        self.most = 0
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    async def send_str(self, data: str, compress: int | None = None) -> None:
        await self.wrapped.send_str(data, compress)
        if self._action not in data:
            return
        self.started += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.Event().wait()
        finally:
            end = self._clock.now() + self._tidy
            while self._clock.now() < end:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._clock.sleep(end - self._clock.now())
            self.in_flight -= 1


class _Wrapper:
    """A wire middleware that wraps each socket as a :class:`_TidyingSocket`."""

    active = True

    def __init__(self, clock: VirtualClock, action: str, tidy: float) -> None:
        self._clock = clock
        self._action = action
        self._tidy = tidy
        self.sockets: list[_TidyingSocket] = []

    async def __call__(self, request: Any, handler: Any) -> Any:
        return await handler(request)

    async def wrap_socket(self, ws: Any, path: str, *, service: str | None = None) -> Any:
        wrapped = _TidyingSocket(ws, self._clock, self._action, self._tidy)
        self.sockets.append(wrapped)
        return wrapped


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize(("timeout", "tidy"), [(10.0, 2.0), (5.0, 8.0)])
async def test_a_socket_starts_no_probe_while_the_last_one_tidies_up(
    sim: Simulator, clock: VirtualClock, states: StateLog, timeout: float, tidy: float
) -> None:
    """A probe cut by the next one (or by its own timeout) that takes a while to end: the next
    probe of that connection goes out once it has, one probe at a time, and the peer, which
    answers each, is never found dead."""
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=timeout)
    wrapper = _Wrapper(clock, policy.action, tidy)
    async with agent_engine(sim, clock, states, wire_middlewares=[wrapper]) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
        await ws.wait_open()
        await clock.sleep(300.0)
        (wire,) = wrapper.sockets
        assert wire.started > 10  # probes went out all along
        assert wire.most == 1, f"{wire.most} probes of one connection at once"
        assert "lost" not in states.names()
        await ws.close()


# -- 2. recover=True: the outer pause under the call's own Retry-After ceiling ------------------


@pytest.mark.parametrize(
    ("ceiling", "asked", "expected"),
    [
        (1000.0, 600.0, 600.0),  # the call allows a longer ask than the engine's 60 s
        (5.0, 50.0, 5.0),  # the call allows a shorter one
    ],
)
async def test_the_outer_pause_honours_the_calls_own_retry_after_ceiling(
    serve: ServerFactory, clock: VirtualClock, ceiling: float, asked: float, expected: float
) -> None:
    """A 503 whose Retry-After ended the call's schedule: the re-sent call comes after the
    ask as the call's own ``retry=`` policy caps it, not as the engine's does."""
    gets: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        gets.append(clock.now())
        if len(gets) == 1:
            return web.Response(status=503, headers={"Retry-After": f"{asked:g}"})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", handler)
    host = await serve(app)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        # The engine's schedule: one short pause, the default 60 s ceiling.
        retry=RetryPolicy(pauses=(1.0,)),
        recovery=BackoffPolicy(first=2, factor=2, cap=1000, jitter=0, floor=0),
    ) as engine:
        answer = await engine.request(
            "GET",
            "svc",
            "/x",
            retry=RetryPolicy(pauses=(), retry_after_ceiling=ceiling),
            recover=True,
        )
    assert answer.status == 200
    assert gets == [0.0, expected]


@pytest.mark.parametrize("ceiling", [-1.0, float("nan"), float("inf"), "60", True])
async def test_recovery_run_refuses_a_ceiling_that_is_no_number_of_seconds(
    clock: VirtualClock, ceiling: object
) -> None:
    recovery = Recovery(domains=StaticDomains({"svc": "127.0.0.1:1"}), auth=None, clock=clock)
    ran: list[int] = []

    async def call() -> None:
        ran.append(1)

    with pytest.raises(ConfigurationError, match="retry_after_ceiling"):
        await recovery.run(call, retry_after_ceiling=ceiling)  # type: ignore[arg-type]
    assert not ran


# -- 3. CsdsDomains: an invalidate during a refresh that has read the shared map ---------------


class _GatedStore(MemoryStore):
    """A MemoryStore whose reads, while ``hold`` is set, answer only once ``gate`` is opened
    (``reached`` tells a read has been made): a refresh caught between its read and its
    write-back."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hold = False
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        if self.hold:
            self.reached.set()
            await self.gate.wait()
        return entry


async def test_an_invalidate_during_a_refresh_that_read_the_shared_map_wins(
    sim: Simulator, clock: VirtualClock
) -> None:
    """B's map is the fleet's shared one, expired for B: a resolve starts B's refresh in the
    background, which reads the shared map; B is invalidated then (a host failed). The refresh
    must not install the map it read for a TTL more: it asks the Domain API itself, whose
    answer every caller waiting for it gets."""
    store = _GatedStore(clock)
    account = sim.account.id

    def domains() -> CsdsDomains:
        shared = SharedDomainMap(store, account=account, ttl=600, clock=clock)
        return CsdsDomains(account, csds_host=sim.host, scheme="http", ttl=60, shared=shared)

    a, b = domains(), domains()
    async with sim_engine(sim, clock, domains=a), sim_engine(sim, clock, domains=b):
        assert await a.resolve("agentVep") == sim.host  # A fetches the map, shares it
        assert await b.resolve("agentVep") == sim.host  # B adopts it
        assert b.fetches == 0
        moved = "moved.example.com"
        answer = {"baseURIs": [{"service": "agentVep", "account": account, "baseURI": moved}]}
        sim.faults.script(
            "GET",
            f"/api/account/{account}/service/baseURI.json",
            [Status(200, body=json.dumps(answer))],
        )
        await clock.sleep(61)  # B's map expired: the next resolve refreshes it
        store.hold = True
        assert await b.resolve("agentVep") == sim.host  # served stale; the refresh starts
        await store.reached.wait()  # the refresh has read the shared map
        await b.invalidate()
        joined = asyncio.get_running_loop().create_task(b.resolve("agentVep"))
        store.hold = False
        store.gate.set()
        assert await joined == moved
        assert b.fetches == 1, "B asked the Domain API itself"
        assert await b.resolve("agentVep") == moved
