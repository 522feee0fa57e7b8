"""Security: TLS cannot be turned off by accident, credentials go only to the account's hosts.

The threat model is in docs/architecture.md ("Threat model"). Every test talks to real aiohttp
servers on loopback; two servers on different ports are two origins, so a redirect between
them is a redirect to a foreign host. A *sink* server stands for the attacker: it records
everything it is sent, and the tests assert it was sent nothing secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from le_transport import Engine
from le_transport.errors import (
    AuthenticationError,
    BodyTooLarge,
    ConfigurationError,
    DomainResolutionError,
    HostileHostError,
    InvalidRequest,
    RequestError,
    RetriesExhausted,
    SocketError,
    TransportError,
)
from le_transport.policies.backoff import BackoffPolicy
from le_transport.policies.retry import RetryPolicy
from le_transport.providers import CsdsDomains, OAuth1Auth, StaticBearer, StaticDomains, UserLogin
from le_transport.providers.auth import AuthProvider
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock
from tests import known_secrets
from tests.certs import self_signed_loopback
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    BEARER,
    CSRF,
    PASSWORD,
    SESSION_ID,
)

ACCOUNT = "12345678"


# -- loopback servers -------------------------------------------------------------------------


@dataclass
class Seen:
    """What one server was sent: method, path, headers and body of every request."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(f"{m} {p} {h!r} {b!r}" for m, p, h, b in self.requests)

    def credentials_seen(self) -> list[str]:
        return known_secrets.find_secrets(self.text(), known_secrets.ALL)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Start = Callable[..., Awaitable[tuple[str, Seen]]]


