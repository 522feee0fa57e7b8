"""One fault plan means the same faults whichever side applies it: the simulator's fault
middleware, or the client-side :class:`~le_transport.chaos.FaultInjector`.

Each test runs the same rule on both sides (``side``: ``"simulator"``, ``"injector"``) against
the real simulator on loopback, on a :class:`~le_transport.testing.VirtualClock`, and checks
that the caller sees the same thing: the providers' own calls (login, Domain API) struck alike,
a ``Status`` header named in any case, a cut body's kept bytes, a cut or paced answer's
repeated headers and cookies, a malformed body's side effects. Then two smaller ones: what
``le-transport simulate --verbose`` prints of a client's text, and the real-account demo's
check that no secret was printed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine
from le_transport.chaos import (
    FaultInjector,
    FaultPlan,
    FaultRule,
    MalformedBody,
    Match,
    Schedule,
    SlowBody,
    Status,
    TruncatedBody,
)
from le_transport.chaos.plan import FaultRun
from le_transport.errors import ConfigurationError
from le_transport.events import EventHooks, RetryEvent
from le_transport.providers import CsdsDomains, StaticDomains, UserLogin
from le_transport.providers._http import ProviderHttp
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)

ROOT = Path(__file__).resolve().parent.parent
USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"
CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"
SIDES = ("simulator", "injector")

# -- helpers --------------------------------------------------------------------------------------


def _faults_of(side: str, sim: Simulator, injector: FaultInjector) -> Any:
    return sim.faults if side == "simulator" else injector


def _apply(side: str, sim: Simulator, rules: list[FaultRule], clock: VirtualClock) -> FaultInjector:
    """The rules given to the side under test; the injector returned (empty on the simulator's
    side), on ``clock``."""
    if side == "simulator":
        sim.faults.load(rules)
        return FaultInjector(clock=clock)
    return FaultInjector(rules, clock=clock)


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


async def _get(
    sim: Simulator, injector: FaultInjector, path: str, method: str = "GET", **kw: Any
) -> tuple[int, aiohttp.ClientResponse, bytes]:
    """One request to the simulator through ``injector`` (a middleware on a plain session):
    its status, the response, and its whole body."""
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.request(method, sim.url + path, **kw) as resp,
    ):
        return resp.status, resp, await resp.read()


# -- 1. provider calls meet the client-side injector as they meet the simulator's plan -----------


def _provider_rules() -> list[FaultRule]:
    return [
        FaultRule(
            "login-503",
            Status(503),
            match=Match("POST", "*/login"),
            schedule=Schedule(fail_next=1),
        ),
        FaultRule(
            "csds-503",
            Status(503),
            match=Match("GET", "*/baseURI.json"),
            schedule=Schedule(fail_next=1),
        ),
    ]


@pytest.mark.parametrize("side", SIDES)
async def test_a_rule_on_the_login_and_the_domain_api_strikes_them_on_either_side(
    side: str, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the providers sent their calls with the retry middleware alone, past the wire
    middlewares: a client-side rule on the login or the Domain API matched nothing (matched 0,
    silently) where the simulator's struck them. Now both strike them, and the 503 on the
    login is retried on the login's schedule (the guide's first 5 s pause)."""
    caplog.set_level(logging.WARNING, logger="le_transport.chaos")
    retries: list[RetryEvent] = []
    async with Simulator(clock=clock) as sim:
        injector = _apply(side, sim, _provider_rules(), clock)
        domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http")
        auth = UserLogin(
            sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
        )
        async with Engine(
            domains,
            scheme="http",
            clock=clock,
            auth=auth,
            hooks=EventHooks(on_retry=[retries.append]),
            wire_middlewares=[injector],
        ) as engine:
            users = await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
        counts = _faults_of(side, sim, injector).rule_counts()
        sent = (sim.count("GET", "*/baseURI.json"), sim.count("POST", "*/login"))
    assert users
    assert {rule: (c.matched, c.injected) for rule, c in counts.items()} == {
        "login-503": (2, 1),
        "csds-503": (2, 1),
    }
    # Both retried on their schedules, from where the 503 was answered.
    assert [(e.service, e.method, e.attempt, e.pause) for e in retries] == [
        ("csds", "GET", 1, 5.0),
        ("agentVep", "POST", 1, 5.0),
    ]
    # A client-side 503 is answered without sending: the server saw one of each.
    assert sent == ((2, 2) if side == "simulator" else (1, 1))
    # Inside the retry loop, where it belongs: no warning about its placement.
    assert not [r for r in caplog.records if r.name.startswith("le_transport.chaos")]


