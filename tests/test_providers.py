"""Provider building blocks on their own: JWT expiry, single flight, host validation, the login
policy, the keepalive interval, and reprs that never show a credential.

Also home of the small helpers the other provider tests share (``make_sim``, ``sim_engine``):
a simulator whose account uses the test credentials of ``tests/known_secrets.py``, so that the
test-wide secret check looks for exactly the values these tests send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport._redact import Secret
from le_transport.errors import (
    ConfigurationError,
    EngineClosed,
    HostConfigurationError,
    HostileHostError,
)
from le_transport.events import EventHooks, GiveUpEvent, StateEvent
from le_transport.policies.backoff import BackoffPolicy
from le_transport.policies.retry import LOGIN_RATE_LIMIT_FLOOR
from le_transport.providers import (
    AppLogin,
    ClientCredentialsLogin,
    ConsumerJwt,
    CsdsDomains,
    OAuth1Auth,
    SentinelClientCredentials,
    StaticBearer,
    StaticDomains,
    UserLogin,
    jwt_expiry,
    validate_host,
)
from le_transport.providers._flight import SingleFlight
from le_transport.providers.jwt import jwt_times
from le_transport.providers.login import LoginSession, login_policy
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Account, AppKey, Simulator, SimulatorConfig
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    BEARER,
    CLIENT_SECRET,
    JWT,
    PASSWORD,
)

ACCOUNT = "44556677"
USER = "agent-under-test"
APP_KEY = "app-key-under-test"
CLIENT_ID = "client-under-test"
#: The guide's schedule, as the engine uses it by default.
GUIDE = RetryPolicy()

# -- shared helpers ---------------------------------------------------------------------------


def sim_config(**overrides: Any) -> SimulatorConfig:
    """A simulator account whose credentials are the test secrets."""
    account = Account(
        id=ACCOUNT,
        users={USER: PASSWORD},
        app_keys=(AppKey(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET),),
        clients={CLIENT_ID: CLIENT_SECRET},
    )
    return SimulatorConfig(accounts=(account,), **overrides)


def make_sim(clock: VirtualClock, **overrides: Any) -> Simulator:
    """A simulator on ``clock`` serving the test account."""
    return Simulator(sim_config(**overrides), clock=clock)


def csds_for(sim: Simulator, **options: Any) -> CsdsDomains:
    """The Domain API provider pointed at the simulator."""
    return CsdsDomains(ACCOUNT, csds_host=sim.host, scheme="http", **options)


def sim_engine(
    sim: Simulator,
    clock: VirtualClock,
    *,
    domains: Any = None,
    auth: Any = None,
    events: list[StateEvent] | None = None,
    retry: RetryPolicy | None = None,
    recovery: BackoffPolicy | None = None,
    rng: random.Random | None = None,
    giveups: list[GiveUpEvent] | None = None,
) -> Engine:
    """An engine on ``clock`` against ``sim``, recording state events into ``events`` and
    give-ups into ``giveups``."""
    hooks = EventHooks(
        on_state=(events.append,) if events is not None else (),
        on_giveup=(giveups.append,) if giveups is not None else (),
    )
    return Engine(
        domains if domains is not None else csds_for(sim),
        scheme="http",
        clock=clock,
        hooks=hooks,
        auth=auth,
        retry=retry,
        recovery=recovery,
        rng=rng,
    )


def learn_session_secrets(auth: Any, secret_values: set[str]) -> None:
    """Add the bearer, csrf and Session_id the simulator issued to the secret check."""
    session = getattr(auth, "session", None)
    if isinstance(session, LoginSession):
        for secret in (session.bearer, session.csrf, session.session_id):
            if secret is not None:
                secret_values.add(secret.reveal())
    token = getattr(auth, "token", None)
    if token is not None:
        secret_values.add(token.value.reveal())


def jwt_with(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token carrying ``claims`` (the client never verifies)."""

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.c2ln"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with make_sim(clock) as s:
        yield s


# -- JWT expiry -------------------------------------------------------------------------------


def test_jwt_expiry_reads_exp_without_verifying_the_signature() -> None:
    assert jwt_expiry(jwt_with({"exp": 1_900_000_000, "sub": "x"})) == 1_900_000_000.0


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a..c",
        "a.!!!.c",
        jwt_with({"sub": "no exp"}),
        jwt_with({"exp": "soon"}),
        jwt_with({"exp": True}),
        "eyJhbGciOiJIUzI1NiJ9.WzFd.c2ln",  # payload is a JSON array
        # An int past float's range: math.isfinite raised OverflowError on it.
        jwt_with({"exp": 10**400}),
        jwt_with({"exp": -(10**400)}),
    ],
)
def test_jwt_expiry_is_none_for_anything_without_a_numeric_exp(token: str) -> None:
    assert jwt_expiry(token) is None


