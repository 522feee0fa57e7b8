"""The auth middleware against the simulator: credentials only to the host the domain provider
named, 401 → one re-authentication → one replay, a second 401 is an AuthenticationError, and no
other 4xx is ever replayed."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.chaos import Status
from le_transport.errors import (
    AuthenticationError,
    ClientStatusError,
    ConnectionFailed,
    HostileHostError,
    InvalidRequest,
    ProviderError,
)
from le_transport.middleware.auth import AuthMiddleware, same_host
from le_transport.middleware.context import CallContext, call_context
from le_transport.middleware.retry import RetryMiddleware
from le_transport.providers import Credentials, StaticBearer, StaticDomains, UserLogin
from le_transport.recovery import is_recoverable, is_setup_error
from le_transport.sockets import UMS_BRAND_SOCKET_QUERY, ums_brand_path
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory
from tests.known_secrets import BEARER, PASSWORD
from tests.test_providers import (
    ACCOUNT,
    USER,
    csds_for,
    learn_session_secrets,
    make_sim,
    sim,
    sim_engine,
)
from tests.test_retry_middleware import Script

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


def login_for(sim: Simulator) -> UserLogin:
    return UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), keepalive=False)


async def test_a_401_invalidates_relogs_in_once_and_replays_the_request_once(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        assert first.bearer is not None
        sim.tokens.revoke(first.bearer.reveal())
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        learn_session_secrets(auth, secret_values)
        assert resp.status == 200
        assert (await engine.login()).generation == first.generation + 1
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("GET", USERS) == 2


async def test_a_hundred_concurrent_401s_cause_one_relogin(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.tokens.revoke()
        results = await asyncio.gather(
            *(engine.request("GET", "accountConfigReadOnly", USERS) for _ in range(100))
        )
        learn_session_secrets(auth, secret_values)
        assert {r.status for r in results} == {200}
    assert sim.count("POST", LOGIN) == 2
    assert sim.count("GET", USERS) == 200


async def test_a_second_401_is_an_authentication_error_and_not_replayed_again(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", USERS, [401, 401])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="401 again after fresh credentials"):
            await engine.request("GET", "accountConfigReadOnly", USERS, recover=True)
    assert sim.count("GET", USERS) == 2
    assert sim.count("POST", LOGIN) == 2
    assert clock.now() == 0


@pytest.mark.parametrize("status", [400, 403, 404, 409])
async def test_no_other_4xx_is_replayed(sim: Simulator, clock: VirtualClock, status: int) -> None:
    sim.faults.script("GET", USERS, [status])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert info.value.status == status
    assert sim.count("GET", USERS) == 1
    assert sim.count("POST", LOGIN) == 1


async def test_a_post_is_replayed_after_a_401_since_the_server_did_not_act_on_it(
    sim: Simulator, clock: VirtualClock
) -> None:
    search = f"/interaction_history/api/account/{ACCOUNT}/interactions/search"
    sim.faults.script("POST", search, [401])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        found = await engine.request_json("POST", "engHistDomain", search, json={"q": 1})
    assert found["interactionHistoryRecords"] == []
    assert sim.count("POST", search) == 2


async def test_credentials_are_not_sent_to_another_host_after_a_redirect(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with make_sim(clock) as elsewhere:
        sim.faults.script(
            "GET",
            USERS,
            [Status(302, headers={"Location": f"{elsewhere.url}{USERS}"}, body="")],
        )
        async with sim_engine(
            sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(BEARER)
        ) as engine:
            with pytest.raises(ClientStatusError) as info:
                await engine.request("GET", "accountConfigReadOnly", USERS)
        # The other host refused the request for want of credentials: none were sent there.
        assert info.value.status == 401
        assert [r.path for r in elsewhere.requests] == [USERS]
        assert "Authorization" not in elsewhere.requests[0].headers
    assert sim.requests[0].headers.get("Authorization") == "***"


async def test_credentials_follow_a_redirect_that_stays_on_the_named_host(
    sim: Simulator, clock: VirtualClock
) -> None:
    moved = f"/api/account/{ACCOUNT}/configuration/le-users/users/1"
    sim.faults.script("GET", USERS, [Status(302, headers={"Location": moved}, body="")])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        user = await engine.request_json("GET", "accountConfigReadOnly", USERS)
    assert user["loginName"] == USER
    assert [r.headers.get("Authorization") for r in sim.requests if r.method == "GET"][-2:] == [
        "***",
        "***",
    ]


async def test_a_static_bearer_cannot_reauthenticate_so_a_401_fails_after_one_replay(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with sim_engine(
        sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(BEARER)
    ) as engine:
        with pytest.raises(AuthenticationError):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert sim.count("GET", USERS) == 2


async def test_on_a_foreign_session_credentials_go_only_to_allowed_hosts(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    domains = StaticDomains(sim.domains)
    bearer = StaticBearer(issued)
    allowed = AuthMiddleware(auth=bearer, domains=domains, allowed_hosts={sim.host})
    nowhere = AuthMiddleware(auth=bearer, domains=domains)
    connector = aiohttp.TCPConnector(force_close=True)
    retry = RetryMiddleware(clock=clock)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{sim.url}{USERS}", middlewares=(allowed, retry)) as resp:
            assert resp.status == 200
        with pytest.raises(ClientStatusError):
            await session.get(f"{sim.url}{USERS}", middlewares=(nowhere, retry))
    assert [r.headers.get("Authorization") for r in sim.requests] == ["***", None]


async def test_credentials_never_travel_over_a_scheme_other_than_the_engines(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """An https engine redirected down to http on the right host sends no credentials."""
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    https_only = AuthMiddleware(
        auth=StaticBearer(issued),
        domains=StaticDomains(sim.domains),
        allowed_hosts={sim.host},
        scheme="https",
    )
    retry = RetryMiddleware(clock=clock)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        with pytest.raises(ClientStatusError):
            await session.get(f"{sim.url}{USERS}", middlewares=(https_only, retry))
    assert [r.headers.get("Authorization") for r in sim.requests] == [None]


@pytest.mark.parametrize(
    ("host", "url", "same"),
    [
        ("va.example.net", "https://va.example.net/x", True),
        ("va.example.net", "https://VA.example.net:443/x", True),
        ("va.example.net", "https://va.example.net:8443/x", False),
        ("va.example.net:8443", "https://va.example.net:8443/x", True),
        ("va.example.net", "http://va.example.net:443/x", False),
        ("va.example.net", "https://va.example.net.evil.example/x", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8081/x", False),
    ],
)
def test_same_host_compares_name_and_effective_port(host: str, url: str, same: bool) -> None:
    """A bare host means the scheme's default port; names compare case-insensitively."""
    assert same_host(host, URL(url)) is same


