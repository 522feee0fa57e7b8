"""``Engine.request`` refuses the caller's own mistakes before it resolves the host.

The headers, the params and ``allow_redirects`` were checked after the host was resolved: a
call to a service a static map lacks, with a header no request may carry, was an
``UnknownServiceError``, and under a Domain API the map was fetched (a call to another
service, retried through an outage) before the header was refused. Those checks depend on
the call alone and now come first, as ``Engine.websocket`` makes them.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest, StaticBearer
from le_transport.errors import UnknownServiceError
from le_transport.providers import CsdsDomains, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

_SECRET = "s3cret-header-value"

_BAD: list[dict[str, Any]] = [
    {"headers": {"Upgrade": "h2c"}},
    {"headers": {"X-Trace": f"{_SECRET}\r\nX-Other: 1"}},
    {"headers": {"Authorization": _SECRET}},
    {"params": {"a": object()}},
    {"allow_redirects": "yes"},
]
_IDS = ["upgrade", "crlf", "credential", "param", "redirects"]


@pytest.mark.parametrize("options", _BAD, ids=_IDS)
async def test_a_bad_call_to_a_service_the_static_map_lacks_is_refused_for_itself(
    clock: VirtualClock, options: dict[str, Any]
) -> None:
    async with Engine(
        StaticDomains({"svc": "127.0.0.1:9"}), scheme="http", clock=clock, auth=StaticBearer("t")
    ) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.request("GET", "nosuch", "/p", **options)
    assert not isinstance(refused.value, UnknownServiceError)
    assert _SECRET not in str(refused.value)


@pytest.mark.parametrize("options", _BAD, ids=_IDS)
async def test_a_bad_call_is_refused_before_the_domain_api_is_asked(
    clock: VirtualClock, serve: ServerFactory, options: dict[str, Any]
) -> None:
    asked: list[str] = []

    async def base_uris(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/api/account/123/service/baseURI.json", base_uris)
    host = await serve(app)
    domains = CsdsDomains("123", csds_host=host, scheme="http")
    async with Engine(domains, scheme="http", clock=clock, auth=StaticBearer("t")) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.request("GET", "agentVep", "/p", **options)
    assert asked == []
    assert _SECRET not in str(refused.value)


async def test_a_sound_call_to_a_service_the_static_map_lacks_is_still_unknown(
    clock: VirtualClock,
) -> None:
    async with Engine(StaticDomains({"svc": "127.0.0.1:9"}), scheme="http", clock=clock) as engine:
        with pytest.raises(UnknownServiceError):
            await engine.request("GET", "nosuch", "/p", headers={"X-Tag": "a"}, params={"v": "1"})