@given(st.integers(min_value=-(10**500), max_value=10**500) | st.floats())
def test_jwt_expiry_of_any_number_is_a_finite_float_or_none(exp: float) -> None:
    """Property: whatever number ``exp`` is (past float's range, NaN, infinite), reading it
    never raises; a token without a usable one has no expiry."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).rstrip(b"=").decode()
    result = jwt_expiry(f"eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln")
    assert result is None or (isinstance(result, float) and math.isfinite(result))


@given(st.integers(min_value=0, max_value=2**40))
def test_jwt_expiry_round_trips_any_exp(exp: int) -> None:
    """Property: whatever ``exp`` a token carries, it is read back exactly."""
    assert jwt_expiry(jwt_with({"exp": exp})) == float(exp)


@given(st.text(max_size=80))
def test_jwt_expiry_never_raises(token: str) -> None:
    """Property: arbitrary text is either a readable JWT or None, never an exception."""
    result = jwt_expiry(token)
    assert result is None or isinstance(result, float)


def test_jwt_times_reads_exp_and_iat_without_verifying_the_signature() -> None:
    token = jwt_with({"iat": 1_899_996_400, "exp": 1_900_000_000, "sub": "x"})
    assert jwt_times(token) == (1_900_000_000.0, 1_899_996_400.0)
    assert jwt_times(jwt_with({"exp": 1_900_000_000})) == (1_900_000_000.0, None)
    assert jwt_times(jwt_with({"iat": 1_900_000_000})) == (None, 1_900_000_000.0)
    for bad in ("soon", True, None, 10**400, -(10**400)):
        assert jwt_times(jwt_with({"iat": bad, "exp": 5})) == (5.0, None)
    assert jwt_times("not-a-jwt") == (None, None)


@given(
    st.integers(min_value=-(10**500), max_value=10**500) | st.floats(),
    st.integers(min_value=-(10**500), max_value=10**500) | st.floats(),
)
def test_jwt_times_of_any_numbers_are_finite_floats_or_none(exp: float, iat: float) -> None:
    """Property: whatever numbers the claims are, reading them never raises, and each is a
    finite float or None, the same ``exp`` as :func:`jwt_expiry` reads."""
    payload = json.dumps({"exp": exp, "iat": iat}).encode()
    claims = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    token = f"eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln"
    read = jwt_times(token)
    assert all(t is None or (isinstance(t, float) and math.isfinite(t)) for t in read)
    assert read[0] == jwt_expiry(token)


@given(st.text(max_size=80))
def test_jwt_times_never_raise(token: str) -> None:
    exp, iat = jwt_times(token)
    assert exp is None or isinstance(exp, float)
    assert iat is None or isinstance(iat, float)


# -- single flight ----------------------------------------------------------------------------


async def test_single_flight_runs_once_for_a_hundred_concurrent_callers(
    clock: VirtualClock,
) -> None:
    runs = 0

    async def login() -> str:
        nonlocal runs
        runs += 1
        await clock.sleep(2)
        return f"token-{runs}"

    flight: SingleFlight[str] = SingleFlight("test")
    results = await asyncio.gather(*(flight.run(login) for _ in range(100)))
    assert runs == 1
    assert set(results) == {"token-1"}
    assert clock.now() == 2
    # Once it is over, the next caller starts a new run.
    assert await flight.run(login) == "token-2"


async def test_single_flight_shares_a_failure_instead_of_retrying_per_caller(
    clock: VirtualClock,
) -> None:
    runs = 0

    async def login() -> str:
        nonlocal runs
        runs += 1
        await clock.sleep(1)
        raise ConfigurationError("bad credentials")

    flight: SingleFlight[str] = SingleFlight("test")
    results = await asyncio.gather(*(flight.run(login) for _ in range(100)), return_exceptions=True)
    assert runs == 1
    assert all(isinstance(r, ConfigurationError) for r in results)


async def test_single_flight_survives_a_cancelled_caller(clock: VirtualClock) -> None:
    async def login() -> str:
        await clock.sleep(5)
        return "done"

    flight: SingleFlight[str] = SingleFlight("test")
    first = asyncio.ensure_future(flight.run(login))
    second = asyncio.ensure_future(flight.run(login))
    await clock.sleep(1)
    first.cancel()
    assert await second == "done"
    assert first.cancelled()


async def test_single_flight_cancel_stops_the_run_and_its_callers_get_engine_closed(
    clock: VirtualClock,
) -> None:
    """A close stops the run; the callers, which nobody cancelled, get a typed error naming
    what was stopped, not a CancelledError that would escape every ``except TransportError``."""

    async def forever() -> str:
        await clock.sleep(10_000)
        return "never"

    flight: SingleFlight[str] = SingleFlight("test", "login[1]: the login")
    waiters = [asyncio.ensure_future(flight.run(forever)) for _ in range(3)]
    await clock.sleep(1)
    assert flight.running
    await flight.cancel()
    assert not flight.running
    for waiter in waiters:
        with pytest.raises(EngineClosed, match=r"^login\[1\]: the login in progress was stopped"):
            await waiter
        assert not waiter.cancelled()


async def test_single_flight_cancel_leaves_a_cancelled_caller_cancelled(
    clock: VirtualClock,
) -> None:
    """A caller cancelled itself (a timeout, a caller giving up) while the run is stopped too
    still gets its CancelledError: a cancellation must never be swallowed."""

    async def forever() -> str:
        await clock.sleep(10_000)
        return "never"

    flight: SingleFlight[str] = SingleFlight("test")
    cancelled = asyncio.ensure_future(flight.run(forever))
    other = asyncio.ensure_future(flight.run(forever))
    await clock.sleep(1)
    cancelled.cancel()
    await flight.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert cancelled.cancelled()
    with pytest.raises(EngineClosed):
        await other


# -- hosts and configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["va.agentvep.liveperson.net", "127.0.0.1:8080", "[::1]:443", "localhost", "a-b.c"],
)
def test_validate_host_accepts_a_bare_hostname_with_an_optional_port(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize("host", ["https://va.example.net", "va.example.net/api", ""])
def test_a_bad_host_in_a_static_map_is_a_configuration_error_raised_when_it_is_built(
    host: str,
) -> None:
    """A typo in the caller's own map (a scheme left in) was a HostileHostError only, which is
    no ConfigurationError: start-up code catching configuration mistakes missed it, while
    CsdsDomains(csds_host='https://...') raised one. It is both now."""
    for build in (lambda: StaticDomains({"mine": host}), lambda: Engine({"mine": host})):
        with pytest.raises(ConfigurationError, match="service 'mine'") as info:
            build()
        assert isinstance(info.value, HostileHostError)
        assert isinstance(info.value, HostConfigurationError)


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("https://user:s3cr3t-pw@host.example/x", "'***@host.example' (then '/'"),
        ("user:s3cr3t-pw@host.example", "'***@host.example' for"),
        ("AKIAs3cr3t0123456789@api.example.com", "'***@api.example.com' for"),
        ("h.io/?access_token=s3cr3t-pw", "'h.io' (then '/'"),
        ("h.io/token/s3cr3t-pw", "'h.io' (then '/'"),
        ("h.io:s3cr3t-pw", "'h.io:' (then 's'"),
        ("a" * 50 + "/s3cr3t-pw", "'" + "a" * 40 + "'... (20 more characters, not shown)"),
        ("[::1]:99999", "'[::1]:99999' for"),
        # An '@' after the authority is no userinfo, and what follows it is no host.
        ("liveperson.net/api?token=x@s3cr3t-pw", "'liveperson.net' (then '/'"),
        ("host.example/?email=a@s3cr3t.example", "'host.example' (then '/'"),
        ("host.example#frag@s3cr3t-key", "'host.example' (then '#'"),
        ("https://host.example/p@s3cr3t:8443", "'https:' (then '/'"),
    ],
)
def test_a_refused_host_never_shows_what_follows_its_hostname(host: str, shown: str) -> None:
    """The refusal showed the host's first 40 characters: a password or an access key in its
    userinfo, a token in its query or path. A static map's refusal is a ConfigurationError
    now, which start-up code logs; it shows what the host starts with (nothing before an '@')
    and where it went wrong."""
    with pytest.raises(HostileHostError) as info:
        validate_host(host, service="svc")
    assert "s3cr3t" not in str(info.value)
    assert shown in str(info.value)
    with pytest.raises(HostConfigurationError) as configured:
        StaticDomains({"svc": host})
    assert "s3cr3t" not in str(configured.value)


@pytest.mark.parametrize(
    "host",
    [
        "https://evil.example",
        "evil.example/path",
        "user:pw@evil.example",
        "evil.example attacker",
        "evil.example\r\nX-Injected: 1",
        "evil.example\n",
        "evil.example:99999",
        "",
        "evil.example?q=1",
        "evil.example#frag",
        "-leading.dash",
        "[:::::]",
        "[1.2.3.4]",
    ],
)
def test_validate_host_refuses_anything_but_a_bare_hostname(host: str) -> None:
    with pytest.raises(HostileHostError) as info:
        validate_host(host, service="agentVep", account=ACCOUNT)
    assert info.value.account == ACCOUNT
    assert "\r" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CsdsDomains("12/../34"),
        lambda: CsdsDomains(ACCOUNT, csds_host="http://api.liveperson.net"),
        lambda: CsdsDomains(ACCOUNT, path_prefix="api"),
        lambda: CsdsDomains(ACCOUNT, ttl=0),
        lambda: CsdsDomains(ACCOUNT, scheme="ftp"),
        lambda: UserLogin(ACCOUNT, USER, "", domains=StaticDomains({})),
        lambda: UserLogin(ACCOUNT, USER, PASSWORD, domains=StaticDomains({}), refresh_interval=0),
        lambda: UserLogin(ACCOUNT, USER, PASSWORD, domains={"agentVep": "x"}),  # type: ignore[arg-type]
        lambda: AppLogin(ACCOUNT, USER, APP_KEY, "", ACCESS_TOKEN, ACCESS_TOKEN_SECRET,
                         domains=StaticDomains({})),
        lambda: OAuth1Auth(APP_KEY, APP_SECRET, "", ACCESS_TOKEN_SECRET),
        lambda: ConsumerJwt(ACCOUNT, domains=StaticDomains({}), auth_code=42),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_providers_refuse_bad_configuration_at_construction(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    for secret in (PASSWORD, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET):
        assert secret not in str(info.value)


def test_login_policy_floors_a_429_at_five_seconds_and_keeps_the_schedule() -> None:
    policy = login_policy(RetryPolicy(pauses=(0.05, 0.1, 0.15)))
    assert policy.rate_limit_floor == LOGIN_RATE_LIMIT_FLOOR == 5.0
    assert policy.pauses == (0.05, 0.1, 0.15)
    assert login_policy(RetryPolicy(rate_limit_floor=9)).rate_limit_floor == 9


def test_keepalive_interval_is_never_later_than_half_the_session_ttl() -> None:
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=StaticDomains({}), refresh_interval=300)
    assert auth.refresh_interval_for(None) == 300

    def session(ttl: float | None) -> LoginSession:
        return LoginSession(Secret(BEARER), None, None, ttl, None, 1, 0.0)

    assert auth.refresh_interval_for(session(8 * 3600)) == 300
    assert auth.refresh_interval_for(session(120)) == 60
    assert auth.refresh_interval_for(session(None)) == 300


def test_no_provider_repr_shows_a_credential() -> None:
    domains = StaticDomains({"agentVep": "127.0.0.1:1"})
    providers: list[object] = [
        UserLogin(ACCOUNT, USER, PASSWORD, domains=domains),
        AppLogin(ACCOUNT, USER, APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET,
                 domains=domains),
        ClientCredentialsLogin(ACCOUNT, USER, CLIENT_ID, CLIENT_SECRET, domains=domains),
        OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET),
        SentinelClientCredentials(ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains),
        ConsumerJwt(ACCOUNT, domains=domains, auth_code=JWT),
        StaticBearer(BEARER),
        LoginSession(Secret(BEARER), Secret(JWT), Secret(PASSWORD), 10.0, "u", 1, 0.0),
    ]  # fmt: skip
    for provider in providers:
        text = repr(provider) + str(provider)
        for secret in (PASSWORD, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, CLIENT_SECRET,
                       BEARER, JWT):  # fmt: skip
            assert secret not in text, type(provider).__name__


async def test_a_provider_used_before_the_engine_attached_it_says_so() -> None:
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=StaticDomains({"agentVep": "127.0.0.1:1"}))
    with pytest.raises(ConfigurationError, match="not attached to an engine"):
        await auth.credentials("GET", URL("http://127.0.0.1:1/"))


# -- a closed provider is closed, not a credential refused -------------------------------------


@pytest.mark.parametrize("kind", ["user_login", "sentinel", "consumer"])
async def test_a_closed_auth_provider_asked_for_credentials_says_engine_closed(kind: str) -> None:
    """Closing the engine closes its provider; a call still in progress that asks it then
    used to get ``AuthenticationError``, which reads as bad credentials."""
    domains = StaticDomains({"agentVep": "127.0.0.1:9", "sentinel": "127.0.0.1:9",
                             "idp": "127.0.0.1:9"})  # fmt: skip
    makers: dict[str, Callable[[], UserLogin | SentinelClientCredentials | ConsumerJwt]] = {
        "user_login": lambda: UserLogin(ACCOUNT, USER, PASSWORD, domains=domains),
        "sentinel": lambda: SentinelClientCredentials(
            ACCOUNT, CLIENT_ID, CLIENT_SECRET, domains=domains
        ),
        "consumer": lambda: ConsumerJwt(ACCOUNT, domains=domains),
    }
    auth = makers[kind]()
    async with Engine(domains, scheme="http", auth=auth, clock=VirtualClock()):
        pass  # its close closes the provider (nothing to log out of)
    with pytest.raises(EngineClosed, match="the auth provider is closed"):
        await auth.credentials("GET", URL("https://va.example.net/x"))