# -- a provider's own failure is the provider's, typed, with its exception as the cause --------


class _BuggyAuth:
    """An AuthProvider of the caller's own with a bug: ``error`` raised by ``failing``, or
    ``answer`` returned by ``credentials`` in place of Credentials."""

    def __init__(
        self, error: Exception | None = None, *, failing: str = "credentials", answer: object = None
    ) -> None:
        self.error = error
        self.failing = failing
        self.answer = answer
        self.asked = 0

    async def credentials(self, method: str, url: URL) -> Credentials:
        self.asked += 1
        if self.error is not None and self.failing == "credentials":
            raise self.error
        if self.answer is not None:
            return self.answer  # type: ignore[return-value]
        return Credentials(headers={"Authorization": f"Bearer {BEARER}"})

    async def invalidate(self, rejected: Credentials) -> None:
        if self.error is not None and self.failing == "invalidate":
            raise self.error

    async def close(self) -> None:
        """Nothing to close."""


class _BuggyDomains:
    """A DomainProvider of the caller's own that raises ``error``, or answers ``answer``."""

    def __init__(self, *, error: Exception | None = None, answer: object = None) -> None:
        self.error = error
        self.answer = answer

    async def resolve(self, service: str) -> str:
        if self.error is not None:
            raise self.error
        return self.answer  # type: ignore[return-value]

    async def invalidate(self) -> None:
        """Nothing cached."""


#: In the provider's exception's text: never shown by the typed error (it may be a credential).
PROVIDER_TEXT = "vault-said-s3cr3t"

PROVIDER_BUGS = [
    TypeError(f"can only concatenate str (not NoneType) {PROVIDER_TEXT}"),
    ValueError(f"params values must be str {PROVIDER_TEXT}"),
    KeyError(PROVIDER_TEXT),
    RuntimeError(PROVIDER_TEXT),
    # OSErrors that are configuration, not the network: waiting cannot cure them, so a socket
    # must stop rather than reconnect for ever (a missing token file, a wrong CA).
    FileNotFoundError(2, f"No such file or directory: '/vault/{PROVIDER_TEXT}'"),
    PermissionError(13, PROVIDER_TEXT),
    ssl.SSLCertVerificationError(PROVIDER_TEXT),
]
PROVIDER_BUG_IDS = [
    "type-error",
    "value-error",
    "key-error",
    "runtime-error",
    "token-file-missing",
    "token-file-unreadable",
    "certificate-does-not-verify",
]


