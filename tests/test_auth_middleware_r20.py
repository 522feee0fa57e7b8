"""The auth middleware's 401 replay as the retry middleware reports it, the host check's
handling of a domain provider's outage, allowed_hosts' checks, and ProviderHttp's bound on a
provider answer read without the retry middleware's buffering."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport import BackoffPolicy, Engine
from le_transport.errors import (
    AuthenticationError,
    BodyTooLarge,
    ConfigurationError,
    ConnectionFailed,
    DomainResolutionError,
    HostConfigurationError,
    HostileHostError,
    LoginRejected,
    TransportError,
    UnknownServiceError,
)
from le_transport.events import EventHooks, GiveUpEvent
from le_transport.middleware.auth import AuthMiddleware
from le_transport.middleware.retry import RetryMiddleware
from le_transport.providers import Credentials, StaticBearer, StaticDomains
from le_transport.providers._http import ProviderHttp
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.test_auth_middleware import USERS, login_for
from tests.test_providers import learn_session_secrets, sim, sim_engine
from tests.test_retry_middleware import Script

__all__ = ["sim"]


# -- a 401 the auth middleware replays is not the call's end ------------------------------------


async def test_a_401_cured_by_the_replay_is_neither_a_give_up_event_nor_a_failure_log(
    sim: Simulator,
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GiveUpEvent is documented as "A call failed for good". A session that expired (the
    most ordinary 401) is cured by the auth middleware's one replay and the call returns 200,
    yet the retry middleware inside it has already logged "failed after 1 attempt(s)" and
    fired on_giveup: alerting on give-ups pages on every token expiry."""
    caplog.set_level(logging.WARNING, logger="le_transport.retry")
    auth = login_for(sim)
    giveups: list[GiveUpEvent] = []
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, giveups=giveups) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        assert first.bearer is not None
        sim.tokens.revoke(first.bearer.reveal())  # the session ended server-side
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
    assert resp.status == 200  # the call succeeded
    failed_lines = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    assert (giveups, failed_lines) == ([], [])


def _failed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]


def _hooks(giveups: list[GiveUpEvent]) -> EventHooks:
    return EventHooks(on_giveup=(giveups.append,))


async def test_a_401_the_replay_does_not_cure_is_reported_once_by_the_replay(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The first 401 is the replay's to judge; the second ends the call: one give-up, one
    "failed after" line, counting both attempts."""
    caplog.set_level(logging.WARNING, logger="le_transport.retry")
    script = Script(401, 401)
    host = await serve(script.app())
    giveups: list[GiveUpEvent] = []
    async with Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        hooks=_hooks(giveups),
        auth=StaticBearer("tok-abcdefgh-12345"),
    ) as engine:
        with pytest.raises(AuthenticationError, match="401 again"):
            await engine.request("GET", "svc", "/x")
    assert script.hits == 2
    assert [(g.attempts, g.outcome.status if g.outcome else None) for g in giveups] == [(2, 401)]
    assert len(_failed_lines(caplog)) == 1


class _NoSecondToken:
    """An auth provider whose token, once refused, cannot be replaced: its login is refused."""

    def __init__(self) -> None:
        self.dropped = False

    async def credentials(self, method: str, url: URL) -> Credentials:
        if self.dropped:
            raise LoginRejected("the login was refused (403)", status=403)
        return Credentials(headers={"Authorization": "Bearer tok-abcdefgh-12345"}, generation=1)

    async def invalidate(self, rejected: Credentials) -> None:
        self.dropped = True

    async def close(self) -> None:
        """Nothing to close."""


async def test_a_401_not_replayed_for_want_of_fresh_credentials_is_the_calls_give_up(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The replay the 401 was left to is never made: the call ends on that 401, reported
    once, saying why it was not replayed."""
    caplog.set_level(logging.WARNING, logger="le_transport.retry")
    script = Script(401, 200)
    host = await serve(script.app())
    giveups: list[GiveUpEvent] = []
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, hooks=_hooks(giveups), auth=_NoSecondToken()
    ) as engine:
        with pytest.raises(LoginRejected):
            await engine.request("GET", "svc", "/x")
    assert script.hits == 1
    assert [(g.service, g.outcome.status if g.outcome else None) for g in giveups] == [("svc", 401)]
    assert giveups[0].reason.endswith(
        "not replayed: fresh credentials could not be had (LoginRejected)"
    )
    assert len(_failed_lines(caplog)) == 1