@pytest.mark.parametrize("side", SIDES)
async def test_match_service_csds_names_the_domain_api_on_either_side(
    side: str, clock: VirtualClock
) -> None:
    """The engine names its Domain API calls' service ``csds``; the simulator gave its Domain
    API routes none, so ``Match(service="csds")`` struck them client-side only."""
    rule = FaultRule(
        "csds-down", Status(503), match=Match(service="csds"), schedule=Schedule(fail_next=1)
    )
    async with Simulator(clock=clock) as sim:
        injector = _apply(side, sim, [rule], clock)
        domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http")
        async with Engine(domains, scheme="http", clock=clock, wire_middlewares=[injector]):
            assert await domains.resolve("agentVep") == sim.host
        counts = _faults_of(side, sim, injector).rule_counts()["csds-down"]
        services = {r.service for r in sim.requests}
    assert (counts.matched, counts.injected) == (2, 1)
    assert services == {"csds"}


@pytest.mark.parametrize("side", SIDES)
async def test_the_readme_plans_login_rule_strikes_the_same_logins_on_either_side(
    side: str, clock: VirtualClock
) -> None:
    """``examples/fault_plan.json`` (the README's plan): its ``login-flaky`` rule (a reset,
    nothing, a delay, each with p 0.5) matched no login through a client-side injector. Now it
    decides the same logins the same way on either side. (Seed 2: the file's seed, 7, happens
    to draw no fault for the first logins.)"""
    loaded = FaultPlan.from_dict(json.loads((ROOT / "examples" / "fault_plan.json").read_text()))
    plan = FaultPlan(seed=2, rules=loaded.rules)
    async with Simulator(clock=clock) as sim:
        if side == "simulator":
            sim.faults.load(plan)
            injector = FaultInjector(clock=clock)
        else:
            injector = FaultInjector(plan, clock=clock)
        domains = StaticDomains(sim.domains)
        auth = UserLogin(
            sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
        )
        async with Engine(
            domains, scheme="http", clock=clock, auth=auth, wire_middlewares=[injector]
        ):
            for _ in range(3):
                await auth.login()
        faults = _faults_of(side, sim, injector)
        counts = faults.rule_counts()["login-flaky"]
        decided = [(d.index, d.outcome, d.kind) for d in faults.log if d.rule_id == "login-flaky"]
        logins = sim.count("POST", "*/login")
    # The first login is reset and retried (the sequence's null lets the retry through), the
    # second delayed 1.5 to 2 s, the third passes: four logins matched, on either side.
    assert decided == [
        (0, "inject", "reset"),
        (1, "pass", None),
        (2, "inject", "delay"),
        (3, "pass", None),
    ]
    assert (counts.matched, counts.injected) == (4, 2)
    # The simulator saw the reset login (it reset it); the injector never sent it.
    assert logins == (4 if side == "simulator" else 3)


async def test_a_slow_login_through_the_injector_keeps_its_session_id_cookie(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A client-side SlowBody on the login (which now reaches the injector) hands back the
    Login Service's Session_id cookie: the auth provider keeps it for refresh and logout."""
    rule = FaultRule(
        "slow-login",
        SlowBody(chunk_bytes=16, chunk_delay_ms=10),
        match=Match("POST", "*/login"),
        schedule=Schedule(fail_next=1),
    )
    injector = FaultInjector([rule], clock=clock)
    domains = StaticDomains(sim.domains)
    auth = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth, wire_middlewares=[injector]):
        session = await auth.login()
        assert await auth.refresh()  # the cookie is what the refresh is accepted on
    assert injector.rule_counts()["slow-login"].injected == 1
    assert session.session_id is not None
    issued = {s.session_id for s in sim.tokens.sessions.values()}
    assert session.session_id.reveal() in issued
    assert sim.tokens.refreshes == 1


