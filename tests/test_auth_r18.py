"""Round 18: the auth middleware on a redirect hop and around a wrapped signer.

- A redirect hop asks the domain provider for the service's host again (credentials go only
  there): that lookup is bounded by the call's deadline, as the engine's own is (a Domain API
  fetch hanging on its 30 s attempt timeout made a 20 s call take 41 s).
- A provider wrapping ``OAuth1Auth`` that does not forward ``signs_each_request`` and
  ``credentials_for_form`` resends a spent nonce on a retry and leaves form bodies unsigned:
  said once, as a WARNING naming what is missing, never the header.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine
from le_transport.errors import DeadlineExceeded
from le_transport.providers import Credentials, StaticBearer
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET
from tests.test_oauth1_retries import RETRY, Gateway, oauth1

SIGNING = "has no"


class HangingDomains:
    """Names ``host`` for every service, until ``hang`` is set: then a lookup waits an hour
    (a Domain API fetch on a stale map, hanging)."""

    def __init__(self, host: str, clock: VirtualClock) -> None:
        self.host = host
        self.clock = clock
        self.hang = False
        self.lookups = 0

    async def resolve(self, service: str) -> str:
        self.lookups += 1
        if self.hang:
            await self.clock.sleep(3600)
        return self.host

    async def invalidate(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_redirect_hops_host_lookup_is_bounded_by_the_calls_deadline(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    domains: HangingDomains

    async def first(request: web.Request) -> web.Response:
        await clock.sleep(11)
        domains.hang = True  # the map went stale meanwhile, and the Domain API hangs
        return web.Response(status=307, headers={"Location": "/api/y"})

    async def second(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/x", first)
    app.router.add_get("/api/y", second)
    host = await serve(app)
    domains = HangingDomains(host, clock)
    async with Engine(
        domains, scheme="http", clock=clock, auth=StaticBearer("a-bearer-token")
    ) as engine:
        started = clock.now()
        with pytest.raises(DeadlineExceeded, match="resolving its host"):
            await engine.request("GET", "svc", "/api/x", deadline=20.0)
        assert clock.now() - started == pytest.approx(20.0)
    assert domains.hang


class Tracing:
    """The README's wrapper, around another provider: it forwards what the README's list
    names, not ``signs_each_request`` nor ``credentials_for_form``."""

    credential_headers = frozenset({"authorization"})

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def attach(self, http: Any) -> None:
        attach = getattr(self.inner, "attach", None)
        if attach is not None:
            attach(http)

    async def credentials(self, method: str, url: URL) -> Credentials:
        creds: Credentials = await self.inner.credentials(method, url)
        return creds

    async def invalidate(self, rejected: Credentials) -> None:
        await self.inner.invalidate(rejected)

    async def close(self) -> None:
        await self.inner.close()


def _signing_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "le_transport.auth"
        and r.levelno == logging.WARNING
        and SIGNING in r.getMessage()
    ]


async def test_a_wrapped_oauth1_signer_that_hides_how_it_signs_is_said_once(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "le_transport.auth")
    gateway = Gateway()
    host = await serve(gateway.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=Tracing(oauth1()), retry=RETRY
    ) as engine:
        for _ in range(3):
            assert (await engine.request("GET", "svc", "/api/users")).status == 200
    (record,) = _signing_warnings(caplog)
    message = record.getMessage()
    assert "Tracing" in message
    assert "signs_each_request" in message
    assert "credentials_for_form" in message
    for secret in (APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, *gateway.authorizations):
        assert secret not in message


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize("kind", ["oauth1", "bearer"])
async def test_a_provider_that_says_how_it_signs_is_not_warned_about(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING, "le_transport.auth")
    gateway = Gateway()
    app = gateway.app()
    app.router.add_get("/ok", _ok)
    host = await serve(app)
    auth = oauth1() if kind == "oauth1" else Tracing(StaticBearer("a-bearer-token"))
    path = "/api/users" if kind == "oauth1" else "/ok"
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=auth) as engine:
        assert (await engine.request("GET", "svc", path)).status == 200
    assert _signing_warnings(caplog) == []
