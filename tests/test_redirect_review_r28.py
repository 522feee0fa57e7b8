"""A call's secret headers and the origin its redirect hops are held to: an outer middleware
that sends the call's first request again to another gateway (a failover) is no redirect, and
the caller's own credentials go with it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from le_transport import Engine
from le_transport.errors import ClientStatusError
from le_transport.providers import StaticDomains
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