def _provider_outages() -> list[Exception]:
    """A provider's own network call failing (a vault, a service registry it calls): each an
    outage, not a bug in it. Made per test: an exception keeps the traceback it was raised with."""
    key = aiohttp.client_reqrep.ConnectionKey("vault.internal", 443, True, True, None, None, None)
    return [
        aiohttp.ClientConnectorError(key, OSError(111, f"Connection refused {PROVIDER_TEXT}")),
        aiohttp.ServerDisconnectedError(PROVIDER_TEXT),
        TimeoutError(PROVIDER_TEXT),  # asyncio.wait_for around its own call
        asyncio.TimeoutError(PROVIDER_TEXT),  # noqa: UP041 - the name a provider may use
        ConnectionResetError(104, PROVIDER_TEXT),
        OSError(errno.ENETUNREACH, f"Network is unreachable {PROVIDER_TEXT}"),
        _answered(503),
    ]


PROVIDER_OUTAGE_IDS = [
    "connector-error",
    "server-disconnected",
    "timeout",
    "asyncio-timeout",
    "connection-reset",
    "network-unreachable",
    "its-service-answered-503",
]


def _answered(status: int) -> aiohttp.ClientResponseError:
    """What the provider's own ``raise_for_status()`` raises: its text shows the URL (here with
    a credential in its query)."""
    info = aiohttp.RequestInfo(
        URL(f"https://vault.internal/v1/secret?token={PROVIDER_TEXT}"),
        "GET",
        CIMultiDictProxy(CIMultiDict()),
        URL(f"https://vault.internal/v1/secret?token={PROVIDER_TEXT}"),
    )
    return aiohttp.ClientResponseError(info, (), status=status, message="oops")


def _assert_outage(
    err: ConnectionFailed, cause: BaseException, *, provider: str, role: str, operation: str
) -> None:
    """A provider's outage: typed as a failed connection, recoverable, not a setup error."""
    assert not isinstance(err, ProviderError)
    assert err.never_sent
    assert is_recoverable(err)
    assert not is_setup_error(err)
    assert f"the {role} provider {provider}" in str(err)
    assert f"{operation}()" in str(err)
    assert PROVIDER_TEXT not in str(err)
    if isinstance(cause, aiohttp.ClientResponseError):
        assert err.__cause__ is None  # its text shows the URL (safe_cause)
    else:
        assert err.__cause__ is cause


def _assert_logged_as_outage(caplog: pytest.LogCaptureFixture, logger: str) -> None:
    [logged] = [r for r in caplog.records if r.name == logger]
    assert logged.levelno == logging.WARNING
    assert "most likely a bug" not in logged.getMessage()
    assert PROVIDER_TEXT not in logged.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _assert_provider_error(
    err: ProviderError, cause: BaseException, *, provider: str, role: str, operation: str
) -> None:
    assert err.__cause__ is cause  # the provider's own exception, with its traceback
    assert cause.__traceback__ is not None
    assert (err.provider, err.role, err.operation, err.error_type) == (
        provider,
        role,
        operation,
        type(cause).__name__,
    )
    assert provider in str(err)
    assert type(cause).__name__ in str(err)
    assert PROVIDER_TEXT not in str(err)
    assert not isinstance(err, InvalidRequest)


@pytest.mark.parametrize("error", PROVIDER_BUGS, ids=PROVIDER_BUG_IDS)
@pytest.mark.parametrize("timed", [False, True], ids=["no-deadline", "deadline"])
async def test_an_auth_providers_own_error_is_a_provider_error_not_the_callers_bad_arguments(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    timed: bool,
) -> None:
    """It used to be ``InvalidRequest: invalid request (TypeError): params values must be
    str...`` with no cause: an SDK author lost the traceback to their own bug."""
    script = Script(200)
    host = await serve(script.app())
    auth = _BuggyAuth(error)
    retry = RetryPolicy(pauses=(0.05,), deadline=30.0 if timed else None)
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=auth, retry=retry) as e:
        with pytest.raises(ProviderError) as info:
            await e.request("GET", "svc", "/x", params={"v": "1"})
    _assert_provider_error(
        info.value, error, provider="_BuggyAuth", role="auth", operation="credentials"
    )
    assert info.value.service == "svc"
    assert script.hits == 0
    [logged] = [r for r in caplog.records if r.name == "le_transport.auth"]
    assert logged.levelno == logging.ERROR
    assert "_BuggyAuth" in logged.getMessage()
    assert PROVIDER_TEXT not in logged.getMessage()


