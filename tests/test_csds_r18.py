"""CsdsDomains: an expired map is served at once while it is refreshed in the background.

Before, once the cached map's TTL was over every caller awaited the single-flight refresh, and
stale-if-error applied only after that refresh failed: a Domain API that hung held every call
and every socket reconnect (``url_for``) up to the refresh's 30 s attempt timeout, again every
``stale_retry``, and a call with ``deadline=5`` failed "while resolving its host" although a good
map was cached. Now the caller that finds the map expired starts the refresh in the background
(the single flight's own run, which ``close()`` stops) and is served the cached map.

Against a real aiohttp Domain API on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.clock import timeout_after
from le_transport.errors import EngineClosed
from le_transport.events import EventHooks, StateEvent
from le_transport.policies.retry import RetryPolicy
from le_transport.providers import CsdsDomains
from le_transport.state import MemoryStore, SharedDomainMap
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

ACCOUNT = "123"
CSDS = f"/api/account/{ACCOUNT}/service/baseURI.json"


@dataclass
class DomainApi:
    """A loopback Domain API whose map (``hosts``) the test changes, and which hangs (sends
    nothing, until ``release``) while ``hang`` is set. ``arrived`` counts the requests that
    reached it."""

    host: str = ""
    hosts: dict[str, str] = field(default_factory=dict)
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    async def answer(self, request: web.Request) -> web.Response:
        self.arrived += 1
        self.reached.set()
        if self.hang.is_set():
            await self.release.wait()
        return web.json_response(
            {"baseURIs": [{"service": s, "baseURI": h} for s, h in self.hosts.items()]}
        )


@pytest.fixture
async def api(no_leaked_tasks: None, serve: ServerFactory) -> AsyncIterator[DomainApi]:
    # After no_leaked_tasks and serve, so torn down before them: the hanging answers are
    # released, and the server stopped, before the leak check (which then sees the library's
    # tasks only).
    api = DomainApi()
    app = web.Application()
    app.router.add_get(CSDS, api.answer)
    app.router.add_get("/x", _ok)
    api.host = await serve(app)
    # The service the engine's calls go to is this very server.
    api.hosts = {"svc": api.host}
    yield api
    api.release.set()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _csds(api: DomainApi, **options: Any) -> CsdsDomains:
    return CsdsDomains(ACCOUNT, csds_host=api.host, scheme="http", ttl=60, **options)


async def test_no_call_waits_on_a_hanging_refresh_when_a_map_is_cached(
    api: DomainApi, clock: VirtualClock
) -> None:
    """The reviewer's scenario: each call (and a socket's url_for) is served the cached map at
    once, the Domain API is asked by one refresh at a time, and a call with deadline=5
    succeeds."""
    domains = _csds(api)
    async with Engine(domains, scheme="http", clock=clock) as engine:
        assert (await engine.request("GET", "svc", "/x")).status == 200  # map fetched, cached
        await clock.sleep(61)  # its TTL is over
        api.hang.set()
        waits = []
        for _ in range(6):
            start = clock.now()
            assert (await engine.request("GET", "svc", "/x")).status == 200
            url = await engine.url_for("svc", "/ws")
            assert url.host == "127.0.0.1"
            waits.append(clock.now() - start)
            await clock.sleep(10)
        assert max(waits) < 1.0, f"calls waited on the refresh: {waits}"
        # 60 s: a refresh each stale_retry (30 s) after the one before failed (its 30 s
        # attempt timeout), one at a time.
        assert 1 < api.arrived <= 3
        await clock.sleep(60)
        start = clock.now()
        resp = await engine.request("GET", "svc", "/x", deadline=5)
        assert resp.status == 200
        assert clock.now() - start < 1.0


async def test_the_background_refresh_is_used_once_it_lands(
    api: DomainApi, clock: VirtualClock
) -> None:
    """The caller that finds the map expired is served it at once; a service the stale map does
    not know waits for the refresh (a service added since); once it lands, its hosts are
    served."""
    domains = _csds(api)
    async with Engine(domains, scheme="http", clock=clock):
        old = api.host
        assert await domains.resolve("svc") == old
        await clock.sleep(61)
        api.hosts = {"svc": "moved.example", "added": "added.example"}
        start = clock.now()
        assert await domains.resolve("svc") == old, "an expired map made its caller wait"
        assert clock.now() - start == 0
        # Unknown to the stale map: waits for the refresh in flight (no second fetch).
        assert await domains.resolve("added") == "added.example"
        assert await domains.resolve("svc") == "moved.example"
        assert domains.fetches == 2
        assert api.arrived == 2
        # Fresh again for a whole TTL: nothing more is asked.
        await clock.sleep(59)
        assert await domains.resolve("svc") == "moved.example"
        assert api.arrived == 2


async def test_close_while_a_background_refresh_hangs_ends_it_and_leaks_no_task(
    api: DomainApi, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The background refresh is the provider's single flight: closing the engine stops it
    (cancelled, nothing left to retrieve, no failure logged), and no fetch starts after."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    unhandled: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        # No attempt timeout: the refresh hangs until it is stopped.
        domains = _csds(api, retry=RetryPolicy(attempt_timeout=None))
        engine = Engine(domains, scheme="http", clock=clock)
        async with engine:
            assert await domains.resolve("svc") == api.host
            await clock.sleep(61)
            api.hang.set()
            api.reached.clear()
            # (Bounded in real time: waiting for this refresh, it would wait for ever.)
            assert await asyncio.wait_for(domains.resolve("svc"), 5) == api.host
            await api.reached.wait()  # the refresh is at the Domain API, which hangs
            [flight] = [
                t for t in asyncio.all_tasks() if t.get_name() == f"le_transport.csds[{ACCOUNT}]"
            ]
            assert not flight.done()
            caplog.clear()
        assert flight.cancelled()
        assert not [r for r in caplog.records if "serving the last good map" in r.getMessage()]
        with pytest.raises(EngineClosed):
            await domains.resolve("svc")
        assert api.arrived == 2
        for _ in range(3):
            await asyncio.sleep(0)
        assert not unhandled
    finally:
        loop.set_exception_handler(None)


async def test_a_failed_background_refresh_keeps_the_stale_map_and_logs_it(
    api: DomainApi, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that fails (here: its attempt timeout, the Domain API hanging) keeps the map
    for stale_retry, logged as a WARNING and a domains_stale event, no ERROR; after
    stale_retry the next caller starts another in the background, and is served at once."""
    events: list[StateEvent] = []
    domains = _csds(api, stale_retry=30)
    hooks = EventHooks(on_state=(events.append,))
    async with Engine(domains, scheme="http", clock=clock, hooks=hooks):
        assert await domains.resolve("svc") == api.host
        await clock.sleep(61)
        api.hang.set()
        caplog.clear()
        start = clock.now()
        assert await domains.resolve("svc") == api.host
        assert clock.now() - start == 0
        assert await domains.wait_refresh() == {"svc": api.host}  # failed: the map is kept
        assert "serving the last good map" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [e.name for e in events] == ["domains_stale"]
        assert api.arrived == 2
        # Within stale_retry (from the failure, now): served, nothing asked.
        await clock.sleep(29)
        start = clock.now()
        assert await domains.resolve("svc") == api.host
        assert clock.now() - start == 0
        assert api.arrived == 2
        # After it: served at once again, another refresh in the background.
        await clock.sleep(2)
        start = clock.now()
        assert await domains.resolve("svc") == api.host
        assert clock.now() - start == 0
        await domains.wait_refresh()
        assert api.arrived == 3
        assert [e.name for e in events] == ["domains_stale", "domains_stale"]