class _Recorder:
    """A wire middleware recording what it sees (and whether the call's context was active);
    ``sees_provider_calls`` as asked."""

    def __init__(self, sees_provider_calls: bool) -> None:
        self.sees_provider_calls = sees_provider_calls
        self.seen: list[tuple[str, str, str | None, bool | None, bool]] = []

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        from le_transport.middleware.context import current_call

        ctx = current_call()
        assert ctx is not None
        body = request.body
        password_seen = DEFAULT_PASSWORD.encode() in getattr(body, "_value", b"")
        self.seen.append(
            (
                request.method,
                request.url.path.rsplit("/", 1)[-1],
                ctx.service,
                ctx.active,
                password_seen,
            )
        )
        return await handler(request)


async def test_provider_calls_pass_only_the_wire_middlewares_that_ask_for_them(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A wire middleware that says ``sees_provider_calls`` (as the injector does) sees the
    Domain API fetch, the login and the logout, once per attempt, each inside the retry
    middleware; any other sees only the engine's own calls: provider calls carry credentials
    (the login's password), which a caller's logging middleware must not meet unasked."""
    asks, plain = _Recorder(True), _Recorder(False)
    domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http")
    auth = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    sim.faults.script("POST", "*/login", [503])
    async with Engine(
        domains, scheme="http", clock=clock, auth=auth, wire_middlewares=[asks, plain]
    ) as engine:
        await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
    assert asks.seen == [
        ("GET", "baseURI.json", "csds", True, False),
        ("POST", "login", "agentVep", True, True),
        ("POST", "login", "agentVep", True, True),  # the 503's retry: once per attempt
        ("GET", "users", "accountConfigReadOnly", True, False),
        ("POST", "logout", "agentVep", True, False),
    ]
    assert plain.seen == [("GET", "users", "accountConfigReadOnly", True, False)]
    assert FaultInjector.sees_provider_calls is True
    # A ProviderHttp made by hand runs none unless given them.
    assert attrs.fields(ProviderHttp).wire_middlewares.default == ()


PLUGIN_SUITE = """
import pytest

from le_transport.chaos import FaultRule, Match, Schedule, Status

USERS = "/api/account/{account}/configuration/le-users/users"


@pytest.mark.asyncio
async def test_a_login_rule_on_le_fault_injector_strikes_le_engines_login(
    le_engine, le_simulator, le_fault_injector, le_clock
):
    le_fault_injector.add(
        FaultRule("login-503", Status(503), match=Match("POST", "*/login"), schedule=Schedule(0, 1))
    )
    path = USERS.format(account=le_simulator.account.id)
    assert await le_engine.request_json("GET", "accountConfigReadOnly", path, expect=list)
    assert le_fault_injector.rule_counts()["login-503"].injected == 1
    assert le_simulator.count("POST", "*/login") == 1  # the 503 was never sent
    assert le_clock.now() == 5.0  # the login's retry waited the guide's first pause
"""


def test_the_plugins_le_engine_logs_in_through_le_fault_injector(tmp_path: Path) -> None:
    """The pytest plugin's engine (run as another package's suite, in pytest-asyncio's strict
    mode): a login rule added to ``le_fault_injector`` strikes the login ``le_engine`` makes
    on first use, and the login's retry schedule carries it through."""
    project = tmp_path / "plugin_login"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "addopts = -p no:cacheprovider\n"
    )
    (project / "test_login_faults.py").write_text(PLUGIN_SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# -- 2. Status header names are case-insensitive --------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
async def test_a_status_with_a_lower_case_content_type_answers_with_it(
    side: str, sim: Simulator, clock: VirtualClock
) -> None:
    """Before, the simulator looked for "Content-Type" case-sensitively, passed aiohttp both a
    content-type header and a content_type, and answered 500."""
    rule = FaultRule("s", Status(503, body="down", headers={"content-type": "text/plain"}))
    injector = _apply(side, sim, [rule], clock)
    status, resp, body = await _get(sim, injector, CSDS)
    assert (status, resp.headers.getall("Content-Type"), body) == (503, ["text/plain"], b"down")


@pytest.mark.parametrize("side", SIDES)
async def test_a_status_retry_after_replaces_one_named_in_its_headers_in_any_case(
    side: str, sim: Simulator, clock: VirtualClock
) -> None:
    rule = FaultRule("s", Status(503, retry_after=2, headers={"retry-after": "9"}))
    injector = _apply(side, sim, [rule], clock)
    status, resp, _ = await _get(sim, injector, CSDS)
    assert (status, resp.headers.getall("Retry-After")) == (503, ["2"])


@pytest.mark.parametrize(
    ("name", "value"),
    [("X(Y", "1"), ("X\tY", "1"), ("Ünïcode", "1"), ("X-Trace", "a\x01b"), ("X-Trace", "\x7f")],
)
def test_a_status_header_that_cannot_go_on_the_wire_is_refused_when_made(
    name: str, value: str
) -> None:
    """Accepted, a name that is no token was refused by the client's parser behind the
    simulator (a 400 of its own) and a control character failed the simulator's answer (the
    connection dropped), where the injector's made-up answer carried either: one plan, two
    outcomes."""
    with pytest.raises(ConfigurationError, match="cannot be sent"):
        Status(503, headers={name: value})


@pytest.mark.parametrize("side", SIDES)
async def test_a_status_header_with_a_tab_and_non_ascii_text_answers_alike_on_either_side(
    side: str, sim: Simulator, clock: VirtualClock
) -> None:
    rule = FaultRule("s", Status(503, headers={"X-Note": "a\tb é"}))
    injector = _apply(side, sim, [rule], clock)
    status, resp, _ = await _get(sim, injector, CSDS)
    assert status == 503
    assert resp.headers["X-Note"] == "a\tb é"
    assert [v for n, v in resp.raw_headers if n == b"X-Note"] == ["a\tb é".encode()]


# -- 3. a cut body hands back the bytes it keeps --------------------------------------------------


async def _read_until_cut(resp: aiohttp.ClientResponse) -> tuple[bytes, str | None]:
    got = b""
    try:
        async for chunk in resp.content.iter_any():
            got += chunk
    except aiohttp.ClientPayloadError as exc:
        return got, type(exc).__name__
    return got, None


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("keep", [0, 20, 10**9])
async def test_a_truncated_body_hands_back_its_kept_bytes_then_fails(
    side: str, keep: int, sim: Simulator, clock: VirtualClock
) -> None:
    """Before, the injector set the payload error as it fed the kept bytes, and aiohttp's
    reads raise a stream's error first: a reader got none of them, where the simulator's
    reader gets them, then the error. Keeping the whole body, the simulator announced
    ``keep_bytes + 1`` bytes, the injector one more than the body."""
    async with aiohttp.ClientSession() as plain, plain.get(sim.url + CSDS) as whole:
        full = await whole.read()
    injector = _apply(side, sim, [FaultRule("cut", TruncatedBody(keep_bytes=keep))], clock)
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(sim.url + CSDS) as resp,
    ):
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == max(len(full), min(keep, len(full)) + 1)
        assert await _read_until_cut(resp) == (full[:keep], "ClientPayloadError")
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(sim.url + CSDS) as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # a whole read fails, as on a real connection cut short


