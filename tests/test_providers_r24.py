"""Providers: a host's trailing dot before a port, a refused host's userinfo cut by a '/'."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from yarl import URL

from le_transport.chaos import Status
from le_transport.errors import ConfigurationError, HostileHostError
from le_transport.events import StateEvent
from le_transport.providers import (
    CsdsDomains,
    OAuth1Auth,
    OAuth1Signer,
    StaticDomains,
    UserLogin,
)
from le_transport.providers.csds import parse_base_uris
from le_transport.providers.domains import validate_host
from le_transport.sockets import AuthPlacement, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET, PASSWORD
from tests.test_providers import ACCOUNT, APP_KEY, USER, csds_for, make_sim, sim, sim_engine

__all__ = ["sim"]


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("va.example.net.:8443", "va.example.net:8443"),
        ("va.example.net.:443", "va.example.net:443"),
        ("va.example.net.", "va.example.net"),
    ],
)
def test_a_trailing_dot_is_dropped_before_a_port_too(host: str, canonical: str) -> None:
    """``name.`` was returned as ``name`` but ``name.:8443`` kept its dot: the same host was
    two hosts, one of them a name the TLS certificate does not carry."""
    assert validate_host(host) == canonical


def test_one_host_listed_with_and_without_its_trailing_dot_is_no_conflict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="le_transport.domains")
    entries = parse_base_uris(
        {
            "baseURIs": [
                {"service": "agentVep", "baseURI": "va.example.net:443"},
                {"service": "agentVep", "baseURI": "va.example.net.:443"},
            ]
        },
        account="123",
    )
    assert entries == {"agentVep": "va.example.net:443"}
    assert "listed more than once" not in caplog.text


@pytest.mark.parametrize(
    ("host", "hidden"),
    [
        ("bot:90210/x@evil.example", "90210"),
        ("bot:4711?x@evil.example", "4711"),
        ("bot:8080#frag@evil.example", "8080"),
        ("https://bot:31337/x@evil.example/p", "31337"),
    ],
)
def test_a_refused_host_never_shows_digits_of_a_password_cut_short_by_a_slash(
    host: str, hidden: str
) -> None:
    """A password holding a '/', '?' or '#' ends the authority where it stands: what came
    before it (``user:`` and the password's leading digits) looked like a host and its port,
    and was shown, though an '@' after it says it was userinfo."""
    with pytest.raises(HostileHostError) as info:
        validate_host(host, service="svc")
    assert hidden not in str(info.value)


@pytest.mark.parametrize("service", [["agentVep"], {"agentVep": 1}, {"agentVep"}])
async def test_resolving_a_service_that_is_no_str_is_a_configuration_error(
    service: object,
) -> None:
    """A list or a dict for a service name met ``dict.get``: an untyped ``TypeError``
    (unhashable type), after a Domain API fetch for a ``CsdsDomains``."""
    static = StaticDomains({"agentVep": "va.example.net"})
    with pytest.raises(ConfigurationError, match="service must be a str"):
        await static.resolve(service)  # type: ignore[arg-type]
    csds = CsdsDomains("123")
    # Not attached: refused before any fetch is tried (which would say "not attached").
    with pytest.raises(ConfigurationError, match="service must be a str"):
        await csds.resolve(service)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{}, {"v": "1"}], ids=["bare", "with-a-query"])
async def test_an_oauth1_signed_websocket_upgrade_is_signed_over_its_http_scheme(
    clock: VirtualClock, params: dict[str, str]
) -> None:
    """A WebSocket upgrade is an HTTP(S) GET: a gateway verifies its signature over the
    ``http``/``https`` URL it received. It was signed over ``ws://``/``wss://`` (the URL the
    socket dials): every upgrade was refused with 401, and a 443 given for ``wss`` was
    signed as a port of its own. With a query: the signature was made over the URL without
    it, then the URL with it dialed (refused with 401 too)."""
    got: list[str] = []

    async def upgrade(request: web.Request) -> web.StreamResponse:
        got.append(request.query.get("v", "upgraded"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    sim = make_sim(clock)
    sim.add_route("GET", "/api/account/{account}/r24ws", upgrade, auth=True)
    auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim, sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as e:
        ws = await e.websocket(
            "accountConfigReadOnly",
            f"/api/account/{ACCOUNT}/r24ws",
            params=params,
            auth_placement=AuthPlacement.HEADER,
            options=SocketOptions(keepalive=None),
        )
        await ws.wait_open(timeout=30)
        await ws.close()
    assert got == [params.get("v", "upgraded")]


@pytest.mark.parametrize(
    ("ws_url", "http_url"),
    [
        ("wss://va.example.net/p?a=1", "https://va.example.net/p?a=1"),
        ("wss://va.example.net:443/p", "https://va.example.net/p"),
        ("ws://va.example.net:80/p", "http://va.example.net/p"),
        ("ws://127.0.0.1:8080/p", "http://127.0.0.1:8080/p"),
    ],
)
def test_a_websocket_url_is_signed_as_the_http_request_of_its_upgrade(
    ws_url: str, http_url: str
) -> None:
    signer = OAuth1Signer("ck", "cs", "tk", "ts", wall_clock=lambda: 1.0, nonce=lambda: "n")
    assert signer.header("GET", URL(ws_url)) == signer.header("GET", URL(http_url))


async def test_a_left_out_service_kept_by_a_refresh_is_named_quoted_and_cut_short(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The WARNING naming the services a refresh left out (their cached hosts kept) wrote
    their names raw and whole, as an answer gave them: a name holding a line break wrote a
    log line of the answer's making, and a 10,000-character name went in whole. Each is
    quoted and cut short now, as in the module's other lines."""
    caplog.set_level(logging.WARNING, logger="le_transport.domains")
    csds = csds_for(sim)
    evil = "x\nCRITICAL forged line " + "y" * 10_000
    async with sim_engine(sim, clock, domains=csds):
        await csds.refresh()
        assert csds.warm({"baseURIs": [{"service": evil, "baseURI": "va.example.net"}]})
        caplog.clear()
        await csds.refresh()  # the Domain API's answer leaves it out: kept once, and logged
        assert evil in csds.hosts
    kept = [r.getMessage() for r in caplog.records if "cached hosts are kept" in r.getMessage()]
    assert len(kept) == 1
    assert "\n" not in kept[0]
    assert len(kept[0]) < 1_000


