"""allowed_hosts in wire form, a cancelled 401 replay reported, BodyTooLarge a give-up."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine
from le_transport.events import EventHooks, GiveUpEvent
from le_transport.middleware.auth import AuthMiddleware, same_host
from le_transport.providers import Credentials, StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_retry_middleware import Script

# -- allowed_hosts: hosts same_host matches are now refused at construction ----------------------


@pytest.mark.parametrize(
    "host",
    ["bücher.example", "BÜCHER.example:8443", "my_service.internal"],
    ids=["idn", "idn-upper-port", "underscore"],
)
def test_allowed_hosts_accepts_every_host_same_host_matches(host: str) -> None:
    """same_host documents "an IDN name decoded or in xn-- form" as matching, and before the
    host check allowed_hosts={"bücher.example"} worked. validate_host's ASCII-LDH regex alone
    would raise HostConfigurationError for it (and for an underscore name, common in internal DNS
    / docker service names), so a configuration that worked would fail the engine's construction."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    port = int(host.rsplit(":", 1)[1]) if host.count(":") == 1 else None
    url = URL.build(scheme="https", host=name, port=port, path="/x")
    assert same_host(host, url)  # the matcher itself takes it
    mw = AuthMiddleware(
        auth=StaticBearer("tok-abcdefgh-12345"), domains=StaticDomains({}), allowed_hosts=[host]
    )
    assert any(same_host(h, url) for h in mw.allowed_hosts)


# -- a 401 whose replay is never made for cancellation: reported zero times -------------------


class _SlowRelogin:
    """A token that, once refused, takes a long login to replace (the caller gives up first)."""

    def __init__(self) -> None:
        self.dropped = False
        self.relogging = asyncio.Event()

    async def credentials(self, method: str, url: URL) -> Credentials:
        if self.dropped:
            self.relogging.set()
            await asyncio.Event().wait()  # a login that hangs
        return Credentials(headers={"Authorization": "Bearer tok-abcdefgh-12345"}, generation=1)

    async def invalidate(self, rejected: Credentials) -> None:
        self.dropped = True

    async def close(self) -> None:
        """Nothing to close."""


async def test_a_401_whose_replay_is_cancelled_during_the_relogin_is_still_reported_once(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """AuthMiddleware._authorise reports the deferred 401 only on ``except Exception`` around
    invalidate/_apply: a CancelledError (a caller's timeout, a TaskGroup sibling failing)
    while fresh credentials are fetched skips it. The retry loop left the 401's report to the
    replay, the replay never comes: the sent, answered attempt vanishes from GiveUpEvents and
    logs (before 94459ec it was one give-up, status 401)."""
    script = Script(401, 200)
    host = await serve(script.app())
    giveups: list[GiveUpEvent] = []
    auth = _SlowRelogin()
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        hooks=EventHooks(on_giveup=(giveups.append,)),
        auth=auth,
    ) as engine:
        task = asyncio.create_task(engine.request("GET", "svc", "/x"))
        await auth.relogging.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert script.hits == 1
    assert [g.outcome.status if g.outcome else None for g in giveups] == [401]


# -- ProviderHttp's own bounded read: its BodyTooLarge is no give-up -----------------------------


def _streaming_login(size: int) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked, no Content-Length
        await resp.prepare(request)
        for start in range(0, size, 65536):
            await resp.write(b"x" * min(65536, size - start))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/account/1/login", answer)
    return app


@pytest.mark.parametrize("buffer_body", [True, False], ids=["buffered", "streaming"])
async def test_provider_http_body_too_large_is_one_give_up_in_either_mode(
    serve: ServerFactory, clock: VirtualClock, buffer_body: bool
) -> None:
    """Buffered, the retry middleware's BodyTooLarge is the call's give-up (an ERROR "failed
    after 1 attempt(s)" line and one GiveUpEvent). Unbuffered, _read_bounded raises the same
    error after the retry loop returned the answer as a success: it must fire the GiveUpEvent,
    or alerting on give-ups never sees a login endpoint streaming without end when the
    middleware is built with buffer_body=False."""
    from le_transport.errors import BodyTooLarge
    from le_transport.middleware.retry import RetryMiddleware
    from le_transport.providers._http import ProviderHttp

    host = await serve(_streaming_login(256 * 1024))
    giveups: list[GiveUpEvent] = []
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(
            session=lambda: session,
            retry_middleware=RetryMiddleware(
                clock=clock,
                hooks=EventHooks(on_giveup=(giveups.append,)),
                buffer_body=buffer_body,
                max_body_bytes=1024,
            ),
            clock=clock,
            scheme="http",
        )
        with pytest.raises(BodyTooLarge):
            await http.request(
                "POST", URL(f"http://{host}/api/account/1/login"), service="agentVep"
            )
    assert [g.service for g in giveups] == ["agentVep"]