@pytest.mark.parametrize("raise_for_status", [True, False], ids=["raising", "returning"])
async def test_on_a_foreign_session_a_401_cured_by_the_replay_is_not_reported_either(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    raise_for_status: bool,
) -> None:
    """A caller's session with the stack: no engine call context, the retry middleware makes
    its own; a 401 raised or returned to the auth middleware is still its to replay."""
    caplog.set_level(logging.WARNING, logger="le_transport.retry")
    script = Script(401, 200)
    host = await serve(script.app())
    giveups: list[GiveUpEvent] = []
    auth = AuthMiddleware(
        auth=StaticBearer("tok-abcdefgh-12345"), domains=StaticDomains({}), allowed_hosts={host}
    )
    retry = RetryMiddleware(clock=clock, hooks=_hooks(giveups), raise_for_status=raise_for_status)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}/x", middlewares=(auth, retry)) as resp,
    ):
        assert resp.status == 200
    assert script.hits == 2
    assert giveups == []
    assert [r.getMessage() for r in caplog.records] == []


# -- the host check: a typed outage of the domain provider is the call's failure ---------------


def _unreachable(service: str) -> TransportError:
    return ConnectionFailed("service registry unreachable", service=service)


def _map_down(service: str) -> TransportError:
    return DomainResolutionError("the Domain API is down and no map is cached")


class _FlakyRegistry:
    """A domain provider of the caller's own (a service registry): it answers the engine's
    lookup, then fails once, with what ``error`` makes of the service (by default an outage,
    typed as the library types one)."""

    def __init__(self, host: str, error: Callable[[str], TransportError] = _unreachable) -> None:
        self.host = host
        self.error = error
        self.asked = 0

    async def resolve(self, service: str) -> str:
        self.asked += 1
        if self.asked == 2:
            raise self.error(service)
        return self.host

    async def invalidate(self) -> None:
        """Nothing cached."""


