"""What ``Engine.request`` checks before it resolves the host, for every params value yarl
refuses: a float that is NaN or infinite, and an int too long to be written as text, passed
the params' fast test (a dict of ASCII names to numbers) and were refused only once the host
was resolved (a service a static map lacks was an ``UnknownServiceError``; under a Domain API
the map was fetched first)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest
from le_transport.errors import UnknownServiceError
from le_transport.providers import CsdsDomains, StaticDomains
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

_BAD: list[Any] = [float("nan"), float("inf"), -float("inf"), 10**5000]
_IDS = ["nan", "inf", "-inf", "long-int"]


@pytest.mark.parametrize("value", _BAD, ids=_IDS)
async def test_a_numeric_param_yarl_refuses_is_refused_before_the_static_map_is_read(
    clock: VirtualClock, value: Any
) -> None:
    async with Engine(StaticDomains({"svc": "127.0.0.1:9"}), scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.request("GET", "nosuch", "/p", params={"a": value})
    assert not isinstance(refused.value, UnknownServiceError)
    assert "params['a']" in str(refused.value)


@pytest.mark.parametrize("value", _BAD, ids=_IDS)
async def test_a_numeric_param_yarl_refuses_is_refused_before_the_domain_api_is_asked(
    clock: VirtualClock, serve: ServerFactory, value: Any
) -> None:
    asked: list[str] = []

    async def base_uris(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/api/account/123/service/baseURI.json", base_uris)
    host = await serve(app)
    domains = CsdsDomains("123", csds_host=host, scheme="http")
    async with Engine(domains, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.request("GET", "agentVep", "/p", params={"a": value})
    assert asked == []
    assert "params['a']" in str(refused.value)
