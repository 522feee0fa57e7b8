"""Custom routes on the simulator: endpoints of your own, served beside LiveEngage's, with the
simulator's fault plan, records and credentials check applied to them as to its own routes.

Before, a user who wrapped an endpoint of their own had no way to chaos-test it on the
simulator: it needed a server of its own and the client-side injector.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.chaos import FaultRule, Match, Reset, Schedule, Status
from le_transport.errors import ClientStatusError, ConfigurationError
from le_transport.providers import CsdsDomains, StaticBearer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_USER,
    SERVICES,
    SimRoute,
    Simulator,
)

WIDGETS = f"/api/account/{DEFAULT_ACCOUNT}/widgets"
TEMPLATE = "/api/account/{account}/widgets"


async def widgets(request: web.Request) -> web.Response:
    """A user's own LiveEngage-style endpoint."""
    return web.json_response(
        {"account": request.match_info["account"], "widgets": ["a", "b"]}, status=200
    )


async def widget(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": request.match_info["id"], **body}, status=201)


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    s = Simulator(clock=clock)
    s.add_route("GET", TEMPLATE, widgets, service="widgets")
    s.add_route("PUT", TEMPLATE + "/{id}", widget, service="widgets")
    async with s:
        yield s


def engine(sim: Simulator, clock: VirtualClock, **kwargs: object) -> Engine:
    return Engine(sim.domains, scheme="http", clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_a_custom_route_is_retried_through_a_503_burst_and_every_attempt_is_recorded(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(
        FaultRule(
            "burst",
            sequence=[503, 503],
            match=Match(method="GET", path="/api/*/widgets", service="widgets"),
        )
    )
    async with engine(sim, clock) as e:
        body = await e.request_json("GET", "widgets", WIDGETS, expect=dict)
    assert body == {"account": DEFAULT_ACCOUNT, "widgets": ["a", "b"]}
    # Two 503s from the simulator's plan, then the handler's answer: three requests received,
    # each recorded with its service and the fault it met.
    got = [(r.method, r.path, r.service, r.fault, r.rule_id) for r in sim.requests]
    assert got == [
        ("GET", WIDGETS, "widgets", "status", "burst"),
        ("GET", WIDGETS, "widgets", "status", "burst"),
        ("GET", WIDGETS, "widgets", None, None),
    ]
    assert sim.faults.injected_counts() == {"burst": 2}
    # The engine's pauses between them ran on the virtual clock (the guide's 5 s, then 10 s).
    assert [r.at for r in sim.requests] == [0.0, 5.0, 15.0]


async def test_a_4xx_on_a_custom_route_is_not_retried(sim: Simulator, clock: VirtualClock) -> None:
    sim.faults.script("PUT", "/api/*/widgets/*", [Status(409)], service="widgets")
    async with engine(sim, clock) as e:
        with pytest.raises(ClientStatusError) as refused:
            await e.request("PUT", "widgets", WIDGETS + "/7", json={"name": "w"})
        assert refused.value.status == 409
        # The next one reaches the handler.
        made = await e.request_json("PUT", "widgets", WIDGETS + "/7", json={"name": "w"})
    assert made == {"id": "7", "name": "w"}
    assert [r.fault for r in sim.requests] == ["status", None]


async def test_rules_match_a_custom_route_by_its_service_and_strike_with_any_request_kind(
    sim: Simulator, clock: VirtualClock
) -> None:
    # A rule for another service does not touch it; one for its service does (a reset here).
    sim.faults.add(FaultRule("other", Status(500), match=Match(service="agentVep")))
    sim.faults.add(
        FaultRule("cut", Reset(), match=Match(service="widgets"), schedule=Schedule(fail_next=1))
    )
    async with engine(sim, clock) as e:
        body = await e.request_json("GET", "widgets", WIDGETS, expect=dict)
    assert body["widgets"] == ["a", "b"]
    assert [r.fault for r in sim.requests] == ["reset", None]
    assert sim.faults.rule_counts()["other"].matched == 0


async def test_a_custom_service_is_in_the_domains_and_the_domain_api(
    sim: Simulator, clock: VirtualClock
) -> None:
    assert sim.services == (*SERVICES, "widgets")
    assert sim.domains["widgets"] == sim.host
    # Resolved through the simulator's Domain API, as a real client finds its hosts.
    csds = CsdsDomains(DEFAULT_ACCOUNT, csds_host=sim.host, scheme="http")
    async with Engine(csds, scheme="http", clock=clock) as e:
        body = await e.request_json("GET", "widgets", WIDGETS, expect=dict)
    assert body["account"] == DEFAULT_ACCOUNT
    assert await csds.resolve("widgets") == sim.host


async def test_a_route_with_auth_answers_401_without_calling_the_handler(
    clock: VirtualClock,
) -> None:
    calls: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"ok": True})

    sim = Simulator(
        clock=clock,
        routes=[SimRoute("GET", "/api/account/{account}/secret", secret, auth=True)],
    )
    path = f"/api/account/{DEFAULT_ACCOUNT}/secret"
    async with sim:
        bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
        async with engine(sim, clock) as e:
            with pytest.raises(ClientStatusError) as refused:
                await e.request("GET", "agentVep", path)
        assert refused.value.status == 401
        assert calls == []
        async with engine(sim, clock, auth=StaticBearer(bearer)) as e:
            assert await e.request_json("GET", "agentVep", path) == {"ok": True}
    assert calls == [path]
    assert sim.routes[0].auth
    # A service-less route: recorded without one.
    assert [r.service for r in sim.requests] == [None, None]


# -- what add_route refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "said"),
    [
        ("GET", "api/account/{account}/widgets", "must start with '/'"),
        ("GET", "http://example.com/x", "must start with '/'"),
        ("GET", "/x?y=1", "without a query"),
        ("GET", "/x/{unclosed", "not an aiohttp path template"),
        ("G ET", "/x", "one HTTP method"),
        ("*", "/x", "one HTTP method"),
        # Paths a built-in route of the same method could also match: it would answer first.
        ("POST", "/api/account/{account}/login", "collides with the built-in route POST"),
        ("GET", f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users/me", "users/{user}"),
        ("HEAD", "/api/account/{id}/chat/{chat}/info", "built-in route GET"),
        ("GET", "/ws_api/account/{a}/messaging/consumer", "asyncMessagingEnt.consumer"),
        ("GET", "/csdr/account/{a}/service/baseURI.json", "csds.all.csdr"),
    ],
)
def test_a_bad_route_is_refused_with_a_message_that_says_why(
    method: str, path: str, said: str
) -> None:
    sim = Simulator()
    with pytest.raises(ConfigurationError, match=said.replace("{", r"\{").replace("(", r"\(")):
        sim.add_route(method, path, widgets)
    assert sim.routes == ()


def test_a_handler_that_is_not_an_async_function_is_refused() -> None:
    def sync_handler(request: web.Request) -> web.Response:
        return web.Response()

    class Handler:
        async def __call__(self, request: web.Request) -> web.Response:
            return web.Response()

    sim = Simulator()
    for bad in (None, "widgets", sync_handler, Handler):
        with pytest.raises(
            ConfigurationError, match=r"SimRoute\.handler must be an async function"
        ):
            sim.add_route("GET", "/x", bad)  # type: ignore[arg-type]
    # An object with an async __call__ is an async callable.
    assert sim.add_route("GET", "/x", Handler()).path == "/x"


def test_a_duplicate_a_bad_service_and_auth_without_an_account_are_refused() -> None:
    sim = Simulator()
    sim.add_route("get", "/x/{id}", widgets)
    with pytest.raises(ConfigurationError, match=r"GET /x/\{id\}.*there is a route for it already"):
        sim.add_route("GET", "/x/{id}", widgets)
    # The same path for another method is another route (POST did not collide either).
    assert sim.add_route("POST", "/x/{id}", widgets).method == "POST"
    with pytest.raises(ConfigurationError, match=r"SimRoute\.service must be a non-empty str"):
        sim.add_route("GET", "/y", widgets, service="")
    with pytest.raises(ConfigurationError, match=r"has no '\{account\}' part"):
        sim.add_route("GET", "/y", widgets, auth=True)
    with pytest.raises(ConfigurationError, match=r"SimRoute\.auth must be bool"):
        sim.add_route("GET", "/y", widgets, auth="yes")  # type: ignore[arg-type]
    assert [(r.method, r.path) for r in sim.routes] == [("GET", "/x/{id}"), ("POST", "/x/{id}")]


async def test_a_route_added_while_running_is_refused_and_one_added_while_stopped_is_served(
    clock: VirtualClock,
) -> None:
    sim = Simulator(clock=clock)
    async with sim:
        with pytest.raises(ConfigurationError, match="the simulator is running"):
            sim.add_route("GET", "/late", widgets)
    assert sim.routes == ()
    sim.add_route("GET", "/late/{account}", widgets, service="late")
    async with sim, engine(sim, clock) as e:
        assert (await e.request_json("GET", "late", "/late/9"))["account"] == "9"


def test_routes_must_be_a_list_of_sim_routes() -> None:
    route = SimRoute("GET", "/x", widgets)
    for bad, said in ((route, "got SimRoute"), ("/x", "got str"), ([route, "/y"], "got str")):
        with pytest.raises(ConfigurationError, match=f"Simulator.routes must.*{said}"):
            Simulator(routes=bad)  # type: ignore[arg-type]
    # Two routes for one method and path, as routes=, are refused as add_route refuses them.
    with pytest.raises(ConfigurationError, match="there is a route for it already"):
        Simulator(routes=[route, SimRoute("GET", "/x", widgets)])
