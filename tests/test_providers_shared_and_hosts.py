"""Providers' review fixes: a fleet's shared session through refreshes of a newer session,
refused and redirected refreshes; hosts in the form the credential check compares (IPv6
literals, internationalised names); ``expires_in`` of 0 or less; duplicate Domain API entries.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.chaos import Status
from le_transport.errors import HostConfigurationError, HostileHostError, TransportError
from le_transport.events import StateEvent
from le_transport.middleware.auth import same_host
from le_transport.providers import StaticBearer, StaticDomains, UserLogin, validate_host
from le_transport.providers._http import answer_number, split_host
from le_transport.providers._token import MIN_TOKEN_REFRESH
from le_transport.providers.csds import parse_base_uris
from le_transport.providers.login import _ttl_seconds
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_oauth2 import TOKEN, sentinel
from tests.test_providers import (
    ACCOUNT,
    USER,
    csds_for,
    learn_session_secrets,
    make_sim,
    sim_engine,
)

LOGIN = f"/api/account/{ACCOUNT}/login"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
SERVICE = "accountConfigReadOnly"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with make_sim(clock) as s:
        yield s


# -- a fleet's shared session ------------------------------------------------------------------


def _member(
    sim: Simulator, clock: VirtualClock, store: MemoryStore, events: list[StateEvent]
) -> tuple[Engine, UserLogin]:
    domains = csds_for(sim)
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=domains,
        logout_on_close=False,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
    )
    return sim_engine(sim, clock, domains=domains, auth=auth, events=events), auth


def _bearer(auth: UserLogin) -> str:
    assert auth.session is not None
    return auth.session.bearer.reveal()


async def _fleet_relogged_by_b(
    sim: Simulator,
    clock: VirtualClock,
    stack: AsyncExitStack,
    secret_values: set[str],
    a_events: list[StateEvent],
) -> tuple[Engine, UserLogin, Engine, UserLogin]:
    """A logs in at 0 s, B adopts that session at 1 s; the server ends it, and at 10 s B's call
    meets the 401 and logs in for the fleet. A still holds the first session (it made no call
    since), and its keepalive is due at 300 s."""
    store = MemoryStore(clock)
    a_engine, a = _member(sim, clock, store, a_events)
    b_engine, b = _member(sim, clock, store, [])
    await stack.enter_async_context(a_engine)
    await stack.enter_async_context(b_engine)
    assert (await a_engine.request("GET", SERVICE, USERS)).status == 200
    learn_session_secrets(a, secret_values)
    await clock.sleep(1.0)
    assert (await b_engine.request("GET", SERVICE, USERS)).status == 200
    sim.tokens.revoke(_bearer(a))
    await clock.sleep(9.0)
    assert (await b_engine.request("GET", SERVICE, USERS)).status == 200
    learn_session_secrets(b, secret_values)
    assert sim.tokens.logins == 2
    assert _bearer(a) != _bearer(b)
    return a_engine, a, b_engine, b


async def test_a_process_that_refreshes_the_fleets_newer_session_uses_it(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    # A's keepalive refreshed the fleet's newer session (B's login) but kept sending its own
    # dead bearer: a 401 on its next call, and a login replacing the session just refreshed.
    events: list[StateEvent] = []
    async with AsyncExitStack() as stack:
        a_engine, a, _, b = await _fleet_relogged_by_b(sim, clock, stack, secret_values, events)
        await clock.sleep(291.0)  # 301 s: A's keepalive ran at 300 s
        assert sim.tokens.refreshes == 1
        assert _bearer(a) == _bearer(b), "A uses the session it refreshed"
        calls = sim.count("GET", USERS)
        assert (await a_engine.request("GET", SERVICE, USERS)).status == 200
        assert sim.count("GET", USERS) == calls + 1, "no 401, no replay"
        assert sim.tokens.logins == 2, "the fleet logged in once after the first session ended"
    refreshed = [e for e in events if e.name == "refreshed"]
    assert len(refreshed) == 1
    assert a.session is None or refreshed[0].details["generation"] >= 2


async def test_a_refused_refresh_of_the_fleets_newer_session_is_forgotten_and_logged_in_anew(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    # The refused session was simply adopted again (no login, though the event said "login"),
    # and left in the store for every other process to adopt.
    events: list[StateEvent] = []
    async with AsyncExitStack() as stack:
        a_engine, a, b_engine, b = await _fleet_relogged_by_b(
            sim, clock, stack, secret_values, events
        )
        refused = _bearer(b)
        shared = a._shared
        assert shared is not None
        await clock.sleep(289.0)
        sim.tokens.revoke(refused)  # the Login Service ends the fleet's session: refresh → 401
        await clock.sleep(2.0)  # 301 s: A's keepalive ran at 300 s
        learn_session_secrets(a, secret_values)
        assert sim.tokens.refreshes == 0
        assert sim.tokens.logins == 3, "one login for the fleet, at once"
        assert _bearer(a) != refused
        stored = await shared.current()
        assert stored is not None
        assert json.loads(stored.value)["bearer"] == _bearer(a)
        assert (await a_engine.request("GET", SERVICE, USERS)).status == 200
        assert (await b_engine.request("GET", SERVICE, USERS)).status == 200
        assert _bearer(b) == _bearer(a)
        assert sim.tokens.logins == 3
    names = [e.name for e in events]
    failed = names.index("refresh_failed")
    assert "logged_in" in names[failed:]


@pytest.mark.parametrize("login_fault", ["redirect", "503"])
async def test_a_shared_redirected_refresh_and_a_failed_login_keep_the_session(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], login_fault: str
) -> None:
    # Without a shared session a 3xx refresh whose login fails keeps the session (the module
    # says so); with one, it was dropped, and every call failed while the login did.
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=csds_for(sim),
        keepalive=False,
        logout_on_close=False,
        retry=RetryPolicy(pauses=()),
        shared=SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock),
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        await clock.sleep(auth.refresh_interval_for(kept))  # old enough to be refreshed
        redirect = Status(302, headers={"Location": "/maintenance"})
        sim.faults.script("POST", REFRESH, [redirect])
        sim.faults.script("POST", LOGIN, [redirect if login_fault == "redirect" else 503] * 20)
        with pytest.raises(TransportError):
            await auth.refresh()
        assert auth.session is kept
        sim.faults.clear()
        assert (await engine.request("GET", SERVICE, USERS)).status == 200
        assert sim.tokens.logins == 1


# -- expires_in of 0 or less -------------------------------------------------------------------


@pytest.mark.parametrize(
    # -inf and a negative past float's range are no finite number: they too meant no expiry.
    "expires_in",
    [0, -30, "0", "-5", -0.0, -math.inf, "-1e999", -(10**400)],
    ids=lambda v: str(v)[:12],
)
async def test_an_expires_in_of_zero_or_less_is_used_for_the_floor_not_for_ever(
    sim: Simulator, clock: VirtualClock, expires_in: object
) -> None:
    # It was read as no expiry: the token was never fetched anew (0.5 s was refetched at 5 s).
    answer = Status(
        200, body=json.dumps({"access_token": "opaque-token", "expires_in": expires_in})
    )
    sim.faults.script("POST", TOKEN, [answer, answer])
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth):
        await auth.credentials("GET", URL("http://127.0.0.1/"))
        token = auth.token
        assert token is not None
        assert token.expires_at == pytest.approx(clock.now())
        assert token.refresh_at == pytest.approx(clock.now() + MIN_TOKEN_REFRESH)
        await clock.sleep(MIN_TOKEN_REFRESH)
        await auth.credentials("GET", URL("http://127.0.0.1/"))
        assert sim.count("POST", TOKEN) == 2


def test_a_session_ttl_of_zero_or_less_is_still_no_ttl() -> None:
    # answer_number's other reader is unchanged: a sessionTTl <= 0 says nothing.
    for value in (0, -1, "0", "-5", -0.0):
        assert answer_number(value) is None
        assert _ttl_seconds(value) is None
    assert _ttl_seconds("28800000") == 28_800.0


# -- hosts as the credential check compares them -----------------------------------------------

# (given, returned): an IPv6 literal as a URL built with it names its host (yarl's URL.host).
CANONICAL = [
    ("[0:0:0:0:0:0:0:1]", "[::1]"),
    ("[0:0:0:0:0:0:0:1]:8443", "[::1]:8443"),
    ("[::0001]:80", "[::1]:80"),
    # As Python writes an IPv4-mapped address: ::ffff:7f00:1 up to 3.12, ::ffff:127.0.0.1 from
    # 3.13 (yarl's URL.host is ipaddress's form either way).
    ("[::FFFF:127.0.0.1]", f"[{ipaddress.ip_address('::ffff:127.0.0.1').compressed}]"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
    ("va.agentvep.liveperson.net", "va.agentvep.liveperson.net"),
    ("va.agentvep.liveperson.net.", "va.agentvep.liveperson.net"),
    ("Example.COM:8080", "Example.COM:8080"),
    ("127.0.0.1:80", "127.0.0.1:80"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
]


@pytest.mark.parametrize(("given", "canonical"), CANONICAL)
def test_an_ipv6_literal_is_returned_as_the_url_built_with_it_names_it(
    given: str, canonical: str
) -> None:
    assert validate_host(given) == canonical
    assert validate_host(canonical) == canonical, "its own answer is accepted again"
    assert StaticDomains({"svc": given}).hosts == {"svc": canonical}
    if canonical.startswith("["):
        # As the engine builds the URL from the resolved host, and the credential check compares.
        name, port = split_host(canonical)
        assert same_host(canonical, URL.build(scheme="https", host=name, port=port, path="/x"))


@pytest.mark.parametrize("host", ["xn--zz.example", "va.xn--a-ecp.ru", "bücher.example"])
def test_a_name_whose_xn_label_does_not_decode_is_refused(host: str) -> None:
    # It used to pass, and the credential check's URL.host raised an untyped UnicodeError on
    # every call (a URL built with it cannot name its host).
    with pytest.raises(HostileHostError):
        validate_host(host, service="svc")
    with pytest.raises(HostConfigurationError):
        StaticDomains({"svc": host})


def test_csds_answers_are_canonicalised_too() -> None:
    entries = parse_base_uris(
        {"baseURIs": [{"service": "svc", "baseURI": "[0:0:0:0:0:0:0:1]:8443"}]}, account="1"
    )
    assert entries == {"svc": "[::1]:8443"}


class _Resolver(AbstractResolver):
    """Every name is the loopback address (an internationalised name served locally)."""

    asked: ClassVar[list[str]] = []

    def __init__(self, **_: object) -> None:
        pass

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


def _api(seen: list[str | None]) -> web.Application:
    async def api(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({}, status=200 if request.headers.get("Authorization") else 401)

    app = web.Application()
    app.router.add_get("/x", api)
    return app


async def _request(host: str, clock: VirtualClock, secret: str) -> int:
    engine = Engine(
        StaticDomains({"svc": host}), scheme="http", clock=clock, auth=StaticBearer(secret)
    )
    async with engine:
        return (await engine.request("GET", "svc", "/x")).status


async def test_credentials_go_to_an_internationalised_host(
    clock: VirtualClock, secret_values: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The credential check compared yarl's decoded URL.host (bücher.example) with the
    # provider's xn-- name: the call went out without Authorization and met a 401.
    secret = "idn-bearer-7c1e"
    secret_values.add(secret)
    seen: list[str | None] = []
    runner = web.AppRunner(_api(seen), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        # The engine's own session, its name resolved to the loopback server.
        monkeypatch.setattr(aiohttp.connector, "DefaultResolver", _Resolver)
        _Resolver.asked.clear()
        status = await _request(f"xn--bcher-kva.example:{port}", clock, secret)
    finally:
        await runner.cleanup()
    assert status == 200
    assert seen == [f"Bearer {secret}"]
    assert _Resolver.asked == ["xn--bcher-kva.example"]


async def test_credentials_go_to_a_non_canonical_ipv6_literal(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    secret = "ipv6-bearer-52d9"
    secret_values.add(secret)
    seen: list[str | None] = []
    runner = web.AppRunner(_api(seen), access_log=None)
    await runner.setup()
    try:
        try:
            site = web.TCPSite(runner, "::1", 0)
            await site.start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = runner.addresses[0][1]
        statuses = [
            await _request(f"[{literal}]:{port}", clock, secret)
            for literal in ("0:0:0:0:0:0:0:1", "::0001", "::1")
        ]
    finally:
        await runner.cleanup()
    assert statuses == [200, 200, 200]
    assert seen == [f"Bearer {secret}"] * 3


# -- duplicate Domain API entries --------------------------------------------------------------

GOOD = {"service": "agentVep", "baseURI": "va.agentvep.liveperson.net"}
HOSTILE = {"service": "agentVep", "baseURI": "evil.example/path"}
OTHER = {"service": "agentVep", "baseURI": "other.example.net"}


@pytest.mark.parametrize(
    ("uris", "conflict"),
    [
        ([GOOD, HOSTILE], True),
        ([HOSTILE, GOOD], True),
        ([GOOD, OTHER], True),
        ([GOOD, {"service": "agentVep", "baseURI": "VA.agentvep.liveperson.net."}], False),
        ([GOOD, GOOD], False),
    ],
)
def test_a_duplicate_service_keeps_its_first_valid_host(
    caplog: pytest.LogCaptureFixture, uris: list[dict[str, str]], conflict: bool
) -> None:
    # The last entry won, silently: [good, hostile] disabled the service, [hostile, good]
    # resolved though the WARNING said resolving it raises, and of two hosts the last was used.
    caplog.set_level(logging.WARNING, logger="le_transport.domains")
    entries = parse_base_uris({"baseURIs": uris}, account="123")
    assert entries == {"agentVep": "va.agentvep.liveperson.net"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not any("HostileHostError" in w for w in warnings), "the service resolves"
    if conflict:
        assert len(warnings) == 1
        assert "'agentVep'" in warnings[0]
        assert "more than once" in warnings[0]
        assert "evil" not in warnings[0]
    else:
        assert warnings == []


def test_duplicate_refused_entries_still_refuse_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport.domains")
    other_hostile = {"service": "agentVep", "baseURI": "x@y"}
    entries = parse_base_uris({"baseURIs": [HOSTILE, other_hostile, GOOD | {"service": "b"}]},
                              account="123")  # fmt: skip
    assert isinstance(entries["agentVep"], HostileHostError)
    assert "evil.example" in str(entries["agentVep"]), "the first refusal is kept"
    assert entries["b"] == "va.agentvep.liveperson.net"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 service(s) with a refused host" in warnings[0]


# -- review of the fixes above ---------------------------------------------------------------


class _LoginService:
    """A Login Service and one API route on loopback, whose refresh can be slowed and refused
    per session while the session still serves calls (the simulator ties the two)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.logins: list[float] = []
        self.calls: list[tuple[float, str | None, int]] = []
        self.valid: set[str] = set()
        self.refused: set[str] = set()
        self.refresh_delay = 0.0
        self._runner: web.AppRunner | None = None

    async def _login(self, request: web.Request) -> web.Response:
        self.logins.append(self.clock.now())
        n = len(self.logins)
        self.valid.add(f"SESS{n}")
        answer = web.json_response(
            {"bearer": f"BEARER{n}", "csrf": f"CSRF{n}", "sessionTTl": "28800000"}
        )
        answer.set_cookie("Session_id", f"SESS{n}")
        return answer

    async def _refresh(self, request: web.Request) -> web.Response:
        session = request.cookies.get("Session_id")
        await self.clock.sleep(self.refresh_delay)
        ok = session in self.valid and session not in self.refused
        return web.json_response({}, status=200 if ok else 401)

    async def _api(self, request: web.Request) -> web.Response:
        bearer = (request.headers.get("Authorization") or " ").split()[-1]
        ok = bearer.replace("BEARER", "SESS") in self.valid
        self.calls.append((self.clock.now(), bearer, 200 if ok else 401))
        return web.json_response({}, status=200 if ok else 401)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post(f"/api/account/{ACCOUNT}/login", self._login)
        app.router.add_post(f"/api/account/{ACCOUNT}/refresh", self._refresh)
        app.router.add_post(f"/api/account/{ACCOUNT}/logout", self._api)
        app.router.add_get("/x", self._api)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_session_adopted_while_its_refresh_is_refused_goes_too(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    # A's keepalive refreshed the fleet's newer session 2; while that was on the wire, A's call
    # met a 401 on its own dead bearer and adopted session 2 from the store. The refusal then
    # took session 2 out of the store, but A kept sending it (the held one had changed).
    secret_values.update({f"BEARER{n}" for n in range(1, 5)} | {f"CSRF{n}" for n in range(1, 5)})
    store = MemoryStore(clock)
    ls = _LoginService(clock)
    async with ls as host:
        domains = StaticDomains({"agentVep": host, "svc": host})

        def member() -> tuple[Engine, UserLogin]:
            auth = UserLogin(
                ACCOUNT,
                USER,
                PASSWORD,
                domains=domains,
                logout_on_close=False,
                shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
            )
            return Engine(domains, scheme="http", clock=clock, auth=auth), auth

        (a_engine, _), (b_engine, _) = member(), member()
        async with a_engine, b_engine:
            await a_engine.request("GET", "svc", "/x")  # 0 s: A logs in, session 1
            await b_engine.request("GET", "svc", "/x")  # B adopts it
            await clock.sleep(5.0)
            ls.valid.discard("SESS1")
            await clock.sleep(5.0)
            await b_engine.request("GET", "svc", "/x")  # 10 s: a 401, B logs in: session 2
            ls.refused.add("SESS2")
            ls.refresh_delay = 2.0
            await clock.sleep(290.5)  # A's keepalive refresh of session 2 is on the wire
            await a_engine.request("GET", "svc", "/x")  # a 401 on BEARER1: A adopts session 2
            await clock.sleep(2.0)  # the refresh is refused
            ls.valid.discard("SESS2")
            refused_at = clock.now()
            await clock.sleep(1.0)
            assert len(ls.logins) == 3, "A logged in for the fleet as the refusal came"
            assert ls.logins[2] <= refused_at
            await a_engine.request("GET", "svc", "/x")
            after = [(bearer, status) for at, bearer, status in ls.calls if at > refused_at]
            assert after == [("BEARER3", 200)], "no call sent the refused session"
            assert len(ls.logins) == 3


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("[0:0:0:0:0:0:0:1]:8443", "https://[::1]:8443/x"),
        ("[0::1]", "https://[::1]/x"),
        ("[::FFFF:127.0.0.1]", "https://[::ffff:127.0.0.1]/x"),
        ("bücher.example", "https://bücher.example/x"),
        ("BÜCHER.example:443", "https://xn--bcher-kva.example/x"),
        ("xn--bcher-kva.example", "https://bücher.example/x"),
        ("Example.COM.", "https://example.com/x"),
    ],
)
def test_any_form_of_one_host_is_the_same_host(host: str, url: str) -> None:
    # A custom domain provider's long IPv6 form, or a Unicode allowed host, was compared as
    # written with the URL's host on the wire: credentials withheld.
    assert same_host(host, URL(url))


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("example.com:444", "https://example.com/x"),
        ("evil.example", "https://example.com/x"),
        ("a b", "https://example.com/x"),
        ("[::2]", "https://[::1]/x"),
    ],
)
def test_other_hosts_are_not(host: str, url: str) -> None:
    assert not same_host(host, URL(url))


def test_a_refused_or_port_only_duplicate_is_named_or_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport.domains")
    hostile = {"service": "agentVep", "baseURI": "bot:pw@evil.example"}
    assert parse_base_uris({"baseURIs": [GOOD, hostile]}, account="123") == {
        "agentVep": "va.agentvep.liveperson.net"
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "different or refused hosts ('agentVep')" in warnings[0]
    assert "pw" not in warnings[0]
    caplog.clear()
    port = {"service": "agentVep", "baseURI": "va.agentvep.liveperson.net:443"}
    parse_base_uris({"baseURIs": [GOOD, port]}, account="123")
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