@pytest.fixture
async def start_server() -> AsyncIterator[Start]:
    """Start a recording server on a free loopback port: ``(host:port, seen)``."""
    runners: list[web.AppRunner] = []

    async def start(
        handler: Handler | None = None, *, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, Seen]:
        seen = Seen()

        async def record(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            seen.requests.append((request.method, request.path_qs, dict(request.headers), body))
            if handler is None:
                return web.json_response({"ok": True})
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        return f"127.0.0.1:{runner.addresses[0][1]}", seen

    yield start
    for runner in runners:
        await runner.cleanup()


def _no_secret_in(exc: BaseException) -> None:
    shown = "\n".join(known_secrets.exception_messages(exc))
    assert known_secrets.find_secrets(shown, known_secrets.ALL) == []


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    return self_signed_loopback(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_tls(self_signed: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*self_signed)
    return ctx


def test_tls_false_is_refused_and_points_at_the_explicit_option() -> None:
    with pytest.raises(ConfigurationError, match="insecure_tls=True"):
        Engine({"svc": "127.0.0.1:1"}, tls=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["yes", 1, "False", None])
def test_insecure_tls_accepts_only_a_real_bool(value: object) -> None:
    """A truthy string or 1 from a config file must not turn verification off."""
    with pytest.raises(ConfigurationError, match="insecure_tls must be a bool"):
        Engine({"svc": "127.0.0.1:1"}, insecure_tls=value)  # type: ignore[arg-type]


async def test_self_signed_loopback_server_is_refused_by_default(
    start_server: Start, server_tls: ssl.SSLContext
) -> None:
    """Verification is on by default: the handshake fails, so no request (and no bearer)
    ever reaches the server."""
    host, seen = await start_server(ssl_context=server_tls)
    async with Engine(
        {"svc": host}, clock=VirtualClock(), auth=StaticBearer(BEARER), retry=RetryPolicy()
    ) as engine:
        assert engine.scheme == "https"
        with pytest.raises(RequestError) as caught:
            await engine.request("GET", "svc", "/api/x")
    assert seen.requests == []
    chain = known_secrets.exception_messages(caught.value)
    assert any("certificate" in m.lower() for m in chain), chain
    _no_secret_in(caught.value)


async def test_domain_api_behind_a_self_signed_certificate_is_refused(
    start_server: Start, server_tls: ssl.SSLContext
) -> None:
    csds_host, seen = await start_server(ssl_context=server_tls)
    domains = CsdsDomains(ACCOUNT, csds_host=csds_host)
    async with Engine(domains, clock=VirtualClock()):
        with pytest.raises(DomainResolutionError):
            await domains.resolve("agentVep")
    assert seen.requests == []


async def test_insecure_tls_logs_loudly_then_reaches_the_self_signed_server(
    start_server: Start, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    host, seen = await start_server(ssl_context=server_tls)
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with Engine({"svc": host}, clock=VirtualClock(), insecure_tls=True) as engine:
        resp = await engine.request("GET", "svc", "/api/x")
    assert resp.status == 200
    assert len(seen.requests) == 1
    loud = [r for r in caplog.records if "VERIFICATION IS OFF" in r.getMessage()]
    assert len(loud) == 1
    assert loud[0].levelno == logging.WARNING
    assert loud[0].name == "le_transport.engine"


async def test_a_private_ca_in_tls_verifies_the_server_without_turning_verification_off(
    start_server: Start,
    server_tls: ssl.SSLContext,
    self_signed: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The documented way to trust a local certificate: verification stays on."""
    host, _ = await start_server(ssl_context=server_tls)
    trust = ssl.create_default_context(cafile=str(self_signed[0]))
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with Engine({"svc": host}, clock=VirtualClock(), tls=trust) as engine:
        resp = await engine.request("GET", "svc", "/api/x")
    assert resp.status == 200
    assert trust.verify_mode == ssl.CERT_REQUIRED
    assert not [r for r in caplog.records if "VERIFICATION IS OFF" in r.getMessage()]


# -- redirects --------------------------------------------------------------------------------


def _redirect_to(target: str, status: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": f"http://{target}/steal"})

    return handler


def _bearer() -> AuthProvider:
    return StaticBearer(BEARER)


def _oauth1() -> AuthProvider:
    return OAuth1Auth("app-key", APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("make_auth", [_bearer, _oauth1], ids=["bearer", "oauth1"])
async def test_redirect_to_another_origin_carries_no_authorization_and_no_cookie(
    start_server: Start, status: int, make_auth: Callable[[], AuthProvider]
) -> None:
    """The service's host answers with a redirect to another port of 127.0.0.1 (another
    origin): the hop there carries neither the Authorization header nor the caller's cookie,
    while the service's own host did get them."""
    sink, stolen = await start_server()
    host, seen = await start_server(_redirect_to(sink, status))
    async with Engine(
        {"svc": host}, scheme="http", clock=VirtualClock(), auth=make_auth()
    ) as engine:
        resp = await engine.request(
            "GET", "svc", "/api/x", headers={"Cookie": f"Session_id={SESSION_ID}"}
        )
    assert resp.status == 200
    assert len(stolen.requests) == 1
    _, path, headers, _ = stolen.requests[0]
    assert path == "/steal"
    assert "Authorization" not in headers
    assert "Cookie" not in headers
    assert stolen.credentials_seen() == []
    # The named host did receive credentials: the test would prove nothing otherwise.
    assert "Authorization" in seen.requests[0][2]


async def test_after_a_real_login_a_redirect_elsewhere_carries_no_bearer_and_no_session_cookie(
    start_server: Start,
) -> None:
    """With the Login Service provider: the login answer sets a ``Session_id`` cookie and
    issues a bearer; a REST call redirected to another origin carries neither."""
    sink, stolen = await start_server()

    async def service(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/login"):
            resp = web.json_response({"bearer": BEARER, "csrf": CSRF, "sessionTTl": "28800000"})
            resp.set_cookie("Session_id", SESSION_ID)
            return resp
        return web.Response(status=302, headers={"Location": f"http://{sink}/steal"})

    host, seen = await start_server(service)
    domains = StaticDomains({"agentVep": host, "svc": host})
    auth = UserLogin(ACCOUNT, "agent", PASSWORD, domains=domains, keepalive=False)
    async with Engine(domains, scheme="http", clock=VirtualClock(), auth=auth) as engine:
        resp = await engine.request("GET", "svc", "/api/x")
    assert resp.status == 200
    assert len(stolen.requests) == 1
    assert "Authorization" not in stolen.requests[0][2]
    assert "Cookie" not in stolen.requests[0][2]
    assert stolen.credentials_seen() == []
    rest = [r for r in seen.requests if r[1] == "/api/x"]
    assert rest[0][2]["Authorization"] == f"Bearer {BEARER}"


async def test_redirect_to_the_same_origin_keeps_the_credentials(start_server: Start) -> None:
    async def hop(request: web.Request) -> web.StreamResponse:
        if request.path == "/api/x":
            return web.Response(status=302, headers={"Location": "/api/y"})
        return web.json_response({"ok": True})

    host, seen = await start_server(hop)
    async with Engine(
        {"svc": host}, scheme="http", clock=VirtualClock(), auth=StaticBearer(BEARER)
    ) as engine:
        await engine.request("GET", "svc", "/api/x")
    assert [r[1] for r in seen.requests] == ["/api/x", "/api/y"]
    assert all(r[2].get("Authorization") == f"Bearer {BEARER}" for r in seen.requests)


async def test_login_redirected_elsewhere_is_not_followed_and_the_password_stays_home(
    start_server: Start,
) -> None:
    """Provider calls (login, refresh, token) never follow redirects: a redirect would
    re-post the password to whatever host the answer names."""
    sink, stolen = await start_server()
    login_host, seen = await start_server(_redirect_to(sink, 307))
    domains = {"agentVep": login_host}
    static = StaticDomains(domains)
    auth = UserLogin(ACCOUNT, "agent", PASSWORD, domains=static, keepalive=False)
    async with Engine(static, scheme="http", clock=VirtualClock(), auth=auth) as engine:
        with pytest.raises(TransportError) as caught:
            await engine.login()
    assert stolen.requests == []
    assert len(seen.requests) == 1
    assert PASSWORD.encode() in seen.requests[0][3]
    _no_secret_in(caught.value)


# -- hostile Domain API answers ---------------------------------------------------------------

# Each is what a compromised or spoofed Domain API could answer to steer credentials to
# "{sink}", the attacker's server.
HOSTILE = {
    "scheme": "http://{sink}",
    "path": "{sink}/steal",
    "userinfo": "user:pw@{sink}",
    "at sign": "va.example@{sink}",
    "leading space": " {sink}",
    "trailing newline": "{sink}\n",
    "tab inside": "127.0.0.1\t:{sink_port}",
    "header injection": "{sink}\r\nX-Injected: 1",
    "NUL": "{sink}\x00",
    "query": "{sink}?x=",
    "fragment": "{sink}#",
    "backslash": "{sink}\\steal",
    "unicode line separator": "{sink}\u2028",
    "very long": "a" * 300,
    "not a string": 12345,
    "empty": "",
}


def _csds(entries: dict[str, object]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "baseURIs": [
                    {"service": s, "account": ACCOUNT, "baseURI": h} for s, h in entries.items()
                ]
            }
        )

    return handler


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_domain_api_answer_is_refused_and_no_credential_is_sent(
    start_server: Start, kind: str
) -> None:
    """Whatever the Domain API names for the Login Service and a REST service — a scheme, a
    path, userinfo, '@', whitespace, control characters, a very long value — the engine
    refuses it with HostileHostError, and neither the password nor any other credential is
    sent anywhere."""
    sink, stolen = await start_server()
    sink_port = sink.rsplit(":", 1)[1]
    raw = HOSTILE[kind]
    hostile = raw.format(sink=sink, sink_port=sink_port) if isinstance(raw, str) else raw
    csds_host, asked = await start_server(
        _csds({"agentVep": hostile, "accountConfigReadOnly": hostile})
    )
    domains = CsdsDomains(ACCOUNT, csds_host=csds_host, scheme="http")
    auth = UserLogin(ACCOUNT, "agent", PASSWORD, domains=domains, keepalive=False)
    async with Engine(domains, scheme="http", clock=VirtualClock(), auth=auth) as engine:
        with pytest.raises(HostileHostError) as on_login:
            await engine.login()
        with pytest.raises(HostileHostError) as on_request:
            await engine.request("GET", "accountConfigReadOnly", "/api/account/1/users")
    assert stolen.requests == []
    # The Domain API itself is asked without credentials, only for the map.
    assert all("baseURI.json" in path for _, path, _, _ in asked.requests)
    assert asked.credentials_seen() == []
    assert all("Authorization" not in h for _, _, h, _ in asked.requests)
    for err in (on_login.value, on_request.value):
        message = str(err)
        assert len(message) < 600
        assert not any(c in message for c in "\r\n\x00\t")
        _no_secret_in(err)


async def test_one_hostile_entry_does_not_spoil_the_account_s_other_services(
    start_server: Start,
) -> None:
    sink, stolen = await start_server()
    good, seen = await start_server()
    csds_host, _ = await start_server(
        _csds({"accountConfigReadOnly": good, "engHistDomain": f"{sink}/steal"})
    )
    domains = CsdsDomains(ACCOUNT, csds_host=csds_host, scheme="http")
    async with Engine(
        domains, scheme="http", clock=VirtualClock(), auth=StaticBearer(BEARER)
    ) as engine:
        resp = await engine.request("GET", "accountConfigReadOnly", "/api/x")
        with pytest.raises(HostileHostError):
            await engine.request("GET", "engHistDomain", "/api/x")
    assert resp.status == 200
    assert seen.requests[0][2]["Authorization"] == f"Bearer {BEARER}"
    assert stolen.requests == []


@pytest.mark.parametrize(
    "path",
    ["//{sink}/steal", "/x?redirect=1", "/x#frag", "/x\r\nHost: evil", "http://{sink}/", "x"],
)
async def test_a_call_path_cannot_leave_the_service_host(start_server: Start, path: str) -> None:
    sink, stolen = await start_server()
    host, seen = await start_server()
    async with Engine(
        {"svc": host}, scheme="http", clock=VirtualClock(), auth=StaticBearer(BEARER)
    ) as engine:
        with pytest.raises(RequestError):
            await engine.request("GET", "svc", path.format(sink=sink))
    assert stolen.requests == []
    assert seen.requests == []


@pytest.mark.parametrize(
    "path", ["/api/users/../../admin", "/api/users/..", "/api/./users", "/api/users/%s/../x"]
)
async def test_a_call_path_cannot_climb_to_another_endpoint_with_dot_segments(
    start_server: Start, path: str
) -> None:
    """The URL normalised '.' and '..' away: '/api/users/' + an id taken from outside
    ('../../admin') was sent as '/admin', with the service's bearer. Refused before anything
    is sent, on every entry point that takes a path; an encoded dot is no segment."""
    host, seen = await start_server()
    async with Engine(
        {"svc": host}, scheme="http", clock=VirtualClock(), auth=StaticBearer(BEARER)
    ) as engine:
        with pytest.raises(InvalidRequest, match=r"'\.' or '\.\.' segments"):
            await engine.request("GET", "svc", path)
        with pytest.raises(InvalidRequest, match=r"'\.' or '\.\.' segments"):
            await engine.websocket("svc", path)
        assert (await engine.request("GET", "svc", "/api/users/%2e%2e", accept={404})).status
        assert (await engine.request("GET", "svc", "/api/users/..x", accept={404})).status
    # The encoded dots are sent as text (escaped again), no segment of their own.
    assert [p for _, p, _, _ in seen.requests] == ["/api/users/%252e%252e", "/api/users/..x"]


# -- unbounded bodies and hangs ---------------------------------------------------------------


async def _release(never: asyncio.Event) -> None:
    """Let the stuck handlers of the server finish, so the test leaves no task behind."""
    never.set()
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_body_past_the_size_limit_is_cut_off_not_buffered(start_server: Start) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * 65536
        for _ in range(64):  # 4 MiB, never announced in a Content-Length
            await resp.write(chunk)
        return resp

    host, _ = await start_server(huge)
    async with Engine(
        {"svc": host}, scheme="http", clock=VirtualClock(), max_body_bytes=256 * 1024
    ) as engine:
        with pytest.raises(BodyTooLarge) as caught:
            await engine.request("GET", "svc", "/api/x")
    assert caught.value.limit == 256 * 1024


async def test_a_domain_api_answer_past_the_size_limit_is_refused(start_server: Start) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        pad = [{"service": f"s{i}", "baseURI": "h.example"} for i in range(40_000)]
        return web.Response(body=json.dumps({"baseURIs": pad}).encode())

    csds_host, _ = await start_server(huge)
    domains = CsdsDomains(ACCOUNT, csds_host=csds_host, scheme="http")
    async with Engine(domains, scheme="http", clock=VirtualClock(), max_body_bytes=64 * 1024):
        with pytest.raises(DomainResolutionError):
            await domains.resolve("agentVep")


async def test_a_server_that_never_answers_cannot_hang_a_call(start_server: Start) -> None:
    """Each attempt is cut at the attempt timeout on the engine's clock (virtual here: no
    real waiting), the schedule runs out, and the call ends with a typed error."""
    never = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.Response()

    host, seen = await start_server(silent)
    clock = VirtualClock()
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, retry=RetryPolicy(attempt_timeout=10)
    ) as engine:
        with pytest.raises(RetriesExhausted) as caught:
            await engine.request("GET", "svc", "/api/x")
    assert len(caught.value.attempts) == 4
    assert len(seen.requests) == 4
    assert clock.now() == pytest.approx(4 * 10 + 5 + 10 + 15)
    await _release(never)


async def test_a_server_that_stalls_mid_body_cannot_hang_a_call(start_server: Start) -> None:
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"bearer": "')
        await never.wait()
        return resp

    host, _ = await start_server(stall)
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=VirtualClock(),
        retry=RetryPolicy(attempt_timeout=10, pauses=()),
    ) as engine:
        with pytest.raises(TransportError) as caught:
            await engine.request("GET", "svc", "/api/x")
    _no_secret_in(caught.value)
    await _release(never)


async def test_a_second_401_is_final_and_the_password_is_not_resent_anywhere_else(
    start_server: Start,
) -> None:
    """A 401 re-authenticates once and replays once; a second 401 ends the call."""

    async def login_or_401(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/login"):
            return web.json_response({"bearer": BEARER, "csrf": CSRF})
        return web.Response(status=401)

    host, seen = await start_server(login_or_401)
    domains = StaticDomains({"agentVep": host, "svc": host})
    auth = UserLogin(ACCOUNT, "agent", PASSWORD, domains=domains, keepalive=False)
    async with Engine(domains, scheme="http", clock=VirtualClock(), auth=auth) as engine:
        with pytest.raises(AuthenticationError) as caught:
            await engine.request("GET", "svc", "/api/x")
    paths = [p.split("?")[0] for _, p, _, _ in seen.requests]
    assert paths.count(f"/api/account/{ACCOUNT}/login") == 2
    assert paths.count("/api/x") == 2
    _no_secret_in(caught.value)


async def test_a_socket_to_a_self_signed_server_is_refused_and_never_sends_the_bearer(
    start_server: Start, server_tls: ssl.SSLContext
) -> None:
    host, seen = await start_server(ssl_context=server_tls)
    async with Engine(
        {"facadeMsg": host}, clock=VirtualClock(), auth=StaticBearer(BEARER)
    ) as engine:
        ws = await engine.websocket(
            "facadeMsg",
            f"/ws_api/account/{ACCOUNT}/messaging/brand/{{bearer}}",
            params={"v": "2.1"},
            options=SocketOptions(backoff=BackoffPolicy.reconnect(max_attempts=2)),
        )
        with pytest.raises(SocketError) as caught:
            await ws.wait_open(timeout=600)
        await ws.close()
    assert seen.requests == []
    _no_secret_in(caught.value)