@pytest.mark.parametrize("side", SIDES)
async def test_waiting_for_the_end_of_a_truncated_body_fails_with_the_cut_on_either_side(
    side: str, sim: Simulator, clock: VirtualClock
) -> None:
    """The injector's cut body never ended: ``resp.content.wait_eof()`` waited for ever where
    the simulator's connection, closed, fails it with the payload error."""
    injector = _apply(side, sim, [FaultRule("cut", TruncatedBody(keep_bytes=5))], clock)
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(sim.url + CSDS) as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.content.wait_eof(), 30)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


# -- 4. a cut or paced answer keeps its repeated headers and cookies ------------------------------


async def _cookies_and_links(request: web.Request) -> web.StreamResponse:
    resp = web.json_response({"ok": True, "pad": "x" * 200})
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2")
    resp.headers.add("Link", "<x>; rel=next")
    resp.headers.add("Link", "<y>; rel=prev")
    resp.enable_compression(web.ContentCoding.gzip)  # on the wire only: the reader decodes it
    return resp


@pytest.fixture
async def sim_with_cookies(clock: VirtualClock) -> AsyncIterator[Simulator]:
    s = Simulator(clock=clock)
    s.add_route("GET", "/api/account/{account}/cookies", _cookies_and_links, service="cookies")
    async with s:
        yield s


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "fault", [SlowBody(chunk_bytes=16, chunk_delay_ms=5), TruncatedBody(keep_bytes=10)]
)
async def test_a_cut_or_paced_answer_keeps_repeated_headers_and_cookies(
    side: str, fault: SlowBody | TruncatedBody, sim_with_cookies: Simulator, clock: VirtualClock
) -> None:
    """Before, the injector rebuilt the answer from ``dict(real.headers)``: one Set-Cookie and
    one Link were left, and ``resp.cookies`` was empty (the login's Session_id went with
    them); the simulator's TruncatedBody lost the cookies (aiohttp writes them only as it
    sends)."""
    sim = sim_with_cookies
    injector = _apply(side, sim, [FaultRule("f", fault, match=Match(path="*/cookies"))], clock)
    path = f"/api/account/{DEFAULT_ACCOUNT}/cookies"
    async with (
        aiohttp.ClientSession(middlewares=[injector]) as session,
        session.get(sim.url + path) as resp,
    ):
        body, error = await _read_until_cut(resp)
        headers = resp.headers
        raw_names = [name.lower() for name, _ in resp.raw_headers]
        assert sorted(resp.cookies) == ["a", "b"]
        assert len(headers.getall("Set-Cookie")) == 2
        assert headers.getall("Link") == ["<x>; rel=next", "<y>; rel=prev"]
        assert raw_names.count(b"set-cookie") == 2
        assert raw_names.count(b"link") == 2
        # A SlowBody the injector paces from the live connection of a bare session: the body
        # came gzipped (no fault on the server), so its headers do not tell its decoded length,
        # and it is paced with none announced (learning it held the head back until the body
        # ended). The simulator sends the body compressed, as its handler asked, announced by
        # its compressed length, and cuts or paces those bytes, as they go on the wire.
        unannounced = side == "injector" and isinstance(fault, SlowBody)
        compressed = side == "simulator"
        assert raw_names.count(b"content-length") == (0 if unannounced else 1)
        # The injector's: what described the body on the wire is gone, the body handed back is
        # the decoded one. The simulator's: the wire's, which aiohttp decodes.
        assert headers.get("Content-Encoding") == ("gzip" if compressed else None)
        assert "Transfer-Encoding" not in headers
    assert _faults_of(side, sim, injector).rule_counts()["f"].injected == 1
    whole = json.dumps({"ok": True, "pad": "x" * 200}).encode()
    if isinstance(fault, SlowBody):
        assert (body, error) == (whole, None)
        if unannounced:
            assert "Content-Length" not in headers
        elif compressed:
            assert int(headers["Content-Length"]) < len(whole)
        else:
            assert int(headers["Content-Length"]) == len(whole)
    elif compressed:
        # 10 bytes of gzip (its header): nothing decoded yet, then the cut.
        assert (body, error) == (b"", "ClientPayloadError")
    else:
        assert (body, error) == (whole[:10], "ClientPayloadError")


