"""A call's secret headers and the origin its redirect hops are held to: an outer middleware
that sends the call's first request again to another gateway (a failover) is no redirect, and
the caller's own credentials go with it."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from le_transport import Engine
from le_transport.errors import ClientStatusError
from le_transport.providers import StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

CALLER_HEADERS = {"X-Api-Key": "caller-api-key-1", "X-Request-Id": "trace-4"}


async def _recorder(serve: ServerFactory, status: int = 200) -> tuple[str, list[dict[str, str]]]:
    """A loopback app answering ``status`` to anything, recording each request's headers."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await serve(app), seen


async def test_an_outer_failover_to_another_gateway_keeps_the_callers_secret_headers(
    clock: VirtualClock, serve: ServerFactory
) -> None:
    """The caller's outer middleware routes the service to a gateway and, when it answers
    404 (it does not serve the service), sends the same request to a backup one: the first
    request again, not a redirect aiohttp followed. It was taken for a hop to another origin:
    the backup gateway got the call without the caller's X-Api-Key."""
    primary, first_seen = await _recorder(serve, status=404)
    backup, backup_seen = await _recorder(serve)

    async def failover(request: Any, handler: Any) -> Any:
        if request.url.raw_host != "svc.test":
            return await handler(request)
        base = request.url
        for gateway in (primary, backup):
            host, port = gateway.split(":")
            request.url = base.with_host(host).with_port(int(port))
            try:
                return await handler(request)
            except ClientStatusError as exc:
                if exc.status != 404 or gateway == backup:
                    raise
        raise AssertionError("unreachable")

    async with Engine(
        StaticDomains({"svc": "svc.test:1"}),
        scheme="http",
        clock=clock,
        outer_middlewares=[failover],
    ) as engine:
        got = await engine.request_json("GET", "svc", "/x", headers=CALLER_HEADERS)
    assert got == {"ok": True}
    assert [h["x-api-key"] for h in first_seen] == ["caller-api-key-1"]
    assert len(backup_seen) == 1
    assert backup_seen[0].get("x-api-key") == "caller-api-key-1"
    assert backup_seen[0]["x-request-id"] == "trace-4"


async def test_a_redirect_after_an_outer_failover_is_held_to_the_backup_gateway(
    clock: VirtualClock, serve: ServerFactory
) -> None:
    """The failover moves the call's origin to the backup gateway; a redirect from there to
    yet another origin still gets none of the caller's secret headers."""
    primary, _ = await _recorder(serve, status=404)
    elsewhere, elsewhere_seen = await _recorder(serve)
    backup_seen: list[dict[str, str]] = []

    async def moved(request: web.Request) -> web.Response:
        backup_seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(status=302, headers={"Location": f"http://{elsewhere}/steal"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", moved)
    backup = await serve(app)

    async def failover(request: Any, handler: Any) -> Any:
        if request.url.raw_host != "svc.test":
            return await handler(request)
        base = request.url
        for gateway in (primary, backup):
            host, port = gateway.split(":")
            request.url = base.with_host(host).with_port(int(port))
            try:
                return await handler(request)
            except ClientStatusError as exc:
                if exc.status != 404 or gateway == backup:
                    raise
        raise AssertionError("unreachable")

    async with Engine(
        StaticDomains({"svc": "svc.test:1"}),
        scheme="http",
        clock=clock,
        outer_middlewares=[failover],
    ) as engine:
        await engine.request("GET", "svc", "/x", headers=CALLER_HEADERS)
    assert [h.get("x-api-key") for h in backup_seen] == ["caller-api-key-1"]
    assert len(elsewhere_seen) == 1
    assert "x-api-key" not in elsewhere_seen[0]
    assert elsewhere_seen[0]["x-request-id"] == "trace-4"


class _Loopback(AbstractResolver):
    """Every name is the loopback address (``svc.test`` and its forms served locally)."""

    def __init__(self, **_: object) -> None:
        pass

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("form", ["svc.test.", "SVC.Test"])
async def test_a_redirect_to_another_form_of_the_calls_host_keeps_its_secret_headers(
    clock: VirtualClock, serve: ServerFactory, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """A ``Location`` naming the call's own host with a trailing dot (or in another case) is
    the same host on the wire, as the auth middleware and a socket's upgrade guard compare
    it: the auth middleware put the bearer on that hop, and the caller's X-Api-Key goes too.
    The trailing dot was taken for another origin: both were taken off, the hop met a 401,
    and so did its replay (an AuthenticationError for a call to the service's own host)."""
    seen: list[dict[str, str]] = []
    port: list[int] = []

    async def first(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"http://{form}:{port[0]}/y"})

    async def moved(request: web.Request) -> web.Response:
        got = {k.lower(): v for k, v in request.headers.items()}
        seen.append(got)
        ok = "authorization" in got and "x-api-key" in got
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/x", first)
    app.router.add_get("/y", moved)
    host = await serve(app)
    port.append(int(host.rpartition(":")[2]))
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", _Loopback)
    async with Engine(
        StaticDomains({"svc": f"svc.test:{port[0]}"}),
        scheme="http",
        clock=clock,
        auth=StaticBearer("bearer-5f1d"),
    ) as engine:
        got = await engine.request_json("GET", "svc", "/x", headers=CALLER_HEADERS)
    assert got == {"ok": True}
    assert len(seen) == 1
    assert seen[0]["authorization"] == "Bearer bearer-5f1d"
    assert seen[0]["x-api-key"] == "caller-api-key-1"