async def test_a_user_id_a_login_answer_gives_cannot_write_a_log_line_of_its_own(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``logged_in`` line wrote the answer's ``config.userId`` raw: a line break in it
    wrote a log line of the answer's making. A detail that is not printable is shown quoted
    (the event keeps it as it came)."""
    caplog.set_level(logging.INFO, logger="le_transport.auth")
    events: list[StateEvent] = []
    forged = "7\nCRITICAL le_transport: forged"
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)
    answer = {"bearer": "b3arer-tok", "csrf": "c", "config": {"userId": forged}}
    sim.faults.script(
        "POST", f"/api/account/{ACCOUNT}/login", [Status(200, body=json.dumps(answer))]
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events):
        await auth.login()
    logged = [r.getMessage() for r in caplog.records if "logged in" in r.getMessage()]
    assert len(logged) == 1
    assert "\n" not in logged[0]
    assert [e.details["user_id"] for e in events if e.name == "logged_in"] == [forged]


@pytest.mark.parametrize(
    ("host", "said"),
    [("", "got an empty str"), ("h" * 300, "got a str of 300 characters"), (None, "got NoneType")],
)
def test_a_host_refused_for_its_type_or_length_says_which(host: object, said: str) -> None:
    """An empty or over-long str was refused as "not a non-empty string of at most 260
    characters (got str)": it was a str."""
    with pytest.raises(HostileHostError, match=said):
        validate_host(host)