# -- 5. a malformed body: the request is processed, its answer replaced ---------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("refuses", [False, True])
async def test_a_malformed_body_replaces_the_answer_of_a_request_that_was_processed(
    side: str, refuses: bool, clock: VirtualClock
) -> None:
    """Before, the simulator answered without running the handler, where the injector sent
    the request: one plan, and the server acted on a POST on one side only."""
    calls: list[str] = []

    async def orders(request: web.Request) -> web.Response:
        calls.append(request.method)
        if refuses:
            raise web.HTTPConflict(text="already there")
        return web.json_response({"ok": True}, headers={"X-Order": "1"})

    sim = Simulator(clock=clock)
    sim.add_route("POST", "/api/account/{account}/orders", orders, service="orders")
    fault = MalformedBody(code=502, body='{"half": ')
    async with sim:
        injector = _apply(
            side, sim, [FaultRule("m", fault, match=Match("POST", "*/orders"))], clock
        )
        status, resp, body = await _get(
            sim, injector, f"/api/account/{DEFAULT_ACCOUNT}/orders", method="POST", json={}
        )
    assert calls == ["POST"]  # the server acted on it, on either side
    assert (status, body) == (502, b'{"half": ')
    assert resp.headers["Content-Type"] == "application/json"  # no charset on either side
    assert "X-Order" not in resp.headers  # the real answer is replaced whole