async def test_a_fleet_member_serves_its_expired_map_and_adopts_a_peers_refresh(
    api: DomainApi, clock: VirtualClock
) -> None:
    """With a SharedDomainMap the expired map is handled the same way: served at once while the
    background refresh reads the store (then asks the Domain API); a peer's refresh, written
    to the store, is adopted by the next background refresh without asking the Domain API."""
    store = MemoryStore(clock)
    a = _csds(api, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    b = _csds(api, shared=SharedDomainMap(store, account=ACCOUNT, ttl=60, clock=clock))
    old = api.host
    async with (
        Engine(a, scheme="http", clock=clock),
        Engine(b, scheme="http", clock=clock),
    ):
        assert await a.resolve("svc") == old  # fetched, written for the fleet
        assert await b.resolve("svc") == old  # adopted
        assert (a.fetches, b.fetches) == (1, 0)
        await clock.sleep(61)  # the shared entry and both maps expired
        api.hang.set()
        for p in (a, b):
            start = clock.now()
            assert await p.resolve("svc") == old
            assert clock.now() - start == 0, "an expired shared map made its caller wait"
        for p in (a, b):
            await p.wait_refresh()  # each timed out at the hanging Domain API
        # The Domain API is back with another host: a refreshes (and writes it)...
        api.hang.clear()
        api.hosts = {"svc": "moved.example"}
        await clock.sleep(31)
        assert await a.resolve("svc") == old
        await a.wait_refresh()
        assert await a.resolve("svc") == "moved.example"
        # ... and b, served its stale map at once, adopts a's write from the store.
        fetched = b.fetches
        start = clock.now()
        assert await b.resolve("svc") == old
        assert clock.now() - start == 0
        await b.wait_refresh()
        assert await b.resolve("svc") == "moved.example"
        assert b.fetches == fetched, "b asked the Domain API instead of adopting a's write"


def _hanging_once(
    hosts: dict[str, str], hang_next: asyncio.Event, release: asyncio.Event
) -> web.Application:
    """The Domain API answering ``hosts``; the one request that finds ``hang_next`` set waits
    for ``release`` (one connection black-holed), the others answer."""

    async def answer(request: web.Request) -> web.Response:
        if hang_next.is_set():
            hang_next.clear()
            await release.wait()
        return web.json_response(
            {"baseURIs": [{"service": s, "baseURI": h} for s, h in hosts.items()]}
        )

    app = web.Application()
    app.router.add_get(CSDS, answer)
    return app


async def test_a_background_refresh_that_never_ends_is_given_up_and_tried_again(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # No attempt timeout (calls bounded by their own deadline=), one Domain API connection
    # black-holed: the refresh hung for ever, the map served stale for ever with nothing
    # said, though the Domain API answered again.
    hosts = {"svc": "old.example"}
    hang_next = asyncio.Event()
    release = asyncio.Event()
    app = _hanging_once(hosts, hang_next, release)
    csds_host = await serve(app)
    domains = CsdsDomains(ACCOUNT, csds_host=csds_host, scheme="http", ttl=60, stale_retry=30)
    try:
        async with Engine(
            domains, scheme="http", clock=clock, retry=RetryPolicy(attempt_timeout=None)
        ):
            assert await domains.resolve("svc") == "old.example"
            await clock.sleep(61)
            hang_next.set()
            hosts["svc"] = "new.example"
            assert await domains.resolve("svc") == "old.example"  # served; the refresh hangs
            await clock.sleep(31)  # past its bound (stale_retry): given up, said
            assert "serving the last good map" in caplog.text
            assert await domains.resolve("svc") == "old.example"  # tried again after 30 s
            await clock.sleep(31)
            await domains.resolve("svc")
            assert (await domains.wait_refresh())["svc"] == "new.example"
            assert await domains.resolve("svc") == "new.example"
    finally:
        release.set()


def _slow_answers(hosts: dict[str, str], clock: VirtualClock) -> tuple[web.Application, Any]:
    """An app answering the Domain API with ``hosts``, each answer taking ``slow["s"]`` s."""
    slow = {"s": 0.0}

    async def answer(request: web.Request) -> web.Response:
        if slow["s"]:
            await clock.sleep(slow["s"])
        return web.json_response(
            {"baseURIs": [{"service": s, "baseURI": h} for s, h in hosts.items()]}
        )

    app = web.Application()
    app.router.add_get(CSDS, answer)
    return app, slow


@pytest.mark.parametrize("how", ["refresh()", "in the background"])
async def test_a_slow_domain_api_is_still_refreshed_under_a_deadline_only_policy(
    serve: ServerFactory, clock: VirtualClock, how: str
) -> None:
    # No attempt timeout, 60 s for a whole call: an answer slower than stale_retry (8 s
    # against 5) was cut at stale_retry every time, and the map never refreshed.
    hosts = {"svc": "old.example"}
    app, slow = _slow_answers(hosts, clock)
    domains = CsdsDomains(
        ACCOUNT,
        csds_host=await serve(app),
        scheme="http",
        ttl=60,
        stale_retry=5,
        retry=RetryPolicy(attempt_timeout=None, deadline=60),
    )
    async with Engine(domains, scheme="http", clock=clock):
        assert await domains.resolve("svc") == "old.example"
        hosts["svc"] = "new.example"
        slow["s"] = 8.0
        if how == "refresh()":
            assert (await domains.refresh())["svc"] == "new.example"
        else:
            await clock.sleep(61)
            assert await domains.resolve("svc") == "old.example"  # served; refresh started
            assert (await domains.wait_refresh())["svc"] == "new.example"


async def test_a_hung_refresh_a_caller_started_does_not_keep_the_map_stuck(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # refresh() (or invalidate() then resolve, as a socket's escalation does) on a policy with
    # neither bound: the caller's own timeout stopped only its wait, the shared fetch hung on,
    # and every later resolve joined it, for ever.
    hosts = {"svc": "old.example"}
    hang_next = asyncio.Event()
    release = asyncio.Event()
    app = _hanging_once(hosts, hang_next, release)
    domains = CsdsDomains(
        ACCOUNT, csds_host=await serve(app), scheme="http", ttl=60, stale_retry=30
    )
    try:
        async with Engine(
            domains, scheme="http", clock=clock, retry=RetryPolicy(attempt_timeout=None)
        ):
            assert await domains.resolve("svc") == "old.example"
            hang_next.set()
            hosts["svc"] = "new.example"
            with pytest.raises(TimeoutError):
                async with timeout_after(clock, 10):
                    await domains.refresh()
            await clock.sleep(3600)
            async with timeout_after(clock, 60):
                assert await domains.resolve("svc") in ("old.example", "new.example")
    finally:
        release.set()