async def test_an_answer_that_is_not_credentials_is_the_providers_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(200)
    host = await serve(script.app())
    auth = _BuggyAuth(answer={"Authorization": f"Bearer {BEARER}"})
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ProviderError, match=r"credentials\(\) with AttributeError") as info:
            await engine.request("GET", "svc", "/x")
    assert isinstance(info.value.__cause__, AttributeError)
    assert script.hits == 0


async def test_an_invalidate_that_fails_after_a_401_is_the_providers_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(401, 200)
    host = await serve(script.app())
    bug = RuntimeError(PROVIDER_TEXT)
    auth = _BuggyAuth(bug, failing="invalidate")
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=auth) as engine:
        with pytest.raises(ProviderError) as info:
            await engine.request("GET", "svc", "/x")
    _assert_provider_error(
        info.value, bug, provider="_BuggyAuth", role="auth", operation="invalidate"
    )
    assert script.hits == 1  # not replayed


async def test_engine_login_with_a_failing_provider_is_a_provider_error(
    clock: VirtualClock,
) -> None:
    bug = TypeError(PROVIDER_TEXT)
    async with Engine(
        {"svc": "127.0.0.1:9"}, scheme="http", clock=clock, auth=_BuggyAuth(bug)
    ) as engine:
        with pytest.raises(ProviderError) as info:
            await engine.login()
    _assert_provider_error(
        info.value, bug, provider="_BuggyAuth", role="auth", operation="credentials"
    )


@pytest.mark.parametrize("error", PROVIDER_BUGS, ids=PROVIDER_BUG_IDS)
@pytest.mark.parametrize("timed", [False, True], ids=["no-deadline", "deadline"])
async def test_a_domain_providers_own_error_is_a_provider_error(
    clock: VirtualClock, error: Exception, timed: bool
) -> None:
    retry = RetryPolicy(pauses=(0.05,), deadline=30.0 if timed else None)
    domains = _BuggyDomains(error=error)
    async with Engine(domains, scheme="http", clock=clock, retry=retry) as engine:
        with pytest.raises(ProviderError) as info:
            await engine.request("GET", "svc", "/x")
    _assert_provider_error(
        info.value, error, provider="_BuggyDomains", role="domain", operation="resolve"
    )
    assert info.value.service == "svc"


@pytest.mark.parametrize(
    "answer", [None, 42, ["va.example.net"], "https://va.example.net", "va.example.net/api"]
)
async def test_a_domain_provider_answering_no_host_is_refused_by_name_before_sending(
    clock: VirtualClock, answer: object
) -> None:
    async with Engine(_BuggyDomains(answer=answer), scheme="http", clock=clock) as engine:
        with pytest.raises(HostileHostError, match="service 'svc'"):
            await engine.request("GET", "svc", "/x")