# -- 6. what is printed ---------------------------------------------------------------------------


async def test_simulate_verbose_escapes_a_clients_control_characters(
    capsys: pytest.CaptureFixture[str], sim: Simulator
) -> None:
    """``le-transport simulate --verbose`` prints the path the server decoded and a socket
    message's type: a client's text. An escape sequence or a line break in it is shown
    escaped, not written to the terminal."""
    from le_transport import cli

    sim.faults.add(FaultRule("gone", Status(404), match=Match(path="*/evil*")))
    run = FaultRun([FaultRule("app", Status(429), unit="ws_message")])
    with cli._fault_lines(True):
        async with aiohttp.ClientSession() as session:
            url = URL(sim.url + "/api/account/x/evil%1B%5B2J%0Afault:%20forged", encoded=True)
            async with session.get(url) as resp:
                assert resp.status == 404
        assert run.decide("ws_message", method="WS", path=".Get\x1b[31mRed\r\nfault: x") is not None
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b" not in out
    assert "\r" not in out
    assert len(lines) == 2, out
    assert all(line.startswith("fault: injected status (rule ") for line in lines)
    # A request's path is shown as the URL writes it (percent-encoded; yarl drops a line
    # break), a message's type as its repr.
    assert " on GET /api/account/x/evil%1B%5B2Jfault:%20forged at +" in lines[0]
    assert " on WS '.Get\\x1b[31mRed\\r\\nfault: x'" in lines[1]