async def _bearer_server(serve: ServerFactory, seen: list[dict[str, str]]) -> str:
    """A loopback API that answers 401 without an Authorization header (as LiveEngage does)."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if "Authorization" not in request.headers:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await serve(app)


@pytest.mark.parametrize("outage", [_unreachable, _map_down], ids=["registry", "domain_api"])
@pytest.mark.parametrize("recover", [False, True], ids=["fail_fast", "recover"])
async def test_a_domain_provider_outage_in_the_host_check_never_sends_the_call_unauthenticated(
    serve: ServerFactory,
    clock: VirtualClock,
    recover: bool,
    outage: Callable[[str], TransportError],
) -> None:
    """The auth middleware asks the domain provider again for the call's host; an outage
    raised there typed (a TransportError) is the call's failure, raised as it is, nothing
    sent (fail fast), or waited out and the call sent with its credentials (recover). Taken
    for a host to withhold credentials from, the call went out without them and failed as a
    final 401, which recover=True does not wait out."""
    seen: list[dict[str, str]] = []
    host = await _bearer_server(serve, seen)
    async with Engine(
        _FlakyRegistry(host, outage),
        scheme="http",
        clock=clock,
        auth=StaticBearer("tok-abcdefgh-12345"),
        recovery=BackoffPolicy.relogin(first=15, max_attempts=3),
    ) as engine:
        try:
            await engine.request("GET", "svc", "/api/x", recover=recover)
            outcome = "ok"
        except TransportError as exc:
            outcome = type(exc).__name__
    unauthenticated = sum("Authorization" not in h for h in seen)
    expected = "ok" if recover else type(outage("svc")).__name__
    assert (outcome, unauthenticated) == (expected, 0)


def _unknown(service: str) -> TransportError:
    return UnknownServiceError("no such service", service=service)


def _hostile(service: str) -> TransportError:
    return HostileHostError("refusing the host: not a bare hostname")


@pytest.mark.parametrize("refusal", [_unknown, _hostile], ids=["unknown", "hostile"])
async def test_a_service_the_domain_provider_now_refuses_gets_no_credentials(
    serve: ServerFactory, clock: VirtualClock, refusal: Callable[[str], TransportError]
) -> None:
    """No host of ours for the service: whatever the URL names is not one, so the request
    goes without credentials (and is answered 401 here, unreplayed)."""
    seen: list[dict[str, str]] = []
    host = await _bearer_server(serve, seen)
    async with Engine(
        _FlakyRegistry(host, refusal),
        scheme="http",
        clock=clock,
        auth=StaticBearer("tok-abcdefgh-12345"),
    ) as engine:
        with pytest.raises(TransportError) as info:
            await engine.request("GET", "svc", "/api/x")
    assert getattr(info.value, "status", None) == 401
    assert ["Authorization" in h for h in seen] == [False]


# -- allowed_hosts: a collection of hosts, checked when built ---------------------------------


def test_allowed_hosts_as_a_single_str_is_refused_not_taken_as_its_characters() -> None:
    with pytest.raises(ConfigurationError, match="allowed_hosts"):
        AuthMiddleware(
            auth=StaticBearer("tok-abcdefgh-12345"),
            domains=StaticDomains({}),
            allowed_hosts="api.example.com",
        )


@pytest.mark.parametrize("hosts", [None, 42, [42], [""], [b"api.example.com"]])
def test_allowed_hosts_that_are_not_host_names_are_refused(hosts: object) -> None:
    with pytest.raises(ConfigurationError, match="allowed_hosts"):
        AuthMiddleware(
            auth=StaticBearer("tok-abcdefgh-12345"),
            domains=StaticDomains({}),
            allowed_hosts=hosts,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    "host",
    [
        "https://api.example.com/q?k=hidden-part",
        "api.example.com/hidden-part",
        "user:hidden-part@api.example.com",
    ],
)
def test_an_allowed_host_with_more_than_a_host_is_refused_without_showing_it(host: str) -> None:
    with pytest.raises(HostConfigurationError, match="allowed_hosts") as info:
        AuthMiddleware(
            auth=StaticBearer("tok-abcdefgh-12345"),
            domains=StaticDomains({}),
            allowed_hosts=[host],
        )
    assert "hidden-part" not in str(info.value)


def test_allowed_hosts_keeps_host_names_in_any_iterable() -> None:
    middleware = AuthMiddleware(
        auth=StaticBearer("tok-abcdefgh-12345"),
        domains=StaticDomains({}),
        allowed_hosts=(h for h in ["api.example.com", "127.0.0.1:8080", "[::1]:443"]),
    )
    assert middleware.allowed_hosts == {"api.example.com", "127.0.0.1:8080", "[::1]:443"}


# -- ProviderHttp holds a provider answer to max_body_bytes, buffered or not ---------------------


def _streaming_login(size: int) -> web.Application:
    """A login endpoint answering ``size`` bytes, chunked (no Content-Length)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for start in range(0, size, 65536):
            await resp.write(b"x" * min(65536, size - start))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/account/1/login", answer)
    return app


async def _provider_call(host: str, clock: VirtualClock, *, buffer_body: bool) -> int:
    """The size of the body ProviderHttp returns for the login endpoint on ``host``."""
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(
            session=lambda: session,
            retry_middleware=RetryMiddleware(
                clock=clock, hooks=EventHooks(), buffer_body=buffer_body, max_body_bytes=1024
            ),
            clock=clock,
            scheme="http",
        )
        resp = await http.request(
            "POST", URL(f"http://{host}/api/account/1/login"), service="agentVep"
        )
        return len(resp.body)


@pytest.mark.parametrize("buffer_body", [False, True], ids=["streaming", "buffered"])
async def test_provider_http_holds_a_provider_answer_to_max_body_bytes(
    serve: ServerFactory, clock: VirtualClock, buffer_body: bool
) -> None:
    """ProviderHttp documents that a provider used on its own "can be given one built from any
    session and RetryMiddleware". With RetryMiddleware(buffer_body=False) the answer was read
    by ProviderHttp's own ``await resp.read()``, to no limit: a login endpoint (or anything in
    between) streaming a huge body was read whole into memory."""
    host = await serve(_streaming_login(4 * 1024 * 1024))
    with pytest.raises(BodyTooLarge) as info:
        await _provider_call(host, clock, buffer_body=buffer_body)
    assert info.value.limit == 1024
    assert info.value.service == "agentVep"


@pytest.mark.parametrize("buffer_body", [False, True], ids=["streaming", "buffered"])
async def test_provider_http_returns_an_answer_within_max_body_bytes_whole(
    serve: ServerFactory, clock: VirtualClock, buffer_body: bool
) -> None:
    host = await serve(_streaming_login(1024))
    assert await _provider_call(host, clock, buffer_body=buffer_body) == 1024