async def test_on_a_foreign_session_a_providers_own_error_is_a_provider_error(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    script = Script(200)
    host = await serve(script.app())
    bug = ValueError(PROVIDER_TEXT)
    middleware = AuthMiddleware(
        auth=_BuggyAuth(bug), domains=StaticDomains({}), allowed_hosts={host}
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderError) as info:
            await session.get(
                f"http://{host}/x", middlewares=(middleware, RetryMiddleware(clock=clock))
            )
    _assert_provider_error(
        info.value, bug, provider="_BuggyAuth", role="auth", operation="credentials"
    )
    assert script.hits == 0


# -- a provider's own network failure is an outage, not a bug --------------------------------


@pytest.mark.parametrize("index", range(len(PROVIDER_OUTAGE_IDS)), ids=PROVIDER_OUTAGE_IDS)
@pytest.mark.parametrize("timed", [False, True], ids=["no-deadline", "deadline"])
async def test_an_auth_providers_own_network_failure_is_a_failed_connection_not_a_bug(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    index: int,
    timed: bool,
) -> None:
    """1889054 made it a ProviderError, logged as an ERROR ('most likely a bug in the
    provider') and final for a socket, for a vault that was briefly unreachable."""
    caplog.set_level(logging.WARNING)
    error = _provider_outages()[index]
    script = Script(200)
    host = await serve(script.app())
    retry = RetryPolicy(pauses=(0.05,), deadline=30.0 if timed else None)
    auth = _BuggyAuth(error)
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=auth, retry=retry) as e:
        with pytest.raises(ConnectionFailed) as info:
            await e.request("GET", "svc", "/x")
        with pytest.raises(ConnectionFailed) as login:
            await e.login()
    _assert_outage(info.value, error, provider="_BuggyAuth", role="auth", operation="credentials")
    _assert_outage(login.value, error, provider="_BuggyAuth", role="auth", operation="credentials")
    assert info.value.service == "svc"
    assert script.hits == 0
    assert {r.name for r in caplog.records} == {"le_transport.auth"}
    assert all(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("index", range(len(PROVIDER_OUTAGE_IDS)), ids=PROVIDER_OUTAGE_IDS)
@pytest.mark.parametrize("timed", [False, True], ids=["no-deadline", "deadline"])
async def test_a_domain_providers_own_network_failure_is_a_failed_connection_not_a_bug(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, index: int, timed: bool
) -> None:
    caplog.set_level(logging.WARNING)
    error = _provider_outages()[index]
    retry = RetryPolicy(pauses=(0.05,), deadline=30.0 if timed else None)
    async with Engine(_BuggyDomains(error=error), scheme="http", clock=clock, retry=retry) as e:
        with pytest.raises(ConnectionFailed) as info:
            await e.request("GET", "svc", "/x")
    _assert_outage(info.value, error, provider="_BuggyDomains", role="domain", operation="resolve")
    assert info.value.service == "svc"
    _assert_logged_as_outage(caplog, "le_transport.domains")


@pytest.mark.parametrize("index", range(len(PROVIDER_OUTAGE_IDS)), ids=PROVIDER_OUTAGE_IDS)
async def test_url_for_types_a_domain_providers_network_failure_as_a_failed_connection(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, index: int
) -> None:
    """The sockets' dialer asks url_for on every connect: an outage there is a failed connect
    to retry, not a ProviderError that stops the socket for good."""
    caplog.set_level(logging.WARNING)
    error = _provider_outages()[index]
    async with Engine(_BuggyDomains(error=error), scheme="http", clock=clock) as engine:
        with pytest.raises(ConnectionFailed) as info:
            await engine.url_for("svc", "/x")
    _assert_outage(info.value, error, provider="_BuggyDomains", role="domain", operation="resolve")
    _assert_logged_as_outage(caplog, "le_transport.domains")


async def test_a_domain_providers_network_failure_in_the_host_check_is_a_failed_connection(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """On a foreign session the auth middleware asks the domain provider for the call's host."""
    script = Script(200)
    host = await serve(script.app())
    error = aiohttp.ServerDisconnectedError(PROVIDER_TEXT)
    middleware = AuthMiddleware(auth=_BuggyAuth(), domains=_BuggyDomains(error=error))
    async with aiohttp.ClientSession() as session:
        with call_context(CallContext(service="svc")), pytest.raises(ConnectionFailed) as info:
            await session.get(
                f"http://{host}/x", middlewares=(middleware, RetryMiddleware(clock=clock))
            )
    _assert_outage(info.value, error, provider="_BuggyDomains", role="domain", operation="resolve")
    assert script.hits == 0


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_a_refusal_from_the_providers_own_service_is_still_a_provider_error(
    clock: VirtualClock, status: int
) -> None:
    """Its service refused what it asked (a 4xx): waiting cannot change that. Its text shows
    the URL it called, so it is not the cause (safe_cause)."""
    error = _answered(status)
    async with Engine(
        {"svc": "127.0.0.1:9"}, scheme="http", clock=clock, auth=_BuggyAuth(error)
    ) as engine:
        with pytest.raises(ProviderError) as info:
            await engine.request("GET", "svc", "/x")
    assert info.value.error_type == "ClientResponseError"
    assert info.value.__cause__ is None
    assert PROVIDER_TEXT not in str(info.value)


class _OnceDown:
    """A domain provider of the caller's own whose service registry is down for its first
    ``down`` answers, then answers the simulator's hosts."""

    def __init__(self, hosts: dict[str, str], down: int) -> None:
        self.hosts = hosts
        self.down = down
        self.asked = 0

    async def resolve(self, service: str) -> str:
        self.asked += 1
        if self.asked <= self.down:
            raise aiohttp.ServerDisconnectedError()
        return self.hosts[service]

    async def invalidate(self) -> None:
        """Nothing cached."""


async def test_a_socket_reconnects_through_its_domain_providers_outage(
    sim: Simulator, clock: VirtualClock
) -> None:
    """1889054 stopped the socket for good (a ProviderError is a setup error)."""
    domains = _OnceDown(dict(sim.domains), down=2)
    async with Engine(domains, scheme="http", clock=clock, auth=login_for(sim)) as engine:
        ws = await engine.websocket(
            "facadeMsg", ums_brand_path(ACCOUNT), params=UMS_BRAND_SOCKET_QUERY
        )
        await ws.wait_open(timeout=3600)
        assert ws.error is None
        await ws.close()
    assert domains.asked == 3