def test_simulate_verbose_escapes_any_line_it_prints_that_does_not_print(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command's own guard, whatever a future log line holds: what does not print is
    written escaped, on the line it belongs to."""
    from le_transport import cli

    with cli._fault_lines(True):
        logging.getLogger("le_transport.chaos.faults").debug("a\x1b[2Jb\nc\u202ed café")
    assert capsys.readouterr().out == "fault: a\\x1b[2Jb\\nc\\u202ed café\n"


async def test_a_printable_path_is_printed_as_it_is(
    capsys: pytest.CaptureFixture[str], sim: Simulator
) -> None:
    from le_transport import cli

    sim.faults.add(FaultRule("gone", Status(404), match=Match(path="*/plain")))
    with cli._fault_lines(True):
        async with aiohttp.ClientSession() as session, session.get(sim.url + "/x/plain") as resp:
            assert resp.status == 404
    assert "on GET /x/plain at +" in capsys.readouterr().out


async def test_the_real_account_demo_checks_the_secrets_its_login_answered() -> None:
    """The "no secret was printed" check of ``demo --account`` covered only the credentials
    given; the simulated run also checks the bearer, CSRF value and Session_id its logins
    answered. Now the real run checks those of every session its login held."""
    from le_transport.demo import DemoAccount, Timeline, _real

    async with Simulator() as sim:
        account = DemoAccount(
            account=DEFAULT_ACCOUNT,
            username=DEFAULT_USER,
            password=DEFAULT_PASSWORD,
            csds_host=sim.host,
            scheme="http",
        )
        checks, _, secrets = await _real(account, 0.01, 3, Timeline(io.StringIO()))
        issued = list(sim.tokens.sessions.values())
    assert all(ok for _, ok in checks), checks
    assert issued
    for session in issued:
        assert {session.bearer, session.csrf, session.session_id} <= set(secrets)
    assert DEFAULT_PASSWORD in secrets


# -- 7. a body fault is delivered, or not counted: streamed, raising and bodiless answers --------


def _streamer(framing: str) -> Any:
    """A handler that streams its answer itself (prepares it, writes it in two pieces)."""

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if framing == "length":
            resp.content_length = 12
        await resp.prepare(request)
        await resp.write(b'{"ok":')
        await resp.write(b" true}")
        await resp.write_eof()
        return resp

    return stream


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(
    ("fault", "kept"),
    [(TruncatedBody(keep_bytes=8), b'{"ok": t'), (MalformedBody(code=200, body="{no"), None)],
)
async def test_a_body_fault_on_an_answer_the_handler_streams_still_breaks_it(
    framing: str, fault: TruncatedBody | MalformedBody, kept: bytes | None, clock: VirtualClock
) -> None:
    """Before, the simulator returned an answer the handler streamed itself as it was (it was
    on its way), and counted the fault injected: a chaos test passed having injected nothing.
    Now the streamed answer is cut on the wire (its first keep_bytes, or every byte the
    handler wrote, short of what its headers announce), so the client meets a broken answer,
    as the count says."""
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/stream", _streamer(framing), service="x")
    async with sim:
        sim.faults.load([FaultRule("f", fault, match=Match(path="*/stream"))])
        async with (
            aiohttp.ClientSession() as session,
            session.get(sim.url + f"/api/account/{DEFAULT_ACCOUNT}/stream") as resp,
        ):
            assert resp.status == 200
            body, error = await _read_until_cut(resp)
        counts = sim.faults.rule_counts()["f"]
    assert error == "ClientPayloadError"
    assert body == (b'{"ok": true}' if kept is None else kept)
    assert (counts.matched, counts.injected) == (1, 1)


@pytest.mark.parametrize("side", SIDES)
async def test_a_malformed_body_replaces_the_answer_of_a_handler_that_raises(
    side: str, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a handler raising anything but a web.HTTPException escaped the simulator's
    MalformedBody: the client got aiohttp's 500 where the injector handed back the fault's
    answer. Now both hand back the fault's answer; the simulator logs the exception's type at
    DEBUG, never its text."""
    caplog.set_level(logging.DEBUG, logger="le_transport.simulator")
    calls: list[str] = []

    async def broken(request: web.Request) -> web.Response:
        calls.append(request.method)
        raise RuntimeError("secret-in-the-handler's-text")

    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/broken", broken, service="x")
    fault = MalformedBody(code=200, body="{not json")
    async with sim:
        injector = _apply(side, sim, [FaultRule("m", fault, match=Match(path="*/broken"))], clock)
        status, _, body = await _get(sim, injector, f"/api/account/{DEFAULT_ACCOUNT}/broken")
        counts = _faults_of(side, sim, injector).rule_counts()["m"]
    assert calls == ["GET"]
    assert (status, body) == (200, b"{not json")
    assert counts.injected == 1
    # (aiohttp's own server logs a handler's failure as it is, where nothing replaces it.)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("le_transport"))
    assert "secret-in-the-handler" not in ours
    if side == "simulator":
        assert "RuntimeError" in ours


async def _empty(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ["head", "204"])
async def test_a_truncated_body_cuts_an_answer_without_a_body_alike_on_either_side(
    side: str, case: str, clock: VirtualClock
) -> None:
    """Before, a TruncatedBody on a HEAD's answer (or a 204's) wrote body bytes on the
    simulator (the client failed on a "Bad status line") and raised a payload error in the
    injector. An answer without a body has nothing to cut after its headers: both sides now
    cut it before them (the server disconnects, as for an EmptyResponse), counted injected."""
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/empty", _empty, service="x")
    method, path = ("HEAD", CSDS) if case == "head" else ("GET", "*/empty")
    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(method, path))
    async with sim:
        injector = _apply(side, sim, [rule], clock)
        url = CSDS if case == "head" else f"/api/account/{DEFAULT_ACCOUNT}/empty"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _get(sim, injector, url, method=method)
        counts = _faults_of(side, sim, injector).rule_counts()["cut"]
        served = sim.count(method, path)
    # aiohttp sends an idempotent request once more after a disconnect, on either side.
    assert (counts.matched, counts.injected) == (2, 2)
    assert served == 2


@pytest.mark.parametrize("side", SIDES)
async def test_a_malformed_body_on_a_head_answers_without_a_body_on_either_side(
    side: str, sim: Simulator, clock: VirtualClock
) -> None:
    """Before, the injector handed a HEAD the fault's body, which the simulator's answer to a
    HEAD never carries."""
    rule = FaultRule("m", MalformedBody(code=200, body="{no"), match=Match("HEAD", CSDS))
    injector = _apply(side, sim, [rule], clock)
    status, resp, body = await _get(sim, injector, CSDS, method="HEAD")
    assert (status, body) == (200, b"")
    assert resp.headers["Content-Length"] == "3"


async def test_an_injected_cut_meets_a_reader_after_release_or_read_nowait_with_the_cut(
    clock: VirtualClock, sim: Simulator
) -> None:
    """Before, read() after release() raised aiohttp's ClientConnectionError and a drained
    read_nowait() returned b"" on the injector's cut body; on a connection whose close has
    arrived (the simulator's), both meet the payload error, as they now do here."""
    injector = FaultInjector([FaultRule("cut", TruncatedBody(keep_bytes=4))], clock=clock)
    async with aiohttp.ClientSession(middlewares=[injector]) as session:
        async with session.get(sim.url + CSDS) as resp:
            resp.release()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with session.get(sim.url + CSDS) as resp:
            assert await resp.content.read(4) == b'{"ba'
            with pytest.raises(aiohttp.ClientPayloadError):
                resp.content.read_nowait()


async def test_a_simulator_cut_read_after_its_close_arrived_loses_the_kept_bytes(
    sim: Simulator,
) -> None:
    """What the simulator guarantees, and no more (see the README): its cut is a real
    connection's, and aiohttp raises a stream's error before what it holds, so a reader that
    starts once the close has arrived gets the payload error at once, the kept bytes lost
    (the injector's cut body still hands them over first). Made slow deterministically: the
    read starts once the stream holds the error."""
    sim.faults.load([FaultRule("cut", TruncatedBody(keep_bytes=4))])
    async with aiohttp.ClientSession() as session, session.get(sim.url + CSDS) as resp:
        if resp.content.exception() is None:
            # Woken by the close (the stream's error), never by its bytes.
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.content.wait_eof()
        assert resp.content.exception() is not None
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read(4)


def test_the_injection_logs_rule_attribute_is_escaped_as_its_message_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, the record's ``rule`` attribute held the rule id as written: a handler whose
    format prints %(rule)s wrote its escape sequences to the terminal."""
    caplog.set_level(logging.DEBUG, logger="le_transport.chaos.faults")
    rule_id = "evil\x1b[2J\nrule"
    run = FaultRun([FaultRule(rule_id, Status(503))])
    assert run.decide("request", method="GET", path="/x") is not None
    (record,) = [r for r in caplog.records if r.name == "le_transport.chaos.faults"]
    assert getattr(record, "rule") == repr(rule_id)  # noqa: B009 (set by extra=)
    assert "\x1b" not in record.getMessage()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_slow_body_paces_an_answer_the_handler_streams_itself(
    framing: str, clock: VirtualClock
) -> None:
    """The simulator's SlowBody returned an answer the handler streamed itself at full speed
    and counted the fault injected: a test of a slow server's read timeout passed having met
    no slow body. Now its writes go out in chunk_bytes pieces, chunk_delay_ms apart."""
    sim = Simulator(clock=clock)
    sim.add_route("GET", "/api/account/{account}/stream", _streamer(framing), service="x")
    fault = SlowBody(chunk_bytes=4, chunk_delay_ms=1000)
    async with sim:
        sim.faults.load([FaultRule("s", fault, match=Match(path="*/stream"))])
        start = clock.now()
        async with (
            aiohttp.ClientSession() as session,
            session.get(sim.url + f"/api/account/{DEFAULT_ACCOUNT}/stream") as resp,
        ):
            body = await resp.read()
        counts = sim.faults.rule_counts()["s"]
    assert body == b'{"ok": true}'
    # Six bytes a write, four a piece: pieces of 4, 2, 4, 2 bytes, three pauses between them.
    assert clock.now() - start == pytest.approx(3.0)
    assert (counts.matched, counts.injected) == (1, 1)
